//! A pull-only client for the OCI distribution (registry v2) API: manifests and blobs, with
//! Docker-style token/basic authentication and an HTTP fallback for insecure and loopback registries.
//!
//! Every request goes through the registry's ordered host list ([`crate::image::hosts`]): mirrors
//! first, the server last; tags are resolved only on hosts with `resolve`, content by digest on
//! hosts with `pull`, and a host that fails hands the request to the next. Each host gets its own
//! HTTP client when it has TLS settings (CA, client certificate, `skip_verify`), and its own
//! credentials ([`crate::image::credentials`] for mirrors).

use crate::image::credentials::DockerConfig;
use crate::image::digest::{Digest, Hasher};
use crate::image::hosts::{
    self, HostRole, HostScheme, HostsConfig, HostsError, HostsSource, RegistryHost,
};
use crate::image::reference::{Reference, is_valid_tag};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
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
    /// Whether nothing at all is set (an anonymous pull).
    pub fn is_empty(&self) -> bool {
        [
            &self.username,
            &self.password,
            &self.identity_token,
            &self.registry_token,
        ]
        .iter()
        .all(|s| s.as_deref().is_none_or(str::is_empty))
    }

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
    /// containerd-style `certs.d` folder (one `hosts.toml` per registry: mirrors, TLS settings),
    /// read again for every pull. `None`: every registry is reached directly.
    pub hosts_dir: Option<PathBuf>,
    /// A docker `config.json` whose `auths` give per-host credentials when a pull carries none;
    /// read again for every pull.
    pub credentials_file: Option<PathBuf>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            user_agent: default_user_agent(),
            hosts_dir: None,
            credentials_file: None,
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
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error("no host configured for {namespace} may {capability} ({what}); see {config}")]
    NoHosts {
        namespace: String,
        capability: &'static str,
        what: String,
        config: String,
    },
    #[error("cannot set up tls for registry host {host}: {reason}")]
    TlsSetup { host: String, reason: String },
    #[error("{what} failed on every host: {}", join_failures(.failures))]
    AllHostsFailed {
        what: String,
        /// Each host tried (role and url) with its error, in the order tried.
        failures: Vec<(String, RegistryError)>,
    },
}

/// Rounds over a manifest's hosts repeated when none of them could be reached, and the pause
/// before each.
const UNREACHABLE_RETRIES: u32 = 1;
const UNREACHABLE_BACKOFF: std::time::Duration = std::time::Duration::from_millis(250);

fn join_failures(failures: &[(String, RegistryError)]) -> String {
    failures
        .iter()
        .map(|(host, e)| format!("{host}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl RegistryError {
    /// The error that best explains a failure on several hosts, as containerd ranks them: an
    /// answer (refusal, bad content, error status) over "not found" over an unreachable host;
    /// the first of equals. Any other error is its own primary.
    pub fn primary(&self) -> &RegistryError {
        fn rank(e: &RegistryError) -> u8 {
            match e {
                RegistryError::Transport { .. } | RegistryError::TlsSetup { .. } => 0,
                RegistryError::NotFound { .. } => 1,
                _ => 2,
            }
        }
        match self {
            RegistryError::AllHostsFailed { failures, .. } => failures
                .iter()
                .rev()
                .map(|(_, e)| e)
                .max_by_key(|e| rank(e))
                .map_or(self, RegistryError::primary),
            other => other,
        }
    }

    /// One host's error as is; several as one error listing them all.
    fn from_failures(what: String, mut failures: Vec<(String, RegistryError)>) -> RegistryError {
        if failures.len() == 1 {
            return failures.pop().expect("one failure").1;
        }
        RegistryError::AllHostsFailed { what, failures }
    }
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

/// How many HTTP clients with host-specific TLS settings are kept.
const MAX_CACHED_CLIENTS: usize = 64;
/// How many distinct configuration warnings are remembered (each is logged once).
const MAX_REMEMBERED_WARNINGS: usize = 256;
/// Largest CA or client certificate file read.
const TLS_FILE_MAX_BYTES: u64 = 1 << 20;

struct Inner {
    /// The client for hosts without TLS settings of their own.
    http: reqwest::Client,
    user_agent: String,
    /// Lowercased entries of `insecure_registries`.
    insecure: Vec<String>,
    hosts_dir: Option<PathBuf>,
    credentials_file: Option<PathBuf>,
    /// Clients for hosts with their own TLS settings, keyed by a hash of those settings
    /// (file contents included, so a replaced CA file takes effect).
    clients: Mutex<HashMap<String, reqwest::Client>>,
    /// Configuration warnings already logged.
    warned: Mutex<HashSet<String>>,
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
            .field("hosts_dir", &self.inner.hosts_dir)
            .field("credentials_file", &self.inner.credentials_file)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the credentials sent to a host come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialsSource {
    /// None: anonymous.
    None,
    /// The pull request's `AuthConfig` (sent to the server only, never to a mirror).
    Request,
    /// An entry of the credentials file.
    File { path: PathBuf, key: String },
}

impl fmt::Display for CredentialsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialsSource::None => f.write_str("none"),
            CredentialsSource::Request => f.write_str("from the pull request"),
            CredentialsSource::File { path, key } => {
                write!(f, "{} entry {key:?}", path.display())
            }
        }
    }
}

/// One host of a pull, ready to be asked: its settings, credentials and HTTP client.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub host: RegistryHost,
    pub credentials_source: CredentialsSource,
    /// Redacted in `Debug`.
    credentials: Credentials,
    /// The client for this host's TLS settings, or why it could not be made.
    client: Result<reqwest::Client, String>,
}

impl Endpoint {
    /// Why this host cannot be used (unreadable CA or client certificate), if it cannot.
    pub fn setup_error(&self) -> Option<&str> {
        self.client.as_ref().err().map(String::as_str)
    }

    /// `mirror http://127.0.0.1:5001`, for messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.host.role, self.host.base_url())
    }
}

/// The hosts one pull talks to, mirrors first and the server last, read once per pull from the
/// host config folder and the credentials file.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// The registry as named in the image reference (`docker.io`, `127.0.0.1:5000`).
    pub namespace: String,
    pub repository: String,
    pub source: HostsSource,
    pub hosts: Vec<Endpoint>,
    /// Ignored settings and unusable credentials files, for operators.
    pub warnings: Vec<String>,
}

/// A manifest reference that is a digest, else `None` for a tag; anything else is refused.
fn manifest_digest(repository: &str, reference: &str) -> Result<Option<Digest>, RegistryError> {
    let invalid = || RegistryError::InvalidReference {
        repository: repository.to_string(),
        reference: reference.to_string(),
    };
    if reference.contains(':') {
        Digest::parse(reference).map(Some).map_err(|_| invalid())
    } else if is_valid_tag(reference) {
        Ok(None)
    } else {
        Err(invalid())
    }
}

impl Endpoints {
    /// The hosts asked for the manifest `reference`, in order: those with `resolve` for a tag,
    /// those with `pull` for a digest.
    pub fn for_manifest(&self, reference: &str) -> Vec<&Endpoint> {
        if reference.contains(':') {
            self.for_blobs()
        } else {
            self.hosts
                .iter()
                .filter(|h| h.host.capabilities.resolve)
                .collect()
        }
    }

    /// The hosts asked for blobs (and manifests by digest), in order.
    pub fn for_blobs(&self) -> Vec<&Endpoint> {
        self.hosts
            .iter()
            .filter(|h| h.host.capabilities.pull)
            .collect()
    }

    /// The URL of a request to `h` (with the scheme tried first).
    pub fn url(&self, h: &Endpoint, kind: &str, reference: &str) -> String {
        format!(
            "{}{}",
            h.host.base_url(),
            h.host
                .request_path(&self.namespace, &self.repository, kind, reference)
        )
    }

    fn no_hosts(&self, capability: &'static str, what: &str) -> RegistryError {
        RegistryError::NoHosts {
            namespace: self.namespace.clone(),
            capability,
            what: what.to_string(),
            config: self.source.to_string(),
        }
    }
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
            .user_agent(user_agent.clone())
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
                user_agent,
                insecure,
                hosts_dir: opts.hosts_dir,
                credentials_file: opts.credentials_file,
                clients: Mutex::default(),
                warned: Mutex::default(),
                schemes: Mutex::default(),
                tokens: Mutex::default(),
                basic_hosts: Mutex::default(),
            }),
        })
    }

    /// The hosts a pull of `r` talks to, in order, each with the credentials it gets: the
    /// request's `creds` go to the server; the credentials file fills in for the server when
    /// `creds` is empty, and is the only source for mirrors. Reads the host config folder and
    /// the credentials file afresh. A broken `hosts.toml` fails only pulls from its registry.
    pub fn endpoints(
        &self,
        r: &Reference,
        creds: &Credentials,
    ) -> Result<Endpoints, RegistryError> {
        let namespace = r.registry.to_ascii_lowercase();
        let config = match &self.inner.hosts_dir {
            Some(dir) => hosts::load(dir, &namespace)?,
            None => HostsConfig::builtin(&namespace),
        };
        let mut warnings = config.warnings;
        let file = match &self.inner.credentials_file {
            Some(path) => match DockerConfig::load(path) {
                Ok(c) => Some(c),
                Err(e) => {
                    warnings.push(format!("{e}; pulling without its credentials"));
                    None
                }
            },
            None => None,
        };
        let mut hosts = Vec::with_capacity(config.hosts.len());
        for host in config.hosts {
            let server = host.role == HostRole::Server;
            let from_file = file.as_ref().and_then(|f| {
                f.lookup(&host.authority, &r.repository)
                    .or_else(|| {
                        server
                            .then(|| f.lookup(&namespace, &r.repository))
                            .flatten()
                    })
                    .map(|found| (f.path().to_path_buf(), found))
            });
            let (credentials, credentials_source) = if server && !creds.is_empty() {
                (creds.clone(), CredentialsSource::Request)
            } else if let Some((path, found)) = from_file {
                (
                    found.credentials,
                    CredentialsSource::File {
                        path,
                        key: found.key,
                    },
                )
            } else {
                (Credentials::default(), CredentialsSource::None)
            };
            if host.tls.client.len() > 1 {
                warnings.push(format!(
                    "{}: only the first client certificate is used",
                    host.base_url()
                ));
            }
            let client = self.client_for(&host);
            if let Err(reason) = &client {
                warnings.push(format!("{}: {reason}", host.base_url()));
            }
            hosts.push(Endpoint {
                host,
                credentials_source,
                credentials,
                client,
            });
        }
        self.log_warnings(&warnings);
        debug!(
            registry = %namespace,
            source = %config.source,
            hosts = ?hosts.iter().map(Endpoint::label).collect::<Vec<_>>(),
            "registry hosts"
        );
        Ok(Endpoints {
            namespace,
            repository: r.repository.clone(),
            source: config.source,
            hosts,
            warnings,
        })
    }

    /// Logs each configuration warning once.
    fn log_warnings(&self, warnings: &[String]) {
        if warnings.is_empty() {
            return;
        }
        let mut warned = lock(&self.inner.warned);
        for w in warnings {
            if !warned.contains(w) {
                tracing::warn!("registry configuration: {w}");
                if warned.len() >= MAX_REMEMBERED_WARNINGS {
                    warned.clear();
                }
                warned.insert(w.clone());
            }
        }
    }

    /// The HTTP client for a host: the shared one, or one made (and cached) for its TLS settings.
    fn client_for(&self, host: &RegistryHost) -> Result<reqwest::Client, String> {
        if !host.tls.is_set() && host.dial_timeout.is_none() {
            return Ok(self.inner.http.clone());
        }
        let read = |path: &Path, what: &str| -> Result<Vec<u8>, String> {
            let f = std::fs::File::open(path)
                .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
            let mut data = Vec::new();
            f.take(TLS_FILE_MAX_BYTES + 1)
                .read_to_end(&mut data)
                .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
            if data.len() as u64 > TLS_FILE_MAX_BYTES {
                return Err(format!("{what} {} is too large", path.display()));
            }
            Ok(data)
        };
        let mut key = Hasher::new();
        let mut part = |bytes: &[u8]| {
            key.update(&(bytes.len() as u64).to_le_bytes());
            key.update(bytes);
        };
        let mut cas = Vec::new();
        for path in &host.tls.ca {
            let pem = read(path, "ca file")?;
            part(&pem);
            cas.push((path, pem));
        }
        let identity = match host.tls.client.first() {
            Some((cert, key_path)) => {
                let mut pem = read(cert, "client certificate")?;
                if let Some(k) = key_path {
                    pem.push(b'\n');
                    pem.extend(read(k, "client key")?);
                }
                part(&pem);
                Some((cert, pem))
            }
            None => None,
        };
        part(&[u8::from(host.tls.skip_verify)]);
        let timeout = host.dial_timeout.unwrap_or(CONNECT_TIMEOUT);
        part(&timeout.as_nanos().to_le_bytes());
        let key = key.finish().hex().to_string();
        if let Some(c) = lock(&self.inner.clients).get(&key) {
            return Ok(c.clone());
        }

        let mut b = reqwest::Client::builder()
            .user_agent(self.inner.user_agent.clone())
            .connect_timeout(timeout)
            .read_timeout(READ_IDLE_TIMEOUT);
        let mut roots = Vec::new();
        for (path, pem) in cas {
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("ca file {}: {}", path.display(), error_chain(&e)))?;
            if certs.is_empty() {
                return Err(format!(
                    "ca file {} holds no pem certificate",
                    path.display()
                ));
            }
            roots.extend(certs);
        }
        if !roots.is_empty() {
            b = b.tls_certs_merge(roots);
        }
        if let Some((path, pem)) = identity {
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                format!(
                    "client certificate {} (with its key): {}",
                    path.display(),
                    error_chain(&e)
                )
            })?;
            b = b.identity(id);
        }
        if host.tls.skip_verify {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        let client = b.build().map_err(|e| error_chain(&e))?;
        let mut clients = lock(&self.inner.clients);
        if clients.len() >= MAX_CACHED_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// GET /v2/<repo>/manifests/<reference>; Accept: OCI index, OCI manifest, Docker manifest list v2,
    /// Docker manifest v2 (schema 2). Reads the host configuration for this one request.
    pub async fn fetch_manifest(
        &self,
        r: &Reference,
        reference: &str,
        creds: &Credentials,
    ) -> Result<Manifest, RegistryError> {
        manifest_digest(&r.repository, reference)?;
        let endpoints = self.endpoints(r, creds)?;
        self.fetch_manifest_from(&endpoints, reference).await
    }

    /// The manifest `reference` from the first host that has it: by tag only from hosts that may
    /// resolve, by digest from hosts that may pull (checked against the digest). A host that
    /// fails (unreachable, 404, 5xx, refused, wrong content) passes the request to the next.
    pub async fn fetch_manifest_from(
        &self,
        endpoints: &Endpoints,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        let expected = manifest_digest(&endpoints.repository, reference)?;
        let what = match expected {
            Some(_) => format!("manifest {}@{reference}", endpoints.repository),
            None => format!("manifest {}:{reference}", endpoints.repository),
        };
        let hosts = endpoints.for_manifest(reference);
        if hosts.is_empty() {
            let capability = if expected.is_some() {
                "pull"
            } else {
                "resolve tags"
            };
            return Err(endpoints.no_hosts(capability, &what));
        }
        let last = hosts.len() - 1;
        let mut round = 0;
        loop {
            let mut failures = Vec::new();
            for (i, h) in hosts.iter().enumerate() {
                match self
                    .manifest_from_host(endpoints, h, reference, expected.as_ref(), &what)
                    .await
                {
                    Ok(m) => {
                        if i > 0 {
                            debug!(%what, host = %h.label(), "served after {i} host(s) failed");
                        }
                        return Ok(m);
                    }
                    Err(e) => {
                        if i < last {
                            tracing::info!(%what, host = %h.label(), error = %e, "registry host failed; trying the next one");
                        }
                        failures.push((h.label(), e));
                    }
                }
            }
            // No host answered at all (name lookup or connect failed everywhere): a network
            // blip is worth one more round before the pull fails.
            let unreachable = failures
                .iter()
                .all(|(_, e)| matches!(e, RegistryError::Transport { .. }));
            if !unreachable || round == UNREACHABLE_RETRIES {
                return Err(RegistryError::from_failures(what, failures));
            }
            round += 1;
            debug!(%what, "no registry host reachable; retrying in {UNREACHABLE_BACKOFF:?}");
            tokio::time::sleep(UNREACHABLE_BACKOFF).await;
        }
    }

    async fn manifest_from_host(
        &self,
        endpoints: &Endpoints,
        h: &Endpoint,
        reference: &str,
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<Manifest, RegistryError> {
        let host = h.host.authority.as_str();
        let repository = endpoints.repository.as_str();
        let path = h
            .host
            .request_path(&endpoints.namespace, repository, "manifests", reference);
        let accept = [
            MEDIA_TYPE_OCI_INDEX,
            MEDIA_TYPE_OCI_MANIFEST,
            MEDIA_TYPE_DOCKER_MANIFEST_LIST,
            MEDIA_TYPE_DOCKER_MANIFEST,
        ]
        .join(", ");

        let mut resp = self.get(h, repository, &path, Some(&accept), what).await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, host, repository, what).await);
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MANIFEST_MAX_BYTES as u64)
        {
            return Err(RegistryError::TooLarge {
                what: what.to_string(),
                limit: MANIFEST_MAX_BYTES,
            });
        }
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str()).map(str::to_string);
        let header_digest = header_str(resp.headers(), "docker-content-digest").map(str::to_string);
        let (body, truncated) = read_up_to(&mut resp, MANIFEST_MAX_BYTES)
            .await
            .map_err(|e| transport(host, what, e))?;
        if truncated {
            return Err(RegistryError::TooLarge {
                what: what.to_string(),
                limit: MANIFEST_MAX_BYTES,
            });
        }
        let actual = Digest::of(&body);
        if let Some(expected) = expected {
            if *expected != actual {
                return Err(RegistryError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                    what: what.to_string(),
                });
            }
        } else if let Some(hd) = header_digest {
            match Digest::parse(&hd) {
                Ok(expected) if expected != actual => {
                    return Err(RegistryError::DigestMismatch {
                        expected,
                        actual,
                        what: what.to_string(),
                    });
                }
                Ok(_) => {}
                Err(e) => debug!(%what, "ignoring docker-content-digest header: {e}"),
            }
        }
        let media_type = manifest_media_type(content_type.as_deref(), &body, what)?;
        debug!(%what, %media_type, digest = %actual, size = body.len(), host = %h.label(), "fetched manifest");
        Ok(Manifest {
            media_type,
            digest: actual,
            bytes: Bytes::from(body),
        })
    }

    /// GET /v2/<repo>/blobs/<digest>, following redirects. The caller verifies the digest while
    /// streaming. Reads the host configuration for this one request.
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        creds: &Credentials,
    ) -> Result<BlobStream, RegistryError> {
        let endpoints = self.endpoints(r, creds)?;
        self.fetch_blob_from(&endpoints, digest).await
    }

    /// The blob from the first host with `pull` that answers with it; a host that fails before
    /// the body starts passes the request to the next. The caller verifies the digest while
    /// streaming: a mirror is not trusted.
    pub async fn fetch_blob_from(
        &self,
        endpoints: &Endpoints,
        digest: &Digest,
    ) -> Result<BlobStream, RegistryError> {
        let what = format!("blob {digest} of {}", endpoints.repository);
        let hosts = endpoints.for_blobs();
        if hosts.is_empty() {
            return Err(endpoints.no_hosts("pull", &what));
        }
        let mut failures = Vec::new();
        let last = hosts.len() - 1;
        for (i, h) in hosts.into_iter().enumerate() {
            match self.blob_from_host(endpoints, h, digest, &what).await {
                Ok(b) => return Ok(b),
                Err(e) => {
                    if i < last {
                        tracing::info!(%what, host = %h.label(), error = %e, "registry host failed; trying the next one");
                    }
                    failures.push((h.label(), e));
                }
            }
        }
        Err(RegistryError::from_failures(what, failures))
    }

    async fn blob_from_host(
        &self,
        endpoints: &Endpoints,
        h: &Endpoint,
        digest: &Digest,
        what: &str,
    ) -> Result<BlobStream, RegistryError> {
        let host = h.host.authority.as_str();
        let repository = endpoints.repository.as_str();
        let path = h
            .host
            .request_path(&endpoints.namespace, repository, "blobs", digest.as_str());
        let resp = self.get(h, repository, &path, None, what).await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, host, repository, what).await);
        }
        let size = resp.content_length();
        // After a redirect the body comes from another host (often a CDN): name that one in errors.
        let body_host = url_authority(resp.url()).unwrap_or_else(|| host.to_string());
        debug!(%what, host = %h.label(), final_host = %body_host, ?size, "streaming blob");
        let what = what.to_string();
        let stream = resp
            .bytes_stream()
            .map(move |chunk| chunk.map_err(|e| transport(&body_host, &what, e)));
        Ok(BlobStream {
            size,
            stream: Box::pin(stream),
        })
    }

    /// Sends a GET to one host, answering one authentication challenge. Returns any response
    /// but 401; the caller judges the status.
    async fn get(
        &self,
        h: &Endpoint,
        repository: &str,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let host = h.host.authority.as_str();
        let creds = &h.credentials;
        let scope = format!("repository:{repository}:pull");
        let key: TokenKey = (host.to_string(), scope, creds.fingerprint());

        let preemptive = self.cached_auth(&key, creds);
        let mut resp = self
            .send(h, path, accept, preemptive.as_ref(), what)
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
            repository: repository.to_string(),
            reason: reason.to_string(),
        };
        let auth = if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let token = match &creds.registry_token {
                Some(t) if !t.is_empty() => t.clone(),
                _ => self.fetch_token(h, &key, repository, bearer).await?,
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
                repository: repository.to_string(),
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

        let mut resp = self.send(h, path, accept, Some(&auth), what).await?;
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

    /// Gets a bearer token from the challenge's realm (with the host's client and headers) and caches it.
    async fn fetch_token(
        &self,
        h: &Endpoint,
        key: &TokenKey,
        repository: &str,
        challenge: &Challenge,
    ) -> Result<String, RegistryError> {
        let host = &key.0;
        let creds = &h.credentials;
        let http = h
            .client
            .as_ref()
            .map_err(|reason| RegistryError::TlsSetup {
                host: host.clone(),
                reason: reason.clone(),
            })?;
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
                http.post(url)
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
                let rb = http.get(url);
                match creds.basic() {
                    Some((u, p)) => rb.basic_auth(u, Some(p)),
                    None => rb,
                }
            }
        };
        let rb = with_headers(rb, &h.host.headers);
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

    /// Sends one GET to a host, choosing the scheme: as written in its config, or HTTPS with a
    /// fall back to HTTP when the TLS connection fails and the host may use plain HTTP (loopback,
    /// `--insecure-registry`, or `http://` with TLS settings). The scheme that worked is
    /// remembered per host.
    async fn send(
        &self,
        h: &Endpoint,
        path: &str,
        accept: Option<&str>,
        auth: Option<&Auth>,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let host = h.host.authority.as_str();
        let client = h
            .client
            .as_ref()
            .map_err(|reason| RegistryError::TlsSetup {
                host: host.to_string(),
                reason: reason.clone(),
            })?;
        let headers = &h.host.headers;
        let may_fall_back = match h.host.scheme {
            HostScheme::Http => {
                return self
                    .send_once(client, Scheme::Http, host, path, accept, auth, headers)
                    .await
                    .map_err(|e| transport(host, what, e));
            }
            HostScheme::Https => false,
            HostScheme::Auto => self.allows_http(host),
            HostScheme::HttpsThenHttp => true,
        };
        if !may_fall_back {
            return self
                .send_once(client, Scheme::Https, host, path, accept, auth, headers)
                .await
                .map_err(|e| transport(host, what, e));
        }
        let known = lock(&self.inner.schemes).get(host).copied();
        let scheme = known.unwrap_or(Scheme::Https);
        match self
            .send_once(client, scheme, host, path, accept, auth, headers)
            .await
        {
            Ok(resp) => {
                if known.is_none() {
                    lock(&self.inner.schemes).insert(host.to_string(), scheme);
                }
                Ok(resp)
            }
            Err(e) if e.is_connect() && known.is_some() => {
                // The remembered scheme stopped working: probe afresh next time.
                lock(&self.inner.schemes).remove(host);
                Err(transport(host, what, e))
            }
            Err(e) if e.is_connect() => {
                let https_error = error_chain(&e.without_url());
                debug!(%host, "https failed ({https_error}); falling back to plain http");
                let resp = self
                    .send_once(client, Scheme::Http, host, path, accept, auth, headers)
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

    #[allow(clippy::too_many_arguments)]
    async fn send_once(
        &self,
        client: &reqwest::Client,
        scheme: Scheme,
        host: &str,
        path: &str,
        accept: Option<&str>,
        auth: Option<&Auth>,
        headers: &[(String, String)],
    ) -> Result<Response, reqwest::Error> {
        let url = format!("{}://{host}{path}", scheme.as_str());
        let mut rb = with_headers(client.get(&url), headers);
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

    /// Whether plain HTTP is allowed for `host` without a scheme in its config (loopback or
    /// `--insecure-registry`).
    pub fn plain_http_allowed(&self, host: &str) -> bool {
        self.allows_http(host)
    }
}

/// Adds a host's configured headers.
fn with_headers(
    mut rb: reqwest::RequestBuilder,
    headers: &[(String, String)],
) -> reqwest::RequestBuilder {
    for (name, value) in headers {
        rb = rb.header(name.as_str(), value.as_str());
    }
    rb
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
            ..Default::default()
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

    // ---- mirrors (hosts.toml) ----

    fn hosts_client(dir: &Path, credentials_file: Option<PathBuf>) -> RegistryClient {
        RegistryClient::new(RegistryOptions {
            hosts_dir: Some(dir.to_path_buf()),
            credentials_file,
            ..Default::default()
        })
        .unwrap()
    }

    fn write_hosts(dir: &Path, registry: &str, text: &str) {
        let folder = dir.join(registry);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("hosts.toml"), text).unwrap();
    }

    fn ns(addr: &str) -> String {
        addr.replace(':', "%3A")
    }

    /// Serves MANIFEST for `tags`, a blob for `/blobs/`, 404 for anything else.
    fn serving(tags: &'static [&'static str]) -> impl Fn(&Req, &str) -> Resp + Send + Sync {
        move |req: &Req, _: &str| {
            let p = req.path_only();
            if p.contains("/blobs/") {
                return resp(200, &[], "blob-bytes");
            }
            let good = Digest::of(MANIFEST.as_bytes()).to_string();
            match p.rsplit('/').next() {
                Some(t) if tags.contains(&t) || t == good => manifest_ok(),
                _ => resp(
                    404,
                    &[("Content-Type", "application/json")],
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                ),
            }
        }
    }

    #[tokio::test]
    async fn mirror_first_then_server_with_ns() {
        let mirror = TestServer::start(serving(&["v1"])).await;
        let server = TestServer::start(serving(&["v1", "only-upstream"])).await;
        let dir = tempfile::tempdir().unwrap();
        write_hosts(
            dir.path(),
            &server.addr,
            &format!(
                "server = \"http://{}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  [host.\"http://{}\".header]\n    x-mirror-hint = \"keelson\"\n",
                server.addr, mirror.addr, mirror.addr
            ),
        );
        let c = hosts_client(dir.path(), None);
        let r = reference(&server, "team/app");
        let none = Credentials::default();

        c.fetch_manifest(&r, "v1", &none).await.unwrap();
        let reqs = mirror.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(
            reqs[0].path,
            format!("/v2/team/app/manifests/v1?ns={}", ns(&server.addr))
        );
        assert_eq!(reqs[0].header("x-mirror-hint"), Some("keelson"));
        assert!(server.requests().is_empty(), "the mirror answered");

        // Missing on the mirror: the server is asked, without ns (it is the registry itself).
        c.fetch_manifest(&r, "only-upstream", &none).await.unwrap();
        let sreqs = server.requests();
        assert_eq!(sreqs.len(), 1);
        assert_eq!(sreqs[0].path, "/v2/team/app/manifests/only-upstream");
        assert!(sreqs[0].header("x-mirror-hint").is_none());

        // Blobs too go to the mirror first.
        let d = Digest::of(b"blob-bytes");
        let blob = c.fetch_blob(&r, &d, &none).await.unwrap();
        assert_eq!(collect(blob).await, b"blob-bytes");
        assert_eq!(
            mirror.requests().last().unwrap().path,
            format!("/v2/team/app/blobs/{d}?ns={}", ns(&server.addr))
        );

        // Missing everywhere: both hosts named in one error, and "not found" wins.
        let err = c.fetch_manifest(&r, "nowhere", &none).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RegistryError::AllHostsFailed { .. }), "{msg}");
        assert!(matches!(err.primary(), RegistryError::NotFound { .. }));
        assert!(
            msg.contains(&format!("mirror http://{}", mirror.addr))
                && msg.contains(&format!("server http://{}", server.addr)),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn pull_only_mirror_is_not_asked_to_resolve_tags() {
        let mirror = TestServer::start(serving(&["v1"])).await;
        let server = TestServer::start(serving(&["v1"])).await;
        let dir = tempfile::tempdir().unwrap();
        write_hosts(
            dir.path(),
            &server.addr,
            &format!(
                "server = \"http://{}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n",
                server.addr, mirror.addr
            ),
        );
        let c = hosts_client(dir.path(), None);
        let r = reference(&server, "x");
        let none = Credentials::default();
        let m = c.fetch_manifest(&r, "v1", &none).await.unwrap();
        assert!(mirror.requests().is_empty(), "tags are resolved upstream");
        assert_eq!(server.requests().len(), 1);
        // By digest, the mirror is asked first.
        c.fetch_manifest(&r, m.digest.as_str(), &none)
            .await
            .unwrap();
        assert_eq!(mirror.requests().len(), 1);
        assert_eq!(server.requests().len(), 1);

        // A registry whose only host cannot resolve cannot pull by tag at all.
        write_hosts(
            dir.path(),
            &server.addr,
            &format!(
                "server = \"http://{}\"\ncapabilities = [\"pull\"]\n",
                server.addr
            ),
        );
        let err = c.fetch_manifest(&r, "v1", &none).await.unwrap_err();
        assert!(matches!(err, RegistryError::NoHosts { .. }), "{err}");
        assert!(err.to_string().contains("hosts.toml"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_or_failing_mirrors_are_skipped() {
        let server = TestServer::start(serving(&["v1"])).await;
        let broken = TestServer::start(|_, _| resp(503, &[], "overloaded")).await;
        // A port nobody listens on.
        let down = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        write_hosts(
            dir.path(),
            &server.addr,
            &format!(
                "server = \"http://{s}\"\n[host.\"http://{down}\"]\n[host.\"http://{b}\"]\n[host.\"https://127.0.0.1:1\"]\n  ca = \"missing-ca.pem\"\n",
                s = server.addr,
                b = broken.addr
            ),
        );
        let c = hosts_client(dir.path(), None);
        let r = reference(&server, "x");
        let e = c.endpoints(&r, &Credentials::default()).unwrap();
        assert_eq!(e.hosts.len(), 4);
        assert!(e.hosts[2].setup_error().unwrap().contains("missing-ca.pem"));
        c.fetch_manifest(&r, "v1", &Credentials::default())
            .await
            .unwrap();
        assert_eq!(broken.requests().len(), 1);
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn mirrors_get_file_credentials_never_the_requests() {
        let mirror = TestServer::start(|req: &Req, _: &str| {
            if req.header("authorization") != Some(basic("m", "mirror-pw").as_str()) {
                return resp(401, &[("WWW-Authenticate", "Basic realm=m")], "");
            }
            serving(&["v1"])(req, "")
        })
        .await;
        let server = TestServer::start(|req: &Req, _: &str| {
            if req.header("authorization") != Some(basic("s", "server-pw").as_str()) {
                return resp(401, &[("WWW-Authenticate", "Basic realm=s")], "");
            }
            serving(&["upstream"])(req, "")
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        write_hosts(
            dir.path(),
            &server.addr,
            &format!(
                "server = \"http://{}\"\n[host.\"http://{}\"]\n",
                server.addr, mirror.addr
            ),
        );
        let creds_file = dir.path().join("config.json");
        std::fs::write(
            &creds_file,
            format!(
                r#"{{"auths":{{"{}":{{"auth":"{}"}},"{}":{{"username":"s","password":"server-pw"}}}}}}"#,
                mirror.addr,
                base64::engine::general_purpose::STANDARD.encode("m:mirror-pw"),
                server.addr
            ),
        )
        .unwrap();
        let c = hosts_client(dir.path(), Some(creds_file.clone()));
        let r = reference(&server, "x");

        // The request's credentials go to the server; the mirror uses its file entry.
        let request_creds = user_pass("s", "server-pw");
        let e = c.endpoints(&r, &request_creds).unwrap();
        assert!(matches!(
            &e.hosts[0].credentials_source,
            CredentialsSource::File { key, .. } if *key == mirror.addr
        ));
        assert_eq!(e.hosts[1].credentials_source, CredentialsSource::Request);
        assert!(!format!("{e:?}").contains("server-pw"));
        c.fetch_manifest(&r, "v1", &request_creds).await.unwrap();
        c.fetch_manifest(&r, "upstream", &request_creds)
            .await
            .unwrap();
        let leaked = basic("s", "server-pw");
        assert!(
            mirror
                .requests()
                .iter()
                .all(|q| q.header("authorization") != Some(leaked.as_str())),
            "the mirror never sees the request's credentials"
        );

        // Without request credentials, the file's entry for the server is used.
        let e = c.endpoints(&r, &Credentials::default()).unwrap();
        assert!(matches!(
            &e.hosts[1].credentials_source,
            CredentialsSource::File { key, .. } if *key == server.addr
        ));
        c.fetch_manifest(&r, "upstream", &Credentials::default())
            .await
            .unwrap();

        // A broken file is a warning, never a leak, and the pull goes on anonymously.
        std::fs::write(
            &creds_file,
            "{\"auths\": {\"x\": {\"auth\": \"hunter2!!\"}}}",
        )
        .unwrap();
        let e = c.endpoints(&r, &Credentials::default()).unwrap();
        assert_eq!(e.hosts[1].credentials_source, CredentialsSource::None);
        assert!(e.warnings[0].contains("config.json"), "{:?}", e.warnings);
        assert!(!e.warnings[0].contains("hunter2"));
    }

    #[tokio::test]
    async fn broken_hosts_toml_fails_only_its_registry() {
        let server = TestServer::start(serving(&["v1"])).await;
        let other = TestServer::start(serving(&["v1"])).await;
        let dir = tempfile::tempdir().unwrap();
        write_hosts(
            dir.path(),
            &server.addr,
            "server = \"http://x\"\n\n[host.\"http://m\"\ncapabilities = [\"pull\"]\n",
        );
        let c = hosts_client(dir.path(), None);
        let err = c
            .fetch_manifest(&reference(&server, "x"), "v1", &Credentials::default())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RegistryError::Hosts(_)), "{msg}");
        assert!(msg.contains("hosts.toml line 3"), "{msg}");
        assert!(server.requests().is_empty());
        c.fetch_manifest(&reference(&other, "x"), "v1", &Credentials::default())
            .await
            .unwrap();
        // Fixed: the next pull reads the file again.
        write_hosts(
            dir.path(),
            &server.addr,
            &format!("server = \"http://{}\"\n", server.addr),
        );
        c.fetch_manifest(&reference(&server, "x"), "v1", &Credentials::default())
            .await
            .unwrap();
    }
}
