//! The results of a run (every figure by key, JSON for merging) and the
//! markdown report written to BENCHMARKS.md.
use crate::cli::Params;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every figure of a run, by key (e.g. `fav.drain.reactor` in seconds).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Results {
    pub(crate) metrics: BTreeMap<String, f64>,
    /// Keys taken from `BENCH_MERGE` rather than measured in this run.
    #[serde(default)]
    pub(crate) merged: Vec<String>,
    #[serde(default)]
    pub(crate) machine: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) notes: Vec<String>,
}

impl Results {
    pub(crate) fn set(&mut self, key: impl Into<String>, value: f64) {
        let key = key.into();
        println!("  {key} = {value:.4}");
        self.metrics.insert(key, value);
    }

    pub(crate) fn get(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).copied()
    }

    /// Sets `<key>.ratio` (the median of `ratios`, one a round) and
    /// `<key>.ratio_min`/`_max`, which [`Report`] shows as "(rounds lo–hi)".
    /// Each round measures both sides of its ratio back to back, so a
    /// round's ratio is free of what changed between rounds.
    pub(crate) fn set_rounds(&mut self, key: &str, ratios: Vec<f64>) {
        if ratios.is_empty() {
            return;
        }
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        self.set(format!("{key}.ratio"), crate::measure::median(ratios));
        self.set(format!("{key}.ratio_min"), lo);
        self.set(format!("{key}.ratio_max"), hi);
    }
}

pub(crate) fn fmt_secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

pub(crate) fn fmt_rate(rows: f64, secs: f64) -> String {
    let r = rows / secs;
    if r >= 1000.0 {
        format!("{:.1}k/s", r / 1000.0)
    } else {
        format!("{r:.0}/s")
    }
}

pub(crate) fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

pub(crate) struct Report<'a> {
    pub(crate) res: &'a Results,
    pub(crate) p: &'a Params,
    /// The workloads' own sections, after the main table.
    pub(crate) sections: &'a [fn(&Results, &Params) -> String],
}

impl Report<'_> {
    pub(crate) fn get(&self, key: &str) -> Option<f64> {
        self.res.get(key)
    }

    pub(crate) fn mark(&self, key: &str) -> &'static str {
        if self.res.merged.iter().any(|k| k == key) {
            " †"
        } else {
            ""
        }
    }

    pub(crate) fn cell_time(&self, key: &str, rows: f64) -> String {
        match self.get(key) {
            Some(s) => format!("{} ({}){}", fmt_secs(s), fmt_rate(rows, s), self.mark(key)),
            None => "—".into(),
        }
    }

    pub(crate) fn cell_ms(&self, key: &str) -> String {
        match self.get(key) {
            Some(v) => format!("{v:.2} ms{}", self.mark(key)),
            None => "—".into(),
        }
    }

    /// The median of the rounds' paired ratios under `key` (see the write
    /// workload) with their range, or `fallback` (a ratio of medians) when
    /// the run has none.
    fn paired(&self, key: &str, fallback: f64) -> (f64, String) {
        let at = |what: &str| self.get(&format!("{key}.{what}"));
        match (at("ratio"), at("ratio_min"), at("ratio_max")) {
            (Some(r), Some(lo), Some(hi)) => (r, format!(" (rounds {lo:.2}–{hi:.2})")),
            _ => (fallback, String::new()),
        }
    }

    pub(crate) fn verdict(ok: Option<bool>) -> &'static str {
        match ok {
            Some(true) => "**yes**",
            Some(false) => "**no**",
            None => "not measured",
        }
    }

    pub(crate) fn render(&self) -> String {
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
            // The median of the rounds' own ratios, when the run had rounds.
            let by_rounds = reactor
                .zip(floor)
                .map(|(r, f)| self.paired(&format!("{pre}.drain.reactor_floor"), r / f));
            let met = match (reactor, batched, by_rounds.as_ref()) {
                (Some(r), Some(b), Some((of_floor, _))) => Some(b / r >= 1.5 && *of_floor <= 3.0),
                _ => None,
            };
            let detail = match (reactor, by_rounds.as_ref()) {
                (Some(r), Some((of_floor, range))) => format!(
                    "{}; {of_floor:.2}× the floor's time{range}",
                    batched
                        .map(|b| format!("{:.2}× gw batched's throughput", b / r))
                        .unwrap_or_else(|| "gw batched not measured".into()),
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
                by_rounds.map_or_else(|| "—".into(), |(r, _)| format!("{r:.2}")),
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
                    "fsync, synchronous_commit and full_page_writes on"
                };
                s.push_str(&format!(
                    "| 4. write overhead of the notify triggers, {c} client(s), {how}: inserts/s with triggers (overhead, i.e. tps lost) | {with:.0} tps ({overhead:+.1}%){outbox} | — | — | without triggers: {without:.0} tps | — | — | {:.2} | {target} | {met} |\n",
                    with / without
                ));
            }
        }

        for mode in ["fast", "durable"] {
            for c in &self.p.write_clients {
                let (Some(hints), Some(off)) = (
                    self.get(&format!("write.{mode}.c{c}.hints")),
                    self.get(&format!("write.{mode}.c{c}.hints_off")),
                ) else {
                    continue;
                };
                let key = |variant: &str| format!("write.{mode}.c{c}.{variant}");
                let (ratio, rounds) = self.paired(&key("hints"), hints / off);
                // Issue 22's targets are for durable writers.
                let target = |ratio: f64| match (mode, *c) {
                    ("durable", 32) => (
                        "≥ 0.95 at 32 durable writers",
                        Self::verdict(Some(ratio >= 0.95)),
                    ),
                    ("durable", 1) => (
                        "≥ 0.90 at 1 durable writer",
                        Self::verdict(Some(ratio >= 0.90)),
                    ),
                    _ => ("—", ""),
                };
                let (target_rate, met) = target(ratio);
                let how = if mode == "fast" {
                    "fsync off (the throwaway cluster)"
                } else {
                    "fsync, synchronous_commit and full_page_writes on"
                };
                let cold = self
                    .get(&format!("write.{mode}.c{c}.hints_cold"))
                    .map(|cold| {
                        format!(
                            " (from cold, the quiet's onset included: {cold:.0} tps, {:.2})",
                            cold / off
                        )
                    })
                    .unwrap_or_default();
                s.push_str(&format!(
                    "| 4b. hint cost alone (issue 22): own watched table, no route, reactor listening (quiet under load), {c} client(s), {how} | {hints:.0} tps{cold} | — | — | same table, hint triggers disabled: {off:.0} tps | — | — | {ratio:.2}{rounds} | {target_rate} | {met} |\n"
                ));
                if let (Some(hints_cpu), Some(off_cpu)) = (
                    self.get(&format!("{}.cpu_us", key("hints"))),
                    self.get(&format!("{}.cpu_us", key("hints_off"))),
                ) {
                    let (ratio, rounds) = self.paired(&key("hints.cpu"), off_cpu / hints_cpu);
                    let (target, met) = target(ratio);
                    s.push_str(&format!(
                        "| 4b. the same by the machine's busy CPU per insert (µs; ratio: without ÷ with, the rate that CPU allows), {c} client(s) | {hints_cpu:.1} µs | — | — | hint triggers disabled: {off_cpu:.1} µs | — | — | {ratio:.2}{rounds} | {target} | {met} |\n"
                    ));
                }
                if let Some(inert) = self.get(&key("inert_trigger")) {
                    let (ratio, rounds) = self.paired(&key("inert_trigger"), inert / off);
                    s.push_str(&format!(
                        "| 4c. the floor of any design that keeps a row trigger on the table: one trigger `WHEN (false)`, {c} client(s), {how} | {inert:.0} tps | — | — | no enabled trigger: {off:.0} tps | — | — | {ratio:.2}{rounds} | (row 4b's floor) | |\n",
                    ));
                }
                if let Some(poll) = self.get(&key("hints_poll")) {
                    let (ratio, rounds) = self.paired(&key("hints_poll"), poll / off);
                    s.push_str(&format!(
                        "| 4d. poll mode (`reactor notify-mode poll`, issue 22): the same watched table in a database in poll mode, its reactor paging, {c} client(s), {how} | {poll:.0} tps | — | — | hint triggers disabled, notify mode: {off:.0} tps | — | — | {ratio:.2}{rounds} | ≥ 0.98 | {} |\n",
                        Self::verdict(Some(ratio >= 0.98))
                    ));
                }
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
        for section in self.sections {
            s.push_str(&section(r, self.p));
        }
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

pub(crate) const METHOD: &str = "## How each figure is measured

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
  effect. The floor and the reactor drain `--drain-repeats` times (3 in a full run), in turn,
  each on a fresh backlog: their cells are the medians, and *reactor / floor* is the median of
  each round's own ratio, with the range of the rounds. The peers drain once.
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
  median of several alternating runs, each after three unrecorded seconds of the same load
  (sustained load: a table goes quiet after a second of it, about 1.5 s at 32 writers). Row 4b's
  *from cold* figure is the same run without the warm-up, on a table whose quiet has run out: it
  includes the onset, at the notifying rate. Row 4d runs row 4b's inserts on a database switched
  to poll mode (`reactor notify-mode poll`: the hint triggers disabled, its reactor paging every
  second). Rows 4b–4d give the median of each round's ratio (both variants ran in the round,
  row 4b's back to back) with the rounds' range. The *by CPU* row divides the machine's busy time over the run (user,
  system and interrupts of both cores in `/proc/stat`: not idle, I/O wait or time a hypervisor
  stole) by the inserts committed; on cores the writers keep busy, that is what bounds their
  rate, without the spread of the disk's flushes and of stolen time. The *fast* rows run on the
  throwaway cluster's settings (fsync off, asynchronous commit), which hide the cost of NOTIFY's
  commit-time lock; the *durable* rows switch `fsync`, `synchronous_commit` and
  `full_page_writes` on, where the lock is held across the WAL flush, as in production. With
  `--durable` (`BENCH_DURABLE=1`) the whole run is durable (the machine table's settings say so)
  and only durable write rows are measured.
- **Peak RSS (6).** `VmHWM` from `/proc/<pid>/status` of the reactor process right after the
  drain finished.
- **Ratios** are reactor ÷ other on the figure shown (time or milliseconds: below 1 means the
  reactor is faster; write overhead: tps with ÷ tps without).
";
