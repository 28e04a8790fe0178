//! Leased claims: claims pending rows as worker permits allow, runs each
//! attempt under its lease, and records how it ended (released, postponed or
//! failed, with retries scheduled).
use super::error::ServiceError;
use super::worker::RunningHandler;
use super::Shared;
use crate::job::handler::{HandlerError, LeasedWork, Outcome};
use crate::job::lease::Lease;
use crate::store::handler_state::{self, FailureKind};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument as _;

impl Shared {
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
    /// permits at a time) and runs each under its lease.
    pub(super) async fn leased(
        self: &Arc<Self>,
        slot: &RunningHandler,
        work: &Arc<dyn LeasedWork>,
        ids: &[String],
    ) -> Result<(), ServiceError> {
        let mut rest = ids;
        while !rest.is_empty() {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                p = self.permits.clone().acquire_owned() => p?,
            };
            let mut permits: Vec<OwnedSemaphorePermit> = vec![first];
            while permits.len() < rest.len() {
                match self.permits.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let (chunk, tail) = rest.split_at(permits.len());
            rest = tail;
            let claims = self
                .within(async |client| {
                    Ok(slot
                        .statements
                        .claim(&***client, chunk, self.instance, self.cfg.lease)
                        .await?)
                })
                .await?;
            for (claim, permit) in claims.into_iter().zip(permits) {
                self.announce(
                    &slot.handler.spec.notify_table,
                    &claim.row_id,
                    claim.attempts == 0,
                );
                let lease = Lease {
                    handler: slot.handler.spec.name.clone(),
                    row_id: claim.row_id,
                    owner: self.instance,
                    token: claim.token,
                    attempts: claim.attempts,
                };
                self.spawn_leased(slot.index, work.clone(), lease, permit);
            }
        }
        Ok(())
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
                if matches!(outcome, Ok(Outcome::Finished)) {
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
                    if let Err(e) = work.gave_up(&self.pool, &lease.row_id, &error).await {
                        tracing::warn!(error = %e, "recording the dead row on its table failed");
                    }
                }
            }
            None => tracing::warn!(%error, "attempt failed after the lease was lost"),
        }
        Ok(())
    }

    /// Puts `id` back into the slot's inbox after `delay` (sweeps are the safety net).
    pub(super) fn wake_later(self: &Arc<Self>, slot: &RunningHandler, id: &str, delay: Duration) {
        let shared = self.clone();
        let (index, id) = (slot.index, id.to_string());
        self.tracker.spawn(async move {
            tokio::select! {
                _ = shared.shutdown.cancelled() => {}
                _ = tokio::time::sleep(delay + Duration::from_millis(20)) => shared.slots[index].inbox.push(id),
            }
        });
    }
}
