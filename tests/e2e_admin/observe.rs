//! What an administrator reads: `GET /status`, `GET /metrics`, and journal entries with their
//! MESSAGE_IDs, explained by the shipped catalog.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use galaxyctl_api::logging::message_id;
use serde_json::Value;

use crate::helpers::*;
use crate::support::Sandbox;

/// Checks that a unit's state as the API shows it is what `systemctl show` says now.
fn assert_matches_systemd(sandbox: &Sandbox, state: &Value) {
    let unit = state["unit"].as_str().expect("a unit state names its unit");
    let show = |property| sandbox.show(unit, property);
    assert_eq!(state["load_state"], show("LoadState"), "{unit}: {state:#}");
    assert_eq!(
        state["active_state"],
        show("ActiveState"),
        "{unit}: {state:#}"
    );
    assert_eq!(state["sub_state"], show("SubState"), "{unit}: {state:#}");
    assert_eq!(state["result"], show("Result"), "{unit}: {state:#}");
    assert_eq!(
        state["invocation_id"],
        show("InvocationID"),
        "{unit}: {state:#}"
    );
    assert_eq!(
        state["n_restarts"].to_string(),
        show("NRestarts"),
        "{unit}: {state:#}"
    );
    match show("MainPID").as_str() {
        "0" => assert!(state.get("main_pid").is_none(), "{unit}: {state:#}"),
        pid => assert_eq!(state["main_pid"].to_string(), pid, "{unit}: {state:#}"),
    }
}

fn units(status: &Value) -> &Vec<Value> {
    status["units"].as_array().expect("status lists the units")
}

#[test]
fn status_shows_live_unit_state_the_last_probe_and_the_last_recovery() {
    let sandbox = Sandbox::start();
    let status_path = format!("{API}/status");

    let status = get_json(&sandbox, &status_path);
    assert_eq!(
        status["galaxy"], "unknown",
        "nothing was probed yet: {status:#}"
    );
    assert!(status["last_probe"].is_null(), "{status:#}");
    assert!(status["last_recovery"].is_null(), "{status:#}");
    let names: Vec<&str> = units(&status)
        .iter()
        .map(|u| u["unit"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["galaxy.service", "nginx.service"]);
    for state in units(&status) {
        assert_matches_systemd(&sandbox, state);
    }

    // A request that finds Galaxy online leaves its probe behind.
    let answer = startup(&sandbox, Duration::from_secs(20));
    assert_eq!(answer.status, 200, "{answer:?}");
    let status = get_json(&sandbox, &status_path);
    assert_eq!(status["galaxy"], "online", "{status:#}");
    let probe = &status["last_probe"];
    assert_eq!(probe["endpoint"], sandbox.galaxy_url(), "{probe:#}");
    assert_eq!(probe["online"], true, "{probe:#}");
    assert_eq!(probe["http_status"], 200, "{probe:#}");
    assert_eq!(probe["verdict"], "online (HTTP 200)", "{probe:#}");
    assert!(probe["latency_ms"].is_u64(), "{probe:#}");
    humantime::parse_rfc3339(probe["at"].as_str().unwrap()).expect("`at` is RFC 3339");

    // Stopped behind the API's back: the very next read shows it.
    stop_galaxy(&sandbox);
    let status = get_json(&sandbox, &status_path);
    let galaxy = &units(&status)[0];
    assert_eq!(galaxy["active_state"], "inactive", "{galaxy:#}");
    assert_eq!(galaxy["sub_state"], "dead", "{galaxy:#}");
    for state in units(&status) {
        assert_matches_systemd(&sandbox, state);
    }

    // After a recovery: its outcome, and the unit's new invocation.
    let answer = startup(&sandbox, Duration::from_secs(60));
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = answer.json();
    let status = get_json(&sandbox, &status_path);
    let last = &status["last_recovery"];
    assert_eq!(last["id"], answer["recovery"]["id"], "{last:#}");
    assert_eq!(last["outcome"], "online", "{last:#}");
    assert!(last["duration_ms"].is_u64(), "{last:#}");
    assert!(last.get("error").is_none(), "{last:#}");
    humantime::parse_rfc3339(last["finished_at"].as_str().unwrap()).unwrap();
    assert_eq!(last["units"][0]["unit"], "galaxy.service", "{last:#}");
    assert_eq!(last["units"][0]["job"]["result"], "done", "{last:#}");
    assert!(status["recovery_running"].is_null(), "{status:#}");
    assert_eq!(status["galaxy"], "online", "{status:#}");
    let galaxy = &units(&status)[0];
    assert_eq!(galaxy["active_state"], "active", "{galaxy:#}");
    assert_eq!(
        galaxy["invocation_id"], last["units"][0]["state"]["invocation_id"],
        "{status:#}"
    );
    for state in units(&status) {
        assert_matches_systemd(&sandbox, state);
    }
}

#[test]
fn metrics_count_probes_restarts_and_recoveries() {
    let sandbox = Sandbox::start();
    let gate = Gate::new(&sandbox, "galaxy");
    gate.hold_start_of(&sandbox, "galaxy.service");

    let before = metrics(&sandbox);
    assert_eq!(sample(&before, "galaxyctl_recoveries_in_flight"), 0.0);
    assert_eq!(
        sample(&before, "galaxyctl_recovery_duration_seconds_count"),
        0.0
    );
    assert!(
        !before
            .keys()
            .any(|k| k.starts_with("galaxyctl_restarts_total")),
        "{before:?}"
    );

    stop_galaxy(&sandbox);
    let request = spawn_startup(&sandbox);
    sandbox.wait_property("galaxy.service", "SubState", "start-pre", WAIT);
    let during = metrics(&sandbox);
    assert_eq!(sample(&during, "galaxyctl_recoveries_in_flight"), 1.0);
    assert_eq!(
        sample(&during, "galaxyctl_probes_total{outcome=\"unhealthy\"}"),
        1.0
    );

    gate.open();
    let answer = request.join().unwrap().expect("the request gets an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    let duration_ms = answer.json()["recovery"]["duration_ms"].as_f64().unwrap();

    let after = metrics(&sandbox);
    let restarts: Vec<_> = after
        .iter()
        .filter(|(k, _)| k.starts_with("galaxyctl_restarts_total"))
        .collect();
    assert_eq!(
        restarts,
        [(
            &"galaxyctl_restarts_total{unit=\"galaxy.service\",result=\"done\"}".to_owned(),
            &1.0
        )]
    );
    assert_eq!(
        sample(&after, "galaxyctl_recoveries_total{outcome=\"online\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "galaxyctl_recoveries_total{outcome=\"unavailable\"}"
        ),
        0.0
    );
    // The request's probe found nginx's 502; the recovery probed until Galaxy answered.
    assert!(sample(&after, "galaxyctl_probes_total{outcome=\"unhealthy\"}") >= 1.0);
    assert_eq!(
        sample(&after, "galaxyctl_probes_total{outcome=\"online\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "galaxyctl_probes_total{outcome=\"refused\"}"),
        0.0
    );
    assert_eq!(
        sample(&after, "galaxyctl_recovery_duration_seconds_count"),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "galaxyctl_recovery_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        1.0
    );
    // The histogram holds the duration the answer reported.
    let sum_ms = sample(&after, "galaxyctl_recovery_duration_seconds_sum") * 1000.0;
    assert!(
        (sum_ms - duration_ms).abs() < 1.0,
        "{sum_ms} vs {duration_ms}"
    );
    assert_eq!(sample(&after, "galaxyctl_recoveries_in_flight"), 0.0);
}

/// Each kind of entry, with its name for messages.
const KINDS: [(&str, &str); 6] = [
    ("recovery started", message_id::RECOVERY_STARTED),
    ("restart requested", message_id::RESTART_REQUESTED),
    ("job finished", message_id::JOB_FINISHED),
    ("recovery finished", message_id::RECOVERY_FINISHED),
    ("recovery failed", message_id::RECOVERY_FAILED),
    ("request refused", message_id::REQUEST_REFUSED),
];

/// Makes galaxyctl-api log every kind of entry: a recovery that brings Galaxy back, an
/// explicit restart, a refused request and a recovery that fails. Returns the id of the
/// first recovery.
fn log_every_kind(sandbox: &Sandbox) -> String {
    stop_galaxy(sandbox);
    let answer = startup(sandbox, Duration::from_secs(60));
    assert_eq!(answer.status, 200, "{answer:?}");
    let recovery = answer.json()["recovery"]["id"].as_str().unwrap().to_owned();

    let url = format!("{}{API}/restart", sandbox.api_url());
    let restart = crate::support::http_request("POST", &url, None, WAIT).unwrap();
    assert_eq!(restart.status, 202, "{restart:?}");
    let operation = restart.json()["operation"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for("the explicit restart to finish", WAIT, || {
        let op = get_json(sandbox, &format!("{API}/operations/{operation}"));
        (op["state"] == "finished").then_some(())
    });

    let body = serde_json::json!({ "endpoint": "http://elsewhere.example/galaxy" });
    let url = format!("{}{API}/galaxy-startup", sandbox.api_url());
    let refused = crate::support::http_post_json(&url, &body).unwrap();
    assert_eq!(refused.status, 403, "{refused:?}");

    sandbox.set_galaxy_env(&[("STANDIN_MODE", "fail-start")]);
    stop_galaxy(sandbox);
    let answer = startup(sandbox, Duration::from_secs(60));
    assert_eq!(answer.status, 503, "{answer:?}");
    recovery
}

fn wait_kind(sandbox: &Sandbox, id: &str) -> Vec<Value> {
    let matches = format!("MESSAGE_ID={id}");
    wait_for(&format!("entries with {matches}"), WAIT, || {
        let entries = api_entries(sandbox, &[&matches]);
        (!entries.is_empty()).then_some(entries)
    })
}

#[test]
fn journal_entries_carry_message_ids_that_the_catalog_explains() {
    let sandbox = Sandbox::builder()
        .config("[recovery]\nmax_recoveries = 10\n")
        .start();
    let recovery = log_every_kind(&sandbox);

    for (kind, id) in KINDS {
        let entries = wait_kind(&sandbox, id);
        assert!(
            entries.iter().all(|e| e["MESSAGE"] == kind),
            "{id} is on other entries than {kind:?}: {:?}",
            messages(&entries)
        );
    }
    let of = |id: &str, field: &str| -> Vec<String> {
        let entries = wait_kind(&sandbox, id);
        entries
            .iter()
            .map(|e| e[field].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert!(of(message_id::RECOVERY_STARTED, "RECOVERY_ID").contains(&recovery));
    assert!(of(message_id::RESTART_REQUESTED, "UNIT").contains(&"galaxy.service".to_owned()));
    assert!(of(message_id::JOB_FINISHED, "JOB_RESULT").contains(&"done".to_owned()));
    assert_eq!(
        of(message_id::RECOVERY_FINISHED, "OUTCOME"),
        ["online", "online"]
    );
    assert_eq!(of(message_id::RECOVERY_FAILED, "ERROR"), ["unit_failed"]);
    assert_eq!(
        of(message_id::REQUEST_REFUSED, "ERROR"),
        ["endpoint_not_allowed"]
    );

    // The catalog, installed into a root of its own, knows every id.
    let root = tempfile::tempdir().unwrap();
    let catalog_dir = root.path().join("usr/lib/systemd/catalog");
    fs::create_dir_all(&catalog_dir).unwrap();
    fs::copy(catalog_file(), catalog_dir.join("galaxyctl-api.catalog")).unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let update = Command::new("journalctl")
        .args([&root_arg, "--update-catalog"])
        .output()
        .unwrap();
    assert!(update.status.success(), "{update:?}");
    let list = Command::new("journalctl")
        .args([&root_arg, "--list-catalog"])
        .output()
        .unwrap();
    assert!(list.status.success(), "{list:?}");
    let list = String::from_utf8_lossy(&list.stdout);
    for (_, id) in KINDS {
        assert!(
            list.lines()
                .any(|line| line.starts_with(&format!("{id} galaxyctl-api: "))),
            "{id} not in the catalog:\n{list}"
        );
    }

    // `journalctl -x` takes explanations from /var/lib/systemd/catalog/database alone, so
    // the new database is bound there in a mount namespace of its own.
    let database = root.path().join("var/lib/systemd/catalog/database");
    let explained = explain(&sandbox, &database, message_id::JOB_FINISHED);
    assert!(
        explained.contains("Subject: The restart job of galaxy.service ended: done"),
        "{explained}"
    );
    let explained = explain(&sandbox, &database, message_id::RECOVERY_STARTED);
    let subject = format!(
        "Subject: galaxyctl-api started a recovery of Galaxy at {}",
        sandbox.galaxy_url()
    );
    assert!(explained.contains(&subject), "{explained}");
    assert!(
        explained.contains(&format!("RECOVERY_ID={recovery}")),
        "{explained}"
    );
}

fn catalog_file() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/units/galaxyctl-api.catalog"
    ))
}

/// `journalctl -x` of the sandbox's entries with that MESSAGE_ID, with `database` as the
/// catalog; the host's own catalog is left alone.
fn explain(sandbox: &Sandbox, database: &Path, id: &str) -> String {
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" /var/lib/systemd/catalog/database && \
             exec journalctl -D \"$2\" -x --no-pager \"MESSAGE_ID=$3\"",
        )
        .arg("sh")
        .arg(database)
        .arg(sandbox.journal_dir())
        .arg(id);
    let output = run_bounded(command, WAIT);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The catalog's entries: each MESSAGE_ID with the `@FIELD@` names its text uses.
fn catalog_fields() -> Vec<(String, Vec<String>)> {
    let text = fs::read_to_string(catalog_file()).unwrap();
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("-- ") {
            entries.push((id.trim().to_owned(), Vec::new()));
        } else if let Some((_, fields)) = entries.last_mut() {
            let names = line.split('@').skip(1).step_by(2).filter(|name| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            });
            fields.extend(names.map(str::to_owned));
        }
    }
    entries
}

#[test]
fn every_entry_has_the_fields_its_catalog_text_names() {
    let sandbox = Sandbox::builder()
        .config("[recovery]\nmax_recoveries = 10\n")
        .start();
    log_every_kind(&sandbox);

    // A missing field shows as its bare name in `journalctl -x` ("...: REASON").
    let mut missing = Vec::new();
    for (id, fields) in catalog_fields() {
        for entry in wait_kind(&sandbox, &id) {
            let absent: Vec<&String> = fields.iter().filter(|f| entry.get(*f).is_none()).collect();
            if !absent.is_empty() {
                missing.push(format!(
                    "{id} ({}, TRIGGER={}, ERROR={}) lacks {absent:?}",
                    entry["MESSAGE"], entry["TRIGGER"], entry["ERROR"]
                ));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}
