//! Receiving a descriptor over a unix socket (`SCM_RIGHTS`): how a terminal's master travels
//! from a container (libcontainer's console socket, the exec helper) to whoever serves it.

use std::io;
use std::io::IoSliceMut;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

/// One message with at most one descriptor (`SCM_RIGHTS`, close-on-exec; extra ones are
/// closed); `Ok(None)` at end of file or for a message without one. Never blocks: on a socket
/// with nothing to read it fails with `WouldBlock`.
pub fn receive_fd(socket: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut payload = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut payload)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let mut received = Vec::new();
    for cmsg in msg.cmsgs()? {
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

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{
        AddressFamily, ControlMessage, SockFlag, SockType, sendmsg, socketpair,
    };
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_descriptor_crosses_and_end_of_file_is_none() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let file = tempfile::tempfile().unwrap();
        let fds = [file.as_raw_fd()];
        sendmsg::<()>(
            a.as_raw_fd(),
            &[io::IoSlice::new(b"x")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let got = receive_fd(b.as_raw_fd()).unwrap().expect("a descriptor");
        let got = std::fs::File::from(got).metadata().unwrap().ino();
        assert_eq!(got, file.metadata().unwrap().ino());
        let e = receive_fd(b.as_raw_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert!(receive_fd(b.as_raw_fd()).unwrap().is_none());
    }
}
