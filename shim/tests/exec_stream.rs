//! End-to-end tests of `keelson-shim exec --stream` (interactive exec) in a running busybox
//! container (root only): the command on the helper's own stdio (pipes or a terminal), the
//! result on `--result-fd`, timeouts and cancellation.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
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
            "read x; echo \"out $x\"; echo err >&2; ls -l /proc/$$/fd | grep -c pipe: >&2; exit 4",
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
