//! `RemoveImage`: drops an image with all its names; removing what is not there succeeds (CRI idempotence).

use super::CriService;
use super::convert::{image_ref, store_status};
use keelson_cri::v1::{RemoveImageRequest, RemoveImageResponse};
use tonic::Status;

pub fn handle(svc: &CriService, req: RemoveImageRequest) -> Result<RemoveImageResponse, Status> {
    let spec = image_ref(req.image.as_ref(), "RemoveImage")?;
    let removed = svc.images.remove(&spec).map_err(|e| store_status(&e))?;
    tracing::info!(image = %spec, removed, "remove image");
    Ok(RemoveImageResponse {})
}
