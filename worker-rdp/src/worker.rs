//! The worker's driver: IronRDP's connector and active stage around our socket, the shared surface and
//! the control channel.
//!
//! 1. Wait for `Start`, parse the parameters, report unsupported ones, load the system roots (unless
//!    `ignore-cert`), resolve the host, then apply the sandbox.
//! 2. Connect (`timeout`), X.224 negotiation, TLS with our certificate policy (skipped under standard
//!    RDP security), CredSSP when NLA was selected, then the rest of the connection sequence, all
//!    while answering heartbeats. With `security=any` a server that refuses TLS and NLA is tried
//!    again with standard RDP security.
//! 3. One `select!` over the next PDU (cancel-safe), the control socket and the heartbeat. IronRDP
//!    decodes into its own BGRX image; each update's rectangles are copied into the back surface and
//!    marked dirty. A frame is published when no complete PDU is buffered (the server's burst is
//!    over) and the supervisor released the previous frame.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ironrdp_cliprdr::pdu::{ClipboardFormat, ClipboardFormatId, FormatDataResponse};
use ironrdp_cliprdr::CliprdrClient;
use ironrdp_connector::sspi::generator::NetworkRequest;
use ironrdp_connector::{
    BitmapConfig, ClientConnector, ClientConnectorState, ConnectionResult, ConnectorError, ConnectorErrorKind,
    ConnectorResult, Credentials, DesktopSize, ServerName,
};
use ironrdp_displaycontrol::client::DisplayControlClient;
use ironrdp_displaycontrol::pdu::MonitorLayoutEntry;
use ironrdp_dvc::DrdynvcClient;
use ironrdp_graphics::image_processing::PixelFormat;
use ironrdp_graphics::pointer::DecodedPointer;
use ironrdp_input::{MouseButton, MousePosition, Operation, WheelRotations};
use ironrdp_pdu::geometry::InclusiveRectangle;
use ironrdp_pdu::nego::{FailureCode, SecurityProtocol};
use ironrdp_pdu::rdp::capability_sets::{BitmapCodecs, MajorPlatformType};
use ironrdp_pdu::rdp::client_info::{PerformanceFlags, TimezoneInfo};
use ironrdp_pdu::Action;
use ironrdp_rdpsnd::client::Rdpsnd;
use ironrdp_session::image::DecodedImage;
use ironrdp_session::{ActiveStage, ActiveStageBuilder, ActiveStageOutput, GracefulDisconnectReason};
use ironrdp_tokio::{FramedWrite as _, TokioFramed};
use shm_proto::control::{StreamFromWorker, StreamToWorker, CLIPBOARD_CHUNK, MAX_CURSOR_SIDE};
use shm_proto::{FromWorker, Rect, ToWorker};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls;
use tracing::{debug, info, warn};
use worker_common::{control_failed, heartbeat_timer, WorkerArgs, WorkerSession, EXIT_REPORTED};

use crate::audio::{self, AudioEvent, AudioQueue, AUDIO_STREAM};
use crate::cert::{self, PolicyVerifier, Verdict};
use crate::clipboard::{self as clip, ClipEvent, ClipQueue};
use crate::keymap::Keyboard;
use crate::settings::{ResizeMethod, Security, Settings, DEFAULT_DPI, DEFAULT_HEIGHT, DEFAULT_WIDTH};
use crate::stdsec::ShimStream;

/// The RDP connection sequence after TCP: negotiation, TLS, CredSSP, licensing, capabilities.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// The least time between two desktop size changes asked of the server (guacd's interval for both
/// resize methods): a window being dragged larger sends many `size`s, the server gets the last.
pub const RESIZE_INTERVAL: Duration = Duration::from_millis(500);

/// How long after connecting a display update waits for the server to open the Display Control channel.
pub const DISPLAY_CHANNEL_WAIT: Duration = Duration::from_secs(5);

/// Bound on the server output kept while a reactivation is in progress.
pub const MAX_DEFERRED: usize = 64 << 20;

/// Guacamole status codes (guacd-wire.md §7).
pub mod status {
    pub const UPSTREAM_TIMEOUT: u16 = 514;
    pub const UPSTREAM_ERROR: u16 = 515;
    pub const UPSTREAM_NOT_FOUND: u16 = 519;
    pub const UPSTREAM_UNAVAILABLE: u16 = 520;
    pub const SESSION_CONFLICT: u16 = 521;
    pub const SESSION_TIMEOUT: u16 = 522;
    pub const SESSION_CLOSED: u16 = 523;
    pub const CLIENT_FORBIDDEN: u16 = 771;
    pub const CLIENT_UNAUTHORIZED: u16 = 769;
}

/// A fatal error, as the supervisor will show it.
#[derive(Debug)]
pub struct Failure {
    pub status: u16,
    pub message: String,
    /// The server refused every enhanced security protocol (retry with standard RDP security).
    standard_only: bool,
}

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into(), standard_only: false }
    }

    fn connector(phase: &str, e: &ConnectorError) -> Failure {
        let status = match e.kind() {
            ConnectorErrorKind::Credssp(_) | ConnectorErrorKind::AccessDenied => status::CLIENT_UNAUTHORIZED,
            _ => status::UPSTREAM_ERROR,
        };
        let mut failure = Failure::new(status, format!("RDP {phase} failed: {}", e.report()));
        if let ConnectorErrorKind::Negotiation(n) = e.kind() {
            failure.standard_only = n.code() == FailureCode::SSL_NOT_ALLOWED_BY_SERVER;
            failure.message = format!("RDP security negotiation failed (wrong security type?): {n}");
        }
        // A server that allows only standard security may also just select it (xrdp with
        // `security_layer=rdp` does), which IronRDP refuses when TLS was offered; it has no error kind
        // for that, so its message is the signal.
        if let ConnectorErrorKind::Reason(reason) = e.kind() {
            failure.standard_only = reason.contains("server selected STANDARD_RDP_SECURITY");
        }
        failure
    }
}

/// A byte stream the RDP session runs over: plain TCP (standard security) or TLS.
pub trait Transport: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Transport for T {}
type Framed = TokioFramed<Box<dyn Transport>>;

/// CredSSP only needs the network for Kerberos (KDC); NTLM never calls it.
struct NoNetwork;

impl ironrdp_tokio::NetworkClient for NoNetwork {
    async fn send(&mut self, request: &NetworkRequest) -> ConnectorResult<Vec<u8>> {
        Err(ironrdp_connector::reason_err!("CredSSP", "no network access for Kerberos ({})", request.url))
    }
}

/// Runs one session; returns the process exit code.
pub async fn run(_args: &WorkerArgs) -> i32 {
    let failure = "Unable to connect to RDP server";
    let (mut session, start, mut settings) =
        match WorkerSession::begin_with(status::UPSTREAM_NOT_FOUND, failure, Settings::from_params).await {
            Ok(begun) => begun,
            Err(code) => return code,
        };
    settings.set_client_audio(&start.audio_mimetypes);
    // The surface bounds the desktop; the parameters win over the client's size, like guacd.
    let geometry = session.frames.geometry();
    let width = settings.width.or((start.width > 0).then_some(start.width)).unwrap_or(DEFAULT_WIDTH);
    let height = settings.height.or((start.height > 0).then_some(start.height)).unwrap_or(DEFAULT_HEIGHT);
    let size = (width.min(geometry.max_width).min(8192), height.min(geometry.max_height).min(8192));
    let dpi = settings.dpi.or((start.dpi > 0).then_some(start.dpi)).unwrap_or(DEFAULT_DPI);

    // Before the sandbox: the roots live in /etc/ssl.
    settings.cert.load_roots();
    // The clipboard channel is joined unless both directions are off.
    let clip_queue = (!(settings.disable_copy && settings.disable_paste)).then(ClipQueue::default);
    // The sound channel is joined when the client plays a format we take and `disable-audio` is off.
    let audio_queue = (!audio::formats_for(&settings.audio).is_empty()).then(AudioQueue::default);
    let channels = Channels { clip: clip_queue.clone(), audio: audio_queue.clone() };
    let (connected, resized) = match session.serve_while(connect(&settings, size, dpi, channels)).await {
        Ok(done) => done,
        Err(code) => return code,
    };
    let (addrs, framed, result) = match connected {
        Ok(connection) => connection,
        Err(failure) => {
            session.fail(failure.status, failure.message).await;
            return EXIT_REPORTED;
        }
    };
    let desktop = result.desktop_size;
    let (width, height) = (u32::from(desktop.width), u32::from(desktop.height));
    info!(host = %settings.hostname, port = settings.port, width, height, "Connected to RDP server");
    if let Err(e) = session.frames.resize(width, height) {
        session.fail(status::UPSTREAM_ERROR, format!("RDP desktop size: {e}")).await;
        return EXIT_REPORTED;
    }
    let name = settings.hostname.clone();
    if session.control.send(&FromWorker::Connected { width, height, name }).await.is_err() {
        return 1;
    }
    let image = DecodedImage::new(PixelFormat::BgrX32, desktop.width, desktop.height);
    let (active, activation) = active_stage(result);
    let keyboard = Keyboard::new(settings.layout);
    let mut worker = Worker {
        session,
        // A size the client sent while we connected is passed on at once.
        resize: Resize {
            method: settings.resize,
            wanted: resized.filter(|_| settings.resize != ResizeMethod::None),
            asked: size,
            due: tokio::time::Instant::now(),
            channel_deadline: tokio::time::Instant::now() + DISPLAY_CHANNEL_WAIT,
        },
        addrs,
        dpi,
        deferred: Vec::new(),
        read_only: settings.read_only,
        active,
        image,
        keyboard,
        input_state: ironrdp_input::Database::new(),
        activation,
        buttons: 0,
        frame_open: false,
        clip: clip_queue,
        audio: audio_queue,
        audio_open: None,
        audio_refused: false,
        local_text: None,
        paste: Vec::new(),
        disable_copy: settings.disable_copy,
        disable_paste: settings.disable_paste,
        clipboard_buffer_size: settings.clipboard_buffer_size,
        line_ends: settings.line_ends,
        settings,
    };
    let mut framed = framed;
    loop {
        match worker.serve(framed).await {
            End::Exit(code) => return code,
            End::Fail(failure) => {
                worker.session.fail(failure.status, failure.message).await;
                return EXIT_REPORTED;
            }
            End::Reconnect(size) => match worker.reconnect(size).await {
                Ok(next) => framed = next,
                Err(code) => return code,
            },
        }
    }
}

/// The session stage for a finished connection sequence, and what a reactivation needs.
fn active_stage(
    result: ConnectionResult,
) -> (ActiveStage, ironrdp_connector::connection_activation::ConnectionActivationFactory) {
    let stage = ActiveStageBuilder {
        static_channels: result.static_channels,
        user_channel_id: result.user_channel_id,
        io_channel_id: result.io_channel_id,
        message_channel_id: result.message_channel_id,
        share_id: result.share_id,
        compression_type: result.compression_type,
        enable_server_pointer: result.enable_server_pointer,
        pointer_software_rendering: result.pointer_software_rendering,
    }
    .build();
    (stage, result.activation_factory)
}

/// Resolves, applies the sandbox, connects; with `security=any`, falls back to standard RDP security
/// once if the server allows nothing else.
async fn connect(
    settings: &Settings,
    size: (u32, u32),
    dpi: u32,
    channels: Channels,
) -> Result<(Vec<SocketAddr>, Framed, ConnectionResult), Failure> {
    let addrs = worker_common::resolve_off_thread(&settings.hostname, settings.port).await.map_err(|e| {
        Failure::new(
            status::UPSTREAM_NOT_FOUND,
            format!("Unable to connect to RDP server {}:{}: {e}", settings.hostname, settings.port),
        )
    })?;
    // Before the first byte from the server: Landlock (this port only, no files) and seccomp.
    worker_common::sandbox(&worker_common::Policy::tcp_client(&addrs))
        .map_err(|e| Failure::new(status::UPSTREAM_ERROR, format!("cannot apply the sandbox: {e}")))?;
    let (framed, result) = negotiate(settings, &addrs, size, dpi, channels).await?;
    Ok((addrs, framed, result))
}

/// Connects to one of the resolved addresses (inside the sandbox), with the `security=any` fallback.
async fn negotiate(
    settings: &Settings,
    addrs: &[SocketAddr],
    size: (u32, u32),
    dpi: u32,
    channels: Channels,
) -> Result<(Framed, ConnectionResult), Failure> {
    let protocols = match (settings.security, settings.nla) {
        (Security::Any, nla) => Protocols { tls: true, nla, standard: false },
        (Security::Nla, _) => Protocols { tls: false, nla: true, standard: false },
        (Security::Tls, _) => Protocols { tls: true, nla: false, standard: false },
        (Security::Rdp, _) => Protocols { tls: false, nla: false, standard: true },
    };
    match connect_once(settings, addrs, size, dpi, protocols, channels.clone()).await {
        // Standard RDP security cannot authenticate the server, and anyone on the path can answer that
        // it is all the server allows: falling back is a downgrade, so only a user who waived the
        // certificate check (`ignore-cert`) gets it implicitly; `security=rdp` asks for it outright.
        Err(failure) if failure.standard_only && settings.security == Security::Any && !settings.cert.ignore => {
            warn!("RDP server allows only standard RDP security; not falling back to it without ignore-cert");
            Err(Failure::new(
                status::UPSTREAM_ERROR,
                "The RDP server allows only standard RDP security, which cannot verify its identity: \
                 set security=rdp (or ignore-cert=true) to accept it",
            ))
        }
        Err(failure) if failure.standard_only && settings.security == Security::Any => {
            warn!("RDP server allows only standard RDP security; reconnecting with it (no server authentication)");
            let standard = Protocols { tls: false, nla: false, standard: true };
            connect_once(settings, addrs, size, dpi, standard, channels).await
        }
        other => other,
    }
}

/// The queues of the static channels a connection joins (`None`: that channel is not joined).
#[derive(Debug, Clone, Default)]
struct Channels {
    clip: Option<ClipQueue>,
    audio: Option<AudioQueue>,
}

#[derive(Debug, Clone, Copy)]
struct Protocols {
    tls: bool,
    nla: bool,
    standard: bool,
}

fn connector_config(
    settings: &Settings,
    (width, height): (u32, u32),
    dpi: u32,
    p: Protocols,
) -> ironrdp_connector::Config {
    let mut performance = PerformanceFlags::empty();
    let mut flag = |on: bool, bit| {
        if on {
            performance |= bit;
        }
    };
    flag(!settings.wallpaper, PerformanceFlags::DISABLE_WALLPAPER);
    flag(!settings.full_window_drag, PerformanceFlags::DISABLE_FULLWINDOWDRAG);
    flag(!settings.menu_animations, PerformanceFlags::DISABLE_MENUANIMATIONS);
    flag(!settings.theming, PerformanceFlags::DISABLE_THEMING);
    flag(settings.font_smoothing, PerformanceFlags::ENABLE_FONT_SMOOTHING);
    flag(settings.desktop_composition, PerformanceFlags::ENABLE_DESKTOP_COMPOSITION);
    ironrdp_connector::Config {
        desktop_size: DesktopSize { width: width as u16, height: height as u16 },
        monitor_layout: None,
        // Scale factor in percent, as guacd derives it from the client's DPI; 0 (unset) at 96 DPI.
        desktop_scale_factor: if dpi == DEFAULT_DPI { 0 } else { (dpi * 100 / DEFAULT_DPI).clamp(100, 500) },
        desktop_physical_size: None,
        desktop_orientation: None,
        device_scale_factor: None,
        monitor_extended_layout: None,
        relative_mouse_input: false,
        enable_tls: p.tls,
        enable_credssp: p.nla,
        enable_standard_rdp_security: p.standard,
        credentials: Credentials::UsernamePassword {
            username: settings.username.clone(),
            password: settings.password.0.clone(),
        },
        domain: settings.domain.clone(),
        // A Windows build number (2600: XP), as FreeRDP sends one too: xrdp ignores Display Control
        // layouts from "older clients" whose build is 419 or below, which IronRDP's default 0 is.
        client_build: 2600,
        client_name: settings.client_name.clone(),
        keyboard_type: ironrdp_pdu::gcc::KeyboardType::IBM_ENHANCED,
        keyboard_subtype: 0,
        keyboard_functional_keys_count: 12,
        keyboard_layout: settings.layout.id(),
        connection_type: ironrdp_pdu::gcc::ConnectionType::Lan,
        ime_file_name: String::new(),
        bitmap: Some(BitmapConfig {
            lossy_compression: false,
            color_depth: settings.color_depth,
            codecs: BitmapCodecs(Vec::new()),
        }),
        dig_product_id: String::new(),
        client_dir: String::new(),
        alternate_shell: settings.initial_program.clone().unwrap_or_default(),
        work_dir: String::new(),
        remote_application_mode: false,
        rail_support_level: ironrdp_pdu::rdp::capability_sets::RailSupportLevel::empty(),
        platform: MajorPlatformType::UNIX,
        hardware_id: None,
        request_data: None,
        // guacd logs on automatically when it has a password.
        autologon: !settings.password.0.is_empty(),
        enable_audio_playback: !audio::formats_for(&settings.audio).is_empty(),
        enable_audio_capture: false,
        performance_flags: performance,
        license_cache: None,
        timezone_info: TimezoneInfo::default(),
        compression_type: None,
        enable_server_pointer: true,
        pointer_software_rendering: false,
        multitransport_flags: None,
        support_dyn_vc_gfx_protocol: false,
    }
}

async fn connect_once(
    settings: &Settings,
    addrs: &[SocketAddr],
    size: (u32, u32),
    dpi: u32,
    protocols: Protocols,
    channels: Channels,
) -> Result<(Framed, ConnectionResult), Failure> {
    let target = format!("{}:{}", settings.hostname, settings.port);
    let tcp = match timeout(settings.connect_timeout, TcpStream::connect(addrs)).await {
        Err(_) => {
            return Err(Failure::new(status::UPSTREAM_TIMEOUT, format!("Timed out connecting to RDP server {target}")))
        }
        Ok(Err(e)) => {
            return Err(Failure::new(
                status::UPSTREAM_NOT_FOUND,
                format!("Unable to connect to RDP server {target}: {e}"),
            ))
        }
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    let local = tcp
        .local_addr()
        .map_err(|e| Failure::new(status::UPSTREAM_ERROR, format!("RDP connection to {target} failed: {e}")))?;
    let config = connector_config(settings, size, dpi, protocols);
    match timeout(HANDSHAKE_TIMEOUT, handshake(settings, tcp, local, config, channels)).await {
        Err(_) => {
            Err(Failure::new(status::UPSTREAM_TIMEOUT, format!("RDP connection sequence with {target} timed out")))
        }
        Ok(result) => result,
    }
}

async fn handshake(
    settings: &Settings,
    tcp: TcpStream,
    local: SocketAddr,
    config: ironrdp_connector::Config,
    channels: Channels,
) -> Result<(Framed, ConnectionResult), Failure> {
    let mut framed: Framed = TokioFramed::new(Box::new(tcp));
    let mut connector = ClientConnector::new(config, local);
    if let Some(queue) = channels.clip {
        connector.attach_static_channel(CliprdrClient::new(Box::new(clip::Backend::new(queue))));
    }
    if let Some(queue) = channels.audio {
        let backend = audio::Backend::new(audio::formats_for(&settings.audio), queue);
        connector.attach_static_channel(Rdpsnd::new(Box::new(backend)));
    }
    if settings.resize == ResizeMethod::DisplayUpdate {
        // The Display Control channel: its capabilities need no answer, a layout is sent on `size`.
        let display = DisplayControlClient::new(|_capabilities| Ok(Vec::new()));
        connector.attach_static_channel(DrdynvcClient::new().with_dynamic_channel(display));
    }
    let should_upgrade = ironrdp_tokio::connect_begin(&mut framed, &mut connector)
        .await
        .map_err(|e| Failure::connector("negotiation", &e))?;
    let selected = match &connector.state {
        ClientConnectorState::EnhancedSecurityUpgrade { selected_protocol } => *selected_protocol,
        _ => return Err(Failure::new(status::UPSTREAM_ERROR, "RDP negotiation ended in an unexpected state")),
    };
    info!(protocol = %selected, "RDP security negotiated");
    let server_name = ServerName::new(settings.hostname.clone());
    let mut server_public_key = Vec::new();
    let (tcp, leftover) = framed.into_inner();
    if selected.is_standard_rdp_security() {
        // IronRDP speaks standard security only unencrypted: the shim adds FIPS or RC4 encryption when the
        // server asks for it and passes an unencrypted session through.
        framed = TokioFramed::new(Box::new(ShimStream::new(tcp, &leftover)));
    } else {
        let (tls, key) = upgrade_tls(settings, tcp).await?;
        server_public_key = key;
        framed = TokioFramed::new_with_leftover(tls, leftover);
    }
    let upgraded = ironrdp_tokio::mark_as_upgraded(should_upgrade, &mut connector);
    if connector.should_perform_credssp() {
        credssp(&mut framed, &mut connector, selected, server_name.clone(), server_public_key.clone()).await?;
    }
    let outcome = ironrdp_tokio::connect_finalize(
        upgraded,
        connector,
        &mut framed,
        &mut NoNetwork,
        server_name,
        server_public_key,
        None,
    )
    .await
    .map_err(|e| Failure::connector("connection", &e))?;
    let result = outcome.into_connected().map_err(|e| Failure::connector("connection", &e))?;
    Ok((framed, result))
}

/// NLA. Any failure here is an authentication failure to the user (guacd: "Authentication failure
/// (invalid credentials?)"): servers answer a wrong password by ending the exchange.
async fn credssp(
    framed: &mut Framed,
    connector: &mut ClientConnector,
    selected: SecurityProtocol,
    server_name: ServerName,
    server_public_key: Vec<u8>,
) -> Result<(), Failure> {
    let unauthorized = |e: ConnectorError| {
        Failure::new(
            status::CLIENT_UNAUTHORIZED,
            format!("RDP authentication failed (invalid credentials?): {}", e.report()),
        )
    };
    let (sequence, request) = ironrdp_connector::credssp::CredsspSequence::init(
        connector.config.credentials.clone(),
        connector.config.domain.as_deref(),
        selected,
        server_name,
        server_public_key,
        None,
    )
    .map_err(unauthorized)?;
    let mut buf = ironrdp_pdu::WriteBuf::new();
    ironrdp_tokio::perform_credssp(framed, &mut NoNetwork, &mut buf, sequence, request).await.map_err(unauthorized)?;
    connector.mark_credssp_as_done();
    Ok(())
}

/// TLS with our certificate policy; returns the stream and the server's public key (for CredSSP).
async fn upgrade_tls(settings: &Settings, tcp: Box<dyn Transport>) -> Result<(Box<dyn Transport>, Vec<u8>), Failure> {
    let tls_failure =
        |message: String| Failure::new(status::UPSTREAM_ERROR, format!("RDP TLS handshake failed: {message}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PolicyVerifier::new(settings.cert.clone(), provider.clone()));
    let config = cert::client_config(verifier.clone(), provider).map_err(|e| tls_failure(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(settings.hostname.clone())
        .map_err(|e| tls_failure(format!("invalid server name: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| tls_failure(e.to_string()))?;
    match verifier.verdict() {
        Some(Verdict::FirstUse(fingerprint)) => {
            warn!(%fingerprint, "Trusting the RDP server's certificate on first use (cert-tofu)")
        }
        Some(verdict) => debug!(?verdict, "RDP server certificate accepted"),
        None => {}
    }
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| tls_failure("the server sent no certificate".into()))?;
    let key = public_key(der.as_ref()).ok_or_else(|| tls_failure("cannot read the server certificate".into()))?;
    Ok((Box::new(tls), key))
}

fn public_key(der: &[u8]) -> Option<Vec<u8>> {
    use x509_cert::der::Decode as _;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    ironrdp_tls::extract_tls_server_public_key(&cert).map(<[u8]>::to_vec)
}

/// How the session loop ended.
enum End {
    Exit(i32),
    Fail(Failure),
    /// `resize-method=reconnect`: connect again at this size.
    Reconnect((u32, u32)),
}

/// A client size change waiting to be passed on to the server.
struct Resize {
    method: ResizeMethod,
    /// The latest size the client asked for and the server has not been asked for yet.
    wanted: Option<(u32, u32)>,
    /// The size the server was last asked for (connection or resize). A server that keeps its own
    /// size (freerdp-shadow) is not asked again, nor reconnected to, for the same size.
    asked: (u32, u32),
    /// Not before this instant (throttled to [`RESIZE_INTERVAL`]).
    due: tokio::time::Instant,
    /// Until then a display update waits for the Display Control channel to open; a server that
    /// has not opened it by then does not offer it (freerdp-shadow), and the size is kept.
    channel_deadline: tokio::time::Instant,
}

struct Worker {
    session: WorkerSession,
    settings: Settings,
    resize: Resize,
    /// The server's addresses, resolved before the sandbox (a reconnect cannot resolve again).
    addrs: Vec<SocketAddr>,
    dpi: u32,
    /// Server PDUs that arrived during a reactivation, processed once it is over.
    deferred: Vec<(Action, bytes::BytesMut)>,
    read_only: bool,
    active: ActiveStage,
    image: DecodedImage,
    keyboard: Keyboard,
    /// What is pressed on the server's side (IronRDP turns operations into fast-path events with it).
    input_state: ironrdp_input::Database,
    activation: ironrdp_connector::connection_activation::ConnectionActivationFactory,
    /// The Guacamole button mask last sent.
    buttons: u32,
    /// Damage was drawn since the last publish.
    frame_open: bool,
    /// The clipboard channel's events (`None`: no channel, copy and paste both disabled).
    clip: Option<ClipQueue>,
    /// The sound channel's waves (`None`: no channel).
    audio: Option<AudioQueue>,
    /// The mimetype of the open `audio` stream.
    audio_open: Option<String>,
    /// The client refused the sound (a non-zero `ack`): none is sent for the rest of the session.
    audio_refused: bool,
    /// The user's clipboard text, offered to the server.
    local_text: Option<String>,
    /// Clipboard bytes from the user, collected until the last chunk.
    paste: Vec<u8>,
    disable_copy: bool,
    disable_paste: bool,
    clipboard_buffer_size: usize,
    line_ends: clip::LineEnds,
}

impl Worker {
    async fn serve(&mut self, mut framed: Framed) -> End {
        let mut heartbeat = heartbeat_timer();
        loop {
            tokio::select! {
                pdu = framed.read_pdu() => match pdu {
                    Ok((action, frame)) => {
                        if let Err(end) = self.pdu(&mut framed, action, &frame).await {
                            return end;
                        }
                        // What arrived during a reactivation, in order, now that the session is active.
                        while !self.deferred.is_empty() {
                            let (action, frame) = self.deferred.remove(0);
                            if let Err(end) = self.pdu(&mut framed, action, &frame).await {
                                return end;
                            }
                        }
                        // The burst is over when no further complete PDU is buffered: a frame boundary.
                        if !matches!(ironrdp_pdu::find_size(framed.peek()), Ok(Some(_))) {
                            if let Err(end) = self.publish().await {
                                return end;
                            }
                        }
                    }
                    // Bytes that break the protocol (a malformed PDU, or a bad MAC under standard RDP
                    // security's encryption) are the server's error, not a lost connection.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        warn!(error = %e, "RDP server sent invalid data");
                        let message = format!("RDP server sent invalid data: {e}");
                        return End::Fail(Failure::new(status::UPSTREAM_ERROR, message));
                    }
                    // Like guacd: the connection dropped without the server saying why.
                    Err(e) => {
                        info!(error = %e, "RDP connection lost");
                        return End::Fail(Failure::new(status::UPSTREAM_UNAVAILABLE, "Connection closed."));
                    }
                },
                message = self.session.control.recv::<ToWorker>() => match message {
                    Ok(Some(message)) => {
                        if let Err(end) = self.control(&mut framed, message).await {
                            return end;
                        }
                    }
                    Ok(None) => return End::Exit(0),
                    Err(error) => return End::Exit(control_failed(&error)),
                },
                _ = tokio::time::sleep_until(self.resize.due), if self.resize.wanted.is_some() => {
                    if let Err(end) = self.apply_resize(&mut framed).await {
                        return end;
                    }
                }
                _ = heartbeat.tick() => {
                    if self.session.control.send(&FromWorker::Heartbeat).await.is_err() {
                        return End::Exit(1);
                    }
                }
            }
        }
    }

    async fn closed(&mut self, message: String) -> End {
        info!(%message, "RDP session ended");
        End::Exit(self.session.close(message).await)
    }

    async fn pdu(&mut self, framed: &mut Framed, action: Action, frame: &[u8]) -> Result<(), End> {
        let outputs = self.active.process(&mut self.image, action, frame, None).map_err(|e| {
            End::Fail(Failure::new(status::UPSTREAM_ERROR, format!("RDP server sent bad data: {}", e.report())))
        })?;
        for output in outputs {
            match output {
                ActiveStageOutput::ResponseFrame(bytes) => write(framed, &bytes).await?,
                ActiveStageOutput::GraphicsUpdate(rect) => self.draw(&rect),
                ActiveStageOutput::PointerBitmap(pointer) => self.cursor(&pointer).await?,
                ActiveStageOutput::PointerHidden => {
                    self.send(&FromWorker::Cursor { hotspot_x: 0, hotspot_y: 0, width: 1, height: 1, bgra: vec![0; 4] })
                        .await?
                }
                ActiveStageOutput::PointerDefault => self.send(&default_cursor()).await?,
                ActiveStageOutput::Terminate(reason) => {
                    info!(%reason, "RDP server ended the session");
                    return Err(match disconnect_status(&reason) {
                        None => self.closed(format!("RDP server ended the session: {reason}")).await,
                        Some((status, message)) => End::Fail(Failure::new(status, message)),
                    });
                }
                ActiveStageOutput::DeactivateAll => self.reactivate(framed).await?,
                ActiveStageOutput::ServerRedirection(_) => {
                    return Err(End::Fail(Failure::new(
                        status::UPSTREAM_ERROR,
                        "RDP server redirected the session, which is not supported",
                    )))
                }
                other => debug!(output = ?std::mem::discriminant(&other), "RDP output ignored"),
            }
        }
        self.clipboard_events(framed).await?;
        self.audio_events().await
    }

    /// Sends what the sound channel queued while IronRDP processed a PDU as the `audio` stream: opened
    /// on the first wave (again when the format changes), ended when the server closes the channel.
    async fn audio_events(&mut self) -> Result<(), End> {
        let Some(queue) = &self.audio else {
            return Ok(());
        };
        let (events, dropped) = queue.take();
        if dropped > 0 {
            debug!(dropped, "Sound dropped: the session fell behind the server");
        }
        for event in events {
            match event {
                AudioEvent::Wave { .. } if self.audio_refused => {}
                AudioEvent::Wave { mimetype, data } => {
                    if self.audio_open.as_deref() != Some(mimetype.as_str()) {
                        self.end_audio().await?;
                        self.send(&FromWorker::Stream(StreamFromWorker::Audio {
                            stream: AUDIO_STREAM,
                            mimetype: mimetype.clone(),
                        }))
                        .await?;
                        self.audio_open = Some(mimetype);
                    }
                    for chunk in audio::chunks(&data) {
                        let blob = StreamFromWorker::Blob { stream: AUDIO_STREAM, data: chunk.to_vec() };
                        self.send(&FromWorker::Stream(blob)).await?;
                    }
                }
                AudioEvent::Close => self.end_audio().await?,
            }
        }
        Ok(())
    }

    async fn end_audio(&mut self) -> Result<(), End> {
        if self.audio_open.take().is_some() {
            self.send(&FromWorker::Stream(StreamFromWorker::End { stream: AUDIO_STREAM })).await?;
        }
        Ok(())
    }

    /// Acts on what the clipboard channel queued while IronRDP processed a PDU.
    async fn clipboard_events(&mut self, framed: &mut Framed) -> Result<(), End> {
        let Some(queue) = self.clip.clone() else {
            return Ok(());
        };
        while let Some(event) = clip::next(&queue) {
            let messages = {
                let Some(cliprdr) = self.active.get_svc_processor_mut::<CliprdrClient>() else {
                    return Ok(());
                };
                match event {
                    ClipEvent::RequestFormatList => cliprdr.initiate_copy(&text_formats(self.local_text.is_some())),
                    ClipEvent::RemoteCopy(formats) => {
                        if self.disable_copy || !formats.contains(&ClipboardFormatId::CF_UNICODETEXT) {
                            continue;
                        }
                        cliprdr.initiate_paste(ClipboardFormatId::CF_UNICODETEXT)
                    }
                    ClipEvent::DataRequest(format) => {
                        let response = match (&self.local_text, format == ClipboardFormatId::CF_UNICODETEXT) {
                            (Some(text), true) if !self.disable_paste => {
                                FormatDataResponse::new_unicode_string(&self.line_ends.apply(text))
                            }
                            _ => FormatDataResponse::new_error(),
                        };
                        cliprdr.submit_format_data(response)
                    }
                    ClipEvent::DataResponse(data) => {
                        if let (Some(bytes), false) = (data, self.disable_copy) {
                            let text = clip::decode_unicode_text(&bytes);
                            self.send_clipboard(clip::truncate(&text, self.clipboard_buffer_size)).await?;
                        }
                        continue;
                    }
                }
            };
            self.send_clipboard_messages(framed, messages).await?;
        }
        Ok(())
    }

    /// Sends what the clipboard channel produced. A clipboard the channel refuses (e.g. a request
    /// before it is ready) costs the user that copy or paste, not the session.
    async fn send_clipboard_messages(
        &mut self,
        framed: &mut Framed,
        messages: ironrdp_pdu::PduResult<ironrdp_cliprdr::CliprdrSvcMessages<ironrdp_cliprdr::Client>>,
    ) -> Result<(), End> {
        let messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                warn!(%error, "RDP clipboard channel refused a message; clipboard update dropped");
                return Ok(());
            }
        };
        match self.active.process_svc_processor_messages(messages) {
            Ok(bytes) => write(framed, &bytes).await,
            Err(error) => {
                warn!(error = %error.report(), "RDP clipboard message could not be encoded; dropped");
                Ok(())
            }
        }
    }

    /// The server's clipboard text to the user, in chunks.
    async fn send_clipboard(&mut self, text: &str) -> Result<(), End> {
        let data = text.as_bytes();
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

    /// The user's clipboard arrived: keep it and tell the server there is text to paste.
    async fn user_clipboard(
        &mut self,
        framed: &mut Framed,
        mimetype: &str,
        data: &[u8],
        last: bool,
    ) -> Result<(), End> {
        if self.read_only || self.disable_paste || self.clip.is_none() || !mimetype.starts_with("text/") {
            return Ok(());
        }
        let room = self.clipboard_buffer_size.saturating_sub(self.paste.len());
        self.paste.extend_from_slice(&data[..data.len().min(room)]);
        if !last {
            return Ok(());
        }
        self.local_text = Some(String::from_utf8_lossy(&std::mem::take(&mut self.paste)).into_owned());
        let Some(cliprdr) = self.active.get_svc_processor_mut::<CliprdrClient>() else {
            return Ok(());
        };
        if !cliprdr.is_ready() {
            // The channel asks for our format list once it is up.
            return Ok(());
        }
        let messages = cliprdr.initiate_copy(&text_formats(true));
        self.send_clipboard_messages(framed, messages).await
    }

    /// Passes the client's latest size on to the server, at most once per [`RESIZE_INTERVAL`].
    async fn apply_resize(&mut self, framed: &mut Framed) -> Result<(), End> {
        let Some((width, height)) = self.resize.wanted else {
            return Ok(());
        };
        let now = tokio::time::Instant::now();
        let geometry = self.session.frames.geometry();
        let bounded = (width.min(geometry.max_width), height.min(geometry.max_height));
        // MS-RDPEDISP: 200..=8192 and an even width; the connection itself takes the same bounds.
        let (width, height) = MonitorLayoutEntry::adjust_display_size(bounded.0, bounded.1);
        let (width, height) = (width.min(geometry.max_width & !1), height.min(geometry.max_height));
        let current = (u32::from(self.image.width()), u32::from(self.image.height()));
        if (width, height) == current || (width, height) == self.resize.asked {
            self.resize.wanted = None;
            return Ok(());
        }
        match self.resize.method {
            ResizeMethod::None => {}
            ResizeMethod::DisplayUpdate => match self.active.encode_resize(width, height, None, None) {
                Some(Ok(bytes)) => {
                    info!(width, height, "Asking the RDP server for a new desktop size (display update)");
                    self.resize.asked = (width, height);
                    write(framed, &bytes).await?;
                }
                Some(Err(error)) => {
                    warn!(error = %error.report(), width, height, "Display update not encoded; ignored")
                }
                None if self.active.display_control_ready().is_some() && now < self.resize.channel_deadline => {
                    // The channel is still opening: try again in a moment, with the newest size.
                    debug!(width, height, "Display Control channel not ready yet; resize deferred");
                    self.resize.due = now + RESIZE_INTERVAL;
                    return Ok(());
                }
                None => info!(width, height, "The RDP server opened no Display Control channel; desktop size kept"),
            },
            ResizeMethod::Reconnect => {
                self.resize.wanted = None;
                self.resize.asked = (width, height);
                info!(width, height, "Reconnecting to the RDP server at the client's new size");
                self.shutdown(framed).await;
                return Err(End::Reconnect((width, height)));
            }
        }
        self.resize.wanted = None;
        self.resize.due = now + RESIZE_INTERVAL;
        Ok(())
    }

    /// Tells the server we are leaving (best effort: the connection is dropped right after).
    async fn shutdown(&mut self, framed: &mut Framed) {
        if let Ok(outputs) = self.active.graceful_shutdown() {
            for output in outputs {
                if let ActiveStageOutput::ResponseFrame(bytes) = output {
                    let _ = framed.write_all(&bytes).await;
                }
            }
        }
    }

    /// `resize-method=reconnect`: a new connection at `size`, shown on the same surface. `Err` is the
    /// exit code (the failure is reported).
    async fn reconnect(&mut self, size: (u32, u32)) -> Result<Framed, i32> {
        // A fresh clipboard channel: the old one's state belongs to the old connection.
        let clip = self.clip.as_ref().map(|_| ClipQueue::default());
        // The sound queue carries over: the old channel's close ends the stream, the new one reopens it.
        let channels = Channels { clip: clip.clone(), audio: self.audio.clone() };
        let (settings, addrs) = (self.settings.clone(), self.addrs.clone());
        let connecting = negotiate(&settings, &addrs, size, self.dpi, channels);
        let (connected, resized) = self.session.serve_while(connecting).await?;
        let (framed, result) = match connected {
            Ok(connection) => connection,
            Err(failure) => {
                self.session.fail(failure.status, failure.message).await;
                return Err(EXIT_REPORTED);
            }
        };
        let desktop = result.desktop_size;
        let (width, height) = (u32::from(desktop.width), u32::from(desktop.height));
        info!(width, height, "Reconnected to the RDP server");
        if let Err(e) = self.session.frames.resize(width, height) {
            self.session.fail(status::UPSTREAM_ERROR, format!("RDP desktop size: {e}")).await;
            return Err(EXIT_REPORTED);
        }
        self.image = DecodedImage::new(PixelFormat::BgrX32, desktop.width, desktop.height);
        (self.active, self.activation) = active_stage(result);
        self.input_state = ironrdp_input::Database::new();
        self.buttons = 0;
        self.clip = clip;
        self.resize.wanted = resized;
        self.resize.due = tokio::time::Instant::now() + RESIZE_INTERVAL;
        self.resize.channel_deadline = tokio::time::Instant::now() + DISPLAY_CHANNEL_WAIT;
        Ok(framed)
    }

    /// The Deactivation-Reactivation sequence (the server changed the desktop, e.g. its size).
    async fn reactivate(&mut self, framed: &mut Framed) -> Result<(), End> {
        use ironrdp_connector::connection_activation::ConnectionActivationState;
        let fail = |e: ConnectorError| End::Fail(Failure::connector("reactivation", &e));
        let mut sequence = self.activation.create();
        let mut buf = ironrdp_pdu::WriteBuf::new();
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            let step = self.reactivation_step(framed, &mut sequence, &mut buf);
            match tokio::time::timeout_at(deadline, step).await {
                Err(_) => {
                    return Err(End::Fail(Failure::new(status::UPSTREAM_TIMEOUT, "RDP reactivation timed out")));
                }
                Ok(result) => result.map_err(fail)?,
            }
            if let ConnectionActivationState::Finalized {
                desktop_size,
                share_id,
                static_channel_chunk_size,
                enable_server_pointer,
                pointer_software_rendering,
                ..
            } = sequence.connection_activation_state()
            {
                let (io, user) = (self.activation.io_channel_id(), self.activation.user_channel_id());
                if !self.active.reactivate(
                    io,
                    user,
                    share_id,
                    enable_server_pointer,
                    pointer_software_rendering,
                    static_channel_chunk_size,
                ) {
                    return Err(End::Fail(Failure::new(status::UPSTREAM_ERROR, "RDP reactivation was refused")));
                }
                let (width, height) = (u32::from(desktop_size.width), u32::from(desktop_size.height));
                info!(width, height, "RDP server reactivated the session");
                if (desktop_size.width, desktop_size.height) != (self.image.width(), self.image.height()) {
                    self.image = DecodedImage::new(PixelFormat::BgrX32, desktop_size.width, desktop_size.height);
                    self.session.frames.resize(width, height).map_err(|e| {
                        End::Fail(Failure::new(status::UPSTREAM_ERROR, format!("RDP desktop size: {e}")))
                    })?;
                }
                return Ok(());
            }
        }
    }

    /// One step of the reactivation sequence. xrdp starts drawing the resized screen before it sends
    /// the Font Map that ends the sequence; those updates (fast-path, or slow-path data the sequence
    /// does not expect) are kept and processed once the session is active again, instead of failing.
    async fn reactivation_step(
        &mut self,
        framed: &mut Framed,
        sequence: &mut ironrdp_connector::connection_activation::ConnectionActivationSequence,
        buf: &mut ironrdp_pdu::WriteBuf,
    ) -> ConnectorResult<()> {
        use ironrdp_connector::Sequence as _;
        buf.clear();
        let written = if sequence.next_pdu_hint().is_some() {
            let (action, frame) =
                framed.read_pdu().await.map_err(|e| ironrdp_connector::custom_err!("read frame", e))?;
            let finalizing = matches!(
                sequence.connection_activation_state(),
                ironrdp_connector::connection_activation::ConnectionActivationState::ConnectionFinalization { .. }
            );
            // The sequence cannot skip a message (a failed step leaves it consumed), so what it would
            // refuse never reaches it.
            if action == Action::FastPath || (finalizing && !self.is_finalization_pdu(&frame)) {
                self.defer(action, frame)?;
                return Ok(());
            }
            sequence.step(&frame, framed.last_read_at(), buf)?
        } else {
            sequence.step_no_input(buf)?
        };
        if let Some(len) = written.size() {
            framed.write_all(&buf.filled()[..len]).await.map_err(|e| ironrdp_connector::custom_err!("write", e))?;
        }
        Ok(())
    }

    /// Whether the connection finalization takes this slow-path PDU (share data on the I/O channel of
    /// the kinds it handles); everything else (drawing, pointers, channel data) waits.
    fn is_finalization_pdu(&self, frame: &[u8]) -> bool {
        use ironrdp_pdu::rdp::headers::ShareDataPdu;
        let Ok(ctx) = ironrdp_pdu::mcs::decode_send_data_indication(frame) else {
            return false;
        };
        if ctx.channel_id != self.activation.io_channel_id() {
            return false;
        }
        matches!(
            ironrdp_pdu::rdp::headers::decode_share_data(ctx).map(|ctx| ctx.pdu),
            Ok(ShareDataPdu::Synchronize(_)
                | ShareDataPdu::Control(_)
                | ShareDataPdu::ServerSetErrorInfo(_)
                | ShareDataPdu::MonitorLayout(_)
                | ShareDataPdu::FontMap(_))
        )
    }

    /// Keeps a server PDU that arrived during reactivation, up to [`MAX_DEFERRED`] bytes.
    fn defer(&mut self, action: Action, frame: bytes::BytesMut) -> ConnectorResult<()> {
        let held: usize = self.deferred.iter().map(|(_, f)| f.len()).sum();
        if held + frame.len() > MAX_DEFERRED {
            return Err(ironrdp_connector::general_err!("too much output during reactivation"));
        }
        debug!(?action, len = frame.len(), "PDU during reactivation kept for later");
        self.deferred.push((action, frame));
        Ok(())
    }

    /// Copies an updated rectangle from IronRDP's image into the back surface.
    fn draw(&mut self, rect: &InclusiveRectangle) {
        let (width, height) = self.session.frames.size();
        let (left, top) = (u32::from(rect.left), u32::from(rect.top));
        let right = (u32::from(rect.right) + 1).min(width).min(u32::from(self.image.width()));
        let bottom = (u32::from(rect.bottom) + 1).min(height).min(u32::from(self.image.height()));
        if left >= right || top >= bottom {
            return;
        }
        let src_stride = self.image.stride();
        let dst_stride = self.session.frames.stride();
        let (x0, x1) = (left as usize * 4, right as usize * 4);
        let data = self.image.data();
        let back = self.session.frames.back_mut();
        for y in top as usize..bottom as usize {
            back[y * dst_stride + x0..y * dst_stride + x1]
                .copy_from_slice(&data[y * src_stride + x0..y * src_stride + x1]);
        }
        self.session.frames.mark_dirty(Rect { x: left, y: top, w: right - left, h: bottom - top });
        self.frame_open = true;
    }

    async fn cursor(&mut self, pointer: &DecodedPointer) -> Result<(), End> {
        let (width, height) = (u32::from(pointer.width), u32::from(pointer.height));
        if width == 0 || height == 0 || width > MAX_CURSOR_SIDE || height > MAX_CURSOR_SIDE {
            debug!(width, height, "Pointer too large or empty; not forwarded");
            return Ok(());
        }
        if pointer.bitmap_data.len() != (width * height * 4) as usize {
            debug!(width, height, len = pointer.bitmap_data.len(), "Pointer bitmap of unexpected size; ignored");
            return Ok(());
        }
        // IronRDP's accelerated target is RGBA, not premultiplied; the cursor message wants BGRA.
        let mut bgra = pointer.bitmap_data.clone();
        for px in bgra.chunks_exact_mut(4) {
            px.swap(0, 2);
        }
        debug!(width, height, "Pointer forwarded");
        let message = FromWorker::Cursor {
            hotspot_x: u32::from(pointer.hotspot_x).min(width - 1),
            hotspot_y: u32::from(pointer.hotspot_y).min(height - 1),
            width,
            height,
            bgra,
        };
        self.send(&message).await
    }

    async fn send(&self, message: &FromWorker) -> Result<(), End> {
        self.session.control.send(message).await.map_err(|_| End::Exit(1))
    }

    async fn publish(&mut self) -> Result<(), End> {
        self.session.publish().await.map_err(|_| End::Exit(1))?;
        self.frame_open = self.session.frames.has_pending();
        Ok(())
    }

    async fn control(&mut self, framed: &mut Framed, message: ToWorker) -> Result<(), End> {
        match message {
            ToWorker::Key { keysym, pressed } => {
                if !self.read_only {
                    let operations = self.keyboard.key(keysym, pressed);
                    self.input(framed, operations).await?;
                }
            }
            ToWorker::Mouse { x, y, mask } => {
                if !self.read_only {
                    let operations = self.mouse(x, y, mask);
                    self.input(framed, operations).await?;
                }
            }
            ToWorker::Resize { width, height } => match self.resize.method {
                ResizeMethod::None => {
                    debug!(width, height, "Client resized; no resize-method, keeping the desktop size")
                }
                _ => self.resize.wanted = Some((width, height)),
            },
            ToWorker::Clipboard { mimetype, data, last } => self.user_clipboard(framed, &mimetype, &data, last).await?,
            // The client's answer on the sound stream: anything but success (a client that cannot play
            // it) ends the sound for the session. File streams are only sent to workers that ask for them.
            ToWorker::Stream(StreamToWorker::Ack { stream: AUDIO_STREAM, status, message }) if status != 0 => {
                info!(status, %message, "Client refused the sound; no more is sent");
                self.audio_refused = true;
                self.end_audio().await?;
            }
            ToWorker::Stream(_) => {}
            ToWorker::Consumed { .. } => {
                if self.frame_open {
                    self.publish().await?;
                }
            }
            ToWorker::Heartbeat => self.send(&FromWorker::Heartbeat).await?,
            ToWorker::Shutdown => {
                self.shutdown(framed).await;
                return Err(End::Exit(0));
            }
            ToWorker::Start { .. } => warn!("Ignoring a second Start"),
        }
        Ok(())
    }

    /// Guacamole mouse (position and button mask: 1 left, 2 middle, 4 right, 8 wheel up, 16 wheel
    /// down) → RDP pointer operations.
    fn mouse(&mut self, x: i32, y: i32, mask: u32) -> Vec<Operation> {
        let max_x = i32::from(self.image.width()).saturating_sub(1);
        let max_y = i32::from(self.image.height()).saturating_sub(1);
        let position = MousePosition { x: x.clamp(0, max_x) as u16, y: y.clamp(0, max_y) as u16 };
        let mut operations = vec![Operation::MouseMove(position)];
        let changed = mask ^ self.buttons;
        for (bit, button) in [(1, MouseButton::Left), (2, MouseButton::Middle), (4, MouseButton::Right)] {
            if changed & bit != 0 {
                operations.push(if mask & bit != 0 {
                    Operation::MouseButtonPressed(button)
                } else {
                    Operation::MouseButtonReleased(button)
                });
            }
        }
        // A wheel "button" press is one notch (120 units, positive away from the user).
        if changed & mask & 8 != 0 {
            operations.push(Operation::WheelRotations(WheelRotations { is_vertical: true, rotation_units: 120 }));
        }
        if changed & mask & 16 != 0 {
            operations.push(Operation::WheelRotations(WheelRotations { is_vertical: true, rotation_units: -120 }));
        }
        self.buttons = mask;
        operations
    }

    async fn input(&mut self, framed: &mut Framed, operations: Vec<Operation>) -> Result<(), End> {
        if operations.is_empty() {
            return Ok(());
        }
        let events = self.input_state.apply(operations);
        let outputs = self.active.process_fastpath_input(&mut self.image, &events).map_err(|e| {
            End::Fail(Failure::new(status::UPSTREAM_ERROR, format!("RDP input encoding failed: {}", e.report())))
        })?;
        for output in outputs {
            if let ActiveStageOutput::ResponseFrame(bytes) = output {
                write(framed, &bytes).await?;
            }
        }
        Ok(())
    }
}

async fn write(framed: &mut Framed, bytes: &[u8]) -> Result<(), End> {
    if bytes.is_empty() {
        return Ok(());
    }
    framed.write_all(bytes).await.map_err(|e| {
        End::Fail(Failure::new(status::UPSTREAM_ERROR, format!("Connection to the RDP server failed: {e}")))
    })
}

/// What guacd shows for a server's disconnect reason (its `guac_rdp_client_abort`): `None` for a
/// normal end (the user sees `disconnect` without an error), else the status and message.
///
/// A Disconnect Provider Ultimatum without a Set Error Info before it is mapped as FreeRDP does:
/// "user requested" (xrdp when the user logs off) counts as `ERRINFO_LOGOFF_BY_USER`, anything else
/// as `ERRINFO_RPC_INITIATED_DISCONNECT`. IronRDP passes a Set Error Info code on only as its
/// description (which starts with `[`), so the known codes are matched by it.
fn disconnect_status(reason: &GracefulDisconnectReason) -> Option<(u16, &'static str)> {
    use ironrdp_pdu::rdp::server_error_info::{ErrorInfo, ProtocolIndependentCode as Code};
    const FORCIBLY: Option<(u16, &str)> = Some((status::SESSION_CLOSED, "Forcibly disconnected."));
    let description = match reason {
        GracefulDisconnectReason::UserInitiated => return None,
        GracefulDisconnectReason::ServerInitiated => return FORCIBLY,
        GracefulDisconnectReason::Other(description) if !description.starts_with('[') => return FORCIBLY,
        GracefulDisconnectReason::Other(description) => description,
    };
    let table: [(Code, Option<(u16, &'static str)>); 11] = [
        (Code::None, None),
        (Code::RpcInitiatedDisconnect, FORCIBLY),
        (Code::RpcInitiatedLogoff, Some((status::SESSION_CLOSED, "Logged off."))),
        (Code::IdleTimeout, Some((status::SESSION_TIMEOUT, "Idle session time limit exceeded."))),
        (Code::LogonTimeout, Some((status::SESSION_CLOSED, "Active session time limit exceeded."))),
        (Code::DisconnectedByOtherconnection, Some((status::SESSION_CONFLICT, "Disconnected by other connection."))),
        (Code::OutOfMemory, Some((status::UPSTREAM_UNAVAILABLE, "Server refused connection."))),
        (Code::ServerDeniedConnection, Some((status::UPSTREAM_UNAVAILABLE, "Server refused connection."))),
        (Code::ServerInsufficientPrivileges, Some((status::CLIENT_FORBIDDEN, "Insufficient privileges."))),
        (Code::ServerFreshCredentialsRequired, Some((status::CLIENT_FORBIDDEN, "Credentials expired."))),
        (Code::RpcInitiatedDisconnectByuser, None),
    ];
    if *description == ErrorInfo::ProtocolIndependentCode(Code::LogoffByUser).description() {
        return None;
    }
    table
        .into_iter()
        .find(|(code, _)| *description == ErrorInfo::ProtocolIndependentCode(*code).description())
        .map_or(Some((status::UPSTREAM_ERROR, "Upstream error.")), |(_, outcome)| outcome)
}

/// The formats we announce: text when the user's clipboard holds some, else none.
fn text_formats(has_text: bool) -> Vec<ClipboardFormat> {
    if has_text {
        vec![ClipboardFormat::new(ClipboardFormatId::CF_UNICODETEXT)]
    } else {
        Vec::new()
    }
}

/// guacd's default pointer: a plain arrow, black with a white outline, 11×16, hotspot at the tip.
fn default_cursor() -> FromWorker {
    const ARROW: [&str; 16] = [
        "X..........",
        "XX.........",
        "XOX........",
        "XOOX.......",
        "XOOOX......",
        "XOOOOX.....",
        "XOOOOOX....",
        "XOOOOOOX...",
        "XOOOOOOOX..",
        "XOOOOOOOOX.",
        "XOOOOOXXXXX",
        "XOOXOOX....",
        "XOX.XOOX...",
        "XX..XOOX...",
        "X....XOOX..",
        ".....XXX...",
    ];
    let mut bgra = Vec::with_capacity(11 * 16 * 4);
    for row in ARROW {
        for c in row.bytes() {
            bgra.extend_from_slice(match c {
                b'X' => &[0, 0, 0, 255],
                b'O' => &[255, 255, 255, 255],
                _ => &[0, 0, 0, 0],
            });
        }
    }
    FromWorker::Cursor { hotspot_x: 0, hotspot_y: 0, width: 11, height: 16, bgra }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironrdp_pdu::rdp::server_error_info::{ErrorInfo, ProtocolIndependentCode as Code};

    fn info(code: Code) -> GracefulDisconnectReason {
        GracefulDisconnectReason::Other(ErrorInfo::ProtocolIndependentCode(code).description())
    }

    #[test]
    fn server_disconnects_map_to_guacd_statuses() {
        // xrdp's logoff: an ultimatum "user requested" alone is a normal end, as in guacd.
        assert_eq!(disconnect_status(&GracefulDisconnectReason::UserInitiated), None);
        assert_eq!(
            disconnect_status(&GracefulDisconnectReason::ServerInitiated),
            Some((523, "Forcibly disconnected."))
        );
        assert_eq!(disconnect_status(&info(Code::LogoffByUser)), None);
        assert_eq!(disconnect_status(&info(Code::RpcInitiatedDisconnectByuser)), None);
        assert_eq!(disconnect_status(&info(Code::RpcInitiatedLogoff)), Some((523, "Logged off.")));
        assert_eq!(disconnect_status(&info(Code::IdleTimeout)), Some((522, "Idle session time limit exceeded.")));
        assert_eq!(
            disconnect_status(&info(Code::DisconnectedByOtherconnection)),
            Some((521, "Disconnected by other connection."))
        );
        assert_eq!(disconnect_status(&info(Code::ServerDeniedConnection)), Some((520, "Server refused connection.")));
        assert_eq!(
            disconnect_status(&info(Code::ServerInsufficientPrivileges)),
            Some((771, "Insufficient privileges."))
        );
        assert_eq!(disconnect_status(&info(Code::ServerShutdown)), Some((515, "Upstream error.")));
    }
}
