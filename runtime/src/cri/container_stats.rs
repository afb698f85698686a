//! `ContainerStats`: CPU, memory and writable-layer usage of one container (id or unique prefix).

use super::CriService;
use keelson_cri::v1::{ContainerStatsRequest, ContainerStatsResponse};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: ContainerStatsRequest,
) -> Result<ContainerStatsResponse, Status> {
    let (containers, stats) = (svc.containers.clone(), svc.stats.clone());
    let found = tokio::task::spawn_blocking(move || {
        containers
            .find(&req.container_id)
            .map(|r| stats.container(&containers, &r))
            .ok_or(req.container_id)
    })
    .await
    .map_err(|e| Status::internal(format!("container stats task failed: {e}")))?;
    match found {
        Ok(stats) => Ok(ContainerStatsResponse { stats: Some(stats) }),
        Err(id) => Err(Status::not_found(format!("container {id:?} not found"))),
    }
}
