//! The terminal of a `tty` exec: the exec helper allocates the pty inside the container (from
//! its own devpts, as runc does for `exec -t`) and sends the master over a console socket, a
//! unix socket pair the runtime made; the runtime keeps the master to copy bytes and set the
//! window size.

use super::remotecommand::TerminalSize;
use nix::pty::Winsize;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// The runtime's end of a pty.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

/// Opens a pty on the host; returns the master (non-blocking, for tokio) and the slave. Only
/// tests use it: an exec's terminal comes from inside its container ([`ConsoleSocket`]).
#[cfg(test)]
pub fn open() -> io::Result<(PtyMaster, OwnedFd)> {
    let nix::pty::OpenptyResult { master, slave } =
        nix::pty::openpty(None, None).map_err(io::Error::from)?;
    Ok((PtyMaster::from_fd(master)?, slave))
}

/// Makes `fd` non-blocking and close-on-exec.
fn nonblocking_cloexec(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// The runtime's end of an exec's console socket: the helper sends the pty master on it.
pub struct ConsoleSocket {
    fd: AsyncFd<OwnedFd>,
}

/// A connected unix stream socket pair: the runtime's end, and the helper's (close-on-exec:
/// the spawn clears the flag in the child only, as for the result pipe).
pub fn console_socket() -> io::Result<(ConsoleSocket, OwnedFd)> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nonblocking_cloexec(&ours)?;
    // SAFETY: `ours` is an OwnedFd, so its raw fd is valid and open, and it stays the same
    // descriptor until the AsyncFd (which owns it) is dropped.
    let fd = unsafe { AsyncFd::register(ours) }?;
    Ok((ConsoleSocket { fd }, theirs))
}

impl ConsoleSocket {
    /// Waits for the pty master; `Ok(None)` when the helper closed the socket without sending
    /// one (it failed first: its result says why).
    pub async fn receive_master(&self) -> io::Result<Option<PtyMaster>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| keelson_shim::fdpass::receive_fd(fd.get_ref().as_raw_fd())) {
                Ok(Ok(Some(master))) => return PtyMaster::from_fd(master).map(Some),
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);

impl PtyMaster {
    /// Takes a pty master (one received from an exec helper): non-blocking, close-on-exec,
    /// registered with tokio.
    pub fn from_fd(master: OwnedFd) -> io::Result<Self> {
        nonblocking_cloexec(&master)?;
        // SAFETY: `master` is an OwnedFd, so its raw fd is valid and open, and it stays the
        // same descriptor until the AsyncFd (which owns it) is dropped.
        let fd = unsafe { AsyncFd::register(master) }?;
        Ok(PtyMaster { fd })
    }

    /// Reads what the terminal's processes wrote; `Ok(0)` once every slave is closed (EIO).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = tokio::io::ReadBuf::new(buf);
        std::future::poll_fn(|cx| self.poll_read(cx, &mut buf)).await?;
        Ok(buf.filled().len())
    }

    fn poll_read(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            let mut guard = std::task::ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                // Every slave closed: end of file.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    return std::task::Poll::Ready(Ok(()));
                }
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` as terminal input.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the window size (the processes get SIGWINCH).
    pub fn resize(&self, size: TerminalSize) -> io::Result<()> {
        let ws = Winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which points at a
        // live, initialised value for the duration of the call; the fd is a pty master we own.
        unsafe { set_winsize(self.fd.get_ref().as_raw_fd(), &ws) }
            .map(drop)
            .map_err(io::Error::from)
    }

    /// Writes end-of-file as terminal input (the line discipline's VEOF, ^D).
    pub async fn send_eof(&self) -> io::Result<()> {
        self.write_all(&[0x04]).await
    }
}

/// A shared master's output as an `AsyncRead` (end of file once every slave is closed).
pub struct PtyReader(pub std::sync::Arc<PtyMaster>);

impl tokio::io::AsyncRead for PtyReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.0.poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::pty::Winsize;

    nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, Winsize);

    #[tokio::test]
    async fn bytes_and_sizes_cross_the_pty() {
        let (master, slave) = open().unwrap();
        master
            .resize(TerminalSize {
                width: 132,
                height: 43,
            })
            .unwrap();
        let mut ws = Winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `struct winsize` into the live local `ws`.
        unsafe { get_winsize(slave.as_raw_fd(), &mut ws) }.unwrap();
        assert_eq!((ws.ws_col, ws.ws_row), (132, 43));
        nix::unistd::write(&slave, b"out\n").unwrap();
        let mut buf = [0u8; 64];
        let n = master.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"out"), "{:?}", &buf[..n]);
        master.write_all(b"in\n").await.unwrap();
        let mut got = [0u8; 16];
        let n = nix::unistd::read(&slave, &mut got).unwrap();
        assert_eq!(&got[..n], b"in\n");
        drop(slave);
        // With the slave closed, reading drains any echo and then reports end of file.
        let mut total = 0;
        loop {
            let n = master.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
            assert!(total < 4096);
        }
    }

    #[tokio::test]
    async fn the_master_arrives_over_the_console_socket() {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let (socket, theirs) = console_socket().unwrap();
        let flags = nix::fcntl::fcntl(&theirs, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "the helper's end is close-on-exec here"
        );
        let pty = nix::pty::openpty(None, None).unwrap();
        let sender = tokio::task::spawn_blocking(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let fds = [pty.master.as_raw_fd()];
            sendmsg::<()>(
                theirs.as_raw_fd(),
                &[std::io::IoSlice::new(b"/dev/pts/0")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
            drop(theirs);
            pty.slave
        });
        let master = socket.receive_master().await.unwrap().expect("a master");
        let slave = sender.await.unwrap();
        master
            .resize(TerminalSize {
                width: 90,
                height: 20,
            })
            .unwrap();
        let mut ws = Winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `struct winsize` into the live local `ws`.
        unsafe { get_winsize(slave.as_raw_fd(), &mut ws) }.unwrap();
        assert_eq!((ws.ws_col, ws.ws_row), (90, 20));
        nix::unistd::write(&slave, b"x").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(master.read(&mut buf).await.unwrap(), 1);
        // The sender is gone: end of file, no second master.
        assert!(socket.receive_master().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_helper_that_sends_nothing_is_end_of_file() {
        let (socket, theirs) = console_socket().unwrap();
        drop(theirs);
        assert!(socket.receive_master().await.unwrap().is_none());
    }
}
