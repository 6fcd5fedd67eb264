//! Control messages between the supervisor and a worker: serde enums encoded with postcard, one message
//! per `SOCK_SEQPACKET` packet, at most [`MAX_CONTROL_MESSAGE`] bytes. A packet that is too large or does
//! not decode is a protocol breach.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use crate::damage::Rect;

/// Largest encoded control message. Clipboard data travels in chunks of [`CLIPBOARD_CHUNK`].
pub const MAX_CONTROL_MESSAGE: usize = 128 * 1024;
/// The longest pause between two tries of a send the peer has no room for (see `send_packet`).
const SEND_RETRY_MAX: Duration = Duration::from_millis(5);
/// Clipboard bytes per message.
pub const CLIPBOARD_CHUNK: usize = 32 * 1024;
/// Largest cursor image a worker may send (pixels per side).
pub const MAX_CURSOR_SIDE: u32 = 128;
/// Largest payload of one [`StreamFromWorker::Blob`]: one Guacamole `blob` (guacd's 6048 raw bytes), so
/// each worker blob is exactly one blob on the wire and the client's `ack`s map one to one.
pub const STREAM_CHUNK: usize = 6048;
/// Largest payload of one [`StreamToWorker::Blob`]: whatever fits one 8192-byte Guacamole instruction.
pub const CLIENT_STREAM_CHUNK: usize = 6144;
/// Stream indices a worker may open its own streams with: `0..MAX_WORKER_STREAMS`.
pub const MAX_WORKER_STREAMS: u32 = 32;
/// Object indices a worker may define: `0..MAX_WORKER_OBJECTS`.
pub const MAX_WORKER_OBJECTS: u32 = 8;
/// Blobs a worker may have on one stream that the client has not acknowledged yet.
pub const STREAM_WINDOW: u32 = 16;
/// Longest stream or object name (a path), in bytes.
pub const MAX_STREAM_NAME: usize = 4096;
/// Longest mimetype, in bytes.
pub const MAX_MIMETYPE: usize = 255;
/// Largest [`FromWorker::Typescript`] chunk.
pub const TYPESCRIPT_CHUNK: usize = 64 * 1024;
/// Longest `ack` message, in bytes.
pub const MAX_ACK_MESSAGE: usize = 255;
/// Most audio mimetypes [`ToWorker::Start`] carries (a client lists a handful).
pub const MAX_AUDIO_MIMETYPES: usize = 32;

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

/// The mimetypes of a client's handshake `audio` that go into [`ToWorker::Start`]'s `audio_mimetypes`:
/// those that are printable ASCII without spaces and at most [`MAX_MIMETYPE`] bytes, the first
/// [`MAX_AUDIO_MIMETYPES`] of them. Anything else a client sent is not a sound format a worker could match.
pub fn valid_audio_mimetypes(listed: &[String]) -> Vec<String> {
    let valid =
        listed.iter().filter(|m| m.len() <= MAX_MIMETYPE && !m.is_empty() && m.bytes().all(|b| b.is_ascii_graphic()));
    valid.take(MAX_AUDIO_MIMETYPES).cloned().collect()
}

/// Whether a client that listed `listed` in its handshake plays an `audio` stream of `mimetype`: it
/// listed that exact mimetype, or its type without parameters (`audio/L16` takes `audio/L16;rate=44100,
/// channels=2`), as guacd decides.
pub fn client_accepts_audio(listed: &[String], mimetype: &str) -> bool {
    let base = mimetype.split(';').next().unwrap_or(mimetype);
    listed.iter().any(|m| m == mimetype || (!m.contains(';') && m == base))
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
        /// The audio mimetypes the client listed in its handshake, as [`valid_audio_mimetypes`] keeps them.
        audio_mimetypes: Vec<String>,
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
    /// A Guacamole stream or object event from the session's owner (uploads, downloads, browsing). Sent
    /// only to a worker that asked for them ([`StreamFromWorker::Filesystem`], [`StreamFromWorker::AcceptFiles`]).
    Stream(StreamToWorker),
}

/// Client-side stream and object events, relayed by the supervisor (see `supervisor/src/streams.rs`).
/// Protocol-neutral: the SSH worker maps them to SFTP, a browser worker to its downloads. Stream indices
/// in here are the client's own (streams it opened with `file` or `put`); in [`StreamToWorker::Ack`] they
/// are the worker's (streams it opened with `Body` or `File`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamToWorker {
    /// `file`: the client sends a file to the default upload place (drag and drop). The worker answers
    /// with [`StreamFromWorker::Ack`] (status 0: send on; anything else refuses it).
    File { stream: u32, mimetype: String, name: String },
    /// `put`: the client uploads `name` into an object the worker defined. Answered like `File`.
    Put { object: u32, stream: u32, mimetype: String, name: String },
    /// Data on an upload; the worker acknowledges each blob ([`StreamFromWorker::Ack`]) once it has taken it.
    Blob { stream: u32, data: Vec<u8> },
    /// The client finished the upload.
    End { stream: u32 },
    /// The upload was cut off (client gone, or it broke the flow control): discard it, send nothing more.
    Abort { stream: u32 },
    /// `get`: the client asks object `object` for `name`. The worker answers with a
    /// [`StreamFromWorker::Body`] (a listing or a download), or a `Body` followed by `Abort` when refused.
    Get { object: u32, name: String },
    /// The client acknowledged a blob on the worker's stream `stream`; a status other than 0 closes it
    /// (the worker then ends it with [`StreamFromWorker::End`]).
    Ack { stream: u32, message: String, status: u16 },
}

/// Worker-side stream and object events. Everything is checked by the supervisor: indices within
/// [`MAX_WORKER_STREAMS`] / [`MAX_WORKER_OBJECTS`], names, mimetypes and blob sizes within their bounds, acks
/// only for open client streams, at most [`STREAM_WINDOW`] unacknowledged blobs per stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamFromWorker {
    /// Offer a browsable object to the owner (`filesystem`); its root is `/`.
    Filesystem { object: u32, name: String },
    /// Withdraw an object (`undefine`).
    Undefine { object: u32 },
    /// The worker takes `file` uploads from the owner (or no longer does).
    AcceptFiles { accept: bool },
    /// Answer to [`StreamToWorker::Get`]: opens the worker's stream `stream` (`body`).
    Body { object: u32, stream: u32, mimetype: String, name: String },
    /// Offers a download outside any object (`file`): opens the worker's stream `stream`.
    File { stream: u32, mimetype: String, name: String },
    /// Data on the worker's open stream, at most [`STREAM_CHUNK`] bytes.
    Blob { stream: u32, data: Vec<u8> },
    /// Opens the worker's stream `stream` as sound (`audio`) in `mimetype`, one the client listed in its
    /// handshake (`ToWorker::Start`'s `audio_mimetypes`). Its blobs are not acknowledged by clients, so they are not
    /// held to [`STREAM_WINDOW`]; the supervisor drops them instead while the client is behind.
    Audio { stream: u32, mimetype: String },
    /// The worker's stream is complete (`end`).
    End { stream: u32 },
    /// The worker gives up its stream with a Guacamole status (a refused or failed download). On the wire:
    /// `ack` with that status on the stream, then `end`. The Guacamole protocol has no sender-side error,
    /// so this is a guacr convention; a client that ignores it sees an empty stream.
    Abort { stream: u32, status: u16, message: String },
    /// Acknowledges a blob (or the opening) of the client's upload `stream`; a status other than 0 refuses
    /// the upload and closes the stream.
    Ack { stream: u32, message: String, status: u16 },
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
    /// A Guacamole stream or object event for the session's owner (see [`StreamFromWorker`]).
    Stream(StreamFromWorker),
    /// Terminal output for the session's typescript (`typescript-path`), at most [`TYPESCRIPT_CHUNK`]
    /// bytes, in the order the terminal received it. Sent only when the parameters ask for a typescript;
    /// the supervisor writes it without parsing it.
    Typescript { data: Vec<u8> },
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
            // Readable only: a socket registered for writability too wakes its reactor each time the peer
            // reads a message (the kernel signals the freed buffer space), about once per frame on each
            // side. A send waits for writability only after the kernel refused it (`send_packet`).
            fd: crate::raw::register_async(fd, tokio::io::Interest::READABLE)?,
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
        // The peer's receive queue is full only while it is not reading (busy, stopped or hung). The socket
        // is registered for readability only, so room is waited for by polling: a short sleep, growing to
        // `SEND_RETRY_MAX`. Waiting for writability would need a second registration of a duplicate
        // descriptor, and the workers' seccomp filter allows no `dup`.
        let mut pause = Duration::from_micros(250);
        loop {
            match socket::send(self.fd.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT) {
                Ok(_) => return Ok(()),
                Err(Errno::EAGAIN) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(SEND_RETRY_MAX);
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(ControlError::Io(e.into())),
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
                // The peer closed with our messages unread. Linux reports that (once) before the messages
                // the peer sent earlier: read on, so its last word (`Failed`, `Closed`) is not lost, then
                // end of file.
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => continue,
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

    #[test]
    fn audio_mimetypes_travel_in_start_and_match_like_guacd() {
        let listed = vec!["audio/L8".to_string(), "audio/L16".into(), "bad type".into(), "x\ny".into(), "".into()];
        let start = ToWorker::Start {
            session_id: "$s".into(),
            params: Params::default(),
            width: 640,
            height: 480,
            dpi: 96,
            audio_mimetypes: valid_audio_mimetypes(&listed),
        };
        let bytes = postcard::to_stdvec(&start).unwrap();
        let Some(ToWorker::Start { audio_mimetypes: decoded, .. }) = decode_packet(&bytes, bytes.len()).unwrap() else {
            panic!("not a Start");
        };
        assert_eq!(decoded, ["audio/L8", "audio/L16"]);
        assert!(client_accepts_audio(&decoded, "audio/L16;rate=44100,channels=2"));
        assert!(client_accepts_audio(&decoded, "audio/L16"));
        assert!(!client_accepts_audio(&decoded, "audio/ogg"));
        let exact = vec!["audio/L16;rate=22050,channels=1".to_string()];
        assert!(client_accepts_audio(&exact, "audio/L16;rate=22050,channels=1"));
        assert!(!client_accepts_audio(&exact, "audio/L16;rate=44100,channels=2"));
        assert!(!client_accepts_audio(&exact, "audio/L16"));
        let many: Vec<String> = (0..100).map(|i| format!("audio/x-{i}")).collect();
        assert_eq!(valid_audio_mimetypes(&many).len(), MAX_AUDIO_MIMETYPES);
        assert!(valid_audio_mimetypes(&["a".repeat(MAX_MIMETYPE + 1)]).is_empty());
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
        let blob = FromWorker::Stream(StreamFromWorker::Blob { stream: 3, data: vec![1; STREAM_CHUNK] });
        b.send(&blob).await.unwrap();
        assert_eq!(a.recv::<FromWorker>().await.unwrap(), Some(blob));
        let put = ToWorker::Stream(StreamToWorker::Blob { stream: 9, data: vec![2; CLIENT_STREAM_CHUNK] });
        a.send(&put).await.unwrap();
        assert_eq!(b.recv::<ToWorker>().await.unwrap(), Some(put));
        drop(b);
        assert_eq!(a.recv::<FromWorker>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_last_word_survives_a_peer_that_exits_with_messages_unread() {
        let (a, b) = ControlChannel::pair().unwrap();
        let (a, b) = (ControlChannel::new(a).unwrap(), ControlChannel::new(b).unwrap());
        a.send(&ToWorker::Heartbeat).await.unwrap();
        b.send(&FromWorker::Failed { status: 519, message: "gone".into() }).await.unwrap();
        drop(b);
        let last = a.recv::<FromWorker>().await.unwrap();
        assert!(matches!(last, Some(FromWorker::Failed { status: 519, .. })), "{last:?}");
        assert!(a.recv::<FromWorker>().await.unwrap().is_none());
    }

    /// A peer that stops reading fills the socket; the sender then waits (the socket is registered for
    /// readability only) and every message arrives, in order, once the peer reads again.
    #[tokio::test]
    async fn a_send_to_a_full_socket_waits_for_the_reader() {
        let (a, b) = ControlChannel::pair().unwrap();
        let (a, b) = (ControlChannel::new(a).unwrap(), ControlChannel::new(b).unwrap());
        let chunk = |i: u32| ToWorker::Key { keysym: i, pressed: true };
        // Find how many messages fit before the kernel refuses one.
        let mut fitted = 0u32;
        while socket::send(a.fd.as_raw_fd(), &postcard::to_stdvec(&chunk(fitted)).unwrap(), MsgFlags::MSG_DONTWAIT)
            .is_ok()
        {
            fitted += 1;
            assert!(fitted < 1_000_000, "the socket never filled");
        }
        let total = fitted + 50;
        let sender = tokio::spawn(async move {
            for i in fitted..total {
                a.send(&chunk(i)).await.unwrap();
            }
            a
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sender.is_finished(), "the send did not wait for room");
        for i in 0..total {
            let got = b.recv::<ToWorker>().await.unwrap();
            assert!(matches!(got, Some(ToWorker::Key { keysym, .. }) if keysym == i), "{i}: {got:?}");
        }
        drop(sender.await.unwrap());
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
