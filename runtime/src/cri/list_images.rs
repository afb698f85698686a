//! `ListImages`: every image, or the one the filter names.

use super::CriService;
use super::convert::{image_to_cri, store_status};
use keelson_cri::v1::{ListImagesRequest, ListImagesResponse};
use tonic::Status;

pub fn handle(svc: &CriService, req: ListImagesRequest) -> Result<ListImagesResponse, Status> {
    let wanted = req
        .filter
        .and_then(|f| f.image)
        .map(|s| s.image)
        .filter(|s| !s.trim().is_empty());
    let records = match wanted {
        None => svc.images.list(),
        Some(spec) => svc
            .images
            .resolve(&spec)
            .map_err(|e| store_status(&e))?
            .into_iter()
            .collect(),
    };
    Ok(ListImagesResponse {
        images: records.iter().map(image_to_cri).collect(),
    })
}
