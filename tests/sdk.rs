//! The official `avala` SDK (PyPI), unchanged, against `serve` and against the
//! simulator it mirrors: the same script sees the same records. Skipped, with a
//! note, where Python or the SDK is missing (`.ci/run` installs the SDK).

mod common;

use common::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/list_everything.py");

fn sdk_here() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import avala"])
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn list_everything(base_url: &str, key: &str) -> serde_json::Value {
    let out = tokio::process::Command::new("python3")
        .args([SCRIPT, "7"])
        .env("AVALA_BASE_URL", base_url)
        .env("AVALA_API_KEY", key)
        .env("AVALA_ALLOW_INSECURE_BASE_URL", "true")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK script failed against {base_url}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test]
async fn a_script_on_the_official_sdk_sees_the_same_account_through_serve() {
    if !sdk_here() {
        eprintln!("SKIPPED: python3 with the `avala` SDK is not here (pip install avala)");
        return;
    }
    let env = start(small_world()).await;
    env.sync().await.unwrap();
    let (addr, _task) = avala_mirror::serve::start(
        avala_mirror::serve::Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            keys: None,
            max_connections: 16,
            organizations: vec!["acme-ai".into()],
        },
        &env.cfg.store_path,
    )
    .await
    .unwrap();
    let upstream = list_everything(
        env.sim.base_url().as_str().trim_end_matches('/'),
        "test-key-5f3a9c",
    )
    .await;
    // any key: serve has no client keys configured, and never wants the upstream one
    let served = list_everything(&format!("http://{addr}/api/v1"), "not-the-upstream-key").await;
    for (what, least) in [
        ("datasets", 6),
        ("items", 300),
        ("sequences", 5),
        ("exports", 3),
    ] {
        let n = upstream[what].as_array().unwrap().len();
        assert!(n >= least, "{what}: {n}");
    }
    assert_eq!(upstream, served);
}
