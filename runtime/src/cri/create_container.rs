//! `CreateContainer`: rootfs overlay, OCI spec, and a shim holding the created container.

use super::CriService;
use super::container_convert::blocking;
use keelson_cri::v1::{CreateContainerRequest, CreateContainerResponse};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: CreateContainerRequest,
) -> Result<CreateContainerResponse, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("CreateContainer: config is missing"))?;
    let containers = svc.containers.clone();
    let id = blocking(move || {
        containers.create(&req.pod_sandbox_id, &config, req.sandbox_config.as_ref())
    })
    .await?;
    Ok(CreateContainerResponse { container_id: id })
}
