//! Support for the pod and container tests: a private CNI network per test, CRI config builders,
//! a CRI client for the runtime service, and leak checks (mounts, veths, IP reservations,
//! cgroups, shim processes) with a guard that scrubs whatever a failed test left behind.
//!
//! Network rule (see `FACTS.md`): each [`TestNetwork`] owns one /24 of `10.236.0.0/16`, claimed
//! by adding `unreachable <subnet> metric 4000` (which fails if another test holds it) and
//! released, with its bridge, on drop. Pods get no default route, so they can only reach their
//! own subnet.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use keelson_cri::v1::{
    Container, ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState,
    ContainerStateValue, ContainerStatus, ContainerStatusRequest, CreateContainerRequest,
    DnsConfig, ExecSyncRequest, ExecSyncResponse, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, ListContainersRequest, ListPodSandboxRequest, PodSandbox,
    PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxState, PodSandboxStateValue,
    PodSandboxStatus, PodSandboxStatusRequest, PullImageRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, ReopenContainerLogRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use keelson_cri::{ImageServiceClient, RuntimeServiceClient};
use tonic::transport::Channel;

use crate::daemon::{DaemonDirs, DaemonOptions, RuntimeDaemon};
use crate::oci::{self, Image};

/// Where the Debian `containernetworking-plugins` package installs the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The /16 the pod networks of these tests are carved from.
pub const POD_NET_PREFIX: &str = "10.236";
/// The namespace every test pod is created in.
pub const POD_NAMESPACE: &str = "keelson-test";
/// How long one CRI call may take before a test gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// the CNI network

/// Subnet indexes (`10.236.<n>.0/24`) held by networks of this process.
static SUBNETS: Mutex<BTreeSet<u8>> = Mutex::new(BTreeSet::new());

/// A bridge + host-local + portmap conflist for one test, with its own bridge and /24.
///
/// Dropping it deletes the bridge (and so any veth left on it) and the unreachable route.
pub struct TestNetwork {
    index: u8,
    bridge: String,
    name: String,
    conf_dir: PathBuf,
    ipam_dir: PathBuf,
}

impl TestNetwork {
    /// Claims a free /24 and bridge name and writes `base/net.d/10-<bridge>.conflist`; IP
    /// reservations go to `base/ipam`.
    pub fn create(base: &Path) -> Result<Self> {
        let conf_dir = base.join("net.d");
        let ipam_dir = base.join("ipam");
        std::fs::create_dir_all(&conf_dir)
            .with_context(|| format!("creating {}", conf_dir.display()))?;
        std::fs::create_dir_all(&ipam_dir)
            .with_context(|| format!("creating {}", ipam_dir.display()))?;
        let index = claim_subnet()?;
        let bridge = format!("kt{:02x}{index:02x}", 0xec);
        let name = format!("{bridge}-net");
        let net = TestNetwork {
            index,
            bridge,
            name,
            conf_dir,
            ipam_dir,
        };
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": net.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": net.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": net.subnet() }]],
                        "dataDir": net.ipam_dir,
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        });
        let path = net.conf_dir.join(format!("10-{}.conflist", net.bridge));
        std::fs::write(&path, serde_json::to_vec_pretty(&conflist)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(net)
    }

    /// The bridge's name (`kt<4 hex>`).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The CNI network name (the directory host-local keeps its reservations in).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `10.236.<n>.0/24`.
    pub fn subnet(&self) -> String {
        format!("{POD_NET_PREFIX}.{}.0/24", self.index)
    }

    /// `10.236.<n>.1`, the bridge's address.
    pub fn gateway(&self) -> String {
        format!("{POD_NET_PREFIX}.{}.1", self.index)
    }

    /// Whether `ip` (an IPv4 address without prefix length) lies in this network's /24.
    pub fn contains(&self, ip: &str) -> bool {
        let prefix = format!("{POD_NET_PREFIX}.{}.", self.index);
        ip.strip_prefix(&prefix)
            .and_then(|host| host.parse::<u8>().ok())
            .is_some_and(|host| host > 1 && host < 255)
    }

    /// The `--cni-conf-dir` folder.
    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// host-local's `dataDir`.
    pub fn ipam_dir(&self) -> &Path {
        &self.ipam_dir
    }

    /// Daemon flags: `--cni-conf-dir` and `--cni-bin-dir`.
    pub fn daemon_args(&self) -> Vec<String> {
        vec![
            "--cni-conf-dir".into(),
            self.conf_dir.display().to_string(),
            "--cni-bin-dir".into(),
            CNI_BIN_DIR.into(),
        ]
    }

    /// The addresses host-local has reserved (one file per address in `<dataDir>/<name>/`).
    pub fn reservations(&self) -> Vec<String> {
        let dir = self.ipam_dir.join(&self.name);
        let mut out: Vec<String> = read_dir_names(&dir)
            .into_iter()
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        out.sort();
        out
    }

    /// The container id host-local recorded for a reserved address (first line of its file).
    pub fn reservation_owner(&self, ip: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.ipam_dir.join(&self.name).join(ip)).ok()?;
        text.lines().next().map(|l| l.trim().to_owned())
    }

    /// The interfaces enslaved to the bridge (the pods' host-side veths).
    pub fn veths(&self) -> Vec<String> {
        let mut out = read_dir_names(&Path::new("/sys/class/net").join(&self.bridge).join("brif"));
        out.sort();
        out
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = run_quiet("ip", &["link", "del", &self.bridge]);
        }
        let _ = run_quiet(
            "ip",
            &[
                "route",
                "del",
                "unreachable",
                &self.subnet(),
                "metric",
                "4000",
            ],
        );
        SUBNETS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.index);
    }
}

/// Picks a /24 nobody uses and claims it with its unreachable route (adding an existing route
/// fails, so two test processes cannot claim the same one).
fn claim_subnet() -> Result<u8> {
    let mut held = SUBNETS.lock().unwrap_or_else(|e| e.into_inner());
    let seed = (std::process::id() as usize).wrapping_mul(31);
    for attempt in 0..250 {
        let index = ((seed + attempt) % 250 + 2) as u8;
        if held.contains(&index) {
            continue;
        }
        let subnet = format!("{POD_NET_PREFIX}.{index}.0/24");
        let bridge = format!("kt{:02x}{index:02x}", 0xec);
        if Path::new("/sys/class/net").join(&bridge).exists() {
            continue;
        }
        // Anything already routed or addressed there belongs to someone else.
        let routes = run_output("ip", &["-o", "route", "show", "root", &subnet])?;
        let addrs = run_output("ip", &["-o", "addr", "show", "to", &subnet])?;
        if !routes.trim().is_empty() || !addrs.trim().is_empty() {
            continue;
        }
        if run_quiet(
            "ip",
            &["route", "add", "unreachable", &subnet, "metric", "4000"],
        )
        .is_ok()
        {
            held.insert(index);
            return Ok(index);
        }
    }
    bail!("no free /24 left in {POD_NET_PREFIX}.0.0/16")
}

fn run_output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_quiet(program: &str, args: &[&str]) -> Result<()> {
    run_output(program, args).map(|_| ())
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The entry names of a directory, sorted (empty when it does not exist).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names = read_dir_names(dir);
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// daemon set-up

/// Daemon directories with short names, so that `<state>/containers/<64 hex>/shim/shim.sock`
/// stays within the 107 bytes of a unix socket path: `base/s` as `--state`.
pub fn short_dirs(base: &Path) -> DaemonDirs {
    DaemonDirs {
        socket: base.join("cri.sock"),
        root: base.join("root"),
        state: base.join("s"),
        log: base.join("runtime.log"),
    }
}

/// Options for a daemon on `dirs` that uses `net` and the cgroupfs driver, reads an empty
/// config file and an empty registry folder (so nothing from `/etc` applies), plus `env`.
pub fn daemon_options(
    dirs: &DaemonDirs,
    net: &TestNetwork,
    env: &[(&str, &str)],
) -> Result<DaemonOptions> {
    let base = dirs
        .root
        .parent()
        .context("the daemon root has no parent directory")?;
    let config = base.join("runtime.toml");
    if !config.exists() {
        std::fs::write(&config, "").with_context(|| format!("writing {}", config.display()))?;
    }
    let certs = base.join("certs.d");
    std::fs::create_dir_all(&certs)?;
    let mut extra_args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--registry-config-dir".into(),
        certs.display().to_string(),
        "--cgroup-driver".into(),
        "cgroupfs".into(),
    ];
    extra_args.extend(net.daemon_args());
    Ok(DaemonOptions {
        dirs: Some(dirs.clone()),
        extra_args,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ready_timeout: Duration::from_secs(30),
        ..Default::default()
    })
}

/// Starts a daemon with [`daemon_options`].
pub async fn start_daemon(
    dirs: &DaemonDirs,
    net: &TestNetwork,
    env: &[(&str, &str)],
) -> Result<RuntimeDaemon> {
    RuntimeDaemon::start(daemon_options(dirs, net, env)?).await
}

/// `image` with `StopSignal` set in its config (the test image builder has no field for it).
pub fn with_stop_signal(image: &Image, signal: &str) -> Result<Image> {
    let mut config: serde_json::Value = serde_json::from_slice(&image.config)?;
    config["config"]["StopSignal"] = serde_json::json!(signal);
    let config = serde_json::to_vec(&config)?;
    let config_digest = oci::sha256_digest(&config);
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest)?;
    manifest["config"]["digest"] = serde_json::json!(config_digest);
    manifest["config"]["size"] = serde_json::json!(config.len());
    let manifest = serde_json::to_vec(&manifest)?;
    Ok(Image {
        manifest_digest: oci::sha256_digest(&manifest),
        manifest,
        config,
        config_digest,
        ..image.clone()
    })
}

// ---------------------------------------------------------------------------------------------
// CRI configs

/// A pod config: name, a unique uid, namespace [`POD_NAMESPACE`], hostname = name, label
/// `test-pod=<name>`.
pub fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_owned(),
            uid: crate::unique_name("uid"),
            namespace: POD_NAMESPACE.to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        labels: [("test-pod".to_owned(), name.to_owned())].into(),
        ..Default::default()
    }
}

/// A pod config with DNS settings.
pub fn dns_config(servers: &[&str], searches: &[&str], options: &[&str]) -> DnsConfig {
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    DnsConfig {
        servers: own(servers),
        searches: own(searches),
        options: own(options),
    }
}

/// A container config running `command` (empty: the image's) from `image`, label
/// `test-container=<name>`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        labels: [("test-container".to_owned(), name.to_owned())].into(),
        envs: vec![KeyValue {
            key: "KEELSON_TEST".into(),
            value: name.as_bytes().to_vec(),
        }],
        ..Default::default()
    }
}

/// `["sh", "-c", script]`.
pub fn sh(script: &str) -> [&str; 3] {
    ["sh", "-c", script]
}

/// Sets `linux.resources.memory_limit_in_bytes`.
pub fn with_memory_limit(mut config: ContainerConfig, bytes: i64) -> ContainerConfig {
    let linux = config
        .linux
        .get_or_insert_with(LinuxContainerConfig::default);
    let resources = linux
        .resources
        .get_or_insert_with(LinuxContainerResources::default);
    resources.memory_limit_in_bytes = bytes;
    config
}

// ---------------------------------------------------------------------------------------------
// the CRI client

/// A CRI client (runtime + image service) over a daemon's socket. The plain methods panic with
/// the gRPC status on failure (so that a failing test prints the daemon's log); the `try_`
/// ones return it.
#[derive(Clone)]
pub struct Cri {
    /// RuntimeService.
    pub rt: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub img: ImageServiceClient<Channel>,
}

async fn timed<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {CALL_TIMEOUT:?}"))
}

fn must<T>(what: &str, r: Result<T, tonic::Status>) -> T {
    r.unwrap_or_else(|s| panic!("{what} failed: {:?}: {}", s.code(), s.message()))
}

impl Cri {
    /// Connects to `daemon`.
    pub async fn connect(daemon: &RuntimeDaemon) -> Result<Self> {
        let channel = daemon.channel().await?;
        Ok(Cri {
            rt: RuntimeServiceClient::new(channel.clone()),
            img: ImageServiceClient::new(channel),
        })
    }

    /// PullImage; returns the image ref.
    pub async fn pull(&self, image: &str) -> String {
        let mut c = self.img.clone();
        let req = PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        must(
            &format!("PullImage {image}"),
            timed("PullImage", c.pull_image(req)).await,
        )
        .into_inner()
        .image_ref
    }

    /// RunPodSandbox.
    pub async fn try_run_pod(&self, config: &PodSandboxConfig) -> Result<String, tonic::Status> {
        let mut c = self.rt.clone();
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        timed("RunPodSandbox", c.run_pod_sandbox(req))
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// RunPodSandbox that must succeed.
    pub async fn run_pod(&self, config: &PodSandboxConfig) -> String {
        must("RunPodSandbox", self.try_run_pod(config).await)
    }

    /// PodSandboxStatus.
    pub async fn try_pod_status(&self, id: &str) -> Result<PodSandboxStatus, tonic::Status> {
        let mut c = self.rt.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        };
        let resp = timed("PodSandboxStatus", c.pod_sandbox_status(req)).await?;
        resp.into_inner()
            .status
            .ok_or_else(|| tonic::Status::internal("PodSandboxStatus without a status"))
    }

    /// PodSandboxStatus that must succeed.
    pub async fn pod_status(&self, id: &str) -> PodSandboxStatus {
        must(
            &format!("PodSandboxStatus {id}"),
            self.try_pod_status(id).await,
        )
    }

    /// The pod's IP from PodSandboxStatus (empty when it has none).
    pub async fn pod_ip(&self, id: &str) -> String {
        self.pod_status(id)
            .await
            .network
            .map(|n| n.ip)
            .unwrap_or_default()
    }

    /// ListPodSandbox with a filter.
    pub async fn list_pods(&self, filter: Option<PodSandboxFilter>) -> Vec<PodSandbox> {
        let mut c = self.rt.clone();
        let req = ListPodSandboxRequest { filter };
        must(
            "ListPodSandbox",
            timed("ListPodSandbox", c.list_pod_sandbox(req)).await,
        )
        .into_inner()
        .items
    }

    /// Ids of all pods.
    pub async fn pod_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .list_pods(None)
            .await
            .into_iter()
            .map(|p| p.id)
            .collect();
        ids.sort();
        ids
    }

    /// StopPodSandbox.
    pub async fn try_stop_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.rt.clone();
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        timed("StopPodSandbox", c.stop_pod_sandbox(req))
            .await
            .map(|_| ())
    }

    /// StopPodSandbox that must succeed.
    pub async fn stop_pod(&self, id: &str) {
        must(&format!("StopPodSandbox {id}"), self.try_stop_pod(id).await)
    }

    /// RemovePodSandbox.
    pub async fn try_remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.rt.clone();
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        timed("RemovePodSandbox", c.remove_pod_sandbox(req))
            .await
            .map(|_| ())
    }

    /// RemovePodSandbox that must succeed.
    pub async fn remove_pod(&self, id: &str) {
        must(
            &format!("RemovePodSandbox {id}"),
            self.try_remove_pod(id).await,
        )
    }

    /// CreateContainer.
    pub async fn try_create(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let mut c = self.rt.clone();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_id.to_owned(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        timed("CreateContainer", c.create_container(req))
            .await
            .map(|r| r.into_inner().container_id)
    }

    /// CreateContainer that must succeed.
    pub async fn create(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> String {
        let name = config.metadata.as_ref().map(|m| m.name.as_str());
        must(
            &format!("CreateContainer {name:?}"),
            self.try_create(pod_id, config, pod_config).await,
        )
    }

    /// StartContainer.
    pub async fn try_start(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.rt.clone();
        let req = StartContainerRequest {
            container_id: id.to_owned(),
        };
        timed("StartContainer", c.start_container(req))
            .await
            .map(|_| ())
    }

    /// StartContainer that must succeed.
    pub async fn start(&self, id: &str) {
        must(&format!("StartContainer {id}"), self.try_start(id).await)
    }

    /// CreateContainer + StartContainer; returns the id.
    pub async fn run(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> String {
        let id = self.create(pod_id, config, pod_config).await;
        self.start(&id).await;
        id
    }

    /// StopContainer.
    pub async fn try_stop(&self, id: &str, timeout_secs: i64) -> Result<(), tonic::Status> {
        let mut c = self.rt.clone();
        let req = StopContainerRequest {
            container_id: id.to_owned(),
            timeout: timeout_secs,
        };
        timed("StopContainer", c.stop_container(req))
            .await
            .map(|_| ())
    }

    /// StopContainer that must succeed.
    pub async fn stop(&self, id: &str, timeout_secs: i64) {
        must(
            &format!("StopContainer {id}"),
            self.try_stop(id, timeout_secs).await,
        )
    }

    /// RemoveContainer.
    pub async fn try_remove(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.rt.clone();
        let req = RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        timed("RemoveContainer", c.remove_container(req))
            .await
            .map(|_| ())
    }

    /// RemoveContainer that must succeed.
    pub async fn remove(&self, id: &str) {
        must(&format!("RemoveContainer {id}"), self.try_remove(id).await)
    }

    /// ContainerStatus.
    pub async fn try_status(&self, id: &str) -> Result<ContainerStatus, tonic::Status> {
        let mut c = self.rt.clone();
        let req = ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        let resp = timed("ContainerStatus", c.container_status(req)).await?;
        resp.into_inner()
            .status
            .ok_or_else(|| tonic::Status::internal("ContainerStatus without a status"))
    }

    /// ContainerStatus that must succeed.
    pub async fn status(&self, id: &str) -> ContainerStatus {
        must(&format!("ContainerStatus {id}"), self.try_status(id).await)
    }

    /// ListContainers with a filter.
    pub async fn list_containers(&self, filter: Option<ContainerFilter>) -> Vec<Container> {
        let mut c = self.rt.clone();
        let req = ListContainersRequest { filter };
        must(
            "ListContainers",
            timed("ListContainers", c.list_containers(req)).await,
        )
        .into_inner()
        .containers
    }

    /// Ids of all containers.
    pub async fn container_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .list_containers(None)
            .await
            .into_iter()
            .map(|c| c.id)
            .collect();
        ids.sort();
        ids
    }

    /// ExecSync.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<ExecSyncResponse, tonic::Status> {
        let mut c = self.rt.clone();
        let req = ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: timeout_secs,
        };
        timed("ExecSync", c.exec_sync(req))
            .await
            .map(|r| r.into_inner())
    }

    /// ReopenContainerLog.
    pub async fn reopen_log(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.rt.clone();
        let req = ReopenContainerLogRequest {
            container_id: id.to_owned(),
        };
        timed("ReopenContainerLog", c.reopen_container_log(req))
            .await
            .map(|_| ())
    }

    /// Polls ContainerStatus until the container is in `state`; panics after `timeout` with the
    /// last status.
    pub async fn wait_state(
        &self,
        id: &str,
        state: ContainerState,
        timeout: Duration,
    ) -> ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(id).await;
            if status.state == state as i32 {
                return status;
            }
            if Instant::now() > deadline {
                panic!("container {id} not {state:?} within {timeout:?}; last status: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A filter for pods by id (or prefix).
pub fn pod_filter_id(id: &str) -> PodSandboxFilter {
    PodSandboxFilter {
        id: id.to_owned(),
        ..Default::default()
    }
}

/// A filter for pods in `state`.
pub fn pod_filter_state(state: PodSandboxState) -> PodSandboxFilter {
    PodSandboxFilter {
        state: Some(PodSandboxStateValue {
            state: state as i32,
        }),
        ..Default::default()
    }
}

/// A filter for pods carrying all `labels`.
pub fn pod_filter_labels(labels: &[(&str, &str)]) -> PodSandboxFilter {
    PodSandboxFilter {
        label_selector: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

/// A filter for containers in `state`.
pub fn container_filter_state(state: ContainerState) -> ContainerFilter {
    ContainerFilter {
        state: Some(ContainerStateValue {
            state: state as i32,
        }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// container logs

/// One record of a CRI log file: `TIMESTAMP STREAM F|P CONTENT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// RFC 3339 with nanoseconds, UTC.
    pub timestamp: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// `F` (full line) or `P` (partial).
    pub tag: String,
    /// The text, without the newline.
    pub content: String,
}

/// Parses a CRI log; fails on any line that is not a well-formed record.
pub fn parse_cri_log(text: &str) -> Result<Vec<LogRecord>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(timestamp), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("malformed CRI log line {line:?}");
        };
        let content = parts.next().unwrap_or("");
        let b = timestamp.as_bytes();
        ensure!(
            b.len() == 30
                && b[4] == b'-'
                && b[7] == b'-'
                && b[10] == b'T'
                && b[13] == b':'
                && b[16] == b':'
                && b[19] == b'.'
                && b[29] == b'Z'
                && timestamp[20..29].bytes().all(|c| c.is_ascii_digit()),
            "bad timestamp in CRI log line {line:?}"
        );
        ensure!(
            stream == "stdout" || stream == "stderr",
            "bad stream in CRI log line {line:?}"
        );
        ensure!(tag == "F" || tag == "P", "bad tag in CRI log line {line:?}");
        out.push(LogRecord {
            timestamp: timestamp.to_owned(),
            stream: stream.to_owned(),
            tag: tag.to_owned(),
            content: content.to_owned(),
        });
    }
    Ok(out)
}

/// Reads and parses a CRI log file (empty when it does not exist yet).
pub fn read_cri_log(path: &Path) -> Result<Vec<LogRecord>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_cri_log(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Polls a CRI log until `done(records)` holds; fails after `timeout` with the log's text.
pub async fn wait_log(
    path: &Path,
    timeout: Duration,
    done: impl Fn(&[LogRecord]) -> bool,
) -> Result<Vec<LogRecord>> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = read_cri_log(path)?;
        if done(&records) {
            return Ok(records);
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not reach the expected content within {timeout:?}; it holds:\n{}",
                path.display(),
                std::fs::read_to_string(path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stdout contents of the records, one string per record.
pub fn stdout_lines(records: &[LogRecord]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.stream == "stdout")
        .map(|r| r.content.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// leak checks

/// Mount points at or below `dir`, from `/proc/self/mountinfo`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Whether `path` is a mount point.
pub fn is_mounted(path: &Path) -> bool {
    mounts_under(path).iter().any(|m| m == path)
}

/// Undoes the octal escapes (`\040` = space) of mountinfo paths.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A process found by [`processes_naming`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

/// Live (not zombie) processes whose command line contains `needle`.
pub fn processes_naming(needle: &str) -> Vec<ProcessInfo> {
    let mut out = Vec::new();
    for name in read_dir_names(Path::new("/proc")) {
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let cmdline = args.join(" ");
        if cmdline.contains(needle) && process_alive(pid) {
            out.push(ProcessInfo { pid, cmdline });
        }
    }
    out.sort();
    out
}

/// Live `keelson-shim` processes whose command line names `dir`. A created container's init
/// is a fork of its shim until StartContainer execs the command, so it counts too.
pub fn shims_naming(dir: &Path) -> Vec<ProcessInfo> {
    processes_naming(&dir.display().to_string())
        .into_iter()
        .filter(|p| {
            p.cmdline
                .split(' ')
                .next()
                .is_some_and(|argv0| argv0.ends_with("keelson-shim"))
        })
        .collect()
}

/// Live `keelson-runtime pod-init` holders (a pod's shared PID namespace) of a runtime whose
/// `--state` is under `dir` (their command line is `... pod-init <sandbox id> <state>`).
pub fn pod_holders_naming(dir: &Path) -> Vec<ProcessInfo> {
    processes_naming(&dir.display().to_string())
        .into_iter()
        .filter(|p| p.cmdline.split(' ').any(|a| a == "pod-init"))
        .collect()
}

/// Whether `pid` exists and is not a zombie (init here does not reap orphans).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// `ppid`, state and cgroup (of the `pids` or unified hierarchy) of a process, for messages.
pub fn process_details(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or("?")
            .to_owned()
    };
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let cgroup = cgroups
        .lines()
        .find(|l| l.contains(":pids:"))
        .or_else(|| cgroups.lines().find(|l| l.starts_with("0::")))
        .unwrap_or("?");
    format!(
        "pid {pid}: ppid {} state {} cgroup {cgroup}",
        field("PPid"),
        field("State")
    )
}

/// Waits (≤ `timeout`) until `pid` is gone or a zombie; returns whether it is.
pub async fn wait_process_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The cgroup hierarchies mounted under `/sys/fs/cgroup` (each v1 controller, `unified`, or
/// the v2 root itself).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    let mut out: Vec<PathBuf> = read_dir_names(root)
        .into_iter()
        .map(|n| root.join(n))
        .filter(|p| {
            std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
                && p.join("cgroup.procs").exists()
        })
        .collect();
    out.sort();
    out
}

/// The pod's cgroup directories (`<hierarchy>/keelson/pod-<id>`) that exist.
pub fn pod_cgroups(sandbox_id: &str) -> Vec<PathBuf> {
    cgroup_hierarchies()
        .into_iter()
        .map(|h| h.join("keelson").join(format!("pod-{sandbox_id}")))
        .filter(|p| p.is_dir())
        .collect()
}

/// The container's cgroup directories (`<hierarchy>/keelson/pod-<sandbox>/<container>`) that exist.
pub fn container_cgroups(sandbox_id: &str, container_id: &str) -> Vec<PathBuf> {
    cgroup_hierarchies()
        .into_iter()
        .map(|h| {
            h.join("keelson")
                .join(format!("pod-{sandbox_id}"))
                .join(container_id)
        })
        .filter(|p| p.is_dir())
        .collect()
}

/// Processes in the container's cgroup (from the `pids` or `memory` hierarchy).
pub fn container_pids(sandbox_id: &str, container_id: &str) -> Vec<u32> {
    for ctrl in ["pids", "memory", "unified", ""] {
        let file = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join("keelson")
            .join(format!("pod-{sandbox_id}"))
            .join(container_id)
            .join("cgroup.procs");
        if let Ok(text) = std::fs::read_to_string(&file) {
            let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if !pids.is_empty() {
                return pids;
            }
        }
    }
    Vec::new()
}

/// Paths at or below `dir` (not following symlinks, not entering mount points) whose name
/// starts with `id`, or with its first 32 characters (the runtime may shorten ids in paths).
pub fn paths_naming(dir: &Path, id: &str) -> Vec<PathBuf> {
    let prefix = &id[..id.len().min(32)];
    let mounts: BTreeSet<PathBuf> = mounts_under(dir).into_iter().collect();
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let path = e.path();
            if e.file_name().to_string_lossy().starts_with(prefix) {
                out.push(path);
                continue;
            }
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && depth < 6 && !mounts.contains(&path) {
                stack.push((path, depth + 1));
            }
        }
    }
    out.sort();
    out
}

/// The directory holding libcontainer's `state.json` for container `id`, wherever under `state`
/// the runtime keeps it.
pub fn libcontainer_state(state: &Path, id: &str) -> Option<PathBuf> {
    paths_naming(state, id)
        .into_iter()
        .find(|p| p.join("state.json").is_file())
}

/// What a node leaves on the host, for comparing before/after an operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSnapshot {
    /// Mount points under the test directory.
    pub mounts: Vec<PathBuf>,
    /// Live shims naming the test directory (see [`shims_naming`]).
    pub shims: Vec<u32>,
    /// Live pod PID-namespace holders of the test's runtime (see [`pod_holders_naming`]).
    pub pod_holders: Vec<u32>,
    /// Interfaces on the test bridge.
    pub veths: Vec<String>,
    /// host-local reservations.
    pub reservations: Vec<String>,
    /// Entries of `<root>/sandboxes`, `<root>/containers` and of every directory directly
    /// under `<state>` (sandbox pins, bundles, shim and libcontainer state, whatever their
    /// layout).
    pub dirs: BTreeMap<String, Vec<String>>,
}

impl HostSnapshot {
    /// Takes a snapshot of everything under `base` (the test's directory) that the daemon on
    /// `dirs` and the network `net` can leave.
    pub fn take(base: &Path, dirs: &DaemonDirs, net: &TestNetwork) -> Self {
        let mut listed = vec![
            ("root/sandboxes".to_owned(), dirs.root.join("sandboxes")),
            ("root/containers".to_owned(), dirs.root.join("containers")),
        ];
        for name in dir_entries(&dirs.state) {
            let path = dirs.state.join(&name);
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                listed.push((format!("state/{name}"), path));
            }
        }
        let mut d = BTreeMap::new();
        for (key, path) in listed {
            let names: Vec<String> = dir_entries(&path)
                .into_iter()
                .filter(|n| !n.starts_with('.'))
                .collect();
            d.insert(key, names);
        }
        HostSnapshot {
            mounts: mounts_under(base),
            shims: shims_naming(base).into_iter().map(|p| p.pid).collect(),
            pod_holders: pod_holders_naming(base)
                .into_iter()
                .map(|p| p.pid)
                .collect(),
            veths: net.veths(),
            reservations: net.reservations(),
            dirs: d,
        }
    }

    /// Whether nothing at all is left: no mounts, shims, veths, reservations, sandbox or
    /// container directories.
    pub fn is_clean(&self) -> bool {
        self.mounts.is_empty()
            && self.shims.is_empty()
            && self.pod_holders.is_empty()
            && self.veths.is_empty()
            && self.reservations.is_empty()
            && self.dirs.values().all(Vec::is_empty)
    }
}

/// On drop, removes what a failed test left under a directory: kills the containers of the
/// pods recorded there and the shims naming it, removes their cgroups, and lazily unmounts
/// everything mounted below it. Quiet when there is nothing to do.
pub struct Scrubber {
    base: PathBuf,
    dirs: DaemonDirs,
    pods: Mutex<BTreeSet<String>>,
}

impl Scrubber {
    /// Guards `base`, which holds the daemon directories `dirs`.
    pub fn new(base: &Path, dirs: &DaemonDirs) -> Self {
        Scrubber {
            base: base.to_path_buf(),
            dirs: dirs.clone(),
            pods: Mutex::new(BTreeSet::new()),
        }
    }

    /// Also scrubs the cgroups of pod `id` (its record may be gone by the time of the scrub).
    pub fn track_pod(&self, id: &str) {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned());
    }

    /// Does the clean-up now; returns what it had to do (empty when nothing was left).
    pub fn scrub(&self) -> Vec<String> {
        let mut done = Vec::new();
        let pods: BTreeSet<String> = dir_entries(&self.dirs.root.join("sandboxes"))
            .into_iter()
            .chain(dir_entries(&self.dirs.state.join("sandboxes")))
            .filter(|n| !n.starts_with('.'))
            .chain(
                self.pods
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned(),
            )
            .collect();
        let containers: BTreeSet<String> = dir_entries(&self.dirs.root.join("containers"))
            .into_iter()
            .chain(dir_entries(&self.dirs.state.join("containers")))
            .filter(|n| !n.starts_with('.'))
            .collect();
        // The containers' processes: every cgroup of these pods (a container may belong to a
        // pod whose record is already gone, so look at all pods' cgroups for its id too).
        let mut cgroups = Vec::new();
        for h in cgroup_hierarchies() {
            for pod in read_dir_names(&h.join("keelson")) {
                let pod_dir = h.join("keelson").join(&pod);
                let pod_id = pod.strip_prefix("pod-").unwrap_or("");
                let ours = pods.contains(pod_id);
                for c in read_dir_names(&pod_dir) {
                    let dir = pod_dir.join(&c);
                    if dir.is_dir() && (ours || containers.contains(&c)) {
                        cgroups.push(dir);
                    }
                }
                if ours {
                    cgroups.push(pod_dir);
                }
            }
        }
        for shim in shims_naming(&self.base) {
            kill(shim.pid);
            done.push(format!("killed shim {} ({})", shim.pid, shim.cmdline));
        }
        for holder in pod_holders_naming(&self.base) {
            kill(holder.pid);
            done.push(format!(
                "killed pod holder {} ({})",
                holder.pid, holder.cmdline
            ));
        }
        for dir in &cgroups {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                    kill(pid);
                    done.push(format!("killed pid {pid} in {}", dir.display()));
                }
            }
        }
        // Children first: a pod's directory goes after its containers'.
        cgroups.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in &cgroups {
            let deadline = Instant::now() + Duration::from_secs(3);
            while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !dir.exists() {
                done.push(format!("removed cgroup {}", dir.display()));
            }
        }
        let mut mounts = mounts_under(&self.base);
        mounts.reverse();
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                // SAFETY: umount2(2) takes a NUL-terminated path that outlives the call.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
            done.push(format!("unmounted {}", m.display()));
        }
        done
    }
}

impl Drop for Scrubber {
    fn drop(&mut self) {
        let done = self.scrub();
        if !done.is_empty() {
            eprintln!(
                "scrubbed what was left under {}:\n  {}",
                self.base.display(),
                done.join("\n  ")
            );
        }
    }
}

fn kill(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

// ---------------------------------------------------------------------------------------------
// host side of port mappings

/// `GET /path` over plain HTTP/1.0 to `addr`; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the answer of {addr}"))?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad HTTP answer from {addr}: {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// The nat table rules (`iptables-save -t nat`) that mention `needle`.
pub fn nat_rules_naming(needle: &str) -> Result<Vec<String>> {
    let text = run_output("iptables-save", &["-t", "nat"])?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("-A") && l.contains(needle))
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount(r"/end\04"), r"/end\04");
    }

    #[test]
    fn cri_log_lines_parse() {
        let text = "2026-11-27T15:31:25.123456789Z stdout F hello world\n\
                    2026-11-27T15:31:25.123456790Z stderr P \n";
        let records = parse_cri_log(text).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].content, "hello world");
        assert_eq!(records[1].stream, "stderr");
        assert_eq!(records[1].content, "");
        assert!(parse_cri_log("hello\n").is_err());
        assert!(parse_cri_log("2026-11-27 stdout F x\n").is_err());
    }

    #[test]
    fn stop_signal_is_written_into_the_config() {
        let image = oci::Image::new(
            vec![oci::Layer::new(&[oci::Entry::file("a", "a")], oci::Compression::None).unwrap()],
            &oci::ImageConfig::default(),
            oci::ManifestFormat::Oci,
        )
        .unwrap();
        let signalled = with_stop_signal(&image, "SIGUSR1").unwrap();
        let config: serde_json::Value = serde_json::from_slice(&signalled.config).unwrap();
        assert_eq!(config["config"]["StopSignal"], "SIGUSR1");
        assert_eq!(
            signalled.config_digest,
            oci::sha256_digest(&signalled.config)
        );
        let manifest: serde_json::Value = serde_json::from_slice(&signalled.manifest).unwrap();
        assert_eq!(
            manifest["config"]["digest"],
            signalled.config_digest.as_str()
        );
        assert_eq!(
            signalled.manifest_digest,
            oci::sha256_digest(&signalled.manifest)
        );
    }
}
