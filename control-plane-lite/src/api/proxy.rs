//! Pod `log`, `exec`, `attach`, `portforward` and `nodes/{name}/proxy/...`, forwarded to the
//! node's agent (the kubelet API) over HTTPS.
//!
//! The agent's address is the Node's `status.addresses` (InternalIP, else Hostname, else
//! ExternalIP) and `status.daemonEndpoints.kubeletEndpoint.Port` (default 10250). Paths:
//!
//! ```text
//! pods/log          GET  /containerLogs/{ns}/{pod}/{container}?follow=&tailLines=&...
//! pods/exec         *    /exec/{ns}/{pod}/{container}?command=..&input=1&output=1&error=1&tty=1
//! pods/attach       *    /attach/{ns}/{pod}/{container}?input=1&output=1&error=1&tty=1
//! pods/portforward  *    /portForward/{ns}/{pod}?port=..
//! nodes/{n}/proxy/R *    /R?query
//! ```
//!
//! Upgrades (SPDY/3.1, WebSocket) are forwarded with their headers; once the agent answers
//! 101 the two upgraded connections are spliced both ways. Other responses stream through.
//!
//! TLS to the agent: the server presents a client certificate it issues itself at start
//! ([`crate::pki::KUBELET_CLIENT_CN`], signed by the cluster CA). It verifies the agent's
//! serving certificate against the cluster CA when that certificate names the CA as its
//! issuer; a certificate from any other issuer (e.g. the agent's self-signed one) is accepted
//! without verification, as kube-apiserver does without `--kubelet-certificate-authority`.
//! The handshake still proves the agent holds the certificate's key.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONNECTION, HOST, HeaderMap, HeaderValue, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::Value;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::auth::User;
use super::authz::Attributes;
use super::resources::Resource;
use super::status::ApiError;
use super::{ApiServer, Body, RequestBody, Target, parse_query};
use crate::pki::{Pki, PkiError};

/// Connecting to an agent (TCP and TLS) gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The kubelet port when the Node does not say.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// Why a request could not be forwarded to a node's agent.
#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("the client credentials for node agents are not usable: {0}")]
    Credentials(String),
    #[error("issuing the client certificate for node agents: {0}")]
    Issue(#[from] PkiError),
    #[error("this server has no client credentials for node agents")]
    NotConfigured,
    #[error("node {node:?} is not registered: its agent cannot be reached")]
    NodeMissing { node: String },
    #[error("node {node:?} reports no address for its agent (status.addresses is empty)")]
    NoAddress { node: String },
    #[error("the agent of node {node:?} at {addr} cannot be reached: {reason}")]
    Unreachable {
        node: String,
        addr: String,
        reason: String,
    },
    #[error("the agent of node {node:?} at {addr} failed the request: {reason}")]
    Request {
        node: String,
        addr: String,
        reason: String,
    },
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> ApiError {
        match e {
            ProxyError::Credentials(_) | ProxyError::Issue(_) => ApiError::Internal(e.to_string()),
            _ => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// Accepts CA-signed agent certificates only if they verify; others without verification.
#[derive(Debug)]
struct AgentCertVerifier {
    ca: Arc<WebPkiServerVerifier>,
    ca_subject: Vec<u8>,
}

impl AgentCertVerifier {
    fn claims_ca_issuer(&self, cert: &CertificateDer<'_>) -> bool {
        X509Certificate::from_der(cert.as_ref())
            .map(|(_, c)| c.issuer().as_raw() == self.ca_subject.as_slice())
            .unwrap_or(true)
    }
}

impl ServerCertVerifier for AgentCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .ca
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(v) => Ok(v),
            Err(e) if self.claims_ca_issuer(end_entity) => Err(e),
            Err(_) => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca.supported_verify_schemes()
    }
}

/// How the server reaches node agents: its TLS client configuration.
#[derive(Clone)]
pub struct KubeletClient {
    connector: TlsConnector,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeletClient { .. }")
    }
}

impl KubeletClient {
    /// A client trusting `ca_cert_pem` for CA-signed agents and presenting the given client
    /// certificate.
    pub fn new(
        ca_cert_pem: &str,
        client_cert_pem: &str,
        client_key_pem: &str,
    ) -> Result<KubeletClient, ProxyError> {
        let bad = |e: &dyn std::fmt::Display| ProxyError::Credentials(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let mut ca_subject = Vec::new();
        for c in CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes()) {
            let c = c.map_err(|e| bad(&e))?;
            if ca_subject.is_empty() {
                let (_, parsed) = X509Certificate::from_der(c.as_ref()).map_err(|e| bad(&e))?;
                ca_subject = parsed.subject().as_raw().to_vec();
            }
            roots.add(c).map_err(|e| bad(&e))?;
        }
        let ca = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| bad(&e))?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(client_cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| bad(&e))?;
        let key = PrivateKeyDer::from_pem_slice(client_key_pem.as_bytes()).map_err(|e| bad(&e))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AgentCertVerifier { ca, ca_subject }))
            .with_client_auth_cert(certs, key)
            .map_err(|e| bad(&e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// A client with a fresh certificate from `pki`'s CA
    /// ([`crate::pki::issue_kubelet_client_cert`]).
    pub fn from_pki(pki: &Pki) -> Result<KubeletClient, ProxyError> {
        let (cert, key) = crate::pki::issue_kubelet_client_cert(pki)?;
        KubeletClient::new(&pki.ca_cert_pem, &cert, &key)
    }

    /// Sends `req` to `path_and_query` on the agent of `node` at `host:port`.
    async fn forward<B: RequestBody>(
        &self,
        node: &str,
        host: &str,
        port: u16,
        path_and_query: &str,
        mut req: Request<B>,
    ) -> Result<Response<Body>, ProxyError> {
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let unreachable = |reason: String| ProxyError::Unreachable {
            node: node.to_string(),
            addr: addr.clone(),
            reason,
        };
        let failed = |reason: String| ProxyError::Request {
            node: node.to_string(),
            addr: addr.clone(),
            reason,
        };
        let server_name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_string())
                .map_err(|e| unreachable(format!("invalid host name: {e}")))?,
        };
        let connect = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|e| io_reason(&e))?;
            let _ = tcp.set_nodelay(true);
            self.connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("tls handshake: {}", io_reason(&e)))
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no connection within {}s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(unreachable)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, B>(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "agent connection ended");
            }
        });
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let mut out = Request::builder()
            .method(parts.method)
            .uri(path_and_query)
            .body(body)
            .map_err(|e| failed(e.to_string()))?;
        copy_request_headers(&parts.headers, out.headers_mut(), upgrade);
        if let Ok(h) = HeaderValue::from_str(&addr) {
            out.headers_mut().insert(HOST, h);
        }
        let mut resp = sender
            .send_request(out)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(failed(
                    "it switched protocols without being asked to".into(),
                ));
            };
            let agent_upgrade = hyper::upgrade::on(&mut resp);
            let node = node.to_string();
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, agent_upgrade) {
                    Ok((client, agent)) => {
                        let mut client = TokioIo::new(client);
                        let mut agent = TokioIo::new(agent);
                        match tokio::io::copy_bidirectional(&mut client, &mut agent).await {
                            Ok((up, down)) => {
                                tracing::debug!(node, up, down, "upgraded stream ended")
                            }
                            Err(e) => {
                                tracing::debug!(node, error = %e, "upgraded stream broke")
                            }
                        }
                    }
                    Err(e) => tracing::debug!(node, error = %e, "upgrade failed"),
                }
            });
            let mut r = Response::new(Empty::<Bytes>::new().boxed_unsync());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *r.headers_mut() = resp.headers().clone();
            return Ok(r);
        }
        let (parts, body) = resp.into_parts();
        let mut r = Response::new(
            AgentBody {
                inner: body,
                _sender: sender,
            }
            .boxed_unsync(),
        );
        *r.status_mut() = parts.status;
        for (k, v) in &parts.headers {
            if !is_hop_by_hop(k.as_str()) {
                r.headers_mut().append(k.clone(), v.clone());
            }
        }
        Ok(r)
    }
}

/// The agent's response body, ending (rather than failing) when the agent's stream breaks;
/// it keeps the connection's sender alive as long as it is read.
struct AgentBody<B> {
    inner: Incoming,
    _sender: hyper::client::conn::http1::SendRequest<B>,
}

impl<B> hyper::body::Body for AgentBody<B> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            std::task::Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "agent response body broke");
                std::task::Poll::Ready(None)
            }
            std::task::Poll::Ready(Some(Ok(f))) => std::task::Poll::Ready(Some(Ok(f))),
            std::task::Poll::Ready(None) => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `connection refused`, not `Connection refused (os error 111)`.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => s,
    }
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(UPGRADE)
        && h.get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The caller's headers minus its credentials and (unless upgrading) hop-by-hop headers.
fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap, upgrade: bool) {
    for (k, v) in from {
        let n = k.as_str();
        let upgrade_header = matches!(n, "connection" | "upgrade");
        if matches!(
            n,
            "authorization" | "proxy-authorization" | "cookie" | "host"
        ) || n.starts_with("impersonate-")
            || (is_hop_by_hop(n) && !(upgrade && upgrade_header))
        {
            continue;
        }
        to.append(k.clone(), v.clone());
    }
}

/// `(key, raw value)` pairs of a query, in order, keys decoded.
fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (super::percent_decode(k), v.to_string())
        })
        .collect()
}

fn truthy(raw: &str) -> bool {
    matches!(super::percent_decode(raw).as_str(), "1" | "true" | "True")
}

/// The agent's query for a pod subresource: the API's names become the kubelet's
/// (`stdin`→`input`, `stdout`→`output`, `stderr`→`error`, `ports`→`port`), `container` goes
/// into the path.
fn kubelet_query(sub: &str, q: Option<&str>) -> String {
    let mut out: Vec<String> = Vec::new();
    for (k, v) in query_pairs(q) {
        let mapped = match (sub, k.as_str()) {
            (_, "container") => None,
            ("exec" | "attach", "stdin") => truthy(&v).then(|| "input=1".to_string()),
            ("exec" | "attach", "stdout") => truthy(&v).then(|| "output=1".to_string()),
            ("exec" | "attach", "stderr") => truthy(&v).then(|| "error=1".to_string()),
            ("exec" | "attach", "tty") => truthy(&v).then(|| "tty=1".to_string()),
            ("exec", "command") => Some(format!("command={v}")),
            ("exec" | "attach", "input" | "output" | "error") => Some(format!("{k}={v}")),
            ("portforward", "ports" | "port") => Some(format!("port={v}")),
            (
                "log",
                "follow" | "previous" | "timestamps" | "sinceSeconds" | "sinceTime" | "tailLines"
                | "limitBytes",
            ) => Some(format!("{k}={v}")),
            _ => None,
        };
        out.extend(mapped);
    }
    if out.is_empty() {
        String::new()
    } else {
        format!("?{}", out.join("&"))
    }
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The container a request is for: `requested`, or the pod's only container.
fn pick_container(
    pod: &Value,
    pod_name: &str,
    requested: Option<&str>,
) -> Result<String, ApiError> {
    let containers = names(pod, "containers");
    let init = names(pod, "initContainers");
    let ephemeral = names(pod, "ephemeralContainers");
    match requested.filter(|c| !c.is_empty()) {
        Some(c) => {
            if containers
                .iter()
                .chain(&init)
                .chain(&ephemeral)
                .any(|n| n == c)
            {
                Ok(c.to_string())
            } else {
                Err(ApiError::BadRequest(format!(
                    "container {c} is not valid for pod {pod_name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut m = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                m.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::BadRequest(m))
        }
    }
}

/// `host` and port of a Node's agent.
fn agent_endpoint(node: &str, obj: &Value) -> Result<(String, u16), ProxyError> {
    let addresses = obj["status"]["addresses"].as_array();
    let find = |ty: &str| {
        addresses?
            .iter()
            .find(|a| a["type"] == ty && a["address"].as_str().is_some_and(|s| !s.is_empty()))
            .and_then(|a| a["address"].as_str())
            .map(str::to_string)
    };
    let host = find("InternalIP")
        .or_else(|| find("Hostname"))
        .or_else(|| find("ExternalIP"))
        .ok_or_else(|| ProxyError::NoAddress {
            node: node.to_string(),
        })?;
    let port = obj["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok((host, port))
}

impl ApiServer {
    /// Sets how the server reaches node agents (once; later calls are ignored and say so).
    pub fn set_kubelet_client(&self, client: KubeletClient) -> bool {
        self.kubelet.set(client).is_ok()
    }

    /// `pods/{log,exec,attach,portforward}`: to the agent of the pod's node.
    pub(super) async fn proxy_pod<B: RequestBody>(
        &self,
        t: &Target,
        req: Request<B>,
    ) -> Result<Response<Body>, ApiError> {
        let sub = t.sub.as_deref().unwrap_or_default();
        let (_, pod) = self.current(t).await?;
        let node = pod["spec"]["nodeName"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::BadRequest(format!("pod {} does not have a host assigned", t.name()))
            })?
            .to_string();
        let ns = t.namespace.as_deref().unwrap_or("default");
        let pod_name = t.name();
        let q = parse_query(req.uri().query());
        let path = if sub == "portforward" {
            format!("/portForward/{ns}/{pod_name}")
        } else {
            let c = pick_container(&pod, pod_name, q.get("container").map(String::as_str))?;
            let verb = match sub {
                "log" => "containerLogs",
                "exec" => "exec",
                _ => "attach",
            };
            format!("/{verb}/{ns}/{pod_name}/{c}")
        };
        let path = format!("{path}{}", kubelet_query(sub, req.uri().query()));
        self.proxy_to_node(&node, None, &path, req).await
    }

    /// `/api/v1/nodes/{name}[:port]/proxy/{rest}`: authorized (masters only, in practice)
    /// and forwarded to `/{rest}` on the node's agent.
    pub(super) async fn proxy_node<B: RequestBody>(
        &self,
        user: &User,
        name_port: &str,
        req: Request<B>,
    ) -> Result<Response<Body>, ApiError> {
        let (name, port) = match name_port.rsplit_once(':') {
            Some((n, p)) => (
                n,
                Some(p.parse::<u16>().map_err(|_| {
                    ApiError::BadRequest(format!("invalid port {p:?} for node {n:?}"))
                })?),
            ),
            None => (name_port, None),
        };
        let target = Target {
            res: Resource::find("", "v1", "nodes").expect("nodes are served"),
            namespace: None,
            name: Some(name.to_string()),
            sub: Some("proxy".into()),
        };
        let q = parse_query(req.uri().query());
        let attrs = Attributes {
            verb: super::authz::verb(req.method(), &target, &q),
            target: &target,
            query: &q,
        };
        self.authorize(user, &attrs, None).await?;
        let prefix = format!("/api/v1/nodes/{name_port}/proxy");
        let rest = req
            .uri()
            .path()
            .strip_prefix(&prefix)
            .unwrap_or_default()
            .to_string();
        let rest = if rest.starts_with('/') {
            rest
        } else {
            format!("/{rest}")
        };
        let path = match req.uri().query() {
            Some(q) if !q.is_empty() => format!("{rest}?{q}"),
            _ => rest,
        };
        self.proxy_to_node(name, port, &path, req).await
    }

    async fn proxy_to_node<B: RequestBody>(
        &self,
        node: &str,
        port: Option<u16>,
        path_and_query: &str,
        req: Request<B>,
    ) -> Result<Response<Body>, ApiError> {
        let client = self.kubelet.get().ok_or(ProxyError::NotConfigured)?;
        let res = Resource::find("", "v1", "nodes").expect("nodes are served");
        let kv = self
            .store
            .get(&res.key(None, node))
            .await
            .map_err(|e| ApiError::from_store(e, "nodes", node))?
            .ok_or_else(|| ProxyError::NodeMissing {
                node: node.to_string(),
            })?;
        let obj: Value = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::Internal(format!("stored node {node:?} is corrupt: {e}")))?;
        let (host, default_port) = agent_endpoint(node, &obj)?;
        let port = port.unwrap_or(default_port);
        Ok(client
            .forward(node, &host, port, path_and_query, req)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queries_for_the_kubelet() {
        assert_eq!(
            kubelet_query(
                "exec",
                Some(
                    "command=ls&command=-l%20x&container=c&stdin=true&stdout=true&stderr=false&tty=true"
                )
            ),
            "?command=ls&command=-l%20x&input=1&output=1&tty=1"
        );
        assert_eq!(
            kubelet_query("log", Some("container=c&follow=true&tailLines=5&pretty=1")),
            "?follow=true&tailLines=5"
        );
        assert_eq!(kubelet_query("portforward", Some("ports=80")), "?port=80");
        assert_eq!(kubelet_query("log", None), "");
    }

    #[test]
    fn containers() {
        let one = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pick_container(&one, "p", None).unwrap(), "a");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(
            pick_container(&two, "p", None).unwrap_err().to_string(),
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(pick_container(&two, "p", Some("i")).unwrap(), "i");
        assert_eq!(
            pick_container(&two, "p", Some("z"))
                .unwrap_err()
                .to_string(),
            "container z is not valid for pod p"
        );
    }

    #[test]
    fn endpoints() {
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "h"}, {"type": "InternalIP", "address": "10.0.0.5"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": 10251}}}});
        assert_eq!(agent_endpoint("n", &n).unwrap(), ("10.0.0.5".into(), 10251));
        let h = json!({"status": {"addresses": [{"type": "Hostname", "address": "h"}]}});
        assert_eq!(agent_endpoint("n", &h).unwrap(), ("h".into(), 10250));
        assert!(matches!(
            agent_endpoint("n", &json!({})),
            Err(ProxyError::NoAddress { .. })
        ));
    }

    #[test]
    fn io_reasons() {
        let e = std::io::Error::from_raw_os_error(111);
        assert_eq!(io_reason(&e), "connection refused");
    }
}
