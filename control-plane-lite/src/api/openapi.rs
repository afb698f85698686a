//! `/openapi/v3` (the root index and one document per group version) and `/openapi/v2` (one
//! swagger document): the schemas of the served kinds, so that `kubectl explain` works, and
//! the PATCH operations with their query parameters, which is what kubectl's default
//! `--validate=strict` reads to learn that the server validates fields itself
//! (`fieldValidation`).
//!
//! The schemas come from `k8s-openapi`'s `JsonSchema` impls (names and descriptions as
//! Kubernetes publishes them), rewritten as Kubernetes serves them: `$ref`s with siblings
//! wrapped in `allOf` (v3), Quantity and IntOrString as their own types, the group version
//! kind of each top-level kind, and the patch strategies of the lists clients merge. Each
//! document is built once, on first use, and kept only as its serialized bytes.
//!
//! The PATCH operations deliberately declare no request body: kubectl then computes
//! client-side apply patches from its compiled-in types (whose merge keys are exact) rather
//! than from these schemas.

use std::sync::LazyLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH};
use hyper::{HeaderMap, Response, StatusCode};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use super::Body;
use super::resources::{RESOURCES, Resource};

/// Where `$ref`s point while the schemas are generated (rewritten for v3).
const V2_REFS: &str = "#/definitions/";
const V3_REFS: &str = "#/components/schemas/";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";

/// One served document: its bytes and the hash clients cache it by.
pub struct Document {
    pub body: Bytes,
    pub hash: String,
}

impl Document {
    fn new(v: &Value) -> Document {
        let body = Bytes::from(v.to_string());
        let hash = hash(&body);
        Document { body, hash }
    }
}

/// The `api/v1` or `apis/<group>/<version>` key of a resource's group version.
fn gv_key(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

/// FNV-1a of the bytes: the `hash` clients cache documents by.
fn hash(s: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

/// The served group versions, in `RESOURCES` order.
fn group_versions() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &RESOURCES {
        let key = gv_key(r);
        if !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

/// Adds the schema of the kind `r` serves (and everything it references) to `g`. Returns
/// the schema name, None for a kind without one here.
fn add_kind(g: &mut SchemaGenerator, r: &Resource) -> Option<String> {
    use k8s_openapi::api::{coordination, core, events};
    use schemars::JsonSchema;
    fn add<T: JsonSchema>(g: &mut SchemaGenerator) -> Option<String> {
        g.subschema_for::<T>();
        Some(T::schema_name().into_owned())
    }
    match (r.group, r.version, r.kind_name) {
        ("", "v1", "Namespace") => add::<core::v1::Namespace>(g),
        ("", "v1", "ConfigMap") => add::<core::v1::ConfigMap>(g),
        ("", "v1", "Secret") => add::<core::v1::Secret>(g),
        ("", "v1", "Pod") => add::<core::v1::Pod>(g),
        ("", "v1", "Node") => add::<core::v1::Node>(g),
        ("", "v1", "ServiceAccount") => add::<core::v1::ServiceAccount>(g),
        ("", "v1", "Service") => add::<core::v1::Service>(g),
        ("", "v1", "Event") => add::<core::v1::Event>(g),
        ("events.k8s.io", "v1", "Event") => add::<events::v1::Event>(g),
        ("coordination.k8s.io", "v1", "Lease") => add::<coordination::v1::Lease>(g),
        _ => None,
    }
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!([{"group": group, "version": version, "kind": kind}])
}

/// The `<Kind>List` schema of a kind (k8s-openapi has no schema for its generic list).
fn list_schema(r: &Resource, item: &str) -> Value {
    let kind = format!("{}List", r.kind_name);
    json!({
        "description": format!("{kind} is a list of {} objects.", r.kind_name),
        "type": "object",
        "properties": {
            "apiVersion": {"description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources", "type": "string"},
            "items": {"description": format!("Items is the list of {} objects.", r.kind_name), "type": "array", "items": {"$ref": format!("{V2_REFS}{item}")}},
            "kind": {"description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds", "type": "string"},
            "metadata": {"$ref": format!("{V2_REFS}{META}ListMeta"), "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"},
        },
        "required": ["items"],
        "x-kubernetes-group-version-kind": gvk(r.group, r.version, &kind),
    })
}

/// How a list field merges, as Kubernetes annotates it: (schema, property, merge key,
/// strategy, list type, list map keys).
type ListAnnotation = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    &'static [&'static str],
);

const LISTS: &[ListAnnotation] = &[
    (
        "apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        None,
        Some("merge"),
        Some("set"),
        &[],
    ),
    (
        "apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        Some("uid"),
        Some("merge"),
        Some("map"),
        &["uid"],
    ),
    (
        "api.core.v1.PodSpec",
        "containers",
        Some("name"),
        Some("merge"),
        None,
        &[],
    ),
    (
        "api.core.v1.PodSpec",
        "initContainers",
        Some("name"),
        Some("merge"),
        None,
        &[],
    ),
    (
        "api.core.v1.PodSpec",
        "ephemeralContainers",
        Some("name"),
        Some("merge"),
        None,
        &[],
    ),
    (
        "api.core.v1.PodSpec",
        "volumes",
        Some("name"),
        Some("merge,retainKeys"),
        None,
        &[],
    ),
    (
        "api.core.v1.PodSpec",
        "imagePullSecrets",
        Some("name"),
        Some("merge"),
        None,
        &[],
    ),
    (
        "api.core.v1.PodSpec",
        "hostAliases",
        Some("ip"),
        Some("merge"),
        None,
        &[],
    ),
    (
        "api.core.v1.PodSpec",
        "resourceClaims",
        Some("name"),
        Some("merge,retainKeys"),
        Some("map"),
        &["name"],
    ),
    (
        "api.core.v1.PodSpec",
        "schedulingGates",
        Some("name"),
        Some("merge"),
        Some("map"),
        &["name"],
    ),
    (
        "api.core.v1.PodSpec",
        "topologySpreadConstraints",
        Some("topologyKey"),
        Some("merge"),
        Some("map"),
        &["topologyKey", "whenUnsatisfiable"],
    ),
    (
        "api.core.v1.PodStatus",
        "conditions",
        Some("type"),
        Some("merge"),
        None,
        &[],
    ),
    (
        "api.core.v1.PodStatus",
        "podIPs",
        Some("ip"),
        Some("merge"),
        None,
        &[],
    ),
    (
        "api.core.v1.PodStatus",
        "hostIPs",
        Some("ip"),
        Some("merge"),
        Some("atomic"),
        &[],
    ),
    (
        "api.core.v1.ServiceSpec",
        "ports",
        Some("port"),
        Some("merge"),
        Some("map"),
        &["port", "protocol"],
    ),
    (
        "api.core.v1.ServiceSpec",
        "clusterIPs",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    (
        "api.core.v1.ServiceSpec",
        "ipFamilies",
        None,
        None,
        Some("atomic"),
        &[],
    ),
    (
        "api.core.v1.NodeSpec",
        "podCIDRs",
        None,
        Some("merge"),
        Some("set"),
        &[],
    ),
    (
        "api.core.v1.NodeStatus",
        "addresses",
        Some("type"),
        Some("merge"),
        None,
        &[],
    ),
    (
        "api.core.v1.NodeStatus",
        "conditions",
        Some("type"),
        Some("merge"),
        None,
        &[],
    ),
    (
        "api.core.v1.ServiceAccount",
        "secrets",
        Some("name"),
        Some("merge"),
        None,
        &[],
    ),
];

/// The container lists keyed like Kubernetes' `Container` and `EphemeralContainer`.
const CONTAINER_LISTS: &[(&str, &str, &[&str])] = &[
    ("ports", "containerPort", &["containerPort", "protocol"]),
    ("env", "name", &[]),
    ("volumeMounts", "mountPath", &[]),
    ("volumeDevices", "devicePath", &[]),
];

/// Adds the patch and list annotations to the definitions.
fn annotate_lists(defs: &mut Map<String, Value>) {
    let mut set = |schema: &str, prop: &str, key, strategy, list_type, map_keys: &[&str]| {
        let Some(p) = defs
            .get_mut(&format!("io.k8s.{schema}"))
            .and_then(|d| d.pointer_mut(&format!("/properties/{prop}")))
            .and_then(Value::as_object_mut)
        else {
            return;
        };
        if let Some(k) = key {
            p.insert("x-kubernetes-patch-merge-key".into(), json!(k));
        }
        if let Some(s) = strategy {
            p.insert("x-kubernetes-patch-strategy".into(), json!(s));
        }
        if let Some(t) = list_type {
            p.insert("x-kubernetes-list-type".into(), json!(t));
        }
        if !map_keys.is_empty() {
            p.insert("x-kubernetes-list-map-keys".into(), json!(map_keys));
        }
    };
    for (schema, prop, key, strategy, list_type, map_keys) in LISTS {
        set(schema, prop, *key, *strategy, *list_type, map_keys);
    }
    for schema in ["api.core.v1.Container", "api.core.v1.EphemeralContainer"] {
        for (prop, key, map_keys) in CONTAINER_LISTS {
            let list_type = (!map_keys.is_empty()).then_some("map");
            set(schema, prop, Some(*key), Some("merge"), list_type, map_keys);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    V2,
    V3,
}

/// Rewrites one schema (recursively) for the document flavor: `$ref` targets, and in v3 a
/// `$ref` with siblings (a described field) wrapped in `allOf` as OpenAPI 3.0 requires.
fn rewrite(v: &mut Value, flavor: Flavor) {
    match v {
        Value::Object(m) => {
            for child in m.values_mut() {
                rewrite(child, flavor);
            }
            let Some(Value::String(r)) = m.get_mut("$ref") else {
                return;
            };
            if flavor == Flavor::V3 {
                if let Some(name) = r.strip_prefix(V2_REFS) {
                    *r = format!("{V3_REFS}{name}");
                }
                if m.len() > 1 {
                    let r = m.remove("$ref").expect("checked above");
                    m.insert("allOf".into(), json!([{"$ref": r}]));
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite(c, flavor)),
        _ => {}
    }
}

/// Quantity and IntOrString as Kubernetes publishes them in each flavor.
fn special_types(defs: &mut Map<String, Value>, flavor: Flavor) {
    for (name, v2, v3) in [
        (
            "io.k8s.apimachinery.pkg.api.resource.Quantity",
            json!({"type": "string"}),
            json!({"oneOf": [{"type": "string"}, {"type": "number"}]}),
        ),
        (
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
            json!({"type": "string", "format": "int-or-string"}),
            json!({"format": "int-or-string", "oneOf": [{"type": "integer"}, {"type": "string"}]}),
        ),
    ] {
        if let Some(Value::Object(d)) = defs.get_mut(name) {
            // v3 keeps k8s-openapi's `x-kubernetes-int-or-string` beside the `oneOf`.
            if flavor == Flavor::V2 {
                d.remove("x-kubernetes-int-or-string");
            }
            let add = if flavor == Flavor::V2 { v2 } else { v3 };
            if let Value::Object(add) = add {
                d.extend(add);
            }
        }
    }
}

/// The schemas of `resources` (kinds, their lists, and the meta types every group version
/// uses), with refs as `#/definitions/` (the v2 form; v3 rewrites them).
fn definitions<'a>(resources: impl Iterator<Item = &'a Resource> + Clone) -> Map<String, Value> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    let settings = SchemaSettings::openapi3().with(|s| {
        s.definitions_path = "/definitions".into();
        s.meta_schema = None;
        s.transforms.clear();
    });
    let mut g = SchemaGenerator::new(settings);
    let mut kinds = Vec::new();
    for r in resources.clone() {
        if let Some(name) = add_kind(&mut g, r) {
            kinds.push((r, name));
        }
    }
    g.subschema_for::<meta::Status>();
    g.subschema_for::<meta::DeleteOptions>();
    g.subschema_for::<meta::WatchEvent<k8s_openapi::api::core::v1::Pod>>();
    g.subschema_for::<meta::ListMeta>();
    let mut defs = g.take_definitions(false);
    for (r, name) in &kinds {
        if let Some(Value::Object(d)) = defs.get_mut(name) {
            d.insert(
                "x-kubernetes-group-version-kind".into(),
                gvk(r.group, r.version, r.kind_name),
            );
        }
        defs.insert(format!("{name}List"), list_schema(r, name));
    }
    let mut gvs: Vec<(&str, &str)> = Vec::new();
    for r in resources {
        if !gvs.contains(&(r.group, r.version)) {
            gvs.push((r.group, r.version));
        }
    }
    for meta_kind in ["DeleteOptions", "WatchEvent"] {
        if let Some(Value::Object(d)) = defs.get_mut(&format!("{META}{meta_kind}")) {
            let all: Vec<Value> = gvs
                .iter()
                .map(|(g, v)| json!({"group": g, "version": v, "kind": meta_kind}))
                .collect();
            d.insert("x-kubernetes-group-version-kind".into(), json!(all));
        }
    }
    if let Some(Value::Object(d)) = defs.get_mut(&format!("{META}Status")) {
        d.insert(
            "x-kubernetes-group-version-kind".into(),
            gvk("", "v1", "Status"),
        );
    }
    annotate_lists(&mut defs);
    defs
}

/// The PATCH operations of `resources`, in the flavor's parameter form.
fn paths<'a>(resources: impl Iterator<Item = &'a Resource>, flavor: Flavor) -> Map<String, Value> {
    let mut paths = Map::new();
    for r in resources {
        let base = format!("/{}", gv_key(r));
        let item = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind_name});
        let params: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
            .into_iter()
            .map(|name| match flavor {
                Flavor::V3 => json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}}),
                Flavor::V2 => json!({"name": name, "in": "query", "type": "string", "uniqueItems": true}),
            })
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
    paths
}

/// Builds the v3 document of one group version.
fn build_v3(key: &str) -> Value {
    let of_gv = || RESOURCES.iter().filter(move |r| gv_key(r) == key);
    let mut defs = definitions(of_gv());
    for d in defs.values_mut() {
        rewrite(d, Flavor::V3);
    }
    special_types(&mut defs, Flavor::V3);
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths(of_gv(), Flavor::V3),
        "components": {"schemas": defs},
    })
}

/// Builds the v2 (swagger 2.0) document of everything served.
fn build_v2() -> Value {
    let mut defs = definitions(RESOURCES.iter());
    special_types(&mut defs, Flavor::V2);
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths(RESOURCES.iter(), Flavor::V2),
        "definitions": defs,
        "security": [{"BearerToken": []}],
        "securityDefinitions": {"BearerToken": {"description": "Bearer Token authentication", "in": "header", "name": "authorization", "type": "apiKey"}},
    })
}

static V3: LazyLock<Vec<(String, Document)>> = LazyLock::new(|| {
    group_versions()
        .into_iter()
        .map(|key| {
            let doc = Document::new(&build_v3(&key));
            (key, doc)
        })
        .collect()
});

static V2: LazyLock<Document> = LazyLock::new(|| Document::new(&build_v2()));

/// Builds the documents now (at startup, so that the memory building them takes is reused
/// by what the server allocates later instead of growing its heap when first asked).
pub fn warm() {
    LazyLock::force(&V3);
    LazyLock::force(&V2);
}

/// `/openapi/v3`.
pub fn root() -> Value {
    let paths: Map<String, Value> = V3
        .iter()
        .map(|(key, doc)| {
            (
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", doc.hash)}),
            )
        })
        .collect();
    json!({"paths": paths})
}

/// The v3 document of group version `key` (`api/v1`, `apis/<group>/<version>`), if served.
pub fn v3_document(key: &str) -> Option<&'static Document> {
    V3.iter().find(|(k, _)| k == key).map(|(_, d)| d)
}

/// The v2 document.
pub fn v2_document() -> &'static Document {
    &V2
}

/// A document as a response: `ETag` the hash, 304 when the client has it, immutable
/// caching when the client asked for this hash (`?hash=`).
fn respond(doc: &Document, headers: &HeaderMap, query: Option<&str>) -> Response<Body> {
    let etag = format!("\"{}\"", doc.hash);
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut r = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()).boxed_unsync());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(doc.body.clone()).boxed_unsync());
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(ETAG, v);
    }
    let pinned = super::parse_query(query)
        .get("hash")
        .is_some_and(|h| *h == doc.hash);
    let cache = if pinned {
        "public, immutable"
    } else {
        "no-cache, private"
    };
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// `GET /openapi/v3/<key>`; None for a group version not served.
pub fn serve_v3(key: &str, headers: &HeaderMap, query: Option<&str>) -> Option<Response<Body>> {
    v3_document(key).map(|d| respond(d, headers, query))
}

/// `GET /openapi/v2`: JSON only. A client asking only for the protobuf form (client-go's
/// discovery does) gets 406 Not Acceptable, and kubectl carries on without v2.
pub fn serve_v2(headers: &HeaderMap) -> Response<Body> {
    let accept = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let json_ok = accept.is_empty()
        || accept.split(',').any(|m| {
            let m = m.split(';').next().unwrap_or_default().trim();
            matches!(m, "application/json" | "application/*" | "*/*")
        });
    if !json_ok {
        let mut r = Response::new(
            Full::new(Bytes::from_static(
                b"the openapi v2 document is served as application/json only",
            ))
            .boxed_unsync(),
        );
        *r.status_mut() = StatusCode::NOT_ACCEPTABLE;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return r;
    }
    respond(&V2, headers, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3(key: &str) -> Value {
        serde_json::from_slice(&v3_document(key).unwrap().body).unwrap()
    }

    #[test]
    fn root_points_at_each_group_version() {
        let r = root();
        let url = r["paths"]["api/v1"]["serverRelativeURL"].as_str().unwrap();
        assert!(url.starts_with("/openapi/v3/api/v1?hash="));
        assert!(r["paths"]["apis/coordination.k8s.io/v1"].is_object());
        assert!(v3_document("apis/apps/v1").is_none());
    }

    #[test]
    fn patch_operations_declare_field_validation() {
        let d = v3("api/v1");
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

    /// Every `$ref` in `v` resolves in `defs` and has the flavor's prefix.
    fn refs_resolve(v: &Value, defs: &Map<String, Value>, prefix: &str) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    let name = r.strip_prefix(prefix).unwrap_or_else(|| panic!("{r}"));
                    assert!(defs.contains_key(name), "{r} does not resolve");
                    if prefix == V3_REFS {
                        assert_eq!(m.len(), 1, "v3 $ref with siblings: {m:?}");
                    }
                }
                m.values().for_each(|c| refs_resolve(c, defs, prefix));
            }
            Value::Array(a) => a.iter().for_each(|c| refs_resolve(c, defs, prefix)),
            _ => {}
        }
    }

    #[test]
    fn v3_schemas_are_kubernetes_shaped() {
        let d = v3("api/v1");
        let defs = d["components"]["schemas"].as_object().unwrap();
        refs_resolve(&d, defs, V3_REFS);
        let pod = &defs["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{"group": "", "version": "v1", "kind": "Pod"}])
        );
        assert_eq!(
            pod["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.PodSpec"
        );
        assert!(pod["properties"]["spec"]["description"].is_string());
        let spec = &defs["io.k8s.api.core.v1.PodSpec"];
        assert_eq!(spec["required"], json!(["containers"]));
        assert_eq!(
            spec["properties"]["containers"]["x-kubernetes-patch-merge-key"],
            "name"
        );
        let ports = &defs["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(
            ports["x-kubernetes-list-map-keys"],
            json!(["containerPort", "protocol"])
        );
        assert_eq!(
            defs["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"]["x-kubernetes-patch-merge-key"],
            "port"
        );
        let ios = &defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
        assert_eq!(ios["format"], "int-or-string");
        assert!(ios.get("type").is_none() && ios["oneOf"].is_array());
        assert_eq!(ios["x-kubernetes-int-or-string"], true);
        assert_eq!(
            defs["io.k8s.api.core.v1.PodList"]["x-kubernetes-group-version-kind"][0]["kind"],
            "PodList"
        );
        assert!(defs.contains_key("io.k8s.api.core.v1.ServiceList"));
        assert!(defs.contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"));
        assert!(defs.contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.Status"));
        // Only what the group version references.
        let lease = v3("apis/coordination.k8s.io/v1");
        let ldefs = lease["components"]["schemas"].as_object().unwrap();
        refs_resolve(&lease, ldefs, V3_REFS);
        assert!(ldefs.contains_key("io.k8s.api.coordination.v1.LeaseSpec"));
        assert!(!ldefs.contains_key("io.k8s.api.core.v1.Pod"));
        let events = v3("apis/events.k8s.io/v1");
        let edefs = events["components"]["schemas"].as_object().unwrap();
        refs_resolve(&events, edefs, V3_REFS);
        assert_eq!(
            edefs["io.k8s.api.events.v1.EventList"]["x-kubernetes-group-version-kind"][0]["group"],
            "events.k8s.io"
        );
    }

    #[test]
    fn v2_is_one_swagger_document() {
        let d: Value = serde_json::from_slice(&v2_document().body).unwrap();
        assert_eq!(d["swagger"], "2.0");
        let defs = d["definitions"].as_object().unwrap();
        refs_resolve(&d, defs, V2_REFS);
        assert_eq!(
            defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["type"],
            "string"
        );
        assert_eq!(
            defs["io.k8s.apimachinery.pkg.api.resource.Quantity"]["type"],
            "string"
        );
        assert_eq!(
            defs["io.k8s.api.coordination.v1.Lease"]["x-kubernetes-group-version-kind"][0]["group"],
            "coordination.k8s.io"
        );
        let spec = &defs["io.k8s.api.core.v1.Pod"]["properties"]["spec"];
        assert_eq!(spec["$ref"], "#/definitions/io.k8s.api.core.v1.PodSpec");
        let p = &d["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]["parameters"];
        assert!(
            p.as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["type"] == "string")
        );
    }

    #[test]
    fn responses_carry_etags_and_negotiate() {
        let doc = v3_document("api/v1").unwrap();
        let q = format!("hash={}", doc.hash);
        let r = serve_v3("api/v1", &HeaderMap::new(), Some(&q)).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CACHE_CONTROL], "public, immutable");
        let etag = r.headers()[ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(IF_NONE_MATCH, etag);
        assert_eq!(
            serve_v3("api/v1", &h, None).unwrap().status(),
            StatusCode::NOT_MODIFIED
        );
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"),
        );
        assert_eq!(serve_v2(&h).status(), StatusCode::NOT_ACCEPTABLE);
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(serve_v2(&h).status(), StatusCode::OK);
    }
}
