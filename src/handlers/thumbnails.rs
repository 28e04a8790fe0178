//! Thumbnails of render variants: `renders/{render_id}/{idx}_thumb.webp`
//! beside each original (the app's storage contract), so a grid of renders
//! needs no original. Decoded with the `image` crate, scaled so the longest
//! side is at most the configured size (never scaled up), and encoded as
//! lossy WebP by libwebp (compiled from the C source bundled in
//! `libwebp-sys`) at the configured quality: a lossless thumbnail of a
//! grainy photo keeps the grain and weighs most of its original.
use image::imageops::FilterType;
use image::ImageFormat;
use std::ffi::c_int;

/// Content-Type of every thumbnail.
pub const CONTENT_TYPE: &str = "image/webp";

/// How thumbnails are made.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Longest side, in pixels.
    pub longest_side: u32,
    /// WebP quality, 1 (smallest) to 100 (best).
    pub quality: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("the {format} image cannot be decoded: {source}")]
    Decode {
        format: &'static str,
        #[source]
        source: image::ImageError,
    },
    #[error("encoding its WebP thumbnail ({width}x{height}) failed")]
    Encode { width: u32, height: u32 },
}

/// The thumbnail path of the variant stored at `renders/{render_id}/{idx}.{ext}`.
pub fn path(render_id: uuid::Uuid, idx: usize) -> String {
    format!("renders/{render_id}/{idx}_thumb.webp")
}

/// A WebP thumbnail of `bytes`, an image with extension `ext` (jpg, png,
/// webp or gif: the first frame), whose longest side is at most
/// `settings.longest_side`. CPU-bound: run it off the async threads.
pub fn make(
    bytes: &[u8],
    ext: &'static str,
    settings: Settings,
) -> Result<Vec<u8>, ThumbnailError> {
    let format = match ext {
        "png" => ImageFormat::Png,
        "webp" => ImageFormat::WebP,
        "gif" => ImageFormat::Gif,
        _ => ImageFormat::Jpeg,
    };
    let image = image::load_from_memory_with_format(bytes, format).map_err(|source| {
        ThumbnailError::Decode {
            format: ext,
            source,
        }
    })?;
    let longest_side = settings.longest_side;
    let image = if image.width().max(image.height()) > longest_side {
        image.resize(longest_side, longest_side, FilterType::Triangle)
    } else {
        image
    };
    if image.color().has_alpha() {
        encode_lossy(&image.to_rgba8(), settings.quality)
    } else {
        encode_lossy(&image.to_rgb8(), settings.quality)
    }
}

/// Pixel layouts libwebp's simple lossy encoder takes.
trait Pixels {
    /// Bytes per pixel.
    const CHANNELS: u32;
    /// `WebPEncodeRGB` or `WebPEncodeRGBA`.
    ///
    /// # Safety
    /// As libwebp's: `pixels` holds `height` rows of `stride` bytes.
    unsafe fn encode(
        pixels: *const u8,
        width: c_int,
        height: c_int,
        stride: c_int,
        quality: f32,
        output: *mut *mut u8,
    ) -> usize;
}

impl Pixels for image::Rgb<u8> {
    const CHANNELS: u32 = 3;
    unsafe fn encode(p: *const u8, w: c_int, h: c_int, s: c_int, q: f32, o: *mut *mut u8) -> usize {
        // SAFETY: forwarded from the caller.
        unsafe { libwebp_sys::WebPEncodeRGB(p, w, h, s, q, o) }
    }
}

impl Pixels for image::Rgba<u8> {
    const CHANNELS: u32 = 4;
    unsafe fn encode(p: *const u8, w: c_int, h: c_int, s: c_int, q: f32, o: *mut *mut u8) -> usize {
        // SAFETY: forwarded from the caller.
        unsafe { libwebp_sys::WebPEncodeRGBA(p, w, h, s, q, o) }
    }
}

/// `image` as lossy WebP at `quality` (1–100).
fn encode_lossy<P>(
    image: &image::ImageBuffer<P, Vec<u8>>,
    quality: u8,
) -> Result<Vec<u8>, ThumbnailError>
where
    P: image::Pixel<Subpixel = u8> + Pixels,
{
    let (width, height) = image.dimensions();
    let failed = ThumbnailError::Encode { width, height };
    let (Ok(w), Ok(h), Some(Ok(stride))) = (
        c_int::try_from(width),
        c_int::try_from(height),
        width.checked_mul(P::CHANNELS).map(c_int::try_from),
    ) else {
        return Err(failed);
    };
    let mut output: *mut u8 = std::ptr::null_mut();
    // SAFETY: an ImageBuffer holds exactly width * height pixels of
    // P::CHANNELS bytes, rows packed, so `height` rows of `stride` bytes.
    // libwebp allocates `output` (null and 0 on failure); it is copied and
    // then freed with WebPFree, as libwebp's API requires.
    unsafe {
        let len = P::encode(
            image.as_raw().as_ptr(),
            w,
            h,
            stride,
            f32::from(quality),
            &mut output,
        );
        if output.is_null() {
            return Err(failed);
        }
        let webp = std::slice::from_raw_parts(output, len).to_vec();
        libwebp_sys::WebPFree(output.cast());
        if len == 0 {
            return Err(failed);
        }
        Ok(webp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut out)
            .encode_image(&image)
            .unwrap();
        out
    }

    fn settings(longest_side: u32) -> Settings {
        Settings {
            longest_side,
            quality: 80,
        }
    }

    /// The fourcc of the first chunk after the RIFF/WEBP header: `VP8 `
    /// (lossy), `VP8L` (lossless) or `VP8X` (extended: alpha, ...).
    fn first_chunk(webp: &[u8]) -> &[u8] {
        assert_eq!((&webp[..4], &webp[8..12]), (&b"RIFF"[..], &b"WEBP"[..]));
        &webp[12..16]
    }

    /// A synthetic photo: a gradient with per-pixel grain, JPEG quality 90.
    fn grainy_photo(side: u32) -> Vec<u8> {
        let mut state: u32 = 2_654_435_761;
        let image = image::RgbImage::from_fn(side, side, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state % 17) as i32 - 8;
            let px = |base: u32| (base as i32 + noise).clamp(0, 255) as u8;
            image::Rgb([px(x * 255 / side), px(y * 255 / side), px((x + y) % 256)])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&image)
            .unwrap();
        out
    }

    #[test]
    fn a_photo_thumbnail_is_lossy_webp_and_a_small_part_of_the_original() {
        let photo = grainy_photo(512);
        let thumb = make(&photo, "jpg", settings(256)).unwrap();
        assert_eq!(first_chunk(&thumb), b"VP8 ", "lossy WebP (VP8), not VP8L");
        // A quarter of the pixels; lossless kept the grain at ~70% of the original.
        assert!(
            thumb.len() * 10 < photo.len(),
            "thumbnail {} bytes, original {} bytes",
            thumb.len(),
            photo.len()
        );
        let decoded = image::load_from_memory_with_format(&thumb, ImageFormat::WebP).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (256, 256));
    }

    #[test]
    fn a_lower_quality_makes_a_smaller_thumbnail() {
        let photo = grainy_photo(256);
        let at = |quality| {
            make(
                &photo,
                "jpg",
                Settings {
                    longest_side: 256,
                    quality,
                },
            )
            .unwrap()
            .len()
        };
        assert!(at(30) < at(90), "{} vs {}", at(30), at(90));
    }

    #[test]
    fn transparency_is_kept() {
        let image = image::RgbaImage::from_fn(40, 20, |x, _| {
            image::Rgba([200, 10, 10, if x < 20 { 0 } else { 255 }])
        });
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let thumb = make(&png, "png", settings(60)).unwrap();
        assert_eq!(
            first_chunk(&thumb),
            b"VP8X",
            "extended WebP, with an alpha chunk"
        );
        let decoded = image::load_from_memory_with_format(&thumb, ImageFormat::WebP)
            .unwrap()
            .to_rgba8();
        assert_eq!(decoded.dimensions(), (40, 20));
        assert!(
            decoded.get_pixel(5, 10)[3] < 10,
            "transparent stays transparent"
        );
        assert!(decoded.get_pixel(35, 10)[3] > 245, "opaque stays opaque");
    }

    #[test]
    fn the_longest_side_becomes_the_size_and_the_aspect_stays() {
        let thumb = make(&jpeg(300, 200), "jpg", settings(60)).unwrap();
        let decoded = image::load_from_memory_with_format(&thumb, ImageFormat::WebP).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (60, 40));
    }

    #[test]
    fn small_pictures_are_not_scaled_up() {
        let thumb = make(&jpeg(30, 20), "jpg", settings(60)).unwrap();
        let decoded = image::load_from_memory(&thumb).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (30, 20));
    }

    #[test]
    fn a_picture_that_does_not_decode_is_an_error() {
        let err = make(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0], "jpg", settings(60)).unwrap_err();
        assert!(matches!(err, ThumbnailError::Decode { .. }), "{err}");
    }
}
