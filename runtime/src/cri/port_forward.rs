//! `PortForward`: validates the pod and ports and answers with a single-use URL on the
//! streaming server, which dials the ports inside the pod's network namespace.

use super::CriService;
use crate::sandbox::store::SandboxState;
use crate::streaming::Pending;
use keelson_cri::v1::{PortForwardRequest, PortForwardResponse};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: PortForwardRequest,
) -> Result<PortForwardResponse, Status> {
    let streaming = svc.streaming()?;
    let sandbox = svc
        .sandboxes
        .store
        .find(&req.pod_sandbox_id)
        .ok_or_else(|| {
            Status::not_found(format!("pod sandbox {} not found", req.pod_sandbox_id))
        })?;
    if sandbox.state != SandboxState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready",
            sandbox.id
        )));
    }
    if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(Status::invalid_argument(format!(
            "port-forward to pod {}: invalid port {p}",
            sandbox.id
        )));
    }
    let req = PortForwardRequest {
        pod_sandbox_id: sandbox.id,
        ..req
    };
    Ok(PortForwardResponse {
        url: streaming.url_for(Pending::PortForward(req)),
    })
}
