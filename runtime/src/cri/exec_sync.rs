//! `ExecSync`: a command in the container's namespaces and cgroup, killed at the deadline.

use super::CriService;
use super::container_convert::blocking;
use keelson_cri::v1::{ExecSyncRequest, ExecSyncResponse};
use std::time::Duration;
use tonic::Status;

pub async fn handle(svc: &CriService, req: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
    let containers = svc.containers.clone();
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    let id = req.container_id.clone();
    let result =
        blocking(move || containers.exec_sync(&req.container_id, &req.cmd, timeout)).await?;
    if result.timed_out {
        return Err(Status::deadline_exceeded(format!(
            "command in container {id} timed out after {}s",
            timeout.as_secs()
        )));
    }
    let decode = |r: Result<Vec<u8>, _>| {
        r.map_err(|e| Status::internal(format!("exec output of {id}: {e}")))
    };
    Ok(ExecSyncResponse {
        stdout: decode(result.stdout())?,
        stderr: decode(result.stderr())?,
        exit_code: result.exit_code,
    })
}
