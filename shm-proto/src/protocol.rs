//! The sequence protocol as pure decisions, shared by the real region code and the loom model test.
//!
//! Two counters live in the header: `published` (written only by the worker) and `consumed` (written only
//! by the supervisor). Frame `n` lives in slot `n % 2`. The worker draws into slot `(published + 1) % 2`.

/// Worker side: may frame `published + 1` be published now? Only when the supervisor has released the
/// current front; otherwise the worker keeps drawing into the back surface and accumulates damage.
pub fn may_publish(published: u64, consumed: u64) -> bool {
    consumed == published
}

/// What the supervisor makes of the `published` value it just loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// Nothing new since the frame it released last.
    Nothing,
    /// Frame `seq` is ready to be read.
    Next(u64),
    /// The counter moved in a way an honest worker never does (backwards, or more than one step while the
    /// supervisor held the front): a protocol breach.
    Breach { consumed: u64, published: u64 },
}

/// Supervisor side: classify a freshly loaded `published` against the last frame it released.
pub fn observe(consumed: u64, published: u64) -> Observation {
    if published == consumed {
        Observation::Nothing
    } else if Some(published) == consumed.checked_add(1) {
        Observation::Next(published)
    } else {
        Observation::Breach { consumed, published }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations() {
        assert_eq!(observe(4, 4), Observation::Nothing);
        assert_eq!(observe(4, 5), Observation::Next(5));
        assert!(matches!(observe(4, 6), Observation::Breach { .. }));
        assert!(matches!(observe(4, 3), Observation::Breach { .. }));
        assert!(matches!(observe(u64::MAX, 0), Observation::Breach { .. }));
        assert!(may_publish(3, 3));
        assert!(!may_publish(4, 3));
    }
}
