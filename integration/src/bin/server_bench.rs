//! `make bench`, control-plane part: how keelson-server copes with 5000 pods. Creates them,
//! lists them (JSON and the Table kubectl asks for), measures write-to-event delivery with 100
//! concurrent watchers, and reports the server's memory. Prints figures; asserts nothing about
//! time.
//!
//! The server (found through `KEELSON_BIN_DIR`, a release build under `make bench`) runs on a
//! loopback port with a temporary data directory; `--store etcd` benchmarks the etcd backend
//! against a throwaway etcd on loopback when `/usr/bin/etcd` exists. `BENCH_SERVER_ARGS` adds
//! flags to the server (e.g. `--scheduler=false` to see the scheduler's share of memory).
//!
//! The API figures use pods bound to a node at creation, so the scheduler has nothing to do
//! while they are taken; the scheduler's own figure comes last.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use keelson_integration::daemon::proc_status_kib;
use keelson_integration::{bin_dir, init_crypto, spawn_tied};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const PODS: usize = 5000;
const CREATORS: usize = 16;
const LIST_RUNS: usize = 7;
const WATCHERS: usize = 100;
const WATCH_WRITES: usize = 200;
const WRITE_GAP: Duration = Duration::from_millis(10);
const NAMESPACE: &str = "bench";
/// The node the API benchmark's pods are bound to.
const BOUND_NODE: &str = "bench-node";
const SCHED_NODES: usize = 10;
const SCHED_PODS: usize = 1000;

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn mib_of_kib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway single-member etcd on loopback.
fn start_etcd(dir: &Path) -> Result<(Proc, u16)> {
    let client = free_port()?;
    let peer = free_port()?;
    let mut cmd = Command::new("/usr/bin/etcd");
    cmd.arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
        .arg("--log-level=error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = spawn_tied(cmd).context("starting etcd")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        if Instant::now() > deadline {
            bail!("etcd did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((Proc { child }, client))
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let resp = req.send().await.with_context(|| what.to_string())?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!("{what}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

/// A bench pod; `node` binds it at creation (the API figures then leave the scheduler idle).
fn pod(i: usize, node: Option<&str>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("pod-{i}"), "labels": {"app": "bench", "shard": (i % 10).to_string()}},
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "app",
                "image": "registry.example/bench/app:1",
                "command": ["/bin/sh", "-c", "sleep 3600"],
                "ports": [{"containerPort": 8080}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            }],
        },
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    init_crypto();
    let use_etcd = std::env::args().any(|a| a == "--store=etcd" || a == "etcd");
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut _etcd = None;
    let store = if use_etcd {
        if !Path::new("/usr/bin/etcd").exists() {
            println!("server bench (etcd): /usr/bin/etcd not found, skipped");
            return Ok(());
        }
        let (p, port) = start_etcd(dir.path())?;
        _etcd = Some(p);
        format!("etcd://127.0.0.1:{port}")
    } else {
        "embedded".to_string()
    };
    let port = free_port()?;
    let mut cmd = Command::new(bin_dir().join("keelson-server"));
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--store")
        .arg(&store)
        .args(
            std::env::var("BENCH_SERVER_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("server.log")).map(Stdio::from)?);
    let server = Proc {
        child: spawn_tied(cmd).context("starting keelson-server")?,
    };
    let pid = server.child.id();
    let ca = data.join("pki/ca.crt");
    let token_file = data.join("pki/admin.token");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(ca.exists() && token_file.exists()) {
        if Instant::now() > deadline {
            bail!("keelson-server did not write its credentials");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&ca)?)?])
        .http1_only()
        .pool_max_idle_per_host(64)
        .build()?;
    let client = Arc::new(Client {
        http,
        base: format!("https://127.0.0.1:{port}"),
        token: std::fs::read_to_string(&token_file)?.trim().to_string(),
    });
    loop {
        let ready = client
            .request(reqwest::Method::GET, "/readyz")
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("keelson-server not ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle_kib = proc_status_kib(pid, "VmRSS")?;
    println!("server bench ({store} store), keelson-server pid {pid}");
    println!("  RSS idle: {:.1} MiB", mib_of_kib(idle_kib));

    client
        .send(
            client
                .request(reqwest::Method::POST, "/api/v1/namespaces")
                .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})),
            "creating the bench namespace",
        )
        .await?;

    create_node(&client, BOUND_NODE).await?;

    // Create.
    let started = Instant::now();
    let next = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for _ in 0..CREATORS {
        let client = client.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = {
                    let mut n = next.lock().await;
                    if *n >= PODS {
                        return Ok::<_, anyhow::Error>(lat);
                    }
                    *n += 1;
                    *n - 1
                };
                let t = Instant::now();
                client
                    .send(
                        client
                            .request(
                                reqwest::Method::POST,
                                &format!("/api/v1/namespaces/{NAMESPACE}/pods"),
                            )
                            .json(&pod(i, Some(BOUND_NODE))),
                        "creating a pod",
                    )
                    .await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut create_lat = Vec::new();
    for t in tasks {
        create_lat.extend(t.await??);
    }
    let create_time = started.elapsed();
    create_lat.sort();
    println!(
        "  create {PODS} pods ({CREATORS} clients): {:.2} s, {:.0} pods/s, per request median {:.2} ms p99 {:.2} ms",
        create_time.as_secs_f64(),
        PODS as f64 / create_time.as_secs_f64(),
        ms(percentile(&create_lat, 0.5)),
        ms(percentile(&create_lat, 0.99)),
    );
    println!(
        "  RSS with {PODS} pods: {:.1} MiB",
        mib_of_kib(proc_status_kib(pid, "VmRSS")?)
    );

    // List.
    for (name, accept) in [
        ("JSON", "application/json"),
        (
            "Table (kubectl get)",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        ),
    ] {
        let mut runs = Vec::new();
        let mut bytes = 0;
        let mut items = 0;
        for _ in 0..LIST_RUNS {
            let t = Instant::now();
            let resp = client
                .request(
                    reqwest::Method::GET,
                    &format!("/api/v1/namespaces/{NAMESPACE}/pods"),
                )
                .header("Accept", accept)
                .send()
                .await?;
            let body = resp.bytes().await?;
            runs.push(t.elapsed());
            bytes = body.len();
            let v: Value = serde_json::from_slice(&body)?;
            items = v["items"]
                .as_array()
                .or_else(|| v["rows"].as_array())
                .map_or(0, Vec::len);
        }
        if items != PODS {
            bail!("list ({name}) returned {items} objects, expected {PODS}");
        }
        runs.sort();
        println!(
            "  list {PODS} pods as {name}: median {:.1} ms, min {:.1} ms, max {:.1} ms ({:.1} MiB body, {LIST_RUNS} runs)",
            ms(percentile(&runs, 0.5)),
            ms(runs[0]),
            ms(runs[runs.len() - 1]),
            bytes as f64 / (1024.0 * 1024.0),
        );
    }
    println!(
        "  RSS after lists: {:.1} MiB (peak {:.1} MiB)",
        mib_of_kib(proc_status_kib(pid, "VmRSS")?),
        mib_of_kib(proc_status_kib(pid, "VmHWM")?)
    );

    // Watch delivery.
    let list = client
        .send(
            client.request(
                reqwest::Method::GET,
                &format!("/api/v1/namespaces/{NAMESPACE}/pods?limit=1"),
            ),
            "reading the list revision",
        )
        .await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("list without resourceVersion")?
        .to_string();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(WATCHERS);
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let client = client.clone();
        let rv = rv.clone();
        let ready = ready_tx.clone();
        watchers.push(tokio::spawn(async move {
            let resp = client
                .request(
                    reqwest::Method::GET,
                    &format!(
                        "/api/v1/namespaces/{NAMESPACE}/pods?watch=1&resourceVersion={rv}&labelSelector=app%3Dbench"
                    ),
                )
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("watch: {}", resp.status());
            }
            let _ = ready.send(()).await;
            let mut stream = resp.bytes_stream();
            let mut buf = Vec::new();
            let mut seen: Vec<(String, Instant)> = Vec::new();
            while seen.len() < WATCH_WRITES {
                let Some(chunk) = stream.next().await else {
                    bail!("watch ended after {} events", seen.len());
                };
                let now = Instant::now();
                buf.extend_from_slice(&chunk?);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let ev: Value = serde_json::from_slice(&line)?;
                    if ev["type"] == "MODIFIED"
                        && let Some(seq) =
                            ev["object"]["metadata"]["annotations"]["bench/seq"].as_str()
                    {
                        seen.push((seq.to_string(), now));
                    }
                }
            }
            Ok(seen)
        }));
    }
    drop(ready_tx);
    for _ in 0..WATCHERS {
        ready_rx.recv().await.context("a watcher failed to start")?;
    }
    // Give the watch streams a moment to be registered server-side.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..WATCH_WRITES {
        let seq = i.to_string();
        sent.lock().await.insert(seq.clone(), Instant::now());
        client
            .send(
                client
                    .request(
                        reqwest::Method::PATCH,
                        &format!("/api/v1/namespaces/{NAMESPACE}/pods/pod-{}", i * 7 % PODS),
                    )
                    .header("Content-Type", "application/merge-patch+json")
                    .body(json!({"metadata": {"annotations": {"bench/seq": seq}}}).to_string()),
                "patching a pod",
            )
            .await?;
        tokio::time::sleep(WRITE_GAP).await;
    }
    let sent = sent.lock().await.clone();
    let mut delivery = Vec::new();
    for w in watchers {
        let seen = tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .context("a watcher did not see every write within 60 s")???;
        for (seq, at) in seen {
            if let Some(t0) = sent.get(&seq) {
                delivery.push(at.saturating_duration_since(*t0));
            }
        }
    }
    delivery.sort();
    println!(
        "  watch delivery, {WATCHERS} watchers x {WATCH_WRITES} writes ({} events): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        delivery.len(),
        ms(percentile(&delivery, 0.5)),
        ms(percentile(&delivery, 0.99)),
        ms(delivery.last().copied().unwrap_or_default()),
    );
    println!(
        "  RSS with {WATCHERS} watchers: {:.1} MiB (peak {:.1} MiB)",
        mib_of_kib(proc_status_kib(pid, "VmRSS")?),
        mib_of_kib(proc_status_kib(pid, "VmHWM")?)
    );
    scheduler_bench(&client).await?;
    println!(
        "  RSS at the end: {:.1} MiB (peak {:.1} MiB)",
        mib_of_kib(proc_status_kib(pid, "VmRSS")?),
        mib_of_kib(proc_status_kib(pid, "VmHWM")?)
    );
    drop(server);
    Ok(())
}

/// A Ready node with room for 110 pods, 8 CPUs and 32 GiB.
async fn create_node(client: &Client, name: &str) -> Result<()> {
    client
        .send(
            client
                .request(reqwest::Method::POST, "/api/v1/nodes")
                .json(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})),
            "creating a node",
        )
        .await?;
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "bench"}],
        "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
    }});
    client
        .send(
            client
                .request(
                    reqwest::Method::PATCH,
                    &format!("/api/v1/nodes/{name}/status"),
                )
                .header("Content-Type", "application/merge-patch+json")
                .body(status.to_string()),
            "marking a node ready",
        )
        .await?;
    Ok(())
}

/// The built-in scheduler's throughput: pods created unbound, time until every one is bound.
async fn scheduler_bench(client: &Client) -> Result<()> {
    let ns = "bench-sched";
    client
        .send(
            client
                .request(reqwest::Method::POST, "/api/v1/namespaces")
                .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
            "creating the scheduler bench namespace",
        )
        .await?;
    for n in 0..SCHED_NODES {
        create_node(client, &format!("sched-node-{n}")).await?;
    }
    let started = Instant::now();
    for i in 0..SCHED_PODS {
        client
            .send(
                client
                    .request(
                        reqwest::Method::POST,
                        &format!("/api/v1/namespaces/{ns}/pods"),
                    )
                    .json(&pod(i, None)),
                "creating an unbound pod",
            )
            .await?;
    }
    let created = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let left = client
            .send(
                client.request(
                    reqwest::Method::GET,
                    &format!("/api/v1/namespaces/{ns}/pods?fieldSelector=spec.nodeName%3D"),
                ),
                "listing unbound pods",
            )
            .await?["items"]
            .as_array()
            .map_or(0, Vec::len);
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{left} of {SCHED_PODS} pods still unbound after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all = started.elapsed();
    println!(
        "  scheduler: {SCHED_PODS} pods onto {SCHED_NODES} nodes, created in {:.2} s, all bound after {:.2} s ({:.0} pods/s)",
        created.as_secs_f64(),
        all.as_secs_f64(),
        SCHED_PODS as f64 / all.as_secs_f64()
    );
    Ok(())
}
