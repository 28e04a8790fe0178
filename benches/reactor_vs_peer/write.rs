//! Workload 4: the write overhead of the notify triggers (pgbench inserts
//! with them, without them, and in outbox mode), and issue 22's hint cost
//! alone: an own watched table with no route, against the same table with
//! its hint triggers disabled, in the same database with the reactor running
//! and listening (it only hears `job_status`; under sustained load it quiets
//! the table, as it does by default: sql/260_quiet_hints.sql;
//! `BENCH_REACTOR_ARGS="--quiet-above 0"` measures hints that never go quiet),
//! and the same table in a database in poll mode, its reactor paging (row 4d).
use crate::cluster::{Ctx, Template};
use crate::contenders::Contender;
use crate::measure::{find_pgbench, machine_busy_secs, median, pgbench, pgbench_run};
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

/// Three tables of one shape in the `with` database: one watched, one
/// watched with its hint triggers disabled (so the only difference is the
/// hints), and one with a single row trigger that never runs (`WHEN
/// (false)`): the floor of any design that keeps a trigger on the table,
/// since PostgreSQL prepares a trigger's `WHEN` for every statement, whatever
/// it says (a quiet table's writers pay that, and the quiet flag's read).
const HINT_TABLES: &str = "
create table public.bench_hints (id bigserial primary key, status text not null default 'new');
create table public.bench_hints_off (id bigserial primary key, status text not null default 'new');
create table public.bench_inert (id bigserial primary key, status text not null default 'new');
select reactor.watch_table('public.bench_hints');
select reactor.watch_table('public.bench_hints_off');
alter table public.bench_hints_off disable trigger reactor_watch_insert;
alter table public.bench_hints_off disable trigger reactor_watch_status;
create function public.bench_never() returns trigger language plpgsql as 'begin return null; end';
create trigger bench_inert after insert on public.bench_inert
  for each row when (false) execute function public.bench_never();";

/// Unrecorded seconds of the same load before each recorded run: sustained
/// load, as the targets mean it. With quiet hints on, the reactor takes the
/// quiet lease after a second of it plus its listener's lag (about 1.5 s at
/// 32 writers); every variant gets the same warm-up.
const WARM_UP_SECS: u64 = 3;

/// A variant measured: (name, database, script, warmed up).
type Variant<'a> = (
    &'static str,
    &'a crate::cluster::Db,
    &'a std::path::Path,
    bool,
);

/// The variants measured. `hints_cold`
/// is `hints` without the warm-up, on a table not written for over half a minute
/// (its quiet has run out): what a burst of load pays while the reactor
/// decides to quiet the table. `hints_poll` is `hints` in poll mode (issue
/// 22's item 3: the hint triggers disabled, the reactor paging).
fn variants<'a>(
    with: &'a crate::cluster::Db,
    without: &'a crate::cluster::Db,
    outbox: &'a crate::cluster::Db,
    poll: &'a crate::cluster::Db,
    scripts: &'a [std::path::PathBuf; 4],
) -> [Variant<'a>; 8] {
    [
        ("without", without, &scripts[0], true),
        ("with", with, &scripts[0], true),
        ("outbox", outbox, &scripts[0], true),
        ("hints_cold", with, &scripts[1], false),
        ("hints_off", with, &scripts[2], true),
        ("hints", with, &scripts[1], true),
        ("inert_trigger", with, &scripts[3], true),
        ("hints_poll", poll, &scripts[1], true),
    ]
}

pub(crate) async fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let Some(pgbench_bin) = find_pgbench() else {
        println!("\n== write overhead: skipped (pgbench not found)");
        return Ok(());
    };
    let script = ctx.p.work_dir.join("insert_job.sql");
    std::fs::write(&script, WRITE_SCRIPT)?;
    let mut scripts = [script.clone(), script.clone(), script.clone(), script];
    for (i, table) in [
        (1, "bench_hints"),
        (2, "bench_hints_off"),
        (3, "bench_inert"),
    ] {
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
        let poll = ctx
            .fresh_db(&format!("write_{mode}_poll"), Template::Reactor)
            .await?;
        poll.client.batch_execute(HINT_TABLES).await?;
        poll.client
            .batch_execute("update reactor.settings set notify_mode = 'poll', updated_at = now()")
            .await?;
        // A listening reactor on each: production has one, and NOTIFY's cost
        // includes signalling it.
        let mut r_with = ctx.start(&Contender::Reactor, &with, "write").await?;
        let mut r_without = ctx.start(&Contender::Reactor, &without, "write").await?;
        let mut r_outbox = ctx
            .start(&Contender::ReactorOutbox, &outbox, "write")
            .await?;
        let mut r_poll = ctx.start(&Contender::Reactor, &poll, "write").await?;
        r_with.ready().await?;
        r_without.ready().await?;
        r_outbox.ready().await?;
        r_poll.ready().await?;
        // Each variant's figures, one a round: inserts a second, and the
        // machine's busy CPU per insert (µs).
        let mut tps: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
        let mut cpu: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
        for _ in 0..ctx.p.write_repeats {
            for &c in &ctx.p.write_clients {
                for (variant, db, script, warm) in
                    variants(&with, &without, &outbox, &poll, &scripts)
                {
                    db.client
                        .batch_execute("truncate public.generation_jobs cascade")
                        .await?;
                    if variant.starts_with("hints") || variant == "inert_trigger" {
                        db.client
                            .batch_execute(
                                "truncate public.bench_hints, public.bench_hints_off, public.bench_inert",
                            )
                            .await?;
                    }
                    db.client.batch_execute("checkpoint").await?;
                    if warm {
                        pgbench(&pgbench_bin, script, &db.url, c, WARM_UP_SECS).await?;
                    }
                    let busy_before = machine_busy_secs();
                    let run = pgbench_run(&pgbench_bin, script, &db.url, c, ctx.p.write_secs, None)
                        .await?;
                    if let (Some(before), Some(after)) = (busy_before, machine_busy_secs()) {
                        let us = (after - before) * 1e6 / run.transactions.max(1) as f64;
                        cpu.entry((c, variant)).or_default().push(us);
                    }
                    println!("  {mode} c={c} {variant}: {:.0} tps", run.tps);
                    tps.entry((c, variant)).or_default().push(run.tps);
                }
            }
        }
        r_with.check_alive()?;
        r_without.check_alive()?;
        r_outbox.check_alive()?;
        r_poll.check_alive()?;
        r_with.stop().await?;
        r_without.stop().await?;
        r_outbox.stop().await?;
        r_poll.stop().await?;
        for &c in &ctx.p.write_clients {
            for variant in ["hints", "inert_trigger", "hints_poll"] {
                paired_ratios(
                    res,
                    &format!("write.{mode}.c{c}.{variant}"),
                    &tps,
                    c,
                    variant,
                    |v, off| v / off,
                );
                paired_ratios(
                    res,
                    &format!("write.{mode}.c{c}.{variant}.cpu"),
                    &cpu,
                    c,
                    variant,
                    |v, off| off / v,
                );
            }
        }
        for ((c, variant), v) in tps {
            res.set(format!("write.{mode}.c{c}.{variant}"), median(v));
        }
        for ((c, variant), v) in cpu {
            res.set(format!("write.{mode}.c{c}.{variant}.cpu_us"), median(v));
        }
        ctx.done_with(with).await?;
        ctx.done_with(without).await?;
        ctx.done_with(outbox).await?;
        ctx.done_with(poll).await?;
        if mode == "durable" {
            ctx.set_durable(false).await?;
        }
    }
    Ok(())
}

/// Sets `<key>.ratio` and its range ([`Results::set_rounds`]) of
/// `ratio(variant, hints_off)` over the rounds (row 4b's two ran back to
/// back in each).
fn paired_ratios(
    res: &mut Results,
    key: &str,
    figures: &BTreeMap<(usize, &str), Vec<f64>>,
    c: usize,
    variant: &str,
    ratio: impl Fn(f64, f64) -> f64,
) {
    let (Some(v), Some(off)) = (figures.get(&(c, variant)), figures.get(&(c, "hints_off"))) else {
        return;
    };
    res.set_rounds(
        key,
        v.iter().zip(off).map(|(&v, &off)| ratio(v, off)).collect(),
    );
}
