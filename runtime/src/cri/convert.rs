//! Translations shared by the CRI calls: image records to CRI images, service errors to gRPC statuses.

use crate::image::import::ImportError;
use crate::image::manager::PullError;
use crate::image::registry::{Credentials, RegistryError};
use crate::image::store::{ImageRecord, ImageStoreError};
use base64::Engine;
use keelson_cri::v1::{AuthConfig, Image, ImageSpec, Int64Value};
use tonic::{Code, Status};

/// The CRI view of an image. The user follows containerd: a numeric `User` gives `uid`, a name
/// gives `username`, and an image that sets none leaves both empty.
pub fn image_to_cri(r: &ImageRecord) -> Image {
    let user = r.config.user.as_deref().unwrap_or("");
    let user = user.split(':').next().unwrap_or("");
    let (uid, username) = if user.is_empty() {
        (None, String::new())
    } else if let Ok(uid) = user.parse::<i64>() {
        (Some(Int64Value { value: uid }), String::new())
    } else {
        (None, user.to_string())
    };
    Image {
        id: r.id.to_string(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: r.id.to_string(),
            ..Default::default()
        }),
        pinned: r.pinned,
    }
}

/// Registry credentials from a CRI `AuthConfig`; `auth` is base64 `user:password` as in docker's config.json.
pub fn credentials(auth: Option<&AuthConfig>) -> Result<Credentials, Status> {
    let Some(a) = auth else {
        return Ok(Credentials::default());
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let mut c = Credentials {
        username: non_empty(&a.username),
        password: non_empty(&a.password),
        identity_token: non_empty(&a.identity_token),
        registry_token: non_empty(&a.registry_token),
    };
    if c.username.is_none() && !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                Status::invalid_argument("auth config: \"auth\" is not base64 of user:password")
            })?;
        let (user, pass) = decoded.split_once(':').ok_or_else(|| {
            Status::invalid_argument("auth config: \"auth\" is not base64 of user:password")
        })?;
        c.username = Some(user.to_string());
        c.password = Some(pass.to_string());
    }
    Ok(c)
}

fn registry_code(e: &RegistryError) -> Code {
    match e {
        RegistryError::NotFound { .. } => Code::NotFound,
        RegistryError::Unauthorized { .. } | RegistryError::Token { .. } => Code::Unauthenticated,
        RegistryError::UnsupportedAuth { .. } => Code::PermissionDenied,
        RegistryError::InvalidReference { .. } => Code::InvalidArgument,
        RegistryError::Transport { .. } => Code::Unavailable,
        RegistryError::DigestMismatch { .. } => Code::DataLoss,
        RegistryError::TlsSetup { .. } => Code::Unavailable,
        RegistryError::Hosts(_) | RegistryError::NoHosts { .. } => Code::FailedPrecondition,
        // Several hosts failed: the most telling failure decides.
        RegistryError::AllHostsFailed { .. } => registry_code(e.primary()),
        _ => Code::Unknown,
    }
}

pub fn pull_status(e: &PullError) -> Status {
    let code = match e {
        PullError::Reference(_) => Code::InvalidArgument,
        PullError::Registry { source, .. } => registry_code(source),
        PullError::Manifest { .. } | PullError::NestedIndex { .. } => Code::FailedPrecondition,
        PullError::SizeMismatch { .. }
        | PullError::DigestMismatch { .. }
        | PullError::DiffIdMismatch { .. }
        | PullError::Unpack { .. } => Code::DataLoss,
        PullError::Transfer { .. } => Code::Unavailable,
        PullError::Content { .. }
        | PullError::Snapshot { .. }
        | PullError::Store { .. }
        | PullError::Internal { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

pub fn store_status(e: &ImageStoreError) -> Status {
    match e {
        ImageStoreError::Ambiguous { .. } => Status::invalid_argument(e.to_string()),
        ImageStoreError::Io { .. } => Status::internal(e.to_string()),
    }
}

pub fn import_status(e: &ImportError) -> Status {
    match e {
        ImportError::Io { .. } | ImportError::Store { .. } => Status::internal(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

/// The image named in a request; an absent or empty spec is the caller's error.
pub fn image_ref(spec: Option<&ImageSpec>, call: &str) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(Status::invalid_argument(format!(
            "{call}: image spec is empty"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::Digest;
    use crate::image::manifest::{ContainerConfig, Platform};

    fn rec(user: Option<&str>) -> ImageRecord {
        ImageRecord {
            version: 1,
            id: Digest::of(b"c"),
            repo_tags: vec!["docker.io/library/x:1".into()],
            repo_digests: vec![],
            manifests: vec![],
            chain_ids: vec![],
            size: 5,
            config: ContainerConfig {
                user: user.map(Into::into),
                ..Default::default()
            },
            platform: Platform::host(),
            pinned: false,
            updated: 0,
        }
    }

    #[test]
    fn user_becomes_uid_or_username() {
        assert_eq!(
            image_to_cri(&rec(Some("1002:1003"))).uid,
            Some(Int64Value { value: 1002 })
        );
        let named = image_to_cri(&rec(Some("www-data:1004")));
        assert_eq!((named.uid, named.username.as_str()), (None, "www-data"));
        let none = image_to_cri(&rec(None));
        assert_eq!((none.uid, none.username.as_str()), (None, ""));
    }

    #[test]
    fn auth_field_is_decoded() {
        let a = AuthConfig {
            auth: "dXNlcjpwYTpzcw==".into(),
            ..Default::default()
        }; // user:pa:ss
        let c = credentials(Some(&a)).unwrap();
        assert_eq!(c.username.as_deref(), Some("user"));
        assert_eq!(c.password.as_deref(), Some("pa:ss"));
        let bad = AuthConfig {
            auth: "%%%".into(),
            ..Default::default()
        };
        assert_eq!(
            credentials(Some(&bad)).unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn multi_host_failures_take_the_most_telling_code() {
        let unreachable = || RegistryError::Transport {
            host: "127.0.0.1:9".into(),
            what: "manifest x:1".into(),
            detail: "connection refused".into(),
        };
        let missing = RegistryError::NotFound {
            what: "manifest x:1".into(),
            host: "127.0.0.1:5000".into(),
        };
        let e = RegistryError::AllHostsFailed {
            what: "manifest x:1".into(),
            failures: vec![("mirror".into(), unreachable()), ("server".into(), missing)],
        };
        assert_eq!(registry_code(&e), Code::NotFound);
        let e = RegistryError::AllHostsFailed {
            what: "manifest x:1".into(),
            failures: vec![
                ("mirror".into(), unreachable()),
                ("server".into(), unreachable()),
            ],
        };
        assert_eq!(registry_code(&e), Code::Unavailable);
    }
}
