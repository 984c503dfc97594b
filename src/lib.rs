//! galaxyctl-api brings an offline Galaxy back through systemd's D-Bus API.
//!
//! A request flows through the modules in this order:
//!
//! - [`config`]: the TOML file, validated into [`config::Settings`];
//! - [`http`]: the routes, request parsing and every answer the API gives;
//! - [`auth`]: who may cause a restart (OIDC tokens, static tokens);
//! - [`endpoint`]: which URLs a request may make the service probe;
//! - [`probe`]: one GET on Galaxy, judged by its status;
//! - [`recovery`]: which units to restart, one recovery at a time, waiting for Galaxy;
//! - [`systemd`]: the D-Bus client that restarts units and follows their jobs;
//! - [`notify`]: READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 for systemd;
//! - [`logging`]: structured journal entries, or lines on stderr;
//! - [`metrics`]: counters for Prometheus;
//! - [`listener`]: the listening socket (bound or passed by systemd), TLS and limits;
//! - [`server`]: start-up and shutdown of the `serve` command;
//! - [`cli`]: the command line.

pub mod auth;
pub mod cli;
pub mod config;
pub mod endpoint;
pub mod http;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod probe;
pub mod recovery;
pub mod server;
pub mod systemd;
