//! guacr's display planner: turns a frame (a complete BGRX image plus the damage that says what changed)
//! into Guacamole drawing instructions for one user, spending as few CPU cycles and bytes as possible.
//!
//! Per user, the planner remembers what the client shows as hashes of 64-pixel row segments: one 64-bit
//! xxh3 per row of each 64×64 tile. A frame then costs:
//! - **nothing** for tiles the damage does not touch, and only a hash for damaged tiles whose pixels the
//!   client already shows;
//! - a `copy` for each worker `Copy` hint, and for a vertical shift of the changed area that the planner
//!   finds itself by matching row-segment hashes against what the client shows (scrolling without hints);
//! - `rect` + `cfill` for a tile of one colour;
//! - one image per rectangle of neighbouring changed tiles: PNG with a palette when it has at most 256
//!   colours (text, UI), JPEG for many-coloured tiles that keep changing (video, animation) when the client
//!   takes JPEG, lossless WebP for other many-coloured areas when the client takes WebP, PNG otherwise.
//!
//! Lossy tiles are remembered with their exact pixels and repainted losslessly once quiet for
//! [`REFRESH_AFTER`], so text never stays blurry ([`Planner::refresh_due`], [`Planner::encode_refresh`]).
//!
//! Sans-IO: pixels come through [`Source`], time is a parameter, output is appended to a `BytesMut`.
//!
//! Invariant: after any sequence of frames, a client that applied every instruction (in order) shows
//! exactly the last frame's pixels, except in tiles sent lossy, which are exact again after the refresh.
//! `tests/planner.rs` checks this with a real compositor on random surfaces and damage.

#![forbid(unsafe_code)]

pub mod image;
mod naive;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use guac_proto::encode;
pub use shm_proto::{DamageOp, Rect};

/// Tile side in pixels.
pub const TILE: u32 = 64;
/// Composite mode "source over destination" (libguac `GUAC_COMP_OVER`), what guacd uses for `img`/`copy`.
pub const MODE_OVER: i64 = 14;
/// A tile sent lossy is repainted losslessly once it has not changed for this long.
pub const REFRESH_AFTER: Duration = Duration::from_millis(300);
/// Changes of a tile closer together than this count as one streak; a streak of [`FAST_STREAK`] makes
/// the tile "fast-changing" (a JPEG candidate).
const FAST_WINDOW: Duration = Duration::from_millis(250);
const FAST_STREAK: u8 = 3;
/// The fewest rows a detected scroll must move; smaller matches are left to the tiles.
const MIN_SCROLL_ROWS: u32 = 16;
/// Below this many pixels a many-coloured region stays PNG even when the client takes WebP (WebP's
/// header and transform set-up do not pay for tiny images).
const WEBP_MIN_PIXELS: u32 = 128 * 128;
/// The cost model for merging: bytes of one image's framing (`img`, `end`, blob headers, PNG/JPEG
/// headers), of one `rect`+`cfill`, and of a 64×64 solid tile inside a compressed image.
const IMAGE_OVERHEAD: u32 = 160;
const FILL_COST: u32 = 70;
const SOLID_TILE_IN_IMAGE: u32 = 40;
/// Segment hash meaning "unknown": never produced by [`seg_hash`].
const UNKNOWN: u64 = 0;

/// Where the planner reads pixels: the frame being encoded (a complete image).
pub trait Source {
    /// BGRX pixels of `rect` (which lies inside the frame), rows packed at `rect.w * 4` bytes, into `dst`.
    fn read_rect(&self, rect: Rect, dst: &mut Vec<u8>);

    /// BGRX pixels of `rect` into `dst`, row `i` at `dst[i * stride..][..rect.w * 4]` (`dst` is long enough).
    /// The planner reads each damaged pixel once this way, into a frame-sized scratch buffer that hashing and
    /// encoding then share; a source that can copy rows in place (shared memory) should override it, the
    /// default goes through [`Source::read_rect`].
    fn read_rect_strided(&self, rect: Rect, dst: &mut [u8], stride: usize) {
        let mut packed = Vec::new();
        self.read_rect(rect, &mut packed);
        let row = rect.w as usize * 4;
        for (i, r) in packed.chunks_exact(row.max(1)).enumerate() {
            dst[i * stride..][..row].copy_from_slice(r);
        }
    }
}

/// A planner's working buffers, which only live for one call: one set per encoder thread, not per user.
/// Kept per planner, they stayed at the size of the largest image each session ever painted (its first,
/// full-screen frame: several MiB per session).
#[derive(Debug, Default, Clone)]
struct Scratch {
    /// Frame-sized BGRX, laid out at the frame's width: what `hash_tiles` read, `image` encodes, so every
    /// damaged pixel of a tile read whole crosses shared memory once (a `PARTIAL` tile's paint reads again).
    frame: Vec<u8>,
    /// One image's BGRX pixels, its RGB conversion, and the encoded image.
    buf: Vec<u8>,
    conv: Vec<u8>,
    encoded: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

/// What changed in a frame.
#[derive(Debug, Clone, Copy)]
pub struct Damage<'a> {
    pub width: u32,
    pub height: u32,
    /// In the order they happened: `Copy` moved pixels the client shows, `Dirty` needs the final pixels.
    pub ops: &'a [DamageOp],
    /// Everything may have changed (the damage list overflowed, or a joining user).
    pub full: bool,
}

/// How a frame is encoded for its user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// The baseline: every damaged rectangle as one PNG, no hashing, no copy detection.
    pub naive: bool,
    /// The user's processing lag in ms; lossy quality follows it.
    pub lag_ms: u32,
    /// The user accepts `image/jpeg`.
    pub jpeg: bool,
    /// The user accepts `image/webp`.
    pub webp: bool,
}

impl Settings {
    /// JPEG quality like guacd: 90 − (lag − 20), clamped to 30..=90.
    pub fn quality(&self) -> u8 {
        (90 - (i64::from(self.lag_ms) - 20)).clamp(30, 90) as u8
    }
}

/// What one call produced, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub png: u32,
    pub jpeg: u32,
    pub webp: u32,
    pub fills: u32,
    /// `copy` from worker hints.
    pub copies: u32,
    /// `copy` found by scroll detection.
    pub scrolls: u32,
    /// Tiles repainted losslessly because their lossy version went quiet.
    pub refreshed_tiles: u32,
    /// Damaged tiles whose pixels the client already showed (skipped).
    pub unchanged_tiles: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct TileInfo {
    last_change: Option<Instant>,
    streak: u8,
}

/// A tile the client shows lossy: its exact pixels (BGRX, `w * h * 4`) for the refresh.
#[derive(Debug, Clone)]
struct Lossy {
    since: Instant,
    pixels: Vec<u8>,
}

// Per-frame tile flags.
const DIRTY: u8 = 1;
const REHASH: u8 = 2;
const FORCE: u8 = 4;
const HASHED: u8 = 8;
const CHANGED: u8 = 16;
/// Hashed from its damaged rows only: `scratch.frame` does not hold all of the tile's pixels.
const PARTIAL: u8 = 32;

/// One user's display state: what its client shows, as far as the planner knows.
#[derive(Debug, Default, Clone)]
pub struct Planner {
    next_stream: u32,
    width: u32,
    height: u32,
    cols: u32,
    rows: u32,
    /// Row-segment hashes of what the client shows (exact pixels, also where it shows them lossy):
    /// `seg[y * cols + c]` covers pixels `c*64 .. min(c*64+64, width)` of row `y`.
    seg: Vec<u64>,
    /// The frame's segment hashes for the tiles hashed in this call (same layout).
    next: Vec<u64>,
    tiles: Vec<TileInfo>,
    lossy: BTreeMap<usize, Lossy>,
    flags: Vec<u8>,
    solid: Vec<Option<[u8; 3]>>,
    /// The encoder thread's buffers during a call; empty between calls.
    scratch: Scratch,
    /// This frame's dirty rectangles (clipped to the frame); `None` when the whole frame counts as dirty.
    dirty: Option<Vec<Rect>>,
}

fn seg_hash(bytes: &[u8]) -> u64 {
    match xxhash_rust::xxh3::xxh3_64(bytes) {
        UNKNOWN => 1,
        h => h,
    }
}

/// Hashing for maps keyed by values that are hashes already (segment and row hashes) or small shifts:
/// a multiply instead of SipHash, which showed up in profiles of scroll detection.
#[derive(Default, Clone, Copy)]
struct PassThrough;

#[derive(Default)]
struct PassThroughHasher(u64);

impl std::hash::BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

impl std::hash::Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}

/// A rectangle of tiles `[c0, c1) × [r0, r1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TileRect {
    c0: u32,
    c1: u32,
    r0: u32,
    r1: u32,
}

impl Planner {
    pub fn new() -> Planner {
        Planner::default()
    }

    /// The next image stream index. guacamole-common-js reuses a stream slot once it has seen `end`;
    /// cycling keeps indices small.
    pub fn stream(&mut self) -> u32 {
        self.next_stream = self.next_stream % 1000 + 1;
        self.next_stream
    }

    /// The size the client's default layer has.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Forgets what the client shows (it shows nothing: a joining or resynchronised user).
    pub fn forget(&mut self) {
        let stream = self.next_stream;
        *self = Planner { next_stream: stream, ..Planner::default() };
    }

    /// Appends everything needed to show `damage.width × damage.height` of `src` to a client that
    /// shows nothing.
    pub fn encode_full(
        &mut self,
        src: &dyn Source,
        damage: &Damage<'_>,
        s: &Settings,
        now: Instant,
        out: &mut BytesMut,
    ) -> Stats {
        self.forget();
        let full = Damage { full: true, ops: &[], ..*damage };
        self.encode_frame(src, &full, s, now, out)
    }

    /// When a lossless refresh of lossy tiles is due (`None`: nothing is lossy).
    pub fn refresh_due(&self) -> Option<Instant> {
        self.lossy.values().map(|l| l.since + REFRESH_AFTER).min()
    }

    /// The tiles the client shows lossy, waiting for their refresh (everything else it shows exactly).
    pub fn lossy_tiles(&self) -> Vec<Rect> {
        self.lossy.keys().map(|t| self.tile_rect(*t)).collect()
    }

    /// Appends the lossless repaint of every lossy tile that has been quiet for [`REFRESH_AFTER`].
    pub fn encode_refresh(&mut self, now: Instant, out: &mut BytesMut) -> Stats {
        let mut st = Stats::default();
        self.with_scratch(|p| p.refresh(now, out, &mut st));
        st
    }

    /// Runs `f` with this thread's [`Scratch`] lent to the planner.
    fn with_scratch<T>(&mut self, f: impl FnOnce(&mut Planner) -> T) -> T {
        self.scratch = SCRATCH.take();
        let result = f(self);
        SCRATCH.set(std::mem::take(&mut self.scratch));
        result
    }

    /// Appends the instructions that turn what the client shows into `src` (without the final `sync`).
    pub fn encode_frame(
        &mut self,
        src: &dyn Source,
        d: &Damage<'_>,
        s: &Settings,
        now: Instant,
        out: &mut BytesMut,
    ) -> Stats {
        if s.naive {
            return naive::encode_naive(self, src, d, out);
        }
        self.with_scratch(|p| p.encode_planned(src, d, s, now, out))
    }

    fn encode_planned(
        &mut self,
        src: &dyn Source,
        d: &Damage<'_>,
        s: &Settings,
        now: Instant,
        out: &mut BytesMut,
    ) -> Stats {
        let mut st = Stats::default();
        let resized = (self.width, self.height) != (d.width, d.height);
        if resized {
            encode(out, "size").int(0).uint(d.width.into()).uint(d.height.into()).finish();
            self.reset(d.width, d.height);
        }
        if self.cols == 0 || self.rows == 0 {
            return st;
        }
        // Only growth is zeroed; stale pixels elsewhere are never read (only hashed tiles are).
        let need = self.width as usize * self.height as usize * 4;
        if self.scratch.frame.len() < need {
            self.scratch.frame.resize(need, 0);
        }
        self.flags.clear();
        self.flags.resize((self.cols * self.rows) as usize, 0);
        self.dirty = None;
        if d.full || resized {
            self.flags.fill(DIRTY);
        } else {
            let (w, h) = (self.width, self.height);
            let clipped = d.ops.iter().filter_map(|op| match op {
                DamageOp::Dirty(r) if r.x < w && r.y < h => {
                    Some(Rect::new(r.x, r.y, r.w.min(w - r.x), r.h.min(h - r.y)))
                }
                _ => None,
            });
            self.dirty = Some(clipped.collect());
            for op in d.ops {
                match *op {
                    DamageOp::Copy { src_x, src_y, dst } => {
                        if self.hint_copy(src_x, src_y, dst, out) {
                            st.copies += 1;
                        }
                    }
                    DamageOp::Dirty(r) => self.mark(r, DIRTY),
                }
            }
        }
        self.hash_tiles(src);
        // Tiles a hint copy touched but no damage did: the client now shows the frame's pixels there.
        for t in 0..self.flags.len() {
            if self.flags[t] & (HASHED | DIRTY | FORCE) == HASHED {
                self.sync_tile(t);
            }
        }
        self.find_changed();
        // A frame with copy hints comes from a server that reports its scrolls itself (Xtigervnc's
        // CopyRect): searching for another costs more than it finds there (a followed log: every frame).
        let hinted = d.ops.iter().any(|op| matches!(op, DamageOp::Copy { .. }));
        if !resized && !hinted {
            if let Some(sc) = self.detect_scroll() {
                self.apply_scroll(sc, out);
                st.scrolls += 1;
                self.find_changed();
            }
        }
        st.unchanged_tiles = self.flags.iter().filter(|f| **f & (DIRTY | CHANGED | FORCE) == DIRTY).count() as u32;
        self.paint(src, s, now, out, &mut st);
        self.refresh(now, out, &mut st);
        st
    }

    fn reset(&mut self, width: u32, height: u32) {
        self.width = width;
        self.height = height;
        self.cols = width.div_ceil(TILE);
        self.rows = height.div_ceil(TILE);
        let segs = (self.cols * height) as usize;
        self.seg = vec![UNKNOWN; segs];
        self.next = vec![UNKNOWN; segs];
        self.tiles = vec![TileInfo::default(); (self.cols * self.rows) as usize];
        self.solid = vec![None; (self.cols * self.rows) as usize];
        self.lossy.clear();
    }

    fn tile_rect(&self, t: usize) -> Rect {
        let (c, r) = (t as u32 % self.cols, t as u32 / self.cols);
        let (x, y) = (c * TILE, r * TILE);
        Rect::new(x, y, TILE.min(self.width - x), TILE.min(self.height - y))
    }

    /// Tiles touched by `r` (clipped to the frame).
    fn tiles_of(&self, r: Rect) -> Option<TileRect> {
        let x1 = (r.x.saturating_add(r.w)).min(self.width);
        let y1 = (r.y.saturating_add(r.h)).min(self.height);
        if r.x >= x1 || r.y >= y1 {
            return None;
        }
        Some(TileRect { c0: r.x / TILE, c1: x1.div_ceil(TILE), r0: r.y / TILE, r1: y1.div_ceil(TILE) })
    }

    fn mark(&mut self, r: Rect, flag: u8) {
        if let Some(tr) = self.tiles_of(r) {
            for row in tr.r0..tr.r1 {
                for c in tr.c0..tr.c1 {
                    self.flags[(row * self.cols + c) as usize] |= flag;
                }
            }
        }
    }

    fn any_lossy(&self, r: Rect) -> bool {
        let Some(tr) = self.tiles_of(r) else { return false };
        (tr.r0..tr.r1).any(|row| (tr.c0..tr.c1).any(|c| self.lossy.contains_key(&((row * self.cols + c) as usize))))
    }

    fn any_flag(&self, r: Rect, flag: u8) -> bool {
        let Some(tr) = self.tiles_of(r) else { return false };
        (tr.r0..tr.r1).any(|row| (tr.c0..tr.c1).any(|c| self.flags[(row * self.cols + c) as usize] & flag != 0))
    }

    /// A worker `Copy`: the client copies what it shows; the segment hashes move with the pixels where a
    /// whole segment moves vertically, and become unknown elsewhere in the destination (rehashed below).
    fn hint_copy(&mut self, src_x: u32, src_y: u32, dst: Rect, out: &mut BytesMut) -> bool {
        let src = Rect::new(src_x, src_y, dst.w, dst.h);
        if dst.w == 0 || dst.h == 0 || !dst.fits(self.width, self.height) || !src.fits(self.width, self.height) {
            return false;
        }
        emit_copy(out, src_x, src_y, dst);
        let (c0, c1) = ((dst.x / TILE) as usize, (dst.x + dst.w).div_ceil(TILE) as usize);
        // Columns whose whole segment lies inside the copy and moves straight up or down: a contiguous run
        // (empty when the copy moves sideways).
        let (w0, w1) = if src_x == dst.x {
            let w0 = dst.x.div_ceil(TILE) as usize;
            let right = dst.x + dst.w;
            // A column is whole when it ends inside the copy; the last column ends at the frame's edge.
            let w1 = if right == self.width { c1 } else { (right / TILE) as usize };
            (w0, w1.max(w0))
        } else {
            (c0, c0)
        };
        self.move_segments(src_y, dst.y, dst.h, (c0, c1), (w0, w1));
        // Lossy pixels copied, or a lossy tile partly overwritten: repaint the destination's tiles.
        // Tiles forced earlier in this frame still show copied lossy pixels: they count as lossy.
        let lossy = self.any_lossy(src) || self.any_flag(src, FORCE) || self.any_lossy(dst);
        if lossy {
            self.mark(dst, REHASH | FORCE);
        }
        // Otherwise nothing is hashed now: where whole segments moved the hashes moved with them, and a
        // segment only partly covered stays unknown until damage covers its row or its tile is read whole
        // (then it is hashed, and the damage painted as for any damage). Rehashing the destination instead cost more than the
        // rest of the frame on a terminal scrolling line by line (every frame hashed the whole text area).
        true
    }

    /// Moves the segment hashes of columns `w0..w1` from rows `src_y..` to rows `dst_y..` (`h` rows), and
    /// marks the destination's other columns of `c0..c1` (which holds `w0..w1`) unknown. Row by row, in the order
    /// that reads every source row before it is overwritten (the two ranges may overlap).
    fn move_segments(&mut self, src_y: u32, dst_y: u32, h: u32, (c0, c1): (usize, usize), (w0, w1): (usize, usize)) {
        let cols = self.cols as usize;
        let mut move_row = |i: u32| {
            let (from, to) = ((src_y + i) as usize * cols, (dst_y + i) as usize * cols);
            self.seg.copy_within(from + w0..from + w1, to + w0);
            self.seg[to + c0..to + w0].fill(UNKNOWN);
            self.seg[to + w1..to + c1].fill(UNKNOWN);
        };
        if dst_y > src_y {
            (0..h).rev().for_each(&mut move_row);
        } else {
            (0..h).for_each(&mut move_row);
        }
    }

    /// Hashes every flagged tile of the frame into `next` and notes which are one colour.
    ///
    /// A run of tiles that only damage flagged (no lossy repaint, no resize or full frame) is read and
    /// hashed over the rows its damage covers; its other rows keep the hashes the client shows, known or
    /// unknown. The client already shows the frame's pixels there: nothing outside the damage changed
    /// since they were painted or copied (the rule `image` paints by). Such a tile is `PARTIAL` (the
    /// scratch buffer lacks some of its rows). It is one colour when its damaged rows are and its other
    /// rows hash like a row of that colour. A followed log damages a strip of 13 of a tile's 64 rows per
    /// frame, and the blank ends of its lines are such tiles.
    fn hash_tiles(&mut self, src: &dyn Source) {
        let cols = self.cols as usize;
        for row in 0..self.rows {
            let mut c = 0;
            while c < self.cols {
                let t = (row * self.cols + c) as usize;
                if self.flags[t] & (DIRTY | REHASH | FORCE) == 0 {
                    c += 1;
                    continue;
                }
                let c0 = c;
                while c < self.cols && self.flags[(row * self.cols + c) as usize] & (DIRTY | REHASH | FORCE) != 0 {
                    c += 1;
                }
                // One read for the run of tiles: rows are contiguous in the buffer.
                let x = c0 * TILE;
                let y = row * TILE;
                let whole = Rect::new(x, y, (c * TILE).min(self.width) - x, TILE.min(self.height - y));
                let only_damage = (c0..c).all(|tc| self.flags[(row * self.cols + tc) as usize] & (REHASH | FORCE) == 0);
                let band = match only_damage.then(|| self.damage_within(whole)).flatten() {
                    Some(d) => Rect::new(x, d.y, whole.w, d.h),
                    None => whole,
                };
                let partial = band.h < whole.h;
                let stride = self.width as usize * 4;
                let base = band.y as usize * stride + x as usize * 4;
                src.read_rect_strided(band, &mut self.scratch.frame[base..], stride);
                for tc in c0..c {
                    let t = (row * self.cols + tc) as usize;
                    let off = base + (tc - c0) as usize * TILE as usize * 4;
                    let seg_bytes = ((tc * TILE + TILE).min(self.width) - tc * TILE) as usize * 4;
                    let first: [u8; 3] =
                        [self.scratch.frame[off], self.scratch.frame[off + 1], self.scratch.frame[off + 2]];
                    let mut solid = true;
                    for i in 0..band.h as usize {
                        let bytes = &self.scratch.frame[i * stride + off..][..seg_bytes];
                        self.next[(band.y as usize + i) * cols + tc as usize] = seg_hash(bytes);
                        solid = solid && bytes.chunks_exact(4).all(|p| p[..3] == first);
                    }
                    let rest = (y..band.y).chain(band.y + band.h..y + whole.h);
                    if partial && solid {
                        // Damaged rows of one colour (the blank end of a log line): the tile is one colour
                        // (a fill, a few bytes) if its other rows, as the client shows them, hash like a
                        // row of that colour. An unknown row never does.
                        let row = &mut self.scratch.buf;
                        row.clear();
                        // The first pixel's own fourth byte: rows are hashed with it.
                        let pixel: [u8; 4] = self.scratch.frame[off..off + 4].try_into().unwrap_or_default();
                        row.extend(std::iter::repeat_n(pixel, seg_bytes / 4).flatten());
                        let solid_row = seg_hash(row);
                        solid = rest.clone().all(|ry| self.seg[ry as usize * cols + tc as usize] == solid_row);
                    }
                    for ry in rest {
                        let i = ry as usize * cols + tc as usize;
                        self.next[i] = self.seg[i];
                    }
                    self.solid[t] = solid.then_some([first[2], first[1], first[0]]);
                    self.flags[t] |= if partial { HASHED | PARTIAL } else { HASHED };
                }
            }
        }
    }

    fn tile_segs(&self, t: usize) -> impl Iterator<Item = usize> + '_ {
        let r = self.tile_rect(t);
        let c = t % self.cols as usize;
        (r.y..r.y + r.h).map(move |y| y as usize * self.cols as usize + c)
    }

    fn sync_tile(&mut self, t: usize) {
        for i in self.tile_segs(t).collect::<Vec<_>>() {
            self.seg[i] = self.next[i];
        }
    }

    /// Sets `CHANGED` on damaged tiles whose hashes differ from what the client shows.
    fn find_changed(&mut self) {
        for t in 0..self.flags.len() {
            if self.flags[t] & DIRTY == 0 {
                continue;
            }
            let differs = self.tile_segs(t).any(|i| self.seg[i] != self.next[i]);
            if differs {
                self.flags[t] |= CHANGED;
            } else {
                self.flags[t] &= !CHANGED;
            }
        }
    }

    /// The frame's hash of segment (y, c): hashed tiles from `next`, others are what the client shows.
    fn frame_seg(&self, y: u32, c: u32) -> u64 {
        let t = ((y / TILE) * self.cols + c) as usize;
        let i = (y * self.cols + c) as usize;
        if self.flags[t] & HASHED != 0 {
            self.next[i]
        } else {
            self.seg[i]
        }
    }

    /// Looks for one vertical shift of what the client shows that explains many changed rows: the
    /// bounding box of the changed tiles, a vote per column over rows whose old hash is unique, the best
    /// shift, the widest run of columns that agree and the longest run of rows where all of them match.
    fn detect_scroll(&self) -> Option<Scroll> {
        let changed: Vec<usize> = (0..self.flags.len()).filter(|t| self.flags[*t] & CHANGED != 0).collect();
        if changed.len() < 2 {
            return None;
        }
        let cols = self.cols;
        let (mut c0, mut c1, mut r0, mut r1) = (u32::MAX, 0, u32::MAX, 0);
        for t in &changed {
            let (c, r) = (*t as u32 % cols, *t as u32 / cols);
            (c0, c1, r0, r1) = (c0.min(c), c1.max(c + 1), r0.min(r), r1.max(r + 1));
        }
        let (y0, y1) = (r0 * TILE, (r1 * TILE).min(self.height));
        if y1 - y0 < 2 * MIN_SCROLL_ROWS {
            return None;
        }
        let mut votes: HashMap<i64, u32, PassThrough> = HashMap::default();
        // Sized for the box once: growing it row by row rehashed it about ten times per frame.
        let mut unique: HashMap<u64, Option<u32>, PassThrough> =
            HashMap::with_capacity_and_hasher((y1 - y0) as usize, PassThrough);
        // Whole rows of the box first: a line of text is unique as a whole even where its 64-pixel pieces
        // repeat (the same digits in many lines). Weighted by width so that they outvote single columns.
        let row_sig = |y: u32, of: &dyn Fn(u32, u32) -> u64| {
            (c0..c1).fold(0u64, |acc, c| (acc ^ of(y, c)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29))
        };
        let old_seg = |y: u32, c: u32| self.seg[(y * cols + c) as usize];
        let new_seg = |y: u32, c: u32| self.frame_seg(y, c);
        // Each row's old signature is needed twice (the map of unique rows, then the unchanged-row test).
        let old_rows: Vec<u64> = (y0..y1).map(|y| row_sig(y, &old_seg)).collect();
        for (y, &sig) in (y0..y1).zip(&old_rows) {
            if (c0..c1).all(|c| old_seg(y, c) != UNKNOWN) {
                unique.entry(sig).and_modify(|v| *v = None).or_insert(Some(y));
            }
        }
        for (y, &old) in (y0..y1).zip(&old_rows) {
            let new = row_sig(y, &new_seg);
            if new == old {
                continue;
            }
            if let Some(Some(old_y)) = unique.get(&new) {
                *votes.entry(i64::from(y) - i64::from(*old_y)).or_default() += c1 - c0;
            }
        }
        // Then column by column, for shifts of part of the box (one window scrolls, its neighbour not).
        for c in c0..c1 {
            unique.clear();
            for y in y0..y1 {
                let h = self.seg[(y * cols + c) as usize];
                if h != UNKNOWN {
                    unique.entry(h).and_modify(|v| *v = None).or_insert(Some(y));
                }
            }
            for y in y0..y1 {
                let new = self.frame_seg(y, c);
                if new == self.seg[(y * cols + c) as usize] {
                    continue;
                }
                if let Some(Some(old_y)) = unique.get(&new) {
                    *votes.entry(i64::from(y) - i64::from(*old_y)).or_default() += 1;
                }
            }
        }
        let (&dy, &n) = votes.iter().max_by_key(|(dy, n)| (**n, -dy.abs()))?;
        if n < MIN_SCROLL_ROWS {
            return None;
        }
        // Rows y (destination) whose source y - dy lies in the box.
        let ya = (i64::from(y0) + dy.max(0)) as u32;
        let yb = (i64::from(y1) + dy.min(0)) as u32;
        // An unknown source segment matches nothing: an undamaged tile's frame hash is the client's, so two
        // unknown segments would compare equal although nobody knows what either shows.
        let matches = |y: u32, c: u32| {
            let old = self.seg[((i64::from(y) - dy) as u32 * cols + c) as usize];
            old != UNKNOWN && self.frame_seg(y, c) == old
        };
        let agree: Vec<bool> =
            (c0..c1).map(|c| (ya..yb).filter(|y| matches(*y, c)).count() as u32 >= MIN_SCROLL_ROWS).collect();
        let (mut best, mut run_start) = ((0, 0), None);
        for (i, a) in agree.iter().chain([&false]).enumerate() {
            match (a, run_start) {
                (true, None) => run_start = Some(i),
                (false, Some(s)) => {
                    if i - s > best.1 - best.0 {
                        best = (s, i);
                    }
                    run_start = None;
                }
                _ => {}
            }
        }
        if best.1 == best.0 {
            return None;
        }
        let (sc0, sc1) = (c0 + best.0 as u32, c0 + best.1 as u32);
        let (mut rows, mut start) = ((0, 0), None);
        for y in ya..=yb {
            let ok = y < yb && (sc0..sc1).all(|c| matches(y, c));
            match (ok, start) {
                (true, None) => start = Some(y),
                (false, Some(s)) => {
                    if y - s > rows.1 - rows.0 {
                        rows = (s, y);
                    }
                    start = None;
                }
                _ => {}
            }
        }
        if rows.1 - rows.0 < MIN_SCROLL_ROWS {
            return None;
        }
        let x = sc0 * TILE;
        let w = (sc1 * TILE).min(self.width) - x;
        let src_y = (i64::from(rows.0) - dy) as u32;
        let sc = Scroll { x, w, src_y, dst_y: rows.0, h: rows.1 - rows.0, c0: sc0, c1: sc1 };
        // Copying lossy pixels would spread them, and a lossy tile partly overwritten would need a repaint
        // of pixels not hashed yet: leave those cases to the tiles.
        // Tiles forced by a hint copy of lossy pixels count as lossy too (the client shows those pixels
        // until they are repainted below).
        let src = Rect::new(x, src_y, w, sc.h);
        let dst = Rect::new(x, rows.0, w, sc.h);
        if self.any_lossy(src) || self.any_lossy(dst) || self.any_flag(src, FORCE) || self.any_flag(dst, FORCE) {
            return None;
        }
        Some(sc)
    }

    fn apply_scroll(&mut self, sc: Scroll, out: &mut BytesMut) {
        let dst = Rect::new(sc.x, sc.dst_y, sc.w, sc.h);
        emit_copy(out, sc.x, sc.src_y, dst);
        // Whole segments move: their hashes move with them.
        self.move_segments(
            sc.src_y,
            sc.dst_y,
            sc.h,
            (sc.c0 as usize, sc.c1 as usize),
            (sc.c0 as usize, sc.c1 as usize),
        );
    }

    /// Paints the changed and forced tiles: solid runs as fills, the rest as images of merged tiles.
    fn paint(&mut self, src: &dyn Source, s: &Settings, now: Instant, out: &mut BytesMut, st: &mut Stats) {
        let paint = |f: u8| f & (CHANGED | FORCE) != 0;
        for t in 0..self.flags.len() {
            if self.flags[t] & CHANGED != 0 {
                let info = &mut self.tiles[t];
                info.streak = match info.last_change {
                    Some(prev) if now.saturating_duration_since(prev) < FAST_WINDOW => info.streak.saturating_add(1),
                    _ => 0,
                };
                info.last_change = Some(now);
            }
            if paint(self.flags[t]) {
                self.sync_tile(t);
            }
        }
        // Per tile row: runs of painted tiles, split into solid runs (fills) and image runs.
        let mut open: Vec<TileRect> = Vec::new();
        let mut images: Vec<TileRect> = Vec::new();
        for row in 0..self.rows {
            let mut runs: Vec<(u32, u32)> = Vec::new();
            let kind = |c: u32| -> Option<Option<[u8; 3]>> {
                let t = (row * self.cols + c) as usize;
                paint(self.flags[t]).then_some(self.solid[t])
            };
            let mut c = 0;
            while c < self.cols {
                let Some(k) = kind(c) else {
                    c += 1;
                    continue;
                };
                let start = c;
                while c < self.cols && kind(c) == Some(k) {
                    c += 1;
                }
                match k {
                    Some(colour) => {
                        // A short solid run next to an image run is cheaper inside the image; between two
                        // image runs, absorbing it also saves the second image's framing.
                        let left = start > 0 && kind(start - 1) == Some(None);
                        let right = c < self.cols && kind(c) == Some(None);
                        let separate = FILL_COST + if left && right { IMAGE_OVERHEAD } else { 0 };
                        if (left || right) && (c - start) * SOLID_TILE_IN_IMAGE < separate {
                            runs.push((start, c));
                        } else {
                            self.fill(TileRect { c0: start, c1: c, r0: row, r1: row + 1 }, colour, out);
                            st.fills += 1;
                            for tc in start..c {
                                self.lossy.remove(&((row * self.cols + tc) as usize));
                            }
                        }
                    }
                    None => runs.push((start, c)),
                }
            }
            // Join runs that now touch (a solid tile absorbed between two image runs).
            runs.sort_unstable();
            let mut joined: Vec<(u32, u32)> = Vec::new();
            for r in runs {
                match joined.last_mut() {
                    Some(last) if last.1 == r.0 => last.1 = r.1,
                    _ => joined.push(r),
                }
            }
            // Vertical merge: a run with the same columns as one in the row above extends it: no extra
            // pixels, and one image's framing (IMAGE_OVERHEAD) less, so it always pays.
            let mut still_open = Vec::new();
            for (a, b) in joined {
                if let Some(pos) = open.iter().position(|o| o.c0 == a && o.c1 == b && o.r1 == row) {
                    let mut o = open.swap_remove(pos);
                    o.r1 = row + 1;
                    still_open.push(o);
                } else {
                    still_open.push(TileRect { c0: a, c1: b, r0: row, r1: row + 1 });
                }
            }
            images.append(&mut open);
            open = still_open;
        }
        images.append(&mut open);
        for tr in images {
            self.image(src, tr, s, now, out, st);
        }
    }

    fn fill(&self, tr: TileRect, [r, g, b]: [u8; 3], out: &mut BytesMut) {
        let (x, y) = (tr.c0 * TILE, tr.r0 * TILE);
        let (w, h) = ((tr.c1 * TILE).min(self.width) - x, (tr.r1 * TILE).min(self.height) - y);
        encode(out, "rect").int(0).uint(x.into()).uint(y.into()).uint(w.into()).uint(h.into()).finish();
        encode(out, "cfill").int(MODE_OVER).int(0).uint(r.into()).uint(g.into()).uint(b.into()).uint(255).finish();
    }

    /// One image for a rectangle of tiles, in the format that suits it.
    fn image(
        &mut self,
        src: &dyn Source,
        tr: TileRect,
        s: &Settings,
        now: Instant,
        out: &mut BytesMut,
        st: &mut Stats,
    ) {
        let x = tr.c0 * TILE;
        let y = tr.r0 * TILE;
        let whole = Rect::new(x, y, (tr.c1 * TILE).min(self.width) - x, (tr.r1 * TILE).min(self.height) - y);
        let cols = self.cols;
        let tiles: Vec<usize> =
            (tr.r0..tr.r1).flat_map(|r| (tr.c0..tr.c1).map(move |c| (r * cols + c) as usize)).collect();
        let fast = tiles.iter().filter(|t| self.tiles[**t].streak >= FAST_STREAK).count() * 2 > tiles.len();
        // Outside the damage the client already shows the frame's pixels exactly, unless a tile shows lossy
        // pixels (or copied ones): then the whole tiles go out. A JPEG candidate (fast-changing, and the
        // client takes JPEG) also keeps whole tiles, whose exact pixels the refresh needs, unless its damage
        // has few colours (text: a followed log's last lines change every frame), which goes out lossless
        // anyway: then only the damage.
        let clean = tiles.iter().all(|t| self.flags[*t] & FORCE == 0 && !self.lossy.contains_key(t));
        let hashed = tiles.iter().all(|t| self.flags[*t] & (HASHED | PARTIAL) == HASHED);
        let damage = self.damage_within(whole).unwrap_or(whole);
        let mut pixels = std::mem::take(&mut self.scratch.buf);
        let (rect, palette) = if clean && fast && s.jpeg {
            self.read_pixels(src, damage, hashed, &mut pixels);
            match image::palette(&pixels) {
                Some(p) => (damage, Some(p)),
                None => {
                    // More than 256 colours in the damage means as many in the whole tiles: no palette there.
                    if damage != whole {
                        self.read_pixels(src, whole, hashed, &mut pixels);
                    }
                    (whole, None)
                }
            }
        } else {
            let rect = if clean { damage } else { whole };
            self.read_pixels(src, rect, hashed, &mut pixels);
            (rect, image::palette(&pixels))
        };
        // JPEG only for fast-changing content.
        let lossy = self.encode_image(rect, &pixels, palette, &Settings { jpeg: s.jpeg && fast, ..*s }, out, st);
        for t in tiles {
            if lossy {
                let tr = self.tile_rect(t);
                let stride = rect.w as usize * 4;
                let mut tile_px = Vec::with_capacity(tr.w as usize * tr.h as usize * 4);
                for i in 0..tr.h {
                    let off = (tr.y - rect.y + i) as usize * stride + (tr.x - rect.x) as usize * 4;
                    tile_px.extend_from_slice(&pixels[off..off + tr.w as usize * 4]);
                }
                self.lossy.insert(t, Lossy { since: now, pixels: tile_px });
            } else {
                self.lossy.remove(&t);
            }
        }
        self.scratch.buf = pixels;
    }

    /// BGRX of `rect` into `pixels`: from this call's copy when every tile under it was hashed whole, else
    /// from the source.
    fn read_pixels(&self, src: &dyn Source, rect: Rect, hashed: bool, pixels: &mut Vec<u8>) {
        if hashed {
            let stride = self.width as usize * 4;
            pixels.clear();
            for i in 0..rect.h as usize {
                let off = (rect.y as usize + i) * stride + rect.x as usize * 4;
                pixels.extend_from_slice(&self.scratch.frame[off..][..rect.w as usize * 4]);
            }
        } else {
            src.read_rect(rect, pixels);
        }
    }

    /// The bounding box of this frame's dirty rectangles within `r` (`None`: the whole frame is dirty, or
    /// none of them touches `r`).
    fn damage_within(&self, r: Rect) -> Option<Rect> {
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        for d in self.dirty.as_ref()? {
            let (ax, ay) = (d.x.max(r.x), d.y.max(r.y));
            let (bx, by) = ((d.x + d.w).min(r.x + r.w), (d.y + d.h).min(r.y + r.h));
            if ax < bx && ay < by {
                (x0, y0, x1, y1) = (x0.min(ax), y0.min(ay), x1.max(bx), y1.max(by));
            }
        }
        (x0 < x1 && y0 < y1).then(|| Rect::new(x0, y0, x1 - x0, y1 - y0))
    }

    /// Encodes `bgrx` at `rect` (`palette`: its colours when it has at most 256); `true` when it went out lossy.
    fn encode_image(
        &mut self,
        rect: Rect,
        bgrx: &[u8],
        palette: Option<image::Palette>,
        s: &Settings,
        out: &mut BytesMut,
        st: &mut Stats,
    ) -> bool {
        let mut encoded = std::mem::take(&mut self.scratch.encoded);
        let (mime, lossy) = if let Some(p) = palette {
            image::png(rect.w, rect.h, image::PngPixels::Indexed(&p), &mut encoded);
            st.png += 1;
            ("image/png", false)
        } else if s.jpeg {
            image::jpeg(rect.w, rect.h, bgrx, s.quality(), &mut encoded);
            st.jpeg += 1;
            ("image/jpeg", true)
        } else if s.webp && rect.w * rect.h >= WEBP_MIN_PIXELS {
            image::bgrx_to_rgb(bgrx, &mut self.scratch.conv);
            image::webp(rect.w, rect.h, &self.scratch.conv, &mut encoded);
            st.webp += 1;
            ("image/webp", false)
        } else {
            image::bgrx_to_rgb(bgrx, &mut self.scratch.conv);
            image::png(rect.w, rect.h, image::PngPixels::Rgb(&self.scratch.conv), &mut encoded);
            st.png += 1;
            ("image/png", false)
        };
        let stream = self.stream();
        emit_image(out, stream, mime, rect.x, rect.y, &encoded);
        self.scratch.encoded = encoded;
        lossy
    }

    /// Lossless repaint of lossy tiles quiet for [`REFRESH_AFTER`], a run of tiles per image.
    fn refresh(&mut self, now: Instant, out: &mut BytesMut, st: &mut Stats) {
        let due: Vec<usize> =
            self.lossy.iter().filter(|(_, l)| l.since + REFRESH_AFTER <= now).map(|(t, _)| *t).collect();
        let mut i = 0;
        while i < due.len() {
            // Tiles of one row next to each other: one image.
            let mut j = i + 1;
            while j < due.len() && due[j] == due[j - 1] + 1 && !due[j].is_multiple_of(self.cols as usize) {
                j += 1;
            }
            let first = self.tile_rect(due[i]);
            let last = self.tile_rect(due[j - 1]);
            let rect = Rect::new(first.x, first.y, last.x + last.w - first.x, first.h);
            let mut px = Vec::with_capacity(rect.w as usize * rect.h as usize * 4);
            for row in 0..rect.h as usize {
                for t in &due[i..j] {
                    let tw = self.tile_rect(*t).w as usize * 4;
                    if let Some(l) = self.lossy.get(t) {
                        px.extend_from_slice(&l.pixels[row * tw..(row + 1) * tw]);
                    }
                }
            }
            let lossless = Settings { jpeg: false, ..Settings::default() };
            let palette = image::palette(&px);
            self.encode_image(rect, &px, palette, &lossless, out, st);
            for t in &due[i..j] {
                self.lossy.remove(t);
            }
            st.refreshed_tiles += (j - i) as u32;
            i = j;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Scroll {
    x: u32,
    w: u32,
    src_y: u32,
    dst_y: u32,
    h: u32,
    c0: u32,
    c1: u32,
}

fn emit_copy(out: &mut BytesMut, src_x: u32, src_y: u32, dst: Rect) {
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

/// `img` + `blob`s + `end` on layer 0.
pub fn emit_image(out: &mut BytesMut, stream: u32, mime: &str, x: u32, y: u32, data: &[u8]) {
    encode(out, "img").uint(stream.into()).int(MODE_OVER).int(0).str(mime).uint(x.into()).uint(y.into()).finish();
    guac_proto::encode_blobs(out, stream, data);
    encode(out, "end").uint(stream.into()).finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A many-coloured surface (no palette: the RGB conversion runs too).
    struct Gradient {
        w: u32,
    }

    impl Source for Gradient {
        fn read_rect(&self, r: Rect, dst: &mut Vec<u8>) {
            dst.clear();
            for y in r.y..r.y + r.h {
                for x in r.x..r.x + r.w {
                    let v = y * self.w + x;
                    dst.extend_from_slice(&[v as u8, (v >> 8) as u8, (x ^ y) as u8, 0]);
                }
            }
        }
    }

    #[test]
    fn a_planner_keeps_no_working_buffers_between_calls() {
        let (w, h) = (640, 480);
        let mut p = Planner::new();
        let damage = Damage { width: w, height: h, ops: &[], full: true };
        let mut out = BytesMut::new();
        let st = p.encode_frame(&Gradient { w }, &damage, &Settings::default(), Instant::now(), &mut out);
        assert!(st.png > 0 && out.len() > 100_000, "{st:?}, {} bytes", out.len());
        // A session's planner lives as long as the session: the frame-sized buffers of its first,
        // full-screen frame must go back to the encoder thread, not stay with it.
        let held =
            |p: &Planner| [&p.scratch.frame, &p.scratch.buf, &p.scratch.conv, &p.scratch.encoded].map(|v| v.capacity());
        assert_eq!(held(&p), [0; 4]);
        // The thread's scratch serves the next call (of any planner) without growing again.
        let mut q = Planner::new();
        q.encode_frame(&Gradient { w }, &damage, &Settings::default(), Instant::now(), &mut BytesMut::new());
        assert_eq!(held(&q), [0; 4]);
        SCRATCH.with(|s| {
            let scratch = s.take();
            assert!(scratch.frame.len() >= (w * h * 4) as usize && scratch.conv.capacity() > 0);
            s.set(scratch);
        });
    }

    #[test]
    fn quality_follows_lag_like_guacd() {
        let q = |lag_ms| Settings { lag_ms, ..Settings::default() }.quality();
        assert_eq!(q(0), 90);
        assert_eq!(q(20), 90);
        assert_eq!(q(50), 60);
        assert_eq!(q(500), 30);
    }
}
