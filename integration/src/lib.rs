//! Test support: offline images, a local registry, and the runtime daemon under test.
//!
//! Everything here talks only to loopback. The pieces:
//! - [`registry`]: Debian's `docker-registry` on an ephemeral 127.0.0.1 port (plain or htpasswd);
//! - [`oci`]: images built in memory (layers, configs, manifests, indexes), a small push client,
//!   and OCI-layout / `docker save` tarballs for import tests;
//! - [`busybox`]: the busybox test image made from the host's Debian `busybox` package;
//! - [`daemon`]: `keelson-runtime` started in a temporary directory, with CRI clients over its socket.

pub mod busybox;
pub mod daemon;
pub mod mirror_support;
pub mod oci;
pub mod pods;
pub mod registry;
pub mod streaming;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Directory holding the keelson binaries under test: `$KEELSON_BIN_DIR`, else `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("KEELSON_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug")),
    }
}

/// A name that no other test (in this process or another) uses: `<prefix>-<pid>-<counter>-<nanos>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Installs rustls' ring provider as the process default (reqwest is built without one). Idempotent.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

type SpawnRequest = (
    std::process::Command,
    std::sync::mpsc::Sender<std::io::Result<std::process::Child>>,
);

/// Spawns `cmd` so that the kernel SIGKILLs it when this process dies (`PR_SET_PDEATHSIG`),
/// leaving no registry or daemon behind after a killed test run.
///
/// The death signal follows the *thread* that forked the child, so every child is forked by one
/// helper thread that lives as long as the process: test threads come and go freely.
pub fn spawn_tied(mut cmd: std::process::Command) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::{OnceLock, mpsc};

    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2) and
    // getppid(2), both async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("keelson-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    sender
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}
