//! Fault knobs of the simulator: random errors, connection resets, malformed pages,
//! slow pages, a server-side rate limit answering 429 with Retry-After, scripted
//! failures, records without uid, a listing that shifts under the client, and a
//! round-trip latency. Every request is logged, and the requests in flight are
//! counted, so tests can measure what the client really sent.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct FailRule {
    /// Fails requests whose path contains this…
    pub path_contains: String,
    /// …and whose query contains this (e.g. `page=2`), when set.
    pub query_contains: Option<String>,
    pub status: u16,
    /// How many times; `u32::MAX` for always.
    pub times: u32,
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
}

/// What to do with one request, decided up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Serve,
    Fail(u16),
    RateLimited,
    /// Serve, but cut the connection halfway through the body.
    Reset,
    /// Serve a page that is not valid JSON.
    Malformed,
}

pub struct Faults {
    pub error_rate: f64,
    pub reset_rate: f64,
    pub malformed_rate: f64,
    pub slow: Duration,
    /// Added to every answer of the API address, errors and 429s too: a network's
    /// round trip (`simulate --latency`).
    pub latency: Duration,
    /// Requests being answered right now, and the most there ever were at once.
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// Server-side budget (requests per second, burst); beyond it: 429.
    pub rate_limit: Option<(f64, u32)>,
    pub retry_after_secs: u64,
    /// The first page of every listing carries a record without uid.
    pub bad_records: bool,
    pub rules: Vec<FailRule>,
    /// After page 1 of a cross-dataset sequence listing, move its last record to the front.
    pub shift_once: bool,
    pub log: Vec<Logged>,
    /// Knobs and request log of the storage address.
    pub storage: super::storage::StorageFaults,
    /// Knobs of the JSON:API service.
    pub jsonapi: super::jsonapi::JsonApiFaults,
    rng: StdRng,
    tokens: f64,
    refilled: Instant,
}

impl Faults {
    pub fn new(seed: u64) -> Faults {
        Faults {
            error_rate: 0.0,
            reset_rate: 0.0,
            malformed_rate: 0.0,
            slow: Duration::ZERO,
            latency: Duration::ZERO,
            in_flight: 0,
            max_in_flight: 0,
            rate_limit: None,
            retry_after_secs: 1,
            bad_records: false,
            rules: vec![],
            shift_once: false,
            log: vec![],
            storage: Default::default(),
            jsonapi: Default::default(),
            rng: StdRng::seed_from_u64(seed ^ 0xFA17),
            tokens: 0.0,
            refilled: Instant::now(),
        }
    }

    /// Scripts `times` failures with `status` for matching requests.
    pub fn fail(
        &mut self,
        path_contains: &str,
        query_contains: Option<&str>,
        status: u16,
        times: u32,
    ) {
        self.rules.push(FailRule {
            path_contains: path_contains.into(),
            query_contains: query_contains.map(Into::into),
            status,
            times,
        });
    }

    /// Decides the fate of a request (auth is checked before this).
    pub fn judge(&mut self, path: &str, query: &str) -> Verdict {
        if let Some((rps, burst)) = self.rate_limit {
            let now = Instant::now();
            let refill = now.duration_since(self.refilled).as_secs_f64() * rps;
            self.tokens = (self.tokens + refill).min(burst as f64);
            self.refilled = now;
            if self.tokens < 1.0 {
                return Verdict::RateLimited;
            }
            self.tokens -= 1.0;
        }
        for rule in &mut self.rules {
            let hit = rule.times > 0
                && path.contains(&rule.path_contains)
                && rule
                    .query_contains
                    .as_deref()
                    .is_none_or(|q| query.contains(q));
            if hit {
                if rule.times != u32::MAX {
                    rule.times -= 1;
                }
                return Verdict::Fail(rule.status);
            }
        }
        if self.error_rate > 0.0 && self.rng.random_bool(self.error_rate.min(1.0)) {
            return Verdict::Fail(if self.rng.random_bool(0.5) { 500 } else { 503 });
        }
        if self.reset_rate > 0.0 && self.rng.random_bool(self.reset_rate.min(1.0)) {
            return Verdict::Reset;
        }
        if self.malformed_rate > 0.0 && self.rng.random_bool(self.malformed_rate.min(1.0)) {
            return Verdict::Malformed;
        }
        Verdict::Serve
    }

    /// Rate-limit headers for a response: (limit, remaining, reset seconds).
    pub fn rate_headers(&self) -> Option<(u64, u64, u64)> {
        self.rate_limit.map(|(rps, burst)| {
            let remaining = self.tokens.max(0.0) as u64;
            let reset = ((burst as f64 - self.tokens) / rps).ceil().max(0.0) as u64;
            (burst as u64, remaining, reset)
        })
    }

    /// The largest number of requests (429s included) in any window of `window`.
    pub fn max_in_window(&self, window: Duration) -> usize {
        let times: Vec<Instant> = self.log.iter().map(|l| l.at).collect();
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end].duration_since(times[start]) >= window {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }
}
