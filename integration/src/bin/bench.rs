//! `make bench`: how fast keelson-runtime pulls a multi-layer image compared with skopeo, how
//! fast it starts pods (RunPodSandbox + CreateContainer + StartContainer), and how much memory
//! the daemon and its shims use. Prints figures; asserts nothing about time.
//!
//! Everything runs on loopback: a private registry, skopeo copying from it into a directory,
//! and the daemon (found through `KEELSON_BIN_DIR`, a release build under `make bench`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keelson_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, ImageStatusRequest,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PullImageRequest, RemoveImageRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
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
const PODS: usize = 50;
/// A loopback-only pod network for the benchmark (FACTS.md: an unreachable route covers it).
const POD_CIDR: &str = "10.238.0.0/24";
const POD_BRIDGE: &str = "kbench0";
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

    let cni = tempfile::tempdir()?;
    write_pod_network(cni.path())?;
    let daemon = RuntimeDaemon::start(DaemonOptions {
        extra_args: vec![
            "--cni-conf-dir".into(),
            cni.path().join("conf").display().to_string(),
        ],
        ..DaemonOptions::default()
    })
    .await?;
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
    let result = pod_bench(&daemon, &registry).await;
    drop(daemon);
    drop(registry);
    let _ = Command::new("ip")
        .args(["link", "del", POD_BRIDGE])
        .status();
    let _ = Command::new("ip")
        .args(["route", "del", "unreachable", POD_CIDR, "metric", "4000"])
        .status();
    result
}

/// A bridge + host-local network on [`POD_CIDR`], IPAM state inside `dir`.
fn write_pod_network(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("conf"))?;
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"kbench","plugins":[{{"type":"bridge","bridge":"{POD_BRIDGE}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{POD_CIDR}"}}]],"dataDir":"{}"}}}}]}}"#,
        dir.join("ipam").display()
    );
    std::fs::write(dir.join("conf/10-kbench.conflist"), conf)?;
    let _ = Command::new("ip")
        .args(["route", "add", "unreachable", POD_CIDR, "metric", "4000"])
        .stderr(Stdio::null())
        .status();
    Ok(())
}

/// RSS and PSS (KiB) of every shim whose command line names `state`.
fn shim_memory(state: &std::path::Path) -> Vec<(u64, u64)> {
    let needle = state.display().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains("keelson-shim") || !cmdline.contains(&needle) {
            continue;
        }
        let Ok(rollup) = std::fs::read_to_string(dir.join("smaps_rollup")) else {
            continue;
        };
        let field = |name: &str| {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push((field("Rss:"), field("Pss:")));
    }
    out
}

/// Pod-level network and IPC, a PID namespace per container: the kubelet's defaults.
fn per_container_pid() -> NamespaceOption {
    NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// [`PODS`] pods in sequence, each one busybox `sleep` container, image already present.
async fn pod_bench(daemon: &RuntimeDaemon, registry: &Registry) -> Result<()> {
    let busybox_image = busybox::image(ManifestFormat::Oci, Compression::Gzip)?;
    registry
        .push_client()?
        .push_image("bench/busybox", "1", &busybox_image)
        .await?;
    let image = registry.reference("bench/busybox", "1");
    let mut images = daemon.image_client().await?;
    images
        .pull_image(PullImageRequest {
            image: spec(&image),
            auth: None,
            sandbox_config: None,
        })
        .await
        .context("pull busybox for the pod benchmark")?;
    let pid = daemon.pid().context("daemon pid")?;
    let rss_before = proc_status_kib(pid, "VmRSS")?;
    let mut rt = daemon.runtime_client().await?;
    let (mut total, mut runp, mut create, mut start) = (vec![], vec![], vec![], vec![]);
    let mut pods = Vec::with_capacity(PODS);
    let wall = Instant::now();
    for i in 0..PODS {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: format!("bench-{i}"),
                uid: format!("bench-uid-{i}"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            hostname: format!("bench-{i}"),
            // As the kubelet sets pods up unless shareProcessNamespace: a PID namespace per container.
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(per_container_pid()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t0 = Instant::now();
        let pod = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("RunPodSandbox {i}"))?
            .into_inner()
            .pod_sandbox_id;
        let t1 = Instant::now();
        let ctr = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "sleep".into(),
                        attempt: 0,
                    }),
                    image: spec(&image),
                    command: vec!["sleep".into(), "3600".into()],
                    linux: Some(LinuxContainerConfig {
                        security_context: Some(LinuxContainerSecurityContext {
                            namespace_options: Some(per_container_pid()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                sandbox_config: Some(config),
            })
            .await
            .with_context(|| format!("CreateContainer {i}"))?
            .into_inner()
            .container_id;
        let t2 = Instant::now();
        rt.start_container(StartContainerRequest {
            container_id: ctr.clone(),
        })
        .await
        .with_context(|| format!("StartContainer {i}"))?;
        let t3 = Instant::now();
        runp.push(t1 - t0);
        create.push(t2 - t1);
        start.push(t3 - t2);
        total.push(t3 - t0);
        pods.push(pod);
    }
    let wall = wall.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_loaded = proc_status_kib(pid, "VmRSS")?;
    let shims = shim_memory(daemon.state());

    println!();
    for (name, runs) in [
        ("pod start", &mut total),
        ("  RunPodSandbox", &mut runp),
        ("  CreateContainer", &mut create),
        ("  StartContainer", &mut start),
    ] {
        runs.sort();
        println!(
            "{name:<20} median {:7.1} ms   p90 {:7.1} ms   min {:7.1} ms   max {:7.1} ms",
            ms(percentile(runs, 0.5)),
            ms(percentile(runs, 0.9)),
            ms(runs[0]),
            ms(runs[runs.len() - 1])
        );
    }
    println!(
        "{PODS} pods in {:.1} s (sequential, through the CRI socket, no crictl overhead; a PID namespace per container, as the kubelet sets up pods)",
        wall.as_secs_f64()
    );
    println!(
        "keelson-runtime RSS: before pods {:.1} MiB, with {PODS} pods {:.1} MiB",
        rss_before as f64 / 1024.0,
        rss_loaded as f64 / 1024.0
    );
    if !shims.is_empty() {
        let n = shims.len() as f64;
        let (rss, pss): (u64, u64) = shims.iter().fold((0, 0), |a, s| (a.0 + s.0, a.1 + s.1));
        println!(
            "keelson-shim x{}: mean RSS {:.2} MiB, mean PSS {:.2} MiB",
            shims.len(),
            rss as f64 / n / 1024.0,
            pss as f64 / n / 1024.0
        );
    }
    for pod in pods {
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await?;
    }
    Ok(())
}
