//! The HTTP client of one own table: POSTs a row signed twice (the reactor's
//! `X-Reactor-*` headers and the Standard Webhooks ones) and reads the answer.
use super::answer::{error_detail, parse_answer, Answer};
use crate::handlers::table_config::TableConfig;
use crate::http::client;
use crate::http::webhook_signature::Secret;
use crate::job::handler::HandlerError;
use std::time::Duration;

/// Largest answer read from a handler URL; what it carries goes into a row.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

pub const ID_HEADER: &str = "X-Reactor-Id";
pub const TIMESTAMP_HEADER: &str = "X-Reactor-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Reactor-Signature";
pub const TABLE_HEADER: &str = "X-Reactor-Table";
pub const ATTEMPT_HEADER: &str = "X-Reactor-Attempt";

pub(super) struct SignedClient {
    http: reqwest::Client,
    /// The table as written in REACTOR_CONFIG (the X-Reactor-Table header).
    table: String,
    secret: Secret,
    timeout: Duration,
}

impl SignedClient {
    pub(super) fn new(cfg: &TableConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(cfg.http.timeout)
            .connect_timeout(cfg.http.timeout.min(Duration::from_secs(10)))
            // A redirected POST becomes a GET elsewhere: treat it as an error answer.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("reactor/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(SignedClient {
            http,
            table: cfg.name.clone(),
            secret: cfg.http.secret.clone(),
            timeout: cfg.http.timeout,
        })
    }

    /// POSTs a row's JSON to `url`, signed; `attempt` counts from 1. The
    /// worker being away (no connection, a timeout, HTTP 5xx/429/408, with
    /// its Retry-After) is transient; any other error status is permanent;
    /// an answer that cannot be read is retried up to the attempt limit.
    pub(super) async fn post(
        &self,
        url: &str,
        row_id: &str,
        attempt: i32,
        body: String,
    ) -> Result<Answer, HandlerError> {
        let shown = client::display_url(url);
        let timestamp = chrono::Utc::now().timestamp();
        let signature =
            crate::http::webhook_signature::sign(&self.secret, row_id, timestamp, body.as_bytes());
        // Standard Webhooks receivers de-duplicate on webhook-id, so each POST
        // is its own message: a row set back to pending and run again must not
        // be dropped as a repeat. X-Reactor-Id stays the row's key.
        let delivery = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let delivery_signature = crate::http::webhook_signature::sign(
            &self.secret,
            &delivery,
            timestamp,
            body.as_bytes(),
        );
        let timestamp = timestamp.to_string();
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, row_id)
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, &signature)
            // The Standard Webhooks names too, so stock verifier libraries work as they are.
            .header(crate::http::webhook_signature::ID_HEADER, &delivery)
            .header(crate::http::webhook_signature::TIMESTAMP_HEADER, &timestamp)
            .header(
                crate::http::webhook_signature::SIGNATURE_HEADER,
                &delivery_signature,
            )
            .header(TABLE_HEADER, &self.table)
            .header(ATTEMPT_HEADER, attempt.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                HandlerError::transient(if e.is_timeout() {
                    format!("POST {shown}: timed out after {:?}", self.timeout)
                } else {
                    format!("POST {shown}: {}", client::error_text_without_url(&e))
                })
            })?;
        let status = response.status();
        let retry_after = client::retry_after(response.headers());
        let body = client::read_capped(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| {
                HandlerError::transient(if e.is_timeout() {
                    format!(
                        "POST {shown}: timed out after {:?} reading the answer",
                        self.timeout
                    )
                } else {
                    format!(
                        "POST {shown}: reading the answer: {}",
                        client::error_text_without_url(&e)
                    )
                })
            })?;
        let Some(body) = body else {
            return Err(HandlerError::Retry(format!(
                "POST {shown}: HTTP {status}, answer larger than {MAX_ANSWER_BYTES} bytes"
            )));
        };
        if !status.is_success() {
            let message = format!("POST {shown}: HTTP {status}{}", error_detail(&body));
            return Err(if client::is_outage_status(status) {
                HandlerError::transient_after(message, retry_after)
            } else {
                HandlerError::permanent(message)
            });
        }
        parse_answer(&body)
            .map_err(|e| HandlerError::Retry(format!("POST {shown}: HTTP {status}, but {e}")))
    }
}
