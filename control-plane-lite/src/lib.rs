//! keelson control plane library: today the storage layer the API server builds on.

pub mod store;
