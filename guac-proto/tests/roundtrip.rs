//! Property tests: encode → decode round trips, split invariance, and robustness on arbitrary bytes.

use bytes::BytesMut;
use guac_proto::{
    encode, encode_blobs, encode_instruction, ClientInstruction, DecodeError, Decoder, Instruction, MAX_BLOB_BYTES,
    MAX_ELEMENTS, MAX_INSTRUCTION_BYTES,
};
use proptest::prelude::*;

/// Values mixing arbitrary Unicode (non-BMP included) with the protocol's own separators.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "(?s).{0,24}",
        "[a-z0-9,;.é😀𝄞\u{0}\u{7f}\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff} ]{0,24}",
        "[0-9]{0,6}",
    ]
}

fn instruction() -> impl Strategy<Value = (String, Vec<String>)> {
    (value(), prop::collection::vec(value(), 0..12))
}

fn encode_all(instructions: &[(String, Vec<String>)]) -> BytesMut {
    let mut buf = BytesMut::new();
    for (opcode, args) in instructions {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        encode_instruction(&mut buf, opcode, &args);
    }
    buf
}

/// Feeds `input` in chunks cut at `cuts` (indices, any order), decoding after every feed.
/// Returns the instructions and the error that ended the stream, if any.
fn decode_split(input: &[u8], cuts: &[usize]) -> (Vec<Instruction>, Option<DecodeError>) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.push(0);
    cuts.push(input.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    for window in cuts.windows(2) {
        decoder.feed(&input[window[0]..window[1]]);
        loop {
            match decoder.decode() {
                Ok(Some(i)) => out.push(i),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fn fits(opcode: &str, args: &[String]) -> bool {
    let mut buf = BytesMut::new();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    encode_instruction(&mut buf, opcode, &refs);
    buf.len() <= MAX_INSTRUCTION_BYTES && args.len() < MAX_ELEMENTS
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_decode_round_trip(instructions in prop::collection::vec(instruction(), 1..8)) {
        let input = encode_all(&instructions);
        let (decoded, error) = decode_split(&input, &[]);
        prop_assert_eq!(error, None);
        prop_assert_eq!(decoded.len(), instructions.len());
        for (got, (opcode, args)) in decoded.iter().zip(&instructions) {
            prop_assert_eq!(got.opcode(), opcode);
            prop_assert_eq!(got.args_len(), args.len());
            prop_assert_eq!(got.args().collect::<Vec<_>>(), args.iter().map(String::as_str).collect::<Vec<_>>());
            for (i, arg) in args.iter().enumerate() {
                prop_assert_eq!(got.arg(i), Some(arg.as_str()));
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            prop_assert_eq!(got, &Instruction::new(opcode, &refs));
        }
        // The wire bytes of the instructions, concatenated, are the input.
        let rejoined: Vec<u8> = decoded.iter().flat_map(|i| i.as_bytes().to_vec()).collect();
        prop_assert_eq!(&rejoined[..], &input[..]);
    }

    #[test]
    fn split_points_do_not_matter(
        instructions in prop::collection::vec(instruction(), 1..8),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let input = encode_all(&instructions);
        let whole = decode_split(&input, &[]);
        let split = decode_split(&input, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn byte_at_a_time(instructions in prop::collection::vec(instruction(), 1..4)) {
        let input = encode_all(&instructions);
        let every: Vec<usize> = (0..input.len()).collect();
        prop_assert_eq!(decode_split(&input, &every), decode_split(&input, &[]));
    }

    /// Any byte stream, however malformed, decodes to the same instructions and the same error
    /// whatever the split points, and never panics.
    #[test]
    fn arbitrary_bytes_split_invariant(
        input in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            prop::collection::vec(prop::sample::select(b"0123456789.,;a\xc3\xa9\xf0\x9f\x98\x80".to_vec()), 0..256),
        ],
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let whole = decode_split(&input, &[]);
        let split = decode_split(&input, &cuts);
        for instruction in &whole.0 {
            let _ = ClientInstruction::parse(instruction);
            let _ = ClientInstruction::parse_runtime(instruction);
        }
        prop_assert_eq!(whole, split);
    }

    /// Corrupting one byte of a valid stream yields either instructions or a clean error.
    #[test]
    fn corrupted_streams(
        instructions in prop::collection::vec(instruction(), 1..6),
        at in any::<usize>(),
        byte in any::<u8>(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut input = encode_all(&instructions).to_vec();
        let at = at % input.len();
        input[at] = byte;
        prop_assert_eq!(decode_split(&input, &[]), decode_split(&input, &cuts));
    }

    #[test]
    fn limits_hold_for_encoded_instructions((opcode, args) in instruction()) {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut buf = BytesMut::new();
        encode_instruction(&mut buf, &opcode, &refs);
        let (decoded, error) = decode_split(&buf, &[]);
        if fits(&opcode, &args) {
            prop_assert_eq!(decoded.len(), 1);
            prop_assert_eq!(error, None);
        } else {
            prop_assert!(error.is_some());
        }
    }

    #[test]
    fn numbers_round_trip(signed in any::<i64>(), unsigned in any::<u64>()) {
        let mut buf = BytesMut::new();
        encode(&mut buf, "n").int(signed).uint(unsigned).finish();
        let (decoded, _) = decode_split(&buf, &[]);
        prop_assert_eq!(decoded[0].arg(0).map(str::parse::<i64>), Some(Ok(signed)));
        prop_assert_eq!(decoded[0].arg(1).map(str::parse::<u64>), Some(Ok(unsigned)));
    }

    #[test]
    fn blobs_round_trip(
        data in prop::collection::vec(any::<u8>(), 0..3 * MAX_BLOB_BYTES),
        stream in any::<u32>(),
    ) {
        let mut buf = BytesMut::new();
        encode_blobs(&mut buf, stream, &data);
        let (decoded, error) = decode_split(&buf, &[]);
        prop_assert_eq!(error, None);
        prop_assert_eq!(decoded.len(), data.len().div_ceil(MAX_BLOB_BYTES));
        let mut joined = Vec::new();
        for instruction in &decoded {
            prop_assert!(instruction.as_bytes().len() <= MAX_INSTRUCTION_BYTES);
            match ClientInstruction::parse(instruction) {
                Ok(ClientInstruction::Blob { stream: s, data }) => {
                    prop_assert_eq!(s, stream);
                    prop_assert!(data.len() <= MAX_BLOB_BYTES);
                    joined.extend_from_slice(&data);
                }
                other => prop_assert!(false, "not a blob: {:?}", other),
            }
        }
        prop_assert_eq!(joined, data);
    }
}

#[test]
fn many_instructions_per_feed() {
    let mut buf = BytesMut::new();
    for n in 0..1000u64 {
        encode(&mut buf, "sync").uint(n).finish();
        encode(&mut buf, "mouse").int(-1).int(2).uint(4).finish();
    }
    let mut decoder = Decoder::new();
    decoder.feed(&buf);
    let mut count = 0u64;
    while let Some(i) = decoder.decode().unwrap() {
        match ClientInstruction::parse(&i).unwrap() {
            ClientInstruction::Sync { timestamp } => assert_eq!(timestamp, count / 2),
            ClientInstruction::Mouse { x, y, mask } => assert_eq!((x, y, mask), (-1, 2, 4)),
            other => panic!("unexpected {other:?}"),
        }
        count += 1;
    }
    assert_eq!(count, 2000);
    assert_eq!(decoder.buffered_len(), 0);
}

#[test]
fn code_point_lengths_from_spec() {
    let mut decoder = Decoder::new();
    decoder.feed("4.name,4.José;".as_bytes());
    let i = decoder.decode().unwrap().unwrap();
    assert_eq!(i.arg(0), Some("José"));
    // A byte count (5) for the same value is not accepted.
    let mut decoder = Decoder::new();
    decoder.feed("4.name,5.José;".as_bytes());
    assert_eq!(decoder.decode(), Ok(None));
    decoder.feed(b"3.nop;");
    assert_eq!(decoder.decode(), Err(DecodeError::BadTerminator { byte: b'3' }));
}

#[test]
fn limit_violations_are_errors() {
    let decode = |input: &[u8]| decode_split(input, &[]).1;
    let framing = "4.blob,NNNN.;".len();
    let long = format!(
        "4.blob,{0}.{1};",
        MAX_INSTRUCTION_BYTES - framing + 1,
        "A".repeat(MAX_INSTRUCTION_BYTES - framing + 1)
    );
    assert_eq!(long.len(), MAX_INSTRUCTION_BYTES + 1);
    assert_eq!(decode(long.as_bytes()), Some(DecodeError::InstructionTooLong { limit: MAX_INSTRUCTION_BYTES }));
    assert_eq!(decode(b"4.sync,100000.1;"), Some(DecodeError::LengthTooManyDigits));
    let many = format!("1.x{};", ",0.".repeat(MAX_ELEMENTS));
    assert_eq!(decode(many.as_bytes()), Some(DecodeError::TooManyElements { limit: MAX_ELEMENTS }));
    assert_eq!(decode(b"4.name,1.\xfe;"), Some(DecodeError::InvalidUtf8));
    assert_eq!(decode(b"4.name,1.a 3.nop;"), Some(DecodeError::BadTerminator { byte: b' ' }));
    assert_eq!(decode(b"4.name1.a;"), Some(DecodeError::BadTerminator { byte: b'1' }));
}
