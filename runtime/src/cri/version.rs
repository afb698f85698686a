//! `Version`: who we are and which CRI API we speak.

use super::CriService;
use keelson_cri::v1::{VersionRequest, VersionResponse};
use tonic::Status;

pub fn handle(_svc: &CriService, _req: VersionRequest) -> Result<VersionResponse, Status> {
    Ok(VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "keelson".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: "v1".into(),
    })
}
