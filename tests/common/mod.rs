//! Test harness: every test gets its own fresh, migrated database.
//!
//! With `DATABASE_URL` set, databases are created inside that server; without
//! it, one throwaway cluster (initdb + postgres from PATH) is started per test
//! binary and stops when the binary exits. Never a mock.
#![allow(dead_code)]

pub mod fake_replicate;

use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tokio_postgres::Client;

static SERVER: OnceCell<String> = OnceCell::const_new();

/// URL of the server's maintenance database (`postgres`).
pub async fn server_url() -> &'static str {
    SERVER
        .get_or_init(|| async {
            match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => url,
                _ => reactor::store::localpg::LocalPostgres::start()
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
    reactor::store::db::act_as_user(&tx, user).await?;
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

// ---------------------------------------------------------------------------
// Running the reactor

/// Flags for a test reactor: fast sweeps, retries and leases so tests are quick.
pub fn reactor_flags(db: &TestDb, storage: &std::path::Path) -> Vec<String> {
    [
        "--database-url",
        &db.url,
        "--storage-url",
        &storage.display().to_string(),
        "--retry-backoff",
        "50ms",
        "--max-attempts",
        "3",
        "--lease",
        "3s",
        "--sweep-interval",
        "1s",
        "--listen-check-interval",
        "1s",
        "--listen-check-timeout",
        "3s",
        "--download-timeout",
        "2s",
        "--shutdown-grace",
        "10s",
        "--provider",
        "local",
        "--local-delay",
        "200ms",
        "--provider-poll",
        "50ms",
        "--http-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A reactor running inside the test process.
pub struct InProcess {
    pub shutdown: tokio_util::sync::CancellationToken,
    pub http_addr: std::net::SocketAddr,
    pub handle: tokio::task::JoinHandle<Result<(), reactor::engine::EngineError>>,
    pub status: std::sync::Arc<reactor::engine::Readiness>,
}

impl InProcess {
    /// SIGTERM equivalent: stop and wait for a clean exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("reactor task")
            .expect("reactor exits cleanly");
    }
}

/// Starts the built-in handlers in-process with `reactor_flags` plus `extra`.
pub async fn start_reactor(db: &TestDb, storage: &std::path::Path, extra: &[&str]) -> InProcess {
    let mut flags = reactor_flags(db, storage);
    flags.extend(extra.iter().map(|s| s.to_string()));
    let cfg = reactor::config::RunConfig::from_flags(flags).expect("test flags");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let app = reactor::app::start(cfg, shutdown.clone())
        .await
        .expect("start reactor");
    InProcess {
        shutdown,
        http_addr: app.http_addr,
        handle: app.handle,
        status: app.readiness,
    }
}

/// The `reactor` binary as a child process (killed when dropped).
pub struct ChildReactor {
    pub child: std::process::Child,
}

impl ChildReactor {
    pub fn spawn(db: &TestDb, storage: &std::path::Path, extra: &[&str]) -> Self {
        let mut flags = reactor_flags(db, storage);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let log = std::fs::File::create(
            storage.join(format!("reactor-{}.log", uuid::Uuid::new_v4().simple())),
        )
        .expect("log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
            .arg("run")
            .args(flags)
            .env("RUST_LOG", "info,reactor=debug,tokio_postgres=warn")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn reactor binary");
        ChildReactor { child }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait for reactor")
    }
}

impl Drop for ChildReactor {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------
// A loopback HTTP server standing in for the provider's file delivery

/// A tiny JPEG-looking body (the renders handler checks the magic bytes).
pub const JPEG: &[u8] = &[
    0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0xFF, 0xD9,
];

pub struct ImageServer {
    pub base: String,
    /// Requests seen per path.
    pub hits: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
}

impl ImageServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn hits(&self, path: &str) -> u32 {
        *self.hits.lock().unwrap().get(path).unwrap_or(&0)
    }
}

/// Routes: `/ok/{name}` a JPEG, `/png/{name}` a PNG, `/missing/{name}` 404,
/// `/html/{name}` an HTML page, `/slow/{name}` a JPEG after 30 s,
/// `/flaky/{fails}/{name}` HTTP 500 for the first `fails` requests then a JPEG,
/// `/big/{name}` a 2 MiB JPEG, `/delay/{ms}/{name}` a JPEG after `ms` milliseconds.
pub async fn image_server() -> ImageServer {
    use axum::extract::{Path, State};
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    type Hits = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>;

    async fn serve(
        State(hits): State<Hits>,
        Path((kind, rest)): Path<(String, String)>,
    ) -> axum::response::Response {
        let path = format!("/{kind}/{rest}");
        let n = {
            let mut h = hits.lock().unwrap();
            let e = h.entry(path).or_insert(0);
            *e += 1;
            *e
        };
        let jpeg = || ([(header::CONTENT_TYPE, "image/jpeg")], JPEG.to_vec()).into_response();
        match kind.as_str() {
            "ok" => jpeg(),
            "png" => (
                [(header::CONTENT_TYPE, "image/png")],
                b"\x89PNG\r\n\x1a\n0000".to_vec(),
            )
                .into_response(),
            "missing" => StatusCode::NOT_FOUND.into_response(),
            "html" => (
                [(header::CONTENT_TYPE, "text/html")],
                "<html>not an image</html>",
            )
                .into_response(),
            "delay" => {
                let ms: u64 = rest
                    .split('/')
                    .next()
                    .and_then(|f| f.parse().ok())
                    .unwrap_or(0);
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                jpeg()
            }
            "slow" => {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                jpeg()
            }
            "flaky" => {
                let fails: u32 = rest
                    .split('/')
                    .next()
                    .and_then(|f| f.parse().ok())
                    .unwrap_or(0);
                if n <= fails {
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                } else {
                    jpeg()
                }
            }
            "big" => {
                let mut body = JPEG.to_vec();
                body.resize(2 * 1024 * 1024, 0);
                ([(header::CONTENT_TYPE, "image/jpeg")], body).into_response()
            }
            _ => StatusCode::BAD_REQUEST.into_response(),
        }
    }

    let hits: Hits = Default::default();
    let app = axum::Router::new()
        .route("/{kind}/{*rest}", axum::routing::get(serve))
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind image server");
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    ImageServer { base, hits }
}

// ---------------------------------------------------------------------------
// Rows

/// Inserts a succeeded job (as the service) with the given output URLs.
pub async fn succeeded_job(client: &Client, owner: uuid::Uuid, output: &[String]) -> uuid::Uuid {
    let row = client
        .query_one(
            "insert into generation_jobs (owner_id, mode, prompt, status, output, completed_at)
             values ($1, 'imagine', 'a test room', 'succeeded', $2, now()) returning id",
            &[&owner, &serde_json::json!(output)],
        )
        .await
        .expect("insert succeeded job");
    row.get(0)
}

pub async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}
