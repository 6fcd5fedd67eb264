//! The planner against the test harness's own compositor (`guacr-tests`' client, the one the
//! integration tests use): random surfaces and damage sequences, including copies and scrolls, encoded
//! and composited must show exactly the surface (lossless), or within a tolerance until the refresh.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use guac_display::{Damage, DamageOp, Planner, Rect, Settings, Source, Stats, REFRESH_AFTER};
use guacr_tests::ClientState;
use proptest::prelude::*;

/// A BGRX surface, like a worker's back buffer.
#[derive(Clone)]
struct Surface {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

impl Source for Surface {
    fn read_rect(&self, r: Rect, dst: &mut Vec<u8>) {
        dst.clear();
        for y in r.y..r.y + r.h {
            let off = (y * self.w + r.x) as usize * 4;
            dst.extend_from_slice(&self.px[off..off + r.w as usize * 4]);
        }
    }
}

/// xorshift64*: deterministic content from proptest's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n.max(1))) as u32
    }
    fn rect(&mut self, w: u32, h: u32) -> Rect {
        let x = self.below(w);
        let y = self.below(h);
        Rect::new(x, y, 1 + self.below(w - x), 1 + self.below(h - y))
    }
}

impl Surface {
    fn new(w: u32, h: u32, rng: &mut Rng) -> Surface {
        let mut s = Surface { w, h, px: vec![0; (w * h * 4) as usize] };
        s.fill(Rect::new(0, 0, w, h), [250, 250, 245]);
        for _ in 0..6 {
            let r = rng.rect(w, h);
            s.paint(r, rng);
        }
        s
    }

    fn set(&mut self, x: u32, y: u32, [r, g, b]: [u8; 3]) {
        let o = ((y * self.w + x) * 4) as usize;
        self.px[o..o + 4].copy_from_slice(&[b, g, r, 0]);
    }

    fn fill(&mut self, r: Rect, c: [u8; 3]) {
        for y in r.y..r.y + r.h {
            for x in r.x..r.x + r.w {
                self.set(x, y, c);
            }
        }
    }

    /// One of: a solid fill, text-like strokes (two colours), a gradient, noise.
    fn paint(&mut self, r: Rect, rng: &mut Rng) {
        let c = [rng.below(256) as u8, rng.below(256) as u8, rng.below(256) as u8];
        match rng.below(4) {
            0 => self.fill(r, c),
            1 => {
                let seed = rng.next();
                for y in r.y..r.y + r.h {
                    for x in r.x..r.x + r.w {
                        let on = (x / 3 + y / 5 + (seed as u32 & 7)).is_multiple_of(4) && (y % 12) < 9;
                        self.set(x, y, if on { c } else { [255, 255, 255] });
                    }
                }
            }
            2 => {
                for y in r.y..r.y + r.h {
                    for x in r.x..r.x + r.w {
                        self.set(x, y, [(x * 3) as u8, (y * 2) as u8, c[2]]);
                    }
                }
            }
            _ => {
                for y in r.y..r.y + r.h {
                    for x in r.x..r.x + r.w {
                        let v = rng.next();
                        self.set(x, y, [v as u8, (v >> 8) as u8, (v >> 16) as u8]);
                    }
                }
            }
        }
    }

    /// Moves pixels like `FrameWriter::copy_rect` (overlap-safe).
    fn copy(&mut self, src_x: u32, src_y: u32, dst: Rect) {
        let mut tmp = Vec::new();
        self.read_rect(Rect::new(src_x, src_y, dst.w, dst.h), &mut tmp);
        for i in 0..dst.h {
            let off = ((dst.y + i) * self.w + dst.x) as usize * 4;
            let row = &tmp[(i * dst.w * 4) as usize..((i + 1) * dst.w * 4) as usize];
            self.px[off..off + row.len()].copy_from_slice(row);
        }
    }

    fn rgb(&self, x: u32, y: u32) -> [u8; 3] {
        let o = ((y * self.w + x) * 4) as usize;
        [self.px[o + 2], self.px[o + 1], self.px[o]]
    }
}

/// Everything the planner sent so far, composited from scratch.
fn composite(wire: &[u8]) -> ClientState {
    let state = ClientState::replay(wire);
    assert!(state.image_errors.is_empty(), "image errors: {:?}", state.image_errors);
    assert!(state.decode_error.is_none(), "decode error: {:?}", state.decode_error);
    state
}

/// Largest per-channel difference between the client's layer 0 and the surface.
fn max_diff(state: &ClientState, s: &Surface) -> u8 {
    assert_eq!(state.display.size(), (s.w, s.h));
    let mut worst = 0;
    for y in 0..s.h {
        for x in 0..s.w {
            let p = state.display.pixel(x, y).expect("pixel inside the layer");
            let want = s.rgb(x, y);
            for ch in 0..3 {
                worst = worst.max(p[ch].abs_diff(want[ch]));
            }
        }
    }
    worst
}

/// Exact pixels everywhere except inside `lossy`.
fn assert_exact_outside(state: &ClientState, s: &Surface, lossy: &[Rect], what: &str) {
    for y in 0..s.h {
        for x in 0..s.w {
            if lossy.iter().any(|r| r.intersects(&Rect::new(x, y, 1, 1))) {
                continue;
            }
            let p = state.display.pixel(x, y).expect("pixel inside the layer");
            assert_eq!(p[..3], s.rgb(x, y), "{what}: pixel ({x}, {y}) of {}x{} outside the lossy tiles", s.w, s.h);
        }
    }
}

fn assert_exact(state: &ClientState, s: &Surface, what: &str) {
    for y in 0..s.h {
        for x in 0..s.w {
            let p = state.display.pixel(x, y).expect("pixel inside the layer");
            assert_eq!(p[..3], s.rgb(x, y), "{what}: pixel ({x}, {y}) of {}x{}", s.w, s.h);
        }
    }
}

/// One frame's worth of random changes to `s`, recorded as a worker records them: a copy whose source
/// was dirtied earlier in the frame becomes `Dirty(dst)`.
fn random_frame(s: &mut Surface, rng: &mut Rng) -> Vec<DamageOp> {
    let mut ops = Vec::new();
    let mut dirtied: Vec<Rect> = Vec::new();
    for _ in 0..1 + rng.below(3) {
        match rng.below(4) {
            0 | 1 => {
                let r = rng.rect(s.w, s.h);
                s.paint(r, rng);
                ops.push(DamageOp::Dirty(r));
                dirtied.push(r);
            }
            2 => {
                // A hinted copy (window move, scroll with CopyRect).
                let dst = rng.rect(s.w, s.h);
                let src_x = rng.below(s.w - dst.w + 1);
                let src_y = rng.below(s.h - dst.h + 1);
                s.copy(src_x, src_y, dst);
                let src = Rect::new(src_x, src_y, dst.w, dst.h);
                if dirtied.iter().any(|d| d.intersects(&src)) {
                    ops.push(DamageOp::Dirty(dst));
                    dirtied.push(dst);
                } else {
                    ops.push(DamageOp::Copy { src_x, src_y, dst });
                }
            }
            _ => {
                // A scroll without a hint: the region shifts up or down and is reported dirty.
                let r = rng.rect(s.w, s.h);
                if r.h > 2 {
                    let dy = 1 + rng.below(r.h - 1);
                    let (src_y, dst) = if rng.below(2) == 0 {
                        (r.y + dy, Rect::new(r.x, r.y, r.w, r.h - dy))
                    } else {
                        (r.y, Rect::new(r.x, r.y + dy, r.w, r.h - dy))
                    };
                    s.copy(r.x, src_y, dst);
                }
                ops.push(DamageOp::Dirty(r));
                dirtied.push(r);
            }
        }
    }
    ops
}

/// A session's start: the surface drawn from `seed`, and a planner that has sent all of it on `wire`.
fn start(seed: u64, w: u32, h: u32, set: &Settings, t0: Instant) -> (Rng, Surface, Planner, BytesMut) {
    let mut rng = Rng(seed | 1);
    let s = Surface::new(w, h, &mut rng);
    let mut p = Planner::new();
    let mut wire = BytesMut::new();
    p.encode_frame(&s, &Damage { width: w, height: h, ops: &[], full: true }, set, t0, &mut wire);
    (rng, s, p, wire)
}

fn frame(p: &mut Planner, s: &Surface, ops: &[DamageOp], set: &Settings, now: Instant, wire: &mut BytesMut) -> Stats {
    let d = Damage { width: s.w, height: s.h, ops, full: false };
    p.encode_frame(s, &d, set, now, wire)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Lossless: after every frame the client shows exactly the surface.
    #[test]
    fn lossless_frames_composite_to_the_surface(
        seed in any::<u64>(), w in 1u32..300, h in 1u32..260, frames in 1usize..7, webp in any::<bool>()
    ) {
        let mut rng = Rng(seed | 1);
        let mut s = Surface::new(w, h, &mut rng);
        let mut p = Planner::new();
        let set = Settings { webp, ..Settings::default() };
        let mut wire = BytesMut::new();
        let t0 = Instant::now();
        let full = Damage { width: w, height: h, ops: &[], full: true };
        p.encode_frame(&s, &full, &set, t0, &mut wire);
        assert_exact(&composite(&wire), &s, "first frame");
        for i in 0..frames {
            let ops = random_frame(&mut s, &mut rng);
            frame(&mut p, &s, &ops, &set, t0 + Duration::from_millis(40 * (i as u64 + 1)), &mut wire);
            assert_exact(&composite(&wire), &s, &format!("frame {i} after {ops:?}"));
        }
        // A joining user: the full dump alone shows the surface.
        let mut dump = BytesMut::new();
        Planner::new().encode_full(&s, &full, &set, t0, &mut dump);
        assert_exact(&composite(&dump), &s, "full dump");
    }

    /// Lossy: a region that keeps changing goes JPEG (within a tolerance), and once quiet the refresh
    /// makes it exact; copies over lossy pixels stay correct.
    #[test]
    fn lossy_regions_are_exact_after_the_refresh(seed in any::<u64>(), w in 130u32..300, h in 130u32..260) {
        let mut rng = Rng(seed | 1);
        let mut s = Surface::new(w, h, &mut rng);
        let mut p = Planner::new();
        let set = Settings { jpeg: true, lag_ms: 0, ..Settings::default() };
        let mut wire = BytesMut::new();
        let t0 = Instant::now();
        p.encode_frame(&s, &Damage { width: w, height: h, ops: &[], full: true }, &set, t0, &mut wire);
        // A smooth animation (many colours, JPEG-friendly) in one area, 20 ms apart; no channel wraps
        // (a 255→0 step is a hard edge, whose 4:2:0 chroma error can exceed the tolerance below).
        let area = Rect::new(0, 0, 128, 128);
        let mut jpegs = 0;
        for i in 0..8u32 {
            for y in 0..area.h {
                for x in 0..area.w {
                    s.set(x, y, [(x + i * 9) as u8, (y * 2) as u8, ((x + y) / 2) as u8]);
                }
            }
            let st = frame(&mut p, &s, &[DamageOp::Dirty(area)], &set, t0 + Duration::from_millis(20 * u64::from(i + 1)), &mut wire);
            jpegs += st.jpeg;
        }
        prop_assert!(jpegs > 0, "a fast-changing many-coloured area goes JPEG");
        let lossy_at = t0 + Duration::from_millis(160);
        prop_assert!(max_diff(&composite(&wire), &s) <= 48);
        prop_assert!(p.refresh_due().is_some_and(|due| due <= lossy_at + REFRESH_AFTER));
        // A random frame in between (copies may read the lossy area, and tiles repainted because of
        // that may go lossy again, with sharper content than the animation): exact outside the tiles
        // the planner holds as lossy.
        let ops = random_frame(&mut s, &mut rng);
        frame(&mut p, &s, &ops, &set, lossy_at + Duration::from_millis(10), &mut wire);
        assert_exact_outside(&composite(&wire), &s, &p.lossy_tiles(), &format!("after {ops:?}"));
        let st = p.encode_refresh(lossy_at + Duration::from_secs(1), &mut wire);
        prop_assert!(st.jpeg == 0 && p.refresh_due().is_none());
        assert_exact(&composite(&wire), &s, "after the refresh");
    }
}

/// A CopyRect scroll as Xtigervnc sends it for a terminal: a region whose left edge is a tile edge
/// (sometimes also whole tiles wide, so whole row segments move) scrolls up or down by a few rows with a
/// `Copy` hint, and the uncovered strip is painted and reported dirty after it.
fn hinted_scroll(s: &mut Surface, rng: &mut Rng) -> Vec<DamageOp> {
    let x = 64 * rng.below(s.w.div_ceil(64));
    let room = s.w - x;
    let w = if rng.below(2) == 0 { room.min(64 * (1 + rng.below(room.div_ceil(64)))) } else { 1 + rng.below(room) };
    let y = rng.below(s.h);
    let h = 1 + rng.below(s.h - y);
    if h < 2 {
        let r = Rect::new(x, y, w, h);
        s.paint(r, rng);
        return vec![DamageOp::Dirty(r)];
    }
    let dy = 1 + rng.below(h - 1);
    let (src_y, dst, strip) = if rng.below(3) > 0 {
        (y + dy, Rect::new(x, y, w, h - dy), Rect::new(x, y + h - dy, w, dy))
    } else {
        (y, Rect::new(x, y + dy, w, h - dy), Rect::new(x, y, w, dy))
    };
    s.copy(x, src_y, dst);
    s.paint(strip, rng);
    vec![DamageOp::Copy { src_x: x, src_y, dst }, DamageOp::Dirty(strip)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Hinted scrolls whose segments move whole (their hashes move instead of being recomputed), mixed
    /// with random frames: the client still shows exactly the surface after every frame.
    #[test]
    fn hinted_scrolls_composite_to_the_surface(
        seed in any::<u64>(), w in 1u32..300, h in 1u32..260, frames in 1usize..10
    ) {
        let set = Settings::default();
        let t0 = Instant::now();
        let (mut rng, mut s, mut p, mut wire) = start(seed, w, h, &set, t0);
        for i in 0..frames {
            // One kind per frame: a copy hint must never read pixels dirtied earlier in its frame (the
            // worker turns those into `Dirty`), which mixing the two generators could break.
            let ops = if rng.below(4) == 0 { random_frame(&mut s, &mut rng) } else { hinted_scroll(&mut s, &mut rng) };
            // 10 ms apart: the strips become fast-changing tiles, as a followed log's last line does.
            frame(&mut p, &s, &ops, &set, t0 + Duration::from_millis(10 * (i as u64 + 1)), &mut wire);
            assert_exact(&composite(&wire), &s, &format!("frame {i} after {ops:?}"));
        }
    }
}

/// A text-like surface: dark strokes on white, every line different.
fn text_surface(w: u32, h: u32) -> Surface {
    let mut s = Surface { w, h, px: vec![0; (w * h * 4) as usize] };
    s.fill(Rect::new(0, 0, w, h), [255, 255, 255]);
    for y in 0..h {
        let line = y / 16;
        if y % 16 >= 12 {
            continue;
        }
        for x in 0..w {
            let glyph = x / 8;
            let bits = (line.wrapping_mul(2_654_435_761) ^ glyph.wrapping_mul(40503)).rotate_left(y % 16);
            if bits & (1 << (x % 8)) != 0 {
                s.set(x, y, [20, 20, 30]);
            }
        }
    }
    s
}

#[test]
fn a_scrolled_text_region_becomes_one_copy() {
    let (w, h) = (640, 480);
    let mut s = text_surface(w, h);
    let mut p = Planner::new();
    let set = Settings::default();
    let mut wire = BytesMut::new();
    let t0 = Instant::now();
    p.encode_frame(&s, &Damage { width: w, height: h, ops: &[], full: true }, &set, t0, &mut wire);
    let before = wire.len();
    // Scroll the text up by one 16-pixel line, no hint; a new line appears at the bottom.
    s.copy(0, 16, Rect::new(0, 0, w, h - 16));
    s.fill(Rect::new(0, h - 16, w, 16), [255, 255, 255]);
    s.fill(Rect::new(8, h - 14, 40, 10), [20, 20, 30]);
    let st =
        frame(&mut p, &s, &[DamageOp::Dirty(Rect::new(0, 0, w, h))], &set, t0 + Duration::from_millis(50), &mut wire);
    assert_eq!(st.scrolls, 1, "{st:?}");
    let sent = wire.len() - before;
    assert!(sent < before / 10, "scroll cost {sent} bytes, the whole screen {before}");
    assert_exact(&composite(&wire), &s, "after the scroll");
}

#[test]
fn unchanged_tiles_produce_no_output() {
    let (w, h) = (300, 200);
    let s = text_surface(w, h);
    let mut p = Planner::new();
    let set = Settings { jpeg: true, webp: true, ..Settings::default() };
    let mut wire = BytesMut::new();
    let t0 = Instant::now();
    p.encode_frame(&s, &Damage { width: w, height: h, ops: &[], full: true }, &set, t0, &mut wire);
    let mut out = BytesMut::new();
    let st =
        frame(&mut p, &s, &[DamageOp::Dirty(Rect::new(0, 0, w, h))], &set, t0 + Duration::from_millis(20), &mut out);
    assert!(out.is_empty(), "{st:?}: {:?}", String::from_utf8_lossy(&out));
    assert_eq!(st.unchanged_tiles, 5 * 4);
    // One changed pixel costs one tile, not the damaged area.
    let mut s2 = s.clone();
    s2.set(70, 70, [1, 2, 3]);
    let st =
        frame(&mut p, &s2, &[DamageOp::Dirty(Rect::new(0, 0, w, h))], &set, t0 + Duration::from_millis(40), &mut out);
    assert_eq!((st.png, st.unchanged_tiles), (1, 19), "{st:?}");
    wire.extend_from_slice(&out);
    assert_exact(&composite(&wire), &s2, "one pixel");
}

#[test]
fn naive_mode_sends_every_damaged_rectangle() {
    let (w, h) = (200, 100);
    let s = text_surface(w, h);
    let mut p = Planner::new();
    let set = Settings { naive: true, ..Settings::default() };
    let mut wire = BytesMut::new();
    let t0 = Instant::now();
    p.encode_frame(&s, &Damage { width: w, height: h, ops: &[], full: true }, &set, t0, &mut wire);
    let st = frame(&mut p, &s, &[DamageOp::Dirty(Rect::new(0, 0, w, h))], &set, t0, &mut wire);
    assert_eq!(st.png, 1, "no hashing: the unchanged damage is sent again");
    assert_exact(&composite(&wire), &s, "naive");
}

/// Found by the property test above with 3,000 cases: a hint copy that covers part of a tile's width
/// leaves that tile's segment hashes unknown, and two frames later the scroll search matched unknown
/// against unknown and copied stale pixels into a tile nobody had damaged (72 wrong pixels). Unknown
/// segments must match nothing.
#[test]
fn the_scroll_search_never_matches_unknown_segments() {
    let set = Settings::default();
    let t0 = Instant::now();
    let (mut rng, mut s, mut p, mut wire) = start(1_221_743_142_874_034_594, 138, 252, &set, t0);
    let mut partial_copies = 0;
    for i in 0..6 {
        let ops = random_frame(&mut s, &mut rng);
        partial_copies += ops
            .iter()
            .filter(|op| matches!(op, DamageOp::Copy { dst, .. } if dst.x % 64 != 0 || dst.w % 64 != 0))
            .count();
        frame(&mut p, &s, &ops, &set, t0 + Duration::from_millis(40 * (i + 1)), &mut wire);
        assert_exact(&composite(&wire), &s, &format!("frame {i} after {ops:?}"));
    }
    assert!(partial_copies > 0, "the case no longer has a copy that leaves unknown segments");
}

/// A source that counts the pixels the planner reads from it (shared memory, in guacr).
struct Counting<'a> {
    surface: &'a Surface,
    pixels: std::cell::Cell<u64>,
}

impl Source for Counting<'_> {
    fn read_rect(&self, r: Rect, dst: &mut Vec<u8>) {
        self.pixels.set(self.pixels.get() + u64::from(r.w) * u64::from(r.h));
        self.surface.read_rect(r, dst);
    }
}

/// A followed log, as Xtigervnc sends it: the text area (not tile-aligned) scrolls up by one 13-pixel line
/// with a `Copy` hint and the new line is reported dirty. The planner reads the new line's rows (to hash
/// them, and again to paint them), not the 64-row tiles the line touches; once the lines' blank ends fill
/// whole tiles, those go out as fills without being read; and the client stays exact.
#[test]
fn a_followed_log_reads_its_new_line_not_whole_tiles() {
    let (w, h) = (900, 400);
    let area = Rect::new(2, 3, 880, 390);
    let line = 13;
    let set = Settings::default();
    let t0 = Instant::now();
    let (mut rng, mut s, mut p, mut wire) = start(7, w, h, &set, t0);
    // A white screen to start from, as a terminal's.
    s.fill(Rect::new(0, 0, w, h), [255, 255, 255]);
    frame(&mut p, &s, &[DamageOp::Dirty(Rect::new(0, 0, w, h))], &set, t0, &mut wire);
    let strip = Rect::new(area.x, area.y + area.h - line, area.w, line);
    let mut reads = Vec::new();
    let mut fills = Vec::new();
    for i in 0..40u64 {
        s.copy(area.x, area.y + line, Rect::new(area.x, area.y, area.w, area.h - line));
        // A new line: text in its first 300 pixels (every other line: 100), blank after them.
        let seed = rng.next();
        let text = if i % 2 == 0 { 300 } else { 100 };
        for y in strip.y..strip.y + strip.h {
            for x in strip.x..strip.x + strip.w {
                let on =
                    x < strip.x + text && (x / 3 + y / 4 + (seed as u32 & 7)).is_multiple_of(3) && y - strip.y < 10;
                s.set(x, y, if on { [20, 20, 30] } else { [255, 255, 255] });
            }
        }
        let ops = [
            DamageOp::Copy {
                src_x: area.x,
                src_y: area.y + line,
                dst: Rect::new(area.x, area.y, area.w, area.h - line),
            },
            DamageOp::Dirty(strip),
        ];
        let counting = Counting { surface: &s, pixels: std::cell::Cell::new(0) };
        let d = Damage { width: w, height: h, ops: &ops, full: false };
        let st = p.encode_frame(&counting, &d, &set, t0 + Duration::from_millis(5 * (i + 1)), &mut wire);
        reads.push(counting.pixels.get());
        fills.push(st.fills);
        assert_exact(&composite(&wire), &s, &format!("line {i}"));
    }
    // The line's last 9 rows lie in the frame's last tile row (384..400), whose other 7 rows are white:
    // where a short line replaces a long one, those tiles turn white, known from their hashes alone.
    assert!(fills.iter().skip(1).step_by(2).all(|f| *f > 0), "fills per line {fills:?}");
    let strip_px = u64::from(strip.w * strip.h);
    // Printed for BENCHMARKS.md (`cargo test -p guac-display --test planner a_followed_log -- --nocapture`).
    eprintln!("pixels read per line: {:?} (the line has {strip_px})", reads.iter().max());
    // The strip's rows across its run of tiles (896 pixels wide), once to hash and once to paint.
    let bound = 2 * 896 * u64::from(line);
    assert!(
        reads.iter().all(|r| *r <= bound),
        "pixels read per line {reads:?}, the line has {strip_px}, bound {bound}"
    );
    // Whole tiles would be 14 × 64 × 64 = 57,344 pixels per line (two tile rows when it straddles one).
    assert!(bound < 14 * 64 * 64 / 2);
}
