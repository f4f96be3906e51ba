//! The diff as a pure function: (stored row, incoming record) → decision.
//! No DB, no network; the store applies what this decides.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// What the store holds for a uid.
#[derive(Debug, Clone)]
pub struct Stored {
    pub rowid: i64,
    pub hash: Vec<u8>,
    pub status: Option<String>,
    pub deleted: bool,
}

/// A record from a listing, with its scope taken from the listing (SPEC §3).
#[derive(Debug, Clone)]
pub struct Incoming {
    pub uid: String,
    pub status: Option<String>,
    pub owner: Option<String>,
    pub dataset_slug: Option<String>,
    /// Canonical JSON (keys sorted), as stored in `raw`.
    pub raw: String,
    pub hash: [u8; 16],
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Unchanged,
    /// New uid, or one that had been deleted and came back.
    Created,
    /// Content changed, status did not.
    Updated,
    StatusChanged {
        old: Option<String>,
        new: Option<String>,
    },
}

/// Why a record was skipped instead of mirrored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    NotAnObject,
    NoUid,
}

impl Incoming {
    /// Checks a record's shape and computes its content hash over the canonical JSON
    /// and the scope columns (a record moving to another scope is a change too).
    pub fn new(
        value: Value,
        owner: Option<&str>,
        dataset_slug: Option<&str>,
    ) -> Result<Incoming, Rejected> {
        let obj = value.as_object().ok_or(Rejected::NotAnObject)?;
        let uid = match obj.get("uid") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(Rejected::NoUid),
        };
        let status = match obj.get("status") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        // serde_json's map is ordered by key, so this text is canonical.
        let raw = value.to_string();
        let mut h = Sha256::new();
        h.update(owner.unwrap_or("").as_bytes());
        h.update([0]);
        h.update(dataset_slug.unwrap_or("").as_bytes());
        h.update([0]);
        h.update(raw.as_bytes());
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&h.finalize()[..16]);
        Ok(Incoming {
            uid,
            status,
            owner: owner.map(str::to_owned),
            dataset_slug: dataset_slug.map(str::to_owned),
            raw,
            hash,
            value,
        })
    }
}

pub fn decide(old: Option<&Stored>, new: &Incoming) -> Decision {
    match old {
        None => Decision::Created,
        Some(o) if o.deleted => Decision::Created,
        Some(o) if o.hash == new.hash => Decision::Unchanged,
        Some(o) if o.status != new.status => Decision::StatusChanged {
            old: o.status.clone(),
            new: new.status.clone(),
        },
        Some(_) => Decision::Updated,
    }
}

/// The event type suffix for a decision (`created`, `updated`, `status_changed`).
pub fn event_suffix(d: &Decision) -> Option<&'static str> {
    match d {
        Decision::Unchanged => None,
        Decision::Created => Some("created"),
        Decision::Updated => Some("updated"),
        Decision::StatusChanged { .. } => Some("status_changed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inc(v: Value) -> Incoming {
        Incoming::new(v, Some("o"), Some("d")).unwrap()
    }

    fn stored(i: &Incoming, deleted: bool) -> Stored {
        Stored {
            rowid: 1,
            hash: i.hash.to_vec(),
            status: i.status.clone(),
            deleted,
        }
    }

    #[test]
    fn decisions() {
        let a = inc(json!({"uid": "u", "status": "pending", "n": 1}));
        assert_eq!(decide(None, &a), Decision::Created);
        assert_eq!(decide(Some(&stored(&a, false)), &a), Decision::Unchanged);
        assert_eq!(decide(Some(&stored(&a, true)), &a), Decision::Created);
        let b = inc(json!({"uid": "u", "status": "pending", "n": 2}));
        assert_eq!(decide(Some(&stored(&a, false)), &b), Decision::Updated);
        let c = inc(json!({"uid": "u", "status": "completed", "n": 1}));
        assert_eq!(
            decide(Some(&stored(&a, false)), &c),
            Decision::StatusChanged {
                old: Some("pending".into()),
                new: Some("completed".into())
            }
        );
    }

    #[test]
    fn key_order_does_not_matter_but_scope_does() {
        let a: Value = serde_json::from_str(r#"{"uid":"u","a":1,"b":2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":2,"uid":"u","a":1}"#).unwrap();
        assert_eq!(inc(a.clone()).hash, inc(b).hash);
        let moved = Incoming::new(a.clone(), Some("o"), Some("other")).unwrap();
        assert_ne!(inc(a).hash, moved.hash);
    }

    #[test]
    fn shape_is_checked() {
        assert_eq!(
            Incoming::new(json!({"key": "x"}), None, None).unwrap_err(),
            Rejected::NoUid
        );
        assert_eq!(
            Incoming::new(json!({"uid": ""}), None, None).unwrap_err(),
            Rejected::NoUid
        );
        assert_eq!(
            Incoming::new(json!([1]), None, None).unwrap_err(),
            Rejected::NotAnObject
        );
    }
}
