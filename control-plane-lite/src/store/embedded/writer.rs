//! The embedded store's single writer: group commit, event publishing, background compaction.
//!
//! Requests queue on a channel. The writer takes all that are waiting (up to `max_batch`),
//! applies them in order inside one redb write transaction (each write gets the next
//! revision), commits durably, publishes the events and then answers every request. A failed
//! commit fails the whole batch, and nothing of it was acknowledged.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{ReadableTable, Table, WriteTransaction};
use tokio::sync::{broadcast, oneshot};

use super::codec::{self, HistoryRecord};
use super::{Ctx, EmbeddedConfig, HISTORY, KV, META, META_COMPACTED, META_REVISION, Shared};
use crate::store::{KeyValue, StoreError, WatchEvent};

/// History entries removed per compaction step (one transaction).
const COMPACT_CHUNK: i64 = 4096;

pub(super) enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Option<i64>,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
    /// Removes history up to `upto`, one chunk per request.
    Compact {
        upto: i64,
    },
}

impl Op {
    pub(super) fn describe(&self) -> String {
        match self {
            Op::Create { key, .. } => format!("creating {key}"),
            Op::Update { key, .. } => format!("updating {key}"),
            Op::Delete { key, .. } => format!("deleting {key}"),
            Op::Compact { upto } => format!("compacting history to revision {upto}"),
        }
    }
}

pub(super) enum Done {
    Written(i64),
    Deleted(i64, KeyValue),
    /// History is compacted up to this revision.
    Compacted(i64),
}

impl Done {
    pub(super) fn unexpected(self, key: &str) -> StoreError {
        StoreError::Internal(format!("{key}: store writer gave an unexpected answer"))
    }
}

pub(super) struct Request {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Done, StoreError>>,
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    rx: mpsc::Receiver<Request>,
    revision: i64,
    compacted: i64,
    retain_revisions: i64,
    retain_for: Duration,
    compaction_interval: Option<Duration>,
    max_batch: usize,
}

type KvTable<'t> = Table<'t, &'static str, &'static [u8]>;
type HistoryTable<'t> = Table<'t, u64, &'static [u8]>;

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        events: broadcast::Sender<Arc<WatchEvent>>,
        rx: mpsc::Receiver<Request>,
        config: &EmbeddedConfig,
        revision: i64,
        compacted: i64,
    ) -> Writer {
        Writer {
            shared,
            events,
            rx,
            revision,
            compacted,
            retain_revisions: config.retain_revisions.min(i64::MAX as u64) as i64,
            retain_for: config.retain_for,
            compaction_interval: config.compaction_interval,
            max_batch: config.max_batch.max(1),
        }
    }

    pub(super) fn run(mut self) {
        let mut next_retention = self.compaction_interval.map(|i| Instant::now() + i);
        loop {
            let first = match next_retention {
                None => match self.rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
                Some(at) => {
                    match self
                        .rx
                        .recv_timeout(at.saturating_duration_since(Instant::now()))
                    {
                        Ok(r) => r,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            let more = self.retention_pass();
                            let wait = if more {
                                Duration::ZERO
                            } else {
                                self.compaction_interval.unwrap_or_default()
                            };
                            next_retention = Some(Instant::now() + wait);
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
        tracing::debug!(revision = self.revision, "store writer stopped");
    }

    fn commit_batch(&mut self, batch: Vec<Request>) {
        let mut revision = self.revision;
        let mut compacted = self.compacted;
        let mut events = Vec::new();
        let result = self.apply_batch(&batch, &mut revision, &mut compacted, &mut events);
        match result {
            Ok(outcomes) => {
                self.revision = revision;
                self.compacted = compacted;
                // Publish before answering, so that live watchers see a write no later than
                // its writer does. A send only fails when nobody watches.
                for event in events {
                    let _ = self.events.send(event);
                }
                self.shared.revision.store(revision, Ordering::Release);
                for (req, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = req.reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "store commit failed");
                for req in batch {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Applies the batch in one transaction. The outer error aborts everything; the inner
    /// results are each request's own outcome (a conflict does not abort the others).
    fn apply_batch(
        &self,
        batch: &[Request],
        revision: &mut i64,
        compacted: &mut i64,
        events: &mut Vec<Arc<WatchEvent>>,
    ) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
        let what = "committing writes";
        let txn: WriteTransaction = self.shared.db.begin_write().ctx(what)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut kv = txn.open_table(KV).ctx(what)?;
            let mut history = txn.open_table(HISTORY).ctx(what)?;
            let now = unix_millis();
            for req in batch {
                let outcome = match &req.op {
                    Op::Compact { upto } => {
                        compact_step(&mut history, *upto, *revision, compacted)?
                    }
                    op => apply_write(&mut kv, &mut history, op, now, revision, events)?,
                };
                outcomes.push(outcome);
            }
            let mut meta = txn.open_table(META).ctx(what)?;
            meta.insert(META_REVISION, *revision as u64).ctx(what)?;
            meta.insert(META_COMPACTED, *compacted as u64).ctx(what)?;
        }
        txn.commit().ctx(what)?;
        Ok(outcomes)
    }

    /// Background retention: compacts history older than both `retain_revisions` revisions and
    /// `retain_for`, one chunk at a time. Returns true if more is due right away.
    fn retention_pass(&mut self) -> bool {
        let by_revision = self.revision - self.retain_revisions;
        if by_revision <= self.compacted {
            return false;
        }
        let limit = by_revision.min(self.compacted + COMPACT_CHUNK);
        let cutoff = unix_millis().saturating_sub(self.retain_for.as_millis() as u64);
        let mut compacted = self.compacted;
        let result = (|| -> Result<i64, StoreError> {
            let what = "compacting history";
            let txn = self.shared.db.begin_write().ctx(what)?;
            let mut target = self.compacted;
            {
                let mut history = txn.open_table(HISTORY).ctx(what)?;
                for entry in history
                    .range((self.compacted as u64 + 1)..=(limit as u64))
                    .ctx(what)?
                {
                    let (rev, raw) = entry.ctx(what)?;
                    let (millis, _) = codec::history_header(rev.value(), raw.value())
                        .map_err(|e| StoreError::internal(what, e))?;
                    if millis >= cutoff {
                        break;
                    }
                    target = rev.value() as i64;
                }
                if target > self.compacted {
                    compact_step(&mut history, target, self.revision, &mut compacted)?
                        .map_err(|e| StoreError::internal(what, e))?;
                    let mut meta = txn.open_table(META).ctx(what)?;
                    meta.insert(META_COMPACTED, compacted as u64).ctx(what)?;
                }
            }
            txn.commit().ctx(what)?;
            Ok(target)
        })();
        match result {
            Ok(target) if target > self.compacted => {
                tracing::debug!(from = self.compacted, to = compacted, "history compacted");
                self.compacted = compacted;
                compacted == limit && limit < by_revision
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "background compaction failed");
                false
            }
        }
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Removes history up to `upto` (at most one chunk) and moves `compacted` there.
fn compact_step(
    history: &mut HistoryTable<'_>,
    upto: i64,
    revision: i64,
    compacted: &mut i64,
) -> Result<Result<Done, StoreError>, StoreError> {
    if upto > revision {
        return Ok(Err(StoreError::Internal(format!(
            "history: cannot compact to revision {upto}, the store is at revision {revision}"
        ))));
    }
    if upto <= *compacted {
        return Ok(Ok(Done::Compacted(*compacted)));
    }
    let end = upto.min(*compacted + COMPACT_CHUNK);
    history
        .retain_in(..=(end as u64), |_, _| false)
        .ctx("compacting history")?;
    *compacted = end;
    Ok(Ok(Done::Compacted(end)))
}

/// Applies one create/update/delete; a failed precondition is the request's own error.
fn apply_write(
    kv: &mut KvTable<'_>,
    history: &mut HistoryTable<'_>,
    op: &Op,
    now: u64,
    revision: &mut i64,
    events: &mut Vec<Arc<WatchEvent>>,
) -> Result<Result<Done, StoreError>, StoreError> {
    let (key, value, expected, delete) = match op {
        Op::Create { key, value } => (key, Some(value), None, false),
        Op::Update {
            key,
            value,
            expected,
        } => (key, Some(value), *expected, false),
        Op::Delete { key, expected } => (key, None, *expected, true),
        Op::Compact { .. } => unreachable!("compaction is applied by compact_step"),
    };
    let what = op.describe();
    let current = match kv.get(key.as_str()).ctx(&what)? {
        Some(raw) => {
            Some(codec::decode_kv(key, raw.value()).map_err(|e| StoreError::internal(&what, e))?)
        }
        None => None,
    };
    let is_create = matches!(op, Op::Create { .. });
    match (&current, is_create) {
        (Some(_), true) => return Ok(Err(StoreError::AlreadyExists { key: key.clone() })),
        (None, false) => return Ok(Err(StoreError::NotFound { key: key.clone() })),
        (Some(cur), false) => {
            if let Some(expected) = expected
                && expected != cur.mod_revision
            {
                return Ok(Err(StoreError::Conflict {
                    key: key.clone(),
                    current_revision: cur.mod_revision,
                }));
            }
        }
        (None, true) => {}
    }
    let rev = *revision + 1;
    let event = if delete {
        kv.remove(key.as_str()).ctx(&what)?;
        let record = HistoryRecord {
            delete: true,
            unix_millis: now,
            key,
            value: &[],
            create_revision: 0,
            prev: current.as_ref(),
        };
        history
            .insert(rev as u64, codec::encode_history(&record).as_slice())
            .ctx(&what)?;
        WatchEvent::Delete {
            kv: KeyValue {
                key: key.clone(),
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: rev,
            },
            prev: current.clone(),
        }
    } else {
        let value = value.cloned().unwrap_or_default();
        let create_revision = current.as_ref().map_or(rev, |c| c.create_revision);
        kv.insert(
            key.as_str(),
            codec::encode_kv(create_revision, rev, &value).as_slice(),
        )
        .ctx(&what)?;
        let record = HistoryRecord {
            delete: false,
            unix_millis: now,
            key,
            value: &value,
            create_revision,
            prev: current.as_ref(),
        };
        history
            .insert(rev as u64, codec::encode_history(&record).as_slice())
            .ctx(&what)?;
        WatchEvent::Put {
            kv: KeyValue {
                key: key.clone(),
                value,
                create_revision,
                mod_revision: rev,
            },
            prev: current.clone(),
        }
    };
    *revision = rev;
    events.push(Arc::new(event));
    Ok(Ok(match (delete, current) {
        (true, Some(prev)) => Done::Deleted(rev, prev),
        _ => Done::Written(rev),
    }))
}
