//! API errors and the Kubernetes `Status` objects clients read them from.

use serde_json::{Value, json};
use thiserror::Error;

use crate::store::StoreError;

/// One field a validation failed on (`details.causes[]` of an Invalid `Status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, ...
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, why: &str) -> Cause {
        Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {why}"),
        }
    }

    pub fn invalid(field: impl Into<String>, value: &str, why: &str) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value:?}: {why}"),
        }
    }
}

/// What a request failed with; each variant is one Kubernetes `Status` reason.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("{resource} {name:?} not found")]
    NotFound { resource: String, name: String },
    #[error("{resource} {name:?} already exists")]
    AlreadyExists { resource: String, name: String },
    #[error(
        "Operation cannot be fulfilled on {resource} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict { resource: String, name: String },
    /// A conflict with its own message (e.g. a pod already bound).
    #[error("{0}")]
    ConflictMessage(String),
    #[error("{kind} {name:?} is invalid: {}", join_causes(.causes))]
    Invalid {
        kind: String,
        name: String,
        causes: Vec<Cause>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

fn join_causes(causes: &[Cause]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::ConflictMessage(_) => 409,
            ApiError::Invalid { .. } => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::MethodNotAllowed => 405,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Expired(_) => 410,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// The `Status` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ConflictMessage(_) => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Expired(_) => "Expired",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The error as a Kubernetes `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name } => Some(resource_details(resource, name)),
            ApiError::Invalid { kind, name, causes } => {
                let (kind, group) = kind.split_once('.').unwrap_or((kind, ""));
                let mut d = json!({"name": name, "kind": kind, "causes": causes.iter().map(|c| json!({
                    "reason": c.reason, "message": c.message, "field": c.field,
                })).collect::<Vec<_>>()});
                if !group.is_empty() {
                    d["group"] = json!(group);
                }
                Some(d)
            }
            _ => None,
        };
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }

    /// A store failure while working on `resource` `name`.
    pub fn from_store(e: StoreError, resource: &str, name: &str) -> ApiError {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound {
                resource: resource.into(),
                name: name.into(),
            },
            StoreError::AlreadyExists { .. } => ApiError::AlreadyExists {
                resource: resource.into(),
                name: name.into(),
            },
            StoreError::Conflict { .. } => ApiError::Conflict {
                resource: resource.into(),
                name: name.into(),
            },
            StoreError::Compacted {
                requested,
                compacted_revision,
                ..
            } => ApiError::Expired(format!(
                "too old resource version: {requested} ({compacted_revision})"
            )),
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// `details` for a resource (`leases.coordination.k8s.io` → kind `leases`, group).
fn resource_details(resource: &str, name: &str) -> Value {
    let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
    let mut d = json!({"name": name, "kind": kind});
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_status_names_the_object() {
        let e = ApiError::NotFound {
            resource: "pods".into(),
            name: "web".into(),
        };
        let s = e.to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "pods \"web\" not found");
        assert_eq!(s["details"]["kind"], "pods");
    }

    #[test]
    fn group_resources_carry_their_group() {
        let e = ApiError::AlreadyExists {
            resource: "leases.coordination.k8s.io".into(),
            name: "l".into(),
        };
        let s = e.to_status();
        assert_eq!(s["code"], 409);
        assert_eq!(s["details"]["group"], "coordination.k8s.io");
        assert_eq!(s["details"]["kind"], "leases");
    }

    #[test]
    fn conflict_and_unauthorized() {
        let c = ApiError::Conflict {
            resource: "configmaps".into(),
            name: "c".into(),
        };
        assert_eq!(c.to_status()["reason"], "Conflict");
        assert!(c.to_string().contains("the object has been modified"));
        let u = ApiError::Unauthorized.to_status();
        assert_eq!(u["code"], 401);
        assert_eq!(u["reason"], "Unauthorized");
        assert_eq!(ApiError::MethodNotAllowed.code(), 405);
    }

    #[test]
    fn invalid_lists_causes() {
        let e = ApiError::Invalid {
            kind: "Pod".into(),
            name: "p".into(),
            causes: vec![Cause::required("spec.containers[0].image")],
        };
        let s = e.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(
            s["message"],
            "Pod \"p\" is invalid: spec.containers[0].image: Required value"
        );
        assert_eq!(
            s["details"]["causes"][0]["field"],
            "spec.containers[0].image"
        );
    }

    #[test]
    fn compacted_is_expired() {
        let e = ApiError::from_store(
            StoreError::Compacted {
                key: "/registry/pods/".into(),
                requested: 3,
                compacted_revision: 10,
            },
            "pods",
            "",
        );
        assert_eq!(e.code(), 410);
        assert_eq!(e.reason(), "Expired");
    }
}
