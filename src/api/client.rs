//! The only place that sends the API key: reqwest (no redirects) + the shared pacer
//! + retries with jittered exponential backoff. Every request goes through `fetch`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::BackoffBuilder;
use bytes::Bytes;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};

use super::pace::{Pacer, Priority, parse_reset};
use crate::config::{ApiConfig, ApiKey};
use crate::error::ApiError;
use crate::metrics::METRICS;

pub const KEY_HEADER: &str = "X-Avala-Api-Key";
/// 429s are not failures of the server; they get their own, larger allowance.
const MAX_RATE_LIMITED: u32 = 30;

pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: ApiKey,
    pacer: Pacer,
    cfg: ApiConfig,
    /// Pages fetched ahead of the writer, over every listing using this client.
    pub pages: super::page::PageBudget,
    pub stats: ClientStats,
}

#[derive(Default)]
pub struct ClientStats {
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
    pub retries: AtomicU64,
}

/// What a successful GET returned: the body and the rate-limit headers seen.
pub struct Fetched<T> {
    pub value: T,
    pub headers: HeaderMap,
}

impl Client {
    pub fn new(cfg: &ApiConfig) -> Result<Arc<Client>, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("avala-mirror/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut base = cfg.base_url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Arc::new(Client {
            http,
            base,
            key: cfg.key.clone(),
            pacer: Pacer::new(
                cfg.requests_per_second,
                cfg.burst,
                cfg.concurrency,
                cfg.max_wait,
            ),
            cfg: cfg.clone(),
            pages: Default::default(),
            stats: ClientStats::default(),
        }))
    }

    pub fn page_size(&self) -> u32 {
        self.cfg.page_size
    }

    /// Requests in flight at most (`api.concurrency`).
    pub fn concurrency(&self) -> usize {
        self.cfg.concurrency as usize
    }

    /// The base URL plus path segments (each percent-encoded, a trailing slash
    /// added as the API expects) and query parameters.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("http(s) base URL");
            path.pop_if_empty().extend(segments).push("");
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// The base URL plus path segments, without the trailing slash (the JSON:API
    /// service's paths have none), and query parameters.
    pub fn url_exact(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("http(s) base URL")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Takes over the pause the API asked `old` for: a reload must not send
    /// what the API said to hold back (both clients are of the same service).
    pub fn keep_pause_of(&self, old: &Client) {
        if old.base.origin() == self.base.origin() {
            self.pacer.pause_until(old.pacer.paused_until());
        }
    }

    /// The key goes only to the API's own scheme, host and port.
    pub fn is_api_host(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    /// GET `url` as JSON, parsed by `parse`; retries what can be retried.
    pub async fn fetch<T>(
        &self,
        url: &Url,
        prio: Priority,
        parse: impl Fn(&Bytes) -> Result<T, String>,
    ) -> Result<Fetched<T>, ApiError> {
        if !self.is_api_host(url) {
            return Err(ApiError::ForeignHost(endpoint(url)));
        }
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(self.cfg.backoff_min)
            .with_max_delay(self.cfg.backoff_max)
            .with_jitter()
            .with_max_times(self.cfg.max_retries as usize)
            .build();
        let (mut attempts, mut limited) = (0u32, 0u32);
        loop {
            attempts += 1;
            let waited = std::time::Instant::now();
            let in_flight = self.pacer.acquire(prio).await;
            METRICS.limiter_wait.inc_by(waited.elapsed().as_secs_f64());
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = self.once(url, None, &parse).await;
            drop(in_flight);
            let err = match outcome {
                Ok(ok) => {
                    self.pacer.on_success();
                    return Ok(ok);
                }
                Err(Attempt::RateLimited(retry_after)) => {
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    METRICS.api_rate_limited.inc();
                    self.pacer.on_rate_limited(retry_after);
                    limited += 1;
                    if limited <= MAX_RATE_LIMITED {
                        tracing::debug!(endpoint = %endpoint(url), ?retry_after, "429, waiting");
                        continue;
                    }
                    ApiError::Status {
                        status: 429,
                        endpoint: endpoint(url),
                        body: "still rate limited".into(),
                    }
                }
                Err(Attempt::Failed(e)) => e,
            };
            if !err.is_retryable() {
                return Err(err);
            }
            match backoff.next() {
                Some(delay) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(endpoint = %endpoint(url), attempt = attempts, ?delay, "retrying: {err}");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    return Err(ApiError::RetriesExhausted {
                        endpoint: endpoint(url),
                        attempts,
                        last: Box::new(err),
                    });
                }
            }
        }
    }

    /// POST a JSON body (creating something): not retried, since the server may have
    /// acted on it, except after a 429, which says it did not.
    pub async fn post<T>(
        &self,
        url: &Url,
        body: &serde_json::Value,
        parse: impl Fn(&Bytes) -> Result<T, String>,
    ) -> Result<T, ApiError> {
        if !self.is_api_host(url) {
            return Err(ApiError::ForeignHost(endpoint(url)));
        }
        for _ in 0..=MAX_RATE_LIMITED {
            let in_flight = self.pacer.acquire(Priority::High).await;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = self.once(url, Some(body), &parse).await;
            drop(in_flight);
            match outcome {
                Ok(ok) => return Ok(ok.value),
                Err(Attempt::RateLimited(retry_after)) => {
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    METRICS.api_rate_limited.inc();
                    self.pacer.on_rate_limited(retry_after);
                }
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(ApiError::Status {
            status: 429,
            endpoint: endpoint(url),
            body: "still rate limited".into(),
        })
    }

    async fn once<T>(
        &self,
        url: &Url,
        body: Option<&serde_json::Value>,
        parse: &impl Fn(&Bytes) -> Result<T, String>,
    ) -> Result<Fetched<T>, Attempt> {
        let ep = || endpoint(url);
        let req = match body {
            Some(b) => self.http.post(url.clone()).json(b),
            None => self.http.get(url.clone()),
        };
        let count = |status: String| {
            let labels = vec![("endpoint", self.endpoint_label(url)), ("status", status)];
            METRICS.api_requests.get_or_create(&labels).inc();
        };
        let resp = req
            .header(KEY_HEADER, self.key.expose())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| {
                count("error".into());
                Attempt::Failed(transport(ep(), e))
            })?;
        let status = resp.status();
        count(status.as_u16().to_string());
        let headers = resp.headers().clone();
        self.observe_rate_headers(&headers);
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Attempt::RateLimited(retry_after(&headers)));
        }
        if status.is_redirection() {
            return Err(Attempt::Failed(ApiError::Redirect {
                status: status.as_u16(),
                endpoint: ep(),
            }));
        }
        let body = self.body(resp, ep).await.map_err(Attempt::Failed)?;
        let err = match status.as_u16() {
            200..=299 => {
                return parse(&body)
                    .map(|value| Fetched { value, headers })
                    .map_err(|message| {
                        Attempt::Failed(ApiError::Malformed {
                            endpoint: ep(),
                            message,
                        })
                    });
            }
            401 => ApiError::Unauthorized(ep()),
            403 => ApiError::Forbidden(ep()),
            404 => ApiError::NotFound(ep()),
            s => ApiError::Status {
                status: s,
                endpoint: ep(),
                body: snippet(&body),
            },
        };
        Err(Attempt::Failed(err))
    }

    /// The whole body, up to `api.max_response_bytes`: a larger one (announced, or
    /// as it streams in) is refused before it is held in memory.
    async fn body(
        &self,
        mut resp: reqwest::Response,
        ep: impl Fn() -> String,
    ) -> Result<Bytes, ApiError> {
        let limit = self.cfg.max_response_bytes;
        let too_large = || ApiError::TooLarge {
            endpoint: ep(),
            limit,
        };
        let announced = resp.content_length().unwrap_or(0);
        if announced > limit {
            return Err(too_large());
        }
        let mut body = bytes::BytesMut::with_capacity(announced as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport(ep(), e))? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// The endpoint as a metric label: the path under the base URL, with every
    /// value (owner, slug, uid) replaced by `*` so the label set stays small.
    fn endpoint_label(&self, url: &Url) -> String {
        const WORDS: [&str; 13] = [
            "datasets",
            "list",
            "organizations",
            "sequences",
            "items",
            "slices",
            "exports",
            "projects",
            "entries",
            "annotations",
            "note_feeds",
            "note_comments",
            "project_members",
        ];
        let path = url
            .path()
            .strip_prefix(self.base.path())
            .unwrap_or(url.path());
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(|s| if WORDS.contains(&s) { s } else { "*" })
            .collect::<Vec<_>>()
            .join("/")
    }

    fn observe_rate_headers(&self, h: &HeaderMap) {
        let num = |name: &str| h.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let reset = h
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_reset(v, now));
        self.pacer.on_headers(
            num("x-ratelimit-limit"),
            num("x-ratelimit-remaining"),
            reset,
        );
    }
}

enum Attempt {
    RateLimited(Option<Duration>),
    Failed(ApiError),
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        // saturating: a hostile 1e30 is a long wait (capped by the pacer), not a panic
        return (secs >= 0.0).then(|| Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
    }
    let at = httpdate(v)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate(v: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v).ok().or_else(|| {
        // IMF-fixdate, e.g. "Wed, 21 Oct 2015 07:28:00 GMT"
        let parts: Vec<&str> = v.split_whitespace().collect();
        let [_, day, mon, year, time, "GMT"] = parts.as_slice() else {
            return None;
        };
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let m = MONTHS.iter().position(|x| x == mon)? + 1;
        humantime::parse_rfc3339_weak(&format!("{year}-{m:02}-{day:0>2} {time}")).ok()
    })
}

/// A response body as one JSON value (the parser for single-object endpoints).
pub fn json_value(body: &Bytes) -> Result<serde_json::Value, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Scheme, host and path of a URL: enough to name an endpoint, nothing that could be a secret.
pub fn endpoint(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or("?"),
        url.path()
    )
}

fn transport(endpoint: String, e: reqwest::Error) -> ApiError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "connection broke while reading the body"
    } else {
        "request failed"
    };
    let mut message = kind.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    ApiError::Transport { endpoint, message }
}

/// What an error body says: a JSON:API error document's titles and details, else
/// its first 200 bytes.
fn snippet(body: &[u8]) -> String {
    if let Some(text) = super::jsonapi::error_text(body) {
        return text.chars().take(500).collect();
    }
    let s = String::from_utf8_lossy(&body[..body.len().min(200)]);
    s.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        // absurd values are long waits for the pacer to cap, never a panic
        h.insert(RETRY_AFTER, "100000000000000000000000".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::MAX));
        h.insert(RETRY_AFTER, "inf".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::MAX));
        h.insert(
            RETRY_AFTER,
            "Fri, 31 Dec 9999 23:59:59 GMT".parse().unwrap(),
        );
        assert!(retry_after(&h).unwrap() > Duration::from_secs(86_400 * 365 * 1000));
    }

    #[test]
    fn endpoint_drops_query() {
        let u = Url::parse("https://api.avala.ai/api/v1/exports/?cursor=abc&sig=secret").unwrap();
        assert_eq!(endpoint(&u), "https://api.avala.ai/api/v1/exports/");
    }
}
