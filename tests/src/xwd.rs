//! Screenshots straight from an X server (`xwd -root`), and an XWD (version 7) parser.
//!
//! XWD layout: a header of 25 big-endian u32 fields (`header_size` bytes in all, the window name
//! follows the fields), then `ncolors` colormap entries of 12 bytes, then `height` rows of
//! `bytes_per_line` bytes, each pixel `bits_per_pixel` wide in the image's `byte_order`.

use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::image::RgbImage;

const XWD_FILE_VERSION: u32 = 7;
const HEADER_FIELDS: usize = 25;
const COLOR_ENTRY_SIZE: usize = 12;
const ZPIXMAP: u32 = 2;
const LSB_FIRST: u32 = 0;
const TRUE_COLOR: u32 = 4;
const DIRECT_COLOR: u32 = 5;

/// The XWD header fields, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XwdHeader {
    pub header_size: u32,
    pub file_version: u32,
    pub pixmap_format: u32,
    pub pixmap_depth: u32,
    pub pixmap_width: u32,
    pub pixmap_height: u32,
    pub xoffset: u32,
    pub byte_order: u32,
    pub bitmap_unit: u32,
    pub bitmap_bit_order: u32,
    pub bitmap_pad: u32,
    pub bits_per_pixel: u32,
    pub bytes_per_line: u32,
    pub visual_class: u32,
    pub red_mask: u32,
    pub green_mask: u32,
    pub blue_mask: u32,
    pub bits_per_rgb: u32,
    pub colormap_entries: u32,
    pub ncolors: u32,
    pub window_width: u32,
    pub window_height: u32,
    pub window_x: u32,
    pub window_y: u32,
    pub window_bdrwidth: u32,
}

/// Takes a screenshot of the root window of X display `display` (e.g. `":52"`) with
/// `xwd -root -silent`, i.e. what the X server behind a VNC server holds.
pub fn x11_screenshot(display: &str) -> Result<RgbImage> {
    let out = Command::new("xwd")
        .args(["-root", "-silent", "-display", display])
        .output()
        .context("running xwd (package x11-apps; scripts/peers.sh install)")?;
    if !out.status.success() {
        bail!("xwd -root -display {display} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    parse_xwd(&out.stdout).with_context(|| format!("parsing xwd output of display {display}"))
}

/// Parses the header of an XWD file.
pub fn parse_xwd_header(data: &[u8]) -> Result<XwdHeader> {
    ensure!(data.len() >= HEADER_FIELDS * 4, "xwd data too short for a header: {} bytes", data.len());
    let f = |i: usize| u32::from_be_bytes([data[i * 4], data[i * 4 + 1], data[i * 4 + 2], data[i * 4 + 3]]);
    let h = XwdHeader {
        header_size: f(0),
        file_version: f(1),
        pixmap_format: f(2),
        pixmap_depth: f(3),
        pixmap_width: f(4),
        pixmap_height: f(5),
        xoffset: f(6),
        byte_order: f(7),
        bitmap_unit: f(8),
        bitmap_bit_order: f(9),
        bitmap_pad: f(10),
        bits_per_pixel: f(11),
        bytes_per_line: f(12),
        visual_class: f(13),
        red_mask: f(14),
        green_mask: f(15),
        blue_mask: f(16),
        bits_per_rgb: f(17),
        colormap_entries: f(18),
        ncolors: f(19),
        window_width: f(20),
        window_height: f(21),
        window_x: f(22),
        window_y: f(23),
        window_bdrwidth: f(24),
    };
    ensure!(
        h.file_version == XWD_FILE_VERSION,
        "unsupported xwd file version {} (want {XWD_FILE_VERSION})",
        h.file_version
    );
    ensure!(
        h.header_size as usize >= HEADER_FIELDS * 4,
        "xwd header_size {} smaller than the fixed fields",
        h.header_size
    );
    Ok(h)
}

/// One channel extractor: shift right, then scale `bits` wide values to 0..=255.
#[derive(Clone, Copy)]
struct Channel {
    shift: u32,
    max: u32,
}

impl Channel {
    fn new(mask: u32) -> Result<Self> {
        ensure!(mask != 0, "xwd colour mask is zero");
        let shift = mask.trailing_zeros();
        let max = mask >> shift;
        ensure!((max & (max + 1)) == 0, "xwd colour mask {mask:#x} is not contiguous");
        Ok(Channel { shift, max })
    }

    fn get(self, pixel: u32) -> u8 {
        let v = (pixel >> self.shift) & self.max;
        if self.max == 255 {
            v as u8
        } else {
            ((v * 255 + self.max / 2) / self.max) as u8
        }
    }
}

/// Parses a whole XWD file (ZPixmap, TrueColor or DirectColor, 8/16/24/32 bits per pixel).
pub fn parse_xwd(data: &[u8]) -> Result<RgbImage> {
    let h = parse_xwd_header(data)?;
    ensure!(h.pixmap_format == ZPIXMAP, "unsupported xwd pixmap format {} (only ZPixmap)", h.pixmap_format);
    ensure!(
        h.visual_class == TRUE_COLOR || h.visual_class == DIRECT_COLOR,
        "unsupported xwd visual class {} (only TrueColor/DirectColor)",
        h.visual_class
    );
    let bpp = h.bits_per_pixel;
    ensure!(matches!(bpp, 8 | 16 | 24 | 32), "unsupported xwd bits_per_pixel {bpp}");
    let bytes_pp = (bpp / 8) as usize;
    let width = h.pixmap_width as usize;
    let height = h.pixmap_height as usize;
    let bpl = h.bytes_per_line as usize;
    ensure!(bpl >= width * bytes_pp, "xwd bytes_per_line {bpl} too small for width {width} at {bpp} bpp");
    let colormap_len = (h.ncolors as usize).checked_mul(COLOR_ENTRY_SIZE).context("xwd ncolors overflow")?;
    let start = (h.header_size as usize).checked_add(colormap_len).context("xwd offset overflow")?;
    let need = bpl.checked_mul(height).and_then(|n| n.checked_add(start)).context("xwd size overflow")?;
    ensure!(
        data.len() >= need,
        "xwd data truncated: {} bytes, need {need} ({width}x{height}, {bpl} bytes per line, pixels at {start})",
        data.len()
    );
    let (r, g, b) = (Channel::new(h.red_mask)?, Channel::new(h.green_mask)?, Channel::new(h.blue_mask)?);
    let lsb = h.byte_order == LSB_FIRST;
    let mut pixels = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        let row = &data[start + y * bpl..start + y * bpl + width * bytes_pp];
        for px in row.chunks_exact(bytes_pp) {
            let mut v = 0u32;
            if lsb {
                for (i, byte) in px.iter().enumerate() {
                    v |= u32::from(*byte) << (8 * i);
                }
            } else {
                for byte in px {
                    v = v << 8 | u32::from(*byte);
                }
            }
            pixels.extend_from_slice(&[r.get(v), g.get(v), b.get(v)]);
        }
    }
    RgbImage::from_raw(h.pixmap_width, h.pixmap_height, pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(fields: [u32; 25], name: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in fields {
            v.extend_from_slice(&f.to_be_bytes());
        }
        v.extend_from_slice(name);
        v
    }

    fn fields(w: u32, h: u32, byte_order: u32, bpp: u32, bpl: u32, ncolors: u32, name_len: u32) -> [u32; 25] {
        [
            100 + name_len,
            7,
            ZPIXMAP,
            24,
            w,
            h,
            0,
            byte_order,
            32,
            byte_order,
            32,
            bpp,
            bpl,
            TRUE_COLOR,
            0xff0000,
            0x00ff00,
            0x0000ff,
            8,
            256,
            ncolors,
            w,
            h,
            0,
            0,
            0,
        ]
    }

    #[test]
    fn parses_lsb_32bpp_with_colormap_and_padding() {
        let name = b"xwdump\0\0";
        let mut d = header(fields(2, 2, LSB_FIRST, 32, 12, 2, name.len() as u32), name);
        d.extend_from_slice(&[0xAA; 24]); // 2 colormap entries, ignored
                                          // row 0: red, green, pad; row 1: blue, (0x12,0x34,0x56), pad
        for px in [0x00ff0000u32, 0x0000ff00, 0xdeadbeef, 0x000000ff, 0x00123456, 0xdeadbeef] {
            d.extend_from_slice(&px.to_le_bytes());
        }
        let img = parse_xwd(&d).unwrap();
        assert_eq!((img.width, img.height), (2, 2));
        assert_eq!(img.pixel(0, 0), [255, 0, 0]);
        assert_eq!(img.pixel(1, 0), [0, 255, 0]);
        assert_eq!(img.pixel(0, 1), [0, 0, 255]);
        assert_eq!(img.pixel(1, 1), [0x12, 0x34, 0x56]);
    }

    #[test]
    fn parses_msb_32bpp() {
        let mut d = header(fields(1, 1, 1, 32, 4, 0, 0), b"");
        d.extend_from_slice(&0x00123456u32.to_be_bytes());
        assert_eq!(parse_xwd(&d).unwrap().pixel(0, 0), [0x12, 0x34, 0x56]);
    }

    #[test]
    fn rejects_truncated() {
        let mut d = header(fields(4, 4, LSB_FIRST, 32, 16, 0, 0), b"");
        d.extend_from_slice(&[0; 20]);
        assert!(parse_xwd(&d).is_err());
        assert!(parse_xwd(&d[..50]).is_err());
    }
}
