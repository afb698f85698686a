//! The Kubernetes remote-command protocol (exec, attach) independent of its transport: version
//! negotiation, the final status each version expects, and the client's streams as plain async
//! readers and writers whether they arrived as SPDY streams or WebSocket channels.

use serde::{Deserialize, Serialize};
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

/// Remote-command protocol versions, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io`: plain-text errors, no resize.
    V1,
    /// `v2.channel.k8s.io`.
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: the error stream carries a JSON `Status` with the exit code.
    V4,
    /// `v5.channel.k8s.io` (WebSocket only): adds the stream-close signal for stdin.
    V5,
}

impl Version {
    pub fn supports_resize(self) -> bool {
        self >= Version::V3
    }
}

/// What the SPDY transport offers, newest first (`X-Stream-Protocol-Version`).
pub const SPDY_PROTOCOLS: &[(&str, Version)] = &[
    ("v4.channel.k8s.io", Version::V4),
    ("v3.channel.k8s.io", Version::V3),
    ("v2.channel.k8s.io", Version::V2),
    ("channel.k8s.io", Version::V1),
];

/// A WebSocket subprotocol: its version and whether payloads are base64 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsProtocol {
    pub version: Version,
    pub base64: bool,
}

/// What the WebSocket transport offers (`Sec-WebSocket-Protocol`).
pub const WS_PROTOCOLS: &[(&str, WsProtocol)] = &[
    (
        "v5.channel.k8s.io",
        WsProtocol {
            version: Version::V5,
            base64: false,
        },
    ),
    (
        "v4.channel.k8s.io",
        WsProtocol {
            version: Version::V4,
            base64: false,
        },
    ),
    (
        "v3.channel.k8s.io",
        WsProtocol {
            version: Version::V3,
            base64: false,
        },
    ),
    (
        "v2.channel.k8s.io",
        WsProtocol {
            version: Version::V2,
            base64: false,
        },
    ),
    (
        "channel.k8s.io",
        WsProtocol {
            version: Version::V1,
            base64: false,
        },
    ),
    (
        "v4.base64.channel.k8s.io",
        WsProtocol {
            version: Version::V4,
            base64: true,
        },
    ),
    (
        "v3.base64.channel.k8s.io",
        WsProtocol {
            version: Version::V3,
            base64: true,
        },
    ),
    (
        "v2.base64.channel.k8s.io",
        WsProtocol {
            version: Version::V2,
            base64: true,
        },
    ),
    (
        "base64.channel.k8s.io",
        WsProtocol {
            version: Version::V1,
            base64: true,
        },
    ),
];

/// The first protocol the client offers that `supported` has, as Kubernetes' handshake picks.
/// `offered` holds header values, each possibly a comma-separated list.
pub fn negotiate<'a, T: Copy>(
    offered: impl IntoIterator<Item = &'a str>,
    supported: &[(&'static str, T)],
) -> Option<(&'static str, T)> {
    offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| supported.iter().find(|(name, _)| *name == p).copied())
}

/// Which streams the request asked for (from the cached CRI request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A terminal size as the resize stream carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// How a session ended, as reported on the error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code (attach reports 0).
    Exited { code: i32, command: Vec<String> },
    /// It could not run, or failed in the runtime.
    Failed(String),
}

/// The bytes written to the error stream for `outcome`, or nothing.
pub fn status_bytes(version: Version, outcome: &Outcome) -> Option<Vec<u8>> {
    let message = match outcome {
        Outcome::Exited { code: 0, .. } if version >= Version::V4 => {
            return Some(br#"{"metadata":{},"status":"Success"}"#.to_vec());
        }
        Outcome::Exited { code: 0, .. } => return None,
        Outcome::Exited { code, command } => format!(
            "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
        ),
        Outcome::Failed(m) => m.clone(),
    };
    if version < Version::V4 {
        return Some(message.into_bytes());
    }
    let status = match outcome {
        Outcome::Exited { code, .. } => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(_) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
            "code": 500,
        }),
    };
    Some(serde_json::to_vec(&status).expect("status serializes"))
}

pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// Parses a stream of JSON terminal sizes (back to back or newline separated) as it arrives.
#[derive(Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

/// Longest pending resize message; anything longer is garbage.
const MAX_RESIZE_MESSAGE: usize = 4096;

impl ResizeDecoder {
    /// Feeds bytes; returns the complete sizes, or an error for malformed input.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<TerminalSize>, String> {
        self.buf.extend_from_slice(bytes);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TerminalSize>();
        loop {
            match it.next() {
                Some(Ok(size)) => {
                    sizes.push(size);
                    consumed = it.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(format!("malformed resize message: {e}")),
                None => {
                    consumed = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > MAX_RESIZE_MESSAGE {
            return Err("resize message too long".into());
        }
        Ok(sizes)
    }
}

/// The client's streams for one remote-command session.
pub struct RemoteIo {
    pub version: Version,
    pub stdin: Option<BoxRead>,
    pub stdout: Option<BoxWrite>,
    pub stderr: Option<BoxWrite>,
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
    /// Turns true when the client is gone (connection closed or broken).
    pub gone: watch::Receiver<bool>,
    /// Writes the status and closes the session.
    pub finisher: Box<dyn Finish>,
}

/// The transport half that reports the outcome and ends the session.
#[async_trait::async_trait]
pub trait Finish: Send {
    async fn finish(self: Box<Self>, status: Option<Vec<u8>>);
}

impl RemoteIo {
    /// Reports `outcome` and closes the session; the output writers must be shut down first.
    pub async fn finish(self, outcome: Outcome) {
        let bytes = status_bytes(self.version, &outcome);
        self.finisher.finish(bytes).await;
    }
}

/// Resolves once `gone` turns true (or its sender is dropped).
pub async fn wait_gone(gone: &mut watch::Receiver<bool>) {
    while !*gone.borrow_and_update() {
        if gone.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_clients_order() {
        let got = negotiate(["v4.channel.k8s.io", "v3.channel.k8s.io"], SPDY_PROTOCOLS);
        assert_eq!(got.map(|g| g.1), Some(Version::V4));
        let got = negotiate(["v9.example, v2.channel.k8s.io"], SPDY_PROTOCOLS);
        assert_eq!(got.map(|g| g.0), Some("v2.channel.k8s.io"));
        assert!(negotiate(["v5.channel.k8s.io"], SPDY_PROTOCOLS).is_none());
        let ws = negotiate(["base64.channel.k8s.io"], WS_PROTOCOLS).unwrap();
        assert!(ws.1.base64);
        assert_eq!(ws.1.version, Version::V1);
    }

    #[test]
    fn v4_status_carries_the_exit_code() {
        let out = Outcome::Exited {
            code: 3,
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
        };
        let bytes = status_bytes(Version::V4, &out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let ok = status_bytes(
            Version::V5,
            &Outcome::Exited {
                code: 0,
                command: vec![],
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&ok).unwrap();
        assert_eq!(v["status"], "Success");
    }

    #[test]
    fn older_versions_get_text_and_nothing_on_success() {
        assert_eq!(
            status_bytes(
                Version::V2,
                &Outcome::Exited {
                    code: 0,
                    command: vec![]
                }
            ),
            None
        );
        let text = status_bytes(Version::V3, &Outcome::Failed("no such container".into()));
        assert_eq!(text.as_deref(), Some(&b"no such container"[..]));
        let failed = status_bytes(Version::V4, &Outcome::Failed("boom".into())).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&failed).unwrap();
        assert_eq!(v["message"], "boom");
        assert_eq!(v["code"], 500);
    }

    #[test]
    fn resize_messages_split_anywhere() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.feed(br#"{"Width":80,"#).unwrap(), vec![]);
        let got = d
            .feed(b"\"Height\":24}\n{\"Width\":100,\"Height\":40}{\"Wi")
            .unwrap();
        assert_eq!(
            got,
            vec![
                TerminalSize {
                    width: 80,
                    height: 24
                },
                TerminalSize {
                    width: 100,
                    height: 40
                }
            ]
        );
        assert_eq!(
            d.feed(br#"dth":1,"Height":2}"#).unwrap(),
            vec![TerminalSize {
                width: 1,
                height: 2
            }]
        );
        assert!(d.feed(b"]garbage").is_err());
    }
}
