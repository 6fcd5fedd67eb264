//! The real worker binary against the real VNC servers of `scripts/peers.sh` (Xtigervnc and x11vnc on
//! 127.0.0.1). Each test fails, never skips, when its server is not running.

mod common;

use std::time::Duration;

use common::*;
use shm_proto::{FromWorker, ToWorker};

const EXIT_REPORTED: i32 = 2;

fn connect_params(peer: (&str, u16, &str), extra: &[(&'static str, &'static str)]) -> shm_proto::control::Params {
    let port = peer.1.to_string();
    let mut pairs = vec![("hostname", peer.0), ("port", port.as_str()), ("password", PASSWORD)];
    pairs.extend_from_slice(extra);
    params(&pairs)
}

/// Xtigervnc's static desktop, decoded with each encoding, equals what `xwd` reads from the X server.
#[tokio::test]
async fn tigervnc_pixels_match_xwd_with_every_encoding() {
    require_peer(STATIC);
    let expected = xwd_root(STATIC.2);
    for encodings in ["", "raw", "zrle", "tight", "copyrect tight", "zrle copyrect"] {
        let mut worker =
            Worker::start(connect_params(STATIC, &[("encodings", encodings), ("disable-display-resize", "true")]), 1024, 768)
                .await;
        let (width, height, name) = worker.connected().await;
        assert_eq!((width, height), (1024, 768));
        assert_eq!(name, "guacr-test-52");
        worker.settle(Duration::from_millis(800), 1, Duration::from_secs(15)).await;
        let bad = mismatches(&worker.screen, &expected);
        assert_eq!(bad, 0, "encodings {encodings:?}: {bad} pixels differ from xwd");
        // The Xtigervnc root cursor arrives as a cursor image (local cursor is the default).
        assert!(
            worker.messages.iter().any(|m| matches!(m, FromWorker::Cursor { width, height, bgra, .. }
                if *width > 0 && *height > 0 && bgra.len() == (*width * *height * 4) as usize)),
            "encodings {encodings:?}: no cursor image"
        );
        worker.send(ToWorker::Shutdown).await;
        assert!(worker.exit_status(Duration::from_secs(5)).await.success());
    }
}

/// Lossy Tight (JPEG) still shows the desktop, within JPEG's error.
#[tokio::test]
async fn tigervnc_tight_jpeg_is_close() {
    require_peer(STATIC);
    let expected = xwd_root(STATIC.2);
    let mut worker = Worker::start(
        connect_params(STATIC, &[("encodings", "tight"), ("quality-level", "9"), ("compress-level", "1")]),
        1024,
        768,
    )
    .await;
    worker.connected().await;
    worker.settle(Duration::from_millis(800), 1, Duration::from_secs(15)).await;
    let close = worker
        .screen
        .pixels
        .chunks_exact(4)
        .zip(expected.pixels.chunks_exact(4))
        .filter(|(a, b)| (0..3).all(|c| a[c].abs_diff(b[c]) <= 48))
        .count();
    let total = (expected.width * expected.height) as usize;
    assert!(close * 100 >= total * 98, "only {close} of {total} pixels are close");
}

/// x11vnc on Xvfb with a clock and `top`: frames keep coming, and the picture is the desktop.
#[tokio::test]
async fn x11vnc_changing_desktop_keeps_streaming() {
    require_peer(CHANGING);
    let mut worker = Worker::start(connect_params(CHANGING, &[]), 1024, 768).await;
    let (width, height, _) = worker.connected().await;
    assert_eq!((width, height), (1024, 768));
    worker.settle(Duration::from_millis(300), 1, Duration::from_secs(10)).await;
    let first = worker.frames;
    tokio::time::timeout(Duration::from_secs(4), async {
        while worker.frames < first + 3 {
            worker.next(Duration::from_secs(4)).await;
        }
    })
    .await
    .expect("the clock and top must produce frames");
    worker.settle(Duration::from_millis(200), 0, Duration::from_secs(2)).await;
    let expected = xwd_root(CHANGING.2);
    let bad = mismatches(&worker.screen, &expected);
    // The clock hand and top's numbers may move between our frame and xwd; the rest must match.
    assert!(bad < 1024 * 768 / 20, "{bad} pixels differ from xwd");
}

#[tokio::test]
async fn wrong_password_is_unauthorized() {
    require_peer(STATIC);
    let mut worker = Worker::start(params(&[("hostname", "127.0.0.1"), ("port", "5902"), ("password", "wrongpw1")]), 1024, 768).await;
    match worker.next(Duration::from_secs(20)).await {
        Some(FromWorker::Failed { status, message }) => {
            assert_eq!(status, 769, "{message}");
        }
        other => panic!("expected Failed 769, got {other:?}"),
    }
    assert_eq!(worker.exit_status(Duration::from_secs(5)).await.code(), Some(EXIT_REPORTED));
}

#[tokio::test]
async fn missing_password_is_unauthorized() {
    require_peer(STATIC);
    let mut worker = Worker::start(params(&[("hostname", "127.0.0.1"), ("port", "5902")]), 1024, 768).await;
    assert!(matches!(worker.next(Duration::from_secs(20)).await, Some(FromWorker::Failed { status: 769, .. })));
}

#[tokio::test]
async fn closed_port_and_unknown_host_are_not_found() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let port = port.to_string();
    for host in ["127.0.0.1", "no-such-host.invalid"] {
        let mut worker = Worker::start(params(&[("hostname", host), ("port", &port)]), 1024, 768).await;
        match worker.next(Duration::from_secs(20)).await {
            Some(FromWorker::Failed { status, message }) => assert_eq!(status, 519, "{host}: {message}"),
            other => panic!("{host}: expected Failed 519, got {other:?}"),
        }
        assert_eq!(worker.exit_status(Duration::from_secs(5)).await.code(), Some(EXIT_REPORTED));
    }
}

#[tokio::test]
async fn autoretry_keeps_trying_then_fails() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port().to_string()
    };
    let started = std::time::Instant::now();
    let mut worker = Worker::start(params(&[("hostname", "127.0.0.1"), ("port", &port), ("autoretry", "2")]), 1024, 768).await;
    // Heartbeat probes are answered while the worker waits between attempts.
    worker.send(ToWorker::Heartbeat).await;
    let heartbeat = tokio::time::timeout(Duration::from_secs(2), worker.control.recv::<FromWorker>()).await;
    assert!(matches!(heartbeat, Ok(Ok(Some(FromWorker::Heartbeat)))), "{heartbeat:?}");
    assert!(matches!(worker.next(Duration::from_secs(20)).await, Some(FromWorker::Failed { status: 519, .. })));
    assert!(started.elapsed() >= Duration::from_secs(2), "two retries, 1 s apart");
}

/// Typing reaches the shell in the xterm on :53: the command it runs leaves a file behind.
#[tokio::test]
async fn typing_runs_a_command_on_the_server() {
    require_peer(TYPING);
    let path = format!("/tmp/guacr-vnc-typed-{}", std::process::id());
    let _ = std::fs::remove_file(&path);
    let mut worker = Worker::start(connect_params(TYPING, &[("disable-display-resize", "true")]), 1024, 768).await;
    worker.connected().await;
    worker.settle(Duration::from_millis(300), 1, Duration::from_secs(10)).await;
    worker.send(ToWorker::Mouse { x: 200, y: 150, mask: 0 }).await;
    let command = format!("echo guacr-typed > {path}");
    for c in command.chars() {
        for pressed in [true, false] {
            worker.send(ToWorker::Key { keysym: c as u32, pressed }).await;
        }
    }
    for pressed in [true, false] {
        worker.send(ToWorker::Key { keysym: 0xff0d, pressed }).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            assert_eq!(text, "guacr-typed\n");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "typed command never ran");
        worker.next(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(&path);
    // The echo is visible: frames arrived after typing.
    worker.settle(Duration::from_millis(300), 1, Duration::from_secs(5)).await;
}

/// With read-only set, typing never reaches the server.
#[tokio::test]
async fn read_only_drops_input() {
    require_peer(TYPING);
    let path = format!("/tmp/guacr-vnc-readonly-{}", std::process::id());
    let _ = std::fs::remove_file(&path);
    let mut worker = Worker::start(connect_params(TYPING, &[("read-only", "true")]), 800, 600).await;
    let (width, height, _) = worker.connected().await;
    worker.settle(Duration::from_millis(300), 1, Duration::from_secs(10)).await;
    worker.send(ToWorker::Mouse { x: 200, y: 150, mask: 0 }).await;
    for c in format!("echo x > {path}").chars().chain(['\r']) {
        let keysym = if c == '\r' { 0xff0d } else { c as u32 };
        worker.send(ToWorker::Key { keysym, pressed: true }).await;
        worker.send(ToWorker::Key { keysym, pressed: false }).await;
    }
    worker.settle(Duration::from_millis(1000), 0, Duration::from_secs(3)).await;
    assert!(!std::path::Path::new(&path).exists(), "read-only input reached the server");
    // And a read-only session never resizes the shared desktop.
    assert_eq!((worker.screen.width, worker.screen.height), (width, height));
}

/// Clipboard both ways through Xtigervnc: one session pastes, another session receives the server's
/// clipboard announcement.
#[tokio::test]
async fn clipboard_crosses_the_server() {
    require_peer(TYPING);
    let text = format!("guacr clipboard é {}", std::process::id());
    let mut receiver = Worker::start(connect_params(TYPING, &[("disable-display-resize", "true")]), 1024, 768).await;
    receiver.connected().await;
    receiver.settle(Duration::from_millis(300), 1, Duration::from_secs(10)).await;
    let mut sender = Worker::start(connect_params(TYPING, &[("disable-display-resize", "true")]), 1024, 768).await;
    sender.connected().await;
    sender.send(ToWorker::Clipboard { mimetype: "text/plain".into(), data: text.as_bytes().to_vec(), last: true }).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(std::time::Instant::now() < deadline, "clipboard never arrived; got {:?}", receiver.messages);
        tokio::select! {
            Some(FromWorker::Clipboard { data, last, mimetype }) = receiver.next(Duration::from_millis(200)) => {
                assert_eq!(mimetype, "text/plain");
                if last && data == text.as_bytes() {
                    break;
                }
            }
            _ = sender.next(Duration::from_millis(200)) => {}
        }
    }
}
