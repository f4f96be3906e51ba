//! `serve` (SPEC §11): the API's read paths answered from the mirror. The
//! conformance tests send the same requests to the simulator and to `serve` over
//! a mirror of it, and compare the JSON (links compared without their host and
//! cursor values, which are each server's own).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use avala_mirror::config::Resource;
use avala_mirror::serve::{SYNCED_AT, Settings};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const KEY: &str = "test-key-5f3a9c";

fn settings(keys: Option<&[&str]>) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        keys: keys.map(|k| k.iter().map(|s| s.to_string()).collect()),
        max_connections: 16,
        organizations: vec!["acme-ai".into()],
    }
}

/// A mirror of the small world, v1 and JSON:API, and `serve` over it.
async fn mirrored() -> (TestEnv, SocketAddr) {
    let mut env = start(small_world()).await;
    let url = env.sim.jsonapi_url();
    env.cfg.enable_jsonapi(&url).unwrap();
    let j = env.cfg.jsonapi.as_mut().unwrap();
    j.resources = Resource::jsonapi_all();
    j.api.requests_per_second = 2000.0;
    j.api.burst = 100;
    let reports = env.sync().await.unwrap();
    assert!(reports.iter().all(|r| r.failures.is_empty()), "{reports:?}");
    let (addr, _task) = avala_mirror::serve::start(settings(None), &env.cfg.store_path)
        .await
        .unwrap();
    (env, addr)
}

async fn get(url: &str, key: Option<&str>) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(k) = key {
        req = req.header("x-avala-api-key", k);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp.bytes().await.unwrap();
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, headers, v)
}

/// A link without its scheme and host, and without the cursor's value.
fn local(link: &Value) -> Value {
    let Some(s) = link.as_str() else {
        return link.clone();
    };
    let u = url::Url::parse(s).unwrap();
    let q: BTreeMap<String, String> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "cursor" {
                "…".into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    json!({"path": u.path(), "query": q})
}

/// A page with its links made local.
fn comparable(mut v: Value) -> Value {
    for k in ["next", "previous"] {
        if let Some(l) = v.get(k) {
            v[k] = local(l);
        }
    }
    if let Some(links) = v.get_mut("links").and_then(Value::as_object_mut) {
        for l in links.values_mut() {
            *l = local(l);
        }
    }
    v
}

fn next_of(v: &Value) -> Option<String> {
    v.get("next")
        .or_else(|| v.pointer("/links/next"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Walks a listing on both servers, page by page, asserting each pair equal;
/// returns how many records were listed.
async fn assert_same_listing(env: &TestEnv, addr: SocketAddr, path: &str) -> usize {
    let sim_base = env.sim.base_url().to_string();
    let sim_root = sim_base
        .trim_end_matches("/api/v1/")
        .trim_end_matches("/api/v1");
    let (mut a, mut b) = (
        Some(format!("{sim_root}{path}")),
        Some(format!("http://{addr}{path}")),
    );
    let mut listed = 0;
    let mut pages = 0;
    while let (Some(sim_url), Some(serve_url)) = (a.take(), b.take()) {
        let (s1, _, v1) = get(&sim_url, Some(KEY)).await;
        let (s2, h2, v2) = get(&serve_url, None).await;
        assert_eq!(
            s1, s2,
            "{path}: status (page {pages})\nsim: {v1}\nserve: {v2}"
        );
        assert!(
            h2.contains_key("etag") && h2.contains_key(SYNCED_AT),
            "{path}: {h2:?}"
        );
        listed += v1
            .get("results")
            .or_else(|| v1.get("data"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        (a, b) = (next_of(&v1), next_of(&v2));
        assert_eq!(comparable(v1), comparable(v2), "{path}: page {pages}");
        pages += 1;
        assert!(pages < 1000, "{path}: no end");
    }
    assert_eq!(
        a.is_some(),
        b.is_some(),
        "{path}: one server has more pages"
    );
    listed
}

#[tokio::test]
async fn the_v1_read_paths_answer_as_the_api_does() {
    let (env, addr) = mirrored().await;
    let (ds, seq, item, slice, export) = env.sim.world(|w| {
        let d = w
            .dataset_index("johndoe", &w.datasets[0].slug.clone())
            .unwrap();
        let s = w.sequences_of(d)[0];
        (
            w.datasets[d].slug.clone(),
            w.sequences[s].uid.clone(),
            w.item_uid(d, 3),
            w.slices[0].slug.clone(),
            w.exports[0].uid.clone(),
        )
    });
    let other = env.sim.world(|w| w.datasets[1].slug.clone());
    let (ds_uid, slice_item) = env.sim.world(|w| {
        let members = w.slice_members(0);
        (
            w.datasets[0].uid.clone(),
            w.item_uid(w.slices[0].dataset, members[1]),
        )
    });
    let listings = [
        // the SDK's workspace list
        "/api/v1/datasets/?limit=2".to_string(),
        "/api/v1/datasets/?name=BATCH&limit=1".into(),
        "/api/v1/datasets/johndoe/list/".into(),
        "/api/v1/datasets/johndoe/list/?limit=1".into(),
        "/api/v1/datasets/johndoe/list/?status=created&limit=2".into(),
        "/api/v1/organizations/acme-ai/datasets/?limit=2".into(),
        "/api/v1/datasets/johndoe/sequences/?limit=2".into(),
        format!("/api/v1/datasets/johndoe/sequences/?dataset__slug__in={ds},{other}&limit=3"),
        format!("/api/v1/datasets/johndoe/{ds}/sequences/?limit=2"),
        format!("/api/v1/datasets/johndoe/{ds}/items/?limit=7"),
        format!("/api/v1/datasets/johndoe/{ds}/items/"),
        "/api/v1/slices/johndoe/list/".into(),
        format!("/api/v1/slices/johndoe/{slice}/items/list/?limit=4"),
        "/api/v1/exports/?limit=2".into(),
    ];
    let mut listed = 0;
    for path in &listings {
        listed += assert_same_listing(&env, addr, path).await;
    }
    assert!(listed > 150, "the listings were nearly empty: {listed}");
    for path in [
        format!("/api/v1/datasets/{ds_uid}/"),
        format!("/api/v1/datasets/johndoe/{ds}/"),
        format!("/api/v1/slices/johndoe/{slice}/items/{slice_item}/"),
        format!("/api/v1/datasets/johndoe/{ds}/items/{item}/"),
        format!("/api/v1/datasets/johndoe/{ds}/sequences/{seq}/"),
        format!("/api/v1/slices/johndoe/{slice}/"),
        format!("/api/v1/exports/{export}/"),
        // what is not there
        "/api/v1/datasets/johndoe/no-such-dataset/items/".into(),
        format!("/api/v1/datasets/johndoe/{ds}/items/no-such-item/"),
        "/api/v1/exports/no-such-export/".into(),
        "/api/v1/slices/johndoe/no-such-slice/items/list/".into(),
        "/api/v1/datasets/johndoe/list/?page=9".into(),
        "/api/v1/no/such/path/".into(),
    ] {
        assert_same_listing(&env, addr, &path).await;
    }
    // a cursor neither server handed out
    let (status, _, v) = get(
        &format!("http://{addr}/api/v1/exports/?cursor=cD0yMDI1"),
        None,
    )
    .await;
    assert_eq!(
        (status, v),
        (StatusCode::NOT_FOUND, json!({"detail": "Invalid cursor"}))
    );
}

#[tokio::test]
async fn the_jsonapi_collections_answer_as_the_service_does() {
    let (env, addr) = mirrored().await;
    let (project, entry_project, feed) = env.sim.world(|w| {
        let p = w
            .jsonapi
            .json(avala_mirror::sim::jsonapi::Kind::Projects, 0);
        let f = w
            .jsonapi
            .json(avala_mirror::sim::jsonapi::Kind::NoteFeeds, 3);
        (
            p["id"].as_str().unwrap().to_string(),
            p["id"].as_str().unwrap().to_string(),
            f,
        )
    });
    let since = feed["attributes"]["updated_at"]
        .as_str()
        .unwrap()
        .to_string();
    let mut listed = 0;
    for path in [
        "/jsonapi/entries?sort=updated_at&page[size]=7&count=true".to_string(),
        format!("/jsonapi/entries?filter[project_id]={entry_project}&sort=updated_at&page[size]=9"),
        format!("/jsonapi/note_feeds?filter[updated_at__gte]={since}&sort=updated_at&count=true"),
        "/jsonapi/projects?sort=updated_at".into(),
        "/jsonapi/note_comments?sort=updated_at&page[size]=4&page[number]=2".into(),
        format!("/jsonapi/projects/{project}"),
        "/jsonapi/projects/no-such-project".into(),
        "/jsonapi/no_such_collection".into(),
        "/jsonapi/entries?page[size]=0".into(),
        "/jsonapi/entries?filter[wf_step]=done".into(),
        "/jsonapi/projects?filter[updated_at__gte]=yesterday".into(),
    ] {
        listed += assert_same_listing(&env, addr, &path).await;
    }
    assert!(listed > 100, "{listed}");
    // without `sort` each lists in an order of its own: the same records
    for collection in ["entries", "annotations", "project_members"] {
        let ids = |base: String, key: Option<&'static str>| async move {
            let (_, _, v) = get(&format!("{base}/{collection}?page[size]=1000"), key).await;
            let ids: HashSet<String> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect();
            ids
        };
        let sim = ids(
            env.sim
                .jsonapi_url()
                .to_string()
                .trim_end_matches('/')
                .into(),
            Some(KEY),
        )
        .await;
        let served = ids(format!("http://{addr}/jsonapi"), None).await;
        assert!(!sim.is_empty());
        assert_eq!(sim, served, "{collection}");
    }
}

#[tokio::test]
async fn read_only_with_client_keys_validators_and_freshness() {
    let (env, _) = mirrored().await;
    let (addr, _task) =
        avala_mirror::serve::start(settings(Some(&["client-key-1"])), &env.cfg.store_path)
            .await
            .unwrap();
    let url = format!("http://{addr}/api/v1/datasets/johndoe/list/");
    // no key, a wrong key, and the upstream key itself: 401, and the key is not echoed
    for key in [None, Some("wrong"), Some(KEY)] {
        let (status, _, v) = get(&url, key).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert!(!v.to_string().contains(KEY));
    }
    let (status, headers, v) = get(&url, Some("client-key-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["count"], 3);
    // freshness: the oldest last success of the listings behind the answer
    let synced = headers[SYNCED_AT].to_str().unwrap();
    assert!(avala_mirror::time::instant(synced).is_some(), "{synced}");
    // the validator: If-None-Match answers 304 with no body
    let etag = headers["etag"].to_str().unwrap().to_string();
    let c = reqwest::Client::new();
    let again = c
        .get(&url)
        .header("x-avala-api-key", "client-key-1")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    assert!(again.bytes().await.unwrap().is_empty());
    // every other verb: 405 with a JSON detail, and nothing written
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let r = c
            .request(method.clone(), format!("http://{addr}/api/v1/exports/"))
            .header("x-avala-api-key", "client-key-1")
            .body(r#"{"name":"x","format":"YOLO"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        let v: Value = r.json().await.unwrap();
        assert!(v["detail"].as_str().unwrap().contains("read-only"), "{v}");
    }
    let r = c
        .delete(format!("http://{addr}/jsonapi/projects"))
        .header("x-avala-api-key", "client-key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["status"], "405");
    assert_eq!(env.rows("exports").len(), 3, "an export was created");
    // the replica's requests are counted
    let (status, _, health) = get(&format!("http://{addr}/healthz"), Some("client-key-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        health["serve"]["requests"].as_u64().unwrap() >= 9,
        "{health}"
    );
    let metrics = c
        .get(format!("http://{addr}/metrics"))
        .header("x-avala-api-key", "client-key-1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("avala_mirror_serve_requests_total{status=\"405\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_downloaded_archive_is_served_from_the_mirror_with_ranges() {
    let mut world = small_world();
    world.exports = 1;
    world.archive_bytes = 300_000;
    let env = start(world).await;
    let dl = env.dir.path().join("archives");
    let cfg = env.write_config(
        KEY,
        &format!("[downloads]\nbackfill = true\ndir = \"{}\"\n", dl.display()),
    );
    let (code, _, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (addr, _task) = avala_mirror::serve::start(settings(None), &env.cfg.store_path)
        .await
        .unwrap();
    let uid = env.sim.world(|w| w.exports[0].uid.clone());
    let (_, _, export) = get(&format!("http://{addr}/api/v1/exports/{uid}/"), None).await;
    let link = export["download_url"].as_str().unwrap();
    assert_eq!(link, format!("http://{addr}/archives/{uid}"));
    let (_, _, listed) = get(&format!("http://{addr}/api/v1/exports/"), None).await;
    assert_eq!(listed["results"][0]["download_url"], link);

    let file = std::fs::read_dir(&dl)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "zip"))
        .unwrap()
        .path();
    let on_disk = std::fs::read(&file).unwrap();
    let sha = hex::encode(Sha256::digest(&on_disk));
    let c = reqwest::Client::new();
    let whole = c.get(link).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(
        whole.headers()["etag"].to_str().unwrap(),
        format!("\"{sha}\"")
    );
    assert_eq!(whole.bytes().await.unwrap().as_ref(), on_disk.as_slice());
    let part = c
        .get(link)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-range"].to_str().unwrap(),
        format!("bytes 1000-1999/{}", on_disk.len())
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &on_disk[1000..2000]);
    let tail = c
        .get(link)
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(
        tail.bytes().await.unwrap().as_ref(),
        &on_disk[on_disk.len() - 10..]
    );
    let past = c
        .get(link)
        .header("range", format!("bytes={}-", on_disk.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let cached = c
        .get(link)
        .header("if-none-match", format!("\"{sha}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    let (status, _, _) = get(&format!("http://{addr}/archives/no-such-export"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // with client keys, the link an answer gives is signed: it downloads without a key
    let (keyed, _task) =
        avala_mirror::serve::start(settings(Some(&["team-key"])), &env.cfg.store_path)
            .await
            .unwrap();
    let (_, _, export) = get(
        &format!("http://{keyed}/api/v1/exports/{uid}/"),
        Some("team-key"),
    )
    .await;
    let signed = export["download_url"].as_str().unwrap();
    assert!(
        signed.starts_with(&format!("http://{keyed}/archives/{uid}?token=")),
        "{signed}"
    );
    let got = c.get(signed).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), on_disk.as_slice());
    // nothing else is let through: no token, a changed one, or one moved to the listing
    let token = signed.split("token=").nth(1).unwrap();
    let mut changed = token.to_string();
    changed.replace_range(0..1, if token.starts_with('0') { "1" } else { "0" });
    for url in [
        format!("http://{keyed}/archives/{uid}"),
        format!("http://{keyed}/archives/{uid}?token={changed}"),
        format!("http://{keyed}/api/v1/exports/?token={token}"),
    ] {
        let (status, _, _) = get(&url, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{url}");
    }
}

#[tokio::test]
async fn a_cursor_listing_stays_whole_while_the_daemon_writes() {
    let (env, addr) = mirrored().await;
    let (ds, before) = env.sim.world(|w| {
        let d = w
            .dataset_index("johndoe", &w.datasets[0].slug.clone())
            .unwrap();
        let uids: HashSet<String> = (0..w.items[d].count).map(|i| w.item_uid(d, i)).collect();
        (w.datasets[d].slug.clone(), uids)
    });
    let first = format!("http://{addr}/api/v1/datasets/johndoe/{ds}/items/?limit=10");
    let (_, _, page) = get(&first, None).await;
    let mut seen: Vec<String> = vec![];
    let take = |page: &Value, seen: &mut Vec<String>| {
        for r in page["results"].as_array().unwrap() {
            seen.push(r["uid"].as_str().unwrap().to_string());
        }
    };
    take(&page, &mut seen);
    // the account changes and the mirror takes it in between two pages
    env.sim.world(|w| {
        let d = w.dataset_index("johndoe", &ds).unwrap();
        w.items[d].count += 25;
        w.delete_item(d, 40);
    });
    env.sync().await.unwrap();
    let mut next = next_of(&page);
    while let Some(url) = next {
        let (_, _, page) = get(&url, None).await;
        take(&page, &mut seen);
        next = next_of(&page);
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a record listed twice");
    let deleted = env
        .sim
        .world(|w| w.item_uid(w.dataset_index("johndoe", &ds).unwrap(), 40));
    for uid in before.iter().filter(|u| **u != deleted) {
        assert!(unique.contains(uid), "{uid} was skipped");
    }
    assert!(
        !unique.contains(&deleted),
        "an item deleted before its page was listed"
    );
    assert_eq!(
        unique.len(),
        before.len() - 1 + 25,
        "the new items are at the end"
    );
}

#[tokio::test]
async fn serve_alone_needs_no_key_and_refuses_the_network_without_client_keys() {
    let (env, _) = mirrored().await;
    let db = env.cfg.store_path.to_str().unwrap().to_string();
    let (code, _, err) = run_binary(
        &["--db", &db, "serve", "--listen", "0.0.0.0:0"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("serve.listen") && err.contains("serve.api_keys_file"),
        "{err}"
    );
    let keys = env.dir.path().join("keys");
    std::fs::write(&keys, "# clients\nteam-key\n").unwrap();
    let port = nothing_listens().port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_avala-mirror"))
        .args(["--db", &db, "serve", "--listen", &listen])
        .env("AVALA_MIRROR__SERVE__API_KEYS_FILE", &keys)
        .env_remove("AVALA_API_KEY")
        .env_remove("AVALA_MIRROR_CONFIG")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{listen}/api/v1/exports/");
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(r) = reqwest::Client::new()
            .get(&url)
            .header("x-avala-api-key", "team-key")
            .send()
            .await
        {
            answered = Some(r.status());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(answered, Some(StatusCode::OK));
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test]
async fn run_serves_the_mirror_too_when_serve_listen_is_set() {
    let env = start(small_world()).await;
    let listen = format!("127.0.0.1:{}", nothing_listens().port());
    let cfg = env.write_config(KEY, &format!("[serve]\nlisten = \"{listen}\"\n"));
    let mut child = spawn_binary(&["--config", cfg.to_str().unwrap(), "run"]);
    let url = format!("http://{listen}/api/v1/datasets/johndoe/list/");
    let mut count = None;
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(&url).await {
            let v: Value = r.json().await.unwrap();
            if v["count"] == 3 {
                count = Some(3);
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(count, Some(3), "run did not serve the mirrored datasets");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test]
async fn connections_past_max_connections_wait_for_one_to_close() {
    let (env, _) = mirrored().await;
    let mut one = settings(None);
    one.max_connections = 1;
    let (addr, _task) = avala_mirror::serve::start(one, &env.cfg.store_path)
        .await
        .unwrap();
    let url = format!("http://{addr}/api/v1/exports/");
    // an idle client holds the only place
    let held = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let waiting = tokio::spawn(async move { reqwest::get(&url).await.map(|r| r.status()) });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a second connection was served beside the first"
    );
    drop(held);
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("served once the first closed")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}
