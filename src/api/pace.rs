//! Request pacing shared by every API call: a governor quota (the configured rate),
//! an extra spacing that grows after a 429 or when `X-RateLimit-Remaining` runs low,
//! and two priorities so short status polls go ahead of long crawls.
//!
//! Order of waits for one request: (1) low priority waits while any high-priority
//! request is waiting; (2) a spacing slot is reserved (Retry-After pause, 429
//! slowdown, header pacing); (3) a governor token is taken right before sending.
//! The governor is last so no wait can release a burst above the configured rate.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Status polls: exports, sequences, datasets, deletion checks.
    High,
    /// Long crawls: items, slice membership.
    Low,
}

pub struct Pacer {
    limiter: DefaultDirectRateLimiter,
    period: Duration,
    state: Mutex<PaceState>,
    high_waiting: AtomicUsize,
    high_done: Notify,
}

struct PaceState {
    /// Nobody sends before this (Retry-After).
    paused_until: Instant,
    /// Extra gap between requests after 429s; decays on success.
    slowdown: Duration,
    /// Gap derived from rate-limit headers, valid until `header_until`.
    header_gap: Duration,
    header_until: Instant,
    next_slot: Instant,
}

impl Pacer {
    pub fn new(requests_per_second: f64, burst: u32) -> Pacer {
        let period = Duration::from_secs_f64(1.0 / requests_per_second.max(1e-6));
        let burst = NonZeroU32::new(burst.max(1)).expect("max(1)");
        let quota = Quota::with_period(period)
            .expect("positive period")
            .allow_burst(burst);
        let now = Instant::now();
        Pacer {
            limiter: RateLimiter::direct(quota),
            period,
            state: Mutex::new(PaceState {
                paused_until: now,
                slowdown: Duration::ZERO,
                header_gap: Duration::ZERO,
                header_until: now,
                next_slot: now,
            }),
            high_waiting: AtomicUsize::new(0),
            high_done: Notify::new(),
        }
    }

    /// Waits until this request may be sent.
    pub async fn acquire(&self, prio: Priority) {
        let _high = match prio {
            Priority::High => Some(HighGuard::new(self)),
            Priority::Low => {
                loop {
                    let notified = self.high_done.notified();
                    if self.high_waiting.load(Ordering::Acquire) == 0 {
                        break;
                    }
                    notified.await;
                }
                None
            }
        };
        let slot = {
            let mut s = self.state.lock().expect("pacer lock");
            let now = Instant::now();
            let gap = if now < s.header_until {
                s.slowdown.max(s.header_gap)
            } else {
                s.slowdown
            };
            let slot = now.max(s.paused_until).max(s.next_slot);
            s.next_slot = slot + gap;
            slot
        };
        // A timer, even one already due, costs a tick of tokio's 1 ms clock.
        if slot > Instant::now() {
            tokio::time::sleep_until(slot).await;
        }
        if self.limiter.check().is_err() {
            self.limiter.until_ready().await;
        }
    }

    /// A 429: pause everyone for `retry_after`, then send at most half as fast as before.
    pub fn on_rate_limited(&self, retry_after: Option<Duration>) {
        let mut s = self.state.lock().expect("pacer lock");
        let pause = retry_after
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(600));
        s.paused_until = s.paused_until.max(Instant::now() + pause);
        s.slowdown = (s.slowdown * 2)
            .max(self.period)
            .min(Duration::from_secs(60));
    }

    /// A success: let the 429 slowdown decay back towards the configured rate.
    pub fn on_success(&self) {
        let mut s = self.state.lock().expect("pacer lock");
        if !s.slowdown.is_zero() {
            s.slowdown = s.slowdown.mul_f64(0.9);
            if s.slowdown < self.period / 4 {
                s.slowdown = Duration::ZERO;
            }
        }
    }

    /// Rate-limit headers: when few requests remain in the window, spread them up to
    /// its reset instead of running into a 429.
    pub fn on_headers(
        &self,
        limit: Option<u64>,
        remaining: Option<u64>,
        reset_in: Option<Duration>,
    ) {
        let (Some(remaining), Some(reset_in)) = (remaining, reset_in) else {
            return;
        };
        let low_mark = limit.map(|l| (l / 5).max(2)).unwrap_or(5);
        let mut s = self.state.lock().expect("pacer lock");
        if remaining <= low_mark {
            s.header_gap = reset_in / (remaining as u32 + 1);
            s.header_until = Instant::now() + reset_in;
        } else {
            s.header_gap = Duration::ZERO;
        }
    }
}

struct HighGuard<'a>(&'a Pacer);

impl<'a> HighGuard<'a> {
    fn new(p: &'a Pacer) -> Self {
        p.high_waiting.fetch_add(1, Ordering::AcqRel);
        HighGuard(p)
    }
}

impl Drop for HighGuard<'_> {
    fn drop(&mut self) {
        if self.0.high_waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.high_done.notify_waiters();
        }
    }
}

/// Parses `X-RateLimit-Reset`: seconds from now, or a unix timestamp when large.
pub fn parse_reset(value: &str, now_unix: u64) -> Option<Duration> {
    let v: f64 = value.trim().parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let secs = if v > 1_000_000_000.0 {
        (v - now_unix as f64).max(0.0)
    } else {
        v
    };
    Some(Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_header_forms() {
        assert_eq!(parse_reset("30", 0), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_reset("1700000010", 1_700_000_000),
            Some(Duration::from_secs(10))
        );
        assert_eq!(parse_reset("soon", 0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_and_slows() {
        let p = Pacer::new(10.0, 1);
        p.acquire(Priority::High).await;
        p.on_rate_limited(Some(Duration::from_secs(2)));
        let t = Instant::now();
        p.acquire(Priority::High).await;
        assert!(t.elapsed() >= Duration::from_secs(2));
        let t = Instant::now();
        p.acquire(Priority::High).await;
        // slowed to at most half the configured rate (0.1 s period)
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn low_headers_spread_requests() {
        let p = Pacer::new(1000.0, 100);
        p.on_headers(Some(100), Some(3), Some(Duration::from_secs(4)));
        let t = Instant::now();
        for _ in 0..3 {
            p.acquire(Priority::Low).await;
        }
        assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
