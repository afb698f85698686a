//! `?watch=1`: a chunked stream of JSON watch events (ADDED, MODIFIED, DELETED, BOOKMARK,
//! ERROR) from a resourceVersion, filtered by the request's selectors.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::raw;
use super::resources::{Kind, Resource};
use super::status::ApiError;
use super::table::{self, IncludeObject};
use super::{Body, Filter, now_secs, to_object_as};
use crate::store::{Pages, Store, StoreError, WatchEvent};

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
    let mut enc = Encoder {
        res,
        as_table,
        include,
        sent_columns: false,
    };
    // Without a resourceVersion (or "0"), the watch starts with the current objects, as event
    // lines made page by page (from the stored bytes when no tree is needed).
    let mut initial: Vec<Bytes> = Vec::new();
    let from = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => {
            let mut revision = 0;
            let mut pages = Pages::new(&*store, &prefix, 500);
            while let Some(page) = pages.next().await {
                let page = page.map_err(store_err)?;
                revision = page.revision;
                for kv in &page.items {
                    let ev = WatchEvent::Put {
                        kv: kv.clone(),
                        prev: None,
                    };
                    if let Some(line) = render(&mut enc, &filter, ev, false)? {
                        initial.push(line);
                    }
                }
            }
            revision
        }
        Some(rv) => parse_rv(rv)?,
    };
    let mut stream = store.watch(&prefix, from).await.map_err(store_err)?;
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFER);
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        for line in initial {
            if tx.send(line).await.is_err() {
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
    if !enc.as_table && enc.res.kind != Kind::EventV1 && filter.fields.is_empty() {
        return render_stored(enc, filter, ev, bookmarks);
    }
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

/// [`render`] for plain objects served in their stored version and selected by labels at
/// most: the line is made from the stored bytes and only the labels are read, so a write seen
/// by a hundred watchers costs a hundred byte splices rather than a hundred JSON trees.
fn render_stored(
    enc: &Encoder,
    filter: &Filter,
    ev: WatchEvent,
    bookmarks: bool,
) -> Result<Option<Bytes>, ApiError> {
    let selected = |stored: &[u8]| -> Result<bool, ApiError> {
        Ok(filter.labels.is_empty() || filter.labels.matches(&labels_of(stored)?))
    };
    match ev {
        WatchEvent::Put { kv, prev } => {
            let now = selected(&kv.value)?;
            let before = match &prev {
                Some(p) => selected(&p.value)?,
                None => false,
            };
            let kind = match (before, now) {
                (false, true) => "ADDED",
                (true, true) => "MODIFIED",
                (true, false) => "DELETED",
                (false, false) => return Ok(None),
            };
            stored_line(kind, &kv.value, kv.mod_revision).map(Some)
        }
        WatchEvent::Delete { kv, prev } => match prev {
            Some(prev) if selected(&prev.value)? => {
                stored_line("DELETED", &prev.value, kv.mod_revision).map(Some)
            }
            _ => Ok(None),
        },
        WatchEvent::Progress { revision } => Ok(bookmarks.then(|| enc.bookmark(revision))),
    }
}

/// `metadata.labels` of a stored object, without reading the rest into memory.
fn labels_of(stored: &[u8]) -> Result<BTreeMap<String, String>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Object {
        #[serde(default)]
        metadata: Meta,
    }
    #[derive(serde::Deserialize, Default)]
    struct Meta {
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
    }
    serde_json::from_slice::<Object>(stored)
        .map(|o| o.metadata.labels.unwrap_or_default())
        .map_err(|e| ApiError::Internal(format!("stored object's labels are not readable: {e}")))
}

/// `{"object":<stored object at revision>,"type":KIND}` and a newline.
fn stored_line(kind: &str, stored: &[u8], revision: i64) -> Result<Bytes, ApiError> {
    let obj = raw::with_resource_version(stored, revision)
        .map_err(|e| ApiError::Internal(format!("stored object is corrupt: {e}")))?;
    let mut out = Vec::with_capacity(obj.len() + 32);
    out.extend_from_slice(b"{\"object\":");
    out.extend_from_slice(&obj);
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\"}\n");
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyValue;

    fn kv(value: &Value, rev: i64) -> KeyValue {
        KeyValue {
            key: "/registry/pods/default/a".into(),
            value: Bytes::from(value.to_string()),
            create_revision: 1,
            mod_revision: rev,
        }
    }

    fn pod(labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "default", "labels": labels}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
    }

    /// Both renderings of one event, parsed; the stored-bytes path must be taken.
    fn both(selector: &str, ev: impl Fn() -> WatchEvent) -> (Option<Value>, Option<Value>) {
        let res = Resource::find("", "v1", "pods").unwrap();
        let mut q = HashMap::new();
        q.insert("labelSelector".to_string(), selector.to_string());
        let filter = Filter::from_query(res, &q).unwrap();
        let mut enc = Encoder {
            res,
            as_table: false,
            include: IncludeObject::parse(None),
            sent_columns: false,
        };
        let parse = |b: Option<Bytes>| {
            b.map(|b| {
                assert!(b.ends_with(b"\n"));
                serde_json::from_slice::<Value>(&b).unwrap()
            })
        };
        let fast = parse(render_stored(&enc, &filter, ev(), false).unwrap());
        // The tree path, as a watch with a field selector (none here) would take it.
        let tree = parse(match ev() {
            WatchEvent::Put { kv, prev } => {
                let obj = to_object_as(res, &kv).unwrap();
                let now = filter.matches(&obj);
                let before = prev
                    .as_ref()
                    .is_some_and(|p| filter.matches(&to_object_as(res, p).unwrap()));
                match (before, now) {
                    (false, true) => Some(enc.event("ADDED", &obj)),
                    (true, true) => Some(enc.event("MODIFIED", &obj)),
                    (true, false) => Some(enc.event("DELETED", &obj)),
                    (false, false) => None,
                }
            }
            other => render(&mut enc, &filter, other, false).unwrap(),
        });
        (fast, tree)
    }

    #[test]
    fn stored_bytes_render_like_trees() {
        let a = pod(json!({"app": "a"}));
        let b = pod(json!({"app": "b"}));
        let cases: Vec<(&str, WatchEvent, Option<&str>)> = vec![
            (
                "",
                WatchEvent::Put {
                    kv: kv(&a, 5),
                    prev: None,
                },
                Some("ADDED"),
            ),
            (
                "",
                WatchEvent::Put {
                    kv: kv(&a, 6),
                    prev: Some(kv(&a, 5)),
                },
                Some("MODIFIED"),
            ),
            (
                "app=a",
                WatchEvent::Put {
                    kv: kv(&b, 7),
                    prev: Some(kv(&a, 6)),
                },
                Some("DELETED"),
            ),
            (
                "app=a",
                WatchEvent::Put {
                    kv: kv(&a, 8),
                    prev: Some(kv(&b, 7)),
                },
                Some("ADDED"),
            ),
            (
                "app=a",
                WatchEvent::Put {
                    kv: kv(&b, 9),
                    prev: Some(kv(&b, 8)),
                },
                None,
            ),
            (
                "app in (a,b)",
                WatchEvent::Put {
                    kv: kv(&b, 9),
                    prev: Some(kv(&a, 8)),
                },
                Some("MODIFIED"),
            ),
            (
                "",
                WatchEvent::Delete {
                    kv: KeyValue {
                        value: Bytes::new(),
                        ..kv(&a, 10)
                    },
                    prev: Some(kv(&a, 9)),
                },
                Some("DELETED"),
            ),
            (
                "app=b",
                WatchEvent::Delete {
                    kv: KeyValue {
                        value: Bytes::new(),
                        ..kv(&a, 10)
                    },
                    prev: Some(kv(&a, 9)),
                },
                None,
            ),
        ];
        for (selector, ev, want) in cases {
            let rev = match &ev {
                WatchEvent::Put { kv, .. } | WatchEvent::Delete { kv, .. } => kv.mod_revision,
                WatchEvent::Progress { revision } => *revision,
            };
            let (fast, tree) = both(selector, || ev.clone());
            assert_eq!(fast, tree, "selector {selector:?}");
            match want {
                Some(kind) => {
                    let fast = fast.unwrap();
                    assert_eq!(fast["type"], kind);
                    assert_eq!(
                        fast["object"]["metadata"]["resourceVersion"],
                        rev.to_string()
                    );
                }
                None => assert!(fast.is_none()),
            }
        }
    }

    #[test]
    fn labels_are_read_without_the_rest() {
        let v = pod(json!({"x": "1"}));
        assert_eq!(
            labels_of(v.to_string().as_bytes())
                .unwrap()
                .get("x")
                .unwrap(),
            "1"
        );
        assert!(labels_of(br#"{"kind":"Pod"}"#).unwrap().is_empty());
        assert!(
            labels_of(br#"{"metadata":{"labels":null}}"#)
                .unwrap()
                .is_empty()
        );
        assert!(labels_of(b"not json").is_err());
    }
}
