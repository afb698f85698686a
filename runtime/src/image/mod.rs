//! The image half of the runtime: references, registries, content, snapshots and the image store.

pub mod content;
pub mod credentials;
pub mod digest;
pub mod hosts;
pub mod import;
pub mod keyed_lock;
pub mod manager;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod snapshot;
pub mod store;
pub mod unpack;
