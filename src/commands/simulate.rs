//! `simulate`: the built-in API simulator alone, until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use crate::sim::{SimConfig, Simulator};

pub async fn simulate(
    cfg: SimConfig,
    listen: SocketAddr,
    tick: Duration,
    latency: Duration,
) -> anyhow::Result<()> {
    let key = cfg.api_key.clone();
    let (owners, orgs) = (cfg.owners.join(","), cfg.organizations.join(","));
    let sim = Simulator::start(cfg, listen, (!tick.is_zero()).then_some(tick)).await?;
    sim.faults(|f| f.latency = latency);
    println!("Avala API simulator on {}", sim.base_url());
    if !latency.is_zero() {
        println!(
            "  every answer takes {}",
            humantime::format_duration(latency)
        );
    }
    println!(
        "  JSON:API service (projects, entries, notes…) on {}",
        sim.jsonapi_url()
    );
    println!("  export archives served from http://{}", sim.storage_addr);
    println!("  key:   X-Avala-Api-Key: {key}");
    println!(
        "  try:   curl -H 'X-Avala-Api-Key: {key}' {}/exports/",
        sim.base_url()
    );
    println!(
        "  mirror it with: AVALA_API_KEY={key} AVALA_MIRROR__API__BASE_URL={} AVALA_MIRROR__SCOPE__OWNERS={owners} AVALA_MIRROR__SCOPE__ORGANIZATIONS={orgs} AVALA_MIRROR__JSONAPI__BASE_URL={} avala-mirror sync",
        sim.base_url(),
        sim.jsonapi_url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
