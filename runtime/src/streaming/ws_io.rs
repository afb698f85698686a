//! Remote-command and port-forward streams over WebSocket: one connection, messages prefixed
//! with a channel byte (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; port-forward uses a
//! data and an error channel per port), base64 text frames for the `base64.` protocols, v5's
//! close signal (255, channel) for stdin. Also the byte-stream view of a WebSocket that the
//! SPDY-over-WebSocket port-forward tunnel runs SPDY on.

use super::remotecommand::{
    BoxWrite, Finish, Options, RemoteIo, ResizeDecoder, TerminalSize, Version, WsProtocol,
};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` says the peer closed that channel.
pub const CLOSE: u8 = 255;

/// Buffer between a channel and its reader or writer.
const PIPE: usize = 64 * 1024;

/// Encodes one channel message for the negotiated framing.
pub fn encode(base64: bool, channel: u8, data: &[u8]) -> Message {
    if base64 {
        let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        text.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
        Message::text(text)
    } else {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(channel);
        v.extend_from_slice(data);
        Message::binary(v)
    }
}

/// Splits one received message into channel and payload; `None` for control or malformed ones.
pub fn decode(base64: bool, msg: &Message) -> Option<(u8, Vec<u8>)> {
    match (base64, msg) {
        (false, Message::Binary(b)) if !b.is_empty() => Some((b[0], b[1..].to_vec())),
        (true, Message::Text(t)) if !t.is_empty() => {
            let bytes = t.as_bytes();
            let channel = bytes[0].checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&bytes[1..])
                .ok()?;
            Some((channel, data))
        }
        _ => None,
    }
}

/// The shared writer: every channel's messages go through one task owning the sink.
fn spawn_writer<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
) -> (mpsc::Sender<Message>, JoinHandle<()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let task = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    (tx, task)
}

/// Copies what the handler writes into `pipe` onto `channel` until it shuts down.
fn spawn_pump(
    mut pipe: DuplexStream,
    tx: mpsc::Sender<Message>,
    base64: bool,
    channel: u8,
    prefix: Option<[u8; 2]>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(p) = prefix
            && tx.send(encode(base64, channel, &p)).await.is_err()
        {
            return;
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(encode(base64, channel, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// Wraps an upgraded WebSocket as a remote-command session.
pub fn remote_io<S>(ws: WebSocketStream<S>, proto: WsProtocol, opts: Options) -> RemoteIo
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let (tx, writer) = spawn_writer(sink);
    let mut pumps = Vec::new();
    let mut output = |wanted: bool, channel: u8| -> Option<BoxWrite> {
        if !wanted {
            return None;
        }
        let (ours, theirs) = tokio::io::duplex(PIPE);
        pumps.push(spawn_pump(theirs, tx.clone(), proto.base64, channel, None));
        Some(Box::pin(ours))
    };
    let stdout = output(opts.stdout, STDOUT);
    let stderr = output(opts.stderr && !opts.tty, STDERR);
    let (stdin_r, stdin_w) = if opts.stdin {
        let (r, w) = tokio::io::duplex(PIPE);
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let (resize_tx, resize_rx) = if opts.tty {
        let (t, r) = mpsc::channel::<TerminalSize>(16);
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let (gone_tx, gone) = watch::channel(false);
    let base64 = proto.base64;
    let v5 = proto.version >= Version::V5;
    tokio::spawn(async move {
        let mut stdin_w = stdin_w;
        let mut resize = ResizeDecoder::default();
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((channel, data)) = decode(base64, &msg) else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(w) = stdin_w.as_mut()
                        && w.write_all(&data).await.is_err()
                    {
                        stdin_w = None;
                    }
                }
                RESIZE => {
                    if let (Some(tx), Ok(sizes)) = (resize_tx.as_ref(), resize.feed(&data)) {
                        for s in sizes {
                            let _ = tx.send(s).await;
                        }
                    }
                }
                CLOSE if v5 && data.first() == Some(&STDIN) => {
                    if let Some(mut w) = stdin_w.take() {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {}
            }
        }
        drop(stdin_w);
        let _ = gone_tx.send(true);
    });
    RemoteIo {
        version: proto.version,
        stdin: stdin_r.map(|r| Box::pin(r) as _),
        stdout,
        stderr,
        resize: resize_rx,
        gone,
        finisher: Box::new(WsFinish {
            tx,
            writer,
            pumps,
            base64,
        }),
    }
}

struct WsFinish {
    tx: mpsc::Sender<Message>,
    writer: JoinHandle<()>,
    pumps: Vec<JoinHandle<()>>,
    base64: bool,
}

#[async_trait::async_trait]
impl Finish for WsFinish {
    async fn finish(self: Box<Self>, status: Option<Vec<u8>>) {
        // Output first: the pumps end once the handler shut its writers down.
        for p in self.pumps {
            let _ = p.await;
        }
        if let Some(bytes) = status {
            let _ = self.tx.send(encode(self.base64, ERROR, &bytes)).await;
        }
        let _ = self
            .tx
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        drop(self.tx);
        let _ = self.writer.await;
    }
}

/// One forwarded port's channels over a WebSocket port-forward session.
pub struct PortChannels {
    pub port: u16,
    /// What the client sends on the data channel.
    pub data_in: DuplexStream,
    /// Written to the data channel.
    pub data_out: DuplexStream,
    /// Written to the error channel.
    pub error_out: DuplexStream,
}

/// Wraps an upgraded WebSocket as a port-forward session for `ports` (channels 2i and 2i+1,
/// each opened by the port number, little endian, as kubelet does). Returns the per-port
/// channels, a flag that turns true when the client is gone, and the writer task.
pub fn port_channels<S>(
    ws: WebSocketStream<S>,
    base64: bool,
    ports: &[u16],
) -> (Vec<PortChannels>, watch::Receiver<bool>, WsCloser)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let (tx, writer) = spawn_writer(sink);
    let mut chans = Vec::new();
    let mut inputs = Vec::new();
    let mut pumps = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let data = (i * 2) as u8;
        let (in_ours, in_theirs) = tokio::io::duplex(PIPE);
        let (out_ours, out_theirs) = tokio::io::duplex(PIPE);
        let (err_ours, err_theirs) = tokio::io::duplex(PIPE);
        let prefix = Some(port.to_le_bytes());
        pumps.push(spawn_pump(out_theirs, tx.clone(), base64, data, prefix));
        pumps.push(spawn_pump(err_theirs, tx.clone(), base64, data + 1, prefix));
        inputs.push(Some(in_theirs));
        chans.push(PortChannels {
            port: *port,
            data_in: in_ours,
            data_out: out_ours,
            error_out: err_ours,
        });
    }
    let (gone_tx, gone) = watch::channel(false);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((channel, data)) = decode(base64, &msg) else {
                continue;
            };
            if channel % 2 != 0 {
                continue;
            }
            if let Some(slot) = inputs.get_mut(usize::from(channel / 2))
                && let Some(w) = slot.as_mut()
                && w.write_all(&data).await.is_err()
            {
                *slot = None;
            }
        }
        let _ = gone_tx.send(true);
    });
    (chans, gone, WsCloser { tx, writer, pumps })
}

/// Ends a port-forward WebSocket once its pumps have flushed.
pub struct WsCloser {
    tx: mpsc::Sender<Message>,
    writer: JoinHandle<()>,
    pumps: Vec<JoinHandle<()>>,
}

impl WsCloser {
    /// Closes the session. `flush`: the forwarding ended by itself (its writers are dropped),
    /// so what they wrote, a dial error in particular, is sent before the Close frame; without
    /// it (the client left) the pumps are stopped at once.
    pub async fn close(self, flush: bool) {
        for p in self.pumps {
            if flush {
                if tokio::time::timeout(std::time::Duration::from_secs(5), p)
                    .await
                    .is_err()
                {
                    tracing::debug!("a port-forward channel did not drain within 5s");
                }
            } else {
                p.abort();
            }
        }
        let _ = self.tx.send(Message::Close(None)).await;
        drop(self.tx);
        let _ = self.writer.await;
    }
}

/// The byte stream carried in a WebSocket's binary messages (the SPDY tunnel), as one end of
/// an in-memory pipe: the tasks end when either side closes.
pub fn byte_stream<S>(ws: WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut read_half, mut write_half) = tokio::io::split(theirs);
    let (sink, mut stream) = ws.split();
    let (tx, _writer) = spawn_writer(sink);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if write_half.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = write_half.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match read_half.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    });
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_base64_framing_roundtrip() {
        let m = encode(false, STDOUT, b"hi");
        assert_eq!(m, Message::binary(vec![1, b'h', b'i']));
        assert_eq!(decode(false, &m), Some((STDOUT, b"hi".to_vec())));
        let t = encode(true, STDERR, b"hello");
        assert_eq!(t, Message::text("2aGVsbG8="));
        assert_eq!(decode(true, &t), Some((STDERR, b"hello".to_vec())));
        assert_eq!(decode(true, &Message::text("1!!!")), None);
        assert_eq!(decode(false, &Message::binary(Vec::<u8>::new())), None);
        assert_eq!(decode(false, &Message::text("1aGk=")), None);
    }
}
