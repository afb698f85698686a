//! The CRI v1 gRPC surface: one module per call, each a thin translation onto the runtime's services.

mod convert;
mod image_fs_info;
mod image_service;
mod image_status;
mod import_images;
mod list_images;
mod pull_image;
mod remove_image;
mod runtime_config;
mod runtime_service;
mod status;
mod version;

use crate::config::RuntimeConfig;
use crate::image::manager::ImageManager;
use std::sync::Arc;

/// Serves RuntimeService, ImageService and keelson's admin API over one socket.
#[derive(Clone)]
pub struct CriService {
    pub(crate) images: Arc<ImageManager>,
    pub(crate) config: Arc<RuntimeConfig>,
}

impl CriService {
    pub fn new(images: Arc<ImageManager>, config: Arc<RuntimeConfig>) -> Self {
        Self { images, config }
    }
}
