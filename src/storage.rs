//! Where render images go: the local filesystem or any S3-compatible store
//! (AWS, MinIO, Supabase Storage's S3 endpoint), through `object_store`.
//!
//! Objects are addressed like Supabase Storage: a bucket and a path inside it
//! (`public` / `renders/{render_id}/{idx}.jpg`). For `s3://BUCKET` the bucket
//! is the URL's (point it at your `public` bucket); for a local directory the
//! bucket is a sub-directory of it (`./storage/public/renders/…`).
use object_store::{path::Path as ObjectPath, ObjectStore, PutPayload};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("REACTOR_STORAGE_URL {url:?} is not usable: {reason}")]
    Config { url: String, reason: String },
    #[error("storing {path}: {source}")]
    Put {
        path: String,
        #[source]
        source: object_store::Error,
    },
}

#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// `public/` for a local directory, empty for an S3 bucket.
    bucket_prefix: &'static str,
    description: String,
}

/// The local directory behind a `file://` URL or a plain path; None for s3://.
pub fn local_dir(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Some(PathBuf::from(rest));
    }
    if url.contains("://") {
        return None;
    }
    Some(PathBuf::from(url))
}

impl Storage {
    pub fn from_url(url: &str) -> Result<Self, StorageError> {
        let config_err = |reason: String| StorageError::Config {
            url: url.to_string(),
            reason,
        };
        if let Some(dir) = local_dir(url) {
            std::fs::create_dir_all(&dir)
                .map_err(|e| config_err(format!("creating {}: {e}", dir.display())))?;
            let dir = dir
                .canonicalize()
                .map_err(|e| config_err(format!("resolving {}: {e}", dir.display())))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| config_err(e.to_string()))?;
            return Ok(Storage {
                store: Arc::new(store),
                bucket_prefix: "public/",
                description: dir.display().to_string(),
            });
        }
        if url.starts_with("s3://") {
            let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url);
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                builder = builder
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_endpoint(endpoint);
            }
            let store = builder.build().map_err(|e| config_err(e.to_string()))?;
            return Ok(Storage {
                store: Arc::new(store),
                bucket_prefix: "",
                description: url.to_string(),
            });
        }
        Err(config_err(
            "expected file:///absolute/path, a directory path, or s3://bucket".into(),
        ))
    }

    /// Writes `bytes` at `path` inside the public bucket (overwriting).
    pub async fn put_public(&self, path: &str, bytes: bytes::Bytes) -> Result<(), StorageError> {
        let full = format!("{}{path}", self.bucket_prefix);
        self.store
            .put(&ObjectPath::from(full.as_str()), PutPayload::from(bytes))
            .await
            .map_err(|source| StorageError::Put { path: full, source })?;
        Ok(())
    }

    pub fn description(&self) -> &str {
        &self.description
    }
}
