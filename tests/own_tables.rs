//! Your own job tables (issue 6): `reactor.watch_table`, REACTOR_CONFIG and the
//! `http` handler, run on the four example systems of `examples/` (seeds 000–003)
//! against a real PostgreSQL, with a loopback HTTP server as the handler URL.
mod common;

use common::{
    as_user, auth_user, count, eventually, start_reactor, wait_for_count, ChildReactor, TestDb,
};
use futures::StreamExt as _;
use reactor::http::webhook_signature::{self, Secret};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::Client;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);
/// REACTOR_HTTP_SECRET in these tests.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The host the example configs name, replaced by the loopback handler's.
const EXAMPLE_BASE: &str = "https://handlers.example.com";

// Markers put into a job's input; the loopback handler answers by them.
/// 200 with a result and a URL.
const OK: &str = "MARK_OK";
/// Always HTTP 200 with an answer that is not JSON (a failure the reactor
/// cannot classify: retried up to the attempt limit).
const FAIL: &str = "MARK_FAIL";
/// Always HTTP 400 `{"error":"renderer refused the input"}` (permanent).
const REJECT: &str = "MARK_REJECT";
/// HTTP 503 on the first request for a row, then like OK.
const FLAKY: &str = "MARK_FLAKY";
/// Answers after 3 seconds.
const SLOW: &str = "MARK_SLOW";

// ---------------------------------------------------------------------------
// The four example systems

#[derive(Clone, Copy)]
struct System {
    /// Directory under examples/.
    dir: &'static str,
    table: &'static str,
    pending: &'static str,
    processing: &'static str,
    succeeded: &'static str,
    failed: &'static str,
    error_column: &'static str,
    url_column: Option<&'static str>,
    result_column: Option<&'static str>,
    retry_column: Option<&'static str>,
    /// The job type test rows get (routed systems).
    job_type: Option<&'static str>,
    /// The path the example config routes the test rows to.
    path: &'static str,
    /// Attempts before a row gets the failed value when REACTOR_MAX_ATTEMPTS is 5.
    attempts_with_global_5: usize,
    /// An owner's insert; `{id}`, `{user}`, `{type}` and `{marker}` are filled in.
    insert: &'static str,
    /// A client insert that tries to set the outcome itself (`{user}` filled in).
    forged_insert: &'static str,
}

const IMAGE_JOBS: System = System {
    dir: "image_jobs",
    table: "image_jobs",
    pending: "pending",
    processing: "processing",
    succeeded: "completed",
    failed: "failed",
    error_column: "error_message",
    url_column: Some("final_image_url"),
    result_column: None,
    retry_column: None,
    job_type: None,
    path: "/image-jobs/shadow",
    attempts_with_global_5: 5,
    insert: r#"insert into image_jobs (id, user_id, original_image_url, processing_options)
               values ('{id}', '{user}', 'https://cdn.example.test/cutout.png',
                       '{"shadow": true, "reflection": false, "marker": "{marker}"}')"#,
    forged_insert: "insert into image_jobs (user_id, status, final_image_url)
                    values ('{user}', 'completed', 'https://evil.example.test/x.png')",
};

const GENERIC_JOBS: System = System {
    dir: "generic_jobs",
    table: "jobs",
    pending: "pending",
    processing: "processing",
    succeeded: "completed",
    failed: "failed",
    error_column: "error",
    url_column: None,
    result_column: Some("result"),
    retry_column: Some("retry_count"),
    job_type: Some("summarize_page"),
    path: "/jobs/summarize-page",
    attempts_with_global_5: 5,
    insert: r#"insert into jobs (id, user_id, job_type, payload)
               values ('{id}', '{user}', '{type}', '{"page": "https://example.test/", "marker": "{marker}"}')"#,
    forged_insert: r#"insert into jobs (user_id, job_type, payload, status, result)
                      values ('{user}', 'summarize_page', '{}', 'completed', '{"forged": true}')"#,
};

const VISION_BOARD: System = System {
    dir: "vision_board",
    table: "vision_board_jobs",
    pending: "pending",
    processing: "processing",
    succeeded: "complete",
    failed: "failed",
    error_column: "error_message",
    url_column: Some("image_url"),
    result_column: None,
    retry_column: None,
    job_type: None,
    path: "/vision-board/generate",
    attempts_with_global_5: 5,
    insert: r#"insert into vision_board_jobs (id, user_id, email, name, goals)
               values ('{id}', '{user}', 'ada@example.test', 'Ada', '["run a marathon", "{marker}"]')"#,
    forged_insert: "insert into vision_board_jobs (user_id, status, image_url)
                    values ('{user}', 'complete', 'https://evil.example.test/x.png')",
};

const PRODUCT_PACK: System = System {
    dir: "product_pack",
    table: "jobs",
    pending: "queued",
    processing: "running",
    succeeded: "succeeded",
    failed: "failed",
    error_column: "error",
    url_column: None,
    result_column: Some("result"),
    retry_column: None,
    job_type: Some("product_pack"),
    path: "/product-pack/render",
    // The example config's own max_attempts = 3.
    attempts_with_global_5: 3,
    insert: r#"insert into jobs (id, user_id, type, input_json)
               values ('{id}', '{user}', '{type}', '{"prompt": "studio shot", "angles": ["front"], "marker": "{marker}"}')"#,
    forged_insert:
        "insert into jobs (user_id, type, status) values ('{user}', 'product_pack', 'succeeded')",
};

// ---------------------------------------------------------------------------
// The loopback handler

#[derive(Debug, Clone)]
struct Request {
    path: String,
    id: String,
    /// The Standard Webhooks delivery id.
    webhook_id: String,
    /// `webhook_signature::verify` with the Standard Webhooks headers.
    standard_verified: Result<(), String>,
    attempt: String,
    timestamp: String,
    signature: String,
    raw: Vec<u8>,
    body: serde_json::Value,
    /// `webhook_signature::verify` on the request as received.
    verified: Result<(), String>,
    /// Answered HTTP 503 because the handler was down.
    during_outage: bool,
}

#[derive(Clone)]
struct Loopback {
    base: String,
    requests: Arc<Mutex<Vec<Request>>>,
    /// While set, every request is answered HTTP 503 (the worker is down).
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Loopback {
    fn requests_for(&self, id: Uuid) -> Vec<Request> {
        let id = id.to_string();
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.id == id)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

async fn loopback() -> Loopback {
    use axum::body::Bytes;
    use axum::extract::{OriginalUri, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;

    type Shared = (Arc<Mutex<Vec<Request>>>, Arc<std::sync::atomic::AtomicBool>);
    async fn handle(
        State((requests, down)): State<Shared>,
        OriginalUri(uri): OriginalUri,
        headers: HeaderMap,
        raw: Bytes,
    ) -> axum::response::Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let secret = Secret::parse(SECRET).unwrap();
        let verified = webhook_signature::verify(
            &secret,
            headers.get("x-reactor-id").and_then(|v| v.to_str().ok()),
            headers
                .get("x-reactor-timestamp")
                .and_then(|v| v.to_str().ok()),
            headers
                .get("x-reactor-signature")
                .and_then(|v| v.to_str().ok()),
            &raw,
            chrono::Utc::now().timestamp(),
        )
        .map_err(|e| e.to_string());
        let standard_verified = webhook_signature::verify(
            &secret,
            headers.get("webhook-id").and_then(|v| v.to_str().ok()),
            headers
                .get("webhook-timestamp")
                .and_then(|v| v.to_str().ok()),
            headers
                .get("webhook-signature")
                .and_then(|v| v.to_str().ok()),
            &raw,
            chrono::Utc::now().timestamp(),
        )
        .map_err(|e| e.to_string());
        let text = String::from_utf8_lossy(&raw).to_string();
        let during_outage = down.load(std::sync::atomic::Ordering::SeqCst);
        let request = Request {
            during_outage,
            path: uri.path().to_string(),
            id: header("x-reactor-id"),
            webhook_id: header("webhook-id"),
            standard_verified,
            attempt: header("x-reactor-attempt"),
            timestamp: header("x-reactor-timestamp"),
            signature: header("x-reactor-signature"),
            raw: raw.to_vec(),
            body: serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null),
            verified,
        };
        let id = request.id.clone();
        let earlier = {
            let mut all = requests.lock().unwrap();
            let earlier = all.iter().filter(|r| r.id == id).count();
            all.push(request);
            earlier
        };
        let ok = || {
            axum::Json(serde_json::json!({
                "result": {"outputs": [{
                    "storage_path": format!("{id}/front.png"), "kind": "image", "angle": "front",
                    "mime_type": "image/png", "width": 1024, "height": 1536
                }]},
                "url": format!("https://cdn.example.test/{id}.png"),
            }))
            .into_response()
        };
        if during_outage {
            (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response()
        } else if text.contains(FAIL) {
            (StatusCode::OK, "<html>renderer crashed</html>").into_response()
        } else if text.contains(REJECT) {
            (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({"error": "renderer refused the input"})),
            )
                .into_response()
        } else if text.contains(FLAKY) && earlier == 0 {
            (StatusCode::SERVICE_UNAVAILABLE, "busy, try later").into_response()
        } else if text.contains(SLOW) {
            tokio::time::sleep(Duration::from_secs(3)).await;
            ok()
        } else {
            // A little work, so that two reactors overlap.
            tokio::time::sleep(Duration::from_millis(20)).await;
            ok()
        }
    }

    let requests: Arc<Mutex<Vec<Request>>> = Default::default();
    let down: Arc<std::sync::atomic::AtomicBool> = Default::default();
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::post(handle))
        .with_state((requests.clone(), down.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Loopback {
        base,
        requests,
        down,
    }
}

// ---------------------------------------------------------------------------
// A test's database, handler and config

fn example(system: &str, file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(system)
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Setup {
    system: System,
    db: TestDb,
    client: Client,
    handler: Loopback,
    storage: tempfile::TempDir,
    config: PathBuf,
}

/// A migrated database with `systems`' example migrations applied, a loopback
/// handler, and their example configs (pointed at it, then `edit`ed) in one file.
async fn setup_many(systems: &[System], edit: impl Fn(String) -> String) -> Setup {
    let db = common::migrated_db().await;
    let client = db.client().await;
    let handler = loopback().await;
    let mut config = String::new();
    for system in systems {
        client
            .batch_execute(&example(system.dir, "migration.sql"))
            .await
            .unwrap_or_else(|e| panic!("{} migration: {e:?}", system.dir));
        config.push_str(&example(system.dir, "reactor.toml"));
        config.push('\n');
    }
    let storage = tempfile::tempdir().unwrap();
    let path = storage.path().join("reactor.toml");
    std::fs::write(&path, edit(config.replace(EXAMPLE_BASE, &handler.base))).unwrap();
    Setup {
        system: systems[0],
        db,
        client,
        handler,
        storage,
        config: path,
    }
}

async fn setup(system: System) -> Setup {
    setup_many(&[system], |c| c).await
}

impl Setup {
    /// Flags pointing a reactor at the config, plus `extra`.
    fn flags<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut flags = vec![
            "--config",
            self.config.to_str().unwrap(),
            "--http-secret",
            SECRET,
        ];
        flags.extend_from_slice(extra);
        flags
    }

    async fn start(&self, extra: &[&str]) -> common::InProcess {
        let reactor = start_reactor(&self.db, self.storage.path(), &self.flags(extra)).await;
        reactor.wait_ready().await;
        reactor
    }

    fn spawn(&self, extra: &[&str]) -> ChildReactor {
        ChildReactor::spawn(&self.db, self.storage.path(), &self.flags(extra))
    }

    fn insert_sql(&self, id: Uuid, user: Uuid, job_type: Option<&str>, marker: &str) -> String {
        self.system
            .insert
            .replace("{id}", &id.to_string())
            .replace("{user}", &user.to_string())
            .replace("{type}", job_type.or(self.system.job_type).unwrap_or(""))
            .replace("{marker}", marker)
    }

    /// Inserts a job as its owner would through Supabase; returns its id.
    async fn submit(&self, user: Uuid, job_type: Option<&str>, marker: &str) -> Uuid {
        let id = Uuid::new_v4();
        let mut client = self.db.client().await;
        let n = as_user(
            &mut client,
            user,
            &self.insert_sql(id, user, job_type, marker),
        )
        .await
        .unwrap_or_else(|e| panic!("owner's insert into {}: {e:?}", self.system.table));
        assert_eq!(n, 1);
        id
    }

    /// A column of a row, as text.
    async fn column(&self, column: &str, id: Uuid) -> Option<String> {
        self.client
            .query_one(
                &format!(
                    "select {column}::text from {} where id = $1",
                    self.system.table
                ),
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn status(&self, id: Uuid) -> String {
        self.column("status", id).await.unwrap()
    }

    async fn wait_status(&self, id: Uuid, status: &str) {
        eventually(
            &format!("{} row {id} {status}", self.system.table),
            LONG,
            || async { self.status(id).await == status },
        )
        .await;
    }

    /// Everything the reactors logged so far (ChildReactor logs), without colours.
    fn logs(&self) -> String {
        common::child_logs(self.storage.path())
    }
}

// ---------------------------------------------------------------------------
// The behaviours, for any system

async fn an_owners_row_is_processed_end_to_end(system: System) {
    let s = setup(system).await;
    // Sweeps far away: the insert's notification (watch_table) does it.
    let reactor = s.start(&["--sweep-interval", "1h"]).await;
    let owner = auth_user(&s.client).await;
    let stranger = auth_user(&s.client).await;
    let id = s.submit(owner, None, OK).await;
    s.wait_status(id, system.succeeded).await;

    let requests = s.handler.requests_for(id);
    assert_eq!(requests.len(), 1, "one request for one row");
    let request = &requests[0];
    assert_eq!(request.path, system.path, "routed to the configured URL");
    assert_eq!(request.verified, Ok(()), "the signature verifies");
    assert_eq!(request.attempt, "1");
    // The row itself, as the claim left it.
    assert_eq!(request.body["id"], id.to_string());
    assert_eq!(request.body["user_id"], owner.to_string());
    assert_eq!(
        request.body["status"], system.processing,
        "claimed before it was sent"
    );
    assert!(String::from_utf8_lossy(&request.raw).contains(OK));

    if let Some(url_column) = system.url_column {
        assert_eq!(
            s.column(url_column, id).await.as_deref(),
            Some(format!("https://cdn.example.test/{id}.png").as_str())
        );
    }
    if let Some(result_column) = system.result_column {
        let path = s
            .column(
                &format!("{result_column} -> 'outputs' -> 0 ->> 'storage_path'"),
                id,
            )
            .await;
        assert_eq!(path, Some(format!("{id}/front.png")));
    }
    assert_eq!(s.column(system.error_column, id).await, None);

    // The owner sees the outcome; nobody else sees the row.
    let mut client = s.db.client().await;
    let done = format!(
        "select 1 from {} where id = '{id}' and status = '{}'",
        system.table, system.succeeded
    );
    assert_eq!(as_user(&mut client, owner, &done).await.unwrap(), 1);
    assert_eq!(as_user(&mut client, stranger, &done).await.unwrap(), 0);
    if system.dir == PRODUCT_PACK.dir {
        let outputs = format!(
            "select 1 from job_outputs where job_id = '{id}' and storage_path = '{id}/front.png' and angle = 'front' and width = 1024"
        );
        assert_eq!(as_user(&mut client, owner, &outputs).await.unwrap(), 1);
        assert_eq!(as_user(&mut client, stranger, &outputs).await.unwrap(), 0);
    }
    assert_eq!(
        count(&s.client, "select count(*) from reactor.handler_state").await,
        0,
        "no state left behind"
    );
    reactor.stop().await;
}

async fn failures_retry_and_end_failed_with_the_error(system: System) {
    let s = setup(system).await;
    let reactor = s.start(&["--max-attempts", "5"]).await;
    let owner = auth_user(&s.client).await;
    let id = s.submit(owner, None, FAIL).await;
    s.wait_status(id, system.failed).await;

    let attempts = system.attempts_with_global_5;
    let requests = s.handler.requests_for(id);
    assert_eq!(requests.len(), attempts, "one request per attempt");
    let numbers: Vec<String> = requests.iter().map(|r| r.attempt.clone()).collect();
    let expected: Vec<String> = (1..=attempts).map(|n| n.to_string()).collect();
    assert_eq!(numbers, expected);
    let error = s.column(system.error_column, id).await.unwrap_or_default();
    assert!(
        error.contains("HTTP 200") && error.contains("not JSON"),
        "{error}"
    );
    assert!(
        error.contains(&s.handler.base),
        "the error names the URL: {error}"
    );
    if let Some(retry_column) = system.retry_column {
        assert_eq!(
            s.column(retry_column, id).await,
            Some(attempts.to_string()),
            "every failed attempt counted"
        );
    }
    if let Some(url_column) = system.url_column {
        assert_eq!(s.column(url_column, id).await, None);
    }
    // The failure is on the row, so the reactor keeps no state for it.
    wait_for_count(
        &s.client,
        "state cleared",
        "select count(*) from reactor.handler_state",
        0,
    )
    .await;

    // Later jobs still run, and the failed one is not sent again.
    let next = s.submit(owner, None, OK).await;
    s.wait_status(next, system.succeeded).await;
    assert_eq!(s.handler.requests_for(id).len(), attempts);
    assert_eq!(s.status(id).await, system.failed);
    reactor.stop().await;
}

async fn rows_inserted_while_the_reactor_is_down_are_replayed(system: System) {
    let s = setup(system).await;
    let owner = auth_user(&s.client).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(s.submit(owner, None, OK).await);
    }
    // One row a reactor claimed and then died on.
    s.client
        .execute(
            &format!(
                "update {} set status = '{}' where id = $1",
                system.table, system.processing
            ),
            &[&ids[0]],
        )
        .await
        .unwrap();

    // Sweeps far away: only the start-up replay can find them.
    let reactor = s.start(&["--sweep-interval", "1h"]).await;
    for id in &ids {
        s.wait_status(*id, system.succeeded).await;
        assert_eq!(s.handler.requests_for(*id).len(), 1, "row {id}");
    }
    assert_eq!(s.handler.all().len(), ids.len());
    reactor.stop().await;
}

async fn two_reactors_never_process_a_row_twice(system: System) {
    let s = setup(system).await;
    let owner = auth_user(&s.client).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(s.submit(owner, None, OK).await);
    }
    let _first = s.spawn(&["--concurrency", "4"]);
    let _second = s.spawn(&["--concurrency", "4"]);
    for _ in 0..10 {
        ids.push(s.submit(owner, None, OK).await);
    }
    for id in &ids {
        s.wait_status(*id, system.succeeded).await;
    }
    for id in &ids {
        let requests = s.handler.requests_for(*id);
        assert_eq!(
            requests.len(),
            1,
            "row {id} was sent {} times",
            requests.len()
        );
        assert_eq!(requests[0].verified, Ok(()));
    }
    assert_eq!(s.handler.all().len(), ids.len());
}

async fn clients_submit_and_read_only_their_own_jobs_and_never_write_the_outcome(system: System) {
    let s = setup(system).await;
    let owner = auth_user(&s.client).await;
    let stranger = auth_user(&s.client).await;
    let id = s.submit(owner, None, OK).await;
    let mut client = s.db.client().await;
    let table = system.table;

    // Nobody else sees it.
    let select = format!("select 1 from {table} where id = '{id}'");
    assert_eq!(as_user(&mut client, owner, &select).await.unwrap(), 1);
    assert_eq!(as_user(&mut client, stranger, &select).await.unwrap(), 0);

    // No client writes the outcome: not the owner, not anyone else (the seeds'
    // holes), not in an insert.
    let outcome = format!(
        "update {table} set status = '{}' where id = '{id}'",
        system.succeeded
    );
    for user in [owner, stranger] {
        let refused = as_user(&mut client, user, &outcome).await;
        assert_refused(&refused, &format!("{user} updated the status"));
    }
    let anon = anon_sql(&mut client, &outcome).await;
    assert_refused(&anon, "anon updated the status");
    let forged = system.forged_insert.replace("{user}", &owner.to_string());
    let refused = as_user(&mut client, owner, &forged).await;
    assert_refused(&refused, "an insert that sets the outcome");
    // Nor submits for someone else.
    let for_other = s.insert_sql(Uuid::new_v4(), stranger, None, OK);
    let refused = as_user(&mut client, owner, &for_other).await;
    assert_refused(&refused, "an insert for another user");
    assert_eq!(s.status(id).await, system.pending);
    assert_eq!(
        count(&s.client, &format!("select count(*) from {table}")).await,
        1
    );
    if system.dir == PRODUCT_PACK.dir {
        let output = format!(
            "insert into job_outputs (job_id, storage_path) values ('{id}', 'someone/else.png')"
        );
        let refused = as_user(&mut client, owner, &output).await;
        assert_refused(&refused, "an owner's insert into job_outputs");
    }
    if system.dir == VISION_BOARD.dir {
        // The owner column the seed lacked is filled in from the JWT.
        as_user(
            &mut client,
            owner,
            "insert into vision_board_jobs (email, goals) values ('ada@example.test', '[]')",
        )
        .await
        .unwrap();
        assert_eq!(
            count(
                &s.client,
                &format!("select count(*) from vision_board_jobs where user_id = '{owner}'")
            )
            .await,
            2
        );
    }
}

/// Refused by privileges or row-level security (SQLSTATE 42501), not by accident.
fn assert_refused(result: &Result<u64, tokio_postgres::Error>, what: &str) {
    match result {
        Ok(n) => panic!("{what}: allowed ({n} rows)"),
        Err(e) => assert_eq!(common::sqlstate(e), "42501", "{what}: {e:?}"),
    }
}

/// Runs `sql` as role `anon` (no JWT), as Supabase runs a signed-out request.
async fn anon_sql(client: &mut Client, sql: &str) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute("set local role anon").await?;
    let n = tx.execute(sql, &[]).await?;
    tx.commit().await?;
    Ok(n)
}

async fn a_job_type_without_a_route_is_left_pending_with_a_warning(
    system: System,
    unrouted: &str,
    edit: impl Fn(String) -> String,
) {
    let s = setup_many(&[system], edit).await;
    let _reactor = s.spawn(&[]);
    let owner = auth_user(&s.client).await;
    let waiting = s.submit(owner, Some(unrouted), OK).await;
    let routed = s.submit(owner, None, OK).await;
    s.wait_status(routed, system.succeeded).await;
    eventually("the warning in the log", LONG, || async {
        s.logs().lines().any(|line| {
            line.contains("WARN")
                && line.contains("job_type has no route")
                && line.contains("table=public.jobs")
                && line.contains(&format!("job_type={unrouted}"))
                && line.contains("rows=1")
        })
    })
    .await;
    assert_eq!(s.status(waiting).await, system.pending, "left pending");
    assert_eq!(s.column(system.error_column, waiting).await, None);
    assert!(s.handler.requests_for(waiting).is_empty(), "never sent");
    assert_eq!(
        count(
            &s.client,
            &format!("select count(*) from reactor.handler_state where row_id = '{waiting}'")
        )
        .await,
        0,
        "never claimed"
    );
}

// ---------------------------------------------------------------------------
// seed 000: image_jobs

#[tokio::test]
async fn image_jobs_an_owners_row_is_processed_end_to_end() {
    an_owners_row_is_processed_end_to_end(IMAGE_JOBS).await;
}

#[tokio::test]
async fn image_jobs_failures_retry_and_end_failed_with_the_error() {
    failures_retry_and_end_failed_with_the_error(IMAGE_JOBS).await;
}

#[tokio::test]
async fn image_jobs_rows_inserted_while_the_reactor_is_down_are_replayed() {
    rows_inserted_while_the_reactor_is_down_are_replayed(IMAGE_JOBS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_jobs_two_reactors_never_process_a_row_twice() {
    two_reactors_never_process_a_row_twice(IMAGE_JOBS).await;
}

#[tokio::test]
async fn image_jobs_clients_submit_and_read_only_their_own_jobs_and_never_write_the_outcome() {
    clients_submit_and_read_only_their_own_jobs_and_never_write_the_outcome(IMAGE_JOBS).await;
}

#[tokio::test]
async fn image_jobs_a_handler_slower_than_the_timeout_is_retried_for_its_budget_then_fails_as_timed_out(
) {
    let s = setup_many(&[IMAGE_JOBS], |c| {
        c.replace(
            "timeout = \"60s\"",
            "timeout = \"300ms\"\nretry_for = \"3s\"",
        )
    })
    .await;
    let reactor = s
        .start(&["--max-attempts", "1", "--retry-backoff", "200ms"])
        .await;
    let owner = auth_user(&s.client).await;
    let id = s.submit(owner, None, SLOW).await;
    s.wait_status(id, IMAGE_JOBS.failed).await;
    let error = s.column("error_message", id).await.unwrap_or_default();
    assert!(error.contains("timed out after 300ms"), "{error}");
    // A timeout is an outage: retried past the attempt limit, for the budget.
    assert!(s.handler.requests_for(id).len() >= 3);
    reactor.stop().await;
}

/// A reactor whose lease was taken over while its request was in flight (as
/// when it was paused past the lease and another reactor claimed the row)
/// writes nothing back when the answer comes: the row keeps the new holder's
/// state, and the new holder's lease stays. The write-back and the release of
/// the lease are one fenced statement; this is its fence.
#[tokio::test]
async fn image_jobs_an_answer_that_comes_after_the_lease_was_taken_over_is_not_written_back() {
    let s = setup(IMAGE_JOBS).await;
    let reactor = s.spawn(&[]);
    let owner = auth_user(&s.client).await;
    let id = s.submit(owner, None, SLOW).await;
    eventually("the slow request", LONG, || async {
        !s.handler.requests_for(id).is_empty()
    })
    .await;
    let taken = s
        .client
        .execute(
            "update reactor.handler_state
             set lease_owner = gen_random_uuid(), lease_token = lease_token + 1,
                 lease_expires_at = now() + interval '1 hour'
             where row_id = $1::uuid::text and lease_owner is not null",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        taken, 1,
        "the reactor held the row's lease during its request"
    );
    eventually("the late answer discarded", LONG, || async {
        s.logs().contains("lease lost")
    })
    .await;
    assert_eq!(s.status(id).await, IMAGE_JOBS.processing);
    assert_eq!(s.column("final_image_url", id).await, None);
    let leases: i64 = s
        .client
        .query_one(
            "select count(*) from reactor.handler_state
             where row_id = $1::uuid::text and lease_expires_at > now() + interval '50 minutes'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leases, 1, "the new holder's lease was dropped");
    assert_eq!(s.handler.requests_for(id).len(), 1);
    drop(reactor);
}

/// The worker down for a while (HTTP 503 to everything): no row is failed
/// or dead however many attempts it takes, and once the worker is back each
/// row is posted until it succeeds, and never again after that.
#[tokio::test]
async fn generic_jobs_a_worker_outage_fails_nothing_and_each_row_succeeds_once_it_is_back() {
    let s = setup(GENERIC_JOBS).await;
    s.handler
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Two attempts would have failed a row before; the backoff is short so
    // the outage spans many attempts.
    let reactor = s
        .start(&[
            "--max-attempts",
            "2",
            "--retry-backoff",
            "100ms",
            "--retry-backoff-max",
            "1s",
        ])
        .await;
    let owner = auth_user(&s.client).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(s.submit(owner, None, OK).await);
    }
    for id in &ids {
        eventually("many attempts during the outage", LONG, || async {
            s.handler.requests_for(*id).len() >= 6
        })
        .await;
    }
    assert_eq!(
        count(
            &s.client,
            "select count(*) from reactor.handler_state where dead_at is not null"
        )
        .await,
        0,
        "nothing dead during the outage"
    );
    for id in &ids {
        assert_ne!(s.status(*id).await, "failed");
    }
    s.handler
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    for id in &ids {
        s.wait_status(*id, "completed").await;
    }
    // Sweeps and wake-ups go on: a succeeded row is not posted again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        let served: Vec<Request> = s
            .handler
            .requests_for(*id)
            .into_iter()
            .filter(|r| !r.during_outage)
            .collect();
        assert_eq!(served.len(), 1, "row {id} posted once after the outage");
        assert_eq!(s.column("error", *id).await, None);
    }
    wait_for_count(
        &s.client,
        "state cleared",
        "select count(*) from reactor.handler_state",
        0,
    )
    .await;
    reactor.stop().await;
}

/// A 4xx other than 408/429 says the request is wrong: no retry.
#[tokio::test]
async fn generic_jobs_a_4xx_answer_fails_the_row_at_once_with_the_error() {
    let s = setup(GENERIC_JOBS).await;
    let reactor = s.start(&["--max-attempts", "5"]).await;
    let owner = auth_user(&s.client).await;
    let id = s.submit(owner, None, REJECT).await;
    s.wait_status(id, "failed").await;
    let error = s.column("error", id).await.unwrap_or_default();
    assert!(
        error.contains("HTTP 400") && error.contains("renderer refused the input"),
        "{error}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.handler.requests_for(id).len(), 1, "not retried");
    reactor.stop().await;
}

#[tokio::test]
async fn requests_are_signed_so_webhook_signature_verify_accepts_them_and_rejects_another_key() {
    let s = setup(IMAGE_JOBS).await;
    let reactor = s.start(&[]).await;
    let owner = auth_user(&s.client).await;
    let id = s.submit(owner, None, OK).await;
    s.wait_status(id, IMAGE_JOBS.succeeded).await;
    reactor.stop().await;
    let request = s.handler.requests_for(id).remove(0);
    let now = chrono::Utc::now().timestamp();
    let check = |secret: &Secret, body: &[u8]| {
        webhook_signature::verify(
            secret,
            Some(&request.id),
            Some(&request.timestamp),
            Some(&request.signature),
            body,
            now,
        )
    };
    let secret = Secret::parse(SECRET).unwrap();
    assert_eq!(check(&secret, &request.raw), Ok(()));
    assert!(request.signature.starts_with("v1,"));
    let other = Secret::parse("whsec_c2VjcmV0LWtleS1vZi1zb21lb25lLWVsc2U=").unwrap();
    assert_eq!(
        check(&other, &request.raw),
        Err(webhook_signature::SignatureError::Mismatch)
    );
    let mut tampered = request.raw.clone();
    tampered.extend_from_slice(b" ");
    assert_eq!(
        check(&secret, &tampered),
        Err(webhook_signature::SignatureError::Mismatch)
    );
}

#[tokio::test]
async fn a_table_that_is_not_watched_is_still_worked_by_sweeps_and_the_log_says_how_to_watch_it() {
    let s = setup(IMAGE_JOBS).await;
    s.client
        .batch_execute("select reactor.unwatch_table('public.image_jobs')")
        .await
        .unwrap();
    let _reactor = s.spawn(&[]);
    let owner = auth_user(&s.client).await;
    let id = s.submit(owner, None, OK).await;
    s.wait_status(id, IMAGE_JOBS.succeeded).await;
    eventually("the hint in the log", LONG, || async {
        s.logs()
            .contains("select reactor.watch_table('public.image_jobs', 'status')")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_does_not_fit_the_table_posts_nothing_and_the_log_says_why() {
    // image_job_status has 'completed', not 'complete': the answer could never be written.
    let s = setup_many(&[IMAGE_JOBS], |c| {
        c.replace("succeeded = \"completed\"", "succeeded = \"complete\"")
    })
    .await;
    let _reactor = s.spawn(&[]);
    let owner = auth_user(&s.client).await;
    let id = s.submit(owner, None, OK).await;
    eventually("the mismatch in the log", LONG, || async {
        s.logs().lines().any(|line| {
            line.contains("ERROR")
                && line.contains("table=public.image_jobs")
                && line.contains("does not match REACTOR_CONFIG (success statement)")
                && line.contains("\"complete\"")
        })
    })
    .await;
    assert!(s.handler.requests_for(id).is_empty(), "nothing was posted");
    assert_eq!(s.status(id).await, IMAGE_JOBS.pending);
}

// ---------------------------------------------------------------------------
// seed 002: the generic jobs table

#[tokio::test]
async fn generic_jobs_an_owners_row_is_processed_end_to_end() {
    an_owners_row_is_processed_end_to_end(GENERIC_JOBS).await;
}

#[tokio::test]
async fn generic_jobs_failures_retry_and_end_failed_with_the_error() {
    failures_retry_and_end_failed_with_the_error(GENERIC_JOBS).await;
}

#[tokio::test]
async fn generic_jobs_rows_inserted_while_the_reactor_is_down_are_replayed() {
    rows_inserted_while_the_reactor_is_down_are_replayed(GENERIC_JOBS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_jobs_two_reactors_never_process_a_row_twice() {
    two_reactors_never_process_a_row_twice(GENERIC_JOBS).await;
}

#[tokio::test]
async fn generic_jobs_clients_submit_and_read_only_their_own_jobs_and_never_write_the_outcome() {
    clients_submit_and_read_only_their_own_jobs_and_never_write_the_outcome(GENERIC_JOBS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_jobs_a_job_type_without_a_route_is_left_pending_with_a_warning() {
    a_job_type_without_a_route_is_left_pending_with_a_warning(GENERIC_JOBS, "no_such_type", |c| c)
        .await;
}

#[tokio::test]
async fn generic_jobs_a_failed_attempt_is_retried_counted_and_then_completes() {
    let s = setup(GENERIC_JOBS).await;
    let reactor = s.start(&[]).await;
    let owner = auth_user(&s.client).await;
    let id = s.submit(owner, None, FLAKY).await;
    s.wait_status(id, "completed").await;
    let attempts: Vec<String> = s
        .handler
        .requests_for(id)
        .iter()
        .map(|r| r.attempt.clone())
        .collect();
    assert_eq!(attempts, ["1", "2"]);
    assert_eq!(s.column("retry_count", id).await.as_deref(), Some("1"));
    assert_eq!(s.column("error", id).await, None);
    reactor.stop().await;
}

#[tokio::test]
async fn generic_jobs_a_failed_job_set_back_to_pending_runs_again() {
    let s = setup(GENERIC_JOBS).await;
    let reactor = s.start(&[]).await;
    let owner = auth_user(&s.client).await;
    let id = s.submit(owner, None, FAIL).await;
    s.wait_status(id, "failed").await;
    // The service retries it (with a fixed input), as seed 002's "retry logic" would.
    s.client
        .execute(
            &format!(
                "update jobs set status = 'pending', payload = '{{\"marker\": \"{OK}\"}}' where id = $1"
            ),
            &[&id],
        )
        .await
        .unwrap();
    s.wait_status(id, "completed").await;
    let requests = s.handler.requests_for(id);
    assert_eq!(requests.len(), 4, "3 failed, then 1 more");
    // Every delivery is its own message (a worker de-duplicating on webhook-id
    // must not drop the re-run), about the same row, and verifiable either way.
    let ids: std::collections::HashSet<&str> =
        requests.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), 4, "webhook-ids: {ids:?}");
    assert!(!ids.contains(""));
    for r in &requests {
        assert_eq!(r.id, id.to_string());
        assert_eq!(r.verified, Ok(()));
        assert_eq!(r.standard_verified, Ok(()));
    }
    assert_eq!(s.column("retry_count", id).await.as_deref(), Some("3"));
    reactor.stop().await;
}

// ---------------------------------------------------------------------------
// seed 003: vision_board_jobs

#[tokio::test]
async fn vision_board_an_owners_row_is_processed_end_to_end() {
    an_owners_row_is_processed_end_to_end(VISION_BOARD).await;
}

#[tokio::test]
async fn vision_board_failures_retry_and_end_failed_with_the_error() {
    failures_retry_and_end_failed_with_the_error(VISION_BOARD).await;
}

#[tokio::test]
async fn vision_board_rows_inserted_while_the_reactor_is_down_are_replayed() {
    rows_inserted_while_the_reactor_is_down_are_replayed(VISION_BOARD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vision_board_two_reactors_never_process_a_row_twice() {
    two_reactors_never_process_a_row_twice(VISION_BOARD).await;
}

#[tokio::test]
async fn vision_board_clients_submit_and_read_only_their_own_jobs_and_never_write_the_outcome() {
    clients_submit_and_read_only_their_own_jobs_and_never_write_the_outcome(VISION_BOARD).await;
}

// ---------------------------------------------------------------------------
// seed 001: product-pack jobs / job_outputs

#[tokio::test]
async fn product_pack_an_owners_row_is_processed_end_to_end() {
    an_owners_row_is_processed_end_to_end(PRODUCT_PACK).await;
}

#[tokio::test]
async fn product_pack_failures_retry_and_end_failed_with_the_error_after_the_tables_own_max_attempts(
) {
    failures_retry_and_end_failed_with_the_error(PRODUCT_PACK).await;
}

#[tokio::test]
async fn product_pack_rows_inserted_while_the_reactor_is_down_are_replayed() {
    rows_inserted_while_the_reactor_is_down_are_replayed(PRODUCT_PACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_pack_two_reactors_never_process_a_row_twice() {
    two_reactors_never_process_a_row_twice(PRODUCT_PACK).await;
}

#[tokio::test]
async fn product_pack_clients_submit_and_read_only_their_own_jobs_and_never_write_the_outcome() {
    clients_submit_and_read_only_their_own_jobs_and_never_write_the_outcome(PRODUCT_PACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_pack_a_job_type_without_a_route_is_left_pending_with_a_warning() {
    a_job_type_without_a_route_is_left_pending_with_a_warning(
        PRODUCT_PACK,
        "extract_garment",
        |c| {
            let without: String = c
                .lines()
                .filter(|l| !l.starts_with("extract_garment"))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_ne!(without, c, "the route was in the example config");
            without
        },
    )
    .await;
}

#[tokio::test]
async fn product_pack_each_job_type_goes_to_its_own_url() {
    let s = setup(PRODUCT_PACK).await;
    let reactor = s.start(&[]).await;
    let owner = auth_user(&s.client).await;
    let mut expected = Vec::new();
    for (job_type, path) in [
        ("product_pack", "/product-pack/render"),
        ("tryon_image", "/product-pack/try-on"),
        ("canvas_edit", "/product-pack/canvas-edit"),
        ("extract_garment", "/product-pack/extract-garment"),
    ] {
        expected.push((s.submit(owner, Some(job_type), OK).await, path));
    }
    for (id, path) in expected {
        s.wait_status(id, "succeeded").await;
        let requests = s.handler.requests_for(id);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].path, path);
    }
    reactor.stop().await;
}

// ---------------------------------------------------------------------------
// Several tables, the config file, watch_table

#[tokio::test]
async fn one_config_replays_every_watched_table_on_start_up() {
    let s = setup_many(&[IMAGE_JOBS, VISION_BOARD], |c| c).await;
    let owner = auth_user(&s.client).await;
    let image = s.submit(owner, None, OK).await;
    let board = {
        let id = Uuid::new_v4();
        let sql = VISION_BOARD
            .insert
            .replace("{id}", &id.to_string())
            .replace("{user}", &owner.to_string())
            .replace("{marker}", OK);
        let mut client = s.db.client().await;
        as_user(&mut client, owner, &sql).await.unwrap();
        id
    };
    let reactor = s.start(&["--sweep-interval", "1h"]).await;
    s.wait_status(image, "completed").await;
    wait_for_count(
        &s.client,
        "vision board complete",
        &format!(
            "select count(*) from vision_board_jobs where id = '{board}' and status = 'complete'"
        ),
        1,
    )
    .await;
    assert_eq!(s.handler.requests_for(image)[0].path, IMAGE_JOBS.path);
    assert_eq!(s.handler.requests_for(board)[0].path, VISION_BOARD.path);
    reactor.stop().await;
}

/// `reactor::app::start` with REACTOR_CONFIG = `text`, against a database that
/// does not exist: the config must be refused before anything connects.
async fn start_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reactor.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = reactor::config::RunConfig::from_flags([
        "--database-url",
        "postgres://nobody@127.0.0.1:1/nothing",
        "--storage-url",
        &dir.path().display().to_string(),
        "--provider",
        "local",
        "--http-addr",
        "127.0.0.1:0",
        "--config",
        path.to_str().unwrap(),
        "--http-secret",
        SECRET,
    ])
    .unwrap();
    match reactor::app::start(cfg, Default::default()).await {
        Ok(_) => panic!("started with a bad config:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn an_invalid_config_file_is_refused_at_start_up_with_a_message_naming_the_bad_key() {
    let good = example("image_jobs", "reactor.toml");
    let typo = good.replace("error_column", "eror_column");
    let err = start_error(&typo).await;
    assert!(err.contains("eror_column"), "{err}");
    assert!(err.contains("REACTOR_CONFIG"), "{err}");

    let unknown_http_key = good.replace("timeout = ", "time_out = ");
    let err = start_error(&unknown_http_key).await;
    assert!(err.contains("time_out"), "{err}");

    let bad_value = good.replace("timeout = \"60s\"", "timeout = \"soon\"");
    let err = start_error(&bad_value).await;
    assert!(
        err.contains("public.image_jobs") && err.contains("`http.timeout`"),
        "{err}"
    );

    let missing = good.replace("succeeded = \"completed\"\n", "");
    let err = start_error(&missing).await;
    assert!(err.contains("succeeded"), "{err}");

    // The binary refuses to start too, with the same message.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reactor.toml");
    std::fs::write(&path, &typo).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args([
            "run",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/nothing",
            "--provider",
            "local",
            "--http-addr",
            "127.0.0.1:0",
            "--http-secret",
            SECRET,
        ])
        .env("REACTOR_CONFIG", &path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("eror_column"), "{stderr}");
}

/// A connection LISTENing on `reactor` and `job_status`.
async fn listen(
    db: &TestDb,
) -> (
    Client,
    tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    client
        .batch_execute("listen reactor; listen job_status")
        .await
        .unwrap();
    (client, rx)
}

async fn next_note(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification in time")
        .expect("listener running")
}

#[tokio::test]
async fn watch_table_sends_the_documented_payload_on_insert_and_on_a_real_status_change_only() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    client
        .batch_execute(
            "create schema shop;
             create table shop.orders (order_no bigint primary key, state text, buyer uuid, note text);
             select reactor.watch_table('shop.orders', 'state', 'buyer');",
        )
        .await
        .unwrap();
    let (_listener, mut rx) = listen(&db).await;
    let buyer = Uuid::new_v4();
    client
        .execute(
            "insert into shop.orders values (42, 'new \"one\"', $1)",
            &[&buyer],
        )
        .await
        .unwrap();
    let insert = format!(
        r#"{{"table":"orders","op":"INSERT","id":"42","owner_id":"{buyer}","status":"new \"one\"","old_status":null}}"#
    );
    assert_eq!(next_note(&mut rx).await, ("reactor".into(), insert.clone()));
    assert_eq!(next_note(&mut rx).await, ("job_status".into(), insert));

    // Neither another column nor the same status makes a sound.
    client
        .batch_execute(
            "update shop.orders set note = 'gift wrap'; update shop.orders set state = state",
        )
        .await
        .unwrap();
    client
        .batch_execute("update shop.orders set state = null, buyer = null")
        .await
        .unwrap();
    let update = r#"{"table":"orders","op":"UPDATE","id":"42","owner_id":null,"status":null,"old_status":"new \"one\""}"#;
    assert_eq!(next_note(&mut rx).await, ("reactor".into(), update.into()));
    assert_eq!(
        next_note(&mut rx).await,
        ("job_status".into(), update.into())
    );

    // The payload is what the reactor parses.
    match reactor::engine::notification::parse(update).unwrap() {
        reactor::engine::notification::Message::Change(change) => {
            assert_eq!(change.table, "orders");
            assert_eq!(change.id, "42");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn watch_table_twice_notifies_once_and_unwatch_table_stops_the_notifications() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    client
        .batch_execute(
            "create table t (id uuid primary key default gen_random_uuid(), status text default 'pending');
             select reactor.watch_table('t');
             select reactor.watch_table('t');",
        )
        .await
        .unwrap();
    let (_listener, mut rx) = listen(&db).await;
    client
        .batch_execute("insert into t default values")
        .await
        .unwrap();
    assert_eq!(next_note(&mut rx).await.0, "reactor");
    assert_eq!(next_note(&mut rx).await.0, "job_status");
    // The sentinel comes next: the second watch_table added no second trigger.
    client
        .batch_execute("select pg_notify('reactor', 'sentinel-1')")
        .await
        .unwrap();
    assert_eq!(next_note(&mut rx).await.1, "sentinel-1");

    client
        .batch_execute(
            "select reactor.unwatch_table('t'); select reactor.unwatch_table('t');
             insert into t default values; update t set status = 'done';
             select pg_notify('reactor', 'sentinel-2')",
        )
        .await
        .unwrap();
    assert_eq!(next_note(&mut rx).await.1, "sentinel-2");
}

#[tokio::test]
async fn watch_table_refuses_a_table_without_a_single_column_primary_key_or_without_the_columns() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    client
        .batch_execute(
            "create table no_pk (id uuid, status text);
             create table two_col_pk (a int, b int, status text, primary key (a, b));
             create table fine (id uuid primary key, status text, owner uuid);",
        )
        .await
        .unwrap();
    let refusal = |sql: &'static str| {
        let client = &client;
        async move {
            let e = client.batch_execute(sql).await.unwrap_err();
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default()
        }
    };
    let e = refusal("select reactor.watch_table('no_pk')").await;
    assert!(e.contains("no_pk") && e.contains("no primary key"), "{e}");
    let e = refusal("select reactor.watch_table('two_col_pk')").await;
    assert!(
        e.contains("two_col_pk") && e.contains("(a, b)") && e.contains("single-column"),
        "{e}"
    );
    let e = refusal("select reactor.watch_table('fine', 'state')").await;
    assert!(e.contains("column \"state\" does not exist"), "{e}");
    let e = refusal("select reactor.watch_table('fine', 'status', 'user_id')").await;
    assert!(e.contains("column \"user_id\" does not exist"), "{e}");
    // Nothing was installed by the refusals.
    assert_eq!(
        count(
            &client,
            "select count(*) from pg_trigger where tgname like 'reactor_watch_%'"
        )
        .await,
        0
    );
    // Clients cannot call it.
    let mut client = db.client().await;
    let user = auth_user(&client).await;
    assert!(
        as_user(&mut client, user, "select reactor.watch_table('fine')")
            .await
            .is_err()
    );
}

/// Issue 11: a row waiting for its retry that is finished by someone else
/// (no longer pending) leaves no state behind for the http handler.
#[tokio::test]
async fn a_row_waiting_for_its_retry_and_finished_elsewhere_leaves_no_state() {
    let s = setup(VISION_BOARD).await;
    let reactor = s
        .start(&["--max-attempts", "5", "--retry-backoff", "10m"])
        .await;
    let owner = auth_user(&s.client).await;
    let id = s.submit(owner, None, FAIL).await;
    let waiting = format!(
        "select count(*) from reactor.handler_state
         where row_id = '{id}' and attempts = 1 and lease_owner is null and dead_at is null"
    );
    wait_for_count(
        &s.client,
        "a failed attempt waiting for its retry",
        &waiting,
        1,
    )
    .await;
    s.client
        .execute(
            &format!(
                "update {} set status = '{}' where id = $1",
                VISION_BOARD.table, VISION_BOARD.succeeded
            ),
            &[&id],
        )
        .await
        .unwrap();
    wait_for_count(
        &s.client,
        "its state dropped",
        "select count(*) from reactor.handler_state",
        0,
    )
    .await;
    assert_eq!(s.handler.requests_for(id).len(), 1, "never posted again");
    reactor.stop().await;
}

// ---------------------------------------------------------------------------
// Sweeps in O(pending): the pending query must be served by an index

const PENDING_INDEX_SQL: &str =
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"image_jobs_reactor_pending\" \
     ON \"public\".\"image_jobs\" (\"id\") WHERE \"status\" in ('pending', 'processing')";

#[tokio::test]
async fn a_table_whose_pending_query_has_no_index_gets_a_warning_with_the_statement_that_adds_it() {
    let s = setup(IMAGE_JOBS).await;
    // Without the example's in-flight index (nor the one led by user_id).
    s.client
        .batch_execute(
            "drop index idx_image_jobs_in_flight; drop index idx_image_jobs_user_id_status",
        )
        .await
        .unwrap();
    let _reactor = s.spawn(&[]);
    eventually("the index advice in the log", LONG, || async {
        s.logs().lines().any(|line| {
            line.contains("WARN")
                && line.contains("table=public.image_jobs")
                && line.contains("the pending query reads the whole table")
                && line.contains(PENDING_INDEX_SQL)
        })
    })
    .await;
    // The advice, run as given, is what the check wants to see.
    s.client.batch_execute(PENDING_INDEX_SQL).await.unwrap();
    let _second = ChildReactor::spawn(&s.db, s.storage.path(), &s.flags(&[]));
    eventually("the second reactor's check passes", LONG, || async {
        s.logs()
            .lines()
            .any(|line| line.contains("the pending query is served by an index"))
    })
    .await;
}

#[tokio::test]
async fn a_table_whose_pending_query_is_index_served_gets_no_index_warning() {
    let s = setup(IMAGE_JOBS).await;
    let _reactor = s.spawn(&[]);
    eventually("the check in the log", LONG, || async {
        s.logs().lines().any(|line| {
            line.contains("table=public.image_jobs")
                && line.contains("the pending query is served by an index")
        })
    })
    .await;
    assert!(
        !s.logs().contains("the pending query reads the whole table"),
        "{}",
        s.logs()
    );
}

// ---------------------------------------------------------------------------
// The CLI reads REACTOR_CONFIG too

/// Runs the `reactor` binary against `database_url`, without REACTOR_HTTP_SECRET
/// (reading state signs nothing); `env` sets more variables.
fn cli(database_url: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("REACTOR_CONFIG")
        .env_remove("REACTOR_HTTP_SECRET")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn stdout_of(args: &[&str], out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn reactor_status_and_retry_see_the_own_tables_of_reactor_config() {
    let s = setup(IMAGE_JOBS).await;
    let owner = auth_user(&s.client).await;
    let id = s.submit(owner, None, FAIL).await;
    let handler = "http:public.image_jobs";
    s.client
        .execute(
            "insert into reactor.handler_state (handler, row_id, attempts, last_error, dead_at)
             values ($1, $2, 5, 'POST …: HTTP 500: renderer crashed', now())",
            &[&handler, &id.to_string()],
        )
        .await
        .unwrap();
    let config = s.config.to_str().unwrap();
    let with_config = [("REACTOR_CONFIG", config)];

    let status = stdout_of(&["status"], cli(&s.db.url, &["status"], &with_config));
    assert!(
        status
            .lines()
            .any(|l| l.contains(handler) && l.contains("1 pending") && l.contains("1 dead")),
        "the own table's handler is listed with its backlog: {status}"
    );
    assert!(
        status.contains("renderer crashed") && status.contains(&id.to_string()),
        "{status}"
    );
    let flag = ["status", "--config", config];
    let status = stdout_of(&flag, cli(&s.db.url, &flag, &[]));
    assert!(status.contains(handler), "--config works as well: {status}");
    let without = stdout_of(&["status"], cli(&s.db.url, &["status"], &[]));
    assert!(
        !without
            .lines()
            .any(|l| l.contains(handler) && l.contains("pending")),
        "without it the table has no backlog line (its dead row is still listed): {without}"
    );

    let retry = ["retry", "public.image_jobs", &id.to_string()];
    let bad = cli(&s.db.url, &retry, &[]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("no handler") && stderr.contains("REACTOR_CONFIG"),
        "without the config the table is unknown, and the error says where tables come from: {stderr}"
    );
    let retried = stdout_of(&retry, cli(&s.db.url, &retry, &with_config));
    assert!(
        retried.contains(&format!("retrying for {handler}")),
        "{retried}"
    );
    assert_eq!(
        count(&s.client, "select count(*) from reactor.handler_state").await,
        0
    );
    // By handler name as well (what `reactor status` lists).
    s.client
        .execute(
            "insert into reactor.handler_state (handler, row_id, attempts, last_error, dead_at)
             values ($1, $2, 5, 'again', now())",
            &[&handler, &id.to_string()],
        )
        .await
        .unwrap();
    let by_name = ["retry", handler, &id.to_string()];
    let retried = stdout_of(&by_name, cli(&s.db.url, &by_name, &with_config));
    assert!(
        retried.contains(&format!("retrying for {handler}")),
        "{retried}"
    );
}

#[tokio::test]
async fn reactor_status_and_retry_refuse_a_bad_config_file_with_the_reason() {
    // Checked before anything connects: no database needed.
    let nowhere = "postgres://nobody@127.0.0.1:1/nothing";
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[table]]\nname = \"image_jobs\"\nsucceeded = \"completed\"\nfailed = \"failed\"\n\
         error_column = \"error_message\"\n[table.http]\nurl = \"http://127.0.0.1:1/\"\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.toml");
    for path in [&bad, &missing] {
        let path = path.to_str().unwrap();
        for args in [&["status"][..], &["retry", "image_jobs", "1"][..]] {
            let out = cli(nowhere, args, &[("REACTOR_CONFIG", path)]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} with {path}");
            assert!(
                stderr.contains(&format!("REACTOR_CONFIG {path}")),
                "{args:?}: the error names the file: {stderr}"
            );
        }
    }
    let out = cli(
        nowhere,
        &["status"],
        &[("REACTOR_CONFIG", bad.to_str().unwrap())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`name` must be schema.table"),
        "and the bad key: {stderr}"
    );
}
