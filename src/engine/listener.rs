//! The one `LISTEN reactor` connection.
//!
//! It is a dedicated connection (never pooled), polled continuously, and never
//! inside a transaction (a listener in an open transaction stops the server's
//! notification queue from draining). Listeners are known to go deaf without
//! any error, so it checks itself: every check interval it sends a
//! notification carrying a fresh random nonce that must come back within the
//! check timeout, or the connection is dropped and made again. Anyone may
//! NOTIFY on the channel, and sees the pings: only the nonce of the check in
//! progress counts, so nothing sent earlier or by anyone else can pass a check. Every (re)connection is reported so
//! the engine rescans: notifications sent while nobody listened are lost.
use crate::engine::notification::{self, Change, Message};
use backon::{ExponentialBuilder, Retryable as _};
use futures::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const CHANNEL: &str = "reactor";
/// Status changes for dashboards, fed to SSE clients from this one connection
/// (a LISTEN connection per client would slow NOTIFY for the whole server).
pub const STATUS_CHANNEL: &str = "job_status";
/// How many check timeouts a self-check may take while notifications keep
/// arriving (a flood queued in front of the ping delays it without deafness).
const MAX_CHECK_EXTENSIONS: u32 = 10;
/// `application_name` of the listener's connection (visible in pg_stat_activity).
pub const APPLICATION_NAME: &str = "reactor listener";

#[derive(Debug, Clone)]
pub enum Event {
    /// Listening, and the self-check came back: rescan now.
    Connected,
    Change(Change),
    /// A change on channel job_status (for SSE clients).
    Status(Change),
    /// An operator asked for `id` to be retried by `handler` now.
    Retry {
        handler: String,
        id: String,
    },
    /// A reactor announced that `table`'s writers send no hints for `for_ms`.
    Quiet {
        table: String,
        for_ms: u64,
    },
    /// The connection was lost or went deaf; reconnecting.
    Disconnected,
}

/// Where the listener delivers what it hears (the engine routes it to inboxes).
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "LISTEN receives no notifications on this connection: the reactor's own test notification did not come \
         back within {0:?} on a fresh connection. This is what a transaction-mode pooler does (PgBouncer \
         pool_mode=transaction, Supabase's Supavisor on port 6543): each statement may run on another server \
         connection, so notifications go to one nobody listens on. To get notifications, connect the reactor \
         directly (port 5432) or through a session-mode pooler; to run poll-only on purpose, set REACTOR_LISTEN=false"
    )]
    Deaf(Duration),
}

pub struct Listener {
    pub url: String,
    pub check_interval: Duration,
    pub check_timeout: Duration,
    pub sink: EventSink,
}

/// Why a session ended.
enum SessionEnd {
    Shutdown,
    Lost(Lost),
    Deaf { first_check: bool },
}

/// Why a connection was given up (it is made again).
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("{}", crate::store::db::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("connection closed by the server")]
    ClosedByServer,
    #[error("listener stopped")]
    Stopped,
}

/// Whether this connection's statements run on more than one server session:
/// a transaction-mode pooler, where LISTEN cannot work. Certain when it says
/// so; a pooler that happens to hand out the same session each time is caught
/// by the self-check instead. (Without this, a self-check that landed on the
/// one server session holding an earlier LISTEN could pass by luck, and the
/// pooler was named only after several slow rounds.)
async fn runs_on_several_sessions(
    client: &tokio_postgres::Client,
) -> Result<bool, tokio_postgres::Error> {
    let mut first = None;
    for _ in 0..3 {
        let pid: i32 = client
            .query_typed_one("select pg_backend_pid()", &[])
            .await?
            .get(0);
        match first {
            None => first = Some(pid),
            Some(seen) if seen != pid => return Ok(true),
            Some(_) => {}
        }
    }
    Ok(false)
}

impl Listener {
    /// Runs until shutdown. Fails when a fresh connection cannot hear its own
    /// first notification: a pooler between us and the server (a lost
    /// connection or a listener that goes deaf later is reconnected instead).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ListenError> {
        loop {
            let connect =
                || async { crate::store::db::connect_raw(&self.url, Some(APPLICATION_NAME)).await };
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = connect
                    .retry(
                        ExponentialBuilder::default()
                            .with_min_delay(Duration::from_millis(100))
                            .with_max_delay(Duration::from_secs(30))
                            .with_jitter()
                            .without_max_times(),
                    )
                    .notify(|err, next| {
                        tracing::warn!(error = %err, retry_in = ?next, "listener: connecting failed");
                    }) => r,
            };
            let (client, connection) = match connected {
                Ok(c) => c,
                Err(_) => continue,
            };
            match self.session(client, connection, &shutdown).await {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Deaf { first_check: true } => {
                    return Err(ListenError::Deaf(self.check_timeout));
                }
                SessionEnd::Deaf { .. } => {
                    tracing::warn!(
                        "listener: self-check notification did not come back; reconnecting"
                    );
                }
                SessionEnd::Lost(reason) => {
                    tracing::warn!(%reason, "listener: connection lost; reconnecting");
                }
            }
            (self.sink)(Event::Disconnected);
        }
    }

    async fn session(
        &self,
        client: tokio_postgres::Client,
        mut connection: crate::store::db::Connection,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        // The nonce of the check in progress, and the last one heard back.
        let (expected_tx, expected) = watch::channel(String::new());
        let (heard_tx, mut heard) = watch::channel(String::new());
        // Notifications received: a connection that is receiving is not deaf,
        // however far behind a flood of notifications puts the self-check.
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = received.clone();
        let sink = self.sink.clone();
        // Drives the connection and routes what arrives; ends when it closes.
        // Polled alongside the checks below, and dropped with the session.
        let driver = async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                let n = match message {
                    Ok(AsyncMessage::Notification(n)) => n,
                    Ok(_) => continue,
                    Err(e) => return Lost::Db(e),
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n.channel() == STATUS_CHANNEL {
                    if let Ok(Message::Change(change)) = notification::parse(n.payload()) {
                        sink(Event::Status(change));
                    }
                    continue;
                }
                match notification::parse(n.payload()) {
                    Ok(Message::Change(change)) => sink(Event::Change(change)),
                    Ok(Message::Retry { handler, id }) => sink(Event::Retry { handler, id }),
                    Ok(Message::Quiet { table, for_ms }) => sink(Event::Quiet { table, for_ms }),
                    Ok(Message::Ping(ping)) => {
                        if !ping.is_empty() && *expected.borrow() == ping {
                            heard_tx.send_replace(ping);
                        }
                    }
                    Err(e) => {
                        let payload: String = n.payload().chars().take(200).collect();
                        tracing::warn!(%payload, error = %e, "ignoring a malformed notification on channel reactor");
                    }
                }
            }
            Lost::ClosedByServer
        };
        tokio::pin!(driver);
        let end = async {
            match runs_on_several_sessions(&client).await {
                Ok(true) => return SessionEnd::Deaf { first_check: true },
                Ok(false) => {}
                Err(e) => return SessionEnd::Lost(e.into()),
            }
            if let Err(e) = client
                .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {STATUS_CHANNEL}"))
                .await
            {
                return SessionEnd::Lost(e.into());
            }
            let mut first_check = true;
            loop {
                let nonce = Uuid::new_v4().to_string();
                expected_tx.send_replace(nonce.clone());
                let ping = serde_json::json!({ "reactor_ping": nonce }).to_string();
                let check = async {
                    client
                        .execute_typed(
                            "select pg_notify($1, $2)",
                            &[
                                crate::store::db::param(&CHANNEL),
                                crate::store::db::param(&ping),
                            ],
                        )
                        .await?;
                    heard
                        .wait_for(|h| *h == nonce)
                        .await
                        .map_err(|_| Lost::Stopped)?;
                    Ok::<(), Lost>(())
                };
                tokio::pin!(check);
                let mut waited = Duration::ZERO;
                let mut seen = received.load(std::sync::atomic::Ordering::Relaxed);
                loop {
                    match tokio::time::timeout(self.check_timeout, &mut check).await {
                        Ok(Ok(())) => break,
                        Ok(Err(reason)) => return SessionEnd::Lost(reason),
                        Err(_) => {
                            // Late but still receiving (the ping is queued behind
                            // others): wait on, up to MAX_CHECK_EXTENSIONS timeouts.
                            waited += self.check_timeout;
                            let now = received.load(std::sync::atomic::Ordering::Relaxed);
                            if now == seen || waited >= self.check_timeout * MAX_CHECK_EXTENSIONS {
                                return SessionEnd::Deaf { first_check };
                            }
                            seen = now;
                        }
                    }
                }
                if first_check {
                    first_check = false;
                    tracing::info!("listener: listening on channel {CHANNEL}");
                    (self.sink)(Event::Connected);
                }
                tokio::time::sleep(self.check_interval).await;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => SessionEnd::Shutdown,
            reason = driver => SessionEnd::Lost(reason),
            end = end => end,
        }
    }
}
