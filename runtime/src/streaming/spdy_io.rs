//! Remote-command streams over SPDY: the client opens one SPDY stream per stream type
//! (`streamType` header: error, stdin, stdout, stderr, resize) right after the upgrade.

use super::remotecommand::{Finish, Options, RemoteIo, ResizeDecoder, TerminalSize, Version};
use keelson_spdy::{Incoming, SessionHandle, Stream};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// How long the client has to open every stream it asked for (kubelet's default).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the session's streams could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum SpdyIoError {
    #[error("timed out waiting for the client to open its streams ({got} of {expected})")]
    Timeout { got: usize, expected: usize },
    #[error("the client closed the connection before opening its streams")]
    Closed,
    #[error("the client opened a stream of unknown type {0:?}")]
    UnknownType(String),
    #[error("the client opened two {0} streams")]
    Duplicate(&'static str),
}

#[derive(Default)]
struct Gathered {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl Gathered {
    fn count(&self) -> usize {
        [
            self.error.is_some(),
            self.stdin.is_some(),
            self.stdout.is_some(),
            self.stderr.is_some(),
            self.resize.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }

    fn put(&mut self, s: Stream) -> Result<(), SpdyIoError> {
        let kind = s.header("streamtype").unwrap_or("").to_ascii_lowercase();
        let (slot, name) = match kind.as_str() {
            "error" => (&mut self.error, "error"),
            "stdin" => (&mut self.stdin, "stdin"),
            "stdout" => (&mut self.stdout, "stdout"),
            "stderr" => (&mut self.stderr, "stderr"),
            "resize" => (&mut self.resize, "resize"),
            _ => {
                s.reset();
                return Err(SpdyIoError::UnknownType(kind));
            }
        };
        if slot.is_some() {
            s.reset();
            return Err(SpdyIoError::Duplicate(name));
        }
        *slot = Some(s);
        Ok(())
    }
}

/// How many streams a client of `version` opens for `opts` (kubelet's count).
pub fn expected_streams(version: Version, opts: Options) -> usize {
    1 + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr && !opts.tty)
        + usize::from(opts.tty && version.supports_resize())
}

/// Waits for the client's streams and wraps them as a [`RemoteIo`].
pub async fn gather(
    handle: SessionHandle,
    mut incoming: Incoming,
    version: Version,
    opts: Options,
) -> Result<RemoteIo, SpdyIoError> {
    let expected = expected_streams(version, opts);
    let mut got = Gathered::default();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while got.count() < expected {
        match tokio::time::timeout_at(deadline, incoming.accept()).await {
            Err(_) => {
                return Err(SpdyIoError::Timeout {
                    got: got.count(),
                    expected,
                });
            }
            Ok(None) => return Err(SpdyIoError::Closed),
            Ok(Some(s)) => got.put(s)?,
        }
    }
    // Streams opened later are refused; the session's end is watched from here too.
    let (gone_tx, gone) = watch::channel(false);
    let watcher = handle.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = watcher.closed() => {}
            _ = async { while let Some(s) = incoming.accept().await { s.reset(); } } => {}
        }
        let _ = gone_tx.send(true);
    });
    let resize = got.resize.map(|mut s| {
        let (tx, rx) = mpsc::channel::<TerminalSize>(16);
        tokio::spawn(async move {
            let mut decoder = ResizeDecoder::default();
            let mut buf = [0u8; 1024];
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                match decoder.feed(&buf[..n]) {
                    Ok(sizes) => {
                        for size in sizes {
                            if tx.send(size).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "dropping the resize stream");
                        s.reset();
                        return;
                    }
                }
            }
        });
        rx
    });
    Ok(RemoteIo {
        version,
        stdin: got.stdin.map(|s| Box::pin(s) as _),
        stdout: got.stdout.map(|s| Box::pin(s) as _),
        stderr: got.stderr.map(|s| Box::pin(s) as _),
        resize,
        gone,
        finisher: Box::new(SpdyFinish {
            handle,
            error: got.error,
        }),
    })
}

struct SpdyFinish {
    handle: SessionHandle,
    error: Option<Stream>,
}

#[async_trait::async_trait]
impl Finish for SpdyFinish {
    async fn finish(self: Box<Self>, status: Option<Vec<u8>>) {
        if let Some(mut error) = self.error {
            if let Some(bytes) = status {
                let _ = error.write_all(&bytes).await;
            }
            let _ = error.shutdown().await;
        }
        close_after_peer(&self.handle).await;
    }
}

/// How long the client gets to read the last frames and close the connection itself.
const PEER_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Ends a session the way kubelet's does: the peer closes first. Go's spdystream hands frames
/// to per-stream workers, and a connection that ends right behind the last frames can drop
/// them (the status of an exec, typically); so the server leaves the close to the client, who
/// does so once it has read everything, and closes itself only after a grace period.
pub async fn close_after_peer(handle: &SessionHandle) {
    let _ = tokio::time::timeout(PEER_CLOSE_GRACE, handle.closed()).await;
    handle.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_counts_match_kubelet() {
        let exec = Options {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        assert_eq!(expected_streams(Version::V4, exec), 3);
        let tty = Options {
            stdin: true,
            stdout: true,
            tty: true,
            ..Default::default()
        };
        assert_eq!(expected_streams(Version::V4, tty), 4);
        assert_eq!(expected_streams(Version::V2, tty), 3);
        let attach = Options {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        assert_eq!(expected_streams(Version::V4, attach), 4);
    }
}
