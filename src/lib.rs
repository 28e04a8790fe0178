//! reactor: turns a Supabase/Postgres database into an event-driven system.
//!
//! Notifications are hints; correctness comes from idempotent handlers plus
//! pending-state scans (see README.md, "Guarantees").
pub mod db;
pub mod localpg;
pub mod migrate;
