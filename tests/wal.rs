//! WAL mode (issue 14): hints from logical decoding, no reactor trigger on the
//! write path. Runs on throwaway clusters started with wal_level = logical
//! (whatever DATABASE_URL says: the mode needs that server setting).
mod common;

use common::{count, eventually, favorites_of, submit_job, succeeded_with_render, TestDb};
use reactor::engine::wal;
use reactor::sandbox::cluster::{LocalPostgres, Options};
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
    let url = reactor::sandbox::supabase_like::prepare(server, &name, &role)
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

/// The next payload on `rx` that mentions `needle`, if one comes `within`.
async fn next_about(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    needle: &str,
    within: Duration,
) -> Option<String> {
    tokio::time::timeout(within, async {
        loop {
            let payload = rx.recv().await.expect("listener open");
            if payload.contains(needle) {
                return payload;
            }
        }
    })
    .await
    .ok()
}

/// The next payload on `rx` that mentions `needle`.
async fn next_with(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    next_about(rx, needle, LONG)
        .await
        .unwrap_or_else(|| panic!("no payload with {needle}"))
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
        common::child_logs(storage.path()).contains("no free replication slot")
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

/// Lines the reactors in `dir` logged at `level` (e.g. "ERROR") from WAL mode.
fn wal_log_lines(dir: &std::path::Path, level: &str) -> usize {
    common::child_logs(dir)
        .lines()
        .filter(|l| l.contains(&format!(" {level} ")) && l.contains("reactor::engine::wal"))
        .count()
}

/// Waits until `user`'s sign-up got its favorites and `job` succeeded with
/// its render (both written `when`).
async fn both_handled(client: &Client, user: Uuid, job: Uuid, when: &str) {
    eventually(
        &format!("the profile written {when} is handled"),
        LONG,
        || async { favorites_of(client, user).await == 1 },
    )
    .await;
    eventually(
        &format!("the job written {when} succeeds"),
        LONG,
        || async { succeeded_with_render(client, job).await == 1 },
    )
    .await;
}

/// The one reactor slot of this database, once it is in use.
async fn active_slot(client: &Client) -> String {
    let one_in_use = |slots: &[(String, Option<i32>)]| {
        matches!(slots, [(_, Some(_))]).then(|| slots[0].0.clone())
    };
    eventually("one reactor slot, in use", LONG, || async {
        one_in_use(&reactor_slots(client).await).is_some()
    })
    .await;
    one_in_use(&reactor_slots(client).await).expect("the slot stays")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_the_reactor_says_so_takes_a_new_slot_and_replays() {
    // A cluster of its own: restarting the shared one would break other tests.
    let mut pg = LocalPostgres::start_with(&Options {
        settings: vec![("wal_level".into(), "logical".into())],
        files: vec![],
    })
    .await
    .expect("starting a throwaway PostgreSQL");
    let server = pg.url("postgres");
    let db = supabase_db(&server).await;
    let client = db.client().await;
    notify_mode::set(&client, Mode::Wal).await.unwrap();
    let storage = tempfile::tempdir().unwrap();
    // Sweeps an hour apart: only the WAL and the replay after a reconnect do work.
    let mut reactor = common::ChildReactor::spawn(
        &db,
        storage.path(),
        &["--sweep-interval", "1h", "--download-timeout", "20s"],
    );
    let old_slot = active_slot(&client).await;
    let before = common::user_with_profile(&client).await;
    eventually("hints flow before the restart", LONG, || async {
        favorites_of(&client, before).await == 1
    })
    .await;
    drop(client);

    // Restart, and write work at once, before the reactor has a slot again.
    // Its reconnect backoff has grown while the server was down, so that
    // nearly always holds; if the reactor was quicker, restart again: work
    // only a replay can find is the point.
    let mut written_deaf = Vec::new();
    let client = loop {
        let errors = wal_log_lines(storage.path(), "ERROR");
        pg.stop_server().await.expect("stopping the server");
        eventually("the reactor logs that wal hints stopped", LONG, || async {
            wal_log_lines(storage.path(), "ERROR") > errors
        })
        .await;
        // Down for a moment, as a real restart is.
        tokio::time::sleep(Duration::from_secs(2)).await;
        pg.start_again().await.expect("starting the server again");
        let client = db.client().await;
        let user = common::user_with_profile(&client).await;
        let job = submit_job(&db, user, "imagine", "written while deaf")
            .await
            .unwrap();
        written_deaf.push((user, job));
        if reactor_slots(&client).await.is_empty() {
            break client;
        }
        assert!(
            written_deaf.len() < 3,
            "the reactor always had a slot before the test could write"
        );
    };
    assert!(
        reactor.child.try_wait().unwrap().is_none(),
        "the reactor is still running"
    );

    let new_slot = active_slot(&client).await;
    assert_ne!(new_slot, old_slot);
    assert_eq!(
        count(
            &client,
            &format!("select count(*) from pg_replication_slots where slot_name = '{old_slot}'")
        )
        .await,
        0,
        "a temporary slot does not survive a restart"
    );
    for (user, job) in &written_deaf {
        both_handled(&client, *user, *job, "while deaf").await;
    }

    // And hints flow again.
    let after = common::user_with_profile(&client).await;
    let job = submit_job(&db, after, "imagine", "written after the reconnect")
        .await
        .unwrap();
    both_handled(&client, after, job, "after the reconnect").await;
    assert!(reactor.terminate().success(), "clean exit on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_no_slot_is_free_the_reactor_keeps_saying_so_then_replays_once_one_frees() {
    let server = cluster(&[("wal_level", "logical"), ("max_replication_slots", "1")]).await;
    let db = supabase_db(&server).await;
    let client = db.client().await;
    notify_mode::set(&client, Mode::Wal).await.unwrap();
    let storage = tempfile::tempdir().unwrap();
    let mut reactor = common::ChildReactor::spawn(&db, storage.path(), &["--sweep-interval", "1h"]);
    active_slot(&client).await;
    let before = common::user_with_profile(&client).await;
    eventually("hints flow", LONG, || async {
        favorites_of(&client, before).await == 1
    })
    .await;

    // The reactor's slot session dies and someone else takes the only slot
    // the moment it is free (in one statement: the reactor waits at least a
    // backoff step before it tries again; should it still win, go again).
    let holder = superuser(&server, &db).await;
    loop {
        let [(_, Some(pid))] = reactor_slots(&client).await[..] else {
            panic!("the reactor holds the only slot");
        };
        let taken = holder
            .batch_execute(&format!(
                "do $$ begin
                   perform pg_terminate_backend({pid}, 10000);
                   perform pg_create_logical_replication_slot('holder', 'pgoutput', true);
                 end $$"
            ))
            .await;
        match taken {
            Ok(()) => break,
            Err(e) if common::sqlstate(&e) == "53400" => {
                active_slot(&client).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let refusals = || {
        common::child_logs(storage.path())
            .matches("no free replication slot")
            .count()
    };
    eventually(
        "the reactor names the cause and keeps trying",
        LONG,
        || async { refusals() >= 3 },
    )
    .await;
    assert!(reactor_slots(&client).await.is_empty());
    let deaf = common::user_with_profile(&client).await;
    let job = submit_job(&db, deaf, "imagine", "written with no slot")
        .await
        .unwrap();
    let so_far = refusals();
    eventually("the reactor is still trying", LONG, || async {
        refusals() > so_far
    })
    .await;

    holder
        .batch_execute("select pg_drop_replication_slot('holder')")
        .await
        .unwrap();
    active_slot(&client).await;
    both_handled(&client, deaf, job, "with no slot").await;
    let after = common::user_with_profile(&client).await;
    eventually("hints flow again", LONG, || async {
        favorites_of(&client, after).await == 1
    })
    .await;
    assert!(reactor.terminate().success(), "clean exit on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_wal_mode_the_reactor_not_a_trigger_broadcasts_each_job_status_to_realtime() {
    let server = logical_server().await;
    let db = supabase_db(server).await;
    let client = db.client().await;
    common::install_realtime_recorder(&client).await;
    notify_mode::set(&client, Mode::Wal).await.unwrap();
    assert_eq!(hint_triggers(&client, true).await, 0, "hint triggers off");
    let storage = tempfile::tempdir().unwrap();
    let reactor = common::start_reactor(
        &db,
        storage.path(),
        &["--sweep-interval", "1h", "--download-timeout", "20s"],
    )
    .await;
    active_slot(&client).await;
    reactor.wait_ready().await;

    let owner = common::user_with_profile(&client).await;
    let job = submit_job(&db, owner, "imagine", "a quiet study")
        .await
        .unwrap();
    eventually("the job succeeds with a render", LONG, || async {
        succeeded_with_render(&client, job).await == 1
    })
    .await;
    eventually("the broadcast of 'succeeded'", LONG, || async {
        common::realtime_calls_for(&client, job)
            .await
            .last()
            .is_some_and(|c| c.payload["status"] == "succeeded")
    })
    .await;

    let calls = common::realtime_calls_for(&client, job).await;
    for call in &calls {
        assert_eq!(call.topic, format!("job_status:{owner}"), "{call:?}");
        assert_eq!(call.event, "status", "{call:?}");
        assert!(call.private, "a private topic: {call:?}");
        assert_eq!(call.trigger_depth, 0, "sent by the reactor: {call:?}");
        assert_eq!(call.payload["table"], "generation_jobs", "{call:?}");
    }
    // Every status once, in order, each update naming the one before.
    assert_eq!(
        (
            calls[0].payload["op"].as_str(),
            calls[0].payload["status"].as_str()
        ),
        (Some("INSERT"), Some("starting")),
        "{calls:?}"
    );
    for pair in calls.windows(2) {
        assert_eq!(pair[1].payload["op"], "UPDATE", "{calls:?}");
        assert_eq!(
            pair[1].payload["old_status"], pair[0].payload["status"],
            "{calls:?}"
        );
        assert_ne!(
            pair[1].payload["status"], pair[0].payload["status"],
            "{calls:?}"
        );
    }
    reactor.stop().await;
}

/// A watched table no handler touches (only the test changes its rows), the
/// database switched to WAL mode.
async fn watched_image_jobs_in_wal_mode(client: &Client) {
    client
        .batch_execute(
            "create table public.image_jobs (
               id uuid primary key default gen_random_uuid(),
               user_id uuid,
               status text not null default 'queued');
             select reactor.watch_table('public.image_jobs', 'status', 'user_id');",
        )
        .await
        .unwrap();
    notify_mode::set(client, Mode::Wal).await.unwrap();
}

/// The job_status payloads about `row` that arrive on `rx`, as (op, status):
/// waits (LONG) for `expected.len()` of them, then a quiet moment for any
/// extra one, and asserts they are exactly `expected`.
async fn job_status_exactly(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    row: Uuid,
    expected: &[(&str, &str)],
) {
    let parse = |payload: String| {
        let change: reactor::engine::notification::Change = serde_json::from_str(&payload).unwrap();
        (change.op, change.status.unwrap_or_default())
    };
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let payload = next_about(rx, &row.to_string(), LONG)
            .await
            .unwrap_or_else(|| panic!("only {seen:?} of {expected:?} arrived"));
        seen.push(parse(payload));
    }
    // A second sender's copy comes right after the first's (every reactor
    // polls the WAL continuously): absence can only be shown by waiting, so
    // wait well beyond that.
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Ok(payload) = rx.try_recv() {
        if payload.contains(&row.to_string()) {
            seen.push(parse(payload));
        }
    }
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(op, status)| (op.to_string(), status.to_string()))
        .collect();
    assert_eq!(seen, expected, "each change sent once, by one reactor");
}

async fn set_status(client: &Client, row: Uuid, status: &str) {
    client
        .execute(
            "update public.image_jobs set status = $2 where id = $1",
            &[&row, &status],
        )
        .await
        .unwrap();
}

/// After a reactor stopped, changes `row` until a job_status NOTIFY for it
/// arrives (someone sends, taking over if the stopped one was the sender),
/// then asserts one more change is sent exactly once.
///
/// Not every change: one decoded while the stopped sender's server session
/// is still ending finds the broadcast lock held and is sent by nobody.
async fn sent_again_after_a_stop(
    client: &Client,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    row: Uuid,
) {
    for attempt in 1.. {
        let status = format!("handover {attempt}");
        set_status(client, row, &status).await;
        let needle = format!(r#""status":"{status}""#);
        if next_about(rx, &needle, Duration::from_secs(2))
            .await
            .is_some()
        {
            break;
        }
        assert!(attempt < 15, "no reactor sends job_status any more");
    }
    while rx.try_recv().is_ok() {}
    set_status(client, row, "settled").await;
    job_status_exactly(rx, row, &[("UPDATE", "settled")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_several_reactors_in_wal_mode_exactly_one_sends_each_job_status_notify() {
    let server = logical_server().await;
    let db = supabase_db(server).await;
    let client = db.client().await;
    watched_image_jobs_in_wal_mode(&client).await;
    let storage = tempfile::tempdir().unwrap();
    let slow_sweeps = ["--sweep-interval", "1h"];
    let mut first = common::ChildReactor::spawn(&db, storage.path(), &slow_sweeps);
    let mut second = common::ChildReactor::spawn(&db, storage.path(), &slow_sweeps);
    let slots_in_use = |n: usize| {
        let client = &client;
        async move {
            eventually("a slot per reactor, each in use", LONG, || async {
                let slots = reactor_slots(client).await;
                slots.len() == n && slots.iter().all(|(_, pid)| pid.is_some())
            })
            .await
        }
    };
    slots_in_use(2).await;
    let (_listening, mut statuses) = listen(&db.url, "job_status").await;

    let row: Uuid = client
        .query_one(
            "insert into public.image_jobs default values returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    set_status(&client, row, "running").await;
    set_status(&client, row, "done").await;
    job_status_exactly(
        &mut statuses,
        row,
        &[
            ("INSERT", "queued"),
            ("UPDATE", "running"),
            ("UPDATE", "done"),
        ],
    )
    .await;

    // One reactor stops: the other sends (taking over if the first was the sender).
    assert!(first.terminate().success());
    slots_in_use(1).await;
    sent_again_after_a_stop(&client, &mut statuses, row).await;

    // A newcomer does not send too; when the sender stops, it takes over.
    let mut third = common::ChildReactor::spawn(&db, storage.path(), &slow_sweeps);
    slots_in_use(2).await;
    set_status(&client, row, "restored").await;
    job_status_exactly(&mut statuses, row, &[("UPDATE", "restored")]).await;
    assert!(second.terminate().success());
    slots_in_use(1).await;
    sent_again_after_a_stop(&client, &mut statuses, row).await;
    assert!(third.terminate().success());
}

/// `REACTOR_WAL_POLL` from the polling days is still accepted, and the
/// reactor says it is ignored now (a deprecated name, not an error).
#[tokio::test]
async fn the_old_poll_interval_is_accepted_and_named_as_ignored() {
    let server = logical_server().await;
    let db = supabase_db(server).await;
    let client = db.client().await;
    notify_mode::set(&client, Mode::Wal).await.unwrap();
    let storage = tempfile::tempdir().unwrap();
    let mut reactor = common::ChildReactor::spawn(&db, storage.path(), &["--wal-poll", "10ms"]);
    eventually("the deprecation is logged", LONG, || async {
        common::child_logs(storage.path())
            .contains("REACTOR_WAL_POLL (--wal-poll) is deprecated and ignored")
    })
    .await;
    eventually("a slot of the reactor", LONG, || async {
        reactor_slots(&client).await.len() == 1
    })
    .await;
    assert!(reactor.terminate().success());
}

/// Two thousand sign-ups from eight writers, sweeps an hour apart: every one
/// is handled from WAL hints alone. (Logical decoding may send a commit a
/// moment before the writer's transaction is visible; the reactor's second
/// look at each hint covers that. The benchmark with a release build lost 2
/// of 5,131 hints that way before it; this test does not force the race.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sign_up_of_a_burst_is_handled_from_wal_hints_alone() {
    let server = logical_server().await;
    let db = supabase_db(server).await;
    let client = db.client().await;
    notify_mode::set(&client, Mode::Wal).await.unwrap();
    let storage = tempfile::tempdir().unwrap();
    let mut reactor = common::ChildReactor::spawn(&db, storage.path(), &["--sweep-interval", "1h"]);
    active_slot(&client).await;
    // Right after start-up the replay runs; the burst comes after it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    const WRITERS: usize = 8;
    const EACH: usize = 250;
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move {
                let writer = reactor::store::db::connect(&url).await.unwrap();
                for _ in 0..EACH {
                    writer
                        .batch_execute(
                            "with u as (insert into auth.users (id) values (gen_random_uuid()) returning id)
                             insert into public.profiles (id) select id from u",
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let unhandled = "select count(*) from public.profiles p where not exists (
                       select 1 from public.collections c where c.owner_id = p.id and c.is_default_favorites)";
    eventually("every sign-up has its favorites", LONG, || async {
        count(&client, unhandled).await == 0
    })
    .await;
    assert_eq!(
        count(&client, "select count(*) from public.profiles").await,
        (WRITERS * EACH) as i64
    );
    // The slot holds back no WAL for long: the reactor confirms what it read
    // once a second, without waiting for the server to ask (it asks every
    // half wal_sender_timeout, 30 s), so the burst's WAL can go.
    let burst_end: String = client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    eventually(
        "the slot confirms the burst's WAL",
        Duration::from_secs(10),
        || async {
            count(
                &client,
                &format!(
                    "select count(*) from pg_replication_slots
                 where slot_name like 'reactor_wal_%' and database = current_database()
                   and confirmed_flush_lsn >= '{burst_end}'::pg_lsn"
                ),
            )
            .await
                == 1
        },
    )
    .await;
    assert!(reactor.terminate().success());
}

/// The advisory-lock key that elected the job_status sender before the lease
/// (src/engine/wal/broadcast.rs): "reactorw".
const OLD_SENDER_LOCK: i64 = 0x7265_6163_746f_7277;

/// A login with no grants takes the advisory lock that used to elect the
/// reactor sending job_status in WAL mode and keeps it: no reactor sent
/// job_status (or Realtime) any more. The sender is now elected by a lease
/// row only the reactor's role may write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_holding_the_old_sender_lock_does_not_silence_job_status_in_wal_mode() {
    let server = logical_server().await;
    let db = supabase_db(server).await;
    let client = db.client().await;
    watched_image_jobs_in_wal_mode(&client).await;
    let outsider = common::outsider_session(&client, &db.url).await;
    let squatting: bool = outsider
        .query_one("select pg_try_advisory_lock($1)", &[&OLD_SENDER_LOCK])
        .await
        .unwrap()
        .get(0);
    assert!(squatting, "any login may take any advisory lock");
    let reserved = outsider
        .execute("update reactor.wal_sender set expires_at = 'infinity'", &[])
        .await
        .expect_err("the lease is the reactor's");
    assert_eq!(common::sqlstate(&reserved), "42501");

    let storage = tempfile::tempdir().unwrap();
    let reactor = common::start_reactor(&db, storage.path(), &["--sweep-interval", "1h"]).await;
    active_slot(&client).await;
    reactor.wait_ready().await;
    let (_listening, mut statuses) = listen(&db.url, "job_status").await;
    let row: Uuid = client
        .query_one(
            "insert into public.image_jobs default values returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    set_status(&client, row, "running").await;
    job_status_exactly(
        &mut statuses,
        row,
        &[("INSERT", "queued"), ("UPDATE", "running")],
    )
    .await;
    drop(outsider);
    reactor.stop().await;
}

/// A login with no grants keeps a TEMPORARY `generation_jobs` with triggers
/// named like the reactor's hint triggers (one enabled, one disabled). The
/// switch used to try to alter that table (another session's, which nobody
/// else may alter) and failed both ways while it existed.
#[tokio::test]
async fn an_outsiders_temporary_look_alike_table_does_not_break_the_mode_switch() {
    let server = logical_server().await;
    let db = supabase_db(server).await;
    let client = db.client().await;
    let outsider = common::outsider_session(&client, &db.url).await;
    common::impostor_watched_table(&outsider, "generation_jobs").await;
    let ours_enabled = || async {
        count(
            &client,
            "select count(*) from pg_trigger
             where tgrelid in ('public.generation_jobs'::regclass, 'public.profiles'::regclass)
               and tgname like 'reactor_notify_%' and tgenabled <> 'D'",
        )
        .await
    };
    let impostors = || async {
        outsider
            .query(
                "select tgname::text, tgenabled <> 'D' from pg_trigger
                 where tgrelid = 'pg_temp.generation_jobs'::regclass order by 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)))
            .collect::<Vec<_>>()
    };
    let untouched = vec![
        ("reactor_watch_insert".to_string(), false),
        ("reactor_watch_status".to_string(), true),
    ];

    let on = notify_mode::set(&client, Mode::Wal)
        .await
        .expect("switching to wal while the look-alike exists");
    assert_eq!(on.effective, "wal");
    assert_eq!(ours_enabled().await, 0, "the reactor's triggers are off");
    let published: Vec<String> = client
        .query(
            "select schemaname || '.' || tablename from pg_publication_tables
             where pubname = 'reactor' order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["public.generation_jobs", "public.profiles"]);
    assert_eq!(impostors().await, untouched);

    let off = notify_mode::set(&client, Mode::Notify)
        .await
        .expect("switching back while the look-alike exists");
    assert_eq!(off.effective, "notify");
    assert_eq!(ours_enabled().await, 3, "the reactor's triggers are on");
    assert_eq!(impostors().await, untouched);
}

#[tokio::test]
async fn switching_notify_poll_wal_and_back_under_load_loses_no_row() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,reactor=info,wal=info")
        .with_test_writer()
        .try_init();
    let server = logical_server().await;
    let db = supabase_db(server).await;
    let client = db.client().await;
    let storage = tempfile::tempdir().unwrap();
    // Sweeps an hour apart: every row must come from a hint, a poll or the
    // scan each switch starts, never from the safety net.
    let reactor = common::start_reactor(
        &db,
        storage.path(),
        &["--sweep-interval", "1h", "--poll-interval", "200ms"],
    )
    .await;
    reactor.wait_ready().await;

    let writer_client = db.client().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writing = stop.clone();
    let writer = tokio::spawn(async move {
        let mut users = Vec::new();
        while !writing.is_cancelled() {
            users.push(common::user_with_profile(&writer_client).await);
        }
        users
    });
    // Long enough in a mode for the reactor to act on it (a slot in wal
    // mode, polls in poll mode), and switches that come and go between two
    // of its reads of the switch.
    for (mode, stay) in [
        (Mode::Poll, 2500),
        (Mode::Wal, 6000),
        (Mode::Poll, 300),
        (Mode::Notify, 2500),
        (Mode::Wal, 300),
        (Mode::Notify, 1000),
    ] {
        assert_eq!(
            notify_mode::set(&client, mode).await.unwrap().effective,
            mode.as_str()
        );
        tracing::info!("test: switched to {}", mode.as_str());
        tokio::time::sleep(Duration::from_millis(stay)).await;
    }
    stop.cancel();
    let users = writer.await.unwrap();
    assert!(users.len() > 20, "writes under every mode: {}", users.len());
    eventually(
        "every profile written across the switches is handled",
        LONG,
        || async { count_favorites(&client, &users).await == users.len() as i64 },
    )
    .await;
    reactor.stop().await;
}

/// How many of `owners` have their "My Favorites" collection.
async fn count_favorites(client: &Client, owners: &[Uuid]) -> i64 {
    client
        .query_one(
            "select count(*) from collections where is_default_favorites and owner_id = any($1)",
            &[&owners],
        )
        .await
        .unwrap()
        .get(0)
}

/// Under sustained load the reactor sending job_status gives a table's
/// per-row payloads up for a quiet announcement, as writers do in notify
/// mode (src/engine/wal/busy.rs), and sends them again once the load is
/// gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_wal_mode_a_busy_table_s_job_status_payloads_give_way_to_a_quiet_announcement() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = logical_server().await;
    let db = supabase_db(server).await;
    let client = db.client().await;
    watched_image_jobs_in_wal_mode(&client).await;
    let storage = tempfile::tempdir().unwrap();
    let mut reactor = common::ChildReactor::spawn(
        &db,
        storage.path(),
        &["--quiet-above", "5", "--quiet-lease", "4s"],
    );
    active_slot(&client).await;
    let (listening, mut statuses) = listen(&db.url, "job_status").await;
    let is_row = |payload: &str| {
        serde_json::from_str::<serde_json::Value>(payload)
            .is_ok_and(|v| v["table"] == "image_jobs" && v.get("op").is_some())
    };

    // One writer, a few hundred rows a second at most (the threshold is 5 a
    // second), until told to stop: busy even on a loaded machine, and little
    // enough not to slow the other tests' slots, which decode this cluster's
    // WAL too.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let writer = db.client().await;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                writer
                    .execute("insert into public.image_jobs default values", &[])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // Per-row payloads first, then the announcement.
    let mut rows_before = 0;
    let announcement = tokio::time::timeout(LONG, async {
        loop {
            let payload = statuses.recv().await.expect("listener open");
            if is_row(&payload) {
                rows_before += 1;
            } else if payload.contains("reactor_quiet") {
                return payload;
            }
        }
    })
    .await;
    stop.store(announcement.is_err(), Ordering::Relaxed);
    let announcement = announcement.unwrap_or_else(|_| {
        panic!("no quiet announcement within {LONG:?} of load ({rows_before} per-row payloads)")
    });
    assert!(rows_before > 0, "no per-row payload before the quiet");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&announcement).unwrap(),
        serde_json::json!({"reactor_quiet": "image_jobs", "for_ms": 4000})
    );
    // Load goes on: its rows send nothing on job_status, only renewals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    listening
        .execute("select pg_notify('job_status', 'sentinel')", &[])
        .await
        .unwrap();
    let mut rows_while_quiet = 0;
    let mut renewals = 0;
    loop {
        let payload = next_about(&mut statuses, "", LONG)
            .await
            .expect("the sentinel");
        if payload == "sentinel" {
            break;
        }
        rows_while_quiet += usize::from(is_row(&payload));
        renewals += usize::from(payload.contains("reactor_quiet"));
    }
    assert_eq!(rows_while_quiet, 0, "per-row payloads sent while quiet");
    assert!(renewals >= 1, "the quiet was not renewed under load");

    // Once the quiet has run out, a row's payload is sent again.
    let row: Uuid = client
        .query_one(
            "insert into public.image_jobs default values returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut attempt = 0;
    while next_about(&mut statuses, &row.to_string(), Duration::from_secs(2))
        .await
        .is_none()
    {
        attempt += 1;
        assert!(attempt < 10, "per-row payloads never resumed");
        set_status(&client, row, &format!("again {attempt}")).await;
    }
    assert!(reactor.terminate().success());
}
