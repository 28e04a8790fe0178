//! Claiming and dispatching: turns hints (notifications) and sweeps (pending
//! queries) into handler work, with bounded concurrency, leases, retries and
//! graceful shutdown.
//!
//! Each handler has an inbox (ids from notifications, plus a "scan" flag) and
//! one worker. The worker takes whatever has piled up: a scan request runs the
//! handler's pending query page by page (keyset pagination, never the whole
//! backlog in memory); ids are worked in one batch. An inbox that overflows
//! just turns into a scan: notifications are hints, table state is the truth.
//!
//! The services, one per file, share one start/stop lifecycle ([`Engine::run`]):
//! `worker` (one per handler: scans and notified ids), `claims` (leased
//! attempts and how they record_outcome), `heartbeat` (renews live leases), `tidy`
//! (the sweeper), `outbox` (outbox drain), `quiet` (quiet hints under load),
//! `listener` and `status_feed`, after
//! `schema` (waits for the database). Every task is spawned on one of two
//! trackers: work (stopped first, with a grace period) and services (stopped
//! once the work is done, so leases are renewed until then).
mod claims;
mod error;
mod heartbeat;
mod inbox;
pub(crate) mod listener;
pub mod notification;
mod outbox;
mod poll_mode;
mod quiet;
mod schema;
pub(crate) mod status_feed;
mod tidy;
pub mod wal;
mod worker;

use crate::config::RunConfig;
use crate::job::handler::{Action, Handler};
use crate::job::lease;
use crate::store::pending::{LimitColumns, Statements};
use deadpool_postgres::Pool;
use inbox::Inbox;
use listener::Listener;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use worker::RunningHandler;

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
pub struct Readiness {
    /// The listener is connected and hears itself (always true when poll-only).
    pub listening: AtomicBool,
    /// Every handler finished a replay since start.
    pub replayed: AtomicBool,
    /// Each handler's worker, by handler name.
    workers: Vec<(String, Arc<Progress>)>,
    /// How long a worker with work waiting may go without progress.
    stall_after: Duration,
}

impl Readiness {
    /// Listening, replayed, and no worker stalled.
    pub fn ready(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
            && self.replayed.load(Ordering::SeqCst)
            && self.stalled().is_empty()
    }

    /// The handlers whose worker has had work waiting and made no progress
    /// for longer than REACTOR_STALL_AFTER (e.g. every statement waits on a
    /// database the network no longer reaches). Also sets the
    /// `reactor_worker_stalled` gauges.
    pub fn stalled(&self) -> Vec<String> {
        let mut stalled = Vec::new();
        for (name, progress) in &self.workers {
            let is = progress.stalled_for(self.stall_after);
            metrics::gauge!("reactor_worker_stalled", "handler" => name.clone()).set(if is {
                1.0
            } else {
                0.0
            });
            if is {
                stalled.push(name.clone());
            }
        }
        stalled
    }
}

/// Whether one handler's worker moves: since when it has had work waiting
/// without finishing a pass (None while it waits for work).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    behind_since: std::sync::Mutex<Option<Instant>>,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.behind_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Work arrived (the clock starts unless it runs already).
    fn waiting(&self) {
        self.lock().get_or_insert_with(Instant::now);
    }

    /// A pass finished: the clock starts again.
    fn advanced(&self) {
        *self.lock() = Some(Instant::now());
    }

    /// Nothing left to do.
    fn idle(&self) {
        *self.lock() = None;
    }

    fn stalled_for(&self, limit: Duration) -> bool {
        self.lock().is_some_and(|since| since.elapsed() > limit)
    }
}

/// What the engine's services share: configuration, pool, handlers and trackers.
struct Shared {
    cfg: RunConfig,
    /// Job status changes for SSE clients; a slow receiver lags, it never blocks us.
    statuses: tokio::sync::broadcast::Sender<crate::engine::notification::Change>,
    /// Checks job_status hints against the tables and feeds `statuses`.
    status_feed: Arc<crate::engine::status_feed::StatusFeed>,
    pool: Pool,
    instance: Uuid,
    slots: Vec<RunningHandler>,
    permits: Arc<Semaphore>,
    /// Leases of attempts running in this process: what the heartbeat renews.
    live: Arc<lease::LiveLeases>,
    /// Hint rates and quiet tables (notify mode under load).
    quiet: quiet::Quiet,
    /// Workers, leased attempts and retry timers: what shutdown waits for.
    tracker: TaskTracker,
    /// Heartbeat, tidy, status feed, outbox drain and listener.
    services: Services,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    /// The database is in poll mode (kept up to date by `poll_mode`).
    polling: AtomicBool,
    /// Every connection to DATABASE_URL keeps one server session: set once the
    /// listener heard itself (on such a URL, LISTEN works), never unset (the
    /// URL does not change). From then on the hottest statements are prepared
    /// once per connection ([`crate::store::db::query_hot`]); before, and
    /// without a listener (REACTOR_LISTEN=false, for transaction-mode
    /// poolers), every statement is unnamed.
    sessions_kept: AtomicBool,
}

/// The engine's background services, tracked in one place and stopped
/// together, after the in-flight work they support has finished.
#[derive(Default)]
struct Services {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Services {
    /// Runs `service` until it ends or the services are stopped (`None`).
    fn spawn<T: Send + 'static>(
        &self,
        service: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<Option<T>> {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => None,
                out = service => Some(out),
            }
        })
    }

    /// Runs `service`, which ends by itself once the engine shuts down, to
    /// its end: its clean-up is not cut short when the services stop (the
    /// WAL source drops its replication slot before the process exits).
    fn spawn_to_end<T: Send + 'static>(
        &self,
        service: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        self.tracker.spawn(service)
    }

    /// Stops every service and waits until they have ended.
    async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

pub struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    pub fn new(
        cfg: RunConfig,
        handlers: Vec<Handler>,
        shutdown: CancellationToken,
    ) -> Result<Self, EngineError> {
        // Leased work, SQL batches, the heartbeat and spare connections.
        let pool = crate::store::db::pool(
            &cfg.database_url,
            cfg.concurrency + handlers.len() + 2,
            cfg.statement_timeout,
        )?;
        let slots = handlers
            .into_iter()
            .enumerate()
            .map(|(index, handler)| {
                let (effect, mark, dead) = match &handler.action {
                    Action::Sql { effect, mark, dead } => {
                        (Some(effect.as_str()), mark.as_deref(), dead.as_deref())
                    }
                    Action::Leased(_) => (None, None, None),
                };
                let mut statements = Statements::build(&handler.spec, effect, mark);
                if let Some(column) = dead {
                    statements = statements.with_dead_marker(&handler.spec, column);
                }
                if let Some(column) = &handler.limits.per_key {
                    statements = statements.with_per_key(&handler.spec, column);
                }
                let columns = LimitColumns {
                    per_key: handler.limits.per_key.as_deref(),
                    route: handler.limits.route_column(),
                };
                statements = statements.with_limit_columns(&handler.spec, columns);
                RunningHandler {
                    index,
                    statements,
                    dead_backlog_marked: AtomicBool::new(false),
                    handler,
                    inbox: Inbox::new(),
                    scans: AtomicU64::new(0),
                    progress: Arc::default(),
                }
            })
            .collect::<Vec<RunningHandler>>();
        let readiness = Readiness {
            workers: slots
                .iter()
                .map(|s| (s.handler.spec.name.clone(), s.progress.clone()))
                .collect(),
            stall_after: cfg.stall_after,
            ..Readiness::default()
        };
        let statuses = tokio::sync::broadcast::channel(STATUS_BUFFER).0;
        Ok(Engine {
            shared: Arc::new(Shared {
                status_feed: Arc::new(crate::engine::status_feed::StatusFeed::new(
                    statuses.clone(),
                )),
                statuses,
                permits: Arc::new(Semaphore::new(cfg.concurrency)),
                live: Arc::default(),
                cfg,
                pool,
                instance: Uuid::new_v4(),
                quiet: quiet::Quiet::default(),
                slots,
                tracker: TaskTracker::new(),
                services: Services::default(),
                readiness: Arc::new(readiness),
                shutdown,
                polling: AtomicBool::new(false),
                sessions_kept: AtomicBool::new(false),
            }),
        })
    }

    pub fn readiness(&self) -> Arc<Readiness> {
        self.shared.readiness.clone()
    }

    pub fn pool(&self) -> Pool {
        self.shared.pool.clone()
    }

    /// Job status changes, verified against the tables (see `status_feed`).
    pub fn statuses(&self) -> tokio::sync::broadcast::Sender<crate::engine::notification::Change> {
        self.shared.statuses.clone()
    }

    /// Changes whenever job_status hints were lost: event streams must tell
    /// their viewers to resync.
    pub fn status_losses(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.status_feed.losses()
    }

    /// Runs until the shutdown token is cancelled, then finishes in-flight work
    /// (up to the grace period) and releases this reactor's leases.
    pub async fn run(self) -> Result<(), EngineError> {
        let shared = self.shared;
        let cfg = &shared.cfg;
        if cfg.listen
            && crate::store::db::parse_url(&cfg.database_url)?
                .get_ports()
                .contains(&6543)
        {
            return Err(EngineError::TransactionPooler);
        }
        shared.wait_for_schema().await?;
        shared.register_limits().await?;
        tracing::info!(instance = %shared.instance, handlers = shared.slots.len(), listen = cfg.listen, "reactor running");

        for i in 0..shared.slots.len() {
            let w = shared.clone();
            shared.tracker.spawn(async move { w.worker(i).await });
        }
        let services = &shared.services;
        services.spawn(shared.clone().heartbeat());
        services.spawn(shared.clone().tidy());
        services.spawn(shared.clone().watch_poll_mode());
        services.spawn(
            shared
                .status_feed
                .clone()
                .run(shared.pool.clone(), shared.shutdown.clone()),
        );
        if let Some(every) = cfg.outbox_poll {
            services.spawn(shared.clone().drain_outbox(every));
        }

        let mut listener = if cfg.listen {
            let routing = shared.clone();
            let sink: listener::EventSink = Arc::new(move |event| routing.route(event));
            let l = Listener {
                url: cfg.database_url.clone(),
                check_interval: cfg.listen_check_interval,
                check_timeout: cfg.listen_check_timeout,
                sink,
            };
            let wal = wal::WalSource {
                url: cfg.database_url.clone(),
                pool: shared.pool.clone(),
                sink: l.sink.clone(),
                quiet_above: cfg.quiet_above,
                quiet_lease: cfg.quiet_lease,
            };
            services.spawn_to_end(wal.run(shared.shutdown.clone()));
            services.spawn(shared.clone().quiet());
            Some(services.spawn(l.run(shared.shutdown.clone())))
        } else {
            shared.readiness.listening.store(true, Ordering::SeqCst);
            None
        };

        // Start-up replay, then a sweep every REACTOR_SWEEP_INTERVAL, or a
        // poll every REACTOR_POLL_INTERVAL while no hint reaches the engine
        // (not listening, the listener deaf, or the database in poll mode).
        shared.scan_all();
        let every = cfg.poll_interval.min(cfg.sweep_interval);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deaf = false;
        let mut last_scan = Instant::now();
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    // A sweep due within half a tick runs now rather than a tick late.
                    if deaf || shared.polls() || last_scan.elapsed() + every / 2 >= cfg.sweep_interval {
                        last_scan = Instant::now();
                        shared.scan_all();
                    }
                }
                ended = async { listener.as_mut().expect("guarded").await }, if listener.is_some() => {
                    listener = None;
                    let Ok(Some(Err(deaf_error))) = ended else { break };
                    // A pooler eats notifications: keep doing the work by polling.
                    tracing::error!(poll_interval = ?cfg.poll_interval, "{deaf_error}. Working on in poll-only mode (polling every REACTOR_POLL_INTERVAL) until restarted");
                    shared.readiness.listening.store(true, Ordering::SeqCst);
                    deaf = true;
                }
            }
        }

        tracing::info!("shutting down: finishing in-flight work");
        shared.tracker.close();
        if tokio::time::timeout(cfg.shutdown_grace, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?cfg.shutdown_grace, "in-flight work did not finish in time; its leases are released");
        }
        // The heartbeat renewed the leases of in-flight work until now.
        shared.services.stop().await;
        let released = crate::store::db::within(
            &shared.pool,
            cfg.statement_timeout,
            async |client| -> Result<u64, crate::store::db::DbError> {
                Ok(crate::store::handler_state::release_all(&***client, shared.instance).await?)
            },
        )
        .await;
        match released {
            Ok(_) => tracing::info!("leases released"),
            Err(e) => {
                tracing::warn!(error = %e, "releasing leases failed; they expire on their own")
            }
        }
        if cfg.listen {
            if let Err(e) = shared.release_quiet().await {
                tracing::warn!(error = %e, "releasing quiet tables failed; their writers hint again when the quiet lease ends");
            }
        }
        Ok(())
    }
}
