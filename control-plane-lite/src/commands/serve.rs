//! Serving: open the store, load or make the credentials, bootstrap namespaces, start the
//! scheduler, serve HTTPS until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use keelson_server::api::ApiServer;
use keelson_server::api::auth::Tokens;
use keelson_server::api::proxy::KubeletClient;
use keelson_server::pki::{Pki, server_url};
use keelson_server::scheduler::{Scheduler, SchedulerConfig};
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
    /// Run the built-in scheduler (`--scheduler=false` to leave pods to another one). With
    /// etcd, replicas elect one active scheduler through the Lease kube-system/keelson-scheduler.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub scheduler: bool,
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
        api.set_kubelet_client(
            KubeletClient::from_pki(&pki).context("the client certificate for node agents")?,
        );
        api.bootstrap()
            .await
            .context("creating the default namespaces")?;
        let listener = server::bind(cli.listen).await?;
        // Garbage collection by ownerReferences and namespace finalization: every replica
        // sweeps; their writes are conditional on resourceVersion, so they cannot conflict.
        let gc = keelson_server::api::gc::spawn(api.clone());
        let scheduler = cli.scheduler.then(|| {
            let config = SchedulerConfig {
                // Only etcd can be shared by several replicas; the embedded store is this
                // process's alone.
                leader_elect: matches!(url, StoreUrl::Etcd(_)),
                ..SchedulerConfig::default()
            };
            tracing::info!(identity = %config.identity, leader_elect = config.leader_elect, "starting the scheduler");
            tokio::spawn(Scheduler::new(api.clone(), config).run())
        });
        tracing::info!(listen = %cli.listen, data_dir = %cli.data_dir.display(), "serving the kubernetes api");
        server::serve(listener, tls, api, shutdown_signal()).await;
        tracing::info!("shutting down");
        if let Some(s) = scheduler {
            s.abort();
        }
        gc.abort();
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
