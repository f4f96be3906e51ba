//! avala-mirror: a local SQLite mirror of an Avala account, with change events.
//! The data path: config → api → sync → store (events in the same transaction).

pub mod api;
pub mod cli;
pub mod commands;
pub mod config;
pub mod contract;
pub mod download;
pub mod error;
pub mod events;
pub mod logging;
pub mod metrics;
pub mod packaging;
pub mod scheduler;
pub mod serve;
pub mod service;
pub mod sim;
pub mod store;
pub mod sync;
pub mod time;
