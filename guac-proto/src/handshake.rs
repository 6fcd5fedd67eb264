//! Sans-IO server side of the Guacamole handshake (section 2 of the wire reference).
//!
//! The driver decodes instructions, passes each one to [`ServerHandshake::handle`] with the current
//! time, writes what it is told to write, and fails the handshake once
//! [`ServerHandshake::poll_timeout`] has passed. Nothing here sleeps or reads a clock.
//!
//! ```
//! use std::time::Instant;
//! use guac_proto::handshake::{HandshakeEvent, Selection, ServerHandshake};
//! use guac_proto::Instruction;
//!
//! let now = Instant::now();
//! let mut hs = ServerHandshake::new(now);
//! let event = hs.handle(&Instruction::new("select", &["vnc"]), now).unwrap();
//! assert_eq!(event, HandshakeEvent::Selected(Selection::Protocol("vnc".into())));
//! let args = hs.send_args(&["hostname", "port"]);
//! assert_eq!(&args[..], b"4.args,13.VERSION_1_5_0,8.hostname,4.port;");
//! let connect = Instruction::new("connect", &["VERSION_1_5_0", "127.0.0.1", "5901"]);
//! let HandshakeEvent::Connected(request) = hs.handle(&connect, now).unwrap() else {
//!     panic!("handshake should be complete");
//! };
//! assert_eq!(request.param("port"), Some("5901"));
//! assert_eq!((request.width, request.height, request.dpi), (1024, 768, 96));
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::{encode, ClientInstruction, Instruction, InstructionError, ProtocolVersion};

/// Display width used when the client sends no `size`.
pub const DEFAULT_WIDTH: u32 = 1024;
/// Display height used when the client sends no `size`.
pub const DEFAULT_HEIGHT: u32 = 768;
/// Resolution used when the client sends no `size`, or a `size` without one.
pub const DEFAULT_DPI: u32 = 96;

/// What the client asked to connect to with `select`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selection {
    /// A protocol name such as `vnc`, `ssh` or `rdp`: a new connection.
    Protocol(String),
    /// A connection ID, `$<uuid>` (the `$` included): join that connection.
    Join(String),
}

impl Selection {
    fn from_target(target: String) -> Selection {
        if target.starts_with('$') {
            Selection::Join(target)
        } else {
            Selection::Protocol(target)
        }
    }

    /// The `select` argument as sent.
    pub fn as_str(&self) -> &str {
        match self {
            Selection::Protocol(s) | Selection::Join(s) => s,
        }
    }
}

/// Everything the client sent in a completed handshake.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    pub selection: Selection,
    pub client_version: ProtocolVersion,
    /// Parameter names from `args` zipped with the `connect` values, in `args` order.
    pub params: Vec<(String, String)>,
    /// From `size`, or [`DEFAULT_WIDTH`].
    pub width: u32,
    /// From `size`, or [`DEFAULT_HEIGHT`].
    pub height: u32,
    /// From `size`, or [`DEFAULT_DPI`].
    pub dpi: u32,
    /// Audio mimetypes the client can play.
    pub audio: Vec<String>,
    /// Video mimetypes the client can play.
    pub video: Vec<String>,
    /// Image mimetypes the client can decode (`image/webp` only if the browser supports it).
    pub image: Vec<String>,
    pub timezone: Option<String>,
    /// The user's display name.
    pub name: Option<String>,
}

impl ConnectRequest {
    /// The value the client gave for parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for ConnectRequest {
    /// Parameter values are redacted: they carry passwords and keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.params.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ConnectRequest")
            .field("selection", &self.selection)
            .field("client_version", &self.client_version)
            .field("params", &format_args!("<values redacted for {names:?}>"))
            .field("width", &self.width)
            .field("height", &self.height)
            .field("dpi", &self.dpi)
            .field("audio", &self.audio)
            .field("video", &self.video)
            .field("image", &self.image)
            .field("timezone", &self.timezone)
            .field("name", &self.name)
            .finish()
    }
}

/// What [`ServerHandshake::handle`] made of an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeEvent {
    /// Accepted; nothing to do until the next instruction.
    Pending,
    /// `select` arrived. Look the selection up (an unknown connection ID gets `error` 516), then
    /// send the bytes from [`ServerHandshake::send_args`].
    Selected(Selection),
    /// `connect` arrived: the handshake is complete.
    Connected(ConnectRequest),
}

/// Why the handshake failed. The connection should be closed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The first instruction was not `select`.
    #[error("expected select as first instruction, got {got:?}")]
    SelectNotFirst { got: String },
    /// An instruction not allowed between `select` and `connect`.
    #[error("unexpected {opcode:?} instruction during handshake")]
    UnexpectedInstruction { opcode: String },
    /// `connect` carried `got` values where `args` listed `expected` names. guacd sends `ready`
    /// before it checks this; the driver decides the order.
    #[error("connect has {got} values for {expected} parameters")]
    ConnectArity { expected: usize, got: usize },
    /// An allowed instruction with bad arguments.
    #[error(transparent)]
    Instruction(#[from] InstructionError),
    /// `connect` arrived before the driver called [`ServerHandshake::send_args`].
    #[error("connect received before args were sent")]
    ArgsNotSent,
    /// The deadline from [`ServerHandshake::poll_timeout`] passed.
    #[error("timed out waiting for {waiting_for}")]
    Timeout { waiting_for: &'static str },
    /// The handshake already completed or failed.
    #[error("handshake already finished")]
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitSelect,
    AwaitConnect,
    Connected,
    Failed,
}

/// State machine for the server side of the handshake: `select`, then `args` out, then the
/// optional `size`, `audio`, `video`, `image`, `timezone`, `name` and `nop`, then `connect`.
#[derive(Debug)]
pub struct ServerHandshake {
    state: State,
    deadline: Instant,
    selection: Option<Selection>,
    /// Parameter names sent in `args`; `None` until [`ServerHandshake::send_args`].
    names: Option<Vec<String>>,
    size: Option<(u32, u32, u32)>,
    audio: Vec<String>,
    video: Vec<String>,
    image: Vec<String>,
    timezone: Option<String>,
    name: Option<String>,
}

impl ServerHandshake {
    /// How long guacd waits for `select` after accepting.
    pub const SELECT_TIMEOUT: Duration = Duration::from_secs(15);
    /// How long guacd waits for each later handshake instruction.
    pub const INSTRUCTION_TIMEOUT: Duration = Duration::from_secs(15);

    /// A handshake for a connection accepted at `now`.
    pub fn new(now: Instant) -> Self {
        ServerHandshake {
            state: State::AwaitSelect,
            deadline: now + Self::SELECT_TIMEOUT,
            selection: None,
            names: None,
            size: None,
            audio: Vec::new(),
            video: Vec::new(),
            image: Vec::new(),
            timezone: None,
            name: None,
        }
    }

    /// The next deadline. Once it passes, the driver fails the handshake (or calls
    /// [`ServerHandshake::handle_timeout`], which says so). Meaningless once the handshake is
    /// complete.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// Fails the handshake if its deadline has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), HandshakeError> {
        let waiting_for = match self.state {
            State::AwaitSelect => "select",
            State::AwaitConnect => "connect",
            State::Connected | State::Failed => return Ok(()),
        };
        if now >= self.deadline {
            self.state = State::Failed;
            return Err(HandshakeError::Timeout { waiting_for });
        }
        Ok(())
    }

    /// Whether `connect` has been accepted.
    pub fn is_complete(&self) -> bool {
        self.state == State::Connected
    }

    /// Feeds one decoded instruction received at `now`. After an error the handshake is over and
    /// every later call returns [`HandshakeError::Finished`].
    pub fn handle(&mut self, instr: &Instruction, now: Instant) -> Result<HandshakeEvent, HandshakeError> {
        let result = match self.state {
            State::AwaitSelect => self.handle_select(instr),
            State::AwaitConnect => self.handle_optional(instr),
            State::Connected | State::Failed => return Err(HandshakeError::Finished),
        };
        match &result {
            Ok(HandshakeEvent::Connected(_)) => self.state = State::Connected,
            Ok(_) => self.deadline = now + Self::INSTRUCTION_TIMEOUT,
            Err(_) => self.state = State::Failed,
        }
        result
    }

    /// Records the parameter names for the selected protocol (or the joined connection) and
    /// returns the `args` instruction to send: [`ProtocolVersion::LATEST`], then the names.
    /// `connect` must carry one value per name.
    pub fn send_args(&mut self, names: &[&str]) -> Bytes {
        let mut buf = BytesMut::with_capacity(32 + names.iter().map(|n| n.len() + 8).sum::<usize>());
        names
            .iter()
            .fold(encode(&mut buf, "args").str(ProtocolVersion::LATEST.as_str()), |w, name| w.str(name))
            .finish();
        self.names = Some(names.iter().map(|&n| n.to_owned()).collect());
        buf.freeze()
    }

    fn handle_select(&mut self, instr: &Instruction) -> Result<HandshakeEvent, HandshakeError> {
        if instr.opcode() != "select" {
            return Err(HandshakeError::SelectNotFirst { got: instr.opcode().to_owned() });
        }
        let target = match ClientInstruction::parse(instr)? {
            ClientInstruction::Select { target } => target,
            _ => return Err(unexpected(instr)),
        };
        let selection = Selection::from_target(target);
        self.selection = Some(selection.clone());
        self.state = State::AwaitConnect;
        Ok(HandshakeEvent::Selected(selection))
    }

    fn handle_optional(&mut self, instr: &Instruction) -> Result<HandshakeEvent, HandshakeError> {
        const ALLOWED: &[&str] = &["size", "audio", "video", "image", "timezone", "name", "nop", "connect"];
        if !ALLOWED.contains(&instr.opcode()) {
            return Err(unexpected(instr));
        }
        match ClientInstruction::parse(instr)? {
            ClientInstruction::Size { width, height, dpi } => {
                self.size = Some((width, height, dpi.unwrap_or(DEFAULT_DPI)));
            }
            ClientInstruction::Audio { mimetypes } => self.audio = mimetypes,
            ClientInstruction::Video { mimetypes } => self.video = mimetypes,
            ClientInstruction::Image { mimetypes } => self.image = mimetypes,
            ClientInstruction::Timezone { name } => self.timezone = Some(name),
            ClientInstruction::Name { name } => self.name = Some(name),
            ClientInstruction::Nop => {}
            ClientInstruction::Connect { version, values } => {
                return self.connect(version, values).map(HandshakeEvent::Connected);
            }
            _ => return Err(unexpected(instr)),
        }
        Ok(HandshakeEvent::Pending)
    }

    fn connect(
        &mut self,
        client_version: ProtocolVersion,
        values: Vec<String>,
    ) -> Result<ConnectRequest, HandshakeError> {
        let names = self.names.take().ok_or(HandshakeError::ArgsNotSent)?;
        if names.len() != values.len() {
            return Err(HandshakeError::ConnectArity { expected: names.len(), got: values.len() });
        }
        let selection = self.selection.take().ok_or(HandshakeError::Finished)?;
        let (width, height, dpi) = self.size.unwrap_or((DEFAULT_WIDTH, DEFAULT_HEIGHT, DEFAULT_DPI));
        Ok(ConnectRequest {
            selection,
            client_version,
            params: names.into_iter().zip(values).collect(),
            width,
            height,
            dpi,
            audio: std::mem::take(&mut self.audio),
            video: std::mem::take(&mut self.video),
            image: std::mem::take(&mut self.image),
            timezone: self.timezone.take(),
            name: self.name.take(),
        })
    }
}

fn unexpected(instr: &Instruction) -> HandshakeError {
    HandshakeError::UnexpectedInstruction { opcode: instr.opcode().to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decoder;

    const VNC_NAMES: &[&str] = &["hostname", "port", "password", "read-only"];

    fn instr(opcode: &str, args: &[&str]) -> Instruction {
        Instruction::new(opcode, args)
    }

    /// Runs `select vnc` and sends `args`.
    fn selected(now: Instant) -> ServerHandshake {
        let mut hs = ServerHandshake::new(now);
        let event = hs.handle(&instr("select", &["vnc"]), now).unwrap();
        assert_eq!(event, HandshakeEvent::Selected(Selection::Protocol("vnc".into())));
        hs.send_args(VNC_NAMES);
        hs
    }

    #[test]
    fn full_transcript() {
        let now = Instant::now();
        let mut hs = ServerHandshake::new(now);
        let mut decoder = Decoder::new();
        decoder.feed(b"6.select,3.vnc;");
        let select = decoder.decode().unwrap().unwrap();
        assert_eq!(hs.handle(&select, now).unwrap(), HandshakeEvent::Selected(Selection::Protocol("vnc".into())));
        let args = hs.send_args(VNC_NAMES);
        assert_eq!(&args[..], b"4.args,13.VERSION_1_5_0,8.hostname,4.port,8.password,9.read-only;");

        // The client's answer, in one read, as guacamole-client sends it.
        decoder.feed(
            "4.size,4.1920,4.1080,3.120;5.audio,9.audio/L16;5.video;\
             5.image,9.image/png,10.image/jpeg,10.image/webp;8.timezone,13.Europe/Berlin;\
             4.name,4.José;3.nop;\
             7.connect,13.VERSION_1_5_0,9.127.0.0.1,4.5901,6.s3cr,t,0.;"
                .as_bytes(),
        );
        let mut events = Vec::new();
        while let Some(i) = decoder.decode().unwrap() {
            events.push(hs.handle(&i, now).unwrap());
        }
        assert_eq!(events.len(), 8);
        assert!(events[..7].iter().all(|e| *e == HandshakeEvent::Pending));
        let HandshakeEvent::Connected(request) = events.pop().unwrap() else {
            panic!("last event is not Connected");
        };
        assert_eq!(
            request,
            ConnectRequest {
                selection: Selection::Protocol("vnc".into()),
                client_version: ProtocolVersion::V1_5_0,
                params: vec![
                    ("hostname".into(), "127.0.0.1".into()),
                    ("port".into(), "5901".into()),
                    ("password".into(), "s3cr,t".into()),
                    ("read-only".into(), "".into()),
                ],
                width: 1920,
                height: 1080,
                dpi: 120,
                audio: vec!["audio/L16".into()],
                video: vec![],
                image: vec!["image/png".into(), "image/jpeg".into(), "image/webp".into()],
                timezone: Some("Europe/Berlin".into()),
                name: Some("José".into()),
            }
        );
        assert_eq!(request.param("password"), Some("s3cr,t"));
        assert_eq!(request.param("nope"), None);
        assert!(hs.is_complete());
        let debug = format!("{request:?}");
        assert!(!debug.contains("s3cr"), "{debug}");
        assert!(debug.contains("\"password\""), "{debug}");
        assert_eq!(hs.handle(&instr("nop", &[]), now), Err(HandshakeError::Finished));
    }

    #[test]
    fn defaults_without_optional_instructions() {
        let now = Instant::now();
        let mut hs = selected(now);
        let connect = instr("connect", &["VERSION_1_3_0", "h", "5900", "", "true"]);
        let HandshakeEvent::Connected(request) = hs.handle(&connect, now).unwrap() else {
            panic!("not connected");
        };
        assert_eq!((request.width, request.height, request.dpi), (1024, 768, 96));
        assert_eq!(request.client_version, ProtocolVersion::V1_3_0);
        assert!(request.audio.is_empty() && request.image.is_empty());
        assert_eq!((request.timezone, request.name), (None, None));
    }

    #[test]
    fn size_without_dpi() {
        let now = Instant::now();
        let mut hs = selected(now);
        hs.handle(&instr("size", &["800", "600"]), now).unwrap();
        let connect = instr("connect", &["VERSION_1_5_0", "h", "1", "p", "r"]);
        let HandshakeEvent::Connected(request) = hs.handle(&connect, now).unwrap() else {
            panic!("not connected");
        };
        assert_eq!((request.width, request.height, request.dpi), (800, 600, 96));
    }

    #[test]
    fn old_client_connect_without_version() {
        let now = Instant::now();
        let mut hs = selected(now);
        let connect = instr("connect", &["localhost", "5900", "pw", "false"]);
        let HandshakeEvent::Connected(request) = hs.handle(&connect, now).unwrap() else {
            panic!("not connected");
        };
        assert_eq!(request.client_version, ProtocolVersion::V1_0_0);
        assert_eq!(request.param("hostname"), Some("localhost"));
        assert_eq!(request.param("read-only"), Some("false"));
    }

    #[test]
    fn join_selection() {
        let now = Instant::now();
        let mut hs = ServerHandshake::new(now);
        let id = "$0f3c1d2e-0000-4000-8000-000000000000";
        assert_eq!(
            hs.handle(&instr("select", &[id]), now).unwrap(),
            HandshakeEvent::Selected(Selection::Join(id.into()))
        );
        hs.send_args(&["read-only"]);
        let HandshakeEvent::Connected(request) = hs.handle(&instr("connect", &["VERSION_1_5_0", "true"]), now).unwrap()
        else {
            panic!("not connected");
        };
        assert_eq!(request.selection, Selection::Join(id.into()));
        assert_eq!(request.selection.as_str(), id);
    }

    #[test]
    fn select_must_come_first() {
        let now = Instant::now();
        let mut hs = ServerHandshake::new(now);
        assert_eq!(
            hs.handle(&instr("size", &["1", "2"]), now),
            Err(HandshakeError::SelectNotFirst { got: "size".into() })
        );
        assert_eq!(hs.handle(&instr("select", &["vnc"]), now), Err(HandshakeError::Finished));
        let mut hs = ServerHandshake::new(now);
        assert_eq!(
            hs.handle(&instr("select", &[]), now),
            Err(HandshakeError::Instruction(InstructionError::WrongArity {
                opcode: "select".into(),
                expected: "1",
                got: 0
            }))
        );
    }

    #[test]
    fn unexpected_before_connect() {
        let now = Instant::now();
        for (opcode, args) in [
            ("mouse", &["1", "2", "0"][..]),
            ("key", &["1", "1"]),
            ("select", &["ssh"]),
            ("", &["ping", "1"]),
            ("bogus", &[]),
        ] {
            let mut hs = selected(now);
            assert_eq!(
                hs.handle(&instr(opcode, args), now),
                Err(HandshakeError::UnexpectedInstruction { opcode: opcode.into() })
            );
        }
        let mut hs = selected(now);
        assert_eq!(
            hs.handle(&instr("size", &["x", "1"]), now),
            Err(HandshakeError::Instruction(InstructionError::BadNumber { opcode: "size".into(), index: 0 }))
        );
    }

    #[test]
    fn connect_arity() {
        let now = Instant::now();
        let mut hs = selected(now);
        assert_eq!(
            hs.handle(&instr("connect", &["VERSION_1_5_0", "h", "1"]), now),
            Err(HandshakeError::ConnectArity { expected: 4, got: 2 })
        );
        assert!(!hs.is_complete());
    }

    #[test]
    fn connect_before_args() {
        let now = Instant::now();
        let mut hs = ServerHandshake::new(now);
        hs.handle(&instr("select", &["vnc"]), now).unwrap();
        assert_eq!(hs.handle(&instr("connect", &["VERSION_1_5_0"]), now), Err(HandshakeError::ArgsNotSent));
    }

    #[test]
    fn deadlines() {
        let start = Instant::now();
        let mut hs = ServerHandshake::new(start);
        assert_eq!(hs.poll_timeout(), start + ServerHandshake::SELECT_TIMEOUT);
        assert_eq!(hs.handle_timeout(start + Duration::from_secs(14)), Ok(()));

        let t1 = start + Duration::from_secs(10);
        hs.handle(&instr("select", &["vnc"]), t1).unwrap();
        hs.send_args(VNC_NAMES);
        assert_eq!(hs.poll_timeout(), t1 + ServerHandshake::INSTRUCTION_TIMEOUT);

        // Every accepted instruction pushes the deadline.
        let t2 = t1 + Duration::from_secs(10);
        hs.handle(&instr("nop", &[]), t2).unwrap();
        assert_eq!(hs.poll_timeout(), t2 + ServerHandshake::INSTRUCTION_TIMEOUT);

        assert_eq!(
            hs.handle_timeout(t2 + ServerHandshake::INSTRUCTION_TIMEOUT),
            Err(HandshakeError::Timeout { waiting_for: "connect" })
        );
        assert_eq!(hs.handle(&instr("nop", &[]), t2), Err(HandshakeError::Finished));

        let mut hs = ServerHandshake::new(start);
        assert_eq!(
            hs.handle_timeout(start + ServerHandshake::SELECT_TIMEOUT),
            Err(HandshakeError::Timeout { waiting_for: "select" })
        );
    }

    #[test]
    fn later_optional_instructions_replace_earlier_ones() {
        let now = Instant::now();
        let mut hs = selected(now);
        hs.handle(&instr("image", &["image/png"]), now).unwrap();
        hs.handle(&instr("image", &["image/webp"]), now).unwrap();
        hs.handle(&instr("size", &["1", "2", "3"]), now).unwrap();
        hs.handle(&instr("size", &["4", "5"]), now).unwrap();
        let HandshakeEvent::Connected(request) =
            hs.handle(&instr("connect", &["VERSION_1_5_0", "a", "b", "c", "d"]), now).unwrap()
        else {
            panic!("not connected");
        };
        assert_eq!(request.image, ["image/webp"]);
        assert_eq!((request.width, request.height, request.dpi), (4, 5, 96));
    }
}
