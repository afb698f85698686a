//! The conformance suite instantiated per backend, plus embedded-only behaviour.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keelson_server::store::{EmbeddedConfig, Store};

use crate::conformance;
use crate::support::{EmbeddedFixture, EtcdFixture, Fixture, embedded_test_config, next_change};

macro_rules! suite {
    ($backend:ident, $fixture:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn crud() {
                let mut f = $fixture;
                conformance::crud(f.store().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn list_paging() {
                let mut f = $fixture;
                conformance::list_paging(f.store().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watch_replays_history() {
                let mut f = $fixture;
                conformance::watch_replays_history(f.store().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watch_live() {
                let mut f = $fixture;
                conformance::watch_live(f.store().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn compaction() {
                let mut f = $fixture;
                conformance::compaction(f.store().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fan_out() {
                let mut f = $fixture;
                conformance::fan_out(f.store().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn progress() {
                let mut f = $fixture;
                conformance::progress(f.store().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn restart() {
                let mut f = $fixture;
                conformance::restart(&mut f).await;
            }
        }
    };
}

suite!(embedded, EmbeddedFixture::new());
suite!(etcd, EtcdFixture::new().await);

/// A watcher that stopped reading, whose missed history is then compacted, ends with
/// Compacted (the API server's 410) instead of silently skipping events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_lagging_watcher_gets_compacted() {
    let mut f = EmbeddedFixture::new();
    let store = f.store().await;
    let from = store.current_revision().await.unwrap();
    let mut w = store.watch("/lag/", from).await.unwrap();
    // Far more events than the in-memory buffer (64) holds.
    for i in 0..300 {
        store
            .create(&format!("/lag/{i}"), Bytes::new())
            .await
            .unwrap();
    }
    let now = store.current_revision().await.unwrap();
    store.compact(now - 10).await.unwrap();
    let mut delivered = 0;
    let err = loop {
        match next_change(&mut w, Duration::from_secs(10)).await {
            Ok(e) => {
                assert_eq!(e.revision(), from + 1 + delivered);
                delivered += 1;
            }
            Err(e) => break e,
        }
    };
    assert!(err.is_compacted(), "{err}");
    assert!(delivered < 300);
    assert!(w.next().await.is_none(), "the stream ends after the error");
}

/// Background retention keeps `retain_revisions` revisions once they are older than
/// `retain_for`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_background_compaction() {
    let mut f = EmbeddedFixture::with_config(EmbeddedConfig {
        retain_revisions: 50,
        retain_for: Duration::ZERO,
        compaction_interval: Some(Duration::from_millis(50)),
        ..embedded_test_config()
    });
    let store = f.store().await;
    for i in 0..200 {
        store
            .create(&format!("/bg/{i}"), Bytes::new())
            .await
            .unwrap();
    }
    let now = store.current_revision().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match store.watch("/bg/", now - 51).await {
            Err(e) if e.is_compacted() => break,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("history was not compacted: {other:?}"),
        }
    }
    // The last 50 revisions are still there.
    let mut w = store.watch("/bg/", now - 50).await.unwrap();
    assert_eq!(
        next_change(&mut w, Duration::from_secs(5))
            .await
            .unwrap()
            .revision(),
        now - 49
    );
}

/// History younger than `retain_for` is kept even beyond `retain_revisions`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_retention_keeps_recent_history() {
    let mut f = EmbeddedFixture::with_config(EmbeddedConfig {
        retain_revisions: 10,
        retain_for: Duration::from_secs(3600),
        compaction_interval: Some(Duration::from_millis(20)),
        ..embedded_test_config()
    });
    let store = f.store().await;
    let start = store.current_revision().await.unwrap();
    for i in 0..100 {
        store
            .create(&format!("/keep/{i}"), Bytes::new())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut w = store.watch("/keep/", start).await.unwrap();
    let first = next_change(&mut w, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.revision(), start + 1);
}

/// A second process (or store) cannot open a store that is in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_is_exclusive() {
    let mut f = EmbeddedFixture::new();
    let _store = f.store().await;
    let err = match keelson_server::store::EmbeddedStore::open(f.path(), embedded_test_config()) {
        Ok(_) => panic!("opened a store twice"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("in use"), "{err}");
}

/// `open` picks the backend from the `--store` URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = keelson_server::store::StoreUrl::parse("").unwrap();
    let store: Arc<dyn Store> = keelson_server::store::open(&url, dir.path()).await.unwrap();
    store
        .create("/u/a", Bytes::from_static(b"a"))
        .await
        .unwrap();
    assert!(dir.path().join("store").join("keelson.redb").exists());
}
