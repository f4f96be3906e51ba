//! Nothing the upstream sends stops the daemon (SPEC §6): a record whose typed
//! field has another type is skipped at ingest, and a failure reading or
//! writing the mirror fails that cycle alone; `run` goes on.

mod common;

use std::time::Duration;

use avala_mirror::config::Resource;
use avala_mirror::scheduler;
use avala_mirror::service::Health;
use common::*;
use tokio::sync::watch;

/// Listings of one dataset's items begun so far (their first pages).
fn item_listings(env: &TestEnv, slug: &str) -> usize {
    let path = format!("/johndoe/{slug}/items/");
    env.sim.faults(|f| {
        f.log
            .iter()
            .filter(|l| l.path.ends_with(&path) && !l.query.contains("cursor"))
            .count()
    })
}

/// `run` in-process over `env`, every resource on a short interval.
fn start_run(
    env: &mut TestEnv,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), avala_mirror::error::ApiError>>,
) {
    for every in env.cfg.schedule.values_mut() {
        *every = Duration::from_millis(150);
    }
    let syncer = env.syncer();
    let health = Health::new(&env.cfg);
    let (stop, stopped) = watch::channel(false);
    let daemon = tokio::spawn(scheduler::run(syncer, stopped, Some(health)));
    (stop, daemon)
}

#[tokio::test]
async fn a_dataset_of_the_wrong_types_is_skipped_and_run_keeps_mirroring() {
    let mut env = start(small_world()).await;
    // every listing of datasets, slices and exports carries a record with
    // "slug": 123, "is_sequence": "false", "name": 7, "download_url": 5
    env.sim.faults(|f| f.bad_records = true);
    let (stop, daemon) = start_run(&mut env);
    let before = item_listings(&env, "batch-002");
    wait_until("three more item cycles", || {
        item_listings(&env, "batch-002") >= before + 3 || daemon.is_finished()
    })
    .await;
    assert!(!daemon.is_finished(), "run stopped: {:?}", daemon.await);
    stop.send_replace(true);
    daemon.await.unwrap().unwrap();

    for table in ["datasets", "slices", "exports"] {
        assert!(
            !env.rows(table).contains_key("wrong-typed"),
            "{table} stored the wrong-typed record"
        );
        let skipped: i64 = env.store().with(|c| {
            c.query_row(
                "SELECT coalesce(sum(skipped), 0) FROM sync_state WHERE resource = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap()
        });
        // no uid, a number uid, an array status, too deep, and the wrong types
        assert!(skipped >= 5, "{table}: skipped {skipped}");
    }
    // every other dataset's items are mirrored
    env.sim.faults(|f| f.bad_records = false);
    let datasets = env.rows("datasets");
    assert_eq!(datasets.len(), env.sim.world(|w| w.datasets.len()));
    let items = env.rows("items");
    let per_dataset = env
        .sim
        .world(|w| (0..w.datasets.len()).map(|d| w.item_count(d)).sum::<u64>());
    assert_eq!(items.len() as u64, per_dataset);
}

#[tokio::test]
async fn a_mirror_that_fails_reads_and_writes_fails_those_cycles_and_run_goes_on() {
    let mut env = start(small_world()).await;
    env.cfg.scope.resources = vec![Resource::Datasets, Resource::Items, Resource::Exports];
    // the datasets table is gone: writing datasets fails, and so does reading
    // them to build the item listings
    drop(env.store()); // the mirror's tables, to hide one
    let db = env.cfg.store_path.clone();
    let hide = |from: &str, to: &str| {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(&format!("ALTER TABLE {from} RENAME TO {to}"))
            .unwrap();
    };
    hide("datasets", "datasets_away");
    let (stop, daemon) = start_run(&mut env);
    let exports = || {
        env.sim.faults(|f| {
            f.log
                .iter()
                .filter(|l| l.path.ends_with("/exports/"))
                .count()
        })
    };
    wait_until("three export cycles", || {
        exports() >= 3 || daemon.is_finished()
    })
    .await;
    assert!(!daemon.is_finished(), "run stopped: {:?}", daemon.await);
    // the failure is where `status` reads it, and the rest is mirrored
    let error: Option<String> = env.store().with(|c| {
        c.query_row(
            "SELECT last_error FROM sync_state WHERE scope = 'items'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    });
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("no such table")),
        "{error:?}"
    );
    assert_eq!(
        env.rows("exports").len(),
        env.sim.world(|w| w.exports.len())
    );
    // once the table is back, the next cycles converge
    hide("datasets_away", "datasets");
    let items = env
        .sim
        .world(|w| (0..w.datasets.len()).map(|d| w.item_count(d)).sum::<u64>());
    wait_until("items mirrored", || env.rows("items").len() as u64 == items).await;
    stop.send_replace(true);
    daemon.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_empty_complete_listing_holds_rowids_not_records() {
    let world = avala_mirror::sim::SimConfig {
        owners: vec!["johndoe".into()],
        organizations: vec![],
        datasets_per_owner: 1,
        items_per_dataset: 200_000,
        sequences_per_dataset: 0,
        slices_per_owner: 0,
        exports: 0,
        max_page_size: 1000,
        ..small_world()
    };
    let mut env = start(world).await;
    env.cfg.api.page_size = 1000;
    env.cfg.scope.organizations.clear();
    env.cfg.scope.resources = vec![Resource::Datasets, Resource::Items];
    env.sync().await.unwrap();
    assert_eq!(env.rows("items").len(), 200_000);
    // every listing answers empty and complete; every item still answers its GET
    env.sim.world(|w| w.truncate_item_listing(0, 0));
    let cfg = env.write_config("test-key-5f3a9c", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "organizations = [\"acme-ai\"]",
        "organizations = []\nresources = [\"datasets\", \"items\"]",
    );
    std::fs::write(&cfg, text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_avala-mirror"))
        .args(["--config", cfg.to_str().unwrap(), "sync", "--only", "items"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (status, peak) = exit_and_peak_rss(&mut child).await;
    assert_eq!(status.code(), Some(0));
    // nothing deleted: a sample of the checks found the items there
    assert_eq!(env.rows("items").len(), 200_000);
    // the records of 200,000 missing rows took over 100 MiB more; their rowids 2 MiB
    eprintln!("peak RSS of the empty listing: {peak} KiB");
    assert!(peak > 0 && peak < 64 * 1024, "peak RSS {peak} KiB");
}
