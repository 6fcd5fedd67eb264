//! The client-side display: layers and buffers as RGBA pixel buffers, drawn the way
//! guacamole-common-js draws them (`size`, `img`, `copy`, `rect` + `cfill`, `cursor`, `dispose`,
//! `move`, `shade`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor as IoCursor;

use anyhow::{bail, Context, Result};

use crate::image::{rgba_to_rgb_over_black, RgbImage};

/// Composite mode `0xC` (canvas "copy").
pub const MODE_COPY: u32 = 0xC;
/// Composite mode `0xE` (canvas "source-over"), what guacd uses for nearly everything.
pub const MODE_SRC_OVER: u32 = 0xE;

/// An axis-aligned rectangle in layer coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: i64,
    pub y: i64,
    pub w: i64,
    pub h: i64,
}

/// One layer (index >= 0) or off-screen buffer (index < 0).
#[derive(Clone)]
pub struct Layer {
    pub width: u32,
    pub height: u32,
    /// `width * height * 4` bytes, RGBA, not premultiplied. New layers are transparent black.
    pub rgba: Vec<u8>,
    /// Buffers (negative indices) grow to fit what is drawn into them, like guacamole-common-js.
    pub autosize: bool,
    /// From `move`: parent layer, position and stacking order (only for indices > 0).
    pub parent: i64,
    pub x: i64,
    pub y: i64,
    pub z: i64,
    /// From `shade`: 0..=255.
    pub opacity: u8,
    path: Vec<Rect>,
    path_closed: bool,
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("parent", &self.parent)
            .field("x", &self.x)
            .field("y", &self.y)
            .field("z", &self.z)
            .field("opacity", &self.opacity)
            .finish_non_exhaustive()
    }
}

impl Layer {
    fn new(index: i64) -> Self {
        Layer {
            width: 0,
            height: 0,
            rgba: Vec::new(),
            autosize: index < 0,
            parent: 0,
            x: 0,
            y: 0,
            z: 0,
            opacity: 255,
            path: Vec::new(),
            path_closed: false,
        }
    }

    /// RGBA of pixel (x, y), or `None` outside the layer.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 4]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 4;
        Some([self.rgba[i], self.rgba[i + 1], self.rgba[i + 2], self.rgba[i + 3]])
    }

    /// The layer flattened onto black.
    pub fn to_rgb(&self) -> RgbImage {
        rgba_to_rgb_over_black(self.width, self.height, &self.rgba)
    }

    /// Resizes, keeping the existing content at the top left (as canvas-backed layers do).
    pub fn resize(&mut self, width: u32, height: u32) {
        if width == self.width && height == self.height {
            return;
        }
        let mut rgba = vec![0u8; width as usize * height as usize * 4];
        let cw = width.min(self.width) as usize;
        for row in 0..height.min(self.height) as usize {
            let src = row * self.width as usize * 4;
            let dst = row * width as usize * 4;
            rgba[dst..dst + cw * 4].copy_from_slice(&self.rgba[src..src + cw * 4]);
        }
        self.width = width;
        self.height = height;
        self.rgba = rgba;
    }

    /// Grows an autosize buffer so that `r` fits.
    fn fit(&mut self, r: Rect) {
        if !self.autosize {
            return;
        }
        let need_w = (r.x + r.w).clamp(0, i64::from(u16::MAX)) as u32;
        let need_h = (r.y + r.h).clamp(0, i64::from(u16::MAX)) as u32;
        if need_w > self.width || need_h > self.height {
            self.resize(need_w.max(self.width), need_h.max(self.height));
        }
    }

    /// Clips `r` to the layer; returns (x, y, w, h) in pixels.
    fn clip(&self, r: Rect) -> Option<(usize, usize, usize, usize)> {
        let x0 = r.x.max(0);
        let y0 = r.y.max(0);
        let x1 = (r.x + r.w).min(i64::from(self.width));
        let y1 = (r.y + r.h).min(i64::from(self.height));
        if x1 <= x0 || y1 <= y0 {
            return None;
        }
        Some((x0 as usize, y0 as usize, (x1 - x0) as usize, (y1 - y0) as usize))
    }

    /// Draws an RGBA image of `w` x `h` at (x, y) with a composite mode.
    pub fn draw_rgba(&mut self, x: i64, y: i64, w: u32, h: u32, src: &[u8], mode: u32) {
        let r = Rect { x, y, w: i64::from(w), h: i64::from(h) };
        self.fit(r);
        let Some((cx, cy, cw, ch)) = self.clip(r) else {
            return;
        };
        let sx0 = (cx as i64 - x) as usize;
        let sy0 = (cy as i64 - y) as usize;
        for row in 0..ch {
            let s = ((sy0 + row) * w as usize + sx0) * 4;
            let d = ((cy + row) * self.width as usize + cx) * 4;
            composite_row(&mut self.rgba[d..d + cw * 4], &src[s..s + cw * 4], mode);
        }
    }

    /// Fills `r` with one colour.
    pub fn fill(&mut self, r: Rect, rgba: [u8; 4], mode: u32) {
        self.fit(r);
        let Some((cx, cy, cw, ch)) = self.clip(r) else {
            return;
        };
        let src: Vec<u8> = rgba.iter().copied().cycle().take(cw * 4).collect();
        for row in 0..ch {
            let d = ((cy + row) * self.width as usize + cx) * 4;
            composite_row(&mut self.rgba[d..d + cw * 4], &src, mode);
        }
    }

    /// Copies out the rectangle (clipped) as RGBA; returns (x, y, w, h, pixels) of what was inside.
    fn read_rect(&self, r: Rect) -> Option<(i64, i64, u32, u32, Vec<u8>)> {
        let (cx, cy, cw, ch) = self.clip(r)?;
        let mut out = Vec::with_capacity(cw * ch * 4);
        for row in 0..ch {
            let s = ((cy + row) * self.width as usize + cx) * 4;
            out.extend_from_slice(&self.rgba[s..s + cw * 4]);
        }
        Some((cx as i64, cy as i64, cw as u32, ch as u32, out))
    }
}

fn composite_row(dst: &mut [u8], src: &[u8], mode: u32) {
    if mode != MODE_SRC_OVER {
        // MODE_COPY and, for now, every other mode (recorded by the display).
        dst.copy_from_slice(src);
        return;
    }
    for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
        let sa = u32::from(s[3]);
        if sa == 255 {
            d.copy_from_slice(s);
        } else if sa != 0 {
            let da = u32::from(d[3]);
            // out_a = sa + da * (1 - sa); colours not premultiplied.
            let out_a = sa * 255 + da * (255 - sa); // scaled by 255
            for c in 0..3 {
                let num = u32::from(s[c]) * sa * 255 + u32::from(d[c]) * da * (255 - sa);
                d[c] = ((num + out_a / 2) / out_a) as u8;
            }
            d[3] = ((out_a + 127) / 255) as u8;
        }
    }
}

/// The cursor as last set by `cursor`.
#[derive(Clone, Debug)]
pub struct CursorImage {
    pub hotspot_x: i64,
    pub hotspot_y: i64,
    pub width: u32,
    pub height: u32,
    /// RGBA.
    pub rgba: Vec<u8>,
    /// How many `cursor` instructions were received.
    pub updates: u64,
}

/// All layers and buffers of one connection.
#[derive(Clone, Debug)]
pub struct Display {
    pub layers: BTreeMap<i64, Layer>,
    pub cursor: Option<CursorImage>,
    /// Composite modes seen in `img`, `copy` and `cfill` (other than 0xC and 0xE, every mode is
    /// drawn as a plain copy).
    pub modes_seen: BTreeSet<u32>,
    /// Number of images drawn, per mimetype.
    pub images_drawn: BTreeMap<String, u64>,
    /// Layers that were disposed.
    pub disposed: u64,
}

impl Default for Display {
    fn default() -> Self {
        Self::new()
    }
}

impl Display {
    /// An empty display with a 0x0 default layer.
    pub fn new() -> Self {
        let mut layers = BTreeMap::new();
        layers.insert(0, Layer::new(0));
        Display { layers, cursor: None, modes_seen: BTreeSet::new(), images_drawn: BTreeMap::new(), disposed: 0 }
    }

    /// The layer or buffer with this index, if it exists.
    pub fn layer(&self, index: i64) -> Option<&Layer> {
        self.layers.get(&index)
    }

    /// The default layer (0).
    pub fn default_layer(&self) -> &Layer {
        self.layers.get(&0).expect("layer 0 always exists")
    }

    /// Size of the default layer.
    pub fn size(&self) -> (u32, u32) {
        let l = self.default_layer();
        (l.width, l.height)
    }

    /// RGBA of pixel (x, y) of the default layer.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 4]> {
        self.default_layer().pixel(x, y)
    }

    /// Gets or creates a layer.
    pub fn layer_mut(&mut self, index: i64) -> &mut Layer {
        self.layers.entry(index).or_insert_with(|| Layer::new(index))
    }

    /// What the user sees: layer 0 with the visible layers above it (those whose parent chain reaches
    /// layer 0, at their `move` position, in z order, with `shade` opacity), flattened onto black.
    pub fn screenshot(&self) -> RgbImage {
        let base = self.default_layer();
        let mut canvas = base.clone();
        canvas.autosize = false;
        // Direct children of layer 0 only; deeper nesting is flattened the same way recursively.
        self.composite_children(0, &mut canvas, 0, 0, 0);
        canvas.to_rgb()
    }

    fn composite_children(&self, parent: i64, canvas: &mut Layer, ox: i64, oy: i64, depth: u32) {
        if depth > 16 {
            return;
        }
        let mut children: Vec<(&i64, &Layer)> =
            self.layers.iter().filter(|(i, l)| **i > 0 && l.parent == parent).collect();
        children.sort_by_key(|(i, l)| (l.z, **i));
        for (i, l) in children {
            if l.width == 0 || l.height == 0 || l.opacity == 0 {
                continue;
            }
            let mut src = l.rgba.clone();
            if l.opacity != 255 {
                for p in src.chunks_exact_mut(4) {
                    p[3] = ((u32::from(p[3]) * u32::from(l.opacity) + 127) / 255) as u8;
                }
            }
            canvas.draw_rgba(ox + l.x, oy + l.y, l.width, l.height, &src, MODE_SRC_OVER);
            self.composite_children(*i, canvas, ox + l.x, oy + l.y, depth + 1);
        }
    }

    /// `size layer w h`.
    pub fn size_layer(&mut self, index: i64, width: u32, height: u32) {
        self.layer_mut(index).resize(width, height);
    }

    /// Draws a decoded image (`img` ... `end`).
    pub fn draw_image(&mut self, layer: i64, mode: u32, x: i64, y: i64, img: &DecodedImage) {
        self.note_mode(mode);
        *self.images_drawn.entry(img.mimetype.clone()).or_insert(0) += 1;
        self.layer_mut(layer).draw_rgba(x, y, img.width, img.height, &img.rgba, mode);
    }

    /// `copy src sx sy w h mode dst dx dy`, correct when source and destination overlap.
    #[allow(clippy::too_many_arguments)]
    pub fn copy(&mut self, src: i64, sx: i64, sy: i64, w: i64, h: i64, mode: u32, dst: i64, dx: i64, dy: i64) {
        self.note_mode(mode);
        let Some(src_layer) = self.layers.get(&src) else {
            return;
        };
        // Copy out first (a temporary), then draw: overlapping self-copies behave like drawImage.
        let Some((cx, cy, cw, ch, pixels)) = src_layer.read_rect(Rect { x: sx, y: sy, w, h }) else {
            return;
        };
        let dx = dx + (cx - sx);
        let dy = dy + (cy - sy);
        self.layer_mut(dst).draw_rgba(dx, dy, cw, ch, &pixels, mode);
    }

    /// `rect layer x y w h`: adds to the layer's path (a new path after a fill).
    pub fn rect(&mut self, layer: i64, r: Rect) {
        let l = self.layer_mut(layer);
        if l.path_closed {
            l.path.clear();
            l.path_closed = false;
        }
        l.path.push(r);
    }

    /// `cfill mode layer r g b a`: fills the current path and closes it.
    pub fn cfill(&mut self, mode: u32, layer: i64, rgba: [u8; 4]) {
        self.note_mode(mode);
        let l = self.layer_mut(layer);
        let path = std::mem::take(&mut l.path);
        for r in &path {
            l.fill(*r, rgba, mode);
        }
        l.path = path;
        l.path_closed = true;
    }

    /// `cursor hx hy src sx sy w h`.
    #[allow(clippy::too_many_arguments)]
    pub fn set_cursor(&mut self, hx: i64, hy: i64, src: i64, sx: i64, sy: i64, w: i64, h: i64) {
        let updates = self.cursor.as_ref().map_or(0, |c| c.updates) + 1;
        let (width, height, rgba) = match self.layers.get(&src).and_then(|l| l.read_rect(Rect { x: sx, y: sy, w, h })) {
            Some((_, _, cw, ch, px)) => (cw, ch, px),
            None => (0, 0, Vec::new()),
        };
        self.cursor = Some(CursorImage { hotspot_x: hx, hotspot_y: hy, width, height, rgba, updates });
    }

    /// `dispose layer`: buffers and layers > 0 are removed; layer 0 is cleared to 0x0.
    pub fn dispose(&mut self, index: i64) {
        self.disposed += 1;
        if index == 0 {
            self.layers.insert(0, Layer::new(0));
        } else {
            self.layers.remove(&index);
        }
    }

    /// `move layer parent x y z`.
    pub fn move_layer(&mut self, index: i64, parent: i64, x: i64, y: i64, z: i64) {
        if index <= 0 {
            return;
        }
        let l = self.layer_mut(index);
        l.parent = parent;
        l.x = x;
        l.y = y;
        l.z = z;
    }

    /// `shade layer opacity`.
    pub fn shade(&mut self, index: i64, opacity: u8) {
        self.layer_mut(index).opacity = opacity;
    }

    fn note_mode(&mut self, mode: u32) {
        self.modes_seen.insert(mode);
    }
}

/// A decoded image stream.
#[derive(Clone)]
pub struct DecodedImage {
    pub mimetype: String,
    pub width: u32,
    pub height: u32,
    /// RGBA, not premultiplied.
    pub rgba: Vec<u8>,
}

/// Decodes `image/png`, `image/jpeg` or `image/webp` into RGBA.
pub fn decode_image(mimetype: &str, data: &[u8]) -> Result<DecodedImage> {
    let (width, height, rgba) = match mimetype {
        "image/png" => decode_png(data)?,
        "image/jpeg" => decode_jpeg(data)?,
        "image/webp" => decode_webp(data)?,
        other => bail!("unsupported image mimetype {other:?}"),
    };
    Ok(DecodedImage { mimetype: mimetype.to_owned(), width, height, rgba })
}

/// PNG (any colour type and depth) to 8-bit RGBA.
pub fn decode_png(data: &[u8]) -> Result<(u32, u32, Vec<u8>)> {
    let mut dec = png::Decoder::new(IoCursor::new(data));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().context("png header")?;
    let size = reader.output_buffer_size().context("png image too large")?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).context("png data")?;
    buf.truncate(info.buffer_size());
    let (w, h) = (info.width, info.height);
    let n = w as usize * h as usize;
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => {
            let mut v = Vec::with_capacity(n * 4);
            for p in buf.chunks_exact(3) {
                v.extend_from_slice(&[p[0], p[1], p[2], 255]);
            }
            v
        }
        png::ColorType::GrayscaleAlpha => {
            let mut v = Vec::with_capacity(n * 4);
            for p in buf.chunks_exact(2) {
                v.extend_from_slice(&[p[0], p[0], p[0], p[1]]);
            }
            v
        }
        png::ColorType::Grayscale => {
            let mut v = Vec::with_capacity(n * 4);
            for p in &buf {
                v.extend_from_slice(&[*p, *p, *p, 255]);
            }
            v
        }
        png::ColorType::Indexed => bail!("png palette not expanded"),
    };
    if rgba.len() != n * 4 {
        bail!("png {w}x{h} decoded to {} bytes", rgba.len());
    }
    Ok((w, h, rgba))
}

fn decode_jpeg(data: &[u8]) -> Result<(u32, u32, Vec<u8>)> {
    let mut dec = jpeg_decoder::Decoder::new(data);
    let pixels = dec.decode().context("jpeg data")?;
    let info = dec.info().context("jpeg has no frame info")?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let n = w as usize * h as usize;
    let mut rgba = Vec::with_capacity(n * 4);
    match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            for p in pixels.chunks_exact(3) {
                rgba.extend_from_slice(&[p[0], p[1], p[2], 255]);
            }
        }
        jpeg_decoder::PixelFormat::L8 => {
            for p in &pixels {
                rgba.extend_from_slice(&[*p, *p, *p, 255]);
            }
        }
        other => bail!("unsupported jpeg pixel format {other:?}"),
    }
    if rgba.len() != n * 4 {
        bail!("jpeg {w}x{h} decoded to {} bytes", rgba.len());
    }
    Ok((w, h, rgba))
}

fn decode_webp(data: &[u8]) -> Result<(u32, u32, Vec<u8>)> {
    let mut dec = image_webp::WebPDecoder::new(IoCursor::new(data)).context("webp header")?;
    let (w, h) = dec.dimensions();
    let has_alpha = dec.has_alpha();
    let size = dec.output_buffer_size().context("webp image too large")?;
    let mut buf = vec![0u8; size];
    dec.read_image(&mut buf).context("webp data")?;
    let n = w as usize * h as usize;
    let rgba = if has_alpha {
        buf
    } else {
        let mut v = Vec::with_capacity(n * 4);
        for p in buf.chunks_exact(3) {
            v.extend_from_slice(&[p[0], p[1], p[2], 255]);
        }
        v
    };
    if rgba.len() != n * 4 {
        bail!("webp {w}x{h} decoded to {} bytes", rgba.len());
    }
    Ok((w, h, rgba))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(layer: &Layer) -> Vec<[u8; 4]> {
        layer.rgba.chunks_exact(4).map(|p| [p[0], p[1], p[2], p[3]]).collect()
    }

    #[test]
    fn rect_cfill_and_path_reset() {
        let mut d = Display::new();
        d.size_layer(0, 4, 2);
        d.rect(0, Rect { x: 0, y: 0, w: 2, h: 2 });
        d.cfill(MODE_SRC_OVER, 0, [255, 0, 0, 255]);
        // New path after the fill: only the right half.
        d.rect(0, Rect { x: 2, y: 0, w: 5, h: 5 });
        d.cfill(MODE_SRC_OVER, 0, [0, 0, 255, 255]);
        let px = solid(d.default_layer());
        assert_eq!(px[0], [255, 0, 0, 255]);
        assert_eq!(px[1], [255, 0, 0, 255]);
        assert_eq!(px[2], [0, 0, 255, 255]);
        assert_eq!(px[7], [0, 0, 255, 255]);
    }

    #[test]
    fn overlapping_copy_uses_a_temporary() {
        let mut d = Display::new();
        d.size_layer(0, 5, 1);
        for x in 0..5u8 {
            d.rect(0, Rect { x: i64::from(x), y: 0, w: 1, h: 1 });
            d.cfill(MODE_COPY, 0, [x, 0, 0, 255]);
        }
        // Shift right by one, overlapping.
        d.copy(0, 0, 0, 4, 1, MODE_SRC_OVER, 0, 1, 0);
        let reds: Vec<u8> = solid(d.default_layer()).iter().map(|p| p[0]).collect();
        assert_eq!(reds, vec![0, 0, 1, 2, 3]);
        // Shift left by two.
        d.copy(0, 2, 0, 3, 1, MODE_SRC_OVER, 0, 0, 0);
        let reds: Vec<u8> = solid(d.default_layer()).iter().map(|p| p[0]).collect();
        assert_eq!(reds, vec![1, 2, 3, 2, 3]);
    }

    #[test]
    fn buffers_autosize_layers_clip() {
        let mut d = Display::new();
        d.size_layer(0, 2, 2);
        d.rect(-1, Rect { x: 3, y: 1, w: 2, h: 2 });
        d.cfill(MODE_SRC_OVER, -1, [9, 9, 9, 255]);
        let b = d.layer(-1).unwrap();
        assert_eq!((b.width, b.height), (5, 3));
        d.copy(-1, 3, 1, 2, 2, MODE_SRC_OVER, 0, 1, 1);
        assert_eq!(d.pixel(1, 1), Some([9, 9, 9, 255]));
        assert_eq!(d.pixel(0, 0), Some([0, 0, 0, 0]));
        assert_eq!(d.layer(0).unwrap().width, 2);
    }

    #[test]
    fn src_over_blends_alpha() {
        let mut l = Layer::new(0);
        l.resize(1, 1);
        l.fill(Rect { x: 0, y: 0, w: 1, h: 1 }, [0, 0, 200, 255], MODE_COPY);
        l.fill(Rect { x: 0, y: 0, w: 1, h: 1 }, [200, 0, 0, 128], MODE_SRC_OVER);
        let p = l.pixel(0, 0).unwrap();
        assert_eq!(p[3], 255);
        assert!((99..=101).contains(&p[0]), "{p:?}");
        assert!((98..=100).contains(&p[2]), "{p:?}");
    }

    #[test]
    fn png_rgb_and_rgba_decode() {
        let img = RgbImage::new(3, 2, [1, 2, 3]);
        let png = img.to_png().unwrap();
        let d = decode_image("image/png", &png).unwrap();
        assert_eq!((d.width, d.height), (3, 2));
        assert_eq!(&d.rgba[..4], &[1, 2, 3, 255]);
        assert!(decode_image("image/gif", &png).is_err());
        assert!(decode_image("image/png", &png[..20]).is_err());
    }

    #[test]
    fn resize_keeps_content_and_screenshot_composites_children() {
        let mut d = Display::new();
        d.size_layer(0, 4, 4);
        d.rect(0, Rect { x: 0, y: 0, w: 4, h: 4 });
        d.cfill(MODE_COPY, 0, [10, 10, 10, 255]);
        d.size_layer(0, 6, 6);
        assert_eq!(d.pixel(3, 3), Some([10, 10, 10, 255]));
        assert_eq!(d.pixel(5, 5), Some([0, 0, 0, 0]));
        d.size_layer(1, 1, 1);
        d.rect(1, Rect { x: 0, y: 0, w: 1, h: 1 });
        d.cfill(MODE_COPY, 1, [250, 0, 0, 255]);
        d.move_layer(1, 0, 2, 3, 1);
        let shot = d.screenshot();
        assert_eq!(shot.pixel(2, 3), [250, 0, 0]);
        assert_eq!(shot.pixel(1, 1), [10, 10, 10]);
    }
}
