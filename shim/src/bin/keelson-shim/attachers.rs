//! The attach clients of `keelson-shim run` (`<state-dir>/attach.sock`, frames of
//! `keelson_shim::attach`): copies of the container's output go out to every client, their stdin
//! goes to the container, resizes to its terminal, and each gets the exit code at the end.
//!
//! Nothing here may block the monitor: sockets and the stdin descriptor are non-blocking and
//! every direction has a bounded queue.
//! - Output: each client has its own queue; one that lets more than [`OUTPUT_LIMIT`] bytes pile
//!   up is disconnected (logged). Output produced while nobody is attached is not kept.
//! - Stdin: one queue in front of the container's stdin (pipe write end, or the pty master).
//!   Past [`STDIN_LIMIT`] the shim stops reading the sockets of clients that send stdin until
//!   the container reads (back-pressure: stdin is never dropped); other clients keep being read.
//! - `StdinClose` closes the container's stdin only with `--stdin-once` (on a terminal, which
//!   has no separate input side to close, it sends the EOF character ^D instead); later `Stdin`
//!   frames are ignored. A client that disconnects (or shuts down its sending side) is not a
//!   `StdinClose`, except with `--stdin-once` when it had sent stdin: then it is one, as the CRI
//!   `stdin_once` means "close stdin after the first attach session ends".
//! - After the exit is recorded (output drained) each client gets an `Exit` frame and is closed
//!   once its queue is written, or after [`EXIT_FLUSH_GRACE`]. Clients that connect later get
//!   the `Exit` frame at once.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use keelson_shim::attach::{self, FrameKind};
use nix::poll::{PollFd, PollFlags};
use tracing::{debug, info, warn};

use crate::console;
use crate::crilog::Stream;

/// Attach clients served at once; more are accepted and closed.
pub const MAX_ATTACHERS: usize = 64;
/// Output queued for one client beyond which it is disconnected.
pub const OUTPUT_LIMIT: usize = 1024 * 1024;
/// Stdin queued for the container beyond which stdin-sending clients are not read.
pub const STDIN_LIMIT: usize = 1024 * 1024;
/// How long a client has, after the exit, to take its remaining output and the `Exit` frame.
pub const EXIT_FLUSH_GRACE: Duration = Duration::from_secs(2);
/// One read from a client socket.
const READ_CHUNK: usize = 64 * 1024;
/// The terminal's default end-of-file character (VEOF).
const EOT: u8 = 0x04;

/// Bytes waiting for a non-blocking descriptor.
#[derive(Default)]
struct OutQueue {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
}

impl OutQueue {
    fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Write what the descriptor takes now.
    fn flush(&mut self, mut w: impl Write) -> io::Result<()> {
        while !self.is_empty() {
            match w.write(&self.buf[self.pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.is_empty() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(())
    }
}

/// The container's stdin as the attach clients see it.
pub struct StdinSink {
    /// Non-blocking: the stdin pipe's write end, or a duplicate of the pty master.
    file: File,
    queue: OutQueue,
    tty: bool,
    /// No more input is taken; the descriptor is closed once the queue is written.
    closing: bool,
}

impl StdinSink {
    pub fn new(fd: OwnedFd, tty: bool) -> Self {
        StdinSink {
            file: File::from(fd),
            queue: OutQueue::default(),
            tty,
            closing: false,
        }
    }
}

/// One attach connection.
struct Attacher {
    serial: u64,
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: OutQueue,
    /// It sent at least one `Stdin` frame.
    sent_stdin: bool,
    /// It shut down its sending side.
    eof: bool,
    /// The `Exit` frame is queued: close once written or at this deadline.
    close_by: Option<Instant>,
    /// Unusable or finished: drop it.
    dead: bool,
}

impl Attacher {
    fn wants_read(&self, stdin_full: bool) -> bool {
        let held_back = stdin_full && self.sent_stdin;
        !(self.eof || self.dead || self.close_by.is_some() || held_back)
    }
}

/// What a client asked for in one frame.
enum Input {
    Stdin(Vec<u8>),
    StdinClose,
    Resize(u16, u16),
}

/// The attach socket, its clients and the container's stdin and terminal.
pub struct Attachers {
    id: String,
    listener: UnixListener,
    conns: Vec<Attacher>,
    next_serial: u64,
    /// `None` without `--stdin`, or once closed (stdin-once) or gone (the container closed it).
    stdin: Option<StdinSink>,
    stdin_once: bool,
    /// The pty master (a duplicate), for resizes.
    terminal: Option<OwnedFd>,
    exit_code: Option<i32>,
    read_buf: Box<[u8]>,
}

impl Attachers {
    pub fn new(
        id: String,
        listener: UnixListener,
        stdin: Option<StdinSink>,
        stdin_once: bool,
        terminal: Option<OwnedFd>,
    ) -> Self {
        Attachers {
            id,
            listener,
            conns: Vec::new(),
            next_serial: 1,
            stdin,
            stdin_once,
            terminal,
            exit_code: None,
            read_buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
        }
    }

    fn stdin_full(&self) -> bool {
        self.stdin
            .as_ref()
            .is_some_and(|s| s.queue.len() > STDIN_LIMIT)
    }

    /// Add this module's descriptors to a poll set; returns how many (pass that many revents
    /// to [`Attachers::handle`], in the same order).
    pub fn register<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) -> usize {
        let before = fds.len();
        fds.push(PollFd::new(
            self.listener.as_fd(),
            if self.conns.len() < MAX_ATTACHERS {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            },
        ));
        if let Some(sink) = &self.stdin {
            let events = if sink.queue.is_empty() {
                PollFlags::empty()
            } else {
                PollFlags::POLLOUT
            };
            fds.push(PollFd::new(sink.file.as_fd(), events));
        }
        let stdin_full = self.stdin_full();
        for conn in &self.conns {
            let mut events = PollFlags::empty();
            if conn.wants_read(stdin_full) {
                events |= PollFlags::POLLIN;
            }
            if !conn.out.is_empty() {
                events |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(conn.stream.as_fd(), events));
        }
        fds.len() - before
    }

    /// Act on the revents of the descriptors [`Attachers::register`] added.
    pub fn handle(&mut self, revents: &[PollFlags]) {
        let mut flags = revents.iter().copied();
        let listener_ready = flags.next().is_some_and(|f| !f.is_empty());
        if self.stdin.is_some() {
            let f = flags.next().unwrap_or(PollFlags::empty());
            if f.contains(PollFlags::POLLOUT) {
                self.flush_stdin();
            } else if f.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) {
                // The read side is gone (every reader of the pipe closed it; the terminal has no
                // slave open): nothing will ever read it.
                self.drop_stdin("the container closed its stdin");
            }
        }
        let conn_flags: Vec<PollFlags> = flags.collect();
        for (i, f) in conn_flags.into_iter().enumerate() {
            if i >= self.conns.len() {
                break;
            }
            if f.contains(PollFlags::POLLERR) {
                self.conns[i].dead = true;
                continue;
            }
            if f.contains(PollFlags::POLLIN) && self.conns[i].wants_read(self.stdin_full()) {
                self.read_from(i);
            }
            if f.contains(PollFlags::POLLHUP) {
                // Both directions are closed: whatever is queued cannot be delivered.
                self.conns[i].dead = true;
            }
            if f.contains(PollFlags::POLLOUT) {
                self.flush_conn(i);
            }
        }
        if listener_ready {
            self.accept();
        }
        self.tick();
    }

    /// The earliest moment [`Attachers::tick`] must run again, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.conns.iter().filter_map(|c| c.close_by).min()
    }

    /// Close finished connections (and those past their exit deadline).
    pub fn tick(&mut self) {
        let now = Instant::now();
        for conn in &mut self.conns {
            if let Some(by) = conn.close_by
                && (conn.out.is_empty() || now >= by)
            {
                conn.dead = true;
            }
        }
        let mut i = 0;
        while i < self.conns.len() {
            if !self.conns[i].dead {
                i += 1;
                continue;
            }
            let conn = self.conns.remove(i);
            info!(id = %self.id, attacher = conn.serial, "attach client disconnected");
            if conn.sent_stdin && !conn.eof {
                self.client_stdin_ended(conn.serial);
            }
        }
    }

    /// A copy of container output for every client.
    pub fn broadcast(&mut self, stream: Stream, data: &[u8]) {
        let kind = match stream {
            Stream::Stdout => FrameKind::Stdout,
            Stream::Stderr => FrameKind::Stderr,
        };
        for i in 0..self.conns.len() {
            let conn = &mut self.conns[i];
            if conn.dead || conn.close_by.is_some() {
                continue;
            }
            attach::encode_data(kind, data, &mut conn.out.buf);
            if conn.out.len() > OUTPUT_LIMIT {
                warn!(id = %self.id, attacher = conn.serial, queued = conn.out.len(), "attach client is not reading the container's output; disconnecting it");
                conn.dead = true;
                continue;
            }
            self.flush_conn(i);
        }
    }

    /// The container exited with `code` (its output is drained): every client gets the `Exit`
    /// frame, then is closed.
    pub fn exited(&mut self, code: i32) {
        self.exit_code = Some(code);
        let by = Instant::now() + EXIT_FLUSH_GRACE;
        for i in 0..self.conns.len() {
            let conn = &mut self.conns[i];
            if conn.dead {
                continue;
            }
            attach::encode_exit(code, &mut conn.out.buf);
            conn.close_by = Some(by);
            self.flush_conn(i);
        }
        self.tick();
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_ATTACHERS {
                        warn!(id = %self.id, "too many attach clients; closing a new one");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        warn!(id = %self.id, error = %e, "failed to make an attach connection non-blocking");
                        continue;
                    }
                    let serial = self.next_serial;
                    self.next_serial += 1;
                    info!(id = %self.id, attacher = serial, "attach client connected");
                    let mut conn = Attacher {
                        serial,
                        stream,
                        inbuf: Vec::new(),
                        out: OutQueue::default(),
                        sent_stdin: false,
                        eof: false,
                        close_by: None,
                        dead: false,
                    };
                    if let Some(code) = self.exit_code {
                        attach::encode_exit(code, &mut conn.out.buf);
                        conn.close_by = Some(Instant::now() + EXIT_FLUSH_GRACE);
                    }
                    self.conns.push(conn);
                    self.flush_conn(self.conns.len() - 1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(id = %self.id, error = %e, "accept on the attach socket failed");
                    return;
                }
            }
        }
    }

    fn flush_conn(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if conn.dead {
            return;
        }
        if let Err(e) = conn.out.flush(&conn.stream) {
            debug!(id = %self.id, attacher = conn.serial, error = %e, "writing to an attach client failed");
            conn.dead = true;
        }
    }

    /// One read from client `i`, then every complete frame it holds.
    fn read_from(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        match conn.stream.read(&mut self.read_buf) {
            Ok(0) => {
                conn.eof = true;
                if conn.sent_stdin {
                    let serial = conn.serial;
                    self.client_stdin_ended(serial);
                }
                return;
            }
            Ok(n) => conn.inbuf.extend_from_slice(&self.read_buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return;
            }
            Err(e) => {
                debug!(id = %self.id, attacher = conn.serial, error = %e, "reading from an attach client failed");
                conn.dead = true;
                return;
            }
        }
        let (inputs, consumed, error) = parse_inputs(&conn.inbuf);
        conn.inbuf.drain(..consumed);
        let serial = conn.serial;
        if let Some(reason) = error {
            warn!(id = %self.id, attacher = serial, %reason, "bad attach frame; disconnecting the client");
            conn.dead = true;
            conn.inbuf.clear();
        }
        for input in inputs {
            match input {
                Input::Stdin(data) => {
                    self.conns[i].sent_stdin = true;
                    self.write_stdin(&data);
                }
                Input::StdinClose => {
                    debug!(id = %self.id, attacher = serial, "attach client closed stdin");
                    if self.stdin_once {
                        self.close_stdin();
                    }
                }
                Input::Resize(width, height) => self.resize(serial, width, height),
            }
        }
    }

    fn write_stdin(&mut self, data: &[u8]) {
        let Some(sink) = self.stdin.as_mut() else {
            return;
        };
        if sink.closing || data.is_empty() {
            return;
        }
        sink.queue.buf.extend_from_slice(data);
        self.flush_stdin();
    }

    fn flush_stdin(&mut self) {
        let Some(sink) = self.stdin.as_mut() else {
            return;
        };
        match sink.queue.flush(&sink.file) {
            Ok(()) if sink.closing && sink.queue.is_empty() => {
                self.stdin = None;
                info!(id = %self.id, "container stdin closed (stdin once)");
            }
            Ok(()) => {}
            Err(e) => self.drop_stdin(&format!("writing the container's stdin failed: {e}")),
        }
    }

    fn drop_stdin(&mut self, why: &str) {
        if let Some(sink) = self.stdin.take() {
            debug!(id = %self.id, dropped = sink.queue.len(), why, "no more stdin for the container");
        }
    }

    /// Client `serial`, which had sent stdin, stopped sending (hung up or shut down its side).
    fn client_stdin_ended(&mut self, serial: u64) {
        if self.stdin_once {
            debug!(id = %self.id, attacher = serial, "attach client that sent stdin left: closing stdin (stdin once)");
            self.close_stdin();
        }
    }

    /// Close the container's stdin once what is queued is written (`--stdin-once`).
    fn close_stdin(&mut self) {
        let Some(sink) = self.stdin.as_mut() else {
            return;
        };
        if sink.closing {
            return;
        }
        if sink.tty {
            sink.queue.buf.push(EOT);
        }
        sink.closing = true;
        self.flush_stdin();
    }

    fn resize(&mut self, serial: u64, width: u16, height: u16) {
        let Some(terminal) = &self.terminal else {
            debug!(id = %self.id, attacher = serial, "resize ignored: the container has no terminal");
            return;
        };
        if let Err(e) = console::set_window_size(terminal.as_fd(), width, height) {
            warn!(id = %self.id, attacher = serial, width, height, error = %e, "failed to resize the container's terminal");
        }
    }
}

/// The complete client frames at the start of `buf`, the bytes they took and, if a frame was
/// malformed or not one a client may send, why (the frames before it are still returned).
fn parse_inputs(buf: &[u8]) -> (Vec<Input>, usize, Option<String>) {
    let mut inputs = Vec::new();
    let mut at = 0;
    loop {
        match attach::decode_frame(&buf[at..]) {
            Ok(None) => return (inputs, at, None),
            Err(e) => return (inputs, at, Some(e.to_string())),
            Ok(Some((kind, range, used))) => {
                let payload = &buf[at + range.start..at + range.end];
                let input = match kind {
                    FrameKind::Stdin => Input::Stdin(payload.to_vec()),
                    FrameKind::StdinClose => Input::StdinClose,
                    FrameKind::Resize => match attach::decode_resize(payload) {
                        Ok((w, h)) => Input::Resize(w, h),
                        Err(e) => return (inputs, at, Some(e.to_string())),
                    },
                    other => {
                        return (
                            inputs,
                            at,
                            Some(format!("clients may not send {other:?} frames")),
                        );
                    }
                };
                inputs.push(input);
                at += used;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use nix::poll::{PollTimeout, poll};
    use nix::unistd::pipe2;
    use std::time::Duration;

    struct Harness {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        attachers: Attachers,
    }

    fn harness(stdin: Option<StdinSink>, stdin_once: bool, terminal: Option<OwnedFd>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(attach::ATTACH_SOCKET_FILE);
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let attachers = Attachers::new("c1".into(), listener, stdin, stdin_once, terminal);
        Harness {
            _dir: dir,
            path,
            attachers,
        }
    }

    impl Harness {
        /// One monitor iteration: poll (briefly) and handle.
        fn turn(&mut self) {
            let revents: Vec<PollFlags> = {
                let mut fds = Vec::new();
                self.attachers.register(&mut fds);
                poll(&mut fds, PollTimeout::from(5u16)).unwrap();
                fds.iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                    .collect()
            };
            self.attachers.handle(&revents);
        }

        fn turns(&mut self, n: usize) {
            for _ in 0..n {
                self.turn();
            }
        }

        fn connect(&mut self) -> UnixStream {
            let s = UnixStream::connect(&self.path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            self.turns(2);
            s
        }
    }

    fn nonblocking_pipe() -> (File, OwnedFd) {
        let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
        fcntl(&w, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        (File::from(r), w)
    }

    fn send(s: &mut UnixStream, kind: FrameKind, payload: &[u8]) {
        let mut buf = Vec::new();
        attach::encode_frame(kind, payload, &mut buf);
        s.write_all(&buf).unwrap();
    }

    /// Read frames until `n` arrived or the peer closed.
    fn frames(s: &mut UnixStream, n: usize) -> Vec<(FrameKind, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while out.len() < n {
            while let Some((kind, range, used)) = attach::decode_frame(&buf).unwrap() {
                out.push((kind, buf[range].to_vec()));
                buf.drain(..used);
            }
            if out.len() >= n {
                break;
            }
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                Err(e) => panic!("read: {e}"),
            }
        }
        out
    }

    fn read_all(f: &mut File) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            match f.read(&mut chunk) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn output_goes_to_every_client_then_the_exit() {
        let mut h = harness(None, false, None);
        h.attachers.broadcast(Stream::Stdout, b"nobody hears this");
        let mut a = h.connect();
        let mut b = h.connect();
        h.attachers.broadcast(Stream::Stdout, b"out");
        h.attachers.broadcast(Stream::Stderr, b"err");
        h.attachers.exited(3);
        h.turns(2);
        for s in [&mut a, &mut b] {
            let got = frames(s, 10);
            assert_eq!(
                got,
                vec![
                    (FrameKind::Stdout, b"out".to_vec()),
                    (FrameKind::Stderr, b"err".to_vec()),
                    (FrameKind::Exit, 3i32.to_be_bytes().to_vec()),
                ]
            );
        }
        assert!(h.attachers.conns.is_empty(), "closed after the exit frame");
        // A client that comes after the exit gets it at once.
        let mut late = h.connect();
        h.turns(1);
        assert_eq!(
            frames(&mut late, 10),
            vec![(FrameKind::Exit, 3i32.to_be_bytes().to_vec())]
        );
    }

    #[test]
    fn a_client_that_does_not_read_is_disconnected() {
        let mut h = harness(None, false, None);
        let _slow = h.connect();
        let mut fast = h.connect();
        let chunk = vec![b'x'; 32 * 1024];
        let mut received = 0;
        let mut buf = vec![0u8; 1 << 20];
        fast.set_nonblocking(true).unwrap();
        for _ in 0..200 {
            h.attachers.broadcast(Stream::Stdout, &chunk);
            h.turn();
            while let Ok(n) = fast.read(&mut buf) {
                if n == 0 {
                    break;
                }
                received += n;
            }
        }
        assert_eq!(h.attachers.conns.len(), 1, "the slow client was dropped");
        assert!(
            received > 2 * OUTPUT_LIMIT,
            "the fast one kept receiving: {received}"
        );
    }

    #[test]
    fn stdin_resize_and_stdin_once_close() {
        let (mut container_stdin, w) = nonblocking_pipe();
        let mut h = harness(Some(StdinSink::new(w, false)), true, None);
        let mut a = h.connect();
        send(&mut a, FrameKind::Stdin, b"hello ");
        send(&mut a, FrameKind::Resize, &[0, 80, 0, 24]); // no terminal: ignored
        send(&mut a, FrameKind::Stdin, b"world");
        h.turns(3);
        assert_eq!(read_all(&mut container_stdin), b"hello world");
        send(&mut a, FrameKind::StdinClose, b"");
        send(&mut a, FrameKind::Stdin, b"ignored");
        h.turns(3);
        assert!(h.attachers.stdin.is_none());
        // End of file for the container (no writer left), not "try again".
        let mut rest = [0u8; 16];
        assert_eq!(container_stdin.read(&mut rest).unwrap(), 0);
        // The client is still attached for output.
        assert_eq!(h.attachers.conns.len(), 1);
    }

    #[test]
    fn stdin_close_without_stdin_once_is_ignored_and_hangups_do_not_close() {
        let (mut container_stdin, w) = nonblocking_pipe();
        let mut h = harness(Some(StdinSink::new(w, false)), false, None);
        let mut a = h.connect();
        send(&mut a, FrameKind::Stdin, b"one");
        send(&mut a, FrameKind::StdinClose, b"");
        h.turns(2);
        drop(a);
        h.turns(2);
        assert!(h.attachers.conns.is_empty());
        let mut b = h.connect();
        send(&mut b, FrameKind::Stdin, b"two");
        h.turns(2);
        assert_eq!(read_all(&mut container_stdin), b"onetwo");
        assert!(h.attachers.stdin.is_some());
    }

    #[test]
    fn stdin_once_closes_when_the_client_that_sent_stdin_leaves() {
        let (mut container_stdin, w) = nonblocking_pipe();
        let mut h = harness(Some(StdinSink::new(w, false)), true, None);
        // A client that only watches does not close stdin when it leaves.
        let watcher = h.connect();
        drop(watcher);
        h.turns(2);
        assert!(h.attachers.stdin.is_some());
        let mut a = h.connect();
        send(&mut a, FrameKind::Stdin, b"data");
        h.turns(2);
        drop(a);
        h.turns(2);
        assert!(h.attachers.stdin.is_none());
        assert_eq!(read_all(&mut container_stdin), b"data");
    }

    #[test]
    fn stdin_back_pressure_stops_reading_but_drops_nothing() {
        let (mut container_stdin, w) = nonblocking_pipe();
        let mut h = harness(Some(StdinSink::new(w, false)), false, None);
        let mut a = h.connect();
        a.set_nonblocking(true).unwrap();
        let payload = vec![b'y'; attach::MAX_PAYLOAD];
        let mut frame = Vec::new();
        attach::encode_frame(FrameKind::Stdin, &payload, &mut frame);
        // Write until the client's socket is full: the shim stopped reading it.
        let mut sent = 0usize;
        let mut pending: &[u8] = &[];
        let mut stalled = 0;
        while stalled < 20 {
            if pending.is_empty() {
                pending = &frame;
            }
            match a.write(pending) {
                Ok(n) => {
                    pending = &pending[n..];
                    if pending.is_empty() {
                        sent += payload.len();
                    }
                    stalled = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    h.turn();
                    stalled += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let queued = h.attachers.stdin.as_ref().unwrap().queue.len();
        assert!(queued > STDIN_LIMIT, "queued {queued}");
        assert!(
            queued < STDIN_LIMIT + 2 * READ_CHUNK + attach::MAX_PAYLOAD,
            "queued {queued}"
        );
        // Drain the container side: reading resumes and everything arrives.
        let mut got = 0usize;
        for _ in 0..2000 {
            got += read_all(&mut container_stdin).len();
            if !pending.is_empty()
                && let Ok(n) = a.write(pending)
            {
                pending = &pending[n..];
                if pending.is_empty() {
                    sent += payload.len();
                }
            }
            if got == sent && pending.is_empty() {
                break;
            }
            h.turn();
        }
        assert_eq!(got, sent);
    }

    #[test]
    fn bad_frames_disconnect_the_client() {
        let mut h = harness(None, false, None);
        let mut a = h.connect();
        send(&mut a, FrameKind::Stdout, b"not from a client");
        h.turns(2);
        assert!(h.attachers.conns.is_empty());
        let mut b = h.connect();
        b.write_all(&[42, 0, 0, 0, 0]).unwrap();
        h.turns(2);
        assert!(h.attachers.conns.is_empty());
    }

    #[test]
    fn resize_and_stdin_reach_the_terminal() {
        let pty = nix::pty::openpty(None, None).unwrap();
        fcntl(&pty.master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let stdin = pty.master.try_clone().unwrap();
        let resize = pty.master.try_clone().unwrap();
        let mut h = harness(Some(StdinSink::new(stdin, true)), true, Some(resize));
        let mut a = h.connect();
        send(&mut a, FrameKind::Resize, &[0, 100, 0, 30]);
        send(&mut a, FrameKind::Stdin, b"hi\n");
        h.turns(2);
        assert_eq!(console::window_size(pty.slave.as_fd()).unwrap(), (100, 30));
        let mut slave = File::from(pty.slave.try_clone().unwrap());
        let mut line = [0u8; 3];
        slave.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"hi\n");
        // stdin once on a terminal: ^D (end of file in canonical mode) instead of a close.
        send(&mut a, FrameKind::StdinClose, b"");
        h.turns(2);
        assert!(h.attachers.stdin.is_none());
        let mut n = [0u8; 8];
        assert_eq!(
            slave.read(&mut n).unwrap(),
            0,
            "a canonical-mode read sees EOF"
        );
    }
}
