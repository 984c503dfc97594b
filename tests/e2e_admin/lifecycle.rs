//! The service's own life under systemd: socket activation, reloads and the watchdog.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::helpers::*;
use crate::support::{http_request, Sandbox, HTTP_TIMEOUT};

const UNIT: &str = "galaxyctl-api.service";

/// The shipped socket unit with the port changed, as an administrator would adapt it.
fn socket_unit(port: u16) -> String {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/units/galaxyctl-api.socket"
    ))
    .unwrap();
    assert!(shipped.contains("\nListenStream=5001\n"), "{shipped}");
    shipped.replace(
        "\nListenStream=5001\n",
        &format!("\nListenStream=127.0.0.1:{port}\n"),
    )
}

/// How often the service restarts under the client's calls.
const RESTARTS: usize = 5;

#[test]
fn socket_activation_starts_the_service_and_keeps_the_port_open_across_restarts() {
    let sandbox = Sandbox::start();
    let port = free_port();
    install_unit(&sandbox, "galaxyctl-api.socket", &socket_unit(port));
    systemctl_ok(&sandbox, &["stop", UNIT]);
    systemctl_ok(&sandbox, &["start", "galaxyctl-api.socket"]);
    assert_eq!(sandbox.show(UNIT, "ActiveState"), "inactive");

    // The first request starts the service, which serves it on the socket it was passed.
    let base = format!("http://127.0.0.1:{port}");
    let info = http_request("GET", &format!("{base}{API}/info"), None, WAIT).unwrap();
    assert_eq!(info.status, 200, "{info:?}");
    let status = info.json()["status"].as_str().unwrap().to_owned();
    assert!(
        status.contains(&format!("{base} (socket activated)")),
        "{status}"
    );
    assert_eq!(sandbox.show(UNIT, "ActiveState"), "active");
    let status_text = sandbox.show(UNIT, "StatusText");
    assert!(status_text.contains("(socket activated)"), "{status_text}");
    let main_pid = format!("_PID={}", sandbox.show(UNIT, "MainPID"));
    let ready = wait_api_message(&sandbox, "ready", &[&main_pid]);
    assert_eq!(ready["SOCKET_ACTIVATED"], "true", "{ready:#}");
    // The configured address is not bound besides.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", sandbox.api_port())).is_err(),
        "the service bound its configured port as well"
    );

    // A client calls in a loop while the service restarts.
    let restarting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let during = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let client = {
        let (restarting, stop) = (restarting.clone(), stop.clone());
        let (calls, during, failures) = (calls.clone(), during.clone(), failures.clone());
        let url = format!("{base}{API}/info");
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let in_restart = restarting.load(Ordering::SeqCst);
                match http_request("GET", &url, None, HTTP_TIMEOUT) {
                    Ok(answer) if answer.status == 200 => {}
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
                calls.fetch_add(1, Ordering::SeqCst);
                if in_restart {
                    during.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    // Several restarts, since a call caught by one is a matter of microseconds; a unit
    // restarted that often would hit the default start limit.
    install_unit(
        &sandbox,
        &format!("{UNIT}.d/no-start-limit.conf"),
        "[Unit]\nStartLimitIntervalSec=0\n",
    );
    for _ in 0..RESTARTS {
        let pid = sandbox.show(UNIT, "MainPID");
        restarting.store(true, Ordering::SeqCst);
        systemctl_ok(&sandbox, &["restart", UNIT]);
        restarting.store(false, Ordering::SeqCst);
        assert_ne!(
            sandbox.show(UNIT, "MainPID"),
            pid,
            "the service did not restart"
        );
    }
    // Some more calls, answered by the new process.
    let after_restart = calls.load(Ordering::SeqCst);
    wait_for("more calls after the restart", WAIT, || {
        (calls.load(Ordering::SeqCst) >= after_restart + 20).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    let (during, total) = (during.load(Ordering::SeqCst), calls.load(Ordering::SeqCst));

    assert!(
        during >= RESTARTS,
        "only {during} calls were made while the service restarted"
    );
    let failures = failures.lock().unwrap();
    let refused: Vec<_> = failures
        .iter()
        .filter(|f| f.contains("ConnectionRefused"))
        .collect();
    assert!(refused.is_empty(), "the port was closed: {refused:#?}");
    // A call the old process accepted must be answered too, not closed unanswered.
    assert!(
        failures.is_empty(),
        "{} of {total} calls failed: {failures:#?}",
        failures.len()
    );
    let status_text = sandbox.show(UNIT, "StatusText");
    assert!(status_text.contains("(socket activated)"), "{status_text}");
}

fn galaxy_units(sandbox: &Sandbox) -> serde_json::Value {
    get_json(sandbox, &format!("{API}/info"))["units"]["galaxy"].clone()
}

#[test]
fn reload_applies_a_valid_configuration_and_keeps_the_old_one_otherwise() {
    let sandbox = Sandbox::start();
    install_unit(
        &sandbox,
        "galaxy-worker.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    );
    let pid = sandbox.show(UNIT, "MainPID");
    assert_eq!(
        galaxy_units(&sandbox),
        serde_json::json!(["galaxy.service"])
    );

    merge_config(
        &sandbox,
        "[galaxy]\nunits = [\"galaxy.service\", \"galaxy-worker.service\"]\n\
         [recovery]\nanswer_budget = \"1s\"\n",
    );
    systemctl_ok(&sandbox, &["reload", UNIT]);
    let new_units = serde_json::json!(["galaxy.service", "galaxy-worker.service"]);
    wait_for("the reloaded galaxy.units in /info", WAIT, || {
        (galaxy_units(&sandbox) == new_units).then_some(())
    });
    let status_text = sandbox.show(UNIT, "StatusText");
    assert!(
        status_text.contains("configuration reloaded"),
        "{status_text}"
    );
    let status = get_json(&sandbox, &format!("{API}/status"));
    let listed: Vec<&str> = status["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["unit"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        ["galaxy.service", "galaxy-worker.service", "nginx.service"]
    );

    // The recovery runs on the new settings: both units, and a 1 s answer budget (the old
    // 40 s would outlast the client's patience) while galaxy.service's start is held back.
    let gate = Gate::new(&sandbox, "galaxy");
    gate.hold_start_of(&sandbox, "galaxy.service");
    stop_galaxy(&sandbox);
    let answer = startup(&sandbox, HTTP_TIMEOUT);
    assert_eq!(answer.status, 202, "{answer:?}");
    let answer = answer.json();
    assert_eq!(answer["galaxy"], "starting", "{answer:#}");
    assert_eq!(answer["recovery"]["restarting"], new_units, "{answer:#}");
    gate.open();
    let operation = answer["operation"]["id"].as_str().unwrap().to_owned();
    let finished = wait_for("the recovery to finish", WAIT, || {
        let op = get_json(&sandbox, &format!("{API}/operations/{operation}"));
        (op["state"] == "finished").then_some(op)
    });
    assert_eq!(finished["galaxy"], "online", "{finished:#}");

    // An invalid file: the service stays up, on the settings it had, and says why.
    merge_config(&sandbox, "[recovery]\nmax_recoveries = 0\n");
    systemctl_ok(&sandbox, &["reload", UNIT]);
    let status_text = wait_for("STATUS= to say the reload was refused", WAIT, || {
        let text = sandbox.show(UNIT, "StatusText");
        text.contains("reload refused").then_some(text)
    });
    assert!(
        status_text.contains("recovery.max_recoveries"),
        "{status_text}"
    );
    let refused = wait_api_message(
        &sandbox,
        "reload refused, the running configuration stays",
        &[],
    );
    let error = refused["ERROR"].as_str().unwrap_or_default();
    assert!(error.contains("recovery.max_recoveries"), "{refused:#}");
    assert_eq!(sandbox.show(UNIT, "ActiveState"), "active");
    assert_eq!(
        sandbox.show(UNIT, "MainPID"),
        pid,
        "the service was restarted"
    );
    assert_eq!(galaxy_units(&sandbox), new_units);
}

#[test]
fn watchdog_keeps_a_fed_service_and_restarts_a_frozen_one() {
    let sandbox = Sandbox::start();
    install_unit(
        &sandbox,
        &format!("{UNIT}.d/watchdog.conf"),
        "[Service]\nWatchdogSec=2s\n",
    );
    restart_api(&sandbox);
    assert_eq!(sandbox.show(UNIT, "WatchdogUSec"), "2s");
    let pid = sandbox.show(UNIT, "MainPID");
    let restarts = sandbox.show(UNIT, "NRestarts");

    // Fed: systemd's own record of the pings spans three watchdog periods, one process.
    let timestamp = || -> u64 {
        sandbox
            .show(UNIT, "WatchdogTimestampMonotonic")
            .parse()
            .unwrap()
    };
    let first = timestamp();
    wait_for("pings spanning 6 s of systemd's clock", WAIT, || {
        assert_eq!(sandbox.show(UNIT, "ActiveState"), "active");
        assert_eq!(sandbox.show(UNIT, "MainPID"), pid, "restarted while fed");
        (timestamp() >= first + 6_000_000).then_some(())
    });
    assert_eq!(sandbox.show(UNIT, "NRestarts"), restarts);

    // Frozen: systemd gives up on it and starts it again.
    let stop = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(stop.success());
    let failed = sandbox.wait_journal(
        &[&format!("USER_UNIT={UNIT}"), "UNIT_RESULT=watchdog"],
        WAIT,
    );
    assert!(!failed.is_empty());
    let timeouts = sandbox.journal_json(&[&format!("USER_UNIT={UNIT}")]);
    assert!(
        messages(&timeouts)
            .iter()
            .any(|m| m.starts_with(&format!("{UNIT}: Watchdog timeout"))),
        "{:#?}",
        messages(&timeouts)
    );
    let expected: u32 = restarts.parse::<u32>().unwrap() + 1;
    wait_for("the service to run again", WAIT, || {
        let state = sandbox.show(UNIT, "ActiveState");
        let again = state == "active" && sandbox.show(UNIT, "MainPID") != pid;
        again.then_some(())
    });
    assert_eq!(sandbox.show(UNIT, "NRestarts"), expected.to_string());
    let info = get(&sandbox, &format!("{API}/info"));
    assert_eq!(info.status, 200, "{info:?}");
}
