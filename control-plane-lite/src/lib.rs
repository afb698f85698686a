//! keelson control plane library: the storage layer, the credentials on disk, and the
//! Kubernetes API server built on them.

pub mod api;
pub mod pki;
pub mod scheduler;
pub mod server;
pub mod store;
