//! `ListContainerStats`: stats of every container matching the filter (id or prefix, pod sandbox
//! id or prefix, labels). Exited containers report only their writable layer.

use super::CriService;
use keelson_cri::v1::{ListContainerStatsRequest, ListContainerStatsResponse};
use std::collections::HashSet;
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    req: ListContainerStatsRequest,
) -> Result<ListContainerStatsResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let (containers, sandboxes, stats) = (
        svc.containers.clone(),
        svc.sandboxes.clone(),
        svc.stats.clone(),
    );
    let stats = tokio::task::spawn_blocking(move || {
        let all = containers.list();
        let live: HashSet<String> = all.iter().map(|r| r.id.clone()).collect();
        let pods: HashSet<String> = sandboxes.store.list().into_iter().map(|s| s.id).collect();
        stats.retain(&live, &pods);
        all.iter()
            .filter(|r| f.id.is_empty() || r.id.starts_with(&f.id))
            .filter(|r| f.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&f.pod_sandbox_id))
            .filter(|r| {
                f.label_selector
                    .iter()
                    .all(|(k, v)| r.labels.get(k) == Some(v))
            })
            .map(|r| stats.container(&containers, r))
            .collect()
    })
    .await
    .map_err(|e| Status::internal(format!("container stats task failed: {e}")))?;
    Ok(ListContainerStatsResponse { stats })
}
