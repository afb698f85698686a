//! The persistence shared by the sandbox and container stores: one versioned JSON record per
//! object in `<root>/<kind dir>/<id>/<file>`, written atomically, cached in memory.

use crate::fsutil;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// A kind of record kept by a [`RecordStore`].
pub trait Record: Serialize + DeserializeOwned + Clone {
    /// Directory under the root (`sandboxes`), file in each object's directory (`sandbox.json`).
    const DIR: &'static str;
    const FILE: &'static str;
    /// The newest record version this runtime reads.
    const VERSION: u32;
    fn id(&self) -> &str;
    fn version(&self) -> u32;
    /// Listing order.
    fn created_at(&self) -> i64;
}

/// A record store's i/o failure, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("{kind} store i/o on {path}: {source}")]
pub struct RecordStoreError {
    pub kind: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// Records of one kind.
pub struct RecordStore<T: Record> {
    dir: PathBuf,
    records: RwLock<HashMap<String, T>>,
    /// One lock per record for [`RecordStore::locked`]; an entry nobody holds is dropped.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl<T: Record> RecordStore<T> {
    fn err(path: &Path) -> impl FnOnce(io::Error) -> RecordStoreError + '_ {
        move |source| RecordStoreError {
            kind: T::DIR,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Loads every record; an unreadable one is set aside as `<file>.corrupt` and logged, and one
    /// newer than this runtime is left alone and logged.
    pub fn open(root: &Path) -> Result<Self, RecordStoreError> {
        let dir = root.join(T::DIR);
        fs::create_dir_all(&dir).map_err(Self::err(&dir))?;
        let mut records = HashMap::new();
        for entry in fs::read_dir(&dir).map_err(Self::err(&dir))? {
            let path = entry.map_err(Self::err(&dir))?.path().join(T::FILE);
            let Ok(data) = fs::read(&path) else { continue };
            match serde_json::from_slice::<T>(&data) {
                Ok(r) if r.version() <= T::VERSION => {
                    records.insert(r.id().to_string(), r);
                }
                Ok(r) => {
                    tracing::error!(path = %path.display(), version = r.version(), "record is newer than this runtime; ignoring it")
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "setting aside unreadable record");
                    let _ = fs::rename(&path, path.with_extension("json.corrupt"));
                }
            }
        }
        Ok(Self {
            dir,
            records: RwLock::new(records),
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// The object's directory (its record and whatever else it keeps under the root).
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Persists (atomically) and caches a record, creating its directory on first write.
    pub fn put(&self, r: &T) -> Result<(), RecordStoreError> {
        let dir = self.dir_of(r.id());
        fs::create_dir_all(&dir).map_err(Self::err(&dir))?;
        let path = dir.join(T::FILE);
        let data = serde_json::to_vec_pretty(r).expect("records serialize");
        fsutil::write_atomic(&path, &data).map_err(Self::err(&path))?;
        self.records
            .write()
            .expect("record store lock")
            .insert(r.id().to_string(), r.clone());
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<T> {
        self.records
            .read()
            .expect("record store lock")
            .get(id)
            .cloned()
    }

    /// By full id or unique prefix (as crictl users type ids).
    pub fn find(&self, id: &str) -> Option<T> {
        if id.is_empty() {
            return None;
        }
        let records = self.records.read().expect("record store lock");
        if let Some(r) = records.get(id) {
            return Some(r.clone());
        }
        let mut matches = records.values().filter(|r| r.id().starts_with(id));
        match (matches.next(), matches.next()) {
            (Some(r), None) => Some(r.clone()),
            _ => None,
        }
    }

    /// Runs `f` on the current record of `id` (full id or unique prefix), re-read once the
    /// record's lock is held, so operations on one object never interleave. `f` gets `None`
    /// when there is no such record, before or after the wait. Calls must not nest for one id.
    pub fn locked<R>(&self, id: &str, f: impl FnOnce(Option<T>) -> R) -> R {
        let Some(found) = self.find(id) else {
            return f(None);
        };
        let lock = {
            let mut locks = self.locks.lock().expect("record lock map");
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(found.id().to_string()).or_default().clone()
        };
        let _held = lock.lock().expect("record lock");
        f(self.get(found.id()))
    }

    /// Every record, oldest first.
    pub fn list(&self) -> Vec<T> {
        let mut v: Vec<T> = self
            .records
            .read()
            .expect("record store lock")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|r| r.created_at());
        v
    }

    /// Deletes the record (first, atomically) and then the object's directory, so a crash midway
    /// leaves at most an orphan directory ([`Self::orphan_dirs`]).
    pub fn remove(&self, id: &str) -> Result<(), RecordStoreError> {
        let dir = self.dir_of(id);
        let file = dir.join(T::FILE);
        match fs::remove_file(&file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Self::err(&file)(e)),
            _ => {}
        }
        self.records.write().expect("record store lock").remove(id);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Self::err(&dir)(e)),
            _ => Ok(()),
        }
    }

    /// Directories with no record file at all (a crash during removal): safe to delete. A
    /// directory whose record is corrupt or newer than this runtime is kept for a human (or a
    /// newer runtime) to look at.
    pub fn orphan_dirs(&self) -> Vec<PathBuf> {
        let records = self.records.read().expect("record store lock");
        let corrupt = format!("{}.corrupt", T::FILE);
        fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| !records.contains_key(e.file_name().to_string_lossy().as_ref()))
            .map(|e| e.path())
            .filter(|p| !p.join(T::FILE).exists() && !p.join(&corrupt).exists())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Thing {
        v: u32,
        id: String,
        at: i64,
    }

    impl Record for Thing {
        const DIR: &'static str = "things";
        const FILE: &'static str = "thing.json";
        const VERSION: u32 = 1;
        fn id(&self) -> &str {
            &self.id
        }
        fn version(&self) -> u32 {
            self.v
        }
        fn created_at(&self) -> i64 {
            self.at
        }
    }

    fn thing(id: &str, at: i64) -> Thing {
        Thing {
            v: 1,
            id: id.into(),
            at,
        }
    }

    #[test]
    fn records_persist_list_in_order_and_prefix_lookup_is_unique() {
        let root = tempfile::tempdir().unwrap();
        let s = RecordStore::<Thing>::open(root.path()).unwrap();
        s.put(&thing("abd456", 2)).unwrap();
        s.put(&thing("abc123", 1)).unwrap();
        let s = RecordStore::<Thing>::open(root.path()).unwrap();
        assert_eq!(
            s.list().iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["abc123", "abd456"]
        );
        assert_eq!(s.find("abc").unwrap().id, "abc123");
        assert!(s.find("ab").is_none(), "ambiguous prefix");
        assert!(s.find("").is_none());
        s.remove("abc123").unwrap();
        assert!(!s.dir_of("abc123").exists());
        s.remove("abc123").unwrap();
        assert_eq!(
            RecordStore::<Thing>::open(root.path())
                .unwrap()
                .list()
                .len(),
            1
        );
    }

    #[test]
    fn locked_serialises_one_record_and_sees_its_latest_state() {
        let root = tempfile::tempdir().unwrap();
        let s = Arc::new(RecordStore::<Thing>::open(root.path()).unwrap());
        s.put(&thing("abc123", 0)).unwrap();
        assert!(s.locked("nope", |r| r.is_none()));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    s.locked("abc", |r| {
                        // A read-modify-write that would lose updates if two ran at once.
                        let mut t = r.unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        t.at += 1;
                        s.put(&t).unwrap();
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.get("abc123").unwrap().at, 8);
    }

    #[test]
    fn corrupt_and_newer_records_are_set_aside_and_orphans_found() {
        let root = tempfile::tempdir().unwrap();
        let s = RecordStore::<Thing>::open(root.path()).unwrap();
        s.put(&thing("keep", 1)).unwrap();
        fs::create_dir_all(root.path().join("things/bad")).unwrap();
        fs::write(root.path().join("things/bad/thing.json"), b"{nope").unwrap();
        fs::create_dir_all(root.path().join("things/future")).unwrap();
        fs::write(
            root.path().join("things/future/thing.json"),
            br#"{"v":9,"id":"future","at":0}"#,
        )
        .unwrap();
        fs::create_dir_all(root.path().join("things/lost")).unwrap();
        let s = RecordStore::<Thing>::open(root.path()).unwrap();
        assert_eq!(s.list().len(), 1);
        assert!(root.path().join("things/bad/thing.json.corrupt").exists());
        assert_eq!(
            s.orphan_dirs(),
            vec![root.path().join("things/lost")],
            "corrupt and newer records are kept for inspection"
        );
    }
}
