//! Draws the local provider's images: a placeholder "render" of a room, made on the machine
//! with no network, account or font files, so the whole pipeline runs offline.
//!
//! The picture reflects the request so a demo shows which job produced which image:
//! the style picks the palette, the mode picks the camera and room layout, the room type
//! picks the main piece of furniture, the prompt (with mode, style and variant) seeds the
//! shapes, and a caption spells out mode, style, room type, variant and the prompt.
//! Everything is derived from a fixed hash, so one request always gives the same bytes.

use image::codecs::jpeg::JpegEncoder;
use image::error::{LimitError, LimitErrorKind, ParameterError, ParameterErrorKind};
use image::{ExtendedColorType, ImageError};

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
/// How much of the prompt the caption shows.
const CAPTION_PROMPT_CHARS: usize = 30;

/// A JPEG (baseline, decodable by any viewer) of `width`×`height` that visibly reflects
/// the request. Errors only for sizes JPEG cannot hold (zero, or a side over 65535).
pub fn draw_jpeg(req: &Request, width: u32, height: u32) -> Result<Vec<u8>, ImageError> {
    check_dimensions(width, height)?;
    let canvas = draw_room(req, width as usize, height as usize);
    // A rough upper guess at the compressed size, to avoid regrowing the buffer.
    let mut jpeg = Vec::with_capacity(canvas.pixels.len() / 8);
    JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY).encode(
        &canvas.pixels,
        width,
        height,
        ExtendedColorType::Rgb8,
    )?;
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

// ---------------------------------------------------------------------------------------
// Scene

fn draw_room(req: &Request, width: usize, height: usize) -> Canvas {
    let style_key = normalize_key(req.style.unwrap_or(""));
    let palette = palette_for_style(&style_key);
    let mode = Mode::parse(req.mode);
    let main_piece = MainPiece::for_room_type(req.room_type.unwrap_or(""));
    let prompt = req.prompt.unwrap_or("").trim();
    let mut rng = SplitMix64::new(scene_seed(req, prompt));

    let mut canvas = Canvas::new(width, height, palette.wall);
    let room = Room::for_mode(mode, &mut rng, req.variant, width as f32, height as f32);

    draw_shell(&mut canvas, &room, &palette, main_piece, &mut rng);
    draw_windows(&mut canvas, &room, &palette, mode, &mut rng);
    if !has_upper_cabinets(mode, main_piece) {
        draw_wall_art(&mut canvas, &room, &palette, mode, &mut rng);
    }
    // Staging is lit by its window; upper cabinets would hide the shade.
    if mode != Mode::Staging && !has_upper_cabinets(mode, main_piece) {
        draw_pendant_lamp(&mut canvas, &room, &palette, &mut rng);
    }
    draw_furniture(&mut canvas, &room, &palette, mode, main_piece, &mut rng);
    if mode == Mode::Imagine {
        draw_dream_bokeh(&mut canvas, &palette, &mut rng);
    }
    draw_caption(&mut canvas, req, &style_key, prompt, &palette);
    canvas
}

/// Mixes every field into the seed so that changing any of them moves the shapes.
fn scene_seed(req: &Request, prompt: &str) -> u64 {
    let mut hash = Fnv1a::new();
    hash.write_field(req.mode.trim().to_ascii_lowercase().as_bytes());
    hash.write_field(normalize_key(req.room_type.unwrap_or("")).as_bytes());
    hash.write_field(normalize_key(req.style.unwrap_or("")).as_bytes());
    hash.write_field(prompt.as_bytes());
    hash.write_field(&req.variant.to_le_bytes());
    hash.finish()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Redesign,
    Staging,
    Compose,
    Imagine,
}

impl Mode {
    /// Unknown modes fall back to the redesign layout; the caption still shows the name.
    fn parse(text: &str) -> Mode {
        match text.trim().to_ascii_lowercase().as_str() {
            "staging" => Mode::Staging,
            "compose" => Mode::Compose,
            "imagine" => Mode::Imagine,
            _ => Mode::Redesign,
        }
    }
}

/// Kitchens get upper cabinets where the back wall has no window; they replace the art.
fn has_upper_cabinets(mode: Mode, main_piece: MainPiece) -> bool {
    main_piece == MainPiece::KitchenIsland && matches!(mode, Mode::Staging | Mode::Compose)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MainPiece {
    Sofa,
    Bed,
    KitchenIsland,
    Bathtub,
    DiningTable,
    Desk,
}

impl MainPiece {
    fn for_room_type(room_type: &str) -> MainPiece {
        let key = normalize_key(room_type);
        if key.contains("bed") || key.contains("nursery") {
            MainPiece::Bed
        } else if key.contains("kitchen") {
            MainPiece::KitchenIsland
        } else if key.contains("bath") {
            MainPiece::Bathtub
        } else if key.contains("dining") {
            MainPiece::DiningTable
        } else if key.contains("office") || key.contains("study") {
            MainPiece::Desk
        } else {
            MainPiece::Sofa
        }
    }

    fn has_tiled_floor(self) -> bool {
        matches!(self, MainPiece::KitchenIsland | MainPiece::Bathtub)
    }
}

/// One-point perspective box: the back wall is a rectangle, the image corners are the
/// near corners of the room. Depth 0 is the back wall, depth 1 the image's bottom edge.
struct Room {
    width: f32,
    height: f32,
    back_x0: f32,
    back_y0: f32,
    back_x1: f32,
    back_y1: f32,
    /// Staging mirrors its layout on odd variants, which the windows and furniture follow.
    mirrored: bool,
}

impl Room {
    fn for_mode(mode: Mode, rng: &mut SplitMix64, variant: u32, width: f32, height: f32) -> Room {
        let jitter = rng.range(-0.03, 0.03);
        let (x0, y0, x1, y1) = match mode {
            Mode::Redesign => (0.26, 0.20, 0.74, 0.63),
            // Staging is shot from a corner, like a listing photo.
            Mode::Staging => (0.08, 0.22, 0.56, 0.62),
            Mode::Compose => (0.32, 0.24, 0.84, 0.66),
            Mode::Imagine => (0.18, 0.12, 0.82, 0.68),
        };
        let mirrored = mode == Mode::Staging && variant % 2 == 1;
        let (x0, x1) = if mirrored {
            (1.0 - x1, 1.0 - x0)
        } else {
            (x0, x1)
        };
        Room {
            width,
            height,
            back_x0: (x0 + jitter) * width,
            back_y0: y0 * height,
            back_x1: (x1 + jitter) * width,
            back_y1: y1 * height,
            mirrored,
        }
    }

    fn back_width(&self) -> f32 {
        self.back_x1 - self.back_x0
    }

    fn back_height(&self) -> f32 {
        self.back_y1 - self.back_y0
    }

    /// A point on the floor: `across` 0..1 from the left wall to the right wall.
    fn floor(&self, across: f32, depth: f32) -> Pt {
        let left = lerp(self.back_x0, 0.0, depth);
        let right = lerp(self.back_x1, self.width, depth);
        Pt::new(
            lerp(left, right, across),
            lerp(self.back_y1, self.height, depth),
        )
    }

    /// Pixels per unit of room height at this depth (1 at the back wall).
    fn vertical_scale(&self, depth: f32) -> f32 {
        lerp(self.back_height(), self.height, depth) / self.back_height().max(1.0)
    }

    /// A floor point raised by `rise` (as a fraction of the room's height).
    fn raised(&self, across: f32, depth: f32, rise: f32) -> Pt {
        let base = self.floor(across, depth);
        Pt::new(
            base.x,
            base.y - rise * self.back_height() * self.vertical_scale(depth),
        )
    }

    /// A point on the back wall: `down` 0 at the ceiling, 1 at the floor.
    fn back_wall(&self, across: f32, down: f32) -> Pt {
        Pt::new(
            lerp(self.back_x0, self.back_x1, across),
            lerp(self.back_y0, self.back_y1, down),
        )
    }

    /// A point on a side wall; `depth` 0 at the back corner, 1 at the image edge.
    fn side_wall(&self, right: bool, depth: f32, down: f32) -> Pt {
        let (back_x, near_x) = if right {
            (self.back_x1, self.width)
        } else {
            (self.back_x0, 0.0)
        };
        let top = lerp(self.back_y0, 0.0, depth);
        let bottom = lerp(self.back_y1, self.height, depth);
        Pt::new(lerp(back_x, near_x, depth), lerp(top, bottom, down))
    }

    /// Flips `across` for mirrored layouts so the composition follows the camera.
    fn side(&self, across: f32) -> f32 {
        if self.mirrored {
            1.0 - across
        } else {
            across
        }
    }
}

fn draw_shell(
    canvas: &mut Canvas,
    room: &Room,
    palette: &Palette,
    main_piece: MainPiece,
    rng: &mut SplitMix64,
) {
    let (w, h) = (room.width, room.height);
    let back_top_left = Pt::new(room.back_x0, room.back_y0);
    let back_top_right = Pt::new(room.back_x1, room.back_y0);
    let back_bottom_right = Pt::new(room.back_x1, room.back_y1);
    let back_bottom_left = Pt::new(room.back_x0, room.back_y1);

    // Back wall: light falls off toward the floor.
    let (wall_top, wall_bottom) = (lighten(palette.wall, 0.06), shade(palette.wall, 0.93));
    let (y0, span) = (room.back_y0, room.back_height().max(1.0));
    canvas.fill_polygon_with(
        &[
            back_top_left,
            back_top_right,
            back_bottom_right,
            back_bottom_left,
        ],
        |_, y| mix(wall_top, wall_bottom, (y as f32 - y0) / span),
    );
    let side_near = shade(palette.wall, 0.80);
    let side_far = shade(palette.wall, 0.90);
    let (back_x0, back_x1) = (room.back_x0.max(1.0), room.back_x1);
    canvas.fill_polygon_with(
        &[
            Pt::new(0.0, 0.0),
            back_top_left,
            back_bottom_left,
            Pt::new(0.0, h),
        ],
        |x, _| mix(side_near, side_far, x as f32 / back_x0),
    );
    let right_span = (w - back_x1).max(1.0);
    canvas.fill_polygon_with(
        &[
            back_top_right,
            Pt::new(w, 0.0),
            Pt::new(w, h),
            back_bottom_right,
        ],
        |x, _| mix(side_far, side_near, (x as f32 - back_x1) / right_span),
    );
    let ceiling = lighten(palette.wall, 0.10);
    canvas.fill_polygon(
        &[
            Pt::new(0.0, 0.0),
            Pt::new(w, 0.0),
            back_top_right,
            back_top_left,
        ],
        ceiling,
    );
    let (floor_far, floor_near) = (shade(palette.floor, 0.86), palette.floor);
    let floor_span = (h - room.back_y1).max(1.0);
    let floor_top = room.back_y1;
    canvas.fill_polygon_with(
        &[
            back_bottom_left,
            back_bottom_right,
            Pt::new(w, h),
            Pt::new(0.0, h),
        ],
        |_, y| mix(floor_far, floor_near, (y as f32 - floor_top) / floor_span),
    );

    // Boards run toward the back wall; tiles also get cross joints.
    let seam = shade(palette.floor, 0.78);
    let thickness = (w / 900.0).max(1.0);
    let boards = rng.int_range(7, 14);
    for board in 1..boards {
        let across = board as f32 / boards as f32;
        canvas.line(
            room.floor(across, 0.0),
            room.floor(across, 1.0),
            thickness,
            seam,
        );
    }
    if main_piece.has_tiled_floor() {
        let rows = boards / 2 + 2;
        for row in 1..rows {
            // Squared spacing imitates perspective foreshortening.
            let depth = (row as f32 / rows as f32).powi(2);
            canvas.line(
                room.floor(0.0, depth),
                room.floor(1.0, depth),
                thickness,
                seam,
            );
        }
    }

    // Baseboards and corner seams make the box read as a room.
    let skirting = (0.025 * room.back_height()).max(1.0);
    canvas.fill_rect(
        room.back_x0,
        room.back_y1 - skirting,
        room.back_x1,
        room.back_y1,
        palette.trim,
    );
    for right in [false, true] {
        let rise = 0.025;
        canvas.fill_polygon(
            &[
                room.side_wall(right, 0.0, 1.0 - rise),
                room.side_wall(right, 1.0, 1.0 - rise),
                room.side_wall(right, 1.0, 1.0),
                room.side_wall(right, 0.0, 1.0),
            ],
            shade(palette.trim, 0.92),
        );
    }
    let corner = shade(palette.wall, 0.70);
    canvas.line(Pt::new(0.0, 0.0), back_top_left, thickness, corner);
    canvas.line(Pt::new(w, 0.0), back_top_right, thickness, corner);
    canvas.line(back_top_left, back_bottom_left, thickness, corner);
    canvas.line(back_top_right, back_bottom_right, thickness, corner);
}

fn draw_windows(
    canvas: &mut Canvas,
    room: &Room,
    palette: &Palette,
    mode: Mode,
    rng: &mut SplitMix64,
) {
    let sky_top = Rgb([128, 178, 226]);
    let sky_bottom = Rgb([214, 234, 246]);
    let frame = palette.trim;
    let frame_width = (room.back_width() * 0.012).max(1.0);
    match mode {
        Mode::Redesign | Mode::Imagine => {
            let wide = mode == Mode::Imagine;
            let (a0, a1) = if wide {
                (0.22, 0.78)
            } else {
                // Clear of the art, which hangs at 0.05..0.22.
                let start = rng.range(0.30, 0.55);
                (start, start + rng.range(0.25, 0.35))
            };
            let (d0, d1) = if wide { (0.18, 0.78) } else { (0.14, 0.62) };
            let top_left = room.back_wall(a0, d0);
            let bottom_right = room.back_wall(a1, d1);
            let (top, height) = (top_left.y, (bottom_right.y - top_left.y).max(1.0));
            let sun = Pt::new(lerp(top_left.x, bottom_right.x, rng.range(0.2, 0.8)), top);
            let hill_phase = rng.range(0.0, std::f32::consts::TAU);
            let hill_color = shade(palette.plant, 1.1);
            let sky = |x: usize, y: usize| {
                let fy = (y as f32 - top) / height;
                let hill_line = 0.72 + 0.08 * ((x as f32 / room.width) * 9.0 + hill_phase).sin();
                if wide && fy > hill_line {
                    return mix(hill_color, shade(hill_color, 0.75), fy - hill_line);
                }
                let sun_distance = ((x as f32 - sun.x).powi(2) + (y as f32 - sun.y).powi(2)).sqrt();
                let glow = (1.0 - sun_distance / (height * 0.6)).clamp(0.0, 1.0);
                mix(
                    mix(sky_top, sky_bottom, fy),
                    Rgb([255, 244, 214]),
                    glow * 0.8,
                )
            };
            canvas.fill_rect(
                top_left.x - frame_width,
                top_left.y - frame_width,
                bottom_right.x + frame_width,
                bottom_right.y + frame_width,
                frame,
            );
            if wide {
                // An arched top for the "imagine" mode's dreamier look.
                let radius = (bottom_right.x - top_left.x) / 2.0;
                let center = Pt::new((top_left.x + bottom_right.x) / 2.0, top_left.y);
                let arch_height = radius.min(top_left.y - room.back_y0 - frame_width).max(0.0);
                canvas.fill_ellipse(
                    center,
                    radius + frame_width,
                    arch_height + frame_width,
                    frame,
                );
                canvas.fill_ellipse_with(center, radius, arch_height, |x, y| {
                    if (y as f32) < top {
                        mix(sky_top, shade(sky_top, 0.85), (top - y as f32) / height)
                    } else {
                        sky(x, y)
                    }
                });
            }
            canvas.fill_rect_with(top_left.x, top_left.y, bottom_right.x, bottom_right.y, sky);
            let panes = if wide { 3 } else { rng.int_range(1, 3) };
            for pane in 1..panes {
                let x = lerp(top_left.x, bottom_right.x, pane as f32 / panes as f32);
                canvas.fill_rect(
                    x - frame_width / 2.0,
                    top_left.y,
                    x + frame_width / 2.0,
                    bottom_right.y,
                    frame,
                );
            }
            if !wide {
                // A transom bar: reads as a sash window at any size.
                let sill_y = lerp(top_left.y, bottom_right.y, 0.5);
                canvas.fill_rect(
                    top_left.x,
                    sill_y - frame_width / 2.0,
                    bottom_right.x,
                    sill_y + frame_width / 2.0,
                    frame,
                );
            }
            // Sunlight thrown forward onto the floor.
            canvas.blend_polygon(
                &[
                    room.floor(a0, 0.02),
                    room.floor(a1, 0.02),
                    room.floor(a1 + 0.12, 0.55),
                    room.floor(a0 + 0.12, 0.55),
                ],
                Rgb([255, 248, 225]),
                0.22,
            );
        }
        Mode::Staging | Mode::Compose => {
            // Staging lights from the open side; compose from the left wall.
            let right = match mode {
                Mode::Staging => !room.mirrored,
                _ => false,
            };
            let (t0, t1) = (rng.range(0.12, 0.25), rng.range(0.45, 0.60));
            let (h0, h1) = (0.16, 0.62);
            let corners = [
                room.side_wall(right, t0, h0),
                room.side_wall(right, t1, h0),
                room.side_wall(right, t1, h1),
                room.side_wall(right, t0, h1),
            ];
            let outer = [
                room.side_wall(right, t0 - 0.015, h0 - 0.02),
                room.side_wall(right, t1 + 0.015, h0 - 0.02),
                room.side_wall(right, t1 + 0.015, h1 + 0.02),
                room.side_wall(right, t0 - 0.015, h1 + 0.02),
            ];
            canvas.fill_polygon(&outer, frame);
            let (top, bottom) = (
                corners[0].y.min(corners[1].y),
                corners[2].y.max(corners[3].y),
            );
            let height = (bottom - top).max(1.0);
            canvas.fill_polygon_with(&corners, |_, y| {
                mix(sky_top, sky_bottom, (y as f32 - top) / height)
            });
            let middle = (t0 + t1) / 2.0;
            canvas.line(
                room.side_wall(right, middle, h0),
                room.side_wall(right, middle, h1),
                frame_width,
                frame,
            );
            let (near_edge, far_edge) = if right { (1.0, 0.55) } else { (0.0, 0.45) };
            canvas.blend_polygon(
                &[
                    room.floor(near_edge, t0),
                    room.floor(near_edge, t1),
                    room.floor(far_edge, t1 + 0.25),
                    room.floor(far_edge, t0 + 0.15),
                ],
                Rgb([255, 248, 225]),
                0.20,
            );
        }
    }
}

/// Framed art on the back wall whose motif comes from the prompt's hash.
fn draw_wall_art(
    canvas: &mut Canvas,
    room: &Room,
    palette: &Palette,
    mode: Mode,
    rng: &mut SplitMix64,
) {
    // The redesign window may sit anywhere, so its art goes where the window is not.
    let slots: &[(f32, f32)] = match mode {
        Mode::Redesign => &[(0.05, 0.22)],
        Mode::Staging => &[(0.36, 0.64)],
        Mode::Compose => &[(0.12, 0.34), (0.40, 0.62), (0.68, 0.90)],
        Mode::Imagine => &[(0.03, 0.17), (0.83, 0.97)],
    };
    let frame_width = (room.back_width() * 0.008).max(1.0);
    for &(a0, a1) in slots {
        let (a0, a1) = if room.mirrored {
            (1.0 - a1, 1.0 - a0)
        } else {
            (a0, a1)
        };
        let top_left = room.back_wall(a0, rng.range(0.16, 0.24));
        let bottom_right = room.back_wall(a1, rng.range(0.44, 0.52));
        canvas.fill_rect(
            top_left.x - frame_width,
            top_left.y - frame_width,
            bottom_right.x + frame_width,
            bottom_right.y + frame_width,
            palette.dark,
        );
        canvas.fill_rect(
            top_left.x,
            top_left.y,
            bottom_right.x,
            bottom_right.y,
            lighten(palette.secondary, 0.55),
        );
        let (w, h) = (bottom_right.x - top_left.x, bottom_right.y - top_left.y);
        let center = Pt::new(top_left.x + w / 2.0, top_left.y + h / 2.0);
        match rng.int_range(0, 4) {
            0 => {
                for ring in 0..3 {
                    let radius = w.min(h) * (0.38 - ring as f32 * 0.11);
                    let color = if ring % 2 == 0 {
                        palette.accent
                    } else {
                        palette.secondary
                    };
                    canvas.fill_ellipse(center, radius, radius, color);
                }
            }
            1 => {
                let stripes = rng.int_range(3, 6);
                for stripe in 0..stripes {
                    if stripe % 2 == 0 {
                        let y0 = top_left.y + h * stripe as f32 / stripes as f32;
                        let y1 = top_left.y + h * (stripe + 1) as f32 / stripes as f32;
                        canvas.fill_rect(top_left.x, y0, bottom_right.x, y1, palette.accent);
                    }
                }
            }
            2 => {
                let peak = Pt::new(top_left.x + w * rng.range(0.3, 0.7), top_left.y + h * 0.25);
                canvas.fill_polygon(
                    &[
                        Pt::new(top_left.x, bottom_right.y),
                        peak,
                        Pt::new(bottom_right.x, bottom_right.y),
                    ],
                    palette.accent,
                );
                canvas.fill_ellipse(
                    Pt::new(top_left.x + w * 0.78, top_left.y + h * 0.22),
                    w * 0.1,
                    w * 0.1,
                    palette.secondary,
                );
            }
            _ => {
                for _ in 0..5 {
                    let spot = Pt::new(
                        top_left.x + w * rng.range(0.2, 0.8),
                        top_left.y + h * rng.range(0.2, 0.8),
                    );
                    let radius = w * rng.range(0.06, 0.16);
                    let color = if rng.coin() {
                        palette.accent
                    } else {
                        palette.secondary
                    };
                    canvas.fill_ellipse(spot, radius, radius, color);
                }
            }
        }
    }
}

fn draw_pendant_lamp(canvas: &mut Canvas, room: &Room, palette: &Palette, rng: &mut SplitMix64) {
    let across = rng.range(0.35, 0.65);
    let depth = 0.35;
    // Hung above the middle of the room, so its x follows the ceiling at that depth.
    let left = room.side_wall(false, depth, 0.0).x;
    let x = lerp(left, room.side_wall(true, depth, 0.0).x, across);
    let shade_top = Pt::new(x, room.back_y0 + room.back_height() * 0.10);
    let thickness = (room.width / 500.0).max(1.0);
    canvas.line(Pt::new(x, 0.0), shade_top, thickness, palette.dark);
    let radius = room.back_width() * 0.07;
    canvas.blend_ellipse(
        Pt::new(x, shade_top.y + radius * 0.7),
        radius * 1.8,
        radius * 1.2,
        Rgb([255, 236, 180]),
        0.25,
    );
    canvas.fill_polygon(
        &[
            Pt::new(x - radius * 0.35, shade_top.y),
            Pt::new(x + radius * 0.35, shade_top.y),
            Pt::new(x + radius, shade_top.y + radius * 0.7),
            Pt::new(x - radius, shade_top.y + radius * 0.7),
        ],
        palette.accent,
    );
}

fn draw_furniture(
    canvas: &mut Canvas,
    room: &Room,
    palette: &Palette,
    mode: Mode,
    main_piece: MainPiece,
    rng: &mut SplitMix64,
) {
    // A rug first, since everything else stands on it.
    let rug_center = room.side(rng.range(0.40, 0.60));
    let rug_color = mix(palette.secondary, palette.floor, 0.35);
    let rug_depth = (rng.range(0.06, 0.14), rng.range(0.42, 0.55));
    canvas.fill_polygon(
        &[
            room.floor(rug_center - 0.28, rug_depth.0),
            room.floor(rug_center + 0.28, rug_depth.0),
            room.floor(rug_center + 0.28, rug_depth.1),
            room.floor(rug_center - 0.28, rug_depth.1),
        ],
        rug_color,
    );

    let main_across = match mode {
        Mode::Staging => room.side(rng.range(0.40, 0.52)),
        Mode::Compose => rng.range(0.28, 0.38),
        _ => rng.range(0.42, 0.58),
    };
    let mut furniture = Furniture { canvas, room };

    // Plant in a back corner.
    let plant_across = if rng.coin() { 0.08 } else { 0.92 };
    furniture.plant(plant_across, 0.05, palette, rng);

    match main_piece {
        MainPiece::Sofa => furniture.sofa(main_across, 0.06, palette, rng),
        MainPiece::Bed => furniture.bed(main_across, 0.02, palette, rng),
        MainPiece::KitchenIsland => furniture.kitchen(
            main_across,
            has_upper_cabinets(mode, main_piece),
            palette,
            rng,
        ),
        MainPiece::Bathtub => furniture.bathtub(main_across, 0.04, palette),
        MainPiece::DiningTable => furniture.dining_table(main_across, 0.18, palette),
        MainPiece::Desk => furniture.desk(main_across, 0.03, palette),
    }

    match mode {
        Mode::Redesign => {
            let lamp_across = if main_across < 0.5 { 0.86 } else { 0.14 };
            furniture.floor_lamp(lamp_across, 0.12, palette);
            if main_piece == MainPiece::Sofa {
                furniture.boxy(
                    main_across - 0.10,
                    main_across + 0.10,
                    0.30,
                    0.38,
                    0.07,
                    palette.wood,
                );
            }
        }
        Mode::Staging => {
            // Staged listings: a reading chair and a side table facing the main piece.
            let chair_across = room.side(0.84);
            furniture.armchair(chair_across, 0.30, palette.secondary, palette);
            furniture.boxy(
                room.side(0.70),
                room.side(0.78),
                0.34,
                0.40,
                0.10,
                palette.wood,
            );
        }
        Mode::Compose => {
            // The composited product: a hero chair inside a selection box with handles.
            let hero_across = rng.range(0.74, 0.82);
            let bounds = furniture.armchair(hero_across, 0.20, palette.accent, palette);
            furniture.selection_box(bounds, palette.secondary);
        }
        Mode::Imagine => {
            furniture.floor_lamp(0.10, 0.16, palette);
            furniture.plant(0.88, 0.28, palette, rng);
        }
    }
}

/// Drawing helpers for objects standing on the floor, in the room's perspective.
struct Furniture<'c, 'r> {
    canvas: &'c mut Canvas,
    room: &'r Room,
}

/// A screen-space box around a drawn object, e.g. for the compose mode's selection.
#[derive(Clone, Copy)]
struct Bounds {
    x0: f32,
    y0: f32,
    x1: f32,
    y1: f32,
}

impl Furniture<'_, '_> {
    /// A box on the floor from `a0..a1` across and `d0..d1` deep, `rise` tall (fraction of
    /// room height). Draws the faces a camera at the room's centre line would see.
    fn boxy(&mut self, a0: f32, a1: f32, d0: f32, d1: f32, rise: f32, color: Rgb) -> Bounds {
        let room = self.room;
        let top = [
            room.raised(a0, d0, rise),
            room.raised(a1, d0, rise),
            room.raised(a1, d1, rise),
            room.raised(a0, d1, rise),
        ];
        let front = [
            room.raised(a0, d1, rise),
            room.raised(a1, d1, rise),
            room.floor(a1, d1),
            room.floor(a0, d1),
        ];
        let center_x = room.width / 2.0;
        // The side facing the centre line is visible; the other is hidden behind the front.
        let side_across = if front[1].x < center_x {
            Some(a1)
        } else if front[0].x > center_x {
            Some(a0)
        } else {
            None
        };
        if let Some(across) = side_across {
            self.canvas.fill_polygon(
                &[
                    room.raised(across, d0, rise),
                    room.raised(across, d1, rise),
                    room.floor(across, d1),
                    room.floor(across, d0),
                ],
                shade(color, 0.72),
            );
        }
        self.canvas.fill_polygon(&front, shade(color, 0.85));
        self.canvas.fill_polygon(&top, lighten(color, 0.08));
        let all = top.iter().chain(front.iter());
        Bounds {
            x0: all.clone().map(|p| p.x).fold(f32::MAX, f32::min),
            y0: all.clone().map(|p| p.y).fold(f32::MAX, f32::min),
            x1: all.clone().map(|p| p.x).fold(f32::MIN, f32::max),
            y1: all.map(|p| p.y).fold(f32::MIN, f32::max),
        }
    }

    fn shadow(&mut self, a0: f32, a1: f32, d0: f32, d1: f32) {
        let room = self.room;
        self.canvas.blend_polygon(
            &[
                room.floor(a0 - 0.01, d0),
                room.floor(a1 + 0.01, d0),
                room.floor(a1 + 0.02, d1 + 0.02),
                room.floor(a0 - 0.02, d1 + 0.02),
            ],
            Rgb([0, 0, 0]),
            0.18,
        );
    }

    fn sofa(&mut self, center: f32, depth: f32, palette: &Palette, rng: &mut SplitMix64) {
        let half = rng.range(0.20, 0.27);
        let (a0, a1) = (center - half, center + half);
        let (d0, d1) = (depth, depth + 0.16);
        self.shadow(a0, a1, d0, d1);
        self.boxy(a0, a1, d0, d0 + 0.05, 0.26, palette.accent);
        self.boxy(a0, a1, d0, d1, 0.12, palette.accent);
        // Pillows first: the seat cushions in front hide their lower edge.
        let pillow = lighten(palette.secondary, 0.15);
        self.boxy(a0 + 0.05, a0 + 0.11, d0 + 0.05, d0 + 0.07, 0.22, pillow);
        self.boxy(a1 - 0.11, a1 - 0.05, d0 + 0.05, d0 + 0.07, 0.22, pillow);
        let cushions = rng.int_range(2, 4);
        let inner = (a1 - a0 - 0.08) / cushions as f32;
        for cushion in 0..cushions {
            let c0 = a0 + 0.04 + inner * cushion as f32;
            self.boxy(
                c0 + 0.01,
                c0 + inner - 0.01,
                d0 + 0.05,
                d1 - 0.01,
                0.15,
                lighten(palette.accent, 0.10),
            );
        }
        self.boxy(a0, a0 + 0.04, d0, d1, 0.18, shade(palette.accent, 0.92));
        self.boxy(a1 - 0.04, a1, d0, d1, 0.18, shade(palette.accent, 0.92));
    }

    fn bed(&mut self, center: f32, depth: f32, palette: &Palette, rng: &mut SplitMix64) {
        let half = rng.range(0.18, 0.24);
        let (a0, a1) = (center - half, center + half);
        let (d0, d1) = (depth, depth + 0.42);
        self.shadow(a0, a1, d0, d1);
        self.boxy(a0 - 0.01, a1 + 0.01, d0, d0 + 0.02, 0.34, palette.wood);
        self.boxy(a0, a1, d0 + 0.02, d1, 0.12, palette.trim);
        self.boxy(a0, a1, d0 + 0.14, d1, 0.13, palette.accent);
        let pillow = lighten(palette.secondary, 0.35);
        self.boxy(a0 + 0.03, center - 0.02, d0 + 0.03, d0 + 0.09, 0.16, pillow);
        self.boxy(center + 0.02, a1 - 0.03, d0 + 0.03, d0 + 0.09, 0.16, pillow);
        // Nightstands either side.
        self.boxy(a0 - 0.10, a0 - 0.03, d0, d0 + 0.06, 0.14, palette.wood);
        self.boxy(a1 + 0.03, a1 + 0.10, d0, d0 + 0.06, 0.14, palette.wood);
    }

    fn kitchen(
        &mut self,
        center: f32,
        upper_cabinets: bool,
        palette: &Palette,
        rng: &mut SplitMix64,
    ) {
        // Counters along the back wall, an island in front.
        self.boxy(0.0, 1.0, 0.0, 0.07, 0.22, palette.accent);
        self.boxy(0.0, 1.0, 0.0, 0.075, 0.235, palette.trim);
        if upper_cabinets {
            self.upper_cabinets(palette, rng);
        }
        let half = rng.range(0.16, 0.22);
        self.shadow(center - half, center + half, 0.30, 0.44);
        self.boxy(center - half, center + half, 0.30, 0.44, 0.20, palette.wood);
        self.boxy(
            center - half - 0.01,
            center + half + 0.01,
            0.295,
            0.445,
            0.215,
            palette.trim,
        );
    }

    fn upper_cabinets(&mut self, palette: &Palette, rng: &mut SplitMix64) {
        let room = self.room;
        let upper_top = room.back_wall(0.0, 0.08);
        let upper_bottom = room.back_wall(1.0, 0.30);
        self.canvas.fill_rect(
            upper_top.x,
            upper_top.y,
            upper_bottom.x,
            upper_bottom.y,
            shade(palette.accent, 0.95),
        );
        let doors = rng.int_range(4, 7);
        for door in 1..doors {
            let x = lerp(upper_top.x, upper_bottom.x, door as f32 / doors as f32);
            self.canvas.line(
                Pt::new(x, upper_top.y),
                Pt::new(x, upper_bottom.y),
                1.0,
                shade(palette.accent, 0.7),
            );
        }
    }

    fn bathtub(&mut self, center: f32, depth: f32, palette: &Palette) {
        let (a0, a1, d0, d1) = (center - 0.24, center + 0.24, depth, depth + 0.18);
        self.shadow(a0, a1, d0, d1);
        let bounds = self.boxy(a0, a1, d0, d1, 0.14, palette.trim);
        let inner = Pt::new(
            (bounds.x0 + bounds.x1) / 2.0,
            bounds.y0 + (bounds.y1 - bounds.y0) * 0.2,
        );
        self.canvas.fill_ellipse(
            inner,
            (bounds.x1 - bounds.x0) * 0.42,
            (bounds.y1 - bounds.y0) * 0.14,
            Rgb([170, 205, 222]),
        );
    }

    fn dining_table(&mut self, center: f32, depth: f32, palette: &Palette) {
        let (a0, a1, d0, d1) = (center - 0.20, center + 0.20, depth, depth + 0.18);
        for across in [a0 + 0.06, center - 0.05, center + 0.05, a1 - 0.06] {
            self.boxy(
                across - 0.03,
                across + 0.03,
                d0 - 0.07,
                d0 - 0.02,
                0.22,
                shade(palette.accent, 0.9),
            );
        }
        self.shadow(a0, a1, d0, d1);
        for (across, deep) in [(a0 + 0.02, d0 + 0.02), (a1 - 0.03, d0 + 0.02)] {
            self.boxy(across, across + 0.01, deep, deep + 0.01, 0.18, palette.dark);
        }
        for (across, deep) in [(a0 + 0.02, d1 - 0.03), (a1 - 0.03, d1 - 0.03)] {
            self.boxy(across, across + 0.01, deep, deep + 0.01, 0.18, palette.dark);
        }
        self.boxy(a0, a1, d0, d1, 0.20, palette.wood);
    }

    fn desk(&mut self, center: f32, depth: f32, palette: &Palette) {
        let (a0, a1, d0, d1) = (center - 0.18, center + 0.18, depth, depth + 0.12);
        self.shadow(a0, a1, d0, d1);
        self.boxy(a0, a0 + 0.02, d0, d1, 0.20, palette.dark);
        self.boxy(a1 - 0.02, a1, d0, d1, 0.20, palette.dark);
        self.boxy(a0, a1, d0, d1, 0.21, palette.wood);
        let screen = self.boxy(
            center - 0.07,
            center + 0.07,
            d0 + 0.02,
            d0 + 0.025,
            0.36,
            palette.dark,
        );
        self.canvas.fill_rect(
            screen.x0 + 2.0,
            screen.y0 + 2.0,
            screen.x1 - 2.0,
            screen.y0 + (screen.y1 - screen.y0) * 0.55,
            mix(palette.secondary, Rgb([200, 230, 255]), 0.5),
        );
        self.armchair(center, d1 + 0.05, palette.accent, palette);
    }

    fn armchair(&mut self, center: f32, depth: f32, color: Rgb, palette: &Palette) -> Bounds {
        let (a0, a1, d0, d1) = (center - 0.08, center + 0.08, depth, depth + 0.12);
        self.shadow(a0, a1, d0, d1);
        let back = self.boxy(a0, a1, d0, d0 + 0.03, 0.24, color);
        self.boxy(a0, a1, d0, d1, 0.11, color);
        self.boxy(a0, a0 + 0.025, d0, d1, 0.16, shade(color, 0.9));
        self.boxy(a1 - 0.025, a1, d0, d1, 0.16, shade(color, 0.9));
        let front = self.boxy(a0 + 0.01, a1 - 0.01, d1 - 0.01, d1, 0.02, palette.dark);
        Bounds {
            x0: back.x0.min(front.x0),
            y0: back.y0.min(front.y0),
            x1: back.x1.max(front.x1),
            y1: back.y1.max(front.y1),
        }
    }

    fn floor_lamp(&mut self, across: f32, depth: f32, palette: &Palette) {
        let room = self.room;
        let base = room.floor(across, depth);
        let top = room.raised(across, depth, 0.52);
        let scale = room.vertical_scale(depth);
        let thickness = (room.width / 400.0).max(1.0) * scale;
        self.canvas.blend_ellipse(
            base,
            room.back_width() * 0.05 * scale,
            room.back_height() * 0.015 * scale,
            Rgb([0, 0, 0]),
            0.25,
        );
        self.canvas.line(base, top, thickness, palette.dark);
        let shade_width = room.back_width() * 0.06 * scale;
        let shade_height = room.back_height() * 0.12 * scale;
        self.canvas.blend_ellipse(
            Pt::new(top.x, top.y + shade_height),
            shade_width * 2.2,
            shade_height * 1.6,
            Rgb([255, 236, 180]),
            0.22,
        );
        self.canvas.fill_polygon(
            &[
                Pt::new(top.x - shade_width * 0.6, top.y - shade_height * 0.2),
                Pt::new(top.x + shade_width * 0.6, top.y - shade_height * 0.2),
                Pt::new(top.x + shade_width, top.y + shade_height * 0.8),
                Pt::new(top.x - shade_width, top.y + shade_height * 0.8),
            ],
            lighten(palette.secondary, 0.4),
        );
    }

    fn plant(&mut self, across: f32, depth: f32, palette: &Palette, rng: &mut SplitMix64) {
        let pot = self.boxy(
            across - 0.035,
            across + 0.035,
            depth,
            depth + 0.05,
            0.10,
            shade(palette.secondary, 0.8),
        );
        let room = self.room;
        let scale = room.vertical_scale(depth);
        let leaf = room.back_height() * 0.07 * scale;
        let center_x = (pot.x0 + pot.x1) / 2.0;
        for index in 0..7 {
            let spread = rng.range(-1.6, 1.6);
            let lift = rng.range(0.6, 3.2);
            let color = shade(palette.plant, rng.range(0.75, 1.15));
            self.canvas.fill_ellipse(
                Pt::new(center_x + spread * leaf, pot.y0 - lift * leaf + leaf * 0.5),
                leaf * if index % 2 == 0 { 0.9 } else { 0.6 },
                leaf * 1.1,
                color,
            );
        }
    }

    /// The compose mode's marker: a dashed box with square handles at the corners.
    fn selection_box(&mut self, bounds: Bounds, color: Rgb) {
        let margin = (bounds.x1 - bounds.x0) * 0.08;
        let (x0, y0) = (bounds.x0 - margin, bounds.y0 - margin);
        let (x1, y1) = (bounds.x1 + margin, bounds.y1 + margin);
        let thickness = (self.room.width / 400.0).max(1.0);
        let dash = (thickness * 5.0).max(4.0);
        let mut x = x0;
        while x < x1 {
            let end = (x + dash).min(x1);
            self.canvas.fill_rect(x, y0, end, y0 + thickness, color);
            self.canvas.fill_rect(x, y1 - thickness, end, y1, color);
            x += dash * 2.0;
        }
        let mut y = y0;
        while y < y1 {
            let end = (y + dash).min(y1);
            self.canvas.fill_rect(x0, y, x0 + thickness, end, color);
            self.canvas.fill_rect(x1 - thickness, y, x1, end, color);
            y += dash * 2.0;
        }
        let handle = thickness * 3.0;
        for (cx, cy) in [(x0, y0), (x1, y0), (x1, y1), (x0, y1)] {
            self.canvas.fill_rect(
                cx - handle,
                cy - handle,
                cx + handle,
                cy + handle,
                Rgb([255, 255, 255]),
            );
            self.canvas.fill_rect(
                cx - handle + thickness,
                cy - handle + thickness,
                cx + handle - thickness,
                cy + handle - thickness,
                color,
            );
        }
    }
}

/// Soft glowing discs over the whole picture: "imagine" should look less literal.
fn draw_dream_bokeh(canvas: &mut Canvas, palette: &Palette, rng: &mut SplitMix64) {
    let (w, h) = (canvas.width as f32, canvas.height as f32);
    for _ in 0..9 {
        let center = Pt::new(rng.range(0.0, w), rng.range(0.0, h * 0.7));
        let radius = rng.range(0.03, 0.09) * w;
        let color = if rng.coin() {
            lighten(palette.secondary, 0.5)
        } else {
            Rgb([255, 246, 220])
        };
        canvas.blend_ellipse(center, radius, radius, color, 0.22);
    }
}

// ---------------------------------------------------------------------------------------
// Caption

fn draw_caption(
    canvas: &mut Canvas,
    req: &Request,
    style_key: &str,
    prompt: &str,
    palette: &Palette,
) {
    let (w, h) = (canvas.width, canvas.height);
    let mode_name = req.mode.trim();
    let mode_name = if mode_name.is_empty() {
        "redesign"
    } else {
        mode_name
    };
    let style_name = if style_key.is_empty() {
        "any"
    } else {
        style_key
    };
    let headline = format!(
        "{} / {}",
        caption_text(mode_name, 14),
        caption_text(style_name, 24)
    );
    // Room types arrive as identifiers like "living_room".
    let room_words = req.room_type.unwrap_or("").replace('_', " ");
    let room_name = match room_words.trim() {
        "" => "ROOM".to_string(),
        words => caption_text(words, 20),
    };
    let details = format!("{room_name} - VARIANT {}", req.variant);
    let prompt_line = if prompt.is_empty() {
        "(NO PROMPT)".to_string()
    } else {
        format!("\"{}\"", caption_text(prompt, CAPTION_PROMPT_CHARS))
    };

    let padding = (h / 64).max(2);
    let fit = |text: &str, wanted: usize| {
        let glyphs = text.chars().count().max(1);
        wanted
            .min((w.saturating_sub(2 * padding)) / (glyphs * GLYPH_ADVANCE))
            .max(1)
    };
    let big = fit(&headline, (h / 128).max(1));
    let small_wanted = (big * 2 / 3).max(1);
    let small = fit(&details, small_wanted).min(fit(&prompt_line, small_wanted));
    let line_gap = small * 3;
    let band_height = padding * 2 + GLYPH_HEIGHT * big + 2 * (line_gap + GLYPH_HEIGHT * small);
    let band_top = h.saturating_sub(band_height);
    canvas.blend_rect(
        0.0,
        band_top as f32,
        w as f32,
        h as f32,
        Rgb([12, 12, 16]),
        0.68,
    );
    canvas.fill_rect(
        0.0,
        band_top as f32,
        w as f32,
        (band_top + big.div_ceil(2).max(1)) as f32,
        palette.secondary,
    );

    let ink = Rgb([250, 248, 242]);
    let soft_ink = Rgb([208, 206, 200]);
    let mut y = band_top + padding + big / 2;
    canvas.text(padding, y, big, &headline, ink);
    y += GLYPH_HEIGHT * big + line_gap;
    canvas.text(padding, y, small, &details, soft_ink);
    y += GLYPH_HEIGHT * small + line_gap;
    canvas.text(padding, y, small, &prompt_line, soft_ink);

    // A tag in the corner so nobody mistakes this for a real render.
    let tag = "LOCAL PREVIEW";
    let tag_scale = fit(tag, (h / 256).max(1));
    let tag_width = tag.len() * GLYPH_ADVANCE * tag_scale;
    let tag_pad = tag_scale * 2;
    canvas.blend_rect(
        padding as f32,
        padding as f32,
        (padding + tag_width + 2 * tag_pad) as f32,
        (padding + GLYPH_HEIGHT * tag_scale + 2 * tag_pad) as f32,
        palette.dark,
        0.75,
    );
    canvas.text(padding + tag_pad, padding + tag_pad, tag_scale, tag, ink);
}

/// Upper-cases for the font, flattens whitespace, and truncates to `max_chars` with "...".
fn caption_text(text: &str, max_chars: usize) -> String {
    let flat: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase();
    if flat.chars().count() <= max_chars {
        flat
    } else {
        let mut shortened: String = flat.chars().take(max_chars).collect();
        shortened.truncate(shortened.trim_end().len());
        shortened.push_str("...");
        shortened
    }
}

// ---------------------------------------------------------------------------------------
// Palettes

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rgb([u8; 3]);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Palette {
    wall: Rgb,
    floor: Rgb,
    trim: Rgb,
    /// Upholstery and the main accent.
    accent: Rgb,
    /// Cushions, rugs, art.
    secondary: Rgb,
    wood: Rgb,
    dark: Rgb,
    plant: Rgb,
}

const fn rgb(r: u8, g: u8, b: u8) -> Rgb {
    Rgb([r, g, b])
}

/// Hand-picked palettes; the first key contained in the style wins, so more specific
/// names ("mid century modern") are listed before the general ones ("modern").
const STYLE_PALETTES: &[(&[&str], Palette)] = &[
    (
        &["midcentury", "retro"],
        Palette {
            wall: rgb(240, 230, 210),
            floor: rgb(150, 98, 58),
            trim: rgb(248, 244, 234),
            accent: rgb(28, 118, 118),
            secondary: rgb(222, 160, 42),
            wood: rgb(132, 78, 40),
            dark: rgb(44, 36, 30),
            plant: rgb(70, 128, 70),
        },
    ),
    (
        &["scandi", "nordic"],
        Palette {
            wall: rgb(242, 239, 233),
            floor: rgb(216, 192, 154),
            trim: rgb(252, 252, 250),
            accent: rgb(142, 160, 172),
            secondary: rgb(222, 196, 168),
            wood: rgb(206, 178, 138),
            dark: rgb(66, 68, 72),
            plant: rgb(88, 130, 92),
        },
    ),
    (
        &["industrial", "loft"],
        Palette {
            wall: rgb(152, 150, 146),
            floor: rgb(92, 90, 88),
            trim: rgb(40, 40, 42),
            accent: rgb(142, 82, 46),
            secondary: rgb(176, 96, 48),
            wood: rgb(96, 66, 46),
            dark: rgb(26, 26, 28),
            plant: rgb(74, 110, 70),
        },
    ),
    (
        &["boho", "bohemian", "eclectic"],
        Palette {
            wall: rgb(238, 220, 192),
            floor: rgb(178, 122, 82),
            trim: rgb(250, 240, 224),
            accent: rgb(196, 98, 62),
            secondary: rgb(214, 164, 58),
            wood: rgb(150, 98, 60),
            dark: rgb(82, 50, 38),
            plant: rgb(84, 132, 66),
        },
    ),
    (
        &["minimal"],
        Palette {
            wall: rgb(246, 246, 244),
            floor: rgb(224, 216, 204),
            trim: rgb(255, 255, 255),
            accent: rgb(196, 196, 192),
            secondary: rgb(126, 126, 124),
            wood: rgb(210, 196, 176),
            dark: rgb(58, 58, 58),
            plant: rgb(110, 140, 110),
        },
    ),
    (
        &["coastal", "beach", "nautical", "hamptons"],
        Palette {
            wall: rgb(234, 242, 245),
            floor: rgb(220, 206, 182),
            trim: rgb(252, 252, 252),
            accent: rgb(40, 72, 114),
            secondary: rgb(128, 192, 186),
            wood: rgb(196, 176, 146),
            dark: rgb(38, 54, 72),
            plant: rgb(92, 146, 110),
        },
    ),
    (
        &["rustic", "cabin", "lodge"],
        Palette {
            wall: rgb(222, 204, 178),
            floor: rgb(108, 70, 44),
            trim: rgb(92, 60, 40),
            accent: rgb(150, 60, 44),
            secondary: rgb(122, 132, 80),
            wood: rgb(120, 78, 46),
            dark: rgb(50, 34, 24),
            plant: rgb(78, 116, 62),
        },
    ),
    (
        &["farmhouse"],
        Palette {
            wall: rgb(246, 244, 238),
            floor: rgb(172, 132, 96),
            trim: rgb(255, 255, 252),
            accent: rgb(44, 44, 46),
            secondary: rgb(152, 172, 142),
            wood: rgb(160, 118, 80),
            dark: rgb(36, 36, 36),
            plant: rgb(86, 126, 80),
        },
    ),
    (
        &["japandi", "japanese", "zen"],
        Palette {
            wall: rgb(232, 226, 214),
            floor: rgb(198, 172, 136),
            trim: rgb(244, 240, 232),
            accent: rgb(92, 82, 72),
            secondary: rgb(164, 142, 112),
            wood: rgb(172, 140, 100),
            dark: rgb(40, 36, 32),
            plant: rgb(96, 122, 84),
        },
    ),
    (
        &["traditional", "classic", "victorian"],
        Palette {
            wall: rgb(212, 196, 168),
            floor: rgb(120, 78, 48),
            trim: rgb(240, 232, 214),
            accent: rgb(122, 40, 52),
            secondary: rgb(192, 152, 72),
            wood: rgb(100, 62, 38),
            dark: rgb(48, 30, 26),
            plant: rgb(70, 108, 66),
        },
    ),
    (
        &["modern", "contemporary"],
        Palette {
            wall: rgb(228, 228, 225),
            floor: rgb(122, 100, 82),
            trim: rgb(250, 250, 250),
            accent: rgb(46, 48, 54),
            secondary: rgb(214, 94, 50),
            wood: rgb(104, 78, 60),
            dark: rgb(24, 24, 26),
            plant: rgb(64, 120, 76),
        },
    ),
];

/// The palette for no style at all: warm neutrals.
const NEUTRAL_PALETTE: Palette = Palette {
    wall: rgb(232, 226, 218),
    floor: rgb(170, 138, 108),
    trim: rgb(248, 246, 242),
    accent: rgb(112, 120, 128),
    secondary: rgb(190, 150, 110),
    wood: rgb(140, 104, 74),
    dark: rgb(44, 42, 40),
    plant: rgb(82, 124, 78),
};

/// Lower-case letters and digits only, words joined by single spaces, so "Mid-Century
/// Modern" and "mid century  modern" pick the same palette.
fn normalize_key(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn palette_for_style(style_key: &str) -> Palette {
    if style_key.is_empty() {
        return NEUTRAL_PALETTE;
    }
    let joined = style_key.replace(' ', "");
    STYLE_PALETTES
        .iter()
        .find(|(keys, _)| keys.iter().any(|key| joined.contains(key)))
        .map(|(_, palette)| *palette)
        .unwrap_or_else(|| hashed_palette(style_key))
}

/// Any other style still gets a stable, coherent palette: hues spaced around one
/// hashed base hue, with muted walls and a saturated accent.
fn hashed_palette(style_key: &str) -> Palette {
    let mut hash = Fnv1a::new();
    hash.write_field(style_key.as_bytes());
    let seed = hash.finish();
    let hue = (seed % 360) as f32;
    let lightness_shift = ((seed >> 16) % 10) as f32 / 100.0;
    Palette {
        wall: hsl(hue, 0.28, 0.84 + lightness_shift / 2.0),
        floor: hsl(hue + 30.0, 0.32, 0.40 + lightness_shift),
        trim: hsl(hue, 0.12, 0.96),
        accent: hsl(hue + 180.0, 0.50, 0.42),
        secondary: hsl(hue + 110.0, 0.48, 0.56),
        wood: hsl(hue + 25.0, 0.35, 0.36),
        dark: hsl(hue, 0.22, 0.16),
        plant: hsl(120.0, 0.30, 0.38),
    }
}

fn hsl(hue_degrees: f32, saturation: f32, lightness: f32) -> Rgb {
    let hue = hue_degrees.rem_euclid(360.0) / 60.0;
    let chroma = (1.0 - (2.0 * lightness - 1.0).abs()) * saturation;
    let second = chroma * (1.0 - (hue % 2.0 - 1.0).abs());
    let (r, g, b) = match hue as u32 {
        0 => (chroma, second, 0.0),
        1 => (second, chroma, 0.0),
        2 => (0.0, chroma, second),
        3 => (0.0, second, chroma),
        4 => (second, 0.0, chroma),
        _ => (chroma, 0.0, second),
    };
    let offset = lightness - chroma / 2.0;
    let channel = |value: f32| ((value + offset) * 255.0).round().clamp(0.0, 255.0) as u8;
    Rgb([channel(r), channel(g), channel(b)])
}

fn mix(from: Rgb, to: Rgb, amount: f32) -> Rgb {
    let t = amount.clamp(0.0, 1.0);
    let channel =
        |i: usize| (from.0[i] as f32 + (to.0[i] as f32 - from.0[i] as f32) * t).round() as u8;
    Rgb([channel(0), channel(1), channel(2)])
}

fn shade(color: Rgb, factor: f32) -> Rgb {
    let channel = |i: usize| (color.0[i] as f32 * factor).round().clamp(0.0, 255.0) as u8;
    Rgb([channel(0), channel(1), channel(2)])
}

fn lighten(color: Rgb, amount: f32) -> Rgb {
    mix(color, Rgb([255, 255, 255]), amount)
}

fn lerp(from: f32, to: f32, t: f32) -> f32 {
    from + (to - from) * t
}

// ---------------------------------------------------------------------------------------
// Deterministic hashing and randomness (std's hashers are not stable across releases)

struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    /// Length-prefixed, so ("ab", "c") and ("a", "bc") hash differently.
    fn write_field(&mut self, bytes: &[u8]) {
        for byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// Uniform in `low..high`.
    fn range(&mut self, low: f32, high: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        low + (high - low) * unit
    }

    /// Uniform integer in `low..high` (high exclusive).
    fn int_range(&mut self, low: u32, high: u32) -> u32 {
        low + (self.next_u64() % u64::from(high.saturating_sub(low).max(1))) as u32
    }
}

// ---------------------------------------------------------------------------------------
// Raster canvas: RGB8, everything clipped to the image

#[derive(Clone, Copy, Debug)]
struct Pt {
    x: f32,
    y: f32,
}

impl Pt {
    fn new(x: f32, y: f32) -> Self {
        Pt { x, y }
    }
}

struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize, background: Rgb) -> Self {
        Canvas {
            width,
            height,
            pixels: background.0.repeat(width * height),
        }
    }

    /// Clamps a half-open span of pixel centres to the image.
    fn span(&self, from: f32, to: f32, limit: usize) -> (usize, usize) {
        let clamp = |value: f32| (value - 0.5).ceil().clamp(0.0, limit as f32) as usize;
        (clamp(from), clamp(to))
    }

    fn fill_row_with(
        &mut self,
        y: usize,
        x0: usize,
        x1: usize,
        paint: &impl Fn(usize, usize) -> Rgb,
    ) {
        let row = y * self.width * 3;
        for x in x0..x1 {
            let Rgb(color) = paint(x, y);
            self.pixels[row + x * 3..row + x * 3 + 3].copy_from_slice(&color);
        }
    }

    fn blend_row(&mut self, y: usize, x0: usize, x1: usize, color: Rgb, alpha: f32) {
        let row = y * self.width * 3;
        let keep = 1.0 - alpha;
        for pixel in self.pixels[row + x0 * 3..row + x1 * 3].chunks_exact_mut(3) {
            for (channel, target) in pixel.iter_mut().zip(color.0) {
                *channel = (*channel as f32 * keep + target as f32 * alpha) as u8;
            }
        }
    }

    fn fill_rect_with(
        &mut self,
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        paint: impl Fn(usize, usize) -> Rgb,
    ) {
        let (left, right) = self.span(x0, x1, self.width);
        let (top, bottom) = self.span(y0, y1, self.height);
        for y in top..bottom {
            self.fill_row_with(y, left, right, &paint);
        }
    }

    fn fill_rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, color: Rgb) {
        self.fill_rect_with(x0, y0, x1, y1, |_, _| color);
    }

    fn blend_rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, color: Rgb, alpha: f32) {
        let (left, right) = self.span(x0, x1, self.width);
        let (top, bottom) = self.span(y0, y1, self.height);
        for y in top..bottom {
            self.blend_row(y, left, right, color, alpha);
        }
    }

    /// Scanline fill with the even-odd rule; `visit` gets each covered row span.
    fn polygon_spans(&self, points: &[Pt], mut visit: impl FnMut(usize, usize, usize)) {
        if points.len() < 3 || points.iter().any(|p| !p.x.is_finite() || !p.y.is_finite()) {
            return;
        }
        let min_y = points.iter().map(|p| p.y).fold(f32::MAX, f32::min);
        let max_y = points.iter().map(|p| p.y).fold(f32::MIN, f32::max);
        let (top, bottom) = self.span(min_y, max_y, self.height);
        let mut crossings: Vec<f32> = Vec::with_capacity(points.len());
        for y in top..bottom {
            let center_y = y as f32 + 0.5;
            crossings.clear();
            for (index, a) in points.iter().enumerate() {
                let b = points[(index + 1) % points.len()];
                if (a.y <= center_y && center_y < b.y) || (b.y <= center_y && center_y < a.y) {
                    crossings.push(a.x + (center_y - a.y) * (b.x - a.x) / (b.y - a.y));
                }
            }
            crossings.sort_by(f32::total_cmp);
            for pair in crossings.chunks_exact(2) {
                let (left, right) = self.span(pair[0], pair[1], self.width);
                if left < right {
                    visit(y, left, right);
                }
            }
        }
    }

    fn fill_polygon_with(&mut self, points: &[Pt], paint: impl Fn(usize, usize) -> Rgb) {
        let mut spans = Vec::new();
        self.polygon_spans(points, |y, x0, x1| spans.push((y, x0, x1)));
        for (y, x0, x1) in spans {
            self.fill_row_with(y, x0, x1, &paint);
        }
    }

    fn fill_polygon(&mut self, points: &[Pt], color: Rgb) {
        self.fill_polygon_with(points, |_, _| color);
    }

    fn blend_polygon(&mut self, points: &[Pt], color: Rgb, alpha: f32) {
        let mut spans = Vec::new();
        self.polygon_spans(points, |y, x0, x1| spans.push((y, x0, x1)));
        for (y, x0, x1) in spans {
            self.blend_row(y, x0, x1, color, alpha);
        }
    }

    fn ellipse_spans(&self, center: Pt, rx: f32, ry: f32) -> Vec<(usize, usize, usize)> {
        let mut spans = Vec::new();
        if !(rx > 0.0 && ry > 0.0 && center.x.is_finite() && center.y.is_finite()) {
            return spans;
        }
        let (top, bottom) = self.span(center.y - ry, center.y + ry, self.height);
        for y in top..bottom {
            let dy = (y as f32 + 0.5 - center.y) / ry;
            let half = rx * (1.0 - dy * dy).max(0.0).sqrt();
            let (left, right) = self.span(center.x - half, center.x + half, self.width);
            if left < right {
                spans.push((y, left, right));
            }
        }
        spans
    }

    fn fill_ellipse_with(
        &mut self,
        center: Pt,
        rx: f32,
        ry: f32,
        paint: impl Fn(usize, usize) -> Rgb,
    ) {
        for (y, x0, x1) in self.ellipse_spans(center, rx, ry) {
            self.fill_row_with(y, x0, x1, &paint);
        }
    }

    fn fill_ellipse(&mut self, center: Pt, rx: f32, ry: f32, color: Rgb) {
        self.fill_ellipse_with(center, rx, ry, |_, _| color);
    }

    fn blend_ellipse(&mut self, center: Pt, rx: f32, ry: f32, color: Rgb, alpha: f32) {
        for (y, x0, x1) in self.ellipse_spans(center, rx, ry) {
            self.blend_row(y, x0, x1, color, alpha);
        }
    }

    /// A thick line drawn as a quad, so it needs no separate rasteriser.
    fn line(&mut self, from: Pt, to: Pt, thickness: f32, color: Rgb) {
        let (dx, dy) = (to.x - from.x, to.y - from.y);
        let length = (dx * dx + dy * dy).sqrt();
        if length <= f32::EPSILON {
            return;
        }
        let (nx, ny) = (
            -dy / length * thickness / 2.0,
            dx / length * thickness / 2.0,
        );
        self.fill_polygon(
            &[
                Pt::new(from.x + nx, from.y + ny),
                Pt::new(to.x + nx, to.y + ny),
                Pt::new(to.x - nx, to.y - ny),
                Pt::new(from.x - nx, from.y - ny),
            ],
            color,
        );
    }

    /// Writes `text` with the built-in font, each font pixel a `scale`×`scale` block.
    fn text(&mut self, x: usize, y: usize, scale: usize, text: &str, color: Rgb) {
        for (index, character) in text.chars().enumerate() {
            let left = x + index * GLYPH_ADVANCE * scale;
            if left >= self.width {
                break;
            }
            for (row, bits) in glyph(character).iter().enumerate() {
                for column in 0..GLYPH_WIDTH {
                    if bits & (1 << (GLYPH_WIDTH - 1 - column)) != 0 {
                        let px = (left + column * scale) as f32;
                        let py = (y + row * scale) as f32;
                        self.fill_rect(px, py, px + scale as f32, py + scale as f32, color);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Built-in 5×7 bitmap font: one byte per row, bit 4 is the leftmost pixel.

const GLYPH_WIDTH: usize = 5;
const GLYPH_HEIGHT: usize = 7;
/// Glyph plus one column of spacing.
const GLYPH_ADVANCE: usize = GLYPH_WIDTH + 1;

/// Drawn for any character the font lacks, so unsupported text is visibly "there".
const UNKNOWN_GLYPH: [u8; 7] = [
    0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111,
];

#[rustfmt::skip] // One glyph per line reads as a table.
fn glyph(character: char) -> [u8; 7] {
    match character.to_ascii_uppercase() {
        'A' => [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001],
        'B' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110],
        'C' => [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110],
        'D' => [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100],
        'E' => [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111],
        'F' => [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000],
        'G' => [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111],
        'H' => [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001],
        'I' => [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        'J' => [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100],
        'K' => [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001],
        'L' => [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111],
        'M' => [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001],
        'N' => [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001],
        'O' => [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110],
        'P' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000],
        'Q' => [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101],
        'R' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001],
        'S' => [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110],
        'T' => [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100],
        'U' => [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110],
        'V' => [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100],
        'W' => [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010],
        'X' => [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001],
        'Y' => [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100],
        'Z' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111],
        '0' => [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110],
        '1' => [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        '2' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111],
        '3' => [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110],
        '4' => [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010],
        '5' => [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110],
        '6' => [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110],
        '7' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000],
        '8' => [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110],
        '9' => [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0b01100, 0b01100],
        ',' => [0, 0, 0, 0, 0b01100, 0b00100, 0b01000],
        ':' => [0, 0b01100, 0b01100, 0, 0b01100, 0b01100, 0],
        ';' => [0, 0b01100, 0b01100, 0, 0b01100, 0b00100, 0b01000],
        '!' => [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0, 0b00100],
        '?' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0, 0b00100],
        '-' => [0, 0, 0, 0b11111, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0b11111],
        '\'' => [0b00100, 0b00100, 0b01000, 0, 0, 0, 0],
        '"' => [0b01010, 0b01010, 0b01010, 0, 0, 0, 0],
        '(' => [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010],
        ')' => [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000],
        '/' => [0, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0],
        '&' => [0b01100, 0b10010, 0b10100, 0b01000, 0b10101, 0b10010, 0b01101],
        '+' => [0, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0],
        '#' => [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010],
        '%' => [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011],
        '*' => [0, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0],
        '=' => [0, 0, 0b11111, 0, 0b11111, 0, 0],
        '<' => [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010],
        '>' => [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000],
        '@' => [0b01110, 0b10001, 0b00001, 0b01101, 0b10101, 0b10101, 0b01110],
        '$' => [0b00100, 0b01111, 0b10100, 0b01110, 0b00101, 0b11110, 0b00100],
        _ => UNKNOWN_GLYPH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(mode: &'a str, style: Option<&'a str>, prompt: Option<&'a str>) -> Request<'a> {
        Request {
            mode,
            room_type: Some("living_room"),
            style,
            prompt,
            variant: 0,
        }
    }

    fn modern_living_room() -> Request<'static> {
        request(
            "redesign",
            Some("modern"),
            Some("bright living room with oak floors"),
        )
    }

    fn decode(jpeg: &[u8]) -> image::RgbImage {
        image::load_from_memory(jpeg).unwrap().to_rgb8()
    }

    /// Mean absolute per-channel difference between two decoded images of one size.
    fn mean_difference(a: &[u8], b: &[u8]) -> f64 {
        let (a, b) = (decode(a), decode(b));
        assert_eq!(a.dimensions(), b.dimensions());
        let total: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        total as f64 / a.as_raw().len() as f64
    }

    fn assert_visibly_different(a: &Request, b: &Request) {
        let (first, second) = (
            draw_jpeg(a, 384, 256).unwrap(),
            draw_jpeg(b, 384, 256).unwrap(),
        );
        assert_ne!(first, second);
        // JPEG noise alone stays far below 1; a different scene moves whole regions.
        let difference = mean_difference(&first, &second);
        assert!(difference > 3.0, "images too similar: {difference}");
    }

    #[test]
    fn output_is_a_jpeg_of_the_requested_size() {
        for (width, height) in [(768, 512), (512, 768), (1024, 1024), (33, 17), (1, 1)] {
            let jpeg = draw_jpeg(&modern_living_room(), width, height).unwrap();
            assert_eq!(&jpeg[..3], &[0xFF, 0xD8, 0xFF]);
            assert_eq!(decode(&jpeg).dimensions(), (width, height));
        }
    }

    #[test]
    fn output_is_baseline_not_progressive() {
        let jpeg = draw_jpeg(&modern_living_room(), 64, 48).unwrap();
        // SOF0 marks baseline DCT; SOF2 would be progressive.
        assert!(jpeg.windows(2).any(|marker| marker == [0xFF, 0xC0]));
        assert!(!jpeg.windows(2).any(|marker| marker == [0xFF, 0xC2]));
    }

    #[test]
    fn same_request_gives_same_bytes() {
        let first = draw_jpeg(&modern_living_room(), 320, 200).unwrap();
        let second = draw_jpeg(&modern_living_room(), 320, 200).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn different_style_looks_different() {
        let base = modern_living_room();
        for style in ["scandinavian", "industrial", "boho", "some invented style"] {
            let other = Request {
                style: Some(style),
                ..modern_living_room()
            };
            assert_visibly_different(&base, &other);
        }
    }

    #[test]
    fn different_mode_looks_different() {
        let modes = ["redesign", "staging", "compose", "imagine"];
        for (index, first) in modes.iter().enumerate() {
            for second in &modes[index + 1..] {
                assert_visibly_different(
                    &Request {
                        mode: first,
                        ..modern_living_room()
                    },
                    &Request {
                        mode: second,
                        ..modern_living_room()
                    },
                );
            }
        }
    }

    #[test]
    fn different_prompt_looks_different() {
        let other = Request {
            prompt: Some("dark moody library with green velvet chairs"),
            ..modern_living_room()
        };
        assert_visibly_different(&modern_living_room(), &other);
    }

    #[test]
    fn different_variant_looks_different() {
        for mode in ["redesign", "staging", "compose", "imagine"] {
            let first = Request {
                mode,
                ..modern_living_room()
            };
            let second = Request {
                mode,
                variant: 1,
                ..modern_living_room()
            };
            assert_visibly_different(&first, &second);
        }
    }

    #[test]
    fn every_room_type_draws() {
        for room_type in [
            "living_room",
            "bedroom",
            "kitchen",
            "bathroom",
            "dining_room",
            "home_office",
            "garage",
        ] {
            let req = Request {
                room_type: Some(room_type),
                ..modern_living_room()
            };
            let jpeg = draw_jpeg(&req, 192, 128).unwrap();
            assert_eq!(decode(&jpeg).dimensions(), (192, 128));
        }
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let long_prompt = "a very long prompt ".repeat(500);
        let prompts = [
            None,
            Some(""),
            Some("   \n\t "),
            Some(long_prompt.as_str()),
            Some("salon baigné de lumière, 北欧スタイル, émojis 🛋️🪴, ß"),
            Some("\u{0}\u{7f}\u{200b}control characters"),
        ];
        for prompt in prompts {
            for mode in ["redesign", "staging", "compose", "imagine", "", "UNKNOWN"] {
                let req = Request {
                    mode,
                    room_type: None,
                    style: Some("Mid-Century Modern ✨"),
                    prompt,
                    variant: u32::MAX,
                };
                let jpeg = draw_jpeg(&req, 160, 96).unwrap();
                assert_eq!(decode(&jpeg).dimensions(), (160, 96));
            }
        }
    }

    #[test]
    fn empty_and_missing_prompt_draw_the_same() {
        let missing = request("staging", None, None);
        let empty = request("staging", None, Some("  "));
        assert_eq!(
            draw_jpeg(&missing, 96, 64).unwrap(),
            draw_jpeg(&empty, 96, 64).unwrap()
        );
    }

    #[test]
    fn impossible_sizes_are_errors_not_panics() {
        let req = modern_living_room();
        assert!(draw_jpeg(&req, 0, 10).is_err());
        assert!(draw_jpeg(&req, 10, 0).is_err());
        assert!(draw_jpeg(&req, 70_000, 10).is_err());
        assert!(draw_jpeg(&req, 60_000, 60_000).is_err());
    }

    #[test]
    fn known_styles_use_hand_picked_palettes() {
        for (style, index) in [
            ("modern", 10),
            ("Scandinavian", 1),
            ("industrial", 2),
            ("boho", 3),
            ("minimalist", 4),
            ("coastal", 5),
            ("rustic", 6),
            ("mid-century modern", 0),
        ] {
            assert_eq!(
                palette_for_style(&normalize_key(style)),
                STYLE_PALETTES[index].1,
                "{style}"
            );
        }
    }

    #[test]
    fn unknown_styles_get_distinct_stable_palettes() {
        let first = palette_for_style("art deco");
        assert_eq!(first, palette_for_style(&normalize_key("Art-Deco")));
        assert_ne!(first, palette_for_style("vaporwave"));
        assert_ne!(first, NEUTRAL_PALETTE);
    }

    #[test]
    fn font_covers_letters_digits_and_punctuation() {
        let covered = ('A'..='Z')
            .chain('a'..='z')
            .chain('0'..='9')
            .chain(".,:;!?-_'\"()/&+#%*=<>@$".chars());
        for character in covered {
            assert_ne!(glyph(character), UNKNOWN_GLYPH, "{character:?}");
        }
        assert_eq!(glyph(' '), [0; 7]);
        assert_eq!(glyph('é'), UNKNOWN_GLYPH);
        for character in (' '..='~').chain(['é', '🛋']) {
            assert!(glyph(character).iter().all(|row| *row < 1 << GLYPH_WIDTH));
        }
    }

    #[test]
    fn caption_text_truncates_by_characters() {
        assert_eq!(caption_text("  cosy   nook ", 30), "COSY NOOK");
        assert_eq!(caption_text("ééééé", 3), "ÉÉÉ...");
        assert_eq!(caption_text("abc def", 4), "ABC...");
    }

    /// Writes samples and prints the draw+encode time. Run in release:
    /// `LOCAL_IMAGE_SAMPLES=/tmp/samples cargo test --release --lib local_image -- --ignored --nocapture`
    #[test]
    #[ignore = "manual: writes sample images and prints timing"]
    fn write_samples_and_time_one_render() {
        let req = modern_living_room();
        let rounds = 20;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            draw_jpeg(&req, 768, 512).unwrap();
        }
        let size = draw_jpeg(&req, 768, 512).unwrap().len();
        println!(
            "draw+encode 768x512: {:?} per image, {size} bytes",
            started.elapsed() / rounds
        );
        let Ok(dir) = std::env::var("LOCAL_IMAGE_SAMPLES") else {
            return;
        };
        std::fs::create_dir_all(&dir).unwrap();
        let rooms = [
            "living_room",
            "bedroom",
            "kitchen",
            "bathroom",
            "dining_room",
            "office",
        ];
        let styles = [
            "modern",
            "scandinavian",
            "industrial",
            "boho",
            "coastal",
            "vaporwave",
        ];
        for (index, mode) in ["redesign", "staging", "compose", "imagine"]
            .iter()
            .enumerate()
        {
            for variant in 0..2 {
                let req = Request {
                    mode,
                    room_type: Some(rooms[(index + variant as usize) % rooms.len()]),
                    style: Some(styles[(index * 2 + variant as usize) % styles.len()]),
                    prompt: Some("Warm and airy, with linen curtains and a reading nook"),
                    variant,
                };
                let jpeg = draw_jpeg(&req, 768, 512).unwrap();
                std::fs::write(format!("{dir}/{mode}_{variant}.jpg"), jpeg).unwrap();
            }
        }
    }
}
