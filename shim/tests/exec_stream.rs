//! End-to-end tests of `keelson-shim exec --stream` (interactive exec) in a running busybox
//! container (root only): the command on the helper's own stdio (pipes or a terminal), the
//! result on `--result-fd`, timeouts and cancellation; with `--console-socket-fd`, a terminal
//! allocated inside the container whose master arrives over a unix socket.

mod common;

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestContainer;
use keelson_shim::protocol::StreamExecResult;

/// Spawn `exec --stream --result-fd 3` with `stdio`; returns the helper and the result pipe.
fn spawn_stream(
    c: &TestContainer,
    flags: &[&str],
    cmd: &[&str],
    stdio: [Stdio; 3],
) -> (Child, File) {
    let (result_r, result_w) = nix::unistd::pipe().unwrap();
    let raw = result_w.as_raw_fd();
    let [stdin, stdout, stderr] = stdio;
    let mut command = Command::new(common::SHIM);
    command
        .arg("exec")
        .arg("--libcontainer-root")
        .arg(&c.root)
        .args(["--id", &c.id, "--stream", "--result-fd", "3"])
        .args(flags)
        .arg("--")
        .args(cmd)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: between fork and exec the closure only calls dup2/fcntl on descriptors it owns
    // (async-signal-safe; no allocation).
    unsafe {
        command.pre_exec(move || {
            if raw == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    drop(result_w);
    (child, File::from(result_r))
}

fn result_of(child: &mut Child, mut result: File) -> StreamExecResult {
    let mut text = String::new();
    result.read_to_string(&mut text).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "helper exited with {status}");
    assert_eq!(text.matches('\n').count(), 1, "one line: {text:?}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad result {text:?}: {e}"))
}

fn running(name: &str) -> TestContainer {
    let mut c = TestContainer::new(name, &["sleep", "1000"]);
    c.start_shim();
    c.client().start().unwrap();
    c
}

#[test]
fn stream_exec_over_pipes() {
    require_root!();
    let c = running("xstream");
    let (mut child, result) = spawn_stream(
        &c,
        &[],
        &[
            "sh",
            "-c",
            // Through a file: in a pipeline the shell may still hold the pipe's ends when `ls`
            // looks.
            "read x; echo \"out $x\"; echo err >&2; ls -l /proc/$$/fd >/tmp/fds; \
             grep -c pipe: /tmp/fds >&2; exit 4",
        ],
        [Stdio::piped(), Stdio::piped(), Stdio::piped()],
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"in\n").unwrap();
    drop(stdin);
    // End of file once the command exited: the helper does not hold the streams.
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(out, "out in\n");
    // Only the three streams are pipes: the result descriptor was not inherited.
    assert_eq!(err, "err\n3\n");
    assert_eq!(result_of(&mut child, result), StreamExecResult::exited(4));
}

#[test]
fn stream_exec_on_a_terminal() {
    require_root!();
    let c = running("xtty");
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let (mut child, result) = spawn_stream(
        &c,
        &["--tty"],
        &[
            "sh",
            "-c",
            "set -- $(cat /proc/self/stat); echo \"tty_nr=$7\"; [ -t 0 ] && echo tty; read x; echo \"got $x\"",
        ],
        [slave(&pty.slave), slave(&pty.slave), slave(&pty.slave)],
    );
    drop(pty.slave);
    let mut master = File::from(pty.master);
    master.write_all(b"hi\n").unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    // EIO once the last slave descriptor is closed.
    while let Ok(n) = master.read(&mut chunk) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    let out = String::from_utf8_lossy(&out);
    let tty_nr: i64 = out
        .split("tty_nr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out:?}"));
    assert_ne!(
        tty_nr, 0,
        "the terminal is the controlling terminal: {out:?}"
    );
    assert!(out.contains("tty\r\n"), "{out:?}");
    assert!(out.contains("got hi\r\n"), "{out:?}");
    assert_eq!(result_of(&mut child, result), StreamExecResult::exited(0));
}

#[test]
fn stream_exec_timeout_cancellation_and_errors() {
    require_root!();
    let c = running("xcancel");
    let null = || [Stdio::null(), Stdio::null(), Stdio::null()];

    let t0 = Instant::now();
    let (mut child, result) = spawn_stream(&c, &["--timeout-secs", "1"], &["sleep", "100"], null());
    assert_eq!(result_of(&mut child, result), StreamExecResult::exited(137));
    assert!(t0.elapsed() < Duration::from_millis(2500));

    // SIGTERM to the helper (the runtime's stream ended): the command is killed.
    let (mut child, result) = spawn_stream(&c, &[], &["sleep", "100"], null());
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(result_of(&mut child, result), StreamExecResult::exited(137));

    // Could not start: an error naming the container, and exit 0.
    let (mut child, result) = spawn_stream(&c, &[], &["/no/such/binary"], null());
    let r = result_of(&mut child, result);
    assert_eq!(r.exit_code, None);
    let error = r.error.unwrap();
    assert!(
        error.contains(&c.id) && error.contains("/no/such/binary"),
        "{error}"
    );

    let other = TestContainer::new("xmissing", &["true"]);
    let (mut child, result) = spawn_stream(&other, &[], &["true"], null());
    let error = result_of(&mut child, result).error.unwrap();
    assert!(error.contains(&other.id), "{error}");

    // A result descriptor that is not open: exit 1 with the reason on stderr.
    let out = Command::new(common::SHIM)
        .args([
            "exec",
            "--id",
            &c.id,
            "--stream",
            "--result-fd",
            "9",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--result-fd 9 is not an open file descriptor"),
        "{stderr}"
    );
}

/// A close-on-exec duplicate of `fd` numbered 10 or above (out of the way of 3 and 4).
fn dup_high(fd: &OwnedFd) -> OwnedFd {
    let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).unwrap();
    // SAFETY: fcntl just returned this new descriptor; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Spawn `exec --stream --tty --result-fd 3 --console-socket-fd 4` on /dev/null, the way the
/// runtime does; returns the helper, the result pipe and our end of the console socket.
fn spawn_console(c: &TestContainer, cmd: &[&str]) -> (Child, File, OwnedFd) {
    let (result_r, result_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    // Out of the way of 3 and 4, so the two dup2s below cannot clobber each other.
    let (result_w, theirs) = (dup_high(&result_w), dup_high(&theirs));
    let (raw_result, raw_console) = (result_w.as_raw_fd(), theirs.as_raw_fd());
    let mut command = Command::new(common::SHIM);
    command
        .arg("exec")
        .arg("--libcontainer-root")
        .arg(&c.root)
        .args(["--id", &c.id, "--stream", "--tty", "--result-fd", "3"])
        .args(["--console-socket-fd", "4", "--env", "TERM=xterm", "--"])
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec the closure only calls dup2 on descriptors it owns
    // (async-signal-safe; no allocation); dup2 leaves the copies inheritable.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(raw_result, 3) < 0 || libc::dup2(raw_console, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    (child, File::from(result_r), ours)
}

/// The descriptor in the next message on `socket` (`None` at end of file), and its payload.
fn receive_master(socket: &OwnedFd) -> Option<(OwnedFd, Vec<u8>)> {
    let mut payload = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut payload)];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let msg = nix::sys::socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .unwrap();
    let mut fd = None;
    for cmsg in msg.cmsgs().unwrap() {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel installed these descriptors for this message; we own them.
            fd = fds.first().map(|f| unsafe { OwnedFd::from_raw_fd(*f) });
        }
    }
    let len = msg.bytes;
    fd.map(|fd| (fd, payload[..len].to_vec()))
}

/// Everything the terminal's processes write until the last slave closes (EIO).
fn read_all(master: OwnedFd) -> String {
    let mut master = File::from(master);
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    while let Ok(n) = master.read(&mut chunk) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn stream_exec_terminal_comes_from_the_container() {
    require_root!();
    let c = running("xconsole");
    let (mut child, result, socket) = spawn_console(
        &c,
        &[
            "sh",
            "-c",
            "read x; tty; stty size; set -- $(cat /proc/self/stat); echo \"tty_nr=$7\"; \
             ls -l /proc/$$/fd >/tmp/fds; grep -c pts /tmp/fds; echo \"got $x\"; exit 3",
        ],
    );
    let (master, payload) = receive_master(&socket).expect("the master arrives");
    let name = String::from_utf8_lossy(&payload).into_owned();
    assert!(name.starts_with("/dev/pts/"), "{name:?}");
    // Nothing else comes on the socket: the helper and the process closed it.
    assert!(receive_master(&socket).is_none());
    // The size set on the received master is the one the process sees.
    let ws = libc::winsize {
        ws_row: 33,
        ws_col: 111,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid for the call.
    assert_eq!(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
    nix::unistd::write(master.as_fd(), b"hi\n").unwrap();
    let out = read_all(master);
    let lines: Vec<&str> = out.split("\r\n").collect();
    // The echoed input, then `tty`: the slave by its name inside the container.
    assert_eq!(lines.get(1).copied(), Some(name.as_str()), "{out:?}");
    assert!(out.contains("\r\n33 111\r\n"), "{out:?}");
    assert!(
        !out.contains("tty_nr=0\r\n"),
        "a controlling terminal: {out:?}"
    );
    // Only the terminal's 0, 1 and 2 (no stray master or socket).
    assert!(out.contains("\r\n3\r\ngot hi\r\n"), "{out:?}");
    assert_eq!(result_of(&mut child, result), StreamExecResult::exited(3));
}

#[test]
fn stream_exec_console_failures_come_back_on_the_result_fd() {
    require_root!();
    let c = running("xconsfail");
    // The terminal is sent before the command is looked up: it then closes, and the result
    // says why.
    let (mut child, result, socket) = spawn_console(&c, &["/no/such/binary"]);
    let (master, _) = receive_master(&socket).expect("the master arrives");
    let _ = read_all(master);
    let r = result_of(&mut child, result);
    assert_eq!(r.exit_code, None);
    let error = r.error.unwrap();
    assert!(error.contains("/no/such/binary"), "{error}");

    // No container: no terminal (end of file on the socket), the error names it.
    let other = TestContainer::new("xconsmissing", &["true"]);
    let (mut child, result, socket) = spawn_console(&other, &["true"]);
    assert!(receive_master(&socket).is_none());
    let error = result_of(&mut child, result).error.unwrap();
    assert!(error.contains(&other.id), "{error}");
}

#[test]
fn stream_exec_terminal_belongs_to_the_containers_user() {
    require_root!();
    let mut c = TestContainer::with_spec("xconsuser", &["sleep", "1000"], |spec| {
        let mut process = spec.process().clone().unwrap();
        let mut user = process.user().clone();
        user.set_uid(1234);
        user.set_gid(1234);
        process.set_user(user);
        spec.set_process(Some(process));
    });
    c.start_shim();
    c.client().start().unwrap();
    let (mut child, result, socket) = spawn_console(&c, &["sh", "-c", "id -u; ls -ln $(tty)"]);
    let (master, _) = receive_master(&socket).expect("the master arrives");
    let out = read_all(master);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1234"), "{out:?}");
    let owner = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert_eq!(owner, "1234", "{out:?}");
    assert_eq!(result_of(&mut child, result), StreamExecResult::exited(0));
}
