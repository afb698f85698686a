//! `ContainerStatus`: state, timestamps, exit code and reason of one container.

use super::CriService;
use super::container_convert::status;
use keelson_cri::v1::{ContainerStatusRequest, ContainerStatusResponse};
use std::collections::HashMap;
use tonic::Status;

pub fn handle(
    svc: &CriService,
    req: ContainerStatusRequest,
) -> Result<ContainerStatusResponse, Status> {
    let r = svc
        .containers
        .find(&req.container_id)
        .ok_or_else(|| Status::not_found(format!("container {:?} not found", req.container_id)))?;
    let mut info = HashMap::new();
    if req.verbose {
        let detail = serde_json::json!({
            "sandboxID": r.sandbox_id,
            "rootfs": r.rootfs,
            "chainIDs": r.chain_ids,
            "stopSignal": r.stop_signal,
        });
        info.insert("info".to_string(), detail.to_string());
    }
    Ok(ContainerStatusResponse {
        status: Some(status(&r)),
        info,
    })
}
