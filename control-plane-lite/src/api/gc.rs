//! Garbage collection by `ownerReferences` and namespace finalization, as Kubernetes' garbage
//! collector and namespace controller do them, driven by the store itself so that a restart
//! resumes where the last run stopped (every step is visible in the stored objects: the
//! `orphan` / `foregroundDeletion` finalizers, deletion timestamps, the `kubernetes` namespace
//! finalizer, dependents whose owners are gone).
//!
//! [`spawn`] starts the collector: one sweep at start, then a sweep whenever the store shows a
//! change that can matter (a delete, an object being deleted, an object with owners), and
//! every [`PERIOD`] regardless; a burst of changes makes one sweep, and sweeps come at most
//! once per [`MIN_SWEEP_INTERVAL`]. A sweep reads every object once and:
//! - finishes terminating namespaces (deletes their contents; once nothing is left, removes the
//!   `kubernetes` finalizer and with it the namespace);
//! - deletes terminating pods bound to Nodes that do not exist once their grace period is
//!   over (no agent would ever finish them), as Kubernetes' PodGC does;
//! - orphans the dependents of owners with the `orphan` finalizer (removes their references),
//!   then removes the finalizer;
//! - removes `foregroundDeletion` from owners none of whose blocking dependents is left;
//! - deletes dependents none of whose owners exists any more (or is being deleted in the
//!   foreground), and drops references to gone owners from dependents that still have one.
//!   Owners of kinds this server does not serve are taken to exist, and so are namespaced
//!   owners of cluster-scoped dependents (such a reference cannot be resolved; Kubernetes only
//!   warns about it, `OwnerRefInvalidNamespace`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::object::{meta_mut, meta_str, strings};
use super::raw;
use super::resources::{Kind, RESOURCES, Resource};
use super::status::{ApiError, Cause};
use super::{ApiServer, Target, to_object, to_stored};
use crate::store::{KeyValue, Pages, StoreError, WatchEvent, WatchStream};

/// The finalizer that makes deletion orphan the dependents first.
pub const ORPHAN: &str = "orphan";
/// The finalizer that makes deletion delete the (blocking) dependents first.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The namespace controller's finalizer (in a namespace's `spec.finalizers`).
pub const NAMESPACE_FINALIZER: &str = "kubernetes";
/// Namespaces that cannot be deleted.
pub const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];
/// A sweep runs at least this often.
pub const PERIOD: Duration = Duration::from_secs(15);
/// A sweep runs at most this often: the events of a burst (a namespace of thousands of pods
/// being emptied) make one sweep, not one each.
pub const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// After a relevant event, the events that follow are read for at most this long before the
/// sweep...
const SETTLE: Duration = Duration::from_millis(200);
/// ...or until none came for this long.
const QUIET: Duration = Duration::from_millis(50);

/// `propagationPolicy` of a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Orphan,
    Background,
    Foreground,
}

fn delete_options_invalid(cause: Cause) -> ApiError {
    ApiError::Invalid {
        kind: "DeleteOptions.meta.k8s.io".into(),
        name: String::new(),
        causes: vec![cause],
    }
}

/// The propagation a delete asks for (from its `DeleteOptions` body or the query); None when
/// it asks for none, so the object's finalizers (or the default, background) decide.
pub fn propagation(
    opts: &Value,
    q: &HashMap<String, String>,
) -> Result<Option<Propagation>, ApiError> {
    let policy = opts["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| q.get("propagationPolicy").cloned())
        .filter(|p| !p.is_empty());
    let orphan = opts["orphanDependents"].as_bool().or_else(|| {
        q.get("orphanDependents")
            .map(|v| matches!(v.as_str(), "true" | "1" | "True"))
    });
    let policy = match policy.as_deref() {
        None => None,
        Some("Orphan") => Some(Propagation::Orphan),
        Some("Background") => Some(Propagation::Background),
        Some("Foreground") => Some(Propagation::Foreground),
        Some(other) => {
            return Err(delete_options_invalid(Cause {
                reason: "FieldValueNotSupported",
                field: "propagationPolicy".into(),
                message: format!(
                    "Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                ),
            }));
        }
    };
    match (orphan, policy) {
        (Some(_), Some(p)) => Err(delete_options_invalid(Cause::invalid(
            "propagationPolicy",
            &format!("{p:?}"),
            "orphanDependents and deletionPropagation cannot be both set",
        ))),
        (Some(true), None) => Ok(Some(Propagation::Orphan)),
        (Some(false), None) => Ok(Some(Propagation::Background)),
        (None, p) => Ok(p),
    }
}

/// `metadata.finalizers` of `obj`.
pub fn finalizers(obj: &Value) -> Vec<String> {
    strings(&obj["metadata"]["finalizers"])
}

/// The finalizers an object has once a delete with `policy` starts: `orphan` or
/// `foregroundDeletion` added as asked (an explicit policy wins over the finalizers already
/// there; without one they stay), the other removed.
pub fn finalizers_on_delete(current: &[String], policy: Option<Propagation>) -> Vec<String> {
    let first_gc = current
        .iter()
        .find(|f| f.as_str() == ORPHAN || f.as_str() == FOREGROUND)
        .map(String::as_str);
    let (orphan, foreground) = match policy {
        Some(Propagation::Orphan) => (true, false),
        Some(Propagation::Foreground) => (false, true),
        Some(Propagation::Background) => (false, false),
        None => (first_gc == Some(ORPHAN), first_gc == Some(FOREGROUND)),
    };
    let mut out: Vec<String> = current
        .iter()
        .filter(|f| f.as_str() != ORPHAN && f.as_str() != FOREGROUND)
        .cloned()
        .collect();
    if orphan {
        out.push(ORPHAN.into());
    }
    if foreground {
        out.push(FOREGROUND.into());
    }
    out
}

/// Sets `metadata.finalizers` (removing the field when empty).
pub fn set_finalizers(obj: &mut Value, f: Vec<String>) {
    let m = meta_mut(obj);
    if f.is_empty() {
        m.remove("finalizers");
    } else {
        m.insert("finalizers".into(), json!(f));
    }
}

/// The resources with storage of their own (events.k8s.io Events are core Events).
fn stored_resources() -> impl Iterator<Item = &'static Resource> {
    RESOURCES.iter().filter(|r| r.kind != Kind::EventV1)
}

/// The served resource of an owner reference's `apiVersion` and `kind`.
fn owner_resource(api_version: &str, kind: &str) -> Option<&'static Resource> {
    stored_resources().find(|r| r.api_version() == api_version && r.kind_name == kind)
}

/// One object read by a sweep.
struct Item {
    res: &'static Resource,
    kv: KeyValue,
    obj: Value,
}

impl Item {
    fn uid(&self) -> &str {
        meta_str(&self.obj, "uid").unwrap_or_default()
    }

    fn deleting(&self) -> bool {
        self.obj["metadata"].get("deletionTimestamp").is_some()
    }

    fn target(&self) -> Target {
        Target {
            res: self.res,
            namespace: meta_str(&self.obj, "namespace").map(str::to_string),
            name: meta_str(&self.obj, "name").map(str::to_string),
            sub: None,
        }
    }

    fn owner_refs(&self) -> Vec<Value> {
        self.obj["metadata"]["ownerReferences"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// What a dependent's owner reference points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// Exists and is not waiting for its dependents (or is of a kind not served here).
    Solid,
    /// Exists, being deleted in the foreground.
    Waiting,
    /// Gone (or another object of that name, with another uid).
    Absent,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl ApiServer {
    /// Deletes the contents of terminating namespace `name`; once none is left, removes its
    /// `kubernetes` finalizer (and so the namespace, if nothing else holds it). Returns true
    /// when the namespace is finished (or gone).
    pub(super) fn finalize_namespace<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<bool, ApiError>> {
        Box::pin(async move {
            let mut left = false;
            for r in stored_resources().filter(|r| r.namespaced) {
                let prefix = r.prefix(Some(name));
                let mut pages = Pages::new(&*self.store, &prefix, 500);
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| ApiError::from_store(e, &r.qualified(), ""))?;
                    for kv in &page.items {
                        left = true;
                        let obj = to_object(kv)?;
                        if obj["metadata"].get("deletionTimestamp").is_some() {
                            continue;
                        }
                        let t = Item {
                            res: r,
                            kv: kv.clone(),
                            obj,
                        }
                        .target();
                        match self.delete(&t, &HashMap::new(), &json!({})).await {
                            Ok(_) | Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => {}
                            Err(e) => {
                                tracing::warn!(namespace = name, error = %e, "deleting namespace contents")
                            }
                        }
                    }
                }
            }
            if left && self.namespace_has_contents(name).await? {
                return Ok(false);
            }
            let res = super::resources::Resource::find("", "v1", "namespaces")
                .expect("namespaces are served");
            let t = Target {
                res,
                namespace: None,
                name: Some(name.to_string()),
                sub: None,
            };
            for _ in 0..5 {
                let (kv, mut ns) = match self.current(&t).await {
                    Ok(c) => c,
                    Err(ApiError::NotFound { .. }) => return Ok(true),
                    Err(e) => return Err(e),
                };
                if ns["metadata"].get("deletionTimestamp").is_none() {
                    return Ok(true);
                }
                let Some(list) = ns["spec"]["finalizers"].as_array_mut() else {
                    return Ok(true);
                };
                let before = list.len();
                list.retain(|f| f != NAMESPACE_FINALIZER);
                if list.len() == before {
                    return Ok(true);
                }
                match self.write(&t, &kv, ns).await {
                    Ok(_) => return Ok(true),
                    Err(ApiError::Conflict { .. }) => continue,
                    Err(ApiError::NotFound { .. }) => return Ok(true),
                    Err(e) => return Err(e),
                }
            }
            Ok(false)
        })
    }

    async fn namespace_has_contents(&self, name: &str) -> Result<bool, ApiError> {
        for r in stored_resources().filter(|r| r.namespaced) {
            let page = self
                .store
                .list(&r.prefix(Some(name)), 1, None)
                .await
                .map_err(|e| ApiError::from_store(e, &r.qualified(), ""))?;
            if !page.items.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads the objects a sweep can act on: namespaces, objects with owners and objects being
    /// deleted. Others are skipped by a byte search before any parsing (owners looked up by key
    /// fall back to the store), so a sweep over thousands of plain pods costs a scan, not a
    /// tree per pod.
    async fn snapshot(&self) -> Result<Vec<Item>, ApiError> {
        let mut items = Vec::new();
        for r in stored_resources() {
            let prefix = r.prefix(None);
            let mut pages = Pages::new(&*self.store, &prefix, 500);
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| ApiError::from_store(e, &r.qualified(), ""))?;
                for kv in page.items.iter() {
                    // `/registry/namespaces/` is no prefix of another resource's keys, but a
                    // resource's prefix can be: keep only keys of this resource's shape.
                    let rest = &kv.key[prefix.len()..];
                    if rest.matches('/').count() != usize::from(r.namespaced) {
                        continue;
                    }
                    if r.kind != Kind::Namespace && !may_need_collection(&kv.value) {
                        continue;
                    }
                    items.push(Item {
                        res: r,
                        obj: to_object(kv)?,
                        kv: kv.clone(),
                    });
                }
            }
        }
        Ok(items)
    }

    /// Rewrites a dependent without the owner references `drop` selects.
    async fn drop_owner_refs(
        &self,
        item: &Item,
        drop: impl Fn(&Value) -> bool,
    ) -> Result<(), ApiError> {
        let mut obj = item.obj.clone();
        let refs: Vec<Value> = item.owner_refs().into_iter().filter(|r| !drop(r)).collect();
        let m = meta_mut(&mut obj);
        if refs.is_empty() {
            m.remove("ownerReferences");
        } else {
            m.insert("ownerReferences".into(), json!(refs));
        }
        self.store
            .update(&item.kv.key, to_stored(&obj), Some(item.kv.mod_revision))
            .await
            .map(|_| ())
            .map_err(|e| item.target().store_err(e))
    }

    /// Removes finalizer `f` from `item` (which then goes if nothing else holds it).
    async fn remove_finalizer(&self, item: &Item, f: &str) -> Result<(), ApiError> {
        let mut obj = item.obj.clone();
        let rest: Vec<String> = finalizers(&obj).into_iter().filter(|x| x != f).collect();
        set_finalizers(&mut obj, rest);
        self.write(&item.target(), &item.kv, obj).await.map(|_| ())
    }

    /// Whether the owner `r` of `dep` exists (checked against the store itself, not only the
    /// sweep's snapshot, before anything is deleted because of it).
    async fn owner_state(
        &self,
        dep: &Item,
        r: &Value,
        by_key: &HashMap<String, usize>,
        items: &[Item],
    ) -> Result<Owner, ApiError> {
        let api_version = r["apiVersion"].as_str().unwrap_or_default();
        let kind = r["kind"].as_str().unwrap_or_default();
        let name = r["name"].as_str().unwrap_or_default();
        let uid = r["uid"].as_str().unwrap_or_default();
        let Some(res) = owner_resource(api_version, kind) else {
            return Ok(Owner::Solid);
        };
        let key = if res.namespaced {
            match meta_str(&dep.obj, "namespace") {
                Some(ns) if dep.res.namespaced => res.key(Some(ns), name),
                // A cluster-scoped dependent cannot have a namespaced owner: the reference
                // cannot be resolved, and Kubernetes never collects a dependent because of one
                // (it only reports `OwnerRefInvalidNamespace`; see `invalid_namespace_ref`).
                _ => return Ok(Owner::Solid),
            }
        } else {
            res.key(None, name)
        };
        let state = |obj: &Value| {
            if meta_str(obj, "uid") != Some(uid) {
                Owner::Absent
            } else if obj["metadata"].get("deletionTimestamp").is_some()
                && finalizers(obj).iter().any(|f| f == FOREGROUND)
            {
                Owner::Waiting
            } else {
                Owner::Solid
            }
        };
        if let Some(&i) = by_key.get(&key)
            && state(&items[i].obj) != Owner::Absent
        {
            return Ok(state(&items[i].obj));
        }
        match self.store.get(&key).await {
            Ok(Some(kv)) => Ok(state(&to_object(&kv)?)),
            Ok(None) => Ok(Owner::Absent),
            Err(e) => Err(ApiError::from_store(e, &res.qualified(), name)),
        }
    }

    /// Whether Node `name` exists.
    async fn node_is_stored(&self, name: &str) -> Result<bool, ApiError> {
        let res = super::resources::Resource::find("", "v1", "nodes").expect("nodes are served");
        self.store
            .get(&res.key(None, name))
            .await
            .map(|kv| kv.is_some())
            .map_err(|e| ApiError::from_store(e, &res.qualified(), name))
    }

    /// One pass of the garbage collector and the namespace controller. Returns true when it
    /// changed something (so another pass may find more to do).
    pub async fn collect_garbage(&self) -> Result<bool, ApiError> {
        let items = self.snapshot().await?;
        let mut changed = false;
        let by_key: HashMap<String, usize> = items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.kv.key.clone(), i))
            .collect();
        let mut dependents: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, it) in items.iter().enumerate() {
            for r in it.obj["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(uid) = r["uid"].as_str() {
                    dependents.entry(uid).or_default().push(i);
                }
            }
        }
        let note = |what: &str, it: &Item, r: Result<(), ApiError>| match r {
            Ok(()) => true,
            Err(ApiError::Conflict { .. } | ApiError::NotFound { .. }) => true,
            Err(e) => {
                tracing::warn!(key = %it.kv.key, error = %e, "garbage collector: {what}");
                false
            }
        };
        // Terminating namespaces.
        for it in items.iter().filter(|it| it.res.kind == Kind::Namespace) {
            let pending = it.obj["spec"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == NAMESPACE_FINALIZER));
            if it.deleting() && pending {
                let name = meta_str(&it.obj, "name").unwrap_or_default();
                match self.finalize_namespace(name).await {
                    Ok(true) => changed = true,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(namespace = name, error = %e, "finalizing namespace"),
                }
            }
        }
        // Owners being deleted with the orphan or foreground finalizer.
        for it in items.iter().filter(|it| it.deleting()) {
            let fin = finalizers(&it.obj);
            let uid = it.uid().to_string();
            let deps = dependents.get(uid.as_str()).cloned().unwrap_or_default();
            if fin.iter().any(|f| f == ORPHAN) {
                let mut all = true;
                for &d in &deps {
                    let r = self
                        .drop_owner_refs(&items[d], |r| r["uid"] == uid.as_str())
                        .await;
                    all &= r.is_ok();
                    note("orphaning a dependent", &items[d], r);
                }
                if all {
                    let r = self.remove_finalizer(it, ORPHAN).await;
                    changed |= note("removing the orphan finalizer", it, r);
                }
                // The finalizer update (or the dependents') changed the objects: the next
                // pass continues from fresh reads.
                continue;
            }
            if fin.iter().any(|f| f == FOREGROUND) {
                let blocking = deps.iter().any(|&d| {
                    items[d]
                        .owner_refs()
                        .iter()
                        .any(|r| r["uid"] == uid.as_str() && r["blockOwnerDeletion"] == json!(true))
                });
                if !blocking {
                    let r = self.remove_finalizer(it, FOREGROUND).await;
                    changed |= note("removing the foregroundDeletion finalizer", it, r);
                }
            }
        }
        // Terminating pods bound to nodes that do not exist: no agent will ever finish them,
        // so once their grace period is over they are deleted at once (Kubernetes' PodGC).
        let now = super::object::unix_now();
        let mut nodes: HashMap<String, bool> = HashMap::new();
        for it in items.iter().filter(|it| it.res.kind == Kind::Pod) {
            let Some(node) = phantom_node_candidate(&it.obj, now) else {
                continue;
            };
            let exists = match nodes.get(node) {
                Some(&e) => e,
                None => {
                    let e = self.node_is_stored(node).await?;
                    nodes.insert(node.to_string(), e);
                    e
                }
            };
            if exists {
                continue;
            }
            tracing::info!(key = %it.kv.key, node, "garbage collector: force-deleting a terminating pod bound to a node that does not exist");
            let opts = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": it.uid()}});
            let r = self
                .delete(&it.target(), &HashMap::new(), &opts)
                .await
                .map(|_| ());
            changed |= note("deleting a pod of a node that does not exist", it, r);
        }
        // Dependents whose owners are gone or waiting for them.
        for it in &items {
            let refs = it.owner_refs();
            if refs.is_empty() || it.deleting() {
                continue;
            }
            if refs
                .iter()
                .any(|r| invalid_namespace_ref(it.res.namespaced, r))
            {
                tracing::warn!(
                    key = %it.kv.key,
                    reason = "OwnerRefInvalidNamespace",
                    "garbage collector: a cluster-scoped object has an owner reference to a namespaced kind; the reference cannot be resolved and is ignored"
                );
            }
            let mut states = Vec::with_capacity(refs.len());
            for r in &refs {
                states.push(self.owner_state(it, r, &by_key, &items).await?);
            }
            if states.contains(&Owner::Solid) {
                if states.contains(&Owner::Absent) {
                    let gone: HashSet<String> = refs
                        .iter()
                        .zip(&states)
                        .filter(|(_, s)| **s == Owner::Absent)
                        .filter_map(|(r, _)| r["uid"].as_str().map(str::to_string))
                        .collect();
                    let r = self
                        .drop_owner_refs(it, |r| {
                            r["uid"].as_str().is_some_and(|u| gone.contains(u))
                        })
                        .await;
                    changed |= note("dropping references to gone owners", it, r);
                }
                continue;
            }
            let waiting = states.contains(&Owner::Waiting);
            let has_deps = dependents.contains_key(it.uid());
            let mut opts = json!({"preconditions": {
                "uid": it.uid(),
                "resourceVersion": it.kv.mod_revision.to_string(),
            }});
            if waiting && has_deps {
                opts["propagationPolicy"] = json!("Foreground");
            }
            let r = self
                .delete(&it.target(), &HashMap::new(), &opts)
                .await
                .map(|_| ());
            changed |= note("deleting a dependent", it, r);
        }
        Ok(changed)
    }
}

/// Whether an owner reference of a dependent (cluster-scoped unless `dependent_namespaced`)
/// names a namespaced kind served here while the dependent is cluster-scoped: such a reference
/// cannot be resolved (Kubernetes' `OwnerRefInvalidNamespace`) and never gets the dependent
/// collected.
fn invalid_namespace_ref(dependent_namespaced: bool, r: &Value) -> bool {
    let api_version = r["apiVersion"].as_str().unwrap_or_default();
    let kind = r["kind"].as_str().unwrap_or_default();
    !dependent_namespaced && owner_resource(api_version, kind).is_some_and(|res| res.namespaced)
}

/// The node of a terminating pod whose grace period is over at `now` (Unix seconds): the pod
/// is to be deleted at once if that node does not exist. None for pods not being deleted,
/// unbound, still within their grace period, or already force-deleted and only held by
/// finalizers.
fn phantom_node_candidate(pod: &Value, now: i64) -> Option<&str> {
    let grace = pod["metadata"]["deletionGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(0);
    if grace == 0 && !finalizers(pod).is_empty() {
        return None;
    }
    let due = pod["metadata"]["deletionTimestamp"]
        .as_str()?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .map_or(true, |t| t.as_second() <= now);
    let node = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())?;
    due.then_some(node)
}

/// Starts the garbage collector and namespace finalizer on the current tokio runtime; it runs
/// until the runtime stops.
pub fn spawn(api: Arc<ApiServer>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(api))
}

/// The collector's loop: sweeps at start, on relevant store changes and every [`PERIOD`].
pub async fn run(api: Arc<ApiServer>) {
    run_observed(api, &|| {}).await
}

/// Reads the events `w` has ready, waiting for more until `until` (or, with `quiet`, until
/// none came for that long, whichever is first): a burst becomes one sweep. The events need
/// no look: a sweep is due anyway, and it reads the store itself. False when the watch ended
/// or failed.
async fn drain(w: &mut WatchStream, until: Instant, quiet: Option<Duration>) -> bool {
    loop {
        let now = Instant::now();
        if now >= until {
            return true;
        }
        let deadline = quiet.map_or(until, |q| until.min(now + q));
        match tokio::time::timeout_at(deadline, w.next()).await {
            Err(_) => return true,
            Ok(Some(Ok(_))) => {}
            Ok(_) => return false,
        }
    }
}

/// One sweep: garbage collector passes until one changes nothing (at most 20). Returns the
/// store revision the last completed pass started from (what happened up to it has been
/// seen), or `covered` when no pass completed.
async fn sweep(api: &ApiServer, mut covered: i64) -> i64 {
    for _ in 0..20 {
        let start = api.store.current_revision().await.ok();
        match api.collect_garbage().await {
            Ok(changed) => {
                covered = start.unwrap_or(covered);
                if !changed {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector sweep");
                break;
            }
        }
    }
    covered
}

/// [`run`], calling `on_sweep` after each sweep (tests count them).
async fn run_observed(api: Arc<ApiServer>, on_sweep: &(dyn Fn() + Send + Sync)) {
    let mut last_sweep: Option<Instant> = None;
    let mut covered = 0;
    loop {
        let from = match api.store.current_revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector: reading the store revision");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut watch = match api.store.watch("/registry/", from).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector: watching the store");
                None
            }
        };
        // Sweep now (start, or after the watch was lost), then on events.
        let mut due = true;
        loop {
            if due {
                // At most one sweep per MIN_SWEEP_INTERVAL; what arrives meanwhile is read
                // (and joins this sweep) rather than queued for sweeps of its own.
                if let Some(at) = last_sweep {
                    let next = at + MIN_SWEEP_INTERVAL;
                    match watch.as_mut() {
                        Some(w) => {
                            if !drain(w, next, None).await {
                                watch = None;
                            }
                        }
                        None => tokio::time::sleep_until(next).await,
                    }
                }
                covered = sweep(&api, covered).await;
                last_sweep = Some(Instant::now());
                on_sweep();
                due = false;
            }
            let Some(w) = watch.as_mut() else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                break;
            };
            let periodic = last_sweep.map_or_else(Instant::now, |at| at + PERIOD);
            let ev = tokio::select! {
                ev = w.next() => ev,
                _ = tokio::time::sleep_until(periodic) => {
                    due = true;
                    continue;
                }
            };
            match ev {
                Some(Ok(ev)) => {
                    if ev.revision() > covered && relevant(&ev) {
                        due = true;
                        // Let a burst of writes settle into one sweep: read what follows
                        // until a quiet moment (or SETTLE at most).
                        let until = Instant::now() + SETTLE;
                        if !drain(w, until, Some(QUIET)).await {
                            watch = None;
                        }
                    }
                }
                Some(Err(StoreError::Compacted { .. })) | Some(Err(_)) | None => break,
            }
        }
    }
}

/// Whether a store change can give the collector work.
fn relevant(ev: &WatchEvent) -> bool {
    match ev {
        WatchEvent::Delete { .. } => true,
        WatchEvent::Put { kv, .. } => may_need_collection(&kv.value),
        WatchEvent::Progress { .. } => false,
    }
}

/// Whether a stored object has owners or is being deleted (the JSON keys occur in its bytes;
/// inside JSON strings a quote is always escaped, so string contents cannot fake them).
fn may_need_collection(value: &[u8]) -> bool {
    raw::contains(value, b"\"deletionTimestamp\"") || raw::contains(value, b"\"ownerReferences\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn propagation_from_options_and_query() {
        let q = HashMap::new();
        assert_eq!(propagation(&json!({}), &q).unwrap(), None);
        assert_eq!(
            propagation(&json!({"propagationPolicy": "Orphan"}), &q).unwrap(),
            Some(Propagation::Orphan)
        );
        assert_eq!(
            propagation(&json!({"orphanDependents": false}), &q).unwrap(),
            Some(Propagation::Background)
        );
        let mut fq = HashMap::new();
        fq.insert("propagationPolicy".to_string(), "Foreground".to_string());
        assert_eq!(
            propagation(&json!({}), &fq).unwrap(),
            Some(Propagation::Foreground)
        );
        let e = propagation(&json!({"propagationPolicy": "Sideways"}), &q).unwrap_err();
        assert_eq!(e.code(), 422);
        let e = propagation(
            &json!({"propagationPolicy": "Orphan", "orphanDependents": true}),
            &q,
        )
        .unwrap_err();
        assert_eq!(e.code(), 422);
    }

    #[test]
    fn delete_finalizers() {
        let none: Vec<String> = vec![];
        assert!(finalizers_on_delete(&none, None).is_empty());
        assert_eq!(
            finalizers_on_delete(&strings(&["a/b"]), Some(Propagation::Orphan)),
            strings(&["a/b", ORPHAN])
        );
        assert_eq!(
            finalizers_on_delete(&strings(&[ORPHAN]), Some(Propagation::Foreground)),
            strings(&[FOREGROUND])
        );
        assert_eq!(
            finalizers_on_delete(&strings(&[ORPHAN]), None),
            strings(&[ORPHAN])
        );
        assert!(
            finalizers_on_delete(&strings(&[FOREGROUND]), Some(Propagation::Background)).is_empty()
        );
    }

    #[test]
    fn owners_resolve_to_served_kinds() {
        assert_eq!(
            owner_resource("v1", "ConfigMap").unwrap().plural,
            "configmaps"
        );
        assert!(owner_resource("apps/v1", "ReplicaSet").is_none());
        assert_eq!(
            owner_resource("coordination.k8s.io/v1", "Lease")
                .unwrap()
                .plural,
            "leases"
        );
    }

    #[test]
    fn relevant_changes() {
        let kv = |v: &str| KeyValue {
            key: "/registry/configmaps/d/c".into(),
            value: bytes::Bytes::from(v.to_string()),
            create_revision: 1,
            mod_revision: 1,
        };
        assert!(!relevant(&WatchEvent::Put {
            kv: kv(r#"{"metadata":{"name":"c"}}"#),
            prev: None
        }));
        assert!(relevant(&WatchEvent::Put {
            kv: kv(r#"{"metadata":{"ownerReferences":[]}}"#),
            prev: None
        }));
        assert!(relevant(&WatchEvent::Delete {
            kv: kv(""),
            prev: None
        }));
    }

    #[test]
    fn cluster_scoped_dependents_of_namespaced_owners_are_unresolvable() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u"});
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "name": "o", "uid": "u"});
        let unknown = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "o"});
        assert!(invalid_namespace_ref(false, &cm));
        assert!(!invalid_namespace_ref(true, &cm));
        assert!(!invalid_namespace_ref(false, &ns));
        assert!(!invalid_namespace_ref(false, &unknown));
    }

    #[test]
    fn terminating_pods_of_missing_nodes() {
        let now = 1_700_000_000;
        let pod = |node: &str, at: i64, grace: i64, fin: Value| {
            json!({"metadata": {"name": "p", "deletionTimestamp": super::super::object::rfc3339(at),
                "deletionGracePeriodSeconds": grace, "finalizers": fin},
                "spec": {"nodeName": node}})
        };
        assert_eq!(
            phantom_node_candidate(&pod("n1", now - 1, 30, json!([])), now),
            Some("n1")
        );
        assert_eq!(
            phantom_node_candidate(&pod("n1", now, 0, json!([])), now),
            Some("n1")
        );
        // Still within its grace period.
        assert_eq!(
            phantom_node_candidate(&pod("n1", now + 5, 30, json!([])), now),
            None
        );
        // Unbound, or already force-deleted and held by a finalizer.
        assert_eq!(
            phantom_node_candidate(&pod("", now - 1, 30, json!([])), now),
            None
        );
        assert_eq!(
            phantom_node_candidate(&pod("n1", now - 1, 0, json!(["x/y"])), now),
            None
        );
        let live = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}});
        assert_eq!(phantom_node_candidate(&live, now), None);
    }

    /// A burst of relevant events makes one sweep (at most one a second), not one each.
    #[tokio::test]
    async fn a_burst_of_events_makes_few_sweeps() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        use crate::store::{EmbeddedConfig, EmbeddedStore, Store};

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
        let tokens = super::super::auth::Tokens {
            admin: "a".into(),
            node: "n".into(),
        };
        let api = Arc::new(ApiServer::new(
            store.clone(),
            tokens,
            "127.0.0.1:6443".into(),
        ));
        api.bootstrap().await.unwrap();
        const N: usize = 100;
        for i in 0..N {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("c{i}"), "namespace": "default"}});
            store
                .create(
                    &format!("/registry/configmaps/default/c{i}"),
                    bytes::Bytes::from(cm.to_string()),
                )
                .await
                .unwrap();
        }
        let sweeps = Arc::new(AtomicUsize::new(0));
        let counter = sweeps.clone();
        let task = tokio::spawn(async move {
            let count = move || {
                counter.fetch_add(1, Ordering::SeqCst);
            };
            run_observed(api, &count).await
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while sweeps.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no first sweep");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // N deletes (each a relevant event), concurrently.
        let started = Instant::now();
        let deletes = (0..N).map(|i| {
            let store = store.clone();
            async move {
                store
                    .delete(&format!("/registry/configmaps/default/c{i}"), None)
                    .await
                    .unwrap();
            }
        });
        futures_util::future::join_all(deletes).await;
        let burst = started.elapsed();
        tokio::time::sleep(MIN_SWEEP_INTERVAL + Duration::from_millis(1500)).await;
        let after = sweeps.load(Ordering::SeqCst) - 1;
        task.abort();
        // One sweep for the burst, plus at most one a second while it lasted.
        let most = 1 + burst.as_secs() as usize + 1;
        assert!(
            (1..=most).contains(&after),
            "{after} sweeps after {N} events in {burst:?}"
        );
    }
}
