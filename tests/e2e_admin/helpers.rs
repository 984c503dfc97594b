//! What the administrator tests share: calling the API, steering units, gating a unit's
//! start, reading metrics and journal entries, and waiting for something with a bound.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{http_request, HttpResponse, Sandbox, HTTP_TIMEOUT};

/// The API's path prefix.
pub const API: &str = "/galaxyctl_api/v1.0";
/// How long a test waits for something that normally takes a second or two.
pub const WAIT: Duration = Duration::from_secs(30);
/// How long a request that waits on a held-back recovery may take.
pub const LONG_REQUEST: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(100);

/// Polls `check` until it gives a value; panics naming `what` when `timeout` passes first.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(POLL);
    }
}

/// `GET` on the API; panics when nothing answers.
pub fn get(sandbox: &Sandbox, path: &str) -> HttpResponse {
    let url = format!("{}{path}", sandbox.api_url());
    http_request("GET", &url, None, HTTP_TIMEOUT).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// `GET` on the API that must answer 200 with JSON.
pub fn get_json(sandbox: &Sandbox, path: &str) -> Value {
    let answer = get(sandbox, path);
    assert_eq!(answer.status, 200, "GET {path}: {answer:?}");
    answer.json()
}

/// `POST /galaxy-startup` for the sandbox's Galaxy, waiting at most `timeout` for the answer.
pub fn startup(sandbox: &Sandbox, timeout: Duration) -> HttpResponse {
    let url = format!("{}{API}/galaxy-startup", sandbox.api_url());
    let body = json!({ "endpoint": sandbox.galaxy_url() });
    http_request("POST", &url, Some(&body), timeout).unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// [`startup`] in a thread, for a request that waits on a recovery the test holds back.
pub fn spawn_startup(sandbox: &Sandbox) -> thread::JoinHandle<io::Result<HttpResponse>> {
    let url = format!("{}{API}/galaxy-startup", sandbox.api_url());
    let body = json!({ "endpoint": sandbox.galaxy_url() });
    thread::spawn(move || http_request("POST", &url, Some(&body), LONG_REQUEST))
}

/// `systemctl --user ARGS`, which must succeed.
pub fn systemctl_ok(sandbox: &Sandbox, args: &[&str]) {
    let output = sandbox.systemctl(args);
    assert!(
        output.status.success(),
        "systemctl --user {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes a unit file or drop-in (`name` relative to the unit folder) and reloads the manager.
pub fn install_unit(sandbox: &Sandbox, name: &str, text: &str) {
    let path = sandbox.unit_dir().join(name);
    fs::create_dir_all(path.parent().expect("a unit path has a folder")).unwrap();
    fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    systemctl_ok(sandbox, &["daemon-reload"]);
}

/// The stand-in Galaxy script, for extra units that run it.
pub fn standin_script() -> String {
    format!("{}/sandbox/galaxy-standin.py", env!("CARGO_MANIFEST_DIR"))
}

/// A flag file a unit waits for, so that the test decides when the unit gets on: a start
/// job that lasts until the test opens the gate, without guessing at durations.
pub struct Gate {
    flag: PathBuf,
}

impl Gate {
    pub fn new(sandbox: &Sandbox, name: &str) -> Gate {
        Gate {
            flag: sandbox.dir().join(format!("gate-{name}")),
        }
    }

    /// A shell loop that returns once the gate is open.
    pub fn wait_command(&self) -> String {
        format!("while [ ! -e {} ]; do sleep 0.1; done", self.flag.display())
    }

    /// Makes `unit`'s start job wait at the gate (in ExecStartPre=, so the job lasts).
    pub fn hold_start_of(&self, sandbox: &Sandbox, unit: &str) {
        let dropin = format!(
            "[Service]\nExecStartPre=/bin/sh -c '{}'\n",
            self.wait_command()
        );
        install_unit(sandbox, &format!("{unit}.d/60-gate.conf"), &dropin);
    }

    pub fn open(&self) {
        fs::write(&self.flag, "").unwrap();
    }
}

/// The samples of `GET /metrics`, by name with labels, as Prometheus would read them.
pub fn metrics(sandbox: &Sandbox) -> HashMap<String, f64> {
    let answer = get(sandbox, "/metrics");
    assert_eq!(answer.status, 200, "{answer:?}");
    let content_type = answer.header("Content-Type").unwrap_or("");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(answer.body.trim_end().ends_with("# EOF"), "{}", answer.body);
    answer
        .body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (name, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line:?}"));
            (name.to_owned(), value)
        })
        .collect()
}

/// One sample, 0 when absent (a counter nobody touched yet is not exported).
pub fn sample(metrics: &HashMap<String, f64>, name: &str) -> f64 {
    metrics.get(name).copied().unwrap_or(0.0)
}

/// The text of each step of an operation.
pub fn steps(operation: &Value) -> Vec<String> {
    operation["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {operation}"))
        .iter()
        .map(|step| step["step"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The MESSAGE of each entry.
pub fn messages(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|entry| entry["MESSAGE"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// galaxyctl-api's own journal entries (not the manager's about its unit) matching `matches`.
pub fn api_entries(sandbox: &Sandbox, matches: &[&str]) -> Vec<Value> {
    let mut all = vec!["SYSLOG_IDENTIFIER=galaxyctl-api"];
    all.extend_from_slice(matches);
    sandbox.journal_json(&all)
}

/// Waits until galaxyctl-api logged an entry with this MESSAGE (and `matches`).
pub fn wait_api_message(sandbox: &Sandbox, message: &str, matches: &[&str]) -> Value {
    let entries = format!("MESSAGE={message}");
    let mut all = vec![entries.as_str()];
    all.extend_from_slice(matches);
    wait_for(&format!("journal entry {message:?}"), WAIT, || {
        api_entries(sandbox, &all).into_iter().next()
    })
}

/// The sandbox's galaxyctl-api configuration file.
pub fn config_path(sandbox: &Sandbox) -> PathBuf {
    sandbox.dir().join("galaxyctl-api.toml")
}

/// Merges `extra` into the configuration file, key by key within tables. The file is
/// written in place: the unit sees it through a bind mount of that very inode, which a
/// rename would leave behind.
pub fn merge_config(sandbox: &Sandbox, extra: &str) {
    let path = config_path(sandbox);
    let mut config: toml::Table = fs::read_to_string(&path).unwrap().parse().unwrap();
    let extra: toml::Table = extra.parse().expect("the test's TOML is valid");
    merge(&mut config, extra);
    fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
}

fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(extra)) => merge(base, extra),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Restarts galaxyctl-api (a `Type=notify` unit: systemctl returns once it is ready).
pub fn restart_api(sandbox: &Sandbox) {
    systemctl_ok(sandbox, &["restart", "galaxyctl-api.service"]);
    assert_eq!(
        sandbox.show("galaxyctl-api.service", "ActiveState"),
        "active"
    );
}

/// Stops galaxy.service behind the API's back; nginx then answers 502.
pub fn stop_galaxy(sandbox: &Sandbox) {
    systemctl_ok(sandbox, &["stop", "galaxy.service"]);
    assert_eq!(sandbox.show("galaxy.service", "ActiveState"), "inactive");
}

/// Runs a command that must end within `timeout`; it is killed (by its PID) otherwise.
pub fn run_bounded(mut command: Command, timeout: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{command:?} did not end within {timeout:?}");
        }
    }
}

/// The loopback port of a listener that was bound a moment ago and closed again.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
