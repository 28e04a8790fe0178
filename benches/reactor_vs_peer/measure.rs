//! Measuring helpers shared by the workloads: pgbench runs, the server's
//! clock, CPU time, medians and percentiles.
use anyhow::{anyhow, bail, Context as _, Result};
use std::path::{Path, PathBuf};
use tokio::process::Command;
use tokio_postgres::Client;

/// The server's clock, in epoch seconds (drains are timed on it).
pub(crate) async fn epoch_now(c: &Client) -> Result<f64> {
    Ok(
        c.query_one("select extract(epoch from clock_timestamp())::float8", &[])
            .await?
            .get(0),
    )
}

pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The pgbench next to initdb on PATH, else the newest under /usr/lib/postgresql.
pub(crate) fn find_pgbench() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("pgbench").is_file() && dir.join("initdb").is_file() {
                return Some(dir.join("pgbench"));
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin/pgbench")))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Transactions per second of one pgbench run of `script`.
pub(crate) async fn pgbench(
    pgbench: &Path,
    script: &Path,
    url: &str,
    clients: usize,
    secs: u64,
) -> Result<f64> {
    Ok(pgbench_run(pgbench, script, url, clients, secs, None)
        .await?
        .tps)
}

/// Clock ticks a second of the times in /proc (USER_HZ, 100 on Linux).
pub(crate) const TICKS_PER_SEC: f64 = 100.0;

/// CPU time used so far (user + system, in ticks) by `pid`; None once it is gone.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields after it are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(field(11)? + field(12)?)
}

/// The whole machine's busy CPU time so far, in seconds over all cores: user,
/// nice, system, irq and softirq of /proc/stat, not idle, I/O wait or the
/// time a hypervisor stole. On a machine whose cores the writers keep busy,
/// busy time per insert is what bounds their rate, without the spread that
/// steal and the disk's flush times give the rate itself.
pub(crate) fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal …
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| ticks.get(i).copied())
        .sum::<Option<u64>>()?;
    Some(busy as f64 / TICKS_PER_SEC)
}

/// What one pgbench run did.
pub(crate) struct PgbenchRun {
    pub(crate) tps: f64,
    /// Transactions committed.
    pub(crate) transactions: u64,
    /// A paced run's transactions, each one's own time (ms): its time in
    /// pgbench's per-transaction log less its wait for its turn (its schedule
    /// lag). Empty for a run at full speed.
    pub(crate) own_ms: Vec<f64>,
}

/// One pgbench run of `script`, at most `rate` transactions a second in all
/// (`-R`) when given.
pub(crate) async fn pgbench_run(
    pgbench: &Path,
    script: &Path,
    url: &str,
    clients: usize,
    secs: u64,
    rate: Option<u32>,
) -> Result<PgbenchRun> {
    // A paced run logs each transaction (few: the pace bounds them).
    let log_dir = rate.map(|_| tempfile::tempdir()).transpose()?;
    let paced: Vec<String> = rate
        .zip(log_dir.as_ref())
        .map(|(r, dir)| {
            vec![
                "-R".into(),
                r.to_string(),
                "-l".into(),
                format!("--log-prefix={}", dir.path().join("tx").display()),
            ]
        })
        .unwrap_or_default();
    let out = Command::new(pgbench)
        .args(["-n", "-M", "prepared"])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(&paced)
        .args(["-T", &secs.to_string(), "-f"])
        .arg(script)
        .arg(url)
        .output()
        .await
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}\n{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let figure = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no {prefix:?} in pgbench output:\n{stdout}"))
    };
    let own_ms = match &log_dir {
        Some(dir) => own_times(dir.path())?,
        None => Vec::new(),
    };
    Ok(PgbenchRun {
        own_ms,
        tps: figure("tps = ")?.parse()?,
        transactions: figure("number of transactions actually processed: ")?
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()?,
    })
}

/// Each transaction's own time (ms) in the per-transaction logs of a paced
/// pgbench run in `dir` (one file a thread): the time it took less its
/// schedule lag (`client_id transaction_no time script_no time_epoch time_us
/// schedule_lag …`, times in µs).
fn own_times(dir: &Path) -> Result<Vec<f64>> {
    let mut own = Vec::new();
    for file in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(file?.path())?;
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(time), Some(lag)) = (fields.get(2), fields.get(6)) else {
                bail!("a pgbench log line without a schedule lag: {line:?}");
            };
            let (time, lag): (f64, f64) = (
                time.parse()
                    .with_context(|| format!("pgbench log line {line:?}"))?,
                lag.parse()
                    .with_context(|| format!("pgbench log line {line:?}"))?,
            );
            own.push((time - lag) / 1000.0);
        }
    }
    Ok(own)
}
