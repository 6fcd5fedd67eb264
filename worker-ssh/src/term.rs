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

/// Answers to the terminal queries applications make (device attributes, status and cursor position
/// reports), collected while parsing and sent back to the server afterwards.
#[derive(Default)]
pub struct Replies(Vec<u8>);

impl vt100::Callbacks for Replies {
    fn unhandled_csi(
        &mut self,
        screen: &mut vt100::Screen,
        i1: Option<u8>,
        _i2: Option<u8>,
        params: &[&[u16]],
        c: char,
    ) {
        let first = params.first().and_then(|p| p.first()).copied().unwrap_or(0);
        match (c, i1) {
            // DA1: a VT220-class terminal with ANSI colour.
            ('c', None) if first == 0 => self.0.extend_from_slice(b"\x1b[?62;22c"),
            // DA2: xterm-compatible, version 0.
            ('c', Some(b'>')) if first == 0 => self.0.extend_from_slice(b"\x1b[>1;0;0c"),
            ('n', None) if first == 5 => self.0.extend_from_slice(b"\x1b[0n"),
            ('n', None) if first == 6 => {
                let (row, col) = screen.cursor_position();
                self.0.extend_from_slice(format!("\x1b[{};{}R", row + 1, col + 1).as_bytes());
            }
            _ => {}
        }
    }
}

pub struct Terminal {
    parser: vt100::Parser<Replies>,
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
            parser: vt100::Parser::new_with_callbacks(one, one, scrollback, Replies::default()),
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

    /// Answers to queries found in the output so far, for the server.
    pub fn take_replies(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.parser.callbacks_mut().0)
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
            frames.mark_dirty(Rect::new(first as u32 * cw, r as u32 * ch, (last - first + 1) as u32 * cw, ch));
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
            let columns = width.min(mask.width as usize).min((stride / 4).saturating_sub(x0));
            for y in 0..ch.min(mask.height as usize) {
                let Some(line) = back.get_mut((y0 + y) * stride + x0 * 4..(y0 + y) * stride + (x0 + columns) * 4)
                else {
                    break;
                };
                for x in 0..columns {
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
    // A surface smaller than one cell: paint what fits.
    let w = w.min((stride / 4).saturating_sub(x));
    for row in y..y + h {
        let Some(line) = back.get_mut(row * stride + x * 4..row * stride + (x + w) * 4) else {
            return;
        };
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

    /// Renders and publishes one frame, returns what the supervisor would read.
    fn frame(t: &mut Terminal, w: &mut FrameWriter, r: &mut shm_proto::FrameReader) -> shm_proto::Frame {
        t.render(w);
        w.try_publish().expect("published");
        let frame = r.acquire().unwrap().expect("frame");
        r.release(frame.clone());
        frame
    }

    #[test]
    fn damage_is_cell_granular_and_scrolls_are_copies() {
        use shm_proto::{DamageOp, Geometry, SharedRegion};
        let (mut reader, fd) = SharedRegion::create(Geometry::new(400, 160, 256).unwrap()).unwrap();
        let mut writer = FrameWriter::attach(fd).unwrap();
        writer.resize(400, 160).unwrap();
        let font = Font::new(12, 96).unwrap();
        let (cw, ch) = (font.cell_width, font.cell_height);
        let mut t = Terminal::new(font, ColorScheme::default(), 100, 400, 160);
        let (cols, rows) = t.grid_size();
        assert_eq!((cols as u32, rows as u32), (400 / cw, 160 / ch));
        assert!(frame(&mut t, &mut writer, &mut reader).overflow, "first frame is complete");

        // Typing dirties only the cells that changed on that row (text and cursor).
        t.process(b"hello");
        let f = frame(&mut t, &mut writer, &mut reader);
        assert_eq!(f.ops.len(), 1, "{:?}", f.ops);
        let DamageOp::Dirty(r) = f.ops[0] else { panic!("{:?}", f.ops) };
        assert_eq!((r.y, r.h), (0, ch));
        assert!(r.w <= 7 * cw, "{r:?}");

        // Filling the screen and scrolling by three lines moves the rest with one copy.
        for i in 0..rows {
            t.process(format!("\r\nline {i}").as_bytes());
        }
        frame(&mut t, &mut writer, &mut reader);
        t.process(b"\r\nx\r\ny\r\nz");
        let f = frame(&mut t, &mut writer, &mut reader);
        let copies: Vec<_> = f.ops.iter().filter(|op| matches!(op, DamageOp::Copy { .. })).collect();
        assert_eq!(copies.len(), 1, "{:?}", f.ops);
        let DamageOp::Copy { src_x, src_y, dst } = *copies[0] else { unreachable!() };
        assert_eq!((src_x, src_y, dst.y), (0, 3 * ch, 0));
        assert!(dst.h >= (rows as u32 - 4) * ch, "{dst:?}");
        let dirty: u32 = f
            .ops
            .iter()
            .filter_map(|op| match op {
                DamageOp::Dirty(r) => Some(r.h),
                _ => None,
            })
            .sum();
        assert!(dirty <= 4 * ch, "only the new rows are repainted: {:?}", f.ops);
    }

    /// Hostile output (random bytes mixed with escape sequences, wide characters, resizes, scrolling the
    /// view, selections) never panics the renderer and never damages outside the frame.
    #[test]
    fn random_output_never_panics() {
        use shm_proto::{Geometry, SharedRegion};
        let (mut reader, fd) = SharedRegion::create(Geometry::new(300, 200, 64).unwrap()).unwrap();
        let mut writer = FrameWriter::attach(fd).unwrap();
        writer.resize(300, 200).unwrap();
        let mut t = Terminal::new(Font::new(9, 96).unwrap(), ColorScheme::default(), 50, 300, 200);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces: [&[u8]; 14] = [
            b"\x1b[2J",
            b"\x1b[1;31;44m",
            b"\x1b[38;5;200m",
            b"\x1b[48;2;1;2;3m",
            b"\x1b[?1049h",
            b"\x1b[?1049l",
            b"\x1b[3;5r",
            b"\x1bM",
            b"\x1b[7m\x1b[4m\x1b[3m",
            "\u{4e2d}\u{6587}\u{1f600}e\u{301}".as_bytes(),
            b"\r\n",
            b"\x1b[999;999H",
            b"\x1b[6n\x1b[c",
            b"\x1b[0m",
        ];
        for round in 0..400 {
            let mut bytes = Vec::new();
            for _ in 0..(next() % 20) {
                match next() % 3 {
                    0 => bytes.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]),
                    1 => bytes.extend((0..next() % 40).map(|_| (next() % 256) as u8)),
                    _ => bytes.extend_from_slice(b"text text text "),
                }
            }
            t.process(&bytes);
            t.take_replies();
            match round % 23 {
                5 => {
                    let (w, h) = (1 + (next() % 300) as u32, 1 + (next() % 200) as u32);
                    writer.resize(w, h).unwrap();
                    t.resize(w, h);
                }
                7 => {
                    t.scroll_view((next() % 40) as i32 - 20);
                }
                11 => {
                    let a = t.cell_at((next() % 400) as i32 - 50, (next() % 300) as i32 - 50);
                    let b = t.cell_at((next() % 400) as i32, (next() % 300) as i32);
                    t.selection = Some(Selection { anchor: a, end: b });
                    let _ = t.selected_text();
                }
                _ => {}
            }
            t.render(&mut writer);
            if writer.try_publish().is_some() {
                let frame = reader.acquire().unwrap().expect("valid frame");
                reader.release(frame);
            }
        }
    }

    #[test]
    fn surface_smaller_than_a_cell() {
        use shm_proto::{Geometry, SharedRegion};
        let (_reader, fd) = SharedRegion::create(Geometry::new(4, 4, 8).unwrap()).unwrap();
        let mut writer = FrameWriter::attach(fd).unwrap();
        writer.resize(4, 4).unwrap();
        let mut t = Terminal::new(Font::new(30, 96).unwrap(), ColorScheme::default(), 5, 4, 4);
        t.process("\x1b[4mW\u{4e2d}".as_bytes());
        t.render(&mut writer);
        assert_eq!(t.grid_size(), (1, 1));
    }

    #[test]
    fn queries_are_answered() {
        let font = Font::new(12, 96).unwrap();
        let mut t = Terminal::new(font, ColorScheme::default(), 10, 800, 600);
        t.process(b"ab\x1b[6n\x1b[c\x1b[5n");
        assert_eq!(t.take_replies(), b"\x1b[1;3R\x1b[?62;22c\x1b[0n");
        assert!(t.take_replies().is_empty());
    }

    #[test]
    fn selection_order() {
        let s = Selection { anchor: (3, 5), end: (1, 2) };
        assert!(s.contains(2, 0) && s.contains(1, 2) && s.contains(3, 5));
        assert!(!s.contains(3, 6) && !s.contains(1, 1));
    }
}
