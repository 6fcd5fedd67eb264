//! The client side of a connection: instruction decoding from the socket and timed writes.

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use guac_proto::{DecodeError, Decoder, Instruction, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// A client that does not take our output for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client closed the connection")]
    Closed,
    #[error("client i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed instruction from client: {0}")]
    Malformed(#[from] DecodeError),
    #[error("client stopped reading for {0:?}")]
    WriteTimeout(Duration),
}

impl ClientError {
    /// The status to report to the client, if it can still be told anything.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Malformed(DecodeError::InstructionTooLong { .. }) => Some(Status::ClientOverrun),
            ClientError::Malformed(_) => Some(Status::ClientBadRequest),
            _ => None,
        }
    }
}

/// The client's byte stream, whatever carries it (plain TCP today; TLS or a tunnel later).
pub type ClientRead = Box<dyn AsyncRead + Send + Unpin>;
/// Where instructions for the client go. Each `send` carries whole instructions, so a message-oriented
/// transport can map one `send` to one message.
pub type ClientWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// What a message-oriented transport (the WebSocket tunnel) is asked to send: each `ClientWriter::send`
/// becomes one `Instructions` message (one WebSocket text frame), so every message holds whole instructions.
#[derive(Debug)]
pub enum ClientMessage {
    Instructions(Bytes),
    /// Close the transport; the status is the close reason (guacamole-common-js reads it).
    Close(Status),
}

/// The sending half of a message-oriented transport.
pub type ClientMessages = tokio::sync::mpsc::Sender<ClientMessage>;

enum Sink {
    Stream(ClientWrite),
    Messages(ClientMessages),
}

pub struct ClientReader {
    read: ClientRead,
    decoder: Decoder,
    pub last_input: Instant,
    received: Option<Arc<AtomicU64>>,
}

impl ClientReader {
    pub fn new(read: ClientRead) -> ClientReader {
        ClientReader { read, decoder: Decoder::new(), last_input: Instant::now(), received: None }
    }

    /// Adds every byte read to `counter` (the metrics).
    pub fn count_into(mut self, counter: Arc<AtomicU64>) -> ClientReader {
        self.received = Some(counter);
        self
    }

    /// The next complete instruction. Cancel-safe: bytes are only ever buffered inside the decoder.
    pub async fn next(&mut self) -> Result<Instruction, ClientError> {
        loop {
            if let Some(instruction) = self.decoder.decode()? {
                self.last_input = Instant::now();
                return Ok(instruction);
            }
            let buf = self.decoder.buffer_mut();
            buf.reserve(8192);
            let n = self.read.read_buf(buf).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            if let Some(counter) = &self.received {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }

    /// After our last words (`error`, `disconnect`) and our write half's shutdown: reads and discards
    /// what the client still sends, until it closes or `limit` passes. Closing a socket with unread
    /// input makes the kernel send a reset, which can destroy our `error` before the client reads it.
    pub async fn linger(&mut self, limit: Duration) {
        let mut scratch = [0u8; 4096];
        let _ = tokio::time::timeout(limit, async {
            while matches!(self.read.read(&mut scratch).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

pub struct ClientWriter {
    write: Sink,
    pub last_output: Instant,
    sent: Option<Arc<AtomicU64>>,
}

impl ClientWriter {
    pub fn new(write: ClientWrite) -> ClientWriter {
        ClientWriter { write: Sink::Stream(write), last_output: Instant::now(), sent: None }
    }

    /// A writer over a message-oriented transport: one message per `send`.
    pub fn messages(messages: ClientMessages) -> ClientWriter {
        ClientWriter { write: Sink::Messages(messages), last_output: Instant::now(), sent: None }
    }

    /// Adds every byte sent to `counter` (the metrics).
    pub fn count_into(mut self, counter: Arc<AtomicU64>) -> ClientWriter {
        self.sent = Some(counter);
        self
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if bytes.is_empty() {
            return Ok(());
        }
        match &mut self.write {
            Sink::Stream(write) => match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(bytes)).await {
                Ok(result) => result?,
                Err(_) => return Err(ClientError::WriteTimeout(WRITE_TIMEOUT)),
            },
            Sink::Messages(messages) => {
                let message = ClientMessage::Instructions(Bytes::copy_from_slice(bytes));
                match tokio::time::timeout(WRITE_TIMEOUT, messages.send(message)).await {
                    Ok(result) => result.map_err(|_| ClientError::Closed)?,
                    Err(_) => return Err(ClientError::WriteTimeout(WRITE_TIMEOUT)),
                }
            }
        }
        if let Some(counter) = &self.sent {
            counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        self.last_output = Instant::now();
        Ok(())
    }

    /// Sends `error` and closes our side, best effort (the client may already be gone).
    pub async fn fail(&mut self, message: &str, status: Status) {
        let mut out = BytesMut::new();
        guac_proto::encode_error(&mut out, message, status);
        let _ = self.send(&out).await;
        self.shutdown(status).await;
    }

    /// Sends `disconnect` and closes our side.
    pub async fn disconnect(&mut self) {
        let mut out = BytesMut::new();
        guac_proto::encode(&mut out, "disconnect").finish();
        let _ = self.send(&out).await;
        self.shutdown(Status::Success).await;
    }

    pub async fn close(&mut self) {
        self.shutdown(Status::Success).await;
    }

    /// Closes our side; a message transport also learns the status to report as the close reason.
    async fn shutdown(&mut self, status: Status) {
        match &mut self.write {
            Sink::Stream(write) => {
                let _ = write.shutdown().await;
            }
            Sink::Messages(messages) => {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, messages.send(ClientMessage::Close(status))).await;
            }
        }
    }
}
