//! Who may cause a restart: OIDC access tokens, static bearer tokens, or (explicitly) anyone.
//!
//! The Laniakea Dashboard sends `Authorization: Bearer <OIDC access token>` from its identity
//! provider. In `oidc` mode the token is a JWT checked against the signing keys its issuer
//! publishes (found through the issuer's discovery document, cached, fetched again when a
//! token names a key id not yet seen), its `iss` against the trusted issuers, `exp`/`nbf`
//! with a small leeway, and optionally `sub` against an allow-list. In `token` mode the
//! token must equal one of the lines of a private file. Tokens are never logged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthMode, AuthSettings};

/// How often the keys of one issuer may be fetched again for an unknown key id: a stream of
/// forged tokens must not turn into a stream of requests to the identity provider.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// How long fetched keys are used before they are fetched again anyway.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The largest discovery document or key set accepted.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Bounds on every request to an identity provider.
const IDP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IDP_TIMEOUT: Duration = Duration::from_secs(10);

/// The caller, once authenticated. Holds nothing secret: it is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub` of an OIDC token, `token-N` for the N-th line of the token file, `anonymous`.
    pub subject: String,
    pub issuer: Option<String>,
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token in the Authorization header")]
    Missing,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    /// The identity is valid but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The identity provider could not be asked.
    #[error("cannot check the token: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// A stable code for API clients and log queries.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "unauthenticated",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::Forbidden(_) => "forbidden",
            AuthError::Unavailable(_) => "auth_unavailable",
        }
    }
}

/// Checks callers according to the configured mode.
#[derive(Debug)]
pub enum Authenticator {
    None,
    Tokens(Tokens),
    Oidc(Box<Oidc>),
}

impl Authenticator {
    /// Builds the authenticator; reads the token file in `token` mode.
    pub fn new(settings: &AuthSettings) -> Result<Authenticator, String> {
        Ok(match settings.mode {
            AuthMode::None => Authenticator::None,
            AuthMode::Token => Authenticator::Tokens(Tokens::load(&settings.tokens_file)?),
            AuthMode::Oidc => Authenticator::Oidc(Box::new(Oidc::new(settings)?)),
        })
    }

    /// Authenticates the bearer token of a request (`None` when it has none).
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Identity, AuthError> {
        match self {
            Authenticator::None => Ok(Identity {
                subject: "anonymous".to_owned(),
                issuer: None,
            }),
            Authenticator::Tokens(tokens) => tokens.check(bearer.ok_or(AuthError::Missing)?),
            Authenticator::Oidc(oidc) => oidc.check(bearer.ok_or(AuthError::Missing)?).await,
        }
    }
}

/// Extracts the token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Static bearer tokens, kept only as SHA-256 digests.
#[derive(Debug)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl Tokens {
    /// Reads one token per line (blank lines and `#` comments ignored) from a file that only
    /// its owner may read: a token readable by others is no secret.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        use std::os::unix::fs::PermissionsExt;

        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{shown} is readable or writable by others (mode {:o}); chmod 600 it",
                mode & 0o777
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
        let digests: Vec<[u8; 32]> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|token| Sha256::digest(token.as_bytes()).into())
            .collect();
        if digests.is_empty() {
            return Err(format!("{shown} holds no token"));
        }
        Ok(Tokens { digests })
    }

    fn check(&self, presented: &str) -> Result<Identity, AuthError> {
        // Digests have one length whatever the token's, and every line is compared, so the
        // time taken says nothing about which token, or how much of one, matched.
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut matched = None;
        for (i, known) in self.digests.iter().enumerate() {
            if bool::from(known.ct_eq(&digest)) {
                matched = Some(i);
            }
        }
        match matched {
            Some(i) => Ok(Identity {
                subject: format!("token-{}", i + 1),
                issuer: None,
            }),
            None => Err(AuthError::Invalid("unknown token".to_owned())),
        }
    }
}

/// OIDC access tokens from trusted issuers.
#[derive(Debug)]
pub struct Oidc {
    issuers: Vec<String>,
    subjects: Option<Vec<String>>,
    audiences: Option<Vec<String>>,
    leeway: Duration,
    client: reqwest::Client,
    keys: tokio::sync::Mutex<HashMap<String, IssuerKeys>>,
    last_fetch: Mutex<HashMap<String, Instant>>,
}

#[derive(Debug)]
struct IssuerKeys {
    set: JwkSet,
    fetched: Instant,
}

/// The claims this service looks at; the signature check covers the rest.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UnverifiedIssuer {
    iss: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Discovery {
    jwks_uri: String,
}

/// Algorithms with a public key. A symmetric one (HS256) would let anyone who knows a
/// published key sign tokens.
const ALLOWED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Oidc {
    fn new(settings: &AuthSettings) -> Result<Oidc, String> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("galaxyctl-api/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(IDP_CONNECT_TIMEOUT)
            .timeout(IDP_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Oidc {
            issuers: settings.issuers.clone(),
            subjects: settings.subjects.clone(),
            audiences: settings.audiences.clone(),
            leeway: settings.leeway,
            client,
            keys: tokio::sync::Mutex::new(HashMap::new()),
            last_fetch: Mutex::new(HashMap::new()),
        })
    }

    async fn check(&self, token: &str) -> Result<Identity, AuthError> {
        let invalid = |why: &str| AuthError::Invalid(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("not a JWT"))?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(invalid("signed with an algorithm that is not accepted"));
        }

        // The issuer decides which keys to check the signature with, so it is read before
        // the signature is checked; it is checked against the list first, and signed too.
        let issuer = unverified_issuer(token).ok_or_else(|| invalid("no `iss` claim"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|trusted| same_issuer(trusted, &issuer))
            .ok_or_else(|| invalid("issued by an issuer that is not trusted"))?;

        let key = self.key(issuer, header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        let bare = issuer.trim_end_matches('/');
        validation.set_issuer(&[bare.to_owned(), format!("{bare}/")]);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        match &self.audiences {
            // jsonwebtoken checks `aud` only when the token has one: require it, or a token
            // issued for no audience in particular would pass for this service.
            Some(audiences) => {
                validation.set_audience(audiences);
                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            }
            None => {
                validation.set_required_spec_claims(&["exp", "iss"]);
                validation.validate_aud = false;
            }
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            invalid(match e.kind() {
                ExpiredSignature => "expired",
                ImmatureSignature => "not valid yet (nbf)",
                InvalidSignature => "bad signature",
                InvalidIssuer => "issued by an issuer that is not trusted",
                InvalidAudience => "meant for another audience",
                MissingRequiredClaim(_) => "a required claim is missing",
                _ => "cannot be decoded",
            })
        })?;

        let subject = data.claims.sub.unwrap_or_default();
        if let Some(allowed) = &self.subjects {
            if !allowed.iter().any(|s| s == &subject) {
                return Err(AuthError::Forbidden(format!(
                    "subject `{subject}` is not allowed to restart Galaxy"
                )));
            }
        }
        Ok(Identity {
            subject,
            issuer: Some(issuer.clone()),
        })
    }

    /// The decoding key named `kid`, from the cache or fetched from the issuer.
    async fn key(&self, issuer: &str, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        let mut cache = self.keys.lock().await;
        let fresh = cache
            .get(issuer)
            .is_some_and(|keys| keys.fetched.elapsed() < KEYS_MAX_AGE);
        let known = cache
            .get(issuer)
            .is_some_and(|keys| find_key(&keys.set, kid).is_some());
        if !fresh || (!known && self.may_refresh(issuer)) {
            self.note_fetch(issuer);
            let set = self.fetch_keys(issuer).await?;
            tracing::info!(
                issuer,
                keys = set.keys.len(),
                "fetched the issuer's signing keys"
            );
            cache.insert(
                issuer.to_owned(),
                IssuerKeys {
                    set,
                    fetched: Instant::now(),
                },
            );
        }
        let set = &cache
            .get(issuer)
            .expect("the issuer's keys were inserted above when missing")
            .set;
        let jwk = find_key(set, kid).ok_or_else(|| {
            AuthError::Invalid("signed with a key the issuer does not publish".to_owned())
        })?;
        DecodingKey::from_jwk(jwk)
            .map_err(|e| AuthError::Unavailable(format!("the issuer's key is unusable: {e}")))
    }

    fn may_refresh(&self, issuer: &str) -> bool {
        let last = self
            .last_fetch
            .lock()
            .expect("fetch lock is never held across a panic");
        last.get(issuer)
            .is_none_or(|at| at.elapsed() >= MIN_REFRESH_INTERVAL)
    }

    fn note_fetch(&self, issuer: &str) {
        let mut last = self
            .last_fetch
            .lock()
            .expect("fetch lock is never held across a panic");
        last.insert(issuer.to_owned(), Instant::now());
    }

    async fn fetch_keys(&self, issuer: &str) -> Result<JwkSet, AuthError> {
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self.fetch_json(&discovery_url).await?;
        self.fetch_json(&discovery.jwks_uri).await
    }

    async fn fetch_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, AuthError> {
        let unavailable = |e: &dyn std::fmt::Display| AuthError::Unavailable(format!("{url}: {e}"));
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable(&e))?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| unavailable(&e))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(unavailable(&"document too large"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| unavailable(&e))
    }
}

/// The key with id `kid`, or the only key when the token names none.
fn find_key<'a>(set: &'a JwkSet, kid: Option<&str>) -> Option<&'a jsonwebtoken::jwk::Jwk> {
    match kid {
        Some(kid) => set.find(kid),
        None if set.keys.len() == 1 => set.keys.first(),
        None => None,
    }
}

fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<UnverifiedIssuer>(&bytes).ok()?.iss
}

/// Issuers compare equal with or without a trailing slash, as providers differ on it.
fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}
