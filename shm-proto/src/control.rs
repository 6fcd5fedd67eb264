//! Control messages between the supervisor and a worker: serde enums encoded with postcard, one message
//! per `SOCK_SEQPACKET` packet, at most [`MAX_CONTROL_MESSAGE`] bytes. A packet that is too large or does
//! not decode is a protocol breach.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use crate::damage::Rect;

/// Largest encoded control message. Clipboard data travels in chunks of [`CLIPBOARD_CHUNK`].
pub const MAX_CONTROL_MESSAGE: usize = 128 * 1024;
/// Clipboard bytes per message.
pub const CLIPBOARD_CHUNK: usize = 32 * 1024;
/// Largest cursor image a worker may send (pixels per side).
pub const MAX_CURSOR_SIDE: u32 = 128;

/// Connection parameters (guacd names and values). `Debug` redacts secrets.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// The value of a parameter, `None` when absent or empty (guacd treats empty as unset).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    /// A boolean parameter as guacd parses it: exactly "true" is true.
    pub fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }
}

fn is_secret(name: &str) -> bool {
    ["password", "passphrase", "private-key", "secret", "token"].iter().any(|s| name.contains(s))
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in &self.0 {
            if value.is_empty() {
                continue;
            }
            if is_secret(name) {
                map.entry(name, &"<redacted>");
            } else {
                map.entry(name, value);
            }
        }
        map.finish()
    }
}

/// Supervisor → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// First message: what to connect to. Sent once the client's `connect` has arrived.
    Start {
        session_id: String,
        params: Params,
        width: u32,
        height: u32,
        dpi: u32,
    },
    Key {
        keysym: u32,
        pressed: bool,
    },
    Mouse {
        x: i32,
        y: i32,
        mask: u32,
    },
    /// The client's display size changed.
    Resize {
        width: u32,
        height: u32,
    },
    /// Clipboard text from the client, in chunks; `last` ends it.
    Clipboard {
        mimetype: String,
        data: Vec<u8>,
        last: bool,
    },
    /// The supervisor released frame `seq`; the worker may publish the next one.
    Consumed {
        seq: u64,
    },
    /// Liveness probe; the worker answers with [`FromWorker::Heartbeat`].
    Heartbeat,
    /// End the session cleanly.
    Shutdown,
}

/// Worker → supervisor. Everything here is untrusted input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The remote server accepted us; frames follow.
    Connected { width: u32, height: u32, name: String },
    /// Frame `seq` is in shared memory (the wake-up: the supervisor never polls).
    Published { seq: u64 },
    /// New cursor image, BGRA (premultiplied alpha not assumed), `width * height * 4` bytes.
    Cursor { hotspot_x: u32, hotspot_y: u32, width: u32, height: u32, bgra: Vec<u8> },
    /// Remote clipboard contents, in chunks; `last` ends it.
    Clipboard { mimetype: String, data: Vec<u8>, last: bool },
    /// A parameter the worker does not implement yet (logged once by the supervisor).
    Unsupported { parameter: String },
    /// Answer to [`ToWorker::Heartbeat`], also sent unprompted while idle.
    Heartbeat,
    /// The session cannot go on; `status` is a Guacamole status code. The worker exits after this.
    Failed { status: u16, message: String },
    /// The remote side ended the session normally.
    Closed { message: String },
    /// Area of the frame the worker asks to be treated as lossless (reserved for later use).
    Hint { rect: Rect },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("control socket i/o failed: {0}")]
    Io(#[from] io::Error),
    #[error("control message of {len} bytes exceeds the {limit}-byte bound")]
    TooLarge { len: usize, limit: usize },
    #[error("control message does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

/// One end of the `SOCK_SEQPACKET` control socket, driven by tokio.
pub struct ControlChannel {
    fd: AsyncFd<OwnedFd>,
    recv_buf: std::sync::Mutex<Vec<u8>>,
}

impl ControlChannel {
    /// A connected pair: (supervisor end, worker end). Both close-on-exec and non-blocking; the supervisor
    /// clears close-on-exec only on the copy it places into the worker.
    pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
        socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(io::Error::from)
    }

    /// Wraps a connected seqpacket socket. Needs a tokio runtime with I/O enabled.
    pub fn new(fd: OwnedFd) -> io::Result<ControlChannel> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
        flags.insert(nix::fcntl::OFlag::O_NONBLOCK);
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(ControlChannel {
            fd: crate::raw::register_async(fd)?,
            recv_buf: std::sync::Mutex::new(vec![0; MAX_CONTROL_MESSAGE + 1]),
        })
    }

    /// Encodes and sends one message as one packet.
    pub async fn send<T: Serialize>(&self, msg: &T) -> Result<(), ControlError> {
        let bytes = postcard::to_stdvec(msg)?;
        if bytes.len() > MAX_CONTROL_MESSAGE {
            return Err(ControlError::TooLarge { len: bytes.len(), limit: MAX_CONTROL_MESSAGE });
        }
        self.send_packet(&bytes).await
    }

    /// Sends arbitrary bytes as one packet. For tests that play a hostile worker; a real peer can send
    /// anything anyway, so this grants nothing.
    pub async fn danger_send_raw(&self, bytes: &[u8]) -> Result<(), ControlError> {
        self.send_packet(bytes).await
    }

    async fn send_packet(&self, bytes: &[u8]) -> Result<(), ControlError> {
        loop {
            let mut guard = self.fd.writable().await?;
            let sent = guard.try_io(|fd| {
                socket::send(fd.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT)
                    .map_err(io::Error::from)
            });
            if let Ok(result) = sent {
                return result.map(drop).map_err(ControlError::Io);
            }
        }
    }

    /// Receives one message; `Ok(None)` when the peer closed its end.
    pub async fn recv<T: DeserializeOwned>(&self) -> Result<Option<T>, ControlError> {
        loop {
            let mut guard = self.fd.readable().await?;
            let received = guard.try_io(|fd| {
                let mut buf = self.recv_buf.lock().unwrap_or_else(|e| e.into_inner());
                let len = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC)
                    .map_err(io::Error::from)?;
                Ok(decode_packet::<T>(&buf, len))
            });
            match received {
                Ok(Ok(result)) => return result,
                Ok(Err(e)) => return Err(ControlError::Io(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Decodes one received packet of `len` bytes (`len` may exceed the buffer: MSG_TRUNC reports the real
/// length). Zero bytes means the peer closed: we never send empty messages.
fn decode_packet<T: DeserializeOwned>(buf: &[u8], len: usize) -> Result<Option<T>, ControlError> {
    if len == 0 {
        return Ok(None);
    }
    if len > MAX_CONTROL_MESSAGE {
        return Err(ControlError::TooLarge { len, limit: MAX_CONTROL_MESSAGE });
    }
    Ok(Some(postcard::from_bytes(&buf[..len])?))
}

/// Decodes a message from bytes (for fuzzing the supervisor's decoder).
pub fn decode_from_worker(bytes: &[u8]) -> Result<Option<FromWorker>, ControlError> {
    decode_packet(bytes, bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_debug_redacts_secrets() {
        let p = Params(vec![("hostname".into(), "h".into()), ("password".into(), "hunter2".into())]);
        let text = format!("{p:?}");
        assert!(text.contains("hostname"));
        assert!(!text.contains("hunter2"));
    }

    #[test]
    fn params_lookup_like_guacd() {
        let p = Params(vec![("read-only".into(), "true".into()), ("port".into(), "".into())]);
        assert!(p.flag("read-only"));
        assert_eq!(p.get("port"), None);
    }

    #[tokio::test]
    async fn messages_cross_the_socket() {
        let (a, b) = ControlChannel::pair().unwrap();
        let (a, b) = (ControlChannel::new(a).unwrap(), ControlChannel::new(b).unwrap());
        a.send(&ToWorker::Key { keysym: 0xff0d, pressed: true }).await.unwrap();
        let got: Option<ToWorker> = b.recv().await.unwrap();
        assert_eq!(got, Some(ToWorker::Key { keysym: 0xff0d, pressed: true }));
        let big = FromWorker::Clipboard { mimetype: "text/plain".into(), data: vec![7; CLIPBOARD_CHUNK], last: true };
        b.send(&big).await.unwrap();
        assert_eq!(a.recv::<FromWorker>().await.unwrap(), Some(big));
        drop(b);
        assert_eq!(a.recv::<FromWorker>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_and_garbage_packets_are_errors() {
        let (a, b) = ControlChannel::pair().unwrap();
        let b = ControlChannel::new(b).unwrap();
        socket::send(a.as_raw_fd(), &[0xff; 16], MsgFlags::empty()).unwrap();
        assert!(matches!(b.recv::<FromWorker>().await, Err(ControlError::Decode(_))));
        assert!(matches!(decode_from_worker(&vec![0; MAX_CONTROL_MESSAGE + 1]), Err(ControlError::TooLarge { .. })));
    }
}
