//! One module per command; each takes the loaded config and returns an exit code.
pub mod check;
pub mod demo;
pub mod events;
pub mod exports;
pub mod run;
pub mod serve;
pub mod simulate;
pub mod status;
pub mod sync;
