//! Objects as their stored bytes: splicing `metadata.resourceVersion` into stored JSON and
//! assembling list bodies from those bytes, so that a list of thousands of objects is never
//! turned into JSON trees (the server's memory budget is 80 MiB with 5000 pods).

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;

/// Why a stored object could not be read as bytes.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("stored object is not a json object: {0}")]
    NotAnObject(serde_json::Error),
    #[error("stored object's metadata is not a json object: {0}")]
    BadMetadata(serde_json::Error),
}

/// The stored object with `metadata.resourceVersion` set to `revision`, keys in the order
/// serde_json writes them (sorted), without building a tree: only the top level and
/// `metadata` are split into borrowed raw values.
pub fn with_resource_version(stored: &[u8], revision: i64) -> Result<Vec<u8>, RawError> {
    let mut top: BTreeMap<String, &RawValue> =
        serde_json::from_slice(stored).map_err(RawError::NotAnObject)?;
    let rv = RawValue::from_string(format!("\"{revision}\"")).expect("a quoted number is json");
    let mut meta: BTreeMap<String, &RawValue> = match top.get("metadata") {
        Some(m) => serde_json::from_str(m.get()).map_err(RawError::BadMetadata)?,
        None => BTreeMap::new(),
    };
    meta.insert("resourceVersion".into(), &rv);
    let meta_raw = serde_json::value::to_raw_value(&meta).expect("raw values serialize");
    top.insert("metadata".into(), &meta_raw);
    let mut out = Vec::with_capacity(stored.len() + 32);
    serde_json::to_writer(&mut out, &top).expect("writing to a vec cannot fail");
    Ok(out)
}

/// Whether `needle` occurs in the stored bytes `haystack` (an empty needle always does): a
/// cheap test before parsing, for keys and values whose JSON form is known exactly.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A list body (`{"apiVersion":..,"items":[..],"kind":..,"metadata":..}`) from items that are
/// already JSON objects.
pub fn list_body(
    api_version: &str,
    kind: &str,
    list_meta: &serde_json::Value,
    items: &[Vec<u8>],
) -> Bytes {
    let size: usize = items.iter().map(|i| i.len() + 1).sum::<usize>() + 256;
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(b"{\"apiVersion\":");
    put_json(&mut out, api_version);
    out.put_slice(b",\"items\":[");
    put_joined(&mut out, items);
    out.put_slice(b"],\"kind\":");
    put_json(&mut out, kind);
    out.put_slice(b",\"metadata\":");
    put_json(&mut out, list_meta);
    out.put_u8(b'}');
    out.freeze()
}

/// A Table body (`{"apiVersion":"meta.k8s.io/v1","columnDefinitions":..,"kind":"Table",
/// "metadata":..,"rows":[..]}`) from rows that are already JSON.
pub fn table_body(
    columns: &serde_json::Value,
    list_meta: &serde_json::Value,
    rows: &[Vec<u8>],
) -> Bytes {
    let size: usize = rows.iter().map(|r| r.len() + 1).sum::<usize>() + 4096;
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(b"{\"apiVersion\":\"meta.k8s.io/v1\",\"columnDefinitions\":");
    put_json(&mut out, columns);
    out.put_slice(b",\"kind\":\"Table\",\"metadata\":");
    put_json(&mut out, list_meta);
    out.put_slice(b",\"rows\":[");
    put_joined(&mut out, rows);
    out.put_slice(b"]}");
    out.freeze()
}

fn put_json<T: serde::Serialize + ?Sized>(out: &mut BytesMut, v: &T) {
    serde_json::to_writer(out.writer(), v).expect("writing to memory cannot fail");
}

fn put_joined(out: &mut BytesMut, items: &[Vec<u8>]) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn splices_resource_version_into_metadata() {
        let stored = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"containers": []}});
        let out = with_resource_version(stored.to_string().as_bytes(), 42).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let mut want = stored.clone();
        want["metadata"]["resourceVersion"] = json!("42");
        assert_eq!(v, want);
        // Same bytes as serde_json writes for the tree.
        assert_eq!(String::from_utf8(out).unwrap(), want.to_string());
    }

    #[test]
    fn replaces_a_stale_resource_version_and_adds_missing_metadata() {
        let out = with_resource_version(br#"{"kind":"X","metadata":{"resourceVersion":"1"}}"#, 7)
            .unwrap();
        assert_eq!(out, br#"{"kind":"X","metadata":{"resourceVersion":"7"}}"#);
        let out = with_resource_version(br#"{"kind":"X"}"#, 3).unwrap();
        assert_eq!(out, br#"{"kind":"X","metadata":{"resourceVersion":"3"}}"#);
    }

    #[test]
    fn escaped_keys_and_strings_survive() {
        let stored =
            json!({"data": {"a\"b": "c\\\"metadata\":{"}, "metadata": {"name": "n\u{e9}"}});
        let out = with_resource_version(stored.to_string().as_bytes(), 5).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"], stored["data"]);
        assert_eq!(v["metadata"]["name"], "n\u{e9}");
        assert_eq!(v["metadata"]["resourceVersion"], "5");
    }

    #[test]
    fn rejects_what_is_not_an_object() {
        assert!(matches!(
            with_resource_version(b"[1,2]", 1),
            Err(RawError::NotAnObject(_))
        ));
        assert!(matches!(
            with_resource_version(br#"{"metadata":3}"#, 1),
            Err(RawError::BadMetadata(_))
        ));
    }

    #[test]
    fn list_body_is_the_list_json() {
        let items = vec![br#"{"a":1}"#.to_vec(), br#"{"b":2}"#.to_vec()];
        let body = list_body("v1", "PodList", &json!({"resourceVersion": "9"}), &items);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": [{"a": 1}, {"b": 2}]})
        );
        let table = table_body(
            &json!([{"name": "Name"}]),
            &json!({"resourceVersion": "9"}),
            &items,
        );
        let v: Value = serde_json::from_slice(&table).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "Table", "columnDefinitions": [{"name": "Name"}], "metadata": {"resourceVersion": "9"}, "rows": [{"a": 1}, {"b": 2}]})
        );
        let empty = list_body("v1", "PodList", &json!({}), &[]);
        let v: Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(v["items"], json!([]));
    }
}
