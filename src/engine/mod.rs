//! Claiming and dispatching: turns hints (notifications) and sweeps (pending
//! queries) into handler work, with bounded concurrency, leases, retries and
//! graceful shutdown.
//!
//! Each handler has an inbox (ids from notifications, plus a "scan" flag) and
//! one worker. The worker takes whatever has piled up: a scan request runs the
//! handler's pending query page by page (keyset pagination, never the whole
//! backlog in memory); ids are worked in one batch. An inbox that overflows
//! just turns into a scan: notifications are hints, table state is the truth.
pub mod listener;
pub mod notification;
pub mod status_feed;
pub mod wal;

use crate::config::RunConfig;
use crate::job::handler::{Action, Done, Handler, HandlerError, LeasedWork};
use crate::job::lease::{self, Lease, Statements};
use crate::store::db::param;
use deadpool_postgres::Pool;
use listener::{Event, Listener};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use uuid::Uuid;

/// Ids an inbox holds before further notifications turn into a rescan.
const INBOX_CAPACITY: usize = 10_000;
/// Status changes buffered per SSE client before it must resync.
const STATUS_BUFFER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "DATABASE_URL points at port 6543, Supabase's transaction-mode pooler, where LISTEN does not work. \
         Use the direct connection (port 5432) or the session-mode pooler, or set REACTOR_LISTEN=false to poll"
    )]
    TransactionPooler,
    #[error("the database has no reactor schema: run `reactor migrate` first")]
    NotMigrated,
    #[error(transparent)]
    Db(#[from] crate::store::db::DbError),
}

/// Readiness as seen from outside (HTTP /readyz, tests).
#[derive(Debug, Default)]
pub struct Status {
    /// The listener is connected and hears itself (always true when poll-only).
    pub listening: AtomicBool,
    /// Every handler finished a replay since start.
    pub replayed: AtomicBool,
}

impl Status {
    pub fn ready(&self) -> bool {
        self.listening.load(Ordering::SeqCst) && self.replayed.load(Ordering::SeqCst)
    }
}

struct Inbox {
    ids: Mutex<VecDeque<String>>,
    /// When the oldest id still queued arrived (for notify-to-start latency).
    oldest: Mutex<Option<std::time::Instant>>,
    scan: AtomicBool,
    wake: Notify,
}

impl Slot {
    /// Counts `rows` handled in one attempt or batch that began at `started`.
    fn handled(&self, rows: usize, started: std::time::Instant) {
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

impl Inbox {
    fn new() -> Self {
        Inbox {
            ids: Mutex::new(VecDeque::new()),
            oldest: Mutex::new(None),
            scan: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn push(&self, id: String) {
        {
            let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
            if ids.len() < INBOX_CAPACITY {
                ids.push_back(id);
                self.oldest
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(std::time::Instant::now);
            } else {
                self.scan.store(true, Ordering::SeqCst);
            }
        }
        self.wake.notify_one();
    }

    fn request_scan(&self) {
        self.scan.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Up to `max` queued ids, and when the oldest of them arrived.
    fn take(&self, max: usize) -> (Vec<String>, Option<std::time::Instant>) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let n = ids.len().min(max);
        let mut batch: Vec<String> = ids.drain(..n).collect();
        let mut oldest = self.oldest.lock().unwrap_or_else(|e| e.into_inner());
        let arrived = if ids.is_empty() {
            oldest.take()
        } else {
            *oldest
        };
        drop(oldest);
        batch.sort();
        batch.dedup();
        (batch, arrived)
    }

    fn clear(&self) {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

struct Slot {
    index: usize,
    handler: Handler,
    statements: Statements,
    inbox: Inbox,
    scans: AtomicU64,
}

struct Inner {
    cfg: RunConfig,
    /// Job status changes for SSE clients; a slow receiver lags, it never blocks us.
    statuses: tokio::sync::broadcast::Sender<crate::engine::notification::Change>,
    /// Checks job_status hints against the tables and feeds `statuses`.
    status_feed: Arc<crate::engine::status_feed::StatusFeed>,
    pool: Pool,
    instance: Uuid,
    slots: Vec<Slot>,
    permits: Arc<Semaphore>,
    /// Leases of attempts running in this process: what the heartbeat renews.
    live: Arc<lease::LiveLeases>,
    tracker: TaskTracker,
    status: Arc<Status>,
    shutdown: CancellationToken,
}

pub struct Engine {
    inner: Arc<Inner>,
}

/// Parameters of a page statement: the limit, and the key to start after (if any).
fn page_params<'a>(
    limit: &'a i64,
    after: &'a Option<String>,
) -> Vec<(
    &'a (dyn tokio_postgres::types::ToSql + Sync),
    tokio_postgres::types::Type,
)> {
    match after {
        None => vec![param(limit)],
        Some(after) => vec![param(limit), param(after)],
    }
}

/// Whether a database error is about the rows (worth retrying row by row and
/// counting against them) rather than about the connection or the server.
fn is_row_fault(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => false,
        Some(db) => {
            let class = &db.code().code()[..2];
            !matches!(class, "08" | "40" | "53" | "57" | "58")
        }
    }
}

impl Engine {
    pub fn new(
        cfg: RunConfig,
        handlers: Vec<Handler>,
        shutdown: CancellationToken,
    ) -> Result<Self, EngineError> {
        // Leased work, SQL batches, the heartbeat and spare connections.
        let pool = crate::store::db::pool(&cfg.database_url, cfg.concurrency + handlers.len() + 2)?;
        let slots = handlers
            .into_iter()
            .enumerate()
            .map(|(index, handler)| {
                let (effect, mark) = match &handler.action {
                    Action::Sql { effect, mark } => (Some(effect.as_str()), mark.as_deref()),
                    Action::Leased(_) => (None, None),
                };
                Slot {
                    index,
                    statements: Statements::build(&handler.spec, effect, mark),
                    handler,
                    inbox: Inbox::new(),
                    scans: AtomicU64::new(0),
                }
            })
            .collect();
        let statuses = tokio::sync::broadcast::channel(STATUS_BUFFER).0;
        Ok(Engine {
            inner: Arc::new(Inner {
                status_feed: Arc::new(crate::engine::status_feed::StatusFeed::new(
                    statuses.clone(),
                )),
                statuses,
                permits: Arc::new(Semaphore::new(cfg.concurrency)),
                live: Arc::default(),
                cfg,
                pool,
                instance: Uuid::new_v4(),
                slots,
                tracker: TaskTracker::new(),
                status: Arc::new(Status::default()),
                shutdown,
            }),
        })
    }

    pub fn status(&self) -> Arc<Status> {
        self.inner.status.clone()
    }

    pub fn pool(&self) -> Pool {
        self.inner.pool.clone()
    }

    /// Job status changes, verified against the tables (see `status_feed`).
    pub fn statuses(&self) -> tokio::sync::broadcast::Sender<crate::engine::notification::Change> {
        self.inner.statuses.clone()
    }

    /// Runs until the shutdown token is cancelled, then finishes in-flight work
    /// (up to the grace period) and releases this reactor's leases.
    pub async fn run(self) -> Result<(), EngineError> {
        let inner = self.inner;
        let cfg = &inner.cfg;
        if cfg.listen
            && crate::store::db::parse_url(&cfg.database_url)?
                .get_ports()
                .contains(&6543)
        {
            return Err(EngineError::TransactionPooler);
        }
        inner.wait_for_schema().await?;
        tracing::info!(instance = %inner.instance, handlers = inner.slots.len(), listen = cfg.listen, "reactor running");

        for i in 0..inner.slots.len() {
            let w = inner.clone();
            inner.tracker.spawn(async move { w.worker(i).await });
        }
        let heartbeat = tokio::spawn(inner.clone().heartbeat());
        let tidy = tokio::spawn(inner.clone().tidy());
        let status_feed = tokio::spawn(
            inner
                .status_feed
                .clone()
                .run(inner.pool.clone(), inner.shutdown.clone()),
        );
        let outbox = cfg
            .outbox_poll
            .map(|every| tokio::spawn(inner.clone().drain_outbox(every)));

        let mut listener = if cfg.listen {
            let sink_inner = inner.clone();
            let sink: listener::Sink = Arc::new(move |event| sink_inner.route(event));
            let l = Listener {
                url: cfg.database_url.clone(),
                check_interval: cfg.listen_check_interval,
                check_timeout: cfg.listen_check_timeout,
                sink,
            };
            let wal = wal::WalSource {
                url: cfg.database_url.clone(),
                poll_interval: cfg.wal_poll,
                pool: inner.pool.clone(),
                sink: l.sink.clone(),
            };
            inner.tracker.spawn(wal.run(inner.shutdown.clone()));
            Some(tokio::spawn(l.run(inner.shutdown.clone())))
        } else {
            inner.status.listening.store(true, Ordering::SeqCst);
            None
        };

        // Start-up replay, then periodic sweeps (and polls when not listening).
        inner.scan_all();
        let period = if cfg.listen {
            cfg.sweep_interval
        } else {
            cfg.poll_interval.min(cfg.sweep_interval)
        };
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = inner.shutdown.cancelled() => break,
                _ = ticker.tick() => inner.scan_all(),
                ended = async { listener.as_mut().expect("guarded").await }, if listener.is_some() => {
                    listener = None;
                    let Ok(Err(deaf)) = ended else { break };
                    // A pooler eats notifications: keep doing the work by polling.
                    tracing::error!(poll_interval = ?cfg.poll_interval, "{deaf}. Working on in poll-only mode (polling every REACTOR_POLL_INTERVAL) until restarted");
                    inner.status.listening.store(true, Ordering::SeqCst);
                    ticker = tokio::time::interval(cfg.poll_interval.min(cfg.sweep_interval));
                }
            }
        }

        tracing::info!("shutting down: finishing in-flight work");
        inner.tracker.close();
        if tokio::time::timeout(cfg.shutdown_grace, inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?cfg.shutdown_grace, "in-flight work did not finish in time; its leases are released");
        }
        heartbeat.abort();
        tidy.abort();
        status_feed.abort();
        if let Some(outbox) = outbox {
            outbox.abort();
        }
        match inner.pool.get().await {
            Ok(client) => match lease::release_all(&**client, inner.instance).await {
                Ok(_) => tracing::info!("leases released"),
                Err(e) => {
                    tracing::warn!(error = %crate::store::db::describe(&e), "releasing leases failed; they expire on their own")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "releasing leases failed; they expire on their own")
            }
        }
        Ok(())
    }
}

impl Inner {
    async fn wait_for_schema(&self) -> Result<(), EngineError> {
        let mut delay = Duration::from_millis(200);
        loop {
            let check = async {
                let client = self.pool.get().await.map_err(|e| e.to_string())?;
                client
                    .query_typed_one(
                        "select to_regclass('reactor.handler_state') is not null",
                        &[],
                    )
                    .await
                    .map(|row| row.get::<_, bool>(0))
                    .map_err(|e| crate::store::db::describe(&e))
            };
            match check.await {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(EngineError::NotMigrated),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "database not reachable yet")
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    fn scan_all(&self) {
        for slot in &self.slots {
            slot.inbox.request_scan();
        }
    }

    fn route(&self, event: Event) {
        match event {
            Event::Connected => {
                self.status.listening.store(true, Ordering::SeqCst);
                self.scan_all();
            }
            Event::Disconnected => {
                metrics::counter!("reactor_listener_reconnects_total").increment(1);
                self.status.listening.store(false, Ordering::SeqCst);
            }
            Event::Status(change) => self.status_feed.hint(change),
            Event::Retry { handler, id } => {
                for slot in self.slots.iter().filter(|s| s.handler.spec.name == handler) {
                    if slot.handler.spec.key_type.accepts(&id) {
                        slot.inbox.push(id.clone());
                    }
                }
            }
            Event::Change(change) => {
                for slot in &self.slots {
                    let spec = &slot.handler.spec;
                    if !spec.wants(&change) {
                        continue;
                    }
                    if spec.key_type.accepts(&change.id) {
                        slot.inbox.push(change.id.clone());
                    } else {
                        tracing::warn!(table = %change.table, id = %change.id, "ignoring a notification whose id is not a valid key");
                    }
                }
            }
        }
    }

    /// Outbox mode: every `every`, takes the hints the triggers appended to
    /// reactor.outbox (in batches), routes them as if they had been notified,
    /// and sends their job_status notifications in one statement per batch.
    async fn drain_outbox(self: Arc<Self>, every: Duration) {
        const BATCH: i64 = 10_000;
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            let drained = async {
                let client = self.pool.get().await.map_err(|e| e.to_string())?;
                loop {
                    let rows = client
                        .query_typed(
                            "with taken as (
                               delete from reactor.outbox
                               where ctid = any(array(select ctid from reactor.outbox limit $1))
                               returning payload, to_status
                             ),
                             status as (
                               select pg_notify('job_status', payload) from taken where to_status
                             )
                             select payload, (select count(*) from status) from taken",
                            &[param(&BATCH)],
                        )
                        .await
                        .map_err(|e| crate::store::db::describe(&e))?;
                    for row in &rows {
                        match crate::engine::notification::parse(row.get(0)) {
                            Ok(crate::engine::notification::Message::Change(change)) => {
                                self.route(Event::Change(change))
                            }
                            _ => tracing::warn!(
                                payload = row.get::<_, &str>(0),
                                "ignoring a malformed outbox entry"
                            ),
                        }
                    }
                    if (rows.len() as i64) < BATCH {
                        return Ok::<(), String>(());
                    }
                }
            };
            if let Err(e) = drained.await {
                tracing::warn!(error = %e, "draining reactor.outbox failed; will try again");
            }
        }
    }

    async fn heartbeat(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.cfg.lease / 3);
        loop {
            ticker.tick().await;
            let renewed = async {
                let client = self.pool.get().await.map_err(|e| e.to_string())?;
                lease::renew(&**client, self.instance, &self.live, self.cfg.lease)
                    .await
                    .map_err(|e| crate::store::db::describe(&e))
            };
            if let Err(e) = renewed.await {
                tracing::warn!(error = %e, "renewing leases failed");
            }
        }
    }

    /// Every sweep interval, what holds from table state alone: each leased
    /// handler's own sweep (e.g. the stuck rule), and state rows that are
    /// neither leased nor dead and whose row needs nothing more are dropped.
    async fn tidy(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.cfg.sweep_interval);
        loop {
            ticker.tick().await;
            for slot in &self.slots {
                if let Err(e) = self.tidy_slot(slot).await {
                    tracing::warn!(handler = %slot.handler.spec.name, error = %e, "tidying handler state failed; will try again");
                }
            }
        }
    }

    async fn tidy_slot(&self, slot: &Slot) -> Result<(), String> {
        if let Action::Leased(work) = &slot.handler.action {
            for id in work.sweep(&self.pool).await.map_err(|e| e.to_string())? {
                slot.inbox.push(id);
            }
        }
        // Bounded batches, so a large backlog of stale rows (e.g. left by an
        // older version) never becomes one long statement.
        const BATCH: i64 = 1000;
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        loop {
            let forgotten = client
                .execute_typed(&slot.statements.forget, &[param(&BATCH)])
                .await
                .map_err(|e| crate::store::db::describe(&e))?;
            if forgotten > 0 {
                tracing::debug!(handler = %slot.handler.spec.name, rows = forgotten, "dropped state of rows that need nothing more");
            }
            if (forgotten as i64) < BATCH || self.shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    async fn worker(self: Arc<Self>, i: usize) {
        let slot = &self.slots[i];
        let mut failures = 0u32;
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = slot.inbox.wake.notified() => {}
            }
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
                        break;
                    }
                    if let Some(arrived) = arrived {
                        metrics::histogram!("reactor_notify_to_start_seconds", "handler" => slot.handler.spec.name.clone())
                            .record(arrived.elapsed().as_secs_f64());
                    }
                    self.work(slot, ids).await
                };
                match result {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        // The database is unreachable or overloaded: nothing is
                        // lost (the rows stay pending); back off and rescan.
                        let delay = Duration::from_millis(200 * 2u64.pow(failures.min(7)));
                        failures += 1;
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
            self.status.replayed.store(true, Ordering::SeqCst);
        }
    }

    /// Works the rows among `ids` that are still pending.
    async fn work(self: &Arc<Self>, slot: &Slot, ids: Vec<String>) -> Result<(), String> {
        match &slot.handler.action {
            Action::Sql { .. } => self.sql_ids(slot, &ids).await,
            Action::Leased(work) => self.leased(slot, work, &ids).await,
        }
    }

    /// Runs the handler's pending query over the whole table, page by page.
    async fn scan(self: &Arc<Self>, slot: &Slot) -> Result<(), String> {
        let started = std::time::Instant::now();
        let result = self.scan_pages(slot).await;
        if let Ok(found) = result {
            slot.swept(found, started);
        }
        result.map(|_| ())
    }

    /// The pages of one scan; returns how many pending rows the pages held.
    async fn scan_pages(self: &Arc<Self>, slot: &Slot) -> Result<usize, String> {
        let limit = self.cfg.batch_size as i64;
        let mut after: Option<String> = None;
        let mut found = 0usize;
        loop {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            let started = std::time::Instant::now();
            let page: Vec<String> = match (
                &slot.handler.action,
                slot.statements.effect_page(&after),
            ) {
                (Action::Sql { .. }, Some(effect_page)) => {
                    match client
                        .query_typed(effect_page, &page_params(&limit, &after))
                        .await
                    {
                        Ok(rows) => {
                            if !rows.is_empty() {
                                tracing::debug!(handler = %slot.handler.spec.name, rows = rows.len(), "handled a page");
                                slot.handled(rows.len(), started);
                            }
                            rows.iter().map(|r| r.get(0)).collect()
                        }
                        Err(e) if is_row_fault(&e) => {
                            tracing::warn!(handler = %slot.handler.spec.name, error = %crate::store::db::describe(&e), "a page failed; retrying its rows one by one");
                            let ids = self.pending_page(&client, slot, limit, &after).await?;
                            drop(client);
                            self.sql_one_by_one(slot, &ids).await?;
                            ids
                        }
                        Err(e) => return Err(crate::store::db::describe(&e)),
                    }
                }
                (Action::Leased(work), _) => {
                    let ids = self.pending_page(&client, slot, limit, &after).await?;
                    drop(client);
                    self.leased(slot, work, &ids).await?;
                    ids
                }
                (Action::Sql { .. }, None) => {
                    unreachable!("SQL actions always have an effect statement")
                }
            };
            found += page.len();
            match page.last() {
                Some(last) if !self.shutdown.is_cancelled() => after = Some(last.clone()),
                _ => return Ok(found),
            }
        }
    }

    async fn pending_page(
        &self,
        client: &deadpool_postgres::Client,
        slot: &Slot,
        limit: i64,
        after: &Option<String>,
    ) -> Result<Vec<String>, String> {
        let rows = client
            .query_typed(
                slot.statements.pending_page(after),
                &page_params(&limit, after),
            )
            .await
            .map_err(|e| crate::store::db::describe(&e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// SQL action over notified ids: one statement for the batch; if the batch
    /// fails because of some row, each row on its own so one bad row cannot
    /// hold back the others.
    async fn sql_ids(self: &Arc<Self>, slot: &Slot, ids: &[String]) -> Result<(), String> {
        let effect = slot
            .statements
            .effect_by_ids
            .as_deref()
            .expect("SQL action");
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let started = std::time::Instant::now();
        match client.query_typed(effect, &[param(&ids)]).await {
            Ok(rows) => {
                slot.handled(rows.len(), started);
                tracing::debug!(handler = %slot.handler.spec.name, notified = ids.len(), handled = rows.len(), "handled notified rows");
                Ok(())
            }
            Err(e) if is_row_fault(&e) => {
                drop(client);
                self.sql_one_by_one(slot, ids).await
            }
            Err(e) => Err(crate::store::db::describe(&e)),
        }
    }

    async fn sql_one_by_one(self: &Arc<Self>, slot: &Slot, ids: &[String]) -> Result<(), String> {
        let effect = slot
            .statements
            .effect_by_ids
            .as_deref()
            .expect("SQL action");
        let name = &slot.handler.spec.name;
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        for id in ids {
            let span = tracing::info_span!("work", handler = %name, id = %id);
            let _enter = span.enter();
            let started = std::time::Instant::now();
            match client
                .query_typed(effect, &[param(&vec![id.clone()])])
                .await
            {
                Ok(rows) => slot.handled(rows.len(), started),
                Err(e) if is_row_fault(&e) => {
                    let error = crate::store::db::describe(&e);
                    let failure = lease::record_failure(
                        &**client,
                        name,
                        id,
                        &error,
                        self.cfg.retry_backoff,
                        self.cfg.max_attempts as i32,
                        false,
                    )
                    .await
                    .map_err(|e| crate::store::db::describe(&e))?;
                    self.after_failure(slot, id, &error, &failure);
                }
                Err(e) => return Err(crate::store::db::describe(&e)),
            }
        }
        Ok(())
    }

    fn after_failure(
        self: &Arc<Self>,
        slot: &Slot,
        id: &str,
        error: &str,
        failure: &lease::Failure,
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
    async fn leased(
        self: &Arc<Self>,
        slot: &Slot,
        work: &Arc<dyn LeasedWork>,
        ids: &[String],
    ) -> Result<(), String> {
        let mut rest = ids;
        while !rest.is_empty() {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                p = self.permits.clone().acquire_owned() => p.map_err(|e| e.to_string())?,
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
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            let rows = client
                .query_typed(
                    &slot.statements.claim,
                    &[
                        param(&chunk),
                        param(&self.instance),
                        param(&self.cfg.lease.as_secs_f64()),
                    ],
                )
                .await
                .map_err(|e| crate::store::db::describe(&e))?;
            drop(client);
            for (row, permit) in rows.iter().zip(permits) {
                let lease = Lease {
                    handler: slot.handler.spec.name.clone(),
                    row_id: row.get(0),
                    owner: self.instance,
                    token: row.get(1),
                    attempts: row.get(2),
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
        let inner = self.clone();
        let span = tracing::info_span!("work", handler = %lease.handler, id = %lease.row_id, attempt = lease.attempts + 1);
        // Owned by the task, so the heartbeat renews this lease exactly while
        // the task lives, however it ends.
        let live = self.live.hold(&lease);
        self.tracker.spawn(
            async move {
                let _permit = permit;
                let started = std::time::Instant::now();
                let outcome = work.run(&inner.pool, &lease).await;
                if matches!(outcome, Ok(Done::Finished)) {
                    inner.slots[index].handled(1, started);
                }
                if let Err(e) = inner.settle(index, &work, &lease, outcome).await {
                    // The database is away: stop renewing so the lease expires,
                    // and look at the row again once it has.
                    drop(live);
                    tracing::warn!(error = %e, retry_in = ?inner.cfg.lease, "recording the attempt's outcome failed; the row is retried once its lease has expired");
                    inner.wake_later(&inner.slots[index], &lease.row_id, inner.cfg.lease);
                }
            }
            .instrument(span),
        );
    }

    /// Records how a leased attempt ended and schedules what comes next.
    async fn settle(
        self: &Arc<Self>,
        index: usize,
        work: &Arc<dyn LeasedWork>,
        lease: &Lease,
        outcome: Result<Done, HandlerError>,
    ) -> Result<(), String> {
        let slot = &self.slots[index];
        let (error, permanent, not_before) = match outcome {
            Ok(Done::Finished) => {
                let client = self.pool.get().await.map_err(|e| e.to_string())?;
                lease::release(&**client, lease)
                    .await
                    .map_err(|e| crate::store::db::describe(&e))?;
                tracing::debug!("done");
                return Ok(());
            }
            Ok(Done::Later(delay)) => {
                let client = self.pool.get().await.map_err(|e| e.to_string())?;
                if lease::postpone(&**client, lease, delay)
                    .await
                    .map_err(|e| crate::store::db::describe(&e))?
                {
                    self.wake_later(slot, &lease.row_id, delay);
                }
                return Ok(());
            }
            Err(HandlerError::LeaseLost) => {
                tracing::warn!("lease lost: another reactor took this row over; result discarded");
                return Ok(());
            }
            Err(HandlerError::Retry(e)) => (e, false, Duration::ZERO),
            Err(HandlerError::RetryIn(e, delay)) => (e, false, delay),
            Err(HandlerError::Permanent(e)) => (e, true, Duration::ZERO),
        };
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let failure = lease::record_leased_failure(
            &**client,
            lease,
            &error,
            self.cfg.retry_backoff,
            self.cfg.max_attempts as i32,
            permanent,
            not_before,
        )
        .await
        .map_err(|e| crate::store::db::describe(&e))?;
        drop(client);
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
    fn wake_later(self: &Arc<Self>, slot: &Slot, id: &str, delay: Duration) {
        let inner = self.clone();
        let (index, id) = (slot.index, id.to_string());
        tokio::spawn(async move {
            tokio::select! {
                _ = inner.shutdown.cancelled() => {}
                _ = tokio::time::sleep(delay + Duration::from_millis(20)) => inner.slots[index].inbox.push(id),
            }
        });
    }
}
