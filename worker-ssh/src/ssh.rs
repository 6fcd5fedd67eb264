//! The SSH side: connect (with the `timeout`), verify the server's key against `host-key` when given,
//! authenticate (private key, password, then keyboard-interactive answered with the password), open a
//! session channel with a pty and start the shell or `command`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use russh::client::{self, AuthResult, Handle, KeyboardInteractiveAuthResponse};
use russh::keys::{self, HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, MethodKind};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{debug, info};

use crate::settings::Settings;

/// Guacamole status codes (guacd-wire.md §7).
pub mod status {
    pub const UPSTREAM_TIMEOUT: u16 = 514;
    pub const UPSTREAM_ERROR: u16 = 515;
    pub const UPSTREAM_NOT_FOUND: u16 = 519;
    pub const CLIENT_UNAUTHORIZED: u16 = 769;
}

/// A fatal error, as the supervisor will show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub message: String,
}

impl Failure {
    pub fn new(status: u16, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into() }
    }
}

/// Our side of the SSH connection: checks the server's key.
pub struct Client {
    expected: Option<Vec<keys::ssh_key::public::KeyData>>,
    mismatch: Arc<AtomicBool>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let data = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data().clone(),
            PublicKeyOrCertificate::Certificate(cert) => cert.public_key().clone(),
        };
        let Some(expected) = &self.expected else {
            debug!(algorithm = %data.algorithm(), "No host-key given; accepting the server's key");
            return Ok(true);
        };
        let ok = expected.contains(&data);
        if !ok {
            self.mismatch.store(true, Ordering::SeqCst);
        }
        Ok(ok)
    }
}

/// Parses `host-key`: one or more known_hosts lines (`[host]:port type base64 [comment]`), or just
/// `type base64`, or the bare base64 key. Host name fields are not checked: the entry is given for this connection.
pub fn parse_host_keys(text: &str) -> Result<Vec<keys::ssh_key::public::KeyData>, String> {
    let mut found = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let key = match fields[..] {
            // A bare base64 key blob.
            [blob] => keys::parse_public_key_base64(blob).ok(),
            _ => fields.windows(2).find_map(|pair| {
                let key = keys::parse_public_key_base64(pair[1]).ok()?;
                (key.algorithm().as_str() == pair[0]).then_some(key)
            }),
        };
        match key {
            Some(key) => found.push(key.key_data().clone()),
            None => return Err(format!("host-key line {line:?} holds no public key")),
        }
    }
    if found.is_empty() {
        return Err("host-key is empty".into());
    }
    Ok(found)
}

pub struct Connection {
    pub handle: Handle<Client>,
    pub channel: Channel<client::Msg>,
}

/// Connects, authenticates and starts the shell (or `command`) on a pty of `cols × rows`.
pub async fn connect(
    settings: &Settings,
    addrs: &[SocketAddr],
    cols: u16,
    rows: u16,
    pixels: (u32, u32),
) -> Result<Connection, Failure> {
    let target = format!("{}:{}", settings.hostname, settings.port);
    let expected = match &settings.host_key {
        Some(text) => Some(parse_host_keys(text).map_err(|e| Failure::new(status::UPSTREAM_ERROR, e))?),
        None => None,
    };
    // Load the key before connecting: a bad key or passphrase is the user's error, not the server's.
    let private_key = match &settings.private_key {
        Some(text) => {
            Some(Arc::new(crate::private_key::decode(text, settings.passphrase.as_deref()).map_err(|e| {
                Failure::new(status::CLIENT_UNAUTHORIZED, format!("The private key cannot be read: {e}"))
            })?))
        }
        None => None,
    };
    let stream = match timeout(settings.timeout, TcpStream::connect(addrs)).await {
        Err(_) => return Err(Failure::new(status::UPSTREAM_TIMEOUT, format!("Timed out connecting to {target}"))),
        Ok(Err(e)) => {
            return Err(Failure::new(status::UPSTREAM_NOT_FOUND, format!("Unable to connect to {target}: {e}")))
        }
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    let config = client::Config {
        keepalive_interval: settings.server_alive_interval,
        keepalive_max: 3,
        nodelay: true,
        ..client::Config::default()
    };
    let mismatch = Arc::new(AtomicBool::new(false));
    let handler = Client { expected, mismatch: mismatch.clone() };
    let handshake = client::connect_stream(Arc::new(config), stream, handler);
    let mut handle = match timeout(settings.timeout, handshake).await {
        Err(_) => return Err(Failure::new(status::UPSTREAM_TIMEOUT, format!("SSH handshake with {target} timed out"))),
        Ok(Err(_)) if mismatch.load(Ordering::SeqCst) => {
            return Err(Failure::new(
                status::UPSTREAM_ERROR,
                format!("Host key of {target} did not match the host-key parameter; not logging in"),
            ))
        }
        Ok(Err(e)) => return Err(Failure::new(status::UPSTREAM_ERROR, format!("SSH handshake with {target}: {e}"))),
        Ok(Ok(handle)) => handle,
    };
    authenticate(settings, &mut handle, private_key).await?;
    info!(%target, "SSH authentication succeeded");

    let ssh_error = |what: &str, e: russh::Error| Failure::new(status::UPSTREAM_ERROR, format!("SSH {what}: {e}"));
    let channel = handle.channel_open_session().await.map_err(|e| ssh_error("session channel", e))?;
    if let Some(locale) = &settings.locale {
        // Servers refuse variables outside AcceptEnv; that is not an error.
        let _ = channel.set_env(false, "LANG", locale.as_str()).await;
    }
    if let Some(tz) = &settings.timezone {
        let _ = channel.set_env(false, "TZ", tz.as_str()).await;
    }
    channel
        .request_pty(true, &settings.terminal_type, cols as u32, rows as u32, pixels.0, pixels.1, &[])
        .await
        .map_err(|e| ssh_error("pty request", e))?;
    match &settings.command {
        Some(command) => channel.exec(true, command.as_bytes()).await,
        None => channel.request_shell(true).await,
    }
    .map_err(|e| ssh_error("shell request", e))?;
    Ok(Connection { handle, channel })
}

/// Opens the SFTP subsystem on a second channel of the same connection (`enable-sftp`). Like guacd, a
/// server without SFTP ends the session: the user asked for file transfer.
pub async fn open_sftp(handle: &Handle<Client>) -> Result<russh_sftp::client::SftpSession, Failure> {
    let failed = |e: String| Failure::new(status::UPSTREAM_ERROR, format!("Unable to start SFTP: {e}"));
    let channel = handle.channel_open_session().await.map_err(|e| failed(e.to_string()))?;
    channel.request_subsystem(true, "sftp").await.map_err(|e| failed(e.to_string()))?;
    russh_sftp::client::SftpSession::new(channel.into_stream()).await.map_err(|e| failed(e.to_string()))
}

async fn authenticate(
    settings: &Settings,
    handle: &mut Handle<Client>,
    private_key: Option<Arc<keys::PrivateKey>>,
) -> Result<(), Failure> {
    let denied = |how: &str| Failure::new(status::CLIENT_UNAUTHORIZED, format!("SSH authentication failed ({how})"));
    let lost = |e: russh::Error| Failure::new(status::UPSTREAM_ERROR, format!("SSH connection lost: {e}"));
    let Some(user) = settings.username.clone() else {
        return Err(Failure::new(status::CLIENT_UNAUTHORIZED, "A username is required (the username parameter)"));
    };
    let mut methods: Option<Vec<MethodKind>> = None;
    if let Some(key) = private_key {
        // RSA: the best SHA-2 variant the server announces; SHA-256 when it announces nothing.
        let hash = match handle.best_supported_rsa_hash().await {
            Ok(Some(hash)) => hash,
            _ => Some(HashAlg::Sha256),
        };
        let result =
            handle.authenticate_publickey(user.clone(), PrivateKeyWithHashAlg::new(key, hash)).await.map_err(lost)?;
        match result {
            AuthResult::Success => return Ok(()),
            AuthResult::Failure { remaining_methods, .. } => methods = Some(remaining_methods.to_vec()),
        }
        if settings.password.is_none() {
            return Err(denied("public key refused"));
        }
    }
    let Some(password) = settings.password.clone() else {
        return Err(denied("no password or private key given"));
    };
    let allows = |methods: &Option<Vec<MethodKind>>, m: MethodKind| methods.as_ref().is_none_or(|l| l.contains(&m));
    if allows(&methods, MethodKind::Password) {
        match handle.authenticate_password(user.clone(), password.clone()).await.map_err(lost)? {
            AuthResult::Success => return Ok(()),
            AuthResult::Failure { remaining_methods, .. } => methods = Some(remaining_methods.to_vec()),
        }
    }
    if allows(&methods, MethodKind::KeyboardInteractive) {
        let mut reply = handle.authenticate_keyboard_interactive_start(user, None).await.map_err(lost)?;
        // Each round of prompts is answered with the password; a server that keeps asking is cut off.
        for _ in 0..8 {
            match reply {
                KeyboardInteractiveAuthResponse::Success => return Ok(()),
                KeyboardInteractiveAuthResponse::Failure { .. } => break,
                KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                    let answers = prompts.iter().map(|_| password.clone()).collect();
                    reply = handle.authenticate_keyboard_interactive_respond(answers).await.map_err(lost)?;
                }
            }
        }
    }
    Err(denied("password refused"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

    #[test]
    fn host_key_formats() {
        for text in [
            format!("ssh-ed25519 {ED}"),
            format!("[127.0.0.1]:2222 ssh-ed25519 {ED} comment"),
            format!("# comment\nlocalhost ssh-ed25519 {ED}\n"),
            ED.to_string(),
        ] {
            assert_eq!(parse_host_keys(&text).unwrap().len(), 1, "{text}");
        }
        assert!(parse_host_keys("").is_err());
        assert!(parse_host_keys("ssh-ed25519 notbase64").is_err());
        assert!(parse_host_keys(&format!("ssh-rsa {ED}")).is_err(), "type must match the key");
    }
}
