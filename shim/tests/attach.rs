//! End-to-end tests of the shim's attach socket with real busybox containers (root only):
//! output to every client, stdin with and without stdin-once, the exit frame, slow clients,
//! and `--tty` containers (libcontainer's console socket).

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{TestContainer, read_until_exit, records, send_frame};
use keelson_shim::attach::{self, FrameKind};
use keelson_shim::protocol::ContainerStatus;

const WAIT: Option<Duration> = Some(Duration::from_secs(20));

#[test]
fn attach_carries_stdin_output_and_the_exit() {
    require_root!();
    let mut c = TestContainer::new(
        "attach",
        &[
            "sh",
            "-c",
            "read line; echo \"got $line\"; echo err >&2; cat; echo cat done; exit 7",
        ],
    );
    assert_eq!(
        c.spawn_shim(&["--stdin", "--stdin-once"]),
        "ok\n",
        "{}",
        c.shim_log()
    );
    let sock = c.state_dir.join(attach::ATTACH_SOCKET_FILE);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // Attached before start, like kubelet for a stdin-once container.
    let mut a = c.attach();
    let mut watcher = c.attach();
    let mut client = c.client();
    client.start().unwrap();
    send_frame(&mut a, FrameKind::Stdin, b"hello\n");
    send_frame(&mut a, FrameKind::Stdin, b"more\n");
    send_frame(&mut a, FrameKind::StdinClose, b"");
    // Ignored: stdin is closed.
    send_frame(&mut a, FrameKind::Stdin, b"late\n");
    for s in [&mut a, &mut watcher] {
        let (out, err, exit) = read_until_exit(s);
        assert_eq!(String::from_utf8_lossy(&out), "got hello\nmore\ncat done\n");
        assert_eq!(String::from_utf8_lossy(&err), "err\n");
        assert_eq!(exit, Some(7));
    }
    assert_eq!(client.wait(WAIT).unwrap().exit_code, 7);
    let mut recs = records(&c.log());
    recs.sort();
    assert_eq!(
        recs.iter()
            .map(|(s, _, t)| format!("{s} {t}"))
            .collect::<Vec<_>>(),
        vec![
            "stderr err",
            "stdout cat done",
            "stdout got hello",
            "stdout more"
        ]
    );
    // Attaching to a stopped container: the exit at once.
    let mut late = c.attach();
    assert_eq!(read_until_exit(&mut late), (vec![], vec![], Some(7)));
    client.shutdown().unwrap();
    assert!(!sock.exists(), "attach.sock removed at shutdown");
}

#[test]
fn without_stdin_once_stdin_stays_open_across_attach_sessions() {
    require_root!();
    let mut c = TestContainer::new("reattach", &["cat"]);
    assert_eq!(c.spawn_shim(&["--stdin"]), "ok\n", "{}", c.shim_log());
    let mut client = c.client();
    client.start().unwrap();
    let mut watcher = c.attach();
    let mut a = c.attach();
    send_frame(&mut a, FrameKind::Stdin, b"one\n");
    send_frame(&mut a, FrameKind::StdinClose, b"");
    drop(a);
    let mut b = c.attach();
    send_frame(&mut b, FrameKind::Stdin, b"two\n");
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while records(&c.log()).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.state().unwrap().status, ContainerStatus::Running);
    client.kill(9, false).unwrap();
    let (out, _, exit) = read_until_exit(&mut watcher);
    assert_eq!(String::from_utf8_lossy(&out), "one\ntwo\n");
    assert_eq!(exit, Some(137));
    assert_eq!(client.wait(WAIT).unwrap().exit_code, 137);
    client.shutdown().unwrap();
}

#[test]
fn a_client_that_does_not_read_never_blocks_the_container() {
    require_root!();
    let mut c = TestContainer::new(
        "slowattach",
        &[
            "sh",
            "-c",
            "yes 0123456789012345678901234567890123456789 | head -n 100000",
        ],
    );
    c.start_shim();
    let stuck = c.attach();
    let mut client = c.client();
    client.start().unwrap();
    assert_eq!(client.wait(WAIT).unwrap().exit_code, 0);
    assert_eq!(records(&c.log()).len(), 100_000);
    assert!(
        c.shim_log().contains("not reading the container's output"),
        "{}",
        c.shim_log()
    );
    // The shim closed it: after what was queued, end of file (and no exit frame).
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    (&stuck).read_to_end(&mut rest).unwrap();
    assert!(rest.len() <= 4 * 1024 * 1024);
    client.shutdown().unwrap();
}

#[test]
fn tty_container_gets_a_terminal_with_resizes_and_stdin() {
    require_root!();
    let mut c = TestContainer::with_spec(
        "tty",
        &[
            "sh",
            "-c",
            "stty size; [ -t 0 ] && echo stdin is a tty; read x; echo \"got $x\" >&2; exit 3",
        ],
        |spec| {
            let mut process = spec.process().clone().unwrap();
            process.set_terminal(Some(true));
            spec.set_process(Some(process));
        },
    );
    assert_eq!(
        c.spawn_shim(&["--tty", "--stdin", "--stdin-once"]),
        "ok\n",
        "{}",
        c.shim_log()
    );
    assert!(
        !c.state_dir.join("tty.sock").exists(),
        "the console socket is gone once the terminal arrived"
    );
    let mut a = c.attach();
    send_frame(&mut a, FrameKind::Resize, &[0, 100, 0, 30]);
    // Let the shim apply the resize before the container looks.
    std::thread::sleep(Duration::from_millis(300));
    let mut client = c.client();
    client.start().unwrap();
    send_frame(&mut a, FrameKind::Stdin, b"hi\n");
    let (out, err, exit) = read_until_exit(&mut a);
    let out = String::from_utf8_lossy(&out);
    // All of a terminal's output is stdout, with the terminal's line endings and echo.
    assert!(err.is_empty());
    assert!(out.contains("30 100\r\n"), "{out:?}");
    assert!(out.contains("stdin is a tty\r\n"), "{out:?}");
    assert!(out.contains("got hi\r\n"), "{out:?}");
    assert_eq!(exit, Some(3));
    assert_eq!(client.wait(WAIT).unwrap().exit_code, 3);
    let recs = records(&c.log());
    assert!(recs.iter().all(|(s, _, _)| s == "stdout"), "{recs:?}");
    assert!(
        recs.iter().any(|(_, _, t)| t.starts_with("got hi")),
        "{recs:?}"
    );
    client.shutdown().unwrap();
}
