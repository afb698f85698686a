//! Registry credentials from a docker-style `config.json` (`auths`), the format of kubelet's
//! credential files and of `docker login`: used for a host when a pull's CRI `AuthConfig` gives none.
//!
//! Keys may be `host`, `host:port`, `https://host/v1/`, `host/path/prefix` or `*.example.com`; the
//! most specific key matching the host and repository wins. Docker Hub's names (`docker.io`,
//! `index.docker.io`, `registry-1.docker.io`) are one host. Nothing read here is ever logged or
//! put in an error message, apart from the file name and the entry's key.

use crate::image::reference::{DOCKER_HUB, DOCKER_HUB_API_HOST};
use crate::image::registry::Credentials;
use base64::Engine as _;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Largest credentials file read.
const CREDENTIALS_FILE_MAX_BYTES: u64 = 4 << 20;

/// Why a credentials file could not be used. Never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read registry credentials file {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid registry credentials file {}: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("invalid registry credentials file {}: entry {key:?}: {reason}", .path.display())]
    Entry {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// One `auths` entry.
#[derive(Clone)]
struct Entry {
    key: String,
    /// Lowercased host, possibly with `*` globs per label; Docker Hub's aliases folded to `docker.io`.
    host: String,
    port: Option<String>,
    /// Repository prefix (no leading or trailing `/`), empty for the whole host.
    path: String,
    credentials: Credentials,
}

/// The parsed file: entries with their match keys.
#[derive(Clone)]
pub struct DockerConfig {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .field(
                "keys",
                &self.entries.iter().map(|e| &e.key).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Credentials found for a host, and the key of the entry that gave them.
#[derive(Clone, Debug)]
pub struct Found {
    pub key: String,
    pub credentials: Credentials,
}

impl DockerConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let read_err = |source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::open(path).map_err(read_err)?;
        let mut data = Vec::new();
        f.take(CREDENTIALS_FILE_MAX_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(read_err)?;
        if data.len() as u64 > CREDENTIALS_FILE_MAX_BYTES {
            return Err(CredentialsError::Invalid {
                path: path.to_path_buf(),
                reason: format!("larger than {CREDENTIALS_FILE_MAX_BYTES} bytes"),
            });
        }
        Self::parse(&data, path)
    }

    /// Parses `config.json` (`{"auths": {...}}`) or the older `.dockercfg` (the map alone).
    pub fn parse(data: &[u8], path: &Path) -> Result<Self, CredentialsError> {
        let invalid = |reason: String| CredentialsError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        // Only syntax errors are reported from serde_json: they carry a position, never content.
        let doc: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| invalid(format!("not json: {e}")))?;
        let serde_json::Value::Object(top) = doc else {
            return Err(invalid("the top level must be a json object".into()));
        };
        let auths = match top.get("auths") {
            Some(serde_json::Value::Object(a)) => a.clone(),
            Some(serde_json::Value::Null) => serde_json::Map::new(),
            Some(_) => return Err(invalid("\"auths\" must be an object".into())),
            // `.dockercfg`: keys are registries; anything else (credsStore, ...) is not an entry.
            None => top.into_iter().filter(|(_, v)| v.is_object()).collect(),
        };
        let mut entries = Vec::new();
        for (key, value) in auths {
            let entry_err = |reason: &str| CredentialsError::Entry {
                path: path.to_path_buf(),
                key: key.clone(),
                reason: reason.to_string(),
            };
            let serde_json::Value::Object(fields) = value else {
                return Err(entry_err("must be an object"));
            };
            let text = |name: &str| -> Result<Option<String>, CredentialsError> {
                match fields.get(name) {
                    None | Some(serde_json::Value::Null) => Ok(None),
                    Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(entry_err(&format!("\"{name}\" must be a string"))),
                }
            };
            let mut credentials = Credentials {
                username: text("username")?,
                password: text("password")?,
                identity_token: text("identitytoken")?,
                registry_token: text("registrytoken")?,
            };
            if let Some(auth) = text("auth")? {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| entry_err("\"auth\" is not base64 of user:password"))?;
                let (user, pass) = decoded
                    .split_once(':')
                    .ok_or_else(|| entry_err("\"auth\" is not base64 of user:password"))?;
                credentials.username = (!user.is_empty()).then(|| user.to_string());
                credentials.password = Some(pass.to_string());
            }
            if credentials.is_empty() {
                continue;
            }
            let Some((host, port, path)) = split_key(&key) else {
                return Err(entry_err("not a registry host"));
            };
            entries.push(Entry {
                key,
                host,
                port,
                path,
                credentials,
            });
        }
        Ok(DockerConfig {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The file this came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Credentials for `authority` (`host[:port]`) and a repository on it: the entry with the
    /// longest matching path prefix, a literal host before a glob, the longer key before the shorter.
    pub fn lookup(&self, authority: &str, repository: &str) -> Option<Found> {
        let (host, port) = split_authority(authority);
        let host = fold_hub(&host.to_ascii_lowercase());
        self.entries
            .iter()
            .filter(|e| e.port == port && host_matches(&e.host, &host))
            .filter(|e| {
                e.path.is_empty()
                    || repository == e.path
                    || repository
                        .strip_prefix(e.path.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
            .max_by(|a, b| {
                (a.path.len(), !a.host.contains('*'), a.key.len())
                    .cmp(&(b.path.len(), !b.host.contains('*'), b.key.len()))
                    .then_with(|| b.key.cmp(&a.key))
            })
            .map(|e| Found {
                key: e.key.clone(),
                credentials: e.credentials.clone(),
            })
    }
}

fn fold_hub(host: &str) -> String {
    if host == "index.docker.io" || host == DOCKER_HUB_API_HOST {
        DOCKER_HUB.to_string()
    } else {
        host.to_string()
    }
}

/// `host:port` -> (`host`, `port`); `[v6]:port` keeps its brackets.
fn split_authority(a: &str) -> (&str, Option<String>) {
    if a.starts_with('[') {
        return match a.find("]:") {
            Some(end) => (&a[..=end], Some(a[end + 2..].to_string())),
            None => (a, None),
        };
    }
    match a.rsplit_once(':') {
        Some((h, p))
            if !h.contains(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (h, Some(p.to_string()))
        }
        _ => (a, None),
    }
}

/// A key to (host, port, path): scheme dropped, `/v1` and `/v2` API suffixes dropped.
fn split_key(key: &str) -> Option<(String, Option<String>, String)> {
    let k = key.trim();
    let lower = k.to_ascii_lowercase();
    let k = if lower.starts_with("https://") {
        &k[8..]
    } else if lower.starts_with("http://") {
        &k[7..]
    } else {
        k
    };
    let (authority, path) = match k.split_once('/') {
        Some((a, p)) => (a, p.trim_matches('/')),
        None => (k, ""),
    };
    if authority.is_empty() {
        return None;
    }
    let path = match path {
        "v1" | "v2" => "",
        p => p,
    };
    let (host, port) = split_authority(authority);
    Some((fold_hub(&host.to_ascii_lowercase()), port, path.to_string()))
}

/// Label-wise glob match (`*` within one label), same number of labels.
fn host_matches(pattern: &str, host: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == host;
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let h: Vec<&str> = host.split('.').collect();
    p.len() == h.len()
        && p.iter()
            .zip(&h)
            .all(|(p, h)| glob(p.as_bytes(), h.as_bytes()))
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn config(json: &str) -> DockerConfig {
        DockerConfig::parse(json.as_bytes(), Path::new("/etc/keelson/config.json")).unwrap()
    }

    fn user(c: &DockerConfig, authority: &str, repo: &str) -> Option<String> {
        c.lookup(authority, repo)
            .map(|f| f.credentials.username.unwrap_or_default())
    }

    #[test]
    fn auths_forms_and_matching() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "127.0.0.1:5000": {{"username": "plain", "password": "pw"}},
                "http://127.0.0.1:5001/v2/": {{"auth": "{}"}},
                "quay.io": {{"auth": "{}"}},
                "quay.io/team": {{"auth": "{}"}},
                "*.corp.example": {{"auth": "{}"}},
                "registry.corp.example": {{"identitytoken": "refresh"}},
                "empty.example": {{}}
            }}, "credsStore": "desktop"}}"#,
            b64("hub:hubpw"),
            b64("m:mpw"),
            b64("quay:q1"),
            b64("team:q2"),
            b64("glob:g"),
        );
        let c = config(&json);
        assert_eq!(
            user(&c, "registry-1.docker.io", "library/busybox").as_deref(),
            Some("hub")
        );
        assert_eq!(
            user(&c, "docker.io", "library/busybox").as_deref(),
            Some("hub")
        );
        assert_eq!(user(&c, "127.0.0.1:5000", "x").as_deref(), Some("plain"));
        assert_eq!(user(&c, "127.0.0.1:5001", "x").as_deref(), Some("m"));
        assert_eq!(user(&c, "127.0.0.1", "x"), None, "the port must match");
        assert_eq!(user(&c, "quay.io", "other/app").as_deref(), Some("quay"));
        assert_eq!(user(&c, "quay.io", "team/app").as_deref(), Some("team"));
        assert_eq!(user(&c, "quay.io", "teamx/app").as_deref(), Some("quay"));
        assert_eq!(user(&c, "a.corp.example", "x").as_deref(), Some("glob"));
        assert_eq!(user(&c, "a.b.corp.example", "x"), None);
        let exact = c.lookup("registry.corp.example", "x").unwrap();
        assert_eq!(exact.key, "registry.corp.example");
        assert_eq!(exact.credentials.identity_token.as_deref(), Some("refresh"));
        assert_eq!(user(&c, "empty.example", "x"), None);
        let found = c.lookup("127.0.0.1:5001", "x").unwrap();
        assert_eq!(found.credentials.password.as_deref(), Some("mpw"));
    }

    #[test]
    fn legacy_dockercfg() {
        let c = config(&format!(
            r#"{{"reg.example": {{"auth": "{}"}}}}"#,
            b64("old:pw")
        ));
        assert_eq!(user(&c, "reg.example", "x").as_deref(), Some("old"));
    }

    #[test]
    fn errors_never_show_secrets() {
        let path = Path::new("/etc/keelson/config.json");
        let cases = [
            r#"{"auths": {"r.io": {"auth": "c2VjcmV0LXdpdGhvdXQtY29sb24="}}}"#.to_string(),
            r#"{"auths": {"r.io": {"password": 12345}}}"#.to_string(),
            r#"{"auths": {"r.io": {"auth": "hunter2%%"}}"#.to_string(),
            r#"{"auths": ["hunter2"]}"#.to_string(),
        ];
        for json in cases {
            let err = DockerConfig::parse(json.as_bytes(), path)
                .unwrap_err()
                .to_string();
            assert!(err.contains("/etc/keelson/config.json"), "{err}");
            for secret in ["hunter2", "secret", "12345", "c2VjcmV0"] {
                assert!(!err.contains(secret), "{err}");
            }
        }
        let c = config(&format!(
            r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#,
            b64("u:hunter2")
        ));
        let shown = format!("{c:?} {:?}", c.lookup("r.io", "x").unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn load_reads_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        assert!(matches!(
            DockerConfig::load(&p),
            Err(CredentialsError::Read { .. })
        ));
        std::fs::write(
            &p,
            format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("a:b")),
        )
        .unwrap();
        let c = DockerConfig::load(&p).unwrap();
        assert_eq!(c.path(), p);
        assert_eq!(user(&c, "r.io", "x").as_deref(), Some("a"));
    }

    #[test]
    fn globs() {
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"reg*", b"registry"));
        assert!(!glob(b"reg*x", b"registry"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
    }
}
