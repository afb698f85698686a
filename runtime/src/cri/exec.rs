//! `Exec`: validates the request against a running container and answers with a single-use
//! URL on the streaming server, where the client runs the command interactively.

use super::CriService;
use super::container_convert::blocking;
use crate::container::manager::StreamTarget;
use crate::streaming::Pending;
use keelson_cri::v1::{ExecRequest, ExecResponse};
use tonic::Status;

pub async fn handle(svc: &CriService, req: ExecRequest) -> Result<ExecResponse, Status> {
    let streaming = svc.streaming()?;
    if req.cmd.is_empty() {
        return Err(Status::invalid_argument(format!(
            "exec in container {}: the command is empty",
            req.container_id
        )));
    }
    let target = checked_target(
        svc,
        &req.container_id,
        [req.stdin, req.stdout, req.stderr],
        req.tty,
    )
    .await?;
    let req = ExecRequest {
        container_id: target.id,
        ..req
    };
    Ok(ExecResponse {
        url: streaming.url_for(Pending::Exec(req)),
    })
}

/// The running container `id` for an exec or attach asking for `[stdin, stdout, stderr]`
/// and `tty`, after what kubelet and containerd refuse for both: no stream at all, or a
/// terminal with a separate stderr.
pub async fn checked_target(
    svc: &CriService,
    id: &str,
    [stdin, stdout, stderr]: [bool; 3],
    tty: bool,
) -> Result<StreamTarget, Status> {
    if !(stdin || stdout || stderr) {
        return Err(Status::invalid_argument(format!(
            "streaming to container {id}: one of stdin, stdout or stderr must be requested"
        )));
    }
    if tty && stderr {
        return Err(Status::invalid_argument(format!(
            "streaming to container {id}: tty and stderr cannot both be requested (a terminal has one output)"
        )));
    }
    let containers = svc.containers.clone();
    let id = id.to_string();
    blocking(move || containers.stream_target(&id)).await
}
