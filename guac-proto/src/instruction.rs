//! The parsed form of one instruction: the wire bytes plus the byte range of every element.

use std::fmt;

use bytes::{Bytes, BytesMut};

/// Byte range of one element's value inside [`Instruction::as_bytes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

/// How many element spans are stored without a heap allocation. Covers every instruction a client
/// sends at runtime (`mouse` has 4 elements, `touch` 8).
const INLINE_SPANS: usize = 8;

/// Element spans: inline for short instructions, boxed otherwise.
#[derive(Clone)]
enum Spans {
    Inline { len: u8, spans: [Span; INLINE_SPANS] },
    Heap(Box<[Span]>),
}

impl Spans {
    fn from_slice(spans: &[Span]) -> Spans {
        if spans.len() <= INLINE_SPANS {
            let mut inline = [Span::default(); INLINE_SPANS];
            inline[..spans.len()].copy_from_slice(spans);
            Spans::Inline {
                // INVARIANT: spans.len() <= INLINE_SPANS, which fits a u8.
                len: spans.len() as u8,
                spans: inline,
            }
        } else {
            Spans::Heap(spans.into())
        }
    }

    fn as_slice(&self) -> &[Span] {
        match self {
            Spans::Inline { len, spans } => &spans[..usize::from(*len)],
            Spans::Heap(spans) => spans,
        }
    }
}

/// One parsed instruction (Guacamole protocol reference, "Instruction format").
///
/// Zero-copy: it holds the instruction's wire bytes (including the final `;`) as a [`Bytes`] and the
/// byte range of each element. Every element was checked to be UTF-8 when the instruction was parsed,
/// so the accessors return `&str` without further checks.
///
/// Two instructions are equal when their wire bytes are equal.
#[derive(Clone)]
pub struct Instruction {
    // INVARIANT: `bytes` is valid UTF-8 at every span, every span lies inside `bytes`, and there is
    // at least one span (the opcode).
    bytes: Bytes,
    spans: Spans,
}

impl Instruction {
    /// Builds an instruction by encoding `opcode` and `args` (lengths in code points).
    ///
    /// No limit is enforced here: a caller that builds an instruction longer than
    /// [`MAX_INSTRUCTION_BYTES`](crate::MAX_INSTRUCTION_BYTES) gets one that guacd would refuse.
    ///
    /// # Panics
    ///
    /// If the encoded instruction is larger than 4 GiB.
    pub fn new(opcode: &str, args: &[&str]) -> Instruction {
        let mut buf = BytesMut::with_capacity(crate::encoder::encoded_len(opcode, args));
        let mut spans = Vec::with_capacity(args.len() + 1);
        for (i, value) in std::iter::once(&opcode).chain(args).enumerate() {
            if i > 0 {
                buf.extend_from_slice(b",");
            }
            crate::encoder::put_len_prefix(&mut buf, value.chars().count());
            let start = offset(buf.len());
            buf.extend_from_slice(value.as_bytes());
            spans.push(Span { start, end: offset(buf.len()) });
        }
        buf.extend_from_slice(b";");
        Instruction::from_parts(buf.freeze(), &spans)
    }

    /// Builds an instruction from bytes whose spans the decoder has validated.
    pub(crate) fn from_parts(bytes: Bytes, spans: &[Span]) -> Instruction {
        debug_assert!(!spans.is_empty());
        debug_assert!(spans.iter().all(|s| std::str::from_utf8(&bytes[s.start as usize..s.end as usize]).is_ok()));
        Instruction { bytes, spans: Spans::from_slice(spans) }
    }

    fn element(&self, span: Span) -> &str {
        let raw = &self.bytes[span.start as usize..span.end as usize];
        // INVARIANT: every span was validated as UTF-8 when the instruction was built, so this
        // never falls back to the empty string.
        std::str::from_utf8(raw).unwrap_or_default()
    }

    /// The opcode (first element). The WebSocket tunnel's internal opcode is the empty string.
    pub fn opcode(&self) -> &str {
        self.spans.as_slice().first().map_or("", |span| self.element(*span))
    }

    /// Number of arguments (elements after the opcode).
    pub fn args_len(&self) -> usize {
        self.spans.as_slice().len().saturating_sub(1)
    }

    /// Argument `i` (0 is the first element after the opcode).
    pub fn arg(&self, i: usize) -> Option<&str> {
        let span = *self.spans.as_slice().get(i.checked_add(1)?)?;
        Some(self.element(span))
    }

    /// The arguments in order.
    pub fn args(&self) -> Args<'_> {
        Args { instruction: self, spans: self.spans.as_slice().get(1..).unwrap_or_default().iter() }
    }

    /// The raw wire bytes, including the terminating `;`.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes the instruction, returning its wire bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// Offset of a byte inside an instruction being built.
fn offset(n: usize) -> u32 {
    u32::try_from(n).expect("instruction larger than 4 GiB")
}

/// Iterator over an instruction's arguments, from [`Instruction::args`].
#[derive(Clone)]
pub struct Args<'a> {
    instruction: &'a Instruction,
    spans: std::slice::Iter<'a, Span>,
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let span = *self.spans.next()?;
        Some(self.instruction.element(span))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.spans.size_hint()
    }
}

impl DoubleEndedIterator for Args<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let span = *self.spans.next_back()?;
        Some(self.instruction.element(span))
    }
}

impl ExactSizeIterator for Args<'_> {}

impl std::iter::FusedIterator for Args<'_> {}

impl PartialEq for Instruction {
    fn eq(&self, other: &Instruction) -> bool {
        // The spans are a function of the bytes.
        self.bytes == other.bytes
    }
}

impl Eq for Instruction {}

impl std::hash::Hash for Instruction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

/// Arguments longer than this many characters are truncated in `Debug` output.
const DEBUG_ARG_CHARS: usize = 32;

/// Opcodes whose arguments may carry credentials; `Debug` prints only their count.
const REDACTED_OPCODES: &[&str] = &["connect"];

impl fmt::Debug for Instruction {
    /// Prints `opcode(arg, arg, ...)`, e.g. `key(65307, 1)`. Arguments longer than 32 characters are
    /// truncated, and the values of `connect` (which carry passwords) are redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.opcode())?;
        f.write_str("(")?;
        if REDACTED_OPCODES.contains(&self.opcode()) {
            write!(f, "<{} values redacted>", self.args_len())?;
        } else {
            for (i, arg) in self.args().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                match arg.char_indices().nth(DEBUG_ARG_CHARS) {
                    Some((cut, _)) => {
                        let total = arg.chars().count();
                        write!(f, "{}…<{total} chars>", &arg[..cut])?;
                    }
                    None => f.write_str(arg)?,
                }
            }
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_encodes_and_indexes() {
        let i = Instruction::new("key", &["65307", "1"]);
        assert_eq!(i.as_bytes().as_ref(), b"3.key,5.65307,1.1;");
        assert_eq!(i.opcode(), "key");
        assert_eq!(i.args_len(), 2);
        assert_eq!(i.arg(0), Some("65307"));
        assert_eq!(i.arg(1), Some("1"));
        assert_eq!(i.arg(2), None);
        assert_eq!(i.arg(usize::MAX), None);
        assert_eq!(i.args().collect::<Vec<_>>(), ["65307", "1"]);
        assert_eq!(i.args().len(), 2);
        assert_eq!(i.args().rev().collect::<Vec<_>>(), ["1", "65307"]);
    }

    #[test]
    fn new_counts_code_points() {
        let i = Instruction::new("name", &["José", "😀", ""]);
        assert_eq!(i.as_bytes().as_ref(), "4.name,4.José,1.😀,0.;".as_bytes());
        assert_eq!(i.arg(0), Some("José"));
        assert_eq!(i.arg(1), Some("😀"));
        assert_eq!(i.arg(2), Some(""));
    }

    #[test]
    fn many_args_use_heap_spans() {
        let args: Vec<String> = (0..20).map(|n| n.to_string()).collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let i = Instruction::new("args", &refs);
        assert_eq!(i.args_len(), 20);
        assert_eq!(i.args().collect::<Vec<_>>(), refs);
        assert_eq!(i.arg(19), Some("19"));
    }

    #[test]
    fn debug_format() {
        let i = Instruction::new("key", &["65307", "1"]);
        assert_eq!(format!("{i:?}"), "key(65307, 1)");
        assert_eq!(format!("{:?}", Instruction::new("nop", &[])), "nop()");
        let long = "a".repeat(100);
        let i = Instruction::new("blob", &["1", &long]);
        assert_eq!(format!("{i:?}"), format!("blob(1, {}…<100 chars>)", "a".repeat(32)));
        let i = Instruction::new("connect", &["VERSION_1_5_0", "host", "secret"]);
        assert_eq!(format!("{i:?}"), "connect(<3 values redacted>)");
    }

    #[test]
    fn equality_follows_bytes() {
        assert_eq!(Instruction::new("a", &["b"]), Instruction::new("a", &["b"]));
        assert_ne!(Instruction::new("a", &["b"]), Instruction::new("a", &["c"]));
    }
}
