#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod client;
mod decoder;
mod encoder;
pub mod handshake;
mod instruction;
mod status;
mod version;

pub use client::{ClientInstruction, InstructionError};
pub use decoder::{DecodeError, Decoder, MAX_LENGTH_DIGITS};
pub use encoder::{encode, encode_blobs, encode_error, encode_instruction, InstructionWriter};
pub use instruction::{Args, Instruction};
pub use status::Status;
pub use version::ProtocolVersion;

/// Largest instruction guacd accepts, in bytes, including the terminating `;`.
pub const MAX_INSTRUCTION_BYTES: usize = 8192;

/// Most elements (opcode included) guacd accepts in one instruction.
pub const MAX_ELEMENTS: usize = 128;

/// Most raw bytes per `blob` (8064 base64 characters), so a `blob` fits in
/// [`MAX_INSTRUCTION_BYTES`].
pub const MAX_BLOB_BYTES: usize = 6048;

// Spans are stored as u32 and decoder positions are bounded by MAX_INSTRUCTION_BYTES.
const _: () = assert!(MAX_INSTRUCTION_BYTES <= u32::MAX as usize);
