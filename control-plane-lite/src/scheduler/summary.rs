//! What the scheduler keeps of pods already on nodes: a [`PodSummary`] with exactly what the
//! filters and scores read from other pods (requests, host ports, controller, terminal or
//! not), and per node a [`NodeUsage`] that sums the summaries of its live pods and is kept up
//! to date as pods come, change and go, so that an attempt costs O(nodes), not O(pods).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use super::filter::{HostPort, Resources, host_ports, is_terminal, pod_requests};
use super::quantity::Milli;
use super::score::{controller_uid, nonzero_requests};

/// A pod's requests as the resource filter counts them (containers summed, the largest init
/// container, overhead, limits standing in for missing requests), in thousandths of each unit
/// (millicores; thousandths of a byte, to add up exactly like the filter does). Resources
/// requested at zero are left out: the filter treats them as not requested.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub cpu: Milli,
    pub memory: Milli,
    pub ephemeral_storage: Milli,
    /// Every other resource (extended resources, hugepages, ...), sorted by name.
    pub other: Vec<(Box<str>, Milli)>,
}

impl Requests {
    /// From the filter's map of a pod's requests.
    pub fn from_resources(r: &Resources) -> Requests {
        let mut out = Requests::default();
        for (name, v) in r.iter().filter(|(_, v)| **v > 0) {
            match name.as_str() {
                "cpu" => out.cpu = *v,
                "memory" => out.memory = *v,
                "ephemeral-storage" => out.ephemeral_storage = *v,
                other => out.other.push((other.into(), *v)),
            }
        }
        out
    }

    /// Each requested resource and amount (all positive).
    pub fn iter(&self) -> impl Iterator<Item = (&str, Milli)> {
        [
            ("cpu", self.cpu),
            ("memory", self.memory),
            ("ephemeral-storage", self.ephemeral_storage),
        ]
        .into_iter()
        .chain(self.other.iter().map(|(k, v)| (&**k, *v)))
        .filter(|(_, v)| *v > 0)
    }
}

/// What the scheduler needs of a pod that is not waiting for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSummary {
    /// `spec.nodeName`, if set.
    pub node: Option<Box<str>>,
    /// Succeeded or Failed: holds nothing on its node.
    pub terminal: bool,
    pub requests: Requests,
    /// (cpu, memory) as scoring counts them (defaults for containers without requests).
    pub nonzero: (Milli, Milli),
    /// (protocol, host IP, host port) of its host ports.
    pub host_ports: Vec<HostPort>,
    /// `namespace/uid` of its controlling owner: the spread score counts siblings by it.
    pub controller: Option<Box<str>>,
}

/// The key the spread score counts a pod's siblings by: its namespace and controller uid.
pub fn controller_key(pod: &Pod) -> Option<String> {
    controller_uid(pod).map(|uid| {
        format!(
            "{}/{uid}",
            pod.metadata.namespace.as_deref().unwrap_or_default()
        )
    })
}

/// The summary of a pod: a pure function of the pod.
pub fn summarize(pod: &Pod) -> PodSummary {
    PodSummary {
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
            .map(Into::into),
        terminal: is_terminal(pod),
        requests: Requests::from_resources(&pod_requests(pod)),
        nonzero: nonzero_requests(pod),
        host_ports: host_ports(pod),
        controller: controller_key(pod).map(Into::into),
    }
}

/// The sums over the live (non-terminal) pods of one node that the filters and scores use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeUsage {
    /// How many live pods.
    pub pods: usize,
    /// Their requests summed, as the resource filter counts them (no zero entries).
    pub requested: Resources,
    /// Their (cpu, memory) summed as scoring counts them.
    pub nonzero: (Milli, Milli),
    /// Their host ports, with how many pods use each.
    pub host_ports: BTreeMap<HostPort, usize>,
    /// How many of them each controller (`namespace/uid`) has.
    pub controllers: BTreeMap<Box<str>, usize>,
}

/// A node without pods.
pub static NO_USAGE: NodeUsage = NodeUsage {
    pods: 0,
    requested: BTreeMap::new(),
    nonzero: (0, 0),
    host_ports: BTreeMap::new(),
    controllers: BTreeMap::new(),
};

fn decrement<K: Ord>(map: &mut BTreeMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl NodeUsage {
    /// The usage of these pods (terminal ones count for nothing), wherever they are bound.
    pub fn of(pods: &[&Pod]) -> NodeUsage {
        let mut u = NodeUsage::default();
        for p in pods {
            u.add(&summarize(p));
        }
        u
    }

    pub fn is_empty(&self) -> bool {
        self.pods == 0
    }

    /// Counts a pod in (nothing if it is terminal). The sums saturate rather than overflow:
    /// only absurd requests (near i128::MAX thousandths) get there, and then the node just
    /// looks full.
    pub fn add(&mut self, s: &PodSummary) {
        if s.terminal {
            return;
        }
        self.pods = self.pods.saturating_add(1);
        for (name, v) in s.requests.iter() {
            match self.requested.get_mut(name) {
                Some(total) => *total = total.saturating_add(v),
                None => {
                    self.requested.insert(name.to_string(), v);
                }
            }
        }
        self.nonzero.0 = self.nonzero.0.saturating_add(s.nonzero.0);
        self.nonzero.1 = self.nonzero.1.saturating_add(s.nonzero.1);
        for p in &s.host_ports {
            let n = self.host_ports.entry(p.clone()).or_default();
            *n = n.saturating_add(1);
        }
        if let Some(c) = &s.controller {
            let n = self.controllers.entry(c.clone()).or_default();
            *n = n.saturating_add(1);
        }
    }

    /// Counts a pod out again: `s` must be what was added.
    pub fn remove(&mut self, s: &PodSummary) {
        if s.terminal {
            return;
        }
        self.pods = self.pods.saturating_sub(1);
        for (name, v) in s.requests.iter() {
            if let Some(total) = self.requested.get_mut(name) {
                *total = total.saturating_sub(v);
                if *total <= 0 {
                    self.requested.remove(name);
                }
            }
        }
        self.nonzero.0 = self.nonzero.0.saturating_sub(s.nonzero.0).max(0);
        self.nonzero.1 = self.nonzero.1.saturating_sub(s.nonzero.1).max(0);
        for p in &s.host_ports {
            decrement(&mut self.host_ports, p);
        }
        if let Some(c) = &s.controller {
            decrement(&mut self.controllers, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::filter::tests::pod;
    use crate::scheduler::score::{DEFAULT_CPU_MILLI, DEFAULT_MEMORY_MILLI};
    use serde_json::json;

    const MI: Milli = 1024 * 1024 * 1000;

    #[test]
    fn summary_of_a_pod() {
        let p = pod(json!({
            "metadata": {"namespace": "ns", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "other", "uid": "u0"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1",
                 "controller": true}]},
            "spec": {
                "nodeName": "n1",
                "containers": [
                    {"name": "a", "image": "i",
                     "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                     "ports": [{"containerPort": 80, "hostPort": 8080},
                               {"containerPort": 53, "hostPort": 53, "protocol": "UDP",
                                "hostIP": "10.0.0.1"},
                               {"containerPort": 9000}]},
                    {"name": "b", "image": "i",
                     "resources": {"limits": {"memory": "128Mi", "example.com/gpu": "2"},
                                   "requests": {"example.com/zero": "0"}}}],
                "initContainers": [
                    {"name": "i", "image": "i", "resources": {"requests": {"cpu": "1"}}}],
                "overhead": {"cpu": "10m", "ephemeral-storage": "1Ki"}
            }
        }));
        let s = summarize(&p);
        assert_eq!(s.node.as_deref(), Some("n1"));
        assert!(!s.terminal);
        assert_eq!(
            s.requests,
            Requests {
                cpu: 1010,
                memory: 192 * MI,
                ephemeral_storage: 1024 * 1000,
                other: vec![("example.com/gpu".into(), 2000)],
            }
        );
        // Scoring: b's cpu and the init container's memory default; no overhead.
        assert_eq!(s.nonzero, (1000, DEFAULT_MEMORY_MILLI));
        assert_eq!(DEFAULT_CPU_MILLI + 100, 200);
        assert_eq!(
            s.host_ports,
            vec![
                ("TCP".to_string(), "0.0.0.0".to_string(), 8080),
                ("UDP".to_string(), "10.0.0.1".to_string(), 53)
            ]
        );
        assert_eq!(s.controller.as_deref(), Some("ns/u1"));

        let bare = summarize(&pod(json!({"status": {"phase": "Failed"}})));
        assert_eq!(bare.node, None);
        assert!(bare.terminal);
        assert_eq!(bare.requests, Requests::default());
        assert_eq!(bare.nonzero, (DEFAULT_CPU_MILLI, DEFAULT_MEMORY_MILLI));
        assert!(bare.host_ports.is_empty());
        assert_eq!(bare.controller, None);
        let empty_node = summarize(&pod(json!({"spec": {"nodeName": ""}})));
        assert_eq!(empty_node.node, None);
    }

    #[test]
    fn requests_round_trip_the_filter_map() {
        let mut r = Resources::new();
        r.insert("cpu".into(), 5);
        r.insert("memory".into(), 0);
        r.insert("pods".into(), 1000);
        r.insert("hugepages-2Mi".into(), 7);
        let q = Requests::from_resources(&r);
        assert_eq!(q.memory, 0);
        let back: Vec<(&str, Milli)> = q.iter().collect();
        assert_eq!(
            back,
            vec![("cpu", 5), ("hugepages-2Mi", 7), ("pods", 1000)],
            "zero entries dropped"
        );
    }

    #[test]
    fn usage_saturates_instead_of_overflowing() {
        let max_units = (i128::MAX / 1000).to_string();
        let greedy = pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": max_units, "memory": max_units}}}]}}));
        let small = pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": "1"}}}]}}));
        let mut u = NodeUsage::default();
        for p in [&greedy, &greedy, &small] {
            u.add(&summarize(p));
        }
        assert_eq!(u.pods, 3);
        assert_eq!(u.requested["cpu"], i128::MAX);
        assert_eq!(u.nonzero.0, i128::MAX);
        for p in [&greedy, &greedy, &small, &small] {
            u.remove(&summarize(p));
        }
        // Saturated sums cannot be taken apart exactly; they never go negative or panic.
        assert_eq!(u.pods, 0);
        assert!(u.requested.values().all(|v| *v > 0));
        assert!(u.nonzero.0 >= 0 && u.nonzero.1 >= 0);
        let mut counts = BTreeMap::new();
        counts.insert("k", usize::MAX);
        decrement(&mut counts, &"k");
        decrement(&mut counts, &"missing");
        assert_eq!(counts["k"], usize::MAX - 1);
    }

    #[test]
    fn usage_adds_and_removes() {
        let owned = |uid: &str, cpu: &str, port: Option<i32>| {
            let ports = port.map(|p| json!([{"containerPort": 1, "hostPort": p}]));
            pod(json!({"metadata": {"ownerReferences": [
                {"apiVersion": "v1", "kind": "ReplicaSet", "name": "rs", "uid": uid,
                 "controller": true}]},
                "spec": {"containers": [{"name": "c", "image": "i", "ports": ports,
                    "resources": {"requests": {"cpu": cpu}, "limits": {"example.com/x": "1"}}}]}}))
        };
        let a = owned("u1", "1", Some(80));
        let b = owned("u1", "500m", Some(80));
        let c = owned("u2", "250m", None);
        let mut done = owned("u2", "4", Some(81));
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());

        let mut u = NodeUsage::default();
        for p in [&a, &b, &c, &done] {
            u.add(&summarize(p));
        }
        assert_eq!(u, NodeUsage::of(&[&a, &b, &c, &done]));
        assert_eq!(u.pods, 3, "the terminal pod is not counted");
        assert_eq!(u.requested["cpu"], 1750);
        assert_eq!(u.requested["example.com/x"], 3000);
        assert_eq!(u.requested.get("memory"), None);
        assert_eq!(u.nonzero, (1750, 3 * DEFAULT_MEMORY_MILLI));
        let port80 = ("TCP".to_string(), "0.0.0.0".to_string(), 80);
        assert_eq!(u.host_ports.get(&port80), Some(&2));
        assert_eq!(u.host_ports.len(), 1);
        assert_eq!(u.controllers.get("default/u1"), Some(&2));
        assert_eq!(u.controllers.get("default/u2"), Some(&1));

        u.remove(&summarize(&a));
        assert_eq!(u, NodeUsage::of(&[&b, &c]));
        assert_eq!(u.host_ports.get(&port80), Some(&1), "b still holds it");
        u.remove(&summarize(&done));
        assert_eq!(
            u,
            NodeUsage::of(&[&b, &c]),
            "removing a terminal pod is a no-op"
        );
        u.remove(&summarize(&b));
        u.remove(&summarize(&c));
        assert_eq!(u, NodeUsage::default());
        assert!(u.is_empty());
        assert_eq!(u, NO_USAGE);
    }
}
