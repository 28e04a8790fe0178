use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Turns a Supabase/Postgres database into an event-driven system.
#[derive(Parser, Debug)]
#[command(name = "reactor", version, about)]
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
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
    }
    Ok(())
}
