//! Galaxy as Gravity runs it: a `galaxy.target` whose member services restart with it, and
//! a gunicorn asked over its unix socket whether it is ready.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use crate::support::Sandbox;

const MEMBERS: [&str; 3] = [
    "galaxy-celery.service",
    "galaxy-gunicorn.service",
    "galaxy-handler@0.service",
];

/// Replaces the sandbox's galaxy.service by a Gravity layout: the target, the stand-in as
/// its web unit on Galaxy's port, and two members that just run.
fn install_gravity(sandbox: &Sandbox) {
    // The stand-in of galaxy.service holds Galaxy's port; the gunicorn unit takes it over.
    stop_galaxy(sandbox);
    install_unit(
        sandbox,
        "galaxy.target",
        "[Unit]\nDescription=Galaxy (Gravity)\n\
         Wants=galaxy-gunicorn.service galaxy-celery.service galaxy-handler@0.service\n",
    );
    install_unit(
        sandbox,
        "galaxy-gunicorn.service",
        &format!(
            "[Unit]\nPartOf=galaxy.target\n[Service]\nEnvironment=STANDIN_PORT={}\n\
             ExecStart=/usr/bin/python3 {}\n",
            sandbox.galaxy_port(),
            standin_script()
        ),
    );
    for unit in ["galaxy-celery.service", "galaxy-handler@.service"] {
        install_unit(
            sandbox,
            unit,
            "[Unit]\nPartOf=galaxy.target\n[Service]\nExecStart=/bin/sleep infinity\n",
        );
    }
    systemctl_ok(sandbox, &["start", "galaxy.target"]);
    sandbox.wait_galaxy_ok(WAIT);
}

fn invocations(sandbox: &Sandbox) -> HashMap<&'static str, String> {
    MEMBERS
        .iter()
        .map(|unit| (*unit, sandbox.show(unit, "InvocationID")))
        .collect()
}

/// The entry of `recovery.units` for `unit`.
fn unit_report<'a>(answer: &'a Value, unit: &str) -> &'a Value {
    answer["recovery"]["units"]
        .as_array()
        .expect("a recovery lists its units")
        .iter()
        .find(|report| report["unit"] == unit)
        .unwrap_or_else(|| panic!("{unit} missing from {answer:#}"))
}

#[test]
fn gravity_target_restarts_every_member_and_names_one_that_cannot_start() {
    let sandbox = Sandbox::builder()
        .config("[galaxy]\nunits = [\"galaxy.target\"]\n[recovery]\nmax_recoveries = 10\n")
        .start();
    install_gravity(&sandbox);
    let before = invocations(&sandbox);

    // Galaxy's web unit dies: nginx answers 502 and the target is restarted.
    systemctl_ok(&sandbox, &["stop", "galaxy-gunicorn.service"]);
    let answer = startup(&sandbox, Duration::from_secs(60));
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = answer.json();
    assert_eq!(answer["galaxy"], "online", "{answer:#}");

    let target = unit_report(&answer, "galaxy.target");
    assert_eq!(target["job"]["result"], "done", "{target:#}");
    let after = invocations(&sandbox);
    for unit in MEMBERS {
        assert_ne!(
            before[unit], after[unit],
            "{unit} was not restarted with the target"
        );
        let report = unit_report(&answer, unit);
        assert_eq!(report["state"]["active_state"], "active", "{report:#}");
        assert_eq!(report["state"]["sub_state"], "running", "{report:#}");
        assert_eq!(report["state"]["invocation_id"], after[unit], "{report:#}");
    }
    // Nothing but the target was asked for: nginx stayed up, galaxy.service stays down.
    assert_eq!(sandbox.show("galaxy.service", "ActiveState"), "inactive");

    // A member that cannot start. Type=oneshot makes its start job itself fail, so the
    // test does not race the exit of a Type=simple process.
    install_unit(
        &sandbox,
        "galaxy-celery.service.d/broken.conf",
        "[Service]\nType=oneshot\nExecStart=\nExecStart=/bin/false\n",
    );
    systemctl_ok(&sandbox, &["stop", "galaxy-gunicorn.service"]);
    let answer = startup(&sandbox, Duration::from_secs(60));
    assert_eq!(answer.status, 503, "{answer:?}");
    let answer = answer.json();
    assert_eq!(answer["galaxy"], "unavailable", "{answer:#}");
    assert_eq!(answer["error"]["code"], "unit_failed", "{answer:#}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("galaxy-celery.service"), "{message}");
    let celery = unit_report(&answer, "galaxy-celery.service");
    assert_eq!(celery["state"]["active_state"], "failed", "{celery:#}");
    assert_eq!(celery["state"]["result"], "exit-code", "{celery:#}");
    assert_eq!(
        sandbox.show("galaxy-celery.service", "ActiveState"),
        "failed"
    );
}

/// Probes that found nothing listening: here only readiness probes of the missing socket.
const REFUSED: &str = "galaxyctl_probes_total{outcome=\"refused\"}";

#[test]
fn readiness_is_asked_over_gunicorns_socket_before_galaxy_counts_as_online() {
    let sandbox = Sandbox::start();
    // Only the unit's runtime folder is bound into galaxyctl-api's PrivateTmp=.
    let socket = sandbox.dir().join("runtime/gunicorn.sock");
    let gate = Gate::new(&sandbox, "socket-standin");

    // A second stand-in on the socket, as gunicorn behind nginx. It listens only once the
    // test opens the gate, while its start job ends at once (Type=simple, as Gravity's).
    install_unit(
        &sandbox,
        "galaxy-socket.service",
        &format!(
            "[Service]\nEnvironment=STANDIN_SOCKET={}\n\
             ExecStart=/bin/sh -c '{}; exec /usr/bin/python3 {}'\n",
            socket.display(),
            gate.wait_command(),
            standin_script()
        ),
    );
    merge_config(
        &sandbox,
        &format!(
            "[galaxy]\nunits = [\"galaxy.service\", \"galaxy-socket.service\"]\n\
             [probe]\nreadiness_url = \"http://localhost/galaxy/api/version\"\n\
             readiness_socket = \"{}\"\n[recovery]\nanswer_budget = \"80s\"\n",
            socket.display()
        ),
    );
    restart_api(&sandbox);

    stop_galaxy(&sandbox);
    let request = spawn_startup(&sandbox);

    // galaxy.service is back and nginx answers 200, but the socket does not answer yet:
    // the recovery must go on asking it.
    let operation = wait_for("a recovery under way", WAIT, || {
        let status = get_json(&sandbox, &format!("{API}/status"));
        status["recovery_running"]["id"].as_str().map(str::to_owned)
    });
    wait_for("two readiness probes refused by the socket", WAIT, || {
        (sample(&metrics(&sandbox), REFUSED) >= 2.0).then_some(())
    });
    // Two more rounds of the recovery's loop with nginx answering 200: a recovery that took
    // the endpoint's answer for readiness would have ended by then.
    sandbox.wait_galaxy_ok(WAIT);
    let refused = sample(&metrics(&sandbox), REFUSED);
    wait_for("two more readiness probes", WAIT, || {
        (sample(&metrics(&sandbox), REFUSED) >= refused + 2.0).then_some(())
    });
    let running = get_json(&sandbox, &format!("{API}/operations/{operation}"));
    assert_eq!(running["state"], "running", "{running:#}");
    assert!(
        !steps(&running).iter().any(|s| s == "Galaxy reports ready"),
        "{running:#}"
    );
    let status = get_json(&sandbox, &format!("{API}/status"));
    assert_eq!(status["galaxy"], "starting", "{status:#}");
    assert_eq!(
        status["last_probe"]["endpoint"], "http://localhost/galaxy/api/version",
        "{status:#}"
    );
    let verdict = status["last_probe"]["verdict"].as_str().unwrap();
    assert!(verdict.contains(&*socket.to_string_lossy()), "{verdict}");
    assert!(
        !request.is_finished(),
        "the request answered before Galaxy was ready"
    );

    gate.open();
    let answer = request.join().unwrap().expect("the request gets an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["galaxy"], "online");

    let finished = get_json(&sandbox, &format!("{API}/operations/{operation}"));
    let steps = steps(&finished);
    let position = |text: &str| {
        steps
            .iter()
            .position(|s| s.starts_with(text))
            .unwrap_or_else(|| panic!("no step {text:?} in {steps:#?}"))
    };
    assert!(position("waiting for Galaxy") < position("Galaxy reports ready"));
    assert!(position("Galaxy reports ready") < position("Galaxy answers"));

    // The socket stand-in served the readiness URL's path, and it is the only client that
    // socket has.
    wait_for(
        "the socket stand-in logging the readiness request",
        WAIT,
        || {
            let served = sandbox.journal_json(&["_SYSTEMD_USER_UNIT=galaxy-socket.service"]);
            messages(&served)
                .iter()
                .any(|m| m.starts_with("unix \"GET /galaxy/api/version "))
                .then_some(())
        },
    );
}
