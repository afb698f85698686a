//! Per-registry host settings in containerd's `certs.d/<host>/hosts.toml` format: the mirrors a
//! pull tries before the upstream server, what each may be asked, and its TLS settings and headers.
//!
//! The folder for a registry is `<dir>/<host>_<port>_`, `<dir>/<host>:<port>` or `<dir>/<host>`,
//! else `<dir>/_default`; the first that exists wins. Its `hosts.toml` lists `[host."URL"]`
//! entries, tried in file order, then `server` (default: the registry itself, `registry-1.docker.io`
//! for `docker.io`). A folder without `hosts.toml` may hold Docker-style certificate files
//! (`*.crt` CAs, `*.cert`/`*.key` client pairs) for the registry itself. Files are read on every
//! call, so edits apply to the next pull.

use crate::image::reference::{DOCKER_HUB, DOCKER_HUB_API_HOST};
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The file read in each registry folder.
pub const HOSTS_FILE: &str = "hosts.toml";
/// The folder used for registries without one of their own.
pub const DEFAULT_FOLDER: &str = "_default";
/// Largest `hosts.toml` read.
const HOSTS_FILE_MAX_BYTES: u64 = 1 << 20;

/// Why a registry's host settings could not be read. Names the file and, when known, the line.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("cannot read registry host config {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid registry host config {}{}: {message}", .path.display(), at_line(.line))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("invalid registry name {0:?} for a host config folder")]
    Namespace(String),
}

fn at_line(line: &Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

/// What a host may be asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// Fetch manifests and blobs by digest.
    pub pull: bool,
    /// Turn a tag into a digest: a trusted operation.
    pub resolve: bool,
    /// Accept uploads (never used by the runtime; kept to show the configuration).
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
    const NONE: Capabilities = Capabilities {
        pull: false,
        resolve: false,
        push: false,
    };
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.pull, "pull"),
            (self.resolve, "resolve"),
            (self.push, "push"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// How to reach a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostScheme {
    /// Written as `https://`: TLS only.
    Https,
    /// Written as `http://`: plain HTTP only.
    Http,
    /// No scheme written (or the built-in default): HTTPS, with plain HTTP allowed only for
    /// loopback registries and `--insecure-registry` hosts when the TLS connection fails.
    Auto,
    /// Written as `http://` but with TLS settings (`ca`, `client`, `skip_verify`): HTTPS first,
    /// plain HTTP when the TLS connection fails, as containerd does.
    HttpsThenHttp,
}

impl HostScheme {
    /// The scheme tried first.
    pub fn first(self) -> &'static str {
        match self {
            HostScheme::Http => "http",
            _ => "https",
        }
    }
}

/// Whether a host is a mirror or the upstream server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRole {
    Mirror,
    Server,
}

impl fmt::Display for HostRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostRole::Mirror => "mirror",
            HostRole::Server => "server",
        })
    }
}

/// TLS settings of one host; paths are absolute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// CA bundles trusted in addition to the system roots.
    pub ca: Vec<PathBuf>,
    /// Client certificate and key; `None` as key: the key is in the certificate's file.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Accept any server certificate.
    pub skip_verify: bool,
}

impl TlsSettings {
    /// Whether anything differs from the defaults.
    pub fn is_set(&self) -> bool {
        !self.ca.is_empty() || !self.client.is_empty() || self.skip_verify
    }
}

/// One host a pull may talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryHost {
    pub role: HostRole,
    pub scheme: HostScheme,
    /// `host[:port]`, as in the Host header.
    pub authority: String,
    /// The API root the repository path is appended to: `/v2`, `/prefix/v2`, or whatever the
    /// URL held with `override_path` (possibly empty).
    pub api_path: String,
    pub capabilities: Capabilities,
    pub tls: TlsSettings,
    /// Extra request headers, in file order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// Connection timeout (`dial_timeout`).
    pub dial_timeout: Option<Duration>,
}

impl RegistryHost {
    /// The default upstream of a registry: `https://<host>/v2` (HTTP fallback for loopback and
    /// insecure hosts), or `https://registry-1.docker.io/v2` for Docker Hub.
    pub fn default_server(namespace: &str) -> Self {
        let (scheme, authority) = if namespace == DOCKER_HUB {
            (HostScheme::Https, DOCKER_HUB_API_HOST.to_string())
        } else {
            (HostScheme::Auto, namespace.to_string())
        };
        RegistryHost {
            role: HostRole::Server,
            scheme,
            authority,
            api_path: "/v2".into(),
            capabilities: Capabilities::ALL,
            tls: TlsSettings::default(),
            headers: Vec::new(),
            dial_timeout: None,
        }
    }

    /// The `ns` query value sent to this host: the registry's name when the host is not the
    /// registry itself (a mirror, or a server elsewhere), as containerd does.
    pub fn namespace_query<'a>(&self, namespace: &'a str) -> Option<&'a str> {
        let me = self.authority.to_ascii_lowercase();
        let same = me == namespace || (namespace == DOCKER_HUB && me == DOCKER_HUB_API_HOST);
        (!same).then_some(namespace)
    }

    /// Path and query of a request: `<api path>/<repository>/<kind>/<reference>[?ns=<namespace>]`.
    pub fn request_path(
        &self,
        namespace: &str,
        repository: &str,
        kind: &str,
        reference: &str,
    ) -> String {
        let mut p = format!("{}/{repository}/{kind}/{reference}", self.api_path);
        if let Some(ns) = self.namespace_query(namespace) {
            p.push_str("?ns=");
            for b in ns.bytes() {
                match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        p.push(b as char)
                    }
                    _ => p.push_str(&format!("%{b:02X}")),
                }
            }
        }
        p
    }

    /// `scheme://authority` with the scheme tried first.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme.first(), self.authority)
    }
}

/// Where a registry's settings came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostsSource {
    /// No folder applies: the registry is reached directly.
    Builtin,
    /// A `hosts.toml`.
    File(PathBuf),
    /// A folder with Docker-style certificate files and no `hosts.toml`.
    CertDir(PathBuf),
}

impl fmt::Display for HostsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostsSource::Builtin => f.write_str("built-in default (no host config folder applies)"),
            HostsSource::File(p) => write!(f, "{}", p.display()),
            HostsSource::CertDir(p) => write!(f, "certificate files in {}", p.display()),
        }
    }
}

/// The hosts of one registry, in the order they are tried: mirrors, then the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostsConfig {
    /// The registry's name as in image references (`docker.io`, `127.0.0.1:5000`).
    pub namespace: String,
    pub source: HostsSource,
    pub hosts: Vec<RegistryHost>,
    /// Settings that were ignored (unknown keys, unsupported options), for operators.
    pub warnings: Vec<String>,
}

impl HostsConfig {
    /// The registry reached directly, with no mirror.
    pub fn builtin(namespace: &str) -> Self {
        HostsConfig {
            namespace: namespace.to_string(),
            source: HostsSource::Builtin,
            hosts: vec![RegistryHost::default_server(namespace)],
            warnings: Vec::new(),
        }
    }
}

/// The folder names tried for `namespace`, in order.
pub fn folder_candidates(namespace: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(idx) = namespace.rfind(':')
        && idx > 0
        && !namespace.ends_with(']')
    {
        out.push(format!("{}_{}_", &namespace[..idx], &namespace[idx + 1..]));
    }
    out.push(namespace.to_string());
    out.push(DEFAULT_FOLDER.to_string());
    out
}

/// Reads the settings for registry `namespace` under `dir`; no folder means the built-in default.
pub fn load(dir: &Path, namespace: &str) -> Result<HostsConfig, HostsError> {
    if namespace.is_empty()
        || namespace.contains(['/', '\\', '\0'])
        || namespace == "."
        || namespace == ".."
        || namespace == DEFAULT_FOLDER
    {
        return Err(HostsError::Namespace(namespace.to_string()));
    }
    for name in folder_candidates(namespace) {
        let folder = dir.join(&name);
        match std::fs::metadata(&folder) {
            Ok(m) if m.is_dir() => return load_folder(&folder, namespace),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue;
            }
            Err(source) => {
                return Err(HostsError::Read {
                    path: folder,
                    source,
                });
            }
        }
    }
    Ok(HostsConfig::builtin(namespace))
}

fn load_folder(folder: &Path, namespace: &str) -> Result<HostsConfig, HostsError> {
    let path = folder.join(HOSTS_FILE);
    let read_err = |source| HostsError::Read {
        path: path.clone(),
        source,
    };
    match std::fs::File::open(&path) {
        Ok(f) => {
            let mut text = String::new();
            f.take(HOSTS_FILE_MAX_BYTES + 1)
                .read_to_string(&mut text)
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::InvalidData {
                        HostsError::Invalid {
                            path: path.clone(),
                            line: None,
                            message: "not utf-8 text".into(),
                        }
                    } else {
                        read_err(e)
                    }
                })?;
            if text.len() as u64 > HOSTS_FILE_MAX_BYTES {
                return Err(HostsError::Invalid {
                    path,
                    line: None,
                    message: format!("larger than {HOSTS_FILE_MAX_BYTES} bytes"),
                });
            }
            parse(&text, &path, namespace)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => cert_files(folder, namespace),
        Err(e) => Err(read_err(e)),
    }
}

/// Docker's layout: `*.crt` are CAs, `*.cert` with a matching `*.key` are client pairs.
fn cert_files(folder: &Path, namespace: &str) -> Result<HostsConfig, HostsError> {
    let read_err = |source| HostsError::Read {
        path: folder.to_path_buf(),
        source,
    };
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .map_err(read_err)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut config = HostsConfig::builtin(namespace);
    let server = &mut config.hosts[0];
    for name in &names {
        if name.ends_with(".crt") {
            server.tls.ca.push(folder.join(name));
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = format!("{stem}.key");
            if names.contains(&key) {
                server
                    .tls
                    .client
                    .push((folder.join(name), Some(folder.join(key))));
            } else {
                config.warnings.push(format!(
                    "{}: client certificate {name} has no {key}; ignored",
                    folder.display()
                ));
            }
        }
    }
    config.source = if config.hosts[0].tls.is_set() {
        HostsSource::CertDir(folder.to_path_buf())
    } else {
        HostsSource::Builtin
    };
    Ok(config)
}

/// One table's settings (the root table, or one `[host."URL"]`).
#[derive(Default)]
struct Fields {
    capabilities: Option<Capabilities>,
    ca: Vec<PathBuf>,
    client: Vec<(PathBuf, Option<PathBuf>)>,
    skip_verify: bool,
    headers: Vec<(String, String)>,
    override_path: bool,
    dial_timeout: Option<Duration>,
}

impl Fields {
    fn tls_given(&self) -> bool {
        !self.ca.is_empty() || !self.client.is_empty() || self.skip_verify
    }
}

/// Reads one `hosts.toml`. `path` names the file in errors; relative paths in it are relative
/// to its folder.
pub fn parse(text: &str, path: &Path, namespace: &str) -> Result<HostsConfig, HostsError> {
    let p = Parser {
        text,
        path,
        base: path.parent().unwrap_or(Path::new("/")),
    };
    let doc = DeTable::parse(text).map_err(|e| HostsError::Invalid {
        path: path.to_path_buf(),
        line: e.span().map(|s| p.line(s.start)),
        message: one_line(e.message()),
    })?;
    let mut warnings = Vec::new();
    let mut server: Option<(String, usize)> = None;
    let mut root = Fields::default();
    let mut mirrors: Vec<(usize, String, Fields)> = Vec::new();
    for (key, value) in doc.get_ref().iter() {
        let name: &str = key.get_ref();
        match name {
            "server" => {
                let s = p.string(value, "server")?;
                if !s.trim().is_empty() {
                    server = Some((s.trim().to_string(), value.span().start));
                }
            }
            "host" => {
                let DeValue::Table(table) = value.get_ref() else {
                    return Err(p.invalid(
                        value.span().start,
                        "\"host\" must be a table of [host.\"URL\"] sections",
                    ));
                };
                for (url, section) in table.iter() {
                    let DeValue::Table(fields) = section.get_ref() else {
                        return Err(p.invalid(
                            section.span().start,
                            format!("host {:?} must be a table", url.get_ref()),
                        ));
                    };
                    let f =
                        p.fields(fields, &format!("host {:?}", url.get_ref()), &mut warnings)?;
                    mirrors.push((url.span().start, url.get_ref().to_string(), f));
                }
            }
            _ => p.field(&mut root, key, value, "", &mut warnings)?,
        }
    }
    // Sections are kept in file order (the table itself is sorted by key).
    mirrors.sort_by_key(|(at, _, _)| *at);

    let mut hosts = Vec::with_capacity(mirrors.len() + 1);
    for (at, url, f) in mirrors {
        hosts.push(p.host(&url, at, f, HostRole::Mirror)?);
    }
    let server_host = match server {
        Some((url, at)) => p.host(&url, at, root, HostRole::Server)?,
        None => {
            let mut h = RegistryHost::default_server(namespace);
            apply_fields(&mut h, root);
            h
        }
    };
    hosts.push(server_host);
    Ok(HostsConfig {
        namespace: namespace.to_string(),
        source: HostsSource::File(path.to_path_buf()),
        hosts,
        warnings,
    })
}

fn apply_fields(h: &mut RegistryHost, f: Fields) {
    if let Some(c) = f.capabilities {
        h.capabilities = c;
    }
    if f.override_path {
        h.api_path.clear();
    }
    h.tls = TlsSettings {
        ca: f.ca,
        client: f.client,
        skip_verify: f.skip_verify,
    };
    h.headers = f.headers;
    h.dial_timeout = f.dial_timeout;
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct Parser<'a> {
    text: &'a str,
    path: &'a Path,
    base: &'a Path,
}

impl Parser<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn invalid(&self, offset: usize, message: impl Into<String>) -> HostsError {
        HostsError::Invalid {
            path: self.path.to_path_buf(),
            line: Some(self.line(offset)),
            message: message.into(),
        }
    }

    fn string<'v>(&self, v: &'v Spanned<DeValue<'_>>, what: &str) -> Result<&'v str, HostsError> {
        v.get_ref().as_str().ok_or_else(|| {
            self.invalid(
                v.span().start,
                format!("{what} must be a string, not {}", v.get_ref().type_str()),
            )
        })
    }

    fn absolute(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn fields(
        &self,
        table: &DeTable<'_>,
        section: &str,
        warnings: &mut Vec<String>,
    ) -> Result<Fields, HostsError> {
        let mut f = Fields::default();
        for (key, value) in table.iter() {
            self.field(&mut f, key, value, section, warnings)?;
        }
        Ok(f)
    }

    fn field(
        &self,
        f: &mut Fields,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
        section: &str,
        warnings: &mut Vec<String>,
    ) -> Result<(), HostsError> {
        let name: &str = key.get_ref();
        let at = value.span().start;
        let what = if section.is_empty() {
            name.to_string()
        } else {
            format!("{name} of {section}")
        };
        match name {
            "capabilities" => {
                let DeValue::Array(items) = value.get_ref() else {
                    return Err(self.invalid(
                        at,
                        format!("{what} must be an array like [\"pull\", \"resolve\"]"),
                    ));
                };
                let mut caps = Capabilities::NONE;
                for item in items.iter() {
                    match self.string(item, &what)?.to_ascii_lowercase().as_str() {
                        "pull" => caps.pull = true,
                        "resolve" => caps.resolve = true,
                        "push" => caps.push = true,
                        other => {
                            return Err(self.invalid(
                                item.span().start,
                                format!(
                                    "unknown capability {other:?} in {what} (expected pull, resolve or push)"
                                ),
                            ));
                        }
                    }
                }
                // An empty list means the default, as in containerd.
                f.capabilities = (caps != Capabilities::NONE).then_some(caps);
            }
            "ca" => {
                f.ca = match value.get_ref() {
                    DeValue::String(s) => vec![self.absolute(s)],
                    DeValue::Array(items) => items
                        .iter()
                        .map(|i| self.string(i, &what).map(|s| self.absolute(s)))
                        .collect::<Result<_, _>>()?,
                    other => {
                        return Err(self.invalid(
                            at,
                            format!(
                                "{what} must be a path or an array of paths, not {}",
                                other.type_str()
                            ),
                        ));
                    }
                };
            }
            "client" => f.client = self.client(value, &what)?,
            "skip_verify" => {
                f.skip_verify = value
                    .get_ref()
                    .as_bool()
                    .ok_or_else(|| self.invalid(at, format!("{what} must be true or false")))?;
            }
            "override_path" => {
                f.override_path = value
                    .get_ref()
                    .as_bool()
                    .ok_or_else(|| self.invalid(at, format!("{what} must be true or false")))?;
            }
            "header" => {
                let DeValue::Table(headers) = value.get_ref() else {
                    return Err(self.invalid(at, format!("{what} must be a table of header names")));
                };
                for (hname, hvalue) in headers.iter() {
                    let hname: &str = hname.get_ref();
                    if reqwest::header::HeaderName::from_bytes(hname.as_bytes()).is_err() {
                        return Err(self.invalid(
                            hvalue.span().start,
                            format!("invalid header name {hname:?} in {what}"),
                        ));
                    }
                    let values: Vec<&str> = match hvalue.get_ref() {
                        DeValue::String(s) => vec![&s[..]],
                        DeValue::Array(items) => items
                            .iter()
                            .map(|i| self.string(i, &format!("header {hname:?}")))
                            .collect::<Result<_, _>>()?,
                        other => {
                            return Err(self.invalid(
                                hvalue.span().start,
                                format!(
                                    "header {hname:?} in {what} must be a string or an array of strings, not {}",
                                    other.type_str()
                                ),
                            ));
                        }
                    };
                    for v in values {
                        if reqwest::header::HeaderValue::from_str(v).is_err() {
                            return Err(self.invalid(
                                hvalue.span().start,
                                format!("invalid value for header {hname:?} in {what}"),
                            ));
                        }
                        f.headers.push((hname.to_string(), v.to_string()));
                    }
                }
            }
            "dial_timeout" => {
                let s = self.string(value, &what)?;
                f.dial_timeout = Some(parse_duration(s).ok_or_else(|| {
                    self.invalid(
                        at,
                        format!("{what} {s:?} is not a duration like \"500ms\" or \"2s\""),
                    )
                })?);
            }
            "server" if !section.is_empty() => {
                warnings.push(format!(
                    "{} line {}: \"server\" inside {section} is ignored",
                    self.path.display(),
                    self.line(key.span().start)
                ));
            }
            "host" if !section.is_empty() => {
                return Err(self.invalid(
                    key.span().start,
                    format!(
                        "{section} may not hold further hosts: nested mirrors are not supported"
                    ),
                ));
            }
            other => {
                let hint = if other == "proxy" {
                    "proxies are not supported"
                } else {
                    "unknown key"
                };
                warnings.push(format!(
                    "{} line {}: ignoring {what} ({hint})",
                    self.path.display(),
                    self.line(key.span().start)
                ));
            }
        }
        Ok(())
    }

    /// `"pem"`, `["pem", ...]` or `[["cert", "key"], ...]` (a `""` key: the key is in the cert file).
    fn client(
        &self,
        value: &Spanned<DeValue<'_>>,
        what: &str,
    ) -> Result<Vec<(PathBuf, Option<PathBuf>)>, HostsError> {
        let at = value.span().start;
        let bad = || {
            self.invalid(
                at,
                format!(
                    "{what} must be a path, an array of paths, or an array of [\"cert\", \"key\"] pairs"
                ),
            )
        };
        match value.get_ref() {
            DeValue::String(s) => Ok(vec![(self.absolute(s), None)]),
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push((self.absolute(s), None)),
                        DeValue::Array(pair) => {
                            if pair.len() != 2 {
                                return Err(self.invalid(
                                    item.span().start,
                                    format!(
                                        "{what}: a pair must be [\"cert\", \"key\"], found {} items",
                                        pair.len()
                                    ),
                                ));
                            }
                            let cert = self.string(&pair[0], what)?;
                            let key = self.string(&pair[1], what)?;
                            let key = (!key.is_empty()).then(|| self.absolute(key));
                            out.push((self.absolute(cert), key));
                        }
                        _ => return Err(bad()),
                    }
                }
                Ok(out)
            }
            _ => Err(bad()),
        }
    }

    /// A `[host."URL"]` key or `server` value to a host.
    fn host(
        &self,
        url: &str,
        at: usize,
        f: Fields,
        role: HostRole,
    ) -> Result<RegistryHost, HostsError> {
        let trimmed = url.trim();
        let shown = redact_userinfo(trimmed);
        let what = match role {
            HostRole::Mirror => format!("host {shown:?}"),
            HostRole::Server => format!("server {shown:?}"),
        };
        let lower = trimmed.to_ascii_lowercase();
        let (written, full) = if lower.starts_with("https://") {
            (Some("https"), trimmed.to_string())
        } else if lower.starts_with("http://") {
            (Some("http"), trimmed.to_string())
        } else if lower.contains("://") {
            return Err(self.invalid(at, format!("{what}: the scheme must be http or https")));
        } else {
            (None, format!("https://{trimmed}"))
        };
        let parsed = reqwest::Url::parse(&full)
            .map_err(|e| self.invalid(at, format!("{what} is not a valid url: {e}")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(self.invalid(at, format!("{what}: credentials do not belong in the url")));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(self.invalid(
                at,
                format!("{what}: the url may not have a query or fragment"),
            ));
        }
        let Some(host) = parsed.host_str() else {
            return Err(self.invalid(at, format!("{what} has no host")));
        };
        let mut authority = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        if authority.eq_ignore_ascii_case(DOCKER_HUB) {
            // docker.io itself serves no registry API.
            authority = DOCKER_HUB_API_HOST.to_string();
        }
        let mut path = clean_path(parsed.path());
        if !f.override_path && !path.ends_with("/v2") {
            path.push_str("/v2");
        }
        let scheme = match written {
            Some("https") => HostScheme::Https,
            Some(_) if f.tls_given() && parsed.port() != Some(80) => HostScheme::HttpsThenHttp,
            Some(_) => HostScheme::Http,
            None => HostScheme::Auto,
        };
        Ok(RegistryHost {
            role,
            scheme,
            authority,
            api_path: path,
            capabilities: f.capabilities.unwrap_or(Capabilities::ALL),
            tls: TlsSettings {
                ca: f.ca,
                client: f.client,
                skip_verify: f.skip_verify,
            },
            headers: f.headers,
            dial_timeout: f.dial_timeout,
        })
    }
}

/// A URL for messages: `user:password@` in the authority replaced by `***@`.
fn redact_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
}

/// `/a//b/./c/` -> `/a/b/c`; `/` and `` -> ``.
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.iter().map(|s| format!("/{s}")).collect()
}

/// A Go-style duration: `1h2m3.5s`, `500ms`, `250us`, `10ns`.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * scale;
    }
    (0.0..1e9)
        .contains(&total)
        .then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str, namespace: &str) -> HostsConfig {
        parse(
            text,
            Path::new("/etc/keelson/certs.d/x/hosts.toml"),
            namespace,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("/etc/keelson/certs.d/x/hosts.toml"), "x.io")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let c = parse_ok(
            r#"
server = "https://registry-1.docker.io"

[host."https://zz-first.example"]
  capabilities = ["pull"]
[host."http://aa-second.example:5000"]
  capabilities = ["pull", "resolve"]
  ca = "mirror.crt"
  [host."http://aa-second.example:5000".header]
    x-custom = ["a", "b"]
    x-one = "c"
[host."mmm.example/prefix/"]
  override_path = true
"#,
            "docker.io",
        );
        let names: Vec<&str> = c.hosts.iter().map(|h| h.authority.as_str()).collect();
        assert_eq!(
            names,
            [
                "zz-first.example",
                "aa-second.example:5000",
                "mmm.example",
                "registry-1.docker.io"
            ]
        );
        let [first, second, third, server] = &c.hosts[..] else {
            panic!()
        };
        assert_eq!(first.role, HostRole::Mirror);
        assert_eq!(first.scheme, HostScheme::Https);
        assert_eq!(
            first.capabilities,
            Capabilities {
                pull: true,
                resolve: false,
                push: false
            }
        );
        assert_eq!(first.api_path, "/v2");
        // http:// with a CA: HTTPS first, then plain HTTP.
        assert_eq!(second.scheme, HostScheme::HttpsThenHttp);
        assert_eq!(
            second.tls.ca,
            vec![PathBuf::from("/etc/keelson/certs.d/x/mirror.crt")]
        );
        assert_eq!(
            second.headers,
            vec![
                ("x-custom".to_string(), "a".to_string()),
                ("x-custom".to_string(), "b".to_string()),
                ("x-one".to_string(), "c".to_string())
            ]
        );
        assert_eq!(third.scheme, HostScheme::Auto);
        assert_eq!(third.api_path, "/prefix");
        assert_eq!(server.role, HostRole::Server);
        assert_eq!(server.capabilities, Capabilities::ALL);
        assert_eq!(server.scheme, HostScheme::Https);
        assert_eq!(
            c.source,
            HostsSource::File("/etc/keelson/certs.d/x/hosts.toml".into())
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn paths_and_namespace_query() {
        let c = parse_ok(
            r#"
[host."https://mirror.example/us"]
[host."https://m2.example/v2/upstream"]
  override_path = true
[host."http://127.0.0.1:5001"]
"#,
            "registry.k8s.io",
        );
        let paths: Vec<String> = c
            .hosts
            .iter()
            .map(|h| h.request_path("registry.k8s.io", "e2e/nginx", "manifests", "1.14"))
            .collect();
        assert_eq!(
            paths,
            [
                "/us/v2/e2e/nginx/manifests/1.14?ns=registry.k8s.io",
                "/v2/upstream/e2e/nginx/manifests/1.14?ns=registry.k8s.io",
                "/v2/e2e/nginx/manifests/1.14?ns=registry.k8s.io",
                // The default server is the registry itself: no ns.
                "/v2/e2e/nginx/manifests/1.14",
            ]
        );
        assert_eq!(c.hosts[3].authority, "registry.k8s.io");
        assert_eq!(c.hosts[3].scheme, HostScheme::Auto);
        assert_eq!(c.hosts[2].scheme, HostScheme::Http);
        assert_eq!(c.hosts[2].base_url(), "http://127.0.0.1:5001");

        // Docker Hub: registry-1.docker.io is the registry itself; a port is escaped.
        let hub = RegistryHost::default_server("docker.io");
        assert_eq!(hub.authority, "registry-1.docker.io");
        assert_eq!(
            hub.request_path("docker.io", "library/busybox", "manifests", "latest"),
            "/v2/library/busybox/manifests/latest"
        );
        let mirror = &parse_ok("[host.\"http://127.0.0.1:5001\"]", "docker.io").hosts[0];
        assert_eq!(
            mirror.request_path("docker.io", "library/busybox", "blobs", "sha256:ab"),
            "/v2/library/busybox/blobs/sha256:ab?ns=docker.io"
        );
        assert_eq!(
            mirror.request_path("127.0.0.1:5000", "a", "manifests", "v"),
            "/v2/a/manifests/v?ns=127.0.0.1%3A5000"
        );
        // The server named as docker.io means the API host.
        let c = parse_ok("server = \"https://docker.io\"", "docker.io");
        assert_eq!(c.hosts[0].authority, "registry-1.docker.io");
    }

    #[test]
    fn root_settings_apply_to_the_server() {
        let c = parse_ok(
            r#"
capabilities = ["pull"]
skip_verify = true
ca = ["/abs/ca.pem", "rel/ca2.pem"]
client = [["c.cert", "c.key"], ["combined.pem", ""]]
dial_timeout = "1.5s"
[header]
  authorization-hint = "x"
"#,
            "reg.example:5000",
        );
        assert_eq!(c.hosts.len(), 1);
        let s = &c.hosts[0];
        assert_eq!(s.authority, "reg.example:5000");
        assert_eq!(s.scheme, HostScheme::Auto);
        assert!(s.tls.skip_verify);
        assert!(s.capabilities.pull && !s.capabilities.resolve);
        assert_eq!(
            s.tls.ca,
            vec![
                PathBuf::from("/abs/ca.pem"),
                PathBuf::from("/etc/keelson/certs.d/x/rel/ca2.pem")
            ]
        );
        assert_eq!(
            s.tls.client,
            vec![
                (
                    PathBuf::from("/etc/keelson/certs.d/x/c.cert"),
                    Some(PathBuf::from("/etc/keelson/certs.d/x/c.key"))
                ),
                (PathBuf::from("/etc/keelson/certs.d/x/combined.pem"), None)
            ]
        );
        assert_eq!(s.dial_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(s.headers, vec![("authorization-hint".into(), "x".into())]);

        let c = parse_ok("client = \"/etc/certs/client.pem\"", "r.io");
        assert_eq!(
            c.hosts[0].tls.client,
            vec![("/etc/certs/client.pem".into(), None)]
        );
        let c = parse_ok("client = [\"/a.pem\", \"b.pem\"]", "r.io");
        assert_eq!(c.hosts[0].tls.client.len(), 2);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let msg =
            parse_err("server = \"https://x\"\n\n[host.\"http://m\"\ncapabilities = [\"pull\"]\n");
        assert!(
            msg.starts_with(
                "invalid registry host config /etc/keelson/certs.d/x/hosts.toml line 3:"
            ),
            "{msg}"
        );
        let msg = parse_err("[host.\"http://m\"]\n  capabilities = [\"pull\", \"fly\"]\n");
        assert!(msg.contains("line 2") && msg.contains("\"fly\""), "{msg}");
        let msg = parse_err("\n\nca = 5\n");
        assert!(msg.contains("line 3") && msg.contains("ca"), "{msg}");
        let msg = parse_err("client = [[\"only-one\"]]");
        assert!(msg.contains("pair"), "{msg}");
        let msg = parse_err("[host.\"ftp://m\"]");
        assert!(msg.contains("scheme"), "{msg}");
        let msg = parse_err("[host.\"https://user:pw@m\"]");
        assert!(msg.contains("credentials") && !msg.contains("pw"), "{msg}");
        assert!(msg.contains("https://***@m"), "{msg}");
        let msg = parse_err("[header]\n\"bad header\" = \"x\"");
        assert!(
            msg.contains("line 2") && msg.contains("header name"),
            "{msg}"
        );
        let msg = parse_err("dial_timeout = \"soon\"");
        assert!(msg.contains("duration"), "{msg}");
        let msg = parse_err("skip_verify = \"yes\"");
        assert!(msg.contains("true or false"), "{msg}");
        let msg = parse_err("server = 1");
        assert!(msg.contains("server must be a string"), "{msg}");
    }

    #[test]
    fn unknown_keys_are_warnings() {
        let c = parse_ok(
            "capabilites = [\"pull\"]\n[host.\"http://m\"]\n  proxy = \"http://p:8080\"\n",
            "r.io",
        );
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("line 1") && c.warnings[0].contains("capabilites"));
        assert!(c.warnings[1].contains("proxies are not supported"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "1", "s", "1x", "-1s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn folders_are_found_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing there: built-in.
        let c = load(dir.path(), "127.0.0.1:5000").unwrap();
        assert_eq!(c, HostsConfig::builtin("127.0.0.1:5000"));
        // A missing config dir is fine too.
        let c = load(&dir.path().join("absent"), "docker.io").unwrap();
        assert_eq!(c.hosts[0].authority, "registry-1.docker.io");

        // _default applies to any registry; its server defaults to the registry itself.
        std::fs::create_dir(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "[host.\"http://127.0.0.1:9\"]\n",
        )
        .unwrap();
        let c = load(dir.path(), "quay.io").unwrap();
        assert_eq!(c.hosts.len(), 2);
        assert_eq!(c.hosts[1].authority, "quay.io");

        // host:port beats _default; host_port_ beats host:port.
        std::fs::create_dir(dir.path().join("127.0.0.1:5000")).unwrap();
        std::fs::write(
            dir.path().join("127.0.0.1:5000/hosts.toml"),
            "server = \"http://127.0.0.1:5000\"\n",
        )
        .unwrap();
        let c = load(dir.path(), "127.0.0.1:5000").unwrap();
        assert_eq!(c.hosts.len(), 1);
        assert_eq!(c.hosts[0].scheme, HostScheme::Http);
        std::fs::create_dir(dir.path().join("127.0.0.1_5000_")).unwrap();
        std::fs::write(
            dir.path().join("127.0.0.1_5000_/hosts.toml"),
            "server = \"https://127.0.0.1:5000\"\n",
        )
        .unwrap();
        let c = load(dir.path(), "127.0.0.1:5000").unwrap();
        assert_eq!(c.hosts[0].scheme, HostScheme::Https);

        // Edits show on the next load; a broken file breaks only its own registry.
        std::fs::write(
            dir.path().join("127.0.0.1_5000_/hosts.toml"),
            "server = \"https://127.0.0.1:5000\n",
        )
        .unwrap();
        let err = load(dir.path(), "127.0.0.1:5000").unwrap_err().to_string();
        assert!(err.contains("127.0.0.1_5000_/hosts.toml line 1"), "{err}");
        assert!(load(dir.path(), "quay.io").is_ok());

        assert!(load(dir.path(), "../etc").is_err());
        assert!(load(dir.path(), "_default").is_err());
    }

    #[test]
    fn docker_certificate_files() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("reg.example");
        std::fs::create_dir(&folder).unwrap();
        for f in [
            "ca.crt",
            "client.cert",
            "client.key",
            "lonely.cert",
            "notes.txt",
        ] {
            std::fs::write(folder.join(f), b"x").unwrap();
        }
        let c = load(dir.path(), "reg.example").unwrap();
        assert_eq!(c.source, HostsSource::CertDir(folder.clone()));
        assert_eq!(c.hosts.len(), 1);
        assert_eq!(c.hosts[0].tls.ca, vec![folder.join("ca.crt")]);
        assert_eq!(
            c.hosts[0].tls.client,
            vec![(folder.join("client.cert"), Some(folder.join("client.key")))]
        );
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn capabilities_display() {
        assert_eq!(Capabilities::ALL.to_string(), "pull,resolve,push");
        assert_eq!(Capabilities::NONE.to_string(), "none");
    }
}
