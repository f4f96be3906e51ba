//! `check`: the configuration is valid and the API answers; shows the rate-limit headers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::api::{Client, Priority, v1};
use crate::config::Config;
use crate::error::{ApiError, EXIT_OK};

/// Which part of the URL a 404 most likely points at.
fn not_found_hint(base: &reqwest::Url, what: &str) -> String {
    let path = base.path().trim_end_matches('/');
    if !path.ends_with("/api/v1") {
        format!(
            "api.base_url is {base} and its path does not end in /api/v1, as the API's does (https://api.avala.ai/api/v1)"
        )
    } else {
        format!(
            "the API answered 404 for the {what}: check the owner or organization names in [scope]"
        )
    }
}

/// `check` answers within this, whatever `api.timeout` and `api.max_retries` say:
/// a person is waiting for it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn check(cfg: Arc<Config>) -> anyhow::Result<u8> {
    println!("configuration: ok");
    // one attempt: an API that is down is reported at once, not after a retry ladder
    let mut api = cfg.api.clone();
    api.max_retries = 0;
    api.timeout = api.timeout.min(CHECK_TIMEOUT);
    let client = Client::new(&api).context("building the HTTP client")?;
    let (what, url) = match (cfg.scope.owners.first(), cfg.scope.organizations.first()) {
        (Some(o), _) => (format!("datasets of {o}"), v1::datasets_of_user(&client, o)),
        (None, Some(org)) => (
            format!("datasets of organization {org}"),
            v1::datasets_of_org(&client, org),
        ),
        _ => ("exports".to_string(), v1::exports(&client)),
    };
    let fetched = match within_check(
        &url,
        client.fetch(&url, Priority::High, |b| {
            serde_json::from_slice::<serde_json::Value>(b).map_err(|e| e.to_string())
        }),
    )
    .await
    {
        Ok(f) => f,
        Err(e @ ApiError::NotFound(_)) => {
            return Err(anyhow::Error::new(e).context(format!(
                "listing {what}: {}",
                not_found_hint(&cfg.api.base_url, &what)
            )));
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("listing {what}"))),
    };
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
    if let Some(j) = &cfg.jsonapi {
        check_jsonapi(&j.api).await?;
    }
    Ok(EXIT_OK)
}

/// `call`'s answer, or a timeout once [`CHECK_TIMEOUT`] has passed, whatever
/// the API asked to wait (a 429 with a long Retry-After, a slow body).
async fn within_check<T>(
    url: &reqwest::Url,
    call: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(CHECK_TIMEOUT, call).await {
        Ok(answer) => answer,
        Err(_) => Err(ApiError::Transport {
            endpoint: crate::api::client::endpoint(url),
            message: format!(
                "no answer within {} s (check waits no longer; the API may be rate limiting)",
                CHECK_TIMEOUT.as_secs()
            ),
        }),
    }
}

/// The JSON:API service answers: the projects it lists, by the count probe.
async fn check_jsonapi(api: &crate::config::ApiConfig) -> anyhow::Result<()> {
    let mut api = api.clone();
    api.max_retries = 0;
    api.timeout = api.timeout.min(CHECK_TIMEOUT);
    let client = Client::new(&api).context("building the JSON:API client")?;
    let url = crate::api::jsonapi::probe(&client, "projects", None);
    let count = within_check(
        &url,
        client.fetch(&url, Priority::High, |b| {
            crate::api::page::parse_document(b).map(|(page, _)| page.count)
        }),
    )
    .await
    .map_err(|e| {
        let hint = match e {
            ApiError::NotFound(_) => format!(
                "; is jsonapi.base_url ({}) the service's base, under which /projects is listed?",
                api.base_url
            ),
            _ => String::new(),
        };
        anyhow::Error::new(e).context(format!("listing the JSON:API projects{hint}"))
    })?
    .value;
    println!(
        "JSON:API: {} reachable; projects: {}",
        api.base_url,
        count.map_or("ok".into(), |n| format!("{n} records"))
    );
    Ok(())
}
