//! The real worker binary against a scripted RFB server inside the test: server-side closure, hostile
//! data, backpressure, and the exact bytes our input turns into. Needs no test peers.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use shm_proto::control::{CLIPBOARD_CHUNK, MAX_CURSOR_SIDE};
use shm_proto::{FromWorker, ToWorker};

const EXIT_REPORTED: i32 = 2;

/// One accepted client, after a 3.8 handshake with security None.
struct FakeServer {
    port: u16,
    stream: Arc<Mutex<Option<TcpStream>>>,
    /// Everything the client sent after ClientInit.
    received: Arc<Mutex<Vec<u8>>>,
}

fn server_init(w: u16, h: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&w.to_be_bytes());
    b.extend_from_slice(&h.to_be_bytes());
    b.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    b.extend_from_slice(&4u32.to_be_bytes());
    b.extend_from_slice(b"fake");
    b
}

impl FakeServer {
    fn start(init: Vec<u8>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = Arc::new(Mutex::new(None));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (slot, sink) = (stream.clone(), received.clone());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 12];
            s.write_all(b"RFB 003.008\n").unwrap();
            s.read_exact(&mut buf).unwrap();
            s.write_all(&[1, 1]).unwrap();
            s.read_exact(&mut buf[..1]).unwrap();
            s.write_all(&[0, 0, 0, 0]).unwrap();
            s.read_exact(&mut buf[..1]).unwrap();
            s.write_all(&init).unwrap();
            let mut reader = s.try_clone().unwrap();
            *slot.lock().unwrap() = Some(s);
            let mut chunk = [0u8; 4096];
            while let Ok(n) = reader.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        FakeServer { port, stream, received }
    }

    fn params(&self, extra: &[(&str, &str)]) -> shm_proto::control::Params {
        let port = self.port.to_string();
        let mut pairs = vec![("hostname", "127.0.0.1"), ("port", port.as_str())];
        pairs.extend_from_slice(extra);
        params(&pairs)
    }

    fn send(&self, bytes: &[u8]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = self.stream.lock().unwrap().as_mut() {
                s.write_all(bytes).unwrap();
                return;
            }
            assert!(std::time::Instant::now() < deadline, "client never finished the handshake");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn close(&self) {
        if let Some(s) = self.stream.lock().unwrap().take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Waits until the client has sent bytes containing `needle`.
    async fn expect_received(&self, needle: &[u8]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !self.received.lock().unwrap().windows(needle.len()).any(|w| w == needle) {
            assert!(std::time::Instant::now() < deadline, "client never sent {needle:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A FramebufferUpdate with one Raw rectangle of one colour (BGRX).
fn raw_update(x: u16, y: u16, w: u16, h: u16, bgrx: [u8; 4]) -> Vec<u8> {
    let mut b = vec![0, 0, 0, 1];
    for v in [x, y, w, h] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(&0i32.to_be_bytes());
    for _ in 0..(w as usize * h as usize) {
        b.extend_from_slice(&bgrx);
    }
    b
}

fn cut_text(bytes: &[u8]) -> Vec<u8> {
    let mut b = vec![3, 0, 0, 0];
    b.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    b.extend_from_slice(bytes);
    b
}

#[tokio::test]
async fn server_closing_ends_the_session_cleanly() {
    let server = FakeServer::start(server_init(64, 48));
    let mut worker = Worker::start(server.params(&[]), 64, 48).await;
    assert_eq!(worker.connected().await, (64, 48, "fake".into()));
    server.send(&raw_update(0, 0, 64, 48, [1, 2, 3, 0]));
    worker.settle(Duration::from_millis(200), 1, Duration::from_secs(5)).await;
    assert_eq!(worker.screen.rgb(63, 47), [3, 2, 1]);
    server.close();
    match worker.next(Duration::from_secs(5)).await {
        Some(FromWorker::Closed { message }) => assert!(message.contains("closed"), "{message}"),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(worker.exit_status(Duration::from_secs(5)).await.success());
}

/// While the supervisor holds a frame, updates accumulate; releasing it publishes all of them at once.
#[tokio::test]
async fn unreleased_frames_accumulate_damage() {
    let server = FakeServer::start(server_init(64, 48));
    let mut worker = Worker::start(server.params(&[]), 64, 48).await;
    worker.connected().await;
    server.send(&raw_update(0, 0, 64, 48, [0, 0, 0, 0]));
    let seq = loop {
        match worker.control.recv::<FromWorker>().await.unwrap().unwrap() {
            FromWorker::Published { seq } => break seq,
            _ => continue,
        }
    };
    let first = worker.reader.acquire().unwrap().unwrap();
    assert_eq!(first.seq, seq);
    // Held: three more updates, no new frame.
    server.send(&raw_update(0, 0, 8, 8, [255, 0, 0, 0]));
    server.send(&raw_update(10, 10, 8, 8, [0, 255, 0, 0]));
    server.send(&raw_update(20, 20, 8, 8, [0, 0, 255, 0]));
    let quiet = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Some(FromWorker::Published { seq }) = worker.control.recv::<FromWorker>().await.unwrap() {
                return seq;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "published while the front was held: {quiet:?}");
    worker.reader.release(first);
    worker.send(ToWorker::Consumed { seq }).await;
    let next = loop {
        if let Some(FromWorker::Published { seq }) = worker.control.recv::<FromWorker>().await.unwrap() {
            break seq;
        }
    };
    assert_eq!(next, seq + 1, "one frame carries all three updates");
    let frame = worker.reader.acquire().unwrap().unwrap();
    assert_eq!(frame.ops.len(), 3, "{:?}", frame.ops);
    let mut px = Vec::new();
    for (x, y, expect) in [(0, 0, [255, 0, 0]), (10, 10, [0, 255, 0]), (27, 27, [0, 0, 255])] {
        worker.reader.read_rect(&frame, shm_proto::Rect::new(x, y, 1, 1), &mut px);
        assert_eq!(&px[..3], &expect);
    }
}

#[tokio::test]
async fn oversized_framebuffer_is_refused() {
    let server = FakeServer::start(server_init(5000, 100));
    let mut worker = Worker::start(server.params(&[]), 1024, 768).await;
    match worker.next(Duration::from_secs(10)).await {
        Some(FromWorker::Failed { status, message }) => {
            assert_eq!(status, 515);
            assert!(message.contains("5000x100"), "{message}");
        }
        other => panic!("expected Failed 515, got {other:?}"),
    }
    assert_eq!(worker.exit_status(Duration::from_secs(5)).await.code(), Some(EXIT_REPORTED));
}

#[tokio::test]
async fn hostile_data_after_connect_is_a_protocol_error() {
    let hostile: [&[u8]; 4] = [
        &[99],
        // Raw rectangle far outside the 64x48 framebuffer.
        &[0, 0, 0, 1, 0xff, 0, 0xff, 0, 0, 10, 0, 10, 0, 0, 0, 0],
        // ZRLE rectangle claiming 4 GiB of data.
        &[0, 0, 0, 1, 0, 0, 0, 0, 0, 8, 0, 8, 0, 0, 0, 16, 0xff, 0xff, 0xff, 0xff],
        // DesktopSize beyond the surface.
        &[0, 0, 0, 1, 0, 0, 0, 0, 0x7f, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0x21],
    ];
    for bytes in hostile {
        let server = FakeServer::start(server_init(64, 48));
        let mut worker = Worker::start(server.params(&[]), 64, 48).await;
        worker.connected().await;
        server.send(bytes);
        match worker.next(Duration::from_secs(5)).await {
            Some(FromWorker::Failed { status: 515, message }) => assert!(message.starts_with("VNC: "), "{message}"),
            other => panic!("{bytes:?}: expected Failed 515, got {other:?}"),
        }
        assert_eq!(worker.exit_status(Duration::from_secs(5)).await.code(), Some(EXIT_REPORTED));
    }
}

/// Input before Start and during the handshake is dropped; afterwards it turns into exact RFB bytes.
#[tokio::test]
async fn input_is_forwarded_as_rfb_messages() {
    let server = FakeServer::start(server_init(64, 48));
    let mut worker = Worker::start_without_start().await;
    // Before Start: dropped, never a crash.
    worker.send(ToWorker::Key { keysym: 0x61, pressed: true }).await;
    worker.send(ToWorker::Mouse { x: 1, y: 1, mask: 1 }).await;
    worker.send(ToWorker::Consumed { seq: 7 }).await;
    worker.send(ToWorker::Heartbeat).await;
    worker
        .send(ToWorker::Start {
            session_id: "$test".into(),
            params: server.params(&[("clipboard-encoding", "ISO8859-1")]),
            width: 64,
            height: 48,
            dpi: 96,
            audio_mimetypes: Vec::new(),
        })
        .await;
    worker.send(ToWorker::Key { keysym: 0x62, pressed: true }).await;
    worker.connected().await;
    worker.send(ToWorker::Key { keysym: 0xff0d, pressed: true }).await;
    worker.send(ToWorker::Mouse { x: 500, y: -3, mask: 4 }).await;
    worker.send(ToWorker::Clipboard { mimetype: "text/plain".into(), data: "caf".into(), last: false }).await;
    worker.send(ToWorker::Clipboard { mimetype: "text/plain".into(), data: "é".into(), last: true }).await;
    server.expect_received(&[4, 1, 0, 0, 0, 0, 0xff, 0x0d]).await;
    server.expect_received(&[5, 4, 0, 63, 0, 0]).await;
    server.expect_received(&[6, 0, 0, 0, 0, 0, 0, 4, b'c', b'a', b'f', 0xe9]).await;
    let received = server.received.lock().unwrap().clone();
    assert!(!received.windows(8).any(|w| w == [4, 1, 0, 0, 0, 0, 0, 0x61]), "input before Start leaked");
    assert!(!received.windows(8).any(|w| w == [4, 1, 0, 0, 0, 0, 0, 0x62]), "input before connect leaked");
    // Read-only and disable-paste drop input.
    let quiet = FakeServer::start(server_init(64, 48));
    let mut ro = Worker::start(quiet.params(&[("read-only", "true")]), 64, 48).await;
    ro.connected().await;
    ro.send(ToWorker::Key { keysym: 0x63, pressed: true }).await;
    ro.send(ToWorker::Clipboard { mimetype: "text/plain".into(), data: b"secret".to_vec(), last: true }).await;
    ro.send(ToWorker::Heartbeat).await;
    ro.settle(Duration::from_millis(300), 0, Duration::from_secs(1)).await;
    let received = quiet.received.lock().unwrap().clone();
    assert!(!received.windows(4).any(|w| w == [4, 1, 0, 0]), "read-only key leaked");
    assert!(!received.windows(6).any(|w| w == b"secret"), "read-only paste leaked");
}

#[tokio::test]
async fn cursor_images_are_forwarded_when_small() {
    let server = FakeServer::start(server_init(64, 48));
    let mut worker = Worker::start(server.params(&[]), 64, 48).await;
    worker.connected().await;
    let cursor = |w: u16, h: u16, hot: (u16, u16)| {
        let mut b = vec![0, 0, 0, 1];
        for v in [hot.0, hot.1, w, h] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&(-239i32).to_be_bytes());
        for i in 0..(w as usize * h as usize) {
            b.extend_from_slice(&[i as u8, 0x10, 0x20, 0]);
        }
        let row = (w as usize).div_ceil(8);
        for _ in 0..h {
            b.extend(std::iter::repeat_n(0xaa, row));
        }
        b
    };
    server.send(&cursor(4, 2, (1, 1)));
    match worker.next(Duration::from_secs(5)).await {
        Some(FromWorker::Cursor { hotspot_x: 1, hotspot_y: 1, width: 4, height: 2, bgra }) => {
            assert_eq!(&bgra[..8], &[0, 0x10, 0x20, 0xff, 0, 0, 0, 0]);
        }
        other => panic!("expected the cursor, got {other:?}"),
    }
    let big = MAX_CURSOR_SIDE as u16 + 1;
    server.send(&cursor(big, 2, (0, 0)));
    server.send(&cursor(2, 2, (0, 0)));
    match worker.next(Duration::from_secs(5)).await {
        Some(FromWorker::Cursor { width: 2, .. }) => {}
        other => panic!("the oversized cursor must be skipped, got {other:?}"),
    }
}

#[tokio::test]
async fn server_clipboard_is_converted_chunked_and_bounded() {
    let server = FakeServer::start(server_init(64, 48));
    let mut worker = Worker::start(server.params(&[]), 64, 48).await;
    worker.connected().await;
    server.send(&cut_text(b"caf\xe9"));
    match worker.next(Duration::from_secs(5)).await {
        Some(FromWorker::Clipboard { mimetype, data, last: true }) => {
            assert_eq!(mimetype, "text/plain");
            assert_eq!(String::from_utf8(data).unwrap(), "café");
        }
        other => panic!("expected the clipboard, got {other:?}"),
    }
    // 300 KiB of text: cut to the default 256 KiB buffer, in CLIPBOARD_CHUNK pieces.
    let big = vec![b'x'; 300 * 1024];
    server.send(&cut_text(&big));
    server.send(&cut_text(b"after"));
    let mut total = 0;
    let mut chunks = 0;
    loop {
        match worker.next(Duration::from_secs(5)).await {
            Some(FromWorker::Clipboard { data, last, .. }) => {
                assert!(data.len() <= CLIPBOARD_CHUNK);
                total += data.len();
                chunks += 1;
                if last {
                    break;
                }
            }
            other => panic!("expected clipboard chunks, got {other:?}"),
        }
    }
    assert_eq!(total, 256 * 1024);
    assert_eq!(chunks, 256 * 1024 / CLIPBOARD_CHUNK);
    assert!(
        matches!(worker.next(Duration::from_secs(5)).await, Some(FromWorker::Clipboard { data, .. }) if data == b"after"),
        "the stream stays in sync after a truncated cut text"
    );
    // disable-copy: nothing at all.
    let quiet = FakeServer::start(server_init(64, 48));
    let mut blocked = Worker::start(quiet.params(&[("disable-copy", "true")]), 64, 48).await;
    blocked.connected().await;
    quiet.send(&cut_text(b"hidden"));
    quiet.send(&raw_update(0, 0, 1, 1, [9, 9, 9, 0]));
    blocked.settle(Duration::from_millis(300), 1, Duration::from_secs(5)).await;
    assert!(!blocked.messages.iter().any(|m| matches!(m, FromWorker::Clipboard { .. })));
}

#[tokio::test]
async fn unsupported_parameters_are_reported_once_each() {
    let server = FakeServer::start(server_init(64, 48));
    let mut worker = Worker::start(
        server.params(&[
            ("enable-sftp", "true"),
            ("sftp-hostname", "h"),
            ("wol-send-packet", "true"),
            ("color-depth", "8"),
            ("recording-path", "/tmp/r"),
            ("enable-audio", "false"),
            ("disable-server-input", "true"),
        ]),
        64,
        48,
    )
    .await;
    worker.connected().await;
    let mut reported: Vec<String> = worker
        .messages
        .iter()
        .filter_map(|m| match m {
            FromWorker::Unsupported { parameter } => Some(parameter.clone()),
            _ => None,
        })
        .collect();
    reported.sort();
    assert_eq!(
        reported,
        ["color-depth", "disable-server-input", "enable-sftp", "recording-path", "sftp-hostname", "wol-send-packet"]
    );
}

#[tokio::test]
async fn shutdown_and_a_vanished_supervisor_end_the_worker() {
    let server = FakeServer::start(server_init(64, 48));
    let mut worker = Worker::start(server.params(&[]), 64, 48).await;
    worker.connected().await;
    worker.send(ToWorker::Heartbeat).await;
    worker.send(ToWorker::Shutdown).await;
    assert!(worker.exit_status(Duration::from_secs(5)).await.success());

    let server = FakeServer::start(server_init(64, 48));
    let mut worker = Worker::start(server.params(&[]), 64, 48).await;
    worker.connected().await;
    let (mut child, control) = worker.into_parts();
    drop(control);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.code().is_some(), "exited, not killed: {status:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "worker outlived its control channel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
