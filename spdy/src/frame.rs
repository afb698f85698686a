//! SPDY/3 frames: their in-memory form ([`Frame`]) and the byte codec ([`FrameCodec`]) that
//! carries the per-direction zlib header-compression contexts.
//!
//! Wire layout (all integers big-endian):
//!
//! ```text
//! control: |1| version=3 (15) | type (16) | flags (8) | length (24) | payload (length bytes)
//! data:    |0| stream id (31)             | flags (8) | length (24) | payload (length bytes)
//! ```
//!
//! Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are `count (32)` then `count` times
//! `name len (32), name, value len (32), value`, compressed with zlib primed with the SPDY/3
//! dictionary. One compressor serves everything this side sends and one decompressor everything
//! it receives, for the life of the connection; every block ends with a SYNC_FLUSH so the peer can
//! decode it without waiting for more. Hence a codec belongs to exactly one connection, and after
//! any error it must be discarded together with the connection (its zlib state is then undefined).

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::SpdyError;
use crate::dictionary::{DICTIONARY, DICTIONARY_ID};

/// Header name/value pairs. Names are lowercased (ASCII) on the wire and when decoded, as
/// SPDY/3 requires. A header with several values is one entry whose value joins them with NUL
/// (`\0`), exactly as the wire carries it: decoding never splits, and encoding merges repeated
/// names into one such entry (the spec forbids a name twice in one block).
pub type Headers = Vec<(String, String)>;

/// The SPDY version this crate speaks.
pub const VERSION: u16 = 3;
/// Largest payload a frame's 24-bit length can describe.
pub const MAX_FRAME_PAYLOAD: usize = 0x00ff_ffff;
/// Largest decompressed header block accepted or produced (zlib-bomb bound).
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Most header entries accepted in one block.
pub const MAX_HEADERS: usize = 4096;

/// Frame flag: last frame from the sender on this stream.
pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM flag: the receiver may not send on this stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// SETTINGS flag: clear previously persisted settings.
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// RST_STREAM status codes (SPDY/3 section 2.6.3).
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

const STREAM_ID_MASK: u32 = 0x7fff_ffff;
const SCRATCH: usize = 16 * 1024;
const RESERVE_STEP: usize = 256 * 1024;

/// One SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 0 (highest) ..= 7.
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// `entries` are `(flags, id (24-bit), value)`.
    Settings {
        clear: bool,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
}

/// Encoder and decoder for one connection: the compressor serves frames this side sends, the
/// decompressor frames it receives. Both are created on first use.
#[derive(Default)]
pub struct FrameCodec {
    compress: Option<Compress>,
    decompress: Option<Decompress>,
    dictionary_set: bool,
}

impl std::fmt::Debug for FrameCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCodec")
            .field("compress", &self.compress.is_some())
            .field("decompress", &self.decompress.is_some())
            .finish()
    }
}

impl FrameCodec {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the wire form of `frame` to `out`. On error nothing is appended, and the
    /// compression context is untouched (everything is validated before compressing).
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let start = out.len();
        let result = self.encode_inner(frame, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn encode_inner(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        match frame {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                check_stream_id("syn_stream", *stream_id)?;
                if *associated_to > STREAM_ID_MASK {
                    return Err(SpdyError::invalid(
                        "syn_stream",
                        "associated stream id above 2^31-1",
                    ));
                }
                if *priority > 7 {
                    return Err(SpdyError::invalid(
                        "syn_stream",
                        format!("priority {priority} above 7"),
                    ));
                }
                let block = self.compress_headers(headers)?;
                let flags = flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL);
                control_header(out, TYPE_SYN_STREAM, flags, 10 + block.len())?;
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&associated_to.to_be_bytes());
                out.push(priority << 5);
                out.push(0); // credential slot, unused
                out.extend_from_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                check_stream_id("syn_reply", *stream_id)?;
                let block = self.compress_headers(headers)?;
                control_header(out, TYPE_SYN_REPLY, flag(*fin, FLAG_FIN), 4 + block.len())?;
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&block);
            }
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                check_stream_id("headers", *stream_id)?;
                let block = self.compress_headers(headers)?;
                control_header(out, TYPE_HEADERS, flag(*fin, FLAG_FIN), 4 + block.len())?;
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                check_stream_id("rst_stream", *stream_id)?;
                control_header(out, TYPE_RST_STREAM, 0, 8)?;
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::Settings { clear, entries } => {
                if let Some((_, id, _)) = entries.iter().find(|(_, id, _)| *id > 0x00ff_ffff) {
                    return Err(SpdyError::invalid(
                        "settings",
                        format!("id {id} above 2^24-1"),
                    ));
                }
                let len = entries.len().saturating_mul(8).saturating_add(4);
                control_header(out, TYPE_SETTINGS, flag(*clear, FLAG_SETTINGS_CLEAR), len)?;
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for (flags, id, value) in entries {
                    out.extend_from_slice(&((u32::from(*flags) << 24) | id).to_be_bytes());
                    out.extend_from_slice(&value.to_be_bytes());
                }
            }
            Frame::Ping { id } => {
                control_header(out, TYPE_PING, 0, 4)?;
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                if *last_good_stream_id > STREAM_ID_MASK {
                    return Err(SpdyError::invalid(
                        "goaway",
                        "last good stream id above 2^31-1",
                    ));
                }
                control_header(out, TYPE_GOAWAY, 0, 8)?;
                out.extend_from_slice(&last_good_stream_id.to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::WindowUpdate { stream_id, delta } => {
                if *stream_id > STREAM_ID_MASK || *delta > STREAM_ID_MASK {
                    return Err(SpdyError::invalid(
                        "window_update",
                        "stream id or delta above 2^31-1",
                    ));
                }
                control_header(out, TYPE_WINDOW_UPDATE, 0, 8)?;
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&delta.to_be_bytes());
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                check_stream_id("data", *stream_id)?;
                if data.len() > MAX_FRAME_PAYLOAD {
                    return Err(SpdyError::FrameTooLarge { len: data.len() });
                }
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&length_word(flag(*fin, FLAG_FIN), data.len()));
                out.extend_from_slice(data);
            }
        }
        Ok(())
    }

    /// Decodes one frame from the front of `buf`, consuming exactly its bytes. `Ok(None)` means
    /// `buf` does not yet hold a whole frame (nothing is consumed). Control frames of unknown
    /// types are consumed and skipped (as the spec asks), so one call may consume several frames
    /// but returns at most one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        loop {
            if buf.len() < 8 {
                return Ok(None);
            }
            let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let flags = buf[4];
            let len =
                (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7]);
            if buf.len() < 8 + len {
                // Grow towards the frame in steps: a claimed length is not yet data.
                buf.reserve((8 + len - buf.len()).min(RESERVE_STEP));
                return Ok(None);
            }
            buf.advance(8);
            let payload = buf.split_to(len).freeze();
            if first & 0x8000_0000 == 0 {
                let stream_id = first & STREAM_ID_MASK;
                check_stream_id("data", stream_id)?;
                return Ok(Some(Frame::Data {
                    stream_id,
                    fin: flags & FLAG_FIN != 0,
                    data: payload,
                }));
            }
            let version = ((first >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(SpdyError::UnsupportedVersion(version));
            }
            let kind = (first & 0xffff) as u16;
            if let Some(frame) = self.decode_control(kind, flags, &payload)? {
                return Ok(Some(frame));
            }
        }
    }

    fn decode_control(
        &mut self,
        kind: u16,
        flags: u8,
        p: &[u8],
    ) -> Result<Option<Frame>, SpdyError> {
        let fin = flags & FLAG_FIN != 0;
        let frame = match kind {
            TYPE_SYN_STREAM => {
                let name = "syn_stream";
                if p.len() < 10 {
                    return Err(short(name, p.len()));
                }
                let stream_id = word(p, 0) & STREAM_ID_MASK;
                check_stream_id(name, stream_id)?;
                Frame::SynStream {
                    stream_id,
                    associated_to: word(p, 4) & STREAM_ID_MASK,
                    priority: p[8] >> 5,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.decompress_headers(&p[10..])?,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let name = if kind == TYPE_SYN_REPLY {
                    "syn_reply"
                } else {
                    "headers"
                };
                if p.len() < 4 {
                    return Err(short(name, p.len()));
                }
                let stream_id = word(p, 0) & STREAM_ID_MASK;
                check_stream_id(name, stream_id)?;
                let headers = self.decompress_headers(&p[4..])?;
                if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                exact_len("rst_stream", p, 8)?;
                let stream_id = word(p, 0) & STREAM_ID_MASK;
                check_stream_id("rst_stream", stream_id)?;
                Frame::RstStream {
                    stream_id,
                    status: word(p, 4),
                }
            }
            TYPE_SETTINGS => {
                if p.len() < 4 {
                    return Err(short("settings", p.len()));
                }
                let count = word(p, 0) as usize;
                if count.checked_mul(8).and_then(|n| n.checked_add(4)) != Some(p.len()) {
                    return Err(SpdyError::invalid(
                        "settings",
                        format!("{count} entries do not fill a {}-byte payload", p.len()),
                    ));
                }
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|e| {
                        let id_word = word(e, 0);
                        ((id_word >> 24) as u8, id_word & 0x00ff_ffff, word(e, 4))
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & FLAG_SETTINGS_CLEAR != 0,
                    entries,
                }
            }
            TYPE_PING => {
                exact_len("ping", p, 4)?;
                Frame::Ping { id: word(p, 0) }
            }
            TYPE_GOAWAY => {
                exact_len("goaway", p, 8)?;
                Frame::GoAway {
                    last_good_stream_id: word(p, 0) & STREAM_ID_MASK,
                    status: word(p, 4),
                }
            }
            TYPE_WINDOW_UPDATE => {
                exact_len("window_update", p, 8)?;
                Frame::WindowUpdate {
                    stream_id: word(p, 0) & STREAM_ID_MASK,
                    delta: word(p, 4) & STREAM_ID_MASK,
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(frame))
    }

    /// Serialises and compresses one header block (SYNC_FLUSH at its end).
    fn compress_headers(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let raw = serialize_headers(headers)?;
        let c = match &mut self.compress {
            Some(c) => c,
            None => {
                let mut c = Compress::new(Compression::default(), true);
                c.set_dictionary(&DICTIONARY)
                    .map_err(|e| SpdyError::Compression(e.to_string()))?;
                self.compress.insert(c)
            }
        };
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        let mut scratch = [0u8; 4096];
        let mut input = &raw[..];
        loop {
            let (in0, out0) = (c.total_in(), c.total_out());
            c.compress(input, &mut scratch, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            let consumed = (c.total_in() - in0) as usize;
            let produced = (c.total_out() - out0) as usize;
            out.extend_from_slice(&scratch[..produced]);
            input = &input[consumed..];
            // With a sync flush, a call that leaves output space unused has flushed everything.
            if input.is_empty() && produced < scratch.len() {
                return Ok(out);
            }
            if consumed == 0 && produced == 0 {
                return Err(SpdyError::Compression("compressor made no progress".into()));
            }
        }
    }

    /// Decompresses one header block (bounded by [`MAX_HEADER_BLOCK`]) and parses it.
    fn decompress_headers(&mut self, mut input: &[u8]) -> Result<Headers, SpdyError> {
        let d = self.decompress.get_or_insert_with(|| Decompress::new(true));
        let mut raw = Vec::new();
        let mut scratch = vec![0u8; SCRATCH];
        loop {
            let (in0, out0) = (d.total_in(), d.total_out());
            let result = d.decompress(input, &mut scratch, FlushDecompress::Sync);
            let consumed = (d.total_in() - in0) as usize;
            let produced = (d.total_out() - out0) as usize;
            input = &input[consumed.min(input.len())..];
            if raw.len() + produced > MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderBlockTooLarge {
                    limit: MAX_HEADER_BLOCK,
                });
            }
            raw.extend_from_slice(&scratch[..produced]);
            match result {
                Err(e) => match e.needs_dictionary() {
                    Some(id) if id == DICTIONARY_ID && !self.dictionary_set => {
                        d.set_dictionary(&DICTIONARY)
                            .map_err(|e| SpdyError::Decompression(e.to_string()))?;
                        self.dictionary_set = true;
                        continue;
                    }
                    Some(id) => {
                        return Err(SpdyError::Decompression(format!(
                            "stream wants dictionary {id:#010x}, not the spdy/3 one"
                        )));
                    }
                    None => return Err(SpdyError::Decompression(e.to_string())),
                },
                Ok(Status::StreamEnd) if !input.is_empty() => {
                    return Err(SpdyError::Decompression(
                        "zlib stream ended inside a frame".into(),
                    ));
                }
                Ok(_) => {}
            }
            if input.is_empty() && produced < scratch.len() {
                break;
            }
            if consumed == 0 && produced == 0 {
                return Err(SpdyError::Decompression(
                    "no progress on the header block".into(),
                ));
            }
        }
        parse_headers(&raw)
    }
}

fn flag(on: bool, bit: u8) -> u8 {
    if on { bit } else { 0 }
}

fn word(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

fn short(kind: &'static str, len: usize) -> SpdyError {
    SpdyError::invalid(kind, format!("payload of {len} bytes is too short"))
}

fn exact_len(kind: &'static str, p: &[u8], want: usize) -> Result<(), SpdyError> {
    if p.len() == want {
        Ok(())
    } else {
        Err(SpdyError::invalid(
            kind,
            format!("payload of {} bytes, expected {want}", p.len()),
        ))
    }
}

fn check_stream_id(kind: &'static str, id: u32) -> Result<(), SpdyError> {
    if id == 0 || id > STREAM_ID_MASK {
        return Err(SpdyError::invalid(
            kind,
            format!("stream id {id} is not in 1..=2^31-1"),
        ));
    }
    Ok(())
}

fn length_word(flags: u8, len: usize) -> [u8; 4] {
    ((u32::from(flags) << 24) | len as u32).to_be_bytes()
}

fn control_header(out: &mut Vec<u8>, kind: u16, flags: u8, len: usize) -> Result<(), SpdyError> {
    if len > MAX_FRAME_PAYLOAD {
        return Err(SpdyError::FrameTooLarge { len });
    }
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&length_word(flags, len));
    Ok(())
}

/// The uncompressed name/value block: names lowercased, repeated names merged NUL-joined.
pub(crate) fn serialize_headers(headers: &Headers) -> Result<Vec<u8>, SpdyError> {
    let mut merged: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push('\0');
                v.push_str(value);
            }
            None => merged.push((name, value.clone())),
        }
    }
    if merged.len() > MAX_HEADERS {
        return Err(SpdyError::InvalidHeaderBlock(format!(
            "{} headers exceed the limit",
            merged.len()
        )));
    }
    let size = 4 + merged
        .iter()
        .map(|(n, v)| 8 + n.len() + v.len())
        .sum::<usize>();
    if size > MAX_HEADER_BLOCK {
        return Err(SpdyError::HeaderBlockTooLarge {
            limit: MAX_HEADER_BLOCK,
        });
    }
    let mut raw = Vec::with_capacity(size);
    raw.extend_from_slice(&(merged.len() as u32).to_be_bytes());
    for (name, value) in &merged {
        raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
        raw.extend_from_slice(value.as_bytes());
    }
    Ok(raw)
}

fn parse_headers(mut raw: &[u8]) -> Result<Headers, SpdyError> {
    fn take<'a>(raw: &mut &'a [u8], n: usize) -> Result<&'a [u8], SpdyError> {
        if raw.len() < n {
            return Err(SpdyError::InvalidHeaderBlock("truncated".into()));
        }
        let (head, rest) = raw.split_at(n);
        *raw = rest;
        Ok(head)
    }
    fn take_str(raw: &mut &[u8], what: &str) -> Result<String, SpdyError> {
        let len = u32::from_be_bytes(take(raw, 4)?.try_into().expect("4 bytes")) as usize;
        let bytes = take(raw, len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| SpdyError::InvalidHeaderBlock(format!("header {what} is not utf-8")))
    }
    let count = u32::from_be_bytes(take(&mut raw, 4)?.try_into().expect("4 bytes")) as usize;
    if count > MAX_HEADERS {
        return Err(SpdyError::InvalidHeaderBlock(format!(
            "{count} headers exceed the limit"
        )));
    }
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let mut name = take_str(&mut raw, "name")?;
        name.make_ascii_lowercase();
        let value = take_str(&mut raw, "value")?;
        headers.push((name, value));
    }
    if !raw.is_empty() {
        return Err(SpdyError::InvalidHeaderBlock(format!(
            "{} bytes after the last header",
            raw.len()
        )));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests;
