//! keelson-spdy: SPDY/3.1 framing and an async session, the transport of Kubernetes' streaming
//! protocols (exec, attach, port-forward over `Upgrade: SPDY/3.1`).
//!
//! The wire behaviour follows what the Go peers actually do (`moby/spdystream` under
//! `k8s.io/apimachinery/pkg/util/httpstream/spdy`, used by kubectl, crictl and critest), not only
//! the draft spec; where the two differ the session documents which one it follows:
//!
//! * [`frame`]: the frame layouts and [`FrameCodec`], with the header-block zlib contexts.
//! * [`session`]: [`Session`], one writer task and one reader task per connection, multiplexing
//!   [`Stream`]s that implement `tokio::io::AsyncRead`/`AsyncWrite`.

mod dictionary;
pub mod error;
pub mod frame;
pub mod session;

pub use error::SpdyError;
pub use frame::{Frame, FrameCodec, Headers};
pub use session::{Incoming, Session, SessionHandle, Stream};
