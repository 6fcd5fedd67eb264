//! First display path: a published frame becomes Guacamole drawing instructions on layer 0.
//!
//! Damage ops are replayed in order: `Copy` → `copy`, `Dirty` → `rect`+`cfill` when the area is one colour,
//! otherwise a PNG `img` stream. The display-pipeline issue replaces the per-rectangle PNG with the tiled
//! planner and the encoder pool; the ordering rules here stay.

use bytes::BytesMut;
use guac_proto::encode;
use shm_proto::{DamageOp, Frame, FrameReader, Rect};

/// Composite mode "source over destination" (libguac `GUAC_COMP_OVER`), what guacd uses for `img`/`copy`.
pub const MODE_OVER: i64 = 14;
/// Composite mode "source" (libguac `GUAC_COMP_SRC`): replaces alpha too; used for the cursor buffer.
pub const MODE_SRC: i64 = 12;
/// Off-screen buffer holding the cursor image.
pub const CURSOR_BUFFER: i64 = -1;

/// Above this many dirty rectangles in a row, one bounding rectangle is cheaper than many PNG headers.
const MERGE_THRESHOLD: usize = 16;

/// Per-user output state: stream numbers and what the client already knows.
#[derive(Debug, Default)]
pub struct ClientDisplay {
    next_stream: u32,
    size: (u32, u32),
}

impl ClientDisplay {
    pub fn stream(&mut self) -> u32 {
        // guacamole-common-js reuses a stream slot once it has seen `end`; cycling keeps indices small.
        self.next_stream = self.next_stream % 1000 + 1;
        self.next_stream
    }
}

/// Image formats a client declared in its handshake (`image` instruction), besides PNG which every client takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageFormats {
    pub jpeg: bool,
    pub webp: bool,
}

impl ImageFormats {
    /// From the handshake's `image` mimetypes.
    pub fn from_mimetypes<S: AsRef<str>>(mimetypes: &[S]) -> ImageFormats {
        let has = |m: &str| mimetypes.iter().any(|s| s.as_ref().eq_ignore_ascii_case(m));
        ImageFormats { jpeg: has("image/jpeg"), webp: has("image/webp") }
    }
}

/// How a frame is encoded for the users that receive it: the contract between the session loop (which
/// knows the users, their lag and the configuration) and the planner (which knows pixels).
#[derive(Debug, Clone, Copy, Default)]
#[allow(dead_code, reason = "the planner (display-pipeline issue) reads these")]
pub struct EncodeSettings {
    /// The naive baseline for benchmarks: every damaged rectangle as one PNG, no hashing, no copy detection.
    pub naive: bool,
    /// The receiving users' processing lag in milliseconds, from their `sync` echoes; lossy quality follows it.
    pub lag_ms: u32,
    /// What the receiving users accept besides PNG (the intersection when several users share one encode).
    pub formats: ImageFormats,
}

/// Appends everything a client that shows nothing needs to show `frame` (a joining user, a user being
/// resynchronised after falling behind); `client` is that user's display state and is updated.
#[allow(dead_code, reason = "the session loop calls this once sharing and refresh land")]
pub fn encode_full(
    reader: &FrameReader,
    frame: &Frame,
    client: &mut ClientDisplay,
    settings: &EncodeSettings,
    out: &mut BytesMut,
) {
    *client = ClientDisplay::default();
    let mut full = frame.clone();
    full.overflow = true;
    encode_frame(reader, &full, client, settings, out);
}

/// When the planner wants to send something without a new frame (a lossless refresh of a region that was
/// sent lossy and has been quiet since); `None` when nothing is due.
#[allow(dead_code, reason = "the session loop calls this once sharing and refresh land")]
pub fn refresh_due(_client: &ClientDisplay) -> Option<std::time::Instant> {
    None
}

/// Appends the refresh that `refresh_due` announced (nothing when nothing is due).
#[allow(dead_code, reason = "the session loop calls this once sharing and refresh land")]
pub fn encode_refresh(_client: &mut ClientDisplay, _settings: &EncodeSettings, _out: &mut BytesMut) {}

/// Appends the instructions for `frame` to `out` (without the final `sync`).
pub fn encode_frame(
    reader: &FrameReader,
    frame: &Frame,
    client: &mut ClientDisplay,
    _settings: &EncodeSettings,
    out: &mut BytesMut,
) {
    let mut scratch = Vec::new();
    if frame.resized || client.size != (frame.width, frame.height) {
        encode(out, "size").int(0).uint(frame.width.into()).uint(frame.height.into()).finish();
        client.size = (frame.width, frame.height);
    }
    let ops = if frame.overflow { vec![DamageOp::Dirty(frame.full_rect())] } else { merge_dirty_runs(&frame.ops) };
    for op in ops {
        match op {
            DamageOp::Copy { src_x, src_y, dst } => {
                encode(out, "copy")
                    .int(0)
                    .uint(src_x.into())
                    .uint(src_y.into())
                    .uint(dst.w.into())
                    .uint(dst.h.into())
                    .int(MODE_OVER)
                    .int(0)
                    .uint(dst.x.into())
                    .uint(dst.y.into())
                    .finish();
            }
            DamageOp::Dirty(rect) => {
                reader.read_rect(frame, rect, &mut scratch);
                encode_pixels(out, client, rect, &scratch);
            }
        }
    }
}

/// Replaces long runs of consecutive `Dirty` ops by their bounding box, unless the box would cover the
/// source of a later copy (the client would then copy final instead of intermediate pixels).
fn merge_dirty_runs(ops: &[DamageOp]) -> Vec<DamageOp> {
    let mut out = Vec::with_capacity(ops.len());
    let mut i = 0;
    while i < ops.len() {
        let run_end = ops[i..].iter().position(|op| !matches!(op, DamageOp::Dirty(_))).map_or(ops.len(), |p| i + p);
        if run_end - i > MERGE_THRESHOLD {
            let bbox = ops[i..run_end].iter().fold(Rect::new(0, 0, 0, 0), |acc, op| acc.union(&op.target()));
            let covers_later_source = ops[run_end..].iter().filter_map(DamageOp::source).any(|s| s.intersects(&bbox));
            if !covers_later_source {
                out.push(DamageOp::Dirty(bbox));
                i = run_end;
                continue;
            }
        }
        out.extend_from_slice(&ops[i..run_end.max(i + 1)]);
        i = run_end.max(i + 1);
    }
    out
}

/// One rectangle of BGRX pixels: a solid fill or a PNG.
fn encode_pixels(out: &mut BytesMut, client: &mut ClientDisplay, rect: Rect, bgrx: &[u8]) {
    if let Some([b, g, r, _]) = solid_colour(bgrx) {
        encode(out, "rect")
            .int(0)
            .uint(rect.x.into())
            .uint(rect.y.into())
            .uint(rect.w.into())
            .uint(rect.h.into())
            .finish();
        encode(out, "cfill").int(MODE_OVER).int(0).uint(r.into()).uint(g.into()).uint(b.into()).uint(255).finish();
        return;
    }
    let mut rgb = Vec::with_capacity(bgrx.len() / 4 * 3);
    for px in bgrx.chunks_exact(4) {
        rgb.extend_from_slice(&[px[2], px[1], px[0]]);
    }
    let png = encode_png(rect.w, rect.h, png::ColorType::Rgb, &rgb);
    let stream = client.stream();
    encode(out, "img")
        .uint(stream.into())
        .int(MODE_OVER)
        .int(0)
        .str("image/png")
        .uint(rect.x.into())
        .uint(rect.y.into())
        .finish();
    guac_proto::encode_blobs(out, stream, &png);
    encode(out, "end").uint(stream.into()).finish();
}

fn solid_colour(bgrx: &[u8]) -> Option<[u8; 4]> {
    let first: [u8; 4] = bgrx.get(..4)?.try_into().ok()?;
    let rgb = |p: &[u8]| p[..3] == first[..3];
    bgrx.chunks_exact(4).all(rgb).then_some(first)
}

pub fn encode_png(width: u32, height: u32, colour: png::ColorType, pixels: &[u8]) -> Vec<u8> {
    let mut png_bytes = Vec::with_capacity(pixels.len() / 4 + 64);
    let mut encoder = png::Encoder::new(&mut png_bytes, width, height);
    encoder.set_color(colour);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::Filter::Sub);
    // Writing into a Vec cannot fail and the dimensions match the data by construction.
    if let Ok(mut writer) = encoder.write_header() {
        let _ = writer.write_image_data(pixels);
    }
    png_bytes
}

/// The cursor: an image in an off-screen buffer, then `cursor` pointing at it.
pub fn encode_cursor(out: &mut BytesMut, client: &mut ClientDisplay, cursor: &Cursor) {
    let mut rgba = Vec::with_capacity(cursor.bgra.len());
    for px in cursor.bgra.chunks_exact(4) {
        rgba.extend_from_slice(&[px[2], px[1], px[0], px[3]]);
    }
    let png = encode_png(cursor.width, cursor.height, png::ColorType::Rgba, &rgba);
    encode(out, "size").int(CURSOR_BUFFER).uint(cursor.width.into()).uint(cursor.height.into()).finish();
    let stream = client.stream();
    encode(out, "img").uint(stream.into()).int(MODE_SRC).int(CURSOR_BUFFER).str("image/png").uint(0).uint(0).finish();
    guac_proto::encode_blobs(out, stream, &png);
    encode(out, "end").uint(stream.into()).finish();
    encode(out, "cursor")
        .uint(cursor.hotspot_x.into())
        .uint(cursor.hotspot_y.into())
        .int(CURSOR_BUFFER)
        .uint(0)
        .uint(0)
        .uint(cursor.width.into())
        .uint(cursor.height.into())
        .finish();
}

/// A cursor image from a worker, already validated.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub hotspot_x: u32,
    pub hotspot_y: u32,
    pub width: u32,
    pub height: u32,
    pub bgra: Vec<u8>,
}

impl Cursor {
    /// Validates what a worker sent; `None` means the worker broke the contract.
    pub fn validate(hotspot_x: u32, hotspot_y: u32, width: u32, height: u32, bgra: Vec<u8>) -> Option<Cursor> {
        let max = shm_proto::control::MAX_CURSOR_SIDE;
        let ok = (1..=max).contains(&width)
            && (1..=max).contains(&height)
            && hotspot_x < width
            && hotspot_y < height
            && bgra.len() == width as usize * height as usize * 4;
        ok.then_some(Cursor { hotspot_x, hotspot_y, width, height, bgra })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirty(x: u32) -> DamageOp {
        DamageOp::Dirty(Rect::new(x, 0, 1, 1))
    }

    #[test]
    fn long_dirty_runs_merge_unless_a_later_copy_reads_them() {
        let run: Vec<DamageOp> = (0..20).map(dirty).collect();
        assert_eq!(merge_dirty_runs(&run), vec![DamageOp::Dirty(Rect::new(0, 0, 20, 1))]);
        let mut with_copy = run.clone();
        with_copy.push(DamageOp::Copy { src_x: 25, src_y: 0, dst: Rect::new(40, 0, 2, 1) });
        assert_eq!(merge_dirty_runs(&with_copy).len(), 2);
        let mut reading_copy = run.clone();
        reading_copy.push(DamageOp::Copy { src_x: 10, src_y: 0, dst: Rect::new(40, 0, 2, 1) });
        assert_eq!(merge_dirty_runs(&reading_copy).len(), 21);
        let short: Vec<DamageOp> = (0..3).map(dirty).collect();
        assert_eq!(merge_dirty_runs(&short), short);
    }

    #[test]
    fn solid_detection_ignores_padding_byte() {
        assert_eq!(solid_colour(&[1, 2, 3, 0, 1, 2, 3, 9]), Some([1, 2, 3, 0]));
        assert_eq!(solid_colour(&[1, 2, 3, 0, 1, 2, 4, 0]), None);
    }

    #[test]
    fn cursor_validation() {
        assert!(Cursor::validate(0, 0, 2, 2, vec![0; 16]).is_some());
        assert!(Cursor::validate(2, 0, 2, 2, vec![0; 16]).is_none());
        assert!(Cursor::validate(0, 0, 2, 2, vec![0; 15]).is_none());
        assert!(Cursor::validate(0, 0, 0, 2, vec![]).is_none());
        assert!(Cursor::validate(0, 0, 4096, 1, vec![0; 4096 * 4]).is_none());
    }

    #[test]
    fn png_round_trips() {
        let png_bytes = encode_png(2, 1, png::ColorType::Rgb, &[255, 0, 0, 0, 255, 0]);
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        assert_eq!(&buf[..6], &[255, 0, 0, 0, 255, 0]);
    }
}
