//! The CRI v1 gRPC surface: one module per call, each a thin translation onto the runtime's services.

mod attach;
mod container_convert;
mod container_stats;
mod container_status;
mod convert;
mod create_container;
mod exec;
mod exec_sync;
mod get_container_events;
mod image_fs_info;
mod image_service;
mod image_status;
mod import_images;
mod list_container_stats;
mod list_containers;
mod list_images;
mod list_pod_sandbox;
mod list_pod_sandbox_stats;
mod pod_sandbox_stats;
mod pod_sandbox_status;
mod port_forward;
mod pull_image;
mod remove_container;
mod remove_image;
mod remove_pod_sandbox;
mod reopen_container_log;
mod run_pod_sandbox;
mod runtime_config;
mod runtime_service;
mod sandbox_convert;
mod start_container;
mod status;
mod stop_container;
mod stop_pod_sandbox;
mod update_container_resources;
mod update_runtime_config;
mod version;

use crate::config::RuntimeConfig;
use crate::container::manager::ContainerManager;
use crate::container::stats::StatsCollector;
use crate::image::manager::ImageManager;
use crate::sandbox::manager::SandboxManager;
use crate::streaming::StreamingServer;
use std::sync::Arc;

/// Serves RuntimeService, ImageService and keelson's admin API over one socket.
#[derive(Clone)]
pub struct CriService {
    pub(crate) images: Arc<ImageManager>,
    pub(crate) sandboxes: Arc<SandboxManager>,
    pub(crate) containers: Arc<ContainerManager>,
    pub(crate) config: Arc<RuntimeConfig>,
    /// Cgroup counters and the samples stats are computed from.
    pub(crate) stats: Arc<StatsCollector>,
    /// Serves the URLs Exec, Attach and PortForward answer with; `None` until started.
    pub(crate) streaming: Option<Arc<StreamingServer>>,
}

impl CriService {
    pub fn new(
        images: Arc<ImageManager>,
        sandboxes: Arc<SandboxManager>,
        containers: Arc<ContainerManager>,
        config: Arc<RuntimeConfig>,
    ) -> Self {
        let stats = Arc::new(StatsCollector::host(images.root().display().to_string()));
        Self {
            images,
            sandboxes,
            containers,
            config,
            stats,
            streaming: None,
        }
    }

    /// Adds the streaming server behind Exec, Attach and PortForward.
    pub fn with_streaming(mut self, streaming: Arc<StreamingServer>) -> Self {
        self.streaming = Some(streaming);
        self
    }

    pub(crate) fn streaming(&self) -> Result<&Arc<StreamingServer>, tonic::Status> {
        self.streaming
            .as_ref()
            .ok_or_else(|| tonic::Status::unavailable("the streaming server is not running"))
    }
}
