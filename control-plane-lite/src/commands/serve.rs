//! Serving: open the store, load or make the credentials, bootstrap namespaces, serve HTTPS
//! until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use keelson_server::api::ApiServer;
use keelson_server::api::auth::Tokens;
use keelson_server::pki::{Pki, server_url};
use keelson_server::server;
use keelson_server::store::{self, StoreUrl};

/// keelson control plane: a Kubernetes API server for kubectl and keelson agents.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// HTTPS listen address.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Where the store, certificates, tokens and admin.kubeconfig live.
    #[arg(long, default_value = "/var/lib/keelson/server")]
    pub data_dir: PathBuf,
    /// `embedded` (default) or `etcd://HOST:PORT[,HOST:PORT...]`.
    #[arg(long, default_value = "embedded")]
    pub store: String,
    /// Log format on stderr: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let url = StoreUrl::parse(&cli.store).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&cli.data_dir)
        .with_context(|| format!("creating data dir {}", cli.data_dir.display()))?;
    let pki = Pki::load_or_create(&cli.data_dir, &cli.listen.ip().to_string())
        .context("loading the server's certificates and tokens")?;
    let url_str = server_url(&cli.listen);
    pki.write_admin_kubeconfig(&cli.data_dir, &url_str)
        .context("writing admin.kubeconfig")?;
    let tls = server::tls_config(&pki)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let store = store::open(&url, &cli.data_dir)
            .await
            .with_context(|| format!("opening store {}", cli.store))?;
        let tokens = Tokens {
            admin: pki.admin_token.clone(),
            node: pki.node_token.clone(),
        };
        let api = Arc::new(ApiServer::new(
            store,
            tokens,
            url_str.trim_start_matches("https://").to_string(),
        ));
        api.bootstrap()
            .await
            .context("creating the default namespaces")?;
        let listener = server::bind(cli.listen).await?;
        tracing::info!(listen = %cli.listen, data_dir = %cli.data_dir.display(), "serving the kubernetes api");
        server::serve(listener, tls, api, shutdown_signal()).await;
        tracing::info!("shutting down");
        Ok(())
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
