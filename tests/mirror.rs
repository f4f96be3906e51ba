//! The mirror against the simulator: equality, exact events, safe deletion.

mod common;

use std::collections::BTreeSet;

use common::*;

#[tokio::test]
async fn first_sync_mirrors_every_resource_silently() {
    for backend in backends() {
        let env = start_on(small_world(), backend).await;
        let reports = env.sync().await.unwrap();
        assert!(reports.iter().all(|r| r.failures.is_empty()), "{reports:?}");
        assert_mirror_equals_sim(&env);
        assert!(
            env.events().is_empty(),
            "{}: the first listing is a silent baseline",
            env.backend()
        );
    }
}

#[tokio::test]
async fn emit_initial_reports_the_baseline_as_created() {
    let mut env = start(small_world()).await;
    env.cfg.emit_initial = true;
    env.sync().await.unwrap();
    let events = env.events();
    let exports = events.iter().filter(|(t, _)| t == "export.created").count();
    assert_eq!(exports, 3);
    assert_eq!(
        events.iter().filter(|(t, _)| t == "item.created").count(),
        6 * 60
    );
}

#[tokio::test]
async fn second_sync_writes_exactly_the_expected_events() {
    for backend in backends() {
        let env = start_on(small_world(), backend).await;
        env.sync().await.unwrap();

        let (seq_uid, item_uid, gone_uid, dataset_uid, export_uid) = env.sim.world(|w| {
            let s = w.sequences_of(0)[0];
            w.sequences[s].status = "customer_review".into();
            w.set_item_status(1, 3, "customer_approved");
            w.delete_item(0, 5);
            let e = w.add_export();
            (
                w.sequences[s].uid.clone(),
                w.item_uid(1, 3),
                w.item_uid(0, 5),
                w.datasets[0].uid.clone(),
                w.exports[e].uid.clone(),
            )
        });
        let reports = env.sync().await.unwrap();
        assert!(reports.iter().all(|r| r.failures.is_empty()), "{reports:?}");

        let got: BTreeSet<(String, String)> = env.events().into_iter().collect();
        let want: BTreeSet<(String, String)> = [
            ("sequence.status_changed", seq_uid),
            ("item.status_changed", item_uid),
            ("item.deleted", gone_uid.clone()),
            // its item_count changed, its status did not
            ("dataset.updated", dataset_uid),
            ("export.created", export_uid),
        ]
        .into_iter()
        .map(|(t, u)| (t.to_string(), u))
        .collect();
        assert_eq!(got, want);
        assert_eq!(env.events().len(), 5, "no event twice");
        assert!(env.deleted_at("items", &gone_uid).is_some());
        assert_mirror_equals_sim(&env);

        // Nothing changed: nothing written, no events.
        let reports = env.sync().await.unwrap();
        for r in &reports {
            assert_eq!(
                (r.created, r.updated, r.status_changed, r.deleted),
                (0, 0, 0, 0),
                "{r:?}"
            );
        }
        assert_eq!(env.events().len(), 5);
    }
}

#[tokio::test]
async fn status_changed_event_carries_the_spec_document() {
    let env = start(small_world()).await;
    env.sync().await.unwrap();
    let (uid, old, new) = env.sim.world(|w| {
        let s = w.sequences_of(1)[0];
        let old = w.sequences[s].status.clone();
        let new = if old == "labeling_2d" {
            "review_2d"
        } else {
            "labeling_2d"
        };
        w.sequences[s].status = new.into();
        (w.sequences[s].uid.clone(), old, new)
    });
    env.sync().await.unwrap();
    let payload: String = env.store().with(|c| {
        c.query_row("SELECT payload FROM events WHERE uid = ?1", [&uid], |r| {
            r.get(0)
        })
        .unwrap()
    });
    let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(v["type"], "sequence.status_changed");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    let d = &v["data"];
    assert_eq!(
        (d["resource"].as_str(), d["uid"].as_str()),
        (Some("sequence"), Some(uid.as_str()))
    );
    assert_eq!(
        (d["owner"].as_str(), d["dataset_slug"].as_str()),
        (Some("johndoe"), Some("batch-002"))
    );
    assert_eq!(
        (d["old_status"].as_str(), d["new_status"].as_str()),
        (Some(old.as_str()), Some(new))
    );
    assert_eq!(d["object"]["uid"], uid.as_str());
}

#[tokio::test]
async fn interrupted_listing_deletes_nothing() {
    for backend in backends() {
        let env = start_on(small_world(), backend).await;
        env.sync().await.unwrap();
        let gone = env.sim.world(|w| {
            w.delete_item(0, 1);
            w.item_uid(0, 1)
        });
        // page 2 of batch-001's items fails for good: the listing never completes
        env.sim.faults(|f| {
            f.fail(
                "/datasets/johndoe/batch-001/items/",
                Some("cursor="),
                500,
                u32::MAX,
            )
        });
        let reports = env.sync().await.unwrap();
        let failures: Vec<_> = reports.iter().flat_map(|r| r.failures.clone()).collect();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].0, "items:johndoe/batch-001");
        assert!(
            env.deleted_at("items", &gone).is_none(),
            "an interrupted listing must delete nothing"
        );
        assert!(env.events().iter().all(|(t, _)| t != "item.deleted"));

        env.sim.faults(|f| f.rules.clear());
        env.sync().await.unwrap();
        assert!(env.deleted_at("items", &gone).is_some());
        assert!(env.events().contains(&("item.deleted".into(), gone)));
    }
}

#[tokio::test]
async fn listing_that_shifts_mid_way_deletes_nothing() {
    let mut env = start(small_world()).await;
    env.cfg.api.page_size = 4; // several pages of the cross-dataset sequence listing
    env.sync().await.unwrap();
    let before = env.rows("sequences").len();
    env.sim.faults(|f| f.shift_once = true);
    let reports = env.sync().await.unwrap();
    assert!(reports.iter().all(|r| r.failures.is_empty()));
    assert!(env.sim.faults(|f| !f.shift_once), "the shift happened");
    assert_eq!(env.rows("sequences").len(), before);
    assert!(env.events().is_empty(), "{:?}", env.events());
    assert_mirror_equals_sim(&env);
}

#[tokio::test]
async fn a_sequence_moved_to_another_dataset_is_updated_not_lost() {
    for backend in backends() {
        let env = start_on(small_world(), backend).await;
        env.sync().await.unwrap();
        let uid = env.sim.world(|w| {
            let s = w.sequences_of(2)[0];
            w.sequences[s].dataset = 3; // from johndoe/batch-003 to acme-ai/batch-001
            w.sequences[s].uid.clone()
        });
        env.sync().await.unwrap();
        assert!(env.deleted_at("sequences", &uid).is_none());
        let rows = env.rows("sequences");
        assert_eq!(rows[&uid].0.as_deref(), Some("acme-ai"));
        assert_eq!(rows[&uid].1.as_deref(), Some("batch-001"));
    }
}

#[tokio::test]
async fn deleted_dataset_is_confirmed_and_takes_its_rows_along() {
    for backend in backends() {
        let env = start_on(small_world(), backend).await;
        env.sync().await.unwrap();
        let uid = env.sim.world(|w| {
            w.datasets[1].deleted = true;
            w.datasets[1].uid.clone()
        });
        env.sync().await.unwrap();
        assert!(env.deleted_at("datasets", &uid).is_some());
        assert!(env.events().contains(&("dataset.deleted".into(), uid)));
        assert_mirror_equals_sim(&env);
    }
}

#[tokio::test]
async fn a_slug_taken_by_a_new_dataset_deletes_the_old_one_and_creates_the_new() {
    for backend in backends() {
        let env = start_on(small_world(), backend).await;
        env.sync().await.unwrap();
        let (old, slug, owner) = env.sim.world(|w| {
            let d = &mut w.datasets[1];
            d.deleted = true;
            (d.uid.clone(), d.slug.clone(), d.owner.clone())
        });
        let new = env.sim.world(|w| {
            let d = w.add_dataset(&owner, false, &slug, 7);
            w.datasets[d].uid.clone()
        });
        env.sync().await.unwrap();
        // the old one's GET by slug finds the new one: its slug says it is gone
        assert!(env.deleted_at("datasets", &old).is_some());
        assert!(env.deleted_at("datasets", &new).is_none());
        let events = env.events();
        let at = |e: (&str, &String)| {
            events
                .iter()
                .position(|(t, u)| t == e.0 && u == e.1)
                .unwrap_or_else(|| panic!("no {e:?} in {events:?}"))
        };
        assert!(at(("dataset.deleted", &old)) < at(("dataset.created", &new)));
        assert_mirror_equals_sim(&env);
    }
}

#[tokio::test]
async fn records_without_uid_of_the_wrong_shape_or_too_deep_are_skipped_and_counted() {
    let env = start(small_world()).await;
    env.sim.faults(|f| f.bad_records = true);
    let reports = env.sync().await.unwrap();
    let skipped: u64 = reports.iter().map(|r| r.skipped).sum();
    // four bad records on the first page of every listing of datasets, sequences,
    // items, slices, exports: no uid, a number uid, an array status, 1,001 levels deep
    assert!(skipped >= 40, "skipped {skipped}");
    assert!(reports.iter().all(|r| r.failures.is_empty()));
    let in_state: i64 = env.store().with(|c| {
        c.query_row("SELECT sum(skipped) FROM sync_state", [], |r| r.get(0))
            .unwrap()
    });
    assert!(in_state >= 40);
    // SQLite's JSON functions still work on every row of every table
    for table in ["datasets", "sequences", "items", "slices", "exports"] {
        env.store().with(|c| {
            c.query_row(
                &format!("SELECT count(raw->>'uid') FROM {table}"),
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_or_else(|e| panic!("{table}: {e}"))
        });
    }
    env.sim.faults(|f| f.bad_records = false);
    assert_mirror_equals_sim(&env);
}

#[tokio::test]
async fn forbidden_dataset_is_reported_and_others_go_on() {
    let env = start(small_world()).await;
    env.sim
        .faults(|f| f.fail("/datasets/johndoe/batch-002/items/", None, 403, u32::MAX));
    let reports = env.sync().await.unwrap();
    let failures: Vec<_> = reports.iter().flat_map(|r| r.failures.clone()).collect();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].1.contains("403"), "{failures:?}");
    let items = env.rows("items");
    assert_eq!(
        items
            .values()
            .filter(|r| r.1.as_deref() == Some("batch-002") && r.0.as_deref() == Some("johndoe"))
            .count(),
        0
    );
    assert_eq!(items.len(), 5 * 60);
}

#[tokio::test]
async fn full_listing_costs_one_request_per_page() {
    let mut world = small_world();
    world.items_per_dataset = 101;
    world.organizations.clear();
    world.datasets_per_owner = 1;
    let mut env = start(world).await;
    env.cfg.api.page_size = 25;
    env.cfg.scope.organizations.clear();
    let s = env.syncer();
    s.sync_resource(avala_mirror::config::Resource::Datasets)
        .await
        .unwrap();
    let before = env.sim.faults(|f| f.log.len());
    s.sync_resource(avala_mirror::config::Resource::Items)
        .await
        .unwrap();
    let requests = env.sim.faults(|f| f.log.len()) - before;
    assert_eq!(requests, 5, "ceil(101 / 25) pages, nothing else");
}
