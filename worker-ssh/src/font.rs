//! The embedded monospace font (DejaVu Sans Mono, from the `dejavu` crate, so no system font is needed),
//! cell metrics, an optional CJK fallback font from the host ([`Fallback`]) and a glyph cache of coverage
//! masks.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use ab_glyph::{point, Font as _, FontRef, FontVec, GlyphId, PxScale, ScaleFont as _};
use tracing::{info, warn};

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

/// Where Debian's CJK fonts live, smallest first (the worker reads the whole file once it needs it):
/// `fonts-wqy-microhei` (5 MB), `fonts-droid-fallback` (Android's fallback), `fonts-wqy-zenhei` (16 MB),
/// `fonts-noto-cjk` (19 MB and more).
pub const FALLBACK_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
];

/// Larger files are not fallback fonts we know; reading one would cost the worker that much memory.
const MAX_FALLBACK_BYTES: u64 = 40 << 20;

/// A font from the host used for characters DejaVu Sans Mono lacks (CJK above all).
///
/// The file is opened before the sandbox goes up (afterwards the worker can open nothing) but read only
/// when the first such character is drawn: read into private memory (mapping it shared would need
/// `unsafe`), it costs its size (5 MB for WenQuanYi Micro Hei), which a session that never shows CJK
/// should not pay.
pub struct Fallback {
    path: PathBuf,
    state: FallbackState,
}

enum FallbackState {
    Unread { file: File, len: usize },
    Loaded(FontVec),
    Failed,
}

impl Fallback {
    /// The first of [`FALLBACK_PATHS`] that opens; `None` (and one log line) when none is installed.
    pub fn find() -> Option<Fallback> {
        let found = FALLBACK_PATHS.iter().find_map(|p| Fallback::open(Path::new(p)).ok());
        match &found {
            Some(f) => info!(path = %f.path.display(), "CJK fallback font found"),
            None => {
                info!(candidates = ?FALLBACK_PATHS, "No CJK fallback font installed; wide characters draw as boxes")
            }
        }
        found
    }

    /// Opens `path` (a TrueType/OpenType font or collection) without reading it yet.
    pub fn open(path: &Path) -> std::io::Result<Fallback> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len > MAX_FALLBACK_BYTES {
            return Err(std::io::Error::other(format!("{len} bytes is too large for a fallback font")));
        }
        Ok(Fallback { path: path.to_owned(), state: FallbackState::Unread { file, len: len as usize } })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The face, read and parsed on the first call. A file that cannot be read or parsed is logged once
    /// and given up on.
    fn face(&mut self) -> Option<&FontVec> {
        if let FallbackState::Unread { file, len } = &mut self.state {
            // Plain `read` calls only: the sandbox allows no `statx`/`lseek` on files.
            let mut data = vec![0u8; *len];
            let loaded = file
                .read_exact(&mut data)
                .map_err(|e| e.to_string())
                .and_then(|()| FontVec::try_from_vec_and_index(data, 0).map_err(|e| e.to_string()));
            self.state = match loaded {
                Ok(face) => {
                    info!(path = %self.path.display(), "CJK fallback font loaded");
                    FallbackState::Loaded(face)
                }
                Err(error) => {
                    warn!(path = %self.path.display(), %error, "CJK fallback font unusable; wide characters draw as boxes");
                    FallbackState::Failed
                }
            };
        }
        match &self.state {
            FallbackState::Loaded(face) => Some(face),
            _ => None,
        }
    }
}

pub struct Font {
    faces: [FontRef<'static>; 4],
    fallback: Option<Fallback>,
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
        Ok(Font {
            faces,
            fallback: None,
            scale,
            cell_width,
            cell_height,
            baseline: ascent.round(),
            cache: HashMap::new(),
        })
    }

    /// Draws characters DejaVu lacks with `fallback` instead of a box.
    pub fn set_fallback(&mut self, fallback: Fallback) {
        self.fallback = Some(fallback);
        self.cache.clear();
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

    fn rasterize(&mut self, c: char, style: u8, wide: bool) -> Mask {
        let width = self.cell_width * if wide { 2 } else { 1 };
        let height = self.cell_height;
        let mut coverage = vec![0u8; (width * height) as usize];
        let styled = &self.faces[style as usize & 3];
        // The styled face, else the regular one (bold/oblique lack a few), else the host's fallback.
        let face: Option<(&dyn DynFont, GlyphId)> = if styled.glyph_id(c).0 != 0 {
            Some((styled, styled.glyph_id(c)))
        } else if self.faces[0].glyph_id(c).0 != 0 {
            Some((&self.faces[0], self.faces[0].glyph_id(c)))
        } else if c.is_whitespace() || c.is_control() {
            None
        } else {
            self.fallback.as_mut().and_then(Fallback::face).and_then(|f| {
                let id = f.glyph_id(c);
                (id.0 != 0).then_some((f as &dyn DynFont, id))
            })
        };
        let Some((face, id)) = face else {
            if !c.is_whitespace() && !c.is_control() {
                // No font has it (emoji; CJK without a fallback font). A box the width of the character's
                // cells shows clearly that something is there and how wide it is.
                Self::placeholder(&mut coverage, width, height);
            }
            return Mask { width, height, coverage };
        };
        let advance = face.h_advance_at(id, self.scale);
        // Centre glyphs narrower or wider than the cell (wide characters).
        let x = ((width as f32 - advance) / 2.0).max(0.0).floor();
        let glyph = id.with_scale_and_position(self.scale, point(x, self.baseline));
        if let Some(outline) = face.outline(glyph) {
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

/// The two kinds of face (embedded `FontRef`, the host's `FontVec`) behind one reference.
trait DynFont {
    fn h_advance_at(&self, id: GlyphId, scale: PxScale) -> f32;
    fn outline(&self, glyph: ab_glyph::Glyph) -> Option<ab_glyph::OutlinedGlyph>;
}

impl<F: ab_glyph::Font> DynFont for F {
    fn h_advance_at(&self, id: GlyphId, scale: PxScale) -> f32 {
        self.as_scaled(scale).h_advance(id)
    }

    fn outline(&self, glyph: ab_glyph::Glyph) -> Option<ab_glyph::OutlinedGlyph> {
        self.outline_glyph(glyph)
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

    /// With the host's CJK font (scripts/test.sh installs fonts-wqy-microhei), U+4E2D is that font's
    /// glyph across two cells: its vertical stroke crosses the middle, where the box is hollow.
    #[test]
    fn cjk_is_drawn_with_the_fallback_font() {
        let mut font = Font::new(12, 96).unwrap();
        let fallback = Fallback::find().expect("no CJK font installed: apt-get install fonts-wqy-microhei");
        font.set_fallback(fallback);
        let (w, h) = (font.cell_width, font.cell_height);
        let cjk = font.glyph('\u{4e2d}', 0, true).clone();
        assert_eq!((cjk.width, cjk.height), (2 * w, h));
        let middle = (0..h)
            .map(|y| cjk.coverage[(y * cjk.width + w) as usize].max(cjk.coverage[(y * cjk.width + w - 1) as usize]));
        assert!(middle.filter(|&c| c > 128).count() as u32 > h / 2, "no vertical stroke: {:?}", cjk.coverage);
        // Ink in both cells, and the glyph is not the box.
        let ink = |x0: u32, x1: u32| {
            (0..h)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| cjk.coverage[(y * cjk.width + x) as usize] > 128)
                .count()
        };
        assert!(ink(0, w - 1) > 0 && ink(w + 1, 2 * w) > 0);
        let mut boxed = Font::new(12, 96).unwrap();
        assert_ne!(boxed.glyph('\u{4e2d}', 0, true).coverage, cjk.coverage);
        // ASCII still comes from DejaVu.
        assert_eq!(font.glyph('M', 0, false).coverage, boxed.glyph('M', 0, false).coverage);
    }

    #[test]
    fn a_file_that_is_no_font_falls_back_to_boxes() {
        let mut font = Font::new(12, 96).unwrap();
        font.set_fallback(Fallback::open(Path::new("/proc/self/cmdline")).unwrap());
        let (w, h) = (font.cell_width, font.cell_height);
        let cjk = font.glyph('\u{4e2d}', 0, true).clone();
        assert_eq!(cjk.coverage[(h / 2 * cjk.width + 1) as usize], 255);
        assert_eq!(cjk.coverage[(h / 2 * cjk.width + w) as usize], 0, "hollow box");
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
