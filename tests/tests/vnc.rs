//! guacr end to end against real VNC servers (started by `scripts/peers.sh start`): a Guacamole client
//! connects to guacr's guacd-compatible TCP entry, selects `vnc` with guacd's parameter names, and checks
//! what a user would see.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use guacr_tests::peers::{self, VncPeer};
use guacr_tests::{artifact_dir, compare, x11_screenshot, GuacClient, GuacrProcess, RgbImage, Signal};

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;
/// A key that types nothing.
const SHIFT_L: u32 = 0xffe1;

fn guacr() -> GuacrProcess {
    GuacrProcess::start().expect("starting guacr")
}

async fn open(guacr: &GuacrProcess, peer: &VncPeer) -> GuacClient {
    open_with(guacr, peer, &[]).await
}

async fn open_with(guacr: &GuacrProcess, peer: &VncPeer, extra: &[(&str, &str)]) -> GuacClient {
    peer.require_up();
    let mut client = GuacClient::connect(guacr.addr()).await.expect("connecting to guacr");
    let mut params = peer.vnc_params();
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let id = client.handshake("vnc", &params, WIDTH, HEIGHT).await.expect("handshake");
    assert!(id.starts_with('$') && id.len() == 37, "connection id {id:?} is not $<uuid>");
    client
}

async fn wait_first_frame(client: &GuacClient) {
    client
        .wait_until_named("first full frame", Duration::from_secs(15), |s| {
            s.frames >= 1 && s.display.size() == (WIDTH, HEIGHT)
        })
        .await
        .expect("first frame");
}

/// The worker processes guacr started that were not there before.
fn new_workers(guacr: &GuacrProcess, before: &BTreeSet<u32>) -> Vec<u32> {
    guacr.worker_pids().into_iter().filter(|p| !before.contains(p)).collect()
}

async fn wait_for_new_worker(guacr: &GuacrProcess, before: &BTreeSet<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let [pid] = new_workers(guacr, before)[..] {
            return pid;
        }
        assert!(Instant::now() < deadline, "no new worker appeared; log:\n{}", guacr.log_tail(40));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the client's image matches the X server's own screenshot within `tolerance`.
async fn wait_matches_x_server(client: &GuacClient, display: &str, name: &str) -> (RgbImage, RgbImage) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ours = client.screenshot();
        let truth = x11_screenshot(display).expect("xwd screenshot");
        let diff = compare(&ours, &truth, 8);
        if diff.fraction < 0.0005 {
            return (ours, truth);
        }
        if Instant::now() > deadline {
            ours.save_png(artifact_dir().join(format!("{name}-client.png"))).unwrap();
            truth.save_png(artifact_dir().join(format!("{name}-xserver.png"))).unwrap();
            panic!("client image differs from the X server's: {diff}; images in {}", artifact_dir().display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_speaks_guacd_1_6_vnc() {
    let guacr = guacr();
    let peer = peers::static_screen();
    let client = open(&guacr, &peer).await;
    let names = client.arg_names().expect("args received");
    let expected: Vec<String> = include_str!("../../supervisor/src/args/vnc.txt").lines().map(str::to_string).collect();
    assert_eq!(names.len(), 53);
    assert_eq!(names, expected, "args must list guacd 1.6's vnc parameter names in order");
    assert_eq!(client.server_version().as_deref(), Some("VERSION_1_5_0"));
    wait_first_frame(&client).await;
    let state = client.state();
    assert_eq!(state.display.size(), (WIDTH, HEIGHT));
    // Every frame ends with `sync <timestamp> <frames>`.
    let sync = state.log.iter().find(|r| r.opcode == "sync").expect("a sync");
    assert_eq!(sync.args.len(), 2, "sync carries a timestamp and a frame count: {sync:?}");
    assert!(sync.args[0].parse::<u64>().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composited_image_matches_the_vnc_servers_screen() {
    let guacr = guacr();
    let peer = peers::static_screen();
    let client = open(&guacr, &peer).await;
    wait_first_frame(&client).await;
    let (ours, _) = wait_matches_x_server(&client, &peer.display, "static").await;
    // Not a trivially matching blank image: the plaid root and the xterm are there.
    assert!(ours.count_color(peers::STATIC_ROOT_FG, 8) > 10_000);
    assert!(ours.count_color(peers::STATIC_ROOT_BG, 8) > 10_000);
    // The cursor pseudo-encoding reached the client as a `cursor` instruction.
    client
        .wait_until_named("cursor", Duration::from_secs(5), |s| s.display.cursor.is_some())
        .await
        .expect("cursor image");
}

/// Tests that type into the one xterm on the typing display take turns.
static TYPING_XTERM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_text_appears_in_the_xterm() {
    let _xterm = TYPING_XTERM.lock().await;
    let guacr = guacr();
    let peer = peers::typing();
    let client = open(&guacr, &peer).await;
    wait_first_frame(&client).await;
    // No window manager: keyboard focus follows the pointer into the xterm.
    let (x, y) = peers::typing_pointer();
    client.send_mouse(x, y, 0).await.unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let colour = [0x10 + (nanos % 200) as u8, 0xa0, 0x40 + (nanos / 7 % 150) as u8];
    let hex = format!("#{:02x}{:02x}{:02x}", colour[0], colour[1], colour[2]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.type_text(&format!("clear; echo typed-through-guacr; xsetroot -solid '{hex}'\n")).await.unwrap();
    // The command ran (the root outside the xterm takes the colour) ...
    client
        .wait_until_named("root window repainted by the typed command", Duration::from_secs(10), move |s| {
            s.display.pixel(1000, 740).is_some_and(|p| p[..3].iter().zip(colour).all(|(a, b)| a.abs_diff(b) <= 4))
        })
        .await
        .expect("typed command took effect");
    // ... and the typed text on screen is exactly what the X server shows.
    let (ours, _) = wait_matches_x_server(&client, &peer.display, "typing").await;
    let text_pixels = ours.crop(0, 0, 400, 40).iter_pixels().filter(|p| p.iter().all(|c| *c >= 0xc0)).count();
    assert!(text_pixels > 50, "no text visible in the xterm's first lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gives_769() {
    let guacr = guacr();
    let peer = peers::static_screen();
    let client = open_with(&guacr, &peer, &[("password", "wrongpw")]).await;
    client
        .wait_until_named("error", Duration::from_secs(10), |s| s.last_error().is_some())
        .await
        .expect("an error for the wrong password");
    assert_eq!(client.last_error().unwrap().status, 769);
    client.wait_closed(Duration::from_secs(5)).await.expect("connection closed after the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_gives_519() {
    let guacr = guacr();
    // A privileged port nothing listens on (a "free" ephemeral port could be taken by a concurrent test).
    let port = 1;
    assert!(!guacr_tests::process::port_listening(port), "something listens on port 1");
    let mut client = GuacClient::connect(guacr.addr()).await.unwrap();
    let params = [("hostname", "127.0.0.1".to_string()), ("port", port.to_string())];
    client.handshake("vnc", &params, WIDTH, HEIGHT).await.expect("handshake");
    client
        .wait_until_named("error", Duration::from_secs(10), |s| s.last_error().is_some())
        .await
        .expect("an error for the closed port");
    assert_eq!(client.last_error().unwrap().status, 519);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_errors_its_session_and_spares_the_other() {
    let guacr = guacr();
    let peer = peers::changing();
    let before: BTreeSet<u32> = guacr.worker_pids().into_iter().collect();
    let victim = open(&guacr, &peer).await;
    let victim_pid = wait_for_new_worker(&guacr, &before).await;
    let mut before = before;
    before.insert(victim_pid);
    let survivor = open(&guacr, &peer).await;
    let survivor_pid = wait_for_new_worker(&guacr, &before).await;
    wait_first_frame(&victim).await;
    wait_first_frame(&survivor).await;

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim_pid as i32), Signal::SIGKILL).unwrap();
    let killed_at = Instant::now();
    victim
        .wait_until_named("error after SIGKILL", Duration::from_secs(5), |s| s.last_error().is_some())
        .await
        .expect("the victim's client is told");
    let error = victim.last_error().unwrap();
    eprintln!("error {} arrived {:?} after SIGKILL", error.status, error.at.duration_since(killed_at));
    assert_eq!(error.status, 515);
    victim.wait_closed(Duration::from_secs(5)).await.expect("victim closed");

    // The other session keeps receiving frames from its own, untouched worker.
    let frames = survivor.frames();
    survivor
        .wait_until_named("frames after the other worker died", Duration::from_secs(10), move |s| {
            s.frames >= frames + 3
        })
        .await
        .expect("survivor keeps receiving frames");
    assert!(survivor.last_error().is_none() && !survivor.is_closed());
    assert!(guacr.worker_pids().contains(&survivor_pid));
    assert!(!guacr.worker_pids().contains(&victim_pid), "the killed worker was reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_instructions_give_768_and_spare_the_other_session() {
    let guacr = guacr();
    let peer = peers::changing();
    let bystander = open(&guacr, &peer).await;
    wait_first_frame(&bystander).await;
    for garbage in [&b"5.mouse,1.x,1.y,1.z;"[..], b"5.mouse,1.1;", b"4.key,,,;", b"99999999.boom;", b"3.key\xff\xfe;"] {
        let client = open(&guacr, &peer).await;
        client.send_raw(garbage).await.unwrap();
        client
            .wait_until_named("error for garbage", Duration::from_secs(5), |s| s.last_error().is_some())
            .await
            .unwrap_or_else(|e| panic!("no error for {:?}: {e}", String::from_utf8_lossy(garbage)));
        assert_eq!(client.last_error().unwrap().status, 768, "for {:?}", String::from_utf8_lossy(garbage));
        client.wait_closed(Duration::from_secs(5)).await.expect("closed after 768");
    }
    let frames = bystander.frames();
    bystander
        .wait_until_named("bystander frames", Duration::from_secs(10), move |s| s.frames >= frames + 2)
        .await
        .expect("bystander unaffected");
    assert!(bystander.last_error().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_instruction_gets_781() {
    let guacr = guacr();
    let client = open(&guacr, &peers::static_screen()).await;
    // A length prefix that cannot fit in guacd's 8192-byte instruction buffer.
    client.send_raw(format!("9000.{}", "x".repeat(9000)).as_bytes()).await.unwrap();
    client
        .wait_until_named("error", Duration::from_secs(5), |s| s.last_error().is_some())
        .await
        .expect("error for an overlong instruction");
    assert_eq!(client.last_error().unwrap().status, 781);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_before_the_vnc_handshake_is_harmless() {
    // guacd segfaults when `mouse` arrives before its VNC client is connected.
    let guacr = guacr();
    // The changing desktop: nothing the test sends may leave a trace on the static or typing displays.
    let peer = peers::changing();
    peer.require_up();
    let mut client = GuacClient::connect(guacr.addr()).await.unwrap();
    client.handshake("vnc", &peer.vnc_params(), WIDTH, HEIGHT).await.unwrap();
    for i in 0..50 {
        client.send_mouse(i, i, 0).await.unwrap();
        client.send_key(SHIFT_L, i % 2 == 0).await.unwrap();
    }
    client.send_key(SHIFT_L, false).await.unwrap();
    wait_first_frame(&client).await;
    assert!(client.last_error().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_hold_only_their_own_descriptors_and_are_locked_down() {
    let guacr = guacr();
    let peer = peers::static_screen();
    let mut seen = BTreeSet::new();
    let a = open(&guacr, &peer).await;
    let pid_a = wait_for_new_worker(&guacr, &seen).await;
    seen.insert(pid_a);
    let b = open(&guacr, &peer).await;
    let pid_b = wait_for_new_worker(&guacr, &seen).await;
    wait_first_frame(&a).await;
    wait_first_frame(&b).await;

    use std::os::unix::fs::MetadataExt;
    // Sockets, pipes and memfds by identity (anonymous inodes like epoll share one inode, /dev/null is
    // everyone's).
    let inodes = |pid: u32| -> BTreeSet<(u64, u64)> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let target = std::fs::read_link(p).map(|t| t.display().to_string()).unwrap_or_default();
                ["socket:", "pipe:", "/memfd:"].iter().any(|k| target.starts_with(k))
            })
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect()
    };
    let supervisor_objects = inodes(guacr.pid());
    let mut memfds = Vec::new();
    for pid in [pid_a, pid_b] {
        let dir = format!("/proc/{pid}/fd");
        let link = |fd: &str| std::fs::read_link(format!("{dir}/{fd}")).unwrap().display().to_string();
        let fds: BTreeSet<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        let listing: Vec<String> = fds.iter().map(|fd| format!("{fd} -> {}", link(fd))).collect();
        // What the supervisor passed at exec. The memfd (fd 4) is closed once mapped, so that number may
        // be reused by the worker's own connection.
        assert_eq!(link("0"), "/dev/null", "{listing:?}");
        assert_eq!(link("1"), "/dev/null", "{listing:?}");
        assert!(link("2").starts_with("pipe:"), "fd 2 is the log pipe: {listing:?}");
        assert!(link("3").starts_with("socket:"), "fd 3 is the control socket: {listing:?}");
        // Everything else is what the worker opened itself: its event loop and its VNC connection.
        for fd in fds.iter().filter(|fd| fd.parse::<u32>().unwrap() > 3) {
            let target = link(fd);
            let own = target.starts_with("anon_inode:[eventpoll]")
                || target.starts_with("anon_inode:[eventfd]")
                || target.starts_with("socket:")
                || target.starts_with("/memfd:guacr-frames");
            assert!(own, "worker {pid} holds an unexpected descriptor {fd} -> {target}: {listing:?}");
        }
        // Nothing the supervisor holds (listener, client sockets, other sessions' memfds and control
        // sockets) is shared with the worker, except this worker's log pipe and its own memfd.
        let shared: BTreeSet<(u64, u64)> = inodes(pid).intersection(&supervisor_objects).copied().collect();
        let log_pipe = std::fs::metadata(format!("{dir}/2")).map(|m| (m.dev(), m.ino())).unwrap();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let mapped_memfds: BTreeSet<u64> = maps
            .lines()
            .filter(|l| l.contains("/memfd:guacr-frames"))
            .map(|l| l.split_whitespace().nth(4).unwrap().parse().unwrap())
            .collect();
        assert_eq!(mapped_memfds.len(), 1, "worker {pid} maps exactly one session region: {maps}");
        for object in &shared {
            assert!(
                *object == log_pipe || mapped_memfds.contains(&object.1),
                "worker {pid} shares {object:?} with the supervisor: {listing:?}"
            );
        }
        memfds.push(mapped_memfds);

        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.lines().any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"])), "no_new_privs set");
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let limit = |name: &str| {
            limits.lines().find(|l| l.starts_with(name)).map(|l| l[26..].split_whitespace().next().unwrap().to_string())
        };
        assert_eq!(limit("Max core file size").as_deref(), Some("0"), "{limits}");
        assert_eq!(limit("Max open files").as_deref(), Some("64"), "{limits}");
        assert_ne!(limit("Max address space").as_deref(), Some("unlimited"), "{limits}");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(environ.is_empty(), "worker environment is empty, got {:?}", String::from_utf8_lossy(&environ));
    }
    assert!(memfds[0].is_disjoint(&memfds[1]), "each session maps its own memfd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_ends_the_worker() {
    let guacr = guacr();
    let peer = peers::static_screen();
    let before = BTreeSet::new();
    let client = open(&guacr, &peer).await;
    let pid = wait_for_new_worker(&guacr, &before).await;
    wait_first_frame(&client).await;
    client.disconnect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while guacr.worker_pids().contains(&pid) {
        assert!(Instant::now() < deadline, "worker {pid} still running after disconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_gets_nop_and_silent_client_gets_776() {
    let guacr = guacr();
    let client = open(&guacr, &peers::static_screen()).await;
    wait_first_frame(&client).await;
    // Stop talking entirely: no keep-alive, no sync echoes.
    client.set_auto_nop(false);
    client.set_auto_sync(false);
    client
        .wait_until_named("keep-alive nop", Duration::from_secs(8), |s| s.nops >= 1)
        .await
        .expect("nop after 5 s without output");
    client
        .wait_until_named("776", Duration::from_secs(20), |s| s.last_error().is_some())
        .await
        .expect("error for a silent client");
    assert_eq!(client.last_error().unwrap().status, 776);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_select_is_dropped_after_15_seconds() {
    let guacr = guacr();
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(guacr.addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(25), tokio::io::AsyncReadExt::read(&mut stream, &mut buf))
        .await
        .expect("guacr closes a client that never selects");
    assert_eq!(read.unwrap(), 0, "closed without data");
    assert!(started.elapsed() >= Duration::from_secs(14), "not before the 15 s select timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clipboard_travels_both_ways() {
    let _xterm = TYPING_XTERM.lock().await;
    let guacr = guacr();
    let peer = peers::typing();
    let client = open(&guacr, &peer).await;
    wait_first_frame(&client).await;
    let (x, y) = peers::typing_pointer();
    client.send_mouse(x, y, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Client → server: our clipboard becomes the X selection; a middle click pastes it into bash.
    let marker = format!("/tmp/guacr-clipboard-{}", std::process::id());
    let _ = std::fs::remove_file(&marker);
    let command = format!("clear; touch {marker}");
    client.send("clipboard", &["10", "text/plain"]).await.unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, command.as_bytes());
    client.send("blob", &["10", &b64]).await.unwrap();
    client.send("end", &["10"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.send_mouse(x, y, 2).await.unwrap();
    client.send_mouse(x, y, 0).await.unwrap();
    // The paste is asynchronous (xterm asks the selection owner); press Return after it landed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.type_text("\n").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&marker).exists() {
        assert!(Instant::now() < deadline, "the pasted command never ran: clipboard did not reach the server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(&marker);

    // Server → client: selecting a line in the xterm makes the server announce its clipboard.
    let word = format!("guacrword{}", std::process::id());
    client.type_text(&format!("clear; echo {word}\n")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        client.send_mouse(30, 8, 1).await.unwrap();
        client.send_mouse(30, 8, 0).await.unwrap();
    }
    client.send_mouse(x, y, 0).await.unwrap();
    client
        .wait_until_named("clipboard from the server", Duration::from_secs(10), move |s| {
            s.finished_streams
                .iter()
                .any(|st| st.kind == "clipboard" && String::from_utf8_lossy(&st.data).contains(&word))
        })
        .await
        .expect("selected text arrived as a clipboard stream");
}
