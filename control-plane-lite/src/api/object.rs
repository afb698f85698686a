//! Incoming objects: decoded through the `k8s-openapi` types (so only real Kubernetes JSON is
//! stored), checked for unknown fields, validated, defaulted, and given server-set metadata.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, ServiceAccount};
use serde_json::{Map, Value, json};

use super::resources::{Kind, Resource};
use super::status::{ApiError, Cause};

/// What to do with fields the schema does not know (`?fieldValidation=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<FieldValidation, ApiError> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation {other:?} is not one of Ignore, Warn, Strict"
            ))),
        }
    }
}

/// Decodes `value` as the kind's typed object and encodes it again.
fn roundtrip(kind: Kind, value: Value) -> Result<Value, serde_json::Error> {
    fn rt<T: serde::de::DeserializeOwned + serde::Serialize>(
        v: Value,
    ) -> Result<Value, serde_json::Error> {
        serde_json::to_value(serde_json::from_value::<T>(v)?)
    }
    match kind {
        Kind::Namespace => rt::<Namespace>(value),
        Kind::ConfigMap => rt::<ConfigMap>(value),
        Kind::Secret => rt::<Secret>(value),
        Kind::Pod => rt::<Pod>(value),
        Kind::Lease => rt::<Lease>(value),
        Kind::Node => rt::<Node>(value),
        Kind::ServiceAccount => rt::<ServiceAccount>(value),
        Kind::Event => rt::<Event>(value),
    }
}

/// Paths present (and not null) in `input` but missing from `typed`.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, tv)) in a.iter().zip(b).enumerate() {
                unknown_fields(v, tv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes and normalizes a request body for `res`. Returns the object and warnings.
pub fn decode(
    res: &Resource,
    mut value: Value,
    validation: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let Some(obj) = value.as_object_mut() else {
        return Err(ApiError::BadRequest(format!(
            "the body of the request is not a {} object",
            res.kind_name
        )));
    };
    let api_version = res.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None => {
            obj.insert("apiVersion".into(), json!(api_version));
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None => {
            obj.insert("kind".into(), json!(res.kind_name));
        }
        Some(k) if k == res.kind_name => {}
        Some(k) => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind_name
            )));
        }
    }
    let typed = roundtrip(res.kind, value.clone()).map_err(|e| {
        ApiError::BadRequest(format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            res.kind_name, res.version, res.kind_name
        ))
    })?;
    let mut unknown = Vec::new();
    unknown_fields(&value, &typed, "", &mut unknown);
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        let msgs: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        match validation {
            FieldValidation::Strict => {
                return Err(ApiError::BadRequest(format!(
                    "strict decoding error: {}",
                    msgs.join(", ")
                )));
            }
            FieldValidation::Warn => warnings = msgs,
            FieldValidation::Ignore => {}
        }
    }
    Ok((typed, warnings))
}

pub fn meta(obj: &Value) -> &Value {
    obj.get("metadata").unwrap_or(&Value::Null)
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).get(field).and_then(Value::as_str)
}

pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    meta(obj)
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A random lowercase suffix as `generateName` uses (no vowels, no look-alikes).
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = [0u8; 5];
    getrandom::fill(&mut bytes).expect("system randomness");
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A random (version 4) UUID.
pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("system randomness");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Now, as Kubernetes writes timestamps (seconds, UTC).
pub fn now_rfc3339() -> String {
    rfc3339(unix_now())
}

/// A Unix time as Kubernetes writes timestamps.
pub fn rfc3339(secs: i64) -> String {
    let t = k8s_openapi::jiff::Timestamp::from_second(secs)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", t)
        .unwrap_or_else(|_| t.to_string())
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A label or annotation key: optional DNS subdomain prefix, a name of at most 63 chars.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(is_dns1123_subdomain)
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// Validation Kubernetes does for these kinds; an empty list means valid.
pub fn validate(res: &Resource, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = meta_str(obj, "name").unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: "metadata.name".into(),
            message: "Required value: name or generateName is required".into(),
        });
    } else if res.kind == Kind::Namespace && !is_dns1123_label(name) {
        causes.push(Cause::invalid("metadata.name", name, DNS1123_LABEL_MSG));
    } else if res.kind != Kind::Namespace && !is_dns1123_subdomain(name) {
        causes.push(Cause::invalid("metadata.name", name, DNS1123_SUBDOMAIN_MSG));
    }
    for (k, v) in labels(obj) {
        if !is_qualified_name(&k) {
            causes.push(Cause::invalid(
                "metadata.labels",
                &k,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
        if !is_label_value(&v) {
            causes.push(Cause::invalid(
                "metadata.labels",
                &v,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
    }
    if let Some(ann) = meta(obj).get("annotations").and_then(Value::as_object) {
        for k in ann.keys() {
            if !is_qualified_name(k) {
                causes.push(Cause::invalid(
                    "metadata.annotations",
                    k,
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
        }
    }
    if res.kind == Kind::Pod {
        validate_pod(obj, &mut causes);
    }
    causes
}

fn validate_pod(obj: &Value, causes: &mut Vec<Cause>) {
    let containers = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if containers.is_empty() {
        causes.push(Cause::required("spec.containers"));
    }
    let mut seen = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            causes.push(Cause::required(format!("spec.containers[{i}].name")));
        } else if !is_dns1123_label(name) {
            causes.push(Cause::invalid(
                format!("spec.containers[{i}].name"),
                name,
                DNS1123_LABEL_MSG,
            ));
        } else if seen.contains(&name) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                field: format!("spec.containers[{i}].name"),
                message: format!("Duplicate value: {name:?}"),
            });
        }
        seen.push(name);
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(|s| s.trim().is_empty())
        {
            causes.push(Cause::required(format!("spec.containers[{i}].image")));
        }
    }
}

const POD_UPDATE_MSG: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// What Kubernetes refuses to change on update (the main resource, not `/status`).
pub fn validate_update(res: &Resource, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    match res.kind {
        Kind::Pod => {
            let mutable = |spec: &Value| {
                let mut spec = spec.clone();
                if let Some(m) = spec.as_object_mut() {
                    for k in [
                        "activeDeadlineSeconds",
                        "tolerations",
                        "terminationGracePeriodSeconds",
                        "schedulingGates",
                    ] {
                        m.remove(k);
                    }
                    for list in ["containers", "initContainers"] {
                        if let Some(cs) = m.get_mut(list).and_then(Value::as_array_mut) {
                            for c in cs {
                                c["image"] = Value::Null;
                            }
                        }
                    }
                }
                spec
            };
            if mutable(&old["spec"]) != mutable(&new["spec"]) {
                causes.push(Cause::forbidden("spec", POD_UPDATE_MSG));
            }
        }
        Kind::ConfigMap | Kind::Secret if old["immutable"] == json!(true) => {
            if new["immutable"] != json!(true) {
                causes.push(Cause::forbidden(
                    "immutable",
                    "field is immutable when `immutable` is set",
                ));
            }
            for field in ["data", "binaryData"] {
                if old.get(field) != new.get(field) {
                    causes.push(Cause::forbidden(
                        field,
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        _ => {}
    }
    causes
}

/// Defaults Kubernetes fills in on create.
pub fn default_on_create(res: &Resource, obj: &mut Value) {
    match res.kind {
        Kind::Namespace => {
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        Kind::Secret => {
            if obj.get("type").is_none_or(Value::is_null) {
                obj["type"] = json!("Opaque");
            }
        }
        Kind::Pod => default_pod(obj),
        Kind::ConfigMap | Kind::Lease | Kind::Node | Kind::ServiceAccount | Kind::Event => {}
    }
}

fn set_default(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut()
        && m.get(key).is_none_or(Value::is_null)
    {
        m.insert(key.into(), v);
    }
}

fn default_pod(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec") {
        set_default(spec, "restartPolicy", json!("Always"));
        set_default(spec, "dnsPolicy", json!("ClusterFirst"));
        set_default(spec, "terminationGracePeriodSeconds", json!(30));
        set_default(spec, "schedulerName", json!("default-scheduler"));
        set_default(spec, "securityContext", json!({}));
        set_default(spec, "enableServiceLinks", json!(true));
        for list in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
                    let tag = image.rsplit('/').next().unwrap_or_default();
                    let policy = if image.contains('@') {
                        "IfNotPresent"
                    } else if !tag.contains(':') || tag.ends_with(":latest") {
                        "Always"
                    } else {
                        "IfNotPresent"
                    };
                    set_default(c, "imagePullPolicy", json!(policy));
                    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                    set_default(c, "terminationMessagePolicy", json!("File"));
                }
            }
        }
    }
    if obj.pointer("/status/phase").is_none() {
        let qos = "BestEffort";
        let status = obj
            .as_object_mut()
            .expect("pod is an object")
            .entry("status")
            .or_insert_with(|| json!({}));
        set_default(status, "phase", json!("Pending"));
        set_default(status, "qosClass", json!(qos));
    }
}

/// Folds a Secret's `stringData` into `data` (base64), as Kubernetes does on every write.
pub fn fold_string_data(res: &Resource, obj: &mut Value) {
    if res.kind != Kind::Secret {
        return;
    }
    let Some(m) = obj.as_object_mut() else { return };
    let Some(Value::Object(sd)) = m.remove("stringData") else {
        return;
    };
    let data = m.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    for (k, v) in sd {
        let raw = v.as_str().unwrap_or_default();
        data[k] = json!(base64::engine::general_purpose::STANDARD.encode(raw));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> &'static Resource {
        Resource::find("", "v1", "pods").unwrap()
    }

    #[test]
    fn unknown_fields_are_named() {
        let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "bogus": 1}], "nope": true}});
        let err = decode(pods(), body.clone(), FieldValidation::Strict).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("spec.containers[0].bogus"), "{msg}");
        assert!(msg.contains("spec.nope"), "{msg}");
        let (obj, warnings) = decode(pods(), body, FieldValidation::Warn).unwrap();
        assert_eq!(warnings.len(), 2);
        assert!(obj["spec"].get("nope").is_none());
    }

    #[test]
    fn wrong_types_are_bad_requests() {
        let body = json!({"metadata": {"name": "p"}, "spec": {"containers": "x"}});
        let err = decode(pods(), body, FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code(), 400);
        let cm = Resource::find("", "v1", "configmaps").unwrap();
        let err = decode(cm, json!({"kind": "Pod"}), FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code(), 400);
    }

    #[test]
    fn pod_validation_names_fields() {
        let pod = json!({"metadata": {"name": "Bad_Name", "labels": {"a": "-x"}},
            "spec": {"containers": [{"name": "c"}, {"name": "c", "image": "i"}]}});
        let causes = validate(pods(), &pod);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "metadata.labels",
                "spec.containers[0].image",
                "spec.containers[1].name"
            ]
        );
    }

    #[test]
    fn pod_updates_change_only_images() {
        let old = json!({"spec": {"containers": [{"name": "c", "image": "a:1"}], "nodeName": ""}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("a:2");
        new["spec"]["tolerations"] = json!([{"key": "k"}]);
        assert!(validate_update(pods(), &old, &new).is_empty());
        new["spec"]["nodeName"] = json!("n1");
        let causes = validate_update(pods(), &old, &new);
        assert_eq!(causes[0].field, "spec");
        assert_eq!(causes[0].reason, "FieldValueForbidden");
        let cm = Resource::find("", "v1", "configmaps").unwrap();
        let frozen = json!({"immutable": true, "data": {"a": "b"}});
        assert!(validate_update(cm, &frozen, &frozen).is_empty());
        let changed = json!({"immutable": true, "data": {"a": "c"}});
        assert_eq!(validate_update(cm, &frozen, &changed)[0].field, "data");
    }

    #[test]
    fn names() {
        assert!(is_dns1123_label("kube-system"));
        assert!(!is_dns1123_label("a.b"));
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("-a"));
        assert!(is_qualified_name("app.kubernetes.io/name"));
        assert!(!is_qualified_name("bad key"));
        assert_eq!(random_suffix().len(), 5);
        assert_eq!(new_uid().len(), 36);
    }

    #[test]
    fn pod_defaults_and_secret_string_data() {
        let mut pod = json!({"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}});
        default_on_create(pods(), &mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(
            pod["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod["status"]["phase"], "Pending");
        let secrets = Resource::find("", "v1", "secrets").unwrap();
        let mut s = json!({"stringData": {"k": "v"}});
        fold_string_data(secrets, &mut s);
        assert_eq!(s["data"]["k"], "dg==");
        assert!(s.get("stringData").is_none());
    }
}
