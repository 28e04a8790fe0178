//! Operating the reactor (issue 5): health, metrics, the live event stream
//! with Supabase tokens, the dashboard (in headless Chromium), `reactor watch`,
//! `status`, `retry`, and the Realtime broadcast.
mod common;

use common::{
    count, eventually, read_events, start_reactor_with_tokens, user_token, user_with_profile,
    wait_for_count, InProcess, ADMIN, JWT_SECRET,
};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

fn url(r: &InProcess, path: &str) -> String {
    format!("http://{}{path}", r.http_addr)
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    request.send().await.unwrap()
}

/// Inserts a job as the service, in a status of our choosing.
async fn job(client: &tokio_postgres::Client, owner: Uuid, status: &str) -> Uuid {
    client
        .query_one(
            "insert into generation_jobs (owner_id, mode, prompt, status) values ($1, 'imagine', 'x', $2) returning id",
            &[&owner, &status],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn healthz_is_always_up_and_readyz_follows_the_listener_and_the_database() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    assert_eq!(get(&url(&r, "/healthz"), None).await.status(), 200);
    eventually("ready", LONG, || async {
        get(&url(&r, "/readyz"), None).await.status() == 200
    })
    .await;

    // Take the database away: not ready. Give it back: ready again.
    let server =
        reactor::store::db::connect(&db.url.replace(&format!("/{}", db.name), "/postgres"))
            .await
            .unwrap();
    server
        .batch_execute(&format!(
            "alter database {name} with allow_connections false;
             select pg_terminate_backend(pid) from pg_stat_activity where datname = '{name}' and pid <> pg_backend_pid();",
            name = db.name
        ))
        .await
        .unwrap();
    eventually("not ready", LONG, || async {
        get(&url(&r, "/readyz"), None).await.status() == 503
    })
    .await;
    assert_eq!(
        get(&url(&r, "/healthz"), None).await.status(),
        200,
        "alive all along"
    );
    server
        .batch_execute(&format!(
            "alter database {} with allow_connections true",
            db.name
        ))
        .await
        .unwrap();
    eventually("ready again", LONG, || async {
        get(&url(&r, "/readyz"), None).await.status() == 200
    })
    .await;
    r.stop().await;
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_change_when_work_happens() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    r.wait_ready().await;
    let before = get(&url(&r, "/metrics"), None).await.text().await.unwrap();
    let handled = |t: &str| metric(t, "reactor_rows_handled_total", "handler=\"favorites\"");
    let client = db.client().await;
    for _ in 0..3 {
        user_with_profile(&client).await;
    }
    // And one generation, for the provider's metrics.
    let owner = user_with_profile(&client).await;
    let generated = job(&client, owner, "starting").await;
    let done = format!(
        "select count(*) from generation_jobs where id = '{generated}' and status = 'succeeded'"
    );
    wait_for_count(&client, "generation done", &done, 1).await;
    eventually("favorites counted", LONG, || async {
        let now = get(&url(&r, "/metrics"), None).await.text().await.unwrap();
        handled(&now) >= handled(&before) + 4.0
    })
    .await;
    let text = get(&url(&r, "/metrics"), None).await.text().await.unwrap();
    for name in [
        "reactor_handler_duration_seconds_bucket",
        "reactor_notify_to_start_seconds_bucket",
        "reactor_backlog",
        "reactor_provider_requests_total",
        // What sweeps (and polls) cost, per handler: duration and rows found.
        "reactor_sweep_duration_seconds_bucket{handler=\"usage\"",
        "reactor_sweep_rows_examined_total{handler=\"usage\"}",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    r.stop().await;
}

#[tokio::test]
async fn each_user_sees_only_their_own_jobs_on_the_event_stream_and_the_admin_sees_all() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    r.wait_ready().await;
    let client = db.client().await;
    let (alice, bob) = (
        user_with_profile(&client).await,
        user_with_profile(&client).await,
    );
    let mut alice_stream = get(
        &url(&r, "/v1/events"),
        Some(&user_token(alice, JWT_SECRET, 60)),
    )
    .await;
    let mut bob_stream = get(
        &url(
            &r,
            &format!(
                "/v1/events?access_token={}",
                user_token(bob, JWT_SECRET, 60)
            ),
        ),
        None,
    )
    .await;
    let mut admin_stream = get(&url(&r, "/v1/events"), Some(ADMIN)).await;
    assert_eq!(
        [
            alice_stream.status(),
            bob_stream.status(),
            admin_stream.status()
        ]
        .map(|s| s.as_u16()),
        [200, 200, 200]
    );

    let alices = job(&client, alice, "succeeded").await;
    let bobs = job(&client, bob, "succeeded").await;
    let has = |id: Uuid| {
        move |events: &[(String, serde_json::Value)]| {
            events.iter().any(|(_, e)| e["id"] == json!(id.to_string()))
        }
    };
    let a = read_events(&mut alice_stream, has(alices)).await;
    let b = read_events(&mut bob_stream, has(bobs)).await;
    let all = read_events(&mut admin_stream, |e| has(alices)(e) && has(bobs)(e)).await;
    assert!(
        a.iter()
            .all(|(kind, e)| kind == "job_status" && e["owner_id"] == json!(alice.to_string())),
        "{a:?}"
    );
    assert!(
        b.iter()
            .all(|(_, e)| e["owner_id"] == json!(bob.to_string())),
        "{b:?}"
    );
    assert!(
        all.iter()
            .any(|(_, e)| e["owner_id"] == json!(alice.to_string()))
            && all
                .iter()
                .any(|(_, e)| e["owner_id"] == json!(bob.to_string()))
    );
    r.stop().await;
}

#[tokio::test]
async fn expired_forged_or_missing_tokens_are_refused() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    let user = Uuid::new_v4();
    for token in [
        None,
        Some(user_token(
            user,
            "another-secret-another-secret-another-secret",
            60,
        )),
        Some(user_token(user, JWT_SECRET, -300)),
        Some("not.a.jwt".to_string()),
    ] {
        let response = get(&url(&r, "/v1/events"), token.as_deref()).await;
        assert_eq!(response.status(), 401, "token {token:?}");
    }
    // The admin API wants the admin token: 401 for strangers, 403 for users.
    assert_eq!(
        get(&url(&r, "/v1/admin/summary"), Some("wrong"))
            .await
            .status(),
        401
    );
    assert_eq!(
        get(
            &url(&r, "/v1/admin/summary"),
            Some(&user_token(user, JWT_SECRET, 60))
        )
        .await
        .status(),
        403
    );
    r.stop().await;
}

fn token_with(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn anon_tokens_and_the_admin_token_in_a_url_are_refused_on_the_event_stream() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    // The project's anon key is a valid signature with role anon: not a user.
    let anon = token_with(
        json!({"aud": "authenticated", "role": "anon", "sub": Uuid::new_v4().to_string(),
                                 "exp": chrono::Utc::now().timestamp() + 60}),
    );
    assert_eq!(get(&url(&r, "/v1/events"), Some(&anon)).await.status(), 401);
    assert_eq!(
        get(&url(&r, &format!("/v1/events?access_token={anon}")), None)
            .await
            .status(),
        401
    );
    // URLs end up in logs: the admin token only counts in the Authorization header.
    assert_eq!(
        get(&url(&r, &format!("/v1/events?access_token={ADMIN}")), None)
            .await
            .status(),
        401
    );
    assert_eq!(get(&url(&r, "/v1/events"), Some(ADMIN)).await.status(), 200);
    r.stop().await;
}

#[tokio::test]
async fn an_event_stream_ends_when_its_token_expires() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    let user = Uuid::new_v4();
    // Valid now, expired in two seconds.
    let mut stream = get(
        &url(&r, "/v1/events"),
        Some(&user_token(user, JWT_SECRET, 2)),
    )
    .await;
    assert_eq!(stream.status(), 200);
    let events = read_events(&mut stream, |e| e.iter().any(|(k, _)| k == "expired")).await;
    assert!(
        events.iter().any(|(k, _)| k == "expired"),
        "told why: {events:?}"
    );
    let end = tokio::time::timeout(LONG, async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            assert!(
                String::from_utf8_lossy(&chunk).starts_with(':'),
                "only keep-alives after expiry"
            );
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ended");
    r.stop().await;
}

/// An event-stream client that connects and then reads nothing, with a tiny
/// receive window so the kernel cannot absorb the stream for it.
async fn stuck_client(r: &InProcess) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(r.http_addr).await.unwrap();
    stream
        .write_all(
            format!("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_event_client_is_told_to_resync_and_holds_back_neither_the_reactor_nor_others() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    r.wait_ready().await;
    let client = db.client().await;
    let owner = user_with_profile(&client).await;
    let mut stuck = stuck_client(&r).await;
    let mut lively = get(&url(&r, "/v1/events"), Some(ADMIN)).await;
    // 6 × 500 changes, each batch read by the lively client before the next:
    // it keeps up; the stuck one falls more than its buffer behind.
    let mut seen = 0;
    for _ in 0..6 {
        client
            .execute(
                // Rendered already: the usage handler's work is their debit.
                "insert into generation_jobs (owner_id, mode, prompt, status, rendered_at) select $1, 'imagine', 'x', 'succeeded', now() from generate_series(1, 500)",
                &[&owner],
            )
            .await
            .unwrap();
        seen += 500;
        let events = read_events(&mut lively, |e| {
            e.iter().filter(|(k, _)| k == "job_status").count() >= 500
        })
        .await;
        assert!(
            events.iter().all(|(k, _)| k == "job_status"),
            "the reading client never has to resync"
        );
    }
    assert_eq!(seen, 3000);
    // The reactor kept working all along: every job is debited.
    wait_for_count(
        &client,
        "3000 debits",
        "select count(*) from usage_ledger",
        3000,
    )
    .await;
    // When the stuck client finally reads, it is told it missed events, and the stream ends.
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + LONG;
    while !String::from_utf8_lossy(&received).contains("event: resync") {
        let mut buf = [0u8; 65536];
        let n = tokio::time::timeout_at(
            deadline,
            tokio::io::AsyncReadExt::read(&mut stuck, &mut buf),
        )
        .await
        .expect("a resync event in time")
        .unwrap();
        assert!(n > 0, "stream closed without a resync event");
        received.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    let resync = &text[text.find("event: resync").unwrap()..];
    assert!(resync.contains("\"missed\""), "{resync}");
    r.stop().await;
}

#[tokio::test]
async fn the_admin_api_summarises_and_retries_a_dead_row() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = common::image_server().await;
    let client = db.client().await;
    let owner = user_with_profile(&client).await;
    let dead_job = common::succeeded_job(&client, owner, &[images.url("/missing/gone.jpg")]).await;
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    wait_for_count(
        &client,
        "dead row",
        "select count(*) from reactor.handler_state where dead_at is not null",
        1,
    )
    .await;
    let summary: serde_json::Value = get(&url(&r, "/v1/admin/summary"), Some(ADMIN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(summary["dead"][0]["row_id"], json!(dead_job.to_string()));
    assert!(summary["dead"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("gone"));
    assert!(summary["backlog"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["handler"] == "renders"));
    // Its pictures could not be stored: the job failed (and is not debited).
    assert_eq!(summary["jobs_by_status"], json!([["failed", 1]]));
    assert_eq!(summary["throughput"].as_array().unwrap().len(), 10);

    let html = get(&url(&r, "/dashboard"), None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("<title>reactor dashboard</title>") && !html.contains(ADMIN),
        "the page holds no secret"
    );

    let retry = reqwest::Client::new()
        .post(url(&r, "/v1/admin/retry"))
        .bearer_auth(ADMIN)
        .json(&json!({"handler": "renders", "row_id": dead_job.to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(
        retry.json::<serde_json::Value>().await.unwrap(),
        json!({"retried": true})
    );
    // It is attempted again: the job failed meanwhile, so there is nothing
    // to store and the row is done.
    wait_for_count(
        &client,
        "the retried row done",
        "select count(*) from reactor.handler_state",
        0,
    )
    .await;
    let unknown = reqwest::Client::new()
        .post(url(&r, "/v1/admin/retry"))
        .bearer_auth(ADMIN)
        .json(&json!({"handler": "nope", "row_id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    r.stop().await;
}

#[tokio::test]
async fn reactor_watch_prints_a_line_per_status_change() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    let owner = user_with_profile(&client).await;
    let other = user_with_profile(&client).await;
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args(["watch", "--owner", &owner.to_string()])
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_count(&client, "watch listening", "select count(*) from pg_stat_activity where datname = current_database() and query ilike 'LISTEN job_status%'", 1).await;
    let id = job(&client, owner, "starting").await;
    job(&client, other, "succeeded").await;
    client
        .execute(
            "update generation_jobs set status = 'processing' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let short = &id.to_string()[..8];
    let first = tokio::time::timeout(LONG, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(LONG, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        first.contains(&format!("job {short}")) && first.ends_with("new → starting"),
        "{first}"
    );
    assert!(
        second.contains(&format!("job {short}")) && second.ends_with("starting → processing"),
        "{second}"
    );
    assert!(
        first.contains(&format!("owner {}", &owner.to_string()[..8])),
        "{first}"
    );
}

#[tokio::test]
async fn reactor_status_and_retry_show_and_bring_back_a_dead_row() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    let owner = user_with_profile(&client).await;
    let id = job(&client, owner, "succeeded").await;
    // Rendered: its debit is due (the usage handler's row).
    client
        .execute(
            "update generation_jobs set rendered_at = now() where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    client
        .execute(
            "insert into reactor.handler_state (handler, row_id, attempts, last_error, dead_at) values ('usage', $1, 5, 'ledger said no', now())",
            &[&id.to_string()],
        )
        .await
        .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
            .args(args)
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let status = run(&["status"]);
    assert!(
        status.contains("ledger said no") && status.contains(&id.to_string()),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.contains("usage") && l.contains("1 pending") && l.contains("1 dead")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.contains("favorites") && l.contains("pending query") && l.contains(" ms)")),
        "the cost of each handler's pending query is shown: {status}"
    );
    assert!(status.contains("Free"), "{status}");
    let retried = run(&["retry", "generation_jobs", &id.to_string()]);
    assert!(retried.contains("retrying for usage"), "{retried}");
    assert_eq!(
        count(&client, "select count(*) from reactor.handler_state").await,
        0
    );
    let again = run(&["retry", "generation_jobs", &id.to_string()]);
    assert!(again.contains("nothing to retry"), "{again}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args(["retry", "no_such_table", "1"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("no handler"));
}

#[tokio::test]
async fn on_supabase_each_status_change_is_broadcast_to_the_owners_realtime_topic() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    common::install_realtime_recorder(&client).await;
    let owner = user_with_profile(&client).await;
    let mut c = db.client().await;
    // Submitted by the client itself: the broadcast must work for a client's insert.
    common::as_user(&mut c, owner, &format!("insert into generation_jobs (owner_id, mode, prompt) values ('{owner}', 'imagine', 'x')")).await.unwrap();
    client
        .execute("update generation_jobs set status = 'processing'", &[])
        .await
        .unwrap();
    let rows = client.query("select payload, event, topic, private from realtime.calls order by payload->>'status' desc", &[]).await.unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row.get::<_, String>(2), format!("job_status:{owner}"));
        assert_eq!(row.get::<_, String>(1), "status");
        assert!(row.get::<_, bool>(3), "private topic");
    }
    assert_eq!(
        rows[0].get::<_, serde_json::Value>(0)["status"],
        json!("starting")
    );
    assert_eq!(
        rows[1].get::<_, serde_json::Value>(0)["old_status"],
        json!("starting")
    );
}
