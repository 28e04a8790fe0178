//! The "history" workload (issue 12): a database whose rows are all handled,
//! at growing sizes, where a sweep should cost what is pending (nothing), not
//! what is stored. Per size: one full replay (reactor start to /readyz, and
//! each handler's scan from its `reactor_sweep_duration_seconds`), and the
//! server time of one poll (EXPLAIN ANALYZE of exactly the statements one
//! scan of each handler runs). Once: the insert rate with and without the
//! pending indexes, so the write path's price is visible.
use crate::cli::Params;
use crate::cluster::{Ctx, Template};
use crate::contenders::Contender;
use crate::measure::median;
use crate::report::{fmt_rate, fmt_ratio, fmt_secs, Report, Results};
use anyhow::{bail, Result};
use reactor::job::handler::{Action, Spec};
use reactor::store::pending::Statements;
use std::collections::BTreeMap;
use std::time::Instant;
use tokio_postgres::Client;

/// The partial indexes of the pending queries (180, 186, 270; dropped for "without").
const PENDING_INDEXES: &str =
    "idx_jobs_usage_workable, idx_jobs_pending_renders, idx_jobs_in_flight_owner, \
     idx_jobs_followed_owner, idx_profiles_favorites_workable";

/// `n` handled profiles and jobs, each with its favorites, render, debit and
/// markers, plus the reactor's own tables as they fill up (1% of jobs dead
/// in `reactor.handler_state`, 1% of jobs' hints in `reactor.outbox`): what
/// years of use leave behind. Set-based, with triggers off
/// (`session_replication_role = replica`): history is built, not replayed.
async fn build_history(c: &Client, n: i64) -> Result<f64> {
    let dead = (n / 100).max(1);
    let t = Instant::now();
    c.batch_execute(&format!(
        "set session_replication_role = replica;
         insert into auth.users (id, email)
           select gen_random_uuid(), 'h' || g || '@example.test' from generate_series(1, {n}) g;
         insert into public.profiles (id, favorites_at) select id, now() from auth.users;
         insert into public.collections (owner_id, name, is_default_favorites)
           select id, 'My Favorites', true from public.profiles;
         insert into public.generation_jobs (owner_id, mode, prompt, status, output, created_at,
                                             completed_at, rendered_at, debited_at)
           select id, 'imagine', 'history', 'succeeded', '[\"http://127.0.0.1:9/x.jpg\"]',
                  now() - interval '40 days', now(), now(), now()
           from public.profiles;
         -- 1% of jobs are dead for renders and another 1% for usage, as the
         -- handlers leave them: a dead render fails its job (undeliverable),
         -- a dead debit sets the job's dead marker (sql/270); both keep their
         -- state row, which lists them as dead.
         with dead as (
           update public.generation_jobs
           set rendered_at = null, debited_at = null, status = 'failed',
               error = 'the pictures could not be stored, so this generation is not charged: bench'
           where id in (select id from public.generation_jobs order by id limit {dead})
           returning id
         )
         insert into reactor.handler_state (handler, row_id, attempts, last_error, dead_at)
           select 'renders', id::text, 5, 'bench: the image is gone', now() from dead;
         with dead as (
           update public.generation_jobs set debited_at = null, debit_dead_at = now()
           where id in (select id from public.generation_jobs order by id desc limit {dead})
           returning id
         )
         insert into reactor.handler_state (handler, row_id, attempts, last_error, dead_at)
           select 'usage', id::text, 5, 'bench: the ledger refused the debit', now() from dead;
         insert into public.renders (job_id, owner_id, mode)
           select id, owner_id, mode from public.generation_jobs where rendered_at is not null;
         -- Hints left in the outbox (1% of jobs), as a busy outbox-mode database has.
         insert into reactor.outbox (payload)
           select json_build_object('table', 'generation_jobs', 'op', 'UPDATE', 'id', id,
                                    'owner_id', owner_id, 'status', status)::text
           from public.generation_jobs order by id desc limit {dead};
         insert into public.usage_ledger (owner_id, kind, amount, meta, job_id, created_at)
           select owner_id, 'generation_debit', 1, jsonb_build_object('jobId', id), id, created_at
           from public.generation_jobs where debited_at is not null;
         set session_replication_role = origin;"
    ))
    .await?;
    // Each on its own: VACUUM refuses a multi-statement batch.
    c.batch_execute("vacuum analyze").await?;
    c.batch_execute("checkpoint").await?;
    Ok(t.elapsed().as_secs_f64())
}

/// What one scan of each built-in handler runs first: the effect page of a
/// SQL action, the pending page of a leased one.
fn first_pages() -> Vec<(String, String)> {
    let sql_actions = [
        reactor::handlers::usage::handler(),
        reactor::handlers::favorites::handler(),
    ];
    reactor::http::ops::builtin_specs()
        .into_iter()
        .map(|spec: Spec| {
            let sql = sql_actions.iter().find_map(|h| match &h.action {
                Action::Sql { effect, mark, .. } if h.spec.name == spec.name => {
                    Some((effect.clone(), mark.clone()))
                }
                _ => None,
            });
            let statements = match &sql {
                Some((effect, mark)) => Statements::build(&spec, Some(effect), mark.as_deref()),
                None => Statements::build(&spec, None, None),
            };
            let first = statements.effect_first.unwrap_or(statements.pending_first);
            (spec.name, first)
        })
        .collect()
}

/// Server time (planning + execution, ms) of one poll: every handler's first
/// page once, best of three (warm cache, as a poll every second sees it).
async fn poll_server_ms(c: &mut Client) -> Result<BTreeMap<String, f64>> {
    let limit = 500i64;
    let mut out = BTreeMap::new();
    for (handler, sql) in first_pages() {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            // An SQL action's page writes its effects: nothing is pending, and
            // the transaction is rolled back anyway.
            let tx = c.transaction().await?;
            let plan: serde_json::Value = tx
                .query_one(&format!("explain (analyze, format json) {sql}"), &[&limit])
                .await?
                .get(0);
            tx.rollback().await?;
            let ms = plan[0]["Planning Time"].as_f64().unwrap_or(0.0)
                + plan[0]["Execution Time"].as_f64().unwrap_or(0.0);
            best = best.min(ms);
        }
        out.insert(handler, best);
    }
    Ok(out)
}

/// Mean seconds per scan of each handler, from the reactor's /metrics.
async fn sweep_seconds(port: u16) -> Result<BTreeMap<String, f64>> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    let series = |suffix: &str| -> BTreeMap<String, f64> {
        let prefix = format!("reactor_sweep_duration_seconds_{suffix}{{handler=\"");
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (handler, value) = rest.split_once("\"} ")?;
                Some((handler.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    };
    let (sums, counts) = (series("sum"), series("count"));
    if sums.is_empty() {
        bail!("no reactor_sweep_duration_seconds in /metrics");
    }
    Ok(sums
        .into_iter()
        .filter_map(|(h, s)| Some((h.clone(), s / counts.get(&h).copied().filter(|c| *c > 0.0)?)))
        .collect())
}

pub(crate) async fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    for &n in &ctx.p.history_rows {
        println!("\n== history: {n} handled rows, nothing pending");
        let mut db = ctx
            .fresh_db(&format!("history_{n}"), Template::Reactor)
            .await?;
        res.set(
            format!("hist.{n}.build"),
            build_history(&db.client, n).await?,
        );

        let started = Instant::now();
        let mut running = ctx.start(&Contender::Reactor, &db, "replay").await?;
        running.ready().await?;
        res.set(
            format!("hist.{n}.replay.total"),
            started.elapsed().as_secs_f64(),
        );
        let port = running.http_port.expect("the reactor serves HTTP");
        for (handler, secs) in sweep_seconds(port).await? {
            res.set(format!("hist.{n}.replay.{handler}"), secs);
        }
        running.stop().await?;

        let mut total = 0.0;
        for (handler, ms) in poll_server_ms(&mut db.client).await? {
            total += ms;
            res.set(format!("hist.{n}.poll_ms.{handler}"), ms);
        }
        res.set(format!("hist.{n}.poll_ms.total"), total);
        ctx.done_with(db).await?;
    }

    // The write path: the same bulk inserts (through every trigger) with and
    // without the pending indexes, alternating, the median of three each.
    let n = ctx.p.usage_rows;
    println!(
        "\n== history: insert rate of {n} profiles and jobs, with and without the pending indexes"
    );
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..3 {
        for variant in ["without", "with"] {
            let secs = insert_once(ctx, n, variant, round).await?;
            println!("  {variant}: {secs:.3} s");
            times.entry(variant).or_default().push(secs);
        }
    }
    for (variant, v) in times {
        res.set(format!("hist.insert.{variant}"), median(v));
    }
    Ok(())
}

/// Seconds of one bulk insert of `n` profiles then `n` succeeded jobs into a
/// fresh database, `without` the pending indexes or `with` them.
async fn insert_once(ctx: &Ctx, n: i64, variant: &str, round: usize) -> Result<f64> {
    let db = ctx
        .fresh_db(
            &format!("history_insert_{variant}_{round}"),
            Template::Reactor,
        )
        .await?;
    if variant == "without" {
        db.client
            .batch_execute(&format!("drop index {PENDING_INDEXES}"))
            .await?;
    }
    db.client
        .execute(
            "insert into auth.users (id, email)
             select gen_random_uuid(), 'w' || g || '@example.test' from generate_series(1, $1::bigint) g",
            &[&n],
        )
        .await?;
    db.client.batch_execute("checkpoint").await?;
    let t = Instant::now();
    db.client
        .execute(
            "insert into public.profiles (id) select id from auth.users",
            &[],
        )
        .await?;
    db.client
        .execute(
            "insert into public.generation_jobs (owner_id, mode, prompt, status, completed_at)
             select id, 'imagine', 'bench', 'succeeded', now() from auth.users",
            &[],
        )
        .await?;
    let secs = t.elapsed().as_secs_f64();
    ctx.done_with(db).await?;
    Ok(secs)
}

/// The report's section for this workload (empty when it did not run).
pub(crate) fn render(res: &Results, p: &Params) -> String {
    let sizes: Vec<i64> = p
        .history_rows
        .iter()
        .copied()
        .filter(|n| res.get(&format!("hist.{n}.replay.total")).is_some())
        .collect();
    let (Some(&small), Some(&big)) = (sizes.first(), sizes.last()) else {
        return String::new();
    };
    let handlers = ["generation", "renders", "usage", "favorites"];
    let mut s = String::from(
        "## History: sweeps and polls with nothing pending (issue 12)\n\n\
         A database whose profiles and jobs are all handled (each with its favorites, render, \
         debit and markers), built set-based with triggers off, with the reactor's own tables \
         populated as history leaves them: 1% of the jobs dead for `renders` and 1% for \
         `usage` in `reactor.handler_state` (their rows marked as the handlers leave them: a \
         dead render fails its job, a dead debit sets `debit_dead_at`, so neither is in a \
         pending index; the renders and usage polls are the dead-row poll cost, target ≤ 5 ms) \
         and as many hints in `reactor.outbox`. *Replay*: reactor start to \
         `/readyz` (process start-up included), and each handler's scan from \
         `reactor_sweep_duration_seconds`. *Poll*: server time (planning + execution, EXPLAIN \
         ANALYZE, best of 3) of the first page statement of each handler, which is all a poll \
         runs when nothing is pending.\n\n",
    );
    s.push_str("| handled rows | replay total |");
    for h in handlers {
        s.push_str(&format!(" {h} scan |"));
    }
    s.push_str(" one poll, server time |");
    for h in handlers {
        s.push_str(&format!(" {h} poll |"));
    }
    s.push('\n');
    s.push_str(&format!("|{}\n", "---|".repeat(2 + 2 * handlers.len() + 1)));
    for &n in &sizes {
        let secs = |k: &str| {
            res.get(&format!("hist.{n}.{k}"))
                .map(fmt_secs)
                .unwrap_or_else(|| "—".into())
        };
        let ms = |k: &str| {
            res.get(&format!("hist.{n}.{k}"))
                .map(|v| format!("{v:.2} ms"))
                .unwrap_or_else(|| "—".into())
        };
        s.push_str(&format!("| {n} | {} |", secs("replay.total")));
        for h in handlers {
            s.push_str(&format!(" {} |", secs(&format!("replay.{h}"))));
        }
        s.push_str(&format!(" {} |", ms("poll_ms.total")));
        for h in handlers {
            s.push_str(&format!(" {} |", ms(&format!("poll_ms.{h}"))));
        }
        s.push('\n');
    }
    let ratio = |k: &str| {
        fmt_ratio(
            res.get(&format!("hist.{big}.{k}")),
            res.get(&format!("hist.{small}.{k}")),
        )
    };
    s.push_str(&format!(
        "| **{big} ÷ {small}** (target ≤ 3 for the replay) | **{}** |",
        ratio("replay.total")
    ));
    for h in handlers {
        s.push_str(&format!(" {} |", ratio(&format!("replay.{h}"))));
    }
    s.push_str(&format!(" {} |", ratio("poll_ms.total")));
    for h in handlers {
        s.push_str(&format!(" {} |", ratio(&format!("poll_ms.{h}"))));
    }
    s.push_str("\n\n");
    let replay_ok = res
        .get(&format!("hist.{big}.replay.total"))
        .zip(res.get(&format!("hist.{small}.replay.total")))
        .map(|(b, s)| b / s <= 3.0);
    let poll_ok = res
        .get(&format!("hist.{big}.poll_ms.total"))
        .map(|v| v <= 10.0);
    let dead_ok = res
        .get(&format!("hist.{big}.poll_ms.renders"))
        .zip(res.get(&format!("hist.{big}.poll_ms.usage")))
        .map(|(r, u)| r <= 5.0 && u <= 5.0);
    s.push_str(&format!(
        "- Replay at {big} ≤ 3× the one at {small}: {}\n- One poll at {big} ≤ 10 ms of server time: {}\n\
         - Dead rows cost nothing to skip: the renders and usage polls at {big} (1% of jobs dead for each) ≤ 5 ms: {}\n",
        Report::verdict(replay_ok),
        Report::verdict(poll_ok),
        Report::verdict(dead_ok),
    ));
    if let (Some(with), Some(without)) =
        (res.get("hist.insert.with"), res.get("hist.insert.without"))
    {
        let rows = 2.0 * p.usage_rows as f64;
        s.push_str(&format!(
            "- Write path: {n} profiles then {n} succeeded jobs, bulk inserts through every trigger \
             (median of 3, alternating): with the markers' partial indexes {} ({}), without them {} \
             ({}); insert rate with ÷ without: {:.2}.\n",
            fmt_secs(with),
            fmt_rate(rows, with),
            fmt_secs(without),
            fmt_rate(rows, without),
            without / with,
            n = p.usage_rows,
        ));
    }
    s.push('\n');
    s
}
