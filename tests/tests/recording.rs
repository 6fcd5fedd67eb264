//! Session recordings end to end against the real VNC peers: guacr writes guacd's format (the session's
//! output plus the requested input), with guacd's parameters and file naming; the file replays through a
//! compositing Guacamole client to exactly what the live user saw, also when the worker is killed mid-session.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guacr_tests::peers::{self, VncPeer};
use guacr_tests::web::{self, ACCESS_KEY, LIMITED_KEY};
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

/// guacamole-common-js's own player, on the path a user takes: guacr's page (with the bundled library) in
/// headless Chromium fetches the recording from guacr's `/recordings/` route with an access key through a
/// `Guacamole.StaticHTTPTunnel`, `Guacamole.SessionRecording` loads it and seeks to its end, and its
/// flattened display is the live user's last frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guacamole_common_js_plays_the_recording_to_the_live_frame() {
    use base64::Engine as _;
    use guacr_tests::browser::Browser;

    let dir = TempDir::new("recording-js");
    let (guacr, _config) = with_recordings_route(&dir.0, &[]);
    let peer = peers::static_screen();
    let params = [
        ("recording-path", format!("{}/${{GUAC_DATE}}", dir.0.display())),
        ("create-recording-path", "true".to_string()),
    ];
    let client = open(&guacr, &peer, &params).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live = client.screenshot();
    client.disconnect().await.unwrap();
    client.wait_closed(Duration::from_secs(5)).await.unwrap();
    let day = only_file(&dir.0, "20");
    let recording = settled(&day.join("recording")).await;
    let url = format!("/recordings/{}/recording", day.file_name().unwrap().to_string_lossy());
    let http = guacr.http_addr().expect("HTTP entry");
    let (status, headers, body) = http_request(http, &url, &[("Authorization", format!("Bearer {ACCESS_KEY}"))]);
    assert_eq!((status, body.len()), (200, recording.len()), "{headers}");
    assert!(body == recording, "the route serves the file's bytes");

    let played = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::start().expect("starting chromium");
        browser.open(&format!("http://{http}/"), 1280, 1000).expect("opening guacr's page");
        browser
            .wait_for("the page", "document.readyState === 'complete'", Duration::from_secs(10))
            .expect("page loaded");
        // guacamole-client plays recordings the same way: a StaticHTTPTunnel streams the file into the
        // library's parser; the tunnel closing at the end of the body completes loading.
        let script = format!(
            r#"(async () => {{
                const {{ default: Guacamole }} = await import('/vendor/guacamole-common.js');
                const tunnel = new Guacamole.StaticHTTPTunnel('{url}', false,
                    {{ 'Authorization': 'Bearer {ACCESS_KEY}' }});
                const recording = new Guacamole.SessionRecording(tunnel);
                await new Promise((ok, fail) => {{
                    recording.onload = ok;
                    recording.onerror = message => fail(new Error('recording error: ' + message));
                    tunnel.onerror = status => fail(new Error('tunnel error: ' + status.code + ' ' + status.message));
                    recording.connect();
                }});
                await new Promise(ok => recording.seek(recording.getDuration(), ok));
                const display = recording.getDisplay();
                await new Promise(ok => display.flush(ok));
                return display.flatten().toDataURL('image/png');
            }})()"#
        );
        let url =
            browser.eval(&script).unwrap_or_else(|e| panic!("playing the recording: {e:#}\n{}", browser.console()));
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
    // Once for the check above, once for the player, both with sendfile (every request is on a fresh
    // connection, which the listener answers itself).
    let log = guacr.log_contents();
    assert_eq!(log.matches("Serving recording").count(), 2, "the player read the route");
    assert_eq!(log.matches("zero_copy=true").count(), 2, "{}", guacr.log_tail(10));
}

/// guacr with the HTTP entry and `[recordings] dir = DIR` readable by the user `tester` (not `limited`).
fn with_recordings_route(dir: &Path, args: &[&str]) -> (GuacrProcess, TempDir) {
    let config_dir = TempDir::new("recording-config");
    let config = web::write_config(&config_dir.0, &[peers::static_screen()]).expect("writing the configuration");
    std::fs::create_dir_all(dir).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[recordings]\ndir = \"{}\"\nusers = [\"tester\"]\n", dir.display()));
    std::fs::write(&config, text).unwrap();
    let guacr = GuacrProcess::builder()
        .http()
        .arg("--config")
        .arg(&config)
        .args(args)
        .start()
        .expect("starting guacr with the HTTP entry");
    (guacr, config_dir)
}

/// One HTTP/1.1 request with extra headers: (status, response head, body).
fn http_request(addr: std::net::SocketAddr, path: &str, headers: &[(&str, String)]) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting to the HTTP entry");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("reading the response");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, response[split + 4..].to_vec())
}

/// The recordings route serves regular files beneath its directory to allowed users only: no key, a
/// user not listed, `..` (plain or %-encoded), a symbolic link out of the directory, a FIFO and a
/// directory are all refused; a range is served as 206; without `[recordings]` there is no route.
#[test]
fn the_recordings_route_serves_only_regular_files_beneath_its_directory_to_allowed_users() {
    let dir = TempDir::new("recordings-route");
    let (guacr, config_dir) = with_recordings_route(&dir.0, &[]);
    let http = guacr.http_addr().expect("HTTP entry");
    let content: Vec<u8> =
        (0..200_000u32).flat_map(|i| format!("4.sync,{}.{i};", i.to_string().len()).into_bytes()).collect();
    std::fs::create_dir_all(dir.0.join("20261127")).unwrap();
    std::fs::write(dir.0.join("20261127/session.1"), &content).unwrap();
    std::fs::write(config_dir.0.join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(config_dir.0.join("secret"), dir.0.join("link")).unwrap();
    std::os::unix::fs::symlink(&config_dir.0, dir.0.join("linked-dir")).unwrap();
    nix::unistd::mkfifo(&dir.0.join("fifo"), nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
    let key = |k: &str| vec![("Authorization", format!("Bearer {k}"))];

    let (status, head, body) = http_request(http, "/recordings/20261127/session.1", &key(ACCESS_KEY));
    assert_eq!(status, 200, "{head}");
    assert!(body == content, "whole file ({} of {} bytes)", body.len(), content.len());
    assert!(head.to_ascii_lowercase().contains(&format!("content-length: {}", content.len())), "{head}");
    assert!(head.to_ascii_lowercase().contains("accept-ranges: bytes"), "{head}");
    // That went out with sendfile; a request head too long for the listener to look at (over 8 KiB) is
    // served by the axum route through hyper instead, with the same bytes.
    let mut padded = key(ACCESS_KEY);
    padded.push(("X-Padding", "p".repeat(9000)));
    let (status, head, body) = http_request(http, "/recordings/20261127/session.1", &padded);
    assert_eq!(status, 200, "{head}");
    assert!(body == content, "whole file through hyper ({} of {} bytes)", body.len(), content.len());
    let log = guacr.log_contents();
    assert!(log.contains("zero_copy=true") && log.contains("zero_copy=false"), "{}", guacr.log_tail(10));

    for padding in [0, 9000] {
        let mut range = key(ACCESS_KEY);
        range.push(("Range", "bytes=100-199".into()));
        range.push(("X-Padding", "p".repeat(padding)));
        let (status, head, body) = http_request(http, "/recordings/20261127/session.1", &range);
        assert_eq!((status, body.as_slice()), (206, &content[100..200]), "{head}");
        assert!(head.to_ascii_lowercase().contains(&format!("bytes 100-199/{}", content.len())), "{head}");
    }
    let mut beyond = key(ACCESS_KEY);
    beyond.push(("Range", format!("bytes={}-", content.len())));
    assert_eq!(http_request(http, "/recordings/20261127/session.1", &beyond).0, 416);

    assert_eq!(http_request(http, "/recordings/20261127/session.1", &[]).0, 401, "no key");
    assert_eq!(http_request(http, "/recordings/20261127/session.1", &key("wrong-key-0123456789")).0, 401);
    assert_eq!(http_request(http, "/recordings/20261127/session.1", &key(LIMITED_KEY)).0, 403, "not listed");
    for refused in [
        "/recordings/../guacr.toml",
        "/recordings/%2e%2e/guacr.toml",
        "/recordings/20261127/..%2f..%2fguacr.toml",
        "/recordings/link",
        "/recordings/linked-dir/secret",
        "/recordings/fifo",
        "/recordings/20261127",
        "/recordings/absent",
    ] {
        let (status, head, body) = http_request(http, refused, &key(ACCESS_KEY));
        assert!(status == 404 || status == 400, "{refused}: {head}");
        assert!(
            !String::from_utf8_lossy(&body).contains("outside") && !String::from_utf8_lossy(&body).contains("tokens")
        );
    }

    // Without [recordings] the route does not exist, whatever the key.
    let plain = GuacrProcess::builder().http().start().expect("starting guacr without [recordings]");
    let (status, _, _) = http_request(plain.http_addr().unwrap(), "/recordings/20261127/session.1", &key(ACCESS_KEY));
    assert_eq!(status, 404);
}

/// A 64 KiB tmpfs mounted for one test: recordings fill it and get a real `ENOSPC`, without filling the
/// machine's disk. Mounting needs root, which the integration tests have (CI runs them as root); anything
/// else fails the test.
struct TinyDisk(TempDir);

impl TinyDisk {
    fn mount(name: &str) -> TinyDisk {
        let dir = TempDir::new(name);
        std::fs::create_dir_all(&dir.0).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "guacr-test-tinydisk"])
            .arg(&dir.0)
            .status()
            .expect("running mount(8)");
        assert!(
            status.success(),
            "mounting a 64 KiB tmpfs on {} failed ({status}): these tests run as root",
            dir.0.display()
        );
        TinyDisk(dir)
    }

    fn path(&self) -> &Path {
        &self.0 .0
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

async fn wait_for_log(guacr: &GuacrProcess, line: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !guacr.log_contents().contains(line) {
        assert!(Instant::now() < deadline, "guacr never logged {line:?}:\n{}", guacr.log_tail(30));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A full disk ends the recording with a log line and the session goes on (guacd's behaviour); with
/// `--recording-required` the same full disk ends the session with 512, and so does a recording that
/// cannot be opened at all, while a required recording that works leaves its session alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_recording_and_a_required_recording_ends_the_session() {
    const STOPPED: &str = "Recording stopped: cannot write the file";
    let disk = TinyDisk::mount("recording-full");
    let peer = peers::changing();
    let tiny = disk.path().display().to_string();

    let guacr = GuacrProcess::start().expect("starting guacr");
    let client = open(&guacr, &peer, &[("recording-path", tiny.clone()), ("recording-name", "optional".into())]).await;
    wait_for_log(&guacr, STOPPED, Duration::from_secs(20)).await;
    let frames = client.frames();
    client.wait_frames(frames + 3, Duration::from_secs(15)).await.expect("the session goes on without its recording");
    assert!(client.last_error().is_none(), "{:?}", client.last_error());
    let written = std::fs::metadata(disk.path().join("optional")).unwrap().len();
    assert!(written > 0 && written <= 64 * 1024, "{written} bytes on a 64 KiB disk");
    client.disconnect().await.unwrap();
    client.wait_closed(Duration::from_secs(5)).await.unwrap();
    std::fs::remove_file(disk.path().join("optional")).unwrap();

    let strict = GuacrProcess::builder().arg("--recording-required").start().expect("starting guacr");
    // A working required recording: the session runs.
    let normal = TempDir::new("recording-required");
    let params = [("recording-path", normal.0.display().to_string()), ("create-recording-path", "true".into())];
    let fine = open(&strict, &peers::static_screen(), &params).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(fine.last_error().is_none() && !fine.is_closed(), "{:?}", fine.last_error());
    fine.disconnect().await.unwrap();

    // The disk fills: the session ends with 512 (guacd's SERVER_ERROR: guacr's own resource failed).
    let mut client = GuacClient::connect(strict.addr()).await.expect("connecting to guacr");
    let mut params = peer.vnc_params();
    params.extend([("recording-path".to_string(), tiny.clone()), ("recording-name".to_string(), "required".into())]);
    client.handshake("vnc", &params, WIDTH, HEIGHT).await.expect("handshake");
    client
        .wait_until_named("error after the disk filled", Duration::from_secs(20), |s| s.last_error().is_some())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", strict.log_tail(30)));
    assert_eq!(client.last_error().unwrap().status, 512, "{:?}", client.last_error());
    client.wait_closed(Duration::from_secs(5)).await.unwrap();
    assert!(strict.log_contents().contains(STOPPED), "{}", strict.log_tail(30));
    let written = std::fs::metadata(disk.path().join("required")).unwrap().len();
    assert!(written <= 64 * 1024, "{written}");

    // A recording that cannot be opened (no such directory, create-recording-path unset): 512 at once.
    let mut client = GuacClient::connect(strict.addr()).await.expect("connecting to guacr");
    let mut params = peers::static_screen().vnc_params();
    params.push(("recording-path".to_string(), disk.path().join("absent").display().to_string()));
    client.handshake("vnc", &params, WIDTH, HEIGHT).await.expect("handshake");
    client
        .wait_until_named("error for an unrecordable session", Duration::from_secs(10), |s| s.last_error().is_some())
        .await
        .unwrap();
    assert_eq!(client.last_error().unwrap().status, 512);
    assert!(strict.log_contents().contains("Session cannot be recorded"), "{}", strict.log_tail(30));
}
