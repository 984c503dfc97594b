//! Which URLs the service may fetch: a request's `endpoint` is caller-controlled, so it is
//! only ever probed when it falls under one of the configured Galaxy URLs.
//!
//! "Falls under" means the same scheme, the same host (as the URL standard normalises it: a
//! different spelling of another address, such as an IPv6 form of an IPv4 host, is another
//! host), the same port, and a path equal to or below the configured path, segment by
//! segment. Checked before any outbound connection. The caller's endpoint only chooses which
//! configured Galaxy URL is probed: a page Galaxy does not have (a 404) must not pass for a
//! Galaxy that is down and get it restarted.

use url::Url;

/// The longest endpoint accepted.
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// Why an endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// It is not a usable http(s) URL at all.
    #[error("`endpoint` {0}")]
    Invalid(String),
    /// It is a URL, but not one of this server's Galaxy.
    #[error("`endpoint` is not a Galaxy URL this service manages")]
    NotAllowed,
}

/// Parses `endpoint`, checks it against the `allowed` Galaxy URLs and returns the one it
/// falls under: that configured URL is what gets probed, never the caller's own path.
pub fn check(endpoint: &str, allowed: &[Url]) -> Result<Url, EndpointError> {
    let invalid = |why: String| EndpointError::Invalid(why);
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(invalid("is too long".to_owned()));
    }
    let url = Url::parse(endpoint).map_err(|e| invalid(format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must be an http or https URL".to_owned()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("has no host".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials".to_owned()));
    }
    // The caller chooses which Galaxy, not which page of it is fetched: a page Galaxy does
    // not have (404) must not read as a Galaxy that is down and get it restarted.
    allowed
        .iter()
        .find(|galaxy| falls_under(&url, galaxy))
        .cloned()
        .ok_or(EndpointError::NotAllowed)
}

fn falls_under(url: &Url, galaxy: &Url) -> bool {
    url.scheme() == galaxy.scheme()
        && url.host() == galaxy.host()
        && url.port_or_known_default() == galaxy.port_or_known_default()
        && path_under(url.path(), galaxy.path())
}

fn path_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<Url> {
        vec![
            Url::parse("http://galaxy.example.org/galaxy").unwrap(),
            Url::parse("https://127.0.0.1:8443/").unwrap(),
        ]
    }

    #[test]
    fn accepts_urls_under_a_galaxy_url() {
        for ok in [
            "http://galaxy.example.org/galaxy",
            "http://galaxy.example.org/galaxy/",
            "http://GALAXY.example.org:80/galaxy/api/version",
            "https://127.0.0.1:8443/galaxy",
            "https://127.0.0.1:8443",
        ] {
            assert!(check(ok, &allowed()).is_ok(), "{ok} should be accepted");
        }
    }

    #[test]
    fn refuses_other_origins_and_paths() {
        for refused in [
            "http://galaxy.example.org/galaxyfoo",
            "http://galaxy.example.org/",
            "http://galaxy.example.org/galaxy/../admin",
            "http://galaxy.example.org/%2e%2e/admin",
            "https://galaxy.example.org/galaxy",
            "http://galaxy.example.org:8080/galaxy",
            "http://galaxy.example.org.evil.net/galaxy",
            "http://169.254.169.254/latest/meta-data",
            "https://127.0.0.1:8444/",
            "https://[::ffff:127.0.0.1]:8443/",
            "https://localhost:8443/",
        ] {
            assert_eq!(
                check(refused, &allowed()),
                Err(EndpointError::NotAllowed),
                "{refused} should be refused"
            );
        }
    }

    #[test]
    fn refuses_what_is_no_http_url() {
        for invalid in [
            "file:///etc/passwd",
            "ftp://galaxy.example.org/galaxy",
            "http://user:pw@galaxy.example.org/galaxy",
            "http://galaxy.example.org@169.254.169.254/galaxy",
            "galaxy.example.org/galaxy",
            "",
            "http://",
        ] {
            assert!(
                matches!(check(invalid, &allowed()), Err(EndpointError::Invalid(_))),
                "{invalid} should be invalid"
            );
        }
        let long = format!(
            "http://galaxy.example.org/galaxy/{}",
            "a".repeat(MAX_ENDPOINT_LEN)
        );
        assert!(matches!(
            check(&long, &allowed()),
            Err(EndpointError::Invalid(_))
        ));
    }
}
