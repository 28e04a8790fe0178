//! Quiet hints under load (issue 22, item 1): while a reactor pages a busy
//! table, its writers send no NOTIFY (sql/260_quiet_hints.sql,
//! triggers/260_quiet_hints.sql, src/engine/quiet.rs), and no row is lost.
mod common;

use common::{eventually, read_events, start_reactor, ChildReactor, TestDb, ADMIN, JWT_SECRET};
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

/// Flags that make a small test load count as busy, with short leases.
const QUIET: [&str; 6] = [
    "--quiet-above",
    "20",
    "--quiet-lease",
    "2s",
    "--quiet-grace",
    "2s",
];

/// A connection LISTENing on `reactor` and `job_status`: every payload, in
/// commit order.
struct Listener {
    client: Client,
    rx: mpsc::UnboundedReceiver<(String, String)>,
    /// Ids of profiles hinted so far, and quiet announcements heard.
    hinted: HashSet<String>,
    announcements: Vec<serde_json::Value>,
}

impl Listener {
    async fn start(db: &TestDb) -> Self {
        let config: tokio_postgres::Config = db.url.parse().expect("test database URL");
        let (client, mut connection) = config.connect(NoTls).await.expect("listener connects");
        let (tx, rx) = mpsc::unbounded_channel();
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
            }
        });
        client
            .batch_execute("listen reactor; listen job_status")
            .await
            .expect("listen");
        Listener {
            client,
            rx,
            hinted: HashSet::new(),
            announcements: Vec::new(),
        }
    }

    /// Reads everything up to a sentinel sent now: every commit before this
    /// call has been heard (notifications arrive in commit order).
    async fn catch_up(&mut self) {
        let sentinel = format!("sentinel-{}", Uuid::new_v4());
        self.client
            .execute("select pg_notify('reactor', $1)", &[&sentinel])
            .await
            .expect("sentinel");
        loop {
            let (channel, payload) = tokio::time::timeout(LONG, self.rx.recv())
                .await
                .expect("the sentinel in time")
                .expect("listener running");
            if payload == sentinel {
                return;
            }
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&payload) else {
                continue;
            };
            if value.get("reactor_quiet").is_some() {
                if channel == "job_status" {
                    self.announcements.push(value);
                }
            } else if value["table"] == "profiles" {
                self.hinted
                    .insert(value["id"].as_str().unwrap_or("").to_string());
            }
        }
    }
}

/// Whether `profiles` is quiet now, as its writers see it.
const QUIET_NOW: &str = "select exists (select 1 from reactor.quiet_tables
                          where table_name = 'profiles' and quiet_until > now())";

/// Inserts a user and its profile in one transaction; returns the id and
/// whether the table was quiet for that transaction (its trigger compares
/// with the same now(), and a quiet lease only grows while it holds).
async fn insert_profile(client: &mut Client) -> (Uuid, bool) {
    let id = Uuid::new_v4();
    let tx = client.transaction().await.expect("begin");
    let quiet: bool = tx.query_one(QUIET_NOW, &[]).await.expect("quiet?").get(0);
    tx.execute(
        "insert into auth.users (id, email) values ($1, $2)",
        &[&id, &format!("{id}@example.test")],
    )
    .await
    .expect("insert user");
    tx.execute("insert into profiles (id) values ($1)", &[&id])
        .await
        .expect("insert profile");
    tx.commit().await.expect("commit");
    (id, quiet)
}

/// Writers inserting profiles until stopped: every row, with whether it was
/// written while quiet.
struct Load {
    stop: Arc<AtomicBool>,
    rows: Arc<Mutex<Vec<(Uuid, bool)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(db: &TestDb, writers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rows = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let mut client = db.client().await;
            let (stop, rows) = (stop.clone(), rows.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let row = insert_profile(&mut client).await;
                    rows.lock().unwrap().push(row);
                }
            }));
        }
        Load { stop, rows, tasks }
    }

    fn quiet_rows(&self) -> usize {
        self.rows.lock().unwrap().iter().filter(|(_, q)| *q).count()
    }

    async fn stop(self) -> Vec<(Uuid, bool)> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("writer");
        }
        Arc::try_unwrap(self.rows).unwrap().into_inner().unwrap()
    }
}

async fn unhandled_profiles(client: &Client) -> i64 {
    common::count(
        client,
        "select count(*) from profiles where favorites_at is null",
    )
    .await
}

#[tokio::test]
async fn under_load_writers_send_no_hints_while_the_reactor_pages_the_table() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let mut listener = Listener::start(&db).await;
    let reactor = start_reactor(&db, storage.path(), &QUIET).await;
    reactor.wait_ready().await;

    let load = Load::start(&db, 4).await;
    eventually("rows written while profiles is quiet", LONG, || async {
        load.quiet_rows() >= 200
    })
    .await;
    let rows = load.stop().await;
    listener.catch_up().await;

    let quiet: Vec<String> = rows
        .iter()
        .filter(|(_, q)| *q)
        .map(|(id, _)| id.to_string())
        .collect();
    let hinted_while_quiet: Vec<&String> = quiet
        .iter()
        .filter(|id| listener.hinted.contains(*id))
        .collect();
    assert!(
        hinted_while_quiet.is_empty(),
        "{} of {} rows written while quiet were hinted",
        hinted_while_quiet.len(),
        quiet.len()
    );
    // The writers did hint before the table went quiet (the listener hears them).
    assert!(
        rows.iter()
            .any(|(id, q)| !q && listener.hinted.contains(&id.to_string())),
        "no row was hinted at all"
    );
    assert!(
        listener
            .announcements
            .iter()
            .any(|a| a["reactor_quiet"] == "profiles" && a["for_ms"] == 2000),
        "no quiet announcement on job_status: {:?}",
        listener.announcements
    );

    // Every row is handled, hinted or not.
    eventually("every profile handled", LONG, || async {
        unhandled_profiles(&client).await == 0
    })
    .await;

    // A reactor that stops gives its quiet back: writers hint again at once.
    reactor.stop().await;
    assert_eq!(
        common::count(&client, "select count(*) from reactor.quiet_tables").await,
        0
    );
    let (id, quiet) = insert_profile(&mut db.client().await).await;
    assert!(!quiet);
    listener.catch_up().await;
    assert!(listener.hinted.contains(&id.to_string()));
}

#[tokio::test]
async fn writers_hint_again_once_a_killed_holder_s_lease_runs_out() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let mut listener = Listener::start(&db).await;
    let mut holder = ChildReactor::spawn(&db, storage.path(), &QUIET);

    let load = Load::start(&db, 4).await;
    eventually("rows written while profiles is quiet", LONG, || async {
        load.quiet_rows() >= 50
    })
    .await;
    holder.kill9();
    // The lease outlives its holder, but not by more than itself.
    eventually("the killed holder's quiet lease runs out", LONG, || async {
        common::count(
            &client,
            "select count(*) from reactor.quiet_tables where quiet_until > now()",
        )
        .await
            == 0
    })
    .await;
    let before = load.rows.lock().unwrap().len();
    eventually("rows written after the lease", LONG, || async {
        load.rows.lock().unwrap().len() >= before + 20
    })
    .await;
    let rows = load.stop().await;
    listener.catch_up().await;
    // (A transaction in flight when the lease ended may still have been quiet.)
    let after: Vec<&(Uuid, bool)> = rows[before..].iter().filter(|(_, q)| !q).collect();
    assert!(
        after.len() >= 16,
        "too few rows after the lease: {}",
        after.len()
    );
    for (id, _) in after {
        assert!(
            listener.hinted.contains(&id.to_string()),
            "row {id} written after the lease was not hinted"
        );
    }

    // The rows nobody hinted are found by the next reactor.
    let reactor = start_reactor(&db, storage.path(), &[]).await;
    eventually("every profile handled", LONG, || async {
        unhandled_profiles(&client).await == 0
    })
    .await;
    reactor.stop().await;
}

#[tokio::test]
async fn rows_written_while_quiet_are_found_without_hints_or_sweeps() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let mut listener = Listener::start(&db).await;
    // This reactor never takes a quiet itself and never sweeps: only
    // another holder's announcement can make it find unhinted rows.
    let reactor = start_reactor(
        &db,
        storage.path(),
        &[
            "--quiet-above",
            "0",
            "--quiet-grace",
            "2s",
            "--sweep-interval",
            "1h",
        ],
    )
    .await;
    reactor.wait_ready().await;

    // Another reactor's take, as it makes it: the lease, then the announcement.
    client
        .batch_execute(
            "insert into reactor.quiet_tables (table_name, holder, quiet_until)
             values ('profiles', gen_random_uuid(), now() + interval '10 seconds');
             select pg_notify('reactor', '{\"reactor_quiet\":\"profiles\",\"for_ms\":10000}')",
        )
        .await
        .unwrap();
    let mut writer = db.client().await;
    let mut quiet_ids = Vec::new();
    for _ in 0..20 {
        let (id, quiet) = insert_profile(&mut writer).await;
        assert!(quiet);
        quiet_ids.push(id.to_string());
    }

    // The race: a transaction that began inside the lease skips its hint,
    // and commits after the lease has ended.
    let mut late = db.client().await;
    let late_tx = late.transaction().await.unwrap();
    let late_id = Uuid::new_v4();
    late_tx
        .execute(
            "insert into auth.users (id, email) values ($1, $2)",
            &[&late_id, &format!("{late_id}@example.test")],
        )
        .await
        .unwrap();
    late_tx
        .execute("insert into profiles (id) values ($1)", &[&late_id])
        .await
        .unwrap();
    eventually("the lease has ended", LONG, || async {
        common::count(&client, &format!("select ({QUIET_NOW})::int::int8")).await == 0
    })
    .await;
    late_tx.commit().await.unwrap();
    quiet_ids.push(late_id.to_string());

    listener.catch_up().await;
    for id in &quiet_ids {
        assert!(
            !listener.hinted.contains(id),
            "row {id} was hinted while quiet"
        );
    }
    eventually("every row written while quiet handled", LONG, || async {
        unhandled_profiles(&client).await == 0
    })
    .await;
    reactor.stop().await;
}

#[tokio::test]
async fn event_streams_resync_when_a_table_goes_quiet() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let reactor = start_reactor(
        &db,
        storage.path(),
        &["--admin-token", ADMIN, "--supabase-jwt-secret", JWT_SECRET],
    )
    .await;
    reactor.wait_ready().await;
    let open = || async {
        let response = reqwest::Client::new()
            .get(format!("http://{}/v1/events", reactor.http_addr))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response
    };
    let resync = |e: &[(String, serde_json::Value)]| e.iter().any(|(kind, _)| kind == "resync");
    let mut stream = open().await;
    db.client()
        .await
        .batch_execute(
            "select pg_notify('reactor', '{\"reactor_quiet\":\"generation_jobs\",\"for_ms\":3000}')",
        )
        .await
        .unwrap();
    // Told when the quiet starts (a resync ends the stream: the viewer reloads)…
    let seen = read_events(&mut stream, resync).await;
    assert!(seen.iter().all(|(kind, _)| kind == "resync"), "{seen:?}");
    // …and, on the stream it opens again, when the quiet ends.
    let mut stream = open().await;
    let seen = read_events(&mut stream, resync).await;
    assert!(seen.iter().all(|(kind, _)| kind == "resync"), "{seen:?}");
    reactor.stop().await;
}
