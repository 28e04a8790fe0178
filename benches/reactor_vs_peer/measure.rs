//! Measuring helpers shared by the workloads: pgbench runs, the server's
//! clock, medians and percentiles.
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
    pgbench_paced(pgbench, script, url, clients, secs, None).await
}

/// [`pgbench`] at most `rate` transactions a second in all (`-R`), when given.
pub(crate) async fn pgbench_paced(
    pgbench: &Path,
    script: &Path,
    url: &str,
    clients: usize,
    secs: u64,
    rate: Option<u32>,
) -> Result<f64> {
    let paced: Vec<String> = rate
        .map(|r| vec!["-R".into(), r.to_string()])
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
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no tps in pgbench output:\n{stdout}"))
}
