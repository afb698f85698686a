//! `StopContainer`: stop signal, then SIGKILL after the timeout; unknown ids succeed.

use super::CriService;
use super::container_convert::blocking;
use keelson_cri::v1::{StopContainerRequest, StopContainerResponse};
use std::time::Duration;
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: StopContainerRequest,
) -> Result<StopContainerResponse, Status> {
    let containers = svc.containers.clone();
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    blocking(move || containers.stop(&req.container_id, timeout)).await?;
    Ok(StopContainerResponse {})
}
