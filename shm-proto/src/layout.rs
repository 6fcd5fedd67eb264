//! Byte layout of the shared region. Every offset is computed from a [`Geometry`] that the supervisor
//! chose; the worker reads the geometry from the header, the supervisor only ever uses its own copy.
//!
//! ```text
//! page 0   header: magic, version, geometry, `published` and `consumed` (own cache lines),
//!          two slot descriptors
//! ...      damage list of slot 0, damage list of slot 1 (OP_SIZE bytes per op)
//! page k   surface 0 (max_width * max_height * 4 bytes, page aligned)
//! page m   surface 1
//! ```
//!
//! A surface's rows are packed at the stride of the frame it holds (`width * 4`, the width recorded in
//! its slot descriptor), not at `max_width * 4`: a small frame then occupies the first pages of the
//! surface instead of a few bytes of every `max_width` row, which keeps the touched (resident, shared)
//! pages of a session proportional to its frame size rather than to the configured maximum.

/// "GUACRSHM" in little endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"GUACRSHM");
/// 2: rows packed at the frame's stride (1 used `max_width * 4`).
pub const VERSION: u32 = 2;
pub const PAGE: usize = 4096;
pub const BYTES_PER_PIXEL: usize = 4;

// Header field offsets (all little endian, naturally aligned).
pub const OFF_MAGIC: usize = 0;
pub const OFF_VERSION: usize = 8;
pub const OFF_MAX_WIDTH: usize = 16;
pub const OFF_MAX_HEIGHT: usize = 20;
pub const OFF_DAMAGE_CAPACITY: usize = 24;
/// Sequence number of the newest published frame; written by the worker with Release.
pub const OFF_PUBLISHED: usize = 64;
/// Sequence number of the newest frame the supervisor has released; written by the supervisor.
pub const OFF_CONSUMED: usize = 128;
/// Two slot descriptors, `SLOT_SIZE` bytes each.
pub const OFF_SLOTS: usize = 192;
pub const SLOT_SIZE: usize = 64;

// Slot descriptor field offsets, relative to the slot.
pub const SLOT_SEQ: usize = 0;
pub const SLOT_WIDTH: usize = 8;
pub const SLOT_HEIGHT: usize = 12;
pub const SLOT_DAMAGE_COUNT: usize = 16;
pub const SLOT_FLAGS: usize = 20;
/// Slot flag: the damage list overflowed; treat the whole frame as changed.
pub const FLAG_OVERFLOW: u32 = 1;
/// Slot flag: the frame size differs from the previous frame.
pub const FLAG_RESIZED: u32 = 2;

/// One damage op: kind, x, y, w, h, src_x, src_y, reserved (u32 each).
pub const OP_SIZE: usize = 32;

/// The shape of a shared region, fixed when the supervisor creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub max_width: u32,
    pub max_height: u32,
    /// Damage ops per slot before the list overflows.
    pub damage_capacity: u32,
}

impl Geometry {
    /// Largest surface a session may use unless configured otherwise (4K UHD).
    pub const DEFAULT: Geometry = Geometry { max_width: 3840, max_height: 2160, damage_capacity: 1024 };
    /// Hard ceiling accepted from configuration: keeps every offset far from overflow.
    pub const LIMIT: u32 = 8192;

    pub fn new(max_width: u32, max_height: u32, damage_capacity: u32) -> Option<Geometry> {
        let ok = (1..=Self::LIMIT).contains(&max_width)
            && (1..=Self::LIMIT).contains(&max_height)
            && (1..=65536).contains(&damage_capacity);
        ok.then_some(Geometry { max_width, max_height, damage_capacity })
    }

    /// Bytes per surface row of a frame `width` pixels wide (rows are packed at the frame's width).
    pub fn stride(width: u32) -> usize {
        width as usize * BYTES_PER_PIXEL
    }

    /// Bytes reserved for each surface: the largest frame, `max_width * max_height` pixels.
    pub fn surface_bytes(&self) -> usize {
        self.max_width as usize * self.max_height as usize * BYTES_PER_PIXEL
    }

    pub fn damage_offset(&self, slot: usize) -> usize {
        PAGE + slot * self.damage_capacity as usize * OP_SIZE
    }

    pub fn surface_offset(&self, slot: usize) -> usize {
        let damage_end = PAGE + 2 * self.damage_capacity as usize * OP_SIZE;
        round_up(damage_end, PAGE) + slot * round_up(self.surface_bytes(), PAGE)
    }

    /// Total size of the memfd.
    pub fn total_bytes(&self) -> usize {
        self.surface_offset(2)
    }
}

/// Which surface and descriptor a sequence number lives in.
pub fn slot_of(seq: u64) -> usize {
    (seq % 2) as usize
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_do_not_overlap() {
        let g = Geometry::DEFAULT;
        const { assert!(OFF_SLOTS + 2 * SLOT_SIZE <= PAGE) };
        assert!(g.damage_offset(1) + g.damage_capacity as usize * OP_SIZE <= g.surface_offset(0));
        assert!(g.surface_offset(0) + g.surface_bytes() <= g.surface_offset(1));
        assert_eq!(g.surface_offset(0) % PAGE, 0);
        assert_eq!(g.surface_offset(1) % PAGE, 0);
    }

    #[test]
    fn geometry_limits() {
        assert!(Geometry::new(0, 10, 1).is_none());
        assert!(Geometry::new(10, 10, 0).is_none());
        assert!(Geometry::new(Geometry::LIMIT + 1, 10, 1).is_none());
        assert!(Geometry::new(Geometry::LIMIT, Geometry::LIMIT, 65536).is_some());
    }

    #[test]
    fn every_frame_size_fits_its_surface() {
        let g = Geometry::new(37, 11, 1).unwrap();
        for (w, h) in [(37, 11), (1, 11), (37, 1), (5, 7)] {
            assert!(Geometry::stride(w) * h as usize <= g.surface_bytes());
        }
    }
}
