//! Oracles for the hostile-worker fuzz targets (`fuzz/fuzz_targets/shm_reader.rs`, `control_decoder.rs`)
//! and for their deterministic replay in `cargo test`. Compiled only for tests and for the fuzz crate
//! (feature `fuzzing`, which nothing in the main workspace enables, so no shipping binary contains it).
//!
//! The worker side is played through the same writes a compromised worker can make: any value in the
//! header page and the damage lists (`FrameWriter::danger_store_*`). The supervisor side is the real
//! [`FrameReader`]: it must never panic, never read outside the region, and every frame it accepts must
//! satisfy the contract (size within its geometry, ops within the frame, count within capacity).

use crate::damage::DamageOp;
use crate::layout::*;
use crate::region::{FrameReader, FrameWriter, SharedRegion};
use crate::{FromWorker, Geometry, Rect};

/// A small geometry keeps each run cheap; the checks do not depend on the size.
const GEOMETRY: Geometry = Geometry { max_width: 64, max_height: 48, damage_capacity: 8 };

/// Header words a worker can forge, by index (slot fields of both slots, plus `published`).
fn field(index: u8) -> (usize, bool) {
    let slot = |s: usize, f: usize| OFF_SLOTS + s * SLOT_SIZE + f;
    match index % 11 {
        0 => (OFF_PUBLISHED, true),
        1 => (slot(0, SLOT_SEQ), true),
        2 => (slot(1, SLOT_SEQ), true),
        3 => (slot(0, SLOT_WIDTH), false),
        4 => (slot(1, SLOT_WIDTH), false),
        5 => (slot(0, SLOT_HEIGHT), false),
        6 => (slot(1, SLOT_HEIGHT), false),
        7 => (slot(0, SLOT_DAMAGE_COUNT), false),
        8 => (slot(1, SLOT_DAMAGE_COUNT), false),
        9 => (slot(0, SLOT_FLAGS), false),
        _ => (slot(1, SLOT_FLAGS), false),
    }
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let mut v = [0u8; 4];
        for b in &mut v {
            *b = self.byte()?;
        }
        Some(u32::from_le_bytes(v))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from(self.u32()?) | (u64::from(self.u32()?) << 32))
    }
}

/// Drives a real reader over a region whose header and damage lists the input writes.
///
/// Input: a sequence of steps. `0 idx value` forges a header word (u32 or u64 per field); `1 op word
/// value` forges one word of a damage op (either slot's list); `2 slot` writes a whole op (8 words);
/// anything else makes the supervisor act: acquire, check the frame, read every damaged pixel, release.
pub fn shm_reader(data: &[u8]) -> Outcome {
    let mut outcome = Outcome::default();
    let Ok((mut reader, fd)) = SharedRegion::create(GEOMETRY) else {
        return outcome; // out of memfds or memory: not the reader's problem
    };
    let Ok(writer) = FrameWriter::attach(fd) else {
        return outcome;
    };
    let mut input = Input(data);
    let ops_per_list = GEOMETRY.damage_capacity as usize;
    while let Some(step) = input.byte() {
        match step % 4 {
            0 => {
                let Some(index) = input.byte() else { break };
                let (offset, wide) = field(index);
                if wide {
                    let Some(value) = input.u64() else { break };
                    writer.danger_store_u64(offset, value);
                } else {
                    let Some(value) = input.u32() else { break };
                    writer.danger_store_u32(offset, value);
                }
            }
            1 => {
                let (Some(op), Some(word), Some(value)) = (input.byte(), input.byte(), input.u32()) else { break };
                let slot = usize::from(op) / ops_per_list % 2;
                let offset =
                    GEOMETRY.damage_offset(slot) + usize::from(op) % ops_per_list * OP_SIZE + usize::from(word % 8) * 4;
                writer.danger_store_u32(offset, value);
            }
            2 => {
                let Some(slot) = input.byte() else { break };
                let offset =
                    GEOMETRY.damage_offset(usize::from(slot % 2)) + usize::from(slot / 2) % ops_per_list * OP_SIZE;
                for word in 0..8 {
                    let Some(value) = input.u32() else { break };
                    writer.danger_store_u32(offset + word * 4, value);
                }
            }
            _ => consume(&mut reader, &mut outcome),
        }
    }
    consume(&mut reader, &mut outcome);
    outcome
}

/// What the supervisor saw: frames it accepted (and checked) and breaches it detected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub accepted: usize,
    pub breaches: usize,
}

fn consume(reader: &mut FrameReader, outcome: &mut Outcome) {
    match reader.acquire() {
        Ok(None) => {}
        Ok(Some(frame)) => {
            let g = reader.geometry();
            assert!((1..=g.max_width).contains(&frame.width) && (1..=g.max_height).contains(&frame.height));
            assert!(frame.ops.len() <= g.damage_capacity as usize);
            assert!(!frame.overflow || frame.ops.is_empty(), "an overflowed frame carries no ops");
            let mut pixels = Vec::new();
            for op in &frame.ops {
                assert!(
                    op.fits(frame.width, frame.height),
                    "accepted op {op:?} outside {}x{}",
                    frame.width,
                    frame.height
                );
                reader.read_rect(&frame, op.target(), &mut pixels);
                assert_eq!(pixels.len(), op.target().w as usize * op.target().h as usize * BYTES_PER_PIXEL);
                if let DamageOp::Copy { src_x, src_y, dst } = *op {
                    reader.read_rect(&frame, Rect::new(src_x, src_y, dst.w, dst.h), &mut pixels);
                }
            }
            reader.read_rect(&frame, frame.full_rect(), &mut pixels);
            reader.release(frame);
            outcome.accepted += 1;
        }
        Err(e) => {
            assert!(e.is_breach(), "a forged header is a breach, never another error: {e}");
            outcome.breaches += 1;
        }
    }
}

/// The supervisor's control-message decoder on arbitrary bytes: no panic, and whatever decodes survives
/// a round trip unchanged (so the supervisor acts on exactly what the worker sent).
pub fn control_decoder(data: &[u8]) {
    if let Ok(Some(message)) = crate::control::decode_from_worker(data) {
        let bytes = postcard::to_stdvec(&message).expect("a decoded message encodes");
        let again: FromWorker = postcard::from_bytes(&bytes).expect("and decodes again");
        assert_eq!(again, message);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Crashes found by the fuzzers, kept forever (`tests/data/fuzz_regression/<target>/`).
    fn regressions(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/fuzz_regression").join(target);
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        entries.filter_map(|e| std::fs::read(e.ok()?.path()).ok()).collect()
    }

    #[test]
    fn fuzz_regressions_replay() {
        for input in regressions("shm_reader") {
            shm_reader(&input);
        }
        for input in regressions("control_decoder") {
            control_decoder(&input);
        }
    }

    /// Encodes one forged frame `seq` (header fields of its slot, `published`, ops) in the oracle's input
    /// language, followed by an acquire.
    fn forge(seq: u64, width: u32, height: u32, count: u32, flags: u32, ops: &[[u32; 8]]) -> Vec<u8> {
        let slot = (seq % 2) as u8;
        let mut input = Vec::new();
        for (index, value) in [(3 + slot, width), (5 + slot, height), (7 + slot, count), (9 + slot, flags)] {
            input.extend([0, index]);
            input.extend(value.to_le_bytes());
        }
        for (i, op) in ops.iter().enumerate() {
            input.extend([2, slot + 2 * i as u8]);
            input.extend(op.iter().flat_map(|w| w.to_le_bytes()));
        }
        input.extend([0, 1 + slot]);
        input.extend(seq.to_le_bytes());
        input.extend([0, 0]);
        input.extend(seq.to_le_bytes());
        input.push(3);
        input
    }

    #[test]
    fn forged_frames_hand_made() {
        // Accepted: a valid frame with a dirty rect and an in-frame copy, then the next one.
        let mut input = forge(1, 10, 10, 2, 0, &[[1, 0, 0, 4, 4, 0, 0, 0], [2, 5, 5, 2, 2, 0, 0, 0]]);
        input.extend(forge(2, 64, 48, 0, FLAG_OVERFLOW, &[]));
        assert_eq!(shm_reader(&input), Outcome { accepted: 2, breaches: 0 });
        // Breaches (asserted inside the oracle to be breaches, not panics or other errors).
        for bad in [
            forge(1, 65, 10, 0, 0, &[]),
            forge(1, 10, 0, 0, 0, &[]),
            forge(1, 10, 10, 9, 0, &[]),
            forge(1, 10, 10, 1, 0, &[[1, 9, 9, 2, 2, 0, 0, 0]]),
            forge(1, 10, 10, 1, 0, &[[2, 0, 0, 4, 4, 8, 8, 0]]),
            forge(1, 10, 10, 1, 0, &[[77, 0, 0, 1, 1, 0, 0, 0]]),
            forge(1, 10, 10, 1, 0, &[[1, u32::MAX, 0, 2, 1, 0, 0, 0]]),
            forge(3, 10, 10, 0, 0, &[]),
            forge(u64::MAX, 10, 10, 0, 0, &[]),
        ] {
            let outcome = shm_reader(&bad);
            assert_eq!(outcome.accepted, 0, "{bad:?}");
            assert!(outcome.breaches >= 1, "{bad:?}");
        }
    }

    fn op() -> impl Strategy<Value = [u32; 8]> {
        let small = || prop_oneof![0u32..80, Just(u32::MAX), any::<u32>()];
        (0u32..4, small(), small(), small(), small(), small(), small(), any::<u32>())
            .prop_map(|(k, x, y, w, h, sx, sy, r)| [k, x, y, w, h, sx, sy, r])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn any_header_and_damage_is_survived(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            shm_reader(&data);
        }

        #[test]
        fn plausible_forged_frames_are_accepted_only_when_valid(
            frames in proptest::collection::vec(
                (0u64..4, 0u32..70, 0u32..50, 0u32..10, 0u32..4, proptest::collection::vec(op(), 0..9)),
                1..6,
            ),
        ) {
            let mut input = Vec::new();
            for (seq, w, h, count, flags, ops) in frames {
                input.extend(forge(seq, w, h, count, flags, &ops));
            }
            shm_reader(&input);
        }

        #[test]
        fn any_control_message_is_survived(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            control_decoder(&data);
        }
    }
}
