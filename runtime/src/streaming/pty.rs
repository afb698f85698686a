//! The terminal of a `tty` exec: the runtime allocates the pty, hands the slave to the exec
//! helper as its stdio, and keeps the master to copy bytes and set the window size.

use super::remotecommand::TerminalSize;
use nix::pty::{OpenptyResult, Winsize, openpty};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// The runtime's end of a pty.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

/// Opens a pty; returns the master (non-blocking, for tokio) and the slave.
pub fn open() -> io::Result<(PtyMaster, OwnedFd)> {
    let OpenptyResult { master, slave } = openpty(None, None).map_err(io::Error::from)?;
    let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    // SAFETY: `master` is an OwnedFd, so its raw fd is valid and open, and it stays the same
    // descriptor until the AsyncFd (which owns it) is dropped.
    let fd = unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?;
    Ok((PtyMaster { fd }, slave))
}

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);

impl PtyMaster {
    /// Reads what the terminal's processes wrote; `Ok(0)` once every slave is closed (EIO).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
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
}
