//! Container lifecycle: CreateContainer, StartContainer, StopContainer, RemoveContainer, exit
//! tracking, ExecSync and recovery at start.
//!
//! A container's rootfs is an overlay of its image's snapshots with a private upper directory;
//! its OCI bundle lives under `--state`; a `keelson-shim` creates it with libcontainer, parents
//! and reaps it, and records its exit in `exit.json`. As for sandboxes, every host resource is
//! named in the record before it is made, so a crash is undone or finished on the next start.

use crate::config::CgroupDriver;
use crate::container::cgroups::{self, CgroupError, CgroupWriter};
use crate::container::events::{ContainerEvent, ContainerEventKind, EventHub};
use crate::container::hostfs::RealHostFs;
use crate::container::seccomp::{self, HostArch};
use crate::container::shim::{ShimError, ShimLaunch, ShimOps};
use crate::container::spec::{self, SandboxFiles, SandboxNamespaces, SpecError, SpecInputs};
use crate::container::store::{
    CONTAINER_RECORD_VERSION, ContainerRecord, ContainerState, ContainerStore, ContainerStoreError,
};
use crate::image::manager::ImageManager;
use crate::sandbox::manager::{SandboxManager, failpoint, new_id};
use crate::sandbox::store::SandboxState;
use base64::Engine;
use keelson_cri::v1::{ContainerConfig, LinuxContainerResources, NamespaceMode};
use keelson_shim::protocol::{self, ExitInfo, Request, Response};
use nix::mount::{MntFlags, MsFlags};
use prost::Message;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a container operation failed; names the container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container config: {0}")]
    Invalid(String),
    #[error("pod sandbox {0} not found")]
    SandboxNotFound(String),
    #[error("pod sandbox {0} is not ready")]
    SandboxNotReady(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("image {0:?} not found: pull it first")]
    ImageNotFound(String),
    #[error("container name {name:?} is already in use by container {id}")]
    NameTaken { name: String, id: String },
    #[error("container {id} is {state:?}: {what}")]
    WrongState {
        id: String,
        state: ContainerState,
        what: &'static str,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error("container {id}: {what}: {source}")]
    Io {
        id: String,
        what: String,
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] ContainerStoreError),
    #[error(transparent)]
    Records(#[from] crate::record_store::RecordStoreError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// Mounting a container's root filesystem; faked in unit tests.
pub trait RootfsOps: Send + Sync {
    fn mount_overlay(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()>;
    fn unmount(&self, target: &Path) -> io::Result<()>;
}

/// Real overlayfs mounts.
pub struct KernelOverlay;

impl RootfsOps for KernelOverlay {
    fn mount_overlay(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()> {
        let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(io::Error::from)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The signal number for an image's `StopSignal` (`SIGTERM`, `TERM`, `15`); SIGTERM when unknown.
pub fn stop_signal_number(name: Option<&str>) -> i32 {
    let Some(name) = name.map(str::trim).filter(|s| !s.is_empty()) else {
        return libc::SIGTERM;
    };
    if let Ok(n) = name.parse::<i32>() {
        return n;
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .unwrap_or(libc::SIGTERM)
}

/// Where a running container's streams are reached.
#[derive(Debug, Clone)]
pub struct StreamTarget {
    /// The full id (a CRI request may name a prefix).
    pub id: String,
    pub sandbox_id: String,
    /// The shim's attach socket.
    pub attach_socket: PathBuf,
    /// Created with stdin kept open (CRI `stdin`).
    pub stdin: bool,
    /// Created with a terminal.
    pub tty: bool,
}

/// Containers of all pods.
pub struct ContainerManager {
    pub store: ContainerStore,
    state_dir: PathBuf,
    /// Short on purpose: unix socket paths (the shim's, libcontainer's notify socket) must fit
    /// in 108 bytes.
    shims_dir: PathBuf,
    libcontainer_root: PathBuf,
    images: Arc<ImageManager>,
    sandboxes: Arc<SandboxManager>,
    rootfs: Arc<dyn RootfsOps>,
    shim: Arc<dyn ShimOps>,
    cgroup_driver: CgroupDriver,
    /// Held while checking and reserving a container name.
    names: Mutex<()>,
    /// Lifecycle events for GetContainerEvents.
    pub events: Arc<EventHub>,
}

impl ContainerManager {
    #[allow(clippy::too_many_arguments)]
    /// Longest `--state` whose shim sockets still fit: `<state>/s/<32 hex>/attach.sock` < 108 bytes.
    /// (libcontainer binds its notify socket through a chdir, so its path length does not matter.)
    pub const MAX_STATE_DIR_LEN: usize = 107 - "/s/".len() - 32 - "/attach.sock".len();

    pub fn open(
        root: &Path,
        state: &Path,
        images: Arc<ImageManager>,
        sandboxes: Arc<SandboxManager>,
        rootfs: Arc<dyn RootfsOps>,
        shim: Arc<dyn ShimOps>,
        cgroup_driver: CgroupDriver,
    ) -> Result<Self, ContainerError> {
        if state.as_os_str().len() > Self::MAX_STATE_DIR_LEN {
            return Err(ContainerError::Invalid(format!(
                "state directory {} is longer than {} bytes: container sockets under it would not fit the unix socket path limit",
                state.display(),
                Self::MAX_STATE_DIR_LEN
            )));
        }
        let m = Self {
            store: ContainerStore::open(root)?,
            state_dir: state.join("containers"),
            shims_dir: state.join("s"),
            libcontainer_root: state.join("lc"),
            images,
            sandboxes,
            rootfs,
            shim,
            cgroup_driver,
            names: Mutex::new(()),
            events: Arc::new(EventHub::default()),
        };
        m.recover();
        Ok(m)
    }

    fn bundle_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join(id)
    }

    /// `<state>/s/<first 32 hex of the id>`: its `shim.sock` stays far below the socket path limit.
    fn shim_dir(&self, id: &str) -> PathBuf {
        self.shims_dir.join(&id[..id.len().min(32)])
    }

    /// Tells event subscribers, if any, what happened to a container of `sandbox_id`.
    fn emit(&self, id: &str, sandbox_id: &str, kind: ContainerEventKind) {
        if !self.events.has_subscribers() {
            return;
        }
        let containers = self
            .store
            .list()
            .into_iter()
            .filter(|c| c.sandbox_id == sandbox_id)
            .collect();
        self.events.publish(ContainerEvent {
            container_id: id.to_string(),
            kind,
            at: now_nanos(),
            sandbox: self.sandboxes.store.get(sandbox_id),
            containers,
        });
    }

    /// The CRI config a container was created with.
    pub fn config_of(r: &ContainerRecord) -> Option<ContainerConfig> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&r.config_pb)
            .ok()?;
        ContainerConfig::decode(bytes.as_slice()).ok()
    }

    fn recover(&self) {
        for dir in self.store.orphan_dirs() {
            tracing::info!(dir = %dir.display(), "removing leftover container directory");
            let _ = fs::remove_dir_all(&dir);
        }
        for r in self.store.list() {
            match r.state {
                ContainerState::Creating => {
                    tracing::warn!(container = %r.id, "undoing a container whose creation was interrupted");
                    if let Err(e) = self.destroy(&r) {
                        tracing::error!(container = %r.id, error = %e, "cannot undo interrupted container; will retry at next start");
                    }
                }
                ContainerState::Created | ContainerState::Running => {
                    let r = self.refresh(r);
                    if matches!(r.state, ContainerState::Created | ContainerState::Running)
                        && self
                            .call(&r, &Request::State, Duration::from_secs(2))
                            .is_err()
                    {
                        // No exit record and no shim (e.g. after a reboot): the process is gone.
                        self.mark_exited(
                            r,
                            ExitInfo {
                                exit_code: 255,
                                exited_at_unix_nanos: now_nanos(),
                                reason: protocol::ExitReason::Error,
                                message: "the container's shim is gone".into(),
                            },
                        );
                    }
                }
                ContainerState::Exited => {}
            }
        }
    }

    fn call(
        &self,
        r: &ContainerRecord,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, ShimError> {
        match self.shim.call(&r.id, &self.shim_dir(&r.id), req, timeout)? {
            Response::Error(e) => Err(ShimError::Create {
                id: r.id.clone(),
                message: e.message,
            }),
            other => Ok(other),
        }
    }

    fn mark_exited(&self, mut r: ContainerRecord, exit: ExitInfo) -> ContainerRecord {
        let Ok(state) = r.state.exited(&r.id) else {
            return r;
        };
        let newly = r.state != ContainerState::Exited;
        r.state = state;
        r.exit_code = exit.exit_code;
        r.finished_at = exit.exited_at_unix_nanos;
        r.reason = exit.reason.as_str().to_string();
        r.message = exit.message;
        if let Err(e) = self.store.put(&r) {
            tracing::error!(container = %r.id, error = %e, "cannot record container exit");
        }
        if newly {
            self.emit(&r.id, &r.sandbox_id, ContainerEventKind::Stopped);
        }
        r
    }

    /// Folds a recorded exit (`exit.json`, written by the shim) into the record.
    pub fn refresh(&self, r: ContainerRecord) -> ContainerRecord {
        if !matches!(r.state, ContainerState::Created | ContainerState::Running) {
            return r;
        }
        match protocol::read_exit_file(&self.shim_dir(&r.id)) {
            Ok(Some(exit)) => self.mark_exited(r, exit),
            _ => r,
        }
    }

    /// The record, with any exit since the last look folded in.
    pub fn find(&self, id: &str) -> Option<ContainerRecord> {
        self.store.find(id).map(|r| self.refresh(r))
    }

    pub fn list(&self) -> Vec<ContainerRecord> {
        self.store
            .list()
            .into_iter()
            .map(|r| self.refresh(r))
            .collect()
    }

    /// CreateContainer: returns the new container's id.
    pub fn create(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox_config: Option<&keelson_cri::v1::PodSandboxConfig>,
    ) -> Result<String, ContainerError> {
        let sandbox = self
            .sandboxes
            .store
            .find(sandbox_id)
            .ok_or_else(|| ContainerError::SandboxNotFound(sandbox_id.into()))?;
        if sandbox.state != SandboxState::Ready {
            return Err(ContainerError::SandboxNotReady(sandbox.id));
        }
        let meta = config
            .metadata
            .as_ref()
            .ok_or_else(|| ContainerError::Invalid("metadata is missing".into()))?;
        if meta.name.is_empty() {
            return Err(ContainerError::Invalid("metadata.name is empty".into()));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(ContainerError::Invalid("image is empty".into()));
        }
        let image = self
            .images
            .resolve(&image_name)
            .ok()
            .flatten()
            .ok_or_else(|| ContainerError::ImageNotFound(image_name.clone()))?;
        let id = new_id();
        let mut r = ContainerRecord {
            version: CONTAINER_RECORD_VERSION,
            id: id.clone(),
            sandbox_id: sandbox.id.clone(),
            name: meta.name.clone(),
            attempt: meta.attempt,
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            image: image_name.clone(),
            image_id: image.id.clone(),
            chain_ids: image.chain_ids.clone(),
            config_pb: base64::engine::general_purpose::STANDARD.encode(config.encode_to_vec()),
            state: ContainerState::Creating,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path: None,
            stop_signal: image.config.stop_signal.clone(),
            rootfs: None,
            shim_launched: false,
            cgroups_path: None,
        };
        {
            let _reserve = self.names.lock().expect("container name lock");
            if let Some(other) = self.store.list().into_iter().find(|o| {
                o.sandbox_id == r.sandbox_id && o.name == r.name && o.attempt == r.attempt
            }) {
                return Err(ContainerError::NameTaken {
                    name: format!("{}_{}", r.name, r.attempt),
                    id: other.id,
                });
            }
            self.store.put(&r)?;
        }
        let sandbox_config = sandbox_config
            .cloned()
            .or_else(|| SandboxManager::config_of(&sandbox))
            .unwrap_or_default();
        match self.create_resources(&mut r, config, &sandbox, &sandbox_config, &image) {
            Ok(()) => {
                self.emit(&id, &r.sandbox_id, ContainerEventKind::Created);
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "CreateContainer failed; undoing");
                if let Err(undo) = self.destroy(&r) {
                    tracing::error!(container = %id, error = %undo, "cannot undo failed container; will retry at next start");
                }
                Err(e)
            }
        }
    }

    fn create_resources(
        &self,
        r: &mut ContainerRecord,
        config: &ContainerConfig,
        sandbox: &crate::sandbox::store::SandboxRecord,
        sandbox_config: &keelson_cri::v1::PodSandboxConfig,
        image: &crate::image::store::ImageRecord,
    ) -> Result<(), ContainerError> {
        let id = r.id.clone();
        let io_err = |what: &str| {
            let (id, what) = (id.clone(), what.to_string());
            move |source| ContainerError::Io { id, what, source }
        };
        let dir = self.store.dir_of(&id);
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        fs::create_dir_all(&upper).map_err(io_err("creating the upper directory"))?;
        fs::create_dir_all(&work).map_err(io_err("creating the work directory"))?;
        let bundle = self.bundle_dir(&id);
        let rootfs = bundle.join("rootfs");
        fs::create_dir_all(&rootfs).map_err(io_err("creating the bundle"))?;
        let mut lowers: Vec<PathBuf> = image
            .chain_ids
            .iter()
            .rev()
            .map(|c| self.images.snapshots().fs_path(c))
            .collect();
        if lowers.is_empty() {
            let empty = dir.join("empty");
            fs::create_dir_all(&empty).map_err(io_err("creating an empty lower directory"))?;
            lowers.push(empty);
        }
        r.rootfs = Some(rootfs.clone());
        self.store.put(r)?;
        self.rootfs
            .mount_overlay(&lowers, &upper, &work, &rootfs)
            .map_err(io_err("mounting the rootfs overlay"))?;

        let passwd = fs::read_to_string(rootfs.join("etc/passwd")).ok();
        let group = fs::read_to_string(rootfs.join("etc/group")).ok();
        let sandbox_files = self.sandboxes.store.dir_of(&sandbox.id);
        let ns = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let target_pid = match ns.as_ref().map(|n| NamespaceMode::try_from(n.pid)) {
            Some(Ok(NamespaceMode::Target)) => {
                let target = ns.as_ref().map(|n| n.target_id.clone()).unwrap_or_default();
                let t = self
                    .find(&target)
                    .ok_or_else(|| ContainerError::NotFound(target.clone()))?;
                let pid = protocol::read_shim_file(&self.shim_dir(&t.id))
                    .ok()
                    .flatten()
                    .map(|s| s.init_pid);
                pid.map(|p| PathBuf::from(format!("/proc/{p}/ns/pid")))
            }
            _ => None,
        };
        let cgroup_parent = if sandbox.cgroup_parent.is_empty() {
            match self.cgroup_driver {
                CgroupDriver::Cgroupfs => format!("/keelson/pod-{}", sandbox.id),
                CgroupDriver::Systemd => "keelson.slice".to_string(),
            }
        } else {
            sandbox.cgroup_parent.clone()
        };
        let oom = fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let inputs = SpecInputs {
            container_id: &id,
            sandbox_id: &sandbox.id,
            config,
            sandbox: sandbox_config,
            image: &image.config,
            image_name: &r.image,
            rootfs: &rootfs,
            sandbox_files: SandboxFiles {
                hostname: Some(sandbox_files.join("hostname")),
                hosts: Some(sandbox_files.join("hosts")),
                resolv_conf: Some(sandbox_files.join("resolv.conf")),
                shm: sandbox
                    .shm
                    .clone()
                    .or_else(|| sandbox.host_ipc.then(|| PathBuf::from("/dev/shm"))),
            },
            namespaces: SandboxNamespaces {
                network: sandbox.netns.clone(),
                ipc: sandbox.ipcns.clone(),
                uts: sandbox.utsns.clone(),
                pid: sandbox.pid_holder.map(|h| h.ns_path()),
                target_pid,
            },
            cgroup_parent: &cgroup_parent,
            cgroup_driver: self.cgroup_driver,
            unified_cgroups: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            runtime_oom_score_adj: oom,
            passwd: passwd.as_deref(),
            group: group.as_deref(),
            arch: HostArch::current().unwrap_or(HostArch::X86_64),
            host_apparmor: false,
            apparmor_default_profile: None,
            host: &RealHostFs,
        };
        let mut spec = spec::container_spec(&inputs)?;
        adapt_for_libcontainer(&mut spec, inputs.unified_cgroups);
        restrict_capabilities(&mut spec, own_bounding_set());
        r.cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.display().to_string());
        let spec_json = serde_json::to_vec_pretty(&spec).expect("oci spec serializes");
        fs::write(bundle.join("config.json"), spec_json).map_err(io_err("writing config.json"))?;

        let log_path = match (
            sandbox_config.log_directory.as_str(),
            config.log_path.as_str(),
        ) {
            ("", _) | (_, "") => PathBuf::from("/dev/null"),
            (dir, file) => Path::new(dir).join(file),
        };
        if let Some(parent) = log_path.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating the log directory"))?;
        }
        r.log_path = (log_path != Path::new("/dev/null")).then(|| log_path.clone());
        r.shim_launched = true;
        self.store.put(r)?;
        failpoint("container-before-shim");
        self.shim.launch(&ShimLaunch {
            id: id.clone(),
            bundle,
            state_dir: self.shim_dir(&id),
            log_path,
            libcontainer_root: self.libcontainer_root.clone(),
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
            systemd_cgroup: self.cgroup_driver == CgroupDriver::Systemd,
        })?;
        failpoint("container-after-shim");
        r.state = r.state.created(&id)?;
        self.store.put(r)?;
        Ok(())
    }

    /// StartContainer.
    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        self.store.locked(id, |r| {
            let r = r.ok_or_else(|| ContainerError::NotFound(id.into()))?;
            self.start_locked(self.refresh(r))
        })
    }

    fn start_locked(&self, mut r: ContainerRecord) -> Result<(), ContainerError> {
        if r.state != ContainerState::Created {
            return Err(ContainerError::WrongState {
                id: r.id,
                state: r.state,
                what: "only a created container can start",
            });
        }
        self.call(&r, &Request::Start, Duration::from_secs(30))?;
        r.state = r.state.started(&r.id)?;
        r.started_at = match self.call(&r, &Request::State, Duration::from_secs(5)) {
            Ok(Response::State(s)) => s.started_at_unix_nanos.unwrap_or_else(now_nanos),
            _ => now_nanos(),
        };
        self.store.put(&r)?;
        self.emit(&r.id, &r.sandbox_id, ContainerEventKind::Started);
        Ok(())
    }

    /// StopContainer: the image's stop signal, then SIGKILL after `timeout`. Idempotent.
    pub fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        self.store.locked(id, |r| match r {
            Some(r) => self.stop_locked(self.refresh(r), timeout),
            None => Ok(()),
        })
    }

    fn stop_locked(&self, r: ContainerRecord, timeout: Duration) -> Result<(), ContainerError> {
        if !matches!(r.state, ContainerState::Created | ContainerState::Running) {
            return Ok(());
        }
        let signal = stop_signal_number(r.stop_signal.as_deref());
        if timeout > Duration::ZERO && r.state == ContainerState::Running {
            self.call(
                &r,
                &Request::Kill { signal, all: false },
                Duration::from_secs(5),
            )?;
            if let Some(exit) = self.wait_exit(&r, timeout) {
                self.mark_exited(r, exit);
                return Ok(());
            }
        }
        self.call(
            &r,
            &Request::Kill {
                signal: libc::SIGKILL,
                all: true,
            },
            Duration::from_secs(5),
        )?;
        let exit =
            self.wait_exit(&r, Duration::from_secs(10))
                .ok_or_else(|| ContainerError::Io {
                    id: r.id.clone(),
                    what: "waiting for the container to exit after SIGKILL".into(),
                    source: io::Error::from(io::ErrorKind::TimedOut),
                })?;
        self.mark_exited(r, exit);
        Ok(())
    }

    fn wait_exit(&self, r: &ContainerRecord, timeout: Duration) -> Option<ExitInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(exit)) = protocol::read_exit_file(&self.shim_dir(&r.id)) {
                return Some(exit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// RemoveContainer: kills it if it still runs, then frees everything. Unknown ids succeed.
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let Some(r) = self.find(id) else {
            return Ok(());
        };
        self.stop(&r.id, Duration::ZERO)?;
        self.store.locked(&r.id, |r| {
            let Some(r) = r else { return Ok(()) };
            self.destroy(&r)?;
            self.emit(&r.id, &r.sandbox_id, ContainerEventKind::Deleted);
            Ok(())
        })
    }

    /// The `linux.cgroupsPath` the container's OCI bundle was created with.
    pub fn cgroups_path(&self, id: &str) -> Option<String> {
        if let Some(path) = self.store.get(id).and_then(|r| r.cgroups_path) {
            return Some(path);
        }
        // Records written before the path was recorded: read it from the bundle.
        let spec = fs::read(self.bundle_dir(id).join("config.json")).ok()?;
        let spec: serde_json::Value = serde_json::from_slice(&spec).ok()?;
        spec.pointer("/linux/cgroupsPath")?
            .as_str()
            .map(str::to_string)
    }

    /// UpdateContainerResources: writes the set fields of `res` straight to the container's
    /// cgroup (while it has one) and records them in its config, so ContainerStatus reports them.
    pub fn update_resources(
        &self,
        id: &str,
        res: &LinuxContainerResources,
        cgroups: &dyn CgroupWriter,
    ) -> Result<(), ContainerError> {
        self.store.locked(id, |r| {
            let r = r.ok_or_else(|| ContainerError::NotFound(id.into()))?;
            self.update_resources_locked(self.refresh(r), res, cgroups)
        })
    }

    fn update_resources_locked(
        &self,
        mut r: ContainerRecord,
        res: &LinuxContainerResources,
        cgroups: &dyn CgroupWriter,
    ) -> Result<(), ContainerError> {
        let owner = format!("container {}", r.id);
        cgroups::validate_resources(&owner, res, cgroups.version())?;
        match r.state {
            ContainerState::Creating => {
                return Err(ContainerError::WrongState {
                    id: r.id,
                    state: r.state,
                    what: "its resources can change once it is created",
                });
            }
            ContainerState::Created | ContainerState::Running => {
                let path = self.cgroups_path(&r.id).unwrap_or_default();
                let candidates = cgroups::container_cgroup_candidates(&path);
                let cgroup =
                    cgroups::resolve(cgroups, &candidates).ok_or_else(|| CgroupError::Missing {
                        owner: owner.clone(),
                        tried: candidates
                            .iter()
                            .map(|c| c.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                cgroups::apply_resources(cgroups, &owner, &cgroup, res)?;
            }
            // Nothing runs: only the record changes.
            ContainerState::Exited => {}
        }
        let mut config = Self::config_of(&r).unwrap_or_default();
        let current = config
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default);
        cgroups::merge_resources(current, res);
        r.config_pb = base64::engine::general_purpose::STANDARD.encode(config.encode_to_vec());
        self.store.put(&r)?;
        tracing::info!(container = %r.id, "container resources updated");
        Ok(())
    }

    /// Frees a container's shim, libcontainer state, rootfs mount, directories and record. Idempotent.
    fn destroy(&self, r: &ContainerRecord) -> Result<(), ContainerError> {
        if r.shim_launched {
            // The shim shuts down only for a stopped container: kill one that was created (e.g.
            // a crash between shim launch and the record saying Created) or still runs.
            if let Ok(Response::State(state)) =
                self.call(r, &Request::State, Duration::from_secs(5))
                && state.status != protocol::ContainerStatus::Stopped
            {
                let _ = self.call(
                    r,
                    &Request::Kill {
                        signal: libc::SIGKILL,
                        all: true,
                    },
                    Duration::from_secs(5),
                );
                let _ = self.wait_exit(r, Duration::from_secs(10));
            }
            match self.call(r, &Request::Shutdown, Duration::from_secs(10)) {
                Ok(_) => {}
                Err(e) => {
                    // No shim to ask: the container was never created, or its shim died. Kill
                    // what may be left and drop libcontainer's state so nothing lingers.
                    tracing::debug!(container = %r.id, error = %e, "shim not reachable; cleaning up directly");
                    if let Ok(Some(s)) = protocol::read_shim_file(&self.shim_dir(&r.id))
                        && s.init_pid > 0
                        && s.init_start_ticks.is_some()
                        && protocol::process_start_ticks(s.init_pid) == s.init_start_ticks
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(s.init_pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    let _ = fs::remove_dir_all(self.libcontainer_root.join(&r.id));
                }
            }
        }
        if let Some(rootfs) = &r.rootfs {
            self.rootfs
                .unmount(rootfs)
                .map_err(|source| ContainerError::Io {
                    id: r.id.clone(),
                    what: "unmounting the rootfs".into(),
                    source,
                })?;
        }
        for (dir, what) in [
            (self.bundle_dir(&r.id), "removing the bundle"),
            (self.shim_dir(&r.id), "removing the shim directory"),
        ] {
            match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(ContainerError::Io {
                        id: r.id.clone(),
                        what: what.into(),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        self.store.remove(&r.id)?;
        Ok(())
    }

    /// The record of `id` if it is running; else NotFound or WrongState saying `what` needs it.
    fn running(&self, id: &str, what: &'static str) -> Result<ContainerRecord, ContainerError> {
        let r = self
            .find(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        if r.state != ContainerState::Running {
            return Err(ContainerError::WrongState {
                id: r.id,
                state: r.state,
                what,
            });
        }
        Ok(r)
    }

    /// ReopenContainerLog: the kubelet has renamed the log; the shim starts a new file.
    pub fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let r = self.running(id, "only a running container's log can be reopened")?;
        self.call(&r, &Request::ReopenLog, Duration::from_secs(5))?;
        Ok(())
    }

    /// ExecSync: runs `cmd` in the container; killed at `timeout` (none when zero).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<protocol::ExecResult, ContainerError> {
        let r = self.running(id, "exec needs a running container")?;
        if cmd.is_empty() {
            return Err(ContainerError::Invalid("exec command is empty".into()));
        }
        let timeout = (timeout > Duration::ZERO).then_some(timeout);
        Ok(self
            .shim
            .exec(&r.id, &self.libcontainer_root, cmd, timeout)?)
    }

    /// A running container's streaming endpoints (Attach, and Exec's validation).
    pub fn stream_target(&self, id: &str) -> Result<StreamTarget, ContainerError> {
        let r = self.running(id, "streaming needs a running container")?;
        let config = Self::config_of(&r).unwrap_or_default();
        Ok(StreamTarget {
            attach_socket: keelson_shim::protocol::state_file(
                &self.shim_dir(&r.id),
                keelson_shim::attach::ATTACH_SOCKET_FILE,
            ),
            id: r.id,
            sandbox_id: r.sandbox_id,
            stdin: config.stdin,
            tty: config.tty,
        })
    }

    /// The (unspawned) helper command for a streaming exec in running container `id`; with
    /// `console_socket_fd` the process gets a terminal allocated in the container, its master
    /// sent over that socket.
    pub fn exec_stream_command(
        &self,
        id: &str,
        cmd: &[String],
        console_socket_fd: Option<i32>,
        result_fd: i32,
    ) -> Result<std::process::Command, ContainerError> {
        let target = self.stream_target(id)?;
        if cmd.is_empty() {
            return Err(ContainerError::Invalid("exec command is empty".into()));
        }
        Ok(self.shim.exec_stream_command(
            &target.id,
            &self.libcontainer_root,
            cmd,
            console_socket_fd,
            result_fd,
        ))
    }

    /// Stops every container of a sandbox (StopPodSandbox).
    pub fn stop_all_in(&self, sandbox_id: &str) -> Result<(), ContainerError> {
        for r in self
            .store
            .list()
            .into_iter()
            .filter(|r| r.sandbox_id == sandbox_id)
        {
            self.stop(&r.id, Duration::ZERO)?;
        }
        Ok(())
    }

    /// Removes every container of a sandbox (RemovePodSandbox), then the pod cgroup keelson
    /// made for it when the CRI named no parent (a parent the kubelet names is the kubelet's).
    pub fn remove_all_in(&self, sandbox_id: &str) -> Result<(), ContainerError> {
        let sandbox = self.sandboxes.store.find(sandbox_id);
        let id = sandbox.as_ref().map_or(sandbox_id, |s| s.id.as_str());
        for r in self.store.list().into_iter().filter(|r| r.sandbox_id == id) {
            self.remove(&r.id)?;
        }
        if let Some(sb) = sandbox.filter(|s| s.cgroup_parent.is_empty())
            && self.cgroup_driver == CgroupDriver::Cgroupfs
        {
            remove_cgroup_dirs(
                Path::new("/sys/fs/cgroup"),
                &format!("keelson/pod-{}", sb.id),
            );
        }
        Ok(())
    }
}

/// Adjusts a spec for two ways libcontainer 0.7 reads the OCI spec differently from runc:
/// - it swaps SCMP_CMP_MASKED_EQ's two values: without swapping them back the default profile's
///   namespace-flag rules fail open;
/// - it treats `noNewPrivileges: false` like `true` and loads seccomp only after dropping
///   CAP_SYS_ADMIN, which the kernel refuses without no_new_privs: `false` must be left out.
/// - on cgroup v1 it mounts the container's cgroups by reading `/proc/<pid>` with the pid seen
///   inside the container's PID namespace from the host's procfs: in a *joined* namespace (a
///   shared-PID pod) that pid is not 1 and creation fails, so such containers go without the
///   `/sys/fs/cgroup` mount on v1 hosts (logged).
pub fn adapt_for_libcontainer(spec: &mut oci_spec::runtime::Spec, unified_cgroups: bool) {
    let joins_pid_ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && n.path().is_some()
            })
        });
    if joins_pid_ns
        && !unified_cgroups
        && let Some(mounts) = spec.mounts().clone()
    {
        let kept: Vec<_> = mounts
            .into_iter()
            .filter(|m| m.typ().as_deref() != Some("cgroup"))
            .collect();
        tracing::warn!(
            "container joins the pod's PID namespace on a cgroup v1 host: no /sys/fs/cgroup mount"
        );
        spec.set_mounts(Some(kept));
    }
    if let Some(linux) = spec.linux_mut()
        && let Some(profile) = linux.seccomp().clone()
    {
        linux.set_seccomp(Some(seccomp::for_libcontainer(&profile)));
    }
    if let Some(process) = spec.process_mut()
        && process.no_new_privileges() == Some(false)
    {
        process.set_no_new_privileges(None);
    }
}

/// The runtime's own capability bounding set (`CapBnd` in /proc/self/status) as a bit mask.
fn own_bounding_set() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        })
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(u64::MAX)
}

/// Drops capabilities the runtime itself does not hold: no process can grant them, and asking
/// makes libcontainer's capset fail. containerd gives privileged containers the runtime's own set
/// the same way (on hosts whose root lacks, e.g., CAP_SYS_RESOURCE).
pub fn restrict_capabilities(spec: &mut oci_spec::runtime::Spec, bounding: u64) {
    use crate::container::caps;
    let held = |c: &oci_spec::runtime::Capability| {
        caps::ALL
            .iter()
            .position(|(k, _)| k == c)
            .is_none_or(|i| bounding & (1u64 << i) != 0)
    };
    let Some(process) = spec.process_mut() else {
        return;
    };
    let Some(mut set) = process.capabilities().clone() else {
        return;
    };
    let filter = |s: &Option<oci_spec::runtime::Capabilities>| {
        s.as_ref()
            .map(|caps| caps.iter().filter(|c| held(c)).cloned().collect())
    };
    set.set_bounding(filter(set.bounding()));
    set.set_effective(filter(set.effective()));
    set.set_permitted(filter(set.permitted()));
    set.set_inheritable(filter(set.inheritable()));
    set.set_ambient(filter(set.ambient()));
    process.set_capabilities(Some(set));
}

/// Removes `<mount>/<rel>` in the unified hierarchy and in every v1 controller; a cgroup that
/// still has processes stays (rmdir refuses) and is logged.
pub fn remove_cgroup_dirs(mount: &Path, rel: &str) {
    let mut dirs = vec![mount.join(rel)];
    if let Ok(entries) = fs::read_dir(mount) {
        dirs.extend(entries.filter_map(|e| e.ok()).map(|e| e.path().join(rel)));
    }
    for d in dirs {
        match fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) => {}
            Err(e) => tracing::warn!(cgroup = %d.display(), error = %e, "cannot remove pod cgroup"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cgroups_go_from_every_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu,cpuacct", "unified"] {
            fs::create_dir_all(root.path().join(c).join("keelson/pod-x")).unwrap();
        }
        fs::create_dir_all(root.path().join("keelson/pod-x")).unwrap();
        fs::create_dir_all(root.path().join("pids/keelson/pod-x/busy")).unwrap();
        remove_cgroup_dirs(root.path(), "keelson/pod-x");
        for c in ["memory", "cpu,cpuacct", "unified", "."] {
            assert!(!root.path().join(c).join("keelson/pod-x").exists(), "{c}");
        }
        assert!(
            root.path().join("pids/keelson/pod-x").exists(),
            "a non-empty cgroup stays"
        );
    }

    #[test]
    fn libcontainer_adaptation_drops_false_no_new_privileges() {
        let mut spec = oci_spec::runtime::Spec::default();
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_no_new_privileges(Some(false));
        adapt_for_libcontainer(&mut spec, false);
        assert_eq!(spec.process().as_ref().unwrap().no_new_privileges(), None);
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_no_new_privileges(Some(true));
        adapt_for_libcontainer(&mut spec, false);
        assert_eq!(
            spec.process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );
    }

    #[test]
    fn capabilities_the_runtime_lacks_are_dropped() {
        use oci_spec::runtime::{Capability, LinuxCapabilitiesBuilder};
        let all: oci_spec::runtime::Capabilities = [
            Capability::Chown,
            Capability::SysResource,
            Capability::NetAdmin,
        ]
        .into_iter()
        .collect();
        let mut spec = oci_spec::runtime::Spec::default();
        let caps = LinuxCapabilitiesBuilder::default()
            .bounding(all.clone())
            .effective(all.clone())
            .permitted(all)
            .build()
            .unwrap();
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_capabilities(Some(caps));
        // CAP_SYS_RESOURCE is bit 24: a bounding set without it, as on hosts that lack it.
        restrict_capabilities(&mut spec, !(1 << 24));
        let got = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let effective = got.effective().clone().unwrap();
        assert!(
            effective.contains(&Capability::Chown) && effective.contains(&Capability::NetAdmin)
        );
        assert!(!effective.contains(&Capability::SysResource));
        assert!(
            !got.bounding()
                .clone()
                .unwrap()
                .contains(&Capability::SysResource)
        );
    }

    #[test]
    fn stop_signals_parse_like_docker() {
        assert_eq!(stop_signal_number(None), libc::SIGTERM);
        assert_eq!(stop_signal_number(Some("SIGQUIT")), libc::SIGQUIT);
        assert_eq!(stop_signal_number(Some("usr1")), libc::SIGUSR1);
        assert_eq!(stop_signal_number(Some("9")), 9);
        assert_eq!(stop_signal_number(Some("SIGNOPE")), libc::SIGTERM);
    }
}
