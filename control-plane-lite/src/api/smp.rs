//! Strategic merge patch (`application/strategic-merge-patch+json`, what client-side
//! `kubectl apply` sends) for the served kinds: JSON merge patch, except that lists with a
//! merge key (containers by `name`, ports by `containerPort`, ...) merge element by element,
//! primitive lists with the merge strategy (finalizers) are unions, and the `$patch`,
//! `$retainKeys`, `$setElementOrder/` and `$deleteFromPrimitiveList/` directives apply.

use serde_json::{Map, Value};
use thiserror::Error;

/// Why a strategic merge patch could not be applied.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SmpError {
    #[error("strategic merge patch at {0}: the patch is not an object")]
    NotAnObject(String),
    #[error("strategic merge patch at {path}: unknown directive $patch: {value}")]
    BadDirective { path: String, value: String },
    #[error("strategic merge patch at {0}: list element lacks its merge key")]
    MissingKey(String),
}

/// How a list field merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListMerge {
    /// Replaced whole (no patch strategy).
    Replace,
    /// Objects merged by this key.
    ByKey(&'static str),
    /// Primitives: a set union.
    Primitives,
}

/// The merge strategy of the list at `path` (dotted field names, list indices dropped).
fn strategy(path: &str) -> ListMerge {
    const KEYED: &[(&str, &str)] = &[
        ("metadata.ownerReferences", "uid"),
        ("spec.containers", "name"),
        // A Service's ports.
        ("spec.ports", "port"),
        ("spec.initContainers", "name"),
        ("spec.ephemeralContainers", "name"),
        ("spec.volumes", "name"),
        ("spec.imagePullSecrets", "name"),
        ("spec.hostAliases", "ip"),
        ("spec.resourceClaims", "name"),
        ("spec.schedulingGates", "name"),
        ("status.conditions", "type"),
        ("status.podIPs", "ip"),
    ];
    const CONTAINER_KEYED: &[(&str, &str)] = &[
        ("ports", "containerPort"),
        ("env", "name"),
        ("volumeMounts", "mountPath"),
        ("volumeDevices", "devicePath"),
    ];
    if path == "metadata.finalizers" || path == "spec.finalizers" {
        return ListMerge::Primitives;
    }
    if let Some((_, key)) = KEYED.iter().find(|(p, _)| *p == path) {
        return ListMerge::ByKey(key);
    }
    for list in [
        "spec.containers.",
        "spec.initContainers.",
        "spec.ephemeralContainers.",
    ] {
        if let Some(field) = path.strip_prefix(list)
            && let Some((_, key)) = CONTAINER_KEYED.iter().find(|(f, _)| *f == field)
        {
            return ListMerge::ByKey(key);
        }
    }
    ListMerge::Replace
}

/// The merge key of the list at `path` (dotted field names), if its elements merge by key.
pub fn list_merge_key(path: &str) -> Option<&'static str> {
    match strategy(path) {
        ListMerge::ByKey(k) => Some(k),
        ListMerge::Replace | ListMerge::Primitives => None,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Applies `patch` to `doc`.
pub fn apply(doc: &mut Value, patch: &Value) -> Result<(), SmpError> {
    merge_map(doc, patch, "")
}

fn merge_map(doc: &mut Value, patch: &Value, path: &str) -> Result<(), SmpError> {
    let Some(p) = patch.as_object() else {
        return Err(SmpError::NotAnObject(path.to_string()));
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            *doc = Value::Object(strip_directives(m));
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(SmpError::BadDirective {
                path: path.to_string(),
                value: other.to_string(),
            });
        }
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let target = doc.as_object_mut().expect("doc is an object");
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()) || p.contains_key(k));
    }
    for (k, v) in p {
        if k.starts_with('$') {
            if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/")
                && let (Some(Value::Array(list)), Value::Array(remove)) = (target.get_mut(field), v)
            {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        let child = join(path, k);
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(_) => {
                let slot = target.entry(k.clone()).or_insert(Value::Null);
                merge_map(slot, v, &child)?;
            }
            Value::Array(items) => {
                let slot = target.entry(k.clone()).or_insert(Value::Null);
                merge_list(slot, items, &child)?;
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
    Ok(())
}

/// Removes directive keys from a value that replaces what was there.
fn strip_directives(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| {
            let v = match v {
                Value::Object(o) => Value::Object(strip_directives(o)),
                other => other,
            };
            (k, v)
        })
        .collect()
}

fn merge_list(doc: &mut Value, items: &[Value], path: &str) -> Result<(), SmpError> {
    // `{"$patch": "replace"}` as an element replaces the whole list with the other elements.
    let replace = items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    let strategy = strategy(path);
    if replace || strategy == ListMerge::Replace || !doc.is_array() {
        let kept: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .map(|i| match i {
                Value::Object(o) => Value::Object(strip_directives(o)),
                other => other,
            })
            .collect();
        *doc = Value::Array(kept);
        return Ok(());
    }
    let list = doc.as_array_mut().expect("doc is an array");
    match strategy {
        ListMerge::Primitives => {
            for i in items {
                if !list.contains(i) {
                    list.push(i.clone());
                }
            }
        }
        ListMerge::ByKey(key) => {
            for item in items {
                let Some(id) = item.get(key) else {
                    return Err(SmpError::MissingKey(path.to_string()));
                };
                let pos = list.iter().position(|e| e.get(key) == Some(id));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(pos) = pos {
                        list.remove(pos);
                    }
                    continue;
                }
                match pos {
                    Some(pos) => merge_map(&mut list[pos], item, path)?,
                    None => {
                        let mut fresh = Value::Object(Map::new());
                        merge_map(&mut fresh, item, path)?;
                        list.push(fresh);
                    }
                }
            }
        }
        ListMerge::Replace => unreachable!("handled above"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"},
        ]}});
        let patch = json!({"spec": {
        "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
        "containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
            {"name": "b", "$patch": "delete"},
            {"name": "c", "image": "c:1"},
        ]}});
        apply(&mut pod, &patch).unwrap();
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:2", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
                {"name": "c", "image": "c:1"},
            ]}})
        );
    }

    #[test]
    fn maps_lists_and_directives() {
        let mut obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"tolerations": [{"key": "k"}]}, "data": {"k": "v"}});
        let patch = json!({"metadata": {"labels": {"a": null, "c": "3"}, "finalizers": ["y"],
            "$deleteFromPrimitiveList/finalizers": ["x"]},
            "spec": {"tolerations": [{"key": "j"}]}, "data": {"$patch": "replace", "n": "m"}});
        apply(&mut obj, &patch).unwrap();
        assert_eq!(obj["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(obj["metadata"]["finalizers"], json!(["y"]));
        assert_eq!(obj["spec"]["tolerations"], json!([{"key": "j"}]));
        assert_eq!(obj["data"], json!({"n": "m"}));
        assert!(apply(&mut obj, &json!([1])).is_err());
        assert!(apply(&mut obj, &json!({"$patch": "nope"})).is_err());
        assert!(
            apply(
                &mut json!({"spec": {"containers": []}}),
                &json!({"spec": {"containers": [{"image": "x"}]}})
            )
            .is_err()
        );
    }

    #[test]
    fn retain_keys_and_list_replace() {
        let mut obj =
            json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}, "x": {"a": 1, "b": 2}});
        let patch = json!({"x": {"$retainKeys": ["a"], "a": 5},
            "spec": {"volumes": [{"$patch": "replace"}, {"name": "w", "hostPath": {"path": "/"}}]}});
        apply(&mut obj, &patch).unwrap();
        assert_eq!(obj["x"], json!({"a": 5}));
        assert_eq!(
            obj["spec"]["volumes"],
            json!([{"name": "w", "hostPath": {"path": "/"}}])
        );
    }
}
