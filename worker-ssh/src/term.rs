//! The terminal: a vt100 emulator whose screen is rendered into the shared surface.
//!
//! Rendering is lazy: output only feeds the parser; [`Terminal::render`] runs at frame boundaries and
//! compares the emulator's screen with what the surface shows (`shown`, one entry per cell). Rows that
//! moved (scrolling, including scroll regions and reverse scrolls) become one `copy_rect` per moved run;
//! every other changed cell span is repainted and marked dirty. A flood that scrolls thousands of lines
//! between two frames therefore costs one parse plus one frame's worth of painting.

use shm_proto::{FrameWriter, Rect};
use vt100::Color;

use crate::font::{Font, BOLD, ITALIC};
use crate::palette::{indexed, ColorScheme, Rgb};

const FLAG_CURSOR: u8 = 1;
const FLAG_SELECTED: u8 = 2;

/// What one cell of the surface shows.
#[derive(Clone, PartialEq, Eq)]
struct Shown {
    cell: vt100::Cell,
    flags: u8,
}

/// A selection in view coordinates (row, column), inclusive, in the order the user made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    pub anchor: (u16, u16),
    pub end: (u16, u16),
}

impl Selection {
    /// (start, end) in reading order.
    fn ordered(&self) -> ((u16, u16), (u16, u16)) {
        if self.anchor <= self.end {
            (self.anchor, self.end)
        } else {
            (self.end, self.anchor)
        }
    }

    fn contains(&self, row: u16, col: u16) -> bool {
        let (start, end) = self.ordered();
        (row, col) >= start && (row, col) <= end
    }
}

pub struct Terminal {
    parser: vt100::Parser,
    font: Font,
    scheme: ColorScheme,
    width: u32,
    height: u32,
    rows: u16,
    cols: u16,
    /// What the back surface holds per cell; `None`: unknown, repaint.
    shown: Vec<Vec<Option<Shown>>>,
    /// The whole surface must be cleared (after a resize).
    clear: bool,
    pub selection: Option<Selection>,
}

impl Terminal {
    pub fn new(font: Font, scheme: ColorScheme, scrollback: usize, width: u32, height: u32) -> Terminal {
        let one = std::num::NonZeroU16::MIN;
        let mut terminal = Terminal {
            parser: vt100::Parser::new(one, one, scrollback),
            font,
            scheme,
            width: 0,
            height: 0,
            rows: 1,
            cols: 1,
            shown: Vec::new(),
            clear: true,
            selection: None,
        };
        terminal.resize(width, height);
        terminal
    }

    /// Terminal size in (columns, rows).
    pub fn grid_size(&self) -> (u16, u16) {
        (self.cols, self.rows)
    }

    pub fn pixel_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    pub fn cell_size(&self) -> (u32, u32) {
        (self.font.cell_width, self.font.cell_height)
    }

    /// Adopts a new surface size; returns the new (columns, rows).
    pub fn resize(&mut self, width: u32, height: u32) -> (u16, u16) {
        self.width = width.max(1);
        self.height = height.max(1);
        let cols = (self.width / self.font.cell_width).clamp(1, u16::MAX as u32) as u16;
        let rows = (self.height / self.font.cell_height).clamp(1, u16::MAX as u32) as u16;
        if (cols, rows) != (self.cols, self.rows) {
            let nz = |v: u16| std::num::NonZeroU16::new(v).unwrap_or(std::num::NonZeroU16::MIN);
            self.parser.set_size(nz(rows), nz(cols));
            self.cols = cols;
            self.rows = rows;
            self.selection = None;
        }
        self.shown = vec![vec![None; cols as usize]; rows as usize];
        self.clear = true;
        (cols, rows)
    }

    /// Feeds output from the remote side.
    pub fn process(&mut self, bytes: &[u8]) {
        self.parser.process(bytes);
    }

    pub fn screen(&self) -> &vt100::Screen {
        self.parser.screen()
    }

    /// Scrolls the view `rows` back into history (negative: forward). Returns true if it moved.
    pub fn scroll_view(&mut self, rows: i32) -> bool {
        let before = self.parser.screen().scrollback();
        let target = (before as i64 + rows as i64).max(0) as usize;
        self.parser.screen_mut().set_scrollback(target);
        self.parser.screen().scrollback() != before
    }

    /// Back to the live screen (on typing).
    pub fn reset_view(&mut self) -> bool {
        if self.parser.screen().scrollback() == 0 {
            return false;
        }
        self.parser.screen_mut().set_scrollback(0);
        true
    }

    /// The cell under a pixel, clamped to the grid.
    pub fn cell_at(&self, x: i32, y: i32) -> (u16, u16) {
        let col = (x.max(0) as u32 / self.font.cell_width).min(self.cols as u32 - 1) as u16;
        let row = (y.max(0) as u32 / self.font.cell_height).min(self.rows as u32 - 1) as u16;
        (row, col)
    }

    /// The text of the current selection, lines joined with '\n', trailing blanks trimmed per line.
    pub fn selected_text(&self) -> Option<String> {
        let (start, end) = self.selection?.ordered();
        let text = self.parser.screen().contents_between(start.0, start.1, end.0, end.1.saturating_add(1));
        Some(text)
    }

    fn snapshot_row(&self, row: u16) -> Vec<Option<Shown>> {
        let screen = self.parser.screen();
        let cursor_visible = !screen.hide_cursor() && screen.scrollback() == 0;
        let (cursor_row, cursor_col) = screen.cursor_position();
        (0..self.cols)
            .map(|col| {
                let cell = screen.cell(row, col)?.clone();
                let mut flags = 0;
                if cursor_visible && row == cursor_row && col == cursor_col {
                    flags |= FLAG_CURSOR;
                }
                if self.selection.is_some_and(|s| s.contains(row, col)) {
                    flags |= FLAG_SELECTED;
                }
                Some(Shown { cell, flags })
            })
            .collect()
    }

    /// Brings the back surface up to date with the emulator and records the damage.
    pub fn render(&mut self, frames: &mut FrameWriter) {
        let stride = frames.stride();
        if self.clear {
            let bg = bgrx(self.scheme.background);
            let back = frames.back_mut();
            for y in 0..self.height as usize {
                let row = &mut back[y * stride..y * stride + self.width as usize * 4];
                for px in row.chunks_exact_mut(4) {
                    px.copy_from_slice(&bg);
                }
            }
            frames.mark_all();
            self.clear = false;
        }
        let new: Vec<Vec<Option<Shown>>> = (0..self.rows).map(|r| self.snapshot_row(r)).collect();
        if let Some((shift, start, len)) = best_move(&self.shown, &new) {
            let (cw, ch) = self.cell_size();
            let src_row = (start as i64 + shift) as usize;
            let dst = Rect::new(0, start as u32 * ch, self.cols as u32 * cw, len as u32 * ch);
            frames.copy_rect(0, src_row as u32 * ch, dst);
            let moved: Vec<_> = self.shown[src_row..src_row + len].to_vec();
            self.shown[start..start + len].clone_from_slice(&moved);
        }
        for (r, new_row) in new.into_iter().enumerate() {
            let old_row = &self.shown[r];
            let Some(first) = (0..new_row.len()).find(|&c| old_row[c] != new_row[c]) else {
                continue;
            };
            let last = (0..new_row.len()).rev().find(|&c| old_row[c] != new_row[c]).unwrap_or(first);
            // Include the halves of wide characters at either end.
            let first = first.saturating_sub(1);
            let last = (last + 1).min(new_row.len() - 1);
            let back = frames.back_mut();
            for c in first..=last {
                self.paint_cell(back, stride, r, c, &new_row);
            }
            let (cw, ch) = self.cell_size();
            frames.mark_dirty(Rect::new(
                first as u32 * cw,
                r as u32 * ch,
                (last - first + 1) as u32 * cw,
                ch,
            ));
            self.shown[r] = new_row;
        }
    }

    fn resolve(&self, color: Color, default: Rgb, bright: bool) -> Rgb {
        match color {
            Color::Default => default,
            Color::Idx(i) if bright && i < 8 => self.scheme.palette[i as usize + 8],
            Color::Idx(i) => indexed(&self.scheme.palette, i),
            Color::Rgb(r, g, b) => [r, g, b],
        }
    }

    fn paint_cell(&mut self, back: &mut [u8], stride: usize, row: usize, col: usize, cells: &[Option<Shown>]) {
        let (cw, ch) = (self.font.cell_width as usize, self.font.cell_height as usize);
        let x0 = col * cw;
        let y0 = row * ch;
        let Some(shown) = &cells[col] else {
            fill(back, stride, x0, y0, cw, ch, bgrx(self.scheme.background));
            return;
        };
        let cell = &shown.cell;
        if cell.is_wide_continuation() && col > 0 {
            if let Some(prev) = &cells[col - 1] {
                if prev.cell.is_wide() {
                    // The wide character to the left paints this cell.
                    return self.paint_cell(back, stride, row, col - 1, cells);
                }
            }
        }
        let mut fg = self.resolve(cell.fgcolor(), self.scheme.foreground, cell.bold());
        let mut bg = self.resolve(cell.bgcolor(), self.scheme.background, false);
        let invert = cell.inverse() ^ (shown.flags & FLAG_CURSOR != 0) ^ (shown.flags & FLAG_SELECTED != 0);
        if invert {
            std::mem::swap(&mut fg, &mut bg);
        }
        if cell.dim() {
            fg = [0, 1, 2].map(|i| ((fg[i] as u16 + bg[i] as u16) / 2) as u8);
        }
        let wide = cell.is_wide() && col + 1 < cells.len();
        let width = if wide { 2 * cw } else { cw };
        let bg_px = bgrx(bg);
        fill(back, stride, x0, y0, width, ch, bg_px);
        let text = cell.contents();
        if let Some(c) = text.chars().next().filter(|c| !c.is_whitespace()) {
            let style = if cell.bold() { BOLD } else { 0 } | if cell.italic() { ITALIC } else { 0 };
            let mask = self.font.glyph(c, style, wide);
            for y in 0..ch.min(mask.height as usize) {
                let line = &mut back[(y0 + y) * stride + x0 * 4..];
                for x in 0..width.min(mask.width as usize) {
                    let a = mask.coverage[y * mask.width as usize + x] as u16;
                    if a == 0 {
                        continue;
                    }
                    let px = &mut line[x * 4..x * 4 + 4];
                    for (i, channel) in [2usize, 1, 0].into_iter().enumerate() {
                        px[channel] = ((fg[i] as u16 * a + bg[i] as u16 * (255 - a) + 127) / 255) as u8;
                    }
                }
            }
        }
        if cell.underline() {
            let thickness = (ch / 16).max(1);
            let y = (self.font.baseline as usize + 1 + thickness).min(ch - thickness);
            fill(back, stride, x0, y0 + y, width, thickness, bgrx(fg));
        }
    }
}

fn bgrx(rgb: Rgb) -> [u8; 4] {
    [rgb[2], rgb[1], rgb[0], 0xff]
}

fn fill(back: &mut [u8], stride: usize, x: usize, y: usize, w: usize, h: usize, px: [u8; 4]) {
    for row in y..y + h {
        let line = &mut back[row * stride + x * 4..row * stride + (x + w) * 4];
        for p in line.chunks_exact_mut(4) {
            p.copy_from_slice(&px);
        }
    }
}

/// The best run of rows that moved: `(shift, start, len)` means new rows `start..start+len` equal old rows
/// `start+shift..`, and copying them saves repainting the most rows that actually changed.
fn best_move<T: PartialEq>(old: &[Vec<Option<T>>], new: &[Vec<Option<T>>]) -> Option<(i64, usize, usize)> {
    let rows = old.len().min(new.len()) as i64;
    let mut best: Option<(usize, i64, usize, usize)> = None; // (gain, shift, start, len)
    for shift in (1..rows).flat_map(|k| [k, -k]) {
        let mut i = 0i64;
        while i < rows {
            let matches = |i: i64| {
                let j = i + shift;
                (0..rows).contains(&j)
                    && old[j as usize].iter().all(Option::is_some)
                    && old[j as usize] == new[i as usize]
            };
            if !matches(i) {
                i += 1;
                continue;
            }
            let start = i;
            let mut gain = 0;
            while i < rows && matches(i) {
                if old[i as usize] != new[i as usize] {
                    gain += 1;
                }
                i += 1;
            }
            let len = (i - start) as usize;
            if gain >= 2 && best.is_none_or(|b| gain > b.0) {
                best = Some((gain, shift, start as usize, len));
            }
        }
    }
    best.map(|(_, shift, start, len)| (shift, start, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[u32]) -> Vec<Vec<Option<u32>>> {
        v.iter().map(|&x| vec![Some(x); 3]).collect()
    }

    #[test]
    fn scroll_up_is_found() {
        let old = rows(&[1, 2, 3, 4, 5]);
        let new = rows(&[3, 4, 5, 6, 7]);
        assert_eq!(best_move(&old, &new), Some((2, 0, 3)));
    }

    #[test]
    fn reverse_scroll_and_regions() {
        let old = rows(&[1, 2, 3, 4, 5]);
        let new = rows(&[1, 9, 2, 3, 5]);
        assert_eq!(best_move(&old, &new), Some((-1, 2, 2)));
        assert_eq!(best_move(&old, &old), None);
        let unknown: Vec<Vec<Option<u32>>> = vec![vec![None; 3]; 5];
        assert_eq!(best_move(&unknown, &new), None);
    }

    #[test]
    fn selection_order() {
        let s = Selection { anchor: (3, 5), end: (1, 2) };
        assert!(s.contains(2, 0) && s.contains(1, 2) && s.contains(3, 5));
        assert!(!s.contains(3, 6) && !s.contains(1, 1));
    }
}
