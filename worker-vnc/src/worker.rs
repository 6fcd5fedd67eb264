//! The worker's driver: the I/O around the sans-IO [`rfb::Client`](crate::rfb::Client).
//!
//! 1. Wait for `Start`, report unsupported parameters.
//! 2. Connect and run the RFB handshake (10 s connect timeout, 15 s handshake timeout, `autoretry`
//!    attempts 1 s apart), answering heartbeats meanwhile.
//! 3. One `select!` over the server socket (read, and write while output is pending), the control socket
//!    and the heartbeat. Decoded pixels go straight into the back surface; each FramebufferUpdate's end
//!    publishes a frame if the supervisor released the previous one, otherwise damage accumulates until
//!    `Consumed` arrives.

use std::net::SocketAddr;
use std::time::Duration;

use shm_proto::control::{CLIPBOARD_CHUNK, MAX_CURSOR_SIDE};
use shm_proto::{FromWorker, ToWorker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};
use tracing::{debug, info, warn};
use worker_common::{control_failed, heartbeat_timer, supervisor_gone, WorkerArgs, WorkerSession, EXIT_REPORTED};

use crate::clipboard::truncate_utf8;
use crate::rfb::{Client, ClientConfig, Event, RfbError, Surface};
use crate::settings::Settings;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Client-to-server bytes we hold while the server does not read; input beyond it is dropped.
const MAX_PENDING_OUTPUT: usize = 1 << 20;
const READ_CHUNK: usize = 64 * 1024;

/// Guacamole status codes (guacd-wire.md §7).
pub mod status {
    pub const UPSTREAM_TIMEOUT: u16 = 514;
    pub const UPSTREAM_ERROR: u16 = 515;
    pub const UPSTREAM_NOT_FOUND: u16 = 519;
    pub const CLIENT_UNAUTHORIZED: u16 = 769;
}

/// A fatal error, as the supervisor will show it.
#[derive(Debug)]
struct Failure {
    status: u16,
    message: String,
}

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into() }
    }

    fn rfb(e: &RfbError) -> Failure {
        let status = if e.is_auth_failure() { status::CLIENT_UNAUTHORIZED } else { status::UPSTREAM_ERROR };
        Failure::new(status, format!("VNC: {e}"))
    }
}

/// How the session loop ended.
enum End {
    /// Exit with this code.
    Exit(i32),
    /// Report the failure, then exit with EXIT_REPORTED.
    Fail(Failure),
}

/// Runs one session; returns the process exit code.
pub async fn run(_args: &WorkerArgs) -> i32 {
    let failure = "Unable to connect to VNC server";
    let (mut session, start, settings) =
        match WorkerSession::begin_with(status::UPSTREAM_NOT_FOUND, failure, Settings::from_params).await {
            Ok(begun) => begun,
            Err(code) => return code,
        };
    let (client_width, client_height) = (start.width, start.height);
    let geometry = session.frames.geometry();
    let config = settings.client_config(geometry.max_width, geometry.max_height);

    let mut desired_size = (client_width > 0 && client_height > 0).then_some((client_width, client_height));
    let (connected, resized) = match session.serve_while(connect(&settings, config)).await {
        Ok(done) => done,
        Err(code) => return code,
    };
    if resized.is_some() {
        desired_size = resized;
    }
    let (stream, client, (width, height, name)) = match connected {
        Ok(connection) => connection,
        Err(failure) => {
            session.fail(failure.status, failure.message).await;
            return EXIT_REPORTED;
        }
    };
    info!(host = %settings.hostname, port = settings.port, width, height, %name, "Connected to VNC server");
    if let Err(e) = session.frames.resize(width, height) {
        session.fail(status::UPSTREAM_ERROR, format!("VNC server framebuffer: {e}")).await;
        return EXIT_REPORTED;
    }
    if session.control.send(&FromWorker::Connected { width, height, name }).await.is_err() {
        return 1;
    }
    let mut worker = Worker { session, settings, client, paste: Vec::new(), dropped_input: false };
    if let (Some((w, h)), true) = (desired_size, worker.may_resize()) {
        worker.client.request_desktop_size(w, h);
    }
    match worker.serve(stream).await {
        End::Exit(code) => code,
        End::Fail(failure) => {
            worker.session.fail(failure.status, failure.message).await;
            EXIT_REPORTED
        }
    }
}

type Connection = (TcpStream, Client, (u32, u32, String));

/// Connects with `autoretry` extra attempts, 1 s apart. A rejected password is never retried.
async fn connect(settings: &Settings, config: ClientConfig) -> Result<Connection, Failure> {
    let mut attempt = 0;
    let mut addresses: Option<Vec<SocketAddr>> = None;
    loop {
        let result = match &addresses {
            Some(addrs) => connect_once(settings, addrs, config.clone()).await,
            None => match resolve(&settings.hostname, settings.port).await {
                Ok(addrs) => {
                    // Before the first byte from the server: Landlock (this port only, no files) and
                    // the seccomp allow-list. Irreversible; applied once, retries reuse `addrs`.
                    if let Err(e) = worker_common::sandbox(&worker_common::Policy::tcp_client(&addrs)) {
                        return Err(Failure::new(status::UPSTREAM_ERROR, format!("cannot apply the sandbox: {e}")));
                    }
                    let result = connect_once(settings, &addrs, config.clone()).await;
                    addresses = Some(addrs);
                    result
                }
                Err(failure) => Err(failure),
            },
        };
        match result {
            Ok(connection) => return Ok(connection),
            Err(failure) if failure.status == status::CLIENT_UNAUTHORIZED || attempt >= settings.autoretry => {
                return Err(failure)
            }
            Err(failure) => {
                attempt += 1;
                warn!(attempt, retries = settings.autoretry, error = %failure.message, "Connection failed; retrying");
                sleep(RETRY_INTERVAL).await;
            }
        }
    }
}

/// Resolves before the sandbox goes up (afterwards nothing in `/etc` can be read).
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Failure> {
    worker_common::resolve_off_thread(host, port).await.map_err(|e| {
        Failure::new(status::UPSTREAM_NOT_FOUND, format!("Unable to connect to VNC server {host}:{port}: {e}"))
    })
}

async fn connect_once(settings: &Settings, addrs: &[SocketAddr], config: ClientConfig) -> Result<Connection, Failure> {
    let target = format!("{}:{}", settings.hostname, settings.port);
    let mut stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(addrs)).await {
        Err(_) => {
            return Err(Failure::new(status::UPSTREAM_TIMEOUT, format!("Timed out connecting to VNC server {target}")))
        }
        Ok(Err(e)) => {
            return Err(Failure::new(
                status::UPSTREAM_NOT_FOUND,
                format!("Unable to connect to VNC server {target}: {e}"),
            ))
        }
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    let mut client = Client::new(config);
    match timeout(HANDSHAKE_TIMEOUT, handshake(&mut stream, &mut client)).await {
        Err(_) => Err(Failure::new(status::UPSTREAM_TIMEOUT, format!("VNC handshake with {target} timed out"))),
        Ok(Err(failure)) => Err(failure),
        Ok(Ok(init)) => Ok((stream, client, init)),
    }
}

/// Drives the client until ServerInit; returns the framebuffer size and desktop name.
async fn handshake(stream: &mut TcpStream, client: &mut Client) -> Result<(u32, u32, String), Failure> {
    let io_failure = |e: std::io::Error| Failure::new(status::UPSTREAM_ERROR, format!("VNC handshake failed: {e}"));
    let mut buf = vec![0u8; 4096];
    loop {
        loop {
            match client.poll(&mut Surface::empty()) {
                Ok(Some(Event::Connected { width, height, name })) => return Ok((width, height, name)),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return Err(Failure::rfb(&e)),
            }
        }
        while !client.pending_output().is_empty() {
            let n = stream.write(client.pending_output()).await.map_err(io_failure)?;
            client.consume_output(n);
        }
        match stream.read(&mut buf).await {
            Ok(0) => return Err(Failure::rfb(&client.eof_error())),
            Ok(n) => client.receive(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Err(Failure::rfb(&client.eof_error())),
            Err(e) => return Err(io_failure(e)),
        }
    }
}

struct Worker {
    session: WorkerSession,
    settings: Settings,
    client: Client,
    /// Clipboard text from the user, collected until its last chunk.
    paste: Vec<u8>,
    dropped_input: bool,
}

impl Worker {
    fn may_resize(&self) -> bool {
        self.settings.resize && !self.settings.read_only
    }

    async fn serve(&mut self, stream: TcpStream) -> End {
        let (mut reader, mut writer) = stream.into_split();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut heartbeat = heartbeat_timer();
        loop {
            if let Err(end) = self.decode(&mut writer).await {
                return end;
            }
            let pending = !self.client.pending_output().is_empty();
            tokio::select! {
                read = reader.read(&mut buf) => match read {
                    Ok(0) => return self.closed("VNC server closed the connection".into()).await,
                    Ok(n) => self.client.receive(&buf[..n]),
                    Err(e) => return self.closed(format!("Connection to the VNC server failed: {e}")).await,
                },
                written = writer.write(self.client.pending_output()), if pending => match written {
                    Ok(n) => self.client.consume_output(n),
                    Err(e) => return self.closed(format!("Connection to the VNC server failed: {e}")).await,
                },
                message = self.session.control.recv::<ToWorker>() => match message {
                    Ok(Some(message)) => {
                        if let Err(end) = self.control(message).await {
                            return end;
                        }
                    }
                    Ok(None) => {
                        debug!("Supervisor closed the control channel");
                        return End::Exit(0);
                    }
                    Err(error) if supervisor_gone(&error) => {
                        debug!(%error, "Supervisor closed the control channel");
                        return End::Exit(0);
                    }
                    Err(error) => return End::Exit(control_failed(&error)),
                },
                _ = heartbeat.tick() => {
                    if self.session.control.send(&FromWorker::Heartbeat).await.is_err() {
                        return End::Exit(1);
                    }
                }
            }
        }
    }

    async fn closed(&mut self, message: String) -> End {
        info!(%message, "VNC session ended");
        End::Exit(self.session.close(message).await)
    }

    /// Handles every event the buffered input produces.
    async fn decode(&mut self, writer: &mut OwnedWriteHalf) -> Result<(), End> {
        loop {
            let stride = self.session.frames.stride();
            let polled = self.client.poll(&mut Surface::new(self.session.frames.back_mut(), stride));
            match polled {
                Ok(Some(Event::UpdateEnd)) => {
                    // The client queued the next FramebufferUpdateRequest at the update's end: put it on the
                    // wire before publishing (which may wait on the control socket), so the server never
                    // holds a change back for want of a request. What does not fit now goes in `serve`.
                    self.flush_now(writer);
                    self.publish().await?;
                }
                Ok(Some(event)) => self.event(event).await?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::Fail(Failure::rfb(&e))),
            }
        }
    }

    /// Writes what the socket takes without waiting; the rest stays pending for the `select!` in `serve`.
    fn flush_now(&mut self, writer: &mut OwnedWriteHalf) {
        while !self.client.pending_output().is_empty() {
            match writer.try_write(self.client.pending_output()) {
                Ok(n) if n > 0 => self.client.consume_output(n),
                // Would block, or an error the next write in `serve` reports.
                _ => break,
            }
        }
    }

    async fn event(&mut self, event: Event) -> Result<(), End> {
        let frames = &mut self.session.frames;
        match event {
            Event::Drawn(rect) => frames.mark_dirty(rect),
            Event::Copy { src_x, src_y, dst } => frames.copy_rect(src_x, src_y, dst),
            Event::Resized { width, height } => {
                info!(width, height, "VNC server resized the desktop");
                frames.resize(width, height).map_err(|e| {
                    End::Fail(Failure::new(status::UPSTREAM_ERROR, format!("VNC server framebuffer: {e}")))
                })?;
            }
            Event::ResizeRefused { status } => info!(status, "VNC server refused the desktop size"),
            Event::UpdateEnd => self.publish().await?,
            Event::Cursor(c) => {
                if c.width <= MAX_CURSOR_SIDE && c.height <= MAX_CURSOR_SIDE {
                    let message = FromWorker::Cursor {
                        hotspot_x: c.hotspot_x,
                        hotspot_y: c.hotspot_y,
                        width: c.width,
                        height: c.height,
                        bgra: c.bgra,
                    };
                    self.send(&message).await?;
                } else {
                    debug!(width = c.width, height = c.height, "Cursor too large; not forwarded");
                }
            }
            Event::CutText(bytes) => {
                if !self.settings.disable_copy {
                    let text = self.settings.clipboard_encoding.decode(&bytes);
                    self.send_clipboard(truncate_utf8(&text, self.settings.clipboard_buffer_size).as_bytes()).await?;
                }
            }
            Event::Bell | Event::Connected { .. } => {}
        }
        Ok(())
    }

    async fn send_clipboard(&mut self, data: &[u8]) -> Result<(), End> {
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

    async fn send(&self, message: &FromWorker) -> Result<(), End> {
        self.session.control.send(message).await.map_err(|_| End::Exit(1))
    }

    async fn publish(&mut self) -> Result<(), End> {
        self.session.publish().await.map_err(|_| End::Exit(1))
    }

    /// Room for more client-to-server messages (the server may have stopped reading).
    fn output_room(&mut self) -> bool {
        let room = self.client.pending_output().len() < MAX_PENDING_OUTPUT;
        if !room && !self.dropped_input {
            warn!("VNC server is not reading; dropping input");
        }
        self.dropped_input = !room;
        room
    }

    async fn control(&mut self, message: ToWorker) -> Result<(), End> {
        let read_only = self.settings.read_only;
        match message {
            ToWorker::Key { keysym, pressed } => {
                if !read_only && self.output_room() {
                    self.client.key_event(keysym, pressed);
                }
            }
            ToWorker::Mouse { x, y, mask } => {
                if !read_only && self.output_room() {
                    self.client.pointer_event(x, y, (mask & 0xff) as u8);
                }
            }
            ToWorker::Resize { width, height } => {
                if self.may_resize() && width > 0 && height > 0 {
                    self.client.request_desktop_size(width, height);
                }
            }
            ToWorker::Clipboard { mimetype, data, last } => {
                if read_only || self.settings.disable_paste || !mimetype.starts_with("text/") {
                    return Ok(());
                }
                let room = self.settings.clipboard_buffer_size.saturating_sub(self.paste.len());
                self.paste.extend_from_slice(&data[..data.len().min(room)]);
                if last {
                    let text = String::from_utf8_lossy(&self.paste).into_owned();
                    self.paste.clear();
                    let bytes = self.settings.clipboard_encoding.encode(&text);
                    if self.output_room() {
                        self.client.cut_text(&bytes);
                    }
                }
            }
            ToWorker::Consumed { .. } => {
                // Mid-update the back surface holds half an update; the update's end publishes.
                if !self.client.in_update() {
                    self.publish().await?;
                }
            }
            ToWorker::Heartbeat => self.send(&FromWorker::Heartbeat).await?,
            ToWorker::Shutdown => return Err(End::Exit(0)),
            ToWorker::Start { .. } => warn!("Ignoring a second Start"),
            // Only sent to a worker that announced an object or file uploads; this one does neither.
            ToWorker::Stream(_) => {}
        }
        Ok(())
    }
}
