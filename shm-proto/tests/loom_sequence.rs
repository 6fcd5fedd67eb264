#![allow(unsafe_code)] // loom cells hand out raw pointers; the model itself is what is being checked
//! Model test of the sequence protocol with loom: every interleaving of one producer (worker) and one
//! consumer (supervisor) is explored; loom's `UnsafeCell` reports any access to a surface by both sides
//! at once where one of them writes, and the consumer checks it never sees a torn frame.
//!
//! The model uses the same decision functions as the real code (`shm_proto::protocol`) and the same
//! orderings: `published` stored with Release and loaded with Acquire, `consumed` likewise.

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;
use shm_proto::protocol::{may_publish, observe, Observation};

/// Two "surfaces" of two pixels and two slot descriptors (seq, value drawn).
struct Region {
    published: AtomicU64,
    consumed: AtomicU64,
    surfaces: [UnsafeCell<[u64; 2]>; 2],
    slots: [UnsafeCell<(u64, u64)>; 2],
}

fn slot_of(seq: u64) -> usize {
    (seq % 2) as usize
}

const FRAMES: u64 = 3;

#[test]
fn no_torn_frames_and_no_data_races() {
    loom::model(|| {
        let region = Arc::new(Region {
            published: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            surfaces: [UnsafeCell::new([0, 0]), UnsafeCell::new([0, 0])],
            slots: [UnsafeCell::new((0, 0)), UnsafeCell::new((0, 0))],
        });

        let producer = {
            let region = region.clone();
            thread::spawn(move || {
                let mut published = 0u64;
                let mut pending = false;
                let mut drawn = 0;
                let mut draw = 1;
                while published < FRAMES || pending {
                    if draw <= FRAMES + 1 && !pending {
                        // Draw a frame into the back surface: both pixels get the same value.
                        let back = slot_of(published + 1);
                        region.surfaces[back].with_mut(|s| unsafe { *s = [draw, draw] });
                        drawn = draw;
                        draw += 1;
                        pending = true;
                    }
                    let consumed = region.consumed.load(Ordering::Acquire);
                    if pending && may_publish(published, consumed) {
                        let seq = published + 1;
                        let slot = slot_of(seq);
                        region.slots[slot].with_mut(|d| unsafe { *d = (seq, drawn) });
                        region.published.store(seq, Ordering::Release);
                        published = seq;
                        // Replay into the new back (the released old front).
                        let front = region.surfaces[slot].with(|s| unsafe { *s });
                        region.surfaces[slot_of(seq + 1)].with_mut(|s| unsafe { *s = front });
                        pending = false;
                    } else {
                        thread::yield_now();
                    }
                    if published >= FRAMES && !pending {
                        break;
                    }
                }
                published
            })
        };

        let mut consumed = 0u64;
        let mut last_value = 0;
        while consumed < FRAMES {
            let published = region.published.load(Ordering::Acquire);
            match observe(consumed, published) {
                Observation::Nothing => thread::yield_now(),
                Observation::Breach { .. } => panic!("honest producer caused a breach"),
                Observation::Next(seq) => {
                    let slot = slot_of(seq);
                    let (slot_seq, value) = region.slots[slot].with(|d| unsafe { *d });
                    assert_eq!(slot_seq, seq, "descriptor belongs to another frame");
                    let pixels = region.surfaces[slot].with(|s| unsafe { *s });
                    assert_eq!(pixels, [value, value], "torn frame");
                    assert!(value > last_value, "frames go forward");
                    last_value = value;
                    consumed = seq;
                    region.consumed.store(seq, Ordering::Release);
                }
            }
        }
        assert_eq!(producer.join().unwrap(), FRAMES);
    });
}
