//! The workload's section of the report.
use super::{FLOOR, LATENCY_MODES};
use crate::cli::Params;
use crate::report::{Report, Results};

/// "median (min–max)" of `key`, formatted with `f`.
fn spread(res: &Results, key: &str, f: impl Fn(f64) -> String) -> String {
    match res.get(key) {
        None => "—".into(),
        Some(m) => match (
            res.get(&format!("{key}.min")),
            res.get(&format!("{key}.max")),
        ) {
            (Some(lo), Some(hi)) if lo != hi => format!("{} ({}–{})", f(m), f(lo), f(hi)),
            _ => f(m),
        },
    }
}

/// The report's section (empty when the workload did not run).
pub(crate) fn render(res: &Results, p: &Params) -> String {
    let tables = [
        ("generation_jobs", "`generation_jobs`"),
        ("own", "own table (`watch_table`)"),
    ];
    let int = |v: f64| format!("{v:.0}");
    let ratio = |v: f64| format!("{v:.3}");
    let mut write = String::new();
    let mut all_met = true;
    let mut any = false;
    for (table, title) in tables {
        for c in &p.write_clients {
            let k = |v: &str| format!("wal.{table}.c{c}.{v}");
            if res.get(&k("wal")).is_none() {
                continue;
            }
            any = true;
            // Issue 22: the reactor's own share, WAL mode ÷ the decoding floor.
            let share = res
                .get(&k("wal.vs_without"))
                .zip(res.get(&k(&format!("{FLOOR}.vs_without"))))
                .map(|(wal, floor)| wal / floor);
            let met = share.map(|r| r >= 0.95);
            all_met &= met.unwrap_or(false);
            write.push_str(&format!(
                "| {title} | {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                spread(res, &k("without"), int),
                spread(res, &k("notify"), int),
                spread(res, &k("outbox"), int),
                spread(res, &k("wal"), int),
                spread(res, &k("notify.vs_without"), ratio),
                spread(res, &k("outbox.vs_without"), ratio),
                spread(res, &k("wal.vs_without"), ratio),
                spread(res, &k(&format!("{FLOOR}.vs_without")), ratio),
                spread(res, &k("replica_without.vs_without"), ratio),
                share.map_or("—".into(), |r| format!("**{r:.2}**")),
                Report::verdict(met),
            ));
        }
    }
    if !any {
        return String::new();
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut cpu = String::new();
    for (table, title) in tables {
        for c in &p.write_clients {
            let k = |v: &str| format!("wal.{table}.c{c}.{v}");
            let (wal_key, floor_key) = (k("wal.cpu_us"), k(&format!("{FLOOR}.cpu_us")));
            let (Some(wal), Some(floor), Some(tps)) =
                (res.get(&wal_key), res.get(&floor_key), res.get(&k("wal")))
            else {
                continue;
            };
            // The reactor's CPU beyond the floor's, at WAL mode's insert rate,
            // as a share of every core the writers could have used.
            let extra = (wal - floor) * tps / 1e6 / cores;
            cpu.push_str(&format!(
                "| {title} | {c} | {} | {} | {:+.1} % | {} |\n",
                spread(res, &wal_key, |v| format!("{v:.1}")),
                spread(res, &floor_key, |v| format!("{v:.1}")),
                extra * 100.0,
                Report::verdict(Some(extra <= 0.05)),
            ));
        }
    }
    let mut volume = String::new();
    for (table, title) in tables {
        for c in &p.write_clients {
            let k = |v: &str| format!("wal.{table}.c{c}.wal_bytes_per_insert.{v}");
            let per = |v: &str| res.get(&k(v));
            let vs = match (per("wal"), per("replica_without")) {
                (Some(w), Some(r)) if r > 0.0 => format!("{:.2}", w / r),
                _ => "—".into(),
            };
            volume.push_str(&format!(
                "| {title} | {c} | {} | {} | {} | {} | {} | {} | {vs} |\n",
                spread(res, &k("replica_without"), int),
                spread(res, &k("replica_notify"), int),
                spread(res, &k("without"), int),
                spread(res, &k("notify"), int),
                spread(res, &k("outbox"), int),
                spread(res, &k("wal"), int),
            ));
        }
    }
    let mut lat = String::new();
    for mode in LATENCY_MODES {
        let k = |q: &str| format!("wal.lat.{q}.{mode}");
        let Some(p99) = res.get(&k("p99")) else {
            continue;
        };
        let ms = |q: &str| {
            res.get(&k(q))
                .map(|v| format!("{v:.1} ms"))
                .unwrap_or_else(|| "—".into())
        };
        let (target, met) = if mode == "wal" {
            ("≤ 20 ms", Report::verdict(Some(p99 <= 20.0)))
        } else {
            ("—", "")
        };
        lat.push_str(&format!(
            "| {mode} | {} | {} | {} | {} | {target} | {met} |\n",
            ms("p50"),
            ms("p90"),
            ms("p99"),
            ms("max"),
        ));
    }
    let mut slot = String::new();
    for (table, title) in tables {
        for c in &p.write_clients {
            let k = |v: &str| format!("wal.{table}.c{c}.{v}");
            if res.get(&k("slot_lag_bytes")).is_none() {
                continue;
            }
            slot.push_str(&format!(
                "| {title} | {c} | {} | {} |\n",
                spread(res, &k("slot_lag_bytes"), |v| format!(
                    "{:.0} kB",
                    v / 1024.0
                )),
                spread(res, &k("slot_catch_up_secs"), |v| format!("{v:.2} s")),
            ));
        }
    }
    let drains = match (
        res.get("wal.drain.fav.notify"),
        res.get("wal.drain.fav.wal"),
    ) {
        (Some(n), Some(w)) => format!("| {n:.2} s | {w:.2} s | {:.2} |\n", w / n),
        _ => "| — | — | — |\n".into(),
    };
    let outbox = if p.outbox_poll.is_empty() {
        String::new()
    } else {
        format!(", outbox polled every {}", p.outbox_poll)
    };
    format!(
        "## WAL mode (issue 14)\n\n\
         Two throwaway clusters of the workload's own, both **durable** (`fsync`, `synchronous_commit` \
         and `full_page_writes` on in postgresql.conf, checked with `SHOW` before measuring): one with \
         `wal_level = logical` (every variant), one with `wal_level = replica` (the same inserts without \
         triggers and with notify, for WAL volume). Single-row inserts as the service with pgbench \
         (`-M prepared`), {secs} s per run, {n} repeats; within each repeat the variants alternate, and \
         **only the measured variant's reactor runs** (started, ready, in WAL mode its slot in use, no \
         other slot on the cluster; stopped and its temporary slot gone before the next run); the \
         order rotates with each repeat, after one unrecorded warm-up run per database. Figures \
         are medians of the repeats with (min–max); ratios are the median of each repeat's ratio to *no \
         triggers* on the logical cluster, whose runs were back to back.\n\n\
         ### Write overhead: inserts/s\n\n\
         | table | writers | no triggers | notify | outbox | wal | notify ÷ none | outbox ÷ none | wal ÷ none \
         | decoding floor ÷ none | replica, no triggers ÷ logical, none | wal ÷ decoding floor | ≥ 0.95 |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n{write}\n\
         *Decoding floor*: the database in WAL mode with no reactor, and PostgreSQL's own `pg_recvlogical` \
         streaming the same publication to /dev/null: what any logical-decoding consumer costs the \
         writers on this machine, the server's decoding alone.\n\n\
         - WAL mode at 0.95 of the decoding floor or more (the reactor's own share within 5 %) at every writer count, both tables: {all}\n\n\
         ### The consumer's CPU (µs per insert)\n\n\
         Read from `/proc` over each run: the consumer's process and the server processes serving it \
         (its walsender and, for the reactor, every session it opened). The reactor's extra share is \
         its CPU beyond the floor's at WAL mode's insert rate, over the machine's {cores} cores: the \
         part of the writers' rate item 2 bounds at 5 %, without the spread of the rate itself \
         between runs.\n\n\
         | table | writers | wal: the reactor and its sessions | decoding floor: pg_recvlogical and its walsender \
         | the reactor's extra share of the machine | ≤ 5 % |\n\
         |---|---|---|---|---|---|\n{cpu}\n\
         ### WAL written per insert (bytes, from `pg_current_wal_lsn()` before and after each run)\n\n\
         | table | writers | replica: no triggers | replica: notify | logical: no triggers | logical: notify \
         | logical: outbox | logical: wal | wal ÷ replica, no triggers |\n\
         |---|---|---|---|---|---|---|---|---|\n{volume}\n\
         ### Live latency, insert commit → collection visible ({samples} samples per mode, durable, logical cluster{outbox})\n\n\
         | mode | p50 | p90 | p99 | max | target | met |\n|---|---|---|---|---|---|---|\n{lat}\n\
         ### The slot after each burst\n\n\
         Bytes of WAL between the server's position and the slot's `confirmed_flush_lsn`, read in the \
         statement right after pgbench ended, and the time until the slot confirmed that position.\n\n\
         | table | writers | lag at the end of the burst | caught up after |\n|---|---|---|---|\n{slot}\n\
         ### Backlog drain (the start-up replay), {fav} profiles written while no reactor ran\n\n\
         | notify mode | wal mode | wal ÷ notify |\n|---|---|---|\n{drains}\n",
        secs = p.write_secs,
        n = p.write_repeats,
        all = Report::verdict(Some(all_met)),
        samples = p.samples,
        fav = p.fav_rows,
    )
}
