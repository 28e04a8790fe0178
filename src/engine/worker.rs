//! The worker of one handler: takes what piled up in its inbox and works it.
//! A scan runs the pending query page by page (keyset pagination); ids are
//! worked in one batch; an SQL batch that fails because of a row is retried
//! row by row.
use super::error::ServiceError;
use super::inbox::Inbox;
use super::Shared;
use crate::job::handler::{Action, Handler};
use crate::store::handler_state;
use crate::store::pending::{ScannedPage, Statements};
use backon::{BackoffBuilder as _, ExponentialBuilder};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One handler as the engine runs it: its SQL, its inbox and its scan count.
pub(super) struct RunningHandler {
    pub(super) index: usize,
    pub(super) handler: Handler,
    pub(super) statements: Statements,
    pub(super) inbox: Inbox,
    pub(super) scans: AtomicU64,
    /// Rows recorded dead before their dead marker existed are all marked
    /// (done once per process, by the first tidy pass).
    pub(super) dead_backlog_marked: AtomicBool,
    /// Whether the worker moves (what readiness calls stalled).
    pub(super) progress: Arc<super::Progress>,
}

impl RunningHandler {
    /// Counts `rows` handled in one attempt or batch that began at `started`.
    pub(super) fn handled(&self, rows: usize, started: std::time::Instant) {
        let name = self.handler.spec.name.clone();
        metrics::counter!("reactor_rows_handled_total", "handler" => name.clone())
            .increment(rows as u64);
        metrics::histogram!("reactor_handler_duration_seconds", "handler" => name)
            .record(started.elapsed().as_secs_f64());
    }

    /// Records one finished scan (sweep, replay or poll) that found `found`
    /// pending rows: its cost is what operators watch as history grows.
    fn swept(&self, found: usize, started: std::time::Instant) {
        let name = self.handler.spec.name.clone();
        metrics::histogram!("reactor_sweep_duration_seconds", "handler" => name.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("reactor_sweep_rows_examined_total", "handler" => name.clone())
            .increment(found as u64);
        metrics::gauge!("reactor_backlog", "handler" => name).set(found as f64);
    }
}

/// Whether a database error is about the rows (worth retrying row by row and
/// counting against them) rather than about the connection or the server.
fn is_row_fault(e: &ServiceError) -> bool {
    let ServiceError::Db(e) = e else {
        return false;
    };
    match e.as_db_error() {
        None => false,
        Some(db) => {
            let class = &db.code().code()[..2];
            !matches!(class, "08" | "40" | "53" | "57" | "58")
        }
    }
}

/// The largest page of an SQL handler's scan, in rows.
const SQL_PAGE_MAX: i64 = 5000;

/// The size of an SQL handler's scan pages: REACTOR_BATCH_SIZE at first,
/// doubling while pages come back full (a backlog), up to [`SQL_PAGE_MAX`]
/// (or the batch size, if larger). A page is one statement and one commit
/// whatever its size, and that fixed cost dominated a drain in pages of 500
/// (measured on 2 cores, 50k favorites: pages of 500 took 1.8× the one
/// statement of the floor, of 2,000 1.25×, of 5,000 1.05×). A page holds its
/// rows' locks for its length (about 100 ms at 5,000 rows); sweeps with
/// nothing pending never grow.
struct SqlPage {
    rows: i64,
    max: i64,
}

impl SqlPage {
    fn new(batch: i64) -> Self {
        SqlPage {
            rows: batch,
            max: batch.max(SQL_PAGE_MAX),
        }
    }

    /// A page of `got` rows was handled.
    fn after(&mut self, got: usize) {
        if got as i64 >= self.rows {
            self.rows = (self.rows * 2).min(self.max);
        }
    }
}

impl Shared {
    pub(super) async fn worker(self: Arc<Self>, i: usize) {
        let slot = &self.slots[i];
        // After a failed pass: 200 ms, doubling up to 25.6 s, until a pass succeeds.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_millis(200 * 128))
            .without_max_times();
        let mut delays = backoff.build();
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = slot.inbox.wake.notified() => {}
            }
            slot.progress.waiting();
            loop {
                if self.shutdown.is_cancelled() {
                    return;
                }
                let result = if slot.inbox.scan.swap(false, Ordering::SeqCst) {
                    // The scan sees every row the queued ids point at.
                    slot.inbox.clear();
                    let result = self.scan(slot).await;
                    if result.is_ok() {
                        slot.scans.fetch_add(1, Ordering::SeqCst);
                        self.note_replay();
                    }
                    result
                } else {
                    let (ids, arrived) = slot.inbox.take(self.cfg.batch_size);
                    if ids.is_empty() {
                        slot.progress.idle();
                        break;
                    }
                    if let Some(arrived) = arrived {
                        metrics::histogram!("reactor_notify_to_start_seconds", "handler" => slot.handler.spec.name.clone())
                            .record(arrived.elapsed().as_secs_f64());
                    }
                    self.work(slot, ids).await
                };
                match result {
                    Ok(()) => {
                        slot.progress.advanced();
                        delays = backoff.build();
                    }
                    Err(e) => {
                        // The database is unreachable or overloaded: nothing is
                        // lost (the rows stay pending); back off and rescan.
                        let delay = delays.next().expect("retries without a limit");
                        tracing::warn!(handler = %slot.handler.spec.name, error = %e, retry_in = ?delay, "handler pass failed");
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        slot.inbox.scan.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
    }

    fn note_replay(&self) {
        if self
            .slots
            .iter()
            .all(|s| s.scans.load(Ordering::SeqCst) > 0)
        {
            self.readiness.replayed.store(true, Ordering::SeqCst);
        }
    }

    /// Works the rows among `ids` that are still pending.
    async fn work(
        self: &Arc<Self>,
        slot: &RunningHandler,
        ids: Vec<String>,
    ) -> Result<(), ServiceError> {
        match &slot.handler.action {
            Action::Sql { .. } => self.sql_ids(slot, &ids).await,
            Action::Leased(work) if slot.statements.fair_page.is_some() => {
                self.fair_pages(slot, work).await.map(|_| ())
            }
            Action::Leased(work) => self.leased(slot, work, &ids).await.map(|_| ()),
        }
    }

    /// Runs the handler's pending query over the whole table, page by page.
    async fn scan(self: &Arc<Self>, slot: &RunningHandler) -> Result<(), ServiceError> {
        let started = std::time::Instant::now();
        let result = self.scan_pages(slot).await;
        if let Ok(found) = result {
            slot.swept(found, started);
        }
        result.map(|_| ())
    }

    /// The pages of one scan; returns how many pending rows the pages held.
    async fn scan_pages(self: &Arc<Self>, slot: &RunningHandler) -> Result<usize, ServiceError> {
        if let (Action::Leased(work), Some(_)) = (&slot.handler.action, &slot.statements.fair_page)
        {
            return self.fair_pages(slot, work).await;
        }
        let limit = self.cfg.batch_size as i64;
        let mut sql_page = SqlPage::new(limit);
        let mut after: Option<String> = None;
        let mut found = 0usize;
        loop {
            let started = std::time::Instant::now();
            let page: ScannedPage = match &slot.handler.action {
                Action::Sql { .. } => {
                    let effect = self
                        .within(async |client| {
                            Ok(slot
                                .statements
                                .effect_page(&***client, sql_page.rows, after.as_deref())
                                .await?)
                        })
                        .await;
                    match effect {
                        Ok(page) => {
                            if page.handled > 0 {
                                tracing::debug!(handler = %slot.handler.spec.name, rows = page.handled, "handled a page");
                                slot.handled(page.handled, started);
                            }
                            sql_page.after(page.handled);
                            page
                        }
                        Err(e) if is_row_fault(&e) => {
                            tracing::warn!(handler = %slot.handler.spec.name, error = %e, "a page failed; retrying its rows one by one");
                            let ids = self.pending_page(slot, limit, &after).await?;
                            self.sql_one_by_one(slot, &ids).await?;
                            ScannedPage::of_keys(ids)
                        }
                        Err(e) => return Err(e),
                    }
                }
                Action::Leased(work) => {
                    let ids = self.pending_page(slot, limit, &after).await?;
                    self.leased(slot, work, &ids).await?;
                    ScannedPage::of_keys(ids)
                }
            };
            found += page.handled;
            match page.last {
                Some(last) if !self.shutdown.is_cancelled() => after = Some(last),
                _ => return Ok(found),
            }
        }
    }

    async fn pending_page(
        &self,
        slot: &RunningHandler,
        limit: i64,
        after: &Option<String>,
    ) -> Result<Vec<String>, ServiceError> {
        self.within(async |client| {
            Ok(slot
                .statements
                .pending_page(&***client, limit, after.as_deref())
                .await?)
        })
        .await
    }

    /// Runs `statements` on a pooled connection within REACTOR_STATEMENT_TIMEOUT
    /// (see [`crate::store::db::within`]).
    pub(super) async fn within<T>(
        &self,
        statements: impl AsyncFnOnce(&deadpool_postgres::Object) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        crate::store::db::within(&self.pool, self.cfg.statement_timeout, statements).await
    }

    /// SQL action over notified ids: one statement for the batch; if the batch
    /// fails because of some row, each row on its own so one bad row cannot
    /// hold back the others.
    async fn sql_ids(
        self: &Arc<Self>,
        slot: &RunningHandler,
        ids: &[String],
    ) -> Result<(), ServiceError> {
        let started = std::time::Instant::now();
        let effect = self
            .within(async |client| Ok(slot.statements.effect_by_ids(&***client, ids).await?))
            .await;
        match effect {
            Ok(handled) => {
                slot.handled(handled, started);
                tracing::debug!(handler = %slot.handler.spec.name, notified = ids.len(), handled, "handled notified rows");
                Ok(())
            }
            Err(e) if is_row_fault(&e) => self.sql_one_by_one(slot, ids).await,
            Err(e) => Err(e),
        }
    }

    async fn sql_one_by_one(
        self: &Arc<Self>,
        slot: &RunningHandler,
        ids: &[String],
    ) -> Result<(), ServiceError> {
        let name = &slot.handler.spec.name;
        for id in ids {
            let span = tracing::info_span!("work", handler = %name, id = %id);
            let _enter = span.enter();
            let started = std::time::Instant::now();
            let effect = self
                .within(async |client| {
                    Ok(slot
                        .statements
                        .effect_by_ids(&***client, std::slice::from_ref(id))
                        .await?)
                })
                .await;
            match effect {
                Ok(handled) => slot.handled(handled, started),
                Err(e) if is_row_fault(&e) => {
                    let error = e.to_string();
                    let failure = self
                        .within(async |client| {
                            Ok(handler_state::record_failure(
                                &***client,
                                name,
                                id,
                                &error,
                                &self.cfg.retry_policy(),
                                handler_state::FailureKind::Counted,
                            )
                            .await?)
                        })
                        .await?;
                    if failure.dead {
                        // Out of the pending index: scans no longer walk it.
                        self.within(async |client| {
                            Ok(slot.statements.mark_dead(&***client, id).await?)
                        })
                        .await?;
                    }
                    self.after_failure(slot, id, &error, &failure);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_pages_grow_while_full_up_to_the_cap() {
        let mut page = SqlPage::new(500);
        page.after(499);
        assert_eq!(page.rows, 500, "a page that was not full keeps its size");
        let mut sizes = Vec::new();
        for _ in 0..6 {
            page.after(page.rows as usize);
            sizes.push(page.rows);
        }
        assert_eq!(sizes, [1000, 2000, 4000, 5000, 5000, 5000]);
        // A batch size above the cap is never made smaller.
        let mut big = SqlPage::new(8000);
        big.after(8000);
        assert_eq!(big.rows, 8000);
    }
}
