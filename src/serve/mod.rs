//! `serve` (SPEC §11): the read paths of the v1 API and of the JSON:API service,
//! answered from the mirror's live rows, so scripts on the official SDK switch
//! with `AVALA_BASE_URL` and no code change. Each route maps one upstream path to
//! one [`Replica`] query; request parsing, pagination and error bodies are the
//! simulator's own ([`crate::contract`]), so the two servers cannot drift apart.
//! Records go out as the JSON text the API sent.

mod archives;
mod listener;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::Resource;
use crate::contract::{self, Answer, MAX_PAGE, Query, jsonapi};
use crate::store::sqlite::replica::{Cursored, Listed, One, Replica, Row};

/// The page size of a v1 listing that names no `limit`.
const DEFAULT_LIMIT: usize = 100;

/// The header that says how fresh an answer is.
pub const SYNCED_AT: &str = "x-avala-mirror-synced-at";

/// What `serve` needs besides the mirror.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Keys clients must send as `X-Avala-Api-Key`; `None`: any client on loopback.
    pub keys: Option<HashSet<String>>,
    pub max_connections: usize,
    /// `scope.organizations`: their datasets answer under `/organizations/`.
    pub organizations: Vec<String>,
}

struct Serve {
    replica: Replica,
    settings: Settings,
    db: std::path::PathBuf,
    /// With client keys: what signs archive links, so that a client that got a
    /// link from an answer downloads it without sending a key (as it does
    /// from the API's presigned storage links).
    link_secret: Option<Vec<u8>>,
}

/// Binds `settings.listen` and answers until the task is aborted.
pub async fn start(
    settings: Settings,
    db: &std::path::Path,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let replica = Replica::open(db)?;
    let tcp = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve on {} (serve.listen): {e}", settings.listen))?;
    let bound = tcp.local_addr()?;
    let limited = listener::Limited::new(tcp, settings.max_connections);
    // stable while the keys are: links outlive a restart, not a key change
    let link_secret = settings.keys.as_ref().map(|keys| {
        let mut sorted: Vec<&String> = keys.iter().collect();
        sorted.sort();
        let mut h = Sha256::new();
        h.update(b"avala-mirror serve archive links\n");
        for k in sorted {
            h.update(k.as_bytes());
            h.update(b"\n");
        }
        h.finalize().to_vec()
    });
    let st = Arc::new(Serve {
        replica,
        settings,
        db: db.to_path_buf(),
        link_secret,
    });
    let app = Router::new().fallback(handle).with_state(st);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(limited, app).await {
            tracing::error!("serve stopped: {e}");
        }
    });
    tracing::info!(addr = %bound, "serving the mirror as a read-only API (AVALA_BASE_URL=http://{bound}/api/v1)");
    Ok((bound, task))
}

async fn handle(
    State(st): State<Arc<Serve>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let resp = answer(&st, &method, &uri, &headers).await;
    let m = &crate::metrics::METRICS;
    m.serve_requests
        .get_or_create(&crate::metrics::label("status", resp.status().as_str()))
        .inc();
    m.serve_total.inc();
    resp
}

async fn answer(st: &Serve, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    let path = uri.path();
    let jsonapi = path.starts_with("/jsonapi/");
    let fail = |(status, body): Answer| json_response(status, body);
    let refuse = |status: StatusCode, text: &str| match jsonapi {
        true => fail(jsonapi::error(
            status,
            status.canonical_reason().unwrap_or(""),
            text,
        )),
        false => fail(contract::detail(status, text)),
    };
    if let Some(keys) = &st.settings.keys {
        let sent = headers.get("x-avala-api-key").and_then(|v| v.to_str().ok());
        if !sent.is_some_and(|k| keys.contains(k)) && !signed_archive_link(st, uri) {
            return refuse(StatusCode::UNAUTHORIZED, "Invalid API key.");
        }
    }
    if path == "/healthz" || path == "/metrics" {
        return own(st, path).await;
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Method \"{method}\" not allowed: this is a read-only mirror."),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let q: Query = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let base = format!("http://{}", host(headers, st.settings.listen));
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let routed = match segs.as_slice() {
        ["api", "v1", rest @ ..] => v1(st, rest, path, &base, &q).await,
        ["jsonapi", rest @ ..] => collections(st, rest, path, &base, &q).await,
        ["archives", uid] => return archives::serve(&st.replica, uid, headers).await,
        _ => Ok(((contract::not_found()), None)),
    };
    match routed {
        Ok(((status, body), scope)) => {
            let synced = match scope {
                Some(scope) => st.replica.synced_at(scope).await.ok().flatten(),
                None => None,
            };
            cached(status, body, headers, synced.as_deref().unwrap_or("never"))
        }
        Err(e) => {
            tracing::warn!("serve: reading the mirror: {e:#}");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "The mirror could not be read.",
            )
        }
    }
}

/// An answer, and the `sync_state` scope behind it.
type Routed = anyhow::Result<(Answer, Option<String>)>;

/// The v1 read paths (`segs` after `/api/v1`).
async fn v1(st: &Serve, segs: &[&str], path: &str, base: &str, q: &Query) -> Routed {
    let at = (base, path, q);
    let limit = contract::limit(q, DEFAULT_LIMIT, MAX_PAGE);
    let owned = |s: &&str| s.to_string();
    let is_org = |o: &str| st.settings.organizations.iter().any(|x| x == o);
    let (listed, scope) = match segs {
        ["datasets"] => {
            // the SDK's workspace list: every dataset, by cursor
            let after = match contract::cursor(q) {
                Ok(after) => after.unwrap_or(0),
                Err(answer) => return Ok((answer, None)),
            };
            let rows = st.replica.all(Listed::Workspace).await?;
            let mut matching = filtered(rows, q)
                .into_iter()
                .filter(|r| r.key as u64 > after);
            let page: Vec<Row> = matching.by_ref().take(limit).collect();
            let last = page
                .last()
                .filter(|_| matching.next().is_some())
                .map(|r| r.key as u64);
            let answer = contract::cursor_page(at, page.iter().map(|r| r.raw.as_bytes()), last);
            return Ok((answer, Some("datasets".into())));
        }
        ["datasets", owner, "list"] if !is_org(owner) => (
            Listed::Datasets {
                owner: owned(owner),
            },
            format!("datasets:{owner}"),
        ),
        ["organizations", org, "datasets"] if is_org(org) => (
            Listed::Datasets { owner: owned(org) },
            format!("datasets:{org}"),
        ),
        ["datasets", _, "list"] | ["organizations", _, "datasets"] => {
            // not an owner of this kind: none of its datasets are here
            let none: [&str; 0] = [];
            return Ok((contract::page_style(at, limit, &none, &[]), None));
        }
        ["datasets", owner, "sequences"] => {
            let slugs = q
                .get("dataset__slug__in")
                .map(|s| s.split(',').map(str::to_string).collect())
                .or_else(|| q.get("dataset__slug").map(|s| vec![s.clone()]));
            (
                Listed::Sequences {
                    owner: owned(owner),
                    slugs,
                },
                format!("sequences:{owner}"),
            )
        }
        ["slices", owner, "list"] => (
            Listed::Slices {
                owner: owned(owner),
            },
            format!("slices:{owner}"),
        ),
        _ => return v1_cursored(st, segs, at, limit).await,
    };
    let rows = filtered(st.replica.all(listed).await?, q);
    let records: Vec<&[u8]> = rows.iter().map(|r| r.raw.as_bytes()).collect();
    Ok((contract::page_style(at, limit, &records, &[]), Some(scope)))
}

/// The rows that pass the request's filters (each parsed only when there are any).
fn filtered(mut rows: Vec<Row>, q: &Query) -> Vec<Row> {
    let any = ["status", "status__in", "data_type", "visibility", "name"]
        .iter()
        .any(|k| q.contains_key(*k));
    if any {
        rows.retain(|r| {
            serde_json::from_str::<Value>(&r.raw).is_ok_and(|v| contract::matches_filters(&v, q))
        });
    }
    rows
}

/// The v1 cursor listings and single records.
async fn v1_cursored(st: &Serve, segs: &[&str], at: (&str, &str, &Query), limit: usize) -> Routed {
    let (base, _, q) = at;
    let s = |s: &&str| s.to_string();
    let (cursored, scope) = match segs {
        ["datasets", owner, slug, "items"] => (
            Cursored::Items {
                owner: s(owner),
                slug: s(slug),
            },
            format!("items:{owner}/{slug}"),
        ),
        ["datasets", owner, slug, "sequences"] => (
            Cursored::Sequences {
                owner: s(owner),
                slug: s(slug),
            },
            format!("sequences:{owner}"),
        ),
        ["slices", owner, slug, "items", "list"] => (
            Cursored::SliceItems {
                owner: s(owner),
                slug: s(slug),
            },
            format!("slices:{owner}"),
        ),
        ["exports"] => (Cursored::Exports, "exports".to_string()),
        _ => return v1_one(st, segs, base).await,
    };
    let after = match contract::cursor(q) {
        Ok(after) => after.map(|a| a.min(i64::MAX as u64) as i64),
        Err(answer) => return Ok((answer, None)),
    };
    let Some((rows, more)) = st.replica.after(cursored, after, limit).await? else {
        return Ok((contract::not_found(), None));
    };
    let texts: Vec<String> = rows.iter().map(|r| export_link(st, r, base)).collect();
    let last = rows.last().filter(|_| more).map(|r| r.key as u64);
    let answer = contract::cursor_page(at, texts.iter().map(|t| t.as_bytes()), last);
    Ok((answer, Some(scope)))
}

async fn v1_one(st: &Serve, segs: &[&str], base: &str) -> Routed {
    let s = |s: &&str| s.to_string();
    let (one, scope) = match segs {
        ["datasets", uid] => (One::Dataset { uid: s(uid) }, "datasets".to_string()),
        ["datasets", owner, slug] => (
            One::DatasetBySlug {
                owner: s(owner),
                slug: s(slug),
            },
            format!("datasets:{owner}"),
        ),
        ["slices", owner, slug, "items", uid] => (
            One::SliceItem {
                owner: s(owner),
                slug: s(slug),
                uid: s(uid),
            },
            format!("slices:{owner}"),
        ),
        ["datasets", owner, slug, "items", uid] => (
            One::Item {
                owner: s(owner),
                slug: s(slug),
                uid: s(uid),
            },
            format!("items:{owner}/{slug}"),
        ),
        ["datasets", owner, slug, "sequences", uid] => (
            One::Sequence {
                owner: s(owner),
                slug: s(slug),
                uid: s(uid),
            },
            format!("sequences:{owner}"),
        ),
        ["slices", owner, slug] => (
            One::Slice {
                owner: s(owner),
                slug: s(slug),
            },
            format!("slices:{owner}"),
        ),
        ["exports", uid] => (One::Export { uid: s(uid) }, "exports".to_string()),
        _ => return Ok((contract::not_found(), None)),
    };
    Ok(match st.replica.one(one).await? {
        Some(row) => (
            (StatusCode::OK, export_link(st, &row, base).into_bytes()),
            Some(scope),
        ),
        None => (contract::not_found(), None),
    })
}

/// A record as the API sent it; an export whose archive is on disk links to it
/// here instead of to the upstream storage (signed when clients need keys).
fn export_link(st: &Serve, row: &Row, base: &str) -> String {
    if !row.archived {
        return row.raw.clone();
    }
    match serde_json::from_str::<Value>(&row.raw) {
        Ok(mut v) => {
            let uid = v["uid"].as_str().unwrap_or_default().to_string();
            let mut link = format!("{base}/archives/{uid}");
            if let Some(mac) = link_mac(st, &uid) {
                let token = hex::encode(&hmac::Mac::finalize(mac).into_bytes()[..16]);
                link = format!("{link}?token={token}");
            }
            v["download_url"] = Value::String(link);
            v.to_string()
        }
        Err(_) => row.raw.clone(),
    }
}

/// What signs the archive link of export `uid`.
fn link_mac(st: &Serve, uid: &str) -> Option<hmac::Hmac<Sha256>> {
    use hmac::{KeyInit, Mac};
    let secret = st.link_secret.as_ref()?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(uid.as_bytes());
    Some(mac)
}

/// An `/archives/{uid}` request whose `token` this replica signed (compared in
/// constant time).
fn signed_archive_link(st: &Serve, uri: &Uri) -> bool {
    use hmac::Mac;
    let Some(uid) = uri.path().strip_prefix("/archives/") else {
        return false;
    };
    let token = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "token")
        .and_then(|(_, v)| hex::decode(v.as_bytes()).ok())
        .filter(|t| t.len() == 16);
    match (token, link_mac(st, uid)) {
        (Some(sent), Some(mac)) => mac.verify_truncated_left(&sent).is_ok(),
        _ => false,
    }
}

/// The JSON:API collections (`segs` after `/jsonapi`).
async fn collections(st: &Serve, segs: &[&str], path: &str, base: &str, q: &Query) -> Routed {
    let not_found = || jsonapi::error(StatusCode::NOT_FOUND, "Not Found", "No such resource.");
    let table = |p: &str| {
        Resource::jsonapi_all()
            .into_iter()
            .find(|r| r.jsonapi().is_some_and(|j| j.path == p))
            .map(Resource::table)
    };
    match segs {
        [collection] => {
            let Some(table) = table(collection) else {
                return Ok((not_found(), None));
            };
            let list = match jsonapi::parse(collection, q) {
                Ok(list) => list,
                Err(answer) => return Ok((answer, None)),
            };
            let (page, count) = st.replica.collection(table, list.clone()).await?;
            let mut url = url::Url::parse(&format!("{base}{path}"))?;
            url.query_pairs_mut().extend_pairs(q.iter());
            let body = jsonapi::page(&url, &list, page.iter().map(|r| r.as_bytes()), count);
            Ok(((StatusCode::OK, body), Some(table.to_string())))
        }
        [collection, id] => {
            let Some(table) = table(collection) else {
                return Ok((not_found(), None));
            };
            Ok(match st.replica.resource(table, id.to_string()).await? {
                Some(raw) => {
                    let body = format!("{{\"data\":{raw}}}").into_bytes();
                    ((StatusCode::OK, body), Some(table.to_string()))
                }
                None => (not_found(), None),
            })
        }
        _ => Ok((not_found(), None)),
    }
}

/// `/healthz` and `/metrics` of `serve` itself.
async fn own(st: &Serve, path: &str) -> Response {
    if path == "/healthz" {
        let served = crate::metrics::METRICS.serve_total.get();
        let body = serde_json::json!({"status": "ok", "serve": {"requests": served}});
        return json_response(StatusCode::OK, body.to_string().into_bytes());
    }
    crate::service::metrics_of(crate::service::snapshot_of(st.db.clone()).await).await
}

/// The request's `Host` when it is a plain authority, else the listen address:
/// the links in an answer point back at this replica.
fn host(headers: &HeaderMap, listen: SocketAddr) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .map_or_else(|| listen.to_string(), str::to_string)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A strong validator of `body`.
pub fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(body)[..16]))
}

/// Whether `If-None-Match` names `etag` (or is `*`).
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

/// The answer with its `ETag` and freshness, or 304 when the client has it.
fn cached(status: StatusCode, body: Vec<u8>, headers: &HeaderMap, synced: &str) -> Response {
    let etag = etag_of(&body);
    let mut r = if status == StatusCode::OK && not_modified(headers, &etag) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        json_response(status, body)
    };
    let h = r.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    if let Ok(v) = HeaderValue::from_str(synced) {
        h.insert(SYNCED_AT, v);
    }
    r
}
