//! Who may do what, decided after authentication and before a request is served.
//!
//! - `system:masters` (the admin token is in it): everything.
//! - Nodes (`system:node:<name>` in `system:nodes`), like Kubernetes' Node authorizer plus
//!   NodeRestriction admission:
//!   - get/list/watch nodes, pods, services, endpoints, namespaces, events, leases (and the
//!     `status` subresources);
//!   - get configmaps, secrets, serviceaccounts only when a pod bound to the node references
//!     them (volumes, projected volumes, env `valueFrom`, `envFrom`, `imagePullSecrets`,
//!     the service account); list/watch of them only with `fieldSelector=metadata.name=<n>`
//!     for such an object (what the kubelet's per-object watches send), else denied;
//!   - create/update/patch/delete its own Node (and `nodes/status`);
//!   - create/get/update/patch its own Lease `kube-node-lease/<node>`;
//!   - update/patch `pods/status` and delete pods whose `spec.nodeName` is itself;
//!   - create mirror pods (annotation `kubernetes.io/config.mirror`) bound to itself that,
//!     like NodeRestriction demands, reference no secrets, configmaps, service account
//!     (`serviceAccountName`, projected service account tokens), cluster trust bundles,
//!     persistentvolumeclaims (or ephemeral volumes) or resource claims, and whose owner
//!     references are none or a single controller reference to its own Node (with that
//!     Node's uid); mirror pods never count as referencing anything for the reads above;
//!   - create/patch events;
//!   - nothing else (no logs, exec, proxy, bindings, other writes).
//! - The node-token bootstrap user (`system:bootstrappers`): the node reads of the first
//!   item above, nothing more.
//! - Every other authenticated user (client certificates without those groups): read-only,
//!   like Kubernetes' `view` role bound to everyone: get/list/watch of every kind but
//!   secrets, and `pods/log` (GET only: another method on it is a write, refused); no writes,
//!   exec, attach, port-forward or nodes/proxy.
//!
//! Discovery, `/version`, `/openapi` and health endpoints are not authorized here: every
//! authenticated user may read them.

use std::collections::HashMap;

use http_body_util::Full;
use hyper::{Method, Request, Response};
use serde_json::Value;
use thiserror::Error;

use super::auth::User;
use super::raw;
use super::resources::{Kind, Resource};
use super::status::ApiError;
use super::{ApiServer, Body, RequestBody, Target, body_json, parse_query, read_body};
use crate::store::Pages;

/// The namespace of node heartbeats.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The annotation that makes a pod a mirror pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// A refused request, worded like Kubernetes' Forbidden messages.
#[derive(Debug, Error)]
#[error("{object} is forbidden: User {user:?} cannot {verb} resource {resource:?} in API group {group:?} {scope}{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
pub struct Forbidden {
    /// `pods "x"` or `pods` (a collection).
    object: String,
    user: String,
    verb: String,
    /// `pods/status`.
    resource: String,
    group: String,
    /// `in the namespace "ns"` or `at the cluster scope`.
    scope: String,
    reason: Option<String>,
}

impl From<Forbidden> for ApiError {
    fn from(f: Forbidden) -> ApiError {
        ApiError::Forbidden(f.to_string())
    }
}

/// What is asked: the verb and the object.
pub(super) struct Attributes<'a> {
    pub verb: &'static str,
    pub target: &'a Target,
    pub query: &'a HashMap<String, String>,
}

impl Attributes<'_> {
    fn forbidden(&self, user: &User, reason: Option<String>) -> Forbidden {
        let t = self.target;
        let object = match &t.name {
            Some(n) => format!("{} {n:?}", t.res.qualified()),
            None => t.res.qualified(),
        };
        let resource = match &t.sub {
            Some(s) => format!("{}/{s}", t.res.plural),
            None => t.res.plural.to_string(),
        };
        let scope = match &t.namespace {
            Some(ns) if t.res.namespaced => format!("in the namespace {ns:?}"),
            _ => "at the cluster scope".to_string(),
        };
        Forbidden {
            object,
            user: user.name.clone(),
            verb: self.verb.to_string(),
            resource,
            group: t.res.group.to_string(),
            scope,
            reason,
        }
    }
}

/// The Kubernetes verb of a request.
pub(super) fn verb(method: &Method, t: &Target, q: &HashMap<String, String>) -> &'static str {
    match t.sub.as_deref() {
        // Other methods on pods/log are what they say (create, update, ...): only masters.
        Some("log") if matches!(*method, Method::GET | Method::HEAD) => return "get",
        Some("exec" | "attach" | "portforward") => return "create",
        _ => {}
    }
    let named = t.name.is_some();
    match *method {
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD
            if matches!(
                q.get("watch").map(String::as_str),
                Some("1" | "true" | "True")
            ) =>
        {
            "watch"
        }
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

fn is_read(verb: &str) -> bool {
    matches!(verb, "get" | "list" | "watch")
}

/// Kinds every node (and the node-token bootstrap user) may read.
fn node_readable(plural: &str) -> bool {
    matches!(
        plural,
        "nodes" | "pods" | "services" | "endpoints" | "namespaces" | "events" | "leases"
    )
}

/// Names of the objects of `kind` a pod references.
pub fn pod_references(pod: &Value, kind: Kind) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |v: &Value| {
        if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
            out.push(s.to_string());
        }
    };
    let spec = &pod["spec"];
    let empty = Vec::new();
    let arr = |v: &Value| v.as_array().cloned().unwrap_or_default();
    match kind {
        Kind::ServiceAccount => {
            let sa = spec["serviceAccountName"]
                .as_str()
                .or_else(|| spec["serviceAccount"].as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or("default");
            out.push(sa.to_string());
            return out;
        }
        Kind::Secret | Kind::ConfigMap => {}
        _ => return out,
    }
    let secret = kind == Kind::Secret;
    if secret {
        for s in spec["imagePullSecrets"].as_array().unwrap_or(&empty) {
            push(&s["name"]);
        }
    }
    for v in spec["volumes"].as_array().unwrap_or(&empty) {
        if secret {
            push(&v["secret"]["secretName"]);
            push(&v["csi"]["nodePublishSecretRef"]["name"]);
        } else {
            push(&v["configMap"]["name"]);
        }
        for src in arr(&v["projected"]["sources"]) {
            push(&src[if secret { "secret" } else { "configMap" }]["name"]);
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec[list].as_array().unwrap_or(&empty) {
            for e in arr(&c["env"]) {
                push(
                    &e["valueFrom"][if secret {
                        "secretKeyRef"
                    } else {
                        "configMapKeyRef"
                    }]["name"],
                );
            }
            for e in arr(&c["envFrom"]) {
                push(&e[if secret { "secretRef" } else { "configMapRef" }]["name"]);
            }
        }
    }
    out
}

/// Whether `pod` is a mirror pod (annotation [`MIRROR_ANNOTATION`]).
pub fn is_mirror_pod(pod: &Value) -> bool {
    pod["metadata"]["annotations"]
        .get(MIRROR_ANNOTATION)
        .is_some()
}

/// Secrets named by in-tree volume sources `pod_references` leaves out (Kubernetes'
/// `VisitPodSecretNames` visits them too).
fn in_tree_volume_secrets(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let names = [
            &v["azureFile"]["secretName"],
            &v["cephfs"]["secretRef"]["name"],
            &v["cinder"]["secretRef"]["name"],
            &v["flexVolume"]["secretRef"]["name"],
            &v["iscsi"]["secretRef"]["name"],
            &v["rbd"]["secretRef"]["name"],
            &v["scaleIO"]["secretRef"]["name"],
            &v["storageos"]["secretRef"]["name"],
        ];
        out.extend(
            names
                .into_iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    out
}

/// Why node `node` may not create the mirror pod `pod`, if it may not: NodeRestriction's
/// rules for mirror pods (the annotation and `spec.nodeName` are checked before).
/// The owner reference's uid is checked against the Node by the caller.
pub fn mirror_pod_refusal(pod: &Value, node: &str) -> Option<String> {
    let spec = &pod["spec"];
    let cannot = |what: String| {
        Some(format!(
            "node {node:?} cannot create a mirror pod that {what}"
        ))
    };
    let owners = pod["metadata"]["ownerReferences"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    match owners {
        [] => {}
        [o] => {
            let own_node = o["apiVersion"].as_str() == Some("v1")
                && o["kind"].as_str() == Some("Node")
                && o["name"].as_str() == Some(node);
            if !own_node || o["controller"].as_bool() != Some(true) {
                return cannot(format!(
                    "has an owner reference other than a controller reference to its own Node {node:?}"
                ));
            }
            if o["blockOwnerDeletion"].as_bool() == Some(true) {
                return cannot("sets blockOwnerDeletion on its owner reference".into());
            }
        }
        _ => return cannot("has more than one owner reference".into()),
    }
    let sa = spec["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| spec["serviceAccount"].as_str().filter(|s| !s.is_empty()));
    if let Some(sa) = sa {
        return cannot(format!("references service account {sa:?}"));
    }
    let volumes = spec["volumes"].as_array().map_or(&[][..], Vec::as_slice);
    let named = |v: &Value| format!("{:?}", v["name"].as_str().unwrap_or_default());
    for (kind, volume, one, many) in [
        (Kind::Secret, "secret", "a secret", "secrets"),
        (Kind::ConfigMap, "configMap", "a configmap", "configmaps"),
    ] {
        let mut names = pod_references(pod, kind);
        if kind == Kind::Secret {
            names.extend(in_tree_volume_secrets(pod));
        }
        if !names.is_empty() {
            names.sort();
            names.dedup();
            return cannot(format!("references {many} {names:?}"));
        }
        // A source without a name references one all the same.
        if let Some(v) = volumes.iter().find(|v| v[volume].is_object()) {
            return cannot(format!("references {one} (volume {})", named(v)));
        }
    }
    for v in volumes {
        if let Some(claim) = v.get("persistentVolumeClaim") {
            return cannot(format!(
                "references persistentvolumeclaim {:?} (volume {})",
                claim["claimName"].as_str().unwrap_or_default(),
                named(v)
            ));
        }
        if v.get("ephemeral").is_some() {
            return cannot(format!(
                "references a persistentvolumeclaim (ephemeral volume {})",
                named(v)
            ));
        }
        for src in v["projected"]["sources"].as_array().into_iter().flatten() {
            if src.get("serviceAccountToken").is_some() {
                return cannot(format!(
                    "references a service account token (projected volume {})",
                    named(v)
                ));
            }
            if src.get("clusterTrustBundle").is_some() {
                return cannot(format!(
                    "references a cluster trust bundle (projected volume {})",
                    named(v)
                ));
            }
            // Unnamed secret or configMap sources (named ones are caught above).
            for kind in ["secret", "configMap"] {
                if src.get(kind).is_some() {
                    return cannot(format!(
                        "references a {} (projected volume {})",
                        kind.to_lowercase(),
                        named(v)
                    ));
                }
            }
        }
    }
    if let Some(claims) = spec["resourceClaims"].as_array().filter(|c| !c.is_empty()) {
        let names: Vec<&str> = claims.iter().filter_map(|c| c["name"].as_str()).collect();
        return cannot(format!("references resource claims {names:?}"));
    }
    None
}

impl ApiServer {
    /// Authorizes `req` for `user` and serves it. A node's create of a pod, Node or Lease is
    /// decided on the body, which is read first.
    pub(super) async fn authorize_and_serve<B: RequestBody>(
        &self,
        user: &User,
        t: Target,
        req: Request<B>,
    ) -> Result<Response<Body>, ApiError> {
        if user.is_master() {
            return self.serve(t, req).await;
        }
        let q = parse_query(req.uri().query());
        let v = verb(req.method(), &t, &q);
        let attrs = Attributes {
            verb: v,
            target: &t,
            query: &q,
        };
        let body_matters = user.node_name().is_some()
            && v == "create"
            && t.sub.is_none()
            && matches!(t.res.kind, Kind::Pod | Kind::Node | Kind::Lease);
        if !body_matters {
            self.authorize(user, &attrs, None).await?;
            return self.serve(t, req).await;
        }
        let content_type = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (parts, body) = req.into_parts();
        let bytes = read_body(Request::new(body)).await?;
        let obj = body_json(t.res, &content_type, &bytes)?;
        self.authorize(user, &attrs, Some(&obj)).await?;
        self.serve(t, Request::from_parts(parts, Full::new(bytes)))
            .await
    }

    /// Ok if `user` may do what `attrs` says; `body` is the object of a create.
    pub(super) async fn authorize(
        &self,
        user: &User,
        attrs: &Attributes<'_>,
        body: Option<&Value>,
    ) -> Result<(), ApiError> {
        if user.is_master() {
            return Ok(());
        }
        let t = attrs.target;
        let sub = t.sub.as_deref();
        let decision = if let Some(node) = user.node_name() {
            self.node_may(node, attrs, body).await?
        } else if user.in_group(super::auth::BOOTSTRAPPERS_GROUP) {
            if is_read(attrs.verb)
                && node_readable(t.res.plural)
                && matches!(sub, None | Some("status"))
            {
                Ok(())
            } else {
                Err(None)
            }
        } else if is_read(attrs.verb)
            && t.res.kind != Kind::Secret
            && matches!(sub, None | Some("status") | Some("log"))
        {
            Ok(())
        } else {
            Err(None)
        };
        decision.map_err(|reason| attrs.forbidden(user, reason).into())
    }

    /// The node rules: `Ok(Err(reason))` denies.
    async fn node_may(
        &self,
        node: &str,
        attrs: &Attributes<'_>,
        body: Option<&Value>,
    ) -> Result<Result<(), Option<String>>, ApiError> {
        let t = attrs.target;
        let verb = attrs.verb;
        let sub = t.sub.as_deref();
        let name = t.name.as_deref();
        let deny = |why: String| Ok(Err(Some(why)));
        if matches!(sub, Some(s) if s != "status") {
            return Ok(Err(None));
        }
        if is_read(verb) && node_readable(t.res.plural) {
            return Ok(Ok(()));
        }
        match (t.res.kind, verb) {
            (Kind::ConfigMap | Kind::Secret | Kind::ServiceAccount, "get" | "list" | "watch")
                if sub.is_none() =>
            {
                let wanted = match (verb, name) {
                    ("get", Some(n)) => Some(n.to_string()),
                    _ => attrs
                        .query
                        .get("fieldSelector")
                        .and_then(|f| {
                            f.strip_prefix("metadata.name==")
                                .or_else(|| f.strip_prefix("metadata.name="))
                        })
                        .filter(|n| !n.is_empty() && !n.contains(','))
                        .map(str::to_string),
                };
                let (Some(wanted), Some(ns)) = (wanted, t.namespace.as_deref()) else {
                    return deny(format!(
                        "node {node:?} may only {verb} single {} referenced by its pods (fieldSelector=metadata.name=<name>)",
                        t.res.plural
                    ));
                };
                if self.referenced(node, ns, t.res.kind, &wanted).await? {
                    Ok(Ok(()))
                } else {
                    deny(format!(
                        "no relationship found between node {node:?} and this object"
                    ))
                }
            }
            (Kind::Node, "create") if sub.is_none() => {
                let named = body.and_then(|b| b["metadata"]["name"].as_str());
                if named == Some(node) {
                    Ok(Ok(()))
                } else {
                    deny(format!("node {node:?} may only create its own Node"))
                }
            }
            (Kind::Node, "update" | "patch" | "delete") => {
                if name == Some(node) {
                    Ok(Ok(()))
                } else {
                    deny(format!("node {node:?} may only change its own Node"))
                }
            }
            (Kind::Lease, "create" | "update" | "patch") if sub.is_none() => {
                let lease = if verb == "create" {
                    body.and_then(|b| b["metadata"]["name"].as_str())
                } else {
                    name
                };
                if t.namespace.as_deref() == Some(NODE_LEASE_NAMESPACE) && lease == Some(node) {
                    Ok(Ok(()))
                } else {
                    deny(format!(
                        "node {node:?} may only change its own Lease {NODE_LEASE_NAMESPACE}/{node}"
                    ))
                }
            }
            (Kind::Pod, "update" | "patch") if sub == Some("status") => {
                self.pod_bound_to(node, t, "update the status of").await
            }
            (Kind::Pod, "delete") if sub.is_none() => self.pod_bound_to(node, t, "delete").await,
            (Kind::Pod, "create") if sub.is_none() => {
                let pod = body.unwrap_or(&Value::Null);
                let bound = pod["spec"]["nodeName"].as_str() == Some(node);
                if !is_mirror_pod(pod) || !bound {
                    return deny(format!(
                        "node {node:?} may only create mirror pods (annotation {MIRROR_ANNOTATION}) bound to itself"
                    ));
                }
                if let Some(why) = mirror_pod_refusal(pod, node) {
                    return deny(why);
                }
                self.owner_is_this_node(node, pod).await
            }
            // Core and events.k8s.io Events alike.
            (_, "create" | "patch") if t.res.plural == "events" && sub.is_none() => Ok(Ok(())),
            _ => Ok(Err(None)),
        }
    }

    /// Ok if the mirror pod `pod` has no owner reference or one with the uid of the Node
    /// `node` (the rest of the reference is checked by [`mirror_pod_refusal`]); NotFound if
    /// it has one and the Node does not exist, as NodeRestriction answers.
    async fn owner_is_this_node(
        &self,
        node: &str,
        pod: &Value,
    ) -> Result<Result<(), Option<String>>, ApiError> {
        let Some(owner) = pod["metadata"]["ownerReferences"].get(0) else {
            return Ok(Ok(()));
        };
        let t = Target {
            res: Resource::find("", "v1", "nodes").expect("nodes are served"),
            namespace: None,
            name: Some(node.to_string()),
            sub: None,
        };
        let (_, current) = self.current(&t).await?;
        let uid = current["metadata"]["uid"].as_str().unwrap_or_default();
        let claimed = owner["uid"].as_str().unwrap_or_default();
        if !uid.is_empty() && claimed == uid {
            Ok(Ok(()))
        } else {
            Ok(Err(Some(format!(
                "node {node:?} cannot create a mirror pod whose owner reference has uid {claimed:?}: its Node has uid {uid:?}"
            ))))
        }
    }

    /// Ok if the pod `t` names is bound to `node`; NotFound if it does not exist.
    async fn pod_bound_to(
        &self,
        node: &str,
        t: &Target,
        what: &str,
    ) -> Result<Result<(), Option<String>>, ApiError> {
        let (_, pod) = self.current(t).await?;
        let bound = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if bound == node {
            return Ok(Ok(()));
        }
        let other = if bound.is_empty() {
            "no node".to_string()
        } else {
            format!("node {bound:?}")
        };
        Ok(Err(Some(format!(
            "node {node:?} can only {what} pods with spec.nodeName set to itself (pod {:?} is bound to {other})",
            t.name()
        ))))
    }

    /// Whether a pod in `ns` bound to `node` references the `kind` object `name`. Mirror pods
    /// do not count (a node creates them itself), as in Kubernetes' Node authorizer. Pods whose
    /// stored bytes lack `"nodeName":"<node>"` are skipped before they are parsed: objects are
    /// stored as compact JSON (`to_stored`).
    async fn referenced(
        &self,
        node: &str,
        ns: &str,
        kind: Kind,
        name: &str,
    ) -> Result<bool, ApiError> {
        let pods = Resource::find("", "v1", "pods").expect("pods are served");
        let prefix = pods.prefix(Some(ns));
        let needle = node_name_needle(node);
        let mut pages = Pages::new(&*self.store, &prefix, 500);
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| ApiError::from_store(e, "pods", ""))?;
            for kv in &page.items {
                if !raw::contains(&kv.value, needle.as_bytes()) {
                    continue;
                }
                let Ok(pod) = serde_json::from_slice::<Value>(&kv.value) else {
                    continue;
                };
                if pod["spec"]["nodeName"].as_str() == Some(node)
                    && !is_mirror_pod(&pod)
                    && pod_references(&pod, kind).iter().any(|r| r == name)
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// `"nodeName":"<node>"` as compact JSON writes it (the node's name escaped like any string).
fn node_name_needle(node: &str) -> String {
    format!("\"nodeName\":{}", Value::from(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references() {
        let pod = json!({"spec": {
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "configMap": {"name": "vol-cm"}},
                {"name": "c", "projected": {"sources": [{"secret": {"name": "proj-secret"}}, {"configMap": {"name": "proj-cm"}}]}},
            ],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
            ], "envFrom": [{"secretRef": {"name": "from-secret"}}, {"configMapRef": {"name": "from-cm"}}]}],
        }});
        let mut s = pod_references(&pod, Kind::Secret);
        s.sort();
        assert_eq!(
            s,
            [
                "env-secret",
                "from-secret",
                "proj-secret",
                "pull",
                "vol-secret"
            ]
        );
        let mut c = pod_references(&pod, Kind::ConfigMap);
        c.sort();
        assert_eq!(c, ["env-cm", "from-cm", "proj-cm", "vol-cm"]);
        assert_eq!(pod_references(&pod, Kind::ServiceAccount), ["default"]);
        let sa = json!({"spec": {"serviceAccountName": "robot"}});
        assert_eq!(pod_references(&sa, Kind::ServiceAccount), ["robot"]);
    }

    #[test]
    fn forbidden_message() {
        let t = Target {
            res: Resource::find("", "v1", "pods").unwrap(),
            namespace: Some("default".into()),
            name: Some("x".into()),
            sub: Some("status".into()),
        };
        let q = HashMap::new();
        let a = Attributes {
            verb: "patch",
            target: &t,
            query: &q,
        };
        assert_eq!(
            a.forbidden(&User::node("n1"), Some("why".into()))
                .to_string(),
            r#"pods "x" is forbidden: User "system:node:n1" cannot patch resource "pods/status" in API group "" in the namespace "default": why"#
        );
        let t = Target {
            res: Resource::find("coordination.k8s.io", "v1", "leases").unwrap(),
            namespace: Some("kube-node-lease".into()),
            name: None,
            sub: None,
        };
        let a = Attributes {
            verb: "list",
            target: &t,
            query: &q,
        };
        assert_eq!(
            a.forbidden(&User::node("n1"), None).to_string(),
            r#"leases.coordination.k8s.io is forbidden: User "system:node:n1" cannot list resource "leases" in API group "coordination.k8s.io" in the namespace "kube-node-lease""#
        );
    }

    fn mirror(spec: Value) -> Value {
        json!({"metadata": {"name": "m", "annotations": {MIRROR_ANNOTATION: "hash"}}, "spec": spec})
    }

    #[test]
    fn mirror_pods_may_not_reference_other_objects() {
        let c = json!([{"name": "c", "image": "busybox"}]);
        let refused = |spec: Value| {
            let mut spec = spec;
            spec["nodeName"] = json!("n1");
            if spec.get("containers").is_none() {
                spec["containers"] = c.clone();
            }
            mirror_pod_refusal(&mirror(spec), "n1").expect("refused")
        };
        assert_eq!(
            mirror_pod_refusal(&mirror(json!({"containers": c})), "n1"),
            None
        );
        let plain = json!({"volumes": [{"name": "d", "emptyDir": {}}, {"name": "h", "hostPath": {"path": "/x"}},
            {"name": "p", "projected": {"sources": [{"downwardAPI": {"items": []}}]}}]});
        assert_eq!(mirror_pod_refusal(&mirror(plain), "n1"), None);
        assert_eq!(
            refused(json!({"volumes": [{"name": "v", "secret": {"secretName": "s1"}}]})),
            r#"node "n1" cannot create a mirror pod that references secrets ["s1"]"#
        );
        let cases = [
            (
                json!({"imagePullSecrets": [{"name": "pull"}]}),
                r#"references secrets ["pull"]"#,
            ),
            (
                json!({"volumes": [{"name": "v", "secret": {}}]}),
                r#"references a secret (volume "v")"#,
            ),
            (
                json!({"volumes": [{"name": "v", "rbd": {"secretRef": {"name": "ceph"}}}]}),
                r#"references secrets ["ceph"]"#,
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": "ps"}}]}}]}),
                r#"references secrets ["ps"]"#,
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"secret": {}}]}}]}),
                r#"references a secret (projected volume "v")"#,
            ),
            (
                json!({"containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "es"}}]}]}),
                r#"references secrets ["es"]"#,
            ),
            (
                json!({"volumes": [{"name": "v", "configMap": {"name": "cm"}}]}),
                r#"references configmaps ["cm"]"#,
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"configMap": {"name": "pc"}}]}}]}),
                r#"references configmaps ["pc"]"#,
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"configMap": {}}]}}]}),
                r#"references a configmap (projected volume "v")"#,
            ),
            (
                json!({"containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "ec", "key": "k"}}}]}]}),
                r#"references configmaps ["ec"]"#,
            ),
            (
                json!({"serviceAccountName": "robot"}),
                r#"references service account "robot""#,
            ),
            (
                json!({"serviceAccount": "default"}),
                r#"references service account "default""#,
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}),
                r#"references a service account token (projected volume "v")"#,
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"clusterTrustBundle": {"name": "b", "path": "p"}}]}}]}),
                r#"references a cluster trust bundle (projected volume "v")"#,
            ),
            (
                json!({"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]}),
                r#"references persistentvolumeclaim "data" (volume "v")"#,
            ),
            (
                json!({"volumes": [{"name": "v", "ephemeral": {"volumeClaimTemplate": {}}}]}),
                r#"references a persistentvolumeclaim (ephemeral volume "v")"#,
            ),
            (
                json!({"resourceClaims": [{"name": "gpu"}]}),
                r#"references resource claims ["gpu"]"#,
            ),
        ];
        for (spec, why) in cases {
            let got = refused(spec.clone());
            assert!(got.ends_with(why), "{spec}: {got}");
            assert!(
                got.starts_with(r#"node "n1" cannot create a mirror pod that "#),
                "{got}"
            );
        }
    }

    #[test]
    fn mirror_pods_are_owned_by_their_node_or_nothing() {
        let owned = |refs: Value| {
            let mut p = mirror(json!({"nodeName": "n1"}));
            p["metadata"]["ownerReferences"] = refs;
            mirror_pod_refusal(&p, "n1")
        };
        let own = json!({"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "u", "controller": true});
        assert_eq!(owned(json!([])), None);
        assert_eq!(owned(json!([own.clone()])), None);
        let mut other = own.clone();
        other["name"] = json!("n2");
        let mut not_controller = own.clone();
        not_controller["controller"] = json!(false);
        let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "n1", "uid": "u", "controller": true});
        for refs in [json!([other]), json!([not_controller]), json!([rs])] {
            let why = owned(refs).expect("refused");
            assert_eq!(
                why,
                r#"node "n1" cannot create a mirror pod that has an owner reference other than a controller reference to its own Node "n1""#
            );
        }
        assert!(
            owned(json!([own.clone(), own.clone()]))
                .unwrap()
                .ends_with("has more than one owner reference")
        );
        let mut blocking = own;
        blocking["blockOwnerDeletion"] = json!(true);
        assert!(
            owned(json!([blocking]))
                .unwrap()
                .ends_with("blockOwnerDeletion on its owner reference")
        );
    }

    #[test]
    fn node_name_needle_matches_stored_pods() {
        let pod = json!({"metadata": {"name": "p", "labels": {"nodeName": "n1x"}}, "spec": {"nodeName": "n1", "containers": []}});
        // Stored values are `Value::to_string()` (see `to_stored`).
        let stored = pod.to_string();
        assert!(raw::contains(
            stored.as_bytes(),
            node_name_needle("n1").as_bytes()
        ));
        assert!(!raw::contains(
            stored.as_bytes(),
            node_name_needle("n").as_bytes()
        ));
        assert!(!raw::contains(
            stored.as_bytes(),
            node_name_needle("n2").as_bytes()
        ));
        // A name that needs escaping is looked for escaped.
        let odd = json!({"spec": {"nodeName": "a\"b"}}).to_string();
        assert!(raw::contains(
            odd.as_bytes(),
            node_name_needle("a\"b").as_bytes()
        ));
        assert!(is_mirror_pod(&mirror(json!({}))));
        assert!(!is_mirror_pod(&pod));
    }

    #[test]
    fn pod_logs_are_read_only_by_get() {
        let t = Target {
            res: Resource::find("", "v1", "pods").unwrap(),
            namespace: Some("d".into()),
            name: Some("p".into()),
            sub: Some("log".into()),
        };
        let q = HashMap::new();
        assert_eq!(verb(&Method::GET, &t, &q), "get");
        assert_eq!(verb(&Method::HEAD, &t, &q), "get");
        assert_eq!(verb(&Method::POST, &t, &q), "create");
        assert_eq!(verb(&Method::PUT, &t, &q), "update");
        assert_eq!(verb(&Method::PATCH, &t, &q), "patch");
        assert_eq!(verb(&Method::DELETE, &t, &q), "delete");
    }

    #[test]
    fn verbs() {
        let t = Target {
            res: Resource::find("", "v1", "pods").unwrap(),
            namespace: Some("d".into()),
            name: None,
            sub: None,
        };
        let mut q = HashMap::new();
        assert_eq!(verb(&Method::GET, &t, &q), "list");
        q.insert("watch".into(), "true".into());
        assert_eq!(verb(&Method::GET, &t, &q), "watch");
        assert_eq!(verb(&Method::DELETE, &t, &q), "deletecollection");
        assert_eq!(verb(&Method::POST, &t, &q), "create");
    }
}
