//! API server tests below HTTP for the published schemas and for Services: `/openapi/v3`
//! and `/openapi/v2` documents (schemas, refs, hashes and ETags, content negotiation), the
//! `default/kubernetes` Service bootstrap creates, and Services' defaults, cluster IP and
//! node port allocation, validation, updates and Tables. Embedded store only (the store
//! backends are covered by the api suite).

#[path = "../support/api.rs"]
#[allow(dead_code)]
mod api_support;

use std::collections::HashSet;
use std::sync::Arc;

use api_support::{Cred, Reply};
use hyper::{Method, StatusCode};
use keelson_server::api::ApiServer;
use keelson_server::store::EmbeddedConfig;
use serde_json::{Value, json};

const SVCS: &str = "/api/v1/namespaces/default/services";

struct Api {
    api: ApiServer,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig {
            compaction_interval: None,
            ..EmbeddedConfig::default()
        };
        let store = api_support::open_embedded(dir.path().to_path_buf(), config).await;
        let api = api_support::server(store).await;
        Api { api, _dir: dir }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let text = body.map(|b| b.to_string());
        let resp = api_support::send(
            &self.api,
            &Cred::admin(),
            method,
            path,
            headers,
            text.as_deref(),
        )
        .await;
        api_support::read(resp).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], None).await
    }

    async fn send(&self, method: Method, path: &str, body: Value) -> Reply {
        api_support::call(&self.api, &Cred::admin(), method, path, Some(body)).await
    }

    /// POSTs a Service `name` with `spec`.
    async fn create(&self, name: &str, spec: Value) -> Reply {
        self.send(Method::POST, SVCS, svc(name, spec)).await
    }

    /// POSTs a Service `name` with `spec`, which must be created; the Service.
    async fn created(&self, name: &str, spec: Value) -> Value {
        let r = self.create(name, spec).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.body);
        r.body
    }

    /// POSTs a Service `name` with `spec`, which must be Invalid; the fields of its causes.
    async fn refused(&self, name: &str, spec: Value) -> Vec<String> {
        cause_fields(&self.create(name, spec).await)
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
    const PROTO: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
    for (accept, status) in [
        (format!("{PROTO}, application/json"), StatusCode::OK),
        (PROTO.to_string(), StatusCode::NOT_ACCEPTABLE),
    ] {
        let r = api
            .request(Method::GET, "/openapi/v2", &[("Accept", &accept)], None)
            .await;
        assert_eq!(r.status, status, "{accept}");
    }
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
    let web = api
        .created(
            "web",
            json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
        )
        .await;
    let spec = &web["spec"];
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
    let db = api
        .created(
            "db",
            json!({"clusterIP": "None", "selector": {"app": "db"}}),
        )
        .await;
    assert_eq!(db["spec"]["clusterIP"], "None");
    let ext = api
        .created(
            "ext",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        )
        .await;
    assert!(ext["spec"].get("clusterIP").is_none());

    // NodePort: allocated in range, or the one asked for; a taken one is refused.
    let node_ports = |ports: Value| json!({"type": "NodePort", "ports": ports});
    let np = api
        .created(
            "np",
            node_ports(
                json!([{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30080}]),
            ),
        )
        .await;
    let np = ports(&np["spec"]);
    assert_eq!(np.len(), 2);
    assert!((30000..=32767).contains(&np[0]) && np[0] != 30080, "{np:?}");
    assert_eq!(np[1], 30080);
    let taken = node_ports(json!([{"port": 80, "nodePort": 30080}]));
    assert_eq!(api.refused("np2", taken).await, ["spec.ports[0].nodePort"]);

    // A cluster IP asked for: taken, out of range, or free.
    let asking = |ip: &str| json!({"clusterIP": ip, "ports": [{"port": 1}]});
    let taken = asking(&ip.to_string());
    assert_eq!(api.refused("dup", taken).await, ["spec.clusterIPs"]);
    let far = asking("192.168.1.1");
    assert_eq!(api.refused("far", far).await, ["spec.clusterIPs[0]"]);
    let mine = api.created("mine", asking("10.43.200.200")).await;
    assert_eq!(mine["spec"]["clusterIP"], "10.43.200.200");
    let sneaky = asking("10.43.0.1");
    assert_eq!(api.refused("sneaky", sneaky).await, ["spec.clusterIPs"]);
}

#[tokio::test]
async fn concurrent_creates_get_distinct_cluster_ips() {
    let api = Arc::new(Api::new().await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let s = api
                .created(&format!("s{i}"), json!({"ports": [{"port": 80}]}))
                .await;
            s["spec"]["clusterIP"].as_str().unwrap().to_string()
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
    for (name, spec, fields) in [
        (
            "1web",
            json!({"ports": [{"port": 80}]}),
            &["metadata.name"][..],
        ),
        ("empty", json!({}), &["spec.ports"]),
        (
            "bad",
            json!({"type": "Magic", "ports": [{"port": 0, "protocol": "ICMP"}, {"port": 70000}]}),
            &[
                "spec.type",
                "spec.ports[0].name",
                "spec.ports[0].port",
                "spec.ports[0].protocol",
                // Defaulted from the port, as Kubernetes does.
                "spec.ports[0].targetPort",
                "spec.ports[1].name",
                "spec.ports[1].port",
                "spec.ports[1].targetPort",
            ],
        ),
        (
            "np-on-cip",
            json!({"ports": [{"port": 80, "nodePort": 30001}]}),
            &["spec.ports[0].nodePort"],
        ),
    ] {
        assert_eq!(api.refused(name, spec).await, fields, "{name}");
    }

    let web = api
        .created(
            "web",
            json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}),
        )
        .await;
    let ip = web["spec"]["clusterIP"].clone();
    // A replace that leaves the allocated fields out keeps them.
    let mut replace = svc(
        "web",
        json!({"selector": {"app": "web2"}, "ports": [{"port": 80, "targetPort": "http"}]}),
    );
    replace["metadata"]["resourceVersion"] = web["metadata"]["resourceVersion"].clone();
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
/// An update is checked against the other Services as a create is: a node port another
/// Service holds cannot be taken by a patch or a replace.
#[tokio::test]
async fn services_cannot_share_node_ports_through_updates() {
    let api = Api::new().await;
    let node_port = |n: i64| json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": n}]});
    let a = api.created("holder", node_port(31701)).await;
    assert_eq!(ports(&a["spec"]), [31701]);
    let b = api
        .created(
            "taker",
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        )
        .await;
    let own = ports(&b["spec"])[0];
    assert_ne!(own, 31701);
    let r = api
        .send(
            Method::PATCH,
            &format!("{SVCS}/taker"),
            json!({"spec": {"ports": [{"port": 80, "nodePort": 31701}]}}),
        )
        .await;
    assert_eq!(cause_fields(&r), ["spec.ports[0].nodePort"]);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("provided port is already allocated"),
        "{}",
        r.body
    );
    // A ClusterIP Service becoming a NodePort one with the held port: refused too.
    let c = api.created("plain", json!({"ports": [{"port": 80}]})).await;
    let mut replace = c.clone();
    replace["spec"]["type"] = json!("NodePort");
    replace["spec"]["ports"] = json!([{"port": 80, "nodePort": 31701}]);
    let r = api
        .send(Method::PUT, &format!("{SVCS}/plain"), replace)
        .await;
    assert_eq!(cause_fields(&r), ["spec.ports[0].nodePort"]);
    // Neither changed; an update keeping one's own port is fine.
    let b = api.get(&format!("{SVCS}/taker")).await;
    assert_eq!(ports(&b.body["spec"]), [own]);
    let r = api
        .send(
            Method::PATCH,
            &format!("{SVCS}/holder"),
            json!({"spec": {"ports": [{"port": 80, "nodePort": 31701}], "selector": {"app": "x"}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(ports(&r.body["spec"]), [31701]);
    // Two Services asking for the same free port by value: only the first gets it.
    let r = api
        .send(
            Method::PATCH,
            &format!("{SVCS}/taker"),
            json!({"spec": {"ports": [{"port": 80, "nodePort": 31702}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        api.refused("late", node_port(31702)).await,
        ["spec.ports[0].nodePort"]
    );
}

/// An ExternalName Service that becomes a ClusterIP one gets a cluster IP.
#[tokio::test]
async fn external_name_to_cluster_ip_gets_an_ip() {
    let api = Api::new().await;
    let ext = api
        .created(
            "was-ext",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        )
        .await;
    assert!(ext["spec"].get("clusterIP").is_none());
    let r = api
        .send(
            Method::PATCH,
            &format!("{SVCS}/was-ext"),
            json!({"spec": {"type": "ClusterIP", "externalName": null, "ports": [{"port": 80}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let ip: std::net::Ipv4Addr = r.body["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ip.octets()[..2], [10, 43]);
    assert_ne!(ip.to_string(), "10.43.0.1");
    assert_eq!(r.body["spec"]["clusterIPs"], json!([ip.to_string()]));
    let r = api.get(&format!("{SVCS}/was-ext")).await;
    assert_eq!(r.body["spec"]["clusterIP"], ip.to_string());
    // A NodePort one from ExternalName gets node ports as well, and may not take an IP in use.
    api.created(
        "ext2",
        json!({"type": "ExternalName", "externalName": "example.org"}),
    )
    .await;
    let r = api
        .send(
            Method::PATCH,
            &format!("{SVCS}/ext2"),
            json!({"spec": {"type": "NodePort", "externalName": null, "clusterIP": ip.to_string(), "ports": [{"port": 80}]}}),
        )
        .await;
    assert_eq!(cause_fields(&r), ["spec.clusterIPs"]);
    let r = api
        .send(
            Method::PATCH,
            &format!("{SVCS}/ext2"),
            json!({"spec": {"type": "NodePort", "externalName": null, "ports": [{"port": 80}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.43.")
    );
    let np = ports(&r.body["spec"]);
    assert!(np.len() == 1 && (30000..=32767).contains(&np[0]), "{np:?}");
}
