//! Container images built in memory for tests: layers (including malicious ones), configs, OCI and
//! Docker schema2 manifests, indexes; a small registry push client; OCI-layout and `docker save`
//! tarballs for import tests.

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker schema2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Modification time written into every generated tar entry (fixed, so digests are stable).
pub const MTIME: u64 = 1_700_000_000;
/// Creation time written into every generated image config.
pub const CREATED: &str = "2023-11-14T22:13:20Z";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (the usual).
    Gzip,
    /// zstd (OCI only in practice).
    Zstd,
}

impl Compression {
    /// All three, for test matrices.
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    /// Compresses a layer tar.
    pub fn compress(self, tar: &[u8]) -> Result<Vec<u8>> {
        use std::io::Write;
        Ok(match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(tar.len() / 2),
                    flate2::Compression::fast(),
                );
                enc.write_all(tar)?;
                enc.finish()?
            }
            Compression::Zstd => zstd::encode_all(tar, 3)?,
        })
    }

    /// The layer media type for this compression in a manifest of `format`.
    pub fn layer_media_type(self, format: ManifestFormat) -> &'static str {
        match (format, self) {
            (ManifestFormat::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (ManifestFormat::Oci, Compression::Gzip) => {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            }
            (ManifestFormat::Oci, Compression::Zstd) => {
                "application/vnd.oci.image.layer.v1.tar+zstd"
            }
            (ManifestFormat::Docker, Compression::None) => {
                "application/vnd.docker.image.rootfs.diff.tar"
            }
            (ManifestFormat::Docker, Compression::Gzip) => {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            }
            (ManifestFormat::Docker, Compression::Zstd) => {
                "application/vnd.docker.image.rootfs.diff.tar.zstd"
            }
        }
    }
}

/// Which manifest schema an image (or index) is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ManifestFormat {
    /// OCI image manifest / OCI index.
    Oci,
    /// Docker image manifest v2 schema 2 / Docker manifest list.
    Docker,
}

impl ManifestFormat {
    /// Media type of an image manifest in this format.
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => OCI_MANIFEST,
            ManifestFormat::Docker => DOCKER_MANIFEST,
        }
    }

    /// Media type of an index / manifest list in this format.
    pub fn index_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => OCI_INDEX,
            ManifestFormat::Docker => DOCKER_MANIFEST_LIST,
        }
    }

    /// Media type of the image config in this format.
    pub fn config_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => OCI_CONFIG,
            ManifestFormat::Docker => DOCKER_CONFIG,
        }
    }
}

/// What a tar entry is.
#[derive(Clone, Debug)]
pub enum EntryKind {
    /// Regular file with its content.
    File(Vec<u8>),
    /// Directory.
    Dir,
    /// Symbolic link to the target.
    Symlink(String),
    /// Hard link to another entry of the archive (path relative to the archive root).
    Hardlink(String),
}

/// One entry of a layer tar.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Path inside the archive (no leading `/` unless raw).
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (including setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Write `path` (and a link target) byte for byte into the ustar header, unchecked: for
    /// malicious layers (`..`, absolute paths) that the tar crate refuses to write.
    pub raw: bool,
}

impl Entry {
    fn new(path: &str, kind: EntryKind, mode: u32) -> Self {
        Entry {
            path: path.trim_start_matches('/').to_owned(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            raw: false,
        }
    }

    /// A regular file, mode 0644.
    pub fn file(path: &str, content: impl Into<Vec<u8>>) -> Self {
        Self::new(path, EntryKind::File(content.into()), 0o644)
    }

    /// A regular file, mode 0755.
    pub fn executable(path: &str, content: impl Into<Vec<u8>>) -> Self {
        Self::new(path, EntryKind::File(content.into()), 0o755)
    }

    /// A directory, mode 0755.
    pub fn dir(path: &str) -> Self {
        Self::new(path, EntryKind::Dir, 0o755)
    }

    /// A symlink `path -> target` (target kept as is, may be absolute).
    pub fn symlink(path: &str, target: &str) -> Self {
        Self::new(path, EntryKind::Symlink(target.to_owned()), 0o777)
    }

    /// A hard link `path` to the earlier entry `target`.
    pub fn hardlink(path: &str, target: &str) -> Self {
        Self::new(
            path,
            EntryKind::Hardlink(target.trim_start_matches('/').to_owned()),
            0o644,
        )
    }

    /// An AUFS/OCI whiteout deleting `path` from the layers below (`<dir>/.wh.<name>`).
    pub fn whiteout(path: &str) -> Self {
        let path = path.trim_start_matches('/').trim_end_matches('/');
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), path),
        };
        Self::file(&format!("{dir}.wh.{name}"), Vec::new())
    }

    /// An opaque-directory marker: `dir` hides everything the layers below have in it.
    pub fn opaque(dir: &str) -> Self {
        let dir = dir.trim_start_matches('/').trim_end_matches('/');
        Self::file(&format!("{dir}/.wh..wh..opq"), Vec::new())
    }

    /// A regular file whose name goes into the header unchecked (e.g. `../../escape`).
    pub fn raw_file(name: &str, content: impl Into<Vec<u8>>) -> Self {
        Entry {
            path: name.to_owned(),
            raw: true,
            ..Self::file("x", content)
        }
    }

    /// A symlink whose name and target go into the header unchecked.
    pub fn raw_symlink(name: &str, target: &str) -> Self {
        Entry {
            path: name.to_owned(),
            raw: true,
            ..Self::symlink("x", target)
        }
    }

    /// A hard link whose name and target go into the header unchecked (e.g. `../../etc/passwd`).
    pub fn raw_hardlink(name: &str, target: &str) -> Self {
        Entry {
            path: name.to_owned(),
            kind: EntryKind::Hardlink(target.to_owned()),
            raw: true,
            ..Self::file("x", Vec::new())
        }
    }

    /// Sets the permission bits.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Sets owner and group.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// Copies `value` into a fixed header field, refusing values that do not fit.
fn set_raw_field(field: &mut [u8], value: &str, what: &str) -> Result<()> {
    let bytes = value.as_bytes();
    ensure!(
        bytes.len() <= field.len(),
        "raw tar {what} {value:?} is longer than {} bytes",
        field.len()
    );
    field.fill(0);
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// Serializes entries into an uncompressed tar (ustar headers, GNU long names when needed).
pub fn build_tar(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Complete);
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(MTIME);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mode(e.mode);
        let (kind, link, data): (tar::EntryType, Option<&str>, &[u8]) = match &e.kind {
            EntryKind::File(c) => (tar::EntryType::Regular, None, c),
            EntryKind::Dir => (tar::EntryType::Directory, None, &[]),
            EntryKind::Symlink(t) => (tar::EntryType::Symlink, Some(t), &[]),
            EntryKind::Hardlink(t) => (tar::EntryType::Link, Some(t), &[]),
        };
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        let what = || format!("adding tar entry {:?}", e.path);
        if e.raw {
            set_raw_field(&mut h.as_old_mut().name, &e.path, "name").with_context(what)?;
            if let Some(link) = link {
                set_raw_field(&mut h.as_old_mut().linkname, link, "link name")
                    .with_context(what)?;
            }
            h.set_cksum();
            builder.append(&h, data).with_context(what)?;
        } else if let Some(link) = link {
            builder
                .append_link(&mut h, &e.path, link)
                .with_context(what)?;
        } else {
            builder
                .append_data(&mut h, &e.path, data)
                .with_context(what)?;
        }
    }
    builder.into_inner().context("finishing the tar")
}

/// A layer: its uncompressed tar, the blob as pushed, and both digests.
#[derive(Clone)]
pub struct Layer {
    /// The uncompressed tar (what `diff_id` names).
    pub tar: Vec<u8>,
    /// The blob as stored in the registry (compressed per `compression`).
    pub blob: Vec<u8>,
    /// Compression of `blob`.
    pub compression: Compression,
    /// `sha256:` of `blob`.
    pub digest: String,
    /// `sha256:` of `tar` (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("compression", &self.compression)
            .field("digest", &self.digest)
            .field("diff_id", &self.diff_id)
            .field("size", &self.blob.len())
            .finish()
    }
}

impl Layer {
    /// Builds a layer from entries.
    pub fn new(entries: &[Entry], compression: Compression) -> Result<Self> {
        Self::from_tar(build_tar(entries)?, compression)
    }

    /// Wraps an existing uncompressed tar.
    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> Result<Self> {
        let blob = compression.compress(&tar)?;
        Ok(Layer {
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(&tar),
            tar,
            blob,
            compression,
        })
    }

    /// The same content with another compression.
    pub fn recompressed(&self, compression: Compression) -> Result<Self> {
        Self::from_tar(self.tar.clone(), compression)
    }

    /// Size of the blob in bytes (what the manifest says).
    pub fn size(&self) -> u64 {
        self.blob.len() as u64
    }

    /// Media type of this layer in a manifest of `format`.
    pub fn media_type(&self, format: ManifestFormat) -> &'static str {
        self.compression.layer_media_type(format)
    }
}

/// An OS/architecture pair as written in configs and indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `v8` for arm64.
    pub variant: Option<String>,
}

impl Platform {
    /// linux/amd64.
    pub fn linux_amd64() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    /// linux/arm64 (variant v8).
    pub fn linux_arm64() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        }
    }

    fn to_json(&self) -> Value {
        let mut p = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The runtime part of an image config (`config` in the JSON) plus its platform.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    /// Platform written as `os`/`architecture`/`variant`.
    pub platform: Platform,
    /// `Env`.
    pub env: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Entrypoint` (omitted when empty).
    pub entrypoint: Vec<String>,
    /// `User` (omitted when empty).
    pub user: String,
    /// `WorkingDir` (omitted when empty).
    pub working_dir: String,
    /// `Labels`.
    pub labels: Vec<(String, String)>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            platform: Platform::linux_amd64(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: Vec::new(),
            entrypoint: Vec::new(),
            user: String::new(),
            working_dir: String::new(),
            labels: Vec::new(),
        }
    }
}

impl ImageConfig {
    /// Renders the config JSON for the given layers.
    pub fn to_json(&self, layers: &[Layer]) -> Vec<u8> {
        let mut config = Map::new();
        config.insert("Env".into(), json!(self.env));
        if !self.cmd.is_empty() {
            config.insert("Cmd".into(), json!(self.cmd));
        }
        if !self.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.user.is_empty() {
            config.insert("User".into(), json!(self.user));
        }
        if !self.working_dir.is_empty() {
            config.insert("WorkingDir".into(), json!(self.working_dir));
        }
        if !self.labels.is_empty() {
            let labels: Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            config.insert("Labels".into(), Value::Object(labels));
        }
        let mut doc = json!({
            "created": CREATED,
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": config,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": layers.iter().enumerate().map(|(i, _)| json!({
                "created": CREATED,
                "created_by": format!("keelson integration layer {i}"),
            })).collect::<Vec<_>>(),
        });
        if let Some(v) = &self.platform.variant {
            doc["variant"] = json!(v);
        }
        serde_json::to_vec(&doc).expect("serializing json")
    }
}

/// A complete single-platform image: layers, config and manifest, all in memory.
#[derive(Clone, Debug)]
pub struct Image {
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// Config JSON bytes.
    pub config: Vec<u8>,
    /// `sha256:` of `config` (= the image id).
    pub config_digest: String,
    /// Manifest JSON bytes.
    pub manifest: Vec<u8>,
    /// `sha256:` of `manifest`.
    pub manifest_digest: String,
    /// Manifest schema.
    pub format: ManifestFormat,
    /// Platform from the config.
    pub platform: Platform,
}

impl Image {
    /// Builds config and manifest for `layers`.
    pub fn new(layers: Vec<Layer>, config: &ImageConfig, format: ManifestFormat) -> Result<Self> {
        let config_bytes = config.to_json(&layers);
        let config_digest = sha256_digest(&config_bytes);
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": format.manifest_media_type(),
            "config": {
                "mediaType": format.config_media_type(),
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type(format),
                "digest": l.digest,
                "size": l.size(),
            })).collect::<Vec<_>>(),
        });
        if format == ManifestFormat::Oci {
            manifest["annotations"] = json!({ "org.opencontainers.image.created": CREATED });
        }
        let manifest = serde_json::to_vec(&manifest)?;
        Ok(Image {
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config: config_bytes,
            config_digest,
            layers,
            format,
            platform: config.platform.clone(),
        })
    }

    /// The CRI image id: `sha256:<config digest>`.
    pub fn id(&self) -> String {
        self.config_digest.clone()
    }

    /// Media type of the manifest.
    pub fn manifest_media_type(&self) -> &'static str {
        self.format.manifest_media_type()
    }

    /// Sum of the manifest's layer sizes plus the config size.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(Layer::size).sum::<u64>() + self.config.len() as u64
    }

    /// Sum of the uncompressed layer tars.
    pub fn unpacked_tar_size(&self) -> u64 {
        self.layers.iter().map(|l| l.tar.len() as u64).sum()
    }
}

/// A multi-platform index (OCI) or manifest list (Docker) over some images.
#[derive(Clone, Debug)]
pub struct Index {
    /// The images, in index order.
    pub images: Vec<Image>,
    /// Index JSON bytes.
    pub json: Vec<u8>,
    /// `sha256:` of `json`.
    pub digest: String,
    /// Schema of the index itself.
    pub format: ManifestFormat,
}

impl Index {
    /// Builds an index; each entry's platform comes from its image's config.
    pub fn new(images: Vec<Image>, format: ManifestFormat) -> Result<Self> {
        ensure!(!images.is_empty(), "an index needs at least one image");
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": format.index_media_type(),
            "manifests": images.iter().map(|i| json!({
                "mediaType": i.manifest_media_type(),
                "digest": i.manifest_digest,
                "size": i.manifest.len(),
                "platform": i.platform.to_json(),
            })).collect::<Vec<_>>(),
        });
        let json = serde_json::to_vec(&doc)?;
        Ok(Index {
            digest: sha256_digest(&json),
            json,
            images,
            format,
        })
    }

    /// Media type of the index.
    pub fn media_type(&self) -> &'static str {
        self.format.index_media_type()
    }

    /// The image for `platform`, if the index has one.
    pub fn image_for(&self, platform: &Platform) -> Option<&Image> {
        self.images.iter().find(|i| {
            i.platform.os == platform.os && i.platform.architecture == platform.architecture
        })
    }
}

/// Pushes blobs and manifests to a registry over plain HTTP (loopback only).
#[derive(Clone)]
pub struct PushClient {
    http: reqwest::Client,
    base: String,
    auth: Option<(String, String)>,
}

impl PushClient {
    /// A client for `host` (`127.0.0.1:PORT`), talking `http://`.
    pub fn new(host: &str) -> Result<Self> {
        crate::init_crypto();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .no_proxy()
            .build()
            .context("building the http client")?;
        Ok(PushClient {
            http,
            base: format!("http://{host}"),
            auth: None,
        })
    }

    /// Sends HTTP basic auth with every request.
    pub fn with_basic_auth(mut self, username: &str, password: &str) -> Self {
        self.auth = Some((username.to_owned(), password.to_owned()));
        self
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.auth {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    /// Whether the repository already has the blob.
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let resp = self.request(reqwest::Method::HEAD, &url).send().await?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            code => bail!("HEAD {url}: status {code}"),
        }
    }

    /// Uploads a blob (POST for an upload session, then one monolithic PUT with the digest).
    pub async fn push_blob(&self, repo: &str, digest: &str, data: &[u8]) -> Result<()> {
        if self.blob_exists(repo, digest).await? {
            return Ok(());
        }
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let resp = self.request(reqwest::Method::POST, &url).send().await?;
        let status = resp.status();
        if status.as_u16() != 202 {
            bail!(
                "POST {url}: status {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .context("upload session without a Location header")?
            .to_str()?
            .to_owned();
        let mut upload = if location.starts_with("http://") || location.starts_with("https://") {
            reqwest::Url::parse(&location)?
        } else {
            reqwest::Url::parse(&self.base)?.join(&location)?
        };
        upload.query_pairs_mut().append_pair("digest", digest);
        let resp = self
            .request(reqwest::Method::PUT, upload.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, data.len())
            .body(data.to_vec())
            .send()
            .await?;
        let status = resp.status();
        if status.as_u16() != 201 {
            bail!(
                "PUT blob {digest} to {repo}: status {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Uploads a manifest (or index) under `reference` (a tag or its digest); returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String> {
        let digest = sha256_digest(body);
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let resp = self
            .request(reqwest::Method::PUT, &url)
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .body(body.to_vec())
            .send()
            .await?;
        let status = resp.status();
        if status.as_u16() != 201 {
            bail!(
                "PUT {url}: status {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        if let Some(echoed) = resp.headers().get("docker-content-digest") {
            ensure!(
                echoed.to_str()? == digest,
                "registry stored manifest {reference} as {echoed:?}, expected {digest}"
            );
        }
        Ok(digest)
    }

    /// Pushes an image's layers and config, then its manifest under `tag`. Returns the manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str, image: &Image) -> Result<String> {
        self.push_image_blobs(repo, image).await?;
        self.push_manifest(repo, tag, image.manifest_media_type(), &image.manifest)
            .await
    }

    /// Pushes an image with its manifest stored only by digest (no tag).
    pub async fn push_image_untagged(&self, repo: &str, image: &Image) -> Result<String> {
        self.push_image_blobs(repo, image).await?;
        self.push_manifest(
            repo,
            &image.manifest_digest,
            image.manifest_media_type(),
            &image.manifest,
        )
        .await
    }

    async fn push_image_blobs(&self, repo: &str, image: &Image) -> Result<()> {
        let mut seen = BTreeSet::new();
        for layer in &image.layers {
            if seen.insert(layer.digest.clone()) {
                self.push_blob(repo, &layer.digest, &layer.blob).await?;
            }
        }
        self.push_blob(repo, &image.config_digest, &image.config)
            .await
    }

    /// Pushes every image of the index by digest, then the index under `tag`. Returns its digest.
    pub async fn push_index(&self, repo: &str, tag: &str, index: &Index) -> Result<String> {
        for image in &index.images {
            self.push_image_untagged(repo, image).await?;
        }
        self.push_manifest(repo, tag, index.media_type(), &index.json)
            .await
    }

    /// Fetches a manifest: (Content-Type, body).
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<(String, Vec<u8>)> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let accept = [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let resp = self
            .request(reqwest::Method::GET, &url)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await?;
        let status = resp.status();
        ensure!(status.as_u16() == 200, "GET {url}: status {status}");
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok((content_type, resp.bytes().await?.to_vec()))
    }

    /// Fetches a blob's bytes.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let resp = self.request(reqwest::Method::GET, &url).send().await?;
        let status = resp.status();
        ensure!(status.as_u16() == 200, "GET {url}: status {status}");
        Ok(resp.bytes().await?.to_vec())
    }
}

/// Appends one in-memory file to an outer (non-layer) tarball.
fn append_file(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_mtime(MTIME);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    builder
        .append_data(&mut h, path, data)
        .with_context(|| format!("adding {path}"))
}

fn append_dir(builder: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_mtime(MTIME);
    h.set_mode(0o755);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    builder
        .append_data(&mut h, path, std::io::empty())
        .with_context(|| format!("adding {path}"))
}

/// The tag of a reference like `host:port/repo:tag` (`latest` when there is none).
pub fn tag_of(reference: &str) -> &str {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match last.rsplit_once(':') {
        Some((_, tag)) if !last.contains('@') => tag,
        _ => "latest",
    }
}

/// An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) as a tarball.
///
/// The index entry carries the full name in `io.containerd.image.name` (what containerd and
/// Docker read on import) and the tag in `org.opencontainers.image.ref.name` (the OCI spec's use).
pub fn oci_layout_tar(image: &Image, name: &str) -> Result<Vec<u8>> {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": image.manifest_media_type(),
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag_of(name),
            },
            "platform": image.platform.to_json(),
        }],
    });
    let mut b = tar::Builder::new(Vec::new());
    append_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    append_file(&mut b, "index.json", &serde_json::to_vec(&index)?)?;
    append_dir(&mut b, "blobs")?;
    append_dir(&mut b, "blobs/sha256")?;
    let mut seen = BTreeSet::new();
    let mut blob = |b: &mut tar::Builder<Vec<u8>>, digest: &str, data: &[u8]| -> Result<()> {
        if seen.insert(digest.to_owned()) {
            append_file(b, &format!("blobs/sha256/{}", digest_hex(digest)), data)?;
        }
        Ok(())
    };
    blob(&mut b, &image.manifest_digest, &image.manifest)?;
    blob(&mut b, &image.config_digest, &image.config)?;
    for layer in &image.layers {
        blob(&mut b, &layer.digest, &layer.blob)?;
    }
    b.into_inner().context("finishing the oci layout tar")
}

/// A classic `docker save` tarball: `manifest.json` (Config, RepoTags, Layers), the config as
/// `<hex>.json`, each layer uncompressed as `<diff id hex>/layer.tar`, and `repositories`.
pub fn docker_save_tar(image: &Image, repo_tag: &str) -> Result<Vec<u8>> {
    let config_name = format!("{}.json", digest_hex(&image.config_digest));
    let layer_names: Vec<String> = image
        .layers
        .iter()
        .map(|l| format!("{}/layer.tar", digest_hex(&l.diff_id)))
        .collect();
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": layer_names,
    }]);
    let (repo, tag) = match repo_tag.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (repo_tag, "latest"),
    };
    let top = image
        .layers
        .last()
        .map(|l| digest_hex(&l.diff_id).to_owned())
        .unwrap_or_default();
    let repositories = json!({ repo: { tag: top } });
    let mut b = tar::Builder::new(Vec::new());
    let mut seen = BTreeSet::new();
    for layer in &image.layers {
        let hex = digest_hex(&layer.diff_id);
        if seen.insert(hex.to_owned()) {
            append_dir(&mut b, hex)?;
            append_file(&mut b, &format!("{hex}/VERSION"), b"1.0")?;
            append_file(&mut b, &format!("{hex}/layer.tar"), &layer.tar)?;
        }
    }
    append_file(&mut b, &config_name, &image.config)?;
    append_file(&mut b, "manifest.json", &serde_json::to_vec(&manifest)?)?;
    append_file(&mut b, "repositories", &serde_json::to_vec(&repositories)?)?;
    b.into_inner().context("finishing the docker save tar")
}

/// Deterministic pseudo-random bytes (xorshift64*), for incompressible test data.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, Option<String>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let link = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned());
                (name, e.header().entry_type(), link)
            })
            .collect()
    }

    #[test]
    fn raw_entries_keep_their_names() {
        let tar = build_tar(&[
            Entry::raw_file("../../escape", b"x".to_vec()),
            Entry::raw_symlink("evil", "/tmp/somewhere"),
            Entry::raw_hardlink("link", "../../etc/passwd"),
        ])
        .unwrap();
        let got = names(&tar);
        assert_eq!(got[0].0, "../../escape");
        assert_eq!(got[0].1, tar::EntryType::Regular);
        assert_eq!(got[1].2.as_deref(), Some("/tmp/somewhere"));
        assert_eq!(got[2].1, tar::EntryType::Link);
        assert_eq!(got[2].2.as_deref(), Some("../../etc/passwd"));
    }

    #[test]
    fn whiteouts_and_opaque_markers() {
        assert_eq!(Entry::whiteout("/data/a").path, "data/.wh.a");
        assert_eq!(Entry::whiteout("top").path, ".wh.top");
        assert_eq!(Entry::opaque("/opq/").path, "opq/.wh..wh..opq");
    }

    #[test]
    fn layer_digests_match_content() {
        let entries = [Entry::dir("d"), Entry::file("d/f", b"hello".to_vec())];
        for c in Compression::ALL {
            let l = Layer::new(&entries, c).unwrap();
            assert_eq!(l.digest, sha256_digest(&l.blob));
            assert_eq!(l.diff_id, sha256_digest(&l.tar));
            assert_eq!(c == Compression::None, l.digest == l.diff_id);
        }
    }

    #[test]
    fn manifest_and_index_reference_their_parts() {
        let layer = Layer::new(&[Entry::file("f", b"1".to_vec())], Compression::Gzip).unwrap();
        let amd = Image::new(
            vec![layer.clone()],
            &ImageConfig::default(),
            ManifestFormat::Docker,
        )
        .unwrap();
        let m: Value = serde_json::from_slice(&amd.manifest).unwrap();
        assert_eq!(m["config"]["digest"], json!(amd.config_digest));
        assert_eq!(m["layers"][0]["size"], json!(layer.size()));
        assert_eq!(
            m["layers"][0]["mediaType"],
            json!("application/vnd.docker.image.rootfs.diff.tar.gzip")
        );
        let c: Value = serde_json::from_slice(&amd.config).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"][0], json!(layer.diff_id));
        let arm_config = ImageConfig {
            platform: Platform::linux_arm64(),
            ..ImageConfig::default()
        };
        let arm = Image::new(vec![layer], &arm_config, ManifestFormat::Docker).unwrap();
        assert_ne!(arm.id(), amd.id());
        let index = Index::new(vec![arm, amd.clone()], ManifestFormat::Docker).unwrap();
        let i: Value = serde_json::from_slice(&index.json).unwrap();
        assert_eq!(i["manifests"][1]["digest"], json!(amd.manifest_digest));
        assert_eq!(
            i["manifests"][0]["platform"]["architecture"],
            json!("arm64")
        );
        assert_eq!(
            index.image_for(&Platform::linux_amd64()).unwrap().id(),
            amd.id()
        );
    }

    #[test]
    fn import_tarballs_have_the_expected_files() {
        let layer = Layer::new(&[Entry::file("f", b"1".to_vec())], Compression::Gzip).unwrap();
        let image = Image::new(vec![layer], &ImageConfig::default(), ManifestFormat::Oci).unwrap();
        let oci = names(&oci_layout_tar(&image, "example.test/a/b:1.0").unwrap());
        let oci: Vec<&str> = oci.iter().map(|n| n.0.as_str()).collect();
        assert!(oci.contains(&"index.json") && oci.contains(&"oci-layout"));
        let blob = format!("blobs/sha256/{}", digest_hex(&image.layers[0].digest));
        assert!(oci.contains(&blob.as_str()), "{oci:?}");
        let docker = names(&docker_save_tar(&image, "example.test/a/b:1.0").unwrap());
        let docker: Vec<&str> = docker.iter().map(|n| n.0.as_str()).collect();
        assert!(docker.contains(&"manifest.json"));
        let layer_tar = format!("{}/layer.tar", digest_hex(&image.layers[0].diff_id));
        assert!(docker.contains(&layer_tar.as_str()), "{docker:?}");
        assert_eq!(tag_of("127.0.0.1:5000/a/b:1.0"), "1.0");
        assert_eq!(tag_of("127.0.0.1:5000/a/b"), "latest");
    }
}
