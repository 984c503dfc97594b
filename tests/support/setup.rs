//! What the harness chooses and writes for a sandbox: ports, galaxyctl-api's config, the
//! stand-in's drop-in, and reading back the DIR/env that `up` wrote.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Mutex;

/// The drop-in that `Sandbox::set_galaxy_env` and `Builder::galaxy_env` write.
const GALAXY_ENV_DROPIN: &str = "galaxy.service.d/50-test-env.conf";

/// Ports handed out in this test process, so that tests running in parallel never get
/// the same one even when the kernel offers it twice.
static PORTS_IN_USE: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Three loopback ports that were free a moment ago and that no other test of this
/// process got. The kernel may hand a port to someone else before the sandbox binds it;
/// that is rare enough for tests.
pub(super) fn free_ports() -> [u16; 3] {
    let mut in_use = PORTS_IN_USE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let in_use = in_use.get_or_insert_with(HashSet::new);

    // All listeners stay open until the end, so the kernel does not offer one port twice.
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
        let port = listener
            .local_addr()
            .expect("a bound listener has an address")
            .port();
        if in_use.insert(port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    [ports[0], ports[1], ports[2]]
}

/// galaxyctl-api's config: the defaults `up` also writes, with the test's TOML merged in.
/// galaxyctl-api probes only the Galaxy URLs it is given, and starts only with an auth mode
/// it can use. No start-up grace: every sandbox's Galaxy has only just started, and a test
/// that looks at the grace sets it.
pub(super) fn config_toml(api_port: u16, nginx_port: u16, extra: &[String]) -> String {
    let default = format!(
        "listen = \"127.0.0.1:{api_port}\"\n\
         bus = \"user\"\n\
         [galaxy]\n\
         units = [\"galaxy.service\"]\n\
         urls = [\"http://127.0.0.1:{nginx_port}/galaxy\"]\n\
         [nginx]\n\
         unit = \"nginx.service\"\n\
         [auth]\n\
         mode = \"none\"\n\
         [recovery]\n\
         startup_grace = \"0s\"\n"
    );
    let mut config: toml::Table = default.parse().expect("the default config is valid TOML");
    for toml in extra {
        let extra: toml::Table = toml
            .parse()
            .unwrap_or_else(|err| panic!("config given to the sandbox: {err}"));
        merge(&mut config, extra);
    }
    toml::to_string(&config).expect("a toml::Table always serializes")
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

/// Writes the stand-in's environment as a galaxy.service drop-in.
pub(super) fn write_galaxy_env(unit_dir: &Path, vars: &[(String, String)]) {
    let mut dropin = String::from("[Service]\n");
    for (key, value) in vars {
        // Quoted for systemd, whose specifiers start with %.
        let value = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('%', "%%");
        dropin += &format!("Environment=\"{key}={value}\"\n");
    }
    let path = unit_dir.join(GALAXY_ENV_DROPIN);
    fs::create_dir_all(path.parent().expect("the drop-in path has a folder"))
        .expect("cannot create galaxy.service.d");
    fs::write(&path, dropin).expect("cannot write the galaxy.service drop-in");
}

/// Parses DIR/env: `export NAME=value` lines with unquoted values (`up` refuses a DIR
/// with whitespace, so none needs quotes).
pub(super) fn read_env_file(path: &Path) -> HashMap<String, String> {
    let text = fs::read_to_string(path).expect("sandbox/up succeeded but wrote no DIR/env");
    text.lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}
