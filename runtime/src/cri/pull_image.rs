//! `PullImage`: fetch, verify and unpack an image; answers with its id.

use super::CriService;
use super::convert::{credentials, image_ref, pull_status};
use keelson_cri::v1::{PullImageRequest, PullImageResponse};
use std::time::{Duration, Instant};
use tonic::Status;

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`, unit H M S m u n).
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Pulls within the caller's deadline: when it passes, the pull is abandoned (its half-made
/// snapshots are discarded) and the answer is DEADLINE_EXCEEDED, as the kubelet expects.
pub async fn handle(
    svc: &CriService,
    req: PullImageRequest,
    deadline: Option<Duration>,
) -> Result<PullImageResponse, Status> {
    let image = image_ref(req.image.as_ref(), "PullImage")?;
    let creds = credentials(req.auth.as_ref())?;
    let started = Instant::now();
    let expired = || {
        Status::deadline_exceeded(format!(
            "pulling {image}: the caller's deadline of {:?} passed",
            deadline.unwrap_or_default()
        ))
    };
    let pulled = match deadline {
        Some(limit) => tokio::time::timeout(limit, svc.images.pull(&image, &creds))
            .await
            .map_err(|_| expired())?,
        None => svc.images.pull(&image, &creds).await,
    };
    match pulled {
        Ok(record) => Ok(PullImageResponse {
            image_ref: record.id.to_string(),
        }),
        Err(_) if deadline.is_some_and(|d| started.elapsed() >= d) => Err(expired()),
        Err(e) => {
            tracing::warn!(image = %image, error = %e, "pull failed");
            Err(pull_status(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        for (v, d) in [
            ("1m", Duration::from_millis(1)),
            ("30S", Duration::from_secs(30)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("500u", Duration::from_micros(500)),
            ("7n", Duration::from_nanos(7)),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_timeout(&m), Some(d), "{v}");
        }
        m.insert("grpc-timeout", "10x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }
}
