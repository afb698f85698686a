//! `PodSandboxStats`: the pod's CPU, memory, processes and network, with its containers' stats.

use super::CriService;
use keelson_cri::v1::{PodSandboxStatsRequest, PodSandboxStatsResponse};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: PodSandboxStatsRequest,
) -> Result<PodSandboxStatsResponse, Status> {
    let (containers, sandboxes, stats) = (
        svc.containers.clone(),
        svc.sandboxes.clone(),
        svc.stats.clone(),
    );
    let found = tokio::task::spawn_blocking(move || {
        let s = sandboxes
            .store
            .find(&req.pod_sandbox_id)
            .ok_or(req.pod_sandbox_id)?;
        let members: Vec<_> = containers
            .list()
            .into_iter()
            .filter(|c| c.sandbox_id == s.id)
            .collect();
        Ok::<_, String>(stats.pod(&containers, &s, &members))
    })
    .await
    .map_err(|e| Status::internal(format!("pod sandbox stats task failed: {e}")))?;
    match found {
        Ok(stats) => Ok(PodSandboxStatsResponse { stats: Some(stats) }),
        Err(id) => Err(Status::not_found(format!("pod sandbox {id:?} not found"))),
    }
}
