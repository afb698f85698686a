//! The streaming server behind CRI `Exec`, `Attach` and `PortForward`: those calls cache the
//! request under a single-use token and answer with a URL here; the client then upgrades an
//! HTTP request on that URL to SPDY/3.1 or WebSocket and speaks the Kubernetes remote-command
//! or port-forward protocol.

pub mod attach;
pub mod exec;
mod http;
pub mod portforward;
pub mod pty;
pub mod remotecommand;
pub mod spdy_io;
pub mod tokens;
pub mod ws_io;

use crate::container::manager::ContainerManager;
use crate::sandbox::manager::SandboxManager;
use keelson_cri::v1::{AttachRequest, ExecRequest, PortForwardRequest};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokens::{MAX_TOKENS, TOKEN_TTL, TokenCache};

/// Why the streaming server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamServerError {
    #[error("cannot listen for streaming on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid streaming address {0:?}: expected HOST:PORT")]
    Address(String),
    #[error("streaming TLS: {0}")]
    Tls(String),
}

/// A request waiting for its client to connect.
#[derive(Debug, Clone)]
pub enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// Where and how the server listens.
#[derive(Debug, Clone)]
pub struct StreamingOptions {
    /// `HOST:PORT`; port 0 picks a free one.
    pub address: String,
    /// PEM certificate chain and key; plain HTTP without them.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// The running server: hands out URLs, serves the sessions.
pub struct StreamingServer {
    pending: Mutex<TokenCache<Pending>>,
    base_url: String,
    pub(crate) containers: Arc<ContainerManager>,
    pub(crate) sandboxes: Arc<SandboxManager>,
}

impl StreamingServer {
    /// Binds the listener and starts serving in the background.
    pub async fn start(
        opts: &StreamingOptions,
        containers: Arc<ContainerManager>,
        sandboxes: Arc<SandboxManager>,
    ) -> Result<Arc<Self>, StreamServerError> {
        let addr: SocketAddr = opts
            .address
            .parse()
            .map_err(|_| StreamServerError::Address(opts.address.clone()))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StreamServerError::Listen {
                addr: opts.address.clone(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| StreamServerError::Listen {
                addr: opts.address.clone(),
                source,
            })?;
        let tls = match (&opts.tls_cert, &opts.tls_key) {
            (Some(cert), Some(key)) => Some(http::tls_acceptor(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(StreamServerError::Tls(
                    "both a certificate and a key are needed".into(),
                ));
            }
        };
        let host = if local.ip().is_unspecified() {
            // Listening everywhere: loopback reaches it from this node.
            match local {
                SocketAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], local.port())),
                SocketAddr::V6(_) => {
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, local.port()))
                }
            }
        } else {
            local
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = Arc::new(Self {
            pending: Mutex::new(TokenCache::new(TOKEN_TTL, MAX_TOKENS)),
            base_url: format!("{scheme}://{host}"),
            containers,
            sandboxes,
        });
        tracing::info!(address = %local, tls = tls.is_some(), "serving exec, attach and port-forward streams");
        tokio::spawn(http::accept_loop(listener, tls, server.clone()));
        Ok(server)
    }

    /// Caches `req` and returns the URL its client connects to.
    pub fn url_for(&self, req: Pending) -> String {
        let path = req.path();
        let token = self
            .pending
            .lock()
            .expect("token cache lock")
            .insert(req, Instant::now());
        format!("{}/{path}/{token}", self.base_url)
    }

    /// The request behind `token`, once.
    pub(crate) fn take(&self, token: &str) -> Option<Pending> {
        self.pending
            .lock()
            .expect("token cache lock")
            .take(token, Instant::now())
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}
