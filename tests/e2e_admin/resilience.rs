//! systemd and the bus going away under a recovery: `daemon-reexec` while a restart job
//! runs, and the user bus daemon restarted during and between recoveries.

use serde_json::Value;

use crate::helpers::*;
use crate::support::Sandbox;

/// The manager's "Starting galaxy.service..." entries: one per start job it ran.
fn galaxy_starts(sandbox: &Sandbox) -> usize {
    sandbox
        .journal_json(&[
            "USER_UNIT=galaxy.service",
            // SD_MESSAGE_UNIT_STARTING
            "MESSAGE_ID=7d4958e842da4a758f6c1cdc7b36dcc5",
        ])
        .len()
}

/// Checks a galaxy-startup answer says online after one restart of galaxy.service whose
/// job ended `done`, and returns the recovery's id.
fn assert_online_after_one_restart(answer: &Value) -> String {
    assert_eq!(answer["galaxy"], "online", "{answer:#}");
    let units = answer["recovery"]["units"].as_array().unwrap();
    assert_eq!(units.len(), 1, "{answer:#}");
    assert_eq!(units[0]["unit"], "galaxy.service", "{answer:#}");
    assert_eq!(units[0]["job"]["result"], "done", "{answer:#}");
    assert_eq!(units[0]["state"]["active_state"], "active", "{answer:#}");
    answer["recovery"]["id"].as_str().unwrap().to_owned()
}

#[test]
fn recovery_survives_systemd_reexecuting_while_its_job_runs() {
    let sandbox = Sandbox::builder()
        .config("[recovery]\nanswer_budget = \"80s\"\n")
        .start();
    let gate = Gate::new(&sandbox, "galaxy");
    gate.hold_start_of(&sandbox, "galaxy.service");
    stop_galaxy(&sandbox);
    let starts_before = galaxy_starts(&sandbox);
    let reexecs_before = sandbox.journal_json(&["MESSAGE=Reexecuting."]).len();

    let request = spawn_startup(&sandbox);
    sandbox.wait_property("galaxy.service", "SubState", "start-pre", WAIT);
    let job = sandbox.show("galaxy.service", "Job");
    systemctl_ok(&sandbox, &["daemon-reexec"]);
    wait_for("the manager to log its re-execution", WAIT, || {
        let reexecs = sandbox.journal_json(&["MESSAGE=Reexecuting."]).len();
        (reexecs > reexecs_before).then_some(())
    });
    // The same job carries on in the re-executed manager.
    assert_eq!(sandbox.show("galaxy.service", "Job"), job);
    assert!(!request.is_finished(), "answered before the job ended");

    gate.open();
    let answer = request.join().unwrap().expect("the request gets an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    let recovery = assert_online_after_one_restart(&answer.json());

    // Exactly one restart: asked once, and one start job in systemd's log.
    let recovery_id = format!("RECOVERY_ID={recovery}");
    let asked = api_entries(&sandbox, &["MESSAGE=restart requested", &recovery_id]);
    assert_eq!(asked.len(), 1, "{asked:#?}");
    assert_eq!(galaxy_starts(&sandbox), starts_before + 1);
    let metrics = metrics(&sandbox);
    let restarts: f64 = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("galaxyctl_restarts_total{unit=\"galaxy.service\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(restarts, 1.0, "{metrics:?}");
}

/// Restarts the user bus daemon and waits until galaxyctl-api has seen its connection drop.
fn restart_bus(sandbox: &Sandbox) {
    let bus_pid = sandbox.show("dbus.service", "MainPID");
    let dropped = api_entries(sandbox, &["MESSAGE=the bus closed the job signal stream"]).len();
    systemctl_ok(sandbox, &["restart", "dbus.service"]);
    assert_ne!(sandbox.show("dbus.service", "MainPID"), bus_pid);
    wait_for("galaxyctl-api to lose its bus connection", WAIT, || {
        let now = api_entries(sandbox, &["MESSAGE=the bus closed the job signal stream"]);
        (now.len() > dropped).then_some(())
    });
}

#[test]
fn recovery_carries_on_when_the_bus_restarts_and_later_calls_reconnect() {
    let sandbox = Sandbox::builder()
        .config("[recovery]\nanswer_budget = \"80s\"\nmax_recoveries = 10\n")
        .start();
    let gate = Gate::new(&sandbox, "galaxy");
    gate.hold_start_of(&sandbox, "galaxy.service");
    stop_galaxy(&sandbox);

    // During a recovery: the bus goes away while galaxyctl-api waits for the job's end.
    let request = spawn_startup(&sandbox);
    sandbox.wait_property("galaxy.service", "SubState", "start-pre", WAIT);
    restart_bus(&sandbox);
    let reconnects = wait_for("galaxy-api to connect again", WAIT, || {
        let made = api_entries(&sandbox, &["MESSAGE=bus connection made again"]);
        (!made.is_empty()).then_some(made.len())
    });
    // The manager itself is back on the bus.
    let version = sandbox
        .command("busctl")
        .args(["--user", "get-property", "org.freedesktop.systemd1"])
        .args([
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
        ])
        .arg("Version")
        .output()
        .unwrap();
    assert!(version.status.success(), "{version:?}");
    assert!(!request.is_finished(), "answered before the job ended");
    gate.open();
    let answer = request.join().unwrap().expect("the request gets an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_online_after_one_restart(&answer.json());

    // Between recoveries: the next request's calls find the connection gone and make a
    // new one.
    restart_bus(&sandbox);
    stop_galaxy(&sandbox);
    let answer = startup(&sandbox, WAIT);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_online_after_one_restart(&answer.json());
    let made = api_entries(&sandbox, &["MESSAGE=bus connection made again"]);
    assert!(made.len() > reconnects, "no new connection: {made:#?}");
    assert_eq!(sandbox.show("galaxyctl-api.service", "NRestarts"), "0");
}
