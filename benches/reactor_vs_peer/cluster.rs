//! The server every contender runs on: the migrated templates, and a fresh
//! database cloned from one of them for every run of a contender.
use crate::cli::Params;
use crate::contenders::Contender;
use anyhow::{bail, Context as _, Result};
use std::path::PathBuf;
use tokio::process::Command;
use tokio_postgres::Client;

/// The server every contender runs on, and the templates fresh databases are cloned from.
pub(crate) struct Ctx {
    pub(crate) p: Params,
    pub(crate) server_url: String,
    pub(crate) admin: Client,
    pub(crate) seq: std::sync::atomic::AtomicUsize,
    pub(crate) log_dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Template {
    /// Migrated: the reactor's schema with its notify triggers.
    Reactor,
    /// Migrated, the reactor's notify triggers dropped (the floor, "without").
    Plain,
    /// Plain plus graphile-worker's schema and its add_job triggers.
    Peer,
}

impl Template {
    pub(crate) fn db(self) -> &'static str {
        match self {
            Template::Reactor => "bench_t_reactor",
            Template::Plain => "bench_t_plain",
            Template::Peer => "bench_t_peer",
        }
    }
}

pub(crate) struct Db {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) client: Client,
}

pub(crate) fn with_dbname(url: &str, name: &str) -> Result<String> {
    let mut parsed = url::Url::parse(url).context("the server URL must be postgres://…")?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}

/// Makes `created_at` of the effect rows the moment each row is written (not
/// its transaction's start), so a drain's end is read from the rows
/// themselves. The same for every contender.
pub(crate) const BENCH_TWEAKS: &str = "
alter table public.collections alter column created_at set default clock_timestamp();
alter table public.usage_ledger alter column created_at set default clock_timestamp();";

/// Drops every trigger that calls a `reactor.notify*` function; returns their names.
pub(crate) const DROP_NOTIFY_TRIGGERS: &str = "
do $$
declare r record;
begin
  for r in
    select t.tgname, t.tgrelid::regclass as tbl
    from pg_trigger t join pg_proc p on p.oid = t.tgfoid
    join pg_namespace n on n.oid = p.pronamespace
    where not t.tgisinternal and n.nspname = 'reactor' and p.proname like 'notify%'
  loop
    execute format('drop trigger %I on %s', r.tgname, r.tbl);
    raise notice 'dropped %', r.tgname || ' on ' || r.tbl;
  end loop;
end $$;";

/// The peer's construction, as issue 7 describes it: a trigger enqueues one
/// job per row with `graphile_worker.add_job`, the task does the insert.
pub(crate) const PEER_TRIGGERS: &str = "
create or replace function public.bench_gw_favorites() returns trigger language plpgsql as $$
begin
  perform graphile_worker.add_job('favorites', json_build_object('id', new.id));
  return null;
end $$;
create trigger bench_gw_favorites after insert on public.profiles
  for each row execute function public.bench_gw_favorites();
create or replace function public.bench_gw_usage() returns trigger language plpgsql as $$
begin
  perform graphile_worker.add_job('usage', json_build_object('id', new.id));
  return null;
end $$;
create trigger bench_gw_usage_insert after insert on public.generation_jobs
  for each row when (new.status = 'succeeded') execute function public.bench_gw_usage();
create trigger bench_gw_usage_status after update of status on public.generation_jobs
  for each row when (new.status = 'succeeded' and old.status is distinct from new.status)
  execute function public.bench_gw_usage();";

impl Ctx {
    pub(crate) async fn connect(&self, url: &str) -> Result<Client> {
        Ok(reactor::store::db::connect(url).await?)
    }

    pub(crate) async fn create_templates(&self, with_peer: bool) -> Result<()> {
        for t in [Template::Reactor, Template::Plain, Template::Peer] {
            self.admin
                .batch_execute(&format!("drop database if exists {} with (force)", t.db()))
                .await?;
        }
        self.admin
            .batch_execute(&format!("create database {}", Template::Reactor.db()))
            .await?;
        let url = with_dbname(&self.server_url, Template::Reactor.db())?;
        {
            let mut c = self.connect(&url).await?;
            reactor::store::migrate::run(&mut c)
                .await
                .context("migrate")?;
            c.batch_execute(BENCH_TWEAKS).await?;
        }
        self.admin
            .batch_execute(&format!(
                "create database {} template {}",
                Template::Plain.db(),
                Template::Reactor.db()
            ))
            .await?;
        let url = with_dbname(&self.server_url, Template::Plain.db())?;
        {
            let c = self.connect(&url).await?;
            c.batch_execute(DROP_NOTIFY_TRIGGERS).await?;
            let left: i64 = c
                .query_one(
                    "select count(*) from pg_trigger t join pg_proc p on p.oid = t.tgfoid
                     where p.proname like 'notify%' and not t.tgisinternal",
                    &[],
                )
                .await?
                .get(0);
            if left != 0 {
                bail!("notify triggers remain in the plain template");
            }
        }
        if with_peer {
            self.admin
                .batch_execute(&format!(
                    "create database {} template {}",
                    Template::Peer.db(),
                    Template::Plain.db()
                ))
                .await?;
            let url = with_dbname(&self.server_url, Template::Peer.db())?;
            let dir = self.p.peer_dir.as_ref().expect("peer enabled");
            let status = Command::new("node")
                .arg(dir.join("runner.mjs"))
                .args(["migrate", "default", &url])
                .current_dir(dir)
                .status()
                .await
                .context("running node (is node installed?)")?;
            if !status.success() {
                bail!("the peer's migrations failed ({status})");
            }
            let c = self.connect(&url).await?;
            c.batch_execute(PEER_TRIGGERS).await?;
        }
        Ok(())
    }

    /// A fresh database cloned from `template`.
    pub(crate) async fn fresh_db(&self, label: &str, template: Template) -> Result<Db> {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("bench_{n:02}_{label}");
        self.admin
            .batch_execute(&format!("drop database if exists {name} with (force)"))
            .await?;
        self.admin
            .batch_execute(&format!(
                "create database {name} template {}",
                template.db()
            ))
            .await?;
        let url = with_dbname(&self.server_url, &name)?;
        let client = self.connect(&url).await?;
        Ok(Db { name, url, client })
    }

    /// A fresh database for `who`; in outbox mode the database is switched
    /// to it before any session (the bench's own included) opens.
    pub(crate) async fn fresh_for(&self, label: &str, who: &Contender) -> Result<Db> {
        let mut db = self.fresh_db(label, who.template()).await?;
        if *who == Contender::ReactorOutbox {
            self.admin
                .batch_execute(&format!(
                    "alter database {} set reactor.notify_mode = 'outbox'",
                    db.name
                ))
                .await?;
            db.client = self.connect(&db.url).await?;
        }
        Ok(db)
    }

    pub(crate) async fn done_with(&self, db: Db) -> Result<()> {
        drop(db.client);
        if !self.p.keep_dbs {
            self.admin
                .batch_execute(&format!("drop database if exists {} with (force)", db.name))
                .await?;
        }
        Ok(())
    }

    /// Switches fsync, synchronous_commit and full_page_writes on (as in
    /// production), or back to the throwaway cluster's settings; with
    /// `--durable` the run stays durable throughout.
    pub(crate) async fn set_durable(&self, on: bool) -> Result<()> {
        let on = on || self.p.durable;
        // One statement per call: ALTER SYSTEM refuses a transaction block.
        for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
            let sql = if on {
                format!("alter system set {setting} = on")
            } else {
                format!("alter system reset {setting}")
            };
            self.admin.batch_execute(&sql).await?;
        }
        self.admin.batch_execute("select pg_reload_conf()").await?;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // A setting given on the server's command line wins over ALTER SYSTEM:
        // a "durable" figure must never be measured with fsync off.
        let fsync: String = self.admin.query_one("show fsync", &[]).await?.get(0);
        if (fsync == "on") != on {
            anyhow::bail!(
                "fsync is {fsync} after ALTER SYSTEM (is it set on the server's command line?)"
            );
        }
        Ok(())
    }

    pub(crate) fn log_file(&self, name: &str) -> Result<(std::fs::File, PathBuf)> {
        let path = self.log_dir.join(format!("{name}.log"));
        Ok((std::fs::File::create(&path)?, path))
    }
}
