//! End-to-end tests of pod sandboxes and containers through the CRI RuntimeService of
//! `keelson-runtime`, as root, with real containers run by `keelson-shim`.
//!
//! Each test starts its own registry (the busybox image is pushed there and pulled over CRI),
//! its own CNI network (a bridge `kt<4 hex>`, a /24 of 10.236.0.0/16 behind an unreachable
//! route, host-local reservations in the test's directory, portmap) and its own daemon, so tests
//! run in parallel without sharing state. Every test ends by removing what it made and checking
//! that nothing is left on the host: mounts, veths, IP reservations, cgroups, shim processes,
//! sandbox and container directories.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keelson_cri::v1::{
    ContainerFilter, ContainerState, Mount, PodSandboxConfig, PodSandboxState, PortMapping,
    Protocol, SecurityProfile, security_profile::ProfileType,
};
use keelson_integration::busybox;
use keelson_integration::daemon::{DaemonDirs, RuntimeDaemon};
use keelson_integration::oci::{self, Compression, ImageConfig, ManifestFormat};
use keelson_integration::pods::{
    self, Cri, HostSnapshot, Scrubber, TestNetwork, container_config, container_filter_state,
    dns_config, pod_config, pod_filter_id, pod_filter_labels, pod_filter_state, sh,
};
use keelson_integration::registry::{Registry, free_port};
use tonic::Code;

/// How long a container may take to reach a state the test waits for.
const STATE_TIMEOUT: Duration = Duration::from_secs(30);
/// A sandbox or container id that no daemon ever hands out.
const UNKNOWN_ID: &str = "0000000000000000000000000000000000000000000000000000000000000000";

// ---------------------------------------------------------------------------------------------
// helpers

/// One node under test. Fields drop in order: the daemon first, then the scrubber (which cleans
/// up after a failed test), the network (bridge, route) and last the directory.
struct Node {
    daemon: RuntimeDaemon,
    cri: Cri,
    /// The busybox image, pulled.
    image: String,
    registry: Registry,
    scrubber: Scrubber,
    net: TestNetwork,
    dirs: DaemonDirs,
    base: tempfile::TempDir,
    /// Leaks found by [`Node::assert_clean`], reported by [`Node::finish`] so that one leak does
    /// not hide what the rest of the test would find.
    leaks: std::sync::Mutex<Vec<String>>,
}

impl Node {
    /// A registry with busybox, a network and a daemon started with `env`; busybox is pulled.
    async fn start(env: &[(&str, &str)]) -> Node {
        let base = tempfile::Builder::new()
            .prefix("kp")
            .tempdir()
            .expect("creating the test directory");
        let dirs = pods::short_dirs(base.path());
        let net = TestNetwork::create(&base.path().join("cni")).expect("creating the CNI network");
        let scrubber = Scrubber::new(base.path(), &dirs);
        let registry = Registry::start().expect("starting the registry");
        let daemon = pods::start_daemon(&dirs, &net, env)
            .await
            .expect("starting keelson-runtime");
        let cri = Cri::connect(&daemon)
            .await
            .expect("connecting to the daemon");
        let mut node = Node {
            daemon,
            cri,
            image: String::new(),
            registry,
            scrubber,
            net,
            dirs,
            base,
            leaks: std::sync::Mutex::new(Vec::new()),
        };
        let busybox = busybox::image(ManifestFormat::Oci, Compression::Gzip)
            .expect("building the busybox image");
        node.image = node.push_and_pull("pods/busybox", &busybox).await;
        node
    }

    /// Pushes `image` as `repo:1` and pulls it through CRI; returns the reference.
    async fn push_and_pull(&self, repo: &str, image: &oci::Image) -> String {
        let push = self.registry.push_client().expect("push client");
        push.push_image(repo, "1", image)
            .await
            .unwrap_or_else(|e| panic!("pushing {repo}: {e:#}"));
        let reference = self.registry.reference(repo, "1");
        self.cri.pull(&reference).await;
        reference
    }

    fn base(&self) -> &Path {
        self.base.path()
    }

    /// A pod config whose containers log under `<base>/logs/<name>`.
    fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let mut config = pod_config(name);
        config.log_directory = self.base().join("logs").join(name).display().to_string();
        config
    }

    fn snapshot(&self) -> HostSnapshot {
        HostSnapshot::take(self.base(), &self.dirs, &self.net)
    }

    /// Runs a pod from `config`, checks it is ready with an address of this node's network.
    async fn ready_pod(&self, config: &PodSandboxConfig) -> (String, String) {
        let id = self.cri.run_pod(config).await;
        self.scrubber.track_pod(&id);
        let status = self.cri.pod_status(&id).await;
        assert_eq!(
            status.state,
            PodSandboxState::SandboxReady as i32,
            "{status:?}"
        );
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        assert!(
            self.net.contains(&ip),
            "pod ip {ip:?} is not in {}",
            self.net.subnet()
        );
        (id, ip)
    }

    /// Mounts under the test directory whose path names `id` (a pod's namespace pins and shm
    /// under `<state>/sandboxes/<id>/`, a container's rootfs), whatever the layout.
    fn mounts_of(&self, id: &str) -> Vec<PathBuf> {
        let prefix = &id[..id.len().min(32)];
        pods::mounts_under(self.base())
            .into_iter()
            .filter(|m| m.to_string_lossy().contains(prefix))
            .collect()
    }

    /// The pod's pins that are mounted, by file name (`net`, `ipc`, `uts`, `shm`).
    fn pins_of(&self, id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .mounts_of(id)
            .iter()
            .filter_map(|m| m.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Kills the daemon (SIGKILL) and starts a fresh one on the same directories with `env`.
    async fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.daemon.kill_9().expect("killing the daemon");
        self.daemon = pods::start_daemon(&self.dirs, &self.net, env)
            .await
            .expect("restarting keelson-runtime");
        self.cri = Cri::connect(&self.daemon)
            .await
            .expect("reconnecting to the daemon");
    }

    /// Removes every pod, then checks the host is clean: no mounts under the test directory,
    /// no shims, no veths, no reservations, no sandbox or container directories, and no cgroups
    /// of the given pods.
    async fn remove_all_and_check_clean(&self, pod_ids: &[&str]) {
        for id in self.cri.pod_ids().await {
            self.cri.remove_pod(&id).await;
        }
        assert!(self.cri.pod_ids().await.is_empty());
        assert!(self.cri.container_ids().await.is_empty());
        self.assert_clean(pod_ids).await;
    }

    /// Waits (≤ 5 s, shims exit asynchronously) until the host is clean; records what is left
    /// as a leak for [`Node::finish`].
    async fn assert_clean(&self, pod_ids: &[&str]) {
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
                let mut what = Vec::new();
                if !snap.is_clean() {
                    what.push(format!("{snap:#?}"));
                }
                if !cgroups.is_empty() {
                    what.push(format!("pod cgroups: {cgroups:#?}"));
                }
                self.leak(what.join("\n"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn leak(&self, what: String) {
        eprintln!("LEAK: {what}");
        self.leaks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }

    /// Ends the test: fails if [`Node::assert_clean`] found leaks.
    fn finish(self) {
        let leaks = std::mem::take(&mut *self.leaks.lock().unwrap_or_else(|e| e.into_inner()));
        if !leaks.is_empty() {
            panic!(
                "the node left things behind ({} times):\n{}",
                leaks.len(),
                leaks.join("\n---\n")
            );
        }
    }
}

fn log_path(config: &PodSandboxConfig, file: &str) -> PathBuf {
    Path::new(&config.log_directory).join(file)
}

/// A container config with a log file `<name>.log`.
fn logged(name: &str, image: &str, command: &[&str]) -> keelson_cri::v1::ContainerConfig {
    let mut c = container_config(name, image, command);
    c.log_path = format!("{name}.log");
    c
}

fn ok<T>(what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

fn expect_code<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, tonic::Status>,
    code: Code,
) -> tonic::Status {
    match r {
        Ok(v) => panic!("{what} succeeded ({v:?}) but must fail with {code:?}"),
        Err(s) => {
            assert_eq!(
                s.code(),
                code,
                "{what}: wrong status code; message: {}",
                s.message()
            );
            s
        }
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn container_ids(list: &[keelson_cri::v1::Container]) -> Vec<String> {
    sorted(list.iter().map(|c| c.id.clone()).collect())
}

/// Reads `<label> <number>` lines of a log (e.g. `line 7`) into numbers.
fn numbered(records: &[pods::LogRecord], label: &str) -> Vec<u64> {
    pods::stdout_lines(records)
        .iter()
        .filter_map(|l| l.strip_prefix(label)?.trim().parse().ok())
        .collect()
}

/// Polls `GET /` on `addr` until it answers (a server in a container takes a moment to bind).
async fn http_get_retry(addr: SocketAddr, timeout: Duration) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::task::spawn_blocking(move || pods::http_get(addr, "/"))
            .await
            .expect("http task")
        {
            Ok(answer) => return answer,
            Err(e) if Instant::now() > deadline => panic!("GET http://{addr}/: {e:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle_with_network() {
    let node = Node::start(&[]).await;
    let cri = &node.cri;
    let mut pc = node.pod_config("lifecycle");
    pc.hostname = "keelson-web-0".into();
    pc.dns_config = Some(dns_config(
        &["10.96.0.10", "10.96.0.11"],
        &["keelson-test.svc.cluster.local"],
        &["ndots:5"],
    ));
    let host_port = i32::from(free_port().expect("a free port"));
    pc.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: "127.0.0.1".into(),
    }];
    pc.labels.insert("tier".into(), "front".into());
    let (pod, ip) = node.ready_pod(&pc).await;

    // The pod's host resources exist.
    assert_eq!(node.net.reservations(), vec![ip.clone()]);
    assert_eq!(
        node.net.reservation_owner(&ip).as_deref(),
        Some(pod.as_str())
    );
    let pins = node.pins_of(&pod);
    for pin in ["ipc", "net", "shm", "uts"] {
        assert!(
            pins.iter().any(|p| p == pin),
            "no {pin} among the pod's mounts: {:?}",
            node.mounts_of(&pod)
        );
    }
    assert_eq!(
        node.net.veths().len(),
        1,
        "one veth on {}",
        node.net.bridge()
    );
    assert!(
        !ok(
            "iptables",
            pods::nat_rules_naming(&format!("--dport {host_port}"))
        )
        .is_empty(),
        "no DNAT rule for host port {host_port}"
    );

    // A container sees the pod's hostname, DNS and address.
    let main_cfg = logged(
        "main",
        &node.image,
        &sh("hostname; cat /etc/resolv.conf; ip -o addr show eth0; sleep 1000"),
    );
    let main = cri.run(&pod, &main_cfg, &pc).await;
    let want_inet = format!("inet {ip}/24");
    let records = ok(
        "main's log",
        pods::wait_log(&log_path(&pc, "main.log"), STATE_TIMEOUT, |r| {
            pods::stdout_lines(r).iter().any(|l| l.contains("inet "))
        })
        .await,
    );
    let lines = pods::stdout_lines(&records);
    assert_eq!(lines[0], "keelson-web-0", "hostname first: {lines:#?}");
    for want in [
        "nameserver 10.96.0.10",
        "nameserver 10.96.0.11",
        "search keelson-test.svc.cluster.local",
        "options ndots:5",
    ] {
        assert!(lines.iter().any(|l| l == want), "{want:?} in {lines:#?}");
    }
    assert!(
        lines.iter().any(|l| l.contains(&want_inet)),
        "{want_inet:?} in {lines:#?}"
    );

    // A web server in the pod answers on the pod address and on the mapped host port.
    let web_cfg = logged(
        "web",
        &node.image,
        &sh(
            "mkdir -p /www && echo hello-from-the-pod > /www/index.html && exec httpd -f -p 8080 -h /www",
        ),
    );
    let web = cri.run(&pod, &web_cfg, &pc).await;
    let pod_addr: SocketAddr = format!("{ip}:8080").parse().expect("pod address");
    let (code, body) = http_get_retry(pod_addr, Duration::from_secs(15)).await;
    assert_eq!((code, body.as_str()), (200, "hello-from-the-pod\n"));
    let host_addr = SocketAddr::from(([127, 0, 0, 1], host_port as u16));
    let (code, body) = http_get_retry(host_addr, Duration::from_secs(5)).await;
    assert_eq!(
        (code, body.as_str()),
        (200, "hello-from-the-pod\n"),
        "through the host port"
    );

    // A container that is created but never started.
    let idle = cri
        .create(
            &pod,
            &container_config("idle", &node.image, &["sleep", "1000"]),
            &pc,
        )
        .await;

    // ListPodSandbox filters.
    let listed = |items: Vec<keelson_cri::v1::PodSandbox>| -> Vec<String> {
        sorted(items.into_iter().map(|p| p.id).collect())
    };
    assert_eq!(
        listed(cri.list_pods(Some(pod_filter_id(&pod[..12]))).await),
        vec![pod.clone()]
    );
    assert_eq!(
        listed(
            cri.list_pods(Some(pod_filter_state(PodSandboxState::SandboxReady)))
                .await
        ),
        vec![pod.clone()]
    );
    assert!(
        cri.list_pods(Some(pod_filter_state(PodSandboxState::SandboxNotready)))
            .await
            .is_empty()
    );
    assert_eq!(
        listed(
            cri.list_pods(Some(pod_filter_labels(&[
                ("test-pod", "lifecycle"),
                ("tier", "front")
            ])))
            .await
        ),
        vec![pod.clone()]
    );
    assert!(
        cri.list_pods(Some(pod_filter_labels(&[("tier", "back")])))
            .await
            .is_empty()
    );
    let other_prefix = if pod.starts_with('0') { "1" } else { "0" };
    assert!(
        cri.list_pods(Some(pod_filter_id(other_prefix)))
            .await
            .is_empty()
    );
    let all = cri.list_pods(None).await;
    assert_eq!(all.len(), 1);
    let meta = all[0].metadata.clone().expect("pod metadata");
    assert_eq!(
        (meta.name.as_str(), meta.namespace.as_str()),
        ("lifecycle", pods::POD_NAMESPACE)
    );
    assert_eq!(all[0].labels.get("tier").map(String::as_str), Some("front"));

    // ListContainers filters.
    let by = |f: ContainerFilter| async move { container_ids(&cri.list_containers(Some(f)).await) };
    assert_eq!(
        by(ContainerFilter {
            id: main[..12].to_owned(),
            ..Default::default()
        })
        .await,
        vec![main.clone()]
    );
    assert_eq!(
        by(container_filter_state(ContainerState::ContainerRunning)).await,
        sorted(vec![main.clone(), web.clone()])
    );
    assert_eq!(
        by(container_filter_state(ContainerState::ContainerCreated)).await,
        vec![idle.clone()]
    );
    assert!(
        by(container_filter_state(ContainerState::ContainerExited))
            .await
            .is_empty()
    );
    assert_eq!(
        by(ContainerFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        })
        .await,
        sorted(vec![main.clone(), web.clone(), idle.clone()])
    );
    assert!(
        by(ContainerFilter {
            pod_sandbox_id: UNKNOWN_ID.into(),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        by(ContainerFilter {
            label_selector: [("test-container".to_owned(), "web".to_owned())].into(),
            ..Default::default()
        })
        .await,
        vec![web.clone()]
    );
    assert!(
        by(ContainerFilter {
            label_selector: [("test-container".to_owned(), "web".to_owned())].into(),
            state: container_filter_state(ContainerState::ContainerCreated).state,
            ..Default::default()
        })
        .await
        .is_empty()
    );
    for c in cri.list_containers(None).await {
        assert_eq!(c.pod_sandbox_id, pod);
        assert!(!c.image_ref.is_empty(), "{c:?}");
    }
    assert!(!pods::container_cgroups(&pod, &main).is_empty());
    assert!(!pods::pod_cgroups(&pod).is_empty());

    // StopPodSandbox: every container exits, the network and namespaces go, the record stays.
    cri.stop_pod(&pod).await;
    for c in [&main, &web, &idle] {
        let status = cri.status(c).await;
        assert_eq!(
            status.state,
            ContainerState::ContainerExited as i32,
            "{status:?}"
        );
    }
    assert_eq!(cri.status(&main).await.exit_code, 137);
    let status = cri.pod_status(&pod).await;
    assert_eq!(
        status.state,
        PodSandboxState::SandboxNotready as i32,
        "{status:?}"
    );
    assert!(
        node.net.reservations().is_empty(),
        "IP still reserved: {:?}",
        node.net.reservations()
    );
    assert!(
        node.mounts_of(&pod).is_empty(),
        "pins still mounted after StopPodSandbox: {:?}",
        node.mounts_of(&pod)
    );
    assert!(
        node.net.veths().is_empty(),
        "veths left: {:?}",
        node.net.veths()
    );
    assert!(
        ok(
            "iptables",
            pods::nat_rules_naming(&format!("--dport {host_port}"))
        )
        .is_empty(),
        "DNAT rule for host port {host_port} left after StopPodSandbox"
    );
    assert_eq!(
        cri.pod_ids().await,
        vec![pod.clone()],
        "a stopped pod stays listed"
    );
    cri.stop_pod(&pod).await;

    // RemovePodSandbox: everything goes.
    cri.remove_pod(&pod).await;
    assert!(cri.pod_ids().await.is_empty());
    assert!(cri.container_ids().await.is_empty());
    expect_code(
        "PodSandboxStatus of a removed pod",
        cri.try_pod_status(&pod).await,
        Code::NotFound,
    );
    expect_code(
        "ContainerStatus of a removed container",
        cri.try_status(&main).await,
        Code::NotFound,
    );
    let left = pods::paths_naming(node.base(), &pod);
    if !left.is_empty() {
        node.leak(format!("files of pod {pod}: {left:?}"));
    }
    for c in [&main, &web, &idle] {
        let left = pods::paths_naming(node.base(), c);
        if !left.is_empty() {
            node.leak(format!("files of container {c}: {left:?}"));
        }
        let cgroups = pods::container_cgroups(&pod, c);
        if !cgroups.is_empty() {
            node.leak(format!("cgroups of container {c}: {cgroups:?}"));
        }
    }
    node.assert_clean(&[&pod]).await;

    // Stop and remove are idempotent, for removed and for never-known ids.
    for id in [pod.as_str(), UNKNOWN_ID, "no-such-pod"] {
        cri.stop_pod(id).await;
        cri.remove_pod(id).await;
    }
    for id in [main.as_str(), UNKNOWN_ID, "no-such-container"] {
        cri.stop(id, 0).await;
        cri.remove(id).await;
    }
    node.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_exit_codes_and_reasons() {
    let node = Node::start(&[]).await;
    let cri = &node.cri;
    let pc = node.pod_config("exits");
    let (pod, _) = node.ready_pod(&pc).await;

    let zero = cri
        .run(
            &pod,
            &container_config("zero", &node.image, &sh("exit 0")),
            &pc,
        )
        .await;
    let three = cri
        .run(
            &pod,
            &container_config("three", &node.image, &sh("exit 3")),
            &pc,
        )
        .await;
    let status = cri
        .wait_state(&zero, ContainerState::ContainerExited, STATE_TIMEOUT)
        .await;
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (0, "Completed"),
        "{status:?}"
    );
    let status = cri
        .wait_state(&three, ContainerState::ContainerExited, STATE_TIMEOUT)
        .await;
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (3, "Error"),
        "{status:?}"
    );
    for id in [&zero, &three] {
        let s = cri.status(id).await;
        assert!(
            s.created_at > 0 && s.created_at <= s.started_at && s.started_at <= s.finished_at,
            "timestamps out of order: created {} started {} finished {}",
            s.created_at,
            s.started_at,
            s.finished_at
        );
    }

    // StopContainer with timeout 0 kills at once.
    let sleeper = cri
        .run(
            &pod,
            &container_config("sleeper", &node.image, &["sleep", "1000"]),
            &pc,
        )
        .await;
    let running = cri.status(&sleeper).await;
    assert_eq!(running.state, ContainerState::ContainerRunning as i32);
    assert_eq!(running.finished_at, 0);
    let t = Instant::now();
    cri.stop(&sleeper, 0).await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "StopContainer(timeout 0) took {:?}",
        t.elapsed()
    );
    let status = cri.status(&sleeper).await;
    assert_eq!(status.state, ContainerState::ContainerExited as i32);
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "Error"),
        "{status:?}"
    );
    assert!(status.started_at >= status.created_at && status.finished_at >= status.started_at);
    // Stopping an exited container is a no-op; starting it again is refused.
    cri.stop(&sleeper, 0).await;
    expect_code(
        "StartContainer of an exited container",
        cri.try_start(&sleeper).await,
        Code::FailedPrecondition,
    );

    // StopContainer sends SIGTERM by default, and the image's StopSignal when it sets one.
    let trap = |sig: &str, code: u8| {
        format!(
            "trap 'echo got-{sig}; exit {code}' {sig}; echo ready; while true; do sleep 0.1; done"
        )
    };
    let signalled = ok(
        "stop-signal image",
        pods::with_stop_signal(
            &ok(
                "busybox",
                busybox::image(ManifestFormat::Oci, Compression::Gzip),
            ),
            "SIGUSR1",
        ),
    );
    let usr1_image = node.push_and_pull("pods/stopsignal", &signalled).await;
    let term_cfg = logged("term", &node.image, &sh(&trap("TERM", 9)));
    let usr1_cfg = logged("usr1", &usr1_image, &sh(&trap("USR1", 7)));
    let term = cri.run(&pod, &term_cfg, &pc).await;
    let usr1 = cri.run(&pod, &usr1_cfg, &pc).await;
    for file in ["term.log", "usr1.log"] {
        ok(
            file,
            pods::wait_log(&log_path(&pc, file), STATE_TIMEOUT, |r| {
                pods::stdout_lines(r).iter().any(|l| l == "ready")
            })
            .await,
        );
    }
    for (id, file, code, word) in [
        (&term, "term.log", 9, "got-TERM"),
        (&usr1, "usr1.log", 7, "got-USR1"),
    ] {
        let t = Instant::now();
        cri.stop(id, 20).await;
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{file}: the stop signal was not delivered (StopContainer took {:?})",
            t.elapsed()
        );
        let status = cri.status(id).await;
        assert_eq!(
            (status.exit_code, status.reason.as_str()),
            (code, "Error"),
            "{file}: {status:?}"
        );
        let lines = pods::stdout_lines(&ok(file, pods::read_cri_log(&log_path(&pc, file))));
        assert!(lines.iter().any(|l| l == word), "{word} in {lines:?}");
    }

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync() {
    let node = Node::start(&[]).await;
    let cri = &node.cri;
    let pc = node.pod_config("exec");
    let (pod, _) = node.ready_pod(&pc).await;
    let c = cri
        .run(
            &pod,
            &container_config("box", &node.image, &["sleep", "1000"]),
            &pc,
        )
        .await;

    let r = cri
        .exec_sync(&c, &sh("echo out; echo err >&2; exit 5"), 10)
        .await
        .unwrap_or_else(|s| panic!("ExecSync: {:?}: {}", s.code(), s.message()));
    assert_eq!(String::from_utf8_lossy(&r.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&r.stderr), "err\n");
    assert_eq!(r.exit_code, 5);
    let r = cri
        .exec_sync(&c, &["hostname"], 10)
        .await
        .unwrap_or_else(|s| panic!("ExecSync hostname: {:?}: {}", s.code(), s.message()));
    assert_eq!(
        (String::from_utf8_lossy(&r.stdout).trim(), r.exit_code),
        ("exec", 0),
        "exec runs in the pod's UTS namespace"
    );

    // The deadline: DEADLINE_EXCEEDED in about the timeout, and the command is gone.
    let t = Instant::now();
    expect_code(
        "ExecSync past its timeout",
        cri.exec_sync(&c, &["sleep", "37"], 2).await,
        Code::DeadlineExceeded,
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(4500),
        "ExecSync with a 2 s timeout answered after {took:?}"
    );
    let ps = cri
        .exec_sync(&c, &["ps", "-o", "pid,args"], 10)
        .await
        .unwrap_or_else(|s| panic!("ExecSync ps: {:?}: {}", s.code(), s.message()));
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(
        !ps.contains("sleep 37"),
        "the timed-out command still runs:\n{ps}"
    );

    // Containers that do not run.
    let created = cri
        .create(
            &pod,
            &container_config("created", &node.image, &["sleep", "1000"]),
            &pc,
        )
        .await;
    expect_code(
        "ExecSync in a created container",
        cri.exec_sync(&created, &["true"], 5).await,
        Code::FailedPrecondition,
    );
    cri.stop(&c, 0).await;
    expect_code(
        "ExecSync in an exited container",
        cri.exec_sync(&c, &["true"], 5).await,
        Code::FailedPrecondition,
    );
    expect_code(
        "ExecSync in an unknown container",
        cri.exec_sync(UNKNOWN_ID, &["true"], 5).await,
        Code::NotFound,
    );

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_killed() {
    let node = Node::start(&[]).await;
    let cri = &node.cri;
    let pc = node.pod_config("oom");
    let (pod, _) = node.ready_pod(&pc).await;
    const LIMIT: i64 = 32 << 20;

    // The limit lands in the container's memory cgroup.
    let calm = cri
        .run(
            &pod,
            &pods::with_memory_limit(
                container_config("calm", &node.image, &["sleep", "1000"]),
                LIMIT,
            ),
            &pc,
        )
        .await;
    let limit_file = Path::new("/sys/fs/cgroup/memory/keelson")
        .join(format!("pod-{pod}"))
        .join(&calm)
        .join("memory.limit_in_bytes");
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        let limit = std::fs::read_to_string(&limit_file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", limit_file.display()));
        assert_eq!(limit.trim(), LIMIT.to_string());
    }

    let hog = cri
        .run(
            &pod,
            &pods::with_memory_limit(
                container_config("hog", &node.image, &sh("x=a; while true; do x=$x$x; done")),
                LIMIT,
            ),
            &pc,
        )
        .await;
    let status = cri
        .wait_state(
            &hog,
            ContainerState::ContainerExited,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, 137, "{status:?}");
    // The neighbour with the same limit is untouched.
    assert_eq!(
        cri.status(&calm).await.state,
        ContainerState::ContainerRunning as i32
    );

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_container_log() {
    let node = Node::start(&[]).await;
    let cri = &node.cri;
    let pc = node.pod_config("logs");
    let (pod, _) = node.ready_pod(&pc).await;
    let cfg = logged(
        "ticker",
        &node.image,
        &sh("i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"),
    );
    let c = cri.run(&pod, &cfg, &pc).await;
    let path = log_path(&pc, "ticker.log");
    let rotated = log_path(&pc, "ticker.log.1");
    ok(
        "first lines",
        pods::wait_log(&path, STATE_TIMEOUT, |r| numbered(r, "tick ").len() >= 5).await,
    );

    // As the kubelet rotates: rename, then ReopenContainerLog.
    std::fs::rename(&path, &rotated).expect("renaming the log");
    tokio::time::sleep(Duration::from_millis(300)).await;
    cri.reopen_log(&c)
        .await
        .unwrap_or_else(|s| panic!("ReopenContainerLog: {:?}: {}", s.code(), s.message()));
    let fresh = ok(
        "lines in the new file",
        pods::wait_log(&path, STATE_TIMEOUT, |r| numbered(r, "tick ").len() >= 5).await,
    );
    let old_len = std::fs::metadata(&rotated).expect("rotated log").len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        std::fs::metadata(&rotated).expect("rotated log").len(),
        old_len,
        "the rotated file still grows after ReopenContainerLog"
    );
    let later = ok("new file", pods::read_cri_log(&path));
    assert!(
        later.len() > fresh.len(),
        "the new file does not grow: {} then {} records",
        fresh.len(),
        later.len()
    );

    // No line lost or duplicated across the two files.
    let old = numbered(&ok("rotated", pods::read_cri_log(&rotated)), "tick ");
    let new = numbered(&later, "tick ");
    let all: Vec<u64> = old.iter().chain(new.iter()).copied().collect();
    let expected: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, expected, "old file {old:?}, new file {new:?}");

    // Only a running container's log can be reopened.
    cri.stop(&c, 0).await;
    expect_code(
        "ReopenContainerLog of an exited container",
        cri.reopen_log(&c).await,
        Code::FailedPrecondition,
    );

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_restart_keeps_containers() {
    let mut node = Node::start(&[]).await;
    let pc = node.pod_config("restart");
    let (pod, ip) = node.ready_pod(&pc).await;
    let long = node
        .cri
        .run(
            &pod,
            &container_config("long", &node.image, &["sleep", "1000"]),
            &pc,
        )
        .await;
    let short = node
        .cri
        .run(
            &pod,
            &container_config("short", &node.image, &["sleep", "2"]),
            &pc,
        )
        .await;
    let short_started = Instant::now();
    let before = node.cri.status(&long).await;
    assert_eq!(before.state, ContainerState::ContainerRunning as i32);
    let init = pods::container_pids(&pod, &long);
    assert_eq!(init.len(), 1, "one process in the container: {init:?}");
    let init = init[0];
    let shims = pods::shims_naming(node.base());
    assert_eq!(shims.len(), 2, "one shim per container: {shims:#?}");

    // SIGKILL the daemon; `short` exits while it is down.
    node.daemon.kill_9().expect("killing the daemon");
    let wait = Duration::from_secs(3).saturating_sub(short_started.elapsed());
    tokio::time::sleep(wait).await;
    assert!(
        pods::process_alive(init),
        "the container died with the daemon"
    );
    node.restart_with(&[]).await;

    let after = node.cri.status(&long).await;
    assert_eq!(
        after.state,
        ContainerState::ContainerRunning as i32,
        "{after:?}"
    );
    assert_eq!(after.started_at, before.started_at);
    assert!(pods::process_alive(init));
    let status = node.cri.status(&short).await;
    assert_eq!(
        status.state,
        ContainerState::ContainerExited as i32,
        "{status:?}"
    );
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (0, "Completed"),
        "{status:?}"
    );
    assert!(status.finished_at >= status.started_at && status.started_at > 0);
    // The pod keeps its network, and the restarted daemon still reaches the shim.
    assert_eq!(node.cri.pod_ip(&pod).await, ip);
    assert_eq!(node.net.reservations(), vec![ip.clone()]);
    let r = node
        .cri
        .exec_sync(&long, &["echo", "still-here"], 10)
        .await
        .unwrap_or_else(|s| panic!("ExecSync after restart: {:?}: {}", s.code(), s.message()));
    assert_eq!(String::from_utf8_lossy(&r.stdout), "still-here\n");

    // SIGTERM never stops containers.
    let exit = node.daemon.terminate().await.expect("SIGTERM");
    assert!(exit.success(), "the daemon exited with {exit} on SIGTERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pods::process_alive(init),
        "the container died with a SIGTERMed daemon"
    );
    assert!(
        !pods::shims_naming(node.base()).is_empty(),
        "the shims died with a SIGTERMed daemon"
    );
    node.restart_with(&[]).await;
    let again = node.cri.status(&long).await;
    assert_eq!(
        (again.state, again.started_at),
        (ContainerState::ContainerRunning as i32, before.started_at)
    );

    node.cri.stop(&long, 0).await;
    assert!(
        pods::wait_process_gone(init, Duration::from_secs(5)).await,
        "StopContainer left the process running"
    );
    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_side_by_side() {
    let a = Node::start(&[]).await;
    let b = Node::start(&[]).await;
    assert_ne!(a.net.subnet(), b.net.subnet());
    // The same pod name in both: they are separate runtimes.
    let pca = a.pod_config("twin");
    let pcb = b.pod_config("twin");
    let (pod_a, ip_a) = a.ready_pod(&pca).await;
    let (pod_b, ip_b) = b.ready_pod(&pcb).await;
    let ca = a
        .cri
        .run(
            &pod_a,
            &container_config("app", &a.image, &["sleep", "1000"]),
            &pca,
        )
        .await;
    let cb = b
        .cri
        .run(
            &pod_b,
            &container_config("app", &b.image, &["sleep", "1000"]),
            &pcb,
        )
        .await;

    assert_eq!(a.cri.pod_ids().await, vec![pod_a.clone()]);
    assert_eq!(b.cri.pod_ids().await, vec![pod_b.clone()]);
    assert_eq!(a.cri.container_ids().await, vec![ca.clone()]);
    assert_eq!(b.cri.container_ids().await, vec![cb.clone()]);
    expect_code(
        "A's ContainerStatus of B's container",
        a.cri.try_status(&cb).await,
        Code::NotFound,
    );
    expect_code(
        "B's PodSandboxStatus of A's pod",
        b.cri.try_pod_status(&pod_a).await,
        Code::NotFound,
    );
    let init_b = pods::container_pids(&pod_b, &cb);
    assert_eq!(init_b.len(), 1, "{init_b:?}");

    // Stopping and removing in A does not touch B; B's ids are unknown to A.
    a.cri.stop(&cb, 0).await;
    a.cri.remove(&cb).await;
    a.cri.stop_pod(&pod_b).await;
    a.cri.remove_pod(&pod_b).await;
    a.remove_all_and_check_clean(&[&pod_a]).await;
    assert!(pods::container_cgroups(&pod_a, &ca).is_empty());

    assert_eq!(
        b.cri.status(&cb).await.state,
        ContainerState::ContainerRunning as i32
    );
    assert!(pods::process_alive(init_b[0]));
    assert_eq!(
        b.cri.pod_status(&pod_b).await.state,
        PodSandboxState::SandboxReady as i32
    );
    assert_eq!(b.net.reservations(), vec![ip_b.clone()]);
    assert_eq!(b.net.veths().len(), 1);
    assert!(b.pins_of(&pod_b).contains(&"net".to_owned()));
    assert_eq!(
        b.mounts_of(&cb).len(),
        1,
        "B's rootfs: {:?}",
        b.mounts_of(&cb)
    );
    assert!(!a.net.contains(&ip_b) && !b.net.contains(&ip_a));
    let r = b
        .cri
        .exec_sync(&cb, &["hostname"], 10)
        .await
        .unwrap_or_else(|s| panic!("ExecSync in B: {:?}: {}", s.code(), s.message()));
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "twin");

    b.remove_all_and_check_clean(&[&pod_b]).await;
    a.finish();
    b.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_pod_sandbox_leaks_nothing() {
    let mut node = Node::start(&[]).await;
    for failpoint in ["sandbox-after-netns", "sandbox-after-cni-add"] {
        node.restart_with(&[("KEELSON_FAILPOINTS", failpoint)])
            .await;
        let pc = node.pod_config(failpoint);
        let err = node
            .cri
            .try_run_pod(&pc)
            .await
            .expect_err("RunPodSandbox must fail when the daemon dies");
        assert_ne!(err.code(), Code::Ok);
        let deadline = Instant::now() + Duration::from_secs(5);
        while node.daemon.is_running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !node.daemon.is_running(),
            "{failpoint}: the daemon did not abort"
        );

        // What the crash left: a record and the pinned network namespace (and, after CNI ADD,
        // an address and a veth).
        let half = pods::dir_entries(&node.dirs.root.join("sandboxes"));
        assert_eq!(half.len(), 1, "{failpoint}: sandbox records {half:?}");
        let id = half[0].clone();
        node.scrubber.track_pod(&id);
        assert!(
            node.pins_of(&id).contains(&"net".to_owned()),
            "{failpoint}: the netns pin is not there, the failpoint fired elsewhere"
        );
        if failpoint == "sandbox-after-cni-add" {
            assert_eq!(
                node.net.reservations().len(),
                1,
                "{failpoint}: no address reserved"
            );
            assert_eq!(node.net.veths().len(), 1, "{failpoint}: no veth");
        }

        node.restart_with(&[("RUST_LOG", "info,keelson_runtime=debug")])
            .await;
        assert!(
            node.cri.pod_ids().await.is_empty(),
            "{failpoint}: a half-made pod is listed"
        );
        expect_code(
            "PodSandboxStatus of the undone pod",
            node.cri.try_pod_status(&id).await,
            Code::NotFound,
        );
        node.assert_clean(&[&id]).await;

        // The node still works, and the pod name is free again.
        let (pod, _) = node.ready_pod(&pc).await;
        node.cri
            .run(
                &pod,
                &container_config("after", &node.image, &["sleep", "1000"]),
                &pc,
            )
            .await;
        node.remove_all_and_check_clean(&[&pod, &id]).await;
    }
    node.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_create_container_leaks_nothing() {
    let mut node = Node::start(&[]).await;
    for failpoint in ["container-before-shim", "container-after-shim"] {
        node.restart_with(&[("KEELSON_FAILPOINTS", failpoint)])
            .await;
        let pc = node.pod_config(failpoint);
        let (pod, _) = node.ready_pod(&pc).await;
        let cfg = container_config("victim", &node.image, &["sleep", "1000"]);
        let err = node
            .cri
            .try_create(&pod, &cfg, &pc)
            .await
            .expect_err("CreateContainer must fail when the daemon dies");
        assert_ne!(err.code(), Code::Ok);
        let deadline = Instant::now() + Duration::from_secs(5);
        while node.daemon.is_running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !node.daemon.is_running(),
            "{failpoint}: the daemon did not abort"
        );

        // What the crash left: a record and the rootfs mount (and, after the shim, the shim
        // holding a created container).
        let half = pods::dir_entries(&node.dirs.root.join("containers"));
        assert_eq!(half.len(), 1, "{failpoint}: container records {half:?}");
        let id = half[0].clone();
        assert!(
            !node.mounts_of(&id).is_empty(),
            "{failpoint}: no rootfs mount"
        );
        if failpoint == "container-after-shim" {
            // The shim, and the container's init (a fork of the shim until it starts).
            assert!(
                !pods::shims_naming(node.base()).is_empty(),
                "{failpoint}: no shim"
            );
            assert!(
                pods::libcontainer_state(&node.dirs.state, &id).is_some(),
                "{failpoint}: no libcontainer state"
            );
        }

        node.restart_with(&[("RUST_LOG", "info,keelson_runtime=debug")])
            .await;
        let listed = node.cri.list_containers(None).await;
        assert!(
            !listed
                .iter()
                .any(|c| c.id == id && c.state == ContainerState::ContainerCreated as i32),
            "{failpoint}: the half-made container is listed as created: {listed:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pods::shims_naming(node.base()).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Everything the half-made container had must be gone; list all that is not.
        let mut left = Vec::new();
        let shims = pods::shims_naming(node.base());
        if !shims.is_empty() {
            left.push(format!("shim processes: {shims:#?}"));
            for p in &shims {
                left.push(pods::process_details(p.pid));
            }
        }
        if !node.mounts_of(&id).is_empty() {
            left.push(format!("rootfs mounts: {:?}", node.mounts_of(&id)));
        }
        if let Some(dir) = pods::libcontainer_state(&node.dirs.state, &id) {
            left.push(format!("libcontainer state: {}", dir.display()));
        }
        let files = pods::paths_naming(node.base(), &id);
        if !files.is_empty() {
            left.push(format!("files (record, bundle, shim state): {files:?}"));
        }
        let cgroups = pods::container_cgroups(&pod, &id);
        if !cgroups.is_empty() {
            left.push(format!("cgroups: {cgroups:?}"));
        }
        let pids = pods::container_pids(&pod, &id);
        if !pids.is_empty() {
            left.push(format!("processes in its cgroup: {pids:?}"));
        }
        assert!(
            left.is_empty(),
            "{failpoint}: the undone container {id} left:\n{}",
            left.join("\n")
        );
        assert_eq!(
            node.cri.pod_status(&pod).await.state,
            PodSandboxState::SandboxReady as i32
        );

        // The pod still works, and the name is free again.
        let c = node.cri.run(&pod, &cfg, &pc).await;
        assert_eq!(
            node.cri.status(&c).await.state,
            ContainerState::ContainerRunning as i32
        );
        node.remove_all_and_check_clean(&[&pod]).await;
    }
    node.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input() {
    let node = Node::start(&[]).await;
    let cri = &node.cri;
    let pc = node.pod_config("bad");
    let (pod, _) = node.ready_pod(&pc).await;
    let no_cmd = ok(
        "image without a command",
        busybox::image_with(
            Vec::new(),
            &ImageConfig {
                cmd: Vec::new(),
                ..busybox::config()
            },
            ManifestFormat::Oci,
            Compression::Gzip,
        ),
    );
    let no_cmd = node.push_and_pull("pods/nocmd", &no_cmd).await;
    let dup = cri
        .create(
            &pod,
            &container_config("dup", &node.image, &["sleep", "1000"]),
            &pc,
        )
        .await;

    let missing_dir = node.base().join("no-such-dir");
    let bad_profile = node.base().join("bad-seccomp.json");
    std::fs::write(&bad_profile, "{ this is not a seccomp profile").expect("writing the profile");
    let missing_image = format!("{}/pods/missing:1", node.registry.host());

    let mut with_mount = container_config("mount", &node.image, &["true"]);
    with_mount.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: missing_dir.display().to_string(),
        ..Default::default()
    }];
    let mut with_profile = container_config("seccomp", &node.image, &["true"]);
    with_profile
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .seccomp = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: bad_profile.display().to_string(),
    });

    // (what, sandbox id, config, expected code, text the message must name)
    let cases: Vec<(&str, &str, keelson_cri::v1::ContainerConfig, Code, String)> = vec![
        (
            "unknown sandbox",
            UNKNOWN_ID,
            container_config("orphan", &node.image, &["true"]),
            Code::NotFound,
            UNKNOWN_ID.to_owned(),
        ),
        (
            "image not present",
            &pod,
            container_config("noimage", &missing_image, &["true"]),
            Code::NotFound,
            missing_image.clone(),
        ),
        (
            "no command",
            &pod,
            container_config("nocmd", &no_cmd, &[]),
            Code::InvalidArgument,
            "command".to_owned(),
        ),
        (
            "duplicate name and attempt",
            &pod,
            container_config("dup", &node.image, &["sleep", "1000"]),
            Code::AlreadyExists,
            dup.clone(),
        ),
        (
            "missing mount source",
            &pod,
            with_mount,
            Code::InvalidArgument,
            missing_dir.display().to_string(),
        ),
        (
            "unparsable seccomp profile",
            &pod,
            with_profile,
            Code::InvalidArgument,
            bad_profile.display().to_string(),
        ),
    ];
    for (what, sandbox, cfg, code, names) in cases {
        let before = node.snapshot();
        let ids_before = cri.container_ids().await;
        let result = cri.try_create(sandbox, &cfg, &pc).await;
        let err = match result {
            Ok(id) => panic!("CreateContainer with {what} succeeded (container {id})"),
            Err(s) => s,
        };
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(
            err.message().contains(&names),
            "{what}: the error does not name {names:?}: {}",
            err.message()
        );
        assert_eq!(
            cri.container_ids().await,
            ids_before,
            "{what}: a record stays"
        );
        assert_eq!(node.snapshot(), before, "{what}: something was left");
    }

    // A cgroup parent that climbs out of the hierarchy.
    let before = node.snapshot();
    let mut escaping = node.pod_config("escape");
    escaping
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = "/../../etc".into();
    expect_code(
        "RunPodSandbox with cgroup_parent /../../etc",
        cri.try_run_pod(&escaping).await,
        Code::InvalidArgument,
    );
    // The same pod twice.
    expect_code(
        "RunPodSandbox of a pod that exists",
        cri.try_run_pod(&pc).await,
        Code::AlreadyExists,
    );
    assert_eq!(cri.pod_ids().await, vec![pod.clone()]);
    assert_eq!(node.snapshot(), before, "bad RunPodSandbox left something");

    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

/// The daemon's default `--state` (`/run/keelson/runtime`, 20 bytes) with a 64-hex container
/// id makes a shim socket path `<state>/containers/<id>/shim/shim.sock` of 111 bytes, over the
/// 107 a unix socket path may have. A state directory of that length must still run containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_with_a_default_length_state_dir() {
    let mut node = Node::start(&[]).await;
    let default_state = "/run/keelson/runtime";
    let base_len = node.base().as_os_str().len();
    assert!(
        base_len + 2 <= default_state.len(),
        "test directory too long"
    );
    let state_name = format!("s{}", "x".repeat(default_state.len() - base_len - 2));
    node.dirs.state = node.base().join(state_name);
    assert_eq!(node.dirs.state.as_os_str().len(), default_state.len());
    node.scrubber = Scrubber::new(node.base.path(), &node.dirs);
    node.restart_with(&[]).await;
    let pc = node.pod_config("longpath");
    let (pod, _) = node.ready_pod(&pc).await;
    let c = node
        .cri
        .run(
            &pod,
            &container_config("app", &node.image, &["sleep", "1000"]),
            &pc,
        )
        .await;
    assert_eq!(
        node.cri.status(&c).await.state,
        ContainerState::ContainerRunning as i32
    );
    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}

/// A host-network pod: its containers share the host's network and UTS namespaces even when
/// their own config names no namespace options (critest's don't), as containerd's join the
/// pause container's. A server in the container answers on the host's loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_shares_the_hosts_network() {
    let node = Node::start(&[]).await;
    let cri = &node.cri;
    let mut pc = node.pod_config("hostnet");
    pc.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(keelson_cri::v1::NamespaceOption {
        network: keelson_cri::v1::NamespaceMode::Node as i32,
        ..Default::default()
    });
    let pod = cri.run_pod(&pc).await;
    node.scrubber.track_pod(&pod);
    let port = free_port().expect("a free port");
    let script = format!(
        "mkdir -p /tmp/www && echo host-net-ok > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /tmp/www"
    );
    let c = cri
        .run(
            &pod,
            &container_config("web", &node.image, &sh(&script)),
            &pc,
        )
        .await;
    let (code, body) = http_get_retry(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!((code, body.trim()), (200, "host-net-ok"));
    let r = cri
        .exec_sync(&c, &["hostname"], 10)
        .await
        .unwrap_or_else(|s| panic!("ExecSync hostname: {:?}: {}", s.code(), s.message()));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        host.trim(),
        "a host-network container sees the host's hostname"
    );
    node.remove_all_and_check_clean(&[&pod]).await;
    node.finish();
}
