//! Crash safety of the embedded store: a child process (this test binary, in writer mode)
//! writes as fast as it can and prints every acknowledged write; the test SIGKILLs it at a
//! random moment, reopens the store and checks that every acknowledged write is there and that
//! the revision never went backwards. Several rounds on the same directory.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keelson_server::store::{EmbeddedConfig, EmbeddedStore, Store};

use crate::support::{init_tracing, value};

const DIR_ENV: &str = "KEELSON_CRASH_WRITER_DIR";
const ROUND_ENV: &str = "KEELSON_CRASH_WRITER_ROUND";
const TASKS: usize = 8;

fn config() -> EmbeddedConfig {
    EmbeddedConfig {
        compaction_interval: None,
        ..EmbeddedConfig::default()
    }
}

/// The child: run only by `embedded_survives_sigkill`, through the environment.
#[test]
#[ignore = "helper process of embedded_survives_sigkill"]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let round: usize = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = std::sync::Arc::new(EmbeddedStore::open(dir.as_ref(), config()).unwrap());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for t in 0..TASKS {
            let store = store.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut prev_key: Option<String> = None;
                for i in 0.. {
                    let key = format!("/crash/r{round}/t{t}/{i:06}");
                    let v = value(&format!("{key}#0"), 100 + (i * 37) % 1900);
                    let rev = store.create(&key, v).await.unwrap();
                    let _ = tx.send(format!("ACK C {key} {rev} 0"));
                    let v = value(&format!("{key}#1"), 200);
                    let rev2 = store.update(&key, v, Some(rev)).await.unwrap();
                    let _ = tx.send(format!("ACK U {key} {rev2} 1"));
                    if i % 4 == 3
                        && let Some(k) = prev_key.take()
                    {
                        let (rev3, _) = store.delete(&k, None).await.unwrap();
                        let _ = tx.send(format!("ACK D {k} {rev3} 0"));
                    } else {
                        prev_key = Some(key);
                    }
                }
            });
        }
        drop(tx);
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        }
    });
}

struct Acked {
    delete: bool,
    revision: i64,
    version: u8,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_survives_sigkill() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut floor = 0i64;
    let mut all: BTreeMap<String, Acked> = BTreeMap::new();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for round in 0..4 {
        let kill_after =
            Duration::from_millis(150 + (seed.wrapping_mul(round as u64 + 7919) % 700));
        let mut child = Command::new(&exe)
            .args([
                "crash::crash_writer_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Read acknowledgements on a thread; kill from here after the chosen delay, counted
        // from the first acknowledgement (the child must be writing when it dies).
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ACK ") && tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("writer child acknowledged nothing");
        let mut lines = vec![first];
        let deadline = Instant::now() + kill_after;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Ok(line) = rx.recv_timeout(left) {
                lines.push(line);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());

        let mut max_acked = floor;
        for line in &lines {
            let parts: Vec<&str> = line.split(' ').collect();
            let [_, op, key, rev, version] = parts[..] else {
                panic!("bad line {line:?}")
            };
            let revision: i64 = rev.parse().unwrap();
            assert!(
                revision > floor,
                "revision {revision} not above the previous round's {floor}"
            );
            max_acked = max_acked.max(revision);
            let entry = Acked {
                delete: op == "D",
                revision,
                version: version.parse().unwrap(),
            };
            match all.get(key) {
                Some(prev) if prev.revision > revision => {}
                _ => {
                    all.insert(key.to_string(), entry);
                }
            }
        }

        let store = EmbeddedStore::open(dir.path(), config()).expect("reopen after SIGKILL");
        let current = store.current_revision().await.unwrap();
        assert!(
            current >= max_acked,
            "revision went back: {current} < acknowledged {max_acked}"
        );
        for (key, acked) in &all {
            let got = store.get(key).await.unwrap();
            if acked.delete {
                assert_eq!(got, None, "{key} was deleted at {}", acked.revision);
                continue;
            }
            let Some(kv) = got else {
                // The child deletes key i-1 right after writing key i when i % 4 == 3: that
                // delete may have committed without its acknowledgement being printed.
                let index: usize = key.rsplit('/').next().unwrap().parse().unwrap();
                assert_eq!(
                    index % 4,
                    2,
                    "acknowledged {key}@{} is lost",
                    acked.revision
                );
                continue;
            };
            // An unacknowledged later write may have landed too; never an older state.
            assert!(
                kv.mod_revision >= acked.revision,
                "{key}: {} < {}",
                kv.mod_revision,
                acked.revision
            );
            if kv.mod_revision == acked.revision {
                let want = format!("{key}#{}", acked.version);
                assert!(
                    kv.value.windows(want.len()).any(|w| w == want.as_bytes()),
                    "{key}: wrong value"
                );
            }
        }
        let next = store
            .create(&format!("/crash/after/{round}"), Bytes::new())
            .await
            .unwrap();
        assert!(next > current);
        floor = next;
        eprintln!(
            "round {round}: killed after {kill_after:?}, {} acknowledged writes, store at revision {current}",
            lines.len()
        );
        drop(store);
    }
    assert!(all.len() > 10, "too few writes to mean anything");
}
