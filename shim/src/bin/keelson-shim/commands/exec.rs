//! `keelson-shim exec`: run one command in a running container (joined to its init with the
//! container's process settings, seccomp included: see `tenant`), capture its output with a cap,
//! kill it at the deadline, print the result as JSON.
//!
//! `exec --stream` (interactive exec, CRI Exec): the command gets this helper's own fds 0/1/2
//! (pipes from the runtime, or with `--tty` a pty slave the runtime allocated, which becomes
//! the command's controlling terminal; with `--console-socket-fd N` the terminal is allocated
//! inside the container instead and its master sent over the unix socket N, the runtime's end,
//! see `tenant`). Once it is started the helper points its own 0/1/2 at
//! `/dev/null`, so the runtime sees end of file when the command (and whatever inherited them)
//! closes them, waits for it (SIGKILL at the deadline, or when the helper gets SIGTERM, SIGINT
//! or SIGHUP) and writes one [`StreamExecResult`] JSON line to `--result-fd`. It exits 1 only
//! when that descriptor is unusable.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use keelson_shim::protocol::{ExecResult, StreamExecResult};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};
use tracing::{info, warn};

use crate::cli::ExecArgs;
use crate::monitor::poll_timeout;
use crate::{signals, tenant};

/// Most output kept per stream; the rest is read and discarded.
pub const OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// After the process exited, how long its output pipes may stay open (background children).
const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// Make sure an error names the container.
fn name_container(e: anyhow::Error, id: &str) -> anyhow::Error {
    if format!("{e:#}").contains(id) {
        e
    } else {
        e.context(format!("failed to exec in container {id}"))
    }
}

pub fn exec(args: ExecArgs) -> Result<()> {
    if args.stream {
        return exec_stream(&args);
    }
    let result = run_exec(&args).map_err(|e| name_container(e, &args.id))?;
    let mut json = serde_json::to_vec(&result).context("failed to encode the exec result")?;
    json.push(b'\n');
    io::stdout()
        .lock()
        .write_all(&json)
        .context("failed to write the exec result")?;
    Ok(())
}

/// Output of one stream, capped.
struct Capture {
    pipe: Option<File>,
    data: Vec<u8>,
    truncated: bool,
}

impl Capture {
    fn new(fd: OwnedFd) -> Self {
        Capture {
            pipe: Some(File::from(fd)),
            data: Vec::new(),
            truncated: false,
        }
    }

    fn read(&mut self, buf: &mut [u8]) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        match pipe.read(buf) {
            Ok(0) => self.pipe = None,
            Ok(n) => {
                let room = OUTPUT_CAP - self.data.len();
                if n > room {
                    self.truncated = true;
                }
                self.data.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                warn!(error = %e, "reading exec output failed");
                self.pipe = None;
            }
        }
    }
}

/// The helper's own signals, read from a signalfd from before the command is forked on.
fn block_signals() -> Result<nix::sys::signalfd::SignalFd> {
    Ok(signals::block_into_signalfd(&[
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ])?)
}

/// `--libcontainer-root` made absolute, as libcontainer's state paths need.
fn libcontainer_root(args: &ExecArgs) -> Result<std::path::PathBuf> {
    std::path::absolute(&args.libcontainer_root).with_context(|| {
        format!(
            "invalid libcontainer root {}",
            args.libcontainer_root.display()
        )
    })
}

fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

/// Reap the exec'd process if it exited; start the drain grace period then.
fn check_child(pid: Pid, status: &mut Option<i32>, drain_until: &mut Option<Instant>) {
    if status.is_some() {
        return;
    }
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(s) => {
            if let Some(code) = exit_code(s) {
                *status = Some(code);
                *drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
        }
        Err(Errno::ECHILD) => {
            warn!(
                pid = pid.as_raw(),
                "exec process is not a child of the shim"
            );
            *status = Some(255);
            *drain_until = Some(Instant::now());
        }
        Err(_) => {}
    }
}

fn run_exec(args: &ExecArgs) -> Result<ExecResult> {
    if args.tty {
        bail!("--tty needs --stream");
    }
    let root = libcontainer_root(args)?;
    let prepared = tenant::prepare(args, &root)?;

    // Blocked (into a signalfd) before anything is forked, so a cancel arriving while the
    // command starts is kept for the loop below; the command gets the defaults back just
    // before it execs (tenant).
    let signal_fd = block_signals()?;
    let (stdout_r, stdout_w) = pipe2(OFlag::O_CLOEXEC).context("failed to create stdout pipe")?;
    let (stderr_r, stderr_w) = pipe2(OFlag::O_CLOEXEC).context("failed to create stderr pipe")?;
    for fd in [&stdout_r, &stderr_r] {
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .context("failed to make a pipe non-blocking")?;
    }
    let stdin = File::open("/dev/null").context("failed to open /dev/null")?;
    let stdio = tenant::Stdio {
        stdin: stdin.into(),
        stdout: stdout_w,
        stderr: stderr_w,
    };
    let pid = tenant::spawn(prepared, tenant::ExecIo::Stdio(stdio))?;
    info!(id = %args.id, pid = pid.as_raw(), "exec started");
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let mut outputs = [Capture::new(stdout_r), Capture::new(stderr_r)];
    let mut buf = vec![0u8; 64 * 1024];
    let mut status: Option<i32> = None;
    let mut timed_out = false;
    let mut killed = false;
    let mut drain_until: Option<Instant> = None;
    // SIGCHLD may have been discarded before it was blocked.
    check_child(pid, &mut status, &mut drain_until);

    loop {
        let now = Instant::now();
        let open = outputs.iter().any(|o| o.pipe.is_some());
        if status.is_some() && (!open || drain_until.is_some_and(|d| now >= d)) {
            break;
        }
        if status.is_none() && !killed && deadline.is_some_and(|d| now >= d) {
            info!(id = %args.id, pid = pid.as_raw(), "exec deadline passed; killing the process");
            let _ = kill(pid, Signal::SIGKILL);
            timed_out = true;
            killed = true;
        }
        let wake = match status {
            Some(_) => drain_until,
            None if killed => None,
            None => deadline,
        };
        let timeout = poll_timeout(wake);
        let revents: Vec<bool> = {
            let mut fds = vec![PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
            for o in &outputs {
                if let Some(p) = &o.pipe {
                    fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                }
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(anyhow!("poll failed: {e}")),
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let mut next = revents.into_iter();
        if next.next().unwrap_or(false) {
            for signal in signals::drain(&signal_fd) {
                if signal == Signal::SIGCHLD {
                    check_child(pid, &mut status, &mut drain_until);
                } else if status.is_none() && !killed {
                    info!(id = %args.id, %signal, "exec cancelled; killing the process");
                    let _ = kill(pid, Signal::SIGKILL);
                    killed = true;
                }
            }
        }
        for o in &mut outputs {
            if o.pipe.is_some() && next.next().unwrap_or(false) {
                o.read(&mut buf);
            }
        }
    }
    let [out, err] = outputs;
    Ok(ExecResult::from_output(
        status.unwrap_or(255),
        &out.data,
        &err.data,
        timed_out,
        out.truncated,
        err.truncated,
    ))
}

/// `exec --stream`: run the command on this process's stdio, report on `--result-fd`.
fn exec_stream(args: &ExecArgs) -> Result<()> {
    let fd = args
        .result_fd
        .ok_or_else(|| anyhow!("--stream needs --result-fd"))?;
    let mut result_file = adopt_result_fd(fd)?;
    let result = match run_stream(args) {
        Ok(code) => StreamExecResult::exited(code),
        Err(e) => {
            let e = name_container(e, &args.id);
            StreamExecResult::failed(format!("{e:#}").replace('\n', " "))
        }
    };
    let mut line = serde_json::to_vec(&result).context("failed to encode the exec result")?;
    line.push(b'\n');
    result_file
        .write_all(&line)
        .with_context(|| format!("failed to write the exec result to --result-fd {fd}"))
}

/// Take the inherited result descriptor, close-on-exec from now on (the command must not
/// inherit it).
fn adopt_result_fd(fd: i32) -> Result<File> {
    adopt_fd("--result-fd", fd).map(File::from)
}

/// Take an inherited descriptor passed as `flag`, close-on-exec from now on.
fn adopt_fd(flag: &str, fd: i32) -> Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the descriptor table; any integer is harmless.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!(
            "{flag} {fd} is not an open file descriptor: {}",
            Errno::last()
        );
    }
    // SAFETY: `fd` is open (checked above), was handed to this process for `flag` only (the
    // parser refuses one number for two flags) and is kept open by `close_inherited_fds`;
    // nothing else in the process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .with_context(|| format!("failed to make {flag} {fd} close-on-exec"))?;
    Ok(owned)
}

/// A close-on-exec duplicate of one of this process's standard descriptors.
fn dup_std(fd: i32, name: &str) -> Result<OwnedFd> {
    // SAFETY: fds 0-2 stay open for the whole process (they are only ever replaced with dup2);
    // the borrow ends before this function returns.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed
        .try_clone_to_owned()
        .with_context(|| format!("the helper's {name} (fd {fd}) is not usable"))
}

/// Point fds 0-2 at /dev/null: the command holds the only copies of the runtime's streams.
fn release_std() -> Result<()> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("failed to open /dev/null")?;
    for fd in 0..=2 {
        // SAFETY: both descriptors are open; dup2 atomically replaces fd 0/1/2, which no Rust
        // object in this process owns (the duplicates given to the command were closed).
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            bail!("failed to point fd {fd} at /dev/null: {}", Errno::last());
        }
    }
    Ok(())
}

/// Start the command on this process's stdio and wait for it; its exit code (128+N for a
/// signal N).
fn run_stream(args: &ExecArgs) -> Result<i32> {
    let root = libcontainer_root(args)?;
    // Adopted first: on any failure below, dropping it tells the runtime no terminal comes.
    let console_socket = args
        .console_socket_fd
        .map(|fd| adopt_fd("--console-socket-fd", fd))
        .transpose()?;
    let prepared = tenant::prepare(args, &root)?;
    // Blocked (into a signalfd) before anything is forked: a SIGTERM from the runtime (its
    // client went away) while the command starts waits there instead of being lost. The
    // command gets the defaults back just before it execs (tenant).
    let signal_fd = block_signals()?;
    let io = match console_socket {
        Some(socket) => tenant::ExecIo::Console(socket),
        None => tenant::ExecIo::Stdio(tenant::Stdio {
            stdin: dup_std(0, "stdin")?,
            stdout: dup_std(1, "stdout")?,
            stderr: dup_std(2, "stderr")?,
        }),
    };
    let pid = tenant::spawn(prepared, io)?;
    if let Err(e) = release_std() {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(e);
    }
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let mut killed = false;
    loop {
        // SIGCHLD may have been discarded before it was blocked: look first.
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    return Ok(code);
                }
            }
            Err(Errno::ECHILD) => return Ok(255),
            Err(_) => {}
        }
        let now = Instant::now();
        if !killed && deadline.is_some_and(|d| now >= d) {
            let _ = kill(pid, Signal::SIGKILL);
            killed = true;
        }
        let timeout = poll_timeout(deadline.filter(|_| !killed));
        let mut fds = [PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                let _ = kill(pid, Signal::SIGKILL);
                return Err(anyhow!("poll failed: {e}"));
            }
        }
        for signal in signals::drain(&signal_fd) {
            if signal != Signal::SIGCHLD && !killed {
                // Cancelled (the runtime's stream ended): the command goes too.
                let _ = kill(pid, Signal::SIGKILL);
                killed = true;
            }
        }
    }
}
