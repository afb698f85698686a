//! A test-side client for the runtime's streaming server (CRI `Exec` / `Attach` / `PortForward`
//! URLs): hand-written HTTP/1.1 upgrade requests (so tests can also send malformed ones), the
//! Kubernetes remote-command protocol over SPDY/3.1 and over WebSocket channels, and the
//! port-forward protocol over SPDY, WebSocket channels and the SPDY-in-WebSocket tunnel.
//!
//! Everything here is bounded by timeouts: a misbehaving server fails a test with what it had
//! sent so far instead of hanging it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use keelson_cri::v1::{AttachRequest, ExecRequest, PortForwardRequest};
use keelson_spdy::{Incoming, Session, SessionHandle, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::pods::Cri;

/// How long connecting and the HTTP exchange before an upgrade may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The remote-command protocols kubectl offers over SPDY, newest first.
pub const SPDY_REMOTE_COMMAND: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The SPDY port-forward protocol.
pub const PORT_FORWARD: &str = "portforward.k8s.io";
/// kubectl 1.31+: the SPDY port-forward protocol carried in WebSocket binary messages.
pub const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// WebSocket channel numbers of the remote-command protocol.
pub mod channel {
    /// The process's stdin.
    pub const STDIN: u8 = 0;
    /// Its stdout (or terminal).
    pub const STDOUT: u8 = 1;
    /// Its stderr.
    pub const STDERR: u8 = 2;
    /// The final status.
    pub const ERROR: u8 = 3;
    /// Terminal sizes (JSON).
    pub const RESIZE: u8 = 4;
    /// v5: `[CLOSE, channel]` closes a channel.
    pub const CLOSE: u8 = 255;
}

// ---------------------------------------------------------------------------------------------
// URLs and raw HTTP

/// The parts of a streaming URL (`http://HOST:PORT/PATH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `HOST:PORT`.
    pub authority: String,
    /// `/kind/token`, with any query.
    pub path: String,
}

impl Endpoint {
    /// Parses an `http://` URL (what the test daemons hand out unless they serve TLS).
    pub fn parse(url: &str) -> Result<Self> {
        Self::parse_scheme(url, "http://")
    }

    /// Parses an `https://` URL (a daemon started with `--stream-tls-cert`/`--stream-tls-key`).
    pub fn parse_https(url: &str) -> Result<Self> {
        Self::parse_scheme(url, "https://")
    }

    fn parse_scheme(url: &str, scheme: &str) -> Result<Self> {
        let rest = url
            .strip_prefix(scheme)
            .with_context(|| format!("streaming URL {url:?} is not {scheme}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        ensure!(!authority.is_empty(), "streaming URL {url:?} has no host");
        Ok(Endpoint {
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The same endpoint with another path.
    pub fn with_path(&self, path: &str) -> Self {
        Endpoint {
            authority: self.authority.clone(),
            path: path.to_owned(),
        }
    }

    /// The last path segment (the token).
    pub fn token(&self) -> &str {
        let path = self.path.split('?').next().unwrap_or("");
        path.rsplit('/').next().unwrap_or("")
    }

    /// `http://authority/path`.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }

    /// The host part of the authority (without the port, IPv6 brackets removed).
    pub fn host(&self) -> &str {
        let host = match self.authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => &self.authority,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// An HTTP response as read off the wire.
#[derive(Clone, Debug, Default)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty for a 101).
    pub body: String,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `METHOD path HTTP/1.1` with `headers` (plus `Host`), ready to send.
fn request_bytes(endpoint: &Endpoint, method: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\n",
        endpoint.path, endpoint.authority
    );
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// Sends `METHOD path HTTP/1.1` with `headers` (plus `Host`) on a new connection and reads the
/// response head. On a 101 the connection is returned positioned right after the head (the
/// head is read byte by byte, so no upgraded byte is consumed); otherwise the body is read
/// (by `Content-Length`, else to EOF) and the connection is dropped.
pub async fn raw_request(
    endpoint: &Endpoint,
    method: &str,
    headers: &[(&str, &str)],
) -> Result<(RawResponse, Option<TcpStream>)> {
    raw_exchange(endpoint, &request_bytes(endpoint, method, headers)).await
}

/// [`raw_request`] on a connection the caller made (a TLS stream, say).
pub async fn raw_request_over<S>(
    io: S,
    endpoint: &Endpoint,
    method: &str,
    headers: &[(&str, &str)],
) -> Result<(RawResponse, Option<S>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    raw_exchange_over(io, endpoint, &request_bytes(endpoint, method, headers)).await
}

/// A new TCP connection to `endpoint` (no delay).
async fn connect_tcp(endpoint: &Endpoint) -> Result<TcpStream> {
    let tcp = TcpStream::connect(&endpoint.authority)
        .await
        .with_context(|| format!("connecting to {}", endpoint.authority))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Writes `request` verbatim on a new connection to `endpoint` and reads the response as
/// [`raw_request`] does.
pub async fn raw_exchange(
    endpoint: &Endpoint,
    request: &[u8],
) -> Result<(RawResponse, Option<TcpStream>)> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let tcp = connect_tcp(endpoint).await?;
        exchange(tcp, request).await
    })
    .await
    .with_context(|| format!("no HTTP answer from {} in time", endpoint.authority))?
}

/// [`raw_exchange`] on a connection the caller made (`endpoint` only names it in errors).
pub async fn raw_exchange_over<S>(
    io: S,
    endpoint: &Endpoint,
    request: &[u8],
) -> Result<(RawResponse, Option<S>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange(io, request))
        .await
        .with_context(|| format!("no HTTP answer from {} in time", endpoint.authority))?
}

async fn exchange<S>(mut io: S, request: &[u8]) -> Result<(RawResponse, Option<S>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    io.write_all(request).await?;
    io.flush().await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(head.len() < 64 * 1024, "response head too long");
        match io.read_u8().await {
            Ok(b) => head.push(b),
            Err(e) => bail!(
                "connection ended in the response head ({e}); got {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut resp = RawResponse {
        status,
        headers,
        body: String::new(),
    };
    if status == 101 {
        return Ok((resp, Some(io)));
    }
    let mut body = Vec::new();
    match resp
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        Some(len) => {
            body.resize(len, 0);
            io.read_exact(&mut body).await?;
        }
        None => {
            io.read_to_end(&mut body).await?;
        }
    }
    resp.body = String::from_utf8_lossy(&body).into_owned();
    Ok((resp, None))
}

// ---------------------------------------------------------------------------------------------
// TLS

/// A TLS client (ring provider) that trusts only the CA certificates in `ca_pem`.
pub fn tls_connector(ca_pem: &[u8]) -> Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.context("reading the CA PEM")?)
            .context("adding the CA certificate")?;
    }
    ensure!(!roots.is_empty(), "no CA certificate in the PEM");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A new TLS connection to `endpoint`, the server's certificate checked against `connector`'s
/// roots for the endpoint's host (bounded by [`HANDSHAKE_TIMEOUT`]).
pub async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    endpoint: &Endpoint,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from(endpoint.host().to_owned())
        .with_context(|| format!("server name of {}", endpoint.authority))?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let tcp = connect_tcp(endpoint).await?;
        connector
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {}", endpoint.authority))
    })
    .await
    .with_context(|| format!("no TLS handshake with {} in time", endpoint.authority))?
}

/// The request headers of a SPDY upgrade offering `protocols` (one header line each, as Go's
/// client sends them).
pub fn spdy_upgrade_headers<'a>(protocols: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    for p in protocols {
        h.push(("X-Stream-Protocol-Version", p));
    }
    h
}

/// The request headers of a WebSocket upgrade offering `protocols` (comma-separated).
pub fn ws_upgrade_headers(protocols: &str) -> Vec<(&str, &str)> {
    let mut h = vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    if !protocols.is_empty() {
        h.push(("Sec-WebSocket-Protocol", protocols));
    }
    h
}

// ---------------------------------------------------------------------------------------------
// the CRI calls that hand out URLs

/// Which streams a remote command asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Send stdin.
    pub stdin: bool,
    /// Receive stdout.
    pub stdout: bool,
    /// Receive stderr (never with a tty).
    pub stderr: bool,
    /// Run under a terminal.
    pub tty: bool,
}

impl StreamOptions {
    /// stdout + stderr.
    pub const OUTPUT: StreamOptions = StreamOptions {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    /// stdin + stdout + stderr.
    pub const ALL: StreamOptions = StreamOptions {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    /// stdin + stdout under a terminal.
    pub const TTY: StreamOptions = StreamOptions {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
}

/// CRI `Exec`: the URL, or the gRPC status.
pub async fn try_exec_url(
    cri: &Cri,
    container_id: &str,
    cmd: &[&str],
    o: StreamOptions,
) -> Result<String, tonic::Status> {
    let mut rt = cri.rt.clone();
    let req = ExecRequest {
        container_id: container_id.to_owned(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty: o.tty,
        stdin: o.stdin,
        stdout: o.stdout,
        stderr: o.stderr,
    };
    tokio::time::timeout(crate::pods::CALL_TIMEOUT, rt.exec(req))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("Exec did not answer"))?
        .map(|r| r.into_inner().url)
}

/// CRI `Exec` that must succeed.
pub async fn exec_url(cri: &Cri, container_id: &str, cmd: &[&str], o: StreamOptions) -> String {
    try_exec_url(cri, container_id, cmd, o)
        .await
        .unwrap_or_else(|s| panic!("Exec {cmd:?} failed: {:?}: {}", s.code(), s.message()))
}

/// CRI `Attach`: the URL, or the gRPC status.
pub async fn try_attach_url(
    cri: &Cri,
    container_id: &str,
    o: StreamOptions,
) -> Result<String, tonic::Status> {
    let mut rt = cri.rt.clone();
    let req = AttachRequest {
        container_id: container_id.to_owned(),
        stdin: o.stdin,
        tty: o.tty,
        stdout: o.stdout,
        stderr: o.stderr,
    };
    tokio::time::timeout(crate::pods::CALL_TIMEOUT, rt.attach(req))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("Attach did not answer"))?
        .map(|r| r.into_inner().url)
}

/// CRI `Attach` that must succeed.
pub async fn attach_url(cri: &Cri, container_id: &str, o: StreamOptions) -> String {
    try_attach_url(cri, container_id, o)
        .await
        .unwrap_or_else(|s| panic!("Attach failed: {:?}: {}", s.code(), s.message()))
}

/// CRI `PortForward` that must succeed.
pub async fn port_forward_url(cri: &Cri, pod_id: &str, ports: &[i32]) -> String {
    let mut rt = cri.rt.clone();
    let req = PortForwardRequest {
        pod_sandbox_id: pod_id.to_owned(),
        port: ports.to_vec(),
    };
    tokio::time::timeout(crate::pods::CALL_TIMEOUT, rt.port_forward(req))
        .await
        .expect("PortForward did not answer")
        .unwrap_or_else(|s| panic!("PortForward failed: {:?}: {}", s.code(), s.message()))
        .into_inner()
        .url
}

// ---------------------------------------------------------------------------------------------
// collected output

/// What arrived on one output stream so far.
#[derive(Clone, Debug, Default)]
pub struct OutputState {
    /// The bytes, in order.
    pub data: Vec<u8>,
    /// The stream ended (EOF, error, or the connection closed).
    pub ended: bool,
    /// Why it ended, when that was an error.
    pub error: Option<String>,
}

/// A view of an output stream that a background task fills.
#[derive(Clone, Debug)]
pub struct Output {
    rx: watch::Receiver<OutputState>,
}

/// The writing side of an [`Output`].
#[derive(Debug)]
pub struct OutputSink {
    tx: watch::Sender<OutputState>,
}

impl OutputSink {
    /// A new sink and its view.
    pub fn new() -> (Self, Output) {
        let (tx, rx) = watch::channel(OutputState::default());
        (OutputSink { tx }, Output { rx })
    }

    /// Appends bytes.
    pub fn push(&self, bytes: &[u8]) {
        self.tx.send_modify(|s| s.data.extend_from_slice(bytes));
    }

    /// Marks the end (idempotent; the first error is kept).
    pub fn end(&self, error: Option<String>) {
        self.tx.send_modify(|s| {
            if !s.ended {
                s.ended = true;
                s.error = error;
            }
        });
    }
}

impl Drop for OutputSink {
    fn drop(&mut self) {
        self.end(None);
    }
}

impl Output {
    /// Reads `r` to its end in the background.
    pub fn collect(mut r: impl AsyncRead + Unpin + Send + 'static) -> Output {
        let (sink, out) = OutputSink::new();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => return sink.end(None),
                    Ok(n) => sink.push(&buf[..n]),
                    Err(e) => return sink.end(Some(e.to_string())),
                }
            }
        });
        out
    }

    /// What arrived so far.
    pub fn state(&self) -> OutputState {
        self.rx.borrow().clone()
    }

    /// The bytes so far, lossily as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.rx.borrow().data).into_owned()
    }

    /// Waits (≤ `timeout`) until the data satisfies `done`; fails with what arrived otherwise
    /// (also when the stream ends without it).
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>> {
        let mut rx = self.rx.clone();
        // The guard `wait_for` returns is dropped at once: holding it while reading the state
        // again would deadlock against the writer.
        let r = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| done(&s.data) || s.ended).await.is_ok()
        })
        .await;
        let state = self.state();
        if done(&state.data) {
            return Ok(state.data);
        }
        match r {
            Err(_) => bail!(
                "{what}: not there within {timeout:?}; got {:?}",
                String::from_utf8_lossy(&state.data)
            ),
            Ok(_) => bail!(
                "{what}: the stream ended (error {:?}) without it; got {:?}",
                state.error,
                String::from_utf8_lossy(&state.data)
            ),
        }
    }

    /// Waits until the text contains `needle`.
    pub async fn wait_contains(&self, needle: &str, timeout: Duration) -> Result<String> {
        let needle_b = needle.as_bytes().to_vec();
        let data = self
            .wait_for(&format!("{needle:?} in the output"), timeout, |d| {
                d.windows(needle_b.len().max(1)).any(|w| w == needle_b)
            })
            .await?;
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    /// Waits (≤ `timeout`) for the end; returns everything.
    pub async fn wait_end(&self, what: &str, timeout: Duration) -> Result<OutputState> {
        let mut rx = self.rx.clone();
        let ended =
            tokio::time::timeout(timeout, async { rx.wait_for(|s| s.ended).await.is_ok() }).await;
        match ended {
            Ok(_) => Ok(self.state()),
            Err(_) => bail!(
                "{what} did not end within {timeout:?}; got {:?}",
                self.text()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the final status

/// What the error stream (SPDY) or channel 3 (WebSocket) reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// v4+: `{"status":"Success"}`.
    Success,
    /// v4+: `NonZeroExitCode` with this code.
    ExitCode(i32),
    /// v4+: another failure.
    Failure {
        /// `reason`.
        reason: String,
        /// `message`.
        message: String,
    },
    /// Before v4: the plain-text error.
    Text(String),
    /// Nothing was written (success before v4).
    Nothing,
    /// Something that is none of the above.
    Malformed(String),
}

/// Parses what the error stream carried; `json` for protocol v4 and later.
pub fn parse_status(bytes: &[u8], json: bool) -> ExitStatus {
    let text = String::from_utf8_lossy(bytes).into_owned();
    if bytes.is_empty() {
        return ExitStatus::Nothing;
    }
    if !json {
        return ExitStatus::Text(text);
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return ExitStatus::Malformed(text);
    };
    match v["status"].as_str() {
        Some("Success") => ExitStatus::Success,
        Some("Failure") if v["reason"] == "NonZeroExitCode" => {
            let code = v["details"]["causes"]
                .as_array()
                .and_then(|causes| {
                    causes
                        .iter()
                        .find(|c| c["reason"] == "ExitCode")
                        .and_then(|c| c["message"].as_str())
                })
                .and_then(|m| m.parse().ok());
            match code {
                Some(c) => ExitStatus::ExitCode(c),
                None => ExitStatus::Malformed(text),
            }
        }
        Some("Failure") => ExitStatus::Failure {
            reason: v["reason"].as_str().unwrap_or("").to_owned(),
            message: v["message"].as_str().unwrap_or("").to_owned(),
        },
        _ => ExitStatus::Malformed(text),
    }
}

/// Whether a negotiated remote-command protocol reports a JSON status (v4, v5).
pub fn json_status(protocol: &str) -> bool {
    protocol.starts_with("v4.") || protocol.starts_with("v5.")
}

/// How a remote command ended, from the client's side.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: Vec<u8>,
    /// The raw status bytes.
    pub status_bytes: Vec<u8>,
    /// The parsed status.
    pub status: ExitStatus,
}

impl Finished {
    /// stdout as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// SPDY

/// An upgraded SPDY connection.
pub struct SpdyConn {
    /// Opens streams, closes the session.
    pub handle: SessionHandle,
    /// Streams the server opens (none expected).
    pub incoming: Incoming,
    /// The `X-Stream-Protocol-Version` the server chose (`None` when it sent none).
    pub protocol: Option<String>,
}

/// Upgrades `url` to SPDY/3.1 offering `protocols`; fails with the response when the server
/// does not switch.
pub async fn upgrade_spdy(url: &str, protocols: &[&str]) -> Result<SpdyConn> {
    let endpoint = Endpoint::parse(url)?;
    let headers = spdy_upgrade_headers(protocols);
    let (resp, tcp) = raw_request(&endpoint, "POST", &headers).await?;
    spdy_session(url, resp, tcp)
}

/// [`upgrade_spdy`] on a connection the caller made to `endpoint` (a TLS stream, say).
pub async fn upgrade_spdy_over<S>(
    io: S,
    endpoint: &Endpoint,
    protocols: &[&str],
) -> Result<SpdyConn>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let headers = spdy_upgrade_headers(protocols);
    let (resp, io) = raw_request_over(io, endpoint, "POST", &headers).await?;
    spdy_session(&endpoint.path, resp, io)
}

/// The client session on an upgraded connection; fails when there is none.
fn spdy_session<S>(what: &str, resp: RawResponse, io: Option<S>) -> Result<SpdyConn>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(io) = io else {
        bail!(
            "SPDY upgrade of {what} refused: {} {:?}",
            resp.status,
            resp.body
        );
    };
    ensure!(
        resp.header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1")),
        "101 without Upgrade: SPDY/3.1: {:?}",
        resp.headers
    );
    let (handle, incoming) = Session::client(io);
    Ok(SpdyConn {
        handle,
        incoming,
        protocol: resp.header("x-stream-protocol-version").map(str::to_owned),
    })
}

fn stream_headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// Opens a SPDY stream (bounded by [`HANDSHAKE_TIMEOUT`]).
pub async fn open_stream(handle: &SessionHandle, headers: &[(&str, &str)]) -> Result<Stream> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handle.open(stream_headers(headers)))
        .await
        .with_context(|| format!("opening a SPDY stream {headers:?}: no reply in time"))?
        .with_context(|| format!("opening a SPDY stream {headers:?}"))
}

/// A remote command (exec or attach) over SPDY, as kubectl runs it.
pub struct SpdyRemote {
    /// The negotiated protocol.
    pub protocol: String,
    /// The session.
    pub handle: SessionHandle,
    /// The stdin stream, until closed.
    pub stdin: Option<Stream>,
    /// The resize stream (tty, v3+).
    pub resize: Option<Stream>,
    /// stdout, collected.
    pub stdout: Option<Output>,
    /// stderr, collected.
    pub stderr: Option<Output>,
    /// The error stream, collected.
    pub error: Output,
    _incoming: JoinHandle<()>,
}

impl SpdyRemote {
    /// Upgrades `url` offering `protocols` and opens the streams `o` asks for, in kubectl's
    /// order: error, stdin, stdout, stderr, resize (tty, v3+).
    pub async fn connect(url: &str, protocols: &[&str], o: StreamOptions) -> Result<Self> {
        Self::open(upgrade_spdy(url, protocols).await?, o).await
    }

    /// [`SpdyRemote::connect`] on a connection the caller made to `endpoint` (a TLS stream,
    /// say).
    pub async fn connect_over<S>(
        io: S,
        endpoint: &Endpoint,
        protocols: &[&str],
        o: StreamOptions,
    ) -> Result<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::open(upgrade_spdy_over(io, endpoint, protocols).await?, o).await
    }

    /// Opens the streams `o` asks for on an upgraded connection.
    async fn open(conn: SpdyConn, o: StreamOptions) -> Result<Self> {
        let SpdyConn {
            handle,
            mut incoming,
            protocol,
        } = conn;
        let protocol = protocol.context("the 101 response chose no protocol")?;
        let incoming_task = tokio::spawn(async move {
            while let Some(s) = incoming.accept().await {
                s.reset();
            }
        });
        let error = open_stream(&handle, &[("streamType", "error")]).await?;
        let stdin = if o.stdin {
            Some(open_stream(&handle, &[("streamType", "stdin")]).await?)
        } else {
            None
        };
        let stdout = if o.stdout {
            Some(Output::collect(
                open_stream(&handle, &[("streamType", "stdout")]).await?,
            ))
        } else {
            None
        };
        let stderr = if o.stderr && !o.tty {
            Some(Output::collect(
                open_stream(&handle, &[("streamType", "stderr")]).await?,
            ))
        } else {
            None
        };
        let resize = if o.tty && (protocol.starts_with("v3.") || protocol.starts_with("v4.")) {
            Some(open_stream(&handle, &[("streamType", "resize")]).await?)
        } else {
            None
        };
        Ok(SpdyRemote {
            protocol,
            handle,
            stdin,
            resize,
            stdout,
            stderr,
            error: Output::collect(error),
            _incoming: incoming_task,
        })
    }

    /// Writes to stdin.
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        let s = self.stdin.as_mut().context("no stdin stream")?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            s.write_all(data).await?;
            s.flush().await
        })
        .await
        .context("writing stdin: no progress in time")?
        .context("writing stdin")
    }

    /// Half-closes stdin (FIN): the process sees the end of its input.
    pub async fn close_stdin(&mut self) -> Result<()> {
        let mut s = self.stdin.take().context("no stdin stream")?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, s.shutdown())
            .await
            .context("closing stdin: no progress in time")?
            .context("closing stdin")?;
        // Keep the stream object alive until the session ends: dropping it could reset it.
        tokio::spawn(async move {
            let mut sink = [0u8; 256];
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        Ok(())
    }

    /// Sends a terminal size on the resize stream.
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let s = self.resize.as_mut().context("no resize stream")?;
        let msg = serde_json::json!({"Width": width, "Height": height}).to_string();
        s.write_all(msg.as_bytes()).await?;
        s.flush().await?;
        Ok(())
    }

    /// Waits (≤ `timeout`) for the error stream and the outputs to end; returns what arrived.
    pub async fn finish(self, timeout: Duration) -> Result<Finished> {
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let err = self.error.wait_end("the error stream", left()).await?;
        ensure!(
            err.error.is_none(),
            "reading the error stream failed: {:?} (after {:?})",
            err.error,
            String::from_utf8_lossy(&err.data)
        );
        let stdout = match &self.stdout {
            Some(o) => o.wait_end("stdout", left()).await?.data,
            None => Vec::new(),
        };
        let stderr = match &self.stderr {
            Some(o) => o.wait_end("stderr", left()).await?.data,
            None => Vec::new(),
        };
        // The client closes the connection once it has read everything, as kubectl does.
        self.handle.close().await;
        Ok(Finished {
            stdout,
            stderr,
            status: parse_status(&err.data, json_status(&self.protocol)),
            status_bytes: err.data,
        })
    }
}

impl Drop for SpdyRemote {
    fn drop(&mut self) {
        // The task holds the session's `Incoming`: without it the session closes once the last
        // handle and stream are gone.
        self._incoming.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

/// Opens a WebSocket on `url` offering `protocols` (comma-separated in one header); returns it
/// and the chosen subprotocol.
pub async fn upgrade_ws(
    url: &str,
    protocols: &[&str],
) -> Result<(WebSocketStream<TcpStream>, Option<String>)> {
    let endpoint = Endpoint::parse(url)?;
    let ws_url = format!("ws://{}{}", endpoint.authority, endpoint.path);
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .with_context(|| format!("WebSocket request for {ws_url}"))?;
    if !protocols.is_empty() {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.join(", ").parse()?);
    }
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let tcp = TcpStream::connect(&endpoint.authority)
            .await
            .with_context(|| format!("connecting to {}", endpoint.authority))?;
        tcp.set_nodelay(true)?;
        let (ws, resp) = tokio_tungstenite::client_async(request, tcp)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => anyhow::anyhow!(
                    "WebSocket upgrade of {url} refused: {} {:?}",
                    r.status(),
                    r.body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                ),
                e => anyhow::anyhow!("WebSocket upgrade of {url}: {e}"),
            })?;
        let chosen = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((ws, chosen))
    })
    .await
    .with_context(|| format!("WebSocket handshake with {url} took too long"))?
}

/// Encodes one channel message (binary, or base64 text for the `base64.` protocols).
pub fn ws_encode(base64: bool, channel: u8, data: &[u8]) -> Message {
    if base64 {
        let mut text = String::new();
        text.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
        Message::text(text)
    } else {
        let mut v = Vec::with_capacity(data.len() + 1);
        v.push(channel);
        v.extend_from_slice(data);
        Message::binary(v)
    }
}

/// Splits a received message into channel and payload; `Err` for one that is malformed.
pub fn ws_decode(base64: bool, msg: &Message) -> Result<Option<(u8, Vec<u8>)>> {
    match msg {
        Message::Binary(b) if !base64 => {
            ensure!(!b.is_empty(), "an empty binary message");
            Ok(Some((b[0], b[1..].to_vec())))
        }
        Message::Text(t) if base64 => {
            let bytes = t.as_bytes();
            ensure!(!bytes.is_empty(), "an empty text message");
            let channel = bytes[0]
                .checked_sub(b'0')
                .with_context(|| format!("bad channel in {t:?}"))?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&bytes[1..])
                .with_context(|| format!("bad base64 in {t:?}"))?;
            Ok(Some((channel, data)))
        }
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => Ok(None),
        other => bail!("unexpected message for base64={base64}: {other:?}"),
    }
}

/// A multiplexed WebSocket: one writer task, one reader task filling an [`Output`] per channel.
pub struct WsChannels {
    /// The chosen subprotocol.
    pub protocol: Option<String>,
    /// Whether messages are base64 text.
    pub base64: bool,
    tx: mpsc::Sender<Message>,
    outputs: Arc<Vec<Output>>,
    /// Ends when the connection ends; its error says why when it was not a Close frame.
    pub closed: Output,
    /// The Close frame's code and reason, once received.
    pub close_frame: watch::Receiver<Option<(u16, String)>>,
}

impl WsChannels {
    /// Upgrades `url` offering `protocols` and starts the tasks.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<Self> {
        let (ws, chosen) = upgrade_ws(url, protocols).await?;
        let base64 = chosen.as_deref().is_some_and(|p| p.contains("base64"));
        Ok(Self::start(ws, chosen, base64))
    }

    fn start(ws: WebSocketStream<TcpStream>, protocol: Option<String>, base64: bool) -> Self {
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::channel::<Message>(64);
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let mut sinks = Vec::new();
        let mut outputs = Vec::new();
        for _ in 0..256 {
            let (s, o) = OutputSink::new();
            sinks.push(s);
            outputs.push(o);
        }
        let (closed_sink, closed) = OutputSink::new();
        let (close_tx, close_frame) = watch::channel(None);
        tokio::spawn(async move {
            let error = loop {
                match stream.next().await {
                    None => break None,
                    Some(Err(e)) => break Some(format!("connection: {e}")),
                    Some(Ok(Message::Close(frame))) => {
                        let _ = close_tx.send(Some(
                            frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new())),
                        ));
                        break None;
                    }
                    Some(Ok(msg)) => match ws_decode(base64, &msg) {
                        Ok(Some((ch, data))) => sinks[usize::from(ch)].push(&data),
                        Ok(None) => {}
                        Err(e) => closed_sink.push(format!("{e:#}\n").as_bytes()),
                    },
                }
            };
            for s in &sinks {
                s.end(None);
            }
            closed_sink.end(error);
        });
        WsChannels {
            protocol,
            base64,
            tx,
            outputs: Arc::new(outputs),
            closed,
            close_frame,
        }
    }

    /// What arrived on `channel`.
    pub fn channel(&self, channel: u8) -> Output {
        self.outputs[usize::from(channel)].clone()
    }

    /// Sends `data` on `channel`.
    pub async fn send(&self, channel: u8, data: &[u8]) -> Result<()> {
        self.send_message(ws_encode(self.base64, channel, data))
            .await
    }

    /// Sends a raw message.
    pub async fn send_message(&self, m: Message) -> Result<()> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.tx.send(m))
            .await
            .context("sending a WebSocket message: no progress in time")?
            .map_err(|_| anyhow::anyhow!("the WebSocket writer is gone"))
    }

    /// Sends a Close frame (the writer stops after it).
    pub async fn close(&self) -> Result<()> {
        self.send_message(Message::Close(None)).await
    }

    /// Waits for the connection to end.
    pub async fn wait_closed(&self, timeout: Duration) -> Result<OutputState> {
        self.closed
            .wait_end("the WebSocket connection", timeout)
            .await
    }
}

/// A remote command (exec or attach) over WebSocket channels.
pub struct WsRemote {
    /// The channels.
    pub ws: WsChannels,
    /// The negotiated protocol (`None`: the server chose none, i.e. `channel.k8s.io`).
    pub protocol: Option<String>,
}

impl WsRemote {
    /// Upgrades `url` offering `protocols`.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<Self> {
        let ws = WsChannels::connect(url, protocols).await?;
        Ok(WsRemote {
            protocol: ws.protocol.clone(),
            ws,
        })
    }

    /// stdout so far.
    pub fn stdout(&self) -> Output {
        self.ws.channel(channel::STDOUT)
    }

    /// stderr so far.
    pub fn stderr(&self) -> Output {
        self.ws.channel(channel::STDERR)
    }

    /// Writes to stdin (channel 0).
    pub async fn write_stdin(&self, data: &[u8]) -> Result<()> {
        self.ws.send(channel::STDIN, data).await
    }

    /// v5: the close signal for stdin (`[255, 0]`).
    pub async fn close_stdin(&self) -> Result<()> {
        self.ws.send(channel::CLOSE, &[channel::STDIN]).await
    }

    /// Sends a terminal size (channel 4).
    pub async fn resize(&self, width: u16, height: u16) -> Result<()> {
        let msg = serde_json::json!({"Width": width, "Height": height}).to_string();
        self.ws.send(channel::RESIZE, msg.as_bytes()).await
    }

    /// Waits for the server to close the connection; returns what arrived.
    pub async fn finish(self, timeout: Duration) -> Result<Finished> {
        let closed = self.ws.wait_closed(timeout).await?;
        ensure!(
            closed.error.is_none() && closed.data.is_empty(),
            "the WebSocket ended badly: {:?} {:?}",
            closed.error,
            String::from_utf8_lossy(&closed.data)
        );
        let status = self.ws.channel(channel::ERROR).state().data;
        Ok(Finished {
            stdout: self.stdout().state().data,
            stderr: self.stderr().state().data,
            status: parse_status(&status, self.protocol.as_deref().is_some_and(json_status)),
            status_bytes: status,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// port-forward

/// A SPDY port-forward session (plain or tunnelled through a WebSocket).
pub struct SpdyPortForward {
    /// The session.
    pub handle: SessionHandle,
    /// The negotiated protocol.
    pub protocol: Option<String>,
    next_request: AtomicU32,
    _incoming: JoinHandle<()>,
}

impl Drop for SpdyPortForward {
    fn drop(&mut self) {
        self._incoming.abort();
    }
}

/// One forwarded connection: the data stream and what arrives on the error stream.
pub struct ForwardedConn {
    /// The data stream, to the pod's port.
    pub data: Stream,
    /// The error stream, collected.
    pub error: Output,
}

impl SpdyPortForward {
    /// Upgrades `url` to SPDY with `portforward.k8s.io`.
    pub async fn connect(url: &str) -> Result<Self> {
        let conn = upgrade_spdy(url, &[PORT_FORWARD]).await?;
        Ok(Self::from_session(
            conn.handle,
            conn.incoming,
            conn.protocol,
        ))
    }

    /// kubectl 1.31+: a WebSocket with `SPDY/3.1+portforward.k8s.io`, SPDY inside.
    pub async fn connect_tunnel(url: &str) -> Result<Self> {
        let (ws, chosen) = upgrade_ws(url, &[TUNNEL, PORT_FORWARD]).await?;
        ensure!(
            chosen.as_deref() == Some(TUNNEL),
            "the server chose {chosen:?}, not the tunnel"
        );
        let (handle, incoming) = Session::client(ws_byte_stream(ws));
        Ok(Self::from_session(handle, incoming, chosen))
    }

    fn from_session(
        handle: SessionHandle,
        mut incoming: Incoming,
        protocol: Option<String>,
    ) -> Self {
        let task = tokio::spawn(async move {
            while let Some(s) = incoming.accept().await {
                s.reset();
            }
        });
        SpdyPortForward {
            handle,
            protocol,
            next_request: AtomicU32::new(0),
            _incoming: task,
        }
    }

    /// Opens the error then the data stream for one connection to `port`, as kubectl does.
    pub async fn open(&self, port: u16) -> Result<ForwardedConn> {
        let request = self
            .next_request
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let port = port.to_string();
        let mut error = open_stream(
            &self.handle,
            &[
                ("streamType", "error"),
                ("port", &port),
                ("requestID", &request),
            ],
        )
        .await?;
        // kubectl half-closes its side of the error stream right away: it only reads it.
        error
            .shutdown()
            .await
            .context("half-closing the error stream")?;
        let data = open_stream(
            &self.handle,
            &[
                ("streamType", "data"),
                ("port", &port),
                ("requestID", &request),
            ],
        )
        .await?;
        Ok(ForwardedConn {
            data,
            error: Output::collect(error),
        })
    }
}

/// The byte stream carried in a WebSocket's binary messages, as one end of an in-memory pipe.
pub fn ws_byte_stream(ws: WebSocketStream<TcpStream>) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut read_half, mut write_half) = tokio::io::split(theirs);
    let (mut sink, mut stream) = ws.split();
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
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    ours
}

// ---------------------------------------------------------------------------------------------
// HTTP through a forwarded connection

/// Parses a complete HTTP/1.x response (head + `Content-Length` body); `None` while incomplete.
pub fn parse_http_response(bytes: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())?;
    let body = &bytes[end + 4..];
    (body.len() >= len).then(|| (code, body[..len].to_vec()))
}

/// `GET path HTTP/1.0` over `conn`; reads until the response is complete (by its
/// `Content-Length`) or the stream ends.
pub async fn http_get_over<S>(conn: &mut S, path: &str, timeout: Duration) -> Result<(u16, String)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, async {
        conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        conn.flush().await?;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some((code, body)) = parse_http_response(&got) {
                return Ok((code, String::from_utf8_lossy(&body).into_owned()));
            }
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                bail!(
                    "the forwarded connection ended before a complete response: {:?}",
                    String::from_utf8_lossy(&got)
                );
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .context("no complete HTTP response through the forwarded connection in time")?
}

// ---------------------------------------------------------------------------------------------
// a TCP proxy that can cut the connection

/// A one-connection TCP proxy in front of a streaming URL, so a test can cut the client's
/// connection under a live session (the server sees the connection end as a vanished peer).
pub struct Proxy {
    /// The streaming URL rewritten to go through the proxy.
    pub url: String,
    sever: Option<tokio::sync::oneshot::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards the first connection to `url`'s server.
    pub async fn start(url: &str) -> Result<Self> {
        let endpoint = Endpoint::parse(url)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
        let upstream = endpoint.authority.clone();
        let task = tokio::spawn(async move {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                abrupt = rx => {
                    if abrupt.unwrap_or(false) {
                        // RST instead of FIN on close.
                        let _ = server.set_zero_linger();
                        let _ = client.set_zero_linger();
                    }
                }
            }
        });
        Ok(Proxy {
            url: format!("http://{local}{}", endpoint.path),
            sever: Some(tx),
            task,
        })
    }

    /// Closes both connections at once: with a reset when `abrupt`, else with FIN.
    pub async fn sever(mut self, abrupt: bool) {
        if let Some(tx) = self.sever.take() {
            let _ = tx.send(abrupt);
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// a deterministic PRNG for fuzzing

/// xorshift64*: deterministic, good enough to fuzz with.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeds it (0 is replaced by a constant).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Bytes a hostile or broken SPDY client might send after the upgrade, chosen by `rng`:
/// random bytes, well-formed but nonsensical frame sequences (any stream ids, types, header
/// values, flags), such sequences with bytes flipped, cut short or spliced, and frame headers
/// that promise huge or impossible payloads.
pub fn garbage_spdy(rng: &mut Rng) -> Vec<u8> {
    use keelson_spdy::{Frame, FrameCodec};
    match rng.below(8) {
        0 => {
            let n = rng.below(3000) as usize;
            rng.bytes(n)
        }
        1 => {
            // A control frame header with an arbitrary version, type, flags and length.
            let mut out = vec![0x80 | (rng.below(256) as u8), rng.below(256) as u8];
            out.extend_from_slice(&(rng.below(12) as u16).to_be_bytes());
            out.push(rng.below(256) as u8);
            let any = rng.below(0x0100_0000) as u32;
            let len = *rng.pick(&[0u32, 1, 7, 8, 0x00ff_ffff, any]);
            out.extend_from_slice(&len.to_be_bytes()[1..]);
            let tail = rng.below(64) as usize;
            out.extend(rng.bytes(tail));
            out
        }
        _ => {
            let mut codec = FrameCodec::new();
            let mut out = Vec::new();
            let frames = 1 + rng.below(12);
            for _ in 0..frames {
                let any = rng.below(64) as u32;
                let id = *rng.pick(&[0u32, 1, 2, 3, 5, 7, 9, 0x7fff_ffff, any]);
                let value = |rng: &mut Rng| -> String {
                    rng.pick(&[
                        "error", "stdin", "stdout", "stderr", "resize", "data", "bogus", "",
                        "8080", "0", "-1", "99999", "abc", "1",
                    ])
                    .to_string()
                };
                let headers = |rng: &mut Rng| -> Vec<(String, String)> {
                    let n = rng.below(4);
                    (0..n)
                        .map(|_| {
                            let name = rng
                                .pick(&["streamtype", "port", "requestid", "x", "streamType"])
                                .to_string();
                            (name.to_ascii_lowercase(), value(rng))
                        })
                        .collect()
                };
                let fin = rng.below(2) == 0;
                let frame = match rng.below(10) {
                    0..=2 => Frame::SynStream {
                        stream_id: id,
                        associated_to: rng.below(3) as u32,
                        priority: rng.below(8) as u8,
                        fin,
                        unidirectional: rng.below(4) == 0,
                        headers: headers(rng),
                    },
                    3 => Frame::SynReply {
                        stream_id: id,
                        fin,
                        headers: headers(rng),
                    },
                    4 => Frame::RstStream {
                        stream_id: id,
                        status: rng.below(12) as u32,
                    },
                    5 => Frame::Settings {
                        clear: fin,
                        entries: (0..rng.below(4))
                            .map(|_| {
                                (
                                    rng.below(4) as u8,
                                    rng.below(10) as u32,
                                    rng.next_u64() as u32,
                                )
                            })
                            .collect(),
                    },
                    6 => Frame::Ping {
                        id: rng.next_u64() as u32,
                    },
                    7 => Frame::GoAway {
                        last_good_stream_id: id,
                        status: rng.below(4) as u32,
                    },
                    8 => Frame::WindowUpdate {
                        stream_id: id,
                        delta: *rng.pick(&[0u32, 1, 0x7fff_ffff, any * 1000]),
                    },
                    _ => {
                        let n = rng.below(2048) as usize;
                        Frame::Data {
                            stream_id: id,
                            fin,
                            data: rng.bytes(n).into(),
                        }
                    }
                };
                // Frames the codec refuses to encode are skipped (it validates first).
                let _ = codec.encode(&frame, &mut out);
            }
            match rng.below(4) {
                0 if !out.is_empty() => {
                    let flips = 1 + rng.below(8);
                    for _ in 0..flips {
                        let i = rng.below(out.len() as u64) as usize;
                        out[i] ^= 1 << rng.below(8);
                    }
                }
                1 if !out.is_empty() => {
                    let cut = rng.below(out.len() as u64) as usize;
                    out.truncate(cut);
                }
                2 => {
                    let at = rng.below(out.len() as u64 + 1) as usize;
                    let n = rng.below(40) as usize;
                    let junk = rng.bytes(n);
                    out.splice(at..at, junk);
                }
                _ => {}
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_path_and_token() {
        let e = Endpoint::parse("http://127.0.0.1:4321/exec/abcDEF_-").unwrap();
        assert_eq!(e.authority, "127.0.0.1:4321");
        assert_eq!(e.path, "/exec/abcDEF_-");
        assert_eq!(e.token(), "abcDEF_-");
        assert_eq!(e.url(), "http://127.0.0.1:4321/exec/abcDEF_-");
        assert!(Endpoint::parse("https://x/y").is_err());
        let e = Endpoint::parse_https("https://127.0.0.1:4321/exec/t").unwrap();
        assert_eq!((e.host(), e.token()), ("127.0.0.1", "t"));
        assert!(Endpoint::parse_https("http://x/y").is_err());
        assert_eq!(Endpoint::parse("http://[::1]:80/a").unwrap().host(), "::1");
    }

    #[test]
    fn statuses_parse() {
        assert_eq!(
            parse_status(br#"{"metadata":{},"status":"Success"}"#, true),
            ExitStatus::Success
        );
        let failed = br#"{"metadata":{},"status":"Failure","message":"x","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(parse_status(failed, true), ExitStatus::ExitCode(3));
        assert_eq!(parse_status(b"", true), ExitStatus::Nothing);
        assert_eq!(
            parse_status(b"boom", false),
            ExitStatus::Text("boom".into())
        );
        assert!(matches!(
            parse_status(b"boom", true),
            ExitStatus::Malformed(_)
        ));
    }

    #[test]
    fn http_responses_complete_by_content_length() {
        let r = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nab";
        assert_eq!(parse_http_response(r), None);
        let r = b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(parse_http_response(r), Some((200, b"abc".to_vec())));
    }

    #[test]
    fn ws_channel_messages_roundtrip() {
        let m = ws_encode(true, 1, b"hello");
        assert_eq!(ws_decode(true, &m).unwrap(), Some((1, b"hello".to_vec())));
        let m = ws_encode(false, 3, b"x");
        assert_eq!(ws_decode(false, &m).unwrap(), Some((3, b"x".to_vec())));
    }

    #[test]
    fn the_rng_is_deterministic() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!(a.bytes(16), b.bytes(16));
    }
}
