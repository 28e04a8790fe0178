//! Heartbeat: renews the leases of attempts running in this process.
use super::error::ServiceError;
use super::Shared;
use crate::store::handler_state;
use std::sync::Arc;

impl Shared {
    pub(super) async fn heartbeat(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.cfg.lease / 3);
        loop {
            ticker.tick().await;
            let renewed = async {
                let client = self.pool.get().await?;
                handler_state::renew(&**client, self.instance, &self.live, self.cfg.lease).await?;
                Ok::<(), ServiceError>(())
            };
            if let Err(e) = renewed.await {
                tracing::warn!(error = %e, "renewing leases failed");
            }
        }
    }
}
