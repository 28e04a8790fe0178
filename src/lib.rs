//! reactor: turns a Supabase/Postgres database into an event-driven system.
//!
//! Notifications are hints; correctness comes from idempotent handlers plus
//! pending-state scans (see docs/src/guarantees.md).
//!
//! The layers, from the inside out:
//! - [`job`]: what a handler is (a pending query plus an action), leases and retries;
//! - [`store`]: the database: connections, TLS, migrations, settings;
//! - [`engine`]: hearing hints (listener, status feed) and running handlers over pending rows;
//! - [`handlers`]: one file per kind of change ("a job succeeded → its debit" is `handlers/usage.rs`);
//! - [`providers`]: image providers and where renders are stored;
//! - [`http`]: the HTTP server: webhooks, auth, the dashboard and its operations
//!   (and `http::client`, what every outgoing request shares);
//! - [`sandbox`]: throwaway clusters for the demo and the tests;
//! - [`cli`]: commands other than `run` (demo, watch, doctor); [`app`] assembles `reactor run`.
pub mod app;
pub mod cli;
pub mod config;
pub mod engine;
pub mod handlers;
pub mod http;
pub mod job;
pub mod providers;
pub mod sandbox;
pub mod store;
pub(crate) mod telemetry;
