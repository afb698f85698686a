//! `ImageFsInfo`: bytes and inodes the image store uses, for the kubelet's image garbage collection.

use super::CriService;
use keelson_cri::v1::{
    FilesystemIdentifier, FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse, UInt64Value,
};
use tonic::Status;

pub async fn handle(
    svc: &CriService,
    _req: ImageFsInfoRequest,
) -> Result<ImageFsInfoResponse, Status> {
    let images = svc.images.clone();
    let usage = tokio::task::spawn_blocking(move || images.usage())
        .await
        .map_err(|e| Status::internal(format!("measuring image store usage: {e}")))?;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let fs = FilesystemUsage {
        timestamp,
        fs_id: Some(FilesystemIdentifier {
            mountpoint: svc.images.root().display().to_string(),
        }),
        used_bytes: Some(UInt64Value { value: usage.bytes }),
        inodes_used: Some(UInt64Value {
            value: usage.inodes,
        }),
    };
    // Images and writable container layers share one filesystem under --root.
    Ok(ImageFsInfoResponse {
        image_filesystems: vec![fs.clone()],
        container_filesystems: vec![fs],
    })
}
