//! Session sharing end to end against the real VNC peers: a second client joins a live session with
//! `select $<connection id>` (guacd's semantics), gets the screen at once, read-only joiners' input is
//! dropped, the owner is told who joined and left, and a joiner that stops reading does not slow the owner.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use guac_proto::Decoder;
use guacr_tests::peers::{self, VncPeer};
use guacr_tests::{artifact_dir, compare, x11_screenshot, GuacClient, GuacrProcess, HandshakeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;

/// Tests that type into the one xterm on the typing display take turns (within this binary).
static TYPING_XTERM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn owner(guacr: &GuacrProcess, peer: &VncPeer) -> (GuacClient, String) {
    peer.require_up();
    let mut client = GuacClient::connect(guacr.addr()).await.expect("connecting to guacr");
    let id = client.handshake("vnc", &peer.vnc_params(), WIDTH, HEIGHT).await.expect("owner handshake");
    client
        .wait_until_named("first full frame", Duration::from_secs(15), |s| {
            s.frames >= 1 && s.display.size() == (WIDTH, HEIGHT)
        })
        .await
        .expect("owner's first frame");
    (client, id)
}

async fn joiner(guacr: &GuacrProcess, id: &str, name: &str, read_only: bool) -> GuacClient {
    let mut client = GuacClient::connect(guacr.addr()).await.expect("connecting to guacr");
    let mut options = HandshakeOptions::new(id).param("read-only", if read_only { "true" } else { "" });
    options.name = Some(name.into());
    let ready = client.handshake_with(&options).await.expect("joiner handshake");
    assert_eq!(ready, id, "a joiner's ready names the joined connection");
    client
}

/// Waits until `client` shows exactly what `display` (the X server) shows, give or take lossy coding.
async fn wait_matches_x_server(client: &GuacClient, display: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ours = client.screenshot();
        let truth = x11_screenshot(display).expect("xwd screenshot");
        let diff = compare(&ours, &truth, 8);
        if diff.fraction < 0.0005 {
            return;
        }
        if Instant::now() > deadline {
            ours.save_png(artifact_dir().join(format!("{name}-client.png"))).unwrap();
            truth.save_png(artifact_dir().join(format!("{name}-xserver.png"))).unwrap();
            panic!("{name}: client image differs from the X server's: {diff}; images in {}", artifact_dir().display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_sees_the_screen_at_once_and_the_owner_is_told() {
    let guacr = GuacrProcess::start().expect("starting guacr");
    let peer = peers::static_screen();
    let (owner, id) = owner(&guacr, &peer).await;
    wait_matches_x_server(&owner, &peer.display, "sharing-owner").await;

    // The static screen sends no new frames: what the joiner shows comes from the state dump alone.
    let viewer = joiner(&guacr, &id, "viewer", true).await;
    viewer
        .wait_until_named("the joiner's first frame", Duration::from_secs(5), |s| {
            s.frames >= 1 && s.display.size() == (WIDTH, HEIGHT)
        })
        .await
        .expect("state dump for the joiner");
    wait_matches_x_server(&viewer, &peer.display, "sharing-joiner").await;
    assert_eq!(viewer.state().image_errors, Vec::<String>::new());

    owner
        .wait_until_named("msg user joined", Duration::from_secs(5), |s| s.msgs.iter().any(|m| m[0] == "1"))
        .await
        .expect("the owner is told about the joiner");
    let joined = owner.state().msgs[0].clone();
    assert_eq!(joined.len(), 3, "msg 1 <user id> <name>: {joined:?}");
    assert!(joined[1].starts_with('@') && joined[1].len() == 37, "user id {:?}", joined[1]);
    assert_eq!(joined[2], "viewer");

    viewer.disconnect().await.unwrap();
    viewer.wait_closed(Duration::from_secs(5)).await.expect("joiner's connection closed after disconnect");
    owner
        .wait_until_named("msg user left", Duration::from_secs(5), |s| s.msgs.iter().any(|m| m[0] == "2"))
        .await
        .expect("the owner is told the joiner left");
    let left = owner.state().msgs.iter().find(|m| m[0] == "2").cloned().unwrap();
    assert_eq!(left[1..], joined[1..], "the same user left");
    assert!(!owner.is_closed(), "the owner's session goes on");

    // Joining a connection that does not exist: guacd's 516.
    let mut stranger = GuacClient::connect(guacr.addr()).await.unwrap();
    let missing = format!("${}", "0".repeat(8) + "-0000-0000-0000-000000000000");
    let err = stranger.handshake_with(&HandshakeOptions::new(&missing)).await.expect_err("no such connection");
    assert_eq!(err.status(), Some(516), "{err}");

    // The owner leaves: the session ends for a joiner too, cleanly.
    let second = joiner(&guacr, &id, "second", true).await;
    second.wait_frames(1, Duration::from_secs(5)).await.expect("second joiner's dump");
    owner.disconnect().await.unwrap();
    second.wait_closed(Duration::from_secs(10)).await.expect("the joiner's connection ends with the owner's");
    let state = second.state();
    assert!(
        state.disconnect_received.is_some() && state.errors.is_empty(),
        "a clean disconnect, not an error: {}",
        state.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_joiners_input_is_ignored_while_the_owners_works() {
    let _xterm = TYPING_XTERM.lock().await;
    let guacr = GuacrProcess::start().expect("starting guacr");
    let peer = peers::typing();
    let (owner, id) = owner(&guacr, &peer).await;
    let viewer = joiner(&guacr, &id, "viewer", true).await;
    viewer.wait_frames(1, Duration::from_secs(5)).await.expect("joiner's dump");

    let marker = |who: &str| format!("/tmp/guacr-sharing-{who}-{}", std::process::id());
    let (ignored, typed) = (marker("read-only"), marker("owner"));
    let _ = std::fs::remove_file(&ignored);
    let _ = std::fs::remove_file(&typed);
    // No window manager: keyboard focus follows the pointer into the xterm; the owner puts it there.
    let (x, y) = peers::typing_pointer();
    owner.send_mouse(x, y, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    viewer.send_mouse(x, y, 0).await.unwrap();
    viewer.type_text(&format!("clear; touch {ignored}\n")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!std::path::Path::new(&ignored).exists(), "a read-only joiner's keys reached the server");

    // Meanwhile the joiner stops acknowledging frames: it drops out of step while the owner types.
    viewer.set_auto_sync(false);
    owner.type_text_paced(&format!("clear; touch {typed}\n"), Duration::from_millis(20)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&typed).exists() {
        assert!(Instant::now() < deadline, "the owner's keys did not reach the server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(&typed);
    assert!(!std::path::Path::new(&ignored).exists(), "the read-only joiner's keys arrived late");
    wait_matches_x_server(&owner, &peer.display, "sharing-owner-typed").await;
    assert!(guacr.log_contents().contains("fell behind"), "the joiner that stopped echoing was never marked behind");

    // The joiner acknowledges everything it got: it has caught up, gets a resync and shows the live screen.
    let last = viewer.state().sync_timestamps.last().cloned().expect("the joiner got frames");
    viewer.set_auto_sync(true);
    viewer.send_sync(&last).await.unwrap();
    wait_matches_x_server(&viewer, &peer.display, "sharing-read-only-joiner").await;
}

/// A joiner that completes the handshake and then never reads again.
async fn stalled_joiner(guacr: &GuacrProcess, id: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(guacr.addr()).await.unwrap();
    let mut out = BytesMut::new();
    guac_proto::encode_instruction(&mut out, "select", &[id]);
    stream.write_all(&out).await.unwrap();
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 8192];
    let names = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "guacr closed the joiner before args");
        decoder.feed(&buf[..n]);
        if let Some(args) = decoder.decode().unwrap() {
            assert_eq!(args.opcode(), "args");
            break args.args().count() - 1;
        }
    };
    let mut values = vec!["VERSION_1_5_0".to_string()];
    values.extend(std::iter::repeat_n(String::new(), names));
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    out.clear();
    guac_proto::encode_instruction(&mut out, "size", &["1024", "768", "96"]);
    guac_proto::encode_instruction(&mut out, "connect", &values);
    stream.write_all(&out).await.unwrap();
    stream
}

/// Frames each client receives in the same `window`, per second.
async fn rates(clients: [&GuacClient; 2], window: Duration) -> [f64; 2] {
    let before = clients.map(GuacClient::frames);
    tokio::time::sleep(window).await;
    let mut out = [0.0; 2];
    for (i, client) in clients.iter().enumerate() {
        out[i] = (client.frames() - before[i]) as f64 / window.as_secs_f64();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_that_stops_reading_does_not_slow_the_owner() {
    // A small output queue makes the stalled joiner fall behind within a second or two.
    let guacr = GuacrProcess::builder().arg("--client-queue-bytes").arg("65536").start().expect("starting guacr");
    let peer = peers::changing();
    let (owner, id) = owner(&guacr, &peer).await;
    // A second session on the same screen, never joined: the control that shares the machine's load.
    let (control, _) = self::owner(&guacr, &peer).await;
    owner.wait_frames(5, Duration::from_secs(10)).await.expect("the changing screen sends frames");

    let stalled = stalled_joiner(&guacr, &id).await;
    // The joiner's full-screen dump and the frames after it fill its socket and its queue: it falls behind.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let [with_stalled, alone] = rates([&owner, &control], Duration::from_secs(5)).await;
    eprintln!("frames/s: owner with a joiner that does not read {with_stalled:.1}, control session {alone:.1}");
    assert!(alone >= 1.0, "the changing peer should give at least a frame a second, got {alone:.1}");
    assert!(
        with_stalled >= alone * 0.5,
        "the owner got {with_stalled:.1} frames/s with a stalled joiner, the control session {alone:.1}; log:\n{}",
        guacr.log_tail(30)
    );
    assert!(!owner.is_closed(), "{}", owner.state().summary());
    assert!(guacr.log_contents().contains("fell behind"), "the stalled joiner was never marked behind");
    drop(stalled);
}
