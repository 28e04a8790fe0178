//! Counts every provider call by operation and outcome
//! (`reactor_provider_requests_total{op, outcome}`).
use super::{Found, JobInput, Prediction, Provider, ProviderError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;

pub struct Metered(pub Arc<dyn Provider>);

fn count<T>(op: &'static str, result: &Result<T, ProviderError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(ProviderError::RateLimited { .. }) => "rate_limited",
        Err(ProviderError::Unavailable(_)) => "unavailable",
        Err(ProviderError::Ambiguous(_)) => "ambiguous",
        Err(ProviderError::Rejected(_)) => "rejected",
        Err(ProviderError::NotFound) => "not_found",
    };
    metrics::counter!("reactor_provider_requests_total", "op" => op, "outcome" => outcome)
        .increment(1);
}

#[async_trait]
impl Provider for Metered {
    async fn create(
        &self,
        job: &JobInput,
        webhook: Option<&str>,
    ) -> Result<Prediction, ProviderError> {
        let r = self.0.create(job, webhook).await;
        count("create", &r);
        r
    }

    async fn get(&self, id: &str) -> Result<Prediction, ProviderError> {
        let r = self.0.get(id).await;
        count("get", &r);
        r
    }

    async fn cancel(&self, id: &str) -> Result<(), ProviderError> {
        let r = self.0.cancel(id).await;
        count("cancel", &r);
        r
    }

    async fn find(&self, job: &JobInput, since: DateTime<Utc>) -> Result<Found, ProviderError> {
        let r = self.0.find(job, since).await;
        count("find", &r);
        r
    }
}
