//! Workload "work" (issue 22, items 1 and 3): writers while the reactor does
//! the work. An own table routed to a loopback worker that answers at once;
//! pgbench inserts pending rows while the reactor claims each one, POSTs it
//! and writes the answer back. Notify mode (the default, quiet under load)
//! against poll mode (`reactor notify-mode poll`: no hint trigger fires) doing
//! the same work: the work is not overhead, the way it is signalled is. Each
//! row's latency is read from the table (inserted → written back), so it
//! counts every row of a run, also those left for the backlog when the
//! writers stop; a paced run below saturation measures the live latency.
//! Then the same on `generation_jobs` with the built-in handlers, paced
//! (a job's work is far above its insert): submissions' own time and each
//! job's latency.
use crate::cluster::{Ctx, Template};
use crate::contenders::{Contender, Running};
use crate::measure::{find_pgbench, median, pgbench_run};
use crate::report::{Report, Results};
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The modes compared, as `reactor.settings.notify_mode` names them.
const MODES: [&str; 2] = ["notify", "poll"];

/// The job table, its pending index (as the own-tables chapter asks), and a
/// `done_at` stamped when the reactor writes the answer back (a trigger on
/// the reactor's update, not on the writers' insert).
const TABLE: &str = "
create table public.bench_work (
  id bigserial primary key,
  status text not null default 'pending',
  error text,
  created_at timestamptz not null default clock_timestamp(),
  done_at timestamptz);
create index bench_work_pending on public.bench_work (id) where status in ('pending', 'processing');
create function public.bench_work_done() returns trigger language plpgsql as $$
begin new.done_at := clock_timestamp(); return new; end $$;
create trigger bench_work_done before update of status on public.bench_work
  for each row when (new.status = 'done') execute function public.bench_work_done();
select reactor.watch_table('public.bench_work');";

/// The writers' transaction: one pending job.
const INSERT: &str = "insert into public.bench_work default values;\n";

/// Unrecorded seconds of the same load before each recorded run (as the
/// write workload: a busy table goes quiet about 1.5 s into sustained load).
const WARM_UP_SECS: u64 = 3;

/// The paced runs (2 writers, rows a second in all), within what the
/// reactor works in time. Each row of the table hints three times (its
/// insert, `processing`, its answer), so at 50 rows a second notify mode
/// hints every row (150 hints a second, below `REACTOR_QUIET_ABOVE`, 200):
/// the live latency. At 250 rows a second the table goes quiet and is paged
/// every `REACTOR_QUIET_POLL`: the latency once hints saturate.
const PACED: [(&str, u32); 2] = [("hinted", 50), ("quiet", 250)];

/// Item 1 on `generation_jobs`: a client's submission (through the submit
/// rules, each by a new owner), which the built-in handlers submit to the
/// local provider, follow, render (two variants, each drawn, encoded and
/// thumbnailed) and debit. A job's work is tens of milliseconds of CPU
/// against a fraction of one for its insert, so writers at full speed would
/// leave hours of backlog: they are paced (2 writers, `JOBS_PACE` jobs a
/// second in all), and what the signalling costs them is read from each
/// insert's own time, not from their rate.
const SUBMIT: &str = "insert into public.generation_jobs (owner_id, mode, prompt, status) \
values (gen_random_uuid(), 'imagine', 'bench', 'starting');\n";
const JOBS_PACE: u32 = 5;
/// The shortest round of paced submissions outside CI: 150 submissions a
/// round, so one insert that shared the cores with a render does not decide
/// the round.
const JOBS_SECS: u64 = 30;

/// How long the backlog of one run may take to drain before the run fails.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

/// Signs the POSTs; the worker does not check (a test key, not a secret).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A worker on loopback that answers every POST at once with `{}` (the row
/// succeeds, nothing written but the status). Returns its port and a count
/// of the POSTs it answered.
async fn loopback_worker() -> Result<(u16, Arc<AtomicU64>)> {
    let posts = Arc::new(AtomicU64::new(0));
    let counted = posts.clone();
    let app = axum::Router::new().route(
        "/work",
        axum::routing::post(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            async { axum::Json(serde_json::json!({})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((port, posts))
}

/// The reactor's config: every row of `bench_work` is POSTed to the worker.
fn config(port: u16) -> String {
    format!(
        "[[table]]\nname = \"public.bench_work\"\nkey_type = \"bigint\"\n\
         pending = \"pending\"\nprocessing = \"processing\"\nsucceeded = \"done\"\n\
         failed = \"failed\"\nerror_column = \"error\"\n\
         [table.http]\nurl = \"http://127.0.0.1:{port}/work\"\n"
    )
}

/// Asks `left` every `every` how many rows are still to be worked until it
/// says none, failing at once if `reactor` exits, and with "<n> {what}"
/// once `DRAIN_LIMIT` has passed since the writers `stopped`.
async fn until_none_left<F, Fut>(
    reactor: &mut Running,
    stopped: Instant,
    every: Duration,
    what: &str,
    mut left: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<i64>>,
{
    loop {
        let n = left().await?;
        reactor.check_alive()?;
        if n == 0 {
            return Ok(());
        }
        if stopped.elapsed() > DRAIN_LIMIT {
            bail!("{n} {what} {DRAIN_LIMIT:?} after the writers stopped");
        }
        tokio::time::sleep(every).await;
    }
}

/// What one run measured: the writers' rate, the rows the reactor finished
/// while the writers ran (a second), the latency of
/// its rows (inserted → written back, ms) and how long its backlog took to
/// drain once the writers stopped.
struct Run {
    tps: f64,
    worked_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    drain_s: f64,
}

/// Runs pgbench (after a warm-up at the same rate), waits until `reactor`
/// has worked every row (failing at once if it exits), and reads the
/// latency of the rows this run inserted.
async fn measure(
    db: &crate::cluster::Db,
    reactor: &mut Running,
    pgbench: &std::path::Path,
    script: &std::path::Path,
    clients: usize,
    secs: u64,
    rate: Option<u32>,
) -> Result<Run> {
    pgbench_run(pgbench, script, &db.url, clients, WARM_UP_SECS, rate).await?;
    let (first, started): (i64, f64) = {
        let row = db
            .client
            .query_one(
                "select coalesce(max(id), 0), extract(epoch from clock_timestamp())::float8
                 from public.bench_work",
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    let tps = pgbench_run(pgbench, script, &db.url, clients, secs, rate)
        .await?
        .tps;
    let stopped = Instant::now();
    // Rows of any run (the warm-up's, an earlier backlog's) the reactor
    // finished while the writers ran.
    let worked: i64 = db
        .client
        .query_one(
            "select count(*) from public.bench_work
             where done_at >= to_timestamp($1::float8) and done_at < clock_timestamp()",
            &[&started],
        )
        .await?
        .get(0);
    until_none_left(
        reactor,
        stopped,
        Duration::from_millis(20),
        "rows still pending",
        || async {
            Ok(db
            .client
            .query_one(
                "select count(*) from public.bench_work where status in ('pending', 'processing')",
                &[],
            )
            .await?
            .get(0))
        },
    )
    .await?;
    let drain_s = stopped.elapsed().as_secs_f64();
    let row = db
        .client
        .query_one(
            "select count(*) filter (where status <> 'done'),
                    percentile_cont(array[0.5, 0.99, 1]) within group (
                      order by extract(epoch from done_at - created_at) * 1000)
             from public.bench_work where id > $1",
            &[&first],
        )
        .await?;
    let not_done: i64 = row.get(0);
    if not_done > 0 {
        bail!("{not_done} rows were not worked (failed or lost)");
    }
    let q: Vec<f64> = row.get(1);
    Ok(Run {
        tps,
        worked_per_s: worked as f64 / secs as f64,
        p50_ms: q[0],
        p99_ms: q[1],
        max_ms: q[2],
        drain_s,
    })
}

/// What one paced run of submissions measured: each insert's own time, and
/// each job's latency (submitted → rendered and debited, ms).
struct JobsRun {
    /// A submission's own time: the median, and the mean (what the rate sees).
    insert_ms: f64,
    insert_mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Runs paced submissions, waits until `reactor` has rendered and debited
/// every job they made (failing at once if it exits, or if a job failed),
/// and reads the jobs' latency.
async fn measure_jobs(
    db: &crate::cluster::Db,
    reactor: &mut Running,
    pgbench: &std::path::Path,
    script: &std::path::Path,
    secs: u64,
) -> Result<JobsRun> {
    let started = crate::measure::epoch_now(&db.client).await?;
    let writers = pgbench_run(pgbench, script, &db.url, 2, secs, Some(JOBS_PACE)).await?;
    let stopped = Instant::now();
    let ours = "from public.generation_jobs where created_at >= to_timestamp($1::float8)";
    until_none_left(
        reactor,
        stopped,
        Duration::from_millis(50),
        "jobs not rendered and debited",
        || async {
            let row = db
                .client
                .query_one(
                    &format!(
                        "select count(*) filter (where status in ('failed', 'canceled')),
                            count(*) filter (where rendered_at is null or debited_at is null)
                     {ours}"
                    ),
                    &[&started],
                )
                .await?;
            let (failed, open): (i64, i64) = (row.get(0), row.get(1));
            if failed > 0 {
                bail!("{failed} submitted jobs failed or were canceled");
            }
            Ok(open)
        },
    )
    .await?;
    let row = db
        .client
        .query_one(
            &format!(
                "select count(*), percentile_cont(array[0.5, 0.99, 1]) within group (
                   order by extract(epoch from greatest(rendered_at, debited_at) - created_at) * 1000)
                 {ours}"
            ),
            &[&started],
        )
        .await?;
    let jobs: i64 = row.get(0);
    if jobs as u64 != writers.transactions {
        bail!(
            "{} submissions committed, {jobs} jobs found",
            writers.transactions
        );
    }
    let q: Vec<f64> = row.get(1);
    Ok(JobsRun {
        insert_mean_ms: writers.own_ms.iter().sum::<f64>() / writers.own_ms.len() as f64,
        insert_ms: median(writers.own_ms),
        p50_ms: q[0],
        p99_ms: q[1],
        max_ms: q[2],
    })
}

/// Paced submissions to `generation_jobs` in every mode's database, the
/// modes alternating, `write_repeats` rounds.
async fn run_jobs(
    ctx: &Ctx,
    setups: &mut [(&str, crate::cluster::Db, Running)],
    pgbench: &std::path::Path,
    res: &mut Results,
) -> Result<()> {
    let script = ctx.p.work_dir.join("submit_job.sql");
    std::fs::write(&script, SUBMIT)?;
    let mut runs: std::collections::BTreeMap<&str, Vec<JobsRun>> = Default::default();
    let secs = if ctx.p.ci {
        ctx.p.write_secs
    } else {
        ctx.p.write_secs.max(JOBS_SECS)
    };
    for _ in 0..ctx.p.write_repeats {
        for (mode, db, reactor) in setups.iter_mut() {
            let run = measure_jobs(db, reactor, pgbench, &script, secs).await?;
            println!(
                "  {mode} jobs at {JOBS_PACE}/s: insert {:.2} ms (mean {:.2} ms), job latency p50 {:.0} ms, p99 {:.0} ms",
                run.insert_ms, run.insert_mean_ms, run.p50_ms, run.p99_ms
            );
            runs.entry(mode).or_default().push(run);
        }
    }
    // The rate each insert's own time allows, notify's over poll's: poll's
    // median time ÷ notify's, the median of each round's ratio.
    if let (Some(notify), Some(poll)) = (runs.get("notify"), runs.get("poll")) {
        let ratios = notify
            .iter()
            .zip(poll)
            .map(|(n, p)| p.insert_ms / n.insert_ms);
        res.set_rounds("work.jobs", ratios.collect());
    }
    for (mode, runs) in runs {
        let m = |f: fn(&JobsRun) -> f64| median(runs.iter().map(f).collect());
        res.set(format!("work.{mode}.jobs.insert_ms"), m(|r| r.insert_ms));
        res.set(
            format!("work.{mode}.jobs.insert_mean_ms"),
            m(|r| r.insert_mean_ms),
        );
        res.set(format!("work.{mode}.jobs.p50_ms"), m(|r| r.p50_ms));
        res.set(format!("work.{mode}.jobs.p99_ms"), m(|r| r.p99_ms));
        res.set(format!("work.{mode}.jobs.max_ms"), m(|r| r.max_ms));
    }
    Ok(())
}

pub(crate) async fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let Some(pgbench) = find_pgbench() else {
        println!("\n== writers while the reactor works: skipped (pgbench not found)");
        return Ok(());
    };
    println!(
        "\n== writers while the reactor works (own table → loopback worker): clients {:?}, {}s x {} runs each",
        ctx.p.write_clients, ctx.p.write_secs, ctx.p.write_repeats
    );
    let script = ctx.p.work_dir.join("insert_work.sql");
    std::fs::write(&script, INSERT)?;
    let (port, posts) = loopback_worker().await?;
    let config_path = ctx.p.work_dir.join("work.toml");
    std::fs::write(&config_path, config(port))?;
    let config_path = config_path.display().to_string();
    let env = [
        ("REACTOR_CONFIG", config_path.as_str()),
        ("REACTOR_HTTP_SECRET", SECRET),
    ];
    // One database and one reactor per mode, both kept for the whole
    // workload so the rounds alternate the modes.
    let mut setups = Vec::new();
    for mode in MODES {
        let db = ctx
            .fresh_db(&format!("work_{mode}"), Template::Reactor)
            .await?;
        db.client.batch_execute(TABLE).await?;
        db.client
            .execute(
                "update reactor.settings set notify_mode = $1, updated_at = now()",
                &[&mode],
            )
            .await?;
        let mut reactor = ctx
            .start_with_env(&Contender::Reactor, &db, "work", &env)
            .await?;
        reactor.ready().await?;
        setups.push((mode, db, reactor));
    }
    // CI mode proves the harness: a debug reactor would take minutes over
    // the backlog of writers at full speed, so there they are paced too.
    let full_speed = if ctx.p.ci { Some(100) } else { None };
    let mut runs: std::collections::BTreeMap<String, Vec<Run>> = Default::default();
    for _ in 0..ctx.p.write_repeats {
        for &c in &ctx.p.write_clients {
            for (mode, db, reactor) in &mut setups {
                db.client.batch_execute("checkpoint").await?;
                let run = measure(
                    db,
                    reactor,
                    &pgbench,
                    &script,
                    c,
                    ctx.p.write_secs,
                    full_speed,
                )
                .await?;
                println!(
                    "  {mode} c={c}: {:.0} tps, {:.0} worked/s, latency p50 {:.1} ms, p99 {:.1} ms, backlog {:.2} s",
                    run.tps, run.worked_per_s, run.p50_ms, run.p99_ms, run.drain_s
                );
                runs.entry(format!("{mode}.c{c}")).or_default().push(run);
            }
        }
    }
    for (label, rate) in PACED {
        for (mode, db, reactor) in &mut setups {
            let run = measure(
                db,
                reactor,
                &pgbench,
                &script,
                2,
                ctx.p.write_secs,
                Some(rate),
            )
            .await?;
            println!(
                "  {mode} paced at {rate}/s: latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                run.p50_ms, run.p99_ms, run.max_ms
            );
            runs.entry(format!("{mode}.paced_{label}"))
                .or_default()
                .push(run);
        }
    }
    run_jobs(ctx, &mut setups, &pgbench, res).await?;
    // Every row POSTed once: nothing failed here, so a second POST of a row
    // would be a double.
    let mut rows = 0i64;
    for (_, db, _) in &setups {
        rows += db
            .client
            .query_one("select count(*) from public.bench_work", &[])
            .await?
            .get::<_, i64>(0);
    }
    let posted = posts.load(Ordering::Relaxed);
    println!("  the worker answered {posted} POSTs for {rows} rows");
    if posted != rows as u64 {
        bail!("the worker answered {posted} POSTs for {rows} rows: every row is POSTed once");
    }
    for (_, db, reactor) in setups {
        reactor.stop().await?;
        ctx.done_with(db).await?;
    }
    for (key, runs) in runs {
        let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        res.set(format!("work.{key}.tps"), m(|r| r.tps));
        res.set(format!("work.{key}.worked_per_s"), m(|r| r.worked_per_s));
        res.set(format!("work.{key}.p50_ms"), m(|r| r.p50_ms));
        res.set(format!("work.{key}.p99_ms"), m(|r| r.p99_ms));
        res.set(format!("work.{key}.max_ms"), m(|r| r.max_ms));
        res.set(format!("work.{key}.drain_s"), m(|r| r.drain_s));
    }
    Ok(())
}

/// The section: notify ÷ poll at each writer count, and the latencies.
pub(crate) fn render(res: &Results, p: &crate::cli::Params) -> String {
    let get = |mode: &str, key: &str, what: &str| res.get(&format!("work.{mode}.{key}.{what}"));
    let mut rows = String::new();
    for c in &p.write_clients {
        let key = format!("c{c}");
        let (Some(notify), Some(poll)) = (get("notify", &key, "tps"), get("poll", &key, "tps"))
        else {
            continue;
        };
        let ratio = notify / poll;
        let target = match c {
            1 => format!("≥ 0.90: {}", Report::verdict(Some(ratio >= 0.90))),
            32 => format!("≥ 0.95: {}", Report::verdict(Some(ratio >= 0.95))),
            _ => "—".into(),
        };
        let lat = |mode: &str| {
            format!(
                "{:.0} / {:.0} ms; {:.0} rows worked a second; backlog {:.1} s",
                get(mode, &key, "p50_ms").unwrap_or(f64::NAN),
                get(mode, &key, "p99_ms").unwrap_or(f64::NAN),
                get(mode, &key, "worked_per_s").unwrap_or(f64::NAN),
                get(mode, &key, "drain_s").unwrap_or(f64::NAN),
            )
        };
        rows.push_str(&format!(
            "| {c} | {notify:.0} | {poll:.0} | {ratio:.2} | {target} | {} | {} |\n",
            lat("notify"),
            lat("poll")
        ));
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut paced = String::new();
    for (label, rate) in PACED {
        let key = format!("paced_{label}");
        let cell = |mode: &str| {
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                get(mode, &key, "p50_ms").unwrap_or(f64::NAN),
                get(mode, &key, "p99_ms").unwrap_or(f64::NAN),
                get(mode, &key, "max_ms").unwrap_or(f64::NAN),
            )
        };
        let target = match label {
            "hinted" => "p99 ≤ 20 ms (notify)",
            _ => "p99 ≤ 1 s",
        };
        paced.push_str(&format!(
            "| {rate} rows/s ({}) | {} | {} | {target} |\n",
            if label == "hinted" {
                "every row hinted"
            } else {
                "notify mode's table quiet"
            },
            cell("notify"),
            cell("poll")
        ));
    }
    let jobs = match (
        res.get("work.jobs.ratio"),
        res.get("work.jobs.ratio_min"),
        res.get("work.jobs.ratio_max"),
    ) {
        (Some(ratio), Some(lo), Some(hi)) => {
            let cell = |mode: &str| {
                format!(
                    "{:.2} ms (mean {:.2} ms); jobs {:.0} / {:.0} / {:.0} ms",
                    get(mode, "jobs", "insert_ms").unwrap_or(f64::NAN),
                    get(mode, "jobs", "insert_mean_ms").unwrap_or(f64::NAN),
                    get(mode, "jobs", "p50_ms").unwrap_or(f64::NAN),
                    get(mode, "jobs", "p99_ms").unwrap_or(f64::NAN),
                    get(mode, "jobs", "max_ms").unwrap_or(f64::NAN),
                )
            };
            format!(
                "Submissions to `generation_jobs` (through the submit rules, each by a new owner) \
                 while the built-in handlers work them: submitted to the local provider \
                 (`REACTOR_LOCAL_DELAY`, 1.5 s), followed, rendered (two variants, each drawn, \
                 encoded and thumbnailed) and debited. A job's work is tens of milliseconds of CPU, \
                 so full-speed writers would leave hours of backlog: 2 writers paced at \
                 {JOBS_PACE} jobs a second in all, for at least {JOBS_SECS} s a round, and the \
                 signalling's cost is read from each insert's own time (its time in pgbench's \
                 per-transaction log less its schedule lag): the median, and the mean, which a \
                 few inserts that shared the cores with a render can move by a millisecond; the \
                 rate it allows as poll's median ÷ notify's, the median of the rounds' ratios. \
                 Job latency is submitted → rendered and debited (p50 / p99 / max).\n\n\
                 | writers | notify: insert; jobs | poll: insert; jobs | poll ÷ notify (insert time) |\n\
                 |---|---|---|---|\n\
                 | 2 at {JOBS_PACE}/s | {} | {} | {ratio:.2} (rounds {lo:.2}–{hi:.2}) |\n\n",
                cell("notify"),
                cell("poll"),
            )
        }
        _ => String::new(),
    };
    format!(
        "### Writers while the reactor works (issue 22, items 1 and 3)\n\n\
         An own table routed to a loopback worker that answers at once: pgbench inserts \
         pending rows (durable when the run is) while the reactor claims each row, POSTs it \
         and writes the answer back, in notify mode (the default: a table above \
         `REACTOR_QUIET_ABOVE` hints a second goes quiet and is paged every \
         `REACTOR_QUIET_POLL`) and in poll mode (`reactor notify-mode poll`: no hint trigger \
         fires, pending rows paged every `REACTOR_POLL_INTERVAL`, 1 s). Same work in both: \
         the ratio is what the signalling costs the writers. Latency is each row's, inserted \
         → answer written back, read from the table for every row of the run; the backlog is \
         how long the rows left when the writers stopped took to finish. Writers at full speed \
         outrun the reactor's work (a claim, a POST and a write-back a row), so both modes \
         work at their own pace beside the writers on the same cores: read the ratio with the \
         rows each mode worked a second. Medians of \
         {} alternating rounds of {} s, each after {WARM_UP_SECS} s of the same load.\n\n\
         | writers | notify, inserts/s | poll, inserts/s | notify ÷ poll | target | notify: latency p50 / p99, work | poll: latency p50 / p99, work |\n\
         |---|---|---|---|---|---|---|\n{rows}\n\
         Paced writers (2, at a fixed rate the reactor keeps up with), latency p50 / p99 / max:\n\n\
         | rate | notify | poll | target |\n|---|---|---|---|\n{paced}\n{jobs}",
        p.write_repeats,
        p.write_secs,
    )
}
