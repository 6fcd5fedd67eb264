//! The shared region: created and sealed by the supervisor ([`SharedRegion::create`]), drawn into by the
//! worker ([`FrameWriter`]), read by the supervisor ([`FrameReader`]).

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::damage::{DamageOp, Rect};
use crate::layout::*;
use crate::protocol::{self, Observation};
use crate::raw::SharedMap;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    #[error("shared memory system call failed: {0}")]
    Sys(#[from] nix::Error),
    #[error("mapping shared memory failed: {0}")]
    Map(#[from] std::io::Error),
    #[error("memfd is not sealed against shrinking and growing (seals {seals:#x})")]
    NotSealed { seals: i32 },
    #[error("memfd is {actual} bytes, the header describes {expected}")]
    WrongSize { expected: usize, actual: usize },
    #[error("shared-memory header is invalid (magic {magic:#x}, version {version})")]
    BadHeader { magic: u64, version: u32 },
    #[error("invalid surface geometry {max_width}x{max_height} with {damage_capacity} damage ops")]
    BadGeometry { max_width: u32, max_height: u32, damage_capacity: u32 },
    #[error("frame size {width}x{height} outside 1..={max_width}x1..={max_height}")]
    BadFrameSize { width: u32, height: u32, max_width: u32, max_height: u32 },
    // ---- protocol breaches by the worker, detected by the supervisor ----
    #[error("sequence breach: consumed {consumed}, published {published}")]
    SequenceBreach { consumed: u64, published: u64 },
    #[error("slot holds frame {found}, expected {expected}")]
    SlotMismatch { expected: u64, found: u64 },
    #[error("damage count {count} exceeds capacity {capacity}")]
    DamageCount { count: u32, capacity: u32 },
    #[error("damage op {index} is invalid or outside the {width}x{height} frame")]
    BadDamageOp { index: u32, width: u32, height: u32 },
}

impl ShmError {
    /// True for errors that mean the worker broke the contract (kill it, tell the client).
    pub fn is_breach(&self) -> bool {
        matches!(
            self,
            ShmError::BadFrameSize { .. }
                | ShmError::SequenceBreach { .. }
                | ShmError::SlotMismatch { .. }
                | ShmError::DamageCount { .. }
                | ShmError::BadDamageOp { .. }
        )
    }
}

/// Creation of a session's region (supervisor side).
pub struct SharedRegion;

impl SharedRegion {
    /// Creates, sizes, seals and maps a memfd for `geometry`. Returns the supervisor's reader and the
    /// descriptor to hand to the worker (close-on-exec; placed into the worker explicitly).
    pub fn create(geometry: Geometry) -> Result<(FrameReader, OwnedFd), ShmError> {
        let fd = memfd_create("guacr-frames", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
        let len = geometry.total_bytes();
        nix::unistd::ftruncate(&fd, len as i64)?;
        // Sealed before anyone maps it: the worker can neither shrink (SIGBUS in the supervisor) nor grow
        // it, nor add seals of its own.
        fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL))?;
        let map = SharedMap::map(&fd, len)?;
        map.store_u64(OFF_MAGIC, MAGIC, Ordering::Relaxed);
        map.store_u32(OFF_VERSION, VERSION);
        map.store_u32(OFF_MAX_WIDTH, geometry.max_width);
        map.store_u32(OFF_MAX_HEIGHT, geometry.max_height);
        map.store_u32(OFF_DAMAGE_CAPACITY, geometry.damage_capacity);
        map.store_u64(OFF_CONSUMED, 0, Ordering::Relaxed);
        map.store_u64(OFF_PUBLISHED, 0, Ordering::Release);
        Ok((FrameReader { map, geometry, consumed: 0, ops_scratch: Vec::new() }, fd))
    }
}

/// A published frame, validated. Valid until passed to [`FrameReader::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub width: u32,
    pub height: u32,
    /// Damage in order. Empty with `overflow` set means "everything changed".
    pub ops: Vec<DamageOp>,
    pub overflow: bool,
    /// The frame size differs from the previous frame's.
    pub resized: bool,
    slot: usize,
}

impl Frame {
    pub fn full_rect(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }
}

/// The supervisor's view. Trusts nothing in the region: every value is copied out once and checked against
/// the geometry it created.
pub struct FrameReader {
    map: SharedMap,
    geometry: Geometry,
    consumed: u64,
    ops_scratch: Vec<u32>,
}

impl FrameReader {
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The newest frame if the worker published one since the last release.
    pub fn acquire(&mut self) -> Result<Option<Frame>, ShmError> {
        let published = self.map.load_u64(OFF_PUBLISHED, Ordering::Acquire);
        let seq = match protocol::observe(self.consumed, published) {
            Observation::Nothing => return Ok(None),
            Observation::Next(seq) => seq,
            Observation::Breach { consumed, published } => {
                return Err(ShmError::SequenceBreach { consumed, published })
            }
        };
        let slot = slot_of(seq);
        let base = OFF_SLOTS + slot * SLOT_SIZE;
        let found = self.map.load_u64(base + SLOT_SEQ, Ordering::Relaxed);
        if found != seq {
            return Err(ShmError::SlotMismatch { expected: seq, found });
        }
        let width = self.map.load_u32(base + SLOT_WIDTH);
        let height = self.map.load_u32(base + SLOT_HEIGHT);
        let count = self.map.load_u32(base + SLOT_DAMAGE_COUNT);
        let flags = self.map.load_u32(base + SLOT_FLAGS);
        let g = self.geometry;
        if !(1..=g.max_width).contains(&width) || !(1..=g.max_height).contains(&height) {
            return Err(ShmError::BadFrameSize { width, height, max_width: g.max_width, max_height: g.max_height });
        }
        if count > g.damage_capacity {
            return Err(ShmError::DamageCount { count, capacity: g.damage_capacity });
        }
        let overflow = flags & FLAG_OVERFLOW != 0;
        let mut ops = Vec::new();
        if !overflow {
            // One bulk copy of the list, then decode from private memory.
            let mut raw = std::mem::take(&mut self.ops_scratch);
            raw.clear();
            raw.resize(count as usize * OP_SIZE / 4, 0);
            let mut bytes = vec![0u8; count as usize * OP_SIZE];
            self.map.copy_out(g.damage_offset(slot), &mut bytes);
            ops.reserve(count as usize);
            for (index, chunk) in bytes.chunks_exact(OP_SIZE).enumerate() {
                let mut words = [0u32; 8];
                for (w, b) in words.iter_mut().zip(chunk.chunks_exact(4)) {
                    *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                let op = DamageOp::from_words(words)
                    .filter(|op| op.fits(width, height))
                    .ok_or(ShmError::BadDamageOp { index: index as u32, width, height })?;
                ops.push(op);
            }
            self.ops_scratch = raw;
        }
        Ok(Some(Frame { seq, width, height, ops, overflow, resized: flags & FLAG_RESIZED != 0, slot }))
    }

    /// Copies one row segment of `frame` (BGRX) into `dst` (`rect.w * 4` bytes).
    ///
    /// # Panics
    /// If `rect` does not fit the frame or `dst` has the wrong length: both are the caller's bug, since
    /// frames are validated in [`FrameReader::acquire`].
    pub fn read_row(&self, frame: &Frame, rect: Rect, row: u32, dst: &mut [u8]) {
        assert!(rect.fits(frame.width, frame.height) && row < rect.h);
        assert_eq!(dst.len(), rect.w as usize * BYTES_PER_PIXEL);
        // The frame's rows are packed at its own width (validated against the geometry in `acquire`), so
        // the offset stays inside the surface: (height - 1) * width * 4 + width * 4 <= surface_bytes.
        let offset = self.geometry.surface_offset(frame.slot)
            + (rect.y + row) as usize * Geometry::stride(frame.width)
            + rect.x as usize * BYTES_PER_PIXEL;
        self.map.copy_out(offset, dst);
    }

    /// Copies a rectangle of `frame` (BGRX, rows packed at `rect.w * 4` bytes) into `dst`.
    pub fn read_rect(&self, frame: &Frame, rect: Rect, dst: &mut Vec<u8>) {
        let row_bytes = rect.w as usize * BYTES_PER_PIXEL;
        dst.clear();
        dst.resize(row_bytes * rect.h as usize, 0);
        for (row, chunk) in dst.chunks_exact_mut(row_bytes.max(1)).enumerate().take(rect.h as usize) {
            self.read_row(frame, rect, row as u32, chunk);
        }
    }

    /// Releases the frame: the worker may publish the next one (tell it with `ToWorker::Consumed`).
    pub fn release(&mut self, frame: Frame) {
        self.consumed = frame.seq;
        self.map.store_u64(OFF_CONSUMED, frame.seq, Ordering::Release);
    }

    /// Sequence number of the last released frame.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }
}

/// The worker's view: draws into the back surface, records damage, publishes.
pub struct FrameWriter {
    map: SharedMap,
    geometry: Geometry,
    published: u64,
    width: u32,
    height: u32,
    pending: Vec<DamageOp>,
    overflow: bool,
    resized: bool,
}

impl FrameWriter {
    /// Maps the region the supervisor passed us, after checking that it is sealed and well formed.
    pub fn attach(fd: OwnedFd) -> Result<FrameWriter, ShmError> {
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS)?;
        let needed = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
        if !SealFlag::from_bits_truncate(seals).contains(needed) {
            return Err(ShmError::NotSealed { seals });
        }
        let actual = nix::sys::stat::fstat(&fd)?.st_size as usize;
        if actual < PAGE {
            return Err(ShmError::WrongSize { expected: PAGE, actual });
        }
        let header = SharedMap::map(&fd, PAGE)?;
        let magic = header.load_u64(OFF_MAGIC, Ordering::Relaxed);
        let version = header.load_u32(OFF_VERSION);
        if magic != MAGIC || version != VERSION {
            return Err(ShmError::BadHeader { magic, version });
        }
        let (max_width, max_height, damage_capacity) =
            (header.load_u32(OFF_MAX_WIDTH), header.load_u32(OFF_MAX_HEIGHT), header.load_u32(OFF_DAMAGE_CAPACITY));
        let geometry = Geometry::new(max_width, max_height, damage_capacity).ok_or(ShmError::BadGeometry {
            max_width,
            max_height,
            damage_capacity,
        })?;
        if actual != geometry.total_bytes() {
            return Err(ShmError::WrongSize { expected: geometry.total_bytes(), actual });
        }
        drop(header);
        let map = SharedMap::map(&fd, actual)?;
        let published = map.load_u64(OFF_PUBLISHED, Ordering::Acquire);
        Ok(FrameWriter {
            map,
            geometry,
            published,
            width: 0,
            height: 0,
            pending: Vec::new(),
            overflow: false,
            resized: false,
        })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Bytes per row of the back surface at the current frame size (`width * 4`). It changes with
    /// [`FrameWriter::resize`]: read it again after every resize.
    pub fn stride(&self) -> usize {
        Geometry::stride(self.width)
    }

    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Sets the frame size (server resolution). Everything counts as damaged afterwards.
    ///
    /// The back surface keeps its pixels where the old and new frames overlap (rows are moved to the new
    /// stride); the newly exposed area reads as zero (black). The first resize leaves the surface as the
    /// supervisor created it (zero), without touching its pages.
    pub fn resize(&mut self, width: u32, height: u32) -> Result<(), ShmError> {
        let g = self.geometry;
        if !(1..=g.max_width).contains(&width) || !(1..=g.max_height).contains(&height) {
            return Err(ShmError::BadFrameSize { width, height, max_width: g.max_width, max_height: g.max_height });
        }
        if (width, height) != (self.width, self.height) {
            let old = (self.width, self.height);
            self.width = width;
            self.height = height;
            self.relayout_back(old);
            self.resized = true;
            self.mark_all();
        }
        Ok(())
    }

    /// Moves the back surface's rows from the stride of an `old` frame size to the current one.
    fn relayout_back(&mut self, (old_w, old_h): (u32, u32)) {
        if old_w == 0 {
            // No frame yet: nothing to keep, and writing zeros would only make every page resident.
            return;
        }
        let (new_stride, old_stride) = (Geometry::stride(self.width), Geometry::stride(old_w));
        let kept_rows = old_h.min(self.height) as usize;
        let kept = old_stride.min(new_stride);
        let rows = self.height as usize;
        let back = self.back_mut();
        // Narrower rows move towards the start, so go forwards; wider rows move towards the end, so go
        // backwards: either way no row is overwritten before it has been moved.
        let mut move_row = |y: usize| back.copy_within(y * old_stride..y * old_stride + kept, y * new_stride);
        if new_stride < old_stride {
            (0..kept_rows).for_each(&mut move_row);
        } else if new_stride > old_stride {
            (0..kept_rows).rev().for_each(&mut move_row);
        }
        for y in 0..rows {
            let from = if y < kept_rows { kept } else { 0 };
            back[y * new_stride + from..(y + 1) * new_stride].fill(0);
        }
    }

    fn back_slot(&self) -> usize {
        slot_of(self.published + 1)
    }

    /// The whole back surface (`max_width * max_height * 4` bytes of BGRX); the frame occupies its first
    /// `stride() * height` bytes. Pixels outside the current frame are never read.
    pub fn back_mut(&mut self) -> &mut [u8] {
        let offset = self.geometry.surface_offset(self.back_slot());
        let len = self.geometry.surface_bytes();
        self.map.exclusive_slice_mut(offset, len)
    }

    /// Everything changed (clears the list; cheaper than many ops).
    pub fn mark_all(&mut self) {
        self.pending.clear();
        self.overflow = true;
    }

    /// Records that `rect` (clipped to the frame) changed.
    pub fn mark_dirty(&mut self, rect: Rect) {
        let rect = rect.clip(self.width, self.height);
        if rect.is_empty() || self.overflow {
            return;
        }
        self.push(DamageOp::Dirty(rect));
    }

    /// Copies `dst.w` × `dst.h` pixels from (`src_x`, `src_y`) to `dst` on the back surface and records it.
    /// Rectangles outside the frame are ignored (a hostile server cannot make us write out of bounds).
    pub fn copy_rect(&mut self, src_x: u32, src_y: u32, dst: Rect) {
        let op = DamageOp::Copy { src_x, src_y, dst };
        if !op.fits(self.width, self.height) {
            return;
        }
        let stride = self.stride();
        let row_bytes = dst.w as usize * BYTES_PER_PIXEL;
        let back = self.geometry.surface_offset(self.back_slot());
        let row_offset = |x: u32, y: u32| back + y as usize * stride + x as usize * BYTES_PER_PIXEL;
        // Row order matters when source and destination overlap vertically (memmove handles each row).
        let rows: Box<dyn Iterator<Item = u32>> =
            if dst.y > src_y { Box::new((0..dst.h).rev()) } else { Box::new(0..dst.h) };
        for row in rows {
            self.map.copy_within(row_offset(src_x, src_y + row), row_offset(dst.x, dst.y + row), row_bytes);
        }
        if self.overflow {
            return;
        }
        // A client replays ops in order but paints `Dirty` areas with final pixels; a copy whose source was
        // dirtied earlier in this frame would copy the wrong (final) pixels, so send its result as pixels.
        let source = Rect::new(src_x, src_y, dst.w, dst.h);
        if self.pending.iter().any(|p| matches!(p, DamageOp::Dirty(r) if r.intersects(&source))) {
            self.push(DamageOp::Dirty(dst));
        } else {
            self.push(op);
        }
    }

    fn push(&mut self, op: DamageOp) {
        if self.pending.len() >= self.geometry.damage_capacity as usize {
            self.mark_all();
        } else {
            self.pending.push(op);
        }
    }

    pub fn has_pending(&self) -> bool {
        self.overflow || !self.pending.is_empty()
    }

    /// Publishes the back surface if the supervisor has released the front and there is damage.
    /// Returns the new sequence number; the caller then sends `FromWorker::Published`.
    pub fn try_publish(&mut self) -> Option<u64> {
        if !self.has_pending() || self.width == 0 {
            return None;
        }
        let consumed = self.map.load_u64(OFF_CONSUMED, Ordering::Acquire);
        if !protocol::may_publish(self.published, consumed) {
            return None;
        }
        let seq = self.published + 1;
        let slot = slot_of(seq);
        let base = OFF_SLOTS + slot * SLOT_SIZE;
        let mut flags = 0;
        if self.overflow {
            flags |= FLAG_OVERFLOW;
        }
        if self.resized {
            flags |= FLAG_RESIZED;
        }
        let count = if self.overflow { 0 } else { self.pending.len() };
        let mut bytes = Vec::with_capacity(count * OP_SIZE);
        for op in self.pending.iter().take(count) {
            for word in op.to_words() {
                bytes.extend_from_slice(&word.to_le_bytes());
            }
        }
        self.map.copy_in(self.geometry.damage_offset(slot), &bytes);
        self.map.store_u32(base + SLOT_WIDTH, self.width);
        self.map.store_u32(base + SLOT_HEIGHT, self.height);
        self.map.store_u32(base + SLOT_DAMAGE_COUNT, count as u32);
        self.map.store_u32(base + SLOT_FLAGS, flags);
        self.map.store_u64(base + SLOT_SEQ, seq, Ordering::Relaxed);
        self.map.store_u64(OFF_PUBLISHED, seq, Ordering::Release);
        self.published = seq;

        // Bring the new back surface (the old front, released by the supervisor) up to date by replaying
        // this frame's damage from the new front.
        let front = self.geometry.surface_offset(slot);
        let back = self.geometry.surface_offset(self.back_slot());
        let stride = self.stride();
        let replay = |rect: Rect| {
            for y in rect.y..rect.y + rect.h {
                let offset = y as usize * stride + rect.x as usize * BYTES_PER_PIXEL;
                self.map.copy_within(front + offset, back + offset, rect.w as usize * BYTES_PER_PIXEL);
            }
        };
        if self.overflow {
            replay(Rect::new(0, 0, self.width, self.height));
        } else {
            for op in &self.pending {
                replay(op.target());
            }
        }
        self.pending.clear();
        self.overflow = false;
        self.resized = false;
        Some(seq)
    }

    /// Sequence number of the newest published frame.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// Writes any 32-bit value anywhere in the header page or damage lists, bypassing the protocol.
    ///
    /// For tests that play a hostile worker. It grants nothing a compromised worker lacks: a worker maps
    /// the whole region writable, so the supervisor must (and does) survive any value here.
    pub fn danger_store_u32(&self, offset: usize, value: u32) {
        self.map.store_u32(offset.min(self.geometry.surface_offset(0) - 4) & !3, value);
    }

    /// Like [`FrameWriter::danger_store_u32`] for 64-bit words (`published`, slot sequence numbers).
    pub fn danger_store_u64(&self, offset: usize, value: u64) {
        self.map.store_u64(offset.min(self.geometry.surface_offset(0) - 8) & !7, value, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(w: u32, h: u32) -> (FrameReader, FrameWriter) {
        let (reader, fd) = SharedRegion::create(Geometry::new(w, h, 8).unwrap()).unwrap();
        (reader, FrameWriter::attach(fd).unwrap())
    }

    fn fill(writer: &mut FrameWriter, rect: Rect, value: u8) {
        let stride = writer.stride();
        let back = writer.back_mut();
        for y in rect.y..rect.y + rect.h {
            let start = y as usize * stride + rect.x as usize * 4;
            back[start..start + rect.w as usize * 4].fill(value);
        }
        writer.mark_dirty(rect);
    }

    #[test]
    fn publish_consume_cycle_and_backpressure() {
        let (mut reader, mut writer) = pair(64, 32);
        writer.resize(64, 32).unwrap();
        assert!(reader.acquire().unwrap().is_none());
        assert_eq!(writer.try_publish(), Some(1));
        let frame = reader.acquire().unwrap().unwrap();
        assert!(frame.overflow && frame.resized && frame.width == 64);
        // Front not released: the worker keeps accumulating.
        fill(&mut writer, Rect::new(0, 0, 4, 4), 9);
        assert_eq!(writer.try_publish(), None);
        fill(&mut writer, Rect::new(8, 8, 4, 4), 7);
        reader.release(frame);
        assert_eq!(writer.try_publish(), Some(2));
        let frame = reader.acquire().unwrap().unwrap();
        assert_eq!(frame.ops, vec![DamageOp::Dirty(Rect::new(0, 0, 4, 4)), DamageOp::Dirty(Rect::new(8, 8, 4, 4))]);
        let mut px = Vec::new();
        reader.read_rect(&frame, Rect::new(8, 8, 1, 1), &mut px);
        assert_eq!(px, vec![7; 4]);
        reader.release(frame);
        // The back surface was brought up to date: a copy of the dirtied pixels reads the same values.
        writer.copy_rect(8, 8, Rect::new(20, 20, 4, 4));
        assert_eq!(writer.try_publish(), Some(3));
        let frame = reader.acquire().unwrap().unwrap();
        assert_eq!(frame.ops, vec![DamageOp::Copy { src_x: 8, src_y: 8, dst: Rect::new(20, 20, 4, 4) }]);
        reader.read_rect(&frame, Rect::new(20, 20, 4, 4), &mut px);
        assert!(px.iter().all(|&b| b == 7));
    }

    #[test]
    fn copy_from_freshly_dirtied_source_becomes_pixels() {
        let (mut reader, mut writer) = pair(32, 32);
        writer.resize(32, 32).unwrap();
        writer.try_publish().unwrap();
        let first = reader.acquire().unwrap().unwrap();
        reader.release(first);
        fill(&mut writer, Rect::new(0, 0, 8, 8), 1);
        writer.copy_rect(0, 0, Rect::new(16, 16, 8, 8));
        writer.try_publish().unwrap();
        let frame = reader.acquire().unwrap().unwrap();
        assert_eq!(frame.ops, vec![DamageOp::Dirty(Rect::new(0, 0, 8, 8)), DamageOp::Dirty(Rect::new(16, 16, 8, 8))]);
    }

    #[test]
    fn too_much_damage_overflows() {
        let (mut reader, mut writer) = pair(32, 32);
        writer.resize(32, 32).unwrap();
        writer.try_publish().unwrap();
        let first = reader.acquire().unwrap().unwrap();
        reader.release(first);
        for i in 0..9 {
            writer.mark_dirty(Rect::new(i, 0, 1, 1));
        }
        writer.try_publish().unwrap();
        let frame = reader.acquire().unwrap().unwrap();
        assert!(frame.overflow && frame.ops.is_empty());
    }

    #[test]
    fn out_of_frame_requests_are_ignored_by_the_writer() {
        let (_reader, mut writer) = pair(32, 32);
        writer.resize(16, 16).unwrap();
        writer.copy_rect(10, 10, Rect::new(0, 0, 10, 10));
        writer.copy_rect(u32::MAX, 0, Rect::new(0, 0, 2, 2));
        assert!(writer.resize(33, 1).is_err());
    }

    /// Rows follow the frame's width; a resize keeps the overlapping pixels and blanks the rest.
    #[test]
    fn resize_relays_out_the_surface() {
        let (mut reader, mut writer) = pair(64, 32);
        writer.resize(8, 4).unwrap();
        for (y, value) in (0..4).zip(1u8..) {
            fill(&mut writer, Rect::new(0, y, 8, 1), value);
        }
        assert_eq!(writer.try_publish(), Some(1));
        let frame = reader.acquire().unwrap().unwrap();
        let mut px = Vec::new();
        reader.read_rect(&frame, frame.full_rect(), &mut px);
        let rows: Vec<u8> = px.chunks_exact(8 * 4).map(|r| r[0]).collect();
        assert_eq!(rows, [1, 2, 3, 4]);
        reader.release(frame);
        // Wider and shorter, then narrower and taller: the overlap survives both moves.
        for (w, h, visible) in [(20, 3, 8), (5, 6, 5)] {
            writer.resize(w, h).unwrap();
            assert_eq!(writer.stride(), w as usize * 4);
            let seq = writer.try_publish().unwrap();
            let frame = reader.acquire().unwrap().unwrap();
            assert_eq!((frame.seq, frame.width, frame.height), (seq, w, h));
            reader.read_rect(&frame, frame.full_rect(), &mut px);
            for (y, row) in px.chunks_exact(w as usize * 4).enumerate() {
                let kept = if y < 3 { (y + 1) as u8 } else { 0 };
                let visible = if y < 3 { visible } else { 0 };
                assert!(row[..visible * 4].iter().all(|&b| b == kept), "row {y} of {w}x{h}: {row:?}");
                assert!(row[visible * 4..].iter().all(|&b| b == 0), "row {y} of {w}x{h}: {row:?}");
            }
            reader.release(frame);
        }
    }

    #[test]
    fn an_unsealed_memfd_is_refused() {
        let fd = memfd_create("x", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 8192).unwrap();
        assert!(matches!(FrameWriter::attach(fd), Err(ShmError::NotSealed { .. })));
    }

    #[test]
    fn sealed_region_cannot_be_resized_by_the_worker() {
        let (_reader, fd) = SharedRegion::create(Geometry::new(16, 16, 4).unwrap()).unwrap();
        assert!(nix::unistd::ftruncate(&fd, 4096).is_err());
        assert!(nix::unistd::ftruncate(&fd, 1 << 30).is_err());
    }
}
