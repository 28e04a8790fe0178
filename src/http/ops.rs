//! What operators ask of a running system (`reactor status`, `reactor retry`,
//! the dashboard): answered from the database alone, so it works from any
//! machine and with no reactor running.
use crate::handlers;
use crate::handlers::table_config::ConfigError;
use crate::job::handler::Spec;
use crate::store::db::param;
use serde::Serialize;
use std::path::Path;
use tokio_postgres::GenericClient;

/// Backlogs are counted up to this many rows (a count of a huge backlog would
/// be a slow query of its own; "at least" is enough to act on).
pub const BACKLOG_CAP: i64 = 100_000;

/// The built-in handlers' specs (no provider or storage needed).
pub fn builtin_specs() -> Vec<Spec> {
    vec![
        handlers::generation::spec(),
        handlers::renders::spec(),
        handlers::deleted_objects::spec(),
        handlers::usage::handler().spec,
        handlers::favorites::handler().spec,
    ]
}

/// The handlers `reactor status` and `reactor retry` know: the built-in ones
/// and, with a REACTOR_CONFIG file, one per table of yours.
pub fn specs(config: Option<&Path>) -> Result<Vec<Spec>, ConfigError> {
    let mut specs = builtin_specs();
    if let Some(path) = config {
        specs.extend(handlers::own_tables::specs(path)?);
    }
    Ok(specs)
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Backlog {
    pub handler: String,
    /// Rows still needing the handler, counted up to [`BACKLOG_CAP`].
    pub pending: i64,
    pub dead: i64,
    /// How long reading the pending rows took, in milliseconds: what a sweep
    /// or poll of this handler pays to find its work (it should follow the
    /// backlog, not the table's size).
    pub pending_query_ms: f64,
}

pub async fn backlog(
    db: &impl GenericClient,
    specs: &[Spec],
) -> Result<Vec<Backlog>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for spec in specs {
        let sql = format!(
            "select (select count(*) from (select 1 from {table} t where ({pending}) limit {BACKLOG_CAP}) p),
                    (select count(*) from reactor.handler_state where handler = $1 and dead_at is not null)",
            table = spec.table,
            pending = spec.pending,
        );
        let started = std::time::Instant::now();
        let row = db.query_typed_one(&sql, &[param(&spec.name)]).await?;
        out.push(Backlog {
            handler: spec.name.clone(),
            pending: row.get(0),
            dead: row.get(1),
            pending_query_ms: started.elapsed().as_secs_f64() * 1000.0,
        });
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct DeadRow {
    pub handler: String,
    pub row_id: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub dead_at: chrono::DateTime<chrono::Utc>,
}

/// Rows whose lease has expired without being released, renewed or taken
/// over, per handler: the reactor holding them stopped renewing (it was cut
/// off from the database, or is stalled) and no reactor has picked them up yet.
pub async fn lapsed_leases(
    db: &impl GenericClient,
) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    let rows = db
        .query_typed(
            "select handler, count(*) from reactor.handler_state
             where lease_owner is not null and lease_expires_at < now() and dead_at is null
             group by handler order by handler",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub async fn dead_rows(
    db: &impl GenericClient,
    limit: i64,
) -> Result<Vec<DeadRow>, tokio_postgres::Error> {
    Ok(db
        .query_typed(
            "select handler, row_id, attempts, last_error, dead_at from reactor.handler_state
             where dead_at is not null order by dead_at desc limit $1",
            &[param(&limit)],
        )
        .await?
        .iter()
        .map(|r| DeadRow {
            handler: r.get(0),
            row_id: r.get(1),
            attempts: r.get(2),
            last_error: r.get(3),
            dead_at: r.get(4),
        })
        .collect())
}

#[derive(Debug, Serialize)]
pub struct JobLine {
    pub id: uuid::Uuid,
    pub owner_id: uuid::Uuid,
    pub mode: String,
    pub status: String,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

fn job_line(r: &tokio_postgres::Row) -> JobLine {
    JobLine {
        id: r.get(0),
        owner_id: r.get(1),
        mode: r.get(2),
        status: r.get(3),
        error: r.get(4),
        created_at: r.get(5),
        updated_at: r.get(6),
    }
}

const JOB_COLUMNS: &str = "id, owner_id, mode, status, error, created_at, updated_at";

/// Jobs in flight, oldest first (the caller decides which count as stuck).
pub async fn in_flight(
    db: &impl GenericClient,
    limit: i64,
) -> Result<Vec<JobLine>, tokio_postgres::Error> {
    jobs(
        db,
        "where status in ('starting', 'processing') order by created_at",
        limit,
    )
    .await
}

pub async fn recent_jobs(
    db: &impl GenericClient,
    limit: i64,
) -> Result<Vec<JobLine>, tokio_postgres::Error> {
    jobs(db, "order by updated_at desc", limit).await
}

pub async fn recent_failures(
    db: &impl GenericClient,
    limit: i64,
) -> Result<Vec<JobLine>, tokio_postgres::Error> {
    jobs(
        db,
        "where status = 'failed' order by updated_at desc",
        limit,
    )
    .await
}

/// Up to `limit` jobs, selected and ordered by `filter_and_order` (fixed SQL, never user input).
async fn jobs(
    db: &impl GenericClient,
    filter_and_order: &str,
    limit: i64,
) -> Result<Vec<JobLine>, tokio_postgres::Error> {
    let sql =
        format!("select {JOB_COLUMNS} from public.generation_jobs {filter_and_order} limit $1");
    Ok(db
        .query_typed(&sql, &[param(&limit)])
        .await?
        .iter()
        .map(job_line)
        .collect())
}

pub async fn jobs_by_status(
    db: &impl GenericClient,
) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    Ok(db
        .query_typed(
            "select status, count(*) from public.generation_jobs group by status order by status",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Jobs finished per minute over the last `minutes` minutes (oldest first).
pub async fn throughput(
    db: &impl GenericClient,
    minutes: i32,
) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    Ok(db
        .query_typed(
            "select to_char(m, 'HH24:MI'), count(j.id)
             from generate_series(date_trunc('minute', now()) - make_interval(mins => $1 - 1), date_trunc('minute', now()), interval '1 minute') m
             left join public.generation_jobs j on date_trunc('minute', j.completed_at) = m
             group by m order by m",
            &[param(&minutes)],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

#[derive(Debug, Serialize)]
pub struct PlanUsage {
    pub plan: String,
    pub monthly_generations: i32,
    pub users: i64,
    pub used: i64,
}

/// This UTC month's generations per plan (profiles without a known price id count under the default plan).
pub async fn usage_by_plan(
    db: &impl GenericClient,
) -> Result<Vec<PlanUsage>, tokio_postgres::Error> {
    Ok(db
        .query_typed(
            "with month as (select date_trunc('month', now() at time zone 'UTC') at time zone 'UTC' as start),
             owner_plan as (
               select pr.id as owner_id, coalesce(p.price_id, d.price_id) as price_id
               from public.profiles pr
               left join public.plans p on p.price_id = pr.price_id
               cross join (select price_id from public.plans where is_default) d
             )
             select pl.name, pl.monthly_generations, count(distinct op.owner_id),
                    coalesce(sum(u.amount), 0)::bigint
             from public.plans pl
             left join owner_plan op on op.price_id = pl.price_id
             left join public.usage_ledger u on u.owner_id = op.owner_id and u.kind = 'generation_debit'
               and u.created_at >= (select start from month)
             group by pl.name, pl.monthly_generations order by pl.name",
            &[],
        )
        .await?
        .iter()
        .map(|r| PlanUsage {
            plan: r.get(0),
            monthly_generations: r.get(1),
            users: r.get(2),
            used: r.get(3),
        })
        .collect())
}

/// The handlers that act on `table` (schema optional), or the one handler
/// named `table` (as `reactor status` lists it, e.g. `http:public.image_jobs`).
pub fn handlers_of(table: &str, specs: &[Spec]) -> Vec<String> {
    if let Some(spec) = specs.iter().find(|s| s.name == table) {
        return vec![spec.name.clone()];
    }
    let bare = table.rsplit('.').next().unwrap_or(table);
    specs
        .iter()
        .filter(|s| s.notify_table == bare)
        .map(|s| s.name.clone())
        .collect()
}

/// Brings a row back for every handler of `table` (or the handler named
/// `table`, see [`handlers_of`]) that has given up on it
/// (or is waiting to retry it). Returns the handlers whose state was cleared.
pub async fn retry(
    db: &impl GenericClient,
    table: &str,
    row_id: &str,
    specs: &[Spec],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut cleared = Vec::new();
    for handler in handlers_of(table, specs) {
        let had: bool = db
            .query_typed_one(
                "select reactor.retry($1, $2)",
                &[param(&handler), param(&row_id)],
            )
            .await?
            .get(0);
        if had {
            cleared.push(handler);
        }
    }
    Ok(cleared)
}
