//! The embedded monospace font (DejaVu Sans Mono, from the `dejavu` crate, so no system font is needed),
//! cell metrics and a glyph cache of coverage masks.

use std::collections::HashMap;

use ab_glyph::{point, Font as _, FontRef, PxScale, ScaleFont as _};

/// Style bits of a glyph.
pub const BOLD: u8 = 1;
pub const ITALIC: u8 = 2;

#[derive(Debug, thiserror::Error)]
#[error("the embedded font does not load: {0}")]
pub struct FontError(String);

/// A coverage mask of `width × height` bytes (0 = background, 255 = foreground).
#[derive(Debug, Clone)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    pub coverage: Vec<u8>,
}

pub struct Font {
    faces: [FontRef<'static>; 4],
    scale: PxScale,
    /// Cell size in pixels.
    pub cell_width: u32,
    pub cell_height: u32,
    /// Baseline distance from the cell top, in pixels.
    pub baseline: f32,
    cache: HashMap<(char, u8, bool), Mask>,
}

impl Font {
    /// `points` at `dpi` (guacd: `font-size` in points at the client's resolution).
    pub fn new(points: u32, dpi: u32) -> Result<Font, FontError> {
        let load = |bytes: &'static [u8]| FontRef::try_from_slice(bytes).map_err(|e| FontError(e.to_string()));
        let faces = [
            load(dejavu::sans_mono::regular())?,
            load(dejavu::sans_mono::bold())?,
            load(dejavu::sans_mono::oblique())?,
            load(dejavu::sans_mono::bold_oblique())?,
        ];
        let dpi = if (48..=600).contains(&dpi) { dpi } else { 96 };
        let px = (points as f32 * dpi as f32 / 72.0).max(4.0);
        let scale = PxScale::from(px);
        let scaled = faces[0].as_scaled(scale);
        let advance = scaled.h_advance(faces[0].glyph_id('M'));
        let cell_width = advance.ceil().max(1.0) as u32;
        let ascent = scaled.ascent();
        let descent = scaled.descent();
        let cell_height = (ascent - descent).ceil().max(1.0) as u32;
        Ok(Font { faces, scale, cell_width, cell_height, baseline: ascent.round(), cache: HashMap::new() })
    }

    /// The mask of `c` in `style`, one cell wide (two when `wide`).
    pub fn glyph(&mut self, c: char, style: u8, wide: bool) -> &Mask {
        let key = (c, style & (BOLD | ITALIC), wide);
        if !self.cache.contains_key(&key) {
            if self.cache.len() > 4096 {
                self.cache.clear();
            }
            let mask = self.rasterize(c, key.1, wide);
            self.cache.insert(key, mask);
        }
        &self.cache[&key]
    }

    /// `text` (one cell per char, regular style) as RGB pixels, blended exactly as the terminal paints
    /// cells: the reference image tests compare the client's screen with.
    pub fn render_line(&mut self, text: &str, fg: [u8; 3], bg: [u8; 3]) -> (u32, u32, Vec<u8>) {
        let (cw, ch) = (self.cell_width as usize, self.cell_height as usize);
        let chars: Vec<char> = text.chars().collect();
        let width = cw * chars.len();
        let mut rgb = vec![0u8; width * ch * 3];
        for (i, &c) in chars.iter().enumerate() {
            let mask = self.glyph(c, 0, false);
            for y in 0..ch {
                for x in 0..cw {
                    let a = mask.coverage[y * mask.width as usize + x] as u16;
                    let at = (y * width + i * cw + x) * 3;
                    for k in 0..3 {
                        rgb[at + k] = ((fg[k] as u16 * a + bg[k] as u16 * (255 - a) + 127) / 255) as u8;
                    }
                }
            }
        }
        (width as u32, ch as u32, rgb)
    }

    fn rasterize(&self, c: char, style: u8, wide: bool) -> Mask {
        let width = self.cell_width * if wide { 2 } else { 1 };
        let height = self.cell_height;
        let mut coverage = vec![0u8; (width * height) as usize];
        let face = &self.faces[style as usize & 3];
        let mut id = face.glyph_id(c);
        if id.0 == 0 {
            // Not in the bold/oblique face: try the regular one before giving up.
            id = self.faces[0].glyph_id(c);
        }
        if id.0 == 0 && !c.is_whitespace() && !c.is_control() {
            // DejaVu has no glyph (CJK, emoji). No CJK font is loaded: it would cost every worker several MB
            // (it cannot be mapped shared once sandboxed, so it would be read into private memory). A box
            // the width of the character's cells shows clearly that something is there and how wide it is.
            Self::placeholder(&mut coverage, width, height);
            return Mask { width, height, coverage };
        }
        let face = if face.glyph_id(c).0 == 0 { &self.faces[0] } else { face };
        let advance = face.as_scaled(self.scale).h_advance(id);
        // Centre glyphs narrower or wider than the cell (wide characters).
        let x = ((width as f32 - advance) / 2.0).max(0.0).floor();
        let glyph = id.with_scale_and_position(self.scale, point(x, self.baseline));
        if let Some(outline) = face.outline_glyph(glyph) {
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, v| {
                let px = bounds.min.x as i32 + gx as i32;
                let py = bounds.min.y as i32 + gy as i32;
                if px >= 0 && py >= 0 && (px as u32) < width && (py as u32) < height {
                    let slot = &mut coverage[(py as u32 * width + px as u32) as usize];
                    *slot = (*slot).max((v.clamp(0.0, 1.0) * 255.0).round() as u8);
                }
            });
        }
        Mask { width, height, coverage }
    }
}

impl Font {
    /// A one-pixel rectangle one pixel inside the cell(s), from an eighth of the height below the top to an
    /// eighth above the bottom.
    fn placeholder(coverage: &mut [u8], width: u32, height: u32) {
        if width < 3 || height < 3 {
            return;
        }
        let (x0, x1) = (1, width - 2);
        let (y0, y1) = (height / 8, height - 1 - height / 8);
        for y in y0..=y1 {
            for x in x0..=x1 {
                if y == y0 || y == y1 || x == x0 || x == x1 {
                    coverage[(y * width + x) as usize] = 255;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_glyphs_are_boxes_as_wide_as_their_cells() {
        let mut font = Font::new(12, 96).unwrap();
        let (w, h) = (font.cell_width, font.cell_height);
        let cjk = font.glyph('\u{4e2d}', 0, true).clone();
        assert_eq!((cjk.width, cjk.height), (2 * w, h));
        let at = |m: &Mask, x: u32, y: u32| m.coverage[(y * m.width + x) as usize];
        // Left and right edges of the box sit in the first and the second cell.
        assert_eq!(at(&cjk, 1, h / 2), 255);
        assert_eq!(at(&cjk, 2 * w - 2, h / 2), 255);
        assert_eq!(at(&cjk, w, h / 2), 0, "hollow");
        let narrow = font.glyph('\u{e000}', 0, false).clone();
        assert_eq!(narrow.width, w);
        assert_eq!(at(&narrow, w - 2, h / 2), 255);
    }

    #[test]
    fn twelve_points_at_96_dpi() {
        let mut font = Font::new(12, 96).unwrap();
        // 16 px DejaVu Sans Mono: 10 × 16 px cells (ascent + descent).
        assert!((9..=11).contains(&font.cell_width), "{}", font.cell_width);
        assert!((15..=20).contains(&font.cell_height), "{}", font.cell_height);
        let (w, h) = (font.cell_width, font.cell_height);
        let m = font.glyph('M', 0, false);
        assert_eq!((m.width, m.height), (w, h));
        assert!(m.coverage.iter().filter(|&&c| c > 128).count() > 20);
        let space = font.glyph(' ', 0, false);
        assert!(space.coverage.iter().all(|&c| c == 0));
        let bold = font.glyph('M', BOLD, false).coverage.iter().map(|&c| c as u32).sum::<u32>();
        let regular = font.glyph('M', 0, false).coverage.iter().map(|&c| c as u32).sum::<u32>();
        assert!(bold > regular);
    }
}
