//! `reactor run` assembled: handlers, engine and HTTP server, started once
//! here for the daemon, the demo and the tests alike.
use crate::config::RunConfig;
use crate::engine::{Engine, EngineError, Status};
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
    #[error("REPLICATE_WEBHOOK_SECRET: {0}")]
    WebhookSecret(crate::webhook_signature::SignatureError),
    #[error("cannot listen on REACTOR_HTTP_ADDR {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started reactor.
pub struct App {
    pub status: Arc<Status>,
    /// Where the HTTP server listens (useful with port 0).
    pub http_addr: SocketAddr,
    /// Ends when the reactor has shut down (after `shutdown` is cancelled).
    pub handle: JoinHandle<Result<(), EngineError>>,
}

pub async fn start(cfg: RunConfig, shutdown: CancellationToken) -> Result<App, AppError> {
    let webhook_secret = cfg
        .replicate_webhook_secret
        .as_deref()
        .map(crate::webhook_signature::Secret::parse)
        .transpose()
        .map_err(AppError::WebhookSecret)?
        .map(Arc::new);
    let handlers = crate::handlers::builtin(&cfg).await?;
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|source| AppError::Bind {
            addr: cfg.http_addr,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| AppError::Bind {
        addr: cfg.http_addr,
        source,
    })?;
    let engine = Engine::new(cfg, handlers, shutdown.clone())?;
    let status = engine.status();
    let router = http::router(HttpState {
        pool: engine.pool(),
        status: status.clone(),
        webhook_secret,
    });
    let http_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(%http_addr, "HTTP server listening");
    let handle = tokio::spawn(engine.run());
    Ok(App {
        status,
        http_addr,
        handle,
    })
}
