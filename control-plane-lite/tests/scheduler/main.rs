//! Scheduler tests below HTTP: fake Node objects and pods go through `ApiServer::handle`, the
//! scheduler runs in-process on the same API server, on both store backends (embedded and a
//! one-member etcd the test starts): placement by selectors, affinity, taints, resources,
//! host ports, pod capacity and owner spread; `PodScheduled=False` and `FailedScheduling`
//! events for pods that fit nowhere, and their retry when nodes come or pods go; and Lease
//! leader election between two schedulers on one etcd, with takeover when the leader dies.

#[path = "../store/support.rs"]
#[allow(dead_code)]
mod support;

#[path = "../support/api.rs"]
#[allow(dead_code)]
mod api_support;

use std::sync::Arc;
use std::time::Duration;

use api_support::{Cred, Reply};
use hyper::{Method, StatusCode};
use keelson_server::api::ApiServer;
use keelson_server::scheduler::{Scheduler, SchedulerConfig};
use keelson_server::store::{EmbeddedStore, Store};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// How long a test waits for the scheduler to act.
const WAIT: Duration = Duration::from_secs(15);

/// One API server (over its own store handle) and the schedulers running on it.
struct Cluster {
    api: Arc<ApiServer>,
    schedulers: Vec<JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &self.schedulers {
            s.abort();
        }
    }
}

fn test_config(identity: &str, leader_elect: bool) -> SchedulerConfig {
    SchedulerConfig {
        identity: identity.into(),
        leader_elect,
        lease_duration: Duration::from_secs(2),
        renew_interval: Duration::from_millis(300),
        // Long, so that a retry the tests see was triggered by a change, not the timer.
        unschedulable_retry: Duration::from_secs(600),
        ..SchedulerConfig::default()
    }
}

impl Cluster {
    async fn new(store: Arc<dyn Store>) -> Cluster {
        let api = Arc::new(api_support::server(store).await);
        Cluster {
            api,
            schedulers: Vec::new(),
        }
    }

    fn start_scheduler(&mut self, config: SchedulerConfig) -> usize {
        let s = Scheduler::new(self.api.clone(), config);
        self.schedulers.push(tokio::spawn(s.run()));
        self.schedulers.len() - 1
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        api_support::call(&self.api, &Cred::admin(), method, path, body).await
    }

    /// GETs `path`, which must succeed; the body.
    async fn get(&self, path: &str) -> Value {
        let r = self.call(Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.body);
        r.body
    }

    /// Merge-patches `path`, which must succeed.
    async fn patch(&self, path: &str, patch: Value) {
        let r = self.call(Method::PATCH, path, Some(patch)).await;
        assert_eq!(r.status, StatusCode::OK, "PATCH {path}: {}", r.body);
    }

    async fn create(&self, path: &str, body: Value) -> Value {
        let r = self.call(Method::POST, path, Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "POST {path}: {}", r.body);
        r.body
    }

    async fn node(&self, body: Value) {
        self.create("/api/v1/nodes", body).await;
    }

    async fn pod(&self, name: &str, spec: Value) {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
        }
        self.create(
            "/api/v1/namespaces/default/pods",
            json!({"metadata": {"name": name}, "spec": spec}),
        )
        .await;
    }

    async fn get_pod(&self, name: &str) -> Value {
        self.get(&format!("/api/v1/namespaces/default/pods/{name}"))
            .await
    }

    /// Waits until the pod is bound; its node.
    async fn bound(&self, name: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let pod = self.get_pod(name).await;
            if let Some(n) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return n.to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pod {name} not scheduled within {WAIT:?}: {}",
                pod["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the pod carries PodScheduled=False; the condition's message.
    async fn unschedulable(&self, name: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let pod = self.get_pod(name).await;
            if let Some(c) = pod_scheduled(&pod)
                && c["status"] == "False"
            {
                assert_eq!(c["reason"], "Unschedulable");
                assert!(pod["spec"]["nodeName"].is_null(), "{pod}");
                return c["message"].as_str().unwrap_or_default().to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pod {name} not marked unschedulable within {WAIT:?}: {pod}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The events about pod `name` with `reason`.
    async fn events(&self, name: &str, reason: &str) -> Vec<Value> {
        let list = self
            .get(&format!(
                "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name},reason%3D{reason}"
            ))
            .await;
        list["items"].as_array().cloned().unwrap_or_default()
    }

    async fn wait_event(&self, name: &str, reason: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self.events(name, reason).await.pop() {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {reason} event for {name}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the scheduler has seen node `last` (and so every node created before it):
    /// a pod pinned to it gets bound.
    async fn seen_node(&self, last: &str) {
        let name = format!("seen-{last}");
        self.pod(
            &name,
            json!({"nodeSelector": {"kubernetes.io/hostname": last}}),
        )
        .await;
        assert_eq!(self.bound(&name).await, last);
    }

    async fn delete_pod(&self, name: &str) {
        let r = self
            .call(
                Method::DELETE,
                &format!("/api/v1/namespaces/default/pods/{name}"),
                Some(json!({"gracePeriodSeconds": 0})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
}

/// The pod's PodScheduled condition, if it has one.
fn pod_scheduled(pod: &Value) -> Option<Value> {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned())
}

/// A Ready node with `cpu` and `memory` allocatable, room for `pods` pods, and `extra`
/// merged into it (labels, taints, conditions...).
fn node(name: &str, cpu: &str, memory: &str, pods: u32, extra: Value) -> Value {
    let mut n = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "allocatable": {"cpu": cpu, "memory": memory, "pods": pods.to_string()},
            "capacity": {"cpu": cpu, "memory": memory, "pods": pods.to_string()}
        }
    });
    json_patch::merge(&mut n, &extra);
    n
}

fn cpu(request: &str) -> Value {
    json!({"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": request}}}]})
}

fn etcd_available() -> bool {
    std::env::var_os("KEELSON_ETCD")
        .map_or_else(|| std::path::PathBuf::from("/usr/bin/etcd"), Into::into)
        .exists()
}

/// What keeps a test's store alive: its directory or its etcd process.
struct Backend {
    _dir: Option<tempfile::TempDir>,
    _etcd: Option<support::Etcd>,
}

async fn embedded_store() -> (Arc<dyn Store>, Backend) {
    support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), support::embedded_test_config()).unwrap();
    (
        Arc::new(store),
        Backend {
            _dir: Some(dir),
            _etcd: None,
        },
    )
}

async fn etcd_store() -> (Arc<dyn Store>, Backend) {
    support::init_tracing();
    let etcd = support::Etcd::start(1).await;
    let store: Arc<dyn Store> = Arc::new(etcd.connect().await);
    (
        store,
        Backend {
            _dir: None,
            _etcd: Some(etcd),
        },
    )
}

/// Runs `scenario` with one scheduler (no election) on the embedded store and on etcd.
macro_rules! on_both_stores {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let (store, _backend) = super::embedded_store().await;
                let mut c = super::Cluster::new(store).await;
                c.start_scheduler(super::test_config("s1", false));
                super::$scenario(&c).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                if !super::etcd_available() {
                    eprintln!("skipping: no etcd binary");
                    return;
                }
                let (store, _backend) = super::etcd_store().await;
                let mut c = super::Cluster::new(store).await;
                // With election on: a lone candidate leads.
                c.start_scheduler(super::test_config("s1", true));
                super::$scenario(&c).await;
            }
        }
    };
}

on_both_stores!(selectors_and_affinity);
on_both_stores!(taints_and_tolerations);
on_both_stores!(resources_and_new_nodes);
on_both_stores!(spread_by_owner);
on_both_stores!(pod_capacity_and_deletes);
on_both_stores!(host_ports);

async fn selectors_and_affinity(c: &Cluster) {
    for (name, labels) in [
        ("a", json!({"disk": "ssd"})),
        ("b", json!({"disk": "hdd", "zone": "z1"})),
        ("c", json!({"cores": "16"})),
    ] {
        let extra = json!({"metadata": {"labels": labels}});
        c.node(node(name, "4", "8Gi", 110, extra)).await;
    }
    let affinity = |terms: Value| {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": terms}}}})
    };
    c.pod("by-selector", json!({"nodeSelector": {"disk": "hdd"}}))
        .await;
    c.pod(
        "by-in",
        affinity(json!([{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["z0", "z1"]}]}])),
    )
    .await;
    c.pod(
        "by-gt",
        affinity(json!([{"matchExpressions": [
            {"key": "cores", "operator": "Gt", "values": ["8"]}]}])),
    )
    .await;
    c.pod(
        "by-field",
        affinity(json!([{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["a"]}]}])),
    )
    .await;
    c.pod(
        "by-not",
        affinity(json!([{"matchExpressions": [
            {"key": "disk", "operator": "DoesNotExist"}]}])),
    )
    .await;
    c.pod(
        "not-ours",
        json!({"schedulerName": "other-scheduler", "nodeSelector": {"disk": "ssd"}}),
    )
    .await;
    assert_eq!(c.bound("by-selector").await, "b");
    assert_eq!(c.bound("by-in").await, "b");
    assert_eq!(c.bound("by-gt").await, "c");
    assert_eq!(c.bound("by-field").await, "a");
    assert_eq!(c.bound("by-not").await, "c");
    let e = c.wait_event("by-selector", "Scheduled").await;
    assert_eq!(
        e["message"],
        "Successfully assigned default/by-selector to b"
    );
    assert_eq!(e["type"], "Normal");
    assert_eq!(e["involvedObject"]["kind"], "Pod");
    // Every pod of ours is placed; the other scheduler's pod is left alone.
    let pod = c.get_pod("not-ours").await;
    assert!(pod["spec"]["nodeName"].is_null(), "{pod}");
    assert!(pod["status"]["conditions"].is_null(), "{pod}");
    let bound = c.get_pod("by-field").await;
    assert_eq!(pod_scheduled(&bound).unwrap()["status"], "True");
}

async fn taints_and_tolerations(c: &Cluster) {
    for (name, extra) in [
        (
            "gpu",
            json!({"metadata": {"labels": {"kind": "gpu"}},
                "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        ),
        (
            "down",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        ),
        ("cordoned", json!({"spec": {"unschedulable": true}})),
        (
            "soft",
            json!({"spec": {"taints": [{"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}]}}),
        ),
        ("plain", json!({})),
    ] {
        c.node(node(name, "4", "8Gi", 110, extra)).await;
    }
    c.seen_node("plain").await;
    c.pod("anywhere", json!({})).await;
    assert_eq!(
        c.bound("anywhere").await,
        "plain",
        "PreferNoSchedule makes soft worse"
    );
    c.pod(
        "tolerates-gpu",
        json!({"nodeSelector": {"kind": "gpu"}, "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
    )
    .await;
    assert_eq!(c.bound("tolerates-gpu").await, "gpu");
    c.pod(
        "tolerates-not-ready",
        json!({"nodeSelector": {"kubernetes.io/hostname": "down"}, "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}]}),
    )
    .await;
    assert_eq!(c.bound("tolerates-not-ready").await, "down");
    c.pod("wants-gpu", json!({"nodeSelector": {"kind": "gpu"}}))
        .await;
    let msg = c.unschedulable("wants-gpu").await;
    assert_eq!(
        msg,
        "0/5 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
         1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
         1 node(s) were unschedulable, 2 node(s) didn't match Pod's node affinity/selector."
    );
    let e = c.wait_event("wants-gpu", "FailedScheduling").await;
    assert_eq!(e["message"], msg.as_str());
    assert_eq!(e["type"], "Warning");
    // Tolerating the taint later (tolerations may be added) lets it schedule.
    c.patch(
        "/api/v1/namespaces/default/pods/wants-gpu",
        json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}}),
    )
    .await;
    assert_eq!(c.bound("wants-gpu").await, "gpu");
}

async fn resources_and_new_nodes(c: &Cluster) {
    c.node(node(
        "tainted",
        "8",
        "8Gi",
        110,
        json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}}),
    ))
    .await;
    c.node(node("a", "2", "8Gi", 110, json!({}))).await;
    c.node(node("b", "2", "8Gi", 110, json!({}))).await;
    c.pod("first", cpu("1500m")).await;
    let first = c.bound("first").await;
    c.pod("second", cpu("1500m")).await;
    let second = c.bound("second").await;
    assert_ne!(first, second, "a full node sends the pod elsewhere");
    assert_ne!(first, "tainted");
    c.pod("third", cpu("1")).await;
    let msg = c.unschedulable("third").await;
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu."
    );
    let events = c.events("third", "FailedScheduling").await;
    assert!(!events.is_empty());
    assert_eq!(events[0]["message"], msg.as_str());
    assert_eq!(events[0]["involvedObject"]["name"], "third");
    // A node that fits arrives: the pod is retried and placed there.
    c.node(node("c", "2", "8Gi", 110, json!({}))).await;
    assert_eq!(c.bound("third").await, "c");
    let pod = c.get_pod("third").await;
    assert_eq!(pod_scheduled(&pod).unwrap()["status"], "True");
    // A node update (more cpu) also retries.
    c.pod("fourth", cpu("3")).await;
    assert_eq!(
        c.unschedulable("fourth").await,
        "0/4 nodes are available: 1 node(s) had untolerated taint {k: v}, 3 Insufficient cpu."
    );
    c.patch(
        "/api/v1/nodes/a/status",
        json!({"status": {"allocatable": {"cpu": "8"}}}),
    )
    .await;
    assert_eq!(c.bound("fourth").await, "a");
}

async fn spread_by_owner(c: &Cluster) {
    c.node(node("big", "64", "256Gi", 110, json!({}))).await;
    c.node(node("small", "4", "16Gi", 110, json!({}))).await;
    c.seen_node("small").await;
    let owned = |uid: &str| {
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": uid,
            "controller": true}])
    };
    let mut nodes = Vec::new();
    for i in 0..4 {
        c.create(
            "/api/v1/namespaces/default/pods",
            json!({"metadata": {"name": format!("web-{i}"), "ownerReferences": owned("rs-uid-1")},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .await;
        nodes.push(c.bound(&format!("web-{i}")).await);
    }
    let on_small = nodes.iter().filter(|n| *n == "small").count();
    assert_eq!(on_small, 2, "replicas spread over both nodes: {nodes:?}");
    // Without an owner the emptier (bigger) node wins: the spread above was the owner's.
    c.pod("loner-1", json!({})).await;
    c.pod("loner-2", json!({})).await;
    assert_eq!(c.bound("loner-1").await, "big");
    assert_eq!(c.bound("loner-2").await, "big");
}

async fn pod_capacity_and_deletes(c: &Cluster) {
    c.node(node("tiny", "4", "8Gi", 2, json!({}))).await;
    c.pod("p1", json!({})).await;
    c.pod("p2", json!({})).await;
    assert_eq!(c.bound("p1").await, "tiny");
    assert_eq!(c.bound("p2").await, "tiny");
    c.pod("p3", json!({})).await;
    assert_eq!(
        c.unschedulable("p3").await,
        "0/1 nodes are available: 1 Too many pods."
    );
    // A pod leaving the node makes room.
    c.delete_pod("p1").await;
    assert_eq!(c.bound("p3").await, "tiny");
    // A finished pod holds no room either.
    c.pod("p4", json!({})).await;
    c.unschedulable("p4").await;
    c.patch(
        "/api/v1/namespaces/default/pods/p2/status",
        json!({"status": {"phase": "Succeeded"}}),
    )
    .await;
    assert_eq!(c.bound("p4").await, "tiny");
}

async fn host_ports(c: &Cluster) {
    c.node(node("a", "4", "8Gi", 110, json!({}))).await;
    c.node(node("b", "4", "8Gi", 110, json!({}))).await;
    let port = |p: i32| {
        json!({"containers": [{"name": "c", "image": "busybox",
            "ports": [{"containerPort": 80, "hostPort": p}]}]})
    };
    c.pod("web-1", port(8080)).await;
    let first = c.bound("web-1").await;
    c.pod("web-2", port(8080)).await;
    let second = c.bound("web-2").await;
    assert_ne!(first, second, "host port 8080 is taken on {first}");
    c.pod("web-3", port(8080)).await;
    assert_eq!(
        c.unschedulable("web-3").await,
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
    );
    c.pod("other-port", port(9090)).await;
    c.bound("other-port").await;
}

/// Pods that fit nowhere, retried every second (flush) with events not rate-limited: one
/// `PodScheduled=False` patch per pod however often it is retried, and one FailedScheduling
/// event per pod whose count goes up instead of a new event per attempt.
async fn no_write_storm(store: Arc<dyn Store>) {
    const PODS: usize = 200;
    let mut c = Cluster::new(store).await;
    c.start_scheduler(SchedulerConfig {
        unschedulable_retry: Duration::from_secs(1),
        event_min_interval: Duration::ZERO,
        ..test_config("s1", false)
    });
    for i in 0..PODS {
        c.pod(&format!("wait-{i:03}"), json!({})).await;
    }
    let list = |path: &'static str| {
        let c = &c;
        async move {
            c.get(path).await["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let versions: std::collections::BTreeMap<String, String> = loop {
        let pods = list("/api/v1/namespaces/default/pods").await;
        let marked = pods
            .iter()
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                })
            })
            .count();
        if marked == PODS {
            break pods
                .iter()
                .map(|p| {
                    (
                        p["metadata"]["name"].as_str().unwrap().to_string(),
                        p["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    )
                })
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{marked}/{PODS} pods marked unschedulable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Wait for every pod to have been retried (after a flush) at least twice.
    let events = loop {
        let events =
            list("/api/v1/namespaces/default/events?fieldSelector=reason%3DFailedScheduling").await;
        let retried = events
            .iter()
            .filter(|e| e["count"].as_i64() >= Some(3))
            .count();
        if retried == PODS {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{retried}/{PODS} events counted 3 retries ({} events)",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(events.len(), PODS, "one event per pod");
    let e = &events[0];
    assert_eq!(e["message"], "no nodes available to schedule pods");
    assert_eq!(e["type"], "Warning");
    assert!(
        e["lastTimestamp"].as_str() >= e["firstTimestamp"].as_str(),
        "{e}"
    );
    // Retries wrote no status: every pod is at the version it had once marked.
    for p in list("/api/v1/namespaces/default/pods").await {
        let name = p["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            p["metadata"]["resourceVersion"].as_str(),
            versions.get(name).map(String::as_str),
            "{name} was written again: {}",
            p["status"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_storm_embedded() {
    let (store, _backend) = embedded_store().await;
    no_write_storm(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_storm_etcd() {
    if !etcd_available() {
        eprintln!("skipping: no etcd binary");
        return;
    }
    let (store, _backend) = etcd_store().await;
    no_write_storm(store).await;
}

/// The lease's holder, if any.
async fn lease_holder(c: &Cluster) -> Option<String> {
    let r = c
        .call(
            Method::GET,
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/keelson-scheduler",
            None,
        )
        .await;
    r.body["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_on_etcd() {
    if !etcd_available() {
        eprintln!("skipping: no etcd binary");
        return;
    }
    support::init_tracing();
    let etcd = support::Etcd::start(1).await;
    let mut one = Cluster::new(Arc::new(etcd.connect().await)).await;
    let mut two = Cluster::new(Arc::new(etcd.connect().await)).await;
    let i1 = one.start_scheduler(test_config("replica-1", true));
    let i2 = two.start_scheduler(test_config("replica-2", true));
    let deadline = tokio::time::Instant::now() + WAIT;
    let leader = loop {
        if let Some(h) = lease_holder(&one).await {
            break h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The lease stays with one holder while it renews (longer than a lease duration).
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(lease_holder(&two).await.as_deref(), Some(leader.as_str()));
    }
    one.node(node("n1", "4", "8Gi", 110, json!({}))).await;
    one.pod("before", json!({})).await;
    assert_eq!(one.bound("before").await, "n1");
    let e = one.wait_event("before", "Scheduled").await;
    assert_eq!(
        e["reportingInstance"],
        leader.as_str(),
        "only the leader schedules"
    );
    assert_eq!(one.events("before", "Scheduled").await.len(), 1);

    // The leader dies without giving the lease back: the other takes over once it expires.
    let (dead, alive, follower) = if leader == "replica-1" {
        (&mut one, &two, "replica-2")
    } else {
        (&mut two, &one, "replica-1")
    };
    let idx = if leader == "replica-1" { i1 } else { i2 };
    dead.schedulers[idx].abort();
    let killed = tokio::time::Instant::now();
    alive.pod("after", json!({})).await;
    assert_eq!(alive.bound("after").await, "n1");
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "takeover took {took:?} with a 2 s lease"
    );
    assert_eq!(lease_holder(alive).await.as_deref(), Some(follower));
    let e = alive.wait_event("after", "Scheduled").await;
    assert_eq!(e["reportingInstance"], follower);
    let lease = alive
        .call(
            Method::GET,
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/keelson-scheduler",
            None,
        )
        .await
        .body;
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);
}

/// Heap bytes in use: glibc's count over all arenas, mmapped blocks included (0 elsewhere).
fn heap_in_use() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let m = unsafe { libc::mallinfo2() };
        m.uordblks + m.hblkhd
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (heap in use, RSS) in MiB once the process has had a moment to settle.
async fn memory() -> (f64, f64) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    (heap_in_use() as f64 / 1048576.0, rss_kib() as f64 / 1024.0)
}

/// A pod like the server bench's; `node` binds it at creation.
fn bench_pod(name: &str, node: Option<&str>, extra: Value) -> Value {
    let mut p = json!({
        "metadata": {"name": name, "labels": {"app": "bench", "shard": "1"}},
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "app",
                "image": "registry.example/bench/app:1",
                "command": ["/bin/sh", "-c", "sleep 3600"],
                "ports": [{"containerPort": 8080}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            }],
        },
    });
    json_patch::merge(&mut p, &extra);
    p
}

/// A measurement, not a check: what the scheduler's cache of 5000 bound pods and of 5000
/// pending ones costs, as the heap the scheduler frees when it stops (and RSS for reference).
/// `cargo test -p keelson-server --test scheduler -- --ignored --nocapture memory_with_5000`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn memory_with_5000_pods() {
    const PODS: usize = 5000;
    let (store, _backend) = embedded_store().await;
    let mut c = Cluster::new(store).await;
    c.node(node("n0", "1000", "4000Gi", 100_000, json!({})))
        .await;
    for i in 0..PODS {
        c.create(
            "/api/v1/namespaces/default/pods",
            bench_pod(&format!("bound-{i:04}"), Some("n0"), json!({})),
        )
        .await;
    }
    let before = memory().await;
    let s = c.start_scheduler(test_config("mem", false));
    c.pod("probe", json!({})).await;
    c.bound("probe").await;
    let loaded = memory().await;
    c.schedulers[s].abort();
    let stopped = memory().await;
    println!(
        "{PODS} bound pods: heap {:.1} -> {:.1} MiB with the scheduler, {:.1} MiB after it stopped \
         (its cache: {:.1} MiB); RSS {:.1} -> {:.1} MiB",
        before.0,
        loaded.0,
        stopped.0,
        loaded.0 - stopped.0,
        before.1,
        loaded.1
    );

    for i in 0..PODS {
        c.create(
            "/api/v1/namespaces/default/pods",
            bench_pod(
                &format!("pending-{i:04}"),
                None,
                json!({"spec": {"nodeSelector": {"nowhere": "true"}}}),
            ),
        )
        .await;
    }
    let before = memory().await;
    let started = tokio::time::Instant::now();
    let s = c.start_scheduler(test_config("mem", false));
    let last = format!("pending-{:04}", PODS - 1);
    loop {
        let pod = c.get_pod(&last).await;
        if pod["status"]["conditions"].is_array() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{last} not marked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let marked = started.elapsed();
    let loaded = memory().await;
    c.schedulers[s].abort();
    let stopped = memory().await;
    println!(
        "{PODS} bound + {PODS} pending pods: all marked unschedulable in {:.1} s; heap {:.1} -> \
         {:.1} MiB with the scheduler, {:.1} MiB after it stopped (its cache: {:.1} MiB); RSS \
         {:.1} -> {:.1} MiB",
        marked.as_secs_f64(),
        before.0,
        loaded.0,
        stopped.0,
        loaded.0 - stopped.0,
        before.1,
        loaded.1
    );
}

/// A watch that times out (`watch_timeout` 1 s here) is resumed from the last resourceVersion
/// it saw, keeping the cache: pods created and deleted after several timeouts are still
/// acted on, and nothing is listed again. The one list is read in pages (of 2 here).
async fn watch_timeouts_resume_without_relisting(store: Arc<dyn Store>) {
    let mut c = Cluster::new(store).await;
    c.node(node("n1", "4", "8Gi", 110, json!({}))).await;
    c.node(node("n2", "4", "8Gi", 110, json!({}))).await;
    c.node(node("n3", "4", "8Gi", 110, json!({}))).await;
    // 2.5 cpu bound to n1 before the scheduler starts: three pages of pods.
    for i in 0..5 {
        let mut spec = cpu("500m");
        spec["nodeName"] = json!("n1");
        c.create(
            "/api/v1/namespaces/default/pods",
            json!({"metadata": {"name": format!("old-{i}")}, "spec": spec}),
        )
        .await;
    }
    let s = Scheduler::new(
        c.api.clone(),
        SchedulerConfig {
            watch_timeout: Duration::from_secs(1),
            list_page_size: 2,
            ..test_config("s1", false)
        },
    );
    let stats = s.stats();
    c.schedulers.push(tokio::spawn(s.run()));
    // Every bound pod of every page counts: 2 cpu do not fit on n1 any more.
    let mut big = cpu("2");
    big["nodeSelector"] = json!({"kubernetes.io/hostname": "n1"});
    c.pod("big", big).await;
    c.unschedulable("big").await;

    // Let both watches time out (and be resumed) a few times.
    let deadline = tokio::time::Instant::now() + WAIT;
    while stats.rewatches() < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watches not resumed: {} rewatches",
            stats.rewatches()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new pod right after a timeout is scheduled promptly.
    let started = tokio::time::Instant::now();
    c.pod("after-timeout", cpu("100m")).await;
    c.bound("after-timeout").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bound only after {:?}",
        started.elapsed()
    );
    // Deletes seen through a resumed watch free n1 for the pending pod.
    c.delete_pod("old-0").await;
    c.delete_pod("old-1").await;
    assert_eq!(c.bound("big").await, "n1");
    // And a node added now is seen by the resumed node watch.
    c.node(node("n4", "4", "8Gi", 110, json!({}))).await;
    c.seen_node("n4").await;

    assert_eq!(stats.relists(), 1, "listed again");
    assert_eq!(stats.panics(), 0);
    assert!(stats.rewatches() >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_timeouts_resume_embedded() {
    let (store, _backend) = embedded_store().await;
    watch_timeouts_resume_without_relisting(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_timeouts_resume_etcd() {
    if !etcd_available() {
        eprintln!("skipping: no etcd binary");
        return;
    }
    let (store, _backend) = etcd_store().await;
    watch_timeouts_resume_without_relisting(store).await;
}
