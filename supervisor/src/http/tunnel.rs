//! `/websocket-tunnel`: the WebSocket tunnel guacamole-common-js's `Guacamole.WebSocketTunnel` expects,
//! following the conventions of guacamole-client's Java tunnel (shared/reference/guacd-wire.md §12):
//!
//! - subprotocol `guacamole`; the connect data arrives as the URL's query;
//! - the first instruction is the internal opcode with the tunnel's UUID, `0.,36.<uuid>;`;
//! - every text frame holds whole instructions;
//! - the client's `0.,4.ping,<ms>;` is echoed back unchanged;
//! - an error closes the socket with the Guacamole status code (decimal) as the close reason.
//!
//! A tunnel takes a place under the same connection limits as the TCP entry (`--max-connections`,
//! `--max-connections-per-address`) before anything else, and holds it until the socket is gone; over a
//! limit, the socket is closed with 513 (server busy) and nothing is spawned.
//!
//! The browser never sends `select` or `connect`: this endpoint decides the target from a signed token
//! or a named connection, authorises it before anything is spawned, builds the `ConnectRequest` itself
//! and then runs the same session code as the TCP entry (`spawn_worker` + `run_connected`). A token whose
//! `join` names a live connection ID (`$<uuid>`, as the owner got in `ready`) joins that session instead,
//! through the same `session::join` as the TCP entry's `select $<id>`, read-only if the token says so;
//! knowing the ID is what the TCP entry asks, and the signed token is what this entry asks for anything.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use guac_proto::handshake::{ConnectRequest, Selection, DEFAULT_DPI, DEFAULT_HEIGHT, DEFAULT_WIDTH};
use guac_proto::{encode, Decoder, ProtocolVersion, Status};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use super::settings::WebSettings;
use super::token::{self, TokenPayload};
use super::WebState;
use crate::client::{ClientMessage, ClientReader, ClientWriter};
use crate::protocols::Protocol;
use crate::session::{self, SessionEnd};

/// The subprotocol guacamole-common-js asks for.
const SUBPROTOCOL: &str = "guacamole";
/// Largest WebSocket message accepted from a browser. guacamole-common-js sends one instruction (at most
/// 8192 bytes) per message.
const MAX_MESSAGE: usize = 64 * 1024;
/// Messages waiting for the socket before the session's writes wait (and eventually time out).
const OUTGOING_QUEUE: usize = 64;
/// Several queued sends are joined into one text frame up to this size (whole instructions only).
const FRAME_TARGET: usize = 16 * 1024;
/// Bytes of client input buffered between the socket and the session.
const INPUT_PIPE: usize = 64 * 1024;
/// Query values longer than this are refused (a token has its own, larger limit).
const MAX_QUERY_VALUE: usize = 256;

/// Why a tunnel request was refused before anything started. The client sees only `status` (as the close
/// reason); `detail` goes to the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub detail: String,
}

impl Refusal {
    fn new(status: Status, detail: impl Into<String>) -> Refusal {
        Refusal { status, detail: detail.into() }
    }
}

/// A tunnel request that passed authorisation: what to start, with parameters from guacr's side only.
#[derive(Debug)]
pub struct Admission {
    pub protocol: Protocol,
    pub request: ConnectRequest,
    /// A live connection ID to join instead of starting a session.
    pub join: Option<String>,
    /// For the log: `token` or `connection NAME (user U)`.
    pub origin: String,
}

/// The query: which target (token, or named connection plus access key) and the browser's display
/// properties. Nothing else is accepted, so no query can add or change a connection parameter.
#[derive(Debug, Default)]
struct ConnectData {
    token: Option<String>,
    connection: Option<String>,
    key: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    dpi: Option<u32>,
    timezone: Option<String>,
    audio: Vec<String>,
    video: Vec<String>,
    image: Vec<String>,
}

impl ConnectData {
    fn parse(query: &str) -> Result<ConnectData, Refusal> {
        let mut data = ConnectData::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let name = name.as_ref();
            let value = value.into_owned();
            if name != "token" && value.len() > MAX_QUERY_VALUE {
                return Err(Refusal::new(Status::ClientBadRequest, format!("query value of {name:?} is too long")));
            }
            match name {
                "token" => once(&mut data.token, name, value)?,
                "connection" => once(&mut data.connection, name, value)?,
                "key" => once(&mut data.key, name, value)?,
                "width" => once(&mut data.width, name, number(name, &value)?)?,
                "height" => once(&mut data.height, name, number(name, &value)?)?,
                "dpi" => once(&mut data.dpi, name, number(name, &value)?)?,
                "timezone" => {
                    let valid = value.chars().all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
                    if !valid {
                        return Err(Refusal::new(Status::ClientBadRequest, "timezone is not an IANA name"));
                    }
                    once(&mut data.timezone, name, value)?
                }
                "audio" | "video" | "image" => {
                    let list = match name {
                        "audio" => &mut data.audio,
                        "video" => &mut data.video,
                        _ => &mut data.image,
                    };
                    let valid = value.chars().all(|c| c.is_ascii_alphanumeric() || "/.+-;=".contains(c));
                    if !valid || list.len() >= 16 {
                        return Err(Refusal::new(Status::ClientBadRequest, format!("bad {name} mimetype list")));
                    }
                    list.push(value);
                }
                other => {
                    return Err(Refusal::new(
                        Status::ClientForbidden,
                        format!(
                            "query parameter {other:?} refused: connection parameters come only from the token or \
                             the configuration"
                        ),
                    ))
                }
            }
        }
        Ok(data)
    }
}

fn once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), Refusal> {
    if slot.replace(value).is_some() {
        return Err(Refusal::new(Status::ClientBadRequest, format!("query parameter {name:?} given twice")));
    }
    Ok(())
}

fn number(name: &str, value: &str) -> Result<u32, Refusal> {
    value.parse().map_err(|_| Refusal::new(Status::ClientBadRequest, format!("{name} is not a number")))
}

/// Decides what a tunnel request may open. Nothing is spawned here.
pub fn admit(settings: &WebSettings, query: &str, now: u64, max_size: (u32, u32)) -> Result<Admission, Refusal> {
    let data = ConnectData::parse(query)?;
    let mut join_target = None;
    let (protocol, parameters, read_only, origin, name) = match (&data.token, &data.connection) {
        (Some(_), Some(_)) => {
            return Err(Refusal::new(Status::ClientBadRequest, "both a token and a connection name given"));
        }
        (None, None) => return Err(Refusal::new(Status::ClientUnauthorized, "neither a token nor a connection given")),
        (Some(token), None) => {
            if data.key.is_some() {
                return Err(Refusal::new(Status::ClientBadRequest, "an access key does not go with a token"));
            }
            let TokenPayload { protocol, parameters, read_only, join, .. } =
                token::verify(token, settings.token_key.as_ref(), now)
                    .map_err(|e| Refusal::new(Status::ClientUnauthorized, e.to_string()))?;
            let protocol = Protocol::from_name(&protocol)
                .ok_or_else(|| Refusal::new(Status::Unsupported, format!("token names protocol {protocol:?}")))?;
            match join {
                Some(target) => {
                    let valid = target.len() <= 64
                        && target.strip_prefix('$').is_some_and(|id| {
                            !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        });
                    if !valid {
                        return Err(Refusal::new(Status::ClientBadRequest, "token's join is not a connection ID"));
                    }
                    let origin = format!("token joining {target}");
                    join_target = Some(target);
                    // A joiner's parameters other than read-only mean nothing (guacd's semantics).
                    (protocol, BTreeMap::new(), read_only, origin, None)
                }
                None => (protocol, parameters, read_only, "token".to_string(), None),
            }
        }
        (None, Some(name)) => {
            let key = data.key.as_deref().unwrap_or_default();
            let user = settings
                .user_for_key(key)
                .ok_or_else(|| Refusal::new(Status::ClientUnauthorized, "access key not accepted"))?;
            let connection = settings.connections.get(name).filter(|_| user.may_open(name)).ok_or_else(|| {
                Refusal::new(Status::ClientForbidden, format!("user {:?} may not open connection {name:?}", user.name))
            })?;
            let origin = format!("connection {name} (user {})", user.name);
            (connection.protocol, connection.parameters.clone(), connection.read_only, origin, Some(user.name.clone()))
        }
    };
    let request = connect_request(protocol, parameters, read_only, &data, name, max_size);
    Ok(Admission { protocol, request, origin, join: join_target })
}

/// The request a guacd client would have sent with `select` and `connect`: values in `args` order.
fn connect_request(
    protocol: Protocol,
    mut parameters: BTreeMap<String, String>,
    read_only: bool,
    data: &ConnectData,
    name: Option<String>,
    (max_width, max_height): (u32, u32),
) -> ConnectRequest {
    if read_only {
        parameters.insert("read-only".into(), "true".into());
    }
    let names = protocol.parameter_names();
    let unknown: Vec<&String> = parameters.keys().filter(|k| !names.contains(&k.as_str())).collect();
    if !unknown.is_empty() {
        // guacd ignores parameters it does not know; so do we, loudly.
        warn!(protocol = protocol.name(), parameters = ?unknown, "Ignoring parameters the protocol does not have");
    }
    let params = names.iter().map(|n| (n.to_string(), parameters.remove(*n).unwrap_or_default())).collect();
    ConnectRequest {
        selection: Selection::Protocol(protocol.name().to_string()),
        client_version: ProtocolVersion::LATEST,
        params,
        width: data.width.unwrap_or(DEFAULT_WIDTH).clamp(16, max_width.max(16)),
        height: data.height.unwrap_or(DEFAULT_HEIGHT).clamp(16, max_height.max(16)),
        dpi: data.dpi.unwrap_or(DEFAULT_DPI).clamp(32, 1200),
        audio: data.audio.clone(),
        video: data.video.clone(),
        image: if data.image.is_empty() { vec!["image/png".into()] } else { data.image.clone() },
        timezone: data.timezone.clone(),
        name,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The HTTP handler: authorises from the query, then upgrades. A refused request still gets its upgrade,
/// then a close frame whose reason is the status, because that is what guacamole-common-js can show.
pub(super) async fn endpoint(
    ws: WebSocketUpgrade,
    RawQuery(query): RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(state): State<Arc<WebState>>,
) -> Response {
    let ws = ws.protocols([SUBPROTOCOL]).max_message_size(MAX_MESSAGE).max_frame_size(MAX_MESSAGE);
    if ws.selected_protocol().is_none() {
        return (StatusCode::BAD_REQUEST, "this WebSocket endpoint speaks the \"guacamole\" subprotocol only\n")
            .into_response();
    }
    // A place under the connection limits first, as on the TCP entry: held from before the upgrade until
    // the tunnel's end (dropped with the upgrade's future if the upgrade never completes).
    let Some(place) = state.limits.admit(peer.ip()) else {
        state.shared.metrics.tunnel_refused(Status::ServerBusy.code());
        warn!(%peer, "Connection limit reached; tunnel refused with 513");
        return ws.on_upgrade(|socket| refuse(socket, Status::ServerBusy));
    };
    let config = &state.shared.config;
    let admission =
        admit(&state.settings, query.as_deref().unwrap_or(""), unix_now(), (config.max_width, config.max_height));
    if let Err(refusal) = &admission {
        state.shared.metrics.tunnel_refused(refusal.status.code());
        info!(%peer, status = refusal.status.code(), reason = %refusal.detail, "Tunnel request refused");
    }
    // A refused request gives its place back at once.
    let place = admission.is_ok().then_some(place);
    ws.on_upgrade(move |socket| async move {
        let _place = place;
        match admission {
            Ok(admission) => run_tunnel(socket, admission, peer, state).await,
            Err(refusal) => refuse(socket, refusal.status).await,
        }
    })
}

async fn refuse(mut socket: WebSocket, status: Status) {
    let _ = socket.send(Message::Close(Some(close_frame(status)))).await;
    // Give the client a moment to answer the close handshake, then drop the connection.
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while socket.recv().await.is_some() {} }).await;
}

/// The WebSocket close code that goes with a Guacamole status (the reason carries the status itself).
fn close_code_for(status: Status) -> u16 {
    match status.code() {
        0 => close_code::NORMAL,
        0x0300..=0x03ff => close_code::POLICY,
        _ => close_code::ERROR,
    }
}

fn close_frame(status: Status) -> CloseFrame {
    CloseFrame { code: close_code_for(status), reason: Utf8Bytes::from(status.code().to_string()) }
}

async fn run_tunnel(socket: WebSocket, admission: Admission, peer: SocketAddr, state: Arc<WebState>) {
    let connection_id = format!("${}", uuid::Uuid::new_v4());
    let Admission { protocol, request, origin, join } = admission;
    let span = tracing::info_span!(
        "conn",
        id = %connection_id,
        %peer,
        entry = "websocket",
        protocol = protocol.name(),
        worker_pid = tracing::field::Empty
    );
    async move {
        info!(%origin, "Tunnel opened");
        let shared = &state.shared;
        let (sink, stream) = socket.split();
        let (messages, outgoing) = mpsc::channel(OUTGOING_QUEUE);
        let sender = tokio::spawn(send_frames(sink, outgoing).in_current_span());
        let (session_side, socket_side) = tokio::io::duplex(INPUT_PIPE);
        let receiver = tokio::spawn(receive_frames(stream, socket_side, messages.clone()).in_current_span());
        let mut reader = ClientReader::new(Box::new(session_side)).count_into(shared.metrics.bytes_received.clone());
        let mut writer = ClientWriter::messages(messages).count_into(shared.metrics.bytes_sent.clone());

        let result = async {
            // The tunnel's UUID comes first: guacamole-common-js goes OPEN on it.
            let mut out = BytesMut::new();
            encode(&mut out, "").str(&uuid::Uuid::new_v4().to_string()).finish();
            writer.send(&out).await?;
            if let Some(target) = &join {
                return match shared.sharing.find(target) {
                    Some((live, joins)) if live == protocol => {
                        session::join(&mut reader, &mut writer, target, joins, request, shared).await
                    }
                    found => {
                        info!(%target, live = ?found.map(|(p, _)| p.name()), "Token asks to join no such connection");
                        Err(SessionEnd::error(Status::ResourceNotFound, "No such connection."))
                    }
                };
            }
            let worker = session::spawn_worker(protocol, &connection_id, shared)?;
            session::run_connected(&mut reader, &mut writer, protocol, worker, Ok(request), &connection_id, shared)
                .await
        }
        .await;
        match result {
            Ok(()) => {
                info!("Tunnel closed");
                writer.close().await;
            }
            Err(SessionEnd { status: Some(status), message }) => {
                warn!(status = status.code(), %message, "Tunnel ended with an error");
                writer.fail(&message, status).await;
            }
            Err(SessionEnd { status: None, message }) => {
                info!(%message, "Tunnel closed");
                writer.close().await;
            }
        }
        receiver.abort();
        drop(writer);
        drop(reader);
        let _ = tokio::time::timeout(Duration::from_secs(5), sender).await;
    }
    .instrument(span)
    .await
}

/// Writes the session's messages as text frames until a `Close` (or the end of the channel), then closes
/// the socket with the status as the reason. Messages already queued are joined into one frame, except
/// the first (the tunnel UUID), which has a frame of its own as in the Java tunnel.
async fn send_frames(mut sink: SplitSink<WebSocket, Message>, mut outgoing: mpsc::Receiver<ClientMessage>) {
    let mut close = Status::Success;
    let mut pending: Option<ClientMessage> = None;
    let mut first = true;
    loop {
        let message = match pending.take() {
            Some(message) => message,
            None => match outgoing.recv().await {
                Some(message) => message,
                None => break,
            },
        };
        let mut frame = match message {
            ClientMessage::Instructions(bytes) => BytesMut::from(bytes),
            ClientMessage::Close(status) => {
                close = status;
                break;
            }
        };
        while !first && frame.len() < FRAME_TARGET {
            match outgoing.try_recv() {
                Ok(ClientMessage::Instructions(more)) => frame.extend_from_slice(&more),
                Ok(other) => {
                    pending = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let Ok(text) = Utf8Bytes::try_from(Bytes::from(frame)) else {
            // Our encoder writes UTF-8 only; anything else is a bug, and the client could not parse it.
            tracing::error!("Refusing to send a frame that is not UTF-8");
            close = Status::ServerError;
            break;
        };
        if sink.send(Message::Text(text)).await.is_err() {
            return;
        }
        first = false;
    }
    let _ = sink.send(Message::Close(Some(close_frame(close)))).await;
    let _ = sink.close().await;
}

/// Feeds the client's instructions to the session through `pipe`, answering pings itself. A frame that is
/// exactly one internal `ping` is echoed; everything else goes to the session unchanged (whose decoder
/// reports malformed input with 768/781 as on TCP).
async fn receive_frames(
    mut stream: SplitStream<WebSocket>,
    mut pipe: DuplexStream,
    replies: mpsc::Sender<ClientMessage>,
) {
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Text(text) => {
                if let Some(ping) = as_ping(text.as_str()) {
                    if replies.send(ClientMessage::Instructions(ping)).await.is_err() {
                        return;
                    }
                    continue;
                }
                if pipe.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
            }
            Message::Binary(_) => {
                debug!("Binary WebSocket message from the client");
                let _ = replies.send(ClientMessage::Close(Status::ClientBadType)).await;
                return;
            }
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

/// `Some(bytes to echo)` when `text` is exactly one `0.,4.ping,…;` instruction.
fn as_ping(text: &str) -> Option<Bytes> {
    if !text.starts_with("0.,4.ping") {
        return None;
    }
    let mut decoder = Decoder::new();
    decoder.feed(text.as_bytes());
    let instruction = decoder.decode().ok()??;
    let whole = instruction.as_bytes().len() == text.len();
    (whole && instruction.opcode().is_empty() && instruction.arg(0) == Some("ping")).then(|| instruction.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::settings::Overrides;
    use crate::http::token::{sign, TokenKey};

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn settings() -> WebSettings {
        let text = format!(
            r#"
            [tokens]
            key = "{KEY}"
            [[users]]
            name = "alice"
            access_key = "alice-key-0123456789"
            connections = ["static"]
            [[connections]]
            name = "static"
            protocol = "vnc"
            parameters = {{ hostname = "127.0.0.1", port = 5902, password = "guacpass" }}
            [[connections]]
            name = "secret"
            protocol = "vnc"
            parameters = {{ hostname = "127.0.0.1", port = 5999 }}
            "#
        );
        WebSettings::from_toml(&text, &Overrides::default()).unwrap()
    }

    fn token(expiry: u64) -> String {
        let payload = TokenPayload {
            protocol: "vnc".into(),
            parameters: [("hostname".to_string(), "127.0.0.1".to_string()), ("port".into(), "5902".into())]
                .into_iter()
                .collect(),
            expiry,
            read_only: true,
            join: None,
        };
        sign(&payload, &TokenKey::new(KEY.as_bytes()).unwrap())
    }

    fn refused(query: &str) -> Status {
        admit(&settings(), query, 1000, (3840, 2160)).unwrap_err().status
    }

    #[test]
    fn a_join_token_admits_a_join_with_its_read_only_flag_only() {
        let key = TokenKey::new(KEY.as_bytes()).unwrap();
        let join = |target: &str, read_only: bool| {
            let payload = TokenPayload {
                protocol: "vnc".into(),
                parameters: [("hostname".to_string(), "10.9.9.9".to_string())].into_iter().collect(),
                expiry: 2000,
                read_only,
                join: Some(target.into()),
            };
            format!("token={}", sign(&payload, &key))
        };
        let admitted = admit(&settings(), &join("$0b0c-1d", true), 1000, (3840, 2160)).unwrap();
        assert_eq!(admitted.join.as_deref(), Some("$0b0c-1d"));
        assert_eq!(admitted.request.param("read-only"), Some("true"));
        assert_eq!(admitted.request.param("hostname"), Some(""), "a joiner carries no connection parameters");
        let writable = admit(&settings(), &join("$0b0c-1d", false), 1000, (3840, 2160)).unwrap();
        assert_eq!(writable.request.param("read-only"), Some(""));
        for bad in ["0b0c", "$", "$../x", "$a b"] {
            assert_eq!(refused(&join(bad, true)), Status::ClientBadRequest, "{bad:?}");
        }
    }

    #[test]
    fn token_gives_its_own_parameters_in_args_order() {
        let query =
            format!("token={}&width=1280&height=700&dpi=120&timezone=Europe/Paris&image=image/png", token(2000));
        let admission = admit(&settings(), &query, 1000, (3840, 2160)).unwrap();
        let request = admission.request;
        assert_eq!(request.param("hostname"), Some("127.0.0.1"));
        assert_eq!(request.param("port"), Some("5902"));
        assert_eq!(request.param("read-only"), Some("true"));
        assert_eq!(request.params.len(), Protocol::Vnc.parameter_names().len());
        assert_eq!(request.params[0].0, "hostname");
        assert_eq!((request.width, request.height, request.dpi), (1280, 700, 120));
        assert_eq!(request.timezone.as_deref(), Some("Europe/Paris"));
    }

    #[test]
    fn ssh_tokens_give_ssh_parameters_in_args_order() {
        let payload = TokenPayload {
            protocol: "ssh".into(),
            parameters: [("hostname", "127.0.0.1"), ("port", "2222"), ("username", "u"), ("password", "p")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            expiry: 2000,
            read_only: false,
            join: None,
        };
        let token = sign(&payload, &TokenKey::new(KEY.as_bytes()).unwrap());
        let admission = admit(&settings(), &format!("token={token}"), 1000, (3840, 2160)).unwrap();
        assert_eq!(admission.protocol, Protocol::Ssh);
        let request = admission.request;
        assert_eq!(request.selection, Selection::Protocol("ssh".into()));
        let names: Vec<&str> = request.params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, Protocol::Ssh.parameter_names());
        assert_eq!(request.param("port"), Some("2222"));
        assert_eq!(request.param("username"), Some("u"));
        assert_eq!(request.param("password"), Some("p"));
    }

    #[test]
    fn bad_tokens_are_unauthorized() {
        assert_eq!(refused(&format!("token={}", token(999))), Status::ClientUnauthorized);
        let mut tampered = token(2000);
        tampered.insert(3, 'x');
        assert_eq!(refused(&format!("token={tampered}")), Status::ClientUnauthorized);
        assert_eq!(refused("token=abc.def"), Status::ClientUnauthorized);
        assert_eq!(refused(""), Status::ClientUnauthorized);
    }

    #[test]
    fn the_query_cannot_change_the_target() {
        for extra in ["hostname=10.0.0.1", "port=22", "password=x", "read-only=false", "protocol=ssh"] {
            assert_eq!(refused(&format!("token={}&{extra}", token(2000))), Status::ClientForbidden, "{extra}");
        }
        assert_eq!(refused(&format!("token={}&token={}", token(2000), token(3000))), Status::ClientBadRequest);
        assert_eq!(refused("connection=static&key=alice-key-0123456789&port=5999"), Status::ClientForbidden);
    }

    #[test]
    fn named_connections_need_an_allowed_user() {
        let admission = admit(&settings(), "connection=static&key=alice-key-0123456789", 1000, (3840, 2160)).unwrap();
        assert_eq!(admission.request.param("port"), Some("5902"));
        assert_eq!(admission.request.name.as_deref(), Some("alice"));
        assert_eq!(refused("connection=static&key=wrong-key-0123456789"), Status::ClientUnauthorized);
        assert_eq!(refused("connection=static"), Status::ClientUnauthorized);
        assert_eq!(refused("connection=secret&key=alice-key-0123456789"), Status::ClientForbidden);
        assert_eq!(refused("connection=nope&key=alice-key-0123456789"), Status::ClientForbidden);
    }

    #[test]
    fn pings_are_recognised_exactly() {
        assert_eq!(as_ping("0.,4.ping,13.1700000000000;").as_deref(), Some(&b"0.,4.ping,13.1700000000000;"[..]));
        assert_eq!(as_ping("0.,4.ping,1.1;4.sync,1.1;"), None);
        assert_eq!(as_ping("4.sync,1.1;"), None);
        assert_eq!(as_ping("0.,4.ping,9.1;"), None);
    }

    #[test]
    fn close_codes() {
        assert_eq!(close_code_for(Status::Success), 1000);
        assert_eq!(close_code_for(Status::ClientUnauthorized), 1008);
        assert_eq!(close_code_for(Status::UpstreamError), 1011);
        assert_eq!(close_frame(Status::ClientForbidden).reason.as_str(), "771");
    }
}
