//! `ReopenContainerLog`: after the kubelet renamed the log file, the shim opens a fresh one.

use super::CriService;
use super::container_convert::blocking;
use keelson_cri::v1::{ReopenContainerLogRequest, ReopenContainerLogResponse};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: ReopenContainerLogRequest,
) -> Result<ReopenContainerLogResponse, Status> {
    let containers = svc.containers.clone();
    blocking(move || containers.reopen_log(&req.container_id)).await?;
    Ok(ReopenContainerLogResponse {})
}
