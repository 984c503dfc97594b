//! Tests of the test sandbox itself (sandbox/ and tests/support/): that it runs a real
//! stack, that tests can steer and observe it, and that it leaves nothing behind.
//! galaxyctl-api's behaviour is tested elsewhere; here only that it runs as the shipped unit.

mod support;

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{http_get, http_request, HttpResponse, Sandbox, HTTP_TIMEOUT, UNIT_TIMEOUT};

/// Galaxy stand-in and nginx, without galaxyctl-api.
fn stack() -> Sandbox {
    Sandbox::builder().api(false).start()
}

/// Polls `GET url` until it answers `status`.
fn wait_status(url: &str, status: u16, timeout: Duration) -> HttpResponse {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = http_get(url);
        match answer {
            Ok(response) if response.status == status => return response,
            _ if Instant::now() > deadline => {
                panic!("GET {url}: wanted {status} within {timeout:?}, last got {answer:?}")
            }
            _ => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Whether a process lives on in a cgroup of that name (a zombie or a reused PID does
/// not count).
fn survives_in(pid: u32, cgroup: &str) -> bool {
    let Ok(cgroups) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'));
    cgroups.contains(cgroup) && !zombie
}

/// What a sandbox leaves to look for once it is gone.
struct Traces {
    pids: Vec<u32>,
    cgroup: String,
    cgroup_dirs: Vec<PathBuf>,
    dir: PathBuf,
}

impl Traces {
    fn of(sandbox: &Sandbox) -> Traces {
        let cgroup_dirs = sandbox.cgroup_dirs();
        let cgroup = cgroup_dirs[0]
            .file_name()
            .expect("a cgroup folder has a name");
        Traces {
            pids: sandbox.pids(),
            cgroup: cgroup.to_string_lossy().into_owned(),
            cgroup_dirs,
            dir: sandbox.dir().to_owned(),
        }
    }

    fn assert_gone(&self) {
        let survivors: Vec<_> = self
            .pids
            .iter()
            .filter(|&&pid| survives_in(pid, &self.cgroup))
            .collect();
        assert!(survivors.is_empty(), "still running: {survivors:?}");
        for dir in self.cgroup_dirs.iter().chain([&self.dir]) {
            assert!(!dir.exists(), "{} is still there", dir.display());
        }
    }
}

#[test]
fn standin_answers_like_galaxy_through_nginx() {
    let sandbox = stack();
    let galaxy = sandbox.galaxy_url();

    let version = http_get(&format!("{galaxy}/api/version")).unwrap();
    assert_eq!(version.status, 200);
    assert_eq!(
        version.json(),
        json!({"version_major": "26.1", "version_minor": "1"})
    );

    let front = http_get(&galaxy).unwrap();
    assert_eq!(front.status, 200);
    assert!(front
        .header("Content-Type")
        .unwrap()
        .starts_with("text/html"));

    let login = http_get(&format!("{galaxy}/login")).unwrap();
    assert_eq!(login.status, 302);
    // Relative, as the stand-in sends it; nginx passes it on unchanged.
    assert_eq!(login.header("Location"), Some("/galaxy/"));

    // Like Galaxy: a probe must use GET.
    let head = http_request("HEAD", &format!("{galaxy}/api/version"), None, HTTP_TIMEOUT);
    assert_eq!(head.unwrap().status, 404);
    assert_eq!(
        http_get(&format!("{galaxy}/no/such/page")).unwrap().status,
        404
    );
}

#[test]
fn stopping_galaxy_makes_nginx_answer_502() {
    let sandbox = stack();

    let stop = sandbox.systemctl(&["stop", "galaxy.service"]);
    assert!(stop.status.success(), "{stop:?}");

    assert_eq!(sandbox.show("galaxy.service", "ActiveState"), "inactive");
    let answer = http_get(&format!("{}/api/version", sandbox.galaxy_url())).unwrap();
    assert_eq!(answer.status, 502);
}

#[test]
fn fail_start_mode_leaves_galaxy_failed() {
    let sandbox = Sandbox::builder()
        .api(false)
        .galaxy_env(&[("STANDIN_MODE", "fail-start")])
        .wait_galaxy(false)
        .start();

    sandbox.wait_property("galaxy.service", "ActiveState", "failed", UNIT_TIMEOUT);
    assert_eq!(sandbox.show("galaxy.service", "Result"), "exit-code");
    assert_eq!(sandbox.show("galaxy.service", "ExecMainStatus"), "1");
}

#[test]
fn set_galaxy_env_changes_the_standin_after_a_restart() {
    let sandbox = stack();
    let url = format!("{}/api/version", sandbox.galaxy_url());

    sandbox.set_galaxy_env(&[("STANDIN_MODE", "error")]);
    // Only a new process sees the new environment.
    assert_eq!(http_get(&url).unwrap().status, 200);

    let restart = sandbox.systemctl(&["restart", "galaxy.service"]);
    assert!(restart.status.success(), "{restart:?}");
    wait_status(&url, 500, Duration::from_secs(10));
}

#[test]
fn hung_galaxy_gives_504_within_nginx_timeout() {
    let sandbox = Sandbox::builder()
        .api(false)
        .galaxy_env(&[("STANDIN_MODE", "hang")])
        .wait_galaxy(false)
        .start();
    sandbox.wait_active("galaxy.service", UNIT_TIMEOUT);

    // Until the stand-in listens nginx answers 502 at once; then 504 after its 5 s.
    let started = Instant::now();
    wait_status(
        &format!("{}/api/version", sandbox.galaxy_url()),
        504,
        Duration::from_secs(20),
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn units_get_the_sandbox_bus_from_the_manager() {
    let sandbox = stack();
    let pid = sandbox.show("galaxy.service", "MainPID");

    // galaxyctl-api, a unit too, finds the session bus through these variables.
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ: Vec<String> = environ
        .split(|&b| b == 0)
        .map(|var| String::from_utf8_lossy(var).into_owned())
        .collect();
    for (name, value) in sandbox.user_env() {
        assert!(
            environ.contains(&format!("{name}={value}")),
            "{name} missing in {environ:?}"
        );
    }
}

#[test]
fn journal_records_unit_output_and_manager_messages() {
    let sandbox = stack();
    let message = |entry: &serde_json::Value| entry["MESSAGE"].as_str().unwrap_or("").to_owned();

    // Output of a unit's processes.
    let output = sandbox.wait_journal(&["_SYSTEMD_USER_UNIT=galaxy.service"], UNIT_TIMEOUT);
    assert!(
        output
            .iter()
            .any(|e| message(e).starts_with("listening on")),
        "{output:#?}"
    );

    // The manager's messages about a unit.
    let manager = sandbox.wait_journal(&["USER_UNIT=nginx.service"], UNIT_TIMEOUT);
    assert!(
        manager
            .iter()
            .any(|e| message(e).starts_with("Started nginx.service")),
        "{manager:#?}"
    );
}

#[test]
fn two_sandboxes_run_side_by_side() {
    let one = stack();
    let two = stack();
    assert_ne!(one.manager_pid(), two.manager_pid());
    assert_ne!(one.galaxy_url(), two.galaxy_url());
    assert!(one.pids().iter().all(|pid| !two.pids().contains(pid)));

    let stop = one.systemctl(&["stop", "galaxy.service"]);
    assert!(stop.status.success(), "{stop:?}");
    assert_eq!(one.show("galaxy.service", "ActiveState"), "inactive");
    assert_eq!(two.show("galaxy.service", "ActiveState"), "active");
    assert_eq!(
        http_get(&format!("{}/api/version", two.galaxy_url()))
            .unwrap()
            .status,
        200
    );
}

#[test]
fn host_processes_stay_out_of_the_sandbox() {
    let _sandbox = stack();

    // The failure this guards against: a user manager in the root cgroup moves every
    // process of the host into its init.scope.
    for pid in ["1", "self"] {
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            !cgroups.contains("galaxyctl-sandbox"),
            "PID {pid} is in {cgroups}"
        );
    }
}

#[test]
fn drop_leaves_no_process_and_no_cgroup() {
    let sandbox = stack();
    let traces = Traces::of(&sandbox);
    // Manager, journald, dbus-daemon, stand-in, nginx master and worker.
    let pids = &traces.pids;
    assert!(pids.contains(&sandbox.manager_pid()) && pids.contains(&sandbox.journald_pid()));
    assert!(pids.len() >= 6, "{pids:?}");

    drop(sandbox);
    traces.assert_gone();
}

#[test]
fn drop_tears_down_after_a_panicking_test() {
    let traces = Mutex::new(None);

    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let sandbox = stack();
        *traces.lock().unwrap() = Some(Traces::of(&sandbox));
        panic!("a test failing with its sandbox up (this panic is expected)");
    }));

    assert!(result.is_err());
    let traces = traces.into_inner().unwrap().expect("the sandbox started");
    traces.assert_gone();
}

#[test]
fn drop_cleans_up_after_a_killed_manager() {
    let sandbox = stack();
    let traces = Traces::of(&sandbox);
    let galaxy_pid: u32 = sandbox.show("galaxy.service", "MainPID").parse().unwrap();

    // Killed hard, the manager cannot stop its units: down must find them by cgroup.
    let kill = Command::new("kill")
        .args(["-KILL", &sandbox.manager_pid().to_string()])
        .status();
    assert!(kill.unwrap().success());
    assert!(
        survives_in(galaxy_pid, &traces.cgroup),
        "the stand-in should outlive its manager"
    );

    drop(sandbox);
    traces.assert_gone();
}

#[test]
fn api_runs_as_the_shipped_notify_unit() {
    // Returns once the unit is active, that is after the daemon's READY=1.
    let sandbox = Sandbox::start();
    let unit = "galaxyctl-api.service";

    // Kept from units/galaxyctl-api.service.
    assert_eq!(sandbox.show(unit, "Type"), "notify");
    assert_eq!(sandbox.show(unit, "NotifyAccess"), "main");
    assert_eq!(sandbox.show(unit, "WatchdogUSec"), "30s");
    assert_eq!(sandbox.show(unit, "Restart"), "on-failure");
    // Changed for the sandbox.
    assert_eq!(sandbox.show(unit, "User"), "");
    let exec_start = sandbox.show(unit, "ExecStart");
    assert!(
        exec_start.contains(env!("CARGO_BIN_EXE_galaxyctl-api")),
        "{exec_start}"
    );
    assert!(exec_start.contains("galaxyctl-api.toml"), "{exec_start}");

    let info = http_get(&format!("{}/galaxyctl_api/v1.0/info", sandbox.api_url())).unwrap();
    assert_eq!(info.status, 200, "{info:?}");
}
