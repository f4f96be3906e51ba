//! Request pacing shared by every API call: a bound on requests in flight
//! (`api.concurrency`), a governor quota (the configured rate), an extra spacing
//! that grows after a 429 or when `X-RateLimit-Remaining` runs low, and two
//! priorities so short status polls go ahead of long crawls.
//!
//! Order of waits for one request: (1) a slot among the requests in flight; (2)
//! the spacing (Retry-After pause, 429 slowdown, header pacing), claimed at the
//! moment it is free rather than reserved ahead, so queued crawl requests never
//! push a status poll back; (3) a governor token, taken right before sending, so
//! no wait can release a burst above the configured rate. At every step a
//! low-priority request yields while a high-priority one is waiting: a status poll
//! waits at most for the first of the requests already in flight to finish.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
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
    clock: DefaultClock,
    period: Duration,
    /// `api.max_wait`: the longest any answer may pause requests.
    max_wait: Duration,
    /// When a capped wait was last logged (at most once a minute).
    capped_logged: Mutex<Option<Instant>>,
    state: Mutex<PaceState>,
    /// A slot was freed or the last high-priority request stopped waiting.
    changed: Notify,
}

struct PaceState {
    /// Nobody sends before this (Retry-After).
    paused_until: Instant,
    /// Extra gap between requests after 429s; decays on success.
    slowdown: Duration,
    /// Gap derived from rate-limit headers, valid until `header_until`.
    header_gap: Duration,
    header_until: Instant,
    /// When the last request was let through.
    last_sent: Option<Instant>,
    /// Free slots among the requests in flight.
    free: usize,
    /// High-priority requests waiting for a slot: low ones take none meanwhile.
    high_waiting: usize,
    /// High-priority requests holding a slot, waiting for their turn to send:
    /// low ones holding slots let them go first.
    high_ready: usize,
}

/// A request's place among those in flight; freed when dropped (after the body is read).
pub struct InFlight<'a>(&'a Pacer);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("pacer lock").free += 1;
        self.0.changed.notify_waiters();
    }
}

impl Pacer {
    pub fn new(
        requests_per_second: f64,
        burst: u32,
        concurrency: u32,
        max_wait: Duration,
    ) -> Pacer {
        let period = Duration::from_secs_f64(1.0 / requests_per_second.max(1e-6));
        let burst = NonZeroU32::new(burst.max(1)).expect("max(1)");
        let quota = Quota::with_period(period)
            .expect("positive period")
            .allow_burst(burst);
        let clock = DefaultClock::default();
        let now = Instant::now();
        Pacer {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            period,
            max_wait,
            capped_logged: Mutex::new(None),
            state: Mutex::new(PaceState {
                paused_until: now,
                slowdown: Duration::ZERO,
                header_gap: Duration::ZERO,
                header_until: now,
                last_sent: None,
                free: concurrency.max(1) as usize,
                high_waiting: 0,
                high_ready: 0,
            }),
            changed: Notify::new(),
        }
    }

    /// Waits until this request may be sent; it stays in flight until the guard drops.
    pub async fn acquire(&self, prio: Priority) -> InFlight<'_> {
        let high = prio == Priority::High;
        let waiting = high.then(|| HighCount::new(self, |s| &mut s.high_waiting));
        // (1) a slot
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut s = self.state.lock().expect("pacer lock");
                if s.free > 0 && (high || s.high_waiting == 0) {
                    s.free -= 1;
                    break;
                }
            }
            changed.await;
        }
        let slot = InFlight(self);
        drop(waiting);
        let _ready = high.then(|| HighCount::new(self, |s| &mut s.high_ready));
        // (2) the spacing, then (3) a token, both claimed under the lock
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut s = self.state.lock().expect("pacer lock");
                let now = Instant::now();
                if !high && s.high_ready > 0 {
                    None
                } else {
                    let gap = if now < s.header_until {
                        s.slowdown.max(s.header_gap)
                    } else {
                        s.slowdown
                    };
                    let at = s
                        .last_sent
                        .map_or(s.paused_until, |l| s.paused_until.max(l + gap));
                    if at > now {
                        Some(at - now)
                    } else {
                        match self.limiter.check() {
                            Ok(()) => {
                                s.last_sent = Some(now);
                                return slot;
                            }
                            Err(not_until) => Some(not_until.wait_time_from(self.clock.now())),
                        }
                    }
                }
            };
            match wait {
                // A timer, even one already due, costs a tick of tokio's 1 ms clock.
                Some(d) => tokio::time::sleep(d.max(Duration::from_micros(100))).await,
                // a low-priority request looks again once no high one is ready
                None => changed.await,
            }
        }
    }

    /// A 429: pause everyone for `retry_after` (at most `api.max_wait`), then send
    /// at most half as fast as before.
    pub fn on_rate_limited(&self, retry_after: Option<Duration>) {
        let pause = self.capped(retry_after.unwrap_or(Duration::from_secs(1)), "Retry-After");
        let mut s = self.state.lock().expect("pacer lock");
        s.paused_until = s.paused_until.max(Instant::now() + pause);
        note_pause(pause);
        s.slowdown = (s.slowdown * 2)
            .max(self.period)
            .min(Duration::from_secs(60));
    }

    /// Until when the API asked everyone to wait (its Retry-After, capped).
    pub fn paused_until(&self) -> Instant {
        self.state.lock().expect("pacer lock").paused_until
    }

    /// Keeps a pause another pacer of the same API was asked for (across a reload).
    pub fn pause_until(&self, until: Instant) {
        let mut s = self.state.lock().expect("pacer lock");
        s.paused_until = s.paused_until.max(until);
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
        let reset_in = self.capped(reset_in, "X-RateLimit-Reset");
        let mut s = self.state.lock().expect("pacer lock");
        if remaining <= low_mark {
            // the rest of the window's requests, and one more, share it
            let parts = u32::try_from(remaining.saturating_add(1)).unwrap_or(u32::MAX);
            s.header_gap = reset_in / parts;
            s.header_until = Instant::now() + reset_in;
        } else {
            s.header_gap = Duration::ZERO;
        }
    }
}

/// Counts a high-priority request in one of the pacer's counters while it lives.
impl Pacer {
    /// `wait`, or `api.max_wait` when the API asked for longer (logged at most once a minute).
    fn capped(&self, wait: Duration, header: &str) -> Duration {
        if wait <= self.max_wait {
            return wait;
        }
        let mut logged = self.capped_logged.lock().expect("pacer lock");
        if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *logged = Some(Instant::now());
            tracing::warn!(
                "the API's {header} asks to wait {}; waiting api.max_wait ({}) instead, then trying again",
                humantime::format_duration(Duration::from_secs(wait.as_secs().min(u64::MAX / 2))),
                humantime::format_duration(self.max_wait)
            );
        }
        self.max_wait
    }
}

/// Requests are paused past this time (UNIX seconds; 0: not paused): shown by
/// `/healthz`, since a long pause stops every resource at once.
pub static PAUSED_UNTIL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Pauses of a minute or more are worth showing.
fn note_pause(pause: Duration) {
    if pause >= Duration::from_secs(60) {
        let until = std::time::SystemTime::now() + pause;
        let secs = until
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PAUSED_UNTIL.fetch_max(secs, std::sync::atomic::Ordering::Relaxed);
    }
}

struct HighCount<'a>(&'a Pacer, fn(&mut PaceState) -> &mut usize);

impl<'a> HighCount<'a> {
    fn new(p: &'a Pacer, counter: fn(&mut PaceState) -> &mut usize) -> Self {
        *counter(&mut p.state.lock().expect("pacer lock")) += 1;
        HighCount(p, counter)
    }
}

impl Drop for HighCount<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().expect("pacer lock");
        let n = (self.1)(&mut s);
        *n -= 1;
        if *n == 0 {
            drop(s);
            self.0.changed.notify_waiters();
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
    // saturating: the pacer caps it at `api.max_wait`
    Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
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
        let p = Pacer::new(10.0, 1, 1, Duration::from_secs(900));
        drop(p.acquire(Priority::High).await);
        p.on_rate_limited(Some(Duration::from_secs(2)));
        let t = Instant::now();
        drop(p.acquire(Priority::High).await);
        assert!(t.elapsed() >= Duration::from_secs(2));
        let t = Instant::now();
        drop(p.acquire(Priority::High).await);
        // slowed to at most half the configured rate (0.1 s period)
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn low_headers_spread_requests() {
        let p = Pacer::new(1000.0, 100, 8, Duration::from_secs(900));
        p.on_headers(Some(100), Some(3), Some(Duration::from_secs(4)));
        let t = Instant::now();
        for _ in 0..3 {
            drop(p.acquire(Priority::Low).await);
        }
        assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn requests_in_flight_are_bounded_and_a_poll_takes_the_first_free_slot() {
        use std::sync::Arc;
        let p = Arc::new(Pacer::new(1e6, 1_000_000, 2, Duration::from_secs(900)));
        let a = p.acquire(Priority::Low).await;
        let b = p.acquire(Priority::Low).await;
        // a third crawl request and then a status poll wait for a slot
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let crawl = {
            let (p, tx) = (p.clone(), order_tx.clone());
            tokio::spawn(async move {
                let _slot = p.acquire(Priority::Low).await;
                tx.send("crawl").unwrap();
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let poll = {
            let (p, tx) = (p.clone(), order_tx.clone());
            tokio::spawn(async move {
                let slot = p.acquire(Priority::High).await;
                tx.send("poll").unwrap();
                slot_held(slot).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            order.try_recv().is_err(),
            "nobody passed while 2 were in flight"
        );
        drop(a);
        assert_eq!(
            order.recv().await,
            Some("poll"),
            "the poll overtakes the queued crawl"
        );
        drop(b);
        assert_eq!(order.recv().await, Some("crawl"));
        poll.await.unwrap();
        crawl.await.unwrap();
    }

    #[tokio::test]
    async fn a_crawl_holding_a_slot_lets_a_poll_take_the_next_token() {
        use std::sync::Arc;
        // 10/s, burst 1: each token comes 100 ms after the one before
        let p = Arc::new(Pacer::new(10.0, 1, 2, Duration::from_secs(900)));
        let first = p.acquire(Priority::Low).await;
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let crawl = {
            let (p, tx) = (p.clone(), order_tx.clone());
            tokio::spawn(async move {
                let _slot = p.acquire(Priority::Low).await; // the second slot, then the token wait
                tx.send("crawl").unwrap();
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let poll = {
            let (p, tx) = (p.clone(), order_tx.clone());
            tokio::spawn(async move {
                let _slot = p.acquire(Priority::High).await;
                tx.send("poll").unwrap();
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first); // the poll takes this slot while the crawl still waits for its token
        assert_eq!(
            order.recv().await,
            Some("poll"),
            "the crawl let the poll send first"
        );
        assert_eq!(order.recv().await, Some("crawl"));
        poll.await.unwrap();
        crawl.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_retry_after_pauses_for_max_wait_only() {
        let p = Pacer::new(1000.0, 100, 1, Duration::from_secs(2));
        drop(p.acquire(Priority::High).await);
        p.on_rate_limited(Some(Duration::MAX));
        let t = Instant::now();
        drop(p.acquire(Priority::High).await);
        assert!(
            (Duration::from_secs(2)..Duration::from_secs(3)).contains(&t.elapsed()),
            "{:?}",
            t.elapsed()
        );
        // and a reset a year away spreads requests over at most max_wait
        p.on_headers(Some(100), Some(0), Some(Duration::from_secs(86_400 * 365)));
        let t = Instant::now();
        drop(p.acquire(Priority::High).await);
        assert!(t.elapsed() <= Duration::from_secs(3), "{:?}", t.elapsed());
    }

    async fn slot_held(_slot: InFlight<'_>) {}

    /// A header's value as a hostile server may send it.
    fn hostile() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| n.to_string()),
            Just("18446744073709551616".to_string()),
            Just("1e308".to_string()),
            Just("NaN".to_string()),
            Just("-inf".to_string()),
            "\\PC{0,8}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Rate-limit headers of any size, sign or form neither panic nor
        /// space requests out past `api.max_wait`.
        #[test]
        fn no_rate_limit_header_panics_or_pauses_past_max_wait(limit in hostile(), remaining in hostile(), reset in hostile(), retry in hostile()) {
            let max_wait = Duration::from_secs(7);
            let p = Pacer::new(5.0, 5, 8, max_wait);
            let num = |v: &str| v.trim().parse::<u64>().ok();
            let before = Instant::now();
            p.on_headers(num(&limit), num(&remaining), parse_reset(&reset, 1_700_000_000));
            p.on_rate_limited(retry.parse::<f64>().ok().and_then(|s| Duration::try_from_secs_f64(s).ok()));
            let s = p.state.lock().unwrap();
            proptest::prop_assert!(s.header_gap <= max_wait);
            proptest::prop_assert!(s.header_until <= Instant::now() + max_wait);
            proptest::prop_assert!(s.paused_until <= before + max_wait + Duration::from_secs(1));
        }
    }

    #[test]
    fn a_table_of_hostile_rate_limit_headers() {
        let max_wait = Duration::from_secs(60);
        for (limit, remaining, reset) in [
            ("21474836480", "4294967295", "10"),
            ("0", "0", "0"),
            (
                "18446744073709551615",
                "18446744073709551615",
                "18446744073709551615",
            ),
            ("-1", "-5", "-10"),
            ("abc", "NaN", "inf"),
            ("5", "0", "99999999999999999999"),
            ("1", "0", "1e308"),
        ] {
            let p = Pacer::new(5.0, 5, 8, max_wait);
            let num = |v: &str| v.parse::<u64>().ok();
            p.on_headers(
                num(limit),
                num(remaining),
                parse_reset(reset, 1_700_000_000),
            );
            let s = p.state.lock().unwrap();
            assert!(s.header_gap <= max_wait, "{limit} {remaining} {reset}");
        }
    }
}
