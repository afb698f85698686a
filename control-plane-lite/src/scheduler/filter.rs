//! The scheduler's filters: whether a pod may run on a node at all (Ready, schedulable, taints
//! and tolerations, nodeSelector and required node affinity, host ports, resource requests
//! and the pod count), and the kube-scheduler style message when no node passes.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

use super::quantity::{Milli, parse_milli};
use super::summary::NodeUsage;

/// Resource name → amount in thousandths.
pub type Resources = BTreeMap<String, Milli>;

/// (protocol, host IP, host port) of a container port bound on the host.
pub type HostPort = (String, String, i32);

/// The taint a node whose Ready condition is False carries (implicitly, here).
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint a node whose Ready condition is Unknown (or missing) carries.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node with `spec.unschedulable`.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// A node and what the non-terminal pods already assigned to it use.
#[derive(Clone, Copy, Debug)]
pub struct NodeState<'a> {
    pub node: &'a Node,
    pub usage: &'a NodeUsage,
}

impl NodeState<'_> {
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }
}

/// Why one node cannot take a pod. The `Display` form is kube-scheduler's wording.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Unschedulable,
    UntoleratedTaint { key: String, value: String },
    NodeAffinity,
    HostPorts,
    Insufficient(String),
    TooManyPods,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::HostPorts => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::TooManyPods => f.write_str("Too many pods"),
        }
    }
}

/// "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu."
/// from how many nodes failed for each reason (one node may count under several).
pub fn failure_message(total_nodes: usize, counts: &BTreeMap<Reason, usize>) -> String {
    if total_nodes == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        return format!("0/{total_nodes} nodes are available.");
    }
    format!("0/{total_nodes} nodes are available: {}.", parts.join(", "))
}

/// A pod that has finished and holds no resources any more.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn container_requests(c: &Container) -> Resources {
    let mut out = Resources::new();
    let Some(res) = &c.resources else { return out };
    // A limit without a request means a request of the limit (as API defaulting does).
    for map in [&res.limits, &res.requests].into_iter().flatten() {
        for (name, q) in map {
            match parse_milli(&q.0) {
                Ok(v) => {
                    out.insert(name.clone(), v.max(0));
                }
                Err(e) => tracing::debug!(error = %e, resource = %name, "ignoring a bad quantity"),
            }
        }
    }
    out
}

/// Sums saturate: a node or pod reporting absurd amounts must not overflow (a panic in debug
/// builds, a wrapped-around decision in release).
fn add_into(total: &mut Resources, r: &Resources) {
    for (k, v) in r {
        let e = total.entry(k.clone()).or_default();
        *e = e.saturating_add(*v);
    }
}

fn max_into(total: &mut Resources, r: &Resources) {
    for (k, v) in r {
        let e = total.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
}

/// What a pod asks for: the sum over its containers or the largest init container, whichever
/// is more for each resource, plus the pod overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    let mut total = Resources::new();
    let Some(spec) = &pod.spec else { return total };
    for c in &spec.containers {
        add_into(&mut total, &container_requests(c));
    }
    for c in spec.init_containers.iter().flatten() {
        max_into(&mut total, &container_requests(c));
    }
    for (name, q) in spec.overhead.iter().flatten() {
        if let Ok(v) = parse_milli(&q.0) {
            let e = total.entry(name.clone()).or_default();
            *e = e.saturating_add(v.max(0));
        }
    }
    total
}

/// What a node offers pods: `status.allocatable`, or `status.capacity` without it.
pub fn node_allocatable(node: &Node) -> Resources {
    let status = node.status.as_ref();
    let map = status
        .and_then(|s| s.allocatable.as_ref())
        .or_else(|| status.and_then(|s| s.capacity.as_ref()));
    map.into_iter()
        .flatten()
        .filter_map(|(k, q)| parse_milli(&q.0).ok().map(|v| (k.clone(), v)))
        .collect()
}

/// The node's taints plus the ones its state implies (not ready, unreachable, unschedulable).
pub fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    let implied = match ready {
        Some("True") => None,
        Some("False") => Some(TAINT_NOT_READY),
        _ => Some(TAINT_UNREACHABLE),
    };
    if let Some(key) = implied
        && !taints
            .iter()
            .any(|t| t.key == key && t.effect == "NoSchedule")
    {
        taints.push(Taint {
            key: key.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        });
    }
    taints
}

/// Whether `t` tolerates `taint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        "Equal" => {
            !key.is_empty()
                && key == taint.key
                && t.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

/// The first taint with effect NoSchedule or NoExecute the pod does not tolerate.
pub fn untolerated_taint(pod: &Pod, node: &Node) -> Option<Taint> {
    let tols = tolerations(pod);
    effective_taints(node)
        .into_iter()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .find(|taint| !tols.iter().any(|t| tolerates(t, taint)))
}

/// How many PreferNoSchedule taints of the node the pod does not tolerate (for scoring).
pub fn untolerated_soft_taints(pod: &Pod, node: &Node) -> usize {
    let tols = tolerations(pod);
    effective_taints(node)
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|taint| !tols.iter().any(|t| tolerates(t, taint)))
        .count()
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let [bound] = values else { return false };
            let (Some(Ok(v)), Ok(bound)) = (value.map(str::parse::<i64>), bound.parse::<i64>())
            else {
                return false;
            };
            if op == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// One `nodeSelectorTerms` entry: every expression and field requirement holds (an empty
/// term matches nothing).
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name"
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_matches(r, node.metadata.name.as_deref())
        })
}

/// `spec.nodeSelector` and the required node affinity terms (any one term).
pub fn matches_node_selector(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = &pod.spec else { return true };
    let labels = node.metadata.labels.as_ref();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.and_then(|l| l.get(k)).is_some_and(|have| have == v));
    let affinity_ok = match spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        }) {
        None => true,
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
    };
    selector_ok && affinity_ok
}

/// (protocol, host IP, host port) of each container port with a host port.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            let ip = p.host_ip.clone().filter(|i| !i.is_empty());
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ip.unwrap_or_else(|| "0.0.0.0".into()),
                port,
            ))
        })
        .collect()
}

fn ports_conflict(a: &HostPort, b: &HostPort) -> bool {
    let wildcard = |ip: &str| ip == "0.0.0.0" || ip == "::";
    a.0 == b.0 && a.2 == b.2 && (a.1 == b.1 || wildcard(&a.1) || wildcard(&b.1))
}

/// Whether the pod's host ports are all free on the node.
pub fn host_ports_free(pod: &Pod, usage: &NodeUsage) -> bool {
    let wanted = host_ports(pod);
    !wanted
        .iter()
        .any(|w| usage.host_ports.keys().any(|u| ports_conflict(w, u)))
}

/// Every resource the pod asks for more of than the node has left, and the pod count.
pub fn resource_reasons(pod: &Pod, node: &Node, usage: &NodeUsage) -> Vec<Reason> {
    let alloc = node_allocatable(node);
    let used = &usage.requested;
    let mut reasons = Vec::new();
    let count = i128::try_from(usage.pods).unwrap_or(i128::MAX);
    let max_pods = alloc.get("pods").copied().unwrap_or(0) / 1000;
    if count.saturating_add(1) > max_pods {
        reasons.push(Reason::TooManyPods);
    }
    for (name, want) in pod_requests(pod) {
        if name == "pods" || want <= 0 {
            continue;
        }
        let have = alloc.get(&name).copied().unwrap_or(0);
        let taken = used.get(&name).copied().unwrap_or(0);
        // Saturating: a node may report anything (i128::MAX, negative amounts).
        if want > have.saturating_sub(taken) {
            reasons.push(Reason::Insufficient(name));
        }
    }
    reasons
}

/// Why `pod` cannot run on the node: empty when it can. Like kube-scheduler's filter plugins,
/// the first failing check decides (the resource check reports each missing resource).
pub fn filter_node(pod: &Pod, state: &NodeState<'_>) -> Vec<Reason> {
    let node = state.node;
    let tols = tolerations(pod);
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let taint = Taint {
            key: TAINT_UNSCHEDULABLE.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        if !tols.iter().any(|t| tolerates(t, &taint)) {
            return vec![Reason::Unschedulable];
        }
    }
    if let Some(t) = untolerated_taint(pod, node) {
        return vec![Reason::UntoleratedTaint {
            key: t.key,
            value: t.value.unwrap_or_default(),
        }];
    }
    if !matches_node_selector(pod, node) {
        return vec![Reason::NodeAffinity];
    }
    if !host_ports_free(pod, state.usage) {
        return vec![Reason::HostPorts];
    }
    resource_reasons(pod, node, state.usage)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};

    pub fn node(v: Value) -> Node {
        let mut base = json!({
            "metadata": {"name": "n1", "labels": {}},
            "spec": {},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "10Gi"}
            }
        });
        json_patch::merge(&mut base, &v);
        serde_json::from_value(base).unwrap()
    }

    pub fn pod(v: Value) -> Pod {
        let mut base = json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        });
        json_patch::merge(&mut base, &v);
        serde_json::from_value(base).unwrap()
    }

    fn with_cpu(cpu: &str) -> Pod {
        pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": cpu}}}]}}))
    }

    fn check(p: &Pod, n: &Node, on: &[&Pod]) -> Vec<Reason> {
        filter_node(
            p,
            &NodeState {
                node: n,
                usage: &NodeUsage::of(on),
            },
        )
    }

    #[test]
    fn ready_condition() {
        let p = pod(json!({}));
        assert!(check(&p, &node(json!({})), &[]).is_empty());
        let not_ready =
            node(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
        assert_eq!(
            check(&p, &not_ready, &[]),
            vec![Reason::UntoleratedTaint {
                key: TAINT_NOT_READY.into(),
                value: String::new()
            }]
        );
        let unknown = node(json!({"status": {"conditions": []}}));
        assert_eq!(
            check(&p, &unknown, &[])[0].to_string(),
            "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"
        );
        let tolerant = pod(json!({"spec": {"tolerations": [
            {"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoSchedule"}]}}));
        assert!(check(&tolerant, &not_ready, &[]).is_empty());
    }

    #[test]
    fn unschedulable_nodes() {
        let n = node(json!({"spec": {"unschedulable": true}}));
        assert_eq!(check(&pod(json!({})), &n, &[]), vec![Reason::Unschedulable]);
        let tolerant = pod(json!({"spec": {"tolerations": [
            {"key": TAINT_UNSCHEDULABLE, "operator": "Exists"}]}}));
        assert!(check(&tolerant, &n, &[]).is_empty());
    }

    #[test]
    fn taints_and_tolerations() {
        let n = node(json!({"spec": {"taints": [
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}));
        let p = pod(json!({}));
        assert_eq!(
            check(&p, &n, &[])[0].to_string(),
            "node(s) had untolerated taint {dedicated: gpu}"
        );
        let equal = pod(json!({"spec": {"tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}}));
        assert!(check(&equal, &n, &[]).is_empty());
        let wrong_value = pod(json!({"spec": {"tolerations": [
            {"key": "dedicated", "value": "cpu"}]}}));
        assert!(!check(&wrong_value, &n, &[]).is_empty());
        let wrong_effect = pod(json!({"spec": {"tolerations": [
            {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]}}));
        assert!(!check(&wrong_effect, &n, &[]).is_empty());
        let everything = pod(json!({"spec": {"tolerations": [{"operator": "Exists"}]}}));
        assert!(check(&everything, &n, &[]).is_empty());
        let no_exec = node(json!({"spec": {"taints": [{"key": "k", "effect": "NoExecute"}]}}));
        assert!(!check(&p, &no_exec, &[]).is_empty());
        let soft = node(json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}));
        assert!(
            check(&p, &soft, &[]).is_empty(),
            "PreferNoSchedule only scores"
        );
        assert_eq!(untolerated_soft_taints(&p, &soft), 1);
        assert_eq!(untolerated_soft_taints(&everything, &soft), 0);
    }

    #[test]
    fn node_selector() {
        let n = node(json!({"metadata": {"labels": {"disk": "ssd", "zone": "a"}}}));
        assert!(matches_node_selector(
            &pod(json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
            &n
        ));
        assert!(!matches_node_selector(
            &pod(json!({"spec": {"nodeSelector": {"disk": "hdd"}}})),
            &n
        ));
        assert!(!matches_node_selector(
            &pod(json!({"spec": {"nodeSelector": {"gpu": "yes"}}})),
            &n
        ));
        assert_eq!(
            check(
                &pod(json!({"spec": {"nodeSelector": {"disk": "hdd"}}})),
                &n,
                &[]
            ),
            vec![Reason::NodeAffinity]
        );
    }

    fn affinity(terms: Value) -> Pod {
        pod(json!({"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}}))
    }

    #[test]
    fn node_affinity_operators() {
        let n = node(json!({"metadata": {"name": "n1", "labels": {"zone": "a", "cores": "8"}}}));
        let expr = |key: &str, op: &str, values: Value| {
            affinity(
                json!([{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]),
            )
        };
        assert!(matches_node_selector(
            &expr("zone", "In", json!(["a", "b"])),
            &n
        ));
        assert!(!matches_node_selector(
            &expr("zone", "In", json!(["b"])),
            &n
        ));
        assert!(!matches_node_selector(
            &expr("nope", "In", json!(["a"])),
            &n
        ));
        assert!(matches_node_selector(
            &expr("zone", "NotIn", json!(["b"])),
            &n
        ));
        assert!(!matches_node_selector(
            &expr("zone", "NotIn", json!(["a"])),
            &n
        ));
        assert!(matches_node_selector(
            &expr("nope", "NotIn", json!(["a"])),
            &n
        ));
        assert!(matches_node_selector(
            &expr("zone", "Exists", json!(null)),
            &n
        ));
        assert!(!matches_node_selector(
            &expr("nope", "Exists", json!(null)),
            &n
        ));
        assert!(matches_node_selector(
            &expr("nope", "DoesNotExist", json!(null)),
            &n
        ));
        assert!(!matches_node_selector(
            &expr("zone", "DoesNotExist", json!(null)),
            &n
        ));
        assert!(matches_node_selector(
            &expr("cores", "Gt", json!(["4"])),
            &n
        ));
        assert!(!matches_node_selector(
            &expr("cores", "Gt", json!(["8"])),
            &n
        ));
        assert!(matches_node_selector(
            &expr("cores", "Lt", json!(["16"])),
            &n
        ));
        assert!(!matches_node_selector(
            &expr("cores", "Lt", json!(["8"])),
            &n
        ));
        assert!(
            !matches_node_selector(&expr("zone", "Gt", json!(["1"])), &n),
            "not a number"
        );
        assert!(!matches_node_selector(
            &expr("cores", "Gt", json!(["1", "2"])),
            &n
        ));
        assert!(!matches_node_selector(
            &expr("zone", "Bogus", json!(["a"])),
            &n
        ));
        // Terms are ORed, expressions within a term ANDed.
        let or = affinity(json!([
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["x"]}]},
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]));
        assert!(matches_node_selector(&or, &n));
        let and = affinity(json!([{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a"]},
            {"key": "cores", "operator": "Lt", "values": ["2"]}]}]));
        assert!(!matches_node_selector(&and, &n));
        assert!(
            !matches_node_selector(&affinity(json!([{}])), &n),
            "empty term"
        );
        assert!(!matches_node_selector(&affinity(json!([])), &n), "no terms");
        // matchFields on metadata.name.
        let field = |op: &str, name: &str| {
            affinity(
                json!([{"matchFields": [{"key": "metadata.name", "operator": op, "values": [name]}]}]),
            )
        };
        assert!(matches_node_selector(&field("In", "n1"), &n));
        assert!(!matches_node_selector(&field("In", "n2"), &n));
        assert!(matches_node_selector(&field("NotIn", "n2"), &n));
        let bad_field = affinity(
            json!([{"matchFields": [{"key": "metadata.labels", "operator": "In", "values": ["n1"]}]}]),
        );
        assert!(!matches_node_selector(&bad_field, &n));
        // nodeSelector and affinity must both hold.
        let mut both = expr("zone", "In", json!(["a"]));
        both.spec.as_mut().unwrap().node_selector =
            Some([("zone".to_string(), "b".to_string())].into());
        assert!(!matches_node_selector(&both, &n));
    }

    #[test]
    fn requests_sum_containers_and_max_init() {
        let p = pod(json!({"spec": {
            "containers": [
                {"name": "a", "image": "i", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "b", "image": "i", "resources": {"requests": {"cpu": "200m"}, "limits": {"memory": "128Mi"}}}],
            "initContainers": [
                {"name": "i1", "image": "i", "resources": {"requests": {"cpu": "1"}}},
                {"name": "i2", "image": "i", "resources": {"requests": {"memory": "100Mi"}}}],
            "overhead": {"cpu": "10m"}
        }}));
        let r = pod_requests(&p);
        assert_eq!(r["cpu"], 1010);
        assert_eq!(r["memory"], 192 * 1024 * 1024 * 1000);
    }

    #[test]
    fn resources_fit_allocatable() {
        let n = node(json!({}));
        let three = with_cpu("3");
        assert!(check(&with_cpu("4"), &n, &[]).is_empty());
        assert!(check(&with_cpu("1"), &n, &[&three]).is_empty());
        assert_eq!(
            check(&with_cpu("1001m"), &n, &[&three]),
            vec![Reason::Insufficient("cpu".into())]
        );
        // Terminal pods hold nothing.
        let mut done = with_cpu("3");
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        assert!(check(&with_cpu("4"), &n, &[&done]).is_empty());
        let big = pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": "5", "memory": "9Gi", "ephemeral-storage": "11Gi"}}}]}}));
        assert_eq!(
            check(&big, &n, &[]),
            vec![
                Reason::Insufficient("cpu".into()),
                Reason::Insufficient("ephemeral-storage".into()),
                Reason::Insufficient("memory".into())
            ]
        );
        let gpu = pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"limits": {"example.com/gpu": "1"}}}]}}));
        assert_eq!(
            check(&gpu, &n, &[]),
            vec![Reason::Insufficient("example.com/gpu".into())]
        );
        // Capacity is used when allocatable is missing.
        let cap =
            node(json!({"status": {"allocatable": null, "capacity": {"cpu": "1", "pods": "1"}}}));
        assert!(check(&with_cpu("1"), &cap, &[]).is_empty());
        assert!(!check(&with_cpu("2"), &cap, &[]).is_empty());
    }

    #[test]
    fn extreme_quantities_do_not_overflow() {
        let max_units = (i128::MAX / 1000).to_string();
        let min_units = format!("-{max_units}");
        let huge = node(json!({"status": {"allocatable": {
            "cpu": max_units, "memory": max_units, "pods": max_units}}}));
        let negative = node(json!({"status": {"allocatable": {
            "cpu": min_units, "memory": "1e-2147483648", "pods": "110"}}}));
        let greedy = pod(json!({"spec": {"containers": [
            {"name": "a", "image": "i", "resources": {"requests": {"cpu": max_units}}},
            {"name": "b", "image": "i", "resources": {"requests": {"cpu": max_units}}}],
            "overhead": {"cpu": max_units}}}));
        // Two containers of i128::MAX-ish cpu plus overhead: the sum saturates.
        assert_eq!(pod_requests(&greedy)["cpu"], i128::MAX);
        // Usage near the limit, a node reporting i128::MAX-ish or negative amounts: answers,
        // no overflow.
        assert_eq!(
            check(&greedy, &huge, &[&greedy, &greedy]),
            vec![Reason::Insufficient("cpu".into())]
        );
        let half = with_cpu(&(i128::MAX / 2000).to_string());
        assert!(check(&with_cpu("1"), &huge, &[&half]).is_empty());
        assert_eq!(
            check(&with_cpu("2"), &huge, &[&half, &half]),
            vec![Reason::Insufficient("cpu".into())]
        );
        assert_eq!(
            check(&with_cpu("1"), &huge, &[&greedy]),
            vec![Reason::Insufficient("cpu".into())]
        );
        assert_eq!(
            check(&greedy, &negative, &[&greedy]),
            vec![Reason::Insufficient("cpu".into())]
        );
        // The absurd memory is unparseable: no memory at all.
        assert!(!node_allocatable(&negative).contains_key("memory"));
        let mem = pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"memory": "1Mi"}}}]}}));
        assert_eq!(
            check(&mem, &negative, &[]),
            vec![Reason::Insufficient("memory".into())]
        );
        // A pod count at the limit of usize.
        let crowded = NodeUsage {
            pods: usize::MAX,
            ..NodeUsage::default()
        };
        assert_eq!(
            resource_reasons(&pod(json!({})), &huge, &crowded),
            Vec::<Reason>::new()
        );
        assert_eq!(
            resource_reasons(&pod(json!({})), &negative, &crowded),
            vec![Reason::TooManyPods]
        );
    }

    #[test]
    fn pod_count() {
        let n = node(json!({"status": {"allocatable": {"pods": "2"}}}));
        let a = pod(json!({}));
        let b = pod(json!({}));
        assert!(check(&pod(json!({})), &n, &[&a]).is_empty());
        assert_eq!(
            check(&pod(json!({})), &n, &[&a, &b]),
            vec![Reason::TooManyPods]
        );
    }

    #[test]
    fn host_port_conflicts() {
        let port = |port: i32, proto: &str, ip: &str| {
            pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
                "ports": [{"containerPort": 80, "hostPort": port, "protocol": proto, "hostIP": ip}]}]}}))
        };
        let n = node(json!({}));
        let used = port(8080, "TCP", "");
        assert_eq!(
            check(&port(8080, "TCP", ""), &n, &[&used]),
            vec![Reason::HostPorts]
        );
        assert_eq!(
            check(&port(8080, "TCP", "10.0.0.1"), &n, &[&used]),
            vec![Reason::HostPorts]
        );
        assert!(check(&port(8080, "UDP", ""), &n, &[&used]).is_empty());
        assert!(check(&port(8081, "TCP", ""), &n, &[&used]).is_empty());
        let specific = port(9000, "TCP", "10.0.0.1");
        assert!(check(&port(9000, "TCP", "10.0.0.2"), &n, &[&specific]).is_empty());
        assert!(!check(&port(9000, "TCP", "10.0.0.1"), &n, &[&specific]).is_empty());
        assert!(check(&pod(json!({})), &n, &[&used]).is_empty());
    }

    #[test]
    fn messages() {
        let mut counts = BTreeMap::new();
        counts.insert(
            Reason::UntoleratedTaint {
                key: "k".into(),
                value: "v".into(),
            },
            1,
        );
        counts.insert(Reason::Insufficient("cpu".into()), 2);
        assert_eq!(
            failure_message(3, &counts),
            "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu."
        );
        counts.clear();
        counts.insert(Reason::TooManyPods, 1);
        counts.insert(Reason::Insufficient("memory".into()), 1);
        counts.insert(Reason::NodeAffinity, 3);
        assert_eq!(
            failure_message(4, &counts),
            "0/4 nodes are available: 1 Insufficient memory, 1 Too many pods, 3 node(s) didn't match Pod's node affinity/selector."
        );
        assert_eq!(
            failure_message(0, &BTreeMap::new()),
            "no nodes available to schedule pods"
        );
    }
}
