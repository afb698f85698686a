//! `ListContainers`: containers matching the filter (id or prefix, state, sandbox, labels).

use super::CriService;
use super::container_convert::{state, to_cri};
use keelson_cri::v1::{ListContainersRequest, ListContainersResponse};
use tonic::Status;

pub fn handle(
    svc: &CriService,
    req: ListContainersRequest,
) -> Result<ListContainersResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let containers = svc
        .containers
        .list()
        .iter()
        .filter(|r| f.id.is_empty() || r.id.starts_with(&f.id))
        .filter(|r| f.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&f.pod_sandbox_id))
        .filter(|r| {
            f.state
                .as_ref()
                .is_none_or(|s| state(r.state) as i32 == s.state)
        })
        .filter(|r| {
            f.label_selector
                .iter()
                .all(|(k, v)| r.labels.get(k) == Some(v))
        })
        .map(to_cri)
        .collect();
    Ok(ListContainersResponse { containers })
}
