//! `make bench`: how fast keelson-runtime pulls a multi-layer image compared with skopeo, and
//! how much memory the daemon uses. Prints figures; asserts nothing about time.
//!
//! Everything runs on loopback: a private registry, skopeo copying from it into a directory,
//! and the daemon (found through `KEELSON_BIN_DIR`, a release build under `make bench`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keelson_cri::v1::{ImageSpec, ImageStatusRequest, PullImageRequest, RemoveImageRequest};
use keelson_integration::daemon::{DaemonOptions, RuntimeDaemon, proc_status_kib};
use keelson_integration::oci::{Compression, Entry, Layer, ManifestFormat, pseudo_random_bytes};
use keelson_integration::registry::Registry;
use keelson_integration::{bin_dir, busybox};

const EXTRA_LAYERS: usize = 4;
const LAYER_BYTES: usize = 8 << 20;
const FILE_BYTES: usize = 1 << 20;
const CHUNK: usize = 64 << 10;
const RUNS: usize = 3;
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
const REPO: &str = "bench/multi";
const TAG: &str = "1";

/// ~8 MiB in 1 MiB files: alternating 64 KiB chunks of random bytes and of repetitive text.
fn bench_layer(index: usize) -> Result<Layer> {
    let mut entries = vec![Entry::dir(&format!("bench{index}"))];
    for file in 0..LAYER_BYTES / FILE_BYTES {
        let mut text = Vec::with_capacity(CHUNK + 100);
        let mut line = 0;
        while text.len() < CHUNK {
            text.extend_from_slice(
                format!("layer {index} file {file} line {line}: keelson bench data\n").as_bytes(),
            );
            line += 1;
        }
        text.truncate(CHUNK);
        let mut data = Vec::with_capacity(FILE_BYTES);
        for chunk in 0..FILE_BYTES / CHUNK {
            if chunk % 2 == 0 {
                let seed = ((index as u64) << 32) | ((file as u64) << 16) | chunk as u64;
                data.extend(pseudo_random_bytes(seed, CHUNK));
            } else {
                data.extend_from_slice(&text);
            }
        }
        entries.push(Entry::file(&format!("bench{index}/file{file}.bin"), data));
    }
    Layer::new(&entries, Compression::Gzip)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

/// `skopeo copy` of the image into a fresh `dir:` destination; returns the wall time.
fn skopeo_copy(reference: &str) -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("image");
    let start = Instant::now();
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dest.display()))
        .stdin(Stdio::null())
        .output()
        .context("running skopeo (apt-get install skopeo)")?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!(
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(elapsed)
}

fn print_runs(name: &str, runs: &[Duration]) -> Duration {
    let best = runs.iter().copied().min().unwrap_or_default();
    let all: Vec<String> = runs.iter().map(|d| format!("{:.0}", ms(*d))).collect();
    println!(
        "{name:<28} best {:>8.1} ms   runs [{}] ms",
        ms(best),
        all.join(", ")
    );
    best
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    println!(
        "keelson-bench: image pull (binaries from {})",
        bin_dir().display()
    );

    let start = Instant::now();
    let mut layers = Vec::with_capacity(EXTRA_LAYERS);
    for i in 0..EXTRA_LAYERS {
        layers.push(bench_layer(i)?);
    }
    let image = busybox::image_with(
        layers,
        &busybox::config(),
        ManifestFormat::Oci,
        Compression::Gzip,
    )?;
    println!(
        "image: {} layers (gzip), {:.1} MiB compressed, {:.1} MiB of tar, built in {:.0} ms",
        image.layers.len(),
        mib(image.size()),
        mib(image.unpacked_tar_size()),
        ms(start.elapsed())
    );

    let registry = Registry::start()?;
    let start = Instant::now();
    registry
        .push_client()?
        .push_image(REPO, TAG, &image)
        .await?;
    let reference = registry.reference(REPO, TAG);
    println!(
        "pushed {reference} in {:.0} ms (manifest {})",
        ms(start.elapsed()),
        image.manifest_digest
    );

    let mut skopeo_runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        skopeo_runs.push(skopeo_copy(&reference)?);
    }

    let daemon = RuntimeDaemon::start(DaemonOptions::default()).await?;
    let pid = daemon.pid().context("daemon pid")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = proc_status_kib(pid, "VmRSS")?;
    let mut cri = daemon.image_client().await?;
    let mut pull_runs = Vec::with_capacity(RUNS);
    let mut rss_after_pull = 0;
    for run in 0..RUNS {
        let start = Instant::now();
        let pulled = tokio::time::timeout(
            PULL_TIMEOUT,
            cri.pull_image(PullImageRequest {
                image: spec(&reference),
                auth: None,
                sandbox_config: None,
            }),
        )
        .await
        .context("pull timed out")?
        .with_context(|| format!("pull {run}"))?
        .into_inner();
        pull_runs.push(start.elapsed());
        if pulled.image_ref != image.id() {
            eprintln!(
                "warning: PullImage returned {:?}, expected {}",
                pulled.image_ref,
                image.id()
            );
        }
        rss_after_pull = rss_after_pull.max(proc_status_kib(pid, "VmRSS")?);
        // Remove it, so the next pull is a cold one.
        cri.remove_image(RemoveImageRequest {
            image: spec(&image.id()),
        })
        .await
        .with_context(|| format!("remove after pull {run}"))?;
        let status = cri
            .image_status(ImageStatusRequest {
                image: spec(&image.id()),
                verbose: false,
            })
            .await?
            .into_inner();
        if status.image.is_some() {
            eprintln!("warning: image still present after RemoveImage; later pulls may be warm");
        }
    }
    let rss_end = proc_status_kib(pid, "VmRSS")?;
    let rss_peak = proc_status_kib(pid, "VmHWM")?;

    println!();
    let skopeo_best = print_runs("skopeo copy (docker -> dir)", &skopeo_runs);
    let pull_best = print_runs("keelson-runtime PullImage", &pull_runs);
    println!(
        "ratio keelson/skopeo: {:.2} (skopeo only stores the blobs; PullImage also verifies and unpacks them)",
        ms(pull_best) / ms(skopeo_best).max(0.001)
    );
    println!(
        "keelson-runtime RSS: idle {:.1} MiB, after pulls {:.1} MiB, at the end {:.1} MiB, peak {:.1} MiB",
        rss_idle as f64 / 1024.0,
        rss_after_pull as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        rss_peak as f64 / 1024.0
    );
    drop(daemon);
    drop(registry);
    Ok(())
}
