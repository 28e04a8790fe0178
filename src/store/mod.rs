//! The database: connections (TLS included), migrations, the reactor's
//! settings, and the throwaway clusters of the demo and the tests.
pub mod db;
pub mod localpg;
pub mod migrate;
pub mod notify_mode;
pub mod supabase_like;
pub mod tls;
