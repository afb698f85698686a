//! `Exec`: validates the request against a running container and answers with a single-use
//! URL on the streaming server, where the client runs the command interactively.

use super::CriService;
use super::container_convert::blocking;
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
    check_streams(
        req.stdin,
        req.stdout,
        req.stderr,
        req.tty,
        &req.container_id,
    )?;
    let containers = svc.containers.clone();
    let id = req.container_id.clone();
    let target = blocking(move || containers.stream_target(&id)).await?;
    let req = ExecRequest {
        container_id: target.id,
        ..req
    };
    Ok(ExecResponse {
        url: streaming.url_for(Pending::Exec(req)),
    })
}

/// What kubelet and containerd refuse for exec and attach alike.
pub fn check_streams(
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    id: &str,
) -> Result<(), Status> {
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
    Ok(())
}
