//! `PodSandboxStatus`: state, IPs and namespaces of one sandbox (id or unique prefix).

use super::CriService;
use super::sandbox_convert::status;
use keelson_cri::v1::{PodSandboxStatusRequest, PodSandboxStatusResponse};
use std::collections::HashMap;
use tonic::Status;

pub fn handle(
    svc: &CriService,
    req: PodSandboxStatusRequest,
) -> Result<PodSandboxStatusResponse, Status> {
    let r = svc
        .sandboxes
        .store
        .find(&req.pod_sandbox_id)
        .ok_or_else(|| {
            Status::not_found(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
        })?;
    let mut info = HashMap::new();
    if req.verbose {
        let detail = serde_json::json!({
            "hostname": r.hostname,
            "netns": r.netns,
            "ipcns": r.ipcns,
            "utsns": r.utsns,
            "shm": r.shm,
            "cgroupParent": r.cgroup_parent,
            "network": r.network,
            "config": config_json(&r),
        });
        info.insert("info".to_string(), detail.to_string());
    }
    Ok(PodSandboxStatusResponse {
        status: Some(status(&r)),
        info,
        containers_statuses: Vec::new(),
        timestamp: 0,
    })
}

fn config_json(r: &crate::sandbox::store::SandboxRecord) -> serde_json::Value {
    match crate::sandbox::manager::SandboxManager::config_of(r) {
        Some(c) => serde_json::json!({
            "hostname": c.hostname,
            "logDirectory": c.log_directory,
            "portMappings": c.port_mappings.iter().map(|p| serde_json::json!({
                "protocol": p.protocol, "containerPort": p.container_port, "hostPort": p.host_port, "hostIp": p.host_ip,
            })).collect::<Vec<_>>(),
        }),
        None => serde_json::Value::Null,
    }
}
