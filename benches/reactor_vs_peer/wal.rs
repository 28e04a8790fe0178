//! The "wal" workload (issue 14): write overhead of WAL mode beside notify,
//! outbox and no triggers, in the same run, for `generation_jobs` and for a
//! table of one's own watched with `reactor.watch_table`; the WAL written per
//! insert; and the slot's lag after a burst of the most writers. It runs on a
//! cluster of its own started with `wal_level = logical` (the mode needs it;
//! every variant pays the same logical WAL), with a reactor on each database
//! as in production (in WAL mode it holds a temporary slot and polls it).
use crate::cluster::{with_dbname, Ctx, Db};
use crate::contenders::Contender;
use crate::measure::{find_pgbench, median, pgbench};
use crate::report::Results;
use crate::write::WRITE_SCRIPT;
use anyhow::Result;
use reactor::store::localpg::{LocalPostgres, Options};
use reactor::store::notify_mode::{self, Mode};
use std::collections::BTreeMap;
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

const VARIANTS: [&str; 4] = ["without", "notify", "outbox", "wal"];

/// A migrated database with the watched table, switched to `variant`.
async fn variant_db(server: &str, variant: &str) -> Result<Db> {
    let admin = reactor::store::db::connect(server).await?;
    let name = format!("bench_wal_{variant}");
    // One statement per call: DROP DATABASE refuses a transaction block.
    admin
        .batch_execute(&format!("drop database if exists {name} with (force)"))
        .await?;
    admin
        .batch_execute(&format!("create database {name}"))
        .await?;
    let url = with_dbname(server, &name)?;
    let mut client = reactor::store::db::connect(&url).await?;
    reactor::store::migrate::run(&mut client).await?;
    client.batch_execute(OWN_TABLE).await?;
    match variant {
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

async fn wal_lsn(c: &Client) -> Result<String> {
    Ok(c.query_one("select pg_current_wal_lsn()::text", &[])
        .await?
        .get(0))
}

async fn wal_since(c: &Client, lsn: &str) -> Result<f64> {
    Ok(c.query_one(
        "select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
        &[&lsn],
    )
    .await?
    .get(0))
}

/// Bytes of WAL between the server's position and the reactor slot's
/// confirmed position (None without a slot).
async fn slot_lag(c: &Client) -> Result<Option<f64>> {
    Ok(c.query_opt(
        "select pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8
         from pg_replication_slots where slot_name like 'reactor_wal_%' and database = current_database()",
        &[],
    )
    .await?
    .and_then(|r| r.get(0)))
}

pub(crate) async fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let Some(pgbench_bin) = find_pgbench() else {
        println!("\n== wal mode: skipped (pgbench not found)");
        return Ok(());
    };
    let pg = LocalPostgres::start_with(&Options {
        settings: vec![
            ("wal_level".into(), "logical".into()),
            ("max_replication_slots".into(), "10".into()),
        ],
        files: vec![],
    })
    .await?;
    let server = pg.url("postgres");
    let jobs_script = ctx.p.work_dir.join("wal_insert_job.sql");
    std::fs::write(&jobs_script, WRITE_SCRIPT)?;
    let own_script = ctx.p.work_dir.join("wal_insert_own.sql");
    std::fs::write(&own_script, OWN_SCRIPT)?;
    println!(
        "\n== wal mode (wal_level = logical): clients {:?}, {}s x {} runs each",
        ctx.p.write_clients, ctx.p.write_secs, ctx.p.write_repeats
    );

    let mut dbs = Vec::new();
    let mut reactors = Vec::new();
    for variant in VARIANTS {
        let db = variant_db(&server, variant).await?;
        let who = if variant == "outbox" {
            Contender::ReactorOutbox
        } else {
            Contender::Reactor
        };
        let mut r = ctx.start(&who, &db, "wal").await?;
        r.ready().await?;
        reactors.push(r);
        dbs.push(db);
    }

    let mut tps: BTreeMap<(&str, usize, &str), Vec<f64>> = BTreeMap::new();
    let mut wal_per_insert: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for _ in 0..ctx.p.write_repeats {
        for &c in &ctx.p.write_clients {
            for (table, script, truncate) in [
                ("generation_jobs", &jobs_script, "public.generation_jobs"),
                ("own", &own_script, "public.bench_jobs"),
            ] {
                for (variant, db) in VARIANTS.iter().zip(&dbs) {
                    db.client
                        .batch_execute(&format!("truncate {truncate} cascade"))
                        .await?;
                    db.client.batch_execute("checkpoint").await?;
                    let before = wal_lsn(&db.client).await?;
                    let t = pgbench(&pgbench_bin, script, &db.url, c, ctx.p.write_secs).await?;
                    let bytes = wal_since(&db.client, &before).await?;
                    let rows: i64 = db
                        .client
                        .query_one(&format!("select count(*) from {truncate}"), &[])
                        .await?
                        .get(0);
                    println!("  c={c} {table} {variant}: {t:.0} tps");
                    tps.entry((table, c, variant)).or_default().push(t);
                    if rows > 0 {
                        wal_per_insert
                            .entry((table, variant))
                            .or_default()
                            .push(bytes / rows as f64);
                    }
                    if *variant == "wal" && c == *ctx.p.write_clients.iter().max().unwrap_or(&c) {
                        if let Some(lag) = slot_lag(&db.client).await? {
                            res.set(format!("wal.{table}.slot_lag_bytes_after_burst"), lag);
                            let caught_up = Instant::now();
                            while slot_lag(&db.client).await?.unwrap_or(0.0) > 0.0
                                && caught_up.elapsed() < Duration::from_secs(30)
                            {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            res.set(
                                format!("wal.{table}.slot_catch_up_secs"),
                                caught_up.elapsed().as_secs_f64(),
                            );
                        }
                    }
                }
            }
        }
    }
    for r in &mut reactors {
        r.check_alive()?;
    }
    for r in reactors {
        r.stop().await?;
    }

    println!("\n| table | writers | no triggers | notify | outbox | wal | wal vs none |");
    println!("|---|---|---|---|---|---|---|");
    let mut medians = BTreeMap::new();
    for ((table, c, variant), v) in tps {
        let m = median(v);
        res.set(format!("wal.{table}.c{c}.{variant}"), m);
        medians.insert((table, c, variant), m);
    }
    for table in ["generation_jobs", "own"] {
        for &c in &ctx.p.write_clients {
            let get = |v: &str| medians.get(&(table, c, v)).copied().unwrap_or(f64::NAN);
            println!(
                "| {table} | {c} | {:.0} | {:.0} | {:.0} | {:.0} | {:+.1}% |",
                get("without"),
                get("notify"),
                get("outbox"),
                get("wal"),
                (get("wal") / get("without") - 1.0) * 100.0
            );
        }
    }
    for ((table, variant), v) in wal_per_insert {
        res.set(
            format!("wal.{table}.wal_bytes_per_insert.{variant}"),
            median(v),
        );
    }
    for db in dbs {
        drop(db.client);
    }
    drop(pg);
    Ok(())
}
