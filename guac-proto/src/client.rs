//! Typed client-to-server instructions (sections 2 and 3 of the wire reference).

use std::fmt;
use std::str::FromStr;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

use crate::version::VERSION_PREFIX;
use crate::{Instruction, ProtocolVersion};

/// Why an instruction is not a well-formed client instruction.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InstructionError {
    /// The instruction has the wrong number of arguments.
    #[error("{opcode}: expected {expected} arguments, got {got}")]
    WrongArity { opcode: String, expected: &'static str, got: usize },
    /// Argument `index` (0 is the first after the opcode) is not a number in range, or not `0`/`1`
    /// where a flag is expected.
    #[error("{opcode}: argument {index} is not a valid number")]
    BadNumber { opcode: String, index: usize },
    /// A `blob` for `stream` does not carry valid base64.
    #[error("blob for stream {stream} is not valid base64")]
    BadBase64 { stream: u32 },
}

/// A client-to-server instruction with its arguments checked and converted.
///
/// guacd does not check the number of arguments of most instructions; [`ClientInstruction::parse`]
/// does, and rejects malformed ones. `Debug` output hides `connect` values (they carry passwords)
/// and blob contents.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientInstruction {
    /// `select target`: a protocol name (`vnc`, `ssh`, `rdp`, ...) or a connection ID (`$<uuid>`)
    /// to join.
    Select { target: String },
    /// `size width height [dpi]`: the handshake's display size, or a runtime resize request.
    Size { width: u32, height: u32, dpi: Option<u32> },
    /// `audio mimetype...` during the handshake: audio formats the client can play. At runtime the
    /// same opcode opens a microphone stream; use [`ClientInstruction::parse_runtime`] there.
    Audio { mimetypes: Vec<String> },
    /// `video mimetype...`: video formats the client can play.
    Video { mimetypes: Vec<String> },
    /// `image mimetype...`: image formats the client can decode beyond PNG and JPEG.
    Image { mimetypes: Vec<String> },
    /// `timezone name`: the client's IANA time zone.
    Timezone { name: String },
    /// `name name`: the user's display name.
    Name { name: String },
    /// `connect [version] value...`. A client older than 1.1.0 sends no version: when the first
    /// value does not start with `VERSION_`, the version is 1.0.0 and every value is a parameter.
    Connect { version: ProtocolVersion, values: Vec<String> },
    /// `sync timestamp [frames]`: frame acknowledgement.
    Sync { timestamp: u64 },
    /// `mouse x y mask [...]`: pointer state. Mask bits: 1 left, 2 middle, 4 right, 8 wheel up,
    /// 16 wheel down. Extra arguments (newer clients) are ignored.
    Mouse { x: i32, y: i32, mask: u32 },
    /// `key keysym pressed`: an X11 keysym pressed (`1`) or released (`0`).
    Key { keysym: u32, pressed: bool },
    /// `clipboard stream mimetype`: opens a clipboard stream.
    Clipboard { stream: u32, mimetype: String },
    /// `file stream mimetype name`: opens an upload.
    File { stream: u32, mimetype: String, name: String },
    /// `pipe stream mimetype name`: opens a named pipe stream.
    Pipe { stream: u32, mimetype: String, name: String },
    /// `argv stream mimetype name`: a new value for parameter `name` (also the answer to
    /// `required`).
    Argv { stream: u32, mimetype: String, name: String },
    /// `audio stream mimetype` at runtime: opens a microphone stream. Only
    /// [`ClientInstruction::parse_runtime`] produces it.
    AudioInput { stream: u32, mimetype: String },
    /// `blob stream base64`: stream data, decoded.
    Blob { stream: u32, data: Vec<u8> },
    /// `end stream`: closes a stream.
    End { stream: u32 },
    /// `ack stream message status`: acknowledges a server blob.
    Ack { stream: u32, message: String, status: u16 },
    /// `get object name`: asks a filesystem object for a stream.
    Get { object: u32, name: String },
    /// `put object stream mimetype name`: uploads into a filesystem object.
    Put { object: u32, stream: u32, mimetype: String, name: String },
    /// `touch id x y rx ry angle force`: multi-touch state.
    Touch { id: i32, x: i32, y: i32, rx: i32, ry: i32, angle: f64, force: f64 },
    /// `nop`: keep-alive.
    Nop,
    /// `disconnect`: the user leaves.
    Disconnect,
    /// The WebSocket tunnel's internal instruction (empty opcode), e.g. `0.,4.ping,13.<ms>;`.
    Internal { args: Vec<String> },
    /// An opcode this crate does not know. Callers ignore it and log it at debug level.
    Unknown { opcode: String },
}

/// Base64 as browsers write it (`btoa`), accepting missing padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Which meaning an opcode that differs between handshake and runtime gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Runtime,
}

impl ClientInstruction {
    /// Converts a decoded instruction, checking the argument count and every number. `audio`
    /// is read as the handshake's list of mimetypes.
    pub fn parse(i: &Instruction) -> Result<ClientInstruction, InstructionError> {
        parse(i, Phase::Handshake)
    }

    /// Like [`ClientInstruction::parse`], for instructions after the handshake: `audio stream
    /// mimetype` opens a microphone stream ([`ClientInstruction::AudioInput`]).
    pub fn parse_runtime(i: &Instruction) -> Result<ClientInstruction, InstructionError> {
        parse(i, Phase::Runtime)
    }
}

fn parse(i: &Instruction, phase: Phase) -> Result<ClientInstruction, InstructionError> {
    let a = Args(i);
    let parsed = match i.opcode() {
        "select" => {
            a.arity(1, 1, "1")?;
            ClientInstruction::Select { target: a.string(0) }
        }
        "size" => {
            a.arity(2, 3, "2 or 3")?;
            ClientInstruction::Size { width: a.number(0)?, height: a.number(1)?, dpi: a.optional_number(2)? }
        }
        "audio" if phase == Phase::Runtime => {
            a.arity(2, 2, "2")?;
            ClientInstruction::AudioInput { stream: a.number(0)?, mimetype: a.string(1) }
        }
        "audio" => ClientInstruction::Audio { mimetypes: a.strings() },
        "video" => ClientInstruction::Video { mimetypes: a.strings() },
        "image" => ClientInstruction::Image { mimetypes: a.strings() },
        "timezone" => {
            a.arity(1, 1, "1")?;
            ClientInstruction::Timezone { name: a.string(0) }
        }
        "name" => {
            a.arity(1, 1, "1")?;
            ClientInstruction::Name { name: a.string(0) }
        }
        "connect" => {
            let mut values = i.args().peekable();
            let version = match values.peek() {
                Some(first) if first.starts_with(VERSION_PREFIX) => {
                    let version = ProtocolVersion::parse(first);
                    values.next();
                    version
                }
                _ => ProtocolVersion::V1_0_0,
            };
            ClientInstruction::Connect { version, values: values.map(str::to_owned).collect() }
        }
        "sync" => {
            a.arity(1, 2, "1 or 2")?;
            ClientInstruction::Sync { timestamp: a.number(0)? }
        }
        "mouse" => {
            a.arity(3, usize::MAX, "at least 3")?;
            ClientInstruction::Mouse { x: a.number(0)?, y: a.number(1)?, mask: a.number(2)? }
        }
        "key" => {
            a.arity(2, 2, "2")?;
            ClientInstruction::Key { keysym: a.number(0)?, pressed: a.flag(1)? }
        }
        "clipboard" => {
            a.arity(2, 2, "2")?;
            ClientInstruction::Clipboard { stream: a.number(0)?, mimetype: a.string(1) }
        }
        "file" => {
            a.arity(3, 3, "3")?;
            ClientInstruction::File { stream: a.number(0)?, mimetype: a.string(1), name: a.string(2) }
        }
        "pipe" => {
            a.arity(3, 3, "3")?;
            ClientInstruction::Pipe { stream: a.number(0)?, mimetype: a.string(1), name: a.string(2) }
        }
        "argv" => {
            a.arity(3, 3, "3")?;
            ClientInstruction::Argv { stream: a.number(0)?, mimetype: a.string(1), name: a.string(2) }
        }
        "blob" => {
            a.arity(2, 2, "2")?;
            let stream = a.number(0)?;
            let data = BASE64.decode(a.str(1)).map_err(|_| InstructionError::BadBase64 { stream })?;
            ClientInstruction::Blob { stream, data }
        }
        "end" => {
            a.arity(1, 1, "1")?;
            ClientInstruction::End { stream: a.number(0)? }
        }
        "ack" => {
            a.arity(3, 3, "3")?;
            ClientInstruction::Ack { stream: a.number(0)?, message: a.string(1), status: a.number(2)? }
        }
        "get" => {
            a.arity(2, 2, "2")?;
            ClientInstruction::Get { object: a.number(0)?, name: a.string(1) }
        }
        "put" => {
            a.arity(4, 4, "4")?;
            ClientInstruction::Put {
                object: a.number(0)?,
                stream: a.number(1)?,
                mimetype: a.string(2),
                name: a.string(3),
            }
        }
        "touch" => {
            a.arity(7, 7, "7")?;
            ClientInstruction::Touch {
                id: a.number(0)?,
                x: a.number(1)?,
                y: a.number(2)?,
                rx: a.number(3)?,
                ry: a.number(4)?,
                angle: a.real(5)?,
                force: a.real(6)?,
            }
        }
        "nop" => {
            a.arity(0, 0, "0")?;
            ClientInstruction::Nop
        }
        "disconnect" => {
            a.arity(0, 0, "0")?;
            ClientInstruction::Disconnect
        }
        "" => ClientInstruction::Internal { args: a.strings() },
        opcode => ClientInstruction::Unknown { opcode: opcode.to_owned() },
    };
    Ok(parsed)
}

/// Argument access with errors that name the instruction.
struct Args<'a>(&'a Instruction);

impl Args<'_> {
    fn arity(&self, min: usize, max: usize, expected: &'static str) -> Result<(), InstructionError> {
        let got = self.0.args_len();
        if (min..=max).contains(&got) {
            Ok(())
        } else {
            Err(InstructionError::WrongArity { opcode: self.0.opcode().to_owned(), expected, got })
        }
    }

    /// Argument `index`, which `arity` has checked exists.
    fn str(&self, index: usize) -> &str {
        self.0.arg(index).unwrap_or_default()
    }

    fn string(&self, index: usize) -> String {
        self.str(index).to_owned()
    }

    fn strings(&self) -> Vec<String> {
        self.0.args().map(str::to_owned).collect()
    }

    fn bad_number(&self, index: usize) -> InstructionError {
        InstructionError::BadNumber { opcode: self.0.opcode().to_owned(), index }
    }

    /// A decimal integer: digits with an optional leading `-` (rejected by unsigned types).
    fn number<T: FromStr>(&self, index: usize) -> Result<T, InstructionError> {
        let text = self.str(index);
        let digits = text.strip_prefix('-').unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.bad_number(index));
        }
        text.parse().map_err(|_| self.bad_number(index))
    }

    fn optional_number<T: FromStr>(&self, index: usize) -> Result<Option<T>, InstructionError> {
        if index < self.0.args_len() {
            self.number(index).map(Some)
        } else {
            Ok(None)
        }
    }

    /// `0` or `1`.
    fn flag(&self, index: usize) -> Result<bool, InstructionError> {
        match self.str(index) {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(self.bad_number(index)),
        }
    }

    /// A finite decimal number such as `0.5` or `-12`.
    fn real(&self, index: usize) -> Result<f64, InstructionError> {
        let text = self.str(index);
        let plain = text.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'e' || b == b'E');
        match text.parse::<f64>() {
            Ok(value) if plain && value.is_finite() => Ok(value),
            _ => Err(self.bad_number(index)),
        }
    }
}

impl fmt::Debug for ClientInstruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ClientInstruction as C;
        match self {
            C::Select { target } => f.debug_struct("Select").field("target", target).finish(),
            C::Size { width, height, dpi } => {
                f.debug_struct("Size").field("width", width).field("height", height).field("dpi", dpi).finish()
            }
            C::Audio { mimetypes } => f.debug_struct("Audio").field("mimetypes", mimetypes).finish(),
            C::Video { mimetypes } => f.debug_struct("Video").field("mimetypes", mimetypes).finish(),
            C::Image { mimetypes } => f.debug_struct("Image").field("mimetypes", mimetypes).finish(),
            C::Timezone { name } => f.debug_struct("Timezone").field("name", name).finish(),
            C::Name { name } => f.debug_struct("Name").field("name", name).finish(),
            C::Connect { version, values } => f
                .debug_struct("Connect")
                .field("version", version)
                .field("values", &format_args!("<{} values redacted>", values.len()))
                .finish(),
            C::Sync { timestamp } => f.debug_struct("Sync").field("timestamp", timestamp).finish(),
            C::Mouse { x, y, mask } => f.debug_struct("Mouse").field("x", x).field("y", y).field("mask", mask).finish(),
            C::Key { keysym, pressed } => {
                f.debug_struct("Key").field("keysym", keysym).field("pressed", pressed).finish()
            }
            C::Clipboard { stream, mimetype } => {
                f.debug_struct("Clipboard").field("stream", stream).field("mimetype", mimetype).finish()
            }
            C::File { stream, mimetype, name } => stream_debug(f, "File", *stream, mimetype, name),
            C::Pipe { stream, mimetype, name } => stream_debug(f, "Pipe", *stream, mimetype, name),
            C::Argv { stream, mimetype, name } => stream_debug(f, "Argv", *stream, mimetype, name),
            C::AudioInput { stream, mimetype } => {
                f.debug_struct("AudioInput").field("stream", stream).field("mimetype", mimetype).finish()
            }
            C::Blob { stream, data } => f
                .debug_struct("Blob")
                .field("stream", stream)
                .field("data", &format_args!("<{} bytes>", data.len()))
                .finish(),
            C::End { stream } => f.debug_struct("End").field("stream", stream).finish(),
            C::Ack { stream, message, status } => {
                f.debug_struct("Ack").field("stream", stream).field("message", message).field("status", status).finish()
            }
            C::Get { object, name } => f.debug_struct("Get").field("object", object).field("name", name).finish(),
            C::Put { object, stream, mimetype, name } => f
                .debug_struct("Put")
                .field("object", object)
                .field("stream", stream)
                .field("mimetype", mimetype)
                .field("name", name)
                .finish(),
            C::Touch { id, x, y, rx, ry, angle, force } => f
                .debug_struct("Touch")
                .field("id", id)
                .field("x", x)
                .field("y", y)
                .field("rx", rx)
                .field("ry", ry)
                .field("angle", angle)
                .field("force", force)
                .finish(),
            C::Nop => f.write_str("Nop"),
            C::Disconnect => f.write_str("Disconnect"),
            C::Internal { args } => f.debug_struct("Internal").field("args", args).finish(),
            C::Unknown { opcode } => f.debug_struct("Unknown").field("opcode", opcode).finish(),
        }
    }
}

fn stream_debug(f: &mut fmt::Formatter<'_>, variant: &str, stream: u32, mimetype: &str, name: &str) -> fmt::Result {
    f.debug_struct(variant).field("stream", &stream).field("mimetype", &mimetype).field("name", &name).finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClientInstruction as C;

    fn parse(opcode: &str, args: &[&str]) -> Result<ClientInstruction, InstructionError> {
        ClientInstruction::parse(&Instruction::new(opcode, args))
    }

    fn arity(opcode: &str, expected: &'static str, got: usize) -> InstructionError {
        InstructionError::WrongArity { opcode: opcode.to_owned(), expected, got }
    }

    fn bad(opcode: &str, index: usize) -> InstructionError {
        InstructionError::BadNumber { opcode: opcode.to_owned(), index }
    }

    #[test]
    fn handshake_instructions() {
        assert_eq!(parse("select", &["vnc"]), Ok(C::Select { target: "vnc".into() }));
        assert_eq!(parse("size", &["1024", "768", "96"]), Ok(C::Size { width: 1024, height: 768, dpi: Some(96) }));
        assert_eq!(parse("size", &["800", "600"]), Ok(C::Size { width: 800, height: 600, dpi: None }));
        assert_eq!(
            parse("audio", &["audio/L16", "audio/L8"]),
            Ok(C::Audio { mimetypes: vec!["audio/L16".into(), "audio/L8".into()] })
        );
        assert_eq!(parse("video", &[]), Ok(C::Video { mimetypes: vec![] }));
        assert_eq!(parse("image", &["image/webp"]), Ok(C::Image { mimetypes: vec!["image/webp".into()] }));
        assert_eq!(parse("timezone", &["Europe/Paris"]), Ok(C::Timezone { name: "Europe/Paris".into() }));
        assert_eq!(parse("name", &["José"]), Ok(C::Name { name: "José".into() }));
    }

    #[test]
    fn connect_versions() {
        assert_eq!(
            parse("connect", &["VERSION_1_5_0", "localhost", "5900"]),
            Ok(C::Connect { version: ProtocolVersion::V1_5_0, values: vec!["localhost".into(), "5900".into()] })
        );
        // A pre-1.1 client sends no version: every value is a parameter.
        assert_eq!(
            parse("connect", &["localhost", "5900"]),
            Ok(C::Connect { version: ProtocolVersion::V1_0_0, values: vec!["localhost".into(), "5900".into()] })
        );
        assert_eq!(
            parse("connect", &["", "5900"]),
            Ok(C::Connect { version: ProtocolVersion::V1_0_0, values: vec!["".into(), "5900".into()] })
        );
        assert_eq!(parse("connect", &[]), Ok(C::Connect { version: ProtocolVersion::V1_0_0, values: vec![] }));
        assert_eq!(
            parse("connect", &["VERSION_1_1_0"]),
            Ok(C::Connect { version: ProtocolVersion::V1_1_0, values: vec![] })
        );
    }

    #[test]
    fn runtime_instructions() {
        assert_eq!(parse("sync", &["1234"]), Ok(C::Sync { timestamp: 1234 }));
        assert_eq!(parse("sync", &["1234", "2"]), Ok(C::Sync { timestamp: 1234 }));
        assert_eq!(parse("mouse", &["-5", "10", "1"]), Ok(C::Mouse { x: -5, y: 10, mask: 1 }));
        assert_eq!(parse("mouse", &["5", "10", "0", "123456"]), Ok(C::Mouse { x: 5, y: 10, mask: 0 }));
        assert_eq!(parse("key", &["65307", "1"]), Ok(C::Key { keysym: 65307, pressed: true }));
        assert_eq!(parse("key", &["97", "0"]), Ok(C::Key { keysym: 97, pressed: false }));
        assert_eq!(
            parse("clipboard", &["2", "text/plain"]),
            Ok(C::Clipboard { stream: 2, mimetype: "text/plain".into() })
        );
        assert_eq!(
            parse("file", &["4", "application/pdf", "a.pdf"]),
            Ok(C::File { stream: 4, mimetype: "application/pdf".into(), name: "a.pdf".into() })
        );
        assert_eq!(
            parse("pipe", &["4", "text/plain", "cliprdr"]),
            Ok(C::Pipe { stream: 4, mimetype: "text/plain".into(), name: "cliprdr".into() })
        );
        assert_eq!(
            parse("argv", &["6", "text/plain", "password"]),
            Ok(C::Argv { stream: 6, mimetype: "text/plain".into(), name: "password".into() })
        );
        assert_eq!(parse("blob", &["2", "aGk="]), Ok(C::Blob { stream: 2, data: b"hi".to_vec() }));
        assert_eq!(parse("blob", &["2", "aGk"]), Ok(C::Blob { stream: 2, data: b"hi".to_vec() }));
        assert_eq!(parse("blob", &["2", ""]), Ok(C::Blob { stream: 2, data: vec![] }));
        assert_eq!(parse("end", &["2"]), Ok(C::End { stream: 2 }));
        assert_eq!(parse("ack", &["1", "OK", "0"]), Ok(C::Ack { stream: 1, message: "OK".into(), status: 0 }));
        assert_eq!(parse("get", &["0", "/"]), Ok(C::Get { object: 0, name: "/".into() }));
        assert_eq!(
            parse("put", &["0", "3", "text/plain", "/a.txt"]),
            Ok(C::Put { object: 0, stream: 3, mimetype: "text/plain".into(), name: "/a.txt".into() })
        );
        assert_eq!(
            parse("touch", &["0", "10", "20", "5", "5", "0.5", "1"]),
            Ok(C::Touch { id: 0, x: 10, y: 20, rx: 5, ry: 5, angle: 0.5, force: 1.0 })
        );
        assert_eq!(parse("nop", &[]), Ok(C::Nop));
        assert_eq!(parse("disconnect", &[]), Ok(C::Disconnect));
        assert_eq!(
            parse("", &["ping", "1700000000000"]),
            Ok(C::Internal { args: vec!["ping".into(), "1700000000000".into()] })
        );
        assert_eq!(parse("usbconnect", &["1"]), Ok(C::Unknown { opcode: "usbconnect".into() }));
    }

    #[test]
    fn runtime_audio_is_a_stream() {
        let i = Instruction::new("audio", &["1", "audio/L16;rate=44100,channels=2"]);
        assert_eq!(
            ClientInstruction::parse_runtime(&i),
            Ok(C::AudioInput { stream: 1, mimetype: "audio/L16;rate=44100,channels=2".into() })
        );
        let i = Instruction::new("audio", &["audio/L16"]);
        assert_eq!(ClientInstruction::parse_runtime(&i), Err(arity("audio", "2", 1)));
        // Other opcodes parse the same in both phases.
        let i = Instruction::new("key", &["1", "1"]);
        assert_eq!(ClientInstruction::parse_runtime(&i), ClientInstruction::parse(&i));
    }

    #[test]
    fn arity_errors() {
        assert_eq!(parse("select", &[]), Err(arity("select", "1", 0)));
        assert_eq!(parse("select", &["a", "b"]), Err(arity("select", "1", 2)));
        assert_eq!(parse("size", &["1"]), Err(arity("size", "2 or 3", 1)));
        assert_eq!(parse("size", &["1", "2", "3", "4"]), Err(arity("size", "2 or 3", 4)));
        assert_eq!(parse("timezone", &[]), Err(arity("timezone", "1", 0)));
        assert_eq!(parse("name", &[]), Err(arity("name", "1", 0)));
        assert_eq!(parse("sync", &[]), Err(arity("sync", "1 or 2", 0)));
        assert_eq!(parse("mouse", &["1", "2"]), Err(arity("mouse", "at least 3", 2)));
        assert_eq!(parse("key", &["1"]), Err(arity("key", "2", 1)));
        assert_eq!(parse("key", &["1", "1", "1"]), Err(arity("key", "2", 3)));
        assert_eq!(parse("clipboard", &["1"]), Err(arity("clipboard", "2", 1)));
        assert_eq!(parse("file", &["1", "a"]), Err(arity("file", "3", 2)));
        assert_eq!(parse("pipe", &["1", "a"]), Err(arity("pipe", "3", 2)));
        assert_eq!(parse("argv", &["1", "a"]), Err(arity("argv", "3", 2)));
        assert_eq!(parse("blob", &["1"]), Err(arity("blob", "2", 1)));
        assert_eq!(parse("end", &[]), Err(arity("end", "1", 0)));
        assert_eq!(parse("ack", &["1", "OK"]), Err(arity("ack", "3", 2)));
        assert_eq!(parse("get", &["1"]), Err(arity("get", "2", 1)));
        assert_eq!(parse("put", &["1", "2", "a"]), Err(arity("put", "4", 3)));
        assert_eq!(parse("touch", &["1", "2", "3", "4", "5", "6"]), Err(arity("touch", "7", 6)));
        assert_eq!(parse("nop", &["x"]), Err(arity("nop", "0", 1)));
        assert_eq!(parse("disconnect", &["x"]), Err(arity("disconnect", "0", 1)));
    }

    #[test]
    fn number_errors() {
        assert_eq!(parse("size", &["-1", "768"]), Err(bad("size", 0)));
        assert_eq!(parse("size", &["1024", ""]), Err(bad("size", 1)));
        assert_eq!(parse("size", &["1024", "768", "x"]), Err(bad("size", 2)));
        assert_eq!(parse("sync", &["+5"]), Err(bad("sync", 0)));
        assert_eq!(parse("sync", &["1.5"]), Err(bad("sync", 0)));
        assert_eq!(parse("mouse", &["1", "2", "-1"]), Err(bad("mouse", 2)));
        assert_eq!(parse("mouse", &["99999999999", "2", "1"]), Err(bad("mouse", 0)));
        assert_eq!(parse("mouse", &["-", "2", "1"]), Err(bad("mouse", 0)));
        assert_eq!(parse("key", &["65307", "2"]), Err(bad("key", 1)));
        assert_eq!(parse("key", &["65307", "true"]), Err(bad("key", 1)));
        assert_eq!(parse("key", &["-1", "1"]), Err(bad("key", 0)));
        assert_eq!(parse("ack", &["1", "OK", "65536"]), Err(bad("ack", 2)));
        assert_eq!(parse("end", &["x"]), Err(bad("end", 0)));
        assert_eq!(parse("touch", &["0", "1", "2", "3", "4", "NaN", "1"]), Err(bad("touch", 5)));
        assert_eq!(parse("touch", &["0", "1", "2", "3", "4", "0", "inf"]), Err(bad("touch", 6)));
        assert_eq!(parse("touch", &["0", "1", "2", "3", "4", "1e999", "1"]), Err(bad("touch", 5)));
        assert_eq!(parse("blob", &["3", "!!!"]), Err(InstructionError::BadBase64 { stream: 3 }));
    }

    #[test]
    fn debug_hides_secrets() {
        let c = parse("connect", &["VERSION_1_5_0", "host", "hunter2"]).unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<2 values redacted>"), "{text}");
        let b = parse("blob", &["1", "aGk="]).unwrap();
        assert_eq!(format!("{b:?}"), "Blob { stream: 1, data: <2 bytes> }");
        assert_eq!(format!("{:?}", parse("key", &["65", "1"]).unwrap()), "Key { keysym: 65, pressed: true }");
    }
}
