//! Robustness: a bounded, deterministic fuzz of `FrameCodec::decode`, and server sessions fed
//! garbage must end cleanly (no panic, no hang, connection released).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use keelson_spdy::{Frame, FrameCodec, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
use tokio::time::timeout;

/// xorshift64*: small, deterministic, good enough to drive a fuzz loop.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn hdrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Valid wire streams: several frames encoded by one codec (shared compression context).
fn corpus() -> Vec<Vec<u8>> {
    let frames = [
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: hdrs(&[("streamtype", "stdin"), ("requestid", "1")]),
        },
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Vec::new(),
        },
        Frame::Headers {
            stream_id: 1,
            fin: true,
            headers: hdrs(&[("x", "y")]),
        },
        Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from_static(b"some payload bytes"),
        },
        Frame::RstStream {
            stream_id: 3,
            status: 5,
        },
        Frame::Settings {
            clear: false,
            entries: vec![(0, 7, 65536)],
        },
        Frame::Ping { id: 1 },
        Frame::GoAway {
            last_good_stream_id: 1,
            status: 0,
        },
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 100,
        },
    ];
    let mut out = Vec::new();
    for start in 0..frames.len() {
        let mut codec = FrameCodec::new();
        let mut wire = Vec::new();
        for frame in frames.iter().cycle().skip(start).take(4) {
            codec.encode(frame, &mut wire).unwrap();
        }
        out.push(wire);
    }
    out
}

fn mutate(rng: &mut Rng, mut input: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        if input.is_empty() {
            break;
        }
        let at = rng.below(input.len());
        match rng.below(6) {
            0 => input[at] ^= 1 << rng.below(8),
            1 => input[at] = rng.next() as u8,
            2 => input.truncate(at),
            3 => {
                let n = 1 + rng.below(16);
                let junk = rng.bytes(n);
                input.splice(at..at, junk);
            }
            4 => {
                // A length field: the three bytes after a frame's first word.
                let at = at.min(input.len().saturating_sub(3));
                for b in input[at..].iter_mut().take(3) {
                    *b = rng.next() as u8;
                }
            }
            _ => {
                let end = (at + 1 + rng.below(32)).min(input.len());
                let copy = input[at..end].to_vec();
                input.splice(at..at, copy);
            }
        }
    }
    input
}

#[test]
fn decode_survives_random_and_mutated_input() {
    let corpus = corpus();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut frames, mut errors) = (0usize, 0usize);
    for i in 0..20_000 {
        let input = match i % 3 {
            0 => {
                let n = rng.below(300);
                let mut bytes = rng.bytes(n);
                if n >= 4 && rng.below(2) == 0 {
                    // Look like a SPDY/3 control frame of a known type, to get past the header.
                    bytes[0] = 0x80;
                    bytes[1] = 0x03;
                    bytes[2] = 0;
                    bytes[3] = 1 + rng.below(9) as u8;
                }
                bytes
            }
            _ => {
                let pick = rng.below(corpus.len());
                mutate(&mut rng, corpus[pick].clone())
            }
        };
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&input[..]);
        let mut decoded = 0;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => {
                    decoded += 1;
                    assert!(decoded <= input.len() / 8, "more frames than bytes allow");
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    errors += 1;
                    break;
                }
            }
        }
        frames += decoded;
        // A claimed length is not an allocation: partial frames grow the buffer in steps.
        assert!(
            buf.capacity() <= input.len() + 600 * 1024,
            "capacity {} for {} bytes",
            buf.capacity(),
            input.len()
        );
    }
    // The fuzz is only worth something if it reaches both outcomes often.
    assert!(
        frames > 5_000 && errors > 2_000,
        "frames {frames} errors {errors}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_session_fed_garbage_ends_cleanly() {
    let corpus = corpus();
    let mut rng = Rng(42);
    for i in 0..60 {
        let garbage = match i % 3 {
            0 => {
                let n = rng.below(2000);
                rng.bytes(n)
            }
            1 => {
                let pick = rng.below(corpus.len());
                mutate(&mut rng, corpus[pick].clone())
            }
            _ => {
                let mut g = corpus[0].clone();
                let n = rng.below(500);
                g.extend(rng.bytes(n));
                g
            }
        };
        let (mut peer, io) = duplex(16 * 1024);
        let (handle, mut incoming) = Session::server(io);
        let mut sink = Vec::new();
        let drive = async {
            let _ = peer.write_all(&garbage).await; // the session may hang up first
            let _ = peer.shutdown().await;
            let _ = peer.read_to_end(&mut sink).await; // EOF only once the session let go of it
            handle.closed().await;
            while incoming.accept().await.is_some() {}
        };
        timeout(Duration::from_secs(10), drive)
            .await
            .unwrap_or_else(|_| panic!("case {i} hung"));
        assert!(
            handle.open(Vec::new()).await.is_err(),
            "case {i}: session still usable"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_error_is_answered_with_goaway_and_a_hangup() {
    let (mut peer, io) = duplex(16 * 1024);
    let (handle, _incoming) = Session::server(io);
    // A SPDY/2 PING: wrong version.
    peer.write_all(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1])
        .await
        .unwrap();
    let mut wire = Vec::new();
    timeout(Duration::from_secs(10), peer.read_to_end(&mut wire))
        .await
        .expect("hangup")
        .unwrap();
    let mut buf = BytesMut::from(&wire[..]);
    let frame = FrameCodec::new().decode(&mut buf).unwrap();
    assert_eq!(
        frame,
        Some(Frame::GoAway {
            last_good_stream_id: 0,
            status: 1
        })
    );
    assert!(buf.is_empty());
    timeout(Duration::from_secs(10), handle.closed())
        .await
        .expect("closed");
}
