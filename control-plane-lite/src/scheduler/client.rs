//! The scheduler's way to the Kubernetes API: synthetic requests handed to the in-process
//! [`ApiServer`] as an internal user, so that it goes through the same validation, admission
//! and storage as any client (and works the same over the embedded store and etcd).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::api::auth::User;
use crate::api::{ApiServer, Body};

/// An API call that failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// `request` is the method and path, `message` the API's.
    #[error("{request}: {code} {reason}: {message}")]
    Status {
        request: String,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("{request}: building the request: {message}")]
    Request { request: String, message: String },
    #[error("{path}: decoding the response: {source}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: reading the response body: {message}")]
    Body { path: String, message: String },
}

/// A list response (one page of it), read straight from the response bytes.
#[derive(Debug, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct List<T> {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<T>,
}

/// How many objects one page of a list holds: a list never has more than this many in
/// memory at once.
pub const LIST_PAGE_SIZE: usize = 500;

/// `s` percent-encoded for a query parameter (continue tokens are base64, but need not be).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ClientError {
    /// The HTTP status of an API error (410 for an expired watch, 409 for conflicts...).
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A client of the in-process API server.
#[derive(Clone)]
pub struct Client {
    api: Arc<ApiServer>,
    user: User,
}

/// The user the scheduler acts as.
pub fn scheduler_user() -> User {
    User {
        name: "system:kube-scheduler".into(),
        groups: vec!["system:masters".into(), "system:authenticated".into()],
    }
}

fn status_error(method: &Method, path: &str, code: StatusCode, body: &[u8]) -> ClientError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    ClientError::Status {
        request: format!("{method} {path}"),
        code: code.as_u16(),
        reason: v["reason"].as_str().unwrap_or_default().into(),
        message: v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
    }
}

impl Client {
    pub fn new(api: Arc<ApiServer>, user: User) -> Client {
        Client { api, user }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<Body>, ClientError> {
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("Content-Type", content_type)
            .header("Accept", "application/json")
            .body(Full::new(bytes))
            .map_err(|e| ClientError::Request {
                request: format!("{method} {path}"),
                message: e.to_string(),
            })?;
        Ok(self.api.handle(req, Some(self.user.clone())).await)
    }

    /// One request with a JSON body; the JSON reply, or the API's error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let bytes = self.call_bytes(method, path, content_type, body).await?;
        decode_bytes(path, &bytes)
    }

    /// One request; the reply's bytes when it succeeded, else the API's error.
    async fn call_bytes(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Bytes, ClientError> {
        let resp = self.send(method.clone(), path, content_type, body).await?;
        let code = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Body {
                path: path.into(),
                message: format!("{e:?}"),
            })?
            .to_bytes();
        if !code.is_success() {
            return Err(status_error(&method, path, code, &bytes));
        }
        Ok(bytes)
    }

    /// GETs `path` and deserializes the reply straight from its bytes.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let bytes = self
            .call_bytes(Method::GET, path, "application/json", None)
            .await?;
        decode_bytes(path, &bytes)
    }

    /// A whole list, `page_size` objects at a time (`limit` and `continue`), each page handed
    /// to `each` before the next is requested, so that only one page is ever in memory. The
    /// items are deserialized straight from the response bytes; one that does not decode as a
    /// `T` is logged and skipped rather than failing every list after it. Returns the list's
    /// resourceVersion: every page is read at the first one's, so a watch from it misses
    /// nothing.
    pub async fn list_pages<T: DeserializeOwned>(
        &self,
        path: &str,
        page_size: usize,
        mut each: impl FnMut(Vec<T>),
    ) -> Result<String, ClientError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut resource_version: Option<String> = None;
        let mut token: Option<String> = None;
        loop {
            let mut page_path = format!("{path}{sep}limit={}", page_size.max(1));
            if let Some(t) = &token {
                page_path.push_str("&continue=");
                page_path.push_str(&query_escape(t));
            }
            let bytes = self
                .call_bytes(Method::GET, &page_path, "application/json", None)
                .await?;
            let page: List<&RawValue> = decode_bytes(&page_path, &bytes)?;
            let mut items = Vec::with_capacity(page.items.len());
            for raw in page.items {
                match serde_json::from_str::<T>(raw.get()) {
                    Ok(item) => items.push(item),
                    Err(e) => {
                        tracing::warn!(path, error = %e, "skipping a listed object that does not decode");
                    }
                }
            }
            each(items);
            if resource_version.is_none() {
                resource_version = Some(page.metadata.resource_version.unwrap_or_default());
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => token = Some(c),
                None => return Ok(resource_version.unwrap_or_default()),
            }
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, path, "application/json", Some(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::PUT, path, "application/json", Some(body))
            .await
    }

    pub async fn merge_patch(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(
            Method::PATCH,
            path,
            "application/merge-patch+json",
            Some(body),
        )
        .await
    }

    /// Starts a watch (`path` carries `watch=1` and the resourceVersion).
    pub async fn watch(&self, path: &str) -> Result<WatchStream, ClientError> {
        let resp = self
            .send(Method::GET, path, "application/json", None)
            .await?;
        let code = resp.status();
        if !code.is_success() {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(status_error(&Method::GET, path, code, &bytes));
        }
        Ok(WatchStream {
            path: path.into(),
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }
}

fn decode_bytes<'a, T: Deserialize<'a>>(path: &str, bytes: &'a [u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|source| ClientError::Decode {
        path: path.into(),
        source,
    })
}

/// One watch event: `ADDED`, `MODIFIED`, `DELETED` or `BOOKMARK`, and the object.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: String,
    pub object: Value,
}

/// The newline-delimited JSON events of a watch response.
pub struct WatchStream {
    path: String,
    body: Body,
    buf: Vec<u8>,
}

impl WatchStream {
    /// The next event; None when the server ended the watch; an `ERROR` event (e.g. 410
    /// Gone) comes back as an error.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(self.parse(&line));
            }
            let frame = self.body.frame().await?;
            match frame {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Err(e) => match e {},
            }
        }
    }

    fn parse(&self, line: &[u8]) -> Result<WatchEvent, ClientError> {
        let mut v: Value = serde_json::from_slice(line).map_err(|source| ClientError::Decode {
            path: self.path.clone(),
            source,
        })?;
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        // Not `v["object"]`: indexing to mutate panics on anything but an object or null.
        let object = v.get_mut("object").map(Value::take).unwrap_or_default();
        if kind == "ERROR" {
            let code = object["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(500);
            return Err(ClientError::Status {
                request: format!("GET {}", self.path),
                code,
                reason: object["reason"].as_str().unwrap_or_default().into(),
                message: object["message"].as_str().unwrap_or_default().into(),
            });
        }
        Ok(WatchEvent { kind, object })
    }
}

/// Exponential backoff between retries of failing API work.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait now; each call doubles the next one up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(text: &str) -> WatchStream {
        WatchStream {
            path: "/api/v1/pods?watch=1".into(),
            body: Full::new(Bytes::from(text.to_string())).boxed_unsync(),
            buf: Vec::new(),
        }
    }

    #[tokio::test]
    async fn watch_lines_and_gone() {
        let mut w = stream(concat!(
            "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"a\"}}}\n\n",
            "{\"type\":\"BOOKMARK\",\"object\":{}}\n",
            "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410,\"reason\":\"Expired\",\"message\":\"too old\"}}\n",
        ));
        let ev = w.next().await.unwrap().unwrap();
        assert_eq!(ev.kind, "ADDED");
        assert_eq!(ev.object["metadata"]["name"], "a");
        assert_eq!(w.next().await.unwrap().unwrap().kind, "BOOKMARK");
        let gone = w.next().await.unwrap().unwrap_err();
        assert_eq!(gone.code(), Some(410));
        assert!(w.next().await.is_none(), "the stream ends");
    }

    #[test]
    fn list_pages_decode_from_bytes() {
        let body = br#"{"kind":"PodList","apiVersion":"v1",
            "metadata":{"resourceVersion":"17","continue":"abc"},
            "items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}"#;
        let page: List<&RawValue> = decode_bytes("/api/v1/pods", body).unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some("17"));
        assert_eq!(page.metadata.continue_.as_deref(), Some("abc"));
        assert_eq!(page.items.len(), 2);
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_str(page.items[1].get()).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("b"));
        // Missing metadata or items: an empty page, not an error.
        let empty: List<&RawValue> = decode_bytes("/x", b"{}").unwrap();
        assert!(empty.items.is_empty() && empty.metadata.continue_.is_none());
        assert!(decode_bytes::<List<&RawValue>>("/x", b"5").is_err());
        assert_eq!(query_escape("aZ09-_.~"), "aZ09-_.~");
        assert_eq!(query_escape("a+b/c=&"), "a%2Bb%2Fc%3D%26");
    }

    #[tokio::test]
    async fn odd_watch_lines_are_errors_or_events_not_panics() {
        let mut w = stream("[1,2]\n5\n\"s\"\n{\"type\":7}\nnot json\n{}\n");
        for _ in 0..5 {
            if let Ok(ev) = w.next().await.unwrap() {
                assert!(ev.kind.is_empty() && ev.object.is_null(), "{ev:?}");
            }
        }
        assert!(
            w.next().await.unwrap().is_ok(),
            "{{}}: an event with no type"
        );
        assert!(w.next().await.is_none());
    }

    #[tokio::test]
    async fn watch_error_codes_out_of_range() {
        let mut w =
            stream("{\"type\":\"ERROR\",\"object\":{\"code\":4294967706,\"message\":\"odd\"}}\n");
        assert_eq!(w.next().await.unwrap().unwrap_err().code(), Some(500));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(b.next_delay(), Duration::from_millis(350));
        assert_eq!(b.next_delay(), Duration::from_millis(350));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
