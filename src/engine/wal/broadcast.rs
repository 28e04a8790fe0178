//! In WAL mode no trigger sends what dashboards and Supabase clients listen
//! to, so one reactor at a time sends it from what it decodes:
//! `NOTIFY job_status`, and where `realtime.send` exists the Realtime
//! broadcast the generation trigger sent (topic `job_status:<owner>`).
//!
//! The sender is the holder of a lease, the one row of `reactor.wal_sender`
//! (sql/210_wal_sender_lease.sql), which only the reactor's role may write:
//! not an advisory lock, whose keys any login may take (and so silence these
//! for good). The holder renews the lease while it sends and releases it when
//! its session ends; the others try to take it over now and then, and get it
//! once it is released or has expired. Every send checks, in its own
//! statement, that the lease is still this reactor's, so a reactor that
//! stalled past its lease never sends beside the one that took over. No
//! transaction stays open for it: a lease is a row, not a lock.
//!
//! Payloads are gathered for up to [`WINDOW`] and sent in one statement, so a
//! burst of single-row writers costs the database a statement per window,
//! not one per commit. Under sustained load a table's per-row job_status
//! payloads give way to a quiet announcement, as in notify mode ([`Busy`]).
use super::busy::Busy;
use super::{db, Hint, WalError, MODE_CHECK};
use crate::store::db::{describe, param};
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::Client;
use uuid::Uuid;

/// How long payloads wait to be sent together.
pub(super) const WINDOW: Duration = Duration::from_millis(10);
/// Payloads kept for another try while sending fails (per kind).
const MAX_QUEUED: usize = 10_000;
/// How long the lease lasts unless renewed: a sender that dies without
/// releasing it (kill -9, a lost network) is replaced after this.
const LEASE: Duration = Duration::from_secs(6);
/// The holder renews its lease when this much of it has passed.
const RENEW: Duration = MODE_CHECK;
/// Takes the lease for token $1 for $2 seconds if it is free, expired or
/// already this token's; returns a row when it did.
const TAKE_LEASE: &str = "update reactor.wal_sender
    set holder = $1, expires_at = now() + make_interval(secs => $2)
    where holder = $1 or holder is null or expires_at <= now()
    returning true";
/// Gives the lease of token $1 up, so another reactor takes it at once.
const RELEASE_LEASE: &str =
    "update reactor.wal_sender set expires_at = '-infinity' where holder = $1";
/// The fence of every send: whether token $2 holds an unexpired lease.
const HOLDS_LEASE: &str =
    "exists (select 1 from reactor.wal_sender where holder = $2 and expires_at > now())";
/// How long releasing may take when the session ends.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) struct Broadcaster {
    pool: Pool,
    /// This reactor's lease token (one per session).
    token: Uuid,
    /// When this reactor last took or renewed the lease (None: another sends).
    renewed: Option<Instant>,
    /// When this reactor last tried to take the lease.
    tried: Option<Instant>,
    /// Whether `realtime.send` exists, looked up once per session.
    realtime: Option<bool>,
    status: Vec<String>,
    to_realtime: Vec<String>,
    since: Option<Instant>,
    busy: Busy,
}

impl Broadcaster {
    /// `quiet_above` and `quiet_lease`: REACTOR_QUIET_ABOVE and _LEASE.
    pub(super) fn new(pool: Pool, quiet_above: u64, quiet_lease: Duration) -> Self {
        Broadcaster {
            pool,
            token: Uuid::new_v4(),
            renewed: None,
            tried: None,
            realtime: None,
            status: Vec::new(),
            to_realtime: Vec::new(),
            since: None,
            busy: Busy::new(quiet_above, quiet_lease),
        }
    }

    /// Queues what `hints` mean for clients elsewhere (called at least every
    /// [`super::TICK`], hints or not: it also ends the busy window).
    pub(super) fn add(&mut self, hints: &[Hint]) {
        let now = std::time::Instant::now();
        let rolled = self.busy.roll(now);
        if self.renewed.is_some() {
            for table in &rolled.went_quiet {
                tracing::info!(%table, "table busy: its rows' job_status payloads give way to a quiet announcement");
            }
            for table in &rolled.ended {
                tracing::info!(%table, "table no longer busy: its rows' job_status payloads are sent again");
            }
        }
        for payload in rolled.announcements {
            self.status.push(payload);
            self.since.get_or_insert_with(Instant::now);
        }
        for hint in hints.iter().filter(|h| h.status_feed) {
            let per_row = self.busy.count(&hint.change.table, now);
            if !hint.realtime && !per_row {
                continue;
            }
            let payload = serde_json::to_string(&hint.change).unwrap_or_default();
            if hint.realtime {
                self.to_realtime.push(payload.clone());
            }
            if per_row {
                self.status.push(payload);
            }
            self.since.get_or_insert_with(Instant::now);
        }
    }

    /// When what is queued is due to be sent (None: nothing is queued).
    pub(super) fn due(&self) -> Option<Instant> {
        self.since.map(|t| t + WINDOW)
    }

    /// Sends what is queued if it is due and this reactor holds the lease
    /// (taking it if it is free, tried at most every [`MODE_CHECK`]);
    /// otherwise another reactor sends it, and it is dropped here.
    pub(super) async fn flush_due(&mut self, client: &Client) -> Result<(), WalError> {
        if self.due().is_none_or(|due| due > Instant::now()) {
            return Ok(());
        }
        self.since = None;
        let status = std::mem::take(&mut self.status);
        let to_realtime = std::mem::take(&mut self.to_realtime);
        let fresh = self.renewed.is_some_and(|t| t.elapsed() < RENEW);
        let may_try =
            self.renewed.is_some() || self.tried.is_none_or(|t| t.elapsed() >= MODE_CHECK);
        if !fresh && may_try {
            self.tried = Some(Instant::now());
            self.renewed = self.take_lease(client).await?.then(Instant::now);
        }
        if self.renewed.is_some() {
            match self.send(&status, &to_realtime).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(
                        "wal hints: another reactor took over sending job_status/Realtime"
                    );
                    self.renewed = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "wal hints: sending job_status/Realtime failed; trying again");
                    self.requeue(status, to_realtime);
                }
            }
        }
        Ok(())
    }

    /// Puts payloads that could not be sent back in front of what came
    /// since, to be sent at the next flush; past [`MAX_QUEUED`] the oldest
    /// are dropped (and counted): an outage must not grow memory for ever.
    fn requeue(&mut self, mut status: Vec<String>, mut to_realtime: Vec<String>) {
        status.append(&mut self.status);
        to_realtime.append(&mut self.to_realtime);
        for queue in [&mut status, &mut to_realtime] {
            let excess = queue.len().saturating_sub(MAX_QUEUED);
            if excess > 0 {
                queue.drain(..excess);
                metrics::counter!("reactor_wal_status_dropped_total").increment(excess as u64);
            }
        }
        self.status = status;
        self.to_realtime = to_realtime;
        self.since.get_or_insert_with(Instant::now);
    }

    /// Takes or renews the lease; whether this reactor holds it now.
    async fn take_lease(&self, client: &Client) -> Result<bool, WalError> {
        let rows = client
            .query_typed(
                TAKE_LEASE,
                &[param(&self.token), param(&LEASE.as_secs_f64())],
            )
            .await
            .map_err(db)?;
        Ok(!rows.is_empty())
    }

    /// Gives the lease up (if held) as the session ends, so another reactor
    /// sends from its next try instead of after the lease expires. Best
    /// effort: on a dead connection the lease simply expires.
    pub(super) async fn release(&self, client: &Client) {
        if self.renewed.is_none() {
            return;
        }
        let released = tokio::time::timeout(
            RELEASE_TIMEOUT,
            client.query_typed(RELEASE_LEASE, &[param(&self.token)]),
        )
        .await;
        if let Ok(Err(e)) = released {
            tracing::debug!(error = %describe(&e), "wal hints: releasing the sender lease failed");
        }
    }

    /// Sends `status` and `to_realtime` if the lease is still this reactor's;
    /// Ok(false) when it is not (nothing was sent).
    async fn send(&mut self, status: &[String], to_realtime: &[String]) -> Result<bool, String> {
        let pooled = self.pool.get().await.map_err(|e| e.to_string())?;
        if self.realtime.is_none() {
            let exists = pooled
                .query_typed(
                    "select to_regprocedure('realtime.send(jsonb,text,text,boolean)') is not null",
                    &[],
                )
                .await
                .map_err(|e| describe(&e))?
                .first()
                .is_some_and(|r| r.get(0));
            self.realtime = Some(exists);
        }
        let held = pooled
            .query_typed(
                &format!(
                    "with sent as (select pg_notify('job_status', p) from unnest($1::text[]) p where {HOLDS_LEASE})
                     select {HOLDS_LEASE}, (select count(*) from sent)"
                ),
                &[param(&status), param(&self.token)],
            )
            .await
            .map_err(|e| describe(&e))?
            .first()
            .is_some_and(|r| r.get(0));
        if held && self.realtime == Some(true) && !to_realtime.is_empty() {
            pooled
                .query_typed(
                    &format!(
                        "with sent as (
                           select realtime.send(p::jsonb, 'status', 'job_status:' || (p::jsonb ->> 'owner_id'), true)
                           from unnest($1::text[]) p where {HOLDS_LEASE})
                         select count(*) from sent"
                    ),
                    &[param(&to_realtime), param(&self.token)],
                )
                .await
                .map_err(|e| describe(&e))?;
        }
        Ok(held)
    }
}
