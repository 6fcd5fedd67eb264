//! One client connection: guacd's handshake, then the session loop that joins the client, the worker's
//! control socket, the worker process and the shared-memory frames.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use guac_proto::handshake::{ConnectRequest, HandshakeError, HandshakeEvent, Selection, ServerHandshake};
use guac_proto::{encode, ClientInstruction, Instruction, Status};
use shm_proto::control::Params;
use shm_proto::{ControlChannel, Frame, FrameReader, FromWorker, Geometry, ToWorker};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn, Instrument};

use crate::client::{ClientError, ClientReader, ClientWriter};
use crate::config::Config;
use crate::display::{self, ClientDisplay, Cursor};
use crate::metrics::{Metrics, WorkerExit};
use crate::protocols::Protocol;
use crate::worker::{self, SpawnOptions, Worker};

/// `nop` after this long without output (guacd).
const KEEPALIVE: Duration = Duration::from_secs(5);
/// The client must send something this often (guacd: "User is not responding.", 776).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Frames sent but not yet acknowledged by the client's `sync` before we wait for it.
const MAX_UNACKED_FRAMES: usize = 2;
/// We wait at most this long for a client's `sync` before sending anyway (guacd's lag cap).
const MAX_LAG: Duration = Duration::from_millis(500);
/// Default and ceiling of `clipboard-buffer-size` (guacd: 256 KiB, 50 MiB).
const CLIPBOARD_DEFAULT: usize = 256 * 1024;
const CLIPBOARD_MAX: usize = 50 * 1024 * 1024;

/// How long a closing connection keeps reading, so our last instruction is not lost to a reset.
const LINGER: Duration = Duration::from_secs(2);

/// State shared by all sessions.
pub struct Shared {
    pub config: Config,
    /// The encoder pool's admission: at most this many frames encode at once, across all sessions.
    pub encoders: Arc<Semaphore>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
}

/// Serves one accepted connection until it ends. Never panics on client or worker input.
pub async fn handle_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    serve(Box::new(read), Box::new(write), peer, shared).await
}

/// [`handle_connection`] for any byte stream (TLS on the TCP entry).
pub async fn handle_stream<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    serve(Box::new(read), Box::new(write), peer, shared).await
}

async fn serve(
    read: crate::client::ClientRead,
    write: crate::client::ClientWrite,
    peer: SocketAddr,
    shared: Arc<Shared>,
) {
    let connection_id = format!("${}", uuid::Uuid::new_v4());
    let span = tracing::info_span!("conn", id = %connection_id, %peer, protocol = tracing::field::Empty, worker_pid = tracing::field::Empty);
    async move {
        let mut reader = ClientReader::new(read).count_into(shared.metrics.bytes_received.clone());
        let mut writer = ClientWriter::new(write).count_into(shared.metrics.bytes_sent.clone());
        let end = run(&mut reader, &mut writer, &connection_id, &shared).await;
        match end {
            Ok(()) => info!("Connection closed"),
            Err(SessionEnd { status: Some(status), message }) => {
                warn!(status = status.code(), %message, "Connection ended with an error");
                writer.fail(&message, status).await;
                reader.linger(LINGER).await;
            }
            Err(SessionEnd { status: None, message }) => {
                info!(%message, "Connection closed");
                writer.close().await;
                reader.linger(LINGER).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// Why a session ended: an `error` to send (status) or a plain close.
#[derive(Debug)]
pub(crate) struct SessionEnd {
    pub(crate) status: Option<Status>,
    pub(crate) message: String,
}

impl SessionEnd {
    pub(crate) fn error(status: Status, message: impl Into<String>) -> SessionEnd {
        SessionEnd { status: Some(status), message: message.into() }
    }
    pub(crate) fn close(message: impl Into<String>) -> SessionEnd {
        SessionEnd { status: None, message: message.into() }
    }
}

impl From<ClientError> for SessionEnd {
    fn from(e: ClientError) -> SessionEnd {
        SessionEnd { status: e.status(), message: e.to_string() }
    }
}

async fn run(
    reader: &mut ClientReader,
    writer: &mut ClientWriter,
    connection_id: &str,
    shared: &Shared,
) -> Result<(), SessionEnd> {
    let (protocol, worker, request) = handshake(reader, writer, connection_id, shared).await?;
    run_connected(reader, writer, protocol, worker, request, connection_id, shared).await
}

/// Everything after `connect`: `ready`, the worker's `Start`, the session loop, and the worker's end.
/// Entry points that do the handshake themselves (a tunnel) call this with their own request.
pub(crate) async fn run_connected(
    reader: &mut ClientReader,
    writer: &mut ClientWriter,
    protocol: Protocol,
    worker: Worker,
    request: Result<ConnectRequest, SessionEnd>,
    connection_id: &str,
    shared: &Shared,
) -> Result<(), SessionEnd> {
    writer.set_queue_cap(shared.config.client_queue_bytes);
    // guacd sends `ready` before it looks at the values; so do we.
    let mut out = BytesMut::new();
    encode(&mut out, "ready").str(connection_id).finish();
    writer.send(&out).await?;
    let mut worker = worker;
    let request = match request {
        Ok(request) => request,
        Err(end) => {
            worker::kill(&mut worker.child).await;
            shared.metrics.worker_exited(WorkerExit::ClientError);
            return Err(end);
        }
    };
    let _active = shared.metrics.session_started(protocol.name());
    info!(protocol = protocol.name(), width = request.width, height = request.height, "Connection ready");
    let params = Params(request.params.clone());
    let start = ToWorker::Start {
        session_id: connection_id.to_string(),
        params: params.clone(),
        width: request.width,
        height: request.height,
        dpi: request.dpi,
    };
    if worker.control.send(&start).await.is_err() {
        worker::kill(&mut worker.child).await;
        return Err(SessionEnd::error(Status::ServerError, "Session worker did not start."));
    }
    let Worker { mut child, control, frames, cgroup, .. } = worker;
    let mut session = Session::new(protocol, params, shared);
    session.image_formats = display::ImageFormats::from_mimetypes(&request.image);
    let result = session.run(reader, writer, &mut child, &control, frames).await;
    shared.metrics.worker_exited(exit_cause(&result));
    // Whatever happened, the worker goes: politely if it is still healthy, by SIGKILL otherwise.
    let healthy = result.is_ok() || result.as_ref().is_err_and(|e| e.status.is_none());
    retire(child, control, healthy, cgroup);
    result
}

/// Ends a worker without making the client wait: `Shutdown`, then SIGKILL after a grace period.
fn retire(mut child: Child, control: ControlChannel, polite: bool, cgroup: Option<crate::jail::SessionCgroup>) {
    tokio::spawn(
        async move {
            if polite
                && control.send(&ToWorker::Shutdown).await.is_ok()
                && tokio::time::timeout(Duration::from_secs(2), child.wait()).await.is_ok()
            {
                drop(cgroup);
                return;
            }
            worker::kill(&mut child).await;
            // The worker is reaped: its cgroup is empty and can go.
            drop(cgroup);
        }
        .in_current_span(),
    );
}

/// guacd's handshake. The worker is spawned as soon as `select` names a protocol, so its exec and
/// lock-down overlap the rest of the handshake.
async fn handshake(
    reader: &mut ClientReader,
    writer: &mut ClientWriter,
    connection_id: &str,
    shared: &Shared,
) -> Result<(Protocol, Worker, Result<ConnectRequest, SessionEnd>), SessionEnd> {
    let mut handshake = ServerHandshake::new(std::time::Instant::now());
    let mut selected: Option<(Protocol, Worker)> = None;
    loop {
        let deadline = Instant::from_std(handshake.poll_timeout());
        let instruction = tokio::select! {
            instruction = reader.next() => instruction?,
            _ = sleep_until(deadline) => {
                let waited = handshake.handle_timeout(std::time::Instant::now());
                if let Some((_, mut worker)) = selected.take() {
                    worker::kill(&mut worker.child).await;
                }
                // guacd drops a client that never finishes the handshake without a word.
                return Err(SessionEnd::close(waited.err().map_or("handshake timed out".into(), |e| e.to_string())));
            }
        };
        let event = handshake.handle(&instruction, std::time::Instant::now());
        match event {
            Ok(HandshakeEvent::Pending) => {}
            Ok(HandshakeEvent::Selected(Selection::Join(_))) => {
                return Err(SessionEnd::error(Status::ResourceNotFound, "No such connection."));
            }
            Ok(HandshakeEvent::Selected(Selection::Protocol(name))) => {
                let Some(protocol) = Protocol::from_name(&name) else {
                    info!(protocol = %name, "Client selected an unsupported protocol");
                    return Err(SessionEnd::error(Status::Unsupported, "Protocol not supported."));
                };
                tracing::Span::current().record("protocol", protocol.name());
                let worker = spawn_worker(protocol, connection_id, shared)?;
                selected = Some((protocol, worker));
                let names = protocol.parameter_names();
                writer.send(&handshake.send_args(&names)).await?;
            }
            Ok(HandshakeEvent::Connected(request)) => {
                let (protocol, worker) =
                    selected.take().ok_or_else(|| SessionEnd::error(Status::ServerError, "no worker"))?;
                return Ok((protocol, worker, Ok(request)));
            }
            Err(HandshakeError::ConnectArity { expected, got }) if selected.is_some() => {
                let (protocol, worker) =
                    selected.take().ok_or_else(|| SessionEnd::error(Status::ServerError, "no worker"))?;
                let message = format!("connect carried {got} values for {expected} parameters");
                return Ok((protocol, worker, Err(SessionEnd::error(Status::ClientBadRequest, message))));
            }
            Err(e) => {
                if let Some((_, mut worker)) = selected.take() {
                    worker::kill(&mut worker.child).await;
                }
                debug!(error = %e, instruction = ?instruction, "Handshake failed");
                return Err(SessionEnd::error(Status::ClientBadRequest, format!("Bad handshake: {e}.")));
            }
        }
    }
}

pub(crate) fn spawn_worker(protocol: Protocol, connection_id: &str, shared: &Shared) -> Result<Worker, SessionEnd> {
    let config = &shared.config;
    let geometry = Geometry::new(config.max_width, config.max_height, Geometry::DEFAULT.damage_capacity)
        .ok_or_else(|| SessionEnd::error(Status::ServerError, "Invalid surface limits configured."))?;
    let binary = config.worker_path(protocol.worker_binary());
    let worker = worker::spawn(SpawnOptions {
        binary: &binary,
        session_id: connection_id,
        geometry,
        log_level: config.tracing_level(),
        max_memory_bytes: config.worker_memory_mib.saturating_mul(1024 * 1024),
    })
    .map_err(|e| {
        tracing::error!(error = %e, "Cannot start session worker");
        SessionEnd::error(Status::ServerError, "Cannot start session worker.")
    })?;
    tracing::Span::current().record("worker_pid", worker.pid);
    info!(worker_pid = worker.pid, "Worker started");
    Ok(worker)
}

/// An encode in flight: the reader and the client's display state travel with the frame to an encoder
/// thread and come back with the instructions.
type EncodeJob = JoinHandle<Result<Encoded, tokio::task::JoinError>>;
type Encoded = (FrameReader, Frame, BytesMut, ClientDisplay);

struct Session<'a> {
    protocol: Protocol,
    shared: &'a Shared,
    display: Option<ClientDisplay>,
    params: Params,
    clipboard_limit: usize,
    /// Clipboard coming from the worker, assembled from chunks.
    clipboard_from_worker: Vec<u8>,
    /// The client's open clipboard stream, if any, and how many bytes it has sent.
    clipboard_from_client: Option<(u32, usize)>,
    /// A `Published` arrived and has not been acted upon.
    frame_pending: bool,
    /// Timestamps of `sync`s not yet echoed by the client, with the time they were sent.
    unacked: VecDeque<(u64, Instant)>,
    last_worker_message: Instant,
    reported_unsupported: HashSet<String>,
    worker_connected: bool,
    /// Image formats the client accepts besides PNG.
    image_formats: display::ImageFormats,
}

impl<'a> Session<'a> {
    fn new(protocol: Protocol, params: Params, shared: &'a Shared) -> Session<'a> {
        let clipboard_limit = params
            .get("clipboard-buffer-size")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(CLIPBOARD_DEFAULT)
            .clamp(CLIPBOARD_DEFAULT, CLIPBOARD_MAX);
        Session {
            protocol,
            shared,
            display: Some(ClientDisplay::default()),
            params,
            clipboard_limit,
            clipboard_from_worker: Vec::new(),
            clipboard_from_client: None,
            frame_pending: false,
            unacked: VecDeque::new(),
            last_worker_message: Instant::now(),
            reported_unsupported: HashSet::new(),
            worker_connected: false,
            image_formats: display::ImageFormats::default(),
        }
    }

    async fn run(
        &mut self,
        reader: &mut ClientReader,
        writer: &mut ClientWriter,
        child: &mut Child,
        control: &ControlChannel,
        frames: FrameReader,
    ) -> Result<(), SessionEnd> {
        // The frame reader lives here between frames and on an encoder thread during one.
        let mut idle_frames = Some(frames);
        let mut encoding: Option<EncodeJob> = None;
        let worker_timeout = self.shared.config.worker_timeout();
        let room = writer.room();
        // Logged once a session: the first time the client's output queue holds a frame back.
        let mut reported_backlog = false;

        loop {
            // Start encoding the next frame when one is waiting, no encode runs and the client keeps up:
            // it echoes our `sync`s and its output queue is under its cap. Otherwise the frame stays in
            // the worker's shared memory, where further changes coalesce into it: that is the
            // backpressure; input, heartbeats and timers go on meanwhile.
            let mut throttle_until = None;
            let held_back = self.frame_pending && encoding.is_none() && writer.over_cap();
            if held_back && !reported_backlog {
                reported_backlog = true;
                info!(queued = writer.queued(), "Client is behind its output; frames held back until it drains");
            }
            if self.frame_pending && encoding.is_none() && !held_back {
                match self.client_lag_deadline() {
                    Some(until) => throttle_until = Some(until),
                    None => {
                        self.frame_pending = false;
                        if let Some(mut frames_now) = idle_frames.take() {
                            match frames_now.acquire() {
                                Ok(Some(frame)) => encoding = Some(self.start_encode(frames_now, frame)),
                                Ok(None) => idle_frames = Some(frames_now),
                                Err(e) => {
                                    tracing::error!(error = %e, "Worker broke the shared-memory contract");
                                    worker::kill(child).await;
                                    return Err(misbehaved());
                                }
                            }
                        }
                    }
                }
            }
            let deadline = [
                Some(writer.last_output + KEEPALIVE),
                Some(reader.last_input + CLIENT_TIMEOUT),
                Some(self.last_worker_message + worker_timeout),
                throttle_until,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(Instant::now);

            tokio::select! {
                failure = writer.failed() => return Err(failure.into()),
                _ = room.drained(), if held_back => {}
                instruction = reader.next() => {
                    let instruction = instruction?;
                    if !self.handle_client(&instruction, writer, control).await? {
                        return Ok(());
                    }
                }
                message = control.recv::<FromWorker>() => {
                    self.last_worker_message = Instant::now();
                    match message {
                        Ok(Some(message)) => {
                            if let Err(end) = self.handle_worker(message, writer).await {
                                if end.status == Some(Status::UpstreamError) {
                                    worker::kill(child).await;
                                }
                                return Err(end);
                            }
                        }
                        Ok(None) => return Err(worker_gone(child).await),
                        Err(e) => {
                            tracing::error!(error = %e, "Worker sent an invalid control message");
                            worker::kill(child).await;
                            return Err(misbehaved());
                        }
                    }
                }
                status = child.wait() => {
                    info!(status = ?status.ok(), "Worker exited");
                    // A worker that reported why it ends (`Failed`, `Closed`) and exited may be seen
                    // exiting first: read what it left in the socket before calling it a crash.
                    let pending = Duration::from_millis(50);
                    while let Ok(Ok(Some(message))) = tokio::time::timeout(pending, control.recv::<FromWorker>()).await {
                        if matches!(message, FromWorker::Failed { .. } | FromWorker::Closed { .. }) {
                            self.handle_worker(message, writer).await?;
                        }
                    }
                    return Err(SessionEnd::error(Status::UpstreamError, WORKER_CRASHED));
                }
                done = async { encoding.as_mut().expect("guarded by the branch condition").await }, if encoding.is_some() => {
                    encoding = None;
                    let (mut frames_back, frame, mut out, display) = done
                        .map_err(|_| SessionEnd::error(Status::ServerError, "Frame encoder failed."))?
                        .map_err(|_| SessionEnd::error(Status::ServerError, "Frame encoder failed."))?;
                    self.display = Some(display);
                    let timestamp = now_millis();
                    encode(&mut out, "sync").uint(timestamp).uint(1).finish();
                    writer.send_frame(out.freeze())?;
                    self.shared.metrics.frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.unacked.push_back((timestamp, Instant::now()));
                    let seq = frame.seq;
                    frames_back.release(frame);
                    idle_frames = Some(frames_back);
                    if control.send(&ToWorker::Consumed { seq }).await.is_err() {
                        return Err(worker_gone(child).await);
                    }
                }
                _ = sleep_until(deadline) => {
                    let now = Instant::now();
                    if now >= reader.last_input + CLIENT_TIMEOUT {
                        return Err(SessionEnd::error(Status::ClientTimeout, "User is not responding."));
                    }
                    if now >= self.last_worker_message + worker_timeout {
                        warn!(timeout = ?worker_timeout, "Worker stopped answering; killing it");
                        worker::kill(child).await;
                        return Err(SessionEnd::error(Status::UpstreamError, WORKER_HUNG));
                    }
                    if now >= writer.last_output + KEEPALIVE {
                        let mut out = BytesMut::new();
                        encode(&mut out, "nop").finish();
                        writer.send(&out).await?;
                    }
                }
            }
        }
    }

    /// How the next frame is encoded: the configured mode, the client's formats and its current lag.
    fn encode_settings(&self) -> display::EncodeSettings {
        let lag_ms =
            self.unacked.front().map_or(0, |(_, sent)| sent.elapsed().as_millis().min(u32::MAX as u128) as u32);
        display::EncodeSettings { naive: false, lag_ms, formats: self.image_formats }
    }

    /// `Some(deadline)` while the client is too far behind on `sync` echoes to send another frame.
    fn client_lag_deadline(&self) -> Option<Instant> {
        if self.unacked.len() < MAX_UNACKED_FRAMES {
            return None;
        }
        let until = self.unacked.front()?.1 + MAX_LAG;
        (Instant::now() < until).then_some(until)
    }

    fn start_encode(&mut self, frames: FrameReader, frame: Frame) -> EncodeJob {
        let encoders = self.shared.encoders.clone();
        let encode_seconds = self.shared.metrics.encode_seconds.clone();
        let mut display = self.display.take().unwrap_or_default();
        let settings = self.encode_settings();
        tokio::spawn(async move {
            // One permit per frame: the pool is shared by every session and bounded by the core count.
            let permit = encoders.acquire_owned().await;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let mut out = BytesMut::new();
                let started = std::time::Instant::now();
                display::encode_frame(&frames, &frame, &mut display, &settings, &mut out);
                encode_seconds.observe(started.elapsed());
                (frames, frame, out, display)
            })
            .await
        })
    }

    /// Handles one instruction from the client; `Ok(false)` when the client said `disconnect`.
    async fn handle_client(
        &mut self,
        instruction: &Instruction,
        writer: &mut ClientWriter,
        control: &ControlChannel,
    ) -> Result<bool, SessionEnd> {
        let parsed = ClientInstruction::parse_runtime(instruction).map_err(|e| {
            debug!(error = %e, instruction = ?instruction, "Malformed client instruction");
            SessionEnd::error(Status::ClientBadRequest, format!("Malformed instruction: {e}."))
        })?;
        let read_only = self.params.flag("read-only");
        let to_worker = match parsed {
            ClientInstruction::Sync { timestamp } => {
                while self.unacked.front().is_some_and(|(ts, _)| *ts <= timestamp) {
                    self.unacked.pop_front();
                }
                None
            }
            ClientInstruction::Nop | ClientInstruction::Ack { .. } | ClientInstruction::Internal { .. } => None,
            ClientInstruction::Disconnect => return Ok(false),
            ClientInstruction::Mouse { x, y, mask } if !read_only => Some(ToWorker::Mouse { x, y, mask }),
            ClientInstruction::Key { keysym, pressed } if !read_only => Some(ToWorker::Key { keysym, pressed }),
            ClientInstruction::Size { width, height, .. } if !read_only => Some(ToWorker::Resize { width, height }),
            ClientInstruction::Clipboard { stream, .. } => {
                self.clipboard_from_client = Some((stream, 0));
                None
            }
            ClientInstruction::Blob { stream, data } => {
                let mut out = BytesMut::new();
                match &mut self.clipboard_from_client {
                    Some((open, received)) if *open == stream => {
                        *received += data.len();
                        let within = *received <= self.clipboard_limit;
                        encode(&mut out, "ack").uint(stream.into()).str("OK").uint(0).finish();
                        writer.send(&out).await?;
                        (within && !read_only && !self.params.flag("disable-paste")).then(|| ToWorker::Clipboard {
                            mimetype: "text/plain".into(),
                            data,
                            last: false,
                        })
                    }
                    _ => {
                        let status = Status::ResourceClosed.code();
                        encode(&mut out, "ack")
                            .uint(stream.into())
                            .str("Stream not open.")
                            .uint(status.into())
                            .finish();
                        writer.send(&out).await?;
                        None
                    }
                }
            }
            ClientInstruction::End { stream } => match self.clipboard_from_client {
                Some((open, _)) if open == stream => {
                    self.clipboard_from_client = None;
                    (!read_only && !self.params.flag("disable-paste")).then(|| ToWorker::Clipboard {
                        mimetype: "text/plain".into(),
                        data: Vec::new(),
                        last: true,
                    })
                }
                _ => None,
            },
            ClientInstruction::File { stream, .. }
            | ClientInstruction::Pipe { stream, .. }
            | ClientInstruction::Argv { stream, .. }
            | ClientInstruction::Put { stream, .. } => {
                let mut out = BytesMut::new();
                let status = Status::Unsupported.code();
                encode(&mut out, "ack").uint(stream.into()).str("Not supported.").uint(status.into()).finish();
                writer.send(&out).await?;
                None
            }
            other => {
                debug!(instruction = ?other, "Client instruction ignored");
                None
            }
        };
        if let Some(message) = to_worker {
            // A full or closed control socket shows up as the worker's exit or timeout; input is best effort.
            let _ = control.send(&message).await;
        }
        Ok(true)
    }

    /// Handles one message from the worker. Everything in it is untrusted.
    async fn handle_worker(&mut self, message: FromWorker, writer: &mut ClientWriter) -> Result<(), SessionEnd> {
        match message {
            FromWorker::Heartbeat | FromWorker::Hint { .. } => {}
            FromWorker::Published { .. } => self.frame_pending = true,
            FromWorker::Connected { width, height, name } => {
                if self.worker_connected {
                    return Err(misbehaved());
                }
                self.worker_connected = true;
                info!(width, height, "Remote desktop connected");
                let name: String = name.chars().filter(|c| !c.is_control()).take(256).collect();
                if !name.is_empty() {
                    let mut out = BytesMut::new();
                    encode(&mut out, "name").str(&name).finish();
                    writer.send(&out).await?;
                }
            }
            FromWorker::Cursor { hotspot_x, hotspot_y, width, height, bgra } => {
                let cursor = Cursor::validate(hotspot_x, hotspot_y, width, height, bgra).ok_or_else(misbehaved)?;
                let mut out = BytesMut::new();
                let display = self.display.get_or_insert_with(ClientDisplay::default);
                display::encode_cursor(&mut out, display, &cursor);
                writer.send(&out).await?;
            }
            FromWorker::Clipboard { mimetype, data, last } => {
                if mimetype != "text/plain" {
                    return Err(misbehaved());
                }
                let room = self.clipboard_limit.saturating_sub(self.clipboard_from_worker.len());
                self.clipboard_from_worker.extend_from_slice(&data[..data.len().min(room)]);
                if last {
                    let text = std::mem::take(&mut self.clipboard_from_worker);
                    if !self.params.flag("disable-copy") {
                        let mut out = BytesMut::new();
                        let display = self.display.get_or_insert_with(ClientDisplay::default);
                        let stream = display.stream();
                        encode(&mut out, "clipboard").uint(stream.into()).str("text/plain").finish();
                        guac_proto::encode_blobs(&mut out, stream, &text);
                        encode(&mut out, "end").uint(stream.into()).finish();
                        writer.send(&out).await?;
                    }
                }
            }
            FromWorker::Unsupported { parameter } => {
                let known = self.protocol.parameter_names().contains(&parameter.as_str());
                if known && self.reported_unsupported.len() < 64 && self.reported_unsupported.insert(parameter.clone())
                {
                    info!(%parameter, "Parameter accepted but not implemented yet; ignored");
                }
            }
            FromWorker::Failed { status, message } => {
                let status = worker_status(status);
                let message: String = message.chars().filter(|c| !c.is_control()).take(256).collect();
                return Err(SessionEnd { status: Some(status), message });
            }
            FromWorker::Closed { message } => {
                info!(%message, "Remote server ended the session");
                writer.disconnect().await;
                return Err(SessionEnd::close(message));
            }
        }
        Ok(())
    }
}

/// The statuses a worker may report; anything else becomes 515.
fn worker_status(code: u16) -> Status {
    match Status::from_code(code) {
        Some(
            s @ (Status::ClientUnauthorized
            | Status::ClientForbidden
            | Status::UpstreamError
            | Status::UpstreamNotFound
            | Status::UpstreamTimeout
            | Status::UpstreamUnavailable
            | Status::ServerBusy
            | Status::ServerError
            | Status::ResourceNotFound
            | Status::SessionClosed
            | Status::SessionConflict),
        ) => s,
        _ => Status::UpstreamError,
    }
}

fn misbehaved() -> SessionEnd {
    SessionEnd::error(Status::UpstreamError, WORKER_MISBEHAVED)
}

const WORKER_CRASHED: &str = "Session worker terminated unexpectedly.";
const WORKER_HUNG: &str = "Session worker stopped responding.";
const WORKER_MISBEHAVED: &str = "Session worker misbehaved and was stopped.";

/// Why the worker of a session that ended this way went away (for the metrics).
fn exit_cause(result: &Result<(), SessionEnd>) -> WorkerExit {
    let Err(SessionEnd { status: Some(status), message }) = result else {
        return WorkerExit::SessionEnd;
    };
    match status {
        Status::UpstreamError if message == WORKER_CRASHED => WorkerExit::Crashed,
        Status::UpstreamError if message == WORKER_HUNG => WorkerExit::Hung,
        Status::UpstreamError if message == WORKER_MISBEHAVED => WorkerExit::Breach,
        Status::ClientBadRequest | Status::ClientTimeout | Status::ClientOverrun | Status::ClientBadType => {
            WorkerExit::ClientError
        }
        Status::ServerError => WorkerExit::ServerError,
        _ => WorkerExit::RemoteError,
    }
}

/// The worker's control socket closed: it exited or crashed. Reap it and say so.
async fn worker_gone(child: &mut Child) -> SessionEnd {
    let status = tokio::time::timeout(Duration::from_millis(50), child.wait()).await;
    info!(status = ?status.ok().and_then(Result::ok), "Worker exited");
    worker::kill(child).await;
    SessionEnd::error(Status::UpstreamError, WORKER_CRASHED)
}

fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
