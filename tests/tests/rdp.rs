//! guacr end to end against real RDP servers (started by `scripts/peers.sh start`): freerdp-shadow on
//! Xvfb :55 (port 3390 with `-auth`, TLS or standard RDP security; port 3391 NLA only against a SAM
//! file) and xrdp with an Xorg session (port 3389). A Guacamole client selects `rdp` with guacd's
//! parameter names and checks what a user would see against the X server's own screen.

use std::time::{Duration, Instant};

use guacr_tests::client::HandshakeOptions;
use guacr_tests::peers::{self, RdpPeer};
use guacr_tests::{artifact_dir, compare, x11_screenshot, GuacClient, GuacrProcess, RgbImage};

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;

/// Tests that use one desktop take turns: typing, resizing and freerdp-shadow's pointer updates (which
/// a concurrent connection to the same X display can disturb) need it to themselves.
static SHADOW_DESKTOP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static XRDP_DESKTOP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn guacr() -> GuacrProcess {
    GuacrProcess::start().expect("starting guacr")
}

async fn open(guacr: &GuacrProcess, peer: &RdpPeer, extra: &[(&str, &str)]) -> GuacClient {
    open_sized(guacr, peer, extra, WIDTH, HEIGHT).await
}

async fn open_sized(guacr: &GuacrProcess, peer: &RdpPeer, extra: &[(&str, &str)], w: u32, h: u32) -> GuacClient {
    peer.require_up();
    let mut client = GuacClient::connect(guacr.addr()).await.expect("connecting to guacr");
    let mut params = peer.rdp_params();
    for (k, v) in extra {
        params.retain(|(name, _)| name != k);
        params.push((k.to_string(), v.to_string()));
    }
    client.handshake("rdp", &params, w, h).await.expect("handshake");
    client
}

async fn wait_first_frame(client: &GuacClient, guacr: &GuacrProcess, size: (u32, u32)) {
    let waited = client
        .wait_until_named("first full frame", Duration::from_secs(20), |s| {
            s.last_error().is_some() || (s.frames >= 1 && s.display.size() == size)
        })
        .await;
    if let Some(error) = client.last_error() {
        panic!("RDP session failed: {error:?}; guacr log:\n{}", guacr.log_tail(40));
    }
    waited.unwrap_or_else(|e| panic!("no first frame: {e}; guacr log:\n{}", guacr.log_tail(40)));
}

async fn wait_error(client: &GuacClient) -> guacr_tests::client::ServerError {
    client
        .wait_until_named("error", Duration::from_secs(20), |s| s.last_error().is_some())
        .await
        .expect("an error instruction");
    client.last_error().expect("error")
}

/// Waits until the client's image matches the X server's own screenshot within tolerance.
async fn wait_matches_x_server(client: &GuacClient, display: &str, name: &str) -> RgbImage {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ours = client.screenshot();
        // While the server resizes its screen (RandR), xwd can fail with BadMatch: try again.
        let truth = match x11_screenshot(display) {
            Ok(truth) => truth,
            Err(e) if Instant::now() > deadline => panic!("xwd screenshot: {e}"),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(150)).await;
                continue;
            }
        };
        let diff = compare(&ours, &truth, 8);
        if diff.fraction < 0.001 {
            return ours;
        }
        if Instant::now() > deadline {
            ours.save_png(artifact_dir().join(format!("rdp-{name}-client.png"))).unwrap();
            truth.save_png(artifact_dir().join(format!("rdp-{name}-xserver.png"))).unwrap();
            panic!("client image differs from the X server's: {diff}; images in {}", artifact_dir().display());
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Not a trivially matching blank image: the plaid root (and the xterm) are there.
fn assert_plaid(image: &RgbImage) {
    assert_plaid_at_least(image, 10_000);
}

/// [`assert_plaid`] for a smaller desktop, where the xterm hides more of the root.
fn assert_plaid_at_least(image: &RgbImage, pixels: usize) {
    assert!(image.count_color(peers::STATIC_ROOT_FG, 8) > pixels, "plaid foreground missing");
    assert!(image.count_color(peers::STATIC_ROOT_BG, 8) > pixels, "plaid background missing");
}

/// Types a command that paints the X root a fresh colour and waits until the client shows it.
async fn type_and_see(client: &GuacClient, display: &str, name: &str) {
    type_and_see_sized(client, display, name, (WIDTH, HEIGHT)).await
}

/// [`type_and_see`] on a desktop of `size` (the root colour is probed near its bottom-right corner).
async fn type_and_see_sized(client: &GuacClient, display: &str, name: &str, (w, h): (u32, u32)) {
    let (px, py) = (w - 24, h - 28);
    // No window manager on :55: keyboard focus follows the pointer into the xterm at +0+0.
    client.send_mouse(200, 150, 0).await.unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let colour = [0x10 + (nanos % 200) as u8, 0xa0, 0x40 + (nanos / 7 % 150) as u8];
    let hex = format!("#{:02x}{:02x}{:02x}", colour[0], colour[1], colour[2]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.type_text(&format!("clear; echo Typed-Through-RDP; xsetroot -solid '{hex}'\n")).await.unwrap();
    client
        .wait_until_named("root window repainted by the typed command", Duration::from_secs(15), move |s| {
            s.display.pixel(px, py).is_some_and(|p| p[..3].iter().zip(colour).all(|(a, b)| a.abs_diff(b) <= 4))
        })
        .await
        .expect("typed command took effect");
    let ours = wait_matches_x_server(client, display, name).await;
    let text = ours.crop(0, 0, 400, 60).iter_pixels().filter(|p| p.iter().all(|c| *c >= 0xc0)).count();
    assert!(text > 50, "no text visible in the xterm's first lines");
    // Put the plaid back for the pixel tests.
    client.type_text("xsetroot -mod 16 16 -fg '#d03020' -bg '#2040c0'; clear\n").await.unwrap();
    client
        .wait_until_named("plaid restored", Duration::from_secs(15), |s| {
            s.display.pixel(px, py).is_some_and(|p| p[..3] != colour)
        })
        .await
        .expect("plaid restored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_speaks_guacd_1_6_rdp() {
    let _desktop = SHADOW_DESKTOP.lock().await;
    let guacr = guacr();
    let peer = peers::rdp_shadow();
    let client = open(&guacr, &peer, &[("security", "tls"), ("ignore-cert", "true")]).await;
    let names = client.arg_names().expect("args received");
    let expected: Vec<String> = include_str!("../../supervisor/src/args/rdp.txt").lines().map(str::to_string).collect();
    assert_eq!(names.len(), 90);
    assert_eq!(names, expected, "args must list guacd 1.6's rdp parameter names in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_over_tls_matches_the_x_display() {
    let _desktop = SHADOW_DESKTOP.lock().await;
    let guacr = guacr();
    let client = open(&guacr, &peers::rdp_shadow(), &[("security", "tls"), ("ignore-cert", "true")]).await;
    wait_first_frame(&client, &guacr, (WIDTH, HEIGHT)).await;
    let ours = wait_matches_x_server(&client, &peers::rdp_shadow_display(), "shadow-tls").await;
    assert_plaid(&ours);
    // Moving onto the xterm changes the X cursor (an I-beam), which the server sends as a pointer. In one
    // run of the whole suite freerdp-shadow sent no pointer for that change, though the moves arrived (the
    // xterm redrew its focused text cursor): the pointer goes off the xterm and back until one arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        client.send_mouse(600, 600, 0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.send_mouse(200, 150, 0).await.unwrap();
        match client.wait_until_named("cursor", Duration::from_secs(2), |s| s.display.cursor.is_some()).await {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
    }
    panic!("the server's pointer never reached the client as its cursor in 15 s: {last:?}");
}

/// Sound is not tested end to end: none of the harness's servers plays any (xrdp needs
/// pulseaudio-module-xrdp, which Debian 12 does not package; freerdp-shadow's X11 mode has no audio
/// source). freerdp-shadow does open the RDPSND channel, so this checks that a client that plays
/// audio/L16 gets the channel negotiated and a working session, with no `audio` stream as nothing plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_negotiates_the_sound_channel_for_a_client_that_plays_audio() {
    let _desktop = SHADOW_DESKTOP.lock().await;
    let guacr = guacr();
    let peer = peers::rdp_shadow();
    peer.require_up();
    let mut client = GuacClient::connect(guacr.addr()).await.expect("connecting to guacr");
    let mut params = peer.rdp_params();
    params.retain(|(name, _)| name != "security" && name != "ignore-cert");
    params.extend([("security".to_string(), "tls".to_string()), ("ignore-cert".into(), "true".into())]);
    let mut opts = HandshakeOptions::new("rdp").params(&params).size(WIDTH, HEIGHT);
    opts.audio = vec!["audio/L8".into(), "audio/L16".into()];
    client.handshake_with(&opts).await.expect("handshake");
    wait_first_frame(&client, &guacr, (WIDTH, HEIGHT)).await;
    assert_plaid(&wait_matches_x_server(&client, &peers::rdp_shadow_display(), "shadow-audio").await);
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(guacr.log_path()).unwrap_or_default();
        if log.contains("RDP server opened the sound channel") || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        log.contains("RDP server opened the sound channel"),
        "freerdp-shadow never opened RDPSND; guacr log:\n{}",
        guacr.log_tail(40)
    );
    type_and_see(&client, &peers::rdp_shadow_display(), "shadow-audio-typing").await;
    assert!(client.last_error().is_none(), "{:?}", client.last_error());
    assert_eq!(client.state().count("audio"), 0, "freerdp-shadow plays no sound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_over_standard_rdp_security_matches_the_x_display() {
    let _desktop = SHADOW_DESKTOP.lock().await;
    let guacr = guacr();
    let client = open(&guacr, &peers::rdp_shadow(), &[("security", "rdp")]).await;
    wait_first_frame(&client, &guacr, (WIDTH, HEIGHT)).await;
    assert_plaid(&wait_matches_x_server(&client, &peers::rdp_shadow_display(), "shadow-rdp").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_with_nla_logs_in_and_matches_the_x_display() {
    let _desktop = SHADOW_DESKTOP.lock().await;
    let guacr = guacr();
    let client = open(&guacr, &peers::rdp_shadow_nla(), &[("security", "nla"), ("ignore-cert", "true")]).await;
    wait_first_frame(&client, &guacr, (WIDTH, HEIGHT)).await;
    assert_plaid(&wait_matches_x_server(&client, &peers::rdp_shadow_display(), "shadow-nla").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_any_negotiates_with_each_shadow_server() {
    let _desktop = SHADOW_DESKTOP.lock().await;
    let guacr = guacr();
    for peer in [peers::rdp_shadow(), peers::rdp_shadow_nla()] {
        let client = open(&guacr, &peer, &[("security", "any"), ("ignore-cert", "true")]).await;
        wait_first_frame(&client, &guacr, (WIDTH, HEIGHT)).await;
        client.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nla_with_a_wrong_password_gives_769() {
    let _desktop = SHADOW_DESKTOP.lock().await;
    let guacr = guacr();
    let peer = peers::rdp_shadow_nla();
    let client = open(&guacr, &peer, &[("security", "nla"), ("ignore-cert", "true"), ("password", "wrongpw")]).await;
    let error = wait_error(&client).await;
    assert_eq!(error.status, 769, "{error:?}");
    client.wait_closed(Duration::from_secs(5)).await.expect("connection closed after the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_checked_unless_ignored_pinned_or_trusted_on_first_use() {
    let _desktop = SHADOW_DESKTOP.lock().await;
    let guacr = guacr();
    let peer = peers::rdp_shadow();
    // Strict by default: the self-signed certificate is refused, and the error names its fingerprint.
    let client = open(&guacr, &peer, &[("security", "tls")]).await;
    let error = wait_error(&client).await;
    assert_eq!(error.status, 515, "{error:?}");
    let fingerprint = error
        .message
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no fingerprint in {:?}", error.message))
        .trim_end_matches(|c: char| !c.is_ascii_hexdigit())
        .to_string();
    // The same certificate pinned with cert-fingerprints is accepted.
    let pinned = format!("sha256:{}, {fingerprint}", "00".repeat(32));
    let client = open(&guacr, &peer, &[("security", "tls"), ("cert-fingerprints", &pinned)]).await;
    wait_first_frame(&client, &guacr, (WIDTH, HEIGHT)).await;
    client.disconnect().await.unwrap();
    // A different pin is not enough.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let client = open(&guacr, &peer, &[("security", "tls"), ("cert-fingerprints", &wrong)]).await;
    assert_eq!(wait_error(&client).await.status, 515);
    // cert-tofu accepts a certificate it has not seen.
    let client = open(&guacr, &peer, &[("security", "tls"), ("cert-tofu", "true")]).await;
    wait_first_frame(&client, &guacr, (WIDTH, HEIGHT)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_text_appears_in_the_shadow_xterm() {
    let _desktop = SHADOW_DESKTOP.lock().await;
    let guacr = guacr();
    let client = open(&guacr, &peers::rdp_shadow(), &[("security", "tls"), ("ignore-cert", "true")]).await;
    wait_first_frame(&client, &guacr, (WIDTH, HEIGHT)).await;
    type_and_see(&client, &peers::rdp_shadow_display(), "shadow-typing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_rdp_server_gives_519() {
    let guacr = guacr();
    let port = 1;
    assert!(!guacr_tests::process::port_listening(port), "something listens on port 1");
    let mut client = GuacClient::connect(guacr.addr()).await.unwrap();
    let params = [("hostname", "127.0.0.1".to_string()), ("port", port.to_string())];
    client.handshake("rdp", &params, WIDTH, HEIGHT).await.expect("handshake");
    assert_eq!(wait_error(&client).await.status, 519);
}

/// Logs in to xrdp (the session's Xorg starts on first use) and returns the session's X display once
/// its xterm is on screen (keys typed before it maps would be lost).
async fn xrdp_session(client: &GuacClient, guacr: &GuacrProcess, size: (u32, u32)) -> String {
    wait_first_frame(client, guacr, size).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(display) = peers::xrdp_session_display() {
            if x11_screenshot(&display).is_ok_and(|shot| (shot.width, shot.height) == size) && xterm_viewable(&display)
            {
                return display;
            }
        }
        assert!(Instant::now() < deadline, "xrdp started no session of {size:?} for the test user");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrdp_over_tls_logs_in_matches_the_session_and_takes_typing() {
    let _desktop = XRDP_DESKTOP.lock().await;
    let guacr = guacr();
    let client = open(&guacr, &peers::rdp_xrdp(), &[("security", "tls"), ("ignore-cert", "true")]).await;
    let display = xrdp_session(&client, &guacr, (WIDTH, HEIGHT)).await;
    assert_plaid(&wait_matches_x_server(&client, &display, "xrdp-tls").await);
    type_and_see(&client, &display, "xrdp-typing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrdp_odd_width_desktop_is_not_sheared() {
    let _desktop = XRDP_DESKTOP.lock().await;
    let guacr = guacr();
    // xrdp pads bitmap rows to a multiple of 4 pixels; a decoder that ignores it shears the image.
    let (w, h) = (1021, 765);
    let client = open_sized(&guacr, &peers::rdp_xrdp(), &[("security", "tls"), ("ignore-cert", "true")], w, h).await;
    let display = xrdp_session(&client, &guacr, (w, h)).await;
    assert_plaid(&wait_matches_x_server(&client, &display, "xrdp-odd").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// xrdp runs at `crypt_level=fips` (scripts/peers.sh): standard RDP security with FIPS encryption, which
/// worker-rdp's own layer (`stdsec.rs`) adds under IronRDP. Login, the image and typing all cross it.
async fn xrdp_over_standard_rdp_security_with_fips_encryption_logs_in_and_takes_typing() {
    let _desktop = XRDP_DESKTOP.lock().await;
    let guacr = guacr();
    let client = open(&guacr, &peers::rdp_xrdp(), &[("security", "rdp")]).await;
    let display = xrdp_session(&client, &guacr, (WIDTH, HEIGHT)).await;
    assert_plaid(&wait_matches_x_server(&client, &display, "xrdp-rdp").await);
    type_and_see(&client, &display, "xrdp-rdp-typing").await;
}

/// xrdp's second listener allows only standard RDP security, at `crypt_level=high` (scripts/peers.sh):
/// `security=any` falls back to it, with RC4 128-bit. Over 4096 mouse moves first, so the client's RC4
/// key is updated (MS-RDPBCGR 5.3.7) before the typing that must still reach the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrdp_any_falls_back_to_standard_security_with_rc4_updates_keys_and_takes_typing() {
    let _desktop = XRDP_DESKTOP.lock().await;
    let guacr = guacr();
    let addr = std::env::var("GUACR_RDP_XRDP_RC4").unwrap_or_else(|_| "127.0.0.1:3392".into());
    let peer =
        RdpPeer { role: "xrdp-rc4", addr: addr.parse().expect("GUACR_RDP_XRDP_RC4 address"), ..peers::rdp_xrdp() };
    // Falling back to standard security gives up server authentication: only with `ignore-cert`.
    let refused = open(&guacr, &peer, &[("security", "any")]).await;
    let error = wait_error(&refused).await;
    assert_eq!(error.status, 515, "{error:?}");
    assert!(error.message.contains("security=rdp"), "{error:?}");
    let client = open(&guacr, &peer, &[("security", "any"), ("ignore-cert", "true")]).await;
    let display = xrdp_session(&client, &guacr, (WIDTH, HEIGHT)).await;
    assert_plaid(&wait_matches_x_server(&client, &display, "xrdp-rc4").await);
    for i in 0..4200u32 {
        client.send_mouse(100 + (i % 400) as i32, 100 + (i % 7) as i32, 0).await.unwrap();
    }
    type_and_see(&client, &display, "xrdp-rc4-typing").await;
}

/// The session's xterm (titled guacr-rdp-typing by scripts/peers.sh) is mapped and viewable.
fn xterm_viewable(display: &str) -> bool {
    std::process::Command::new("xwininfo")
        .args(["-display", display, "-name", "guacr-rdp-typing"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("IsViewable"))
}

/// Runs `xclip` against the xrdp session's display (as root, let in by the session's `xhost`).
fn xclip(display: &str, args: &[&str], input: Option<&str>) -> std::process::Output {
    use std::io::Write as _;
    // `xclip -i` stays in the background as the selection's owner: it must not hold our pipes.
    let (stdout, stderr) = match input {
        Some(_) => (std::process::Stdio::null(), std::process::Stdio::null()),
        None => (std::process::Stdio::piped(), std::process::Stdio::piped()),
    };
    let mut child = std::process::Command::new("timeout")
        .args(["5", "xclip", "-display", display, "-selection", "clipboard"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("running xclip (package xclip; scripts/test.sh installs it)");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(text) = input {
        stdin.write_all(text.as_bytes()).unwrap();
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrdp_clipboard_travels_both_ways() {
    let _desktop = XRDP_DESKTOP.lock().await;
    let guacr = guacr();
    let client = open(&guacr, &peers::rdp_xrdp(), &[("security", "tls"), ("ignore-cert", "true")]).await;
    let display = xrdp_session(&client, &guacr, (WIDTH, HEIGHT)).await;
    // Client → server: the user's text becomes the session's X clipboard (xrdp's chansrv asks us for it).
    let pasted = format!("guacr-paste-{}\nsecond line", std::process::id());
    client.send("clipboard", &["10", "text/plain"]).await.unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pasted.as_bytes());
    client.send("blob", &["10", &b64]).await.unwrap();
    client.send("end", &["10"]).await.unwrap();
    // guacd's default normalize-clipboard ("preserve") keeps the line ends as they are.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = xclip(&display, &["-o"], None);
        if String::from_utf8_lossy(&out.stdout) == pasted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session's clipboard never held the pasted text: {:?} {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Server → client: text put on the session's clipboard arrives as a clipboard stream.
    let copied = format!("guacr-copy-{}", std::process::id());
    let out = xclip(&display, &["-i"], Some(&copied));
    assert!(out.status.success(), "xclip -i failed: {}", out.status);
    client
        .wait_until_named("clipboard from the server", Duration::from_secs(10), move |s| {
            s.finished_streams.iter().any(|st| st.kind == "clipboard" && String::from_utf8_lossy(&st.data) == copied)
        })
        .await
        .expect("the session's clipboard arrived as a clipboard stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrdp_security_any_falls_back_to_tls() {
    let _desktop = XRDP_DESKTOP.lock().await;
    let guacr = guacr();
    // xrdp has no NLA: offered TLS and NLA, it picks TLS.
    let client = open(&guacr, &peers::rdp_xrdp(), &[("security", "any"), ("ignore-cert", "true")]).await;
    let display = xrdp_session(&client, &guacr, (WIDTH, HEIGHT)).await;
    assert_plaid(&wait_matches_x_server(&client, &display, "xrdp-any").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrdp_clipboard_respects_disable_copy_and_disable_paste() {
    let _desktop = XRDP_DESKTOP.lock().await;
    let guacr = guacr();
    let extra = [("security", "tls"), ("ignore-cert", "true"), ("disable-copy", "true"), ("disable-paste", "true")];
    let client = open(&guacr, &peers::rdp_xrdp(), &extra).await;
    let display = xrdp_session(&client, &guacr, (WIDTH, HEIGHT)).await;
    // Copy is disabled: a new server clipboard never reaches the user.
    let copied = format!("guacr-secret-{}", std::process::id());
    assert!(xclip(&display, &["-i"], Some(&copied)).status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Paste is disabled: the user's text never replaces the session's clipboard.
    let pasted = format!("guacr-blocked-{}", std::process::id());
    client.send("clipboard", &["10", "text/plain"]).await.unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pasted.as_bytes());
    client.send("blob", &["10", &b64]).await.unwrap();
    client.send("end", &["10"]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = xclip(&display, &["-o"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), copied, "the session's clipboard was replaced by the user's");
    let closed = client.is_closed();
    let state = client.state();
    assert!(state.last_error().is_none() && !closed, "the session ended: {}", state.summary());
    assert!(
        !state.finished_streams.iter().any(|st| st.kind == "clipboard"),
        "a clipboard stream reached the user despite disable-copy"
    );
}

/// Waits until the client's display has `size` and a frame drew it.
async fn wait_display_size(client: &GuacClient, guacr: &GuacrProcess, size: (u32, u32)) {
    let waited = client
        .wait_until_named("display at the new size", Duration::from_secs(20), move |s| {
            s.last_error().is_some() || s.display.size() == size
        })
        .await;
    if let Some(error) = client.last_error() {
        panic!("RDP session failed: {error:?}; guacr log:\n{}", guacr.log_tail(40));
    }
    let shown = client.state().display.size();
    waited.unwrap_or_else(|e| panic!("display stayed {shown:?}: {e}; guacr log:\n{}", guacr.log_tail(40)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrdp_display_update_resizes_the_session() {
    let _desktop = XRDP_DESKTOP.lock().await;
    let guacr = guacr();
    let extra = [("security", "tls"), ("ignore-cert", "true"), ("resize-method", "display-update")];
    let client = open(&guacr, &peers::rdp_xrdp(), &extra).await;
    let display = xrdp_session(&client, &guacr, (WIDTH, HEIGHT)).await;
    assert_plaid(&wait_matches_x_server(&client, &display, "xrdp-disp-before").await);
    // The browser window shrank: the Display Control channel asks xrdp for 800×600, xrdp resizes the
    // session's Xorg (RandR) and reactivates the connection at the new size.
    client.send_size(800, 600).await.unwrap();
    wait_display_size(&client, &guacr, (800, 600)).await;
    let shot = wait_matches_x_server(&client, &display, "xrdp-disp-after").await;
    assert_eq!((shot.width, shot.height), (800, 600), "the session's X screen was not resized");
    assert_plaid_at_least(&shot, 2_000);
    // An odd width goes out even (MS-RDPEDISP), and the client follows again.
    client.send_size(1021, 700).await.unwrap();
    wait_display_size(&client, &guacr, (1020, 700)).await;
    assert_plaid_at_least(&wait_matches_x_server(&client, &display, "xrdp-disp-odd").await, 2_000);
    let closed = client.is_closed();
    let state = client.state();
    assert!(state.last_error().is_none() && !closed, "the session ended: {}", state.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrdp_reconnect_resize_gives_a_session_at_the_new_size() {
    let _desktop = XRDP_DESKTOP.lock().await;
    let guacr = guacr();
    let extra = [("security", "tls"), ("ignore-cert", "true"), ("resize-method", "reconnect")];
    let client = open(&guacr, &peers::rdp_xrdp(), &extra).await;
    let display = xrdp_session(&client, &guacr, (WIDTH, HEIGHT)).await;
    client.send_size(900, 640).await.unwrap();
    // xrdp gives the reconnecting user the same session, resized to the new connection's size.
    wait_display_size(&client, &guacr, (900, 640)).await;
    assert_plaid_at_least(&wait_matches_x_server(&client, &display, "xrdp-reconnect").await, 2_000);
    type_and_see_sized(&client, &display, "xrdp-reconnect-typing", (900, 640)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_keeps_its_fixed_size_under_either_resize_method() {
    let _desktop = SHADOW_DESKTOP.lock().await;
    let guacr = guacr();
    for method in ["display-update", "reconnect"] {
        let extra = [("security", "tls"), ("ignore-cert", "true"), ("resize-method", method)];
        let client = open(&guacr, &peers::rdp_shadow(), &extra).await;
        wait_first_frame(&client, &guacr, (WIDTH, HEIGHT)).await;
        let frames = client.frames();
        client.send_size(800, 600).await.unwrap();
        // freerdp-shadow serves its X screen as it is (no Display Control channel; a new connection
        // gets 1024×768 again), so what the user sees, as with guacd, stays the whole 1024×768 screen.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(client.state().display.size(), (WIDTH, HEIGHT), "{method}");
        assert_plaid(&wait_matches_x_server(&client, &peers::rdp_shadow_display(), "shadow-resize").await);
        let closed = client.is_closed();
        let (failed, summary) = {
            let state = client.state();
            (state.last_error().is_some(), state.summary())
        };
        assert!(!failed && !closed, "{method}: {summary}");
        if method == "reconnect" {
            let log = guacr.log_contents();
            assert!(log.contains("Reconnected to the RDP server"), "no reconnect happened:\n{}", guacr.log_tail(30));
            // The new connection drew the screen again.
            assert!(client.frames() > frames, "no frame after the reconnect");
            // The server kept its size: the same size again is not another reconnect.
            client.send_size(800, 600).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let reconnects = guacr.log_contents().matches("Reconnected to the RDP server").count();
            assert_eq!(reconnects, 1, "reconnected again for a size the server does not take");
        }
        client.disconnect().await.unwrap();
    }
}

/// A freerdp-shadow of our own on display :55 (the harness's servers stay untouched), killed mid-session.
struct OwnShadow {
    child: std::process::Child,
    port: u16,
    home: std::path::PathBuf,
}

impl OwnShadow {
    fn start() -> OwnShadow {
        let port = guacr_tests::process::free_port().expect("free port");
        let home = std::env::temp_dir().join(format!("guacr-rdp-own-shadow-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let child = std::process::Command::new("freerdp-shadow-cli")
            .args(["/bind-address:127.0.0.1", &format!("/port:{port}"), "-auth"])
            .env("DISPLAY", peers::rdp_shadow_display())
            .env("HOME", &home)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting freerdp-shadow-cli (package freerdp2-shadow-x11; scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !guacr_tests::process::port_listening(port) {
            assert!(Instant::now() < deadline, "our freerdp-shadow never listened on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnShadow { child, port, home }
    }

    fn peer(&self) -> RdpPeer {
        let mut peer = peers::rdp_shadow();
        peer.addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        peer
    }

    fn kill(&mut self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signalling our freerdp-shadow");
        let _ = self.child.wait();
    }
}

impl Drop for OwnShadow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dropping_the_connection_gives_520_and_a_close() {
    // Another freerdp-shadow on :55 while a shared-server test watches its cursor could disturb it.
    let _desktop = SHADOW_DESKTOP.lock().await;
    let guacr = guacr();
    let mut shadow = OwnShadow::start();
    let client = open(&guacr, &shadow.peer(), &[("security", "tls"), ("ignore-cert", "true")]).await;
    wait_first_frame(&client, &guacr, (WIDTH, HEIGHT)).await;
    // The server vanishes without a word (SIGKILL: the kernel closes its socket). guacd: the
    // connection failed at a low level → "Connection closed." with UPSTREAM_UNAVAILABLE.
    shadow.kill(nix::sys::signal::Signal::SIGKILL);
    let error = wait_error(&client).await;
    assert_eq!((error.status, error.message.as_str()), (520, "Connection closed."), "{error:?}");
    client.wait_closed(Duration::from_secs(5)).await.expect("connection closed after the error");
    assert!(guacr.worker_pids().is_empty() || wait_no_workers(&guacr).await, "the worker outlived the session");
}

async fn wait_no_workers(guacr: &GuacrProcess) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if guacr.worker_pids().is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrdp_logoff_closes_the_session_cleanly() {
    let _desktop = XRDP_DESKTOP.lock().await;
    let guacr = guacr();
    let client = open(&guacr, &peers::rdp_xrdp(), &[("security", "tls"), ("ignore-cert", "true")]).await;
    xrdp_session(&client, &guacr, (WIDTH, HEIGHT)).await;
    // The session is `exec xterm`: leaving its shell logs the user off and ends the Xorg session.
    client.send_mouse(200, 150, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.type_text("exit\n").await.unwrap();
    client.wait_closed(Duration::from_secs(20)).await.expect("the connection closed after the logoff");
    // xrdp ends the connection with a Disconnect Provider Ultimatum "user requested", which FreeRDP
    // (and so guacd) takes for a logoff by the user: `disconnect`, no error.
    let state = client.state();
    assert!(state.last_error().is_none(), "a logoff is not an error: {}", state.summary());
    assert!(state.disconnect_received.is_some(), "no disconnect instruction: {}", state.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrdp_de_de_qwertz_types_what_the_user_typed() {
    let _desktop = XRDP_DESKTOP.lock().await;
    let guacr = guacr();
    // xrdp sets the session's keyboard to the layout the client announces (0x0407: German), so every
    // character must go out as the scancode of the German key that carries it: Z and Y swapped, AltGr
    // for @{}\|~, Shift+7 for / and the extra ISO key for < and >, and the umlauts and ß have keys of
    // their own.
    let extra = [("security", "tls"), ("ignore-cert", "true"), ("server-layout", "de-de-qwertz")];
    let client = open(&guacr, &peers::rdp_xrdp(), &extra).await;
    xrdp_session(&client, &guacr, (WIDTH, HEIGHT)).await;
    let file = format!("/tmp/guacr-rdp-de-{}", std::process::id());
    let _ = std::fs::remove_file(&file);
    let typed = r#"zy@{}\|~/=?"<>#äöüß"#;
    client.send_mouse(200, 150, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // `head` reads the terminal as it is (bash's line editor would take the session's 8-bit umlauts,
    // under its C locale, for Meta keys) and exits after the line, leaving the shell as it was.
    client.type_text(&format!("head -n 1 > {file}\n")).await.unwrap();
    // Type the line only once `head` reads the terminal: input typed ahead while the shell switches the
    // terminal's mode can be discarded. The redirection creates the file just before `head` starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&file).exists() {
        assert!(Instant::now() < deadline, "`head > {file}` did not run; guacr log:\n{}", guacr.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.type_text(&format!("{typed}\n")).await.unwrap();
    // The session's xterm runs in the C locale: the umlauts arrive as their Latin-1 bytes.
    let latin1: Vec<u8> = format!("{typed}\n").chars().map(|c| c as u32 as u8).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(bytes) = std::fs::read(&file) {
            if bytes.ends_with(b"\n") {
                let utf8 = format!("{typed}\n").into_bytes();
                assert!(
                    bytes == latin1 || bytes == utf8,
                    "the German session received other characters: {:?}",
                    String::from_utf8_lossy(&bytes)
                );
                break;
            }
        }
        if Instant::now() > deadline {
            let _ = std::fs::remove_file(&file);
            client.screenshot().save_png(artifact_dir().join("rdp-xrdp-de-client.png")).unwrap();
            panic!("the typed command never wrote {file}; the client's image is in {}", artifact_dir().display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(&file);
    client.type_text("clear\n").await.unwrap();
}
