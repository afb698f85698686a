//! Translations for the container calls: records to CRI containers and statuses, errors to gRPC.

use crate::container::manager::{ContainerError, ContainerManager};
use crate::container::store::{ContainerRecord, ContainerState};
use keelson_cri::v1::{self, Container, ContainerMetadata, ContainerStatus, ImageSpec};
use tonic::Status;

pub fn state(s: ContainerState) -> v1::ContainerState {
    match s {
        ContainerState::Creating | ContainerState::Created => v1::ContainerState::ContainerCreated,
        ContainerState::Running => v1::ContainerState::ContainerRunning,
        ContainerState::Exited => v1::ContainerState::ContainerExited,
    }
}

fn image_spec(r: &ContainerRecord) -> ImageSpec {
    ImageSpec {
        image: r.image.clone(),
        user_specified_image: r.image.clone(),
        ..Default::default()
    }
}

pub fn to_cri(r: &ContainerRecord) -> Container {
    Container {
        id: r.id.clone(),
        pod_sandbox_id: r.sandbox_id.clone(),
        metadata: Some(ContainerMetadata {
            name: r.name.clone(),
            attempt: r.attempt,
        }),
        image: Some(image_spec(r)),
        image_ref: r.image_id.to_string(),
        state: state(r.state) as i32,
        created_at: r.created_at,
        labels: r.labels.clone().into_iter().collect(),
        annotations: r.annotations.clone().into_iter().collect(),
        image_id: r.image_id.to_string(),
    }
}

pub fn status(r: &ContainerRecord) -> ContainerStatus {
    let config = ContainerManager::config_of(r);
    ContainerStatus {
        id: r.id.clone(),
        metadata: Some(ContainerMetadata {
            name: r.name.clone(),
            attempt: r.attempt,
        }),
        state: state(r.state) as i32,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        image: Some(image_spec(r)),
        image_ref: r.image_id.to_string(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: r.labels.clone().into_iter().collect(),
        annotations: r.annotations.clone().into_iter().collect(),
        mounts: config
            .as_ref()
            .map(|c| c.mounts.clone())
            .unwrap_or_default(),
        log_path: r
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: config
            .as_ref()
            .and_then(|c| c.linux.as_ref())
            .and_then(|l| l.resources.clone())
            .map(|linux| v1::ContainerResources {
                linux: Some(linux),
                windows: None,
            }),
        image_id: r.image_id.to_string(),
        user: None,
        stop_signal: 0,
    }
}

pub fn error_status(e: &ContainerError) -> Status {
    match e {
        ContainerError::Invalid(_) | ContainerError::Spec(_) => {
            Status::invalid_argument(e.to_string())
        }
        ContainerError::SandboxNotFound(_)
        | ContainerError::NotFound(_)
        | ContainerError::ImageNotFound(_) => Status::not_found(e.to_string()),
        ContainerError::NameTaken { .. } => Status::already_exists(e.to_string()),
        ContainerError::SandboxNotReady(_) | ContainerError::WrongState { .. } => {
            Status::failed_precondition(e.to_string())
        }
        _ => Status::internal(e.to_string()),
    }
}

/// Runs a blocking container operation off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ContainerError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("container task failed: {e}")))?
        .map_err(|e| error_status(&e))
}
