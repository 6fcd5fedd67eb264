//! The HTTP entry end to end: guacr serves its web page, Debian's headless Chromium runs it with the real
//! guacamole-common-js, and sessions reach the real VNC peers and sshd through `/websocket-tunnel`. The refusal
//! tests speak WebSocket and HTTP directly, as an attacker would.
//!
//! Needs the peers (`scripts/peers.sh start`), Chromium and xclip (`scripts/peers.sh install chromium
//! xclip`) and a guacr built after `scripts/web-deps.sh` fetched guacamole-common-js; `scripts/test.sh`
//! does all three. Anything missing fails the test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use guacr_tests::browser::Browser;
use guacr_tests::peers::{self, SshPeer, VncPeer};
use guacr_tests::web::{self, sign_token, unix_now, Tunnel, ACCESS_KEY, LIMITED_KEY, TOKEN_KEY};
use guacr_tests::{artifact_dir, compare, x11_screenshot, GuacrProcess, RgbImage};
use serde_json::json;
use worker_ssh::font::Font;
use worker_ssh::palette::GUACD_PALETTE;

/// One browser at a time: each Chromium takes several hundred MB and a core while it starts.
static BROWSER: Mutex<()> = Mutex::new(());

const VIEWPORT: (u32, u32) = (1280, 1000);

struct Setup {
    guacr: GuacrProcess,
    http: SocketAddr,
    _dir: TempDir,
}

/// guacr with the HTTP entry on a free port and a configuration naming the three peers.
fn setup() -> Setup {
    setup_with(&[], "")
}

/// [`setup`] with more command-line arguments and more configuration (appended to the file).
fn setup_with(args: &[&str], extra_config: &str) -> Setup {
    let all = [peers::changing(), peers::static_screen(), peers::typing()];
    for peer in &all {
        peer.require_up();
    }
    let dir = TempDir::new("web");
    let config = web::write_config(&dir.0, &all).expect("writing the configuration");
    if !extra_config.is_empty() {
        let mut file = std::fs::OpenOptions::new().append(true).open(&config).unwrap();
        writeln!(file, "\n{extra_config}").unwrap();
    }
    let guacr = GuacrProcess::builder().http().arg("--config").arg(&config).args(args).start().expect("starting guacr");
    let http = guacr.http_addr().expect("HTTP entry");
    let (status, body) = http_get(http, "/vendor/guacamole-common.js", None);
    assert_eq!(
        status,
        200,
        "guacamole-common-js is not bundled in this guacr; run scripts/web-deps.sh and rebuild: {}",
        body.chars().take(200).collect::<String>()
    );
    Setup { guacr, http, _dir: dir }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let path = std::env::temp_dir().join(format!("guacr-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connecting to the HTTP entry");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = bearer.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn token_for(peer: &VncPeer, expiry: u64) -> String {
    sign_token(
        TOKEN_KEY,
        &json!({
            "protocol": "vnc",
            "parameters": {"hostname": peer.host(), "port": peer.port().to_string(), "password": peer.password,
                           "disable-display-resize": "true"},
            "expiry": expiry,
        }),
    )
}

/// Opens the page on a named connection and waits until the remote desktop's first frame is drawn.
fn open_page(browser: &mut Browser, setup: &Setup, connection: &str) {
    let url = format!("http://{}/#key={ACCESS_KEY}&connection={connection}", setup.http);
    browser.open(&url, VIEWPORT.0, VIEWPORT.1).expect("opening the page");
    wait_connected(browser, setup);
}

fn wait_connected(browser: &mut Browser, setup: &Setup) {
    let connected = browser.wait_for(
        "the session to be connected with a 1024x768 display",
        "window.guacr && guacr.state === 3 && guacr.displaySize[0] === 1024 && guacr.displaySize[1] === 768",
        Duration::from_secs(20),
    );
    if let Err(e) = connected {
        panic!("{e:#}\nguacr log:\n{}", setup.guacr.log_tail(40));
    }
}

/// The remote display's rectangle in the viewport: (left, top, scale).
fn display_origin(browser: &mut Browser) -> (f64, f64, f64) {
    let v = browser
        .eval("(() => { const r = guacr.client.getDisplay().getElement().getBoundingClientRect(); return [r.left, r.top, guacr.scale]; })()")
        .expect("display rectangle");
    (v[0].as_f64().unwrap(), v[1].as_f64().unwrap(), v[2].as_f64().unwrap())
}

/// Waits until the part of the screenshot where the display is matches the X server's own screen.
fn wait_page_matches_x_server(browser: &mut Browser, display: &str, name: &str) -> RgbImage {
    let (left, top, scale) = display_origin(browser);
    assert_eq!(scale, 1.0, "a 1024x768 desktop fits the {VIEWPORT:?} viewport unscaled");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shot = browser.screenshot().expect("screenshot");
        let ours = shot.crop(left as u32, top as u32, 1024, 768);
        let truth = x11_screenshot(display).expect("xwd screenshot");
        let diff = compare(&ours, &truth, 8);
        if diff.fraction < 0.001 {
            return shot;
        }
        if Instant::now() > deadline {
            shot.save_png(artifact_dir().join(format!("web-{name}-page.png"))).unwrap();
            truth.save_png(artifact_dir().join(format!("web-{name}-xserver.png"))).unwrap();
            panic!(
                "the page's display differs from the X server's screen: {diff}; images in {}; console:\n{}",
                artifact_dir().display(),
                browser.console()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn page_shows_the_remote_desktop_through_the_websocket_tunnel() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let setup = setup();
    let mut browser = Browser::start().expect("starting chromium");
    open_page(&mut browser, &setup, "static");
    let peer = peers::static_screen();
    let shot = wait_page_matches_x_server(&mut browser, &peer.display, "static");
    // The plaid is really there, in the page's pixels.
    let fg = shot.count_color(peers::STATIC_ROOT_FG, 8);
    let bg = shot.count_color(peers::STATIC_ROOT_BG, 8);
    assert!(fg > 10_000 && bg > 10_000, "plaid pixels in the screenshot: {fg} #d03020, {bg} #2040c0");
    // The page says so in words too.
    let state = browser.eval("document.getElementById('state').textContent").unwrap();
    assert_eq!(state, "Connected");

    // The session is counted.
    let (status, metrics) = http_get(setup.http, "/metrics", None);
    assert_eq!(status, 200);
    assert!(metrics.contains("guacr_sessions_active{protocol=\"vnc\"} 1\n"), "{metrics}");
    let frames: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("guacr_frames_total "))
        .and_then(|v| v.parse().ok())
        .expect("guacr_frames_total");
    assert!(frames >= 1, "{metrics}");
    assert!(metrics.contains("guacr_encode_seconds_count "), "{metrics}");
    shot.save_png(artifact_dir().join("web-static-page.png")).unwrap();

    // Disconnect, then the reconnect button opens the same connection again.
    browser.eval("document.getElementById('disconnect').click()").unwrap();
    assert_eq!(browser.eval("document.getElementById('overlay-text').textContent").unwrap(), "You disconnected.");
    browser.eval("document.getElementById('reconnect').click()").unwrap();
    wait_connected(&mut browser, &setup);
    wait_page_matches_x_server(&mut browser, &peer.display, "static-reconnected");
    let (_, metrics) = http_get(setup.http, "/metrics", None);
    assert!(metrics.contains("guacr_sessions_total{protocol=\"vnc\"} 2\n"), "{metrics}");
}

#[test]
fn keys_typed_in_the_page_reach_the_xterm() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let setup = setup();
    let peer = peers::typing();
    let mut browser = Browser::start().expect("starting chromium");
    open_page(&mut browser, &setup, "typing");
    let (left, top, _) = display_origin(&mut browser);
    // No window manager on :53: keyboard focus follows the pointer, so point into the xterm first.
    let (x, y) = peers::typing_pointer();
    browser.mouse_move(left + x as f64, top + y as f64).unwrap();
    browser.mouse_move(left + x as f64 + 1.0, top + y as f64).unwrap();
    browser
        .wait_for(
            "keyboard focus on the display",
            "document.activeElement.id === 'display-area'",
            Duration::from_secs(5),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let colour = [0x20 + (nanos % 180) as u8, 0x60 + (nanos / 11 % 120) as u8, 0xa0];
    let hex = format!("#{:02x}{:02x}{:02x}", colour[0], colour[1], colour[2]);
    browser.type_text(&format!("xsetroot -solid '{hex}'\n"), Duration::from_millis(15)).unwrap();

    // The X server ran it ...
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let truth = x11_screenshot(&peer.display).expect("xwd screenshot");
        if truth.pixel(1000, 740).iter().zip(colour).all(|(a, b)| a.abs_diff(b) <= 4) {
            break;
        }
        if Instant::now() > deadline {
            truth.save_png(artifact_dir().join("web-typing-xserver.png")).unwrap();
            panic!(
                "the typed command did not run (root is {:?}, want {hex}); console:\n{}",
                truth.pixel(1000, 740),
                browser.console()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // ... and the page shows the new colour, and exactly what the X server shows.
    let shot = wait_page_matches_x_server(&mut browser, &peer.display, "typing");
    let pixel = shot.pixel((left + 1000.0) as u32, (top + 740.0) as u32);
    assert!(pixel.iter().zip(colour).all(|(a, b)| a.abs_diff(b) <= 4), "page pixel {pixel:?}, want {hex}");
}

/// A named connection `shell` to the sshd peer, with the test user's password.
fn ssh_connection(peer: &SshPeer) -> String {
    format!(
        "[[connections]]\nname = \"shell\"\nprotocol = \"ssh\"\ndescription = \"sshd peer\"\n\
         parameters = {{ hostname = \"{}\", port = {}, username = \"{}\", password = \"{}\" }}\n",
        peer.host(),
        peer.port(),
        peer.username,
        peer.password
    )
}

/// The bounding box `(x, y, w, h)` of the pixels of exactly `color`, and how many there are.
fn color_box(shot: &RgbImage, color: [u8; 3]) -> Option<((u32, u32, u32, u32), usize)> {
    let (mut x0, mut y0, mut x1, mut y1, mut n) = (u32::MAX, u32::MAX, 0, 0, 0);
    for y in 0..shot.height {
        for x in 0..shot.width {
            if shot.pixel(x, y) == color {
                (x0, y0, x1, y1, n) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y), n + 1);
            }
        }
    }
    (n > 0).then(|| ((x0, y0, x1 - x0 + 1, y1 - y0 + 1), n))
}

#[test]
fn page_opens_an_ssh_session_and_typed_text_reaches_the_shell() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let peer = peers::ssh();
    peer.require_up();
    let setup = setup_with(&[], &ssh_connection(&peer));
    let mut browser = Browser::start().expect("starting chromium");
    let url = format!("http://{}/#key={ACCESS_KEY}&connection=shell", setup.http);
    browser.open(&url, VIEWPORT.0, VIEWPORT.1).expect("opening the page");
    let connected = browser.wait_for(
        "the SSH session to be connected",
        "window.guacr && guacr.state === 3 && guacr.displaySize[0] > 0 && guacr.displaySize[1] > 0",
        Duration::from_secs(20),
    );
    if let Err(e) = connected {
        panic!("{e:#}\nconsole:\n{}\nguacr log:\n{}", browser.console(), setup.guacr.log_tail(40));
    }
    let title = browser.eval("document.getElementById('title').textContent").unwrap();
    assert!(title.as_str().unwrap().starts_with("shell (ssh)"), "{title}");
    // The terminal fills the page's display area (the page asked for that size), unscaled.
    let size = browser.eval("guacr.displaySize").unwrap();
    let area = browser
        .eval(
            "(() => { const a = document.getElementById('display-area'); return [a.clientWidth, a.clientHeight]; })()",
        )
        .unwrap();
    assert_eq!(size, area, "terminal size vs the page's display area");
    let (left, top, scale) = display_origin(&mut browser);
    assert_eq!(scale, 1.0);
    let (width, height) = (size[0].as_u64().unwrap() as u32, size[1].as_u64().unwrap() as u32);

    // The terminal is visible: the shell's prompt (foreground pixels) on guacd's black background.
    let (bg, fg, red) = (GUACD_PALETTE[0], GUACD_PALETTE[7], GUACD_PALETTE[1]);
    let font = Font::new(12, 96).unwrap();
    let (cw, ch) = (font.cell_width, font.cell_height);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shot = browser.screenshot().expect("screenshot");
        let terminal = shot.crop(left as u32, top as u32, width, height);
        let background = terminal.count_color(bg, 0);
        let prompt = terminal.crop(0, 0, width, ch).count_color(fg, 0);
        if background > (width * height) as usize * 9 / 10 && prompt > 20 {
            assert_eq!(shot.count_color(red, 0), 0, "no red before the command");
            break;
        }
        if Instant::now() > deadline {
            shot.save_png(artifact_dir().join("web-ssh-no-prompt.png")).unwrap();
            panic!(
                "no terminal with a prompt in the page ({background} background, {prompt} prompt pixels); \
                 screenshot in {}; console:\n{}\nguacr log:\n{}",
                artifact_dir().display(),
                browser.console(),
                setup.guacr.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    browser
        .wait_for(
            "keyboard focus on the display",
            "document.activeElement.id === 'display-area'",
            Duration::from_secs(5),
        )
        .unwrap();
    // Let the prompt settle (bash draws it in pieces).
    std::thread::sleep(Duration::from_millis(300));

    // Typed through the page's keyboard, run by the shell: ten red cells at the top left after `clear`.
    browser.type_text("clear; printf '\\033[41m          \\033[0m\\n'\n", Duration::from_millis(15)).unwrap();
    // (The display's CSS position may be fractional: its first device pixel is within one of it.)
    let want = (left, top, 10 * cw, ch);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shot = browser.screenshot().expect("screenshot");
        let found = color_box(&shot, red);
        let placed = |(x, y, w, h): (u32, u32, u32, u32)| {
            (x as f64 - left).abs() <= 1.0 && (y as f64 - top).abs() <= 1.0 && (w, h) == (10 * cw, ch)
        };
        if found.is_some_and(|(area, n)| placed(area) && n == (10 * cw * ch) as usize) {
            shot.save_png(artifact_dir().join("web-ssh-page.png")).unwrap();
            break;
        }
        if Instant::now() > deadline {
            shot.save_png(artifact_dir().join("web-ssh-page.png")).unwrap();
            panic!(
                "no red block of 10 cells ({cw}x{ch}) at the display's top left {want:?}: red pixels {found:?}; \
                 screenshot in {}; console:\n{}\nguacr log:\n{}",
                artifact_dir().display(),
                browser.console(),
                setup.guacr.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = http_get(setup.http, "/metrics", None);
    assert!(metrics.contains("guacr_sessions_active{protocol=\"ssh\"} 1\n"), "{metrics}");
    // The page's disconnect ends it.
    browser.eval("document.getElementById('disconnect').click()").unwrap();
    assert_eq!(browser.eval("document.getElementById('overlay-text').textContent").unwrap(), "You disconnected.");
}

/// An attempt on the TCP entry: `true` when guacr answers `select` with `args`, `false` on `error` 513.
fn tcp_admitted(guacr: &GuacrProcess) -> bool {
    let mut stream = TcpStream::connect(guacr.addr()).expect("connecting to the TCP entry");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"6.select,3.ssh;").unwrap();
    let mut decoder = guac_proto::Decoder::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(instruction) = decoder.decode().expect("guacr speaks the protocol") {
            match instruction.opcode() {
                "args" => return true,
                "error" => {
                    assert_eq!(instruction.arg(1), Some("513"), "busy is 513: {instruction:?}");
                    return false;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let n = stream.read(&mut buf).expect("an answer from the TCP entry");
        assert!(n > 0, "the TCP entry closed without an answer");
        decoder.feed(&buf[..n]);
    }
}

#[test]
fn websocket_tunnels_share_the_connection_limits() {
    let peer = peers::ssh();
    peer.require_up();
    let setup = setup_with(&["--max-connections", "1"], "");
    let token = sign_token(
        TOKEN_KEY,
        &json!({
            "protocol": "ssh",
            "parameters": {"hostname": peer.host(), "port": peer.port().to_string(), "username": peer.username,
                           "password": peer.password},
            "expiry": unix_now() + 300,
        }),
    );
    let query = format!("token={}&width=800&height=600", web::query_escape(&token));

    // One SSH session through the tunnel holds the only place ...
    let mut held = Tunnel::open(setup.http, &query).expect("WebSocket upgrade");
    let mut transcript = web::TunnelTranscript::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !transcript.frames.iter().any(|f| f.contains("5.ready,")) {
        assert!(Instant::now() < deadline, "the first tunnel was not admitted: {transcript:?}");
        held.next_frame(Duration::from_secs(10), &mut transcript).unwrap().expect("open");
    }

    // ... so a second tunnel is refused with 513 before anything starts, and so is the TCP entry.
    let workers = setup.guacr.worker_pids().len();
    let mut second = Tunnel::open(setup.http, &query).expect("WebSocket upgrade");
    let refused = second.read_to_close(Duration::from_secs(10)).expect("closed by the server");
    assert_eq!(refused.close_status(), Some(513), "{refused:?}");
    assert!(refused.frames.is_empty(), "nothing before the refusal: {refused:?}");
    assert!(!tcp_admitted(&setup.guacr), "the TCP entry counts the tunnel's place");
    assert_eq!(setup.guacr.worker_pids().len(), workers, "no worker for a refused tunnel");
    let (_, metrics) = http_get(setup.http, "/metrics", None);
    assert!(metrics.contains("guacr_tunnel_refusals_total{status=\"513\"} 1\n"), "{metrics}");

    // The held session ends; its place is free again for a tunnel.
    held.send("10.disconnect;").unwrap();
    let rest = held.read_to_close(Duration::from_secs(10)).unwrap();
    assert_eq!(rest.close_status(), Some(0), "{:?}", rest.close);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Tunnel::open(setup.http, &query).expect("WebSocket upgrade");
        let mut transcript = web::TunnelTranscript::default();
        match again.next_frame(Duration::from_secs(10), &mut transcript).unwrap() {
            Some(first) => {
                assert!(first.starts_with("0.,36."), "{first:?}");
                break;
            }
            None => {
                assert_eq!(transcript.close_status(), Some(513), "{transcript:?}");
                assert!(Instant::now() < deadline, "the freed place was not given back");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// `xclip` on the peer's X display: the X server's own clipboard, the truth for the clipboard test.
fn xclip(display: &str) -> std::process::Command {
    let mut command = std::process::Command::new("xclip");
    command.args(["-selection", "clipboard", "-display", display]);
    command
}

#[test]
fn clipboard_panel_round_trips_text() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let setup = setup();
    let peer = peers::static_screen();
    let mut browser = Browser::start().expect("starting chromium");
    open_page(&mut browser, &setup, "static");
    browser.eval("document.getElementById('toggle-clipboard').click()").unwrap();
    assert_eq!(browser.eval("document.getElementById('clipboard-panel').hidden").unwrap(), false);

    // Page → remote: typed into the panel (an `input` event, as typing or pasting gives), then the X
    // server's clipboard holds it (the VNC server owns the selection while our session lasts).
    let outgoing = format!("from the page {}", std::process::id());
    browser
        .eval(&format!(
            "(() => {{ const t = document.getElementById('clipboard-text'); t.value = {}; \
             t.dispatchEvent(new Event('input')); }})()",
            json!(outgoing)
        ))
        .unwrap();
    browser
        .wait_for(
            "the panel to send",
            "document.getElementById('clipboard-status').textContent === 'Sent to the remote desktop.'",
            Duration::from_secs(5),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = xclip(&peer.display).arg("-o").output().expect("running xclip (scripts/peers.sh install xclip)");
        if out.status.success() && out.stdout == outgoing.as_bytes() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the X clipboard on {} holds {:?} ({}), not the page's text",
            peer.display,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Remote → page: an X application copies; the panel shows it.
    let incoming = format!("from the remote side {}", std::process::id());
    let mut owner = xclip(&peer.display)
        .args(["-i", "-quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running xclip");
    owner.stdin.take().unwrap().write_all(incoming.as_bytes()).unwrap();
    let shown = browser.wait_for(
        "the remote clipboard in the panel",
        &format!("document.getElementById('clipboard-text').value === {}", json!(incoming)),
        Duration::from_secs(10),
    );
    let _ = owner.kill();
    let _ = owner.wait();
    shown.unwrap();
    let note = browser.eval("document.getElementById('clipboard-status').textContent").unwrap();
    assert_eq!(note, "Received from the remote desktop.");
}

#[test]
fn page_explains_a_refused_link_in_plain_words() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let setup = setup();
    let mut browser = Browser::start().expect("starting chromium");
    let expired = token_for(&peers::static_screen(), unix_now() - 60);
    browser.open(&format!("http://{}/#token={expired}", setup.http), VIEWPORT.0, VIEWPORT.1).unwrap();
    browser
        .wait_for("the error to be shown", "window.guacr && guacr.error && guacr.error.code", Duration::from_secs(15))
        .unwrap();
    assert_eq!(browser.eval("guacr.error.code").unwrap(), 769);
    assert_eq!(browser.eval("document.getElementById('overlay').hidden").unwrap(), false);
    let text = browser.eval("document.getElementById('overlay-text').textContent").unwrap();
    assert!(text.as_str().unwrap().starts_with("Not authorised"), "{text}");
    assert!(setup.guacr.worker_pids().is_empty());
    assert!(!setup.guacr.log_contents().contains("Worker started"));
}

/// A refused tunnel: closed with `status` as the reason, no instruction sent, nothing spawned.
fn assert_refused(setup: &Setup, query: &str, status: u16) {
    let mut tunnel = Tunnel::open(setup.http, query).expect("WebSocket upgrade");
    let transcript = tunnel.read_to_close(Duration::from_secs(10)).expect("closed by the server");
    assert_eq!(transcript.close_status(), Some(status), "{query}: {transcript:?}");
    assert!(transcript.frames.is_empty(), "nothing before the refusal: {transcript:?}");
    assert!(setup.guacr.worker_pids().is_empty(), "no worker for a refused tunnel");
    assert!(!setup.guacr.log_contents().contains("Worker started"), "{}", setup.guacr.log_tail(20));
}

#[test]
fn expired_token_is_refused_before_anything_starts() {
    let setup = setup();
    let token = token_for(&peers::static_screen(), unix_now() - 1);
    assert_refused(&setup, &format!("token={token}"), 769);
}

#[test]
fn tampered_token_is_refused_before_anything_starts() {
    let setup = setup();
    let peer = peers::static_screen();
    let genuine = token_for(&peer, unix_now() + 300);
    let (_, mac) = genuine.split_once('.').unwrap();
    // Same signature, payload changed to another desktop.
    let forged_body = token_for(&peers::typing(), unix_now() + 300).split_once('.').unwrap().0.to_string();
    assert_refused(&setup, &format!("token={forged_body}.{mac}"), 769);
    // Signed with a key guacr does not have.
    let wrong_key = sign_token(
        "somebody-elses-key-0123456789abcdef",
        &json!({"protocol": "vnc", "parameters": {"hostname": "127.0.0.1", "port": "5902"}, "expiry": unix_now() + 300}),
    );
    assert_refused(&setup, &format!("token={wrong_key}"), 769);
    assert_refused(&setup, "token=garbage", 769);
    assert_refused(&setup, "", 769);
}

#[test]
fn the_query_cannot_change_the_target() {
    let setup = setup();
    let token = token_for(&peers::static_screen(), unix_now() + 300);
    for extra in ["hostname=127.0.0.1&port=5903", "port=5903", "password=x", "read-only=true", "protocol=ssh"] {
        assert_refused(&setup, &format!("token={token}&{extra}"), 771);
    }
    assert_refused(&setup, &format!("connection=static&key={ACCESS_KEY}&port=5903"), 771);
    // A user may open only the connections the configuration gives them.
    assert_refused(&setup, &format!("connection=typing&key={LIMITED_KEY}"), 771);
    assert_refused(&setup, "connection=static&key=not-the-key-0123456789", 769);
    let (_, metrics) = http_get(setup.http, "/metrics", None);
    assert!(metrics.contains("guacr_tunnel_refusals_total{status=\"771\"} 7\n"), "{metrics}");
}

#[test]
fn tunnel_follows_the_java_tunnel_conventions() {
    let setup = setup();
    let peer = peers::static_screen();
    let token = token_for(&peer, unix_now() + 300);
    let mut tunnel = Tunnel::open(setup.http, &format!("token={}&width=1024&height=768", web::query_escape(&token)))
        .expect("WebSocket upgrade");
    let mut transcript = web::TunnelTranscript::default();
    let first = tunnel.next_frame(Duration::from_secs(10), &mut transcript).unwrap().expect("a first frame");
    // `0.,36.<uuid>;`: the internal opcode with the tunnel's UUID, alone.
    let uuid = first.strip_prefix("0.,36.").and_then(|r| r.strip_suffix(';')).unwrap_or_else(|| panic!("{first:?}"));
    assert_eq!(uuid.len(), 36);
    assert_eq!(uuid.matches('-').count(), 4, "{uuid}");
    // Echoed pings.
    let ping = "0.,4.ping,13.1767225600123;";
    tunnel.send(ping).unwrap();
    let mut synced = false;
    let mut pong = false;
    let mut ready = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(synced && pong) {
        assert!(Instant::now() < deadline, "no ping echo and frame: {transcript:?}");
        let frame = tunnel.next_frame(Duration::from_secs(10), &mut transcript).unwrap().expect("open");
        // Whole instructions in every frame: it decodes completely.
        let mut decoder = guac_proto::Decoder::new();
        decoder.feed(frame.as_bytes());
        let mut consumed = 0;
        while let Some(instruction) = decoder.decode().unwrap_or_else(|e| panic!("bad frame {frame:?}: {e}")) {
            consumed += instruction.as_bytes().len();
            match instruction.opcode() {
                "" => {
                    assert_eq!(instruction.as_bytes().as_ref(), ping.as_bytes());
                    pong = true;
                }
                "ready" => {
                    assert!(instruction.arg(0).is_some_and(|id| id.starts_with('$') && id.len() == 37));
                    ready = true;
                }
                "sync" => {
                    assert!(ready, "ready comes before the first frame");
                    synced = true;
                    let timestamp = instruction.arg(0).unwrap().to_string();
                    tunnel.send(&format!("4.sync,{}.{timestamp};", timestamp.len())).unwrap();
                }
                _ => {}
            }
        }
        assert_eq!(consumed, frame.len(), "frame holds only whole instructions: {frame:?}");
    }
    // A client's `disconnect` ends the session: the socket closes with status 0.
    tunnel.send("10.disconnect;").unwrap();
    let rest = tunnel.read_to_close(Duration::from_secs(10)).unwrap();
    assert_eq!(rest.close_status(), Some(0), "{:?}", rest.close);
}

#[test]
fn connection_list_health_and_metrics() {
    let setup = setup();
    let (status, body) = http_get(setup.http, "/healthz", None);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _) = http_get(setup.http, "/api/connections", None);
    assert_eq!(status, 401);
    let (status, _) = http_get(setup.http, "/api/connections", Some("wrong-key-0123456789"));
    assert_eq!(status, 401);
    let (status, body) = http_get(setup.http, "/api/connections", Some(LIMITED_KEY));
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["user"], "limited");
    let names: Vec<&str> =
        list["connections"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["static"]);
    assert!(!body.contains("guacpass"), "parameters never leave guacr: {body}");
    let (_, body) = http_get(setup.http, "/api/connections", Some(ACCESS_KEY));
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["connections"].as_array().unwrap().len(), 3);
    let (status, metrics) = http_get(setup.http, "/metrics", None);
    assert_eq!(status, 200);
    for family in [
        "# TYPE guacr_sessions_active gauge",
        "# TYPE guacr_frames_total counter",
        "# TYPE guacr_client_sent_bytes_total counter",
        "# TYPE guacr_encode_seconds histogram",
        "guacr_encode_seconds_bucket{le=\"+Inf\"} 0",
        "guacr_worker_exits_total{cause=\"crashed\"} 0",
    ] {
        assert!(metrics.contains(family), "{family} missing from:\n{metrics}");
    }
    let (status, page) = http_get(setup.http, "/", None);
    assert_eq!(status, 200);
    assert!(page.contains("<script type=\"module\" src=\"app.js\">"), "{page}");
    let (status, licence) = http_get(setup.http, "/vendor/guacamole-common-js/LICENSE", None);
    assert_eq!(status, 200);
    assert!(licence.contains("Apache License"), "the licence ships with the library");
}

/// A signed token whose `join` names a live connection ID joins that session through the tunnel (the
/// same `session::join` as the TCP entry's `select $<id>`): `ready` names the joined connection, the
/// joiner gets the owner's screen at once, and the owner (on the TCP entry) is told who joined and left.
/// A join token for an ID that is not live gets 516, as on the TCP entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_joins_a_live_session_through_the_tunnel() {
    use guacr_tests::{ClientState, GuacClient};

    let setup = setup();
    let peer = peers::static_screen();
    let mut owner = GuacClient::connect(setup.guacr.addr()).await.expect("connecting to guacr");
    let id = owner.handshake("vnc", &peer.vnc_params(), 1024, 768).await.expect("owner handshake");
    owner
        .wait_until_named("owner's first frame", Duration::from_secs(15), |s| {
            s.frames >= 1 && s.display.size() == (1024, 768)
        })
        .await
        .expect("owner's first frame");
    let join_token = |target: &str| {
        let payload = json!({"protocol": "vnc", "parameters": {}, "expiry": unix_now() + 300,
                             "read_only": true, "join": target});
        format!("token={}&width=1024&height=768", web::query_escape(&sign_token(TOKEN_KEY, &payload)))
    };

    let http = setup.http;
    let query = join_token(&id);
    let expected = id.clone();
    let received = tokio::task::spawn_blocking(move || {
        let mut tunnel = Tunnel::open(http, &query).expect("WebSocket upgrade");
        let mut transcript = web::TunnelTranscript::default();
        let mut text = String::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        // Up to the end of the first frame: the state dump.
        while !text.contains("4.sync,") {
            assert!(Instant::now() < deadline, "no dump through the tunnel: {transcript:?}");
            let frame = tunnel.next_frame(Duration::from_secs(10), &mut transcript).unwrap();
            text.push_str(&frame.unwrap_or_else(|| panic!("the tunnel closed: {transcript:?}")));
        }
        assert!(
            text.contains(&format!("5.ready,{}.{expected};", expected.len())),
            "{}",
            text.chars().take(200).collect::<String>()
        );
        // The joiner leaves.
        tunnel.send("10.disconnect;").unwrap();
        let _ = tunnel.read_to_close(Duration::from_secs(10));
        text
    })
    .await
    .unwrap();
    let joined = ClientState::replay(received.as_bytes());
    assert_eq!(joined.image_errors, Vec::<String>::new());
    let diff = compare(&joined.screenshot(), &owner.screenshot(), 8);
    if diff.fraction > 0.0005 {
        joined.screenshot().save_png(artifact_dir().join("web-join-joiner.png")).unwrap();
        owner.screenshot().save_png(artifact_dir().join("web-join-owner.png")).unwrap();
        panic!("the joiner's dump differs from the owner's screen: {diff}; images in {}", artifact_dir().display());
    }
    owner
        .wait_until_named("msg joined and left", Duration::from_secs(10), |s| s.count("msg") >= 2)
        .await
        .expect("the owner is told");
    assert!(owner.last_error().is_none() && !owner.is_closed(), "the joiner's leaving does not end the session");

    // Not live (any more, or never): 516, nothing spawned.
    let query = join_token("$00000000-0000-0000-0000-000000000000");
    let refused = tokio::task::spawn_blocking(move || {
        Tunnel::open(http, &query).expect("WebSocket upgrade").read_to_close(Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(refused.close_status(), Some(516), "{:?}", refused.close);
    owner.disconnect().await.unwrap();
}
