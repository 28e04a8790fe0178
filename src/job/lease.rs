//! Leases: the claim of one row for one handler, and the fencing of its attempt.
//!
//! Every claim bumps `lease_token`; the final write of an attempt locks the
//! state row and checks owner and token, so a reactor that was paused past its
//! lease (and was replaced) cannot commit a second effect. The statements that
//! claim, renew, release and record failures are in [`crate::store::handler_state`]
//! and [`crate::store::pending`].
use crate::job::error::HandlerError;
use crate::store::db::param;
use deadpool_postgres::Transaction;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::types::Type;
use uuid::Uuid;

/// How long a fenced transaction may wait idle between its statements (they
/// follow one another without waiting on anything else).
const FENCED_TX_IDLE: &str = "5s";

/// A claim on one row for one handler.
#[derive(Debug, Clone)]
pub struct Lease {
    pub handler: String,
    pub row_id: String,
    pub owner: Uuid,
    pub token: i64,
    /// Failed attempts before this one.
    pub attempts: i32,
    /// How long one database round of the attempt may take
    /// (REACTOR_STATEMENT_TIMEOUT): see [`Lease::on_db`].
    pub deadline: Duration,
    /// Whether the attempt's hottest statements may be prepared once per
    /// connection: see [`crate::store::db::query_hot`].
    pub prepare: bool,
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
    ///
    /// The transaction may sit idle for at most [`FENCED_TX_IDLE`] (set in the
    /// same round trip): if the network between us and the server goes
    /// silent, the server ends the session and frees the state row, so the
    /// reactor that takes the expired lease over is not held back by a lock
    /// nobody will release.
    async fn hold(&self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        let [handler, row_id, owner, token] = self.fence_params();
        let held = tx
            .query_typed_opt(
                "select set_config('idle_in_transaction_session_timeout', $5, true)
                 from reactor.handler_state
                 where handler = $1 and row_id = $2 and lease_owner = $3 and lease_token = $4
                 for update",
                &[handler, row_id, owner, token, param(&FENCED_TX_IDLE)],
            )
            .await?;
        match held {
            Some(_) => Ok(()),
            None => Err(HandlerError::LeaseLost),
        }
    }

    /// The lease as the four parameters of [`held_cte`] (handler, row id,
    /// owner, token), to append after a statement's own.
    pub fn fence_params(&self) -> [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 4] {
        [
            param(&self.handler),
            param(&self.row_id),
            param(&self.owner),
            param(&self.token),
        ]
    }

    /// Runs `statements` on a connection of `pool`, all within the lease's
    /// [`deadline`](Lease::deadline). Every database round of an attempt goes
    /// through here: on a silent network (a flow a NAT forgot, a pooler that
    /// took the query and never answers) a statement neither answers nor
    /// fails, while the heartbeat, on fresh connections, keeps the lease
    /// alive, so without a deadline the attempt would hang for good. A
    /// connection that misses it is closed (with the pool's idle ones) and
    /// the attempt fails as an outage, to be tried again.
    pub async fn on_db<T>(
        &self,
        pool: &deadpool_postgres::Pool,
        statements: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, HandlerError>,
    ) -> Result<T, HandlerError> {
        crate::store::db::within_mut(pool, self.deadline, statements).await
    }

    /// One statement in its own fenced transaction (see [`Lease::begin`]);
    /// returns the number of rows it changed.
    pub async fn execute_fenced(
        &self,
        pool: &deadpool_postgres::Pool,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, HandlerError> {
        self.on_db(pool, async |client| {
            let tx = self.begin(client).await?;
            let n = tx.execute(sql, params).await?;
            tx.commit().await?;
            Ok(n)
        })
        .await
    }
}

/// The fence of a write in one statement, as a CTE named `held`: it locks
/// the lease's state row while this reactor still holds the lease, as
/// [`Lease::begin`] does for a transaction, in one round trip instead of
/// four. Gate every write of the statement on `exists (select from held)`
/// and return `(select count(*) from held)`: 0 means the lease is lost and
/// nothing was written. It returns the state row's key (`handler`,
/// `row_id`). Its four parameters start at `$first`
/// ([`Lease::fence_params`]).
pub fn held_cte(first: usize) -> String {
    let [handler, row_id, owner, token] = [first, first + 1, first + 2, first + 3];
    format!(
        "held as materialized (
           select handler, row_id from reactor.handler_state
           where handler = ${handler}::text and row_id = ${row_id}::text
             and lease_owner = ${owner}::uuid and lease_token = ${token}::int8
           for update)"
    )
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
    pub async fn finish(self) -> Result<(), HandlerError> {
        crate::store::handler_state::release(&*self.tx, self.lease).await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// The leases whose work is running in this process right now, the only ones
/// the heartbeat renews. A lease is in here exactly as long as the
/// [`LiveLease`] guard its task owns exists: when the task ends in any way
/// (return, error, panic, abort) the guard is dropped and the lease is left to
/// expire or is released, never kept alive for work that is gone.
///
/// Each lease also keeps when it was last known to be renewed (claimed, or
/// renewed by a heartbeat that got its answer): an attempt whose lease went a
/// whole lease period without renewal may already be someone else's, and is
/// given up ([`LiveLease::lapsed`]).
#[derive(Debug, Default)]
pub struct LiveLeases {
    held: Mutex<HashMap<(String, String), Held>>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    token: i64,
    renewed: Instant,
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
        let held = Held {
            token: lease.token,
            renewed: Instant::now(),
        };
        self.lock().insert(key.clone(), held);
        LiveLease {
            registry: self.clone(),
            key,
            token: lease.token,
        }
    }

    /// The held leases as parallel arrays: handlers, row ids, tokens.
    pub(crate) fn held(&self) -> (Vec<String>, Vec<String>, Vec<i64>) {
        let held = self.lock();
        let mut handlers = Vec::with_capacity(held.len());
        let mut row_ids = Vec::with_capacity(held.len());
        let mut tokens = Vec::with_capacity(held.len());
        for ((handler, row_id), h) in held.iter() {
            handlers.push(handler.clone());
            row_ids.push(row_id.clone());
            tokens.push(h.token);
        }
        (handlers, row_ids, tokens)
    }

    /// Every lease held now was renewed by a statement sent at `sent` (the
    /// server counts the lease from a moment after that).
    pub(crate) fn renewed(&self, sent: Instant) {
        for h in self.lock().values_mut() {
            h.renewed = h.renewed.max(sent);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LiveLease {
    /// Resolves once this lease has gone `lease` without a renewal this
    /// process knows of (or was replaced by a newer claim of the same row):
    /// another reactor may hold the row by then, and work still waiting on the
    /// database waits on a connection that may never answer.
    pub async fn lapsed(&self, lease: Duration) {
        loop {
            let renewed = match self.registry.lock().get(&self.key) {
                Some(h) if h.token == self.token => h.renewed,
                _ => return,
            };
            let expiry = renewed + lease;
            if Instant::now() >= expiry {
                return;
            }
            tokio::time::sleep_until(expiry).await;
        }
    }
}

impl Drop for LiveLease {
    fn drop(&mut self) {
        let mut held = self.registry.lock();
        // A newer claim of the same row in this process replaced the entry: keep it.
        if held.get(&self.key).map(|h| h.token) == Some(self.token) {
            held.remove(&self.key);
        }
    }
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
            deadline: Duration::from_secs(30),
            prepare: false,
        }
    }

    #[test]
    fn a_lease_is_held_exactly_while_its_guard_lives_and_a_newer_claim_survives_an_older_guard() {
        let live = Arc::new(LiveLeases::default());
        let first = live.hold(&lease("a", 1));
        let other = live.hold(&lease("b", 5));
        assert_eq!(live.held().1.len(), 2);
        // The same row claimed again (its old lease expired) before the old task ended.
        let again = live.hold(&lease("a", 2));
        drop(first);
        let (_, rows, tokens) = live.held();
        let mut held: Vec<(String, i64)> = rows.into_iter().zip(tokens).collect();
        held.sort();
        assert_eq!(held, vec![("a".to_string(), 2), ("b".to_string(), 5)]);
        drop(again);
        drop(other);
        assert!(live.held().0.is_empty());
    }

    #[tokio::test]
    async fn a_lease_lapses_a_lease_period_after_its_last_renewal() {
        let live = Arc::new(LiveLeases::default());
        let guard = live.hold(&lease("d", 1));
        let period = Duration::from_millis(300);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let renewed = Instant::now();
        live.renewed(renewed);
        guard.lapsed(period).await;
        assert!(renewed.elapsed() >= period, "lapsed before a lease period");
        // A newer claim of the same row: the old attempt's lease is gone at once.
        let _newer = live.hold(&lease("d", 2));
        tokio::time::timeout(
            Duration::from_secs(5),
            guard.lapsed(Duration::from_secs(3600)),
        )
        .await
        .expect("a replaced lease has lapsed");
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
        assert!(live.held().0.is_empty());
    }
}
