//! `reactor run` assembled: handlers, engine and HTTP server, started once
//! here for the daemon, the demo and the tests alike.
use crate::config::RunConfig;
use crate::engine::{Engine, EngineError, Readiness};
use crate::http::{self, HttpState};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Setup(#[from] crate::handlers::SetupError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    OwnTables(#[from] crate::handlers::own_tables::OwnTablesError),
    #[error("REPLICATE_WEBHOOK_SECRET: {0}")]
    WebhookSecret(crate::http::webhook_signature::SignatureError),
    #[error("cannot listen on REACTOR_HTTP_ADDR {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started reactor.
pub struct App {
    pub readiness: Arc<Readiness>,
    /// Where the HTTP server listens (useful with port 0).
    pub http_addr: SocketAddr,
    /// Ends when the reactor has shut down (after `shutdown` is cancelled).
    pub handle: JoinHandle<Result<(), EngineError>>,
}

pub async fn start(cfg: RunConfig, shutdown: CancellationToken) -> Result<App, AppError> {
    let webhook_secret = cfg
        .replicate_webhook_secret
        .as_deref()
        .map(crate::http::webhook_signature::Secret::parse)
        .transpose()
        .map_err(AppError::WebhookSecret)?
        .map(Arc::new);
    if cfg.wal_poll.is_some() {
        tracing::warn!("REACTOR_WAL_POLL (--wal-poll) is deprecated and ignored: WAL mode streams from its slot now, without polling");
    }
    // REACTOR_CONFIG is checked before anything starts or connects.
    let own_tables = crate::handlers::own_tables::OwnTables::load(&cfg)?;
    let mut handlers = crate::handlers::builtin(&cfg).await?;
    handlers.extend(own_tables.handlers());
    let bind_error = |source| AppError::Bind {
        addr: cfg.http_addr,
        source,
    };
    let listener = listen(cfg.http_addr).map_err(bind_error)?;
    let http_addr = listener.local_addr().map_err(bind_error)?;
    let specs = Arc::new(handlers.iter().map(|h| h.spec.clone()).collect::<Vec<_>>());
    let auth = Arc::new(crate::http::auth::Auth::new(
        cfg.admin_token.as_deref(),
        cfg.supabase_jwt_secret.as_deref(),
        cfg.supabase_jwks_url.as_deref(),
    ));
    let max_streams_per_user = cfg.max_streams_per_user;
    let engine = Engine::new(cfg, handlers, shutdown.clone())?;
    let readiness = engine.readiness();
    // The own tables' checks run beside the engine and end with it.
    let stop_checks = shutdown.child_token();
    let checks = own_tables.checks(engine.pool(), stop_checks.clone());
    let router = http::router(HttpState {
        pool: engine.pool(),
        readiness: readiness.clone(),
        webhook_secret,
        auth,
        statuses: engine.statuses(),
        status_losses: engine.status_losses(),
        specs,
        metrics: crate::telemetry::handle(),
        streams: crate::http::limits::StreamSlots::new(max_streams_per_user),
        logins: Default::default(),
    });
    let http_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let router = router.into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(%http_addr, "HTTP server listening");
    let handle = tokio::spawn(async move {
        let run = async {
            let ended = engine.run().await;
            stop_checks.cancel();
            ended
        };
        tokio::join!(run, checks).0
    });
    Ok(App {
        readiness,
        http_addr,
        handle,
    })
}

/// Kernel send buffer of each HTTP connection. Fixed (not autotuned to
/// megabytes) so that an event-stream client that stops reading is noticed
/// after a bounded backlog and told to resync, instead of being buffered for.
const HTTP_SEND_BUFFER: u32 = 64 * 1024;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    // Accepted connections inherit this from the listening socket.
    socket.set_send_buffer_size(HTTP_SEND_BUFFER)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
