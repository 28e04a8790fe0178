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
use crate::cluster::Ctx;
use crate::latency::{self, Probe};
use crate::measure::{find_pgbench, median, pgbench};
use crate::report::Results;
use crate::write::WRITE_SCRIPT;
use anyhow::{bail, Context as _, Result};
use clusters::{stop, variant_db, wait_slot, Cluster, Level, Variant};
use runs::Run;
use std::collections::BTreeMap;
use std::time::Duration;

mod clusters;
mod render;
mod runs;

pub(crate) use render::render;

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
    let mut consumer_cpu: BTreeMap<(&str, usize, &str), Vec<f64>> = BTreeMap::new();
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
                    let cpu_text = o
                        .consumer_cpu_us
                        .map(|us| format!(", consumer CPU {us:.1} µs/insert"))
                        .unwrap_or_default();
                    println!(
                        "  run {repeat} c={c} {name} {}: {:.0} tps, {:.0} B WAL/insert{lag_text}{cpu_text}",
                        v.key,
                        o.tps,
                        o.wal_per_insert.unwrap_or(f64::NAN)
                    );
                    tps.entry((name, c, v.key)).or_default().push(o.tps);
                    if let Some(us) = o.consumer_cpu_us {
                        consumer_cpu.entry((name, c, v.key)).or_default().push(us);
                    }
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
    for ((table, c, variant), v) in &consumer_cpu {
        summarize(res, &format!("wal.{table}.c{c}.{variant}.cpu_us"), v);
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
