//! `images import`: loads OCI-layout and `docker save` tarballs into the store, for air-gapped nodes.
//!
//! The tarball is indexed once and its members are read in place (no extraction): every blob is
//! verified against its digest and every layer against the config's diff ids before anything is
//! committed, exactly as a pull is.

use crate::image::digest::{Digest, HashingReader};
use crate::image::manager::ImageManager;
use crate::image::manifest::{self, ContainerConfig, Parsed, Platform};
use crate::image::reference::Reference;
use crate::image::snapshot;
use crate::image::store::{ImageRecord, RECORD_VERSION};
use crate::image::unpack::{self, Compression};
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Why an import failed; names the tarball and the member.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is neither an OCI layout (index.json) nor a docker save archive (manifest.json)"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path}: member {member:?} is missing")]
    Missing { path: PathBuf, member: String },
    #[error("{path}: {member}: {message}")]
    Invalid {
        path: PathBuf,
        member: String,
        message: String,
    },
    #[error("{path}: {member} has digest {actual}, expected {expected}")]
    DigestMismatch {
        path: PathBuf,
        member: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{path}: {source}")]
    Manifest {
        path: PathBuf,
        source: manifest::ManifestError,
    },
    #[error("{path}: layer {member}: {source}")]
    Unpack {
        path: PathBuf,
        member: String,
        source: unpack::UnpackError,
    },
    #[error("{path}: {message}")]
    Store { path: PathBuf, message: String },
}

/// Where a member's bytes sit in the tarball.
#[derive(Debug, Clone, Copy)]
struct Member {
    offset: u64,
    len: u64,
}

/// The regular-file members of a tarball by normalised path (symlinks resolved to their targets).
struct TarIndex {
    path: PathBuf,
    members: HashMap<String, Member>,
}

fn normalise(p: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

impl TarIndex {
    fn build(path: &Path) -> Result<Self, ImportError> {
        let io_err = |source| ImportError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        for entry in archive.entries().map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let entry_path = entry.path().map_err(io_err)?.into_owned();
            let Some(name) = normalise(&entry_path) else {
                continue;
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    members.insert(
                        name,
                        Member {
                            offset: entry.raw_file_position(),
                            len: entry.size(),
                        },
                    );
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Ok(Some(target)) = entry.link_name() {
                        let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                            Path::new(&name)
                                .parent()
                                .unwrap_or(Path::new(""))
                                .join(target)
                        } else {
                            target.into_owned()
                        };
                        if let Some(t) = normalise(&base) {
                            links.push((name, t));
                        }
                    }
                }
                _ => {}
            }
        }
        // Old `docker save` archives share layers through symlinks; a few hops at most.
        for _ in 0..8 {
            for (name, target) in &links {
                if let Some(m) = members.get(target).copied() {
                    members.entry(name.clone()).or_insert(m);
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            members,
        })
    }

    fn reader(&self, member: &str) -> Result<impl Read + use<>, ImportError> {
        let m = *self
            .members
            .get(member)
            .ok_or_else(|| ImportError::Missing {
                path: self.path.clone(),
                member: member.into(),
            })?;
        let io_err = |source| ImportError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(io_err)?;
        f.seek(SeekFrom::Start(m.offset)).map_err(io_err)?;
        Ok(io::BufReader::with_capacity(256 << 10, f.take(m.len)))
    }

    fn read_small(&self, member: &str) -> Result<Vec<u8>, ImportError> {
        let len = self.members.get(member).map_or(0, |m| m.len);
        if len > manifest::MAX_METADATA_BLOB {
            return Err(ImportError::Invalid {
                path: self.path.clone(),
                member: member.into(),
                message: format!("{len} bytes is too large for metadata"),
            });
        }
        let mut data = Vec::with_capacity(len as usize);
        self.reader(member)?
            .read_to_end(&mut data)
            .map_err(|source| ImportError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(data)
    }

    fn has(&self, member: &str) -> bool {
        self.members.contains_key(member)
    }

    fn blob_member(d: &Digest) -> String {
        format!("blobs/sha256/{}", d.hex())
    }

    /// A blob of an OCI layout, verified.
    fn blob(&self, d: &Digest) -> Result<Vec<u8>, ImportError> {
        let member = Self::blob_member(d);
        let data = self.read_small(&member)?;
        let actual = Digest::of(&data);
        if &actual != d {
            return Err(ImportError::DigestMismatch {
                path: self.path.clone(),
                member,
                expected: d.clone(),
                actual,
            });
        }
        Ok(data)
    }
}

/// One layer to import: where it is, and what it must hash to.
struct PlannedLayer {
    member: String,
    /// Digest of the member as stored (OCI layouts name it); docker save archives don't.
    blob_digest: Option<Digest>,
    compression: Option<Compression>,
    size: u64,
}

struct PlannedImage {
    tags: Vec<String>,
    digests: Vec<String>,
    metadata: Vec<(Digest, Vec<u8>)>,
    config_digest: Digest,
    config_bytes: Vec<u8>,
    config: manifest::ImageConfigFile,
    layers: Vec<PlannedLayer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Deserialize)]
struct LayoutIndex {
    manifests: Vec<LayoutEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutEntry {
    #[serde(default)]
    media_type: String,
    digest: Digest,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

fn invalid(path: &Path, member: &str, message: impl ToString) -> ImportError {
    ImportError::Invalid {
        path: path.to_path_buf(),
        member: member.to_string(),
        message: message.to_string(),
    }
}

fn plan(index: &TarIndex, platform: &Platform) -> Result<Vec<PlannedImage>, ImportError> {
    let path = &index.path;
    if index.has("manifest.json") {
        let entries: Vec<DockerSaveEntry> =
            serde_json::from_slice(&index.read_small("manifest.json")?)
                .map_err(|e| invalid(path, "manifest.json", e))?;
        let mut out = Vec::new();
        for e in entries {
            let config_bytes = index.read_small(&e.config)?;
            let config_digest = Digest::of(&config_bytes);
            let config = manifest::parse_config(&config_digest, &config_bytes, e.layers.len())
                .map_err(|source| ImportError::Manifest {
                    path: path.clone(),
                    source,
                })?;
            let mut tags = Vec::new();
            for t in e.repo_tags.unwrap_or_default() {
                let r = Reference::parse(&t).map_err(|err| invalid(path, "manifest.json", err))?;
                tags.extend(r.tagged());
            }
            let layers = e
                .layers
                .iter()
                .map(|m| PlannedLayer {
                    member: m.clone(),
                    blob_digest: None,
                    compression: None,
                    size: index.members.get(m).map_or(0, |x| x.len),
                })
                .collect();
            out.push(PlannedImage {
                tags,
                digests: Vec::new(),
                metadata: Vec::new(),
                config_digest,
                config_bytes,
                config,
                layers,
            });
        }
        return Ok(out);
    }
    if !index.has("index.json") {
        return Err(ImportError::UnknownFormat { path: path.clone() });
    }
    let layout: LayoutIndex = serde_json::from_slice(&index.read_small("index.json")?)
        .map_err(|e| invalid(path, "index.json", e))?;
    let mut out = Vec::new();
    for entry in layout.manifests {
        let top = index.blob(&entry.digest)?;
        let mut metadata = vec![(entry.digest.clone(), top.clone())];
        let parsed =
            manifest::parse_manifest(&entry.media_type, &entry.digest, &top).map_err(|source| {
                ImportError::Manifest {
                    path: path.clone(),
                    source,
                }
            })?;
        let image_manifest = match parsed {
            Parsed::Image(m) => m,
            Parsed::Index(idx) => {
                let d = idx
                    .select(platform, &entry.digest)
                    .map_err(|source| ImportError::Manifest {
                        path: path.clone(),
                        source,
                    })?
                    .digest
                    .clone();
                let bytes = index.blob(&d)?;
                metadata.push((d.clone(), bytes.clone()));
                match manifest::parse_manifest("", &d, &bytes).map_err(|source| {
                    ImportError::Manifest {
                        path: path.clone(),
                        source,
                    }
                })? {
                    Parsed::Image(m) => m,
                    Parsed::Index(_) => {
                        return Err(invalid(path, &TarIndex::blob_member(&d), "nested index"));
                    }
                }
            }
        };
        let config_digest = image_manifest.config.digest.clone();
        let config_bytes = index.blob(&config_digest)?;
        let config =
            manifest::parse_config(&config_digest, &config_bytes, image_manifest.layers.len())
                .map_err(|source| ImportError::Manifest {
                    path: path.clone(),
                    source,
                })?;
        // A full reference names the image; a bare tag (as skopeo writes) leaves it unnamed.
        let name = entry
            .annotations
            .get(CONTAINERD_NAME)
            .or_else(|| entry.annotations.get(REF_NAME));
        let (mut tags, mut digests) = (Vec::new(), Vec::new());
        if let Some(r) = name
            .filter(|n| n.contains('/') || n.contains(':'))
            .and_then(|n| Reference::parse(n).ok())
        {
            tags.extend(r.tagged());
            digests.push(r.digested(&entry.digest));
        }
        let mut layers = Vec::new();
        for l in &image_manifest.layers {
            layers.push(PlannedLayer {
                member: TarIndex::blob_member(&l.digest),
                blob_digest: Some(l.digest.clone()),
                compression: Some(Compression::from_media_type(&l.media_type).map_err(
                    |source| ImportError::Unpack {
                        path: path.clone(),
                        member: TarIndex::blob_member(&l.digest),
                        source,
                    },
                )?),
                size: l.size,
            });
        }
        out.push(PlannedImage {
            tags,
            digests,
            metadata,
            config_digest,
            config_bytes,
            config,
            layers,
        });
    }
    Ok(out)
}

impl ImageManager {
    /// Imports every image in the tarball at `path`; returns their records.
    pub async fn import(self: &Arc<Self>, path: &Path) -> Result<Vec<ImageRecord>, ImportError> {
        let path = path.to_path_buf();
        let store_err = |message: String| ImportError::Store {
            path: path.clone(),
            message,
        };
        let platform = Platform::host();
        let p = path.clone();
        let (index, plans) = tokio::task::spawn_blocking(move || {
            let index = Arc::new(TarIndex::build(&p)?);
            let plans = plan(&index, &platform)?;
            Ok::<_, ImportError>((index, plans))
        })
        .await
        .map_err(|e| store_err(e.to_string()))??;

        let _shared = self.gc_guard().await;
        let mut records = Vec::new();
        for image in plans {
            let chain = snapshot::chain_ids(&image.config.rootfs.diff_ids);
            for (i, layer) in image.layers.iter().enumerate() {
                let chain_id = &chain[i];
                let _lock = self.layer_lock(chain_id).await;
                if self.snapshots().contains(chain_id) {
                    continue;
                }
                let pending = self
                    .snapshots()
                    .prepare()
                    .map_err(|e| store_err(e.to_string()))?;
                let idx = index.clone();
                let member = layer.member.clone();
                let blob_digest = layer.blob_digest.clone();
                let compression = layer.compression;
                let ipath = path.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let mut reader = idx.reader(&member)?;
                    let compression = match compression {
                        Some(c) => c,
                        None => {
                            let mut head = [0u8; 4];
                            let n = idx.reader(&member)?.read(&mut head).unwrap_or(0);
                            Compression::sniff(&head[..n])
                        }
                    };
                    let mut hashing = HashingReader::new(&mut reader);
                    let result = unpack::unpack_layer(&mut hashing, compression, &pending.fs());
                    let (actual, _) = hashing.finish().map_err(|source| ImportError::Io {
                        path: ipath.clone(),
                        source,
                    })?;
                    if let Some(expected) = blob_digest
                        && actual != expected
                    {
                        return Err(ImportError::DigestMismatch {
                            path: ipath,
                            member,
                            expected,
                            actual,
                        });
                    }
                    let outcome = result.map_err(|source| ImportError::Unpack {
                        path: ipath.clone(),
                        member: member.clone(),
                        source,
                    })?;
                    Ok((pending, outcome))
                })
                .await
                .map_err(|e| store_err(e.to_string()))??;
                let (pending, outcome) = outcome;
                if outcome.diff_id != image.config.rootfs.diff_ids[i] {
                    return Err(ImportError::DigestMismatch {
                        path: path.clone(),
                        member: format!("{} (uncompressed)", layer.member),
                        expected: image.config.rootfs.diff_ids[i].clone(),
                        actual: outcome.diff_id,
                    });
                }
                let blob = layer
                    .blob_digest
                    .clone()
                    .unwrap_or_else(|| outcome.diff_id.clone());
                self.commit_layer(
                    &path.display().to_string(),
                    &blob,
                    &chain[..=i],
                    pending,
                    outcome,
                )
                .await
                .map_err(|e| store_err(e.to_string()))?;
            }
            let size =
                image.config_bytes.len() as u64 + image.layers.iter().map(|l| l.size).sum::<u64>();
            let record = ImageRecord {
                version: RECORD_VERSION,
                id: image.config_digest.clone(),
                repo_tags: image.tags,
                repo_digests: image.digests,
                manifests: image.metadata.iter().map(|(d, _)| d.clone()).collect(),
                chain_ids: chain,
                size,
                config: image
                    .config
                    .config
                    .clone()
                    .unwrap_or_else(ContainerConfig::default),
                platform: Platform {
                    architecture: image.config.architecture.clone(),
                    os: image.config.os.clone(),
                    variant: None,
                },
                pinned: false,
                updated: 0,
            };
            let me = self.clone();
            let mut metadata = image.metadata;
            metadata.push((image.config_digest, image.config_bytes));
            let record = tokio::task::spawn_blocking(move || {
                for (d, data) in &metadata {
                    me.content().put(d, data).map_err(|e| e.to_string())?;
                }
                me.commit_record(record).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| store_err(e.to_string()))?
            .map_err(store_err)?;
            tracing::info!(path = %path.display(), id = %record.id, names = ?record.repo_tags, "imported image");
            records.push(record);
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_are_normalised() {
        assert_eq!(
            normalise(Path::new("./blobs/sha256/ab")).unwrap(),
            "blobs/sha256/ab"
        );
        assert_eq!(
            normalise(Path::new("a/../b/layer.tar")).unwrap(),
            "b/layer.tar"
        );
        assert!(normalise(Path::new("../escape")).is_none());
    }

    #[test]
    fn symlinked_docker_save_layers_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("save.tar");
        let mut b = tar::Builder::new(File::create(&tarball).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "aaa/layer.tar", &b"abc"[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "bbb/layer.tar", "../aaa/layer.tar")
            .unwrap();
        b.finish().unwrap();
        drop(b);
        let idx = TarIndex::build(&tarball).unwrap();
        let mut s = String::new();
        idx.reader("bbb/layer.tar")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "abc");
        assert!(matches!(
            idx.reader("ccc/layer.tar"),
            Err(ImportError::Missing { .. })
        ));
    }
}
