//! The chaos soak (issue 11): two or more `reactor run` processes against a
//! PostgreSQL the soak crashes, a loopback Replicate with webhooks, and a
//! client workload, while faults arrive on a seeded schedule. After the
//! workload stops, the soak waits for the system to settle (at most the stuck
//! window plus a margin), checks every invariant from table state and prints
//! one summary line; any lost, doubled or leftover row, or a reactor that
//! exited on its own, fails it.
//!
//! `REACTOR_SOAK_SECONDS` (workload length, default 120), `REACTOR_SOAK_SEED`
//! (default random; always printed) and `REACTOR_SOAK_REACTORS` (default 2).
//! `bench/soak.sh` runs the long version.
mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod faults;
mod invariants;
mod provider;
mod reactors;
mod workload;

use common::fake_replicate::{FakeReplicate, TOKEN};
use invariants::Kind;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The reactors' REACTOR_STUCK_AFTER: every job must be terminal within it.
const STUCK_AFTER: Duration = Duration::from_secs(30);
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(2);
/// Listed above the summary line at most.
const SHOWN: usize = 20;

struct SoakConfig {
    seconds: u64,
    seed: u64,
    reactors: usize,
}

impl SoakConfig {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let number = |name: &str| {
            var(name).map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|e| panic!("{name}={v:?}: {e}"))
            })
        };
        SoakConfig {
            seconds: number("REACTOR_SOAK_SECONDS").unwrap_or(120),
            seed: number("REACTOR_SOAK_SEED").unwrap_or_else(rand::random),
            reactors: number("REACTOR_SOAK_REACTORS").unwrap_or(2).max(1) as usize,
        }
    }
}

/// `reactor run` flags for the soak (each reactor adds its address).
fn reactor_flags(
    db: &common::TestDb,
    storage: &std::path::Path,
    fake: &FakeReplicate,
) -> Vec<String> {
    let mut flags = common::reactor_flags(db, storage);
    flags.extend(
        [
            "--provider",
            "replicate",
            "--replicate-base-url",
            &fake.base,
            "--replicate-api-token",
            TOKEN,
            "--replicate-webhook-secret",
            provider::SECRET,
            "--provider-timeout",
            &humantime::format_duration(PROVIDER_TIMEOUT).to_string(),
            "--webhook-grace",
            "3s",
            "--stuck-after",
            &humantime::format_duration(STUCK_AFTER).to_string(),
            "--late-window",
            "10s",
            // Outages (the database, storage, the provider) are retried for
            // their budgets; the cap keeps recovery within the settle window.
            "--max-attempts",
            "6",
            "--retry-backoff",
            "250ms",
            "--retry-backoff-max",
            "5s",
            // A silent partition costs a statement this long, not hours.
            "--statement-timeout",
            "3s",
        ]
        .map(String::from),
    );
    flags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let config = SoakConfig::from_env();
    // First, so that a run that hangs or crashes can still be replayed.
    println!(
        "soak: starting seed={} seconds={} reactors={}",
        config.seed, config.seconds, config.reactors
    );
    let cluster = cluster::SoakCluster::start().await;
    let admin = reactor::store::db::connect(&cluster.url("postgres"))
        .await
        .expect("connect");
    admin
        .batch_execute("create database soak")
        .await
        .expect("create database");
    let db = common::TestDb {
        url: cluster.url("soak"),
        name: "soak".into(),
    };
    reactor::store::migrate::run(&mut db.client().await)
        .await
        .expect("migrate");

    // Kept when the soak fails: the reactors' logs hold the traces.
    let work = std::env::temp_dir().join(format!(
        "reactor-soak-{}-{}",
        config.seed,
        uuid::Uuid::new_v4().simple()
    ));
    let (storage, logs) = (work.join("storage"), work.join("logs"));
    std::fs::create_dir_all(&logs).expect("logs directory");
    std::fs::create_dir_all(&storage).expect("storage directory");

    let fake = FakeReplicate::start().await;
    let images = Arc::new(common::image_server().await);
    // The reactors reach PostgreSQL through a proxy that can go silent; the
    // workload, the checks and the faults' admin connect directly.
    let proxy = common::silent_proxy::SilentProxy::in_front_of(&db.url).await;
    let proxied = common::TestDb {
        url: proxy.url(&db.url),
        name: db.name.clone(),
    };
    let fleet = Arc::new(Mutex::new(reactors::Fleet::start(
        config.reactors,
        reactor_flags(&proxied, &storage, &fake),
        &logs,
    )));
    let stop = CancellationToken::new();
    let webhooks = Arc::new(provider::WebhookStats::default());
    let autopilot = tokio::spawn(provider::autopilot(
        fake.clone(),
        images.clone(),
        config.seed,
        webhooks.clone(),
        stop.clone(),
    ));
    let monitor = tokio::spawn(watch_exits(fleet.clone(), stop.clone()));

    let length = Duration::from_secs(config.seconds);
    let schedule = faults::schedule(config.seed, length, PROVIDER_TIMEOUT);
    let mut injector = faults::Injector {
        cluster,
        fleet: fleet.clone(),
        fake: fake.clone(),
        storage: storage.clone(),
        proxy,
        admin_url: db.url.clone(),
        counts: Default::default(),
    };
    let client = workload::Workload::new(db.url.clone(), config.seed.wrapping_add(1));
    let (stats, ()) = tokio::join!(client.run(Instant::now() + length), injector.run(schedule));

    // Quiesce: no more faults or clients; the reactors finish what is left.
    fleet.lock().unwrap().restart_down();
    let check = db.client().await;
    let deadline = Instant::now() + STUCK_AFTER + Duration::from_secs(30);
    while Instant::now() < deadline && !invariants::settled(&check).await {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.cancel();
    let _ = tokio::join!(autopilot, monitor);
    fleet.lock().unwrap().check_exits();

    let mut violations = invariants::check(&check, &storage, &fake.creates_per_job()).await;
    let exits = fleet.lock().unwrap().exits.clone();
    let tally = |kind: Kind| violations.iter().filter(|v| v.kind == kind).count();
    let (lost, doubled, leftover) = (
        tally(Kind::Lost),
        tally(Kind::Doubled),
        tally(Kind::LeftoverState),
    );
    violations.truncate(SHOWN);
    for v in &violations {
        println!("soak: {:?}: {}", v.kind, v.what);
    }
    for e in exits.iter().take(SHOWN) {
        println!("soak: exited: {e}");
    }
    for e in stats.unexpected.iter().take(SHOWN) {
        println!("soak: unexpected client error: {e}");
    }
    let c = &injector.counts;
    println!(
        "soak: seed={} minutes={:.1} reactors={} jobs={} succeeded={} failed={} canceled={} profiles={} \
         creates={} dead={} refused_409={} refused_402={} cancels={} client_interrupted={} \
         webhooks_ok={} webhooks_refused={} webhooks_given_up={} \
         faults=kill:{},pg_stop:{},terminate:{},silence:{},provider:{},provider_outage:{},storage_outage:{} lost={lost} doubled={doubled} leftover_state={leftover} exited={}",
        config.seed,
        config.seconds as f64 / 60.0,
        config.reactors,
        common::count(&check, "select count(*) from generation_jobs").await,
        common::count(&check, "select count(*) from generation_jobs where status = 'succeeded'").await,
        common::count(&check, "select count(*) from generation_jobs where status = 'failed'").await,
        common::count(&check, "select count(*) from generation_jobs where status = 'canceled'").await,
        common::count(&check, "select count(*) from profiles").await,
        fake.predictions().len(),
        common::count(&check, "select count(*) from reactor.handler_state where dead_at is not null").await,
        stats.in_progress_409,
        stats.quota_402,
        stats.cancels,
        stats.interrupted,
        webhooks.delivered.load(Ordering::Relaxed),
        webhooks.refused.load(Ordering::Relaxed),
        webhooks.given_up.load(Ordering::Relaxed),
        c.kill,
        c.pg_stop,
        c.terminate,
        c.silence,
        c.provider,
        c.provider_outage,
        c.storage_outage,
        exits.len(),
    );
    let failed = lost + doubled + leftover + exits.len() > 0;
    drop(fleet);
    if failed {
        println!("soak: logs and storage kept in {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    assert!(
        !failed,
        "the soak found lost, doubled or leftover rows, or a reactor exit (see above)"
    );
}

/// Notices reactors that exit when nobody killed them.
async fn watch_exits(fleet: Arc<Mutex<reactors::Fleet>>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        fleet.lock().unwrap().check_exits();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
