//! Heartbeat: renews the leases of attempts running in this process.
use super::error::ServiceError;
use super::Shared;
use crate::store::handler_state;
use std::sync::Arc;

impl Shared {
    pub(super) async fn heartbeat(self: Arc<Self>) {
        let every = self.cfg.lease / 3;
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A renewal that waits longer than a beat is late anyway: the next
        // beat tries again on a fresh connection.
        let deadline = self.cfg.statement_timeout.min(every);
        loop {
            ticker.tick().await;
            let sent = tokio::time::Instant::now();
            let renewed = crate::store::db::within(
                &self.pool,
                deadline,
                async |client| -> Result<u64, ServiceError> {
                    Ok(
                        handler_state::renew(&***client, self.instance, &self.live, self.cfg.lease)
                            .await?,
                    )
                },
            )
            .await;
            match renewed {
                Ok(_) => self.live.renewed(sent),
                Err(e) => tracing::warn!(error = %e, "renewing leases failed"),
            }
        }
    }
}
