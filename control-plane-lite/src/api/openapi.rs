//! `/openapi/v3`: the root index and one document per group version. The documents carry the
//! PATCH operations of the served kinds with their query parameters, which is what kubectl's
//! default `--validate=strict` reads to learn that the server validates fields itself
//! (`fieldValidation`). Schemas of the kinds are not published yet (`kubectl explain` needs
//! them).

use serde_json::{Value, json};

use super::resources::{RESOURCES, Resource};

/// The `api/v1` or `apis/<group>/<version>` key of a resource's group version.
fn gv_key(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

/// FNV-1a of the text: the `hash` clients cache documents by.
fn hash(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

/// `/openapi/v3`.
pub fn root() -> Value {
    let mut paths = serde_json::Map::new();
    for r in &RESOURCES {
        let key = gv_key(r);
        if paths.contains_key(&key) {
            continue;
        }
        let doc = document(&key).expect("served group version").to_string();
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", hash(&doc))}),
        );
    }
    json!({"paths": paths})
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

/// `/openapi/v3/<key>`, None for a group version not served.
pub fn document(key: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES.iter().filter(|r| gv_key(r) == key) {
        let base = format!("/{key}");
        let item = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind_name});
        let params: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
            .into_iter()
            .map(query_param)
            .collect();
        let op = |action: &str, suffix: &str| {
            json!({
                "operationId": format!("{action}{}{suffix}", r.kind_name),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(item.clone(), json!({"patch": op("patch", "")}));
        if r.status {
            paths.insert(
                format!("{item}/status"),
                json!({"patch": op("patch", "Status")}),
            );
        }
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_points_at_each_group_version() {
        let r = root();
        let url = r["paths"]["api/v1"]["serverRelativeURL"].as_str().unwrap();
        assert!(url.starts_with("/openapi/v3/api/v1?hash="));
        assert!(r["paths"]["apis/coordination.k8s.io/v1"].is_object());
        assert!(document("apis/apps/v1").is_none());
    }

    #[test]
    fn patch_operations_declare_field_validation() {
        let d = document("api/v1").unwrap();
        let op = &d["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(d["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object());
    }
}
