//! What an administrator does: an explicit restart followed as an operation, and the command
//! line (`status`, `startup`, `check-config`) that shares the service's core.

use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use crate::helpers::*;
use crate::support::{http_request, Sandbox};

fn rfc3339(value: &serde_json::Value) -> SystemTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn restart_answers_at_once_and_its_operation_tells_each_step() {
    let sandbox = Sandbox::start();
    let before = sandbox.show("galaxy.service", "InvocationID");
    // The restart's start job waits for the test: the 202 must come while it does.
    let gate = Gate::new(&sandbox, "galaxy");
    gate.hold_start_of(&sandbox, "galaxy.service");

    let url = format!("{}{API}/restart", sandbox.api_url());
    let answer = http_request("POST", &url, None, WAIT).unwrap();
    assert_eq!(answer.status, 202, "{answer:?}");
    let answer = answer.json();
    assert_eq!(answer["galaxy"], "starting", "{answer:#}");
    let id = answer["operation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        answer["operation"]["href"],
        format!("{API}/operations/{id}"),
        "{answer:#}"
    );

    sandbox.wait_property("galaxy.service", "SubState", "start-pre", WAIT);
    let running = get_json(&sandbox, &format!("{API}/operations/{id}"));
    assert_eq!(running["state"], "running", "{running:#}");
    assert_eq!(running["kind"], "restart", "{running:#}");
    assert_eq!(running["galaxy"], "starting", "{running:#}");
    assert!(
        steps(&running).contains(&"restart of galaxy.service requested".to_owned()),
        "{running:#}"
    );

    gate.open();
    let finished = wait_for("the operation to finish", WAIT, || {
        let op = get_json(&sandbox, &format!("{API}/operations/{id}"));
        (op["state"] == "finished").then_some(op)
    });
    assert_eq!(finished["galaxy"], "online", "{finished:#}");
    assert!(finished.get("error").is_none(), "{finished:#}");
    let after = sandbox.show("galaxy.service", "InvocationID");
    assert_ne!(before, after, "galaxy.service was not restarted");
    let unit = &finished["units"][0];
    assert_eq!(unit["unit"], "galaxy.service", "{finished:#}");
    assert_eq!(unit["state"]["invocation_id"], after, "{finished:#}");
    let job = unit["job"]["job"].as_str().unwrap();

    // The steps, in order, each stamped, the stamps never going back.
    let expected = [
        "restart of the Galaxy units asked for".to_owned(),
        "restart of galaxy.service requested".to_owned(),
        format!("job {job} of galaxy.service finished: done"),
        "galaxy.service is active (running), result success".to_owned(),
        format!("waiting for Galaxy at {} to answer", sandbox.galaxy_url()),
        "Galaxy answers".to_owned(),
    ];
    assert_eq!(steps(&finished), expected, "{finished:#}");
    let mut last = rfc3339(&finished["started_at"]);
    for step in finished["steps"].as_array().unwrap() {
        let at = rfc3339(&step["at"]);
        assert!(at >= last, "steps go back in time: {finished:#}");
        last = at;
    }
    assert!(rfc3339(&finished["finished_at"]) >= last, "{finished:#}");
    sandbox.wait_galaxy_ok(WAIT);

    let unknown = get(&sandbox, &format!("{API}/operations/0123456789abcdef"));
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(
        unknown
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{unknown:?}"
    );
    let unknown = unknown.json();
    assert_eq!(unknown["error"]["code"], "no_such_operation", "{unknown:#}");
    assert_eq!(unknown["galaxy"], "unknown", "{unknown:#}");
}

/// The galaxyctl-api binary with `args`, on the sandbox's bus and configuration.
fn cli(sandbox: &Sandbox, config: &std::path::Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_galaxyctl-api"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(sandbox.user_env())
        // Not a service: whatever the test runner runs under.
        .env_remove("INVOCATION_ID")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("GALAXYCTL_API_LOG");
    run_bounded(command, Duration::from_secs(60))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The row of `unit` in the status table, split into columns.
fn row(output: &Output, unit: &str) -> Vec<String> {
    let text = stdout(output);
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(unit))
        .unwrap_or_else(|| panic!("no row for {unit}:\n{text}"));
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn command_line_shows_status_brings_galaxy_back_and_checks_config() {
    let sandbox = Sandbox::start();
    let config = config_path(&sandbox);

    let status = cli(&sandbox, &config, &["status"]);
    assert!(status.status.success(), "{status:?}");
    let text = stdout(&status);
    assert!(
        text.contains(&format!(
            "Galaxy {}: online (HTTP 200)",
            sandbox.galaxy_url()
        )),
        "{text}"
    );
    let header: Vec<&str> = text
        .lines()
        .find(|line| line.starts_with("UNIT"))
        .unwrap_or_else(|| panic!("no table header:\n{text}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["UNIT", "ACTIVE", "SUB", "RESULT", "PID", "RESTARTS", "SINCE"]
    );
    for unit in ["galaxy.service", "nginx.service"] {
        let columns = row(&status, unit);
        assert_eq!(columns[1..4], ["active", "running", "success"], "{text}");
        assert_eq!(columns[4], sandbox.show(unit, "MainPID"), "{text}");
    }

    stop_galaxy(&sandbox);
    let status = cli(&sandbox, &config, &["status"]);
    assert_eq!(status.status.code(), Some(1), "{status:?}");
    assert!(stdout(&status).contains("answered HTTP 502"), "{status:?}");
    assert_eq!(row(&status, "galaxy.service")[1..3], ["inactive", "dead"]);

    let startup = cli(&sandbox, &config, &["startup"]);
    assert!(startup.status.success(), "{startup:?}");
    let text = stdout(&startup);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("probe {}: answered HTTP 502", sandbox.galaxy_url()).as_str()),
        "{text}"
    );
    assert!(
        lines.contains(&"galaxy.service: job done, now active (running), result success"),
        "{text}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("Galaxy answers again after")),
        "{text}"
    );
    assert_eq!(sandbox.show("galaxy.service", "ActiveState"), "active");
    sandbox.wait_galaxy_ok(WAIT);
    let status = cli(&sandbox, &config, &["status"]);
    assert!(status.status.success(), "{status:?}");

    let check = cli(&sandbox, &config, &["check-config"]);
    assert!(check.status.success(), "{check:?}");
    assert!(
        stdout(&check).starts_with(&format!("{}: valid", config.display())),
        "{check:?}"
    );

    // Broken copies: a bad value, and a key that does not exist. Each is named.
    let text = std::fs::read_to_string(&config).unwrap();
    let mut table: toml::Table = text.parse().unwrap();
    table.insert(
        "recovery".to_owned(),
        toml::Value::Table(toml::toml! { answer_budget = "0s" }),
    );
    let broken = sandbox.dir().join("broken.toml");
    std::fs::write(&broken, toml::to_string(&table).unwrap()).unwrap();
    let check = cli(&sandbox, &broken, &["check-config"]);
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains("`recovery.answer_budget`"), "{stderr}");

    std::fs::write(&broken, format!("{text}\n[probe]\nreadyness_url = \"x\"\n")).unwrap();
    let check = cli(&sandbox, &broken, &["check-config"]);
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains("readyness_url"), "{stderr}");
}
