//! One bad scope fails alone: a forbidden dataset in a batch, a record moving
//! between datasets, a listing that suddenly misses most of its rows.

mod common;

use avala_mirror::config::Resource;
use common::*;

/// The world's datasets of `johndoe`, as (index, slug).
fn johndoe_datasets(env: &TestEnv) -> Vec<(usize, String)> {
    env.sim.world(|w| {
        w.datasets
            .iter()
            .enumerate()
            .filter(|(_, d)| d.owner == "johndoe" && !d.deleted)
            .map(|(i, d)| (i, d.slug.clone()))
            .collect()
    })
}

#[tokio::test]
async fn a_forbidden_dataset_in_a_sequence_batch_fails_alone() {
    let env = start(small_world()).await;
    let datasets = johndoe_datasets(&env);
    let forbidden = datasets[1].1.clone();
    env.sim.faults(|f| {
        // the batch answers 403 because of one slug in it, and so does that dataset
        f.fail("/datasets/johndoe/sequences/", None, 403, u32::MAX);
        f.fail(
            &format!("/datasets/johndoe/{forbidden}/sequences/"),
            None,
            403,
            u32::MAX,
        );
    });
    let reports = env.sync().await.unwrap();
    let sequences = reports
        .iter()
        .find(|r| r.resource == Some(Resource::Sequences))
        .unwrap();
    let failed: Vec<&str> = sequences.failures.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        failed,
        vec![format!("sequences:johndoe/{forbidden}")],
        "{:?}",
        sequences.failures
    );
    let rows = env.rows("sequences");
    for (_, slug) in &datasets {
        let n = rows
            .values()
            .filter(|(o, s, _)| {
                o.as_deref() == Some("johndoe") && s.as_deref() == Some(slug.as_str())
            })
            .count();
        if *slug == forbidden {
            assert_eq!(n, 0);
        } else {
            assert_eq!(n, 5, "the sequences of {slug}");
        }
    }
}

#[tokio::test]
async fn a_record_moving_between_datasets_is_one_updated_event_whatever_the_order() {
    for concurrency in [1, 8] {
        for forward in [true, false] {
            let mut env = start(small_world()).await;
            env.cfg.api.concurrency = concurrency;
            // per-dataset sequence listings, in whatever order they run
            env.sim
                .faults(|f| f.fail("/datasets/johndoe/sequences/", None, 400, u32::MAX));
            env.sync().await.unwrap();
            let datasets = johndoe_datasets(&env);
            let (from, to) = if forward { (0, 2) } else { (2, 0) };
            let (uid, from_slug, to_slug) = env.sim.world(|w| {
                let s = w.sequences_of(datasets[from].0)[0];
                w.sequences[s].dataset = datasets[to].0;
                (
                    w.sequences[s].uid.clone(),
                    datasets[from].1.clone(),
                    datasets[to].1.clone(),
                )
            });
            let before = env.events().len();
            let reports = env.sync().await.unwrap();
            assert!(reports.iter().all(|r| r.hard_failures == 0), "{reports:?}");
            let events: Vec<(String, String)> = env.events()[before..].to_vec();
            assert_eq!(
                events,
                vec![("sequence.updated".to_string(), uid.clone())],
                "concurrency {concurrency}, from {from_slug} to {to_slug}"
            );
            let payload: serde_json::Value = env.store().with(|c| {
                let p: String = c
                    .query_row(
                        "SELECT payload FROM events ORDER BY seq DESC LIMIT 1",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                serde_json::from_str(&p).unwrap()
            });
            assert_eq!(payload["data"]["dataset_slug"], to_slug.as_str());
            assert_eq!(payload["data"]["old_dataset_slug"], from_slug.as_str());
            assert_eq!(payload["data"]["old_owner"], "johndoe");
            assert!(env.deleted_at("sequences", &uid).is_none());
            assert_mirror_equals_sim(&env);
        }
    }
}

#[tokio::test]
async fn a_listing_that_suddenly_misses_most_rows_costs_a_few_checks() {
    let env = start(small_world()).await;
    env.sync().await.unwrap();
    let (ds, slug) = johndoe_datasets(&env)[0].clone();
    // the server's item listing of one dataset comes back with 5 of its 60 items
    // (a truncated listing), while every item is still there to GET
    env.sim.world(|w| w.truncate_item_listing(ds, 5));
    let before = env.sim.faults(|f| f.log.len());
    let report = env.syncer().sync_resource(Resource::Items).await.unwrap();
    assert_eq!(report.deleted, 0);
    let checks = env.sim.faults(|f| {
        f.log[before..]
            .iter()
            .filter(|l| {
                l.path
                    .starts_with(&format!("/datasets/johndoe/{slug}/items/"))
                    && l.path.len() > format!("/datasets/johndoe/{slug}/items/").len()
            })
            .count()
    });
    assert!(
        (20..=20 + 8).contains(&checks),
        "{checks} deletion checks for 55 rows missing from a listing that was wrong"
    );
    assert_eq!(env.rows("items").len(), 6 * 60, "nothing was deleted");
}

#[tokio::test]
async fn a_slice_membership_is_relisted_even_when_its_record_is_unchanged() {
    let mut env = start(small_world()).await;
    // relisted at least every 6 intervals: 600 ms here
    env.cfg
        .schedule
        .insert(Resource::Slices, std::time::Duration::from_millis(100));
    env.sync().await.unwrap();
    // a second later the membership is listed again (the slice was seen in the
    // second it was last listed), and from then on only its age relists it
    pause(1100).await;
    env.sync().await.unwrap();
    // a member changed upstream in a way the slice record does not show
    let slice = env.rows("slices").into_keys().next().unwrap();
    let removed = env.store().with(|c| {
        c.execute(
            "DELETE FROM slice_items WHERE slice_uid = ?1
             AND item_uid = (SELECT min(item_uid) FROM slice_items WHERE slice_uid = ?1)",
            [&slice],
        )
        .unwrap()
    });
    assert_eq!(removed, 1);
    // past 6 intervals (the mirror's clock counts whole seconds)
    pause(1600).await;
    env.sync().await.unwrap();
    assert_mirror_equals_sim(&env);
}

/// Lets `ms` of the mirror's clock pass.
async fn pause(ms: u64) {
    let since = std::time::Instant::now();
    let wait = std::time::Duration::from_millis(ms);
    wait_until("time to pass", || since.elapsed() > wait).await;
}
