//! ZRLE (RFC 6143 §7.7.6): one zlib stream for the whole connection; each rectangle is a sequence of
//! 64×64 tiles, each raw, solid, packed-palette, plain RLE or palette RLE.
//!
//! With our pixel format (32 bpp, depth 24, little endian) a CPIXEL is the pixel's three low bytes,
//! which are already blue, green, red in surface order.

use flate2::Decompress;
use shm_proto::Rect;

use super::surface::{bgr, pixels, Surface, BPP};
use super::wire::Reader;
use super::RfbError;

const TILE: u32 = 64;
const SHORT: &str = "tile data ends early";

pub(crate) struct ZrleDecoder {
    zlib: Decompress,
    data: Vec<u8>,
    tile: Vec<u8>,
}

impl ZrleDecoder {
    pub(crate) fn new() -> ZrleDecoder {
        ZrleDecoder { zlib: Decompress::new(true), data: Vec::new(), tile: vec![0; (TILE * TILE) as usize * BPP] }
    }

    /// Decodes one rectangle whose compressed data is `compressed` (the rectangle must fit the surface).
    pub(crate) fn decode(&mut self, compressed: &[u8], rect: Rect, surface: &mut Surface<'_>) -> Result<(), RfbError> {
        let invalid = |detail| RfbError::InvalidData { encoding: "ZRLE", detail };
        let tiles = rect.w.div_ceil(TILE) as usize * rect.h.div_ceil(TILE) as usize;
        // Worst case per tile: plain RLE with one-pixel runs, 4 bytes a pixel, plus a palette header.
        let limit = rect.area() as usize * 4 + tiles * 400;
        super::zlib::inflate(&mut self.zlib, compressed, &mut self.data, limit).map_err(invalid)?;
        let mut r = Reader::new(&self.data);
        for ty in (0..rect.h).step_by(TILE as usize) {
            for tx in (0..rect.w).step_by(TILE as usize) {
                let (tw, th) = (TILE.min(rect.w - tx), TILE.min(rect.h - ty));
                let px = &mut self.tile[..(tw * th) as usize * BPP];
                decode_tile(&mut r, px, tw as usize).map_err(invalid)?;
                for row in 0..th {
                    let src = &px[(row * tw) as usize * BPP..][..tw as usize * BPP];
                    surface.row(rect.x + tx, rect.y + ty + row, tw)?.copy_from_slice(src);
                }
            }
        }
        Ok(())
    }
}

/// Decodes one tile into `px` (BGRX, `tw` pixels a row).
fn decode_tile(r: &mut Reader<'_>, px: &mut [u8], tw: usize) -> Result<(), &'static str> {
    let n = px.len() / BPP;
    let sub = r.u8().ok_or(SHORT)?;
    match sub {
        0 => {
            let raw = r.bytes(n * 3).ok_or(SHORT)?;
            for (d, s) in pixels(px).iter_mut().zip(raw.as_chunks::<3>().0) {
                *d = bgr(s);
            }
        }
        1 => {
            let p = bgr(r.bytes(3).ok_or(SHORT)?);
            pixels(px).fill(p);
        }
        2..=16 => {
            let palette = read_palette(r, sub as usize)?;
            let bits = match sub {
                2 => 1,
                3 | 4 => 2,
                _ => 4,
            };
            let row_bytes = (tw * bits).div_ceil(8);
            let th = n / tw;
            let packed = r.bytes(row_bytes * th).ok_or(SHORT)?;
            let per_byte = 8 / bits;
            let mask = (1u8 << bits) - 1;
            for (y, row) in pixels(px).chunks_exact_mut(tw).enumerate() {
                let src = &packed[y * row_bytes..][..row_bytes];
                for (x, d) in row.iter_mut().enumerate() {
                    let shift = 8 - bits * (x % per_byte + 1);
                    let index = (src[x / per_byte] >> shift) & mask;
                    *d = *palette.get(index as usize).ok_or("palette index out of range")?;
                }
            }
        }
        128 => {
            let mut i = 0;
            while i < n {
                let p = bgr(r.bytes(3).ok_or(SHORT)?);
                let len = run_length(r, n - i)?;
                pixels(&mut px[i * BPP..(i + len) * BPP]).fill(p);
                i += len;
            }
        }
        130..=255 => {
            let palette = read_palette(r, sub as usize - 128)?;
            let mut i = 0;
            while i < n {
                let index = r.u8().ok_or(SHORT)?;
                let p = *palette.get((index & 0x7f) as usize).ok_or("palette index out of range")?;
                let len = if index & 0x80 != 0 { run_length(r, n - i)? } else { 1 };
                pixels(&mut px[i * BPP..(i + len) * BPP]).fill(p);
                i += len;
            }
        }
        _ => return Err("unused subencoding"),
    }
    Ok(())
}

fn read_palette(r: &mut Reader<'_>, size: usize) -> Result<Vec<[u8; 4]>, &'static str> {
    let raw = r.bytes(size * 3).ok_or(SHORT)?;
    Ok(raw.chunks_exact(3).map(bgr).collect())
}

/// A run length: 1 plus the sum of bytes up to and including the first one that is not 255.
fn run_length(r: &mut Reader<'_>, left: usize) -> Result<usize, &'static str> {
    let mut len = 1usize;
    loop {
        let b = r.u8().ok_or(SHORT)?;
        len += b as usize;
        if len > left {
            return Err("run longer than the tile");
        }
        if b != 255 {
            return Ok(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfb::zlib::deflate_sync;
    use flate2::{Compress, Compression};

    fn surface_bytes(w: u32, h: u32) -> Vec<u8> {
        vec![0xee; (w * h) as usize * BPP]
    }

    fn px(surface: &[u8], w: u32, x: u32, y: u32) -> [u8; 4] {
        let o = ((y * w + x) as usize) * BPP;
        surface[o..o + 4].try_into().unwrap()
    }

    #[test]
    fn every_subencoding_decodes() {
        let mut c = Compress::new(Compression::fast(), true);
        let mut dec = ZrleDecoder::new();
        let (w, h) = (8, 2);
        let mut pixels = surface_bytes(w, h);
        let stride = (w as usize) * BPP;
        let rect = Rect::new(0, 0, 4, 2);
        let cases: Vec<(Vec<u8>, [[u8; 4]; 8])> = {
            let a = [1, 2, 3, 0];
            let b = [4, 5, 6, 0];
            let mut raw = vec![0u8];
            for i in 0..8u8 {
                raw.extend_from_slice(&[i, i, i]);
            }
            let raw_expect: [[u8; 4]; 8] = std::array::from_fn(|i| [i as u8, i as u8, i as u8, 0]);
            vec![
                (raw, raw_expect),
                (vec![1, 1, 2, 3], [a; 8]),
                // 2-colour palette, 1 bit per pixel: rows 0b1010_0000, 0b0101_0000.
                (vec![2, 1, 2, 3, 4, 5, 6, 0b1010_0000, 0b0101_0000], [b, a, b, a, a, b, a, b]),
                // plain RLE: 3 × a, then 5 × b.
                (vec![128, 1, 2, 3, 2, 4, 5, 6, 4], [a, a, a, b, b, b, b, b]),
                // palette RLE: index 1 run of 6 (0x81, 5), then index 0 twice as single pixels.
                (vec![130, 1, 2, 3, 4, 5, 6, 0x81, 5, 0, 0], [b, b, b, b, b, b, a, a]),
            ]
        };
        for (tile, expect) in cases {
            let wire = deflate_sync(&mut c, &tile);
            dec.decode(&wire, rect, &mut Surface::new(&mut pixels, stride)).unwrap();
            for (i, e) in expect.iter().enumerate() {
                assert_eq!(px(&pixels, w, i as u32 % 4, i as u32 / 4), *e, "tile {tile:?} pixel {i}");
            }
            assert_eq!(px(&pixels, w, 4, 0), [0xee; 4], "outside the rectangle is untouched");
        }
    }

    #[test]
    fn hostile_tiles_are_errors() {
        let rect = Rect::new(0, 0, 4, 2);
        let hostile: &[&[u8]] = &[
            &[128, 1, 2, 3, 255, 255],           // run longer than the tile
            &[130, 1, 2, 3, 4, 5, 6, 0x05],      // palette index 5 of 2
            &[50],                               // unused subencoding
            &[0, 1, 2],                          // truncated raw tile
            &[2, 1, 2, 3, 4, 5, 6, 0b1100_0000], // one row of bits missing
        ];
        for tile in hostile {
            let mut c = Compress::new(Compression::fast(), true);
            let wire = deflate_sync(&mut c, tile);
            let mut pixels = surface_bytes(4, 2);
            let result = ZrleDecoder::new().decode(&wire, rect, &mut Surface::new(&mut pixels, 16));
            assert!(result.is_err(), "{tile:?} must fail");
        }
    }

    #[test]
    fn multi_tile_rectangles_cover_the_whole_rect() {
        let (w, h) = (70u32, 65u32);
        let rect = Rect::new(0, 0, w, h);
        let mut stream = Vec::new();
        for (i, (tw, th)) in [(64u32, 64u32), (6, 64), (64, 1), (6, 1)].into_iter().enumerate() {
            let _ = (tw, th);
            stream.extend_from_slice(&[1, i as u8, 0, 0]);
        }
        let mut c = Compress::new(Compression::fast(), true);
        let wire = deflate_sync(&mut c, &stream);
        let mut pixels = surface_bytes(w, h);
        ZrleDecoder::new().decode(&wire, rect, &mut Surface::new(&mut pixels, w as usize * BPP)).unwrap();
        assert_eq!(px(&pixels, w, 63, 63)[0], 0);
        assert_eq!(px(&pixels, w, 64, 0)[0], 1);
        assert_eq!(px(&pixels, w, 0, 64)[0], 2);
        assert_eq!(px(&pixels, w, 69, 64)[0], 3);
    }
}
