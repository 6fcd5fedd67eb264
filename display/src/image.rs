//! Pixel conversion and the image encoders (PNG true colour or palette, JPEG, WebP lossless).
//!
//! Input is always the worker's BGRX (rows packed, `width * 4` bytes each). The loops are plain iterator
//! code over fixed-size chunks so the compiler vectorises them; `benches/display.rs` measures them.

use std::cell::RefCell;
use std::io::Write as _;

/// BGRX → RGB, appended to `out` (cleared first).
pub fn bgrx_to_rgb(bgrx: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.resize(bgrx.len() / 4 * 3, 0);
    // Four pixels per step as fixed-size arrays: no bounds checks, and the compiler emits shuffles.
    let mut dst = out.chunks_exact_mut(12);
    let mut src = bgrx.chunks_exact(16);
    for (d, s) in (&mut dst).zip(&mut src) {
        let s: &[u8; 16] = s.try_into().unwrap_or(&[0; 16]);
        d.copy_from_slice(&[s[2], s[1], s[0], s[6], s[5], s[4], s[10], s[9], s[8], s[14], s[13], s[12]]);
    }
    for (d, s) in dst.into_remainder().chunks_exact_mut(3).zip(src.remainder().chunks_exact(4)) {
        d.copy_from_slice(&[s[2], s[1], s[0]]);
    }
}

/// The colour of `bgrx` when every pixel has the same RGB (the padding byte is ignored), as `[r, g, b]`.
pub fn solid_colour(bgrx: &[u8]) -> Option<[u8; 3]> {
    let first = u32::from_le_bytes(bgrx.get(..4)?.try_into().ok()?) & 0x00ff_ffff;
    let all = bgrx.chunks_exact(4).all(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]) == first);
    all.then(|| {
        let [b, g, r, _] = first.to_le_bytes();
        [r, g, b]
    })
}

/// A palette of at most 256 colours and one index per pixel, or `None` when `bgrx` has more colours.
pub struct Palette {
    /// RGB triples.
    pub rgb: Vec<u8>,
    pub indices: Vec<u8>,
}

/// Open-addressing table size for [`palette`]: a power of two well above 256 keeps probes short.
const PALETTE_SLOTS: usize = 1024;

/// Builds the palette of `bgrx` if it has at most 256 colours. Runs of equal pixels (most of any text or
/// UI image) cost one comparison each.
pub fn palette(bgrx: &[u8]) -> Option<Palette> {
    let mut keys = [u32::MAX; PALETTE_SLOTS];
    let mut vals = [0u8; PALETTE_SLOTS];
    let mut rgb = Vec::with_capacity(256 * 3);
    let mut indices = vec![0u8; bgrx.len() / 4];
    let mut last_key = u32::MAX;
    let mut last_index = 0u8;
    for (p, index) in bgrx.chunks_exact(4).zip(indices.iter_mut()) {
        // The padding byte is masked off, so `u32::MAX` never occurs as a key.
        let key = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & 0x00ff_ffff;
        if key != last_key {
            let mut slot = (key.wrapping_mul(0x9E37_79B1) >> 22) as usize & (PALETTE_SLOTS - 1);
            loop {
                if keys[slot] == key {
                    last_index = vals[slot];
                    break;
                }
                if keys[slot] == u32::MAX {
                    let n = rgb.len() / 3;
                    if n == 256 {
                        return None;
                    }
                    keys[slot] = key;
                    vals[slot] = n as u8;
                    rgb.extend_from_slice(&[p[2], p[1], p[0]]);
                    last_index = n as u8;
                    break;
                }
                slot = (slot + 1) & (PALETTE_SLOTS - 1);
            }
            last_key = key;
        }
        *index = last_index;
    }
    Some(Palette { rgb, indices })
}

/// Which colour layout a PNG gets.
pub enum PngPixels<'a> {
    Rgb(&'a [u8]),
    Rgba(&'a [u8]),
    Indexed(&'a Palette),
}

/// PNG with the fast deflate and the Sub filter (true colour) or no filter (palette indices compress well
/// as they are).
pub fn png(width: u32, height: u32, pixels: PngPixels<'_>, out: &mut Vec<u8>) {
    out.clear();
    let mut packed = Vec::new();
    let mut encoder = png::Encoder::new(&mut *out, width, height);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let data = match pixels {
        PngPixels::Rgb(d) => {
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_filter(png::Filter::Sub);
            d
        }
        PngPixels::Rgba(d) => {
            encoder.set_color(png::ColorType::Rgba);
            encoder.set_filter(png::Filter::Sub);
            d
        }
        PngPixels::Indexed(p) => {
            encoder.set_color(png::ColorType::Indexed);
            encoder.set_palette(p.rgb.clone());
            encoder.set_filter(png::Filter::NoFilter);
            // Few colours (text: foreground, background and a few greys) pack 2, 4 or 8 pixels per byte:
            // deflate, the dearest step, then reads a half to an eighth of the bytes.
            let depth = match p.rgb.len() / 3 {
                0..=2 => 1,
                3..=4 => 2,
                5..=16 => 4,
                _ => 8,
            };
            if depth < 8 {
                encoder.set_depth(match depth {
                    1 => png::BitDepth::One,
                    2 => png::BitDepth::Two,
                    _ => png::BitDepth::Four,
                });
                pack_indices(&p.indices, width as usize, depth, &mut packed);
                &packed
            } else {
                &p.indices
            }
        }
    };
    // Writing into a Vec cannot fail and the dimensions match the data by construction.
    if let Ok(mut writer) = encoder.write_header() {
        let _ = writer.write_image_data(data);
    }
}

/// Packs 8-bit palette indices (all below `1 << depth`) into PNG rows of `depth`-bit samples, the first
/// pixel in the high bits, each row padded to a whole byte.
pub fn pack_indices(indices: &[u8], width: usize, depth: usize, out: &mut Vec<u8>) {
    out.clear();
    if width == 0 {
        return;
    }
    let per_byte = 8 / depth;
    out.reserve(indices.len() / width * width.div_ceil(per_byte));
    for row in indices.chunks_exact(width) {
        let mut chunks = row.chunks_exact(per_byte);
        for c in &mut chunks {
            out.push(c.iter().fold(0u8, |acc, &i| (acc << depth) | i));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let b = rest.iter().fold(0u8, |acc, &i| (acc << depth) | i);
            out.push(b << (depth * (per_byte - rest.len())));
        }
    }
}

thread_local! {
    /// One libjpeg-turbo compressor per encoder thread: `tjInitCompress` allocates the whole libjpeg state,
    /// which is worth keeping across the many small regions a thread encodes.
    static TURBO: RefCell<Option<turbojpeg::Compressor>> = const { RefCell::new(None) };
}

/// Baseline JPEG of BGRX pixels at `quality` (1..=100), 4:2:0, through libjpeg-turbo (its SIMD colour
/// conversion, DCT and Huffman coding; BGRX is read directly, no conversion pass). `out` is left empty when
/// the compressor fails (it only can on allocation failure); callers treat an empty image as not encoded.
pub fn jpeg(width: u32, height: u32, bgrx: &[u8], quality: u8, out: &mut Vec<u8>) {
    out.clear();
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 || bgrx.len() < w * h * 4 {
        return;
    }
    let image =
        turbojpeg::Image { pixels: bgrx, width: w, pitch: w * 4, height: h, format: turbojpeg::PixelFormat::BGRX };
    TURBO.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = turbojpeg::Compressor::new().ok();
        }
        let Some(c) = slot.as_mut() else { return };
        c.set_quality(i32::from(quality.clamp(1, 100)));
        c.set_subsamp(turbojpeg::Subsamp::Sub2x2);
        // The library allocates its own output (sized by `tjBufSize`); one copy of the compressed bytes
        // into the caller's reused buffer is far cheaper than zeroing a worst-case-sized Vec every call.
        if let Ok(buf) = c.compress_to_owned(image) {
            out.extend_from_slice(&buf);
        }
    });
}

/// Lossless WebP of RGB pixels.
pub fn webp(width: u32, height: u32, rgb: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let encoder = image_webp::WebPEncoder::new(&mut *out);
    let _ = encoder.encode(rgb, width, height, image_webp::ColorType::Rgb8);
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solid_ignores_padding() {
        assert_eq!(solid_colour(&[1, 2, 3, 0, 1, 2, 3, 9]), Some([3, 2, 1]));
        assert_eq!(solid_colour(&[1, 2, 3, 0, 1, 2, 4, 0]), None);
        assert_eq!(solid_colour(&[]), None);
    }

    #[test]
    fn palette_counts_colours_and_gives_up_past_256() {
        let mut px = Vec::new();
        for i in 0..256u32 {
            px.extend_from_slice(&[i as u8, (i >> 1) as u8, 7, 0xff]);
            px.extend_from_slice(&[i as u8, (i >> 1) as u8, 7, 0x00]);
        }
        let p = palette(&px).expect("256 colours fit");
        assert_eq!(p.rgb.len(), 256 * 3);
        assert_eq!(p.indices.len(), 512);
        assert_eq!(p.indices[0], p.indices[1], "padding byte is ignored");
        assert_eq!(&p.rgb[3 * p.indices[2] as usize..][..3], &[7, 0, 1]);
        px.extend_from_slice(&[1, 1, 1, 0]);
        assert!(palette(&px).is_none());
    }

    /// libjpeg-turbo reads BGRX in the right channel order, and a smooth many-coloured area at q90
    /// decodes (with the pure-Rust decoder the test client uses) within a few levels of the source.
    #[test]
    fn jpeg_round_trips_bgrx_within_tolerance() {
        let (w, h) = (120u32, 70u32);
        let mut bgrx = Vec::new();
        for y in 0..h {
            for x in 0..w {
                bgrx.extend_from_slice(&[((x + y) / 2) as u8, (y * 2) as u8, (x * 2) as u8, 0]);
            }
        }
        let mut out = Vec::new();
        jpeg(w, h, &bgrx, 90, &mut out);
        let mut dec = jpeg_decoder::Decoder::new(&out[..]);
        let rgb = dec.decode().expect("valid JPEG");
        let info = dec.info().expect("frame info");
        assert_eq!((u32::from(info.width), u32::from(info.height)), (w, h));
        let max = rgb
            .chunks_exact(3)
            .zip(bgrx.chunks_exact(4))
            .flat_map(|(d, s)| [d[0].abs_diff(s[2]), d[1].abs_diff(s[1]), d[2].abs_diff(s[0])])
            .max();
        assert!(max.is_some_and(|m| m <= 16), "max channel difference {max:?}");
        jpeg(0, 10, &bgrx, 90, &mut out);
        assert!(out.is_empty(), "an empty image is not encoded");
    }

    #[test]
    fn png_round_trips_in_both_layouts() {
        let decode = |data: &[u8]| {
            let mut decoder = png::Decoder::new(std::io::Cursor::new(data.to_vec()));
            decoder.set_transformations(png::Transformations::EXPAND);
            let mut reader = decoder.read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size().unwrap()];
            reader.next_frame(&mut buf).unwrap();
            buf
        };
        let mut out = Vec::new();
        png(2, 1, PngPixels::Rgb(&[255, 0, 0, 0, 255, 0]), &mut out);
        assert_eq!(&decode(&out)[..6], &[255, 0, 0, 0, 255, 0]);
        let p = palette(&[0, 0, 255, 0, 0, 255, 0, 0]).unwrap();
        png(2, 1, PngPixels::Indexed(&p), &mut out);
        assert_eq!(&decode(&out)[..6], &[255, 0, 0, 0, 255, 0]);
    }

    /// Palettes of 2, 4, 16 and 17 colours (1, 2, 4 and 8 bits per pixel) at widths that leave a partial
    /// last byte per row decode to exactly the source pixels.
    #[test]
    fn palette_png_round_trips_at_every_bit_depth() {
        for colours in [1u32, 2, 3, 4, 5, 16, 17] {
            for (w, h) in [(1u32, 1u32), (7, 3), (9, 2), (13, 5), (64, 4)] {
                let bgrx: Vec<u8> = (0..w * h)
                    .flat_map(|i| {
                        let c = (i * 7 + i / w) % colours;
                        [(c * 13) as u8, (c * 5) as u8, 255 - c as u8, 0]
                    })
                    .collect();
                let p = palette(&bgrx).unwrap();
                let mut out = Vec::new();
                png(w, h, PngPixels::Indexed(&p), &mut out);
                let mut decoder = png::Decoder::new(std::io::Cursor::new(out));
                decoder.set_transformations(png::Transformations::EXPAND);
                let mut reader = decoder.read_info().unwrap();
                let mut buf = vec![0; reader.output_buffer_size().unwrap()];
                let info = reader.next_frame(&mut buf).unwrap();
                assert_eq!(info.color_type, png::ColorType::Rgb, "{colours} colours");
                let want: Vec<u8> = bgrx.chunks_exact(4).flat_map(|p| [p[2], p[1], p[0]]).collect();
                assert_eq!(&buf[..want.len()], &want[..], "{colours} colours, {w}x{h}");
            }
        }
    }

    #[test]
    fn rgb_conversion() {
        let mut out = Vec::new();
        bgrx_to_rgb(&[1, 2, 3, 4, 5, 6, 7, 8], &mut out);
        assert_eq!(out, [3, 2, 1, 7, 6, 5]);
        let bgrx: Vec<u8> = (0..4 * 11).map(|i| i as u8).collect();
        bgrx_to_rgb(&bgrx, &mut out);
        let want: Vec<u8> = bgrx.chunks_exact(4).flat_map(|p| [p[2], p[1], p[0]]).collect();
        assert_eq!(out, want);
    }
}
