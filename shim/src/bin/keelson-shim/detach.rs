//! Detaching `keelson-shim run` from the runtime that spawned it, and the readiness pipe.
//!
//! The runtime spawns the shim and waits for it to exit (at once); the shim forks, becomes a
//! session leader, forks again (so it can never reacquire a controlling terminal) and is
//! reparented away from the runtime: a runtime restart (SIGTERM or SIGKILL) leaves it alone.
//! The final process is a child subreaper, so the container init's orphans are reaped by it.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::unistd::{ForkResult, fork, setsid};

/// Failures while detaching.
#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error("failed to fork: {0}")]
    Fork(#[source] nix::Error),
    #[error("failed to start a new session: {0}")]
    Setsid(#[source] nix::Error),
    #[error("failed to become a child subreaper: {0}")]
    Subreaper(#[source] nix::Error),
    #[error("failed to change directory to /: {0}")]
    Chdir(#[source] nix::Error),
    #[error("--ready-fd {fd} is not an open file descriptor: {source}")]
    ReadyFd {
        fd: i32,
        #[source]
        source: nix::Error,
    },
}

fn fork_and_leave_parent() -> Result<(), DetachError> {
    // SAFETY: the shim is single-threaded (it never starts a thread), so the child may keep
    // running arbitrary code; the parent only calls `_exit`.
    match unsafe { fork() }.map_err(DetachError::Fork)? {
        ForkResult::Parent { .. } => {
            // SAFETY: `_exit` ends the process without running destructors or flushing stdio
            // buffers that the child also owns; always sound to call.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Child => Ok(()),
    }
}

/// Close every descriptor above 2 that the caller leaked into this process, except those in
/// `keep` (the ready pipe, exec's result descriptor and console socket). A long-lived shim must
/// not hold, say, the runtime's pipes open. Call it first thing, before the shim opens anything
/// itself.
pub fn close_inherited_fds(keep: impl IntoIterator<Item = i32>) {
    for (first, last) in ranges_to_close(keep) {
        // SAFETY: closes descriptors this process does not use yet (nothing has been opened
        // at this point apart from what the parent passed down); no Rust object owns them.
        unsafe { libc::close_range(first, last, 0) };
    }
}

/// The descriptor ranges above 2 that leave out every descriptor in `keep`.
fn ranges_to_close(keep: impl IntoIterator<Item = i32>) -> Vec<(u32, u32)> {
    let mut kept: Vec<u32> = keep
        .into_iter()
        .filter(|fd| *fd > 2)
        .map(|fd| fd as u32)
        .collect();
    kept.sort_unstable();
    kept.dedup();
    let mut ranges = Vec::new();
    let mut first = 3u32;
    for fd in kept {
        if fd > first {
            ranges.push((first, fd - 1));
        }
        first = fd + 1;
    }
    ranges.push((first, u32::MAX));
    ranges
}

/// Double-fork with `setsid` in between, become a child subreaper and leave the caller's cwd.
/// Only the final grandchild returns.
pub fn detach() -> Result<(), DetachError> {
    fork_and_leave_parent()?;
    setsid().map_err(DetachError::Setsid)?;
    fork_and_leave_parent()?;
    nix::sys::prctl::set_child_subreaper(true).map_err(DetachError::Subreaper)?;
    nix::unistd::chdir("/").map_err(DetachError::Chdir)?;
    Ok(())
}

/// The pipe on which the runtime waits for `ok` or `error: ...`.
pub struct ReadyPipe {
    fd: OwnedFd,
}

impl ReadyPipe {
    /// Take ownership of the inherited descriptor `fd` (close-on-exec from now on).
    pub fn adopt(fd: i32) -> Result<Self, DetachError> {
        // SAFETY: F_GETFD only queries the descriptor table; any integer is harmless.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(DetachError::ReadyFd {
                fd,
                source: nix::Error::last(),
            });
        }
        // SAFETY: `fd` is open (checked above) and was handed to this process by its parent
        // for this purpose only; nothing else in the shim owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|source| DetachError::ReadyFd { fd, source })?;
        Ok(ReadyPipe { fd: owned })
    }

    /// Write the one readiness line and release the descriptor. Descriptors 0-2 are pointed
    /// at /dev/null instead of being closed, so that no later file takes their number.
    pub fn report(self, result: Result<(), &str>) {
        let line = match result {
            Ok(()) => format!("{}\n", keelson_shim::protocol::READY_OK),
            Err(e) => format!(
                "{}{}\n",
                keelson_shim::protocol::READY_ERROR_PREFIX,
                e.replace('\n', " ")
            ),
        };
        let mut file = std::fs::File::from(self.fd);
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "failed to report readiness to the runtime");
        }
        let raw = file.into_raw_fd();
        if raw <= 2 {
            if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
                // SAFETY: both descriptors are open; dup2 atomically replaces `raw`, which this
                // function owned (released from the File above) and no one else uses.
                unsafe { libc::dup2(null.as_raw_fd(), raw) };
            }
        } else {
            // SAFETY: `raw` was released from the File above and is owned here; closing once.
            unsafe { libc::close(raw) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_descriptors_are_left_out_of_the_ranges() {
        assert_eq!(ranges_to_close([]), vec![(3, u32::MAX)]);
        assert_eq!(ranges_to_close([1, -1]), vec![(3, u32::MAX)]);
        assert_eq!(ranges_to_close([3]), vec![(4, u32::MAX)]);
        assert_eq!(ranges_to_close([5]), vec![(3, 4), (6, u32::MAX)]);
        assert_eq!(
            ranges_to_close([7, 4, 5, 7]),
            vec![(3, 3), (6, 6), (8, u32::MAX)]
        );
    }
}
