//! The provider side of the soak: the loopback Replicate stand-in
//! (`common::fake_replicate`) driven like the real service. Predictions run
//! for a while, then succeed (images on the loopback image server) or fail;
//! each completion is pushed as a signed webhook (Standard Webhooks, as
//! Replicate signs them) to the URL the reactor registered, retried with
//! backoff when the reactor does not answer 2xx, like Replicate does.
use crate::common::fake_replicate::FakeReplicate;
use crate::common::ImageServer;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// "whsec_" + base64("reactor-test-webhook-signing-key").
pub const SECRET: &str = "whsec_cmVhY3Rvci10ZXN0LXdlYmhvb2stc2lnbmluZy1rZXk=";
/// Delays between delivery attempts of one webhook (then it is given up).
const WEBHOOK_RETRIES: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

#[derive(Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    pub refused: AtomicU64,
    pub given_up: AtomicU64,
}

/// When a prediction finishes, and how.
struct Plan {
    seen: Instant,
    runs_for: Duration,
    succeeds: bool,
    webhook_sent: bool,
}

/// Runs predictions to completion and delivers their webhooks until `stop`.
pub async fn autopilot(
    fake: FakeReplicate,
    images: Arc<ImageServer>,
    seed: u64,
    stats: Arc<WebhookStats>,
    stop: CancellationToken,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let secret = Arc::new(reactor::http::webhook_signature::Secret::parse(SECRET).expect("secret"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut plans: HashMap<String, Plan> = HashMap::new();
    while !stop.is_cancelled() {
        let mut finished = vec![];
        {
            let mut inner = fake.inner.lock().unwrap();
            for p in inner.predictions.iter_mut() {
                let plan = plans.entry(p.id.clone()).or_insert_with(|| Plan {
                    seen: Instant::now(),
                    runs_for: Duration::from_millis(rng.random_range(300..3000)),
                    succeeds: rng.random_bool(0.92),
                    webhook_sent: false,
                });
                let elapsed = plan.seen.elapsed();
                if p.status == "starting" && elapsed > Duration::from_millis(200) {
                    p.status = "processing".into();
                }
                if p.status == "processing" && elapsed > plan.runs_for {
                    if plan.succeeds {
                        p.status = "succeeded".into();
                        p.output = json!([
                            images.url(&format!("/ok/{}-0.jpg", p.id)),
                            images.url(&format!("/ok/{}-1.jpg", p.id)),
                        ]);
                    } else {
                        p.status = "failed".into();
                        p.error = json!("NSFW content detected");
                    }
                }
                let terminal = matches!(p.status.as_str(), "succeeded" | "failed" | "canceled");
                if terminal && !plan.webhook_sent {
                    plan.webhook_sent = true;
                    if p.webhook.is_some() {
                        finished.push(p.clone());
                    }
                }
            }
        }
        for p in finished {
            let url = p.webhook.clone().expect("webhook");
            let body = p.json().to_string();
            tokio::spawn(deliver(
                http.clone(),
                secret.clone(),
                url,
                body,
                stats.clone(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One webhook, retried until a 2xx or the retries run out.
async fn deliver(
    http: reqwest::Client,
    secret: Arc<reactor::http::webhook_signature::Secret>,
    url: String,
    body: String,
    stats: Arc<WebhookStats>,
) {
    let delivery = format!("msg_{}", uuid::Uuid::new_v4().simple());
    for (attempt, wait) in std::iter::once(Duration::ZERO)
        .chain(WEBHOOK_RETRIES)
        .enumerate()
    {
        tokio::time::sleep(wait).await;
        // Every attempt is signed afresh (the timestamp must be recent).
        let at = chrono::Utc::now().timestamp();
        let signature =
            reactor::http::webhook_signature::sign(&secret, &delivery, at, body.as_bytes());
        let sent = http
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery)
            .header("webhook-timestamp", at.to_string())
            .header("webhook-signature", signature)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                if attempt == WEBHOOK_RETRIES.len() {
                    stats.given_up.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
