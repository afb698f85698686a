//! Quick figures for the embedded store (ignored by default; run with
//! `cargo test -p keelson-server --test store measure -- --ignored --nocapture`):
//! list of 5000 keys of ~2 KiB at one revision, watch delivery latency with 100 watchers,
//! and the process RSS after loading.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keelson_server::store::{EmbeddedConfig, EmbeddedStore, Store, WatchEvent};

use crate::support::value;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; prints figures"]
async fn measure_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::default();
    if let Some(mb) = std::env::var("KEELSON_MEASURE_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        config.cache_size = mb << 20;
    }
    println!("redb cache: {} MiB", config.cache_size >> 20);
    let store = Arc::new(EmbeddedStore::open(dir.path(), config).unwrap());
    let rss_start = rss_mib();

    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..5000).step_by(32) {
                let key = format!("/registry/pods/ns{}/pod-{i:05}", i % 10);
                store.create(&key, value(&key, 2048)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "load: 5000 creates of 2 KiB, 32 concurrent: {:?}; rss {:.1} MiB",
        t.elapsed(),
        rss_mib()
    );

    let mut full = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let l = store.list("/registry/pods/", 0, None).await.unwrap();
        full.push(t.elapsed());
        assert_eq!(l.items.len(), 5000);
        drop(l);
        println!("rss after a full list: {:.1} MiB", rss_mib());
    }
    full.sort();
    let mut paged = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0;
        let mut cont = None;
        loop {
            let page = store.list("/registry/pods/", 500, cont).await.unwrap();
            n += page.items.len();
            cont = page.continuation();
            if cont.is_none() {
                break;
            }
        }
        paged.push(t.elapsed());
        assert_eq!(n, 5000);
    }
    paged.sort();
    println!(
        "list 5000 x 2 KiB: one call median {:?} (min {:?}); pages of 500 median {:?}",
        full[2], full[0], paged[2]
    );
    println!(
        "rss: {:.1} MiB at start, {:.1} MiB with 5000 pods loaded and listed",
        rss_start,
        rss_mib()
    );

    // 100 watchers; 300 writes paced 5 ms apart; latency = delivery time - write start.
    let base = Instant::now();
    let from = store.current_revision().await.unwrap();
    let mut watchers = Vec::new();
    for _ in 0..100 {
        let mut w = store.watch("/registry/pods/", from).await.unwrap();
        watchers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while lat.len() < 300 {
                match w.next().await.unwrap().unwrap() {
                    WatchEvent::Put { kv, .. } => {
                        let sent: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                        let now = base.elapsed().as_micros() as u64;
                        lat.push(Duration::from_micros(now.saturating_sub(sent)));
                    }
                    _ => continue,
                }
            }
            lat
        }));
    }
    let mut write_lat = Vec::new();
    for i in 0..300 {
        let key = format!("/registry/pods/ns{}/pod-{i:05}", i % 10);
        let sent = base.elapsed().as_micros() as u64;
        store
            .update(&key, Bytes::from(sent.to_string()), None)
            .await
            .unwrap();
        write_lat.push(Duration::from_micros(
            base.elapsed().as_micros() as u64 - sent,
        ));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut all = Vec::new();
    for w in watchers {
        all.extend(w.await.unwrap());
    }
    all.sort();
    write_lat.sort();
    println!(
        "watch delivery, 100 watchers x 300 events: p50 {:?} p99 {:?} max {:?} (includes the durable commit; commit alone p50 {:?} p99 {:?})",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().unwrap(),
        percentile(&write_lat, 0.5),
        percentile(&write_lat, 0.99),
    );
    println!("rss after watch run: {:.1} MiB", rss_mib());
}
