//! A sans-IO RFB client (RFC 6143): a state machine fed the bytes the server sent, producing [`Event`]s
//! and the bytes to send back. It never touches a socket or a clock, so every decoder and every hostile
//! input can be tested with byte vectors; the worker's driver does the I/O.
//!
//! Supported: protocol versions 3.3, 3.7 and 3.8; security types None, VNC Authentication and VeNCrypt's
//! unencrypted subtypes (Plain, VncAuth, None); encodings Raw, CopyRect, ZRLE and Tight (including JPEG);
//! pseudo-encodings Cursor, DesktopSize, ExtendedDesktopSize (with SetDesktopSize) and LastRect.
//!
//! Pixels are decoded straight into the caller's BGRX [`Surface`]: we ask the server for 32-bit true
//! colour, depth 24, little endian, red at bit 16, green 8, blue 0, so Raw rows are copied unchanged.
//!
//! Invariant: every length and rectangle from the server is checked against a bound before it is used; a
//! violation is an [`RfbError`], never a panic, an unbounded allocation or a write outside the surface.

mod auth;
mod surface;
mod tight;
mod wire;
mod zlib;
mod zrle;

use std::fmt;

use shm_proto::Rect;

pub use surface::Surface;
use surface::BPP;
use wire::{msg, need, put_u16, put_u32, Reader};

/// Encoding numbers (RFC 6143 §7.7, §7.8 and the community registry).
pub mod encoding {
    pub const RAW: i32 = 0;
    pub const COPY_RECT: i32 = 1;
    pub const TIGHT: i32 = 7;
    pub const ZRLE: i32 = 16;
    pub const CURSOR: i32 = -239;
    pub const DESKTOP_SIZE: i32 = -223;
    pub const LAST_RECT: i32 = -224;
    pub const EXTENDED_DESKTOP_SIZE: i32 = -308;
    /// Tight compression level `n` (0–9) is `COMPRESS_LEVEL_0 + n`.
    pub const COMPRESS_LEVEL_0: i32 = -256;
    /// Tight JPEG quality level `n` (0–9) is `QUALITY_LEVEL_0 + n`.
    pub const QUALITY_LEVEL_0: i32 = -32;
}

const SEC_NONE: u8 = 1;
const SEC_VNC: u8 = 2;
const SEC_VENCRYPT: u8 = 19;
const VENCRYPT_PLAIN: u32 = 256;

/// Longest failure reason or desktop name we read.
const MAX_STRING: usize = 64 * 1024;
/// Characters of such a string that we keep.
const MAX_SHOWN: usize = 256;
/// Largest cursor we accept from the server (larger ones are a protocol error).
pub const MAX_CURSOR_READ: u32 = 1024;

/// A secret that never appears in `Debug` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the client asks for and accepts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Encodings to advertise, in order of preference, pseudo-encodings included.
    pub encodings: Vec<i32>,
    /// Exchange red and blue (`swap-red-blue`).
    pub swap_red_blue: bool,
    /// Largest framebuffer accepted (the shared surface's size).
    pub max_width: u32,
    pub max_height: u32,
    /// Server cut text beyond this many bytes is dropped.
    pub max_cut_text: usize,
}

/// A cursor image from the Cursor pseudo-encoding (RFC 6143 §7.8.1), as BGRA with alpha 0 or 255.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorImage {
    pub hotspot_x: u32,
    pub hotspot_y: u32,
    pub width: u32,
    pub height: u32,
    pub bgra: Vec<u8>,
}

/// What the server did, in order. The caller must handle each event before polling for the next one
/// (a [`Event::Copy`] reads pixels that earlier rectangles wrote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// ServerInit arrived: the session is up.
    Connected {
        width: u32,
        height: u32,
        name: String,
    },
    /// These pixels were written into the surface.
    Drawn(Rect),
    /// CopyRect: the caller copies (`src_x`, `src_y`) to `dst` on the surface.
    Copy {
        src_x: u32,
        src_y: u32,
        dst: Rect,
    },
    /// The framebuffer size changed; later rectangles use the new size.
    Resized {
        width: u32,
        height: u32,
    },
    /// The server refused our SetDesktopSize (ExtendedDesktopSize status code).
    ResizeRefused {
        status: u16,
    },
    Cursor(CursorImage),
    /// One FramebufferUpdate is complete: a frame boundary.
    UpdateEnd,
    /// ServerCutText, raw bytes (the caller knows the encoding), at most `max_cut_text` of them.
    CutText(Vec<u8>),
    Bell,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RfbError {
    #[error("not an RFB server (greeting {0:?})")]
    NotRfb(String),
    #[error("unsupported RFB protocol version {major}.{minor}")]
    UnsupportedVersion { major: u32, minor: u32 },
    #[error("server refused the connection: {0}")]
    Refused(String),
    #[error("no supported security type (server offers {0:?})")]
    UnsupportedSecurity(Vec<u32>),
    #[error("server requires a password, none was given")]
    PasswordRequired,
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    #[error("server framebuffer {width}x{height} is outside 1x1..{max_width}x{max_height}")]
    BadFramebufferSize { width: u32, height: u32, max_width: u32, max_height: u32 },
    #[error("{what} of {len} bytes exceeds the {limit}-byte bound")]
    TooLong { what: &'static str, len: u64, limit: u64 },
    #[error("rectangle {rect:?} lies outside the {width}x{height} framebuffer")]
    RectOutOfBounds { rect: Rect, width: u32, height: u32 },
    #[error("unknown server message type {0}")]
    UnknownMessage(u8),
    #[error("rectangle uses unknown encoding {0}")]
    UnknownEncoding(i32),
    #[error("invalid {encoding} data: {detail}")]
    InvalidData { encoding: &'static str, detail: &'static str },
    #[error("rectangle does not fit the drawing surface")]
    SurfaceTooSmall,
    #[error("server closed the connection during the handshake")]
    ClosedDuringHandshake,
    #[error("the RFB session already failed")]
    AlreadyFailed,
}

impl RfbError {
    /// True when the server rejected our credentials (Guacamole's CLIENT_UNAUTHORIZED).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, RfbError::AuthenticationFailed(_) | RfbError::PasswordRequired)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V3_3,
    V3_7,
    V3_8,
}

#[derive(Debug, Clone, Copy)]
struct Screen {
    id: u32,
    flags: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ProtocolVersion,
    SecurityType33,
    SecurityTypes,
    VncChallenge,
    VeNCryptVersion,
    VeNCryptSubtypes,
    SecurityResult,
    ServerInit,
    /// Waiting for the next server message.
    Ready,
    /// Inside a FramebufferUpdate: `remaining` rectangles to go (the next header is due).
    Rects {
        remaining: u16,
    },
    /// Streaming the rows of a Raw rectangle.
    RawRows {
        rect: Rect,
        row: u32,
        remaining: u16,
    },
    /// The update's last rectangle is done; report the boundary.
    UpdateDone,
    /// Discarding the rest of an over-long cut text.
    SkipCutText {
        left: u64,
    },
    Failed,
}

enum Step {
    NeedMore,
    Advance { consumed: usize, event: Option<Event> },
}

impl Step {
    fn consumed(consumed: usize) -> Step {
        Step::Advance { consumed, event: None }
    }

    fn event(consumed: usize, event: Event) -> Step {
        Step::Advance { consumed, event: Some(event) }
    }
}

/// The RFB client state machine.
pub struct Client {
    config: ClientConfig,
    state: State,
    version: Version,
    input: Vec<u8>,
    start: usize,
    output: Vec<u8>,
    width: u32,
    height: u32,
    full_refresh: bool,
    zrle: zrle::ZrleDecoder,
    tight: tight::TightDecoder,
    /// The server's screen layout, once it has sent ExtendedDesktopSize (so SetDesktopSize works).
    screens: Option<Vec<Screen>>,
    desired_size: Option<(u32, u32)>,
    resize_in_flight: bool,
}

impl Client {
    pub fn new(config: ClientConfig) -> Client {
        Client {
            config,
            state: State::ProtocolVersion,
            version: Version::V3_8,
            input: Vec::new(),
            start: 0,
            output: Vec::new(),
            width: 0,
            height: 0,
            full_refresh: false,
            zrle: zrle::ZrleDecoder::new(),
            tight: tight::TightDecoder::new(),
            screens: None,
            desired_size: None,
            resize_in_flight: false,
        }
    }

    /// Bytes received from the server.
    pub fn receive(&mut self, data: &[u8]) {
        if self.start == self.input.len() {
            self.input.clear();
            self.start = 0;
        } else if self.start > 0 && self.start >= self.input.len() / 2 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        self.input.extend_from_slice(data);
    }

    /// Bytes buffered but not yet processed.
    pub fn buffered(&self) -> usize {
        self.input.len() - self.start
    }

    /// Bytes to send to the server.
    pub fn pending_output(&self) -> &[u8] {
        &self.output
    }

    /// `n` bytes of [`Client::pending_output`] were sent.
    pub fn consume_output(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
    }

    /// True once ServerInit has arrived (input events are accepted from then on).
    pub fn is_connected(&self) -> bool {
        matches!(
            self.state,
            State::Ready | State::Rects { .. } | State::RawRows { .. } | State::UpdateDone | State::SkipCutText { .. }
        )
    }

    /// True inside a FramebufferUpdate (publishing now would show half an update).
    pub fn in_update(&self) -> bool {
        matches!(self.state, State::Rects { .. } | State::RawRows { .. } | State::UpdateDone)
    }

    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// True once the server has shown it supports SetDesktopSize (it sent ExtendedDesktopSize).
    pub fn can_resize(&self) -> bool {
        self.screens.is_some()
    }

    /// The error that the server closing the connection now stands for.
    pub fn eof_error(&self) -> RfbError {
        match self.state {
            State::SecurityResult => RfbError::AuthenticationFailed("server closed the connection".into()),
            _ => RfbError::ClosedDuringHandshake,
        }
    }

    /// Processes buffered input until one event is ready (`Some`) or more input is needed (`None`).
    /// Pixels go into `surface`, which must be the same surface every call (its back buffer may change).
    pub fn poll(&mut self, surface: &mut Surface<'_>) -> Result<Option<Event>, RfbError> {
        loop {
            if self.state == State::Failed {
                return Err(RfbError::AlreadyFailed);
            }
            let input = std::mem::take(&mut self.input);
            let result = self.step(&input[self.start..], surface);
            self.input = input;
            match result {
                Ok(Step::NeedMore) => return Ok(None),
                Ok(Step::Advance { consumed, event }) => {
                    tracing::trace!(state = ?self.state, consumed, "RFB step");
                    self.start += consumed;
                    if event.is_some() {
                        return Ok(event);
                    }
                }
                Err(e) => {
                    self.state = State::Failed;
                    return Err(e);
                }
            }
        }
    }

    // ---- client-to-server messages (RFC 6143 §7.5) ----

    /// KeyEvent. Dropped (false) before the handshake is done.
    pub fn key_event(&mut self, keysym: u32, down: bool) -> bool {
        if !self.is_connected() {
            return false;
        }
        self.output.extend_from_slice(&[msg::KEY_EVENT, down as u8, 0, 0]);
        put_u32(&mut self.output, keysym);
        true
    }

    /// PointerEvent, with the position clamped into the framebuffer. Dropped before the handshake.
    pub fn pointer_event(&mut self, x: i32, y: i32, buttons: u8) -> bool {
        if !self.is_connected() {
            return false;
        }
        let clamp = |v: i32, size: u32| v.clamp(0, size.saturating_sub(1).min(u16::MAX as u32) as i32) as u16;
        self.output.extend_from_slice(&[msg::POINTER_EVENT, buttons]);
        put_u16(&mut self.output, clamp(x, self.width));
        put_u16(&mut self.output, clamp(y, self.height));
        true
    }

    /// ClientCutText with already-encoded bytes. Dropped before the handshake.
    pub fn cut_text(&mut self, text: &[u8]) -> bool {
        if !self.is_connected() || text.len() > i32::MAX as usize {
            return false;
        }
        self.output.extend_from_slice(&[msg::CLIENT_CUT_TEXT, 0, 0, 0]);
        put_u32(&mut self.output, text.len() as u32);
        self.output.extend_from_slice(text);
        true
    }

    /// Asks for a new desktop size (clamped to the configured maximum). Sent with SetDesktopSize as soon
    /// as the server has shown support and no earlier request is pending; only the newest size is kept.
    pub fn request_desktop_size(&mut self, width: u32, height: u32) {
        let width = width.clamp(1, self.config.max_width.min(u16::MAX as u32));
        let height = height.clamp(1, self.config.max_height.min(u16::MAX as u32));
        self.desired_size = Some((width, height));
        self.send_desired_size();
    }

    fn send_desired_size(&mut self) {
        if !self.is_connected() || self.resize_in_flight {
            return;
        }
        let Some(screens) = &self.screens else { return };
        let Some((w, h)) = self.desired_size.take() else { return };
        if (w, h) == (self.width, self.height) {
            return;
        }
        let (id, flags) = screens.first().map_or((0, 0), |s| (s.id, s.flags));
        let out = &mut self.output;
        out.extend_from_slice(&[msg::SET_DESKTOP_SIZE, 0]);
        put_u16(out, w as u16);
        put_u16(out, h as u16);
        out.extend_from_slice(&[1, 0]);
        put_u32(out, id);
        put_u16(out, 0);
        put_u16(out, 0);
        put_u16(out, w as u16);
        put_u16(out, h as u16);
        put_u32(out, flags);
        self.resize_in_flight = true;
    }

    fn request_update(&mut self, incremental: bool) {
        let out = &mut self.output;
        out.extend_from_slice(&[msg::FRAMEBUFFER_UPDATE_REQUEST, incremental as u8]);
        put_u16(out, 0);
        put_u16(out, 0);
        put_u16(out, self.width as u16);
        put_u16(out, self.height as u16);
    }

    fn send_client_init(&mut self) {
        // Shared flag: leave other viewers connected, as guacd does.
        self.output.push(1);
        self.state = State::ServerInit;
    }

    // ---- the state machine ----

    fn step(&mut self, input: &[u8], surface: &mut Surface<'_>) -> Result<Step, RfbError> {
        let mut r = Reader::new(input);
        match self.state {
            State::ProtocolVersion => {
                let greeting = need!(r.bytes(12));
                self.version = parse_version(greeting)?;
                self.output.extend_from_slice(match self.version {
                    Version::V3_3 => b"RFB 003.003\n",
                    Version::V3_7 => b"RFB 003.007\n",
                    Version::V3_8 => b"RFB 003.008\n",
                });
                self.state = if self.version == Version::V3_3 { State::SecurityType33 } else { State::SecurityTypes };
                Ok(Step::consumed(r.pos()))
            }
            State::SecurityType33 => {
                let kind = need!(r.u32());
                match kind {
                    0 => Err(RfbError::Refused(need!(read_string(&mut r)?))),
                    1 => {
                        self.send_client_init();
                        Ok(Step::consumed(r.pos()))
                    }
                    2 if self.config.password.is_some() => {
                        self.state = State::VncChallenge;
                        Ok(Step::consumed(r.pos()))
                    }
                    2 => Err(RfbError::PasswordRequired),
                    other => Err(RfbError::UnsupportedSecurity(vec![other])),
                }
            }
            State::SecurityTypes => {
                let count = need!(r.u8());
                if count == 0 {
                    return Err(RfbError::Refused(need!(read_string(&mut r)?)));
                }
                let offered = need!(r.bytes(count as usize));
                let chosen = self.choose_security(offered)?;
                self.output.push(chosen);
                self.state = match chosen {
                    SEC_VNC => State::VncChallenge,
                    SEC_VENCRYPT => State::VeNCryptVersion,
                    _ if self.version == Version::V3_8 => State::SecurityResult,
                    _ => {
                        self.send_client_init();
                        State::ServerInit
                    }
                };
                Ok(Step::consumed(r.pos()))
            }
            State::VncChallenge => {
                let challenge: [u8; 16] = need!(r.array());
                let password = self.config.password.as_ref().map_or(&[][..], |p| p.0.as_bytes());
                self.output.extend_from_slice(&auth::vnc_response(password, &challenge));
                self.state = State::SecurityResult;
                Ok(Step::consumed(r.pos()))
            }
            State::VeNCryptVersion => {
                let (major, minor) = (need!(r.u8()), need!(r.u8()));
                if (major, minor) < (0, 2) {
                    return Err(RfbError::UnsupportedSecurity(vec![SEC_VENCRYPT as u32]));
                }
                self.output.extend_from_slice(&[0, 2]);
                self.state = State::VeNCryptSubtypes;
                Ok(Step::consumed(r.pos()))
            }
            State::VeNCryptSubtypes => {
                if need!(r.u8()) != 0 {
                    return Err(RfbError::UnsupportedSecurity(vec![SEC_VENCRYPT as u32]));
                }
                let count = need!(r.u8()) as usize;
                let raw = need!(r.bytes(count * 4));
                let offered: Vec<u32> =
                    raw.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
                let have_password = self.config.password.is_some();
                let plain = offered.contains(&VENCRYPT_PLAIN) && have_password && self.config.username.is_some();
                let chosen = if plain {
                    VENCRYPT_PLAIN
                } else if offered.contains(&(SEC_VNC as u32)) && have_password {
                    SEC_VNC as u32
                } else if offered.contains(&(SEC_NONE as u32)) {
                    SEC_NONE as u32
                } else if offered.iter().any(|&t| t == VENCRYPT_PLAIN || t == SEC_VNC as u32) {
                    return Err(RfbError::PasswordRequired);
                } else {
                    return Err(RfbError::UnsupportedSecurity(offered));
                };
                put_u32(&mut self.output, chosen);
                if chosen == VENCRYPT_PLAIN {
                    let user = self.config.username.as_deref().unwrap_or_default().as_bytes();
                    let pass = self.config.password.as_ref().map_or(&[][..], |p| p.0.as_bytes());
                    put_u32(&mut self.output, user.len() as u32);
                    put_u32(&mut self.output, pass.len() as u32);
                    self.output.extend_from_slice(user);
                    self.output.extend_from_slice(pass);
                }
                self.state = if chosen == SEC_VNC as u32 { State::VncChallenge } else { State::SecurityResult };
                Ok(Step::consumed(r.pos()))
            }
            State::SecurityResult => match need!(r.u32()) {
                0 => {
                    self.send_client_init();
                    Ok(Step::consumed(r.pos()))
                }
                _ if self.version == Version::V3_8 => Err(RfbError::AuthenticationFailed(need!(read_string(&mut r)?))),
                _ => Err(RfbError::AuthenticationFailed("server rejected the credentials".into())),
            },
            State::ServerInit => {
                let width = need!(r.u16()) as u32;
                let height = need!(r.u16()) as u32;
                let _server_format = need!(r.bytes(16));
                let name = need!(read_string(&mut r)?);
                self.check_size(width, height)?;
                self.width = width;
                self.height = height;
                self.send_setup();
                self.state = State::Ready;
                self.send_desired_size();
                Ok(Step::event(r.pos(), Event::Connected { width, height, name }))
            }
            State::Ready => self.server_message(&mut r),
            State::Rects { remaining } => self.rectangle(&mut r, remaining, surface),
            State::RawRows { rect, row, remaining } => {
                let row_bytes = rect.w as usize * BPP;
                let rows = (input.len() / row_bytes).min((rect.h - row) as usize);
                if rows == 0 {
                    return Ok(Step::NeedMore);
                }
                for (i, src) in input.chunks_exact(row_bytes).take(rows).enumerate() {
                    surface.row(rect.x, rect.y + row + i as u32, rect.w)?.copy_from_slice(src);
                }
                let row = row + rows as u32;
                if row < rect.h {
                    self.state = State::RawRows { rect, row, remaining };
                    return Ok(Step::consumed(rows * row_bytes));
                }
                self.next_rect(remaining);
                Ok(Step::event(rows * row_bytes, Event::Drawn(rect)))
            }
            State::UpdateDone => {
                self.state = State::Ready;
                let full = std::mem::take(&mut self.full_refresh);
                self.request_update(!full);
                Ok(Step::event(0, Event::UpdateEnd))
            }
            State::SkipCutText { left } => {
                if input.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = (input.len() as u64).min(left);
                self.state = if n == left { State::Ready } else { State::SkipCutText { left: left - n } };
                Ok(Step::consumed(n as usize))
            }
            State::Failed => Err(RfbError::AlreadyFailed),
        }
    }

    /// Picks a security type (RFC 6143 §7.1.2) we can satisfy: VNC Authentication when we have a password,
    /// else None; VeNCrypt (for its Plain subtype) first when a username was given.
    fn choose_security(&self, offered: &[u8]) -> Result<u8, RfbError> {
        let has = |t| offered.contains(&t);
        let password = self.config.password.is_some();
        if has(SEC_VENCRYPT) && password && self.config.username.is_some() {
            Ok(SEC_VENCRYPT)
        } else if has(SEC_VNC) && password {
            Ok(SEC_VNC)
        } else if has(SEC_NONE) {
            Ok(SEC_NONE)
        } else if has(SEC_VENCRYPT) && password {
            Ok(SEC_VENCRYPT)
        } else if has(SEC_VNC) || has(SEC_VENCRYPT) {
            Err(RfbError::PasswordRequired)
        } else {
            Err(RfbError::UnsupportedSecurity(offered.iter().map(|&t| t as u32).collect()))
        }
    }

    /// SetPixelFormat, SetEncodings and the first (full) FramebufferUpdateRequest.
    fn send_setup(&mut self) {
        let (red_shift, blue_shift) = if self.config.swap_red_blue { (0, 16) } else { (16, 0) };
        let out = &mut self.output;
        out.extend_from_slice(&[msg::SET_PIXEL_FORMAT, 0, 0, 0]);
        // bits-per-pixel, depth, big-endian, true-colour, red/green/blue max, shifts, padding.
        out.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, red_shift, 8, blue_shift, 0, 0, 0]);
        out.extend_from_slice(&[msg::SET_ENCODINGS, 0]);
        let encodings = &self.config.encodings[..self.config.encodings.len().min(u16::MAX as usize)];
        put_u16(out, encodings.len() as u16);
        for &e in encodings {
            put_u32(out, e as u32);
        }
        self.request_update(false);
    }

    fn check_size(&self, width: u32, height: u32) -> Result<(), RfbError> {
        let (max_width, max_height) = (self.config.max_width, self.config.max_height);
        if !(1..=max_width).contains(&width) || !(1..=max_height).contains(&height) {
            return Err(RfbError::BadFramebufferSize { width, height, max_width, max_height });
        }
        Ok(())
    }

    fn check_rect(&self, rect: Rect) -> Result<(), RfbError> {
        if !rect.fits(self.width, self.height) {
            return Err(RfbError::RectOutOfBounds { rect, width: self.width, height: self.height });
        }
        Ok(())
    }

    fn next_rect(&mut self, remaining: u16) {
        self.state = if remaining > 1 { State::Rects { remaining: remaining - 1 } } else { State::UpdateDone };
    }

    /// One server-to-client message header (RFC 6143 §7.6).
    fn server_message(&mut self, r: &mut Reader<'_>) -> Result<Step, RfbError> {
        match need!(r.u8()) {
            0 => {
                let _padding = need!(r.u8());
                let count = need!(r.u16());
                self.state = if count == 0 { State::UpdateDone } else { State::Rects { remaining: count } };
                Ok(Step::consumed(r.pos()))
            }
            1 => {
                // SetColourMapEntries: never used with true colour; skipped.
                let _padding = need!(r.u8());
                let _first = need!(r.u16());
                let count = need!(r.u16());
                need!(r.bytes(count as usize * 6));
                Ok(Step::consumed(r.pos()))
            }
            2 => Ok(Step::event(r.pos(), Event::Bell)),
            3 => {
                let _padding = need!(r.bytes(3));
                let len = need!(r.u32());
                if len & 0x8000_0000 != 0 {
                    // Extended clipboard (never advertised): skip its payload.
                    self.state = State::SkipCutText { left: u64::from((len as i32).unsigned_abs()) };
                    return Ok(Step::consumed(r.pos()));
                }
                let keep = (len as usize).min(self.config.max_cut_text);
                let text = need!(r.bytes(keep)).to_vec();
                if keep < len as usize {
                    self.state = State::SkipCutText { left: u64::from(len) - keep as u64 };
                }
                Ok(Step::event(r.pos(), Event::CutText(text)))
            }
            other => Err(RfbError::UnknownMessage(other)),
        }
    }

    /// One rectangle of a FramebufferUpdate (RFC 6143 §7.6.1). Nothing is consumed until the whole
    /// rectangle is buffered, except Raw, whose rows are streamed.
    fn rectangle(&mut self, r: &mut Reader<'_>, remaining: u16, surface: &mut Surface<'_>) -> Result<Step, RfbError> {
        let x = need!(r.u16()) as u32;
        let y = need!(r.u16()) as u32;
        let w = need!(r.u16()) as u32;
        let h = need!(r.u16()) as u32;
        let encoding = need!(r.i32());
        let rect = Rect::new(x, y, w, h);
        tracing::trace!(?rect, encoding, "RFB rectangle");
        match encoding {
            encoding::RAW => {
                self.check_rect(rect)?;
                if rect.is_empty() {
                    self.next_rect(remaining);
                } else {
                    self.state = State::RawRows { rect, row: 0, remaining };
                }
                Ok(Step::consumed(r.pos()))
            }
            encoding::COPY_RECT => {
                self.check_rect(rect)?;
                let src_x = need!(r.u16()) as u32;
                let src_y = need!(r.u16()) as u32;
                self.check_rect(Rect::new(src_x, src_y, w, h))?;
                self.next_rect(remaining);
                Ok(Step::event(r.pos(), Event::Copy { src_x, src_y, dst: rect }))
            }
            encoding::ZRLE => {
                self.check_rect(rect)?;
                let len = need!(r.u32()) as u64;
                // Compressed data larger than twice the raw pixels is not an honest encoder's output.
                let limit = rect.area() * 8 + 4096;
                if len > limit {
                    return Err(RfbError::TooLong { what: "ZRLE rectangle", len, limit });
                }
                let data = need!(r.bytes(len as usize));
                self.zrle.decode(data, rect, surface)?;
                self.next_rect(remaining);
                Ok(Step::event(r.pos(), Event::Drawn(rect)))
            }
            encoding::TIGHT => {
                self.check_rect(rect)?;
                let t = need!(tight::parse(r, rect)?);
                self.tight.decode(t, rect, surface, self.config.swap_red_blue)?;
                self.next_rect(remaining);
                Ok(Step::event(r.pos(), Event::Drawn(rect)))
            }
            encoding::CURSOR => {
                if w > MAX_CURSOR_READ || h > MAX_CURSOR_READ {
                    let len = rect.area() * 4;
                    return Err(RfbError::TooLong {
                        what: "cursor",
                        len,
                        limit: u64::from(MAX_CURSOR_READ.pow(2) * 4),
                    });
                }
                let pixels = need!(r.bytes(rect.area() as usize * BPP));
                let mask = need!(r.bytes(w.div_ceil(8) as usize * h as usize));
                self.next_rect(remaining);
                Ok(Step::event(r.pos(), Event::Cursor(cursor_image(x, y, w, h, pixels, mask))))
            }
            encoding::DESKTOP_SIZE => {
                self.check_size(w, h)?;
                self.resize_in_flight = false;
                self.next_rect(remaining);
                Ok(match self.set_size(w, h) {
                    Some(event) => Step::event(r.pos(), event),
                    None => Step::consumed(r.pos()),
                })
            }
            encoding::EXTENDED_DESKTOP_SIZE => {
                let count = need!(r.u8()) as usize;
                let _padding = need!(r.bytes(3));
                let raw = need!(r.bytes(count * 16));
                let screens = raw
                    .chunks_exact(16)
                    .map(|s| Screen {
                        id: u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
                        flags: u32::from_be_bytes([s[12], s[13], s[14], s[15]]),
                    })
                    .collect();
                // x is the reason (1: our own request), y the status (0: success).
                let (reason, status) = (x, y);
                self.next_rect(remaining);
                if reason == 1 {
                    self.resize_in_flight = false;
                }
                if reason == 1 && status != 0 {
                    self.send_desired_size();
                    return Ok(Step::event(r.pos(), Event::ResizeRefused { status: status as u16 }));
                }
                self.check_size(w, h)?;
                self.screens = Some(screens);
                let event = self.set_size(w, h);
                self.send_desired_size();
                Ok(match event {
                    Some(event) => Step::event(r.pos(), event),
                    None => Step::consumed(r.pos()),
                })
            }
            encoding::LAST_RECT => {
                self.state = State::UpdateDone;
                Ok(Step::consumed(r.pos()))
            }
            other => Err(RfbError::UnknownEncoding(other)),
        }
    }

    fn set_size(&mut self, width: u32, height: u32) -> Option<Event> {
        if (width, height) == (self.width, self.height) {
            return None;
        }
        self.width = width;
        self.height = height;
        self.full_refresh = true;
        Some(Event::Resized { width, height })
    }
}

/// Reads a u32-length-prefixed string (failure reasons, the desktop name), bounded, and makes it safe to
/// show: at most [`MAX_SHOWN`] characters, control characters (newlines that could forge log lines)
/// replaced by spaces.
fn read_string(r: &mut Reader<'_>) -> Result<Option<String>, RfbError> {
    let Some(len) = r.u32() else { return Ok(None) };
    if len as usize > MAX_STRING {
        return Err(RfbError::TooLong { what: "string", len: len.into(), limit: MAX_STRING as u64 });
    }
    Ok(r.bytes(len as usize).map(|b| {
        String::from_utf8_lossy(b).chars().take(MAX_SHOWN).map(|c| if c.is_control() { ' ' } else { c }).collect()
    }))
}

/// Parses "RFB xxx.yyy\n" (RFC 6143 §7.1.1) and picks the version we speak.
fn parse_version(greeting: &[u8]) -> Result<Version, RfbError> {
    let not_rfb = || RfbError::NotRfb(String::from_utf8_lossy(greeting).escape_debug().to_string());
    let digits = |b: &[u8]| -> Option<u32> {
        b.iter().try_fold(0u32, |acc, &d| d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0')))
    };
    if &greeting[..4] != b"RFB " || greeting[7] != b'.' || greeting[11] != b'\n' {
        return Err(not_rfb());
    }
    let (major, minor) = (digits(&greeting[4..7]).ok_or_else(not_rfb)?, digits(&greeting[8..11]).ok_or_else(not_rfb)?);
    match (major, minor) {
        // 3.4 and 3.6 (UltraVNC) and 3.5 speak 3.3's handshake.
        (3, 3..=6) => Ok(Version::V3_3),
        (3, 7) => Ok(Version::V3_7),
        // 3.8 and later, including Apple's 3.889.
        (3, _) if minor >= 8 => Ok(Version::V3_8),
        (m, _) if m > 3 => Ok(Version::V3_8),
        _ => Err(RfbError::UnsupportedVersion { major, minor }),
    }
}

/// Turns a Cursor pseudo-encoding payload (pixels in our pixel format, then a 1-bit mask, rows padded to
/// a byte) into BGRA. A 0×0 cursor (hide the cursor) becomes one transparent pixel.
fn cursor_image(hot_x: u32, hot_y: u32, w: u32, h: u32, pixels: &[u8], mask: &[u8]) -> CursorImage {
    if w == 0 || h == 0 {
        return CursorImage { hotspot_x: 0, hotspot_y: 0, width: 1, height: 1, bgra: vec![0; 4] };
    }
    let mask_row = w.div_ceil(8) as usize;
    let mut bgra = Vec::with_capacity(pixels.len());
    for (i, px) in pixels.chunks_exact(BPP).enumerate() {
        let (x, y) = (i % w as usize, i / w as usize);
        let visible = mask[y * mask_row + x / 8] & (0x80 >> (x % 8)) != 0;
        bgra.extend_from_slice(&if visible { [px[0], px[1], px[2], 0xff] } else { [0; 4] });
    }
    CursorImage { hotspot_x: hot_x.min(w - 1), hotspot_y: hot_y.min(h - 1), width: w, height: h, bgra }
}

#[cfg(test)]
mod tests;
