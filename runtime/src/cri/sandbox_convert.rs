//! Translations for the sandbox calls: records to CRI sandboxes, sandbox errors to gRPC statuses.

use crate::sandbox::manager::{SandboxError, SandboxManager};
use crate::sandbox::store::{SandboxRecord, SandboxState};
use keelson_cri::v1::{
    LinuxPodSandboxStatus, Namespace, NamespaceMode, NamespaceOption, PodIp, PodSandbox,
    PodSandboxMetadata, PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus,
};
use tonic::Status;

pub fn state(s: SandboxState) -> PodSandboxState {
    match s {
        SandboxState::Ready => PodSandboxState::SandboxReady,
        SandboxState::Creating | SandboxState::NotReady => PodSandboxState::SandboxNotready,
    }
}

fn metadata(r: &SandboxRecord) -> PodSandboxMetadata {
    PodSandboxMetadata {
        name: r.name.clone(),
        uid: r.uid.clone(),
        namespace: r.namespace.clone(),
        attempt: r.attempt,
    }
}

pub fn to_cri(r: &SandboxRecord) -> PodSandbox {
    PodSandbox {
        id: r.id.clone(),
        metadata: Some(metadata(r)),
        state: state(r.state) as i32,
        created_at: r.created_at,
        labels: r.labels.clone().into_iter().collect(),
        annotations: r.annotations.clone().into_iter().collect(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

pub fn status(r: &SandboxRecord) -> PodSandboxStatus {
    let mode = |host: bool| if host { NamespaceMode::Node } else { NamespaceMode::Pod } as i32;
    let config = SandboxManager::config_of(r);
    let requested = config
        .as_ref()
        .and_then(|c| c.linux.as_ref())
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let ips = r.ips();
    PodSandboxStatus {
        id: r.id.clone(),
        metadata: Some(metadata(r)),
        state: state(r.state) as i32,
        created_at: r.created_at,
        network: Some(PodSandboxNetworkStatus {
            ip: ips.first().cloned().unwrap_or_default(),
            additional_ips: ips
                .iter()
                .skip(1)
                .map(|ip| PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(NamespaceOption {
                    network: mode(r.host_network),
                    ipc: mode(r.host_ipc),
                    pid: if r.host_pid {
                        NamespaceMode::Node as i32
                    } else {
                        requested.pid
                    },
                    target_id: requested.target_id,
                    userns_options: None,
                }),
            }),
        }),
        labels: r.labels.clone().into_iter().collect(),
        annotations: r.annotations.clone().into_iter().collect(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

pub fn error_status(e: &SandboxError) -> Status {
    match e {
        SandboxError::Invalid(_) => Status::invalid_argument(e.to_string()),
        SandboxError::NameTaken { .. } => Status::already_exists(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// Runs a blocking sandbox operation off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("sandbox task failed: {e}")))?
        .map_err(|e| error_status(&e))
}
