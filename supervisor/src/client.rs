//! The client side of a connection: instruction decoding from the socket and timed writes.

use std::time::Duration;

use bytes::BytesMut;
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

pub struct ClientReader {
    read: ClientRead,
    decoder: Decoder,
    pub last_input: Instant,
}

impl ClientReader {
    pub fn new(read: ClientRead) -> ClientReader {
        ClientReader { read, decoder: Decoder::new(), last_input: Instant::now() }
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
            if self.read.read_buf(buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}

pub struct ClientWriter {
    write: ClientWrite,
    pub last_output: Instant,
}

impl ClientWriter {
    pub fn new(write: ClientWrite) -> ClientWriter {
        ClientWriter { write, last_output: Instant::now() }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if bytes.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.write.write_all(bytes)).await {
            Ok(result) => result?,
            Err(_) => return Err(ClientError::WriteTimeout(WRITE_TIMEOUT)),
        }
        self.last_output = Instant::now();
        Ok(())
    }

    /// Sends `error` and closes our side, best effort (the client may already be gone).
    pub async fn fail(&mut self, message: &str, status: Status) {
        let mut out = BytesMut::new();
        guac_proto::encode_error(&mut out, message, status);
        let _ = self.send(&out).await;
        let _ = self.write.shutdown().await;
    }

    /// Sends `disconnect` and closes our side.
    pub async fn disconnect(&mut self) {
        let mut out = BytesMut::new();
        guac_proto::encode(&mut out, "disconnect").finish();
        let _ = self.send(&out).await;
        let _ = self.write.shutdown().await;
    }

    pub async fn close(&mut self) {
        let _ = self.write.shutdown().await;
    }
}
