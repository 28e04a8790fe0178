//! Draws the local provider's images: a placeholder card, made on this machine with no
//! network, account or font files, that says which job it belongs to.
//!
//! The card has three bands, each showing one part of the request twice, as a colour you
//! can tell apart in a thumbnail and as text you can read:
//! - the header takes its colour from the mode and names it, with the variant number;
//! - the wall takes its colour from the style and its stripes (direction, width, offset)
//!   from the variant, under a panel that spells out the style and the prompt;
//! - the floor takes its colour from the room type and names it.
//!
//! Hues come from SHA-256 of the value (stable across Rust releases and machines, unlike
//! std's hasher), except for the four modes, which get fixed hues far apart; one request
//! always gives the same bytes. Two styles or room types can share a hue (one chance in
//! twelve): the colour is a hint, the text is the record.
//!
//! Why this size: the image only has to tell a demo or a test which job produced it and
//! look different per variant, like a real provider's outputs. Flat bands, stripes and a
//! bitmap caption do that in a couple of hundred lines; the room painter this replaced
//! (2,144 lines, with its own polygon fill, font, hash and random generator) was a fifth
//! of `src/` for the same job.
//!
//! Why these crates: `image` was already a dependency for its baseline JPEG encoder (and
//! the tests decode with it). Text uses `font8x8`, a public-domain 8×8 bitmap font covering
//! ASCII and Latin-1 (accented letters); it is plain data with no dependencies, needs no
//! system fonts at run time, and scales by whole pixels. A vector-font stack (`ab_glyph` or
//! `imageproc` plus a bundled TTF) or `embedded-graphics` would add dependencies and font
//! data for captions that an 8×8 font, drawn 2 to 4 times larger, already makes legible.

use font8x8::{UnicodeFonts, BASIC_FONTS, LATIN_FONTS};
use image::codecs::jpeg::JpegEncoder;
use image::error::{LimitError, LimitErrorKind, ParameterError, ParameterErrorKind};
use image::{ImageError, Rgb, RgbImage};
use sha2::{Digest, Sha256};

/// What the image should show; mirrors the columns of a generation job.
pub struct Request<'a> {
    pub mode: &'a str,
    pub room_type: Option<&'a str>,
    pub style: Option<&'a str>,
    pub prompt: Option<&'a str>,
    pub variant: u32,
}

/// JPEG quality: high enough that the caption stays crisp, low enough to stay small.
const JPEG_QUALITY: u8 = 85;
/// JPEG cannot encode larger sides.
const MAX_SIDE: u32 = 65_535;
/// Guards against a huge allocation from a bad size; 8192×8192 is far above any render.
const MAX_PIXELS: u64 = 8192 * 8192;
/// Glyphs are 8×8 pixels before scaling.
const GLYPH: u32 = 8;
/// How many lines of the prompt the panel shows before it cuts with "...".
const PROMPT_LINES: usize = 3;
const INK: Rgb<u8> = Rgb([250, 250, 245]);
const PANEL: Rgb<u8> = Rgb([20, 20, 24]);

/// A JPEG (baseline, decodable by any viewer) of `width`×`height` that visibly reflects
/// the request. Errors only for sizes JPEG cannot hold (zero, or a side over 65535).
pub fn draw_jpeg(req: &Request, width: u32, height: u32) -> Result<Vec<u8>, ImageError> {
    check_dimensions(width, height)?;
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode_image(&draw(req, width, height))?;
    Ok(jpeg)
}

fn check_dimensions(width: u32, height: u32) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Parameter(ParameterError::from_kind(
            ParameterErrorKind::DimensionMismatch,
        )));
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageError::Limits(LimitError::from_kind(
            LimitErrorKind::DimensionError,
        )));
    }
    Ok(())
}

fn draw(req: &Request, width: u32, height: u32) -> RgbImage {
    let mode = words(req.mode, "redesign");
    let style = words(req.style.unwrap_or(""), "any");
    let room = words(&req.room_type.unwrap_or("").replace('_', " "), "room");
    // Everything scales with the height: 4 px per unit on the 512 px high renders.
    let bands = Bands {
        unit: (height / 128).max(1),
        header_end: height / 5,
        floor_start: height - height / 4,
    };
    // Dark header and floor under white text, a light wall.
    let header = tone("mode", &mode, 0.45, 0.32);
    let wall = tone("style", &style, 0.5, 0.8);
    let floor = tone("room", &room, 0.35, 0.36);
    let stripe = Rgb(wall.0.map(|c| c - c / 8));
    let mut image = RgbImage::from_fn(width, height, |x, y| {
        if y < bands.header_end {
            header
        } else if y >= bands.floor_start {
            floor
        } else if bands.on_stripe(req.variant, x, y) {
            stripe
        } else {
            wall
        }
    });

    let unit = bands.unit;
    let (big, small, pad, inset) = (unit, (unit / 2).max(1), 4 * unit, 2 * unit);
    let fits = |scale: u32, inset: u32| {
        (width.saturating_sub(2 * (pad + inset)) / (GLYPH * scale)) as usize
    };
    let headline = cut(&mode.to_uppercase(), fits(big, 0));
    text(&mut image, pad, pad, big, &headline);
    let subtitle = format!("variant {} \u{b7} local preview", req.variant);
    let subtitle = cut(&subtitle, fits(small, 0));
    text(
        &mut image,
        pad,
        pad + GLYPH * big + 2 * unit,
        small,
        &subtitle,
    );
    let room_line = cut(&room.to_uppercase(), fits(big, 0));
    text(&mut image, pad, bands.floor_start + pad, big, &room_line);

    let mut lines = vec![cut(&format!("style: {style}"), fits(small, inset))];
    lines.extend(match words(req.prompt.unwrap_or(""), "").as_str() {
        "" => vec!["(no prompt)".to_string()],
        prompt => wrap(&format!("\"{prompt}\""), fits(small, inset), PROMPT_LINES),
    });
    let line_height = GLYPH * small + 2 * unit;
    let longest = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    let (panel_x, panel_y) = (pad, bands.header_end + pad);
    let panel_width = longest * GLYPH * small + 2 * inset;
    let panel_height = lines.len() as u32 * line_height - 2 * unit + 2 * inset;
    darken(&mut image, panel_x, panel_y, panel_width, panel_height);
    for (i, line) in (0..).zip(&lines) {
        let y = panel_y + inset + i * line_height;
        text(&mut image, panel_x + inset, y, small, line);
    }
    image
}

/// Where the header ends and the floor starts, in rows, and the size unit in pixels.
struct Bands {
    unit: u32,
    header_end: u32,
    floor_start: u32,
}

impl Bands {
    /// Diagonal stripes on the wall, different per variant: the direction alternates,
    /// the width cycles through four sizes and the offset moves with every variant.
    fn on_stripe(&self, variant: u32, x: u32, y: u32) -> bool {
        let unit = u64::from(self.unit);
        let half_period = unit * u64::from(4 + 2 * (variant % 4));
        let offset = u64::from(variant) * 3 * unit;
        let (x, y) = (u64::from(x), u64::from(y));
        let along = if variant.is_multiple_of(2) {
            x + y
        } else {
            x + u64::from(self.floor_start) - y
        };
        ((along + offset) / half_period) % 2 == 1
    }
}

/// Whitespace (newlines, tabs, runs of spaces) flattened to single spaces; `fallback`
/// when nothing is left.
fn words(text: &str, fallback: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        fallback.to_string()
    } else {
        flat
    }
}

/// A stable colour for one field's value, at the band's saturation and lightness. The hue
/// is one of twelve, 30° apart (nearer hues are hard to tell apart), picked by SHA-256 of
/// the value's lower-cased letters and digits (so "Mid-Century Modern" and "mid century
/// modern" match); the schema's four modes get fixed hues far apart.
fn tone(field: &str, value: &str, saturation: f32, lightness: f32) -> Rgb<u8> {
    let key: String = value
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ");
    let hue = match (field, key.as_str()) {
        ("mode", "redesign") => 210.0,
        ("mode", "staging") => 30.0,
        ("mode", "compose") => 130.0,
        ("mode", "imagine") => 290.0,
        _ => {
            let digest = Sha256::new()
                .chain_update(field)
                .chain_update([0])
                .chain_update(key)
                .finalize();
            f32::from(digest[0] % 12) * 30.0
        }
    };
    // HSL to RGB, as CSS defines it.
    let half_chroma = saturation * lightness.min(1.0 - lightness);
    let channel = |n: f32| {
        let k = (n + hue / 30.0) % 12.0;
        let value = lightness - half_chroma * (k - 3.0).min(9.0 - k).clamp(-1.0, 1.0);
        (value * 255.0).round() as u8
    };
    Rgb([channel(0.0), channel(8.0), channel(4.0)])
}

/// At most `max_chars` characters, ending in "..." when something was cut.
fn cut(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let kept: String = text.chars().take(max_chars.saturating_sub(3)).collect();
    let dots = "...".chars().take(max_chars.min(3));
    kept.trim_end().chars().chain(dots).collect()
}

/// Greedy word wrap to lines of at most `width` characters (longer words are split), at
/// most `max_lines` of them, the last ending in "..." when the text goes on.
fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    if width == 0 || max_lines == 0 {
        return Vec::new();
    }
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let chars: Vec<char> = word.chars().collect();
        for piece in chars.chunks(width) {
            let used = lines[lines.len() - 1].chars().count();
            if used > 0 && used + 1 + piece.len() > width {
                lines.push(String::new());
            }
            let line = lines.last_mut().expect("starts with one line");
            if !line.is_empty() {
                line.push(' ');
            }
            line.extend(piece);
        }
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        let last = &mut lines[max_lines - 1];
        *last = cut(&format!("{last}..."), width);
    }
    lines
}

/// Draws `text` with its top-left corner at (`x`, `y`), each font pixel a `scale`×`scale`
/// square. Characters outside ASCII and Latin-1 show as "?"; anything off the image is clipped.
fn text(image: &mut RgbImage, x: u32, y: u32, scale: u32, text: &str) {
    for (i, character) in text.chars().enumerate() {
        let character = if character.is_control() {
            ' '
        } else {
            character
        };
        let glyph = BASIC_FONTS
            .get(character)
            .or_else(|| LATIN_FONTS.get(character))
            .or_else(|| BASIC_FONTS.get('?'))
            .unwrap_or_default();
        let left = x.saturating_add((i as u32).saturating_mul(GLYPH * scale));
        if left >= image.width() {
            break;
        }
        for (row, bits) in (0..).zip(glyph) {
            for column in (0..GLYPH).filter(|column| bits >> column & 1 == 1) {
                let (px, py) = (left + column * scale, y + row * scale);
                for (dx, dy) in (0..scale).flat_map(|dx| (0..scale).map(move |dy| (dx, dy))) {
                    if px + dx < image.width() && py + dy < image.height() {
                        image.put_pixel(px + dx, py + dy, INK);
                    }
                }
            }
        }
    }
}

/// Blends a dark, mostly opaque rectangle over the image (clipped), so text reads on any wall.
fn darken(image: &mut RgbImage, x: u32, y: u32, width: u32, height: u32) {
    let x_end = x.saturating_add(width).min(image.width());
    let y_end = y.saturating_add(height).min(image.height());
    for py in y.min(y_end)..y_end {
        for px in x.min(x_end)..x_end {
            let pixel = image.get_pixel_mut(px, py);
            for (channel, dark) in pixel.0.iter_mut().zip(PANEL.0) {
                *channel = ((u16::from(*channel) + 3 * u16::from(dark)) / 4) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn living_room() -> Request<'static> {
        Request {
            mode: "redesign",
            room_type: Some("living_room"),
            style: Some("modern"),
            prompt: Some("bright living room with oak floors"),
            variant: 0,
        }
    }

    fn picture(req: &Request) -> RgbImage {
        let jpeg = draw_jpeg(req, 384, 256).unwrap();
        image::load_from_memory(&jpeg).unwrap().to_rgb8()
    }

    /// A rectangle of the 384×256 test pictures: columns, then rows.
    type Area = (std::ops::Range<u32>, std::ops::Range<u32>);

    /// Mean absolute per-channel difference of two pictures over `area`.
    fn difference(a: &RgbImage, b: &RgbImage, (columns, rows): Area) -> f64 {
        let (mut total, mut count) = (0u64, 0u64);
        for y in rows {
            for x in columns.clone() {
                for (p, q) in a.get_pixel(x, y).0.iter().zip(b.get_pixel(x, y).0) {
                    total += u64::from(p.abs_diff(q));
                    count += 1;
                }
            }
        }
        total as f64 / count as f64
    }

    // Parts of each band with no text on them, a JPEG block away from any edge, so only
    // colours and stripes count; and the panel, where the prompt is.
    const HEADER: Area = (320..384, 0..44);
    const WALL: Area = (0..384, 128..184);
    const FLOOR: Area = (0..384, 224..256);
    const PROMPT_PANEL: Area = (0..384, 60..112);

    #[test]
    fn each_field_changes_its_own_band() {
        let base = picture(&living_room());
        let changed = |req: Request, area: Area, what: &str| {
            let diff = difference(&base, &picture(&req), area);
            assert!(diff > 4.0, "{what} barely changed the picture: {diff}");
        };
        for mode in ["staging", "compose", "imagine", "something new"] {
            changed(
                Request {
                    mode,
                    ..living_room()
                },
                HEADER,
                mode,
            );
        }
        for style in ["scandinavian", "industrial", "boho", "some invented style"] {
            let style = Some(style);
            changed(
                Request {
                    style,
                    ..living_room()
                },
                WALL,
                "style",
            );
        }
        for room in ["bedroom", "kitchen", "bathroom", "home_office"] {
            let room_type = Some(room);
            changed(
                Request {
                    room_type,
                    ..living_room()
                },
                FLOOR,
                room,
            );
        }
        for variant in 1..4 {
            changed(
                Request {
                    variant,
                    ..living_room()
                },
                WALL,
                "variant",
            );
        }
        let prompt = Some("dark moody library with green velvet chairs");
        changed(
            Request {
                prompt,
                ..living_room()
            },
            PROMPT_PANEL,
            "prompt",
        );
    }

    #[test]
    fn the_captions_are_drawn() {
        let bright = |image: &RgbImage, (columns, rows): Area| {
            rows.flat_map(|y| columns.clone().map(move |x| (x, y)))
                .filter(|&(x, y)| image.get_pixel(x, y).0.iter().all(|c| *c > 240))
                .count()
        };
        let base = picture(&living_room());
        // Every band's colour stays below 240: bright pixels are ink.
        let texts = [
            ("header", (0..320, 0..44)),
            ("panel", PROMPT_PANEL),
            ("floor", (0..384, 192..224)),
        ];
        for (band, area) in texts {
            assert!(bright(&base, area) > 100, "no text in the {band}");
        }
        for (band, area) in [("header", HEADER), ("wall", WALL), ("floor", FLOOR)] {
            assert_eq!(bright(&base, area), 0, "ink where the {band} has no text");
        }
    }

    #[test]
    fn output_is_a_baseline_jpeg_of_the_requested_size() {
        for (width, height) in [(768, 512), (512, 768), (33, 17), (1, 1), (65_535, 1)] {
            let jpeg = draw_jpeg(&living_room(), width, height).unwrap();
            // SOF0 marks baseline DCT; SOF2 would be progressive.
            assert!(jpeg.windows(2).any(|marker| marker == [0xFF, 0xC0]));
            assert!(!jpeg.windows(2).any(|marker| marker == [0xFF, 0xC2]));
            let decoded = image::load_from_memory(&jpeg).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (width, height));
        }
    }

    #[test]
    fn same_request_gives_same_bytes() {
        let first = draw_jpeg(&living_room(), 320, 200).unwrap();
        assert_eq!(first, draw_jpeg(&living_room(), 320, 200).unwrap());
        // Spellings of one style share a colour.
        assert_eq!(
            tone("style", "Mid-Century  Modern", 0.5, 0.5),
            tone("style", "mid century modern", 0.5, 0.5)
        );
        // Hues as CSS draws them.
        assert_eq!(tone("mode", "staging", 1.0, 0.5), Rgb([255, 128, 0]));
        assert_eq!(tone("mode", "redesign", 1.0, 0.5), Rgb([0, 128, 255]));
        assert_eq!(tone("mode", "imagine", 0.0, 1.0), Rgb([255, 255, 255]));
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let long_prompt = "a very long prompt ".repeat(500);
        let long_word = "x".repeat(5000);
        let prompts = [
            None,
            Some(""),
            Some("   \n\t "),
            Some(long_prompt.as_str()),
            Some(long_word.as_str()),
            Some("salon baigné de lumière, 北欧スタイル, émojis 🛋️🪴, ß"),
            Some("\u{0}\u{7f}\u{200b}control characters"),
        ];
        for prompt in prompts {
            for mode in ["redesign", "staging", "", "UNKNOWN"] {
                let req = Request {
                    mode,
                    room_type: None,
                    style: Some("Mid-Century Modern ✨"),
                    prompt,
                    variant: u32::MAX,
                };
                for (width, height) in [(160, 96), (3, 200), (200, 3)] {
                    let jpeg = draw_jpeg(&req, width, height).unwrap();
                    assert_eq!(&jpeg[..3], &[0xFF, 0xD8, 0xFF]);
                }
            }
        }
    }

    #[test]
    fn empty_and_missing_prompt_draw_the_same() {
        let missing = Request {
            prompt: None,
            ..living_room()
        };
        let empty = Request {
            prompt: Some("  "),
            ..living_room()
        };
        assert_eq!(
            draw_jpeg(&missing, 96, 64).unwrap(),
            draw_jpeg(&empty, 96, 64).unwrap()
        );
    }

    #[test]
    fn impossible_sizes_are_errors_not_panics() {
        let req = living_room();
        assert!(draw_jpeg(&req, 0, 10).is_err());
        assert!(draw_jpeg(&req, 10, 0).is_err());
        assert!(draw_jpeg(&req, 70_000, 10).is_err());
        assert!(draw_jpeg(&req, 60_000, 60_000).is_err());
    }

    #[test]
    fn text_is_cut_and_wrapped_by_characters() {
        assert_eq!(cut("cosy nook", 30), "cosy nook");
        assert_eq!(cut("ééééé", 4), "é...");
        assert_eq!(cut("abc def", 2), "..");
        assert_eq!(wrap("a bb ccc dddd", 6, 5), ["a bb", "ccc", "dddd"]);
        assert_eq!(wrap("abcdefgh", 3, 5), ["abc", "def", "gh"]);
        assert_eq!(wrap("one two three four", 9, 2), ["one two", "three..."]);
        assert!(wrap("anything", 0, 3).is_empty());
    }
}
