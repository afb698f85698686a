//! Containers: their lifecycle (records, rootfs, shims) and the OCI runtime spec built from a CRI
//! CreateContainerRequest.
//!
//! [`spec::container_spec`] is pure logic: it reads the host only through [`hostfs::HostFs`], so it
//! is unit-tested with a fake host. [`manager`] drives the lifecycle through narrow traits
//! ([`manager::RootfsOps`], [`shim::ShimOps`]).

pub mod caps;
pub mod cgroups;
pub mod defaults;
pub mod events;
pub mod hostfs;
pub mod manager;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod stats;
pub mod store;
pub mod user;
