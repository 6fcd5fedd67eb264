//! Feeds arbitrary bytes, split at an arbitrary point, into the decoder, and every decoded
//! instruction into `ClientInstruction::parse`.
//!
//! Oracles: no panic; the split point changes neither the instructions nor the final error;
//! every instruction respects guacd's limits; re-encoding an instruction gives the same elements.

#![no_main]

use guac_proto::{ClientInstruction, DecodeError, Decoder, Instruction, MAX_ELEMENTS, MAX_INSTRUCTION_BYTES};
use libfuzzer_sys::fuzz_target;

fn decode(chunks: &[&[u8]]) -> (Vec<Instruction>, Option<DecodeError>) {
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk);
        loop {
            match decoder.decode() {
                Ok(Some(instruction)) => out.push(instruction),
                Ok(None) => break,
                Err(error) => {
                    // Errors are final.
                    assert_eq!(decoder.decode(), Err(error.clone()));
                    return (out, Some(error));
                }
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    // Scale the split byte over the input so long inputs get splits everywhere.
    let at = usize::from(split) * (data.len() + 1) / 256;
    let (head, tail) = data.split_at(at.min(data.len()));

    let whole = decode(&[data]);
    let split = decode(&[head, tail]);
    assert_eq!(whole, split, "split at {at} changed the result");

    for instruction in &whole.0 {
        assert!(instruction.as_bytes().len() <= MAX_INSTRUCTION_BYTES);
        assert!(instruction.args_len() < MAX_ELEMENTS);
        assert_eq!(instruction.as_bytes().last(), Some(&b';'));

        let args: Vec<&str> = instruction.args().collect();
        assert_eq!(args.len(), instruction.args_len());
        let rebuilt = Instruction::new(instruction.opcode(), &args);
        assert_eq!(rebuilt.opcode(), instruction.opcode());
        assert!(rebuilt.args().eq(instruction.args()));

        let _ = format!("{instruction:?}");
        if let Ok(parsed) = ClientInstruction::parse(instruction) {
            let _ = format!("{parsed:?}");
        }
        let _ = ClientInstruction::parse_runtime(instruction);
    }
});
