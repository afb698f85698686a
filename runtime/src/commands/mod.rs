//! Command-line surface: global flags shared by the daemon and subcommands, and dispatch.

mod daemon;
mod images;
mod pods;
mod registries;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use keelson_runtime::config::{self, FileConfig, FlagOverrides, RuntimeConfig};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "keelson-runtime",
    version,
    about = "keelson CRI v1 container runtime (runs the daemon when no subcommand is given)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalFlags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
pub struct GlobalFlags {
    /// CRI socket (also unix:///PATH) [default: /run/keelson/cri.sock]
    #[arg(long, global = true)]
    pub socket: Option<String>,
    /// Images, snapshots and container metadata [default: /var/lib/keelson/runtime]
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// Netns pins, shim sockets and runtime state [default: /run/keelson/runtime]
    #[arg(long, global = true)]
    pub state: Option<PathBuf>,
    /// TOML config file [default: /etc/keelson/runtime.toml if present]
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// CNI network configs [default: /etc/cni/net.d]
    #[arg(long, global = true)]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directories, colon-separated [default: /opt/cni/bin:/usr/lib/cni]
    #[arg(long, global = true)]
    pub cni_bin_dir: Option<String>,
    /// Registry allowed over plain HTTP (repeatable); loopback registries always are
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]", global = true)]
    pub insecure_registries: Vec<String>,
    /// Per-registry hosts.toml folders, as containerd's certs.d [default: /etc/keelson/certs.d]
    #[arg(long, global = true)]
    pub registry_config_dir: Option<PathBuf>,
    /// Docker config.json whose "auths" give per-registry credentials when a pull carries none (and for mirrors) [default: none]
    #[arg(long, value_name = "FILE", global = true)]
    pub registry_credentials: Option<PathBuf>,
    /// cgroupfs, systemd or auto [default: auto]
    #[arg(long, global = true)]
    pub cgroup_driver: Option<String>,
    /// Where the exec/attach/port-forward streaming server listens [default: 127.0.0.1:0, a free port]
    #[arg(long, value_name = "HOST:PORT", global = true)]
    pub stream_address: Option<String>,
    /// PEM certificate chain for the streaming server (with --stream-tls-key: HTTPS) [default: plain HTTP]
    #[arg(long, value_name = "FILE", global = true)]
    pub stream_tls_cert: Option<PathBuf>,
    /// PEM private key for --stream-tls-cert
    #[arg(long, value_name = "FILE", global = true)]
    pub stream_tls_key: Option<PathBuf>,
    /// Log line format on stderr (level from RUST_LOG, default info)
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
}

#[derive(Subcommand)]
pub enum Command {
    /// Manage images in the local store
    Images {
        #[command(subcommand)]
        command: images::ImagesCommand,
    },
    /// Pod sandboxes on this runtime
    Pods {
        #[command(subcommand)]
        command: pods::PodsCommand,
    },
    /// Show how registries are reached (mirrors, TLS settings, credentials)
    Registries {
        #[command(subcommand)]
        command: registries::RegistriesCommand,
    },
}

impl GlobalFlags {
    /// Flags over the config file over defaults.
    pub fn runtime_config(&self) -> anyhow::Result<RuntimeConfig> {
        let file = FileConfig::load(self.config.as_deref())?;
        let flags = FlagOverrides {
            socket: self.socket.clone(),
            root: self.root.clone(),
            state: self.state.clone(),
            cni_conf_dir: self.cni_conf_dir.clone(),
            cni_bin_dirs: self.cni_bin_dir.clone(),
            insecure_registries: self.insecure_registries.clone(),
            registry_config_dir: self.registry_config_dir.clone(),
            registry_credentials: self.registry_credentials.clone(),
            cgroup_driver: self.cgroup_driver.clone(),
            stream_address: self.stream_address.clone(),
            stream_tls_cert: self.stream_tls_cert.clone(),
            stream_tls_key: self.stream_tls_key.clone(),
        };
        Ok(RuntimeConfig::assemble(
            file,
            flags,
            config::CgroupDriver::host_supports_systemd_cgroups(),
        )?)
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A gRPC channel over the runtime's unix socket.
pub async fn connect(socket: &std::path::Path) -> anyhow::Result<tonic::transport::Channel> {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .with_context(|| format!("connecting to {}", socket.display()))
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(cli.global.log_format);
    let config = cli.global.runtime_config()?;
    match cli.command {
        None => daemon::run(config),
        Some(Command::Images { command }) => images::run(command, config),
        Some(Command::Registries { command }) => registries::run(command, config),
        Some(Command::Pods { command }) => pods::run(command, config),
    }
}
