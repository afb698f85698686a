//! End-to-end tests of the CRI ImageService of `keelson-runtime`, through its unix socket.
//!
//! Each test starts its own registry (Debian's docker-registry on an ephemeral loopback port) and
//! its own daemon (temporary socket/root/state), so tests run in parallel without sharing state.
//! The `support_*` tests check the test support itself (registry, push client, busybox image)
//! and need no daemon.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine as _;
use keelson_cri::ImageServiceClient;
use keelson_cri::v1::{
    AuthConfig, Image as CriImage, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest,
    ImageStatusResponse, ListImagesRequest, PullImageRequest, RemoveImageRequest,
};
use keelson_integration::daemon::{DaemonOptions, RuntimeDaemon};
use keelson_integration::oci::{
    self, Compression, Entry, ImageConfig, Index, Layer, ManifestFormat, Platform, PushClient,
};
use keelson_integration::registry::Registry;
use keelson_integration::{busybox, unique_name};
use tonic::transport::Channel;

type Client = ImageServiceClient<Channel>;

const CALL_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// helpers

/// A registry, a push client for it, a daemon, and a CRI image client.
struct Env {
    registry: Registry,
    push: PushClient,
    daemon: RuntimeDaemon,
    cri: Client,
}

impl Env {
    async fn new() -> Result<Self> {
        Self::with_registry(Registry::start()?).await
    }

    async fn with_registry(registry: Registry) -> Result<Self> {
        let push = registry.push_client()?;
        let daemon = RuntimeDaemon::start(DaemonOptions::default()).await?;
        let cri = daemon.image_client().await?;
        Ok(Env {
            registry,
            push,
            daemon,
            cri,
        })
    }

    /// Pushes `image` as `repo:tag`; returns the full tag reference.
    async fn push(&self, repo: &str, tag: &str, image: &oci::Image) -> Result<String> {
        self.push.push_image(repo, tag, image).await?;
        Ok(self.registry.reference(repo, tag))
    }

    /// Reconnects after a daemon restart.
    async fn reconnect(&mut self) -> Result<()> {
        self.cri = self.daemon.image_client().await?;
        Ok(())
    }
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

async fn with_timeout<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {CALL_TIMEOUT:?}"))
}

/// PullImage; Ok(image_ref) or the gRPC status.
async fn pull(
    cri: &Client,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    let mut c = cri.clone();
    let req = PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    };
    with_timeout(&format!("pull {image}"), c.pull_image(req))
        .await
        .map(|r| r.into_inner().image_ref)
}

// The helpers below panic on errors (rather than return them) so that a failing test prints
// the daemon's log tail: RuntimeDaemon's Drop does that only while the thread is panicking.

/// PullImage that must succeed; returns the image_ref.
async fn pull_ok(cri: &Client, image: &str) -> String {
    pull(cri, image, None)
        .await
        .unwrap_or_else(|s| panic!("pull {image} failed: {:?}: {}", s.code(), s.message()))
}

/// PullImage that must fail; returns the lowercased error message.
async fn pull_err(cri: &Client, image: &str, auth: Option<AuthConfig>) -> String {
    match pull(cri, image, auth).await {
        Ok(r) => panic!("pull {image} succeeded (image_ref {r}) but must fail"),
        Err(s) => {
            assert_ne!(s.code(), tonic::Code::Ok);
            s.message().to_lowercase()
        }
    }
}

async fn status_full(cri: &Client, image: &str, verbose: bool) -> ImageStatusResponse {
    let mut c = cri.clone();
    let req = ImageStatusRequest {
        image: spec(image),
        verbose,
    };
    with_timeout(&format!("image status {image}"), c.image_status(req))
        .await
        .unwrap_or_else(|s| panic!("ImageStatus {image}: {:?}: {}", s.code(), s.message()))
        .into_inner()
}

/// ImageStatus; None is the CRI's "not found".
async fn status(cri: &Client, image: &str) -> Option<CriImage> {
    status_full(cri, image, false).await.image
}

/// ImageStatus that must find the image.
async fn status_some(cri: &Client, image: &str) -> CriImage {
    status(cri, image)
        .await
        .unwrap_or_else(|| panic!("ImageStatus {image} found nothing"))
}

async fn list(cri: &Client, filter: Option<&str>) -> Vec<CriImage> {
    let mut c = cri.clone();
    let req = ListImagesRequest {
        filter: filter.map(|f| ImageFilter { image: spec(f) }),
    };
    with_timeout("list images", c.list_images(req))
        .await
        .unwrap_or_else(|s| panic!("ListImages: {:?}: {}", s.code(), s.message()))
        .into_inner()
        .images
}

async fn remove(cri: &Client, image: &str) {
    let mut c = cri.clone();
    let req = RemoveImageRequest { image: spec(image) };
    with_timeout(&format!("remove {image}"), c.remove_image(req))
        .await
        .unwrap_or_else(|s| panic!("RemoveImage {image}: {:?}: {}", s.code(), s.message()));
}

/// image_filesystems[0].used_bytes (and checks the filesystem is identified).
async fn image_fs_used(cri: &Client) -> u64 {
    let mut c = cri.clone();
    let resp = with_timeout("image fs info", c.image_fs_info(ImageFsInfoRequest {}))
        .await
        .unwrap_or_else(|s| panic!("ImageFsInfo: {:?}: {}", s.code(), s.message()))
        .into_inner();
    let fs = resp
        .image_filesystems
        .first()
        .expect("ImageFsInfo returned no image filesystem");
    let mountpoint = fs.fs_id.as_ref().map(|i| i.mountpoint.as_str());
    assert!(
        mountpoint.is_some_and(|m| !m.is_empty()),
        "image filesystem without a mountpoint: {mountpoint:?}"
    );
    fs.used_bytes.as_ref().map(|u| u.value).unwrap_or(0)
}

/// Polls ImageFsInfo until `done(used_bytes)` or `timeout` (usage figures may lag a little);
/// returns the last figure.
async fn poll_fs_used(cri: &Client, timeout: Duration, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let used = image_fs_used(cri).await;
        if done(used) || Instant::now() > deadline {
            return used;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A small layer with one file `/markers/<name>`: makes each test image distinct.
fn marker_layer(name: &str, compression: Compression) -> Result<Layer> {
    Layer::new(
        &[
            Entry::dir("markers"),
            Entry::file(&format!("markers/{name}"), format!("{name}\n")),
        ],
        compression,
    )
}

/// busybox (gzip) + a marker layer, linux/amd64.
fn marked_busybox(name: &str, format: ManifestFormat) -> Result<oci::Image> {
    busybox::image_with(
        vec![marker_layer(name, Compression::Gzip)?],
        &busybox::config(),
        format,
        Compression::Gzip,
    )
}

fn ids(images: &[CriImage]) -> Vec<&str> {
    images.iter().map(|i| i.id.as_str()).collect()
}

fn count(items: &[String], wanted: &str) -> usize {
    items.iter().filter(|i| *i == wanted).count()
}

// ---------------------------------------------------------------------------------------------
// support checks (no daemon)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_push_and_read_back() -> Result<()> {
    let registry = Registry::start()?;
    let push = registry.push_client()?;
    let image = busybox::image(ManifestFormat::Oci, Compression::Gzip)?;
    let digest = push.push_image("support/busybox", "1.0", &image).await?;
    assert_eq!(digest, image.manifest_digest);
    let (content_type, body) = push.get_manifest("support/busybox", "1.0").await?;
    assert_eq!(content_type, oci::OCI_MANIFEST);
    assert_eq!(body, image.manifest);
    let blob = push
        .get_blob("support/busybox", &image.layers[0].digest)
        .await?;
    assert_eq!(oci::sha256_digest(&blob), image.layers[0].digest);
    let config = push
        .get_blob("support/busybox", &image.config_digest)
        .await?;
    assert_eq!(config, image.config);

    let docker = marked_busybox("support-docker", ManifestFormat::Docker)?;
    push.push_image("support/docker", "1", &docker).await?;
    let (content_type, _) = push.get_manifest("support/docker", "1").await?;
    assert_eq!(content_type, oci::DOCKER_MANIFEST);

    let arm = arm64_image("support-arm", ManifestFormat::Docker)?;
    let index = Index::new(vec![arm, docker.clone()], ManifestFormat::Docker)?;
    let index_digest = push.push_index("support/multi", "1", &index).await?;
    let (content_type, body) = push.get_manifest("support/multi", "1").await?;
    assert_eq!(content_type, oci::DOCKER_MANIFEST_LIST);
    assert_eq!(oci::sha256_digest(&body), index_digest);
    let (_, child) = push
        .get_manifest("support/multi", &docker.manifest_digest)
        .await?;
    assert_eq!(child, docker.manifest);

    // The blob the registry keeps on disk is where storage_dir says.
    let on_disk = std::fs::read(registry.blob_data_path(&image.layers[0].digest))?;
    assert_eq!(on_disk, image.layers[0].blob);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_auth_registry_requires_credentials() -> Result<()> {
    let registry = Registry::start_with_auth("keelson", "support-pass")?;
    let image = marked_busybox("support-auth", ManifestFormat::Oci)?;
    let anonymous = PushClient::new(&registry.host())?;
    let err = anonymous
        .push_image("auth/x", "1", &image)
        .await
        .expect_err("anonymous push must fail");
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    let wrong = PushClient::new(&registry.host())?.with_basic_auth("keelson", "wrong");
    assert!(wrong.push_image("auth/x", "1", &image).await.is_err());
    let push = registry.push_client()?;
    push.push_image("auth/x", "1", &image).await?;
    let (_, body) = push.get_manifest("auth/x", "1").await?;
    assert_eq!(body, image.manifest);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_busybox_rootfs_runs_in_chroot() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs)?;
    let mut archive = tar::Archive::new(busybox::tar()?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.unpack(&rootfs)?;
    let busybox_meta = std::fs::metadata(rootfs.join("bin/busybox"))?;
    let sh_meta = std::fs::symlink_metadata(rootfs.join("bin/sh"))?;
    assert!(
        sh_meta.file_type().is_file(),
        "bin/sh is a hard link, not a symlink"
    );
    assert_eq!(sh_meta.ino(), busybox_meta.ino());
    assert!(busybox_meta.nlink() > 100, "one hard link per applet");
    assert_eq!(
        std::fs::metadata(rootfs.join("tmp"))?.mode() & 0o7777,
        0o1777
    );
    let out = std::process::Command::new("/usr/sbin/chroot")
        .arg(&rootfs)
        .args(["/bin/sh", "-c", "echo hello from $(id -un) && ls /bin/ls"])
        .env_clear()
        .env("PATH", "/bin")
        .output()
        .context("running chroot")?;
    assert!(
        out.status.success(),
        "chroot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from root\n/bin/ls\n"
    );
    Ok(())
}

/// skopeo (an independent client) copies what we push, verifying every digest on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_skopeo_copies_our_images() -> Result<()> {
    let registry = Registry::start()?;
    let push = registry.push_client()?;
    let dir = tempfile::tempdir()?;
    let oci_zstd = busybox::image(ManifestFormat::Oci, Compression::Zstd)?;
    let docker = marked_busybox("skopeo-docker", ManifestFormat::Docker)?;
    let amd = marked_busybox("skopeo-amd64", ManifestFormat::Oci)?;
    let index = Index::new(
        vec![
            arm64_image("skopeo-arm64", ManifestFormat::Oci)?,
            amd.clone(),
        ],
        ManifestFormat::Oci,
    )?;
    push.push_image("skopeo/zstd", "1", &oci_zstd).await?;
    push.push_image("skopeo/docker", "1", &docker).await?;
    push.push_index("skopeo/index", "1", &index).await?;
    // (repo, the image skopeo must end up with for linux/amd64)
    for (repo, want) in [
        ("skopeo/zstd", &oci_zstd),
        ("skopeo/docker", &docker),
        ("skopeo/index", &amd),
    ] {
        let dest = dir.path().join(repo.replace('/', "-"));
        let out = std::process::Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg(format!("docker://{}", registry.reference(repo, "1")))
            .arg(format!("dir:{}", dest.display()))
            .env("HOME", dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .context("running skopeo (apt-get install skopeo)")?;
        assert!(
            out.status.success(),
            "skopeo copy {repo}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(dest.join("manifest.json"))?,
            want.manifest,
            "{repo}"
        );
        let config = std::fs::read(dest.join(oci::digest_hex(&want.config_digest)))?;
        assert_eq!(config, want.config, "{repo}");
    }
    Ok(())
}

/// skopeo reads our OCI-layout and docker-save tarballs (the import tests' inputs).
#[test]
fn support_skopeo_reads_our_tarballs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (name, image, path) in write_import_tarballs(dir.path(), "skopeo")? {
        let transport = if path.to_string_lossy().ends_with("-oci.tar") {
            "oci-archive"
        } else {
            "docker-archive"
        };
        let dest = dir.path().join(format!("{transport}-copy"));
        let out = std::process::Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet"])
            .arg(format!("{transport}:{}", path.display()))
            .arg(format!("dir:{}", dest.display()))
            .env("HOME", dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .context("running skopeo (apt-get install skopeo)")?;
        assert!(
            out.status.success(),
            "skopeo copy {transport} ({name}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = std::fs::read(dest.join(oci::digest_hex(&image.config_digest)))?;
        assert_eq!(config, image.config, "{transport}");
    }
    Ok(())
}

fn arm64_image(name: &str, format: ManifestFormat) -> Result<oci::Image> {
    let config = ImageConfig {
        platform: Platform::linux_arm64(),
        cmd: vec!["sh".into()],
        ..ImageConfig::default()
    };
    // Not a real arm64 binary: nothing runs it; only the platform matters.
    oci::Image::new(
        vec![marker_layer(name, Compression::Gzip)?],
        &config,
        format,
    )
}

// ---------------------------------------------------------------------------------------------
// pull, status, list, remove

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_and_by_digest() -> Result<()> {
    let env = Env::new().await?;
    let image = busybox::image(ManifestFormat::Oci, Compression::Gzip)?;
    let tag_ref = env.push("test/busybox", "1.0", &image).await?;
    let digest_ref = env
        .registry
        .digest_reference("test/busybox", &image.manifest_digest);

    let image_ref = pull_ok(&env.cri, &tag_ref).await;
    assert_eq!(image_ref, image.id(), "PullImage returns the image id");
    let st = status_some(&env.cri, &tag_ref).await;
    assert_eq!(st.id, image.id());
    assert_eq!(
        st.id,
        format!("sha256:{}", oci::digest_hex(&image.config_digest))
    );
    assert_eq!(count(&st.repo_tags, &tag_ref), 1, "{:?}", st.repo_tags);
    assert!(
        st.repo_digests.contains(&digest_ref),
        "{:?}",
        st.repo_digests
    );
    assert!(st.size > 0);
    // Every way of naming it finds the same image.
    for name in [digest_ref.as_str(), image.config_digest.as_str()] {
        assert_eq!(status_some(&env.cri, name).await.id, image.id(), "{name}");
    }
    // Pulling again is idempotent.
    assert_eq!(pull_ok(&env.cri, &tag_ref).await, image.id());
    assert_eq!(list(&env.cri, None).await.len(), 1);

    // A second image, pulled only by digest.
    let other = marked_busybox("by-digest", ManifestFormat::Oci)?;
    env.push("test/busybox", "2.0", &other).await?;
    let other_digest_ref = env
        .registry
        .digest_reference("test/busybox", &other.manifest_digest);
    assert_eq!(pull_ok(&env.cri, &other_digest_ref).await, other.id());
    let st = status_some(&env.cri, &other_digest_ref).await;
    assert_eq!(st.id, other.id());
    assert!(
        st.repo_digests.contains(&other_digest_ref),
        "{:?}",
        st.repo_digests
    );
    let other_tag_ref = env.registry.reference("test/busybox", "2.0");
    assert!(
        !st.repo_tags.contains(&other_tag_ref),
        "a pull by digest cannot know the tag: {:?}",
        st.repo_tags
    );
    assert!(status(&env.cri, &other_tag_ref).await.is_none());

    // A tag the registry does not have.
    let missing = env.registry.reference("test/busybox", "missing");
    let msg = pull_err(&env.cri, &missing, None).await;
    assert!(msg.contains("test/busybox"), "error names the image: {msg}");
    assert!(status(&env.cri, &missing).await.is_none());
    assert_eq!(list(&env.cri, None).await.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_images_with_and_without_filter() -> Result<()> {
    let env = Env::new().await?;
    assert!(
        list(&env.cri, None).await.is_empty(),
        "a fresh store is empty"
    );
    let a = marked_busybox("list-a", ManifestFormat::Oci)?;
    let b = marked_busybox("list-b", ManifestFormat::Docker)?;
    let a_ref = env.push("list/a", "1", &a).await?;
    let b1 = env.push("list/b", "1", &b).await?;
    let b2 = env.push("list/b", "2", &b).await?;
    for r in [&a_ref, &b1, &b2] {
        pull_ok(&env.cri, r).await;
    }

    let all = list(&env.cri, None).await;
    let mut got = ids(&all);
    got.sort();
    let mut want = vec![a.config_digest.as_str(), b.config_digest.as_str()];
    want.sort();
    assert_eq!(got, want, "each image listed once");
    let b_listed = all.iter().find(|i| i.id == b.id()).unwrap();
    assert_eq!(
        count(&b_listed.repo_tags, &b1),
        1,
        "{:?}",
        b_listed.repo_tags
    );
    assert_eq!(
        count(&b_listed.repo_tags, &b2),
        1,
        "{:?}",
        b_listed.repo_tags
    );
    assert!(b_listed.size > 0);
    let a_listed = all.iter().find(|i| i.id == a.id()).unwrap();
    assert_eq!(a_listed.repo_tags, vec![a_ref.clone()]);

    let only_a = list(&env.cri, Some(&a_ref)).await;
    assert_eq!(ids(&only_a), vec![a.config_digest.as_str()]);
    let only_b = list(&env.cri, Some(&b2)).await;
    assert_eq!(ids(&only_b), vec![b.config_digest.as_str()]);
    let none = list(&env.cri, Some(&env.registry.reference("list/c", "1"))).await;
    assert!(
        none.is_empty(),
        "filter on an unknown name: {:?}",
        ids(&none)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_status_fields() -> Result<()> {
    let env = Env::new().await?;
    let user_image = |user: &str| -> Result<oci::Image> {
        let config = ImageConfig {
            user: user.to_owned(),
            ..busybox::config()
        };
        busybox::image_with(vec![], &config, ManifestFormat::Oci, Compression::Gzip)
    };
    // (config User, expected uid, expected username)
    let cases: [(&str, Option<i64>, &str); 5] = [
        ("0", Some(0), ""),
        ("1002", Some(1002), ""),
        ("www-data", None, "www-data"),
        ("1003:1004", Some(1003), ""),
        ("www-data:1004", None, "www-data"),
    ];
    for (i, (user, uid, username)) in cases.iter().enumerate() {
        let image = user_image(user)?;
        let r = env.push(&format!("status/user{i}"), "1", &image).await?;
        pull_ok(&env.cri, &r).await;
        let st = status_some(&env.cri, &r).await;
        assert_eq!(st.id, image.id());
        assert_eq!(st.uid.as_ref().map(|u| u.value), *uid, "User {user:?}");
        assert_eq!(st.username, *username, "User {user:?}");
    }

    // No User at all: root. Either uid 0 or (containerd's way) no uid and no name.
    let plain = busybox::image(ManifestFormat::Oci, Compression::Gzip)?;
    let r = env.push("status/plain", "1", &plain).await?;
    pull_ok(&env.cri, &r).await;
    let st = status_some(&env.cri, &r).await;
    assert!(
        matches!(st.uid.as_ref().map(|u| u.value), None | Some(0)),
        "{:?}",
        st.uid
    );
    assert_eq!(st.username, "");
    assert!(st.size > 0);

    let verbose = status_full(&env.cri, &r, true).await;
    assert_eq!(
        verbose.image.as_ref().map(|i| i.id.as_str()),
        Some(plain.config_digest.as_str())
    );
    assert!(!verbose.info.is_empty(), "verbose status has an info map");
    let terse = status_full(&env.cri, &r, false).await;
    assert!(
        terse.info.is_empty(),
        "info only when verbose: {:?}",
        terse.info.keys()
    );

    // Unknown images are not errors, just no image.
    let unknown = [
        env.registry.reference("status/nothing", "1"),
        format!("sha256:{}", "0".repeat(64)),
    ];
    for name in unknown {
        let resp = status_full(&env.cri, &name, true).await;
        assert!(resp.image.is_none(), "{name}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_image_by_id_tag_and_digest() -> Result<()> {
    let env = Env::new().await?;
    let a = marked_busybox("rm-a", ManifestFormat::Oci)?;
    let b = marked_busybox("rm-b", ManifestFormat::Oci)?;
    let c = marked_busybox("rm-c", ManifestFormat::Docker)?;
    let a_ref = env.push("rm/a", "1", &a).await?;
    let b_ref = env.push("rm/b", "1", &b).await?;
    env.push("rm/c", "1", &c).await?;
    let c_digest_ref = env.registry.digest_reference("rm/c", &c.manifest_digest);
    for r in [&a_ref, &b_ref, &c_digest_ref] {
        pull_ok(&env.cri, r).await;
    }
    assert_eq!(list(&env.cri, None).await.len(), 3);

    remove(&env.cri, &a.id()).await;
    assert!(status(&env.cri, &a_ref).await.is_none());
    assert!(status(&env.cri, &a.id()).await.is_none());
    assert!(!ids(&list(&env.cri, None).await).contains(&a.config_digest.as_str()));

    remove(&env.cri, &b_ref).await;
    assert!(status(&env.cri, &b_ref).await.is_none());
    assert!(status(&env.cri, &b.id()).await.is_none());

    remove(&env.cri, &c_digest_ref).await;
    assert!(status(&env.cri, &c_digest_ref).await.is_none());
    assert!(status(&env.cri, &c.id()).await.is_none());
    assert!(list(&env.cri, None).await.is_empty());

    // Removing what is gone is not an error (CRI: idempotent).
    remove(&env.cri, &a.id()).await;
    remove(&env.cri, &b_ref).await;

    // And a removed image can be pulled again.
    assert_eq!(pull_ok(&env.cri, &a_ref).await, a.id());
    assert_eq!(status_some(&env.cri, &a_ref).await.id, a.id());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info_tracks_pulls_and_removals() -> Result<()> {
    let env = Env::new().await?;
    let before = image_fs_used(&env.cri).await;
    let big = Layer::new(
        &[Entry::file(
            "data/random.bin",
            oci::pseudo_random_bytes(7, 2 << 20),
        )],
        Compression::Gzip,
    )?;
    let image = busybox::image_with(
        vec![big],
        &busybox::config(),
        ManifestFormat::Oci,
        Compression::Gzip,
    )?;
    let r = env.push("fsinfo/app", "1", &image).await?;
    pull_ok(&env.cri, &r).await;
    let after_pull = poll_fs_used(&env.cri, Duration::from_secs(10), |u| {
        u >= before + (2 << 20)
    })
    .await;
    assert!(
        after_pull > 0 && after_pull >= before + (2 << 20),
        "used bytes {before} -> {after_pull} after pulling an image with a 2 MiB random file"
    );

    remove(&env.cri, &r).await;
    let after_rm = poll_fs_used(&env.cri, Duration::from_secs(10), |u| u < after_pull).await;
    assert!(
        after_rm < after_pull,
        "used bytes {after_pull} -> {after_rm} after rmi"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// image shapes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_layer_image_with_whiteouts_and_opaque_dir() -> Result<()> {
    let env = Env::new().await?;
    let lower = Layer::new(
        &[
            Entry::dir("data"),
            Entry::file("data/a", "a\n"),
            Entry::file("data/b", "b\n"),
            Entry::dir("data/sub"),
            Entry::file("data/sub/c", "c\n"),
            Entry::symlink("data/link", "a"),
            Entry::hardlink("data/b-hard", "data/b"),
            Entry::executable("data/suid", "#!/bin/sh\n")
                .mode(0o4755)
                .owner(33, 33),
            Entry::dir("opq"),
            Entry::file("opq/x", "x\n"),
        ],
        Compression::Gzip,
    )?;
    let upper = Layer::new(
        &[
            Entry::dir("data"),
            Entry::whiteout("data/a"),
            Entry::whiteout("data/sub"),
            Entry::dir("opq"),
            Entry::opaque("opq"),
            Entry::file("opq/y", "y\n"),
        ],
        Compression::Gzip,
    )?;
    let image = busybox::image_with(
        vec![lower, upper],
        &busybox::config(),
        ManifestFormat::Oci,
        Compression::Gzip,
    )?;
    assert_eq!(image.layers.len(), 3);
    let r = env.push("layers/app", "1", &image).await?;
    assert_eq!(pull_ok(&env.cri, &r).await, image.id());
    let st = status_some(&env.cri, &r).await;
    assert_eq!(st.id, image.id());
    assert_eq!(
        st.size,
        image.size(),
        "size = sum of the manifest's layer sizes + config size"
    );
    remove(&env.cri, &image.id()).await;
    assert!(status(&env.cri, &r).await.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_formats_and_layer_compressions() -> Result<()> {
    let env = Env::new().await?;
    let cases = [
        ("oci-gzip", ManifestFormat::Oci, Compression::Gzip),
        ("oci-zstd", ManifestFormat::Oci, Compression::Zstd),
        ("oci-none", ManifestFormat::Oci, Compression::None),
        ("docker-gzip", ManifestFormat::Docker, Compression::Gzip),
        ("docker-none", ManifestFormat::Docker, Compression::None),
    ];
    for (name, format, compression) in cases {
        let image = busybox::image_with(
            vec![marker_layer(name, compression)?],
            &busybox::config(),
            format,
            compression,
        )?;
        let r = env.push(&format!("formats/{name}"), "1", &image).await?;
        assert_eq!(pull_ok(&env.cri, &r).await, image.id(), "{name}");
        let st = status_some(&env.cri, &r).await;
        assert_eq!(st.id, image.id(), "{name}");
        assert_eq!(st.size, image.size(), "{name}");
    }
    // One image mixing all three compressions.
    let mixed = busybox::image_with(
        vec![
            marker_layer("mixed-gzip", Compression::Gzip)?,
            marker_layer("mixed-none", Compression::None)?,
        ],
        &busybox::config(),
        ManifestFormat::Oci,
        Compression::Zstd,
    )?;
    let r = env.push("formats/mixed", "1", &mixed).await?;
    assert_eq!(pull_ok(&env.cri, &r).await, mixed.id());
    assert_eq!(status_some(&env.cri, &r).await.size, mixed.size());
    assert_eq!(list(&env.cri, None).await.len(), cases.len() + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_resolves_to_linux_amd64() -> Result<()> {
    let env = Env::new().await?;
    for format in [ManifestFormat::Oci, ManifestFormat::Docker] {
        let name = format!("{format:?}").to_lowercase();
        let amd = marked_busybox(&format!("index-amd64-{name}"), format)?;
        let arm = arm64_image(&format!("index-arm64-{name}"), format)?;
        // arm64 first, so "take the first entry" is caught.
        let index = Index::new(vec![arm.clone(), amd.clone()], format)?;
        let repo = format!("index/{name}");
        let index_digest = env.push.push_index(&repo, "multi", &index).await?;
        let r = env.registry.reference(&repo, "multi");
        assert_eq!(pull_ok(&env.cri, &r).await, amd.id(), "{name}");
        let st = status_some(&env.cri, &r).await;
        assert_eq!(st.id, amd.id(), "{name}: the amd64 config digest");
        assert_ne!(st.id, arm.id());
        let index_ref = env.registry.digest_reference(&repo, &index_digest);
        assert!(
            st.repo_digests.contains(&index_ref),
            "{name}: repo digest is the index digest: {:?}",
            st.repo_digests
        );
        assert!(status(&env.cri, &arm.id()).await.is_none());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_without_linux_amd64_fails() -> Result<()> {
    let env = Env::new().await?;
    let arm = arm64_image("arm-only", ManifestFormat::Oci)?;
    let index = Index::new(vec![arm.clone()], ManifestFormat::Oci)?;
    env.push.push_index("index/arm-only", "1", &index).await?;
    let r = env.registry.reference("index/arm-only", "1");
    let msg = pull_err(&env.cri, &r, None).await;
    assert!(
        msg.contains("linux/amd64") || msg.contains("platform"),
        "error mentions the platform: {msg}"
    );
    assert!(status(&env.cri, &r).await.is_none());
    assert!(list(&env.cri, None).await.is_empty());
    // The daemon is fine afterwards.
    let good = marked_busybox("after-arm", ManifestFormat::Oci)?;
    let good_ref = env.push("index/good", "1", &good).await?;
    assert_eq!(pull_ok(&env.cri, &good_ref).await, good.id());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// registries that need credentials or lie

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_htpasswd_registry() -> Result<()> {
    const USER: &str = "keelson";
    const PASS: &str = "s3cret-Pass-91";
    let env = Env::with_registry(Registry::start_with_auth(USER, PASS)?).await?;
    let one = marked_busybox("auth-one", ManifestFormat::Oci)?;
    let two = marked_busybox("auth-two", ManifestFormat::Docker)?;
    let one_ref = env.push("auth/one", "1", &one).await?;
    let two_ref = env.push("auth/two", "1", &two).await?;

    let msg = pull_err(&env.cri, &one_ref, None).await;
    assert!(
        msg.contains("not authorized to pull auth/one"),
        "no credentials: {msg}"
    );
    let code = pull(&env.cri, &one_ref, None).await.unwrap_err().code();
    assert_eq!(code, tonic::Code::Unauthenticated, "no credentials");
    let wrong = AuthConfig {
        username: USER.into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let msg = pull_err(&env.cri, &one_ref, Some(wrong)).await;
    assert!(
        msg.contains("not authorized to pull auth/one"),
        "wrong password: {msg}"
    );
    assert!(status(&env.cri, &one_ref).await.is_none());

    let by_fields = AuthConfig {
        username: USER.into(),
        password: PASS.into(),
        ..Default::default()
    };
    assert_eq!(pull(&env.cri, &one_ref, Some(by_fields)).await?, one.id());
    assert_eq!(status_some(&env.cri, &one_ref).await.id, one.id());

    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    let by_auth = AuthConfig {
        auth: encoded.clone(),
        ..Default::default()
    };
    assert_eq!(pull(&env.cri, &two_ref, Some(by_auth)).await?, two.id());
    assert_eq!(status_some(&env.cri, &two_ref).await.id, two.id());

    let log = std::fs::read_to_string(env.daemon.log_path()).unwrap_or_default();
    assert!(
        !log.contains(PASS) && !log.contains(&encoded),
        "the daemon log must not contain credentials"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_fails_digest_verification() -> Result<()> {
    let env = Env::new().await?;
    // An uncompressed layer: flipping file bytes keeps a valid tar, so only the digest check
    // can catch it (a broken gzip stream would fail for another reason).
    let payload = vec![b'A'; 64 * 1024];
    let victim = Layer::new(
        &[Entry::dir("data"), Entry::file("data/payload", payload)],
        Compression::None,
    )?;
    let image = busybox::image_with(
        vec![victim.clone()],
        &busybox::config(),
        ManifestFormat::Oci,
        Compression::Gzip,
    )?;
    let r = env.push("lying/app", "1", &image).await?;

    let path = env.registry.blob_data_path(&victim.digest);
    let mut data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let at = data
        .windows(1024)
        .position(|w| w.iter().all(|b| *b == b'A'))
        .context("payload not found in the stored blob")?;
    data[at..at + 1024].fill(b'B');
    std::fs::write(&path, &data)?;
    let served = env.push.get_blob("lying/app", &victim.digest).await?;
    assert_eq!(served.len(), victim.blob.len(), "same length, other bytes");
    assert_ne!(
        oci::sha256_digest(&served),
        victim.digest,
        "the registry now lies"
    );

    for attempt in 0..2 {
        let msg = pull_err(&env.cri, &r, None).await;
        // e.g. "digest mismatch for sha256:<expected>: got sha256:<actual>" (containerd words it
        // "unexpected commit digest <actual>, expected <expected>").
        assert!(
            msg.contains("digest") && msg.contains(oci::digest_hex(&victim.digest)),
            "attempt {attempt}: error is about the digest of {}: {msg}",
            victim.digest
        );
        assert!(status(&env.cri, &r).await.is_none());
        assert!(status(&env.cri, &image.id()).await.is_none());
        assert!(!ids(&list(&env.cri, None).await).contains(&image.config_digest.as_str()));
    }

    assert!(env.daemon.pid().is_some());
    let good = marked_busybox("honest", ManifestFormat::Oci)?;
    let good_ref = env.push("lying/good", "1", &good).await?;
    assert_eq!(pull_ok(&env.cri, &good_ref).await, good.id());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// malicious layers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_layers_are_rejected() -> Result<()> {
    let mut env = Env::new().await?;
    // A real directory outside every root, that the layers aim at.
    let unique = unique_name("kev");
    let outside = Path::new("/tmp").join(&unique);
    std::fs::create_dir(&outside)?;
    let _cleanup = RemoveOnDrop(outside.clone());
    let target = outside.join("target");
    std::fs::write(&target, "original\n")?;
    let passwd_links = std::fs::metadata("/etc/passwd")?.nlink();
    // Deep enough to climb from any extraction directory up to "/".
    let up = "../".repeat(12);

    // (case, layer entries, a name the error must mention)
    let cases: Vec<(&str, Vec<Entry>, Vec<String>)> = vec![
        (
            "traversal",
            vec![Entry::raw_file(
                &format!("{up}tmp/{unique}/traversal-entry"),
                "pwned\n",
            )],
            vec!["traversal-entry".into()],
        ),
        (
            "traversal-short",
            vec![Entry::raw_file("../../escape", "pwned\n")],
            vec!["../../escape".into()],
        ),
        (
            "absolute-symlink",
            vec![
                Entry::symlink("evil", &format!("/tmp/{unique}")),
                Entry::file("evil/pwned", "pwned\n"),
            ],
            vec!["evil".into()],
        ),
        (
            "relative-symlink",
            vec![
                Entry::symlink("rel-link", &format!("{up}tmp/{unique}")),
                Entry::file("rel-link/pwned-rel", "pwned\n"),
            ],
            vec!["rel-link".into()],
        ),
        (
            "hardlink-passwd",
            vec![Entry::raw_hardlink("hardlink-entry", "../../etc/passwd")],
            vec!["hardlink-entry".into(), "../../etc/passwd".into()],
        ),
        (
            "hardlink-write-through",
            vec![
                Entry::raw_hardlink("decoy-link", &format!("{up}tmp/{unique}/target")),
                Entry::file("decoy-link", "pwned\n"),
            ],
            vec!["decoy-link".into()],
        ),
    ];
    let base = Layer::new(&[Entry::dir("tmp").mode(0o1777)], Compression::Gzip)?;
    let mut bad_ids = Vec::new();
    for (case, entries, names) in &cases {
        let evil = Layer::new(entries, Compression::Gzip)?;
        let image = oci::Image::new(
            vec![base.clone(), evil],
            &busybox::config(),
            ManifestFormat::Oci,
        )?;
        let r = env.push(&format!("evil/{case}"), "1", &image).await?;
        let msg = pull_err(&env.cri, &r, None).await;
        assert!(
            names.iter().any(|n| msg.contains(n.as_str())),
            "{case}: error names the entry ({names:?}): {msg}"
        );
        assert!(status(&env.cri, &r).await.is_none(), "{case}");
        assert!(env.daemon.is_running(), "{case}: the daemon survived");
        bad_ids.push(image.id());
    }

    // Nothing was written outside.
    let mut left: Vec<String> = std::fs::read_dir(&outside)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    left.sort();
    assert_eq!(
        left,
        vec!["target".to_owned()],
        "files appeared in {}",
        outside.display()
    );
    assert!(!outside.join("pwned").exists());
    assert_eq!(std::fs::read_to_string(&target)?, "original\n");
    assert_eq!(
        std::fs::metadata(&target)?.nlink(),
        1,
        "no hard link to the decoy"
    );
    assert_eq!(std::fs::metadata("/etc/passwd")?.nlink(), passwd_links);

    let listed = list(&env.cri, None).await;
    for id in &bad_ids {
        assert!(!ids(&listed).contains(&id.as_str()));
    }
    let good = marked_busybox("after-evil", ManifestFormat::Oci)?;
    let good_ref = env.push("evil/good", "1", &good).await?;
    env.reconnect().await?;
    assert_eq!(pull_ok(&env.cri, &good_ref).await, good.id());
    Ok(())
}

/// Removes a directory tree when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// concurrency and persistence

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image() -> Result<()> {
    let env = Env::new().await?;
    let big = Layer::new(
        &[Entry::file(
            "data/random.bin",
            oci::pseudo_random_bytes(11, 4 << 20),
        )],
        Compression::Gzip,
    )?;
    let image = busybox::image_with(
        vec![big],
        &busybox::config(),
        ManifestFormat::Oci,
        Compression::Gzip,
    )?;
    let tag_ref = env.push("concurrent/app", "1", &image).await?;
    let digest_ref = env
        .registry
        .digest_reference("concurrent/app", &image.manifest_digest);
    // Separate connections, so the requests really are concurrent.
    let c1 = env.daemon.image_client().await?;
    let c2 = env.daemon.image_client().await?;
    let c3 = env.daemon.image_client().await?;
    let (r1, r2, r3) = tokio::join!(
        pull(&c1, &tag_ref, None),
        pull(&c2, &tag_ref, None),
        pull(&c3, &digest_ref, None),
    );
    for (i, r) in [r1, r2, r3].into_iter().enumerate() {
        let r = r.map_err(|s| anyhow::anyhow!("pull {i}: {}", s.message()))?;
        assert_eq!(r, image.id(), "pull {i}");
    }
    let listed = list(&env.cri, None).await;
    assert_eq!(
        ids(&listed),
        vec![image.config_digest.as_str()],
        "listed once"
    );
    assert_eq!(listed[0].repo_tags, vec![tag_ref.clone()]);
    assert_eq!(count(&listed[0].repo_digests, &digest_ref), 1);
    assert_eq!(listed[0].size, image.size());
    Ok(())
}

/// The fields that must survive a restart.
fn persisted(i: &CriImage) -> (String, HashSet<String>, HashSet<String>, u64) {
    (
        i.id.clone(),
        i.repo_tags.iter().cloned().collect(),
        i.repo_digests.iter().cloned().collect(),
        i.size,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_metadata_survives_restarts() -> Result<()> {
    let mut env = Env::new().await?;
    let a = marked_busybox("persist-a", ManifestFormat::Oci)?;
    let b = marked_busybox("persist-b", ManifestFormat::Docker)?;
    let a_ref = env.push("persist/a", "1", &a).await?;
    env.push("persist/b", "1", &b).await?;
    let b_ref = env
        .registry
        .digest_reference("persist/b", &b.manifest_digest);
    pull_ok(&env.cri, &a_ref).await;
    pull_ok(&env.cri, &b_ref).await;
    let a_before = persisted(&status_some(&env.cri, &a_ref).await);
    let b_before = persisted(&status_some(&env.cri, &b_ref).await);

    let exit = env.daemon.terminate().await?;
    assert!(exit.success(), "SIGTERM is a clean exit: {exit}");
    env.daemon.restart().await?;
    env.reconnect().await?;
    assert_eq!(persisted(&status_some(&env.cri, &a_ref).await), a_before);
    assert_eq!(persisted(&status_some(&env.cri, &b_ref).await), b_before);
    assert_eq!(list(&env.cri, None).await.len(), 2);

    env.daemon.kill_9()?;
    env.daemon.restart().await?;
    env.reconnect().await?;
    assert_eq!(persisted(&status_some(&env.cri, &a_ref).await), a_before);
    assert_eq!(persisted(&status_some(&env.cri, &b_ref).await), b_before);
    assert_eq!(list(&env.cri, None).await.len(), 2);

    // The store still works after the crash: remove and pull again.
    remove(&env.cri, &a_ref).await;
    assert!(status(&env.cri, &a_ref).await.is_none());
    assert_eq!(pull_ok(&env.cri, &a_ref).await, a.id());
    assert_eq!(persisted(&status_some(&env.cri, &a_ref).await), a_before);
    Ok(())
}

/// Names under `dir` that start with `.tmp-` (work in progress of the image store).
fn temp_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_pull_leaves_a_consistent_store() -> Result<()> {
    let mut env = Env::new().await?;
    // Big uncompressed layers, so the pull is still streaming when the daemon is killed.
    let mut layers = Vec::new();
    for i in 0..4u64 {
        let data = oci::pseudo_random_bytes(1000 + i, 48 << 20);
        layers.push(Layer::new(
            &[Entry::file(&format!("big-{i}.bin"), data)],
            Compression::None,
        )?);
    }
    let image = busybox::image_with(
        layers,
        &busybox::config(),
        ManifestFormat::Oci,
        Compression::Gzip,
    )?;
    let reference = env.push("crash/big", "1", &image).await?;
    let snapshots = env.daemon.root().join("snapshots");

    let cri = env.cri.clone();
    let r = reference.clone();
    let pulling = tokio::spawn(async move { pull(&cri, &r, None).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    while temp_entries(&snapshots).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the pull never started unpacking"
        );
        assert!(
            !pulling.is_finished(),
            "the pull finished before it could be interrupted"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    env.daemon.kill_9()?;
    let interrupted = pulling.await?;
    assert!(
        interrupted.is_err(),
        "a pull cut off by SIGKILL cannot have succeeded"
    );

    env.daemon.restart().await?;
    env.reconnect().await?;
    assert!(
        list(&env.cri, None).await.is_empty(),
        "no half image is listed"
    );
    assert!(status(&env.cri, &reference).await.is_none());
    // Start-up removes work in progress and collects what no image references.
    let root = env.daemon.root().to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leftovers: Vec<String> = ["snapshots", "images", "content/blobs/sha256"]
            .iter()
            .flat_map(|d| std::fs::read_dir(root.join(d)).into_iter().flatten())
            .filter_map(|e| e.ok())
            .map(|e| e.path().display().to_string())
            .collect();
        if leftovers.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind after restart: {leftovers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the same pull now completes.
    assert_eq!(pull_ok(&env.cri, &reference).await, image.id());
    assert!(temp_entries(&snapshots).is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// images import

/// Writes an OCI-layout and a docker-save tarball; returns (name, image, path) for each.
fn write_import_tarballs(
    dir: &Path,
    label: &str,
) -> Result<Vec<(String, oci::Image, std::path::PathBuf)>> {
    let oci_image = marked_busybox(&format!("import-oci-{label}"), ManifestFormat::Oci)?;
    let oci_name = format!("import.keelson.test/{label}/oci-busybox:1.0");
    let oci_path = dir.join(format!("{label}-oci.tar"));
    std::fs::write(&oci_path, oci::oci_layout_tar(&oci_image, &oci_name)?)?;

    let docker_image = busybox::image_with(
        vec![marker_layer(
            &format!("import-docker-{label}"),
            Compression::None,
        )?],
        &busybox::config(),
        ManifestFormat::Docker,
        Compression::None,
    )?;
    let docker_name = format!("import.keelson.test/{label}/docker-busybox:1.0");
    let docker_path = dir.join(format!("{label}-docker.tar"));
    std::fs::write(
        &docker_path,
        oci::docker_save_tar(&docker_image, &docker_name)?,
    )?;
    Ok(vec![
        (oci_name, oci_image, oci_path),
        (docker_name, docker_image, docker_path),
    ])
}

fn check_import_output(out: &std::process::Output, name: &str, image: &oci::Image) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "import of {name} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(name) || stdout.contains(&image.id()),
        "import prints the image name or id: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_tarballs_into_running_daemon() -> Result<()> {
    let daemon = RuntimeDaemon::start(DaemonOptions::default()).await?;
    let cri = daemon.image_client().await?;
    let dir = tempfile::tempdir()?;
    for (name, image, path) in write_import_tarballs(dir.path(), "running")? {
        let out = daemon.import(&path)?;
        check_import_output(&out, &name, &image);
        let st = status_some(&cri, &name).await;
        assert_eq!(st.id, image.id(), "{name}");
        assert!(st.repo_tags.contains(&name), "{name}: {:?}", st.repo_tags);
        assert!(st.size > 0);
    }
    assert_eq!(list(&cri, None).await.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_tarballs_while_daemon_is_stopped() -> Result<()> {
    let mut daemon = RuntimeDaemon::start(DaemonOptions::default()).await?;
    let exit = daemon.terminate().await?;
    assert!(exit.success(), "SIGTERM is a clean exit: {exit}");
    let dir = tempfile::tempdir()?;
    let tarballs = write_import_tarballs(dir.path(), "stopped")?;
    for (name, image, path) in &tarballs {
        let out = daemon.import(path)?;
        check_import_output(&out, name, image);
    }
    daemon.restart().await?;
    let cri = daemon.image_client().await?;
    for (name, image, _) in &tarballs {
        let st = status_some(&cri, name).await;
        assert_eq!(st.id, image.id(), "{name}");
        assert!(st.repo_tags.contains(name), "{name}: {:?}", st.repo_tags);
    }
    assert_eq!(list(&cri, None).await.len(), 2);
    // Imported images are ordinary images: they can be removed.
    remove(&cri, &tarballs[0].0).await;
    assert!(status(&cri, &tarballs[0].0).await.is_none());
    Ok(())
}
