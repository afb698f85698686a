//! Pod sandbox lifecycle: RunPodSandbox, StopPodSandbox, RemovePodSandbox and recovery at start.
//!
//! Every host resource (IPC/UTS/network namespace pins, the pod's /dev/shm, the CNI attachment)
//! is named in the sandbox record *before* it is made. A sandbox that crashed half-made is torn
//! down from that record on the next start; teardown is idempotent step by step, so it can be
//! repeated after another crash.

use crate::sandbox::cni::{
    self, Attachment, Cni, CniError, NetworkList, PluginExec, PortMapping, ProcessExec,
};
use crate::sandbox::netns::{self, NetnsError, NetnsOps, NsKind};
use crate::sandbox::pidns::{PidNsError, PidNsOps};
use crate::sandbox::store::{
    NetworkAttachment, SANDBOX_RECORD_VERSION, SandboxRecord, SandboxState, SandboxStore,
    SandboxStoreError,
};
use base64::Engine;
use keelson_cri::v1::{PodSandboxConfig, Protocol};
use nix::mount::{MntFlags, MsFlags};
use prost::Message;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why a sandbox operation failed; names the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid pod sandbox config: {0}")]
    Invalid(String),
    #[error("pod sandbox name {name:?} is already reserved for sandbox {id}")]
    NameTaken { name: String, id: String },
    #[error("pod sandbox {id}: {source}")]
    Namespace { id: String, source: NetnsError },
    #[error("pod sandbox {id}: {source}")]
    Network { id: String, source: CniError },
    #[error("pod sandbox {id}: {what}: {source}")]
    Io {
        id: String,
        what: String,
        source: io::Error,
    },
    #[error("pod sandbox {id}: {source}")]
    PidNamespace { id: String, source: PidNsError },
    #[error(transparent)]
    Store(#[from] SandboxStoreError),
    #[error(transparent)]
    Records(#[from] crate::record_store::RecordStoreError),
}

/// Mounting the pod's /dev/shm; faked in unit tests.
pub trait ShmOps: Send + Sync {
    fn mount_shm(&self, path: &Path, size_bytes: u64) -> io::Result<()>;
    fn unmount(&self, path: &Path) -> io::Result<()>;
}

/// A real tmpfs.
pub struct KernelShm;

impl ShmOps for KernelShm {
    fn mount_shm(&self, path: &Path, size_bytes: u64) -> io::Result<()> {
        fs::create_dir_all(path)?;
        let data = format!("mode=1777,size={size_bytes}");
        nix::mount::mount(
            Some("shm"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(data.as_str()),
        )
        .map_err(io::Error::from)
    }

    fn unmount(&self, path: &Path) -> io::Result<()> {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        match fs::remove_dir(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Attaching a pod to its network; the real one runs CNI plugins.
pub trait PodNetwork: Send + Sync {
    /// The network list that an attach would use now (read fresh: config edits apply to new pods).
    fn current(&self) -> Result<NetworkList, CniError>;
    /// Loopback plus the network, with `list` (the one recorded before ADD started).
    fn attach(&self, list: &NetworkList, att: &Attachment) -> Result<serde_json::Value, CniError>;
    fn detach(
        &self,
        list: &NetworkList,
        att: &Attachment,
        result: Option<&serde_json::Value>,
    ) -> Result<(), CniError>;
}

/// CNI plugins from the configured directories.
pub struct CniNetwork<E: PluginExec = ProcessExec> {
    pub conf_dir: PathBuf,
    pub cni: Cni<E>,
}

impl<E: PluginExec> PodNetwork for CniNetwork<E> {
    fn current(&self) -> Result<NetworkList, CniError> {
        NetworkList::load_first(&self.conf_dir)
    }

    fn attach(&self, list: &NetworkList, att: &Attachment) -> Result<serde_json::Value, CniError> {
        let lo = Attachment {
            ifname: "lo".into(),
            port_mappings: Vec::new(),
            ..att.clone()
        };
        self.cni.add(&NetworkList::loopback(), &lo)?;
        self.cni.add(list, att)
    }

    fn detach(
        &self,
        list: &NetworkList,
        att: &Attachment,
        result: Option<&serde_json::Value>,
    ) -> Result<(), CniError> {
        self.cni.del(list, att, result)
    }
}

/// Aborts the process at a named point when `KEELSON_FAILPOINTS` lists it: the crash-recovery
/// tests use it to kill the daemon between two steps. Costs one env lookup per point.
pub fn failpoint(name: &str) {
    if std::env::var("KEELSON_FAILPOINTS").is_ok_and(|v| v.split(',').any(|p| p == name)) {
        tracing::error!(failpoint = name, "failpoint hit: aborting");
        std::process::abort();
    }
}

/// The pod's hostname: the CRI's, else the node's (as containerd does); the kernel takes at most 64 bytes.
fn pod_hostname(requested: &str) -> String {
    if !requested.is_empty() {
        return requested.to_string();
    }
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// A fresh 64-hex-character id, as containerd makes them.
pub fn new_id() -> String {
    let mut buf = [0u8; 32];
    if let Err(e) =
        fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut buf))
    {
        panic!("reading /dev/urandom: {e}");
    }
    hex::encode(buf)
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

const DEFAULT_SHM_BYTES: u64 = 64 << 20;

/// `/etc/resolv.conf` for the pod: from the CRI DNSConfig, else the host's.
pub fn resolv_conf(dns: Option<&keelson_cri::v1::DnsConfig>, host: &str) -> String {
    match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut out = String::new();
            if !d.searches.is_empty() {
                out.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for s in &d.servers {
                out.push_str(&format!("nameserver {s}\n"));
            }
            if !d.options.is_empty() {
                out.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            out
        }
        _ => host.to_string(),
    }
}

/// `/etc/hosts` for the pod: localhost entries, then the pod's own address under its hostname.
pub fn hosts_file(hostname: &str, ips: &[String]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    for ip in ips {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    out
}

/// Pods, their namespaces and networks.
pub struct SandboxManager {
    pub store: SandboxStore,
    state_dir: PathBuf,
    ns: Arc<dyn NetnsOps>,
    shm: Arc<dyn ShmOps>,
    network: Arc<dyn PodNetwork>,
    pidns: Arc<dyn PidNsOps>,
    /// Held while checking and reserving a pod's name.
    names: Mutex<()>,
}

impl SandboxManager {
    /// Opens the records under `root` (runtime files under `state`) and finishes or undoes what a
    /// crash interrupted.
    pub fn open(
        root: &Path,
        state: &Path,
        ns: Arc<dyn NetnsOps>,
        shm: Arc<dyn ShmOps>,
        network: Arc<dyn PodNetwork>,
        pidns: Arc<dyn PidNsOps>,
    ) -> Result<Self, SandboxError> {
        let m = Self {
            store: SandboxStore::open(root)?,
            state_dir: state.join("sandboxes"),
            ns,
            shm,
            network,
            pidns,
            names: Mutex::new(()),
        };
        m.recover();
        Ok(m)
    }

    fn recover(&self) {
        for dir in self.store.orphan_dirs() {
            tracing::info!(dir = %dir.display(), "removing leftover sandbox directory");
            let _ = fs::remove_dir_all(&dir);
            if let Some(id) = dir.file_name() {
                self.pidns.stop_orphans(&id.to_string_lossy());
            }
        }
        // Holders whose sandbox no longer exists at all (a crash during removal).
        for id in self.pidns.running() {
            if self.store.get(&id).is_none() {
                self.pidns.stop_orphans(&id);
            }
        }
        for r in self.store.list() {
            let lost_netns = r.netns.as_deref().is_some_and(|p| !netns::is_pinned(p));
            if r.state == SandboxState::Creating {
                tracing::warn!(sandbox = %r.id, "undoing a sandbox whose creation was interrupted");
                let result = self
                    .teardown(r.clone())
                    .and_then(|_| Ok(self.store.remove(&r.id)?));
                if let Err(e) = result {
                    tracing::error!(sandbox = %r.id, error = %e, "cannot undo interrupted sandbox; will retry at next start");
                }
            } else if r.state == SandboxState::Ready && lost_netns {
                // After a reboot /run is empty: release the IPs and mark the pod not ready.
                tracing::warn!(sandbox = %r.id, "network namespace is gone; marking sandbox not ready");
                if let Err(e) = self.teardown(r.clone()).and_then(|mut r| {
                    r.state = r.state.stopped();
                    Ok(self.store.put(&r)?)
                }) {
                    tracing::error!(sandbox = %r.id, error = %e, "cannot release resources of a lost sandbox");
                }
            }
        }
    }

    fn runtime_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join(id)
    }

    fn attachment(&self, r: &SandboxRecord, config: Option<&PodSandboxConfig>) -> Attachment {
        let port_mappings = config
            .map(|c| {
                c.port_mappings
                    .iter()
                    .filter(|p| p.host_port > 0)
                    .map(|p| PortMapping {
                        host_port: p.host_port,
                        container_port: p.container_port,
                        protocol: match Protocol::try_from(p.protocol).unwrap_or(Protocol::Tcp) {
                            Protocol::Tcp => "tcp",
                            Protocol::Udp => "udp",
                            Protocol::Sctp => "sctp",
                        }
                        .into(),
                        host_ip: p.host_ip.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Attachment {
            container_id: r.id.clone(),
            netns: r.netns.clone().unwrap_or_default(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), r.namespace.clone()),
                ("K8S_POD_NAME".into(), r.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), r.id.clone()),
                ("K8S_POD_UID".into(), r.uid.clone()),
            ],
            port_mappings,
        }
    }

    /// The CRI config a sandbox was created with.
    pub fn config_of(r: &SandboxRecord) -> Option<PodSandboxConfig> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&r.config_pb)
            .ok()?;
        PodSandboxConfig::decode(bytes.as_slice()).ok()
    }

    /// RunPodSandbox: returns the new sandbox's id.
    pub fn run(
        &self,
        config: &PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, SandboxError> {
        let meta = config
            .metadata
            .as_ref()
            .ok_or_else(|| SandboxError::Invalid("metadata is missing".into()))?;
        if meta.name.is_empty() {
            return Err(SandboxError::Invalid("metadata.name is empty".into()));
        }
        if !runtime_handler.is_empty() && runtime_handler != "keelson" && runtime_handler != "runc"
        {
            return Err(SandboxError::Invalid(format!(
                "unknown runtime handler {runtime_handler:?}"
            )));
        }
        if config.hostname.len() > 64 {
            return Err(SandboxError::Invalid(format!(
                "hostname {:?} is longer than 64 bytes",
                config.hostname
            )));
        }
        let linux = config.linux.as_ref();
        let ns_opts = linux
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref());
        use keelson_cri::v1::NamespaceMode;
        let is_node = |m: i32| NamespaceMode::try_from(m) == Ok(NamespaceMode::Node);
        let cgroup_parent = linux.map(|l| l.cgroup_parent.clone()).unwrap_or_default();
        validate_cgroup_parent(&cgroup_parent)?;
        let id = new_id();
        let mut r = SandboxRecord {
            version: SANDBOX_RECORD_VERSION,
            id: id.clone(),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            attempt: meta.attempt,
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            runtime_handler: runtime_handler.into(),
            created_at: now_nanos(),
            state: SandboxState::Creating,
            config_pb: base64::engine::general_purpose::STANDARD.encode(config.encode_to_vec()),
            hostname: pod_hostname(&config.hostname),
            host_network: ns_opts.is_some_and(|n| is_node(n.network)),
            host_ipc: ns_opts.is_some_and(|n| is_node(n.ipc)),
            host_pid: ns_opts.is_some_and(|n| is_node(n.pid)),
            // POD (the enum's zero value) shares one PID namespace across the pod's containers.
            pidns_requested: ns_opts
                .is_none_or(|n| NamespaceMode::try_from(n.pid) == Ok(NamespaceMode::Pod)),
            cgroup_parent,
            netns: None,
            ipcns: None,
            utsns: None,
            shm: None,
            network: None,
            pid_holder: None,
        };
        // Reserve the name under a lock so two concurrent runs of one pod cannot both succeed.
        {
            let _reserve = self.names.lock().expect("sandbox name lock");
            if let Some(other) = self
                .store
                .list()
                .into_iter()
                .find(|o| o.reserved_name() == r.reserved_name())
            {
                return Err(SandboxError::NameTaken {
                    name: r.reserved_name(),
                    id: other.id,
                });
            }
            self.store.put(&r)?;
        }
        match self.create_resources(&mut r, config) {
            Ok(()) => Ok(id),
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "RunPodSandbox failed; undoing");
                if let Err(undo) = self
                    .teardown(r.clone())
                    .and_then(|_| Ok(self.store.remove(&id)?))
                {
                    tracing::error!(sandbox = %id, error = %undo, "cannot undo failed sandbox; will retry at next start");
                }
                Err(e)
            }
        }
    }

    fn create_resources(
        &self,
        r: &mut SandboxRecord,
        config: &PodSandboxConfig,
    ) -> Result<(), SandboxError> {
        let id = r.id.clone();
        let io_err = |what: &str| {
            let id = id.clone();
            let what = what.to_string();
            move |source| SandboxError::Io { id, what, source }
        };
        let files = self.store.dir_of(&id);
        let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        fs::write(
            files.join("resolv.conf"),
            resolv_conf(config.dns_config.as_ref(), &host_resolv),
        )
        .map_err(io_err("writing resolv.conf"))?;
        fs::write(files.join("hostname"), format!("{}\n", r.hostname))
            .map_err(io_err("writing hostname"))?;
        let hosts = if r.host_network {
            fs::read_to_string("/etc/hosts").unwrap_or_else(|_| hosts_file(&r.hostname, &[]))
        } else {
            hosts_file(&r.hostname, &[])
        };
        fs::write(files.join("hosts"), hosts).map_err(io_err("writing hosts"))?;

        let run = self.runtime_dir(&id);
        fs::create_dir_all(&run).map_err(io_err("creating the runtime directory"))?;
        let ns_err = |source| SandboxError::Namespace {
            id: id.clone(),
            source,
        };
        if !r.host_ipc {
            r.ipcns = Some(run.join("ipc"));
            self.store.put(r)?;
            self.ns
                .create(NsKind::Ipc, r.ipcns.as_deref().expect("set"), None)
                .map_err(ns_err)?;
            r.shm = Some(run.join("shm"));
            self.store.put(r)?;
            self.shm
                .mount_shm(r.shm.as_deref().expect("set"), DEFAULT_SHM_BYTES)
                .map_err(io_err("mounting /dev/shm"))?;
        }
        if !r.host_network {
            r.utsns = Some(run.join("uts"));
            self.store.put(r)?;
            self.ns
                .create(
                    NsKind::Uts,
                    r.utsns.as_deref().expect("set"),
                    Some(&r.hostname),
                )
                .map_err(ns_err)?;
            r.netns = Some(run.join("net"));
            self.store.put(r)?;
            self.ns
                .create(NsKind::Net, r.netns.as_deref().expect("set"), None)
                .map_err(ns_err)?;
            failpoint("sandbox-after-netns");
            let list = self
                .network
                .current()
                .map_err(|source| SandboxError::Network {
                    id: id.clone(),
                    source,
                })?;
            r.network = Some(NetworkAttachment {
                list: network_list_json(&list),
                result: None,
                ips: Vec::new(),
            });
            self.store.put(r)?;
            let result = self
                .network
                .attach(&list, &self.attachment(r, Some(config)))
                .map_err(|source| SandboxError::Network {
                    id: id.clone(),
                    source,
                })?;
            failpoint("sandbox-after-cni-add");
            let ips = cni::result_ips(&result);
            r.network = Some(NetworkAttachment {
                list: network_list_json(&list),
                result: Some(result),
                ips: ips.clone(),
            });
            self.store.put(r)?;
            fs::write(files.join("hosts"), hosts_file(&r.hostname, &ips))
                .map_err(io_err("writing hosts"))?;
        }
        if r.pidns_requested {
            // The record already says a holder may exist (pidns_requested), so a crash here is
            // cleaned up by `recover`, which finds holders by their command line.
            let holder = self
                .pidns
                .start(&id)
                .map_err(|source| SandboxError::PidNamespace {
                    id: id.clone(),
                    source,
                })?;
            r.pid_holder = Some(holder);
            self.store.put(r)?;
        }
        r.state = r.state.ready(&id)?;
        self.store.put(r)?;
        Ok(())
    }

    /// Releases every host resource the record names, in reverse order of creation, writing the
    /// record after each step. Idempotent. Returns the updated record.
    fn teardown(&self, mut r: SandboxRecord) -> Result<SandboxRecord, SandboxError> {
        let id = r.id.clone();
        if let Some(holder) = r.pid_holder.take() {
            self.pidns.stop(&holder);
            self.store.put(&r)?;
        }
        if r.pidns_requested && r.state == SandboxState::Creating {
            self.pidns.stop_orphans(&id);
        }
        if let Some(net) = r.network.clone() {
            let list = NetworkList::parse(Path::new("<recorded>"), &net.list.to_string()).map_err(
                |source| SandboxError::Network {
                    id: id.clone(),
                    source,
                },
            )?;
            let config = Self::config_of(&r);
            self.network
                .detach(
                    &list,
                    &self.attachment(&r, config.as_ref()),
                    net.result.as_ref(),
                )
                .map_err(|source| SandboxError::Network {
                    id: id.clone(),
                    source,
                })?;
            r.network = None;
            self.store.put(&r)?;
        }
        let ns_err = |source| SandboxError::Namespace {
            id: id.clone(),
            source,
        };
        for pin in [r.netns.take(), r.utsns.take(), r.ipcns.take()]
            .into_iter()
            .flatten()
        {
            self.ns.remove(&pin).map_err(ns_err)?;
        }
        if let Some(shm) = r.shm.take() {
            self.shm.unmount(&shm).map_err(|source| SandboxError::Io {
                id: id.clone(),
                what: "unmounting /dev/shm".into(),
                source,
            })?;
        }
        self.store.put(&r)?;
        let _ = fs::remove_dir(self.runtime_dir(&id));
        Ok(r)
    }

    /// StopPodSandbox: releases the network and namespaces; the record stays, NotReady.
    /// Unknown ids succeed (critest and kubelet expect idempotence).
    pub fn stop(&self, id: &str) -> Result<(), SandboxError> {
        self.store.locked(id, |r| {
            let Some(r) = r else { return Ok(()) };
            let mut r = self.teardown(r)?;
            r.state = r.state.stopped();
            self.store.put(&r)?;
            Ok(())
        })
    }

    /// RemovePodSandbox: stops the sandbox if needed and deletes it. Unknown ids succeed.
    pub fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let Some(r) = self.store.find(id) else {
            return Ok(());
        };
        self.stop(&r.id)?;
        self.store.locked(&r.id, |r| match r {
            Some(r) => Ok(self.store.remove(&r.id)?),
            None => Ok(()),
        })
    }
}

fn network_list_json(list: &NetworkList) -> serde_json::Value {
    serde_json::json!({ "name": list.name, "cniVersion": list.cni_version, "plugins": list.plugins })
}

/// A cgroup parent must be an absolute, clean path (cgroupfs) or a systemd slice name.
fn validate_cgroup_parent(parent: &str) -> Result<(), SandboxError> {
    if parent.is_empty() {
        return Ok(());
    }
    let bad = |why: &str| {
        Err(SandboxError::Invalid(format!(
            "cgroup parent {parent:?} {why}"
        )))
    };
    if parent.ends_with(".slice") && !parent.contains('/') {
        return Ok(());
    }
    if !parent.starts_with('/') {
        return bad("must be an absolute path or a systemd slice");
    }
    if parent.split('/').any(|c| c == ".." || c == ".") {
        return bad("must not contain . or .. components");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Records namespace and mount operations instead of making them.
    #[derive(Default)]
    struct FakeHost {
        live: Mutex<HashSet<PathBuf>>,
        fail_net: bool,
    }

    impl NetnsOps for FakeHost {
        fn create(
            &self,
            kind: NsKind,
            path: &Path,
            _hostname: Option<&str>,
        ) -> Result<(), NetnsError> {
            if self.fail_net && kind == NsKind::Net {
                return Err(NetnsError::Create {
                    kind: "net",
                    path: path.into(),
                    step: "unshare",
                    source: io::Error::other("injected"),
                });
            }
            assert!(
                self.live.lock().unwrap().insert(path.to_path_buf()),
                "created twice: {path:?}"
            );
            Ok(())
        }
        fn remove(&self, path: &Path) -> Result<(), NetnsError> {
            self.live.lock().unwrap().remove(path);
            Ok(())
        }
    }

    impl ShmOps for FakeHost {
        fn mount_shm(&self, path: &Path, _size: u64) -> io::Result<()> {
            self.live.lock().unwrap().insert(path.to_path_buf());
            Ok(())
        }
        fn unmount(&self, path: &Path) -> io::Result<()> {
            self.live.lock().unwrap().remove(path);
            Ok(())
        }
    }

    impl PidNsOps for FakeHost {
        fn start(&self, sandbox_id: &str) -> Result<crate::sandbox::pidns::PidHolder, PidNsError> {
            self.live
                .lock()
                .unwrap()
                .insert(PathBuf::from(format!("pidns-{sandbox_id}")));
            Ok(crate::sandbox::pidns::PidHolder {
                pid: 1,
                start_ticks: 0,
            })
        }
        fn stop(&self, _holder: &crate::sandbox::pidns::PidHolder) {
            self.live
                .lock()
                .unwrap()
                .retain(|p| !p.to_string_lossy().starts_with("pidns-"));
        }
        fn stop_orphans(&self, _sandbox_id: &str) {}
        fn running(&self) -> Vec<String> {
            Vec::new()
        }
    }

    #[derive(Default)]
    struct FakeNetwork {
        attached: Mutex<HashSet<String>>,
    }

    impl PodNetwork for FakeNetwork {
        fn current(&self) -> Result<NetworkList, CniError> {
            NetworkList::parse(
                Path::new("fake"),
                r#"{"name":"fake","plugins":[{"type":"bridge"}]}"#,
            )
        }
        fn attach(
            &self,
            _l: &NetworkList,
            att: &Attachment,
        ) -> Result<serde_json::Value, CniError> {
            self.attached
                .lock()
                .unwrap()
                .insert(att.container_id.clone());
            Ok(serde_json::json!({"ips":[{"address":"10.1.0.7/24"}]}))
        }
        fn detach(
            &self,
            _l: &NetworkList,
            att: &Attachment,
            _r: Option<&serde_json::Value>,
        ) -> Result<(), CniError> {
            self.attached.lock().unwrap().remove(&att.container_id);
            Ok(())
        }
    }

    fn manager(root: &Path, host: Arc<FakeHost>, net: Arc<FakeNetwork>) -> SandboxManager {
        SandboxManager::open(
            root,
            &root.join("state"),
            host.clone(),
            host.clone(),
            net,
            host,
        )
        .unwrap()
    }

    fn config(name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(keelson_cri::v1::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "web-0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn run_stop_remove_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let (host, net) = (
            Arc::new(FakeHost::default()),
            Arc::new(FakeNetwork::default()),
        );
        let m = manager(root.path(), host.clone(), net.clone());
        let id = m.run(&config("web"), "").unwrap();
        let r = m.store.get(&id).unwrap();
        assert_eq!(r.state, SandboxState::Ready);
        assert_eq!(r.ips(), ["10.1.0.7"]);
        assert_eq!(
            host.live.lock().unwrap().len(),
            5,
            "ipc, shm, uts, net, pid holder"
        );
        let hosts = fs::read_to_string(m.store.dir_of(&id).join("hosts")).unwrap();
        assert!(hosts.contains("10.1.0.7\tweb-0"), "{hosts}");
        assert!(matches!(
            m.run(&config("web"), ""),
            Err(SandboxError::NameTaken { .. })
        ));

        m.stop(&id).unwrap();
        assert_eq!(m.store.get(&id).unwrap().state, SandboxState::NotReady);
        assert!(host.live.lock().unwrap().is_empty());
        assert!(net.attached.lock().unwrap().is_empty());
        m.stop(&id).unwrap();
        m.remove(&id).unwrap();
        assert!(m.store.get(&id).is_none());
        m.remove(&id).unwrap();
        m.stop("no-such-sandbox").unwrap();
    }

    #[test]
    fn failed_run_is_undone() {
        let root = tempfile::tempdir().unwrap();
        let host = Arc::new(FakeHost {
            fail_net: true,
            ..Default::default()
        });
        let net = Arc::new(FakeNetwork::default());
        let m = manager(root.path(), host.clone(), net);
        let err = m.run(&config("web"), "").unwrap_err().to_string();
        assert!(err.contains("injected"), "{err}");
        assert!(m.store.list().is_empty());
        assert!(
            host.live.lock().unwrap().is_empty(),
            "{:?}",
            host.live.lock().unwrap()
        );
    }

    #[test]
    fn interrupted_creation_is_undone_at_start() {
        let root = tempfile::tempdir().unwrap();
        let (host, net) = (
            Arc::new(FakeHost::default()),
            Arc::new(FakeNetwork::default()),
        );
        let m = manager(root.path(), host.clone(), net.clone());
        let id = m.run(&config("web"), "").unwrap();
        // Pretend the process died just after CNI ADD: the record still says Creating.
        let mut r = m.store.get(&id).unwrap();
        r.state = SandboxState::Creating;
        m.store.put(&r).unwrap();
        drop(m);
        let m = manager(root.path(), host.clone(), net.clone());
        assert!(m.store.list().is_empty());
        assert!(host.live.lock().unwrap().is_empty());
        assert!(net.attached.lock().unwrap().is_empty(), "CNI DEL ran");
        assert!(!root.path().join("sandboxes").join(&id).exists());
    }

    #[test]
    fn host_network_pod_makes_no_network_namespace() {
        let root = tempfile::tempdir().unwrap();
        let (host, net) = (
            Arc::new(FakeHost::default()),
            Arc::new(FakeNetwork::default()),
        );
        let m = manager(root.path(), host.clone(), net.clone());
        let mut c = config("hostnet");
        c.linux = Some(keelson_cri::v1::LinuxPodSandboxConfig {
            security_context: Some(keelson_cri::v1::LinuxSandboxSecurityContext {
                namespace_options: Some(keelson_cri::v1::NamespaceOption {
                    network: keelson_cri::v1::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = m.run(&c, "").unwrap();
        let r = m.store.get(&id).unwrap();
        assert!(r.host_network && r.netns.is_none() && r.network.is_none());
        assert!(net.attached.lock().unwrap().is_empty());
    }

    #[test]
    fn dns_and_cgroup_parent_rules() {
        let dns = keelson_cri::v1::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns), "nameserver 1.1.1.1\n"),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert_eq!(
            resolv_conf(None, "nameserver 9.9.9.9\n"),
            "nameserver 9.9.9.9\n"
        );
        assert!(validate_cgroup_parent("/kubepods/burstable/pod1").is_ok());
        assert!(validate_cgroup_parent("kubepods-burstable.slice").is_ok());
        assert!(validate_cgroup_parent("/kubepods/../../etc").is_err());
        assert!(validate_cgroup_parent("relative/path").is_err());
    }
}
