//! One measured pgbench run of one variant: throughput, WAL written per
//! insert, and (WAL mode) the slot's lag at the end of the burst.
use super::clusters::{start_decoding_floor, stop, wait_slot, Cluster, Variant};
use super::CATCH_UP_LIMIT;
use crate::cluster::{Ctx, Db};
use crate::contenders::Running;
use crate::measure::{cpu_ticks, pgbench, TICKS_PER_SEC};
use crate::report::Results;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// One pgbench run of one variant.
pub(super) struct Outcome {
    pub(super) tps: f64,
    /// None when no row was written.
    pub(super) wal_per_insert: Option<f64>,
    /// WAL-mode only: bytes between the server's position and the slot's
    /// confirmed position at the end of the burst, and the seconds until
    /// the slot confirmed the burst's end (None: not within the limit).
    pub(super) lag: Option<(f64, Option<f64>)>,
    /// Variants that decode: CPU time (µs) per insert of the consumer (the
    /// reactor or pg_recvlogical) and of the server sessions serving it.
    pub(super) consumer_cpu_us: Option<f64>,
}

/// CPU ticks so far of the consumer (`running`'s process) and of the
/// server processes serving it: its walsender and, for a reactor, every
/// session it opened. Needs the server on this host (the workload's
/// clusters are).
async fn consumer_ticks(db: &Db, running: &Running) -> Result<HashMap<u32, u64>> {
    let rows = db
        .client
        .query(
            "select pid from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid()
               and (backend_type = 'walsender' or application_name like 'reactor%')",
            &[],
        )
        .await?;
    let pids = rows
        .iter()
        .map(|r| r.get::<_, i32>(0) as u32)
        .chain(running.pid());
    Ok(pids.filter_map(|p| Some((p, cpu_ticks(p)?))).collect())
}

/// CPU seconds between two [`consumer_ticks`] (a process that appeared in
/// between counts from zero).
fn cpu_secs_between(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> f64 {
    let ticks: u64 = after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks as f64 / TICKS_PER_SEC
}

pub(super) struct Run<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) pgbench: &'a Path,
    pub(super) clusters: &'a [Cluster],
}

impl Run<'_> {
    pub(super) async fn one(
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
        let cpu_before = consumer_ticks(db, &running).await?;
        let tps = pgbench(self.pgbench, script, &db.url, c, self.ctx.p.write_secs).await?;
        let cpu_secs = cpu_secs_between(&cpu_before, &consumer_ticks(db, &running).await?);
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
            consumer_cpu_us: (v.decodes() && rows > 0).then(|| cpu_secs * 1e6 / rows as f64),
        })
    }
}
