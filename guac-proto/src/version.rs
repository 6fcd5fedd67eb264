//! Protocol versions exchanged in `args` and `connect` (section 2 of the wire reference).

use std::fmt;

/// A Guacamole protocol version. Ordered, so gates read `version >= ProtocolVersion::V1_3_0`.
///
/// guacd 1.6 advertises [`ProtocolVersion::LATEST`]. Send `required` only to users at 1.3.0 or
/// later and `msg` only to users at 1.5.0 or later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// `VERSION_1_0_0`, also any client that sends no or an unknown older version.
    V1_0_0,
    /// `VERSION_1_1_0`: `connect` starts with the version.
    V1_1_0,
    /// `VERSION_1_3_0`: `required` instruction.
    V1_3_0,
    /// `VERSION_1_5_0`: `msg` instruction.
    V1_5_0,
}

/// Prefix of every version string on the wire.
pub(crate) const VERSION_PREFIX: &str = "VERSION_";

impl ProtocolVersion {
    /// The newest version, which the server advertises in `args`.
    pub const LATEST: ProtocolVersion = ProtocolVersion::V1_5_0;

    /// Parses a version string. The empty string, anything that is not `VERSION_<major>_<minor>_<patch>`,
    /// and versions older than 1.1.0 give 1.0.0. A version between known ones, or newer than
    /// [`ProtocolVersion::LATEST`], gives the newest known version not above it, so feature gates
    /// stay correct for future clients.
    pub fn parse(s: &str) -> ProtocolVersion {
        let Some(triple) = parse_triple(s) else {
            return ProtocolVersion::V1_0_0;
        };
        [ProtocolVersion::V1_5_0, ProtocolVersion::V1_3_0, ProtocolVersion::V1_1_0]
            .into_iter()
            .find(|v| v.triple() <= triple)
            .unwrap_or(ProtocolVersion::V1_0_0)
    }

    /// The wire form, e.g. `VERSION_1_5_0`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::V1_0_0 => "VERSION_1_0_0",
            ProtocolVersion::V1_1_0 => "VERSION_1_1_0",
            ProtocolVersion::V1_3_0 => "VERSION_1_3_0",
            ProtocolVersion::V1_5_0 => "VERSION_1_5_0",
        }
    }

    fn triple(self) -> (u32, u32, u32) {
        match self {
            ProtocolVersion::V1_0_0 => (1, 0, 0),
            ProtocolVersion::V1_1_0 => (1, 1, 0),
            ProtocolVersion::V1_3_0 => (1, 3, 0),
            ProtocolVersion::V1_5_0 => (1, 5, 0),
        }
    }
}

/// `VERSION_a_b_c` as numbers.
fn parse_triple(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.strip_prefix(VERSION_PREFIX)?.split('_');
    let mut number = || -> Option<u32> {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let triple = (number()?, number()?, number()?);
    parts.next().is_none().then_some(triple)
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ProtocolVersion as V;

    #[test]
    fn parse_known() {
        for v in [V::V1_0_0, V::V1_1_0, V::V1_3_0, V::V1_5_0] {
            assert_eq!(V::parse(v.as_str()), v);
        }
        assert_eq!(V::LATEST.as_str(), "VERSION_1_5_0");
    }

    #[test]
    fn parse_unknown() {
        assert_eq!(V::parse(""), V::V1_0_0);
        assert_eq!(V::parse("VERSION_0_9_14"), V::V1_0_0);
        assert_eq!(V::parse("garbage"), V::V1_0_0);
        assert_eq!(V::parse("VERSION_1_5"), V::V1_0_0);
        assert_eq!(V::parse("VERSION_1_5_0_1"), V::V1_0_0);
        assert_eq!(V::parse("VERSION_1_+5_0"), V::V1_0_0);
        assert_eq!(V::parse("VERSION_1_2_0"), V::V1_1_0);
        assert_eq!(V::parse("VERSION_1_4_7"), V::V1_3_0);
        assert_eq!(V::parse("VERSION_1_6_0"), V::V1_5_0);
        assert_eq!(V::parse("VERSION_2_0_0"), V::V1_5_0);
    }

    #[test]
    fn ordering() {
        assert!(V::V1_0_0 < V::V1_1_0);
        assert!(V::V1_3_0 < V::V1_5_0);
        assert!(V::LATEST >= V::V1_5_0);
    }
}
