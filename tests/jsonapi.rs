//! The JSON:API service (SPEC §8) against the in-process simulator: the seven
//! tables, their events, incremental listings and what they must not miss,
//! filters a server ignores or refuses, deletions, and a kill mid-listing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use avala_mirror::config::Resource;
use avala_mirror::sim::jsonapi::Kind;
use common::*;
use serde_json::Value;

const TABLES: [(Kind, &str); 7] = [
    (Kind::Projects, "projects"),
    (Kind::Datasets, "jsonapi_datasets"),
    (Kind::Entries, "entries"),
    (Kind::Annotations, "annotations"),
    (Kind::NoteFeeds, "note_feeds"),
    (Kind::NoteComments, "note_comments"),
    (Kind::ProjectMembers, "project_members"),
];

/// Present rows of a JSON:API table: id → the resource object stored.
fn rows(env: &TestEnv, table: &str) -> HashMap<String, Value> {
    env.query(&format!(
        "SELECT uid, raw FROM {table} WHERE deleted_at IS NULL"
    ))
    .into_iter()
    .map(|r| (r["uid"].as_str().unwrap().to_string(), r["raw"].clone()))
    .collect()
}

fn assert_mirrors_the_simulator(env: &TestEnv) {
    for (kind, table) in TABLES {
        assert_table_mirrors(env, kind, table);
    }
}

fn assert_table_mirrors(env: &TestEnv, kind: Kind, table: &str) {
    let want = env.sim.world(|w| w.jsonapi.all(kind));
    let have = rows(env, table);
    assert_eq!(have.len(), want.len(), "{table}: row count");
    assert!(
        have == want,
        "{table}: rows differ from the simulator's records"
    );
}

/// The requests the simulator saw since `from`, as (path, query).
fn requests_since(env: &TestEnv, from: usize) -> Vec<(String, String)> {
    env.sim.faults(|f| {
        f.log[from..]
            .iter()
            .map(|l| (l.path.clone(), l.query.clone()))
            .collect()
    })
}

fn log_len(env: &TestEnv) -> usize {
    env.sim.faults(|f| f.log.len())
}

fn now() -> u64 {
    avala_mirror::sim::jsonapi::now()
}

/// (type, uid, payload) of every event after `seq`.
fn events_after(env: &TestEnv, seq: i64) -> Vec<(String, String, Value)> {
    env.query(&format!(
        "SELECT type, uid, payload FROM events WHERE seq > {seq} ORDER BY seq"
    ))
    .into_iter()
    .map(|r| {
        let text = |k: &str| r[k].as_str().unwrap().to_string();
        (text("type"), text("uid"), r["payload"].clone())
    })
    .collect()
}

fn last_seq(env: &TestEnv) -> i64 {
    env.query("SELECT COALESCE(max(seq), 0) AS n FROM events")[0]["n"]
        .as_i64()
        .unwrap()
}

/// Edits the first `n` note comments, a second apart, all in the last few
/// minutes (after any watermark); their ids.
fn edit_comments(env: &TestEnv, n: u64) -> Vec<String> {
    let t = now() - 2 * n - 60;
    env.sim.world(|w| {
        (0..n)
            .map(|i| {
                w.jsonapi
                    .edit(Kind::NoteComments, i, &format!("edited {i}"), t + i);
                w.jsonapi.id(Kind::NoteComments, i)
            })
            .collect()
    })
}

/// Deletes record `i` of `kind` in the simulator; its id.
fn delete(env: &TestEnv, kind: Kind, i: u64) -> String {
    env.sim.world(|w| {
        w.jsonapi.delete(kind, i);
        w.jsonapi.id(kind, i)
    })
}

async fn sync_ok(env: &TestEnv) {
    let reports = env.sync().await.unwrap();
    for r in &reports {
        assert!(r.failures.is_empty(), "{r:?}");
    }
}

#[tokio::test]
async fn all_seven_tables_equal_the_simulators_state_through_changes() {
    for backend in backends() {
        let env = start_jsonapi_on(7, backend.clone()).await;
        sync_ok(&env).await;
        assert_mirrors_the_simulator(&env);
        // scoping columns come from the record: attributes, or a relationship
        let (entry, comment) = env.sim.world(|w| {
            (
                w.jsonapi.json(Kind::Entries, 5),
                w.jsonapi.json(Kind::NoteComments, 3),
            )
        });
        let row = env.query(&format!(
            "SELECT project_id, dataset_id, wf_step FROM entries WHERE uid = '{}'",
            entry["id"].as_str().unwrap()
        ));
        assert_eq!(row[0]["project_id"], entry["attributes"]["project_id"]);
        assert_eq!(row[0]["dataset_id"], entry["attributes"]["dataset_id"]);
        assert_eq!(row[0]["wf_step"], entry["attributes"]["wf_step"]);
        let row = env.query(&format!(
            "SELECT note_feed_id FROM note_comments WHERE uid = '{}'",
            comment["id"].as_str().unwrap()
        ));
        assert_eq!(
            row[0]["note_feed_id"],
            comment["relationships"]["note_feed"]["data"]["id"]
        );

        // the world moves on, deletions included (a note feed's only the count probe shows)
        env.sim.world(|w| {
            for _ in 0..20 {
                w.step();
            }
            w.jsonapi.delete(Kind::NoteFeeds, 2);
            w.jsonapi.delete(Kind::Entries, 9);
            w.jsonapi.delete(Kind::Projects, 1);
        });
        sync_ok(&env).await;
        assert_mirrors_the_simulator(&env);
    }
}

#[tokio::test]
async fn a_tick_writes_exactly_the_expected_events() {
    for backend in backends() {
        let env = start_jsonapi_on(10, backend.clone()).await;
        sync_ok(&env).await;
        let before = last_seq(&env);
        let t = now();
        let (entry, step_before, new_feed, resolved, comment, member, gone, project) =
            env.sim.world(|w| {
                let j = &mut w.jsonapi;
                // an entry in `annotate` and `in_progress` moves to review
                let e = (0..j.coll(Kind::Entries).count)
                    .find(|&i| j.entry_state(i) == ("in_progress", "annotate"))
                    .unwrap();
                j.advance_entry(e, t);
                let f = j.create(Kind::NoteFeeds, t);
                let pending = (0..12)
                    .find(|&i| j.json(Kind::NoteFeeds, i)["attributes"]["status"] == "pending")
                    .unwrap();
                j.set_status(Kind::NoteFeeds, pending, "resolved", t);
                let c = j.create(Kind::NoteComments, t);
                let m = j.create(Kind::ProjectMembers, t);
                j.delete(Kind::ProjectMembers, 0);
                j.edit(Kind::Projects, 0, "a new description", t);
                let id = |k, i| j.id(k, i);
                (
                    id(Kind::Entries, e),
                    "annotate",
                    id(Kind::NoteFeeds, f),
                    id(Kind::NoteFeeds, pending),
                    id(Kind::NoteComments, c),
                    id(Kind::ProjectMembers, m),
                    id(Kind::ProjectMembers, 0),
                    id(Kind::Projects, 0),
                )
            });
        sync_ok(&env).await;
        let got = events_after(&env, before);
        let mut kinds: Vec<(String, String)> =
            got.iter().map(|(t, u, _)| (t.clone(), u.clone())).collect();
        kinds.sort();
        let mut want = vec![
            ("entry.status_changed".to_string(), entry.clone()),
            ("note_feed.created".into(), new_feed),
            ("note_feed.status_changed".into(), resolved.clone()),
            ("note_comment.created".into(), comment),
            ("project_member.created".into(), member),
            ("project_member.deleted".into(), gone),
            ("project.updated".into(), project),
        ];
        want.sort();
        assert_eq!(kinds, want);
        // both the status and the workflow step, old and new
        let (_, _, e) = got.iter().find(|(_, u, _)| *u == entry).unwrap();
        assert_eq!(e["data"]["old_status"], "in_progress");
        assert_eq!(e["data"]["new_status"], "pending");
        assert_eq!(e["data"]["old_wf_step"], step_before);
        assert_eq!(e["data"]["new_wf_step"], "review");
        let (_, _, f) = got.iter().find(|(_, u, _)| *u == resolved).unwrap();
        assert_eq!(
            (
                f["data"]["old_status"].as_str(),
                f["data"]["new_status"].as_str()
            ),
            (Some("pending"), Some("resolved"))
        );

        // the lines people read, and the type filter of `events`
        let lines = env
            .open()
            .await
            .events_after(before, "note_feed.*", 100)
            .await
            .unwrap();
        assert_eq!(lines.len(), 2);
        let described: Vec<String> = lines
            .iter()
            .map(avala_mirror::store::events::describe)
            .collect();
        assert!(
            described
                .iter()
                .any(|d| d.starts_with("note on ") && d.contains(": pending — Label ")),
            "{described:?}"
        );
        assert!(
            described.iter().any(|d| d.contains("pending → resolved")),
            "{described:?}"
        );
    }
}

#[tokio::test]
async fn an_unchanged_cycle_writes_nothing_and_lists_nothing_in_full() {
    let env = start_jsonapi(10).await;
    sync_ok(&env).await;
    let (from, before) = (log_len(&env), last_seq(&env));
    sync_ok(&env).await;
    assert_eq!(last_seq(&env), before, "an unchanged cycle wrote events");
    let reqs = requests_since(&env, from);
    for path in ["/projects", "/datasets", "/note_feeds", "/note_comments"] {
        let mine: Vec<&(String, String)> = reqs.iter().filter(|(p, _)| p == path).collect();
        // one page of what changed since the watermark, one count probe
        assert_eq!(mine.len(), 2, "{path}: {mine:?}");
        assert!(
            mine.iter().all(|(_, q)| !q.contains("sort=created_at")),
            "{path} was listed in full: {mine:?}"
        );
        assert!(
            mine[0].1.contains("filter%5Bupdated_at__gte%5D="),
            "{mine:?}"
        );
    }
    // the others have no such filter: listed in full, as documented
    assert!(
        reqs.iter()
            .any(|(p, q)| p == "/entries" && q.contains("sort=created_at%2Cid"))
    );
}

#[tokio::test]
async fn a_record_updated_mid_listing_is_not_missed() {
    let env = start_jsonapi(5).await;
    sync_ok(&env).await;
    let before = last_seq(&env);
    // twelve comments change, a second apart, all after the watermark
    let ids = edit_comments(&env, 12);
    // and the first one is updated again right after the first page is served:
    // it jumps to the end, and by page numbers the sixth would slip past unseen
    env.sim
        .faults(|f| f.jsonapi.touch_after_first_page = Some(Kind::NoteComments));
    env.sync_only(Resource::NoteComments).await;
    assert!(
        env.sim
            .faults(|f| f.jsonapi.touch_after_first_page.is_none()),
        "the fault never fired"
    );
    assert_mirrors_the_simulator(&env);
    let updated: Vec<String> = events_after(&env, before)
        .into_iter()
        .filter(|(t, _, _)| t == "note_comment.updated")
        .map(|(_, u, _)| u)
        .collect();
    for id in &ids {
        assert!(updated.contains(id), "no event for {id}");
    }
}

async fn falls_back_to_a_full_listing(
    set: fn(&mut avala_mirror::sim::jsonapi::JsonApiFaults),
    says: &str,
) {
    let env = start_jsonapi(5).await;
    sync_ok(&env).await;
    let before = last_seq(&env);
    let t = now();
    let changed = env.sim.world(|w| {
        w.jsonapi.set_status(Kind::NoteFeeds, 1, "resolved", t);
        w.jsonapi.set_status(Kind::NoteFeeds, 0, "pending", t);
        w.jsonapi.create(Kind::NoteFeeds, t);
        w.jsonapi.delete(Kind::NoteFeeds, 3);
        w.jsonapi.id(Kind::NoteFeeds, 3)
    });
    env.sim.faults(|f| set(&mut f.jsonapi));
    let from = log_len(&env);
    env.sync_only(Resource::NoteFeeds).await;
    assert_mirrors_the_simulator(&env);
    assert!(env.deleted_at("note_feeds", &changed).is_some());
    let reqs = requests_since(&env, from);
    assert!(
        reqs.iter().any(|(_, q)| q.contains("sort=created_at")),
        "no full listing: {reqs:?}"
    );
    // each change once: the full listing after the refused one found them
    let mut seen = HashMap::new();
    for (t, u, _) in events_after(&env, before) {
        *seen.entry((t, u)).or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert!(
        seen.keys().any(|(t, _)| t == "note_feed.deleted"),
        "{seen:?}"
    );
    // `status` says why, and the next cycle does not try the filter again
    let status = env.store().status().await.unwrap();
    let why = &status["resources"]["note_feeds"]["filter_not_honoured"];
    assert!(why[0]["error"].as_str().unwrap().contains(says), "{why}");
    let from = log_len(&env);
    env.sync_only(Resource::NoteFeeds).await;
    let reqs = requests_since(&env, from);
    assert!(
        reqs.iter().all(|(_, q)| !q.contains("updated_at__gte")),
        "{reqs:?}"
    );
}

#[tokio::test]
async fn a_server_that_ignores_the_filter_gets_a_full_listing() {
    falls_back_to_a_full_listing(|f| f.ignore_since = true, "before the").await;
}

#[tokio::test]
async fn a_server_that_refuses_the_filter_gets_a_full_listing() {
    falls_back_to_a_full_listing(|f| f.refuse_since = true, "Invalid filter").await;
}

#[tokio::test]
async fn a_record_leaves_the_mirror_only_after_its_show_endpoint_answers_404() {
    for backend in backends() {
        let env = start_jsonapi_on(10, backend).await;
        sync_ok(&env).await;
        let id = delete(&env, Kind::Entries, 4);
        // the listing misses it, but its show endpoint fails: kept
        env.sim
            .faults(|f| f.fail(&format!("/entries/{id}"), None, 500, u32::MAX));
        env.sync_only(Resource::Entries).await;
        assert_eq!(env.deleted_at("entries", &id), None);
        // a 404 from it: gone, with its event
        env.sim.faults(|f| f.rules.clear());
        env.sync_only(Resource::Entries).await;
        assert!(env.deleted_at("entries", &id).is_some());
        assert!(env.events().contains(&("entry.deleted".into(), id)));
    }
}

/// A full listing of project members in pages of 2 (several pages).
async fn list_members_in_pages_of_two(env: &TestEnv) -> avala_mirror::sync::CycleReport {
    let mut small = env.cfg.clone();
    small.jsonapi.as_mut().unwrap().api.page_size = 2;
    let syncer = avala_mirror::sync::Syncer::new(std::sync::Arc::new(small), env.store()).unwrap();
    syncer
        .sync_resource(Resource::ProjectMembers)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_count_that_shrinks_mid_listing_deletes_nothing() {
    let env = start_jsonapi(10).await;
    sync_ok(&env).await;
    let id = delete(&env, Kind::ProjectMembers, 1);
    // the first member goes after page 1: the count shrinks, and a member of
    // page 2 slides onto page 1 unseen
    let (first, slid) = env.sim.world(|w| {
        (
            w.jsonapi.id(Kind::ProjectMembers, 0),
            w.jsonapi.id(Kind::ProjectMembers, 3),
        )
    });
    env.sim
        .faults(|f| f.jsonapi.delete_after_first_page = Some(Kind::ProjectMembers));
    list_members_in_pages_of_two(&env).await;
    for uid in [&id, &first, &slid] {
        assert_eq!(
            env.deleted_at("project_members", uid),
            None,
            "{uid} deleted on an unstable listing"
        );
    }
    env.sync_only(Resource::ProjectMembers).await;
    assert!(env.deleted_at("project_members", &id).is_some());
    assert!(env.deleted_at("project_members", &first).is_some());
    assert_eq!(env.deleted_at("project_members", &slid), None);
    assert_mirrors_the_simulator(&env);
}

#[tokio::test]
async fn a_busy_collection_whose_count_only_grows_still_has_stable_listings() {
    let env = start_jsonapi(10).await;
    sync_ok(&env).await;
    let id = delete(&env, Kind::ProjectMembers, 1);
    // a member created during the listing lands after it (sort by creation)
    env.sim
        .faults(|f| f.jsonapi.create_after_first_page = Some(Kind::ProjectMembers));
    let report = list_members_in_pages_of_two(&env).await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(
        env.deleted_at("project_members", &id).is_some(),
        "a listing that only grew was not taken as stable"
    );
    assert_mirrors_the_simulator(&env);
}

#[tokio::test]
async fn kill_9_in_an_incremental_listing_loses_and_doubles_nothing() {
    let env = start_jsonapi(5).await;
    let cfg = env.write_config(
        env.cfg.api.key.expose(),
        &format!(
            "[jsonapi]\nbase_url = \"{}\"\npage_size = 5\nrequests_per_second = 500.0\nburst = 50\nresources = [\"note_comments\"]\n[jsonapi.schedule]\nnote_comments = \"1s\"\n",
            env.sim.jsonapi_url()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = run_binary(
        &["--config", cfg, "sync", "--only", "note_comments"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let watermark = || -> Option<String> {
        env.store().with(|c| {
            c.query_row(
                "SELECT watermark FROM sync_state WHERE scope = 'note_comments'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        })
    };
    let baseline = watermark().unwrap();
    let before = last_seq(&env);
    // 30 comments change a second apart; each page is slow, so the kill lands mid-listing
    let ids = edit_comments(&env, 30);
    env.sim.faults(|f| f.slow = Duration::from_millis(400));
    let mut daemon = spawn_binary(&["--config", cfg, "run"]);
    let comments = || {
        events_after(&env, before)
            .into_iter()
            .filter(|(t, _, _)| t.starts_with("note_comment."))
            .collect::<Vec<_>>()
    };
    wait_until("part of the listing to be written", || {
        let n = comments().len();
        n > 0 && n < ids.len()
    })
    .await;
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    let written = comments().len();
    assert!(written < ids.len(), "the listing finished before the kill");
    // the watermark moves only after a complete listing
    assert_eq!(watermark().unwrap(), baseline);

    env.sim.faults(|f| f.slow = Duration::ZERO);
    let (code, out, err) = run_binary(
        &["--config", cfg, "sync", "--only", "note_comments"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let mut per_uid: HashMap<String, usize> = HashMap::new();
    for (t, u, _) in comments() {
        assert_eq!(t, "note_comment.updated");
        *per_uid.entry(u).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(per_uid.get(id), Some(&1), "{id}: lost or doubled");
    }
    assert_eq!(per_uid.len(), ids.len());
    assert!(watermark().unwrap() > baseline);
    assert_table_mirrors(&env, Kind::NoteComments, "note_comments");
}

#[tokio::test]
async fn the_command_line_covers_the_jsonapi_collections() {
    let env = start_jsonapi(10).await;
    let jsonapi = format!(
        "[jsonapi]\nbase_url = \"{}\"\nrequests_per_second = 500.0\nburst = 50\n",
        env.sim.jsonapi_url()
    );
    let cfg = env.write_config(env.cfg.api.key.expose(), &jsonapi);
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = run_binary(&["--config", cfg, "check"], &[], env.dir.path()).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("JSON:API: ") && out.contains("projects: 2 records"),
        "{out}"
    );

    let (code, out, err) = run_binary(
        &["--config", cfg, "sync", "--only", "note_feeds"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("note_feeds") && out.contains("JSON:API requests"),
        "{out}"
    );
    env.sim
        .world(|w| w.jsonapi.set_status(Kind::NoteFeeds, 0, "resolved", now()));
    env.sim
        .world(|w| w.jsonapi.set_status(Kind::NoteFeeds, 1, "pending", now()));
    env.sim.faults(|f| f.jsonapi.refuse_since = true);
    let (code, out, err) = run_binary(
        &["--config", cfg, "sync", "--only", "note_feeds"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, _) = run_binary(
        &["--config", cfg, "events", "--type", "note_feed.*"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        out.contains("note on ") && out.contains("pending → resolved — Label 0"),
        "{out}"
    );
    let (code, out, _) = run_binary(&["--config", cfg, "status"], &[], env.dir.path()).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("on full listings since") && out.contains("Invalid filter"),
        "{out}"
    );

    // a wrong base URL is named; a JSON:API collection without the service is a config error
    let bad = env.write_config(
        env.cfg.api.key.expose(),
        &format!("[jsonapi]\nbase_url = \"{}/nowhere\"\n", env.sim.base_url()),
    );
    let (code, _, err) = run_binary(
        &["--config", bad.to_str().unwrap(), "check"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("jsonapi.base_url"), "{err}");
    let plain = env.write_config(env.cfg.api.key.expose(), "");
    let (code, _, err) = run_binary(
        &[
            "--config",
            plain.to_str().unwrap(),
            "sync",
            "--only",
            "entries",
        ],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("jsonapi.base_url"), "{err}");
}

#[tokio::test]
async fn jsonapi_projects_narrow_what_is_mirrored() {
    let mut env = start_jsonapi(10).await;
    let p0 = env.sim.world(|w| w.jsonapi.id(Kind::Projects, 0));
    env.cfg.jsonapi.as_mut().unwrap().projects = vec![p0.clone()];
    // comments follow the note feeds in the mirror: a cycle lists the feeds first
    sync_ok(&env).await;
    let in_p0 = |kind: Kind| -> HashMap<String, Value> {
        env.sim
            .world(|w| w.jsonapi.all(kind))
            .into_iter()
            .filter(|(_, v)| v["attributes"]["project_id"] == p0.as_str())
            .collect()
    };
    assert_eq!(
        rows(&env, "projects").into_keys().collect::<Vec<_>>(),
        vec![p0.clone()]
    );
    for (kind, table) in [
        (Kind::Datasets, "jsonapi_datasets"),
        (Kind::Entries, "entries"),
        (Kind::NoteFeeds, "note_feeds"),
        (Kind::ProjectMembers, "project_members"),
    ] {
        let want = in_p0(kind);
        assert!(!want.is_empty(), "{table}: nothing in the project");
        assert!(
            rows(&env, table) == want,
            "{table}: not the project's records"
        );
    }
    let feeds = in_p0(Kind::NoteFeeds);
    let want: HashMap<String, Value> = env
        .sim
        .world(|w| w.jsonapi.all(Kind::NoteComments))
        .into_iter()
        .filter(|(_, v)| {
            let feed = v["relationships"]["note_feed"]["data"]["id"]
                .as_str()
                .unwrap();
            feeds.contains_key(feed)
        })
        .collect();
    assert!(!want.is_empty());
    assert!(
        rows(&env, "note_comments") == want,
        "comments of other feeds kept"
    );
}

#[tokio::test]
async fn run_serves_the_jsonapi_collections_in_healthz_and_metrics() {
    let env = start_jsonapi(10).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = env.write_config(
        env.cfg.api.key.expose(),
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n[jsonapi]\nbase_url = \"{}\"\nrequests_per_second = 500.0\nburst = 50\n[jsonapi.schedule]\nnote_feeds = \"1s\"\n",
            env.sim.jsonapi_url()
        ),
    );
    let mut daemon = spawn_binary(&["--config", cfg.to_str().unwrap(), "run"]);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut body = serde_json::Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // every collection has its entry, and the note feeds have been listed
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/metrics")).send().await
            && r.text()
                .await
                .unwrap_or_default()
                .contains("resource=\"note_feeds\"")
        {
            body = http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for table in [
        "projects",
        "jsonapi_datasets",
        "entries",
        "note_feeds",
        "note_comments",
        "project_members",
        "datasets",
    ] {
        assert!(body["resources"][table].is_object(), "{table}: {body}");
    }
    // annotations are opt-in
    assert!(body["resources"]["annotations"].is_null(), "{body}");
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
}

#[tokio::test]
async fn a_full_listing_asks_for_its_pages_side_by_side() {
    let env = start_jsonapi(10).await;
    // every answer takes 50 ms: one page after another would have one in flight
    env.sim.faults(|f| f.latency = Duration::from_millis(50));
    let from = log_len(&env);
    env.sync_only(Resource::Entries).await;
    assert_table_mirrors(&env, Kind::Entries, "entries");
    let most = env.sim.faults(|f| f.max_in_flight);
    assert!(most >= 4, "at most {most} requests in flight");
    // 120 entries in pages of 10: each page once, and the empty 13th that ends it
    let pages: Vec<String> = requests_since(&env, from)
        .into_iter()
        .filter(|(p, _)| p == "/entries")
        .map(|(_, q)| q)
        .collect();
    assert_eq!(pages.len(), 13, "{pages:?}");
    let distinct: std::collections::HashSet<&String> = pages.iter().collect();
    assert_eq!(distinct.len(), 13, "a page asked for twice: {pages:?}");
}

#[tokio::test]
async fn a_server_that_caps_the_page_size_is_listed_to_the_end() {
    let env = start_jsonapi(10).await;
    // asked for 10 a page, it answers 4 (and says so only by its count)
    env.sim.faults(|f| f.jsonapi.max_page_size = Some(4));
    sync_ok(&env).await;
    assert_mirrors_the_simulator(&env);
    // page after page at its size, by key too
    let ids = edit_comments(&env, 9);
    sync_ok(&env).await;
    for id in ids {
        let text = comment(&env, &id);
        assert!(text.contains("edited"), "{id}: {text}");
    }
    assert_mirrors_the_simulator(&env);
}

#[tokio::test]
async fn a_record_stamped_2099_moves_no_watermark_past_the_clock() {
    let env = start_jsonapi(10).await;
    sync_ok(&env).await;
    // 2099-01-01: a clock gone wrong upstream
    env.sim.world(|w| {
        w.jsonapi
            .edit(Kind::NoteComments, 3, "from the future", 4_070_908_800)
    });
    sync_ok(&env).await;
    let watermark: String = env.store().with(|c| {
        c.query_row(
            "SELECT watermark FROM sync_state WHERE scope = 'note_comments'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    });
    assert!(watermark.as_str() < "2099", "{watermark}");
    // a later change is still seen by the next incremental listing
    let ids = edit_comments(&env, 1);
    sync_ok(&env).await;
    let text = comment(&env, &ids[0]);
    assert!(text.contains("edited 0"), "{text}");
}

/// The mirror's `raw` of note comment `id`.
fn comment(env: &TestEnv, id: &str) -> String {
    env.store().with(|c| {
        c.query_row("SELECT raw FROM note_comments WHERE uid = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
    })
}
