//! ImageService: dispatches each call to its module.

use super::CriService;
use keelson_cri::ImageService;
use keelson_cri::v1::*;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        super::list_images::handle(self, request.into_inner()).map(Response::new)
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        super::image_status::handle(self, request.into_inner()).map(Response::new)
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let deadline = super::pull_image::grpc_timeout(request.metadata());
        super::pull_image::handle(self, request.into_inner(), deadline)
            .await
            .map(Response::new)
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        super::remove_image::handle(self, request.into_inner()).map(Response::new)
    }

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        super::image_fs_info::handle(self, request.into_inner())
            .await
            .map(Response::new)
    }
}
