//! Faults from the API side: 429 storms, 5xx/reset/malformed storms, priorities.

mod common;

use std::time::Duration;

use avala_mirror::config::Resource;
use common::*;

#[tokio::test]
async fn rate_limit_storm_converges_without_exceeding_the_configured_rate() {
    let mut world = small_world();
    world.items_per_dataset = 40;
    world.organizations.clear();
    let mut env = start(world).await;
    env.cfg.scope.organizations.clear();
    env.cfg.api.requests_per_second = 8.0;
    env.cfg.api.burst = 4;
    assert_a_rate_limit_storm_converges(&env, 4.0).await;
}

#[tokio::test]
async fn configured_rate_is_never_exceeded() {
    let mut env = start(small_world()).await;
    env.cfg.api.requests_per_second = 20.0;
    env.cfg.api.burst = 5;
    env.cfg.api.page_size = 10;
    env.sync().await.unwrap();
    let (n, max) = env
        .sim
        .faults(|f| (f.log.len(), f.max_in_window(Duration::from_secs(1))));
    assert!(n > 30, "enough requests to measure: {n}");
    assert!(
        max <= 20 + 5,
        "{max} requests in one second (configured 20/s, burst 5)"
    );
}

#[tokio::test]
async fn error_reset_and_malformed_storm_converges() {
    let env = start(small_world()).await;
    env.sim.faults(|f| {
        f.error_rate = 0.2;
        f.reset_rate = 0.1;
        f.malformed_rate = 0.1;
    });
    let reports = env.sync().await.unwrap();
    assert!(reports.iter().all(|r| r.failures.is_empty()), "{reports:?}");
    let errors = env
        .sim
        .faults(|f| f.log.iter().filter(|l| l.status >= 500).count());
    assert!(errors > 0, "the storm happened");
    env.sim.faults(|f| {
        f.error_rate = 0.0;
        f.reset_rate = 0.0;
        f.malformed_rate = 0.0;
    });
    assert_mirror_equals_sim(&env);
}

#[tokio::test]
async fn persistent_5xx_fails_that_resource_and_others_go_on() {
    let env = start(small_world()).await;
    env.sim.faults(|f| f.fail("/exports/", None, 503, u32::MAX));
    let reports = env.sync().await.unwrap();
    let exports = reports
        .iter()
        .find(|r| r.resource == Some(Resource::Exports))
        .unwrap();
    assert_eq!(exports.failures.len(), 1);
    assert!(
        exports.failures[0].1.contains("503"),
        "{:?}",
        exports.failures
    );
    assert_eq!(env.rows("exports").len(), 0);
    assert_eq!(env.rows("items").len(), 6 * 60, "other resources went on");
}

#[tokio::test]
async fn export_poll_overtakes_an_item_crawl() {
    let mut world = small_world();
    world.items_per_dataset = 200;
    world.organizations.clear();
    world.datasets_per_owner = 1;
    let mut env = start(world).await;
    env.cfg.scope.organizations.clear();
    // a 40-page crawl, 4 s at 10/s: a slot of 100 ms leaves the export sync time
    // to read its state before its request, even on a loaded machine
    env.cfg.api.requests_per_second = 10.0;
    env.cfg.api.burst = 1;
    env.cfg.api.page_size = 5;
    let s = env.syncer();
    s.sync_resource(Resource::Datasets).await.unwrap();
    let crawler = s.clone();
    let crawl = tokio::spawn(async move { crawler.sync_resource(Resource::Items).await });
    // wait until the crawl is well under way
    while env.sim.faults(|f| f.log.len()) < 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exports_at = requests_ahead_of_an_export_poll(&env, &s).await;
    assert!(
        exports_at <= 1,
        "the export poll waited behind {exports_at} crawl pages"
    );
    assert!(!crawl.is_finished(), "the crawl was still going");
    crawl.await.unwrap().unwrap();
}

#[tokio::test]
async fn timeouts_are_retried() {
    let mut env = start(small_world()).await;
    env.cfg.api.timeout = Duration::from_millis(150);
    env.sim.faults(|f| f.slow = Duration::from_millis(600));
    let state = env.sim.state.clone();
    // the API recovers once it has kept two requests waiting past the timeout
    let recover = tokio::spawn(async move {
        loop {
            {
                let mut f = state.faults.lock().unwrap();
                if f.log.len() >= 2 {
                    f.slow = Duration::ZERO;
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let s = env.syncer();
    let reports = avala_mirror::commands::sync::cycle(&s, &env.cfg.scope.resources)
        .await
        .unwrap();
    recover.await.unwrap();
    assert!(reports.iter().all(|r| r.failures.is_empty()), "{reports:?}");
    assert!(
        s.client
            .stats
            .retries
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_mirror_equals_sim(&env);
}

#[tokio::test]
async fn an_endless_retry_after_waits_api_max_wait_only() {
    let mut world = small_world();
    world.organizations.clear();
    world.items_per_dataset = 20;
    let mut env = start(world).await;
    env.cfg.scope.organizations.clear();
    env.cfg.api.max_wait = Duration::from_millis(300);
    env.cfg.api.requests_per_second = 50.0;
    // 31 years, as a broken or hostile server might say
    env.sim.faults(|f| {
        f.rate_limit = Some((10.0, 2));
        f.retry_after_secs = 999_999_999;
    });
    let reports = tokio::time::timeout(Duration::from_secs(60), env.sync())
        .await
        .expect("the sync ended instead of waiting 31 years")
        .unwrap();
    assert!(reports.iter().all(|r| r.failures.is_empty()), "{reports:?}");
    assert!(
        env.sim.faults(|f| f.log.iter().any(|l| l.status == 429)),
        "the storm happened"
    );
    env.sim.faults(|f| f.rate_limit = None);
    assert_mirror_equals_sim(&env);
}

#[tokio::test]
async fn status_shows_a_pause_the_api_asked_for() {
    let env = start(small_world()).await;
    // every request answers 429 "come back in 31 years": capped at api.max_wait
    env.sim.faults(|f| {
        f.rate_limit = Some((0.001, 1));
        f.retry_after_secs = 999_999_999;
    });
    let cfg = env.write_config("test-key-5f3a9c", "");
    let cfg = cfg.to_str().unwrap();
    let toml = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, toml.replace("[api]\n", "[api]\nmax_wait = \"2m\"\n")).unwrap();
    let mut daemon = spawn_binary(&["--config", cfg, "run"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let (code, out, err) =
            run_binary(&["--config", cfg, "status", "--json"], &[], env.dir.path()).await;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if let Some(until) = v["api_paused_until"].as_str() {
            assert!(code == 0 || code == 1, "{err}");
            break until.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pause shown: {out}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let until = humantime::parse_rfc3339(&shown).unwrap();
    let ahead = until.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        ahead > Duration::from_secs(60) && ahead <= Duration::from_secs(121),
        "{shown}"
    );
    let (_, out, _) = run_binary(&["--config", cfg, "status"], &[], env.dir.path()).await;
    assert!(
        out.contains("the API asked for a pause: requests wait until"),
        "{out}"
    );
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
}
