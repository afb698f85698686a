//! The image service's logic: pull, resolve, list, remove, garbage-collect and measure images.
//!
//! A pull fetches the manifest (choosing the host platform from an index), the config, then
//! streams every missing layer straight from the registry through digest verification and the
//! unpacker into a snapshot, several layers at once. Nothing is committed before it is verified,
//! and the image record is written last, so a crash or a lying registry never leaves a half image.

use crate::image::content::{ContentError, ContentStore};
use crate::image::digest::{Digest, HashingReader};
use crate::image::keyed_lock::KeyedLocks;
use crate::image::manifest::{self, Descriptor, ManifestError, Parsed, Platform};
use crate::image::reference::{Reference, ReferenceError};
use crate::image::registry::{Credentials, Endpoints, RegistryClient, RegistryError};
use crate::image::snapshot::{self, SnapshotError, SnapshotStore};
use crate::image::store::{ImageRecord, ImageStore, ImageStoreError, RECORD_VERSION};
use crate::image::unpack::{self, Compression, UnpackError};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{RwLock, Semaphore};

/// Why a pull failed. Each message names the image and, where it applies, the layer.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("pulling {image}: {source}")]
    Registry {
        image: String,
        source: RegistryError,
    },
    #[error("pulling {image}: {source}")]
    Manifest {
        image: String,
        source: ManifestError,
    },
    #[error("pulling {image}: {what} {digest} is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        image: String,
        what: &'static str,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error(
        "pulling {image}: {what} {digest} failed verification: the registry sent content with digest {actual}"
    )]
    DigestMismatch {
        image: String,
        what: &'static str,
        digest: Digest,
        actual: Digest,
    },
    #[error(
        "pulling {image}: layer {digest} unpacks to content with digest {actual}, but the image config says {expected}"
    )]
    DiffIdMismatch {
        image: String,
        digest: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("pulling {image}: layer {digest}: {source}")]
    Unpack {
        image: String,
        digest: Digest,
        source: UnpackError,
    },
    #[error("pulling {image}: layer {digest}: download interrupted: {message}")]
    Transfer {
        image: String,
        digest: Digest,
        message: String,
    },
    #[error(
        "pulling {image}: index {digest} points at another index; nested indexes are not supported"
    )]
    NestedIndex { image: String, digest: Digest },
    #[error("pulling {image}: {source}")]
    Content { image: String, source: ContentError },
    #[error("pulling {image}: {source}")]
    Snapshot {
        image: String,
        source: SnapshotError,
    },
    #[error("pulling {image}: {source}")]
    Store {
        image: String,
        source: ImageStoreError,
    },
    #[error("pulling {image}: {message}")]
    Internal { image: String, message: String },
}

/// What the store holds on disk, for ImageFsInfo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Settings of the image service.
#[derive(Debug, Clone)]
pub struct ImageManagerOptions {
    pub max_concurrent_downloads: usize,
    pub platform: Platform,
}

/// The image service: stores plus the registry client. Cheap to share behind an `Arc`.
pub struct ImageManager {
    root: PathBuf,
    content: ContentStore,
    snapshots: SnapshotStore,
    images: ImageStore,
    registry: RegistryClient,
    platform: Platform,
    layer_locks: KeyedLocks<Digest>,
    downloads: Semaphore,
    /// Pulls hold it shared; garbage collection takes it exclusively, so it never deletes a
    /// snapshot or blob that an unfinished pull has committed but not yet recorded.
    gc_lock: RwLock<()>,
    /// Snapshots that something other than an image holds (containers' rootfs layers).
    extra_roots: std::sync::RwLock<Option<SnapshotRoots>>,
}

/// Lists snapshot chain ids that garbage collection must keep.
pub type SnapshotRoots = Arc<dyn Fn() -> Vec<Digest> + Send + Sync>;

/// Reads a layer's bytes as they arrive from the async download; refuses more than the manifest declared.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    received: u64,
    limit: u64,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => {
                    self.received += b.len() as u64;
                    if self.received > self.limit {
                        return Err(io::Error::other(format!(
                            "the registry sent more than the {} bytes the manifest declares",
                            self.limit
                        )));
                    }
                    self.current = b;
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// A layer blob's verified unpack, waiting to be committed as a snapshot.
struct Unpacked {
    pending: snapshot::PendingSnapshot,
    outcome: unpack::UnpackOutcome,
}

/// Streams one compressed layer through digest verification into `pending`. Blocking.
fn unpack_stream(
    reader: impl Read,
    compression: Compression,
    pending: snapshot::PendingSnapshot,
    expected: &Digest,
) -> Result<Unpacked, LayerFailure> {
    let mut hashing = HashingReader::new(reader);
    let outcome = unpack::unpack_layer(&mut hashing, compression, &pending.fs());
    // Read to the end whatever the unpacker made of it: a digest mismatch explains a broken stream
    // better than the decompressor's complaint does.
    let (actual, len) = hashing
        .finish()
        .map_err(|e| LayerFailure::Transfer(e.to_string()))?;
    if &actual != expected {
        return Err(LayerFailure::Digest { actual, len });
    }
    let outcome = outcome.map_err(LayerFailure::Unpack)?;
    Ok(Unpacked { pending, outcome })
}

enum LayerFailure {
    Transfer(String),
    Digest { actual: Digest, len: u64 },
    Unpack(UnpackError),
}

fn compression_for(desc: &Descriptor) -> Result<Compression, UnpackError> {
    Compression::from_media_type(&desc.media_type)
}

impl ImageManager {
    /// Opens the stores under `root`, cleaning what a crash left half-made, and drops image
    /// records whose content is gone.
    pub fn open(
        root: &Path,
        registry: RegistryClient,
        opts: ImageManagerOptions,
    ) -> Result<Self, PullError> {
        let internal = |message: String| PullError::Internal {
            image: "-".into(),
            message,
        };
        let content = ContentStore::open(root).map_err(|e| internal(e.to_string()))?;
        let snapshots = SnapshotStore::open(root).map_err(|e| internal(e.to_string()))?;
        let images = ImageStore::open(root).map_err(|e| internal(e.to_string()))?;
        let manager = Self {
            root: root.to_path_buf(),
            content,
            snapshots,
            images,
            registry,
            platform: opts.platform,
            layer_locks: KeyedLocks::default(),
            downloads: Semaphore::new(opts.max_concurrent_downloads.max(1)),
            gc_lock: RwLock::new(()),
            extra_roots: std::sync::RwLock::new(None),
        };
        for r in manager.images.list() {
            let missing: Vec<&Digest> = r
                .chain_ids
                .iter()
                .filter(|c| !manager.snapshots.contains(c))
                .collect();
            if !missing.is_empty() || !manager.content.contains(&r.id) {
                tracing::error!(image = %r.id, names = ?r.repo_tags, "image content is missing on disk; forgetting the image");
                manager
                    .images
                    .remove(&r.id)
                    .map_err(|e| internal(e.to_string()))?;
            }
        }
        Ok(manager)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.images.list()
    }

    /// Finds an image by full id (`sha256:<hex>` or `<hex>`), by name (`name:tag`, `name@digest`,
    /// familiar forms like `busybox` included), or by a unique id prefix, in that order.
    pub fn resolve(&self, spec: &str) -> Result<Option<ImageRecord>, ImageStoreError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(None);
        }
        let as_id = if spec.starts_with("sha256:") {
            spec.to_string()
        } else {
            format!("sha256:{spec}")
        };
        if let Ok(id) = Digest::parse(&as_id)
            && let Some(r) = self.images.get(&id)
        {
            return Ok(Some(r));
        }
        if let Ok(r) = Reference::parse(spec) {
            let name = match &r.digest {
                Some(d) => r.digested(d),
                None => r.tagged().unwrap_or_default(),
            };
            if let Some(rec) = self.images.by_name(&name) {
                return Ok(Some(rec));
            }
        }
        let hex = spec.strip_prefix("sha256:").unwrap_or(spec);
        if !hex.is_empty()
            && hex.len() < 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return self.images.by_id_prefix(hex);
        }
        Ok(None)
    }

    /// Removes an image and all its names; `false` if there was none. Unused content is freed
    /// in the background.
    pub fn remove(self: &Arc<Self>, spec: &str) -> Result<bool, ImageStoreError> {
        let Some(r) = self.resolve(spec)? else {
            return Ok(false);
        };
        self.images.remove(&r.id)?;
        self.schedule_gc();
        Ok(true)
    }

    /// Registers who else holds snapshots (the container store), so GC keeps their layers.
    pub fn set_snapshot_roots(&self, roots: SnapshotRoots) {
        *self.extra_roots.write().expect("gc roots lock") = Some(roots);
    }

    /// Collects garbage without making the caller wait.
    pub fn schedule_gc(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.gc().await {
                tracing::error!(error = %e, "image garbage collection failed");
            }
        });
    }

    /// Deletes snapshots and blobs that no image references. Waits for running pulls to finish.
    pub async fn gc(self: &Arc<Self>) -> Result<(usize, usize), SnapshotError> {
        let _exclusive = self.gc_lock.write().await;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let images = me.images.list();
            let extra = me
                .extra_roots
                .read()
                .expect("gc roots lock")
                .clone()
                .map(|f| f())
                .unwrap_or_default();
            let live_snapshots: HashSet<&Digest> = images
                .iter()
                .flat_map(|r| r.chain_ids.iter())
                .chain(extra.iter())
                .collect();
            let live_blobs: HashSet<&Digest> = images
                .iter()
                .flat_map(|r| r.manifests.iter().chain(std::iter::once(&r.id)))
                .collect();
            let mut snaps = 0;
            for chain in me.snapshots.list()? {
                if !live_snapshots.contains(&chain) {
                    me.snapshots.remove(&chain)?;
                    snaps += 1;
                }
            }
            let mut blobs = 0;
            for (d, _) in me.content.list().unwrap_or_default() {
                if !live_blobs.contains(&d) {
                    if let Err(e) = me.content.remove(&d) {
                        tracing::warn!(blob = %d, error = %e, "cannot remove unused blob");
                    }
                    blobs += 1;
                }
            }
            if snaps + blobs > 0 {
                tracing::info!(snapshots = snaps, blobs, "freed unused image content");
            }
            Ok((snaps, blobs))
        })
        .await
        .map_err(|e| SnapshotError::Io {
            path: self.root.clone(),
            source: io::Error::other(e.to_string()),
        })?
    }

    /// Bytes and inodes the image store uses: unpacked snapshots plus stored blobs.
    pub fn usage(&self) -> FsUsage {
        let mut u = FsUsage::default();
        for chain in self.snapshots.list().unwrap_or_default() {
            if let Ok(m) = self.snapshots.meta(&chain) {
                u.bytes += m.size;
                u.inodes += m.inodes;
            }
        }
        for (_, len) in self.content.list().unwrap_or_default() {
            u.bytes += len;
            u.inodes += 1;
        }
        u
    }

    /// The raw image config JSON of an image.
    pub fn config_json(&self, r: &ImageRecord) -> Result<Vec<u8>, ContentError> {
        self.content.get(&r.id)
    }

    /// Adds a verified image to the store and frees what images it displaced no longer need.
    pub(crate) fn commit_record(
        self: &Arc<Self>,
        record: ImageRecord,
    ) -> Result<ImageRecord, ImageStoreError> {
        let (merged, dropped) = self.images.add(record)?;
        if !dropped.is_empty() {
            self.schedule_gc();
        }
        Ok(merged)
    }

    /// Pulls `image` (any form `crictl pull` accepts) and returns its record.
    pub async fn pull(
        self: &Arc<Self>,
        image: &str,
        creds: &Credentials,
    ) -> Result<ImageRecord, PullError> {
        let reference = Reference::parse(image)?;
        let name = reference.to_string();
        let reg_err = |source| PullError::Registry {
            image: name.clone(),
            source,
        };
        let man_err = |source| PullError::Manifest {
            image: name.clone(),
            source,
        };
        // The registry's hosts (mirrors, then the server) and their credentials, read once per pull.
        let endpoints = self
            .registry
            .endpoints(&reference, creds)
            .map_err(reg_err)?;
        let _shared = self.gc_lock.read().await;
        let started = std::time::Instant::now();

        let top = self
            .registry
            .fetch_manifest_from(&endpoints, &reference.reference())
            .await
            .map_err(reg_err)?;
        let mut metadata: Vec<(Digest, Bytes)> = vec![(top.digest.clone(), top.bytes.clone())];
        let manifest = match manifest::parse_manifest(&top.media_type, &top.digest, &top.bytes)
            .map_err(man_err)?
        {
            Parsed::Image(m) => m,
            Parsed::Index(index) => {
                let desc = index.select(&self.platform, &top.digest).map_err(man_err)?;
                let m = self
                    .registry
                    .fetch_manifest_from(&endpoints, desc.digest.as_str())
                    .await
                    .map_err(reg_err)?;
                metadata.push((m.digest.clone(), m.bytes.clone()));
                match manifest::parse_manifest(&m.media_type, &m.digest, &m.bytes)
                    .map_err(man_err)?
                {
                    Parsed::Image(img) => img,
                    Parsed::Index(_) => {
                        return Err(PullError::NestedIndex {
                            image: name,
                            digest: m.digest,
                        });
                    }
                }
            }
        };

        let config_desc = &manifest.config;
        let config_bytes = self
            .fetch_small_blob(&endpoints, config_desc, &name)
            .await?;
        let config =
            manifest::parse_config(&config_desc.digest, &config_bytes, manifest.layers.len())
                .map_err(man_err)?;
        let chain = snapshot::chain_ids(&config.rootfs.diff_ids);

        let layer_jobs = manifest.layers.iter().enumerate().map(|(i, desc)| {
            self.ensure_layer(
                &endpoints,
                &name,
                desc,
                &config.rootfs.diff_ids[i],
                &chain[..=i],
            )
        });
        futures_util::future::try_join_all(layer_jobs).await?;

        metadata.push((config_desc.digest.clone(), config_bytes));
        let me = self.clone();
        let image_name = name.clone();
        let record = ImageRecord {
            version: RECORD_VERSION,
            id: config_desc.digest.clone(),
            repo_tags: reference.tagged().into_iter().collect(),
            repo_digests: vec![reference.digested(&top.digest)],
            manifests: metadata[..metadata.len() - 1]
                .iter()
                .map(|(d, _)| d.clone())
                .collect(),
            chain_ids: chain,
            size: config_desc.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            config: config.config.unwrap_or_default(),
            platform: Platform {
                architecture: config.architecture,
                os: config.os,
                variant: None,
            },
            pinned: false,
            updated: 0,
        };
        let record = tokio::task::spawn_blocking(move || {
            for (d, data) in &metadata {
                me.content
                    .put(d, data)
                    .map_err(|source| PullError::Content {
                        image: image_name.clone(),
                        source,
                    })?;
            }
            me.commit_record(record).map_err(|source| PullError::Store {
                image: image_name.clone(),
                source,
            })
        })
        .await
        .map_err(|e| PullError::Internal {
            image: name.clone(),
            message: e.to_string(),
        })??;
        tracing::info!(image = %name, id = %record.id, elapsed_ms = started.elapsed().as_millis() as u64, "pulled image");
        Ok(record)
    }

    async fn fetch_small_blob(
        &self,
        endpoints: &Endpoints,
        desc: &Descriptor,
        name: &str,
    ) -> Result<Bytes, PullError> {
        if let Ok(data) = self.content.get(&desc.digest) {
            return Ok(Bytes::from(data));
        }
        if desc.size > manifest::MAX_METADATA_BLOB {
            return Err(PullError::SizeMismatch {
                image: name.into(),
                what: "config",
                digest: desc.digest.clone(),
                expected: manifest::MAX_METADATA_BLOB,
                actual: desc.size,
            });
        }
        let blob = self
            .registry
            .fetch_blob_from(endpoints, &desc.digest)
            .await
            .map_err(|source| PullError::Registry {
                image: name.into(),
                source,
            })?;
        let mut stream = blob.stream;
        let mut data = Vec::with_capacity(desc.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| PullError::Registry {
                image: name.into(),
                source,
            })?;
            if (data.len() + chunk.len()) as u64 > desc.size {
                return Err(PullError::SizeMismatch {
                    image: name.into(),
                    what: "config",
                    digest: desc.digest.clone(),
                    expected: desc.size,
                    actual: (data.len() + chunk.len()) as u64,
                });
            }
            data.extend_from_slice(&chunk);
        }
        let actual = Digest::of(&data);
        if actual != desc.digest {
            return Err(PullError::DigestMismatch {
                image: name.into(),
                what: "config",
                digest: desc.digest.clone(),
                actual,
            });
        }
        Ok(Bytes::from(data))
    }

    /// Makes sure the snapshot for `chain.last()` exists, downloading and unpacking the layer if not.
    /// `chain` holds the chain ids of this layer and all below it.
    async fn ensure_layer(
        &self,
        endpoints: &Endpoints,
        name: &str,
        desc: &Descriptor,
        diff_id: &Digest,
        chain: &[Digest],
    ) -> Result<(), PullError> {
        let chain_id = chain.last().expect("chain has this layer");
        if self.snapshots.contains(chain_id) {
            return Ok(());
        }
        let _layer = self.layer_locks.lock(chain_id).await;
        if self.snapshots.contains(chain_id) {
            return Ok(()); // another pull unpacked it while we waited
        }
        let layer_err = |source| PullError::Unpack {
            image: name.into(),
            digest: desc.digest.clone(),
            source,
        };
        let compression = compression_for(desc).map_err(layer_err)?;
        let _permit = self
            .downloads
            .acquire()
            .await
            .expect("download semaphore never closes");
        let blob = self
            .registry
            .fetch_blob_from(endpoints, &desc.digest)
            .await
            .map_err(|source| PullError::Registry {
                image: name.into(),
                source,
            })?;
        if let Some(len) = blob.size
            && len != desc.size
        {
            return Err(PullError::SizeMismatch {
                image: name.into(),
                what: "layer",
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: len,
            });
        }
        let pending = self
            .snapshots
            .prepare()
            .map_err(|source| PullError::Snapshot {
                image: name.into(),
                source,
            })?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(64);
        let reader = ChannelReader {
            rx,
            current: Bytes::new(),
            received: 0,
            limit: desc.size,
        };
        let expected = desc.digest.clone();
        let unpacking = tokio::task::spawn_blocking(move || {
            unpack_stream(reader, compression, pending, &expected)
        });
        let mut stream = blob.stream;
        while let Some(chunk) = stream.next().await {
            let item = chunk.map_err(|e| io::Error::other(e.to_string()));
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break; // the unpacker stopped reading, or the download broke (it has been told)
            }
        }
        drop(tx);
        let unpacked = unpacking.await.map_err(|e| PullError::Internal {
            image: name.into(),
            message: e.to_string(),
        })?;
        let Unpacked { pending, outcome } = match unpacked {
            Ok(u) => u,
            Err(LayerFailure::Transfer(message)) => {
                return Err(PullError::Transfer {
                    image: name.into(),
                    digest: desc.digest.clone(),
                    message,
                });
            }
            Err(LayerFailure::Digest { actual, len }) => {
                if len != desc.size {
                    return Err(PullError::SizeMismatch {
                        image: name.into(),
                        what: "layer",
                        digest: desc.digest.clone(),
                        expected: desc.size,
                        actual: len,
                    });
                }
                return Err(PullError::DigestMismatch {
                    image: name.into(),
                    what: "layer",
                    digest: desc.digest.clone(),
                    actual,
                });
            }
            Err(LayerFailure::Unpack(e)) => return Err(layer_err(e)),
        };
        if &outcome.diff_id != diff_id {
            return Err(PullError::DiffIdMismatch {
                image: name.into(),
                digest: desc.digest.clone(),
                expected: diff_id.clone(),
                actual: outcome.diff_id,
            });
        }
        self.commit_layer(name, &desc.digest, chain, pending, outcome)
            .await
    }

    /// Completes hardlinks into lower layers (waiting for those to land) and commits the snapshot.
    pub(crate) async fn commit_layer(
        &self,
        name: &str,
        blob: &Digest,
        chain: &[Digest],
        pending: snapshot::PendingSnapshot,
        outcome: unpack::UnpackOutcome,
    ) -> Result<(), PullError> {
        let chain_id = chain.last().expect("chain has this layer").clone();
        let lowers = &chain[..chain.len() - 1];
        if !outcome.lower_hardlinks.is_empty() {
            // Our own pull is unpacking the lower layers concurrently; a failure there cancels us.
            while !lowers.iter().all(|c| self.snapshots.contains(c)) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let snapshots = self.snapshots.clone();
        let lower_dirs: Vec<PathBuf> = lowers.iter().rev().map(|c| snapshots.fs_path(c)).collect();
        let parent = lowers.last().cloned();
        let image = name.to_string();
        let digest = blob.clone();
        tokio::task::spawn_blocking(move || {
            if !outcome.lower_hardlinks.is_empty() {
                unpack::resolve_lower_hardlinks(
                    &pending.fs(),
                    &lower_dirs,
                    &outcome.lower_hardlinks,
                )
                .map_err(|source| PullError::Unpack {
                    image: image.clone(),
                    digest,
                    source,
                })?;
            }
            let meta = snapshot::new_meta(
                chain_id,
                outcome.diff_id,
                parent,
                outcome.size,
                outcome.inodes,
            );
            snapshots
                .commit(pending, &meta)
                .map_err(|source| PullError::Snapshot { image, source })
        })
        .await
        .map_err(|e| PullError::Internal {
            image: name.into(),
            message: e.to_string(),
        })?
    }

    /// Holds garbage collection off while an import commits content.
    pub(crate) async fn gc_guard(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gc_lock.read().await
    }

    pub(crate) async fn layer_lock(&self, chain_id: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        self.layer_locks.lock(chain_id).await
    }
}
