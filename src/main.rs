use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Turns a Supabase/Postgres database into an event-driven system.
#[derive(Parser, Debug)]
#[command(name = "reactor", version, about, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply the embedded schema, RLS policies and triggers (idempotent).
    Migrate {
        /// Postgres connection string.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints its own story; the daemon logs what it does.
    let default_filter = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info,tokio_postgres=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
    match cli.command {
        Command::Migrate { database_url } => {
            let mut client = reactor::db::connect(&database_url).await?;
            let report = reactor::migrate::run(&mut client)
                .await
                .context("reactor migrate")?;
            println!(
                "migrate: {} applied, {} already applied",
                report.applied.len(),
                report.skipped
            );
        }
        Command::Demo {
            database_url,
            storage_url,
        } => reactor::demo::run(database_url, &storage_url).await?,
        Command::Run(cfg) => {
            let shutdown = tokio_util::sync::CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            let app = reactor::app::start(*cfg, shutdown).await?;
            app.handle.await??;
        }
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
