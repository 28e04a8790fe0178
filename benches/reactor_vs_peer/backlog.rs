//! Workloads 1 and 2: a backlog of profiles (favorites) or succeeded jobs
//! (usage) written while nothing runs, then drained by each contender and by
//! the set-based floor.
use crate::cli::Params;
use crate::cluster::{Ctx, Db, Template};
use crate::contenders::{Contender, Running};
use crate::measure::{epoch_now, median};
use crate::report::Results;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// How long a drain may take before the run gives up on a contender.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a drain checks whether the work is done (the figure itself comes
/// from the rows' own timestamps, so this only bounds detection).
const DRAIN_POLL: Duration = Duration::from_millis(200);

#[derive(Clone, Copy)]
pub(crate) enum Backlog {
    Favorites,
    Usage,
}

impl Backlog {
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Backlog::Favorites => "fav",
            Backlog::Usage => "usage",
        }
    }

    pub(crate) fn rows(self, p: &Params) -> i64 {
        match self {
            Backlog::Favorites => p.fav_rows,
            Backlog::Usage => p.usage_rows,
        }
    }

    /// Effect rows written so far.
    pub(crate) fn done_count(self) -> &'static str {
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
    pub(crate) fn last_write(self) -> &'static str {
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
    pub(crate) fn floor(self) -> &'static str {
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
    pub(crate) async fn fill(self, c: &Client, n: i64) -> Result<f64> {
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
                // As the service: a finished job (an import) is not rate-ruled.
                // Rendered and not debited: what the usage handler drains (a
                // job is debited with its render; this is the backlog of jobs
                // rendered before that).
                let t = Instant::now();
                c.execute(
                    "insert into public.generation_jobs (owner_id, mode, prompt, status, completed_at, rendered_at)
                     select gen_random_uuid(), 'imagine', 'bench', 'succeeded', now(), now()
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
    pub(crate) async fn verify(self, c: &Client, n: i64) -> Result<()> {
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

/// Starts `who` on `db`, which holds a backlog of `n` rows of `kind`, and
/// waits until it has drained it. Returns the drain's seconds by the server's
/// clock (start to the last effect row's timestamp), the seconds seen here,
/// and the contender, still running.
pub(crate) async fn drain(
    ctx: &Ctx,
    who: &Contender,
    db: &Db,
    kind: Backlog,
    n: i64,
) -> Result<(f64, f64, Running)> {
    let t0 = epoch_now(&db.client).await?;
    let started = Instant::now();
    let mut running = ctx.start(who, db, "drain").await?;
    loop {
        tokio::time::sleep(DRAIN_POLL).await;
        running.check_alive()?;
        let done: i64 = db.client.query_one(kind.done_count(), &[]).await?.get(0);
        if done >= n {
            break;
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            bail!(
                "{} did not drain {n} rows within {DRAIN_TIMEOUT:?} ({done} done)",
                who.key()
            );
        }
    }
    let seen = started.elapsed().as_secs_f64();
    let end: f64 = db.client.query_one(kind.last_write(), &[]).await?.get(0);
    Ok((end - t0, seen, running))
}

/// The floor and the reactor drain `ctx.p.drain_repeats` times, in turn, so
/// each round's ratio compares two drains run back to back; the medians are
/// the figures (`<pre>.drain.floor`, `<pre>.drain.reactor`, …), the
/// rounds' ratios are `<pre>.drain.reactor_floor.ratio…`, and the reactor's
/// peak RSS is the highest of its rounds. The peers drain once.
pub(crate) async fn run(ctx: &Ctx, kind: Backlog, res: &mut Results) -> Result<()> {
    let n = kind.rows(&ctx.p);
    let pre = kind.prefix();
    let repeats = ctx.p.drain_repeats;
    println!("\n== backlog drain, {pre}: {n} rows, {repeats} round(s)");
    let mut rounds: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut ratios = Vec::new();
    let mut peak_rss_mb: Option<f64> = None;
    for _ in 0..repeats {
        let floor = drain_floor(ctx, kind, n, &mut rounds).await?;
        let (reactor, rss_mb) =
            drain_contender(ctx, &Contender::Reactor, kind, n, &mut rounds).await?;
        ratios.push(reactor / floor);
        peak_rss_mb = match (peak_rss_mb, rss_mb) {
            (Some(peak), Some(mb)) => Some(peak.max(mb)),
            (peak, mb) => peak.or(mb),
        };
    }
    for who in ctx.p.peers().into_iter().map(Contender::Peer) {
        drain_contender(ctx, &who, kind, n, &mut rounds).await?;
    }
    for (key, v) in rounds {
        res.set(format!("{pre}.{key}"), median(v));
    }
    if let Some(mb) = peak_rss_mb {
        res.set(format!("{pre}.rss_mb.reactor"), mb);
    }
    res.set_rounds(&format!("{pre}.drain.reactor_floor"), ratios);
    Ok(())
}

/// The set-based floor drains a fresh backlog: returns its seconds, and
/// adds them (and the backlog's insert time) to `rounds`.
async fn drain_floor(
    ctx: &Ctx,
    kind: Backlog,
    n: i64,
    rounds: &mut BTreeMap<String, Vec<f64>>,
) -> Result<f64> {
    let pre = kind.prefix();
    let db = ctx
        .fresh_db(&format!("{pre}_floor"), Template::Plain)
        .await?;
    let insert = kind.fill(&db.client, n).await?;
    let t = Instant::now();
    db.client.execute(kind.floor(), &[]).await?;
    let drained = t.elapsed().as_secs_f64();
    kind.verify(&db.client, n).await?;
    ctx.done_with(db).await?;
    let mut add = |key: &str, v: f64| rounds.entry(key.to_string()).or_default().push(v);
    add("insert.floor", insert);
    add("drain.floor", drained);
    Ok(drained)
}

/// `who` drains a fresh backlog: returns its seconds by the server's clock
/// and its process's peak RSS in MB, and adds the seconds (with the seconds
/// seen here and the backlog's insert time) to `rounds`.
async fn drain_contender(
    ctx: &Ctx,
    who: &Contender,
    kind: Backlog,
    n: i64,
    rounds: &mut BTreeMap<String, Vec<f64>>,
) -> Result<(f64, Option<f64>)> {
    let (pre, key) = (kind.prefix(), who.key());
    let db = ctx
        .fresh_db(&format!("{pre}_{key}"), who.template())
        .await?;
    let insert = kind.fill(&db.client, n).await?;
    let (drained, seen, running) = drain(ctx, who, &db, kind, n).await?;
    let rss_mb = running.peak_rss_kb().map(|kb| kb as f64 / 1024.0);
    running.stop().await?;
    kind.verify(&db.client, n).await?;
    ctx.done_with(db).await?;
    let mut add = |what: &str, v: f64| rounds.entry(format!("{what}.{key}")).or_default().push(v);
    add("insert", insert);
    add("drain", drained);
    add("drain_seen", seen);
    Ok((drained, rss_mb))
}
