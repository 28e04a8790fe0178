//! The sweeper: what holds from table state alone, every sweep interval.
use super::error::ServiceError;
use super::worker::RunningHandler;
use super::Shared;
use crate::job::handler::Action;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Shared {
    /// Every sweep interval, what holds from table state alone: each leased
    /// handler's own sweep (e.g. the stuck rule), and state rows that are
    /// neither leased nor dead and whose row needs nothing more are dropped.
    pub(super) async fn tidy(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.cfg.sweep_interval);
        loop {
            ticker.tick().await;
            for slot in &self.slots {
                if let Err(e) = self.tidy_slot(slot).await {
                    tracing::warn!(handler = %slot.handler.spec.name, error = %e, "tidying handler state failed; will try again");
                }
            }
            let limits = self
                .within(async |client| Ok(crate::store::limits::snapshot(&***client).await?))
                .await;
            match limits {
                Ok(states) => crate::store::limits::record_gauges(&states),
                Err(e) => tracing::warn!(error = %e, "reading the limits failed; will try again"),
            }
        }
    }

    async fn tidy_slot(&self, slot: &RunningHandler) -> Result<(), ServiceError> {
        if let Action::Leased(work) = &slot.handler.action {
            let swept = tokio::time::timeout(self.cfg.statement_timeout, work.sweep(&self.pool))
                .await
                .map_err(|_| crate::store::db::DbError::Deadline(self.cfg.statement_timeout))??;
            for id in swept {
                slot.inbox.push(id);
            }
        }
        // Bounded batches, so a large backlog of stale rows (e.g. left by an
        // older version) never becomes one long statement.
        const BATCH: i64 = 1000;
        if !slot.dead_backlog_marked.load(Ordering::SeqCst) {
            loop {
                let marked = self
                    .within(async |client| {
                        Ok(slot.statements.mark_dead_backlog(&***client, BATCH).await?)
                    })
                    .await?;
                if marked > 0 {
                    tracing::info!(handler = %slot.handler.spec.name, rows = marked, "took rows recorded dead out of the pending index");
                }
                if self.shutdown.is_cancelled() {
                    return Ok(());
                }
                if (marked as i64) < BATCH {
                    slot.dead_backlog_marked.store(true, Ordering::SeqCst);
                    break;
                }
            }
        }
        loop {
            let forgotten = self
                .within(async |client| Ok(slot.statements.forget(&***client, BATCH).await?))
                .await?;
            if forgotten > 0 {
                tracing::debug!(handler = %slot.handler.spec.name, rows = forgotten, "dropped state of rows that need nothing more");
            }
            if (forgotten as i64) < BATCH || self.shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }
}
