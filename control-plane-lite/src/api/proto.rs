//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) for the kinds
//! client-go's typed clients create (kubectl's `create namespace|configmap|secret` send
//! protobuf since v1.32), decoded into the same JSON a JSON client would send. Responses are
//! always JSON: clients accept it.
//!
//! The wire format is the `k8s\0` magic followed by a `runtime.Unknown` envelope whose `raw`
//! field holds the object; field numbers are those of k8s.io/api's `generated.proto`.

use base64::Engine;
use serde_json::{Map, Value, json};
use thiserror::Error;

use super::resources::Kind;

/// Why a protobuf body could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("protobuf body lacks the k8s magic prefix")]
    Magic,
    #[error("protobuf body is truncated or malformed")]
    Malformed,
    #[error("protobuf bodies are not accepted for {0}; send application/json")]
    Unsupported(&'static str),
}

/// How one field is mapped to JSON.
#[derive(Clone, Copy)]
enum F {
    Str(&'static str),
    Int(&'static str),
    Bool(&'static str),
    Bytes(&'static str),
    RepStr(&'static str),
    MapStr(&'static str),
    MapBytes(&'static str),
    Time(&'static str),
    /// `intstr.IntOrString`: type = 1 (0 int, 1 string), intVal = 2, strVal = 3.
    IntOrStr(&'static str),
    Msg(&'static str, &'static [(u32, F)]),
    RepMsg(&'static str, &'static [(u32, F)]),
}

const OWNER_REF: &[(u32, F)] = &[
    (1, F::Str("kind")),
    (3, F::Str("name")),
    (4, F::Str("uid")),
    (5, F::Str("apiVersion")),
    (6, F::Bool("controller")),
    (7, F::Bool("blockOwnerDeletion")),
];

const OBJECT_META: &[(u32, F)] = &[
    (1, F::Str("name")),
    (2, F::Str("generateName")),
    (3, F::Str("namespace")),
    (5, F::Str("uid")),
    (6, F::Str("resourceVersion")),
    (7, F::Int("generation")),
    (8, F::Time("creationTimestamp")),
    (9, F::Time("deletionTimestamp")),
    (10, F::Int("deletionGracePeriodSeconds")),
    (11, F::MapStr("labels")),
    (12, F::MapStr("annotations")),
    (13, F::RepMsg("ownerReferences", OWNER_REF)),
    (14, F::RepStr("finalizers")),
];

const NAMESPACE: &[(u32, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (2, F::Msg("spec", &[(1, F::RepStr("finalizers"))])),
    (3, F::Msg("status", &[(1, F::Str("phase"))])),
];

const CONFIG_MAP: &[(u32, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (2, F::MapStr("data")),
    (3, F::MapBytes("binaryData")),
    (4, F::Bool("immutable")),
];

const SECRET: &[(u32, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (2, F::MapBytes("data")),
    (3, F::Str("type")),
    (4, F::MapStr("stringData")),
    (5, F::Bool("immutable")),
];

const OBJECT_REF: &[(u32, F)] = &[
    (1, F::Str("kind")),
    (2, F::Str("namespace")),
    (3, F::Str("name")),
    (4, F::Str("uid")),
    (5, F::Str("apiVersion")),
    (6, F::Str("resourceVersion")),
    (7, F::Str("fieldPath")),
];

const SERVICE_ACCOUNT: &[(u32, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (2, F::RepMsg("secrets", OBJECT_REF)),
    (3, F::RepMsg("imagePullSecrets", &[(1, F::Str("name"))])),
    (4, F::Bool("automountServiceAccountToken")),
];

const SERVICE_PORT: &[(u32, F)] = &[
    (1, F::Str("name")),
    (2, F::Str("protocol")),
    (3, F::Int("port")),
    (4, F::IntOrStr("targetPort")),
    (5, F::Int("nodePort")),
    (6, F::Str("appProtocol")),
];

const SERVICE: &[(u32, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (
        2,
        F::Msg(
            "spec",
            &[
                (1, F::RepMsg("ports", SERVICE_PORT)),
                (2, F::MapStr("selector")),
                (3, F::Str("clusterIP")),
                (4, F::Str("type")),
                (5, F::RepStr("externalIPs")),
                (7, F::Str("sessionAffinity")),
                (8, F::Str("loadBalancerIP")),
                (9, F::RepStr("loadBalancerSourceRanges")),
                (10, F::Str("externalName")),
                (11, F::Str("externalTrafficPolicy")),
                (12, F::Int("healthCheckNodePort")),
                (13, F::Bool("publishNotReadyAddresses")),
                (
                    14,
                    F::Msg(
                        "sessionAffinityConfig",
                        &[(1, F::Msg("clientIP", &[(1, F::Int("timeoutSeconds"))]))],
                    ),
                ),
                (17, F::Str("ipFamilyPolicy")),
                (18, F::RepStr("clusterIPs")),
                (19, F::RepStr("ipFamilies")),
                (20, F::Bool("allocateLoadBalancerNodePorts")),
                (21, F::Str("loadBalancerClass")),
                (22, F::Str("internalTrafficPolicy")),
                (23, F::Str("trafficDistribution")),
            ],
        ),
    ),
];

const UNKNOWN: &[(u32, F)] = &[
    (
        1,
        F::Msg(
            "typeMeta",
            &[(1, F::Str("apiVersion")), (2, F::Str("kind"))],
        ),
    ),
    (2, F::Bytes("raw")),
];

/// One protobuf field: number and (varint or length-delimited) value.
enum Wire<'a> {
    Varint(u64),
    Len(&'a [u8]),
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, ProtoError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or(ProtoError::Malformed)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ProtoError::Malformed)
}

fn fields(b: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, ProtoError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let tag = varint(b, &mut pos)?;
        let num = (tag >> 3) as u32;
        match tag & 7 {
            0 => out.push((num, Wire::Varint(varint(b, &mut pos)?))),
            2 => {
                let len = varint(b, &mut pos)? as usize;
                let end = pos.checked_add(len).ok_or(ProtoError::Malformed)?;
                let s = b.get(pos..end).ok_or(ProtoError::Malformed)?;
                pos = end;
                out.push((num, Wire::Len(s)));
            }
            1 => pos += 8,
            5 => pos += 4,
            _ => return Err(ProtoError::Malformed),
        }
    }
    if pos > b.len() {
        return Err(ProtoError::Malformed);
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Malformed)
}

/// A map entry: key = 1, value = 2.
fn entry(b: &[u8]) -> Result<(String, &[u8]), ProtoError> {
    let mut key = String::new();
    let mut val: &[u8] = &[];
    for (n, w) in fields(b)? {
        match (n, w) {
            (1, Wire::Len(k)) => key = text(k)?,
            (2, Wire::Len(v)) => val = v,
            _ => {}
        }
    }
    Ok((key, val))
}

fn message(b: &[u8], schema: &[(u32, F)]) -> Result<Map<String, Value>, ProtoError> {
    let mut out = Map::new();
    for (num, w) in fields(b)? {
        let Some((_, f)) = schema.iter().find(|(n, _)| *n == num) else {
            continue;
        };
        match (*f, w) {
            // Go writes empty strings, zero numbers and zero times; JSON omits them.
            (F::Str(_), Wire::Len([])) | (F::Int(_), Wire::Varint(0)) => {}
            (F::Str(k), Wire::Len(s)) => {
                out.insert(k.into(), json!(text(s)?));
            }
            (F::Int(k), Wire::Varint(v)) => {
                out.insert(k.into(), json!(v as i64));
            }
            (F::Bool(k), Wire::Varint(v)) => {
                out.insert(k.into(), json!(v != 0));
            }
            (F::Bytes(k), Wire::Len(s)) => {
                out.insert(
                    k.into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
            (F::RepStr(k), Wire::Len(s)) => {
                let list = out.entry(k).or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(json!(text(s)?));
                }
            }
            (F::MapStr(k), Wire::Len(s)) => {
                let (key, val) = entry(s)?;
                out.entry(k).or_insert_with(|| json!({}))[key] = json!(text(val)?);
            }
            (F::MapBytes(k), Wire::Len(s)) => {
                let (key, val) = entry(s)?;
                out.entry(k).or_insert_with(|| json!({}))[key] =
                    json!(base64::engine::general_purpose::STANDARD.encode(val));
            }
            (F::Time(k), Wire::Len(s)) => {
                let t = message(s, &[(1, F::Int("s"))])?;
                let secs = t.get("s").and_then(Value::as_i64).unwrap_or(0);
                if secs > 0
                    && let Ok(ts) = k8s_openapi::jiff::Timestamp::from_second(secs)
                    && let Ok(s) = k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", ts)
                {
                    out.insert(k.into(), json!(s));
                }
            }
            (F::IntOrStr(k), Wire::Len(s)) => {
                let v = message(
                    s,
                    &[(1, F::Int("type")), (2, F::Int("int")), (3, F::Str("str"))],
                )?;
                let value = match (v.get("type"), v.get("int"), v.get("str")) {
                    (Some(t), _, Some(s)) if t == 1 => s.clone(),
                    (None, Some(i), _) => i.clone(),
                    _ => continue,
                };
                out.insert(k.into(), value);
            }
            (F::Msg(k, sub), Wire::Len(s)) => {
                out.insert(k.into(), Value::Object(message(s, sub)?));
            }
            (F::RepMsg(k, sub), Wire::Len(s)) => {
                let item = Value::Object(message(s, sub)?);
                if let Some(a) = out.entry(k).or_insert_with(|| json!([])).as_array_mut() {
                    a.push(item);
                }
            }
            _ => return Err(ProtoError::Malformed),
        }
    }
    Ok(out)
}

/// Decodes a protobuf body of `kind` into its JSON form.
pub fn decode(kind: Kind, body: &[u8]) -> Result<Value, ProtoError> {
    let schema = match kind {
        Kind::Namespace => NAMESPACE,
        Kind::ConfigMap => CONFIG_MAP,
        Kind::Secret => SECRET,
        Kind::ServiceAccount => SERVICE_ACCOUNT,
        Kind::Pod => return Err(ProtoError::Unsupported("pods")),
        Kind::Lease => return Err(ProtoError::Unsupported("leases")),
        Kind::Node => return Err(ProtoError::Unsupported("nodes")),
        Kind::Event | Kind::EventV1 => return Err(ProtoError::Unsupported("events")),
        Kind::Service => SERVICE,
    };
    let rest = body.strip_prefix(b"k8s\0").ok_or(ProtoError::Magic)?;
    let envelope = message(rest, UNKNOWN)?;
    let raw = envelope
        .get("raw")
        .and_then(Value::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default();
    let mut obj = message(&raw, schema)?;
    if let Some(tm) = envelope.get("typeMeta") {
        for k in ["apiVersion", "kind"] {
            if let Some(v) = tm.get(k) {
                obj.insert(k.into(), v.clone());
            }
        }
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((num << 3) | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_configmap() {
        let meta = [
            field(1, b"c"),
            field(2, b""),
            field(3, b"x"),
            field(11, &[field(1, b"app"), field(2, b"web")].concat()),
        ]
        .concat();
        let cm = [
            field(1, &meta),
            field(2, &[field(1, b"a"), field(2, b"b")].concat()),
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let mut body = b"k8s\0".to_vec();
        body.extend([field(1, &type_meta), field(2, &cm)].concat());
        let v = decode(Kind::ConfigMap, &body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "x", "labels": {"app": "web"}},
                "data": {"a": "b"}})
        );
        assert_eq!(decode(Kind::ConfigMap, b"{}"), Err(ProtoError::Magic));
        assert_eq!(
            decode(Kind::Pod, &body),
            Err(ProtoError::Unsupported("pods"))
        );
        assert!(decode(Kind::ConfigMap, b"k8s\0\x0a\x10ab").is_err());
    }

    #[test]
    fn decodes_a_service_with_int_or_string_ports() {
        let int_port = [vec![0x08, 0x00, 0x10, 0x90, 0x3f], field(3, b"")].concat();
        let str_port = [vec![0x08, 0x01, 0x10, 0x00], field(3, b"https")].concat();
        let port = |name: &[u8], num: u8, target: &[u8]| {
            [
                field(1, name),
                field(2, b"TCP"),
                vec![0x18, num],
                field(4, target),
            ]
            .concat()
        };
        let spec = [
            field(1, &port(b"a", 80, &int_port)),
            field(1, &port(b"b", 90, &str_port)),
            field(4, b"ClusterIP"),
        ]
        .concat();
        let svc = [field(1, &field(1, b"web")), field(2, &spec)].concat();
        let type_meta = [field(1, b"v1"), field(2, b"Service")].concat();
        let mut body = b"k8s\0".to_vec();
        body.extend([field(1, &type_meta), field(2, &svc)].concat());
        let v = decode(Kind::Service, &body).unwrap();
        assert_eq!(
            v["spec"],
            json!({"type": "ClusterIP", "ports": [
                {"name": "a", "protocol": "TCP", "port": 80, "targetPort": 8080},
                {"name": "b", "protocol": "TCP", "port": 90, "targetPort": "https"}]})
        );
    }
}
