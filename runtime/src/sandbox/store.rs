//! Pod sandbox records: the lifecycle enum and its journal of host side effects, one versioned
//! JSON file per sandbox, rewritten atomically before every step that touches the host.

use crate::record_store::{Record, RecordStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const SANDBOX_RECORD_VERSION: u32 = 1;

/// What went wrong with sandbox records.
#[derive(Debug, thiserror::Error)]
pub enum SandboxStoreError {
    #[error("pod sandbox {id} cannot go from {from:?} to {to:?}")]
    Transition {
        id: String,
        from: SandboxState,
        to: SandboxState,
    },
}

/// Where a sandbox is in its life. `Creating` doubles as the crash journal's "unfinished" mark:
/// a record still `Creating` at start-up belongs to a RunPodSandbox that never returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Creating,
    Ready,
    NotReady,
}

impl SandboxState {
    /// Creating -> Ready, once every resource exists.
    pub fn ready(self, id: &str) -> Result<Self, SandboxStoreError> {
        match self {
            SandboxState::Creating => Ok(SandboxState::Ready),
            from => Err(SandboxStoreError::Transition {
                id: id.into(),
                from,
                to: SandboxState::Ready,
            }),
        }
    }

    /// Any state -> NotReady, once the sandbox's resources are released (stop is idempotent).
    pub fn stopped(self) -> Self {
        SandboxState::NotReady
    }
}

/// The pod network as attached: the config used for ADD (DEL must use the same) and its result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkAttachment {
    /// The CNI network list (as parsed) at the time of ADD.
    pub list: serde_json::Value,
    /// `None` while ADD runs: a crash then leaves DEL to do on recovery.
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub ips: Vec<String>,
}

/// One pod sandbox. Every `Option<PathBuf>` is set *before* the resource is made, so a crash
/// never leaves a resource the record does not name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxRecord {
    pub version: u32,
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub runtime_handler: String,
    pub created_at: i64,
    pub state: SandboxState,
    /// The CRI PodSandboxConfig, protobuf-encoded then base64: kept whole for containers and status.
    pub config_pb: String,
    pub hostname: String,
    pub host_network: bool,
    pub host_ipc: bool,
    pub host_pid: bool,
    pub cgroup_parent: String,
    #[serde(default)]
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub ipcns: Option<PathBuf>,
    #[serde(default)]
    pub utsns: Option<PathBuf>,
    #[serde(default)]
    pub shm: Option<PathBuf>,
    #[serde(default)]
    pub network: Option<NetworkAttachment>,
    /// Set before the pod's PID namespace holder is started (so a crash can find and kill it).
    #[serde(default)]
    pub pidns_requested: bool,
    #[serde(default)]
    pub pid_holder: Option<crate::sandbox::pidns::PidHolder>,
}

impl SandboxRecord {
    /// The name kubelet makes unique per pod attempt (containerd reserves the same tuple).
    pub fn reserved_name(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }

    pub fn ips(&self) -> &[String] {
        self.network
            .as_ref()
            .map(|n| n.ips.as_slice())
            .unwrap_or(&[])
    }
}

impl Record for SandboxRecord {
    const DIR: &'static str = "sandboxes";
    const FILE: &'static str = "sandbox.json";
    const VERSION: u32 = SANDBOX_RECORD_VERSION;
    fn id(&self) -> &str {
        &self.id
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn created_at(&self) -> i64 {
        self.created_at
    }
}

/// Records under `<root>/sandboxes/<id>/sandbox.json`.
pub type SandboxStore = RecordStore<SandboxRecord>;

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(id: &str) -> SandboxRecord {
        SandboxRecord {
            version: SANDBOX_RECORD_VERSION,
            id: id.into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            attempt: 0,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            runtime_handler: String::new(),
            created_at: 1,
            state: SandboxState::Creating,
            config_pb: String::new(),
            hostname: "web".into(),
            host_network: false,
            host_ipc: false,
            host_pid: false,
            cgroup_parent: String::new(),
            netns: None,
            ipcns: None,
            utsns: None,
            shm: None,
            network: None,
            pidns_requested: false,
            pid_holder: None,
        }
    }

    #[test]
    fn lifecycle_transitions() {
        assert_eq!(
            SandboxState::Creating.ready("a").unwrap(),
            SandboxState::Ready
        );
        assert!(SandboxState::NotReady.ready("a").is_err());
        assert!(SandboxState::Ready.ready("a").is_err());
        assert_eq!(SandboxState::Ready.stopped(), SandboxState::NotReady);
        assert_eq!(SandboxState::NotReady.stopped(), SandboxState::NotReady);
    }

    #[test]
    fn records_persist_and_prefix_lookup_is_unique() {
        let root = tempfile::tempdir().unwrap();
        let s = SandboxStore::open(root.path()).unwrap();
        s.put(&record("abc123")).unwrap();
        s.put(&record("abd456")).unwrap();
        let s = SandboxStore::open(root.path()).unwrap();
        assert_eq!(s.list().len(), 2);
        assert_eq!(s.find("abc").unwrap().id, "abc123");
        assert!(s.find("ab").is_none(), "ambiguous prefix");
        assert!(s.find("").is_none());
        s.remove("abc123").unwrap();
        assert!(!s.dir_of("abc123").exists());
        assert_eq!(SandboxStore::open(root.path()).unwrap().list().len(), 1);
        s.remove("abc123").unwrap();
    }
}
