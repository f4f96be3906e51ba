//! `check`: the configuration is valid and the API answers; shows the rate-limit headers.

use std::sync::Arc;

use anyhow::Context;

use crate::api::{Client, Priority, v1};
use crate::config::Config;
use crate::error::EXIT_OK;

pub async fn check(cfg: Arc<Config>) -> anyhow::Result<u8> {
    println!("configuration: ok");
    let client = Client::new(&cfg.api).context("building the HTTP client")?;
    let (what, url) = match (cfg.scope.owners.first(), cfg.scope.organizations.first()) {
        (Some(o), _) => (format!("datasets of {o}"), v1::datasets_of_user(&client, o)),
        (None, Some(org)) => (
            format!("datasets of organization {org}"),
            v1::datasets_of_org(&client, org),
        ),
        _ => ("exports".to_string(), v1::exports(&client)),
    };
    let fetched = client
        .fetch(&url, Priority::High, |b| {
            serde_json::from_slice::<serde_json::Value>(b).map_err(|e| e.to_string())
        })
        .await
        .with_context(|| format!("listing {what}"))?;
    let n = fetched.value.get("count").and_then(|c| c.as_u64());
    println!(
        "API: {} reachable; {what}: {}",
        cfg.api.base_url,
        n.map_or("ok".into(), |n| format!("{n} records"))
    );
    for h in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        let v = fetched
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(not sent)");
        println!("{h}: {v}");
    }
    Ok(EXIT_OK)
}
