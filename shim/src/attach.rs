//! The attach wire protocol between keelson-runtime and a shim's `attach.sock`: length-prefixed
//! binary frames carrying a container's stdin, stdout/stderr, terminal resizes and its exit.
//!
//! One unix stream connection per CRI Attach session, to `<state-dir>/attach.sock` (mode 0600;
//! path: `protocol::state_file(state_dir, ATTACH_SOCKET_FILE)`). Both directions carry frames
//!
//! ```text
//! [kind: u8][len: u32 big-endian][payload: len bytes]      len <= MAX_PAYLOAD
//! ```
//!
//! - runtime -> shim: `Stdin` (bytes for the container's stdin), `StdinClose` (empty; closes the
//!   container's stdin when it was created with `--stdin-once`, else ignored), `Resize` (width
//!   u16 BE, height u16 BE; tty containers only).
//! - shim -> runtime: `Stdout`, `Stderr` (what the container writes from the moment the
//!   connection is accepted; earlier output is only in the CRI log), then `Exit` (exit code i32
//!   BE) once the container has exited and its output was sent; the shim closes the connection
//!   after it. A tty container's output is all `Stdout`.
//!
//! The shim never blocks on an attacher: one that lets more than 1 MiB of output queue up is
//! disconnected. Everything here is pure (no I/O), so an async caller can use it on a tokio
//! `UnixStream` as well as a blocking one.

use std::ops::Range;

/// The attach socket's file name inside the shim's state directory.
pub const ATTACH_SOCKET_FILE: &str = "attach.sock";
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Bytes before the payload: kind (1) and length (4).
pub const HEADER_LEN: usize = 5;

/// What a frame carries.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// runtime -> shim: bytes for the container's stdin.
    Stdin = 0,
    /// shim -> runtime: bytes the container wrote to stdout (or to its terminal).
    Stdout = 1,
    /// shim -> runtime: bytes the container wrote to stderr.
    Stderr = 2,
    /// runtime -> shim: the client closed its stdin (empty payload).
    StdinClose = 3,
    /// runtime -> shim: the terminal size, width then height, u16 big-endian each.
    Resize = 4,
    /// shim -> runtime: the container exited; exit code i32 big-endian. Last frame.
    Exit = 5,
}

impl TryFrom<u8> for FrameKind {
    type Error = AttachError;

    fn try_from(b: u8) -> Result<Self, AttachError> {
        Ok(match b {
            0 => FrameKind::Stdin,
            1 => FrameKind::Stdout,
            2 => FrameKind::Stderr,
            3 => FrameKind::StdinClose,
            4 => FrameKind::Resize,
            5 => FrameKind::Exit,
            other => return Err(AttachError::UnknownKind(other)),
        })
    }
}

/// A malformed attach frame. The connection cannot be resynchronised after one: close it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("unknown attach frame kind {0}")]
    UnknownKind(u8),
    #[error("attach frame payload of {len} bytes exceeds the limit of {max} bytes")]
    Oversize { len: usize, max: usize },
    #[error("attach resize frame has a {len}-byte payload, expected 4 (width, height)")]
    BadResize { len: usize },
    #[error("attach exit frame has a {len}-byte payload, expected 4 (exit code)")]
    BadExit { len: usize },
}

/// Append one frame to `out`.
///
/// # Panics
/// If `payload` is longer than [`MAX_PAYLOAD`] (a caller bug: split the data first, e.g. with
/// [`encode_data`]).
pub fn encode_frame(kind: FrameKind, payload: &[u8], out: &mut Vec<u8>) {
    assert!(
        payload.len() <= MAX_PAYLOAD,
        "attach frame payload of {} bytes exceeds {MAX_PAYLOAD}",
        payload.len()
    );
    out.reserve(HEADER_LEN + payload.len());
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Append `data` of any length as frames of `kind` (at most [`MAX_PAYLOAD`] bytes each; none
/// for empty data).
pub fn encode_data(kind: FrameKind, data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(MAX_PAYLOAD) {
        encode_frame(kind, chunk, out);
    }
}

/// Append a `Resize` frame.
pub fn encode_resize(width: u16, height: u16, out: &mut Vec<u8>) {
    let mut payload = [0u8; 4];
    payload[..2].copy_from_slice(&width.to_be_bytes());
    payload[2..].copy_from_slice(&height.to_be_bytes());
    encode_frame(FrameKind::Resize, &payload, out);
}

/// Append an `Exit` frame.
pub fn encode_exit(exit_code: i32, out: &mut Vec<u8>) {
    encode_frame(FrameKind::Exit, &exit_code.to_be_bytes(), out);
}

/// Decode the frame at the start of `buf`: `Ok(None)` while it is incomplete, else its kind,
/// the payload's range in `buf` and the bytes it took (header + payload). Oversize payloads and
/// unknown kinds are refused as soon as the header is in, resize and exit payloads of the wrong
/// size once the header is in.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(FrameKind, Range<usize>, usize)>, AttachError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let kind = FrameKind::try_from(kind)?;
    let Some(len) = buf.get(1..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(AttachError::Oversize {
            len,
            max: MAX_PAYLOAD,
        });
    }
    match kind {
        FrameKind::Resize if len != 4 => return Err(AttachError::BadResize { len }),
        FrameKind::Exit if len != 4 => return Err(AttachError::BadExit { len }),
        _ => {}
    }
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((kind, HEADER_LEN..total, total)))
}

/// The (width, height) of a `Resize` payload.
pub fn decode_resize(payload: &[u8]) -> Result<(u16, u16), AttachError> {
    match payload {
        [w0, w1, h0, h1] => Ok((
            u16::from_be_bytes([*w0, *w1]),
            u16::from_be_bytes([*h0, *h1]),
        )),
        _ => Err(AttachError::BadResize { len: payload.len() }),
    }
}

/// The exit code of an `Exit` payload.
pub fn decode_exit(payload: &[u8]) -> Result<i32, AttachError> {
    <[u8; 4]>::try_from(payload)
        .map(i32::from_be_bytes)
        .map_err(|_| AttachError::BadExit { len: payload.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut buf: &[u8]) -> Vec<(FrameKind, Vec<u8>)> {
        let mut frames = Vec::new();
        while let Some((kind, range, used)) = decode_frame(buf).unwrap() {
            frames.push((kind, buf[range].to_vec()));
            buf = &buf[used..];
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        frames
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        encode_frame(FrameKind::Stdin, b"hello", &mut buf);
        encode_frame(FrameKind::StdinClose, b"", &mut buf);
        encode_resize(80, 24, &mut buf);
        encode_frame(FrameKind::Stdout, b"out", &mut buf);
        encode_frame(FrameKind::Stderr, b"err", &mut buf);
        encode_exit(-1, &mut buf);
        assert_eq!(&buf[..HEADER_LEN], &[0, 0, 0, 0, 5]);
        let frames = decode_all(&buf);
        assert_eq!(
            frames
                .iter()
                .map(|(k, p)| (*k, p.as_slice()))
                .collect::<Vec<_>>(),
            vec![
                (FrameKind::Stdin, &b"hello"[..]),
                (FrameKind::StdinClose, &b""[..]),
                (FrameKind::Resize, &[0, 80, 0, 24][..]),
                (FrameKind::Stdout, &b"out"[..]),
                (FrameKind::Stderr, &b"err"[..]),
                (FrameKind::Exit, &[0xff, 0xff, 0xff, 0xff][..]),
            ]
        );
        assert_eq!(decode_resize(&frames[2].1), Ok((80, 24)));
        assert_eq!(decode_exit(&frames[5].1), Ok(-1));
        for b in 0..=5u8 {
            assert_eq!(FrameKind::try_from(b).unwrap() as u8, b);
        }
    }

    #[test]
    fn incomplete_frames_wait_for_more() {
        let mut buf = Vec::new();
        encode_frame(FrameKind::Stdout, b"abcdef", &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(decode_frame(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            decode_frame(&buf),
            Ok(Some((FrameKind::Stdout, HEADER_LEN..buf.len(), buf.len())))
        );
        // Trailing bytes of the next frame are left alone.
        buf.push(0);
        assert_eq!(decode_frame(&buf).unwrap().unwrap().2, buf.len() - 1);
    }

    #[test]
    fn large_data_is_split_at_the_payload_limit() {
        let data = vec![7u8; 2 * MAX_PAYLOAD + 3];
        let mut buf = Vec::new();
        encode_data(FrameKind::Stdout, &data, &mut buf);
        let frames = decode_all(&buf);
        assert_eq!(
            frames.iter().map(|(_, p)| p.len()).collect::<Vec<_>>(),
            vec![MAX_PAYLOAD, MAX_PAYLOAD, 3]
        );
        let mut empty = Vec::new();
        encode_data(FrameKind::Stdout, b"", &mut empty);
        assert!(empty.is_empty());
        // A payload of exactly the limit is valid.
        assert!(
            decode_frame(&buf[..HEADER_LEN + MAX_PAYLOAD])
                .unwrap()
                .is_some()
        );
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn encoding_an_oversize_payload_panics() {
        encode_frame(
            FrameKind::Stdout,
            &vec![0; MAX_PAYLOAD + 1],
            &mut Vec::new(),
        );
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert_eq!(decode_frame(&[6]), Err(AttachError::UnknownKind(6)));
        assert_eq!(
            decode_frame(&[0xff, 0, 0]),
            Err(AttachError::UnknownKind(255))
        );
        // Oversize is refused from the header alone, before the payload arrives.
        let len = (MAX_PAYLOAD as u32 + 1).to_be_bytes();
        assert_eq!(
            decode_frame(&[0, len[0], len[1], len[2], len[3]]),
            Err(AttachError::Oversize {
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            })
        );
        assert!(matches!(
            decode_frame(&[1, 0xff, 0xff, 0xff, 0xff]),
            Err(AttachError::Oversize { .. })
        ));
        assert_eq!(
            decode_frame(&[4, 0, 0, 0, 3, 0, 80, 0]),
            Err(AttachError::BadResize { len: 3 })
        );
        assert_eq!(
            decode_frame(&[4, 0, 0, 0, 0]),
            Err(AttachError::BadResize { len: 0 })
        );
        assert_eq!(
            decode_frame(&[5, 0, 0, 0, 8]),
            Err(AttachError::BadExit { len: 8 })
        );
        assert_eq!(
            decode_resize(&[1, 2, 3]),
            Err(AttachError::BadResize { len: 3 })
        );
        assert_eq!(decode_exit(&[1]), Err(AttachError::BadExit { len: 1 }));
        let err = decode_frame(&[9]).unwrap_err().to_string();
        assert!(err.contains("attach frame kind 9"), "{err}");
    }
}
