//! Garbage collection by `ownerReferences` and namespace finalization, as Kubernetes' garbage
//! collector and namespace controller do them, driven by the store itself so that a restart
//! resumes where the last run stopped (every step is visible in the stored objects: the
//! `orphan` / `foregroundDeletion` finalizers, deletion timestamps, the `kubernetes` namespace
//! finalizer, dependents whose owners are gone).
//!
//! [`spawn`] starts the collector: one sweep at start, then a sweep whenever the store shows a
//! change that can matter (a delete, an object being deleted, an object with owners), and
//! every [`PERIOD`] regardless. A sweep reads every object once and:
//! - finishes terminating namespaces (deletes their contents; once nothing is left, removes the
//!   `kubernetes` finalizer and with it the namespace);
//! - orphans the dependents of owners with the `orphan` finalizer (removes their references),
//!   then removes the finalizer;
//! - removes `foregroundDeletion` from owners none of whose blocking dependents is left;
//! - deletes dependents none of whose owners exists any more (or is being deleted in the
//!   foreground), and drops references to gone owners from dependents that still have one.
//!   Owners of kinds this server does not serve are taken to exist.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::object::{meta_mut, meta_str};
use super::resources::{Kind, RESOURCES, Resource};
use super::status::{ApiError, Cause};
use super::{ApiServer, Target, to_object, to_stored};
use crate::store::{KeyValue, StoreError, WatchEvent};

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
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
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
                let mut cont = None;
                loop {
                    let page = self
                        .store
                        .list(&prefix, 500, cont)
                        .await
                        .map_err(|e| ApiError::from_store(e, &r.qualified(), ""))?;
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
                    cont = page.continuation();
                    if cont.is_none() {
                        break;
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
            let mut cont = None;
            loop {
                let page = self
                    .store
                    .list(&prefix, 500, cont)
                    .await
                    .map_err(|e| ApiError::from_store(e, &r.qualified(), ""))?;
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
                cont = page.continuation();
                if cont.is_none() {
                    break;
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
                // A cluster-scoped dependent cannot have a namespaced owner.
                _ => return Ok(Owner::Absent),
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
        // Dependents whose owners are gone or waiting for them.
        for it in &items {
            let refs = it.owner_refs();
            if refs.is_empty() || it.deleting() {
                continue;
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

/// Starts the garbage collector and namespace finalizer on the current tokio runtime; it runs
/// until the runtime stops.
pub fn spawn(api: Arc<ApiServer>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(api))
}

/// The collector's loop: sweeps at start, on relevant store changes and every [`PERIOD`].
pub async fn run(api: Arc<ApiServer>) {
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
                for _ in 0..20 {
                    match api.collect_garbage().await {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "garbage collector sweep");
                            break;
                        }
                    }
                }
            }
            let Some(w) = watch.as_mut() else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                break;
            };
            let ev = tokio::select! {
                ev = w.next() => ev,
                _ = tokio::time::sleep(PERIOD) => {
                    due = true;
                    continue;
                }
            };
            match ev {
                Some(Ok(ev)) => {
                    due = relevant(&ev);
                    if due {
                        // Let a burst of writes settle into one sweep.
                        tokio::time::sleep(Duration::from_millis(50)).await;
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
    let has = |needle: &[u8]| value.windows(needle.len()).any(|w| w == needle);
    has(b"\"deletionTimestamp\"") || has(b"\"ownerReferences\"")
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
}
