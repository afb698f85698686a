//! keelson's CRI runtime as a library: the daemon binary is a thin shell over these modules.

pub mod config;
pub mod container;
pub mod cri;
pub mod fsutil;
pub mod image;
pub mod record_store;
pub mod sandbox;
pub mod server;
pub mod streaming;
