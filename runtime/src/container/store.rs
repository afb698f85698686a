//! Container records: the lifecycle enum and a journal of host side effects, one versioned JSON
//! file per container under `<root>/containers/<id>/`, rewritten atomically before each step.

use crate::fsutil;
use crate::image::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

pub const CONTAINER_RECORD_VERSION: u32 = 1;

/// What went wrong with container records.
#[derive(Debug, thiserror::Error)]
pub enum ContainerStoreError {
    #[error("container store i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("container {id} cannot go from {from:?} to {to:?}")]
    Transition {
        id: String,
        from: ContainerState,
        to: ContainerState,
    },
}

/// Where a container is in its life. `Creating` marks a CreateContainer that has not returned:
/// one found at start-up is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Creating,
    Created,
    Running,
    Exited,
}

impl ContainerState {
    fn to(self, id: &str, to: ContainerState, allowed: bool) -> Result<Self, ContainerStoreError> {
        if allowed {
            Ok(to)
        } else {
            Err(ContainerStoreError::Transition {
                id: id.into(),
                from: self,
                to,
            })
        }
    }

    /// Creating -> Created, once the shim holds a created container.
    pub fn created(self, id: &str) -> Result<Self, ContainerStoreError> {
        self.to(
            id,
            ContainerState::Created,
            self == ContainerState::Creating,
        )
    }

    /// Created -> Running.
    pub fn started(self, id: &str) -> Result<Self, ContainerStoreError> {
        self.to(id, ContainerState::Running, self == ContainerState::Created)
    }

    /// Created or Running -> Exited (a created container that is stopped never ran; that counts).
    pub fn exited(self, id: &str) -> Result<Self, ContainerStoreError> {
        self.to(
            id,
            ContainerState::Exited,
            matches!(
                self,
                ContainerState::Created | ContainerState::Running | ContainerState::Exited
            ),
        )
    }
}

/// One container. Paths are recorded before the resource they name is made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    pub version: u32,
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The image as the user named it, and the image id it resolved to.
    pub image: String,
    pub image_id: Digest,
    /// Snapshots the rootfs stacks (bottom first): garbage collection keeps them while the container exists.
    pub chain_ids: Vec<Digest>,
    /// CRI ContainerConfig, protobuf then base64.
    pub config_pb: String,
    pub state: ContainerState,
    pub created_at: i64,
    #[serde(default)]
    pub started_at: i64,
    #[serde(default)]
    pub finished_at: i64,
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// The overlay mount point, set before mounting.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// Set before the shim is launched: recovery must then ask it (or libcontainer) to clean up.
    #[serde(default)]
    pub shim_launched: bool,
}

/// Records under `<root>/containers/<id>/container.json`, cached in memory.
pub struct ContainerStore {
    dir: PathBuf,
    records: RwLock<HashMap<String, ContainerRecord>>,
}

impl ContainerStore {
    pub fn open(root: &Path) -> Result<Self, ContainerStoreError> {
        let dir = root.join("containers");
        let io_err = |source| ContainerStoreError::Io {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io_err)?;
        let mut records = HashMap::new();
        for entry in fs::read_dir(&dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path().join("container.json");
            let Ok(data) = fs::read(&path) else { continue };
            match serde_json::from_slice::<ContainerRecord>(&data) {
                Ok(r) if r.version <= CONTAINER_RECORD_VERSION => {
                    records.insert(r.id.clone(), r);
                }
                Ok(r) => {
                    tracing::error!(path = %path.display(), version = r.version, "container record is newer than this runtime; ignoring it")
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "setting aside unreadable container record");
                    let _ = fs::rename(&path, path.with_extension("json.corrupt"));
                }
            }
        }
        Ok(Self {
            dir,
            records: RwLock::new(records),
        })
    }

    /// The container's persistent directory (record, overlay upper and work dirs).
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn put(&self, r: &ContainerRecord) -> Result<(), ContainerStoreError> {
        let dir = self.dir_of(&r.id);
        fs::create_dir_all(&dir).map_err(|source| ContainerStoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join("container.json");
        let data = serde_json::to_vec_pretty(r).expect("container record serializes");
        fsutil::write_atomic(&path, &data)
            .map_err(|source| ContainerStoreError::Io { path, source })?;
        self.records
            .write()
            .expect("container store lock")
            .insert(r.id.clone(), r.clone());
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<ContainerRecord> {
        self.records
            .read()
            .expect("container store lock")
            .get(id)
            .cloned()
    }

    /// By full id or unique prefix.
    pub fn find(&self, id: &str) -> Option<ContainerRecord> {
        if id.is_empty() {
            return None;
        }
        let records = self.records.read().expect("container store lock");
        if let Some(r) = records.get(id) {
            return Some(r.clone());
        }
        let mut matches = records.values().filter(|r| r.id.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some(r), None) => Some(r.clone()),
            _ => None,
        }
    }

    pub fn list(&self) -> Vec<ContainerRecord> {
        let mut v: Vec<ContainerRecord> = self
            .records
            .read()
            .expect("container store lock")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|r| r.created_at);
        v
    }

    /// Snapshots in use by any container (garbage-collection roots).
    pub fn snapshot_roots(&self) -> Vec<Digest> {
        self.records
            .read()
            .expect("container store lock")
            .values()
            .flat_map(|r| r.chain_ids.clone())
            .collect()
    }

    pub fn remove(&self, id: &str) -> Result<(), ContainerStoreError> {
        let dir = self.dir_of(id);
        match fs::remove_file(dir.join("container.json")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(ContainerStoreError::Io {
                    path: dir,
                    source: e,
                });
            }
            _ => {}
        }
        self.records
            .write()
            .expect("container store lock")
            .remove(id);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ContainerStoreError::Io {
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Directories with no record (a crash during removal).
    pub fn orphan_dirs(&self) -> Vec<PathBuf> {
        let records = self.records.read().expect("container store lock");
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

    #[test]
    fn lifecycle_transitions() {
        let c = ContainerState::Creating;
        assert_eq!(c.created("x").unwrap(), ContainerState::Created);
        assert!(c.started("x").is_err(), "must be created first");
        assert_eq!(
            ContainerState::Created.started("x").unwrap(),
            ContainerState::Running
        );
        assert!(ContainerState::Running.started("x").is_err());
        assert_eq!(
            ContainerState::Running.exited("x").unwrap(),
            ContainerState::Exited
        );
        assert_eq!(
            ContainerState::Created.exited("x").unwrap(),
            ContainerState::Exited
        );
        assert!(ContainerState::Creating.exited("x").is_err());
        assert!(
            ContainerState::Exited.started("x").is_err(),
            "no restarts in place"
        );
    }

    #[test]
    fn records_persist_with_snapshot_roots() {
        let root = tempfile::tempdir().unwrap();
        let s = ContainerStore::open(root.path()).unwrap();
        let r = ContainerRecord {
            version: CONTAINER_RECORD_VERSION,
            id: "c0ffee".into(),
            sandbox_id: "sb".into(),
            name: "app".into(),
            attempt: 0,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            image: "busybox".into(),
            image_id: Digest::of(b"cfg"),
            chain_ids: vec![Digest::of(b"l1")],
            config_pb: String::new(),
            state: ContainerState::Creating,
            created_at: 5,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path: None,
            stop_signal: None,
            rootfs: None,
            shim_launched: false,
        };
        s.put(&r).unwrap();
        let s = ContainerStore::open(root.path()).unwrap();
        assert_eq!(s.find("c0f").unwrap(), r);
        assert_eq!(s.snapshot_roots(), vec![Digest::of(b"l1")]);
        s.remove("c0ffee").unwrap();
        assert!(s.list().is_empty() && s.orphan_dirs().is_empty());
    }
}
