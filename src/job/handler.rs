//! What a handler is: a pending query (which rows still need me?) plus an
//! idempotent action on those rows. Two shapes of action:
//!
//! * [`Action::Sql`]: the whole effect is one SQL statement over the picked rows,
//!   run in the same statement that locks them (`FOR NO KEY UPDATE SKIP LOCKED`),
//!   so a batch of hundreds of rows costs one round trip and exactly-once
//!   comes from the database's unique constraints.
//! * [`Action::Leased`]: the work happens outside the database (downloads,
//!   provider calls), under a lease recorded in `reactor.handler_state` that is
//!   renewed while the work runs; the final write is fenced by the lease token.
pub use crate::job::error::HandlerError;
use crate::job::lease::Lease;
use async_trait::async_trait;
use std::sync::Arc;

/// The rows a handler cares about.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Handler name, as stored in `reactor.handler_state.handler`.
    pub name: String,
    /// Qualified table, e.g. `public.profiles` (the row source, alias `t`).
    pub table: String,
    /// Table name as it appears in notification payloads, e.g. `profiles`.
    pub notify_table: String,
    /// Primary key column and its type.
    pub key: String,
    pub key_type: KeyType,
    /// SQL condition over alias `t`: true while the row still needs this handler.
    /// Scans put it at the top level of their WHERE clause so the planner can
    /// walk a partial index whose predicate is this condition: keep it to
    /// columns of `t` (markers), and a sweep costs O(pending rows).
    pub pending: String,
    /// Statuses that can make a row pending; notifications with another status
    /// are ignored (None: every notification for the table).
    pub statuses: Option<Vec<String>>,
}

/// The type of a table's primary key (as written in REACTOR_CONFIG's `key_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Uuid,
    Bigint,
    Text,
}

impl KeyType {
    pub fn sql(self) -> &'static str {
        match self {
            KeyType::Uuid => "uuid",
            KeyType::Bigint => "bigint",
            KeyType::Text => "text",
        }
    }

    /// Whether `id` is a valid key of this type (ids in payloads are untrusted).
    pub fn accepts(self, id: &str) -> bool {
        match self {
            KeyType::Uuid => uuid::Uuid::parse_str(id).is_ok(),
            KeyType::Bigint => id.parse::<i64>().is_ok(),
            KeyType::Text => !id.is_empty(),
        }
    }
}

impl Spec {
    /// Whether a change of `table` to `status` (as a hint names them) could
    /// concern this handler.
    pub fn wants(&self, table: &str, status: Option<&str>) -> bool {
        table == self.notify_table
            && match (&self.statuses, status) {
                (None, _) => true,
                (Some(statuses), Some(status)) => statuses.iter().any(|s| s == status),
                (Some(_), None) => false,
            }
    }
}

pub enum Action {
    /// One statement over CTE `picked(id, src)`: the locked, pending rows,
    /// by key (`id`) and whole (`src`, the source row as a record, so an
    /// effect reads its columns as `(p.src).owner_id` without a lookup).
    Sql {
        effect: String,
        /// The assignment that sets the source row's marker (e.g.
        /// `debited_at = now()`), taking it out of the pending condition and
        /// its partial index. It runs on the picked rows in the same
        /// statement as `effect`. The effect must leave its row in place
        /// even when it already existed (ON CONFLICT DO NOTHING), so marking
        /// it is always true.
        mark: Option<String>,
        /// A nullable timestamp column of the source row that says the
        /// handler gave up on it (e.g. `debit_dead_at`): set when the row is
        /// recorded dead, cleared by `reactor.retry()`. The pending condition
        /// requires it null, so dead rows leave the pending index and a scan
        /// never walks them (sql/270_dead_markers.sql).
        dead: Option<String>,
    },
    Leased(Arc<dyn LeasedWork>),
}

pub struct Handler {
    pub spec: Spec,
    pub action: Action,
    /// Shared limits of its leased attempts (none by default).
    pub limits: crate::job::limits::Limits,
}

/// How an attempt that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing more to do for this row: the engine drops the lease's state row.
    Finished,
    /// Finished, and the attempt's last fenced write already dropped the
    /// lease's state row with it ([`crate::job::lease::FencedTx::finish`], or
    /// one statement gated on [`crate::job::lease::held_cte`]): nothing is
    /// left to release, which saves a round trip a row.
    Released,
    /// Not done yet, nothing failed (e.g. a prediction still running): the
    /// lease is given back and the row is looked at again after this delay,
    /// with no attempt counted.
    CheckAgainIn(std::time::Duration),
}

/// Work done under a lease. `run` must be idempotent: it may run again after a
/// crash at any point, and its writes must go through `lease` (see
/// [`Lease::begin`] and [`crate::job::lease::FencedTx::finish`]) so that a
/// reactor that lost its lease cannot commit over the one that took over.
#[async_trait]
pub trait LeasedWork: Send + Sync {
    async fn run(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
    ) -> Result<Outcome, HandlerError>;

    /// Runs on every sweep, independent of claims and leases: what the handler
    /// enforces from table state alone (e.g. the stuck rule), so it holds
    /// whatever state this or any reactor is in. Returns the ids of the rows
    /// it changed that may still need the handler.
    async fn sweep(&self, _pool: &deadpool_postgres::Pool) -> Result<Vec<String>, HandlerError> {
        Ok(Vec::new())
    }

    /// Called once when the row has just been marked dead, e.g. to show the
    /// failure on the row itself.
    async fn gave_up(
        &self,
        _pool: &deadpool_postgres::Pool,
        _row_id: &str,
        _error: &str,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}
