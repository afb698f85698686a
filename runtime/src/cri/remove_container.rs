//! `RemoveContainer`: kills it if needed and frees everything; unknown ids succeed.

use super::CriService;
use super::container_convert::blocking;
use keelson_cri::v1::{RemoveContainerRequest, RemoveContainerResponse};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: RemoveContainerRequest,
) -> Result<RemoveContainerResponse, Status> {
    let containers = svc.containers.clone();
    blocking(move || containers.remove(&req.container_id)).await?;
    Ok(RemoveContainerResponse {})
}
