//! Node authentication and authorization, and the proxy to node agents, below and at HTTP:
//! requests go to `ApiServer::handle` (or, for upgrades, to the HTTPS server) on the embedded
//! store; a stand-in kubelet the test runs (hyper over rustls, client certificates required)
//! answers logs, upgrades and nodes/proxy.

#[path = "../store/support.rs"]
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use keelson_server::api::ApiServer;
use keelson_server::api::auth::{Tokens, User, user_from_cert};
use keelson_server::api::proxy::KubeletClient;
use keelson_server::pki::{self, Pki};
use keelson_server::store::{EmbeddedConfig, EmbeddedStore, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify};

const PW1: &str = "password-one-0123456789";
const PW2: &str = "password-two-0123456789";

/// Who a request comes as.
#[derive(Clone)]
enum Cred {
    None,
    Admin,
    Bearer(String),
    Cert(User),
}

struct Cluster {
    api: Arc<ApiServer>,
    pki: Pki,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    body: Value,
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
        let path = dir.path().join("store");
        let store: Arc<dyn Store> = Arc::new(
            tokio::task::spawn_blocking(move || EmbeddedStore::open(&path, config))
                .await
                .unwrap()
                .unwrap(),
        );
        let api = ApiServer::new(
            store,
            Tokens {
                admin: pki.admin_token.clone(),
                node: pki.node_token.clone(),
            },
            "127.0.0.1:6443".into(),
        );
        assert!(api.set_kubelet_client(KubeletClient::from_pki(&pki).unwrap()));
        api.bootstrap().await.unwrap();
        Cluster {
            api: Arc::new(api),
            pki,
            _dir: dir,
        }
    }

    fn node(&self, name: &str, password: &str) -> Cred {
        Cred::Bearer(format!("{name}:{password}:{}", self.pki.node_token))
    }

    fn node_cert(&self, name: &str) -> Cred {
        let (cert, _) = pki::issue_node_client_cert(&self.pki, name).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        Cred::Cert(user_from_cert(der.as_ref()).unwrap())
    }

    async fn raw(
        &self,
        cred: &Cred,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Response<keelson_server::api::Body> {
        let ct = if method == Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("Content-Type", ct);
        let mut cert = None;
        match cred {
            Cred::None => {}
            Cred::Admin => {
                req = req.header("Authorization", format!("Bearer {}", self.pki.admin_token))
            }
            Cred::Bearer(t) => req = req.header("Authorization", format!("Bearer {t}")),
            Cred::Cert(u) => cert = Some(u.clone()),
        }
        let body = Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()));
        self.api.handle(req.body(body).unwrap(), cert).await
    }

    async fn call(&self, cred: &Cred, method: Method, path: &str, body: Option<Value>) -> Reply {
        let resp = self.raw(cred, method, path, body).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply { status, body }
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

    async fn admin_create(&self, path: &str, body: Value) {
        self.expect(
            &Cred::Admin,
            Method::POST,
            path,
            Some(body),
            StatusCode::CREATED,
        )
        .await;
    }

    /// A Node whose agent is at `addr:port` (no address when `addr` is empty).
    async fn node_at(&self, name: &str, addr: &str, port: u16) {
        self.admin_create(
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
        )
        .await;
        let addresses = if addr.is_empty() {
            json!([])
        } else {
            json!([{"type": "InternalIP", "address": addr}])
        };
        self.expect(
            &Cred::Admin,
            Method::PATCH,
            &format!("/api/v1/nodes/{name}/status"),
            Some(json!({"status": {"addresses": addresses, "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}})),
            StatusCode::OK,
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
    c.expect(&wrong, Method::GET, "/api/v1/nodes", None, UNAUTHORIZED)
        .await;
    c.expect(&Cred::None, Method::GET, "/healthz", None, OK)
        .await;
}

#[tokio::test]
async fn node_token_binds_the_name_on_first_use_and_refuses_takeover() {
    let c = Cluster::new().await;
    let n1 = c.node("n1", PW1);
    c.expect(&n1, Method::GET, "/api/v1/nodes", None, OK).await;
    // The password is recorded, hashed, in kube-system.
    let s = c
        .expect(
            &Cred::Admin,
            Method::GET,
            "/api/v1/namespaces/kube-system/secrets/n1.node-password.keelson",
            None,
            OK,
        )
        .await;
    assert!(!s.to_string().contains(PW1));
    // A second agent with the node token but another password cannot act as n1 ...
    let thief = c.node("n1", PW2);
    c.expect(&thief, Method::GET, "/api/v1/nodes", None, UNAUTHORIZED)
        .await;
    let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}});
    c.expect(
        &thief,
        Method::POST,
        "/api/v1/nodes",
        Some(body.clone()),
        UNAUTHORIZED,
    )
    .await;
    // ... the first still can, and another name binds its own password.
    c.expect(&n1, Method::POST, "/api/v1/nodes", Some(body), CREATED)
        .await;
    c.expect(&c.node("n2", PW2), Method::GET, "/api/v1/nodes", None, OK)
        .await;
    // Deleting the record frees the name.
    c.expect(
        &Cred::Admin,
        Method::DELETE,
        "/api/v1/namespaces/kube-system/secrets/n1.node-password.keelson",
        None,
        OK,
    )
    .await;
    c.expect(&thief, Method::GET, "/api/v1/nodes", None, OK)
        .await;
    c.expect(&n1, Method::GET, "/api/v1/nodes", None, UNAUTHORIZED)
        .await;
    // A node cannot read the password records.
    let r = c
        .expect(
            &thief,
            Method::GET,
            "/api/v1/namespaces/kube-system/secrets/n2.node-password.keelson",
            None,
            FORBIDDEN,
        )
        .await;
    forbidden_message(&r);
}

#[tokio::test]
async fn bare_node_token_only_reads_what_nodes_read() {
    let c = Cluster::new().await;
    let boot = Cred::Bearer(c.pki.node_token.clone());
    c.expect(&boot, Method::GET, "/api/v1/namespaces/default", None, OK)
        .await;
    c.expect(&boot, Method::GET, "/api/v1/nodes", None, OK)
        .await;
    c.expect(
        &boot,
        Method::GET,
        "/api/v1/namespaces/default/configmaps",
        None,
        FORBIDDEN,
    )
    .await;
    let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}});
    let r = c
        .expect(&boot, Method::POST, "/api/v1/nodes", Some(body), FORBIDDEN)
        .await;
    assert_eq!(
        forbidden_message(&r),
        r#"nodes is forbidden: User "system:bootstrap:keelson-node" cannot create resource "nodes" in API group "" at the cluster scope"#
    );
}

#[tokio::test]
async fn client_certificate_gives_the_node_identity() {
    let c = Cluster::new().await;
    let n1 = c.node_cert("n1");
    let body = |n: &str| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}});
    c.expect(
        &n1,
        Method::POST,
        "/api/v1/nodes",
        Some(body("n1")),
        CREATED,
    )
    .await;
    let r = c
        .expect(
            &n1,
            Method::POST,
            "/api/v1/nodes",
            Some(body("n2")),
            FORBIDDEN,
        )
        .await;
    assert!(
        forbidden_message(&r).contains(r#"User "system:node:n1" cannot create resource "nodes""#)
    );
    // Discovery is open to every authenticated user.
    c.expect(&n1, Method::GET, "/api", None, OK).await;
    c.expect(&n1, Method::GET, "/apis", None, OK).await;
}

#[tokio::test]
async fn node_changes_only_its_own_node() {
    let c = Cluster::new().await;
    let n1 = c.node("n1", PW1);
    let node = |n: &str| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}});
    c.expect(
        &n1,
        Method::POST,
        "/api/v1/nodes",
        Some(node("n1")),
        CREATED,
    )
    .await;
    c.admin_create("/api/v1/nodes", node("n2")).await;
    let labels = json!({"metadata": {"labels": {"a": "b"}}});
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}]}});
    c.expect(
        &n1,
        Method::PATCH,
        "/api/v1/nodes/n1",
        Some(labels.clone()),
        OK,
    )
    .await;
    c.expect(
        &n1,
        Method::PATCH,
        "/api/v1/nodes/n1/status",
        Some(status.clone()),
        OK,
    )
    .await;
    c.expect(
        &n1,
        Method::PATCH,
        "/api/v1/nodes/n2",
        Some(labels),
        FORBIDDEN,
    )
    .await;
    let r = c
        .expect(
            &n1,
            Method::PATCH,
            "/api/v1/nodes/n2/status",
            Some(status),
            FORBIDDEN,
        )
        .await;
    assert_eq!(
        forbidden_message(&r),
        r#"nodes "n2" is forbidden: User "system:node:n1" cannot patch resource "nodes/status" in API group "" at the cluster scope: node "n1" may only change its own Node"#
    );
    c.expect(&n1, Method::DELETE, "/api/v1/nodes/n2", None, FORBIDDEN)
        .await;
    c.expect(&n1, Method::DELETE, "/api/v1/nodes", None, FORBIDDEN)
        .await;
    c.expect(&n1, Method::GET, "/api/v1/nodes/n2", None, OK)
        .await;
    c.expect(&n1, Method::DELETE, "/api/v1/nodes/n1", None, OK)
        .await;
}

#[tokio::test]
async fn node_changes_only_its_own_lease() {
    let c = Cluster::new().await;
    let n1 = c.node("n1", PW1);
    let lease = |n: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": n}, "spec": {"holderIdentity": n}});
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    c.expect(&n1, Method::POST, leases, Some(lease("n1")), CREATED)
        .await;
    c.expect(&n1, Method::POST, leases, Some(lease("n2")), FORBIDDEN)
        .await;
    c.admin_create(leases, lease("n2")).await;
    let renew = json!({"spec": {"renewTime": "2025-01-01T00:00:00.000000Z"}});
    c.expect(&n1, Method::GET, &format!("{leases}/n1"), None, OK)
        .await;
    c.expect(
        &n1,
        Method::PATCH,
        &format!("{leases}/n1"),
        Some(renew.clone()),
        OK,
    )
    .await;
    let r = c
        .expect(
            &n1,
            Method::PATCH,
            &format!("{leases}/n2"),
            Some(renew.clone()),
            FORBIDDEN,
        )
        .await;
    assert!(forbidden_message(&r).starts_with(
        r#"leases.coordination.k8s.io "n2" is forbidden: User "system:node:n1" cannot patch resource "leases" in API group "coordination.k8s.io" in the namespace "kube-node-lease""#
    ));
    let mut full = c
        .expect(&Cred::Admin, Method::GET, &format!("{leases}/n2"), None, OK)
        .await;
    full["spec"]["holderIdentity"] = json!("n1");
    c.expect(
        &n1,
        Method::PUT,
        &format!("{leases}/n2"),
        Some(full),
        FORBIDDEN,
    )
    .await;
    c.expect(
        &n1,
        Method::DELETE,
        &format!("{leases}/n1"),
        None,
        FORBIDDEN,
    )
    .await;
    // Only in kube-node-lease.
    c.expect(
        &n1,
        Method::POST,
        "/apis/coordination.k8s.io/v1/namespaces/default/leases",
        Some(lease("n1")),
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
        .expect(
            &n1,
            Method::PATCH,
            &format!("{pods}/mine/status"),
            Some(st.clone()),
            OK,
        )
        .await;
    assert_eq!(r["status"]["phase"], "Running");
    let r = c
        .expect(
            &n1,
            Method::PATCH,
            &format!("{pods}/theirs/status"),
            Some(st.clone()),
            FORBIDDEN,
        )
        .await;
    assert_eq!(
        forbidden_message(&r),
        r#"pods "theirs" is forbidden: User "system:node:n1" cannot patch resource "pods/status" in API group "" in the namespace "default": node "n1" can only update the status of pods with spec.nodeName set to itself (pod "theirs" is bound to node "n2")"#
    );
    c.expect(
        &n1,
        Method::PATCH,
        &format!("{pods}/pending/status"),
        Some(st.clone()),
        FORBIDDEN,
    )
    .await;
    // The pod itself (not its status) is not the node's to change.
    c.expect(
        &n1,
        Method::PATCH,
        &format!("{pods}/mine"),
        Some(json!({"metadata": {"labels": {"a": "b"}}})),
        FORBIDDEN,
    )
    .await;
    // PUT status too.
    let mut full = c
        .expect(&n1, Method::GET, &format!("{pods}/theirs"), None, OK)
        .await;
    full["status"]["phase"] = json!("Failed");
    c.expect(
        &n1,
        Method::PUT,
        &format!("{pods}/theirs/status"),
        Some(full),
        FORBIDDEN,
    )
    .await;
    // Missing pods are 404, not a leak through 403.
    c.expect(
        &n1,
        Method::PATCH,
        &format!("{pods}/nope/status"),
        Some(st),
        StatusCode::NOT_FOUND,
    )
    .await;
    // Deleting: only its own pods.
    c.expect(
        &n1,
        Method::DELETE,
        &format!("{pods}/theirs"),
        None,
        FORBIDDEN,
    )
    .await;
    c.expect(&n1, Method::DELETE, &format!("{pods}/mine"), None, OK)
        .await;
    c.expect(&n1, Method::DELETE, pods, None, FORBIDDEN).await;
    // Reads of pods are allowed.
    c.expect(&n1, Method::GET, "/api/v1/pods", None, OK).await;
    c.expect(
        &n1,
        Method::GET,
        "/api/v1/pods?watch=true&timeoutSeconds=1",
        None,
        OK,
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
    c.expect(&n1, Method::POST, pods, Some(pod("m", "n1", true)), CREATED)
        .await;
    let r = c
        .expect(
            &n1,
            Method::POST,
            pods,
            Some(pod("x", "n1", false)),
            FORBIDDEN,
        )
        .await;
    assert!(forbidden_message(&r).contains("may only create mirror pods"));
    c.expect(
        &n1,
        Method::POST,
        pods,
        Some(pod("y", "n2", true)),
        FORBIDDEN,
    )
    .await;
    // Bindings and evictions are not the node's.
    c.expect(
        &n1,
        Method::POST,
        &format!("{pods}/m/binding"),
        Some(json!({"target": {"name": "n1"}})),
        FORBIDDEN,
    )
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
    c.expect(&n1, Method::GET, &format!("{secrets}/used"), None, OK)
        .await;
    let r = c
        .expect(
            &n1,
            Method::GET,
            &format!("{secrets}/unused"),
            None,
            FORBIDDEN,
        )
        .await;
    assert_eq!(
        forbidden_message(&r),
        r#"secrets "unused" is forbidden: User "system:node:n1" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node "n1" and this object"#
    );
    c.expect(
        &n1,
        Method::GET,
        &format!("{secrets}/elsewhere"),
        None,
        FORBIDDEN,
    )
    .await;
    // Lists and watches of secrets: only one referenced object by name.
    c.expect(&n1, Method::GET, secrets, None, FORBIDDEN).await;
    c.expect(&n1, Method::GET, "/api/v1/secrets", None, FORBIDDEN)
        .await;
    c.expect(
        &n1,
        Method::GET,
        &format!("{secrets}?watch=true"),
        None,
        FORBIDDEN,
    )
    .await;
    let r = c
        .expect(
            &n1,
            Method::GET,
            &format!("{secrets}?fieldSelector=metadata.name%3Dused"),
            None,
            OK,
        )
        .await;
    assert_eq!(r["items"].as_array().unwrap().len(), 1);
    c.expect(
        &n1,
        Method::GET,
        &format!("{secrets}?fieldSelector=metadata.name%3Dunused"),
        None,
        FORBIDDEN,
    )
    .await;
    // ConfigMaps and service accounts likewise.
    let cms = "/api/v1/namespaces/default/configmaps";
    c.expect(&n1, Method::GET, &format!("{cms}/env-cm"), None, OK)
        .await;
    c.expect(
        &n1,
        Method::GET,
        &format!("{cms}/other-cm"),
        None,
        FORBIDDEN,
    )
    .await;
    c.expect(
        &n1,
        Method::GET,
        "/api/v1/namespaces/default/serviceaccounts/robot",
        None,
        FORBIDDEN,
    )
    .await;
    // Writes of them never.
    c.expect(
        &n1,
        Method::DELETE,
        &format!("{secrets}/used"),
        None,
        FORBIDDEN,
    )
    .await;
    c.expect(
        &n1,
        Method::POST,
        cms,
        Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new"}})),
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
        c.expect(&n1, Method::GET, path, None, OK).await;
    }
    c.expect(
        &n1,
        Method::POST,
        "/api/v1/namespaces/default/events",
        Some(json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1"}, "involvedObject": {"kind": "Node", "name": "n1"}, "reason": "Started", "message": "m"})),
        CREATED,
    )
    .await;
    c.expect(
        &n1,
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})),
        FORBIDDEN,
    )
    .await;
    c.expect(
        &n1,
        Method::DELETE,
        "/api/v1/namespaces/default",
        None,
        FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn other_certificate_users_only_read_and_not_secrets() {
    let c = Cluster::new().await;
    let (cert, _) = pki::issue(
        &c.pki.ca_cert_pem,
        &c.pki.ca_key_pem,
        "jane",
        &["devs"],
        &[],
        true,
    )
    .unwrap();
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let jane = Cred::Cert(user_from_cert(der.as_ref()).unwrap());
    c.expect(&jane, Method::GET, "/api/v1/namespaces/default", None, OK)
        .await;
    c.expect(
        &jane,
        Method::GET,
        "/api/v1/namespaces/default/configmaps",
        None,
        OK,
    )
    .await;
    c.expect(
        &jane,
        Method::GET,
        "/api/v1/namespaces/default/secrets",
        None,
        FORBIDDEN,
    )
    .await;
    c.expect(
        &jane,
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})),
        FORBIDDEN,
    )
    .await;
    c.expect(
        &jane,
        Method::GET,
        "/api/v1/nodes/n1/proxy/healthz",
        None,
        FORBIDDEN,
    )
    .await;
    // A certificate in system:masters may do everything.
    let (cert, _) = pki::issue(
        &c.pki.ca_cert_pem,
        &c.pki.ca_key_pem,
        "root",
        &["system:masters"],
        &[],
        true,
    )
    .unwrap();
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let root = Cred::Cert(user_from_cert(der.as_ref()).unwrap());
    c.expect(
        &root,
        Method::GET,
        "/api/v1/namespaces/default/secrets",
        None,
        OK,
    )
    .await;
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
        .call(
            &Cred::Admin,
            Method::GET,
            &format!("{PODS}/p/log?tailLines=5&timestamps=true"),
            None,
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
            &Cred::Admin,
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
    let n1 = c.node("n1", PW1);
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
        .call(
            &Cred::Admin,
            Method::GET,
            "/api/v1/nodes/n1/proxy/configz?x=1&y=2",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::IM_A_TEAPOT, "{}", r.body);
    assert_eq!(r.body, "kubelet saw /configz?x=1&y=2");
    let r = c
        .call(
            &Cred::Admin,
            Method::GET,
            &format!("/api/v1/nodes/n1:{port}/proxy/"),
            None,
        )
        .await;
    assert_eq!(r.body, "kubelet saw /");
    assert_eq!(k.seen.lock().await.len(), 2);
    // Not for nodes.
    let n1 = c.node("n1", PW1);
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
        .call(
            &Cred::Admin,
            Method::GET,
            &format!("{PODS}/pending/log"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body["message"],
        "pod pending does not have a host assigned"
    );
    // Bound to a node that does not exist.
    c.pod_on("ghost", "n9", json!({})).await;
    let r = c
        .call(
            &Cred::Admin,
            Method::GET,
            &format!("{PODS}/ghost/log"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.body["message"],
        r#"node "n9" is not registered: its agent cannot be reached"#
    );
    // A node without an address.
    c.node_at("bare", "", 10250).await;
    c.pod_on("b", "bare", json!({})).await;
    let r = c
        .call(
            &Cred::Admin,
            Method::POST,
            &format!("{PODS}/b/exec?command=ls"),
            None,
        )
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
    let r = c
        .call(&Cred::Admin, Method::GET, &format!("{PODS}/p/log"), None)
        .await;
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
    let r = c
        .call(&Cred::Admin, Method::GET, &format!("{PODS}/two/log"), None)
        .await;
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
    let r = c
        .call(&Cred::Admin, Method::GET, &format!("{PODS}/p/log"), None)
        .await;
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

#[tokio::test]
async fn exec_upgrades_and_passes_bytes_both_ways() {
    let c = Cluster::new().await;
    let (kport, k) = ca_signed_kubelet(&c.pki).await;
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
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!(
            "{PODS}/p/exec?command=cat&command=-&stdin=true&stdout=true&stderr=true&tty=false&container=c"
        ))
        .header("Authorization", format!("Bearer {}", c.pki.admin_token))
        .header("Connection", "Upgrade")
        .header("Upgrade", "SPDY/3.1")
        .header("X-Stream-Protocol-Version", "v4.channel.k8s.io")
        .body(Empty::new())
        .unwrap();
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
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("{PODS}/p/attach?stdout=true"))
        .header("Authorization", format!("Bearer {}", c.pki.admin_token))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Protocol", "v5.channel.k8s.io")
        .body(Empty::new())
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(k.seen.lock().await[1].0, "/attach/default/p/c?output=1");
    // The node's own credentials cannot exec.
    let mut client = https_client(&c.pki, port).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{PODS}/p/exec?command=ls"))
        .header(
            "Authorization",
            format!("Bearer n1:{PW1}:{}", c.pki.node_token),
        )
        .header("Connection", "Upgrade")
        .header("Upgrade", "SPDY/3.1")
        .body(Empty::new())
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), FORBIDDEN);
}
