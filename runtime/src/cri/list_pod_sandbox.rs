//! `ListPodSandbox`: every sandbox matching the filter (id or id prefix, state, labels).

use super::CriService;
use super::sandbox_convert::{state, to_cri};
use keelson_cri::v1::{ListPodSandboxRequest, ListPodSandboxResponse};
use tonic::Status;

pub fn handle(
    svc: &CriService,
    req: ListPodSandboxRequest,
) -> Result<ListPodSandboxResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let items = svc
        .sandboxes
        .store
        .list()
        .iter()
        .filter(|r| filter.id.is_empty() || r.id.starts_with(&filter.id))
        .filter(|r| {
            filter
                .state
                .as_ref()
                .is_none_or(|s| state(r.state) as i32 == s.state)
        })
        .filter(|r| {
            filter
                .label_selector
                .iter()
                .all(|(k, v)| r.labels.get(k) == Some(v))
        })
        .map(to_cri)
        .collect();
    Ok(ListPodSandboxResponse { items })
}
