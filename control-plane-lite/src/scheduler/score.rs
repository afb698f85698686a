//! The scheduler's scores over the nodes that passed the filters: least allocated cpu and
//! memory, spreading the pods of one controller (ReplicaSet, ...) across nodes, and avoiding
//! untolerated PreferNoSchedule taints. Each score is 0..=100, then weighted and summed.

use k8s_openapi::api::core::v1::{Container, Pod};

use super::filter::{NodeState, node_allocatable, untolerated_soft_taints};
use super::quantity::{Milli, parse_milli};
use super::summary::controller_key;

/// What scoring assumes a container without a cpu request uses (kube-scheduler's 100m).
pub const DEFAULT_CPU_MILLI: Milli = 100;
/// What scoring assumes a container without a memory request uses (200Mi).
pub const DEFAULT_MEMORY_MILLI: Milli = 200 * 1024 * 1024 * 1000;

/// Weights, as kube-scheduler's default profile has them.
pub const WEIGHT_LEAST_ALLOCATED: i64 = 1;
pub const WEIGHT_SPREAD: i64 = 2;
pub const WEIGHT_TAINTS: i64 = 3;

fn container_nonzero(c: &Container) -> (Milli, Milli) {
    let get = |name: &str| {
        let res = c.resources.as_ref()?;
        let q = res
            .requests
            .as_ref()
            .and_then(|r| r.get(name))
            .or_else(|| res.limits.as_ref().and_then(|l| l.get(name)))?;
        parse_milli(&q.0).ok()
    };
    (
        get("cpu").unwrap_or(DEFAULT_CPU_MILLI),
        get("memory").unwrap_or(DEFAULT_MEMORY_MILLI),
    )
}

/// (cpu, memory) a pod counts as for scoring: its requests, with defaults for containers
/// that request nothing, so that pods without requests still spread by load.
pub fn nonzero_requests(pod: &Pod) -> (Milli, Milli) {
    let Some(spec) = &pod.spec else { return (0, 0) };
    let (mut cpu, mut mem) = (0, 0);
    for c in &spec.containers {
        let (c, m) = container_nonzero(c);
        cpu = saturating_add_request(cpu, c);
        mem = saturating_add_request(mem, m);
    }
    for c in spec.init_containers.iter().flatten() {
        let (c, m) = container_nonzero(c);
        cpu = cpu.max(c);
        mem = mem.max(m);
    }
    (cpu, mem)
}

/// Adds a request to a total: negative requests count as none, sums saturate.
fn saturating_add_request(total: Milli, request: Milli) -> Milli {
    total.saturating_add(request.max(0))
}

/// The percentage (0..=100) of `allocatable` left after `requested`. Any values, however
/// absurd (i128::MAX, negative), give a percentage: nothing here can overflow.
pub fn free_fraction(allocatable: Milli, requested: Milli) -> i64 {
    let requested = requested.max(0);
    if allocatable <= 0 || requested > allocatable {
        return 0;
    }
    // 0 <= free <= allocatable, and free * 100 only overflows for allocatable > i128::MAX /
    // 100, where dividing both by 100 first loses nothing that matters.
    let free = allocatable - requested;
    let pct = match free.checked_mul(100) {
        Some(f) => f / allocatable,
        None => free / (allocatable / 100),
    };
    i64::try_from(pct.clamp(0, 100)).unwrap_or(0)
}

/// Least allocated: the average share of cpu and memory left after placing the pod.
pub fn least_allocated(pod: &Pod, state: &NodeState<'_>) -> i64 {
    let alloc = node_allocatable(state.node);
    let (cpu, mem) = nonzero_requests(pod);
    let (cpu, mem) = (
        saturating_add_request(cpu, state.usage.nonzero.0),
        saturating_add_request(mem, state.usage.nonzero.1),
    );
    let cpu_score = free_fraction(alloc.get("cpu").copied().unwrap_or(0), cpu);
    let mem_score = free_fraction(alloc.get("memory").copied().unwrap_or(0), mem);
    (cpu_score + mem_score) / 2
}

/// The uid of the pod's controlling owner (its ReplicaSet, Job, ...).
pub fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// How many pods of the same controller (in the same namespace) are on the node already.
pub fn siblings_on_node(pod: &Pod, state: &NodeState<'_>) -> usize {
    controller_key(pod).map_or(0, |key| {
        state
            .usage
            .controllers
            .get(key.as_str())
            .copied()
            .unwrap_or(0)
    })
}

/// Turns "fewer is better" counts into 0..=100 scores (the node with the most gets 0).
pub fn inverse_scores(counts: &[usize]) -> Vec<i64> {
    let max = counts.iter().copied().max().unwrap_or(0);
    counts
        .iter()
        .map(|c| {
            // In u128: (max - c) * 100 cannot overflow for any usize counts.
            let wide = |n: usize| u128::try_from(n).unwrap_or(u128::MAX);
            let pct = (wide(max.saturating_sub(*c)) * 100)
                .checked_div(wide(max))
                .map_or(100, |v| v.min(100));
            i64::try_from(pct).unwrap_or(100)
        })
        .collect()
}

/// The weighted total score of each candidate node, in the order given.
pub fn score_nodes(pod: &Pod, candidates: &[NodeState<'_>]) -> Vec<i64> {
    let spread = inverse_scores(
        &candidates
            .iter()
            .map(|s| siblings_on_node(pod, s))
            .collect::<Vec<_>>(),
    );
    let taints = inverse_scores(
        &candidates
            .iter()
            .map(|s| untolerated_soft_taints(pod, s.node))
            .collect::<Vec<_>>(),
    );
    candidates
        .iter()
        .zip(spread.iter().zip(&taints))
        .map(|(s, (spread, taints))| {
            least_allocated(pod, s) * WEIGHT_LEAST_ALLOCATED
                + spread * WEIGHT_SPREAD
                + taints * WEIGHT_TAINTS
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::filter::tests::{node, pod};
    use crate::scheduler::summary::NodeUsage;
    use serde_json::json;

    fn owned(uid: &str) -> Pod {
        pod(json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]}}))
    }

    #[test]
    fn nonzero_defaults() {
        assert_eq!(
            nonzero_requests(&pod(json!({}))),
            (DEFAULT_CPU_MILLI, DEFAULT_MEMORY_MILLI)
        );
        let p = pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": "1"}}}]}}));
        assert_eq!(nonzero_requests(&p), (1000, DEFAULT_MEMORY_MILLI));
    }

    #[test]
    fn least_allocated_prefers_emptier_nodes() {
        let n = node(json!({"status": {"allocatable": {"cpu": "1", "memory": "1000Mi"}}}));
        let p = pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": "500m", "memory": "500Mi"}}}]}}));
        let none = NodeUsage::default();
        let empty = NodeState {
            node: &n,
            usage: &none,
        };
        assert_eq!(least_allocated(&p, &empty), 50);
        let busy_usage = NodeUsage::of(&[&p]);
        let busy = NodeState {
            node: &n,
            usage: &busy_usage,
        };
        assert_eq!(least_allocated(&p, &busy), 0);
        let big = node(json!({"status": {"allocatable": {"cpu": "2", "memory": "2000Mi"}}}));
        let big_state = NodeState {
            node: &big,
            usage: &none,
        };
        assert_eq!(least_allocated(&p, &big_state), 75);
        assert_eq!(score_nodes(&p, &[empty, big_state]), vec![550, 575]);
    }

    #[test]
    fn extreme_values_score_without_overflow() {
        assert_eq!(free_fraction(i128::MAX, 0), 100);
        assert_eq!(
            free_fraction(i128::MAX, -5),
            100,
            "negative requests count as none"
        );
        assert_eq!(free_fraction(i128::MAX, i128::MAX / 2), 50);
        assert_eq!(free_fraction(i128::MAX, i128::MAX), 0);
        assert_eq!(free_fraction(i128::MAX, i128::MAX - 1), 0);
        assert_eq!(free_fraction(i128::MAX / 100 + 1, 0), 100);
        assert_eq!(free_fraction(i128::MIN, 0), 0);
        assert_eq!(free_fraction(-1, i128::MIN), 0);
        assert_eq!(free_fraction(1000, i128::MIN), 100);
        assert_eq!(free_fraction(1000, 2000), 0);
        assert_eq!(inverse_scores(&[usize::MAX, 0]), vec![0, 100]);
        assert_eq!(inverse_scores(&[usize::MAX, usize::MAX / 2]), vec![0, 50]);

        let max_units = (i128::MAX / 1000).to_string();
        let huge =
            node(json!({"status": {"allocatable": {"cpu": max_units, "memory": max_units}}}));
        let negative = node(json!({"status": {"allocatable": {
            "cpu": format!("-{max_units}"), "memory": "-1"}}}));
        let greedy = pod(json!({"spec": {"containers": [
            {"name": "a", "image": "i", "resources": {"requests": {"cpu": max_units, "memory": "-5"}}},
            {"name": "b", "image": "i", "resources": {"requests": {"cpu": max_units}}}]}}));
        assert_eq!(nonzero_requests(&greedy), (i128::MAX, DEFAULT_MEMORY_MILLI));
        let busy = NodeUsage::of(&[&greedy, &greedy]);
        assert_eq!(busy.nonzero.0, i128::MAX);
        for n in [&huge, &negative] {
            for usage in [&busy, &NodeUsage::default()] {
                let state = NodeState { node: n, usage };
                let score = least_allocated(&greedy, &state);
                assert!((0..=100).contains(&score), "{score}");
                let total = score_nodes(&greedy, &[state, state]);
                assert_eq!(total[0], total[1]);
            }
        }
        let empty = NodeState {
            node: &huge,
            usage: &NodeUsage::default(),
        };
        // Exactly 100 - 100 * requested / allocatable, floored: 99.99...
        assert_eq!(least_allocated(&pod(json!({})), &empty), 99);
    }

    #[test]
    fn spread_of_one_controller() {
        let n1 = node(json!({"metadata": {"name": "n1"}}));
        let n2 = node(json!({"metadata": {"name": "n2"}}));
        let a = owned("rs-1");
        let other = owned("rs-2");
        let u1 = NodeUsage::of(&[&a, &a]);
        let u2 = NodeUsage::of(&[&other, &a]);
        let s1 = NodeState {
            node: &n1,
            usage: &u1,
        };
        let s2 = NodeState {
            node: &n2,
            usage: &u2,
        };
        assert_eq!(siblings_on_node(&owned("rs-1"), &s1), 2);
        assert_eq!(siblings_on_node(&owned("rs-1"), &s2), 1);
        assert_eq!(siblings_on_node(&pod(json!({})), &s1), 0);
        assert_eq!(inverse_scores(&[2, 1, 0]), vec![0, 50, 100]);
        assert_eq!(inverse_scores(&[0, 0]), vec![100, 100]);
        let scores = score_nodes(&owned("rs-1"), &[s1, s2]);
        assert!(scores[1] > scores[0], "{scores:?}");
        // Different namespace: not a sibling.
        let mut elsewhere = owned("rs-1");
        elsewhere.metadata.namespace = Some("other".into());
        assert_eq!(siblings_on_node(&elsewhere, &s1), 0);
    }

    #[test]
    fn prefer_no_schedule_lowers_the_score() {
        let soft = node(json!({"metadata": {"name": "soft"}, "spec": {"taints": [
            {"key": "k", "effect": "PreferNoSchedule"}]}}));
        let plain = node(json!({"metadata": {"name": "plain"}}));
        let p = pod(json!({}));
        let none = NodeUsage::default();
        let states = [
            NodeState {
                node: &soft,
                usage: &none,
            },
            NodeState {
                node: &plain,
                usage: &none,
            },
        ];
        let scores = score_nodes(&p, &states);
        assert_eq!(scores[1] - scores[0], 100 * WEIGHT_TAINTS);
        let tolerant = pod(json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists"}]}}));
        let scores = score_nodes(&tolerant, &states);
        assert_eq!(scores[0], scores[1]);
    }
}
