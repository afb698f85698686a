//! The control plane's storage layer: one [`Store`] trait, two backends.
//!
//! - [`EmbeddedStore`] (default): a redb file under the data directory. Every write is one
//!   durable redb transaction, so a write that was acknowledged survives SIGKILL.
//! - [`EtcdStore`]: etcd v3, for several `keelson-server` replicas sharing one etcd cluster.
//!
//! Both keep one monotonically increasing revision per store. A key's `mod_revision` is the
//! object's `resourceVersion`; a list returns the revision it was read at; a watch resumes
//! strictly after any revision still in the retained history and fails with
//! [`StoreError::Compacted`] (HTTP 410) for older ones.

mod embedded;
mod error;
mod etcd;

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

pub use embedded::{EmbeddedConfig, EmbeddedStore};
pub use error::StoreError;
pub use etcd::{EtcdConfig, EtcdStore};

/// One key with its current value and revisions.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: i64,
    /// Revision of the last write to the key: the object's `resourceVersion`.
    pub mod_revision: i64,
}

impl fmt::Debug for KeyValue {
    // Values can be large: show their size, not their bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

/// Where the next page of a list starts: strictly after `key`, read at `revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListContinue {
    pub key: String,
    pub revision: i64,
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    /// Keys in ascending byte order.
    pub items: Vec<KeyValue>,
    /// The revision every page of this list is read at (the list's `resourceVersion`).
    pub revision: i64,
    /// More keys follow this page.
    pub more: bool,
    /// The last key of this page when `more` is set: pass it back with `revision`.
    pub next_key: Option<String>,
}

impl ListResult {
    /// The continuation for the next page, if there is one.
    pub fn continuation(&self) -> Option<ListContinue> {
        match (&self.next_key, self.more) {
            (Some(key), true) => Some(ListContinue {
                key: key.clone(),
                revision: self.revision,
            }),
            _ => None,
        }
    }
}

/// Every key under a prefix, a page at a time, all pages read at the first page's revision:
/// `while let Some(page) = pages.next().await { .. }`. Ends after the last page or an error.
pub struct Pages<'a> {
    store: &'a dyn Store,
    prefix: &'a str,
    page_size: usize,
    /// Where the next page starts (None inside: the first page); None once done.
    next: Option<Option<ListContinue>>,
}

impl<'a> Pages<'a> {
    pub fn new(store: &'a dyn Store, prefix: &'a str, page_size: usize) -> Pages<'a> {
        Pages {
            store,
            prefix,
            page_size,
            next: Some(None),
        }
    }

    pub async fn next(&mut self) -> Option<Result<ListResult, StoreError>> {
        let from = self.next.take()?;
        let page = self.store.list(self.prefix, self.page_size, from).await;
        if let Ok(p) = &page {
            self.next = p.continuation().map(Some);
        }
        Some(page)
    }
}

/// What a watch delivers, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A create or an update. `prev` is the value before an update (None for a create).
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A delete. `kv` names the key with an empty value and `mod_revision` = the revision of
    /// the delete; `prev` is the deleted value (None only if a backend lost it to compaction).
    Delete {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// Every event of this watch up to `revision` has been delivered (a bookmark). Sent when
    /// the watch has been idle for the backend's progress interval.
    Progress { revision: i64 },
}

impl WatchEvent {
    /// The revision this event happened at (or the progress revision).
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put { kv, .. } | WatchEvent::Delete { kv, .. } => kv.mod_revision,
            WatchEvent::Progress { revision } => *revision,
        }
    }

    /// The key of a put or delete; None for progress.
    pub fn key(&self) -> Option<&str> {
        match self {
            WatchEvent::Put { kv, .. } | WatchEvent::Delete { kv, .. } => Some(&kv.key),
            WatchEvent::Progress { .. } => None,
        }
    }
}

/// The events of one watch. An `Err` item is the last one: with [`StoreError::Compacted`] the
/// watcher fell behind the retained history and must relist. The stream also ends (`None`)
/// when the store shuts down. Dropping it cancels the watch.
pub struct WatchStream {
    inner: Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>,
}

impl WatchStream {
    pub(crate) fn new(
        inner: impl Stream<Item = Result<WatchEvent, StoreError>> + Send + 'static,
    ) -> Self {
        WatchStream {
            inner: Box::pin(inner),
        }
    }

    /// The next event; None when the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        futures_util::StreamExt::next(&mut self.inner).await
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WatchStream")
    }
}

/// The storage the API server builds on. Keys look like `/registry/pods/<ns>/<name>`; values
/// are opaque bytes (the API server stores JSON).
///
/// `#[async_trait]` rather than native `async fn` in traits: the API server holds an
/// `Arc<dyn Store>` chosen at start-up, and native async trait methods are not dyn-compatible.
/// The one boxed future per call is noise next to a disk write or a network round trip.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The key's current value, or None.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys starting with `prefix`, in ascending order, at most `limit` (0 = no limit).
    /// Without `continue_from` the page is read at the current revision; with it, the page
    /// starts strictly after its key and is read at its revision, so writes made between
    /// pages do not show. A revision older than the retained history gives `Compacted`.
    async fn list(
        &self,
        prefix: &str,
        limit: usize,
        continue_from: Option<ListContinue>,
    ) -> Result<ListResult, StoreError>;

    /// Creates the key; `AlreadyExists` if it exists. Returns the write's revision.
    async fn create(&self, key: &str, value: Bytes) -> Result<i64, StoreError>;

    /// Replaces the key's value; `NotFound` if it does not exist, `Conflict` if
    /// `expected_mod_revision` is given and is not the key's mod revision.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Option<i64>,
    ) -> Result<i64, StoreError>;

    /// Deletes the key (with the same preconditions as `update`). Returns the delete's
    /// revision and the deleted value.
    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<i64>,
    ) -> Result<(i64, KeyValue), StoreError>;

    /// Events for keys starting with `prefix`, strictly after `from_revision`, in revision
    /// order: first the retained history, then live. `Compacted` if `from_revision` is older
    /// than the retained history. To watch "from now", pass the revision of a list or of
    /// `current_revision()`: nothing after it is missed.
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError>;

    /// The store's latest revision.
    async fn current_revision(&self) -> Result<i64, StoreError>;

    /// Discards history up to and including `revision`: afterwards watches and lists from
    /// older revisions fail with `Compacted`. Compacting to an already compacted revision does
    /// nothing.
    async fn compact(&self, revision: i64) -> Result<(), StoreError>;
}

/// Which store `--store` selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded store: a redb file in this directory.
    Embedded,
    /// etcd v3 at these `http://host:port` endpoints.
    Etcd(Vec<String>),
}

impl StoreUrl {
    /// Parses `--store`: empty or `embedded` for the embedded store,
    /// `etcd://HOST:PORT[,HOST:PORT...]` for etcd.
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        let url = url.trim();
        if url.is_empty() || url == "embedded" {
            return Ok(StoreUrl::Embedded);
        }
        let Some(rest) = url.strip_prefix("etcd://") else {
            return Err(format!(
                "store url {url:?}: expected embedded or etcd://HOST:PORT[,HOST:PORT...]"
            ));
        };
        let endpoints: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| format!("http://{}", e.trim_end_matches('/')))
            .collect();
        if endpoints.is_empty() {
            return Err(format!("store url {url:?}: no etcd endpoint"));
        }
        Ok(StoreUrl::Etcd(endpoints))
    }
}

/// Opens the store `url` selects; the embedded one lives in `data_dir/store/`.
pub async fn open(url: &StoreUrl, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Embedded => {
            let dir = data_dir.join("store");
            let config = EmbeddedConfig::default();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir, config))
                .await
                .map_err(|e| StoreError::internal("opening the embedded store", e))??;
            Ok(Arc::new(store))
        }
        StoreUrl::Etcd(endpoints) => {
            let config = EtcdConfig {
                endpoints: endpoints.clone(),
                ..EtcdConfig::default()
            };
            Ok(Arc::new(EtcdStore::connect(config).await?))
        }
    }
}

/// The smallest key greater than every key starting with `prefix` (None: no upper bound).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Default idle time after which a watch sends [`WatchEvent::Progress`].
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn store_url_parses() {
        assert_eq!(StoreUrl::parse("").unwrap(), StoreUrl::Embedded);
        assert_eq!(
            StoreUrl::parse("etcd://127.0.0.1:2379,127.0.0.1:2479").unwrap(),
            StoreUrl::Etcd(vec![
                "http://127.0.0.1:2379".into(),
                "http://127.0.0.1:2479".into()
            ])
        );
        assert!(StoreUrl::parse("mysql://x").is_err());
        assert!(StoreUrl::parse("etcd://").is_err());
    }
}
