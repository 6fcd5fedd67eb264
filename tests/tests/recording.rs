//! Session recordings end to end against the real VNC peers: guacr writes guacd's format (the session's
//! output plus the requested input), with guacd's parameters and file naming; the file replays through a
//! compositing Guacamole client to exactly what the live user saw, also when the worker is killed mid-session.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guacr_tests::peers::{self, VncPeer};
use guacr_tests::{artifact_dir, compare, ClientState, GuacClient, GuacrProcess, RgbImage};

/// Where Xtigervnc puts the static desktop's pointer when it starts (the centre of 1024×768); tests that
/// move it on that desktop leave it there.
const STATIC_POINTER: (i32, i32) = (512, 384);

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        TempDir(std::env::temp_dir().join(format!("guacr-{name}-{}-{nanos}", std::process::id())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn open(guacr: &GuacrProcess, peer: &VncPeer, extra: &[(&str, String)]) -> GuacClient {
    peer.require_up();
    let mut client = GuacClient::connect(guacr.addr()).await.expect("connecting to guacr");
    let mut params = peer.vnc_params();
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    client.handshake("vnc", &params, WIDTH, HEIGHT).await.expect("handshake");
    client
        .wait_until_named("first full frame", Duration::from_secs(15), |s| {
            s.frames >= 1 && s.display.size() == (WIDTH, HEIGHT)
        })
        .await
        .expect("first frame");
    client
}

/// Waits until `path` exists and has not grown for a while (the writer flushes at least once a second).
async fn settled(path: &Path) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).ok();
        if len.is_some() && len == last {
            return std::fs::read(path).unwrap();
        }
        assert!(Instant::now() < deadline, "recording {} never settled (size {len:?})", path.display());
        last = len;
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
}

fn assert_same_image(replayed: &RgbImage, live: &RgbImage, name: &str) {
    let diff = compare(replayed, live, 0);
    if diff.fraction > 0.0 {
        replayed.save_png(artifact_dir().join(format!("{name}-replayed.png"))).unwrap();
        live.save_png(artifact_dir().join(format!("{name}-live.png"))).unwrap();
        panic!(
            "{name}: the replayed recording differs from the live screen: {diff}; images in {}",
            artifact_dir().display()
        );
    }
}

/// The only file in `dir` whose name starts with `prefix`.
fn only_file(dir: &Path, prefix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("recording directory {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .collect();
    assert_eq!(found.len(), 1, "expected one recording starting with {prefix} in {}: {found:?}", dir.display());
    found.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_vnc_session_replays_to_the_live_frame() {
    let guacr = GuacrProcess::start().expect("starting guacr");
    let dir = TempDir::new("recording");
    let peer = peers::static_screen();
    let params = [
        ("recording-path", format!("{}/${{GUAC_DATE}}", dir.0.display())),
        ("recording-name", "session-${GUAC_USERNAME}".to_string()),
        ("create-recording-path", "true".to_string()),
    ];
    let client = open(&guacr, &peer, &params).await;
    // The pointer moves (recorded as input) and nothing is typed. It stays on the root window and ends
    // where Xtigervnc starts it (the centre): other tests compare this "static" screen with the server's
    // and must find it as it was.
    for step in 0..5 {
        client.send_mouse(432 + step * 20, STATIC_POINTER.1, 0).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live = client.screenshot();
    let frames = client.frames();

    // The directory came from ${GUAC_DATE} (created), the name from ${GUAC_USERNAME} (the handshake's name).
    let dated: Vec<PathBuf> = std::fs::read_dir(&dir.0).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(dated.len(), 1, "{dated:?}");
    let day = dated[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(day.len() == 8 && day.starts_with("20") && day.bytes().all(|b| b.is_ascii_digit()), "{day}");
    let path = dated[0].join("session-test");
    // Written while the session is live: flushed at least once a second.
    let recording = settled(&path).await;
    let replayed = ClientState::replay(&recording);
    assert_eq!(replayed.decode_error, None);
    assert_eq!(replayed.image_errors, Vec::<String>::new());
    assert_eq!(replayed.frames, frames, "every frame the user got is in the recording");
    assert_eq!(replayed.display.size(), (WIDTH, HEIGHT));
    assert_same_image(&replayed.screenshot(), &live, "recording-live");
    assert_eq!(replayed.count("mouse"), 5, "pointer input is recorded (recording-exclude-mouse unset)");
    assert_eq!(replayed.count("key"), 0, "keys only with recording-include-keys");

    // A second session with the same name gets guacd's suffix instead of overwriting the first.
    let second = open(&guacr, &peer, &params).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.disconnect().await.unwrap();
    second.wait_closed(Duration::from_secs(5)).await.unwrap();
    let suffixed = settled(&dated[0].join("session-test.1")).await;
    assert_same_image(&ClientState::replay(&suffixed).screenshot(), &second.screenshot(), "recording-second");
    client.disconnect().await.unwrap();
    client.wait_closed(Duration::from_secs(5)).await.unwrap();
    assert_eq!(settled(&path).await.len(), recording.len(), "the first recording is untouched by the second");

    // recording-exclude-output: only the input is recorded.
    let input_only = [
        ("recording-path", dir.0.display().to_string()),
        ("recording-name", "input-only".to_string()),
        ("recording-exclude-output", "true".to_string()),
    ];
    let third = open(&guacr, &peer, &input_only).await;
    third.send_mouse(STATIC_POINTER.0 - 20, STATIC_POINTER.1, 0).await.unwrap();
    third.send_mouse(STATIC_POINTER.0, STATIC_POINTER.1, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    third.disconnect().await.unwrap();
    third.wait_closed(Duration::from_secs(5)).await.unwrap();
    let replayed = ClientState::replay(&settled(&dir.0.join("input-only")).await);
    assert_eq!((replayed.frames, replayed.count("img"), replayed.count("mouse")), (0, 0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_leaves_a_recording_that_replays_up_to_that_point() {
    let guacr = GuacrProcess::start().expect("starting guacr");
    let dir = TempDir::new("recording-crash");
    let peer = peers::changing();
    let params = [
        ("recording-path", dir.0.display().to_string()),
        ("create-recording-path", "true".to_string()),
        ("recording-include-keys", "true".to_string()),
    ];
    let client = open(&guacr, &peer, &params).await;
    client.wait_frames(4, Duration::from_secs(15)).await.expect("the changing screen sends frames");
    // A key that types nothing (Shift), recorded with recording-include-keys.
    client.send_key(0xffe1, true).await.unwrap();
    client.send_key(0xffe1, false).await.unwrap();
    client.wait_frames(client.frames() + 2, Duration::from_secs(15)).await.expect("frames after the key");
    let workers = guacr.worker_pids();
    assert_eq!(workers.len(), 1, "one session, one worker: {workers:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(workers[0] as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9 the worker");
    client
        .wait_until_named("error after the crash", Duration::from_secs(10), |s| s.last_error().is_some())
        .await
        .expect("the user is told");
    assert_eq!(client.last_error().unwrap().status, 515);
    client.wait_closed(Duration::from_secs(5)).await.unwrap();
    let live = client.screenshot();
    let frames = client.frames();

    // guacd's default name.
    let path = only_file(&dir.0, "recording");
    assert_eq!(path.file_name().unwrap(), "recording");
    let recording = settled(&path).await;
    let replayed = ClientState::replay(&recording);
    assert_eq!(replayed.decode_error, None, "the file ends on a whole instruction");
    assert_eq!(replayed.frames, frames, "every frame the user got before the crash is in the recording");
    assert_same_image(&replayed.screenshot(), &live, "recording-crash");
    assert_eq!(replayed.count("key"), 2, "key events are recorded with recording-include-keys");
}

/// guacamole-common-js's own player: `Guacamole.SessionRecording` in headless Chromium (the page's bundled
/// library, served by guacr's HTTP entry) loads the recording, seeks to its end, and its flattened display
/// is the live user's last frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guacamole_common_js_plays_the_recording_to_the_live_frame() {
    use base64::Engine as _;
    use guacr_tests::browser::Browser;

    let guacr = GuacrProcess::builder().http().start().expect("starting guacr");
    let dir = TempDir::new("recording-js");
    let peer = peers::static_screen();
    let params = [("recording-path", dir.0.display().to_string()), ("create-recording-path", "true".to_string())];
    let client = open(&guacr, &peer, &params).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live = client.screenshot();
    client.disconnect().await.unwrap();
    client.wait_closed(Duration::from_secs(5)).await.unwrap();
    let recording = settled(&dir.0.join("recording")).await;
    let http = guacr.http_addr().expect("HTTP entry");

    let played = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::start().expect("starting chromium");
        browser.open(&format!("http://{http}/"), 1280, 1000).expect("opening guacr's page");
        browser
            .wait_for("the page", "document.readyState === 'complete'", Duration::from_secs(10))
            .expect("page loaded");
        // The recording goes in as a global first, so an error below does not quote it.
        let b64 = base64::engine::general_purpose::STANDARD.encode(&recording);
        browser.eval(&format!("window.recordingBase64 = '{b64}'; true")).expect("handing over the recording");
        // guacamole-client reads the file through a StaticHTTPTunnel; this tunnel does the same with the
        // bytes already in the page (the page's CSP forbids fetching blob: URLs): the library's own parser
        // feeds the player, then the tunnel closes, which completes loading.
        let script = r#"(async () => {
                const { default: Guacamole } = await import('/vendor/guacamole-common.js');
                const binary = atob(window.recordingBase64);
                const bytes = new Uint8Array(binary.length);
                for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
                const tunnel = new Guacamole.Tunnel();
                tunnel.connect = function connect() {
                    tunnel.setState(Guacamole.Tunnel.State.OPEN);
                    const parser = new Guacamole.Parser();
                    parser.oninstruction = (opcode, args) => tunnel.oninstruction(opcode, args);
                    parser.receive(new TextDecoder().decode(bytes));
                    tunnel.setState(Guacamole.Tunnel.State.CLOSED);
                };
                const recording = new Guacamole.SessionRecording(tunnel);
                await new Promise((ok, fail) => {
                    recording.onload = ok;
                    recording.onerror = message => fail(new Error('recording error: ' + message));
                    recording.connect();
                });
                await new Promise(ok => recording.seek(recording.getDuration(), ok));
                const display = recording.getDisplay();
                await new Promise(ok => display.flush(ok));
                return display.flatten().toDataURL('image/png');
            })()"#;
        let url =
            browser.eval(script).unwrap_or_else(|e| panic!("playing the recording: {e:#}\n{}", browser.console()));
        let data =
            url.as_str().and_then(|u| u.strip_prefix("data:image/png;base64,")).expect("a PNG data URL").to_string();
        let png = base64::engine::general_purpose::STANDARD.decode(data).unwrap();
        guacr_tests::image::decode_png_rgb(&png).expect("decoding the flattened display")
    })
    .await
    .unwrap();
    assert_eq!((played.width, played.height), (WIDTH, HEIGHT), "the recording's display size");
    // The browser decodes JPEG itself (slightly differently from our decoder); PNG and fills are exact.
    let diff = compare(&played, &live, 8);
    if diff.fraction > 0.0005 {
        played.save_png(artifact_dir().join("recording-js-played.png")).unwrap();
        live.save_png(artifact_dir().join("recording-js-live.png")).unwrap();
        panic!(
            "guacamole-common-js's playback differs from the live screen: {diff}; images in {}",
            artifact_dir().display()
        );
    }
}
