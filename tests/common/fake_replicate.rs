//! A loopback stand-in for Replicate's HTTP API: the same endpoints and
//! shapes, with scripted answers for the failure cases.
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const TOKEN: &str = "r8_test_token";
/// The webhook signing secret tests give the reactor:
/// "whsec_" + base64("reactor-test-webhook-signing-key").
pub const WEBHOOK_SECRET: &str = "whsec_cmVhY3Rvci10ZXN0LXdlYmhvb2stc2lnbmluZy1rZXk=";

/// Flags that turn webhooks on: the reactor's HTTP server on a free local
/// port, which is also its public URL, and `WEBHOOK_SECRET`. Every create then
/// carries the job id in its webhook URL, the proof that lets a later attempt
/// adopt what an interrupted one created.
pub fn webhook_flags(grace: &str) -> Vec<String> {
    let addr = format!("127.0.0.1:{}", super::free_port());
    [
        "--http-addr".to_string(),
        addr.clone(),
        "--public-url".to_string(),
        format!("http://{addr}"),
        "--replicate-webhook-secret".to_string(),
        WEBHOOK_SECRET.to_string(),
        "--webhook-grace".to_string(),
        grace.to_string(),
    ]
    .into()
}

/// A webhook body signed with `WEBHOOK_SECRET` as Replicate signs it, and
/// its headers.
pub fn signed_webhook(
    body: &Value,
    delivery: &str,
    at: i64,
) -> (String, Vec<(&'static str, String)>) {
    let body = body.to_string();
    let secret = reactor::http::webhook_signature::Secret::parse(WEBHOOK_SECRET).unwrap();
    let signature = reactor::http::webhook_signature::sign(&secret, delivery, at, body.as_bytes());
    (
        body,
        vec![
            ("webhook-id", delivery.to_string()),
            ("webhook-timestamp", at.to_string()),
            ("webhook-signature", signature),
        ],
    )
}

/// POSTs a webhook to the reactor; returns the answer's status.
pub async fn deliver_webhook(
    url: &str,
    body: String,
    headers: &[(&'static str, String)],
) -> reqwest::StatusCode {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    request.send().await.expect("webhook delivery").status()
}

/// What the next create call does (after the script runs out: create normally).
#[derive(Clone, Debug)]
pub enum CreateScript {
    /// 429, with a Retry-After header when given (seconds).
    RateLimited(Option<u64>),
    /// A 5xx answer; nothing is created.
    ServerError,
    /// Creates the prediction, then never answers (the client times out or dies).
    CreateThenHang,
    /// Waits this long, then creates and answers normally (a slow provider).
    Slow(Duration),
    /// Creates the prediction, then answers only after this long: when that is
    /// past the caller's timeout, the caller cannot know it was created.
    CreateThenAnswerAfter(Duration),
}

#[derive(Clone, Debug)]
pub struct FakePrediction {
    pub id: String,
    pub status: String,
    pub input: Value,
    pub webhook: Option<String>,
    pub output: Value,
    pub error: Value,
    pub created_at: String,
    pub canceled: bool,
}

impl FakePrediction {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id, "status": self.status, "input": self.input, "webhook": self.webhook,
            "output": self.output, "error": self.error, "created_at": self.created_at,
            "urls": {"get": format!("/predictions/{}", self.id), "cancel": format!("/predictions/{}/cancel", self.id)},
        })
    }
}

#[derive(Default)]
pub struct Inner {
    pub predictions: Vec<FakePrediction>,
    pub script: VecDeque<CreateScript>,
    pub create_calls: u32,
    pub times: Vec<std::time::Instant>,
    /// While set, every endpoint answers HTTP 503 (an outage at the provider).
    pub down: bool,
    /// Requests answered 503 because of `down`.
    pub refused_while_down: u32,
}

#[derive(Clone)]
pub struct FakeReplicate {
    pub base: String,
    pub inner: Arc<Mutex<Inner>>,
}

impl FakeReplicate {
    /// `reactor run` flags that point the replicate provider at this fake
    /// (2 s provider timeout), then `extra`.
    pub fn reactor_flags(&self, extra: &[&str]) -> Vec<String> {
        let mut flags: Vec<String> = [
            "--provider",
            "replicate",
            "--replicate-base-url",
            &self.base,
            "--replicate-api-token",
            TOKEN,
            "--provider-timeout",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    }

    pub async fn start() -> Self {
        let inner: Arc<Mutex<Inner>> = Default::default();
        let app = axum::Router::new()
            .route(
                "/v1/models/{owner}/{name}/predictions",
                axum::routing::post(create),
            )
            .route("/v1/models/{owner}/{name}", axum::routing::get(model))
            .route("/v1/predictions", axum::routing::get(list))
            .route("/v1/predictions/{id}", axum::routing::get(get))
            .route("/v1/predictions/{id}/cancel", axum::routing::post(cancel))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeReplicate { base, inner }
    }

    pub fn script(&self, steps: &[CreateScript]) {
        self.inner
            .lock()
            .unwrap()
            .script
            .extend(steps.iter().cloned());
    }

    /// Starts (true) or ends (false) an outage: every endpoint answers 503.
    pub fn set_down(&self, down: bool) {
        self.inner.lock().unwrap().down = down;
    }

    /// Requests answered 503 during outages so far.
    pub fn refused_while_down(&self) -> u32 {
        self.inner.lock().unwrap().refused_while_down
    }

    pub fn predictions(&self) -> Vec<FakePrediction> {
        self.inner.lock().unwrap().predictions.clone()
    }

    pub fn create_calls(&self) -> u32 {
        self.inner.lock().unwrap().create_calls
    }

    pub fn create_times(&self) -> Vec<std::time::Instant> {
        self.inner.lock().unwrap().times.clone()
    }

    /// Predictions created per job, by the `job_id` the reactor puts in the
    /// webhook URL (so only for predictions created with a webhook).
    pub fn creates_per_job(&self) -> std::collections::HashMap<String, u32> {
        let mut per_job = std::collections::HashMap::new();
        for p in self.inner.lock().unwrap().predictions.iter() {
            if let Some(job) = p.webhook.as_deref().and_then(|w| w.split("job_id=").nth(1)) {
                *per_job.entry(job.to_string()).or_insert(0) += 1;
            }
        }
        per_job
    }

    /// Sets a prediction's outcome (what the next GET or a webhook reports).
    pub fn finish(&self, id: &str, status: &str, output: Value, error: Value) -> FakePrediction {
        let mut inner = self.inner.lock().unwrap();
        let p = inner
            .predictions
            .iter_mut()
            .find(|p| p.id == id)
            .expect("known prediction");
        p.status = status.into();
        p.output = output;
        p.error = error;
        p.clone()
    }
}

/// `GET /models/{owner}/{name}` as Replicate answers it: 401 for a bad
/// token, 404 for a model it does not have (only the reactor's default model
/// exists here: google/nano-banana, the reactor's default), else the model.
async fn model(Path((owner, name)): Path<(String, String)>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"title": "Unauthenticated", "detail": "You did not pass a valid authentication token", "status": 401})),
        )
            .into_response();
    }
    if format!("{owner}/{name}") != "google/nano-banana" {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"title": "Not found", "detail": "The requested resource could not be found.", "status": 404})),
        )
            .into_response();
    }
    Json(json!({
        "owner": owner, "name": name, "url": format!("https://replicate.com/{owner}/{name}"),
        "visibility": "public", "latest_version": {"id": "0123456789abcdef"},
    }))
    .into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

/// The answer during an outage (see [`FakeReplicate::set_down`]), if one is on.
fn outage(inner: &Mutex<Inner>) -> Option<Response> {
    let mut i = inner.lock().unwrap();
    if !i.down {
        return None;
    }
    i.refused_while_down += 1;
    Some(
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"detail": "Service Unavailable"})),
        )
            .into_response(),
    )
}

async fn create(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((_owner, _name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"detail": "Invalid token"})),
        )
            .into_response();
    }
    if let Some(down) = outage(&inner) {
        return down;
    }
    let step = {
        let mut i = inner.lock().unwrap();
        i.create_calls += 1;
        i.times.push(std::time::Instant::now());
        i.script.pop_front()
    };
    match step {
        Some(CreateScript::RateLimited(after)) => {
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"detail": "Request was throttled."})),
            )
                .into_response();
            if let Some(s) = after {
                response
                    .headers_mut()
                    .insert("retry-after", s.to_string().parse().unwrap());
            }
            return response;
        }
        Some(CreateScript::ServerError) => {
            return (StatusCode::BAD_GATEWAY, "upstream trouble").into_response()
        }
        Some(CreateScript::Slow(delay)) => tokio::time::sleep(delay).await,
        _ => {}
    }
    let prediction = FakePrediction {
        id: format!("pred{}", uuid::Uuid::new_v4().simple()),
        status: "starting".into(),
        input: body.get("input").cloned().unwrap_or(Value::Null),
        webhook: body
            .get("webhook")
            .and_then(Value::as_str)
            .map(str::to_string),
        output: Value::Null,
        error: Value::Null,
        created_at: chrono::Utc::now().to_rfc3339(),
        canceled: false,
    };
    inner.lock().unwrap().predictions.push(prediction.clone());
    match step {
        Some(CreateScript::CreateThenHang) => tokio::time::sleep(Duration::from_secs(3600)).await,
        Some(CreateScript::CreateThenAnswerAfter(delay)) => tokio::time::sleep(delay).await,
        _ => {}
    }
    (StatusCode::CREATED, Json(prediction.json())).into_response()
}

async fn get(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if let Some(down) = outage(&inner) {
        return down;
    }
    match inner
        .lock()
        .unwrap()
        .predictions
        .iter()
        .find(|p| p.id == id)
    {
        Some(p) => Json(p.json()).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"detail": "Not found."}))).into_response(),
    }
}

async fn cancel(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if let Some(down) = outage(&inner) {
        return down;
    }
    let mut i = inner.lock().unwrap();
    match i.predictions.iter_mut().find(|p| p.id == id) {
        Some(p) => {
            p.canceled = true;
            if p.status == "starting" || p.status == "processing" {
                p.status = "canceled".into();
            }
            Json(p.json()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Newest first, like Replicate's list.
async fn list(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if let Some(down) = outage(&inner) {
        return down;
    }
    let results: Vec<Value> = inner
        .lock()
        .unwrap()
        .predictions
        .iter()
        .rev()
        .map(FakePrediction::json)
        .collect();
    Json(json!({"next": null, "previous": null, "results": results})).into_response()
}
