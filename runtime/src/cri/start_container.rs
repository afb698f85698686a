//! `StartContainer`: the created container's process runs.

use super::CriService;
use super::container_convert::blocking;
use keelson_cri::v1::{StartContainerRequest, StartContainerResponse};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: StartContainerRequest,
) -> Result<StartContainerResponse, Status> {
    let containers = svc.containers.clone();
    blocking(move || containers.start(&req.container_id)).await?;
    Ok(StartContainerResponse {})
}
