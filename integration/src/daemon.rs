//! `keelson-runtime` under test: started in its own directories, reached over its unix socket.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use keelson_cri::{ImageServiceClient, RuntimeServiceClient};
use tonic::transport::{Channel, Endpoint, Uri};

/// The daemon binary's name.
pub const RUNTIME_BIN: &str = "keelson-runtime";

/// Path of the runtime binary under test (see [`crate::bin_dir`]).
pub fn runtime_bin() -> PathBuf {
    crate::bin_dir().join(RUNTIME_BIN)
}

/// Where one daemon instance keeps everything.
#[derive(Clone, Debug)]
pub struct DaemonDirs {
    /// `--socket`.
    pub socket: PathBuf,
    /// `--root`.
    pub root: PathBuf,
    /// `--state`.
    pub state: PathBuf,
    /// stderr/stdout of the daemon (appended to across restarts).
    pub log: PathBuf,
}

impl DaemonDirs {
    /// `base/cri.sock`, `base/root`, `base/state`, `base/runtime.log`.
    pub fn under(base: &Path) -> Self {
        DaemonDirs {
            socket: base.join("cri.sock"),
            root: base.join("root"),
            state: base.join("state"),
            log: base.join("runtime.log"),
        }
    }
}

/// How to start the daemon.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Use these directories instead of a fresh temporary directory.
    pub dirs: Option<DaemonDirs>,
    /// `--insecure-registry` values.
    pub insecure_registries: Vec<String>,
    /// More flags, appended last.
    pub extra_args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// How long to wait for the socket to answer.
    pub ready_timeout: Duration,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            dirs: None,
            insecure_registries: Vec::new(),
            extra_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(10),
        }
    }
}

/// A running `keelson-runtime`. Dropping it kills the process (and prints its log tail when the
/// thread is panicking, i.e. a test failed).
pub struct RuntimeDaemon {
    child: Option<Child>,
    dirs: DaemonDirs,
    opts: DaemonOptions,
    _temp: Option<tempfile::TempDir>,
}

impl RuntimeDaemon {
    /// Starts the daemon and waits (≤ `ready_timeout`) until its socket accepts connections.
    pub async fn start(opts: DaemonOptions) -> Result<Self> {
        let (dirs, temp) = match &opts.dirs {
            Some(d) => (d.clone(), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("keelson-rt-")
                    .tempdir()
                    .context("creating the daemon's temporary directory")?;
                (DaemonDirs::under(temp.path()), Some(temp))
            }
        };
        let mut daemon = RuntimeDaemon {
            child: None,
            dirs,
            opts,
            _temp: temp,
        };
        daemon.spawn().await?;
        Ok(daemon)
    }

    /// Starts the daemon with default options in a fresh temporary directory.
    pub async fn start_default() -> Result<Self> {
        Self::start(DaemonOptions::default()).await
    }

    async fn spawn(&mut self) -> Result<()> {
        let bin = runtime_bin();
        if !bin.exists() {
            bail!(
                "{} not found: run `cargo build --workspace --bins` or set KEELSON_BIN_DIR",
                bin.display()
            );
        }
        if let Some(parent) = self.dirs.socket.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if let Some(parent) = self.dirs.log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.dirs.log)
            .with_context(|| format!("opening {}", self.dirs.log.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--socket")
            .arg(&self.dirs.socket)
            .arg("--root")
            .arg(&self.dirs.root)
            .arg("--state")
            .arg(&self.dirs.state)
            .args(["--log-format", "text"]);
        for r in &self.opts.insecure_registries {
            cmd.arg("--insecure-registry").arg(r);
        }
        cmd.args(&self.opts.extra_args)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child =
            crate::spawn_tied(cmd).with_context(|| format!("spawning {}", bin.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let timeout = self.opts.ready_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().context("daemon not started")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "keelson-runtime exited during start-up ({status}); log tail:\n{}",
                    self.log_tail(40)
                );
            }
            if std::os::unix::net::UnixStream::connect(&self.dirs.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "keelson-runtime socket {} not ready within {timeout:?}; log tail:\n{}",
                    self.dirs.socket.display(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The directories this instance uses.
    pub fn dirs(&self) -> &DaemonDirs {
        &self.dirs
    }

    /// `--socket`.
    pub fn socket(&self) -> &Path {
        &self.dirs.socket
    }

    /// `--root`.
    pub fn root(&self) -> &Path {
        &self.dirs.root
    }

    /// `--state`.
    pub fn state(&self) -> &Path {
        &self.dirs.state
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> &Path {
        &self.dirs.log
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still alive (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// A gRPC channel over the unix socket.
    pub async fn channel(&self) -> Result<Channel> {
        connect_unix(&self.dirs.socket).await
    }

    /// A CRI ImageService client.
    pub async fn image_client(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(self.channel().await?))
    }

    /// A CRI RuntimeService client.
    pub async fn runtime_client(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(self.channel().await?))
    }

    /// SIGKILL and reap.
    pub fn kill_9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().context("waiting for keelson-runtime")?;
        }
        Ok(())
    }

    /// SIGTERM, then wait (≤ 10 s) for the exit. Returns the exit status; on timeout it kills
    /// the process and fails.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .context("keelson-runtime is not running")?;
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child, not yet
        // reaped, so the id cannot have been reused by another process.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            let err = std::io::Error::last_os_error();
            child.kill().ok();
            child.wait().ok();
            bail!("sending SIGTERM to keelson-runtime: {err}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                child.kill().ok();
                child.wait().ok();
                bail!(
                    "keelson-runtime did not exit within 10 s of SIGTERM; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the daemon again on the same directories (terminating it first if it runs).
    pub async fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.terminate().await?;
        }
        self.spawn().await
    }

    /// Runs `keelson-runtime images import FILE --socket S --root R` for this instance (works
    /// whether the daemon runs or not).
    pub fn import(&self, file: &Path) -> Result<Output> {
        import_image(file, &self.dirs.socket, &self.dirs.root)
    }

    /// Resident set size of the daemon in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.pid().context("keelson-runtime is not running")?;
        rss_kib(pid)
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.dirs.log, lines)
    }
}

impl Drop for RuntimeDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- keelson-runtime log ({}), last lines ----\n{}\n----",
                self.dirs.log.display(),
                self.log_tail(60)
            );
        }
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// A tonic channel over a unix socket (the URI is a placeholder; the connector ignores it).
pub async fn connect_unix(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    Ok(channel)
}

/// Runs `keelson-runtime images import FILE --socket SOCKET --root ROOT` and returns its output.
pub fn import_image(file: &Path, socket: &Path, root: &Path) -> Result<Output> {
    Command::new(runtime_bin())
        .args(["images", "import"])
        .arg(file)
        .arg("--socket")
        .arg(socket)
        .arg("--root")
        .arg(root)
        .stdin(Stdio::null())
        .output()
        .context("running keelson-runtime images import")
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The last `lines` lines of a (possibly large) log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
