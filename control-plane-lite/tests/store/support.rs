//! Test support: etcd processes on loopback, store fixtures, small helpers.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keelson_server::store::{
    EmbeddedConfig, EmbeddedStore, EtcdConfig, EtcdStore, Store, StoreError, WatchEvent,
    WatchStream,
};
use tempfile::TempDir;

/// Progress (bookmark) interval the fixtures configure, short enough for a test to see one.
pub const TEST_PROGRESS: Duration = Duration::from_millis(300);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// An unused loopback port (the listener is closed again before etcd binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// One or more etcd processes (Debian's `etcd-server`) on 127.0.0.1 with ports chosen at
/// random and data under a temporary directory. Killed on drop.
pub struct Etcd {
    members: Vec<Member>,
    dir: TempDir,
    token: String,
}

impl Etcd {
    pub fn binary() -> PathBuf {
        let path = std::env::var_os("KEELSON_ETCD")
            .map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from);
        assert!(
            path.exists(),
            "{} not found: etcd tests need Debian's etcd-server (apt-get install -y etcd-server)",
            path.display()
        );
        path
    }

    /// Starts `n` members forming one cluster and waits until it serves requests.
    pub async fn start(n: usize) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let token = format!("keelson-test-{}-{}", std::process::id(), free_port());
        let mut etcd = Etcd {
            members,
            dir,
            token,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        etcd.wait_ready().await;
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .expect("etcd log file");
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(Self::binary())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.members[i].child = Some(child);
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.endpoints(),
            progress_interval: TEST_PROGRESS,
            ..EtcdConfig::default()
        }
    }

    pub async fn connect(&self) -> EtcdStore {
        EtcdStore::connect(self.config())
            .await
            .expect("connecting to etcd")
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for endpoint in self.endpoints() {
            loop {
                let config = EtcdConfig {
                    endpoints: vec![endpoint.clone()],
                    connect_timeout: Duration::from_millis(500),
                    ..EtcdConfig::default()
                };
                match EtcdStore::connect(config).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(error = %e, "etcd not ready yet");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!(
                        "etcd at {endpoint} did not come up: {e}; logs in {}",
                        self.dir.path().display()
                    ),
                }
            }
        }
    }

    fn kill_all(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// SIGKILLs every member and starts them again on the same data.
    pub async fn restart(&mut self) {
        self.kill_all();
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        self.wait_ready().await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A backend under test: hands out store handles and can restart the backend.
#[async_trait]
pub trait Fixture: Send {
    async fn store(&mut self) -> Arc<dyn Store>;
    /// Restarts the backend; `store` must be the only handle left.
    async fn restart(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store>;
}

pub fn embedded_test_config() -> EmbeddedConfig {
    EmbeddedConfig {
        compaction_interval: None,
        // Small, so that the fan-out tests push watchers onto the history path.
        watch_buffer: 64,
        progress_interval: TEST_PROGRESS,
        ..EmbeddedConfig::default()
    }
}

pub struct EmbeddedFixture {
    pub dir: TempDir,
    pub config: EmbeddedConfig,
    store: Option<Arc<EmbeddedStore>>,
}

impl EmbeddedFixture {
    pub fn new() -> Self {
        Self::with_config(embedded_test_config())
    }

    pub fn with_config(config: EmbeddedConfig) -> Self {
        init_tracing();
        EmbeddedFixture {
            dir: tempfile::tempdir().expect("temp dir"),
            config,
            store: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn embedded(&mut self) -> Arc<EmbeddedStore> {
        if self.store.is_none() {
            let store = EmbeddedStore::open(self.dir.path(), self.config.clone())
                .expect("open embedded store");
            self.store = Some(Arc::new(store));
        }
        self.store.clone().expect("store is open")
    }
}

#[async_trait]
impl Fixture for EmbeddedFixture {
    async fn store(&mut self) -> Arc<dyn Store> {
        self.embedded()
    }

    async fn restart(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        drop(store);
        let only = self.store.take().expect("store is open");
        assert_eq!(
            Arc::strong_count(&only),
            1,
            "a store handle is still in use"
        );
        drop(only);
        self.embedded()
    }
}

pub struct EtcdFixture {
    pub etcd: Etcd,
}

impl EtcdFixture {
    pub async fn new() -> Self {
        init_tracing();
        EtcdFixture {
            etcd: Etcd::start(1).await,
        }
    }
}

#[async_trait]
impl Fixture for EtcdFixture {
    async fn store(&mut self) -> Arc<dyn Store> {
        Arc::new(self.etcd.connect().await)
    }

    async fn restart(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        drop(store);
        self.etcd.restart().await;
        Arc::new(self.etcd.connect().await)
    }
}

/// The next put or delete (progress events skipped), failing the test after `wait`.
pub async fn next_change(
    stream: &mut WatchStream,
    wait: Duration,
) -> Result<WatchEvent, StoreError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => panic!("no watch event within {wait:?}"),
            Ok(None) => panic!("watch ended"),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(WatchEvent::Progress { .. }))) => continue,
            Ok(Some(Ok(event))) => return Ok(event),
        }
    }
}

/// A value of `len` bytes that names `tag` (JSON-ish, like what the API server stores).
pub fn value(tag: &str, len: usize) -> bytes::Bytes {
    let mut v = format!("{{\"tag\":\"{tag}\",\"pad\":\"").into_bytes();
    while v.len() + 2 < len {
        v.push(b'x');
    }
    v.extend_from_slice(b"\"}");
    bytes::Bytes::from(v)
}
