//! Issue 7's benchmark: the reactor against graphile-worker (the peer) and the
//! set-based floor, side by side, on one throwaway PostgreSQL, in one run.
//!
//! `bench/run.sh` is the one command (it builds the reactor in release,
//! installs the peer into a scratch folder and passes that folder in
//! `BENCH_PEER_DIR`). Every parameter is an environment variable `BENCH_*` or
//! the flag of the same name (`BENCH_FAV_ROWS=2000` or `--fav-rows 2000`):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_CI` / `--ci` | off | small run that only proves the harness works |
//! | `BENCH_FAV_ROWS` | 100000 | profiles in the favorites backlog |
//! | `BENCH_USAGE_ROWS` | 50000 | succeeded jobs in the usage backlog (and the history workload's insert-rate rows) |
//! | `BENCH_HISTORY_ROWS` | 10000,100000,1000000 | handled rows of each history database (issue 12) |
//! | `BENCH_SAMPLES` | 1000 | live-latency samples per contender |
//! | `BENCH_WRITE_CLIENTS` | 1,8,32 | concurrent writers for the trigger overhead |
//! | `BENCH_WRITE_SECS` | 6 | seconds per pgbench run |
//! | `BENCH_WRITE_REPEATS` | 3 | pgbench runs per point (the median counts) |
//! | `BENCH_WRITE_DURABLE` | 1 | also measure with fsync and synchronous_commit on |
//! | `BENCH_WORKLOADS` | favorites,usage,latency,write,history | which workloads run (add `wal` for WAL mode, issue 14) |
//! | `BENCH_PEER_DIR` | (none: no peer) | folder holding the peer's `runner.mjs` |
//! | `BENCH_PEER` | default,batched | which peer configurations run (`none`: skip) |
//! | `BENCH_MERGE` | (none) | an earlier results JSON whose figures fill what this run lacks |
//! | `BENCH_REACTOR_BIN` | target/release/reactor | the reactor binary |
//! | `BENCH_REACTOR_ARGS` | (none) | extra flags for `reactor run`, e.g. `--batch-size 2000` |
//! | `BENCH_POLL_INTERVAL` | 100ms | poll interval of the poll-only latency variant |
//! | `BENCH_OUTBOX_POLL` | 50ms | `--outbox-poll` of the outbox-mode variants |
//! | `BENCH_REACTOR_LOG` | info | RUST_LOG of the reactor child (`reactor=debug` for timings) |
//! | `BENCH_OUT` | BENCHMARKS.md (CI: target/bench/BENCHMARKS-ci.md) | the markdown table |
//! | `BENCH_JSON` | target/bench/results.json | every figure, for merging |
//! | `BENCH_DATABASE_URL` | (none: throwaway cluster) | use this server instead |
//! | `BENCH_NOTE` | (none) | lines added to the report's notes |
//! | `BENCH_KEEP_DBS` | off | keep each workload's database (for EXPLAIN afterwards) |
//!
//! No timing is asserted anywhere: the run fails only when a contender does
//! not do the work (a row missing or doubled), never because it was slow.
use anyhow::{anyhow, bail, Context as _, Result};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio_postgres::{AsyncMessage, Client, NoTls};

#[path = "reactor_vs_peer/history.rs"]
mod history;
#[path = "reactor_vs_peer/wal.rs"]
mod wal;

/// How long a drain may take before the run gives up on a contender.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a drain checks whether the work is done (the figure itself comes
/// from the rows' own timestamps, so this only bounds detection).
const DRAIN_POLL: Duration = Duration::from_millis(200);
/// Samples thrown away before live latency is recorded (also proves readiness).
const LATENCY_WARMUP: usize = 20;

// ---------------------------------------------------------------- parameters

struct Params {
    ci: bool,
    fav_rows: i64,
    usage_rows: i64,
    history_rows: Vec<i64>,
    samples: usize,
    write_clients: Vec<usize>,
    write_secs: u64,
    write_repeats: usize,
    write_durable: bool,
    workloads: Vec<String>,
    peer_dir: Option<PathBuf>,
    peer_modes: Vec<String>,
    merge: Option<PathBuf>,
    reactor_bin: PathBuf,
    reactor_args: Vec<String>,
    reactor_log: String,
    poll_interval: String,
    outbox_poll: String,
    out: PathBuf,
    json: PathBuf,
    database_url: Option<String>,
    keep_dbs: bool,
    work_dir: PathBuf,
}

impl Params {
    fn parse() -> Result<Self> {
        let mut flags: HashMap<String, String> = HashMap::new();
        let mut args = std::env::args().skip(1).peekable();
        while let Some(arg) = args.next() {
            // `cargo bench` appends `--bench`; a harness-less target ignores it.
            let Some(name) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?} (flags look like --fav-rows 2000)");
            };
            if name == "bench" {
                continue;
            }
            if let Some((k, v)) = name.split_once('=') {
                flags.insert(k.to_string(), v.to_string());
            } else if name == "ci" || name == "keep-dbs" {
                flags.insert(name.to_string(), "1".into());
            } else {
                let v = args
                    .next()
                    .ok_or_else(|| anyhow!("--{name} needs a value"))?;
                flags.insert(name.to_string(), v);
            }
        }
        let get = |flag: &str| -> Option<String> {
            let env = format!("BENCH_{}", flag.to_uppercase().replace('-', "_"));
            flags
                .get(flag)
                .cloned()
                .or_else(|| std::env::var(env).ok())
                .filter(|v| !v.is_empty())
        };
        let truthy = |v: Option<String>| matches!(v.as_deref(), Some("1" | "true" | "yes"));
        let ci = truthy(get("ci"));
        let pick = |flag: &str, full: &str, small: &str| {
            get(flag).unwrap_or_else(|| if ci { small } else { full }.to_string())
        };
        let list = |s: String| -> Vec<String> {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty() && x != "none")
                .collect()
        };
        let work_dir = PathBuf::from("target/bench");
        Ok(Params {
            ci,
            fav_rows: pick("fav-rows", "100000", "2000").parse()?,
            usage_rows: pick("usage-rows", "50000", "2000").parse()?,
            history_rows: list(pick("history-rows", "10000,100000,1000000", "1000,5000"))
                .iter()
                .map(|n| n.parse())
                .collect::<Result<_, _>>()?,
            samples: pick("samples", "1000", "20").parse()?,
            write_clients: list(pick("write-clients", "1,8,32", "1,8"))
                .iter()
                .map(|c| c.parse())
                .collect::<Result<_, _>>()?,
            write_secs: pick("write-secs", "6", "1").parse()?,
            write_repeats: pick("write-repeats", "3", "1").parse()?,
            write_durable: truthy(Some(pick("write-durable", "1", "0"))),
            workloads: list(pick(
                "workloads",
                "favorites,usage,latency,write,history",
                "favorites,usage,latency,write,history",
            )),
            peer_dir: get("peer-dir").map(PathBuf::from),
            peer_modes: list(pick("peer", "default,batched", "default,batched")),
            merge: get("merge").map(PathBuf::from),
            reactor_bin: PathBuf::from(pick(
                "reactor-bin",
                "target/release/reactor",
                "target/release/reactor",
            )),
            reactor_args: get("reactor-args")
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            reactor_log: pick("reactor-log", "info", "info"),
            poll_interval: pick("poll-interval", "100ms", "100ms"),
            outbox_poll: pick("outbox-poll", "50ms", "50ms"),
            out: PathBuf::from(pick(
                "out",
                "BENCHMARKS.md",
                "target/bench/BENCHMARKS-ci.md",
            )),
            json: PathBuf::from(pick(
                "json",
                "target/bench/results.json",
                "target/bench/results-ci.json",
            )),
            database_url: get("database-url"),
            keep_dbs: truthy(get("keep-dbs")),
            work_dir,
        })
    }

    fn runs(&self, workload: &str) -> bool {
        self.workloads.iter().any(|w| w == workload)
    }

    fn peers(&self) -> Vec<String> {
        if self.peer_dir.is_some() {
            self.peer_modes.clone()
        } else {
            Vec::new()
        }
    }
}

// ---------------------------------------------------------------- results

/// Every figure of a run, by key (e.g. `fav.drain.reactor` in seconds).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Results {
    metrics: BTreeMap<String, f64>,
    /// Keys taken from `BENCH_MERGE` rather than measured in this run.
    #[serde(default)]
    merged: Vec<String>,
    #[serde(default)]
    machine: BTreeMap<String, String>,
    #[serde(default)]
    notes: Vec<String>,
}

impl Results {
    fn set(&mut self, key: impl Into<String>, value: f64) {
        let key = key.into();
        println!("  {key} = {value:.4}");
        self.metrics.insert(key, value);
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).copied()
    }
}

// ---------------------------------------------------------------- databases

/// The server every contender runs on, and the templates fresh databases are cloned from.
struct Ctx {
    p: Params,
    server_url: String,
    admin: Client,
    seq: std::sync::atomic::AtomicUsize,
    log_dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Template {
    /// Migrated: the reactor's schema with its notify triggers.
    Reactor,
    /// Migrated, the reactor's notify triggers dropped (the floor, "without").
    Plain,
    /// Plain plus graphile-worker's schema and its add_job triggers.
    Peer,
}

impl Template {
    fn db(self) -> &'static str {
        match self {
            Template::Reactor => "bench_t_reactor",
            Template::Plain => "bench_t_plain",
            Template::Peer => "bench_t_peer",
        }
    }
}

struct Db {
    name: String,
    url: String,
    client: Client,
}

fn with_dbname(url: &str, name: &str) -> Result<String> {
    let mut parsed = url::Url::parse(url).context("the server URL must be postgres://…")?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}

/// Makes `created_at` of the effect rows the moment each row is written (not
/// its transaction's start), so a drain's end is read from the rows
/// themselves. The same for every contender.
const BENCH_TWEAKS: &str = "
alter table public.collections alter column created_at set default clock_timestamp();
alter table public.usage_ledger alter column created_at set default clock_timestamp();";

/// Drops every trigger that calls a `reactor.notify*` function; returns their names.
const DROP_NOTIFY_TRIGGERS: &str = "
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
const PEER_TRIGGERS: &str = "
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

/// Live latency only: a notification when a collection row commits, so the
/// bench sees "row visible" without polling. The same for every contender.
const DONE_TRIGGER: &str = "
create or replace function public.bench_done() returns trigger language plpgsql as $$
begin
  perform pg_notify('bench_done', new.owner_id::text);
  return null;
end $$;
create trigger bench_done after insert on public.collections
  for each row execute function public.bench_done();";

impl Ctx {
    async fn connect(&self, url: &str) -> Result<Client> {
        Ok(reactor::store::db::connect(url).await?)
    }

    async fn create_templates(&self, with_peer: bool) -> Result<()> {
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
    async fn fresh_db(&self, label: &str, template: Template) -> Result<Db> {
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
    async fn fresh_for(&self, label: &str, who: &Contender) -> Result<Db> {
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

    async fn done_with(&self, db: Db) -> Result<()> {
        drop(db.client);
        if !self.p.keep_dbs {
            self.admin
                .batch_execute(&format!("drop database if exists {} with (force)", db.name))
                .await?;
        }
        Ok(())
    }

    fn log_file(&self, name: &str) -> Result<(std::fs::File, PathBuf)> {
        let path = self.log_dir.join(format!("{name}.log"));
        Ok((std::fs::File::create(&path)?, path))
    }
}

// ---------------------------------------------------------------- contenders

#[derive(Clone, Debug, PartialEq, Eq)]
enum Contender {
    Reactor,
    /// The reactor with `--listen false` on a database without notify
    /// triggers: the mode that avoids NOTIFY, at the cost of polling.
    ReactorPoll,
    /// The reactor in outbox mode (`reactor.notify_mode = 'outbox'` on the
    /// database, `--outbox-poll`): hints go through an unlogged table.
    ReactorOutbox,
    Peer(String),
}

impl Contender {
    fn key(&self) -> String {
        match self {
            Contender::Reactor => "reactor".into(),
            Contender::ReactorPoll => "reactor_poll".into(),
            Contender::ReactorOutbox => "reactor_outbox".into(),
            Contender::Peer(mode) => format!("gw_{mode}"),
        }
    }

    fn template(&self) -> Template {
        match self {
            Contender::Reactor => Template::Reactor,
            Contender::ReactorPoll => Template::Plain,
            Contender::ReactorOutbox => Template::Reactor,
            Contender::Peer(_) => Template::Peer,
        }
    }
}

/// A contender running as a child process.
struct Running {
    child: Child,
    log: PathBuf,
    http_port: Option<u16>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Ctx {
    async fn start(&self, who: &Contender, db: &Db, label: &str) -> Result<Running> {
        let (log, log_path) = self.log_file(&format!("{}_{}", db.name, label))?;
        let err = log.try_clone()?;
        match who {
            Contender::Reactor | Contender::ReactorPoll | Contender::ReactorOutbox => {
                let port = free_port()?;
                let poll: Vec<String> = if *who == Contender::ReactorPoll {
                    vec![
                        "--listen".into(),
                        "false".into(),
                        "--poll-interval".into(),
                        self.p.poll_interval.clone(),
                    ]
                } else if *who == Contender::ReactorOutbox {
                    vec!["--outbox-poll".into(), self.p.outbox_poll.clone()]
                } else {
                    Vec::new()
                };
                let storage = self.p.work_dir.join("storage");
                let child = Command::new(&self.p.reactor_bin)
                    .arg("run")
                    .args(["--database-url", &db.url, "--provider", "local"])
                    .args(["--http-addr", &format!("127.0.0.1:{port}")])
                    .arg("--storage-url")
                    .arg(&storage)
                    .args(&poll)
                    .args(&self.p.reactor_args)
                    .env("RUST_LOG", &self.p.reactor_log)
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(err)
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| {
                        format!(
                            "starting {} (build it: cargo build --release)",
                            self.p.reactor_bin.display()
                        )
                    })?;
                Ok(Running {
                    child,
                    log: log_path,
                    http_port: Some(port),
                })
            }
            Contender::Peer(mode) => {
                let dir = self.p.peer_dir.as_ref().expect("peer enabled");
                let child = Command::new("node")
                    .arg(dir.join("runner.mjs"))
                    .args(["work", mode, &db.url])
                    .current_dir(dir)
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(err)
                    .kill_on_drop(true)
                    .spawn()
                    .context("starting the peer (node)")?;
                Ok(Running {
                    child,
                    log: log_path,
                    http_port: None,
                })
            }
        }
    }
}

impl Running {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails if the process has exited (it should run until stopped).
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!(
                "contender exited early ({status}); log {}:\n{tail}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// Waits for the reactor's /readyz (listening and first replay done).
    async fn ready(&mut self) -> Result<()> {
        let Some(port) = self.http_port else {
            return Ok(());
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_alive()?;
            let ok = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the reactor was not ready within 60s ({})",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident set (VmHWM) of the process so far, in kB.
    fn peak_rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// SIGTERM (both contenders shut down gracefully on it), then SIGKILL.
    async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

// ---------------------------------------------------------------- backlogs

#[derive(Clone, Copy)]
enum Backlog {
    Favorites,
    Usage,
}

impl Backlog {
    fn prefix(self) -> &'static str {
        match self {
            Backlog::Favorites => "fav",
            Backlog::Usage => "usage",
        }
    }

    fn rows(self, p: &Params) -> i64 {
        match self {
            Backlog::Favorites => p.fav_rows,
            Backlog::Usage => p.usage_rows,
        }
    }

    /// Effect rows written so far.
    fn done_count(self) -> &'static str {
        match self {
            Backlog::Favorites => {
                "select count(*) from public.collections where is_default_favorites"
            }
            Backlog::Usage => {
                "select count(*) from public.usage_ledger where kind = 'generation_debit'"
            }
        }
    }

    /// When the last effect row was written (epoch seconds, server clock).
    fn last_write(self) -> &'static str {
        match self {
            Backlog::Favorites => {
                "select extract(epoch from max(created_at))::float8 from public.collections"
            }
            Backlog::Usage => {
                "select extract(epoch from max(created_at))::float8 from public.usage_ledger"
            }
        }
    }

    /// The whole backlog in one statement: the physical floor. The same work
    /// as the reactor's effect: the rows, and the source rows' markers that
    /// keep later sweeps O(pending) (sql/180_pending_markers.sql).
    fn floor(self) -> &'static str {
        match self {
            Backlog::Favorites => {
                "with effect as (
                   insert into public.collections (owner_id, name, is_default_favorites)
                   select p.id, 'My Favorites', true from public.profiles p
                   on conflict (owner_id) where is_default_favorites do nothing
                 )
                 update public.profiles set favorites_at = now() where favorites_at is null"
            }
            Backlog::Usage => {
                "with effect as (
                   insert into public.usage_ledger (owner_id, kind, amount, meta, job_id)
                   select j.owner_id, 'generation_debit', 1, jsonb_build_object('jobId', j.id), j.id
                   from public.generation_jobs j where j.status = 'succeeded'
                   on conflict (job_id) where kind = 'generation_debit' do nothing
                 )
                 update public.generation_jobs set debited_at = now()
                 where status = 'succeeded' and debited_at is null"
            }
        }
    }

    /// Writes the backlog while nothing runs; returns the seconds of the
    /// insert that fires the triggers (profiles, or generation_jobs).
    async fn fill(self, c: &Client, n: i64) -> Result<f64> {
        let secs = match self {
            Backlog::Favorites => {
                c.execute(
                    "insert into auth.users (id, email)
                     select gen_random_uuid(), 'bench' || g || '@example.test'
                     from generate_series(1, $1::bigint) g",
                    &[&n],
                )
                .await?;
                let t = Instant::now();
                c.execute(
                    "insert into public.profiles (id) select id from auth.users",
                    &[],
                )
                .await?;
                t.elapsed().as_secs_f64()
            }
            Backlog::Usage => {
                // As the service: a finished job (an import) is not rate-ruled,
                // and with no output there is nothing to render.
                let t = Instant::now();
                c.execute(
                    "insert into public.generation_jobs (owner_id, mode, prompt, status, completed_at)
                     select gen_random_uuid(), 'imagine', 'bench', 'succeeded', now()
                     from generate_series(1, $1::bigint)",
                    &[&n],
                )
                .await?;
                t.elapsed().as_secs_f64()
            }
        };
        // Same for every contender: fresh statistics, a clean checkpoint.
        c.batch_execute("vacuum analyze").await?;
        c.batch_execute("checkpoint").await?;
        Ok(secs)
    }

    /// Every row has exactly its one effect.
    async fn verify(self, c: &Client, n: i64) -> Result<()> {
        let (missing, effects): (i64, i64) = match self {
            Backlog::Favorites => {
                let row = c
                    .query_one(
                        "select (select count(*) from public.profiles p where not exists (
                                   select 1 from public.collections c
                                   where c.owner_id = p.id and c.is_default_favorites)),
                                (select count(*) from public.collections)",
                        &[],
                    )
                    .await?;
                (row.get(0), row.get(1))
            }
            Backlog::Usage => {
                let row = c
                    .query_one(
                        "select (select count(*) from public.generation_jobs j
                                 where j.status = 'succeeded' and not exists (
                                   select 1 from public.usage_ledger u
                                   where u.job_id = j.id and u.kind = 'generation_debit')),
                                (select count(*) from public.usage_ledger)",
                        &[],
                    )
                    .await?;
                (row.get(0), row.get(1))
            }
        };
        if missing != 0 || effects != n {
            bail!(
                "wrong result: {missing} rows without their effect, {effects} effects for {n} rows"
            );
        }
        Ok(())
    }
}

async fn epoch_now(c: &Client) -> Result<f64> {
    Ok(
        c.query_one("select extract(epoch from clock_timestamp())::float8", &[])
            .await?
            .get(0),
    )
}

async fn backlog_workload(ctx: &Ctx, kind: Backlog, res: &mut Results) -> Result<()> {
    let n = kind.rows(&ctx.p);
    let pre = kind.prefix();
    println!("\n== backlog drain, {pre}: {n} rows");

    // The set-based floor.
    let db = ctx
        .fresh_db(&format!("{pre}_floor"), Template::Plain)
        .await?;
    let insert = kind.fill(&db.client, n).await?;
    res.set(format!("{pre}.insert.floor"), insert);
    let t = Instant::now();
    db.client.execute(kind.floor(), &[]).await?;
    res.set(format!("{pre}.drain.floor"), t.elapsed().as_secs_f64());
    kind.verify(&db.client, n).await?;
    ctx.done_with(db).await?;

    let mut contenders = vec![Contender::Reactor];
    contenders.extend(ctx.p.peers().into_iter().map(Contender::Peer));
    for who in contenders {
        let key = who.key();
        let db = ctx
            .fresh_db(&format!("{pre}_{key}"), who.template())
            .await?;
        let insert = kind.fill(&db.client, n).await?;
        res.set(format!("{pre}.insert.{key}"), insert);

        let t0 = epoch_now(&db.client).await?;
        let started = Instant::now();
        let mut running = ctx.start(&who, &db, "drain").await?;
        loop {
            tokio::time::sleep(DRAIN_POLL).await;
            running.check_alive()?;
            let done: i64 = db.client.query_one(kind.done_count(), &[]).await?.get(0);
            if done >= n {
                break;
            }
            if started.elapsed() > DRAIN_TIMEOUT {
                bail!("{key} did not drain {n} rows within {DRAIN_TIMEOUT:?} ({done} done)");
            }
        }
        let seen = started.elapsed().as_secs_f64();
        let end: f64 = db.client.query_one(kind.last_write(), &[]).await?.get(0);
        res.set(format!("{pre}.drain.{key}"), end - t0);
        res.set(format!("{pre}.drain_seen.{key}"), seen);
        if who == Contender::Reactor {
            if let Some(kb) = running.peak_rss_kb() {
                res.set(format!("{pre}.rss_mb.reactor"), kb as f64 / 1024.0);
            }
        }
        running.stop().await?;
        kind.verify(&db.client, n).await?;
        ctx.done_with(db).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------- live latency

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn latency_workload(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let samples = ctx.p.samples;
    println!("\n== live latency: {samples} samples, one profile at a time");
    let poll_ms = humantime::parse_duration(&ctx.p.poll_interval)
        .context("BENCH_POLL_INTERVAL")?
        .as_millis() as u64;
    let outbox_ms = humantime::parse_duration(&ctx.p.outbox_poll)
        .context("BENCH_OUTBOX_POLL")?
        .as_millis() as u64;
    let mut contenders = vec![
        Contender::Reactor,
        Contender::ReactorOutbox,
        Contender::ReactorPoll,
    ];
    contenders.extend(ctx.p.peers().into_iter().map(Contender::Peer));
    for who in contenders {
        let key = who.key();
        let db = ctx.fresh_for(&format!("lat_{key}"), &who).await?;
        db.client.batch_execute(DONE_TRIGGER).await?;
        let total = (samples + LATENCY_WARMUP) as i64;
        let users: Vec<uuid::Uuid> = db
            .client
            .query(
                "insert into auth.users (id, email)
                 select gen_random_uuid(), 'lat' || g || '@example.test'
                 from generate_series(1, $1::bigint) g returning id",
                &[&total],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();

        // The bench's own listener: the time a notification arrives is taken
        // in the task that reads the socket.
        let (listen, mut conn) = tokio_postgres::connect(&db.url, NoTls).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, String)>();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let AsyncMessage::Notification(n) = m {
                    if tx.send((Instant::now(), n.payload().to_string())).is_err() {
                        break;
                    }
                }
            }
        });
        listen.batch_execute("listen bench_done").await?;

        let mut running = ctx.start(&who, &db, "latency").await?;
        running.ready().await?;
        let insert = db
            .client
            .prepare("insert into public.profiles (id) values ($1)")
            .await?;
        let mut lat = Vec::with_capacity(samples);
        for (i, user) in users.iter().enumerate() {
            let want = user.to_string();
            db.client.execute(&insert, &[user]).await?;
            // The commit was acknowledged: the row is in, the clock starts.
            let t0 = Instant::now();
            let limit = if i < LATENCY_WARMUP { 60 } else { 10 };
            let arrived = loop {
                match tokio::time::timeout(Duration::from_secs(limit), rx.recv()).await {
                    Ok(Some((at, payload))) if payload == want => break at,
                    Ok(Some(_)) => continue,
                    Ok(None) => bail!("the bench listener closed"),
                    Err(_) => {
                        running.check_alive()?;
                        bail!("{key}: no collection for sample {i} within {limit}s");
                    }
                }
            };
            if i >= LATENCY_WARMUP {
                lat.push(arrived.saturating_duration_since(t0).as_secs_f64() * 1000.0);
            }
            // An idle system between samples, with jitter so no timer phase-locks.
            // Polling modes: a random phase against the poll ticks, or every
            // sample would land at the same point of the interval.
            let phase = match who {
                Contender::ReactorPoll => rand::random_range(0..poll_ms.max(1)),
                Contender::ReactorOutbox => rand::random_range(0..outbox_ms.max(1)),
                _ => 0,
            };
            let gap = 10 + rand::random_range(0..10u64) + phase;
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
        running.stop().await?;
        drop(listen);
        ctx.done_with(db).await?;

        lat.sort_by(|a, b| a.total_cmp(b));
        for (name, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0)] {
            res.set(format!("lat.{name}.{key}"), percentile(&lat, q));
        }
        res.set(
            format!("lat.mean.{key}"),
            lat.iter().sum::<f64>() / lat.len().max(1) as f64,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- write overhead

fn find_pgbench() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("pgbench").is_file() && dir.join("initdb").is_file() {
                return Some(dir.join("pgbench"));
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin/pgbench")))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// One row per transaction, as a service inserting a finished job: `failed`
/// jobs are not rate-ruled (the submit rules return before their advisory
/// lock) and no handler has work for them, so the running reactor only
/// receives and drops the hints. What differs between the two databases is
/// exactly the notify triggers (two `pg_notify` per row, and NOTIFY's commit lock).
const WRITE_SCRIPT: &str =
    "insert into public.generation_jobs (owner_id, mode, prompt, status, error) \
values (gen_random_uuid(), 'imagine', 'bench', 'failed', 'bench');\n";

async fn pgbench(
    pgbench: &Path,
    script: &Path,
    url: &str,
    clients: usize,
    secs: u64,
) -> Result<f64> {
    let out = Command::new(pgbench)
        .args(["-n", "-M", "prepared"])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &secs.to_string(), "-f"])
        .arg(script)
        .arg(url)
        .output()
        .await
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}\n{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no tps in pgbench output:\n{stdout}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

async fn write_workload(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let Some(pgbench_bin) = find_pgbench() else {
        println!("\n== write overhead: skipped (pgbench not found)");
        return Ok(());
    };
    let script = ctx.p.work_dir.join("insert_job.sql");
    std::fs::write(&script, WRITE_SCRIPT)?;
    let mut modes = vec!["fast"];
    if ctx.p.write_durable {
        if ctx.p.database_url.is_some() {
            println!("(durable write mode skipped: it changes server settings, and the server is not ours)");
        } else {
            modes.push("durable");
        }
    }
    for mode in modes {
        println!(
            "\n== write overhead ({mode}): clients {:?}, {}s x {} runs each",
            ctx.p.write_clients, ctx.p.write_secs, ctx.p.write_repeats
        );
        if mode == "durable" {
            ctx.admin
                .batch_execute("alter system set fsync = on")
                .await?;
            // One statement per call: ALTER SYSTEM refuses a transaction block.
            ctx.admin
                .batch_execute("alter system set synchronous_commit = on")
                .await?;
            ctx.admin.batch_execute("select pg_reload_conf()").await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let with = ctx
            .fresh_db(&format!("write_{mode}_with"), Template::Reactor)
            .await?;
        let without = ctx
            .fresh_db(&format!("write_{mode}_without"), Template::Plain)
            .await?;
        let outbox = ctx
            .fresh_for(&format!("write_{mode}_outbox"), &Contender::ReactorOutbox)
            .await?;
        // A listening reactor on each: production has one, and NOTIFY's cost
        // includes signalling it.
        let mut r_with = ctx.start(&Contender::Reactor, &with, "write").await?;
        let mut r_without = ctx.start(&Contender::Reactor, &without, "write").await?;
        let mut r_outbox = ctx
            .start(&Contender::ReactorOutbox, &outbox, "write")
            .await?;
        r_with.ready().await?;
        r_without.ready().await?;
        r_outbox.ready().await?;
        let mut tps: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
        for _ in 0..ctx.p.write_repeats {
            for &c in &ctx.p.write_clients {
                for (variant, db) in [("without", &without), ("with", &with), ("outbox", &outbox)] {
                    db.client
                        .batch_execute("truncate public.generation_jobs cascade")
                        .await?;
                    db.client.batch_execute("checkpoint").await?;
                    let t = pgbench(&pgbench_bin, &script, &db.url, c, ctx.p.write_secs).await?;
                    println!("  {mode} c={c} {variant}: {t:.0} tps");
                    tps.entry((c, variant)).or_default().push(t);
                }
            }
        }
        r_with.check_alive()?;
        r_without.check_alive()?;
        r_outbox.check_alive()?;
        r_with.stop().await?;
        r_without.stop().await?;
        r_outbox.stop().await?;
        for ((c, variant), v) in tps {
            res.set(format!("write.{mode}.c{c}.{variant}"), median(v));
        }
        ctx.done_with(with).await?;
        ctx.done_with(without).await?;
        ctx.done_with(outbox).await?;
        if mode == "durable" {
            ctx.admin.batch_execute("alter system reset fsync").await?;
            ctx.admin
                .batch_execute("alter system reset synchronous_commit")
                .await?;
            ctx.admin.batch_execute("select pg_reload_conf()").await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- machine

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| {
            l.split_once(':')
                .map(|x| x.1)
                .unwrap_or(l)
                .trim()
                .to_string()
        })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn command_line(cmd: &str, args: &[&str], dir: Option<&Path>) -> Option<String> {
    let mut c = Command::new(cmd);
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let out = c.output().await.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn describe_machine(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let m = &mut res.machine;
    m.insert(
        "date".into(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
    );
    m.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    if let Some(cpu) = first_line_with("/proc/cpuinfo", "model name") {
        m.insert("cpu".into(), cpu);
    }
    if let Some(mem) = first_line_with("/proc/meminfo", "MemTotal") {
        let kb: f64 = mem
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        m.insert("memory".into(), format!("{:.1} GiB", kb / 1024.0 / 1024.0));
    }
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        m.insert("kernel".into(), k.trim().to_string());
    }
    m.insert("load average at start".into(), loadavg());
    let version: String = ctx.admin.query_one("select version()", &[]).await?.get(0);
    m.insert("postgres".into(), version);
    let settings: Vec<String> = ctx
        .admin
        .query(
            "select name || '=' || setting || coalesce(unit, '') from pg_settings
             where name in ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'max_wal_size')
             order by name",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    m.insert("postgres settings".into(), settings.join(", "));
    m.insert(
        "postgres server".into(),
        if ctx.p.database_url.is_some() {
            "BENCH_DATABASE_URL (not throwaway)".into()
        } else {
            "throwaway cluster (reactor::store::localpg::LocalPostgres), same host".into()
        },
    );
    let commit = command_line("git", &["rev-parse", "--short", "HEAD"], None)
        .await
        .unwrap_or_else(|| "unknown".into());
    let dirty = command_line(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        None,
    )
    .await
    .map(|s| !s.is_empty())
    .unwrap_or(false);
    m.insert(
        "reactor".into(),
        format!(
            "{} at {commit}{}{}",
            ctx.p.reactor_bin.display(),
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            },
            if ctx.p.reactor_args.is_empty() {
                String::new()
            } else {
                format!(", extra flags {}", ctx.p.reactor_args.join(" "))
            }
        ),
    );
    if let Some(dir) = &ctx.p.peer_dir {
        let node = command_line("node", &["--version"], None)
            .await
            .unwrap_or_default();
        let gw = command_line("node", &["runner.mjs", "version"], Some(dir))
            .await
            .unwrap_or_default();
        m.insert(
            "peer".into(),
            format!("graphile-worker {gw} on node {node}"),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- report

fn fmt_secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn fmt_rate(rows: f64, secs: f64) -> String {
    let r = rows / secs;
    if r >= 1000.0 {
        format!("{:.1}k/s", r / 1000.0)
    } else {
        format!("{r:.0}/s")
    }
}

fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

struct Report<'a> {
    res: &'a Results,
    p: &'a Params,
}

impl Report<'_> {
    fn get(&self, key: &str) -> Option<f64> {
        self.res.get(key)
    }

    fn mark(&self, key: &str) -> &'static str {
        if self.res.merged.iter().any(|k| k == key) {
            " †"
        } else {
            ""
        }
    }

    fn cell_time(&self, key: &str, rows: f64) -> String {
        match self.get(key) {
            Some(s) => format!("{} ({}){}", fmt_secs(s), fmt_rate(rows, s), self.mark(key)),
            None => "—".into(),
        }
    }

    fn cell_ms(&self, key: &str) -> String {
        match self.get(key) {
            Some(v) => format!("{v:.2} ms{}", self.mark(key)),
            None => "—".into(),
        }
    }

    fn verdict(ok: Option<bool>) -> &'static str {
        match ok {
            Some(true) => "**yes**",
            Some(false) => "**no**",
            None => "not measured",
        }
    }

    fn render(&self) -> String {
        let mut s = String::new();
        let r = self.res;
        s.push_str("# Benchmarks: reactor vs graphile-worker vs the set-based floor\n\n");
        s.push_str(
            "Issue 7's comparison, measured side by side **in one run, on one PostgreSQL**. \
             Reproduce with `bench/run.sh` (it builds the reactor in release, installs \
             graphile-worker into a scratch folder outside the repository, and writes this file). \
             The machine is shared and small, so read the **ratios** (measured in the same run), \
             not the absolute figures. No test asserts any timing.\n\n",
        );
        s.push_str("## Machine\n\n| | |\n|---|---|\n");
        for (k, v) in &r.machine {
            s.push_str(&format!("| {k} | {v} |\n"));
        }
        s.push('\n');

        let fav = self.p.fav_rows as f64;
        let usage = self.p.usage_rows as f64;
        let cols = ["reactor", "gw_default", "gw_batched", "floor"];
        s.push_str("## Results\n\n");
        s.push_str(
            "| workload | reactor | graphile-worker default | graphile-worker batched | set-based floor \
             | reactor / gw default | reactor / gw batched | reactor / floor | target | met |\n",
        );
        s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");

        for (pre, rows, title) in [
            (
                "fav",
                fav,
                format!("1. backlog drain, favorites ({} profiles)", self.p.fav_rows),
            ),
            (
                "usage",
                usage,
                format!(
                    "2. backlog drain, usage ({} succeeded jobs)",
                    self.p.usage_rows
                ),
            ),
        ] {
            let k = |c: &str| format!("{pre}.drain.{c}");
            let reactor = self.get(&k("reactor"));
            let batched = self.get(&k("gw_batched"));
            let floor = self.get(&k("floor"));
            let met = match (reactor, batched, floor) {
                (Some(r), Some(b), Some(f)) => Some(b / r >= 1.5 && r / f <= 3.0),
                _ => None,
            };
            let detail = match (reactor, batched, floor) {
                (Some(r), b, Some(f)) => format!(
                    "{}; {:.1}× the floor's time",
                    b.map(|b| format!("{:.2}× gw batched's throughput", b / r))
                        .unwrap_or_else(|| "gw batched not measured".into()),
                    r / f
                ),
                _ => String::new(),
            };
            s.push_str(&format!(
                "| {title}: time to drain (rows/s) | {} | {} | {} | {} | {} | {} | {} | ≥ 1.5× gw batched's throughput and ≤ 3× the floor's time | {} {detail} |\n",
                self.cell_time(&k(cols[0]), rows),
                self.cell_time(&k(cols[1]), rows),
                self.cell_time(&k(cols[2]), rows),
                self.cell_time(&k(cols[3]), rows),
                fmt_ratio(reactor, self.get(&k("gw_default"))),
                fmt_ratio(reactor, batched),
                fmt_ratio(reactor, floor),
                Self::verdict(met),
            ));
        }

        for (q, title, target) in [
            ("p50", "p50", Some(2.0)),
            ("p90", "p90", None),
            ("p99", "p99", Some(10.0)),
            ("max", "max", None),
        ] {
            let k = |c: &str| format!("lat.{q}.{c}");
            let reactor = self.get(&k("reactor"));
            let (target_s, met) = match target {
                Some(t) => (format!("≤ {t} ms"), Self::verdict(reactor.map(|v| v <= t))),
                None => ("—".to_string(), ""),
            };
            s.push_str(&format!(
                "| 3. live latency {title}, insert commit → collection visible ({} samples) | {} | {} | {} | — | {} | {} | — | {target_s} | {met} |\n",
                self.p.samples,
                self.cell_ms(&k("reactor")),
                self.cell_ms(&k("gw_default")),
                self.cell_ms(&k("gw_batched")),
                fmt_ratio(reactor, self.get(&k("gw_default"))),
                fmt_ratio(reactor, self.get(&k("gw_batched"))),
            ));
        }

        if let (Some(p50), Some(p99)) = (
            self.get("lat.p50.reactor_outbox"),
            self.get("lat.p99.reactor_outbox"),
        ) {
            s.push_str(&format!(
                "| 3b. live latency in outbox mode (`reactor.notify_mode = 'outbox'`, `--outbox-poll {}`; p50 / p99 / max) | {p50:.1} / {p99:.1} / {:.1} ms | — | — | — | — | — | — | (the price of row 4's outbox mode) | |\n",
                self.p.outbox_poll,
                self.get("lat.max.reactor_outbox").unwrap_or(f64::NAN),
            ));
        }
        if let (Some(p50), Some(p99)) = (
            self.get("lat.p50.reactor_poll"),
            self.get("lat.p99.reactor_poll"),
        ) {
            s.push_str(&format!(
                "| 3c. live latency of poll-only mode: `REACTOR_LISTEN=false`, poll every {}, no notify triggers (p50 / p99 / max) | {p50:.1} / {p99:.1} / {:.1} ms | — | — | — | — | — | — | (the cost of row 4's \"without\") | |\n",
                self.p.poll_interval,
                self.get("lat.max.reactor_poll").unwrap_or(f64::NAN),
            ));
        }

        for mode in ["fast", "durable"] {
            for c in &self.p.write_clients {
                let with = self.get(&format!("write.{mode}.c{c}.with"));
                let without = self.get(&format!("write.{mode}.c{c}.without"));
                let (Some(with), Some(without)) = (with, without) else {
                    continue;
                };
                let overhead = (1.0 - with / without) * 100.0;
                let outbox = self
                    .get(&format!("write.{mode}.c{c}.outbox"))
                    .map(|o| {
                        format!(
                            "; outbox mode {o:.0} tps ({:+.1}%)",
                            (1.0 - o / without) * 100.0
                        )
                    })
                    .unwrap_or_default();
                let (target, met) = if *c == 32 {
                    ("≤ 10% at 32 clients", Self::verdict(Some(overhead <= 10.0)))
                } else {
                    ("—", "")
                };
                let how = if mode == "fast" {
                    "fsync off (the throwaway cluster)"
                } else {
                    "fsync + synchronous_commit on"
                };
                s.push_str(&format!(
                    "| 4. write overhead of the notify triggers, {c} client(s), {how}: inserts/s with triggers (overhead, i.e. tps lost) | {with:.0} tps ({overhead:+.1}%){outbox} | — | — | without triggers: {without:.0} tps | — | — | {:.2} | {target} | {met} |\n",
                    with / without
                ));
            }
        }

        for (pre, rows) in [("fav", fav), ("usage", usage)] {
            let k = |c: &str| format!("{pre}.insert.{c}");
            if self.get(&k("floor")).is_none() {
                continue;
            }
            let table = if pre == "fav" {
                "profiles"
            } else {
                "generation_jobs"
            };
            s.push_str(&format!(
                "| 5b. the backlog's own bulk insert ({rows} {table}, one statement) with each construction's triggers | {} | {} | {} | no notify trigger: {} | {} | {} | {} | — | |\n",
                self.cell_time(&k("reactor"), rows),
                self.cell_time(&k("gw_default"), rows),
                self.cell_time(&k("gw_batched"), rows),
                self.cell_time(&k("floor"), rows),
                fmt_ratio(self.get(&k("reactor")), self.get(&k("gw_default"))),
                fmt_ratio(self.get(&k("reactor")), self.get(&k("gw_batched"))),
                fmt_ratio(self.get(&k("reactor")), self.get(&k("floor"))),
            ));
        }

        for (pre, what) in [("fav", "favorites"), ("usage", "usage")] {
            let key = format!("{pre}.rss_mb.reactor");
            if let Some(mb) = self.get(&key) {
                let rows = if pre == "fav" {
                    self.p.fav_rows
                } else {
                    self.p.usage_rows
                };
                let target = if pre == "fav" { "≤ 64 MB" } else { "—" };
                let met = if pre == "fav" {
                    Self::verdict(Some(mb <= 64.0))
                } else {
                    ""
                };
                s.push_str(&format!(
                    "| 6. peak RSS (VmHWM) of `reactor run` while draining {rows} rows ({what}) | {mb:.1} MB{} | — | — | — | — | — | — | {target} | {met} |\n",
                    self.mark(&key)
                ));
            }
        }
        s.push('\n');
        s.push_str(&history::render(r, self.p));
        if !r.merged.is_empty() {
            s.push_str(
                "† taken from an earlier run (`BENCH_MERGE`), not measured in this one.\n\n",
            );
        }
        s.push_str(METHOD);
        if !r.notes.is_empty() {
            s.push_str("\n## Notes from this run\n\n");
            for n in &r.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }
}

const METHOD: &str = "## How each figure is measured

- **Contenders.** *reactor*: the real binary (`reactor run --provider local`, built in release,
  every built-in handler, default settings: batch 500, sweep 30s) as a child process.
  *graphile-worker default*: `run()` with the library's defaults (concurrentJobs 1, maxPoolSize 10).
  *graphile-worker batched*: the configuration of graphile-worker's performance page:
  `concurrentJobs: 24, maxPoolSize: 25, localQueue: { size: 500 }, completeJobBatchDelay: 0,
  failJobBatchDelay: 0`. Its logger keeps warnings and errors only (no line per job).
  *set-based floor*: one `INSERT … SELECT … ON CONFLICT DO NOTHING` over the whole backlog, in the
  same statement as the `UPDATE` that sets the source rows' markers (`favorites_at`, `debited_at`),
  which the reactor's effect also writes.
- **Databases.** One cluster for the run; every workload and every contender gets a fresh
  database cloned from a migrated template. The reactor's database has its notify triggers;
  the floor's and the peer's have them dropped; the peer's has graphile-worker's schema and an
  `AFTER INSERT` trigger per source table calling `graphile_worker.add_job('favorites'|'usage',
  json_build_object('id', new.id))`; its task inserts the row with the same `ON CONFLICT` rule
  as the reactor's effect. In every database `created_at` of the effect tables defaults to
  `clock_timestamp()`, so each row carries the moment it was written.
- **Backlog drains (1, 2).** The backlog is inserted while nothing runs (its insert time is row
  5b), then `VACUUM ANALYZE` and `CHECKPOINT` (same for all). The clock starts just before the
  contender's process is spawned (server clock) and stops at the `created_at` of the last effect
  row; process start-up is included for both. The run checks that every row has exactly one
  effect.
- **Live latency (3).** The contender runs idle; the bench inserts one profile, takes the time
  when the insert's commit is acknowledged, and stops the clock when a row-level trigger on
  `collections` (present for every contender) delivers its `NOTIFY` to the bench's own listening
  connection. 20 warm-up samples are dropped; 10–20 ms idle between samples. Rows 3b/3c run the
  same with the reactor in poll-only mode (`--listen false`) on a database without the notify
  triggers (3c), and in outbox mode (3b): the latency price of avoiding NOTIFY.
- **Write overhead (4).** pgbench (`-M prepared`, `-j` up to 2) runs single-row transactions
  `INSERT INTO generation_jobs … status 'failed'` as the service, with fresh owners. A service
  insert of a finished job is what the schema allows without the submit rules' advisory lock and
  quota reads (those apply to submissions), and no handler has work for a failed job, so the
  reactor (running and listening on both databases) only receives and drops the hints. The two
  databases differ only in the notify triggers (two `pg_notify` per row); a third database runs
  outbox mode (`alter database … set reactor.notify_mode = 'outbox'`, the reactor with
  `--outbox-poll`), where the same triggers append to an unlogged table instead. Each point is the
  median of several alternating runs. The *fast* rows run on the throwaway cluster's settings
  (fsync off, asynchronous commit), which hide the cost of NOTIFY's commit-time lock; the
  *durable* rows switch `fsync` and `synchronous_commit` on, where the lock is held across the
  WAL flush, as in production.
- **Peak RSS (6).** `VmHWM` from `/proc/<pid>/status` of the reactor process right after the
  drain finished.
- **Ratios** are reactor ÷ other on the figure shown (time or milliseconds: below 1 means the
  reactor is faster; write overhead: tps with ÷ tps without).
";

// ---------------------------------------------------------------- main

async fn run(p: Params) -> Result<()> {
    std::fs::create_dir_all(p.work_dir.join("logs"))?;
    let log_dir = p.work_dir.join("logs");
    let mut results = Results::default();

    // One cluster for the whole run.
    let (server_url, local) = match &p.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let pg = reactor::store::localpg::LocalPostgres::start().await?;
            (pg.url("postgres"), Some(pg))
        }
    };
    let admin = reactor::store::db::connect(&server_url).await?;
    let peers = p.peers();
    if p.peer_dir.is_none() {
        results.notes.push(
            "graphile-worker was not run (no BENCH_PEER_DIR): bench/run.sh installs it".into(),
        );
    }
    let ctx = Ctx {
        p,
        server_url,
        admin,
        seq: Default::default(),
        log_dir,
    };
    if !ctx.p.reactor_bin.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release), or set BENCH_REACTOR_BIN",
            ctx.p.reactor_bin.display()
        );
    }
    describe_machine(&ctx, &mut results).await?;
    println!("machine: {:#?}", results.machine);
    ctx.create_templates(!peers.is_empty()).await?;

    let started = Instant::now();
    // A workload that fails is reported (and fails the run at the end), but
    // the others still run and every figure measured so far is written.
    let mut failed = Vec::new();
    for workload in ["favorites", "usage", "latency", "write", "history", "wal"] {
        if !ctx.p.runs(workload) {
            continue;
        }
        let outcome = match workload {
            "favorites" => backlog_workload(&ctx, Backlog::Favorites, &mut results).await,
            "usage" => backlog_workload(&ctx, Backlog::Usage, &mut results).await,
            "latency" => latency_workload(&ctx, &mut results).await,
            "history" => history::history_workload(&ctx, &mut results).await,
            "wal" => wal::wal_workload(&ctx, &mut results).await,
            _ => write_workload(&ctx, &mut results).await,
        };
        if let Err(e) = outcome {
            eprintln!("workload {workload} failed: {e:#}");
            results
                .notes
                .push(format!("workload {workload} FAILED: {e:#}"));
            failed.push(workload);
        }
    }
    results
        .machine
        .insert("load average at end".into(), loadavg());
    results.machine.insert(
        "bench duration".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    );
    // Free text for the report (e.g. what else ran on the machine meanwhile).
    if let Ok(note) = std::env::var("BENCH_NOTE") {
        results.notes.extend(
            note.split('\n')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from),
        );
    }
    if ctx.p.ci {
        results
            .notes
            .push("CI mode: small sizes; proves the harness works, the figures mean little".into());
    }

    if let Some(path) = &ctx.p.merge {
        let earlier: Results = serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?;
        for (k, v) in earlier.metrics {
            if !results.metrics.contains_key(&k) {
                results.metrics.insert(k.clone(), v);
                results.merged.push(k);
            }
        }
    }

    if let Some(dir) = ctx.p.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&ctx.p.json, serde_json::to_string_pretty(&results)?)?;
    let markdown = Report {
        res: &results,
        p: &ctx.p,
    }
    .render();
    if let Some(dir) = ctx.p.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&ctx.p.out, &markdown)?;
    println!("\n{markdown}");
    println!("wrote {} and {}", ctx.p.out.display(), ctx.p.json.display());
    if !ctx.p.keep_dbs {
        for t in [Template::Reactor, Template::Plain, Template::Peer] {
            ctx.admin
                .batch_execute(&format!("drop database if exists {} with (force)", t.db()))
                .await?;
        }
    }
    drop(ctx);
    drop(local);
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("workloads failed: {}", failed.join(", "))
    }
}

fn main() -> Result<()> {
    let params = Params::parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(params))
}
