//! `reactor migrate`: applies the embedded SQL in order, once.
//!
//! Each file runs in its own transaction and is recorded with its SHA-256 in
//! `reactor.schema_migrations`. Before anything is applied, every recorded
//! file's checksum is compared with the embedded one: an edited migration is
//! refused (changing nothing) instead of being silently skipped.
use crate::store::db::DbError;
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
    #[error("migration {name} failed (rolled back): {source}")]
    Apply { name: String, source: DbError },
    #[error(
        "refusing to migrate: {}\nThese policies were not installed by the reactor and stay in force next to its \
         own (permissive policies are OR-ed). Drop them, or run with --allow-foreign-policies \
         (REACTOR_ALLOW_FOREIGN_POLICIES=true) to keep them and migrate anyway. Nothing was changed.",
        .0.iter().map(ForeignPolicy::to_string).collect::<Vec<_>>().join("\n")
    )]
    ForeignPolicies(Vec<ForeignPolicy>),
    #[error("migration bookkeeping failed: {0}")]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Db(e.into())
    }
}

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub applied: Vec<String>,
    pub skipped: usize,
    /// Policies the reactor did not install, kept because they were allowed.
    pub foreign_policies: Vec<ForeignPolicy>,
    /// What the Realtime policy check found or did (see sql/176_realtime_policy.sql).
    pub realtime: Option<String>,
}

/// How `reactor migrate` treats what it finds in the database.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options {
    /// Proceed (with a warning) when a table the reactor secures has permissive
    /// policies it did not install.
    pub allow_foreign_policies: bool,
}

/// A permissive policy on a table the reactor secures that the reactor did not
/// install (e.g. Supabase's starter "Public profiles are viewable by everyone.").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignPolicy {
    pub table: String,
    pub name: String,
    /// SELECT, INSERT, UPDATE, DELETE or ALL.
    pub command: String,
    pub roles: Vec<String>,
    /// The USING expression (which rows it opens), if any.
    pub using: Option<String>,
    /// The WITH CHECK expression (which rows it lets in), if any.
    pub with_check: Option<String>,
    /// The table's columns, all of which a SELECT policy exposes.
    pub columns: Vec<String>,
}

impl std::fmt::Display for ForeignPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "policy {:?} on {} lets {} {} rows",
            self.name,
            self.table,
            self.roles.join(", "),
            self.command
        )?;
        if let Some(using) = &self.using {
            write!(f, " where {using}")?;
        }
        if let Some(check) = &self.with_check {
            write!(f, " (with check {check})")?;
        }
        if matches!(self.command.as_str(), "SELECT" | "ALL") {
            write!(
                f,
                "; it exposes every column to them, now {} and any added later",
                self.columns.join(", ")
            )?;
        }
        Ok(())
    }
}

pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies the embedded migrations (refusing foreign policies).
pub async fn run(client: &mut Client) -> Result<Report, MigrateError> {
    run_with(client, Options::default()).await
}

/// Applies the embedded migrations: first checks the tables it secures for
/// policies it did not install, and afterwards (re)installs the Realtime policy
/// when Realtime is there (it may have been enabled after an earlier migrate).
pub async fn run_with(client: &mut Client, options: Options) -> Result<Report, MigrateError> {
    let foreign = foreign_policies(client).await?;
    if !foreign.is_empty() && !options.allow_foreign_policies {
        return Err(MigrateError::ForeignPolicies(foreign));
    }
    for policy in &foreign {
        tracing::warn!(%policy, "kept a policy the reactor did not install (--allow-foreign-policies)");
    }
    let mut report = apply(client, MIGRATIONS).await?;
    report.foreign_policies = foreign;
    let realtime: String = client
        .query_one("select reactor.install_realtime_policy()", &[])
        .await?
        .get(0);
    tracing::info!(realtime = %realtime, "realtime policy check");
    report.realtime = Some(realtime);
    Ok(report)
}

/// The policies the embedded SQL manages, as (table, policy name): every one
/// it creates is preceded by `drop policy if exists "name" on table`, and the
/// ones it removes are named the same way.
fn managed_policies() -> Vec<(String, String)> {
    let mut managed = Vec::new();
    for m in MIGRATIONS {
        for line in m.sql.lines() {
            let Some(rest) = line.trim().strip_prefix("drop policy if exists \"") else {
                continue;
            };
            let Some((name, after)) = rest.split_once('"') else {
                continue;
            };
            if let Some(table) = after.trim().strip_prefix("on ") {
                let table = table.trim_end_matches(';').trim();
                managed.push((table.to_string(), name.to_string()));
            }
        }
    }
    managed
}

/// Permissive policies on the tables the reactor secures that it did not install.
pub async fn foreign_policies(client: &Client) -> Result<Vec<ForeignPolicy>, MigrateError> {
    let managed = managed_policies();
    let mut tables: Vec<String> = managed.iter().map(|(t, _)| t.clone()).collect();
    tables.sort();
    tables.dedup();
    let names: Vec<String> = managed.iter().map(|(t, n)| format!("{t}|{n}")).collect();
    // Unnamed statement: doctor runs this behind transaction-mode poolers too.
    let rows = client
        .query_typed(
            "select p.schemaname || '.' || p.tablename, p.policyname, p.cmd,
                    p.roles::text[], p.qual, p.with_check,
                    array(select a.attname::text from pg_attribute a
                          where a.attrelid = format('%I.%I', p.schemaname, p.tablename)::regclass
                            and a.attnum > 0 and not a.attisdropped order by a.attnum)
             from pg_policies p
             where p.permissive = 'PERMISSIVE'
               and p.schemaname || '.' || p.tablename = any($1)
               and p.schemaname || '.' || p.tablename || '|' || p.policyname <> all($2)
             order by 1, 2",
            &[
                crate::store::db::param(&tables),
                crate::store::db::param(&names),
            ],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| ForeignPolicy {
            table: row.get(0),
            name: row.get(1),
            command: row.get(2),
            roles: row.get(3),
            using: row.get(4),
            with_check: row.get(5),
            columns: row.get(6),
        })
        .collect())
}

/// The whole schema as one SQL script (for `supabase/migrations/`): every
/// embedded file in order, each followed by its bookkeeping row, so that a
/// later `reactor migrate` finds them applied (and checks their checksums).
pub fn script() -> String {
    let mut out = String::from(
        "-- The reactor's schema, written by `reactor migrate --print`. Apply it as one\n\
         -- migration (e.g. supabase/migrations/<timestamp>_reactor.sql); a later\n\
         -- `reactor migrate` records nothing new except files added since.\n\
         create schema if not exists reactor;\n\
         create table if not exists reactor.schema_migrations (\n\
         \x20 name text primary key,\n\
         \x20 checksum text not null,\n\
         \x20 applied_at timestamptz not null default now()\n\
         );\n",
    );
    for m in MIGRATIONS {
        out.push_str(&format!("\n-- ===== {} =====\n", m.name));
        out.push_str(m.sql);
        if !m.sql.ends_with('\n') {
            out.push('\n');
        }
        // A file whose last statement lacks its semicolon must not swallow the insert.
        out.push_str(&format!(
            ";\ninsert into reactor.schema_migrations (name, checksum) values ('{}', '{}')\n\
             on conflict (name) do nothing;\n",
            m.name,
            checksum(m.sql)
        ));
    }
    out
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
                source: e.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_managed_policies_are_read_from_the_embedded_sql() {
        let managed = managed_policies();
        for (table, name) in [
            ("public.profiles", "profiles_owner_select"),
            ("public.generation_jobs", "jobs_owner_insert"),
            ("public.plans", "plans_read"),
            // Removed by 080_security.sql, so also the reactor's business.
            ("public.usage_ledger", "usage_owner_insert"),
        ] {
            assert!(
                managed.contains(&(table.to_string(), name.to_string())),
                "{table} {name} missing from {managed:?}"
            );
        }
    }

    #[test]
    fn the_printed_script_records_every_file_after_its_sql() {
        let script = script();
        let mut from = 0;
        for m in MIGRATIONS {
            let record = format!("values ('{}', '{}')", m.name, checksum(m.sql));
            let at = script[from..]
                .find(&record)
                .unwrap_or_else(|| panic!("{} not recorded in order", m.name));
            from += at + record.len();
        }
    }
}
