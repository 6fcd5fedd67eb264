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
use ironrdp_graphics::image_processing::PixelFormat;
use ironrdp_graphics::pointer::DecodedPointer;
use ironrdp_input::{MouseButton, MousePosition, Operation, WheelRotations};
use ironrdp_pdu::geometry::InclusiveRectangle;
use ironrdp_pdu::nego::{FailureCode, SecurityProtocol};
use ironrdp_pdu::rdp::capability_sets::{BitmapCodecs, MajorPlatformType};
use ironrdp_pdu::rdp::client_info::{PerformanceFlags, TimezoneInfo};
use ironrdp_pdu::Action;
use ironrdp_session::image::DecodedImage;
use ironrdp_session::{ActiveStage, ActiveStageBuilder, ActiveStageOutput};
use ironrdp_tokio::{FramedWrite as _, TokioFramed};
use shm_proto::control::{CLIPBOARD_CHUNK, MAX_CURSOR_SIDE};
use shm_proto::{FromWorker, Rect, ToWorker};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls;
use tracing::{debug, info, warn};
use worker_common::{control_failed, heartbeat_timer, WorkerArgs, WorkerSession, EXIT_REPORTED};

use crate::cert::{self, PolicyVerifier, Verdict};
use crate::clipboard::{self as clip, ClipEvent, ClipQueue};
use crate::keymap::Keyboard;
use crate::settings::{Security, Settings, DEFAULT_DPI, DEFAULT_HEIGHT, DEFAULT_WIDTH};

/// The RDP connection sequence after TCP: negotiation, TLS, CredSSP, licensing, capabilities.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Guacamole status codes (guacd-wire.md §7).
pub mod status {
    pub const UPSTREAM_TIMEOUT: u16 = 514;
    pub const UPSTREAM_ERROR: u16 = 515;
    pub const UPSTREAM_NOT_FOUND: u16 = 519;
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
    let (connected, _resized) = match session.serve_while(connect(&settings, size, dpi, clip_queue.clone())).await {
        Ok(done) => done,
        Err(code) => return code,
    };
    let (framed, result) = match connected {
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
    let active = ActiveStageBuilder {
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
    let keyboard = Keyboard::new(settings.layout);
    let mut worker = Worker {
        session,
        read_only: settings.read_only,
        active,
        image,
        keyboard,
        input_state: ironrdp_input::Database::new(),
        activation: result.activation_factory,
        buttons: 0,
        frame_open: false,
        clip: clip_queue,
        local_text: None,
        paste: Vec::new(),
        disable_copy: settings.disable_copy,
        disable_paste: settings.disable_paste,
        clipboard_buffer_size: settings.clipboard_buffer_size,
        line_ends: settings.line_ends,
    };
    match worker.serve(framed).await {
        End::Exit(code) => code,
        End::Fail(failure) => {
            worker.session.fail(failure.status, failure.message).await;
            EXIT_REPORTED
        }
    }
}

/// Resolves, applies the sandbox, connects; with `security=any`, falls back to standard RDP security
/// once if the server allows nothing else.
async fn connect(
    settings: &Settings,
    size: (u32, u32),
    dpi: u32,
    clip: Option<ClipQueue>,
) -> Result<(Framed, ConnectionResult), Failure> {
    let addrs = worker_common::resolve_off_thread(&settings.hostname, settings.port).await.map_err(|e| {
        Failure::new(
            status::UPSTREAM_NOT_FOUND,
            format!("Unable to connect to RDP server {}:{}: {e}", settings.hostname, settings.port),
        )
    })?;
    // Before the first byte from the server: Landlock (this port only, no files) and seccomp.
    worker_common::sandbox(&worker_common::Policy::tcp_client(&addrs))
        .map_err(|e| Failure::new(status::UPSTREAM_ERROR, format!("cannot apply the sandbox: {e}")))?;
    let protocols = match (settings.security, settings.nla) {
        (Security::Any, nla) => Protocols { tls: true, nla, standard: false },
        (Security::Nla, _) => Protocols { tls: false, nla: true, standard: false },
        (Security::Tls, _) => Protocols { tls: true, nla: false, standard: false },
        (Security::Rdp, _) => Protocols { tls: false, nla: false, standard: true },
    };
    match connect_once(settings, &addrs, size, dpi, protocols, clip.clone()).await {
        Err(failure) if failure.standard_only && settings.security == Security::Any => {
            info!("RDP server allows only standard RDP security; reconnecting with it");
            let standard = Protocols { tls: false, nla: false, standard: true };
            connect_once(settings, &addrs, size, dpi, standard, clip).await
        }
        other => other,
    }
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
        client_build: 0,
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
        enable_audio_playback: false,
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
    clip: Option<ClipQueue>,
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
    match timeout(HANDSHAKE_TIMEOUT, handshake(settings, tcp, local, config, clip)).await {
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
    clip: Option<ClipQueue>,
) -> Result<(Framed, ConnectionResult), Failure> {
    let mut framed: Framed = TokioFramed::new(Box::new(tcp));
    let mut connector = ClientConnector::new(config, local);
    if let Some(queue) = clip {
        connector.attach_static_channel(CliprdrClient::new(Box::new(clip::Backend::new(queue))));
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
    if !selected.is_standard_rdp_security() {
        let (tcp, leftover) = framed.into_inner();
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
}

struct Worker {
    session: WorkerSession,
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
                        // The burst is over when no further complete PDU is buffered: a frame boundary.
                        if !matches!(ironrdp_pdu::find_size(framed.peek()), Ok(Some(_))) {
                            if let Err(end) = self.publish().await {
                                return end;
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return self.closed("RDP server closed the connection".into()).await
                    }
                    Err(e) => return self.closed(format!("Connection to the RDP server failed: {e}")).await,
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
                    return Err(self.closed(format!("RDP server ended the session: {}", reason.description())).await);
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
        self.clipboard_events(framed).await
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

    /// The Deactivation-Reactivation sequence (the server changed the desktop, e.g. its size).
    async fn reactivate(&mut self, framed: &mut Framed) -> Result<(), End> {
        use ironrdp_connector::connection_activation::ConnectionActivationState;
        let fail = |e: ConnectorError| End::Fail(Failure::connector("reactivation", &e));
        let mut sequence = self.activation.create();
        let mut buf = ironrdp_pdu::WriteBuf::new();
        loop {
            ironrdp_tokio::single_sequence_step(framed, &mut sequence, &mut buf).await.map_err(fail)?;
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
            ToWorker::Resize { width, height } => {
                debug!(width, height, "Client resized; resize-method is not implemented, keeping the desktop size");
            }
            ToWorker::Clipboard { mimetype, data, last } => self.user_clipboard(framed, &mimetype, &data, last).await?,
            // File streams are only sent to workers that ask for them.
            ToWorker::Stream(_) => {}
            ToWorker::Consumed { .. } => {
                if self.frame_open {
                    self.publish().await?;
                }
            }
            ToWorker::Heartbeat => self.send(&FromWorker::Heartbeat).await?,
            ToWorker::Shutdown => {
                if let Ok(outputs) = self.active.graceful_shutdown() {
                    for output in outputs {
                        if let ActiveStageOutput::ResponseFrame(bytes) = output {
                            let _ = framed.write_all(&bytes).await;
                        }
                    }
                }
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
