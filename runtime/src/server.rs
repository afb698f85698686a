//! Runs the gRPC services on the CRI unix socket: root lock, socket setup (0660), graceful shutdown.

use crate::config::RuntimeConfig;
use crate::container::manager::{ContainerManager, KernelOverlay};
use crate::container::shim::ProcessShim;
use crate::cri::CriService;
use crate::image::manager::{ImageManager, ImageManagerOptions};
use crate::image::manifest::Platform;
use crate::image::registry::{RegistryClient, RegistryOptions};
use crate::sandbox::cni::{Cni, ProcessExec};
use crate::sandbox::manager::{CniNetwork, KernelShm, SandboxManager};
use crate::sandbox::netns::KernelNetns;
use crate::sandbox::pidns::ProcessPidNs;
use crate::streaming::StreamingServer;
use keelson_cri::admin::runtime_admin_server::RuntimeAdminServer;
use keelson_cri::{ImageServiceServer, RuntimeServiceServer};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the daemon could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot prepare {what} {path}: {source}")]
    Prepare {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("another keelson-runtime already uses root {0}")]
    RootInUse(PathBuf),
    #[error("socket {0} is in use by a running process")]
    SocketInUse(PathBuf),
    #[error("cannot open the image store: {0}")]
    Images(String),
    #[error("cannot open the sandbox store: {0}")]
    Sandboxes(String),
    #[error("cannot open the container store: {0}")]
    Containers(String),
    #[error("cannot start the streaming server: {0}")]
    Streaming(String),
    #[error("grpc server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// An exclusive lock on the root directory, held for the daemon's lifetime.
pub struct RootLock {
    _flock: nix::fcntl::Flock<File>,
}

impl RootLock {
    pub fn acquire(root: &Path) -> Result<Self, ServeError> {
        let path = root.join("LOCK");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ServeError::Prepare {
                what: "root lock",
                path: path.clone(),
                source,
            })?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(flock) => Ok(RootLock { _flock: flock }),
            Err(_) => Err(ServeError::RootInUse(root.to_path_buf())),
        }
    }
}

fn prepare_dir(what: &'static str, path: &Path, mode: u32) -> Result<(), ServeError> {
    fs::create_dir_all(path).map_err(|source| ServeError::Prepare {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        ServeError::Prepare {
            what,
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Binds the socket with mode 0660, replacing a stale socket file but never a live one.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    let prep = |source| ServeError::Prepare {
        what: "socket",
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(prep)?;
    }
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(ServeError::SocketInUse(path.to_path_buf()));
        }
        fs::remove_file(path).map_err(prep)?;
    }
    // Bind under a restrictive umask so the socket is never world-accessible, even for an instant.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let bound = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(prep)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(prep)?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// The sandbox manager with the real namespaces, tmpfs and CNI plugins; recovers interrupted work.
fn open_sandboxes(config: &RuntimeConfig) -> Result<Arc<SandboxManager>, ServeError> {
    let network = CniNetwork {
        conf_dir: config.cni_conf_dir.clone(),
        cni: Cni {
            bin_dirs: config.cni_bin_dirs.clone(),
            exec: ProcessExec,
        },
    };
    let manager = SandboxManager::open(
        &config.root,
        &config.state,
        Arc::new(KernelNetns),
        Arc::new(KernelShm),
        Arc::new(network),
        Arc::new(ProcessPidNs {
            binary: std::env::current_exe().unwrap_or_else(|_| "keelson-runtime".into()),
            state: config.state.clone(),
        }),
    )
    .map_err(|e| ServeError::Sandboxes(e.to_string()))?;
    Ok(Arc::new(manager))
}

/// Opens the stores and serves until SIGTERM/SIGINT.
pub async fn serve(config: RuntimeConfig) -> Result<(), ServeError> {
    prepare_dir("root", &config.root, 0o700)?;
    prepare_dir("state", &config.state, 0o700)?;
    let _lock = RootLock::acquire(&config.root)?;
    let registry = RegistryClient::new(RegistryOptions {
        insecure_registries: config.insecure_registries.clone(),
        user_agent: format!("keelson-runtime/{}", env!("CARGO_PKG_VERSION")),
        hosts_dir: Some(config.registry_config_dir.clone()),
        credentials_file: config.registry_credentials.clone(),
    })
    .map_err(|e| ServeError::Images(e.to_string()))?;
    let images = Arc::new(
        ImageManager::open(
            &config.root,
            registry,
            ImageManagerOptions {
                max_concurrent_downloads: config.max_concurrent_downloads,
                platform: Platform::host(),
            },
        )
        .map_err(|e| ServeError::Images(e.to_string()))?,
    );
    let sandboxes = open_sandboxes(&config)?;
    let containers = Arc::new(
        ContainerManager::open(
            &config.root,
            &config.state,
            images.clone(),
            sandboxes.clone(),
            Arc::new(KernelOverlay),
            Arc::new(ProcessShim {
                binary: ProcessShim::locate().unwrap_or_else(|| "keelson-shim".into()),
            }),
            config.cgroup_driver,
        )
        .map_err(|e| ServeError::Containers(e.to_string()))?,
    );
    let roots = containers.clone();
    images.set_snapshot_roots(Arc::new(move || roots.store.snapshot_roots()));
    // Content a crash left unreferenced (a pull killed before its record was written) goes now,
    // once the containers' layers are known to the collector.
    images.schedule_gc();
    let streaming =
        StreamingServer::start(&config.streaming, containers.clone(), sandboxes.clone())
            .await
            .map_err(|e| ServeError::Streaming(e.to_string()))?;
    let listener = bind_socket(&config.socket)?;
    let socket = config.socket.clone();
    let svc =
        CriService::new(images, sandboxes, containers, Arc::new(config)).with_streaming(streaming);
    tracing::info!(socket = %socket.display(), "serving CRI v1");
    let result = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(svc.clone()).max_decoding_message_size(16 << 20))
        .add_service(ImageServiceServer::new(svc.clone()).max_decoding_message_size(16 << 20))
        .add_service(RuntimeAdminServer::new(svc))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown_signal(),
        )
        .await;
    let _ = fs::remove_file(&socket);
    result.map_err(ServeError::from)
}
