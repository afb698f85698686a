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

use std::fs;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

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
            match receive_fd(stream.as_raw_fd()) {
                Ok(Some(fd)) => {
                    set_nonblocking(&fd).map_err(recv_err)?;
                    return Ok(fd);
                }
                Ok(None) => {
                    return Err(ConsoleError::NoDescriptor {
                        path: self.path.clone(),
                    });
                }
                Err(Errno::EAGAIN) => {
                    wait_readable(stream.as_fd(), deadline).map_err(|()| ConsoleError::Timeout {
                        path: self.path.clone(),
                        waited: timeout,
                    })?
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(recv_err(e.into())),
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
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(());
    }
    let ms = left.as_millis().saturating_add(1).min(60_000) as u16;
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Err(()),
        _ => Ok(()),
    }
}

/// One message with at most one descriptor in `SCM_RIGHTS` (close-on-exec); `None` when the
/// peer closed or sent none. Extra descriptors are closed.
fn receive_fd(socket: RawFd) -> Result<Option<OwnedFd>, Errno> {
    let mut payload = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut payload)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received: Vec<OwnedFd> = Vec::new();
    for cmsg in msg.cmsgs().map_err(|_| Errno::EINVAL)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel installed this descriptor in our table for this message;
                // nothing else owns it.
                received.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(received.into_iter().next())
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
