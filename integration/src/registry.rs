//! A private Debian `docker-registry` (distribution 2.8) on an ephemeral 127.0.0.1 port, one per test.
//!
//! It is a plain child process (no tokio), so it can be shared between tokio runtimes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Path of Debian's registry binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Basic-auth credentials of an htpasswd registry.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// A running registry; dropping it kills the process and deletes its storage.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    credentials: Option<Credentials>,
}

impl Registry {
    /// Starts a registry without authentication.
    pub fn start() -> Result<Self> {
        Self::start_inner(None)
    }

    /// Starts a registry that requires HTTP basic auth (htpasswd, bcrypt) for everything.
    pub fn start_with_auth(username: &str, password: &str) -> Result<Self> {
        Self::start_inner(Some(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        }))
    }

    fn start_inner(credentials: Option<Credentials>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("keelson-registry-")
            .tempdir()
            .context("creating the registry's temporary directory")?;
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage)?;
        let auth_yaml = match &credentials {
            Some(c) => {
                let htpasswd = dir.path().join("htpasswd");
                write_htpasswd(&htpasswd, c)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: keelson-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let auth = credentials.is_some();
        let (child, addr) = spawn_on_free_port(
            dir.path(),
            |addr| {
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {addr}\n  secret: keelson-test-secret\n{auth_yaml}",
                    storage.display()
                )
            },
            |child, addr| wait_ready(child, addr, auth, Duration::from_secs(10)),
        )?;
        Ok(Registry {
            child,
            addr,
            dir,
            credentials,
        })
    }

    /// The listening address (127.0.0.1:PORT).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Full reference `127.0.0.1:PORT/<repo>:<tag>`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// Full reference by digest `127.0.0.1:PORT/<repo>@<digest>`.
    pub fn digest_reference(&self, repo: &str, digest: &str) -> String {
        format!("{}/{repo}@{digest}", self.host())
    }

    /// Root of the filesystem storage driver.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the bytes of blob `sha256:<hex>`.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log file (warnings, access log).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The credentials this registry requires, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// A push client for this registry, with its credentials if it has any.
    pub fn push_client(&self) -> Result<crate::oci::PushClient> {
        let client = crate::oci::PushClient::new(&self.host())?;
        Ok(match &self.credentials {
            Some(c) => client.with_basic_auth(&c.username, &c.password),
            None => client,
        })
    }

    /// Process id of the registry.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a bcrypt htpasswd file with `htpasswd -Bbn` (apache2-utils).
fn write_htpasswd(path: &Path, c: &Credentials) -> Result<()> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", &c.username, &c.password])
        .stdin(Stdio::null())
        .output()
        .context("running htpasswd (apt-get install apache2-utils)")?;
    if !out.status.success() {
        bail!(
            "htpasswd failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::write(path, &out.stdout)?;
    Ok(())
}

/// Polls `GET /v2/` until it answers 200 (or 401 when auth is on), or the child exits.
/// Starts Debian's `docker-registry` with the config `config` makes for a free loopback port,
/// choosing another port when one was taken between picking and binding (up to 8 tries).
/// `ready` waits until it serves; its log is in `dir/registry.log`.
pub(crate) fn spawn_on_free_port(
    dir: &Path,
    config: impl Fn(SocketAddr) -> String,
    ready: impl Fn(&mut Child, SocketAddr) -> Result<()>,
) -> Result<(Child, SocketAddr)> {
    let mut last_error = None;
    for _attempt in 0..8 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config(addr))?;
        let log_path = dir.join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = crate::spawn_tied(cmd).with_context(|| {
            format!("spawning {REGISTRY_BIN} (apt-get install docker-registry)")
        })?;
        match ready(&mut child, addr) {
            Ok(()) => return Ok((child, addr)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let in_use = log.contains("address already in use");
                last_error = Some(e.context(format!("registry log:\n{log}")));
                if !in_use {
                    break;
                }
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
}

fn wait_ready(child: &mut Child, addr: SocketAddr, auth: bool, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("registry exited early: {status}");
        }
        if let Ok(code) = http_status(addr, "/v2/")
            && (code == 200 || (code == 401 && auth))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("registry on {addr} did not answer GET /v2/ within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Status code of a plain `GET path` (blocking, std only, so it works outside tokio).
pub fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad HTTP status line {line:?}"))?;
    Ok(code)
}
