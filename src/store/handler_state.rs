//! `reactor.handler_state`: a row has state here only while it is leased,
//! waiting for a retry, or dead. Every statement on it outside the fenced
//! transactions of [`Lease`] is here.
use crate::job::error::{Budget, HandlerError};
use crate::job::lease::{Lease, LiveLeases};
use crate::store::db::param;
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// Whether the reactor's schema is there (`reactor migrate` has run).
pub async fn exists(db: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    let row = db
        .query_typed_one(
            "select to_regclass('reactor.handler_state') is not null",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// What recording a failure decided.
#[derive(Debug)]
pub struct Failure {
    pub attempts: i32,
    pub dead: bool,
    /// Seconds until the retry is due (when not dead).
    pub retry_in: f64,
}

/// How failed attempts are retried (REACTOR_RETRY_BACKOFF,
/// REACTOR_RETRY_BACKOFF_MAX, REACTOR_MAX_ATTEMPTS, REACTOR_RETRY_FOR).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Delay before the first retry; doubles with each failed attempt.
    pub backoff: Duration,
    /// The longest delay between two attempts.
    pub backoff_max: Duration,
    /// Attempts after which an unclassified failure kills the row.
    pub max_attempts: i32,
    /// Budget of a transient failure that brings none of its own.
    pub transient_for: Duration,
}

/// What kind of failure an attempt ended with, as recorded.
#[derive(Debug, Clone, Copy)]
pub enum FailureKind {
    /// Retried until REACTOR_MAX_ATTEMPTS attempts have failed.
    Counted,
    /// Dead at once.
    Permanent,
    /// Retried until the budget is spent, however many attempts that is.
    Transient(Budget),
}

impl FailureKind {
    /// The kind of `e` (None for a lost lease, which records nothing), the
    /// budget of an unbudgeted transient failure being `default_budget`.
    pub fn of(e: &HandlerError, default_budget: Duration) -> Option<Self> {
        match e {
            HandlerError::Retry(_) | HandlerError::RetryIn(..) => Some(FailureKind::Counted),
            HandlerError::Permanent(_) => Some(FailureKind::Permanent),
            HandlerError::Transient { budget, .. } => Some(FailureKind::Transient(
                budget.unwrap_or(Budget::For(default_budget)),
            )),
            HandlerError::LeaseLost => None,
        }
    }

    /// The SQL parameters `permanent`, `transient until` and `transient for
    /// seconds` of the failure statements.
    fn params(self) -> (bool, Option<DateTime<Utc>>, Option<f64>) {
        match self {
            FailureKind::Counted => (false, None, None),
            FailureKind::Permanent => (true, None, None),
            FailureKind::Transient(Budget::Until(t)) => (false, Some(t), None),
            FailureKind::Transient(Budget::For(d)) => (false, None, Some(d.as_secs_f64())),
        }
    }
}

/// When the next attempt is due after `n` failed attempts, in SQL:
/// `base * 2^(n-1)` seconds (`base` is parameter `$4`), capped at `$7`
/// seconds, ±10% jitter.
fn next_attempt(n: &str) -> String {
    format!("now() + make_interval(secs => least($7, $4 * power(2, least(({n}) - 1, 60))) * (0.9 + random() * 0.2))")
}

/// When a row is dead after a failed attempt, in SQL (`first` is when its
/// failures began): a permanent failure (`$6`) at once; a transient one
/// (`$8` until, or `$9` seconds after `first`) once its budget is spent;
/// any other after `$5` attempts.
fn dead_at(attempts: &str, first: &str) -> String {
    format!(
        "case when $6 then now()
              when $8::timestamptz is not null or $9::float8 is not null then
                case when now() >= coalesce($8, {first} + make_interval(secs => $9)) then now() end
              when {attempts} >= $5 then now() end"
    )
}

/// Columns returned by both failure statements, read by [`failure`].
const FAILURE_RETURNING: &str =
    "returning attempts, dead_at is not null, greatest(0, extract(epoch from (next_attempt_at - now())))::float8";

fn failure(row: &tokio_postgres::Row) -> Failure {
    Failure {
        attempts: row.get(0),
        dead: row.get(1),
        retry_in: row.get(2),
    }
}

/// Records a failed attempt of a row that was worked without a lease (SQL actions).
/// Parameters: `$1` handler, `$2` row id, `$3` error, `$4` backoff seconds,
/// `$5` max attempts, `$6` permanent, `$7` backoff cap seconds, `$8`/`$9` the
/// transient budget.
pub async fn record_failure(
    db: &impl GenericClient,
    handler: &str,
    row_id: &str,
    error: &str,
    policy: &RetryPolicy,
    kind: FailureKind,
) -> Result<Failure, tokio_postgres::Error> {
    let sql = format!(
        "insert into reactor.handler_state as s
           (handler, row_id, attempts, last_error, next_attempt_at, dead_at, first_failed_at, updated_at)
         values ($1, $2, 1, $3, {first}, {first_dead}, now(), now())
         on conflict (handler, row_id) do update set
           attempts = s.attempts + 1,
           last_error = excluded.last_error,
           next_attempt_at = {next},
           dead_at = {dead},
           first_failed_at = coalesce(s.first_failed_at, now()),
           lease_owner = null, lease_expires_at = null, updated_at = now()
         {FAILURE_RETURNING}",
        first = next_attempt("1"),
        first_dead = dead_at("1", "now()"),
        next = next_attempt("s.attempts + 1"),
        dead = dead_at("s.attempts + 1", "coalesce(s.first_failed_at, now())"),
    );
    let (permanent, until, budget_s) = kind.params();
    let row = db
        .query_typed_one(
            &sql,
            &[
                param(&handler),
                param(&row_id),
                param(&error),
                param(&policy.backoff.as_secs_f64()),
                param(&policy.max_attempts),
                param(&permanent),
                param(&policy.backoff_max.as_secs_f64()),
                param(&until),
                param(&budget_s),
            ],
        )
        .await?;
    Ok(failure(&row))
}

/// Records a failed leased attempt, only if this reactor still holds the lease.
/// Returns None when the lease was lost (the new holder owns the row's fate).
/// `not_before`: the next attempt waits at least this long.
pub async fn record_leased_failure(
    db: &impl GenericClient,
    lease: &Lease,
    error: &str,
    policy: &RetryPolicy,
    kind: FailureKind,
    not_before: Duration,
) -> Result<Option<Failure>, tokio_postgres::Error> {
    let sql = format!(
        "update reactor.handler_state set
           attempts = attempts + 1,
           last_error = $3,
           next_attempt_at = greatest({next}, now() + make_interval(secs => $12)),
           dead_at = {dead},
           first_failed_at = coalesce(first_failed_at, now()),
           lease_owner = null, lease_expires_at = null, updated_at = now()
         where handler = $1 and row_id = $2 and lease_owner = $10 and lease_token = $11
         {FAILURE_RETURNING}",
        next = next_attempt("attempts + 1"),
        dead = dead_at("attempts + 1", "coalesce(first_failed_at, now())"),
    );
    let (permanent, until, budget_s) = kind.params();
    let row = db
        .query_typed_opt(
            &sql,
            &[
                param(&lease.handler),
                param(&lease.row_id),
                param(&error),
                param(&policy.backoff.as_secs_f64()),
                param(&policy.max_attempts),
                param(&permanent),
                param(&policy.backoff_max.as_secs_f64()),
                param(&until),
                param(&budget_s),
                param(&lease.owner),
                param(&lease.token),
                param(&not_before.as_secs_f64()),
            ],
        )
        .await?;
    Ok(row.as_ref().map(failure))
}

/// A provider's push-back (a 429/503 with Retry-After) on a leased attempt,
/// in one statement: the handler is paused on every reactor for `delay`
/// (`reactor.limits.paused_until`), and the row is given back without an
/// attempt counted, due again after `delay` — while the failure's time
/// budget (`kind`, from the row's first failure) lasts. Returns false when
/// the row was not given back (the lease was lost, or the budget is spent:
/// record the failure as usual then).
pub async fn push_back(
    db: &impl GenericClient,
    lease: &Lease,
    error: &str,
    delay: Duration,
    kind: FailureKind,
) -> Result<bool, tokio_postgres::Error> {
    let (_, until, budget_s) = kind.params();
    let n = db
        .execute_typed(
            "with paused as (
               insert into reactor.limits as l (handler, paused_until)
               values ($1, now() + make_interval(secs => $5))
               on conflict (handler) do update set
                 paused_until = greatest(l.paused_until, excluded.paused_until), updated_at = now()
             )
             update reactor.handler_state set
               next_attempt_at = now() + make_interval(secs => $5),
               first_failed_at = coalesce(first_failed_at, now()),
               last_error = $6,
               lease_owner = null, lease_expires_at = null, updated_at = now()
             where handler = $1 and row_id = $2 and lease_owner = $3 and lease_token = $4
               and ($7::timestamptz is null or now() < $7)
               and ($8::float8 is null
                    or now() < coalesce(first_failed_at, now()) + make_interval(secs => $8))",
            &[
                param(&lease.handler),
                param(&lease.row_id),
                param(&lease.owner),
                param(&lease.token),
                param(&delay.as_secs_f64()),
                param(&error),
                param(&until),
                param(&budget_s),
            ],
        )
        .await?;
    Ok(n > 0)
}

/// Gives the row back without counting a failure; it is due again after `delay`.
/// Returns false when the lease was lost.
pub async fn postpone(
    db: &impl GenericClient,
    lease: &Lease,
    delay: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let n = db
        .execute_typed(
            "update reactor.handler_state set
               next_attempt_at = now() + make_interval(secs => $5),
               lease_owner = null, lease_expires_at = null, updated_at = now()
             where handler = $1 and row_id = $2 and lease_owner = $3 and lease_token = $4",
            &[
                param(&lease.handler),
                param(&lease.row_id),
                param(&lease.owner),
                param(&lease.token),
                param(&delay.as_secs_f64()),
            ],
        )
        .await?;
    Ok(n > 0)
}

/// Extends the leases in `live` that this reactor still holds (called
/// periodically). Only leases of running work are renewed: a lease whose task
/// is gone expires, and the row is picked up again.
pub async fn renew(
    db: &impl GenericClient,
    owner: Uuid,
    live: &LiveLeases,
    lease: Duration,
) -> Result<u64, tokio_postgres::Error> {
    let (handlers, row_ids, tokens) = live.held();
    if handlers.is_empty() {
        return Ok(0);
    }
    db.execute_typed(
        "update reactor.handler_state s set lease_expires_at = now() + make_interval(secs => $2)
         from unnest($3::text[], $4::text[], $5::int8[]) as l(handler, row_id, token)
         where s.handler = l.handler and s.row_id = l.row_id
           and s.lease_token = l.token and s.lease_owner = $1",
        &[
            param(&owner),
            param(&lease.as_secs_f64()),
            param(&handlers),
            param(&row_ids),
            param(&tokens),
        ],
    )
    .await
}

/// Ends an attempt after which the row needs nothing more: drops its state
/// row if this reactor still holds the lease. The engine calls it for
/// [`Outcome::Finished`](crate::job::handler::Outcome::Finished);
/// [`FencedTx::finish`](crate::job::lease::FencedTx::finish) calls it inside
/// the attempt's last transaction.
pub async fn release(db: &impl GenericClient, lease: &Lease) -> Result<u64, tokio_postgres::Error> {
    db.execute_typed(
        "delete from reactor.handler_state
         where handler = $1 and row_id = $2 and lease_owner = $3 and lease_token = $4",
        &lease.fence_params(),
    )
    .await
}

/// Gives back every lease this reactor holds (at shutdown), so other reactors
/// can take the rows at once instead of waiting for the leases to expire.
pub async fn release_all(
    db: &impl GenericClient,
    owner: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    db.execute_typed(
        "delete from reactor.handler_state where lease_owner = $1 and attempts = 0 and dead_at is null",
        &[param(&owner)],
    )
    .await?;
    db.execute_typed(
        "update reactor.handler_state set lease_owner = null, lease_expires_at = null where lease_owner = $1",
        &[param(&owner)],
    )
    .await
}
