//! The "write-path" workload (issue 12): does the schema of the pending
//! markers make a client's writes slower? Single-row durable transactions
//! with pgbench, as clients write them, on the schema as it is now against
//! the schema before issue 12 (the five partial indexes of
//! sql/180_pending_markers.sql dropped, `idx_jobs_status` of sql/070 back, as
//! before sql/185). Both have the same triggers (notify, submit rules,
//! markers' guards); no reactor runs, so only the writes themselves are timed.
use crate::cluster::{Ctx, Template};
use crate::measure::{find_pgbench, median, pgbench};
use crate::report::{Report, Results};
use crate::Params;
use anyhow::Result;
use std::collections::BTreeMap;

/// The schema before issue 12, from the schema now.
const BEFORE_ISSUE_12: &str = "
drop index public.idx_jobs_usage_workable, public.idx_jobs_pending_renders,
  public.idx_jobs_in_flight_owner,
  public.idx_profiles_favorites_workable;
create index idx_jobs_status on public.generation_jobs (status, id);";

/// What every run starts from: a table with a history (20,000 handled jobs of
/// other owners, written with triggers off) and fresh planner statistics, as a
/// production table has. Right after a TRUNCATE the statistics say "empty",
/// and each pgbench session keeps the plans of the submit rules it made then:
/// the first run of this workload measured those plans, not the schema.
const START: &str = "
truncate public.generation_jobs, public.usage_ledger, public.profiles, auth.users cascade;
set session_replication_role = replica;
insert into public.generation_jobs
  (owner_id, mode, prompt, status, output, completed_at, debited_at, rendered_at)
select gen_random_uuid(), 'imagine', 'history', 'succeeded', '[\"http://127.0.0.1:9/x.jpg\"]',
       now(), now(), now()
from generate_series(1, 20000);
set session_replication_role = origin;
analyze public.generation_jobs, public.usage_ledger, public.profiles, auth.users;
checkpoint;";

/// The pgbench scripts: a client's submission (a job `starting`, through the
/// submit rules), a sign-up (a user and its profile), and a whole job's life
/// (submission, processing, success, then the reactor's debit and render,
/// each its own transaction, as the reactor commits them).
fn scripts(before: bool) -> [(&'static str, String); 3] {
    // Before issue 12 the debit had no marker; the render already had one.
    let debit = if before {
        "insert into public.usage_ledger (owner_id, kind, amount, meta, job_id) \
         values (:owner, 'generation_debit', 1, '{}', :id) \
         on conflict (job_id) where kind = 'generation_debit' do nothing;"
    } else {
        "with debit as (insert into public.usage_ledger (owner_id, kind, amount, meta, job_id) \
         values (:owner, 'generation_debit', 1, '{}', :id) \
         on conflict (job_id) where kind = 'generation_debit' do nothing) \
         update public.generation_jobs set debited_at = now() where id = :id;"
    };
    let submit = "insert into public.generation_jobs (owner_id, mode, prompt, status) \
                  values (gen_random_uuid(), 'imagine', 'bench', 'starting')";
    [
        ("jobs", format!("{submit};\n")),
        (
            "profiles",
            "with u as (insert into auth.users (id, email) \
             select g, g::text || '@example.test' from gen_random_uuid() g returning id) \
             insert into public.profiles (id) select id from u;\n"
                .to_string(),
        ),
        (
            "lifecycle",
            format!(
                "{submit} returning id, owner_id as owner \\gset\n\
                 update public.generation_jobs set status = 'processing', prediction_id = 'p' || id::text where id = :id;\n\
                 update public.generation_jobs set status = 'succeeded', output = '[\"http://127.0.0.1:9/x.jpg\"]', \
                 completed_at = now() where id = :id;\n\
                 {debit}\n\
                 begin;\n\
                 insert into public.renders (job_id, owner_id, mode) values (:id, :owner, 'imagine');\n\
                 update public.generation_jobs set rendered_at = now() where id = :id;\n\
                 commit;\n"
            ),
        ),
    ]
}

pub(crate) async fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let Some(pgbench_bin) = find_pgbench() else {
        println!("\n== write path: skipped (pgbench not found)");
        return Ok(());
    };
    // Durable as in production (`--write-durable`), unless the server is not
    // ours to change.
    let durable = (ctx.p.write_durable || ctx.p.durable) && ctx.p.database_url.is_none();
    println!(
        "\n== write path ({}): schema now vs before issue 12, clients {:?}, {}s x {} runs",
        if durable {
            "durable"
        } else {
            "server's settings"
        },
        ctx.p.write_clients,
        ctx.p.write_secs,
        ctx.p.write_repeats
    );
    if durable {
        ctx.set_durable(true).await?;
    }
    let outcome = measure(ctx, &pgbench_bin, res).await;
    if durable {
        ctx.set_durable(false).await?;
    }
    outcome
}

async fn measure(ctx: &Ctx, pgbench_bin: &std::path::Path, res: &mut Results) -> Result<()> {
    let now = ctx.fresh_db("write_path_now", Template::Reactor).await?;
    let before = ctx.fresh_db("write_path_before", Template::Reactor).await?;
    before.client.batch_execute(BEFORE_ISSUE_12).await?;
    let mut tps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..ctx.p.write_repeats {
        for &c in &ctx.p.write_clients {
            for (variant, db) in [("before", &before), ("now", &now)] {
                for (name, script) in scripts(variant == "before") {
                    let path = ctx
                        .p
                        .work_dir
                        .join(format!("write_path_{name}_{variant}.sql"));
                    std::fs::write(&path, script)?;
                    db.client.batch_execute(START).await?;
                    let t = pgbench(pgbench_bin, &path, &db.url, c, ctx.p.write_secs).await?;
                    println!("  {name} c={c} {variant}: {t:.0} tps");
                    tps.entry(format!("wp.{name}.c{c}.{variant}"))
                        .or_default()
                        .push(t);
                }
            }
        }
    }
    for (key, v) in tps {
        res.set(key, median(v));
    }
    ctx.done_with(now).await?;
    ctx.done_with(before).await?;
    Ok(())
}

/// The report's section (empty when the workload did not run).
pub(crate) fn render(res: &Results, p: &Params) -> String {
    let mut rows = String::new();
    for (name, what) in [
        ("jobs", "a submission: one `generation_jobs` row `starting` (submit rules included)"),
        ("profiles", "a sign-up: one `auth.users` row and its `profiles` row"),
        (
            "lifecycle",
            "a whole job: submit, `processing`, `succeeded`, the debit (with `debited_at` now), the render and `rendered_at`: 5 transactions",
        ),
    ] {
        for c in &p.write_clients {
            let get = |v: &str| res.get(&format!("wp.{name}.c{c}.{v}"));
            let (Some(now), Some(before)) = (get("now"), get("before")) else {
                continue;
            };
            rows.push_str(&format!(
                "| {what} | {c} | {before:.0} | {now:.0} | **{:.2}** |\n",
                now / before
            ));
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let ok = ["jobs", "profiles"].iter().all(|name| {
        p.write_clients.iter().all(|c| {
            match (
                res.get(&format!("wp.{name}.c{c}.now")),
                res.get(&format!("wp.{name}.c{c}.before")),
            ) {
                (Some(now), Some(before)) => now / before >= 0.95,
                _ => true,
            }
        })
    });
    format!(
        "## Write path: the schema now vs before issue 12\n\n\
         Single-row transactions with pgbench (`-M prepared`), {}, \
         {} s per run, median of {} alternating runs, no reactor running, each run on a table holding 20,000 \
         handled jobs with fresh statistics. *Before*: the five \
         partial indexes of `sql/180_pending_markers.sql` dropped and `idx_jobs_status (status, id)` \
         present (as before `sql/185_drop_status_index.sql`); the triggers are the same. Figures are \
         transactions per second (the lifecycle row: whole jobs per second).\n\n\
         | transaction | clients | before issue 12 (tps) | now (tps) | now ÷ before |\n\
         |---|---|---|---|---|\n{rows}\n\
         - Inserts no slower (now ÷ before ≥ 0.95, the run's noise) at every client count: {}\n\n",
        if (p.write_durable || p.durable) && p.database_url.is_none() {
            "fsync, synchronous_commit and full_page_writes on"
        } else {
            "the server's settings"
        },
        p.write_secs,
        p.write_repeats,
        Report::verdict(Some(ok)),
    )
}
