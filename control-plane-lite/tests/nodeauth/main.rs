//! Node authentication and authorization, and the proxy to node agents, below and at HTTP:
//! requests go to `ApiServer::handle` (or, for upgrades, to the HTTPS server) on the embedded
//! store; a stand-in kubelet the test runs (hyper over rustls, client certificates required)
//! answers logs, upgrades and nodes/proxy.

#[path = "../store/support.rs"]
#[allow(dead_code)]
mod support;

#[path = "../support/api.rs"]
#[allow(dead_code)]
mod api_support;

use std::sync::Arc;
use std::time::Duration;

use api_support::{Cred, Reply};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use keelson_server::api::ApiServer;
use keelson_server::api::auth::user_from_cert;
use keelson_server::api::proxy::KubeletClient;
use keelson_server::pki::{self, Pki};
use keelson_server::store::EmbeddedConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify};

const PW1: &str = "password-one-0123456789";
const PW2: &str = "password-two-0123456789";

struct Cluster {
    api: Arc<ApiServer>,
    pki: Pki,
    /// The admin's credentials (the PKI's admin token).
    admin: Cred,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn new() -> Cluster {
        support::init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), "127.0.0.1").unwrap();
        let config = EmbeddedConfig {
            progress_interval: support::TEST_PROGRESS,
            compaction_interval: None,
            ..EmbeddedConfig::default()
        };
        let store = api_support::open_embedded(dir.path().join("store"), config).await;
        let api = api_support::new_server(store, &pki.admin_token, &pki.node_token);
        assert!(api.set_kubelet_client(KubeletClient::from_pki(&pki).unwrap()));
        api.bootstrap().await.unwrap();
        Cluster {
            api: Arc::new(api),
            admin: Cred::Bearer(pki.admin_token.clone()),
            pki,
            _dir: dir,
        }
    }

    fn node(&self, name: &str, password: &str) -> Cred {
        Cred::Bearer(format!("{name}:{password}:{}", self.pki.node_token))
    }

    fn node_cert(&self, name: &str) -> Cred {
        let (cert, _) = pki::issue_node_client_cert(&self.pki, name).unwrap();
        cert_user(&cert)
    }

    async fn raw(
        &self,
        cred: &Cred,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Response<keelson_server::api::Body> {
        let ct = api_support::json_content_type(&method);
        let text = body.map(|b| b.to_string());
        let headers = [("Content-Type", ct)];
        api_support::send(&self.api, cred, method, path, &headers, text.as_deref()).await
    }

    async fn call(&self, cred: &Cred, method: Method, path: &str, body: Option<Value>) -> Reply {
        api_support::read(self.raw(cred, method, path, body).await).await
    }

    /// Sends a request without a body as the admin.
    async fn as_admin(&self, method: Method, path: &str) -> Reply {
        self.call(&self.admin, method, path, None).await
    }

    /// Asserts `status`; returns the body.
    async fn expect(
        &self,
        cred: &Cred,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: StatusCode,
    ) -> Value {
        let r = self.call(cred, method.clone(), path, body).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        r.body
    }

    /// [`Cluster::expect`] for a GET.
    async fn get(&self, cred: &Cred, path: &str, status: StatusCode) -> Value {
        self.expect(cred, Method::GET, path, None, status).await
    }

    /// [`Cluster::expect`] for a DELETE.
    async fn delete(&self, cred: &Cred, path: &str, status: StatusCode) -> Value {
        self.expect(cred, Method::DELETE, path, None, status).await
    }

    /// [`Cluster::expect`] for a POST of `body`.
    async fn post(&self, cred: &Cred, path: &str, body: Value, status: StatusCode) -> Value {
        self.expect(cred, Method::POST, path, Some(body), status)
            .await
    }

    /// [`Cluster::expect`] for a merge patch.
    async fn patch(&self, cred: &Cred, path: &str, body: Value, status: StatusCode) -> Value {
        self.expect(cred, Method::PATCH, path, Some(body), status)
            .await
    }

    /// [`Cluster::expect`] for a PUT of `body`.
    async fn put(&self, cred: &Cred, path: &str, body: Value, status: StatusCode) -> Value {
        self.expect(cred, Method::PUT, path, Some(body), status)
            .await
    }

    /// GETs each path as `cred`, asserting its status.
    async fn get_all(&self, cred: &Cred, cases: &[(&str, StatusCode)]) {
        for (path, status) in cases {
            self.get(cred, path, *status).await;
        }
    }

    async fn admin_create(&self, path: &str, body: Value) {
        self.post(&self.admin, path, body, CREATED).await;
    }

    /// A Node whose agent is at `addr:port` (no address when `addr` is empty).
    async fn node_at(&self, name: &str, addr: &str, port: u16) {
        self.admin_create("/api/v1/nodes", node(name)).await;
        let addresses = if addr.is_empty() {
            json!([])
        } else {
            json!([{"type": "InternalIP", "address": addr}])
        };
        self.patch(
            &self.admin,
            &format!("/api/v1/nodes/{name}/status"),
            json!({"status": {"addresses": addresses, "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}}),
            OK,
        )
        .await;
    }

    async fn pod_on(&self, name: &str, node: &str, extra_spec: Value) {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
        if !node.is_empty() {
            spec["nodeName"] = json!(node);
        }
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        self.admin_create(
            "/api/v1/namespaces/default/pods",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}),
        )
        .await;
    }
}

/// The user of a client certificate (PEM) as TLS would hand it to the server.
fn cert_user(pem: &str) -> Cred {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    Cred::Cert(user_from_cert(der.as_ref()).unwrap())
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

fn forbidden_message(body: &Value) -> String {
    assert_eq!(body["reason"], "Forbidden", "{body}");
    assert_eq!(body["code"], 403);
    body["message"].as_str().unwrap().to_string()
}

const OK: StatusCode = StatusCode::OK;
const CREATED: StatusCode = StatusCode::CREATED;
const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;
const UNAUTHORIZED: StatusCode = StatusCode::UNAUTHORIZED;

#[tokio::test]
async fn anonymous_and_unknown_tokens_get_401() {
    let c = Cluster::new().await;
    let r = c
        .call(&Cred::None, Method::GET, "/api/v1/namespaces", None)
        .await;
    assert_eq!(r.status, UNAUTHORIZED);
    assert_eq!(r.body["reason"], "Unauthorized");
    let wrong = Cred::Bearer(format!("n1:{PW1}:not-the-node-token"));
    c.get(&wrong, "/api/v1/nodes", UNAUTHORIZED).await;
    c.get(&Cred::None, "/healthz", OK).await;
}

#[tokio::test]
async fn node_token_binds_the_name_on_first_use_and_refuses_takeover() {
    let c = Cluster::new().await;
    let n1 = c.node("n1", PW1);
    c.get(&n1, "/api/v1/nodes", OK).await;
    // The password is recorded, hashed, in kube-system.
    let record = "/api/v1/namespaces/kube-system/secrets/n1.node-password.keelson";
    let s = c.get(&c.admin, record, OK).await;
    assert!(!s.to_string().contains(PW1));
    // A second agent with the node token but another password cannot act as n1 ...
    let thief = c.node("n1", PW2);
    c.get(&thief, "/api/v1/nodes", UNAUTHORIZED).await;
    c.post(&thief, "/api/v1/nodes", node("n1"), UNAUTHORIZED)
        .await;
    // ... the first still can, and another name binds its own password.
    c.post(&n1, "/api/v1/nodes", node("n1"), CREATED).await;
    c.get(&c.node("n2", PW2), "/api/v1/nodes", OK).await;
    // Deleting the record (and the Node: a Node without a record is not bound by a token)
    // frees the name.
    c.delete(&c.admin, record, OK).await;
    c.delete(&c.admin, "/api/v1/nodes/n1", OK).await;
    c.get(&thief, "/api/v1/nodes", OK).await;
    c.get(&n1, "/api/v1/nodes", UNAUTHORIZED).await;
    // A node cannot read the password records.
    let r = c
        .get(
            &thief,
            "/api/v1/namespaces/kube-system/secrets/n2.node-password.keelson",
            FORBIDDEN,
        )
        .await;
    forbidden_message(&r);
}

#[tokio::test]
async fn bare_node_token_only_reads_what_nodes_read() {
    let c = Cluster::new().await;
    let boot = Cred::Bearer(c.pki.node_token.clone());
    c.get_all(
        &boot,
        &[
            ("/api/v1/namespaces/default", OK),
            ("/api/v1/nodes", OK),
            ("/api/v1/namespaces/default/configmaps", FORBIDDEN),
        ],
    )
    .await;
    let r = c.post(&boot, "/api/v1/nodes", node("n1"), FORBIDDEN).await;
    assert_eq!(
        forbidden_message(&r),
        r#"nodes is forbidden: User "system:bootstrap:keelson-node" cannot create resource "nodes" in API group "" at the cluster scope"#
    );
}

#[tokio::test]
async fn client_certificate_gives_the_node_identity() {
    let c = Cluster::new().await;
    let n1 = c.node_cert("n1");
    c.post(&n1, "/api/v1/nodes", node("n1"), CREATED).await;
    let r = c.post(&n1, "/api/v1/nodes", node("n2"), FORBIDDEN).await;
    assert!(
        forbidden_message(&r).contains(r#"User "system:node:n1" cannot create resource "nodes""#)
    );
    // Discovery is open to every authenticated user.
    c.get_all(&n1, &[("/api", OK), ("/apis", OK)]).await;
}

#[tokio::test]
async fn node_changes_only_its_own_node() {
    let c = Cluster::new().await;
    let n1 = c.node("n1", PW1);
    c.post(&n1, "/api/v1/nodes", node("n1"), CREATED).await;
    c.admin_create("/api/v1/nodes", node("n2")).await;
    let labels = json!({"metadata": {"labels": {"a": "b"}}});
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}]}});
    c.patch(&n1, "/api/v1/nodes/n1", labels.clone(), OK).await;
    c.patch(&n1, "/api/v1/nodes/n1/status", status.clone(), OK)
        .await;
    c.patch(&n1, "/api/v1/nodes/n2", labels, FORBIDDEN).await;
    let r = c
        .patch(&n1, "/api/v1/nodes/n2/status", status, FORBIDDEN)
        .await;
    assert_eq!(
        forbidden_message(&r),
        r#"nodes "n2" is forbidden: User "system:node:n1" cannot patch resource "nodes/status" in API group "" at the cluster scope: node "n1" may only change its own Node"#
    );
    c.delete(&n1, "/api/v1/nodes/n2", FORBIDDEN).await;
    c.delete(&n1, "/api/v1/nodes", FORBIDDEN).await;
    c.get(&n1, "/api/v1/nodes/n2", OK).await;
    c.delete(&n1, "/api/v1/nodes/n1", OK).await;
}

#[tokio::test]
async fn node_changes_only_its_own_lease() {
    let c = Cluster::new().await;
    let n1 = c.node("n1", PW1);
    let lease = |n: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": n}, "spec": {"holderIdentity": n}});
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let (own, other) = (format!("{leases}/n1"), format!("{leases}/n2"));
    c.post(&n1, leases, lease("n1"), CREATED).await;
    c.post(&n1, leases, lease("n2"), FORBIDDEN).await;
    c.admin_create(leases, lease("n2")).await;
    let renew = json!({"spec": {"renewTime": "2025-01-01T00:00:00.000000Z"}});
    c.get(&n1, &own, OK).await;
    c.patch(&n1, &own, renew.clone(), OK).await;
    let r = c.patch(&n1, &other, renew.clone(), FORBIDDEN).await;
    assert!(forbidden_message(&r).starts_with(
        r#"leases.coordination.k8s.io "n2" is forbidden: User "system:node:n1" cannot patch resource "leases" in API group "coordination.k8s.io" in the namespace "kube-node-lease""#
    ));
    let mut full = c.get(&c.admin, &other, OK).await;
    full["spec"]["holderIdentity"] = json!("n1");
    c.put(&n1, &other, full, FORBIDDEN).await;
    c.delete(&n1, &own, FORBIDDEN).await;
    // Only in kube-node-lease.
    c.post(
        &n1,
        "/apis/coordination.k8s.io/v1/namespaces/default/leases",
        lease("n1"),
        FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn node_changes_status_only_of_its_pods() {
    let c = Cluster::new().await;
    let n1 = c.node("n1", PW1);
    c.pod_on("mine", "n1", json!({})).await;
    c.pod_on("theirs", "n2", json!({})).await;
    c.pod_on("pending", "", json!({})).await;
    let pods = "/api/v1/namespaces/default/pods";
    let st = json!({"status": {"phase": "Running"}});
    let r = c
        .patch(&n1, &format!("{pods}/mine/status"), st.clone(), OK)
        .await;
    assert_eq!(r["status"]["phase"], "Running");
    let r = c
        .patch(&n1, &format!("{pods}/theirs/status"), st.clone(), FORBIDDEN)
        .await;
    assert_eq!(
        forbidden_message(&r),
        r#"pods "theirs" is forbidden: User "system:node:n1" cannot patch resource "pods/status" in API group "" in the namespace "default": node "n1" can only update the status of pods with spec.nodeName set to itself (pod "theirs" is bound to node "n2")"#
    );
    c.patch(
        &n1,
        &format!("{pods}/pending/status"),
        st.clone(),
        FORBIDDEN,
    )
    .await;
    // The pod itself (not its status) is not the node's to change.
    let labels = json!({"metadata": {"labels": {"a": "b"}}});
    c.patch(&n1, &format!("{pods}/mine"), labels, FORBIDDEN)
        .await;
    // PUT status too.
    let mut full = c.get(&n1, &format!("{pods}/theirs"), OK).await;
    full["status"]["phase"] = json!("Failed");
    c.put(&n1, &format!("{pods}/theirs/status"), full, FORBIDDEN)
        .await;
    // Missing pods are 404, not a leak through 403.
    c.patch(
        &n1,
        &format!("{pods}/nope/status"),
        st,
        StatusCode::NOT_FOUND,
    )
    .await;
    // Deleting: only its own pods.
    c.delete(&n1, &format!("{pods}/theirs"), FORBIDDEN).await;
    c.delete(&n1, &format!("{pods}/mine"), OK).await;
    c.delete(&n1, pods, FORBIDDEN).await;
    // Reads of pods are allowed.
    c.get_all(
        &n1,
        &[
            ("/api/v1/pods", OK),
            ("/api/v1/pods?watch=true&timeoutSeconds=1", OK),
        ],
    )
    .await;
}

#[tokio::test]
async fn node_creates_only_mirror_pods_bound_to_itself() {
    let c = Cluster::new().await;
    let n1 = c.node("n1", PW1);
    let pod = |name: &str, node: &str, mirror: bool| {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}});
        if mirror {
            p["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "hash"});
        }
        p
    };
    let pods = "/api/v1/namespaces/default/pods";
    c.post(&n1, pods, pod("m", "n1", true), CREATED).await;
    let r = c.post(&n1, pods, pod("x", "n1", false), FORBIDDEN).await;
    assert!(forbidden_message(&r).contains("may only create mirror pods"));
    c.post(&n1, pods, pod("y", "n2", true), FORBIDDEN).await;
    // Bindings and evictions are not the node's.
    let binding = json!({"target": {"name": "n1"}});
    c.post(&n1, &format!("{pods}/m/binding"), binding, FORBIDDEN)
        .await;
}

#[tokio::test]
async fn node_reads_only_secrets_configmaps_and_service_accounts_its_pods_use() {
    let c = Cluster::new().await;
    let n1 = c.node("n1", PW1);
    for s in ["used", "unused", "elsewhere"] {
        c.admin_create(
            "/api/v1/namespaces/default/secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": s}, "data": {"k": "dg=="}}),
        )
        .await;
    }
    for m in ["env-cm", "other-cm"] {
        c.admin_create(
            "/api/v1/namespaces/default/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": m}}),
        )
        .await;
    }
    c.pod_on(
        "p",
        "n1",
        json!({
            "volumes": [{"name": "v", "secret": {"secretName": "used"}}],
            "containers": [{"name": "c", "image": "busybox", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}}]}],
        }),
    )
    .await;
    c.pod_on(
        "q",
        "n2",
        json!({"volumes": [{"name": "v", "secret": {"secretName": "elsewhere"}}]}),
    )
    .await;
    let secrets = "/api/v1/namespaces/default/secrets";
    c.get(&n1, &format!("{secrets}/used"), OK).await;
    let r = c.get(&n1, &format!("{secrets}/unused"), FORBIDDEN).await;
    assert_eq!(
        forbidden_message(&r),
        r#"secrets "unused" is forbidden: User "system:node:n1" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node "n1" and this object"#
    );
    c.get(&n1, &format!("{secrets}/elsewhere"), FORBIDDEN).await;
    // Lists and watches of secrets: only one referenced object by name.
    c.get_all(
        &n1,
        &[
            (secrets, FORBIDDEN),
            ("/api/v1/secrets", FORBIDDEN),
            (&format!("{secrets}?watch=true"), FORBIDDEN),
        ],
    )
    .await;
    let r = c
        .get(
            &n1,
            &format!("{secrets}?fieldSelector=metadata.name%3Dused"),
            OK,
        )
        .await;
    assert_eq!(r["items"].as_array().unwrap().len(), 1);
    // ConfigMaps and service accounts likewise.
    let cms = "/api/v1/namespaces/default/configmaps";
    c.get_all(
        &n1,
        &[
            (
                &format!("{secrets}?fieldSelector=metadata.name%3Dunused"),
                FORBIDDEN,
            ),
            (&format!("{cms}/env-cm"), OK),
            (&format!("{cms}/other-cm"), FORBIDDEN),
            (
                "/api/v1/namespaces/default/serviceaccounts/robot",
                FORBIDDEN,
            ),
        ],
    )
    .await;
    // Writes of them never.
    c.delete(&n1, &format!("{secrets}/used"), FORBIDDEN).await;
    c.post(
        &n1,
        cms,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new"}}),
        FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn node_reads_cluster_state_and_writes_events() {
    let c = Cluster::new().await;
    let n1 = c.node("n1", PW1);
    for path in [
        "/api/v1/namespaces",
        "/api/v1/namespaces/default",
        "/api/v1/nodes",
        "/api/v1/namespaces/default/pods",
        "/api/v1/events",
        "/apis/coordination.k8s.io/v1/leases",
    ] {
        c.get(&n1, path, OK).await;
    }
    c.post(
        &n1,
        "/api/v1/namespaces/default/events",
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1"}, "involvedObject": {"kind": "Node", "name": "n1"}, "reason": "Started", "message": "m"}),
        CREATED,
    )
    .await;
    c.post(
        &n1,
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
        FORBIDDEN,
    )
    .await;
    c.delete(&n1, "/api/v1/namespaces/default", FORBIDDEN).await;
}

#[tokio::test]
async fn other_certificate_users_only_read_and_not_secrets() {
    let c = Cluster::new().await;
    let user = |name: &str, group: &str| {
        let (cert, _) = pki::issue(
            &c.pki.ca_cert_pem,
            &c.pki.ca_key_pem,
            name,
            &[group],
            &[],
            true,
        )
        .unwrap();
        cert_user(&cert)
    };
    let jane = user("jane", "devs");
    c.get_all(
        &jane,
        &[
            ("/api/v1/namespaces/default", OK),
            ("/api/v1/namespaces/default/configmaps", OK),
            ("/api/v1/namespaces/default/secrets", FORBIDDEN),
        ],
    )
    .await;
    c.post(
        &jane,
        "/api/v1/namespaces/default/configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
        FORBIDDEN,
    )
    .await;
    c.get(&jane, "/api/v1/nodes/n1/proxy/healthz", FORBIDDEN)
        .await;
    // A certificate in system:masters may do everything.
    let root = user("root", "system:masters");
    c.get(&root, "/api/v1/namespaces/default/secrets", OK).await;
}

// ---- the proxy, against a stand-in kubelet -------------------------------------------------

/// What the stand-in kubelet saw and how it is driven.
#[derive(Default)]
struct Kubelet {
    /// Path and query of each request, and the client certificate's CN.
    seen: Mutex<Vec<(String, String)>>,
    /// Lets a followed log go on after its first line.
    more: Notify,
}

type KBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn kubelet_handle(
    k: Arc<Kubelet>,
    cn: String,
    mut req: Request<Incoming>,
) -> Response<KBody> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    k.seen.lock().await.push((pq.clone(), cn));
    let path = req.uri().path().to_string();
    let upgrade = req.headers().contains_key("upgrade");
    if upgrade {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let io = on.await.expect("upgraded");
            let mut io = TokioIo::new(io);
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let proto = req
            .headers()
            .get("x-stream-protocol-version")
            .cloned()
            .unwrap_or(hyper::header::HeaderValue::from_static("none"));
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("Connection", "Upgrade")
            .header("Upgrade", "SPDY/3.1")
            .header("X-Stream-Protocol-Version", proto)
            .body(Empty::new().boxed())
            .unwrap();
    }
    if path.starts_with("/containerLogs/") && pq.contains("follow=true") {
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
        >(4);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(hyper::body::Frame::data(Bytes::from("line 1\n"))))
                .await;
            k.more.notified().await;
            let _ = tx
                .send(Ok(hyper::body::Frame::data(Bytes::from("line 2\n"))))
                .await;
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        return Response::builder()
            .header("Content-Type", "text/plain")
            .body(http_body_util::StreamBody::new(stream).boxed())
            .unwrap();
    }
    if path.starts_with("/containerLogs/") {
        return Response::new(Full::new(Bytes::from("hello from the log\n")).boxed());
    }
    Response::builder()
        .status(StatusCode::IM_A_TEAPOT)
        .body(Full::new(Bytes::from(format!("kubelet saw {pq}"))).boxed())
        .unwrap()
}

/// Starts a stand-in kubelet serving `cert`/`key`, requiring client certificates from
/// `pki`'s CA. Returns its port.
async fn start_kubelet(pki: &Pki, cert: &str, key: &str) -> (u16, Arc<Kubelet>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_cert_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let k = Arc::new(Kubelet::default());
    let kk = k.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let k = kk.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cn = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| user_from_cert(c.as_ref()))
                    .map(|u| u.name)
                    .unwrap_or_default();
                let svc = service_fn(move |req| {
                    let k = k.clone();
                    let cn = cn.clone();
                    async move { Ok::<_, std::convert::Infallible>(kubelet_handle(k, cn, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (port, k)
}

async fn ca_signed_kubelet(pki: &Pki) -> (u16, Arc<Kubelet>) {
    let (cert, key) = pki::issue(
        &pki.ca_cert_pem,
        &pki.ca_key_pem,
        "n1",
        &[],
        &["127.0.0.1".into()],
        false,
    )
    .unwrap();
    start_kubelet(pki, &cert, &key).await
}

const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test]
async fn logs_are_proxied_with_their_query_and_follow_streams() {
    let c = Cluster::new().await;
    let (port, k) = ca_signed_kubelet(&c.pki).await;
    c.node_at("n1", "127.0.0.1", port).await;
    c.pod_on("p", "n1", json!({})).await;
    let r = c
        .as_admin(
            Method::GET,
            &format!("{PODS}/p/log?tailLines=5&timestamps=true"),
        )
        .await;
    assert_eq!(r.status, OK, "{}", r.body);
    assert_eq!(r.body, "hello from the log\n");
    {
        let seen = k.seen.lock().await;
        assert_eq!(
            seen[0],
            (
                "/containerLogs/default/p/c?tailLines=5&timestamps=true".to_string(),
                "keelson-apiserver-kubelet-client".to_string()
            )
        );
    }
    // follow: the first line arrives before the kubelet writes the second.
    let resp = c
        .raw(
            &c.admin,
            Method::GET,
            &format!("{PODS}/p/log?follow=true&container=c"),
            None,
        )
        .await;
    assert_eq!(resp.status(), OK);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first line streams")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "line 1\n");
    k.more.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "line 2\n");
    // Nodes may not read logs.
    let n1 = c.node_cert("n1");
    c.expect(&n1, Method::GET, &format!("{PODS}/p/log"), None, FORBIDDEN)
        .await;
}

#[tokio::test]
async fn self_signed_agents_are_accepted_and_nodes_proxy_forwards() {
    let c = Cluster::new().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "n1-self-signed");
    let cert = params.self_signed(&key).unwrap();
    let (port, k) = start_kubelet(&c.pki, &cert.pem(), &key.serialize_pem()).await;
    c.node_at("n1", "127.0.0.1", port).await;
    let r = c
        .as_admin(Method::GET, "/api/v1/nodes/n1/proxy/configz?x=1&y=2")
        .await;
    assert_eq!(r.status, StatusCode::IM_A_TEAPOT, "{}", r.body);
    assert_eq!(r.body, "kubelet saw /configz?x=1&y=2");
    let r = c
        .as_admin(Method::GET, &format!("/api/v1/nodes/n1:{port}/proxy/"))
        .await;
    assert_eq!(r.body, "kubelet saw /");
    assert_eq!(k.seen.lock().await.len(), 2);
    // Not for nodes.
    let n1 = c.node_cert("n1");
    let r = c
        .expect(
            &n1,
            Method::GET,
            "/api/v1/nodes/n1/proxy/configz",
            None,
            FORBIDDEN,
        )
        .await;
    assert!(forbidden_message(&r).contains(r#"cannot get resource "nodes/proxy""#));
}

#[tokio::test]
async fn unreachable_agents_and_unbound_pods_fail_clearly() {
    let c = Cluster::new().await;
    // Not bound.
    c.pod_on("pending", "", json!({})).await;
    let r = c
        .as_admin(Method::GET, &format!("{PODS}/pending/log"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body["message"],
        "pod pending does not have a host assigned"
    );
    // Bound to a node that does not exist.
    c.pod_on("ghost", "n9", json!({})).await;
    let r = c.as_admin(Method::GET, &format!("{PODS}/ghost/log")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.body["message"],
        r#"node "n9" is not registered: its agent cannot be reached"#
    );
    // A node without an address.
    c.node_at("bare", "", 10250).await;
    c.pod_on("b", "bare", json!({})).await;
    let r = c
        .as_admin(Method::POST, &format!("{PODS}/b/exec?command=ls"))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.body["message"],
        r#"node "bare" reports no address for its agent (status.addresses is empty)"#
    );
    // Nothing listens.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    c.node_at("n1", "127.0.0.1", port).await;
    c.pod_on("p", "n1", json!({})).await;
    let r = c.as_admin(Method::GET, &format!("{PODS}/p/log")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["reason"], "ServiceUnavailable");
    assert_eq!(
        r.body["message"],
        format!(
            r#"the agent of node "n1" at 127.0.0.1:{port} cannot be reached: connection refused"#
        )
    );
    // Several containers and none named.
    c.pod_on(
        "two",
        "n1",
        json!({"containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]}),
    )
    .await;
    let r = c.as_admin(Method::GET, &format!("{PODS}/two/log")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body["message"],
        "a container name must be specified for pod two, choose one of: [a b]"
    );
}

#[tokio::test]
async fn a_silent_agent_times_out_within_five_seconds() {
    let c = Cluster::new().await;
    // Accepts TCP (the kernel's backlog) but never speaks TLS.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    c.node_at("n1", "127.0.0.1", port).await;
    c.pod_on("p", "n1", json!({})).await;
    let started = std::time::Instant::now();
    let r = c.as_admin(Method::GET, &format!("{PODS}/p/log")).await;
    assert!(started.elapsed() < Duration::from_secs(7));
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.body["message"],
        format!(
            r#"the agent of node "n1" at 127.0.0.1:{port} cannot be reached: no connection within 5s"#
        )
    );
    drop(silent);
}

/// An HTTPS client of the real server (TLS, hyper), trusting its CA.
async fn https_client(
    pki: &Pki,
    port: u16,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_cert_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// A request to upgrade the connection to `upgrade`, with bearer `token` and an `extra` header.
fn upgrade_request(
    method: Method,
    uri: String,
    token: &str,
    upgrade: &str,
    extra: Option<(&str, &str)>,
) -> Request<Empty<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("Authorization", format!("Bearer {token}"))
        .header("Connection", "Upgrade")
        .header("Upgrade", upgrade);
    if let Some((k, v)) = extra {
        req = req.header(k, v);
    }
    req.body(Empty::new()).unwrap()
}

#[tokio::test]
async fn exec_upgrades_and_passes_bytes_both_ways() {
    let c = Cluster::new().await;
    let (kport, k) = ca_signed_kubelet(&c.pki).await;
    // The agent's token binds its name before its Node exists.
    c.get(&c.node("n1", PW1), "/api/v1/nodes", OK).await;
    c.node_at("n1", "127.0.0.1", kport).await;
    c.pod_on("p", "n1", json!({})).await;
    let listener = keelson_server::server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = keelson_server::server::tls_config(&c.pki).unwrap();
    tokio::spawn(keelson_server::server::serve(
        listener,
        tls,
        c.api.clone(),
        std::future::pending(),
    ));
    let mut client = https_client(&c.pki, port).await;
    let req = upgrade_request(
        Method::POST,
        format!(
            "{PODS}/p/exec?command=cat&command=-&stdin=true&stdout=true&stderr=true&tty=false&container=c"
        ),
        &c.pki.admin_token,
        "SPDY/3.1",
        Some(("X-Stream-Protocol-Version", "v4.channel.k8s.io")),
    );
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        resp.headers()["x-stream-protocol-version"],
        "v4.channel.k8s.io"
    );
    let io = hyper::upgrade::on(resp).await.unwrap();
    let mut io = TokioIo::new(io);
    for msg in [&b"ping"[..], b"pong and more bytes"] {
        io.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg);
    }
    assert_eq!(
        k.seen.lock().await[0].0,
        "/exec/default/p/c?command=cat&command=-&input=1&output=1&error=1"
    );
    // A WebSocket-style attach with GET goes the same way.
    let mut client = https_client(&c.pki, port).await;
    let req = upgrade_request(
        Method::GET,
        format!("{PODS}/p/attach?stdout=true"),
        &c.pki.admin_token,
        "websocket",
        Some(("Sec-WebSocket-Protocol", "v5.channel.k8s.io")),
    );
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(k.seen.lock().await[1].0, "/attach/default/p/c?output=1");
    // The node's own credentials cannot exec.
    let mut client = https_client(&c.pki, port).await;
    let req = upgrade_request(
        Method::POST,
        format!("{PODS}/p/exec?command=ls"),
        &format!("n1:{PW1}:{}", c.pki.node_token),
        "SPDY/3.1",
        None,
    );
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), FORBIDDEN);
}

// ---- mirror pods, unrecorded node names, pod log methods, first-use rate limit -------------

#[tokio::test]
async fn mirror_pods_may_not_reference_secrets_and_do_not_grant_reads() {
    let c = Cluster::new().await;
    let n1 = c.node("n1", PW1);
    c.post(&n1, "/api/v1/nodes", node("n1"), CREATED).await;
    let uid = c.get(&c.admin, "/api/v1/nodes/n1", OK).await["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    for s in ["s1", "only-mirror", "used"] {
        c.admin_create(
            "/api/v1/namespaces/default/secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": s}, "data": {"k": "dg=="}}),
        )
        .await;
    }
    let mirror = |name: &str, extra_spec: Value| {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {"kubernetes.io/config.mirror": "hash"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}});
        if let (Some(s), Some(e)) = (p["spec"].as_object_mut(), extra_spec.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        p
    };
    let pods = "/api/v1/namespaces/default/pods";
    let r = c
        .post(
            &n1,
            pods,
            mirror(
                "with-secret",
                json!({"volumes": [{"name": "v", "secret": {"secretName": "s1"}}]}),
            ),
            FORBIDDEN,
        )
        .await;
    assert!(
        forbidden_message(&r)
            .ends_with(r#": node "n1" cannot create a mirror pod that references secrets ["s1"]"#),
        "{r}"
    );
    let r = c
        .post(
            &n1,
            pods,
            mirror("with-sa", json!({"serviceAccountName": "robot"})),
            FORBIDDEN,
        )
        .await;
    assert!(forbidden_message(&r).ends_with(r#"references service account "robot""#));
    let r = c
        .post(
            &n1,
            pods,
            mirror(
                "with-pvc",
                json!({"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]}),
            ),
            FORBIDDEN,
        )
        .await;
    assert!(forbidden_message(&r).contains(r#"references persistentvolumeclaim "data""#));
    // Without references it is created; an owner reference must be its own Node, uid and all.
    c.post(&n1, pods, mirror("plain", json!({})), CREATED).await;
    let owned = |name: &str, owner_name: &str, owner_uid: &str| {
        let mut p = mirror(name, json!({}));
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node",
            "name": owner_name, "uid": owner_uid, "controller": true}]);
        p
    };
    c.post(&n1, pods, owned("owned", "n1", &uid), CREATED).await;
    let r = c
        .post(
            &n1,
            pods,
            owned("wrong-uid", "n1", "not-the-uid"),
            FORBIDDEN,
        )
        .await;
    assert!(forbidden_message(&r).contains("owner reference has uid"));
    c.post(&n1, pods, owned("other-node", "n2", &uid), FORBIDDEN)
        .await;
    // A mirror pod the admin made with a secret does not let the node read it; a regular pod
    // bound to the node does.
    c.admin_create(
        pods,
        mirror(
            "admin-mirror",
            json!({"volumes": [{"name": "v", "secret": {"secretName": "only-mirror"}}]}),
        ),
    )
    .await;
    let secrets = "/api/v1/namespaces/default/secrets";
    let r = c
        .get(&n1, &format!("{secrets}/only-mirror"), FORBIDDEN)
        .await;
    assert!(
        forbidden_message(&r)
            .ends_with("no relationship found between node \"n1\" and this object")
    );
    // Nor the service account "default" a pod without one implies.
    c.get(
        &n1,
        "/api/v1/namespaces/default/serviceaccounts/default",
        FORBIDDEN,
    )
    .await;
    c.pod_on(
        "regular",
        "n1",
        json!({"volumes": [{"name": "v", "secret": {"secretName": "used"}}]}),
    )
    .await;
    c.get(&n1, &format!("{secrets}/used"), OK).await;
    c.get(&n1, &format!("{secrets}/s1"), FORBIDDEN).await;
    c.get(&n1, &format!("{secrets}/only-mirror"), FORBIDDEN)
        .await;
}

#[tokio::test]
async fn node_token_cannot_take_over_a_node_without_a_password_record() {
    let c = Cluster::new().await;
    // n1 registered with its client certificate: there is no password record for it.
    let cert = c.node_cert("n1");
    c.post(&cert, "/api/v1/nodes", node("n1"), CREATED).await;
    let intruder = c.node("n1", PW2);
    let r = c.get(&intruder, "/api/v1/nodes", UNAUTHORIZED).await;
    assert_eq!(r["reason"], "Unauthorized");
    c.post(&intruder, "/api/v1/nodes", node("n1"), UNAUTHORIZED)
        .await;
    let record = "/api/v1/namespaces/kube-system/secrets/n1.node-password.keelson";
    c.get(&c.admin, record, StatusCode::NOT_FOUND).await;
    // A Node the admin made is not free either.
    c.admin_create("/api/v1/nodes", node("n3")).await;
    c.get(&c.node("n3", PW1), "/api/v1/nodes", UNAUTHORIZED)
        .await;
    // A brand-new name binds.
    let n2 = c.node("n2", PW1);
    c.get(&n2, "/api/v1/nodes", OK).await;
    c.get(
        &c.admin,
        "/api/v1/namespaces/kube-system/secrets/n2.node-password.keelson",
        OK,
    )
    .await;
    c.post(&n2, "/api/v1/nodes", node("n2"), CREATED).await;
    c.get(&n2, "/api/v1/nodes/n2", OK).await;
    // The certificate still works; deleting the Node frees the name for the node token.
    c.get(&cert, "/api/v1/nodes/n1", OK).await;
    c.delete(&c.admin, "/api/v1/nodes/n1", OK).await;
    c.get(&intruder, "/api/v1/nodes", OK).await;
    c.get(&c.admin, record, OK).await;
}

#[tokio::test]
async fn pod_logs_are_read_with_get_only() {
    let c = Cluster::new().await;
    c.pod_on("p", "n1", json!({})).await;
    let (cert, _) = pki::issue(
        &c.pki.ca_cert_pem,
        &c.pki.ca_key_pem,
        "jane",
        &["devs"],
        &[],
        true,
    )
    .unwrap();
    let jane = cert_user(&cert);
    let n1 = c.node("n1", PW1);
    let log = format!("{PODS}/p/log");
    for (method, verb) in [
        (Method::POST, "create"),
        (Method::PUT, "update"),
        (Method::PATCH, "patch"),
        (Method::DELETE, "delete"),
    ] {
        for who in [&jane, &n1] {
            let r = c
                .expect(who, method.clone(), &log, Some(json!({})), FORBIDDEN)
                .await;
            assert!(
                forbidden_message(&r).contains(&format!(r#"cannot {verb} resource "pods/log""#)),
                "{r}"
            );
        }
    }
    // GET stays a read for viewers: authorized, then it fails only because n1 has no agent.
    let r = c.call(&jane, Method::GET, &log, None).await;
    assert_ne!(r.status, FORBIDDEN, "{}", r.body);
}

#[tokio::test]
async fn node_token_binds_a_bounded_number_of_new_names_a_minute() {
    use keelson_server::api::auth::NEW_NODE_NAMES_PER_MINUTE;
    let c = Cluster::new().await;
    for i in 0..NEW_NODE_NAMES_PER_MINUTE {
        c.get(&c.node(&format!("n{i}"), PW1), "/api/v1/nodes", OK)
            .await;
    }
    let r = c
        .get(
            &c.node("one-too-many", PW1),
            "/api/v1/nodes",
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("in the last minute: retry registering node \"one-too-many\" later"),
        "{r}"
    );
    c.get(
        &c.admin,
        "/api/v1/namespaces/kube-system/secrets/one-too-many.node-password.keelson",
        StatusCode::NOT_FOUND,
    )
    .await;
    // Names already bound keep working.
    c.get(&c.node("n0", PW1), "/api/v1/nodes", OK).await;
    c.get(&c.node("n0", PW2), "/api/v1/nodes", UNAUTHORIZED)
        .await;
}
