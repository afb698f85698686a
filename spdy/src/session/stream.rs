//! One SPDY stream: its receive buffer and half-close/reset state, shared between the session's
//! reader task and the user's [`Stream`] (an `AsyncRead + AsyncWrite`).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{Limits, MAX_WRITE_FRAME, Owner, Shared};
use crate::SpdyError;
use crate::frame::{Frame, Headers, rst};

/// Why a stream ended abruptly.
#[derive(Debug, Clone, Copy)]
enum Reset {
    /// RST_STREAM from the peer.
    Peer,
    /// [`Stream::reset`] or a drop.
    Local,
    /// Our consumer stalled with a full buffer; reads fail once the buffer is drained.
    Overflow,
}

pub(crate) struct StreamShared {
    pub(crate) id: u32,
    state: Mutex<StreamState>,
    /// Signalled when the consumer takes bytes out of a buffer the reader task waits on.
    space: Notify,
}

struct StreamState {
    recv: VecDeque<Bytes>,
    buffered: usize,
    /// The peer sent FIN.
    remote_closed: bool,
    /// We sent FIN (or the peer opened the stream unidirectional).
    local_closed: bool,
    reset: Option<Reset>,
    session_dead: bool,
    read_waker: Option<Waker>,
    /// `open()` waiting for SYN_REPLY.
    reply: Option<oneshot::Sender<Result<(), SpdyError>>>,
}

impl StreamShared {
    pub(crate) fn new(
        id: u32,
        remote_closed: bool,
        local_closed: bool,
        reply: Option<oneshot::Sender<Result<(), SpdyError>>>,
    ) -> Self {
        StreamShared {
            id,
            state: Mutex::new(StreamState {
                recv: VecDeque::new(),
                buffered: 0,
                remote_closed,
                local_closed,
                reset: None,
                session_dead: false,
                read_waker: None,
                reply,
            }),
            space: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn replied(&self, result: Result<(), SpdyError>) {
        if let Some(tx) = self.lock().reply.take() {
            let _ = tx.send(result);
        }
    }

    pub(crate) fn remote_fin(&self, session: &Shared) {
        let finished = {
            let mut st = self.lock();
            st.remote_closed = true;
            wake(&mut st);
            st.local_closed
        };
        if finished {
            session.forget(self.id);
        }
    }

    pub(crate) fn peer_reset(&self, status: u32) {
        let mut st = self.lock();
        if let Some(tx) = st.reply.take() {
            let _ = tx.send(Err(SpdyError::StreamReset {
                stream_id: self.id,
                status,
            }));
        }
        st.reset.get_or_insert(Reset::Peer);
        wake(&mut st);
    }

    pub(crate) fn session_died(&self) {
        let mut st = self.lock();
        st.session_dead = true;
        st.reply.take();
        wake(&mut st);
    }

    /// Buffers `data` for the consumer, waiting while the buffer is full. Returns false if the
    /// consumer made no progress for the stall timeout; the stream is then marked overflowed.
    pub(crate) async fn deliver(&self, data: Bytes, limits: &Limits) -> bool {
        loop {
            {
                let mut st = self.lock();
                if st.reset.is_some() || st.remote_closed {
                    return true; // after RST or FIN: dropped, as spdystream does
                }
                if st.buffered == 0 || st.buffered + data.len() <= limits.stream_buffer {
                    st.buffered += data.len();
                    st.recv.push_back(data);
                    wake(&mut st);
                    return true;
                }
            }
            // `Notify` keeps a permit if the consumer read in between, so no wakeup is lost.
            if tokio::time::timeout(limits.stall_timeout, self.space.notified())
                .await
                .is_err()
            {
                let mut st = self.lock();
                st.reset.get_or_insert(Reset::Overflow);
                wake(&mut st);
                return false;
            }
        }
    }
}

fn wake(st: &mut StreamState) {
    if let Some(w) = st.read_waker.take() {
        w.wake();
    }
}

type Reserve = Pin<
    Box<
        dyn Future<Output = Result<mpsc::OwnedPermit<Frame>, mpsc::error::SendError<()>>>
            + Send
            + Sync,
    >,
>;

/// A SPDY stream. Reads return the peer's DATA payloads and EOF on the peer's FIN, on a reset,
/// or when the session ends (after the bytes already received). Writes send DATA frames of at
/// most 32 KiB; `shutdown` sends an empty DATA with FIN (half-close). Writes fail with
/// `BrokenPipe` after a reset, after `shutdown`, or once the session is gone. Dropping a stream
/// that is not finished resets it or finishes it (see the [session docs](super)).
pub struct Stream {
    shared: Arc<StreamShared>,
    owner: Arc<Owner>,
    headers: Headers,
    reserve: Option<Reserve>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.shared.id)
            .field("headers", &self.headers)
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(shared: Arc<StreamShared>, owner: Arc<Owner>, headers: Headers) -> Self {
        Stream {
            shared,
            owner,
            headers,
            reserve: None,
        }
    }

    fn session(&self) -> &Shared {
        &self.owner.shared
    }

    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// The SYN_STREAM headers: the peer's for accepted streams, ours for opened ones. Names are
    /// lowercase; several values of one name are NUL-joined in one entry.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The value of header `name` (compared ASCII case-insensitively), NUL-joined if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Abandons the stream: sends RST_STREAM CANCEL; our reads return EOF, writes fail.
    pub fn reset(&self) {
        let send = {
            let mut st = self.shared.lock();
            let send = st.reset.is_none() && !st.session_dead;
            st.reset.get_or_insert(Reset::Local);
            wake(&mut st);
            send
        };
        self.session().forget(self.shared.id);
        if send && !self.session().is_dead() {
            self.session().send_ctrl_nowait(Frame::RstStream {
                stream_id: self.shared.id,
                status: rst::CANCEL,
            });
        }
    }

    fn writable(&self) -> io::Result<()> {
        let st = self.shared.lock();
        let why = if st.reset.is_some() {
            "was reset"
        } else if st.session_dead || self.session().is_dead() {
            "lost its session"
        } else if st.local_closed {
            "is shut down for writing"
        } else {
            return Ok(());
        };
        Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("spdy stream {} {why}", self.shared.id),
        ))
    }

    /// Waits for room in the session's data queue.
    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<mpsc::OwnedPermit<Frame>>> {
        let tx = &self.owner.shared.data_tx;
        let fut = self
            .reserve
            .get_or_insert_with(|| Box::pin(tx.clone().reserve_owned()));
        let result = ready!(fut.as_mut().poll(cx));
        self.reserve = None;
        Poll::Ready(result.map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("spdy stream {} lost its session", self.shared.id),
            )
        }))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        if let Some(front) = st.recv.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                st.recv.pop_front();
            }
            st.buffered -= n;
            drop(st);
            this.shared.space.notify_one();
            return Poll::Ready(Ok(()));
        }
        match st.reset {
            Some(Reset::Overflow) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!(
                    "spdy stream {} was reset: its receive buffer stayed full",
                    this.shared.id
                ),
            ))),
            Some(Reset::Peer | Reset::Local) => Poll::Ready(Ok(())),
            None if st.remote_closed || st.session_dead || this.session().is_dead() => {
                Poll::Ready(Ok(()))
            }
            None => {
                st.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Err(e) = this.writable() {
            this.reserve = None;
            return Poll::Ready(Err(e));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let permit = ready!(this.poll_permit(cx))?;
        this.writable()?; // things may have changed while waiting
        let n = data.len().min(MAX_WRITE_FRAME);
        let frame = Frame::Data {
            stream_id: this.shared.id,
            fin: false,
            data: Bytes::copy_from_slice(&data[..n]),
        };
        permit.send(frame);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.shared.lock().local_closed {
            return Poll::Ready(Ok(()));
        }
        this.writable()?;
        let permit = ready!(this.poll_permit(cx))?;
        this.writable()?;
        let finished = {
            let mut st = this.shared.lock();
            st.local_closed = true;
            st.remote_closed
        };
        permit.send(Frame::Data {
            stream_id: this.shared.id,
            fin: true,
            data: Bytes::new(),
        });
        if finished {
            this.session().forget(this.shared.id);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let id = self.shared.id;
        let frame = {
            let mut st = self.shared.lock();
            if st.reset.is_some() || st.session_dead {
                None
            } else if st.local_closed {
                // Half-closed (local): everything we sent ends with our FIN. Resetting now
                // could overtake those frames at the peer (Go's spdystream drops data that
                // arrives for a reset stream), so the peer's own FIN is simply not awaited.
                None
            } else if !st.remote_closed {
                st.reset = Some(Reset::Local);
                Some(Frame::RstStream {
                    stream_id: id,
                    status: rst::CANCEL,
                })
            } else if !st.local_closed {
                st.local_closed = true;
                Some(Frame::Data {
                    stream_id: id,
                    fin: true,
                    data: Bytes::new(),
                })
            } else {
                None
            }
        };
        self.session().forget(id);
        match frame {
            _ if self.session().is_dead() => {}
            // Both through the data queue: behind this stream's data, never ahead of it.
            Some(frame) => self.session().send_data_nowait(frame),
            None => {}
        }
    }
}
