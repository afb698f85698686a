//! Watches on the embedded store: live events from the in-memory broadcast, history from the
//! `history` table.
//!
//! Each watch remembers the last revision it has seen (`last`). It replays history after
//! `last` in chunks until it is caught up, then follows the broadcast, skipping what it has
//! already seen. A watch that is not read while the broadcast buffer fills up gets `Lagged`
//! from it (the writer never waits for a reader) and goes back to reading history from
//! `last`; if that history has been compacted meanwhile the watch ends with `Compacted`.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use super::{Ctx, HISTORY, Shared, codec, read_blocking, snapshot_revisions};
use crate::store::{StoreError, WatchEvent, WatchStream};

/// History records read per blocking call while catching up.
const HISTORY_CHUNK: usize = 512;

struct WatchState {
    shared: Arc<Shared>,
    rx: broadcast::Receiver<Arc<WatchEvent>>,
    prefix: String,
    /// Every revision up to this one has been delivered or skipped.
    last: i64,
    pending: VecDeque<WatchEvent>,
    catching_up: bool,
    next_progress: Instant,
    done: bool,
}

/// Opens a watch: reads the first history chunk now, so that a compacted `from_revision`
/// fails here rather than on the first `next()`.
pub(super) async fn start(
    shared: Arc<Shared>,
    rx: broadcast::Receiver<Arc<WatchEvent>>,
    prefix: String,
    from_revision: i64,
) -> Result<WatchStream, StoreError> {
    let mut state = WatchState {
        next_progress: Instant::now() + shared.progress_interval,
        shared,
        rx,
        prefix,
        last: from_revision.max(0),
        pending: VecDeque::new(),
        catching_up: true,
        done: false,
    };
    state.read_history().await?;
    Ok(WatchStream::new(futures_util::stream::unfold(
        state,
        |mut state| async move { state.next_item().await.map(|item| (item, state)) },
    )))
}

impl WatchState {
    async fn next_item(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(self.deliver(event)));
            }
            if self.catching_up {
                if let Err(e) = self.read_history().await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            }
            let received = tokio::time::timeout_at(self.next_progress, self.rx.recv()).await;
            match received {
                Err(_idle) => {
                    let revision = self.last;
                    return Some(Ok(self.deliver(WatchEvent::Progress { revision })));
                }
                Ok(Ok(event)) => {
                    let rev = event.revision();
                    if rev <= self.last {
                        continue;
                    }
                    if rev > self.last + 1 {
                        // Cannot happen (every revision is published, in order), but if it
                        // did, history has the missing events.
                        self.catching_up = true;
                        continue;
                    }
                    self.last = rev;
                    if event.key().is_some_and(|k| k.starts_with(&self.prefix)) {
                        return Some(Ok(self.deliver((*event).clone())));
                    }
                }
                Ok(Err(RecvError::Lagged(missed))) => {
                    tracing::debug!(prefix = %self.prefix, last = self.last, missed, "watcher lagged, reading history");
                    self.catching_up = true;
                }
                Ok(Err(RecvError::Closed)) => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    fn deliver(&mut self, event: WatchEvent) -> WatchEvent {
        self.next_progress = Instant::now() + self.shared.progress_interval;
        event
    }

    /// Reads the next chunk of history after `last` into `pending`; clears `catching_up` once
    /// the end of the history table is reached.
    async fn read_history(&mut self) -> Result<(), StoreError> {
        let prefix = self.prefix.clone();
        let last = self.last;
        let what = format!("watching {prefix}");
        let (events, scanned_to, exhausted) =
            read_blocking(self.shared.clone(), what.clone(), move |txn| {
                let (current, compacted) = snapshot_revisions(txn, &what)?;
                if last < compacted {
                    return Err(StoreError::Compacted {
                        key: prefix,
                        requested: last,
                        compacted_revision: compacted,
                    });
                }
                let mut events = Vec::new();
                let mut scanned_to = last;
                if last >= current {
                    return Ok((events, scanned_to, true));
                }
                let history = txn.open_table(HISTORY).ctx(&what)?;
                let mut scanned = 0;
                for entry in history.range((last as u64 + 1)..).ctx(&what)? {
                    let (rev, raw) = entry.ctx(&what)?;
                    let (rev, raw) = (rev.value(), raw.value());
                    let (_, key) = codec::history_header(rev, raw)
                        .map_err(|e| StoreError::internal(&what, e))?;
                    if key.starts_with(prefix.as_str()) {
                        events.push(
                            codec::decode_history(rev, raw)
                                .map_err(|e| StoreError::internal(&what, e))?,
                        );
                    }
                    scanned_to = rev as i64;
                    scanned += 1;
                    if scanned == HISTORY_CHUNK {
                        break;
                    }
                }
                Ok((events, scanned_to, scanned < HISTORY_CHUNK))
            })
            .await?;
        self.pending.extend(events);
        self.last = scanned_to;
        if exhausted {
            self.catching_up = false;
        }
        Ok(())
    }
}
