//! End-to-end tests of CRI streaming (`Exec`, `Attach`, `PortForward`): the URL the runtime
//! hands out, the HTTP upgrade to SPDY/3.1 or WebSocket on its streaming server, and the
//! Kubernetes remote-command and port-forward protocols spoken over them, against real
//! containers run by `keelson-shim`, as root.
//!
//! Like `pods.rs`, each test has its own registry, CNI network and daemon, and ends by removing
//! its pods and checking that nothing is left on the host (mounts, shims and exec helpers,
//! veths, reservations, cgroups, directories).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keelson_cri::v1::{ContainerConfig, ContainerState, PodSandboxConfig, PodSandboxState};
use keelson_integration::busybox;
use keelson_integration::daemon::{DaemonDirs, DaemonOptions, RuntimeDaemon};
use keelson_integration::oci::{Compression, ManifestFormat};
use keelson_integration::pods::{
    self, Cri, HostSnapshot, Scrubber, TestNetwork, container_config, pod_config, sh,
};
use keelson_integration::registry::Registry;
use keelson_integration::streaming::{
    self, Endpoint, ExitStatus, Finished, Output, Proxy, Rng, SPDY_REMOTE_COMMAND, SpdyPortForward,
    SpdyRemote, StreamOptions, WsChannels, WsRemote,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// How long a container may take to reach a state the test waits for.
const STATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one streaming session may take to finish.
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// the node under test

/// One node under test (as in `pods.rs`). Fields drop in order: the daemon first, then the
/// scrubber, the network and last the directory.
struct Node {
    daemon: RuntimeDaemon,
    cri: Cri,
    /// The busybox image, pulled.
    image: String,
    _registry: Registry,
    scrubber: Scrubber,
    net: TestNetwork,
    dirs: DaemonDirs,
    base: tempfile::TempDir,
    leaks: std::sync::Mutex<Vec<String>>,
}

impl Node {
    async fn start() -> Node {
        Self::start_with(|_| Vec::new()).await
    }

    /// [`Node::start`] with more daemon flags, made by `extra_args` from the test directory
    /// (before the daemon starts).
    async fn start_with(extra_args: impl FnOnce(&Path) -> Vec<String>) -> Node {
        let base = tempfile::Builder::new()
            .prefix("ks")
            .tempdir()
            .expect("creating the test directory");
        let dirs = pods::short_dirs(base.path());
        let net = TestNetwork::create(&base.path().join("cni")).expect("creating the CNI network");
        let scrubber = Scrubber::new(base.path(), &dirs);
        let registry = Registry::start().expect("starting the registry");
        let mut opts = pods::daemon_options(&dirs, &net, &[]).expect("daemon options");
        opts.extra_args.extend(extra_args(base.path()));
        let daemon = RuntimeDaemon::start(opts)
            .await
            .expect("starting keelson-runtime");
        let cri = Cri::connect(&daemon)
            .await
            .expect("connecting to the daemon");
        let image = busybox::image(ManifestFormat::Oci, Compression::Gzip)
            .expect("building the busybox image");
        let push = registry.push_client().expect("push client");
        push.push_image("streaming/busybox", "1", &image)
            .await
            .unwrap_or_else(|e| panic!("pushing busybox: {e:#}"));
        let reference = registry.reference("streaming/busybox", "1");
        cri.pull(&reference).await;
        Node {
            daemon,
            cri,
            image: reference,
            _registry: registry,
            scrubber,
            net,
            dirs,
            base,
            leaks: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn base(&self) -> &Path {
        self.base.path()
    }

    fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let mut config = pod_config(name);
        config.log_directory = self.base().join("logs").join(name).display().to_string();
        config
    }

    async fn ready_pod(&self, config: &PodSandboxConfig) -> String {
        let id = self.cri.run_pod(config).await;
        self.scrubber.track_pod(&id);
        let status = self.cri.pod_status(&id).await;
        assert_eq!(
            status.state,
            PodSandboxState::SandboxReady as i32,
            "{status:?}"
        );
        id
    }

    /// A pod named `name` with one running container `box` (`sleep 100000`): (pod, config,
    /// container).
    async fn pod_with_box(&self, name: &str) -> (String, PodSandboxConfig, String) {
        let pc = self.pod_config(name);
        let pod = self.ready_pod(&pc).await;
        let c = self
            .cri
            .run(
                &pod,
                &container_config("box", &self.image, &["sleep", "100000"]),
                &pc,
            )
            .await;
        self.cri
            .wait_state(&c, ContainerState::ContainerRunning, STATE_TIMEOUT)
            .await;
        (pod, pc, c)
    }

    fn snapshot(&self) -> HostSnapshot {
        HostSnapshot::take(self.base(), &self.dirs, &self.net)
    }

    /// Removes every pod and checks the host is clean (≤ 5 s for asynchronous exits).
    async fn remove_all_and_check_clean(&self, pod_ids: &[&str]) {
        for id in self.cri.pod_ids().await {
            self.cri.remove_pod(&id).await;
        }
        assert!(self.cri.pod_ids().await.is_empty());
        assert!(self.cri.container_ids().await.is_empty());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let snap = self.snapshot();
            let cgroups: Vec<PathBuf> = pod_ids
                .iter()
                .flat_map(|id| pods::pod_cgroups(id))
                .collect();
            if snap.is_clean() && cgroups.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let what = format!("{snap:#?}\npod cgroups: {cgroups:#?}");
                eprintln!("LEAK: {what}");
                self.leaks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(what);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails the test when the daemon logged a panic (a task died on what a client sent).
    fn assert_no_panics(&self) {
        let log = std::fs::read_to_string(self.daemon.log_path()).unwrap_or_default();
        let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
        assert!(
            panics.is_empty(),
            "the daemon panicked:\n{}",
            panics.join("\n")
        );
    }

    fn finish(self) {
        self.assert_no_panics();
        let leaks = std::mem::take(&mut *self.leaks.lock().unwrap_or_else(|e| e.into_inner()));
        if !leaks.is_empty() {
            panic!("the node left things behind:\n{}", leaks.join("\n---\n"));
        }
    }
}

fn ok<T>(what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// Exec over SPDY offering `protocols`; returns what the session brought.
async fn spdy_exec(
    cri: &Cri,
    container: &str,
    cmd: &[&str],
    o: StreamOptions,
    protocols: &[&str],
) -> (String, Finished) {
    let url = streaming::exec_url(cri, container, cmd, o).await;
    let remote = ok(
        &format!("SPDY exec {cmd:?}"),
        SpdyRemote::connect(&url, protocols, o).await,
    );
    let protocol = remote.protocol.clone();
    let done = ok(
        &format!("SPDY exec {cmd:?}"),
        remote.finish(SESSION_TIMEOUT).await,
    );
    (protocol, done)
}

/// Exec over WebSocket offering `protocols`.
async fn ws_exec(
    cri: &Cri,
    container: &str,
    cmd: &[&str],
    o: StreamOptions,
    protocols: &[&str],
) -> (Option<String>, Finished) {
    let url = streaming::exec_url(cri, container, cmd, o).await;
    let remote = ok(
        &format!("WebSocket exec {cmd:?}"),
        WsRemote::connect(&url, protocols).await,
    );
    let protocol = remote.protocol.clone();
    let done = ok(
        &format!("WebSocket exec {cmd:?}"),
        remote.finish(SESSION_TIMEOUT).await,
    );
    (protocol, done)
}

/// `len` bytes of a recognisable pattern (lines with their offset).
fn pattern(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(format!("line {i:08}\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// A number no other test of this process puts on a command line.
fn marker() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    200_000 + (std::process::id() % 1000) * 100 + n
}

/// Waits until a process whose command line contains `needle` runs on the host, not counting
/// keelson's own helpers (an exec helper's command line names the command it runs); its pid.
async fn wait_process(needle: &str, timeout: Duration) -> u32 {
    let deadline = Instant::now() + timeout;
    loop {
        let found = pods::processes_naming(needle).into_iter().find(|p| {
            p.cmdline
                .split(' ')
                .next()
                .is_some_and(|argv0| !argv0.contains("keelson"))
        });
        if let Some(p) = found {
            return p.pid;
        }
        assert!(
            Instant::now() < deadline,
            "no process {needle:?} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (≤ `timeout`) until no process (helpers included) names `needle`; the survivors,
/// with their signal masks, and whether (and when) they went within 20 s more.
async fn wait_none_naming(needle: &str, timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let left = pods::processes_naming(needle);
        if left.is_empty() {
            return Vec::new();
        }
        if Instant::now() > deadline {
            let mut out: Vec<String> = left
                .iter()
                .map(|p| {
                    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid))
                        .unwrap_or_default();
                    let sig: Vec<&str> = status
                        .lines()
                        .filter(|l| {
                            ["SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"]
                                .iter()
                                .any(|k| l.starts_with(k))
                        })
                        .collect();
                    format!(
                        "{} ({}) [{}]",
                        p.cmdline,
                        pods::process_details(p.pid),
                        sig.join(" ")
                    )
                })
                .collect();
            let later = Instant::now() + Duration::from_secs(20);
            while !pods::processes_naming(needle).is_empty() && Instant::now() < later {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            out.push(if pods::processes_naming(needle).is_empty() {
                format!("(all gone {:?} after the wait began)", start.elapsed())
            } else {
                format!("(still there {:?} after the wait began)", start.elapsed())
            });
            return out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. exec over SPDY: output, exit codes, protocol versions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_spdy_reports_output_and_exit_codes() {
    let node = Node::start().await;
    let cri = &node.cri;
    let (pod, _, c) = node.pod_with_box("exec-spdy").await;
    let script = sh("echo out; echo err >&2; exit 3");

    let (protocol, r) =
        spdy_exec(cri, &c, &script, StreamOptions::OUTPUT, SPDY_REMOTE_COMMAND).await;
    assert_eq!(protocol, "v4.channel.k8s.io");
    assert_eq!(r.stdout(), "out\n");
    assert_eq!(r.stderr(), "err\n");
    assert_eq!(r.status, ExitStatus::ExitCode(3), "{r:?}");
    let status: serde_json::Value = serde_json::from_slice(&r.status_bytes).expect("JSON status");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");

    let (_, r) = spdy_exec(
        cri,
        &c,
        &sh("echo fine"),
        StreamOptions::OUTPUT,
        SPDY_REMOTE_COMMAND,
    )
    .await;
    assert_eq!((r.stdout(), r.stderr()), ("fine\n".into(), String::new()));
    assert_eq!(r.status, ExitStatus::Success, "{r:?}");

    // The client's preference order wins; before v4 a failure is plain text and success is
    // silence.
    for version in ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"] {
        let (protocol, r) = spdy_exec(
            cri,
            &c,
            &script,
            StreamOptions::OUTPUT,
            &[version, "v4.channel.k8s.io"],
        )
        .await;
        assert_eq!(protocol, version);
        assert_eq!((r.stdout(), r.stderr()), ("out\n".into(), "err\n".into()));
        match &r.status {
            ExitStatus::Text(t) => assert!(t.contains("exit code 3"), "{version}: {t:?}"),
            other => panic!("{version}: want a text status, got {other:?}"),
        }
        let (_, r) = spdy_exec(cri, &c, &["true"], StreamOptions::OUTPUT, &[version]).await;
        assert_eq!(r.status, ExitStatus::Nothing, "{version}: {r:?}");
    }

    // Only stdout asked for: stderr goes nowhere, stdout still arrives whole.
    let only_out = StreamOptions {
        stdout: true,
        ..Default::default()
    };
    let (_, r) = spdy_exec(
        cri,
        &c,
        &sh("echo a; echo b >&2; echo c"),
        only_out,
        SPDY_REMOTE_COMMAND,
    )
    .await;
    assert_eq!(r.stdout(), "a\nc\n");
    assert_eq!(r.status, ExitStatus::Success);

    // Output much larger than one frame or one stream buffer arrives complete and in order.
    let (_, r) = spdy_exec(
        cri,
        &c,
        &["seq", "1", "300000"],
        StreamOptions::OUTPUT,
        SPDY_REMOTE_COMMAND,
    )
    .await;
    let want: String = (1..=300_000).map(|i| format!("{i}\n")).collect();
    assert!(
        want.as_bytes() == &r.stdout[..],
        "seq output: {} bytes, want {}; tail {:?}",
        r.stdout.len(),
        want.len(),
        String::from_utf8_lossy(&r.stdout[r.stdout.len().saturating_sub(40)..])
    );
    assert_eq!(r.status, ExitStatus::Success);

    // A command that cannot run is a failure, never a success.
    let (_, r) = spdy_exec(
        cri,
        &c,
        &["/no/such/binary"],
        StreamOptions::OUTPUT,
        SPDY_REMOTE_COMMAND,
    )
    .await;
    assert!(
        !matches!(r.status, ExitStatus::Success | ExitStatus::Nothing),
        "exec of a missing binary: {r:?}"
    );
    eprintln!("exec of a missing binary reports {:?}", r.status);

    // CRI refuses what cannot stream at all.
    let e = streaming::try_exec_url(cri, &c, &["true"], StreamOptions::default())
        .await
        .expect_err("Exec without any stream");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let e = streaming::try_exec_url(
        cri,
        &c,
        &["true"],
        StreamOptions {
            stderr: true,
            ..StreamOptions::TTY
        },
    )
    .await
    .expect_err("Exec with tty and stderr");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let e = streaming::try_exec_url(cri, "no-such-container", &["true"], StreamOptions::OUTPUT)
        .await
        .expect_err("Exec in an unknown container");
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. stdin

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stdin_over_spdy_and_websocket() {
    let node = Node::start().await;
    let cri = &node.cri;
    let (pod, _, c) = node.pod_with_box("exec-stdin").await;
    let cat = sh("cat; echo done");

    // SPDY: far more than one frame, in uneven chunks; FIN on stdin ends cat.
    let data = pattern(300 * 1024 + 17);
    let url = streaming::exec_url(cri, &c, &cat, StreamOptions::ALL).await;
    let mut remote = ok(
        "SPDY exec cat",
        SpdyRemote::connect(&url, SPDY_REMOTE_COMMAND, StreamOptions::ALL).await,
    );
    for chunk in data.chunks(7001) {
        ok("stdin", remote.write_stdin(chunk).await);
    }
    ok("closing stdin", remote.close_stdin().await);
    let r = ok("SPDY exec cat", remote.finish(SESSION_TIMEOUT).await);
    let mut want = data.clone();
    want.extend_from_slice(b"done\n");
    assert!(
        r.stdout == want,
        "cat echoed {} bytes, want {}",
        r.stdout.len(),
        want.len()
    );
    assert_eq!(r.status, ExitStatus::Success, "{r:?}");

    // WebSocket v5: the close signal [255, 0] ends cat.
    let data = pattern(100 * 1024 + 3);
    let url = streaming::exec_url(cri, &c, &cat, StreamOptions::ALL).await;
    let remote = ok(
        "WebSocket exec cat",
        WsRemote::connect(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"]).await,
    );
    assert_eq!(remote.protocol.as_deref(), Some("v5.channel.k8s.io"));
    for chunk in data.chunks(10_000) {
        ok("stdin", remote.write_stdin(chunk).await);
    }
    // Everything is echoed before the close signal goes out: stdin stays open until then.
    ok(
        "echo before the close signal",
        remote
            .stdout()
            .wait_for("all of stdin echoed", SESSION_TIMEOUT, |d| {
                d.len() >= data.len()
            })
            .await,
    );
    ok("close signal", remote.close_stdin().await);
    let r = ok("WebSocket exec cat", remote.finish(SESSION_TIMEOUT).await);
    let mut want = data.clone();
    want.extend_from_slice(b"done\n");
    assert!(
        r.stdout == want,
        "cat echoed {} bytes, want {}",
        r.stdout.len(),
        want.len()
    );
    assert_eq!(r.status, ExitStatus::Success, "{r:?}");

    // The close signal right behind the data (as kubectl sends a piped file): nothing is lost.
    let data = pattern(200 * 1024 + 11);
    let url = streaming::exec_url(cri, &c, &["cat"], StreamOptions::ALL).await;
    let remote = ok(
        "WebSocket exec cat, closed at once",
        WsRemote::connect(&url, &["v5.channel.k8s.io"]).await,
    );
    for chunk in data.chunks(32 * 1024) {
        ok("stdin", remote.write_stdin(chunk).await);
    }
    ok("close signal", remote.close_stdin().await);
    let r = ok(
        "WebSocket exec cat, closed at once",
        remote.finish(SESSION_TIMEOUT).await,
    );
    assert!(
        r.stdout == data,
        "cat echoed {} bytes, want {}",
        r.stdout.len(),
        data.len()
    );
    assert_eq!(r.status, ExitStatus::Success, "{r:?}");

    // WebSocket v4 has no close signal: a reader that stops by itself still gets its input.
    let url = streaming::exec_url(cri, &c, &["head", "-c", "5"], StreamOptions::ALL).await;
    let remote = ok(
        "WebSocket v4 exec head",
        WsRemote::connect(&url, &["v4.channel.k8s.io"]).await,
    );
    ok("stdin", remote.write_stdin(b"hello world").await);
    let r = ok(
        "WebSocket v4 exec head",
        remote.finish(SESSION_TIMEOUT).await,
    );
    assert_eq!(r.stdout(), "hello");
    assert_eq!(r.status, ExitStatus::Success, "{r:?}");

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. terminals

/// Prints the terminal size once it is `want` (≤ 5 s), then whether stdin is a terminal.
fn size_script(want: &str) -> String {
    format!(
        "for i in $(seq 100); do [ \"$(stty size)\" = \"{want}\" ] && break; sleep 0.05; done; \
         echo size=$(stty size); [ -t 0 ] && echo tty-yes; echo hi"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_terminal_follows_resizes() {
    let node = Node::start().await;
    let cri = &node.cri;
    let (pod, _, c) = node.pod_with_box("exec-tty").await;

    // SPDY: the resize stream.
    let script = size_script("40 120");
    let url = streaming::exec_url(cri, &c, &sh(&script), StreamOptions::TTY).await;
    let mut remote = ok(
        "SPDY tty exec",
        SpdyRemote::connect(&url, SPDY_REMOTE_COMMAND, StreamOptions::TTY).await,
    );
    assert!(remote.resize.is_some() && remote.stderr.is_none());
    ok("resize", remote.resize(120, 40).await);
    let r = ok("SPDY tty exec", remote.finish(SESSION_TIMEOUT).await);
    let out = r.stdout();
    assert!(out.contains("size=40 120"), "{out:?}");
    assert!(out.contains("tty-yes"), "{out:?}");
    assert!(out.contains("hi\r\n"), "a terminal writes CRLF: {out:?}");
    assert_eq!(r.status, ExitStatus::Success, "{r:?}");

    // Input goes through the terminal's line discipline (and is echoed).
    let url = streaming::exec_url(
        cri,
        &c,
        &sh("read line; echo got-$line; exit 7"),
        StreamOptions::TTY,
    )
    .await;
    let mut remote = ok(
        "SPDY tty exec read",
        SpdyRemote::connect(&url, SPDY_REMOTE_COMMAND, StreamOptions::TTY).await,
    );
    ok("resize", remote.resize(80, 24).await);
    ok("stdin", remote.write_stdin(b"abc\r").await);
    let r = ok("SPDY tty exec read", remote.finish(SESSION_TIMEOUT).await);
    assert!(r.stdout().contains("got-abc"), "{:?}", r.stdout());
    assert_eq!(r.status, ExitStatus::ExitCode(7), "{r:?}");

    // WebSocket v5: channel 4.
    let script = size_script("30 100");
    let url = streaming::exec_url(cri, &c, &sh(&script), StreamOptions::TTY).await;
    let remote = ok(
        "WebSocket tty exec",
        WsRemote::connect(&url, &["v5.channel.k8s.io"]).await,
    );
    ok("resize", remote.resize(100, 30).await);
    let r = ok("WebSocket tty exec", remote.finish(SESSION_TIMEOUT).await);
    assert!(r.stdout().contains("size=30 100"), "{:?}", r.stdout());
    assert!(r.stdout().contains("tty-yes"), "{:?}", r.stdout());
    assert_eq!(r.status, ExitStatus::Success, "{r:?}");

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. exec over WebSocket

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_websocket_protocols() {
    let node = Node::start().await;
    let cri = &node.cri;
    let (pod, _, c) = node.pod_with_box("exec-ws").await;
    let script = |code: i32| format!("echo out; echo err >&2; exit {code}");

    // v5 (preferred when offered first).
    let (protocol, r) = ws_exec(
        cri,
        &c,
        &sh(&script(3)),
        StreamOptions::OUTPUT,
        &["v5.channel.k8s.io", "v4.channel.k8s.io"],
    )
    .await;
    assert_eq!(protocol.as_deref(), Some("v5.channel.k8s.io"));
    assert_eq!((r.stdout(), r.stderr()), ("out\n".into(), "err\n".into()));
    assert_eq!(r.status, ExitStatus::ExitCode(3), "{r:?}");

    // v4, binary.
    let (protocol, r) = ws_exec(
        cri,
        &c,
        &sh(&script(0)),
        StreamOptions::OUTPUT,
        &["v4.channel.k8s.io"],
    )
    .await;
    assert_eq!(protocol.as_deref(), Some("v4.channel.k8s.io"));
    assert_eq!((r.stdout(), r.stderr()), ("out\n".into(), "err\n".into()));
    assert_eq!(r.status, ExitStatus::Success, "{r:?}");

    // v4 in base64 text frames.
    let (protocol, r) = ws_exec(
        cri,
        &c,
        &sh(&script(4)),
        StreamOptions::OUTPUT,
        &["v4.base64.channel.k8s.io"],
    )
    .await;
    assert_eq!(protocol.as_deref(), Some("v4.base64.channel.k8s.io"));
    assert_eq!((r.stdout(), r.stderr()), ("out\n".into(), "err\n".into()));
    assert_eq!(r.status, ExitStatus::ExitCode(4), "{r:?}");

    // The oldest, base64.channel.k8s.io: a plain-text error.
    let (protocol, r) = ws_exec(
        cri,
        &c,
        &sh(&script(5)),
        StreamOptions::OUTPUT,
        &["base64.channel.k8s.io"],
    )
    .await;
    assert_eq!(protocol.as_deref(), Some("base64.channel.k8s.io"));
    assert_eq!((r.stdout(), r.stderr()), ("out\n".into(), "err\n".into()));
    match &r.status {
        ExitStatus::Text(t) => assert!(t.contains("exit code 5"), "{t:?}"),
        other => panic!("want a text status, got {other:?}"),
    }

    // Binary output survives (all byte values, more than one message).
    let (_, r) = ws_exec(
        cri,
        &c,
        &sh("i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done"),
        StreamOptions::OUTPUT,
        &["v5.channel.k8s.io"],
    )
    .await;
    let want: Vec<u8> = (0..=255u8).collect();
    assert_eq!(r.stdout, want, "binary stdout");
    assert_eq!(r.status, ExitStatus::Success);

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. attach

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_a_stdin_once_shell() {
    let node = Node::start().await;
    let cri = &node.cri;
    let pc = node.pod_config("attach");
    let pod = node.ready_pod(&pc).await;
    let mut shell: ContainerConfig = container_config("shell", &node.image, &["sh"]);
    shell.stdin = true;
    shell.stdin_once = true;
    let c = cri.run(&pod, &shell, &pc).await;
    cri.wait_state(&c, ContainerState::ContainerRunning, STATE_TIMEOUT)
        .await;

    let url = streaming::attach_url(cri, &c, StreamOptions::ALL).await;
    let mut remote = ok(
        "SPDY attach",
        SpdyRemote::connect(&url, SPDY_REMOTE_COMMAND, StreamOptions::ALL).await,
    );
    ok("stdin", remote.write_stdin(b"echo hello\n").await);
    let stdout = remote.stdout.clone().expect("stdout");
    ok(
        "hello on stdout",
        stdout.wait_contains("hello\n", SESSION_TIMEOUT).await,
    );
    ok("stdin", remote.write_stdin(b"echo oops >&2\n").await);
    let stderr = remote.stderr.clone().expect("stderr");
    ok(
        "oops on stderr",
        stderr.wait_contains("oops\n", SESSION_TIMEOUT).await,
    );
    assert_eq!(
        cri.status(&c).await.state,
        ContainerState::ContainerRunning as i32
    );
    // End of input: stdin_once closes the shell's stdin, the shell exits, the session ends.
    ok("closing stdin", remote.close_stdin().await);
    let r = ok("SPDY attach", remote.finish(SESSION_TIMEOUT).await);
    assert_eq!(r.stdout(), "hello\n");
    assert_eq!(r.stderr(), "oops\n");
    assert_eq!(r.status, ExitStatus::Success, "{r:?}");
    let status = cri
        .wait_state(&c, ContainerState::ContainerExited, STATE_TIMEOUT)
        .await;
    assert_eq!(status.exit_code, 0, "{status:?}");

    // A container without stdin keeps running when an attacher leaves.
    let ticker = cri
        .run(
            &pod,
            &container_config(
                "ticker",
                &node.image,
                &sh("while true; do echo tick; sleep 0.2; done"),
            ),
            &pc,
        )
        .await;
    cri.wait_state(&ticker, ContainerState::ContainerRunning, STATE_TIMEOUT)
        .await;
    // As containerd: asking for stdin the container does not have is no error, the input just
    // goes nowhere.
    let url = streaming::attach_url(cri, &ticker, StreamOptions::ALL).await;
    let remote = ok(
        "WebSocket attach",
        WsRemote::connect(&url, &["v5.channel.k8s.io"]).await,
    );
    ok(
        "tick on stdout",
        remote
            .stdout()
            .wait_contains("tick\ntick\n", SESSION_TIMEOUT)
            .await,
    );
    ok("stdin", remote.write_stdin(b"into the void\n").await);
    let before = remote.stdout().state().data.len();
    ok(
        "more ticks after the ignored input",
        remote
            .stdout()
            .wait_for("more output", SESSION_TIMEOUT, |d| d.len() > before + 10)
            .await,
    );
    ok("closing the WebSocket", remote.ws.close().await);
    ok(
        "the attach session ends",
        remote.ws.wait_closed(SESSION_TIMEOUT).await,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        cri.status(&ticker).await.state,
        ContainerState::ContainerRunning as i32,
        "a leaving attacher must not stop the container"
    );
    // And a second attacher sees the output too.
    let url = streaming::attach_url(cri, &ticker, StreamOptions::OUTPUT).await;
    let remote = ok(
        "SPDY attach again",
        SpdyRemote::connect(&url, SPDY_REMOTE_COMMAND, StreamOptions::OUTPUT).await,
    );
    ok(
        "tick again",
        remote
            .stdout
            .clone()
            .expect("stdout")
            .wait_contains("tick\n", SESSION_TIMEOUT)
            .await,
    );
    remote.handle.close().await;

    // A terminal container: the attacher's resizes reach its terminal, and its exit ends the
    // session.
    let mut term: ContainerConfig = container_config("term", &node.image, &["sh"]);
    term.stdin = true;
    term.tty = true;
    let t = cri.run(&pod, &term, &pc).await;
    cri.wait_state(&t, ContainerState::ContainerRunning, STATE_TIMEOUT)
        .await;
    let url = streaming::attach_url(cri, &t, StreamOptions::TTY).await;
    let mut remote = ok(
        "SPDY tty attach",
        SpdyRemote::connect(&url, SPDY_REMOTE_COMMAND, StreamOptions::TTY).await,
    );
    ok("resize", remote.resize(132, 50).await);
    let stdout = remote.stdout.clone().expect("stdout");
    // The resize may land after the first command: ask until the size shows.
    let deadline = Instant::now() + SESSION_TIMEOUT;
    loop {
        ok(
            "stdin",
            remote.write_stdin(b"echo rows=$(stty size)\r").await,
        );
        if stdout
            .wait_contains("rows=50 132", Duration::from_millis(500))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the terminal never got the size: {:?}",
            stdout.text()
        );
    }
    ok("stdin", remote.write_stdin(b"exit 5\r").await);
    let r = ok("SPDY tty attach", remote.finish(SESSION_TIMEOUT).await);
    assert_eq!(r.status, ExitStatus::Success, "{r:?}");
    let status = cri
        .wait_state(&t, ContainerState::ContainerExited, STATE_TIMEOUT)
        .await;
    assert_eq!(status.exit_code, 5, "{status:?}");

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

// ---------------------------------------------------------------------------------------------
// 6. port-forward

/// Port-forward's 2-byte little-endian port prefix.
fn port_prefix(port: u16) -> Vec<u8> {
    port.to_le_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_spdy_websocket_and_tunnel() {
    let node = Node::start().await;
    let cri = &node.cri;
    let pc = node.pod_config("portforward");
    let pod = node.ready_pod(&pc).await;
    let web = cri
        .run(
            &pod,
            &container_config(
                "web",
                &node.image,
                &sh(
                    "mkdir -p /tmp/www && echo hello-pf > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
                ),
            ),
            &pc,
        )
        .await;
    // Wait until httpd answers inside the pod.
    let deadline = Instant::now() + STATE_TIMEOUT;
    loop {
        let r = cri
            .exec_sync(
                &web,
                &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
                5,
            )
            .await;
        if matches!(&r, Ok(r) if r.stdout == b"hello-pf\n") {
            break;
        }
        assert!(Instant::now() < deadline, "httpd never answered: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    const BODY: &str = "hello-pf\n";
    const CLOSED_PORT: u16 = 8081;

    // SPDY: two connections at once on one session, then one to a port nobody listens on.
    let url = streaming::port_forward_url(cri, &pod, &[8080]).await;
    let pf = ok("SPDY port-forward", SpdyPortForward::connect(&url).await);
    assert_eq!(pf.protocol.as_deref(), Some(streaming::PORT_FORWARD));
    let mut a = ok("connection a", pf.open(8080).await);
    let mut b = ok("connection b", pf.open(8080).await);
    let (ra, rb) = tokio::join!(
        streaming::http_get_over(&mut a.data, "/index.html", SESSION_TIMEOUT),
        streaming::http_get_over(&mut b.data, "/", SESSION_TIMEOUT),
    );
    assert_eq!(ok("GET through a", ra), (200, BODY.into()));
    assert_eq!(ok("GET through b", rb), (200, BODY.into()));
    for conn in [&mut a, &mut b] {
        let _ = conn.data.shutdown().await;
        let e = ok(
            "error stream of a good connection",
            conn.error.wait_end("error stream", SESSION_TIMEOUT).await,
        );
        assert!(e.data.is_empty(), "{:?}", String::from_utf8_lossy(&e.data));
    }
    let mut bad = ok("connection to a closed port", pf.open(CLOSED_PORT).await);
    let msg = ok(
        "error for a closed port",
        bad.error
            .wait_contains(&format!("localhost:{CLOSED_PORT}"), SESSION_TIMEOUT)
            .await,
    );
    eprintln!("SPDY port-forward error: {msg}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(SESSION_TIMEOUT, bad.data.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "data from a closed port: {rest:?}");
    // The session still serves after a failed connection.
    let mut again = ok("connection after the failure", pf.open(8080).await);
    assert_eq!(
        ok(
            "GET after the failure",
            streaming::http_get_over(&mut again.data, "/", SESSION_TIMEOUT).await
        ),
        (200, BODY.into())
    );
    drop(again);
    pf.handle.close().await;

    // WebSocket channels: 8080 on channels 0/1, the closed port on 2/3.
    let url = streaming::port_forward_url(cri, &pod, &[8080]).await;
    let ws = ok(
        "WebSocket port-forward",
        WsChannels::connect(
            &format!("{url}?ports=8080,{CLOSED_PORT}"),
            &[streaming::PORT_FORWARD],
        )
        .await,
    );
    assert_eq!(ws.protocol.as_deref(), Some(streaming::PORT_FORWARD));
    for (ch, port) in [
        (0u8, 8080u16),
        (1, 8080),
        (2, CLOSED_PORT),
        (3, CLOSED_PORT),
    ] {
        let got = ok(
            &format!("port prefix on channel {ch}"),
            ws.channel(ch)
                .wait_for("2 bytes", SESSION_TIMEOUT, |d| d.len() >= 2)
                .await,
        );
        assert_eq!(got[..2], port_prefix(port), "channel {ch}");
    }
    ok(
        "request on channel 0",
        ws.send(0, b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await,
    );
    let data = ok(
        "response on channel 0",
        ws.channel(0)
            .wait_for("a complete response", SESSION_TIMEOUT, |d| {
                d.len() > 2 && streaming::parse_http_response(&d[2..]).is_some()
            })
            .await,
    );
    let (code, body) = streaming::parse_http_response(&data[2..]).expect("complete");
    assert_eq!((code, String::from_utf8_lossy(&body).as_ref()), (200, BODY));
    let err = ok(
        "error on channel 3",
        ws.channel(3)
            .wait_contains(&format!("localhost:{CLOSED_PORT}"), SESSION_TIMEOUT)
            .await,
    );
    eprintln!("WebSocket port-forward error: {err:?}");
    let e1 = ws.channel(1).state().data;
    assert_eq!(e1, port_prefix(8080), "no error for the open port");
    ok("closing", ws.close().await);
    ok("closed", ws.wait_closed(SESSION_TIMEOUT).await);

    // The base64 variant: text frames.
    let url = streaming::port_forward_url(cri, &pod, &[8080]).await;
    let ws = ok(
        "base64 WebSocket port-forward",
        WsChannels::connect(&url, &["v4.base64.channel.k8s.io"]).await,
    );
    assert!(ws.base64, "{:?}", ws.protocol);
    ok(
        "request on channel 0",
        ws.send(0, b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await,
    );
    let data = ok(
        "base64 response on channel 0",
        ws.channel(0)
            .wait_for("a complete response", SESSION_TIMEOUT, |d| {
                d.len() > 2 && streaming::parse_http_response(&d[2..]).is_some()
            })
            .await,
    );
    assert_eq!(data[..2], port_prefix(8080));
    let (code, body) = streaming::parse_http_response(&data[2..]).expect("complete");
    assert_eq!((code, String::from_utf8_lossy(&body).as_ref()), (200, BODY));
    let _ = ws.close().await;

    // The SPDY-in-WebSocket tunnel of kubectl 1.31+.
    let url = streaming::port_forward_url(cri, &pod, &[8080]).await;
    let pf = ok(
        "tunnelled port-forward",
        SpdyPortForward::connect_tunnel(&url).await,
    );
    let mut t = ok("tunnelled connection", pf.open(8080).await);
    assert_eq!(
        ok(
            "GET through the tunnel",
            streaming::http_get_over(&mut t.data, "/", SESSION_TIMEOUT).await
        ),
        (200, BODY.into())
    );
    let mut bad = ok("tunnelled closed port", pf.open(CLOSED_PORT).await);
    ok(
        "tunnelled error",
        bad.error
            .wait_contains(&format!("localhost:{CLOSED_PORT}"), SESSION_TIMEOUT)
            .await,
    );
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(SESSION_TIMEOUT, bad.data.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    drop(t);
    pf.handle.close().await;

    // A WebSocket port-forward of a closed port alone: the error must still arrive before the
    // server closes.
    let url = streaming::port_forward_url(cri, &pod, &[i32::from(CLOSED_PORT)]).await;
    let ws = ok(
        "WebSocket port-forward of a closed port",
        WsChannels::connect(&url, &[streaming::PORT_FORWARD]).await,
    );
    let err = ok(
        "error on channel 1",
        ws.channel(1)
            .wait_contains(&format!("localhost:{CLOSED_PORT}"), SESSION_TIMEOUT)
            .await,
    );
    eprintln!("closed-port-only error: {err:?}");
    assert!(
        ws.channel(1)
            .state()
            .data
            .starts_with(&port_prefix(CLOSED_PORT))
    );
    let _ = ws.close().await;

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

// ---------------------------------------------------------------------------------------------
// 7. tokens and refusals

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_work_once_and_bad_requests_are_refused() {
    let node = Node::start().await;
    let cri = &node.cri;
    let (pod, _, c) = node.pod_with_box("tokens").await;
    let spdy_v4 = streaming::spdy_upgrade_headers(&["v4.channel.k8s.io"]);

    // Once: the first upgrade runs the command, the second is refused.
    let url = streaming::exec_url(cri, &c, &["echo", "once"], StreamOptions::OUTPUT).await;
    let endpoint = ok("URL", Endpoint::parse(&url));
    assert!(endpoint.path.starts_with("/exec/"), "{url}");
    assert!(endpoint.token().len() >= 16, "a guessable token: {url}");
    let r = ok(
        "first use",
        SpdyRemote::connect(&url, SPDY_REMOTE_COMMAND, StreamOptions::OUTPUT).await,
    );
    let r = ok("first use", r.finish(SESSION_TIMEOUT).await);
    assert_eq!(
        (r.stdout(), &r.status),
        ("once\n".into(), &ExitStatus::Success)
    );
    let (resp, _) = ok(
        "second use",
        streaming::raw_request(&endpoint, "POST", &spdy_v4).await,
    );
    assert_eq!(resp.status, 404, "{resp:?}");
    assert!(resp.body.contains("unknown or expired"), "{resp:?}");

    // Tokens nobody handed out, and paths that are no endpoint.
    for path in [
        "/exec/garbage".to_string(),
        "/exec/".into(),
        "/exec".into(),
        "/".into(),
        format!("/nothing/{}", endpoint.token()),
        "/exec/a/b".into(),
        "/attach/AAAAAAAAAAAAAAAAAAAAAA".into(),
        "/portforward/%00%ff".into(),
    ] {
        let (resp, _) = ok(
            &path,
            streaming::raw_request(&endpoint.with_path(&path), "POST", &spdy_v4).await,
        );
        assert_eq!(resp.status, 404, "{path}: {resp:?}");
    }

    // An exec token is no attach or port-forward token.
    let url = streaming::exec_url(cri, &c, &["true"], StreamOptions::OUTPUT).await;
    let e = ok("URL", Endpoint::parse(&url));
    let (resp, _) = ok(
        "exec token on /attach",
        streaming::raw_request(
            &e.with_path(&format!("/attach/{}", e.token())),
            "POST",
            &spdy_v4,
        )
        .await,
    );
    assert_eq!(resp.status, 404, "{resp:?}");

    // Not an upgrade: 400.
    let url = streaming::exec_url(cri, &c, &["true"], StreamOptions::OUTPUT).await;
    let (resp, _) = ok(
        "plain GET",
        streaming::raw_request(&ok("URL", Endpoint::parse(&url)), "GET", &[]).await,
    );
    assert_eq!(resp.status, 400, "{resp:?}");
    let url = streaming::exec_url(cri, &c, &["true"], StreamOptions::OUTPUT).await;
    let (resp, _) = ok(
        "upgrade to something else",
        streaming::raw_request(
            &ok("URL", Endpoint::parse(&url)),
            "GET",
            &[("Connection", "Upgrade"), ("Upgrade", "h2c")],
        )
        .await,
    );
    assert_eq!(resp.status, 400, "{resp:?}");
    let url = streaming::exec_url(cri, &c, &["true"], StreamOptions::OUTPUT).await;
    let (resp, _) = ok(
        "PUT",
        streaming::raw_request(&ok("URL", Endpoint::parse(&url)), "PUT", &spdy_v4).await,
    );
    assert_eq!(resp.status, 405, "{resp:?}");

    // Protocols the server does not speak: 403, for SPDY and WebSocket.
    let url = streaming::exec_url(cri, &c, &["true"], StreamOptions::OUTPUT).await;
    let (resp, _) = ok(
        "bad SPDY protocols",
        streaming::raw_request(
            &ok("URL", Endpoint::parse(&url)),
            "POST",
            &streaming::spdy_upgrade_headers(&["v9.channel.k8s.io", "v5.channel.k8s.io"]),
        )
        .await,
    );
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.body.contains("v9.channel.k8s.io"), "{resp:?}");
    let url = streaming::exec_url(cri, &c, &["true"], StreamOptions::OUTPUT).await;
    let (resp, _) = ok(
        "bad WebSocket protocols",
        streaming::raw_request(
            &ok("URL", Endpoint::parse(&url)),
            "GET",
            &streaming::ws_upgrade_headers("chat, superchat"),
        )
        .await,
    );
    assert_eq!(resp.status, 403, "{resp:?}");
    let url = streaming::port_forward_url(cri, &pod, &[80]).await;
    let (resp, _) = ok(
        "port-forward offered a remote-command protocol",
        streaming::raw_request(
            &ok("URL", Endpoint::parse(&url)),
            "POST",
            &streaming::spdy_upgrade_headers(&["v4.channel.k8s.io"]),
        )
        .await,
    );
    assert_eq!(resp.status, 403, "{resp:?}");
    // A comma-separated list in one header is read as a list.
    let url = streaming::exec_url(cri, &c, &["echo", "listed"], StreamOptions::OUTPUT).await;
    let remote = ok(
        "comma-separated offer",
        SpdyRemote::connect(
            &url,
            &["v9.example, v3.channel.k8s.io"],
            StreamOptions::OUTPUT,
        )
        .await,
    );
    assert_eq!(remote.protocol, "v3.channel.k8s.io");
    let r = ok(
        "comma-separated offer",
        remote.finish(SESSION_TIMEOUT).await,
    );
    assert_eq!(r.stdout(), "listed\n");

    // A WebSocket upgrade without a key is refused.
    let url = streaming::exec_url(cri, &c, &["true"], StreamOptions::OUTPUT).await;
    let (resp, _) = ok(
        "WebSocket without a key",
        streaming::raw_request(
            &ok("URL", Endpoint::parse(&url)),
            "GET",
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Protocol", "v5.channel.k8s.io"),
            ],
        )
        .await,
    );
    assert_eq!(resp.status, 400, "{resp:?}");

    // A client that upgrades but never opens its streams is given up on; the daemon serves on.
    let url = streaming::exec_url(cri, &c, &["true"], StreamOptions::OUTPUT).await;
    let idle = ok(
        "an idle upgrade",
        streaming::upgrade_spdy(&url, SPDY_REMOTE_COMMAND).await,
    );
    let (_, r) = spdy_exec(
        cri,
        &c,
        &["echo", "still"],
        StreamOptions::OUTPUT,
        SPDY_REMOTE_COMMAND,
    )
    .await;
    assert_eq!(r.stdout(), "still\n");
    drop(idle);

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let node = Node::start().await;
    let cri = &node.cri;
    let (pod, _, c) = node.pod_with_box("expiry").await;
    let early = streaming::exec_url(cri, &c, &["echo", "early"], StreamOptions::OUTPUT).await;
    let pf = streaming::port_forward_url(cri, &pod, &[80]).await;
    // A client that upgrades and then opens none of its streams is given up on after 30 s.
    let url = streaming::exec_url(cri, &c, &["true"], StreamOptions::OUTPUT).await;
    let idle = ok(
        "an idle upgrade",
        streaming::upgrade_spdy(&url, SPDY_REMOTE_COMMAND).await,
    );
    let opened = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), idle.handle.closed())
            .await
            .is_err(),
        "the server dropped a fresh session before its streams could come"
    );
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(5), idle.handle.closed())
            .await
            .is_ok(),
        "the server still holds a session without streams after {:?}",
        opened.elapsed()
    );
    for url in [&early, &pf] {
        let (resp, _) = ok(
            "expired token",
            streaming::raw_request(
                &ok("URL", Endpoint::parse(url)),
                "POST",
                &streaming::spdy_upgrade_headers(&["v4.channel.k8s.io", streaming::PORT_FORWARD]),
            )
            .await,
        );
        assert_eq!(resp.status, 404, "{url}: {resp:?}");
    }
    // A fresh one works.
    let (_, r) = spdy_exec(
        cri,
        &c,
        &["echo", "fresh"],
        StreamOptions::OUTPUT,
        SPDY_REMOTE_COMMAND,
    )
    .await;
    assert_eq!(r.stdout(), "fresh\n");

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

// ---------------------------------------------------------------------------------------------
// 8. a client that vanishes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_takes_its_process_with_it() {
    let node = Node::start().await;
    let cri = &node.cri;
    let (pod, _, c) = node.pod_with_box("vanish").await;

    // (transport, tty, abrupt close, early): each session's process must die with its
    // connection, whether that ends once output flows or right after the streams are open
    // (while the process may still be starting).
    let cases = [
        ("spdy", false, false, false),
        ("spdy", false, true, false),
        ("spdy", true, true, false),
        ("ws", false, false, false),
        ("ws", true, true, false),
        ("spdy", false, false, true),
        ("spdy", true, true, true),
        ("ws", false, true, true),
    ];
    let mut survivors = Vec::new();
    for (transport, tty, abrupt, early) in cases {
        let what = format!("{transport} tty={tty} abrupt={abrupt} early={early}");
        let m = marker();
        // Output keeps flowing while the connection is cut.
        let script = format!("M={m}; while true; do echo $M; sleep 0.05; done");
        let o = if tty {
            StreamOptions::TTY
        } else {
            StreamOptions::ALL
        };
        let url = streaming::exec_url(cri, &c, &sh(&script), o).await;
        let proxy = ok("proxy", Proxy::start(&url).await);
        let stdout: Output;
        let keep: Box<dyn std::any::Any + Send>;
        if transport == "spdy" {
            let r = ok(
                &what,
                SpdyRemote::connect(&proxy.url, SPDY_REMOTE_COMMAND, o).await,
            );
            stdout = r.stdout.clone().expect("stdout");
            keep = Box::new(r);
        } else {
            let r = ok(
                &what,
                WsRemote::connect(&proxy.url, &["v5.channel.k8s.io"]).await,
            );
            stdout = r.stdout();
            keep = Box::new(r);
        }
        if early {
            proxy.sever(abrupt).await;
            // Whatever was starting has started by now.
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            ok(
                &what,
                stdout.wait_contains(&format!("{m}"), SESSION_TIMEOUT).await,
            );
            wait_process(&format!("M={m};"), Duration::from_secs(10)).await;
            proxy.sever(abrupt).await;
        }
        let left = wait_none_naming(&format!("M={m};"), Duration::from_secs(10)).await;
        if !left.is_empty() {
            survivors.push(format!("{what}: {left:#?}"));
        }
        drop(keep);
    }
    // Clients that vanish right after opening their streams, in a row: the process must not
    // outlive them whatever stage its start had reached.
    let mut markers = Vec::new();
    for i in 0u32..12 {
        let m = marker();
        let script = format!("M={m}; while true; do echo $M; sleep 0.05; done");
        let o = if i % 3 == 2 {
            StreamOptions::TTY
        } else {
            StreamOptions::OUTPUT
        };
        let url = streaming::exec_url(cri, &c, &sh(&script), o).await;
        let proxy = ok("proxy", Proxy::start(&url).await);
        let r = ok(
            "early SPDY exec",
            SpdyRemote::connect(&proxy.url, SPDY_REMOTE_COMMAND, o).await,
        );
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(i) * 5)).await;
        }
        proxy.sever(i % 4 < 2).await;
        drop(r);
        markers.push(m);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for m in markers {
        let left = wait_none_naming(&format!("M={m};"), Duration::from_secs(10)).await;
        if !left.is_empty() {
            survivors.push(format!("early SPDY exec M={m}: {left:#?}"));
        }
    }
    assert!(
        survivors.is_empty(),
        "processes survived their client:\n{}",
        survivors.join("\n")
    );

    // The same with a process that writes nothing (only the connection's end can tell).
    let m = marker();
    let url = streaming::exec_url(cri, &c, &["sleep", &m.to_string()], StreamOptions::OUTPUT).await;
    let proxy = ok("proxy", Proxy::start(&url).await);
    let r = ok(
        "silent exec",
        SpdyRemote::connect(&proxy.url, SPDY_REMOTE_COMMAND, StreamOptions::OUTPUT).await,
    );
    wait_process(&format!("sleep {m}"), Duration::from_secs(10)).await;
    proxy.sever(false).await;
    let left = wait_none_naming(&format!("sleep {m}"), Duration::from_secs(10)).await;
    assert!(left.is_empty(), "sleep survived its client: {left:#?}");
    drop(r);

    // The daemon serves new sessions, and the container is unharmed.
    let (_, r) = spdy_exec(
        cri,
        &c,
        &["echo", "alive"],
        StreamOptions::OUTPUT,
        SPDY_REMOTE_COMMAND,
    )
    .await;
    assert_eq!(
        (r.stdout(), &r.status),
        ("alive\n".into(), &ExitStatus::Success)
    );
    let (_, r) = ws_exec(
        cri,
        &c,
        &["echo", "alive"],
        StreamOptions::OUTPUT,
        &["v5.channel.k8s.io"],
    )
    .await;
    assert_eq!(
        (r.stdout(), &r.status),
        ("alive\n".into(), &ExitStatus::Success)
    );
    assert_eq!(
        cri.status(&c).await.state,
        ContainerState::ContainerRunning as i32
    );

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

// ---------------------------------------------------------------------------------------------
// 9. garbage after the upgrade

/// Number of open file descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What the descriptors of `pid` point at (`socket:[…]`, `pipe:[…]`, paths), with the TCP
/// connections of its sockets, for messages.
fn fd_targets(pid: u32) -> Vec<String> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| {
                    let l = l.display().to_string();
                    let inode = l
                        .strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .map(str::to_owned);
                    match inode.and_then(|i| {
                        tcp.lines()
                            .find(|line| line.split_whitespace().nth(9) == Some(i.as_str()))
                            .map(|line| {
                                let f: Vec<&str> = line.split_whitespace().collect();
                                format!("{l} tcp {} -> {} state {}", f[1], f[2], f[3])
                            })
                    }) {
                        Some(t) => t,
                        None => l,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_upgrade_does_not_hurt_the_daemon() {
    let mut node = Node::start().await;
    let (pod, _, c) = node.pod_with_box("garbage").await;
    let daemon_pid = node.daemon.pid().expect("daemon pid");
    // One session first, so lazily created resources exist before the baseline.
    let (_, r) = spdy_exec(
        &node.cri,
        &c,
        &["true"],
        StreamOptions::OUTPUT,
        SPDY_REMOTE_COMMAND,
    )
    .await;
    assert_eq!(r.status, ExitStatus::Success);
    let fds_before = fd_count(daemon_pid);

    const WORKERS: u64 = 6;
    const SESSIONS_PER_WORKER: u64 = 50;
    const SEED: u64 = 0x006b_6565_6c73_6f6e;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let cri = node.cri.clone();
        let (c, pod) = (c.clone(), pod.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(SEED + w);
            let mut upgraded = 0u32;
            for i in 0..SESSIONS_PER_WORKER {
                let kind = rng.below(10);
                let url = if kind < 6 {
                    streaming::exec_url(&cri, &c, &["true"], StreamOptions::OUTPUT).await
                } else if kind < 7 {
                    streaming::exec_url(&cri, &c, &["cat"], StreamOptions::TTY).await
                } else {
                    streaming::port_forward_url(&cri, &pod, &[8080]).await
                };
                let endpoint = Endpoint::parse(&url).expect("URL");
                let ws = rng.below(5) == 0;
                let tunnel = rng.below(2) == 0;
                let headers = if ws {
                    streaming::ws_upgrade_headers(if kind < 7 {
                        "v5.channel.k8s.io"
                    } else if tunnel {
                        streaming::TUNNEL
                    } else {
                        streaming::PORT_FORWARD
                    })
                } else {
                    streaming::spdy_upgrade_headers(if kind < 7 {
                        &["v4.channel.k8s.io"]
                    } else {
                        &[streaming::PORT_FORWARD]
                    })
                };
                let (resp, tcp) = streaming::raw_request(&endpoint, "POST", &headers)
                    .await
                    .unwrap_or_else(|e| panic!("worker {w} session {i}: {e:#}"));
                let Some(mut tcp) = tcp else {
                    panic!("worker {w} session {i}: no upgrade: {resp:?}");
                };
                upgraded += 1;
                let junk = if ws {
                    // Random bytes where WebSocket frames belong, or a sane frame header
                    // followed by SPDY garbage.
                    let mut j = Vec::new();
                    if rng.below(2) == 0 {
                        let body = streaming::garbage_spdy(&mut rng);
                        j.push(0x82);
                        j.push(0xfe);
                        j.extend_from_slice(&(body.len().min(65535) as u16).to_be_bytes());
                        j.extend_from_slice(&[0, 0, 0, 0]);
                        j.extend_from_slice(&body[..body.len().min(65535)]);
                    } else {
                        let n = rng.below(600) as usize;
                        j = rng.bytes(n);
                    }
                    j
                } else {
                    streaming::garbage_spdy(&mut rng)
                };
                let _ = tcp.write_all(&junk).await;
                // Read what comes back for a moment, then half-close (sometimes) and drop.
                let mut sink = vec![0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_millis(30), async {
                    while let Ok(n) = tcp.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
                if rng.below(4) == 0 {
                    let _ = tcp.shutdown().await;
                }
                drop(tcp);
            }
            upgraded
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("fuzz worker");
    }
    eprintln!("{total} garbage sessions in {:?}", started.elapsed());
    assert_eq!(u64::from(total), WORKERS * SESSIONS_PER_WORKER);

    assert!(node.daemon.is_running(), "the daemon died");
    let (_, r) = spdy_exec(
        &node.cri,
        &c,
        &sh("echo after; exit 2"),
        StreamOptions::OUTPUT,
        SPDY_REMOTE_COMMAND,
    )
    .await;
    assert_eq!(
        (r.stdout(), &r.status),
        ("after\n".into(), &ExitStatus::ExitCode(2))
    );
    let (_, r) = ws_exec(
        &node.cri,
        &c,
        &["echo", "after"],
        StreamOptions::OUTPUT,
        &["v5.channel.k8s.io"],
    )
    .await;
    assert_eq!(r.stdout(), "after\n");
    // The sessions' sockets and pipes are released (sessions waiting for streams that never
    // came give up after 30 s).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = fd_count(daemon_pid);
        if now <= fds_before + 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon holds {now} fds, {fds_before} before the garbage:\n{:#?}",
            fd_targets(daemon_pid)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(node.daemon.is_running(), "the daemon died");

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

// ---------------------------------------------------------------------------------------------
// 10. concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_execs_keep_their_streams_apart() {
    let node = Node::start().await;
    let (pod, _, c) = node.pod_with_box("concurrent").await;
    const N: i32 = 10;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..N {
        let cri = node.cri.clone();
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let script = format!(
                "echo out-{i}; echo err-{i} >&2; sleep 0.5; seq 1 {} | tail -n 1; exit {i}",
                (i + 1) * 1000
            );
            let cmd = sh(&script);
            let r = if i % 2 == 0 {
                spdy_exec(&cri, &c, &cmd, StreamOptions::OUTPUT, SPDY_REMOTE_COMMAND)
                    .await
                    .1
            } else {
                ws_exec(
                    &cri,
                    &c,
                    &cmd,
                    StreamOptions::OUTPUT,
                    &["v5.channel.k8s.io"],
                )
                .await
                .1
            };
            (i, r)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.expect("exec task");
        assert_eq!(
            r.stdout(),
            format!("out-{i}\n{}\n", (i + 1) * 1000),
            "exec {i}"
        );
        assert_eq!(r.stderr(), format!("err-{i}\n"), "exec {i}");
        let want = if i == 0 {
            ExitStatus::Success
        } else {
            ExitStatus::ExitCode(i)
        };
        assert_eq!(r.status, want, "exec {i}");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "{N} concurrent execs of 0.5 s took {took:?}"
    );

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

// ---------------------------------------------------------------------------------------------
// 11. TLS

/// A CA and a serving certificate for 127.0.0.1 written to `dir`: (CA, certificate, key) paths.
fn write_test_pki(dir: &Path, ca_name: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("self-signing the CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("server params");
    server
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server
        .signed_by(&key, &issuer)
        .expect("signing the server cert");
    std::fs::create_dir_all(dir).expect("creating the PKI directory");
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("writing the CA");
    std::fs::write(&paths.1, cert.pem()).expect("writing the certificate");
    std::fs::write(&paths.2, key.serialize_pem()).expect("writing the key");
    (paths.0, paths.1, paths.2)
}

/// Exec over SPDY through a TLS connection made with `connector`.
async fn tls_spdy_exec(
    connector: &tokio_rustls::TlsConnector,
    url: &str,
    o: StreamOptions,
) -> (String, Finished) {
    let endpoint = ok("https URL", Endpoint::parse_https(url));
    let tls = ok(
        "TLS connection",
        streaming::tls_connect(connector, &endpoint).await,
    );
    let remote = ok(
        "SPDY exec over TLS",
        SpdyRemote::connect_over(tls, &endpoint, SPDY_REMOTE_COMMAND, o).await,
    );
    let protocol = remote.protocol.clone();
    let done = ok("SPDY exec over TLS", remote.finish(SESSION_TIMEOUT).await);
    (protocol, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_tls() {
    let mut node = Node::start_with(|base| {
        let (_, cert, key) = write_test_pki(&base.join("tls"), "keelson streaming test CA");
        vec![
            "--stream-tls-cert".into(),
            cert.display().to_string(),
            "--stream-tls-key".into(),
            key.display().to_string(),
        ]
    })
    .await;
    let tls_dir = node.base().join("tls");
    let ca_pem = std::fs::read(tls_dir.join("ca.pem")).expect("reading the CA");
    let connector = ok("TLS client", streaming::tls_connector(&ca_pem));
    let (pod, _, c) = node.pod_with_box("tls").await;
    let cri = &node.cri.clone();

    // The URL is https, on loopback, and an exec over it works end to end.
    let url = streaming::exec_url(cri, &c, &sh("echo tls-ok; exit 4"), StreamOptions::OUTPUT).await;
    assert!(url.starts_with("https://127.0.0.1:"), "Exec URL {url:?}");
    let (protocol, r) = tls_spdy_exec(&connector, &url, StreamOptions::OUTPUT).await;
    assert_eq!(protocol, "v4.channel.k8s.io");
    assert_eq!((r.stdout(), r.stderr()), ("tls-ok\n".into(), String::new()));
    assert_eq!(r.status, ExitStatus::ExitCode(4), "{r:?}");
    let status: serde_json::Value = serde_json::from_slice(&r.status_bytes).expect("JSON status");
    assert_eq!(status["reason"], "NonZeroExitCode");

    // A client that trusts another CA refuses the server's certificate.
    let stranger = write_test_pki(&tls_dir.join("other"), "some other CA");
    let other_ca = std::fs::read(&stranger.0).expect("reading the other CA");
    let untrusting = ok("TLS client", streaming::tls_connector(&other_ca));
    let url = streaming::exec_url(cri, &c, &["echo", "again"], StreamOptions::OUTPUT).await;
    let endpoint = ok("https URL", Endpoint::parse_https(&url));
    match streaming::tls_connect(&untrusting, &endpoint).await {
        Ok(_) => panic!("a client trusting another CA completed a TLS handshake"),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                e.to_ascii_lowercase().contains("certificate"),
                "handshake against another CA failed for another reason: {e}"
            );
        }
    }

    // Plain HTTP on the TLS port gets no streaming session (and no HTTP answer at all: the
    // TLS handshake fails and the server closes the connection).
    let headers = streaming::spdy_upgrade_headers(SPDY_REMOTE_COMMAND);
    match streaming::raw_request(&endpoint, "POST", &headers).await {
        Ok((resp, upgraded)) => {
            assert!(
                upgraded.is_none() && resp.status != 101,
                "plain HTTP on the TLS port was upgraded: {resp:?}"
            );
            eprintln!(
                "plain HTTP on the TLS port: {} {:?}",
                resp.status, resp.body
            );
        }
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                e.contains("connection ended in the response head"),
                "plain HTTP on the TLS port: {e}"
            );
            eprintln!("plain HTTP on the TLS port: {e}");
        }
    }
    // Neither attempt reached the router: the token still works, over TLS, and a fresh one too.
    let (_, r) = tls_spdy_exec(&connector, &url, StreamOptions::OUTPUT).await;
    assert_eq!(
        (r.stdout(), &r.status),
        ("again\n".into(), &ExitStatus::Success)
    );
    let url = streaming::exec_url(cri, &c, &["echo", "fresh"], StreamOptions::OUTPUT).await;
    let (_, r) = tls_spdy_exec(&connector, &url, StreamOptions::OUTPUT).await;
    assert_eq!(
        (r.stdout(), &r.status),
        ("fresh\n".into(), &ExitStatus::Success)
    );

    // A daemon given a certificate without its key (or a key without its certificate) refuses
    // to start, saying what is missing; it never gets to serve CRI.
    for (flag, file, missing) in [
        ("--stream-tls-cert", "server.pem", "key"),
        ("--stream-tls-key", "server-key.pem", "certificate"),
    ] {
        let base = node.base().join(format!("half-{missing}"));
        let dirs = pods::short_dirs(&base);
        let cni = base.join("cni");
        let certs = base.join("certs.d");
        std::fs::create_dir_all(&cni).expect("creating an empty CNI directory");
        std::fs::create_dir_all(&certs).expect("creating an empty certs.d");
        std::fs::write(base.join("runtime.toml"), "").expect("writing an empty config");
        let opts = DaemonOptions {
            dirs: Some(dirs.clone()),
            extra_args: vec![
                "--config".into(),
                base.join("runtime.toml").display().to_string(),
                "--registry-config-dir".into(),
                certs.display().to_string(),
                "--cgroup-driver".into(),
                "cgroupfs".into(),
                "--cni-conf-dir".into(),
                cni.display().to_string(),
                flag.into(),
                tls_dir.join(file).display().to_string(),
            ],
            ready_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let err = match RuntimeDaemon::start(opts).await {
            Ok(_) => panic!("keelson-runtime started with {flag} alone"),
            Err(e) => format!("{e:#}"),
        };
        let log = std::fs::read_to_string(&dirs.log).unwrap_or_default();
        eprintln!("{flag} alone: {err}");
        assert!(
            err.contains("exited during start-up") && err.contains("exit status: 1"),
            "{flag} alone: {err}"
        );
        let complaint = log
            .lines()
            .find(|l| l.starts_with("keelson-runtime:"))
            .unwrap_or_else(|| panic!("{flag} alone: no error line in the log:\n{log}"));
        assert!(
            complaint.contains("stream") && complaint.contains(missing),
            "{flag} alone: the error does not name the missing {missing}: {complaint:?}"
        );
        assert!(
            !dirs.socket.exists(),
            "{flag} alone: the daemon left its CRI socket"
        );
    }

    assert!(node.daemon.is_running(), "the daemon died");
    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}
