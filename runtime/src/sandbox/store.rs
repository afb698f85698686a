//! Pod sandbox records: the lifecycle enum and its journal of host side effects, one versioned
//! JSON file per sandbox, rewritten atomically before every step that touches the host.

use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

pub const SANDBOX_RECORD_VERSION: u32 = 1;

/// What went wrong with sandbox records.
#[derive(Debug, thiserror::Error)]
pub enum SandboxStoreError {
    #[error("sandbox store i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
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

/// Records under `<root>/sandboxes/<id>/sandbox.json`, cached in memory.
pub struct SandboxStore {
    dir: PathBuf,
    records: RwLock<HashMap<String, SandboxRecord>>,
}

impl SandboxStore {
    /// Loads every record; an unreadable one is set aside as `sandbox.json.corrupt` and logged.
    pub fn open(root: &Path) -> Result<Self, SandboxStoreError> {
        let dir = root.join("sandboxes");
        let io_err = |source| SandboxStoreError::Io {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io_err)?;
        let mut records = HashMap::new();
        for entry in fs::read_dir(&dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path().join("sandbox.json");
            let Ok(data) = fs::read(&path) else { continue };
            match serde_json::from_slice::<SandboxRecord>(&data) {
                Ok(r) if r.version <= SANDBOX_RECORD_VERSION => {
                    records.insert(r.id.clone(), r);
                }
                Ok(r) => {
                    tracing::error!(path = %path.display(), version = r.version, "sandbox record is newer than this runtime; ignoring it")
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "setting aside unreadable sandbox record");
                    let _ = fs::rename(&path, path.with_extension("json.corrupt"));
                }
            }
        }
        Ok(Self {
            dir,
            records: RwLock::new(records),
        })
    }

    /// The directory for a sandbox's own files (record, hostname, hosts, resolv.conf).
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Persists and caches a record (creating its directory on first write).
    pub fn put(&self, r: &SandboxRecord) -> Result<(), SandboxStoreError> {
        let dir = self.dir_of(&r.id);
        fs::create_dir_all(&dir).map_err(|source| SandboxStoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join("sandbox.json");
        let data = serde_json::to_vec_pretty(r).expect("sandbox record serializes");
        fsutil::write_atomic(&path, &data)
            .map_err(|source| SandboxStoreError::Io { path, source })?;
        self.records
            .write()
            .expect("sandbox store lock")
            .insert(r.id.clone(), r.clone());
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<SandboxRecord> {
        self.records
            .read()
            .expect("sandbox store lock")
            .get(id)
            .cloned()
    }

    /// The sandbox whose id is `id` or starts with it (unique prefix, as crictl users type).
    pub fn find(&self, id: &str) -> Option<SandboxRecord> {
        if id.is_empty() {
            return None;
        }
        let records = self.records.read().expect("sandbox store lock");
        if let Some(r) = records.get(id) {
            return Some(r.clone());
        }
        let mut matches = records.values().filter(|r| r.id.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some(r), None) => Some(r.clone()),
            _ => None,
        }
    }

    pub fn list(&self) -> Vec<SandboxRecord> {
        let mut v: Vec<SandboxRecord> = self
            .records
            .read()
            .expect("sandbox store lock")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|r| r.created_at);
        v
    }

    /// Deletes the record and the sandbox's directory.
    pub fn remove(&self, id: &str) -> Result<(), SandboxStoreError> {
        let dir = self.dir_of(id);
        // The record goes first (atomic), so a crash mid-removal leaves at most an orphan directory.
        match fs::remove_file(dir.join("sandbox.json")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(SandboxStoreError::Io {
                    path: dir,
                    source: e,
                });
            }
            _ => {}
        }
        self.records.write().expect("sandbox store lock").remove(id);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SandboxStoreError::Io {
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Directories with no record (a crash during removal): safe to delete.
    pub fn orphan_dirs(&self) -> Vec<PathBuf> {
        let records = self.records.read().expect("sandbox store lock");
        fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| !records.contains_key(e.file_name().to_string_lossy().as_ref()))
            .map(|e| e.path())
            .collect()
    }
}

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

    #[test]
    fn orphan_directories_are_found() {
        let root = tempfile::tempdir().unwrap();
        let s = SandboxStore::open(root.path()).unwrap();
        s.put(&record("keep")).unwrap();
        fs::create_dir_all(root.path().join("sandboxes/lost")).unwrap();
        let orphans = s.orphan_dirs();
        assert_eq!(orphans, vec![root.path().join("sandboxes/lost")]);
    }
}
