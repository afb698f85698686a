//! The embedded store: one redb file, crash safe, with its own revision counter and history.
//!
//! Why redb rather than SQLite: it is pure Rust (no C toolchain or bundled SQLite build), its
//! write transactions are ACID and fsynced on commit by default, readers get MVCC snapshots
//! without blocking the writer, and a sorted key-value API is all a key/revision store needs;
//! SQL would only add a parser and a schema to keep.
//!
//! Tables:
//! - `kv`: key -> current value with create and mod revision;
//! - `history`: revision -> event (put/delete, key, value, previous value, time): what watches
//!   replay and what lists at an older revision are rebuilt from;
//! - `meta`: the current and the compacted revision.
//!
//! Writes go through one writer thread ([`writer`]) that batches whatever requests are queued
//! into one redb transaction (group commit), commits it durably, publishes the events to the
//! in-memory broadcast and only then acknowledges. Watches ([`watch`]) read that broadcast and
//! fall back to the history table when they lag, so a slow watcher never holds up a writer or
//! another watcher.

mod codec;
mod watch;
mod writer;

use std::fmt::Display;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use super::{
    DEFAULT_PROGRESS_INTERVAL, KeyValue, ListContinue, ListResult, Store, StoreError, WatchEvent,
    WatchStream,
};
use writer::{Done, Op, Request, Writer};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// The file inside the store directory.
pub const STORE_FILE: &str = "keelson.redb";

/// Tuning of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// History is kept for at least this many revisions...
    pub retain_revisions: u64,
    /// ...or for at least this long, whichever keeps more.
    pub retain_for: Duration,
    /// How often the background compaction runs; None disables it (tests, or compaction
    /// driven by `Store::compact` only).
    pub compaction_interval: Option<Duration>,
    /// Events kept in memory for watchers; a watcher further behind reads the history table.
    pub watch_buffer: usize,
    /// Idle time after which a watch sends a progress event (bookmark).
    pub progress_interval: Duration,
    /// redb's page cache. Kept small so that the server's memory stays within its budget; the
    /// kernel's page cache still holds the file.
    pub cache_size: usize,
    /// At most this many writes are committed together in one transaction.
    pub max_batch: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            retain_revisions: 10_000,
            retain_for: Duration::from_secs(5 * 60),
            compaction_interval: Some(Duration::from_secs(30)),
            watch_buffer: 1024,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            cache_size: 4 << 20,
            max_batch: 256,
        }
    }
}

/// State that readers and watch streams share with the store.
struct Shared {
    db: Database,
    path: PathBuf,
    /// The latest revision whose events have been published.
    revision: AtomicI64,
    progress_interval: Duration,
}

/// The embedded store. Dropping it stops its writer thread; the file closes once the last
/// watch stream is gone too.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Blocking: it may repair the file after a crash.
    /// Fails if another process has it open.
    pub fn open(dir: &Path, config: EmbeddedConfig) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::internal(format!("creating {}", dir.display()), e))?;
        let path = dir.join(STORE_FILE);
        let opening = || format!("opening {}", path.display());
        let db = redb::Builder::new()
            .set_cache_size(config.cache_size)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::internal(opening(), "in use by another process")
                }
                other => StoreError::internal(opening(), other),
            })?;
        let (revision, compacted) =
            init_tables(&db).map_err(|e| StoreError::internal(opening(), e))?;
        tracing::info!(path = %path.display(), revision, compacted, "embedded store open");
        let shared = Arc::new(Shared {
            db,
            path,
            revision: AtomicI64::new(revision),
            progress_interval: config.progress_interval,
        });
        let (events, _) = broadcast::channel(config.watch_buffer.max(1));
        let (requests, rx) = mpsc::channel();
        let writer = Writer::new(
            shared.clone(),
            events.clone(),
            rx,
            &config,
            revision,
            compacted,
        );
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::internal("starting the store writer", e))?;
        Ok(EmbeddedStore {
            shared,
            events,
            requests: Some(requests),
            writer: Some(handle),
        })
    }

    /// Path of the redb file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    async fn submit(&self, op: Op) -> Result<Done, StoreError> {
        let what = op.describe();
        let (reply, rx) = oneshot::channel();
        let sender = self
            .requests
            .as_ref()
            .ok_or_else(|| StoreError::unavailable(&what, "store is shut down"))?;
        sender
            .send(Request { op, reply })
            .map_err(|_| StoreError::unavailable(&what, "store writer stopped"))?;
        rx.await
            .map_err(|_| StoreError::unavailable(&what, "store writer stopped"))?
    }

    async fn read<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        read_blocking(self.shared.clone(), what, f).await
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the request channel ends the writer after the batch in hand.
        self.requests.take();
        if let Some(handle) = self.writer.take()
            && handle.join().is_err()
        {
            tracing::error!("store writer thread panicked");
        }
    }
}

/// Runs `f` on a read snapshot on the blocking pool.
async fn read_blocking<T: Send + 'static>(
    shared: Arc<Shared>,
    what: String,
    f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let what2 = what.clone();
    tokio::task::spawn_blocking(move || {
        let txn = shared.db.begin_read().ctx(&what)?;
        f(&txn)
    })
    .await
    .map_err(|e| StoreError::internal(what2, e))?
}

/// Creates the tables on first open; returns (revision, compacted revision).
fn init_tables(db: &Database) -> Result<(i64, i64), redb::Error> {
    let txn = db.begin_write()?;
    let found = {
        txn.open_table(KV)?;
        txn.open_table(HISTORY)?;
        let mut meta = txn.open_table(META)?;
        let revision = meta.get(META_REVISION)?.map(|v| v.value());
        let compacted = meta.get(META_COMPACTED)?.map(|v| v.value());
        match (revision, compacted) {
            (Some(r), Some(c)) => (r as i64, c as i64),
            _ => {
                // A fresh store starts at revision 1, as etcd does: no object ever has
                // resourceVersion 0, which Kubernetes reserves for "any".
                meta.insert(META_REVISION, 1)?;
                meta.insert(META_COMPACTED, 0)?;
                (1, 0)
            }
        }
    };
    txn.commit()?;
    Ok(found)
}

/// (current revision, compacted revision) as of a snapshot.
fn snapshot_revisions(txn: &ReadTransaction, what: &str) -> Result<(i64, i64), StoreError> {
    let meta = txn.open_table(META).ctx(what)?;
    let get = |name: &str| -> Result<i64, StoreError> {
        Ok(meta
            .get(name)
            .ctx(what)?
            .map(|v| v.value() as i64)
            .unwrap_or_default())
    };
    Ok((get(META_REVISION)?, get(META_COMPACTED)?))
}

/// Maps any redb error to `Internal`, saying what was being done.
trait Ctx<T> {
    fn ctx(self, what: impl Display) -> Result<T, StoreError>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl Display) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::internal(what, e))
    }
}

fn get_blocking(txn: &ReadTransaction, key: &str) -> Result<Option<KeyValue>, StoreError> {
    let what = format!("reading {key}");
    let kv = txn.open_table(KV).ctx(&what)?;
    let Some(raw) = kv.get(key).ctx(&what)? else {
        return Ok(None);
    };
    codec::decode_kv(key, raw.value())
        .map(Some)
        .map_err(|e| StoreError::internal(what, e))
}

fn list_blocking(
    txn: &ReadTransaction,
    prefix: &str,
    limit: usize,
    cont: Option<ListContinue>,
) -> Result<ListResult, StoreError> {
    let what = format!("listing {prefix}");
    let (current, compacted) = snapshot_revisions(txn, &what)?;
    let at = cont.as_ref().map_or(current, |c| c.revision);
    if at < compacted {
        return Err(StoreError::Compacted {
            key: prefix.to_string(),
            requested: at,
            compacted_revision: compacted,
        });
    }
    if at > current {
        return Err(StoreError::internal(
            what,
            format!("revision {at} is newer than the store's revision {current}"),
        ));
    }
    // Pages start strictly after the continuation key (never before the prefix).
    let after: Option<&str> = cont
        .as_ref()
        .map(|c| c.key.as_str())
        .filter(|k| *k >= prefix);
    let start = match after {
        Some(k) => Bound::Excluded(k),
        None => Bound::Included(prefix),
    };
    let want = if limit == 0 { usize::MAX } else { limit + 1 };
    let kv = txn.open_table(KV).ctx(&what)?;
    let mut items = Vec::new();

    // Keys written after `at`, with their state as of `at` (None: absent then). The first
    // event after `at` for a key carries that state as its previous value.
    let mut changed = std::collections::BTreeMap::<String, Option<KeyValue>>::new();
    if at < current {
        let history = txn.open_table(HISTORY).ctx(&what)?;
        for entry in history
            .range((at as u64 + 1)..=(current as u64))
            .ctx(&what)?
        {
            let (rev, raw) = entry.ctx(&what)?;
            let (rev, raw) = (rev.value(), raw.value());
            let (_, key) =
                codec::history_header(rev, raw).map_err(|e| StoreError::internal(&what, e))?;
            if !key.starts_with(prefix)
                || after.is_some_and(|a| key <= a)
                || changed.contains_key(key)
            {
                continue;
            }
            let prev = match codec::decode_history(rev, raw)
                .map_err(|e| StoreError::internal(&what, e))?
            {
                WatchEvent::Put { prev, .. } | WatchEvent::Delete { prev, .. } => prev,
                WatchEvent::Progress { .. } => None,
            };
            changed.insert(key.to_string(), prev);
        }
    }
    let mut old = changed.into_values().flatten().peekable();

    let mut cur = kv.range::<&str>((start, Bound::Unbounded)).ctx(&what)?;
    let mut next_cur = || -> Result<Option<KeyValue>, StoreError> {
        for entry in cur.by_ref() {
            let (k, raw) = entry.ctx(&what)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                return Ok(None);
            }
            // Keys rewritten since `at` come from `old` instead.
            if at < current {
                let (_, mod_rev) = codec::kv_revisions(key, raw.value())
                    .map_err(|e| StoreError::internal(&what, e))?;
                if mod_rev > at {
                    continue;
                }
            }
            return codec::decode_kv(key, raw.value())
                .map(Some)
                .map_err(|e| StoreError::internal(&what, e));
        }
        Ok(None)
    };
    let mut head = next_cur()?;
    while items.len() < want {
        let take_old = match (&head, old.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(h), Some(o)) => o.key < h.key,
        };
        if take_old {
            items.extend(old.next());
        } else if let Some(h) = head.take() {
            items.push(h);
            head = next_cur()?;
        }
    }
    let more = items.len() > limit && limit > 0;
    if more {
        items.truncate(limit);
    }
    let next_key = if more {
        items.last().map(|kv| kv.key.clone())
    } else {
        None
    };
    Ok(ListResult {
        items,
        revision: at,
        more,
        next_key,
    })
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let k = key.to_string();
        self.read(format!("reading {key}"), move |txn| get_blocking(txn, &k))
            .await
    }

    async fn list(
        &self,
        prefix: &str,
        limit: usize,
        continue_from: Option<ListContinue>,
    ) -> Result<ListResult, StoreError> {
        let p = prefix.to_string();
        self.read(format!("listing {prefix}"), move |txn| {
            list_blocking(txn, &p, limit, continue_from)
        })
        .await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<i64, StoreError> {
        match self
            .submit(Op::Create {
                key: key.to_string(),
                value,
            })
            .await?
        {
            Done::Written(rev) => Ok(rev),
            other => Err(other.unexpected(key)),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Option<i64>,
    ) -> Result<i64, StoreError> {
        match self
            .submit(Op::Update {
                key: key.to_string(),
                value,
                expected: expected_mod_revision,
            })
            .await?
        {
            Done::Written(rev) => Ok(rev),
            other => Err(other.unexpected(key)),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<i64>,
    ) -> Result<(i64, KeyValue), StoreError> {
        match self
            .submit(Op::Delete {
                key: key.to_string(),
                expected: expected_mod_revision,
            })
            .await?
        {
            Done::Deleted(rev, prev) => Ok((rev, prev)),
            other => Err(other.unexpected(key)),
        }
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        // Subscribe before reading history: every event is then either in the snapshot the
        // first history read sees or arrives on the broadcast (commits precede publishing).
        let rx = self.events.subscribe();
        watch::start(self.shared.clone(), rx, prefix.to_string(), from_revision).await
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        Ok(self.shared.revision.load(Ordering::Acquire))
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        // The writer compacts in bounded chunks so that writes are not held up for long.
        loop {
            match self.submit(Op::Compact { upto: revision }).await? {
                Done::Compacted(reached) if reached >= revision => return Ok(()),
                Done::Compacted(_) => continue,
                other => return Err(other.unexpected("history")),
            }
        }
    }
}
