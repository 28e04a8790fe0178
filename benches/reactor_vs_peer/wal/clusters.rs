//! The workload's two durable clusters, one database per variant, and the
//! start and stop of what runs during a variant's measurement (a reactor,
//! or pg_recvlogical for the decoding floor), with the slot checks between.
use super::{FLOOR, FLOOR_SLOT, OWN_TABLE, SLOT_WAIT};
use crate::cluster::{with_dbname, Ctx, Db};
use crate::contenders::{Contender, Running};
use crate::measure::find_pgbench;
use crate::report::Results;
use anyhow::{bail, Context as _, Result};
use reactor::sandbox::cluster::{LocalPostgres, Options};
use reactor::store::notify_mode::{self, Mode};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Logical,
    Replica,
}

impl Level {
    pub(super) fn wal_level(self) -> &'static str {
        match self {
            Level::Logical => "logical",
            Level::Replica => "replica",
        }
    }
}

/// A throwaway cluster of this workload, durable as in production.
pub(super) struct Cluster {
    pub(super) level: Level,
    pub(super) server: String,
    pub(super) admin: Client,
    pub(super) _pg: LocalPostgres,
}

impl Cluster {
    pub(super) async fn start(level: Level) -> Result<Cluster> {
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
    pub(super) async fn slots(&self) -> Result<i64> {
        Ok(self
            .admin
            .query_one("select count(*) from pg_replication_slots", &[])
            .await?
            .get(0))
    }
}

/// One database per variant, migrated, with the watched table.
pub(super) struct Variant {
    pub(super) key: &'static str,
    pub(super) mode: &'static str,
    pub(super) cluster: usize,
    pub(super) db: Db,
}

impl Variant {
    pub(super) fn contender(&self) -> Contender {
        if self.mode == "outbox" {
            Contender::ReactorOutbox
        } else {
            Contender::Reactor
        }
    }

    /// The reactor in WAL mode.
    pub(super) fn is_wal(&self) -> bool {
        self.mode == "wal" && !self.is_floor()
    }

    /// pg_recvlogical instead of a reactor.
    pub(super) fn is_floor(&self) -> bool {
        self.key == FLOOR
    }

    /// A slot decodes during this variant's runs.
    pub(super) fn decodes(&self) -> bool {
        self.mode == "wal"
    }
}

/// A migrated database with the watched table, switched to `mode`.
pub(super) async fn variant_db(cluster: &Cluster, key: &str, mode: &str) -> Result<Db> {
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
pub(super) async fn reactor_slot(c: &Client) -> Result<Option<(String, bool)>> {
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
pub(super) async fn wait_slot(db: &Db, running: &mut Running) -> Result<()> {
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
pub(super) async fn stop(
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
pub(super) async fn start_decoding_floor(ctx: &Ctx, db: &Db, label: &str) -> Result<Running> {
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
    Ok(Running::without_http(child, path))
}

/// Drops [`FLOOR_SLOT`] once pg_recvlogical's session has let it go (its
/// slot is not temporary).
pub(super) async fn drop_floor_slot(db: &Db) -> Result<()> {
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
