//! Replicate's HTTP API (`REPLICATE_BASE_URL`, default https://api.replicate.com/v1).
//!
//! Replicate has no idempotency key, so this client says precisely whether a
//! failed create may have created something ([`ProviderError::Ambiguous`]) or
//! surely did not (429, connection refused, 5xx), and [`Replicate::find`]
//! looks for a prediction an interrupted create made. Only the job id carried
//! in its webhook URL (`?job_id=`) proves a prediction is the job's; one with
//! identical input but no such proof may be another user's identical job and
//! is reported, never adopted.
use super::{Found, JobInput, Prediction, PredictionState, Provider, ProviderError};
use crate::http::client;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Duration;

pub const DEFAULT_BASE_URL: &str = "https://api.replicate.com/v1";
pub const DEFAULT_MODEL: &str = "google/nano-banana";
/// How many pages of recent predictions reconciliation reads at most.
const FIND_MAX_PAGES: usize = 10;
/// The largest API answer read: a prediction, or a page of them, is a few
/// KiB; a provider sending more is cut off instead of filling memory.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

pub struct Replicate {
    http: reqwest::Client,
    base_url: String,
    token: String,
    model: String,
}

impl Replicate {
    pub fn new(
        base_url: &str,
        token: &str,
        model: &str,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Replicate {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .build()?,
            base_url: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            model: model.to_string(),
        })
    }

    /// `owner/name` → the model's predictions endpoint; `owner/name:version` → /predictions with a version.
    fn create_request(&self, body: Value) -> reqwest::RequestBuilder {
        match self.model.split_once(':') {
            Some((_, version)) => {
                let mut body = body;
                body["version"] = json!(version);
                self.http
                    .post(format!("{}/predictions", self.base_url))
                    .json(&body)
            }
            None => self
                .http
                .post(format!(
                    "{}/models/{}/predictions",
                    self.base_url, self.model
                ))
                .json(&body),
        }
        .bearer_auth(&self.token)
    }

    /// `next` (absolute, or relative to the base URL) when it has the base
    /// URL's scheme, host and port.
    fn same_origin(&self, next: &str) -> Option<String> {
        let base = url::Url::parse(&format!("{}/", self.base_url)).ok()?;
        let next = base.join(next).ok()?;
        (next.origin() == base.origin()).then(|| next.to_string())
    }

    async fn get_json(&self, url: &str) -> Result<Value, ProviderError> {
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(client::error_text(&e)))?;
        read(response, false).await
    }
}

/// What `GET /models/{owner}/{name}` said about the token and the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelCheck {
    /// 200: the token is accepted and the model exists.
    Found,
    /// 401/403: the token is refused (Replicate's message).
    TokenRefused(String),
    /// 404: no such model (or not visible to this token).
    UnknownModel,
    /// Anything else: unreachable, a 5xx, an unreadable answer.
    Failed(String),
}

impl Replicate {
    /// The model's name without a version (`owner/name`).
    pub fn model_name(&self) -> &str {
        self.model
            .split_once(':')
            .map_or(self.model.as_str(), |(name, _)| name)
    }

    /// Asks Replicate for the configured model, which proves the token works
    /// and the model exists without creating (or paying for) anything.
    pub async fn check_model(&self) -> ModelCheck {
        let url = format!("{}/models/{}", self.base_url, self.model_name());
        let response = match self.http.get(&url).bearer_auth(&self.token).send().await {
            Ok(r) => r,
            Err(e) => return ModelCheck::Failed(client::error_text(&e)),
        };
        let status = response.status();
        if matches!(
            status,
            reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
        ) {
            let body = response.text().await.unwrap_or_default();
            let message = client::json_message(&body, &["detail", "title", "error"])
                .unwrap_or_else(|| client::truncate(&body, client::MAX_DETAIL_CHARS));
            return ModelCheck::TokenRefused(format!("HTTP {status}: {message}"));
        }
        match read(response, false).await {
            Ok(_) => ModelCheck::Found,
            Err(ProviderError::NotFound) => ModelCheck::UnknownModel,
            Err(e) => ModelCheck::Failed(e.to_string()),
        }
    }
}

/// The model input for a job (google/nano-banana's schema: prompt, image_input, output_format).
pub fn model_input(job: &JobInput) -> Value {
    let room = job.room_type.as_deref().unwrap_or("room");
    let style = job
        .style
        .as_deref()
        .map(|s| format!(" in a {s} style"))
        .unwrap_or_default();
    let lead = match job.mode.as_str() {
        "redesign" => format!("Redesign this {room}{style}, keeping its layout, walls and windows."),
        "staging" => format!("Virtually stage this empty {room} with furniture and decor{style}."),
        "compose" => format!("Place the item from the second image naturally into the {room} in the first image{style}."),
        _ => format!("A photorealistic interior photo of a {room}{style}."),
    };
    let prompt = match job
        .prompt
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        Some(p) if job.mode == "imagine" => format!("{p}{style}"),
        Some(p) => format!("{lead} {p}"),
        None => lead,
    };
    json!({ "prompt": prompt, "image_input": job.images, "output_format": "jpg" })
}

/// Reads an answer: 2xx → JSON, else the matching error. `creating`: a 2xx we
/// cannot read may hide a created prediction.
async fn read(response: reqwest::Response, creating: bool) -> Result<Value, ProviderError> {
    let status = response.status();
    let retry_after = client::retry_after(response.headers());
    let unreadable = |message: String| {
        if creating && status.is_success() {
            ProviderError::Ambiguous(message)
        } else {
            ProviderError::Unavailable(message)
        }
    };
    let body = client::read_capped(response, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| unreadable(format!("reading the answer: {}", client::error_text(&e))))?
        .ok_or_else(|| {
            unreadable(format!(
                "HTTP {status} with an answer larger than {MAX_ANSWER_BYTES} bytes"
            ))
        })?;
    let body = String::from_utf8_lossy(&body);
    if status.is_success() {
        return serde_json::from_str(&body).map_err(|e| {
            let message = format!(
                "HTTP {status} with a body that is not JSON ({e}): {}",
                client::truncate(&body, client::MAX_DETAIL_CHARS)
            );
            if creating {
                ProviderError::Ambiguous(message)
            } else {
                ProviderError::Unavailable(message)
            }
        });
    }
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(ProviderError::RateLimited { retry_after });
    }
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(ProviderError::NotFound);
    }
    if client::is_outage_status(status) {
        return Err(ProviderError::Unavailable(format!(
            "HTTP {status}: {}",
            client::truncate(&body, client::MAX_DETAIL_CHARS)
        )));
    }
    let message = client::json_message(&body, &["detail", "title", "error"])
        .unwrap_or_else(|| client::truncate(&body, client::MAX_DETAIL_CHARS));
    Err(ProviderError::Rejected(format!("HTTP {status}: {message}")))
}

/// The job a prediction object was created for: the `job_id` query
/// parameter of the webhook URL the reactor gave it (echoed back as
/// `webhook`). None when it has no such URL.
pub fn created_for(prediction: &Value) -> Option<uuid::Uuid> {
    let webhook = prediction.get("webhook").and_then(Value::as_str)?;
    let url = url::Url::parse(webhook).ok()?;
    let (_, id) = url.query_pairs().find(|(k, _)| k == "job_id")?;
    uuid::Uuid::parse_str(&id).ok()
}

/// A prediction object → [`Prediction`]; anything unexpected is an error.
pub fn parse_prediction(v: &Value) -> Result<Prediction, String> {
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("prediction without an id")?;
    let status_text = v
        .get("status")
        .and_then(Value::as_str)
        .ok_or("prediction without a status")?;
    let status = PredictionState::parse(status_text)
        .ok_or_else(|| format!("unknown prediction status {status_text:?}"))?;
    let output = match v.get("output") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(url)) => vec![url.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or("prediction output is not a list of URLs")?,
        Some(other) => {
            return Err(format!(
                "prediction output is not a URL or a list of URLs: {other}"
            ))
        }
    };
    let error = match v.get("error") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    Ok(Prediction {
        id: id.to_string(),
        status,
        output,
        error,
    })
}

#[async_trait]
impl Provider for Replicate {
    async fn create(
        &self,
        job: &JobInput,
        webhook: Option<&str>,
    ) -> Result<Prediction, ProviderError> {
        let mut body = json!({ "input": model_input(job) });
        if let Some(url) = webhook {
            body["webhook"] = json!(url);
            body["webhook_events_filter"] = json!(["completed"]);
        }
        let response = self.create_request(body).send().await.map_err(|e| {
            // Refused or unresolvable: the request never reached Replicate.
            if e.is_connect() {
                ProviderError::Unavailable(client::error_text(&e))
            } else {
                ProviderError::Ambiguous(client::error_text(&e))
            }
        })?;
        let value = read(response, true).await?;
        parse_prediction(&value)
            .map_err(|e| ProviderError::Ambiguous(format!("create answered: {e}")))
    }

    async fn get(&self, id: &str) -> Result<Prediction, ProviderError> {
        let value = self
            .get_json(&format!("{}/predictions/{id}", self.base_url))
            .await?;
        parse_prediction(&value).map_err(ProviderError::Unavailable)
    }

    async fn cancel(&self, id: &str) -> Result<(), ProviderError> {
        let response = self
            .http
            .post(format!("{}/predictions/{id}/cancel", self.base_url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(client::error_text(&e)))?;
        read(response, false).await.map(|_| ())
    }

    async fn find(&self, job: &JobInput, since: DateTime<Utc>) -> Result<Found, ProviderError> {
        let input = model_input(job);
        // Clocks differ: look a minute further back than the attempt began.
        let horizon = since - chrono::Duration::seconds(60);
        let mut unproven = None;
        let mut url = format!("{}/predictions", self.base_url);
        for _ in 0..FIND_MAX_PAGES {
            let page = self.get_json(&url).await?;
            let results = page
                .get("results")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for item in &results {
                let created = item
                    .get("created_at")
                    .and_then(Value::as_str)
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| t.with_timezone(&Utc));
                if created.is_some_and(|t| t < horizon) {
                    return Ok(unproven.unwrap_or(Found::Nothing));
                }
                if created_for(item) == Some(job.id) {
                    return parse_prediction(item)
                        .map(Found::Ours)
                        .map_err(ProviderError::Unavailable);
                }
                if unproven.is_none() && item.get("input") == Some(&input) {
                    let prediction_id = item.get("id").and_then(Value::as_str).unwrap_or("?");
                    unproven = Some(Found::Unproven {
                        prediction_id: prediction_id.to_string(),
                    });
                }
            }
            match page.get("next").and_then(Value::as_str) {
                Some(next) if !next.is_empty() => match self.same_origin(next) {
                    Some(next) => url = next,
                    None => {
                        // The token goes with every request: never to another host.
                        tracing::warn!(
                            next = %client::display_url(next),
                            base = %client::display_url(&self.base_url),
                            "the prediction list's next page is not on REPLICATE_BASE_URL's origin; listing stopped"
                        );
                        break;
                    }
                },
                _ => break,
            }
        }
        Ok(unproven.unwrap_or(Found::Nothing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_list_outputs_and_rejects_garbage() {
        let p = parse_prediction(
            &json!({"id": "p1", "status": "succeeded", "output": "https://x/a.jpg"}),
        )
        .unwrap();
        assert_eq!(p.output, vec!["https://x/a.jpg"]);
        let p = parse_prediction(
            &json!({"id": "p1", "status": "aborted", "output": null, "error": null}),
        )
        .unwrap();
        assert_eq!(p.status, PredictionState::Aborted);
        for bad in [
            json!({}),
            json!({"id": "p"}),
            json!({"id": "p", "status": "weird"}),
            json!({"id": "p", "status": "succeeded", "output": 3}),
        ] {
            assert!(parse_prediction(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_job_id_parameter_of_the_webhook_url_names_the_job() {
        let job = uuid::Uuid::new_v4();
        let other = uuid::Uuid::new_v4();
        let with = |webhook: Value| json!({"id": "p", "status": "starting", "webhook": webhook});
        assert_eq!(
            created_for(&with(json!(format!(
                "https://r.example/webhooks/replicate?job_id={job}"
            )))),
            Some(job)
        );
        for not_proof in [
            with(json!(null)),
            json!({"id": "p", "status": "starting"}),
            with(json!(format!("https://r.example/{job}?job_id={other}"))),
            with(json!(format!(
                "https://r.example/webhooks/replicate?job_id={job}x"
            ))),
            with(json!(format!(
                "https://r.example/webhooks/replicate?other={job}"
            ))),
        ] {
            assert_ne!(created_for(&not_proof), Some(job), "{not_proof}");
        }
    }

    #[test]
    fn model_input_carries_mode_style_prompt_and_images() {
        let job = JobInput {
            id: uuid::Uuid::nil(),
            mode: "redesign".into(),
            room_type: Some("kitchen".into()),
            style: Some("industrial".into()),
            prompt: Some("brass lamps".into()),
            images: vec!["https://x/in.jpg".into()],
        };
        let input = model_input(&job);
        let prompt = input["prompt"].as_str().unwrap();
        assert!(
            prompt.contains("kitchen")
                && prompt.contains("industrial")
                && prompt.contains("brass lamps"),
            "{prompt}"
        );
        assert_eq!(input["image_input"], json!(["https://x/in.jpg"]));
    }
}
