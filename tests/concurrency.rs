//! Rate-bound, not latency-bound: scopes listed side by side under the one limiter,
//! against a simulator that takes its time to answer.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use avala_mirror::config::Resource;
use common::*;

/// Six datasets of 200 items in pages of 20: 60 item pages to crawl.
fn six_datasets() -> avala_mirror::sim::SimConfig {
    let mut world = small_world();
    world.organizations.clear();
    world.datasets_per_owner = 6;
    world.items_per_dataset = 200;
    world
}

async fn start_six(latency: Duration, concurrency: u32) -> TestEnv {
    let mut env = start(six_datasets()).await;
    env.cfg.scope.organizations.clear();
    env.cfg.api.page_size = 20;
    env.cfg.api.concurrency = concurrency;
    env.sim.faults(|f| f.latency = latency);
    env
}

#[tokio::test]
async fn requests_in_flight_and_the_rate_stay_within_their_bounds() {
    let mut env = start_six(Duration::from_millis(40), 3).await;
    env.cfg.api.requests_per_second = 40.0;
    env.cfg.api.burst = 4;
    let reports = env.sync().await.unwrap();
    assert!(reports.iter().all(|r| r.failures.is_empty()), "{reports:?}");
    let (most_at_once, most_in_a_second, requests) = env.sim.faults(|f| {
        (
            f.max_in_flight,
            f.max_in_window(Duration::from_secs(1)),
            f.log.len(),
        )
    });
    assert!(requests >= 60, "enough requests to measure: {requests}");
    assert_eq!(
        most_at_once, 3,
        "the server answered at most api.concurrency requests at once, and that many"
    );
    assert!(
        most_in_a_second <= 40 + 4,
        "{most_in_a_second} requests in one second (configured 40/s, burst 4)"
    );
    assert_mirror_equals_sim(&env);

    // the items alone: one listing per dataset, side by side
    env.sim.faults(|f| f.max_in_flight = 0);
    let report = env.syncer().sync_resource(Resource::Items).await.unwrap();
    assert_eq!(report.listed, 6 * 200);
    assert_eq!(
        env.sim.faults(|f| f.max_in_flight),
        3,
        "datasets listed side by side"
    );
}

#[tokio::test]
async fn a_rate_limit_storm_side_by_side_converges() {
    let mut env = start_six(Duration::from_millis(20), 8).await;
    env.cfg.api.requests_per_second = 12.0;
    env.cfg.api.burst = 4;
    env.cfg.api.page_size = 50;
    assert_a_rate_limit_storm_converges(&env, 6.0).await;
}

#[tokio::test]
async fn an_export_poll_overtakes_a_multi_dataset_item_crawl() {
    let mut env = start_six(Duration::from_millis(30), 4).await;
    // 120 pages at 20/s: the crawl runs for about 6 s
    env.cfg.api.requests_per_second = 20.0;
    env.cfg.api.burst = 1;
    env.cfg.api.page_size = 10;
    let s = env.syncer();
    s.sync_resource(Resource::Datasets).await.unwrap();
    let crawler = s.clone();
    let crawl = tokio::spawn(async move { crawler.sync_resource(Resource::Items).await });
    wait_until("the crawl to be under way on several datasets", || {
        env.sim.faults(|f| {
            let mut datasets: Vec<&str> = f
                .log
                .iter()
                .filter(|l| l.path.ends_with("/items/"))
                .map(|l| l.path.as_str())
                .collect();
            datasets.sort();
            datasets.dedup();
            f.log.len() >= 20 && datasets.len() >= 4
        })
    })
    .await;
    let exports_at = requests_ahead_of_an_export_poll(&env, &s).await;
    assert!(
        exports_at <= 4,
        "the export poll waited behind {exports_at} crawl requests, more than the 4 in flight"
    );
    assert!(!crawl.is_finished(), "the crawl was still going");
    crawl.await.unwrap().unwrap();
}

/// Events as a user reads them per scope: (resource, owner, dataset) → their
/// (type, uid, old status, new status) in detection order.
type ByScope = BTreeMap<(String, Option<String>, Option<String>), Vec<[Option<String>; 4]>>;

fn events_by_scope(env: &TestEnv) -> ByScope {
    env.store().with(|c| {
        let mut st = c
            .prepare(
                "SELECT resource, owner, dataset_slug, type, uid, old_status, new_status
                 FROM events ORDER BY seq",
            )
            .unwrap();
        let mut out = ByScope::new();
        let rows = st
            .query_map([], |r| {
                Ok((
                    (r.get(0)?, r.get(1)?, r.get(2)?),
                    [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?],
                ))
            })
            .unwrap();
        for row in rows {
            let (scope, event) = row.unwrap();
            out.entry(scope).or_default().push(event);
        }
        out
    })
}

#[tokio::test]
async fn side_by_side_gives_the_same_rows_and_events_as_one_at_a_time() {
    let mut world = small_world();
    world.datasets_per_owner = 4;
    world.items_per_dataset = 120;
    world.sequences_per_dataset = 12;
    world.slices_per_owner = 2;
    let mut one = start(world.clone()).await;
    let mut many = start(world).await;
    for (env, concurrency) in [(&mut one, 1), (&mut many, 8)] {
        env.cfg.api.concurrency = concurrency;
        env.cfg.api.page_size = 10;
        env.cfg.emit_initial = true;
    }
    many.sim.faults(|f| f.latency = Duration::from_millis(5));
    for round in 0..3 {
        if round > 0 {
            for env in [&one, &many] {
                env.sim.world(|w| {
                    for _ in 0..10 {
                        w.step();
                    }
                });
            }
        }
        for env in [&one, &many] {
            let reports = env.sync().await.unwrap();
            assert!(reports.iter().all(|r| r.failures.is_empty()), "{reports:?}");
            assert_mirror_equals_sim(env);
        }
        for table in ["datasets", "sequences", "items", "slices", "exports"] {
            let uids = |env: &TestEnv| {
                let mut u: Vec<String> = env.rows(table).into_keys().collect();
                u.sort();
                u
            };
            assert_eq!(uids(&one), uids(&many), "{table} after round {round}");
        }
        let (a, b) = (events_by_scope(&one), events_by_scope(&many));
        assert!(a.len() > 10, "events in many scopes: {a:?}");
        assert_eq!(a, b, "the same events, in the same order within each scope");
    }
    let requests = |env: &TestEnv| env.sim.faults(|f| f.max_in_flight);
    assert_eq!(requests(&one), 1);
    assert!(requests(&many) > 1, "the second mirror listed side by side");
}
