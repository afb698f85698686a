//! `StopPodSandbox`: releases the pod's network and namespaces; unknown ids succeed.

use super::CriService;
use super::sandbox_convert::blocking;
use keelson_cri::v1::{StopPodSandboxRequest, StopPodSandboxResponse};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse, Status> {
    let containers = svc.containers.clone();
    let id = req.pod_sandbox_id.clone();
    super::container_convert::blocking(move || containers.stop_all_in(&id)).await?;
    let sandboxes = svc.sandboxes.clone();
    blocking(move || sandboxes.stop(&req.pod_sandbox_id)).await?;
    Ok(StopPodSandboxResponse {})
}
