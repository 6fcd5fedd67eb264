//! Clipboard text conversion between the Guacamole side (UTF-8) and the RFB side, whose cut text is
//! ISO 8859-1 by RFC 6143 §7.5.6 but which some servers treat as another encoding (guacd's
//! `clipboard-encoding`).

/// The encoding of RFB cut text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClipboardEncoding {
    #[default]
    Latin1,
    Utf8,
    /// UTF-16 little endian, no byte-order mark (guacd's "UTF-16").
    Utf16,
    Cp1252,
}

/// CP1252's characters for bytes 0x80–0x9F; unassigned bytes map to the C1 control of the same value.
const CP1252_HIGH: [u16; 32] = [
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D,
    0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A,
    0x0153, 0x009D, 0x017E, 0x0178,
];

impl ClipboardEncoding {
    /// guacd's names: `ISO8859-1` (default), `UTF-8`, `UTF-16`, `CP1252`.
    pub fn from_name(name: &str) -> Option<ClipboardEncoding> {
        match name.to_ascii_uppercase().as_str() {
            "ISO8859-1" => Some(ClipboardEncoding::Latin1),
            "UTF-8" => Some(ClipboardEncoding::Utf8),
            "UTF-16" => Some(ClipboardEncoding::Utf16),
            "CP1252" => Some(ClipboardEncoding::Cp1252),
            _ => None,
        }
    }

    /// Server bytes → text.
    pub fn decode(self, bytes: &[u8]) -> String {
        match self {
            ClipboardEncoding::Latin1 => bytes.iter().map(|&b| b as char).collect(),
            ClipboardEncoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
            ClipboardEncoding::Utf16 => {
                let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                String::from_utf16_lossy(&units)
            }
            ClipboardEncoding::Cp1252 => bytes
                .iter()
                .map(|&b| match b {
                    0x80..=0x9f => char::from_u32(CP1252_HIGH[(b - 0x80) as usize] as u32).unwrap_or('?'),
                    _ => b as char,
                })
                .collect(),
        }
    }

    /// Text → server bytes. Characters the encoding cannot hold become `?`.
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            ClipboardEncoding::Latin1 => text.chars().map(|c| u8::try_from(c).unwrap_or(b'?')).collect(),
            ClipboardEncoding::Utf8 => text.as_bytes().to_vec(),
            ClipboardEncoding::Utf16 => text.encode_utf16().flat_map(u16::to_le_bytes).collect(),
            ClipboardEncoding::Cp1252 => text
                .chars()
                .map(|c| match c as u32 {
                    v @ (0..=0x7f | 0xa0..=0xff) => v as u8,
                    v => CP1252_HIGH.iter().position(|&h| h as u32 == v).map_or(b'?', |i| 0x80 + i as u8),
                })
                .collect(),
        }
    }
}

/// The longest prefix of `text` that fits in `limit` bytes without splitting a character.
pub fn truncate_utf8(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let text = "café €5 – ok";
        assert_eq!(ClipboardEncoding::Utf8.decode(&ClipboardEncoding::Utf8.encode(text)), text);
        assert_eq!(ClipboardEncoding::Utf16.decode(&ClipboardEncoding::Utf16.encode(text)), text);
        assert_eq!(ClipboardEncoding::Cp1252.decode(&ClipboardEncoding::Cp1252.encode(text)), text);
        assert_eq!(ClipboardEncoding::Cp1252.encode("€"), [0x80]);
        assert_eq!(ClipboardEncoding::Latin1.encode(text), b"caf\xe9 ?5 ? ok");
        assert_eq!(ClipboardEncoding::Latin1.decode(b"caf\xe9"), "café");
    }

    #[test]
    fn names_and_truncation() {
        assert_eq!(ClipboardEncoding::from_name("utf-8"), Some(ClipboardEncoding::Utf8));
        assert_eq!(ClipboardEncoding::from_name("ISO8859-1"), Some(ClipboardEncoding::Latin1));
        assert_eq!(ClipboardEncoding::from_name("MacRoman"), None);
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("aé", 3), "aé");
    }
}
