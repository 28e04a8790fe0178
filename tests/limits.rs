//! Limits and fairness (issue 24): a shared rate, a cap on attempts in flight,
//! provider push-back, fair turns between keys and limits per route, enforced through the
//! database across several `reactor run` processes, against a real PostgreSQL
//! and a loopback worker that records every call it receives.
mod common;

use common::{eventually, ChildReactor, TestDb};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::Client;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(90);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The test table's rows carry an owner; the one key of fair turns.
const TABLE: &str = "create table public.lim_jobs (
    id uuid primary key default gen_random_uuid(),
    owner_id uuid,
    job_type text,
    status text not null default 'pending',
    payload text not null default '',
    error text
  );
  create index lim_jobs_pending on public.lim_jobs (id) where status in ('pending', 'processing');
  create index lim_jobs_pending_by_owner on public.lim_jobs (owner_id, id)
    where status in ('pending', 'processing');
  select reactor.watch_table('public.lim_jobs', 'status', 'owner_id');";

// ---------------------------------------------------------------------------
// The loopback worker

/// One call the worker received.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    attempt: String,
    /// The row's job type (its route).
    job_type: String,
    started: chrono::DateTime<chrono::Utc>,
}

/// How the worker answers.
#[derive(Clone, Default)]
struct Behaviour {
    /// How long each call takes.
    delay: Duration,
    /// Answer the first call with 429 and this Retry-After (seconds).
    first_429: Option<u64>,
    /// Answer every call with 503 and this Retry-After (seconds).
    always_503: Option<u64>,
    /// Hold the first call of rows whose payload says `hang` for a minute
    /// (until the reactor that sent it is killed).
    hang_first: bool,
}

#[derive(Clone)]
struct Worker {
    url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    /// When the 429 was answered.
    pushed_back_at: Arc<Mutex<Option<chrono::DateTime<chrono::Utc>>>>,
    /// Per owner (the row's owner_id): calls at once now, and the most seen.
    per_owner: Arc<Mutex<HashMap<String, (usize, usize)>>>,
}

impl Worker {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn most_at_once(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
    fn most_at_once_of(&self, owner: Uuid) -> usize {
        let per_owner = self.per_owner.lock().unwrap();
        per_owner
            .get(&owner.to_string())
            .map_or(0, |(_, most)| *most)
    }
}

/// Counts a call in flight (in all and for its owner) until dropped, also
/// when the reactor hangs up.
struct InFlight(Worker, String);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
        if let Some((now, _)) = self.0.per_owner.lock().unwrap().get_mut(&self.1) {
            *now -= 1;
        }
    }
}

async fn worker(behaviour: Behaviour) -> Worker {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let w = Worker {
        url: format!("http://{}/work", listener.local_addr().unwrap()),
        calls: Default::default(),
        now: Default::default(),
        most: Default::default(),
        pushed_back_at: Default::default(),
        per_owner: Default::default(),
    };
    let refused = Arc::new(AtomicBool::new(false));
    type St = (Worker, Behaviour, Arc<AtomicBool>);
    async fn handle(
        State((w, b, refused)): State<St>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let row: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let owner = row["owner_id"].as_str().unwrap_or("").to_string();
        let now = w.now.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut per_owner = w.per_owner.lock().unwrap();
            let (now, most) = per_owner.entry(owner.clone()).or_default();
            *now += 1;
            *most = (*most).max(*now);
        }
        let _in_flight = InFlight(w.clone(), owner);
        w.most.fetch_max(now, Ordering::SeqCst);
        let call = Call {
            id: header("x-reactor-id"),
            attempt: header("x-reactor-attempt"),
            job_type: row["job_type"].as_str().unwrap_or("").to_string(),
            started: chrono::Utc::now(),
        };
        let earlier = {
            let mut calls = w.calls.lock().unwrap();
            let earlier = calls.iter().filter(|c| c.id == call.id).count();
            calls.push(call);
            earlier
        };
        if let Some(after) = b.first_429 {
            if !refused.swap(true, Ordering::SeqCst) {
                *w.pushed_back_at.lock().unwrap() = Some(chrono::Utc::now());
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", after.to_string())],
                    "slow down",
                )
                    .into_response();
            }
        }
        if let Some(after) = b.always_503 {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", after.to_string())],
                "down",
            )
                .into_response();
        }
        if b.hang_first && earlier == 0 && String::from_utf8_lossy(&body).contains("hang") {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        tokio::time::sleep(b.delay).await;
        axum::Json(serde_json::json!({})).into_response()
    }
    let app = axum::Router::new()
        .route("/work", axum::routing::post(handle))
        .with_state((w.clone(), behaviour, refused));
    tokio::spawn(async move { axum::serve(listener, app).await });
    w
}

// ---------------------------------------------------------------------------
// A database with the table, a config, reactors

struct Setup {
    db: TestDb,
    client: Client,
    storage: tempfile::TempDir,
    config: std::path::PathBuf,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// One test of this file at a time: each measures rates and concurrency of
/// several reactors on a 2-core machine, and 13 tests at once (some 40 debug
/// reactors) delay grants and calls by more than a burst's worth, in both
/// directions, which is the machine's load, not the limits.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How far a thread of this process oversleeps 10-ms naps while it lives: the
/// machine's stalls, for a rate test's failure message. (A stall of every
/// process longer than the bucket's burst lasts loses tokens: a bucket holds
/// at most `burst`, whatever the reactors do. The rate tests' bursts are a
/// second's worth, so a machine that stalls for under a second does not fail
/// them. CI's failures with a burst of 0.3 s had seconds of 12 and 3 calls by
/// turns, which reactors stopped for 0.7 s in every 2 reproduce here.)
struct StallWatch {
    worst: Arc<Mutex<Duration>>,
    stop: Arc<AtomicBool>,
}

impl StallWatch {
    fn start() -> Self {
        let (worst, stop) = (
            Arc::new(Mutex::new(Duration::ZERO)),
            Arc::new(AtomicBool::new(false)),
        );
        let (w, s) = (worst.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let nap = std::time::Instant::now();
                std::thread::sleep(Duration::from_millis(10));
                let late = nap.elapsed().saturating_sub(Duration::from_millis(10));
                let mut worst = w.lock().unwrap();
                *worst = (*worst).max(late);
            }
        });
        StallWatch { worst, stop }
    }

    /// "this process's 10-ms naps overslept by up to N ms".
    fn report(&self) -> String {
        format!(
            "this process's 10-ms naps overslept by up to {} ms",
            self.worst.lock().unwrap().as_millis()
        )
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A migrated database with the test table, and a config posting its rows
/// to `url` with `limits` (TOML lines of `[table.limits]`).
async fn setup(url: &str, limits: &str) -> Setup {
    setup_with("", &format!("url = \"{url}\""), limits).await
}

/// Rows routed by job type: `a` and `b` both go to `url`; `limits` (TOML)
/// follows `[table.limits]`, so route limits are `[table.limits.routes.a]`.
async fn setup_routes(url: &str, limits: &str) -> Setup {
    setup_with(
        "job_type_column = \"job_type\"",
        &format!("routes = {{ a = \"{url}\", b = \"{url}\" }}"),
        limits,
    )
    .await
}

/// `table`: TOML lines of `[[table]]`, `http`: of `[table.http]`.
async fn setup_with(table: &str, http: &str, limits: &str) -> Setup {
    let turn = ONE_AT_A_TIME.lock().await;
    let db = common::migrated_db().await;
    let client = db.client().await;
    client.batch_execute(TABLE).await.unwrap();
    let storage = tempfile::tempdir().unwrap();
    let config = storage.path().join("reactor.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[table]]
name = "public.lim_jobs"
succeeded = "done"
failed = "failed"
error_column = "error"
{table}

[table.http]
{http}

[table.limits]
{limits}
"#
        ),
    )
    .unwrap();
    Setup {
        db,
        client,
        storage,
        config,
        _turn: turn,
    }
}

impl Setup {
    /// The flags that give a reactor this setup's config.
    fn config_flags(&self) -> [&str; 4] {
        [
            "--config",
            self.config.to_str().unwrap(),
            "--http-secret",
            SECRET,
        ]
    }

    fn spawn(&self, extra: &[&str]) -> ChildReactor {
        let mut flags = self.config_flags().to_vec();
        flags.extend_from_slice(extra);
        ChildReactor::spawn(&self.db, self.storage.path(), &flags)
    }

    /// Runs `reactor run` with `extra` flags and `env` until it exits (a bad
    /// setting stops it at start).
    fn run_to_exit(&self, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut flags = common::reactor_flags(&self.db, self.storage.path());
        flags.extend(extra.iter().map(|s| s.to_string()));
        std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
            .arg("run")
            .args(flags)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// Inserts `n` pending rows of `owner` (one statement).
    async fn insert(&self, n: i64, owner: Uuid, payload: &str) {
        self.insert_with(n, owner, "payload", payload).await;
    }

    /// Inserts `n` pending rows of job type `job_type` (one statement), all
    /// of `owner`: the worker counts calls at once per owner.
    async fn insert_typed(&self, n: i64, owner: Uuid, job_type: &str) {
        self.insert_with(n, owner, "job_type", job_type).await;
    }

    /// Inserts `n` pending rows of `owner` with text column `column` = `value`.
    async fn insert_with(&self, n: i64, owner: Uuid, column: &str, value: &str) {
        self.client
            .execute(
                &format!(
                    "insert into public.lim_jobs (owner_id, {column})
                     select $1, $3 from generate_series(1, $2::int8)"
                ),
                &[&owner, &n, &value],
            )
            .await
            .unwrap();
    }

    async fn done_of(&self, job_type: &str) -> i64 {
        common::count_with(
            &self.client,
            "select count(*) from public.lim_jobs where status = 'done' and job_type = $1",
            &[&job_type],
        )
        .await
    }

    async fn done(&self) -> i64 {
        common::count(
            &self.client,
            "select count(*) from public.lim_jobs where status = 'done'",
        )
        .await
    }

    async fn wait_done_of(&self, job_type: &str, n: i64) {
        eventually(&format!("{n} rows of {job_type} done"), LONG, || async {
            self.done_of(job_type).await >= n
        })
        .await;
    }

    async fn wait_done(&self, n: i64) {
        eventually(&format!("{n} rows done"), LONG, || async {
            self.done().await >= n
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// The behaviours

/// 3 reactors with `rate = "600/min"` (10 calls a second) and `burst = 10`:
/// over a 15 s window from the first call the worker receives 160 ± 10% calls
/// (the burst included), although each reactor alone could make hundreds a
/// second; and never more than rate + burst in any one second.
#[tokio::test]
async fn three_reactors_together_stay_within_a_shared_rate() {
    let w = worker(Behaviour::default()).await;
    let s = setup(&w.url, "rate = \"600/min\"\nburst = 10").await;
    s.insert(400, Uuid::new_v4(), "").await;
    let _reactors: Vec<ChildReactor> = (0..3).map(|_| s.spawn(&[])).collect();
    eventually("the first call", LONG, || async { !w.calls().is_empty() }).await;
    let first = w.calls()[0].started;
    let stalls = StallWatch::start();
    let window = chrono::Duration::seconds(15);
    eventually("the window to pass", LONG, || async {
        w.calls().last().is_some_and(|c| c.started > first + window)
    })
    .await;
    let in_window = w
        .calls()
        .iter()
        .filter(|c| c.started < first + window)
        .count();
    assert!(
        (144..=176).contains(&in_window),
        "{in_window} calls in 15 s at 10/s with a burst of 10 (expected 160 ± 10%); {}",
        stalls.report()
    );
    assert_at_most_rate_plus_burst_a_second(&w.calls(), 10 + 10, "calls");
}

/// A claim statement that began before another's and then waited behind it
/// for the bucket's lock does not wind the bucket's clock back to its own
/// start: the next grant refills only the time that passed, not the wait
/// again. (The late statement is a transaction begun before the sleep, so
/// its `now()` is as old as a statement that waited that long for the lock.)
/// A bucket of 10/s, empty at the start, grants no more than 10/s of
/// elapsed time; winding the clock back granted 12 in 0.6 s.
#[tokio::test]
async fn a_grant_that_waited_for_the_bucket_hands_out_no_tokens_twice() {
    let db = common::migrated_db().await;
    let (a, late) = (db.client().await, db.client().await);
    let epoch = "extract(epoch from clock_timestamp())::float8";
    let start: f64 = a
        .query_one(
            &format!(
                "insert into reactor.limits (handler, rate_per_s, burst, tokens, refilled_at)
                 values ('h', 10, 10, 0, clock_timestamp()) returning {epoch}"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    late.batch_execute("begin; select now()").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let first = grant_of_20(&a).await;
    let waited = grant_of_20(&late).await;
    late.batch_execute("commit").await.unwrap();
    let after = grant_of_20(&a).await;
    let end: f64 = a
        .query_one(&format!("select {epoch}"), &[])
        .await
        .unwrap()
        .get(0);
    let elapsed = end - start;
    let granted = first + waited + after;
    assert!(
        f64::from(granted) <= (10.0 * elapsed).floor() + 1.0,
        "{granted} tokens ({first}, then {waited} to the late statement, then {after}) \
         in {elapsed:.2} s from an empty bucket of 10/s"
    );
}

/// How many of 20 candidates `reactor.limit_grant` grants handler `h`.
async fn grant_of_20(c: &Client) -> i32 {
    c.query_one(
        "select coalesce(cardinality(take), 0)
         from reactor.limit_grant('h', array_fill(null::text, array[20]), null)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Never more than `rate_plus_burst` calls (and the token that comes in
/// during the stretch) in any second-long stretch from a call of `calls`.
fn assert_at_most_rate_plus_burst_a_second(calls: &[Call], rate_plus_burst: usize, what: &str) {
    for (i, c) in calls.iter().enumerate() {
        let next_second = calls[i..]
            .iter()
            .take_while(|d| d.started < c.started + chrono::Duration::seconds(1))
            .count();
        assert!(
            next_second <= rate_plus_burst + 1,
            "{next_second} {what} within 1 s of call {i}"
        );
    }
}

/// `max_in_flight = 4` with 3 reactors of 16 workers each and a slow worker:
/// it never sees more than 4 calls at once, and every row gets done.
#[tokio::test]
async fn three_reactors_together_never_have_more_than_max_in_flight_calls() {
    let w = worker(Behaviour {
        delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let s = setup(&w.url, "max_in_flight = 4").await;
    s.insert(40, Uuid::new_v4(), "").await;
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut reactors: Vec<ChildReactor> = (0..2).map(|_| s.spawn(&[])).collect();
    reactors.push(s.spawn(&["--http-addr", &addr]));
    eventually("the slots in use", LONG, || async { w.most_at_once() == 4 }).await;
    // Visible in `reactor status` while the rows are worked.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args(["status", "--database-url", &s.db.url])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("http:public.lim_jobs") && status.contains("(max 4)"),
        "{status}"
    );
    s.wait_done(40).await;
    // And in /metrics: the cap, and the time spent waiting for a slot.
    let metrics_url = format!("http://{addr}/metrics");
    eventually("the limit gauges", LONG, || async {
        let text = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        text.contains(r#"reactor_limit_max_in_flight{handler="http:public.lim_jobs"} 4"#)
            && text.contains(r#"reactor_limit_wait_seconds_count{handler="http:public.lim_jobs",limit="max_in_flight"}"#)
    })
    .await;
    assert!(
        w.most_at_once() <= 4,
        "the worker saw {} calls at once",
        w.most_at_once()
    );
    assert_eq!(w.most_at_once(), 4, "the cap is used, not undershot");
    let metrics = common::count(
        &s.client,
        "select count(*) from reactor.limits where handler = 'http:public.lim_jobs' and max_in_flight = 4",
    )
    .await;
    assert_eq!(
        metrics, 1,
        "the limit is recorded for every reactor to read"
    );
}

/// `max_in_flight_per_key = 2` on `per_key = "owner_id"`: two reactors never
/// have more than 2 calls of one owner at once, while both owners are worked
/// side by side (4 at once in all).
#[tokio::test]
async fn two_reactors_never_have_more_than_max_in_flight_per_key_calls_of_one_owner() {
    let w = worker(Behaviour {
        delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let s = setup(&w.url, "per_key = \"owner_id\"\nmax_in_flight_per_key = 2").await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    s.insert(12, a, "").await;
    s.insert(12, b, "").await;
    let _reactors: Vec<ChildReactor> = (0..2).map(|_| s.spawn(&[])).collect();
    s.wait_done(24).await;
    assert_eq!(w.most_at_once_of(a), 2, "owner A: the cap, never more");
    assert_eq!(w.most_at_once_of(b), 2, "owner B: the cap, never more");
    assert!(w.most_at_once() <= 4, "{} at once", w.most_at_once());
}

/// A reactor killed with `kill -9` while it holds both slots of
/// `max_in_flight = 2`: its slots come free with its leases (3 s in tests),
/// so another reactor works every row, never more than 2 at once.
#[tokio::test]
async fn a_killed_reactors_slots_are_released_with_its_leases() {
    let w = worker(Behaviour {
        delay: Duration::from_millis(50),
        hang_first: true,
        ..Default::default()
    })
    .await;
    let s = setup(&w.url, "max_in_flight = 2").await;
    s.insert(2, Uuid::new_v4(), "hang").await;
    let mut first = s.spawn(&[]);
    eventually("both slots taken", LONG, || async { w.calls().len() == 2 }).await;
    first.kill9();
    s.insert(10, Uuid::new_v4(), "").await;
    let _second = s.spawn(&[]);
    s.wait_done(12).await;
    assert!(w.most_at_once() <= 2, "{} calls at once", w.most_at_once());
    let leaked = common::count(
        &s.client,
        "select count(*) from reactor.handler_state where lease_owner is not null",
    )
    .await;
    assert_eq!(leaked, 0, "no lease (slot) is left behind");
}

/// A worker answering 429 with `Retry-After: 5` pauses the handler on every
/// reactor: rows submitted during the pause are first called once it is
/// over, and the refused row is called again as attempt 1 (not counted).
#[tokio::test]
async fn a_retry_after_pauses_every_reactor_without_counting_an_attempt() {
    let w = worker(Behaviour {
        first_429: Some(5),
        ..Default::default()
    })
    .await;
    // No limit configured: push-back holds for every leased handler.
    let s = setup(&w.url, "").await;
    let reactors: Vec<ChildReactor> = (0..3).map(|_| s.spawn(&[])).collect();
    s.insert(1, Uuid::new_v4(), "").await;
    let paused_sql = "select paused_until from reactor.limits
                      where handler = 'http:public.lim_jobs' and paused_until is not null";
    eventually("the pause recorded", LONG, || async {
        s.client.query_opt(paused_sql, &[]).await.unwrap().is_some()
    })
    .await;
    let paused_until: chrono::DateTime<chrono::Utc> =
        s.client.query_one(paused_sql, &[]).await.unwrap().get(0);
    let refused_at = w.pushed_back_at.lock().unwrap().expect("a 429 answered");
    assert!(paused_until >= refused_at + chrono::Duration::milliseconds(4900));
    s.insert(30, Uuid::new_v4(), "").await;
    s.wait_done(31).await;
    let calls = w.calls();
    let after_refusal: Vec<&Call> = calls.iter().skip(1).collect();
    assert_eq!(after_refusal.len(), 31, "each row called once more");
    for c in &after_refusal {
        assert!(
            c.started >= paused_until,
            "a call at {} during the pause (until {paused_until})",
            c.started
        );
    }
    let refused = &calls[0];
    let again: Vec<&&Call> = after_refusal
        .iter()
        .filter(|c| c.id == refused.id)
        .collect();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, "1", "the refused call counted no attempt");
    drop(reactors);
}

/// Owner A has 5,000 pending rows; owner B submits one while A's are being
/// worked. With `per_key = "owner_id"` B's row is called within 2 batches
/// (REACTOR_BATCH_SIZE = 50) of calls after its insert, not after A's rows.
#[tokio::test]
async fn one_row_of_b_is_handled_within_two_batches_behind_thousands_of_a() {
    let w = worker(Behaviour::default()).await;
    let s = setup(&w.url, r#"per_key = "owner_id""#).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    s.insert(5000, a, "").await;
    let _reactor = s.spawn(&["--batch-size", "50"]);
    eventually("A's rows being worked", LONG, || async {
        w.calls().len() >= 100
    })
    .await;
    let b_id: Uuid = s
        .client
        .query_one(
            "insert into public.lim_jobs (owner_id) values ($1) returning id",
            &[&b],
        )
        .await
        .unwrap()
        .get(0);
    let before = w.calls().len();
    eventually("B's row called", LONG, || async {
        w.calls().iter().any(|c| c.id == b_id.to_string())
    })
    .await;
    let position = w
        .calls()
        .iter()
        .position(|c| c.id == b_id.to_string())
        .unwrap();
    let a_left = common::count(
        &s.client,
        "select count(*) from public.lim_jobs where status = 'pending'",
    )
    .await;
    assert!(
        position - before <= 2 * 50,
        "B's row was call {} after its insert (A's rows still pending: {a_left})",
        position - before
    );
    assert!(
        a_left > 1000,
        "B did not wait for A's backlog: {a_left} left"
    );
}

/// Push-back counts no attempt, but the outage budget still ends: a worker
/// answering 503 `Retry-After: 1` forever fails the row once the table's
/// `http.retry_for` (2 s) has passed since its first refusal.
#[tokio::test]
async fn push_back_without_end_still_fails_the_row_after_its_retry_for() {
    let w = worker(Behaviour {
        always_503: Some(1),
        ..Default::default()
    })
    .await;
    let s = setup(&w.url, "").await;
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace("[table.limits]", "retry_for = \"2s\"\n\n[table.limits]"),
    )
    .unwrap();
    let _reactor = s.spawn(&[]);
    s.insert(1, Uuid::new_v4(), "").await;
    eventually("the row failed", LONG, || async {
        common::count(
            &s.client,
            "select count(*) from public.lim_jobs where status = 'failed' and error like '%503%'",
        )
        .await
            == 1
    })
    .await;
    let calls = w.calls();
    assert!(calls.len() >= 2, "retried through the pauses: {calls:?}");
    assert_eq!(calls[1].attempt, "1", "a pause counts no attempt");
}

/// A bad limit is refused at start with a message naming the setting.
#[tokio::test]
async fn a_bad_limit_is_refused_at_start_naming_the_setting() {
    let s = setup("http://127.0.0.1:9/work", r#"rate = "fast""#).await;
    let out = s.run_to_exit(&s.config_flags(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("limits.rate") && stderr.contains("\"fast\" is not a rate"),
        "{stderr}"
    );
    let out = s.run_to_exit(&[], &[("REACTOR_GENERATION_RATE", "fast")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("REACTOR_GENERATION_RATE"), "{stderr}");

    std::fs::write(
        &s.config,
        std::fs::read_to_string(&s.config)
            .unwrap()
            .replace(r#"rate = "fast""#, "max_in_flight_per_key = 2"),
    )
    .unwrap();
    let out = s.run_to_exit(&s.config_flags(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("limits.max_in_flight_per_key") && stderr.contains("per_key"),
        "{stderr}"
    );
}

/// Route `a` limited to `rate = "600/min"` (10 calls a second), `burst = 10`,
/// route `b` not: with 3 reactors, the worker receives 88 to 121 calls of `a`
/// over the 10 s from the first (110 is what the bucket hands out; never more
/// than rate + burst in a second),
/// while every `b` row is done within the first 5 s (at full speed, as far as
/// this machine goes): `b` does not queue behind the held-back `a`, which
/// takes 15 s. Held rows count no attempt.
#[tokio::test]
async fn a_rate_limited_route_keeps_its_rate_and_does_not_hold_up_another() {
    let w = worker(Behaviour::default()).await;
    let s = setup_routes(
        &w.url,
        "[table.limits.routes.a]\nrate = \"600/min\"\nburst = 10",
    )
    .await;
    s.insert_typed(150, Uuid::new_v4(), "a").await;
    s.insert_typed(150, Uuid::new_v4(), "b").await;
    let _reactors: Vec<ChildReactor> = (0..3).map(|_| s.spawn(&[])).collect();
    let calls_of = |job_type: &str| -> Vec<Call> {
        w.calls()
            .into_iter()
            .filter(|c| c.job_type == job_type)
            .collect()
    };
    eventually("the first call of a", LONG, || async {
        !calls_of("a").is_empty()
    })
    .await;
    let first = calls_of("a")[0].started;
    let stalls = StallWatch::start();
    s.wait_done_of("b", 150).await;
    let a_done_with_b = s.done_of("a").await;
    let window = chrono::Duration::seconds(10);
    eventually("the window to pass (or every a row done)", LONG, || async {
        calls_of("a")
            .last()
            .is_some_and(|c| c.started > first + window)
            || s.done_of("a").await == 150
    })
    .await;
    let last_b = calls_of("b").last().unwrap().started;
    assert!(
        last_b < first + chrono::Duration::seconds(5),
        "the last b call came {} ms after the first a call: b waited behind a",
        (last_b - first).num_milliseconds()
    );
    assert!(
        a_done_with_b < 80,
        "{a_done_with_b} of 150 a rows were done when b's 150 were: a is not held to its rate"
    );
    let a = calls_of("a");
    let in_window = a.iter().filter(|c| c.started < first + window).count();
    let mut per_second = [0; 10];
    for c in a.iter().filter(|c| c.started < first + window) {
        per_second[(c.started - first).num_seconds() as usize] += 1;
    }
    // The floor is 80% of what the bucket hands out: a bucket refilled at
    // half the rate would make about 60. Runs here make 107 to 110, under
    // CPU load too; one CI run made 98 (seconds of 6 to 12 calls), with the
    // test process never late by more than 5 ms.
    assert!(
        (88..=121).contains(&in_window),
        "{in_window} calls of a in 10 s at 10/s with a burst of 10 (expected 110, at least 88); \
         per second from the first: {per_second:?}; the last b call {} ms after the first a call; {}",
        (last_b - first).num_milliseconds(),
        stalls.report()
    );
    assert_at_most_rate_plus_burst_a_second(&a, 10 + 10, "calls of a");
    s.wait_done_of("a", 150).await;
    let calls = w.calls();
    assert_eq!(calls.len(), 300, "each row called once");
    assert!(
        calls.iter().all(|c| c.attempt == "1"),
        "being held back by a route counts no attempt"
    );
}

/// One reactor busy with a page of slow `b` calls (every worker permit
/// taken) still offers route `a`'s set-aside rows at their turns: each joins
/// the claim that the next free permit starts, first in line, instead of
/// waiting for the page to end. The page holds every `a` row first (smaller
/// keys), so all are offered, and set aside, before the `b` rows take 6 s
/// (24 calls of 1 s, 4 at once); `a` (2/s, a burst of 1) gets a call each
/// time permits free meanwhile (at least one every 2 s is asserted; none
/// when set-aside rows wait for the page to end).
#[tokio::test]
async fn set_aside_rows_keep_their_turns_while_a_page_of_other_rows_is_worked() {
    let fast = worker(Behaviour::default()).await;
    let slow = worker(Behaviour {
        delay: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let s = setup_with(
        "job_type_column = \"job_type\"",
        &format!("routes = {{ a = \"{}\", b = \"{}\" }}", fast.url, slow.url),
        "[table.limits.routes.a]\nrate = \"120/min\"",
    )
    .await;
    s.client
        .execute(
            "insert into public.lim_jobs (id, job_type)
             select format('%s-0000-4000-8000-%s', prefix, lpad(g::text, 12, '0'))::uuid, job_type
             from (values ('00000000', 'a', 20), ('ffffffff', 'b', 24)) v(prefix, job_type, n),
                  generate_series(1, n) g",
            &[],
        )
        .await
        .unwrap();
    let _reactor = s.spawn(&["--concurrency", "4"]);
    s.wait_done_of("b", 24).await;
    let b = slow.calls();
    let (first_b, last_b) = (b[0].started, b.last().unwrap().started);
    assert!(
        last_b - first_b >= chrono::Duration::seconds(4),
        "the b page took {} ms: too short to see a's turns",
        (last_b - first_b).num_milliseconds()
    );
    let during = fast
        .calls()
        .iter()
        .filter(|c| c.started > first_b + chrono::Duration::seconds(1) && c.started < last_b)
        .count();
    // The 4 permits free together once a second (the b calls end
    // together), and each time the first in line is a row of a with its token.
    let seconds = (last_b - first_b).num_seconds() - 1;
    assert!(
        during as i64 * 2 >= seconds,
        "{during} calls of a in the {seconds} s while b's page was worked \
         (one a second as permits free): a's set-aside rows waited for the page to end"
    );
    s.wait_done_of("a", 20).await;
}

/// Two reactors offer the same row of a rate-limited route at once: one
/// claims it while the other's claim waits for the route's bucket. Both take a
/// token of the route; the second gets no row, says which route its token was
/// of, and the refund gives that token back to the route, so a race does not
/// leave the route below its rate.
#[tokio::test]
async fn a_token_taken_for_a_row_another_reactor_claimed_goes_back_to_its_route() {
    use reactor::job::handler::{KeyType, Spec};
    use reactor::store::pending::{claim_sql, LimitColumns, Statements};
    let db = common::migrated_db().await;
    let client = db.client().await;
    client.batch_execute(TABLE).await.unwrap();
    let handler = "http:public.lim_jobs";
    let bucket = format!("{handler}[a]");
    // 1 token a minute, 2 kept: what refills during the test is < 0.1.
    client
        .execute(
            "insert into reactor.limits (handler, rate_per_s, burst, tokens, of_handler, route)
             values ($1, 1.0 / 60, 2, 2, $2, 'a')",
            &[&bucket, &handler],
        )
        .await
        .unwrap();
    let id: Uuid = client
        .query_one(
            "insert into public.lim_jobs (job_type) values ('a') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let spec = Spec {
        name: handler.into(),
        table: "public.lim_jobs".into(),
        notify_table: "lim_jobs".into(),
        key: "id".into(),
        key_type: KeyType::Uuid,
        pending: "t.status in ('pending', 'processing')".into(),
        statuses: None,
    };
    let mut statements = Statements::build(&spec, None, None);
    statements.claim = claim_sql(
        &spec,
        LimitColumns {
            per_key: None,
            route: Some("job_type"),
        },
    );
    let statements = Arc::new(statements);
    let ids = vec![id.to_string()];
    let lease = Duration::from_secs(30);

    // As the engine claims: on pooled connections, the statement prepared once each.
    let pool = reactor::store::db::pool(&db.url, 2, LONG).unwrap();
    let first = pool.get().await.unwrap();
    first.batch_execute("begin").await.unwrap();
    let won = statements
        .claim(&first, true, &ids, Uuid::new_v4(), lease)
        .await
        .unwrap();
    assert_eq!((won.claims.len(), won.granted), (1, 1));
    let second = {
        let (statements, ids) = (statements.clone(), ids.clone());
        let client = pool.get().await.unwrap();
        tokio::spawn(async move {
            let batch = statements
                .claim(&client, true, &ids, Uuid::new_v4(), lease)
                .await
                .unwrap();
            (client, batch)
        })
    };
    common::wait_until_one_waits_on_a_lock(
        &client,
        "the second claim to wait for the route's bucket",
        LONG,
    )
    .await;
    first.batch_execute("commit").await.unwrap();
    let (second, lost) = second.await.unwrap();
    assert!(lost.claims.is_empty(), "the row was claimed twice");
    assert_eq!(lost.granted, 1, "the second claim took a token too");
    assert_eq!(lost.lost_routes, vec!["a".to_string()]);
    let tokens = async || -> f64 {
        client
            .query_one(
                "select tokens from reactor.limits where handler = $1",
                &[&bucket],
            )
            .await
            .unwrap()
            .get(0)
    };
    assert!(tokens().await < 0.1, "both claims took a token");
    reactor::store::limits::refund(&**second, handler, 1, &lost.lost_routes)
        .await
        .unwrap();
    let after = tokens().await;
    assert!(
        (1.0..1.1).contains(&after),
        "{after} tokens in the route's bucket after the refund (expected the one lost back)"
    );
}

/// Route `a` with `max_in_flight = 2` and a slow worker, 3 reactors: never
/// more than 2 calls of `a` at once (and 2 are used), while route `b` is
/// worked many at once and done long before `a`. The route's bucket shows in
/// `reactor status` and `/metrics`.
#[tokio::test]
async fn a_capped_route_never_exceeds_its_cap_and_does_not_hold_up_another() {
    a_capped_route_and_another("").await;
}

/// The same with fair turns between owners (`per_key`): claims work fair
/// pages, and a page of rows set aside moves on to the next.
#[tokio::test]
async fn with_fair_turns_a_capped_route_does_not_hold_up_another() {
    a_capped_route_and_another("per_key = \"owner_id\"").await;
}

/// `table_limits`: TOML lines of `[table.limits]` besides route `a`'s cap.
async fn a_capped_route_and_another(table_limits: &str) {
    let w = worker(Behaviour {
        delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let limits = format!("{table_limits}\n[table.limits.routes.a]\nmax_in_flight = 2");
    let s = setup_routes(&w.url, &limits).await;
    let (owner_a, owner_b) = (Uuid::new_v4(), Uuid::new_v4());
    s.insert_typed(30, owner_a, "a").await;
    s.insert_typed(100, owner_b, "b").await;
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut reactors: Vec<ChildReactor> = (0..2).map(|_| s.spawn(&[])).collect();
    reactors.push(s.spawn(&["--http-addr", &addr]));
    s.wait_done_of("b", 100).await;
    let a_done_with_b = s.done_of("a").await;
    assert!(
        w.most_at_once_of(owner_a) <= 2,
        "route a: {} calls at once",
        w.most_at_once_of(owner_a)
    );
    // 2 at once of 200 ms calls: a's 30 rows take 3 s, b's 100 far less.
    assert!(
        a_done_with_b <= 15,
        "{a_done_with_b} of 30 a rows were done when b's 100 were: b waited behind a"
    );
    assert!(
        w.most_at_once_of(owner_b) > 2,
        "b is not capped: {} at once",
        w.most_at_once_of(owner_b)
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args(["status", "--database-url", &s.db.url])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("http:public.lim_jobs[a]") && status.contains("(max 2)"),
        "{status}"
    );
    s.wait_done_of("a", 30).await;
    assert_eq!(
        w.most_at_once_of(owner_a),
        2,
        "route a: the cap, never more"
    );
    let metrics_url = format!("http://{addr}/metrics");
    eventually("the route's gauges", LONG, || async {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.contains(r#"reactor_limit_max_in_flight{handler="http:public.lim_jobs[a]"} 2"#)
    })
    .await;
    assert_eq!(w.calls().len(), 130, "each row called once");
}

/// A bad route limit stops `reactor run` with a message naming
/// `limits.routes.<type>.<key>`, or the route that does not exist.
#[tokio::test]
async fn a_bad_route_limit_is_refused_at_start_naming_the_setting() {
    let s = setup_routes(
        "http://127.0.0.1:9/work",
        "[table.limits.routes.a]\nrate = \"fast\"",
    )
    .await;
    let run = || s.run_to_exit(&s.config_flags(), &[]);
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`limits.routes.a.rate` \"fast\" is not a rate"),
        "{stderr}"
    );
    let config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        config
            .replace("routes.a]", "routes.c]")
            .replace(r#"rate = "fast""#, "max_in_flight = 1"),
    )
    .unwrap();
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`limits.routes.c` names no route of http.routes"),
        "{stderr}"
    );
}

/// Route limits are written at start, and a route no longer limited loses
/// its row when a reactor starts with the new config (the last started wins).
#[tokio::test]
async fn a_route_no_longer_limited_loses_its_bucket_at_start() {
    let s = setup_routes(
        "http://127.0.0.1:9/work",
        "[table.limits.routes.a]\nmax_in_flight = 2\n[table.limits.routes.b]\nrate = \"60/min\"",
    )
    .await;
    let buckets = || async {
        let rows = s
            .client
            .query(
                "select handler from reactor.limits where of_handler = 'http:public.lim_jobs' order by 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect::<Vec<String>>()
    };
    let mut first = s.spawn(&[]);
    eventually("both routes' buckets", LONG, || async {
        buckets().await.len() == 2
    })
    .await;
    assert_eq!(
        buckets().await,
        ["http:public.lim_jobs[a]", "http:public.lim_jobs[b]"]
    );
    first.kill9();
    let config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        config.replace("[table.limits.routes.b]\nrate = \"60/min\"", ""),
    )
    .unwrap();
    let _second = s.spawn(&[]);
    eventually("route b's bucket gone", LONG, || async {
        buckets().await == ["http:public.lim_jobs[a]"]
    })
    .await;
}
