//! Codec tests: round trips of every frame type, the dictionary's identity, and header-block
//! interop against independently driven zlib streams.

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use sha2::{Digest, Sha256};

use super::*;
use crate::dictionary::{DICTIONARY, DICTIONARY_ID, DICTIONARY_LEN};

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn all_frames() -> Vec<Frame> {
    vec![
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: h(&[("streamtype", "error"), ("requestid", "0")]),
        },
        Frame::SynStream {
            stream_id: 0x7fff_ffff,
            associated_to: 5,
            priority: 7,
            fin: true,
            unidirectional: true,
            headers: Vec::new(),
        },
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Vec::new(),
        },
        Frame::SynReply {
            stream_id: 3,
            fin: true,
            headers: h(&[("status", "200 OK")]),
        },
        Frame::RstStream {
            stream_id: 3,
            status: rst::CANCEL,
        },
        Frame::Settings {
            clear: true,
            entries: vec![(1, 7, 65536), (0, 4, 100)],
        },
        Frame::Settings {
            clear: false,
            entries: Vec::new(),
        },
        Frame::Ping { id: 1 },
        Frame::Ping { id: 0xffff_fffe },
        Frame::GoAway {
            last_good_stream_id: 9,
            status: goaway::PROTOCOL_ERROR,
        },
        Frame::Headers {
            stream_id: 2,
            fin: true,
            headers: h(&[("x-a", "1")]),
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 0x7fff_ffff,
        },
        Frame::Data {
            stream_id: 5,
            fin: false,
            data: Bytes::from_static(b"hello"),
        },
        Frame::Data {
            stream_id: 5,
            fin: true,
            data: Bytes::new(),
        },
        Frame::Data {
            stream_id: 7,
            fin: false,
            data: Bytes::from(vec![0xa5; 100_000]),
        },
    ]
}

#[test]
fn every_frame_type_round_trips_through_one_codec_pair() {
    let (mut tx, mut rx) = (FrameCodec::new(), FrameCodec::new());
    let mut wire = Vec::new();
    for frame in all_frames() {
        tx.encode(&frame, &mut wire).unwrap();
    }
    // Decode from a buffer that grows a few bytes at a time: partial frames must yield None.
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for chunk in wire.chunks(7) {
        buf.extend_from_slice(chunk);
        while let Some(frame) = rx.decode(&mut buf).unwrap() {
            decoded.push(frame);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(decoded, all_frames());
}

#[test]
fn header_names_are_lowercased_and_repeats_merged_with_nul() {
    let (mut tx, mut rx) = (FrameCodec::new(), FrameCodec::new());
    let mut wire = Vec::new();
    let headers = h(&[("StreamType", "data"), ("Port", "80"), ("port", "443")]);
    tx.encode(
        &Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers,
        },
        &mut wire,
    )
    .unwrap();
    let frame = rx.decode(&mut BytesMut::from(&wire[..])).unwrap().unwrap();
    let Frame::SynReply { headers, .. } = frame else {
        panic!("{frame:?}")
    };
    assert_eq!(
        headers,
        h(&[("streamtype", "data"), ("port", "80\u{0}443")])
    );
}

#[test]
fn control_frame_layout_is_the_spdy3_one() {
    let mut wire = Vec::new();
    let mut codec = FrameCodec::new();
    codec
        .encode(
            &Frame::RstStream {
                stream_id: 3,
                status: 5,
            },
            &mut wire,
        )
        .unwrap();
    assert_eq!(
        wire,
        [0x80, 0x03, 0x00, 0x03, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 5]
    );
    wire.clear();
    codec
        .encode(
            &Frame::Data {
                stream_id: 5,
                fin: true,
                data: Bytes::from_static(b"ab"),
            },
            &mut wire,
        )
        .unwrap();
    assert_eq!(wire, [0, 0, 0, 5, 0x01, 0, 0, 2, b'a', b'b']);
    wire.clear();
    let syn = Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 3,
        fin: false,
        unidirectional: true,
        headers: Vec::new(),
    };
    codec.encode(&syn, &mut wire).unwrap();
    assert_eq!(&wire[..4], [0x80, 0x03, 0x00, 0x01]);
    assert_eq!(wire[4], FLAG_UNIDIRECTIONAL);
    assert_eq!(&wire[8..18], [0, 0, 0, 1, 0, 0, 0, 0, 3 << 5, 0]);
    let len = u32::from_be_bytes([0, wire[5], wire[6], wire[7]]) as usize;
    assert_eq!(len, wire.len() - 8);
}

#[test]
fn unknown_control_frames_are_skipped() {
    // A CREDENTIAL frame (type 10, unused by SPDY/3.1 peers) followed by a PING.
    let mut wire = vec![0x80, 0x03, 0x00, 0x0a, 0, 0, 0, 3, 1, 2, 3];
    FrameCodec::new()
        .encode(&Frame::Ping { id: 7 }, &mut wire)
        .unwrap();
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        FrameCodec::new().decode(&mut buf).unwrap(),
        Some(Frame::Ping { id: 7 })
    );
    assert!(buf.is_empty());
}

#[test]
fn malformed_frames_are_errors() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "version 2",
            vec![0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1],
        ),
        ("short ping", vec![0x80, 0x03, 0x00, 0x06, 0, 0, 0, 2, 0, 1]),
        ("data on stream 0", vec![0, 0, 0, 0, 0, 0, 0, 1, 9]),
        (
            "rst on stream 0",
            vec![0x80, 0x03, 0x00, 0x03, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1],
        ),
        (
            "settings count lies",
            vec![0x80, 0x03, 0x00, 0x04, 0, 0, 0, 4, 0, 0, 0, 9],
        ),
        (
            "syn_reply without block",
            vec![0x80, 0x03, 0x00, 0x02, 0, 0, 0, 4, 0, 0, 0, 1],
        ),
        (
            "syn_reply raw garbage block",
            vec![0x80, 0x03, 0x00, 0x02, 0, 0, 0, 6, 0, 0, 0, 1, 0xde, 0xad],
        ),
    ];
    for (what, wire) in cases {
        let result = FrameCodec::new().decode(&mut BytesMut::from(&wire[..]));
        assert!(result.is_err(), "{what}: {result:?}");
    }
}

#[test]
fn encode_rejects_what_the_wire_cannot_carry_and_appends_nothing() {
    let mut codec = FrameCodec::new();
    let mut out = vec![1, 2, 3];
    let big = Frame::Data {
        stream_id: 1,
        fin: false,
        data: Bytes::from(vec![0; MAX_FRAME_PAYLOAD + 1]),
    };
    let err = codec.encode(&big, &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "spdy frame of 16777216 bytes exceeds the limit"
    );
    let bad = Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 8,
        fin: false,
        unidirectional: false,
        headers: Vec::new(),
    };
    assert!(codec.encode(&bad, &mut out).is_err());
    assert!(
        codec
            .encode(
                &Frame::RstStream {
                    stream_id: 0,
                    status: 1
                },
                &mut out
            )
            .is_err()
    );
    let huge = vec![("x".to_string(), "y".repeat(MAX_HEADER_BLOCK))];
    assert!(
        codec
            .encode(
                &Frame::Headers {
                    stream_id: 1,
                    fin: false,
                    headers: huge
                },
                &mut out
            )
            .is_err()
    );
    assert_eq!(out, [1, 2, 3]);
}

/// Adler-32 written out from its definition (RFC 1950 section 8), independent of any zlib.
fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in bytes {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

#[test]
fn dictionary_is_the_spdy3_one() {
    assert_eq!(DICTIONARY_LEN, 1423);
    assert_eq!(DICTIONARY.len(), 1423);
    // The well-known SPDY/3 dictionary id.
    assert_eq!(adler32(&DICTIONARY), 0xe3c6_a7c2);
    assert_eq!(DICTIONARY_ID, adler32(&DICTIONARY));
    assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
    assert!(DICTIONARY.ends_with(b",*,enq=0."));
    let sha = Sha256::digest(DICTIONARY);
    assert_eq!(
        sha.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    );
}

/// The block of the first header frame a codec emits (the zlib stream starts there).
fn first_block(frame: &Frame) -> Vec<u8> {
    let mut wire = Vec::new();
    FrameCodec::new().encode(frame, &mut wire).unwrap();
    wire[12..].to_vec() // 8-byte control header + 4-byte stream id (SYN_REPLY)
}

#[test]
fn compressor_announces_the_dictionary_id_in_the_zlib_header() {
    let block = first_block(&Frame::SynReply {
        stream_id: 1,
        fin: false,
        headers: Vec::new(),
    });
    let (cmf, flg) = (block[0], block[1]);
    assert_eq!(cmf & 0x0f, 8, "deflate");
    assert_eq!(
        (u16::from(cmf) << 8 | u16::from(flg)) % 31,
        0,
        "header check bits"
    );
    assert_ne!(flg & 0x20, 0, "FDICT set");
    assert_eq!(
        u32::from_be_bytes(block[2..6].try_into().unwrap()),
        adler32(&DICTIONARY)
    );
}

/// Inflate with a fresh flate2 decompressor primed on demand with the dictionary.
fn inflate_all(d: &mut Decompress, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 16);
    let mut input = input;
    loop {
        let before = d.total_in();
        match d.decompress_vec(input, &mut out, FlushDecompress::Sync) {
            Err(e) if e.needs_dictionary() == Some(adler32(&DICTIONARY)) => {
                d.set_dictionary(&DICTIONARY).unwrap();
            }
            Err(e) => panic!("{e}"),
            Ok(_) => {}
        }
        input = &input[(d.total_in() - before) as usize..];
        if input.is_empty() {
            return out;
        }
    }
}

#[test]
fn our_header_blocks_inflate_with_an_independent_decompressor() {
    let mut codec = FrameCodec::new();
    let mut independent = Decompress::new(true);
    for (i, headers) in [
        h(&[("streamtype", "stdout")]),
        h(&[("streamtype", "stdout"), ("a", "b")]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut wire = Vec::new();
        codec
            .encode(
                &Frame::Headers {
                    stream_id: 1,
                    fin: false,
                    headers,
                },
                &mut wire,
            )
            .unwrap();
        let raw = inflate_all(&mut independent, &wire[12..]);
        let mut expected = Vec::new();
        if i == 0 {
            expected.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 10]);
            expected.extend_from_slice(b"streamtype");
            expected.extend_from_slice(&[0, 0, 0, 6]);
            expected.extend_from_slice(b"stdout");
        } else {
            expected.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 10]);
            expected.extend_from_slice(b"streamtype\0\0\0\x06stdout\0\0\0\x01a\0\0\0\x01b");
        }
        assert_eq!(raw, expected, "block {i}");
    }
}

#[test]
fn we_decode_blocks_from_an_independent_compressor_sharing_context() {
    // Drive flate2 the way Go's compress/zlib writer is driven by spdystream: best compression,
    // preset dictionary, one stream across frames, a sync flush after each block.
    let mut c = Compress::new(Compression::best(), true);
    assert_eq!(c.set_dictionary(&DICTIONARY).unwrap(), 0xe3c6_a7c2);
    let mut codec = FrameCodec::new();
    for n in 0..3u32 {
        let mut raw = Vec::new();
        raw.extend_from_slice(&1u32.to_be_bytes());
        raw.extend_from_slice(&4u32.to_be_bytes());
        raw.extend_from_slice(b"port");
        let value = format!("{}", 8000 + n);
        raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
        raw.extend_from_slice(value.as_bytes());
        let mut block = Vec::with_capacity(4096);
        c.compress_vec(&raw, &mut block, FlushCompress::Sync)
            .unwrap();
        assert!(block.len() < 4096);
        let mut wire: Vec<u8> = vec![0x80, 0x03, 0x00, 0x02];
        wire.extend_from_slice(&((4 + block.len()) as u32).to_be_bytes());
        wire.extend_from_slice(&(2 * n + 1).to_be_bytes());
        wire.extend_from_slice(&block);
        let frame = codec
            .decode(&mut BytesMut::from(&wire[..]))
            .unwrap()
            .unwrap();
        assert_eq!(
            frame,
            Frame::SynReply {
                stream_id: 2 * n + 1,
                fin: false,
                headers: h(&[("port", &value)])
            }
        );
    }
}

#[test]
fn a_zlib_bomb_is_cut_at_the_header_block_limit() {
    let mut c = Compress::new(Compression::best(), true);
    c.set_dictionary(&DICTIONARY).unwrap();
    let mut raw = Vec::new();
    raw.extend_from_slice(&1u32.to_be_bytes());
    raw.extend_from_slice(&1u32.to_be_bytes());
    raw.push(b'x');
    raw.extend_from_slice(&(4u32 << 20).to_be_bytes());
    raw.resize(raw.len() + (4 << 20), b'a');
    let mut block = Vec::with_capacity(64 << 10);
    c.compress_vec(&raw, &mut block, FlushCompress::Sync)
        .unwrap();
    assert!(block.len() < 64 << 10, "compresses well: {}", block.len());
    let mut wire = vec![0x80, 0x03, 0x00, 0x08];
    wire.extend_from_slice(&((4 + block.len()) as u32).to_be_bytes());
    wire.extend_from_slice(&[0, 0, 0, 1]);
    wire.extend_from_slice(&block);
    let err = FrameCodec::new()
        .decode(&mut BytesMut::from(&wire[..]))
        .unwrap_err();
    assert!(
        matches!(err, SpdyError::HeaderBlockTooLarge { .. }),
        "{err}"
    );
}
