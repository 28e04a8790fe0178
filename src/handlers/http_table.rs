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
//!   the retry column, and after the table's `max_attempts` the row gets the
//!   failed value and the error.
//! * Delivery is at least once: a reactor that dies after the request but before
//!   the write-back leaves the row to be posted again. Receivers deduplicate on
//!   `X-Reactor-Id` (the row's key); `webhook-id` is new on every POST.
//! * A row whose job type has no route is left alone, and a periodic check logs
//!   how many rows of each such type wait, so it is never failed silently.
use crate::handlers::table_config::{ConfigError, TableConfig, Target};
use crate::job::handler::{Action, Handler, HandlerError, LeasedWork, Outcome, Spec};
use crate::job::lease::Lease;
use crate::store::db::param;
use crate::store::db::{quote_ident, quote_literal};
use async_trait::async_trait;
use futures::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

/// Largest answer read from a handler URL; what it carries goes into a row.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// How much of an error answer is kept in the error message.
const MAX_ERROR_DETAIL: usize = 300;

pub const ID_HEADER: &str = "X-Reactor-Id";
pub const TIMESTAMP_HEADER: &str = "X-Reactor-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Reactor-Signature";
pub const TABLE_HEADER: &str = "X-Reactor-Table";
pub const ATTEMPT_HEADER: &str = "X-Reactor-Attempt";

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
    tables: Vec<Arc<HttpTable>>,
    check_interval: Duration,
}

impl OwnTables {
    /// Reads and checks REACTOR_CONFIG (no file: no tables). Connects to nothing.
    pub fn load(cfg: &crate::config::RunConfig) -> Result<Self, OwnTablesError> {
        let tables = crate::handlers::table_config::load(cfg)?
            .into_iter()
            .map(|t| HttpTable::new(t, cfg.sweep_interval).map(Arc::new))
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
            })
            .collect()
    }

    /// Starts the periodic checks (every sweep interval, until `shutdown`):
    /// the table matches the config, it is watched, rows whose job type has no
    /// route are reported, and a dead row whose failure was not yet written to
    /// its table gets it.
    pub fn spawn_checks(&self, pool: deadpool_postgres::Pool, shutdown: CancellationToken) {
        if self.tables.is_empty() {
            return;
        }
        let tables = self.tables.clone();
        let interval = self.check_interval;
        tokio::spawn(async move {
            let mut state = vec![CheckState::default(); tables.len()];
            let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                for (table, state) in tables.iter().zip(state.iter_mut()) {
                    if let Err(e) = table.check(&pool, state).await {
                        tracing::warn!(table = %table.cfg.name, error = %e, "checking own table failed");
                    }
                }
            }
        });
    }
}

/// The statements of one table, built once from its config.
#[derive(Debug)]
struct Statements {
    /// `$1` key: pending → processing.
    claim: String,
    /// `$1` key: the row as JSON text and its job type, while still pending.
    load: String,
    /// `$1` key, then `$2` result (if a result column), then the URL (if a URL column).
    succeed: String,
    /// `$1` key: one more failed attempt in the retry column.
    count_failure: Option<String>,
    /// `$1` key, `$2` error, `$3` handler: the failed value and the error, and
    /// the dead state is dropped.
    give_up: String,
    /// Every dead row of `$1` handler whose failure is not on its row yet.
    repair_dead: String,
    /// Rows waiting with a job type that has no route: (type, count).
    unrouted: Option<String>,
}

impl Statements {
    /// Every statement with what it is for, to check them against the table.
    fn all(&self) -> Vec<(&'static str, &str)> {
        let mut all = vec![
            ("claim", self.claim.as_str()),
            ("read", &self.load),
            ("success", &self.succeed),
            ("give-up", &self.give_up),
            ("repair", &self.repair_dead),
        ];
        if let Some(sql) = &self.count_failure {
            all.push(("retry count", sql));
        }
        if let Some(sql) = &self.unrouted {
            all.push(("unrouted", sql));
        }
        all
    }
}

struct HttpTable {
    cfg: TableConfig,
    name: String,
    spec: Spec,
    sql: Statements,
    http: reqwest::Client,
    /// Set once every statement was prepared against the table: no row is
    /// posted before, so a config that does not fit the table (a missing
    /// column, a status value its enum lacks) never sends a request whose
    /// answer cannot be written back.
    verified: tokio::sync::OnceCell<()>,
    /// How long a row waits while the table does not match (the sweep interval).
    recheck: Duration,
}

/// What a successful answer carries.
#[derive(Debug, Default, PartialEq)]
struct Answer {
    result: Option<serde_json::Value>,
    url: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct CheckState {
    watch_checked: bool,
    index_checked: bool,
}

impl HttpTable {
    fn new(cfg: TableConfig, recheck: Duration) -> Result<Self, OwnTablesError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.http.timeout)
            .connect_timeout(cfg.http.timeout.min(Duration::from_secs(10)))
            // A redirected POST becomes a GET elsewhere: treat it as an error answer.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("reactor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| OwnTablesError::Client {
                table: cfg.name.clone(),
                source,
            })?;
        let name = cfg.handler_name();
        let spec = spec(&cfg, &name);
        let sql = statements(&cfg);
        Ok(HttpTable {
            cfg,
            name,
            spec,
            sql,
            http,
            verified: tokio::sync::OnceCell::new(),
            recheck,
        })
    }

    /// Sets the processing value and reads the row, in one fenced transaction.
    /// None: the row is no longer pending (done elsewhere, deleted, unrouted).
    async fn claim(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
    ) -> Result<Option<(String, Option<String>)>, HandlerError> {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        lease.hold(&tx).await?;
        tx.execute(&self.sql.claim, &[&lease.row_id]).await?;
        let row = tx.query_opt(&self.sql.load, &[&lease.row_id]).await?;
        tx.commit().await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn post(&self, url: &str, lease: &Lease, body: String) -> Result<Answer, HandlerError> {
        let shown = display_url(url);
        let timestamp = chrono::Utc::now().timestamp();
        let signature = crate::http::webhook_signature::sign(
            &self.cfg.http.secret,
            &lease.row_id,
            timestamp,
            body.as_bytes(),
        );
        // Standard Webhooks receivers de-duplicate on webhook-id, so each POST
        // is its own message: a row set back to pending and run again must not
        // be dropped as a repeat. X-Reactor-Id stays the row's key.
        let delivery = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let delivery_signature = crate::http::webhook_signature::sign(
            &self.cfg.http.secret,
            &delivery,
            timestamp,
            body.as_bytes(),
        );
        let timestamp = timestamp.to_string();
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, &lease.row_id)
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, &signature)
            // The Standard Webhooks names too, so stock verifier libraries work as they are.
            .header(crate::http::webhook_signature::ID_HEADER, &delivery)
            .header(crate::http::webhook_signature::TIMESTAMP_HEADER, &timestamp)
            .header(
                crate::http::webhook_signature::SIGNATURE_HEADER,
                &delivery_signature,
            )
            .header(TABLE_HEADER, &self.cfg.name)
            .header(ATTEMPT_HEADER, (lease.attempts + 1).to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                HandlerError::Retry(if e.is_timeout() {
                    format!("POST {shown}: timed out after {:?}", self.cfg.http.timeout)
                } else {
                    format!("POST {shown}: {}", describe_reqwest(&e))
                })
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_limited(response).await.map_err(|e| {
            HandlerError::Retry(if e.is_timeout() {
                format!(
                    "POST {shown}: timed out after {:?} reading the answer",
                    self.cfg.http.timeout
                )
            } else {
                format!("POST {shown}: reading the answer: {}", describe_reqwest(&e))
            })
        })?;
        let Some(body) = body else {
            return Err(HandlerError::Retry(format!(
                "POST {shown}: HTTP {status}, answer larger than {MAX_ANSWER_BYTES} bytes"
            )));
        };
        if !status.is_success() {
            let message = format!("POST {shown}: HTTP {status}{}", error_detail(&body));
            return Err(match retry_after {
                Some(delay) => HandlerError::RetryIn(message, delay),
                None => HandlerError::Retry(message),
            });
        }
        parse_answer(&body)
            .map_err(|e| HandlerError::Retry(format!("POST {shown}: HTTP {status}, but {e}")))
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
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&lease.row_id];
        if self.cfg.result_column.is_some() {
            params.push(&answer.result);
        }
        if self.cfg.url_column.is_some() {
            params.push(&answer.url);
        }
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        lease.hold(&tx).await?;
        let n = tx.execute(&self.sql.succeed, &params).await?;
        if n == 1 {
            tracing::info!(status = %self.cfg.status.succeeded, "answer written back");
        } else {
            tracing::info!("the row was no longer pending; answer not written");
        }
        lease.finish(tx).await
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
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        lease.hold(&tx).await?;
        tx.execute(sql, &[&lease.row_id]).await?;
        tx.commit().await?;
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

    async fn check(
        &self,
        pool: &deadpool_postgres::Pool,
        state: &mut CheckState,
    ) -> Result<(), String> {
        if let Err(e) = self.verify(pool).await {
            tracing::error!(table = %self.cfg.name, error = %e, "rows of this table are not worked until it matches REACTOR_CONFIG");
            return Ok(());
        }
        let mut client = pool.get().await.map_err(|e| e.to_string())?;
        let describe = |e: tokio_postgres::Error| crate::store::db::describe(&e);
        if !state.watch_checked {
            let watched: i64 = client
                .query_typed_one(
                    "select count(*) from pg_trigger
                     where tgrelid = $1::text::regclass
                       and tgname in ('reactor_watch_insert', 'reactor_watch_status')",
                    &[param(&self.spec.table)],
                )
                .await
                .map_err(describe)?
                .get(0);
            if watched < 2 {
                tracing::warn!(
                    table = %self.cfg.name,
                    "the table is not watched, so new rows wait for the next sweep; run: select reactor.watch_table('{}', '{}')",
                    self.cfg.name.replace('\'', "''"),
                    self.cfg.status.column.replace('\'', "''"),
                );
            }
            state.watch_checked = true;
        }
        if !state.index_checked {
            self.check_pending_index(&mut client).await?;
            state.index_checked = true;
        }
        if let Some(sql) = &self.sql.unrouted {
            for row in client.query_typed(sql, &[]).await.map_err(describe)? {
                let job_type: Option<String> = row.get(0);
                let rows: i64 = row.get(1);
                tracing::warn!(
                    table = %self.cfg.name,
                    job_type = %job_type.as_deref().unwrap_or("(null)"),
                    rows,
                    "job_type has no route in REACTOR_CONFIG (http.routes): these rows stay pending until one is added"
                );
            }
        }
        let repaired = client
            .query_typed(&self.sql.repair_dead, &[param(&self.name)])
            .await
            .map_err(describe)?;
        for row in repaired {
            let id: String = row.get(0);
            tracing::warn!(table = %self.cfg.name, %id, "a given-up row now has the failed value and its error");
        }
        Ok(())
    }
}

#[async_trait]
impl LeasedWork for HttpTable {
    async fn run(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
    ) -> Result<Outcome, HandlerError> {
        if let Err(e) = self.verify(pool).await {
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
        match self.post(url, lease, body).await {
            Ok(answer) => self.succeed(pool, lease, answer).await,
            Err(failure) => {
                self.count_failure(pool, lease).await?;
                if lease.attempts + 1 >= self.cfg.max_attempts {
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

impl HttpTable {
    /// Warns, with the statement that fixes it, when the pending query would
    /// read the whole table: sweeps and polls would then cost O(history).
    /// Asked of the planner with sequential scans disabled, so a small table
    /// (where a scan is the cheaper plan) gives the same answer as a big one.
    async fn check_pending_index(
        &self,
        client: &mut deadpool_postgres::Client,
    ) -> Result<(), String> {
        let describe = |e: tokio_postgres::Error| crate::store::db::describe(&e);
        // A transaction, so the setting ends with it (dropped: rolled back).
        let tx = client.transaction().await.map_err(describe)?;
        tx.batch_execute("set local enable_seqscan = off")
            .await
            .map_err(describe)?;
        let explain = format!(
            "explain (format json) select t.{} from {} t where {}",
            self.spec.key, self.spec.table, self.spec.pending
        );
        let plan: serde_json::Value = tx.query_one(&explain, &[]).await.map_err(describe)?.get(0);
        drop(tx);
        let partial: Vec<String> = client
            .query_typed(
                "select c.relname::text from pg_index i join pg_class c on c.oid = i.indexrelid
                 where i.indrelid = $1::text::regclass and i.indpred is not null",
                &[param(&self.spec.table)],
            )
            .await
            .map_err(describe)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if index_served(&plan[0]["Plan"], &self.cfg.table, &partial) {
            tracing::info!(table = %self.cfg.name, "the pending query is served by an index");
        } else {
            tracing::warn!(
                table = %self.cfg.name,
                "the pending query reads the whole table, so every sweep and poll costs as much as the table's history; run: {}",
                pending_index_sql(&self.cfg)
            );
        }
        Ok(())
    }
}

/// Whether every scan of `table` in an EXPLAIN (format json) plan node reads
/// an index range or a partial index (one of `partial`), not the whole table.
fn index_served(node: &serde_json::Value, table: &str, partial: &[String]) -> bool {
    let index_ok = |n: &serde_json::Value| {
        n.get("Index Cond").is_some()
            || n["Index Name"]
                .as_str()
                .is_some_and(|i| partial.iter().any(|p| p == i))
    };
    let children = node["Plans"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let this_ok = match node["Node Type"].as_str().unwrap_or("") {
        "Seq Scan" | "Tid Scan" | "Tid Range Scan" => node["Relation Name"] != table,
        "Index Scan" | "Index Only Scan" if node["Relation Name"] == table => index_ok(node),
        "Bitmap Index Scan" => index_ok(node),
        _ => true,
    };
    this_ok && children.iter().all(|c| index_served(c, table, partial))
}

/// The index that makes a table's pending query O(pending rows): its key,
/// restricted to the pending rows.
fn pending_index_sql(cfg: &TableConfig) -> String {
    let mut name = format!("{}_reactor_pending", cfg.table);
    while name.len() > 63 {
        name.pop();
    }
    format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {}.{} ({}) WHERE {}",
        quote_ident(&name),
        quote_ident(&cfg.schema),
        quote_ident(&cfg.table),
        quote_ident(&cfg.key),
        pending(cfg, "")
    )
}

fn spec(cfg: &TableConfig, name: &str) -> Spec {
    Spec {
        name: name.to_string(),
        table: format!("{}.{}", quote_ident(&cfg.schema), quote_ident(&cfg.table)),
        notify_table: cfg.table.clone(),
        key: quote_ident(&cfg.key),
        key_type: cfg.key_type,
        pending: pending(cfg, "t."),
        // Our own claim (→ processing) needs no hint; a processing row is
        // recovered by replay and sweeps.
        statuses: Some(vec![cfg.status.pending.clone()]),
    }
}

/// The pending condition, its columns prefixed with `prefix` (`t.` or nothing).
fn pending(cfg: &TableConfig, prefix: &str) -> String {
    let status = format!("{prefix}{}", quote_ident(&cfg.status.column));
    let mut sql = format!(
        "{status} in ({}, {})",
        quote_literal(&cfg.status.pending),
        quote_literal(&cfg.status.processing)
    );
    sql.push_str(&routed(cfg, prefix));
    sql
}

/// ` and <prefix>job_type in (…)` when rows are routed by job type, else nothing.
fn routed(cfg: &TableConfig, prefix: &str) -> String {
    match (&cfg.job_type_column, &cfg.http.target) {
        (Some(column), Target::Routes(routes)) => format!(
            " and {prefix}{} in ({})",
            quote_ident(column),
            routed_types(routes)
        ),
        _ => String::new(),
    }
}

fn routed_types(routes: &std::collections::BTreeMap<String, String>) -> String {
    routes
        .keys()
        .map(|t| quote_literal(t))
        .collect::<Vec<_>>()
        .join(", ")
}

fn statements(cfg: &TableConfig) -> Statements {
    let table = format!("{}.{}", quote_ident(&cfg.schema), quote_ident(&cfg.table));
    let key = quote_ident(&cfg.key);
    let by_key = format!("{key} = $1::text::{}", cfg.key_type.sql());
    let status = quote_ident(&cfg.status.column);
    let in_flight = format!(
        "{status} in ({}, {})",
        quote_literal(&cfg.status.pending),
        quote_literal(&cfg.status.processing)
    );
    let routed_t = routed(cfg, "t.");
    let routed = routed(cfg, "");
    let job_type = cfg
        .job_type_column
        .as_deref()
        .map(|c| format!("t.{}::text", quote_ident(c)))
        .unwrap_or_else(|| "null::text".into());

    let mut sets = vec![format!(
        "{status} = {}",
        quote_literal(&cfg.status.succeeded)
    )];
    let mut n = 1;
    if let Some(c) = &cfg.result_column {
        n += 1;
        sets.push(format!(
            "{c} = coalesce(${n}::jsonb, {c})",
            c = quote_ident(c)
        ));
    }
    if let Some(c) = &cfg.url_column {
        n += 1;
        sets.push(format!(
            "{c} = coalesce(${n}::text, {c})",
            c = quote_ident(c)
        ));
    }
    let error = quote_ident(&cfg.error_column);
    let failed = quote_literal(&cfg.status.failed);

    Statements {
        claim: format!(
            "update {table} set {status} = {} where {by_key} and {status} = {}{routed}",
            quote_literal(&cfg.status.processing),
            quote_literal(&cfg.status.pending),
        ),
        load: format!(
            "select to_jsonb(t)::text, {job_type} from {table} t
             where t.{by_key} and t.{in_flight}{routed_t}"
        ),
        succeed: format!(
            "update {table} set {} where {by_key} and {in_flight}",
            sets.join(", ")
        ),
        count_failure: cfg.retry_column.as_ref().map(|c| {
            let c = quote_ident(c);
            format!("update {table} set {c} = coalesce({c}, 0) + 1 where {by_key}")
        }),
        give_up: format!(
            "with row_failed as (
               update {table} set {status} = {failed}, {error} = $2::text
               where {by_key} and {in_flight}
             )
             delete from reactor.handler_state
             where handler = $3::text and row_id = $1::text and dead_at is not null"
        ),
        repair_dead: format!(
            "with dead as (
               delete from reactor.handler_state
               where handler = $1::text and dead_at is not null
               returning row_id, last_error
             )
             update {table} t set {status} = {failed}, {error} = dead.last_error
             from dead
             where t.{key} = dead.row_id::{kt} and t.{in_flight}
             returning t.{key}::text",
            kt = cfg.key_type.sql(),
        ),
        unrouted: match (&cfg.job_type_column, &cfg.http.target) {
            (Some(column), Target::Routes(routes)) => Some(format!(
                "select t.{c}::text, count(*) from {table} t
                 where t.{in_flight} and (t.{c} is null or t.{c} not in ({}))
                 group by 1 order by 1",
                routed_types(routes),
                c = quote_ident(column),
            )),
            _ => None,
        },
    }
}

/// A URL fit for logs and error columns: no credentials, no query string.
fn display_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(invalid URL)".into(),
    }
}

/// reqwest's message with its causes ("error sending request" alone says little).
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut text = match e.url() {
        // The URL is shown by the caller without its query string.
        Some(url) => e
            .to_string()
            .replace(&format!(" for url ({url})"), "")
            .replace(&format!(" ({url})"), ""),
        None => e.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Reads an answer body; None when it is larger than MAX_ANSWER_BYTES.
async fn read_limited(response: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// `: <message>` from an error answer: its JSON `error` (or `message`) string,
/// else the start of its text.
fn error_detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let from_json = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            ["error", "message"]
                .iter()
                .find_map(|k| v.get(k).and_then(|m| m.as_str()).map(str::to_string))
        });
    let detail = from_json.unwrap_or_else(|| text.to_string());
    let mut cut: String = detail.chars().take(MAX_ERROR_DETAIL).collect();
    if cut.len() < detail.len() {
        cut.push('…');
    }
    format!(": {cut}")
}

/// A 2xx body: empty, or a JSON object with optional `result` and `url`.
fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Answer::default());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!("the answer is not JSON ({e}); expected {{\"result\": …, \"url\": \"…\"}}")
    })?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(
            "the answer is not a JSON object; expected {\"result\": …, \"url\": \"…\"}".into(),
        );
    };
    let url = match object.remove("url") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => return Err(format!("the answer's url is not a string: {other}")),
    };
    let result = match object.remove("result") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v),
    };
    Ok(Answer { result, url })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::table_config::parse;
    use std::path::Path;

    fn table(extra: &str, http: &str) -> TableConfig {
        let text = format!(
            r#"[[table]]
               name = "public.Jobs"
               succeeded = "completed"
               failed = "failed"
               error_column = "error"
               {extra}
               [table.http]
               secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
               {http}"#
        );
        parse(&text, Path::new("t.toml"), None, 5)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn names_are_quoted_exactly_as_written_and_values_are_literals() {
        let t = table("pending = \"it's new\"", "url = \"http://h/\"");
        let s = spec(&t, &t.handler_name());
        assert_eq!(s.table, "\"public\".\"Jobs\"");
        assert_eq!(s.notify_table, "Jobs");
        assert_eq!(s.pending, "t.\"status\" in ('it''s new', 'processing')");
        assert_eq!(s.statuses, Some(vec!["it's new".to_string()]));
    }

    #[test]
    fn with_a_job_type_column_only_routed_types_are_pending() {
        let t = table(
            "job_type_column = \"job_type\"",
            "routes = { b = \"http://h/b\", a = \"http://h/a\" }",
        );
        assert_eq!(
            pending(&t, "t."),
            "t.\"status\" in ('pending', 'processing') and t.\"job_type\" in ('a', 'b')"
        );
        let sql = statements(&t);
        assert!(
            sql.load.contains("and t.\"job_type\" in ('a', 'b')"),
            "{}",
            sql.load
        );
        assert!(sql.unrouted.unwrap().contains("not in ('a', 'b')"));
    }

    #[test]
    fn the_success_statement_numbers_only_configured_columns() {
        let t = table("url_column = \"image_url\"", "url = \"http://h/\"");
        let sql = statements(&t);
        assert!(
            sql.succeed.contains("\"image_url\" = coalesce($2::text"),
            "{}",
            sql.succeed
        );
        assert!(!sql.succeed.contains("$3"));
        assert!(sql.count_failure.is_none());
        let t = table(
            "url_column = \"u\"\nresult_column = \"r\"\nretry_column = \"n\"",
            "url = \"http://h/\"",
        );
        let sql = statements(&t);
        assert!(
            sql.succeed.contains("\"r\" = coalesce($2::jsonb"),
            "{}",
            sql.succeed
        );
        assert!(
            sql.succeed.contains("\"u\" = coalesce($3::text"),
            "{}",
            sql.succeed
        );
        assert!(sql
            .count_failure
            .unwrap()
            .contains("\"n\" = coalesce(\"n\", 0) + 1"));
    }

    #[test]
    fn answers_are_empty_or_an_object_with_result_and_url() {
        assert_eq!(parse_answer(b"").unwrap(), Answer::default());
        assert_eq!(
            parse_answer(br#"{"result":{"a":1},"url":"https://x/y.png","extra":true}"#).unwrap(),
            Answer {
                result: Some(serde_json::json!({"a": 1})),
                url: Some("https://x/y.png".into())
            }
        );
        assert!(parse_answer(b"<html>").unwrap_err().contains("not JSON"));
        assert!(parse_answer(b"[1]")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(parse_answer(br#"{"url":3}"#).unwrap_err().contains("url"));
    }

    #[test]
    fn error_details_prefer_the_json_error_and_are_cut_short() {
        assert_eq!(
            error_detail(br#"{"error":"model crashed"}"#),
            ": model crashed"
        );
        assert_eq!(error_detail(b"  "), "");
        let long = "x".repeat(1000);
        assert!(error_detail(long.as_bytes()).chars().count() < 310);
    }

    #[test]
    fn urls_in_errors_lose_credentials_and_query() {
        assert_eq!(
            display_url("https://user:pw@h.example/p?token=secret"),
            "https://h.example/p"
        );
    }
}
