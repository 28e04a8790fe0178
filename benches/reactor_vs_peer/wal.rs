//! The "wal" workload (issue 14), side by side in one run:
//!
//! - write overhead of WAL mode beside notify, outbox and no triggers, for
//!   `generation_jobs` and for a table of one's own watched with
//!   `reactor.watch_table`, at every writer count, **durable** (fsync,
//!   synchronous_commit and full_page_writes on, from postgresql.conf,
//!   checked with SHOW);
//! - the WAL written per insert, against a second cluster with
//!   `wal_level = replica` running the same inserts (no triggers, notify);
//! - live latency (insert commit → collection visible) in modes notify,
//!   outbox and wal on the logical cluster;
//! - the slot's lag at the end of each burst and how long it took to catch up.
//!
//! Only the reactor of the variant being measured runs during a measurement:
//! a WAL-mode reactor's slot decodes all WAL of the cluster, so a slot left
//! running during the "without" runs would charge its cost to the baseline
//! and hide the overhead. Each run starts its reactor, waits until it is
//! ready (in WAL mode: until its slot is in use), checks that no other slot
//! exists on the cluster, runs pgbench, stops the reactor and waits until its
//! temporary slot is gone. Variants alternate within each repeat, the order
//! rotating, after one unrecorded warm-up run per database.
use crate::backlog::{drain, Backlog};
use crate::cli::Params;
use crate::cluster::{with_dbname, Ctx, Db};
use crate::contenders::{Contender, Running};
use crate::latency::{self, Probe};
use crate::measure::{find_pgbench, median, pgbench};
use crate::report::{Report, Results};
use crate::write::WRITE_SCRIPT;
use anyhow::{bail, Context as _, Result};
use reactor::store::localpg::{LocalPostgres, Options};
use reactor::store::notify_mode::{self, Mode};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const OWN_TABLE: &str = "create table public.bench_jobs (
  id uuid primary key default gen_random_uuid(),
  owner_id uuid,
  status text not null default 'queued',
  payload text);
select reactor.watch_table('public.bench_jobs', 'status', 'owner_id');";

const OWN_SCRIPT: &str =
    "insert into public.bench_jobs (owner_id, payload) values (gen_random_uuid(), 'bench');\n";

/// The tables written: (key in the results, pgbench script name, table).
const TABLES: [(&str, &str, &str); 2] = [
    (
        "generation_jobs",
        "wal_insert_job.sql",
        "public.generation_jobs",
    ),
    ("own", "wal_insert_own.sql", "public.bench_jobs"),
];

/// The variants, in the order they alternate: (key, cluster, notify mode).
/// `replica_*` run on the `wal_level = replica` cluster.
const VARIANTS: [(&str, Level, &str); 7] = [
    ("without", Level::Logical, "without"),
    ("notify", Level::Logical, "notify"),
    ("outbox", Level::Logical, "outbox"),
    ("wal", Level::Logical, "wal"),
    (FLOOR, Level::Logical, "wal"),
    ("replica_without", Level::Replica, "without"),
    ("replica_notify", Level::Replica, "notify"),
];

/// The floor of any logical-decoding consumer: the database in WAL mode (no
/// trigger fires, publication "reactor"), no reactor, and PostgreSQL's own
/// `pg_recvlogical` (C, output to /dev/null) streaming the publication from a
/// slot of its own. What this costs the writers is the server's decoding.
const FLOOR: &str = "decoding_floor";
/// Its slot: named like the reactor's, so the slot checks see it.
const FLOOR_SLOT: &str = "reactor_wal_floor";

/// Live latency runs in these modes on the logical cluster.
const LATENCY_MODES: [&str; 3] = ["notify", "outbox", "wal"];

/// How long a slot may take to appear after /readyz, or to go after SIGTERM.
const SLOT_WAIT: Duration = Duration::from_secs(30);
/// How long the slot may take to confirm the end of a burst.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Logical,
    Replica,
}

impl Level {
    fn wal_level(self) -> &'static str {
        match self {
            Level::Logical => "logical",
            Level::Replica => "replica",
        }
    }
}

/// A throwaway cluster of this workload, durable as in production.
struct Cluster {
    level: Level,
    server: String,
    admin: Client,
    _pg: LocalPostgres,
}

impl Cluster {
    async fn start(level: Level) -> Result<Cluster> {
        let settings = [
            ("wal_level", level.wal_level()),
            ("max_replication_slots", "10"),
            // Durable as in production. These go to postgresql.conf after the
            // throwaway defaults (fsync off…), so they win; checked below.
            ("fsync", "on"),
            ("synchronous_commit", "on"),
            ("full_page_writes", "on"),
        ];
        let pg = LocalPostgres::start_with(&Options {
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            files: vec![],
        })
        .await?;
        let server = pg.url("postgres");
        let admin = reactor::store::db::connect(&server).await?;
        for (name, want) in settings {
            let have: String = admin.query_one(&format!("show {name}"), &[]).await?.get(0);
            if have != want {
                bail!(
                    "{name} is {have} on the {} cluster, {want} was asked for: \
                     the figures would not be what they say",
                    level.wal_level()
                );
            }
        }
        Ok(Cluster {
            level,
            server,
            admin,
            _pg: pg,
        })
    }

    /// Replication slots on the whole cluster (any database).
    async fn slots(&self) -> Result<i64> {
        Ok(self
            .admin
            .query_one("select count(*) from pg_replication_slots", &[])
            .await?
            .get(0))
    }
}

/// One database per variant, migrated, with the watched table.
struct Variant {
    key: &'static str,
    mode: &'static str,
    cluster: usize,
    db: Db,
}

impl Variant {
    fn contender(&self) -> Contender {
        if self.mode == "outbox" {
            Contender::ReactorOutbox
        } else {
            Contender::Reactor
        }
    }

    /// The reactor in WAL mode.
    fn is_wal(&self) -> bool {
        self.mode == "wal" && !self.is_floor()
    }

    /// pg_recvlogical instead of a reactor.
    fn is_floor(&self) -> bool {
        self.key == FLOOR
    }

    /// A slot decodes during this variant's runs.
    fn decodes(&self) -> bool {
        self.mode == "wal"
    }
}

/// A migrated database with the watched table, switched to `mode`.
async fn variant_db(cluster: &Cluster, key: &str, mode: &str) -> Result<Db> {
    let name = format!("bench_wal_{key}");
    // One statement per call: DROP DATABASE refuses a transaction block.
    cluster
        .admin
        .batch_execute(&format!("drop database if exists {name} with (force)"))
        .await?;
    cluster
        .admin
        .batch_execute(&format!("create database {name}"))
        .await?;
    let url = with_dbname(&cluster.server, &name)?;
    let mut client = reactor::store::db::connect(&url).await?;
    reactor::store::migrate::run(&mut client).await?;
    client.batch_execute(OWN_TABLE).await?;
    match mode {
        "without" => {
            client
                .batch_execute(
                    "drop trigger reactor_notify_insert on public.generation_jobs;
                     drop trigger reactor_notify_status on public.generation_jobs;
                     select reactor.unwatch_table('public.bench_jobs');",
                )
                .await?
        }
        "outbox" => {
            notify_mode::set(&client, Mode::Outbox).await?;
        }
        "wal" => {
            notify_mode::set(&client, Mode::Wal).await?;
        }
        _ => {}
    }
    Ok(Db { name, url, client })
}

/// The reactor's slot on `c`'s database, if any: (name, in use).
async fn reactor_slot(c: &Client) -> Result<Option<(String, bool)>> {
    Ok(c.query_opt(
        "select slot_name::text, active_pid is not null from pg_replication_slots
         where slot_name like 'reactor_wal_%' and database = current_database()",
        &[],
    )
    .await?
    .map(|r| (r.get(0), r.get(1))))
}

/// Waits until the WAL-mode reactor's slot exists and is in use (/readyz
/// does not say the slot is there).
async fn wait_slot(db: &Db, running: &mut Running) -> Result<()> {
    let deadline = Instant::now() + SLOT_WAIT;
    loop {
        if let Some((_, true)) = reactor_slot(&db.client).await? {
            return Ok(());
        }
        running.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "no slot of the WAL-mode reactor in use within {SLOT_WAIT:?} ({})",
                running.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops a reactor; in WAL mode waits until its temporary slot is gone, so
/// nothing decodes during the next variant's run. A slot left behind is a
/// bug of the reactor (issue 14: SIGTERM releases the slot): it is noted,
/// and its session is ended so the run can go on.
async fn stop(
    mut running: Running,
    v: &Variant,
    cluster: &Cluster,
    res: &mut Results,
) -> Result<()> {
    running.check_alive()?;
    running.stop().await?;
    if v.is_floor() {
        return drop_floor_slot(&v.db).await;
    }
    if !v.is_wal() {
        return Ok(());
    }
    let deadline = Instant::now() + SLOT_WAIT;
    while let Some((slot, _)) = reactor_slot(&v.db.client).await? {
        if Instant::now() > deadline {
            res.notes.push(format!(
                "wal: slot {slot} was still there {SLOT_WAIT:?} after the reactor stopped (SIGTERM); its session was terminated"
            ));
            cluster
                .admin
                .execute(
                    "select pg_terminate_backend(active_pid) from pg_replication_slots
                     where slot_name = $1 and active_pid is not null",
                    &[&slot],
                )
                .await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            if reactor_slot(&v.db.client).await?.is_some() {
                cluster
                    .admin
                    .execute("select pg_drop_replication_slot($1)", &[&slot])
                    .await?;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Starts pg_recvlogical on a new slot [`FLOOR_SLOT`] of `db`.
async fn start_decoding_floor(ctx: &Ctx, db: &Db, label: &str) -> Result<Running> {
    let bin = find_pgbench()
        .map(|p| p.with_file_name("pg_recvlogical"))
        .filter(|p| p.is_file())
        .context("pg_recvlogical (beside pgbench) for the decoding floor")?;
    db.client
        .execute(
            "select pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&FLOOR_SLOT],
        )
        .await?;
    let (log, path) = ctx.log_file(&format!("decoding_floor_{label}"))?;
    let child = tokio::process::Command::new(bin)
        .args(["--dbname", &db.url, "--slot", FLOOR_SLOT, "--start"])
        .args(["-o", "proto_version=1", "-o", "publication_names=reactor"])
        .args(["--file", "/dev/null", "--status-interval", "1"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting pg_recvlogical")?;
    Ok(Running {
        child,
        log: path,
        http_port: None,
    })
}

/// Drops [`FLOOR_SLOT`] once pg_recvlogical's session has let it go (its
/// slot is not temporary).
async fn drop_floor_slot(db: &Db) -> Result<()> {
    let deadline = Instant::now() + SLOT_WAIT;
    while let Some((_, true)) = reactor_slot(&db.client).await? {
        if Instant::now() > deadline {
            bail!("pg_recvlogical's slot still in use {SLOT_WAIT:?} after it was stopped");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.client
        .execute("select pg_drop_replication_slot($1)", &[&FLOOR_SLOT])
        .await?;
    Ok(())
}

/// One pgbench run of one variant.
struct Outcome {
    tps: f64,
    /// None when no row was written.
    wal_per_insert: Option<f64>,
    /// WAL-mode only: bytes between the server's position and the slot's
    /// confirmed position at the end of the burst, and the seconds until
    /// the slot confirmed the burst's end (None: not within the limit).
    lag: Option<(f64, Option<f64>)>,
}

struct Run<'a> {
    ctx: &'a Ctx,
    pgbench: &'a Path,
    clusters: &'a [Cluster],
}

impl Run<'_> {
    async fn one(
        &self,
        v: &Variant,
        table: &str,
        script: &Path,
        c: usize,
        res: &mut Results,
    ) -> Result<Outcome> {
        let cluster = &self.clusters[v.cluster];
        let db = &v.db;
        // Before the reactor starts: a WAL-mode slot made afterwards does not
        // decode the truncate, and every run starts from a checkpoint.
        db.client
            .batch_execute(&format!("truncate {table} cascade"))
            .await?;
        db.client.batch_execute("checkpoint").await?;
        let label = format!("{}_c{c}", table.replace('.', "_"));
        let mut running = if v.is_floor() {
            start_decoding_floor(self.ctx, db, &label).await?
        } else {
            self.ctx.start(&v.contender(), db, &label).await?
        };
        running.ready().await?;
        if v.decodes() {
            wait_slot(db, &mut running).await?;
        }
        let slots = cluster.slots().await?;
        let want = i64::from(v.decodes());
        if slots != want {
            bail!(
                "{} slot(s) on the {} cluster during the {} run, {want} expected: \
                 another variant's slot would decode this run's WAL",
                slots,
                cluster.level.wal_level(),
                v.key
            );
        }
        let before: String = db
            .client
            .query_one("select pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let tps = pgbench(self.pgbench, script, &db.url, c, self.ctx.p.write_secs).await?;
        // Right at the end of the burst, in one statement: the server's
        // position, the WAL written, and the slot's distance from it.
        let end = db
            .client
            .query_one(
                "with now as (select pg_current_wal_lsn() as lsn)
                 select now.lsn::text,
                        pg_wal_lsn_diff(now.lsn, $1::text::pg_lsn)::float8,
                        (select pg_wal_lsn_diff(now.lsn, s.confirmed_flush_lsn)::float8
                         from pg_replication_slots s
                         where s.slot_name like 'reactor_wal_%' and s.database = current_database())
                 from now",
                &[&before],
            )
            .await?;
        let burst_end: String = end.get(0);
        let bytes: f64 = end.get(1);
        let lag_at_end: Option<f64> = end.get(2);
        let lag = match lag_at_end {
            Some(lag) if v.is_wal() => {
                let t0 = Instant::now();
                let caught_up = loop {
                    let done: bool = db
                        .client
                        .query_opt(
                            "select confirmed_flush_lsn >= $1::text::pg_lsn from pg_replication_slots
                             where slot_name like 'reactor_wal_%' and database = current_database()",
                            &[&burst_end],
                        )
                        .await?
                        .and_then(|r| r.get(0))
                        .unwrap_or(false);
                    if done {
                        break Some(t0.elapsed().as_secs_f64());
                    }
                    if t0.elapsed() > CATCH_UP_LIMIT {
                        res.notes.push(format!(
                            "wal: {table} c={c}: the slot had not confirmed the burst's end {CATCH_UP_LIMIT:?} later"
                        ));
                        break None;
                    }
                    running.check_alive()?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                Some((lag, caught_up))
            }
            _ if v.is_wal() => {
                bail!("the WAL-mode reactor's slot was gone at the end of the burst")
            }
            _ => None,
        };
        let rows: i64 = db
            .client
            .query_one(&format!("select count(*) from {table}"), &[])
            .await?
            .get(0);
        stop(running, v, cluster, res).await?;
        Ok(Outcome {
            tps,
            wal_per_insert: (rows > 0).then(|| bytes / rows as f64),
            lag,
        })
    }
}

/// Sets `key` to the median of `v`, and `key.min` / `key.max` to its spread.
fn summarize(res: &mut Results, key: &str, v: &[f64]) {
    if v.is_empty() {
        return;
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    res.set(key, median(v.to_vec()));
    res.set(format!("{key}.min"), min);
    res.set(format!("{key}.max"), max);
}

pub(crate) async fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let Some(pgbench_bin) = find_pgbench() else {
        println!("\n== wal mode: skipped (pgbench not found)");
        return Ok(());
    };
    // The clusters live under the temp dir: on tmpfs, fsync costs nothing
    // and "durable" would not mean what it says.
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(std::env::temp_dir())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    res.machine.insert(
        "wal workload's clusters: filesystem of TMPDIR".into(),
        fs.clone(),
    );
    if fs == "tmpfs" || fs == "ramfs" {
        res.notes.push(format!(
            "wal: the clusters ran on {fs} (TMPDIR): fsync cost nothing, so the durable figures are not; \
             set TMPDIR to a folder on disk"
        ));
    }
    let clusters = [
        Cluster::start(Level::Logical)
            .await
            .context("the wal_level = logical cluster")?,
        Cluster::start(Level::Replica)
            .await
            .context("the wal_level = replica cluster")?,
    ];
    let mut variants = Vec::new();
    for (key, level, mode) in VARIANTS {
        let cluster = clusters
            .iter()
            .position(|c| c.level == level)
            .expect("both clusters started");
        let db = variant_db(&clusters[cluster], key, mode).await?;
        variants.push(Variant {
            key,
            mode,
            cluster,
            db,
        });
    }
    let mut scripts = Vec::new();
    for (name, file, table) in TABLES {
        let path = ctx.p.work_dir.join(file);
        std::fs::write(
            &path,
            if name == "own" {
                OWN_SCRIPT
            } else {
                WRITE_SCRIPT
            },
        )?;
        scripts.push((name, path, table));
    }
    println!(
        "\n== wal mode (durable; wal_level = logical, and replica for WAL volume): clients {:?}, {}s x {} runs each, one reactor at a time",
        ctx.p.write_clients, ctx.p.write_secs, ctx.p.write_repeats
    );

    let runner = Run {
        ctx,
        pgbench: &pgbench_bin,
        clusters: &clusters,
    };
    // Per (table, clients, variant): one value per repeat, in repeat order,
    // so the i-th values of two variants were measured in the same repeat.
    let mut tps: BTreeMap<(&str, usize, &str), Vec<f64>> = BTreeMap::new();
    let mut wal_per_insert: BTreeMap<(&str, usize, &str), Vec<f64>> = BTreeMap::new();
    let mut lag: BTreeMap<(&str, usize), Vec<f64>> = BTreeMap::new();
    let mut catch_up: BTreeMap<(&str, usize), Vec<f64>> = BTreeMap::new();
    // One unrecorded second per database and table first, no reactor: the
    // first run of a fresh database pays for cold caches and new files, which
    // would count against whichever variant happens to run first.
    let most = ctx.p.write_clients.iter().copied().max().unwrap_or(1);
    for v in &variants {
        for (_, script, table) in &scripts {
            pgbench(&pgbench_bin, script, &v.db.url, most, 1).await?;
            v.db.client
                .batch_execute(&format!("truncate {table} cascade"))
                .await?;
        }
    }
    for repeat in 1..=ctx.p.write_repeats {
        for &c in &ctx.p.write_clients {
            for (name, script, table) in &scripts {
                // The order rotates with each repeat, so no variant always
                // runs right after the same other one.
                let n = variants.len();
                for i in 0..n {
                    let v = &variants[(i + repeat - 1) % n];
                    let o = runner.one(v, table, script, c, res).await?;
                    let lag_text = match o.lag {
                        Some((bytes, Some(s))) => {
                            format!(
                                ", slot {:.0} kB behind, caught up in {s:.2}s",
                                bytes / 1024.0
                            )
                        }
                        Some((bytes, None)) => {
                            format!(", slot {:.0} kB behind, NOT caught up", bytes / 1024.0)
                        }
                        None => String::new(),
                    };
                    println!(
                        "  run {repeat} c={c} {name} {}: {:.0} tps, {:.0} B WAL/insert{lag_text}",
                        v.key,
                        o.tps,
                        o.wal_per_insert.unwrap_or(f64::NAN)
                    );
                    tps.entry((name, c, v.key)).or_default().push(o.tps);
                    if let Some(w) = o.wal_per_insert {
                        wal_per_insert.entry((name, c, v.key)).or_default().push(w);
                    }
                    if let Some((bytes, secs)) = o.lag {
                        lag.entry((name, c)).or_default().push(bytes);
                        if let Some(s) = secs {
                            catch_up.entry((name, c)).or_default().push(s);
                        }
                    }
                }
            }
        }
    }

    for ((table, c, variant), v) in &tps {
        summarize(res, &format!("wal.{table}.c{c}.{variant}"), v);
        // The ratio to no triggers (logical cluster) of each repeat, whose
        // runs were back to back: the noise of the machine mostly cancels.
        if let Some(base) = tps
            .get(&(*table, *c, "without"))
            .filter(|_| *variant != "without")
        {
            let ratios: Vec<f64> = v.iter().zip(base).map(|(a, b)| a / b).collect();
            summarize(
                res,
                &format!("wal.{table}.c{c}.{variant}.vs_without"),
                &ratios,
            );
        }
    }
    let most = Some(most);
    for ((table, c, variant), v) in &wal_per_insert {
        summarize(
            res,
            &format!("wal.{table}.c{c}.wal_bytes_per_insert.{variant}"),
            v,
        );
        if Some(*c) == most {
            summarize(
                res,
                &format!("wal.{table}.wal_bytes_per_insert.{variant}"),
                v,
            );
        }
    }
    for ((table, c), v) in &lag {
        summarize(res, &format!("wal.{table}.c{c}.slot_lag_bytes"), v);
        if Some(*c) == most {
            summarize(res, &format!("wal.{table}.slot_lag_bytes_after_burst"), v);
        }
    }
    for ((table, c), v) in &catch_up {
        summarize(res, &format!("wal.{table}.c{c}.slot_catch_up_secs"), v);
        if Some(*c) == most {
            summarize(res, &format!("wal.{table}.slot_catch_up_secs"), v);
        }
    }

    live_latency(ctx, &clusters, &variants, res).await?;
    backlog_drains(ctx, &clusters[0], res).await?;
    println!("\n{}", render(res, &ctx.p));

    for v in variants {
        drop(v.db.client);
    }
    drop(clusters);
    Ok(())
}

/// Live latency on the logical cluster, in modes notify, outbox and wal, one
/// reactor at a time, measured as the "latency" workload measures it.
async fn live_latency(
    ctx: &Ctx,
    clusters: &[Cluster],
    variants: &[Variant],
    res: &mut Results,
) -> Result<()> {
    let outbox_ms = humantime::parse_duration(&ctx.p.outbox_poll)
        .context("BENCH_OUTBOX_POLL")?
        .as_millis() as u64;
    println!(
        "\n== wal mode: live latency (durable, wal_level = logical), {} samples per mode",
        ctx.p.samples
    );
    for mode in LATENCY_MODES {
        let v = variants
            .iter()
            .find(|v| v.key == mode)
            .expect("a variant per latency mode");
        let cluster = &clusters[v.cluster];
        let probe = Probe::new(&v.db, ctx.p.samples).await?;
        let mut running = ctx.start(&v.contender(), &v.db, "latency").await?;
        running.ready().await?;
        if v.is_wal() {
            wait_slot(&v.db, &mut running).await?;
        }
        let slots = cluster.slots().await?;
        if slots != i64::from(v.is_wal()) {
            bail!("{slots} slot(s) on the cluster while measuring {mode}'s latency");
        }
        // Outbox polls: a random phase against its ticks. WAL mode's 10 ms
        // polls (if it polls) are covered by the 10-20 ms random gap.
        let phase = if mode == "outbox" {
            outbox_ms.max(1)
        } else {
            0
        };
        let lat = probe
            .sample(&v.db, &mut running, &format!("wal/{mode}"), phase)
            .await?;
        stop(running, v, cluster, res).await?;
        latency::record(res, "wal.lat", mode, &lat);
    }
    Ok(())
}

/// Issue 14: "drains of the existing backlog workloads unchanged". A backlog
/// of profiles written while no reactor runs, drained by one reactor in
/// notify and in wal mode on the (durable, logical) cluster: in both it is the
/// start-up replay, and WAL mode adds only its slot beside it.
async fn backlog_drains(ctx: &Ctx, cluster: &Cluster, res: &mut Results) -> Result<()> {
    let kind = Backlog::Favorites;
    let n = kind.rows(&ctx.p);
    println!("\n== wal mode: backlog drain of {n} profiles, notify and wal mode");
    for mode in ["notify", "wal"] {
        let v = Variant {
            key: mode,
            mode,
            cluster: 0,
            db: variant_db(cluster, &format!("drain_{mode}"), mode).await?,
        };
        kind.fill(&v.db.client, n).await?;
        let (drained, _, running) = drain(ctx, &v.contender(), &v.db, kind, n).await?;
        println!("  {mode}: {drained:.2}s");
        res.set(format!("wal.drain.fav.{mode}"), drained);
        stop(running, &v, cluster, res).await?;
        kind.verify(&v.db.client, n).await?;
    }
    Ok(())
}

/// "median (min–max)" of `key`, formatted with `f`.
fn spread(res: &Results, key: &str, f: impl Fn(f64) -> String) -> String {
    match res.get(key) {
        None => "—".into(),
        Some(m) => match (
            res.get(&format!("{key}.min")),
            res.get(&format!("{key}.max")),
        ) {
            (Some(lo), Some(hi)) if lo != hi => format!("{} ({}–{})", f(m), f(lo), f(hi)),
            _ => f(m),
        },
    }
}

/// The report's section (empty when the workload did not run).
pub(crate) fn render(res: &Results, p: &Params) -> String {
    let tables = [
        ("generation_jobs", "`generation_jobs`"),
        ("own", "own table (`watch_table`)"),
    ];
    let int = |v: f64| format!("{v:.0}");
    let ratio = |v: f64| format!("{v:.3}");
    let mut write = String::new();
    let mut all_met = true;
    let mut any = false;
    for (table, title) in tables {
        for c in &p.write_clients {
            let k = |v: &str| format!("wal.{table}.c{c}.{v}");
            if res.get(&k("wal")).is_none() {
                continue;
            }
            any = true;
            let r = res.get(&k("wal.vs_without"));
            let met = r.map(|r| r >= 0.95);
            all_met &= met.unwrap_or(false);
            write.push_str(&format!(
                "| {title} | {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                spread(res, &k("without"), int),
                spread(res, &k("notify"), int),
                spread(res, &k("outbox"), int),
                spread(res, &k("wal"), int),
                spread(res, &k("notify.vs_without"), ratio),
                spread(res, &k("outbox.vs_without"), ratio),
                spread(res, &k("wal.vs_without"), ratio),
                spread(res, &k(&format!("{FLOOR}.vs_without")), ratio),
                spread(res, &k("replica_without.vs_without"), ratio),
                Report::verdict(met),
            ));
        }
    }
    if !any {
        return String::new();
    }
    let mut volume = String::new();
    for (table, title) in tables {
        for c in &p.write_clients {
            let k = |v: &str| format!("wal.{table}.c{c}.wal_bytes_per_insert.{v}");
            let per = |v: &str| res.get(&k(v));
            let vs = match (per("wal"), per("replica_without")) {
                (Some(w), Some(r)) if r > 0.0 => format!("{:.2}", w / r),
                _ => "—".into(),
            };
            volume.push_str(&format!(
                "| {title} | {c} | {} | {} | {} | {} | {} | {} | {vs} |\n",
                spread(res, &k("replica_without"), int),
                spread(res, &k("replica_notify"), int),
                spread(res, &k("without"), int),
                spread(res, &k("notify"), int),
                spread(res, &k("outbox"), int),
                spread(res, &k("wal"), int),
            ));
        }
    }
    let mut lat = String::new();
    for mode in LATENCY_MODES {
        let k = |q: &str| format!("wal.lat.{q}.{mode}");
        let Some(p99) = res.get(&k("p99")) else {
            continue;
        };
        let ms = |q: &str| {
            res.get(&k(q))
                .map(|v| format!("{v:.1} ms"))
                .unwrap_or_else(|| "—".into())
        };
        let (target, met) = if mode == "wal" {
            ("≤ 20 ms", Report::verdict(Some(p99 <= 20.0)))
        } else {
            ("—", "")
        };
        lat.push_str(&format!(
            "| {mode} | {} | {} | {} | {} | {target} | {met} |\n",
            ms("p50"),
            ms("p90"),
            ms("p99"),
            ms("max"),
        ));
    }
    let mut slot = String::new();
    for (table, title) in tables {
        for c in &p.write_clients {
            let k = |v: &str| format!("wal.{table}.c{c}.{v}");
            if res.get(&k("slot_lag_bytes")).is_none() {
                continue;
            }
            slot.push_str(&format!(
                "| {title} | {c} | {} | {} |\n",
                spread(res, &k("slot_lag_bytes"), |v| format!(
                    "{:.0} kB",
                    v / 1024.0
                )),
                spread(res, &k("slot_catch_up_secs"), |v| format!("{v:.2} s")),
            ));
        }
    }
    let drains = match (
        res.get("wal.drain.fav.notify"),
        res.get("wal.drain.fav.wal"),
    ) {
        (Some(n), Some(w)) => format!("| {n:.2} s | {w:.2} s | {:.2} |\n", w / n),
        _ => "| — | — | — |\n".into(),
    };
    let outbox = if p.outbox_poll.is_empty() {
        String::new()
    } else {
        format!(", outbox polled every {}", p.outbox_poll)
    };
    format!(
        "## WAL mode (issue 14)\n\n\
         Two throwaway clusters of the workload's own, both **durable** (`fsync`, `synchronous_commit` \
         and `full_page_writes` on in postgresql.conf, checked with `SHOW` before measuring): one with \
         `wal_level = logical` (every variant), one with `wal_level = replica` (the same inserts without \
         triggers and with notify, for WAL volume). Single-row inserts as the service with pgbench \
         (`-M prepared`), {secs} s per run, {n} repeats; within each repeat the variants alternate, and \
         **only the measured variant's reactor runs** (started, ready, in WAL mode its slot in use, no \
         other slot on the cluster; stopped and its temporary slot gone before the next run); the \
         order rotates with each repeat, after one unrecorded warm-up run per database. Figures \
         are medians of the repeats with (min–max); ratios are the median of each repeat's ratio to *no \
         triggers* on the logical cluster, whose runs were back to back.\n\n\
         ### Write overhead: inserts/s\n\n\
         | table | writers | no triggers | notify | outbox | wal | notify ÷ none | outbox ÷ none | wal ÷ none \
         | decoding floor ÷ none | replica, no triggers ÷ logical, none | wal ≤ 5 % fewer |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n{write}\n\
         *Decoding floor*: the database in WAL mode with no reactor, and PostgreSQL's own `pg_recvlogical` \
         streaming the same publication to /dev/null: what any logical-decoding consumer costs the \
         writers on this machine, the server's decoding alone.\n\n\
         - WAL mode within 5 % of no triggers at every writer count, both tables: {all}\n\n\
         ### WAL written per insert (bytes, from `pg_current_wal_lsn()` before and after each run)\n\n\
         | table | writers | replica: no triggers | replica: notify | logical: no triggers | logical: notify \
         | logical: outbox | logical: wal | wal ÷ replica, no triggers |\n\
         |---|---|---|---|---|---|---|---|---|\n{volume}\n\
         ### Live latency, insert commit → collection visible ({samples} samples per mode, durable, logical cluster{outbox})\n\n\
         | mode | p50 | p90 | p99 | max | target | met |\n|---|---|---|---|---|---|---|\n{lat}\n\
         ### The slot after each burst\n\n\
         Bytes of WAL between the server's position and the slot's `confirmed_flush_lsn`, read in the \
         statement right after pgbench ended, and the time until the slot confirmed that position.\n\n\
         | table | writers | lag at the end of the burst | caught up after |\n|---|---|---|---|\n{slot}\n\
         ### Backlog drain (the start-up replay), {fav} profiles written while no reactor ran\n\n\
         | notify mode | wal mode | wal ÷ notify |\n|---|---|---|\n{drains}\n",
        secs = p.write_secs,
        n = p.write_repeats,
        all = Report::verdict(Some(all_met)),
        samples = p.samples,
        fav = p.fav_rows,
    )
}
