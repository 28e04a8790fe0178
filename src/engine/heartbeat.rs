//! Heartbeat: renews the leases of attempts running in this process.
use super::Inner;
use crate::store::handler_state;
use std::sync::Arc;

impl Inner {
    pub(super) async fn heartbeat(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.cfg.lease / 3);
        loop {
            ticker.tick().await;
            let renewed = async {
                let client = self.pool.get().await.map_err(|e| e.to_string())?;
                handler_state::renew(&**client, self.instance, &self.live, self.cfg.lease)
                    .await
                    .map_err(|e| crate::store::db::describe(&e))
            };
            if let Err(e) = renewed.await {
                tracing::warn!(error = %e, "renewing leases failed");
            }
        }
    }
}
