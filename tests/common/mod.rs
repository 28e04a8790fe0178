//! Test harness: every test gets its own fresh, migrated database.
//!
//! With `DATABASE_URL` set, databases are created inside that server; without
//! it, one throwaway cluster (initdb + postgres from PATH) is started per test
//! binary and stops when the binary exits. Never a mock.
#![allow(dead_code)]

use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tokio_postgres::Client;

static SERVER: OnceCell<String> = OnceCell::const_new();

/// URL of the server's maintenance database (`postgres`).
async fn server_url() -> &'static str {
    SERVER
        .get_or_init(|| async {
            match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => url,
                _ => reactor::localpg::LocalPostgres::start()
                    .await
                    .expect("starting a throwaway PostgreSQL (set DATABASE_URL to use a running server)")
                    .leak(),
            }
        })
        .await
}

pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    /// A new connection to this test's database.
    pub async fn client(&self) -> Client {
        reactor::db::connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

/// A fresh empty database (not migrated).
pub async fn empty_db() -> TestDb {
    let server = server_url().await;
    let name = format!("reactor_test_{}", uuid::Uuid::new_v4().simple());
    let admin = reactor::db::connect(server)
        .await
        .expect("connect to server");
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .expect("create test database");
    let url = with_dbname(server, &name);
    TestDb { url, name }
}

/// A fresh database with every migration applied.
pub async fn migrated_db() -> TestDb {
    let db = empty_db().await;
    let mut client = db.client().await;
    reactor::migrate::run(&mut client).await.expect("migrate");
    db
}

fn with_dbname(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("DATABASE_URL must be a postgres:// URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

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

/// Creates an auth user (and nothing else); returns its id.
pub async fn auth_user(client: &Client) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    client
        .execute(
            "insert into auth.users (id, email) values ($1, $2)",
            &[&id, &format!("{id}@example.test")],
        )
        .await
        .expect("insert auth user");
    id
}

/// Creates an auth user and its profile (as the service); returns its id.
pub async fn user_with_profile(client: &Client) -> uuid::Uuid {
    let id = auth_user(client).await;
    client
        .execute("insert into profiles (id) values ($1)", &[&id])
        .await
        .expect("insert profile");
    id
}

/// Runs `sql` as Supabase runs a client request: role `authenticated` with the
/// user's JWT claims, in a transaction that is committed when `sql` succeeds.
pub async fn as_user(
    client: &mut Client,
    user: uuid::Uuid,
    sql: &str,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute("set local role authenticated").await?;
    tx.execute(
        "select set_config('request.jwt.claims', $1, true)",
        &[&serde_json::json!({"sub": user.to_string(), "role": "authenticated"}).to_string()],
    )
    .await?;
    let n = tx.execute(sql, &[]).await?;
    tx.commit().await?;
    Ok(n)
}

/// The SQLSTATE of a database error.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a database error: {e}"))
}
