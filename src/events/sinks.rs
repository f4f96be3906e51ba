//! The sinks: where an event goes and how. Webhooks follow Standard Webhooks
//! (webhook-id = event id, webhook-timestamp, v1 HMAC-SHA256 signature).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Url;
use sha2::Sha256;

use crate::config::{SinkConfig, is_loopback};
use crate::store::events::{Event, describe};

pub enum Target {
    /// One JSON line per event on stdout (journald).
    Log,
    /// Appended JSONL; opened per batch, so logrotate's rename is picked up.
    File(PathBuf),
    Webhook {
        url: Url,
        key: Option<Vec<u8>>,
    },
    Slack(Url),
}

pub struct Sink {
    pub name: String,
    /// See [`SinkConfig`]: where a new sink starts, and the name it had before.
    pub from_start: bool,
    pub legacy_name: Option<String>,
    pub target: Target,
    /// Event type globs (`*` matches any run of characters).
    pub filters: Vec<String>,
}

/// Why a send did not deliver.
#[derive(Debug)]
pub enum SendError {
    /// Try again later (no sooner than `after` when the receiver said so).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// 410 Gone: the receiver asks us to stop; the sink is disabled.
    Gone,
}

impl Sink {
    /// Builds a sink from its validated config; reads `secret_file`.
    /// A sink from its configuration; a problem is a configuration error,
    /// named by its key path.
    pub fn from_config(c: &SinkConfig) -> Result<Sink, crate::error::ConfigError> {
        Sink::build(c).map_err(|problem| crate::error::ConfigError(vec![problem]))
    }

    fn build(c: &SinkConfig) -> Result<Sink, String> {
        let key = |name: &str| format!("sinks[{}].{name}", c.name);
        let url = || -> Result<Url, String> {
            let raw = c.url.as_deref().unwrap_or_default();
            let url = Url::parse(raw).map_err(|e| format!("{}: {e}", key("url")))?;
            if url.scheme() != "https" && !(url.scheme() == "http" && is_loopback(&url)) {
                return Err(format!(
                    "{}: use https:// (plain http only for loopback)",
                    key("url")
                ));
            }
            Ok(url)
        };
        let target = match c.kind.as_str() {
            "log" => Target::Log,
            "file" => Target::File(c.path.clone().ok_or_else(|| key("path"))?),
            "slack" => Target::Slack(url()?),
            "webhook" => {
                let secret = match (&c.secret, &c.secret_file) {
                    (Some(s), _) => Some(s.trim().to_string()),
                    (None, Some(f)) => Some(
                        std::fs::read_to_string(f)
                            .map_err(|e| {
                                format!("{}: cannot read {}: {e}", key("secret_file"), f.display())
                            })?
                            .trim()
                            .to_string(),
                    ),
                    (None, None) => None,
                };
                let key = match secret {
                    Some(s) => Some(
                        s.strip_prefix("whsec_")
                            .and_then(|b| B64.decode(b).ok())
                            .ok_or_else(|| {
                                format!("{}: must be whsec_ followed by base64", key("secret"))
                            })?,
                    ),
                    None => None,
                };
                Target::Webhook { url: url()?, key }
            }
            other => return Err(format!("{}: unknown sink type {other}", key("type"))),
        };
        Ok(Sink {
            name: c.name.clone(),
            from_start: c.from_start,
            legacy_name: c.legacy_name.clone(),
            target,
            filters: c.events.clone(),
        })
    }

    pub fn wants(&self, event_type: &str) -> bool {
        self.filters.iter().any(|g| glob(g, event_type))
    }

    /// Sends one event.
    pub async fn send(&self, http: &reqwest::Client, e: &Event) -> Result<(), SendError> {
        match &self.target {
            Target::Log => {
                println!("{}", e.payload);
                Ok(())
            }
            Target::File(path) => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|err| retry(format!("opening {}: {err}", path.display())))?;
                writeln!(f, "{}", e.payload)
                    .map_err(|err| retry(format!("writing {}: {err}", path.display())))
            }
            Target::Webhook { url, key } => {
                let ts = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut req = http
                    .post(url.clone())
                    .header("content-type", "application/json")
                    .header("webhook-id", &e.id)
                    .header("webhook-timestamp", ts.to_string());
                if let Some(key) = key {
                    req = req.header("webhook-signature", sign(key, &e.id, ts, &e.payload));
                }
                post(req.body(e.payload.clone())).await
            }
            Target::Slack(url) => {
                let text = serde_json::json!({ "text": describe(e) }).to_string();
                post(
                    http.post(url.clone())
                        .header("content-type", "application/json")
                        .body(text),
                )
                .await
            }
        }
    }
}

/// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

fn retry(error: String) -> SendError {
    SendError::Retry { error, after: None }
}

/// Any 2xx delivers; 410 disables; 429/502/504 honour Retry-After; the rest retry.
/// The response body is never read.
async fn post(req: reqwest::RequestBuilder) -> Result<(), SendError> {
    let resp = req
        .send()
        .await
        .map_err(|e| retry(format!("request failed: {}", e.without_url())))?;
    let status = resp.status().as_u16();
    let after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    match status {
        200..=299 => Ok(()),
        410 => Err(SendError::Gone),
        429 | 502 | 504 => Err(SendError::Retry {
            error: format!("HTTP {status}"),
            after,
        }),
        _ => Err(retry(format!("HTTP {status}"))),
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "sequence.created"));
        assert!(glob("export.*", "export.downloaded"));
        assert!(!glob("export.*", "exports.created"));
        assert!(glob("*.status_changed", "sequence.status_changed"));
        assert!(glob("sequence.status_changed", "sequence.status_changed"));
        assert!(!glob("sequence.*d", "sequence.created2"));
        assert!(glob("s*e*d", "sequence.created"));
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // from the Standard Webhooks specification's reference test vector
        let key = B64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
