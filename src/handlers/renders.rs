//! A succeeded generation job gets its render: every output image is
//! downloaded and given a WebP thumbnail, both are stored at
//! `public/renders/{render_id}/{idx}.{ext}` and `…/{idx}_thumb.webp`, and then
//! one `renders` row and one `render_variants` row per image are written
//! together.
//!
//! The render id, and so every object path, is HMAC-SHA256 of the job id keyed
//! with a secret only the reactor reads (`reactor.render_path_key`, made at
//! migrate time): whoever knows a job id cannot compute where its pictures
//! are, yet every attempt of every reactor derives the same id.
//!
//! Idempotent by construction: the render id is derived from the job id, so a
//! retry overwrites the same objects; the rows are written in one fenced
//! transaction only after every image is stored (never half a render), and
//! `uniq_renders_job` allows one render per job. That transaction also sets
//! `generation_jobs.rendered_at`, which is what "done" means: an owner may
//! delete the render later, and it must not come back.
use crate::handlers::thumbnails;
use crate::http::client;
use crate::http::public_fetch::{AllowedHosts, FetchError, PublicFetch};
use crate::job::error::Budget;
use crate::job::handler::{Action, Handler, HandlerError, KeyType, LeasedWork, Outcome, Spec};
use crate::job::lease::Lease;
use crate::job::status::JobStatus;
use crate::providers::storage::{Storage, RENDER_CACHE_CONTROL};
use crate::store::db::param;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac as _};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub const NAME: &str = "renders";

/// The render id of a job: the first 16 bytes of HMAC-SHA256(`key`, job id),
/// as a (random-looking, version 4) UUID. `key` is `reactor.render_path_key`.
pub fn render_id(key: &[u8], job_id: Uuid) -> Result<Uuid, HandlerError> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key)
        .map_err(|e| HandlerError::permanent(format!("reactor.render_path_key: {e}")))?;
    mac.update(job_id.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Ok(uuid::Builder::from_random_bytes(bytes).into_uuid())
}

/// The rows the renders handler works on.
pub fn spec() -> Spec {
    Spec {
        name: NAME.into(),
        table: "public.generation_jobs".into(),
        notify_table: "generation_jobs".into(),
        key: "id".into(),
        key_type: KeyType::Uuid,
        pending: "t.status = 'succeeded' and t.output is not null and t.rendered_at is null".into(),
        statuses: Some(vec![JobStatus::Succeeded.to_string()]),
    }
}

/// `retry_for`: how long after a job's completion outages are retried (its
/// outputs are deleted by the provider then).
pub fn handler(
    storage: Storage,
    max_bytes: usize,
    timeout: Duration,
    thumbnails: thumbnails::Settings,
    allowed: AllowedHosts,
    retry_for: Duration,
) -> anyhow::Result<Handler> {
    Ok(Handler {
        spec: spec(),
        action: Action::Leased(Arc::new(Renders {
            storage,
            http: PublicFetch::new(timeout, allowed)?,
            max_bytes,
            thumbnails,
            retry_for,
        })),
        limits: Default::default(),
    })
}

struct Renders {
    storage: Storage,
    /// Output URLs come from the provider: public addresses only.
    http: PublicFetch,
    max_bytes: usize,
    /// How thumbnails are made (size, quality).
    thumbnails: thumbnails::Settings,
    retry_for: Duration,
}

/// How long outages of a job's render are retried: until `retry_for` after
/// the job completed, when the provider's outputs are gone anyway.
fn render_budget(completed_at: Option<DateTime<Utc>>, retry_for: Duration) -> Budget {
    match (completed_at, chrono::Duration::from_std(retry_for)) {
        (Some(at), Ok(d)) => Budget::Until(at + d),
        _ => Budget::For(retry_for),
    }
}

struct Image {
    bytes: bytes::Bytes,
    ext: &'static str,
}

/// A downloaded variant with its thumbnail, ready to store.
struct Variant {
    image: Image,
    thumbnail: bytes::Bytes,
}

/// The output URLs of a job: Replicate gives a URL or a list of URLs.
pub fn output_urls(output: &serde_json::Value) -> Result<Vec<String>, HandlerError> {
    let urls: Vec<String> = match output {
        serde_json::Value::String(url) => vec![url.clone()],
        serde_json::Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| HandlerError::permanent("job output is not a list of URLs"))?,
        _ => {
            return Err(HandlerError::permanent(
                "job output is not a URL or a list of URLs",
            ))
        }
    };
    if urls.is_empty() {
        return Err(HandlerError::permanent(
            "job succeeded with no output images",
        ));
    }
    for url in &urls {
        match url::Url::parse(url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => {
                return Err(HandlerError::permanent(format!(
                    "job output {url:?} is not an http(s) URL"
                )))
            }
        }
    }
    Ok(urls)
}

/// The file extension for an image content type.
fn image_ext(content_type: &str) -> Option<&'static str> {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "image/jpeg" | "image/jpg" => Some("jpg"),
        "image/png" => Some("png"),
        "image/webp" => Some("webp"),
        "image/gif" => Some("gif"),
        _ => None,
    }
}

/// The content type stored with an image of extension `ext` (the one its
/// magic bytes were checked against).
fn content_type_of(ext: &str) -> &'static str {
    match ext {
        "jpg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => "application/octet-stream",
    }
}

/// Whether `bytes` start the way an image with extension `ext` does.
fn has_magic(ext: &str, b: &[u8]) -> bool {
    match ext {
        "jpg" => b.starts_with(&[0xFF, 0xD8, 0xFF]),
        "png" => b.starts_with(b"\x89PNG\r\n\x1a\n"),
        "webp" => b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP",
        "gif" => b.starts_with(b"GIF8"),
        _ => false,
    }
}

impl Renders {
    /// Each image with its WebP thumbnail (decoding and encoding run on a
    /// blocking thread). An image that does not decode fails the attempt.
    async fn with_thumbnails(&self, images: Vec<Image>) -> Result<Vec<Variant>, HandlerError> {
        let settings = self.thumbnails;
        tokio::task::spawn_blocking(move || {
            images
                .into_iter()
                .enumerate()
                .map(|(idx, image)| {
                    let thumbnail = thumbnails::make(&image.bytes, image.ext, settings)
                        .map_err(|e| HandlerError::permanent(format!("output image {idx}: {e}")))?;
                    Ok(Variant {
                        image,
                        thumbnail: thumbnail.into(),
                    })
                })
                .collect()
        })
        .await
        .map_err(|e| HandlerError::retryable(format!("making thumbnails: {e}")))?
    }

    /// Stores variant `idx` of `render_id` and its thumbnail; returns their paths.
    async fn store(
        &self,
        render_id: Uuid,
        idx: usize,
        variant: Variant,
    ) -> Result<(String, String), HandlerError> {
        let path = format!("renders/{render_id}/{idx}.{}", variant.image.ext);
        let thumb_path = thumbnails::path(render_id, idx);
        for (path, bytes, content_type) in [
            (
                &path,
                variant.image.bytes,
                content_type_of(variant.image.ext),
            ),
            (&thumb_path, variant.thumbnail, thumbnails::CONTENT_TYPE),
        ] {
            self.storage
                .put_public(path, bytes, content_type, RENDER_CACHE_CONTROL)
                .await
                .map_err(HandlerError::transient)?;
        }
        Ok((path, thumb_path))
    }

    /// Fetches one output image. The provider or the way to it being away
    /// (no connection, a timeout, HTTP 5xx/429/408) is transient; an answer
    /// that is not a usable image, a refused address, or any other status
    /// never gets better.
    async fn download(&self, url: &str) -> Result<Image, HandlerError> {
        let outage = |what: String| HandlerError::transient(format!("output image {url}: {what}"));
        let refused = |what: String| HandlerError::permanent(format!("output image {url}: {what}"));
        let response = self.http.get(url).await.map_err(|e| match e {
            FetchError::Refused(why) => HandlerError::permanent(format!(
                "output image {}: {why} (see REACTOR_ALLOW_PRIVATE_DOWNLOADS)",
                client::display_url(url)
            )),
            FetchError::Request(e) => outage(if e.is_timeout() {
                "timed out".into()
            } else {
                format!("request failed: {e}")
            }),
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Err(HandlerError::permanent(format!(
                "output image {url} is gone (HTTP {status}); providers delete outputs (Replicate: about an hour after the prediction)"
            )));
        }
        if client::is_outage_status(status) {
            return Err(HandlerError::transient_after(
                format!("output image {url}: HTTP {status}"),
                client::retry_after(response.headers()),
            ));
        }
        if !status.is_success() {
            return Err(refused(format!("HTTP {status}")));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let ext = image_ext(&content_type).ok_or_else(|| {
            refused(format!(
                "not an image (content-type {:?}; expected image/jpeg, image/png, image/webp or image/gif)",
                content_type
            ))
        })?;
        let too_big = || {
            refused(format!(
                "larger than REACTOR_MAX_IMAGE_BYTES ({} bytes)",
                self.max_bytes
            ))
        };
        // Read chunk by chunk: never more than the cap is held.
        let body = client::read_capped(response, self.max_bytes)
            .await
            .map_err(|e| {
                outage(if e.is_timeout() {
                    "timed out".into()
                } else {
                    format!("reading failed: {e}")
                })
            })?
            .ok_or_else(too_big)?;
        if !has_magic(ext, &body) {
            return Err(refused(format!(
                "declared {content_type} but its bytes are not that kind of image"
            )));
        }
        Ok(Image {
            bytes: body.into(),
            ext,
        })
    }
}

#[async_trait]
impl LeasedWork for Renders {
    async fn run(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
    ) -> Result<Outcome, HandlerError> {
        let job_id = lease.row_uuid()?;
        let job = lease
            .on_db(pool, async |client| {
                Ok(client
                    .query_typed_opt(
                        "select owner_id, mode, room_type, style, output, completed_at,
                                (select key from reactor.render_path_key) as path_key
                         from public.generation_jobs
                         where id = $1 and status = 'succeeded' and output is not null",
                        &[param(&job_id)],
                    )
                    .await?)
            })
            .await?;
        let mut render_id = Uuid::nil();
        let mut variants = Vec::new();
        if let Some(job) = &job {
            let key: Option<Vec<u8>> = job.get("path_key");
            let key = key.ok_or_else(|| {
                HandlerError::permanent("reactor.render_path_key is empty: run `reactor migrate`")
            })?;
            render_id = self::render_id(&key, job_id)?;
            // Everything is downloaded and decoded before anything is stored:
            // a picture that does not decode stores nothing.
            let mut images = Vec::new();
            let output: serde_json::Value = job.get("output");
            let budget = render_budget(job.get("completed_at"), self.retry_for);
            for url in output_urls(&output)? {
                images.push(self.download(&url).await.map_err(|e| e.within(budget))?);
            }
            for variant in self.with_thumbnails(images).await? {
                let stored = self.store(render_id, variants.len(), variant).await;
                variants.push(stored.map_err(|e| e.within(budget))?);
            }
        }

        let created = lease
            .on_db(pool, async |client| {
                let tx = lease.begin(client).await?;
                let mut created = false;
                if let Some(job) = job {
                    let owner: Uuid = job.get("owner_id");
                    let inserted = tx
                        .execute(
                            "insert into public.renders (id, job_id, owner_id, mode, room_type, style, cover_variant)
                             values ($1, $2, $3, $4, $5, $6, 0)
                             on conflict (job_id) do nothing",
                            &[
                                &render_id,
                                &job_id,
                                &owner,
                                &job.get::<_, String>("mode"),
                                &job.get::<_, Option<String>>("room_type"),
                                &job.get::<_, Option<String>>("style"),
                            ],
                        )
                        .await?;
                    if inserted == 1 {
                        for (idx, (path, thumb_path)) in variants.iter().enumerate() {
                            tx.execute(
                                "insert into public.render_variants (render_id, owner_id, idx, image_path, thumb_path)
                                 values ($1, $2, $3, $4, $5)",
                                &[&render_id, &owner, &(idx as i32), path, thumb_path],
                            )
                            .await?;
                        }
                    }
                    tx.execute(
                        "update public.generation_jobs set rendered_at = now() where id = $1 and rendered_at is null",
                        &[&job_id],
                    )
                    .await?;
                    // Delivered: debited in the same transaction (see usage.rs).
                    tx.execute(crate::handlers::usage::DEBIT_DELIVERED, &[&job_id])
                        .await?;
                    created = inserted == 1;
                }
                tx.finish().await?;
                Ok(created)
            })
            .await?;
        // Only once committed: a rolled-back render was never created.
        if created {
            tracing::info!(render_id = %render_id, variants = variants.len(), "render created");
        }
        Ok(Outcome::Released)
    }

    /// The render died for good: the job cannot be delivered, so it fails
    /// and is not debited (see usage.rs).
    async fn gave_up(
        &self,
        pool: &deadpool_postgres::Pool,
        row_id: &str,
        error: &str,
    ) -> Result<(), HandlerError> {
        match Uuid::parse_str(row_id) {
            Ok(job_id) => crate::handlers::usage::undeliverable(pool, job_id, error).await,
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_may_be_a_url_or_a_list_of_urls() {
        assert_eq!(
            output_urls(&serde_json::json!("https://x/a.jpg")).unwrap(),
            vec!["https://x/a.jpg"]
        );
        assert_eq!(
            output_urls(&serde_json::json!(["http://x/a", "https://x/b"]))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn unusable_output_is_a_permanent_error() {
        for bad in [
            serde_json::json!([]),
            serde_json::json!({"a": 1}),
            serde_json::json!([1]),
            serde_json::json!(["file:///etc/passwd"]),
        ] {
            assert!(output_urls(&bad).is_err_and(|e| e.is_permanent()), "{bad}");
        }
    }

    #[test]
    fn extension_follows_the_content_type() {
        assert_eq!(image_ext("image/jpeg"), Some("jpg"));
        assert_eq!(image_ext("image/png; charset=binary"), Some("png"));
        assert_eq!(image_ext("image/webp"), Some("webp"));
        assert_eq!(image_ext("text/html"), None);
        assert_eq!(content_type_of("webp"), "image/webp");
        assert!(has_magic("jpg", &[0xFF, 0xD8, 0xFF, 0xE0]));
        assert!(!has_magic("jpg", b"<html>"));
    }

    #[test]
    fn render_id_is_stable_per_job_and_depends_on_the_key() {
        let job = Uuid::new_v4();
        let id = render_id(b"key one", job).unwrap();
        assert_eq!(id, render_id(b"key one", job).unwrap());
        assert_ne!(id, render_id(b"key one", Uuid::new_v4()).unwrap());
        assert_ne!(id, render_id(b"key two", job).unwrap());
    }
}
