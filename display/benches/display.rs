//! Micro-benchmarks on 1080p content: the Guacamole parser, tile hashing, pixel conversion, base64 and
//! each image encoder, and whole planner frames (full screen, scroll, nothing changed).
//!
//! `cargo bench -p guac-display` (divan). Figures go to BENCHMARKS.md; nothing here is asserted.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use divan::{black_box, Bencher};
use guac_display::{image, Damage, DamageOp, Planner, Rect, Settings, Source};

const W: u32 = 1920;
const H: u32 = 1080;

fn main() {
    divan::main();
}

struct Surface {
    w: u32,
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

    /// Row by row in place, as guacr's shared-memory source does (the default goes through a packed copy).
    fn read_rect_strided(&self, r: Rect, dst: &mut [u8], stride: usize) {
        let row = r.w as usize * 4;
        for i in 0..r.h as usize {
            let off = ((r.y as usize + i) * self.w as usize + r.x as usize) * 4;
            dst[i * stride..][..row].copy_from_slice(&self.px[off..off + row]);
        }
    }
}

/// A terminal-like 1080p screen: dark glyph strokes with anti-aliasing greys on white, 16-px lines.
fn text() -> Surface {
    let mut px = vec![255u8; (W * H * 4) as usize];
    for y in 0..H {
        if y % 16 >= 12 {
            continue;
        }
        for x in 0..W {
            let bits = ((y / 16).wrapping_mul(2_654_435_761) ^ (x / 8).wrapping_mul(40503)).rotate_left(y % 16);
            if bits & (1 << (x % 8)) != 0 {
                let v = if bits & 0x100 != 0 { 20 } else { 128 };
                let o = ((y * W + x) * 4) as usize;
                px[o..o + 3].copy_from_slice(&[v, v, v + 10]);
            }
        }
    }
    Surface { w: W, px }
}

/// A photo-like 1080p screen: smooth gradients with mild noise.
fn photo() -> Surface {
    let mut px = vec![0u8; (W * H * 4) as usize];
    let mut seed = 0x1234_5678_9abc_def0u64;
    for y in 0..H {
        for x in 0..W {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed % 9) as u32;
            let o = ((y * W + x) * 4) as usize;
            px[o..o + 4].copy_from_slice(&[(x / 8 + n) as u8, (y / 5 + n) as u8, ((x + y) / 12) as u8, 0]);
        }
    }
    Surface { w: W, px }
}

#[divan::bench]
fn parse_instructions(b: Bencher) {
    // A frame's worth of output: copies, fills and image blobs.
    let mut wire = BytesMut::new();
    for i in 0..200u64 {
        guac_proto::encode(&mut wire, "copy")
            .int(0)
            .uint(i)
            .uint(0)
            .uint(64)
            .uint(64)
            .int(14)
            .int(0)
            .uint(0)
            .uint(i)
            .finish();
        guac_proto::encode_blobs(&mut wire, 1, &[i as u8; 6000]);
    }
    let wire = wire.freeze();
    b.counter(divan::counter::BytesCount::new(wire.len())).bench(|| {
        let mut d = guac_proto::Decoder::new();
        d.feed(&wire);
        let mut n = 0;
        while let Ok(Some(ins)) = d.decode() {
            n += black_box(ins).args_len();
        }
        n
    });
}

#[divan::bench]
fn tile_hash_1080p(b: Bencher) {
    let s = text();
    b.counter(divan::counter::BytesCount::new(s.px.len())).bench(|| {
        let mut acc = 0u64;
        for seg in s.px.chunks_exact(256) {
            acc ^= xxhash_rust::xxh3::xxh3_64(black_box(seg));
        }
        acc
    });
}

#[divan::bench]
fn bgrx_to_rgb_1080p(b: Bencher) {
    let s = photo();
    let mut out = Vec::new();
    b.counter(divan::counter::BytesCount::new(s.px.len()))
        .bench_local(|| image::bgrx_to_rgb(black_box(&s.px), &mut out));
}

#[divan::bench]
fn palette_1080p_text(b: Bencher) {
    let s = text();
    b.bench(|| image::palette(black_box(&s.px)).map(|p| p.indices.len()));
}

#[divan::bench(args = ["text", "photo"])]
fn png_rgb_1080p(b: Bencher, content: &str) {
    let s = if content == "text" { text() } else { photo() };
    let mut rgb = Vec::new();
    image::bgrx_to_rgb(&s.px, &mut rgb);
    let mut out = Vec::new();
    b.bench_local(|| image::png(W, H, image::PngPixels::Rgb(black_box(&rgb)), &mut out));
}

/// "packed": `image::png` as used (≤ 16 colours packed 1/2/4 bits per pixel; this text has 3 colours, so
/// 2 bits); "8-bit": the same palette written one byte per pixel, as before packing, for comparison.
#[divan::bench(args = ["packed", "8-bit"])]
fn png_palette_1080p_text(b: Bencher, layout: &str) {
    let s = text();
    let mut out = Vec::new();
    b.bench_local(|| {
        if let Some(p) = image::palette(black_box(&s.px)) {
            if layout == "packed" {
                image::png(W, H, image::PngPixels::Indexed(&p), &mut out);
            } else {
                png_indexed_8bit(&p, &mut out);
            }
        }
    });
}

fn png_indexed_8bit(p: &image::Palette, out: &mut Vec<u8>) {
    out.clear();
    let mut encoder = png::Encoder::new(&mut *out, W, H);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_palette(p.rgb.clone());
    encoder.set_filter(png::Filter::NoFilter);
    if let Ok(mut writer) = encoder.write_header() {
        let _ = writer.write_image_data(&p.indices);
    }
}

#[divan::bench(args = [90, 60, 30])]
fn jpeg_1080p_photo(b: Bencher, quality: u8) {
    let s = photo();
    let mut out = Vec::new();
    b.bench_local(|| image::jpeg(W, H, black_box(&s.px), quality, &mut out));
}

#[divan::bench(args = ["text", "photo"])]
fn webp_lossless_1080p(b: Bencher, content: &str) {
    let s = if content == "text" { text() } else { photo() };
    let mut rgb = Vec::new();
    image::bgrx_to_rgb(&s.px, &mut rgb);
    let mut out = Vec::new();
    b.bench_local(|| image::webp(W, H, black_box(&rgb), &mut out));
}

#[divan::bench(args = ["base64", "base64-simd"])]
fn base64_6mb(b: Bencher, which: &str) {
    let data: Vec<u8> = (0..6 << 20).map(|i: u32| (i * 31) as u8).collect();
    let mut out = BytesMut::with_capacity(9 << 20);
    b.counter(divan::counter::BytesCount::new(data.len())).bench_local(|| {
        out.clear();
        if which == "base64" {
            use base64::Engine as _;
            let s = base64::engine::general_purpose::STANDARD.encode(black_box(&data));
            out.extend_from_slice(s.as_bytes());
        } else {
            guac_proto::encode(&mut out, "blob").base64(black_box(&data)).finish();
        }
    });
}

/// Whole planner frames: the first full frame, a one-line scroll without hints, a full damage with
/// nothing changed, and new text everywhere after a frame of other text (what a flooded terminal's
/// jump-scroll gives: nothing to reuse, every search fails); the naive baseline for the first frame.
#[divan::bench(args = ["planned full", "naive full", "planned scroll", "planned unchanged", "planned new"])]
fn planner_1080p_text(b: Bencher, case: &str) {
    let s = text();
    let mut scrolled = Surface { w: W, px: s.px[(16 * W * 4) as usize..].to_vec() };
    scrolled.px.extend(std::iter::repeat_n(255u8, (16 * W * 4) as usize));
    // The same strokes moved 8 px to the right in every row: no tile, row or segment as it was.
    let mut moved = Surface { w: W, px: s.px.clone() };
    for row in moved.px.chunks_exact_mut((W * 4) as usize) {
        row.rotate_right(8 * 4);
    }
    let full = Damage { width: W, height: H, ops: &[], full: true };
    let all = [DamageOp::Dirty(Rect::new(0, 0, W, H))];
    let dirty = Damage { width: W, height: H, ops: &all, full: false };
    let settings = Settings { naive: case.starts_with("naive"), jpeg: true, webp: false, lag_ms: 0 };
    let now = Instant::now() + Duration::from_secs(1);
    let mut prepared = Planner::new();
    if case != "planned full" && case != "naive full" {
        prepared.encode_frame(&s, &full, &settings, now, &mut BytesMut::new());
    }
    b.with_inputs(|| (prepared.clone(), BytesMut::new())).bench_local_values(|(mut p, mut out)| {
        match case {
            "planned scroll" => p.encode_frame(&scrolled, &dirty, &settings, now, &mut out),
            "planned unchanged" => p.encode_frame(&s, &dirty, &settings, now, &mut out),
            "planned new" => p.encode_frame(&moved, &dirty, &settings, now, &mut out),
            _ => p.encode_frame(&s, &full, &settings, now, &mut out),
        };
        out.len()
    });
}
