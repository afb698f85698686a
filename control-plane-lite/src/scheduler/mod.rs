//! The scheduler: watches pods without a node and binds each to one, like kube-scheduler's
//! default profile in small. [`filter`] decides which nodes may take a pod, [`score`] which of
//! those is best, [`select_node`] combines them; [`Scheduler`] keeps a cache of pods and nodes
//! from list+watch through the in-process API ([`client`]), binds through `pods/binding`,
//! marks pods that fit nowhere `PodScheduled=False` (reason `Unschedulable`), records
//! `Scheduled`/`FailedScheduling` events, and retries unschedulable pods when nodes change or
//! pods leave nodes. With several replicas only the holder of a Lease schedules ([`leader`]).

pub mod client;
pub mod filter;
pub mod leader;
pub mod quantity;
pub mod score;
pub mod summary;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::ApiServer;
use crate::api::auth::User;
use client::{Backoff, Client, ClientError, LIST_PAGE_SIZE, WatchStream};
use filter::{NodeState, Reason, failure_message, filter_node, is_terminal};
use leader::{Clock, LeaderElector, SystemClock};
use summary::{NO_USAGE, NodeUsage, PodSummary, summarize};

/// The `spec.schedulerName` this scheduler serves (pods without one get it by defaulting).
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// What goes wrong while scheduling; the scheduler logs these and retries.
#[derive(Debug, Error)]
pub enum ScheduleError {
    #[error("listing {what}: {source}")]
    List {
        what: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("watching {what}: {source}")]
    Watch {
        what: &'static str,
        #[source]
        source: ClientError,
    },
    /// The server ended a watch long before its timeout: something is wrong, so list again
    /// (after a backoff) rather than resume in a tight loop.
    #[error("the {0} watch ended before its timeout")]
    WatchEndedEarly(&'static str),
    #[error("decoding a {what} from its watch: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// `binding` is "ns/pod to node".
    #[error("binding {binding}: {source}")]
    Bind {
        binding: String,
        #[source]
        source: ClientError,
    },
    #[error("updating the status of pod {pod}: {source}")]
    Status {
        pod: String,
        #[source]
        source: ClientError,
    },
    #[error("recording an event for pod {pod}: {source}")]
    Event {
        pod: String,
        #[source]
        source: ClientError,
    },
}

/// How the scheduler runs.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Pods with this `spec.schedulerName` (or none) are ours.
    pub scheduler_name: String,
    /// This process's name in the lease and in events.
    pub identity: String,
    /// Campaign for the lease before scheduling (several replicas on one etcd); without it
    /// the scheduler always runs.
    pub leader_elect: bool,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    /// Unschedulable pods are tried again this often even if nothing changed.
    pub unschedulable_retry: Duration,
    /// Each watch request lasts this long (its `timeoutSeconds`); then it is resumed from the
    /// last resourceVersion seen, keeping the cache. Only a 410 Gone or another error makes
    /// the scheduler list everything again.
    pub watch_timeout: Duration,
    /// Lists are read this many objects a page (`limit`), one page in memory at a time.
    pub list_page_size: usize,
    /// A `FailedScheduling` event like the pod's last one (same message) within this long
    /// updates that event's count instead of creating another.
    pub event_aggregation_window: Duration,
    /// At most one `FailedScheduling` event (new or updated) per pod this often.
    pub event_min_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            scheduler_name: DEFAULT_SCHEDULER_NAME.into(),
            identity: default_identity(),
            leader_elect: true,
            lease_namespace: "kube-system".into(),
            lease_name: "keelson-scheduler".into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(3),
            unschedulable_retry: Duration::from_secs(60),
            watch_timeout: Duration::from_secs(300),
            list_page_size: LIST_PAGE_SIZE,
            event_aggregation_window: Duration::from_secs(600),
            event_min_interval: Duration::from_secs(30),
        }
    }
}

/// `hostname_randomhex`: unique per process.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keelson".into());
    let mut b = [0u8; 6];
    if getrandom::fill(&mut b).is_err() {
        // No system randomness: the clock and pid still tell processes apart.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        b.copy_from_slice(&seed.to_le_bytes()[..6]);
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{host}_{hex}")
}

/// No node can take the pod: how many nodes there were and why each failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unschedulable {
    pub total_nodes: usize,
    pub reasons: BTreeMap<Reason, usize>,
}

impl Unschedulable {
    /// kube-scheduler's "0/3 nodes are available: ..." message.
    pub fn message(&self) -> String {
        failure_message(self.total_nodes, &self.reasons)
    }
}

/// Filters and scores `nodes` for `pod`; the best node's name. Ties go to the first node in
/// the order given.
pub fn select_node(pod: &Pod, nodes: &[NodeState<'_>]) -> Result<String, Unschedulable> {
    let mut reasons = BTreeMap::new();
    let mut feasible = Vec::new();
    for state in nodes {
        let why = filter_node(pod, state);
        if why.is_empty() {
            feasible.push(*state);
        }
        for r in why {
            *reasons.entry(r).or_insert(0) += 1;
        }
    }
    if feasible.is_empty() {
        return Err(Unschedulable {
            total_nodes: nodes.len(),
            reasons,
        });
    }
    let scores = score::score_nodes(pod, &feasible);
    // The first of the highest scores (`max_by_key` would take the last).
    let mut best: Option<(i64, &NodeState<'_>)> = None;
    for (state, score) in feasible.iter().zip(scores) {
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, state));
        }
    }
    match best {
        Some((_, state)) => Ok(state.name().to_string()),
        None => Err(Unschedulable {
            total_nodes: nodes.len(),
            reasons,
        }),
    }
}

/// Whether this scheduler should place the pod: no node yet, not being deleted, not finished,
/// and ours by `spec.schedulerName`.
pub fn needs_scheduling(pod: &Pod, scheduler_name: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.node_name.as_deref().is_none_or(str::is_empty)
        && pod.metadata.deletion_timestamp.is_none()
        && !is_terminal(pod)
        && spec
            .scheduler_name
            .as_deref()
            .is_none_or(|n| n.is_empty() || n == scheduler_name)
}

fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The `PodScheduled` condition list after an unschedulable attempt, or None when the pod
/// already says exactly that.
pub fn unschedulable_conditions(pod: &Pod, message: &str, now: &str) -> Option<Value> {
    let conditions: Vec<PodCondition> = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let current = conditions.iter().find(|c| c.type_ == "PodScheduled");
    if let Some(c) = current
        && c.status == "False"
        && c.reason.as_deref() == Some("Unschedulable")
        && c.message.as_deref() == Some(message)
    {
        return None;
    }
    let transition = match current {
        Some(c) if c.status == "False" => c
            .last_transition_time
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| json!(now)),
        _ => json!(now),
    };
    let mut out: Vec<Value> = conditions
        .iter()
        .filter(|c| c.type_ != "PodScheduled")
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    out.push(json!({
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": transition,
    }));
    Some(Value::Array(out))
}

/// The last `FailedScheduling` event recorded about a pending pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// The Event object's name.
    pub name: String,
    /// The pod's uid (a pod recreated under the same name is another object).
    pub uid: String,
    pub message: String,
    pub count: i32,
    /// When the event was last created or updated.
    pub last_sent: Instant,
}

/// What to do about one more occurrence of an event, like Kubernetes' event recorder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventAction {
    /// Create a new Event.
    Create,
    /// Patch the existing Event `name` to `count` and a new lastTimestamp.
    Update { name: String, count: i32 },
    /// Too soon after the last one for this pod: record nothing.
    Skip,
}

/// Decides how an occurrence (`uid`, `message` at `now`) is recorded given the pod's last
/// event: nothing within `min_interval` of it, an update of it when the message is the same
/// within `window`, else a new event.
pub fn event_action(
    last: Option<&EventRecord>,
    uid: &str,
    message: &str,
    now: Instant,
    window: Duration,
    min_interval: Duration,
) -> EventAction {
    let Some(last) = last.filter(|l| l.uid == uid) else {
        return EventAction::Create;
    };
    let since = now.saturating_duration_since(last.last_sent);
    if since < min_interval {
        EventAction::Skip
    } else if last.message == message && since < window {
        EventAction::Update {
            name: last.name.clone(),
            count: last.count.saturating_add(1),
        }
    } else {
        EventAction::Create
    }
}

/// What about a node matters to scheduling (status heartbeats do not).
fn node_view(node: &Node) -> Value {
    let status = node.status.as_ref();
    json!({
        "labels": node.metadata.labels,
        "spec": node.spec,
        "allocatable": status.and_then(|s| s.allocatable.as_ref()),
        "capacity": status.and_then(|s| s.capacity.as_ref()),
        "ready": status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone()),
    })
}

/// A pending pod as the cache keeps it: without the metadata nothing here reads (managed
/// fields, annotations), which can be most of a small pod's size.
fn slim(mut pod: Pod) -> Pod {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod
}

/// The scheduler's view of the cluster and its queues.
#[derive(Default)]
struct State {
    /// Our pods waiting for a node (queued, unschedulable or backing off), in full.
    pending: HashMap<String, Pod>,
    /// Every pod bound to a node, summarized.
    bound: HashMap<String, PodSummary>,
    /// Per node name: the sums over its live bound pods.
    usage: HashMap<String, NodeUsage>,
    nodes: BTreeMap<String, Node>,
    /// Pods bound by us whose binding the watch has not shown yet: key → node.
    assumed: HashMap<String, String>,
    active: VecDeque<String>,
    queued: HashSet<String>,
    unschedulable: HashSet<String>,
    /// Pods whose last attempt failed on an API error: when to retry.
    backoff: HashMap<String, Instant>,
    /// API errors in a row per pod (for the backoff).
    attempts: HashMap<String, u32>,
    /// The last `FailedScheduling` event per pending pod (for aggregation).
    events: HashMap<String, EventRecord>,
}

impl State {
    fn enqueue(&mut self, key: &str) {
        self.unschedulable.remove(key);
        self.backoff.remove(key);
        if self.queued.insert(key.to_string()) {
            self.active.push_back(key.to_string());
        }
    }

    fn forget(&mut self, key: &str) {
        self.unschedulable.remove(key);
        self.backoff.remove(key);
        self.attempts.remove(key);
        self.events.remove(key);
        if self.queued.remove(key) {
            self.active.retain(|k| k != key);
        }
    }

    fn pop(&mut self) -> Option<String> {
        let key = self.active.pop_front()?;
        self.queued.remove(&key);
        Some(key)
    }

    /// Something changed that may let unschedulable pods fit: try them all again.
    fn flush_unschedulable(&mut self) {
        let keys: Vec<String> = self.unschedulable.drain().collect();
        for k in keys {
            self.enqueue(&k);
        }
    }

    fn next_backoff(&self) -> Option<Instant> {
        self.backoff.values().min().copied()
    }

    fn backoff_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .backoff
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.enqueue(&k);
        }
    }

    fn retry_later(&mut self, key: &str) {
        let attempts = self.attempts.entry(key.to_string()).or_insert(0);
        *attempts = attempts.saturating_add(1);
        let delay = Duration::from_millis(250 << (*attempts).min(7)).min(Duration::from_secs(30));
        self.unschedulable.remove(key);
        self.backoff.insert(key.to_string(), after(delay));
    }

    fn apply_node(&mut self, kind: &str, node: Node) {
        let Some(name) = node.metadata.name.clone().filter(|n| !n.is_empty()) else {
            // Nothing could be bound to it (the API never serves one).
            tracing::debug!(kind, "ignoring a node without a name");
            return;
        };
        if kind == "DELETED" {
            self.nodes.remove(&name);
            return;
        }
        let changed = self
            .nodes
            .get(&name)
            .is_none_or(|old| node_view(old) != node_view(&node));
        self.nodes.insert(name, node);
        if changed {
            self.flush_unschedulable();
        }
    }

    /// Records where a pod is bound (or that it is not) and keeps the node sums in step; the
    /// summary it replaces.
    fn set_bound(&mut self, key: &str, summary: Option<PodSummary>) -> Option<PodSummary> {
        let old = match summary {
            Some(new) => {
                let Some(node) = new.node.as_deref() else {
                    return self.set_bound(key, None);
                };
                if self.bound.get(key) == Some(&new) {
                    return Some(new);
                }
                self.usage.entry(node.to_string()).or_default().add(&new);
                self.bound.insert(key.to_string(), new)
            }
            None => self.bound.remove(key),
        };
        if let Some(o) = &old
            && let Some(node) = o.node.as_deref()
            && let Some(u) = self.usage.get_mut(node)
        {
            u.remove(o);
            if u.is_empty() {
                self.usage.remove(node);
            }
        }
        old
    }

    fn apply_pod(&mut self, kind: &str, mut pod: Pod, scheduler_name: &str) {
        if pod.metadata.name.as_deref().is_none_or(str::is_empty) {
            // It could be neither bound nor told apart from others (the API never serves one).
            tracing::debug!(kind, "ignoring a pod without a name");
            return;
        }
        let key = pod_key(&pod);
        if kind == "DELETED" {
            self.pending.remove(&key);
            let old = self.set_bound(&key, None);
            self.assumed.remove(&key);
            self.forget(&key);
            if old.is_some_and(|o| !o.terminal) {
                self.flush_unschedulable();
            }
            return;
        }
        if let Some(node) = self.assumed.get(&key).cloned() {
            if bound_node(&pod).is_none() && pod.metadata.deletion_timestamp.is_none() {
                // An event from before our binding: keep counting the pod on its node.
                if let Some(spec) = pod.spec.as_mut() {
                    spec.node_name = Some(node);
                }
            } else {
                self.assumed.remove(&key);
            }
        }
        if needs_scheduling(&pod, scheduler_name) {
            let relevant = self
                .pending
                .get(&key)
                .is_none_or(|o| o.spec != pod.spec || o.metadata.labels != pod.metadata.labels);
            self.set_bound(&key, None);
            self.pending.insert(key.clone(), slim(pod));
            if relevant {
                self.enqueue(&key);
            }
        } else {
            self.pending.remove(&key);
            let summary = summarize(&pod);
            let freed = summary.terminal
                && self
                    .bound
                    .get(&key)
                    .is_some_and(|o| !o.terminal && o.node.is_some());
            self.set_bound(&key, Some(summary));
            self.forget(&key);
            if freed {
                self.flush_unschedulable();
            }
        }
    }

    /// The nodes with what is on them, for one attempt.
    fn node_states(&self) -> Vec<NodeState<'_>> {
        self.nodes
            .iter()
            .map(|(name, node)| NodeState {
                node,
                usage: self.usage.get(name).unwrap_or(&NO_USAGE),
            })
            .collect()
    }
}

/// Counters of what the scheduler did, for tests and diagnostics
/// ([`Scheduler::stats`]).
#[derive(Debug, Default)]
pub struct SchedulerStats {
    relists: AtomicU64,
    rewatches: AtomicU64,
    panics: AtomicU64,
}

impl SchedulerStats {
    /// How many times all pods and nodes were listed (once per session: at the start and
    /// after a 410 Gone or another error).
    pub fn relists(&self) -> u64 {
        self.relists.load(Ordering::Relaxed)
    }

    /// How many times a watch that ended normally (its timeout) was resumed from the last
    /// resourceVersion seen, without a list.
    pub fn rewatches(&self) -> u64 {
        self.rewatches.load(Ordering::Relaxed)
    }

    /// How many sessions ended in a panic (caught, logged, and started again).
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }
}

/// `now + d`, or a far future when that is not representable.
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
        .unwrap_or(now)
}

/// Where a watch of one resource stands: the stream and the last resourceVersion seen (from
/// the list, events and bookmarks), to resume from when the stream ends.
struct Watched {
    what: &'static str,
    path: &'static str,
    resource_version: String,
    stream: WatchStream,
    started: Instant,
}

/// The resourceVersion of a watch event's object, if it has one.
fn event_resource_version(object: &Value) -> Option<&str> {
    object
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str)
        .filter(|rv| !rv.is_empty())
}

/// The scheduler: campaigns for the lease (if configured) and schedules while it leads.
pub struct Scheduler {
    client: Client,
    config: SchedulerConfig,
    clock: Arc<dyn Clock>,
    stats: Arc<SchedulerStats>,
}

impl Scheduler {
    pub fn new(api: Arc<ApiServer>, config: SchedulerConfig) -> Scheduler {
        Scheduler::with_user(api, config, client::scheduler_user())
    }

    pub fn with_user(api: Arc<ApiServer>, config: SchedulerConfig, user: User) -> Scheduler {
        Scheduler {
            client: Client::new(api, user),
            config,
            clock: Arc::new(SystemClock),
            stats: Arc::default(),
        }
    }

    /// The scheduler's counters; they stay readable after [`Scheduler::run`] took it.
    pub fn stats(&self) -> Arc<SchedulerStats> {
        self.stats.clone()
    }

    /// Runs until the future is dropped (or its task aborted). Everything, the election
    /// included, runs inside this one future: aborting it stops renewing the lease too.
    pub async fn run(self) {
        let (tx, rx) = watch::channel(!self.config.leader_elect);
        if self.config.leader_elect {
            let elector = LeaderElector {
                client: self.client.clone(),
                namespace: self.config.lease_namespace.clone(),
                name: self.config.lease_name.clone(),
                identity: self.config.identity.clone(),
                lease_duration: self.config.lease_duration,
                renew_interval: self.config.renew_interval,
                clock: self.clock.clone(),
            };
            tokio::join!(elector.run(tx), self.schedule_while_leading(rx));
        } else {
            let _keep = tx;
            self.schedule_while_leading(rx).await;
        }
    }

    async fn schedule_while_leading(&self, mut leading: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            if leading.wait_for(|l| *l).await.is_err() {
                return;
            }
            tracing::info!(identity = %self.config.identity, "scheduling");
            let started = Instant::now();
            // A bug must not end scheduling for good: where panics unwind (debug builds, tests)
            // the session's cache is dropped and a new session lists afresh. (Release builds
            // abort on panic; nothing in the scheduler should panic on API data anyway.)
            let outcome = AssertUnwindSafe(self.session(&mut leading))
                .catch_unwind()
                .await;
            match outcome {
                Ok(Ok(())) => {
                    tracing::info!(identity = %self.config.identity, "stopped scheduling: not the leader");
                    backoff.reset();
                }
                Ok(Err(e)) => {
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "scheduler");
                    tokio::time::sleep(delay).await;
                }
                Err(panic) => {
                    self.stats.panics.fetch_add(1, Ordering::Relaxed);
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    let delay = backoff.next_delay();
                    tracing::error!(panic = %what, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "scheduler session panicked; starting over");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// How long each watch request lasts (whole seconds, at least one).
    fn watch_timeout(&self) -> Duration {
        Duration::from_secs(self.config.watch_timeout.as_secs().max(1))
    }

    fn watch_path(&self, base: &str, rv: &str) -> String {
        format!(
            "{base}?watch=1&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds={}",
            self.watch_timeout().as_secs()
        )
    }

    /// One list+watch session: lists pods and nodes (page by page), then schedules from the
    /// watches until leadership is lost (Ok) or a watch fails (410 Gone included: the caller
    /// starts a new session, which lists again). A watch that merely times out is resumed
    /// from the last resourceVersion seen, keeping the cache.
    async fn session(&self, leading: &mut watch::Receiver<bool>) -> Result<(), ScheduleError> {
        let name = self.config.scheduler_name.as_str();
        let mut state = State::default();
        self.stats.relists.fetch_add(1, Ordering::Relaxed);
        let nodes_rv = self
            .client
            .list_pages::<Node>("/api/v1/nodes", self.config.list_page_size, |page| {
                for n in page {
                    state.apply_node("ADDED", n);
                }
            })
            .await
            .map_err(|source| ScheduleError::List {
                what: "nodes",
                source,
            })?;
        // Bound pods are summarized as each page arrives: no page outlives its loop.
        let pods_rv = self
            .client
            .list_pages::<Pod>("/api/v1/pods", self.config.list_page_size, |page| {
                for p in page {
                    state.apply_pod("ADDED", p, name);
                }
            })
            .await
            .map_err(|source| ScheduleError::List {
                what: "pods",
                source,
            })?;
        let mut pods = self.start_watch("pods", "/api/v1/pods", pods_rv).await?;
        let mut nodes = self.start_watch("nodes", "/api/v1/nodes", nodes_rv).await?;
        let mut next_flush = after(self.config.unschedulable_retry);
        let far = Duration::from_secs(3600);
        loop {
            if !*leading.borrow() {
                return Ok(());
            }
            let backoff_at = state.next_backoff().unwrap_or_else(|| after(far));
            tokio::select! {
                biased;
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow() {
                        return Ok(());
                    }
                }
                ev = pods.stream.next() => {
                    if let Some(ev) = self.watch_event(&mut pods, ev).await? {
                        let pod: Pod = decode("pod", ev.object)?;
                        state.apply_pod(&ev.kind, pod, name);
                    }
                }
                ev = nodes.stream.next() => {
                    if let Some(ev) = self.watch_event(&mut nodes, ev).await? {
                        let node: Node = decode("node", ev.object)?;
                        state.apply_node(&ev.kind, node);
                    }
                }
                _ = tokio::time::sleep_until(next_flush) => {
                    next_flush = after(self.config.unschedulable_retry);
                    state.flush_unschedulable();
                }
                _ = tokio::time::sleep_until(backoff_at) => state.backoff_due(),
                _ = std::future::ready(()), if !state.active.is_empty() => {
                    if let Some(key) = state.pop() {
                        self.schedule_one(&mut state, &key).await;
                    }
                    // The in-process API may answer without ever suspending: let the lease
                    // renewal (joined with this future) and other tasks run between
                    // attempts, so a flush of thousands of pods cannot starve them.
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    /// What one item of a watch means: an object event to apply (Some), a bookmark or the
    /// end of the stream, after which the watch goes on from the last resourceVersion (None),
    /// or an error (410 Gone and the like) that ends the session.
    async fn watch_event(
        &self,
        w: &mut Watched,
        ev: Option<Result<client::WatchEvent, ClientError>>,
    ) -> Result<Option<client::WatchEvent>, ScheduleError> {
        let ev = match ev {
            None => {
                if w.started.elapsed() < self.watch_timeout() / 2 {
                    return Err(ScheduleError::WatchEndedEarly(w.what));
                }
                tracing::debug!(what = w.what, resource_version = %w.resource_version, "watch ended; resuming it");
                self.stats.rewatches.fetch_add(1, Ordering::Relaxed);
                let rv = std::mem::take(&mut w.resource_version);
                *w = self.start_watch(w.what, w.path, rv).await?;
                return Ok(None);
            }
            Some(Err(source)) => {
                return Err(ScheduleError::Watch {
                    what: w.what,
                    source,
                });
            }
            Some(Ok(ev)) => ev,
        };
        if let Some(rv) = event_resource_version(&ev.object) {
            rv.clone_into(&mut w.resource_version);
        }
        Ok((ev.kind != "BOOKMARK").then_some(ev))
    }

    async fn start_watch(
        &self,
        what: &'static str,
        path: &'static str,
        resource_version: String,
    ) -> Result<Watched, ScheduleError> {
        let stream = self
            .client
            .watch(&self.watch_path(path, &resource_version))
            .await
            .map_err(|source| ScheduleError::Watch { what, source })?;
        Ok(Watched {
            what,
            path,
            resource_version,
            stream,
            started: Instant::now(),
        })
    }

    /// Tries to place one queued pod.
    async fn schedule_one(&self, state: &mut State, key: &str) {
        // Taken out of the cache for the attempt (nothing else touches the state meanwhile)
        // and put back unless it got bound.
        let Some(mut pod) = state.pending.remove(key) else {
            return;
        };
        if !needs_scheduling(&pod, &self.config.scheduler_name) {
            return;
        }
        let decision = select_node(&pod, &state.node_states());
        let result = match decision {
            Ok(node) => match self.bind(state, key, &pod, &node).await {
                Ok(true) => {
                    if let Some(spec) = pod.spec.as_mut() {
                        spec.node_name = Some(node);
                    }
                    state.set_bound(key, Some(summarize(&pod)));
                    state.events.remove(key);
                    return;
                }
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            },
            Err(why) => {
                state.unschedulable.insert(key.to_string());
                self.mark_unschedulable(state, &pod, &why.message()).await
            }
        };
        state.pending.insert(key.to_string(), pod);
        if let Err(e) = result {
            tracing::warn!(error = %e, pod = %key, "scheduling");
            state.retry_later(key);
        }
    }

    /// Binds the pod to the node; whether it was bound (not when someone else bound it or it
    /// is gone).
    async fn bind(
        &self,
        state: &mut State,
        key: &str,
        pod: &Pod,
        node: &str,
    ) -> Result<bool, ScheduleError> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}/binding");
        match self.client.post(&path, &binding).await {
            Ok(_) => {}
            // Bound by someone else, being deleted, or gone: nothing left to do.
            Err(e) if matches!(e.code(), Some(404 | 409)) => {
                tracing::debug!(error = %e, pod = %key, "not bound");
                return Ok(false);
            }
            Err(source) => {
                return Err(ScheduleError::Bind {
                    binding: format!("{key} to {node}"),
                    source,
                });
            }
        }
        tracing::info!(pod = %key, node, "scheduled");
        state.attempts.remove(key);
        state.assumed.insert(key.to_string(), node.to_string());
        let message = format!("Successfully assigned {ns}/{name} to {node}");
        if let Err(e) = self
            .record_event(pod, "Normal", "Scheduled", "Binding", &message)
            .await
        {
            tracing::warn!(error = %e, "recording the Scheduled event");
        }
        Ok(true)
    }

    async fn mark_unschedulable(
        &self,
        state: &mut State,
        pod: &Pod,
        message: &str,
    ) -> Result<(), ScheduleError> {
        let key = pod_key(pod);
        tracing::debug!(pod = %key, message, "unschedulable");
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        if let Some(conditions) =
            unschedulable_conditions(pod, message, &crate::api::object::now_rfc3339())
        {
            tracing::info!(pod = %key, message, "unschedulable");
            let path = format!("/api/v1/namespaces/{ns}/pods/{name}/status");
            match self
                .client
                .merge_patch(&path, &json!({"status": {"conditions": conditions}}))
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Some(404) => return Ok(()),
                Err(source) => return Err(ScheduleError::Status { pod: key, source }),
            }
        }
        self.record_failed_scheduling(state, pod, message).await
    }

    /// A `FailedScheduling` event, aggregated per pod ([`event_action`]).
    async fn record_failed_scheduling(
        &self,
        state: &mut State,
        pod: &Pod,
        message: &str,
    ) -> Result<(), ScheduleError> {
        let key = pod_key(pod);
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let now = Instant::now();
        let action = event_action(
            state.events.get(&key),
            uid,
            message,
            now,
            self.config.event_aggregation_window,
            self.config.event_min_interval,
        );
        let (name, count) = match action {
            EventAction::Skip => return Ok(()),
            EventAction::Update { name, count } => {
                let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
                let patch = json!({
                    "count": count,
                    "lastTimestamp": crate::api::object::now_rfc3339(),
                });
                match self
                    .client
                    .merge_patch(&format!("/api/v1/namespaces/{ns}/events/{name}"), &patch)
                    .await
                {
                    Ok(_) => (name, count),
                    // The event is gone (expired): start a new one.
                    Err(e) if e.code() == Some(404) => (
                        self.record_event(
                            pod,
                            "Warning",
                            "FailedScheduling",
                            "Scheduling",
                            message,
                        )
                        .await?,
                        1,
                    ),
                    Err(source) => return Err(ScheduleError::Event { pod: key, source }),
                }
            }
            EventAction::Create => (
                self.record_event(pod, "Warning", "FailedScheduling", "Scheduling", message)
                    .await?,
                1,
            ),
        };
        state.events.insert(
            key,
            EventRecord {
                name,
                uid: uid.to_string(),
                message: message.to_string(),
                count,
                last_sent: now,
            },
        );
        Ok(())
    }

    /// Creates an event about the pod; its name.
    async fn record_event(
        &self,
        pod: &Pod,
        type_: &str,
        reason: &str,
        action: &str,
        message: &str,
    ) -> Result<String, ScheduleError> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let nanos = self.clock.now().as_nanosecond();
        let now = crate::api::object::now_rfc3339();
        let event_name = format!("{name}.{nanos:x}");
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name, "namespace": ns},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": ns,
                "name": name,
                "uid": pod.metadata.uid,
                "resourceVersion": pod.metadata.resource_version,
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "action": action,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": self.config.scheduler_name},
            "reportingComponent": self.config.scheduler_name,
            "reportingInstance": self.config.identity,
        });
        match self
            .client
            .post(&format!("/api/v1/namespaces/{ns}/events"), &event)
            .await
        {
            Ok(_) => Ok(event_name),
            Err(e) if e.code() == Some(409) => Ok(event_name),
            Err(source) => Err(ScheduleError::Event {
                pod: pod_key(pod),
                source,
            }),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    v: Value,
) -> Result<T, ScheduleError> {
    serde_json::from_value(v).map_err(|source| ScheduleError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter::tests::{node, pod};

    fn named_node(name: &str, cpu: &str) -> Node {
        node(json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": cpu}}}))
    }

    fn named_pod(name: &str, v: Value) -> Pod {
        let mut p = pod(v);
        p.metadata.name = Some(name.into());
        p
    }

    /// A node with nothing on it.
    fn idle(node: &Node) -> NodeState<'_> {
        NodeState {
            node,
            usage: &NO_USAGE,
        }
    }

    #[test]
    fn select_node_filters_then_scores() {
        let a = named_node("a", "1");
        let b = named_node("b", "8");
        let states = [idle(&a), idle(&b)];
        assert_eq!(select_node(&pod(json!({})), &states), Ok("b".into()));
        let two = pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": "2"}}}]}}));
        assert_eq!(select_node(&two, &states), Ok("b".into()));
        let nine = pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": "9"}}}]}}));
        let err = select_node(&nine, &states).unwrap_err();
        assert_eq!(err.total_nodes, 2);
        assert_eq!(
            err.message(),
            "0/2 nodes are available: 2 Insufficient cpu."
        );
        assert_eq!(
            select_node(&pod(json!({})), &[]).unwrap_err().message(),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn which_pods_are_ours() {
        assert!(needs_scheduling(&pod(json!({})), DEFAULT_SCHEDULER_NAME));
        assert!(needs_scheduling(
            &pod(json!({"spec": {"schedulerName": "default-scheduler"}})),
            DEFAULT_SCHEDULER_NAME
        ));
        assert!(!needs_scheduling(
            &pod(json!({"spec": {"schedulerName": "other"}})),
            DEFAULT_SCHEDULER_NAME
        ));
        assert!(!needs_scheduling(
            &pod(json!({"spec": {"nodeName": "n1"}})),
            DEFAULT_SCHEDULER_NAME
        ));
        assert!(!needs_scheduling(
            &pod(json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}})),
            DEFAULT_SCHEDULER_NAME
        ));
        assert!(!needs_scheduling(
            &pod(json!({"status": {"phase": "Failed"}})),
            DEFAULT_SCHEDULER_NAME
        ));
    }

    #[test]
    fn unschedulable_condition_updates() {
        let p = pod(json!({"status": {"conditions": [
            {"type": "Initialized", "status": "True"}]}}));
        let c = unschedulable_conditions(&p, "0/1 nodes are available.", "2024-01-01T00:00:00Z")
            .unwrap();
        assert_eq!(c.as_array().unwrap().len(), 2);
        assert_eq!(c[0]["type"], "Initialized");
        assert_eq!(c[1]["type"], "PodScheduled");
        assert_eq!(c[1]["status"], "False");
        assert_eq!(c[1]["reason"], "Unschedulable");
        assert_eq!(c[1]["message"], "0/1 nodes are available.");
        assert_eq!(c[1]["lastTransitionTime"], "2024-01-01T00:00:00Z");
        let marked = pod(json!({"status": {"conditions": c}}));
        assert_eq!(
            unschedulable_conditions(&marked, "0/1 nodes are available.", "2025-01-01T00:00:00Z"),
            None,
            "nothing to write"
        );
        let changed =
            unschedulable_conditions(&marked, "0/2 nodes are available.", "2025-01-01T00:00:00Z")
                .unwrap();
        assert_eq!(changed[1]["message"], "0/2 nodes are available.");
        assert_eq!(
            changed[1]["lastTransitionTime"], "2024-01-01T00:00:00Z",
            "still False: the transition time stays"
        );
    }

    #[test]
    fn queue_follows_watch_events() {
        let mut s = State::default();
        s.apply_node("ADDED", named_node("a", "1"));
        s.apply_pod("ADDED", named_pod("p", json!({})), DEFAULT_SCHEDULER_NAME);
        assert_eq!(s.pop().as_deref(), Some("default/p"));
        assert!(s.pop().is_none());
        // Unschedulable; a status-only update does not retry it, a spec change does.
        s.unschedulable.insert("default/p".into());
        let mut status_only = named_pod("p", json!({"status": {"phase": "Pending"}}));
        s.apply_pod("MODIFIED", status_only.clone(), DEFAULT_SCHEDULER_NAME);
        assert!(s.active.is_empty());
        status_only.spec.as_mut().unwrap().tolerations = Some(vec![Default::default()]);
        s.apply_pod("MODIFIED", status_only, DEFAULT_SCHEDULER_NAME);
        assert_eq!(s.pop().as_deref(), Some("default/p"));
        // A node heartbeat does not retry it, a capacity change or a new node does.
        s.unschedulable.insert("default/p".into());
        let mut heartbeat = named_node("a", "1");
        heartbeat.metadata.annotations = Some([("beat".to_string(), "1".to_string())].into());
        s.apply_node("MODIFIED", heartbeat);
        assert!(s.active.is_empty());
        s.apply_node("MODIFIED", named_node("a", "2"));
        assert_eq!(s.pop().as_deref(), Some("default/p"));
        s.unschedulable.insert("default/p".into());
        s.apply_node("ADDED", named_node("b", "1"));
        assert_eq!(s.pop().as_deref(), Some("default/p"));
        // A bound pod leaving its node retries unschedulable pods.
        s.unschedulable.insert("default/p".into());
        let bound = named_pod("q", json!({"spec": {"nodeName": "a"}}));
        s.apply_pod("ADDED", bound.clone(), DEFAULT_SCHEDULER_NAME);
        assert!(s.active.is_empty());
        s.apply_pod("DELETED", bound, DEFAULT_SCHEDULER_NAME);
        assert_eq!(s.pop().as_deref(), Some("default/p"));
        // Deleting a queued pod drops it.
        s.enqueue("default/p");
        s.apply_pod("DELETED", named_pod("p", json!({})), DEFAULT_SCHEDULER_NAME);
        assert!(s.pop().is_none());
    }

    #[test]
    fn assumed_bindings_survive_stale_events() {
        let mut s = State::default();
        s.apply_pod("ADDED", named_pod("p", json!({})), DEFAULT_SCHEDULER_NAME);
        s.pop();
        // We bound it to a (as schedule_one records it); then an older event (our status
        // patch) shows it unbound.
        let mut p = s.pending.remove("default/p").unwrap();
        p.spec.as_mut().unwrap().node_name = Some("a".into());
        s.assumed.insert("default/p".into(), "a".into());
        s.set_bound("default/p", Some(summarize(&p)));
        assert_eq!(s.usage["a"].pods, 1);
        s.apply_pod(
            "MODIFIED",
            named_pod("p", json!({"status": {"phase": "Pending"}})),
            DEFAULT_SCHEDULER_NAME,
        );
        assert!(s.active.is_empty(), "not queued again");
        assert!(s.pending.is_empty());
        assert_eq!(s.bound["default/p"].node.as_deref(), Some("a"));
        assert_eq!(s.usage["a"].pods, 1, "still counted on a");
        // The binding's own event clears the assumption.
        s.apply_pod(
            "MODIFIED",
            named_pod("p", json!({"spec": {"nodeName": "a"}})),
            DEFAULT_SCHEDULER_NAME,
        );
        assert!(s.assumed.is_empty());
        assert_eq!(s.usage["a"].pods, 1);
        // Deleted while assumed and unbound in the watch: counted nowhere.
        s.assumed.insert("default/p".into(), "a".into());
        s.apply_pod("DELETED", named_pod("p", json!({})), DEFAULT_SCHEDULER_NAME);
        assert!(s.assumed.is_empty() && s.bound.is_empty() && s.usage.is_empty());
    }

    #[test]
    fn api_errors_back_off() {
        let mut s = State::default();
        s.retry_later("default/p");
        let first = s.next_backoff().unwrap();
        assert!(first > Instant::now());
        s.backoff_due();
        assert!(s.active.is_empty(), "not due yet");
        s.backoff.insert("default/p".into(), Instant::now());
        s.backoff_due();
        assert_eq!(s.pop().as_deref(), Some("default/p"));
        s.retry_later("default/p");
        assert_eq!(s.attempts["default/p"], 2);
        assert!(s.next_backoff().unwrap() - Instant::now() > Duration::from_millis(600));
    }

    /// The node sums rebuilt from scratch out of the latest version of every pod.
    fn rebuilt(pods: &HashMap<String, Pod>) -> HashMap<String, NodeUsage> {
        let mut on: HashMap<String, Vec<&Pod>> = HashMap::new();
        for p in pods.values() {
            if let Some(n) = bound_node(p) {
                on.entry(n.to_string()).or_default().push(p);
            }
        }
        on.into_iter()
            .map(|(n, ps)| (n, NodeUsage::of(&ps)))
            .filter(|(_, u)| !u.is_empty())
            .collect()
    }

    #[test]
    fn node_sums_follow_pods_incrementally() {
        let mut s = State::default();
        let mut latest: HashMap<String, Pod> = HashMap::new();
        let mut apply = |s: &mut State, kind: &str, p: Pod| {
            let key = pod_key(&p);
            if kind == "DELETED" {
                latest.remove(&key);
            } else {
                latest.insert(key, p.clone());
            }
            s.apply_pod(kind, p, DEFAULT_SCHEDULER_NAME);
            assert_eq!(s.usage, rebuilt(&latest), "after {kind}");
            assert!(s.bound.values().all(|b| b.node.is_some()));
        };
        let on = |name: &str, node: &str, cpu: &str, extra: Value| {
            let mut v = json!({"spec": {"nodeName": node, "containers": [{"name": "c",
                "image": "i", "resources": {"requests": {"cpu": cpu}},
                "ports": [{"containerPort": 80, "hostPort": 8080}]}]},
                "metadata": {"ownerReferences": [{"apiVersion": "apps/v1",
                    "kind": "ReplicaSet", "name": "rs", "uid": "u1", "controller": true}]}});
            json_patch::merge(&mut v, &extra);
            named_pod(name, v)
        };
        apply(&mut s, "ADDED", on("a1", "a", "1", json!({})));
        apply(&mut s, "ADDED", on("a2", "a", "500m", json!({})));
        apply(&mut s, "ADDED", on("b1", "b", "2", json!({})));
        assert_eq!(s.usage["a"].pods, 2);
        assert_eq!(s.usage["a"].requested["cpu"], 1500);
        assert_eq!(s.usage["a"].controllers.get("default/u1"), Some(&2));
        // An update that changes what the pod requests replaces its share.
        apply(&mut s, "MODIFIED", on("a2", "a", "250m", json!({})));
        assert_eq!(s.usage["a"].requested["cpu"], 1250);
        // Status-only updates leave the sums alone.
        apply(
            &mut s,
            "MODIFIED",
            on("a2", "a", "250m", json!({"status": {"phase": "Running"}})),
        );
        // Terminal: it holds nothing any more, and unschedulable pods are retried.
        s.unschedulable.insert("default/waiting".into());
        apply(
            &mut s,
            "MODIFIED",
            on("a1", "a", "1", json!({"status": {"phase": "Succeeded"}})),
        );
        assert_eq!(s.pop().as_deref(), Some("default/waiting"));
        assert_eq!(s.usage["a"].pods, 1);
        assert_eq!(s.usage["a"].controllers.get("default/u1"), Some(&1));
        // Deleting a terminal pod frees nothing more (no retry); a live one does.
        s.unschedulable.insert("default/waiting".into());
        apply(
            &mut s,
            "DELETED",
            on("a1", "a", "1", json!({"status": {"phase": "Succeeded"}})),
        );
        assert!(s.active.is_empty());
        apply(&mut s, "DELETED", on("a2", "a", "250m", json!({})));
        assert_eq!(s.pop().as_deref(), Some("default/waiting"));
        assert!(!s.usage.contains_key("a"), "an empty node has no entry");
        // Pods of other schedulers and pending pods count nowhere and are not summarized.
        apply(
            &mut s,
            "ADDED",
            named_pod("other", json!({"spec": {"schedulerName": "x"}})),
        );
        apply(&mut s, "ADDED", named_pod("mine", json!({})));
        assert!(s.pending.contains_key("default/mine"));
        assert!(!s.pending.contains_key("default/other"));
        assert_eq!(s.bound.len(), 1);
        // A pending pod that gets bound (by anyone) moves from pending to the sums.
        apply(&mut s, "MODIFIED", on("mine", "b", "1", json!({})));
        assert!(s.pending.is_empty());
        assert_eq!(s.usage["b"].pods, 2);
        assert_eq!(s.usage["b"].requested["cpu"], 3000);
        let port = ("TCP".to_string(), "0.0.0.0".to_string(), 8080);
        assert_eq!(s.usage["b"].host_ports.get(&port), Some(&2));
        // Bound pods of another scheduler count too.
        apply(
            &mut s,
            "ADDED",
            on("theirs", "c", "1", json!({"spec": {"schedulerName": "x"}})),
        );
        assert_eq!(s.usage["c"].pods, 1);
    }

    #[test]
    fn assumed_binding_counts_until_the_watch_agrees() {
        let mut s = State::default();
        s.apply_node("ADDED", named_node("a", "1"));
        let p = named_pod("p", json!({"metadata": {"uid": "u"}}));
        s.apply_pod("ADDED", p.clone(), DEFAULT_SCHEDULER_NAME);
        let key = s.pop().unwrap();
        // What schedule_one does after a successful binding.
        let mut bound = s.pending.remove(&key).unwrap();
        bound.spec.as_mut().unwrap().node_name = Some("a".into());
        s.assumed.insert(key.clone(), "a".into());
        s.set_bound(&key, Some(summarize(&bound)));
        let states = s.node_states();
        assert_eq!(states[0].usage.pods, 1);
        drop(states);
        // Stale unbound event: still on a.
        s.apply_pod("MODIFIED", p.clone(), DEFAULT_SCHEDULER_NAME);
        assert_eq!(s.usage["a"].pods, 1);
        assert!(s.pending.is_empty() && s.active.is_empty());
        // The binding itself arrives, then the pod finishes.
        s.apply_pod("MODIFIED", bound.clone(), DEFAULT_SCHEDULER_NAME);
        assert!(s.assumed.is_empty());
        assert_eq!(s.usage["a"].pods, 1);
        bound.status = Some(serde_json::from_value(json!({"phase": "Failed"})).unwrap());
        s.apply_pod("MODIFIED", bound, DEFAULT_SCHEDULER_NAME);
        assert!(s.usage.is_empty());
        assert!(s.bound["default/p"].terminal);
        // Deleting the pending pod's key drops its event record too.
        s.events.insert(
            "default/q".into(),
            EventRecord {
                name: "q.1".into(),
                uid: "u".into(),
                message: "m".into(),
                count: 1,
                last_sent: Instant::now(),
            },
        );
        s.apply_pod("ADDED", named_pod("q", json!({})), DEFAULT_SCHEDULER_NAME);
        s.apply_pod("DELETED", named_pod("q", json!({})), DEFAULT_SCHEDULER_NAME);
        assert!(s.events.is_empty() && s.pending.is_empty());
    }

    #[test]
    fn no_status_patch_when_already_unschedulable() {
        let msg = "0/2 nodes are available: 2 Insufficient cpu.";
        // Condition order and other conditions do not matter.
        let marked = pod(json!({"status": {"conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": msg, "lastTransitionTime": "2024-01-01T00:00:00Z"},
            {"type": "Initialized", "status": "True"}]}}));
        assert_eq!(unschedulable_conditions(&marked, msg, "now"), None);
        // Another reason or status is written over.
        let other_reason = pod(json!({"status": {"conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "SchedulerError",
             "message": msg}]}}));
        assert!(unschedulable_conditions(&other_reason, msg, "now").is_some());
        let scheduled = pod(json!({"status": {"conditions": [
            {"type": "PodScheduled", "status": "True"}]}}));
        let c = unschedulable_conditions(&scheduled, msg, "2025-01-01T00:00:00Z").unwrap();
        assert_eq!(c[0]["lastTransitionTime"], "2025-01-01T00:00:00Z");
        // The cache keeps the patched status (a status-only change does not requeue).
        let mut s = State::default();
        s.apply_pod("ADDED", named_pod("p", json!({})), DEFAULT_SCHEDULER_NAME);
        s.pop();
        s.unschedulable.insert("default/p".into());
        let mut patched = marked.clone();
        patched.metadata.name = Some("p".into());
        s.apply_pod("MODIFIED", patched, DEFAULT_SCHEDULER_NAME);
        assert!(s.active.is_empty());
        assert_eq!(
            unschedulable_conditions(&s.pending["default/p"], msg, "now"),
            None
        );
    }

    #[test]
    fn events_aggregate_and_rate_limit() {
        let window = Duration::from_secs(600);
        let min = Duration::from_secs(30);
        let t0 = Instant::now();
        let last = EventRecord {
            name: "p.abc".into(),
            uid: "u1".into(),
            message: "m".into(),
            count: 3,
            last_sent: t0,
        };
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(
            event_action(None, "u1", "m", t0, window, min),
            EventAction::Create
        );
        // Within the rate limit nothing is recorded, whatever the message.
        assert_eq!(
            event_action(Some(&last), "u1", "m", at(10), window, min),
            EventAction::Skip
        );
        assert_eq!(
            event_action(Some(&last), "u1", "other", at(29), window, min),
            EventAction::Skip
        );
        // The same message later: the count goes up on the existing event.
        assert_eq!(
            event_action(Some(&last), "u1", "m", at(30), window, min),
            EventAction::Update {
                name: "p.abc".into(),
                count: 4
            }
        );
        assert_eq!(
            event_action(Some(&last), "u1", "m", at(599), window, min),
            EventAction::Update {
                name: "p.abc".into(),
                count: 4
            }
        );
        // Too old, another message or another pod of that name: a new event.
        assert_eq!(
            event_action(Some(&last), "u1", "m", at(600), window, min),
            EventAction::Create
        );
        assert_eq!(
            event_action(Some(&last), "u1", "other", at(31), window, min),
            EventAction::Create
        );
        assert_eq!(
            event_action(Some(&last), "u2", "m", at(1), window, min),
            EventAction::Create
        );
        // No rate limit configured: every occurrence counts.
        assert_eq!(
            event_action(Some(&last), "u1", "m", t0, window, Duration::ZERO),
            EventAction::Update {
                name: "p.abc".into(),
                count: 4
            }
        );
    }

    #[test]
    fn odd_objects_do_not_panic() {
        let mut s = State::default();
        // Nameless (or empty-named) pods and nodes are ignored, whatever else they lack.
        let mut nameless = named_pod("x", json!({}));
        nameless.metadata.name = None;
        s.apply_pod("ADDED", nameless.clone(), DEFAULT_SCHEDULER_NAME);
        nameless.metadata.name = Some(String::new());
        s.apply_pod("MODIFIED", nameless.clone(), DEFAULT_SCHEDULER_NAME);
        s.apply_pod("DELETED", nameless, DEFAULT_SCHEDULER_NAME);
        s.apply_pod("ADDED", Pod::default(), DEFAULT_SCHEDULER_NAME);
        s.apply_node("ADDED", Node::default());
        let mut empty_name = named_node("n", "1");
        empty_name.metadata.name = Some(String::new());
        s.apply_node("ADDED", empty_name);
        assert!(s.pending.is_empty() && s.bound.is_empty() && s.nodes.is_empty());
        assert!(s.pop().is_none());
        // A pod without a spec or namespace, a node without status: no panic anywhere.
        let mut bare = Pod::default();
        bare.metadata.name = Some("bare".into());
        s.apply_pod("ADDED", bare.clone(), DEFAULT_SCHEDULER_NAME);
        let mut bare_node = Node::default();
        bare_node.metadata.name = Some("bare".into());
        s.apply_node("ADDED", bare_node);
        assert!(
            s.pending.is_empty() && s.bound.is_empty(),
            "no spec: neither ours to schedule nor on a node"
        );
        assert!(select_node(&bare, &s.node_states()).is_err());
        assert!(select_node(&named_pod("p", json!({})), &s.node_states()).is_err());
        s.apply_pod("DELETED", bare, DEFAULT_SCHEDULER_NAME);
        assert!(s.bound.is_empty());
        // Retries back off without overflowing however often they fail.
        s.attempts.insert("default/p".into(), u32::MAX);
        s.retry_later("default/p");
        assert_eq!(s.attempts["default/p"], u32::MAX);
        assert!(after(Duration::MAX) > Instant::now());
    }

    #[test]
    fn ties_go_to_the_first_node() {
        let a = named_node("a", "4");
        let b = named_node("b", "4");
        let states = [idle(&a), idle(&b)];
        assert_eq!(select_node(&pod(json!({})), &states), Ok("a".into()));
        let reversed = [states[1], states[0]];
        assert_eq!(select_node(&pod(json!({})), &reversed), Ok("b".into()));
    }

    #[test]
    fn resource_versions_of_watch_events() {
        let obj = |v: Value| v;
        assert_eq!(
            event_resource_version(&obj(json!({"metadata": {"resourceVersion": "42"}}))),
            Some("42")
        );
        assert_eq!(
            event_resource_version(&obj(json!({"metadata": {"resourceVersion": ""}}))),
            None
        );
        assert_eq!(
            event_resource_version(&obj(json!({"metadata": {"resourceVersion": 42}}))),
            None
        );
        assert_eq!(
            event_resource_version(&obj(json!({"metadata": null}))),
            None
        );
        assert_eq!(event_resource_version(&obj(json!([1, 2]))), None);
        assert_eq!(event_resource_version(&Value::Null), None);
    }

    #[test]
    fn pending_pods_are_kept_slim() {
        let mut s = State::default();
        let p = named_pod(
            "p",
            json!({"metadata": {"annotations": {"a": "b"}, "labels": {"app": "x"},
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]}}),
        );
        s.apply_pod("ADDED", p.clone(), DEFAULT_SCHEDULER_NAME);
        let kept = &s.pending["default/p"];
        assert_eq!(kept.metadata.managed_fields, None);
        assert_eq!(kept.metadata.annotations, None);
        assert_eq!(kept.metadata.labels, p.metadata.labels);
        assert_eq!(kept.spec, p.spec);
        // An annotation-only change is not a reason to retry.
        s.pop();
        s.apply_pod("MODIFIED", p, DEFAULT_SCHEDULER_NAME);
        assert!(s.active.is_empty());
    }
}
