//! Damage operations: what changed between two published frames, in the order it happened.

use serde::{Deserialize, Serialize};

/// A rectangle in surface pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    pub const fn new(x: u32, y: u32, w: u32, h: u32) -> Rect {
        Rect { x, y, w, h }
    }

    pub fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }

    /// True when the rectangle lies inside a `width` × `height` frame (overflow-safe).
    pub fn fits(&self, width: u32, height: u32) -> bool {
        let right = self.x.checked_add(self.w);
        let bottom = self.y.checked_add(self.h);
        matches!((right, bottom), (Some(r), Some(b)) if r <= width && b <= height)
    }

    pub fn intersects(&self, other: &Rect) -> bool {
        !self.is_empty()
            && !other.is_empty()
            && u64::from(self.x) < u64::from(other.x) + u64::from(other.w)
            && u64::from(other.x) < u64::from(self.x) + u64::from(self.w)
            && u64::from(self.y) < u64::from(other.y) + u64::from(other.h)
            && u64::from(other.y) < u64::from(self.y) + u64::from(self.h)
    }

    /// Smallest rectangle holding both.
    pub fn union(&self, other: &Rect) -> Rect {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        let right = (self.x + self.w).max(other.x + other.w);
        let bottom = (self.y + self.h).max(other.y + other.h);
        Rect::new(x, y, right - x, bottom - y)
    }

    /// The part of `self` inside a `width` × `height` frame.
    pub fn clip(&self, width: u32, height: u32) -> Rect {
        let x = self.x.min(width);
        let y = self.y.min(height);
        let w = self.w.min(width - x);
        let h = self.h.min(height - y);
        Rect::new(x, y, w, h)
    }

    pub fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }
}

/// One change to a surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DamageOp {
    /// These pixels changed; read them from the surface.
    Dirty(Rect),
    /// `dst` (same size as the source) now holds what `(src_x, src_y)` held just before this op
    /// (VNC CopyRect, RDP ScrBlt, a terminal scroll).
    Copy { src_x: u32, src_y: u32, dst: Rect },
}

const KIND_DIRTY: u32 = 1;
const KIND_COPY: u32 = 2;

impl DamageOp {
    /// The rectangle whose pixels this op determines.
    pub fn target(&self) -> Rect {
        match *self {
            DamageOp::Dirty(r) => r,
            DamageOp::Copy { dst, .. } => dst,
        }
    }

    /// The source rectangle of a copy.
    pub fn source(&self) -> Option<Rect> {
        match *self {
            DamageOp::Dirty(_) => None,
            DamageOp::Copy { src_x, src_y, dst } => Some(Rect::new(src_x, src_y, dst.w, dst.h)),
        }
    }

    /// True when every rectangle of the op lies inside the frame and is not empty.
    pub fn fits(&self, width: u32, height: u32) -> bool {
        let target = self.target();
        !target.is_empty() && target.fits(width, height) && self.source().is_none_or(|s| s.fits(width, height))
    }

    /// The op as the eight little-endian words stored in shared memory.
    pub fn to_words(&self) -> [u32; 8] {
        match *self {
            DamageOp::Dirty(r) => [KIND_DIRTY, r.x, r.y, r.w, r.h, 0, 0, 0],
            DamageOp::Copy { src_x, src_y, dst } => [KIND_COPY, dst.x, dst.y, dst.w, dst.h, src_x, src_y, 0],
        }
    }

    /// Decodes eight words; `None` for an unknown kind. Bounds are checked by the caller.
    pub fn from_words(w: [u32; 8]) -> Option<DamageOp> {
        let rect = Rect::new(w[1], w[2], w[3], w[4]);
        match w[0] {
            KIND_DIRTY => Some(DamageOp::Dirty(rect)),
            KIND_COPY => Some(DamageOp::Copy { src_x: w[5], src_y: w[6], dst: rect }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_rect() -> impl Strategy<Value = Rect> {
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(x, y, w, h)| Rect::new(x, y, w, h))
    }

    fn arb_op() -> impl Strategy<Value = DamageOp> {
        prop_oneof![
            arb_rect().prop_map(DamageOp::Dirty),
            (any::<u32>(), any::<u32>(), arb_rect()).prop_map(|(src_x, src_y, dst)| DamageOp::Copy {
                src_x,
                src_y,
                dst
            }),
        ]
    }

    proptest! {
        #[test]
        fn words_round_trip(op in arb_op()) {
            prop_assert_eq!(DamageOp::from_words(op.to_words()), Some(op));
        }

        #[test]
        fn unknown_kinds_are_rejected(kind in 3u32.., rest in any::<[u32; 7]>()) {
            let mut w = [0u32; 8];
            w[0] = kind;
            w[1..].copy_from_slice(&rest);
            prop_assert_eq!(DamageOp::from_words(w), None);
            prop_assert_eq!(DamageOp::from_words({ let mut z = w; z[0] = 0; z }), None);
        }

        #[test]
        fn fits_never_overflows(op in arb_op(), width in 0u32..10_000, height in 0u32..10_000) {
            if op.fits(width, height) {
                let t = op.target();
                prop_assert!(u64::from(t.x) + u64::from(t.w) <= u64::from(width));
                prop_assert!(u64::from(t.y) + u64::from(t.h) <= u64::from(height));
                if let Some(s) = op.source() {
                    prop_assert!(u64::from(s.x) + u64::from(s.w) <= u64::from(width));
                    prop_assert!(u64::from(s.y) + u64::from(s.h) <= u64::from(height));
                }
            }
        }

        #[test]
        fn union_contains_both(a in (0u32..1000, 0u32..1000, 1u32..1000, 1u32..1000), b in (0u32..1000, 0u32..1000, 1u32..1000, 1u32..1000)) {
            let a = Rect::new(a.0, a.1, a.2, a.3);
            let b = Rect::new(b.0, b.1, b.2, b.3);
            let u = a.union(&b);
            for r in [a, b] {
                prop_assert!(u.x <= r.x && u.y <= r.y && u.x + u.w >= r.x + r.w && u.y + u.h >= r.y + r.h);
            }
        }
    }

    #[test]
    fn intersection() {
        let a = Rect::new(0, 0, 10, 10);
        assert!(a.intersects(&Rect::new(9, 9, 5, 5)));
        assert!(!a.intersects(&Rect::new(10, 0, 5, 5)));
        assert!(!a.intersects(&Rect::new(0, 0, 0, 5)));
    }
}
