//! A log line repeats at most once a minute per cause (SPEC §6): a warning or an
//! error from the same place in the code, with the same message, about the same
//! scope (sink, export, endpoint…) is written once, then dropped for a minute;
//! other fields (an attempt number, an event id) do not make it another cause. A full disk or a dead
//! receiver otherwise fills the journal with the same line many times a second.
//! Lines below WARN (the cycle summaries) are not limited.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber, callsite};
use tracing_subscriber::layer::{Context, Filter};

/// How long the same cause stays quiet after it was logged.
pub const QUIET_FOR: Duration = Duration::from_secs(60);

/// Fields that name what a line says and is about; their values are the cause.
const CAUSE_FIELDS: [&str; 7] = [
    "message", "scope", "scopes", "sink", "export", "endpoint", "owner",
];

/// Causes kept at most (a bound of its own: old ones are forgotten first).
const MAX_CAUSES: usize = 4096;

#[derive(Default)]
pub struct OncePerCause {
    last: Mutex<HashMap<(callsite::Identifier, String), Instant>>,
}

struct ScopeOf(String);

impl Visit for ScopeOf {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if CAUSE_FIELDS.contains(&field.name()) {
            let _ = write!(self.0, "{}={value:?};", field.name());
        }
    }
}

impl<S: Subscriber> Filter<S> for OncePerCause {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return true;
        }
        let mut scope = ScopeOf(String::new());
        event.record(&mut scope);
        let key = (meta.callsite(), scope.0);
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < QUIET_FOR)
        {
            return false;
        }
        if last.len() >= MAX_CAUSES {
            last.retain(|_, at| now.duration_since(*at) < QUIET_FOR);
        }
        last.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::prelude::*;

    /// What the log writer received.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_same_warning_about_the_same_scope_is_written_once_a_minute() {
        let out = Captured::default();
        let writer = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_filter(OncePerCause::default());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for attempt in 0..50 {
                for sink in ["a", "b"] {
                    tracing::warn!(sink, attempt, "delivery failed: disk full");
                }
                tracing::info!("a cycle summary");
            }
            // another message from the same place is another cause
            tracing::warn!(sink = "a", "delivery failed: HTTP 500");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(count("disk full"), 2, "once per sink:\n{text}");
        assert_eq!(count("HTTP 500"), 1, "{text}");
        assert_eq!(count("a cycle summary"), 50, "info lines are not limited");
    }
}
