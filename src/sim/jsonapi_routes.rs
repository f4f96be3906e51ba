//! The JSON:API service's documented read paths: `GET /{collection}` (page
//! numbers, `count=true`, `sort`, filters) and `GET /{collection}/{id}`.

use axum::http::{Method, StatusCode};
use reqwest::Url;

use super::SimState;
use super::jsonapi::Kind;
use super::routes::Query;
use crate::contract::jsonapi::error_doc;

pub fn route(
    st: &SimState,
    method: &Method,
    segs: &[&str],
    _path: &str,
    q: &Query,
    _body: &[u8],
) -> (StatusCode, Vec<u8>) {
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            error_doc(404, "Not Found", "No such resource."),
        )
    };
    if method != Method::GET {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            error_doc(405, "Method Not Allowed", "The simulator only reads."),
        );
    }
    match segs {
        [path] => match Kind::from_path(path) {
            Some(k) => list(st, k, q),
            None => not_found(),
        },
        [path, id] => {
            let w = st.world.lock().expect("world lock");
            match Kind::from_path(path).and_then(|k| Some((k, w.jsonapi.index(k, id)?))) {
                Some((k, i)) => {
                    let mut out = b"{\"data\":".to_vec();
                    w.jsonapi.write(k, i, &mut out);
                    out.push(b'}');
                    (StatusCode::OK, out)
                }
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

fn bad_request(title: &str, detail: &str) -> (StatusCode, Vec<u8>) {
    (StatusCode::BAD_REQUEST, error_doc(400, title, detail))
}

fn list(st: &SimState, k: Kind, q: &Query) -> (StatusCode, Vec<u8>) {
    let list = match crate::contract::jsonapi::parse(k.path(), q) {
        Ok(list) => list,
        Err(answer) => return answer,
    };
    let faults = st.faults.lock().expect("faults lock").jsonapi.clone();
    if list.since.is_some() && faults.refuse_since {
        return bad_request("Invalid filter", "updated_at__gte is not supported here");
    }
    let list = crate::contract::jsonapi::List {
        size: list.size.min(faults.max_page_size.unwrap_or(1000)),
        since: list.since.filter(|_| !faults.ignore_since),
        ..list
    };
    let mut w = st.world.lock().expect("world lock");
    let (page, count) = match w.jsonapi.list(k, &list) {
        Ok(found) => found,
        Err(detail) => return bad_request("Invalid filter", &detail),
    };
    let records: Vec<Vec<u8>> = page
        .iter()
        .map(|i| {
            let mut out = Vec::new();
            w.jsonapi.write(k, *i, &mut out);
            out
        })
        .collect();
    // links: this page and, when it was full, the next one (absolute)
    let mut url = Url::parse(&format!("{}/{}", st.jsonapi_base, k.path())).expect("valid URL");
    url.query_pairs_mut().extend_pairs(q.iter());
    let out = crate::contract::jsonapi::page(&url, &list, records.iter().map(Vec::as_slice), count);

    if list.number == 1 && !page.is_empty() {
        let now = super::jsonapi::now();
        let mut f = st.faults.lock().expect("faults lock");
        if f.jsonapi.touch_after_first_page == Some(k) {
            f.jsonapi.touch_after_first_page = None;
            // a second later than anything: it moves to the end of an updated_at order
            let first = page[0];
            let at = now.max(w.jsonapi.updated(k, first)) + 1;
            w.jsonapi.edit(k, first, "edited while being listed", at);
        }
        if f.jsonapi.create_after_first_page == Some(k) && !list.by_updated {
            f.jsonapi.create_after_first_page = None;
            w.jsonapi.create(k, now);
        }
        if f.jsonapi.delete_after_first_page == Some(k) && !list.by_updated {
            f.jsonapi.delete_after_first_page = None;
            w.jsonapi.delete(k, page[0]);
        }
    }
    (StatusCode::OK, out)
}
