//! The image metadata store: one versioned JSON record per image id, written atomically, indexed in memory.

use crate::fsutil;
use crate::image::digest::Digest;
use crate::image::manifest::{ContainerConfig, Platform};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

pub const RECORD_VERSION: u32 = 1;

/// What went wrong in the image metadata store.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    #[error("image store i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("image id prefix {prefix:?} is ambiguous: it matches {count} images")]
    Ambiguous { prefix: String, count: usize },
}

/// One image as the CRI sees it: keyed by its config digest, with every name that points at it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    pub version: u32,
    pub id: Digest,
    #[serde(default)]
    pub repo_tags: Vec<String>,
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Manifest and index blobs this image keeps in the content store (plus the config blob, `id`).
    #[serde(default)]
    pub manifests: Vec<Digest>,
    /// Snapshot chain ids, bottom layer first.
    pub chain_ids: Vec<Digest>,
    /// Config plus compressed layer bytes, as the registry reports them.
    pub size: u64,
    #[serde(default)]
    pub config: ContainerConfig,
    pub platform: Platform,
    #[serde(default)]
    pub pinned: bool,
    /// Nanoseconds since the epoch of the last change; breaks ties if a crash left one name on two records.
    pub updated: u64,
}

impl ImageRecord {
    pub fn has_no_names(&self) -> bool {
        self.repo_tags.is_empty() && self.repo_digests.is_empty()
    }

    fn names(&self) -> impl Iterator<Item = &String> {
        self.repo_tags.iter().chain(self.repo_digests.iter())
    }
}

pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn push_unique<T: PartialEq + Clone>(into: &mut Vec<T>, items: &[T]) {
    for i in items {
        if !into.contains(i) {
            into.push(i.clone());
        }
    }
}

/// Records under `<root>/images/<config hex>.json`.
pub struct ImageStore {
    dir: PathBuf,
    records: RwLock<HashMap<Digest, ImageRecord>>,
    /// Serialises writers; readers only wait for the in-memory swap.
    writer: Mutex<()>,
}

impl ImageStore {
    /// Loads every record; unreadable ones are logged and set aside as `*.corrupt`, never fatal.
    pub fn open(root: &Path) -> Result<Self, ImageStoreError> {
        let dir = root.join("images");
        let io_err = |source| ImageStoreError::Io {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io_err)?;
        fsutil::remove_temps(&dir).map_err(io_err)?;
        let mut records: HashMap<Digest, ImageRecord> = HashMap::new();
        for entry in fs::read_dir(&dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|data| {
                    serde_json::from_slice::<ImageRecord>(&data).map_err(|e| e.to_string())
                })
                .and_then(|r| {
                    if r.version > RECORD_VERSION {
                        Err(format!(
                            "record version {} is newer than this runtime",
                            r.version
                        ))
                    } else if path
                        .file_stem()
                        .is_none_or(|s| s.to_string_lossy() != r.id.hex())
                    {
                        Err("file name does not match the record's id".to_string())
                    } else {
                        Ok(r)
                    }
                });
            match parsed {
                Ok(r) => {
                    records.insert(r.id.clone(), r);
                }
                Err(message) => {
                    tracing::error!(path = %path.display(), %message, "setting aside unreadable image record");
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        // A crash between two record writes can leave a name on two images: the newer record keeps it.
        let mut owner: HashMap<String, (u64, Digest)> = HashMap::new();
        for r in records.values() {
            for n in r.names() {
                let e = owner.entry(n.clone()).or_insert((r.updated, r.id.clone()));
                if r.updated > e.0 {
                    *e = (r.updated, r.id.clone());
                }
            }
        }
        for r in records.values_mut() {
            r.repo_tags.retain(|n| owner[n].1 == r.id);
            r.repo_digests.retain(|n| owner[n].1 == r.id);
        }
        Ok(Self {
            dir,
            records: RwLock::new(records),
            writer: Mutex::new(()),
        })
    }

    fn path(&self, id: &Digest) -> PathBuf {
        self.dir.join(format!("{}.json", id.hex()))
    }

    fn persist(&self, r: &ImageRecord) -> Result<(), ImageStoreError> {
        let path = self.path(&r.id);
        let data = serde_json::to_vec_pretty(r).expect("image record serializes");
        fsutil::write_atomic(&path, &data).map_err(|source| ImageStoreError::Io { path, source })
    }

    fn unlink(&self, id: &Digest) -> Result<(), ImageStoreError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(ImageStoreError::Io { path, source: e })
            }
            _ => fsutil::sync_dir(&self.dir).map_err(|source| ImageStoreError::Io {
                path: self.dir.clone(),
                source,
            }),
        }
    }

    pub fn get(&self, id: &Digest) -> Option<ImageRecord> {
        self.records
            .read()
            .expect("image store lock")
            .get(id)
            .cloned()
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        let mut v: Vec<ImageRecord> = self
            .records
            .read()
            .expect("image store lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The image a normalised `name:tag` or `name@digest` points at.
    pub fn by_name(&self, name: &str) -> Option<ImageRecord> {
        self.records
            .read()
            .expect("image store lock")
            .values()
            .find(|r| {
                r.repo_tags.iter().any(|t| t == name) || r.repo_digests.iter().any(|d| d == name)
            })
            .cloned()
    }

    /// The image whose id starts with `hex_prefix` (at least one character), if exactly one does.
    pub fn by_id_prefix(&self, hex_prefix: &str) -> Result<Option<ImageRecord>, ImageStoreError> {
        let records = self.records.read().expect("image store lock");
        let matches: Vec<&ImageRecord> = records
            .values()
            .filter(|r| r.id.hex().starts_with(hex_prefix))
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(Some(matches[0].clone())),
            count => Err(ImageStoreError::Ambiguous {
                prefix: hex_prefix.to_string(),
                count,
            }),
        }
    }

    /// Adds an image (or more names for one we have). Names move from other images to this one;
    /// an image left with no name is dropped, as containerd drops an image with no references.
    /// Returns the merged record and the ids of dropped images.
    pub fn add(&self, new: ImageRecord) -> Result<(ImageRecord, Vec<Digest>), ImageStoreError> {
        let _w = self.writer.lock().expect("image store writer lock");
        let snapshot = self.records.read().expect("image store lock").clone();
        let now = now_nanos();
        let mut merged = match snapshot.get(&new.id) {
            Some(old) => {
                let mut m = old.clone();
                push_unique(&mut m.repo_tags, &new.repo_tags);
                push_unique(&mut m.repo_digests, &new.repo_digests);
                push_unique(&mut m.manifests, &new.manifests);
                m.pinned |= new.pinned;
                m
            }
            None => new.clone(),
        };
        merged.updated = now;
        let mut changed = Vec::new();
        let mut dropped = Vec::new();
        for (id, r) in &snapshot {
            if *id == merged.id {
                continue;
            }
            if r.names()
                .any(|n| new.repo_tags.contains(n) || new.repo_digests.contains(n))
            {
                let mut r = r.clone();
                r.repo_tags.retain(|n| !new.repo_tags.contains(n));
                r.repo_digests.retain(|n| !new.repo_digests.contains(n));
                r.updated = now;
                if r.has_no_names() {
                    dropped.push(r.id.clone());
                } else {
                    changed.push(r);
                }
            }
        }
        // Order matters for crash safety: the new owner first, then the losers.
        self.persist(&merged)?;
        for r in &changed {
            self.persist(r)?;
        }
        for id in &dropped {
            self.unlink(id)?;
        }
        let mut records = self.records.write().expect("image store lock");
        records.insert(merged.id.clone(), merged.clone());
        for r in changed {
            records.insert(r.id.clone(), r);
        }
        for id in &dropped {
            records.remove(id);
        }
        Ok((merged, dropped))
    }

    /// Removes an image with all its names; `None` if it was not there.
    pub fn remove(&self, id: &Digest) -> Result<Option<ImageRecord>, ImageStoreError> {
        let _w = self.writer.lock().expect("image store writer lock");
        if self.get(id).is_none() {
            return Ok(None);
        }
        self.unlink(id)?;
        Ok(self.records.write().expect("image store lock").remove(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, tags: &[&str], digests: &[&str]) -> ImageRecord {
        ImageRecord {
            version: RECORD_VERSION,
            id: Digest::of(id.as_bytes()),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: digests.iter().map(|s| s.to_string()).collect(),
            manifests: vec![],
            chain_ids: vec![Digest::of(b"layer")],
            size: 10,
            config: ContainerConfig::default(),
            platform: Platform::host(),
            pinned: false,
            updated: 0,
        }
    }

    #[test]
    fn moving_a_tag_keeps_the_old_image_by_digest_and_survives_reopen() {
        let root = tempfile::tempdir().unwrap();
        let s = ImageStore::open(root.path()).unwrap();
        s.add(rec("a", &["r/x:1"], &["r/x@sha256:aa"])).unwrap();
        let (_, dropped) = s.add(rec("b", &["r/x:1"], &["r/x@sha256:bb"])).unwrap();
        assert!(dropped.is_empty());
        let a = s.get(&Digest::of(b"a")).unwrap();
        assert!(a.repo_tags.is_empty());
        assert_eq!(a.repo_digests, vec!["r/x@sha256:aa"]);
        assert_eq!(s.by_name("r/x:1").unwrap().id, Digest::of(b"b"));

        let s2 = ImageStore::open(root.path()).unwrap();
        assert_eq!(s2.list().len(), 2);
        assert_eq!(s2.by_name("r/x:1").unwrap().id, Digest::of(b"b"));
    }

    #[test]
    fn image_losing_its_last_name_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let s = ImageStore::open(root.path()).unwrap();
        s.add(rec("a", &["r/x:1"], &[])).unwrap();
        let (_, dropped) = s.add(rec("b", &["r/x:1"], &[])).unwrap();
        assert_eq!(dropped, vec![Digest::of(b"a")]);
        assert!(s.get(&Digest::of(b"a")).is_none());
        assert_eq!(ImageStore::open(root.path()).unwrap().list().len(), 1);
    }

    #[test]
    fn crash_leftover_duplicate_name_goes_to_newest() {
        let root = tempfile::tempdir().unwrap();
        let s = ImageStore::open(root.path()).unwrap();
        let mut a = rec("a", &["r/x:1", "r/x:keep"], &[]);
        a.updated = 5;
        let mut b = rec("b", &["r/x:1"], &[]);
        b.updated = 9;
        s.persist(&a).unwrap();
        s.persist(&b).unwrap();
        let s = ImageStore::open(root.path()).unwrap();
        assert_eq!(s.by_name("r/x:1").unwrap().id, Digest::of(b"b"));
        assert_eq!(
            s.get(&Digest::of(b"a")).unwrap().repo_tags,
            vec!["r/x:keep"]
        );
    }

    #[test]
    fn corrupt_record_is_set_aside() {
        let root = tempfile::tempdir().unwrap();
        let s = ImageStore::open(root.path()).unwrap();
        s.add(rec("a", &["r/x:1"], &[])).unwrap();
        fs::write(
            root.path()
                .join("images")
                .join(format!("{}.json", Digest::of(b"zz").hex())),
            b"{not json",
        )
        .unwrap();
        let s = ImageStore::open(root.path()).unwrap();
        assert_eq!(s.list().len(), 1);
        assert_eq!(
            fs::read_dir(root.path().join("images"))
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "corrupt")
                .count(),
            1
        );
    }

    #[test]
    fn id_prefix_lookup() {
        let root = tempfile::tempdir().unwrap();
        let s = ImageStore::open(root.path()).unwrap();
        let r = s.add(rec("a", &["r/x:1"], &[])).unwrap().0;
        assert_eq!(s.by_id_prefix(&r.id.hex()[..6]).unwrap().unwrap().id, r.id);
        assert!(s.by_id_prefix("zzzz").unwrap().is_none());
        s.add(rec("b", &["r/y:1"], &[])).unwrap();
        assert!(matches!(
            s.by_id_prefix(""),
            Err(ImageStoreError::Ambiguous { count: 2, .. })
        ));
    }
}
