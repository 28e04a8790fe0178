//! Outbox drain: hints that triggers appended to reactor.outbox, for
//! databases where the reactor cannot LISTEN (REACTOR_OUTBOX_POLL).
use super::error::ServiceError;
use super::listener::Event;
use super::Shared;
use std::sync::Arc;
use std::time::Duration;

impl Shared {
    /// Outbox mode: every `every`, takes the hints the triggers appended to
    /// reactor.outbox (in batches), routes them as if they had been notified,
    /// and sends their job_status notifications in one statement per batch.
    pub(super) async fn drain_outbox(self: Arc<Self>, every: Duration) {
        const BATCH: i64 = 10_000;
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            let drained = async {
                loop {
                    let payloads = self
                        .within(async |client| {
                            Ok(crate::store::outbox::take(&***client, BATCH).await?)
                        })
                        .await?;
                    for payload in &payloads {
                        match crate::engine::notification::parse(payload) {
                            Ok(crate::engine::notification::Message::Change(change)) => {
                                self.route(Event::Change(change))
                            }
                            _ => tracing::warn!(%payload, "ignoring a malformed outbox entry"),
                        }
                    }
                    if (payloads.len() as i64) < BATCH {
                        return Ok::<(), ServiceError>(());
                    }
                }
            };
            if let Err(e) = drained.await {
                tracing::warn!(error = %e, "draining reactor.outbox failed; will try again");
            }
        }
    }
}
