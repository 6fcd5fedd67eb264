//! guacr end to end against the real OpenSSH sshd (started by `scripts/peers.sh start` on 127.0.0.1:2222
//! with its own config): a Guacamole client selects `ssh` with guacd's parameter names and checks what a
//! user would see in the composited image.

use std::time::{Duration, Instant};

use base64::Engine as _;
use guacr_tests::peers::{self, SshPeer};
use guacr_tests::{artifact_dir, GuacClient, GuacrProcess, RgbImage};
use worker_ssh::font::{Fallback, Font};
use worker_ssh::palette::GUACD_PALETTE;

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;
/// guacd's default colours ("gray-black").
const FG: [u8; 3] = GUACD_PALETTE[7];
const BG: [u8; 3] = GUACD_PALETTE[0];
const RED: [u8; 3] = GUACD_PALETTE[1];
const GREEN: [u8; 3] = GUACD_PALETTE[2];
const CONTROL_L: u32 = 0xffe3;

fn guacr() -> GuacrProcess {
    GuacrProcess::start().expect("starting guacr")
}

fn peer() -> SshPeer {
    let peer = peers::ssh();
    peer.require_up();
    peer
}

/// The cell size the worker uses for guacd's default font size at the test client's 96 dpi.
fn cell() -> (u32, u32) {
    let font = Font::new(12, 96).unwrap();
    (font.cell_width, font.cell_height)
}

async fn open(guacr: &GuacrProcess, peer: &SshPeer, extra: &[(&str, &str)]) -> GuacClient {
    open_sized(guacr, peer, extra, WIDTH, HEIGHT).await
}

async fn open_sized(guacr: &GuacrProcess, peer: &SshPeer, extra: &[(&str, &str)], w: u32, h: u32) -> GuacClient {
    let mut client = GuacClient::connect(guacr.addr()).await.expect("connecting to guacr");
    let mut params = peer.ssh_params();
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    client.handshake("ssh", &params, w, h).await.expect("handshake");
    client
}

/// Waits until the shell's prompt is on screen: the first row holds foreground-ish pixels.
async fn wait_prompt(client: &GuacClient, guacr: &GuacrProcess) {
    let (_, ch) = cell();
    let result = client
        .wait_until_named("shell prompt", Duration::from_secs(20), move |s| {
            if s.display.size() != (WIDTH, HEIGHT) || s.frames == 0 {
                return false;
            }
            let shot = s.display.screenshot();
            (0..ch).any(|y| (0..400).any(|x| shot.pixel(x, y) != BG))
        })
        .await;
    if let Err(e) = result {
        client.save_png(artifact_dir().join("ssh-no-prompt.png")).ok();
        panic!("{e}; error: {:?}; guacr log:\n{}", client.last_error(), guacr.log_tail(40));
    }
    // Let the prompt settle (bash draws it in pieces).
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Pixels of `color` inside the rectangle.
fn count_in(shot: &RgbImage, x: u32, y: u32, w: u32, h: u32, color: [u8; 3]) -> usize {
    let mut n = 0;
    for yy in y..(y + h).min(shot.height) {
        for xx in x..(x + w).min(shot.width) {
            if shot.pixel(xx, yy) == color {
                n += 1;
            }
        }
    }
    n
}

/// Waits until cells `col0..col0+cols` of screen row `row` are entirely `color`.
async fn wait_block(
    client: &GuacClient,
    what: &str,
    row: u32,
    col0: u32,
    cols: u32,
    color: [u8; 3],
    timeout: Duration,
) {
    let (cw, ch) = cell();
    let result = client
        .wait_until_named(what, timeout, move |s| {
            let shot = s.display.screenshot();
            count_in(&shot, col0 * cw, row * ch, cols * cw, ch, color) == (cols * cw * ch) as usize
        })
        .await;
    if let Err(e) = result {
        let name = format!("ssh-{}.png", what.replace(' ', "-"));
        client.save_png(artifact_dir().join(&name)).ok();
        panic!("{e}; screenshot in {}", artifact_dir().join(name).display());
    }
}

/// Types a command that clears the screen and prints a 10-cell block with background `sgr` at row 0.
async fn print_block(client: &GuacClient, sgr: u32) {
    client.type_text(&format!("clear; printf '\\033[{sgr}m          \\033[0m\\n'\n")).await.unwrap();
}

async fn ctrl(client: &GuacClient, key: char) {
    client.send_key(CONTROL_L, true).await.unwrap();
    client.send_key(key as u32, true).await.unwrap();
    client.send_key(key as u32, false).await.unwrap();
    client.send_key(CONTROL_L, false).await.unwrap();
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_speaks_guacd_1_6_ssh() {
    let guacr = guacr();
    let client = open(&guacr, &peer(), &[("password", "guacpass")]).await;
    let names = client.arg_names().expect("args received");
    let expected: Vec<String> = include_str!("../../supervisor/src/args/ssh.txt").lines().map(str::to_string).collect();
    assert_eq!(names.len(), 45);
    assert_eq!(names, expected, "args must list guacd 1.6's ssh parameter names in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_login_renders_typed_command_output() {
    let guacr = guacr();
    let peer = peer();
    let started = Instant::now();
    let client = open(&guacr, &peer, &[("password", &peer.password)]).await;
    wait_prompt(&client, &guacr).await;
    eprintln!("password login: prompt visible {:?} after connecting (incl. 300 ms settle)", started.elapsed());

    // The worker talks to the server only from inside its seccomp sandbox.
    let workers = guacr.worker_pids();
    assert_eq!(workers.len(), 1, "one worker per session");
    let status = std::fs::read_to_string(format!("/proc/{}/status", workers[0])).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Seccomp:") && l.ends_with('2')), "worker not in seccomp:\n{status}");
    assert!(status.lines().any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')));

    // Colours: a red block (SGR 41: guacd's palette red) at the expected cells.
    print_block(&client, 41).await;
    wait_block(&client, "red block", 0, 0, 10, RED, Duration::from_secs(10)).await;
    // ... and nothing red beyond it.
    let (cw, ch) = cell();
    let shot = client.screenshot();
    assert_eq!(count_in(&shot, 10 * cw, 0, WIDTH - 10 * cw, ch, RED), 0);

    // Text: exactly what our own font renders for the same string, at the top left cell.
    let marker = "GUACR-ssh-0123";
    client.type_text(&format!("clear; echo {marker}\n")).await.unwrap();
    let mut font = Font::new(12, 96).unwrap();
    let (w, h, rgb) = font.render_line(marker, FG, BG);
    let expected = RgbImage::from_raw(w, h, rgb).unwrap();
    let result = client
        .wait_until_named("rendered text", Duration::from_secs(10), move |s| {
            s.display.screenshot().crop(0, 0, w, h) == expected
        })
        .await;
    if let Err(e) = result {
        client.save_png(artifact_dir().join("ssh-text.png")).ok();
        panic!("{e}");
    }

    // Select the marker with the mouse: it arrives as the client's clipboard.
    let y = (ch / 2) as i32;
    client.send_mouse(2, y, 1).await.unwrap();
    client.send_mouse((cw * 7) as i32, y, 1).await.unwrap();
    client.send_mouse((cw * (marker.len() as u32 - 1) + 2) as i32, y, 1).await.unwrap();
    client.send_mouse((cw * (marker.len() as u32 - 1) + 2) as i32, y, 0).await.unwrap();
    client
        .wait_until_named("clipboard from selection", Duration::from_secs(5), move |s| {
            s.finished_streams.iter().any(|st| st.kind == "clipboard" && st.data == marker.as_bytes())
        })
        .await
        .expect("selected text copied to the client's clipboard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clipboard_paste_runs_in_the_shell() {
    let guacr = guacr();
    let peer = peer();
    let client = open(&guacr, &peer, &[("password", &peer.password)]).await;
    wait_prompt(&client, &guacr).await;
    // bash enables bracketed paste: pasted text is edited, not run, until Return.
    let text = "clear; printf '\\033[42m          \\033[0m\\n'";
    let b64 = base64::engine::general_purpose::STANDARD.encode(text);
    client.send("clipboard", &["1", "text/plain"]).await.unwrap();
    client.send("blob", &["1", &b64]).await.unwrap();
    client.send("end", &["1"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // guacd's gesture: Ctrl+Shift+V pastes.
    client.send_key(0xffe1, true).await.unwrap();
    ctrl(&client, 'V').await;
    client.send_key(0xffe1, false).await.unwrap();
    client.type_text("\n").await.unwrap();
    wait_block(&client, "pasted command output", 0, 0, 10, GREEN, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyboard_interactive_login() {
    let guacr = guacr();
    let peer = peers::ssh_keyboard_interactive();
    peer.require_up();
    let client = open(&guacr, &peer, &[("password", &peer.password)]).await;
    wait_prompt(&client, &guacr).await;
    print_block(&client, 41).await;
    wait_block(&client, "keyboard-interactive session works", 0, 0, 10, RED, Duration::from_secs(10)).await;
    // A wrong password through keyboard-interactive is refused the same way.
    let client = open(&guacr, &peer, &[("password", "definitely-wrong")]).await;
    client.wait_closed(Duration::from_secs(20)).await.expect("session ends");
    assert_eq!(client.last_error().map(|e| e.status), Some(769));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_ignores_input() {
    let guacr = guacr();
    let peer = peer();
    let client = open(&guacr, &peer, &[("password", &peer.password), ("read-only", "true")]).await;
    wait_prompt(&client, &guacr).await;
    print_block(&client, 41).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(client.screenshot().count_color(RED, 0), 0, "a read-only session must not type");
    assert!(!client.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_769() {
    let guacr = guacr();
    let peer = peer();
    let client = open(&guacr, &peer, &[("password", "definitely-wrong")]).await;
    client.wait_closed(Duration::from_secs(20)).await.expect("session ends");
    let error = client.last_error().expect("an error instruction");
    assert_eq!(error.status, 769, "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_519() {
    let guacr = guacr();
    // Port 1 (tcpmux): privileged, so no other test's listener can take it meanwhile.
    assert!(!guacr_tests::process::port_listening(1), "something listens on 127.0.0.1:1");
    let port = "1".to_string();
    let peer = peer();
    let mut client = GuacClient::connect(guacr.addr()).await.unwrap();
    let params = [("hostname", "127.0.0.1"), ("port", port.as_str()), ("username", "x"), ("password", "y")];
    client.handshake("ssh", &params, WIDTH, HEIGHT).await.expect("handshake");
    drop(peer);
    client.wait_closed(Duration::from_secs(20)).await.expect("session ends");
    assert_eq!(client.last_error().map(|e| e.status), Some(519));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_keys_log_in() {
    let guacr = guacr();
    let peer = peer();
    let cases = [
        ("id_ed25519", None),
        ("id_ed25519_pass", Some(peers::SSH_KEY_PASSPHRASE)),
        ("id_rsa", None), // PEM RSA: OpenSSH 9 accepts only SHA-2 signatures
        ("id_ecdsa", None),
        // Its private scalar starts with a zero byte, which the key decoder refuses unless repaired.
        ("id_ecdsa_short", None),
        // The same key protected by a passphrase: decrypted by the worker before it is repaired.
        ("id_ecdsa_short_pass", Some(peers::SSH_KEY_PASSPHRASE)),
    ];
    for (name, passphrase) in cases {
        let key = peer.private_key(name);
        let mut extra = vec![("private-key", key.as_str())];
        if let Some(p) = passphrase {
            extra.push(("passphrase", p));
        }
        let client = open(&guacr, &peer, &extra).await;
        wait_prompt(&client, &guacr).await;
        print_block(&client, 41).await;
        wait_block(&client, &format!("{name} session works"), 0, 0, 10, RED, Duration::from_secs(10)).await;
        assert!(client.last_error().is_none(), "{name}: {:?}", client.last_error());
        client.disconnect().await.ok();
    }
    // A passphrase-protected key without its passphrase: asked in the terminal, as guacd does.
    let key = peer.private_key("id_ed25519_pass");
    let client = open(&guacr, &peer, &[("private-key", key.as_str())]).await;
    client.wait_frames(1, Duration::from_secs(10)).await.expect("passphrase prompt shown");
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.type_text(&format!("{}\n", peers::SSH_KEY_PASSPHRASE)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    print_block(&client, 41).await;
    wait_block(&client, "login after the passphrase prompt", 0, 0, 10, RED, Duration::from_secs(20)).await;
    client.disconnect().await.ok();
    // A wrong passphrase: 769.
    let client = open(&guacr, &peer, &[("private-key", key.as_str()), ("passphrase", "wrong")]).await;
    client.wait_closed(Duration::from_secs(20)).await.expect("session ends");
    assert_eq!(client.last_error().map(|e| e.status), Some(769));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_is_verified() {
    let guacr = guacr();
    let peer = peer();
    // The right keys (known_hosts lines): login works.
    let known = peer.known_hosts();
    let client = open(&guacr, &peer, &[("password", &peer.password), ("host-key", &known)]).await;
    wait_prompt(&client, &guacr).await;
    client.disconnect().await.ok();
    // A different key: an error and no login.
    let wrong = std::fs::read_to_string(peer.dir.join("keys/id_ed25519.pub")).unwrap();
    let client = open(&guacr, &peer, &[("password", &peer.password), ("host-key", &wrong)]).await;
    client.wait_closed(Duration::from_secs(20)).await.expect("session ends");
    let error = client.last_error().expect("an error instruction");
    assert_eq!(error.status, 515, "{error:?}");
    assert_eq!(client.frames(), 0, "no terminal may be shown after a host-key mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_follows_client_resize() {
    let guacr = guacr();
    let peer = peer();
    let client = open(&guacr, &peer, &[("password", &peer.password)]).await;
    wait_prompt(&client, &guacr).await;
    let (cw, ch) = cell();
    let (w, h) = (640, 480);
    client.send_size(w, h).await.unwrap();
    client
        .wait_until_named("display resized", Duration::from_secs(10), move |s| s.display.size() == (w, h))
        .await
        .expect("resize");
    // A red bar as wide as the terminal says it is (`stty size` answers from the pty size).
    client.type_text("clear; printf '\\033[41m%*s\\033[0m\\n' $(stty size | cut -d' ' -f2) ''\n").await.unwrap();
    let cols = w / cw;
    wait_block(&client, "bar as wide as the resized terminal", 0, 0, cols, RED, Duration::from_secs(10)).await;
    let shot = client.screenshot();
    assert_eq!(count_in(&shot, cols * cw, 0, w - cols * cw, ch, RED), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_stays_responsive_and_ctrl_c_stops_it() {
    let guacr = guacr();
    let peer = peer();
    let client = open(&guacr, &peer, &[("password", &peer.password)]).await;
    wait_prompt(&client, &guacr).await;
    let bytes_before = client.state().bytes_received;
    let worker = guacr.worker_pids()[0];
    let cpu_before = cpu_ticks(worker);
    let frames_before = client.frames();
    client.type_text("seq 1 100000000\n").await.unwrap();
    // Frames keep coming while output floods.
    let frames = client.frames();
    client.wait_frames(frames + 20, Duration::from_secs(20)).await.expect("frames during the flood");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    ctrl(&client, 'c').await;
    print_block(&client, 41).await;
    wait_block(&client, "command after ctrl-c", 0, 0, 10, RED, Duration::from_secs(30)).await;
    let recovered = started.elapsed();
    let (sent, total_frames) = {
        let state = client.state();
        (state.bytes_received - bytes_before, state.frames)
    };
    eprintln!("flood: ctrl-c to next command output {recovered:?}; {total_frames} frames, {sent} bytes to the client");
    let pss = std::fs::read_to_string(format!("/proc/{worker}/smaps_rollup"))
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("Pss:")).map(str::to_string));
    eprintln!("flood: worker {worker} after the flood: {pss:?}");
    let ticks = cpu_ticks(worker) - cpu_before;
    let frames = client.frames() - frames_before;
    eprintln!(
        "flood: worker CPU {} ms (user+system) for {frames} frames: {:.2} ms per frame (includes parsing the flood)",
        ticks * 10,
        ticks as f64 * 10.0 / frames.max(1) as f64
    );
    // The client gets coalesced frames, not every line: far below the flood's own size.
    assert!(sent < 200 << 20, "{sent} bytes sent to the client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrolling_sends_copy_and_the_wheel_shows_history() {
    let guacr = guacr();
    let peer = peer();
    let client = open(&guacr, &peer, &[("password", &peer.password)]).await;
    wait_prompt(&client, &guacr).await;
    let (_, ch) = cell();
    let rows = HEIGHT / ch;
    // A red line, then enough lines, slowly, to push it into the scrollback one frame at a time.
    let lines = rows + 10;
    client
        .type_text(&format!(
            "clear; printf '\\033[41m          \\033[0m\\n'; for i in $(seq 1 {lines}); do echo $i; sleep 0.01; done\n"
        ))
        .await
        .unwrap();
    client
        .wait_until_named("scrolled output uses copy", Duration::from_secs(20), |s| {
            s.opcode_counts.get("copy").copied().unwrap_or(0) >= 5
        })
        .await
        .expect("terminal scrolling reaches the client as `copy` instructions");
    // Wait for the loop to end: the red line has left the screen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .wait_until_named("red line scrolled away", Duration::from_secs(20), |s| {
            s.display.screenshot().count_color(RED, 0) == 0
        })
        .await
        .expect("red line scrolled off");
    // Mouse wheel up (button 4 = mask 8) far enough: the red line is back at the top row.
    for _ in 0..(lines / 3 + 5) {
        client.send_mouse(100, 100, 8).await.unwrap();
        client.send_mouse(100, 100, 0).await.unwrap();
    }
    wait_block(&client, "red line back from the scrollback", 0, 0, 10, RED, Duration::from_secs(10)).await;
    // Typing returns to the live screen.
    client.type_text(" ").await.unwrap();
    client
        .wait_until_named("live screen again", Duration::from_secs(10), |s| {
            s.display.screenshot().count_color(RED, 0) == 0
        })
        .await
        .expect("back to the live screen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_type_locale_timezone_and_colours() {
    let guacr = guacr();
    let peer = peer();
    let extra = [
        ("password", peer.password.as_str()),
        ("terminal-type", "xterm-256color"),
        ("locale", "C.UTF-8"),
        ("timezone", "Asia/Tokyo"),
    ];
    let client = open(&guacr, &peer, &extra).await;
    wait_prompt(&client, &guacr).await;
    // Only when all three arrived is a block printed: 256-colour red, then a true-colour block beside it.
    client
        .type_text(concat!(
            "clear; [ \"$TERM\" = xterm-256color ] && [ \"$LANG\" = C.UTF-8 ] && [ \"$TZ\" = Asia/Tokyo ] && ",
            "printf '\\033[48;5;196m          \\033[48;2;1;2;3m          \\033[0m\\n'\n"
        ))
        .await
        .unwrap();
    wait_block(&client, "256-colour block", 0, 0, 10, [255, 0, 0], Duration::from_secs(10)).await;
    wait_block(&client, "true-colour block", 0, 10, 10, [1, 2, 3], Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_runs_instead_of_the_shell_and_exit_closes() {
    let guacr = guacr();
    let peer = peer();
    let command = "printf '\\033[41m          \\033[0m'; sleep 1";
    let client = open(&guacr, &peer, &[("password", &peer.password), ("command", command)]).await;
    wait_block(&client, "command output", 0, 0, 10, RED, Duration::from_secs(20)).await;
    // The command's end ends the session cleanly (no error).
    client.wait_closed(Duration::from_secs(20)).await.expect("session ends with the command");
    assert!(client.last_error().is_none_or(|e| e.status < 256), "{:?}", client.last_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_are_asked_in_the_terminal() {
    let guacr = guacr();
    let peer = peer();
    let mut client = GuacClient::connect(guacr.addr()).await.expect("connecting to guacr");
    let params = [("hostname", peer.host()), ("port", peer.port().to_string())];
    client.handshake("ssh", &params, WIDTH, HEIGHT).await.expect("handshake");
    // guacd's prompt, drawn with our font at the top left.
    let mut font = Font::new(12, 96).unwrap();
    let (w, h, rgb) = font.render_line("Login as:", FG, BG);
    let expected = RgbImage::from_raw(w, h, rgb).unwrap();
    client
        .wait_until_named("login prompt", Duration::from_secs(10), move |s| {
            s.frames > 0 && s.display.screenshot().crop(0, 0, w, h) == expected
        })
        .await
        .expect("Login as: prompt");
    client.type_text(&format!("{}\n", peer.username)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.type_text(&format!("{}\n", peer.password)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    print_block(&client, 41).await;
    wait_block(&client, "logged in after prompts", 0, 0, 10, RED, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_copy_and_disable_paste() {
    let guacr = guacr();
    let peer = peer();
    let extra = [("password", peer.password.as_str()), ("disable-copy", "true"), ("disable-paste", "true")];
    let client = open(&guacr, &peer, &extra).await;
    wait_prompt(&client, &guacr).await;
    // Selecting the prompt copies nothing.
    let (cw, ch) = cell();
    let y = (ch / 2) as i32;
    client.send_mouse(2, y, 1).await.unwrap();
    client.send_mouse((cw * 8) as i32, y, 1).await.unwrap();
    client.send_mouse((cw * 8) as i32, y, 0).await.unwrap();
    // Pasting does nothing either.
    let b64 = base64::engine::general_purpose::STANDARD.encode("clear; printf '\\033[42m          \\033[0m\\n'");
    client.send("clipboard", &["1", "text/plain"]).await.unwrap();
    client.send("blob", &["1", &b64]).await.unwrap();
    client.send("end", &["1"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.send_key(0xffe1, true).await.unwrap();
    ctrl(&client, 'V').await;
    client.send_key(0xffe1, false).await.unwrap();
    client.type_text("\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(client.screenshot().count_color(GREEN, 0), 0, "disable-paste must not paste");
    assert!(
        !client.state().finished_streams.iter().any(|s| s.kind == "clipboard"),
        "disable-copy must not send the selection"
    );
}

/// Polls `path` until it holds `needle` (the typescript is flushed once a second).
async fn wait_file_contains(path: &std::path::Path, needle: &[u8], timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    loop {
        let data = std::fs::read(path).unwrap_or_default();
        if data.windows(needle.len()).any(|w| w == needle) {
            return data;
        }
        assert!(
            Instant::now() < deadline,
            "{} never held {:?}: {:?}",
            path.display(),
            needle,
            String::from_utf8_lossy(&data)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_replays_with_scriptreplay() {
    let guacr = guacr();
    let peer = peer();
    let dir = std::env::temp_dir().join(format!("guacr-typescript-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.display().to_string();
    let extra = [
        ("password", peer.password.as_str()),
        ("typescript-path", dir_s.as_str()),
        ("typescript-name", "session"),
        ("create-typescript-path", "true"),
    ];
    let client = open(&guacr, &peer, &extra).await;
    wait_prompt(&client, &guacr).await;
    // The output differs from the echoed command line, so finding it proves the command ran.
    client.type_text("echo hello-$((6*7))-done\n").await.unwrap();
    let data_path = dir.join("session");
    wait_file_contains(&data_path, b"hello-42-done", Duration::from_secs(10)).await;
    client.disconnect().await.unwrap();
    drop(client);
    let data = wait_file_contains(&data_path, b"[END TYPESCRIPT]\n", Duration::from_secs(10)).await;
    let timing = std::fs::read_to_string(dir.join("session.timing")).expect("timing file beside the data");
    // Well-formed: `seconds bytes` per line, and the counts cover exactly the output between header and footer.
    let mut total = 0;
    for line in timing.lines() {
        let (delay, count) = line.split_once(' ').unwrap_or_else(|| panic!("timing line {line:?}"));
        assert!(delay.parse::<f64>().is_ok_and(|d| d >= 0.0), "timing line {line:?}");
        total += count.parse::<usize>().unwrap_or_else(|_| panic!("timing line {line:?}"));
    }
    let header = b"[BEGIN TYPESCRIPT]\n".len();
    let footer = b"\n[END TYPESCRIPT]\n".len();
    assert_eq!(total, data.len() - header - footer, "timing counts must cover the output");
    // util-linux's scriptreplay plays it back (its first line, our header, is skipped).
    let replay = std::process::Command::new("scriptreplay")
        .arg("--timing")
        .arg(dir.join("session.timing"))
        .arg("--typescript")
        .arg(&data_path)
        .args(["--maxdelay", "0.01"])
        .output()
        .expect("running scriptreplay (bsdutils)");
    assert!(replay.status.success(), "scriptreplay failed: {}", String::from_utf8_lossy(&replay.stderr));
    let shown = String::from_utf8_lossy(&replay.stdout);
    assert!(shown.contains("hello-42-done"), "replay lacks the output: {shown:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_characters_take_two_cells_in_the_cjk_fallback_font() {
    let guacr = guacr();
    let peer = peer();
    let client = open(&guacr, &peer, &[("password", &peer.password)]).await;
    wait_prompt(&client, &guacr).await;
    // "A", U+4E2D (CJK, two cells; DejaVu has none, the host's fallback font draws it), "B" in the fourth cell.
    client.type_text("clear; printf 'A\\344\\270\\255B\\n'\n").await.unwrap();
    let row = |font: &mut Font| {
        let (cw, ch) = (font.cell_width, font.cell_height);
        let width = 4 * cw;
        let mut rgb = vec![0u8; (width * ch * 3) as usize];
        for (x0, c, wide) in [(0, 'A', false), (cw, '\u{4e2d}', true), (3 * cw, 'B', false)] {
            let mask = font.glyph(c, 0, wide).clone();
            for y in 0..mask.height {
                for x in 0..mask.width {
                    let a = mask.coverage[(y * mask.width + x) as usize] as u16;
                    let at = ((y * width + x0 + x) * 3) as usize;
                    for k in 0..3 {
                        rgb[at + k] = ((FG[k] as u16 * a + BG[k] as u16 * (255 - a) + 127) / 255) as u8;
                    }
                }
            }
        }
        RgbImage::from_raw(width, ch, rgb).unwrap()
    };
    let mut font = Font::new(12, 96).unwrap();
    let (cw, ch) = (font.cell_width, font.cell_height);
    let boxed = row(&mut font);
    // The same font the worker finds (scripts/test.sh installs fonts-wqy-microhei): missing, this fails.
    let fallback = Fallback::find().expect("no CJK fallback font installed: apt-get install fonts-wqy-microhei");
    font.set_fallback(fallback);
    let expected = row(&mut font);
    assert_ne!(expected, boxed, "the fallback font must draw U+4E2D differently from the placeholder box");
    let result = client
        .wait_until_named("wide character row in the fallback font", Duration::from_secs(10), move |s| {
            s.display.screenshot().crop(0, 0, 4 * cw, ch) == expected
        })
        .await;
    if let Err(e) = result {
        client.save_png(artifact_dir().join("ssh-wide.png")).ok();
        panic!("{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vt100_function_keys_and_keypad_reach_a_raw_reader() {
    let guacr = guacr();
    let peer = peer();
    let extra = [("password", peer.password.as_str()), ("func-keys-and-keypad", "vt100")];
    let client = open(&guacr, &peer, &extra).await;
    wait_prompt(&client, &guacr).await;
    // The application turns on keypad application mode (DECKPAM) and reads 9 raw bytes.
    client.type_text("clear; printf '\\033='; stty raw -echo; head -c 9 | od -An -c; stty sane\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // F1, keypad 5, keypad minus.
    for keysym in [0xffbe, 0xffb5, 0xffad] {
        client.send_key(keysym, true).await.unwrap();
        client.send_key(keysym, false).await.unwrap();
    }
    // What od prints for the bytes VT100 sends for them, rendered by our own font in the first row.
    let od = std::process::Command::new("sh")
        .args(["-c", "printf '\\033OP\\033Ou\\033Om' | od -An -c"])
        .output()
        .expect("running od");
    let text = String::from_utf8(od.stdout).unwrap().trim_end().to_string();
    let mut font = Font::new(12, 96).unwrap();
    let (w, h, rgb) = font.render_line(&text, FG, BG);
    let expected = RgbImage::from_raw(w, h, rgb).unwrap();
    let result = client
        .wait_until_named("od output", Duration::from_secs(10), move |s| {
            s.display.screenshot().crop(0, 0, w, h) == expected
        })
        .await;
    if let Err(e) = result {
        client.save_png(artifact_dir().join("ssh-vt100-keys.png")).ok();
        panic!("{e}; expected od to print {text:?}");
    }
}
