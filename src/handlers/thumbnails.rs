//! Thumbnails of render variants: `renders/{render_id}/{idx}_thumb.webp`
//! beside each original (the app's storage contract), so a grid of renders
//! needs no original. WebP, lossless (the `image` crate's pure-Rust encoder
//! writes lossless WebP only), scaled so the longest side is at most the
//! configured size; never scaled up.
use image::codecs::webp::WebPEncoder;
use image::imageops::FilterType;
use image::{ExtendedColorType, ImageFormat};

/// Content-Type of every thumbnail.
pub const CONTENT_TYPE: &str = "image/webp";

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("the {format} image cannot be decoded: {source}")]
    Decode {
        format: &'static str,
        #[source]
        source: image::ImageError,
    },
    #[error("encoding its WebP thumbnail: {0}")]
    Encode(#[source] image::ImageError),
}

/// The thumbnail path of the variant stored at `renders/{render_id}/{idx}.{ext}`.
pub fn path(render_id: uuid::Uuid, idx: usize) -> String {
    format!("renders/{render_id}/{idx}_thumb.webp")
}

/// A WebP thumbnail of `bytes`, an image with extension `ext` (jpg, png,
/// webp or gif: the first frame), whose longest side is at most `longest_side`.
/// CPU-bound: run it off the async threads.
pub fn make(bytes: &[u8], ext: &'static str, longest_side: u32) -> Result<Vec<u8>, ThumbnailError> {
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
    let image = if image.width().max(image.height()) > longest_side {
        image.resize(longest_side, longest_side, FilterType::Triangle)
    } else {
        image
    };
    let (width, height) = (image.width(), image.height());
    let mut out = Vec::new();
    let encoder = WebPEncoder::new_lossless(&mut out);
    if image.color().has_alpha() {
        encoder.encode(&image.to_rgba8(), width, height, ExtendedColorType::Rgba8)
    } else {
        encoder.encode(&image.to_rgb8(), width, height, ExtendedColorType::Rgb8)
    }
    .map_err(ThumbnailError::Encode)?;
    Ok(out)
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

    #[test]
    fn the_longest_side_becomes_the_size_and_the_aspect_stays() {
        let thumb = make(&jpeg(300, 200), "jpg", 60).unwrap();
        let decoded = image::load_from_memory_with_format(&thumb, ImageFormat::WebP).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (60, 40));
    }

    #[test]
    fn small_pictures_are_not_scaled_up() {
        let thumb = make(&jpeg(30, 20), "jpg", 60).unwrap();
        let decoded = image::load_from_memory(&thumb).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (30, 20));
    }

    #[test]
    fn a_picture_that_does_not_decode_is_an_error() {
        let err = make(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0], "jpg", 60).unwrap_err();
        assert!(matches!(err, ThumbnailError::Decode { .. }), "{err}");
    }
}
