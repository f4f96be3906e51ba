//! The read contract of the upstream API, as both of its servers here answer it:
//! the simulator (from its world) and `serve` (from the mirror). Request parsing,
//! pagination envelopes, links, filters and error bodies live here once, so the
//! two cannot drift apart; neither server's data source is known here.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

/// A request's query parameters.
pub type Query = HashMap<String, String>;

/// A status and a JSON body.
pub type Answer = (StatusCode, Vec<u8>);

/// The largest page either server answers (v1 `limit`, JSON:API `page[size]`).
pub const MAX_PAGE: usize = 1000;

/// A v1 error body: `{"detail": …}`.
pub fn detail(status: StatusCode, text: &str) -> Answer {
    (status, json_bytes(&json!({ "detail": text })))
}

pub fn not_found() -> Answer {
    detail(StatusCode::NOT_FOUND, "Not found.")
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializing JSON")
}

/// `limit`, within 1..=max (`default` when absent or not a number).
pub fn limit(q: &Query, default: usize, max: usize) -> usize {
    q.get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

/// `page`, from 1.
pub fn page_number(q: &Query) -> usize {
    q.get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// `cursor`: absent, or a position this server handed out; anything else is the
/// API's 404 "Invalid cursor" (a client must not silently restart a listing).
pub fn cursor(q: &Query) -> Result<Option<u64>, Answer> {
    match q.get("cursor") {
        None => Ok(None),
        Some(c) => c
            .parse()
            .map(Some)
            .map_err(|_| detail(StatusCode::NOT_FOUND, "Invalid cursor")),
    }
}

/// An absolute link to `base` + `path` with this request's parameters, but for
/// `page` and `cursor`, and `key` set to `value`.
pub fn link(base: &str, path: &str, q: &Query, key: &str, value: &str) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    let mut keys: Vec<_> = q
        .iter()
        .filter(|(k, _)| *k != "page" && *k != "cursor")
        .collect();
    keys.sort();
    for (k, v) in keys {
        ser.append_pair(k, v);
    }
    ser.append_pair(key, value);
    format!("{base}{path}?{}", ser.finish())
}

/// `status`, `status__in`, `data_type`, `visibility` and `name` (a
/// case-insensitive substring), where the reference offers them.
pub fn matches_filters(v: &Value, q: &Query) -> bool {
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    q.get("status").is_none_or(|s| field("status") == s)
        && q.get("status__in")
            .is_none_or(|s| s.split(',').any(|x| x == field("status")))
        && q.get("data_type").is_none_or(|s| field("data_type") == s)
        && q.get("visibility").is_none_or(|s| field("visibility") == s)
        && q.get("name")
            .is_none_or(|s| field("name").to_lowercase().contains(&s.to_lowercase()))
}

/// Page-number pagination with `count`: `records` are every match, in order, as
/// JSON texts; `extra` is appended to the first page (the simulator's bad records).
pub fn page_style<R: AsRef<[u8]>>(
    (base, path, q): (&str, &str, &Query),
    limit: usize,
    records: &[R],
    extra: &[Vec<u8>],
) -> Answer {
    let page = page_number(q);
    let start = (page - 1).saturating_mul(limit);
    if start > records.len() || (start == records.len() && page > 1) {
        return detail(StatusCode::NOT_FOUND, "Invalid page.");
    }
    let end = (start + limit).min(records.len());
    let next = (end < records.len()).then(|| link(base, path, q, "page", &(page + 1).to_string()));
    let previous = (page > 1).then(|| link(base, path, q, "page", &(page - 1).to_string()));
    let mut out = format!(
        "{{\"count\":{},\"next\":{},\"previous\":{},\"results\":[",
        records.len(),
        json!(next),
        json!(previous)
    )
    .into_bytes();
    let page = records[start..end].iter().map(AsRef::as_ref);
    let extra = extra
        .iter()
        .filter(|_| page_number(q) == 1)
        .map(Vec::as_slice);
    join(&mut out, page.chain(extra));
    out.extend_from_slice(b"]}");
    (StatusCode::OK, out)
}

/// A cursor page: `{"next", "previous": null, "results"}`; `next` is the link to
/// the records after `last` when there are more.
pub fn cursor_page<'a>(
    (base, path, q): (&str, &str, &Query),
    records: impl Iterator<Item = &'a [u8]>,
    last_when_more: Option<u64>,
) -> Answer {
    let next = last_when_more.map(|k| link(base, path, q, "cursor", &k.to_string()));
    let mut out =
        format!("{{\"next\":{},\"previous\":null,\"results\":[", json!(next)).into_bytes();
    join(&mut out, records);
    out.extend_from_slice(b"]}");
    (StatusCode::OK, out)
}

fn join<'a>(out: &mut Vec<u8>, records: impl Iterator<Item = &'a [u8]>) {
    for (n, r) in records.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r);
    }
}

/// The JSON:API service's read contract.
pub mod jsonapi {
    use super::{Answer, MAX_PAGE, Query};
    use axum::http::StatusCode;
    use serde_json::json;

    /// The filters the reference documents for a collection (by its path).
    pub fn filters(collection: &str) -> &'static [&'static str] {
        match collection {
            "projects" => &["id", "updated_at__gte"],
            "datasets" => &["id", "project_id", "updated_at__gte"],
            "entries" => &["id", "project_id", "dataset_id"],
            "annotations" => &["id", "project_id", "dataset_id", "entry_id"],
            "note_feeds" => &[
                "id",
                "project_id",
                "dataset_id",
                "entry_id",
                "updated_at__gte",
            ],
            "note_comments" => &["id", "note_feed_id", "updated_at__gte"],
            "project_members" => &["id", "project_id"],
            _ => &[],
        }
    }

    /// A JSON:API error document.
    pub fn error_doc(status: u16, title: &str, detail: &str) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"errors": [{"status": status.to_string(), "title": title, "detail": detail}]}),
        )
        .expect("serializing JSON")
    }

    pub fn error(status: StatusCode, title: &str, detail: &str) -> Answer {
        (status, error_doc(status.as_u16(), title, detail))
    }

    /// A collection listing's parameters.
    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct List {
        pub number: u64,
        pub size: u64,
        /// `sort=updated_at`: oldest change first.
        pub by_updated: bool,
        /// `filter[name]=value`, but for `updated_at__gte`, each documented.
        pub filters: Vec<(String, String)>,
        /// `filter[updated_at__gte]`, in nanoseconds since the epoch.
        pub since: Option<i128>,
        /// `count=true`: the answer carries `meta.count`.
        pub count: bool,
    }

    impl List {
        /// The records before this page.
        pub fn offset(&self) -> u64 {
            (self.number - 1).saturating_mul(self.size)
        }
    }

    /// Parses a listing of `collection`: 400 for a page that is not a positive
    /// integer, a filter the reference does not document, or a time that is none.
    pub fn parse(collection: &str, q: &Query) -> Result<List, Answer> {
        let num = |key: &str, default: u64| match q.get(key) {
            None => Some(default),
            Some(v) => v.parse::<u64>().ok().filter(|n| *n >= 1),
        };
        let (Some(number), Some(size)) = (num("page[number]", 1), num("page[size]", 1000)) else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "Invalid page",
                "page[number] and page[size] are positive integers",
            ));
        };
        let mut list = List {
            number,
            size: size.min(MAX_PAGE as u64),
            by_updated: q.get("sort").is_some_and(|s| s.starts_with("updated_at")),
            count: q.get("count").is_some_and(|c| c == "true"),
            ..List::default()
        };
        let mut names: Vec<&String> = q.keys().collect();
        names.sort();
        for key in names {
            let Some(name) = key
                .strip_prefix("filter[")
                .and_then(|k| k.strip_suffix(']'))
            else {
                continue;
            };
            let invalid =
                |detail: String| error(StatusCode::BAD_REQUEST, "Invalid filter", &detail);
            if !filters(collection).contains(&name) {
                return Err(invalid(format!(
                    "filter[{name}] is not a filter of {collection}"
                )));
            }
            let value = &q[key];
            if name == "updated_at__gte" {
                match crate::time::instant(value) {
                    Some(n) => list.since = Some(n),
                    None => return Err(invalid("updated_at__gte is not a time".into())),
                }
            } else {
                list.filters.push((name.to_string(), value.clone()));
            }
        }
        Ok(list)
    }

    /// A page: `data`, `meta.count` when asked, and absolute links to this page and,
    /// when it was full, the next.
    pub fn page<'a>(
        url: &url::Url,
        list: &List,
        records: impl ExactSizeIterator<Item = &'a [u8]>,
        count: u64,
    ) -> Vec<u8> {
        let full = records.len() as u64 == list.size;
        let mut out = b"{\"data\":[".to_vec();
        super::join(&mut out, records);
        out.extend_from_slice(b"]");
        if list.count {
            out.extend_from_slice(format!(",\"meta\":{{\"count\":{count}}}").as_bytes());
        }
        let next = full.then(|| crate::api::jsonapi::with_page(url, list.number + 1).to_string());
        let links = json!({"self": url.as_str(), "next": next});
        out.extend_from_slice(format!(",\"links\":{links}}}").as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Query {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pages_count_link_and_refuse_past_the_end() {
        let recs: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let query = q(&[("page", "2"), ("status", "done")]);
        let (s, body) = page_style(("http://h", "/x/", &query), 2, &recs, &[]);
        assert_eq!(s, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["count"], 5);
        assert_eq!(v["results"], json!([2, 3]));
        assert_eq!(v["next"], "http://h/x/?status=done&page=3");
        assert_eq!(v["previous"], "http://h/x/?status=done&page=1");
        let (s, _) = page_style(("http://h", "/x/", &q(&[("page", "4")])), 2, &recs, &[]);
        assert_eq!(s, StatusCode::NOT_FOUND);
        // an empty listing has one empty page
        let none: [&str; 0] = [];
        let (s, body) = page_style(("http://h", "/x/", &q(&[])), 2, &none, &[]);
        assert_eq!(
            (s, body),
            (
                StatusCode::OK,
                br#"{"count":0,"next":null,"previous":null,"results":[]}"#.to_vec()
            )
        );
    }

    #[test]
    fn a_page_holds_at_most_max_records_whatever_is_asked() {
        for (asked, got) in [
            ("5000", 1000),
            ("0", 1),
            ("-3", 100),
            ("many", 100),
            ("99999999999999999999999", 100),
            ("250", 250),
        ] {
            assert_eq!(
                limit(&q(&[("limit", asked)]), 100, MAX_PAGE),
                got,
                "{asked}"
            );
        }
        assert_eq!(page_number(&q(&[("page", "0")])), 1);
        // a page far past the end is refused, not computed into an overflow
        let recs = ["1"];
        let huge = q(&[("page", &usize::MAX.to_string())]);
        assert_eq!(
            page_style(("h", "/", &huge), 1000, &recs, &[]).0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn a_cursor_is_ours_or_not_found() {
        assert_eq!(cursor(&q(&[])).unwrap(), None);
        assert_eq!(cursor(&q(&[("cursor", "17")])).unwrap(), Some(17));
        assert_eq!(
            cursor(&q(&[("cursor", "cD0yMDI1")])).unwrap_err().0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn jsonapi_listings_take_documented_filters_only() {
        let l = jsonapi::parse(
            "entries",
            &q(&[
                ("filter[project_id]", "7"),
                ("page[size]", "5000"),
                ("count", "true"),
            ]),
        )
        .unwrap();
        assert_eq!((l.size, l.count), (1000, true));
        assert_eq!(l.filters, vec![("project_id".into(), "7".into())]);
        for bad in [
            q(&[("filter[updated_at__gte]", "2024-01-01T00:00:00Z")]),
            q(&[("page[number]", "0")]),
            q(&[("filter[wf_step]", "done")]),
        ] {
            assert_eq!(
                jsonapi::parse("entries", &bad).unwrap_err().0,
                StatusCode::BAD_REQUEST
            );
        }
        let l = jsonapi::parse(
            "projects",
            &q(&[("filter[updated_at__gte]", "1970-01-01T00:00:01Z")]),
        )
        .unwrap();
        assert_eq!(l.since, Some(1_000_000_000));
    }
}
