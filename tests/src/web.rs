//! Helpers for the HTTP entry's tests: a configuration file with named connections to the VNC peers,
//! signed tokens (an implementation independent of guacr's, from the documented format), and a plain
//! WebSocket client for `/websocket-tunnel`.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use crate::peers::VncPeer;

/// The token key of [`write_config`]'s file.
pub const TOKEN_KEY: &str = "guacr-tests-token-key-0123456789abcdef";
/// The access key of the user `tester` in [`write_config`]'s file (may open every connection).
pub const ACCESS_KEY: &str = "tester-access-key-0123456789";
/// The access key of the user `limited` (may open `static` only).
pub const LIMITED_KEY: &str = "limited-access-key-0123456789";

/// Writes a guacr configuration file with a token key, two users and one named connection per peer
/// (named by the peer's role: `changing`, `static`, `typing`). Display resizing is off so that browser
/// windows never resize the shared test desktops.
pub fn write_config(dir: &Path, peers: &[VncPeer]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut text = format!(
        "[tokens]\nkey = \"{TOKEN_KEY}\"\n\n\
         [[users]]\nname = \"tester\"\naccess_key = \"{ACCESS_KEY}\"\nconnections = [\"*\"]\n\n\
         [[users]]\nname = \"limited\"\naccess_key = \"{LIMITED_KEY}\"\nconnections = [\"static\"]\n"
    );
    for peer in peers {
        text.push_str(&format!(
            "\n[[connections]]\nname = \"{}\"\nprotocol = \"vnc\"\ndescription = \"{} peer, display {}\"\n\
             parameters = {{ hostname = \"{}\", port = {}, password = \"{}\", disable-display-resize = true }}\n",
            peer.role,
            peer.role,
            peer.display,
            peer.host(),
            peer.port(),
            peer.password
        ));
    }
    let path = dir.join("guacr.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A token in guacr's documented format: `base64url(json) "." base64url(HMAC-SHA256(key, base64url(json)))`.
pub fn sign_token(key: &str, payload: &Value) -> String {
    let body = URL_SAFE_NO_PAD.encode(payload.to_string());
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(body.as_bytes());
    format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `%`-encodes a query value.
pub fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a tunnel connection received until it closed.
#[derive(Debug, Default)]
pub struct TunnelTranscript {
    /// Every text frame, in order.
    pub frames: Vec<String>,
    /// The close frame, if the server sent one.
    pub close: Option<CloseFrame>,
}

impl TunnelTranscript {
    /// The close reason as a Guacamole status code.
    pub fn close_status(&self) -> Option<u16> {
        self.close.as_ref().and_then(|c| c.reason.as_str().parse().ok())
    }
}

/// A WebSocket client of `/websocket-tunnel` with subprotocol `guacamole`, as guacamole-common-js opens it.
pub struct Tunnel {
    ws: WebSocket<TcpStream>,
}

impl Tunnel {
    pub fn open(http: SocketAddr, query: &str) -> Result<Tunnel> {
        let mut request = format!("ws://{http}/websocket-tunnel?{query}").into_client_request()?;
        request.headers_mut().insert("Sec-WebSocket-Protocol", "guacamole".parse()?);
        let stream = TcpStream::connect(http).context("connecting to guacr's HTTP entry")?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (ws, response) = tungstenite::client(request, stream).map_err(|e| anyhow!("WebSocket upgrade: {e}"))?;
        let protocol = response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok());
        if protocol != Some("guacamole") {
            bail!("the server did not choose subprotocol guacamole: {protocol:?}");
        }
        Ok(Tunnel { ws })
    }

    pub fn send(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text)).map_err(|e| anyhow!("sending: {e}"))
    }

    /// The next text frame within `timeout`; `None` once the server closed.
    pub fn next_frame(&mut self, timeout: Duration, transcript: &mut TunnelTranscript) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    transcript.frames.push(text.to_string());
                    return Ok(Some(text.to_string()));
                }
                Ok(Message::Close(frame)) => {
                    transcript.close = frame;
                    return Ok(None);
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if Instant::now() > deadline {
                        bail!("no frame within {timeout:?}; so far: {transcript:?}");
                    }
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return Ok(None),
                Err(e) => bail!("tunnel read failed: {e}; so far: {transcript:?}"),
            }
        }
    }

    /// Reads until the server closes (or `timeout`), echoing nothing.
    pub fn read_to_close(&mut self, timeout: Duration) -> Result<TunnelTranscript> {
        let mut transcript = TunnelTranscript::default();
        let deadline = Instant::now() + timeout;
        while self.next_frame(deadline.saturating_duration_since(Instant::now()), &mut transcript)?.is_some() {}
        Ok(transcript)
    }
}
