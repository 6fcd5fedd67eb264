//! Plain RGB images, PNG input/output and pixel comparison.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// An 8-bit RGB image, rows top to bottom, 3 bytes per pixel, no padding.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    /// A `width` x `height` image filled with `rgb`.
    pub fn new(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let n = width as usize * height as usize;
        let mut pixels = Vec::with_capacity(n * 3);
        for _ in 0..n {
            pixels.extend_from_slice(&rgb);
        }
        RgbImage { width, height, pixels }
    }

    /// Wraps raw RGB bytes; fails if the length does not match.
    pub fn from_raw(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self> {
        let want = width as usize * height as usize * 3;
        if pixels.len() != want {
            bail!("rgb buffer for {width}x{height} must be {want} bytes, got {}", pixels.len());
        }
        Ok(RgbImage { width, height, pixels })
    }

    /// The pixel at (x, y). Panics when out of bounds.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        assert!(x < self.width && y < self.height, "pixel ({x},{y}) outside {}x{}", self.width, self.height);
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// Iterator over all pixels, row by row.
    pub fn iter_pixels(&self) -> impl Iterator<Item = [u8; 3]> + '_ {
        self.pixels.chunks_exact(3).map(|p| [p[0], p[1], p[2]])
    }

    /// Number of pixels within `tolerance` (per channel) of `rgb`.
    pub fn count_color(&self, rgb: [u8; 3], tolerance: u8) -> usize {
        self.iter_pixels().filter(|p| channel_delta(*p, rgb) <= tolerance).count()
    }

    /// Number of distinct colours.
    pub fn distinct_colors(&self) -> usize {
        let mut v: Vec<u32> =
            self.iter_pixels().map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2])).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    }

    /// A copy of the rectangle (x, y, w, h), clipped to the image.
    pub fn crop(&self, x: u32, y: u32, w: u32, h: u32) -> RgbImage {
        let x0 = x.min(self.width);
        let y0 = y.min(self.height);
        let x1 = x.saturating_add(w).min(self.width);
        let y1 = y.saturating_add(h).min(self.height);
        let cw = x1 - x0;
        let ch = y1 - y0;
        let mut pixels = Vec::with_capacity(cw as usize * ch as usize * 3);
        for row in y0..y1 {
            let start = (row as usize * self.width as usize + x0 as usize) * 3;
            pixels.extend_from_slice(&self.pixels[start..start + cw as usize * 3]);
        }
        RgbImage { width: cw, height: ch, pixels }
    }

    /// Encodes as PNG.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width, self.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().context("png header")?;
            w.write_image_data(&self.pixels).context("png data")?;
        }
        Ok(out)
    }

    /// Writes the image as a PNG file (for debugging failed tests).
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut enc = png::Encoder::new(BufWriter::new(f), self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().with_context(|| format!("writing {}", path.display()))?;
        w.write_image_data(&self.pixels).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Reads a PNG file (any colour type; alpha is dropped after compositing over black).
    pub fn load_png(path: impl AsRef<Path>) -> Result<RgbImage> {
        let path = path.as_ref();
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (w, h, rgba) = crate::display::decode_png(&data)?;
        Ok(rgba_to_rgb_over_black(w, h, &rgba))
    }
}

/// Flattens RGBA onto black.
pub(crate) fn rgba_to_rgb_over_black(width: u32, height: u32, rgba: &[u8]) -> RgbImage {
    let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
    for p in rgba.chunks_exact(4) {
        let a = u32::from(p[3]);
        for c in &p[..3] {
            pixels.push(((u32::from(*c) * a + 127) / 255) as u8);
        }
    }
    RgbImage { width, height, pixels }
}

fn channel_delta(a: [u8; 3], b: [u8; 3]) -> u8 {
    a.iter().zip(b.iter()).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

/// The result of [`compare`].
#[derive(Clone, Debug, PartialEq)]
pub struct Diff {
    /// Pixels whose largest channel difference exceeds the tolerance (all pixels of the larger
    /// image when the sizes differ).
    pub differing_pixels: u64,
    /// Largest per-channel difference seen (255 when the sizes differ).
    pub max_channel_delta: u8,
    /// `differing_pixels` divided by the number of pixels compared.
    pub fraction: f64,
    /// Pixels compared.
    pub total_pixels: u64,
    /// Bounding box (x, y, w, h) of the differing pixels, if any.
    pub bounding_box: Option<(u32, u32, u32, u32)>,
    /// The two images had different sizes.
    pub size_mismatch: bool,
}

impl Diff {
    /// No pixel differs beyond the tolerance and the sizes match.
    pub fn is_identical(&self) -> bool {
        !self.size_mismatch && self.differing_pixels == 0
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.size_mismatch {
            return write!(f, "image sizes differ");
        }
        write!(
            f,
            "{} of {} pixels differ ({:.4}%), max channel delta {}",
            self.differing_pixels,
            self.total_pixels,
            self.fraction * 100.0,
            self.max_channel_delta
        )?;
        if let Some((x, y, w, h)) = self.bounding_box {
            write!(f, ", within {w}x{h}+{x}+{y}")?;
        }
        Ok(())
    }
}

/// Compares two images pixel by pixel. A pixel differs when any channel differs by more than
/// `tolerance`.
pub fn compare(a: &RgbImage, b: &RgbImage, tolerance: u8) -> Diff {
    if a.width != b.width || a.height != b.height {
        let total = u64::from(a.width.max(b.width)) * u64::from(a.height.max(b.height));
        return Diff {
            differing_pixels: total,
            max_channel_delta: 255,
            fraction: 1.0,
            total_pixels: total,
            bounding_box: Some((0, 0, a.width.max(b.width), a.height.max(b.height))),
            size_mismatch: true,
        };
    }
    let mut differing = 0u64;
    let mut max_delta = 0u8;
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
    for (i, (pa, pb)) in a.iter_pixels().zip(b.iter_pixels()).enumerate() {
        let d = channel_delta(pa, pb);
        max_delta = max_delta.max(d);
        if d > tolerance {
            differing += 1;
            let x = (i % a.width as usize) as u32;
            let y = (i / a.width as usize) as u32;
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    let total = u64::from(a.width) * u64::from(a.height);
    Diff {
        differing_pixels: differing,
        max_channel_delta: max_delta,
        fraction: if total == 0 { 0.0 } else { differing as f64 / total as f64 },
        total_pixels: total,
        bounding_box: (differing > 0).then(|| (x0, y0, x1 - x0 + 1, y1 - y0 + 1)),
        size_mismatch: false,
    }
}

/// A picture of the differences: differing pixels in magenta, the rest a dimmed copy of `a`.
/// Sizes must match.
pub fn diff_image(a: &RgbImage, b: &RgbImage, tolerance: u8) -> Result<RgbImage> {
    if a.width != b.width || a.height != b.height {
        bail!("cannot diff {}x{} against {}x{}", a.width, a.height, b.width, b.height);
    }
    let mut pixels = Vec::with_capacity(a.pixels.len());
    for (pa, pb) in a.iter_pixels().zip(b.iter_pixels()) {
        if channel_delta(pa, pb) > tolerance {
            pixels.extend_from_slice(&[255, 0, 255]);
        } else {
            pixels.extend(pa.iter().map(|c| c / 3));
        }
    }
    RgbImage::from_raw(a.width, a.height, pixels)
}

/// Decodes PNG bytes into an RGB image (alpha composited over black).
pub fn decode_png_rgb(data: &[u8]) -> Result<RgbImage> {
    let (w, h, rgba) = crate::display::decode_png(data)?;
    Ok(rgba_to_rgb_over_black(w, h, &rgba))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_counts_and_bounds() {
        let a = RgbImage::new(4, 3, [10, 20, 30]);
        let mut b = a.clone();
        assert!(compare(&a, &b, 0).is_identical());
        // (2,1) off by 5, (3,2) off by 50
        b.pixels[(4 + 2) * 3] = 15;
        b.pixels[(2 * 4 + 3) * 3 + 2] = 80;
        let d = compare(&a, &b, 4);
        assert_eq!(d.differing_pixels, 2);
        assert_eq!(d.max_channel_delta, 50);
        assert_eq!(d.bounding_box, Some((2, 1, 2, 2)));
        let d = compare(&a, &b, 5);
        assert_eq!(d.differing_pixels, 1);
        assert!((d.fraction - 1.0 / 12.0).abs() < 1e-9);
        let c = RgbImage::new(3, 3, [0, 0, 0]);
        assert!(compare(&a, &c, 255).size_mismatch);
    }

    #[test]
    fn crop_and_png_round_trip() {
        let mut img = RgbImage::new(5, 4, [1, 2, 3]);
        img.pixels[(2 * 5 + 3) * 3] = 200;
        let c = img.crop(3, 2, 10, 10);
        assert_eq!((c.width, c.height), (2, 2));
        assert_eq!(c.pixel(0, 0), [200, 2, 3]);
        let png = img.to_png().unwrap();
        let back = decode_png_rgb(&png).unwrap();
        assert_eq!(back, img);
    }
}
