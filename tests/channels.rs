//! What anyone with a SQL session can do to the channels (issue 10, item 2):
//! `NOTIFY` cannot be revoked, so forged `job_status` payloads and forged
//! self-check pings must not reach viewers or mask a deaf listener.
mod common;

use common::{
    eventually, read_events, start_reactor, start_reactor_with_tokens, user_token,
    user_with_profile, InProcess, TestDb, ADMIN, JWT_SECRET,
};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

async fn stream(r: &InProcess, token: &str) -> reqwest::Response {
    let response = reqwest::Client::new()
        .get(format!("http://{}/v1/events", r.http_addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

/// Runs `sql` as a role with no privileges at all (NOTIFY needs none).
async fn as_stranger(db: &TestDb, sql: &str) {
    let mut client = db.client().await;
    client
        .batch_execute(
            // Roles are cluster-wide and tests run in parallel: tolerate a racing creator.
            "do $$ begin
               if not exists (select from pg_roles where rolname = 'stranger') then
                 create role stranger nologin;
               end if;
             exception when duplicate_object or unique_violation then null;
             end $$",
        )
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("set local role stranger").await.unwrap();
    tx.batch_execute(sql).await.unwrap();
    tx.commit().await.unwrap();
}

/// Submits a job as `user` (the local provider then runs it to success).
async fn submit(db: &TestDb, user: Uuid, prompt: &str) -> Uuid {
    let mut client = db.client().await;
    let tx = client.transaction().await.unwrap();
    reactor::store::db::act_as_user(&tx, user).await.unwrap();
    let id = tx
        .query_one(
            "insert into generation_jobs (owner_id, mode, prompt) values ($1, 'imagine', $2) returning id",
            &[&user, &prompt],
        )
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    id
}

fn forged(id: &str, owner: &str, status: &str) -> String {
    json!({"table": "generation_jobs", "op": "UPDATE", "id": id, "owner_id": owner,
           "status": status, "old_status": "succeeded"})
    .to_string()
}

fn events_for(events: &[(String, serde_json::Value)], id: Uuid) -> Vec<String> {
    events
        .iter()
        .filter(|(_, e)| e["id"] == json!(id.to_string()))
        .map(|(_, e)| e["status"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn a_forged_status_event_never_reaches_a_viewer() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    r.wait_ready().await;
    let client = db.client().await;
    let alice = user_with_profile(&client).await;
    let mut alices = stream(&r, &user_token(alice, JWT_SECRET, 600)).await;
    let mut admins = stream(&r, ADMIN).await;
    let first = submit(&db, alice, "a first room").await;
    read_events(&mut alices, |e| {
        events_for(e, first).contains(&"succeeded".into())
    })
    .await;

    // A stranger claims Alice's finished job failed, and invents another job.
    let invented = Uuid::new_v4();
    for role_sql in [
        format!(
            "select pg_notify('job_status', '{}'); notify job_status, '{}'",
            forged(&first.to_string(), &alice.to_string(), "failed"),
            forged(&invented.to_string(), &alice.to_string(), "succeeded"),
        ),
        format!(
            "select pg_notify('job_status', '{}')",
            forged(&first.to_string(), &alice.to_string(), "canceled"),
        ),
    ] {
        as_stranger(&db, &role_sql).await;
    }
    // A signed-in user can do the same from their own session.
    {
        let mut c = db.client().await;
        let tx = c.transaction().await.unwrap();
        reactor::store::db::act_as_user(&tx, alice).await.unwrap();
        tx.execute(
            "select pg_notify('job_status', $1)",
            &[&forged(&first.to_string(), &alice.to_string(), "failed")],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    // Then a real change: everything forged arrived before it.
    let second = submit(&db, alice, "a second room").await;
    let done =
        |e: &[(String, serde_json::Value)]| events_for(e, second).contains(&"succeeded".into());
    let seen_by_alice = read_events(&mut alices, done).await;
    let seen_by_admin = read_events(&mut admins, done).await;
    for seen in [&seen_by_alice, &seen_by_admin] {
        let first_statuses = events_for(seen, first);
        // (The admin's stream also holds the first job's real path.)
        assert!(
            first_statuses
                .iter()
                .all(|s| ["starting", "processing", "succeeded"].contains(&s.as_str())),
            "a forged status was delivered: {first_statuses:?}"
        );
        assert!(
            events_for(seen, invented).is_empty(),
            "an invented job was delivered"
        );
        assert!(
            seen.iter().all(|(kind, _)| kind == "job_status"),
            "{seen:?}"
        );
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_payloads_neither_disconnects_the_owner_nor_hides_real_transitions() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    r.wait_ready().await;
    let client = db.client().await;
    let owner = user_with_profile(&client).await;
    let mut owners = stream(&r, &user_token(owner, JWT_SECRET, 600)).await;
    let owner_text = owner.to_string();
    // 100,000 distinct forged payloads (NOTIFY folds identical ones), all
    // claiming to be the owner's, in ten transactions racing the real job.
    let flood = {
        let db_url = db.url.clone();
        let owner_text = owner_text.clone();
        tokio::spawn(async move {
            let db = TestDb {
                url: db_url,
                name: String::new(),
            };
            for _ in 0..10 {
                as_stranger(
                    &db,
                    &format!(
                        "select pg_notify('job_status', json_build_object(
                           'table', 'generation_jobs', 'op', 'UPDATE', 'id', gen_random_uuid(),
                           'owner_id', '{owner_text}', 'status', 'failed', 'old_status', 'processing')::text)
                         from generate_series(1, 10000)"
                    ),
                )
                .await;
            }
        })
    };
    let job = submit(&db, owner, "a room in a storm").await;
    flood.await.unwrap();
    // And one more forged word on the real job after the flood.
    as_stranger(
        &db,
        &format!(
            "select pg_notify('job_status', '{}')",
            forged(&job.to_string(), &owner_text, "failed")
        ),
    )
    .await;
    let sentinel = submit(&db, owner, "after the storm").await;
    let seen = read_events(&mut owners, |e| {
        events_for(e, sentinel).contains(&"succeeded".into())
            || e.iter().any(|(kind, _)| kind == "resync")
    })
    .await;
    assert!(
        seen.iter().all(|(kind, _)| kind == "job_status"),
        "the stream was told to resync: {:?}",
        seen.iter()
            .filter(|(k, _)| k != "job_status")
            .collect::<Vec<_>>()
    );
    let statuses = events_for(&seen, job);
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("succeeded"),
        "{statuses:?}"
    );
    // Whatever was seen is the job's real path, in order (fast changes coalesce).
    let real = ["starting", "processing", "succeeded"];
    let positions: Vec<usize> = statuses
        .iter()
        .map(|s| real.iter().position(|r| r == s).unwrap_or(usize::MAX))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]) && !positions.contains(&usize::MAX),
        "not the real transitions: {statuses:?}"
    );
    assert_eq!(
        seen.iter()
            .filter(|(_, e)| e["owner_id"] == json!(owner_text))
            .count(),
        seen.len(),
        "only the owner's rows"
    );
    assert!(
        seen.len() <= 6,
        "only the two real jobs' transitions, got {}",
        seen.len()
    );
    r.stop().await;
}

/// A TCP proxy to Postgres that, once `deaf` is set, drops every
/// NotificationResponse ('A') message the server sends: the connection stays
/// up and answers queries, but hears nothing (what a transaction-mode pooler
/// or a broken middlebox does to LISTEN).
async fn deafening_proxy(target: String) -> (u16, Arc<AtomicBool>) {
    let deaf = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let flag = deaf.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let deaf = flag.clone();
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upstream = tokio::io::copy(&mut client_read, &mut server_write);
                // Server to client: whole messages (type byte, length, body).
                let downstream = async {
                    loop {
                        let mut head = [0u8; 5];
                        server_read.read_exact(&mut head).await?;
                        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                        let mut body = vec![0u8; len.saturating_sub(4)];
                        server_read.read_exact(&mut body).await?;
                        if head[0] == b'A' && deaf.load(Ordering::SeqCst) {
                            continue;
                        }
                        client_write.write_all(&head).await?;
                        client_write.write_all(&body).await?;
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), std::io::Error>(())
                };
                let _ = tokio::join!(upstream, downstream);
            });
        }
    });
    (port, deaf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_ping_does_not_mask_a_listener_that_stopped_hearing() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let mut url = url::Url::parse(&db.url).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let (port, deaf) = deafening_proxy(target).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(port)).unwrap();
    url.query_pairs_mut().append_pair("sslmode", "disable");
    let proxied = TestDb {
        url: url.to_string(),
        name: db.name.clone(),
    };
    let r = start_reactor(
        &proxied,
        storage.path(),
        &[
            "--listen-check-interval",
            "200ms",
            "--listen-check-timeout",
            "1s",
        ],
    )
    .await;
    r.wait_ready().await;

    // The attacker watches channel reactor (no privilege needed) to learn
    // what a self-check looks like, then keeps answering every check in advance.
    let (watcher, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures::StreamExt as _;
        while let Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) = messages.next().await {
            let _ = seen_tx.send(n.payload().to_string());
        }
    });
    watcher.batch_execute("listen reactor").await.unwrap();
    let ping = loop {
        let payload = tokio::time::timeout(LONG, seen_rx.recv())
            .await
            .expect("a self-check in time")
            .unwrap();
        if payload.contains("reactor_ping") {
            break payload;
        }
    };
    let ping: serde_json::Value = serde_json::from_str(&ping).unwrap();
    let text = ping["reactor_ping"].as_str().unwrap().to_string();
    // Replay what was seen, and its old-style "instance:seq" form with a huge sequence.
    let forgeries = vec![
        json!({"reactor_ping": text}).to_string(),
        json!({"reactor_ping": format!("{}:{}", text.split(':').next().unwrap(), u64::MAX)})
            .to_string(),
    ];
    let forging = {
        let db_url = db.url.clone();
        tokio::spawn(async move {
            let db = TestDb {
                url: db_url,
                name: String::new(),
            };
            loop {
                for f in &forgeries {
                    as_stranger(&db, &format!("select pg_notify('reactor', '{f}')")).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Let some forgeries arrive while the listener still hears, then deafen it.
    let mut forged_seen = 0;
    while forged_seen < 10 {
        let payload = seen_rx.recv().await.unwrap();
        if payload.contains(&u64::MAX.to_string()) {
            forged_seen += 1;
        }
    }
    deaf.store(true, Ordering::SeqCst);
    eventually("the deaf listener is noticed (not ready)", LONG, || async {
        !r.status.ready()
    })
    .await;
    forging.abort();
    r.stop().await;
}

#[tokio::test]
async fn a_watched_tables_changes_reach_its_owner_verified_and_forgeries_do_not() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    client
        .batch_execute(
            "create table public.chores (id bigint primary key, state text not null, \"Owner\" uuid);
             select reactor.watch_table('public.chores', 'state', 'Owner');",
        )
        .await
        .unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    r.wait_ready().await;
    let owner = user_with_profile(&client).await;
    let mut owners = stream(&r, &user_token(owner, JWT_SECRET, 600)).await;
    client
        .execute(
            "insert into public.chores values (7, 'todo', $1)",
            &[&owner],
        )
        .await
        .unwrap();
    as_stranger(
        &db,
        &format!(
            "select pg_notify('job_status', '{}'), pg_notify('job_status', '{}')",
            json!({"table": "chores", "op": "UPDATE", "id": "8", "owner_id": owner.to_string(), "status": "done"}),
            json!({"table": "chores", "op": "UPDATE", "id": "7", "owner_id": owner.to_string(), "status": "burnt"}),
        ),
    )
    .await;
    client
        .execute("update public.chores set state = 'done' where id = 7", &[])
        .await
        .unwrap();
    let seen = read_events(&mut owners, |e| {
        e.iter()
            .any(|(_, e)| e["id"] == json!("7") && e["status"] == json!("done"))
    })
    .await;
    let statuses: Vec<(String, String)> = seen
        .iter()
        .map(|(_, e)| {
            (
                e["id"].as_str().unwrap_or("").to_string(),
                e["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        statuses
            .iter()
            .all(|(id, s)| id == "7" && (s == "todo" || s == "done")),
        "{statuses:?}"
    );
    assert!(seen
        .iter()
        .all(|(_, e)| e["table"] == json!("chores") && e["owner_id"] == json!(owner.to_string())));
    r.stop().await;
}

/// A login with no grants creates, in each of a few sessions, a TEMPORARY
/// `generation_jobs` with a trigger named like the reactor's watch trigger,
/// then names an unknown table on job_status so the feed looks its tables up
/// again. The feed used to take those tables for watched ones: reading them
/// fails (they belong to other sessions) and with them the owners' real jobs
/// went unseen, the owner's stream stopping at `starting`/`processing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsiders_temporary_look_alike_table_does_not_silence_the_owners_stream() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    r.wait_ready().await;
    let client = db.client().await;
    let owner = user_with_profile(&client).await;
    let mut owners = stream(&r, &user_token(owner, JWT_SECRET, 600)).await;

    // (Several look-alikes: the feed checked its tables in no fixed order,
    // so one alone let a batch through now and then.)
    let mut outsiders = Vec::new();
    for _ in 0..3 {
        let outsider = common::outsider_session(&client, &db.url).await;
        common::impostor_watched_table(&outsider, "generation_jobs").await;
        outsiders.push(outsider);
    }
    // What it cannot do: hang the reactor's own hint function on its table.
    let refused = outsiders[0]
        .batch_execute(
            "create trigger reactor_watch_status after update on pg_temp.generation_jobs
               for each row execute function reactor.notify_watched_row('id', 'status', 'owner_id')",
        )
        .await
        .expect_err("the reactor's hint functions are not the outsider's");
    assert_eq!(common::sqlstate(&refused), "42501");
    outsiders[0]
        .execute(
            "select pg_notify('job_status', $1)",
            &[
                &json!({"table": "no_such_table", "op": "UPDATE", "id": "1", "owner_id": null,
                      "status": "x", "old_status": null})
                .to_string(),
            ],
        )
        .await
        .unwrap();
    // (One job at a time: the plan allows one in progress.)
    for prompt in ["a first room", "a second room", "a third room"] {
        let job = submit(&db, owner, prompt).await;
        let seen = read_events(&mut owners, |e| {
            events_for(e, job).contains(&"succeeded".into())
        })
        .await;
        assert_eq!(
            events_for(&seen, job).last().map(String::as_str),
            Some("succeeded"),
            "{seen:?}"
        );
    }
    drop(outsiders);
    r.stop().await;
}

/// A watched table that is dropped and made again with another key type is
/// looked up again: its rows reach the owner (the feed used to keep the first
/// table's key type and drop every hint of the new one).
#[tokio::test]
async fn a_watched_table_made_again_is_looked_up_again() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    client
        .batch_execute(
            "create table public.chores (id uuid primary key, state text not null, owner uuid);
             select reactor.watch_table('public.chores', 'state', 'owner');",
        )
        .await
        .unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    r.wait_ready().await;
    let owner = user_with_profile(&client).await;
    let mut owners = stream(&r, &user_token(owner, JWT_SECRET, 600)).await;
    let first = Uuid::new_v4();
    client
        .execute(
            "insert into public.chores values ($1, 'todo', $2)",
            &[&first, &owner],
        )
        .await
        .unwrap();
    read_events(&mut owners, |e| events_for(e, first) == ["todo"]).await;

    client
        .batch_execute(
            "drop table public.chores;
             create table public.chores (id bigint primary key, state text not null, owner uuid);
             select reactor.watch_table('public.chores', 'state', 'owner');",
        )
        .await
        .unwrap();
    client
        .execute(
            "insert into public.chores values (7, 'todo', $1)",
            &[&owner],
        )
        .await
        .unwrap();
    // Hints about a known table name are looked up again at most every few
    // seconds: the row keeps changing until one gets through.
    let changing = {
        let client = db.client().await;
        tokio::spawn(async move {
            for step in 0.. {
                client
                    .execute(
                        "update public.chores set state = $1 where id = 7",
                        &[&format!("step {step}")],
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    read_events(&mut owners, |e| {
        e.iter().any(|(_, e)| e["id"] == json!("7"))
    })
    .await;
    changing.abort();
    r.stop().await;
}

/// How many times anyone has read `public.chores` through its primary key
/// or in full, as the server counts it (a backend reports its counts within
/// about a second of going idle).
async fn reads_of_chores(client: &tokio_postgres::Client) -> i64 {
    common::count(
        client,
        "select coalesce(idx_scan, 0) + seq_scan from pg_stat_user_tables
         where relid = 'public.chores'::regclass",
    )
    .await
}

#[tokio::test]
async fn with_no_stream_open_hints_cost_the_database_no_lookups() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    client
        .batch_execute(
            "create table public.chores (id bigint primary key, state text not null, owner uuid);
             select reactor.watch_table('public.chores', 'state', 'owner');",
        )
        .await
        .unwrap();
    let r = start_reactor_with_tokens(&db, storage.path()).await;
    r.wait_ready().await;
    let owner = user_with_profile(&client).await;
    // Reads made while starting (if any) are counted first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = reads_of_chores(&client).await;

    // Hinted rows nobody watches: nothing reads them back.
    for id in 1..=5i64 {
        client
            .execute(
                "insert into public.chores values ($1, 'todo', $2)",
                &[&id, &owner],
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        reads_of_chores(&client).await,
        before,
        "the event feed looked up rows with no stream open"
    );

    // With a stream open, a change is checked against the table (a read the
    // server counts) before its viewer sees it.
    let mut owners = stream(&r, &user_token(owner, JWT_SECRET, 600)).await;
    client
        .execute("update public.chores set state = 'done' where id = 1", &[])
        .await
        .unwrap();
    read_events(&mut owners, |e| {
        e.iter()
            .any(|(_, e)| e["id"] == json!("1") && e["status"] == json!("done"))
    })
    .await;
    eventually("the check's read counted", LONG, || async {
        reads_of_chores(&client).await > before + 1
    })
    .await;
    r.stop().await;
}
