//! Server-side apply (`PATCH` with `Content-Type: application/apply-patch+yaml`, what
//! `kubectl apply --server-side` sends), simplified:
//! - the body must be JSON (JSON is YAML; kubectl sends JSON; no YAML parser is in the tree);
//! - `fieldManager` is required; `force` is accepted but conflicts between managers are not
//!   detected (every apply wins);
//! - a missing object is created (201), an existing one gets the applied configuration merged
//!   in with strategic-merge list semantics (containers by name, ...);
//! - each apply manager's field set is recorded in `metadata.managedFields` (an `Apply` entry,
//!   `FieldsV1`); fields a manager applied before and no longer applies are removed, whoever
//!   else set them since (ownership shared with other managers is not tracked). Other writes
//!   keep the entries as they are and add none of their own.

use serde_json::{Map, Value, json};

use super::object::{self, FieldValidation, meta_mut, meta_str};
use super::resources::Resource;
use super::status::{ApiError, Cause};
use super::{ApiServer, Target, dry_run, field_manager, smp};

/// Whether a PATCH content type is an apply patch.
pub fn is_apply(content_type: &str) -> bool {
    content_type.split(';').next().unwrap_or_default().trim() == "application/apply-patch+yaml"
}

/// Metadata fields the server owns: never part of a manager's field set.
const SERVER_META: [&str; 11] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The `FieldsV1` set of the fields an applied configuration sets.
pub fn field_set(v: &Value, path: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(m) = v.as_object() else { return out };
    for (k, child) in m {
        if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "status") {
            continue;
        }
        if path == "metadata" && SERVER_META.contains(&k.as_str()) {
            continue;
        }
        let p = join(path, k);
        let sub = match child {
            Value::Object(_) => Value::Object(field_set(child, &p)),
            Value::Array(items) => match smp::list_merge_key(&p) {
                Some(mk) => {
                    let mut list = Map::new();
                    for item in items {
                        if let Some(kv) = item.get(mk) {
                            let mut f = field_set(item, &p);
                            f.insert(".".into(), json!({}));
                            list.insert(format!("k:{}", json!({ mk: kv })), Value::Object(f));
                        }
                    }
                    Value::Object(list)
                }
                None => json!({}),
            },
            _ => json!({}),
        };
        out.insert(format!("f:{k}"), sub);
    }
    out
}

/// Removes from `doc` what `prev` (a manager's last field set) has and `new` (its current
/// one) has not.
pub fn remove_unapplied(
    doc: &mut Value,
    prev: &Map<String, Value>,
    new: &Map<String, Value>,
    path: &str,
) {
    for (k, prev_child) in prev {
        let Some(field) = k.strip_prefix("f:") else {
            continue;
        };
        let p = join(path, field);
        let Some(new_child) = new.get(k) else {
            if let Some(m) = doc.as_object_mut() {
                m.remove(field);
            }
            continue;
        };
        let (Some(pc), Some(nc)) = (prev_child.as_object(), new_child.as_object()) else {
            continue;
        };
        if pc.is_empty() {
            continue;
        }
        let Some(d) = doc.get_mut(field) else {
            continue;
        };
        match (d, smp::list_merge_key(&p)) {
            (Value::Array(items), Some(mk)) => {
                for (ik, ipc) in pc {
                    let Some(key) = ik
                        .strip_prefix("k:")
                        .and_then(|j| serde_json::from_str::<Value>(j).ok())
                    else {
                        continue;
                    };
                    let matches = |e: &Value| e.get(mk).is_some() && e.get(mk) == key.get(mk);
                    match nc.get(ik).and_then(Value::as_object) {
                        None => items.retain(|e| !matches(e)),
                        Some(inc) => {
                            if let (Some(e), Some(ipc)) =
                                (items.iter_mut().find(|e| matches(e)), ipc.as_object())
                            {
                                remove_unapplied(e, ipc, inc, &p);
                            }
                        }
                    }
                }
            }
            (d @ Value::Object(_), _) => remove_unapplied(d, pc, nc, &p),
            _ => {}
        }
    }
}

fn entry(manager: &str, api_version: &str, set: &Map<String, Value>) -> Value {
    json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": object::now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": set,
    })
}

fn is_own(e: &Value, manager: &str) -> bool {
    e["manager"] == manager && e["operation"] == "Apply"
}

/// The applied configuration from a request body.
fn parse_config(res: &Resource, t: &Target, body: &[u8]) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| {
        let json_like = body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'{' | b'['));
        if json_like {
            ApiError::BadRequest(format!("error decoding apply patch as JSON: {e}"))
        } else {
            ApiError::BadRequest(
                "apply patches must be sent as JSON (JSON is YAML; YAML syntax is not supported by this server)".into(),
            )
        }
    })?;
    if !v.is_object() {
        return Err(ApiError::BadRequest(format!(
            "the apply patch is not a {} object",
            res.kind_name
        )));
    }
    for f in ["apiVersion", "kind"] {
        if v.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(ApiError::BadRequest(format!(
                "{f} must be set in the apply patch of {} {:?}",
                res.singular,
                t.name()
            )));
        }
    }
    if v["metadata"]
        .get("managedFields")
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApiError::BadRequest(
            "metadata.managedFields must be nil in an apply patch".into(),
        ));
    }
    match meta_str(&v, "name") {
        None | Some("") => {
            meta_mut(&mut v).insert("name".into(), json!(t.name()));
        }
        Some(n) if n != t.name() => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                t.name()
            )));
        }
        Some(_) => {}
    }
    Ok(v)
}

impl ApiServer {
    /// Server-side apply of `body` to `t`. Returns the object, warnings and whether it was
    /// created.
    pub(super) async fn apply(
        &self,
        t: &Target,
        q: &std::collections::HashMap<String, String>,
        body: &[u8],
    ) -> Result<(Value, Vec<String>, bool), ApiError> {
        let Some(manager) = field_manager(q)?.map(str::to_string) else {
            return Err(ApiError::Invalid {
                kind: "PatchOptions.meta.k8s.io".into(),
                name: String::new(),
                causes: vec![Cause {
                    reason: "FieldValueRequired",
                    field: "fieldManager".into(),
                    message: "Required value: is required for apply patch".into(),
                }],
            });
        };
        if let Some(f) = q.get("force")
            && !matches!(
                f.as_str(),
                "" | "true" | "false" | "1" | "0" | "True" | "False"
            )
        {
            return Err(ApiError::BadRequest(format!(
                "force {f:?} is not a boolean"
            )));
        }
        let fv = FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
        let dry = dry_run(q, None)?;
        let config = parse_config(t.res, t, body)?;
        let set = field_set(&config, "");
        let api_version = t.res.api_version();
        for attempt in 0..6 {
            let (kv, cur) = match self.current(t).await {
                Ok(c) => c,
                // Applying to a subresource (`pods/x/status`) of a missing object creates
                // nothing: the object has to exist.
                Err(e @ ApiError::NotFound { .. }) if t.sub.is_some() => return Err(e),
                Err(ApiError::NotFound { .. }) => {
                    let managed = json!([entry(&manager, &api_version, &set)]);
                    match self
                        .create_managed(t, q, config.clone(), Some(managed))
                        .await
                    {
                        Ok((obj, w)) => return Ok((obj, w, true)),
                        Err(ApiError::AlreadyExists { .. }) if attempt < 5 => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            let mut managed: Vec<Value> = cur["metadata"]["managedFields"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut doc = cur.clone();
            if let Some(prev) = managed
                .iter()
                .find(|e| is_own(e, &manager))
                .and_then(|e| e["fieldsV1"].as_object())
            {
                remove_unapplied(&mut doc, prev, &set, "");
            }
            smp::apply(&mut doc, &config).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let (mut obj, warnings) = self.prepare_update(t, &cur, doc, fv).await?;
            managed.retain(|e| !is_own(e, &manager));
            managed.push(entry(&manager, &api_version, &set));
            meta_mut(&mut obj).insert("managedFields".into(), json!(managed));
            if dry {
                return Ok((obj, warnings, false));
            }
            match self.write(t, &kv, obj).await {
                Err(ApiError::Conflict { .. }) if attempt < 5 => continue,
                r => return r.map(|o| (o, warnings, false)),
            }
        }
        Err(ApiError::Conflict {
            resource: t.res.qualified(),
            name: t.name().into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_sets_follow_merge_keys() {
        let cfg = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "1"}},
            "spec": {"containers": [{"name": "c", "image": "i", "env": [{"name": "X", "value": "1"}]}]}});
        let set = field_set(&cfg, "");
        assert!(set.get("f:apiVersion").is_none());
        assert!(set["f:metadata"].get("f:name").is_none());
        assert_eq!(set["f:metadata"]["f:labels"]["f:a"], json!({}));
        let c = &set["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
        assert_eq!(c["."], json!({}));
        assert_eq!(c["f:image"], json!({}));
        assert!(c["f:env"].get("k:{\"name\":\"X\"}").is_some());
    }

    #[test]
    fn unapplied_fields_are_removed() {
        let old = json!({"metadata": {"labels": {"a": "1", "b": "2"}},
            "spec": {"containers": [{"name": "c", "image": "i", "args": ["x"]}, {"name": "d", "image": "j"}]}});
        let new = json!({"metadata": {"labels": {"a": "1"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let mut live = old.clone();
        live["metadata"]["labels"]["other"] = json!("kept");
        remove_unapplied(&mut live, &field_set(&old, ""), &field_set(&new, ""), "");
        assert_eq!(
            live["metadata"]["labels"],
            json!({"a": "1", "other": "kept"})
        );
        let cs = live["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 1);
        assert!(cs[0].get("args").is_none());
        assert_eq!(cs[0]["image"], "i");
    }

    #[test]
    fn apply_content_type() {
        assert!(is_apply("application/apply-patch+yaml"));
        assert!(is_apply("application/apply-patch+yaml; charset=utf-8"));
        assert!(!is_apply("application/merge-patch+json"));
    }
}
