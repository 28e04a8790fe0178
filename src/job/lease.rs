//! `reactor.handler_state`: claims, leases, fencing and failure records.
//!
//! A row has state here only while it is leased, waiting for a retry, or dead.
//! Every claim bumps `lease_token`; the final write of an attempt locks the
//! state row and checks owner and token, so a reactor that was paused past its
//! lease (and was replaced) cannot commit a second effect.
use crate::job::error::HandlerError;
use crate::job::handler::Spec;
use crate::store::db::{param, quote_literal};
use deadpool_postgres::Transaction;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// A claim on one row for one handler.
#[derive(Debug, Clone)]
pub struct Lease {
    pub handler: String,
    pub row_id: String,
    pub owner: Uuid,
    pub token: i64,
    /// Failed attempts before this one.
    pub attempts: i32,
}

impl Lease {
    /// The row's key as a UUID (the built-in tables' keys).
    pub fn row_uuid(&self) -> Result<uuid::Uuid, HandlerError> {
        uuid::Uuid::parse_str(&self.row_id).map_err(|e| {
            HandlerError::permanent(format!("row id {:?} is not a UUID: {e}", self.row_id))
        })
    }

    /// Opens a transaction on `client` fenced by this lease: the lease's
    /// state row is locked first, and the call fails with
    /// [`HandlerError::LeaseLost`] unless this reactor still holds it. Every
    /// write of an attempt goes through one of these, so a reactor that lost
    /// its lease (paused past it, replaced) cannot commit over the new holder.
    ///
    /// ```ignore
    /// let mut client = pool.get().await?;
    /// let tx = lease.begin(&mut client).await?;
    /// tx.execute("update …", &[&id]).await?;
    /// tx.commit().await?; // or tx.finish(): the row needs nothing more
    /// ```
    pub async fn begin<'a>(
        &'a self,
        client: &'a mut deadpool_postgres::Object,
    ) -> Result<FencedTx<'a>, HandlerError> {
        let tx = client.transaction().await?;
        self.hold(&tx).await?;
        Ok(FencedTx { tx, lease: self })
    }

    /// Locks this lease's state row in `tx`; fails with
    /// [`HandlerError::LeaseLost`] unless this reactor still holds it.
    /// Prefer [`Lease::begin`], which cannot be forgotten; this stays for
    /// callers that open their own transaction.
    pub async fn hold(&self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        let held = tx
            .query_opt(
                "select 1 from reactor.handler_state
                 where handler = $1 and row_id = $2 and lease_owner = $3 and lease_token = $4
                 for update",
                &[&self.handler, &self.row_id, &self.owner, &self.token],
            )
            .await?;
        match held {
            Some(_) => Ok(()),
            None => Err(HandlerError::LeaseLost),
        }
    }

    /// Drops the state row and commits `tx` (held with [`Lease::hold`]).
    /// Prefer [`FencedTx::finish`].
    pub async fn finish(
        &self,
        tx: Transaction<'_>,
    ) -> Result<crate::job::handler::Outcome, HandlerError> {
        FencedTx { tx, lease: self }.finish().await
    }

    /// One statement in its own fenced transaction (see [`Lease::begin`]);
    /// returns the number of rows it changed.
    pub async fn execute_fenced(
        &self,
        pool: &deadpool_postgres::Pool,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, HandlerError> {
        let mut client = pool.get().await?;
        let tx = self.begin(&mut client).await?;
        let n = tx.execute(sql, params).await?;
        tx.commit().await?;
        Ok(n)
    }
}

/// A transaction in which a [`Lease`] is held (its state row is locked until
/// the end of the transaction). Use it as the [`Transaction`] it derefs to;
/// end it with [`FencedTx::commit`] or [`FencedTx::finish`]. Dropped without
/// either, it rolls back.
pub struct FencedTx<'a> {
    tx: Transaction<'a>,
    lease: &'a Lease,
}

impl<'a> std::ops::Deref for FencedTx<'a> {
    type Target = Transaction<'a>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl FencedTx<'_> {
    /// Commits the writes; the lease stays held (the row may need more work).
    pub async fn commit(self) -> Result<(), HandlerError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Ends a successful attempt: drops the lease's state row and commits
    /// with the writes, so the row needs nothing more from this handler.
    pub async fn finish(self) -> Result<crate::job::handler::Outcome, HandlerError> {
        let lease = self.lease;
        self.tx
            .execute(
                "delete from reactor.handler_state
                 where handler = $1 and row_id = $2 and lease_owner = $3 and lease_token = $4",
                &[&lease.handler, &lease.row_id, &lease.owner, &lease.token],
            )
            .await?;
        self.tx.commit().await?;
        Ok(crate::job::handler::Outcome::Finished)
    }
}

/// The SQL a handler runs, built once from its spec.
///
/// Scans page through the table in key order (keyset pagination). Three details
/// keep a page's cost proportional to the page, not to the table: the first
/// page and the following ones are separate statements (an `$after is null or
/// key > $after` filter cannot become an index range in a generic plan); the
/// pending condition stands at the top level, so a partial index with that
/// predicate (sql/180_pending_markers.sql) holds exactly the candidate rows;
/// and the state condition is wrapped in a scalar subquery, which the planner
/// evaluates per candidate row with an index probe instead of flattening it
/// into an anti-join that walks reactor.handler_state on every page.
#[derive(Debug, Clone)]
pub struct Statements {
    /// Pending rows, no lock: `$1` limit (first page).
    pub pending_first: String,
    /// Pending rows after a key, no lock: `$1` limit, `$2` after-key.
    pub pending_after: String,
    /// Claims the pending rows among `$1` (text[]): `$2` owner, `$3` lease seconds.
    pub claim: String,
    /// For SQL actions: locks pending rows among `$1` and runs the effect.
    pub effect_by_ids: Option<String>,
    /// For SQL actions: the same over the first page (`$1` limit) …
    pub effect_first: Option<String>,
    /// … and over the next pages (`$1` limit, `$2` after-key).
    pub effect_after: Option<String>,
    /// Deletes up to `$1` state rows that are neither leased nor dead and
    /// whose row no longer needs the handler (done elsewhere, e.g. by a
    /// webhook, or deleted). Costs O(state rows of the handler), never O(table).
    pub forget: String,
}

impl Statements {
    /// `sql_effect` and `mark`: an SQL action's statements (see [`crate::job::handler::Action::Sql`]).
    pub fn build(spec: &Spec, sql_effect: Option<&str>, mark: Option<&str>) -> Self {
        let Spec {
            name,
            table,
            key,
            key_type,
            pending,
            ..
        } = spec;
        let kt = key_type.sql();
        let handler = quote_literal(name);
        // A row is workable if it needs the handler and is not dead, waiting
        // for its retry, or leased.
        let workable = format!(
            "({pending})
             and (select not exists (select 1 from reactor.handler_state s
               where s.handler = {handler} and s.row_id = t.{key}::text
                 and (s.dead_at is not null or s.next_attempt_at > now() or s.lease_expires_at > now())))"
        );
        let after = format!("t.{key} > $2::text::{kt}");
        let page = |filter: &str| {
            format!(
                "select t.{key}::text from {table} t
                 where {filter} and {workable}
                 order by t.{key} limit $1"
            )
        };
        let claim = format!(
            "with cand as (
               select t.{key}::text as row_id from {table} t
               where t.{key} = any($1::text[]::{kt}[]) and ({pending})
             )
             insert into reactor.handler_state as s
               (handler, row_id, lease_owner, lease_token, lease_expires_at, updated_at)
             select {handler}, row_id, $2, 1, now() + make_interval(secs => $3), now() from cand
             on conflict (handler, row_id) do update set
               lease_owner = excluded.lease_owner,
               lease_token = s.lease_token + 1,
               lease_expires_at = excluded.lease_expires_at,
               updated_at = now()
             where s.dead_at is null
               and (s.next_attempt_at is null or s.next_attempt_at <= now())
               and (s.lease_expires_at is null or s.lease_expires_at <= now())
             returning row_id, lease_token, attempts"
        );
        let marked = mark
            .map(|mark| format!("marked as ({mark}),"))
            .unwrap_or_default();
        let effect = |filter: &str, order_limit: &str| {
            sql_effect.map(|effect| {
                format!(
                    "with picked as (
                       select t.{key} as id from {table} t
                       where {filter} and {workable}
                       {order_limit}
                       for no key update of t skip locked
                     ),
                     effect as ({effect}),
                     {marked}
                     cleared as (
                       delete from reactor.handler_state s using picked p
                       where s.handler = {handler} and s.row_id = p.id::text
                     )
                     select id::text from picked order by id"
                )
            })
        };
        let order_limit = format!("order by t.{key} limit $1");
        // Not leased (an expired lease's work is gone), not dead, and the row
        // is not pending: probed per state row through the table's key.
        let forgettable = format!(
            "s.handler = {handler} and s.dead_at is null
             and (s.lease_expires_at is null or s.lease_expires_at <= now())"
        );
        let forget = format!(
            "with stale as (
               select s.row_id from reactor.handler_state s
               where {forgettable}
                 and (select not exists (select 1 from {table} t
                   where t.{key} = s.row_id::{kt} and ({pending})))
               limit $1
             )
             delete from reactor.handler_state s using stale
             where s.row_id = stale.row_id and {forgettable}"
        );
        Statements {
            pending_first: page("true"),
            pending_after: page(&after),
            claim,
            effect_by_ids: effect(&format!("t.{key} = any($1::text[]::{kt}[])"), ""),
            effect_first: effect("true", &order_limit),
            effect_after: effect(&after, &order_limit),
            forget,
        }
    }

    /// The pending-page statement for a page that starts after `after` (or at the start).
    pub fn pending_page(&self, after: &Option<String>) -> &str {
        match after {
            None => &self.pending_first,
            Some(_) => &self.pending_after,
        }
    }

    /// The SQL effect statement for such a page (SQL actions only).
    pub fn effect_page(&self, after: &Option<String>) -> Option<&str> {
        match after {
            None => self.effect_first.as_deref(),
            Some(_) => self.effect_after.as_deref(),
        }
    }
}

/// What recording a failure decided.
#[derive(Debug)]
pub struct Failure {
    pub attempts: i32,
    pub dead: bool,
    /// Seconds until the retry is due (when not dead).
    pub retry_in: f64,
}

/// When the next attempt is due after `n` failed attempts, in SQL:
/// `base * 2^(n-1)` seconds (`base` is parameter `$4`), capped at 10 minutes, ±10% jitter.
fn next_attempt(n: &str) -> String {
    format!("now() + make_interval(secs => least(600, $4 * power(2, ({n}) - 1)) * (0.9 + random() * 0.2))")
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
/// `$5` max attempts, `$6` permanent.
pub async fn record_failure(
    db: &impl GenericClient,
    handler: &str,
    row_id: &str,
    error: &str,
    backoff: Duration,
    max_attempts: i32,
    permanent: bool,
) -> Result<Failure, tokio_postgres::Error> {
    let sql = format!(
        "insert into reactor.handler_state as s
           (handler, row_id, attempts, last_error, next_attempt_at, dead_at, updated_at)
         values ($1, $2, 1, $3, {first}, case when 1 >= $5 or $6 then now() end, now())
         on conflict (handler, row_id) do update set
           attempts = s.attempts + 1,
           last_error = excluded.last_error,
           next_attempt_at = {next},
           dead_at = case when s.attempts + 1 >= $5 or $6 then now() end,
           lease_owner = null, lease_expires_at = null, updated_at = now()
         {FAILURE_RETURNING}",
        first = next_attempt("1"),
        next = next_attempt("s.attempts + 1"),
    );
    let row = db
        .query_typed_one(
            &sql,
            &[
                param(&handler),
                param(&row_id),
                param(&error),
                param(&backoff.as_secs_f64()),
                param(&max_attempts),
                param(&permanent),
            ],
        )
        .await?;
    Ok(failure(&row))
}

/// Records a failed leased attempt, only if this reactor still holds the lease.
/// Returns None when the lease was lost (the new holder owns the row's fate).
#[allow(clippy::too_many_arguments)]
pub async fn record_leased_failure(
    db: &impl GenericClient,
    lease: &Lease,
    error: &str,
    backoff: Duration,
    max_attempts: i32,
    permanent: bool,
    not_before: Duration,
) -> Result<Option<Failure>, tokio_postgres::Error> {
    let sql = format!(
        "update reactor.handler_state set
           attempts = attempts + 1,
           last_error = $3,
           next_attempt_at = greatest({next}, now() + make_interval(secs => $9)),
           dead_at = case when attempts + 1 >= $5 or $6 then now() end,
           lease_owner = null, lease_expires_at = null, updated_at = now()
         where handler = $1 and row_id = $2 and lease_owner = $7 and lease_token = $8
         {FAILURE_RETURNING}",
        next = next_attempt("attempts + 1"),
    );
    let row = db
        .query_typed_opt(
            &sql,
            &[
                param(&lease.handler),
                param(&lease.row_id),
                param(&error),
                param(&backoff.as_secs_f64()),
                param(&max_attempts),
                param(&permanent),
                param(&lease.owner),
                param(&lease.token),
                param(&not_before.as_secs_f64()),
            ],
        )
        .await?;
    Ok(row.as_ref().map(failure))
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

/// The leases whose work is running in this process right now, the only ones
/// the heartbeat renews. A lease is in here exactly as long as the
/// [`LiveLease`] guard its task owns exists: when the task ends in any way
/// (return, error, panic, abort) the guard is dropped and the lease is left to
/// expire or is released, never kept alive for work that is gone.
#[derive(Debug, Default)]
pub struct LiveLeases {
    held: Mutex<HashMap<(String, String), i64>>,
}

/// Keeps one lease in [`LiveLeases`] while it exists.
#[derive(Debug)]
pub struct LiveLease {
    registry: Arc<LiveLeases>,
    key: (String, String),
    token: i64,
}

impl LiveLeases {
    /// Registers `lease` as worked by a live task, until the guard is dropped.
    pub fn hold(self: &Arc<Self>, lease: &Lease) -> LiveLease {
        let key = (lease.handler.clone(), lease.row_id.clone());
        self.lock().insert(key.clone(), lease.token);
        LiveLease {
            registry: self.clone(),
            key,
            token: lease.token,
        }
    }

    /// The held leases as parallel arrays: handlers, row ids, tokens.
    fn snapshot(&self) -> (Vec<String>, Vec<String>, Vec<i64>) {
        let held = self.lock();
        let mut handlers = Vec::with_capacity(held.len());
        let mut row_ids = Vec::with_capacity(held.len());
        let mut tokens = Vec::with_capacity(held.len());
        for ((handler, row_id), token) in held.iter() {
            handlers.push(handler.clone());
            row_ids.push(row_id.clone());
            tokens.push(*token);
        }
        (handlers, row_ids, tokens)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), i64>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LiveLease {
    fn drop(&mut self) {
        let mut held = self.registry.lock();
        // A newer claim of the same row in this process replaced the entry: keep it.
        if held.get(&self.key) == Some(&self.token) {
            held.remove(&self.key);
        }
    }
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
    let (handlers, row_ids, tokens) = live.snapshot();
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
/// row if this reactor still holds the lease (handlers that end with
/// [`FencedTx::finish`] have already dropped it).
pub async fn release(db: &impl GenericClient, lease: &Lease) -> Result<u64, tokio_postgres::Error> {
    db.execute_typed(
        "delete from reactor.handler_state
         where handler = $1 and row_id = $2 and lease_owner = $3 and lease_token = $4",
        &[
            param(&lease.handler),
            param(&lease.row_id),
            param(&lease.owner),
            param(&lease.token),
        ],
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

#[cfg(test)]
mod live_lease_tests {
    use super::*;

    fn lease(row_id: &str, token: i64) -> Lease {
        Lease {
            handler: "renders".into(),
            row_id: row_id.into(),
            owner: Uuid::nil(),
            token,
            attempts: 0,
        }
    }

    #[test]
    fn a_lease_is_held_exactly_while_its_guard_lives_and_a_newer_claim_survives_an_older_guard() {
        let live = Arc::new(LiveLeases::default());
        let first = live.hold(&lease("a", 1));
        let other = live.hold(&lease("b", 5));
        assert_eq!(live.snapshot().1.len(), 2);
        // The same row claimed again (its old lease expired) before the old task ended.
        let again = live.hold(&lease("a", 2));
        drop(first);
        let (_, rows, tokens) = live.snapshot();
        let mut held: Vec<(String, i64)> = rows.into_iter().zip(tokens).collect();
        held.sort();
        assert_eq!(held, vec![("a".to_string(), 2), ("b".to_string(), 5)]);
        drop(again);
        drop(other);
        assert!(live.snapshot().0.is_empty());
    }

    #[test]
    fn a_panicking_task_releases_its_lease() {
        let live = Arc::new(LiveLeases::default());
        let registry = live.clone();
        let result = std::panic::catch_unwind(move || {
            let _guard = registry.hold(&lease("c", 1));
            panic!("the attempt panicked");
        });
        assert!(result.is_err());
        assert!(live.snapshot().0.is_empty());
    }
}
