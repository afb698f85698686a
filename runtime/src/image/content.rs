//! Content-addressed blob store for manifests, indexes and configs: verified before commit, committed atomically.

use crate::fsutil;
use crate::image::digest::Digest;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong storing or reading a blob.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("blob {expected} has digest {actual}: refusing to store it")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {0} is not in the content store")]
    NotFound(Digest),
    #[error("blob {digest} in the content store is corrupt (content hashes to {actual})")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("content store i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContentError + '_ {
    move |source| ContentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Blobs under `<root>/content/blobs/sha256/<hex>`.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store and clears temp files left by a crash.
    pub fn open(root: &Path) -> Result<Self, ContentError> {
        let blobs = root.join("content/blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let removed = fsutil::remove_temps(&blobs).map_err(io_err(&blobs))?;
        if removed > 0 {
            tracing::info!(removed, "removed interrupted blob writes");
        }
        Ok(Self { blobs })
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Verifies `data` against `expected` and commits it; a present blob is left as is.
    pub fn put(&self, expected: &Digest, data: &[u8]) -> Result<(), ContentError> {
        let actual = Digest::of(data);
        if &actual != expected {
            return Err(ContentError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let path = self.path(expected);
        if path.is_file() {
            return Ok(());
        }
        fsutil::write_atomic(&path, data).map_err(io_err(&path))
    }

    /// Reads a blob and checks it still hashes to its name.
    pub fn get(&self, d: &Digest) -> Result<Vec<u8>, ContentError> {
        let path = self.path(d);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContentError::NotFound(d.clone()));
            }
            Err(source) => return Err(ContentError::Io { path, source }),
        };
        let actual = Digest::of(&data);
        if &actual != d {
            return Err(ContentError::Corrupt {
                digest: d.clone(),
                actual,
            });
        }
        Ok(data)
    }

    pub fn remove(&self, d: &Digest) -> Result<(), ContentError> {
        let path = self.path(d);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(ContentError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Every committed blob and its size.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, ContentError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs).map_err(io_err(&self.blobs))? {
            let entry = entry.map_err(io_err(&self.blobs))?;
            let name = entry.file_name();
            let Ok(d) = Digest::parse(&format!("sha256:{}", name.to_string_lossy())) else {
                continue;
            };
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((d, len));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verifies_and_get_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let s = ContentStore::open(d.path()).unwrap();
        let good = Digest::of(b"{}");
        s.put(&good, b"{}").unwrap();
        assert_eq!(s.get(&good).unwrap(), b"{}");
        let err = s.put(&Digest::of(b"other"), b"{}").unwrap_err();
        assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
        assert!(!s.contains(&Digest::of(b"other")));
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn corrupt_blob_is_detected_on_read() {
        let d = tempfile::tempdir().unwrap();
        let s = ContentStore::open(d.path()).unwrap();
        let dg = Digest::of(b"abc");
        s.put(&dg, b"abc").unwrap();
        fs::write(s.path(&dg), b"abd").unwrap();
        assert!(matches!(s.get(&dg), Err(ContentError::Corrupt { .. })));
        s.remove(&dg).unwrap();
        assert!(matches!(s.get(&dg), Err(ContentError::NotFound(_))));
    }
}
