//! `pods stop-all`: stops every pod sandbox (and so its containers) through the CRI socket, as
//! `make down` needs; containers otherwise outlive the runtime by design.

use anyhow::Context;
use clap::Subcommand;
use keelson_cri::RuntimeServiceClient;
use keelson_cri::v1::{ListPodSandboxRequest, StopPodSandboxRequest};
use keelson_runtime::config::RuntimeConfig;

#[derive(Subcommand)]
pub enum PodsCommand {
    /// Stop every pod sandbox and its containers (data stays)
    StopAll,
}

pub fn run(cmd: PodsCommand, config: RuntimeConfig) -> anyhow::Result<()> {
    let PodsCommand::StopAll = cmd;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let channel = super::connect(&config.socket).await?;
        let mut client = RuntimeServiceClient::new(channel);
        let pods = client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(|s| anyhow::anyhow!("listing pod sandboxes: {}", s.message()))?
            .into_inner()
            .items;
        for pod in &pods {
            client
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("stopping pod sandbox {}: {}", pod.id, s.message()))?;
        }
        println!("stopped {} pod sandbox(es)", pods.len());
        Ok::<_, anyhow::Error>(())
    })
    .context("keelson-runtime pods stop-all")
}
