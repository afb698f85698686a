//! Pod sandboxes: network namespaces and CNI (the rest of the sandbox lifecycle builds on these).

pub mod cni;
pub mod netns;
