//! A 3-member etcd cluster on loopback, two store handles (two "server replicas") writing
//! concurrently, and a watch that sees every write once, in revision order.

use std::time::Duration;

use bytes::Bytes;
use keelson_server::store::{EtcdConfig, EtcdStore, Store};

use crate::support::{Etcd, init_tracing, next_change};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_three_members_two_replicas() {
    init_tracing();
    let etcd = Etcd::start(3).await;
    let endpoints = etcd.endpoints();
    // Each replica talks to a different member first, as separate servers would.
    let replica = |first: usize| {
        let mut eps = endpoints.clone();
        eps.rotate_left(first);
        EtcdStore::connect(EtcdConfig {
            endpoints: eps,
            ..etcd.config()
        })
    };
    let a = replica(0).await.unwrap();
    let b = replica(1).await.unwrap();
    let watcher = replica(2).await.unwrap();
    let from = a.current_revision().await.unwrap();
    let mut w = watcher.watch("/registry/", from).await.unwrap();

    let write = |store: EtcdStore, name: &'static str| {
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..100 {
                let key = format!("/registry/configmaps/{name}/{i}");
                revs.push(store.create(&key, Bytes::from(key.clone())).await.unwrap());
            }
            // Both replicas fight over one key with compare-and-swap: every update wins once.
            let mut won = 0;
            while won < 20 {
                let key = "/registry/leases/shared";
                match store.get(key).await.unwrap() {
                    None => {
                        if let Ok(r) = store.create(key, Bytes::from_static(b"0")).await {
                            revs.push(r);
                        }
                    }
                    Some(kv) => {
                        if let Ok(r) = store
                            .update(key, Bytes::from(name), Some(kv.mod_revision))
                            .await
                        {
                            revs.push(r);
                            won += 1;
                        }
                    }
                }
            }
            revs
        })
    };
    let ra = write(a.clone(), "a");
    let rb = write(b.clone(), "b");
    let mut acked = ra.await.unwrap();
    acked.extend(rb.await.unwrap());
    acked.sort_unstable();
    assert!(
        acked.windows(2).all(|w| w[0] < w[1]),
        "two writes got one revision"
    );

    let mut seen = Vec::new();
    while seen.len() < acked.len() {
        let e = next_change(&mut w, Duration::from_secs(30)).await.unwrap();
        seen.push(e.revision());
    }
    assert_eq!(seen, acked);
    // Both replicas read the same state at the same revision.
    let la = a.list("/registry/", 0, None).await.unwrap();
    let lb = b.list("/registry/", 50, None).await.unwrap();
    let lb2 = a.list("/registry/", 0, lb.continuation()).await.unwrap();
    assert_eq!(la.items.len(), 201);
    assert_eq!(lb.items.len() + lb2.items.len(), 201);
    drop(etcd);
}
