//! Storage layer tests: the conformance suite on both backends, crash safety of the embedded
//! store, a 3-member etcd cluster, and an (ignored) measurement run.
//!
//! The etcd tests start Debian's `etcd` (package `etcd-server`) on loopback ports themselves.

mod backends;
mod cluster;
mod conformance;
mod crash;
mod measure;
mod support;
