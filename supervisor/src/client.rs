//! The client side of a connection: instruction decoding from the socket, and the bounded output queue
//! with its writer task.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use guac_proto::{DecodeError, Decoder, Instruction, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

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
    #[error("client fell {0} bytes behind its output")]
    Overflow(usize),
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

/// A client that does not take any of our output for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// The output queue's cap until the session sets the configured one.
pub const DEFAULT_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Most buffers handed to one vectored write.
const MAX_IOV: usize = 64;

/// What the session hands to its writer task, in order.
enum Out {
    /// Whole instructions.
    Data(Bytes),
    /// Close our side after everything before it; a message transport reports the status.
    Close(Status),
}

/// The queue's accounting, shared by the session (which fills it) and the writer task (which drains it).
struct QueueState {
    /// Bytes handed to the queue and not yet written to the transport.
    queued: AtomicUsize,
    /// Above this many queued bytes the session takes no new frames from its worker.
    cap: AtomicUsize,
    /// Woken when the queue drops below its cap again.
    drained: Notify,
    /// Size of the latest frame queued: the session queues a frame only while under the cap, so the queue
    /// holds at most the cap, that frame, and control output.
    last_frame: AtomicUsize,
}

impl QueueState {
    fn written(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::AcqRel);
        let cap = self.cap.load(Ordering::Relaxed);
        if before >= cap && before - n < cap {
            self.drained.notify_one();
        }
    }
}

/// A waiter for the output queue to drop below its cap, cloned out of the writer so that a `select!`
/// can wait on it next to other uses of the writer.
#[derive(Clone)]
pub struct QueueRoom(Arc<QueueState>);

impl QueueRoom {
    /// Completes once the queue has dropped below its cap (possibly spuriously: check again).
    pub async fn drained(&self) {
        self.0.drained.notified().await
    }
}

/// The client's output: a bounded, ordered queue of whole-instruction buffers in front of a writer task
/// that owns the transport. `send` never waits for the client; the session asks [`ClientWriter::over_cap`]
/// before it takes another frame from its worker (the worker coalesces meanwhile), and a client that takes
/// nothing for [`WRITE_TIMEOUT`] makes the writer task fail ([`ClientWriter::failed`]).
pub struct ClientWriter {
    /// The transport until the writer task takes it (on the first send).
    sink: Option<Sink>,
    queue: Option<mpsc::UnboundedSender<Out>>,
    task: Option<JoinHandle<()>>,
    failure: Option<oneshot::Receiver<ClientError>>,
    state: Arc<QueueState>,
    /// When output was last handed to the queue (the keep-alive clock).
    pub last_output: Instant,
    sent: Option<Arc<AtomicU64>>,
}

impl ClientWriter {
    pub fn new(write: ClientWrite) -> ClientWriter {
        ClientWriter::with_sink(Sink::Stream(write))
    }

    /// A writer over a message-oriented transport: each queued buffer (whole instructions) becomes one
    /// message.
    pub fn messages(messages: ClientMessages) -> ClientWriter {
        ClientWriter::with_sink(Sink::Messages(messages))
    }

    fn with_sink(sink: Sink) -> ClientWriter {
        ClientWriter {
            sink: Some(sink),
            queue: None,
            task: None,
            failure: None,
            state: Arc::new(QueueState {
                queued: AtomicUsize::new(0),
                cap: AtomicUsize::new(DEFAULT_QUEUE_BYTES),
                drained: Notify::new(),
                last_frame: AtomicUsize::new(0),
            }),
            last_output: Instant::now(),
            sent: None,
        }
    }

    /// Adds every byte sent to `counter` (the metrics).
    pub fn count_into(mut self, counter: Arc<AtomicU64>) -> ClientWriter {
        self.sent = Some(counter);
        self
    }

    /// Sets the output queue's cap in bytes (`--client-queue-bytes`).
    pub fn set_queue_cap(&mut self, bytes: usize) {
        self.state.cap.store(bytes.max(1), Ordering::Relaxed);
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.state.queued.load(Ordering::Acquire)
    }

    /// True while the queue holds at least its cap: the session takes no new frame until it drains.
    pub fn over_cap(&self) -> bool {
        self.queued() >= self.state.cap.load(Ordering::Relaxed)
    }

    /// Something to wait on for the queue to drop below its cap.
    pub fn room(&self) -> QueueRoom {
        QueueRoom(self.state.clone())
    }

    /// Queues whole instructions (control output: `ready`, `nop`, `ack`, `name`, cursor, clipboard,
    /// `error`). Never waits for the client. Refused, which ends the session, only when control output
    /// alone would hold more than the cap: more than twice the cap plus the latest frame is queued.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send_bytes(Bytes::copy_from_slice(bytes))
    }

    /// [`ClientWriter::send`] without a copy.
    pub fn send_bytes(&mut self, bytes: Bytes) -> Result<(), ClientError> {
        let cap = self.state.cap.load(Ordering::Relaxed);
        let allowed = cap.saturating_mul(2).saturating_add(self.state.last_frame.load(Ordering::Relaxed));
        if self.queued() > allowed {
            return Err(ClientError::Overflow(self.queued()));
        }
        self.enqueue(bytes)
    }

    /// Queues one frame's instructions. The session calls this only when [`ClientWriter::over_cap`] was
    /// false as it took the frame, which is what bounds the queue.
    pub fn send_frame(&mut self, bytes: Bytes) -> Result<(), ClientError> {
        self.state.last_frame.store(bytes.len(), Ordering::Relaxed);
        self.enqueue(bytes)
    }

    fn enqueue(&mut self, bytes: Bytes) -> Result<(), ClientError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let state = self.state.clone();
        let queue = self.start()?;
        let len = bytes.len();
        state.queued.fetch_add(len, Ordering::AcqRel);
        if queue.send(Out::Data(bytes)).is_err() {
            state.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(ClientError::Closed);
        }
        self.last_output = Instant::now();
        Ok(())
    }

    /// The queue's sender, starting the writer task on first use.
    fn start(&mut self) -> Result<&mpsc::UnboundedSender<Out>, ClientError> {
        if let Some(sink) = self.sink.take() {
            let (queue, outgoing) = mpsc::unbounded_channel();
            let (report, failure) = oneshot::channel();
            let state = self.state.clone();
            let sent = self.sent.clone();
            let task = async move {
                let result = match sink {
                    Sink::Stream(write) => write_stream(write, outgoing, &state, sent.as_deref()).await,
                    Sink::Messages(messages) => write_messages(messages, outgoing, &state, sent.as_deref()).await,
                };
                if let Err(e) = result {
                    let _ = report.send(e);
                }
            };
            self.task = Some(tokio::spawn(task.in_current_span()));
            self.queue = Some(queue);
            self.failure = Some(failure);
        }
        self.queue.as_ref().ok_or(ClientError::Closed)
    }

    /// Completes when the writer task has failed (the client stalled or went away); pending otherwise.
    /// Cancel-safe.
    pub async fn failed(&mut self) -> ClientError {
        if let Some(failure) = self.failure.as_mut() {
            let result = failure.await;
            self.failure = None;
            if let Ok(e) = result {
                return e;
            }
        }
        std::future::pending().await
    }

    /// Sends `error` and closes our side, best effort (the client may already be gone).
    pub async fn fail(&mut self, message: &str, status: Status) {
        let mut out = BytesMut::new();
        guac_proto::encode_error(&mut out, message, status);
        let _ = self.send_bytes(out.freeze());
        self.shutdown(status).await;
    }

    /// Sends `disconnect` and closes our side.
    pub async fn disconnect(&mut self) {
        let mut out = BytesMut::new();
        guac_proto::encode(&mut out, "disconnect").finish();
        let _ = self.send_bytes(out.freeze());
        self.shutdown(Status::Success).await;
    }

    pub async fn close(&mut self) {
        self.shutdown(Status::Success).await;
    }

    /// Closes our side once everything queued is written (a message transport also learns the status to
    /// report as the close reason), waiting at most [`WRITE_TIMEOUT`] for the client to take it.
    async fn shutdown(&mut self, status: Status) {
        if self.start().is_ok() {
            if let Some(queue) = self.queue.take() {
                let _ = queue.send(Out::Close(status));
            }
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(WRITE_TIMEOUT, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

/// The writer task of a byte stream: vectored writes of whatever is queued, in order.
async fn write_stream(
    mut write: ClientWrite,
    mut outgoing: mpsc::UnboundedReceiver<Out>,
    state: &QueueState,
    sent: Option<&AtomicU64>,
) -> Result<(), ClientError> {
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    let mut closing = false;
    loop {
        while !closing && batch.len() < MAX_IOV {
            let next = if batch.is_empty() {
                outgoing.recv().await
            } else {
                match outgoing.try_recv() {
                    Ok(out) => Some(out),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            match next {
                Some(Out::Data(bytes)) => batch.push_back(bytes),
                Some(Out::Close(_)) | None => closing = true,
            }
        }
        if batch.is_empty() {
            break;
        }
        // The queued buffers themselves go to the kernel (no copy, no allocation per write).
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        for (slice, bytes) in slices.iter_mut().zip(&batch) {
            *slice = IoSlice::new(bytes);
        }
        let slices = &slices[..batch.len().min(MAX_IOV)];
        let n = match tokio::time::timeout(WRITE_TIMEOUT, write.write_vectored(slices)).await {
            Ok(Ok(0)) => return Err(ClientError::Closed),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(ClientError::WriteTimeout(WRITE_TIMEOUT)),
        };
        let mut left = n;
        while left > 0 {
            let Some(front) = batch.front_mut() else { break };
            if front.len() <= left {
                left -= front.len();
                batch.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
        state.written(n);
        if let Some(counter) = sent {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    match tokio::time::timeout(WRITE_TIMEOUT, write.shutdown()).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClientError::WriteTimeout(WRITE_TIMEOUT)),
    }
}

/// The writer task of a message transport: one message per queued buffer.
async fn write_messages(
    messages: ClientMessages,
    mut outgoing: mpsc::UnboundedReceiver<Out>,
    state: &QueueState,
    sent: Option<&AtomicU64>,
) -> Result<(), ClientError> {
    while let Some(out) = outgoing.recv().await {
        let (message, len) = match out {
            Out::Data(bytes) => {
                let len = bytes.len();
                (ClientMessage::Instructions(bytes), len)
            }
            Out::Close(status) => (ClientMessage::Close(status), 0),
        };
        let closing = len == 0;
        match tokio::time::timeout(WRITE_TIMEOUT, messages.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => return Err(ClientError::WriteTimeout(WRITE_TIMEOUT)),
        }
        if closing {
            break;
        }
        state.written(len);
        if let Some(counter) = sent {
            counter.fetch_add(len as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_exactly(read: &mut (impl AsyncRead + Unpin), n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), read.read_exact(&mut buf)).await.unwrap().unwrap();
        buf
    }

    #[tokio::test]
    async fn queued_output_arrives_in_order_and_drains_below_the_cap() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut writer = ClientWriter::new(Box::new(ours));
        writer.set_queue_cap(100);
        let room = writer.room();
        let mut expected = Vec::new();
        for i in 0..40u8 {
            let chunk = vec![b'a' + i % 26; 25];
            expected.extend_from_slice(&chunk);
            writer.send_frame(Bytes::from(chunk)).unwrap();
        }
        assert!(writer.over_cap(), "1000 bytes queued against a cap of 100, the client reading nothing");
        assert_eq!(read_exactly(&mut theirs, expected.len()).await, expected);
        tokio::time::timeout(Duration::from_secs(5), room.drained()).await.unwrap();
        assert!(!writer.over_cap());
        writer.disconnect().await;
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"10.disconnect;");
        assert_eq!(writer.queued(), 0);
    }

    #[tokio::test]
    async fn control_output_beyond_the_cap_again_is_refused() {
        let (ours, _theirs) = tokio::io::duplex(1);
        let mut writer = ClientWriter::new(Box::new(ours));
        writer.set_queue_cap(10);
        writer.send(&[b'x'; 25]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(writer.send(b"3.nop;").await, Err(ClientError::Overflow(_))));
        // A frame queued while under the cap raises the allowance by its size.
        let (ours, _theirs) = tokio::io::duplex(1);
        let mut writer = ClientWriter::new(Box::new(ours));
        writer.set_queue_cap(10);
        writer.send_frame(Bytes::from(vec![b'x'; 25])).unwrap();
        writer.send(b"3.nop;").await.unwrap();
    }

    #[tokio::test]
    async fn a_message_transport_gets_one_message_per_buffer_then_the_close() {
        let (messages, mut received) = mpsc::channel(8);
        let mut writer = ClientWriter::messages(messages);
        writer.send(b"4.name,1.x;").await.unwrap();
        writer.send_frame(Bytes::from_static(b"4.sync,1.1,1.1;")).unwrap();
        writer.fail("gone", Status::UpstreamError).await;
        let mut got = Vec::new();
        while let Some(message) = received.recv().await {
            got.push(message);
        }
        assert!(matches!(&got[0], ClientMessage::Instructions(b) if &b[..] == b"4.name,1.x;"));
        assert!(matches!(&got[1], ClientMessage::Instructions(b) if &b[..] == b"4.sync,1.1,1.1;"));
        assert!(matches!(&got[2], ClientMessage::Instructions(b) if b.starts_with(b"5.error,4.gone,")));
        assert!(matches!(got[3], ClientMessage::Close(Status::UpstreamError)));
        assert_eq!(got.len(), 4);
    }
}
