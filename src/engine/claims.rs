//! Leased claims: claims pending rows as worker permits allow, runs each
//! attempt under its lease, and records how it ended (released, postponed or
//! failed, with retries scheduled).
use super::error::ServiceError;
use super::worker::RunningHandler;
use super::Shared;
use crate::job::handler::{Action, HandlerError, LeasedWork, Outcome};
use crate::job::lease::Lease;
use crate::store::handler_state::{self, FailureKind};
use crate::store::limits;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument as _;

/// The shortest wait for a limit: a slot or token freed by another reactor
/// is only seen by asking again.
const MIN_LIMIT_WAIT: Duration = Duration::from_millis(20);

/// What [`Shared::leased`] did with its rows.
#[derive(Debug, Default)]
pub(super) struct Worked {
    /// Rows claimed and started.
    pub started: usize,
    /// Rows their route's limit set aside until their turn.
    pub set_aside: Vec<String>,
}

impl Shared {
    /// Writes every leased handler's limits, its routes' included, to
    /// `reactor.limits` (at start).
    pub(super) async fn register_limits(&self) -> Result<(), crate::store::db::DbError> {
        for slot in &self.slots {
            if let Action::Leased(_) = slot.handler.action {
                let (name, wanted) = (&slot.handler.spec.name, &slot.handler.limits);
                crate::store::db::within(&self.pool, self.cfg.statement_timeout, async |client| {
                    Ok::<_, crate::store::db::DbError>(
                        limits::register(&***client, name, wanted).await?,
                    )
                })
                .await?;
                if wanted.any() || wanted.route_column().is_some() {
                    tracing::info!(handler = %name, limits = ?wanted, "limits shared by every reactor");
                }
            }
        }
        Ok(())
    }

    pub(super) fn after_failure(
        self: &Arc<Self>,
        slot: &RunningHandler,
        id: &str,
        error: &str,
        failure: &handler_state::Failure,
    ) {
        let name = &slot.handler.spec.name;
        metrics::counter!("reactor_rows_failed_total", "handler" => name.clone()).increment(1);
        if failure.dead {
            metrics::counter!("reactor_rows_dead_total", "handler" => name.clone()).increment(1);
            tracing::error!(handler = %name, id = %id, attempts = failure.attempts, %error, "row is dead: no more automatic retries");
            return;
        }
        tracing::warn!(handler = %name, id = %id, attempt = failure.attempts, %error, retry_in_s = failure.retry_in, "attempt failed; will retry");
        self.wake_later(slot, id, Duration::from_secs_f64(failure.retry_in));
    }

    /// Claims the pending rows among `ids` (as many as there are free worker
    /// permits at a time, and as the handler's shared limits allow) and runs
    /// each under its lease. While a limit of the handler holds rows back, the
    /// worker waits for it here (the time is counted in
    /// `reactor_limit_wait_seconds`). Rows held back by their route's limit
    /// are set aside until their turn instead (see [`Shared::set_aside`]), so
    /// the other routes' rows go on at once.
    pub(super) async fn leased(
        self: &Arc<Self>,
        slot: &RunningHandler,
        work: &Arc<dyn LeasedWork>,
        ids: &[String],
    ) -> Result<Worked, ServiceError> {
        let name = &slot.handler.spec.name;
        let mut rest: Vec<String> = ids.to_vec();
        let mut worked = Worked::default();
        while !rest.is_empty() {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(worked),
                p = self.permits.clone().acquire_owned() => p?,
            };
            // Rows this reactor set aside whose wait ended meanwhile join this
            // claim, first in line: a page of other rows does not make a
            // route's rows miss their turns.
            let due = slot.inbox.take_due(self.cfg.batch_size);
            if !due.is_empty() {
                rest.retain(|id| !due.contains(id));
                rest.splice(0..0, due);
            }
            let mut permits: Vec<OwnedSemaphorePermit> = vec![first];
            while permits.len() < rest.len() {
                match self.permits.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let n = permits.len();
            let prepare = self.sessions_kept.load(Ordering::SeqCst);
            let batch = self
                .within(async |client| {
                    Ok(slot
                        .statements
                        .claim(client, prepare, &rest[..n], self.instance, self.cfg.lease)
                        .await?)
                })
                .await?;
            // Waiting for a limit is not a stall: the database answers and the
            // rows move at the pace the limits allow.
            slot.progress.advanced();
            if batch.granted > batch.claims.len() {
                // Another reactor claimed some granted rows first: their tokens go
                // back to the handler's bucket and to their routes'.
                let unused = (batch.granted - batch.claims.len()) as i32;
                self.within(async |client| {
                    Ok(limits::refund(&***client, name, unused, &batch.lost_routes).await?)
                })
                .await?;
            }
            let claimed: HashSet<String> = batch.claims.iter().map(|c| c.row_id.clone()).collect();
            worked.started += claimed.len();
            let held = self.set_aside(slot, &batch.held);
            worked.set_aside.extend(held.iter().cloned());
            for (claim, permit) in batch.claims.into_iter().zip(permits) {
                self.announce(
                    &slot.handler.spec.notify_table,
                    &claim.row_id,
                    claim.attempts == 0,
                );
                let lease = Lease {
                    handler: name.clone(),
                    row_id: claim.row_id,
                    owner: self.instance,
                    token: claim.token,
                    attempts: claim.attempts,
                    deadline: self.cfg.statement_timeout,
                    prepare,
                };
                self.spawn_leased(slot.index, work.clone(), lease, permit);
            }
            match batch.limited {
                // Rows not claimed were done, leased or waiting elsewhere.
                None => {
                    rest.drain(..n);
                }
                // The rows held back stay first in line; wait for the limit.
                Some(limited) => {
                    rest.retain(|id| !claimed.contains(id) && !held.contains(id));
                    tracing::debug!(handler = %name, limit = %limited.reason, wait = ?limited.wait, waiting = rest.len(), "held back by a limit");
                    let started = std::time::Instant::now();
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(worked),
                        _ = tokio::time::sleep(limited.wait.max(MIN_LIMIT_WAIT)) => {}
                    }
                    // Its _sum is the time spent waiting because of each limit.
                    metrics::histogram!("reactor_limit_wait_seconds", "handler" => name.clone(), "limit" => limited.reason)
                        .record(started.elapsed().as_secs_f64());
                }
            }
        }
        Ok(worked)
    }

    /// Rows held back by their route's limit wait in the database until their
    /// turn (no attempt counted; pages and other reactors pass over them):
    /// each is offered again when its wait is over. The wait is counted in
    /// `reactor_limit_wait_seconds`, under the route's bucket
    /// (`<handler>[<route>]`). Returns the held rows' ids.
    fn set_aside(
        self: &Arc<Self>,
        slot: &RunningHandler,
        held: &[crate::store::pending::Held],
    ) -> HashSet<String> {
        for h in held {
            tracing::debug!(limit = %h.limit, reason = %h.reason, id = %h.row_id, wait = ?h.wait, "set aside by a route's limit");
            metrics::histogram!("reactor_limit_wait_seconds", "handler" => h.limit.clone(), "limit" => h.reason.clone())
                .record(h.wait.as_secs_f64());
            self.wake_later(slot, &h.row_id, h.wait);
        }
        held.iter().map(|h| h.row_id.clone()).collect()
    }

    /// A leased handler with a per-key column: whatever woke it, it works
    /// fair pages (keys taking turns) until no workable row is left, so the
    /// order rows are claimed in is the fair order, not the order of their
    /// notifications. Returns how many pending rows the pages held.
    pub(super) async fn fair_pages(
        self: &Arc<Self>,
        slot: &RunningHandler,
        work: &Arc<dyn LeasedWork>,
    ) -> Result<usize, ServiceError> {
        let limit = self.cfg.batch_size as i64;
        let mut found = 0;
        let mut set_aside: HashSet<String> = HashSet::new();
        while !self.shutdown.is_cancelled() {
            let ids = self
                .within(async |client| Ok(slot.statements.fair_page(&***client, limit).await?))
                .await?;
            found += ids.len();
            if ids.is_empty() {
                break;
            }
            let worked = self.leased(slot, work, &ids).await?;
            // A page that only set rows aside still moves on: the next one
            // passes over them (the rows of other routes behind them). Rows
            // set aside before come back to the pages after their turn; set
            // aside again, they are no reason for another page (a route at its
            // cap would page on without end).
            let fresh = worked
                .set_aside
                .into_iter()
                .filter(|id| set_aside.insert(id.clone()))
                .count();
            // Nothing claimable now (leased elsewhere in between, or held back):
            // the next wake-up or sweep looks again.
            if worked.started == 0 && fresh == 0 {
                break;
            }
        }
        Ok(found)
    }

    fn spawn_leased(
        self: &Arc<Self>,
        index: usize,
        work: Arc<dyn LeasedWork>,
        lease: Lease,
        permit: OwnedSemaphorePermit,
    ) {
        let shared = self.clone();
        let span = tracing::info_span!("work", handler = %lease.handler, id = %lease.row_id, attempt = lease.attempts + 1);
        // Owned by the task, so the heartbeat renews this lease exactly while
        // the task lives, however it ends.
        let live = self.live.hold(&lease);
        self.tracker.spawn(
            async move {
                let _permit = permit;
                let started = std::time::Instant::now();
                let outcome = tokio::select! {
                    outcome = work.run(&shared.pool, &lease) => outcome,
                    _ = live.lapsed(shared.cfg.lease) => {
                        // The heartbeat could not renew the lease for a whole
                        // lease period: the database is unreachable (or answers
                        // too slowly), and another reactor may take the row over.
                        // Whatever this attempt still waits on is dropped; if
                        // a connection of it ever wakes up, its fenced write
                        // finds the lease gone.
                        metrics::counter!("reactor_attempts_abandoned_total", "handler" => lease.handler.clone()).increment(1);
                        tracing::warn!(lease = ?shared.cfg.lease, "attempt given up: its lease went unrenewed for a whole lease period; the row is worked again once the lease has expired");
                        drop(live);
                        shared.wake_later(&shared.slots[index], &lease.row_id, shared.cfg.lease);
                        return;
                    }
                };
                if matches!(outcome, Ok(Outcome::Finished | Outcome::Released)) {
                    shared.slots[index].handled(1, started);
                }
                let recorded = shared.record_outcome(index, &work, &lease, outcome).await;
                shared.announce(&shared.slots[index].handler.spec.notify_table, &lease.row_id, false);
                if let Err(e) = recorded {
                    // The database is away: stop renewing so the lease expires,
                    // and look at the row again once it has.
                    drop(live);
                    tracing::warn!(error = %e, retry_in = ?shared.cfg.lease, "recording the attempt's outcome failed; the row is retried once its lease has expired");
                    shared.wake_later(&shared.slots[index], &lease.row_id, shared.cfg.lease);
                }
            }
            .instrument(span),
        );
    }

    /// Records how a leased attempt ended and schedules what comes next.
    async fn record_outcome(
        self: &Arc<Self>,
        index: usize,
        work: &Arc<dyn LeasedWork>,
        lease: &Lease,
        outcome: Result<Outcome, HandlerError>,
    ) -> Result<(), ServiceError> {
        let slot = &self.slots[index];
        let e = match outcome {
            Ok(Outcome::Finished) => {
                self.within(async |client| Ok(handler_state::release(&***client, lease).await?))
                    .await?;
                tracing::debug!("done");
                return Ok(());
            }
            Ok(Outcome::Released) => {
                tracing::debug!("done");
                return Ok(());
            }
            Ok(Outcome::CheckAgainIn(delay)) => {
                let postponed = self
                    .within(async |client| {
                        Ok(handler_state::postpone(&***client, lease, delay).await?)
                    })
                    .await?;
                if postponed {
                    self.wake_later(slot, &lease.row_id, delay);
                }
                return Ok(());
            }
            Err(e) => e,
        };
        let policy = self.cfg.retry_policy();
        let Some(kind) = FailureKind::of(&e, policy.transient_for) else {
            tracing::warn!("lease lost: another reactor took this row over; result discarded");
            return Ok(());
        };
        let error = e.to_string();
        if let (FailureKind::Transient(_), Some(delay)) = (kind, e.not_before()) {
            // The provider pushed back with a Retry-After: every reactor
            // pauses this handler until then, and the row waits without an
            // attempt counted (while its outage budget lasts).
            let pushed_back = self
                .within(async |client| {
                    Ok(handler_state::push_back(&***client, lease, &error, delay, kind).await?)
                })
                .await?;
            metrics::counter!("reactor_limit_pushbacks_total", "handler" => lease.handler.clone())
                .increment(1);
            tracing::warn!(pause = ?delay, %error, "pushed back by the provider: the handler is paused on every reactor");
            if pushed_back {
                self.wake_later(slot, &lease.row_id, delay);
                return Ok(());
            }
        }
        let not_before = e.not_before().unwrap_or_default();
        let failure = self
            .within(async |client| {
                Ok(handler_state::record_leased_failure(
                    &***client, lease, &error, &policy, kind, not_before,
                )
                .await?)
            })
            .await?;
        match failure {
            Some(failure) => {
                self.after_failure(slot, &lease.row_id, &error, &failure);
                if failure.dead {
                    // Bounded like every statement of an attempt: a silent
                    // connection must not keep this task (and its lease) alive.
                    let gave_up = tokio::time::timeout(
                        self.cfg.statement_timeout,
                        work.gave_up(&self.pool, &lease.row_id, &error),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(HandlerError::transient(format!(
                            "the database did not answer within {:?}",
                            self.cfg.statement_timeout
                        )))
                    });
                    if let Err(e) = gave_up {
                        tracing::warn!(error = %e, "recording the dead row on its table failed");
                    }
                }
            }
            None => tracing::warn!(%error, "attempt failed after the lease was lost"),
        }
        Ok(())
    }

    /// Puts `id` back into the slot's inbox after `delay`, as a row due (sweeps
    /// are the safety net).
    pub(super) fn wake_later(self: &Arc<Self>, slot: &RunningHandler, id: &str, delay: Duration) {
        let shared = self.clone();
        let (index, id) = (slot.index, id.to_string());
        self.tracker.spawn(async move {
            tokio::select! {
                _ = shared.shutdown.cancelled() => {}
                _ = tokio::time::sleep(delay + Duration::from_millis(20)) => shared.slots[index].inbox.push_due(id),
            }
        });
    }
}
