//! Pod sandboxes: records and lifecycle, pinned namespaces, the pod's /dev/shm, and CNI networking.

pub mod cni;
pub mod manager;
pub mod netns;
pub mod pidns;
pub mod store;
