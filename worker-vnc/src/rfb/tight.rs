//! Tight (the TightVNC extension, as documented in the community RFB specification): per rectangle a
//! compression-control byte that may reset any of four zlib streams, then a fill colour, a JPEG image or
//! "basic" data through a copy, palette or gradient filter. With our pixel format a TPIXEL is three bytes:
//! red, green, blue.
//!
//! Parsing ([`parse`]) only measures the rectangle, so the caller can wait until all of its bytes are
//! buffered; [`TightDecoder::decode`] then runs once (the zlib streams must see each byte exactly once).

use flate2::Decompress;
use shm_proto::Rect;

use super::surface::{pixels, rgb, Surface, BPP};
use super::wire::Reader;
use super::RfbError;

const FILL: u8 = 0x08;
const JPEG: u8 = 0x09;
/// Basic data shorter than this is sent without zlib.
const MIN_TO_COMPRESS: usize = 12;
const FILTER_COPY: u8 = 0;
const FILTER_PALETTE: u8 = 1;
const FILTER_GRADIENT: u8 = 2;

fn invalid(detail: &'static str) -> RfbError {
    RfbError::InvalidData { encoding: "Tight", detail }
}

/// One measured Tight rectangle, borrowing its bytes from the input buffer.
pub(crate) struct TightRect<'a> {
    /// Bit `i` set: reset zlib stream `i` before decoding.
    resets: u8,
    kind: Kind<'a>,
}

enum Kind<'a> {
    Fill(&'a [u8]),
    Jpeg(&'a [u8]),
    Basic { stream: usize, filter: Filter<'a>, data: &'a [u8], compressed: bool, len: usize },
}

enum Filter<'a> {
    Copy,
    /// Palette colours (TPIXELs, 1 to 256 of them).
    Palette(&'a [u8]),
    Gradient,
}

/// Reads the compact length of the Tight spec: 1 to 3 bytes, 7 + 7 + 8 bits, so at most 4 MiB.
fn compact_length(r: &mut Reader<'_>) -> Option<usize> {
    let b0 = r.u8()?;
    let mut len = (b0 & 0x7f) as usize;
    if b0 & 0x80 != 0 {
        let b1 = r.u8()?;
        len |= ((b1 & 0x7f) as usize) << 7;
        if b1 & 0x80 != 0 {
            len |= (r.u8()? as usize) << 14;
        }
    }
    Some(len)
}

/// Measures the rectangle at the reader. `Ok(None)` when its bytes are not all buffered yet.
pub(crate) fn parse<'a>(r: &mut Reader<'a>, rect: Rect) -> Result<Option<TightRect<'a>>, RfbError> {
    macro_rules! take {
        ($e:expr) => {
            match $e {
                Some(v) => v,
                None => return Ok(None),
            }
        };
    }
    let control = take!(r.u8());
    let resets = control & 0x0f;
    let kind = match control >> 4 {
        FILL => Kind::Fill(take!(r.bytes(3))),
        JPEG => {
            let len = take!(compact_length(r));
            Kind::Jpeg(take!(r.bytes(len)))
        }
        basic if basic < FILL => {
            let stream = (basic & 0x03) as usize;
            let filter_id = if basic & 0x04 != 0 { take!(r.u8()) } else { FILTER_COPY };
            let (w, h) = (rect.w as usize, rect.h as usize);
            let (filter, len) = match filter_id {
                FILTER_COPY => (Filter::Copy, w * h * 3),
                FILTER_GRADIENT => (Filter::Gradient, w * h * 3),
                FILTER_PALETTE => {
                    let colours = take!(r.u8()) as usize + 1;
                    let palette = take!(r.bytes(colours * 3));
                    let row = if colours == 2 { w.div_ceil(8) } else { w };
                    (Filter::Palette(palette), row * h)
                }
                _ => return Err(invalid("unknown filter")),
            };
            let compressed = len >= MIN_TO_COMPRESS;
            let data_len = if compressed { take!(compact_length(r)) } else { len };
            Kind::Basic { stream, filter, data: take!(r.bytes(data_len)), compressed, len }
        }
        _ => return Err(invalid("unsupported compression type")),
    };
    Ok(Some(TightRect { resets, kind }))
}

pub(crate) struct TightDecoder {
    streams: [Option<Decompress>; 4],
    data: Vec<u8>,
    rows: Vec<u8>,
}

impl TightDecoder {
    pub(crate) fn new() -> TightDecoder {
        TightDecoder { streams: [None, None, None, None], data: Vec::new(), rows: Vec::new() }
    }

    /// Decodes a measured rectangle into the surface (the rectangle must fit it).
    pub(crate) fn decode(
        &mut self,
        t: TightRect<'_>,
        rect: Rect,
        surface: &mut Surface<'_>,
        swap: bool,
    ) -> Result<(), RfbError> {
        for (i, stream) in self.streams.iter_mut().enumerate() {
            if t.resets & (1 << i) != 0 {
                *stream = None;
            }
        }
        match t.kind {
            Kind::Fill(pixel) => surface.fill(rect, rgb(pixel, swap)),
            Kind::Jpeg(jpeg) => decode_jpeg(jpeg, rect, surface, swap),
            Kind::Basic { stream, filter, data, compressed, len } => {
                let bytes: &[u8] = if compressed {
                    let z = self.streams[stream].get_or_insert_with(|| Decompress::new(true));
                    super::zlib::inflate(z, data, &mut self.data, len).map_err(invalid)?;
                    if self.data.len() != len {
                        return Err(invalid("zlib data is shorter than the rectangle"));
                    }
                    &self.data
                } else {
                    data
                };
                if rect.is_empty() {
                    // Nothing to draw; the zlib stream above still consumed its share.
                    return Ok(());
                }
                let w = rect.w as usize;
                match filter {
                    Filter::Copy => {
                        for (y, src) in bytes.chunks_exact(w * 3).enumerate() {
                            write_rgb_row(surface.row(rect.x, rect.y + y as u32, rect.w)?, src, swap);
                        }
                        Ok(())
                    }
                    Filter::Gradient => {
                        self.rows.clear();
                        self.rows.resize(w * 6, 0);
                        let (prev, this) = self.rows.split_at_mut(w * 3);
                        for (y, src) in bytes.chunks_exact(w * 3).enumerate() {
                            ungradient_row(src, prev, this);
                            write_rgb_row(surface.row(rect.x, rect.y + y as u32, rect.w)?, this, swap);
                            prev.copy_from_slice(this);
                        }
                        Ok(())
                    }
                    Filter::Palette(colours) => {
                        // An index past the palette is an error, found before its row is drawn.
                        let mut palette = [[0u8; BPP]; 256];
                        let size = colours.len() / 3;
                        for (p, c) in palette.iter_mut().zip(colours.chunks_exact(3)) {
                            *p = rgb(c, swap);
                        }
                        let row_len = if size == 2 { w.div_ceil(8) } else { w };
                        for (y, src) in bytes.chunks_exact(row_len.max(1)).take(rect.h as usize).enumerate() {
                            let dst = pixels(surface.row(rect.x, rect.y + y as u32, rect.w)?);
                            if size == 2 {
                                // One bit per pixel, most significant first; a row ends on a byte boundary.
                                let (zero, one) = (palette[0], palette[1]);
                                for (chunk, &byte) in dst.chunks_mut(8).zip(src) {
                                    for (i, d) in chunk.iter_mut().enumerate() {
                                        *d = if byte & (0x80 >> i) != 0 { one } else { zero };
                                    }
                                }
                            } else {
                                if src.iter().any(|&index| usize::from(index) >= size) {
                                    return Err(invalid("palette index out of range"));
                                }
                                for (d, &index) in dst.iter_mut().zip(src) {
                                    *d = palette[usize::from(index)];
                                }
                            }
                        }
                        Ok(())
                    }
                }
            }
        }
    }
}

fn write_rgb_row(dst: &mut [u8], src: &[u8], swap: bool) {
    for (d, s) in pixels(dst).iter_mut().zip(src.as_chunks::<3>().0) {
        *d = rgb(s, swap);
    }
}

/// Undoes the gradient filter for one row: each component is predicted as left + up − up-left (clamped
/// to 0..=255, with zeros outside the rectangle) and the data holds the difference.
fn ungradient_row(src: &[u8], prev: &[u8], this: &mut [u8]) {
    for i in 0..src.len() {
        let up = prev[i] as i32;
        let (left, up_left) = if i >= 3 { (this[i - 3] as i32, prev[i - 3] as i32) } else { (0, 0) };
        let predicted = (left + up - up_left).clamp(0, 255);
        this[i] = (src[i] as i32 + predicted) as u8;
    }
}

fn decode_jpeg(jpeg: &[u8], rect: Rect, surface: &mut Surface<'_>, swap: bool) -> Result<(), RfbError> {
    let mut decoder = jpeg_decoder::Decoder::new(jpeg);
    decoder.set_max_decoding_buffer_size(rect.area() as usize * 4 + 4096);
    decoder.read_info().map_err(|_| invalid("JPEG header does not decode"))?;
    let info = decoder.info().ok_or(invalid("JPEG header does not decode"))?;
    if (u32::from(info.width), u32::from(info.height)) != (rect.w, rect.h) {
        return Err(invalid("JPEG size differs from the rectangle"));
    }
    let decoded = decoder.decode().map_err(|_| invalid("JPEG data does not decode"))?;
    let w = rect.w as usize;
    match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 if decoded.len() == w * rect.h as usize * 3 => {
            for (y, src) in decoded.chunks_exact(w * 3).enumerate() {
                write_rgb_row(surface.row(rect.x, rect.y + y as u32, rect.w)?, src, swap);
            }
        }
        jpeg_decoder::PixelFormat::L8 if decoded.len() == w * rect.h as usize => {
            for (y, src) in decoded.chunks_exact(w).enumerate() {
                for (d, &g) in pixels(surface.row(rect.x, rect.y + y as u32, rect.w)?).iter_mut().zip(src) {
                    *d = [g, g, g, 0];
                }
            }
        }
        _ => return Err(invalid("unsupported JPEG pixel format")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfb::zlib::deflate_sync;
    use flate2::{Compress, Compression};

    const W: u32 = 4;
    const H: u32 = 4;

    fn run(dec: &mut TightDecoder, bytes: &[u8], rect: Rect, swap: bool) -> Result<(Vec<u8>, usize), RfbError> {
        let mut pixels = vec![0xee; (W * H) as usize * BPP];
        let mut r = Reader::new(bytes);
        let t = parse(&mut r, rect)?.expect("complete");
        let used = r.pos();
        dec.decode(t, rect, &mut Surface::new(&mut pixels, W as usize * BPP), swap)?;
        Ok((pixels, used))
    }

    fn px(p: &[u8], x: u32, y: u32) -> [u8; 4] {
        p[((y * W + x) as usize) * BPP..][..4].try_into().unwrap()
    }

    #[test]
    fn fill_and_swap() {
        let mut dec = TightDecoder::new();
        let (p, used) = run(&mut dec, &[0x80, 10, 20, 30, 99], Rect::new(1, 1, 2, 2), false).unwrap();
        assert_eq!(used, 4);
        assert_eq!(px(&p, 1, 1), [30, 20, 10, 0]);
        assert_eq!(px(&p, 2, 2), [30, 20, 10, 0]);
        assert_eq!(px(&p, 0, 0), [0xee; 4]);
        let (p, _) = run(&mut dec, &[0x80, 10, 20, 30], Rect::new(0, 0, 1, 1), true).unwrap();
        assert_eq!(px(&p, 0, 0), [10, 20, 30, 0]);
    }

    #[test]
    fn short_basic_data_is_not_compressed() {
        // 2×1 copy filter = 6 bytes < 12: sent raw, no filter byte (bit 6 clear).
        let bytes = [0x00, 1, 2, 3, 4, 5, 6];
        let (p, used) = run(&mut TightDecoder::new(), &bytes, Rect::new(0, 0, 2, 1), false).unwrap();
        assert_eq!(used, 7);
        assert_eq!((px(&p, 0, 0), px(&p, 1, 0)), ([3, 2, 1, 0], [6, 5, 4, 0]));
    }

    #[test]
    fn compressed_copy_palette_and_gradient_with_stream_resets() {
        let mut dec = TightDecoder::new();
        let mut z1 = Compress::new(Compression::fast(), true);
        // Copy filter on stream 1, 4×4 = 48 bytes.
        let data: Vec<u8> = (0..48).collect();
        let wire = deflate_sync(&mut z1, &data);
        let mut bytes = vec![0x10, wire.len() as u8];
        bytes.extend_from_slice(&wire);
        let (p, _) = run(&mut dec, &bytes, Rect::new(0, 0, 4, 4), false).unwrap();
        assert_eq!(px(&p, 3, 3), [47, 46, 45, 0]);
        // Same stream continues.
        let wire = deflate_sync(&mut z1, &data);
        let mut bytes = vec![0x10, wire.len() as u8];
        bytes.extend_from_slice(&wire);
        assert!(run(&mut dec, &bytes, Rect::new(0, 0, 4, 4), false).is_ok());
        // A fresh compressor on stream 1 without the reset bit fails; with the reset bit (0x02) it works.
        let mut fresh = Compress::new(Compression::fast(), true);
        let wire = deflate_sync(&mut fresh, &data);
        let mut bytes = vec![0x12, wire.len() as u8];
        bytes.extend_from_slice(&wire);
        assert!(run(&mut dec, &bytes, Rect::new(0, 0, 4, 4), false).is_ok());

        // Two-colour palette, explicit filter (0x40) on stream 0: 1 bit per pixel, rows padded to a byte.
        let bits = [0b1000_0000u8, 0b0100_0000, 0b0010_0000, 0b0001_0000];
        let bytes = [&[0x40u8, FILTER_PALETTE, 1, 1, 1, 1, 9, 9, 9][..], &bits].concat();
        let (p, _) = run(&mut dec, &bytes, Rect::new(0, 0, 4, 4), false).unwrap();
        assert_eq!((px(&p, 0, 0), px(&p, 1, 0), px(&p, 1, 1)), ([9, 9, 9, 0], [1, 1, 1, 0], [9, 9, 9, 0]));

        // Gradient: a constant colour (5,6,7) encodes as the colour for the first pixel and zeros after.
        let mut z2 = Compress::new(Compression::fast(), true);
        let mut diff = vec![0u8; 48];
        diff[..3].copy_from_slice(&[5, 6, 7]);
        let wire = deflate_sync(&mut z2, &diff);
        let mut bytes = vec![0x60, FILTER_GRADIENT, wire.len() as u8];
        bytes.extend_from_slice(&wire);
        let (p, _) = run(&mut dec, &bytes, Rect::new(0, 0, 4, 4), false).unwrap();
        for (x, y) in [(0, 0), (3, 0), (0, 3), (3, 3)] {
            assert_eq!(px(&p, x, y), [7, 6, 5, 0], "({x},{y})");
        }
    }

    /// Palette rows wider than one byte of bits, ending mid-byte, at an offset: every pixel against the
    /// spec's reading (bit 7 first for two colours, one index a byte otherwise), both channel orders.
    #[test]
    fn palettes_expand_pixel_by_pixel() {
        const SW: usize = 16;
        let rect = Rect::new(3, 1, 11, 2);
        let colours: [[u8; 3]; 3] = [[1, 2, 3], [40, 50, 60], [200, 100, 0]];
        let expect = |index: usize, swap: bool| {
            let [r, g, b] = colours[index];
            if swap {
                [r, g, b, 0]
            } else {
                [b, g, r, 0]
            }
        };
        for swap in [false, true] {
            // Two colours: 11 pixels = 2 bytes a row (the last 5 bits are padding).
            let rows = [[0b1011_0010u8, 0b1010_0000], [0b0100_1101, 0b0110_0000]];
            let mut bytes = vec![0x40u8, FILTER_PALETTE, 1];
            bytes.extend(colours[..2].concat());
            bytes.extend(rows.concat());
            let mut pixels = vec![0xee; SW * 4 * BPP];
            let t = parse(&mut Reader::new(&bytes), rect).unwrap().expect("complete");
            TightDecoder::new().decode(t, rect, &mut Surface::new(&mut pixels, SW * BPP), swap).unwrap();
            for (y, row) in rows.iter().enumerate() {
                for x in 0..11 {
                    let bit = (row[x / 8] >> (7 - x % 8)) & 1;
                    let at = ((1 + y) * SW + 3 + x) * BPP;
                    assert_eq!(pixels[at..at + 4], expect(bit as usize, swap), "two colours ({x},{y}) swap {swap}");
                }
            }
            assert_eq!(pixels[(SW + 14) * BPP..][..4], [0xee; 4], "nothing drawn past the rectangle");

            // Three colours: one index a byte, 22 bytes ≥ 12, so compressed.
            let indices: Vec<u8> = (0..22).map(|i| (i * 7 % 3) as u8).collect();
            let wire = deflate_sync(&mut Compress::new(Compression::fast(), true), &indices);
            let mut bytes = vec![0x40u8, FILTER_PALETTE, 2];
            bytes.extend(colours.concat());
            bytes.push(wire.len() as u8);
            bytes.extend(&wire);
            let mut pixels = vec![0xee; SW * 4 * BPP];
            let t = parse(&mut Reader::new(&bytes), rect).unwrap().expect("complete");
            TightDecoder::new().decode(t, rect, &mut Surface::new(&mut pixels, SW * BPP), swap).unwrap();
            for (i, &index) in indices.iter().enumerate() {
                let at = ((1 + i / 11) * SW + 3 + i % 11) * BPP;
                assert_eq!(pixels[at..at + 4], expect(index as usize, swap), "three colours, pixel {i}");
            }
        }
    }

    #[test]
    fn gradient_prediction_is_clamped() {
        let prev = [200, 0, 0, 10, 0, 0];
        let mut this = [0u8; 6];
        // left 250, up 10, up-left 200 → 60; data 1 → 61. First pixel: up 200 + 50 = 250.
        ungradient_row(&[50, 0, 0, 1, 0, 0], &prev, &mut this);
        assert_eq!(this, [250, 0, 0, 61, 0, 0]);
        // left 0, up 255, up-left 0 → 255 (clamped from above is a no-op); with up-left 255 → 0.
        let mut this = [0u8; 6];
        ungradient_row(&[0, 0, 0, 3, 0, 0], &[255, 0, 0, 0, 0, 0], &mut this);
        assert_eq!(this[3], 3, "0 + 0 - 255 clamps to 0");
    }

    #[test]
    fn incomplete_data_waits_and_hostile_data_fails() {
        let rect = Rect::new(0, 0, 4, 4);
        for partial in [&[][..], &[0x80, 1], &[0x90, 0x85], &[0x90, 5, 1, 2], &[0x40, 1, 1, 0, 0, 0]] {
            assert!(parse(&mut Reader::new(partial), rect).unwrap().is_none(), "{partial:?}");
        }
        assert!(parse(&mut Reader::new(&[0xa0]), rect).is_err(), "PNG was never advertised");
        assert!(parse(&mut Reader::new(&[0xf0]), rect).is_err());
        assert!(parse(&mut Reader::new(&[0x40, 7]), rect).is_err(), "unknown filter");
        // Compact length: 3 bytes, 4 MiB - 1 at most; parse waits for that much data.
        let mut r = Reader::new(&[0x90, 0xff, 0xff, 0xff]);
        assert!(parse(&mut r, rect).unwrap().is_none());
        // Palette index out of range (3 colours, index 7) and a zlib bomb.
        let mut dec = TightDecoder::new();
        let rect1 = Rect::new(0, 0, 3, 1);
        let bytes = [0x40u8, FILTER_PALETTE, 2, 0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 7];
        assert!(run(&mut dec, &bytes, rect1, false).is_err());
        let mut z = Compress::new(Compression::best(), true);
        let wire = deflate_sync(&mut z, &vec![0u8; 100_000]);
        let mut bytes = vec![0x00, (wire.len() & 0x7f) as u8 | 0x80, (wire.len() >> 7) as u8];
        bytes.extend_from_slice(&wire);
        assert!(run(&mut TightDecoder::new(), &bytes, rect, false).is_err());
        // A JPEG that is not one.
        assert!(run(&mut TightDecoder::new(), &[0x90, 3, 1, 2, 3], rect, false).is_err());
    }
}
