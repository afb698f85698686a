//! `UpdateContainerResources`: new CPU, cpuset, memory, hugepage and unified (v2) limits written
//! straight to the container's cgroup and recorded for `ContainerStatus`.

use super::CriService;
use super::container_convert::error_status;
use crate::container::cgroups::CgroupError;
use crate::container::manager::ContainerError;
use keelson_cri::v1::{UpdateContainerResourcesRequest, UpdateContainerResourcesResponse};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: UpdateContainerResourcesRequest,
) -> Result<UpdateContainerResourcesResponse, Status> {
    if req.windows.is_some() && req.linux.is_none() {
        return Err(Status::invalid_argument(format!(
            "container {:?}: windows resources cannot be applied on linux",
            req.container_id
        )));
    }
    let Some(linux) = req.linux else {
        return Err(Status::invalid_argument(format!(
            "container {:?}: no linux resources to update",
            req.container_id
        )));
    };
    let (containers, stats) = (svc.containers.clone(), svc.stats.clone());
    let id = req.container_id;
    tokio::task::spawn_blocking(move || containers.update_resources(&id, &linux, stats.cgroups()))
        .await
        .map_err(|e| Status::internal(format!("container update task failed: {e}")))?
        .map_err(|e| status(&e))?;
    Ok(UpdateContainerResourcesResponse {})
}

fn status(e: &ContainerError) -> Status {
    match e {
        ContainerError::Cgroup(c) => match c {
            CgroupError::Invalid { .. } | CgroupError::NeedsV2 { .. } => {
                Status::invalid_argument(e.to_string())
            }
            // The kernel refused the value (EINVAL, EBUSY) or it would OOM-kill: the request
            // cannot be met in the container's current state.
            CgroupError::Write { .. } | CgroupError::BelowUsage { .. } => {
                Status::failed_precondition(e.to_string())
            }
            CgroupError::Missing { .. } => Status::not_found(e.to_string()),
            CgroupError::Read { .. } => Status::internal(e.to_string()),
        },
        other => error_status(other),
    }
}
