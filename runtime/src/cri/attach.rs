//! `Attach`: validates the request against a running container and answers with a single-use
//! URL on the streaming server, joined there to the container's own stdio.

use super::CriService;
use super::container_convert::blocking;
use super::exec::check_streams;
use crate::streaming::Pending;
use keelson_cri::v1::{AttachRequest, AttachResponse};
use tonic::Status;

pub async fn handle(svc: &CriService, req: AttachRequest) -> Result<AttachResponse, Status> {
    let streaming = svc.streaming()?;
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
    if req.stdin && !target.stdin {
        return Err(Status::invalid_argument(format!(
            "attach to container {}: stdin requested but the container was not created with stdin",
            target.id
        )));
    }
    if req.tty != target.tty {
        return Err(Status::invalid_argument(format!(
            "attach to container {}: tty={} requested but the container was created with tty={}",
            target.id, req.tty, target.tty
        )));
    }
    let req = AttachRequest {
        container_id: target.id,
        ..req
    };
    Ok(AttachResponse {
        url: streaming.url_for(Pending::Attach(req)),
    })
}
