//! An async Guacamole client over TCP, behaving like guacamole-common-js: it decodes every
//! instruction, keeps a [`Display`], echoes `sync`, acknowledges blobs and sends keep-alive `nop`s.
//!
//! A background task reads and applies server instructions; tests look at the result through
//! [`GuacClient::wait_until`] or [`GuacClient::state`]. Use `tokio::time::sleep` (never
//! `std::thread::sleep`) in tests: on a current-thread runtime the reader only runs while the test
//! awaits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use guac_proto::{Decoder, Instruction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::display::{decode_image, Display, Rect};
use crate::image::RgbImage;
use crate::keys::keysym_for_char;

/// Protocol version the client announces in `connect`.
pub const CLIENT_VERSION: &str = "VERSION_1_5_0";
/// Default time allowed for the whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// guacamole-common-js sends `nop` this often.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// At most this many received instructions are kept in [`ClientState::log`].
pub const LOG_LIMIT: usize = 200_000;

/// Errors of [`GuacClient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server sent `error`.
    #[error("server sent error (status {status}): {message}")]
    Server { message: String, status: u32 },
    /// The connection closed (or could not be used) while waiting for something.
    #[error("connection closed while waiting for {waiting_for}: {reason}; {summary}")]
    Closed { waiting_for: String, reason: String, summary: String },
    /// A wait ran out of time.
    #[error("timed out after {timeout:?} waiting for {waiting_for}; {summary}")]
    Timeout { waiting_for: String, timeout: Duration, summary: String },
    /// The server's instructions made no sense for the handshake.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("sending: {0}")]
    Send(String),
}

impl ClientError {
    /// The Guacamole status code, for [`ClientError::Server`].
    pub fn status(&self) -> Option<u32> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An `error` instruction received from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub message: String,
    /// The status code as sent; `u32::MAX` when it was not a number.
    pub status: u32,
    pub at: Instant,
}

/// One received instruction, as kept in [`ClientState::log`]. The payload of `blob` is replaced
/// by `<N base64 chars>`.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub opcode: String,
    pub args: Vec<String>,
}

/// A stream opened by the server (`img`, `clipboard`, `file`, `pipe`, `audio`, `video`, `argv`,
/// `body`).
#[derive(Clone, Debug)]
pub struct StreamData {
    pub index: i64,
    /// The opcode that opened it.
    pub kind: String,
    /// The opening instruction's arguments.
    pub args: Vec<String>,
    /// Decoded blob payloads, concatenated.
    pub data: Vec<u8>,
    pub blobs: u64,
    pub ended: bool,
}

/// An `ack` from the server (for a stream the client opened).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub stream: String,
    pub message: String,
    pub status: String,
}

/// Everything the client has seen. Fields are public so tests can assert on anything.
#[derive(Debug)]
pub struct ClientState {
    pub display: Display,
    /// Number of `sync` instructions received (frames).
    pub frames: u64,
    /// Arrival time of each `sync`.
    pub sync_times: Vec<Instant>,
    /// Timestamp argument of each `sync`.
    pub sync_timestamps: Vec<String>,
    /// First element of `args`.
    pub server_version: Option<String>,
    /// Parameter names from `args` (version removed).
    pub arg_names: Option<Vec<String>>,
    pub ready_id: Option<String>,
    pub ready_at: Option<Instant>,
    /// Every `error` received, in order.
    pub errors: Vec<ServerError>,
    pub disconnect_received: Option<Instant>,
    /// The server closed the connection (EOF) or reading failed.
    pub closed: bool,
    pub closed_at: Option<Instant>,
    /// "eof" or the read error.
    pub close_reason: Option<String>,
    /// The server sent bytes that are not valid Guacamole (or exceed guacd's limits).
    pub decode_error: Option<String>,
    pub write_error: Option<String>,
    /// Instructions with missing or non-numeric arguments.
    pub malformed: Vec<String>,
    /// How often each opcode arrived.
    pub opcode_counts: BTreeMap<String, u64>,
    /// Instructions with an opcode this client does not know.
    pub unknown: Vec<Received>,
    /// Every instruction received (up to [`LOG_LIMIT`]).
    pub log: Vec<Received>,
    pub log_overflow: bool,
    pub nops: u64,
    /// `msg` instructions (arguments).
    pub msgs: Vec<Vec<String>>,
    /// `required` instructions (arguments).
    pub required: Vec<Vec<String>>,
    /// `ack`s from the server.
    pub acks: Vec<Ack>,
    /// `mouse` from the server: x, y, mask.
    pub mouse: Option<(i64, i64, i64)>,
    /// `name` from the server.
    pub name: Option<String>,
    /// Streams still open.
    pub open_streams: BTreeMap<i64, StreamData>,
    /// Non-image streams that ended.
    pub finished_streams: Vec<StreamData>,
    /// Objects the server announced with `filesystem` (index → name) and has not undefined.
    pub filesystems: BTreeMap<i64, String>,
    /// Images that failed to decode, blobs for unknown streams, bad base64.
    pub image_errors: Vec<String>,
    pub bytes_received: u64,
    pub connected_at: Instant,
    /// Echo `sync` (default true). Turn off to simulate a client that stops acknowledging frames.
    pub auto_sync: bool,
    /// Answer blobs with `ack` (default true).
    pub auto_ack: bool,
    /// Send `nop` every [`KEEP_ALIVE_INTERVAL`] (default true).
    pub auto_nop: bool,
}

impl ClientState {
    fn new() -> Self {
        ClientState {
            display: Display::new(),
            frames: 0,
            sync_times: Vec::new(),
            sync_timestamps: Vec::new(),
            server_version: None,
            arg_names: None,
            ready_id: None,
            ready_at: None,
            errors: Vec::new(),
            disconnect_received: None,
            closed: false,
            closed_at: None,
            close_reason: None,
            decode_error: None,
            write_error: None,
            malformed: Vec::new(),
            opcode_counts: BTreeMap::new(),
            unknown: Vec::new(),
            log: Vec::new(),
            log_overflow: false,
            nops: 0,
            msgs: Vec::new(),
            required: Vec::new(),
            acks: Vec::new(),
            mouse: None,
            name: None,
            open_streams: BTreeMap::new(),
            finished_streams: Vec::new(),
            filesystems: BTreeMap::new(),
            image_errors: Vec::new(),
            bytes_received: 0,
            connected_at: Instant::now(),
            auto_sync: true,
            auto_ack: true,
            auto_nop: true,
        }
    }

    /// The last `error` received.
    pub fn last_error(&self) -> Option<&ServerError> {
        self.errors.last()
    }

    /// How many instructions with this opcode arrived.
    pub fn count(&self, opcode: &str) -> u64 {
        self.opcode_counts.get(opcode).copied().unwrap_or(0)
    }

    /// What the user would see (see [`Display::screenshot`]).
    pub fn screenshot(&self) -> RgbImage {
        self.display.screenshot()
    }

    /// A one-line description for failure messages.
    pub fn summary(&self) -> String {
        let (w, h) = self.display.size();
        let mut s = format!(
            "state: ready={} frames={} layer0={}x{} bytes_received={} closed={}",
            self.ready_id.as_deref().unwrap_or("-"),
            self.frames,
            w,
            h,
            self.bytes_received,
            self.closed
        );
        if let Some(r) = &self.close_reason {
            s.push_str(&format!(" ({r}, {:?} after connect)", self.closed_at.map(|t| t - self.connected_at)));
        }
        if let Some(e) = self.last_error() {
            s.push_str(&format!(" last_error=[{} {:?}]", e.status, e.message));
        }
        if self.disconnect_received.is_some() {
            s.push_str(" disconnect_received");
        }
        if let Some(e) = &self.decode_error {
            s.push_str(&format!(" decode_error={e:?}"));
        }
        if let Some(e) = &self.write_error {
            s.push_str(&format!(" write_error={e:?}"));
        }
        if !self.image_errors.is_empty() {
            s.push_str(&format!(" image_errors={:?}", &self.image_errors[..self.image_errors.len().min(3)]));
        }
        if !self.malformed.is_empty() {
            s.push_str(&format!(" malformed={:?}", &self.malformed[..self.malformed.len().min(3)]));
        }
        let tail: Vec<String> = self
            .log
            .iter()
            .rev()
            .take(8)
            .rev()
            .map(|r| {
                let mut t = r.opcode.clone();
                for a in r.args.iter().take(6) {
                    t.push(' ');
                    if a.len() > 40 {
                        t.push_str(&a[..a.char_indices().nth(40).map_or(a.len(), |(i, _)| i)]);
                        t.push('…');
                    } else {
                        t.push_str(a);
                    }
                }
                t
            })
            .collect();
        s.push_str(&format!(" last instructions: {tail:?}"));
        s
    }

    fn record(&mut self, ins: &Instruction, at: Instant) -> Received {
        let opcode = ins.opcode().to_owned();
        let args: Vec<String> = if opcode == "blob" {
            let mut v: Vec<String> = ins.args().take(1).map(str::to_owned).collect();
            v.push(format!("<{} base64 chars>", ins.arg(1).map_or(0, str::len)));
            v
        } else {
            ins.args().map(str::to_owned).collect()
        };
        Received { at, opcode, args }
    }

    /// Applies one server instruction; replies (sync echo, acks) are appended to `replies`.
    fn apply(&mut self, ins: &Instruction, at: Instant, replies: &mut BytesMut) {
        let op = ins.opcode();
        *self.opcode_counts.entry(op.to_owned()).or_insert(0) += 1;
        if self.log.len() < LOG_LIMIT {
            let rec = self.record(ins, at);
            self.log.push(rec);
        } else {
            self.log_overflow = true;
        }
        if let Err(why) = self.apply_inner(ins, at, replies) {
            self.malformed.push(format!("{op}: {why}"));
        }
    }

    fn apply_inner(&mut self, ins: &Instruction, at: Instant, replies: &mut BytesMut) -> Result<(), String> {
        let s = |i: usize| ins.arg(i).ok_or_else(|| format!("missing argument {i}"));
        let int = |i: usize| -> Result<i64, String> {
            let v = s(i)?;
            v.parse::<i64>().map_err(|_| format!("argument {i} {v:?} is not an integer"))
        };
        let u32_arg = |i: usize| -> Result<u32, String> {
            let v = int(i)?;
            u32::try_from(v).map_err(|_| format!("argument {i} {v} out of range"))
        };
        let u8_arg = |i: usize| -> Result<u8, String> {
            let v = int(i)?;
            u8::try_from(v).map_err(|_| format!("argument {i} {v} out of range"))
        };
        match ins.opcode() {
            "args" => {
                let mut it = ins.args();
                self.server_version = it.next().map(str::to_owned);
                self.arg_names = Some(it.map(str::to_owned).collect());
            }
            "ready" => {
                self.ready_id = Some(s(0)?.to_owned());
                self.ready_at = Some(at);
            }
            "size" => {
                let (layer, w, h) = (int(0)?, u32_arg(1)?, u32_arg(2)?);
                if w > 16384 || h > 16384 {
                    return Err(format!("layer size {w}x{h} too large"));
                }
                self.display.size_layer(layer, w, h);
            }
            "img" => {
                let index = int(0)?;
                let (_mode, _layer, _x, _y) = (u32_arg(1)?, int(2)?, int(4)?, int(5)?);
                s(3)?;
                self.open_stream(index, ins);
            }
            "clipboard" | "file" | "pipe" | "audio" | "argv" => {
                let index = int(0)?;
                self.open_stream(index, ins);
            }
            "video" => {
                let index = int(0)?;
                self.open_stream(index, ins);
            }
            "body" => {
                let index = int(1)?;
                self.open_stream(index, ins);
            }
            "blob" => {
                let index = int(0)?;
                let data = s(1)?;
                let Some(stream) = self.open_streams.get_mut(&index) else {
                    self.image_errors.push(format!("blob for unknown stream {index}"));
                    return Ok(());
                };
                match base64::engine::general_purpose::STANDARD.decode(data) {
                    Ok(bytes) => stream.data.extend_from_slice(&bytes),
                    Err(e) => self.image_errors.push(format!("stream {index}: bad base64: {e}")),
                }
                stream.blobs += 1;
                if self.auto_ack {
                    guac_proto::encode_instruction(replies, "ack", &[&index.to_string(), "OK", "0"]);
                }
            }
            "end" => {
                let index = int(0)?;
                let Some(mut stream) = self.open_streams.remove(&index) else {
                    self.image_errors.push(format!("end for unknown stream {index}"));
                    return Ok(());
                };
                stream.ended = true;
                if stream.kind == "img" {
                    self.finish_image(&stream);
                } else {
                    self.finished_streams.push(stream);
                }
            }
            "copy" => {
                let (src, sx, sy, w, h) = (int(0)?, int(1)?, int(2)?, int(3)?, int(4)?);
                let (mode, dst, dx, dy) = (u32_arg(5)?, int(6)?, int(7)?, int(8)?);
                self.display.copy(src, sx, sy, w, h, mode, dst, dx, dy);
            }
            "rect" => {
                let r = Rect { x: int(1)?, y: int(2)?, w: int(3)?, h: int(4)? };
                self.display.rect(int(0)?, r);
            }
            "cfill" => {
                let (mode, layer) = (u32_arg(0)?, int(1)?);
                let rgba = [u8_arg(2)?, u8_arg(3)?, u8_arg(4)?, u8_arg(5)?];
                self.display.cfill(mode, layer, rgba);
            }
            "cursor" => {
                let (hx, hy, src, sx, sy, w, h) = (int(0)?, int(1)?, int(2)?, int(3)?, int(4)?, int(5)?, int(6)?);
                self.display.set_cursor(hx, hy, src, sx, sy, w, h);
            }
            "dispose" => self.display.dispose(int(0)?),
            "move" => {
                let (layer, parent, x, y, z) = (int(0)?, int(1)?, int(2)?, int(3)?, int(4)?);
                self.display.move_layer(layer, parent, x, y, z);
            }
            "shade" => {
                let (layer, opacity) = (int(0)?, u8_arg(1)?);
                self.display.shade(layer, opacity);
            }
            "sync" => {
                let ts = s(0)?.to_owned();
                self.frames += 1;
                self.sync_times.push(at);
                if self.auto_sync {
                    guac_proto::encode_instruction(replies, "sync", &[&ts]);
                }
                self.sync_timestamps.push(ts);
            }
            "error" => {
                let message = s(0)?.to_owned();
                let status = ins.arg(1).and_then(|v| v.parse().ok()).unwrap_or(u32::MAX);
                self.errors.push(ServerError { message, status, at });
            }
            "disconnect" => self.disconnect_received = Some(at),
            "nop" => self.nops += 1,
            "msg" => self.msgs.push(ins.args().map(str::to_owned).collect()),
            "required" => self.required.push(ins.args().map(str::to_owned).collect()),
            "ack" => {
                self.acks.push(Ack { stream: s(0)?.to_owned(), message: s(1)?.to_owned(), status: s(2)?.to_owned() })
            }
            "mouse" => self.mouse = Some((int(0)?, int(1)?, int(2)?)),
            "name" => self.name = Some(s(0)?.to_owned()),
            // Known, nothing to draw: kept in the log only.
            "filesystem" => {
                self.filesystems.insert(int(0)?, s(1)?.to_owned());
            }
            "undefine" => {
                self.filesystems.remove(&int(0)?);
            }
            "set" | "log" | "clip" | "push" | "pop" | "reset" | "identity" | "transform" | "distort" | "arc"
            | "curve" | "line" | "close" | "start" | "cstroke" | "lstroke" | "lfill" | "nest" | "key" | "touch" => {}
            _ => {
                let rec = self.record(ins, at);
                self.unknown.push(rec);
            }
        }
        Ok(())
    }

    fn open_stream(&mut self, index: i64, ins: &Instruction) {
        self.open_streams.insert(
            index,
            StreamData {
                index,
                kind: ins.opcode().to_owned(),
                args: ins.args().map(str::to_owned).collect(),
                data: Vec::new(),
                blobs: 0,
                ended: false,
            },
        );
    }

    fn finish_image(&mut self, stream: &StreamData) {
        // img stream mode layer mimetype x y
        let arg = |i: usize| stream.args.get(i).map(String::as_str).unwrap_or("");
        let mode = arg(1).parse::<u32>().unwrap_or(crate::display::MODE_SRC_OVER);
        let layer = arg(2).parse::<i64>().unwrap_or(0);
        let mimetype = arg(3);
        let x = arg(4).parse::<i64>().unwrap_or(0);
        let y = arg(5).parse::<i64>().unwrap_or(0);
        match decode_image(mimetype, &stream.data) {
            Ok(img) => self.display.draw_image(layer, mode, x, y, &img),
            Err(e) => self.image_errors.push(format!(
                "stream {} ({mimetype}, {} bytes): {e:#}",
                stream.index,
                stream.data.len()
            )),
        }
    }
}

impl ClientState {
    /// Plays a session recording (guacd's format: the instructions the server sent, plus recorded input)
    /// through this client's compositor, as `Guacamole.SessionRecording` does, and returns the final
    /// state. Stops at the first incomplete or undecodable instruction, as a player does with a file cut
    /// off mid-write. Nothing is answered (no `sync` echo, no `ack`).
    pub fn replay(recording: &[u8]) -> ClientState {
        let mut state = ClientState::new();
        state.auto_sync = false;
        state.auto_ack = false;
        let mut decoder = Decoder::new();
        decoder.feed(recording);
        let mut replies = BytesMut::new();
        let at = Instant::now();
        loop {
            match decoder.decode() {
                Ok(Some(ins)) => state.apply(&ins, at, &mut replies),
                Ok(None) => break,
                Err(e) => {
                    state.decode_error = Some(e.to_string());
                    break;
                }
            }
        }
        state
    }
}

struct Shared {
    state: Mutex<ClientState>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Outgoing {
    Data(Bytes, Option<oneshot::Sender<Result<(), String>>>),
    Shutdown(oneshot::Sender<Result<(), String>>),
}

/// What the client sends during the handshake. [`HandshakeOptions::new`] gives what
/// guacamole-common-js would send for a 1024x768 display.
#[derive(Clone, Debug)]
pub struct HandshakeOptions {
    /// Protocol name (`vnc`) or connection ID to join (`$uuid`).
    pub select: String,
    /// Parameter values by name; names not in `args` are sent nowhere.
    pub params: Vec<(String, String)>,
    pub width: u32,
    pub height: u32,
    pub dpi: u32,
    pub audio: Vec<String>,
    pub video: Vec<String>,
    pub image: Vec<String>,
    pub timezone: Option<String>,
    pub name: Option<String>,
    /// First value of `connect`.
    pub version: String,
    /// Fail when a parameter name is not in the server's `args` (default true: catches typos).
    pub reject_unknown_params: bool,
    pub timeout: Duration,
}

impl HandshakeOptions {
    pub fn new(select: &str) -> Self {
        HandshakeOptions {
            select: select.to_owned(),
            params: Vec::new(),
            width: 1024,
            height: 768,
            dpi: 96,
            audio: Vec::new(),
            video: Vec::new(),
            image: vec!["image/png".into(), "image/jpeg".into(), "image/webp".into()],
            timezone: Some("UTC".into()),
            name: Some("test".into()),
            version: CLIENT_VERSION.into(),
            reject_unknown_params: true,
            timeout: HANDSHAKE_TIMEOUT,
        }
    }

    /// Adds a parameter.
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.params.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds parameters.
    pub fn params<K: AsRef<str>, V: AsRef<str>>(mut self, params: &[(K, V)]) -> Self {
        for (k, v) in params {
            self.params.push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        }
        self
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }
}

/// The Guacamole client. Dropping it closes the connection.
pub struct GuacClient {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Outgoing>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    peer: SocketAddr,
    local: SocketAddr,
}

impl Drop for GuacClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl std::fmt::Debug for GuacClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuacClient({} -> {})", self.local, self.peer)
    }
}

impl GuacClient {
    /// Connects (TCP, no TLS) and starts the background reader. Sends nothing yet.
    pub async fn connect(addr: SocketAddr) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr).await.map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().map_err(|source| ClientError::Connect { addr, source })?;
        let (rd, wr) = stream.into_split();
        let shared = Arc::new(Shared { state: Mutex::new(ClientState::new()), changed: Notify::new() });
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(reader_task(rd, shared.clone(), tx.clone()));
        let writer = tokio::spawn(writer_task(wr, rx, shared.clone()));
        Ok(GuacClient { shared, out: tx, reader, writer, peer: addr, local })
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Locks and returns the state. Do not hold the guard across an `.await`.
    pub fn state(&self) -> MutexGuard<'_, ClientState> {
        self.shared.lock()
    }

    /// Full handshake: `select`, wait for `args`, `size`/`audio`/`video`/`image`/`timezone`/`name`,
    /// `connect VERSION_1_5_0 <one value per arg name>`, wait for `ready`. Returns the connection ID.
    /// An `error` from the server gives [`ClientError::Server`] with its status.
    pub async fn handshake<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        protocol: &str,
        params: &[(K, V)],
        width: u32,
        height: u32,
    ) -> Result<String, ClientError> {
        let opts = HandshakeOptions::new(protocol).params(params).size(width, height);
        self.handshake_with(&opts).await
    }

    /// [`GuacClient::handshake`] with every detail configurable.
    pub async fn handshake_with(&mut self, opts: &HandshakeOptions) -> Result<String, ClientError> {
        let deadline = tokio::time::Instant::now() + opts.timeout;
        self.send("select", &[&opts.select]).await?;
        self.wait_handshake_step(deadline, opts.timeout, "args", |s| s.arg_names.is_some()).await?;
        let names = self.arg_names().unwrap_or_default();
        if opts.reject_unknown_params {
            for (k, _) in &opts.params {
                if !names.iter().any(|n| n == k) {
                    return Err(ClientError::Protocol(format!(
                        "parameter {k:?} is not among the {} names the server sent in args",
                        names.len()
                    )));
                }
            }
        }
        let mut buf = BytesMut::new();
        let (w, h, dpi) = (opts.width.to_string(), opts.height.to_string(), opts.dpi.to_string());
        guac_proto::encode_instruction(&mut buf, "size", &[&w, &h, &dpi]);
        fn strs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        guac_proto::encode_instruction(&mut buf, "audio", &strs(&opts.audio));
        guac_proto::encode_instruction(&mut buf, "video", &strs(&opts.video));
        guac_proto::encode_instruction(&mut buf, "image", &strs(&opts.image));
        if let Some(tz) = &opts.timezone {
            guac_proto::encode_instruction(&mut buf, "timezone", &[tz]);
        }
        if let Some(name) = &opts.name {
            guac_proto::encode_instruction(&mut buf, "name", &[name]);
        }
        let mut values: Vec<&str> = vec![&opts.version];
        for n in &names {
            let v = opts.params.iter().rev().find(|(k, _)| k == n).map_or("", |(_, v)| v.as_str());
            values.push(v);
        }
        guac_proto::encode_instruction(&mut buf, "connect", &values);
        self.send_raw(&buf).await?;
        self.wait_handshake_step(deadline, opts.timeout, "ready", |s| s.ready_id.is_some()).await?;
        Ok(self.state().ready_id.clone().unwrap_or_default())
    }

    async fn wait_handshake_step(
        &self,
        deadline: tokio::time::Instant,
        timeout: Duration,
        what: &str,
        f: impl Fn(&ClientState) -> bool,
    ) -> Result<(), ClientError> {
        let r = self.wait_inner(what, deadline, timeout, |s| f(s) || !s.errors.is_empty()).await;
        let st = self.state();
        if let Some(e) = st.errors.first() {
            if !f(&st) {
                return Err(ClientError::Server { message: e.message.clone(), status: e.status });
            }
        }
        r
    }

    /// Parameter names received in `args` (without the version), once it arrived.
    pub fn arg_names(&self) -> Option<Vec<String>> {
        self.state().arg_names.clone()
    }

    /// The version the server sent as the first element of `args`.
    pub fn server_version(&self) -> Option<String> {
        self.state().server_version.clone()
    }

    /// Waits until `f(state)` is true. Fails after `timeout`, or as soon as the connection is closed
    /// while `f` is still false, with a summary of the state in the error.
    pub async fn wait_until<F: Fn(&ClientState) -> bool>(&self, timeout: Duration, f: F) -> Result<(), ClientError> {
        self.wait_until_named("a condition", timeout, f).await
    }

    /// [`GuacClient::wait_until`] with a description for the error message.
    pub async fn wait_until_named<F: Fn(&ClientState) -> bool>(
        &self,
        what: &str,
        timeout: Duration,
        f: F,
    ) -> Result<(), ClientError> {
        self.wait_inner(what, tokio::time::Instant::now() + timeout, timeout, f).await
    }

    async fn wait_inner<F: Fn(&ClientState) -> bool>(
        &self,
        what: &str,
        deadline: tokio::time::Instant,
        timeout: Duration,
        f: F,
    ) -> Result<(), ClientError> {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.shared.lock();
                if f(&st) {
                    return Ok(());
                }
                if st.closed {
                    return Err(ClientError::Closed {
                        waiting_for: what.to_owned(),
                        reason: st.close_reason.clone().unwrap_or_default(),
                        summary: st.summary(),
                    });
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let st = self.shared.lock();
                if f(&st) {
                    return Ok(());
                }
                return Err(ClientError::Timeout { waiting_for: what.to_owned(), timeout, summary: st.summary() });
            }
        }
    }

    /// Waits until at least `count` frames (`sync`) have arrived in total.
    pub async fn wait_frames(&self, count: u64, timeout: Duration) -> Result<(), ClientError> {
        self.wait_until_named(&format!("{count} frames"), timeout, |s| s.frames >= count).await
    }

    /// Waits until the server closes the connection.
    pub async fn wait_closed(&self, timeout: Duration) -> Result<(), ClientError> {
        self.wait_until_named("the server to close the connection", timeout, |s| s.closed).await
    }

    /// Number of frames (`sync`) so far.
    pub fn frames(&self) -> u64 {
        self.state().frames
    }

    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    pub fn last_error(&self) -> Option<ServerError> {
        self.state().last_error().cloned()
    }

    /// What the user sees now.
    pub fn screenshot(&self) -> RgbImage {
        self.state().screenshot()
    }

    /// Saves [`GuacClient::screenshot`] as PNG.
    pub fn save_png(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        self.screenshot().save_png(path)
    }

    /// Echo `sync` automatically (default true).
    pub fn set_auto_sync(&self, on: bool) {
        self.state().auto_sync = on;
    }

    /// Acknowledge blobs automatically (default true).
    pub fn set_auto_ack(&self, on: bool) {
        self.state().auto_ack = on;
    }

    /// Send keep-alive `nop` every 5 s (default true).
    pub fn set_auto_nop(&self, on: bool) {
        self.state().auto_nop = on;
    }

    /// Sends bytes as they are (garbage tests). Returns once they are written to the socket.
    pub async fn send_raw(&self, data: &[u8]) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.out
            .send(Outgoing::Data(Bytes::copy_from_slice(data), Some(tx)))
            .map_err(|_| ClientError::Send("writer task ended".into()))?;
        rx.await.map_err(|_| ClientError::Send("writer task ended".into()))?.map_err(ClientError::Send)
    }

    /// Sends one instruction.
    pub async fn send(&self, opcode: &str, args: &[&str]) -> Result<(), ClientError> {
        let mut buf = BytesMut::new();
        guac_proto::encode_instruction(&mut buf, opcode, args);
        self.send_raw(&buf).await
    }

    /// Uploads `data` on a stream the client opens with `opening` (`file` or `put` with its arguments,
    /// the stream index among them as `stream`), following the server's flow control: waits for the
    /// opening's `ack`, keeps at most `window` blobs of `blob_size` bytes unacknowledged, sends `end` and
    /// waits for its `ack`. Returns the first `ack` with a non-zero status, or the final one.
    pub async fn upload(
        &self,
        opening: (&str, &[&str]),
        stream: u32,
        data: &[u8],
        blob_size: usize,
        window: usize,
        timeout: Duration,
    ) -> Result<Ack, ClientError> {
        let index = stream.to_string();
        let acks = |st: &ClientState| st.acks.iter().filter(|a| a.stream == index).cloned().collect::<Vec<_>>();
        let base = acks(&self.state()).len();
        let failed = |list: &[Ack]| list.iter().skip(base).find(|a| a.status != "0").cloned();
        self.send(opening.0, opening.1).await?;
        let chunks: Vec<&[u8]> = data.chunks(blob_size.max(1)).collect();
        let mut sent: usize = 0;
        // Acks expected: one for the opening, one per blob, one for `end`.
        loop {
            let want = base + 1 + sent.saturating_sub(window.max(1) - 1);
            let what = format!("ack {} on upload stream {index}", want - base);
            self.wait_until_named(&what, timeout, |st| {
                let list = acks(st);
                list.len() >= want || failed(&list).is_some()
            })
            .await?;
            if let Some(ack) = failed(&acks(&self.state())) {
                return Ok(ack);
            }
            if sent == chunks.len() {
                break;
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(chunks[sent]);
            self.send("blob", &[&index, &b64]).await?;
            sent += 1;
        }
        let all = base + 1 + chunks.len();
        self.wait_until_named("acks for every blob", timeout, |st| {
            acks(st).len() >= all || failed(&acks(st)).is_some()
        })
        .await?;
        self.send("end", &[&index]).await?;
        self.wait_until_named("ack for end", timeout, |st| acks(st).len() > all || failed(&acks(st)).is_some()).await?;
        let list = acks(&self.state());
        Ok(failed(&list).unwrap_or_else(|| list[list.len() - 1].clone()))
    }

    /// `get object name`, then waits for the `body` stream it opens to end; returns it (its data
    /// concatenated; an `ack` the server sent on it, if any, is in [`ClientState::acks`]).
    pub async fn get(&self, object: i64, name: &str, timeout: Duration) -> Result<StreamData, ClientError> {
        let object_s = object.to_string();
        let matches = |d: &StreamData| {
            d.kind == "body" && d.args.first() == Some(&object_s) && d.args.get(3).map(String::as_str) == Some(name)
        };
        let seen = self.state().finished_streams.iter().filter(|d| matches(d)).count();
        self.send("get", &[&object_s, name]).await?;
        let what = format!("body stream for {name}");
        self.wait_until_named(&what, timeout, |st| st.finished_streams.iter().filter(|d| matches(d)).count() > seen)
            .await?;
        let st = self.state();
        Ok(st.finished_streams.iter().filter(|d| matches(d)).nth(seen).cloned().expect("waited for it"))
    }

    /// `key keysym pressed`.
    pub async fn send_key(&self, keysym: u32, pressed: bool) -> Result<(), ClientError> {
        self.send("key", &[&keysym.to_string(), if pressed { "1" } else { "0" }]).await
    }

    /// Press and release of each character, in one write (keysyms as guacamole-common-js sends
    /// them; see [`keysym_for_char`]).
    pub async fn type_text(&self, text: &str) -> Result<(), ClientError> {
        let mut buf = BytesMut::new();
        for c in text.chars() {
            let k = keysym_for_char(c).to_string();
            guac_proto::encode_instruction(&mut buf, "key", &[&k, "1"]);
            guac_proto::encode_instruction(&mut buf, "key", &[&k, "0"]);
        }
        self.send_raw(&buf).await
    }

    /// Like [`GuacClient::type_text`] with a pause after each character.
    pub async fn type_text_paced(&self, text: &str, pause: Duration) -> Result<(), ClientError> {
        for c in text.chars() {
            let k = keysym_for_char(c);
            self.send_key(k, true).await?;
            self.send_key(k, false).await?;
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }

    /// `mouse x y mask` (mask bits: 1 left, 2 middle, 4 right, 8 wheel up, 16 wheel down).
    pub async fn send_mouse(&self, x: i32, y: i32, mask: u32) -> Result<(), ClientError> {
        self.send("mouse", &[&x.to_string(), &y.to_string(), &mask.to_string()]).await
    }

    /// Runtime `size width height`.
    pub async fn send_size(&self, width: u32, height: u32) -> Result<(), ClientError> {
        self.send("size", &[&width.to_string(), &height.to_string()]).await
    }

    /// `sync timestamp` (by hand, e.g. with auto sync off).
    pub async fn send_sync(&self, timestamp: &str) -> Result<(), ClientError> {
        self.send("sync", &[timestamp]).await
    }

    /// Sends `disconnect` and closes the sending side (the reader keeps running until the server
    /// closes).
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.send("disconnect", &[]).await?;
        self.close_write().await
    }

    /// Half-closes the connection (TCP FIN) without sending anything.
    pub async fn close_write(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.out.send(Outgoing::Shutdown(tx)).map_err(|_| ClientError::Send("writer task ended".into()))?;
        rx.await.map_err(|_| ClientError::Send("writer task ended".into()))?.map_err(ClientError::Send)
    }
}

async fn reader_task(mut rd: OwnedReadHalf, shared: Arc<Shared>, out: mpsc::UnboundedSender<Outgoing>) {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let res = rd.read(&mut buf).await;
        let now = Instant::now();
        let n = match res {
            Ok(0) => {
                close(&shared, now, "eof".to_owned());
                break;
            }
            Ok(n) => n,
            Err(e) => {
                close(&shared, now, format!("read error: {e}"));
                break;
            }
        };
        decoder.feed(&buf[..n]);
        let mut replies = BytesMut::new();
        let mut failed = None;
        {
            let mut st = shared.lock();
            st.bytes_received += n as u64;
            loop {
                match decoder.decode() {
                    Ok(Some(ins)) => st.apply(&ins, now, &mut replies),
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        if !replies.is_empty() {
            let _ = out.send(Outgoing::Data(replies.freeze(), None));
        }
        if let Some(e) = failed {
            shared.lock().decode_error = Some(e.clone());
            close(&shared, now, format!("undecodable data from server: {e}"));
            break;
        }
        shared.changed.notify_waiters();
    }
}

fn close(shared: &Shared, at: Instant, reason: String) {
    {
        let mut st = shared.lock();
        st.closed = true;
        st.closed_at = Some(at);
        st.close_reason = Some(reason);
    }
    shared.changed.notify_waiters();
}

async fn writer_task(mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Outgoing>, shared: Arc<Shared>) {
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE_INTERVAL);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keep_alive.tick().await; // the first tick is immediate
    let mut shut = false;
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = keep_alive.tick() => {
                let send = { let st = shared.lock(); st.auto_nop && !st.closed };
                if send && !shut {
                    let mut b = BytesMut::new();
                    guac_proto::encode_instruction(&mut b, "nop", &[]);
                    Outgoing::Data(b.freeze(), None)
                } else {
                    continue;
                }
            }
        };
        match msg {
            Outgoing::Data(data, done) => {
                let r = if shut {
                    Err("connection already half-closed".to_owned())
                } else {
                    wr.write_all(&data).await.map_err(|e| e.to_string())
                };
                if let Err(e) = &r {
                    shared.lock().write_error.get_or_insert_with(|| e.clone());
                }
                if let Some(done) = done {
                    let _ = done.send(r);
                }
            }
            Outgoing::Shutdown(done) => {
                let r = wr.shutdown().await.map_err(|e| e.to_string());
                shut = true;
                let _ = done.send(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const JPEG_16X8_RED_BLUE: &str = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAIBAQEBAQIBAQECAgICAgQDAgICAgUEBAMEBgUGBgYFBgYGBwkIBgcJBwYGCAsICQoKCgoKBggLDAsKDAkKCgr/2wBDAQICAgICAgUDAwUKBwYHCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgr/wAARCAAIABADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwD5bryuiiv276E//M+/7lf/AHZP2D6Z/wDzIv8Aua/91z//2Q==";

    /// The server side of a scripted exchange.
    struct FakeServer {
        stream: TcpStream,
        decoder: Decoder,
    }

    impl FakeServer {
        async fn send(&mut self, opcode: &str, args: &[&str]) {
            let mut b = BytesMut::new();
            guac_proto::encode_instruction(&mut b, opcode, args);
            self.stream.write_all(&b).await.unwrap();
        }

        async fn recv(&mut self) -> Instruction {
            loop {
                if let Some(i) = self.decoder.decode().unwrap() {
                    return i;
                }
                let mut buf = [0u8; 4096];
                let n = self.stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed");
                self.decoder.feed(&buf[..n]);
            }
        }

        async fn expect(&mut self, opcode: &str) -> Vec<String> {
            let i = self.recv().await;
            assert_eq!(i.opcode(), opcode, "got {i:?}");
            i.args().map(str::to_owned).collect()
        }

        async fn blob_image(&mut self, stream: &str, layer: &str, mime: &str, x: &str, y: &str, data: &[u8]) {
            self.send("img", &[stream, "14", layer, mime, x, y]).await;
            let b64 = base64::engine::general_purpose::STANDARD;
            // Two blobs, split on a multiple of 3 bytes, like guacd.
            let cut = (data.len() / 2) / 3 * 3;
            self.send("blob", &[stream, &b64.encode(&data[..cut])]).await;
            self.send("blob", &[stream, &b64.encode(&data[cut..])]).await;
            self.send("end", &[stream]).await;
        }
    }

    async fn listen() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    async fn accept(l: &TcpListener) -> FakeServer {
        let (stream, _) = l.accept().await.unwrap();
        FakeServer { stream, decoder: Decoder::new() }
    }

    fn webp_8x8_green() -> Vec<u8> {
        let rgba: Vec<u8> = [10u8, 200, 30, 255].iter().copied().cycle().take(8 * 8 * 4).collect();
        let mut out = Vec::new();
        image_webp::WebPEncoder::new(&mut out).encode(&rgba, 8, 8, image_webp::ColorType::Rgba8).unwrap();
        out
    }

    #[tokio::test]
    async fn handshake_draws_and_acknowledges() {
        let (l, addr) = listen().await;
        let server = tokio::spawn(async move {
            let mut s = accept(&l).await;
            assert_eq!(s.expect("select").await, ["vnc"]);
            s.send("args", &["VERSION_1_5_0", "hostname", "port", "password", "read-only"]).await;
            assert_eq!(s.expect("size").await, ["64", "32", "96"]);
            s.expect("audio").await;
            s.expect("video").await;
            assert_eq!(s.expect("image").await, ["image/png", "image/jpeg", "image/webp"]);
            assert_eq!(s.expect("timezone").await, ["UTC"]);
            assert_eq!(s.expect("name").await, ["test"]);
            assert_eq!(s.expect("connect").await, ["VERSION_1_5_0", "127.0.0.1", "5902", "guacpass", ""]);
            s.send("ready", &["$conn"]).await;
            s.send("size", &["0", "64", "32"]).await;
            let png = crate::image::RgbImage::new(16, 16, [1, 2, 3]).to_png().unwrap();
            s.blob_image("1", "0", "image/png", "0", "0", &png).await;
            let jpeg = base64::engine::general_purpose::STANDARD.decode(JPEG_16X8_RED_BLUE).unwrap();
            s.blob_image("3", "-1", "image/jpeg", "0", "0", &jpeg).await;
            s.send("copy", &["-1", "0", "0", "16", "8", "14", "0", "16", "0"]).await;
            s.blob_image("5", "0", "image/webp", "32", "0", &webp_8x8_green()).await;
            s.send("rect", &["0", "48", "16", "16", "16"]).await;
            s.send("cfill", &["14", "0", "250", "250", "0", "255"]).await;
            s.send("cursor", &["1", "2", "-1", "0", "0", "4", "4"]).await;
            s.send("frobnicate", &["1"]).await;
            s.send("sync", &["1234", "1"]).await;
            // Two blobs per image: six acks, then the sync echo.
            for stream in ["1", "1", "3", "3", "5", "5"] {
                assert_eq!(s.expect("ack").await, [stream, "OK", "0"]);
            }
            assert_eq!(s.expect("sync").await, ["1234"]);
            s.expect("key").await // from type_text below
        });

        let mut c = GuacClient::connect(addr).await.unwrap();
        let params = [("hostname", "127.0.0.1"), ("port", "5902"), ("password", "guacpass")];
        let id = c.handshake("vnc", &params, 64, 32).await.unwrap();
        assert_eq!(id, "$conn");
        assert_eq!(c.server_version().as_deref(), Some("VERSION_1_5_0"));
        assert_eq!(c.arg_names().unwrap().len(), 4);
        c.wait_frames(1, Duration::from_secs(5)).await.unwrap();
        c.type_text("a").await.unwrap();
        let key = server.await.unwrap();
        assert_eq!(key, ["97", "1"]);

        let st = c.state();
        assert!(st.image_errors.is_empty(), "{:?}", st.image_errors);
        assert!(st.malformed.is_empty(), "{:?}", st.malformed);
        assert_eq!(st.unknown.len(), 1);
        assert_eq!(st.unknown[0].opcode, "frobnicate");
        let shot = st.screenshot();
        assert_eq!((shot.width, shot.height), (64, 32));
        assert_eq!(shot.pixel(5, 5), [1, 2, 3]);
        let near = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 12);
        assert!(near(shot.pixel(16 + 2, 4), [200, 40, 30]), "{:?}", shot.pixel(18, 4));
        assert!(near(shot.pixel(16 + 13, 4), [20, 60, 220]), "{:?}", shot.pixel(29, 4));
        assert_eq!(shot.pixel(35, 4), [10, 200, 30]);
        assert_eq!(shot.pixel(50, 20), [250, 250, 0]);
        assert_eq!(shot.pixel(50, 5), [0, 0, 0]);
        let cursor = st.display.cursor.as_ref().unwrap();
        assert_eq!((cursor.hotspot_x, cursor.width), (1, 4));
        assert_eq!(st.display.images_drawn.len(), 3);
    }

    #[tokio::test]
    async fn handshake_error_carries_status() {
        let (l, addr) = listen().await;
        tokio::spawn(async move {
            let mut s = accept(&l).await;
            s.expect("select").await;
            s.send("args", &["VERSION_1_5_0", "hostname"]).await;
            s.expect("size").await;
            loop {
                if s.recv().await.opcode() == "connect" {
                    break;
                }
            }
            s.send("error", &["Aborted. See logs.", "769"]).await;
            s.send("disconnect", &[]).await;
        });
        let mut c = GuacClient::connect(addr).await.unwrap();
        let params: [(&str, &str); 0] = [];
        let e = c.handshake("vnc", &params, 1024, 768).await.unwrap_err();
        assert_eq!(e.status(), Some(769), "{e}");
        c.wait_closed(Duration::from_secs(5)).await.unwrap();
        let st = c.state();
        assert!(st.disconnect_received.is_some());
        assert_eq!(st.close_reason.as_deref(), Some("eof"));
    }

    #[tokio::test]
    async fn unknown_param_typo_is_rejected_and_waits_fail_fast_on_close() {
        let (l, addr) = listen().await;
        tokio::spawn(async move {
            let mut s = accept(&l).await;
            s.expect("select").await;
            s.send("args", &["VERSION_1_5_0", "hostname"]).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        let mut c = GuacClient::connect(addr).await.unwrap();
        let e = c.handshake("vnc", &[("hostnme", "x")], 1024, 768).await.unwrap_err();
        assert!(matches!(e, ClientError::Protocol(_)), "{e}");
        let t = Instant::now();
        let e = c.wait_until(Duration::from_secs(30), |s| s.frames > 0).await.unwrap_err();
        assert!(matches!(e, ClientError::Closed { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(e.to_string().contains("last instructions"), "{e}");
    }

    #[tokio::test]
    async fn wait_until_times_out_with_summary() {
        let (l, addr) = listen().await;
        let _server = tokio::spawn(async move {
            let mut s = accept(&l).await;
            s.send("nop", &[]).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let c = GuacClient::connect(addr).await.unwrap();
        let e = c.wait_until_named("frames", Duration::from_millis(300), |s| s.frames > 0).await.unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("nop"), "{e}");
    }
}
