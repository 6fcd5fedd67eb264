//! Encoding instructions straight into a caller's [`BytesMut`].

use bytes::BytesMut;

use crate::{Status, MAX_BLOB_BYTES};

/// Writes one instruction element by element. Obtained from [`encode`].
///
/// Each element is written as `LEN.VALUE`, where `LEN` is the number of Unicode code points in
/// `VALUE` (Guacamole protocol reference, "Instruction format"). Nothing is allocated apart from
/// growing the target buffer.
///
/// ```
/// let mut buf = bytes::BytesMut::new();
/// guac_proto::encode(&mut buf, "size").int(0).uint(1024).uint(768).finish();
/// assert_eq!(&buf[..], b"4.size,1.0,4.1024,3.768;");
/// ```
#[must_use = "call finish() to terminate the instruction"]
pub struct InstructionWriter<'a> {
    buf: &'a mut BytesMut,
}

/// Starts an instruction with `opcode` in `buf`. Add arguments with the [`InstructionWriter`]
/// methods, then call [`InstructionWriter::finish`].
pub fn encode<'a>(buf: &'a mut BytesMut, opcode: &str) -> InstructionWriter<'a> {
    put_element(buf, opcode);
    InstructionWriter { buf }
}

impl InstructionWriter<'_> {
    /// Appends a string argument.
    pub fn str(self, s: &str) -> Self {
        self.buf.extend_from_slice(b",");
        put_element(self.buf, s);
        self
    }

    /// Appends a signed decimal argument (`-1` for negatives).
    pub fn int(self, n: i64) -> Self {
        let mut digits = [0u8; 20];
        let text = format_int(n, &mut digits);
        self.put_ascii(text)
    }

    /// Appends an unsigned decimal argument.
    pub fn uint(self, n: u64) -> Self {
        let mut digits = [0u8; 20];
        let text = format_uint(n, &mut digits);
        self.put_ascii(text)
    }

    /// Appends `data` as one base64 (standard alphabet, padded) argument.
    pub fn base64(self, data: &[u8]) -> Self {
        let encoded_len = base64_len(data.len());
        self.buf.reserve(2 + digit_count(encoded_len as u64) + encoded_len);
        self.buf.extend_from_slice(b",");
        put_len_prefix(self.buf, encoded_len);
        let start = self.buf.len();
        self.buf.resize(start + encoded_len, 0);
        // base64-simd picks SSE4.1/AVX2 at run time (several times faster than a scalar encoder on
        // image blobs, which are most of the output bytes); same alphabet and padding.
        let written = base64_simd::STANDARD.encode(data, base64_simd::Out::from_slice(&mut self.buf[start..])).len();
        debug_assert_eq!(written, encoded_len);
        self
    }

    /// Terminates the instruction with `;`.
    pub fn finish(self) {
        self.buf.extend_from_slice(b";");
    }

    fn put_ascii(self, text: &[u8]) -> Self {
        self.buf.reserve(4 + text.len());
        self.buf.extend_from_slice(b",");
        put_len_prefix(self.buf, text.len());
        self.buf.extend_from_slice(text);
        self
    }
}

/// Encodes a whole instruction from string arguments.
pub fn encode_instruction(buf: &mut BytesMut, opcode: &str, args: &[&str]) {
    buf.reserve(encoded_len(opcode, args));
    args.iter().fold(encode(buf, opcode), |w, arg| w.str(arg)).finish();
}

/// Writes the data of a blob stream (`img`, `file`, ...) as `blob` instructions, each carrying at
/// most [`MAX_BLOB_BYTES`] raw bytes in base64, so every instruction fits guacd's 8192-byte limit.
/// Empty `data` writes nothing.
pub fn encode_blobs(buf: &mut BytesMut, stream: u32, data: &[u8]) {
    let chunks = data.len().div_ceil(MAX_BLOB_BYTES);
    // 4.blob,LEN.STREAM,LEN.BASE64; per chunk; 32 bytes covers all the framing.
    buf.reserve(chunks * 32 + base64_len(data.len()) + chunks * 2);
    for chunk in data.chunks(MAX_BLOB_BYTES) {
        encode(buf, "blob").uint(u64::from(stream)).base64(chunk).finish();
    }
}

/// Writes an `error` instruction: `error message status` (section 7 status codes).
pub fn encode_error(buf: &mut BytesMut, message: &str, status: Status) {
    encode(buf, "error").str(message).uint(u64::from(status.code())).finish();
}

/// Writes `LEN.VALUE`.
fn put_element(buf: &mut BytesMut, value: &str) {
    let count = value.chars().count();
    buf.reserve(digit_count(count as u64) + 1 + value.len() + 1);
    put_len_prefix(buf, count);
    buf.extend_from_slice(value.as_bytes());
}

/// Writes `LEN.`.
pub(crate) fn put_len_prefix(buf: &mut BytesMut, len: usize) {
    let mut digits = [0u8; 20];
    buf.extend_from_slice(format_uint(len as u64, &mut digits));
    buf.extend_from_slice(b".");
}

/// Upper bound of the encoded size of an instruction, used to reserve once.
pub(crate) fn encoded_len(opcode: &str, args: &[&str]) -> usize {
    // Per element: up to 20 digits, '.', value, and ',' or ';'. Byte length bounds the code point
    // count, so digit_count(len) bounds the prefix.
    std::iter::once(&opcode).chain(args).map(|v| digit_count(v.len() as u64) + 2 + v.len()).sum()
}

/// Length of padded standard base64 for `n` bytes.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

fn digit_count(mut n: u64) -> usize {
    let mut count = 1;
    while n >= 10 {
        n /= 10;
        count += 1;
    }
    count
}

/// Formats `n` in decimal into the end of `out`, returning the digits.
fn format_uint(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut pos = out.len();
    loop {
        pos -= 1;
        // INVARIANT: n % 10 < 10, so the cast cannot truncate.
        out[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &out[pos..]
}

/// Formats `n` in decimal with a leading `-` for negatives.
fn format_int(n: i64, out: &mut [u8; 20]) -> &[u8] {
    // i64::MIN has 19 digits plus the sign: 20 bytes.
    let magnitude = n.unsigned_abs();
    let digits = format_uint(magnitude, out).len();
    let mut start = out.len() - digits;
    if n < 0 {
        start -= 1;
        out[start] = b'-';
    }
    &out[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl FnOnce(&mut BytesMut)) -> String {
        let mut buf = BytesMut::new();
        f(&mut buf);
        String::from_utf8(buf.to_vec()).expect("encoder writes UTF-8")
    }

    #[test]
    fn numbers() {
        assert_eq!(encoded(|b| encode(b, "x").int(-1).int(0).int(42).finish()), "1.x,2.-1,1.0,2.42;");
        assert_eq!(
            encoded(|b| encode(b, "x").int(i64::MIN).int(i64::MAX).finish()),
            "1.x,20.-9223372036854775808,19.9223372036854775807;"
        );
        assert_eq!(encoded(|b| encode(b, "x").uint(u64::MAX).uint(7).finish()), "1.x,20.18446744073709551615,1.7;");
    }

    #[test]
    fn strings_count_code_points() {
        assert_eq!(encoded(|b| encode(b, "name").str("José").finish()), "4.name,4.José;");
        assert_eq!(encoded(|b| encode_instruction(b, "x", &["a,b;c.d", "", "𝄞😀"])), "1.x,7.a,b;c.d,0.,2.𝄞😀;");
        assert_eq!(encoded(|b| encode_instruction(b, "", &["ping"])), "0.,4.ping;");
    }

    #[test]
    fn error_instruction() {
        assert_eq!(
            encoded(|b| encode_error(b, "No such connection.", Status::ResourceNotFound)),
            "5.error,19.No such connection.,3.516;"
        );
    }

    #[test]
    fn blobs_are_split() {
        assert_eq!(encoded(|b| encode_blobs(b, 1, &[])), "");
        assert_eq!(encoded(|b| encode_blobs(b, 3, b"hi")), "4.blob,1.3,4.aGk=;");
        let data: Vec<u8> = (0..MAX_BLOB_BYTES * 2 + 1).map(|i| i as u8).collect();
        let text = encoded(|b| encode_blobs(b, 12, &data));
        let instrs: Vec<&str> = text.split_inclusive(';').collect();
        assert_eq!(instrs.len(), 3);
        // 6048 bytes -> 8064 base64 characters; the instruction fits in 8192 bytes.
        assert!(instrs[0].starts_with("4.blob,2.12,8064."));
        assert!(instrs[0].len() <= crate::MAX_INSTRUCTION_BYTES);
        assert!(instrs[2].starts_with("4.blob,2.12,4."));
    }

    #[test]
    fn simd_base64_matches_the_reference_encoder() {
        use base64::Engine as _;
        for n in 0..200usize {
            let data: Vec<u8> = (0..n * 37).map(|i| (i * 131 + n) as u8).collect();
            let text = encoded(|b| encode(b, "x").base64(&data).finish());
            let want = base64::engine::general_purpose::STANDARD.encode(&data);
            assert_eq!(text, format!("1.x,{}.{want};", want.len()));
        }
    }

    #[test]
    fn encoded_len_is_an_upper_bound() {
        let args = ["", "José", "12345678901"];
        let mut buf = BytesMut::new();
        encode_instruction(&mut buf, "opcode", &args);
        assert!(buf.len() <= encoded_len("opcode", &args));
    }
}
