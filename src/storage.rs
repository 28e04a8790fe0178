//! Where render images go: the local filesystem or any S3-compatible store
//! (AWS, MinIO, Supabase Storage's S3 endpoint), through `object_store`.
//!
//! Objects are addressed like Supabase Storage: a bucket and a path inside it
//! (`public` / `renders/{render_id}/{idx}.jpg`). For `s3://BUCKET` the bucket
//! is the URL's (point it at your `public` bucket); for a local directory the
//! bucket is a sub-directory of it (`./storage/public/renders/…`).
use object_store::{
    path::Path as ObjectPath, Attribute, Attributes, ObjectStore, PutOptions, PutPayload,
};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("signing a URL for input {path:?}: {reason}")]
    Sign { path: String, reason: String },
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
    /// Whether objects carry Content-Type and Cache-Control (S3 does; a local
    /// file has only its name, whose extension says the type).
    has_headers: bool,
    description: String,
}

/// Cache-Control of stored renders. A key (`renders/{render_id}/{idx}.{ext}`)
/// only ever holds the bytes of one job's output (a retry writes the same
/// bytes again), so caching is safe; a day rather than a year, so that a
/// render its owner deleted stops being served by shared caches soon.
pub const RENDER_CACHE_CONTROL: &str = "public, max-age=86400";

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
                has_headers: false,
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
                has_headers: true,
                description: url.to_string(),
            });
        }
        Err(config_err(
            "expected file:///absolute/path, a directory path, or s3://bucket".into(),
        ))
    }

    /// Writes `bytes` at `path` inside the public bucket (overwriting), served
    /// as `content_type` with `cache_control` where the store keeps headers.
    pub async fn put_public(
        &self,
        path: &str,
        bytes: bytes::Bytes,
        content_type: &'static str,
        cache_control: &'static str,
    ) -> Result<(), StorageError> {
        let full = format!("{}{path}", self.bucket_prefix);
        let mut attributes = Attributes::new();
        if self.has_headers {
            attributes.insert(Attribute::ContentType, content_type.into());
            attributes.insert(Attribute::CacheControl, cache_control.into());
        }
        let options = PutOptions {
            attributes,
            ..Default::default()
        };
        self.store
            .put_opts(
                &ObjectPath::from(full.as_str()),
                PutPayload::from(bytes),
                options,
            )
            .await
            .map_err(|source| StorageError::Put { path: full, source })?;
        Ok(())
    }

    pub fn description(&self) -> &str {
        &self.description
    }
}

/// Signs short-lived GET URLs for input images kept in an S3-compatible store
/// (Supabase Storage's private bucket, say), so the provider can fetch them.
/// Input paths are `bucket/key`, as the room-redesign app writes them
/// (`private/{user}/inputs/{uuid}.jpg`). Signing is local: no request is made.
#[derive(Debug, Clone)]
pub struct InputSigner {
    base: object_store::aws::AmazonS3Builder,
}

impl InputSigner {
    /// With `s3://` storage, a signer configured from the same AWS_* variables.
    pub fn for_storage_url(url: &str) -> Option<Self> {
        if !url.starts_with("s3://") {
            return None;
        }
        let mut base = object_store::aws::AmazonS3Builder::from_env();
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            base = base
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint);
        }
        Some(InputSigner { base })
    }

    pub fn with_builder(base: object_store::aws::AmazonS3Builder) -> Self {
        InputSigner { base }
    }

    pub async fn sign(
        &self,
        path: &str,
        valid_for: std::time::Duration,
    ) -> Result<String, StorageError> {
        use object_store::signer::Signer as _;
        let error = |reason: String| StorageError::Sign {
            path: path.to_string(),
            reason,
        };
        let (bucket, key) = path
            .trim_start_matches('/')
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| error("expected bucket/key".into()))?;
        let store = self
            .base
            .clone()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| error(e.to_string()))?;
        let url = store
            .signed_url(reqwest::Method::GET, &ObjectPath::from(key), valid_for)
            .await
            .map_err(|e| error(e.to_string()))?;
        Ok(url.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> InputSigner {
        InputSigner::with_builder(
            object_store::aws::AmazonS3Builder::new()
                .with_access_key_id("AKIDEXAMPLE")
                .with_secret_access_key("secret")
                .with_region("us-east-1")
                .with_endpoint("http://127.0.0.1:9000")
                .with_allow_http(true),
        )
    }

    #[tokio::test]
    async fn an_input_path_becomes_a_presigned_url_of_its_bucket_and_key() {
        let url = signer()
            .sign(
                "private/u1/inputs/room.jpg",
                std::time::Duration::from_secs(3600),
            )
            .await
            .unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:9000/private/u1/inputs/room.jpg?"),
            "{url}"
        );
        for part in [
            "X-Amz-Signature=",
            "X-Amz-Expires=3600",
            "X-Amz-Credential=AKIDEXAMPLE",
        ] {
            assert!(url.contains(part), "{part} missing in {url}");
        }
    }

    #[tokio::test]
    async fn a_path_without_a_bucket_is_refused_clearly() {
        let err = signer()
            .sign("room.jpg", std::time::Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("bucket/key"), "{err}");
    }
}
