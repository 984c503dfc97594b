//! Configuration: what the TOML file says, then the validated [`Settings`] the service runs on.
//!
//! Every key is optional. A missing file at the default path means "all defaults"; a file named
//! with `--config` must exist. Any unknown key or bad value stops start-up with a message that
//! names the key, before the service tells systemd it is ready.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// Where the service looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/galaxyctl-api/config.toml";

/// The address the Laniakea Dashboard expects the API on.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5001";
/// The unit a single-process Galaxy runs as.
pub const DEFAULT_GALAXY_UNIT: &str = "galaxy.service";
/// The unit of the reverse proxy in front of Galaxy.
pub const DEFAULT_NGINX_UNIT: &str = "nginx.service";
/// How long a probe may wait for the TCP (and TLS) connection.
pub const DEFAULT_PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a whole probe may take, answer included.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between two probes while waiting for Galaxy to answer after a restart.
/// Galaxy is seen back on average half of it late; a probe that finds Galaxy still down is
/// one cheap 502 from nginx, so ten a second cost nothing worth saving.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How long one systemd job (the restart of one unit) may take before it is reported stuck.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// A Galaxy unit that became active less than this ago is still starting: a galaxy-startup
/// call waits for it rather than restarting it over. Galaxy takes about 25 s to start, a busy
/// one minutes.
pub const DEFAULT_STARTUP_GRACE: Duration = Duration::from_secs(120);
/// How long after the restart Galaxy has to answer before the recovery is declared failed.
/// A busy production Galaxy can take minutes to start.
pub const DEFAULT_READINESS_DEADLINE: Duration = Duration::from_secs(600);
/// How long a galaxy-startup request waits for the outcome before answering "starting".
/// The dashboard's worker gives up after about 60 seconds; this stays well under it.
pub const DEFAULT_ANSWER_BUDGET: Duration = Duration::from_secs(40);
/// How long a D-Bus method call may take before it is treated as failed.
pub const DEFAULT_BUS_TIMEOUT: Duration = Duration::from_secs(25);
/// The Galaxy URLs a request may name when none are configured: Galaxy behind nginx on the
/// same host.
pub const DEFAULT_GALAXY_URLS: [&str; 2] = ["http://localhost/galaxy", "http://127.0.0.1/galaxy"];
/// Where `token` mode reads its tokens.
pub const DEFAULT_TOKENS_FILE: &str = "/etc/galaxyctl-api/tokens";
/// How far `exp` and `nbf` of an OIDC token may be off, for clocks that differ a little.
pub const DEFAULT_AUTH_LEEWAY: Duration = Duration::from_secs(60);
/// At most this many recoveries may start within [`DEFAULT_RECOVERY_WINDOW`].
pub const DEFAULT_MAX_RECOVERIES: u32 = 3;
pub const DEFAULT_RECOVERY_WINDOW: Duration = Duration::from_secs(900);
/// After a failed recovery, no new one starts for this long: a Galaxy in a crash loop is
/// reported, not hammered.
pub const DEFAULT_FAILURE_COOLDOWN: Duration = Duration::from_secs(120);
/// How long a graceful shutdown may take before open connections are dropped.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Which D-Bus bus carries systemd's manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    /// The system bus and the system manager (PID 1): production.
    System,
    /// The session bus of a `systemd --user` manager.
    User,
}

/// When nginx is restarted along with Galaxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NginxRestart {
    /// Only when its unit is not active (or when nothing listens at all).
    WhenInactive,
    /// Every time Galaxy is restarted, as the original service did.
    Always,
}

/// How callers of the routes that can restart units are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// OIDC access tokens (JWT) from trusted issuers, as the Laniakea Dashboard sends.
    Oidc,
    /// Static bearer tokens from a file only the service can read.
    Token,
    /// No authentication at all; only when written explicitly.
    None,
}

/// The file as written: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    bus: Option<Bus>,
    #[serde(default)]
    galaxy: GalaxySection,
    #[serde(default)]
    nginx: NginxSection,
    #[serde(default)]
    probe: ProbeSection,
    #[serde(default)]
    recovery: RecoverySection,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    tls: TlsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    mode: Option<AuthMode>,
    issuers: Option<Vec<String>>,
    subjects: Option<Vec<String>>,
    audiences: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    leeway: Option<Duration>,
    tokens_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GalaxySection {
    units: Option<Vec<String>>,
    urls: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NginxSection {
    unit: Option<String>,
    restart: Option<NginxRestart>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeSection {
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    verify_tls: Option<bool>,
    readiness_url: Option<String>,
    readiness_socket: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverySection {
    #[serde(default, with = "humantime_serde")]
    job_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    startup_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    readiness_deadline: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    answer_budget: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    bus_timeout: Option<Duration>,
    max_recoveries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    failure_cooldown: Option<Duration>,
}

/// Validated settings: what the rest of the service runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub bus: Bus,
    /// The Galaxy units, restarted together when Galaxy answers with an error.
    pub galaxy_units: Vec<String>,
    /// The URLs a request's endpoint must fall under: nothing else is ever probed.
    pub galaxy_urls: Vec<Url>,
    pub nginx_unit: String,
    pub nginx_restart: NginxRestart,
    pub probe: ProbeSettings,
    pub recovery: RecoverySettings,
    pub auth: AuthSettings,
    /// Certificate chain and private key (PEM) when the API is served over https.
    pub tls: Option<TlsSettings>,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// Trusted OIDC issuers (`iss`), each with a discovery document under
    /// `/.well-known/openid-configuration`.
    pub issuers: Vec<String>,
    /// When set, only these OIDC subjects (`sub`) may cause restarts.
    pub subjects: Option<Vec<String>>,
    /// When set, an OIDC token's `aud` must name one of these.
    pub audiences: Option<Vec<String>>,
    pub leeway: Duration,
    pub tokens_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// The longest pause between probes while waiting for a restarted Galaxy.
    pub interval: Duration,
    /// Whether probes check the certificate of an https endpoint. Laniakea hosts often carry a
    /// self-signed one; turning this off is then the only way to probe them over https.
    pub verify_tls: bool,
    /// What to probe after a restart to know Galaxy is ready, when not the endpoint itself:
    /// Galaxy's `/api/version` answers without authentication.
    pub readiness_url: Option<Url>,
    /// A unix socket (gunicorn's, behind nginx) that `readiness_url`'s path is asked over.
    pub readiness_socket: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RecoverySettings {
    pub job_timeout: Duration,
    /// A Galaxy unit active for less than this is waited for, not restarted.
    pub startup_grace: Duration,
    pub readiness_deadline: Duration,
    pub answer_budget: Duration,
    pub bus_timeout: Duration,
    /// At most this many recoveries start within `window`.
    pub max_recoveries: u32,
    pub window: Duration,
    /// No recovery starts this long after a failed one.
    pub failure_cooldown: Duration,
}

/// A configuration that cannot be used, with the key at fault where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

impl Settings {
    /// Loads the file at `path`. When `explicit` is false and the file does not exist, the
    /// defaults apply: a host may run the service without writing any configuration.
    pub fn load(path: &Path, explicit: bool) -> Result<Settings, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Settings::parse(&text, path)
    }

    /// Parses and validates the text of a configuration file; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_message(text, &e),
        })?;
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };

        let listen = file.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen
            .parse()
            .map_err(|e| invalid("listen", format!("`{listen}` is not an address:port ({e})")))?;

        let galaxy_units = file
            .galaxy
            .units
            .unwrap_or_else(|| vec![DEFAULT_GALAXY_UNIT.to_owned()]);
        if galaxy_units.is_empty() {
            return Err(invalid("galaxy.units", "names no unit".to_owned()));
        }
        for unit in &galaxy_units {
            check_unit_name(unit).map_err(|m| invalid("galaxy.units", m))?;
        }
        let nginx_unit = file
            .nginx
            .unit
            .unwrap_or_else(|| DEFAULT_NGINX_UNIT.to_owned());
        check_unit_name(&nginx_unit).map_err(|m| invalid("nginx.unit", m))?;
        if galaxy_units.contains(&nginx_unit) {
            return Err(invalid(
                "nginx.unit",
                format!("`{nginx_unit}` is also listed in galaxy.units"),
            ));
        }

        let positive = |key, value: Duration| {
            if value.is_zero() {
                Err(invalid(key, "must be longer than zero".to_owned()))
            } else {
                Ok(())
            }
        };

        let probe = ProbeSettings {
            connect_timeout: file
                .probe
                .connect_timeout
                .unwrap_or(DEFAULT_PROBE_CONNECT_TIMEOUT),
            timeout: file.probe.timeout.unwrap_or(DEFAULT_PROBE_TIMEOUT),
            interval: file.probe.interval.unwrap_or(DEFAULT_PROBE_INTERVAL),
            verify_tls: file.probe.verify_tls.unwrap_or(true),
            readiness_url: match &file.probe.readiness_url {
                Some(url) => {
                    Some(parse_galaxy_url(url).map_err(|m| invalid("probe.readiness_url", m))?)
                }
                None => None,
            },
            readiness_socket: file.probe.readiness_socket,
        };
        if probe.readiness_socket.is_some() && probe.readiness_url.is_none() {
            return Err(invalid(
                "probe.readiness_url",
                "is needed with probe.readiness_socket: it names the path to ask for".to_owned(),
            ));
        }
        positive("probe.connect_timeout", probe.connect_timeout)?;
        positive("probe.timeout", probe.timeout)?;
        positive("probe.interval", probe.interval)?;
        if probe.connect_timeout > probe.timeout {
            return Err(invalid(
                "probe.connect_timeout",
                "is longer than probe.timeout".to_owned(),
            ));
        }

        let recovery = RecoverySettings {
            job_timeout: file.recovery.job_timeout.unwrap_or(DEFAULT_JOB_TIMEOUT),
            startup_grace: file.recovery.startup_grace.unwrap_or(DEFAULT_STARTUP_GRACE),
            readiness_deadline: file
                .recovery
                .readiness_deadline
                .unwrap_or(DEFAULT_READINESS_DEADLINE),
            answer_budget: file.recovery.answer_budget.unwrap_or(DEFAULT_ANSWER_BUDGET),
            bus_timeout: file.recovery.bus_timeout.unwrap_or(DEFAULT_BUS_TIMEOUT),
            max_recoveries: file
                .recovery
                .max_recoveries
                .unwrap_or(DEFAULT_MAX_RECOVERIES),
            window: file.recovery.window.unwrap_or(DEFAULT_RECOVERY_WINDOW),
            failure_cooldown: file
                .recovery
                .failure_cooldown
                .unwrap_or(DEFAULT_FAILURE_COOLDOWN),
        };
        positive("recovery.job_timeout", recovery.job_timeout)?;
        positive("recovery.readiness_deadline", recovery.readiness_deadline)?;
        positive("recovery.answer_budget", recovery.answer_budget)?;
        positive("recovery.bus_timeout", recovery.bus_timeout)?;
        positive("recovery.window", recovery.window)?;
        if recovery.max_recoveries == 0 {
            return Err(invalid(
                "recovery.max_recoveries",
                "must be at least 1".to_owned(),
            ));
        }

        let galaxy_urls = match file.galaxy.urls {
            Some(urls) => urls,
            None => DEFAULT_GALAXY_URLS.iter().map(|u| u.to_string()).collect(),
        };
        if galaxy_urls.is_empty() {
            return Err(invalid("galaxy.urls", "names no URL".to_owned()));
        }
        let galaxy_urls = galaxy_urls
            .iter()
            .map(|u| parse_galaxy_url(u).map_err(|m| invalid("galaxy.urls", m)))
            .collect::<Result<Vec<_>, _>>()?;

        let auth = AuthSettings {
            mode: file.auth.mode.unwrap_or(AuthMode::Oidc),
            issuers: file.auth.issuers.unwrap_or_default(),
            subjects: file.auth.subjects,
            audiences: file.auth.audiences,
            leeway: file.auth.leeway.unwrap_or(DEFAULT_AUTH_LEEWAY),
            tokens_file: file
                .auth
                .tokens_file
                .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKENS_FILE)),
        };
        if auth.mode == AuthMode::Oidc {
            if auth.issuers.is_empty() {
                return Err(invalid(
                    "auth.issuers",
                    "names no trusted OIDC issuer; list the dashboard's identity provider, \
                     or choose another auth.mode"
                        .to_owned(),
                ));
            }
            for issuer in &auth.issuers {
                let url = Url::parse(issuer).map_err(|e| {
                    invalid("auth.issuers", format!("`{issuer}` is not a URL ({e})"))
                })?;
                if url.scheme() != "https" && !is_loopback(&url) {
                    return Err(invalid(
                        "auth.issuers",
                        format!("`{issuer}` must be an https URL"),
                    ));
                }
            }
        }

        let tls = match (file.tls.certificate, file.tls.key) {
            (Some(certificate), Some(key)) => Some(TlsSettings { certificate, key }),
            (None, None) => None,
            (Some(_), None) => return Err(invalid("tls.key", "is missing".to_owned())),
            (None, Some(_)) => return Err(invalid("tls.certificate", "is missing".to_owned())),
        };

        Ok(Settings {
            listen,
            bus: file.bus.unwrap_or(Bus::System),
            galaxy_units,
            nginx_unit,
            nginx_restart: file.nginx.restart.unwrap_or(NginxRestart::WhenInactive),
            galaxy_urls,
            probe,
            recovery,
            auth,
            tls,
        })
    }
}

/// toml's message on one line, led by the dotted key at fault when the error points into a
/// `key = value` line: toml names the line and column, not the table the key belongs to.
fn parse_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.to_string().trim_end().replace('\n', " ");
    match error.span().and_then(|span| key_at(text, span.start)) {
        Some(key) => format!("key `{key}`: {message}"),
        None => message,
    }
}

/// The dotted key of the `key = value` line holding byte `offset` of `text`: the key on that
/// line, under the last `[table]` header above it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text[line_start..].split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with(['[', '#']) || key.contains('\n') {
        return None;
    }
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('['))
        .and_then(|header| header.get(1..header.find(']')?))
        .map(str::trim);
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    })
}

/// A Galaxy URL from the configuration: http(s), a host, no credentials, no query.
fn parse_galaxy_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("`{text}` is not an http or https URL with a host"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(format!("`{text}` must not carry credentials or a query"));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Accepts the unit names systemd accepts for services and targets, and nothing that could
/// smuggle a glob, a path or a template without an instance into a D-Bus call.
fn check_unit_name(name: &str) -> Result<(), String> {
    const SUFFIXES: [&str; 2] = [".service", ".target"];
    let Some(stem) = SUFFIXES.iter().find_map(|s| name.strip_suffix(s)) else {
        return Err(format!("`{name}` is not a .service or .target unit"));
    };
    let valid_chars = stem
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
    if stem.is_empty() || name.len() > 255 || !valid_chars || stem.ends_with('@') {
        return Err(format!("`{name}` is not a valid unit name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[auth]\nissuers = [\"https://iam.example.org/\"]\n";

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(text, Path::new("test.toml"))
    }

    fn error(text: &str) -> String {
        parse(text)
            .expect_err("the configuration is refused")
            .to_string()
    }

    #[test]
    fn the_example_file_holds_the_defaults() {
        let example = include_str!("../config/config.example.toml");
        let from_example = parse(example).expect("the example configuration is valid");
        let defaults = parse(MINIMAL).expect("a minimal configuration is valid");
        assert_eq!(from_example.listen, defaults.listen);
        assert_eq!(from_example.bus, defaults.bus);
        assert_eq!(from_example.galaxy_units, defaults.galaxy_units);
        assert_eq!(from_example.galaxy_urls, defaults.galaxy_urls);
        assert_eq!(from_example.nginx_unit, defaults.nginx_unit);
        assert_eq!(from_example.nginx_restart, defaults.nginx_restart);
        assert_eq!(from_example.probe.timeout, DEFAULT_PROBE_TIMEOUT);
        assert_eq!(from_example.probe.interval, DEFAULT_PROBE_INTERVAL);
        assert_eq!(from_example.recovery.answer_budget, DEFAULT_ANSWER_BUDGET);
        assert_eq!(
            from_example.recovery.readiness_deadline,
            DEFAULT_READINESS_DEADLINE
        );
        assert_eq!(from_example.recovery.max_recoveries, DEFAULT_MAX_RECOVERIES);
        assert_eq!(
            from_example.recovery.failure_cooldown,
            DEFAULT_FAILURE_COOLDOWN
        );
        assert_eq!(from_example.auth.mode, AuthMode::Oidc);
        assert_eq!(from_example.auth.leeway, DEFAULT_AUTH_LEEWAY);
        assert!(from_example.tls.is_none());
    }

    #[test]
    fn the_default_refuses_unauthenticated_restarts() {
        assert!(error("").contains("auth.issuers"), "{}", error(""));
        let none = parse("[auth]\nmode = \"none\"\n").expect("none may be written explicitly");
        assert_eq!(none.auth.mode, AuthMode::None);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("listen = \"nowhere\"\n", "listen"),
            ("[galaxy]\nunits = []\n", "galaxy.units"),
            ("[galaxy]\nunits = [\"galaxy\"]\n", "galaxy.units"),
            ("[galaxy]\nunits = [\"../x.service\"]\n", "galaxy.units"),
            ("[galaxy]\nurls = [\"ftp://x/galaxy\"]\n", "galaxy.urls"),
            (
                "[galaxy]\nurls = [\"http://u:p@x/galaxy\"]\n",
                "galaxy.urls",
            ),
            ("[nginx]\nunit = \"galaxy.service\"\n", "nginx.unit"),
            ("[probe]\ntimeout = \"0s\"\n", "probe.timeout"),
            (
                "[probe]\nconnect_timeout = \"20s\"\n",
                "probe.connect_timeout",
            ),
            (
                "[probe]\nreadiness_socket = \"/run/g.sock\"\n",
                "probe.readiness_url",
            ),
            (
                "[recovery]\nmax_recoveries = 0\n",
                "recovery.max_recoveries",
            ),
            (
                "[auth]\nissuers = [\"http://iam.example.org/\"]\n",
                "auth.issuers",
            ),
            ("[tls]\ncertificate = \"/c.pem\"\n", "tls.key"),
        ] {
            let text = if text.contains("[auth]") {
                text.to_owned()
            } else {
                format!("{MINIMAL}{text}")
            };
            let message = error(&text);
            assert!(
                message.contains(key),
                "`{text}` gave `{message}`, not naming {key}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(error("colour = \"blue\"\n").contains("colour"));
        assert!(error("[probe]\ntimeout = \"soon\"\n").contains("timeout"));
        assert!(error("bus = \"session\"\n").contains("bus"));
    }

    #[test]
    fn a_missing_default_file_means_defaults_but_a_named_one_must_exist() {
        let missing = Path::new("/nonexistent/galaxyctl-api.toml");
        assert!(matches!(
            Settings::load(missing, true),
            Err(ConfigError::Read { .. })
        ));
        // The defaults themselves need an issuer, so the implicit file fails on that key.
        let message = Settings::load(missing, false).unwrap_err().to_string();
        assert!(message.contains("auth.issuers"), "{message}");
    }
}
