//! Image providers: where a generation job's prediction is created and tracked.
//!
//! Chosen by `REACTOR_PROVIDER`: `replicate` (the real thing, over HTTP) or
//! `local` (draws images on this machine; no network, no account).
pub(crate) mod local;
pub(crate) mod local_image;
pub(crate) mod metered;
pub mod replicate;
pub mod storage;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// What a provider needs to know about a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInput {
    pub id: uuid::Uuid,
    pub mode: String,
    pub room_type: Option<String>,
    pub style: Option<String>,
    pub prompt: Option<String>,
    /// Input images as URLs the provider can fetch.
    pub images: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionState {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    /// Replicate: the prediction's deadline passed before it started.
    Aborted,
}

impl PredictionState {
    pub fn parse(s: &str) -> Option<PredictionState> {
        Some(match s {
            "starting" => PredictionState::Starting,
            "processing" => PredictionState::Processing,
            "succeeded" => PredictionState::Succeeded,
            "failed" => PredictionState::Failed,
            "canceled" => PredictionState::Canceled,
            "aborted" => PredictionState::Aborted,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            PredictionState::Starting | PredictionState::Processing
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub id: String,
    pub status: PredictionState,
    /// Output image URLs (a single URL is a list of one).
    pub output: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProviderError {
    /// 429: nothing was created; try again after the delay (if given).
    #[error("rate limited by the provider")]
    RateLimited { retry_after: Option<Duration> },
    /// Surely nothing was created (connection refused, a 5xx answer).
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The request may or may not have taken effect (timeout after sending,
    /// a success answer we cannot read): reconcile, never blindly repeat.
    #[error("provider answer unknown: {0}")]
    Ambiguous(String),
    /// The provider refused the request (a 4xx other than 429): its message.
    #[error("provider refused the request: {0}")]
    Rejected(String),
    #[error("prediction not found at the provider")]
    NotFound,
}

/// What reconciliation found for an interrupted create.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// A prediction proven to be this job's (it carries the job's id).
    Ours(Prediction),
    /// A prediction with this job's input but no proof that it is this job's:
    /// it may be another user's job with the same prompt. Never adopted.
    Unproven { prediction_id: String },
    /// Nothing the interrupted create could have made.
    Nothing,
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// Creates a prediction for `job`. `webhook`: where completion is reported.
    async fn create(
        &self,
        job: &JobInput,
        webhook: Option<&str>,
    ) -> Result<Prediction, ProviderError>;
    async fn get(&self, id: &str) -> Result<Prediction, ProviderError>;
    async fn cancel(&self, id: &str) -> Result<(), ProviderError>;
    /// Finds a prediction an earlier, interrupted `create` for `job` may have
    /// made at or after `since` (reconciliation: never pay twice), and says
    /// whether it is provably this job's.
    async fn find(&self, job: &JobInput, since: DateTime<Utc>) -> Result<Found, ProviderError>;
    /// The provider's own server its output URLs point at, when it runs one
    /// on this machine (downloads from it skip the public-address check).
    fn output_server(&self) -> Option<url::Url> {
        None
    }
}
