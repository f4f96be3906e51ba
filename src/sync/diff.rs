//! The diff as a pure function: (stored row, incoming record) → decision.
//! No DB, no network; the store applies what this decides.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// What the store holds for a uid.
#[derive(Debug, Clone)]
pub struct Stored {
    pub rowid: i64,
    pub hash: Vec<u8>,
    pub status: Option<String>,
    pub deleted: bool,
}

/// The few fields the mirror reads from a record; everything else stays in `raw`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    pub uid: String,
    pub status: Option<String>,
    pub dataset_uid: Option<String>,
}

/// The head fields as their JSON text, borrowed from the record (no allocation
/// for the fields skipped or the ones read).
#[derive(Deserialize)]
struct HeadWire<'a> {
    #[serde(default, borrow)]
    uid: Option<&'a RawValue>,
    #[serde(default, borrow)]
    status: Option<&'a RawValue>,
    #[serde(default, borrow)]
    dataset_uid: Option<&'a RawValue>,
}

/// A head field as text: a string's value, another scalar's JSON, None for null/absent.
fn field_text(v: Option<&RawValue>) -> Option<String> {
    let json = v?.get();
    match json.as_bytes()[0] {
        b'"' => serde_json::from_str::<String>(json).ok(),
        b'n' => None,
        _ => Some(json.to_string()),
    }
}

impl Head {
    /// Reads the head of a record's JSON text, checking its shape.
    pub fn parse(raw: &str) -> Result<Head, Rejected> {
        if !raw.trim_start().starts_with('{') {
            return Err(Rejected::NotAnObject);
        }
        let w: HeadWire = serde_json::from_str(raw).map_err(|_| Rejected::NotAnObject)?;
        // a uid is a non-blank string or a number
        let uid = match w.uid.map(|v| v.get().as_bytes()[0]) {
            Some(b'"' | b'-' | b'0'..=b'9') => field_text(w.uid).filter(|u| !u.trim().is_empty()),
            _ => None,
        }
        .ok_or(Rejected::NoUid)?;
        Ok(Head {
            uid,
            status: field_text(w.status),
            dataset_uid: field_text(w.dataset_uid),
        })
    }
}

/// A record from a listing, with its scope taken from the listing (SPEC §3).
#[derive(Debug, Clone)]
pub struct Incoming {
    pub uid: String,
    pub status: Option<String>,
    pub owner: Option<String>,
    pub dataset_slug: Option<String>,
    /// The JSON object as received, stored in `raw`.
    pub raw: String,
    pub hash: [u8; 16],
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
    /// The content hash covers the record's text and its scope columns (a record
    /// moving to another scope is a change too), but not the query of a
    /// `download_url`: a presigned link re-signed on every call is not a change.
    pub fn new(
        head: Head,
        raw: String,
        owner: Option<&str>,
        dataset_slug: Option<&str>,
    ) -> Incoming {
        let mut h = Sha256::new();
        h.update(owner.unwrap_or("").as_bytes());
        h.update([0]);
        h.update(dataset_slug.unwrap_or("").as_bytes());
        h.update([0]);
        h.update(without_link_signature(&raw).as_bytes());
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&h.finalize()[..16]);
        Incoming {
            uid: head.uid,
            status: head.status,
            owner: owner.map(str::to_owned),
            dataset_slug: dataset_slug.map(str::to_owned),
            raw,
            hash,
        }
    }

    /// The record as JSON (for event payloads).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.raw).unwrap_or(Value::Null)
    }
}

/// The record's text with the query (the signature, the expiry) cut from its
/// `download_url`; the text itself when there is none.
fn without_link_signature(raw: &str) -> std::borrow::Cow<'_, str> {
    if !raw.contains("\"download_url\"") {
        return raw.into();
    }
    let Ok(mut v) = serde_json::from_str::<Value>(raw) else {
        return raw.into();
    };
    match v.get_mut("download_url") {
        Some(Value::String(url)) if url.contains('?') => {
            url.truncate(url.find('?').unwrap_or(url.len()));
            v.to_string().into()
        }
        _ => raw.into(),
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

    fn inc(raw: &str) -> Incoming {
        Incoming::new(
            Head::parse(raw).unwrap(),
            raw.to_string(),
            Some("o"),
            Some("d"),
        )
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
        let a = inc(r#"{"uid": "u", "status": "pending", "n": 1}"#);
        assert_eq!(decide(None, &a), Decision::Created);
        assert_eq!(decide(Some(&stored(&a, false)), &a), Decision::Unchanged);
        assert_eq!(decide(Some(&stored(&a, true)), &a), Decision::Created);
        let b = inc(r#"{"uid": "u", "status": "pending", "n": 2}"#);
        assert_eq!(decide(Some(&stored(&a, false)), &b), Decision::Updated);
        let c = inc(r#"{"uid": "u", "status": "completed", "n": 1}"#);
        assert_eq!(
            decide(Some(&stored(&a, false)), &c),
            Decision::StatusChanged {
                old: Some("pending".into()),
                new: Some("completed".into())
            }
        );
    }

    #[test]
    fn scope_is_part_of_the_content() {
        let raw = r#"{"uid":"u","a":1}"#;
        let moved = Incoming::new(
            Head::parse(raw).unwrap(),
            raw.into(),
            Some("o"),
            Some("other"),
        );
        assert_ne!(inc(raw).hash, moved.hash);
    }

    #[test]
    fn a_re_signed_download_link_is_not_a_change() {
        let a = inc(
            r#"{"uid":"e","status":"exported","download_url":"https://s/e.zip?sig=1&expires=9"}"#,
        );
        let b = inc(
            r#"{"uid":"e","status":"exported","download_url":"https://s/e.zip?sig=2&expires=10"}"#,
        );
        let moved =
            inc(r#"{"uid":"e","status":"exported","download_url":"https://s/other.zip?sig=2"}"#);
        assert_eq!(decide(Some(&stored(&a, false)), &b), Decision::Unchanged);
        assert_eq!(decide(Some(&stored(&a, false)), &moved), Decision::Updated);
    }

    #[test]
    fn head_reads_uid_status_and_checks_shape() {
        let h =
            Head::parse(r#"{"uid": 12, "status": "done", "dataset_uid": "d1", "x": {"y": [1]}}"#)
                .unwrap();
        assert_eq!(
            h,
            Head {
                uid: "12".into(),
                status: Some("done".into()),
                dataset_uid: Some("d1".into())
            }
        );
        assert_eq!(Head::parse(r#"{"key": "x"}"#).unwrap_err(), Rejected::NoUid);
        assert_eq!(Head::parse(r#"{"uid": ""}"#).unwrap_err(), Rejected::NoUid);
        assert_eq!(
            Head::parse(r#"{"uid": null}"#).unwrap_err(),
            Rejected::NoUid
        );
        assert_eq!(Head::parse("[1]").unwrap_err(), Rejected::NotAnObject);
        assert_eq!(Head::parse("\"uid\"").unwrap_err(), Rejected::NotAnObject);
    }
}
