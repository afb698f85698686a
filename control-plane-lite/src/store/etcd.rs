//! The etcd v3 backend: revisions, preconditions, paging and watches map directly onto etcd.
//!
//! - revision = etcd's store revision; `mod_revision` = etcd's per-key mod revision;
//! - create = txn(create_revision == 0 → put), update/delete = txn(mod_revision == expected,
//!   or create_revision > 0 without a precondition), falling back to a get to tell NotFound
//!   from Conflict;
//! - list = range with a limit; later pages read at the first page's revision;
//! - watch = etcd watch from `from + 1` with previous values; a compacted start or a
//!   cancelled watch becomes `Compacted`.
//!
//! Several `keelson-server` replicas may share one etcd: every invariant lives in etcd.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchOptions,
};
use tokio::time::Instant;
use tonic::Code;

use super::{
    DEFAULT_PROGRESS_INTERVAL, KeyValue, ListContinue, ListResult, Store, StoreError, WatchEvent,
    WatchStream, prefix_end,
};

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// `http://host:port` of each member.
    pub endpoints: Vec<String>,
    pub connect_timeout: Duration,
    /// Idle time after which a watch asks etcd for a progress notification (bookmark).
    pub progress_interval: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            connect_timeout: Duration::from_secs(5),
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

/// A store backed by an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    progress_interval: Duration,
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore, StoreError> {
        let what = format!("connecting to etcd at {}", config.endpoints.join(","));
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // Fail fast on a member cut off from its quorum rather than waiting on it.
            .with_require_leader(true);
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| StoreError::unavailable(&what, e))?;
        let store = EtcdStore {
            client,
            progress_interval: config.progress_interval,
        };
        let revision = store
            .current_revision()
            .await
            .map_err(|e| StoreError::unavailable(&what, e))?;
        tracing::info!(endpoints = %config.endpoints.join(","), revision, "connected to etcd");
        Ok(store)
    }

    /// Runs `txn`; if its compare failed, reads `key` from the else branch to tell NotFound
    /// from Conflict. Returns the successful response.
    async fn guarded(
        &self,
        what: &str,
        key: &str,
        guard: Compare,
        op: TxnOp,
    ) -> Result<TxnResponse, StoreError> {
        let txn = Txn::new()
            .when(vec![guard])
            .and_then(vec![op])
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| map_err(what, key, 0, e))?;
        if resp.succeeded() {
            return Ok(resp);
        }
        let current = match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        };
        Err(match current {
            None => StoreError::NotFound {
                key: key.to_string(),
            },
            Some(current_revision) => StoreError::Conflict {
                key: key.to_string(),
                current_revision,
            },
        })
    }
}

fn header_revision(what: &str, resp: &TxnResponse) -> Result<i64, StoreError> {
    resp.header()
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::internal(what, "etcd sent no response header"))
}

fn convert(what: &str, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: kv
            .key_str()
            .map_err(|e| StoreError::internal(what, e))?
            .to_string(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

/// Maps an etcd client error; `requested` is the revision asked for, if any.
fn map_err(what: &str, key: &str, requested: i64, e: etcd_client::Error) -> StoreError {
    match &e {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            Code::OutOfRange if status.message().contains("compacted") => StoreError::Compacted {
                key: key.to_string(),
                requested,
                compacted_revision: 0,
            },
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                StoreError::unavailable(what, e)
            }
            _ => StoreError::internal(what, e),
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            StoreError::unavailable(what, e)
        }
        _ => StoreError::internal(what, e),
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let what = format!("reading {key}");
        let resp = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(|e| map_err(&what, key, 0, e))?;
        resp.kvs().first().map(|kv| convert(&what, kv)).transpose()
    }

    async fn list(
        &self,
        prefix: &str,
        limit: usize,
        continue_from: Option<ListContinue>,
    ) -> Result<ListResult, StoreError> {
        let what = format!("listing {prefix}");
        let start = match &continue_from {
            // The smallest key after the continuation key.
            Some(c) if c.key.as_str() >= prefix => {
                let mut k = c.key.clone().into_bytes();
                k.push(0);
                k
            }
            _ => prefix.as_bytes().to_vec(),
        };
        // "\0" as range end: every key from the start on (the empty prefix).
        let end = prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0]);
        let mut options = GetOptions::new().with_range(end);
        if limit > 0 {
            options = options.with_limit(limit as i64);
        }
        let requested = continue_from.as_ref().map_or(0, |c| c.revision);
        if requested > 0 {
            options = options.with_revision(requested);
        }
        let resp = self
            .client
            .kv_client()
            .get(start, Some(options))
            .await
            .map_err(|e| map_err(&what, prefix, requested, e))?;
        let revision = if requested > 0 {
            requested
        } else {
            resp.header()
                .map(|h| h.revision())
                .ok_or_else(|| StoreError::internal(&what, "etcd sent no response header"))?
        };
        let items = resp
            .kvs()
            .iter()
            .map(|kv| convert(&what, kv))
            .collect::<Result<Vec<_>, _>>()?;
        let more = resp.more() && !items.is_empty();
        let next_key = if more {
            items.last().map(|kv| kv.key.clone())
        } else {
            None
        };
        Ok(ListResult {
            items,
            revision,
            more,
            next_key,
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<i64, StoreError> {
        let what = format!("creating {key}");
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(key, value.to_vec(), None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| map_err(&what, key, 0, e))?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        header_revision(&what, &resp)
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Option<i64>,
    ) -> Result<i64, StoreError> {
        let what = format!("updating {key}");
        let guard = match expected_mod_revision {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let resp = self
            .guarded(&what, key, guard, TxnOp::put(key, value.to_vec(), None))
            .await?;
        header_revision(&what, &resp)
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<i64>,
    ) -> Result<(i64, KeyValue), StoreError> {
        let what = format!("deleting {key}");
        let guard = match expected_mod_revision {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let op = TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()));
        let resp = self.guarded(&what, key, guard, op).await?;
        let revision = header_revision(&what, &resp)?;
        let prev = match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Delete(d)) => d.prev_kvs().first().map(|kv| convert(&what, kv)),
            _ => None,
        };
        match prev {
            Some(prev) => Ok((revision, prev?)),
            // The compare saw the key, so the delete removed it: etcd always returns it.
            None => Err(StoreError::internal(
                &what,
                "etcd returned no deleted value",
            )),
        }
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        let what = format!("watching {prefix}");
        let from = from_revision.max(0);
        // etcd would accept a start revision equal to its compacted revision; the embedded
        // store does not. Probing a read at `from` applies the same rule as for lists.
        if from > 0 {
            let probe = GetOptions::new()
                .with_revision(from)
                .with_count_only()
                .with_limit(1);
            match self.client.kv_client().get(prefix, Some(probe)).await {
                Ok(_) => {}
                Err(e) => match map_err(&what, prefix, from, e) {
                    compacted @ StoreError::Compacted { .. } => return Err(compacted),
                    // A future revision is fine for a watch; anything else is not.
                    StoreError::Internal(m) if m.contains("future revision") => {}
                    other => return Err(other),
                },
            }
        }
        let end = prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0]);
        let key = if prefix.is_empty() {
            vec![0]
        } else {
            prefix.as_bytes().to_vec()
        };
        let options = WatchOptions::new()
            .with_range(end)
            .with_start_revision(from + 1)
            .with_prev_key();
        let mut stream = self
            .client
            .watch_client()
            .watch(key, Some(options))
            .await
            .map_err(|e| map_err(&what, prefix, from, e))?;
        // The first answer confirms the watch (or refuses it).
        let mut pending = VecDeque::new();
        match stream.message().await {
            Ok(Some(resp)) if resp.canceled() => {
                return Err(cancelled(prefix, from, &resp));
            }
            Ok(Some(resp)) => push_events(&what, &resp, &mut pending)?,
            Ok(None) => return Err(StoreError::unavailable(&what, "etcd closed the watch")),
            Err(e) => return Err(map_err(&what, prefix, from, e)),
        }
        let state = EtcdWatch {
            stream,
            pending,
            what,
            prefix: prefix.to_string(),
            last: from,
            progress_interval: self.progress_interval,
            next_progress: Instant::now() + self.progress_interval,
            done: false,
        };
        Ok(WatchStream::new(futures_util::stream::unfold(
            state,
            |mut state| async move { state.next_item().await.map(|item| (item, state)) },
        )))
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        let what = "reading the etcd revision";
        let resp = self
            .client
            .kv_client()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| map_err(what, "/", 0, e))?;
        resp.header()
            .map(|h| h.revision())
            .ok_or_else(|| StoreError::internal(what, "etcd sent no response header"))
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let what = format!("compacting history to revision {revision}");
        match self.client.kv_client().compact(revision, None).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err(&what, "history", revision, e) {
                // Already compacted at or past it: nothing to do.
                StoreError::Compacted { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}

fn cancelled(prefix: &str, from: i64, resp: &etcd_client::WatchResponse) -> StoreError {
    if resp.compact_revision() > 0 {
        StoreError::Compacted {
            key: prefix.to_string(),
            requested: from,
            compacted_revision: resp.compact_revision(),
        }
    } else {
        StoreError::unavailable(
            format!("watching {prefix}"),
            format!("etcd cancelled the watch: {}", resp.cancel_reason()),
        )
    }
}

fn push_events(
    what: &str,
    resp: &etcd_client::WatchResponse,
    pending: &mut VecDeque<WatchEvent>,
) -> Result<(), StoreError> {
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        let kv = convert(what, kv)?;
        let prev = event.prev_kv().map(|p| convert(what, p)).transpose()?;
        pending.push_back(match event.event_type() {
            EventType::Put => WatchEvent::Put { kv, prev },
            EventType::Delete => WatchEvent::Delete { kv, prev },
        });
    }
    Ok(())
}

struct EtcdWatch {
    stream: etcd_client::WatchStream,
    pending: VecDeque<WatchEvent>,
    what: String,
    prefix: String,
    last: i64,
    progress_interval: Duration,
    next_progress: Instant,
    done: bool,
}

impl EtcdWatch {
    async fn next_item(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                self.last = event.revision();
                self.next_progress = Instant::now() + self.progress_interval;
                return Some(Ok(event));
            }
            match tokio::time::timeout_at(self.next_progress, self.stream.message()).await {
                Err(_idle) => {
                    // etcd answers once this stream's watchers are in sync: a bookmark.
                    self.next_progress = Instant::now() + self.progress_interval;
                    if let Err(e) = self.stream.request_progress().await {
                        self.done = true;
                        return Some(Err(map_err(&self.what, &self.prefix, self.last, e)));
                    }
                }
                Ok(Ok(Some(resp))) => {
                    if resp.canceled() {
                        self.done = true;
                        return Some(Err(cancelled(&self.prefix, self.last, &resp)));
                    }
                    if resp.events().is_empty() {
                        let revision = resp.header().map_or(0, |h| h.revision());
                        if !resp.created() && revision > 0 {
                            self.last = self.last.max(revision);
                            return Some(Ok(WatchEvent::Progress { revision }));
                        }
                        continue;
                    }
                    if let Err(e) = push_events(&self.what, &resp, &mut self.pending) {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                Ok(Ok(None)) => {
                    self.done = true;
                    return Some(Err(StoreError::unavailable(
                        &self.what,
                        "etcd closed the watch",
                    )));
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Some(Err(map_err(&self.what, &self.prefix, self.last, e)));
                }
            }
        }
    }
}
