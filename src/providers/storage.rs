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
    #[error("input {path:?} refused: it {reason}")]
    Refused { path: String, reason: String },
    #[error("REACTOR_STORAGE_URL {url:?} is not usable: {reason}")]
    Config { url: String, reason: String },
    #[error("storing {path}: {source}")]
    Put {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("deleting {path}: {source}")]
    Delete {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("probe object {path}: {reason}")]
    Probe { path: String, reason: String },
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
            if let Err(e) = std::fs::create_dir_all(&dir) {
                if !dir.exists() {
                    return Err(config_err(format!("creating {}: {e}", dir.display())));
                }
                // Something is at the path but it is not a usable folder (a
                // mount that is away): an outage, not a setting to refuse.
                // Writes fail, and renders are retried, until it is back.
                tracing::warn!(storage = %dir.display(), error = %e, "the storage folder is not usable now; renders wait for it");
            }
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

    /// Deletes the object at `path` inside the public bucket. An object that
    /// is not there (deleted before, or never stored) is success.
    pub async fn delete_public(&self, path: &str) -> Result<(), StorageError> {
        let full = format!("{}{path}", self.bucket_prefix);
        match self.store.delete(&ObjectPath::from(full.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StorageError::Delete { path: full, source }),
        }
    }

    /// Writes a small object, reads it back and deletes it: proves the
    /// reactor may store renders here. Leaves nothing behind when it succeeds
    /// (and tries to delete the object when reading fails).
    pub async fn probe(&self) -> Result<(), StorageError> {
        let path = format!("reactor-probe-{}.txt", uuid::Uuid::new_v4().simple());
        let bytes = bytes::Bytes::from(format!("reactor storage probe {path}"));
        self.put_public(&path, bytes.clone(), "text/plain", "no-store")
            .await?;
        let full = ObjectPath::from(format!("{}{path}", self.bucket_prefix).as_str());
        let probe_err = |reason: String| StorageError::Probe {
            path: full.to_string(),
            reason,
        };
        let read = async {
            self.store
                .get(&full)
                .await
                .map_err(|e| probe_err(format!("reading it back: {e}")))?
                .bytes()
                .await
                .map_err(|e| probe_err(format!("reading it back: {e}")))
        }
        .await;
        let deleted = self
            .store
            .delete(&full)
            .await
            .map_err(|e| probe_err(format!("deleting it: {e}")));
        if read? != bytes {
            return Err(probe_err("read back other bytes than were written".into()));
        }
        deleted
    }

    pub fn description(&self) -> &str {
        &self.description
    }
}

/// Whether an input path is an http(s) URL: given to the provider as it is,
/// never signed or prefixed. The same test as `reactor.input_path_problem`.
pub fn is_http_url(path: &str) -> bool {
    let Some(rest) = path
        .strip_prefix("https://")
        .or_else(|| path.strip_prefix("http://"))
    else {
        return false;
    };
    let host_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    host_len > 0 && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Why `path` may not be an input of a job owned by `owner` (None: it may).
/// A storage key must be one of the owner's own uploads, `private/{owner}/…`,
/// with nothing that could walk out of that prefix once it is part of a URL
/// (`..`, `%2e%2e`, `%2f`, `//`, backslashes, `?`, `#`). The database refuses
/// such rows at insert (`reactor.input_path_problem`, the same rule); this is
/// the reactor's own check for rows written before the rule or around it.
pub fn input_path_problem(path: &str, owner: uuid::Uuid) -> Option<String> {
    if is_http_url(path) {
        return None;
    }
    let prefix = format!("private/{owner}/");
    let Some(key) = path.strip_prefix(&prefix) else {
        return Some(format!(
            "must be an http(s) URL or a key under {prefix} (the owner's own uploads)"
        ));
    };
    if path
        .chars()
        .any(|c| matches!(c, '%' | '\\' | '?' | '#') || c.is_control())
    {
        return Some("may not contain %, \\, ?, # or control characters".into());
    }
    if key.is_empty() {
        return Some(format!("must name a file under {prefix}"));
    }
    if key.split('/').any(|s| matches!(s, "" | "." | "..")) {
        return Some(format!(
            "must be a key under {prefix} without empty, \".\" or \"..\" segments"
        ));
    }
    None
}

/// Signs short-lived GET URLs for input images kept in an S3-compatible store
/// (Supabase Storage's private bucket, say), so the provider can fetch them.
/// Input paths are `bucket/key`, as the room-redesign app writes them
/// (`private/{user}/inputs/{uuid}.jpg`). Signing is local: no request is made.
/// Only the job owner's own keys are signed (see [`input_path_problem`]): the
/// signature is the service's, and would open any object of any bucket.
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

    /// A presigned GET URL for `path`, an input of a job owned by `owner`.
    pub async fn sign(
        &self,
        path: &str,
        owner: uuid::Uuid,
        valid_for: std::time::Duration,
    ) -> Result<String, StorageError> {
        use object_store::signer::Signer as _;
        if let Some(reason) = input_path_problem(path, owner).or_else(|| {
            is_http_url(path).then(|| "is a URL already (URLs are never signed)".to_string())
        }) {
            return Err(StorageError::Refused {
                path: path.to_string(),
                reason,
            });
        }
        let error = |reason: String| StorageError::Sign {
            path: path.to_string(),
            reason,
        };
        let (bucket, key) = path
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

    #[tokio::test]
    async fn a_storage_folder_away_at_start_up_is_an_outage_and_writes_work_once_it_is_back() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("storage");
        std::fs::write(&dir, b"not a folder").unwrap();
        let storage = Storage::from_url(dir.to_str().unwrap()).unwrap();
        let put = || {
            storage.put_public(
                "renders/x/0.jpg",
                bytes::Bytes::from_static(b"\xFF\xD8\xFF"),
                "image/jpeg",
                RENDER_CACHE_CONTROL,
            )
        };
        assert!(put().await.is_err(), "nothing can be written yet");
        std::fs::remove_file(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        put().await.unwrap();
        assert!(dir.join("public/renders/x/0.jpg").is_file());
    }

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

    const OWNER: uuid::Uuid = uuid::uuid!("6f1c2a3b-0000-4000-8000-00000000000a");
    const OTHER: uuid::Uuid = uuid::uuid!("6f1c2a3b-0000-4000-8000-00000000000b");

    #[tokio::test]
    async fn an_input_path_becomes_a_presigned_url_of_its_bucket_and_key() {
        let url = signer()
            .sign(
                &format!("private/{OWNER}/inputs/room.jpg"),
                OWNER,
                std::time::Duration::from_secs(3600),
            )
            .await
            .unwrap();
        assert!(
            url.starts_with(&format!(
                "http://127.0.0.1:9000/private/{OWNER}/inputs/room.jpg?"
            )),
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
    async fn only_the_owners_own_keys_are_signed() {
        for path in [
            format!("private/{OTHER}/inputs/room.jpg"),
            "billing-exports/2026/all.csv".into(),
            "room.jpg".into(),
            format!("/private/{OWNER}/inputs/room.jpg"),
            format!("private/{OWNER}/../{OTHER}/inputs/room.jpg"),
            format!("private/{OWNER}/%2e%2e/{OTHER}/inputs/room.jpg"),
            format!("private/{OWNER}/..%2F{OTHER}/room.jpg"),
            format!("private/{OWNER}//room.jpg"),
            format!("private/{OWNER}/inputs\\..\\x.jpg"),
            format!("private/{OWNER}/x.jpg?x-id=GetObject"),
            format!("private/{OWNER}/"),
            "https://cdn.example.com/room.jpg".into(),
            String::new(),
        ] {
            let err = signer()
                .sign(&path, OWNER, std::time::Duration::from_secs(60))
                .await
                .expect_err(&path);
            assert!(
                matches!(err, StorageError::Refused { .. }),
                "{path:?}: {err}"
            );
        }
    }

    #[test]
    fn http_urls_need_a_host_and_no_whitespace() {
        for url in [
            "https://a.example/x.jpg?sig=1",
            "http://127.0.0.1:9/x",
            "https://h",
        ] {
            assert!(is_http_url(url), "{url}");
            assert_eq!(input_path_problem(url, OWNER), None, "{url}");
        }
        for not_url in [
            "https://",
            "https:///x",
            "https:// h/x",
            "HTTPS://h/x",
            "ftp://h/x",
        ] {
            assert!(!is_http_url(not_url), "{not_url}");
            assert!(input_path_problem(not_url, OWNER).is_some(), "{not_url}");
        }
    }

    #[test]
    fn own_keys_may_have_any_depth_and_spaces() {
        for key in [
            "inputs/room.jpg",
            "inputs/sub dir/sofa.v2.png",
            "a..b/c.jpg",
        ] {
            assert_eq!(
                input_path_problem(&format!("private/{OWNER}/{key}"), OWNER),
                None,
                "{key}"
            );
        }
    }
}
