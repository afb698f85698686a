//! `RunPodSandbox`: namespaces, /dev/shm, DNS and hosts files, CNI network; the new sandbox's id.

use super::CriService;
use super::sandbox_convert::blocking;
use keelson_cri::v1::{RunPodSandboxRequest, RunPodSandboxResponse};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: RunPodSandboxRequest,
) -> Result<RunPodSandboxResponse, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is missing"))?;
    let sandboxes = svc.sandboxes.clone();
    let id = blocking(move || sandboxes.run(&config, &req.runtime_handler)).await?;
    tracing::info!(sandbox = %id, "pod sandbox ready");
    Ok(RunPodSandboxResponse { pod_sandbox_id: id })
}
