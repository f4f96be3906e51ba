//! The documented v1 paths, answered from the world. One handler parses the path,
//! applies auth and faults, then dispatches on the path's segments.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::SimState;
use super::faults::{Logged, Verdict};
use super::world::{ItemWriter, World};

pub async fn api(
    State(st): State<Arc<SimState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(st, method, uri, headers, body, "/api/v1", route).await
}

/// The JSON:API service, on the same address under `/jsonapi`.
pub async fn jsonapi(
    State(st): State<Arc<SimState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(
        st,
        method,
        uri,
        headers,
        body,
        "/jsonapi",
        super::jsonapi_routes::route,
    )
    .await
}

type Route = fn(&SimState, &Method, &[&str], &str, &Query, &[u8]) -> (StatusCode, Vec<u8>);

/// Auth, fault knobs, latency and the request log, then `route` under `prefix`.
async fn serve(
    st: Arc<SimState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    prefix: &str,
    route: Route,
) -> Response {
    let path = uri.path().trim_start_matches(prefix).to_string();
    let query_str = uri.query().unwrap_or("").to_string();
    let authorized =
        headers.get("x-avala-api-key").and_then(|v| v.to_str().ok()) == Some(&st.api_key);
    let _in_flight = InFlight::new(&st);
    let jsonapi = prefix == "/jsonapi";
    let (verdict, slow, rate, latency) = {
        let mut f = st.faults.lock().expect("faults lock");
        let verdict = if authorized {
            f.judge(&path, &query_str)
        } else {
            Verdict::Fail(401)
        };
        let status = match verdict {
            Verdict::Fail(s) => s,
            Verdict::RateLimited => 429,
            _ => 200,
        };
        f.log.push(Logged {
            at: std::time::Instant::now(),
            method: method.to_string(),
            path: path.clone(),
            query: query_str.clone(),
            status,
        });
        (verdict, f.slow, f.rate_headers(), f.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fail = |status: StatusCode, detail: &str| match jsonapi {
        true => (
            status,
            [("content-type", "application/vnd.api+json")],
            super::jsonapi::error_doc(
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                detail,
            ),
        )
            .into_response(),
        false => error(status, detail),
    };
    let mut resp = match verdict {
        Verdict::Fail(401) => fail(StatusCode::UNAUTHORIZED, "Invalid API key."),
        Verdict::Fail(s) => fail(
            StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "Simulated failure.",
        ),
        Verdict::RateLimited => {
            let secs = st.faults.lock().expect("faults lock").retry_after_secs;
            let mut r = fail(StatusCode::TOO_MANY_REQUESTS, "Request was throttled.");
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
            r
        }
        Verdict::Serve | Verdict::Reset | Verdict::Malformed => {
            if !slow.is_zero() {
                tokio::time::sleep(slow).await;
            }
            let query: Query = url::form_urlencoded::parse(query_str.as_bytes())
                .into_owned()
                .collect();
            let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            let (status, bytes) = route(&st, &method, &segs, &path, &query, &body);
            match verdict {
                Verdict::Reset => cut(status, bytes),
                Verdict::Malformed => {
                    (status, Bytes::from(bytes[..bytes.len() / 2].to_vec())).into_response()
                }
                _ => (
                    status,
                    [("content-type", "application/json")],
                    Bytes::from(bytes),
                )
                    .into_response(),
            }
        }
    };
    if let Some((limit, remaining, reset)) = rate {
        let h = resp.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    }
    resp
}

/// Counts a request as in flight until its answer is ready (or it is dropped).
struct InFlight(Arc<SimState>);

impl InFlight {
    fn new(st: &Arc<SimState>) -> InFlight {
        let mut f = st.faults.lock().expect("faults lock");
        f.in_flight += 1;
        f.max_in_flight = f.max_in_flight.max(f.in_flight);
        InFlight(st.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.faults.lock().expect("faults lock").in_flight -= 1;
    }
}

fn error(status: StatusCode, detail: &str) -> Response {
    (status, axum::Json(json!({ "detail": detail }))).into_response()
}

/// Sends half the body, then breaks the connection.
fn cut(status: StatusCode, bytes: Vec<u8>) -> Response {
    let half = Bytes::from(bytes[..bytes.len() / 2].to_vec());
    let stream = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(half),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated reset",
        )),
    ]);
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-length", HeaderValue::from(bytes.len()));
    r
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializing JSON")
}

use crate::contract::{matches_filters, not_found};

pub(super) use crate::contract::Query;

fn route(
    st: &SimState,
    method: &Method,
    segs: &[&str],
    path: &str,
    q: &Query,
    body: &[u8],
) -> (StatusCode, Vec<u8>) {
    let mut w = st.world.lock().expect("world lock");
    let limit = crate::contract::limit(q, st.cfg.default_page_size, st.cfg.max_page_size);
    let ctx = PageCtx {
        base: &st.api_base,
        path,
        q,
        limit,
        bad_records: st.faults.lock().expect("faults lock").bad_records,
    };
    let one = |v: Option<Value>| match v {
        Some(v) => (StatusCode::OK, json_bytes(&v)),
        None => not_found(),
    };
    match (method, segs) {
        (&Method::GET, ["datasets", owner, "list"]) => {
            let mut ds: Vec<usize> = (0..w.datasets.len())
                .filter(|&i| {
                    !w.datasets[i].deleted && !w.datasets[i].is_org && w.datasets[i].owner == *owner
                })
                .collect();
            ds.sort_by_key(|&i| w.datasets[i].order);
            let recs = ds
                .iter()
                .map(|&i| w.dataset_json(i))
                .filter(|v| matches_filters(v, q))
                .collect();
            ctx.page_style(recs)
        }
        (&Method::GET, ["organizations", org, "datasets"]) => {
            let mut ds: Vec<usize> = (0..w.datasets.len())
                .filter(|&i| {
                    !w.datasets[i].deleted && w.datasets[i].is_org && w.datasets[i].owner == *org
                })
                .collect();
            ds.sort_by_key(|&i| w.datasets[i].order);
            let recs = ds
                .iter()
                .map(|&i| w.dataset_json(i))
                .filter(|v| matches_filters(v, q))
                .collect();
            ctx.page_style(recs)
        }
        (&Method::GET, ["datasets", owner, "sequences"]) => {
            let slugs: Option<Vec<&str>> = q
                .get("dataset__slug__in")
                .map(|s| s.split(',').collect())
                .or_else(|| q.get("dataset__slug").map(|s| vec![s.as_str()]));
            let mut seqs: Vec<usize> = (0..w.sequences.len())
                .filter(|&i| {
                    let s = &w.sequences[i];
                    let d = &w.datasets[s.dataset];
                    !s.deleted
                        && !d.deleted
                        && d.owner == *owner
                        && slugs.as_ref().is_none_or(|l| l.contains(&d.slug.as_str()))
                })
                .collect();
            seqs.sort_by_key(|&i| w.sequences[i].order);
            let recs: Vec<Value> = seqs
                .iter()
                .map(|&i| w.sequence_json(i))
                .filter(|v| matches_filters(v, q))
                .collect();
            let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
            let out = ctx.page_style(recs);
            let mut f = st.faults.lock().expect("faults lock");
            if f.shift_once && page == 1 && seqs.len() > 1 {
                f.shift_once = false;
                let last = *seqs.last().expect("len > 1");
                let first = w.sequences[seqs[0]].order;
                w.sequences[last].order = first - 1;
            }
            out
        }
        // the SDK's workspace list and lookups (beyond the reference's paths)
        (&Method::GET, ["datasets"]) => {
            let mut ds: Vec<usize> = (0..w.datasets.len())
                .filter(|&i| !w.datasets[i].deleted)
                .collect();
            ds.sort_by_key(|&i| w.datasets[i].order);
            let recs = ds
                .iter()
                .map(|&i| (w.datasets[i].order as u64, w.dataset_json(i)))
                .filter(|(_, v)| matches_filters(v, q))
                .collect();
            ctx.cursor_style(recs)
        }
        (&Method::GET, ["datasets", uid]) => one(w
            .datasets
            .iter()
            .position(|d| !d.deleted && d.uid == *uid)
            .map(|i| w.dataset_json(i))),
        (&Method::GET, ["datasets", owner, slug]) => {
            one(w.dataset_index(owner, slug).map(|i| w.dataset_json(i)))
        }
        (&Method::GET, ["datasets", owner, slug, "sequences"]) => {
            match w.dataset_index(owner, slug) {
                Some(ds) => {
                    let recs = w
                        .sequences_of(ds)
                        .into_iter()
                        .map(|i| (i as u64, w.sequence_json(i)))
                        .collect();
                    ctx.cursor_style(recs)
                }
                None => not_found(),
            }
        }
        (&Method::GET, ["datasets", owner, slug, "sequences", uid]) => {
            one(w.dataset_index(owner, slug).and_then(|ds| {
                w.sequences_of(ds)
                    .into_iter()
                    .find(|&i| w.sequences[i].uid == *uid)
                    .map(|i| w.sequence_json(i))
            }))
        }
        (&Method::GET, ["datasets", owner, slug, "items"]) => match w.dataset_index(owner, slug) {
            Some(ds) => ctx.items_page(&w, ds),
            None => not_found(),
        },
        (&Method::GET, ["datasets", owner, slug, "items", uid]) => {
            one(w.dataset_index(owner, slug).and_then(|ds| {
                (0..w.items[ds].count)
                    .find(|&i| w.item_present(ds, i) && w.item_uid(ds, i) == *uid)
                    .map(|i| w.item_json(ds, i))
            }))
        }
        (&Method::GET, ["slices", owner, "list"]) => {
            let mut sl: Vec<usize> = (0..w.slices.len())
                .filter(|&i| !w.slices[i].deleted && w.slices[i].owner == *owner)
                .collect();
            sl.sort_by_key(|&i| w.slices[i].order);
            ctx.page_style(sl.iter().map(|&i| w.slice_json(i)).collect())
        }
        (&Method::GET, ["slices", owner, slug]) => {
            one(find_slice(&w, owner, slug).map(|i| w.slice_json(i)))
        }
        (&Method::GET, ["slices", owner, slug, "items", "list"]) => {
            match find_slice(&w, owner, slug) {
                Some(s) => {
                    let ds = w.slices[s].dataset;
                    let recs = w
                        .slice_members(s)
                        .into_iter()
                        .map(|i| (i, w.item_json(ds, i)))
                        .collect();
                    ctx.cursor_style(recs)
                }
                None => not_found(),
            }
        }
        (&Method::GET, ["slices", owner, slug, "items", uid]) => one(find_slice(&w, owner, slug)
            .and_then(|s| {
                let ds = w.slices[s].dataset;
                w.slice_members(s)
                    .into_iter()
                    .find(|&i| w.item_uid(ds, i) == *uid)
                    .map(|i| w.item_json(ds, i))
            })),
        (&Method::GET, ["exports"]) => {
            // most recent first: keys descend, so the cursor keeps working as exports are added
            let n = w.exports.len() as u64;
            let recs = (0..w.exports.len())
                .rev()
                .filter(|&i| !w.exports[i].deleted)
                .map(|i| (n - i as u64, w.export_json(i)))
                .collect();
            ctx.cursor_style(recs)
        }
        (&Method::POST, ["exports"]) => create_export(&mut w, body),
        (&Method::GET, ["exports", uid]) => one(w
            .exports
            .iter()
            .position(|x| !x.deleted && x.uid == *uid)
            .map(|i| w.export_json(i))),
        _ => not_found(),
    }
}

fn find_slice(w: &World, owner: &str, slug: &str) -> Option<usize> {
    w.slices
        .iter()
        .position(|s| !s.deleted && s.owner == owner && s.slug == slug)
}

fn create_export(w: &mut World, body: &[u8]) -> (StatusCode, Vec<u8>) {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return (
            StatusCode::BAD_REQUEST,
            json_bytes(&json!({"detail": "JSON parse error."})),
        );
    };
    let mut problems = serde_json::Map::new();
    for f in ["name", "format"] {
        if req.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
            problems.insert(f.into(), json!(["This field is required."]));
        }
    }
    let format = req.get("format").and_then(Value::as_str).unwrap_or("");
    if !format.is_empty() && format != "avala-json-external" && format != "YOLO" {
        problems.insert(
            "format".into(),
            json!([format!("\"{format}\" is not a valid choice.")]),
        );
    }
    if !problems.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            json_bytes(&Value::Object(problems)),
        );
    }
    let e = w.add_export();
    let x = &mut w.exports[e];
    x.name = req["name"].as_str().unwrap_or_default().into();
    x.format = if format == "YOLO" {
        "YOLO"
    } else {
        "avala-json-external"
    };
    if let Some(ds) = req.get("datasets").and_then(Value::as_array) {
        x.datasets = ds
            .iter()
            .filter_map(|d| d.as_str().map(str::to_owned))
            .collect();
    }
    (StatusCode::CREATED, json_bytes(&w.export_json(e)))
}

struct PageCtx<'a> {
    base: &'a str,
    path: &'a str,
    q: &'a Query,
    limit: usize,
    bad_records: bool,
}

impl PageCtx<'_> {
    /// An absolute link to this listing with `key` set to `value`.
    fn link(&self, key: &str, value: &str) -> String {
        crate::contract::link(self.base, self.path, self.q, key, value)
    }

    fn at(&self) -> (&str, &str, &Query) {
        (self.base, self.path, self.q)
    }

    /// With the `bad_records` fault, on a listing's first page: a record without
    /// uid, ones of the wrong shape, and one nested deeper than SQLite's JSON
    /// functions accept; on listings of datasets, slices and exports, one whose
    /// fields the mirror reads as a type have other types.
    fn bad(&self, first: bool) -> Vec<Value> {
        if !(self.bad_records && first) {
            return vec![];
        }
        let mut deep = json!(1);
        for _ in 0..1001 {
            deep = json!([deep]);
        }
        let mut bad = vec![
            json!({"key": "record-without-uid", "status": "pending"}),
            json!({"uid": 12345, "status": "exported"}),
            json!({"uid": "wrong-status", "status": ["exported"]}),
            json!({"uid": "too-deep", "status": "pending", "nested": deep}),
        ];
        let p = self.path.trim_matches('/');
        let typed = p.starts_with("exports")
            || p.starts_with("organizations")
            || (p.ends_with("/list") && !p.contains("/items"));
        if typed {
            bad.push(json!({
                "uid": "wrong-typed", "status": "exported", "slug": 123,
                "is_sequence": "false", "name": 7, "download_url": 5, "created_at": 1,
            }));
        }
        bad
    }

    /// Page-number pagination with `count`, as the page-style lists answer.
    fn page_style(&self, recs: Vec<Value>) -> (StatusCode, Vec<u8>) {
        let recs: Vec<Vec<u8>> = recs.iter().map(json_bytes).collect();
        let bad: Vec<Vec<u8>> = self.bad(true).iter().map(json_bytes).collect();
        crate::contract::page_style(self.at(), self.limit, &recs, &bad)
    }

    /// Keyset cursor pagination: records come with ascending keys; the cursor is the
    /// last key served, so removals and additions never shift a listing.
    fn cursor_style(&self, recs: Vec<(u64, Value)>) -> (StatusCode, Vec<u8>) {
        let after = match crate::contract::cursor(self.q) {
            Ok(after) => after,
            Err(answer) => return answer,
        };
        let mut rest = recs
            .into_iter()
            .filter(|(k, _)| after.is_none_or(|a| *k > a));
        let page: Vec<(u64, Value)> = rest.by_ref().take(self.limit).collect();
        let more = rest.next().is_some();
        let last = page.last().map(|(k, _)| *k).filter(|_| more);
        let mut results: Vec<Vec<u8>> = page.iter().map(|(_, v)| json_bytes(v)).collect();
        results.extend(self.bad(after.is_none()).iter().map(json_bytes));
        crate::contract::cursor_page(self.at(), results.iter().map(Vec::as_slice), last)
    }

    /// The items listing, written straight to bytes (the simulator's hot path).
    fn items_page(&self, w: &World, ds: usize) -> (StatusCode, Vec<u8>) {
        let after = match crate::contract::cursor(self.q) {
            Ok(after) => after,
            Err(answer) => return answer,
        };
        let mut i = after.map_or(0, |a| a + 1);
        let count = w.items[ds].listed_at_most.map_or(w.items[ds].count, |n| {
            // the index past the n-th present item
            (0..w.items[ds].count)
                .filter(|&j| w.item_present(ds, j))
                .nth(n as usize)
                .unwrap_or(w.items[ds].count)
        });
        let mut out = Vec::with_capacity(self.limit * 420 + 200);
        out.extend_from_slice(b"{\"previous\":null,\"results\":[");
        let mut n = 0;
        let mut last = None;
        let writer = ItemWriter::new(w, ds);
        while i < count && n < self.limit {
            if w.item_present(ds, i) {
                if n > 0 {
                    out.push(b',');
                }
                writer.write(w, ds, i, &mut out);
                last = Some(i);
                n += 1;
            }
            i += 1;
        }
        for bad in self.bad(after.is_none()) {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&json_bytes(&bad));
            n += 1;
        }
        let more = (i..count).any(|j| w.item_present(ds, j));
        let next = match (more, last) {
            (true, Some(l)) => Value::String(self.link("cursor", &l.to_string())),
            _ => Value::Null,
        };
        out.extend_from_slice(b"],\"next\":");
        out.extend_from_slice(&json_bytes(&next));
        out.push(b'}');
        (StatusCode::OK, out)
    }
}
