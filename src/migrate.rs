//! `reactor migrate`: applies the embedded SQL in order, once.
//!
//! Each file runs in its own transaction and is recorded with its SHA-256 in
//! `reactor.schema_migrations`. Before anything is applied, every recorded
//! file's checksum is compared with the embedded one: an edited migration is
//! refused (changing nothing) instead of being silently skipped.
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// One embedded SQL file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Path relative to the repository, e.g. `sql/000_supabase_compat.sql`.
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every file of `sql/` then `triggers/`, in file-name order (see build.rs).
pub const MIGRATIONS: &[Migration] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "migration {name} was already applied with checksum {applied}, but the embedded file now has \
         checksum {embedded}; applied migrations must not change (add a new file instead). Nothing was changed."
    )]
    ChecksumMismatch {
        name: String,
        applied: String,
        embedded: String,
    },
    #[error("migration {name} failed (rolled back): {message}")]
    Apply { name: String, message: String },
    #[error("migration bookkeeping failed: {}", crate::db::describe(.0))]
    Db(#[from] tokio_postgres::Error),
}

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub applied: Vec<String>,
    pub skipped: usize,
}

pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies the embedded migrations.
pub async fn run(client: &mut Client) -> Result<Report, MigrateError> {
    apply(client, MIGRATIONS).await
}

/// Applies `migrations` (in the order given) that are not recorded yet.
pub async fn apply(client: &mut Client, migrations: &[Migration]) -> Result<Report, MigrateError> {
    client
        .batch_execute(
            "create schema if not exists reactor;
             create table if not exists reactor.schema_migrations (
               name text primary key,
               checksum text not null,
               applied_at timestamptz not null default now()
             );",
        )
        .await?;
    // Two `reactor migrate` at once (two deploys) take turns; the lock is
    // session-level so it spans the per-file transactions.
    client
        .execute("select pg_advisory_lock(hashtext('reactor.migrate'))", &[])
        .await?;
    let result = apply_locked(client, migrations).await;
    client
        .execute(
            "select pg_advisory_unlock(hashtext('reactor.migrate'))",
            &[],
        )
        .await?;
    result
}

async fn apply_locked(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Report, MigrateError> {
    let recorded: std::collections::HashMap<String, String> = client
        .query("select name, checksum from reactor.schema_migrations", &[])
        .await?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();

    for m in migrations {
        if let Some(applied) = recorded.get(m.name) {
            let embedded = checksum(m.sql);
            if *applied != embedded {
                return Err(MigrateError::ChecksumMismatch {
                    name: m.name.to_string(),
                    applied: applied.clone(),
                    embedded,
                });
            }
        }
    }

    let mut report = Report::default();
    for m in migrations {
        if recorded.contains_key(m.name) {
            report.skipped += 1;
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| MigrateError::Apply {
                name: m.name.to_string(),
                message: crate::db::describe(&e),
            })?;
        tx.execute(
            "insert into reactor.schema_migrations (name, checksum) values ($1, $2)",
            &[&m.name, &checksum(m.sql)],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(migration = m.name, "applied");
        report.applied.push(m.name.to_string());
    }
    Ok(report)
}
