//! reactor: turns a Supabase/Postgres database into an event-driven system.
//!
//! Notifications are hints; correctness comes from idempotent handlers plus
//! pending-state scans (see README.md, "Guarantees").
pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod demo;
pub mod engine;
pub mod handler;
pub mod handlers;
pub mod http;
pub mod lease;
pub mod listener;
pub mod localpg;
pub mod migrate;
pub mod notification;
pub mod notify_mode;
pub mod ops;
pub mod provider;
pub mod status_feed;
pub mod storage;
pub mod supabase_like;
pub mod table_config;
pub mod telemetry;
pub mod tls;
pub mod watch;
pub mod webhook_signature;
