//! Start-up: waits until the database is reachable and has the reactor's schema.
use super::error::ServiceError;
use super::{EngineError, Shared};
use backon::{BackoffBuilder as _, ExponentialBuilder};
use std::time::Duration;

impl Shared {
    pub(super) async fn wait_for_schema(&self) -> Result<(), EngineError> {
        // 200 ms, doubling up to 10 s, until the database answers.
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .without_max_times()
            .build();
        loop {
            let delay = delays.next().expect("retries without a limit");
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
        }
    }
}
