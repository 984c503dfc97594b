//! The D-Bus client against a real systemd user manager: it restarts only the units it was
//! allowed, whatever it is asked, and reads any unit's state.

mod support;

use std::time::Duration;

use galaxyctl_api::config::Bus;
use galaxyctl_api::systemd::{Systemd, SystemdError};
use support::Sandbox;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn restarts_only_the_allowed_units() {
    let sandbox = Sandbox::builder().api(false).start();
    // This binary holds this one test, so the process's bus address is the sandbox's alone.
    for (key, value) in sandbox.user_env() {
        std::env::set_var(key, value);
    }
    let systemd = Systemd::connect(Bus::User, CALL_TIMEOUT, JOB_TIMEOUT)
        .await
        .expect("the sandbox's manager answers");

    let nginx_before = sandbox.show("nginx.service", "InvocationID");
    let galaxy_before = sandbox.show("galaxy.service", "InvocationID");

    // Nothing is allowed until the configuration says so.
    let refused = systemd.restart("galaxy.service").await;
    assert_eq!(
        refused,
        Err(SystemdError::NotAllowed {
            unit: "galaxy.service".to_owned()
        })
    );

    systemd.allow(vec!["galaxy.service".to_owned()]);
    let refused = systemd.restart("nginx.service").await;
    assert!(
        matches!(refused, Err(SystemdError::NotAllowed { ref unit }) if unit == "nginx.service"),
        "{refused:?}"
    );
    assert_eq!(sandbox.show("nginx.service", "InvocationID"), nginx_before);
    assert_eq!(
        sandbox.show("galaxy.service", "InvocationID"),
        galaxy_before
    );

    let job = systemd
        .restart("galaxy.service")
        .await
        .expect("an allowed unit is restarted");
    assert_eq!(job.result, "done");
    assert!(
        job.job.starts_with("/org/freedesktop/systemd1/job/"),
        "{job:?}"
    );
    assert_ne!(
        sandbox.show("galaxy.service", "InvocationID"),
        galaxy_before
    );
    assert_eq!(sandbox.show("nginx.service", "InvocationID"), nginx_before);

    // Reading needs no allowance, and matches what systemctl shows.
    let nginx = systemd.unit_state("nginx.service").await.expect("readable");
    assert_eq!(
        nginx.active_state,
        sandbox.show("nginx.service", "ActiveState")
    );
    assert_eq!(nginx.invocation_id, nginx_before.replace('-', ""));
    let missing = systemd
        .unit_state("no-such.service")
        .await
        .expect("readable");
    assert!(!missing.exists(), "{missing:?}");
}
