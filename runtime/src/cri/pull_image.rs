//! `PullImage`: fetch, verify and unpack an image; answers with its id.

use super::CriService;
use super::convert::{credentials, image_ref, pull_status};
use keelson_cri::v1::{PullImageRequest, PullImageResponse};
use tonic::Status;

pub async fn handle(svc: &CriService, req: PullImageRequest) -> Result<PullImageResponse, Status> {
    let image = image_ref(req.image.as_ref(), "PullImage")?;
    let creds = credentials(req.auth.as_ref())?;
    match svc.images.pull(&image, &creds).await {
        Ok(record) => Ok(PullImageResponse {
            image_ref: record.id.to_string(),
        }),
        Err(e) => {
            tracing::warn!(image = %image, error = %e, "pull failed");
            Err(pull_status(&e))
        }
    }
}
