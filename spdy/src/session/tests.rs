//! Session tests: two sessions over an in-memory duplex, and a session against a raw peer that
//! speaks frames through its own [`FrameCodec`] (standing in for spdystream).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::time::timeout;

use super::*;

const T: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn pair() -> ((SessionHandle, Incoming), (SessionHandle, Incoming)) {
    let (a, b) = duplex(64 * 1024);
    (Session::client(a), Session::server(b))
}

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

async fn read_all(s: &mut Stream) -> Vec<u8> {
    let mut out = Vec::new();
    within("read to end", s.read_to_end(&mut out))
        .await
        .unwrap();
    out
}

/// A peer that speaks raw frames, as spdystream would.
struct RawPeer {
    io: DuplexStream,
    codec: FrameCodec,
    buf: BytesMut,
}

impl RawPeer {
    fn new(io: DuplexStream) -> Self {
        RawPeer {
            io,
            codec: FrameCodec::new(),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = Vec::new();
        self.codec.encode(&frame, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    /// The next frame, or `None` at EOF.
    async fn recv(&mut self) -> Option<Frame> {
        within("raw peer frame", async {
            loop {
                if let Some(frame) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(frame);
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        })
        .await
    }

    async fn open(&mut self, stream_id: u32, fin: bool, headers: Headers) {
        let syn = Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            fin,
            unidirectional: false,
            headers,
        };
        self.send(syn).await;
        assert_eq!(
            self.recv().await,
            Some(Frame::SynReply {
                stream_id,
                fin: false,
                headers: Vec::new()
            })
        );
    }
}

fn raw_server() -> (RawPeer, SessionHandle, Incoming) {
    let (a, b) = duplex(64 * 1024);
    let (handle, incoming) = Session::server(b);
    (RawPeer::new(a), handle, incoming)
}

/// Echo every accepted stream back, prefixed with its "port" header.
fn spawn_echo(mut incoming: Incoming) {
    tokio::spawn(async move {
        while let Some(mut s) = incoming.accept().await {
            tokio::spawn(async move {
                let mut body = Vec::new();
                s.read_to_end(&mut body).await.unwrap();
                let port = s.header("PORT").unwrap_or("-").to_string();
                s.write_all(port.as_bytes()).await.unwrap();
                s.write_all(&body).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
}

async fn echo_through(handle: &SessionHandle, port: usize, len: usize) -> u32 {
    let mut s = handle
        .open(h(&[("StreamType", "data"), ("Port", &port.to_string())]))
        .await
        .unwrap();
    let body: Vec<u8> = (0..len).map(|i| (i * 7 + port) as u8).collect();
    s.write_all(&body).await.unwrap();
    s.shutdown().await.unwrap();
    let back = read_all(&mut s).await;
    let prefix = port.to_string();
    assert_eq!(&back[..prefix.len()], prefix.as_bytes());
    assert_eq!(
        back[prefix.len()..],
        body[..],
        "stream {} of port {port}",
        s.id()
    );
    s.id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_in_both_directions() {
    let ((client, client_incoming), (server, server_incoming)) = pair();
    spawn_echo(server_incoming);
    spawn_echo(client_incoming);
    let mut tasks = Vec::new();
    for port in 0..8 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            echo_through(&c, port, 1000 + port * 40_000).await
        }));
    }
    for port in 100..104 {
        let s = server.clone();
        tasks.push(tokio::spawn(
            async move { echo_through(&s, port, 5000).await },
        ));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(within("echo", t).await.unwrap());
    }
    assert!(
        ids[..8].iter().all(|id| id % 2 == 1),
        "client ids are odd: {ids:?}"
    );
    assert!(
        ids[8..].iter().all(|id| id % 2 == 0 && *id > 0),
        "server ids are even: {ids:?}"
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_leaves_the_other_direction_open() {
    let ((client, _ci), (_server, mut server_incoming)) = pair();
    let server_side = tokio::spawn(async move {
        let mut s = server_incoming.accept().await.unwrap();
        assert_eq!(s.header("streamtype"), Some("stdin"));
        assert_eq!(read_all(&mut s).await, b"request");
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"resp").await.unwrap();
        s.write_all(b"onse").await.unwrap();
        s.shutdown().await.unwrap();
        s.shutdown().await.unwrap(); // idempotent
        let err = s.write_all(b"late").await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    });
    let mut s = client.open(h(&[("streamType", "stdin")])).await.unwrap();
    assert_eq!(s.headers(), &h(&[("streamType", "stdin")]));
    s.write_all(b"request").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(
        s.write_all(b"x").await.unwrap_err().kind(),
        std::io::ErrorKind::BrokenPipe
    );
    assert_eq!(read_all(&mut s).await, b"response");
    within("server side", server_side).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_does_not_starve_another_stream() {
    const LEN: usize = 8 << 20;
    let ((client, _ci), (_server, mut server_incoming)) = pair();
    tokio::spawn(async move {
        while let Some(mut s) = server_incoming.accept().await {
            tokio::spawn(async move {
                if s.header("streamtype") == Some("bulk") {
                    let (mut n, mut sum) = (0usize, 0u64);
                    let mut chunk = vec![0u8; 10_000];
                    loop {
                        let got = s.read(&mut chunk).await.unwrap();
                        if got == 0 {
                            break;
                        }
                        for (i, b) in chunk[..got].iter().enumerate() {
                            assert_eq!(*b, ((n + i) % 251) as u8, "byte {}", n + i);
                        }
                        sum += chunk[..got].iter().map(|b| u64::from(*b)).sum::<u64>();
                        n += got;
                    }
                    s.write_all(format!("{n} {sum}").as_bytes()).await.unwrap();
                } else {
                    // Ping-pong: echo each message as it arrives.
                    let mut buf = [0u8; 64];
                    loop {
                        let got = s.read(&mut buf).await.unwrap();
                        if got == 0 {
                            break;
                        }
                        s.write_all(&buf[..got]).await.unwrap();
                    }
                }
                s.shutdown().await.unwrap();
            });
        }
    });
    let mut bulk = client.open(h(&[("streamtype", "bulk")])).await.unwrap();
    let writer = tokio::spawn(async move {
        let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        bulk.write_all(&data).await.unwrap();
        bulk.shutdown().await.unwrap();
        read_all(&mut bulk).await
    });
    let mut chat = client.open(h(&[("streamtype", "chat")])).await.unwrap();
    for round in 0..50u8 {
        let started = tokio::time::Instant::now();
        chat.write_all(&[round; 8]).await.unwrap();
        let mut back = [0u8; 8];
        within("chat round", chat.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(back, [round; 8]);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "round {round} took {:?}",
            started.elapsed()
        );
    }
    let expected_sum: u64 = (0..LEN).map(|i| (i % 251) as u64).sum();
    let summary = within("bulk", writer).await.unwrap();
    assert_eq!(
        String::from_utf8(summary).unwrap(),
        format!("{LEN} {expected_sum}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_by_the_peer_ends_reads_and_fails_writes() {
    let ((client, _ci), (_server, mut server_incoming)) = pair();
    let mut s = client.open(h(&[("a", "b")])).await.unwrap();
    let accepted = within("accept", server_incoming.accept()).await.unwrap();
    accepted.reset();
    accepted.reset(); // once only
    assert_eq!(read_all(&mut s).await, b"");
    let err = s.write_all(b"after reset").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    // The locally reset side: EOF and BrokenPipe too.
    let mut accepted = accepted;
    assert_eq!(read_all(&mut accepted).await, b"");
    assert_eq!(
        accepted.write_all(b"x").await.unwrap_err().kind(),
        std::io::ErrorKind::BrokenPipe
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_waits_for_the_reply_and_fails_on_reset() {
    let (mut peer, handle, _incoming) = raw_server();
    let h2 = handle.clone();
    let refused = tokio::spawn(async move { h2.open(h(&[("streamType", "error")])).await });
    let syn = peer.recv().await.unwrap();
    assert_eq!(
        syn,
        Frame::SynStream {
            stream_id: 2,
            associated_to: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: h(&[("streamtype", "error")]),
        }
    );
    peer.send(Frame::RstStream {
        stream_id: 2,
        status: rst::REFUSED_STREAM,
    })
    .await;
    let err = within("refused open", refused).await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            SpdyError::StreamReset {
                stream_id: 2,
                status: 3
            }
        ),
        "{err}"
    );

    let h2 = handle.clone();
    let opened = tokio::spawn(async move { h2.open(Vec::new()).await });
    let Some(Frame::SynStream { stream_id: 4, .. }) = peer.recv().await else {
        panic!("no syn 4")
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!opened.is_finished(), "open returned before the reply");
    peer.send(Frame::SynReply {
        stream_id: 4,
        fin: false,
        headers: Vec::new(),
    })
    .await;
    let mut s = within("open", opened).await.unwrap().unwrap();
    assert_eq!(s.id(), 4);
    // No WINDOW_UPDATE ever comes from the raw peer (as from spdystream): 1 MiB still flows,
    // well past SPDY/3.1's default 64 KiB window.
    let writer = tokio::spawn(async move {
        s.write_all(&vec![9u8; 1 << 20]).await.unwrap();
        s.shutdown().await.unwrap();
        s
    });
    let mut got = 0;
    loop {
        match peer.recv().await.unwrap() {
            Frame::Data {
                stream_id: 4,
                fin: false,
                data,
            } => {
                assert!(data.len() <= MAX_WRITE_FRAME && data.iter().all(|b| *b == 9));
                got += data.len();
            }
            Frame::Data {
                stream_id: 4,
                fin: true,
                data,
            } if data.is_empty() => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, 1 << 20);
    drop(within("writer", writer).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_from_the_peer_are_echoed_and_replies_are_not() {
    let (mut peer, _handle, _incoming) = raw_server();
    peer.send(Frame::Ping { id: 1 }).await;
    assert_eq!(peer.recv().await, Some(Frame::Ping { id: 1 }));
    // An even id would be the answer to a server ping: not echoed.
    peer.send(Frame::Ping { id: 2 }).await;
    peer.send(Frame::Settings {
        clear: false,
        entries: vec![(0, 7, 1 << 20)],
    })
    .await;
    peer.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 1000,
    })
    .await;
    peer.send(Frame::Ping { id: 3 }).await;
    assert_eq!(peer.recv().await, Some(Frame::Ping { id: 3 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ids_must_increase() {
    let (mut peer, _handle, mut incoming) = raw_server();
    peer.open(3, false, Vec::new()).await;
    peer.send(Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        fin: false,
        unidirectional: false,
        headers: Vec::new(),
    })
    .await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::RstStream {
            stream_id: 1,
            status: rst::PROTOCOL_ERROR
        })
    );
    peer.send(Frame::SynStream {
        stream_id: 6,
        associated_to: 0,
        priority: 0,
        fin: false,
        unidirectional: false,
        headers: Vec::new(),
    })
    .await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::RstStream {
            stream_id: 6,
            status: rst::PROTOCOL_ERROR
        })
    );
    assert_eq!(within("accept", incoming.accept()).await.unwrap().id(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_vanishing_mid_stream_ends_everything() {
    let (mut peer, handle, mut incoming) = raw_server();
    peer.open(1, false, h(&[("streamtype", "stdout")])).await;
    peer.send(Frame::Data {
        stream_id: 1,
        fin: false,
        data: Bytes::from_static(b"partial"),
    })
    .await;
    let mut s = within("accept", incoming.accept()).await.unwrap();
    let mut first = [0u8; 7];
    within("first bytes", s.read_exact(&mut first))
        .await
        .unwrap();
    drop(peer);
    assert_eq!(read_all(&mut s).await, b"");
    within("closed", handle.closed()).await;
    assert_eq!(
        s.write_all(b"x").await.unwrap_err().kind(),
        std::io::ErrorKind::BrokenPipe
    );
    assert!(
        within("accept after close", incoming.accept())
            .await
            .is_none()
    );
    assert!(matches!(
        handle.open(Vec::new()).await,
        Err(SpdyError::SessionClosed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_from_the_peer_stops_new_streams_and_closes_when_done() {
    let (mut peer, handle, mut incoming) = raw_server();
    peer.open(1, false, Vec::new()).await;
    let mut s = within("accept", incoming.accept()).await.unwrap();
    peer.send(Frame::GoAway {
        last_good_stream_id: 0,
        status: goaway::OK,
    })
    .await;
    // Either refused at once, or (if the GOAWAY is read after the SYN_STREAM went out) failed by
    // it: stream 2 is above the peer's last good id.
    let err = within("open after goaway", handle.open(Vec::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, SpdyError::GoingAway), "{err}");
    // The existing stream still works both ways.
    peer.send(Frame::Data {
        stream_id: 1,
        fin: true,
        data: Bytes::from_static(b"in"),
    })
    .await;
    assert_eq!(read_all(&mut s).await, b"in");
    s.write_all(b"out").await.unwrap();
    s.shutdown().await.unwrap();
    let mut frames = Vec::new();
    while let Some(frame) = peer.recv().await {
        if !matches!(frame, Frame::SynStream { .. } | Frame::RstStream { .. }) {
            frames.push(frame);
        }
    }
    assert_eq!(
        frames,
        [
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from_static(b"out")
            },
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new()
            },
            Frame::GoAway {
                last_good_stream_id: 1,
                status: goaway::OK
            },
        ]
    );
    within("closed", handle.closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delivers_queued_data_then_goaway_then_eof() {
    let (mut peer, handle, mut incoming) = raw_server();
    peer.open(1, false, Vec::new()).await;
    let mut s = within("accept", incoming.accept()).await.unwrap();
    s.write_all(b"bye").await.unwrap();
    within("close", handle.close()).await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from_static(b"bye")
        })
    );
    assert_eq!(
        peer.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: 1,
            status: goaway::OK
        })
    );
    assert_eq!(peer.recv().await, None);
    assert_eq!(read_all(&mut s).await, b"");
    assert_eq!(
        s.write_all(b"x").await.unwrap_err().kind(),
        std::io::ErrorKind::BrokenPipe
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_resets_or_finishes_it() {
    let (mut peer, _handle, mut incoming) = raw_server();
    // Peer half still open: we will not read it, so RST CANCEL.
    peer.open(1, false, Vec::new()).await;
    drop(within("accept 1", incoming.accept()).await.unwrap());
    assert_eq!(
        peer.recv().await,
        Some(Frame::RstStream {
            stream_id: 1,
            status: rst::CANCEL
        })
    );
    // Peer already finished: what we wrote is delivered and then FIN, no reset.
    peer.open(3, false, Vec::new()).await;
    peer.send(Frame::Data {
        stream_id: 3,
        fin: true,
        data: Bytes::from_static(b"q"),
    })
    .await;
    let mut s = within("accept 3", incoming.accept()).await.unwrap();
    assert_eq!(read_all(&mut s).await, b"q");
    s.write_all(b"a").await.unwrap();
    drop(s);
    assert_eq!(
        peer.recv().await,
        Some(Frame::Data {
            stream_id: 3,
            fin: false,
            data: Bytes::from_static(b"a")
        })
    );
    assert_eq!(
        peer.recv().await,
        Some(Frame::Data {
            stream_id: 3,
            fin: true,
            data: Bytes::new()
        })
    );
    // Not accepting at all: streams queued when `Incoming` is dropped are reset; later ones refused.
    peer.open(5, false, Vec::new()).await;
    drop(incoming);
    assert_eq!(
        peer.recv().await,
        Some(Frame::RstStream {
            stream_id: 5,
            status: rst::CANCEL
        })
    );
    peer.send(Frame::SynStream {
        stream_id: 7,
        associated_to: 0,
        priority: 0,
        fin: false,
        unidirectional: false,
        headers: Vec::new(),
    })
    .await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::RstStream {
            stream_id: 7,
            status: rst::REFUSED_STREAM
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_closes_the_connection() {
    let ((client, _client_incoming), (server, server_incoming)) = pair();
    let kept = server.clone();
    drop(server);
    drop(server_incoming);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Still one handle: still open (but new peer streams are refused, nobody accepts them).
    assert!(matches!(
        within("refused", client.open(Vec::new())).await,
        Err(SpdyError::StreamReset {
            status: rst::REFUSED_STREAM,
            ..
        })
    ));
    let s = within("open", kept.open(Vec::new())).await.unwrap();
    drop(s);
    drop(kept);
    within("client sees the close", client.closed()).await;
    assert!(client.open(Vec::new()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_loses_only_its_own_stream() {
    let (a, b) = duplex(64 * 1024);
    let (client, _ci) = Session::client(a);
    let limits = Limits {
        stream_buffer: 64 * 1024,
        stall_timeout: Duration::from_millis(300),
    };
    let (_server, mut server_incoming) = start(b, true, limits);
    let mut stalled = client.open(h(&[("streamtype", "stalled")])).await.unwrap();
    let mut stalled_server = within("accept stalled", server_incoming.accept())
        .await
        .unwrap();
    let flood = tokio::spawn(async move {
        let chunk = vec![1u8; 32 * 1024];
        loop {
            if let Err(e) = stalled.write_all(&chunk).await {
                return e.kind();
            }
        }
    });
    // Meanwhile another stream works end to end.
    let mut chat = within("open chat", client.open(h(&[("streamtype", "chat")])))
        .await
        .unwrap();
    let mut chat_server = within("accept chat", server_incoming.accept())
        .await
        .unwrap();
    chat.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    within("chat", chat_server.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(&got, b"hello");
    // The flooding writer learns of the reset.
    assert_eq!(
        within("flood reset", flood).await.unwrap(),
        std::io::ErrorKind::BrokenPipe
    );
    // The stalled consumer gets what was buffered, then an error rather than a silent EOF.
    let mut buffered = Vec::new();
    let err = within("stalled read", stalled_server.read_to_end(&mut buffered))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(
        !buffered.is_empty() && buffered.len() <= 64 * 1024 + MAX_WRITE_FRAME,
        "{}",
        buffered.len()
    );
    chat_server.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    within("chat back", chat.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"still here");
}

#[test]
fn public_types_can_move_between_tasks() {
    fn assert_send_sync_static<T: Send + Sync + Unpin + 'static>() {}
    assert_send_sync_static::<Stream>();
    assert_send_sync_static::<SessionHandle>();
    assert_send_sync_static::<Incoming>();
    assert_send_sync_static::<FrameCodec>();
}
