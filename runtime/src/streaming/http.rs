//! The streaming server's HTTP side: TLS (optional), routing `/{exec,attach,portforward}/TOKEN`,
//! protocol negotiation and the 101 upgrade to SPDY/3.1 or WebSocket. Refusals are plain-text
//! HTTP errors; nothing a client sends brings the server down.

use super::attach::AttachPlan;
use super::exec::ExecPlan;
use super::portforward::ForwardPlan;
use super::remotecommand::{Options, SPDY_PROTOCOLS, Version, WS_PROTOCOLS, WsProtocol, negotiate};
use super::{Pending, StreamServerError, StreamingServer, portforward, spdy_io, ws_io};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming as Body;
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// A client that connects and never completes the handshake is dropped after this.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// kubectl 1.31+: SPDY port-forward carried in WebSocket binary messages.
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

pub(super) fn tls_acceptor(
    cert: &Path,
    key: &Path,
) -> Result<tokio_rustls::TlsAcceptor, StreamServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |m: String| StreamServerError::Tls(m);
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls(format!("reading certificate {}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls(format!("reading key {}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| tls(format!("certificate and key: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    server: Arc<StreamingServer>,
) {
    loop {
        let (tcp, _peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a streaming connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => serve_connection(s, server).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "streaming TLS handshake failed"),
                        Err(_) => tracing::debug!("streaming TLS handshake timed out"),
                    }
                }
                None => serve_connection(tcp, server).await,
            }
        });
    }
}

async fn serve_connection<S>(io: S, server: Arc<StreamingServer>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let server = server.clone();
        async move { Ok::<_, Infallible>(route(&server, req)) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "streaming connection ended with an error");
    }
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = message.into();
    body.push('\n');
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// All values of a header, each possibly a comma-separated list.
fn header_values<'a>(req: &'a Request<Body>, name: &str) -> Vec<&'a str> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

fn upgrade_kind(req: &Request<Body>) -> Option<Transport> {
    let upgrade = req
        .headers()
        .get(UPGRADE)?
        .to_str()
        .ok()?
        .to_ascii_lowercase();
    if upgrade.contains("websocket") {
        Some(Transport::WebSocket)
    } else if upgrade.contains("spdy/3.1") {
        Some(Transport::Spdy)
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Spdy,
    WebSocket,
}

fn route(server: &Arc<StreamingServer>, req: Request<Body>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "streaming takes GET or POST",
        );
    }
    let path = req.uri().path().trim_matches('/').to_string();
    let Some((kind, token)) = path.split_once('/') else {
        return text(StatusCode::NOT_FOUND, "no such streaming endpoint");
    };
    if !matches!(kind, "exec" | "attach" | "portforward") || token.contains('/') {
        return text(StatusCode::NOT_FOUND, "no such streaming endpoint");
    }
    let Some(pending) = server.take(token).filter(|p| p.path() == kind) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("unknown or expired {kind} token: a streaming URL works once, within 30s"),
        );
    };
    let Some(transport) = upgrade_kind(&req) else {
        return text(
            StatusCode::BAD_REQUEST,
            "streaming needs an Upgrade: SPDY/3.1 or Upgrade: websocket request",
        );
    };
    match transport {
        Transport::Spdy => upgrade_spdy(server, req, pending),
        Transport::WebSocket => upgrade_ws(server, req, pending),
    }
}

fn switching(upgrade: &'static str) -> hyper::http::response::Builder {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, upgrade)
}

fn exec_options(p: &Pending) -> Options {
    match p {
        Pending::Exec(r) => Options {
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr && !r.tty,
            tty: r.tty,
        },
        Pending::Attach(r) => Options {
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr && !r.tty,
            tty: r.tty,
        },
        Pending::PortForward(_) => Options::default(),
    }
}

fn upgrade_spdy(
    server: &Arc<StreamingServer>,
    req: Request<Body>,
    pending: Pending,
) -> Response<Full<Bytes>> {
    let offered = header_values(&req, PROTOCOL_HEADER);
    let chosen: Option<&'static str> = match &pending {
        Pending::PortForward(_) => {
            if offered.is_empty() {
                None
            } else {
                match negotiate(offered.iter().copied(), &[(PORT_FORWARD_PROTOCOL, ())]) {
                    Some((name, ())) => Some(name),
                    None => return refuse_protocols(&offered, &[PORT_FORWARD_PROTOCOL]),
                }
            }
        }
        _ => {
            if offered.is_empty() {
                None
            } else {
                match negotiate(offered.iter().copied(), SPDY_PROTOCOLS) {
                    Some((name, _)) => Some(name),
                    None => {
                        let names: Vec<&str> = SPDY_PROTOCOLS.iter().map(|p| p.0).collect();
                        return refuse_protocols(&offered, &names);
                    }
                }
            }
        }
    };
    let version = chosen
        .and_then(|c| SPDY_PROTOCOLS.iter().find(|p| p.0 == c).map(|p| p.1))
        .unwrap_or(Version::V1);
    let server = server.clone();
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "SPDY upgrade failed");
                return;
            }
        };
        let (handle, incoming) = keelson_spdy::Session::server(TokioIo::new(upgraded));
        run_spdy(server, pending, version, handle, incoming).await;
    });
    let mut resp = switching("SPDY/3.1");
    if let Some(c) = chosen {
        resp = resp.header(PROTOCOL_HEADER, c);
    }
    resp.body(Full::new(Bytes::new()))
        .expect("static response parts are valid")
}

async fn run_spdy(
    server: Arc<StreamingServer>,
    pending: Pending,
    version: Version,
    handle: keelson_spdy::SessionHandle,
    incoming: keelson_spdy::Incoming,
) {
    match pending {
        Pending::PortForward(r) => {
            let plan = forward_plan(&server, &r.pod_sandbox_id);
            portforward::serve_spdy(plan, incoming).await;
            handle.close().await;
        }
        other => {
            let opts = exec_options(&other);
            let io = match spdy_io::gather(handle.clone(), incoming, version, opts).await {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(error = %e, "streaming session without its streams");
                    handle.close().await;
                    return;
                }
            };
            serve_remote_command(&server, other, io).await;
        }
    }
}

fn refuse_protocols(offered: &[&str], supported: &[&str]) -> Response<Full<Bytes>> {
    text(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}"
        ),
    )
}

async fn serve_remote_command(
    server: &Arc<StreamingServer>,
    pending: Pending,
    io: super::remotecommand::RemoteIo,
) {
    match pending {
        Pending::Exec(r) => {
            let plan = ExecPlan {
                container_id: r.container_id,
                cmd: r.cmd,
                tty: r.tty,
            };
            super::exec::serve(server.containers.clone(), plan, io).await;
        }
        Pending::Attach(r) => match server.containers.stream_target(&r.container_id) {
            Ok(t) => {
                let plan = AttachPlan {
                    container_id: t.id,
                    socket: t.attach_socket,
                };
                super::attach::serve(plan, io).await;
            }
            Err(e) => {
                io.finish(super::remotecommand::Outcome::Failed(e.to_string()))
                    .await;
            }
        },
        Pending::PortForward(_) => unreachable!("port-forward is not a remote command"),
    }
}

fn forward_plan(server: &StreamingServer, sandbox_id: &str) -> ForwardPlan {
    let record = server.sandboxes.store.find(sandbox_id);
    ForwardPlan {
        sandbox_id: record
            .as_ref()
            .map_or_else(|| sandbox_id.to_string(), |r| r.id.clone()),
        netns: record.and_then(|r| if r.host_network { None } else { r.netns }),
    }
}

/// Ports for a WebSocket port-forward: `?ports=80,8080` (repeatable), else the CRI request's.
fn query_ports(req: &Request<Body>, fallback: &[i32]) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in req.uri().query().unwrap_or("").split('&') {
        let Some(("ports" | "port", value)) = pair.split_once('=') else {
            continue;
        };
        for p in value.split(',').flat_map(|v| v.split("%2C")) {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("invalid port {p:?}")),
            }
        }
    }
    if ports.is_empty() {
        for p in fallback {
            match u16::try_from(*p) {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("invalid port {p}")),
            }
        }
    }
    if ports.is_empty() {
        return Err("a WebSocket port-forward needs ?ports=PORT[,PORT...]".into());
    }
    if ports.len() > 64 {
        return Err("at most 64 ports per port-forward".into());
    }
    Ok(ports)
}

enum WsMode {
    Remote(WsProtocol),
    Ports { base64: bool, ports: Vec<u16> },
    Tunnel,
}

fn upgrade_ws(
    server: &Arc<StreamingServer>,
    req: Request<Body>,
    pending: Pending,
) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let offered = header_values(&req, "sec-websocket-protocol");
    let (chosen, mode): (Option<&'static str>, WsMode) = match &pending {
        Pending::PortForward(r) => {
            const PF: &[(&str, u8)] = &[
                (TUNNEL_PROTOCOL, 0),
                (PORT_FORWARD_PROTOCOL, 1),
                ("v4.channel.k8s.io", 1),
                ("channel.k8s.io", 1),
                ("v4.base64.channel.k8s.io", 2),
                ("base64.channel.k8s.io", 2),
            ];
            let picked = negotiate(offered.iter().copied(), PF);
            if picked.is_none() && !offered.is_empty() {
                let names: Vec<&str> = PF.iter().map(|p| p.0).collect();
                return refuse_protocols(&offered, &names);
            }
            match picked {
                Some((name, 0)) => (Some(name), WsMode::Tunnel),
                other => match query_ports(&req, &r.port) {
                    Ok(ports) => (
                        other.map(|o| o.0),
                        WsMode::Ports {
                            base64: matches!(other, Some((_, 2))),
                            ports,
                        },
                    ),
                    Err(m) => return text(StatusCode::BAD_REQUEST, m),
                },
            }
        }
        _ => match negotiate(offered.iter().copied(), WS_PROTOCOLS) {
            Some((name, p)) => (Some(name), WsMode::Remote(p)),
            None if offered.is_empty() => (
                None,
                WsMode::Remote(WsProtocol {
                    version: Version::V1,
                    base64: false,
                }),
            ),
            None => {
                let names: Vec<&str> = WS_PROTOCOLS.iter().map(|p| p.0).collect();
                return refuse_protocols(&offered, &names);
            }
        },
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let server = server.clone();
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        match (pending, mode) {
            (Pending::PortForward(r), WsMode::Tunnel) => {
                let (handle, incoming) = keelson_spdy::Session::server(ws_io::byte_stream(ws));
                let plan = forward_plan(&server, &r.pod_sandbox_id);
                portforward::serve_spdy(plan, incoming).await;
                handle.close().await;
            }
            (Pending::PortForward(r), WsMode::Ports { base64, ports }) => {
                let plan = forward_plan(&server, &r.pod_sandbox_id);
                let (channels, mut gone, closer) = ws_io::port_channels(ws, base64, &ports);
                let finished = tokio::select! {
                    _ = portforward::serve_ws(plan, channels) => true,
                    _ = super::remotecommand::wait_gone(&mut gone) => false,
                };
                closer.close(finished).await;
            }
            (other, WsMode::Remote(proto)) => {
                let io = ws_io::remote_io(ws, proto, exec_options(&other));
                serve_remote_command(&server, other, io).await;
            }
            (_, _) => tracing::debug!("mismatched WebSocket streaming mode"),
        }
    });
    let mut resp = switching("websocket").header("sec-websocket-accept", accept);
    if let Some(c) = chosen {
        resp = resp.header("sec-websocket-protocol", HeaderValue::from_static(c));
    }
    resp.body(Full::new(Bytes::new()))
        .expect("static response parts are valid")
}
