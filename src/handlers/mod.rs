//! The built-in handlers. Each file says what happens for one kind of change.
pub(crate) mod deleted_objects;
pub mod favorites;
pub(crate) mod generation;
pub(crate) mod own_tables;
pub(crate) mod renders;
pub(crate) mod table_config;
pub mod thumbnails;
pub mod usage;

use crate::config::{ProviderKind, RunConfig};
use crate::job::handler::Handler;
use crate::providers::Provider;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("REPLICATE_API_TOKEN is required with REACTOR_PROVIDER=replicate (or use REACTOR_PROVIDER=local)")]
    MissingToken,
    #[error(
        "REPLICATE_WEBHOOK_SECRET is required with REACTOR_PUBLIC_URL: webhooks must be verified"
    )]
    MissingWebhookSecret,
    #[error(transparent)]
    Storage(#[from] crate::providers::storage::StorageError),
    #[error("{0}")]
    Other(String),
}

/// The provider `cfg` asks for.
pub async fn provider(cfg: &RunConfig) -> Result<Arc<dyn Provider>, SetupError> {
    Ok(match cfg.provider {
        ProviderKind::Replicate => {
            let token = cfg
                .replicate_api_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .ok_or(SetupError::MissingToken)?;
            if cfg.public_url.is_some() && cfg.replicate_webhook_secret.is_none() {
                return Err(SetupError::MissingWebhookSecret);
            }
            Arc::new(
                crate::providers::replicate::Replicate::new(
                    &cfg.replicate_base_url,
                    token,
                    &cfg.replicate_model,
                    cfg.provider_timeout,
                )
                .map_err(|e| SetupError::Other(e.to_string()))?,
            )
        }
        ProviderKind::Local => Arc::new(
            crate::providers::local::Local::start(cfg.local_delay, 2)
                .await
                .map_err(|e| SetupError::Other(format!("starting the local provider: {e}")))?,
        ),
    })
}

/// generation, renders, deleted objects, usage and favorites, configured from `cfg`.
pub async fn builtin(cfg: &RunConfig) -> Result<Vec<Handler>, SetupError> {
    let storage = crate::providers::storage::Storage::from_url(&cfg.storage_url)?;
    let provider = provider(cfg).await?;
    let mut downloads_from = cfg.allow_private_downloads.clone();
    if let Some(server) = provider.output_server() {
        downloads_from = downloads_from.with_origin_of(&server);
    }
    let provider: Arc<dyn Provider> = Arc::new(crate::providers::metered::Metered(provider));
    let settings = generation::Settings {
        webhook_url: cfg
            .public_url
            .as_ref()
            .map(|u| format!("{}/webhooks/replicate", u.trim_end_matches('/'))),
        stuck_after: cfg.stuck_after,
        poll_min: cfg.provider_poll,
        webhook_grace: cfg.webhook_grace,
        late_window: cfg.late_window,
        input_base_url: cfg.input_base_url.clone(),
        input_paths_as_is: cfg.provider == ProviderKind::Local,
        input_signer: crate::providers::storage::InputSigner::for_storage_url(&cfg.storage_url),
    };
    Ok(vec![
        generation::handler(provider, settings, cfg.generation_limits()),
        renders::handler(
            storage.clone(),
            cfg.max_image_bytes,
            cfg.download_timeout,
            thumbnails::Settings {
                longest_side: u32::try_from(cfg.thumbnail_size).unwrap_or(u32::MAX),
                quality: cfg.thumbnail_quality,
            },
            downloads_from,
            cfg.render_retry_for,
        )
        .map_err(|e| SetupError::Other(e.to_string()))?,
        deleted_objects::handler(storage),
        usage::handler(),
        favorites::handler(),
    ])
}
