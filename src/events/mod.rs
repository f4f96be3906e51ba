//! From the outbox to the world: sinks (log, file, webhook, Slack) and the
//! per-sink delivery queue with its retry schedule.
pub mod deliver;
pub mod sinks;
