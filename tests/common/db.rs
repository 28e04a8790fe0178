//! Databases for tests: every test gets its own fresh, migrated database on a
//! real server, and reads back what it needs with small query helpers.
use tokio::sync::OnceCell;
use tokio_postgres::{types::ToSql, Client};

static SERVER: OnceCell<String> = OnceCell::const_new();

/// URL of the server's maintenance database (`postgres`).
pub async fn server_url() -> &'static str {
    SERVER
        .get_or_init(|| async {
            match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => url,
                _ => reactor::sandbox::cluster::LocalPostgres::start()
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
        reactor::store::db::connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

/// A fresh empty database (not migrated).
pub async fn empty_db() -> TestDb {
    let server = server_url().await;
    let name = format!("reactor_test_{}", uuid::Uuid::new_v4().simple());
    let admin = reactor::store::db::connect(server)
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
    reactor::store::migrate::run(&mut client)
        .await
        .expect("migrate");
    db
}

/// `url` with its database name replaced by `name`.
pub fn with_dbname(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("DATABASE_URL must be a postgres:// URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

impl TestDb {
    /// A connection to the server's maintenance database (`postgres`), which
    /// stays reachable while this test's database refuses connections.
    pub async fn maintenance_client(&self) -> Client {
        reactor::store::db::connect(&with_dbname(&self.url, "postgres"))
            .await
            .expect("connect to the maintenance database")
    }
}

/// A count (or any bigint) read with `sql`.
pub async fn count(client: &Client, sql: &str) -> i64 {
    count_with(client, sql, &[]).await
}

/// A count (or any bigint) read with `sql` and its parameters.
pub async fn count_with(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
    client
        .query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", reactor::store::db::describe(&e)))
        .get(0)
}

/// Waits (up to `timeout`) until exactly one backend of `observer`'s database
/// waits on a lock: `what` is who should be waiting.
pub async fn wait_until_one_waits_on_a_lock(
    observer: &Client,
    what: &str,
    timeout: std::time::Duration,
) {
    super::eventually(what, timeout, || async {
        count(
            observer,
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .await
            == 1
    })
    .await;
}

/// The SQLSTATE of a database error.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a database error: {e}"))
}

/// The error's SQLSTATE and message, for assertions.
pub fn code_and_message(e: &tokio_postgres::Error) -> (String, String) {
    (
        sqlstate(e),
        e.as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default(),
    )
}

/// The first column of every row `sql` returns, as text.
pub async fn texts(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<String> {
    client
        .query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", reactor::store::db::describe(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits (up to a minute) until `sql` counts exactly `expected`.
pub async fn wait_for_count(client: &Client, what: &str, sql: &str, expected: i64) {
    super::eventually(what, std::time::Duration::from_secs(60), || async {
        count(client, sql).await == expected
    })
    .await;
}
