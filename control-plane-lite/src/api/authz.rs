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
//!   - create mirror pods (annotation `kubernetes.io/config.mirror`) bound to itself;
//!   - create/patch events;
//!   - nothing else (no logs, exec, proxy, bindings, other writes).
//! - The node-token bootstrap user (`system:bootstrappers`): the node reads of the first
//!   item above, nothing more.
//! - Every other authenticated user (client certificates without those groups): read-only,
//!   like Kubernetes' `view` role bound to everyone: get/list/watch of every kind but
//!   secrets, and `pods/log`; no writes, exec, attach, port-forward or nodes/proxy.
//!
//! Discovery, `/version`, `/openapi` and health endpoints are not authorized here: every
//! authenticated user may read them.

use std::collections::HashMap;

use http_body_util::Full;
use hyper::{Method, Request, Response};
use serde_json::Value;
use thiserror::Error;

use super::auth::User;
use super::resources::{Kind, Resource};
use super::status::ApiError;
use super::{ApiServer, Body, RequestBody, Target, body_json, parse_query, read_body};

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
        Some("log") => return "get",
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
                let mirror = pod["metadata"]["annotations"]
                    .get(MIRROR_ANNOTATION)
                    .is_some();
                let bound = pod["spec"]["nodeName"].as_str() == Some(node);
                if mirror && bound {
                    Ok(Ok(()))
                } else {
                    deny(format!(
                        "node {node:?} may only create mirror pods (annotation {MIRROR_ANNOTATION}) bound to itself"
                    ))
                }
            }
            // Core and events.k8s.io Events alike.
            (_, "create" | "patch") if t.res.plural == "events" && sub.is_none() => Ok(Ok(())),
            _ => Ok(Err(None)),
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

    /// Whether a pod in `ns` bound to `node` references the `kind` object `name`.
    async fn referenced(
        &self,
        node: &str,
        ns: &str,
        kind: Kind,
        name: &str,
    ) -> Result<bool, ApiError> {
        let pods = Resource::find("", "v1", "pods").expect("pods are served");
        let prefix = pods.prefix(Some(ns));
        let mut cont = None;
        loop {
            let page = self
                .store
                .list(&prefix, 500, cont)
                .await
                .map_err(|e| ApiError::from_store(e, "pods", ""))?;
            for kv in &page.items {
                let Ok(pod) = serde_json::from_slice::<Value>(&kv.value) else {
                    continue;
                };
                if pod["spec"]["nodeName"].as_str() == Some(node)
                    && pod_references(&pod, kind).iter().any(|r| r == name)
                {
                    return Ok(true);
                }
            }
            match page.continuation() {
                Some(c) => cont = Some(c),
                None => return Ok(false),
            }
        }
    }
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
