//! Storage links use no proxy from the environment (SPEC §6): a proxy would be
//! where the connection goes, and the download guard must see the storage's
//! address. Alone in its binary: it sets process-wide variables.

mod common;

use avala_mirror::download::Downloader;
use common::*;

const PROXY_VARS: [&str; 5] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
];

#[tokio::test]
async fn storage_links_use_no_proxy_from_the_environment() {
    let mut env = start(small_world()).await;
    env.cfg.downloads.backfill = true;
    env.sync().await.unwrap();
    // a proxy that answers nothing, named the way curl and the clouds' tools read it
    let proxy = format!("http://{}", nothing_listens());
    let s = env.syncer();
    // SAFETY: the only test of this binary; the variables are read when a client is built
    unsafe {
        for var in PROXY_VARS {
            std::env::set_var(var, &proxy);
        }
    }
    let d = Downloader::new(&env.cfg, s.store, s.client).unwrap();
    unsafe {
        for var in PROXY_VARS {
            std::env::remove_var(var);
        }
    }
    let done = d.drain().await;
    assert_eq!(done.len(), 3);
    for f in done {
        assert!(f.result.is_ok(), "{f:?}");
    }
    let fetched = env
        .sim
        .faults(|f| f.storage.log.iter().filter(|l| l.status == 200).count());
    assert_eq!(fetched, 3, "the archives came straight from storage");
}
