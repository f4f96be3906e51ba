//! The diff as a pure function: (stored row, incoming record) → decision.
//! No DB, no network; the store applies what this decides.

use std::borrow::Cow;

use bytestring::ByteString;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{Field, Kind};

/// What the store holds for a uid.
#[derive(Debug, Clone)]
pub struct Stored {
    pub rowid: i64,
    pub hash: [u8; 16],
    /// May be left unread (None) when `hash` matches the incoming record's.
    pub status: Option<String>,
    /// The workflow step (entries), read like `status`.
    pub step: Option<String>,
    pub deleted: bool,
}

/// The few fields the mirror reads from a record, borrowed from its text where
/// they need no decoding; everything else stays in `raw`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head<'a> {
    pub uid: Cow<'a, str>,
    pub status: Option<Cow<'a, str>>,
    pub dataset_uid: Option<Cow<'a, str>>,
    /// JSON:API: `attributes.wf_step` and `attributes.updated_at`.
    pub step: Option<Cow<'a, str>>,
    pub updated_at: Option<Cow<'a, str>>,
    /// JSON:API: the values of the columns asked for, in their order.
    pub columns: Vec<Option<Cow<'a, str>>>,
}

/// A head field as text: a string's value, another scalar's JSON, None for null.
fn field_text(json: &str) -> Option<Cow<'_, str>> {
    match json.as_bytes().first()? {
        b'"' => {
            let inner = &json[1..json.len() - 1];
            match inner.contains('\\') {
                false => Some(inner.into()),
                true => serde_json::from_str::<String>(json).ok().map(Cow::Owned),
            }
        }
        b'n' => None,
        _ => Some(json.into()),
    }
}

impl<'a> Head<'a> {
    /// Reads the head of a record's JSON text, `dataset_uid` only when asked
    /// (records of a cross-dataset listing), and the typed `fields` of its
    /// resource, and stops once it has what it reads. Of a field given twice
    /// the first counts, as in SQLite's JSON functions, so the columns agree
    /// with `raw->>'status'`. The text must be JSON a parser has checked (a
    /// page's records are: [`crate::api::page`] parses each page whole first);
    /// this only finds the top-level members.
    pub fn parse(
        raw: &'a str,
        with_dataset_uid: bool,
        fields: &[Field],
    ) -> Result<Head<'a>, Rejected> {
        if too_deep(raw) {
            return Err(Rejected::TooDeep);
        }
        let (mut uid, mut status, mut dataset_uid) = (None, None, None);
        let mut values: Vec<Option<&'a str>> = vec![None; fields.len()];
        let mut wanted = fields.len();
        members(raw, |key, value| {
            if let Some(k) = fields.iter().position(|f| f.name == key)
                && values[k].is_none()
            {
                values[k] = Some(value);
                wanted -= 1;
            }
            let field = match key {
                "uid" => &mut uid,
                "status" => &mut status,
                "dataset_uid" if with_dataset_uid => &mut dataset_uid,
                _ => return true,
            };
            field.get_or_insert(value);
            uid.is_none()
                || status.is_none()
                || (with_dataset_uid && dataset_uid.is_none())
                || wanted > 0
        })
        .ok_or(Rejected::NotAnObject)?;
        let uid = read_uid(uid)?;
        // a status is a string or null
        let status = typed(Kind::Text, status).ok_or(Rejected::BadStatus)?;
        let mut columns = Vec::new();
        for (f, v) in fields.iter().zip(values) {
            let value = typed(f.kind, v).ok_or(Rejected::WrongType(f.name))?;
            if f.column {
                columns.push(value);
            }
        }
        Ok(Head {
            uid,
            status,
            dataset_uid: dataset_uid.and_then(field_text),
            columns,
            ..Head::default()
        })
    }

    /// The head of a JSON:API resource object (SPEC §8): `id` is the uid, and
    /// `status`, `wf_step` and `updated_at` come from its `attributes`, as do
    /// `columns` (an `…_id` missing there is its relationship's `data.id`). The
    /// same rules of shape as [`Head::parse`]: an id is a non-blank string;
    /// status, step, time and every column are strings or null, but for an
    /// attribute naming another record (`…_id`), which may be an integer.
    pub fn parse_jsonapi(raw: &'a str, columns: &[&'static str]) -> Result<Head<'a>, Rejected> {
        if too_deep(raw) {
            return Err(Rejected::TooDeep);
        }
        let (mut id, mut attributes, mut relationships) = (None, None, None);
        let related = columns.iter().any(|c| c.ends_with("_id"));
        members(raw, |key, value| {
            match key {
                "id" => id = id.or(Some(value)),
                "attributes" => attributes = attributes.or(Some(value)),
                "relationships" => relationships = relationships.or(Some(value)),
                _ => {}
            }
            id.is_none() || attributes.is_none() || (related && relationships.is_none())
        })
        .ok_or(Rejected::NotAnObject)?;
        let uid = read_uid(id)?;
        let (mut status, mut step, mut updated_at) = (None, None, None);
        let mut values: Vec<Option<&'a str>> = vec![None; columns.len()];
        if let Some(attrs) = attributes.filter(|a| *a != "null") {
            members(attrs, |key, value| {
                if let Some(k) = columns.iter().position(|c| *c == key) {
                    values[k].get_or_insert(value);
                }
                let field = match key {
                    "status" => &mut status,
                    "wf_step" => &mut step,
                    "updated_at" => &mut updated_at,
                    _ => return true,
                };
                field.get_or_insert(value);
                true
            })
            .ok_or(Rejected::NotAnObject)?;
        }
        // an attribute `…_id` may be an integer; a relationship's `data.id` is
        // a string (JSON:API)
        let mut kinds: Vec<Kind> = columns
            .iter()
            .map(|c| match c.ends_with("_id") {
                true => Kind::Id,
                false => Kind::Text,
            })
            .collect();
        if let Some(rels) = relationships.filter(|_| related) {
            for (k, column) in columns.iter().enumerate() {
                if let (None, Some(name)) = (values[k], column.strip_suffix("_id")) {
                    values[k] = member(rels, name)
                        .and_then(|r| member(r, "data"))
                        .and_then(|d| member(d, "id"));
                    kinds[k] = Kind::Text;
                }
            }
        }
        let text = |name, v| typed(Kind::Text, v).ok_or(Rejected::WrongType(name));
        Ok(Head {
            uid,
            status: typed(Kind::Text, status).ok_or(Rejected::BadStatus)?,
            step: text("wf_step", step)?,
            updated_at: text("updated_at", updated_at)?,
            dataset_uid: None,
            columns: columns
                .iter()
                .zip(values)
                .zip(kinds)
                .map(|((name, v), kind)| typed(kind, v).ok_or(Rejected::WrongType(name)))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A uid (a JSON:API id) from its JSON text: a non-blank string.
fn read_uid(v: Option<&str>) -> Result<Cow<'_, str>, Rejected> {
    match v.map(|v| (v, v.as_bytes().first())) {
        None | Some((_, Some(b'n'))) => Err(Rejected::NoUid),
        Some((v, Some(b'"'))) => field_text(v)
            .filter(|u| !u.trim().is_empty())
            .ok_or(Rejected::BadUid),
        Some(_) => Err(Rejected::BadUid),
    }
}

/// A field's value as its column keeps it, from its JSON text: None inside for
/// null or absent, the outer None when it has another type than `kind`.
fn typed(kind: Kind, json: Option<&str>) -> Option<Option<Cow<'_, str>>> {
    match (kind, json) {
        (_, None | Some("null")) => Some(None),
        (Kind::Text | Kind::Id, Some(v)) if v.starts_with('"') => Some(field_text(v)),
        (Kind::Id, Some(v)) if is_integer(v) => Some(Some(Cow::Borrowed(v))),
        (Kind::Bool, Some("true")) => Some(Some(Cow::Owned("1".into()))),
        (Kind::Bool, Some("false")) => Some(Some(Cow::Owned("0".into()))),
        _ => None,
    }
}

/// Whether the JSON text `v` is an integer (digits, perhaps after a minus).
fn is_integer(v: &str) -> bool {
    let digits = v.strip_prefix('-').unwrap_or(v);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Nesting the SQLite JSON functions readers use accept at most (SPEC §6): a
/// record nested deeper is skipped, or every `raw->>'…'` on its table would fail.
pub const MAX_DEPTH: usize = 1000;

/// Whether checked JSON `json` nests deeper than [`MAX_DEPTH`]. Counting the
/// brackets first (fast, SIMD) spares the exact scan for nearly every record.
fn too_deep(json: &str) -> bool {
    let b = json.as_bytes();
    if memchr::memchr2_iter(b'[', b'{', b).count() <= MAX_DEPTH {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &c in b {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The value of member `key` of the JSON object `json`, if it is one and has it.
fn member<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let mut found = None;
    members(json, |k, v| {
        if k == key {
            found = Some(v);
        }
        found.is_none()
    })?;
    found
}

/// Calls `f(key, value)` for each top-level member of the JSON object `json`, in
/// order, until `f` returns false; a key with escapes is decoded first. `json`
/// must already be checked JSON: values are skipped by matching quotes and
/// brackets. None when `json` is not an object.
fn members<'a>(json: &'a str, mut f: impl FnMut(&str, &'a str) -> bool) -> Option<()> {
    let b = json.as_bytes();
    let ws = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut i = ws(0);
    (b.get(i) == Some(&b'{')).then_some(())?;
    i = ws(i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(());
    }
    loop {
        (b.get(i) == Some(&b'"')).then_some(())?;
        let (key_end, escaped) = string_end(b, i)?;
        let key = &json[i..key_end];
        i = ws(key_end);
        (b.get(i) == Some(&b':')).then_some(())?;
        let start = ws(i + 1);
        let end = value_end(b, start)?;
        let key = match escaped {
            false => Cow::Borrowed(&key[1..key.len() - 1]),
            true => field_text(key)?,
        };
        let more = f(&key, &json[start..end]);
        i = ws(end);
        match b.get(i) {
            Some(b',') if more => i = ws(i + 1),
            Some(b',' | b'}') => return Some(()),
            _ => return None,
        }
    }
}

/// Where the string that starts at `b[i]` (a quote) ends, just past its closing
/// quote, and whether it has escapes.
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        match b[j] {
            b'\\' => {
                escaped = true;
                j += 2;
            }
            _ => return Some((j + 1, escaped)),
        }
    }
}

/// Where the value that starts at `b[i]` ends.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => Some(string_end(b, i)?.0),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *b.get(j)? {
                    b'"' => j = string_end(b, j)?.0,
                    b'{' | b'[' => {
                        depth += 1;
                        j += 1;
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        j += 1;
                        if depth == 0 {
                            return Some(j);
                        }
                    }
                    _ => j += 1,
                }
            }
        }
        _ => Some(
            i + b[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())
                .unwrap_or(b.len() - i),
        ),
    }
}

/// A record from a listing, with its scope taken from the listing (SPEC §3). Its
/// texts share the page's buffer (the uid and status too, unless they had escapes).
#[derive(Debug, Clone)]
pub struct Incoming {
    pub uid: ByteString,
    pub status: Option<ByteString>,
    /// The workflow step of an entry (JSON:API); None elsewhere.
    pub step: Option<ByteString>,
    /// JSON:API: its table's own columns ([`crate::config::Resource::columns`]).
    pub columns: Vec<Option<ByteString>>,
    pub owner: Option<ByteString>,
    pub dataset_slug: Option<ByteString>,
    /// The JSON object as received, stored in `raw`.
    pub raw: ByteString,
    pub hash: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Unchanged,
    /// New uid, or one that had been deleted and came back.
    Created,
    /// Content changed, status did not.
    Updated,
    /// The status or the workflow step changed; `old_step` is the step before.
    StatusChanged {
        old: Option<String>,
        new: Option<String>,
        old_step: Option<String>,
    },
}

/// Why a record was skipped instead of mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    NotAnObject,
    NoUid,
    /// A `uid` that is not a non-empty string.
    BadUid,
    /// A `status` that is neither a string nor null.
    BadStatus,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A field the mirror reads as a type has another one ([`Field`]).
    WrongType(&'static str),
}

/// Why, for the log line.
impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::NotAnObject => f.write_str("it is not a JSON object"),
            Rejected::NoUid => f.write_str("it has no uid"),
            Rejected::BadUid => f.write_str("its uid is not a non-empty string"),
            Rejected::BadStatus => f.write_str("its status is neither a string nor null"),
            Rejected::TooDeep => f.write_str("it is nested deeper than 1000 levels"),
            Rejected::WrongType(field) => {
                write!(f, "its {field} is not of the type the mirror reads")
            }
        }
    }
}

impl Incoming {
    /// The content hash covers the record's text and its scope columns (a record
    /// moving to another scope is a change too), but not the query of a
    /// `download_url`: a presigned link re-signed on every call is not a change.
    /// `head` is `raw`'s.
    pub fn new(
        head: Head<'_>,
        raw: &ByteString,
        owner: Option<&ByteString>,
        dataset_slug: Option<&ByteString>,
    ) -> Incoming {
        let mut h = Sha256::new();
        h.update(owner.map_or("", |o| o).as_bytes());
        h.update([0]);
        h.update(dataset_slug.map_or("", |d| d).as_bytes());
        h.update([0]);
        h.update(without_link_signature(raw).as_bytes());
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&h.finalize()[..16]);
        // a field borrowed from `raw` shares its buffer
        let text = |f: Cow<'_, str>| match f {
            Cow::Borrowed(s) => raw.slice_ref(s),
            Cow::Owned(s) => s.into(),
        };
        Incoming {
            uid: text(head.uid),
            status: head.status.map(text),
            step: head.step.map(text),
            columns: head.columns.into_iter().map(|c| c.map(text)).collect(),
            owner: owner.cloned(),
            dataset_slug: dataset_slug.cloned(),
            raw: raw.clone(),
            hash,
        }
    }

    /// A record of the listing of `owner`'s dataset `slug`, from its text
    /// (tests and benchmarks: a listing parses its pages whole first).
    pub fn from_text(raw: &str, owner: &str, slug: &str) -> Incoming {
        let raw = ByteString::from(raw);
        let (owner, slug) = (ByteString::from(owner), ByteString::from(slug));
        Incoming::new(
            Head::parse(&raw, true, &[]).unwrap(),
            &raw,
            Some(&owner),
            Some(&slug),
        )
    }

    /// The record as JSON (for event payloads).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.raw).unwrap_or(Value::Null)
    }
}

/// The record's text with the query (the signature, the expiry) cut from its
/// `download_url`; the text itself when there is none.
fn without_link_signature(raw: &str) -> Cow<'_, str> {
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
        Some(o)
            if o.status.as_deref() != new.status.as_deref()
                || o.step.as_deref() != new.step.as_deref() =>
        {
            Decision::StatusChanged {
                old: o.status.clone(),
                new: new.status.as_deref().map(str::to_owned),
                old_step: o.step.clone(),
            }
        }
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
        Incoming::from_text(raw, "o", "d")
    }

    fn stored(i: &Incoming, deleted: bool) -> Stored {
        Stored {
            rowid: 1,
            hash: i.hash,
            status: i.status.as_deref().map(str::to_owned),
            step: i.step.as_deref().map(str::to_owned),
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
                new: Some("completed".into()),
                old_step: None,
            }
        );
    }

    #[test]
    fn a_jsonapi_head_and_a_step_change() {
        let entry = |status: &str, step: &str| {
            let raw = ByteString::from(format!(
                r#"{{"type":"entries","id":"e1","attributes":{{"status":"{status}","wf_step":"{step}","updated_at":"2026-12-01T10:00:00Z","meta":{{"status":"x"}}}}}}"#
            ));
            let head = Head::parse_jsonapi(&raw, &[]).unwrap();
            Incoming::new(head, &raw, None, None)
        };
        let a = entry("in_progress", "annotate");
        assert_eq!(
            (&*a.uid, a.status.as_deref(), a.step.as_deref()),
            ("e1", Some("in_progress"), Some("annotate"))
        );
        let b = entry("in_progress", "review");
        assert_eq!(
            decide(Some(&stored(&a, false)), &b),
            Decision::StatusChanged {
                old: Some("in_progress".into()),
                new: Some("in_progress".into()),
                old_step: Some("annotate".into()),
            }
        );
        let bad = |raw: &str| Head::parse_jsonapi(raw, &[]).unwrap_err();
        assert_eq!(
            bad(r#"{"type":"entries","attributes":{}}"#),
            Rejected::NoUid
        );
        assert_eq!(bad(r#"{"id":7,"attributes":{}}"#), Rejected::BadUid);
        assert_eq!(
            bad(r#"{"id":"a","attributes":{"status":["x"]}}"#),
            Rejected::BadStatus
        );
        assert_eq!(bad(r#"[1]"#), Rejected::NotAnObject);
        let head = Head::parse_jsonapi(r#"{"id":"p","attributes":null}"#, &[]).unwrap();
        assert_eq!((&*head.uid, head.status), ("p", None));
        // columns from the attributes, or an `…_id` from its relationship
        let raw = r#"{"id":"c","relationships":{"note_feed":{"data":{"type":"note_feeds","id":"f1"}}},"attributes":{"project_id":"p1","n":3,"dataset_id":null,"entry_id":"e\"1"}}"#;
        let head = Head::parse_jsonapi(
            raw,
            &["project_id", "note_feed_id", "dataset_id", "entry_id"],
        )
        .unwrap();
        assert_eq!(
            head.columns,
            vec![
                Some("p1".into()),
                Some("f1".into()),
                None,
                Some("e\"1".into()),
            ]
        );
        // a column, a time or a relationship's id of another type: wrong-shaped
        assert_eq!(
            Head::parse_jsonapi(raw, &["n"]),
            Err(Rejected::WrongType("n"))
        );
        // an attribute naming another record may be an integer, not a float or object
        let numeric = r#"{"id":"c","attributes":{"project_id":17,"entry_id":-3}}"#;
        let head = Head::parse_jsonapi(numeric, &["project_id", "entry_id"]).unwrap();
        assert_eq!(head.columns, vec![Some("17".into()), Some("-3".into())]);
        for bad in ["1.5", r#"{"a":1}"#, "true", "[]"] {
            let raw = format!(r#"{{"id":"c","attributes":{{"project_id":{bad}}}}}"#);
            assert_eq!(
                Head::parse_jsonapi(&raw, &["project_id"]),
                Err(Rejected::WrongType("project_id")),
                "{raw}"
            );
        }
        let rel = r#"{"id":"c","relationships":{"note_feed":{"data":{"id":17}}}}"#;
        assert_eq!(
            Head::parse_jsonapi(rel, &["note_feed_id"]),
            Err(Rejected::WrongType("note_feed_id"))
        );
        assert_eq!(
            bad(r#"{"id":"a","attributes":{"updated_at":1700000000}}"#),
            Rejected::WrongType("updated_at")
        );
    }

    #[test]
    fn typed_fields_are_read_once_into_columns_and_another_type_is_rejected() {
        use crate::config::Resource;
        let fields = Resource::Datasets.spec().fields;
        let head = |raw| Head::parse(raw, false, fields);
        let ok = head(r#"{"uid":"d","slug":"batch-1","x":[1],"is_sequence":false}"#).unwrap();
        assert_eq!(ok.columns, vec![Some("batch-1".into()), Some("0".into())]);
        let absent = head(r#"{"uid":"d","is_sequence":null}"#).unwrap();
        assert_eq!(absent.columns, vec![None, None]);
        for (raw, field) in [
            (r#"{"uid":"d","slug":123}"#, "slug"),
            (
                r#"{"uid":"d","slug":"s","is_sequence":"false"}"#,
                "is_sequence",
            ),
            (r#"{"uid":"d","slug":{"a":"b"}}"#, "slug"),
        ] {
            assert_eq!(head(raw), Err(Rejected::WrongType(field)), "{raw}");
        }
        // a field checked but not kept as a column: the export's link
        let exports = Resource::Exports.spec().fields;
        let bad_link = r#"{"uid":"e","status":"exported","name":"n","download_url":5}"#;
        assert_eq!(
            Head::parse(bad_link, false, exports),
            Err(Rejected::WrongType("download_url"))
        );
        let good = r#"{"uid":"e","name":"n","download_url":"https://s/a.zip?sig=1"}"#;
        assert_eq!(
            Head::parse(good, false, exports).unwrap().columns,
            vec![Some("n".into()), None, None]
        );
        assert!(
            Rejected::WrongType("slug")
                .to_string()
                .contains("its slug is not of the type")
        );
    }

    #[test]
    fn scope_is_part_of_the_content() {
        let raw = r#"{"uid":"u","a":1}"#;
        let moved = Incoming::from_text(raw, "o", "other");
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
        let raw = r#"{"uid": "12", "x": {"y": [1, "}"]}, "dataset_uid": "d1", "status": "done"}"#;
        let h = Head::parse(raw, true, &[]).unwrap();
        assert_eq!(
            h,
            Head {
                uid: "12".into(),
                status: Some("done".into()),
                dataset_uid: Some("d1".into()),
                ..Head::default()
            }
        );
        assert_eq!(Head::parse(raw, false, &[]).unwrap().dataset_uid, None);
        for no_uid in [r#"{"key": "x"}"#, r#"{"uid": null}"#, "{}"] {
            assert_eq!(
                Head::parse(no_uid, true, &[]),
                Err(Rejected::NoUid),
                "{no_uid}"
            );
        }
        for bad_uid in [
            r#"{"uid": ""}"#,
            r#"{"uid": " "}"#,
            r#"{"uid": 12345}"#,
            r#"{"uid": true}"#,
            r#"{"uid": ["a"]}"#,
        ] {
            assert_eq!(
                Head::parse(bad_uid, true, &[]),
                Err(Rejected::BadUid),
                "{bad_uid}"
            );
        }
        for bad_status in [
            r#"{"uid": "a", "status": ["exported"]}"#,
            r#"{"uid": "a", "status": 3}"#,
        ] {
            assert_eq!(
                Head::parse(bad_status, true, &[]),
                Err(Rejected::BadStatus),
                "{bad_status}"
            );
        }
        assert!(Head::parse(r#"{"uid": "a", "status": null}"#, true, &[]).is_ok());
        // nested as deep as SQLite's JSON functions go, and one deeper
        let nested = |n: usize| {
            format!(
                r#"{{"uid": "a", "x": {}1{}, "s": "[[[["}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(Head::parse(&nested(MAX_DEPTH - 1), true, &[]).is_ok());
        assert_eq!(
            Head::parse(&nested(MAX_DEPTH), true, &[]),
            Err(Rejected::TooDeep)
        );
        assert_eq!(
            Head::parse(&nested(100_000), true, &[]),
            Err(Rejected::TooDeep)
        );
        for not_an_object in ["[1]", "\"uid\"", "", "7"] {
            let got = Head::parse(not_an_object, true, &[]);
            assert_eq!(got, Err(Rejected::NotAnObject), "{not_an_object}");
        }
    }

    #[test]
    fn head_finds_top_level_members_only() {
        // nested members, strings holding quotes, brackets and keys, escaped keys
        let raw = r#" {
            "meta": {"uid": "inner", "status": "no", "list": [{"uid": 1}, "]}"]},
            "note": "a \"uid\": \"fake\" }",
            "n": -1.5e3, "t": true, "z": null, "e": {}, "a": [],
            "st\u0061tus": "labeling_2d",
            "u\u0069d": "a\/b"
        } "#;
        let h = Head::parse(raw, true, &[]).unwrap();
        assert_eq!(h.uid, "a/b");
        assert_eq!(h.status.as_deref(), Some("labeling_2d"));
        assert_eq!(h.dataset_uid, None);
        // unicode around and inside the fields
        let h = Head::parse(r#"{"ü":"é","uid":"ü-1","status":"naïve ✓"}"#, false, &[]).unwrap();
        assert_eq!((&*h.uid, h.status.as_deref()), ("ü-1", Some("naïve ✓")));
        // a number uid, a non-string status: the wrong shape, whatever the order
        let got = Head::parse(r#"{"status":"a","uid":-7}"#, false, &[]);
        assert_eq!(got, Err(Rejected::BadUid));
        let got = Head::parse(r#"{"status":{"a":1},"uid":"u"}"#, false, &[]);
        assert_eq!(got, Err(Rejected::BadStatus));
    }

    #[test]
    fn of_a_field_given_twice_the_head_reads_what_sqlite_reads() {
        let raw = r#"{"uid":"a","status":"first","uid":"b","status":"second"}"#;
        let h = Head::parse(raw, false, &[]).unwrap();
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let (uid, status): (String, String) = db
            .query_row("SELECT ?1 ->> 'uid', ?1 ->> 'status'", [raw], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((&*h.uid, h.status.as_deref()), (&*uid, Some(&*status)));
        assert_eq!(uid, "a");
    }

    #[test]
    fn fields_without_escapes_share_the_record_text() {
        let raw = ByteString::from(r#"{"uid":"abc","status":"done","x":1}"#);
        let rec = Incoming::new(Head::parse(&raw, false, &[]).unwrap(), &raw, None, None);
        let within = |s: &str| raw.as_bytes().as_ptr_range().contains(&s.as_ptr());
        assert!(within(&rec.uid) && within(rec.status.as_deref().unwrap()));
        assert_eq!((&*rec.uid, rec.status.as_deref()), ("abc", Some("done")));
    }
}
