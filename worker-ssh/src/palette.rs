//! Terminal colours: guacd's 16-colour palette and colour schemes (`color-scheme`: the names
//! "black-white", "gray-black", "green-black", "white-black", or guacd's custom syntax
//! `foreground: rgb:RR/GG/BB; background: color0; color9: rgb:FF/00/00`), the xterm 256-colour cube and
//! greys, and true colour.

/// An RGB colour.
pub type Rgb = [u8; 3];

/// guacd's initial palette (dark and intense variants of the eight ANSI colours).
pub const GUACD_PALETTE: [Rgb; 16] = [
    [0x00, 0x00, 0x00],
    [0x99, 0x3E, 0x3E],
    [0x3E, 0x99, 0x3E],
    [0x99, 0x99, 0x3E],
    [0x3E, 0x3E, 0x99],
    [0x99, 0x3E, 0x99],
    [0x3E, 0x99, 0x99],
    [0x99, 0x99, 0x99],
    [0x3E, 0x3E, 0x3E],
    [0xFF, 0x67, 0x67],
    [0x67, 0xFF, 0x67],
    [0xFF, 0xFF, 0x67],
    [0x67, 0x67, 0xFF],
    [0xFF, 0x67, 0xFF],
    [0x67, 0xFF, 0xFF],
    [0xFF, 0xFF, 0xFF],
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PaletteError {
    #[error("unknown colour scheme entry {0:?}")]
    BadEntry(String),
    #[error("bad colour {0:?} (expected rgb:RR/GG/BB or colorN)")]
    BadColor(String),
}

/// Default foreground and background plus the 16 low colours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColorScheme {
    pub foreground: Rgb,
    pub background: Rgb,
    pub palette: [Rgb; 16],
}

impl Default for ColorScheme {
    /// guacd's default: "gray-black".
    fn default() -> ColorScheme {
        ColorScheme { foreground: GUACD_PALETTE[7], background: GUACD_PALETTE[0], palette: GUACD_PALETTE }
    }
}

impl ColorScheme {
    pub fn parse(spec: &str) -> Result<ColorScheme, PaletteError> {
        let p = GUACD_PALETTE;
        let named = |fg: Rgb, bg: Rgb| ColorScheme { foreground: fg, background: bg, palette: p };
        match spec.trim() {
            "" | "gray-black" => return Ok(ColorScheme::default()),
            "black-white" => return Ok(named(p[0], p[15])),
            "green-black" => return Ok(named(p[2], p[0])),
            "white-black" => return Ok(named(p[15], p[0])),
            _ => {}
        }
        let mut scheme = ColorScheme::default();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, value) = entry.split_once(':').ok_or_else(|| PaletteError::BadEntry(entry.into()))?;
            let color = scheme.parse_color(value.trim())?;
            match name.trim() {
                "foreground" => scheme.foreground = color,
                "background" => scheme.background = color,
                other => {
                    let index = other
                        .strip_prefix("color")
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|n| *n < 16)
                        .ok_or_else(|| PaletteError::BadEntry(entry.into()))?;
                    scheme.palette[index] = color;
                }
            }
        }
        Ok(scheme)
    }

    fn parse_color(&self, value: &str) -> Result<Rgb, PaletteError> {
        let bad = || PaletteError::BadColor(value.into());
        if let Some(rgb) = value.strip_prefix("rgb:") {
            let parts: Vec<&str> = rgb.split('/').collect();
            if parts.len() != 3 {
                return Err(bad());
            }
            let mut out = [0u8; 3];
            for (o, part) in out.iter_mut().zip(parts) {
                // X11 style: 1 to 4 hex digits per channel, scaled to 8 bits.
                if part.is_empty() || part.len() > 4 {
                    return Err(bad());
                }
                let v = u32::from_str_radix(part, 16).map_err(|_| bad())?;
                let max = (1u32 << (4 * part.len())) - 1;
                *o = (v * 255 / max) as u8;
            }
            return Ok(out);
        }
        if let Some(n) = value.strip_prefix("color") {
            let index: usize = n.parse().map_err(|_| bad())?;
            return Ok(indexed(&self.palette, index.try_into().map_err(|_| bad())?));
        }
        Err(bad())
    }
}

/// Colour `index` of the 256-colour xterm palette, with the low 16 from `low`.
pub fn indexed(low: &[Rgb; 16], index: u8) -> Rgb {
    match index {
        0..=15 => low[index as usize],
        16..=231 => {
            let i = index - 16;
            let level = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
            [level(i / 36), level(i / 6 % 6), level(i % 6)]
        }
        _ => {
            let v = 8 + (index - 232) * 10;
            [v, v, v]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_custom() {
        assert_eq!(ColorScheme::parse("gray-black").unwrap(), ColorScheme::default());
        let bw = ColorScheme::parse("black-white").unwrap();
        assert_eq!((bw.foreground, bw.background), ([0, 0, 0], [255, 255, 255]));
        let c = ColorScheme::parse("foreground: rgb:FF/00/00; background: color4; color1: rgb:F/8/0").unwrap();
        assert_eq!(c.foreground, [255, 0, 0]);
        assert_eq!(c.background, GUACD_PALETTE[4]);
        assert_eq!(c.palette[1], [255, 136, 0]);
        assert!(ColorScheme::parse("bogus").is_err());
        assert!(ColorScheme::parse("color99: rgb:00/00/00").is_err());
    }

    #[test]
    fn cube_and_greys() {
        assert_eq!(indexed(&GUACD_PALETTE, 16), [0, 0, 0]);
        assert_eq!(indexed(&GUACD_PALETTE, 196), [255, 0, 0]);
        assert_eq!(indexed(&GUACD_PALETTE, 231), [255, 255, 255]);
        assert_eq!(indexed(&GUACD_PALETTE, 232), [8, 8, 8]);
        assert_eq!(indexed(&GUACD_PALETTE, 255), [238, 238, 238]);
    }
}
