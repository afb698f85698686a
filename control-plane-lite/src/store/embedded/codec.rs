//! Byte layouts of the embedded store's records (all integers little endian).
//!
//! - kv value: `create_revision:i64 mod_revision:i64 value...`
//! - history value: `kind:u8 unix_millis:u64 create_revision:i64 key_len:u32 key value_len:u32
//!   value has_prev:u8 [prev_create:i64 prev_mod:i64 prev_len:u32 prev]`; the history key is the
//!   event's revision.

use bytes::Bytes;

use crate::store::{KeyValue, WatchEvent};

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;

/// Encodes a kv record.
pub(super) fn encode_kv(create_revision: i64, mod_revision: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&mod_revision.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Decodes a kv record of `key`.
pub(super) fn decode_kv(key: &str, raw: &[u8]) -> Result<KeyValue, String> {
    let mut r = Reader { buf: raw, key };
    let create_revision = r.i64()?;
    let mod_revision = r.i64()?;
    Ok(KeyValue {
        key: key.to_string(),
        value: Bytes::copy_from_slice(r.buf),
        create_revision,
        mod_revision,
    })
}

/// Only the revisions of a kv record (cheap: no value copy).
pub(super) fn kv_revisions(key: &str, raw: &[u8]) -> Result<(i64, i64), String> {
    let mut r = Reader { buf: raw, key };
    Ok((r.i64()?, r.i64()?))
}

/// One event as written to the history table.
pub(super) struct HistoryRecord<'a> {
    pub delete: bool,
    pub unix_millis: u64,
    pub key: &'a str,
    /// The new value (empty for a delete).
    pub value: &'a [u8],
    /// The key's create revision after the event (0 for a delete).
    pub create_revision: i64,
    pub prev: Option<&'a KeyValue>,
}

pub(super) fn encode_history(rec: &HistoryRecord<'_>) -> Vec<u8> {
    let prev_len = rec.prev.map_or(0, |p| p.value.len() + 20);
    let mut out = Vec::with_capacity(30 + rec.key.len() + rec.value.len() + prev_len);
    out.push(if rec.delete { KIND_DELETE } else { KIND_PUT });
    out.extend_from_slice(&rec.unix_millis.to_le_bytes());
    out.extend_from_slice(&rec.create_revision.to_le_bytes());
    put_bytes(&mut out, rec.key.as_bytes());
    put_bytes(&mut out, rec.value);
    match rec.prev {
        None => out.push(0),
        Some(prev) => {
            out.push(1);
            out.extend_from_slice(&prev.create_revision.to_le_bytes());
            out.extend_from_slice(&prev.mod_revision.to_le_bytes());
            put_bytes(&mut out, &prev.value);
        }
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are far below 4 GiB: redb itself refuses values over 3 GiB.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The header of a history record: when it was written and its key, without copying values.
pub(super) fn history_header(revision: u64, raw: &[u8]) -> Result<(u64, &str), String> {
    let mut r = Reader {
        buf: raw,
        key: "history",
    };
    r.u8()?;
    let millis = r.u64()?;
    r.i64()?;
    let key = r.str().map_err(|e| format!("revision {revision}: {e}"))?;
    Ok((millis, key))
}

/// Decodes a history record into the event a watcher receives.
pub(super) fn decode_history(revision: u64, raw: &[u8]) -> Result<WatchEvent, String> {
    let mut r = Reader {
        buf: raw,
        key: "history",
    };
    let at = |e: String| format!("history revision {revision}: {e}");
    let kind = r.u8().map_err(at)?;
    r.u64().map_err(at)?;
    let create_revision = r.i64().map_err(at)?;
    let key = r.str().map_err(at)?.to_string();
    let value = Bytes::copy_from_slice(r.bytes().map_err(at)?);
    let prev = match r.u8().map_err(at)? {
        0 => None,
        _ => {
            let create_revision = r.i64().map_err(at)?;
            let mod_revision = r.i64().map_err(at)?;
            let value = Bytes::copy_from_slice(r.bytes().map_err(at)?);
            Some(KeyValue {
                key: key.clone(),
                value,
                create_revision,
                mod_revision,
            })
        }
    };
    let kv = KeyValue {
        key,
        value,
        create_revision,
        mod_revision: revision as i64,
    };
    match kind {
        KIND_PUT => Ok(WatchEvent::Put { kv, prev }),
        KIND_DELETE => Ok(WatchEvent::Delete { kv, prev }),
        other => Err(at(format!("unknown event kind {other}"))),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    key: &'a str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!("record of {} is truncated", self.key));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        let n = u32::from_le_bytes(b) as usize;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?).map_err(|e| format!("key is not utf-8: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_round_trips() {
        let raw = encode_kv(3, 7, b"{}");
        let kv = decode_kv("/a", &raw).unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision), (3, 7));
        assert_eq!(&kv.value[..], b"{}");
        assert_eq!(kv_revisions("/a", &raw).unwrap(), (3, 7));
        assert!(decode_kv("/a", &raw[..5]).is_err());
    }

    #[test]
    fn history_round_trips() {
        let prev = KeyValue {
            key: "/a".into(),
            value: Bytes::from_static(b"old"),
            create_revision: 2,
            mod_revision: 4,
        };
        let raw = encode_history(&HistoryRecord {
            delete: true,
            unix_millis: 99,
            key: "/a",
            value: b"",
            create_revision: 0,
            prev: Some(&prev),
        });
        assert_eq!(history_header(9, &raw).unwrap(), (99, "/a"));
        match decode_history(9, &raw).unwrap() {
            WatchEvent::Delete { kv, prev: Some(p) } => {
                assert_eq!(kv.mod_revision, 9);
                assert_eq!(p, prev);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(decode_history(9, &raw[..raw.len() - 1]).is_err());
    }
}
