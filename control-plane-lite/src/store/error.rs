//! Errors every store backend returns; the API server maps them to HTTP status codes.

use thiserror::Error;

/// What went wrong in a store operation. Messages are lowercase and name the key (or the
/// prefix, for lists and watches).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StoreError {
    /// The key does not exist (HTTP 404).
    #[error("key {key} not found")]
    NotFound { key: String },
    /// `create` on a key that exists (HTTP 409 AlreadyExists).
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    /// The key's mod revision is not the expected one (HTTP 409 Conflict).
    #[error("key {key} has been modified: current revision is {current_revision}")]
    Conflict { key: String, current_revision: i64 },
    /// The requested revision is older than the retained history (HTTP 410 Gone).
    /// `compacted_revision` is 0 when the backend did not say which revision it kept.
    #[error(
        "{key}: revision {requested} has been compacted (history starts after {compacted_revision})"
    )]
    Compacted {
        key: String,
        requested: i64,
        compacted_revision: i64,
    },
    /// The backend cannot be reached or is shutting down (HTTP 503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: corruption, I/O failure, a bug (HTTP 500).
    #[error("store failure: {0}")]
    Internal(String),
}

impl StoreError {
    /// An `Internal` error saying what was being done to which key, and why it failed.
    pub(crate) fn internal(what: impl std::fmt::Display, why: impl std::fmt::Display) -> Self {
        StoreError::Internal(format!("{what}: {why}"))
    }

    /// An `Unavailable` error saying what was being done to which key, and why it failed.
    pub(crate) fn unavailable(what: impl std::fmt::Display, why: impl std::fmt::Display) -> Self {
        StoreError::Unavailable(format!("{what}: {why}"))
    }

    /// True for `Compacted`: the API server answers 410 Gone and clients relist.
    pub fn is_compacted(&self) -> bool {
        matches!(self, StoreError::Compacted { .. })
    }
}
