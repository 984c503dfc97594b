//! Typed proxies for the members of systemd's D-Bus API that this service uses.
//!
//! They follow the introspection data kept in `dbus/` (taken from systemd 252); the
//! `dbus_interfaces` test checks that a live manager still offers these members with these
//! signatures. Properties are read fresh on every call: the proxies are built without a
//! property cache, because a unit's state is only worth anything when it is current.

use zbus::proxy;
use zbus::zvariant::OwnedObjectPath;

/// `org.freedesktop.systemd1.Manager` at `/org/freedesktop/systemd1`.
#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
pub trait Manager {
    /// Asks the manager to emit job and unit signals to this connection. Without it only the
    /// jobs this connection queued are announced, not those they pull in.
    fn subscribe(&self) -> zbus::Result<()>;

    /// Queues a restart job (a start job for a stopped unit) and returns the job's path.
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Returns the unit's object, loading it first if needed; never fails for a unit that
    /// does not exist, whose `LoadState` is then `not-found`.
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// Announces that a job ended, with its result: `done`, `canceled`, `timeout`, `failed`,
    /// `dependency`, `skipped` and possibly more in later systemd versions.
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;

    /// The manager's version string, such as `252.38-1~deb12u1`.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

/// `org.freedesktop.systemd1.Unit`, on the path `LoadUnit` returned.
#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1",
    gen_blocking = false
)]
pub trait Unit {
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;

    /// The units this one pulls in when it starts.
    #[zbus(property)]
    fn wants(&self) -> zbus::Result<Vec<String>>;

    #[zbus(property)]
    fn requires(&self) -> zbus::Result<Vec<String>>;

    /// The units that are `PartOf=` this one: restarting it restarts them.
    #[zbus(property)]
    fn consists_of(&self) -> zbus::Result<Vec<String>>;

    /// The job queued for the unit, as (id, path); id 0 when there is none.
    #[zbus(property)]
    fn job(&self) -> zbus::Result<(u32, OwnedObjectPath)>;

    /// When the unit last changed state, in microseconds since the epoch; 0 if never.
    #[zbus(property)]
    fn state_change_timestamp(&self) -> zbus::Result<u64>;

    /// 128 bits that change each time the unit is started; empty while it never ran.
    #[zbus(property, name = "InvocationID")]
    fn invocation_id(&self) -> zbus::Result<Vec<u8>>;
}

/// `org.freedesktop.systemd1.Service`, for units of type service.
#[proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1",
    gen_blocking = false
)]
pub trait Service {
    /// Why the service last stopped or failed: `success`, `exit-code`, `start-limit-hit`, ...
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;

    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;

    /// How often systemd restarted the service by its `Restart=` setting.
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
}

/// `org.freedesktop.systemd1.Job`, on the path a queued job has until it is removed.
#[proxy(
    interface = "org.freedesktop.systemd1.Job",
    default_service = "org.freedesktop.systemd1",
    gen_blocking = false
)]
pub trait Job {
    /// `waiting` or `running`.
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
}
