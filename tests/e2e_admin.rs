//! End-to-end tests of what an administrator relies on, each against its own real systemd
//! user manager, D-Bus bus, journald and nginx (see `tests/support`), with galaxyctl-api
//! running as the shipped `Type=notify` unit:
//!
//! - `gravity`: a `galaxy.target` with member services, and readiness over gunicorn's socket;
//! - `observe`: `GET /status`, `GET /metrics`, MESSAGE_IDs and the journal catalog;
//! - `operations`: `POST /restart` followed as an operation, and the command line;
//! - `lifecycle`: socket activation, reloads and the watchdog;
//! - `resilience`: `daemon-reexec` and a restarted bus under a recovery.
//!
//! No test measures time: where an ordering matters, a gate file holds a unit's start until
//! the test has seen what it needs, and every wait is bounded.

mod support;

#[path = "e2e_admin/gravity.rs"]
mod gravity;
#[path = "e2e_admin/helpers.rs"]
mod helpers;
#[path = "e2e_admin/lifecycle.rs"]
mod lifecycle;
#[path = "e2e_admin/observe.rs"]
mod observe;
#[path = "e2e_admin/operations.rs"]
mod operations;
#[path = "e2e_admin/resilience.rs"]
mod resilience;
