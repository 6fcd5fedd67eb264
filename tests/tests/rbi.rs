//! Remote browser isolation end to end: a Guacamole client selects `rbi`, guacr's rbi worker runs
//! Debian's headless Chromium (as the unprivileged worker user, inside the worker's confinement) on pages
//! served by [`PageServer`] on 127.0.0.1, and the tests check the composited client image.
//!
//! Chromium must be installed (`scripts/test.sh` installs `chromium`); without it every test fails with
//! the worker's "Chromium is not installed" error.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use guacr_tests::pages::{self, PageServer};
use guacr_tests::{artifact_dir, GuacClient, GuacrProcess, RgbImage};

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;
/// JPEG screencast: solid colours come back within a few levels.
const TOLERANCE: i32 = 24;
/// Chromium starts in about a second on a quiet machine; shared CI machines are slower.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

fn guacr() -> GuacrProcess {
    GuacrProcess::start().expect("starting guacr")
}

/// Whether the worker user may create user namespaces (Chromium's own sandbox needs them). Where it may
/// not, the tests ask for `no-sandbox`, as an administrator of such a host would have to.
fn chromium_sandbox_available() -> bool {
    std::process::Command::new("su")
        .args(["-s", "/bin/sh", "guacr-worker", "-c", "unshare -U true"])
        .status()
        .is_ok_and(|s| s.success())
}

async fn open(guacr: &GuacrProcess, url: &str, extra: &[(&str, &str)]) -> GuacClient {
    assert!(
        std::path::Path::new("/usr/lib/chromium/chromium").is_file(),
        "Chromium is missing: install it with scripts/peers.sh install chromium (scripts/test.sh does)"
    );
    let mut client = GuacClient::connect(guacr.addr()).await.expect("connecting to guacr");
    let mut params = vec![("url".to_string(), url.to_string())];
    if !chromium_sandbox_available() {
        eprintln!("note: user namespaces are unavailable to guacr-worker; running Chromium with no-sandbox");
        params.push(("no-sandbox".into(), "true".into()));
    }
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    client.handshake("rbi", &params, WIDTH, HEIGHT).await.expect("rbi handshake");
    client
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(&x, y)| (i32::from(x) - i32::from(y)).abs() <= TOLERANCE)
}

/// Waits until the client shows `rgb` at (`x`, `y`).
async fn wait_colour(client: &GuacClient, guacr: &GuacrProcess, at: (u32, u32), rgb: [u8; 3], name: &str) {
    wait_colour_sized(client, guacr, (WIDTH, HEIGHT), at, rgb, name).await
}

/// Waits until the client's display is `size` and shows `rgb` at (`x`, `y`).
async fn wait_colour_sized(
    client: &GuacClient,
    guacr: &GuacrProcess,
    size: (u32, u32),
    (x, y): (u32, u32),
    rgb: [u8; 3],
    name: &str,
) {
    let what = format!("{name}: {}x{} display with colour {rgb:?} at ({x},{y})", size.0, size.1);
    let result = client
        .wait_until_named(&what, PAGE_TIMEOUT, |s| s.display.size() == size && close(s.screenshot().pixel(x, y), rgb))
        .await;
    if let Err(e) = result {
        let path = artifact_dir().join(format!("rbi-{name}.png"));
        let _ = std::fs::create_dir_all(artifact_dir());
        let _ = client.save_png(&path);
        panic!("{e}; client image in {}; guacr log:\n{}", path.display(), guacr.log_tail(60));
    }
}

/// Processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
                stat.rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok())
                    .is_some_and(|ppid| ppid == parent)
            })
        })
        .collect()
}

/// Processes below `root`, at any depth.
fn descendants(root: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for child in children_of(pid) {
            found.push(child);
            stack.push(child);
        }
    }
    found
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)).map(|v| v.trim().to_string())
}

/// Live processes (not zombies) whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            cmdline(pid).contains(needle) && status_field(pid, "State:").is_some_and(|s| !s.starts_with('Z'))
        })
        .collect()
}

/// The session's worker, its keeper and Chromium's browser process.
struct Tree {
    worker: u32,
    keeper: u32,
    browser: u32,
    profile: PathBuf,
}

async fn session_tree(guacr: &GuacrProcess, before: &BTreeSet<u32>) -> Tree {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let workers: Vec<u32> = guacr.worker_pids().into_iter().filter(|p| !before.contains(p)).collect();
        if let [worker] = workers[..] {
            let keeper = children_of(worker).into_iter().find(|&p| cmdline(p).contains("--browser-keeper"));
            if let Some(keeper) = keeper {
                let browser =
                    children_of(keeper).into_iter().find(|&p| cmdline(p).starts_with("/usr/lib/chromium/chromium "));
                if let Some(browser) = browser {
                    let line = cmdline(browser);
                    let data = line
                        .split(' ')
                        .find_map(|a| a.strip_prefix("--user-data-dir="))
                        .expect("Chromium's command line names its profile");
                    let profile = PathBuf::from(data).parent().expect("profile directory").to_path_buf();
                    return Tree { worker, keeper, browser, profile };
                }
            }
        }
        assert!(Instant::now() < deadline, "no worker → keeper → chromium tree appeared; log:\n{}", guacr.log_tail(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_gone(profile: &std::path::Path, guacr: &GuacrProcess) {
    wait_gone_or(profile, || guacr.log_tail(40)).await
}

async fn wait_gone_or(profile: &std::path::Path, log: impl Fn() -> String) {
    let needle = profile.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = processes_mentioning(&needle);
        if left.is_empty() && !profile.exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after the session: processes {left:?} still use {needle}, profile exists: {}; log:\n{}",
            profile.exists(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_a_page_and_confines_the_worker() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let before: BTreeSet<u32> = guacr.worker_pids().into_iter().collect();
    let client = open(&guacr, &server.url("/colour/00c800"), &[]).await;
    let names = client.arg_names().expect("args");
    assert!(names.iter().any(|n| n == "url") && names.iter().any(|n| n == "denied-urls"), "{names:?}");
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREEN, "green").await;
    wait_colour(&client, &guacr, (WIDTH - 2, HEIGHT - 2), pages::GREEN, "green-corner").await;
    // A static page costs nothing: no frames while nothing changes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frames = client.frames();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(client.frames() <= frames + 1, "frames while idle: {} → {}", frames, client.frames());
    let tree = session_tree(&guacr, &before).await;
    // The worker: seccomp filter, no new privileges, the client limits (64 descriptors).
    assert_eq!(status_field(tree.worker, "Seccomp:").as_deref(), Some("2"), "worker is not under seccomp");
    assert_eq!(status_field(tree.worker, "NoNewPrivs:").as_deref(), Some("1"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", tree.worker)).unwrap();
    assert!(limits.lines().any(|l| l.starts_with("Max open files") && l.contains(" 64 ")), "{limits}");
    // Chromium: not under the worker's filter (it has to exec and fork), never root, no new privileges.
    assert_eq!(status_field(tree.browser, "Seccomp:").as_deref(), Some("0"));
    assert_eq!(status_field(tree.browser, "NoNewPrivs:").as_deref(), Some("1"));
    let uid = status_field(tree.browser, "Uid:").unwrap();
    assert!(!uid.starts_with("0\t") && !uid.starts_with("0 "), "Chromium runs as root: {uid}");
    // The keeper's children: Chromium, and its crash handlers re-parented to the keeper (a subreaper).
    let kept: Vec<String> = children_of(tree.keeper).into_iter().map(cmdline).collect();
    assert!(kept.iter().all(|c| c.starts_with("/usr/lib/chromium/")), "{kept:?}");
    // Chromium's own sandbox is on wherever the host allows user namespaces: no --no-sandbox, and its
    // renderers run in their own user and PID namespaces under seccomp-bpf. Elsewhere `open` asked for
    // no-sandbox, and only then is it off.
    let browser_line = cmdline(tree.browser);
    if !chromium_sandbox_available() {
        assert!(browser_line.contains("--no-sandbox"), "{browser_line}");
        client.disconnect().await.unwrap();
        wait_gone(&tree.profile, &guacr).await;
        panic!("user namespaces are unavailable to guacr-worker on this host: Chromium's sandbox cannot be checked");
    }
    assert!(!browser_line.contains("--no-sandbox"), "Chromium runs without its sandbox: {browser_line}");
    let ns = |pid: u32, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
    let renderers: Vec<u32> =
        descendants(tree.browser).into_iter().filter(|&p| cmdline(p).contains("--type=renderer")).collect();
    assert!(!renderers.is_empty(), "no renderer process under the browser");
    for renderer in renderers {
        assert_ne!(ns(renderer, "user"), ns(tree.browser, "user"), "renderer {renderer} shares the user namespace");
        assert_ne!(ns(renderer, "pid"), ns(tree.browser, "pid"), "renderer {renderer} shares the PID namespace");
        assert_eq!(status_field(renderer, "Seccomp:").as_deref(), Some("2"), "renderer {renderer} without seccomp");
    }
    client.disconnect().await.unwrap();
    wait_gone(&tree.profile, &guacr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_changes_the_page() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let client = open(&guacr, &server.url("/button"), &[]).await;
    wait_colour(&client, &guacr, (700, 500), pages::RED, "button-before").await;
    client.send_mouse(150, 100, 0).await.unwrap();
    client.send_mouse(150, 100, 1).await.unwrap();
    client.send_mouse(150, 100, 0).await.unwrap();
    wait_colour(&client, &guacr, (700, 500), pages::BLUE, "button-after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wheel_scrolls_the_page() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let client = open(&guacr, &server.url("/tall"), &[]).await;
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::RED, "scroll-top").await;
    // One wheel step (120 pixels) at a time until the blue part reaches the middle (about 8 steps).
    let deadline = Instant::now() + PAGE_TIMEOUT;
    let mut steps = 0;
    while !close(client.screenshot().pixel(WIDTH / 2, HEIGHT / 2), pages::BLUE) && Instant::now() < deadline {
        client.send_mouse(500, 400, 16).await.unwrap();
        client.send_mouse(500, 400, 0).await.unwrap();
        steps += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::BLUE, "scrolled").await;
    assert!(steps >= 4, "the page scrolled before it was asked to ({steps} steps)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_text_appears() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let client = open(&guacr, &server.url("/type"), &[]).await;
    wait_colour(&client, &guacr, (700, 500), [255, 255, 255], "type-before").await;
    let dark = |client: &GuacClient| {
        let image = client.screenshot();
        (10..900)
            .step_by(3)
            .flat_map(|x| (10..170).step_by(3).map(move |y| (x, y)))
            .filter(|&(x, y)| image.pixel(x, y).iter().all(|&c| c < 100))
            .count()
    };
    assert_eq!(dark(&client), 0, "the text field starts empty");
    client.type_text_paced(&format!("{}x", pages::TYPED_TEXT), Duration::from_millis(30)).await.unwrap();
    client.send_key(0xff08, true).await.unwrap();
    client.send_key(0xff08, false).await.unwrap();
    // The page turns green only when the field holds exactly the text, non-ASCII characters included
    // (and the stray "x" was erased with BackSpace).
    wait_colour(&client, &guacr, (700, 500), pages::GREEN, "type-after").await;
    assert!(dark(&client) > 100, "the typed text is visible in the field");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_url_shows_the_block_page() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let client = open(&guacr, &server.url("/denied/page"), &[("denied-urls", "*/denied/*")]).await;
    wait_colour(&client, &guacr, (WIDTH - 20, HEIGHT - 20), pages::BLOCKED, "blocked").await;
    assert!(!server.requests().iter().any(|r| r.starts_with("/denied")), "the denied URL reached the server");
    assert!(guacr.log_contents().contains("Blocked by the URL policy"));
    // An allow-list that does not match blocks as well; one that matches lets the page through.
    let other = open(&guacr, &server.url("/colour/00c800"), &[("allowed-urls", "https://example.com/*")]).await;
    wait_colour(&other, &guacr, (WIDTH / 2, HEIGHT / 2), pages::BLOCKED, "not-allowed").await;
    let allowed = format!("{}/colour/*", server.url(""));
    let third = open(&guacr, &server.url("/colour/00c800"), &[("allowed-urls", &allowed)]).await;
    wait_colour(&third, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREEN, "allowed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_refused_by_default() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let before: BTreeSet<u32> = guacr.worker_pids().into_iter().collect();
    let client = open(&guacr, &server.url("/download"), &[]).await;
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::YELLOW, "download-page").await;
    let tree = session_tree(&guacr, &before).await;
    client.send_mouse(500, 400, 0).await.unwrap();
    client.send_mouse(500, 400, 1).await.unwrap();
    client.send_mouse(500, 400, 0).await.unwrap();
    let deadline = Instant::now() + PAGE_TIMEOUT;
    while !guacr.log_contents().contains("Download refused") {
        assert!(Instant::now() < deadline, "no download was refused; log:\n{}", guacr.log_tail(40));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut found = Vec::new();
    let mut stack = vec![tree.profile.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n.to_string_lossy().contains("file.bin")) {
                found.push(path);
            }
        }
    }
    assert!(found.is_empty(), "the download was written: {found:?}");
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::YELLOW, "download-page-after").await;
    assert!(!client.is_closed(), "the session goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_crash_ends_the_session_and_leaves_nothing() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let before: BTreeSet<u32> = guacr.worker_pids().into_iter().collect();
    let client = open(&guacr, &server.url("/colour/00c800"), &[]).await;
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREEN, "crash-before").await;
    let tree = session_tree(&guacr, &before).await;
    let needle = tree.profile.display().to_string();
    let running = processes_mentioning(&needle);
    assert!(running.len() >= 3, "Chromium runs several processes: {running:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(tree.browser as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    client
        .wait_until_named("an error after the browser died", Duration::from_secs(10), |s| !s.errors.is_empty())
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", guacr.log_tail(40)));
    let error = client.last_error().unwrap();
    assert_eq!(error.status, 515, "{error:?}");
    client.wait_closed(Duration::from_secs(10)).await.unwrap();
    wait_gone(&tree.profile, &guacr).await;
    assert!(processes_mentioning("--browser-keeper").iter().all(|&p| p != tree.keeper), "the keeper exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_are_isolated() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let first = open(&guacr, &server.url("/cookie?set"), &[]).await;
    wait_colour(&first, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREEN, "cookie-set").await;
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(open(&guacr, &server.url("/cookie"), &[]).await);
    }
    for (i, client) in others.iter().enumerate() {
        wait_colour(client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::RED, &format!("cookie-absent-{i}")).await;
    }
    // The first session still has its cookie, and every session still runs.
    wait_colour(&first, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREEN, "cookie-kept").await;
    assert!(!first.is_closed() && others.iter().all(|c| !c.is_closed()));
    assert_eq!(guacr.worker_pids().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popups_history_and_resize() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let client = open(&guacr, &server.url("/popup"), &[]).await;
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREY, "popup-page").await;
    // window.open() from a click: the pop-up's page opens in the session's view.
    client.send_mouse(300, 300, 0).await.unwrap();
    client.send_mouse(300, 300, 1).await.unwrap();
    client.send_mouse(300, 300, 0).await.unwrap();
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::BLUE, "popup-opened").await;
    // Alt+Left goes back, Alt+Right forward again.
    for (key, colour, name) in [(0xff51, pages::GREY, "back"), (0xff53, pages::BLUE, "forward")] {
        client.send_key(0xffe9, true).await.unwrap();
        client.send_key(key, true).await.unwrap();
        client.send_key(key, false).await.unwrap();
        client.send_key(0xffe9, false).await.unwrap();
        wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), colour, name).await;
    }
    // The keyboard's browser keys do the same (XF86Back, XF86Forward).
    for (key, colour, name) in [(0x1008_ff26, pages::GREY, "xf86-back"), (0x1008_ff27, pages::BLUE, "xf86-forward")] {
        client.send_key(key, true).await.unwrap();
        client.send_key(key, false).await.unwrap();
        wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), colour, name).await;
    }
    // The client's `size` resizes the browser's viewport: the page fills the new size.
    client.send_size(800, 600).await.unwrap();
    wait_colour_sized(&client, &guacr, (800, 600), (795, 595), pages::BLUE, "resized").await;
    client.send_size(1100, 700).await.unwrap();
    wait_colour_sized(&client, &guacr, (1100, 700), (1095, 695), pages::BLUE, "resized-larger").await;
}

/// The client's clipboard (`clipboard` stream).
async fn set_clipboard(client: &GuacClient, text: &str) {
    client.send("clipboard", &["10", "text/plain"]).await.unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text.as_bytes());
    client.send("blob", &["10", &b64]).await.unwrap();
    client.send("end", &["10"]).await.unwrap();
}

/// Ctrl plus a letter.
async fn ctrl(client: &GuacClient, letter: char) {
    client.send_key(0xffe3, true).await.unwrap();
    client.send_key(letter as u32, true).await.unwrap();
    client.send_key(letter as u32, false).await.unwrap();
    client.send_key(0xffe3, false).await.unwrap();
}

fn clipboard_received(client: &GuacClient) -> Vec<String> {
    let state = client.state();
    state
        .finished_streams
        .iter()
        .filter(|s| s.kind == "clipboard")
        .map(|s| String::from_utf8_lossy(&s.data).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clipboard_paste_and_copy_follow_the_parameters() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let open_page = open(&guacr, &server.url("/type"), &[]).await;
    let locked = open(&guacr, &server.url("/type"), &[("disable-copy", "true"), ("disable-paste", "true")]).await;
    for (client, name) in [(&open_page, "clip-open"), (&locked, "clip-locked")] {
        wait_colour(client, &guacr, (700, 500), [255, 255, 255], name).await;
        set_clipboard(client, pages::TYPED_TEXT).await;
    }
    // Ctrl+V pastes the client's clipboard into the focused field.
    ctrl(&open_page, 'v').await;
    wait_colour(&open_page, &guacr, (700, 500), pages::GREEN, "pasted").await;
    // Ctrl+A, Ctrl+C: the selection becomes the client's clipboard.
    ctrl(&open_page, 'a').await;
    ctrl(&open_page, 'c').await;
    open_page
        .wait_until_named("the copied selection", PAGE_TIMEOUT, |s| {
            s.finished_streams
                .iter()
                .any(|st| st.kind == "clipboard" && String::from_utf8_lossy(&st.data) == pages::TYPED_TEXT)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", guacr.log_tail(30)));

    // With disable-paste the same Ctrl+V pastes nothing; typing still works, and copying sends nothing.
    ctrl(&locked, 'v').await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(close(locked.screenshot().pixel(700, 500), [255, 255, 255]), "disable-paste: nothing was pasted");
    locked.type_text_paced(pages::TYPED_TEXT, Duration::from_millis(30)).await.unwrap();
    wait_colour(&locked, &guacr, (700, 500), pages::GREEN, "locked-typed").await;
    ctrl(&locked, 'a').await;
    ctrl(&locked, 'c').await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(clipboard_received(&locked), Vec::<String>::new(), "disable-copy: nothing left the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_dialogs_never_block_the_page() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let client = open(&guacr, &server.url("/dialog"), &[]).await;
    // alert accepted, confirm and prompt cancelled: the script runs to its end and paints green.
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREEN, "dialogs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_browser_ends_the_session_and_leaves_nothing() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let before: BTreeSet<u32> = guacr.worker_pids().into_iter().collect();
    let client = open(&guacr, &server.url("/colour/00c800"), &[]).await;
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREEN, "hang-before").await;
    let tree = session_tree(&guacr, &before).await;
    // A stopped browser answers nothing: the worker's ping times out (15 s) and the user gets 515.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(tree.browser as i32), nix::sys::signal::Signal::SIGSTOP).unwrap();
    client
        .wait_until_named("an error after the browser hung", Duration::from_secs(30), |s| !s.errors.is_empty())
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", guacr.log_tail(40)));
    let error = client.last_error().unwrap();
    assert_eq!(error.status, 515, "{error:?}");
    assert!(error.message.contains("stopped responding"), "{error:?}");
    wait_gone(&tree.profile, &guacr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_or_gateway_leaves_no_browser_behind() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    // The worker killed: its keeper sees the lifeline close and cleans up; the user gets an error.
    let before: BTreeSet<u32> = guacr.worker_pids().into_iter().collect();
    let client = open(&guacr, &server.url("/colour/00c800"), &[]).await;
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREEN, "kill-worker").await;
    let tree = session_tree(&guacr, &before).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(tree.worker as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    client
        .wait_until_named("an error after the worker died", Duration::from_secs(10), |s| !s.errors.is_empty())
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", guacr.log_tail(40)));
    wait_gone(&tree.profile, &guacr).await;
    // guacr and its whole process group killed (as the test harness stops it): the same.
    let before: BTreeSet<u32> = guacr.worker_pids().into_iter().collect();
    let client = open(&guacr, &server.url("/colour/00c800"), &[]).await;
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREEN, "kill-gateway").await;
    let tree = session_tree(&guacr, &before).await;
    let log = guacr.log_path().to_path_buf();
    drop(guacr);
    wait_gone_or(&tree.profile, || std::fs::read_to_string(&log).unwrap_or_default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_delivered_when_enabled() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let client = open(&guacr, &server.url("/download"), &[("enable-download", "true")]).await;
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::YELLOW, "download-enabled").await;
    client.send_mouse(500, 400, 0).await.unwrap();
    client.send_mouse(500, 400, 1).await.unwrap();
    client.send_mouse(500, 400, 0).await.unwrap();
    let expected = pages::download_content();
    client
        .wait_until_named("the download as a file stream", PAGE_TIMEOUT, |s| {
            s.finished_streams.iter().any(|st| {
                st.kind == "file" && st.args.get(2).map(String::as_str) == Some("file.bin") && st.data == expected
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", guacr.log_tail(40)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_reach_the_page_file_chooser_when_enabled() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let timeout = Duration::from_secs(10);
    let enabled = open(&guacr, &server.url("/upload"), &[("enable-upload", "true")]).await;
    let disabled = open(&guacr, &server.url("/upload"), &[]).await;
    for (client, name) in [(&enabled, "upload-on"), (&disabled, "upload-off")] {
        wait_colour(client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREY, name).await;
    }
    let text = pages::UPLOAD_TEXT.as_bytes();
    let ack = enabled.upload(("file", &["3", "text/plain", pages::UPLOAD_NAME]), 3, text, 6048, 4, timeout).await;
    assert_eq!(ack.expect("upload").status, "0");
    // The next file chooser the page opens (a click on its file input) gets the uploaded file.
    enabled.send_mouse(500, 400, 0).await.unwrap();
    enabled.send_mouse(500, 400, 1).await.unwrap();
    enabled.send_mouse(500, 400, 0).await.unwrap();
    wait_colour(&enabled, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREEN, "uploaded").await;
    // Without enable-upload the drop is refused and the chooser stays empty.
    let ack = disabled.upload(("file", &["3", "text/plain", pages::UPLOAD_NAME]), 3, text, 6048, 4, timeout).await;
    assert_ne!(ack.expect("refusal").status, "0");
    disabled.send_mouse(500, 400, 0).await.unwrap();
    disabled.send_mouse(500, 400, 1).await.unwrap();
    disabled.send_mouse(500, 400, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(close(disabled.screenshot().pixel(WIDTH / 2, HEIGHT / 2), pages::GREY), "no file reached the page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_lossless_is_pixel_exact() {
    let server = PageServer::start().await.unwrap();
    let guacr = guacr();
    let lossless = open(&guacr, &server.url("/checker"), &[("force-lossless", "true")]).await;
    let lossy = open(&guacr, &server.url("/checker"), &[]).await;
    // A block of the single-pixel checkerboard in the middle and one at the bottom-right corner.
    let blocks = [(WIDTH / 2 - 100, HEIGHT / 2 - 100), (WIDTH - 201, HEIGHT - 201)];
    let wrong = |image: &RgbImage| {
        if (image.width, image.height) != (WIDTH, HEIGHT) {
            return usize::MAX;
        }
        let mut count = 0;
        for &(x0, y0) in &blocks {
            for y in y0..y0 + 200 {
                for x in x0..x0 + 200 {
                    let want = pages::checker_pixel(x, y);
                    count += usize::from(image.pixel(x, y) != want);
                }
            }
        }
        count
    };
    // With force-lossless every pixel arrives exactly (PNG screencast, lossless display path).
    let exact = lossless
        .wait_until_named("the exact checkerboard", PAGE_TIMEOUT, |s| {
            s.display.size() == (WIDTH, HEIGHT) && wrong(&s.screenshot()) == 0
        })
        .await;
    if let Err(e) = exact {
        let path = artifact_dir().join("rbi-lossless.png");
        let _ = std::fs::create_dir_all(artifact_dir());
        let _ = lossless.save_png(&path);
        panic!("{e}; {} pixels differ; client image in {}", wrong(&lossless.screenshot()), path.display());
    }
    // The default JPEG screencast cannot carry it: the same page arrives blurred. (This is what makes the
    // check above mean something.)
    lossy
        .wait_until_named("the lossy checkerboard painted", PAGE_TIMEOUT, |s| {
            let image = s.screenshot();
            s.display.size() == (WIDTH, HEIGHT)
                && (0..100).any(|i| image.pixel(WIDTH / 2 + i, HEIGHT / 2).iter().all(|&c| c < 100))
                && (0..100).any(|i| image.pixel(WIDTH / 2 + i, HEIGHT / 2).iter().all(|&c| c > 155))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", guacr.log_tail(40)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let blurred = wrong(&lossy.screenshot());
    assert!(blurred > 8000, "without force-lossless only {blurred} of 80000 pixels differ");
}

/// The memory cgroup directory a process is in: the cgroup v1 memory hierarchy, or cgroup v2.
fn memory_cgroup(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let v1 = text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "memory").then(|| path.trim().to_string())
    });
    match v1 {
        Some(path) => Some(PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'))),
        None => {
            let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
            Some(PathBuf::from("/sys/fs/cgroup").join(path.trim().trim_start_matches('/')))
        }
    }
}

/// The kernel's count of processes it killed for the group's memory limit.
fn oom_kills(group: &std::path::Path) -> u64 {
    ["memory.oom_control", "memory.events"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(group.join(f)).ok())
        .filter_map(|t| t.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok()))
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_ends_a_greedy_page_and_leaves_nothing() {
    const LIMIT_MIB: u64 = 512;
    let server = PageServer::start().await.unwrap();
    let guacr =
        GuacrProcess::builder().args(["--worker-memory-mib", &LIMIT_MIB.to_string()]).start().expect("starting guacr");
    let log = guacr.log_contents();
    assert!(
        log.contains("Per-session cgroup v2 memory and CPU limits are on")
            || log.contains("Per-session cgroup v1 memory limits are on"),
        "this host gives guacr no memory cgroup (neither delegated cgroup v2 memory nor a writable cgroup v1 memory \
         hierarchy), so the per-session memory limit cannot be enforced; log:\n{log}"
    );
    let before: BTreeSet<u32> = guacr.worker_pids().into_iter().collect();
    let client = open(&guacr, &server.url("/hog"), &[]).await;
    wait_colour(&client, &guacr, (WIDTH / 2, HEIGHT / 2), pages::GREY, "hog-before").await;
    let tree = session_tree(&guacr, &before).await;
    // The worker, its keeper and Chromium share the session's group, limited as configured; the
    // supervisor is outside it.
    let group = memory_cgroup(tree.worker).expect("the worker's memory cgroup");
    for pid in [tree.keeper, tree.browser] {
        assert_eq!(memory_cgroup(pid).as_ref(), Some(&group), "process {pid} is outside the session's group");
    }
    assert_ne!(memory_cgroup(guacr.pid()).as_ref(), Some(&group), "the supervisor is in the session's group");
    let limit = ["memory.limit_in_bytes", "memory.max"]
        .iter()
        .find_map(|f| std::fs::read_to_string(group.join(f)).ok())
        .unwrap_or_else(|| panic!("no memory limit file in {}", group.display()));
    assert_eq!(limit.trim(), (LIMIT_MIB << 20).to_string(), "the limit of {}", group.display());
    // A click starts the page filling memory without end: the kernel kills it at the limit, and the user
    // gets 515.
    client.send_mouse(500, 400, 0).await.unwrap();
    client.send_mouse(500, 400, 1).await.unwrap();
    client.send_mouse(500, 400, 0).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kills = 0;
    while client.state().errors.is_empty() {
        kills = kills.max(oom_kills(&group));
        assert!(Instant::now() < deadline, "no error after the page filled its memory; log:\n{}", guacr.log_tail(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kills = kills.max(oom_kills(&group));
    let error = client.last_error().unwrap();
    assert_eq!(error.status, 515, "{error:?}");
    assert!(kills > 0, "the session ended ({error:?}) but the kernel killed nothing for the limit");
    client.wait_closed(Duration::from_secs(10)).await.unwrap();
    wait_gone(&tree.profile, &guacr).await;
    // The session's group goes once its processes have.
    let deadline = Instant::now() + Duration::from_secs(30);
    while group.exists() {
        assert!(Instant::now() < deadline, "{} is left behind; log:\n{}", group.display(), guacr.log_tail(40));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The operator learns why the page crashed.
    assert!(guacr.log_contents().contains("reached its memory limit"), "log:\n{}", guacr.log_tail(40));
}
