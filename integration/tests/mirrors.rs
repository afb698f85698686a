//! End-to-end tests of registry mirrors and per-registry settings (`--registry-config-dir`, a
//! containerd-style `certs.d` with `hosts.toml` files) and of `--registry-credentials`.
//!
//! Every test starts its own registries (Debian's docker-registry on ephemeral loopback ports), its
//! own `certs.d` and its own daemon. Nothing leaves loopback: even the Docker Hub test names a
//! local server as the upstream.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use keelson_cri::ImageServiceClient;
use keelson_cri::v1::{ImageSpec, ImageStatusRequest, PullImageRequest};
use keelson_integration::daemon::RuntimeDaemon;
use keelson_integration::mirror_support::{
    CertsDir, TlsRegistry, daemon_options, host_section, read_log, registries_resolve,
};
use keelson_integration::oci::{self, Compression, Entry, ImageConfig, Layer, ManifestFormat};
use keelson_integration::registry::{Registry, free_port};
use tonic::transport::Channel;

type Client = ImageServiceClient<Channel>;

const CALL_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// helpers

/// A one-layer image holding `/marker` = `name`: distinct per name.
fn small_image(name: &str) -> Result<oci::Image> {
    let layer = Layer::new(
        &[Entry::file("marker", format!("{name}\n"))],
        Compression::Gzip,
    )?;
    oci::Image::new(vec![layer], &ImageConfig::default(), ManifestFormat::Oci)
}

/// A daemon using `certs` (and a credentials file) plus a CRI image client.
async fn node(certs: &CertsDir, credentials: Option<&Path>) -> Result<(RuntimeDaemon, Client)> {
    let mut opts = daemon_options(certs.path(), credentials);
    // Debug logging, so the secrecy checks cover every log line.
    opts.env
        .push(("RUST_LOG".into(), "info,keelson_runtime=debug".into()));
    let daemon = RuntimeDaemon::start(opts).await?;
    let cri = daemon.image_client().await?;
    Ok((daemon, cri))
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

async fn pull(cri: &Client, image: &str) -> Result<String, tonic::Status> {
    let mut c = cri.clone();
    let req = PullImageRequest {
        image: spec(image),
        auth: None,
        sandbox_config: None,
    };
    tokio::time::timeout(CALL_TIMEOUT, c.pull_image(req))
        .await
        .unwrap_or_else(|_| panic!("pull {image} did not answer within {CALL_TIMEOUT:?}"))
        .map(|r| r.into_inner().image_ref)
}

async fn pull_ok(cri: &Client, image: &str) -> Result<String> {
    pull(cri, image)
        .await
        .map_err(|s| anyhow::anyhow!("pull {image} failed: {:?}: {}", s.code(), s.message()))
}

async fn pull_err(cri: &Client, image: &str) -> tonic::Status {
    match pull(cri, image).await {
        Ok(r) => panic!("pull {image} succeeded (image_ref {r}) but must fail"),
        Err(s) => s,
    }
}

/// RepoTags of an image the store holds.
async fn repo_tags(cri: &Client, image: &str) -> Result<Vec<String>> {
    let mut c = cri.clone();
    let resp = c
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await?
        .into_inner();
    let img = resp
        .image
        .with_context(|| format!("{image} is not in the store"))?;
    Ok(img.repo_tags)
}

/// `hosts.toml` for registry `server` (plain HTTP) with mirrors in front.
fn hosts_toml(server: &str, mirrors: &[(&str, &[&str])]) -> String {
    let mut t = format!("server = \"http://{server}\"\n\n");
    for (url, caps) in mirrors {
        t.push_str(&host_section(url, caps));
    }
    t
}

/// A CA and a server certificate for 127.0.0.1/localhost: (ca pem, cert pem, key pem).
fn test_pki() -> Result<(String, String, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "keelson mirror test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer)?;
    ensure!(
        server
            .subject_alt_names
            .iter()
            .any(|s| matches!(s, rcgen::SanType::IpAddress(IpAddr::V4(_)))),
        "the server certificate must name 127.0.0.1"
    );
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// A plain registry to push to and a TLS registry serving the same storage, with the CA's PEM.
struct TlsPair {
    plain: Registry,
    tls: TlsRegistry,
    ca_pem: String,
    _keys: tempfile::TempDir,
}

fn tls_pair() -> Result<TlsPair> {
    let (ca_pem, cert_pem, key_pem) = test_pki()?;
    let keys = tempfile::tempdir()?;
    let cert = keys.path().join("server.pem");
    let key = keys.path().join("server-key.pem");
    std::fs::write(&cert, cert_pem)?;
    std::fs::write(&key, key_pem)?;
    let plain = Registry::start()?;
    let tls = TlsRegistry::start(&plain.storage_dir(), &cert, &key)?;
    Ok(TlsPair {
        plain,
        tls,
        ca_pem,
        _keys: keys,
    })
}

// ---------------------------------------------------------------------------------------------
// mirrors

/// An image only the mirror has is pulled through it, named after the registry asked for, and
/// the mirror is asked with `?ns=<registry>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_only_on_the_mirror_is_pulled_through_it() -> Result<()> {
    let upstream = Registry::start()?;
    let mirror = Registry::start()?;
    let image = small_image("only-on-mirror")?;
    mirror
        .push_client()?
        .push_image("team/app", "v1", &image)
        .await?;

    let certs = CertsDir::new()?;
    certs.write_hosts(
        &upstream.host(),
        &hosts_toml(
            &upstream.host(),
            &[(&mirror.base_url(), &["pull", "resolve"])],
        ),
    )?;
    let (_daemon, cri) = node(&certs, None).await?;

    let wanted = upstream.reference("team/app", "v1");
    let id = pull_ok(&cri, &wanted).await?;
    assert_eq!(id, image.id());
    assert_eq!(repo_tags(&cri, &wanted).await?, vec![wanted.clone()]);

    let log = read_log(&mirror.log_path());
    let ns = format!("ns={}", upstream.host().replace(':', "%3A"));
    assert!(
        log.contains(&format!("/v2/team/app/manifests/v1?{ns}")),
        "the mirror is asked with ?{ns}:\n{log}"
    );
    Ok(())
}

/// A mirror without the image hands the pull to the server; a mirror that is down is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_on_the_mirror_or_mirror_down_falls_through_to_the_server() -> Result<()> {
    let upstream = Registry::start()?;
    let empty_mirror = Registry::start()?;
    let down = format!("http://127.0.0.1:{}", free_port()?);
    let image = small_image("only-upstream")?;
    upstream
        .push_client()?
        .push_image("lib/app", "1.0", &image)
        .await?;

    let certs = CertsDir::new()?;
    certs.write_hosts(
        &upstream.host(),
        &hosts_toml(
            &upstream.host(),
            &[
                (&down, &["pull", "resolve"]),
                (&empty_mirror.base_url(), &["pull", "resolve"]),
            ],
        ),
    )?;
    let (_daemon, cri) = node(&certs, None).await?;
    let wanted = upstream.reference("lib/app", "1.0");
    assert_eq!(pull_ok(&cri, &wanted).await?, image.id());
    assert!(
        read_log(&empty_mirror.log_path()).contains("/v2/lib/app/manifests/1.0?ns="),
        "the reachable mirror was asked first"
    );

    // Missing everywhere: one error naming every host, and NotFound wins over "unreachable".
    let missing = pull_err(&cri, &upstream.reference("lib/app", "nope")).await;
    assert_eq!(
        missing.code(),
        tonic::Code::NotFound,
        "{}",
        missing.message()
    );
    let msg = missing.message();
    for host in [&down, &empty_mirror.base_url(), &upstream.base_url()] {
        assert!(msg.contains(host.as_str()), "{host} missing from: {msg}");
    }
    Ok(())
}

/// A mirror with only `pull` never resolves a tag (the server does), but serves content by digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_only_mirror_is_not_asked_to_resolve_tags() -> Result<()> {
    let upstream = Registry::start()?;
    let mirror = Registry::start()?;
    let real = small_image("the-real-v1")?;
    let impostor = small_image("what-the-mirror-calls-v1")?;
    upstream
        .push_client()?
        .push_image("app", "v1", &real)
        .await?;
    let mpush = mirror.push_client()?;
    mpush.push_image_untagged("app", &real).await?;
    mpush.push_image("app", "v1", &impostor).await?;
    // The upstream keeps the tag, but not the content: only the mirror can serve it.
    for digest in real
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .chain([real.config_digest.clone()])
    {
        std::fs::remove_file(upstream.blob_data_path(&digest))
            .with_context(|| format!("removing {digest} from the upstream's storage"))?;
    }

    let certs = CertsDir::new()?;
    certs.write_hosts(
        &upstream.host(),
        &hosts_toml(&upstream.host(), &[(&mirror.base_url(), &["pull"])]),
    )?;
    let (_daemon, cri) = node(&certs, None).await?;
    let id = pull_ok(&cri, &upstream.reference("app", "v1")).await?;
    assert_eq!(
        id,
        real.id(),
        "the tag was resolved upstream, not on the mirror"
    );
    let log = read_log(&mirror.log_path());
    // (The log also holds the pushes: look at reads only.)
    assert!(
        !log.contains("\"GET /v2/app/manifests/v1") && !log.contains("\"HEAD /v2/app/manifests/v1"),
        "the mirror was asked to resolve a tag:\n{log}"
    );
    assert!(
        log.contains("\"GET /v2/app/blobs/sha256:"),
        "content came from the mirror:\n{log}"
    );
    Ok(())
}

/// `busybox` means `docker.io/library/busybox:latest`, and the docker.io folder's mirror serves
/// it (the upstream named in that folder is local, so nothing leaves the machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_hub_names_go_through_the_docker_io_folder() -> Result<()> {
    let stand_in_upstream = Registry::start()?;
    let mirror = Registry::start()?;
    let image = small_image("hub-busybox")?;
    mirror
        .push_client()?
        .push_image("library/busybox", "latest", &image)
        .await?;
    let certs = CertsDir::new()?;
    certs.write_hosts(
        "docker.io",
        &hosts_toml(
            &stand_in_upstream.host(),
            &[(&mirror.base_url(), &["pull", "resolve"])],
        ),
    )?;
    let (_daemon, cri) = node(&certs, None).await?;
    assert_eq!(pull_ok(&cri, "busybox").await?, image.id());
    assert_eq!(
        repo_tags(&cri, "busybox").await?,
        vec!["docker.io/library/busybox:latest".to_string()]
    );
    assert!(
        read_log(&mirror.log_path()).contains("/v2/library/busybox/manifests/latest?ns=docker.io"),
        "the mirror is asked for library/busybox with ?ns=docker.io"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS

/// A TLS registry is trusted through `ca` (a path relative to the hosts.toml), as server and as
/// mirror; without it the certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_a_test_ca() -> Result<()> {
    let pair = tls_pair()?;
    let image = small_image("over-tls")?;
    pair.plain
        .push_client()?
        .push_image("secure/app", "v1", &image)
        .await?;
    let certs = CertsDir::new()?;
    let (_daemon, cri) = node(&certs, None).await?;
    let wanted = pair.tls.reference("secure/app", "v1");

    // HTTPS without the CA: the unknown issuer is refused.
    certs.write_hosts(
        &pair.tls.host(),
        &format!("server = \"https://{}\"\n", pair.tls.host()),
    )?;
    let refused = pull_err(&cri, &wanted).await;
    assert!(
        refused.message().to_lowercase().contains("certificate"),
        "{}",
        refused.message()
    );

    // The CA next to hosts.toml, by relative path; the folder is read again on this pull.
    certs.write_file(&pair.tls.host(), "test-ca.pem", pair.ca_pem.as_bytes())?;
    certs.write_hosts(
        &pair.tls.host(),
        &format!(
            "server = \"https://{}\"\nca = \"test-ca.pem\"\n",
            pair.tls.host()
        ),
    )?;
    assert_eq!(pull_ok(&cri, &wanted).await?, image.id());

    // The same TLS registry as a mirror of a plain registry that lacks the image.
    let upstream = Registry::start()?;
    let ca_path = certs.write_file(&upstream.host(), "mirror-ca.pem", pair.ca_pem.as_bytes())?;
    certs.write_hosts(
        &upstream.host(),
        &format!(
            "server = \"http://{}\"\n\n[host.\"https://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {:?}\n",
            upstream.host(),
            pair.tls.host(),
            ca_path.display().to_string()
        ),
    )?;
    let via_mirror = upstream.reference("secure/app", "v1");
    assert_eq!(pull_ok(&cri, &via_mirror).await?, image.id());
    // One image, now known by both names.
    assert!(repo_tags(&cri, &via_mirror).await?.contains(&via_mirror));
    assert!(
        pair.tls.log().contains("ns="),
        "pulled through the TLS mirror"
    );
    Ok(())
}

/// `skip_verify = true` accepts a certificate nobody vouches for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_skip_verify() -> Result<()> {
    let pair = tls_pair()?;
    let image = small_image("skip-verify")?;
    pair.plain
        .push_client()?
        .push_image("unverified/app", "v1", &image)
        .await?;
    let certs = CertsDir::new()?;
    certs.write_hosts(
        &pair.tls.host(),
        &format!(
            "server = \"https://{}\"\nskip_verify = true\n",
            pair.tls.host()
        ),
    )?;
    let (_daemon, cri) = node(&certs, None).await?;
    assert_eq!(
        pull_ok(&cri, &pair.tls.reference("unverified/app", "v1")).await?,
        image.id()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// credentials

/// A pull without AuthConfig uses the `--registry-credentials` file's entry for the host (for a
/// mirror too); the secrets never reach the daemon's log, even at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_a_docker_config_json() -> Result<()> {
    let password = "s3cret-mirror-pw";
    let private = Registry::start_with_auth("puller", password)?;
    let image = small_image("private")?;
    private
        .push_client()?
        .push_image("private/app", "v1", &image)
        .await?;
    let certs = CertsDir::new()?;
    let creds_dir = tempfile::tempdir()?;
    let creds_file = creds_dir.path().join("config.json");
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("puller:{password}"));
    std::fs::write(
        &creds_file,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{encoded}"}}}}}}"#,
            private.host()
        ),
    )?;
    let (daemon, cri) = node(&certs, Some(&creds_file)).await?;

    // Straight from the private registry.
    let wanted = private.reference("private/app", "v1");
    assert_eq!(pull_ok(&cri, &wanted).await?, image.id());

    // Through it as a mirror of a plain registry that lacks the image.
    let upstream = Registry::start()?;
    certs.write_hosts(
        &upstream.host(),
        &hosts_toml(
            &upstream.host(),
            &[(&private.base_url(), &["pull", "resolve"])],
        ),
    )?;
    assert_eq!(
        pull_ok(&cri, &upstream.reference("private/app", "v1")).await?,
        image.id()
    );

    // A wrong password: refused, and the file's content is not echoed.
    let wrong = base64::engine::general_purpose::STANDARD.encode("puller:not-the-password");
    std::fs::write(
        &creds_file,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{wrong}"}}}}}}"#,
            private.host()
        ),
    )?;
    let refused = pull_err(&cri, &private.reference("private/app", "v2")).await;
    assert_eq!(
        refused.code(),
        tonic::Code::Unauthenticated,
        "{}",
        refused.message()
    );
    assert!(!refused.message().contains("not-the-password"));

    let log = std::fs::read_to_string(daemon.log_path())?;
    for secret in [
        password,
        encoded.as_str(),
        "not-the-password",
        wrong.as_str(),
    ] {
        assert!(!log.contains(secret), "a secret reached the daemon log");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// configuration errors and the operator's view

/// A hosts.toml with a syntax error fails pulls from its registry with the file and line named;
/// other registries still pull; the fixed file applies without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syntax_error_in_hosts_toml_is_reported_and_contained() -> Result<()> {
    let broken = Registry::start()?;
    let fine = Registry::start()?;
    let image = small_image("config-errors")?;
    broken
        .push_client()?
        .push_image("app", "v1", &image)
        .await?;
    fine.push_client()?.push_image("app", "v1", &image).await?;
    let certs = CertsDir::new()?;
    let file = certs.write_hosts(
        &broken.host(),
        &format!(
            "server = \"http://{}\"\n\n[host.\"http://127.0.0.1:1\"\n  capabilities = [\"pull\"]\n",
            broken.host()
        ),
    )?;
    let (_daemon, cri) = node(&certs, None).await?;

    let err = pull_err(&cri, &broken.reference("app", "v1")).await;
    let msg = err.message();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{msg}");
    assert!(
        msg.contains(&format!("{} line 3", file.display())),
        "the error names the file and line: {msg}"
    );
    assert_eq!(
        pull_ok(&cri, &fine.reference("app", "v1")).await?,
        image.id()
    );

    certs.write_hosts(
        &broken.host(),
        &format!("server = \"http://{}\"\n", broken.host()),
    )?;
    assert_eq!(
        pull_ok(&cri, &broken.reference("app", "v1")).await?,
        image.id()
    );
    Ok(())
}

/// `keelson-runtime registries resolve` prints the hosts in order with their capabilities and
/// the manifest request's URL, and the hosts.toml error when there is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_resolve_shows_the_order() -> Result<()> {
    let certs = CertsDir::new()?;
    let registry = "127.0.0.1:5999";
    let file = certs.write_hosts(
        registry,
        "server = \"http://127.0.0.1:5999\"\n\n[host.\"http://127.0.0.1:6001\"]\n  capabilities = [\"pull\"]\n[host.\"http://127.0.0.1:6002\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
    )?;
    let out = registries_resolve(certs.path(), None, &format!("{registry}/team/app:v1"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = text
        .find("1. mirror http://127.0.0.1:6001")
        .context(text.to_string())?;
    let second = text
        .find("2. mirror http://127.0.0.1:6002")
        .context(text.to_string())?;
    let third = text
        .find("3. server http://127.0.0.1:5999")
        .context(text.to_string())?;
    assert!(first < second && second < third, "{text}");
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("capabilities: pull\n"), "{text}");
    assert!(
        text.contains(
            "manifest request: GET http://127.0.0.1:6002/v2/team/app/manifests/v1?ns=127.0.0.1%3A5999"
        ),
        "{text}"
    );

    // Docker Hub, no folder: the real upstream is shown (and not contacted).
    let out = registries_resolve(certs.path(), None, "busybox")?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "manifest request: GET https://registry-1.docker.io/v2/library/busybox/manifests/latest"
        ),
        "{text}"
    );

    // A broken file: the error, with its line, and a failure status.
    certs.write_hosts(registry, "server = [\n")?;
    let out = registries_resolve(certs.path(), None, &format!("{registry}/team/app:v1"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{} line", file.display())),
        "{stderr}"
    );
    Ok(())
}
