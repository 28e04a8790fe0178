//! What the run ran on: hardware, load, PostgreSQL settings, binaries.
use crate::cluster::Ctx;
use crate::report::Results;
use anyhow::Result;
use std::path::Path;
use tokio::process::Command;

pub(crate) fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| {
            l.split_once(':')
                .map(|x| x.1)
                .unwrap_or(l)
                .trim()
                .to_string()
        })
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) async fn command_line(cmd: &str, args: &[&str], dir: Option<&Path>) -> Option<String> {
    let mut c = Command::new(cmd);
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let out = c.output().await.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) async fn describe(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let m = &mut res.machine;
    m.insert(
        "date".into(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
    );
    m.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    if let Some(cpu) = first_line_with("/proc/cpuinfo", "model name") {
        m.insert("cpu".into(), cpu);
    }
    if let Some(mem) = first_line_with("/proc/meminfo", "MemTotal") {
        let kb: f64 = mem
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        m.insert("memory".into(), format!("{:.1} GiB", kb / 1024.0 / 1024.0));
    }
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        m.insert("kernel".into(), k.trim().to_string());
    }
    m.insert("load average at start".into(), loadavg());
    let version: String = ctx.admin.query_one("select version()", &[]).await?.get(0);
    m.insert("postgres".into(), version);
    let settings: Vec<String> = ctx
        .admin
        .query(
            "select name || '=' || setting || coalesce(unit, '') from pg_settings
             where name in ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'max_wal_size')
             order by name",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    m.insert("postgres settings".into(), settings.join(", "));
    m.insert(
        "postgres server".into(),
        if ctx.p.database_url.is_some() {
            "BENCH_DATABASE_URL (not throwaway)".into()
        } else {
            "throwaway cluster (reactor::sandbox::cluster::LocalPostgres), same host".into()
        },
    );
    let commit = command_line("git", &["rev-parse", "--short", "HEAD"], None)
        .await
        .unwrap_or_else(|| "unknown".into());
    let dirty = command_line(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        None,
    )
    .await
    .map(|s| !s.is_empty())
    .unwrap_or(false);
    m.insert(
        "reactor".into(),
        format!(
            "{} at {commit}{}{}",
            ctx.p.reactor_bin.display(),
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            },
            if ctx.p.reactor_args.is_empty() {
                String::new()
            } else {
                format!(", extra flags {}", ctx.p.reactor_args.join(" "))
            }
        ),
    );
    if let Some(dir) = &ctx.p.peer_dir {
        let node = command_line("node", &["--version"], None)
            .await
            .unwrap_or_default();
        let gw = command_line("node", &["runner.mjs", "version"], Some(dir))
            .await
            .unwrap_or_default();
        m.insert(
            "peer".into(),
            format!("graphile-worker {gw} on node {node}"),
        );
    }
    Ok(())
}
