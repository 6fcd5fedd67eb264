//! Incremental, zero-copy instruction decoder.

use bytes::BytesMut;

use crate::instruction::{Instruction, Span};
use crate::{MAX_ELEMENTS, MAX_INSTRUCTION_BYTES};

/// Digits allowed in one length prefix (guacd's limit).
pub const MAX_LENGTH_DIGITS: usize = 5;

/// Why a stream of instructions is malformed. Every error is final for its stream.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The instruction does not fit in `limit` bytes (including the terminating `;`).
    #[error("instruction longer than {limit} bytes")]
    InstructionTooLong { limit: usize },
    /// A length prefix has more than [`MAX_LENGTH_DIGITS`] digits.
    #[error("length prefix has more than {MAX_LENGTH_DIGITS} digits")]
    LengthTooManyDigits,
    /// The instruction has more than `limit` elements (opcode included).
    #[error("instruction has more than {limit} elements")]
    TooManyElements { limit: usize },
    /// A byte other than a decimal digit in a length prefix, or a `.` with no digit before it.
    #[error("invalid byte {byte:#04x} in length prefix")]
    InvalidLength { byte: u8 },
    /// An element's value is not UTF-8.
    #[error("element is not valid UTF-8")]
    InvalidUtf8,
    /// The byte after an element's value is neither `,` nor `;`.
    #[error("expected ',' or ';' after element, got {byte:#04x}")]
    BadTerminator { byte: u8 },
}

/// Where the decoder is inside the current instruction.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a length prefix: its value so far and how many digits it has.
    Length { value: usize, digits: usize },
    /// Reading a value that starts at byte `start`; `remaining` code points have not started yet.
    /// When `remaining` is 0, the next byte that is not a UTF-8 continuation byte is the terminator.
    Value { start: usize, remaining: usize },
}

const LENGTH_START: State = State::Length { value: 0, digits: 0 };

/// Incremental decoder for a stream of instructions (Guacamole protocol reference, "Instruction
/// format"; limits from guacd, see [`MAX_INSTRUCTION_BYTES`] and [`MAX_ELEMENTS`]).
///
/// Input may be split anywhere, including inside a length prefix or a UTF-8 sequence, and one read
/// may hold many instructions. The decoder remembers where it stopped, so an incomplete instruction
/// is not scanned again from its start when more bytes arrive.
///
/// ```
/// let mut decoder = guac_proto::Decoder::new();
/// decoder.feed(b"4.name,4.Jos");
/// assert_eq!(decoder.decode(), Ok(None));
/// decoder.feed("é;3.nop;".as_bytes());
/// let name = decoder.decode().unwrap().unwrap();
/// assert_eq!((name.opcode(), name.arg(0)), ("name", Some("José")));
/// assert_eq!(decoder.decode().unwrap().unwrap().opcode(), "nop");
/// assert_eq!(decoder.decode(), Ok(None));
/// ```
pub struct Decoder {
    // INVARIANT: `buf` starts at the first byte of the current (incomplete) instruction; bytes
    // before `pos` have been checked and their elements recorded in `spans` or `state`.
    buf: BytesMut,
    pos: usize,
    state: State,
    spans: Vec<Span>,
    error: Option<DecodeError>,
}

impl std::fmt::Debug for Decoder {
    /// Shows positions only: buffered bytes may hold credentials (`connect` values).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &self.buf.len())
            .field("pos", &self.pos)
            .field("state", &self.state)
            .field("elements", &self.spans.len())
            .field("error", &self.error)
            .finish()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Decoder { buf: BytesMut::new(), pos: 0, state: LENGTH_START, spans: Vec::new(), error: None }
    }

    /// The input buffer, so a driver can read straight into it (`read_buf`). Only append to it
    /// (reserving capacity first is fine): removing or changing bytes corrupts the decoder's state.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends input bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as instructions.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// The next complete instruction, or `Ok(None)` when more input is needed.
    ///
    /// An error is final: the stream is malformed and every later call returns the same error.
    pub fn decode(&mut self) -> Result<Option<Instruction>, DecodeError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        match self.scan() {
            Ok(Some(len)) => {
                let bytes = self.buf.split_to(len).freeze();
                let instruction = Instruction::from_parts(bytes, &self.spans);
                self.spans.clear();
                self.pos = 0;
                self.state = LENGTH_START;
                Ok(Some(instruction))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Advances through the buffer. Returns the length of the instruction once it is complete.
    fn scan(&mut self) -> Result<Option<usize>, DecodeError> {
        // Bytes past the limit can never belong to a valid current instruction.
        let limit = self.buf.len().min(MAX_INSTRUCTION_BYTES);
        let buf = &self.buf[..limit];
        let mut pos = self.pos;
        let mut state = self.state;
        let result = loop {
            // Find the next complete element's value, `start..end`; `buf[end]` is its terminator.
            let (start, end) = match state {
                State::Length { value, digits } => {
                    state = scan_length(buf, &mut pos, value, digits)?;
                    if let State::Length { .. } = state {
                        break need_more(pos);
                    }
                    continue;
                }
                State::Value { start, remaining } => {
                    match ascii_value_end(buf, pos, start, remaining) {
                        Some(end) => (start, end),
                        None => {
                            let (consumed, started) = skip_code_points(&buf[pos..], remaining);
                            pos += consumed;
                            let remaining = remaining - started;
                            state = State::Value { start, remaining };
                            if remaining > 0 {
                                break need_more(pos);
                            }
                            // The terminator is the next byte that does not continue the last
                            // code point.
                            let Some(skip) = buf[pos..].iter().position(|&b| !is_continuation(b)) else {
                                pos = limit;
                                break need_more(pos);
                            };
                            let end = pos + skip;
                            if std::str::from_utf8(&buf[start..end]).is_err() {
                                return Err(DecodeError::InvalidUtf8);
                            }
                            (start, end)
                        }
                    }
                }
            };
            let terminator = buf[end];
            if terminator != b',' && terminator != b';' {
                return Err(DecodeError::BadTerminator { byte: terminator });
            }
            // INVARIANT: end < MAX_INSTRUCTION_BYTES, which fits a u32.
            self.spans.push(Span { start: start as u32, end: end as u32 });
            pos = end + 1;
            state = LENGTH_START;
            if terminator == b';' {
                break Ok(Some(pos));
            }
            if self.spans.len() == MAX_ELEMENTS {
                return Err(DecodeError::TooManyElements { limit: MAX_ELEMENTS });
            }
        };
        self.pos = pos;
        self.state = state;
        result
    }
}

/// Reads length-prefix bytes from `buf[*pos..]`, continuing a prefix of `value` so far with
/// `digits` digits. Returns the state to go on with: [`State::Value`] once the `.` is read,
/// [`State::Length`] if the input ran out first.
fn scan_length(buf: &[u8], pos: &mut usize, mut value: usize, mut digits: usize) -> Result<State, DecodeError> {
    while let Some(&byte) = buf.get(*pos) {
        if byte.is_ascii_digit() {
            if digits == MAX_LENGTH_DIGITS {
                return Err(DecodeError::LengthTooManyDigits);
            }
            value = value * 10 + usize::from(byte - b'0');
            digits += 1;
            *pos += 1;
        } else if byte == b'.' && digits > 0 {
            *pos += 1;
            // Every code point takes at least one byte, and the terminator one more.
            if *pos + value + 1 > MAX_INSTRUCTION_BYTES {
                return Err(too_long());
            }
            return Ok(State::Value { start: *pos, remaining: value });
        } else {
            return Err(DecodeError::InvalidLength { byte });
        }
    }
    Ok(State::Length { value, digits })
}

/// Fast path for a value not scanned yet (`pos == start`): if its `len` code points are ASCII
/// bytes, all present and followed by `,` or `;`, returns where it ends. ASCII needs no further
/// UTF-8 check.
fn ascii_value_end(buf: &[u8], pos: usize, start: usize, len: usize) -> Option<usize> {
    if pos != start {
        return None;
    }
    let end = start.checked_add(len)?;
    let terminator = *buf.get(end)?;
    ((terminator == b',' || terminator == b';') && buf[start..end].is_ascii()).then_some(end)
}

/// Called when the scan reached the end of the usable input at `pos`.
fn need_more(pos: usize) -> Result<Option<usize>, DecodeError> {
    if pos >= MAX_INSTRUCTION_BYTES {
        Err(too_long())
    } else {
        Ok(None)
    }
}

fn too_long() -> DecodeError {
    DecodeError::InstructionTooLong { limit: MAX_INSTRUCTION_BYTES }
}

/// UTF-8 continuation bytes are `10xxxxxx`; every other byte starts a code point.
fn is_continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

/// Walks `bytes` until `remaining` code points have started (or the bytes run out). Returns the
/// bytes consumed and the code points started. May stop anywhere after the lead byte of the last
/// code point but before the next lead byte; the caller skips the remaining continuation bytes.
fn skip_code_points(bytes: &[u8], remaining: usize) -> (usize, usize) {
    const CHUNK: usize = 16;
    let mut pos = 0;
    let mut started = 0;
    // Whole chunks, counted without branches, as long as they cannot hold the lead byte of the
    // code point after the last one.
    for chunk in bytes.chunks_exact(CHUNK) {
        let leads = chunk.iter().filter(|&&b| !is_continuation(b)).count();
        if started + leads > remaining {
            break;
        }
        started += leads;
        pos += CHUNK;
    }
    while pos < bytes.len() && started < remaining {
        if !is_continuation(bytes[pos]) {
            started += 1;
        }
        pos += 1;
    }
    (pos, started)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<Vec<Instruction>, DecodeError> {
        let mut decoder = Decoder::new();
        decoder.feed(input);
        let mut out = Vec::new();
        while let Some(i) = decoder.decode()? {
            out.push(i);
        }
        Ok(out)
    }

    fn first_error(input: &[u8]) -> DecodeError {
        decode_all(input).expect_err("input is malformed")
    }

    #[test]
    fn simple() {
        let out = decode_all(b"4.size,1.0,4.1024,3.768;3.nop;").unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].opcode(), "size");
        assert_eq!(out[0].args().collect::<Vec<_>>(), ["0", "1024", "768"]);
        assert_eq!(out[0].as_bytes().as_ref(), b"4.size,1.0,4.1024,3.768;");
        assert_eq!(out[1].opcode(), "nop");
        assert_eq!(out[1].args_len(), 0);
    }

    #[test]
    fn lengths_are_code_points() {
        let out = decode_all("4.name,4.José;".as_bytes()).unwrap();
        assert_eq!(out[0].arg(0), Some("José"));
        // `é` is one code point in two bytes: a byte-counted length is wrong.
        assert_eq!(first_error("1.x,2.é;3.nop;".as_bytes()), DecodeError::BadTerminator { byte: b'3' });
        let out = decode_all("1.x,1.é;".as_bytes()).unwrap();
        assert_eq!(out[0].arg(0), Some("é"));
        let out = decode_all("1.x,3.😀𝄞a;".as_bytes()).unwrap();
        assert_eq!(out[0].arg(0), Some("😀𝄞a"));
    }

    #[test]
    fn separators_inside_values() {
        let out = decode_all(b"1.x,5.a,b;.,0.;").unwrap();
        assert_eq!(out[0].args().collect::<Vec<_>>(), ["a,b;.", ""]);
    }

    #[test]
    fn empty_opcode() {
        let out = decode_all(b"0.,4.ping,13.1700000000000;").unwrap();
        assert_eq!(out[0].opcode(), "");
        assert_eq!(out[0].arg(0), Some("ping"));
    }

    #[test]
    fn split_inside_utf8_sequence() {
        let bytes = "4.name,2.😀é;".as_bytes();
        for cut in 0..=bytes.len() {
            let mut decoder = Decoder::new();
            decoder.feed(&bytes[..cut]);
            let early = decoder.decode().unwrap();
            decoder.feed(&bytes[cut..]);
            let instr = match early {
                Some(i) => i,
                None => decoder.decode().unwrap().unwrap(),
            };
            assert_eq!(instr.arg(0), Some("😀é"), "cut at {cut}");
            assert_eq!(decoder.decode(), Ok(None));
        }
    }

    #[test]
    fn byte_by_byte() {
        let input = "6.select,3.vnc;4.name,4.José;0.,4.ping;".as_bytes();
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for &b in input {
            decoder.feed(&[b]);
            while let Some(i) = decoder.decode().unwrap() {
                out.push(i);
            }
        }
        assert_eq!(out, decode_all(input).unwrap());
        assert_eq!(out.len(), 3);
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn debug_hides_buffered_bytes() {
        let mut decoder = Decoder::new();
        decoder.feed(b"7.connect,6.secret");
        assert_eq!(decoder.decode(), Ok(None));
        let text = format!("{decoder:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("buffered: 18"), "{text}");
    }

    #[test]
    fn buffer_mut_appends() {
        let mut decoder = Decoder::new();
        decoder.buffer_mut().extend_from_slice(b"3.nop;");
        assert_eq!(decoder.decode().unwrap().unwrap().opcode(), "nop");
    }

    #[test]
    fn instruction_size_limit() {
        let expected = DecodeError::InstructionTooLong { limit: MAX_INSTRUCTION_BYTES };
        // "4.blob," + "NNNN." + value + ";"
        let framing = "4.blob,NNNN.;".len();
        let value = "a".repeat(MAX_INSTRUCTION_BYTES - framing);
        let ok = format!("4.blob,{}.{value};", value.len());
        assert_eq!(ok.len(), MAX_INSTRUCTION_BYTES);
        assert_eq!(decode_all(ok.as_bytes()).unwrap()[0].arg(0), Some(&*value));

        let value = "a".repeat(MAX_INSTRUCTION_BYTES - framing + 1);
        let long = format!("4.blob,{}.{value};", value.len());
        assert_eq!(long.len(), MAX_INSTRUCTION_BYTES + 1);
        assert_eq!(first_error(long.as_bytes()), expected);

        // The declared length fits, but the multi-byte characters do not.
        let value = "é".repeat(5000);
        let long = format!("4.blob,5000.{value};");
        assert_eq!(first_error(long.as_bytes()), expected);

        // No terminator: fails as soon as 8192 bytes are buffered.
        let mut decoder = Decoder::new();
        decoder.feed(b"4.blob,8170.");
        decoder.feed("a".repeat(8170).as_bytes());
        decoder.feed(b",5.abcde,");
        assert_eq!(decoder.buffered_len(), MAX_INSTRUCTION_BYTES - 1);
        assert_eq!(decoder.decode(), Ok(None));
        decoder.feed(b"0");
        assert_eq!(decoder.decode(), Err(expected.clone()));
        // Final: later calls repeat the error.
        decoder.feed(b".;");
        assert_eq!(decoder.decode(), Err(expected));
    }

    #[test]
    fn length_prefix_limits() {
        assert_eq!(first_error(b"123456.x;"), DecodeError::LengthTooManyDigits);
        assert_eq!(first_error(b"1.x,000001.a;"), DecodeError::LengthTooManyDigits);
        // Five digits are fine (leading zeros included).
        assert_eq!(decode_all(b"00001.x;").unwrap()[0].opcode(), "x");
        assert_eq!(first_error(b"99999.x"), DecodeError::InstructionTooLong { limit: MAX_INSTRUCTION_BYTES });
        assert_eq!(first_error(b".x;"), DecodeError::InvalidLength { byte: b'.' });
        assert_eq!(first_error(b"a.x;"), DecodeError::InvalidLength { byte: b'a' });
        assert_eq!(first_error(b"-1.x;"), DecodeError::InvalidLength { byte: b'-' });
        assert_eq!(first_error(b";"), DecodeError::InvalidLength { byte: b';' });
        assert_eq!(first_error(b"1.x,;"), DecodeError::InvalidLength { byte: b';' });
    }

    #[test]
    fn element_limit() {
        let mut ok = String::from("1.x");
        for _ in 1..MAX_ELEMENTS {
            ok.push_str(",0.");
        }
        let out = decode_all(format!("{ok};").as_bytes()).unwrap();
        assert_eq!(out[0].args_len(), MAX_ELEMENTS - 1);
        assert_eq!(first_error(format!("{ok},0.;").as_bytes()), DecodeError::TooManyElements { limit: MAX_ELEMENTS });
    }

    #[test]
    fn invalid_utf8() {
        assert_eq!(first_error(b"1.x,1.\xff;"), DecodeError::InvalidUtf8);
        assert_eq!(first_error(b"1.x,2.a\x80;;"), DecodeError::InvalidUtf8);
        assert_eq!(first_error(b"1.x,1.a\x80;"), DecodeError::InvalidUtf8);
        assert_eq!(first_error(b"1.x,1.\xc3;"), DecodeError::InvalidUtf8);
        // Overlong encoding and a surrogate.
        assert_eq!(first_error(b"1.x,1.\xc0\xaf;"), DecodeError::InvalidUtf8);
        assert_eq!(first_error(b"1.x,1.\xed\xa0\x80;"), DecodeError::InvalidUtf8);
    }

    #[test]
    fn missing_terminator_or_separator() {
        assert_eq!(first_error(b"3.nopX"), DecodeError::BadTerminator { byte: b'X' });
        assert_eq!(first_error(b"3.nop3.nop;"), DecodeError::BadTerminator { byte: b'3' });
        assert_eq!(first_error(b"3.nop.;"), DecodeError::BadTerminator { byte: b'.' });
        // Not an error yet: the terminator may still come.
        let mut decoder = Decoder::new();
        decoder.feed(b"3.nop");
        assert_eq!(decoder.decode(), Ok(None));
        decoder.feed(b";");
        assert!(decoder.decode().unwrap().is_some());
    }

    #[test]
    fn skip_code_points_counts_leads() {
        assert_eq!(skip_code_points(b"abc", 2), (2, 2));
        assert_eq!(skip_code_points("éa".as_bytes(), 1), (1, 1));
        assert_eq!(skip_code_points("éa".as_bytes(), 2), (3, 2));
        assert_eq!(skip_code_points("😀".as_bytes(), 5), (4, 1));
        let long = "x".repeat(100);
        assert_eq!(skip_code_points(long.as_bytes(), 40), (40, 40));
        let mixed = "é".repeat(20);
        assert_eq!(skip_code_points(mixed.as_bytes(), 8), (16, 8));
        assert_eq!(skip_code_points(mixed.as_bytes(), 9), (17, 9));
        assert_eq!(skip_code_points(mixed.as_bytes(), 100), (40, 20));
    }
}
