//! `?watch=1`: a chunked stream of JSON watch events (ADDED, MODIFIED, DELETED, BOOKMARK,
//! ERROR) from a resourceVersion, filtered by the request's selectors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::resources::Resource;
use super::status::ApiError;
use super::table::{self, IncludeObject};
use super::{Body, Filter, now_secs, to_object_as};
use crate::store::{Store, StoreError, WatchEvent};

/// Default watch lifetime when the client gives no `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Events buffered per watcher; a watcher that falls this far behind waits on its own.
const BUFFER: usize = 256;

/// Renders events as the client asked (plain objects or one-row Tables).
struct Encoder {
    res: &'static Resource,
    as_table: bool,
    include: IncludeObject,
    sent_columns: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, obj: &Value) -> Bytes {
        let object = if self.as_table {
            let with_columns = !self.sent_columns;
            self.sent_columns = true;
            let rv = obj["metadata"]["resourceVersion"].clone();
            table::table(
                self.res.kind,
                std::slice::from_ref(obj),
                self.include,
                json!({"resourceVersion": rv}),
                with_columns,
                now_secs(),
            )
        } else {
            obj.clone()
        };
        line(kind, object)
    }

    fn bookmark(&self, revision: i64) -> Bytes {
        line(
            "BOOKMARK",
            json!({"kind": self.res.kind_name, "apiVersion": self.res.api_version(),
                "metadata": {"resourceVersion": revision.to_string()}}),
        )
    }
}

fn line(kind: &str, object: Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn parse_rv(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .map_err(|_| ApiError::BadRequest(format!("resourceVersion {s:?} is not valid")))
}

/// Starts a watch and returns the streaming response.
pub(super) async fn watch(
    store: Arc<dyn Store>,
    res: &'static Resource,
    namespace: Option<String>,
    q: &HashMap<String, String>,
    as_table: bool,
    include: IncludeObject,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter::from_query(res, q)?;
    let prefix = res.prefix(namespace.as_deref());
    let bookmarks = super::is_true(q, "allowWatchBookmarks") && !as_table;
    let timeout =
        match q.get("timeoutSeconds").map(String::as_str) {
            None | Some("") => DEFAULT_TIMEOUT,
            Some(t) => Duration::from_secs(t.parse().map_err(|_| {
                ApiError::BadRequest(format!("timeoutSeconds {t:?} is not a number"))
            })?),
        };
    let store_err = |e: StoreError| ApiError::from_store(e, &res.qualified(), "");
    // Without a resourceVersion (or "0"), the watch starts with the current objects.
    let mut initial = Vec::new();
    let from = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => {
            let mut cont = None;
            loop {
                let page = store.list(&prefix, 500, cont).await.map_err(store_err)?;
                for kv in &page.items {
                    let obj = to_object_as(res, kv)?;
                    if filter.matches(&obj) {
                        initial.push(obj);
                    }
                }
                cont = page.continuation();
                if cont.is_none() {
                    break page.revision;
                }
            }
        }
        Some(rv) => parse_rv(rv)?,
    };
    let mut stream = store.watch(&prefix, from).await.map_err(store_err)?;
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFER);
    let mut enc = Encoder {
        res,
        as_table,
        include,
        sent_columns: false,
    };
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        for obj in &initial {
            if tx.send(enc.event("ADDED", obj)).await.is_err() {
                return;
            }
        }
        loop {
            let ev = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                ev = stream.next() => ev,
            };
            let out = match ev {
                None => return,
                Some(Ok(ev)) => match render(&mut enc, &filter, ev, bookmarks) {
                    Ok(Some(b)) => b,
                    Ok(None) => continue,
                    Err(e) => line("ERROR", e.to_status()),
                },
                Some(Err(e)) => {
                    let e = ApiError::from_store(e, &res.qualified(), "");
                    let _ = tx.send(line("ERROR", e.to_status())).await;
                    return;
                }
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    }));
    let mut r = Response::new(body.boxed_unsync());
    *r.status_mut() = StatusCode::OK;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// The event line for one store event, or None when the selectors hide it.
fn render(
    enc: &mut Encoder,
    filter: &Filter,
    ev: WatchEvent,
    bookmarks: bool,
) -> Result<Option<Bytes>, ApiError> {
    match ev {
        WatchEvent::Put { kv, prev } => {
            let obj = to_object_as(enc.res, &kv)?;
            let now = filter.matches(&obj);
            let before = match &prev {
                Some(p) => filter.matches(&to_object_as(enc.res, p)?),
                None => false,
            };
            Ok(match (before, now) {
                (false, true) => Some(enc.event("ADDED", &obj)),
                (true, true) => Some(enc.event("MODIFIED", &obj)),
                (true, false) => Some(enc.event("DELETED", &obj)),
                (false, false) => None,
            })
        }
        WatchEvent::Delete { kv, prev } => {
            let Some(prev) = prev else { return Ok(None) };
            let mut obj = to_object_as(enc.res, &prev)?;
            obj["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
            Ok(filter.matches(&obj).then(|| enc.event("DELETED", &obj)))
        }
        WatchEvent::Progress { revision } => Ok(bookmarks.then(|| enc.bookmark(revision))),
    }
}
