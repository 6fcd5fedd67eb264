//! Screencast frames into the back surface. Chromium sends whole frames (JPEG, or PNG with
//! `force-lossless`); the supervisor should only see what changed, so each frame is compared tile by tile
//! with the back surface (which always holds the current picture) and only differing tiles are written
//! and reported as damage. JPEG is block-based, so unchanged areas decode to identical pixels and cost
//! nothing downstream.

use shm_proto::Rect;

/// Side of the comparison tiles, in pixels.
pub const TILE: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("frame is not valid base64")]
    Base64,
    #[error("frame does not decode: {0}")]
    Decode(String),
    #[error("frame of {width}x{height} exceeds {max_width}x{max_height}")]
    TooLarge { width: u32, height: u32, max_width: u32, max_height: u32 },
}

/// A decoded frame, RGB, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// Decodes a screencast frame (base64 of a JPEG or PNG) no larger than `max_width` × `max_height`.
pub fn decode_frame(base64_data: &str, max_width: u32, max_height: u32) -> Result<Image, RenderError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(base64_data).map_err(|_| RenderError::Base64)?;
    let too_large = |width, height| RenderError::TooLarge { width, height, max_width, max_height };
    if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        decode_png(&bytes, max_width, max_height)
    } else {
        let mut decoder = jpeg_decoder::Decoder::new(bytes.as_slice());
        decoder.set_max_decoding_buffer_size(max_width as usize * max_height as usize * 4 + 4096);
        decoder.read_info().map_err(|e| RenderError::Decode(e.to_string()))?;
        let info = decoder.info().ok_or_else(|| RenderError::Decode("no JPEG header".into()))?;
        let (width, height) = (u32::from(info.width), u32::from(info.height));
        if width > max_width || height > max_height {
            return Err(too_large(width, height));
        }
        let pixels = decoder.decode().map_err(|e| RenderError::Decode(e.to_string()))?;
        let n = width as usize * height as usize;
        let rgb = match info.pixel_format {
            jpeg_decoder::PixelFormat::RGB24 if pixels.len() == n * 3 => pixels,
            jpeg_decoder::PixelFormat::L8 if pixels.len() == n => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
            other => return Err(RenderError::Decode(format!("unsupported JPEG pixel format {other:?}"))),
        };
        Ok(Image { width, height, rgb })
    }
}

fn decode_png(bytes: &[u8], max_width: u32, max_height: u32) -> Result<Image, RenderError> {
    let bad = |e: png::DecodingError| RenderError::Decode(e.to_string());
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(bad)?;
    let (width, height) = (reader.info().width, reader.info().height);
    if width > max_width || height > max_height {
        return Err(RenderError::TooLarge { width, height, max_width, max_height });
    }
    let size = reader.output_buffer_size().ok_or_else(|| RenderError::Decode("PNG too large".into()))?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    let n = width as usize * height as usize;
    let rgb = match info.color_type {
        png::ColorType::Rgb => buf[..n * 3].to_vec(),
        png::ColorType::Rgba => buf[..n * 4].chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Grayscale => buf[..n].iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => buf[..n * 2].chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        png::ColorType::Indexed => return Err(RenderError::Decode("indexed PNG not expanded".into())),
    };
    Ok(Image { width, height, rgb })
}

/// Writes the tiles of `image` that differ from the BGRX `back` surface (`stride` bytes per row, a frame
/// of `frame_width` × `frame_height`), and returns the changed areas (runs of tiles along a tile row).
/// Parts of the image outside the frame are ignored.
///
/// Each band of [`TILE`] rows is converted to BGRX once into a scratch buffer, so the comparison and the
/// copy are plain slice operations (`memcmp`, `memcpy`).
pub fn draw(back: &mut [u8], stride: usize, frame_width: u32, frame_height: u32, image: &Image) -> Vec<Rect> {
    let width = image.width.min(frame_width);
    let height = image.height.min(frame_height);
    let row_bytes = width as usize * 4;
    let src_stride = image.width as usize * 3;
    let mut band = vec![0u8; row_bytes * TILE as usize];
    let mut damage = Vec::new();
    let mut ty = 0;
    while ty < height {
        let th = TILE.min(height - ty);
        for r in 0..th as usize {
            let src = &image.rgb[(ty as usize + r) * src_stride..][..width as usize * 3];
            let dst = &mut band[r * row_bytes..][..row_bytes];
            for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(3)) {
                d.copy_from_slice(&[s[2], s[1], s[0], 0]);
            }
        }
        let mut run: Option<Rect> = None;
        let mut tx = 0;
        while tx < width {
            let tw = TILE.min(width - tx);
            let (from, len) = (tx as usize * 4, tw as usize * 4);
            let surface = |r: usize| (ty as usize + r) * stride + from;
            let changed = (0..th as usize).any(|r| back[surface(r)..][..len] != band[r * row_bytes + from..][..len]);
            if changed {
                for r in 0..th as usize {
                    back[surface(r)..][..len].copy_from_slice(&band[r * row_bytes + from..][..len]);
                }
                run = Some(match run {
                    Some(r) => Rect::new(r.x, r.y, r.w + tw, r.h),
                    None => Rect::new(tx, ty, tw, th),
                });
            } else if let Some(r) = run.take() {
                damage.push(r);
            }
            tx += tw;
        }
        damage.extend(run);
        ty += th;
    }
    damage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(width: u32, height: u32, rgb: [u8; 3]) -> Image {
        Image { width, height, rgb: rgb.repeat((width * height) as usize) }
    }

    #[test]
    fn only_changed_tiles_are_damage() {
        let (w, h) = (100u32, 70u32);
        let stride = 128 * 4;
        let mut back = vec![0u8; stride * 80];
        let first = solid(w, h, [10, 20, 30]);
        let damage = draw(&mut back, stride, w, h, &first);
        // Three tile rows (32, 32, 6 pixels), each one run across the whole width.
        assert_eq!(damage, vec![Rect::new(0, 0, 100, 32), Rect::new(0, 32, 100, 32), Rect::new(0, 64, 100, 6)]);
        assert_eq!(&back[..4], &[30, 20, 10, 0]);
        assert!(draw(&mut back, stride, w, h, &first).is_empty(), "an identical frame costs nothing");
        let mut second = first.clone();
        let at = (40 * w as usize + 70) * 3;
        second.rgb[at..at + 3].copy_from_slice(&[255, 0, 0]);
        assert_eq!(draw(&mut back, stride, w, h, &second), vec![Rect::new(64, 32, 32, 32)]);
        assert_eq!(&back[40 * stride + 70 * 4..][..4], &[0, 0, 255, 0]);
    }

    #[test]
    fn image_larger_than_the_frame_is_clipped() {
        let stride = 16 * 4;
        let mut back = vec![0u8; stride * 16];
        let damage = draw(&mut back, stride, 8, 4, &solid(16, 16, [1, 2, 3]));
        assert_eq!(damage, vec![Rect::new(0, 0, 8, 4)]);
        assert_eq!(back[stride * 4], 0, "rows below the frame stay untouched");
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(matches!(decode_frame("%%%", 10, 10), Err(RenderError::Base64)));
        assert!(matches!(decode_frame("AAAA", 10, 10), Err(RenderError::Decode(_))));
    }
}
