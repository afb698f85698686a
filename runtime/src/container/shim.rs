//! Launching and talking to `keelson-shim`, behind a trait so container logic is testable without root.

use keelson_shim::protocol::{self, ExecResult, ProtocolError, Request, Response, ShimClient};
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// What went wrong with a shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("cannot start keelson-shim for container {id}: {message}")]
    Launch { id: String, message: String },
    #[error("container {id}: {message}")]
    Create { id: String, message: String },
    #[error("shim of container {id}: {source}")]
    Protocol { id: String, source: ProtocolError },
    #[error("exec in container {id}: {message}")]
    Exec { id: String, message: String },
}

/// Everything the shim needs to create one container.
#[derive(Debug, Clone)]
pub struct ShimLaunch {
    pub id: String,
    pub bundle: PathBuf,
    pub state_dir: PathBuf,
    pub log_path: PathBuf,
    pub libcontainer_root: PathBuf,
    /// Keep the container's stdin open for attachers (CRI `stdin`), closed after the first
    /// attach session when `stdin_once`.
    pub stdin: bool,
    pub stdin_once: bool,
    /// Give the container a terminal (CRI `tty`).
    pub tty: bool,
    /// The runtime's cgroup driver is systemd: the shim has libcontainer ask systemd for the
    /// container's scope (`--systemd-cgroup`; the spec's cgroupsPath is `slice:keelson:id`).
    pub systemd_cgroup: bool,
}

/// The shim side effects container logic needs.
pub trait ShimOps: Send + Sync {
    /// Starts a shim and returns once it has created the container (or failed to).
    fn launch(&self, l: &ShimLaunch) -> Result<(), ShimError>;
    /// One request to the shim serving `state_dir`.
    fn call(
        &self,
        id: &str,
        state_dir: &Path,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, ShimError>;
    /// Runs `cmd` in the container, killed at `timeout`.
    fn exec(
        &self,
        id: &str,
        libcontainer_root: &Path,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecResult, ShimError>;
    /// The command that runs `cmd` in the container with the helper's own stdio as the
    /// process's, reporting a `StreamExecResult` on fd `result_fd`; with `console_socket_fd`
    /// (a terminal exec) the process gets a pty allocated in the container instead, whose
    /// master the helper sends over that unix socket. Both descriptors are inherited by the
    /// helper. Not spawned: the streaming server wires its stdio.
    fn exec_stream_command(
        &self,
        id: &str,
        libcontainer_root: &Path,
        cmd: &[String],
        console_socket_fd: Option<i32>,
        result_fd: i32,
    ) -> Command;
}

/// Lets the child of `cmd` inherit `fds` (made close-on-exec, as every descriptor here is):
/// their numbers are passed to it in its arguments.
pub fn inherit_fds(cmd: &mut Command, fds: Vec<i32>) {
    // SAFETY: between fork and exec the closure only calls fcntl(2) on descriptor numbers the
    // caller owns, which is async-signal-safe; it allocates nothing (`fds` was allocated
    // before the fork) and touches no shared state.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Runs the real `keelson-shim` binary.
pub struct ProcessShim {
    pub binary: PathBuf,
}

impl ProcessShim {
    /// `keelson-shim exec` for container `id`, before its mode flags and command.
    fn exec_command(&self, id: &str, libcontainer_root: &Path) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("exec")
            .arg("--id")
            .arg(id)
            .arg("--libcontainer-root")
            .arg(libcontainer_root);
        c
    }

    /// `keelson-shim` next to the running executable, else the first on PATH.
    pub fn locate() -> Option<PathBuf> {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("keelson-shim")));
        let on_path = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("keelson-shim"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        beside.into_iter().chain(on_path).find(|p| p.is_file())
    }
}

impl ShimOps for ProcessShim {
    fn launch(&self, l: &ShimLaunch) -> Result<(), ShimError> {
        let launch_err = |message: String| ShimError::Launch {
            id: l.id.clone(),
            message,
        };
        std::fs::create_dir_all(&l.state_dir)
            .map_err(|e| launch_err(format!("creating {}: {e}", l.state_dir.display())))?;
        let (read_end, write_end): (OwnedFd, OwnedFd) =
            nix::unistd::pipe().map_err(|e| launch_err(format!("creating the ready pipe: {e}")))?;
        let stderr = std::fs::File::create(l.state_dir.join("shim.log"))
            .map_err(|e| launch_err(format!("creating shim.log: {e}")))?;
        let fd = write_end.as_raw_fd();
        let mut cmd = Command::new(&self.binary);
        cmd.arg("run")
            .arg("--id")
            .arg(&l.id)
            .arg("--bundle")
            .arg(&l.bundle)
            .arg("--state-dir")
            .arg(&l.state_dir)
            .arg("--log-path")
            .arg(&l.log_path)
            .arg("--libcontainer-root")
            .arg(&l.libcontainer_root)
            .arg("--ready-fd")
            .arg(fd.to_string())
            .args(l.stdin.then_some("--stdin"))
            .args((l.stdin && l.stdin_once).then_some("--stdin-once"))
            .args(l.tty.then_some("--tty"))
            .args(l.systemd_cgroup.then_some("--systemd-cgroup"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        inherit_fds(&mut cmd, vec![fd]);
        let mut child = cmd
            .spawn()
            .map_err(|e| launch_err(format!("{}: {e}", self.binary.display())))?;
        drop(write_end);
        let mut line = String::new();
        let read = BufReader::new(std::fs::File::from(read_end)).read_line(&mut line);
        // The shim double-forks: this child exits at once, the monitor lives on.
        let _ = child.wait();
        match read {
            Ok(0) => {
                let log = std::fs::read_to_string(l.state_dir.join("shim.log")).unwrap_or_default();
                Err(launch_err(format!(
                    "the shim exited before the container was created: {}",
                    log.trim()
                )))
            }
            Ok(_) => {
                protocol::parse_ready_line(line.trim_end()).map_err(|message| ShimError::Create {
                    id: l.id.clone(),
                    message,
                })
            }
            Err(e) => Err(launch_err(format!("reading the ready pipe: {e}"))),
        }
    }

    fn call(
        &self,
        id: &str,
        state_dir: &Path,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, ShimError> {
        let proto = |source| ShimError::Protocol {
            id: id.into(),
            source,
        };
        let mut client = ShimClient::connect_with_timeout(
            protocol::state_file(state_dir, protocol::SOCKET_FILE),
            Some(timeout),
        )
        .map_err(proto)?;
        client.call(req).map_err(proto)
    }

    fn exec(
        &self,
        id: &str,
        libcontainer_root: &Path,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecResult, ShimError> {
        let exec_err = |message: String| ShimError::Exec {
            id: id.into(),
            message,
        };
        let mut c = self.exec_command(id, libcontainer_root);
        if let Some(t) = timeout {
            c.arg("--timeout-secs").arg(t.as_secs().max(1).to_string());
        }
        let out = c
            .arg("--")
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| exec_err(format!("{}: {e}", self.binary.display())))?;
        if !out.status.success() {
            return Err(exec_err(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| exec_err(format!("unreadable exec result: {e}")))
    }

    fn exec_stream_command(
        &self,
        id: &str,
        libcontainer_root: &Path,
        cmd: &[String],
        console_socket_fd: Option<i32>,
        result_fd: i32,
    ) -> Command {
        let mut c = self.exec_command(id, libcontainer_root);
        c.arg("--stream")
            .arg("--result-fd")
            .arg(result_fd.to_string());
        if let Some(fd) = console_socket_fd {
            // As containerd does for a terminal exec: programs need to know what they talk to.
            c.arg("--tty")
                .arg("--console-socket-fd")
                .arg(fd.to_string())
                .arg("--env")
                .arg("TERM=xterm");
        }
        c.arg("--").args(cmd);
        inherit_fds(
            &mut c,
            std::iter::once(result_fd)
                .chain(console_socket_fd)
                .collect(),
        );
        c
    }
}
