//! The `local` provider: makes real images on this machine, no network, no
//! account. A prediction "runs" for a short delay, then succeeds with output
//! URLs served by the provider's own loopback HTTP server, so the renders
//! handler downloads them exactly as it would Replicate's.
//!
//! Predictions live in memory: a restarted reactor does not know the local
//! predictions of its previous life (they read as not found, and those jobs
//! fail with that error).
use super::{Found, JobInput, Prediction, PredictionState, Provider, ProviderError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WIDTH: u32 = 768;
const HEIGHT: u32 = 512;

struct Entry {
    job: JobInput,
    started: Instant,
    created_at: DateTime<Utc>,
    canceled: bool,
}

type Predictions = Arc<Mutex<HashMap<String, Entry>>>;

pub struct Local {
    predictions: Predictions,
    base_url: String,
    delay: Duration,
    variants: u32,
}

impl Local {
    /// Starts the output server on a free loopback port.
    pub async fn start(delay: Duration, variants: u32) -> std::io::Result<Self> {
        let predictions: Predictions = Default::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new()
            .route("/outputs/{id}/{file}", axum::routing::get(serve_output))
            .with_state(predictions.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "local provider output server stopped");
            }
        });
        Ok(Local {
            predictions,
            base_url,
            delay,
            variants: variants.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.predictions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self, id: &str, entry: &Entry) -> Prediction {
        let (status, output) = if entry.canceled {
            (PredictionState::Canceled, vec![])
        } else if entry.started.elapsed() < self.delay {
            (PredictionState::Processing, vec![])
        } else {
            let urls = (0..self.variants)
                .map(|i| format!("{}/outputs/{id}/{i}.jpg", self.base_url))
                .collect();
            (PredictionState::Succeeded, urls)
        };
        Prediction {
            id: id.to_string(),
            status,
            output,
            error: None,
        }
    }
}

async fn serve_output(
    axum::extract::State(predictions): axum::extract::State<Predictions>,
    axum::extract::Path((id, file)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let variant: Option<u32> = file.strip_suffix(".jpg").and_then(|v| v.parse().ok());
    let job = predictions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .map(|e| e.job.clone());
    let (Some(job), Some(variant)) = (job, variant) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let drawn = tokio::task::spawn_blocking(move || {
        let request = super::local_image::Request {
            mode: &job.mode,
            room_type: job.room_type.as_deref(),
            style: job.style.as_deref(),
            prompt: job.prompt.as_deref(),
            variant,
        };
        super::local_image::draw_jpeg(&request, WIDTH, HEIGHT)
    })
    .await;
    match drawn {
        Ok(Ok(jpeg)) => ([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[async_trait]
impl Provider for Local {
    fn output_server(&self) -> Option<url::Url> {
        url::Url::parse(&self.base_url).ok()
    }

    async fn create(
        &self,
        job: &JobInput,
        _webhook: Option<&str>,
    ) -> Result<Prediction, ProviderError> {
        let id = format!("local-{}", uuid::Uuid::new_v4().simple());
        let entry = Entry {
            job: job.clone(),
            started: Instant::now(),
            created_at: Utc::now(),
            canceled: false,
        };
        let prediction = self.view(&id, &entry);
        self.lock().insert(id, entry);
        Ok(prediction)
    }

    async fn get(&self, id: &str) -> Result<Prediction, ProviderError> {
        let predictions = self.lock();
        let entry = predictions.get(id).ok_or(ProviderError::NotFound)?;
        Ok(self.view(id, entry))
    }

    async fn cancel(&self, id: &str) -> Result<(), ProviderError> {
        let mut predictions = self.lock();
        let entry = predictions.get_mut(id).ok_or(ProviderError::NotFound)?;
        entry.canceled = true;
        Ok(())
    }

    /// The local provider records each prediction's job, which is proof.
    async fn find(&self, job: &JobInput, since: DateTime<Utc>) -> Result<Found, ProviderError> {
        let predictions = self.lock();
        Ok(predictions
            .iter()
            .find(|(_, e)| {
                e.job.id == job.id && e.created_at >= since - chrono::Duration::seconds(60)
            })
            .map_or(Found::Nothing, |(id, e)| Found::Ours(self.view(id, e))))
    }
}
