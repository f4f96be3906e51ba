//! Talking to Avala: the client (key, pacing, retries), pagination, endpoints.
pub mod client;
pub mod jsonapi;
pub mod pace;
pub mod page;
pub mod v1;

pub use client::{Client, json_value};
pub use pace::Priority;
