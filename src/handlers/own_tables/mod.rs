//! Your own job tables (REACTOR_CONFIG): a pending row is claimed, set to the
//! processing value and POSTed as JSON to the table's URL, signed; the answer
//! is written back. In the spirit of a database webhook, with the core's
//! guarantees: rows are claimed under leases, every write is fenced, and
//! start-up, reconnects and sweeps replay whatever is still pending.
//!
//! * Pending: status is the pending or processing value (processing: a reactor
//!   died mid-request), and, with a `job_type_column`, the type has a route.
//! * A 2xx answer `{"result": …, "url": "…"}` sets the succeeded value and the
//!   result and URL columns. Anything else (an error status, a timeout, an
//!   unreadable answer) is a failed attempt: retried with backoff, counted in
//!   the retry column. The worker being away (no connection, a timeout, HTTP
//!   5xx/429/408) is retried for the table's `http.retry_for`; any other
//!   error status fails the row at once; an unreadable answer after the
//!   table's `max_attempts`. A failed row gets the failed value and the error.
//! * Delivery is at least once: a reactor that dies after the request but before
//!   the write-back leaves the row to be posted again. Receivers deduplicate on
//!   `X-Reactor-Id` (the row's key); `webhook-id` is new on every POST.
//! * A row whose job type has no route is left alone, and a periodic check logs
//!   how many rows of each such type wait, so it is never failed silently.
//!
//! Here: the handler and its fenced writes; `sql` builds each table's
//! statements, `signed_client` posts a row, `answer` reads what came back,
//! and `checks` runs the periodic checks.
mod answer;
mod checks;
mod signed_client;
mod sql;

use crate::handlers::table_config::{self, ConfigError, TableConfig};
use crate::job::error::Budget;
use crate::job::handler::{Action, Handler, HandlerError, LeasedWork, Outcome, Spec};
use crate::job::lease::Lease;
use crate::store::db::param;
use answer::Answer;
use async_trait::async_trait;
use signed_client::SignedClient;
use sql::{spec, TableSql};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum OwnTablesError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("table {table}: building its HTTP client: {source}")]
    Client {
        table: String,
        #[source]
        source: reqwest::Error,
    },
}

/// The tables of REACTOR_CONFIG, ready to run.
pub struct OwnTables {
    tables: Vec<Arc<TableHandler>>,
    check_interval: Duration,
}

impl OwnTables {
    /// Reads and checks REACTOR_CONFIG (no file: no tables). Connects to nothing.
    pub fn load(cfg: &crate::config::RunConfig) -> Result<Self, OwnTablesError> {
        let tables = table_config::load(cfg)?
            .into_iter()
            .map(|t| TableHandler::new(t, cfg.sweep_interval).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        for t in &tables {
            tracing::info!(table = %t.cfg.name, handler = %t.name, "watching own table");
        }
        Ok(OwnTables {
            tables,
            check_interval: cfg.sweep_interval,
        })
    }

    /// One leased handler per table.
    pub fn handlers(&self) -> Vec<Handler> {
        self.tables
            .iter()
            .map(|t| Handler {
                spec: t.spec.clone(),
                action: Action::Leased(t.clone()),
                limits: t.cfg.limits.clone(),
            })
            .collect()
    }

    /// The periodic checks (every sweep interval, until `shutdown`; see
    /// `checks`), as a future for the caller to run and wait for: it ends
    /// once `shutdown` is cancelled. Without tables it ends at once.
    pub fn checks(
        &self,
        pool: deadpool_postgres::Pool,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tables = self.tables.clone();
        let interval = self.check_interval;
        async move {
            if !tables.is_empty() {
                checks::run(tables, pool, interval, shutdown).await;
            }
        }
    }
}

/// The handlers' specs of the tables in the REACTOR_CONFIG file at `path`,
/// for commands that only read and clear state (`reactor status`, `reactor
/// retry`). The file is checked as `reactor run` checks it, but for what only
/// running needs: nothing is signed here, so no secret is required (a table
/// without its own is checked with a throwaway one), and nothing is attempted
/// here, so `max_attempts` is not bounded by REACTOR_MAX_ATTEMPTS.
pub fn specs(path: &std::path::Path) -> Result<Vec<Spec>, ConfigError> {
    use base64::Engine as _;
    let throwaway_secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    );
    let tables = table_config::parse(
        &table_config::read(path)?,
        path,
        Some(&throwaway_secret),
        i64::from(i32::MAX),
    )?;
    Ok(tables.iter().map(|t| spec(t, &t.handler_name())).collect())
}

/// The leased handler of one table.
struct TableHandler {
    cfg: TableConfig,
    name: String,
    spec: Spec,
    sql: TableSql,
    client: SignedClient,
    /// Set once every statement was prepared against the table: no row is
    /// posted before, so a config that does not fit the table (a missing
    /// column, a status value its enum lacks) never sends a request whose
    /// answer cannot be written back.
    verified: tokio::sync::OnceCell<()>,
    /// How long a row waits while the table does not match (the sweep interval).
    recheck: Duration,
}

impl TableHandler {
    fn new(cfg: TableConfig, recheck: Duration) -> Result<Self, OwnTablesError> {
        let client = SignedClient::new(&cfg).map_err(|source| OwnTablesError::Client {
            table: cfg.name.clone(),
            source,
        })?;
        let name = cfg.handler_name();
        let spec = spec(&cfg, &name);
        let sql = TableSql::new(&cfg);
        Ok(TableHandler {
            cfg,
            name,
            spec,
            sql,
            client,
            verified: tokio::sync::OnceCell::new(),
            recheck,
        })
    }

    /// Sets the processing value and reads the row, in one fenced statement.
    /// None: the row is no longer pending (done elsewhere, deleted, unrouted).
    async fn claim(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
    ) -> Result<Option<(String, Option<String>)>, HandlerError> {
        let mut params = vec![param(&lease.row_id)];
        params.extend(lease.fence_params());
        let row = fenced(pool, lease, &self.sql.claim, &params).await?;
        Ok(row
            .get::<_, Option<String>>(1)
            .map(|body| (body, row.get(2))))
    }

    async fn succeed(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
        answer: Answer,
    ) -> Result<Outcome, HandlerError> {
        if answer.result.is_some() && self.cfg.result_column.is_none() {
            tracing::debug!("the answer's result is dropped: the table has no result_column");
        }
        if answer.url.is_some() && self.cfg.url_column.is_none() {
            tracing::debug!("the answer's url is dropped: the table has no url_column");
        }
        let mut params = vec![param(&lease.row_id)];
        if self.cfg.result_column.is_some() {
            params.push(param(&answer.result));
        }
        if self.cfg.url_column.is_some() {
            params.push(param(&answer.url));
        }
        params.extend(lease.fence_params());
        let row = fenced(pool, lease, &self.sql.succeed, &params).await?;
        if row.get::<_, i64>(1) == 1 {
            tracing::info!(status = %self.cfg.status.succeeded, "answer written back");
        } else {
            tracing::info!("the row was no longer pending; answer not written");
        }
        // The statement dropped the lease's state row with the write.
        Ok(Outcome::Released)
    }

    /// Counts a failed attempt on the row itself (when configured), fenced.
    async fn count_failure(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
    ) -> Result<(), HandlerError> {
        let Some(sql) = &self.sql.count_failure else {
            return Ok(());
        };
        lease.execute_fenced(pool, sql, &[&lease.row_id]).await?;
        Ok(())
    }

    /// Prepares every statement against the table once (prepared, not run).
    async fn verify(&self, pool: &deadpool_postgres::Pool) -> Result<(), String> {
        self.verified
            .get_or_try_init(|| async {
                let cannot_check =
                    |e: String| format!("cannot check the table against REACTOR_CONFIG: {e}");
                let mut client = pool.get().await.map_err(|e| cannot_check(e.to_string()))?;
                // In a transaction, so each prepared statement is closed on the
                // server connection it was made on (a transaction-mode pooler
                // may switch connections between transactions).
                let tx = client
                    .transaction()
                    .await
                    .map_err(|e| cannot_check(crate::store::db::describe(&e)))?;
                for (what, sql) in self.sql.all() {
                    tx.prepare(sql).await.map_err(|e| {
                        format!(
                            "the table does not match REACTOR_CONFIG ({what} statement): {}",
                            crate::store::db::describe(&e)
                        )
                    })?;
                }
                tx.rollback()
                    .await
                    .map_err(|e| cannot_check(crate::store::db::describe(&e)))?;
                Ok::<(), String>(())
            })
            .await
            .map(|_| ())
    }
}

/// Runs one fenced statement of [`TableSql`] (its first column: whether the
/// lease is held) and returns its one row; [`HandlerError::LeaseLost`] when
/// the lease is gone (the statement then wrote nothing).
async fn fenced(
    pool: &deadpool_postgres::Pool,
    lease: &Lease,
    sql: &str,
    params: &[(
        &(dyn tokio_postgres::types::ToSql + Sync),
        tokio_postgres::types::Type,
    )],
) -> Result<tokio_postgres::Row, HandlerError> {
    let rows = lease
        .on_db(pool, async |client| {
            Ok(crate::store::db::query_hot(client, lease.prepare, sql, params).await?)
        })
        .await?;
    match rows.into_iter().next() {
        Some(row) if row.get::<_, bool>(0) => Ok(row),
        Some(_) => Err(HandlerError::LeaseLost),
        None => Err(HandlerError::retryable(
            "a fenced statement returned no row",
        )),
    }
}

#[async_trait]
impl LeasedWork for TableHandler {
    async fn run(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
    ) -> Result<Outcome, HandlerError> {
        let verified = tokio::time::timeout(lease.deadline, self.verify(pool))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the database did not answer within {:?}",
                    lease.deadline
                ))
            });
        if let Err(e) = verified {
            // The periodic check logs it; the row waits, no attempt counted.
            tracing::debug!(error = %e, "row not worked");
            return Ok(Outcome::CheckAgainIn(self.recheck));
        }
        let Some((body, job_type)) = self.claim(pool, lease).await? else {
            return Ok(Outcome::Finished);
        };
        let Some(url) = self.cfg.url_for(job_type.as_deref()) else {
            // The pending query excludes unrouted types; the route vanished in between.
            return Ok(Outcome::Finished);
        };
        match self
            .client
            .post(url, &lease.row_id, lease.attempts + 1, body)
            .await
        {
            Ok(answer) => self.succeed(pool, lease, answer).await,
            Err(failure) => {
                self.count_failure(pool, lease).await?;
                if failure.is_transient() {
                    // The worker is away: retried for the table's budget.
                    return Err(failure.within(Budget::For(self.cfg.http.retry_for)));
                }
                if failure.is_retryable() && lease.attempts + 1 >= self.cfg.max_attempts {
                    // The table's own limit (at most REACTOR_MAX_ATTEMPTS): give up now.
                    return Err(HandlerError::Permanent(failure.to_string()));
                }
                Err(failure)
            }
        }
    }

    async fn gave_up(
        &self,
        pool: &deadpool_postgres::Pool,
        row_id: &str,
        error: &str,
    ) -> Result<(), HandlerError> {
        // One statement: the failed value and the error, and the dead state
        // dropped, so setting the row back to pending runs it again.
        pool.get()
            .await?
            .execute_typed(
                &self.sql.give_up,
                &[param(&row_id), param(&error), param(&self.name)],
            )
            .await?;
        Ok(())
    }
}
