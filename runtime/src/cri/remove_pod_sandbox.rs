//! `RemovePodSandbox`: stops if needed, then deletes the sandbox; unknown ids succeed.

use super::CriService;
use super::sandbox_convert::blocking;
use keelson_cri::v1::{RemovePodSandboxRequest, RemovePodSandboxResponse};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse, Status> {
    let containers = svc.containers.clone();
    let id = req.pod_sandbox_id.clone();
    super::container_convert::blocking(move || containers.remove_all_in(&id)).await?;
    let sandboxes = svc.sandboxes.clone();
    blocking(move || sandboxes.remove(&req.pod_sandbox_id)).await?;
    Ok(RemovePodSandboxResponse {})
}
