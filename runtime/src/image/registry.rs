//! A pull-only client for the OCI distribution (registry v2) API: manifests and blobs, with
//! Docker-style token/basic authentication and an HTTP fallback for insecure and loopback registries.

use crate::image::digest::{Digest, Hasher};
use crate::image::reference::{Reference, is_valid_tag};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::debug;

pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_TYPE_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Largest manifest we read.
pub const MANIFEST_MAX_BYTES: usize = 4 << 20;
const TOKEN_RESPONSE_MAX_BYTES: usize = 1 << 20;
/// How much of an error body we read to find the registry's message.
const ERROR_BODY_MAX_BYTES: usize = 8 << 10;
/// How much of an unparseable error body goes into an error message.
const ERROR_SNIPPET_BYTES: usize = 200;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the next bytes of a response (there is no overall timeout: layers can be large).
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Cap on a token's cached lifetime, whatever `expires_in` says.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
const OAUTH_CLIENT_ID: &str = "keelson";

/// Credentials for one registry, as a CRI `AuthConfig` carries them.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    /// An OAuth2 refresh token, exchanged at the token realm for an access token.
    pub identity_token: Option<String>,
    /// A bearer token sent to the registry as is.
    pub registry_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("identity_token", &redacted(&self.identity_token))
            .field("registry_token", &redacted(&self.registry_token))
            .finish()
    }
}

impl Credentials {
    fn basic(&self) -> Option<(&str, &str)> {
        match (&self.username, &self.password) {
            (Some(u), Some(p)) if !u.is_empty() => Some((u, p)),
            _ => None,
        }
    }

    /// A fingerprint that keys cached tokens, so a token obtained with one set of credentials
    /// is never reused for a pull made with other (or no) credentials.
    fn fingerprint(&self) -> String {
        let mut h = Hasher::new();
        for part in [
            &self.username,
            &self.password,
            &self.identity_token,
            &self.registry_token,
        ] {
            match part {
                Some(s) => {
                    h.update(&(s.len() as u64 + 1).to_le_bytes());
                    h.update(s.as_bytes());
                }
                None => h.update(&0u64.to_le_bytes()),
            }
        }
        h.finish().hex().to_string()
    }
}

pub struct RegistryOptions {
    /// Hosts (`host` or `host:port`) that may be reached over plain HTTP when HTTPS fails.
    pub insecure_registries: Vec<String>,
    pub user_agent: String,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            user_agent: default_user_agent(),
        }
    }
}

fn default_user_agent() -> String {
    concat!("keelson/", env!("CARGO_PKG_VERSION")).to_string()
}

/// A manifest (or index) exactly as the registry sent it.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
    pub bytes: Bytes,
}

/// A blob body being downloaded. The caller verifies the digest while consuming it.
pub struct BlobStream {
    /// The Content-Length, when the registry sent one.
    pub size: Option<u64>,
    pub stream: Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>,
}

impl fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot build the registry http client: {0}")]
    Client(String),
    #[error(
        "invalid manifest reference {reference:?} for {repository}: expected a tag or a sha256 digest"
    )]
    InvalidReference {
        repository: String,
        reference: String,
    },
    #[error("request to registry {host} for {what} failed: {detail}")]
    Transport {
        host: String,
        what: String,
        detail: String,
    },
    #[error("{what} not found on {host}")]
    NotFound { what: String, host: String },
    #[error("not authorized to pull {repository} from {host}: {reason}")]
    Unauthorized {
        host: String,
        repository: String,
        reason: String,
    },
    #[error("registry {host} asks for unsupported authentication for {repository}: {challenge:?}")]
    UnsupportedAuth {
        host: String,
        repository: String,
        challenge: String,
    },
    #[error("cannot get a registry token from {realm} for {repository}: {reason}")]
    Token {
        realm: String,
        repository: String,
        reason: String,
    },
    #[error("registry returned {status} for {what} ({url}): {message}")]
    Status {
        status: u16,
        url: String,
        what: String,
        message: String,
    },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        what: String,
    },
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge { what: String, limit: usize },
    #[error(
        "{what} is a docker schema 1 manifest ({media_type}), which is not supported; \
         push the image again with a current tool"
    )]
    UnsupportedSchema1 { what: String, media_type: String },
    #[error("invalid {what}: {reason}")]
    InvalidManifest { what: String, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Https,
    Http,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

/// How a request is authorised. Deliberately not `Debug`: it holds secrets.
#[derive(Clone, PartialEq, Eq)]
enum Auth {
    Basic { username: String, password: String },
    Bearer(String),
}

impl Auth {
    fn apply(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        // Both helpers mark the header sensitive, so it never shows in reqwest's Debug output.
        match self {
            Auth::Basic { username, password } => rb.basic_auth(username, Some(password)),
            Auth::Bearer(token) => rb.bearer_auth(token),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Auth::Basic { .. } => "basic",
            Auth::Bearer(_) => "bearer",
        }
    }
}

struct CachedToken {
    token: String,
    expires: Instant,
}

/// (api host, scope, credentials fingerprint)
type TokenKey = (String, String, String);

struct Inner {
    http: reqwest::Client,
    /// Lowercased entries of `insecure_registries`.
    insecure: Vec<String>,
    /// The scheme known to work for each host that may use plain HTTP.
    schemes: Mutex<HashMap<String, Scheme>>,
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
    /// Hosts that answered with a Basic challenge: later requests send credentials up front.
    basic_hosts: Mutex<HashSet<String>>,
}

/// A registry client shared by concurrent pulls; cloning is cheap.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("insecure", &self.inner.insecure)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RegistryClient {
    pub fn new(opts: RegistryOptions) -> Result<Self, RegistryError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let user_agent = if opts.user_agent.is_empty() {
            default_user_agent()
        } else {
            opts.user_agent
        };
        let http = reqwest::Client::builder()
            .user_agent(user_agent)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_IDLE_TIMEOUT)
            .build()
            .map_err(|e| RegistryError::Client(error_chain(&e)))?;
        let insecure = opts
            .insecure_registries
            .iter()
            .map(|e| {
                let e = e.trim();
                let e = e
                    .strip_prefix("http://")
                    .or_else(|| e.strip_prefix("https://"))
                    .unwrap_or(e);
                e.trim_end_matches('/').to_ascii_lowercase()
            })
            .filter(|e| !e.is_empty())
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                insecure,
                schemes: Mutex::default(),
                tokens: Mutex::default(),
                basic_hosts: Mutex::default(),
            }),
        })
    }

    /// GET /v2/<repo>/manifests/<reference>; Accept: OCI index, OCI manifest, Docker manifest list v2,
    /// Docker manifest v2 (schema 2).
    pub async fn fetch_manifest(
        &self,
        r: &Reference,
        reference: &str,
        creds: &Credentials,
    ) -> Result<Manifest, RegistryError> {
        let expected = if reference.contains(':') {
            Some(
                Digest::parse(reference).map_err(|_| RegistryError::InvalidReference {
                    repository: r.repository.clone(),
                    reference: reference.to_string(),
                })?,
            )
        } else if is_valid_tag(reference) {
            None
        } else {
            return Err(RegistryError::InvalidReference {
                repository: r.repository.clone(),
                reference: reference.to_string(),
            });
        };
        let what = match expected {
            Some(_) => format!("manifest {}@{reference}", r.repository),
            None => format!("manifest {}:{reference}", r.repository),
        };
        let host = r.api_host();
        let path = format!("/v2/{}/manifests/{reference}", r.repository);
        let accept = [
            MEDIA_TYPE_OCI_INDEX,
            MEDIA_TYPE_OCI_MANIFEST,
            MEDIA_TYPE_DOCKER_MANIFEST_LIST,
            MEDIA_TYPE_DOCKER_MANIFEST,
        ]
        .join(", ");

        let mut resp = self.get(r, &path, Some(&accept), &what, creds).await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, host, &r.repository, &what).await);
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MANIFEST_MAX_BYTES as u64)
        {
            return Err(RegistryError::TooLarge {
                what,
                limit: MANIFEST_MAX_BYTES,
            });
        }
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str()).map(str::to_string);
        let header_digest = header_str(resp.headers(), "docker-content-digest").map(str::to_string);
        let (body, truncated) = read_up_to(&mut resp, MANIFEST_MAX_BYTES)
            .await
            .map_err(|e| transport(host, &what, e))?;
        if truncated {
            return Err(RegistryError::TooLarge {
                what,
                limit: MANIFEST_MAX_BYTES,
            });
        }
        let actual = Digest::of(&body);
        if let Some(expected) = expected {
            if expected != actual {
                return Err(RegistryError::DigestMismatch {
                    expected,
                    actual,
                    what,
                });
            }
        } else if let Some(h) = header_digest {
            match Digest::parse(&h) {
                Ok(expected) if expected != actual => {
                    return Err(RegistryError::DigestMismatch {
                        expected,
                        actual,
                        what,
                    });
                }
                Ok(_) => {}
                Err(e) => debug!(%what, "ignoring docker-content-digest header: {e}"),
            }
        }
        let media_type = manifest_media_type(content_type.as_deref(), &body, &what)?;
        debug!(%what, %media_type, digest = %actual, size = body.len(), "fetched manifest");
        Ok(Manifest {
            media_type,
            digest: actual,
            bytes: Bytes::from(body),
        })
    }

    /// GET /v2/<repo>/blobs/<digest>, following redirects. The caller verifies the digest while streaming.
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        creds: &Credentials,
    ) -> Result<BlobStream, RegistryError> {
        let what = format!("blob {digest} of {}", r.repository);
        let host = r.api_host();
        let path = format!("/v2/{}/blobs/{digest}", r.repository);
        let resp = self.get(r, &path, None, &what, creds).await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, host, &r.repository, &what).await);
        }
        let size = resp.content_length();
        // After a redirect the body comes from another host (often a CDN): name that one in errors.
        let body_host = url_authority(resp.url()).unwrap_or_else(|| host.to_string());
        debug!(%what, final_host = %body_host, ?size, "streaming blob");
        let stream = resp
            .bytes_stream()
            .map(move |chunk| chunk.map_err(|e| transport(&body_host, &what, e)));
        Ok(BlobStream {
            size,
            stream: Box::pin(stream),
        })
    }

    /// Sends a GET to the registry, answering one authentication challenge. Returns any response
    /// but 401; the caller judges the status.
    async fn get(
        &self,
        r: &Reference,
        path: &str,
        accept: Option<&str>,
        what: &str,
        creds: &Credentials,
    ) -> Result<Response, RegistryError> {
        let host = r.api_host();
        let scope = format!("repository:{}:pull", r.repository);
        let key: TokenKey = (host.to_string(), scope, creds.fingerprint());

        let preemptive = self.cached_auth(&key, creds);
        let mut resp = self
            .send(host, path, accept, preemptive.as_ref(), what)
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        if matches!(preemptive, Some(Auth::Bearer(_))) {
            lock(&self.inner.tokens).remove(&key);
        }

        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .flat_map(|v| parse_challenges(v.as_bytes()))
            .collect();
        let unauthorized = |reason: &str| RegistryError::Unauthorized {
            host: host.to_string(),
            repository: r.repository.clone(),
            reason: reason.to_string(),
        };
        let auth = if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let token = match &creds.registry_token {
                Some(t) if !t.is_empty() => t.clone(),
                _ => self.fetch_token(&key, &r.repository, bearer, creds).await?,
            };
            Auth::Bearer(token)
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            lock(&self.inner.basic_hosts).insert(host.to_string());
            let Some((username, password)) = creds.basic() else {
                return Err(unauthorized(
                    "the registry requires a username and password and none were given",
                ));
            };
            Auth::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }
        } else if let Some(other) = challenges.first() {
            return Err(RegistryError::UnsupportedAuth {
                host: host.to_string(),
                repository: r.repository.clone(),
                challenge: other.scheme.clone(),
            });
        } else {
            return Err(unauthorized(
                "the registry answered 401 without an authentication challenge",
            ));
        };
        if preemptive.as_ref() == Some(&auth) {
            let body = read_up_to(&mut resp, ERROR_BODY_MAX_BYTES).await;
            return Err(unauthorized(&refusal(&auth, &body)));
        }

        let mut resp = self.send(host, path, accept, Some(&auth), what).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            lock(&self.inner.tokens).remove(&key);
            let body = read_up_to(&mut resp, ERROR_BODY_MAX_BYTES).await;
            return Err(unauthorized(&refusal(&auth, &body)));
        }
        Ok(resp)
    }

    /// Authorisation to send before any challenge: a live cached token, or basic credentials
    /// for a host known to want them.
    fn cached_auth(&self, key: &TokenKey, creds: &Credentials) -> Option<Auth> {
        if let Some(t) = lock(&self.inner.tokens).get(key)
            && t.expires > Instant::now()
        {
            return Some(Auth::Bearer(t.token.clone()));
        }
        let (username, password) = creds.basic()?;
        lock(&self.inner.basic_hosts)
            .contains(&key.0)
            .then(|| Auth::Basic {
                username: username.to_string(),
                password: password.to_string(),
            })
    }

    /// Gets a bearer token from the challenge's realm and caches it.
    async fn fetch_token(
        &self,
        key: &TokenKey,
        repository: &str,
        challenge: &Challenge,
        creds: &Credentials,
    ) -> Result<String, RegistryError> {
        let host = &key.0;
        let token_error = |realm: &str, reason: String| RegistryError::Token {
            realm: realm.to_string(),
            repository: repository.to_string(),
            reason,
        };
        let Some(realm) = challenge.param("realm") else {
            return Err(token_error(
                host,
                "the bearer challenge has no realm".into(),
            ));
        };
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| token_error(realm, format!("invalid realm url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(token_error(realm, "the realm is not an http(s) url".into()));
        }
        let realm_host = url_authority(&url).unwrap_or_default();
        let service = challenge.param("service");
        let mut scopes = vec![key.1.clone()];
        for s in challenge
            .param("scope")
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
        {
            if !scopes.iter().any(|have| have == s) {
                scopes.push(s.to_string());
            }
        }
        let what = format!("a token for {repository}");

        let rb = match creds.identity_token.as_deref().filter(|t| !t.is_empty()) {
            Some(refresh_token) => {
                let mut form = vec![("grant_type", "refresh_token")];
                if let Some(service) = service {
                    form.push(("service", service));
                }
                let scope = scopes.join(" ");
                form.push(("scope", scope.as_str()));
                form.push(("refresh_token", refresh_token));
                form.push(("client_id", OAUTH_CLIENT_ID));
                self.inner
                    .http
                    .post(url)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form_encode(&form))
            }
            None => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(service) = service {
                        q.append_pair("service", service);
                    }
                    for s in &scopes {
                        q.append_pair("scope", s);
                    }
                }
                let rb = self.inner.http.get(url);
                match creds.basic() {
                    Some((u, p)) => rb.basic_auth(u, Some(p)),
                    None => rb,
                }
            }
        };
        debug!(%host, %realm, oauth = creds.identity_token.is_some(), "fetching registry token");
        let mut resp = rb
            .send()
            .await
            .map_err(|e| transport(&realm_host, &what, e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized {
                host: host.clone(),
                repository: repository.to_string(),
                reason: format!("the token server {realm_host} refused access ({status})"),
            });
        }
        if !status.is_success() {
            let body = read_up_to(&mut resp, ERROR_BODY_MAX_BYTES)
                .await
                .map(|(b, _)| b)
                .unwrap_or_default();
            return Err(token_error(
                realm,
                format!("status {status}: {}", error_message(&body)),
            ));
        }
        let (body, truncated) = read_up_to(&mut resp, TOKEN_RESPONSE_MAX_BYTES)
            .await
            .map_err(|e| transport(&realm_host, &what, e))?;
        if truncated {
            return Err(token_error(
                realm,
                format!("the response is larger than {TOKEN_RESPONSE_MAX_BYTES} bytes"),
            ));
        }

        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| token_error(realm, format!("invalid json response: {e}")))?;
        let token = [parsed.token, parsed.access_token]
            .into_iter()
            .flatten()
            .find(|t| !t.is_empty())
            .ok_or_else(|| token_error(realm, "the response has no token".into()))?;
        let ttl = parsed
            .expires_in
            .filter(|&s| s > 0)
            .map_or(DEFAULT_TOKEN_TTL, Duration::from_secs)
            .min(MAX_TOKEN_TTL);
        let now = Instant::now();
        let mut tokens = lock(&self.inner.tokens);
        tokens.retain(|_, t| t.expires > now);
        tokens.insert(
            key.clone(),
            CachedToken {
                token: token.clone(),
                expires: now + ttl,
            },
        );
        debug!(%host, scope = %key.1, ttl_secs = ttl.as_secs(), "cached registry token");
        Ok(token)
    }

    /// Sends one GET, choosing the scheme: HTTPS, or HTTP for an insecure/loopback host whose
    /// HTTPS connection fails. The scheme that worked is remembered per host.
    async fn send(
        &self,
        host: &str,
        path: &str,
        accept: Option<&str>,
        auth: Option<&Auth>,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let known = lock(&self.inner.schemes).get(host).copied();
        let scheme = known.unwrap_or(Scheme::Https);
        match self.send_once(scheme, host, path, accept, auth).await {
            Ok(resp) => {
                if known.is_none() && self.allows_http(host) {
                    lock(&self.inner.schemes).insert(host.to_string(), scheme);
                }
                Ok(resp)
            }
            Err(e) if e.is_connect() && known.is_some() => {
                // The remembered scheme stopped working: probe afresh next time.
                lock(&self.inner.schemes).remove(host);
                Err(transport(host, what, e))
            }
            Err(e) if e.is_connect() && self.allows_http(host) => {
                let https_error = error_chain(&e.without_url());
                debug!(%host, "https failed ({https_error}); falling back to plain http");
                let resp = self
                    .send_once(Scheme::Http, host, path, accept, auth)
                    .await
                    .map_err(|e| RegistryError::Transport {
                        host: host.to_string(),
                        what: what.to_string(),
                        detail: format!(
                            "https: {https_error}; http: {}",
                            error_chain(&e.without_url())
                        ),
                    })?;
                lock(&self.inner.schemes).insert(host.to_string(), Scheme::Http);
                Ok(resp)
            }
            Err(e) => Err(transport(host, what, e)),
        }
    }

    async fn send_once(
        &self,
        scheme: Scheme,
        host: &str,
        path: &str,
        accept: Option<&str>,
        auth: Option<&Auth>,
    ) -> Result<Response, reqwest::Error> {
        let url = format!("{}://{host}{path}", scheme.as_str());
        let mut rb = self.inner.http.get(&url);
        if let Some(accept) = accept {
            rb = rb.header(ACCEPT, accept);
        }
        if let Some(auth) = auth {
            rb = auth.apply(rb);
        }
        debug!(%url, auth = auth.map(Auth::kind), "registry request");
        let resp = rb.send().await?;
        debug!(%url, status = %resp.status(), final_url = %display_url(resp.url()), "registry response");
        Ok(resp)
    }

    /// Whether `host` (as in a reference: `name`, `name:port`, `[v6]:port`) may be reached over plain HTTP.
    fn allows_http(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let bare = strip_port(&host);
        let unbracketed = bare.trim_start_matches('[').trim_end_matches(']');
        let loopback = unbracketed == "localhost"
            || unbracketed
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        loopback
            || self
                .inner
                .insecure
                .iter()
                .any(|e| *e == host || e == bare || e == unbracketed)
    }
}

/// `host:port` -> `host`, `[v6]:port` -> `[v6]`; anything else unchanged.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port))
            if !h.contains(':') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            h
        }
        _ => host,
    }
}

/// Why a 401 answered to credentials we sent, with the registry's message. Never the secret itself.
fn refusal(auth: &Auth, body: &Result<(Vec<u8>, bool), reqwest::Error>) -> String {
    let message = match body {
        Ok((body, _)) if !body.is_empty() => format!(" ({})", error_message(body)),
        _ => String::new(),
    };
    match auth {
        Auth::Basic { .. } => format!("the registry rejected the username and password{message}"),
        Auth::Bearer(_) => format!(
            "the registry refused the bearer token{message}; the repository may not exist \
             or may need other credentials"
        ),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `host[:port]` of a URL, brackets kept for IPv6.
fn url_authority(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

/// A URL for messages: without query or fragment, which may carry signed credentials (CDN redirects).
fn display_url(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// An error and its causes on one line, without any URL (a redirected URL may be signed).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

fn transport(host: &str, what: &str, e: reqwest::Error) -> RegistryError {
    let e = e.without_url();
    RegistryError::Transport {
        host: host.to_string(),
        what: what.to_string(),
        detail: error_chain(&e),
    }
}

/// Reads at most `limit` bytes of the body; the flag says whether there was more.
async fn read_up_to(resp: &mut Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf, true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, false))
}

/// Turns a non-2xx, non-401 response into an error, with the registry's message when it sent one.
async fn status_error(
    mut resp: Response,
    host: &str,
    repository: &str,
    what: &str,
) -> RegistryError {
    let status = resp.status();
    let url = display_url(resp.url());
    let body = read_up_to(&mut resp, ERROR_BODY_MAX_BYTES)
        .await
        .map(|(b, _)| b)
        .unwrap_or_default();
    let message = error_message(&body);
    debug!(%url, %status, %message, "registry error response");
    match status {
        StatusCode::NOT_FOUND => RegistryError::NotFound {
            what: what.to_string(),
            host: host.to_string(),
        },
        StatusCode::FORBIDDEN => RegistryError::Unauthorized {
            host: host.to_string(),
            repository: repository.to_string(),
            reason: format!("access denied: {message}"),
        },
        _ => RegistryError::Status {
            status: status.as_u16(),
            url,
            what: what.to_string(),
            message,
        },
    }
}

/// The `errors[].message` of a distribution-spec error body, else its first bytes.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(parsed) = serde_json::from_slice::<Body>(body) {
        let messages: Vec<String> = parsed
            .errors
            .into_iter()
            .filter_map(|e| match (e.code, e.message) {
                (Some(code), Some(msg)) => Some(format!("{}: {msg}", code.to_ascii_lowercase())),
                (None, Some(msg)) => Some(msg),
                (Some(code), None) => Some(code.to_ascii_lowercase()),
                (None, None) => None,
            })
            .collect();
        if !messages.is_empty() {
            return messages.join("; ");
        }
    }
    let snippet = String::from_utf8_lossy(&body[..body.len().min(ERROR_SNIPPET_BYTES)]);
    let snippet = snippet.split_whitespace().collect::<Vec<_>>().join(" ");
    if snippet.is_empty() {
        "empty response body".to_string()
    } else {
        snippet
    }
}

/// The manifest's media type: Content-Type (without parameters), else the JSON `mediaType`.
/// Schema 1 manifests are refused.
fn manifest_media_type(
    content_type: Option<&str>,
    body: &[u8],
    what: &str,
) -> Result<String, RegistryError> {
    let from_header = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|ct| ct.trim().to_ascii_lowercase())
        .filter(|ct| {
            !matches!(
                ct.as_str(),
                "" | "application/json" | "text/plain" | "application/octet-stream"
            )
        });
    let media_type = match from_header {
        Some(mt) => mt,
        None => {
            #[derive(serde::Deserialize)]
            struct Probe {
                #[serde(rename = "mediaType")]
                media_type: Option<String>,
                #[serde(rename = "schemaVersion")]
                schema_version: Option<u64>,
            }
            let probe: Probe =
                serde_json::from_slice(body).map_err(|e| RegistryError::InvalidManifest {
                    what: what.to_string(),
                    reason: format!("not a json manifest: {e}"),
                })?;
            match (probe.media_type, probe.schema_version) {
                (Some(mt), _) if !mt.is_empty() => mt,
                (_, Some(1)) => MEDIA_TYPE_DOCKER_SCHEMA1.to_string(),
                _ => {
                    return Err(RegistryError::InvalidManifest {
                        what: what.to_string(),
                        reason:
                            "neither the content-type header nor the manifest names a media type"
                                .into(),
                    });
                }
            }
        }
    };
    if media_type == MEDIA_TYPE_DOCKER_SCHEMA1 || media_type == MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED {
        return Err(RegistryError::UnsupportedSchema1 {
            what: what.to_string(),
            media_type,
        });
    }
    Ok(media_type)
}

/// `application/x-www-form-urlencoded`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_form_component(k, &mut out);
        out.push('=');
        encode_form_component(v, &mut out);
    }
    out
}

fn encode_form_component(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// One `WWW-Authenticate` challenge: the scheme (lowercased) and its parameters (names lowercased).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value, which may hold several challenges:
/// `Basic realm="x", Bearer realm="https://auth/token",service="reg",scope="repository:a:pull,push"`.
/// Parameter values may be quoted (with `\` escapes) and contain commas. Lenient: junk is skipped.
fn parse_challenges(header: &[u8]) -> Vec<Challenge> {
    let is_ws = |b: u8| b == b' ' || b == b'\t';
    let is_token = |b: u8| !is_ws(b) && !matches!(b, b',' | b'=' | b'"');
    let text = |s: &[u8]| String::from_utf8_lossy(s).into_owned();
    let mut out: Vec<Challenge> = Vec::new();
    let mut i = 0;
    // A new challenge may start only at the beginning or after a comma; a bare token right after
    // a scheme is a token68 credential blob.
    let mut after_comma = true;
    while i < header.len() {
        let b = header[i];
        if is_ws(b) {
            i += 1;
            continue;
        }
        if b == b',' {
            after_comma = true;
            i += 1;
            continue;
        }
        let start = i;
        while i < header.len() && is_token(header[i]) {
            i += 1;
        }
        if i == start {
            // A stray '=' or '"': skip it.
            i += 1;
            continue;
        }
        let token = &header[start..i];
        let mut j = i;
        while j < header.len() && is_ws(header[j]) {
            j += 1;
        }
        if header.get(j) == Some(&b'=') {
            // name=value
            i = j + 1;
            while i < header.len() && is_ws(header[i]) {
                i += 1;
            }
            let value = if header.get(i) == Some(&b'"') {
                i += 1;
                let mut v = Vec::new();
                while i < header.len() && header[i] != b'"' {
                    if header[i] == b'\\' && i + 1 < header.len() {
                        i += 1;
                    }
                    v.push(header[i]);
                    i += 1;
                }
                i += 1; // closing quote
                v
            } else {
                let vs = i;
                while i < header.len() && header[i] != b',' && !is_ws(header[i]) {
                    i += 1;
                }
                header[vs..i].to_vec()
            };
            if let Some(last) = out.last_mut() {
                last.params
                    .push((text(token).to_ascii_lowercase(), text(&value)));
            }
        } else if after_comma {
            out.push(Challenge {
                scheme: text(token).to_ascii_lowercase(),
                params: Vec::new(),
            });
        } else if let Some(last) = out.last_mut() {
            last.params.push(("token68".to_string(), text(token)));
        }
        after_comma = false;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    // ---- a tiny HTTP/1.1 server on 127.0.0.1 ----

    #[derive(Clone, Debug)]
    struct Req {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Req {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn path_only(&self) -> &str {
            self.path.split('?').next().unwrap_or_default()
        }
        fn query(&self, key: &str) -> Vec<String> {
            let q = self
                .path
                .split_once('?')
                .map(|(_, q)| q)
                .unwrap_or_default();
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| decode(v))
                .collect()
        }
    }

    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    fn resp(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Resp {
        Resp {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }

    type Handler = Arc<dyn Fn(&Req, &str) -> Resp + Send + Sync>;

    struct TestServer {
        addr: String,
        requests: Arc<Mutex<Vec<Req>>>,
        tls_attempts: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TestServer {
        /// Starts a server; the handler gets each request and the server's own `127.0.0.1:port`.
        async fn start(handler: impl Fn(&Req, &str) -> Resp + Send + Sync + 'static) -> TestServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let tls_attempts = Arc::new(AtomicUsize::new(0));
            let handler: Handler = Arc::new(handler);
            let (reqs, tls, me) = (requests.clone(), tls_attempts.clone(), addr.clone());
            let task = tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let (reqs, tls, handler, me) =
                        (reqs.clone(), tls.clone(), handler.clone(), me.clone());
                    tokio::spawn(async move {
                        let _ = serve_conn(conn, &reqs, &tls, &handler, &me).await;
                    });
                }
            });
            TestServer {
                addr,
                requests,
                tls_attempts,
                task,
            }
        }

        fn requests(&self) -> Vec<Req> {
            lock(&self.requests).clone()
        }

        fn hits(&self, path: &str) -> usize {
            self.requests()
                .iter()
                .filter(|r| r.path_only() == path)
                .count()
        }
    }

    async fn serve_conn(
        mut conn: TcpStream,
        reqs: &Mutex<Vec<Req>>,
        tls: &AtomicUsize,
        handler: &Handler,
        me: &str,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf[0] == 0x16 {
                // A TLS ClientHello: this server only speaks plain HTTP, so hang up.
                tls.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_string();
        let path = first.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut req = Req {
            method,
            path,
            headers,
            body: buf[head_end + 4..].to_vec(),
        };
        let len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while req.body.len() < len {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            req.body.extend_from_slice(&chunk[..n]);
        }
        let r = handler(&req, me);
        lock(reqs).push(req);
        let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", r.status);
        if !r
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            out.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
        }
        for (k, v) in &r.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        conn.write_all(out.as_bytes()).await?;
        conn.write_all(&r.body).await?;
        conn.shutdown().await
    }

    // ---- helpers ----

    const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;

    fn client() -> RegistryClient {
        RegistryClient::new(RegistryOptions::default()).unwrap()
    }

    fn reference(server: &TestServer, repo: &str) -> Reference {
        Reference::parse(&format!("{}/{repo}:v1", server.addr)).unwrap()
    }

    fn manifest_ok() -> Resp {
        let digest = Digest::of(MANIFEST.as_bytes()).to_string();
        resp(
            200,
            &[
                (
                    "Content-Type",
                    "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
                ),
                ("Docker-Content-Digest", digest.as_str()),
            ],
            MANIFEST,
        )
    }

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    fn user_pass(u: &str, p: &str) -> Credentials {
        Credentials {
            username: Some(u.into()),
            password: Some(p.into()),
            ..Default::default()
        }
    }

    async fn collect(blob: BlobStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = blob.stream;
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    // ---- challenge parsing ----

    #[test]
    fn parses_challenges() {
        let ch = |scheme: &str, params: &[(&str, &str)]| Challenge {
            scheme: scheme.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let cases: Vec<(&str, Vec<Challenge>)> = vec![
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
                vec![ch(
                    "bearer",
                    &[
                        ("realm", "https://auth.docker.io/token"),
                        ("service", "registry.docker.io"),
                        ("scope", "repository:samalba/my-app:pull,push"),
                    ],
                )],
            ),
            (
                r#"Basic realm="Registry Realm""#,
                vec![ch("basic", &[("realm", "Registry Realm")])],
            ),
            ("basic", vec![ch("basic", &[])]),
            (
                r#"BASIC realm="a, b", bearer Realm=http://t/token , Service = "x\"y""#,
                vec![
                    ch("basic", &[("realm", "a, b")]),
                    ch(
                        "bearer",
                        &[("realm", "http://t/token"), ("service", "x\"y")],
                    ),
                ],
            ),
            (
                "Negotiate, Basic realm=r",
                vec![ch("negotiate", &[]), ch("basic", &[("realm", "r")])],
            ),
            (
                "Newauth abc123, Basic",
                vec![ch("newauth", &[("token68", "abc123")]), ch("basic", &[])],
            ),
            (
                r#"Bearer realm="unterminated"#,
                vec![ch("bearer", &[("realm", "unterminated")])],
            ),
            ("", vec![]),
            (
                r#"=, "junk", Bearer realm=""#,
                vec![ch("junk", &[]), ch("bearer", &[("realm", "")])],
            ),
        ];
        for (header, want) in cases {
            assert_eq!(parse_challenges(header.as_bytes()), want, "{header}");
        }
    }

    #[test]
    fn http_allowed_only_for_loopback_and_insecure_hosts() {
        let c = RegistryClient::new(RegistryOptions {
            insecure_registries: vec![
                "reg.lan:5000".into(),
                "http://other.lan/".into(),
                "[fd00::1]".into(),
            ],
            user_agent: String::new(),
        })
        .unwrap();
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:5000",
            "[::1]",
            "[::1]:5000",
            "reg.lan:5000",
            "REG.lan:5000",
            "other.lan",
            "other.lan:1234",
            "[fd00::1]:5000",
        ] {
            assert!(c.allows_http(host), "{host}");
        }
        for host in [
            "registry-1.docker.io",
            "quay.io:443",
            "reg.lan",
            "reg.lan:5001",
            "128.0.0.1",
            "[fd00::2]",
        ] {
            assert!(!c.allows_http(host), "{host}");
        }
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let c = Credentials {
            username: Some("alice".into()),
            password: Some("hunter2".into()),
            identity_token: Some("refresh-secret".into()),
            registry_token: Some("bearer-secret".into()),
        };
        let s = format!("{c:?}");
        assert!(s.contains("alice"), "{s}");
        for secret in ["hunter2", "refresh-secret", "bearer-secret"] {
            assert!(!s.contains(secret), "{s}");
        }
        assert_ne!(c.fingerprint(), Credentials::default().fingerprint());
        assert!(!c.fingerprint().contains("hunter2"));
    }

    #[test]
    fn error_bodies_and_media_types() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(error_message(body), "manifest_unknown: manifest unknown");
        assert_eq!(
            error_message(b"<html>\n  oops  </html>"),
            "<html> oops </html>"
        );
        assert_eq!(error_message(&[b'x'; 1000]).len(), ERROR_SNIPPET_BYTES);
        assert_eq!(error_message(b""), "empty response body");

        assert_eq!(
            manifest_media_type(Some("application/json"), MANIFEST.as_bytes(), "m").unwrap(),
            MEDIA_TYPE_OCI_MANIFEST
        );
        assert_eq!(
            manifest_media_type(None, MANIFEST.as_bytes(), "m").unwrap(),
            MEDIA_TYPE_OCI_MANIFEST
        );
        assert!(matches!(
            manifest_media_type(None, br#"{"schemaVersion":1,"name":"x"}"#, "m"),
            Err(RegistryError::UnsupportedSchema1 { .. })
        ));
        assert!(matches!(
            manifest_media_type(Some(MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED), b"{}", "m"),
            Err(RegistryError::UnsupportedSchema1 { .. })
        ));
        assert!(matches!(
            manifest_media_type(None, b"{}", "m"),
            Err(RegistryError::InvalidManifest { .. })
        ));
        assert!(matches!(
            manifest_media_type(None, b"nope", "m"),
            Err(RegistryError::InvalidManifest { .. })
        ));

        assert_eq!(
            form_encode(&[("a b", "x/y:z&=~"), ("k", "v")]),
            "a+b=x%2Fy%3Az%26%3D%7E&k=v"
        );
        assert_eq!(strip_port("[::1]:5000"), "[::1]");
        assert_eq!(strip_port("host:5000"), "host");
        assert_eq!(strip_port("host"), "host");
    }

    // ---- against the loopback server ----

    #[tokio::test]
    async fn anonymous_manifest_pull_with_http_fallback_remembered() {
        let server = TestServer::start(|req, _| match req.path_only() {
            p if p.starts_with("/v2/test/app/manifests/") => manifest_ok(),
            _ => resp(404, &[], ""),
        })
        .await;
        let c = client();
        let r = reference(&server, "test/app");
        let m = c
            .fetch_manifest(&r, "v1", &Credentials::default())
            .await
            .unwrap();
        assert_eq!(m.media_type, MEDIA_TYPE_OCI_MANIFEST);
        assert_eq!(m.digest, Digest::of(MANIFEST.as_bytes()));
        assert_eq!(&m.bytes[..], MANIFEST.as_bytes());

        // Fetching by digest works too, and goes straight to http this time.
        let m2 = c
            .fetch_manifest(&r, m.digest.as_str(), &Credentials::default())
            .await
            .unwrap();
        assert_eq!(m2.digest, m.digest);
        assert_eq!(
            server.tls_attempts.load(Ordering::SeqCst),
            1,
            "the https attempt is made once per host"
        );

        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].method, "GET");
        assert!(reqs[0].header("authorization").is_none());
        let accept = reqs[0].header("accept").unwrap();
        for mt in [
            MEDIA_TYPE_OCI_INDEX,
            MEDIA_TYPE_OCI_MANIFEST,
            MEDIA_TYPE_DOCKER_MANIFEST_LIST,
            MEDIA_TYPE_DOCKER_MANIFEST,
        ] {
            assert!(accept.contains(mt), "{accept}");
        }
        assert!(
            reqs[0]
                .header("user-agent")
                .unwrap()
                .starts_with("keelson/")
        );
    }

    #[tokio::test]
    async fn not_found_and_error_statuses() {
        let server = TestServer::start(|req, _| match req.path_only() {
            "/v2/x/manifests/v1" => resp(
                404,
                &[("Content-Type", "application/json")],
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
            "/v2/x/manifests/boom" => resp(
                500,
                &[("Content-Type", "application/json")],
                r#"{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}"#,
            ),
            "/v2/x/manifests/deny" => resp(403, &[], "denied"),
            _ => resp(404, &[], ""),
        })
        .await;
        let c = client();
        let r = reference(&server, "x");
        let none = Credentials::default();

        let err = c.fetch_manifest(&r, "v1", &none).await.unwrap_err();
        assert!(
            matches!(&err, RegistryError::NotFound { what, host } if what == "manifest x:v1" && *host == server.addr)
        );
        assert_eq!(
            err.to_string(),
            format!("manifest x:v1 not found on {}", server.addr)
        );

        let d = Digest::of(b"layer");
        let err = c.fetch_blob(&r, &d, &none).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("blob {d} of x not found on {}", server.addr)
        );

        let err = c.fetch_manifest(&r, "boom", &none).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, RegistryError::Status { status: 500, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("disk on fire") && msg.contains("/v2/x/manifests/boom"),
            "{msg}"
        );

        let err = c.fetch_manifest(&r, "deny", &none).await.unwrap_err();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");

        let err = c.fetch_manifest(&r, "../../etc", &none).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::InvalidReference { .. }),
            "{err}"
        );
        let err = c
            .fetch_manifest(&r, "sha256:1234", &none)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::InvalidReference { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn digest_checks() {
        let wrong = Digest::of(b"something else");
        let wrong_header = wrong.to_string();
        let server = TestServer::start(move |req, _| match req.path_only() {
            "/v2/x/manifests/lying" => resp(
                200,
                &[
                    ("Content-Type", MEDIA_TYPE_OCI_MANIFEST),
                    ("Docker-Content-Digest", wrong_header.as_str()),
                ],
                MANIFEST,
            ),
            "/v2/x/manifests/schema1" => resp(
                200,
                &[(
                    "Content-Type",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                )],
                r#"{"schemaVersion":1}"#,
            ),
            "/v2/x/manifests/plain" => resp(200, &[("Content-Type", "application/json")], MANIFEST),
            "/v2/x/manifests/huge" => resp(
                200,
                &[("Content-Type", MEDIA_TYPE_OCI_MANIFEST)],
                vec![b' '; MANIFEST_MAX_BYTES + 1],
            ),
            _ => resp(200, &[("Content-Type", MEDIA_TYPE_OCI_MANIFEST)], MANIFEST),
        })
        .await;
        let c = client();
        let r = reference(&server, "x");
        let none = Credentials::default();

        // Asked by digest, served other content.
        let err = c
            .fetch_manifest(&r, wrong.as_str(), &none)
            .await
            .unwrap_err();
        match err {
            RegistryError::DigestMismatch {
                expected,
                actual,
                what,
            } => {
                assert_eq!(expected, wrong);
                assert_eq!(actual, Digest::of(MANIFEST.as_bytes()));
                assert_eq!(what, format!("manifest x@{wrong}"));
            }
            other => panic!("{other:?}"),
        }
        // Asked by digest, right content.
        let good = Digest::of(MANIFEST.as_bytes());
        assert_eq!(
            c.fetch_manifest(&r, good.as_str(), &none)
                .await
                .unwrap()
                .digest,
            good
        );
        // Asked by tag, Docker-Content-Digest disagrees with the body.
        let err = c.fetch_manifest(&r, "lying", &none).await.unwrap_err();
        assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
        // Schema 1 is refused clearly.
        let err = c.fetch_manifest(&r, "schema1", &none).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::UnsupportedSchema1 { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("schema 1"), "{err}");
        // A generic Content-Type falls back to the JSON mediaType.
        assert_eq!(
            c.fetch_manifest(&r, "plain", &none)
                .await
                .unwrap()
                .media_type,
            MEDIA_TYPE_OCI_MANIFEST
        );
        // Over 4 MiB.
        let err = c.fetch_manifest(&r, "huge", &none).await.unwrap_err();
        assert!(matches!(err, RegistryError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn basic_challenge() {
        let server = TestServer::start(|req, _| {
            if req.header("authorization") == Some(basic("alice", "pw").as_str()) {
                manifest_ok()
            } else {
                resp(
                    401,
                    &[("WWW-Authenticate", r#"Basic realm="Registry Realm""#)],
                    "",
                )
            }
        })
        .await;
        let c = client();
        let r = reference(&server, "priv/app");

        let err = c
            .fetch_manifest(&r, "v1", &Credentials::default())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{msg}");
        assert!(
            msg.contains(&server.addr) && msg.contains("priv/app"),
            "{msg}"
        );

        let err = c
            .fetch_manifest(&r, "v1", &user_pass("alice", "wrong"))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
        assert!(!err.to_string().contains("wrong"));

        let good = user_pass("alice", "pw");
        let before = server.requests().len();
        c.fetch_manifest(&r, "v1", &good).await.unwrap();
        // The host is known to want basic auth now: sent up front, no extra 401 round trip.
        c.fetch_manifest(&r, "v1", &good).await.unwrap();
        let reqs = server.requests();
        let expected = basic("alice", "pw");
        let tail: Vec<Option<&str>> = reqs[before..]
            .iter()
            .map(|r| r.header("authorization"))
            .collect();
        assert_eq!(tail, vec![Some(expected.as_str()), Some(expected.as_str())]);
    }

    fn bearer_server(
        valid_token: &'static str,
    ) -> impl Fn(&Req, &str) -> Resp + Send + Sync + 'static {
        move |req: &Req, me: &str| match req.path_only() {
            "/token" => resp(
                200,
                &[("Content-Type", "application/json")],
                format!(r#"{{"token":"{valid_token}","expires_in":300}}"#),
            ),
            "/oauth" if req.method == "POST" => resp(
                200,
                &[("Content-Type", "application/json")],
                format!(r#"{{"access_token":"{valid_token}"}}"#),
            ),
            _ if req.header("authorization") == Some(format!("Bearer {valid_token}").as_str()) => {
                if req.path_only().contains("/blobs/") {
                    resp(200, &[], "blob-bytes")
                } else {
                    manifest_ok()
                }
            }
            _ => {
                let realm = if req.path_only().contains("/oauthrepo/") {
                    "oauth"
                } else {
                    "token"
                };
                let challenge = format!(
                    r#"Bearer realm="http://{me}/{realm}",service="test-registry",scope="repository:org/app:pull""#
                );
                resp(
                    401,
                    &[("WWW-Authenticate", challenge.as_str())],
                    r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                )
            }
        }
    }

    #[tokio::test]
    async fn bearer_token_fetch_and_cache() {
        let server = TestServer::start(bearer_server("tok-1")).await;
        let c = client();
        let r = reference(&server, "org/app");
        let creds = user_pass("bob", "secret");

        c.fetch_manifest(&r, "v1", &creds).await.unwrap();
        let blob = c
            .fetch_blob(&r, &Digest::of(b"blob-bytes"), &creds)
            .await
            .unwrap();
        assert_eq!(blob.size, Some(10));
        assert_eq!(collect(blob).await, b"blob-bytes");
        assert_eq!(
            server.hits("/token"),
            1,
            "the token is cached per host and scope"
        );

        let reqs = server.requests();
        let token_req = reqs.iter().find(|q| q.path_only() == "/token").unwrap();
        assert_eq!(token_req.query("service"), vec!["test-registry"]);
        assert_eq!(token_req.query("scope"), vec!["repository:org/app:pull"]);
        assert_eq!(
            token_req.header("authorization"),
            Some(basic("bob", "secret").as_str())
        );
        // 401, token, retry with token, then the blob straight away with the cached token.
        let auths: Vec<Option<&str>> = reqs
            .iter()
            .filter(|q| q.path_only() != "/token")
            .map(|q| q.header("authorization"))
            .collect();
        assert_eq!(
            auths,
            vec![None, Some("Bearer tok-1"), Some("Bearer tok-1")]
        );

        // Other credentials never reuse that token.
        c.fetch_manifest(&r, "v1", &Credentials::default())
            .await
            .unwrap();
        assert_eq!(server.hits("/token"), 2);
        let anon = server
            .requests()
            .into_iter()
            .filter(|q| q.path_only() == "/token")
            .nth(1)
            .unwrap();
        assert_eq!(anon.header("authorization"), None);
    }

    #[tokio::test]
    async fn expired_or_rejected_cached_tokens_are_replaced() {
        let server = TestServer::start(bearer_server("tok-3")).await;
        let c = client();
        let r = reference(&server, "org/app");
        let none = Credentials::default();
        c.fetch_manifest(&r, "v1", &none).await.unwrap();
        assert_eq!(server.hits("/token"), 1);

        // Expired: not sent again; the challenge leads to a fresh token.
        for t in lock(&c.inner.tokens).values_mut() {
            t.expires = Instant::now();
        }
        c.fetch_manifest(&r, "v1", &none).await.unwrap();
        assert_eq!(server.hits("/token"), 2);

        // Revoked while cached: the 401 leads to a fresh token and one retry.
        for t in lock(&c.inner.tokens).values_mut() {
            t.token = "revoked".into();
        }
        let before = server.requests().len();
        c.fetch_manifest(&r, "v1", &none).await.unwrap();
        assert_eq!(server.hits("/token"), 3);
        let auths: Vec<Option<String>> = server.requests()[before..]
            .iter()
            .filter(|q| q.path_only() != "/token")
            .map(|q| q.header("authorization").map(str::to_string))
            .collect();
        assert_eq!(
            auths,
            vec![Some("Bearer revoked".into()), Some("Bearer tok-3".into())]
        );
    }

    #[tokio::test]
    async fn token_server_refusal_is_unauthorized() {
        let server = TestServer::start(|req: &Req, me: &str| match req.path_only() {
            "/token" => resp(401, &[], r#"{"details":"incorrect username or password"}"#),
            _ => {
                let challenge = format!(r#"Bearer realm="http://{me}/token",service="s""#);
                resp(401, &[("WWW-Authenticate", challenge.as_str())], "")
            }
        })
        .await;
        let c = client();
        let r = reference(&server, "org/app");
        let err = c
            .fetch_manifest(&r, "v1", &user_pass("bob", "bad-password"))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{msg}");
        assert!(
            msg.contains("org/app") && msg.contains("token server"),
            "{msg}"
        );
        assert!(!msg.contains("bad-password"), "{msg}");
    }

    #[tokio::test]
    async fn bearer_with_identity_and_registry_tokens() {
        let server = TestServer::start(bearer_server("tok-2")).await;
        let c = client();

        // identity_token: OAuth2 refresh-token grant by POST.
        let r = reference(&server, "oauthrepo/app");
        let creds = Credentials {
            identity_token: Some("refresh me".into()),
            ..Default::default()
        };
        c.fetch_manifest(&r, "v1", &creds).await.unwrap();
        let post = server
            .requests()
            .into_iter()
            .find(|q| q.path_only() == "/oauth")
            .unwrap();
        assert_eq!(post.method, "POST");
        assert_eq!(
            post.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let form = String::from_utf8(post.body.clone()).unwrap();
        let pairs: HashMap<&str, String> = form
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, decode(v)))
            .collect();
        assert_eq!(pairs["grant_type"], "refresh_token");
        assert_eq!(pairs["service"], "test-registry");
        assert_eq!(pairs["refresh_token"], "refresh me");
        assert_eq!(pairs["client_id"], "keelson");
        assert!(
            pairs["scope"]
                .split(' ')
                .any(|s| s == "repository:oauthrepo/app:pull"),
            "{form}"
        );
        assert!(post.header("authorization").is_none());

        // registry_token: used as the bearer as is; the token endpoint is not called.
        let r = reference(&server, "org/app");
        let creds = Credentials {
            registry_token: Some("tok-2".into()),
            ..Default::default()
        };
        c.fetch_manifest(&r, "v1", &creds).await.unwrap();
        assert_eq!(server.hits("/token"), 0);

        // A token the registry rejects is Unauthorized after one retry.
        let creds = Credentials {
            registry_token: Some("stale".into()),
            ..Default::default()
        };
        let before = server.requests().len();
        let err = c.fetch_manifest(&r, "v1", &creds).await.unwrap_err();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
        assert!(!err.to_string().contains("stale"));
        assert_eq!(server.requests().len() - before, 2);
    }

    #[tokio::test]
    async fn blob_redirect_drops_authorization() {
        let cdn = TestServer::start(|_, _| resp(200, &[], "layer-data")).await;
        let cdn_url = format!("http://{}/bucket/blob?sig=signed-secret", cdn.addr);
        let server = TestServer::start(move |req, _| {
            if req.header("authorization") != Some(basic("u", "p").as_str()) {
                resp(401, &[("WWW-Authenticate", "Basic realm=x")], "")
            } else {
                resp(307, &[("Location", cdn_url.as_str())], "")
            }
        })
        .await;
        let c = client();
        let r = reference(&server, "x");
        let d = Digest::of(b"layer-data");
        let blob = c.fetch_blob(&r, &d, &user_pass("u", "p")).await.unwrap();
        assert_eq!(collect(blob).await, b"layer-data");
        let cdn_reqs = cdn.requests();
        assert_eq!(cdn_reqs.len(), 1);
        assert_eq!(cdn_reqs[0].path, "/bucket/blob?sig=signed-secret");
        assert!(
            cdn_reqs[0].header("authorization").is_none(),
            "{:?}",
            cdn_reqs[0].headers
        );
    }
}
