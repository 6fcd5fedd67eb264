//! The worker's driver.
//!
//! 1. Wait for `Start`, report unsupported parameters, size the surface and the terminal to the client.
//! 2. Resolve, connect, authenticate and start the shell, answering heartbeats meanwhile.
//! 3. One `select!` over the SSH channel, the control socket, the frame timer and the heartbeat. Output only
//!    feeds the emulator; frames are rendered lazily: at once when the session was idle, otherwise at most
//!    every [`FRAME_INTERVAL`], and never while the supervisor still holds the previous frame (then damage
//!    accumulates: a flood costs parsing, not frames). `select!` polls its branches in random order, so
//!    control messages (Ctrl-C) keep flowing while output floods. Keystrokes go to the server through a
//!    writer task, so a server that stops reading never blocks this loop.

use std::net::SocketAddr;
use std::time::Duration;

use russh::ChannelMsg;
use shm_proto::control::{StreamFromWorker, StreamToWorker, CLIPBOARD_CHUNK, TYPESCRIPT_CHUNK};
use shm_proto::{FromWorker, ToWorker};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};
use vt100::{MouseProtocolEncoding, MouseProtocolMode};
use worker_common::{control_failed, heartbeat_timer, WorkerArgs, WorkerSession, EXIT_REPORTED};

use crate::font::{Fallback, Font};
use crate::keys::{KeyAction, KeyState};
use crate::settings::Settings;
use crate::ssh::{self, status, Failure};
use crate::term::{Selection, Terminal};

/// Least time between two frames while output flows.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(15);
/// Least time between two frames during a flood (more than [`FLOOD_BYTES`] of output per frame): the
/// screen is replaced wholesale every frame then, so fewer frames save the client bytes, not content.
pub const FLOOD_FRAME_INTERVAL: Duration = Duration::from_millis(40);
/// Output per frame above which the session counts as flooding.
const FLOOD_BYTES: usize = 16 * 1024;
/// Size used when the client gave none.
const DEFAULT_SIZE: (u32, u32) = (1024, 768);
/// Keystroke messages queued for a server that does not read; more input is dropped.
const INPUT_QUEUE: usize = 1024;
/// Rows one wheel step scrolls.
const WHEEL_ROWS: i32 = 3;

const BUTTON_LEFT: u32 = 1;
const BUTTON_MIDDLE: u32 = 2;
const BUTTON_RIGHT: u32 = 4;
const WHEEL_UP: u32 = 8;
const WHEEL_DOWN: u32 = 16;

/// How the session loop ended.
enum End {
    Exit(i32),
}

/// What the writer task sends to the server.
enum Out {
    Data(Vec<u8>),
    WindowChange { cols: u32, rows: u32, width: u32, height: u32 },
}

/// Runs one session; returns the process exit code.
pub async fn run(_args: &WorkerArgs) -> i32 {
    let failure = "Unable to connect to SSH server";
    let (mut session, start, mut settings) =
        match WorkerSession::begin_with(status::UPSTREAM_NOT_FOUND, failure, Settings::from_params).await {
            Ok(begun) => begun,
            Err(code) => return code,
        };
    let (width, height, dpi) = (start.width, start.height, start.dpi);
    let mut font = match Font::new(settings.font_size, dpi) {
        Ok(font) => font,
        Err(e) => {
            session.fail(status::UPSTREAM_ERROR, e.to_string()).await;
            return EXIT_REPORTED;
        }
    };
    // Opened now, while files can still be opened; read only when a character needs it.
    if let Some(fallback) = Fallback::find() {
        font.set_fallback(fallback);
    }
    let (width, height) = clamp_size(&session, width, height);
    let mut terminal = Terminal::new(font, settings.color_scheme.clone(), settings.scrollback, width, height);

    // Like guacd: credentials that were not given are asked for in the terminal itself.
    let mut shown = false;
    let needs_passphrase = settings.passphrase.is_none()
        && settings.private_key.as_deref().is_some_and(|key| {
            matches!(russh::keys::decode_secret_key(key, None), Err(russh::keys::Error::KeyIsEncrypted))
        });
    if settings.username.is_none()
        || (settings.password.is_none() && settings.private_key.is_none())
        || needs_passphrase
    {
        if let Err(code) = show_terminal(&mut session, &terminal, &settings.hostname).await {
            return code;
        }
        shown = true;
        if settings.username.is_none() {
            match prompt(&mut session, &mut terminal, "Login as: ", true).await {
                Ok(name) => settings.username = Some(name),
                Err(code) => return code,
            }
        }
        if settings.password.is_none() && settings.private_key.is_none() {
            match prompt(&mut session, &mut terminal, "Password: ", false).await {
                Ok(password) => settings.password = Some(password),
                Err(code) => return code,
            }
        }
        if needs_passphrase {
            match prompt(&mut session, &mut terminal, "Key passphrase: ", false).await {
                Ok(passphrase) => settings.passphrase = Some(passphrase),
                Err(code) => return code,
            }
        }
    }

    let connected = {
        let connect = async {
            let addrs = resolve(&settings.hostname, settings.port).await?;
            // Second lock-down step, before the first byte from the server: Landlock (TCP connect to the
            // target's port only, no filesystem) and the seccomp allow-list. Everything the session needs
            // later (font and the opened fallback font file, key material, host keys) is already at hand.
            let sandboxed = worker_common::sandbox(&worker_common::Policy::tcp_client(&addrs))
                .map_err(|e| Failure::new(status::UPSTREAM_ERROR, format!("Cannot sandbox the SSH worker: {e}")))?;
            debug!(?sandboxed, "Sandboxed");
            let (cols, rows) = terminal.grid_size();
            let connection = ssh::connect(&settings, &addrs, cols, rows, terminal.pixel_size()).await?;
            let sftp = match &settings.sftp {
                Some(_) => Some(ssh::open_sftp(&connection.handle).await?),
                None => None,
            };
            Ok::<_, Failure>((connection, sftp))
        };
        match session.serve_while(connect).await {
            Ok((result, resized)) => result.map(|connection| (connection, resized)),
            Err(code) => return code,
        }
    };
    let ((connection, sftp), resized) = match connected {
        Ok(connected) => connected,
        Err(failure) => {
            session.fail(failure.status, failure.message).await;
            return EXIT_REPORTED;
        }
    };
    info!(host = %settings.hostname, port = settings.port, width, height, "SSH session started");
    if !shown {
        if let Err(code) = show_terminal(&mut session, &terminal, &settings.hostname).await {
            return code;
        }
    }
    let (reader, writer) = connection.channel.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(INPUT_QUEUE);
    let writer_task = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            let result = match out {
                Out::Data(bytes) => writer.data_bytes(bytes).await,
                Out::WindowChange { cols, rows, width, height } => {
                    writer.window_change(cols, rows, width, height).await
                }
            };
            if result.is_err() {
                break;
            }
        }
    });
    // SFTP runs as its own task: a slow transfer never holds up the terminal.
    let (sftp_tx, sftp_rx) = match (sftp, settings.sftp.clone()) {
        (Some(sftp), Some(sftp_settings)) => {
            let (events_tx, events_rx) = mpsc::channel(crate::sftp::QUEUE);
            let (out_tx, out_rx) = mpsc::channel(64);
            tokio::spawn(crate::sftp::Service::run(sftp, sftp_settings, events_rx, out_tx));
            (Some(events_tx), Some(out_rx))
        }
        _ => (None, None),
    };
    let keys = KeyState { backspace: settings.backspace, vt100_keys: settings.vt100_keys, ..KeyState::default() };
    let mut worker = Worker {
        session,
        settings,
        terminal,
        out: out_tx,
        keys,
        dirty: true,
        awaiting_consume: false,
        output_since_frame: 0,
        last_frame: Instant::now() - FRAME_INTERVAL,
        buttons: 0,
        press_cell: None,
        paste_buffer: Vec::new(),
        clipboard: String::new(),
        dropped_input: false,
        sftp: sftp_tx,
    };
    if let Some((w, h)) = resized {
        worker.resize(w, h).await;
    }
    let end = worker.serve(reader, sftp_rx).await;
    writer_task.abort();
    drop(connection.handle);
    let End::Exit(code) = end;
    code
}

/// Sizes the surface to the terminal and tells the supervisor that frames follow.
async fn show_terminal(session: &mut WorkerSession, terminal: &Terminal, name: &str) -> Result<(), i32> {
    let (width, height) = terminal.pixel_size();
    if let Err(e) = session.frames.resize(width, height) {
        session.fail(status::UPSTREAM_ERROR, format!("Surface: {e}")).await;
        return Err(EXIT_REPORTED);
    }
    let name = name.to_string();
    session.control.send(&FromWorker::Connected { width, height, name }).await.map_err(|_| 1)
}

/// Shows `text` and reads a line typed by the user (echoed when `echo`), before the SSH connection exists.
async fn prompt(session: &mut WorkerSession, terminal: &mut Terminal, text: &str, echo: bool) -> Result<String, i32> {
    let mut keys = KeyState { backspace: 127, ..KeyState::default() };
    let mut line = String::new();
    terminal.process(text.as_bytes());
    let mut heartbeat = heartbeat_timer();
    loop {
        terminal.render(&mut session.frames);
        session.publish().await.map_err(|_| 1)?;
        tokio::select! {
            message = session.control.recv::<ToWorker>() => match message {
                Ok(Some(ToWorker::Key { keysym, pressed })) => {
                    if keys.update_modifiers(keysym, pressed) || !pressed {
                        continue;
                    }
                    match keysym {
                        0xff0d | 0xff8d => {
                            terminal.process(b"\r\n");
                            return Ok(line);
                        }
                        0xff08 => {
                            if line.pop().is_some() && echo {
                                terminal.process(b"\x08 \x08");
                            }
                        }
                        _ => {
                            if let (Some(c), false) = (crate::keys::keysym_char(keysym), keys.ctrl) {
                                if line.len() < 1024 {
                                    line.push(c);
                                    if echo {
                                        terminal.process(c.to_string().as_bytes());
                                    }
                                }
                            }
                        }
                    }
                }
                Ok(Some(ToWorker::Resize { width, height })) if width > 0 && height > 0 => {
                    let (width, height) = clamp_size(session, width, height);
                    if session.frames.resize(width, height).is_ok() {
                        terminal.resize(width, height);
                    }
                }
                Ok(Some(ToWorker::Heartbeat)) => session.control.send(&FromWorker::Heartbeat).await.map_err(|_| 1)?,
                Ok(Some(ToWorker::Shutdown) | None) => return Err(0),
                Ok(Some(_)) => {}
                Err(error) => return Err(control_failed(&error)),
            },
            _ = heartbeat.tick() => session.control.send(&FromWorker::Heartbeat).await.map_err(|_| 1)?,
        }
    }
}

/// The client's size, within the surface's capacity; guacd's 1024×768 when the client sent none.
fn clamp_size(session: &WorkerSession, width: u32, height: u32) -> (u32, u32) {
    let g = session.frames.geometry();
    let (w, h) = if width > 0 && height > 0 { (width, height) } else { DEFAULT_SIZE };
    (w.clamp(1, g.max_width), h.clamp(1, g.max_height))
}

/// Resolves before the sandbox goes up (afterwards nothing in `/etc` can be read).
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Failure> {
    worker_common::resolve_off_thread(host, port).await.map_err(|e| {
        Failure::new(status::UPSTREAM_NOT_FOUND, format!("Unable to connect to SSH server {host}:{port}: {e}"))
    })
}

struct Worker {
    session: WorkerSession,
    settings: Settings,
    terminal: Terminal,
    out: mpsc::Sender<Out>,
    keys: KeyState,
    /// The emulator changed since the last render.
    dirty: bool,
    /// A frame is published and the supervisor has not released it yet.
    awaiting_consume: bool,
    /// Output bytes parsed since the last render.
    output_since_frame: usize,
    last_frame: Instant,
    /// Mouse buttons held (Guacamole mask).
    buttons: u32,
    /// Where the left button went down (selection anchor).
    press_cell: Option<(u16, u16)>,
    /// Clipboard chunks from the client until the last one.
    paste_buffer: Vec<u8>,
    /// The client's clipboard, pasted on middle/right click or Ctrl+Shift+V (as guacd).
    clipboard: String,
    dropped_input: bool,
    /// The SFTP service's inbox (`enable-sftp`).
    sftp: Option<mpsc::Sender<StreamToWorker>>,
}

impl Worker {
    async fn serve(
        &mut self,
        mut reader: russh::ChannelReadHalf,
        mut sftp: Option<mpsc::Receiver<StreamFromWorker>>,
    ) -> End {
        let mut heartbeat = heartbeat_timer();
        let mut exit_status = None;
        loop {
            if let Err(end) = self.maybe_render().await {
                return end;
            }
            let deadline = (self.dirty && !self.awaiting_consume).then_some(self.last_frame + self.frame_interval());
            tokio::select! {
                message = reader.wait() => match message {
                    Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                        if self.settings.typescript {
                            for chunk in data.chunks(TYPESCRIPT_CHUNK) {
                                if let Err(end) = self.send(&FromWorker::Typescript { data: chunk.to_vec() }).await {
                                    return end;
                                }
                            }
                        }
                        self.terminal.process(&data);
                        let replies = self.terminal.take_replies();
                        self.write(replies);
                        self.output_since_frame += data.len();
                        self.dirty = true;
                    }
                    Some(ChannelMsg::ExitStatus { exit_status: code }) => exit_status = Some(code),
                    Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                        let message = match exit_status {
                            Some(code) => format!("SSH session ended (exit status {code})"),
                            None => "SSH session ended".to_string(),
                        };
                        return self.closed(message).await;
                    }
                    Some(other) => debug!(?other, "Channel message ignored"),
                },
                message = self.session.control.recv::<ToWorker>() => match message {
                    Ok(Some(message)) => {
                        if let Err(end) = self.control(message).await {
                            return end;
                        }
                    }
                    Ok(None) => return End::Exit(0),
                    Err(error) => return End::Exit(control_failed(&error)),
                },
                Some(message) = async {
                    match &mut sftp {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(end) = self.send(&FromWorker::Stream(message)).await {
                        return end;
                    }
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                _ = heartbeat.tick() => {
                    if self.session.control.send(&FromWorker::Heartbeat).await.is_err() {
                        return End::Exit(1);
                    }
                }
            }
        }
    }

    /// Renders and publishes if the terminal changed, the supervisor released the last frame and the
    /// frame interval has passed.
    async fn maybe_render(&mut self) -> Result<(), End> {
        if !self.dirty || self.awaiting_consume || self.last_frame.elapsed() < self.frame_interval() {
            return Ok(());
        }
        self.render_now().await
    }

    fn frame_interval(&self) -> Duration {
        if self.output_since_frame > FLOOD_BYTES {
            FLOOD_FRAME_INTERVAL
        } else {
            FRAME_INTERVAL
        }
    }

    async fn render_now(&mut self) -> Result<(), End> {
        self.terminal.render(&mut self.session.frames);
        self.dirty = false;
        self.output_since_frame = 0;
        if let Some(seq) = self.session.frames.try_publish() {
            self.awaiting_consume = true;
            self.last_frame = Instant::now();
            self.send(&FromWorker::Published { seq }).await?;
        }
        Ok(())
    }

    async fn closed(&mut self, message: String) -> End {
        info!(%message, "SSH session ended");
        self.dirty = true;
        self.awaiting_consume = false;
        let _ = self.render_now().await;
        match self.session.control.send(&FromWorker::Closed { message }).await {
            Ok(()) => End::Exit(0),
            Err(_) => End::Exit(1),
        }
    }

    async fn send(&self, message: &FromWorker) -> Result<(), End> {
        self.session.control.send(message).await.map_err(|_| End::Exit(1))
    }

    /// Queues bytes for the server; drops them (once warned) when the server stopped reading.
    fn write(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        match self.out.try_send(Out::Data(bytes)) {
            Ok(()) => self.dropped_input = false,
            Err(_) => {
                if !self.dropped_input {
                    warn!("SSH server is not reading; dropping input");
                }
                self.dropped_input = true;
            }
        }
    }

    async fn resize(&mut self, width: u32, height: u32) {
        let (width, height) = clamp_size(&self.session, width, height);
        if (width, height) == self.terminal.pixel_size() {
            return;
        }
        if let Err(e) = self.session.frames.resize(width, height) {
            warn!(%e, "Cannot resize the surface");
            return;
        }
        let (cols, rows) = self.terminal.resize(width, height);
        self.press_cell = None;
        let _ = self.out.try_send(Out::WindowChange { cols: cols as u32, rows: rows as u32, width, height });
        self.dirty = true;
    }

    async fn control(&mut self, message: ToWorker) -> Result<(), End> {
        match message {
            ToWorker::Key { keysym, pressed } => self.key(keysym, pressed),
            ToWorker::Mouse { x, y, mask } => self.mouse(x, y, mask).await?,
            ToWorker::Resize { width, height } => {
                if width > 0 && height > 0 {
                    self.resize(width, height).await;
                }
            }
            ToWorker::Clipboard { mimetype, data, last } => {
                if self.settings.disable_paste || !mimetype.starts_with("text/") {
                    return Ok(());
                }
                let room = self.settings.clipboard_buffer_size.saturating_sub(self.paste_buffer.len());
                self.paste_buffer.extend_from_slice(&data[..data.len().min(room)]);
                if last {
                    self.clipboard = String::from_utf8_lossy(&self.paste_buffer).into_owned();
                    self.paste_buffer.clear();
                }
            }
            ToWorker::Consumed { seq } => {
                if seq >= self.session.frames.published() {
                    self.awaiting_consume = false;
                }
                // Damage drawn while the supervisor held the front is published now.
                if self.session.frames.has_pending() && self.last_frame.elapsed() >= self.frame_interval() {
                    if let Some(seq) = self.session.frames.try_publish() {
                        self.awaiting_consume = true;
                        self.last_frame = Instant::now();
                        self.send(&FromWorker::Published { seq }).await?;
                    }
                }
            }
            ToWorker::Heartbeat => self.send(&FromWorker::Heartbeat).await?,
            ToWorker::Shutdown => return Err(End::Exit(0)),
            ToWorker::Start { .. } => warn!("Ignoring a second Start"),
            ToWorker::Stream(event) => match &self.sftp {
                // The supervisor bounds every stream's window, so the queue never fills unless it breaks them.
                Some(sftp) => {
                    if sftp.try_send(event).is_err() {
                        warn!("SFTP service is not keeping up; stream event dropped");
                    }
                }
                None => debug!(?event, "Stream event without SFTP; ignored"),
            },
        }
        Ok(())
    }

    fn key(&mut self, keysym: u32, pressed: bool) {
        if self.keys.update_modifiers(keysym, pressed) || !pressed {
            return;
        }
        self.keys.application_cursor = self.terminal.screen().application_cursor();
        self.keys.application_keypad = self.terminal.screen().application_keypad();
        match self.keys.translate(keysym) {
            KeyAction::Scroll(rows) => {
                if self.terminal.scroll_view(rows) {
                    self.dirty = true;
                }
            }
            KeyAction::Paste => self.paste(),
            KeyAction::Send(bytes) => {
                if self.settings.read_only {
                    return;
                }
                if self.terminal.reset_view() {
                    self.dirty = true;
                }
                if self.terminal.selection.take().is_some() {
                    self.dirty = true;
                }
                self.write(bytes);
            }
            KeyAction::None => {}
        }
    }

    /// Sends the client's clipboard as typed input (bracketed when the application asked for it).
    fn paste(&mut self) {
        if self.settings.read_only || self.settings.disable_paste || self.clipboard.is_empty() {
            return;
        }
        let text = self.clipboard.replace("\r\n", "\r").replace('\n', "\r");
        let bytes = if self.terminal.screen().bracketed_paste() {
            // The text must not end the bracket itself.
            let text = text.replace("\x1b[201~", "");
            format!("\x1b[200~{text}\x1b[201~").into_bytes()
        } else {
            text.into_bytes()
        };
        if self.terminal.reset_view() {
            self.dirty = true;
        }
        self.write(bytes);
    }

    async fn mouse(&mut self, x: i32, y: i32, mask: u32) -> Result<(), End> {
        let pressed = mask & !self.buttons;
        let released = self.buttons & !mask;
        let previous = self.buttons;
        self.buttons = mask;
        let cell = self.terminal.cell_at(x, y);
        let screen = self.terminal.screen();
        let mode = screen.mouse_protocol_mode();
        if mode != MouseProtocolMode::None && !self.keys.shift && !self.settings.read_only {
            let encoding = screen.mouse_protocol_encoding();
            let bytes = mouse_report(mode, encoding, cell, pressed, released, previous, mask);
            self.write(bytes);
            return Ok(());
        }
        if screen.alternate_screen() {
            // Full-screen applications (less, man) have no scrollback: the wheel moves their cursor, as
            // xterm's alternateScroll does.
            if !self.settings.read_only {
                let arrow: &[u8] = match (pressed & (WHEEL_UP | WHEEL_DOWN), screen.application_cursor()) {
                    (WHEEL_UP, true) => b"\x1bOA",
                    (WHEEL_UP, false) => b"\x1b[A",
                    (WHEEL_DOWN, true) => b"\x1bOB",
                    (WHEEL_DOWN, false) => b"\x1b[B",
                    _ => b"",
                };
                let bytes = arrow.repeat(WHEEL_ROWS as usize);
                self.write(bytes);
            }
        } else {
            if pressed & WHEEL_UP != 0 && self.terminal.scroll_view(WHEEL_ROWS) {
                self.dirty = true;
            }
            if pressed & WHEEL_DOWN != 0 && self.terminal.scroll_view(-WHEEL_ROWS) {
                self.dirty = true;
            }
        }
        if pressed & BUTTON_LEFT != 0 {
            self.press_cell = Some(cell);
            if self.terminal.selection.take().is_some() {
                self.dirty = true;
            }
        } else if mask & BUTTON_LEFT != 0 {
            if let Some(anchor) = self.press_cell {
                let selection = Some(Selection { anchor, end: cell });
                if (anchor != cell || self.terminal.selection.is_some()) && self.terminal.selection != selection {
                    self.terminal.selection = selection;
                    self.dirty = true;
                }
            }
        }
        if released & BUTTON_LEFT != 0 {
            self.press_cell = None;
            if let Some(text) = self.terminal.selected_text() {
                self.copy(text).await?;
            }
        }
        if released & (BUTTON_MIDDLE | BUTTON_RIGHT) != 0 {
            self.paste();
        }
        Ok(())
    }

    /// Sends selected text to the client's clipboard (unless `disable-copy`).
    async fn copy(&mut self, text: String) -> Result<(), End> {
        if self.settings.disable_copy {
            return Ok(());
        }
        let mut end = text.len().min(self.settings.clipboard_buffer_size);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let data = &text.as_bytes()[..end];
        let mut chunks = data.chunks(CLIPBOARD_CHUNK).peekable();
        if chunks.peek().is_none() {
            return self
                .send(&FromWorker::Clipboard { mimetype: "text/plain".into(), data: Vec::new(), last: true })
                .await;
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.send(&FromWorker::Clipboard { mimetype: "text/plain".into(), data: chunk.to_vec(), last }).await?;
        }
        Ok(())
    }
}

/// xterm mouse reports for an application that enabled mouse tracking.
fn mouse_report(
    mode: MouseProtocolMode,
    encoding: MouseProtocolEncoding,
    (row, col): (u16, u16),
    pressed: u32,
    released: u32,
    previous: u32,
    mask: u32,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut emit = |button: u32, release: bool| match encoding {
        MouseProtocolEncoding::Sgr => {
            let end = if release { 'm' } else { 'M' };
            out.extend_from_slice(format!("\x1b[<{button};{};{}{end}", col + 1, row + 1).as_bytes());
        }
        _ => {
            let code = if release { 3 } else { button };
            let clamp = |v: u16| (v as u32 + 33).min(255) as u8;
            out.extend_from_slice(&[0x1b, b'[', b'M', (code + 32) as u8, clamp(col), clamp(row)]);
        }
    };
    for (bit, code) in [(BUTTON_LEFT, 0), (BUTTON_MIDDLE, 1), (BUTTON_RIGHT, 2), (WHEEL_UP, 64), (WHEEL_DOWN, 65)] {
        if pressed & bit != 0 {
            emit(code, false);
        }
        if released & bit != 0 && code < 64 && mode != MouseProtocolMode::Press {
            emit(code, true);
        }
    }
    let motion = pressed == 0 && released == 0;
    let held = mask & (BUTTON_LEFT | BUTTON_MIDDLE | BUTTON_RIGHT);
    if motion
        && (mode == MouseProtocolMode::AnyMotion || (mode == MouseProtocolMode::ButtonMotion && held != 0))
        && previous == mask
    {
        let button = match held {
            b if b & BUTTON_LEFT != 0 => 0,
            b if b & BUTTON_MIDDLE != 0 => 1,
            b if b & BUTTON_RIGHT != 0 => 2,
            _ => 3,
        };
        emit(button + 32, false);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgr_mouse_reports() {
        let sgr = MouseProtocolEncoding::Sgr;
        let mode = MouseProtocolMode::PressRelease;
        assert_eq!(mouse_report(mode, sgr, (4, 9), BUTTON_LEFT, 0, 0, 1), b"\x1b[<0;10;5M");
        assert_eq!(mouse_report(mode, sgr, (4, 9), 0, BUTTON_LEFT, 1, 0), b"\x1b[<0;10;5m");
        assert_eq!(mouse_report(mode, sgr, (0, 0), WHEEL_UP, 0, 0, WHEEL_UP), b"\x1b[<64;1;1M");
        let x10 = MouseProtocolEncoding::Default;
        assert_eq!(mouse_report(mode, x10, (0, 0), BUTTON_LEFT, 0, 0, 1), b"\x1b[M !!");
        assert!(mouse_report(mode, sgr, (1, 1), 0, 0, 0, 0).is_empty());
    }
}
