//! Quiet hints under load (issue 22, item 1): while a reactor pages a busy
//! table, its writers send no NOTIFY and do not even call the hint trigger
//! (sql/260_quiet_hints.sql, triggers/260_quiet_hints.sql,
//! triggers/300_quiet_switch.sql, src/engine/quiet.rs), and no row is lost.
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
    let tx = client.transaction().await.expect("begin");
    let (id, quiet) = insert_profile_in(&tx).await;
    tx.commit().await.expect("commit");
    (id, quiet)
}

/// Inserts a user and its profile in `tx`: the id, and whether `profiles`
/// was quiet for `tx`.
async fn insert_profile_in(tx: &tokio_postgres::Transaction<'_>) -> (Uuid, bool) {
    let id = Uuid::new_v4();
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

/// Inserts a profile in a transaction that is rolled back: whether
/// `profiles` was quiet for it, and how many times its hint trigger function
/// ran (counted by the server with track_functions; on a new connection,
/// since a session's counts of earlier transactions may not be flushed yet).
async fn hint_calls_of_one_insert(db: &TestDb) -> (bool, i64) {
    let mut client = db.client().await;
    let tx = client.transaction().await.expect("begin");
    tx.batch_execute("set local track_functions = 'pl'")
        .await
        .expect("track functions");
    let (_, quiet) = insert_profile_in(&tx).await;
    let calls: Option<i64> = tx
        .query_one(
            "select pg_stat_get_xact_function_calls('reactor.notify_profile'::regproc)",
            &[],
        )
        .await
        .expect("function calls")
        .get(0);
    tx.rollback().await.expect("rollback");
    (quiet, calls.unwrap_or(0))
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

/// Whether `profiles`' quiet switch is on (its hint triggers do not run).
const SWITCH_ON: &str =
    "select count(*) from (select pg_sequence_last_value(reactor.quiet_switch('profiles')) v) s
     where v is not null";

#[tokio::test]
async fn writers_hint_again_once_a_killed_holder_s_lease_runs_out() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let mut listener = Listener::start(&db).await;
    let mut holder = ChildReactor::spawn(&db, storage.path(), &QUIET);
    // Another reactor, which never takes a quiet itself: it pages the
    // holder's table on its announcements, and turns the switch off once
    // the lease has run out.
    let other = start_reactor(&db, storage.path(), &["--quiet-above", "0"]).await;
    other.wait_ready().await;

    let load = Load::start(&db, 4).await;
    eventually("rows written while profiles is quiet", LONG, || async {
        load.quiet_rows() >= 50
    })
    .await;
    assert_eq!(common::count(&client, SWITCH_ON).await, 1);
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
    // Its switch outlives the lease until a live reactor sees it (a second or so).
    eventually("the other reactor turns the switch off", LONG, || async {
        common::count(&client, SWITCH_ON).await == 0
    })
    .await;
    let before = load.rows.lock().unwrap().len();
    eventually("rows written after the switch went off", LONG, || async {
        load.rows.lock().unwrap().len() >= before + 20
    })
    .await;
    let rows = load.stop().await;
    listener.catch_up().await;
    // (A transaction in flight when the switch went off may not have hinted.)
    let after = &rows[before + 4..];
    assert!(after.len() >= 16, "too few rows after: {}", after.len());
    for (id, quiet) in after {
        assert!(!quiet, "row {id} written after the lease was quiet");
        assert!(
            listener.hinted.contains(&id.to_string()),
            "row {id} written after the switch went off was not hinted"
        );
    }

    // The rows nobody hinted are found: the other reactor scanned the table
    // when it turned the switch off.
    eventually("every profile handled", LONG, || async {
        unhandled_profiles(&client).await == 0
    })
    .await;
    other.stop().await;
}

/// A switch left on with no lease (its holder killed while no other reactor
/// ran, or the lease table emptied by a server crash) is turned off by the
/// next reactor to start, and what was written meanwhile is handled.
#[tokio::test]
async fn a_switch_left_on_without_a_lease_is_turned_off_by_the_next_reactor() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    client
        .batch_execute("select setval(reactor.quiet_switch('profiles'), 1, true)")
        .await
        .unwrap();
    // No lease, but the switch keeps the trigger from running.
    assert_eq!(hint_calls_of_one_insert(&db).await, (false, 0));
    let (written_while_on, _) = insert_profile(&mut db.client().await).await;

    let reactor = start_reactor(&db, storage.path(), &[]).await;
    reactor.wait_ready().await;
    eventually("the switch is turned off", LONG, || async {
        common::count(&client, SWITCH_ON).await == 0
    })
    .await;
    assert_eq!(hint_calls_of_one_insert(&db).await, (false, 1));
    eventually("every profile handled", LONG, || async {
        unhandled_profiles(&client).await == 0
    })
    .await;
    assert_eq!(
        common::count(
            &client,
            &format!("select count(*) from profiles where id = '{written_while_on}' and favorites_at is not null")
        )
        .await,
        1
    );
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

#[tokio::test]
async fn a_quiet_table_s_writers_do_not_even_call_its_hint_trigger() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    assert_eq!(hint_calls_of_one_insert(&db).await, (false, 1));

    let reactor = start_reactor(&db, storage.path(), &QUIET).await;
    reactor.wait_ready().await;
    let load = Load::start(&db, 4).await;
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let (quiet, calls) = hint_calls_of_one_insert(&db).await;
        if quiet {
            // The trigger's WHEN condition (the table's quiet switch) keeps
            // the function from running at all.
            assert_eq!(calls, 0, "a quiet insert called the hint trigger");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "profiles never went quiet"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.stop().await;

    // A reactor that stops turns the switch off with the lease: the trigger runs again.
    reactor.stop().await;
    assert_eq!(hint_calls_of_one_insert(&db).await, (false, 1));
}

#[tokio::test]
async fn every_hint_trigger_is_gated_also_on_tables_watched_later_and_in_every_mode() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    let gates = |gated: bool| {
        format!(
            "select count(*) from reactor.hint_triggers h
             join pg_trigger t on t.tgrelid = h.tbl and t.tgname = h.trigger_name
             where (pg_get_triggerdef(t.oid) like '%pg_sequence_last_value(%quiet_on_%')
                   = {gated}"
        )
    };
    // generation_jobs (2), profiles (1): the gates of triggers/280 and 290
    // they had were replaced by the switch, which is off (it reads as null).
    assert_eq!(common::count(&client, &gates(true)).await, 3);
    assert_eq!(
        common::count(
            &client,
            "select count(*) from (select distinct table_name from reactor.hint_triggers) h
             where reactor.quiet_switch(h.table_name) is not null
               and pg_sequence_last_value(reactor.quiet_switch(h.table_name)) is null"
        )
        .await,
        2
    );
    client
        .batch_execute(
            "create table public.later (id bigint primary key, status text not null);
             grant select, insert, update on public.later to authenticated;
             select reactor.watch_table('public.later');",
        )
        .await
        .unwrap();
    assert_eq!(common::count(&client, &gates(true)).await, 5);
    assert_eq!(common::count(&client, &gates(false)).await, 0);

    // The gate keeps the trigger's own condition: an update that leaves the
    // status alone still sends nothing; one that changes it does.
    let function = common::count(
        &client,
        "select 'reactor.notify_watched_row'::regproc::oid::int8",
    )
    .await;
    let calls = format!("select coalesce(pg_stat_get_xact_function_calls({function}), 0)");
    let calls = calls.as_str();
    let mut writer = db.client().await;
    let tx = writer.transaction().await.unwrap();
    tx.batch_execute(
        "set local track_functions = 'pl'; set local role authenticated;
         insert into public.later values (1, 'pending');
         update public.later set status = 'pending';",
    )
    .await
    .unwrap();
    assert_eq!(tx.query_one(calls, &[]).await.unwrap().get::<_, i64>(0), 1);
    tx.batch_execute("update public.later set status = 'done'")
        .await
        .unwrap();
    assert_eq!(tx.query_one(calls, &[]).await.unwrap().get::<_, i64>(0), 2);
    // The switch on (as a reactor's take sets it) silences the table, for a
    // writer of any role (the switch is readable by everyone).
    client
        .batch_execute(
            "select setval(reactor.quiet_switch('later'),
                           extract(epoch from now() + interval '1 minute')::int8, true)",
        )
        .await
        .unwrap();
    tx.batch_execute("update public.later set status = 'again'")
        .await
        .unwrap();
    assert_eq!(tx.query_one(calls, &[]).await.unwrap().get::<_, i64>(0), 2);
    tx.rollback().await.unwrap();

    // Mode switches keep the gate, and the mode still turns the triggers off and on.
    let enabled = "select count(*) from reactor.hint_triggers where enabled";
    for (mode, on) in [
        ("poll", 0),
        ("notify", 5),
        ("outbox", 5),
        ("poll", 0),
        ("notify", 5),
    ] {
        client
            .execute("update reactor.settings set notify_mode = $1", &[&mode])
            .await
            .unwrap_or_else(|e| panic!("switch to {mode}: {e}"));
        assert_eq!(common::count(&client, enabled).await, on, "in {mode}");
        assert_eq!(common::count(&client, &gates(false)).await, 0, "in {mode}");
    }
}

/// With no quiet setting at all, 8 writers inserting profiles as fast as
/// they can (a few hundred hints a second or more, sustained) make the
/// table quiet (the default REACTOR_QUIET_ABOVE is 200), and every row is
/// still handled.
#[tokio::test]
async fn by_default_a_busy_table_goes_quiet() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let reactor = start_reactor(&db, storage.path(), &[]).await;
    reactor.wait_ready().await;

    let load = Load::start(&db, 8).await;
    eventually("rows written while profiles is quiet", LONG, || async {
        load.quiet_rows() >= 100
    })
    .await;
    let rows = load.stop().await;
    assert!(rows.iter().any(|(_, quiet)| !quiet), "quiet from the start");
    eventually("every profile handled", LONG, || async {
        unhandled_profiles(&client).await == 0
    })
    .await;
}
