//! Greedy and slow clients: connection limits answer 513 instead of falling over, and a client that stops
//! reading costs neither memory nor other sessions' frames.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use guac_proto::Decoder;
use guacr_tests::peers;
use guacr_tests::{GuacClient, GuacrProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn connect_from(local: [u8; 4], guacr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((local, 0))).unwrap();
    socket.connect(guacr).await.unwrap()
}

/// The first instruction the server sends, within `limit` (`None` if it sends nothing).
async fn first_instruction(stream: &mut TcpStream, limit: Duration) -> Option<(String, Vec<String>)> {
    let mut decoder = Decoder::new();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(i)) = decoder.decode() {
            return Some((i.opcode().to_string(), i.args().map(str::to_string).collect()));
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        let buf = decoder.buffer_mut();
        buf.reserve(4096);
        match tokio::time::timeout(left, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// True when guacr admitted the connection: it answers `select` with `args`.
async fn admitted(stream: &mut TcpStream) -> bool {
    stream.write_all(b"6.select,3.vnc;").await.unwrap();
    match first_instruction(stream, Duration::from_secs(5)).await {
        Some((opcode, _)) if opcode == "args" => true,
        Some((opcode, args)) if opcode == "error" => {
            assert_eq!(args.get(1).map(String::as_str), Some("513"), "busy is 513: {args:?}");
            false
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limits_get_513() {
    let guacr = GuacrProcess::builder()
        .args(["--max-connections", "3", "--max-connections-per-address", "2"])
        .start()
        .expect("starting guacr");
    let addr = guacr.addr();
    let mut a1 = connect_from([127, 0, 0, 1], addr).await;
    let mut a2 = connect_from([127, 0, 0, 1], addr).await;
    assert!(admitted(&mut a1).await && admitted(&mut a2).await);
    let mut a3 = connect_from([127, 0, 0, 1], addr).await;
    assert!(!admitted(&mut a3).await, "a third connection from one address is refused");
    let mut b1 = connect_from([127, 0, 0, 2], addr).await;
    assert!(admitted(&mut b1).await, "another address still gets in");
    let mut c1 = connect_from([127, 0, 0, 3], addr).await;
    assert!(!admitted(&mut c1).await, "the global limit holds");
    drop(a1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut a4 = connect_from([127, 0, 0, 1], addr).await;
    assert!(admitted(&mut a4).await, "a closed connection frees its place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_refused_and_the_server_stays_usable() {
    let peer = peers::static_screen();
    peer.require_up();
    let mut guacr = GuacrProcess::builder().args(["--max-connections", "20"]).start().expect("starting guacr");
    // 300 connections that never say anything.
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(TcpStream::connect(guacr.addr()).await.unwrap());
    }
    let mut busy = 0;
    for stream in &mut flood {
        if let Some((opcode, args)) = first_instruction(stream, Duration::from_millis(200)).await {
            assert_eq!((opcode.as_str(), args.get(1).map(String::as_str)), ("error", Some("513")));
            busy += 1;
        }
    }
    eprintln!("{busy} of 300 silent connections were told 513");
    assert_eq!(busy, 280, "exactly the connections over the limit of 20 are refused");
    assert!(guacr.try_exit_status().is_none());
    drop(flood);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = GuacClient::connect(guacr.addr()).await.unwrap();
    client.handshake("vnc", &peer.vnc_params(), 1024, 768).await.expect("a real session after the flood");
    client.wait_frames(1, Duration::from_secs(15)).await.expect("frames");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A session whose client completes the handshake and then never reads another byte.
async fn stalled_session(guacr: SocketAddr, params: &[(String, String)]) -> TcpStream {
    let mut stream = TcpStream::connect(guacr).await.unwrap();
    stream.write_all(b"6.select,3.vnc;").await.unwrap();
    let (opcode, names) = first_instruction(&mut stream, Duration::from_secs(5)).await.expect("args");
    assert_eq!(opcode, "args");
    let mut out = BytesMut::new();
    guac_proto::encode_instruction(&mut out, "size", &["1024", "768", "96"]);
    for opcode in ["audio", "video", "image"] {
        guac_proto::encode_instruction(&mut out, opcode, &[]);
    }
    let mut values = vec!["VERSION_1_5_0"];
    for name in names.iter().skip(1) {
        values.push(params.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str()));
    }
    guac_proto::encode_instruction(&mut out, "connect", &values);
    stream.write_all(&out).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_costs_no_memory_and_slows_no_one() {
    let peer = peers::changing();
    peer.require_up();
    let guacr = GuacrProcess::builder().log_level("info").start().expect("starting guacr");
    let bystander = {
        let mut c = GuacClient::connect(guacr.addr()).await.unwrap();
        c.handshake("vnc", &peer.vnc_params(), 1024, 768).await.unwrap();
        c.wait_frames(1, Duration::from_secs(15)).await.unwrap();
        c
    };
    let before = rss_kib(guacr.pid());
    let stalled = stalled_session(guacr.addr(), &peer.vnc_params()).await;
    // The stalled client's socket buffers fill; the supervisor must neither queue without bound nor
    // hold up the other session. The changing peer repaints every second.
    let start = Instant::now();
    let frames_at_start = bystander.frames();
    let mut peak = before;
    let mut last_frames = frames_at_start;
    let mut longest_gap = Duration::ZERO;
    let mut last_frame_at = Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_kib(guacr.pid()));
        let frames = bystander.frames();
        if frames > last_frames {
            last_frames = frames;
            longest_gap = longest_gap.max(last_frame_at.elapsed());
            last_frame_at = Instant::now();
        }
    }
    longest_gap = longest_gap.max(last_frame_at.elapsed());
    let gained = bystander.frames() - frames_at_start;
    eprintln!(
        "while another client stalled: bystander got {gained} frames in 12 s (longest gap {longest_gap:?}); \
         supervisor RSS {before} KiB before, peak {peak} KiB"
    );
    assert!(gained >= 6, "the bystander keeps receiving frames");
    assert!(longest_gap < Duration::from_secs(4), "no long stall for the bystander: {longest_gap:?}");
    assert!(peak < before + 64 * 1024, "the stalled client's output is bounded: {before} -> {peak} KiB");
    assert!(bystander.last_error().is_none());
    // The stalled client is dropped once it has not taken output (or sent input) for 15 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while guacr.worker_pids().len() > 1 {
        assert!(Instant::now() < deadline, "the stalled session was never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stalled);
}
