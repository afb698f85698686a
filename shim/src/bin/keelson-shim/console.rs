//! The container's terminal (`run --tty`): libcontainer's console-socket handshake, which hands
//! the shim the pty master, and the terminal ioctls the shim and `exec --tty` use.
//!
//! libcontainer 0.7 (`tty::setup_console`) allocates the pty *inside* the container, after
//! `pivot_root`, from the container's own devpts (`/dev/pts/ptmx`, which it verifies is a real
//! devpts ptmx), bind-mounts the slave on `/dev/console`, makes it the init's controlling
//! terminal and stdin/stdout/stderr, and sends the master over the console socket with
//! `SCM_RIGHTS` (payload `/dev/ptmx`). The builder connects to the socket path the shim passes
//! to `with_console_socket` (through a `console-socket` symlink in its state directory), and
//! requires `process.terminal: true` (a detached terminal container without a console socket,
//! or a console socket without a terminal, is refused). The init sends the master before it
//! reports ready, so when `build()` returns the message is waiting in the socket's queue: the
//! single-threaded shim can accept and receive it afterwards.
//!
//! `exec --tty --console-socket-fd N` does the same for an exec'd process, in the shim's own
//! code ([`open_exec_terminal`], [`send_master`]): inside the container's mount namespace it
//! opens `/dev/ptmx` (libcontainer made it a `pts/ptmx` symlink), unlocks the pty, opens the
//! slave by the name `ptsname` gives, checks both the way libcontainer and runc check theirs
//! (CVE-2025-52565: a process in the container may have replaced `/dev/ptmx` or `/dev/pts`)
//! and sends the master over the inherited socket.

use std::ffi::CStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keelson_shim::fdpass;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::sys::statfs::fstatfs;

/// Failures of the console handshake.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("no terminal arrived on the console socket {path} within {waited:?}")]
    Timeout { path: PathBuf, waited: Duration },
    #[error("failed to receive the terminal on the console socket {path}: {source}")]
    Receive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the console socket {path} delivered no terminal descriptor")]
    NoDescriptor { path: PathBuf },
}

/// Failures allocating an exec's terminal inside the container.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("failed to open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to {step} of the pty {path}: {source}")]
    Pty {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a genuine pty {what}: {reason}")]
    NotPty {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("failed to send the terminal over the console socket: {0}")]
    Send(#[source] io::Error),
}

/// A pty allocated for an exec: both ends close-on-exec, the slave checked.
#[derive(Debug)]
pub struct ExecTerminal {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// The slave's path (`/dev/pts/N`) in the mount namespace it was opened in.
    pub slave_path: PathBuf,
}

/// `DEVPTS_SUPER_MAGIC` (`<linux/magic.h>`).
const DEVPTS_SUPER_MAGIC: u64 = 0x1cd1;
/// `/dev/pts/ptmx` in every devpts instance: inode 2, device 5:2 (`mknod_ptmx`, fs/devpts).
const PTMX_INO: u64 = 2;
const PTMX_RDEV: (u64, u64) = (5, 2);
/// `UNIX98_PTY_SLAVE_MAJOR`: slave N is 136:N (the kernel's 20-bit minors hold every N).
const PTY_SLAVE_MAJOR: u64 = 136;

/// The devpts instance (`st_dev`) `file` lives on, if it is a character device on a devpts.
fn devpts_char_device(file: &File) -> Result<(u64, u64), String> {
    let fs = fstatfs(file.as_fd()).map_err(|e| format!("fstatfs: {e}"))?;
    let magic = fs.filesystem_type().0 as u64;
    if magic != DEVPTS_SUPER_MAGIC {
        return Err(format!(
            "not on a devpts mount (filesystem magic {magic:#x})"
        ));
    }
    let meta = file.metadata().map_err(|e| format!("fstat: {e}"))?;
    if !meta.file_type().is_char_device() {
        return Err("not a character device".into());
    }
    Ok((meta.dev(), meta.rdev()))
}

/// The master must be a devpts instance's own `ptmx` (not, say, a device node a process in
/// the container made, which would open the host's devpts).
fn verify_ptmx(master: &File) -> Result<(), String> {
    let (_, rdev) = devpts_char_device(master)?;
    let ino = master.metadata().map_err(|e| format!("fstat: {e}"))?.ino();
    let number = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
    if ino != PTMX_INO || number != PTMX_RDEV {
        return Err(format!(
            "inode {ino}, device {}:{} (expected inode {PTMX_INO}, device 5:2)",
            number.0, number.1
        ));
    }
    Ok(())
}

/// The slave must be pty `number` of the master's own devpts instance.
fn verify_slave(slave: &File, master: &File, number: u32) -> Result<(), String> {
    let (dev, rdev) = devpts_char_device(slave)?;
    let master_dev = master.metadata().map_err(|e| format!("fstat: {e}"))?.dev();
    if dev != master_dev {
        return Err("on a different devpts instance than the master".into());
    }
    let got = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
    if got != (PTY_SLAVE_MAJOR, u64::from(number)) {
        return Err(format!(
            "device {}:{} (expected {PTY_SLAVE_MAJOR}:{number})",
            got.0, got.1
        ));
    }
    Ok(())
}

/// Allocate a pty from `ptmx` (the container's `/dev/ptmx`, in its mount namespace): open it
/// (`O_NOCTTY`, close-on-exec), unlock it, open the slave by the name `ptsname` gives and check
/// both ends.
pub fn open_exec_terminal(ptmx: &Path) -> Result<ExecTerminal, TerminalError> {
    let open = |path: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| TerminalError::Open {
                path: path.to_owned(),
                source,
            })
    };
    let master = open(ptmx)?;
    verify_ptmx(&master).map_err(|reason| TerminalError::NotPty {
        path: ptmx.to_owned(),
        what: "multiplexer",
        reason,
    })?;
    let pty_err = |step: &'static str| TerminalError::Pty {
        step,
        path: ptmx.to_owned(),
        source: io::Error::last_os_error(),
    };
    // SAFETY: unlockpt(3) only issues TIOCSPTLCK on the open descriptor.
    if unsafe { libc::unlockpt(master.as_raw_fd()) } != 0 {
        return Err(pty_err("unlock the slave"));
    }
    let mut number: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int through the pointer, valid for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut number) } < 0 {
        return Err(pty_err("read the number"));
    }
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: ptsname_r(3) writes a NUL-terminated name of at most `name.len()` bytes into the
    // buffer, which lives for the call.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(TerminalError::Pty {
            step: "name the slave",
            path: ptmx.to_owned(),
            source: io::Error::from_raw_os_error(rc),
        });
    }
    // SAFETY: on success the buffer holds a NUL-terminated string (checked by ptsname_r).
    let name = unsafe { CStr::from_ptr(name.as_ptr()) };
    let slave_path = PathBuf::from(name.to_string_lossy().into_owned());
    let slave = open(&slave_path)?;
    verify_slave(&slave, &master, number).map_err(|reason| TerminalError::NotPty {
        path: slave_path.clone(),
        what: "slave",
        reason,
    })?;
    Ok(ExecTerminal {
        master: master.into(),
        slave: slave.into(),
        slave_path,
    })
}

/// Send `master` over the connected unix socket `socket` (`SCM_RIGHTS`; the payload is the
/// slave's path, for the logs of whoever receives it).
pub fn send_master(socket: BorrowedFd<'_>, terminal: &ExecTerminal) -> Result<(), TerminalError> {
    let fds = [terminal.master.as_raw_fd()];
    let payload = terminal.slave_path.as_os_str().as_encoded_bytes();
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(payload)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(TerminalError::Send(e.into())),
        }
    }
}

/// The listening console socket, removed from disk when dropped.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Wrap a bound, non-blocking listener at `path`.
    pub fn new(listener: UnixListener, path: PathBuf) -> Self {
        ConsoleSocket { listener, path }
    }

    /// Accept libcontainer's connection and receive the pty master (close-on-exec,
    /// non-blocking), waiting at most `timeout`.
    pub fn receive_master(&self, timeout: Duration) -> Result<OwnedFd, ConsoleError> {
        let deadline = Instant::now() + timeout;
        let recv_err = |source: io::Error| ConsoleError::Receive {
            path: self.path.clone(),
            source,
        };
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_readable(self.listener.as_fd(), deadline).map_err(|()| {
                        ConsoleError::Timeout {
                            path: self.path.clone(),
                            waited: timeout,
                        }
                    })?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(recv_err(e)),
            }
        };
        stream.set_nonblocking(true).map_err(recv_err)?;
        loop {
            match fdpass::receive_fd(stream.as_raw_fd()) {
                Ok(Some(fd)) => {
                    set_nonblocking(&fd).map_err(recv_err)?;
                    return Ok(fd);
                }
                Ok(None) => {
                    return Err(ConsoleError::NoDescriptor {
                        path: self.path.clone(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_readable(stream.as_fd(), deadline).map_err(|()| ConsoleError::Timeout {
                        path: self.path.clone(),
                        waited: timeout,
                    })?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(recv_err(e)),
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Wait until `fd` is readable; `Err` once `deadline` passed.
fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant) -> Result<(), ()> {
    if deadline.saturating_duration_since(Instant::now()).is_zero() {
        return Err(());
    }
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, crate::monitor::poll_timeout(Some(deadline))) {
        Ok(0) => Err(()),
        _ => Ok(()),
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Set a terminal's window size (`TIOCSWINSZ`; the foreground process group gets SIGWINCH).
pub fn set_window_size(fd: BorrowedFd<'_>, width: u16, height: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A terminal's window size as (width, height) (`TIOCGWINSZ`).
#[cfg(test)]
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, valid for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((size.ws_col, size.ws_row))
}

/// Make the terminal `fd` the calling session leader's controlling terminal (`TIOCSCTTY`,
/// without stealing it from another session).
pub fn set_controlling_terminal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal) and touches no memory.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{ControlMessage, sendmsg};
    use std::io::IoSlice;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_master_arrives_over_the_console_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let console = ConsoleSocket::new(listener, path.clone());

        // What libcontainer's init does: connect, send the master with SCM_RIGHTS, close.
        let pty = nix::pty::openpty(None, None).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let fds = [pty.master.as_raw_fd()];
        sendmsg::<()>(
            client.as_raw_fd(),
            &[IoSlice::new(b"/dev/ptmx")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(client);

        let master = console.receive_master(Duration::from_secs(5)).unwrap();
        set_window_size(master.as_fd(), 120, 40).unwrap();
        // Same terminal: the slave sees the size set through the received master.
        assert_eq!(window_size(pty.slave.as_fd()).unwrap(), (120, 40));
        let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        drop(console);
        assert!(!path.exists(), "the console socket is removed when dropped");
    }

    #[test]
    fn an_exec_terminal_comes_from_a_devpts_ptmx_and_crosses_a_socket() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (the host's /dev/pts/ptmx is mode 000)");
            return;
        }
        let terminal = open_exec_terminal(Path::new("/dev/pts/ptmx")).unwrap();
        assert!(terminal.slave_path.starts_with("/dev/pts/"), "{terminal:?}");
        for fd in [&terminal.master, &terminal.slave] {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        send_master(theirs.as_fd(), &terminal).unwrap();
        let master = fdpass::receive_fd(ours.as_raw_fd()).unwrap().unwrap();
        set_window_size(master.as_fd(), 100, 30).unwrap();
        assert_eq!(window_size(terminal.slave.as_fd()).unwrap(), (100, 30));
        nix::unistd::write(&terminal.slave, b"x").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(nix::unistd::read(&master, &mut buf).unwrap(), 1);
    }

    #[test]
    fn a_ptmx_that_is_not_a_devpts_instances_own_is_refused() {
        // A host's /dev/ptmx is usually a 5:2 node on devtmpfs: what a container process could
        // mknod (in a container it may be the devpts's own, through a symlink or bind mount).
        let on_devpts = nix::sys::statfs::statfs("/dev/ptmx")
            .is_ok_and(|f| f.filesystem_type().0 as u64 == DEVPTS_SUPER_MAGIC);
        if nix::unistd::geteuid().is_root() && !on_devpts {
            let err = open_exec_terminal(Path::new("/dev/ptmx")).unwrap_err();
            assert!(
                matches!(
                    &err,
                    TerminalError::NotPty {
                        what: "multiplexer",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("not on a devpts mount"), "{err}");
        }
        let err = open_exec_terminal(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, TerminalError::NotPty { .. }), "{err}");
        let err = open_exec_terminal(Path::new("/nonexistent/ptmx")).unwrap_err();
        assert!(matches!(err, TerminalError::Open { .. }), "{err}");
    }

    #[test]
    fn no_terminal_times_out_or_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let console = ConsoleSocket::new(listener, path.clone());
        let err = console
            .receive_master(Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(err, ConsoleError::Timeout { .. }), "{err}");

        let client = UnixStream::connect(&path).unwrap();
        drop(client);
        let err = console.receive_master(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ConsoleError::NoDescriptor { .. }), "{err}");
    }
}
