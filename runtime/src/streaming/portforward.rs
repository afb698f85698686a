//! Port-forward: each client connection is dialled to `localhost:<port>` inside the pod's
//! network namespace, from a short-lived thread that joins the namespace for the `connect` alone
//! (no tool in the image is needed), and copied both ways over SPDY streams or WebSocket
//! channels.

use super::ws_io::PortChannels;
use keelson_spdy::{Incoming, Stream};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, copy_bidirectional};
use tokio::net::TcpStream;

/// How long a connect inside the pod may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Which pod, from the cached CRI `PortForwardRequest`.
#[derive(Debug, Clone)]
pub struct ForwardPlan {
    pub sandbox_id: String,
    /// The pod's network namespace; `None` for host-network pods.
    pub netns: Option<PathBuf>,
}

/// Connects to `localhost:port` (IPv4, then IPv6) in `netns`.
pub async fn dial(netns: Option<PathBuf>, port: u16) -> io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("keelson-dial".into())
        .spawn(move || {
            let _ = tx.send(dial_blocking(netns, port));
        })?;
    let stream = rx
        .await
        .map_err(|_| io::Error::other("the dialling thread died"))??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// Runs on a thread of its own: joining a network namespace changes only the calling thread,
/// and the thread ends right after, so nothing else in the daemon runs in the pod's namespace.
fn dial_blocking(netns: Option<PathBuf>, port: u16) -> io::Result<std::net::TcpStream> {
    if let Some(path) = netns {
        let f = std::fs::File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            io::Error::other(format!("joining network namespace {}: {e}", path.display()))
        })?;
    }
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match std::net::TcpStream::connect_timeout(&v4, DIAL_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, DIAL_TIMEOUT).map_err(|_| e4)
        }
    }
}

fn forward_error(plan: &ForwardPlan, port: u16, e: &io::Error) -> String {
    format!(
        "error forwarding port {port} to pod {}: failed to connect to localhost:{port} inside the pod: {e}",
        plan.sandbox_id
    )
}

#[derive(Default)]
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
}

/// Serves a SPDY port-forward session: the client opens an error and a data stream per
/// connection, tied by `requestID` and naming the `port`.
pub async fn serve_spdy(plan: ForwardPlan, mut incoming: Incoming) {
    let mut pending: HashMap<String, Pair> = HashMap::new();
    while let Some(stream) = incoming.accept().await {
        let kind = stream
            .header("streamtype")
            .unwrap_or("")
            .to_ascii_lowercase();
        let Some(request) = stream.header("requestid").map(str::to_string) else {
            tracing::debug!("port-forward stream without a requestID; resetting it");
            stream.reset();
            continue;
        };
        let pair = pending.entry(request.clone()).or_default();
        let slot = match kind.as_str() {
            "data" => &mut pair.data,
            "error" => &mut pair.error,
            _ => {
                stream.reset();
                continue;
            }
        };
        if slot.is_some() {
            stream.reset();
            continue;
        }
        *slot = Some(stream);
        if pair.data.is_some() && pair.error.is_some() {
            let Pair { data, error } = pending.remove(&request).expect("present");
            let (data, error) = (data.expect("data"), error.expect("error"));
            tokio::spawn(forward_spdy(plan.clone(), data, error));
        }
    }
}

async fn forward_spdy(plan: ForwardPlan, mut data: Stream, mut error: Stream) {
    let port = match data.header("port").and_then(|p| p.parse::<u16>().ok()) {
        Some(p) if p > 0 => p,
        _ => {
            let msg = format!(
                "invalid port {:?} in a port-forward request to pod {}",
                data.header("port").unwrap_or(""),
                plan.sandbox_id
            );
            let _ = error.write_all(msg.as_bytes()).await;
            let _ = error.shutdown().await;
            data.reset();
            return;
        }
    };
    match dial(plan.netns.clone(), port).await {
        Err(e) => {
            let _ = error
                .write_all(forward_error(&plan, port, &e).as_bytes())
                .await;
            let _ = error.shutdown().await;
            let _ = data.shutdown().await;
        }
        Ok(mut tcp) => {
            if let Err(e) = copy_bidirectional(&mut data, &mut tcp).await {
                tracing::debug!(pod = %plan.sandbox_id, port, error = %e, "port-forward copy ended");
            }
            let _ = data.shutdown().await;
            let _ = error.shutdown().await;
        }
    }
}

/// Serves one WebSocket port-forward session: one connection per requested port.
pub async fn serve_ws(plan: ForwardPlan, channels: Vec<PortChannels>) {
    let mut tasks = Vec::new();
    for ch in channels {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            let PortChannels {
                port,
                data_in,
                mut data_out,
                mut error_out,
            } = ch;
            match dial(plan.netns.clone(), port).await {
                Err(e) => {
                    let _ = error_out
                        .write_all(forward_error(&plan, port, &e).as_bytes())
                        .await;
                    let _ = error_out.shutdown().await;
                }
                Ok(tcp) => {
                    let (mut tcp_r, mut tcp_w) = tcp.into_split();
                    let mut data_in = data_in;
                    let up = async {
                        let _ = tokio::io::copy(&mut data_in, &mut tcp_w).await;
                        let _ = tcp_w.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut tcp_r, &mut data_out).await;
                        let _ = data_out.shutdown().await;
                    };
                    tokio::join!(up, down);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn dials_localhost_in_the_current_namespace() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"pong").await.unwrap();
        });
        let mut c = dial(None, port).await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_namespace_is_an_error_naming_it() {
        let e = dial(Some("/nonexistent/netns".into()), 80)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }
}
