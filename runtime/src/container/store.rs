//! Container records: the lifecycle enum and a journal of host side effects, one versioned JSON
//! file per container under `<root>/containers/<id>/`, rewritten atomically before each step.

use crate::image::digest::Digest;
use crate::record_store::{Record, RecordStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const CONTAINER_RECORD_VERSION: u32 = 1;

/// What went wrong with container records.
#[derive(Debug, thiserror::Error)]
pub enum ContainerStoreError {
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
    /// The OCI spec's `linux.cgroupsPath`, kept so stats and updates need not re-read the bundle.
    #[serde(default)]
    pub cgroups_path: Option<String>,
}

impl Record for ContainerRecord {
    const DIR: &'static str = "containers";
    const FILE: &'static str = "container.json";
    const VERSION: u32 = CONTAINER_RECORD_VERSION;
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

/// Records under `<root>/containers/<id>/container.json`.
pub type ContainerStore = RecordStore<ContainerRecord>;

impl RecordStore<ContainerRecord> {
    /// Snapshots in use by any container (garbage-collection roots).
    pub fn snapshot_roots(&self) -> Vec<Digest> {
        self.list().into_iter().flat_map(|r| r.chain_ids).collect()
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
            cgroups_path: None,
        };
        s.put(&r).unwrap();
        let s = ContainerStore::open(root.path()).unwrap();
        assert_eq!(s.find("c0f").unwrap(), r);
        assert_eq!(s.snapshot_roots(), vec![Digest::of(b"l1")]);
        s.remove("c0ffee").unwrap();
        assert!(s.list().is_empty() && s.orphan_dirs().is_empty());
    }
}
