//! Support for the registry-mirror tests: a `certs.d` folder for the daemon, a TLS
//! `docker-registry` serving another registry's storage, and `keelson-runtime registries resolve`.
//!
//! The TLS registry shares the storage of a plain [`crate::registry::Registry`], so images are
//! pushed over plain HTTP (with the usual push client) and pulled over TLS.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::daemon::{DaemonOptions, runtime_bin};
use crate::registry::spawn_on_free_port;

/// A temporary `certs.d`: one folder per registry (`host:port`), each with a `hosts.toml`.
pub struct CertsDir {
    dir: tempfile::TempDir,
}

impl CertsDir {
    /// An empty folder.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("keelson-certs.d-")
            .tempdir()
            .context("creating a certs.d folder")?;
        Ok(CertsDir { dir })
    }

    /// The folder (`--registry-config-dir`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `<registry>/hosts.toml`; returns its path.
    pub fn write_hosts(&self, registry: &str, text: &str) -> Result<PathBuf> {
        self.write_file(registry, "hosts.toml", text.as_bytes())
    }

    /// Writes `<registry>/<name>` (a CA file, a client certificate); returns its path.
    pub fn write_file(&self, registry: &str, name: &str, data: &[u8]) -> Result<PathBuf> {
        let folder = self.dir.path().join(registry);
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        let path = folder.join(name);
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// A `[host."URL"]` section of a hosts.toml with the given capabilities.
pub fn host_section(url: &str, capabilities: &[&str]) -> String {
    let caps: Vec<String> = capabilities.iter().map(|c| format!("{c:?}")).collect();
    format!("[host.{url:?}]\n  capabilities = [{}]\n", caps.join(", "))
}

/// Daemon options with `--registry-config-dir` (and `--registry-credentials` when given).
pub fn daemon_options(certs: &Path, credentials: Option<&Path>) -> DaemonOptions {
    let mut extra_args = vec![
        "--registry-config-dir".to_string(),
        certs.display().to_string(),
    ];
    if let Some(c) = credentials {
        extra_args.push("--registry-credentials".into());
        extra_args.push(c.display().to_string());
    }
    DaemonOptions {
        extra_args,
        ..Default::default()
    }
}

/// Runs `keelson-runtime registries resolve IMAGE` against a certs.d folder.
pub fn registries_resolve(certs: &Path, credentials: Option<&Path>, image: &str) -> Result<Output> {
    // An empty config file, so that only the flags count.
    let empty = tempfile::NamedTempFile::new().context("creating an empty config file")?;
    let mut cmd = Command::new(runtime_bin());
    cmd.args(["registries", "resolve", image])
        .arg("--registry-config-dir")
        .arg(certs)
        .arg("--config")
        .arg(empty.path());
    if let Some(c) = credentials {
        cmd.arg("--registry-credentials").arg(c);
    }
    cmd.stdin(Stdio::null())
        .output()
        .context("running keelson-runtime registries resolve")
}

/// A `docker-registry` serving TLS on 127.0.0.1 from an existing registry's storage.
pub struct TlsRegistry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl TlsRegistry {
    /// Starts it with the PEM certificate and key at `cert` and `key`, serving `storage`.
    pub fn start(storage: &Path, cert: &Path, key: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("keelson-tls-registry-")
            .tempdir()
            .context("creating the TLS registry's directory")?;
        let (child, addr) = spawn_on_free_port(
            dir.path(),
            |addr| {
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {addr}\n  secret: keelson-test-secret\n  tls:\n    certificate: {}\n    key: {}\n",
                    storage.display(),
                    cert.display(),
                    key.display()
                )
            },
            |child, addr| wait_listening(child, addr, Duration::from_secs(10)),
        )?;
        Ok(TlsRegistry { child, addr, dir })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `127.0.0.1:PORT/<repo>:<tag>`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// The registry's log (access log included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `addr` accepts TCP connections, or the child exits.
fn wait_listening(child: &mut Child, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("registry exited early: {status}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("registry on {addr} did not listen within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A registry's log file as text (docker-registry writes its access log there).
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
