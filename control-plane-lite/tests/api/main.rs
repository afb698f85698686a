//! API server tests below HTTP: requests go straight to `ApiServer::handle`, on both store
//! backends (embedded and a one-member etcd the test starts): status codes and `Status`
//! reasons, generateName and namespace checks, field validation, paging, selectors, watches
//! (filtered transitions, bookmarks, timeouts, 410 for compacted revisions), Tables,
//! events.k8s.io/v1 Events, metadata rules, dry runs, garbage collection by ownerReferences
//! (also across a restart), namespace finalization and server-side apply.

#[path = "../store/support.rs"]
#[allow(dead_code)]
mod support;

#[path = "../support/api.rs"]
#[allow(dead_code)]
mod api_support;

use std::sync::Arc;
use std::time::Duration;

use api_support::{Cred, NODE_TOKEN, Reply, TOKEN};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use keelson_server::api::ApiServer;
use keelson_server::store::{EmbeddedConfig, Store};
use serde_json::{Value, json};

struct Api {
    api: ApiServer,
    store: Arc<dyn Store>,
}

impl Api {
    async fn new(store: Arc<dyn Store>) -> Api {
        let api = api_support::server(store.clone()).await;
        Api { api, store }
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        accept: &str,
        body: Option<&str>,
    ) -> hyper::Response<keelson_server::api::Body> {
        let headers = [("Content-Type", content_type), ("Accept", accept)];
        api_support::send(&self.api, &Cred::admin(), method, path, &headers, body).await
    }

    async fn call_as(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        accept: &str,
        body: Option<Value>,
    ) -> Reply {
        let text = body.map(|b| b.to_string());
        api_support::read(
            self.raw(method, path, content_type, accept, text.as_deref())
                .await,
        )
        .await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let ct = api_support::json_content_type(&method);
        self.call_as(method, path, ct, "application/json", body)
            .await
    }

    /// Starts a watch and returns a function reading its next event (None: stream ended or
    /// nothing within the timeout).
    async fn watch(&self, path: &str) -> Watch {
        let resp = self
            .raw(Method::GET, path, "", "application/json", None)
            .await;
        Watch {
            status: resp.status(),
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }
}

struct Watch {
    status: StatusCode,
    body: keelson_server::api::Body,
    buf: Vec<u8>,
}

impl Watch {
    async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("watch event is json"));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??
                .ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The next event that is not a bookmark.
    async fn next_event(&mut self) -> Value {
        loop {
            let ev = self
                .next(Duration::from_secs(10))
                .await
                .expect("a watch event");
            if ev["type"] != "BOOKMARK" {
                return ev;
            }
        }
    }
}

async fn embedded() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        progress_interval: support::TEST_PROGRESS,
        compaction_interval: None,
        ..EmbeddedConfig::default()
    };
    let store = api_support::open_embedded(dir.path().to_path_buf(), config).await;
    (store, dir)
}

/// Runs `scenario` on the embedded store and on etcd.
macro_rules! both_backends {
    ($embedded:ident, $etcd:ident, $scenario:ident) => {
        #[tokio::test]
        async fn $embedded() {
            support::init_tracing();
            let (store, _dir) = embedded().await;
            $scenario(Api::new(store).await).await;
        }

        #[tokio::test]
        async fn $etcd() {
            support::init_tracing();
            let etcd = support::Etcd::start(1).await;
            let store: Arc<dyn Store> = Arc::new(etcd.connect().await);
            $scenario(Api::new(store).await).await;
        }
    };
}

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "b"}})
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

async fn crud_and_errors(api: Api) {
    let r = api.call(Method::POST, CMS, Some(cm("c"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let rv = r.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(r.body["metadata"]["namespace"], "default");
    assert_eq!(r.body["metadata"]["generation"], 1);
    let r = api.call(Method::GET, &format!("{CMS}/c"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["metadata"]["resourceVersion"], rv.as_str());
    let r = api.call(Method::POST, CMS, Some(cm("c"))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["reason"], "AlreadyExists");
    // Update with the current resourceVersion, then with the stale one.
    let mut next = cm("c");
    next["metadata"]["resourceVersion"] = json!(rv);
    next["data"]["a"] = json!("c");
    let r = api
        .call(Method::PUT, &format!("{CMS}/c"), Some(next.clone()))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["metadata"]["generation"], 2);
    let r = api.call(Method::PUT, &format!("{CMS}/c"), Some(next)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["reason"], "Conflict");
    // Patches.
    let r = api
        .call(
            Method::PATCH,
            &format!("{CMS}/c"),
            Some(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["metadata"]["labels"]["x"], "y");
    let r = api
        .call_as(
            Method::PATCH,
            &format!("{CMS}/c"),
            "application/json-patch+json",
            "",
            Some(json!([{"op": "test", "path": "/data/a", "value": "nope"}])),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let r = api
        .call_as(
            Method::PATCH,
            &format!("{CMS}/c"),
            "application/strategic-merge-patch+json",
            "",
            Some(json!({"data": {"$patch": "replace", "only": "this"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["data"], json!({"only": "this"}));
    let r = api
        .call_as(
            Method::PATCH,
            &format!("{CMS}/c"),
            "application/apply-patch+yaml",
            "",
            Some(json!({})),
        )
        .await;
    // Server-side apply is served; without a fieldManager it is refused.
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Delete with a stale precondition, then for real.
    let r = api
        .call(
            Method::DELETE,
            &format!("{CMS}/c"),
            Some(json!({"preconditions": {"resourceVersion": rv}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = api.call(Method::DELETE, &format!("{CMS}/c"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api.call(Method::GET, &format!("{CMS}/c"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["kind"], "Status");
    assert_eq!(r.body["reason"], "NotFound");
    assert_eq!(r.body["message"], "configmaps \"c\" not found");
    // Routing and authentication.
    let r = api.call(Method::GET, "/api/v1/widgets", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .call(Method::POST, &format!("{CMS}/c"), Some(cm("c")))
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.body["reason"], "MethodNotAllowed");
    let anon = Request::builder()
        .uri("/api/v1/namespaces")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = api.api.handle(anon, None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}
both_backends!(crud_embedded, crud_etcd, crud_and_errors);

async fn create_checks(api: Api) {
    let mut g = cm("");
    g["metadata"] = json!({"generateName": "gen-"});
    let r = api.call(Method::POST, CMS, Some(g)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let name = r.body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    let mut other = cm("o");
    other["metadata"]["namespace"] = json!("kube-system");
    let r = api.call(Method::POST, CMS, Some(other)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api
        .call(
            Method::POST,
            "/api/v1/namespaces/missing/configmaps",
            Some(cm("m")),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["message"], "namespaces \"missing\" not found");
    let mut unknown = cm("u");
    unknown["bogus"] = json!(1);
    let r = api
        .call(
            Method::POST,
            &format!("{CMS}?fieldValidation=Strict"),
            Some(unknown.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"bogus\"")
    );
    let r = api.call(Method::POST, CMS, Some(unknown)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(
        r.headers
            .get("Warning")
            .is_some_and(|w| w.to_str().unwrap().contains("bogus"))
    );
    assert!(r.body.get("bogus").is_none());
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
    let r = api
        .call(Method::POST, "/api/v1/namespaces/default/pods", Some(pod))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["reason"], "Invalid");
    assert_eq!(
        r.body["details"]["causes"][0]["field"],
        "spec.containers[0].image"
    );
    let r = api
        .call(Method::POST, &format!("{CMS}?dryRun=All"), Some(cm("dry")))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = api.call(Method::GET, &format!("{CMS}/dry"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
both_backends!(create_embedded, create_etcd, create_checks);

async fn lists_pages_selectors_tables(api: Api) {
    for i in 0..5 {
        let mut c = cm(&format!("c{i}"));
        c["metadata"]["labels"] = json!({"parity": if i % 2 == 0 { "even" } else { "odd" }});
        assert_eq!(
            api.call(Method::POST, CMS, Some(c)).await.status,
            StatusCode::CREATED
        );
    }
    let mut names = Vec::new();
    let mut path = format!("{CMS}?limit=2");
    let mut rvs = Vec::new();
    loop {
        let r = api.call(Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["kind"], "ConfigMapList");
        let items = r.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        names.extend(items.iter().map(|i| i["metadata"]["name"].clone()));
        rvs.push(r.body["metadata"]["resourceVersion"].clone());
        match r.body["metadata"]["continue"].as_str() {
            Some(c) => {
                // A write between pages does not show in later pages.
                api.call(Method::POST, CMS, Some(cm(&format!("late{}", rvs.len()))))
                    .await;
                path = format!("{CMS}?limit=2&continue={c}");
            }
            None => break,
        }
    }
    assert_eq!(names, ["c0", "c1", "c2", "c3", "c4"]);
    assert!(rvs.windows(2).all(|w| w[0] == w[1]), "{rvs:?}");
    let r = api
        .call(
            Method::GET,
            &format!("{CMS}?labelSelector=parity%3Deven"),
            None,
        )
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 3);
    let r = api
        .call(
            Method::GET,
            &format!("{CMS}?labelSelector=parity%20in%20(odd)&limit=1"),
            None,
        )
        .await;
    assert_eq!(r.body["items"][0]["metadata"]["name"], "c1");
    assert!(r.body["metadata"]["continue"].is_string());
    let r = api
        .call(
            Method::GET,
            &format!("{CMS}?fieldSelector=spec.nodeName%3Dx"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api
        .call_as(
            Method::GET,
            CMS,
            "",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            None,
        )
        .await;
    assert_eq!(r.body["kind"], "Table");
    let cols: Vec<&str> = r.body["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Data", "Age"]);
    assert_eq!(r.body["rows"][0]["cells"][1], "1");
    assert_eq!(r.body["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    // Discovery.
    let r = api.call(Method::GET, "/api/v1", None).await;
    assert_eq!(r.body["kind"], "APIResourceList");
    let r = api
        .call(Method::GET, "/apis/coordination.k8s.io/v1", None)
        .await;
    assert_eq!(r.body["resources"][0]["name"], "leases");
    let r = api.call(Method::GET, "/openapi/v3", None).await;
    let url = r.body["paths"]["apis/coordination.k8s.io/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api.call(Method::GET, &url, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["openapi"], "3.0.0");
}
both_backends!(lists_embedded, lists_etcd, lists_pages_selectors_tables);

async fn watches(api: Api) {
    let r = api.call(Method::GET, CMS, None).await;
    let rv = r.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut all = api
        .watch(&format!(
            "{CMS}?watch=1&resourceVersion={rv}&allowWatchBookmarks=true"
        ))
        .await;
    assert_eq!(all.status, StatusCode::OK);
    let mut labelled = api
        .watch(&format!(
            "{CMS}?watch=true&resourceVersion={rv}&labelSelector=app%3Dweb"
        ))
        .await;
    api.call(Method::POST, CMS, Some(cm("w"))).await;
    let w_path = format!("{CMS}/w");
    let patch = |v: Value| api.call(Method::PATCH, &w_path, Some(v));
    patch(json!({"metadata": {"labels": {"app": "web"}}})).await;
    patch(json!({"metadata": {"labels": {"app": null}}})).await;
    api.call(Method::DELETE, &format!("{CMS}/w"), None).await;
    let mut types = Vec::new();
    let mut last_rv = 0;
    for _ in 0..4 {
        let ev = all.next_event().await;
        let rv: i64 = ev["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rv > last_rv);
        last_rv = rv;
        types.push(ev["type"].as_str().unwrap().to_string());
    }
    assert_eq!(types, ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]);
    // The labelled watch sees the object enter and leave its selector.
    let a = labelled.next_event().await;
    assert_eq!(a["type"], "ADDED");
    assert_eq!(a["object"]["metadata"]["labels"]["app"], "web");
    assert_eq!(labelled.next_event().await["type"], "DELETED");
    // Idle: a bookmark at the latest revision.
    let bm = all.next(Duration::from_secs(10)).await.expect("a bookmark");
    assert_eq!(bm["type"], "BOOKMARK");
    assert_eq!(bm["object"]["kind"], "ConfigMap");
    // Without a resourceVersion: the current objects first; timeoutSeconds ends the stream.
    api.call(Method::POST, CMS, Some(cm("now"))).await;
    let mut w = api.watch(&format!("{CMS}?watch=1&timeoutSeconds=1")).await;
    let first = w.next_event().await;
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["metadata"]["name"], "now");
    assert!(w.next(Duration::from_secs(5)).await.is_none());
    // Tables over watch: one row per event, columns in the first.
    let resp = api
        .raw(
            Method::GET,
            &format!("{CMS}?watch=1&timeoutSeconds=1"),
            "",
            "application/json;as=Table;v=v1;g=meta.k8s.io",
            None,
        )
        .await;
    let mut tw = Watch {
        status: resp.status(),
        body: resp.into_body(),
        buf: Vec::new(),
    };
    let ev = tw.next_event().await;
    assert_eq!(ev["object"]["kind"], "Table");
    assert_eq!(ev["object"]["rows"][0]["cells"][0], "now");
    // Compacted history: 410 Gone (as the response or as an ERROR event).
    let current = api.store.current_revision().await.unwrap();
    api.call(
        Method::PATCH,
        &format!("{CMS}/now"),
        Some(json!({"data": {"x": "1"}})),
    )
    .await;
    api.store.compact(current + 1).await.unwrap();
    let mut old = api.watch(&format!("{CMS}?watch=1&resourceVersion=1")).await;
    if old.status != StatusCode::GONE {
        assert_eq!(old.status, StatusCode::OK);
        let ev = old
            .next(Duration::from_secs(10))
            .await
            .expect("an error event");
        assert_eq!(ev["type"], "ERROR");
        assert_eq!(ev["object"]["code"], 410);
        assert_eq!(ev["object"]["reason"], "Expired");
    }
}
both_backends!(watch_embedded, watch_etcd, watches);

async fn pod_status_subresource(api: Api) {
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let r = api.call(Method::POST, pods, Some(pod)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["spec"]["containers"][0]["imagePullPolicy"], "Always");
    // The main resource ignores status and may change only images (and a few more fields).
    // (A strategic merge patch: containers merge by name, so only the image changes.)
    let r = api
        .call_as(
            Method::PATCH,
            &format!("{pods}/p"),
            "application/strategic-merge-patch+json",
            "",
            Some(
                json!({"status": {"phase": "Running"}, "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"]["phase"], "Pending");
    assert_eq!(r.body["metadata"]["labels"]["a"], "b");
    assert_eq!(r.body["spec"]["containers"][0]["image"], "busybox:2");
    let r = api
        .call(
            Method::PATCH,
            &format!("{pods}/p"),
            Some(json!({"spec": {"nodeName": "n1"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["details"]["causes"][0]["field"], "spec");
    let binding = json!({"target": {"kind": "Node", "name": "n1"}});
    let r = api
        .call(Method::POST, &format!("{pods}/p/binding"), Some(binding))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // /status changes only status.
    let r = api
        .call(
            Method::PATCH,
            &format!("{pods}/p/status"),
            Some(json!({"status": {"phase": "Running"}, "spec": {"nodeName": "n2"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"]["phase"], "Running");
    assert_eq!(r.body["spec"]["nodeName"], "n1");
    // A PUT of the manifest as written (no defaults) is defaulted like a create.
    let put = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}});
    let r = api.call(Method::PUT, &format!("{pods}/p"), Some(put)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"]["phase"], "Running");
    // Immutable config maps.
    let mut frozen = cm("frozen");
    frozen["immutable"] = json!(true);
    api.call(Method::POST, CMS, Some(frozen)).await;
    let r = api
        .call(
            Method::PATCH,
            &format!("{CMS}/frozen"),
            Some(json!({"data": {"a": "changed"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = api
        .call(
            Method::GET,
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1",
            None,
        )
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let r = api
        .call(Method::GET, &format!("{CMS}/x/status"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
both_backends!(pods_embedded, pods_etcd, pod_status_subresource);

async fn deletion(api: Api) {
    // Finalizers hold an object until the last one is removed.
    let mut c = cm("held");
    c["metadata"]["finalizers"] = json!(["example.com/hold"]);
    api.call(Method::POST, CMS, Some(c)).await;
    let r = api.call(Method::DELETE, &format!("{CMS}/held"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body["metadata"]["deletionTimestamp"].is_string(),
        "{}",
        r.body
    );
    let r = api.call(Method::GET, &format!("{CMS}/held"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api
        .call(
            Method::PATCH,
            &format!("{CMS}/held"),
            Some(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api.call(Method::GET, &format!("{CMS}/held"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A bound pod terminates gracefully; grace 0 ends it.
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}});
    api.call(Method::POST, pods, Some(pod)).await;
    let r = api.call(Method::DELETE, &format!("{pods}/b"), None).await;
    assert_eq!(r.body["metadata"]["deletionGracePeriodSeconds"], 30);
    let r = api
        .call(
            Method::DELETE,
            &format!("{pods}/b"),
            Some(json!({"gracePeriodSeconds": 0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api.call(Method::GET, &format!("{pods}/b"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // An unbound pod goes at once.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "u"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    api.call(Method::POST, pods, Some(pod)).await;
    api.call(Method::DELETE, &format!("{pods}/u"), None).await;
    let r = api.call(Method::GET, &format!("{pods}/u"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A namespace takes its contents with it.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}});
    api.call(Method::POST, "/api/v1/namespaces", Some(ns.clone()))
        .await;
    api.call(
        Method::POST,
        "/api/v1/namespaces/tmp/configmaps",
        Some(cm("in")),
    )
    .await;
    let r = api
        .call(Method::DELETE, "/api/v1/namespaces/tmp", None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    api.call(Method::POST, "/api/v1/namespaces", Some(ns)).await;
    let r = api
        .call(Method::GET, "/api/v1/namespaces/tmp/configmaps/in", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
both_backends!(deletion_embedded, deletion_etcd, deletion);

async fn binding_eviction_deletecollection(api: Api) {
    let pods = "/api/v1/namespaces/default/pods";
    for name in ["a", "b"] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        api.call(Method::POST, pods, Some(pod)).await;
    }
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "a"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}});
    let r = api
        .call(
            Method::POST,
            &format!("{pods}/a/binding"),
            Some(binding.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api.call(Method::GET, &format!("{pods}/a"), None).await;
    assert_eq!(r.body["spec"]["nodeName"], "n1");
    assert_eq!(r.body["status"]["conditions"][0]["type"], "PodScheduled");
    let r = api
        .call(Method::POST, &format!("{pods}/a/binding"), Some(binding))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("already assigned to node \"n1\"")
    );
    let r = api
        .call(
            Method::POST,
            &format!("{pods}/b/binding"),
            Some(json!({"target": {}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Streaming subresources: 503 while node agents cannot be reached, 400 when unbound.
    let r = api.call(Method::GET, &format!("{pods}/a/log"), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    let r = api.call(Method::GET, &format!("{pods}/b/log"), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // Eviction deletes (an unbound pod at once).
    let eviction =
        json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "b"}});
    let r = api
        .call(Method::POST, &format!("{pods}/b/eviction"), Some(eviction))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api.call(Method::GET, &format!("{pods}/b"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // deletecollection with a selector.
    for name in ["x1", "x2", "y1"] {
        let mut c = cm(name);
        c["metadata"]["labels"] = json!({"group": &name[..1]});
        api.call(Method::POST, CMS, Some(c)).await;
    }
    let r = api
        .call(
            Method::DELETE,
            &format!("{CMS}?labelSelector=group%3Dx"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    let r = api.call(Method::GET, CMS, None).await;
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["y1"]);
}
both_backends!(
    binding_embedded,
    binding_etcd,
    binding_eviction_deletecollection
);

// ---- Object and verb semantics: events.k8s.io, metadata, dry runs, garbage collection,
// namespace finalization, server-side apply.

const PODS: &str = "/api/v1/namespaces/default/pods";

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}})
}

/// Runs garbage collector passes until one changes nothing.
async fn settle(api: &Api) {
    for _ in 0..20 {
        if !api.api.collect_garbage().await.expect("gc pass") {
            return;
        }
    }
    panic!("the garbage collector does not settle");
}

async fn status_of(api: &Api, path: &str) -> StatusCode {
    api.call(Method::GET, path, None).await.status
}

fn owned_by(name: &str, owner: &Value, block: bool) -> Value {
    let mut c = cm(name);
    c["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap",
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "blockOwnerDeletion": block}]);
    c
}

async fn events_both_versions(api: &Api) {
    let evs = "/api/v1/namespaces/default/events";
    let v1evs = "/apis/events.k8s.io/v1/namespaces/default/events";
    let r = api.call(Method::GET, "/apis/events.k8s.io/v1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["resources"][0]["name"], "events");
    let groups = api.call(Method::GET, "/apis", None).await;
    assert!(groups.body.to_string().contains("events.k8s.io"));
    let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.1"},
        "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default", "uid": "u1"},
        "reason": "Scheduled", "message": "assigned default/web to n1", "type": "Normal",
        "count": 2, "source": {"component": "default-scheduler"},
        "reportingComponent": "default-scheduler"});
    let r = api.call(Method::POST, evs, Some(core)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // The same object through events.k8s.io/v1.
    let r = api.call(Method::GET, &format!("{v1evs}/web.1"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["apiVersion"], "events.k8s.io/v1");
    assert_eq!(r.body["note"], "assigned default/web to n1");
    assert_eq!(r.body["regarding"]["name"], "web");
    assert_eq!(r.body["reportingController"], "default-scheduler");
    assert_eq!(r.body["deprecatedCount"], 2);
    assert_eq!(r.body["deprecatedSource"]["component"], "default-scheduler");
    // Created through events.k8s.io/v1, read through core.
    let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web.2"}, "eventTime": "2025-01-01T00:00:00.000000Z",
        "regarding": {"kind": "Pod", "name": "web", "namespace": "default", "uid": "u1"},
        "reason": "Pulled", "note": "image pulled", "type": "Normal", "action": "Pull",
        "reportingController": "keelson-agent", "reportingInstance": "n1"});
    let r = api.call(Method::POST, v1evs, Some(v1)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["note"], "image pulled");
    let r = api.call(Method::GET, &format!("{evs}/web.2"), None).await;
    assert_eq!(r.body["message"], "image pulled");
    assert_eq!(r.body["involvedObject"]["uid"], "u1");
    assert_eq!(r.body["reportingComponent"], "keelson-agent");
    // Field selectors kubectl describe / kubectl events use.
    for (sel, n) in [
        (
            "involvedObject.name%3Dweb%2CinvolvedObject.namespace%3Ddefault%2CinvolvedObject.kind%3DPod%2CinvolvedObject.uid%3Du1",
            2,
        ),
        ("source%3Ddefault-scheduler", 1),
        ("reportingComponent%3Dkeelson-agent", 1),
        ("reason%3DPulled%2Ctype%3DNormal", 1),
        ("involvedObject.name%3Dother", 0),
    ] {
        let r = api
            .call(Method::GET, &format!("{evs}?fieldSelector={sel}"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{sel}: {}", r.body);
        assert_eq!(r.body["items"].as_array().unwrap().len(), n, "{sel}");
    }
    let r = api
        .call(
            Method::GET,
            &format!(
                "{v1evs}?fieldSelector=regarding.name%3Dweb%2CreportingController%3Dkeelson-agent"
            ),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["kind"], "EventList");
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["note"], "image pulled");
    // Tables print both versions alike.
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io";
    let r = api.call_as(Method::GET, v1evs, "", table, None).await;
    assert_eq!(r.body["kind"], "Table", "{}", r.body);
    assert_eq!(r.body["rows"][0]["cells"][3], "pod/web");
    // Patches and watches work in the v1 shape.
    let r = api
        .call(
            Method::PATCH,
            &format!("{v1evs}/web.2"),
            Some(json!({"note": "image pulled again"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["note"], "image pulled again");
    let r = api.call(Method::GET, &format!("{evs}/web.2"), None).await;
    assert_eq!(r.body["message"], "image pulled again");
    let mut w = api.watch(&format!("{v1evs}?watch=1")).await;
    let ev = w.next_event().await;
    assert_eq!(ev["object"]["apiVersion"], "events.k8s.io/v1");
    assert!(ev["object"].get("message").is_none(), "{ev}");
}

async fn events_v1(api: Api) {
    events_both_versions(&api).await;
}
both_backends!(events_v1_embedded, events_v1_etcd, events_v1);

async fn metadata_semantics(api: Api) {
    // Generation follows the spec, not labels or status.
    let r = api.call(Method::POST, PODS, Some(pod("g"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["metadata"]["generation"], 1);
    let uid = r.body["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(r.body["metadata"]["creationTimestamp"].is_string());
    let r = api
        .call(
            Method::PATCH,
            &format!("{PODS}/g"),
            Some(json!({"metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}}})),
        )
        .await;
    assert_eq!(r.body["metadata"]["generation"], 1, "{}", r.body);
    let r = api
        .call(
            Method::PATCH,
            &format!("{PODS}/g/status"),
            Some(json!({"status": {"phase": "Running"}})),
        )
        .await;
    assert_eq!(r.body["metadata"]["generation"], 1, "{}", r.body);
    let r = api
        .call(
            Method::PATCH,
            &format!("{PODS}/g"),
            Some(json!({"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["metadata"]["generation"], 2);
    assert_eq!(r.body["metadata"]["uid"], uid.as_str());
    // Immutable pod fields and uid.
    let r = api
        .call(
            Method::PATCH,
            &format!("{PODS}/g"),
            Some(json!({"spec": {"restartPolicy": "Never"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["details"]["causes"][0]["field"], "spec");
    let r = api
        .call(
            Method::PATCH,
            &format!("{PODS}/g"),
            Some(json!({"metadata": {"uid": "00000000-0000-4000-8000-000000000000"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["details"]["causes"][0]["field"], "metadata.uid");
    // Owner references and finalizers are validated.
    let mut bad = cm("badowner");
    bad["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "x"}]);
    let r = api.call(Method::POST, CMS, Some(bad)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("uid must not be empty"),
        "{}",
        r.body
    );
    let mut two = cm("twocontrollers");
    two["metadata"]["ownerReferences"] = json!([
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "a", "uid": "1", "controller": true},
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "b", "uid": "2", "controller": true}]);
    let r = api.call(Method::POST, CMS, Some(two)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut fin = cm("badfinalizer");
    fin["metadata"]["finalizers"] = json!(["bad finalizer"]);
    let r = api.call(Method::POST, CMS, Some(fin)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut fin = cm("plainfinalizer");
    fin["metadata"]["finalizers"] = json!(["plain"]);
    let r = api.call(Method::POST, CMS, Some(fin)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let warning = r.headers.get("Warning").unwrap().to_str().unwrap();
    assert!(
        warning.contains("prefer a domain-qualified finalizer name"),
        "{warning}"
    );
    // No new finalizers once deleting.
    api.call(Method::DELETE, &format!("{CMS}/plainfinalizer"), None)
        .await;
    let r = api
        .call(
            Method::PATCH,
            &format!("{CMS}/plainfinalizer"),
            Some(json!({"metadata": {"finalizers": ["plain", "example.com/more"]}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    api.call(
        Method::PATCH,
        &format!("{CMS}/plainfinalizer"),
        Some(json!({"metadata": {"finalizers": null}})),
    )
    .await;
    assert_eq!(
        status_of(&api, &format!("{CMS}/plainfinalizer")).await,
        StatusCode::NOT_FOUND
    );
    // generateName, namespace defaulting and checks.
    let r = api
        .call(
            Method::POST,
            CMS,
            Some(json!({"metadata": {"generateName": "gen-"}, "data": {}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(
        r.body["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("gen-")
    );
    assert_eq!(r.body["metadata"]["namespace"], "default");
    let r = api
        .call(
            Method::POST,
            "/api/v1/namespaces/nowhere/configmaps",
            Some(cm("x")),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // New namespaces carry the kubernetes finalizer; default ones cannot be deleted.
    let r = api
        .call(
            Method::POST,
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": "fresh"}})),
        )
        .await;
    assert_eq!(r.body["spec"]["finalizers"], json!(["kubernetes"]));
    for ns in ["default", "kube-system", "kube-public"] {
        let r = api
            .call(Method::DELETE, &format!("/api/v1/namespaces/{ns}"), None)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{ns}");
        assert_eq!(r.body["reason"], "Forbidden");
        assert!(
            r.body["message"]
                .as_str()
                .unwrap()
                .contains("this namespace may not be deleted")
        );
    }
}
both_backends!(metadata_embedded, metadata_etcd, metadata_semantics);

async fn dry_runs(api: Api) {
    let r = api
        .call(Method::POST, &format!("{CMS}?dryRun=All"), Some(cm("dry")))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["metadata"]["name"], "dry");
    assert_eq!(
        status_of(&api, &format!("{CMS}/dry")).await,
        StatusCode::NOT_FOUND
    );
    let r = api
        .call(Method::POST, &format!("{CMS}?dryRun=Some"), Some(cm("dry")))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    api.call(Method::POST, CMS, Some(cm("real"))).await;
    let mut next = cm("real");
    next["data"]["a"] = json!("changed");
    let r = api
        .call(Method::PUT, &format!("{CMS}/real?dryRun=All"), Some(next))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["data"]["a"], "changed");
    let r = api
        .call(
            Method::PATCH,
            &format!("{CMS}/real?dryRun=All"),
            Some(json!({"data": {"a": "patched"}})),
        )
        .await;
    assert_eq!(r.body["data"]["a"], "patched");
    let r = api
        .call(
            Method::DELETE,
            &format!("{CMS}/real"),
            Some(json!({"dryRun": ["All"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api
        .call(Method::DELETE, &format!("{CMS}?dryRun=All"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body["items"].as_array().unwrap().is_empty());
    let r = api.call(Method::GET, &format!("{CMS}/real"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["data"]["a"], "b");
    // A graceful dry-run delete shows the deletion timestamp it would set.
    let mut bound = pod("bound");
    bound["spec"]["nodeName"] = json!("n1");
    api.call(Method::POST, PODS, Some(bound)).await;
    let r = api
        .call(Method::DELETE, &format!("{PODS}/bound?dryRun=All"), None)
        .await;
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    let r = api.call(Method::GET, &format!("{PODS}/bound"), None).await;
    assert!(r.body["metadata"].get("deletionTimestamp").is_none());
    // Apply in dry run creates nothing.
    let r = api
        .call_as(
            Method::PATCH,
            &format!("{CMS}/applied?fieldManager=t&dryRun=All"),
            "application/apply-patch+yaml",
            "application/json",
            Some(cm("applied")),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        status_of(&api, &format!("{CMS}/applied")).await,
        StatusCode::NOT_FOUND
    );
}
both_backends!(dry_run_embedded, dry_run_etcd, dry_runs);

async fn garbage_collection(api: Api) {
    // Background (the default): the owner goes at once, its dependents after.
    let owner = api.call(Method::POST, CMS, Some(cm("owner"))).await.body;
    let dep = api
        .call(Method::POST, CMS, Some(owned_by("dep", &owner, false)))
        .await;
    assert_eq!(dep.status, StatusCode::CREATED, "{}", dep.body);
    let r = api
        .call(Method::DELETE, &format!("{CMS}/owner"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        status_of(&api, &format!("{CMS}/owner")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(status_of(&api, &format!("{CMS}/dep")).await, StatusCode::OK);
    settle(&api).await;
    assert_eq!(
        status_of(&api, &format!("{CMS}/dep")).await,
        StatusCode::NOT_FOUND
    );

    // Orphan: the owner waits on the orphan finalizer; dependents lose the reference.
    let owner = api.call(Method::POST, CMS, Some(cm("o2"))).await.body;
    api.call(Method::POST, CMS, Some(owned_by("kept", &owner, true)))
        .await;
    let r = api
        .call(
            Method::DELETE,
            &format!("{CMS}/o2"),
            Some(json!({"propagationPolicy": "Orphan"})),
        )
        .await;
    assert_eq!(
        r.body["metadata"]["finalizers"],
        json!(["orphan"]),
        "{}",
        r.body
    );
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    settle(&api).await;
    assert_eq!(
        status_of(&api, &format!("{CMS}/o2")).await,
        StatusCode::NOT_FOUND
    );
    let r = api.call(Method::GET, &format!("{CMS}/kept"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body["metadata"].get("ownerReferences").is_none(),
        "{}",
        r.body
    );

    // orphanDependents=true is the old spelling of Orphan.
    let owner = api.call(Method::POST, CMS, Some(cm("o3"))).await.body;
    api.call(Method::POST, CMS, Some(owned_by("kept3", &owner, false)))
        .await;
    api.call(
        Method::DELETE,
        &format!("{CMS}/o3"),
        Some(json!({"orphanDependents": true})),
    )
    .await;
    settle(&api).await;
    assert_eq!(
        status_of(&api, &format!("{CMS}/kept3")).await,
        StatusCode::OK
    );

    // Foreground: the owner stays (foregroundDeletion) until its blocking dependents are gone.
    let owner = api.call(Method::POST, CMS, Some(cm("fg"))).await.body;
    api.call(Method::POST, CMS, Some(owned_by("blocker", &owner, true)))
        .await;
    let mut held = owned_by("held", &owner, true);
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    api.call(Method::POST, CMS, Some(held)).await;
    let r = api
        .call(
            Method::DELETE,
            &format!("{CMS}/fg?propagationPolicy=Foreground"),
            None,
        )
        .await;
    assert_eq!(
        r.body["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    settle(&api).await;
    assert_eq!(
        status_of(&api, &format!("{CMS}/blocker")).await,
        StatusCode::NOT_FOUND
    );
    // "held" is being deleted but its finalizer keeps it, and so the owner.
    let r = api.call(Method::GET, &format!("{CMS}/held"), None).await;
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    let r = api.call(Method::GET, &format!("{CMS}/fg"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    api.call(
        Method::PATCH,
        &format!("{CMS}/held"),
        Some(json!({"metadata": {"finalizers": null}})),
    )
    .await;
    settle(&api).await;
    assert_eq!(
        status_of(&api, &format!("{CMS}/fg")).await,
        StatusCode::NOT_FOUND
    );

    // A dependent whose owner does not exist (uid mismatch) is collected; one with another
    // live owner only loses the dangling reference; owners of unserved kinds are kept.
    let live = api.call(Method::POST, CMS, Some(cm("live"))).await.body;
    let mut dangling = cm("dangling");
    dangling["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap",
        "name": "live", "uid": "00000000-0000-4000-8000-000000000001"}]);
    api.call(Method::POST, CMS, Some(dangling)).await;
    let mut mixed = owned_by("mixed", &live, false);
    mixed["metadata"]["ownerReferences"]
        .as_array_mut()
        .unwrap()
        .push(json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "gone", "uid": "2"}));
    api.call(Method::POST, CMS, Some(mixed)).await;
    let mut foreign = cm("foreign");
    foreign["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "rs", "uid": "3"}]);
    api.call(Method::POST, CMS, Some(foreign)).await;
    settle(&api).await;
    assert_eq!(
        status_of(&api, &format!("{CMS}/dangling")).await,
        StatusCode::NOT_FOUND
    );
    let r = api.call(Method::GET, &format!("{CMS}/mixed"), None).await;
    assert_eq!(
        r.body["metadata"]["ownerReferences"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "{}",
        r.body
    );
    assert_eq!(
        status_of(&api, &format!("{CMS}/foreign")).await,
        StatusCode::OK
    );

    // Pods owned by a deleted owner go too (an unbound pod at once).
    let owner = api.call(Method::POST, CMS, Some(cm("podowner"))).await.body;
    let mut p = pod("owned");
    p["metadata"]["ownerReferences"] =
        owned_by("x", &owner, true)["metadata"]["ownerReferences"].clone();
    api.call(Method::POST, PODS, Some(p)).await;
    // Invalid propagation policies are refused.
    let r = api
        .call(
            Method::DELETE,
            &format!("{CMS}/podowner"),
            Some(json!({"propagationPolicy": "Sideways"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    api.call(Method::DELETE, &format!("{CMS}/podowner"), None)
        .await;
    settle(&api).await;
    assert_eq!(
        status_of(&api, &format!("{PODS}/owned")).await,
        StatusCode::NOT_FOUND
    );
}
both_backends!(gc_embedded, gc_etcd, garbage_collection);

async fn namespace_deletion(api: Api) {
    let nsp = "/api/v1/namespaces/doomed";
    api.call(
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "doomed"}})),
    )
    .await;
    api.call(Method::POST, &format!("{nsp}/configmaps"), Some(cm("c")))
        .await;
    let mut bound = pod("bound");
    bound["spec"]["nodeName"] = json!("n1");
    api.call(Method::POST, &format!("{nsp}/pods"), Some(bound))
        .await;
    api.call(Method::POST, &format!("{nsp}/pods"), Some(pod("unbound")))
        .await;
    let r = api.call(Method::DELETE, nsp, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"]["phase"], "Terminating");
    // The bound pod terminates gracefully and holds the namespace.
    let r = api.call(Method::GET, nsp, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"]["phase"], "Terminating");
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(r.body["spec"]["finalizers"], json!(["kubernetes"]));
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io";
    let t = api
        .call_as(Method::GET, "/api/v1/namespaces", "", table, None)
        .await;
    assert!(t.body.to_string().contains("Terminating"), "{}", t.body);
    assert_eq!(
        status_of(&api, &format!("{nsp}/configmaps/c")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(&api, &format!("{nsp}/pods/unbound")).await,
        StatusCode::NOT_FOUND
    );
    let r = api
        .call(Method::GET, &format!("{nsp}/pods/bound"), None)
        .await;
    assert!(
        r.body["metadata"]["deletionTimestamp"].is_string(),
        "{}",
        r.body
    );
    // No new content while terminating.
    let r = api
        .call(Method::POST, &format!("{nsp}/configmaps"), Some(cm("late")))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["reason"], "Forbidden");
    assert!(
        r.body["message"].as_str().unwrap().contains(
            "unable to create new content in namespace doomed because it is being terminated"
        ),
        "{}",
        r.body
    );
    // The agent finishes the pod; the next sweep removes the namespace.
    api.call(
        Method::DELETE,
        &format!("{nsp}/pods/bound"),
        Some(json!({"gracePeriodSeconds": 0})),
    )
    .await;
    settle(&api).await;
    assert_eq!(status_of(&api, nsp).await, StatusCode::NOT_FOUND);
    // The finalize subresource can clear the finalizer by hand.
    api.call(
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "manual"}})),
    )
    .await;
    let mut held = cm("held");
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    api.call(
        Method::POST,
        "/api/v1/namespaces/manual/configmaps",
        Some(held),
    )
    .await;
    api.call(Method::DELETE, "/api/v1/namespaces/manual", None)
        .await;
    let mut ns = api
        .call(Method::GET, "/api/v1/namespaces/manual", None)
        .await
        .body;
    assert_eq!(ns["status"]["phase"], "Terminating");
    ns["spec"]["finalizers"] = json!([]);
    let r = api
        .call(Method::PUT, "/api/v1/namespaces/manual/finalize", Some(ns))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        status_of(&api, "/api/v1/namespaces/manual").await,
        StatusCode::NOT_FOUND
    );
    // A namespace stored without spec.finalizers (by an older server) still takes its
    // contents with it.
    api.store
        .create(
            "/registry/namespaces/legacy",
            Bytes::from(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "legacy",
                    "uid": "00000000-0000-4000-8000-00000000000a"}, "status": {"phase": "Active"}})
                .to_string(),
            ),
        )
        .await
        .unwrap();
    api.call(
        Method::POST,
        "/api/v1/namespaces/legacy/configmaps",
        Some(cm("old")),
    )
    .await;
    let r = api
        .call(Method::DELETE, "/api/v1/namespaces/legacy", None)
        .await;
    assert_eq!(
        r.body["spec"]["finalizers"],
        json!(["kubernetes"]),
        "{}",
        r.body
    );
    assert_eq!(
        status_of(&api, "/api/v1/namespaces/legacy").await,
        StatusCode::NOT_FOUND
    );
    assert!(
        api.store
            .get("/registry/configmaps/legacy/old")
            .await
            .unwrap()
            .is_none()
    );
}
both_backends!(namespace_embedded, namespace_etcd, namespace_deletion);

async fn server_side_apply(api: Api) {
    let apply = |path: String, body: Value| {
        let api = &api;
        async move {
            api.call_as(
                Method::PATCH,
                &path,
                "application/apply-patch+yaml",
                "application/json",
                Some(body),
            )
            .await
        }
    };
    let mut p = pod("ssa");
    p["metadata"]["labels"] = json!({"app": "web", "tier": "fe"});
    let r = apply(
        format!("{PODS}/ssa?fieldManager=kubectl&force=false"),
        p.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["metadata"]["managedFields"][0]["manager"], "kubectl");
    assert_eq!(r.body["metadata"]["managedFields"][0]["operation"], "Apply");
    // Someone else adds a label with an ordinary patch.
    api.call(
        Method::PATCH,
        &format!("{PODS}/ssa"),
        Some(json!({"metadata": {"labels": {"other": "x"}}})),
    )
    .await;
    // Re-apply: a new image, the tier label no longer applied.
    p["metadata"]["labels"] = json!({"app": "web"});
    p["spec"]["containers"][0]["image"] = json!("busybox:1.37");
    let r = apply(format!("{PODS}/ssa?fieldManager=kubectl"), p.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["spec"]["containers"][0]["image"], "busybox:1.37");
    assert_eq!(
        r.body["metadata"]["labels"],
        json!({"app": "web", "other": "x"})
    );
    assert_eq!(r.body["spec"]["restartPolicy"], "Always");
    assert_eq!(r.body["metadata"]["generation"], 2);
    // A second manager's fields merge in.
    let r = apply(
        format!("{PODS}/ssa?fieldManager=other"),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ssa", "annotations": {"note": "hi"}}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["metadata"]["annotations"]["note"], "hi");
    assert_eq!(r.body["spec"]["containers"][0]["image"], "busybox:1.37");
    assert_eq!(
        r.body["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Errors: no field manager, a name mismatch, a body that is not JSON, immutable fields.
    let r = apply(format!("{PODS}/ssa"), p.clone()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body["message"].as_str().unwrap().contains("fieldManager"));
    let r = apply(format!("{PODS}/other?fieldManager=kubectl"), p.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let resp = api
        .raw(
            Method::PATCH,
            &format!("{PODS}/ssa?fieldManager=kubectl"),
            "application/apply-patch+yaml",
            "application/json",
            Some("apiVersion: v1\nkind: Pod\n"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    p["spec"]["restartPolicy"] = json!("Never");
    let r = apply(format!("{PODS}/ssa?fieldManager=kubectl"), p).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    // Apply works for namespaced kinds without a spec, and with fieldValidation=Strict.
    let r = apply(
        format!("{CMS}/applied?fieldManager=m&fieldValidation=Strict"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"k": "v"}, "bogus": 1}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = apply(
        format!("{CMS}/applied?fieldManager=m"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"k": "v", "j": "w"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = apply(
        format!("{CMS}/applied?fieldManager=m"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"k": "v2"}}),
    )
    .await;
    assert_eq!(r.body["data"], json!({"k": "v2"}), "{}", r.body);
}
both_backends!(apply_embedded, apply_etcd, server_side_apply);

/// The collector's work survives a restart: an owner deleted before the server stopped has its
/// dependents collected once a new server runs the collector, and a namespace marked
/// terminating (the server died before emptying it) is finished.
async fn gc_after_restart(mut fx: impl support::Fixture) {
    let store = fx.store().await;
    let api = Api::new(store.clone()).await;
    let owner = api.call(Method::POST, CMS, Some(cm("owner"))).await.body;
    api.call(Method::POST, CMS, Some(owned_by("dep", &owner, false)))
        .await;
    api.call(Method::DELETE, &format!("{CMS}/owner"), None)
        .await;
    assert_eq!(status_of(&api, &format!("{CMS}/dep")).await, StatusCode::OK);
    // A namespace the previous server marked terminating but never emptied.
    api.call(
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "half"}})),
    )
    .await;
    api.call(
        Method::POST,
        "/api/v1/namespaces/half/configmaps",
        Some(cm("left")),
    )
    .await;
    let kv = store
        .get("/registry/namespaces/half")
        .await
        .unwrap()
        .unwrap();
    let mut ns: Value = serde_json::from_slice(&kv.value).unwrap();
    ns["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    ns["status"]["phase"] = json!("Terminating");
    store
        .update(
            "/registry/namespaces/half",
            Bytes::from(ns.to_string()),
            Some(kv.mod_revision),
        )
        .await
        .unwrap();
    drop(api);
    let store = fx.restart(store).await;
    let api = Arc::new(api_support::new_server(store.clone(), TOKEN, NODE_TOKEN));
    let gc = keelson_server::api::gc::spawn(api.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let dep = store.get("/registry/configmaps/default/dep").await.unwrap();
        let ns = store.get("/registry/namespaces/half").await.unwrap();
        let left = store.get("/registry/configmaps/half/left").await.unwrap();
        if dep.is_none() && ns.is_none() && left.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after a restart the collector did not finish: dependent {:?}, namespace {:?}",
            dep.is_some(),
            ns.is_some()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The running collector also reacts to new work.
    let api2 = Api::new(store.clone()).await;
    let owner = api2.call(Method::POST, CMS, Some(cm("owner2"))).await.body;
    api2.call(Method::POST, CMS, Some(owned_by("dep2", &owner, false)))
        .await;
    api2.call(Method::DELETE, &format!("{CMS}/owner2"), None)
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status_of(&api2, &format!("{CMS}/dep2")).await != StatusCode::NOT_FOUND {
        assert!(tokio::time::Instant::now() < deadline, "dep2 not collected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gc.abort();
}

#[tokio::test]
async fn gc_restart_embedded() {
    gc_after_restart(support::EmbeddedFixture::new()).await;
}

#[tokio::test]
async fn gc_restart_etcd() {
    gc_after_restart(support::EtcdFixture::new().await).await;
}

// ---- Reviewer findings: unresolvable owners, pods of missing nodes, pods/binding, apply to
// a subresource of a missing object.

/// A cluster-scoped object (a Namespace, a Node) whose ownerReference names a namespaced kind
/// cannot have that owner resolved: the collector leaves it alone (Kubernetes only warns,
/// `OwnerRefInvalidNamespace`), whether or not an object of that name exists.
async fn cluster_scoped_dependents_of_namespaced_owners(api: Api) {
    let owner = api.call(Method::POST, CMS, Some(cm("cm-owner"))).await.body;
    let refs = json!([{"apiVersion": "v1", "kind": "ConfigMap",
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}]);
    let r = api
        .call(
            Method::POST,
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": "adopted", "ownerReferences": refs}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api
        .call(
            Method::POST,
            "/api/v1/nodes",
            Some(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "adopted-node", "ownerReferences": refs}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    settle(&api).await;
    assert_eq!(
        status_of(&api, "/api/v1/namespaces/adopted").await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&api, "/api/v1/nodes/adopted-node").await,
        StatusCode::OK
    );
    // Nor once the configmap is gone: the reference is kept as it is.
    api.call(Method::DELETE, &format!("{CMS}/cm-owner"), None)
        .await;
    settle(&api).await;
    let ns = api
        .call(Method::GET, "/api/v1/namespaces/adopted", None)
        .await;
    assert_eq!(ns.status, StatusCode::OK);
    assert!(ns.body["metadata"].get("deletionTimestamp").is_none());
    assert_eq!(ns.body["metadata"]["ownerReferences"], refs);
    assert_eq!(
        status_of(&api, "/api/v1/nodes/adopted-node").await,
        StatusCode::OK
    );
}
both_backends!(
    invalid_namespace_owner_embedded,
    invalid_namespace_owner_etcd,
    cluster_scoped_dependents_of_namespaced_owners
);

/// A terminating pod bound to a Node that does not exist is deleted once its grace period is
/// over (Kubernetes' PodGC), so that a namespace holding one finishes deleting; a pod of a
/// Node that exists is left to its agent.
async fn pods_of_missing_nodes_do_not_hold_namespaces(api: Api) {
    let nsp = "/api/v1/namespaces/orphans";
    api.call(
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "orphans"}})),
    )
    .await;
    let on = |name: &str, node: &str| {
        let mut p = pod(name);
        p["spec"]["nodeName"] = json!(node);
        p["spec"]["terminationGracePeriodSeconds"] = json!(1);
        p
    };
    let r = api
        .call(
            Method::POST,
            &format!("{nsp}/pods"),
            Some(on("ghostly", "ghost")),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api
        .call(
            Method::POST,
            "/api/v1/nodes",
            Some(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "real"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    api.call(Method::POST, PODS, Some(on("on-real", "real")))
        .await;
    let r = api
        .call(Method::DELETE, &format!("{PODS}/on-real"), None)
        .await;
    assert!(
        r.body["metadata"]["deletionTimestamp"].is_string(),
        "{}",
        r.body
    );
    let r = api.call(Method::DELETE, nsp, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api
        .call(Method::GET, &format!("{nsp}/pods/ghostly"), None)
        .await;
    assert!(
        r.body["metadata"]["deletionTimestamp"].is_string(),
        "{}",
        r.body
    );
    // Within the grace period nothing is forced.
    settle(&api).await;
    assert_eq!(status_of(&api, nsp).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    settle(&api).await;
    assert_eq!(
        status_of(&api, &format!("{nsp}/pods/ghostly")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(status_of(&api, nsp).await, StatusCode::NOT_FOUND);
    // The pod of the node that exists still waits for its agent.
    let r = api
        .call(Method::GET, &format!("{PODS}/on-real"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body["metadata"]["deletionTimestamp"].is_string(),
        "{}",
        r.body
    );
}
both_backends!(
    missing_node_pods_embedded,
    missing_node_pods_etcd,
    pods_of_missing_nodes_do_not_hold_namespaces
);

/// `pods/binding` honours `dryRun=All` (checks, writes nothing) and a binding's
/// `metadata.uid` (409 when it is not the pod's).
async fn binding_dry_run_and_uid(api: Api) {
    let r = api.call(Method::POST, PODS, Some(pod("to-bind"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let uid = r.body["metadata"]["uid"].as_str().unwrap().to_string();
    let binding = |uid: Option<&str>| {
        let mut b = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "to-bind"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}});
        if let Some(u) = uid {
            b["metadata"]["uid"] = json!(u);
        }
        b
    };
    let path = format!("{PODS}/to-bind/binding");
    let r = api
        .call(
            Method::POST,
            &format!("{path}?dryRun=All"),
            Some(binding(None)),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api
        .call(Method::GET, &format!("{PODS}/to-bind"), None)
        .await;
    assert!(r.body["spec"].get("nodeName").is_none(), "{}", r.body);
    assert!(
        !r.body["status"].to_string().contains("PodScheduled"),
        "{}",
        r.body
    );
    let r = api
        .call(
            Method::POST,
            &format!("{path}?dryRun=Some"),
            Some(binding(None)),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // A dry run still checks: an invalid binding is refused.
    let r = api
        .call(
            Method::POST,
            &format!("{path}?dryRun=All"),
            Some(json!({"target": {}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let r = api
        .call(
            Method::POST,
            &path,
            Some(binding(Some("00000000-0000-4000-8000-000000000000"))),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.body["reason"], "Conflict");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("UID in precondition"),
        "{}",
        r.body
    );
    let r = api
        .call(Method::GET, &format!("{PODS}/to-bind"), None)
        .await;
    assert!(r.body["spec"].get("nodeName").is_none(), "{}", r.body);
    let r = api
        .call(Method::POST, &path, Some(binding(Some(&uid))))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api
        .call(Method::GET, &format!("{PODS}/to-bind"), None)
        .await;
    assert_eq!(r.body["spec"]["nodeName"], "n1");
}
both_backends!(
    binding_dry_run_embedded,
    binding_dry_run_etcd,
    binding_dry_run_and_uid
);

/// Server-side apply to a subresource of a missing object is 404 and creates nothing.
async fn apply_to_status_of_missing_pod(api: Api) {
    let status = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "absent"},
        "status": {"phase": "Running"}});
    let r = api
        .call_as(
            Method::PATCH,
            &format!("{PODS}/absent/status?fieldManager=t"),
            "application/apply-patch+yaml",
            "application/json",
            Some(status),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(r.body["reason"], "NotFound");
    assert_eq!(
        status_of(&api, &format!("{PODS}/absent")).await,
        StatusCode::NOT_FOUND
    );
}
both_backends!(
    apply_missing_status_embedded,
    apply_missing_status_etcd,
    apply_to_status_of_missing_pod
);
