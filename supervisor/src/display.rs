//! The display glue: a published frame becomes Guacamole drawing instructions on layer 0 through the
//! planner of `guac-display` (tiles, hashes, copy/scroll detection, a format per region, lossless
//! refresh), or the naive baseline with `--display-mode naive`. The shared-memory frame is read here;
//! what the client shows is tracked per user in [`ClientDisplay`].

use std::time::Instant;

use bytes::BytesMut;
use guac_display::{Damage, Planner, Settings, Source};
use guac_proto::encode;
use shm_proto::{Frame, FrameReader, Rect};

/// Composite mode "source" (libguac `GUAC_COMP_SRC`): replaces alpha too; used for the cursor buffer.
pub const MODE_SRC: i64 = 12;
/// Off-screen buffer holding the cursor image.
pub const CURSOR_BUFFER: i64 = -1;

/// Per-user output state: stream numbers and what the client already shows (the planner's tile hashes
/// and the pixels of tiles it sent lossy, for their refresh).
#[derive(Debug, Default)]
pub struct ClientDisplay {
    planner: Planner,
    /// Size of the last frame's output: the next frame's buffer is reserved at that size up front, so it
    /// is not grown (and copied) step by step while the encoder fills it.
    last_len: usize,
}

/// The most reserved up front for a frame's output.
const MAX_RESERVE: usize = 8 << 20;

impl ClientDisplay {
    pub fn stream(&mut self) -> u32 {
        self.planner.stream()
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
pub struct EncodeSettings {
    /// The naive baseline for benchmarks: every damaged rectangle as one PNG, no hashing, no copy detection.
    pub naive: bool,
    /// The receiving users' processing lag in milliseconds, from their `sync` echoes; lossy quality follows it.
    pub lag_ms: u32,
    /// What the receiving users accept besides PNG (the intersection when several users share one encode).
    pub formats: ImageFormats,
}

impl EncodeSettings {
    fn planner(&self) -> Settings {
        Settings { naive: self.naive, lag_ms: self.lag_ms, jpeg: self.formats.jpeg, webp: self.formats.webp }
    }
}

/// A published frame in shared memory as the planner's pixel source.
struct ShmSource<'a> {
    reader: &'a FrameReader,
    frame: &'a Frame,
}

impl Source for ShmSource<'_> {
    fn read_rect(&self, rect: Rect, dst: &mut Vec<u8>) {
        self.reader.read_rect(self.frame, rect, dst);
    }

    fn read_rect_strided(&self, rect: Rect, dst: &mut [u8], stride: usize) {
        // Row by row straight into the planner's scratch frame: one copy out of shared memory, no zeroing.
        let row = rect.w as usize * 4;
        for i in 0..rect.h {
            self.reader.read_row(self.frame, rect, i, &mut dst[i as usize * stride..][..row]);
        }
    }
}

/// Appends everything a client that shows nothing needs to show `frame` (a joining user, a user being
/// resynchronised after falling behind); `client` is that user's display state and is updated.
pub fn encode_full(
    reader: &FrameReader,
    frame: &Frame,
    client: &mut ClientDisplay,
    settings: &EncodeSettings,
    out: &mut BytesMut,
) {
    let damage = Damage { width: frame.width, height: frame.height, ops: &[], full: true };
    let src = ShmSource { reader, frame };
    client.planner.encode_full(&src, &damage, &settings.planner(), Instant::now(), out);
}

/// When the planner wants to send something without a new frame (a lossless refresh of tiles that were
/// sent lossy and have been quiet since); `None` when nothing is due.
pub fn refresh_due(client: &ClientDisplay) -> Option<Instant> {
    client.planner.refresh_due()
}

/// Appends the refresh that `refresh_due` announced (nothing when nothing is due yet).
pub fn encode_refresh(client: &mut ClientDisplay, _settings: &EncodeSettings, out: &mut BytesMut) {
    client.planner.encode_refresh(Instant::now(), out);
}

/// Appends the instructions for `frame` to `out` (without the final `sync`).
pub fn encode_frame(
    reader: &FrameReader,
    frame: &Frame,
    client: &mut ClientDisplay,
    settings: &EncodeSettings,
    out: &mut BytesMut,
) {
    let damage =
        Damage { width: frame.width, height: frame.height, ops: &frame.ops, full: frame.overflow || frame.resized };
    let src = ShmSource { reader, frame };
    let start = out.len();
    out.reserve(client.last_len.min(MAX_RESERVE));
    client.planner.encode_frame(&src, &damage, &settings.planner(), Instant::now(), out);
    client.last_len = out.len() - start;
}

/// The cursor: an image in an off-screen buffer, then `cursor` pointing at it.
pub fn encode_cursor(out: &mut BytesMut, client: &mut ClientDisplay, cursor: &Cursor) {
    let mut rgba = Vec::with_capacity(cursor.bgra.len());
    for px in cursor.bgra.chunks_exact(4) {
        rgba.extend_from_slice(&[px[2], px[1], px[0], px[3]]);
    }
    let mut png = Vec::new();
    guac_display::image::png(cursor.width, cursor.height, guac_display::image::PngPixels::Rgba(&rgba), &mut png);
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

    #[test]
    fn cursor_validation() {
        assert!(Cursor::validate(0, 0, 2, 2, vec![0; 16]).is_some());
        assert!(Cursor::validate(2, 0, 2, 2, vec![0; 16]).is_none());
        assert!(Cursor::validate(0, 0, 2, 2, vec![0; 15]).is_none());
        assert!(Cursor::validate(0, 0, 0, 2, vec![]).is_none());
        assert!(Cursor::validate(0, 0, 4096, 1, vec![0; 4096 * 4]).is_none());
    }

    #[test]
    fn formats_from_handshake() {
        let f = ImageFormats::from_mimetypes(&["image/png", "IMAGE/JPEG"]);
        assert_eq!(f, ImageFormats { jpeg: true, webp: false });
        let s = EncodeSettings { naive: false, lag_ms: 70, formats: f }.planner();
        assert_eq!((s.jpeg, s.webp, s.quality()), (true, false, 40));
    }
}
