//! The HTTP surface on `REACTOR_HTTP_ADDR`: health, metrics, Replicate's
//! webhooks, the live event stream and the dashboard; and, in [`client`], the
//! helpers the reactor's own outgoing requests share.
pub(crate) mod auth;
pub(crate) mod client;
mod dashboard;
pub(crate) mod limits;
pub mod ops;
pub mod public_fetch;
pub mod webhook_signature;

use crate::engine::notification::Change;
use crate::engine::Readiness;
use crate::http::auth::{Auth, AuthError, Viewer};
use crate::http::limits::{FailedLogins, StreamSlots};
use crate::job::handler::Spec;
use crate::providers::replicate::{created_for, parse_prediction};
use crate::store::db::DbError;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use std::net::SocketAddr;
use std::sync::Arc;
use webhook_signature::Secret;

#[derive(Clone)]
pub struct HttpState {
    pub pool: Pool,
    pub readiness: Arc<Readiness>,
    /// None: webhooks are refused (nothing could verify them).
    pub webhook_secret: Option<Arc<Secret>>,
    pub auth: Arc<Auth>,
    pub statuses: tokio::sync::broadcast::Sender<Change>,
    /// Changes when status hints were lost (see `engine::status_feed`).
    pub status_losses: tokio::sync::watch::Receiver<u64>,
    /// The running handlers (for backlogs and retries).
    pub specs: Arc<Vec<Spec>>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Open event streams per viewer (`REACTOR_MAX_STREAMS_PER_USER`).
    pub streams: Arc<StreamSlots>,
    /// Wrong credentials per client address.
    pub logins: Arc<FailedLogins>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move {
                // Brings the reactor_worker_stalled gauges up to date.
                s.readiness.stalled();
                s.metrics.render()
            }),
        )
        .route("/webhooks/replicate", post(replicate_webhook))
        .route("/v1/events", get(events))
        .route("/dashboard", get(dashboard::page))
        .route("/v1/admin/summary", get(admin_summary))
        .route("/v1/admin/retry", post(admin_retry))
        .with_state(state)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization").and_then(|v| v.to_str().ok())
}

/// Verifies a credential with `check`, unless `client` presented too many
/// wrong ones lately (then 429 and how long to wait). A wrong credential
/// counts against `client`; the admin token clears its count.
async fn verified<F>(state: &HttpState, client: SocketAddr, check: F) -> Result<Viewer, Response>
where
    F: std::future::Future<Output = Result<Viewer, AuthError>>,
{
    let ip = client.ip();
    if let Some(wait) = state.logins.wait(ip) {
        let secs = wait.as_secs_f64().ceil() as u64;
        let body = serde_json::json!({
            "error": format!("too many wrong credentials from this address: try again in {secs} s")
        });
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            Json(body),
        )
            .into_response());
    }
    match check.await {
        Ok(viewer) => {
            if viewer == Viewer::Admin {
                state.logins.admin_succeeded(ip);
            }
            Ok(viewer)
        }
        Err(e) => {
            if matches!(e, AuthError::Invalid(_)) {
                state.logins.failed(ip);
            }
            Err(unauthorized(e))
        }
    }
}

/// Only the admin, through [`verified`].
async fn verified_admin(
    state: &HttpState,
    client: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), Response> {
    match verified(state, client, state.auth.viewer(bearer(headers))).await? {
        Viewer::Admin => Ok(()),
        Viewer::User(_) => Err(unauthorized(AuthError::NotAdmin)),
    }
}

fn unauthorized(e: AuthError) -> Response {
    let status = match e {
        AuthError::NotAdmin => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    /// For EventSource, which cannot send headers (users' tokens only).
    access_token: Option<String>,
}

/// Server-Sent Events of job status changes: a user's own jobs, or all for the
/// admin. Every client is fed from the reactor's one listener through a
/// bounded buffer; a client that falls behind gets a `resync` event and the
/// stream ends (reconnect and re-read the jobs), so it never slows anyone else.
/// A user's stream ends with an `expired` event when their token expires
/// (reconnect with a fresh token).
async fn events(
    State(state): State<HttpState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    let mut expires_at = None;
    let check = async {
        let access = match bearer(&headers) {
            Some(header) => state.auth.access(Some(header)).await,
            None => state.auth.user_access(q.access_token.as_deref()).await,
        }?;
        expires_at = access.expires_at;
        Ok(access.viewer)
    };
    let viewer = match verified(&state, client, check).await {
        Ok(viewer) => viewer,
        Err(refused) => return refused,
    };
    let Some(slot) = state.streams.open(&viewer) else {
        let body = serde_json::json!({
            "error": format!(
                "too many open event streams for this user (at most {}): close one first",
                state.streams.max()
            )
        });
        return (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    };
    let expiry = expires_at.map(|exp| {
        let left = (exp - chrono::Utc::now().timestamp()).max(0);
        tokio::time::Instant::now() + std::time::Duration::from_secs(left.unsigned_abs())
    });
    let receiver = state.statuses.subscribe();
    let mut losses = state.status_losses.clone();
    losses.mark_unchanged();
    let stream = futures::stream::unfold(Some((receiver, losses)), move |state| {
        let viewer = viewer.clone();
        async move {
            let (mut receiver, mut losses) = state?;
            let expired = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(expired);
            loop {
                let received = tokio::select! {
                    r = receiver.recv() => r,
                    Ok(()) = losses.changed() => {
                        // Hints were dropped under a flood: events may be missing.
                        let event = Event::default()
                            .event("resync")
                            .data(serde_json::json!({ "missed": null, "reason": "overloaded" }).to_string());
                        return Some((Ok(event), None));
                    }
                    _ = &mut expired => {
                        let event = Event::default().event("expired").data("{}");
                        return Some((Ok(event), None));
                    }
                };
                match received {
                    Ok(change) if viewer.sees(change.owner_id.as_deref()) => {
                        let data = serde_json::to_string(&change).unwrap_or_default();
                        let event = Event::default().event("job_status").data(data);
                        return Some((
                            Ok::<_, std::convert::Infallible>(event),
                            Some((receiver, losses)),
                        ));
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        let event = Event::default()
                            .event("resync")
                            .data(serde_json::json!({ "missed": missed }).to_string());
                        return Some((Ok(event), None));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    // The slot is held while the stream is: until the client goes away.
    let stream = futures::StreamExt::map(stream, move |event| {
        let _held = &slot;
        event
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Everything the dashboard shows, in one read.
async fn admin_summary(
    State(state): State<HttpState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = verified_admin(&state, client, &headers).await {
        return refused;
    }
    let summary = async {
        let client = state.pool.get().await?;
        let db = &**client;
        Ok::<_, DbError>(serde_json::json!({
            "ready": state.readiness.ready(),
            "jobs_by_status": crate::http::ops::jobs_by_status(db).await?,
            "in_flight": crate::http::ops::in_flight(db, 50).await?,
            "recent_jobs": crate::http::ops::recent_jobs(db, 25).await?,
            "backlog": crate::http::ops::backlog(db, &state.specs).await?,
            "throughput": crate::http::ops::throughput(db, 10).await?,
            "recent_failures": crate::http::ops::recent_failures(db, 10).await?,
            "dead": crate::http::ops::dead_rows(db, 50).await?,
            "limits": crate::store::limits::snapshot(db).await?,
        }))
    };
    match summary.await {
        Ok(body) => Json(body).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct RetryRequest {
    handler: String,
    row_id: String,
}

/// Brings one dead row back (the dashboard's retry button).
async fn admin_retry(
    State(state): State<HttpState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(req): Json<RetryRequest>,
) -> Response {
    if let Err(refused) = verified_admin(&state, client, &headers).await {
        return refused;
    }
    if !state.specs.iter().any(|s| s.name == req.handler) {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": format!("unknown handler {:?}", req.handler) })),
        )
            .into_response();
    }
    let retried = async {
        let client = state.pool.get().await?;
        client
            .query_typed_one(
                "select reactor.retry($1, $2)",
                &[
                    crate::store::db::param(&req.handler),
                    crate::store::db::param(&req.row_id),
                ],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .map_err(DbError::from)
    };
    match retried.await {
        Ok(had_state) => Json(serde_json::json!({ "retried": had_state })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

/// 200 once the listener hears itself and the first replay is done, while
/// the database answers and no handler with work waiting is stalled; 503
/// otherwise.
async fn readyz(State(state): State<HttpState>) -> (StatusCode, String) {
    let stalled = state.readiness.stalled();
    if !stalled.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: no progress on waiting work (REACTOR_STALL_AFTER) in {}",
                stalled.join(", ")
            ),
        );
    }
    if !state.readiness.ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: listener connecting or first replay running".into(),
        );
    }
    let deadline = std::time::Duration::from_secs(2);
    let db = crate::store::db::within(&state.pool, deadline, async |client| {
        client.simple_query("select 1").await.map_err(DbError::from)
    });
    match db.await {
        Ok(_) => (StatusCode::OK, "ready".into()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreachable: {e}"),
        ),
    }
}

#[derive(serde::Deserialize)]
struct WebhookQuery {
    job_id: Option<uuid::Uuid>,
}

/// A completed prediction, pushed by Replicate. Verified (Standard Webhooks),
/// then applied exactly as a poll would be: repeated deliveries change nothing.
async fn replicate_webhook(
    State(state): State<HttpState>,
    Query(query): Query<WebhookQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let (status, text) = replicate_webhook_inner(&state, query, &headers, &body).await;
    let outcome = match status.as_u16() {
        200 => "ok",
        401 => "unauthorized",
        400 => "bad_request",
        _ => "error",
    };
    metrics::counter!("reactor_webhook_deliveries_total", "outcome" => outcome).increment(1);
    (status, text)
}

async fn replicate_webhook_inner(
    state: &HttpState,
    query: WebhookQuery,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, String) {
    let Some(secret) = &state.webhook_secret else {
        tracing::warn!("webhook refused: REPLICATE_WEBHOOK_SECRET is not set");
        return (
            StatusCode::UNAUTHORIZED,
            "webhooks are not configured".into(),
        );
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(e) = webhook_signature::verify(
        secret,
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        body,
        chrono::Utc::now().timestamp(),
    ) {
        tracing::warn!(error = %e, "webhook refused: bad signature");
        return (StatusCode::UNAUTHORIZED, format!("invalid signature: {e}"));
    }
    let parsed = serde_json::from_slice(body)
        .map_err(|e| e.to_string())
        .and_then(|v| Ok((parse_prediction(&v)?, created_for(&v))));
    let (prediction, created_for) = match parsed {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "webhook refused: not a prediction");
            return (StatusCode::BAD_REQUEST, format!("not a prediction: {e}"));
        }
    };
    // The query string is not signed: `?job_id=` is only a hint, followed
    // when the signed body's own webhook URL names the same job.
    let proven_job = query.job_id.filter(|hint| created_for == Some(*hint));
    match apply_webhook(&state.pool, proven_job, &prediction).await {
        Ok(Some(job)) => {
            tracing::info!(job = %job, prediction = %prediction.id, status = ?prediction.status, "webhook applied");
            (StatusCode::OK, "ok".into())
        }
        Ok(None) => {
            tracing::info!(prediction = %prediction.id, "webhook for an unknown prediction ignored");
            (StatusCode::OK, "unknown prediction".into())
        }
        // Replicate retries on errors: nothing is lost.
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database error: {e}"),
        ),
    }
}

/// Finds the job (by prediction id; or, when the reactor never learned the
/// prediction id, e.g. it crashed right after creating it, by `proven_job`:
/// the job the signed prediction was created for) and applies the
/// prediction. Returns the job id when known.
async fn apply_webhook(
    pool: &Pool,
    proven_job: Option<uuid::Uuid>,
    prediction: &crate::providers::Prediction,
) -> Result<Option<uuid::Uuid>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let found = tx
        .query_opt(
            "select id from public.generation_jobs where prediction_id = $1",
            &[&prediction.id],
        )
        .await?;
    let job = match (found, proven_job) {
        (Some(row), _) => Some(row.get::<_, uuid::Uuid>(0)),
        (None, Some(id)) => tx
            .query_opt(
                "update public.generation_jobs set prediction_id = $2,
                   status = case when status = 'starting' then 'processing' else status end
                 where id = $1 and prediction_id is null and submit_started_at is not null
                 returning id",
                &[&id, &prediction.id],
            )
            .await?
            .map(|row| row.get(0)),
        (None, None) => None,
    };
    if let Some(id) = job {
        crate::handlers::generation::apply_prediction(&*tx, id, prediction).await?;
    }
    tx.commit().await?;
    Ok(job)
}
