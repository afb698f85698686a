//! End-to-end tests of `keelson-shim run` with real busybox containers (root only).

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{TestContainer, eventually, parent_pid, process_alive, records};
use keelson_shim::protocol::{
    self, ContainerStatus, ErrorKind, ExitReason, Request, Response, ShimClient,
};

const WAIT: Option<Duration> = Some(Duration::from_secs(20));

#[test]
fn exit_code_logs_and_exit_file() {
    require_root!();
    let mut c = TestContainer::new("exit", &["sh", "-c", "echo hello; echo err >&2; exit 3"]);
    let shim = c.start_shim();
    assert!(shim.init_pid > 0 && shim.shim_pid > 0);
    assert!(shim.shim_start_ticks.is_some() && shim.init_start_ticks.is_some());
    assert!(c.libcontainer_dir().is_dir());

    let mut client = c.client();
    let state = client.state().unwrap();
    assert_eq!(state.status, ContainerStatus::Created);
    assert_eq!(state.pid, shim.init_pid);
    assert!(c.log().is_empty(), "nothing runs before start: {}", c.log());
    client.start().unwrap();

    // The exit is recorded on disk without anyone waiting (a runtime that is down meanwhile).
    let exit = eventually(Duration::from_secs(20), || {
        protocol::read_exit_file(&c.state_dir).unwrap()
    })
    .expect("exit.json written");
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.reason, ExitReason::Error);
    assert!(exit.exited_at_unix_nanos > 0);
    let text = fs::read_to_string(c.state_dir.join(protocol::EXIT_FILE)).unwrap();
    assert!(text.starts_with("{\"v\":1,\"exit_code\":3,"), "{text}");

    // A new connection (a restarted runtime) sees the same.
    let mut client = c.client();
    let state = client.state().unwrap();
    assert_eq!(state.status, ContainerStatus::Stopped);
    assert_eq!(state.exit.as_ref(), Some(&exit));
    assert!(state.started_at_unix_nanos.is_some());
    assert_eq!(client.wait(WAIT).unwrap(), exit);

    let mut recs = records(&c.log());
    recs.sort();
    assert_eq!(
        recs,
        vec![
            ("stderr".into(), "F".into(), "err".into()),
            ("stdout".into(), "F".into(), "hello".into()),
        ],
        "log:\n{}",
        c.log()
    );

    // Start again is refused with a state error.
    let err = client.start().unwrap_err();
    assert_eq!(err.shim_kind(), Some(ErrorKind::InvalidState), "{err}");
    assert!(err.to_string().contains(&c.id), "{err}");

    client.shutdown().unwrap();
    assert!(!c.libcontainer_dir().exists(), "libcontainer state removed");
    assert!(
        c.cgroup_dirs().is_empty(),
        "cgroups removed: {:?}",
        c.cgroup_dirs()
    );
    assert!(!c.socket().exists());
    assert!(protocol::read_shim_file(&c.state_dir).unwrap().is_none());
    assert!(
        c.state_dir.join(protocol::EXIT_FILE).exists(),
        "exit.json stays"
    );
    assert!(
        eventually(Duration::from_secs(5), || (!process_alive(shim.shim_pid))
            .then_some(()))
        .is_some(),
        "shim exited"
    );
}

#[test]
fn sleeping_container_survives_shim_sigterm_and_is_killed() {
    require_root!();
    let mut c = TestContainer::new("kill", &["sleep", "1000"]);
    let shim = c.start_shim();

    // Detached: reparented away from the process that spawned it.
    let me = std::process::id() as i32;
    assert_ne!(parent_pid(shim.shim_pid), Some(me));
    // In its own session and process group: a signal to the runtime's group does not reach it.
    let (group, session) = common::group_and_session(shim.shim_pid).unwrap();
    let (my_group, my_session) = common::group_and_session(me).unwrap();
    assert_eq!(group, session, "in the group of the session it started");
    assert_ne!(group, my_group);
    assert_ne!(session, my_session);
    assert_ne!(session, shim.shim_pid, "not a session leader (double fork)");
    // The init is the shim's child.
    assert_eq!(parent_pid(shim.init_pid), Some(shim.shim_pid));

    let mut client = c.client();
    client.start().unwrap();
    let state = client.state().unwrap();
    assert_eq!(state.status, ContainerStatus::Running);

    // Shutdown while running is refused.
    let err = client.shutdown().unwrap_err();
    assert_eq!(err.shim_kind(), Some(ErrorKind::InvalidState), "{err}");

    // SIGTERM/SIGINT/SIGHUP to the shim do not stop it or the container.
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim.shim_pid), sig).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(process_alive(shim.shim_pid), "shim survived its SIGTERM");
    assert!(process_alive(shim.init_pid), "container survived");
    let mut client = c.client();
    assert_eq!(client.state().unwrap().status, ContainerStatus::Running);

    // A Wait parked on one connection is answered when another kills the container.
    let socket = c.socket();
    let waiter = std::thread::spawn(move || {
        let mut w = ShimClient::connect(socket).unwrap();
        w.wait(WAIT)
    });
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    client.kill(9, false).unwrap();
    let exit = waiter.join().unwrap().unwrap();
    assert_eq!(exit.exit_code, 137);
    assert_eq!(exit.reason, ExitReason::Error);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(client.wait(WAIT).unwrap(), exit);
    // Killing a stopped container is not an error.
    client.kill(15, false).unwrap();

    assert!(c.libcontainer_dir().is_dir());
    assert!(!c.cgroup_dirs().is_empty());
    client.shutdown().unwrap();
    assert!(!c.libcontainer_dir().exists());
    assert!(c.cgroup_dirs().is_empty(), "{:?}", c.cgroup_dirs());
}

#[test]
fn protocol_errors_are_answered() {
    require_root!();
    let mut c = TestContainer::new("proto", &["sleep", "1000"]);
    c.start_shim();
    let mut client = c.client();
    // bad signal number
    let err = client.kill(0, false).unwrap_err();
    assert_eq!(err.shim_kind(), Some(ErrorKind::BadRequest), "{err}");
    // raw lines: wrong version, garbage; the connection stays usable
    use std::io::{BufRead, BufReader, Write};
    let mut raw = std::os::unix::net::UnixStream::connect(c.socket()).unwrap();
    raw.write_all(b"{\"v\":2,\"op\":\"state\"}\nnot json\n{\"v\":1,\"op\":\"state\"}\n")
        .unwrap();
    let mut reader = BufReader::new(raw);
    let mut answers = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        answers.push(protocol::decode_response(line.as_bytes()).unwrap());
    }
    assert!(
        matches!(&answers[0], Response::Error(e) if e.kind == ErrorKind::UnsupportedVersion),
        "{answers:?}"
    );
    assert!(
        matches!(&answers[1], Response::Error(e) if e.kind == ErrorKind::BadRequest),
        "{answers:?}"
    );
    assert!(
        matches!(&answers[2], Response::State(s) if s.status == ContainerStatus::Created),
        "{answers:?}"
    );
    // Kill before start (created container) stops it.
    assert!(matches!(
        client.call(&Request::Kill {
            signal: 9,
            all: true
        }),
        Ok(Response::Ok)
    ));
    assert_eq!(client.wait(WAIT).unwrap().exit_code, 137);
    client.shutdown().unwrap();
}

#[test]
fn oom_kill_is_reported() {
    require_root!();
    let mut c = TestContainer::with_memory_limit(
        "oom",
        &[
            "sh",
            "-c",
            "echo start; x=$(head -c 64000000 /dev/zero | tr '\\000' a); echo survived ${#x}",
        ],
        16 * 1024 * 1024,
    );
    c.start_shim();
    let mut client = c.client();
    client.start().unwrap();
    let exit = client.wait(WAIT).unwrap();
    assert_eq!(
        exit.reason,
        ExitReason::OomKilled,
        "{exit:?}\nlog:\n{}",
        c.log()
    );
    assert_eq!(exit.exit_code, 137, "{exit:?}");
    assert!(c.log().contains("stdout F start"), "{}", c.log());
    client.shutdown().unwrap();
}

#[test]
fn reopen_log_moves_new_lines_to_the_new_file() {
    require_root!();
    let mut c = TestContainer::new(
        "reopen",
        &[
            "sh",
            "-c",
            "echo one; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo two",
        ],
    );
    c.start_shim();
    let mut client = c.client();
    client.start().unwrap();
    eventually(Duration::from_secs(10), || {
        c.log().contains("one").then_some(())
    })
    .expect("first line logged");
    let rotated = c.dir.path().join("container.log.1");
    fs::rename(&c.log_path, &rotated).unwrap();
    client.reopen_log().unwrap();
    assert!(c.log_path.exists(), "reopen creates the file");
    fs::write(c.rootfs().join("tmp/go"), b"").unwrap();
    let exit = client.wait(WAIT).unwrap();
    assert_eq!(exit.exit_code, 0);
    assert_eq!(exit.reason, ExitReason::Completed);
    let old = records(&fs::read_to_string(&rotated).unwrap());
    let new = records(&c.log());
    assert_eq!(old, vec![("stdout".into(), "F".into(), "one".into())]);
    assert_eq!(new, vec![("stdout".into(), "F".into(), "two".into())]);
    client.shutdown().unwrap();
}

#[test]
fn long_and_unterminated_lines_are_split() {
    require_root!();
    let mut c = TestContainer::new(
        "split",
        &["sh", "-c", "printf '%20000s\\n' x; printf 'tail'"],
    );
    c.start_shim();
    let mut client = c.client();
    client.start().unwrap();
    assert_eq!(client.wait(WAIT).unwrap().exit_code, 0);
    let recs = records(&c.log());
    let summary: Vec<(String, String, usize)> = recs
        .iter()
        .map(|(s, t, content)| (s.clone(), t.clone(), content.len()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("stdout".into(), "P".into(), 16384),
            ("stdout".into(), "F".into(), 20000 - 16384),
            ("stdout".into(), "P".into(), 4),
        ]
    );
    assert_eq!(recs[2].2, "tail");
    client.shutdown().unwrap();
}

#[test]
fn create_errors_reach_the_ready_pipe() {
    require_root!();
    let mut c = TestContainer::new("bad", &["sh"]);
    fs::remove_dir_all(c.rootfs()).unwrap();
    let line = c.spawn_shim(&[]);
    assert!(line.starts_with("error: "), "{line:?}");
    assert!(line.contains(&c.id), "{line:?}");
    assert!(!c.libcontainer_dir().exists());
    assert!(c.cgroup_dirs().is_empty());

    // --tty and process.terminal must agree (libcontainer needs a console socket exactly then).
    let mut c = TestContainer::new("tty", &["sh"]);
    let line = c.spawn_shim(&["--tty"]);
    assert!(
        line.contains("--tty needs process.terminal true"),
        "{line:?}"
    );
    assert!(line.contains(&c.id), "{line:?}");
    let mut c = TestContainer::with_spec("terminal", &["sh"], |spec| {
        let mut process = spec.process().clone().unwrap();
        process.set_terminal(Some(true));
        spec.set_process(Some(process));
    });
    let line = c.spawn_shim(&[]);
    assert!(line.contains("without --tty"), "{line:?}");
}

#[test]
fn stdin_flag_keeps_stdin_open() {
    require_root!();
    // Without --stdin the container reads /dev/null: `cat` ends at once.
    let mut c = TestContainer::new("nostdin", &["cat"]);
    c.start_shim();
    let mut client = c.client();
    client.start().unwrap();
    assert_eq!(client.wait(WAIT).unwrap().exit_code, 0);
    client.shutdown().unwrap();

    // With --stdin the shim holds the pipe open: `cat` keeps waiting for input.
    let mut c = TestContainer::new("stdin", &["cat"]);
    assert_eq!(c.spawn_shim(&["--stdin"]), "ok\n", "{}", c.shim_log());
    let mut client = c.client();
    client.start().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(client.state().unwrap().status, ContainerStatus::Running);
    client.kill(9, false).unwrap();
    assert_eq!(client.wait(WAIT).unwrap().exit_code, 137);
    client.shutdown().unwrap();
}
