//! WAL mode (issue 14): hints from logical decoding, no reactor trigger on the
//! write path. Runs on throwaway clusters started with wal_level = logical
//! (whatever DATABASE_URL says: the mode needs that server setting).
mod common;

use common::{count, eventually, favorites_of, submit_job, succeeded_with_render, TestDb};
use reactor::engine::wal;
use reactor::store::localpg::{LocalPostgres, Options};
use reactor::store::notify_mode::{self, Mode};
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio_postgres::Client;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(30);

static LOGICAL: OnceCell<String> = OnceCell::const_new();

/// The superuser URL of a cluster with `settings`, kept until the test binary exits.
async fn cluster(settings: &[(&str, &str)]) -> String {
    LocalPostgres::start_with(&Options {
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        files: vec![],
    })
    .await
    .expect("starting a throwaway PostgreSQL")
    .leak()
}

async fn logical_server() -> &'static str {
    LOGICAL
        .get_or_init(|| cluster(&[("wal_level", "logical"), ("max_replication_slots", "40")]))
        .await
}

fn url_of(server: &str, database: &str) -> String {
    let mut url = url::Url::parse(server).unwrap();
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// A fresh database on `server` owned by a Supabase-`postgres`-like role
/// (NOSUPERUSER, REPLICATION), migrated by that role.
async fn supabase_db(server: &str) -> TestDb {
    let name = format!("reactor_wal_{}", Uuid::new_v4().simple());
    let admin = reactor::store::db::connect(server).await.unwrap();
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
    let role = format!("owner_{}", Uuid::new_v4().simple());
    let url = reactor::store::supabase_like::prepare(server, &name, &role)
        .await
        .expect("Supabase-like set-up");
    let db = TestDb { url, name };
    let mut client = db.client().await;
    reactor::store::migrate::run(&mut client)
        .await
        .expect("migrate as the owner");
    db
}

async fn superuser(server: &str, db: &TestDb) -> Client {
    reactor::store::db::connect(&url_of(server, &db.name))
        .await
        .unwrap()
}

const HINT_TRIGGERS: &str = "('reactor_notify_insert', 'reactor_notify_status', 'reactor_watch_insert', 'reactor_watch_status')";

async fn hint_triggers(client: &Client, enabled: bool) -> i64 {
    count(
        client,
        &format!(
            "select count(*) from pg_trigger where tgname in {HINT_TRIGGERS} and (tgenabled <> 'D') = {enabled}"
        ),
    )
    .await
}

async fn reactor_slots(client: &Client) -> Vec<(String, Option<i32>)> {
    client
        .query(
            "select slot_name::text, active_pid from pg_replication_slots
             where slot_name like 'reactor_wal_%' and database = current_database() order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Payloads arriving on `channel`, from a connection of its own (kept open
/// by the returned client).
async fn listen(
    url: &str,
    channel: &str,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use futures::StreamExt as _;
    let (client, mut connection) = reactor::store::db::connect_raw(url, None).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    (client, rx)
}

/// The next payload on `rx` that mentions `needle`.
async fn next_with(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    tokio::time::timeout(LONG, async {
        loop {
            let payload = rx.recv().await.expect("listener open");
            if payload.contains(needle) {
                return payload;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no payload with {needle}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_wal_mode_no_trigger_fires_and_the_reactor_hears_the_wal() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,reactor=info")
        .with_test_writer()
        .try_init();
    let server = logical_server().await;
    let db = supabase_db(server).await;
    let client = db.client().await;
    client
        .batch_execute(
            "create table public.image_jobs (
               id uuid primary key default gen_random_uuid(),
               user_id uuid,
               status text not null default 'queued',
               note text);
             select reactor.watch_table('public.image_jobs', 'status', 'user_id');",
        )
        .await
        .unwrap();
    assert_eq!(hint_triggers(&client, true).await, 5);

    // The switch, as the NOSUPERUSER owner.
    let on = notify_mode::set(&client, Mode::Wal).await.unwrap();
    assert_eq!(on.effective, "wal");
    assert_eq!(
        hint_triggers(&client, true).await,
        0,
        "no hint trigger left enabled"
    );
    assert_eq!(
        hint_triggers(&client, false).await,
        5,
        "all disabled, none dropped"
    );
    let published: Vec<String> = client
        .query(
            "select tablename::text from pg_publication_tables where pubname = 'reactor' order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["generation_jobs", "image_jobs", "profiles"]);

    // Sweeps an hour apart: after the start-up replay, only the WAL brings hints.
    let storage = tempfile::tempdir().unwrap();
    // (A generous download timeout: the local provider draws its images in this
    // process, which shares the machine with the other tests.)
    let reactor = common::start_reactor(
        &db,
        storage.path(),
        &["--sweep-interval", "1h", "--download-timeout", "20s"],
    )
    .await;
    eventually("a slot of the reactor", LONG, || async {
        reactor_slots(&client).await.len() == 1
    })
    .await;
    eventually("reactor ready", LONG, || async { reactor.status.ready() }).await;
    let (_listening, mut statuses) = listen(&db.url, "job_status").await;

    let user = common::user_with_profile(&client).await;
    eventually(
        "favorites for a profile inserted in wal mode",
        LONG,
        || async { favorites_of(&client, user).await == 1 },
    )
    .await;
    let job = submit_job(&db, user, "imagine", "a bright loft")
        .await
        .unwrap();
    eventually("the job succeeds with a render", LONG, || async {
        succeeded_with_render(&client, job).await == 1
    })
    .await;
    let inserted = next_with(&mut statuses, &job.to_string()).await;
    assert!(
        inserted.contains(r#""table":"generation_jobs""#),
        "{inserted}"
    );

    // A watched table: the insert, a status change (old status from the WAL
    // seen so far) and no hint for an update that leaves the status alone.
    let row: Uuid = client
        .query_one(
            "insert into public.image_jobs (user_id) values ($1) returning id",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    let payload = next_with(&mut statuses, &row.to_string()).await;
    let change: reactor::engine::notification::Change = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        (
            change.table.as_str(),
            change.op.as_str(),
            change.status.as_deref(),
            change.owner_id
        ),
        (
            "image_jobs",
            "INSERT",
            Some("queued"),
            Some(user.to_string())
        )
    );
    client
        .execute(
            "update public.image_jobs set note = 'x' where id = $1",
            &[&row],
        )
        .await
        .unwrap();
    client
        .execute(
            "update public.image_jobs set status = 'done' where id = $1",
            &[&row],
        )
        .await
        .unwrap();
    let payload = next_with(&mut statuses, &row.to_string()).await;
    let change: reactor::engine::notification::Change = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        (
            change.op.as_str(),
            change.status.as_deref(),
            change.old_status.as_deref()
        ),
        ("UPDATE", Some("done"), Some("queued")),
        "the note-only update sent nothing"
    );

    // The slot's session dies (terminated, as on a server restart or
    // failover): the reactor makes a new slot and replays what it missed.
    let sup = superuser(server, &db).await;
    let before = reactor_slots(&client).await;
    let pid = before[0].1.expect("the slot is in use");
    sup.execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let missed = common::user_with_profile(&client).await;
    eventually("a new slot after the old session died", LONG, || async {
        let now = reactor_slots(&client).await;
        now.len() == 1 && now[0].0 != before[0].0 && now[0].1.is_some()
    })
    .await;
    eventually("the profile written meanwhile is handled", LONG, || async {
        favorites_of(&client, missed).await == 1
    })
    .await;

    // Back to NOTIFY: triggers on, publication gone, the slot dropped.
    let off = notify_mode::set(&client, Mode::Notify).await.unwrap();
    assert_eq!(off.effective, "notify");
    assert_eq!(hint_triggers(&client, true).await, 5);
    assert_eq!(
        count(
            &client,
            "select count(*) from pg_publication where pubname = 'reactor'"
        )
        .await,
        0
    );
    eventually("the slot dropped after switching back", LONG, || async {
        reactor_slots(&client).await.is_empty()
    })
    .await;
    eventually("ready after switching back", LONG, || async {
        reactor.status.ready()
    })
    .await;
    let later = common::user_with_profile(&client).await;
    eventually("favorites through NOTIFY again", LONG, || async {
        favorites_of(&client, later).await == 1
    })
    .await;
    reactor.stop().await;
}

/// Everything the reactors in `dir` logged.
fn logs(dir: &std::path::Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn without_wal_level_logical_the_switch_and_the_reactor_say_so() {
    let server = cluster(&[("wal_level", "replica")]).await;
    let db = supabase_db(&server).await;
    let client = db.client().await;
    let refused = notify_mode::set(&client, Mode::Wal)
        .await
        .expect_err("wal mode needs wal_level = logical");
    assert_eq!(common::sqlstate(&refused), "55000");
    assert!(
        refused
            .as_db_error()
            .unwrap()
            .message()
            .contains("wal_level = logical"),
        "{refused:?}"
    );
    assert_eq!(hint_triggers(&client, true).await, 3, "nothing changed");
    let err = wal::preflight(&client)
        .await
        .expect_err("no logical decoding");
    assert!(
        matches!(err, wal::WalError::WalLevel(ref l) if l == "replica"),
        "{err}"
    );
    assert!(err.to_string().contains("wal_level = logical"), "{err}");
}

#[tokio::test]
async fn a_role_without_replication_gets_a_plain_error() {
    let server = logical_server().await;
    let db = supabase_db(server).await;
    let client = db.client().await;
    notify_mode::set(&client, Mode::Wal).await.unwrap();
    let role: String = client
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    superuser(server, &db)
        .await
        .batch_execute(&format!("alter role {role} noreplication"))
        .await
        .unwrap();
    let fresh = db.client().await;
    let err = wal::preflight(&fresh).await.expect_err("no REPLICATION");
    assert!(
        matches!(err, wal::WalError::NoReplication(ref r) if *r == role),
        "{err}"
    );
    assert!(err.to_string().contains("REPLICATION"), "{err}");
    let err = wal::open_slot(&db.url).await.err().expect("no REPLICATION");
    assert!(
        matches!(err, wal::WalError::NoReplication(ref r) if *r == role),
        "{err}"
    );
}

#[tokio::test]
async fn no_free_replication_slot_is_a_plain_error_the_reactor_logs() {
    let server = cluster(&[("wal_level", "logical"), ("max_replication_slots", "1")]).await;
    let db = supabase_db(&server).await;
    let client = db.client().await;
    notify_mode::set(&client, Mode::Wal).await.unwrap();
    let sup = superuser(&server, &db).await;
    sup.batch_execute("select pg_create_logical_replication_slot('someone_else', 'pgoutput')")
        .await
        .unwrap();
    let err = wal::open_slot(&db.url)
        .await
        .err()
        .expect("all slots in use");
    assert!(
        matches!(err, wal::WalError::NoFreeSlot(ref n) if n == "1"),
        "{err}"
    );

    let storage = tempfile::tempdir().unwrap();
    let mut reactor = common::ChildReactor::spawn(&db, storage.path(), &[]);
    eventually("the reactor names the cause", LONG, || async {
        logs(storage.path()).contains("no free replication slot")
    })
    .await;
    // The sweeps still do the work meanwhile.
    let user = common::user_with_profile(&client).await;
    eventually("favorites from a sweep", LONG, || async {
        favorites_of(&client, user).await == 1
    })
    .await;
    reactor.terminate();
    sup.batch_execute("select pg_drop_replication_slot('someone_else')")
        .await
        .unwrap();
}

#[tokio::test]
async fn two_reactors_hold_a_slot_each_sigterm_drops_one_and_kill_9_leaves_none() {
    let server = logical_server().await;
    let db = supabase_db(server).await;
    let client = db.client().await;
    notify_mode::set(&client, Mode::Wal).await.unwrap();
    let storage = tempfile::tempdir().unwrap();
    let slow_sweeps = ["--sweep-interval", "1h"];
    let mut first = common::ChildReactor::spawn(&db, storage.path(), &slow_sweeps);
    let mut second = common::ChildReactor::spawn(&db, storage.path(), &slow_sweeps);
    eventually("a slot per reactor, each in use", LONG, || async {
        let slots = reactor_slots(&client).await;
        slots.len() == 2 && slots.iter().all(|(_, pid)| pid.is_some())
    })
    .await;
    // Give the start-up replays time to finish, then hints only.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let user = common::user_with_profile(&client).await;
    eventually("favorites made once", LONG, || async {
        favorites_of(&client, user).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(favorites_of(&client, user).await, 1);

    assert!(first.terminate().success(), "clean exit on SIGTERM");
    assert_eq!(
        reactor_slots(&client).await.len(),
        1,
        "SIGTERM dropped the slot before exit"
    );
    let other = common::user_with_profile(&client).await;
    eventually("the other reactor still hears", LONG, || async {
        favorites_of(&client, other).await == 1
    })
    .await;

    second.kill9();
    eventually("kill -9 leaves no slot retaining WAL", LONG, || async {
        count(
            &client,
            "select count(*) from pg_replication_slots where database = current_database()",
        )
        .await
            == 0
    })
    .await;
}
