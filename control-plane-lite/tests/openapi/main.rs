//! API server tests below HTTP for the published schemas and for Services: `/openapi/v3`
//! and `/openapi/v2` documents (schemas, refs, hashes and ETags, content negotiation), the
//! `default/kubernetes` Service bootstrap creates, and Services' defaults, cluster IP and
//! node port allocation, validation, updates and Tables. Embedded store only (the store
//! backends are covered by the api suite).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use keelson_server::api::ApiServer;
use keelson_server::api::auth::Tokens;
use keelson_server::store::{EmbeddedConfig, EmbeddedStore, Store};
use serde_json::{Value, json};

const TOKEN: &str = "admin-token";
const SVCS: &str = "/api/v1/namespaces/default/services";

struct Api {
    api: ApiServer,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Value,
    len: usize,
}

impl Api {
    async fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let config = EmbeddedConfig {
            compaction_interval: None,
            ..EmbeddedConfig::default()
        };
        let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path, config))
            .await
            .unwrap()
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let api = ApiServer::new(
            store,
            Tokens {
                admin: TOKEN.into(),
                node: "node-token".into(),
            },
            "127.0.0.1:6443".into(),
        );
        api.bootstrap().await.expect("bootstrap");
        Api { api, _dir: dir }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("Authorization", format!("Bearer {TOKEN}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()));
        let resp = self.api.handle(req.body(body).unwrap(), None).await;
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

    async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], None).await
    }

    async fn send(&self, method: Method, path: &str, body: Value) -> Reply {
        let ct = if method == Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        self.request(method, path, &[("Content-Type", ct)], Some(body))
            .await
    }
}

fn svc(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

fn ports(spec: &Value) -> Vec<i64> {
    spec["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["nodePort"].as_i64())
        .collect()
}

/// The fields of an Invalid Status's causes.
fn cause_fields(r: &Reply) -> Vec<String> {
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    r.body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn openapi_v3_documents_carry_schemas_and_hashes() {
    let api = Api::new().await;
    let root = api.get("/openapi/v3").await;
    assert_eq!(root.status, StatusCode::OK);
    let paths = root.body["paths"].as_object().unwrap();
    for key in [
        "api/v1",
        "apis/coordination.k8s.io/v1",
        "apis/events.k8s.io/v1",
    ] {
        assert!(paths.contains_key(key), "{key} missing from {paths:?}");
    }
    let url = paths["api/v1"]["serverRelativeURL"].as_str().unwrap();
    let doc = api.get(url).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.headers["cache-control"], "public, immutable");
    let hash = url.split("hash=").nth(1).unwrap();
    assert_eq!(doc.headers["etag"], format!("\"{hash}\""));
    let schemas = doc.body["components"]["schemas"].as_object().unwrap();
    for kind in [
        "Pod",
        "PodList",
        "Service",
        "ServiceList",
        "ConfigMap",
        "Secret",
        "Namespace",
        "Node",
        "ServiceAccount",
        "Event",
    ] {
        let s = &schemas[&format!("io.k8s.api.core.v1.{kind}")];
        assert_eq!(
            s["x-kubernetes-group-version-kind"],
            json!([{"group": "", "version": "v1", "kind": kind}]),
            "{kind}"
        );
        assert!(s["description"].is_string(), "{kind}");
    }
    let meta = &schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"];
    assert_eq!(
        meta["properties"]["finalizers"]["x-kubernetes-patch-strategy"],
        "merge"
    );
    let svc_spec = &schemas["io.k8s.api.core.v1.ServiceSpec"]["properties"];
    assert_eq!(
        svc_spec["ports"]["items"]["$ref"],
        "#/components/schemas/io.k8s.api.core.v1.ServicePort"
    );
    let target_port =
        &schemas["io.k8s.api.core.v1.ServicePort"]["properties"]["targetPort"]["allOf"][0];
    assert_eq!(
        target_port["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.util.intstr.IntOrString"
    );
    // The PATCH operations still declare fieldValidation (kubectl's strict validation).
    let op = &doc.body["paths"]["/api/v1/namespaces/{namespace}/services/{name}/status"]["patch"];
    assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Service");

    // Revalidation: the same ETag is Not Modified.
    let etag = doc.headers["etag"].to_str().unwrap().to_string();
    let again = api
        .request(Method::GET, url, &[("If-None-Match", &etag)], None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.len, 0);

    let lease = api.get("/openapi/v3/apis/coordination.k8s.io/v1").await;
    let ls = lease.body["components"]["schemas"].as_object().unwrap();
    assert_eq!(
        ls["io.k8s.api.coordination.v1.Lease"]["x-kubernetes-group-version-kind"][0]["group"],
        "coordination.k8s.io"
    );
    assert!(!ls.contains_key("io.k8s.api.core.v1.PodSpec"));
    assert_eq!(
        api.get("/openapi/v3/apis/apps/v1").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn openapi_v2_is_json_or_not_acceptable() {
    let api = Api::new().await;
    let doc = api.get("/openapi/v2").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["swagger"], "2.0");
    let defs = doc.body["definitions"].as_object().unwrap();
    assert_eq!(
        defs["io.k8s.api.core.v1.Pod"]["properties"]["spec"]["$ref"],
        "#/definitions/io.k8s.api.core.v1.PodSpec"
    );
    assert_eq!(
        defs["io.k8s.api.core.v1.Container"]["properties"]["env"]["x-kubernetes-patch-merge-key"],
        "name"
    );
    assert!(defs.contains_key("io.k8s.api.coordination.v1.Lease"));
    assert!(defs.contains_key("io.k8s.api.events.v1.Event"));
    let json_too = api
        .request(
            Method::GET,
            "/openapi/v2",
            &[(
                "Accept",
                "application/com.github.proto-openapi.spec.v2@v1.0+protobuf, application/json",
            )],
            None,
        )
        .await;
    assert_eq!(json_too.status, StatusCode::OK);
    let proto_only = api
        .request(
            Method::GET,
            "/openapi/v2",
            &[(
                "Accept",
                "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
            )],
            None,
        )
        .await;
    assert_eq!(proto_only.status, StatusCode::NOT_ACCEPTABLE);
}

#[tokio::test]
async fn bootstrap_creates_the_kubernetes_service() {
    let api = Api::new().await;
    let r = api.get(&format!("{SVCS}/kubernetes")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let spec = &r.body["spec"];
    assert_eq!(spec["clusterIP"], "10.43.0.1");
    assert_eq!(spec["clusterIPs"], json!(["10.43.0.1"]));
    assert_eq!(
        spec["ports"],
        json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}])
    );
    assert_eq!(r.body["metadata"]["labels"]["component"], "apiserver");
    // Bootstrapping again (a restart) is fine and changes nothing.
    api.api.bootstrap().await.unwrap();
    let again = api.get(&format!("{SVCS}/kubernetes")).await;
    assert_eq!(again.body["metadata"]["uid"], r.body["metadata"]["uid"]);
    // What `kubectl cluster-info` lists.
    let r = api
        .get("/api/v1/namespaces/kube-system/services?labelSelector=kubernetes.io%2Fcluster-service%3Dtrue")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["kind"], "ServiceList");
    assert_eq!(r.body["items"], json!([]));
    // Discovery.
    let list = api.get("/api/v1").await;
    let names: Vec<&str> = list.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(names.contains(&"services") && names.contains(&"services/status"));
}

#[tokio::test]
async fn services_are_defaulted_and_allocated() {
    let api = Api::new().await;
    let r = api
        .send(
            Method::POST,
            SVCS,
            svc(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let spec = &r.body["spec"];
    assert_eq!(spec["type"], "ClusterIP");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
    assert_eq!(
        spec["ports"],
        json!([{"port": 80, "protocol": "TCP", "targetPort": 80}])
    );
    let ip: std::net::Ipv4Addr = spec["clusterIP"].as_str().unwrap().parse().unwrap();
    assert_eq!(ip.octets()[..2], [10, 43]);
    assert_ne!(ip.to_string(), "10.43.0.1");
    assert_eq!(spec["clusterIPs"], json!([ip.to_string()]));

    // Headless stays headless; ExternalName gets no cluster IP.
    let r = api
        .send(
            Method::POST,
            SVCS,
            svc(
                "db",
                json!({"clusterIP": "None", "selector": {"app": "db"}}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["spec"]["clusterIP"], "None");
    let r = api
        .send(
            Method::POST,
            SVCS,
            svc(
                "ext",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body["spec"].get("clusterIP").is_none());

    // NodePort: allocated in range, or the one asked for; a taken one is refused.
    let r = api
        .send(
            Method::POST,
            SVCS,
            svc(
                "np",
                json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30080}]}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let np = ports(&r.body["spec"]);
    assert_eq!(np.len(), 2);
    assert!((30000..=32767).contains(&np[0]) && np[0] != 30080, "{np:?}");
    assert_eq!(np[1], 30080);
    let r = api
        .send(
            Method::POST,
            SVCS,
            svc(
                "np2",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
            ),
        )
        .await;
    assert_eq!(cause_fields(&r), ["spec.ports[0].nodePort"]);

    // A cluster IP asked for: taken, out of range, or free.
    let taken = svc(
        "dup",
        json!({"clusterIP": ip.to_string(), "ports": [{"port": 1}]}),
    );
    let r = api.send(Method::POST, SVCS, taken).await;
    assert_eq!(cause_fields(&r), ["spec.clusterIPs"]);
    let r = api
        .send(
            Method::POST,
            SVCS,
            svc(
                "far",
                json!({"clusterIP": "192.168.1.1", "ports": [{"port": 1}]}),
            ),
        )
        .await;
    assert_eq!(cause_fields(&r), ["spec.clusterIPs[0]"]);
    let r = api
        .send(
            Method::POST,
            SVCS,
            svc(
                "mine",
                json!({"clusterIP": "10.43.200.200", "ports": [{"port": 1}]}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["spec"]["clusterIP"], "10.43.200.200");
    let r = api
        .send(
            Method::POST,
            SVCS,
            svc(
                "sneaky",
                json!({"clusterIP": "10.43.0.1", "ports": [{"port": 1}]}),
            ),
        )
        .await;
    assert_eq!(cause_fields(&r), ["spec.clusterIPs"]);
}

#[tokio::test]
async fn concurrent_creates_get_distinct_cluster_ips() {
    let api = Arc::new(Api::new().await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let r = api
                .send(
                    Method::POST,
                    SVCS,
                    svc(&format!("s{i}"), json!({"ports": [{"port": 80}]})),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body["spec"]["clusterIP"].as_str().unwrap().to_string()
        }));
    }
    let mut ips = HashSet::new();
    for t in tasks {
        assert!(ips.insert(t.await.unwrap()));
    }
    assert!(!ips.contains("10.43.0.1"));
}

#[tokio::test]
async fn service_validation_updates_and_tables() {
    let api = Api::new().await;
    let r = api
        .send(
            Method::POST,
            SVCS,
            svc("1web", json!({"ports": [{"port": 80}]})),
        )
        .await;
    assert_eq!(cause_fields(&r), ["metadata.name"]);
    let r = api.send(Method::POST, SVCS, svc("empty", json!({}))).await;
    assert_eq!(cause_fields(&r), ["spec.ports"]);
    let r = api
        .send(
            Method::POST,
            SVCS,
            svc(
                "bad",
                json!({"type": "Magic", "ports": [{"port": 0, "protocol": "ICMP"}, {"port": 70000}]}),
            ),
        )
        .await;
    assert_eq!(
        cause_fields(&r),
        [
            "spec.type",
            "spec.ports[0].name",
            "spec.ports[0].port",
            "spec.ports[0].protocol",
            // Defaulted from the port, as Kubernetes does.
            "spec.ports[0].targetPort",
            "spec.ports[1].name",
            "spec.ports[1].port",
            "spec.ports[1].targetPort"
        ]
    );
    let r = api
        .send(
            Method::POST,
            SVCS,
            svc(
                "np-on-cip",
                json!({"ports": [{"port": 80, "nodePort": 30001}]}),
            ),
        )
        .await;
    assert_eq!(cause_fields(&r), ["spec.ports[0].nodePort"]);

    let r = api
        .send(
            Method::POST,
            SVCS,
            svc(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let ip = r.body["spec"]["clusterIP"].clone();
    // A replace that leaves the allocated fields out keeps them.
    let mut replace = svc(
        "web",
        json!({"selector": {"app": "web2"}, "ports": [{"port": 80, "targetPort": "http"}]}),
    );
    replace["metadata"]["resourceVersion"] = r.body["metadata"]["resourceVersion"].clone();
    let r = api.send(Method::PUT, &format!("{SVCS}/web"), replace).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["spec"]["clusterIP"], ip);
    assert_eq!(r.body["spec"]["selector"]["app"], "web2");
    // The cluster IP cannot change.
    let r = api
        .send(
            Method::PATCH,
            &format!("{SVCS}/web"),
            json!({"spec": {"clusterIP": "10.43.9.9", "clusterIPs": ["10.43.9.9"]}}),
        )
        .await;
    assert_eq!(cause_fields(&r), ["spec.clusterIPs[0]"]);
    // Becoming a NodePort allocates node ports.
    let r = api
        .send(
            Method::PATCH,
            &format!("{SVCS}/web"),
            json!({"spec": {"type": "NodePort"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let np = ports(&r.body["spec"]);
    assert!(np.len() == 1 && (30000..=32767).contains(&np[0]), "{np:?}");

    let t = api
        .request(
            Method::GET,
            SVCS,
            &[("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")],
            None,
        )
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    let cols: Vec<&str> = t.body["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        [
            "Name",
            "Type",
            "Cluster-IP",
            "External-IP",
            "Port(s)",
            "Age",
            "Selector"
        ]
    );
    let rows = t.body["rows"].as_array().unwrap();
    let web = rows.iter().find(|r| r["cells"][0] == "web").unwrap();
    assert_eq!(web["cells"][1], "NodePort");
    assert_eq!(web["cells"][4], format!("80:{}/TCP", np[0]));
    assert_eq!(web["cells"][6], "app=web2");
    let k = rows.iter().find(|r| r["cells"][0] == "kubernetes").unwrap();
    assert_eq!(k["cells"][2], "10.43.0.1");
    assert_eq!(k["cells"][4], "443/TCP");
}
