//! What thumbnails add to a render: storing each output picture as the
//! renders handler does, with and without its WebP thumbnail (decode, scale,
//! encode, store), on the filesystem backend. The download is the same in
//! both and left out. The pictures are synthetic photos (a gradient with
//! per-pixel noise, JPEG quality 90), the size of a typical provider output.
use crate::cluster::Ctx;
use crate::measure::median;
use crate::report::{fmt_ratio, Results};
use anyhow::Result;
use reactor::handlers::thumbnails;
use reactor::providers::storage::{Storage, RENDER_CACHE_CONTROL};
use std::time::Instant;

/// Side of the pictures (providers return about a megapixel).
const SIDE: u32 = 1024;
/// The thumbnail size: REACTOR_THUMBNAIL_SIZE's default.
const THUMBNAIL: u32 = 512;
/// The thumbnail quality: REACTOR_THUMBNAIL_QUALITY's default.
const QUALITY: u8 = 80;

fn picture(seed: u32) -> Result<Vec<u8>> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let image = image::RgbImage::from_fn(SIDE, SIDE, |x, y| {
        // xorshift: cheap, deterministic noise, like sensor grain.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = (state % 17) as i32 - 8;
        let px = |base: u32| (base as i32 + noise).clamp(0, 255) as u8;
        image::Rgb([
            px(x * 255 / SIDE),
            px(y * 255 / SIDE),
            px((x + y + seed * 40) % 256),
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&image)?;
    Ok(out)
}

pub(crate) async fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let n = if ctx.p.ci { 3 } else { 20 };
    let dir = ctx.p.work_dir.join("thumbnails-storage");
    let _ = std::fs::remove_dir_all(&dir);
    let storage = Storage::from_url(&dir.display().to_string())?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let (mut original_bytes, mut thumbnail_bytes) = (0usize, 0usize);
    for i in 0..n {
        let jpeg = bytes::Bytes::from(picture(i)?);
        original_bytes += jpeg.len();
        let started = Instant::now();
        storage
            .put_public(
                &format!("renders/plain/{i}.jpg"),
                jpeg.clone(),
                "image/jpeg",
                RENDER_CACHE_CONTROL,
            )
            .await?;
        without.push(started.elapsed().as_secs_f64());

        let started = Instant::now();
        storage
            .put_public(
                &format!("renders/thumbed/{i}.jpg"),
                jpeg.clone(),
                "image/jpeg",
                RENDER_CACHE_CONTROL,
            )
            .await?;
        let thumbnail = tokio::task::spawn_blocking(move || {
            thumbnails::make(
                &jpeg,
                "jpg",
                thumbnails::Settings {
                    longest_side: THUMBNAIL,
                    quality: QUALITY,
                },
            )
        })
        .await??;
        thumbnail_bytes += thumbnail.len();
        storage
            .put_public(
                &format!("renders/thumbed/{i}_thumb.webp"),
                thumbnail.into(),
                thumbnails::CONTENT_TYPE,
                RENDER_CACHE_CONTROL,
            )
            .await?;
        with.push(started.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&dir);
    res.set("thumbnails.pictures", n as f64);
    res.set("thumbnails.store_without_s", median(without));
    res.set("thumbnails.store_with_s", median(with));
    res.set(
        "thumbnails.original_bytes",
        original_bytes as f64 / n as f64,
    );
    res.set(
        "thumbnails.thumbnail_bytes",
        thumbnail_bytes as f64 / n as f64,
    );
    Ok(())
}

pub(crate) fn render(res: &Results, _p: &crate::cli::Params) -> String {
    let get = |k: &str| res.get(&format!("thumbnails.{k}"));
    let (Some(n), Some(without), Some(with), Some(original), Some(thumb)) = (
        get("pictures"),
        get("store_without_s"),
        get("store_with_s"),
        get("original_bytes"),
        get("thumbnail_bytes"),
    ) else {
        return String::new();
    };
    format!(
        "### Thumbnails: what they add to a render\n\n\
         Each of {n:.0} synthetic {SIDE}×{SIDE} photos (gradient and grain, JPEG quality 90) \
         stored as the renders handler stores a variant, without and with its lossy WebP \
         thumbnail ({THUMBNAIL} px, quality {QUALITY}: the defaults of `REACTOR_THUMBNAIL_SIZE` and \
         `REACTOR_THUMBNAIL_QUALITY`), on the filesystem \
         backend; the download, the same in both, is left out. Median per picture.\n\n\
         | per variant | without thumbnail | with thumbnail | ratio |\n\
         |---|---|---|---|\n\
         | time to store | {:.1} ms | {:.1} ms | {} |\n\
         | bytes stored | {:.0} KiB | {:.0} KiB (+{:.0} KiB thumbnail) | {} |\n\n\
         Time includes decoding the original, scaling it (`Triangle` filter) and encoding \
         (libwebp, lossy).\n\n",
        without * 1000.0,
        with * 1000.0,
        fmt_ratio(Some(with), Some(without)),
        original / 1024.0,
        (original + thumb) / 1024.0,
        thumb / 1024.0,
        fmt_ratio(Some(original + thumb), Some(original)),
    )
}
