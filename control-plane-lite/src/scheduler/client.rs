//! The scheduler's way to the Kubernetes API: synthetic requests handed to the in-process
//! [`ApiServer`] as an internal user, so that it goes through the same validation, admission
//! and storage as any client (and works the same over the embedded store and etcd).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
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
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            path: path.into(),
            source,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let v = self
            .call(Method::GET, path, "application/json", None)
            .await?;
        serde_json::from_value(v).map_err(|source| ClientError::Decode {
            path: path.into(),
            source,
        })
    }

    /// A whole list: the items and the list's resourceVersion.
    pub async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(Vec<T>, String), ClientError> {
        let v = self
            .call(Method::GET, path, "application/json", None)
            .await?;
        let rv = v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let items =
            serde_json::from_value(v["items"].clone()).map_err(|source| ClientError::Decode {
                path: path.into(),
                source,
            })?;
        Ok((items, rv))
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
        let object = v["object"].take();
        if kind == "ERROR" {
            let code = object["code"].as_u64().unwrap_or(500) as u16;
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
        self.next = (self.next * 2).min(self.max);
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
