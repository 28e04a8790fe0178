//! Issue 7's benchmark: the reactor against graphile-worker (the peer) and the
//! set-based floor, side by side, on one throwaway PostgreSQL, in one run.
//!
//! `bench/run.sh` is the one command (it builds the reactor in release,
//! installs the peer into a scratch folder and passes that folder in
//! `BENCH_PEER_DIR`). Every parameter is a flag and a `BENCH_*` variable of
//! the same name (`--fav-rows 2000` or `BENCH_FAV_ROWS=2000`): see
//! `reactor_vs_peer/cli.rs`, or `cargo bench --bench reactor_vs_peer -- --help`.
//!
//! The parts: `cli` (flags), `cluster` (the server, templates and fresh
//! databases), `contenders` (the reactor and the peer as child processes),
//! `measure` (pgbench, medians, percentiles), `machine` (what ran where),
//! `report` (the results and BENCHMARKS.md), and one module per workload.
//! A new workload is a module with a `run` (and optionally a report section)
//! plus one line in [`WORKLOADS`].
//!
//! No timing is asserted anywhere: the run fails only when a contender does
//! not do the work (a row missing or doubled), never because it was slow.
use anyhow::{bail, Context as _, Result};
use futures::future::BoxFuture;
use std::time::Instant;

mod backlog;
mod cli;
mod cluster;
mod contenders;
mod history;
mod latency;
mod machine;
mod measure;
mod report;
mod thumbnails;
mod wal;
mod work;
mod write;
mod write_path;

use cli::Params;
use cluster::{Ctx, Template};
use report::{Report, Results};

/// One workload: its name in `--workloads`, how it runs, and its own section
/// of the report (after the main table), if it has one.
struct Workload {
    name: &'static str,
    run: for<'a> fn(&'a Ctx, &'a mut Results) -> BoxFuture<'a, Result<()>>,
    section: Option<fn(&Results, &Params) -> String>,
    /// Runs when `--workloads` is not given (`wal` needs a cluster of its own
    /// and `work` takes half an hour: both are asked for by name).
    by_default: bool,
}

/// Every workload, in run order.
const WORKLOADS: &[Workload] = &[
    Workload {
        name: "favorites",
        run: |ctx, res| Box::pin(backlog::run(ctx, backlog::Backlog::Favorites, res)),
        section: None,
        by_default: true,
    },
    Workload {
        name: "usage",
        run: |ctx, res| Box::pin(backlog::run(ctx, backlog::Backlog::Usage, res)),
        section: None,
        by_default: true,
    },
    Workload {
        name: "latency",
        run: |ctx, res| Box::pin(latency::run(ctx, res)),
        section: None,
        by_default: true,
    },
    Workload {
        name: "write",
        run: |ctx, res| Box::pin(write::run(ctx, res)),
        section: None,
        by_default: true,
    },
    Workload {
        name: "work",
        run: |ctx, res| Box::pin(work::run(ctx, res)),
        section: Some(work::render),
        // Writers at full speed leave minutes of backlog: asked for by name.
        by_default: false,
    },
    Workload {
        name: "history",
        run: |ctx, res| Box::pin(history::run(ctx, res)),
        section: Some(history::render),
        by_default: true,
    },
    Workload {
        name: "write-path",
        run: |ctx, res| Box::pin(write_path::run(ctx, res)),
        section: Some(write_path::render),
        by_default: true,
    },
    Workload {
        name: "thumbnails",
        run: |ctx, res| Box::pin(thumbnails::run(ctx, res)),
        section: Some(thumbnails::render),
        by_default: true,
    },
    Workload {
        name: "wal",
        run: |ctx, res| Box::pin(wal::run(ctx, res)),
        section: Some(wal::render),
        by_default: false,
    },
];
async fn run(p: Params) -> Result<()> {
    let known: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
    let unknown = p.unknown_workloads(&known);
    if !unknown.is_empty() {
        bail!(
            "unknown workloads {unknown:?} (known: {})",
            known.join(", ")
        );
    }
    std::fs::create_dir_all(p.work_dir.join("logs"))?;
    let log_dir = p.work_dir.join("logs");
    let mut results = Results::default();

    // One cluster for the whole run.
    let (server_url, local) = match &p.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let pg = reactor::sandbox::cluster::LocalPostgres::start().await?;
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
    if ctx.p.durable {
        if ctx.p.database_url.is_some() {
            bail!("--durable changes server settings: it needs the throwaway cluster (no BENCH_DATABASE_URL)");
        }
        ctx.set_durable(true).await?;
    }
    machine::describe(&ctx, &mut results).await?;
    println!("machine: {:#?}", results.machine);
    ctx.create_templates(!peers.is_empty()).await?;

    let started = Instant::now();
    // A workload that fails is reported (and fails the run at the end), but
    // the others still run and every figure measured so far is written.
    let mut failed = Vec::new();
    for workload in WORKLOADS
        .iter()
        .filter(|w| ctx.p.runs(w.name, w.by_default))
    {
        if let Err(e) = (workload.run)(&ctx, &mut results).await {
            let name = workload.name;
            eprintln!("workload {name} failed: {e:#}");
            results.notes.push(format!("workload {name} FAILED: {e:#}"));
            failed.push(name);
        }
    }
    results
        .machine
        .insert("load average at end".into(), machine::loadavg());
    results.machine.insert(
        "bench duration".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    );
    // Free text for the report (e.g. what else ran on the machine meanwhile).
    results.notes.extend(ctx.p.notes.iter().cloned());
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
    let sections: Vec<_> = WORKLOADS.iter().filter_map(|w| w.section).collect();
    let markdown = Report {
        res: &results,
        p: &ctx.p,
        sections: &sections,
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
