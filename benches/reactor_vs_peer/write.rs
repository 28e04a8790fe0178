//! Workload 4: the write overhead of the notify triggers (pgbench inserts
//! with them, without them, and in outbox mode), and issue 22's hint cost
//! alone: an own watched table with no route, against the same table with
//! its hint triggers disabled, in the same database with the reactor running
//! and listening (it only hears `job_status`; under sustained load it quiets
//! the table, as it does by default: sql/260_quiet_hints.sql;
//! `BENCH_REACTOR_ARGS="--quiet-above 0"` measures hints that never go quiet).
use crate::cluster::{Ctx, Template};
use crate::contenders::Contender;
use crate::measure::{find_pgbench, median, pgbench};
use crate::report::Results;
use anyhow::Result;
use std::collections::BTreeMap;

/// One row per transaction, as a service inserting a finished job: `failed`
/// jobs are not rate-ruled (the submit rules return before their advisory
/// lock) and no handler has work for them, so the running reactor only
/// receives and drops the hints. What differs between the two databases is
/// exactly the notify triggers (two `pg_notify` per row, and NOTIFY's commit lock).
pub(crate) const WRITE_SCRIPT: &str =
    "insert into public.generation_jobs (owner_id, mode, prompt, status, error) \
values (gen_random_uuid(), 'imagine', 'bench', 'failed', 'bench');\n";

/// Two tables of one shape in the `with` database: one watched, one watched
/// with its hint triggers disabled (so the only difference is the hints).
const HINT_TABLES: &str = "
create table public.bench_hints (id bigserial primary key, status text not null default 'new');
create table public.bench_hints_off (id bigserial primary key, status text not null default 'new');
select reactor.watch_table('public.bench_hints');
select reactor.watch_table('public.bench_hints_off');
alter table public.bench_hints_off disable trigger reactor_watch_insert;
alter table public.bench_hints_off disable trigger reactor_watch_status;";

/// The variants measured: (name, database, script).
fn variants<'a>(
    with: &'a crate::cluster::Db,
    without: &'a crate::cluster::Db,
    outbox: &'a crate::cluster::Db,
    scripts: &'a [std::path::PathBuf; 3],
) -> [(&'static str, &'a crate::cluster::Db, &'a std::path::Path); 5] {
    [
        ("without", without, &scripts[0]),
        ("with", with, &scripts[0]),
        ("outbox", outbox, &scripts[0]),
        ("hints_off", with, &scripts[2]),
        ("hints", with, &scripts[1]),
    ]
}

pub(crate) async fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let Some(pgbench_bin) = find_pgbench() else {
        println!("\n== write overhead: skipped (pgbench not found)");
        return Ok(());
    };
    let script = ctx.p.work_dir.join("insert_job.sql");
    std::fs::write(&script, WRITE_SCRIPT)?;
    let mut scripts = [script.clone(), script.clone(), script];
    for (i, table) in [(1, "bench_hints"), (2, "bench_hints_off")] {
        scripts[i] = ctx.p.work_dir.join(format!("insert_{table}.sql"));
        std::fs::write(
            &scripts[i],
            format!("insert into public.{table} default values;\n"),
        )?;
    }
    // With --durable every run is durable: no "fast" rows.
    let mut modes = if ctx.p.durable { vec![] } else { vec!["fast"] };
    if ctx.p.write_durable || ctx.p.durable {
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
            ctx.set_durable(true).await?;
        }
        let with = ctx
            .fresh_db(&format!("write_{mode}_with"), Template::Reactor)
            .await?;
        with.client.batch_execute(HINT_TABLES).await?;
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
                for (variant, db, script) in variants(&with, &without, &outbox, &scripts) {
                    db.client
                        .batch_execute("truncate public.generation_jobs cascade")
                        .await?;
                    if variant.starts_with("hints") {
                        db.client
                            .batch_execute("truncate public.bench_hints, public.bench_hints_off")
                            .await?;
                    }
                    db.client.batch_execute("checkpoint").await?;
                    // Sustained load, as the targets mean it: with quiet hints
                    // on, the reactor takes the quiet lease after a second of
                    // it (plus the listener's lag), which a short run would
                    // count. Every variant gets the same second.
                    pgbench(&pgbench_bin, script, &db.url, c, 1).await?;
                    let t = pgbench(&pgbench_bin, script, &db.url, c, ctx.p.write_secs).await?;
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
            ctx.set_durable(false).await?;
        }
    }
    Ok(())
}
