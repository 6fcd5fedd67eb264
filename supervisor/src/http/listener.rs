//! The HTTP entry's listener. Each accepted connection's request head is read here first: a request for a
//! recording (`GET`/`HEAD /recordings/…`) is answered on the raw socket with `sendfile(2)`
//! ([`super::recordings::serve_raw`]), everything else goes to axum/hyper with the bytes already read put
//! back in front of the stream ([`Prefixed`]). hyper never lets go of a socket it serves, so this is the
//! only place where a recording can be sent without copying it through user space.
//!
//! Every response hyper sends carries `Connection: close` (see `super::router`), so each request arrives on
//! a fresh connection and passes through here; the page has a handful of small files, so the extra TCP
//! handshakes cost nothing worth keeping connections alive for.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::warn;

use super::{recordings, WebState};

/// Longest request head looked at; a longer one goes to hyper as it is (which refuses it).
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head before hyper gets the connection as it is.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections read and waiting for hyper's accept loop.
const HANDOFF_QUEUE: usize = 64;

/// Connections for `axum::serve`, after the head was looked at.
pub(crate) struct EntryListener {
    incoming: mpsc::Receiver<(Prefixed, SocketAddr)>,
    local: SocketAddr,
}

impl EntryListener {
    /// Starts accepting on `listener` (returns at once).
    pub(crate) fn start(listener: TcpListener, state: Arc<WebState>) -> io::Result<EntryListener> {
        let local = listener.local_addr()?;
        let (handoff, incoming) = mpsc::channel(HANDOFF_QUEUE);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        tokio::spawn(look_at_head(stream, peer, handoff.clone(), state.clone()));
                    }
                    Err(e) => {
                        // Out of descriptors or similar: retry shortly rather than spin.
                        warn!(error = %e, "HTTP entry cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(EntryListener { incoming, local })
    }
}

impl axum::serve::Listener for EntryListener {
    type Io = Prefixed;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Prefixed, SocketAddr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The accept task never ends while the runtime runs.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn look_at_head(
    mut stream: TcpStream,
    peer: SocketAddr,
    handoff: mpsc::Sender<(Prefixed, SocketAddr)>,
    state: Arc<WebState>,
) {
    let mut head = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    let complete = tokio::time::timeout(HEAD_TIMEOUT, async {
        while filled < MAX_HEAD {
            match stream.read(&mut head[filled..]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => filled += n,
            }
            if head[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    head.truncate(filled);
    if complete && recordings::is_recording_request(&head) {
        recordings::serve_raw(stream, &head, peer, &state).await;
        return;
    }
    let _ = handoff.send((Prefixed { prefix: Bytes::from(head), stream }, peer)).await;
}

/// A TCP stream whose first bytes were already read: they are read again first.
pub(crate) struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
