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
        Kind::EventV1 => rt::<k8s_openapi::api::events::v1::Event>(value),
        Kind::Service => rt::<k8s_openapi::api::core::v1::Service>(value),
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

/// The strings of a JSON array (other elements skipped); empty for anything but an array.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
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
        let size: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > MAX_ANNOTATIONS_SIZE {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: format!("Too long: may not be more than {MAX_ANNOTATIONS_SIZE} bytes"),
            });
        }
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
    validate_owner_refs(obj, &mut causes);
    validate_finalizers(obj, &mut causes);
    if res.kind == Kind::Service {
        validate_service(obj, &mut causes);
    }
    if res.kind == Kind::Pod {
        validate_pod(obj, &mut causes);
    }
    causes
}

/// The total size of an object's annotations (keys and values) Kubernetes allows.
const MAX_ANNOTATIONS_SIZE: usize = 256 * 1024;

/// Finalizers Kubernetes itself defines (no domain needed).
const STANDARD_FINALIZERS: [&str; 3] = ["kubernetes", "orphan", "foregroundDeletion"];

fn validate_owner_refs(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(refs) = meta(obj).get("ownerReferences").and_then(Value::as_array) else {
        return;
    };
    let mut controllers = Vec::new();
    for r in refs {
        let field = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or_default();
        for (f, what) in [
            ("apiVersion", "version"),
            ("kind", "kind"),
            ("name", "name"),
            ("uid", "uid"),
        ] {
            if field(f).is_empty() {
                causes.push(Cause::invalid(
                    format!("metadata.ownerReferences.{f}"),
                    "",
                    &format!("{what} must not be empty"),
                ));
            }
        }
        if r.get("controller") == Some(&json!(true)) {
            controllers.push(format!("{}/{}", field("kind"), field("name")));
        }
    }
    if controllers.len() > 1 {
        causes.push(Cause::invalid(
            "metadata.ownerReferences",
            &controllers.join(", "),
            "Only one reference can have Controller set to true",
        ));
    }
}

fn validate_finalizers(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(list) = meta(obj).get("finalizers").and_then(Value::as_array) else {
        return;
    };
    let names: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
    for f in &names {
        if !is_qualified_name(f) {
            causes.push(Cause::invalid(
                "metadata.finalizers",
                f,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
    }
    if names.contains(&"orphan") && names.contains(&"foregroundDeletion") {
        causes.push(Cause::invalid(
            "metadata.finalizers",
            "orphan, foregroundDeletion",
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
}

/// Warnings Kubernetes gives about metadata that is valid but unwise.
pub fn meta_warnings(obj: &Value) -> Vec<String> {
    meta(obj)
        .get("finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|f| !f.contains('/') && !STANDARD_FINALIZERS.contains(f))
        .map(|f| {
            format!(
                "metadata.finalizers: {f:?}: prefer a domain-qualified finalizer name including a path (/) to avoid accidental conflicts with other finalizer writers"
            )
        })
        .collect()
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
        Kind::Service => validate_service_update(old, new, &mut causes),
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
            // The namespace controller's own finalizer: contents go before the namespace.
            if obj.pointer("/spec/finalizers").is_none_or(Value::is_null) {
                let spec = obj
                    .as_object_mut()
                    .expect("namespace is an object")
                    .entry("spec")
                    .or_insert_with(|| json!({}));
                if spec.is_object() {
                    spec["finalizers"] = json!(["kubernetes"]);
                }
            }
        }
        Kind::Secret => {
            if obj.get("type").is_none_or(Value::is_null) {
                obj["type"] = json!("Opaque");
            }
        }
        Kind::Pod => default_pod(obj),
        Kind::ConfigMap
        | Kind::Lease
        | Kind::Node
        | Kind::ServiceAccount
        | Kind::Event
        | Kind::EventV1 => {}
        Kind::Service => default_service(obj),
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

/// The range cluster IPs are allocated from (k3s' default service CIDR): network and prefix.
pub const SERVICE_CIDR: (std::net::Ipv4Addr, u8) = (std::net::Ipv4Addr::new(10, 43, 0, 0), 16);

/// The first address of the service CIDR: the `default/kubernetes` Service's, never allocated
/// to another Service.
pub const KUBERNETES_SERVICE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 43, 0, 1);

/// The node port range (Kubernetes' default).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

const SERVICE_TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn service_type(obj: &Value) -> &str {
    obj.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

fn needs_node_ports(ty: &str) -> bool {
    matches!(ty, "NodePort" | "LoadBalancer")
}

fn service_ports_mut(obj: &mut Value) -> impl Iterator<Item = &mut Value> {
    obj.pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

fn in_service_cidr(ip: std::net::Ipv4Addr) -> bool {
    let (net, bits) = SERVICE_CIDR;
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Service defaults: type, session affinity, port protocols and target ports, single-stack
/// IPv4, traffic policies, `clusterIPs` from `clusterIP`.
fn default_service(obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else { return };
    let spec = m.entry("spec").or_insert_with(|| json!({}));
    if !spec.is_object() {
        return;
    }
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let ty = spec["type"].as_str().unwrap_or_default().to_string();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set_default(p, "targetPort", port);
            }
        }
    }
    if ty != "ExternalName" {
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        if let Some(ip) = spec.get("clusterIP").and_then(Value::as_str)
            && !ip.is_empty()
        {
            let ip = json!([ip]);
            set_default(spec, "clusterIPs", ip);
        }
    }
    if needs_node_ports(&ty) {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    let status = m.entry("status").or_insert_with(|| json!({}));
    set_default(status, "loadBalancer", json!({}));
}

/// What Kubernetes commonly rejects in a Service.
fn validate_service(obj: &Value, causes: &mut Vec<Cause>) {
    let name = meta_str(obj, "name").unwrap_or_default();
    let dns1035 = |s: &str| is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase();
    // Service names are DNS-1035 labels (stricter than the subdomain `validate` checked).
    if !name.is_empty() && !dns1035(name) {
        causes.retain(|c| c.field != "metadata.name");
        causes.push(Cause::invalid("metadata.name", name, DNS1035_LABEL_MSG));
    }
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let ty = service_type(obj);
    if !SERVICE_TYPES.contains(&ty) {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: "spec.type".into(),
            message: format!(
                "Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
            ),
        });
    }
    if let Some(a) = spec.get("sessionAffinity").and_then(Value::as_str)
        && !matches!(a, "None" | "ClientIP")
    {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: "spec.sessionAffinity".into(),
            message: format!("Unsupported value: {a:?}: supported values: \"ClientIP\", \"None\""),
        });
    }
    let cluster_ip = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let headless = cluster_ip == "None";
    if ty == "ExternalName" {
        let ext = spec
            .get("externalName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if ext.is_empty() {
            causes.push(Cause::required("spec.externalName"));
        } else if !is_dns1123_subdomain(ext.trim_end_matches('.')) {
            causes.push(Cause::invalid(
                "spec.externalName",
                ext,
                DNS1123_SUBDOMAIN_MSG,
            ));
        }
    } else if !cluster_ip.is_empty()
        && !headless
        && cluster_ip.parse::<std::net::Ipv4Addr>().is_err()
    {
        causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            cluster_ip,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    if headless && needs_node_ports(ty) {
        causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            cluster_ip,
            &format!("may not be set to 'None' for {ty} services"),
        ));
    }
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !headless {
        causes.push(Cause::required("spec.ports"));
    }
    let mut names: Vec<&str> = Vec::new();
    let mut keys: Vec<(i64, &str)> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let pname = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if pname.is_empty() {
            if ports.len() > 1 {
                causes.push(Cause::required(field("name")));
            }
        } else if !is_dns1123_label(pname) {
            causes.push(Cause::invalid(field("name"), pname, DNS1123_LABEL_MSG));
        } else if names.contains(&pname) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                field: field("name"),
                message: format!("Duplicate value: {pname:?}"),
            });
        }
        names.push(pname);
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                field: field("port"),
                message: format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
            });
        }
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                field: field("protocol"),
                message: format!(
                    "Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            });
        } else if keys.contains(&(port, proto)) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                field: format!("spec.ports[{i}]"),
                message: format!("Duplicate value: {{port: {port}, protocol: {proto}}}"),
            });
        }
        keys.push((port, proto));
        match p.get("targetPort") {
            Some(Value::Number(n)) if !(1..=65535).contains(&n.as_i64().unwrap_or(0)) => {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field: field("targetPort"),
                    message: format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                });
            }
            Some(Value::String(s)) if !is_iana_svc_name(s) => {
                causes.push(Cause::invalid(
                    field("targetPort"),
                    s,
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), at most 15 characters, and at least one letter",
                ));
            }
            _ => {}
        }
        if let Some(np) = p
            .get("nodePort")
            .and_then(Value::as_i64)
            .filter(|n| *n != 0)
        {
            if !needs_node_ports(ty) {
                causes.push(Cause::forbidden(
                    field("nodePort"),
                    &format!("may not be used when `type` is '{ty}'"),
                ));
            } else if !u16::try_from(np).is_ok_and(|n| NODE_PORTS.contains(&n)) {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field: field("nodePort"),
                    message: format!(
                        "Invalid value: {np}: provided port is not in the valid range. The range of valid ports is {}-{}",
                        NODE_PORTS.start(),
                        NODE_PORTS.end()
                    ),
                });
            }
        }
    }
}

/// An IANA service name, as a named `targetPort` must be.
fn is_iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// A Service's cluster IP cannot change once allocated (except to or from ExternalName).
fn validate_service_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let ip = |v: &Value| {
        v.pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (before, after) = (ip(old), ip(new));
    if service_type(old) != "ExternalName"
        && service_type(new) != "ExternalName"
        && !before.is_empty()
        && before != after
    {
        causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            &after,
            "may not change once set",
        ));
    }
}

/// Cluster IPs and node ports handed out in this process lately: concurrent creates never
/// get the same one, even before the first is stored.
static RECENT: std::sync::Mutex<Vec<Reservation>> = std::sync::Mutex::new(Vec::new());

/// How long a handed-out cluster IP or node port is kept from others without being stored.
const RESERVATION: std::time::Duration = std::time::Duration::from_secs(120);

/// How long a value one Service was given keeps another Service from asking for it by value:
/// long enough for the first's write to be stored (the check against the stored Services
/// covers it from then on), short enough not to hold a value its Service has given up (a
/// Service deleted and another created with its node port).
const IN_FLIGHT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Allocated {
    Ip(std::net::Ipv4Addr),
    NodePort(u16),
}

/// A value handed out lately, to whom (`namespace/name`, empty when not named yet) and when.
#[derive(Clone, Debug)]
struct Reservation {
    what: Allocated,
    owner: String,
    at: std::time::Instant,
}

/// The cluster IPs and node ports in use: those of the stored Services, which a Service may
/// not ask for, and those this process handed out lately, which allocation avoids and which
/// another Service may not ask for while they are being stored.
#[derive(Debug, Default)]
pub struct ServiceAllocations {
    ips: std::collections::HashSet<std::net::Ipv4Addr>,
    node_ports: std::collections::HashSet<u16>,
    recent: Vec<Reservation>,
}

impl ServiceAllocations {
    /// What `services` hold, plus what this process handed out lately.
    pub fn of(services: &[Value]) -> ServiceAllocations {
        let mut a = ServiceAllocations::default();
        for s in services {
            if let Some(ip) = s
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .and_then(|ip| ip.parse().ok())
            {
                a.ips.insert(ip);
            }
            for p in s
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(np) = p
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok())
                {
                    a.node_ports.insert(np);
                }
            }
        }
        let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|r| r.at.elapsed() < RESERVATION);
        a.recent = recent.clone();
        a
    }

    fn handed_out(&self, what: Allocated) -> bool {
        self.recent.iter().any(|r| r.what == what)
    }

    /// Free for allocation: neither stored nor handed out lately.
    fn ip_free(&self, ip: std::net::Ipv4Addr) -> bool {
        !self.ips.contains(&ip) && !self.handed_out(Allocated::Ip(ip))
    }

    /// Free for allocation: neither stored nor handed out lately.
    fn node_port_free(&self, port: u16) -> bool {
        !self.node_ports.contains(&port) && !self.handed_out(Allocated::NodePort(port))
    }

    /// Whether Service `owner` may ask for `what` by value: no stored Service holds it and
    /// no other Service was just given it.
    fn claimable(&self, what: Allocated, owner: &str) -> bool {
        let stored = match what {
            Allocated::Ip(ip) => self.ips.contains(&ip),
            Allocated::NodePort(n) => self.node_ports.contains(&n),
        };
        !stored
            && !self.recent.iter().any(|r| {
                r.what == what
                    && r.at.elapsed() < IN_FLIGHT
                    && (owner.is_empty() || r.owner != owner)
            })
    }
}

/// A Service's `namespace/name` (empty while it has no name).
fn service_owner(obj: &Value) -> String {
    match meta_str(obj, "name").filter(|n| !n.is_empty()) {
        Some(name) => format!("{}/{name}", meta_str(obj, "namespace").unwrap_or_default()),
        None => String::new(),
    }
}

fn reserve(what: Allocated, owner: &str) {
    RECENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Reservation {
            what,
            owner: owner.to_string(),
            at: std::time::Instant::now(),
        });
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("system randomness");
    u32::from_le_bytes(b)
}

/// A free value among `n` candidates `pick(i)`, starting at a random one.
fn first_free<T>(n: u32, pick: impl Fn(u32) -> T, used: impl Fn(&T) -> bool) -> Option<T> {
    let start = random_u32() % n;
    (0..n).map(|i| pick((start + i) % n)).find(|c| !used(c))
}

/// Gives Service `owner` (`namespace/name`), not an ExternalName one, its cluster IP: a free
/// one when it asks for none, or checks the one it asks for (unless it is `kept`, the one it
/// already has).
fn allocate_cluster_ip(
    obj: &mut Value,
    owner: &str,
    used: &ServiceAllocations,
    kept: Option<&str>,
    causes: &mut Vec<Cause>,
) {
    let is_default_kubernetes = owner == "default/kubernetes";
    let asked = obj
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (net, bits) = SERVICE_CIDR;
    let ip = match asked.as_str() {
        "" => {
            let size = 1u32 << (32 - bits);
            // Neither the network address nor the broadcast address.
            let free = first_free(
                size - 2,
                |i| std::net::Ipv4Addr::from(u32::from(net) + 1 + i),
                |ip| !used.ip_free(*ip) || *ip == KUBERNETES_SERVICE_IP,
            );
            let Some(ip) = free else {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field: "spec.clusterIPs".into(),
                    message: "Invalid value: []: failed to allocate a serviceIP: range is full"
                        .into(),
                });
                return;
            };
            reserve(Allocated::Ip(ip), owner);
            ip.to_string()
        }
        "None" => asked,
        other if Some(other) == kept => asked,
        other => {
            match other.parse::<std::net::Ipv4Addr>() {
                Ok(ip) if !in_service_cidr(ip) => {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs[0]",
                        other,
                        &format!(
                            "failed to allocate IP {other}: the provided IP ({other}) is not in the valid range. The range of valid IPs is {net}/{bits}"
                        ),
                    ));
                }
                Ok(ip) if ip == KUBERNETES_SERVICE_IP && is_default_kubernetes => {}
                Ok(ip)
                    if !used.claimable(Allocated::Ip(ip), owner) || ip == KUBERNETES_SERVICE_IP =>
                {
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        field: "spec.clusterIPs".into(),
                        message: format!(
                            "Invalid value: []string{{{other:?}}}: failed to allocate IP {other}: provided IP is already allocated"
                        ),
                    });
                }
                Ok(ip) => reserve(Allocated::Ip(ip), owner),
                // Not an IP: validation names it.
                Err(_) => {}
            }
            asked
        }
    };
    obj["spec"]["clusterIP"] = json!(ip);
    obj["spec"]["clusterIPs"] = json!([ip]);
}

/// Gives the ports without one of NodePort or LoadBalancer Service `owner` a free node port,
/// and checks the ones asked for (unless `kept`: the Service has them already).
fn allocate_node_ports(
    obj: &mut Value,
    owner: &str,
    used: &ServiceAllocations,
    kept: &[u16],
    causes: &mut Vec<Cause>,
) {
    let mut taken: Vec<u16> = Vec::new();
    for (i, p) in service_ports_mut(obj).enumerate() {
        let asked = p.get("nodePort").and_then(Value::as_u64).unwrap_or(0);
        if asked != 0 {
            if let Ok(n) = u16::try_from(asked)
                && NODE_PORTS.contains(&n)
            {
                let own = kept.contains(&n);
                if taken.contains(&n) || (!own && !used.claimable(Allocated::NodePort(n), owner)) {
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        field: format!("spec.ports[{i}].nodePort"),
                        message: format!("Invalid value: {n}: provided port is already allocated"),
                    });
                } else {
                    taken.push(n);
                    if !own {
                        reserve(Allocated::NodePort(n), owner);
                    }
                }
            }
            continue;
        }
        let span = u32::from(NODE_PORTS.end() - NODE_PORTS.start()) + 1;
        match first_free(
            span,
            |i| NODE_PORTS.start() + i as u16,
            |n| !used.node_port_free(*n) || taken.contains(n) || kept.contains(n),
        ) {
            Some(n) => {
                taken.push(n);
                reserve(Allocated::NodePort(n), owner);
                p["nodePort"] = json!(n);
            }
            None => causes.push(Cause {
                reason: "FieldValueInvalid",
                field: format!("spec.ports[{i}].nodePort"),
                message: "Invalid value: 0: failed to allocate a nodePort: range is full".into(),
            }),
        }
    }
}

/// Allocates a new Service's cluster IP (unless headless or ExternalName, or checks the one
/// asked for) and the node ports its type needs, given what is in use.
pub fn allocate_service(obj: &mut Value, used: &ServiceAllocations) -> Result<(), Vec<Cause>> {
    let ty = service_type(obj).to_string();
    let owner = service_owner(obj);
    let mut causes = Vec::new();
    if ty != "ExternalName" {
        allocate_cluster_ip(obj, &owner, used, None, &mut causes);
    }
    if needs_node_ports(&ty) {
        allocate_node_ports(obj, &owner, used, &[], &mut causes);
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(causes)
    }
}

/// The stored Services but the one named like `obj` (a create of that name fails as
/// AlreadyExists; an update replaces it).
async fn other_services(
    store: &dyn crate::store::Store,
    res: &Resource,
    obj: &Value,
) -> Result<Vec<Value>, ApiError> {
    let prefix = res.prefix(None);
    let mut services = Vec::new();
    let same = |s: &Value| {
        meta_str(s, "namespace") == meta_str(obj, "namespace")
            && meta_str(s, "name") == meta_str(obj, "name")
    };
    let mut pages = crate::store::Pages::new(store, &prefix, 500);
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| ApiError::from_store(e, &res.qualified(), ""))?;
        services.extend(
            page.items
                .iter()
                .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
                .filter(|s| !same(s)),
        );
    }
    Ok(services)
}

fn allocation_invalid(res: &Resource, obj: &Value, causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid {
        kind: res.qualified_kind(),
        name: meta_str(obj, "name").unwrap_or_default().to_string(),
        causes,
    }
}

/// Scans the stored Services and allocates for a new one ([`allocate_service`]).
pub async fn allocate_service_from_store(
    store: &dyn crate::store::Store,
    res: &Resource,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let services = other_services(store, res, obj).await?;
    allocate_service(obj, &ServiceAllocations::of(&services))
        .map_err(|causes| allocation_invalid(res, obj, causes))
}

/// On update: keeps what was allocated when the new object leaves it out (a `replace`
/// without `clusterIP` or `nodePort`), gives a cluster IP to a Service that leaves
/// ExternalName and node ports to one that became a NodePort or LoadBalancer, and checks the
/// values newly asked for against `used` (the other Services) as a create does.
pub fn keep_service_allocations(
    res: &Resource,
    cur: &Value,
    new: &mut Value,
    used: &ServiceAllocations,
) -> Result<(), Vec<Cause>> {
    if res.kind != Kind::Service || service_type(new) == "ExternalName" {
        return Ok(());
    }
    let was_external = service_type(cur) == "ExternalName";
    if !was_external {
        for k in ["clusterIP", "clusterIPs"] {
            let missing = new
                .pointer(&format!("/spec/{k}"))
                .is_none_or(|v| v.is_null() || v == "" || v == &json!([]));
            if missing && let Some(v) = cur.pointer(&format!("/spec/{k}")) {
                new["spec"][k] = v.clone();
            }
        }
    }
    let kept_ip = if was_external {
        None
    } else {
        cur.pointer("/spec/clusterIP").and_then(Value::as_str)
    };
    let owner = service_owner(cur);
    let mut causes = Vec::new();
    let asked = new
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if asked.is_empty() || Some(asked) != kept_ip {
        allocate_cluster_ip(new, &owner, used, kept_ip, &mut causes);
    }
    if needs_node_ports(service_type(new)) {
        let old_ports: Vec<Value> = cur
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let kept: Vec<u16> = old_ports
            .iter()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
            .filter_map(|n| u16::try_from(n).ok())
            .collect();
        for p in service_ports_mut(new) {
            if p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            let same = old_ports.iter().find(|o| {
                o.get("port") == p.get("port")
                    && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                        == p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
            });
            if let Some(np) = same
                .and_then(|o| o.get("nodePort"))
                .filter(|n| n.as_u64().is_some_and(|n| n != 0))
            {
                p["nodePort"] = np.clone();
            }
        }
        allocate_node_ports(new, &owner, used, &kept, &mut causes);
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(causes)
    }
}

/// [`keep_service_allocations`] against the stored Services other than this one.
pub async fn keep_service_allocations_from_store(
    store: &dyn crate::store::Store,
    res: &Resource,
    cur: &Value,
    new: &mut Value,
) -> Result<(), ApiError> {
    if res.kind != Kind::Service || service_type(new) == "ExternalName" {
        return Ok(());
    }
    let services = other_services(store, res, cur).await?;
    keep_service_allocations(res, cur, new, &ServiceAllocations::of(&services))
        .map_err(|causes| allocation_invalid(res, cur, causes))
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
    fn metadata_validation() {
        let cms = Resource::find("", "v1", "configmaps").unwrap();
        let ok = json!({"metadata": {"name": "c", "finalizers": ["example.com/x", "orphan"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u", "controller": true}]}});
        assert!(validate(cms, &ok).is_empty());
        assert!(meta_warnings(&ok).is_empty());
        let bad = json!({"metadata": {"name": "c", "finalizers": ["orphan", "foregroundDeletion", "a b"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "controller": true},
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "p", "uid": "v", "controller": true}],
            "annotations": {"big": "x".repeat(MAX_ANNOTATIONS_SIZE)}}});
        let fields: Vec<String> = validate(cms, &bad).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "metadata.annotations",
                "metadata.ownerReferences.uid",
                "metadata.ownerReferences",
                "metadata.finalizers",
                "metadata.finalizers"
            ]
        );
        let plain = json!({"metadata": {"finalizers": ["mine", "kubernetes"]}});
        assert_eq!(meta_warnings(&plain).len(), 1);
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

    #[test]
    fn service_defaults_and_allocation() {
        let services = Resource::find("", "v1", "services").unwrap();
        let mut svc = json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30001}]}});
        default_on_create(services, &mut svc);
        assert_eq!(svc["spec"]["sessionAffinity"], "None");
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");
        let taken =
            json!({"spec": {"clusterIP": "10.43.0.2", "ports": [{"port": 1, "nodePort": 30002}]}});
        let used = ServiceAllocations::of(&[taken]);
        allocate_service(&mut svc, &used).unwrap();
        let ip: std::net::Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(in_service_cidr(ip) && ip != KUBERNETES_SERVICE_IP);
        let np = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
        assert!(NODE_PORTS.contains(&np) && np != 30001 && np != 30002);
        assert_eq!(svc["spec"]["ports"][1]["nodePort"], 30001);
        assert!(validate(services, &svc).is_empty());

        let mut dup = json!({"metadata": {"name": "dup", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.2", "type": "NodePort", "ports": [{"port": 1, "nodePort": 30002}]}});
        let causes = allocate_service(&mut dup, &used).unwrap_err();
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["spec.clusterIPs", "spec.ports[0].nodePort"]);
        let mut own = json!({"metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.1", "ports": [{"port": 443}]}});
        allocate_service(&mut own, &used).unwrap();
        let mut other = json!({"metadata": {"name": "x", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.1", "ports": [{"port": 443}]}});
        assert!(allocate_service(&mut other, &used).is_err());
    }

    #[test]
    fn service_validation_and_updates() {
        let services = Resource::find("", "v1", "services").unwrap();
        let svc = |name: &str, spec: Value| json!({"metadata": {"name": name}, "spec": spec});
        let fields = |v: &Value| -> Vec<String> {
            validate(services, v).into_iter().map(|c| c.field).collect()
        };
        assert_eq!(
            fields(&svc("9a", json!({"ports": [{"port": 1}]}))),
            ["metadata.name"]
        );
        assert_eq!(fields(&svc("a", json!({}))), ["spec.ports"]);
        assert!(fields(&svc("a", json!({"clusterIP": "None"}))).is_empty());
        assert_eq!(
            fields(&svc("a", json!({"type": "ExternalName"}))),
            ["spec.externalName"]
        );
        assert_eq!(
            fields(&svc(
                "a",
                json!({"ports": [{"port": 1, "targetPort": "Not_A_Name"}]})
            )),
            ["spec.ports[0].targetPort"]
        );
        let old = svc(
            "a",
            json!({"clusterIP": "10.43.0.5", "ports": [{"port": 80, "nodePort": 30005}]}),
        );
        let mut new = svc(
            "a",
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}),
        );
        keep_service_allocations(services, &old, &mut new, &ServiceAllocations::of(&[])).unwrap();
        assert_eq!(new["spec"]["clusterIP"], "10.43.0.5");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30005);
        assert!(new["spec"]["ports"][1]["nodePort"].as_u64().is_some());
        assert!(validate_update(services, &old, &new).is_empty());
        new["spec"]["clusterIP"] = json!("10.43.0.6");
        assert_eq!(
            validate_update(services, &old, &new)[0].field,
            "spec.clusterIPs[0]"
        );
    }

    #[test]
    fn updates_check_and_allocate_against_other_services() {
        let services = Resource::find("", "v1", "services").unwrap();
        let meta = |name: &str| json!({"name": name, "namespace": "upd"});
        // Another Service holds 31501 and 10.43.77.1.
        let other = json!({"metadata": meta("other"),
            "spec": {"type": "NodePort", "clusterIP": "10.43.77.1", "ports": [{"port": 80, "nodePort": 31501}]}});
        let used = ServiceAllocations::of(&[other]);
        let old = json!({"metadata": meta("mine"),
            "spec": {"type": "NodePort", "clusterIP": "10.43.77.2", "ports": [{"port": 80, "nodePort": 31502}]}});
        // Asking for the other's node port is refused; keeping one's own is not.
        let mut new = old.clone();
        new["spec"]["ports"] =
            json!([{"port": 80, "nodePort": 31502}, {"name": "b", "port": 81, "nodePort": 31501}]);
        let causes = keep_service_allocations(services, &old, &mut new, &used).unwrap_err();
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["spec.ports[1].nodePort"]);
        // Allocated node ports avoid the other's.
        let mut new = old.clone();
        new["spec"]["ports"] = json!([{"port": 80}, {"name": "b", "port": 81}]);
        keep_service_allocations(services, &old, &mut new, &used).unwrap();
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 31502);
        let np = new["spec"]["ports"][1]["nodePort"].as_u64().unwrap();
        assert!(np != 31501 && np != 31502);
        // Leaving ExternalName allocates a cluster IP; asking for a taken one is refused.
        let ext = json!({"metadata": meta("ext"),
            "spec": {"type": "ExternalName", "externalName": "example.com"}});
        let mut new = json!({"metadata": meta("ext"),
            "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        keep_service_allocations(services, &ext, &mut new, &used).unwrap();
        let ip: std::net::Ipv4Addr = new["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(in_service_cidr(ip) && ip != KUBERNETES_SERVICE_IP);
        assert_eq!(new["spec"]["clusterIPs"], json!([ip.to_string()]));
        let mut new = json!({"metadata": meta("ext"),
            "spec": {"type": "ClusterIP", "clusterIP": "10.43.77.1", "ports": [{"port": 80}]}});
        let causes = keep_service_allocations(services, &ext, &mut new, &used).unwrap_err();
        assert_eq!(causes[0].field, "spec.clusterIPs");
    }

    #[test]
    fn values_just_handed_out_cannot_be_asked_for_by_others() {
        let meta = |name: &str| json!({"name": name, "namespace": "inflight"});
        let none = ServiceAllocations::of(&[]);
        let mut first = json!({"metadata": meta("first"),
            "spec": {"type": "NodePort", "clusterIP": "10.43.78.1", "ports": [{"port": 80, "nodePort": 31601}]}});
        allocate_service(&mut first, &none).unwrap();
        // Not stored yet, but just given to `first`.
        let used = ServiceAllocations::of(&[]);
        let mut second = json!({"metadata": meta("second"),
            "spec": {"type": "NodePort", "clusterIP": "10.43.78.1", "ports": [{"port": 80, "nodePort": 31601}]}});
        let causes = allocate_service(&mut second, &used).unwrap_err();
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["spec.clusterIPs", "spec.ports[0].nodePort"]);
        // The same Service asking again (a retried or recreated create) is not refused.
        let mut again = json!({"metadata": meta("first"),
            "spec": {"type": "NodePort", "clusterIP": "10.43.78.1", "ports": [{"port": 80, "nodePort": 31601}]}});
        allocate_service(&mut again, &used).unwrap();
    }
}
