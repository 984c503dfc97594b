//! Test harness: one real systemd user manager, D-Bus session bus and journald per test,
//! with the Galaxy stand-in, nginx and (unless a test opts out) galaxyctl-api running on
//! it as user units.
//!
//! The how lives in `sandbox/up` and `sandbox/down` (read their headers); this file
//! picks ports, writes the test's config and drop-ins before `up`, waits for the stack,
//! offers ways to observe it (systemctl, journalctl, HTTP) and runs `down` on drop, also
//! when a test panics.
//!
//! The sandbox needs root (it runs in a private mount namespace). Without root, or when
//! `unshare` fails, tests fail rather than skip, so a run that could not test anything
//! cannot pass.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

mod http;
mod setup;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use setup::{config_toml, free_ports, read_env_file, write_galaxy_env};

// Re-exported for the tests; each test binary uses only some.
#[allow(unused_imports)]
pub use http::{http_get, http_post_json, http_request, HttpResponse, HTTP_TIMEOUT};

/// A default for how long a test waits for a unit to reach a state.
pub const UNIT_TIMEOUT: Duration = Duration::from_secs(30);
/// galaxyctl-api's unit says TimeoutStartSec=30s; this leaves systemd the last word.
const API_START_TIMEOUT: Duration = Duration::from_secs(40);
/// The stand-in answers within a second of its start unless a test delays it.
const GALAXY_START_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Where `up` installs the user units (the manager's HOME is DIR/home).
const UNIT_DIR: &str = "home/.config/systemd/user";

/// Chooses what a sandbox runs before it starts. Get one from [`Sandbox::builder`].
#[derive(Debug)]
pub struct Builder {
    api: bool,
    config: Vec<String>,
    galaxy_env: Vec<(String, String)>,
    wait_galaxy: bool,
}

impl Builder {
    /// Whether galaxyctl-api.service is installed and started (default: yes). When it is,
    /// [`Builder::start`] returns once the unit is active, that is after READY=1.
    pub fn api(mut self, run: bool) -> Self {
        self.api = run;
        self
    }

    /// TOML merged into galaxyctl-api's config. Tables merge key by key, so
    /// `"[galaxy]\nunits = [\"other.service\"]"` replaces just that key. The defaults:
    /// `listen = "127.0.0.1:API_PORT"`, `bus = "user"`, `[galaxy] units = ["galaxy.service"]`
    /// and `urls = [GALAXY_URL]`, `[nginx] unit = "nginx.service"`, `[auth] mode = "none"`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config.push(toml.to_owned());
        self
    }

    /// Environment for the Galaxy stand-in (STANDIN_MODE, STANDIN_START_DELAY, ...), in a
    /// drop-in that is in place before the unit first starts.
    pub fn galaxy_env(mut self, vars: &[(&str, &str)]) -> Self {
        self.galaxy_env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// Whether [`Builder::start`] waits until Galaxy answers 200 through nginx (default:
    /// yes). Turn it off when the test makes the stand-in misbehave.
    pub fn wait_galaxy(mut self, wait: bool) -> Self {
        self.wait_galaxy = wait;
        self
    }

    /// Brings the sandbox up; panics with `up`'s output, the manager log and the journal
    /// tail when it does not come up.
    pub fn start(self) -> Sandbox {
        assert_root();
        let dir = tempfile::Builder::new()
            .prefix("galaxyctl-sandbox-")
            .tempdir()
            .expect("cannot create a temporary folder for the sandbox");
        let [galaxy_port, nginx_port, api_port] = free_ports();

        // From here on Drop runs `down`, whatever fails next.
        let mut sandbox = Sandbox {
            dir,
            galaxy_port,
            nginx_port,
            api_port,
            env: HashMap::new(),
        };

        // `up` keeps a config and drop-ins that are already there.
        let config = config_toml(api_port, nginx_port, &self.config);
        fs::write(sandbox.dir().join("galaxyctl-api.toml"), config)
            .expect("cannot write galaxyctl-api.toml");
        if !self.galaxy_env.is_empty() {
            write_galaxy_env(&sandbox.dir().join(UNIT_DIR), &self.galaxy_env);
        }

        let mut up = Command::new(script("up"));
        up.arg(sandbox.dir())
            .env("GALAXY_PORT", galaxy_port.to_string())
            .env("NGINX_PORT", nginx_port.to_string())
            .env("API_PORT", api_port.to_string())
            .env_remove("GALAXYCTL_API_BIN")
            .stdin(Stdio::null());
        if self.api {
            up.env("GALAXYCTL_API_BIN", env!("CARGO_BIN_EXE_galaxyctl-api"));
        }
        let output = up.output().expect("cannot run sandbox/up");
        assert!(
            output.status.success(),
            "sandbox/up failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        sandbox.env = read_env_file(&sandbox.dir().join("env"));

        if self.api {
            sandbox.wait_active("galaxyctl-api.service", API_START_TIMEOUT);
        }
        if self.wait_galaxy {
            sandbox.wait_galaxy_ok(GALAXY_START_TIMEOUT);
        }
        sandbox
    }
}

/// A running sandbox. Dropping it tears it down: no process of it survives, and its
/// cgroups and temporary folder are removed.
#[derive(Debug)]
pub struct Sandbox {
    dir: TempDir,
    galaxy_port: u16,
    nginx_port: u16,
    api_port: u16,
    /// The variables of DIR/env, written by `up`.
    env: HashMap<String, String>,
}

impl Sandbox {
    /// A sandbox with the whole stack, galaxyctl-api included, and Galaxy answering.
    pub fn start() -> Sandbox {
        Sandbox::builder().start()
    }

    pub fn builder() -> Builder {
        Builder {
            api: true,
            config: Vec::new(),
            galaxy_env: Vec::new(),
            wait_galaxy: true,
        }
    }

    /// The sandbox's folder (`up`'s DIR).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.dir().join("journal")
    }

    /// Where the user units live; drop-ins go in `UNIT.d/` below it.
    pub fn unit_dir(&self) -> PathBuf {
        self.dir().join(UNIT_DIR)
    }

    pub fn galaxy_port(&self) -> u16 {
        self.galaxy_port
    }

    pub fn nginx_port(&self) -> u16 {
        self.nginx_port
    }

    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// galaxyctl-api's base URL, `http://127.0.0.1:PORT` without a trailing slash.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Galaxy as its users reach it: through nginx, `http://127.0.0.1:PORT/galaxy`.
    pub fn galaxy_url(&self) -> String {
        format!("http://127.0.0.1:{}/galaxy", self.nginx_port)
    }

    pub fn manager_pid(&self) -> u32 {
        self.var("MANAGER_PID")
            .parse()
            .expect("up writes MANAGER_PID as a number")
    }

    pub fn journald_pid(&self) -> u32 {
        self.var("JOURNALD_PID")
            .parse()
            .expect("up writes JOURNALD_PID as a number")
    }

    /// The sandbox's cgroup folders, one per hierarchy; the manager runs below them.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let name = self.var("CGROUP");
        ["systemd", "unified"]
            .iter()
            .map(|h| Path::new("/sys/fs/cgroup").join(h).join(name))
            .collect()
    }

    /// Every process of the sandbox now: manager, journald, bus and units.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = HashSet::new();
        for dir in self.cgroup_dirs() {
            collect_cgroup_pids(&dir, &mut pids);
        }
        let mut pids: Vec<u32> = pids.into_iter().collect();
        pids.sort_unstable();
        pids
    }

    /// The two variables that point systemctl, busctl and D-Bus clients at this sandbox.
    pub fn user_env(&self) -> [(&'static str, String); 2] {
        [
            ("XDG_RUNTIME_DIR", self.var("XDG_RUNTIME_DIR").to_owned()),
            (
                "DBUS_SESSION_BUS_ADDRESS",
                self.var("DBUS_SESSION_BUS_ADDRESS").to_owned(),
            ),
        ]
    }

    /// A command with [`Sandbox::user_env`] set, e.g. for `busctl --user`.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.envs(self.user_env()).stdin(Stdio::null());
        command
    }

    /// `systemctl --user ARGS`; the caller checks the status.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        self.command("systemctl")
            .arg("--user")
            .args(args)
            .output()
            .expect("cannot run systemctl")
    }

    /// `systemctl --user show -p PROPERTY --value UNIT`, e.g. `show("galaxy.service",
    /// "ActiveState")`.
    pub fn show(&self, unit: &str, property: &str) -> String {
        let output = self.systemctl(&["show", "-p", property, "--value", unit]);
        assert!(
            output.status.success(),
            "systemctl show {unit} failed: {}",
            stderr(&output)
        );
        String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned()
    }

    /// Waits until the unit is active; panics with its status and log when the time is up
    /// or the unit fails. A failure counts even when `Restart=` starts the unit again
    /// (galaxyctl-api's unit has `Restart=on-failure`): its `NRestarts` grows then.
    pub fn wait_active(&self, unit: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let restarts_before = self.show(unit, "NRestarts");
        loop {
            match self.show(unit, "ActiveState").as_str() {
                "active" => return,
                "failed" => self.panic_about(unit, "failed instead of becoming active"),
                _ if self.show(unit, "NRestarts") != restarts_before => {
                    self.panic_about(unit, "failed and was restarted instead of becoming active")
                }
                _ if Instant::now() > deadline => {
                    self.panic_about(unit, &format!("not active after {timeout:?}"))
                }
                _ => thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// Waits until `show(unit, property) == value`; panics with the unit's status and log
    /// when the time is up.
    pub fn wait_property(&self, unit: &str, property: &str, value: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.show(unit, property);
            if now == value {
                return;
            }
            if Instant::now() > deadline {
                let message = format!("{property} is {now:?}, not {value:?}, after {timeout:?}");
                self.panic_about(unit, &message);
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until `GET GALAXY_URL/api/version` answers 200 through nginx.
    pub fn wait_galaxy_ok(&self, timeout: Duration) {
        let url = format!("{}/api/version", self.galaxy_url());
        let deadline = Instant::now() + timeout;
        loop {
            let answer = http_get(&url);
            if matches!(&answer, Ok(response) if response.status == 200) {
                return;
            }
            if Instant::now() > deadline {
                let message = format!("GET {url} gave {answer:?} after {timeout:?}");
                self.panic_about("galaxy.service", &message);
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Replaces the stand-in's test environment (one drop-in, written anew on each call)
    /// and reloads the manager. The running process keeps its old environment until the
    /// test restarts galaxy.service.
    pub fn set_galaxy_env(&self, vars: &[(&str, &str)]) {
        let vars: Vec<_> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        write_galaxy_env(&self.unit_dir(), &vars);
        let output = self.systemctl(&["daemon-reload"]);
        assert!(
            output.status.success(),
            "daemon-reload failed: {}",
            stderr(&output)
        );
    }

    /// The journal's entries as JSON objects, oldest first. `matches` are journalctl
    /// matches such as `"_SYSTEMD_USER_UNIT=galaxy.service"`. The output of a unit's
    /// processes carries `_SYSTEMD_USER_UNIT`; the manager's messages about a unit carry
    /// `USER_UNIT`. journald writes a moment after the fact: see [`Sandbox::wait_journal`].
    pub fn journal_json(&self, matches: &[&str]) -> Vec<Value> {
        let output = Command::new("journalctl")
            .arg("-D")
            .arg(self.journal_dir())
            .args(["-o", "json", "--no-pager"])
            .args(matches)
            .output()
            .expect("cannot run journalctl");
        assert!(
            output.status.success(),
            "journalctl failed: {}",
            stderr(&output)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("journalctl -o json writes JSON lines"))
            .collect()
    }

    /// Waits until some entry matches, then returns all that match.
    pub fn wait_journal(&self, matches: &[&str], timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let entries = self.journal_json(matches);
            if !entries.is_empty() {
                return entries;
            }
            if Instant::now() > deadline {
                panic!(
                    "no journal entry matches {matches:?} after {timeout:?}\n{}",
                    self.logs()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The manager's own log (stderr of the manager and journald) and the journal's tail,
    /// for panic messages.
    pub fn logs(&self) -> String {
        let manager_log = fs::read_to_string(self.dir().join("manager.log")).unwrap_or_default();
        let journal = Command::new("journalctl")
            .arg("-D")
            .arg(self.journal_dir())
            .args(["-n", "60", "--no-pager"])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_else(|err| format!("cannot run journalctl: {err}"));
        format!("--- manager.log ---\n{manager_log}--- journal tail ---\n{journal}")
    }

    fn panic_about(&self, unit: &str, problem: &str) -> ! {
        let status = self.systemctl(&["status", "--no-pager", "--lines=0", unit]);
        panic!(
            "{unit}: {problem}\n{}\n{}",
            String::from_utf8_lossy(&status.stdout),
            self.logs()
        );
    }

    fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("DIR/env has no {name}"))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "sandbox {} at the time of the panic:\n{}",
                self.dir().display(),
                self.logs()
            );
        }
        let output = Command::new(script("down"))
            .arg(self.dir())
            .stdin(Stdio::null())
            .output();
        let problem = match output {
            Ok(output) if output.status.success() => return,
            Ok(output) => format!("{}: {}", output.status, stderr(&output)),
            Err(err) => err.to_string(),
        };

        // A sandbox left behind would disturb every later test: be loud, but never panic
        // while already panicking (that would abort and hide the first panic).
        let message = format!("sandbox/down {} failed: {problem}", self.dir().display());
        if thread::panicking() {
            eprintln!("{message}");
        } else {
            panic!("{message}");
        }
    }
}

/// A script in the repository's sandbox/ folder.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sandbox")
        .join(name)
}

fn assert_root() {
    let status = fs::read_to_string("/proc/self/status").expect("cannot read /proc/self/status");
    // "Uid:	real	effective	saved	filesystem"
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    assert_eq!(
        effective,
        Some("0"),
        "the sandbox tests need root: the sandbox runs systemd in a private mount namespace"
    );
}

fn collect_cgroup_pids(dir: &Path, pids: &mut HashSet<u32>) {
    // A cgroup vanishing while we read is fine: its processes are gone with it.
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(procs.lines().filter_map(|line| line.parse::<u32>().ok()));
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            collect_cgroup_pids(&entry.path(), pids);
        }
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
