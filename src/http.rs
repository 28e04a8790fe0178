//! The HTTP surface on `REACTOR_HTTP_ADDR`: health and Replicate's webhooks.
use crate::engine::Status;
use crate::provider::replicate::parse_prediction;
use crate::webhook_signature::{self, Secret};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use deadpool_postgres::Pool;
use std::sync::Arc;

#[derive(Clone)]
pub struct HttpState {
    pub pool: Pool,
    pub status: Arc<Status>,
    /// None: webhooks are refused (nothing could verify them).
    pub webhook_secret: Option<Arc<Secret>>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/webhooks/replicate", post(replicate_webhook))
        .with_state(state)
}

/// 200 once the listener hears itself and the first replay is done, and while
/// the database answers; 503 otherwise.
async fn readyz(State(state): State<HttpState>) -> (StatusCode, String) {
    if !state.status.ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: listener connecting or first replay running".into(),
        );
    }
    let db = async {
        let client = state.pool.get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("select 1")
            .await
            .map_err(|e| crate::db::describe(&e))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), db).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready".into()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreachable: {e}"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database did not answer within 2s".into(),
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
        &body,
        chrono::Utc::now().timestamp(),
    ) {
        tracing::warn!(error = %e, "webhook refused: bad signature");
        return (StatusCode::UNAUTHORIZED, format!("invalid signature: {e}"));
    }
    let prediction = match serde_json::from_slice(&body)
        .map_err(|e| e.to_string())
        .and_then(|v| parse_prediction(&v))
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "webhook refused: not a prediction");
            return (StatusCode::BAD_REQUEST, format!("not a prediction: {e}"));
        }
    };
    match apply_webhook(&state.pool, query.job_id, &prediction).await {
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

/// Finds the job (by prediction id; or by the job id in the webhook URL when
/// the reactor never learned the prediction id, e.g. it crashed right after
/// creating it) and applies the prediction. Returns the job id when known.
async fn apply_webhook(
    pool: &Pool,
    job_id: Option<uuid::Uuid>,
    prediction: &crate::provider::Prediction,
) -> Result<Option<uuid::Uuid>, String> {
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| crate::db::describe(&e))?;
    let found = tx
        .query_opt(
            "select id from public.generation_jobs where prediction_id = $1",
            &[&prediction.id],
        )
        .await
        .map_err(|e| crate::db::describe(&e))?;
    let job = match (found, job_id) {
        (Some(row), _) => Some(row.get::<_, uuid::Uuid>(0)),
        (None, Some(id)) => tx
            .query_opt(
                "update public.generation_jobs set prediction_id = $2,
                   status = case when status = 'starting' then 'processing' else status end
                 where id = $1 and prediction_id is null and submit_started_at is not null
                 returning id",
                &[&id, &prediction.id],
            )
            .await
            .map_err(|e| crate::db::describe(&e))?
            .map(|row| row.get(0)),
        (None, None) => None,
    };
    if let Some(id) = job {
        crate::handlers::generation::apply_prediction(&*tx, id, prediction)
            .await
            .map_err(|e| crate::db::describe(&e))?;
    }
    tx.commit().await.map_err(|e| crate::db::describe(&e))?;
    Ok(job)
}
