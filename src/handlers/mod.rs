//! The built-in handlers. Each file says what happens for one kind of change.
pub mod favorites;
pub mod renders;
pub mod usage;

use crate::config::RunConfig;
use crate::handler::Handler;

/// favorites, usage and renders, configured from `cfg`.
pub fn builtin(cfg: &RunConfig) -> anyhow::Result<Vec<Handler>> {
    let storage = crate::storage::Storage::from_url(&cfg.storage_url)?;
    Ok(vec![
        favorites::handler(),
        usage::handler(),
        renders::handler(storage, cfg.max_image_bytes, cfg.download_timeout)?,
    ])
}
