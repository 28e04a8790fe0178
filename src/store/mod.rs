//! The database: connections (TLS included), migrations, the reactor's
//! settings, every statement on the reactor's own tables (`handler_state`,
//! `pending`, `outbox`).
pub(crate) mod conninfo;
pub mod db;
pub(crate) mod handler_state;
pub mod limits;
pub mod migrate;
pub mod notify_mode;
pub(crate) mod outbox;
pub mod pending;
pub(crate) mod require_auth;
pub(crate) mod tls;
