//! keelson's admin `ImportImages`: loads a tarball that sits on the runtime's host.

use super::CriService;
use super::convert::import_status;
use keelson_cri::admin::runtime_admin_server::RuntimeAdmin;
use keelson_cri::admin::{ImportImagesRequest, ImportImagesResponse, ImportedImage};
use std::path::Path;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl RuntimeAdmin for CriService {
    async fn import_images(
        &self,
        request: Request<ImportImagesRequest>,
    ) -> Result<Response<ImportImagesResponse>, Status> {
        let path = request.into_inner().path;
        if !Path::new(&path).is_absolute() {
            return Err(Status::invalid_argument(format!(
                "import path {path:?} must be absolute"
            )));
        }
        let records = self
            .images
            .import(Path::new(&path))
            .await
            .map_err(|e| import_status(&e))?;
        Ok(Response::new(ImportImagesResponse {
            images: records
                .into_iter()
                .map(|r| ImportedImage {
                    id: r.id.to_string(),
                    names: r.repo_tags,
                })
                .collect(),
        }))
    }
}
