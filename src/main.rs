use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Turns a Supabase/Postgres database into an event-driven system.
#[derive(Parser, Debug)]
#[command(name = "reactor", version, about, args_override_self = true)]
struct Cli {
    /// Log format.
    #[arg(long, env = "REACTOR_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply the embedded schema, RLS policies and triggers (idempotent).
    Migrate {
        /// Postgres connection string (not needed with --print).
        #[arg(long, env = "DATABASE_URL", required_unless_present = "print")]
        database_url: Option<String>,
        /// Write the whole schema as one SQL file to stdout (for supabase/migrations/),
        /// with the bookkeeping rows that make a later `reactor migrate` agree it is applied.
        #[arg(long)]
        print: bool,
        /// Migrate even when a table the reactor secures has permissive policies it did
        /// not install (they are kept and named in a warning).
        #[arg(long, env = "REACTOR_ALLOW_FOREIGN_POLICIES")]
        allow_foreign_policies: bool,
    },
    /// Show or switch how hints reach the reactor: NOTIFY, the outbox table, the WAL or none (poll); no trigger fires in wal and poll.
    NotifyMode {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// notify, outbox, wal or poll; omit to show the current mode.
        mode: Option<reactor::store::notify_mode::Mode>,
    },
    /// The whole pipeline offline: throwaway Postgres, local provider, one job per mode.
    Demo {
        /// Use this database instead of a throwaway one.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// Where the demo's images are stored.
        #[arg(long, env = "REACTOR_STORAGE_URL", default_value = "./storage")]
        storage_url: String,
    },
    /// Run the reactor: listen, claim, dispatch, replay (until SIGINT/SIGTERM).
    Run(Box<reactor::config::RunConfig>),
    /// Print a line per job status change, live (channel job_status).
    Watch {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Only this owner's jobs.
        #[arg(long)]
        owner: Option<uuid::Uuid>,
        /// Print the notification payloads as they are.
        #[arg(long)]
        json: bool,
    },
    /// Backlog per handler, in-flight and stuck jobs, dead rows, this month's usage per plan.
    Status {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// In-flight jobs older than this are reported as stuck.
        #[arg(long, env = "REACTOR_STUCK_AFTER", default_value = "10m", value_parser = humantime::parse_duration)]
        stuck_after: Duration,
        /// TOML file declaring your own job tables (as for `reactor run`): their handlers are listed too.
        #[arg(long, env = "REACTOR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Bring a dead row back: `reactor retry generation_jobs <id>`.
    Retry {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// TOML file declaring your own job tables (as for `reactor run`): their rows can be retried too.
        #[arg(long, env = "REACTOR_CONFIG")]
        config: Option<PathBuf>,
        /// The row's table (e.g. generation_jobs, profiles, public.image_jobs), or one
        /// handler's name as `reactor status` lists it (e.g. http:public.image_jobs).
        table: String,
        /// The row's primary key.
        id: String,
    },
    /// Check a deployment with `reactor run`'s configuration and say how to fix
    /// what is wrong (exits non-zero when a check failed; warnings exit 0).
    Doctor {
        #[command(flatten)]
        cfg: Box<reactor::config::RunConfig>,
        /// Print the checks as a JSON array of {check, status, message, fix}.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the reactor's /healthz answers (for container health checks).
    Healthcheck {
        #[arg(long, env = "REACTOR_HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: std::net::SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints its own story; the daemon logs what it does.
    let default_filter = match cli.command {
        Command::Demo { .. }
        | Command::Watch { .. }
        | Command::Status { .. }
        | Command::Doctor { .. } => "warn",
        _ => "info,tokio_postgres=warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Pretty => logs.init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    match cli.command {
        Command::Migrate {
            database_url,
            print,
            allow_foreign_policies,
        } => {
            if print {
                print!("{}", reactor::store::migrate::script());
                return Ok(());
            }
            let database_url = database_url.context("DATABASE_URL is required")?;
            let mut client = reactor::store::db::connect(&database_url).await?;
            let options = reactor::store::migrate::Options {
                allow_foreign_policies,
            };
            let report = reactor::store::migrate::run_with(&mut client, options)
                .await
                .context("reactor migrate")?;
            println!(
                "migrate: {} applied, {} already applied",
                report.applied.len(),
                report.skipped
            );
            for policy in &report.foreign_policies {
                println!("warning: kept {policy}");
            }
            if let Some(realtime) = &report.realtime {
                println!("realtime: {realtime}");
            }
        }
        Command::NotifyMode { database_url, mode } => {
            let client = reactor::store::db::connect(&database_url).await?;
            let settings = match mode {
                Some(mode) => reactor::store::notify_mode::set(&client, mode).await,
                None => reactor::store::notify_mode::show(&client).await,
            }
            .map_err(reactor::store::db::DbError::from)
            .context("reactor notify-mode")?;
            println!("{settings}");
            if mode.is_some_and(|m| m.as_str() != settings.effective) {
                anyhow::bail!(
                    "reactor.settings now says {}, but the database setting reactor.notify_mode overrides it \
                     (remove it with: alter database <db> reset reactor.notify_mode)",
                    settings.table
                );
            }
            if settings.effective == "wal" {
                println!(
                    "hint triggers disabled; running reactors now read publication reactor through a temporary replication slot each (their role needs REPLICATION)"
                );
            }
            if settings.effective == "poll" {
                println!(
                    "hint triggers disabled; running reactors now find new rows by paging the pending indexes every REACTOR_POLL_INTERVAL"
                );
            }
            if settings.effective == "outbox" {
                println!(
                    "hints now go to reactor.outbox: run the reactor with REACTOR_OUTBOX_POLL (e.g. 200ms) to act on them at once"
                );
            }
        }
        Command::Demo {
            database_url,
            storage_url,
        } => reactor::cli::demo::run(database_url, &storage_url).await?,
        Command::Run(cfg) => {
            let shutdown = tokio_util::sync::CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            let app = reactor::app::start(*cfg, shutdown).await?;
            app.handle.await??;
        }
        Command::Watch {
            database_url,
            owner,
            json,
        } => reactor::cli::watch::run(&database_url, owner, json, std::io::stdout()).await?,
        Command::Status {
            database_url,
            stuck_after,
            config,
        } => status(&database_url, stuck_after, config.as_deref()).await?,
        Command::Retry {
            database_url,
            config,
            table,
            id,
        } => {
            // The config is checked before anything connects.
            let specs = reactor::http::ops::specs(config.as_deref())?;
            if reactor::http::ops::handlers_of(&table, &specs).is_empty() {
                let own = match &config {
                    Some(path) => format!("your own tables in {}", path.display()),
                    None => "your own tables: set REACTOR_CONFIG or --config".to_string(),
                };
                anyhow::bail!(
                    "no handler works on table {table:?} (built-in: generation_jobs, profiles; {own})"
                );
            }
            let client = reactor::store::db::connect(&database_url).await?;
            let cleared = reactor::http::ops::retry(&client, &table, &id, &specs).await?;
            if cleared.is_empty() {
                println!("{table} {id}: nothing to retry (no handler has given up on it)");
            } else {
                println!("{table} {id}: retrying for {}", cleared.join(", "));
            }
        }
        Command::Doctor { cfg, json } => {
            use reactor::cli::doctor;
            let checks = doctor::run(&cfg).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                print!("{}", doctor::render(&checks));
            }
            let failed = checks
                .iter()
                .filter(|c| c.status == doctor::Status::Failed)
                .count();
            anyhow::ensure!(failed == 0, "reactor doctor: {failed} check(s) failed");
        }
        Command::Healthcheck { http_addr } => {
            let url = format!("http://{http_addr}/healthz");
            let response = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()?
                .get(&url)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            anyhow::ensure!(
                response.status().is_success(),
                "GET {url}: HTTP {}",
                response.status()
            );
        }
    }
    Ok(())
}

async fn status(
    database_url: &str,
    stuck_after: Duration,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    use reactor::http::ops;
    // The config is checked before anything connects.
    let specs = ops::specs(config)?;
    let client = reactor::store::db::connect(database_url).await?;
    let mode = reactor::store::notify_mode::show(&client)
        .await
        .map_err(reactor::store::db::DbError::from)?;
    println!("{mode}");
    println!(
        "backlog per handler (pending, counted up to {}):",
        ops::BACKLOG_CAP
    );
    for b in ops::backlog(&client, &specs).await? {
        println!(
            "  {:<12} {:>8} pending  {:>5} dead  (pending query {:.1} ms)",
            b.handler, b.pending, b.dead, b.pending_query_ms
        );
    }
    let in_flight = ops::in_flight(&client, 1000).await?;
    let stuck_before = chrono::Utc::now() - chrono::Duration::from_std(stuck_after)?;
    let stuck: Vec<_> = in_flight
        .iter()
        .filter(|j| j.created_at < stuck_before)
        .collect();
    println!(
        "in flight: {} job(s), {} stuck (older than {})",
        in_flight.len(),
        stuck.len(),
        humantime::format_duration(stuck_after)
    );
    for j in stuck {
        println!(
            "  stuck  {}  {:<10} {:<10} since {}",
            j.id,
            j.mode,
            j.status,
            j.created_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
    let lapsed = ops::lapsed_leases(&client).await?;
    if lapsed.is_empty() {
        println!("lapsed leases: none");
    } else {
        println!("lapsed leases (a reactor stopped renewing them; not taken over yet):");
        for (handler, n) in &lapsed {
            println!("  {handler:<12} {n:>8}");
        }
    }
    let limits = reactor::store::limits::snapshot(&client).await?;
    if limits.is_empty() {
        println!("limits: none");
    } else {
        println!("limits (shared by every reactor):");
        for l in &limits {
            println!("  {}", reactor::store::limits::describe(l));
        }
    }
    let dead = ops::dead_rows(&client, 100).await?;
    println!("dead rows: {}", dead.len());
    for d in &dead {
        println!(
            "  {:<12} {}  after {} attempts: {}",
            d.handler,
            d.row_id,
            d.attempts,
            d.last_error.as_deref().unwrap_or("")
        );
    }
    println!("usage this month (UTC) per plan:");
    for p in ops::usage_by_plan(&client).await? {
        println!(
            "  {:<12} {:>5} user(s)  {:>7} generations used  (limit {} per user)",
            p.plan, p.users, p.used, p.monthly_generations
        );
    }
    Ok(())
}

/// SIGINT or SIGTERM: stop claiming, finish in-flight work, exit 0.
async fn stop_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
