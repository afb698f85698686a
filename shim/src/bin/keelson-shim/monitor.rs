//! The shim's single-threaded event loop: one `poll(2)` over the signalfd (SIGCHLD, ignored
//! SIGTERM/SIGINT/SIGHUP), the container's output (stdout/stderr pipes, or the pty master with
//! `--tty`), the listening socket and the client connections, and the attach socket with its
//! clients and the container's stdin (`attachers`).
//!
//! Lifecycle: created -> (Start) running -> init exits -> a short grace period lets the pipes
//! drain -> the exit is recorded in `exit.json`, answered to `Wait`ers and sent to attach
//! clients -> stopped -> on `Shutdown` the libcontainer container is deleted and the shim exits.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keelson_shim::attach::ATTACH_SOCKET_FILE;
use keelson_shim::protocol::{
    self, ContainerStatus, ErrorKind, ErrorReply, ExitInfo, ExitReason, MAX_LINE, ProtocolError,
    Request, Response, StateInfo,
};
use libcontainer::container::Container;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::attachers::Attachers;
use crate::container::ContainerError;
use crate::crilog::{CriLogWriter, FileSink, Stream, SystemClock};
use crate::oom::OomCounter;

/// How long, after the init exited, the shim keeps reading the pipes before recording the exit
/// (processes that inherited stdout may still be flushing; in a pid namespace they are being
/// killed by the kernel and the pipes reach EOF almost at once).
const DRAIN_GRACE: Duration = Duration::from_millis(250);
/// Connections served at once; more are accepted and closed.
const MAX_CONNECTIONS: usize = 64;
/// One read from a container pipe.
const PIPE_READ: usize = 32 * 1024;

/// Failures of the event loop itself (request failures are answered, not raised).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("poll failed for container {id}: {source}")]
    Poll {
        id: String,
        #[source]
        source: nix::Error,
    },
}

/// Why a request was refused; answered as an error response.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("container {id}: {source}")]
    Decode {
        id: String,
        #[source]
        source: ProtocolError,
    },
    #[error("cannot {action} container {id}: it is {status}")]
    WrongState {
        action: &'static str,
        id: String,
        status: &'static str,
    },
    #[error("invalid signal {signal} for container {id}")]
    BadSignal { id: String, signal: i32 },
    #[error("failed to signal the init of container {id}: {source}")]
    Signal {
        id: String,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("failed to reopen the log of container {id} at {path}: {source}")]
    ReopenLog {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RequestError {
    fn reply(&self) -> Response {
        let kind = match self {
            RequestError::Decode {
                source: ProtocolError::UnsupportedVersion { .. },
                ..
            } => ErrorKind::UnsupportedVersion,
            RequestError::Decode { .. } | RequestError::BadSignal { .. } => ErrorKind::BadRequest,
            RequestError::WrongState { .. } => ErrorKind::InvalidState,
            RequestError::Signal { .. }
            | RequestError::Container(_)
            | RequestError::ReopenLog { .. } => ErrorKind::Failed,
        };
        Response::Error(ErrorReply {
            kind,
            message: self.to_string(),
        })
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// What the shim knows about the container (everything but the I/O plumbing).
pub struct Core {
    pub id: String,
    pub state_dir: PathBuf,
    pub log_path: PathBuf,
    pub container: Container,
    pub init_pid: Pid,
    pub log: CriLogWriter<FileSink, SystemClock>,
    pub oom: OomCounter,
    started_at: Option<i64>,
    /// The init was reaped: (exit code, when), not yet recorded.
    reaped: Option<(i32, i64)>,
    drain_deadline: Option<Instant>,
    exit: Option<ExitInfo>,
    log_failing: bool,
    shutdown: bool,
}

enum Reply {
    Now(Response),
    /// Answer when the exit is recorded.
    AtExit,
}

impl Core {
    pub fn new(
        id: String,
        state_dir: PathBuf,
        log_path: PathBuf,
        container: Container,
        init_pid: Pid,
        log: CriLogWriter<FileSink, SystemClock>,
        oom: OomCounter,
    ) -> Self {
        Core {
            id,
            state_dir,
            log_path,
            container,
            init_pid,
            log,
            oom,
            started_at: None,
            reaped: None,
            drain_deadline: None,
            exit: None,
            log_failing: false,
            shutdown: false,
        }
    }

    fn status(&self) -> ContainerStatus {
        if self.exit.is_some() {
            ContainerStatus::Stopped
        } else if self.started_at.is_some() {
            ContainerStatus::Running
        } else {
            ContainerStatus::Created
        }
    }

    fn status_name(&self) -> &'static str {
        match (self.status(), self.reaped.is_some()) {
            (ContainerStatus::Stopped, _) | (_, true) => "stopped",
            (ContainerStatus::Running, _) => "running",
            (ContainerStatus::Created, _) => "created",
        }
    }

    fn wrong_state(&self, action: &'static str) -> RequestError {
        RequestError::WrongState {
            action,
            id: self.id.clone(),
            status: self.status_name(),
        }
    }

    /// Reap the init (specifically) and then any orphan that was reparented to the shim.
    fn reap(&mut self) {
        let note = |core: &mut Core, status: WaitStatus| {
            let code = match status {
                WaitStatus::Exited(_, code) => code,
                WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
                _ => return,
            };
            if core.reaped.is_none() {
                info!(id = %core.id, pid = core.init_pid.as_raw(), code, "container init exited");
                core.reaped = Some((code, unix_nanos(SystemTime::now())));
                core.drain_deadline = Some(Instant::now() + DRAIN_GRACE);
            }
        };
        if self.reaped.is_none() {
            match waitpid(self.init_pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => note(self, status),
                Err(Errno::ECHILD) => {
                    // Not our child (cannot happen unless something else reaped it): treat as
                    // gone with an unknown status rather than waiting forever.
                    warn!(id = %self.id, pid = self.init_pid.as_raw(), "container init is not a child of the shim");
                    note(self, WaitStatus::Exited(self.init_pid, 255));
                }
                Err(e) => warn!(id = %self.id, error = %e, "waitpid on the container init failed"),
            }
        }
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => {
                    if status.pid() == Some(self.init_pid) {
                        note(self, status);
                    } else {
                        debug!(id = %self.id, ?status, "reaped an orphan");
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!(id = %self.id, error = %e, "waitpid failed");
                    break;
                }
            }
        }
    }

    /// Record the exit once the pipes are drained or the grace period is over.
    /// Returns true when the exit was recorded by this call.
    fn finalize_exit(&mut self, pipes_open: bool) -> bool {
        let Some((exit_code, exited_at)) = self.reaped else {
            return false;
        };
        if self.exit.is_some() {
            return false;
        }
        let deadline_passed = self.drain_deadline.is_none_or(|d| Instant::now() >= d);
        if pipes_open && !deadline_passed {
            return false;
        }
        let oom_kills = self.oom.count();
        let reason = ExitReason::classify(exit_code, oom_kills.unwrap_or(0) > 0);
        let exit = ExitInfo {
            exit_code,
            exited_at_unix_nanos: exited_at,
            reason,
            message: String::new(),
        };
        if let Err(e) = protocol::write_exit_file(&self.state_dir, &exit) {
            warn!(id = %self.id, error = %e, "failed to record the exit of container");
        }
        info!(id = %self.id, exit_code, reason = reason.as_str(), ?oom_kills, "container stopped");
        self.exit = Some(exit);
        self.drain_deadline = None;
        true
    }

    /// When the loop must wake up even if nothing happens.
    fn deadline(&self) -> Option<Instant> {
        self.drain_deadline.filter(|_| self.exit.is_none())
    }

    fn write_log(&mut self, stream: Stream, data: Option<&[u8]>) {
        let result = match data {
            Some(data) => self.log.write(stream, data),
            None => self.log.finish(stream),
        };
        match result {
            Ok(()) => self.log_failing = false,
            Err(e) => {
                if !self.log_failing {
                    warn!(id = %self.id, path = %self.log_path.display(), error = %e, "failed to write the container log; output is dropped");
                }
                self.log_failing = true;
            }
        }
    }

    fn handle(&mut self, line: &[u8]) -> Reply {
        let request = match protocol::decode_request(line) {
            Ok(r) => r,
            Err(source) => {
                return Reply::Now(
                    RequestError::Decode {
                        id: self.id.clone(),
                        source,
                    }
                    .reply(),
                );
            }
        };
        debug!(id = %self.id, request = request.name(), "request");
        let result = match request {
            Request::Start => self.start(),
            Request::Kill { signal, all } => self.kill(signal, all),
            Request::State => return Reply::Now(Response::State(self.state())),
            Request::ReopenLog => self.log.reopen().map_err(|source| RequestError::ReopenLog {
                id: self.id.clone(),
                path: self.log_path.clone(),
                source,
            }),
            Request::Wait => {
                return match &self.exit {
                    Some(exit) => Reply::Now(Response::Exited(exit.clone())),
                    None => Reply::AtExit,
                };
            }
            Request::Shutdown => self.shutdown(),
        };
        Reply::Now(match result {
            Ok(()) => Response::Ok,
            Err(e) => {
                warn!(id = %self.id, error = %e, "request failed");
                e.reply()
            }
        })
    }

    fn state(&self) -> StateInfo {
        StateInfo {
            status: self.status(),
            pid: self.init_pid.as_raw(),
            started_at_unix_nanos: self.started_at,
            exit: self.exit.clone(),
        }
    }

    fn start(&mut self) -> Result<(), RequestError> {
        if self.status() != ContainerStatus::Created || self.reaped.is_some() {
            return Err(self.wrong_state("start"));
        }
        self.container
            .start()
            .map_err(|e| ContainerError::new("start", &self.id, &e))?;
        self.started_at = Some(unix_nanos(SystemTime::now()));
        info!(id = %self.id, "container started");
        Ok(())
    }

    fn kill(&mut self, signal: i32, all: bool) -> Result<(), RequestError> {
        let bad_signal = || RequestError::BadSignal {
            id: self.id.clone(),
            signal,
        };
        let nix_signal = Signal::try_from(signal).map_err(|_| bad_signal())?;
        if all {
            let lc_signal =
                libcontainer::signal::Signal::try_from(signal).map_err(|_| bad_signal())?;
            return self
                .container
                .kill(lc_signal, true)
                .map_err(|e| ContainerError::new("kill", &self.id, &e).into());
        }
        if self.reaped.is_some() {
            // Already gone: nothing to signal (its pid may even be reused by now).
            return Ok(());
        }
        // Signal the init directly: it is our unreaped child, so its pid cannot be reused.
        match nix::sys::signal::kill(self.init_pid, nix_signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(RequestError::Signal {
                id: self.id.clone(),
                source,
            }),
        }
    }

    fn shutdown(&mut self) -> Result<(), RequestError> {
        if self.exit.is_none() {
            return Err(self.wrong_state("shut down the shim of"));
        }
        // force: processes left in the cgroup (orphans outside a pid namespace) are killed.
        self.container
            .delete(true)
            .map_err(|e| ContainerError::new("delete", &self.id, &e))?;
        info!(id = %self.id, "container deleted; shim exiting");
        // Gone from disk before the answer: whoever reads `ok` sees the final state.
        for name in [
            protocol::SOCKET_FILE,
            ATTACH_SOCKET_FILE,
            protocol::SHIM_FILE,
        ] {
            let path = protocol::state_file(&self.state_dir, name);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                warn!(id = %self.id, path = %path.display(), error = %e, "cleanup failed");
            }
        }
        self.shutdown = true;
        Ok(())
    }
}

/// One client connection.
struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// A `Wait` is parked on this connection; later requests queue behind it.
    waiting: bool,
    /// The peer finished sending.
    eof: bool,
    /// Unusable: drop it.
    broken: bool,
}

impl Conn {
    fn new(stream: UnixStream) -> Self {
        Conn {
            stream,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            waiting: false,
            eof: false,
            broken: false,
        }
    }

    /// The next complete request line, or `Err` if the peer sent an over-long line.
    fn next_line(&mut self) -> Option<Result<Vec<u8>, ()>> {
        match self.inbuf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line: Vec<u8> = self.inbuf.drain(..=i).collect();
                Some(Ok(line))
            }
            None if self.inbuf.len() > MAX_LINE => Some(Err(())),
            None => None,
        }
    }

    fn send(&mut self, response: &Response) {
        match protocol::encode_response(response) {
            Ok(line) => self.outbuf.extend_from_slice(&line),
            Err(e) => {
                warn!(error = %e, "failed to encode a response");
                self.broken = true;
            }
        }
    }

    fn flush(&mut self) {
        while !self.outbuf.is_empty() && !self.broken {
            match self.stream.write(&self.outbuf) {
                Ok(0) => self.broken = true,
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.broken = true,
            }
        }
    }

    fn read(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    if self.inbuf.len() > 2 * MAX_LINE {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.broken = true;
                    return;
                }
            }
        }
    }

    fn wants_read(&self) -> bool {
        !self.eof && !self.broken && self.inbuf.len() <= 2 * MAX_LINE
    }

    fn done(&self) -> bool {
        self.broken
            || (self.eof && !self.waiting && self.outbuf.is_empty() && !self.inbuf.contains(&b'\n'))
    }
}

/// Where the container's output comes from (non-blocking descriptors).
pub enum Output {
    /// The read ends of its stdout and stderr pipes.
    Pipes { stdout: File, stderr: File },
    /// The pty master of its terminal: everything is `stdout`.
    Terminal(File),
}

/// The event loop's file descriptors and connections around a [`Core`].
pub struct Monitor {
    core: Core,
    listener: UnixListener,
    signals: SignalFd,
    /// The container's stdout and stderr (with a terminal: its master, and `None`); `None`
    /// after EOF.
    pipes: [Option<File>; 2],
    conns: Vec<Conn>,
    read_buf: Box<[u8]>,
    /// The attach socket and its clients; it holds the container's stdin (with `--stdin`).
    attachers: Attachers,
}

const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

/// How long `poll` may sleep to wake at `deadline` (rounded up, capped at a minute), or forever.
pub fn poll_timeout(deadline: Option<Instant>) -> PollTimeout {
    match deadline {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            // round up so that the deadline has passed when poll returns
            let ms = left.as_millis().saturating_add(1).min(60_000) as u16;
            PollTimeout::from(ms)
        }
        None => PollTimeout::NONE,
    }
}

impl Monitor {
    pub fn new(
        core: Core,
        listener: UnixListener,
        signals: SignalFd,
        output: Output,
        attachers: Attachers,
    ) -> Self {
        let pipes = match output {
            Output::Pipes { stdout, stderr } => [Some(stdout), Some(stderr)],
            Output::Terminal(master) => [Some(master), None],
        };
        Monitor {
            core,
            listener,
            signals,
            pipes,
            conns: Vec::new(),
            read_buf: vec![0u8; PIPE_READ].into_boxed_slice(),
            attachers,
        }
    }

    /// Serve until `Shutdown`.
    pub fn run(mut self) -> Result<(), MonitorError> {
        // The init may have exited before SIGCHLD was blocked: that signal was discarded.
        self.core.reap();
        loop {
            if self
                .core
                .finalize_exit(self.pipes.iter().any(Option::is_some))
            {
                for conn in &mut self.conns {
                    if conn.waiting {
                        conn.waiting = false;
                        if let Some(exit) = &self.core.exit {
                            conn.send(&Response::Exited(exit.clone()));
                        }
                    }
                }
                if let Some(exit) = &self.core.exit {
                    self.attachers.exited(exit.exit_code);
                }
            }
            self.attachers.tick();
            self.serve_requests();
            if self.core.shutdown {
                self.finish();
                return Ok(());
            }
            self.wait_for_events()?;
        }
    }

    fn serve_requests(&mut self) {
        for conn in &mut self.conns {
            while !conn.waiting && !conn.broken && !self.core.shutdown {
                match conn.next_line() {
                    None => break,
                    Some(Err(())) => {
                        conn.send(
                            &RequestError::Decode {
                                id: self.core.id.clone(),
                                source: ProtocolError::LineTooLong,
                            }
                            .reply(),
                        );
                        conn.inbuf.clear();
                        conn.eof = true;
                    }
                    Some(Ok(line)) => match self.core.handle(&line) {
                        Reply::Now(response) => conn.send(&response),
                        Reply::AtExit => conn.waiting = true,
                    },
                }
            }
            conn.flush();
        }
        self.conns.retain(|c| !c.done());
    }

    fn wait_for_events(&mut self) -> Result<(), MonitorError> {
        let deadline = match (self.core.deadline(), self.attachers.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = poll_timeout(deadline);
        let accepting = self.conns.len() < MAX_CONNECTIONS;
        let attach_fds;
        let revents: Vec<PollFlags> = {
            let mut fds = Vec::with_capacity(8 + self.conns.len());
            fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(
                self.listener.as_fd(),
                if accepting {
                    PollFlags::POLLIN
                } else {
                    PollFlags::empty()
                },
            ));
            for p in self.pipes.iter().flatten() {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            attach_fds = self.attachers.register(&mut fds);
            for conn in &self.conns {
                let mut events = PollFlags::empty();
                if conn.wants_read() {
                    events |= PollFlags::POLLIN;
                }
                if !conn.outbuf.is_empty() {
                    events |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(conn.stream.as_fd(), events));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => return Ok(()),
                Err(source) => {
                    return Err(MonitorError::Poll {
                        id: self.core.id.clone(),
                        source,
                    });
                }
            }
            fds.iter()
                .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
                .collect()
        };
        let mut next = revents.iter().copied();
        let ready = |flags: PollFlags| !flags.is_empty();

        if ready(next.next().unwrap_or(PollFlags::empty())) {
            for signal in crate::signals::drain(&self.signals) {
                match signal {
                    Signal::SIGCHLD => self.core.reap(),
                    other => {
                        info!(id = %self.core.id, signal = %other, "ignoring signal: the container keeps running")
                    }
                }
            }
        }
        let listener_ready = ready(next.next().unwrap_or(PollFlags::empty()));
        for (i, stream) in STREAMS.iter().enumerate() {
            if self.pipes[i].is_none() {
                continue;
            }
            if !ready(next.next().unwrap_or(PollFlags::empty())) {
                continue;
            }
            let Some(pipe) = self.pipes[i].as_mut() else {
                continue;
            };
            match pipe.read(&mut self.read_buf) {
                // EIO: a terminal's master once no process has the slave open any more.
                Ok(0) => {
                    self.pipes[i] = None;
                    self.core.write_log(*stream, None);
                }
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    self.pipes[i] = None;
                    self.core.write_log(*stream, None);
                }
                Ok(n) => {
                    let data = &self.read_buf[..n];
                    self.core.write_log(*stream, Some(data));
                    self.attachers.broadcast(*stream, data);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    warn!(id = %self.core.id, stream = stream.as_str(), error = %e, "reading container output failed");
                    self.pipes[i] = None;
                    self.core.write_log(*stream, None);
                }
            }
        }
        let attach_revents: Vec<PollFlags> = next.by_ref().take(attach_fds).collect();
        self.attachers.handle(&attach_revents);
        for (conn, flags) in self.conns.iter_mut().zip(next) {
            let had_eof = conn.eof;
            if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) && !had_eof {
                conn.read();
            }
            // Hung up after its requests were served (e.g. gave up on a Wait): gone. Requests
            // sent just before hanging up are still served first.
            if flags.contains(PollFlags::POLLERR) || (flags.contains(PollFlags::POLLHUP) && had_eof)
            {
                conn.broken = true;
            }
            if flags.contains(PollFlags::POLLOUT) {
                conn.flush();
            }
        }
        // New connections go after the polled ones (whose revents were consumed above).
        if listener_ready {
            self.accept();
        }
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        warn!(id = %self.core.id, "too many shim connections; closing a new one");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        warn!(id = %self.core.id, error = %e, "failed to make a connection non-blocking");
                        continue;
                    }
                    self.conns.push(Conn::new(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(id = %self.core.id, error = %e, "accept on the shim socket failed");
                    return;
                }
            }
        }
    }

    /// After `Shutdown`: deliver the pending answers.
    fn finish(mut self) {
        for conn in &mut self.conns {
            if conn.outbuf.is_empty() {
                continue;
            }
            let _ = conn.stream.set_nonblocking(false);
            let _ = conn.stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = conn.stream.write_all(&conn.outbuf);
            conn.outbuf.clear();
        }
    }
}
