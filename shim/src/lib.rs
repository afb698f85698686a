//! keelson-shim library: the runtime <-> shim protocol, the shim's on-disk files and a small client.
//!
//! `keelson-runtime` depends on this library to talk to its per-container `keelson-shim`
//! processes. Nothing here calls libcontainer (that lives in the `keelson-shim` binary's own
//! modules) and nothing here needs an async runtime: the serde types and the line codec
//! ([`protocol::encode_request`], [`protocol::decode_response`]) are enough to speak the protocol
//! over a tokio `UnixStream`, and [`protocol::ShimClient`] is a blocking client for simple callers
//! and tests.
//!
//! Layout of a shim's state directory (`--state-dir`, owned by the runtime):
//!
//! ```text
//! <state-dir>/shim.sock   unix stream socket, newline-delimited JSON requests/responses (v1)
//! <state-dir>/shim.json   {"v":1,"id":..,"shim_pid":..,"init_pid":..,..}  written once the container is created
//! <state-dir>/attach.sock unix stream socket, binary attach frames (see [`attach`]): container
//!                         stdin/stdout/stderr, terminal resizes, the exit code
//! <state-dir>/exit.json   {"v":1,"exit_code":..,"exited_at_unix_nanos":..,"reason":..,"message":..}
//!                         written (temp + fsync + rename) when the container's init has exited
//! ```

pub mod attach;
pub mod fdpass;
pub mod protocol;

pub use protocol::{
    ContainerStatus, ErrorKind, ErrorReply, ExecResult, ExitInfo, ExitReason, PROTOCOL_VERSION,
    ProtocolError, Request, Response, ShimClient, ShimFile, StateInfo, StreamExecResult,
};
