//! The one error type of this crate: framing, header compression and session failures.

/// What failed while encoding, decoding or running a SPDY session.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("spdy frame of {len} bytes exceeds the limit")]
    FrameTooLarge { len: usize },
    #[error("unsupported spdy version {0} (only 3 is spoken)")]
    UnsupportedVersion(u16),
    #[error("invalid spdy {kind} frame: {reason}")]
    InvalidFrame { kind: &'static str, reason: String },
    #[error("invalid spdy header block: {0}")]
    InvalidHeaderBlock(String),
    #[error("spdy header block exceeds the limit of {limit} bytes")]
    HeaderBlockTooLarge { limit: usize },
    #[error("spdy header block compression failed: {0}")]
    Compression(String),
    #[error("spdy header block decompression failed: {0}")]
    Decompression(String),
    #[error("spdy stream {stream_id} was reset by the peer (status {status})")]
    StreamReset { stream_id: u32, status: u32 },
    #[error("spdy session is going away: no new streams")]
    GoingAway,
    #[error("spdy session is closed")]
    SessionClosed,
    #[error("spdy stream ids are exhausted on this session")]
    StreamIdsExhausted,
}

impl SpdyError {
    pub(crate) fn invalid(kind: &'static str, reason: impl Into<String>) -> Self {
        SpdyError::InvalidFrame {
            kind,
            reason: reason.into(),
        }
    }
}
