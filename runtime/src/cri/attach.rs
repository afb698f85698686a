//! `Attach`: validates the request against a running container and answers with a single-use
//! URL on the streaming server, joined there to the container's own stdio.

use super::CriService;
use super::exec::checked_target;
use crate::streaming::Pending;
use keelson_cri::v1::{AttachRequest, AttachResponse};
use tonic::Status;

pub async fn handle(svc: &CriService, req: AttachRequest) -> Result<AttachResponse, Status> {
    let streaming = svc.streaming()?;
    let target = checked_target(
        svc,
        &req.container_id,
        [req.stdin, req.stdout, req.stderr],
        req.tty,
    )
    .await?;
    // As containerd: the container's own settings decide what there is to attach to. Stdin
    // sent to a container created without it is dropped by its shim; a terminal container's
    // output all arrives as stdout, whatever the request's `tty`.
    if (req.stdin && !target.stdin) || req.tty != target.tty {
        tracing::debug!(
            container = %target.id,
            stdin = req.stdin,
            tty = req.tty,
            created_with_stdin = target.stdin,
            created_with_tty = target.tty,
            "attach request differs from the container's stdio"
        );
    }
    let req = AttachRequest {
        container_id: target.id,
        ..req
    };
    Ok(AttachResponse {
        url: streaming.url_for(Pending::Attach(req)),
    })
}
