//! `ListPodSandboxStats`: stats of every ready pod sandbox matching the filter (id or prefix,
//! labels).

use super::CriService;
use crate::sandbox::store::SandboxState;
use keelson_cri::v1::{ListPodSandboxStatsRequest, ListPodSandboxStatsResponse};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: ListPodSandboxStatsRequest,
) -> Result<ListPodSandboxStatsResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let (containers, sandboxes, stats) = (
        svc.containers.clone(),
        svc.sandboxes.clone(),
        svc.stats.clone(),
    );
    let stats = tokio::task::spawn_blocking(move || {
        let all = containers.list();
        sandboxes
            .store
            .list()
            .iter()
            .filter(|s| s.state == SandboxState::Ready)
            .filter(|s| f.id.is_empty() || s.id.starts_with(&f.id))
            .filter(|s| {
                f.label_selector
                    .iter()
                    .all(|(k, v)| s.labels.get(k) == Some(v))
            })
            .map(|s| {
                let members: Vec<_> = all
                    .iter()
                    .filter(|c| c.sandbox_id == s.id)
                    .cloned()
                    .collect();
                stats.pod(&containers, s, &members)
            })
            .collect()
    })
    .await
    .map_err(|e| Status::internal(format!("pod sandbox stats task failed: {e}")))?;
    Ok(ListPodSandboxStatsResponse { stats })
}
