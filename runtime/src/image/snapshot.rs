//! Unpacked layers, one read-only directory per chain id, ready to stack as overlayfs lower dirs.
//!
//! Layout: `<root>/snapshots/<chain hex>/fs` (the layer's files) and `meta.json` beside it.
//! A snapshot is unpacked into a `.tmp-*` directory and renamed into place whole, so a crash
//! never leaves a half snapshot under a chain id's name; deletion renames away first for the same reason.

use crate::fsutil;
use crate::image::digest::{Digest, Hasher};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const META_VERSION: u32 = 1;

/// What went wrong with a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot store i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("snapshot {chain_id} has unreadable metadata: {message}")]
    BadMeta { chain_id: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Stored beside each snapshot; versioned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub version: u32,
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub parent: Option<Digest>,
    /// Bytes of regular file content in this layer.
    pub size: u64,
    pub inodes: u64,
}

/// The chain ids of a layer stack (OCI image spec): `chain[0] = diff[0]`, `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let mut h = Hasher::new();
                h.update(prev.as_str().as_bytes());
                h.update(b" ");
                h.update(d.as_str().as_bytes());
                h.finish()
            }
        };
        out.push(next);
    }
    out
}

/// The snapshot directory tree.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

/// A snapshot being unpacked; removed on drop unless committed.
pub struct PendingSnapshot {
    dir: PathBuf,
    committed: bool,
}

impl PendingSnapshot {
    /// Where the layer's files go.
    pub fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove abandoned snapshot");
        }
    }
}

impl SnapshotStore {
    /// Opens (creating) the store and removes half-made or half-deleted snapshots left by a crash.
    pub fn open(root: &Path) -> Result<Self, SnapshotError> {
        let dir = root.join("snapshots");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let removed = fsutil::remove_temps(&dir).map_err(io_err(&dir))?;
        if removed > 0 {
            tracing::info!(removed, "removed interrupted snapshot unpacks");
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, chain_id: &Digest) -> PathBuf {
        self.dir.join(chain_id.hex())
    }

    /// The directory to use as an overlayfs lower dir.
    pub fn fs_path(&self, chain_id: &Digest) -> PathBuf {
        self.path(chain_id).join("fs")
    }

    pub fn contains(&self, chain_id: &Digest) -> bool {
        self.path(chain_id).join("meta.json").is_file()
    }

    /// A fresh, empty directory to unpack into.
    pub fn prepare(&self) -> Result<PendingSnapshot, SnapshotError> {
        let dir = self.dir.join(fsutil::temp_name(".tmp-unpack"));
        let fs_dir = dir.join("fs");
        fs::create_dir_all(&fs_dir).map_err(io_err(&fs_dir))?;
        Ok(PendingSnapshot {
            dir,
            committed: false,
        })
    }

    /// Writes the metadata and moves the snapshot under its chain id. If another pull committed
    /// the same chain id meanwhile, the existing one wins and this one is discarded.
    pub fn commit(
        &self,
        mut pending: PendingSnapshot,
        meta: &SnapshotMeta,
    ) -> Result<(), SnapshotError> {
        let data = serde_json::to_vec_pretty(meta).expect("snapshot meta serializes");
        let meta_path = pending.dir.join("meta.json");
        fs::write(&meta_path, data).map_err(io_err(&meta_path))?;
        let target = self.path(&meta.chain_id);
        if self.contains(&meta.chain_id) {
            return Ok(()); // dropped pending cleans itself up
        }
        fs::rename(&pending.dir, &target).map_err(io_err(&target))?;
        pending.committed = true;
        fsutil::sync_dir(&self.dir).map_err(io_err(&self.dir))
    }

    pub fn meta(&self, chain_id: &Digest) -> Result<SnapshotMeta, SnapshotError> {
        let p = self.path(chain_id).join("meta.json");
        let data = fs::read(&p).map_err(io_err(&p))?;
        let meta: SnapshotMeta =
            serde_json::from_slice(&data).map_err(|e| SnapshotError::BadMeta {
                chain_id: chain_id.to_string(),
                message: e.to_string(),
            })?;
        if meta.version > META_VERSION {
            return Err(SnapshotError::BadMeta {
                chain_id: chain_id.to_string(),
                message: format!(
                    "version {} is newer than this runtime understands",
                    meta.version
                ),
            });
        }
        Ok(meta)
    }

    /// Every committed snapshot's chain id (directories without valid metadata are skipped).
    pub fn list(&self) -> Result<Vec<Digest>, SnapshotError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            if let Ok(d) = Digest::parse(&format!("sha256:{}", name.to_string_lossy())) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Removes a snapshot: renamed away first (atomic), then deleted.
    pub fn remove(&self, chain_id: &Digest) -> Result<(), SnapshotError> {
        let path = self.path(chain_id);
        let doomed = self.dir.join(fsutil::temp_name(".tmp-delete"));
        match fs::rename(&path, &doomed) {
            Ok(()) => fs::remove_dir_all(&doomed).map_err(io_err(&doomed)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SnapshotError::Io { path, source: e }),
        }
    }
}

/// Builds the metadata record for a freshly unpacked layer.
pub fn new_meta(
    chain_id: Digest,
    diff_id: Digest,
    parent: Option<Digest>,
    size: u64,
    inodes: u64,
) -> SnapshotMeta {
    SnapshotMeta {
        version: META_VERSION,
        chain_id,
        diff_id,
        parent,
        size,
        inodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn commit_is_all_or_nothing() {
        let root = tempfile::tempdir().unwrap();
        let s = SnapshotStore::open(root.path()).unwrap();
        let chain = Digest::of(b"layer");
        {
            let p = s.prepare().unwrap();
            fs::write(p.fs().join("f"), b"x").unwrap();
            // dropped without commit: nothing under the chain id, no temp left
        }
        assert!(!s.contains(&chain));
        assert_eq!(fs::read_dir(s.dir()).unwrap().count(), 0);

        let p = s.prepare().unwrap();
        fs::write(p.fs().join("f"), b"x").unwrap();
        s.commit(p, &new_meta(chain.clone(), chain.clone(), None, 1, 1))
            .unwrap();
        assert!(s.contains(&chain));
        assert_eq!(fs::read(s.fs_path(&chain).join("f")).unwrap(), b"x");
        assert_eq!(s.meta(&chain).unwrap().size, 1);
        assert_eq!(s.list().unwrap(), vec![chain.clone()]);
        s.remove(&chain).unwrap();
        assert!(!s.contains(&chain));
        assert_eq!(fs::read_dir(s.dir()).unwrap().count(), 0);
    }

    #[test]
    fn open_clears_interrupted_unpacks() {
        let root = tempfile::tempdir().unwrap();
        let s = SnapshotStore::open(root.path()).unwrap();
        let p = s.prepare().unwrap();
        std::mem::forget(p); // as if the process died mid-unpack
        assert_eq!(fs::read_dir(s.dir()).unwrap().count(), 1);
        let s = SnapshotStore::open(root.path()).unwrap();
        assert_eq!(fs::read_dir(s.dir()).unwrap().count(), 0);
    }
}
