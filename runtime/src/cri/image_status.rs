//! `ImageStatus`: one image by id, name or id prefix; `image: None` when there is no such image.

use super::CriService;
use super::convert::{image_ref, image_to_cri, store_status};
use keelson_cri::v1::{ImageStatusRequest, ImageStatusResponse};
use std::collections::HashMap;
use tonic::Status;

pub fn handle(svc: &CriService, req: ImageStatusRequest) -> Result<ImageStatusResponse, Status> {
    let spec = image_ref(req.image.as_ref(), "ImageStatus")?;
    let Some(record) = svc.images.resolve(&spec).map_err(|e| store_status(&e))? else {
        return Ok(ImageStatusResponse {
            image: None,
            info: HashMap::new(),
        });
    };
    let mut info = HashMap::new();
    if req.verbose {
        let config: serde_json::Value = svc
            .images
            .config_json(&record)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let snapshots = svc.images.snapshots();
        let detail = serde_json::json!({
            "imageSpec": config,
            "chainID": record.chain_ids.last(),
            "chainIDs": record.chain_ids,
            "manifests": record.manifests,
            "platform": record.platform,
            "lowerDirs": record.chain_ids.iter().rev().map(|c| snapshots.fs_path(c)).collect::<Vec<_>>(),
        });
        info.insert("info".to_string(), detail.to_string());
    }
    Ok(ImageStatusResponse {
        image: Some(image_to_cri(&record)),
        info,
    })
}
