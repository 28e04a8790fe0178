//! Workload 4: the write overhead of the notify triggers (pgbench inserts
//! with them, without them, and in outbox mode).
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

pub(crate) async fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
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
            ctx.set_durable(true).await?;
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
            ctx.set_durable(false).await?;
        }
    }
    Ok(())
}
