//! Start-up: waits until the database is reachable and has the reactor's schema.
use super::error::ServiceError;
use super::{EngineError, Inner};
use std::time::Duration;

impl Inner {
    pub(super) async fn wait_for_schema(&self) -> Result<(), EngineError> {
        let mut delay = Duration::from_millis(200);
        loop {
            let check = async {
                let client = self.pool.get().await?;
                Ok::<bool, ServiceError>(crate::store::handler_state::exists(&**client).await?)
            };
            match check.await {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(EngineError::NotMigrated),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "database not reachable yet")
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}
