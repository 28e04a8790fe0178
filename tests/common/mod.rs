//! Test harness: every test gets its own fresh, migrated database.
//!
//! With `DATABASE_URL` set, databases are created inside that server; without
//! it, one throwaway cluster (initdb + postgres from PATH) is started per test
//! binary and stops when the binary exits. Never a mock.
//!
//! One idea a file: `db` (databases and reading them back), `rows` (users and
//! jobs), `reactor_process` (the reactor under test), `http` (loopback HTTP),
//! `fake_replicate` (the provider's API), `pgbouncer` (a real pooler in front),
//! `pki` (certificates for TLS servers), `realtime` (a recording stand-in for
//! Supabase's realtime.send), `outsider` (a login with no grants). Everything
//! is re-exported here.
#![allow(dead_code)]

pub mod db;
pub mod fake_replicate;
pub mod http;
pub mod outsider;
pub mod pgbouncer;
pub mod pki;
pub mod reactor_process;
pub mod realtime;
pub mod rows;
pub mod silent_proxy;

// A test binary uses only some of these; the rest is not a mistake.
#[allow(unused_imports)]
pub use {
    db::*, http::*, outsider::*, pgbouncer::*, pki::*, reactor_process::*, realtime::*, rows::*,
};

use std::time::{Duration, Instant};

/// Polls `check` until it returns true, failing the test after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
