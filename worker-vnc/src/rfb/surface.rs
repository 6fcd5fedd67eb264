//! The pixels the decoders draw into: 32-bit BGRX rows at a fixed stride (the shared surface of
//! shm-proto, or any buffer in tests).

use shm_proto::Rect;

use super::RfbError;

/// Bytes per pixel of every surface.
pub const BPP: usize = 4;

/// A mutable view of a BGRX surface. Every access is bounds-checked: a rectangle that does not fit is an
/// error, never a panic or a write outside the buffer.
pub struct Surface<'a> {
    pixels: &'a mut [u8],
    stride: usize,
}

impl<'a> Surface<'a> {
    pub fn new(pixels: &'a mut [u8], stride: usize) -> Surface<'a> {
        Surface { pixels, stride }
    }

    /// A surface with no pixels (for the handshake, before any rectangle can arrive).
    pub fn empty() -> Surface<'static> {
        Surface { pixels: &mut [], stride: 0 }
    }

    /// The `w` pixels of row `y` starting at column `x`.
    pub(crate) fn row(&mut self, x: u32, y: u32, w: u32) -> Result<&mut [u8], RfbError> {
        let (x, y, w) = (x as usize, y as usize, w as usize);
        let len = w * BPP;
        if x * BPP + len > self.stride {
            return Err(RfbError::SurfaceTooSmall);
        }
        let start = y * self.stride + x * BPP;
        self.pixels.get_mut(start..start + len).ok_or(RfbError::SurfaceTooSmall)
    }

    /// Paints `rect` with one BGRX pixel.
    pub(crate) fn fill(&mut self, rect: Rect, pixel: [u8; 4]) -> Result<(), RfbError> {
        for y in rect.y..rect.y + rect.h {
            pixels(self.row(rect.x, y, rect.w)?).fill(pixel);
        }
        Ok(())
    }
}

/// A row of BGRX bytes as whole pixels. Decoders store each pixel as one `[u8; 4]`: a single 4-byte move,
/// where `copy_from_slice` on a 4-byte chunk costs a length check and, at low optimisation levels, a
/// `memcpy` call per pixel (23 % of the worker's time on a scrolling xterm, measured with perf).
pub(crate) fn pixels(row: &mut [u8]) -> &mut [[u8; BPP]] {
    row.as_chunks_mut::<BPP>().0
}

/// A 3-byte pixel whose bytes are already in surface order (ZRLE's CPIXEL for our pixel format).
pub(crate) fn bgr(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], 0]
}

/// A Tight TPIXEL (red, green, blue), optionally with red and blue exchanged (`swap-red-blue`).
pub(crate) fn rgb(b: &[u8], swap: bool) -> [u8; 4] {
    if swap {
        [b[0], b[1], b[2], 0]
    } else {
        [b[2], b[1], b[0], 0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_bounds_checked() {
        let mut pixels = vec![0u8; 4 * 4 * 3];
        let mut s = Surface::new(&mut pixels, 16);
        assert_eq!(s.row(1, 2, 3).unwrap().len(), 12);
        assert!(s.row(2, 0, 3).is_err(), "past the stride");
        assert!(s.row(0, 3, 1).is_err(), "past the last row");
        assert!(Surface::empty().row(0, 0, 1).is_err());
        s.fill(Rect::new(1, 1, 2, 1), [1, 2, 3, 4]).unwrap();
        assert_eq!(&pixels[16..32], &[0, 0, 0, 0, 1, 2, 3, 4, 1, 2, 3, 4, 0, 0, 0, 0]);
    }
}
