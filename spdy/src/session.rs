//! A SPDY/3.1 session over one upgraded connection: a writer task, a reader task, and the
//! streams multiplexed between them.
//!
//! # Behaviour, and the Go peer it must match
//!
//! The peers are `moby/spdystream` driven by `k8s.io/apimachinery/.../httpstream/spdy`
//! (kubectl, crictl, critest, the kubelet). What they do, and what this session does about it:
//!
//! * **Flow control: none.** spdystream never sends WINDOW_UPDATE or SETTINGS, ignores both when
//!   received, and writes DATA frames of whatever size `Write` is called with (up to 16 MiB)
//!   regardless of any window. Its only back-pressure is that each received DATA frame is handed
//!   over an unbuffered channel to the stream's reader, so one slow reader stalls a whole worker
//!   (streams are spread over 5 workers by id) and, once that worker's queue fills, the whole
//!   connection. This session therefore never blocks a send on a window (the Go side would never
//!   refill it), never sends WINDOW_UPDATE/SETTINGS, and ignores those it receives.
//! * **Receive buffering** is bounded per stream (1 MiB; one frame larger than that is still
//!   taken when the buffer is empty). When a stream's buffer is full the reader task waits for
//!   that stream's consumer, which stalls the connection as the Go peer would; but if that
//!   consumer makes no progress for 15 s the stream is reset (RST_STREAM FLOW_CONTROL_ERROR),
//!   its reads return the buffered bytes and then a
//!   `ConnectionReset` error (never a silent EOF), and every other stream carries on. The limit:
//!   a stream whose consumer stops for that long is lost, and other streams can be held up for up
//!   to that long behind it. True per-stream back-pressure is impossible without a peer that
//!   honours windows.
//! * **Replies.** For each accepted SYN_STREAM an empty SYN_REPLY is sent before the stream is
//!   handed to [`Incoming`], as the Kubernetes server side does (spdystream drops DATA for a stream
//!   it has not seen replied). [`SessionHandle::open`] waits for the SYN_REPLY; an RST_STREAM
//!   instead fails it. Replies with FIN half-close the stream; repeated replies are ignored.
//! * **Resets.** An RST_STREAM from the peer ends the stream at once: reads return EOF (after any
//!   bytes already buffered), writes fail with `BrokenPipe`. spdystream keeps writing to a stream
//!   after it was reset, so DATA for unknown or finished streams is silently dropped, as
//!   spdystream also does (no RST back). A SYN_STREAM whose id is not increasing or has the wrong
//!   parity is answered with RST_STREAM PROTOCOL_ERROR, again like spdystream.
//! * **PING** frames whose id has the peer's parity (clients use odd ids, servers even) are echoed;
//!   ones with our parity would be answers to our pings, and this session sends none.
//! * **GOAWAY** from the peer: no new streams either way ([`SessionHandle::open`] fails with
//!   [`SpdyError::GoingAway`]; streams we opened above its last-good id fail the same way, since
//!   spdystream silently ignores SYN_STREAMs once it has gone away), existing streams continue,
//!   and once none is left the connection is closed. spdystream itself stops reading altogether
//!   after a GOAWAY, and closes once its streams are finished.
//! * **Dropping a [`Stream`]** that is not finished: if the peer's half is still open the stream
//!   is reset (RST_STREAM CANCEL, we will not read it); if only our half is open it is finished
//!   with an empty DATA+FIN, so bytes written before the drop still arrive and end cleanly.
//! * **Closing.** [`SessionHandle::close`] (or dropping the last of every [`SessionHandle`],
//!   [`Incoming`] and [`Stream`] of the session) first writes everything already queued, then
//!   GOAWAY, then shuts the connection down; a peer that does not take those bytes within 10 s is
//!   cut off. The connection also ends on EOF or an I/O error from the peer, or after a protocol
//!   error (which is answered with GOAWAY PROTOCOL_ERROR). Then every stream reads EOF after its
//!   buffered bytes, writes fail with `BrokenPipe`, and [`Incoming::accept`] returns `None` once
//!   the already-queued streams are taken.
//!
//! Writes are queued on a bounded channel (64 frames of at most 32 KiB) drained by the writer
//! task; control frames (replies, resets, pings) have their own queue that is written first, so
//! they never wait behind bulk data. Header blocks are limited to 1 MiB
//! ([`crate::frame::MAX_HEADER_BLOCK`]).

mod stream;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::SpdyError;
use crate::frame::{self, Frame, FrameCodec, Headers, goaway, rst};
pub use stream::Stream;
use stream::StreamShared;

/// Largest DATA payload a [`Stream`] write produces.
pub const MAX_WRITE_FRAME: usize = 32 * 1024;
const CTRL_QUEUE: usize = 256;
const DATA_QUEUE: usize = 64;
const INCOMING_QUEUE: usize = 128;
const WRITE_BATCH: usize = 64 * 1024;
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive-side bounds of a session (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Bytes buffered per stream before the reader waits for that stream's consumer.
    pub stream_buffer: usize,
    /// How long a full stream's consumer may make no progress before the stream is reset.
    pub stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stream_buffer: 1 << 20,
            stall_timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// GOAWAY requested: the writer flushes, sends it and shuts the connection down.
    Closing,
    Dead,
}

/// Entry point: wraps an upgraded connection into a session.
#[derive(Debug)]
pub struct Session;

impl Session {
    /// Server side of an upgraded connection: returns a handle and the stream of peer-initiated
    /// streams (odd ids); streams this side opens get even ids.
    pub fn server<IO>(io: IO) -> (SessionHandle, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        start(io, true, Limits::default())
    }

    /// Client side (used by test clients): streams this side opens get odd ids.
    pub fn client<IO>(io: IO) -> (SessionHandle, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        start(io, false, Limits::default())
    }
}

/// State shared by the tasks, the handles and the streams of one session.
pub(crate) struct Shared {
    server: bool,
    limits: Limits,
    state: Mutex<State>,
    phase: watch::Sender<Phase>,
    goaway_status: AtomicU32,
    ctrl_tx: mpsc::Sender<Frame>,
    data_tx: mpsc::Sender<Frame>,
    /// Serialises id allocation with the SYN_STREAM send: ids must reach the wire in order.
    open_lock: tokio::sync::Mutex<()>,
}

struct State {
    streams: HashMap<u32, Arc<StreamShared>>,
    next_id: u32,
    last_peer_id: u32,
    peer_gone_away: bool,
}

/// Keeps the connection open; held by handles, [`Incoming`] and streams. The last drop closes.
pub(crate) struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.request_close(goaway::OK);
    }
}

/// Opens streams and closes the session. Cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    owner: Arc<Owner>,
}

/// Streams the peer opened, already replied to.
pub struct Incoming {
    rx: mpsc::Receiver<Stream>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = &self.owner.shared;
        f.debug_struct("SessionHandle")
            .field("server", &shared.server)
            .field("phase", &*shared.phase.borrow())
            .finish()
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("queued", &self.rx.len())
            .finish()
    }
}

pub(crate) fn start<IO>(io: IO, server: bool, limits: Limits) -> (SessionHandle, Incoming)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read_half, write_half) = tokio::io::split(io);
    let (ctrl_tx, ctrl_rx) = mpsc::channel(CTRL_QUEUE);
    let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
    let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
    let shared = Arc::new(Shared {
        server,
        limits,
        state: Mutex::new(State {
            streams: HashMap::new(),
            next_id: if server { 2 } else { 1 },
            last_peer_id: 0,
            peer_gone_away: false,
        }),
        phase: watch::channel(Phase::Open).0,
        goaway_status: AtomicU32::new(goaway::OK),
        ctrl_tx,
        data_tx,
        open_lock: tokio::sync::Mutex::new(()),
    });
    let owner = Arc::new(Owner {
        shared: shared.clone(),
    });
    tokio::spawn(run_writer(shared.clone(), write_half, ctrl_rx, data_rx));
    tokio::spawn(run_reader(
        shared,
        Arc::downgrade(&owner),
        read_half,
        incoming_tx,
    ));
    (
        SessionHandle {
            owner: owner.clone(),
        },
        Incoming {
            rx: incoming_rx,
            _owner: owner,
        },
    )
}

impl SessionHandle {
    /// Opens a stream: sends SYN_STREAM with `headers` and waits for the peer's SYN_REPLY.
    /// An RST_STREAM instead gives [`SpdyError::StreamReset`].
    pub async fn open(&self, headers: Headers) -> Result<Stream, SpdyError> {
        let shared = &self.owner.shared;
        // Refuse here what the writer could not encode: a failed encode would end the session.
        frame::serialize_headers(&headers)?;
        let guard = shared.open_lock.lock().await;
        if *shared.phase.borrow() != Phase::Open {
            return Err(SpdyError::SessionClosed);
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let stream_shared = {
            let mut state = shared.lock_state();
            if state.peer_gone_away {
                return Err(SpdyError::GoingAway);
            }
            let id = state.next_id;
            if id > 0x7fff_ffff {
                return Err(SpdyError::StreamIdsExhausted);
            }
            state.next_id += 2;
            let s = Arc::new(StreamShared::new(id, false, false, Some(reply_tx)));
            state.streams.insert(id, s.clone());
            s
        };
        let id = stream_shared.id;
        // From here on, dropping `stream` (an error, or this future cancelled) resets it.
        let stream = Stream::new(stream_shared, self.owner.clone(), headers.clone());
        let syn = Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers,
        };
        shared
            .ctrl_tx
            .send(syn)
            .await
            .map_err(|_| SpdyError::SessionClosed)?;
        drop(guard);
        match reply_rx.await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SpdyError::SessionClosed),
        }
    }

    /// Sends GOAWAY after everything already queued, then closes the connection; every stream
    /// then sees EOF (reads) or `BrokenPipe` (writes). Returns once the connection is gone.
    pub async fn close(&self) {
        let shared = &self.owner.shared;
        shared.request_close(goaway::OK);
        let mut phase = shared.phase.subscribe();
        let dead = wait_phase(&mut phase, |p| p == Phase::Dead);
        if tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(1), dead)
            .await
            .is_err()
        {
            shared.mark_dead();
        }
    }

    /// Resolves when the connection is gone: peer closed, I/O or protocol error,
    /// [`close`](Self::close), or a GOAWAY from the peer once all streams finished.
    pub async fn closed(&self) {
        let mut phase = self.owner.shared.phase.subscribe();
        wait_phase(&mut phase, |p| p == Phase::Dead).await;
    }
}

impl Incoming {
    /// The next stream the peer opened (SYN_REPLY already sent). `None` once the session is
    /// gone and the streams queued before that were taken.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.rx.recv().await
    }
}

/// Waits until `want` holds for the phase (or the sender is gone), holding no borrow after.
async fn wait_phase(rx: &mut watch::Receiver<Phase>, want: impl Fn(Phase) -> bool) {
    let _ = rx.wait_for(|p| want(*p)).await.map(drop);
}

impl Shared {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_dead(&self) -> bool {
        *self.phase.borrow() == Phase::Dead
    }

    /// Asks the writer to flush, send GOAWAY(`status`) and shut the connection down.
    fn request_close(&self, status: u32) {
        self.phase.send_if_modified(|p| {
            if *p != Phase::Open {
                return false;
            }
            self.goaway_status.store(status, Ordering::Relaxed);
            *p = Phase::Closing;
            true
        });
    }

    /// The connection is gone: wake every stream and refuse further work.
    fn mark_dead(&self) {
        if !self
            .phase
            .send_if_modified(|p| std::mem::replace(p, Phase::Dead) != Phase::Dead)
        {
            return;
        }
        let streams: Vec<_> = self.lock_state().streams.drain().map(|(_, s)| s).collect();
        for s in streams {
            s.session_died();
        }
    }

    /// Stops routing frames to stream `id`; after a GOAWAY the last one closes the session.
    fn forget(&self, id: u32) {
        let mut state = self.lock_state();
        state.streams.remove(&id);
        if state.peer_gone_away && state.streams.is_empty() {
            drop(state);
            self.request_close(goaway::OK);
        }
    }

    fn stream(&self, id: u32) -> Option<Arc<StreamShared>> {
        self.lock_state().streams.get(&id).cloned()
    }

    /// Queues a control frame from synchronous code (drops, resets).
    fn send_ctrl_nowait(&self, frame: Frame) {
        send_nowait(&self.ctrl_tx, frame);
    }

    fn send_data_nowait(&self, frame: Frame) {
        send_nowait(&self.data_tx, frame);
    }
}

fn send_nowait(tx: &mpsc::Sender<Frame>, frame: Frame) {
    match tx.try_send(frame) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(frame)) => {
            // Queue full: finish the send on the runtime if there is one; without a runtime the
            // session's tasks are gone too, and the frame would have nowhere to go.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let tx = tx.clone();
                rt.spawn(async move {
                    let _ = tx.send(frame).await;
                });
            }
        }
    }
}

async fn run_writer<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut io: W,
    mut ctrl: mpsc::Receiver<Frame>,
    mut data: mpsc::Receiver<Frame>,
) {
    let mut phase = shared.phase.subscribe();
    let result = tokio::select! {
        _ = wait_phase(&mut phase, |p| p == Phase::Dead) => Ok(()),
        r = write_loop(&shared, &mut io, &mut ctrl, &mut data) => r,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "spdy session writer stopped");
    }
    shared.mark_dead();
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("writing to the connection: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] SpdyError),
    #[error("the peer did not take the final frames within {0:?}")]
    CloseTimeout(Duration),
}

async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut W,
    ctrl: &mut mpsc::Receiver<Frame>,
    data: &mut mpsc::Receiver<Frame>,
) -> Result<(), WriteError> {
    let mut codec = FrameCodec::new();
    let mut phase = shared.phase.subscribe();
    let mut buf = Vec::with_capacity(WRITE_BATCH + MAX_WRITE_FRAME);
    loop {
        let first = tokio::select! {
            biased;
            f = ctrl.recv() => f,
            _ = wait_phase(&mut phase, |p| p != Phase::Open) => None,
            f = data.recv() => f,
        };
        let Some(first) = first else {
            let close = close_gracefully(shared, io, &mut codec, ctrl, data);
            return match tokio::time::timeout(CLOSE_TIMEOUT, close).await {
                Ok(result) => result,
                Err(_) => Err(WriteError::CloseTimeout(CLOSE_TIMEOUT)),
            };
        };
        codec.encode(&first, &mut buf)?;
        while buf.len() < WRITE_BATCH {
            let Ok(next) = ctrl.try_recv().or_else(|_| data.try_recv()) else {
                break;
            };
            codec.encode(&next, &mut buf)?;
        }
        io.write_all(&buf).await?;
        io.flush().await?;
        buf.clear();
    }
}

/// Writes what is queued, then GOAWAY, then shuts the write side down.
async fn close_gracefully<W: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut W,
    codec: &mut FrameCodec,
    ctrl: &mut mpsc::Receiver<Frame>,
    data: &mut mpsc::Receiver<Frame>,
) -> Result<(), WriteError> {
    let mut buf = Vec::new();
    while let Ok(frame) = ctrl.try_recv().or_else(|_| data.try_recv()) {
        codec.encode(&frame, &mut buf)?;
        if buf.len() >= WRITE_BATCH {
            io.write_all(&buf).await?;
            buf.clear();
        }
    }
    let last_good_stream_id = shared.lock_state().last_peer_id;
    let status = shared.goaway_status.load(Ordering::Relaxed);
    codec.encode(
        &Frame::GoAway {
            last_good_stream_id,
            status,
        },
        &mut buf,
    )?;
    io.write_all(&buf).await?;
    io.flush().await?;
    io.shutdown().await?;
    Ok(())
}

enum ReadEnd {
    Eof,
    Io(std::io::Error),
    Protocol(SpdyError),
}

async fn run_reader<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    owner: Weak<Owner>,
    mut io: R,
    incoming: mpsc::Sender<Stream>,
) {
    let mut phase = shared.phase.subscribe();
    let end = tokio::select! {
        _ = wait_phase(&mut phase, |p| p == Phase::Dead) => return,
        end = read_loop(&shared, &owner, &mut io, &incoming) => end,
    };
    match end {
        ReadEnd::Eof => shared.mark_dead(),
        ReadEnd::Io(e) => {
            tracing::debug!(error = %e, "spdy session connection read failed");
            shared.mark_dead();
        }
        ReadEnd::Protocol(e) => {
            // Tell the peer why; the writer flushes, sends GOAWAY and then ends the session.
            tracing::debug!(error = %e, "spdy session protocol error");
            shared.request_close(goaway::PROTOCOL_ERROR);
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    owner: &Weak<Owner>,
    io: &mut R,
    incoming: &mpsc::Sender<Stream>,
) -> ReadEnd {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => dispatch(shared, owner, incoming, frame).await,
                Ok(None) => break,
                Err(e) => return ReadEnd::Protocol(e),
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match io.read_buf(&mut buf).await {
            Ok(0) => return ReadEnd::Eof,
            Ok(_) => {}
            Err(e) => return ReadEnd::Io(e),
        }
    }
}

/// Acts on one frame from the peer.
async fn dispatch(
    shared: &Shared,
    owner: &Weak<Owner>,
    incoming: &mpsc::Sender<Stream>,
    frame: Frame,
) {
    match frame {
        Frame::SynStream {
            stream_id,
            fin,
            unidirectional,
            headers,
            ..
        } => {
            accept_stream(
                shared,
                owner,
                incoming,
                stream_id,
                fin,
                unidirectional,
                headers,
            )
            .await;
        }
        Frame::SynReply { stream_id, fin, .. } => {
            if let Some(s) = shared.stream(stream_id) {
                s.replied(Ok(()));
                if fin {
                    s.remote_fin(shared);
                }
            }
        }
        Frame::RstStream { stream_id, status } => {
            if let Some(s) = shared.stream(stream_id) {
                shared.forget(stream_id);
                s.peer_reset(status);
            }
        }
        Frame::Headers { stream_id, fin, .. } => {
            if fin && let Some(s) = shared.stream(stream_id) {
                s.remote_fin(shared);
            }
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            let Some(s) = shared.stream(stream_id) else {
                return;
            };
            if !data.is_empty() && !s.deliver(data, &shared.limits).await {
                // The consumer stalled past the limit: give up on this stream only.
                shared.forget(stream_id);
                let _ = shared
                    .ctrl_tx
                    .send(Frame::RstStream {
                        stream_id,
                        status: rst::FLOW_CONTROL_ERROR,
                    })
                    .await;
                return;
            }
            if fin {
                s.remote_fin(shared);
            }
        }
        Frame::Ping { id } => {
            let ours = if shared.server { 0 } else { 1 };
            if id % 2 != ours {
                let _ = shared.ctrl_tx.send(Frame::Ping { id }).await;
            }
        }
        Frame::GoAway {
            last_good_stream_id,
            ..
        } => {
            let (refused, empty) = {
                let mut state = shared.lock_state();
                state.peer_gone_away = true;
                let ours = if shared.server { 0 } else { 1 };
                let refused: Vec<_> = state
                    .streams
                    .values()
                    .filter(|s| s.id % 2 == ours && s.id > last_good_stream_id)
                    .cloned()
                    .collect();
                (refused, state.streams.is_empty())
            };
            for s in refused {
                s.replied(Err(SpdyError::GoingAway));
            }
            if empty {
                shared.request_close(goaway::OK);
            }
        }
        // No flow control (see the module docs): windows and settings are ignored.
        Frame::Settings { .. } | Frame::WindowUpdate { .. } => {}
    }
}

async fn accept_stream(
    shared: &Shared,
    owner: &Weak<Owner>,
    incoming: &mpsc::Sender<Stream>,
    stream_id: u32,
    fin: bool,
    unidirectional: bool,
    headers: Headers,
) {
    let peer_parity = if shared.server { 1 } else { 0 };
    let accepted = {
        let mut state = shared.lock_state();
        if state.peer_gone_away || *shared.phase.borrow() != Phase::Open {
            // Like spdystream: once going away, new streams are ignored.
            return;
        }
        if stream_id % 2 != peer_parity || stream_id <= state.last_peer_id {
            None
        } else {
            state.last_peer_id = stream_id;
            let s = Arc::new(StreamShared::new(stream_id, fin, unidirectional, None));
            state.streams.insert(stream_id, s.clone());
            Some(s)
        }
    };
    let Some(stream_shared) = accepted else {
        let _ = shared
            .ctrl_tx
            .send(Frame::RstStream {
                stream_id,
                status: rst::PROTOCOL_ERROR,
            })
            .await;
        return;
    };
    let owner = match owner.upgrade() {
        Some(owner) if !incoming.is_closed() => owner,
        _ => {
            shared.forget(stream_id);
            let _ = shared
                .ctrl_tx
                .send(Frame::RstStream {
                    stream_id,
                    status: rst::REFUSED_STREAM,
                })
                .await;
            return;
        }
    };
    let stream = Stream::new(stream_shared, owner, headers);
    let reply = Frame::SynReply {
        stream_id,
        fin: false,
        headers: Vec::new(),
    };
    if shared.ctrl_tx.send(reply).await.is_ok() {
        // If `Incoming` went away meanwhile the stream comes back and its drop resets it.
        let _ = incoming.send(stream).await;
    }
}
