//! The in-process API harness the api, openapi, scheduler and nodeauth test binaries share (each
//! used to carry its own copy): an `ApiServer` over a store, synthetic requests sent straight to
//! `ApiServer::handle` as some credential, and replies read whole. Included with `#[path]`;
//! each binary uses a part of it.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use keelson_server::api::auth::{Tokens, User};
use keelson_server::api::{ApiServer, Body};
use keelson_server::store::{EmbeddedConfig, EmbeddedStore, Store};
use serde_json::Value;

/// The admin bearer token of the servers [`server`] builds.
pub const TOKEN: &str = "admin-token";
/// The node token of the servers [`server`] builds.
pub const NODE_TOKEN: &str = "node-token";

/// Who a request comes as.
#[derive(Clone)]
pub enum Cred {
    /// No credentials at all.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// A verified client certificate's user, as TLS hands it to the handler.
    Cert(User),
}

impl Cred {
    /// The admin of the servers [`server`] builds.
    pub fn admin() -> Cred {
        Cred::Bearer(TOKEN.into())
    }
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as JSON, or its text as a JSON string when it is not JSON.
    pub body: Value,
    /// The body's length in bytes.
    pub len: usize,
}

/// An API server over `store` with these tokens, not bootstrapped.
pub fn new_server(store: Arc<dyn Store>, admin: &str, node: &str) -> ApiServer {
    ApiServer::new(
        store,
        Tokens {
            admin: admin.into(),
            node: node.into(),
        },
        "127.0.0.1:6443".into(),
    )
}

/// An API server over `store` with [`TOKEN`] and [`NODE_TOKEN`], bootstrapped.
pub async fn server(store: Arc<dyn Store>) -> ApiServer {
    let api = new_server(store, TOKEN, NODE_TOKEN);
    api.bootstrap().await.expect("bootstrap");
    api
}

/// Opens an embedded store at `path`, off the runtime's threads.
pub async fn open_embedded(path: PathBuf, config: EmbeddedConfig) -> Arc<dyn Store> {
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path, config))
        .await
        .unwrap()
        .unwrap();
    Arc::new(store)
}

/// The Content-Type of a JSON body sent with `method`: a merge patch for PATCH.
pub fn json_content_type(method: &Method) -> &'static str {
    if method == Method::PATCH {
        "application/merge-patch+json"
    } else {
        "application/json"
    }
}

/// Sends one request to `api`'s handler as `cred`, with `headers` (empty values left out) and
/// `body` (empty when None).
pub async fn send(
    api: &ApiServer,
    cred: &Cred,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response<Body> {
    let mut req = Request::builder().method(method).uri(path);
    let mut cert = None;
    match cred {
        Cred::None => {}
        Cred::Bearer(t) => req = req.header("Authorization", format!("Bearer {t}")),
        Cred::Cert(u) => cert = Some(u.clone()),
    }
    for (k, v) in headers.iter().filter(|(_, v)| !v.is_empty()) {
        req = req.header(*k, *v);
    }
    let body = Full::new(Bytes::from(body.unwrap_or_default().to_string()));
    api.handle(req.body(body).unwrap(), cert).await
}

/// Reads `resp` whole.
pub async fn read(resp: Response<Body>) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status,
        headers,
        body,
        len: bytes.len(),
    }
}

/// Sends a JSON request (Content-Type from [`json_content_type`]) as `cred` and reads the reply.
pub async fn call(
    api: &ApiServer,
    cred: &Cred,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let ct = json_content_type(&method);
    let text = body.map(|b| b.to_string());
    read(
        send(
            api,
            cred,
            method,
            path,
            &[("Content-Type", ct)],
            text.as_deref(),
        )
        .await,
    )
    .await
}
