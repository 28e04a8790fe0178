//! A silent network partition (issue 21): the reactor reaches PostgreSQL
//! through a loopback proxy that, for 45 s, forwards nothing and closes
//! nothing on the flows it carries (what a NAT gateway, a firewall or a
//! failover does to a flow it forgot), then lets new flows through while the
//! old ones stay silent forever. Clients keep writing directly. Work written
//! before, during and after is all done, once, soon after the heal; /readyz
//! says not ready while work cannot move.
mod common;

use common::fake_replicate::{webhook_flags, FakeReplicate};
use common::silent_proxy::SilentProxy;
use common::{
    count, eventually, favorites_of, image_server, start_reactor_with, submit_job,
    succeeded_with_render, user_with_profile, ImageServer, InProcess, TestDb,
};
use reactor::sandbox::cluster::{LocalPostgres, Options};
use reactor::store::notify_mode::{self, Mode};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use uuid::Uuid;

const PARTITION: Duration = Duration::from_secs(45);
/// Everything written is done this soon after the heal.
const AFTER_HEAL: Duration = Duration::from_secs(60);

/// Short deadlines so the scenarios stay quick; the defaults are longer.
const FLAGS: &[&str] = &[
    "--statement-timeout",
    "3s",
    "--stall-after",
    "10s",
    "--lease",
    "4s",
    "--provider-poll",
    "100ms",
];

/// One user (so one favorites collection due) and one job each, written
/// directly (not through the proxy), as clients do.
async fn write_work(db: &TestDb, client: &Client, tag: &str, n: usize) -> Vec<(Uuid, Uuid)> {
    let mut written = Vec::new();
    for i in 0..n {
        let user = user_with_profile(client).await;
        let job = submit_job(db, user, "imagine", &format!("{tag} room {i}"))
            .await
            .expect("submit a job");
        written.push((user, job));
    }
    written
}

/// The provider finishes every prediction a moment after it is created.
fn provider_finishes_predictions(fake: &FakeReplicate, images: &ImageServer) {
    let (fake, image) = (fake.clone(), images.url("/ok/room.jpg"));
    tokio::spawn(async move {
        loop {
            for p in fake.predictions() {
                if p.status == "starting" {
                    fake.finish(&p.id, "succeeded", json!([image]), json!(null));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Every job succeeded with its render and debit, every user has favorites.
async fn all_done(client: &Client, work: &[(Uuid, Uuid)]) -> bool {
    for (user, job) in work {
        if favorites_of(client, *user).await != 1 || succeeded_with_render(client, *job).await != 1
        {
            return false;
        }
        let debits = format!("select count(*) from usage_ledger where job_id = '{job}'");
        if count(client, &debits).await != 1 {
            return false;
        }
    }
    true
}

/// Exactly once: one prediction per job at the provider, one render, one
/// debit and one favorites collection each.
async fn done_exactly_once(client: &Client, fake: &FakeReplicate, work: &[(Uuid, Uuid)]) {
    let mut per_prompt: HashMap<String, u32> = HashMap::new();
    for p in fake.predictions() {
        let prompt = p.input["prompt"].as_str().unwrap_or_default().to_string();
        *per_prompt.entry(prompt).or_default() += 1;
    }
    assert!(
        per_prompt.values().all(|n| *n == 1),
        "a job was sent to the provider twice: {per_prompt:?}"
    );
    assert_eq!(per_prompt.len(), work.len(), "one prediction per job");
    for (user, job) in work {
        assert_eq!(favorites_of(client, *user).await, 1);
        for table in ["renders", "usage_ledger"] {
            let sql = format!("select count(*) from {table} where job_id = '{job}'");
            assert_eq!(count(client, &sql).await, 1, "{table} of job {job}");
        }
    }
}

async fn readyz(reactor: &InProcess) -> u16 {
    let url = format!("http://{}/readyz", reactor.http_addr);
    match reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn metrics(reactor: &InProcess) -> String {
    let url = format!("http://{}/metrics", reactor.http_addr);
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// Work before (left in flight), during and after a 45 s silent partition of
/// `reactor`'s connections is all done, exactly once, within a minute of the
/// heal, and /readyz says not ready while the work is stalled.
async fn survives_a_silent_partition(
    db: &TestDb,
    proxy: &SilentProxy,
    reactor: &InProcess,
    fake: &FakeReplicate,
) {
    let client = db.client().await;
    let mut work = write_work(db, &client, "before", 5).await;
    eventually(
        "work before the partition under way",
        AFTER_HEAL,
        || async { !fake.predictions().is_empty() },
    )
    .await;

    proxy.partition();
    let cut = Instant::now();
    work.extend(write_work(db, &client, "during", 5).await);
    eventually(
        "/readyz not ready during the partition",
        PARTITION,
        || async { readyz(reactor).await == 503 },
    )
    .await;
    tokio::time::sleep(PARTITION.saturating_sub(cut.elapsed()) / 2).await;
    work.extend(write_work(db, &client, "late in", 5).await);
    // Work waits, nothing moves: still not ready, and the stall shows.
    let text = metrics(reactor).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("reactor_worker_stalled{") && l.ends_with(" 1")),
        "a stalled worker in /metrics:\n{text}"
    );
    assert_eq!(readyz(reactor).await, 503, "not ready while nothing moves");
    tokio::time::sleep(PARTITION.saturating_sub(cut.elapsed())).await;

    proxy.heal();
    let healed = Instant::now();
    work.extend(write_work(db, &client, "after", 5).await);
    eventually(
        "everything done within a minute of the heal",
        AFTER_HEAL,
        || async { all_done(&client, &work).await },
    )
    .await;
    assert!(healed.elapsed() < AFTER_HEAL);
    done_exactly_once(&client, fake, &work).await;
    eventually("ready again", AFTER_HEAL, || async {
        readyz(reactor).await == 200
    })
    .await;
    let text = metrics(reactor).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("reactor_db_connections_discarded_total ")
                && !l.ends_with(" 0")),
        "discarded connections in /metrics:\n{text}"
    );
}

/// A reactor with [`FLAGS`] and webhooks on (a prediction's webhook URL
/// names its job: the proof that lets a later attempt adopt a prediction an
/// interrupted one created). No webhook is delivered: it polls after 1 s.
async fn start_reactor(db: &TestDb, fake: &FakeReplicate, storage: &std::path::Path) -> InProcess {
    let mut flags = fake.reactor_flags(FLAGS);
    flags.extend(webhook_flags("1s"));
    start_reactor_with(db, storage, &flags).await
}

async fn start_through(
    db: &TestDb,
    proxy: &SilentProxy,
    fake: &FakeReplicate,
    storage: &std::path::Path,
) -> InProcess {
    let proxied = TestDb {
        url: proxy.url(&db.url),
        name: db.name.clone(),
    };
    let reactor = start_reactor(&proxied, fake, storage).await;
    reactor.wait_ready().await;
    reactor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_in_notify_mode_never_freezes_the_reactor() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    provider_finishes_predictions(&fake, &images);
    let proxy = SilentProxy::in_front_of(&db.url).await;
    let reactor = start_through(&db, &proxy, &fake, storage.path()).await;
    survives_a_silent_partition(&db, &proxy, &reactor, &fake).await;
    reactor.stop().await;
}

/// The superuser URL of a cluster with wal_level = logical, kept until the
/// test binary exits.
async fn logical_server() -> String {
    LocalPostgres::start_with(&Options {
        settings: [("wal_level", "logical"), ("max_replication_slots", "10")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        files: vec![],
    })
    .await
    .expect("starting a throwaway PostgreSQL")
    .leak()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_in_wal_mode_never_freezes_the_reactor() {
    let server = logical_server().await;
    let name = format!("reactor_partition_{}", Uuid::new_v4().simple());
    let admin = reactor::store::db::connect(&server).await.unwrap();
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
    let role = format!("owner_{}", Uuid::new_v4().simple());
    let url = reactor::sandbox::supabase_like::prepare(&server, &name, &role)
        .await
        .expect("Supabase-like set-up");
    let db = TestDb { url, name };
    let mut client = db.client().await;
    reactor::store::migrate::run(&mut client).await.unwrap();
    let on = notify_mode::set(&client, Mode::Wal).await.unwrap();
    assert_eq!(on.effective, "wal");

    let storage = tempfile::tempdir().unwrap();
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    provider_finishes_predictions(&fake, &images);
    let proxy = SilentProxy::in_front_of(&db.url).await;
    let reactor = start_through(&db, &proxy, &fake, storage.path()).await;
    let streaming =
        "select count(*) from pg_replication_slots where slot_name like 'reactor_wal_%' and active";
    eventually("the reactor streams from its slot", AFTER_HEAL, || async {
        count(&client, streaming).await == 1
    })
    .await;
    survives_a_silent_partition(&db, &proxy, &reactor, &fake).await;
    eventually("streaming again after the heal", AFTER_HEAL, || async {
        count(&client, streaming).await >= 1
    })
    .await;
    reactor.stop().await;
}

/// A is cut off in the middle of its fenced writes (each holds its lease's
/// state row locked), so its sessions sit idle in their transactions on the
/// server, forever as far as A's network goes. B still takes every row over
/// and finishes it, once, soon after A's leases expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_of_two_reactors_is_partitioned_the_other_finishes_its_leased_work_within_the_lease(
) {
    let db = common::migrated_db().await;
    let (storage_a, storage_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    provider_finishes_predictions(&fake, &images);
    let proxy = SilentProxy::in_front_of(&db.url).await;
    let client = db.client().await;
    let work = write_work(&db, &client, "held by a", 6).await;
    // A client holds the jobs (FOR SHARE): A claims them, opens its fenced
    // transactions (locking the state rows) and waits on this lock.
    let mut blocker = db.client().await;
    let blocking = blocker.transaction().await.unwrap();
    blocking
        .batch_execute("select 1 from generation_jobs for share")
        .await
        .unwrap();
    let a = start_through(&db, &proxy, &fake, storage_a.path()).await;
    let held = "select count(*) from reactor.handler_state where handler = 'generation' and lease_owner is not null";
    eventually("A holds every lease", AFTER_HEAL, || async {
        count(&client, held).await == work.len() as i64
    })
    .await;
    let waiting = "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and application_name = 'reactor'";
    eventually("A's fenced writes wait on the lock", AFTER_HEAL, || async {
        count(&client, waiting).await > 0
    })
    .await;

    proxy.partition();
    let cut = Instant::now();
    // A's writes go through on the server; A never hears of it.
    blocking.rollback().await.unwrap();
    let b = start_reactor(&db, &fake, storage_b.path()).await;
    // Lease 4 s: B takes every row over once A's leases expire and the server
    // has ended A's idle transactions.
    let within = Duration::from_secs(4) + Duration::from_secs(16);
    eventually("B finished A's leased work", within, || async {
        all_done(&client, &work).await
    })
    .await;
    assert!(cut.elapsed() < within);
    done_exactly_once(&client, &fake, &work).await;
    eventually("A not ready while cut off", PARTITION, || async {
        readyz(&a).await == 503
    })
    .await;
    assert_eq!(readyz(&b).await, 200, "B is ready");
    b.stop().await;
    a.shutdown.cancel();
}

/// A flow that goes silent under a running attempt (the soak found this): the
/// render's download takes a second; meanwhile every open flow goes silent for
/// good and new ones go through at once. The attempt's next statement takes a
/// pooled connection that will never answer, while the heartbeat, on fresh
/// connections, keeps the lease alive, so without a deadline on the attempt's
/// own statements the render would never come. With it, the statement gives
/// up after REACTOR_STATEMENT_TIMEOUT and the next attempt renders the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_whose_connection_goes_silent_is_retried_not_held_for_ever() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = image_server().await;
    let proxy = SilentProxy::in_front_of(&db.url).await;
    let proxied = TestDb {
        url: proxy.url(&db.url),
        name: db.name.clone(),
    };
    let flags = [
        "--statement-timeout",
        "2s",
        "--lease",
        "30s",
        "--retry-backoff",
        "100ms",
    ];
    let reactor = common::start_reactor(&proxied, storage.path(), &flags).await;
    reactor.wait_ready().await;
    let client = db.client().await;
    let owner = user_with_profile(&client).await;
    let job = common::succeeded_job(&client, owner, &[images.url("/delay/1500/a.jpg")]).await;
    eventually("the render's download started", AFTER_HEAL, || async {
        images.hits("/delay/1500/a.jpg") > 0
    })
    .await;
    proxy.partition();
    proxy.heal();
    eventually("the job is rendered", AFTER_HEAL, || async {
        count(
            &client,
            &format!("select count(*) from renders where job_id = '{job}'"),
        )
        .await
            == 1
    })
    .await;
    reactor.stop().await;
}
