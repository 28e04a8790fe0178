//! The bench's parameters: every one is a flag and a `BENCH_*` variable of
//! the same name (`--fav-rows 2000` or `BENCH_FAV_ROWS=2000`); `--help` lists
//! them. Sizes default to the full run, or to a small one with `--ci`.
use anyhow::{Context as _, Result};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "reactor_vs_peer",
    about = "The reactor against graphile-worker and the set-based floor (bench/run.sh runs it)"
)]
struct Flags {
    /// Small run that only proves the harness works.
    #[arg(long, env = "BENCH_CI", value_parser = clap::builder::BoolishValueParser::new())]
    ci: bool,
    /// Profiles in the favorites backlog [default: 100000, CI: 2000].
    #[arg(long, env = "BENCH_FAV_ROWS")]
    fav_rows: Option<i64>,
    /// Succeeded jobs in the usage backlog, and the history workload's
    /// bulk-insert rows [default: 50000, CI: 2000].
    #[arg(long, env = "BENCH_USAGE_ROWS")]
    usage_rows: Option<i64>,
    /// Handled rows of each history database (issue 12)
    /// [default: 10000,100000,1000000, CI: 1000,5000].
    #[arg(long, env = "BENCH_HISTORY_ROWS")]
    history_rows: Option<String>,
    /// Live-latency samples per contender [default: 1000, CI: 20].
    #[arg(long, env = "BENCH_SAMPLES")]
    samples: Option<usize>,
    /// Rounds of each backlog drain, the reactor's and the floor's in turn;
    /// medians count, with each round's ratio (the peers drain once)
    /// [default: 3, CI: 1].
    #[arg(long, env = "BENCH_DRAIN_REPEATS",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    drain_repeats: Option<usize>,
    /// Concurrent writers for the write workloads [default: 1,8,32, CI: 1,8].
    #[arg(long, env = "BENCH_WRITE_CLIENTS")]
    write_clients: Option<String>,
    /// Seconds per pgbench run [default: 6, CI: 1].
    #[arg(long, env = "BENCH_WRITE_SECS")]
    write_secs: Option<u64>,
    /// pgbench runs per point, alternating; the median counts [default: 3, CI: 1].
    #[arg(long, env = "BENCH_WRITE_REPEATS")]
    write_repeats: Option<usize>,
    /// Also measure with fsync and synchronous_commit on [default: 1, CI: 0].
    #[arg(long, env = "BENCH_WRITE_DURABLE", value_parser = clap::builder::BoolishValueParser::new())]
    write_durable: Option<bool>,
    /// Run every workload durable (fsync, synchronous_commit and
    /// full_page_writes on, as in production): the write rows are then
    /// measured durable only.
    #[arg(long, env = "BENCH_DURABLE", value_parser = clap::builder::BoolishValueParser::new())]
    durable: bool,
    /// Which workloads run, comma-separated [default: all but `wal`, in the
    /// order of `WORKLOADS` in main.rs].
    #[arg(long, env = "BENCH_WORKLOADS")]
    workloads: Option<String>,
    /// Folder holding the peer's `runner.mjs` (bench/run.sh makes it) [default: no peer].
    #[arg(long, env = "BENCH_PEER_DIR")]
    peer_dir: Option<PathBuf>,
    /// Which peer configurations run (`none`: skip).
    #[arg(long, env = "BENCH_PEER", default_value = "default,batched")]
    peer: String,
    /// An earlier results JSON whose figures fill what this run lacks.
    #[arg(long, env = "BENCH_MERGE")]
    merge: Option<PathBuf>,
    /// The reactor binary [default: $CARGO_TARGET_DIR/release/reactor, or target/release/reactor].
    #[arg(long, env = "BENCH_REACTOR_BIN")]
    reactor_bin: Option<PathBuf>,
    /// Extra flags for `reactor run`, e.g. `--batch-size 2000`.
    #[arg(long, env = "BENCH_REACTOR_ARGS", allow_hyphen_values = true)]
    reactor_args: Option<String>,
    /// RUST_LOG of the reactor child (`reactor=debug` for timings).
    #[arg(long, env = "BENCH_REACTOR_LOG", default_value = "info")]
    reactor_log: String,
    /// Poll interval of the poll-only latency variant.
    #[arg(long, env = "BENCH_POLL_INTERVAL", default_value = "100ms")]
    poll_interval: String,
    /// `--outbox-poll` of the outbox-mode variants.
    #[arg(long, env = "BENCH_OUTBOX_POLL", default_value = "50ms")]
    outbox_poll: String,
    /// The markdown report [default: BENCHMARKS.md, CI: <target>/bench/BENCHMARKS-ci.md].
    #[arg(long, env = "BENCH_OUT")]
    out: Option<PathBuf>,
    /// Every figure, for merging [default: <target>/bench/results.json, CI: results-ci.json].
    #[arg(long, env = "BENCH_JSON")]
    json: Option<PathBuf>,
    /// Use this server instead of a throwaway cluster.
    #[arg(long, env = "BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Lines added to the report's notes (e.g. what else ran on the machine).
    #[arg(long, env = "BENCH_NOTE")]
    note: Option<String>,
    /// Keep each workload's database (for EXPLAIN afterwards).
    #[arg(long, env = "BENCH_KEEP_DBS", value_parser = clap::builder::BoolishValueParser::new())]
    keep_dbs: bool,
    /// `cargo bench` appends `--bench`; a harness-less target ignores it.
    #[arg(long, hide = true)]
    bench: bool,
}

pub(crate) struct Params {
    pub(crate) ci: bool,
    pub(crate) fav_rows: i64,
    pub(crate) usage_rows: i64,
    pub(crate) history_rows: Vec<i64>,
    pub(crate) samples: usize,
    pub(crate) drain_repeats: usize,
    pub(crate) write_clients: Vec<usize>,
    pub(crate) write_secs: u64,
    pub(crate) write_repeats: usize,
    pub(crate) write_durable: bool,
    /// Every workload durable (see [`crate::cluster::Ctx::set_durable`]).
    pub(crate) durable: bool,
    /// None: every workload.
    workloads: Option<Vec<String>>,
    pub(crate) peer_dir: Option<PathBuf>,
    peer_modes: Vec<String>,
    pub(crate) merge: Option<PathBuf>,
    pub(crate) reactor_bin: PathBuf,
    pub(crate) reactor_args: Vec<String>,
    pub(crate) reactor_log: String,
    pub(crate) poll_interval: String,
    pub(crate) outbox_poll: String,
    pub(crate) out: PathBuf,
    pub(crate) json: PathBuf,
    pub(crate) database_url: Option<String>,
    pub(crate) notes: Vec<String>,
    pub(crate) keep_dbs: bool,
    /// Scratch files, logs and the CI report: `<target dir>/bench`.
    pub(crate) work_dir: PathBuf,
}

/// The full run's default, or the CI run's.
fn pick<T>(ci: bool, full: T, small: T) -> T {
    if ci {
        small
    } else {
        full
    }
}

/// A comma-separated list; `none` and empty items are dropped.
fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty() && x != "none")
        .collect()
}

fn numbers<T: std::str::FromStr>(flag: &str, s: &str) -> Result<Vec<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    list(s)
        .iter()
        .map(|n| n.parse().with_context(|| format!("--{flag}: {n:?}")))
        .collect()
}

impl Params {
    /// Call before any thread starts (it clears empty `BENCH_*` variables).
    pub(crate) fn parse() -> Result<Self> {
        // An empty variable means unset, as it did before clap (which would
        // reject `BENCH_FAV_ROWS=` as an empty number).
        for (name, value) in std::env::vars_os() {
            if value.is_empty() && name.to_string_lossy().starts_with("BENCH_") {
                std::env::remove_var(name);
            }
        }
        let f = Flags::parse();
        let ci = f.ci;
        // Cargo's own variable, so a bench run writes where the build does.
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target"));
        let work_dir = target.join("bench");
        Ok(Params {
            ci,
            fav_rows: f.fav_rows.unwrap_or(pick(ci, 100_000, 2_000)),
            usage_rows: f.usage_rows.unwrap_or(pick(ci, 50_000, 2_000)),
            history_rows: numbers(
                "history-rows",
                f.history_rows
                    .as_deref()
                    .unwrap_or(pick(ci, "10000,100000,1000000", "1000,5000")),
            )?,
            samples: f.samples.unwrap_or(pick(ci, 1000, 20)),
            drain_repeats: f.drain_repeats.unwrap_or(pick(ci, 3, 1)),
            write_clients: numbers(
                "write-clients",
                f.write_clients
                    .as_deref()
                    .unwrap_or(pick(ci, "1,8,32", "1,8")),
            )?,
            write_secs: f.write_secs.unwrap_or(pick(ci, 6, 1)),
            write_repeats: f.write_repeats.unwrap_or(pick(ci, 3, 1)),
            write_durable: f.write_durable.unwrap_or(!ci),
            durable: f.durable,
            workloads: f.workloads.as_deref().map(list),
            peer_dir: f.peer_dir,
            peer_modes: list(&f.peer),
            merge: f.merge,
            reactor_bin: f
                .reactor_bin
                .unwrap_or_else(|| target.join("release/reactor")),
            reactor_args: f
                .reactor_args
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            reactor_log: f.reactor_log,
            poll_interval: f.poll_interval,
            outbox_poll: f.outbox_poll,
            out: f.out.unwrap_or_else(|| {
                if ci {
                    work_dir.join("BENCHMARKS-ci.md")
                } else {
                    PathBuf::from("BENCHMARKS.md")
                }
            }),
            json: f
                .json
                .unwrap_or_else(|| work_dir.join(pick(ci, "results.json", "results-ci.json"))),
            database_url: f.database_url,
            notes: f
                .note
                .as_deref()
                .unwrap_or_default()
                .split('\n')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect(),
            keep_dbs: f.keep_dbs,
            work_dir,
        })
    }

    /// Whether `workload` was asked for (without `--workloads`, those that run
    /// by default).
    pub(crate) fn runs(&self, workload: &str, by_default: bool) -> bool {
        match &self.workloads {
            Some(asked) => asked.iter().any(|w| w == workload),
            None => by_default,
        }
    }

    /// The workloads asked for that do not exist (a typo must not pass silently).
    pub(crate) fn unknown_workloads(&self, known: &[&str]) -> Vec<String> {
        self.workloads
            .iter()
            .flatten()
            .filter(|w| !known.contains(&w.as_str()))
            .cloned()
            .collect()
    }

    pub(crate) fn peers(&self) -> Vec<String> {
        if self.peer_dir.is_some() {
            self.peer_modes.clone()
        } else {
            Vec::new()
        }
    }
}
