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
    /// Run the reactor: listen, claim, dispatch, replay (until SIGINT/SIGTERM).
    Run(reactor::config::RunConfig),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tokio_postgres=warn".into()),
        )
        .init();
    let cli = Cli::parse();
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
        Command::Run(cfg) => {
            let handlers = reactor::handlers::builtin(&cfg)?;
            let shutdown = tokio_util::sync::CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            reactor::engine::Engine::new(cfg, handlers, shutdown)?
                .run()
                .await?;
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
