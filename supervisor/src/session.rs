//! One client connection: guacd's handshake, then the session loop that joins the users (the owner and
//! any joiners), the worker's control socket, the worker process and the shared-memory frames.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use guac_proto::handshake::{ConnectRequest, HandshakeError, HandshakeEvent, Selection, ServerHandshake};
use guac_proto::{encode, ClientInstruction, Instruction, ProtocolVersion, Status};
use shm_proto::control::Params;
use shm_proto::{ControlChannel, Frame, FrameReader, FromWorker, Geometry, ShmError, ToWorker};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn, Instrument};

use crate::client::{ClientError, ClientReader, ClientWriter};
use crate::config::Config;
use crate::display::{self, ClientDisplay, Cursor};
use crate::metrics::{Metrics, WorkerExit};
use crate::protocols::Protocol;
use crate::recording::{Recorder, RecordingSettings, Tokens};
use crate::sharing::{Join, JoinerEnd, JoinerInput};
use crate::streams::StreamRelay;
use crate::typescript::TypescriptSlot;
use crate::worker::{self, SpawnOptions, Worker};

/// `nop` after this long without output (guacd).
const KEEPALIVE: Duration = Duration::from_secs(5);
/// The client must send something this often (guacd: "User is not responding.", 776).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Frames sent but not yet acknowledged by the client's `sync` before we wait for it.
const MAX_UNACKED_FRAMES: usize = 2;
/// We wait at most this long for a client's `sync` before sending anyway (guacd's lag cap).
const MAX_LAG: Duration = Duration::from_millis(500);
/// At most one frame per this long (guacd: about 100 frames per second).
const MIN_FRAME_GAP: Duration = Duration::from_millis(10);
/// Pending changes wait at most this long for users that are not ready; then those users drop out of
/// step (they get a full resync once they catch up) and the others get the frame.
const MAX_FRAME_DELAY: Duration = Duration::from_millis(100);
/// How often users that fell behind are checked for having caught up.
const CATCH_UP_CHECK: Duration = Duration::from_millis(20);
/// Joiners per session (guacd has no limit; a bound keeps one session from taking every descriptor).
const MAX_JOINERS: usize = 64;
/// Default and ceiling of `clipboard-buffer-size` (guacd: 256 KiB, 50 MiB).
const CLIPBOARD_DEFAULT: usize = 256 * 1024;
const CLIPBOARD_MAX: usize = 50 * 1024 * 1024;
/// guacd's `msg` codes for the owner.
const MSG_USER_JOINED: u64 = 0x0001;
const MSG_USER_LEFT: u64 = 0x0002;

/// How long a closing connection keeps reading, so our last instruction is not lost to a reset.
const LINGER: Duration = Duration::from_secs(2);

/// State shared by all sessions.
pub struct Shared {
    pub config: Config,
    /// The process-wide encoder pool (`--encoder-threads`), shared fairly by every session.
    pub encoders: crate::encoder_pool::EncoderPool,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Live sessions that can be joined (`select $<id>`).
    pub sharing: crate::sharing::Registry,
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
        let end = run(&mut reader, &mut writer, &connection_id, peer, &shared).await;
        finish(&mut reader, &mut writer, end).await;
    }
    .instrument(span)
    .await
}

/// The last words to a client whose connection ends, then the lingering close.
async fn finish(reader: &mut ClientReader, writer: &mut ClientWriter, end: Result<(), SessionEnd>) {
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

/// Why a session ended: an `error` to send (status) or a plain close.
#[derive(Debug, Clone)]
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
    peer: SocketAddr,
    shared: &Shared,
) -> Result<(), SessionEnd> {
    match handshake(reader, writer, connection_id, shared).await? {
        Handshaken::New { protocol, worker, request } => {
            run_owner(reader, writer, protocol, *worker, request, connection_id, Some(peer), shared).await
        }
        Handshaken::Join { target, joins, request } => join(reader, writer, &target, joins, request, shared).await,
    }
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
    run_owner(reader, writer, protocol, worker, request, connection_id, None, shared).await
}

#[allow(clippy::too_many_arguments, reason = "one call site per entry; a struct would only rename them")]
async fn run_owner(
    reader: &mut ClientReader,
    writer: &mut ClientWriter,
    protocol: Protocol,
    worker: Worker,
    request: Result<ConnectRequest, SessionEnd>,
    connection_id: &str,
    peer: Option<SocketAddr>,
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
        audio_mimetypes: shm_proto::control::valid_audio_mimetypes(&request.audio),
    };
    if worker.control.send(&start).await.is_err() {
        worker::kill(&mut worker.child).await;
        return Err(SessionEnd::error(Status::ServerError, "Session worker did not start."));
    }
    let Worker { mut child, control, frames, cgroup, .. } = worker;
    let recorder = {
        let username = request.name.as_deref().or(params.get("username")).unwrap_or("");
        let address = peer.map(|p| p.ip().to_string()).unwrap_or_default();
        let tokens = Tokens::now(username, &address, connection_id);
        Recorder::for_session(RecordingSettings::from_params(&params), &tokens, shared.config.recording_required)
    };
    let (_registration, joins) = shared.sharing.register(connection_id, protocol);
    // The owner's output queue moves into the session's user list for the session's lifetime.
    let owner_writer = std::mem::replace(writer, ClientWriter::new(Box::new(tokio::io::sink())));
    let owner_id = format!("@{}", uuid::Uuid::new_v4());
    let owner = User::new(0, owner_id, &request, params.flag("read-only"), owner_writer, None);
    let mut session = Session::new(protocol, params, shared, owner, recorder);
    session.streams.set_client_audio(request.audio.clone());
    let result = session.run(reader, &mut child, &control, frames, joins).await;
    session.end_joiners(&result);
    *writer = session.take_owner_writer();
    shared.metrics.worker_exited(exit_cause(&result));
    // Whatever happened, the worker goes: politely if it is still healthy, by SIGKILL otherwise.
    let healthy = result.is_ok() || result.as_ref().is_err_and(|e| e.status.is_none());
    retire(child, control, healthy, cgroup);
    result
}

/// A joiner after its handshake: hands its output queue to the live session and forwards what it reads
/// until the session gives the queue back. Entry points that do the handshake themselves (a tunnel) call
/// this with the live session's join channel (`Shared::sharing.find`) and their own request (only
/// `read-only`, `name`, `image` and the version matter).
pub(crate) async fn join(
    reader: &mut ClientReader,
    writer: &mut ClientWriter,
    target: &str,
    joins: mpsc::Sender<Join>,
    request: ConnectRequest,
    shared: &Shared,
) -> Result<(), SessionEnd> {
    writer.set_queue_cap(shared.config.client_queue_bytes);
    let mut out = BytesMut::new();
    encode(&mut out, "ready").str(target).finish();
    writer.send(&out).await?;
    let user_id = format!("@{}", uuid::Uuid::new_v4());
    let read_only = request.param("read-only") == Some("true");
    info!(joined = %target, user = %user_id, read_only, "User joining a live session");
    let (input, input_rx) = mpsc::channel::<JoinerInput>(crate::sharing::INPUT_QUEUE);
    let (done, mut done_rx) = oneshot::channel::<JoinerEnd>();
    let owned = std::mem::replace(writer, ClientWriter::new(Box::new(tokio::io::sink())));
    let join = Join {
        user_id,
        name: request.name.clone(),
        version: request.client_version,
        read_only,
        formats: display::ImageFormats::from_mimetypes(&request.image),
        writer: owned,
        input: input_rx,
        done,
    };
    if let Err(refused) = joins.send(join).await {
        *writer = refused.0.writer;
        return Err(SessionEnd::error(Status::ResourceNotFound, "No such connection."));
    }
    let mut reading = true;
    let end = loop {
        tokio::select! {
            end = &mut done_rx => break end,
            instruction = reader.next(), if reading => {
                reading = instruction.is_ok();
                // The session's input queue is bounded: a joiner that floods waits here, not the session.
                if input.send(instruction).await.is_err() {
                    reading = false;
                }
            }
        }
    };
    match end {
        Ok(JoinerEnd { writer: back, result }) => {
            *writer = back;
            result
        }
        // The session dropped the join without answering (it ended at that moment): the writer is gone.
        Err(_) => Err(SessionEnd::close("Session ended.")),
    }
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

/// What a completed handshake leads to.
enum Handshaken {
    /// A new connection: its worker is already starting.
    New { protocol: Protocol, worker: Box<Worker>, request: Result<ConnectRequest, SessionEnd> },
    /// A user joining live session `target`.
    Join { target: String, joins: mpsc::Sender<Join>, request: ConnectRequest },
}

/// guacd's handshake. The worker is spawned as soon as `select` names a protocol, so its exec and
/// lock-down overlap the rest of the handshake.
async fn handshake(
    reader: &mut ClientReader,
    writer: &mut ClientWriter,
    connection_id: &str,
    shared: &Shared,
) -> Result<Handshaken, SessionEnd> {
    let mut handshake = ServerHandshake::new(std::time::Instant::now());
    let mut selected: Option<(Protocol, Worker)> = None;
    let mut joining: Option<(String, mpsc::Sender<Join>)> = None;
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
            Ok(HandshakeEvent::Selected(Selection::Join(target))) => {
                let Some((protocol, joins)) = shared.sharing.find(&target) else {
                    info!(%target, "Client asked to join a connection that does not exist");
                    return Err(SessionEnd::error(Status::ResourceNotFound, "No such connection."));
                };
                tracing::Span::current().record("protocol", protocol.name());
                joining = Some((target, joins));
                let names = protocol.parameter_names();
                writer.send(&handshake.send_args(&names)).await?;
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
                if let Some((target, joins)) = joining.take() {
                    return Ok(Handshaken::Join { target, joins, request });
                }
                let (protocol, worker) =
                    selected.take().ok_or_else(|| SessionEnd::error(Status::ServerError, "no worker"))?;
                return Ok(Handshaken::New { protocol, worker: Box::new(worker), request: Ok(request) });
            }
            Err(HandshakeError::ConnectArity { expected, got }) if selected.is_some() => {
                let (protocol, worker) =
                    selected.take().ok_or_else(|| SessionEnd::error(Status::ServerError, "no worker"))?;
                let message = format!("connect carried {got} values for {expected} parameters");
                let request = Err(SessionEnd::error(Status::ClientBadRequest, message));
                return Ok(Handshaken::New { protocol, worker: Box::new(worker), request });
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

/// Where a user stands with the frame stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Receives every frame, encoded once for all users in step.
    Live,
    /// Fell behind (output queue over its cap, or no `sync` echo in time): gets no frames until it has
    /// caught up, then a resync.
    Behind,
    /// Shows nothing current (joined, or caught up after falling behind): gets a full-screen dump from the
    /// current surface, then is in step.
    Resync,
}

/// guacd's processing-lag estimate from `sync` echoes (per user, never the maximum over users).
#[derive(Debug, Default, Clone, Copy)]
struct Lag {
    /// Duration of a frame without processing lag: the round-trip baseline.
    baseline_ms: u64,
    processing_ms: u64,
}

impl Lag {
    fn echoed(&mut self, frame_ms: u64) {
        if self.baseline_ms != 0 {
            self.processing_ms = frame_ms.saturating_sub(self.baseline_ms);
        }
        self.baseline_ms = frame_ms.saturating_sub(self.processing_ms).max(1);
    }
}

/// One user of a session: the owner (index 0 in the list, always) or a joiner.
struct User {
    /// Stable handle (indices shift when users leave).
    key: u64,
    /// `@<uuid>` for joiners (guacd's user ID).
    id: String,
    name: Option<String>,
    version: ProtocolVersion,
    read_only: bool,
    formats: display::ImageFormats,
    /// The output queue; taken out only while one of its instructions is handled.
    writer: Option<ClientWriter>,
    step: Step,
    /// Timestamps of `sync`s not yet echoed, with the time they were sent.
    unacked: VecDeque<(u64, Instant)>,
    lag: Lag,
    last_input: Instant,
    /// The user's open clipboard stream: index, bytes so far (kept for the recording).
    clipboard_from_client: Option<(u32, Vec<u8>)>,
    /// Where a joiner's writer goes back when it leaves; `None` for the owner.
    done: Option<oneshot::Sender<JoinerEnd>>,
}

impl User {
    fn new(
        key: u64,
        id: String,
        request: &ConnectRequest,
        read_only: bool,
        writer: ClientWriter,
        done: Option<oneshot::Sender<JoinerEnd>>,
    ) -> User {
        User {
            key,
            id,
            name: request.name.clone(),
            version: request.client_version,
            read_only,
            formats: display::ImageFormats::from_mimetypes(&request.image),
            writer: Some(writer),
            step: Step::Live,
            unacked: VecDeque::new(),
            lag: Lag::default(),
            last_input: Instant::now(),
            clipboard_from_client: None,
            done,
        }
    }

    fn writer(&mut self) -> &mut ClientWriter {
        self.writer.as_mut().expect("a user's writer is only taken out while its instruction is handled")
    }

    fn over_cap(&self) -> bool {
        self.writer.as_ref().is_some_and(ClientWriter::over_cap)
    }

    /// Ready for the next frame: room in its queue and fewer than two frames without a `sync` echo.
    fn ready(&self) -> bool {
        !self.over_cap() && self.unacked.len() < MAX_UNACKED_FRAMES
    }

    /// Waiting only for `sync` echoes, the oldest older than guacd's lag cap: a user alone gets the next
    /// frame anyway (guacd does the same); among others it has fallen behind.
    fn lag_expired(&self, now: Instant) -> bool {
        !self.over_cap() && self.unacked.front().is_some_and(|(_, t)| *t + MAX_LAG <= now)
    }

    /// Its lag now: guacd's processing lag, or the age of its oldest unanswered frame if that is larger.
    fn lag_ms(&self, now: Instant) -> u32 {
        let waiting =
            self.unacked.front().map_or(0, |(_, sent)| now.saturating_duration_since(*sent).as_millis() as u64);
        waiting.max(self.lag.processing_ms).min(u64::from(u32::MAX)) as u32
    }

    fn display_name(&self) -> &str {
        self.name.as_deref().filter(|n| !n.is_empty()).unwrap_or("anonymous")
    }
}

/// An encode in flight: the reader and the group's display state travel to an encoder thread and come
/// back with the instructions. Polled by the session loop itself (no task in between).
type EncodeJob =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Encoded, crate::encoder_pool::PoolError>> + Send>>;

/// A joiner's input, tagged with the joiner's key.
type TaggedInput = (u64, JoinerInput);

/// What an encoder thread hands back.
struct Encoded {
    frames: FrameReader,
    display: ClientDisplay,
    /// The frame encoded for the users in step, with its instructions (no `sync` yet).
    frame: Option<(Frame, BytesMut)>,
    /// A lossless refresh for the users in step (no `sync` yet); empty when nothing was due.
    refresh: BytesMut,
    /// Full-screen dumps for users being resynchronised, by user key.
    dumps: Vec<(u64, BytesMut)>,
    /// The dumps came from the last released frame and the worker published a new frame meanwhile: they
    /// may be torn and are discarded; this frame is held instead.
    superseded: Option<Frame>,
    error: Option<ShmError>,
}

/// What an encoder thread is asked to do.
struct EncodeWork {
    frames: FrameReader,
    display: ClientDisplay,
    settings: display::EncodeSettings,
    /// A newly acquired frame for the users in step.
    frame: Option<Frame>,
    /// Users to resynchronise, from `frame` if there is one, else from `last` (already released).
    dumps: Vec<u64>,
    last: Option<Frame>,
    refresh: bool,
}

fn encode_work(work: EncodeWork) -> Encoded {
    let EncodeWork { frames, mut display, settings, frame, dumps, last, refresh } = work;
    let mut done = Encoded {
        frames,
        display: ClientDisplay::default(),
        frame: None,
        refresh: BytesMut::new(),
        dumps: Vec::new(),
        superseded: None,
        error: None,
    };
    if refresh {
        display::encode_refresh(&mut display, &settings, &mut done.refresh);
    }
    let mut encoded = None;
    if let Some(frame) = frame {
        let mut out = BytesMut::new();
        display::encode_frame(&done.frames, &frame, &mut display, &settings, &mut out);
        encoded = Some((frame, out));
    }
    if !dumps.is_empty() {
        let source = encoded.as_ref().map(|(f, _)| f).or(last.as_ref());
        if let Some(source) = source {
            for key in dumps {
                let mut out = BytesMut::new();
                display::encode_full(&done.frames, source, &mut ClientDisplay::default(), &settings, &mut out);
                done.dumps.push((key, out));
            }
        }
        if encoded.is_none() {
            // The released frame's slot stays untouched until the worker publishes the next frame (it
            // draws into the other slot meanwhile). If it has published one, what we read may be torn.
            match done.frames.acquire() {
                Ok(None) => {}
                Ok(Some(next)) => {
                    done.dumps.clear();
                    done.superseded = Some(next);
                }
                Err(e) => done.error = Some(e),
            }
        }
    }
    done.frame = encoded;
    done.display = display;
    done
}

struct Session<'a> {
    protocol: Protocol,
    shared: &'a Shared,
    /// What the users in step show (stream numbers, size, and the planner's state): frames are encoded
    /// once against it. `None` while an encode holds it.
    display: Option<ClientDisplay>,
    params: Params,
    clipboard_limit: usize,
    /// Clipboard coming from the worker, assembled from chunks.
    clipboard_from_worker: Vec<u8>,
    /// A `Published` arrived and has not been acted upon, since this instant.
    frame_pending: Option<Instant>,
    /// A frame acquired but not yet encoded (found while checking a resync).
    held: Option<Frame>,
    /// The last frame encoded for the users in step (released): the source of resyncs while idle.
    last_frame: Option<Frame>,
    last_frame_at: Option<Instant>,
    last_worker_message: Instant,
    reported_unsupported: HashSet<String>,
    worker_connected: bool,
    /// The remote desktop's name and cursor, for joiners.
    remote_name: Option<Bytes>,
    cursor: Option<Cursor>,
    /// Broadcast streams (cursor, clipboard) are numbered here; each is complete in one buffer.
    control_display: ClientDisplay,
    /// `users[0]` is the owner.
    users: Vec<User>,
    /// The owner's file streams and objects, relayed to and from the worker.
    streams: StreamRelay,
    /// Terminal output written as a typescript (`typescript-path`).
    typescript: TypescriptSlot,
    next_key: u64,
    /// This session's fairness key in the encoder pool.
    encode_key: u64,
    recorder: Option<Recorder>,
    /// Joiners' instructions, tagged with the joiner's key by a forwarding task each.
    joiner_tx: mpsc::Sender<TaggedInput>,
    joiner_rx: mpsc::Receiver<TaggedInput>,
}

impl<'a> Session<'a> {
    fn new(
        protocol: Protocol,
        params: Params,
        shared: &'a Shared,
        owner: User,
        recorder: Option<Recorder>,
    ) -> Session<'a> {
        let clipboard_limit = params
            .get("clipboard-buffer-size")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(CLIPBOARD_DEFAULT)
            .clamp(CLIPBOARD_DEFAULT, CLIPBOARD_MAX);
        let (joiner_tx, joiner_rx) = mpsc::channel(crate::sharing::INPUT_QUEUE);
        Session {
            protocol,
            shared,
            encode_key: shared.encoders.key(),
            display: Some(ClientDisplay::default()),
            params,
            clipboard_limit,
            clipboard_from_worker: Vec::new(),
            frame_pending: None,
            held: None,
            last_frame: None,
            last_frame_at: None,
            last_worker_message: Instant::now(),
            reported_unsupported: HashSet::new(),
            worker_connected: false,
            remote_name: None,
            cursor: None,
            control_display: ClientDisplay::default(),
            users: vec![owner],
            streams: StreamRelay::default(),
            typescript: TypescriptSlot::default(),
            next_key: 1,
            recorder,
            joiner_tx,
            joiner_rx,
        }
    }

    fn take_owner_writer(&mut self) -> ClientWriter {
        self.users[0].writer.take().unwrap_or_else(|| ClientWriter::new(Box::new(tokio::io::sink())))
    }

    fn index_of(&self, key: u64) -> Option<usize> {
        self.users.iter().position(|u| u.key == key)
    }

    async fn run(
        &mut self,
        reader: &mut ClientReader,
        child: &mut Child,
        control: &ControlChannel,
        frames: FrameReader,
        mut joins: mpsc::Receiver<Join>,
    ) -> Result<(), SessionEnd> {
        let result = self.run_loop(reader, child, control, frames, &mut joins).await;
        // Nobody can join any more; joins already queued get the session's end like the others.
        joins.close();
        while let Ok(join) = joins.try_recv() {
            let _ = join.done.send(JoinerEnd { writer: join.writer, result: Err(joiner_end(&result)) });
        }
        result
    }

    async fn run_loop(
        &mut self,
        reader: &mut ClientReader,
        child: &mut Child,
        control: &ControlChannel,
        frames: FrameReader,
        joins: &mut mpsc::Receiver<Join>,
    ) -> Result<(), SessionEnd> {
        // The frame reader lives here between frames and on an encoder thread during one.
        let mut idle_frames = Some(frames);
        let mut encoding: Option<EncodeJob> = None;
        let worker_timeout = self.shared.config.worker_timeout();
        let owner_room = self.users[0].writer().room();
        // Logged once a session: the first time the owner's output queue holds a frame back.
        let mut reported_backlog = false;

        loop {
            let now = Instant::now();
            // Users that fell behind and have caught up (queue drained, every frame acknowledged) get a resync.
            for user in &mut self.users {
                if user.step == Step::Behind && !user.over_cap() && user.unacked.is_empty() {
                    debug!(user = %user.id, "User caught up; resynchronising");
                    user.step = Step::Resync;
                }
            }
            let mut wake_at: Option<Instant> = None;
            let mut wait_for_owner_room = false;
            if encoding.is_none() {
                match self.schedule(now) {
                    Plan::Idle => {}
                    Plan::WaitUntil(t) => wake_at = Some(t),
                    Plan::WaitForRoom => {
                        wait_for_owner_room = self.users[0].over_cap();
                        if wait_for_owner_room && !reported_backlog {
                            reported_backlog = true;
                            info!(
                                queued = self.users[0].writer().queued(),
                                "Client is behind its output; frames held back until it drains"
                            );
                        }
                        // Joiners' queues have no waker here: look again shortly.
                        wake_at = Some(now + CATCH_UP_CHECK);
                    }
                    Plan::Encode { frame, refresh } => {
                        if let Some(frames_now) = idle_frames.take() {
                            match self.start_encode(frames_now, frame, refresh) {
                                Ok(job) => encoding = Some(job),
                                Err((frames_back, e)) => {
                                    idle_frames = Some(frames_back);
                                    if let Some(e) = e {
                                        tracing::error!(error = %e, "Worker broke the shared-memory contract");
                                        worker::kill(child).await;
                                        return Err(misbehaved());
                                    }
                                }
                            }
                        }
                    }
                }
            }
            if self.users.iter().any(|u| u.step == Step::Behind) {
                wake_at = Some(wake_at.map_or(now + CATCH_UP_CHECK, |t| t.min(now + CATCH_UP_CHECK)));
            }
            let deadline = self
                .users
                .iter()
                .filter_map(|u| u.writer.as_ref().map(|w| w.last_output + KEEPALIVE))
                .chain([reader.last_input + CLIENT_TIMEOUT, self.last_worker_message + worker_timeout])
                .chain(self.users.iter().skip(1).map(|u| u.last_input + CLIENT_TIMEOUT))
                .chain(wake_at)
                .min()
                .unwrap_or(now);

            tokio::select! {
                failure = self.users[0].writer().failed() => return Err(failure.into()),
                _ = Recorder::lost(self.recorder.as_ref()) => {
                    return Err(SessionEnd::error(Status::ServerError, "Session recording failed."));
                }
                _ = owner_room.drained(), if wait_for_owner_room => {}
                instruction = reader.next() => {
                    let instruction = instruction?;
                    self.users[0].last_input = reader.last_input;
                    if !self.user_instruction(0, &instruction, control).await? {
                        return Ok(());
                    }
                }
                Some((key, input)) = self.joiner_rx.recv() => {
                    let Some(index) = self.index_of(key) else { continue };
                    match input {
                        Ok(instruction) => {
                            self.users[index].last_input = Instant::now();
                            match self.user_instruction(index, &instruction, control).await {
                                Ok(true) => {}
                                Ok(false) => self.remove_user(index, Ok(())),
                                Err(end) => self.remove_user(index, Err(end)),
                            }
                        }
                        Err(e) => self.remove_user(index, Err(e.into())),
                    }
                }
                Some(join) = joins.recv() => self.add_joiner(join)?,
                message = control.recv::<FromWorker>() => {
                    self.last_worker_message = Instant::now();
                    match message {
                        Ok(Some(message)) => {
                            if let Err(end) = self.handle_worker(message).await {
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
                            self.handle_worker(message).await?;
                        }
                    }
                    return Err(SessionEnd::error(Status::UpstreamError, WORKER_CRASHED));
                }
                done = async { encoding.as_mut().expect("guarded by the branch condition").await }, if encoding.is_some() => {
                    encoding = None;
                    let done = done.map_err(|e| {
                        tracing::error!(error = %e, "Frame encode failed");
                        SessionEnd::error(Status::ServerError, "Frame encoder failed.")
                    })?;
                    match self.encoded(done)? {
                        (frames_back, Some(seq)) => {
                            idle_frames = Some(frames_back);
                            if control.send(&ToWorker::Consumed { seq }).await.is_err() {
                                return Err(worker_gone(child).await);
                            }
                        }
                        (frames_back, None) => idle_frames = Some(frames_back),
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
                    self.timers(now)?;
                }
            }
        }
    }

    /// Keep-alives for every user, and the silence timeout for joiners (the owner's is the loop's).
    fn timers(&mut self, now: Instant) -> Result<(), SessionEnd> {
        let mut index = 0;
        while index < self.users.len() {
            let user = &mut self.users[index];
            if index > 0 && now >= user.last_input + CLIENT_TIMEOUT {
                self.remove_user(index, Err(SessionEnd::error(Status::ClientTimeout, "User is not responding.")));
                continue;
            }
            if now >= user.writer().last_output + KEEPALIVE {
                let mut out = BytesMut::new();
                encode(&mut out, "nop").finish();
                if let Err(e) = user.writer().send_bytes(out.freeze()) {
                    if index == 0 {
                        return Err(e.into());
                    }
                    self.remove_user(index, Err(e.into()));
                    continue;
                }
            }
            index += 1;
        }
        Ok(())
    }

    /// The frame scheduler: what to encode now, if anything, given the users' state.
    fn schedule(&mut self, now: Instant) -> Plan {
        let resyncs = self.users.iter().any(|u| u.step == Step::Resync);
        let in_step = || self.users.iter().filter(|u| u.step == Step::Live);
        let Some(pending_since) = self.frame_pending.or(self.held.as_ref().map(|_| now)) else {
            if resyncs && self.last_frame.is_some() {
                return Plan::Encode { frame: false, refresh: false };
            }
            // Nothing new: a lossless refresh may be due for the users in step.
            let due = self.display.as_ref().and_then(display::refresh_due).map(Instant::from_std);
            return match due {
                Some(due) if in_step().next().is_some() => {
                    if due <= now {
                        Plan::Encode { frame: false, refresh: true }
                    } else {
                        Plan::WaitUntil(due)
                    }
                }
                _ => Plan::Idle,
            };
        };
        if let Some(last) = self.last_frame_at {
            if now < last + MIN_FRAME_GAP {
                return Plan::WaitUntil(last + MIN_FRAME_GAP);
            }
        }
        let ready = in_step().filter(|u| u.ready()).count();
        let not_ready = in_step().count() - ready;
        if not_ready == 0 {
            if ready == 0 && !resyncs {
                // Everybody fell behind: the frame waits in the worker, where later changes coalesce.
                return Plan::WaitForRoom;
            }
            return Plan::Encode { frame: true, refresh: false };
        }
        if ready > 0 || resyncs {
            // Some users wait for this frame: the others get until the merge limit, then drop out of step.
            let limit = pending_since + MAX_FRAME_DELAY;
            if now < limit {
                return Plan::WaitUntil(limit);
            }
            for user in &mut self.users {
                if user.step == Step::Live && !user.ready() {
                    info!(user = %user.id, queued = user.over_cap(), unacked = user.unacked.len(), "User fell behind; it gets a resync once it catches up");
                    user.step = Step::Behind;
                }
            }
            return Plan::Encode { frame: true, refresh: false };
        }
        // Nobody is ready: past guacd's lag cap the frame goes anyway; otherwise wait for the earliest echo
        // deadline, or for a queue to drain.
        if in_step().all(|u| u.lag_expired(now)) {
            return Plan::Encode { frame: true, refresh: false };
        }
        let echo_deadline =
            in_step().filter(|u| !u.over_cap()).filter_map(|u| u.unacked.front().map(|(_, t)| *t + MAX_LAG)).min();
        match echo_deadline {
            Some(t) if !self.users.iter().any(|u| u.step == Step::Live && u.over_cap()) => Plan::WaitUntil(t),
            _ => Plan::WaitForRoom,
        }
    }

    /// How the next frame is encoded: the configured mode, the formats every receiving user accepts and
    /// the receiving users' lag (the largest among users in step: they share one encode).
    fn encode_settings(&self) -> display::EncodeSettings {
        let now = Instant::now();
        let receiving = self.users.iter().filter(|u| u.step != Step::Behind);
        let lag_ms = receiving.clone().map(|u| u.lag_ms(now)).max().unwrap_or(0);
        let mut formats = display::ImageFormats { jpeg: true, webp: true };
        for user in receiving {
            formats.jpeg &= user.formats.jpeg;
            formats.webp &= user.formats.webp;
        }
        if self.recorder.as_ref().is_some_and(Recorder::wants_output) {
            // Recordings are played by guacamole-common-js in any browser: no WebP.
            formats.webp = false;
        }
        let naive = self.shared.config.display_mode == crate::config::DisplayMode::Naive;
        display::EncodeSettings { naive, lag_ms, formats }
    }

    /// Starts an encode on the shared pool: a new frame (acquired now, or held), resyncs, a refresh.
    /// Gives the reader back when there is nothing to do, with the error if the worker broke the contract.
    fn start_encode(
        &mut self,
        mut frames: FrameReader,
        want_frame: bool,
        refresh: bool,
    ) -> Result<EncodeJob, (FrameReader, Option<ShmError>)> {
        let mut frame = None;
        let mut published_at = None;
        if want_frame {
            published_at = self.frame_pending.take();
            frame = match self.held.take() {
                Some(held) => Some(held),
                None => match frames.acquire() {
                    Ok(frame) => frame,
                    Err(e) => return Err((frames, Some(e))),
                },
            };
        }
        let dumps: Vec<u64> = self.users.iter().filter(|u| u.step == Step::Resync).map(|u| u.key).collect();
        if frame.is_none() && !refresh && (dumps.is_empty() || self.last_frame.is_none()) {
            return Err((frames, None));
        }
        if frame.is_some() {
            self.last_frame_at = Some(Instant::now());
        }
        let work = EncodeWork {
            frames,
            display: self.display.take().unwrap_or_default(),
            settings: self.encode_settings(),
            frame,
            dumps,
            last: self.last_frame.clone(),
            refresh,
        };
        let encode_seconds = self.shared.metrics.encode_seconds.clone();
        let handoff = work.frame.is_some().then(|| {
            let m = &self.shared.metrics;
            (Instant::now(), published_at, m.handoff_seconds.clone(), m.publish_to_encode_seconds.clone())
        });
        // The job is queued on the pool when the session loop first polls this future (right away, in
        // its `select!`), in this session's turn: one handoff to a parked encoder thread.
        Ok(Box::pin(self.shared.encoders.run(self.encode_key, move || {
            if let Some((acquired, published, handoff_seconds, publish_seconds)) = handoff {
                let now = Instant::now();
                handoff_seconds.observe(now - acquired);
                if let Some(published) = published {
                    publish_seconds.observe(now - published);
                }
            }
            let started = std::time::Instant::now();
            let done = encode_work(work);
            encode_seconds.observe(started.elapsed());
            done
        })))
    }

    /// Sends what an encode produced: the frame to every user in step (one buffer, shared) and the
    /// recording, resyncs to their users. Returns the reader and the sequence number to release.
    fn encoded(&mut self, done: Encoded) -> Result<(FrameReader, Option<u64>), SessionEnd> {
        let Encoded { mut frames, display, frame, refresh, dumps, superseded, error } = done;
        self.display = Some(display);
        if let Some(e) = error {
            tracing::error!(error = %e, "Worker broke the shared-memory contract");
            return Err(misbehaved());
        }
        if !refresh.is_empty() {
            self.send_frame_to_group(refresh)?;
        }
        let mut released = None;
        if let Some((frame, out)) = frame {
            self.send_frame_to_group(out)?;
            self.shared.metrics.frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let seq = frame.seq;
            self.last_frame = Some(frame.clone());
            frames.release(frame);
            released = Some(seq);
        }
        for (key, mut out) in dumps {
            let Some(index) = self.index_of(key) else { continue };
            if self.users[index].step != Step::Resync {
                continue;
            }
            if let Some(cursor) = &self.cursor {
                display::encode_cursor(&mut out, &mut self.control_display, cursor);
            }
            let timestamp = now_millis();
            encode(&mut out, "sync").uint(timestamp).uint(1).finish();
            let user = &mut self.users[index];
            user.step = Step::Live;
            user.unacked.push_back((timestamp, Instant::now()));
            if let Err(e) = user.writer().send_frame(out.freeze()) {
                if index == 0 {
                    return Err(e.into());
                }
                self.remove_user(index, Err(e.into()));
            }
        }
        if let Some(next) = superseded {
            // A new frame arrived while resyncing from the old one: encode it next (dumps included).
            self.held = Some(next);
        }
        Ok((frames, released))
    }

    /// A frame's instructions plus `sync` to every user in step and to the recording.
    fn send_frame_to_group(&mut self, mut out: BytesMut) -> Result<(), SessionEnd> {
        let timestamp = now_millis();
        encode(&mut out, "sync").uint(timestamp).uint(1).finish();
        let out = out.freeze();
        if let Some(recorder) = &mut self.recorder {
            recorder.output(&out);
        }
        let sent = Instant::now();
        let mut index = 0;
        while index < self.users.len() {
            let user = &mut self.users[index];
            if user.step != Step::Live {
                index += 1;
                continue;
            }
            user.unacked.push_back((timestamp, sent));
            let sent_ok = user.writer().send_frame(out.clone());
            index = self.after_send(index, sent_ok)?;
        }
        Ok(())
    }

    /// After output to user `index`: the index of the next user. A joiner whose queue failed is removed
    /// (so the same index is next); the owner's failure ends the session.
    fn after_send(&mut self, index: usize, sent: Result<(), ClientError>) -> Result<usize, SessionEnd> {
        match sent {
            Ok(()) => Ok(index + 1),
            Err(e) if index == 0 => Err(e.into()),
            Err(e) => {
                self.remove_user(index, Err(e.into()));
                Ok(index)
            }
        }
    }

    /// Control output for every user (and the recording): cursor, name, clipboard, `disconnect`.
    fn broadcast(&mut self, out: Bytes) -> Result<(), SessionEnd> {
        if let Some(recorder) = &mut self.recorder {
            recorder.output(&out);
        }
        let mut index = 0;
        while index < self.users.len() {
            let sent = self.users[index].writer().send_bytes(out.clone());
            index = self.after_send(index, sent)?;
        }
        Ok(())
    }

    /// A joiner arrives: it gets the remote name now and a full-screen dump with the next encode.
    fn add_joiner(&mut self, join: Join) -> Result<(), SessionEnd> {
        let Join { user_id, name, version, read_only, formats, mut writer, input, done } = join;
        if self.users.len() > MAX_JOINERS {
            warn!(user = %user_id, "Too many users in this session; join refused");
            let _ = done.send(JoinerEnd {
                writer,
                result: Err(SessionEnd::error(Status::ClientTooMany, "Too many users in this session.")),
            });
            return Ok(());
        }
        if let Some(name) = &self.remote_name {
            if writer.send_bytes(name.clone()).is_err() {
                return Ok(());
            }
        }
        let key = self.next_key;
        self.next_key += 1;
        let forward = self.joiner_tx.clone();
        let mut input = input;
        tokio::spawn(async move {
            while let Some(instruction) = input.recv().await {
                if forward.send((key, instruction)).await.is_err() {
                    break;
                }
            }
        });
        info!(user = %user_id, name = name.as_deref().unwrap_or(""), read_only, "User joined");
        let user = User {
            key,
            id: user_id,
            name,
            version,
            read_only,
            formats,
            writer: Some(writer),
            step: Step::Resync,
            unacked: VecDeque::new(),
            lag: Lag::default(),
            last_input: Instant::now(),
            clipboard_from_client: None,
            done: Some(done),
        };
        self.notify_owner(MSG_USER_JOINED, &user)?;
        self.users.push(user);
        Ok(())
    }

    /// guacd 1.5+'s `msg` to the owner: a user joined or left.
    fn notify_owner(&mut self, code: u64, user: &User) -> Result<(), SessionEnd> {
        let owner = &mut self.users[0];
        if owner.version < ProtocolVersion::V1_5_0 {
            return Ok(());
        }
        let mut out = BytesMut::new();
        encode(&mut out, "msg").uint(code).str(&user.id).str(user.display_name()).finish();
        owner.writer().send_bytes(out.freeze()).map_err(SessionEnd::from)
    }

    /// A joiner leaves (or is dropped): its writer goes back to its task with the reason.
    fn remove_user(&mut self, index: usize, result: Result<(), SessionEnd>) {
        if index == 0 || index >= self.users.len() {
            return;
        }
        let mut user = self.users.remove(index);
        match &result {
            Ok(()) => info!(user = %user.id, "User left"),
            Err(end) => {
                info!(user = %user.id, status = ?end.status.map(Status::code), message = %end.message, "User left")
            }
        }
        // The owner may be gone too (its queue failed): nothing more to tell it then.
        let _ = self.notify_owner(MSG_USER_LEFT, &user);
        if let (Some(done), Some(writer)) = (user.done.take(), user.writer.take()) {
            let _ = done.send(JoinerEnd { writer, result });
        }
    }

    /// The session ends: every joiner's writer goes back to its task with the session's end (guacd
    /// closes every user's connection when the owner leaves).
    fn end_joiners(&mut self, result: &Result<(), SessionEnd>) {
        let end = joiner_end(result);
        while self.users.len() > 1 {
            let mut user = self.users.remove(1);
            if let (Some(done), Some(mut writer)) = (user.done.take(), user.writer.take()) {
                if end.status.is_none() {
                    let mut out = BytesMut::new();
                    encode(&mut out, "disconnect").finish();
                    let _ = writer.send_bytes(out.freeze());
                }
                let _ = done.send(JoinerEnd { writer, result: Err(end.clone()) });
            }
        }
    }

    /// One instruction from user `index`; `Ok(false)` when the user said `disconnect`.
    async fn user_instruction(
        &mut self,
        index: usize,
        instruction: &Instruction,
        control: &ControlChannel,
    ) -> Result<bool, SessionEnd> {
        let Some(mut writer) = self.users[index].writer.take() else { return Ok(true) };
        let result = self.handle_client(index, instruction, &mut writer, control).await;
        self.users[index].writer = Some(writer);
        result
    }

    /// Handles one instruction from user `index` (0: the owner); `Ok(false)` when it said `disconnect`.
    async fn handle_client(
        &mut self,
        index: usize,
        instruction: &Instruction,
        writer: &mut ClientWriter,
        control: &ControlChannel,
    ) -> Result<bool, SessionEnd> {
        let parsed = ClientInstruction::parse_runtime(instruction).map_err(|e| {
            debug!(error = %e, instruction = ?instruction, "Malformed client instruction");
            SessionEnd::error(Status::ClientBadRequest, format!("Malformed instruction: {e}."))
        })?;
        let read_only = self.users[index].read_only;
        let owner = index == 0;
        let to_worker = match parsed {
            ClientInstruction::Sync { timestamp } => {
                let user = &mut self.users[index];
                let now = Instant::now();
                while let Some((ts, sent)) = user.unacked.front().copied() {
                    if ts > timestamp {
                        break;
                    }
                    user.unacked.pop_front();
                    if ts == timestamp {
                        user.lag.echoed(now.saturating_duration_since(sent).as_millis() as u64);
                    }
                }
                None
            }
            // Acks for the worker's own streams (downloads) go back to it; the rest are image acks.
            ClientInstruction::Ack { stream, message, status } if owner => {
                self.streams.client_ack(stream, &message, status).map(ToWorker::Stream)
            }
            ClientInstruction::Nop | ClientInstruction::Ack { .. } | ClientInstruction::Internal { .. } => None,
            ClientInstruction::Disconnect => return Ok(false),
            ClientInstruction::Mouse { x, y, mask } if !read_only => {
                if let Some(recorder) = &mut self.recorder {
                    recorder.mouse(x, y, mask);
                }
                Some(ToWorker::Mouse { x, y, mask })
            }
            ClientInstruction::Key { keysym, pressed } if !read_only => {
                if let Some(recorder) = &mut self.recorder {
                    recorder.key(keysym, pressed);
                }
                Some(ToWorker::Key { keysym, pressed })
            }
            // The display size is the owner's (a joiner's window does not resize the remote desktop).
            ClientInstruction::Size { width, height, .. } if !read_only && owner => {
                Some(ToWorker::Resize { width, height })
            }
            ClientInstruction::Clipboard { stream, .. } => {
                self.users[index].clipboard_from_client = Some((stream, Vec::new()));
                None
            }
            // The owner's uploads and downloads go through the stream relay (streams.rs).
            ClientInstruction::Blob { stream, data } if owner && self.streams.owns_upload(stream) => {
                let mut out = BytesMut::new();
                let message = self.streams.client_blob(stream, data, &mut out);
                writer.send(&out).await?;
                message.map(ToWorker::Stream)
            }
            ClientInstruction::End { stream } if owner && self.streams.owns_upload(stream) => {
                self.streams.client_end(stream).map(ToWorker::Stream)
            }
            ClientInstruction::File { stream, mimetype, name } if owner => {
                let mut out = BytesMut::new();
                let message = self.streams.client_file(stream, mimetype, name, !read_only, &mut out);
                writer.send(&out).await?;
                message.map(ToWorker::Stream)
            }
            ClientInstruction::Put { object, stream, mimetype, name } if owner => {
                let mut out = BytesMut::new();
                let message = self.streams.client_put(object, stream, mimetype, name, !read_only, &mut out);
                writer.send(&out).await?;
                message.map(ToWorker::Stream)
            }
            ClientInstruction::Get { object, name } if owner => {
                self.streams.client_get(object, name).map(ToWorker::Stream)
            }
            ClientInstruction::Blob { stream, data } => {
                let mut out = BytesMut::new();
                let limit = self.clipboard_limit;
                match &mut self.users[index].clipboard_from_client {
                    Some((open, received)) if *open == stream => {
                        let room = limit.saturating_sub(received.len());
                        let within = data.len() <= room;
                        received.extend_from_slice(&data[..data.len().min(room)]);
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
            ClientInstruction::End { stream } => match self.users[index].clipboard_from_client.take() {
                Some((open, received)) if open == stream => {
                    let allowed = !read_only && !self.params.flag("disable-paste");
                    if allowed {
                        if let Some(recorder) = &mut self.recorder {
                            recorder.clipboard(stream, "text/plain", &received);
                        }
                    }
                    allowed.then(|| ToWorker::Clipboard { mimetype: "text/plain".into(), data: Vec::new(), last: true })
                }
                other => {
                    self.users[index].clipboard_from_client = other;
                    None
                }
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
    async fn handle_worker(&mut self, message: FromWorker) -> Result<(), SessionEnd> {
        match message {
            FromWorker::Heartbeat | FromWorker::Hint { .. } => {}
            FromWorker::Typescript { data } => {
                if data.len() > shm_proto::control::TYPESCRIPT_CHUNK {
                    return Err(misbehaved());
                }
                self.typescript.write(&self.params, data);
            }
            // File streams and objects are the owner's (as guacd exposes its filesystem to the owner).
            FromWorker::Stream(event) => {
                let mut out = BytesMut::new();
                // Sound for a client that is behind is dropped (after the checks), never queued.
                let drop_audio = self.streams.is_audio_blob(&event) && self.users[0].writer().over_cap();
                if let Err(breach) = self.streams.worker(event, &mut out) {
                    tracing::error!(%breach, "Worker broke the stream contract");
                    return Err(misbehaved());
                }
                if !out.is_empty() && !drop_audio {
                    self.users[0].writer().send(&out).await?;
                }
            }
            FromWorker::Published { .. } => {
                self.frame_pending.get_or_insert_with(Instant::now);
            }
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
                    let out = out.freeze();
                    self.remote_name = Some(out.clone());
                    self.broadcast(out)?;
                }
            }
            FromWorker::Cursor { hotspot_x, hotspot_y, width, height, bgra } => {
                let cursor = Cursor::validate(hotspot_x, hotspot_y, width, height, bgra).ok_or_else(misbehaved)?;
                let mut out = BytesMut::new();
                display::encode_cursor(&mut out, &mut self.control_display, &cursor);
                self.cursor = Some(cursor);
                self.broadcast(out.freeze())?;
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
                        let stream = self.control_display.stream();
                        encode(&mut out, "clipboard").uint(stream.into()).str("text/plain").finish();
                        guac_proto::encode_blobs(&mut out, stream, &text);
                        encode(&mut out, "end").uint(stream.into()).finish();
                        self.broadcast(out.freeze())?;
                    }
                }
            }
            FromWorker::Unsupported { parameter } => {
                // The recording parameters are the supervisor's, whatever the worker makes of them.
                let ours = parameter.starts_with("recording-") || parameter == "create-recording-path";
                let known = !ours && self.protocol.parameter_names().contains(&parameter.as_str());
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
                // Joiners get theirs when the session hands their writers back.
                self.users[0].writer().disconnect().await;
                return Err(SessionEnd::close(message));
            }
        }
        Ok(())
    }
}

/// What the scheduler decided.
enum Plan {
    /// Nothing to send.
    Idle,
    /// Look again at this instant (frame gap, lag grace, refresh).
    WaitUntil(Instant),
    /// Users in step are over their queue cap: wait for them to drain.
    WaitForRoom,
    /// Encode now: a new frame (if `frame`), pending resyncs, a refresh (if `refresh`).
    Encode { frame: bool, refresh: bool },
}

/// What a joiner is told when the session ends: the session's error, or a plain close.
fn joiner_end(result: &Result<(), SessionEnd>) -> SessionEnd {
    match result {
        Err(end @ SessionEnd { status: Some(_), .. }) => {
            // Errors about the owner's own connection are not the joiners' business.
            match end.status {
                Some(
                    Status::ClientBadRequest | Status::ClientTimeout | Status::ClientOverrun | Status::ClientBadType,
                ) => SessionEnd::close("The session's owner left."),
                _ => end.clone(),
            }
        }
        _ => SessionEnd::close("The session's owner left."),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn shared() -> Shared {
        Shared {
            config: Config::parse_from(["guacr"]),
            encoders: crate::encoder_pool::EncoderPool::new(1, 4).expect("encoder thread"),
            metrics: Metrics::default(),
            sharing: crate::sharing::Registry::default(),
        }
    }

    fn user(key: u64) -> User {
        let request = ConnectRequest {
            selection: Selection::Protocol("vnc".into()),
            client_version: ProtocolVersion::V1_5_0,
            params: Vec::new(),
            width: 1024,
            height: 768,
            dpi: 96,
            audio: Vec::new(),
            video: Vec::new(),
            image: vec!["image/png".into()],
            timezone: None,
            name: None,
        };
        User::new(key, format!("@{key}"), &request, false, ClientWriter::new(Box::new(tokio::io::sink())), None)
    }

    fn plan_name(plan: &Plan) -> String {
        match plan {
            Plan::Idle => "idle".into(),
            Plan::WaitUntil(_) => "wait".into(),
            Plan::WaitForRoom => "room".into(),
            Plan::Encode { frame, refresh } => format!("encode frame={frame} refresh={refresh}"),
        }
    }

    #[tokio::test]
    async fn the_scheduler_paces_frames_and_drops_a_lagging_user_out_of_step() {
        let shared = shared();
        let mut session = Session::new(Protocol::Vnc, Params::default(), &shared, user(0), None);
        let now = Instant::now();
        assert_eq!(plan_name(&session.schedule(now)), "idle", "nothing published");
        session.frame_pending = Some(now);
        assert_eq!(plan_name(&session.schedule(now)), "encode frame=true refresh=false");

        // At most one frame per 10 ms.
        session.last_frame_at = Some(now);
        assert!(matches!(session.schedule(now), Plan::WaitUntil(t) if t == now + MIN_FRAME_GAP));
        session.last_frame_at = Some(now - MIN_FRAME_GAP);

        // A lone user two frames behind on `sync`: the frame waits for its echo, at most guacd's 500 ms.
        session.users[0].unacked.extend([(1, now), (2, now)]);
        assert!(matches!(session.schedule(now), Plan::WaitUntil(t) if t == now + MAX_LAG));
        assert_eq!(plan_name(&session.schedule(now + MAX_LAG)), "encode frame=true refresh=false");

        // A second, ready user: the lagging one holds the frame back for 100 ms, then drops out of step.
        session.users.push(user(1));
        assert!(matches!(session.schedule(now), Plan::WaitUntil(t) if t == now + MAX_FRAME_DELAY));
        assert_eq!(session.users[0].step, Step::Live);
        let later = now + MAX_FRAME_DELAY;
        assert_eq!(plan_name(&session.schedule(later)), "encode frame=true refresh=false");
        assert_eq!((session.users[0].step, session.users[1].step), (Step::Behind, Step::Live));

        // Everybody behind: the frame waits in the worker, where later changes coalesce.
        session.users[1].step = Step::Behind;
        assert_eq!(plan_name(&session.schedule(later)), "room");

        // A joiner to resynchronise while nothing is pending: a dump from the last frame, once there is one.
        session.frame_pending = None;
        session.users[1].step = Step::Resync;
        assert_eq!(plan_name(&session.schedule(later)), "idle", "no frame yet to resync from");
    }

    #[test]
    fn processing_lag_follows_guacd() {
        let mut lag = Lag::default();
        lag.echoed(20);
        assert_eq!((lag.baseline_ms, lag.processing_ms), (20, 0));
        lag.echoed(120);
        assert_eq!(lag.processing_ms, 100);
        lag.echoed(20);
        assert_eq!(lag.processing_ms, 0, "floored at zero");
    }

    #[test]
    fn joiners_do_not_inherit_the_owners_client_errors() {
        let owner_silent = Err(SessionEnd::error(Status::ClientTimeout, "User is not responding."));
        assert_eq!(joiner_end(&owner_silent).status, None);
        let crashed = Err(SessionEnd::error(Status::UpstreamError, WORKER_CRASHED));
        assert_eq!(joiner_end(&crashed).status, Some(Status::UpstreamError));
        assert_eq!(joiner_end(&Ok(())).status, None);
    }
}
