//! The conformance suite every backend passes: written once over `Arc<dyn Store>` (and a
//! [`Fixture`] where a restart is needed), instantiated per backend in `backends.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keelson_server::store::{KeyValue, ListContinue, Pages, Store, StoreError, WatchEvent};

use crate::support::{Fixture, next_change, value};

const WAIT: Duration = Duration::from_secs(30);

/// create / get / update with and without preconditions / delete with preconditions.
pub async fn crud(store: Arc<dyn Store>) {
    let key = "/registry/pods/default/a";
    assert_eq!(store.get(key).await.unwrap(), None);
    let r1 = store.create(key, Bytes::from_static(b"v1")).await.unwrap();
    assert!(r1 > 0);
    assert_eq!(store.current_revision().await.unwrap(), r1);
    let kv = store.get(key).await.unwrap().expect("created key");
    assert_eq!(
        kv,
        KeyValue {
            key: key.into(),
            value: Bytes::from_static(b"v1"),
            create_revision: r1,
            mod_revision: r1
        }
    );

    let err = store
        .create(key, Bytes::from_static(b"again"))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::AlreadyExists { key: key.into() });
    assert!(err.to_string().contains(key), "{err}");

    let r2 = store
        .update(key, Bytes::from_static(b"v2"), Some(r1))
        .await
        .unwrap();
    assert!(r2 > r1);
    let err = store
        .update(key, Bytes::from_static(b"stale"), Some(r1))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            key: key.into(),
            current_revision: r2
        }
    );
    let r3 = store
        .update(key, Bytes::from_static(b"v3"), None)
        .await
        .unwrap();
    assert!(r3 > r2);
    let kv = store.get(key).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, &kv.value[..]),
        (r1, r3, &b"v3"[..])
    );

    let missing = "/registry/pods/default/missing";
    assert_eq!(
        store
            .update(missing, Bytes::from_static(b"x"), None)
            .await
            .unwrap_err(),
        StoreError::NotFound {
            key: missing.into()
        }
    );
    assert_eq!(
        store
            .update(missing, Bytes::from_static(b"x"), Some(r3))
            .await
            .unwrap_err(),
        StoreError::NotFound {
            key: missing.into()
        }
    );
    assert_eq!(
        store.delete(missing, None).await.unwrap_err(),
        StoreError::NotFound {
            key: missing.into()
        }
    );

    assert_eq!(
        store.delete(key, Some(r2)).await.unwrap_err(),
        StoreError::Conflict {
            key: key.into(),
            current_revision: r3
        }
    );
    let (r4, prev) = store.delete(key, Some(r3)).await.unwrap();
    assert!(r4 > r3);
    assert_eq!((prev.mod_revision, &prev.value[..]), (r3, &b"v3"[..]));
    assert_eq!(store.get(key).await.unwrap(), None);
    assert_eq!(store.current_revision().await.unwrap(), r4);

    // A re-created key starts a new life.
    let r5 = store
        .create(key, Bytes::from_static(b"again"))
        .await
        .unwrap();
    let kv = store.get(key).await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r5, r5));
    let (r6, prev) = store.delete(key, None).await.unwrap();
    assert!(r6 > r5);
    assert_eq!(prev.create_revision, r5);
    // Failed writes do not move the revision.
    assert_eq!(store.current_revision().await.unwrap(), r6);
}

/// Paged lists read every page at the first page's revision.
pub async fn list_paging(store: Arc<dyn Store>) {
    let prefix = "/registry/pods/";
    let mut expected = BTreeMap::new();
    for i in 0..25 {
        let key = format!("{prefix}ns/p{i:02}");
        store.create(&key, value(&key, 64)).await.unwrap();
        expected.insert(key.clone(), value(&key, 64));
    }
    // Neighbours that a prefix list must not return.
    store
        .create("/registry/pods", Bytes::from_static(b"x"))
        .await
        .unwrap();
    store
        .create("/registry/podsx/a", Bytes::from_static(b"x"))
        .await
        .unwrap();
    store
        .create("/registry/pods0", Bytes::from_static(b"x"))
        .await
        .unwrap();

    let first = store.list(prefix, 10, None).await.unwrap();
    assert_eq!(first.items.len(), 10);
    assert!(first.more);
    assert_eq!(first.revision, store.current_revision().await.unwrap());
    let mut seen: Vec<KeyValue> = first.items.clone();

    // Writes between pages: update a key on a later page, delete one, create one that
    // sorts into a later page, and one into the page already read.
    let upd = format!("{prefix}ns/p15");
    store
        .update(&upd, Bytes::from_static(b"changed"), None)
        .await
        .unwrap();
    store
        .delete(&format!("{prefix}ns/p20"), None)
        .await
        .unwrap();
    store
        .create(&format!("{prefix}ns/p15a"), Bytes::from_static(b"new"))
        .await
        .unwrap();
    store
        .create(&format!("{prefix}ns/p00a"), Bytes::from_static(b"new"))
        .await
        .unwrap();

    let mut cont = first.continuation();
    while let Some(c) = cont {
        assert_eq!(c.revision, first.revision);
        let page = store.list(prefix, 10, Some(c)).await.unwrap();
        assert_eq!(page.revision, first.revision);
        assert!(page.items.len() <= 10);
        seen.extend(page.items.clone());
        cont = page.continuation();
    }
    let got: BTreeMap<String, Bytes> = seen
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(seen.len(), 25, "keys: {:?}", got.keys().collect::<Vec<_>>());
    assert_eq!(got, expected);
    assert!(seen.iter().all(|kv| kv.mod_revision <= first.revision));
    assert!(seen.windows(2).all(|w| w[0].key < w[1].key));

    // A fresh list sees the writes; limit 0 means everything.
    let now = store.list(prefix, 0, None).await.unwrap();
    assert!(!now.more);
    assert_eq!(now.next_key, None);
    assert_eq!(now.items.len(), 26);
    assert!(now.revision > first.revision);
    let changed = now.items.iter().find(|kv| kv.key == upd).unwrap();
    assert_eq!(&changed.value[..], b"changed");

    // An exact page boundary: 26 keys, pages of 13.
    let a = store.list(prefix, 13, None).await.unwrap();
    assert!(a.more);
    let b = store.list(prefix, 13, a.continuation()).await.unwrap();
    assert_eq!(b.items.len(), 13);
    assert!(!b.more, "last page must not claim more");

    // An empty prefix range.
    let empty = store.list("/registry/nothing/", 10, None).await.unwrap();
    assert!(empty.items.is_empty() && !empty.more);

    // `Pages`: every key once, in order, all pages at the first page's revision (a key written
    // between pages does not show), then the end.
    let mut pages = Pages::new(&*store, prefix, 7);
    let mut keys = Vec::new();
    let mut revisions = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        revisions.push(page.revision);
        keys.extend(page.items.iter().map(|kv| kv.key.clone()));
        if revisions.len() == 1 {
            store
                .create(&format!("{prefix}ns/zz-late"), Bytes::from_static(b"late"))
                .await
                .unwrap();
        }
    }
    assert_eq!(revisions.len(), 4, "26 keys in pages of 7");
    assert!(revisions.iter().all(|r| *r == revisions[0]));
    let want: Vec<String> = now.items.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, want);
    assert!(pages.next().await.is_none());
    let mut empty = Pages::new(&*store, "/registry/nothing/", 7);
    assert!(empty.next().await.unwrap().unwrap().items.is_empty());
    assert!(empty.next().await.is_none());
}

/// What a sequence of writes should produce on a watch.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    delete: bool,
    key: String,
    revision: i64,
    value: Bytes,
    prev: Option<(i64, Bytes)>,
}

fn seen(event: &WatchEvent) -> Seen {
    match event {
        WatchEvent::Put { kv, prev } | WatchEvent::Delete { kv, prev } => Seen {
            delete: matches!(event, WatchEvent::Delete { .. }),
            key: kv.key.clone(),
            revision: kv.mod_revision,
            value: kv.value.clone(),
            prev: prev.as_ref().map(|p| (p.mod_revision, p.value.clone())),
        },
        WatchEvent::Progress { .. } => panic!("progress is not a change"),
    }
}

/// Mixed writes under `prefix` and elsewhere; returns the events expected under `prefix`.
async fn mixed_writes(store: &Arc<dyn Store>, prefix: &str, n: usize) -> Vec<Seen> {
    let mut expected = Vec::new();
    let mut current: BTreeMap<String, (i64, Bytes)> = BTreeMap::new();
    for i in 0..n {
        let key = format!("{prefix}k{}", i % 7);
        let other = format!("/other{prefix}k{i}");
        store
            .create(&other, Bytes::from_static(b"noise"))
            .await
            .unwrap();
        let v = Bytes::from(format!("v{i}"));
        let prev = current.get(&key).cloned();
        let (delete, rev) = match (i % 3, &prev) {
            (2, Some((r, _))) => (true, store.delete(&key, Some(*r)).await.unwrap().0),
            (_, Some((r, _))) => (
                false,
                store.update(&key, v.clone(), Some(*r)).await.unwrap(),
            ),
            (_, None) => (false, store.create(&key, v.clone()).await.unwrap()),
        };
        if delete {
            current.remove(&key);
        } else {
            current.insert(key.clone(), (rev, v.clone()));
        }
        expected.push(Seen {
            delete,
            key,
            revision: rev,
            value: if delete { Bytes::new() } else { v },
            prev,
        });
    }
    expected
}

/// A watch from an old revision replays exactly the missed events, in order, then goes live.
pub async fn watch_replays_history(store: Arc<dyn Store>) {
    let from = store.current_revision().await.unwrap();
    let expected = mixed_writes(&store, "/w/", 60).await;
    let mut w = store.watch("/w/", from).await.unwrap();
    for want in &expected {
        let got = next_change(&mut w, WAIT).await.unwrap();
        assert_eq!(&seen(&got), want);
    }
    // Resuming from the middle gives exactly the tail.
    let mid = expected[30].revision;
    let mut w2 = store.watch("/w/", mid).await.unwrap();
    for want in expected.iter().filter(|e| e.revision > mid) {
        assert_eq!(&seen(&next_change(&mut w2, WAIT).await.unwrap()), want);
    }
    // Then live events follow, on both.
    let r = store
        .create("/w/live", Bytes::from_static(b"live"))
        .await
        .unwrap();
    for w in [&mut w, &mut w2] {
        let got = next_change(w, WAIT).await.unwrap();
        assert_eq!((got.key(), got.revision()), (Some("/w/live"), r));
    }
}

/// Live events arrive in order, while writes run concurrently from several tasks.
pub async fn watch_live(store: Arc<dyn Store>) {
    let from = store.current_revision().await.unwrap();
    let mut w = store.watch("/live/", from).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                let key = format!("/live/t{t}/{i}");
                revs.push(store.create(&key, Bytes::from(key.clone())).await.unwrap());
                store
                    .create(&format!("/elsewhere/t{t}/{i}"), Bytes::new())
                    .await
                    .unwrap();
            }
            revs
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort_unstable();
    let mut got = Vec::new();
    for _ in 0..100 {
        let e = next_change(&mut w, WAIT).await.unwrap();
        assert!(e.key().unwrap().starts_with("/live/"));
        got.push(e.revision());
    }
    assert_eq!(got, acked, "events in revision order, each once");

    // A watch from a revision not reached yet starts strictly after it.
    let now = store.current_revision().await.unwrap();
    let mut w = store.watch("/future/", now + 2).await.unwrap();
    for i in 0..3 {
        store
            .create(&format!("/future/{i}"), Bytes::new())
            .await
            .unwrap();
    }
    let e = next_change(&mut w, WAIT).await.unwrap();
    assert_eq!((e.key(), e.revision()), (Some("/future/2"), now + 3));
}

/// Compaction: older watches and list continuations fail with Compacted; newer ones work.
pub async fn compaction(store: Arc<dyn Store>) {
    let mut revs = Vec::new();
    for i in 0..20 {
        revs.push(
            store
                .create(&format!("/c/k{i:02}"), Bytes::from(format!("{i}")))
                .await
                .unwrap(),
        );
    }
    let page = store.list("/c/", 5, None).await.unwrap();
    let old_cont = page.continuation().unwrap();
    for i in 0..5 {
        store
            .update(&format!("/c/k{i:02}"), Bytes::from_static(b"u"), None)
            .await
            .unwrap();
    }
    let target = store.current_revision().await.unwrap() - 3;
    store.compact(target).await.unwrap();
    // Compacting again, or to an older revision, is a no-op.
    store.compact(target).await.unwrap();
    store.compact(revs[0]).await.unwrap();

    let err = store.watch("/c/", revs[5]).await.unwrap_err();
    assert!(err.is_compacted(), "{err}");
    assert!(err.to_string().contains("/c/"), "{err}");
    let err = store
        .list(
            "/c/",
            5,
            Some(ListContinue {
                key: old_cont.key.clone(),
                revision: revs[3],
            }),
        )
        .await
        .unwrap_err();
    assert!(err.is_compacted(), "{err}");
    let err = store.list("/c/", 5, Some(old_cont)).await.unwrap_err();
    assert!(err.is_compacted(), "{err}");

    // From the compacted revision on, history is intact.
    let mut w = store.watch("/c/", target).await.unwrap();
    for _ in 0..3 {
        let e = next_change(&mut w, WAIT).await.unwrap();
        assert!(e.revision() > target);
    }
    // Current reads are unaffected.
    assert_eq!(store.list("/c/", 0, None).await.unwrap().items.len(), 20);
}

/// 200 watchers each get all 1000 events in order while one watcher never reads: neither the
/// writers nor the others stall. The slow one then either catches up or gets Compacted.
pub async fn fan_out(store: Arc<dyn Store>) {
    const WATCHERS: usize = 200;
    const EVENTS: usize = 1000;
    let from = store.current_revision().await.unwrap();
    let mut slow = store.watch("/fan/", from).await.unwrap();
    let mut readers = Vec::new();
    for _ in 0..WATCHERS {
        let mut w = store.watch("/fan/", from).await.unwrap();
        readers.push(tokio::spawn(async move {
            let mut last = from;
            for _ in 0..EVENTS {
                let e = next_change(&mut w, Duration::from_secs(120)).await.unwrap();
                assert!(e.revision() > last, "out of order");
                last = e.revision();
            }
            last
        }));
    }
    let started = std::time::Instant::now();
    let mut writers = Vec::new();
    for t in 0..10 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..EVENTS / 10 {
                store
                    .create(&format!("/fan/t{t}/{i:04}"), Bytes::from_static(b"{}"))
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .expect("writes stalled")
            .unwrap();
    }
    let written = started.elapsed();
    let last = store.current_revision().await.unwrap();
    for r in readers {
        assert_eq!(r.await.unwrap(), last);
    }
    tracing::info!(?written, total = ?started.elapsed(), "fan-out done");
    // The slow watcher: all events in order, or Compacted.
    let mut prev = from;
    let mut count = 0;
    while count < EVENTS {
        match next_change(&mut slow, Duration::from_secs(120)).await {
            Ok(e) => {
                assert!(e.revision() > prev);
                prev = e.revision();
                count += 1;
            }
            Err(e) => {
                assert!(e.is_compacted(), "slow watcher: {e}");
                return;
            }
        }
    }
    assert_eq!(prev, last);
}

/// An idle watch sends progress events carrying a revision that covers writes elsewhere.
pub async fn progress(store: Arc<dyn Store>) {
    let from = store.current_revision().await.unwrap();
    let mut w = store.watch("/quiet/", from).await.unwrap();
    let r = store
        .create("/busy/a", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let item = tokio::time::timeout_at(deadline, w.next())
            .await
            .expect("no progress event")
            .expect("watch ended")
            .unwrap();
        match item {
            WatchEvent::Progress { revision } if revision >= r => break,
            WatchEvent::Progress { revision } => assert!(revision >= from),
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// Data and revisions survive a restart; revisions keep increasing after it.
pub async fn restart<F: Fixture>(fixture: &mut F) {
    let store = fixture.store().await;
    let r1 = store
        .create("/r/a", Bytes::from_static(b"a"))
        .await
        .unwrap();
    let (r2, _) = store.delete("/r/a", None).await.unwrap();
    let r3 = store
        .create("/r/b", Bytes::from_static(b"b"))
        .await
        .unwrap();
    assert!(r1 < r2 && r2 < r3);
    let store = fixture.restart(store).await;
    assert_eq!(store.current_revision().await.unwrap(), r3);
    assert_eq!(store.get("/r/a").await.unwrap(), None);
    assert_eq!(store.get("/r/b").await.unwrap().unwrap().mod_revision, r3);
    let r4 = store
        .create("/r/c", Bytes::from_static(b"c"))
        .await
        .unwrap();
    assert!(r4 > r3);
    // History survives too.
    let mut w = store.watch("/r/", r1 - 1).await.unwrap();
    let revs: Vec<i64> = [
        next_change(&mut w, WAIT).await.unwrap(),
        next_change(&mut w, WAIT).await.unwrap(),
        next_change(&mut w, WAIT).await.unwrap(),
        next_change(&mut w, WAIT).await.unwrap(),
    ]
    .iter()
    .map(WatchEvent::revision)
    .collect();
    assert_eq!(revs, vec![r1, r2, r3, r4]);
    drop(w);
    let store = fixture.restart(store).await;
    let r5 = store
        .update("/r/c", Bytes::from_static(b"c2"), Some(r4))
        .await
        .unwrap();
    assert!(r5 > r4);
}
