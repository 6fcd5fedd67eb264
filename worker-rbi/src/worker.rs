//! The rbi session: launch Chromium through the keeper, sandbox the worker, then one `select!` over the
//! browser's pipe, the control socket and a one-second tick.
//!
//! 1. Wait for `Start`, parse the parameters, report unsupported ones.
//! 2. Create a throwaway profile directory (mode 0700, `HOME` and `TMPDIR` inside), three pipes (CDP in,
//!    CDP out, lifeline) and start the keeper (`keeper.rs`), which confines and starts Chromium.
//! 3. [`worker_common::confine_browser_worker`]: from here on the worker cannot connect, start processes,
//!    signal anyone or open files (except reading completed downloads with `enable-download` and writing
//!    uploads with `enable-upload`, each beneath its own directory of the profile); it talks CDP over the
//!    pipes it holds.
//! 4. Over CDP: deny downloads (or save them in the profile), discover targets (pop-ups), attach to the
//!    page (flattened session), intercept file choosers, enable `Fetch` interception when a URL policy is
//!    set, fix the viewport, start the screencast, navigate.
//! 5. Each screencast frame is decoded and drawn into the back surface (changed tiles only) and published
//!    when the supervisor has released the previous one; the frame is acknowledged to Chromium only then,
//!    so a slow client slows the screencast instead of queueing frames.
//!
//! Containment: end of file on the CDP pipe (Chromium died), a crashed or closed page, or no answer to a
//! `Browser.getVersion` ping within [`PING_TIMEOUT`] end the session with 515 (upstream error). When the
//! worker exits, its lifeline closes and the keeper kills whatever is left and removes the profile.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use serde_json::{json, Value};
use shm_proto::control::CLIPBOARD_CHUNK;
use shm_proto::control::{StreamFromWorker, StreamToWorker};
use shm_proto::{FromWorker, ToWorker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tracing::{debug, info, warn};
use worker_common::{control_failed, heartbeat_timer, WorkerArgs, WorkerSession, EXIT_REPORTED};

use crate::cdp::{Cdp, Incoming};
use crate::download::{Downloads, Out};
use crate::input::{Input, Shortcut};
use crate::keeper;
use crate::render;
use crate::settings::Settings;
use crate::upload::Uploads;

/// Guacamole status codes (guacd-wire.md §7).
pub mod status {
    pub const UPSTREAM_ERROR: u16 = 515;
    pub const UPSTREAM_NOT_FOUND: u16 = 519;
    pub const UPSTREAM_UNAVAILABLE: u16 = 520;
}

/// Where Debian installs the browser (the real binary first: `/usr/bin/chromium` is a shell wrapper).
const BROWSERS: &[&str] = &["/usr/lib/chromium/chromium", "/usr/bin/chromium"];
/// How long Chromium may take until its page is attached.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the worker checks that the browser still answers.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A browser that has not answered a ping for this long is hung.
pub const PING_TIMEOUT: Duration = Duration::from_secs(15);
/// A pop-up that never gets a URL is closed after this long.
const POPUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Clipboard text kept from the client for pasting.
const MAX_PASTE: usize = 256 * 1024;
/// Size used when neither the client nor the parameters give one.
const DEFAULT_SIZE: (u32, u32) = (1024, 768);
const READ_CHUNK: usize = 256 * 1024;

/// The page shown instead of a URL the policy denies.
fn block_page(url: &str) -> String {
    let escaped: String = url
        .chars()
        .take(2000)
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Blocked</title><style>html,body{{margin:0;\
         height:100%;background:#7f1d1d;color:#fff;font:24px sans-serif}}main{{padding:48px}}code{{word-break:\
         break-all}}</style></head><body><main><h1>Page blocked</h1><p>The policy of this connection does not \
         allow this address:</p><p><code>{escaped}</code></p></main></body></html>"
    )
}

/// A fatal error, as the supervisor will show it.
#[derive(Debug)]
struct Failure {
    status: u16,
    message: String,
}

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into() }
    }
}

enum End {
    Exit(i32),
    Fail(Failure),
}

/// What an outstanding command's answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Targets,
    CreateTarget,
    Attach,
    Ping,
    History(i64),
    /// The key event of a Ctrl+C: once the browser answers it, the selection is read.
    KeyBeforeCopy,
    Selection,
}

/// The browser's process side, as the worker holds it.
struct Launched {
    to_browser: OwnedFd,
    from_browser: OwnedFd,
    /// Closing it (the worker's exit) tells the keeper to clean up.
    lifeline: OwnedFd,
    /// Never waited for: the worker may not call wait4 once sandboxed, and the keeper outlives it anyway.
    _keeper: std::process::Child,
    /// Where Chromium saves downloads (inside the profile).
    downloads: PathBuf,
    /// Where the user's uploads are stored for the page's file choosers (inside the profile).
    uploads: PathBuf,
}

/// Runs one session; returns the process exit code.
pub async fn run(args: &WorkerArgs) -> i32 {
    let failure = "Cannot open the browser";
    let (session, start, settings) =
        match WorkerSession::begin_with(status::UPSTREAM_NOT_FOUND, failure, Settings::from_params).await {
            Ok(begun) => begun,
            Err(code) => return code,
        };
    let geometry = session.frames.geometry();
    let clamp = |(w, h): (u32, u32)| (w.clamp(1, geometry.max_width), h.clamp(1, geometry.max_height));
    let client = (start.width > 0 && start.height > 0).then_some((start.width, start.height));
    let size = clamp((
        settings.width.or(client.map(|c| c.0)).unwrap_or(DEFAULT_SIZE.0),
        settings.height.or(client.map(|c| c.1)).unwrap_or(DEFAULT_SIZE.1),
    ));
    let launched = match launch(args, &settings, size) {
        Ok(launched) => launched,
        Err(failure) => {
            session.fail(failure.status, failure.message).await;
            return EXIT_REPORTED;
        }
    };
    let Launched { to_browser, from_browser, lifeline, _keeper, downloads, uploads } = launched;
    // Registered with tokio before the sandbox: the conversion checks the descriptors (fstat).
    let pipes =
        pipe::Sender::from_owned_fd(to_browser).and_then(|tx| Ok((tx, pipe::Receiver::from_owned_fd(from_browser)?)));
    let (sender, receiver) = match pipes {
        Ok(pipes) => pipes,
        Err(e) => {
            session.fail(status::UPSTREAM_ERROR, format!("Browser pipes: {e}")).await;
            return EXIT_REPORTED;
        }
    };
    // With downloads on, the worker reads completed downloads (and nothing else) to stream them; with
    // uploads on, it writes the user's files beneath the uploads directory (and nowhere else).
    let policy = worker_common::Policy {
        read_paths: if settings.enable_download { vec![downloads.clone()] } else { Vec::new() },
        write_paths: if settings.enable_upload { vec![uploads.clone()] } else { Vec::new() },
        ..worker_common::Policy::default()
    };
    match worker_common::confine_browser_worker(args, &policy) {
        Ok(sandboxed) => debug!(?sandboxed, "Worker sandboxed"),
        Err(e) => {
            session.fail(status::UPSTREAM_ERROR, format!("cannot apply the sandbox: {e}")).await;
            return EXIT_REPORTED;
        }
    }
    let mut worker = Worker {
        session,
        settings,
        cdp: Cdp::new(),
        input: Input::new(),
        pending: HashMap::new(),
        target: None,
        page: None,
        size,
        max: (geometry.max_width, geometry.max_height),
        unacked: None,
        ping: None,
        last_ping: Instant::now(),
        popups: HashMap::new(),
        swallowed: Vec::new(),
        paste: Vec::new(),
        clipboard: String::new(),
        started: Instant::now(),
        first_frame: false,
        downloads: Downloads::new(downloads.clone()),
        uploads: Uploads::new(uploads),
    };
    worker.begin_cdp(&downloads);
    let end = worker.serve(sender, receiver).await;
    drop(lifeline);
    match end {
        End::Exit(code) => code,
        End::Fail(failure) => {
            worker.session.fail(failure.status, failure.message).await;
            EXIT_REPORTED
        }
    }
}

/// Creates the profile directory and the pipes, and starts the keeper with Chromium's command line.
fn launch(args: &WorkerArgs, settings: &Settings, (width, height): (u32, u32)) -> Result<Launched, Failure> {
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        Failure::new(status::UPSTREAM_UNAVAILABLE, format!("Cannot start the browser: {what}: {e}"))
    };
    let browser = BROWSERS.iter().map(Path::new).find(|p| p.is_file()).ok_or_else(|| {
        Failure::new(status::UPSTREAM_UNAVAILABLE, "Cannot start the browser: Chromium is not installed")
    })?;
    let profile = create_profile().map_err(|e| unavailable("profile directory", &e))?;
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (cdp_in_read, cdp_in_write) = nix::unistd::pipe2(cloexec).map_err(|e| unavailable("pipe", &e))?;
    let (cdp_out_read, cdp_out_write) = nix::unistd::pipe2(cloexec).map_err(|e| unavailable("pipe", &e))?;
    let (lifeline_read, lifeline_write) = nix::unistd::pipe2(cloexec).map_err(|e| unavailable("pipe", &e))?;
    let me = std::env::current_exe().map_err(|e| unavailable("own path", &e))?;
    let mut command = Command::new(me);
    command
        .arg(keeper::FLAG)
        .arg("--profile")
        .arg(&profile)
        .arg("--log")
        .arg(&args.log_level)
        .arg("--")
        .arg(browser)
        .args(chromium_flags(settings, &profile, width, height))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // Its own process group: a SIGKILL aimed at guacr's or the worker's group (an operator, a test
    // harness) must not take the keeper with it, or nobody would remove the profile.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mappings = vec![
        FdMapping { parent_fd: cdp_in_read, child_fd: keeper::CDP_IN_FD },
        FdMapping { parent_fd: cdp_out_write, child_fd: keeper::CDP_OUT_FD },
        FdMapping { parent_fd: lifeline_read, child_fd: keeper::LIFELINE_FD },
    ];
    command.fd_mappings(mappings).map_err(|e| unavailable("descriptors", &e))?;
    let keeper = command.spawn().map_err(|e| {
        let _ = std::fs::remove_dir_all(&profile);
        unavailable("keeper", &e)
    })?;
    // `command` still holds the keeper's copies of the pipe ends; dropping it leaves Chromium the only
    // holder, so its death is end of file here.
    drop(command);
    info!(browser = %browser.display(), profile = %profile.display(), sandbox = !settings.no_sandbox, "Starting the browser");
    Ok(Launched {
        to_browser: cdp_in_write,
        from_browser: cdp_out_read,
        lifeline: lifeline_write,
        _keeper: keeper,
        downloads: profile.join("downloads"),
        uploads: profile.join("uploads"),
    })
}

/// `/tmp/guacr-rbi-<pid>-<nanos>` with `home`, `tmp`, `data`, `downloads` and `uploads` inside, all mode
/// 0700.
fn create_profile() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("guacr-rbi-{}-{nanos}", std::process::id()));
    let mut builder = std::fs::DirBuilder::new();
    builder.mode(0o700);
    builder.create(&dir)?;
    for sub in ["home", "tmp", "data", "downloads", "uploads"] {
        builder.create(dir.join(sub))?;
    }
    Ok(dir)
}

fn chromium_flags(settings: &Settings, profile: &Path, width: u32, height: u32) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--headless",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-crash-reporter",
        "--disable-features=Translate,MediaRouter,OptimizationHints",
        "--password-store=basic",
        "--mute-audio",
        "--noerrdialogs",
        "--deny-permission-prompts",
        "--remote-debugging-pipe",
    ]
    .map(String::from)
    .to_vec();
    flags.push(format!("--user-data-dir={}", profile.join("data").display()));
    flags.push(format!("--window-size={width},{height}"));
    if settings.no_sandbox {
        flags.push("--no-sandbox".into());
    }
    // Without a URL policy the first page loads while the worker attaches (it saves a round of
    // start-up); with one, nothing may load before `Fetch` interception is on.
    flags.push(if settings.policy.is_active() { "about:blank".into() } else { settings.url.clone() });
    flags
}

struct Worker {
    session: WorkerSession,
    settings: Settings,
    cdp: Cdp,
    input: Input,
    pending: HashMap<u64, Pending>,
    /// The page's target id and flattened session, once attached.
    target: Option<String>,
    page: Option<String>,
    size: (u32, u32),
    max: (u32, u32),
    /// A screencast frame drawn but not yet published; acknowledged once it is.
    unacked: Option<i64>,
    /// When the outstanding ping was sent.
    ping: Option<Instant>,
    last_ping: Instant,
    /// Pop-ups without a URL yet, and when they appeared.
    popups: HashMap<String, Instant>,
    /// Keys whose press was handled as a shortcut: their release is not passed on either.
    swallowed: Vec<u32>,
    paste: Vec<u8>,
    /// The client's clipboard, pasted with Ctrl+V.
    clipboard: String,
    started: Instant,
    first_frame: bool,
    /// Completed downloads being streamed to the user (`enable-download`).
    downloads: Downloads,
    /// The user's uploads, for the page's file choosers (`enable-upload`).
    uploads: Uploads,
}

impl Worker {
    /// A command whose answer the worker needs. At most a handful are outstanding at once (start-up, one
    /// ping, a history or selection request per key press), so a browser that never answers cannot
    /// grow the map by much.
    fn command(&mut self, session: Option<String>, method: &'static str, params: Value, pending: Pending) {
        let id = self.cdp.command(session.as_deref(), method, params);
        self.pending.insert(id, pending);
    }

    /// A command whose answer is not needed (input, acknowledgements, settings): not tracked, so input
    /// to a browser that never answers costs nothing; its errors show up at debug level as unknown ids.
    fn browser_command(&mut self, method: &'static str, params: Value) {
        self.cdp.command(None, method, params);
    }

    fn page_command(&mut self, method: &'static str, params: Value) {
        let page = self.page.clone();
        self.cdp.command(page.as_deref(), method, params);
    }

    fn begin_cdp(&mut self, downloads: &Path) {
        let behavior = if self.settings.enable_download {
            json!({ "behavior": "allowAndName", "downloadPath": downloads, "eventsEnabled": true })
        } else {
            json!({ "behavior": "deny", "eventsEnabled": true })
        };
        self.browser_command("Browser.setDownloadBehavior", behavior);
        self.browser_command("Target.setDiscoverTargets", json!({ "discover": true }));
        self.command(None, "Target.getTargets", json!({}), Pending::Targets);
    }

    async fn serve(&mut self, mut sender: pipe::Sender, mut receiver: pipe::Receiver) -> End {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut tick = heartbeat_timer();
        loop {
            loop {
                match self.cdp.poll() {
                    Ok(Some(message)) => {
                        if let Err(end) = self.browser_message(message).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return End::Fail(Failure::new(status::UPSTREAM_ERROR, format!("Browser: {e}"))),
                }
            }
            let pending_output = !self.cdp.pending_output().is_empty();
            tokio::select! {
                read = receiver.read(&mut buf) => match read {
                    Ok(0) | Err(_) if self.page.is_none() => {
                        return End::Fail(Failure::new(
                            status::UPSTREAM_UNAVAILABLE,
                            "The browser exited while starting (its last words are in guacr's log; on a host \
                             without user namespaces for the worker user, set no-sandbox).",
                        ));
                    }
                    Ok(0) | Err(_) => {
                        return End::Fail(Failure::new(status::UPSTREAM_ERROR, "The browser stopped unexpectedly."));
                    }
                    Ok(n) => self.cdp.receive(&buf[..n]),
                },
                written = sender.write(self.cdp.pending_output()), if pending_output => match written {
                    Ok(n) => self.cdp.consume_output(n),
                    Err(_) => {
                        return End::Fail(Failure::new(status::UPSTREAM_ERROR, "The browser stopped unexpectedly."));
                    }
                },
                message = self.session.control.recv::<ToWorker>() => match message {
                    Ok(Some(message)) => {
                        if let Err(end) = self.control(message).await {
                            return end;
                        }
                    }
                    Ok(None) => return End::Exit(0),
                    Err(error) => return End::Exit(control_failed(&error)),
                },
                _ = tick.tick() => {
                    if let Err(end) = self.tick().await {
                        return end;
                    }
                }
            }
        }
    }

    async fn tick(&mut self) -> Result<(), End> {
        self.send(&FromWorker::Heartbeat).await?;
        if self.page.is_none() && self.started.elapsed() > START_TIMEOUT {
            return Err(End::Fail(Failure::new(status::UPSTREAM_UNAVAILABLE, "The browser did not start in time.")));
        }
        match self.ping {
            Some(sent) if sent.elapsed() > PING_TIMEOUT => {
                return Err(End::Fail(Failure::new(status::UPSTREAM_ERROR, "The browser stopped responding.")));
            }
            None if self.last_ping.elapsed() >= PING_INTERVAL => {
                self.ping = Some(Instant::now());
                self.last_ping = Instant::now();
                self.command(None, "Browser.getVersion", json!({}), Pending::Ping);
            }
            _ => {}
        }
        let stale: Vec<String> =
            self.popups.iter().filter(|(_, at)| at.elapsed() > POPUP_TIMEOUT).map(|(id, _)| id.clone()).collect();
        for target in stale {
            self.popups.remove(&target);
            info!("Closing a pop-up that never loaded a page");
            self.browser_command("Target.closeTarget", json!({ "targetId": target }));
        }
        Ok(())
    }

    async fn send(&self, message: &FromWorker) -> Result<(), End> {
        self.session.control.send(message).await.map_err(|_| End::Exit(1))
    }

    async fn browser_message(&mut self, message: Incoming) -> Result<(), End> {
        match message {
            Incoming::Answer { id, result } => {
                let Some(pending) = self.pending.remove(&id) else {
                    if let Err(error) = result {
                        debug!(id, %error, "Browser refused a command");
                    }
                    return Ok(());
                };
                match result {
                    Ok(result) => self.answer(pending, result).await?,
                    Err(error) => match pending {
                        Pending::Targets | Pending::CreateTarget | Pending::Attach => {
                            return Err(End::Fail(Failure::new(
                                status::UPSTREAM_ERROR,
                                format!("Cannot open the browser's page: {error}"),
                            )));
                        }
                        Pending::Ping => self.ping = None,
                        other => debug!(?other, %error, "Browser refused a command"),
                    },
                }
            }
            Incoming::Event { method, params, session } => {
                let on_page = session.is_some() && session == self.page;
                self.event(&method, params, on_page).await?;
            }
        }
        Ok(())
    }

    async fn answer(&mut self, pending: Pending, result: Value) -> Result<(), End> {
        match pending {
            Pending::Targets => {
                let page = result["targetInfos"].as_array().and_then(|targets| {
                    targets.iter().find(|t| t["type"] == "page").and_then(|t| t["targetId"].as_str()).map(String::from)
                });
                match page {
                    Some(target) => self.attach(target),
                    None => self.command(
                        None,
                        "Target.createTarget",
                        json!({ "url": "about:blank" }),
                        Pending::CreateTarget,
                    ),
                }
            }
            Pending::CreateTarget => match result["targetId"].as_str() {
                Some(target) => self.attach(target.to_string()),
                None => return Err(End::Fail(Failure::new(status::UPSTREAM_ERROR, "The browser opened no page."))),
            },
            Pending::Attach => {
                let Some(session) = result["sessionId"].as_str() else {
                    return Err(End::Fail(Failure::new(status::UPSTREAM_ERROR, "The browser gave no page session.")));
                };
                self.page = Some(session.to_string());
                self.start_page().await?;
            }
            Pending::Ping => self.ping = None,
            Pending::History(step) => {
                let current = result["currentIndex"].as_i64().unwrap_or(-1);
                let entries = result["entries"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                let wanted = usize::try_from(current + step).ok().and_then(|i| entries.get(i));
                if let Some(id) = wanted.and_then(|e| e["id"].as_i64()) {
                    self.page_command("Page.navigateToHistoryEntry", json!({ "entryId": id }));
                }
            }
            Pending::KeyBeforeCopy => self.read_selection(),
            Pending::Selection => {
                if let Some(text) = result["result"]["value"].as_str() {
                    if !text.is_empty() {
                        let text = text.to_string();
                        self.send_clipboard(text.as_bytes()).await?;
                    }
                }
            }
        }
        Ok(())
    }

    fn attach(&mut self, target: String) {
        self.target = Some(target.clone());
        self.command(None, "Target.attachToTarget", json!({ "targetId": target, "flatten": true }), Pending::Attach);
    }

    /// The page is attached: policy, viewport, screencast, first URL.
    async fn start_page(&mut self) -> Result<(), End> {
        self.page_command("Page.enable", json!({}));
        self.page_command("Inspector.enable", json!({}));
        // File choosers are answered by the worker (with the user's uploads, or not at all).
        self.page_command("Page.setInterceptFileChooserDialog", json!({ "enabled": true }));
        if self.settings.policy.is_active() {
            self.page_command(
                "Fetch.enable",
                json!({ "patterns": [{ "urlPattern": "*", "requestStage": "Request" }] }),
            );
        }
        self.set_viewport();
        self.start_screencast();
        if self.settings.policy.is_active() {
            let url = self.settings.url.clone();
            self.page_command("Page.navigate", json!({ "url": url }));
        }
        let (width, height) = self.size;
        self.session
            .frames
            .resize(width, height)
            .map_err(|e| End::Fail(Failure::new(status::UPSTREAM_ERROR, format!("Cannot size the display: {e}"))))?;
        info!(width, height, ms = self.started.elapsed().as_millis() as u64, "Browser page attached");
        self.send(&FromWorker::Connected { width, height, name: "Browser".into() }).await?;
        if self.settings.enable_upload {
            self.send(&FromWorker::Stream(StreamFromWorker::AcceptFiles { accept: true })).await?;
        }
        Ok(())
    }

    fn set_viewport(&mut self) {
        let (width, height) = self.size;
        self.page_command(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
    }

    fn start_screencast(&mut self) {
        let (width, height) = self.size;
        let format = if self.settings.force_lossless { "png" } else { "jpeg" };
        self.page_command(
            "Page.startScreencast",
            json!({ "format": format, "quality": 80, "maxWidth": width, "maxHeight": height, "everyNthFrame": 1 }),
        );
    }

    async fn event(&mut self, method: &str, params: Value, on_page: bool) -> Result<(), End> {
        match method {
            "Page.screencastFrame" if on_page => self.frame(params).await?,
            "Fetch.requestPaused" if on_page => self.request_paused(&params),
            "Page.fileChooserOpened" if on_page => {
                let files = self.uploads.take_for_chooser(params["mode"] == "selectMultiple");
                match params["backendNodeId"].as_i64() {
                    Some(node) if !files.is_empty() => {
                        info!(files = files.len(), "Answering a file chooser with the user's uploads");
                        let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
                        self.page_command("DOM.setFileInputFiles", json!({ "files": files, "backendNodeId": node }));
                    }
                    _ => info!("File chooser left empty (no upload waiting)"),
                }
            }
            "Page.javascriptDialogOpening" if on_page => {
                // No one can answer a dialog in a screencast: alerts and unload prompts are accepted,
                // confirm and prompt dialogs are cancelled, so a page never blocks on them.
                let kind = params["type"].as_str().unwrap_or("");
                let accept = matches!(kind, "alert" | "beforeunload");
                info!(kind, accept, "Answering a JavaScript dialog");
                self.page_command("Page.handleJavaScriptDialog", json!({ "accept": accept }));
            }
            "Inspector.targetCrashed" if on_page => {
                return Err(End::Fail(Failure::new(status::UPSTREAM_ERROR, "The browser's page crashed.")));
            }
            "Target.detachedFromTarget"
                if params["sessionId"].as_str().is_some() && params["sessionId"].as_str() == self.page.as_deref() =>
            {
                return Err(End::Fail(Failure::new(status::UPSTREAM_ERROR, "The browser's page was closed.")));
            }
            "Browser.downloadWillBegin" if self.settings.enable_download => {
                let (guid, name) = (params["guid"].as_str().unwrap_or(""), params["suggestedFilename"].as_str());
                info!(url = %params["url"].as_str().unwrap_or(""), "Download started");
                self.downloads.will_begin(guid, name.unwrap_or(""));
            }
            "Browser.downloadWillBegin" => {
                info!(url = %params["url"].as_str().unwrap_or(""), "Download refused (downloads are not enabled)");
            }
            "Browser.downloadProgress" if self.settings.enable_download => {
                let (guid, state) = (params["guid"].as_str().unwrap_or(""), params["state"].as_str().unwrap_or(""));
                let outs = self.downloads.progress(guid, state);
                self.send_downloads(outs).await?;
            }
            "Target.targetCreated" | "Target.targetInfoChanged" => self.target_info(&params["targetInfo"]),
            "Target.targetDestroyed" => {
                if let Some(target) = params["targetId"].as_str() {
                    self.popups.remove(target);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Pop-ups (pages with an opener) are not shown as new windows: their URL opens in the session's page
    /// (through the same URL policy), and the pop-up is closed.
    fn target_info(&mut self, info: &Value) {
        let (Some(target), Some(kind)) = (info["targetId"].as_str(), info["type"].as_str()) else { return };
        if kind != "page" || Some(target) == self.target.as_deref() || info["openerId"].as_str().is_none() {
            return;
        }
        let url = info["url"].as_str().unwrap_or("");
        if url.is_empty() || url == "about:blank" {
            self.popups.entry(target.to_string()).or_insert_with(Instant::now);
            return;
        }
        self.popups.remove(target);
        info!(%url, "Opening a pop-up in the session's page");
        let (target, url) = (target.to_string(), url.to_string());
        self.browser_command("Target.closeTarget", json!({ "targetId": target }));
        self.page_command("Page.navigate", json!({ "url": url }));
    }

    fn request_paused(&mut self, params: &Value) {
        let Some(request) = params["requestId"].as_str().map(String::from) else { return };
        let url = params["request"]["url"].as_str().unwrap_or("");
        if self.settings.policy.allows(url) {
            self.page_command("Fetch.continueRequest", json!({ "requestId": request }));
            return;
        }
        info!(%url, "Blocked by the URL policy");
        if params["resourceType"] == "Document" {
            use base64::Engine as _;
            let body = base64::engine::general_purpose::STANDARD.encode(block_page(url));
            self.page_command(
                "Fetch.fulfillRequest",
                json!({
                    "requestId": request,
                    "responseCode": 403,
                    "responseHeaders": [{ "name": "Content-Type", "value": "text/html; charset=utf-8" }],
                    "body": body,
                }),
            );
        } else {
            self.page_command("Fetch.failRequest", json!({ "requestId": request, "errorReason": "BlockedByClient" }));
        }
    }

    async fn frame(&mut self, params: Value) -> Result<(), End> {
        let Some(frame_id) = params["sessionId"].as_i64() else { return Ok(()) };
        let data = params["data"].as_str().unwrap_or("");
        match render::decode_frame(data, self.max.0, self.max.1) {
            Ok(image) => {
                let (width, height) = self.session.frames.size();
                let stride = self.session.frames.stride();
                let damage = render::draw(self.session.frames.back_mut(), stride, width, height, &image);
                for rect in damage {
                    self.session.frames.mark_dirty(rect);
                }
                if !self.first_frame {
                    self.first_frame = true;
                    info!(ms = self.started.elapsed().as_millis() as u64, "First browser frame");
                }
            }
            Err(e) => warn!(error = %e, "Dropping a screencast frame"),
        }
        if !self.session.frames.has_pending() {
            self.ack(frame_id);
        } else if let Some(seq) = self.session.frames.try_publish() {
            self.send(&FromWorker::Published { seq }).await?;
            self.ack(frame_id);
        } else {
            // The supervisor still holds the previous frame: Chromium waits for our acknowledgement.
            self.unacked = Some(frame_id);
        }
        Ok(())
    }

    /// A `file` upload's opening, data or end (the supervisor relays them only after `AcceptFiles`).
    async fn upload_event(&mut self, event: StreamToWorker) -> Result<(), End> {
        use crate::upload::status;
        let (stream, code) = match event {
            StreamToWorker::File { stream, .. } if !self.settings.enable_upload => (stream, 771),
            StreamToWorker::File { stream, name, .. } => (stream, self.uploads.open(stream, &name)),
            StreamToWorker::Blob { stream, data } => (stream, self.uploads.blob(stream, &data)),
            StreamToWorker::End { stream } => (stream, self.uploads.end(stream)),
            StreamToWorker::Abort { stream } => {
                self.uploads.abort(stream);
                return Ok(());
            }
            // No objects are defined, so no `put` or `get` can name one; acks are handled by the caller.
            StreamToWorker::Put { .. } | StreamToWorker::Get { .. } | StreamToWorker::Ack { .. } => return Ok(()),
        };
        let message = if code == status::SUCCESS { "OK" } else { "Upload refused" };
        self.send(&FromWorker::Stream(StreamFromWorker::Ack { stream, message: message.into(), status: code })).await
    }

    async fn send_downloads(&mut self, outs: Vec<Out>) -> Result<(), End> {
        for out in outs {
            let message = match out {
                Out::Open { stream, name } => {
                    StreamFromWorker::File { stream, mimetype: "application/octet-stream".into(), name }
                }
                Out::Blob { stream, data } => StreamFromWorker::Blob { stream, data },
                Out::End { stream } => StreamFromWorker::End { stream },
            };
            self.send(&FromWorker::Stream(message)).await?;
        }
        Ok(())
    }

    fn ack(&mut self, frame_id: i64) {
        self.page_command("Page.screencastFrameAck", json!({ "sessionId": frame_id }));
    }

    async fn send_clipboard(&mut self, data: &[u8]) -> Result<(), End> {
        let mut chunks = data.chunks(CLIPBOARD_CHUNK).peekable();
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.send(&FromWorker::Clipboard { mimetype: "text/plain".into(), data: chunk.to_vec(), last }).await?;
        }
        Ok(())
    }

    async fn control(&mut self, message: ToWorker) -> Result<(), End> {
        let active = self.page.is_some() && !self.settings.read_only;
        match message {
            ToWorker::Key { keysym, pressed } if active => self.key(keysym, pressed),
            ToWorker::Mouse { x, y, mask } if active => {
                if self.cdp.has_room() {
                    for (method, params) in self.input.mouse(x, y, mask, Instant::now()) {
                        self.page_command(method, params);
                    }
                }
            }
            ToWorker::Resize { width, height } if width > 0 && height > 0 => {
                if self.settings.width.is_none() && self.settings.height.is_none() {
                    self.resize(width, height)?;
                }
            }
            ToWorker::Clipboard { mimetype, data, last } => {
                if self.settings.disable_paste || !mimetype.starts_with("text/") {
                    return Ok(());
                }
                let room = MAX_PASTE.saturating_sub(self.paste.len());
                self.paste.extend_from_slice(&data[..data.len().min(room)]);
                if last {
                    self.clipboard = String::from_utf8_lossy(&self.paste).into_owned();
                    self.paste.clear();
                }
            }
            ToWorker::Consumed { .. } => {
                if let Some(seq) = self.session.frames.try_publish() {
                    self.send(&FromWorker::Published { seq }).await?;
                }
                if let Some(frame_id) = self.unacked.take() {
                    self.ack(frame_id);
                }
            }
            ToWorker::Heartbeat => self.send(&FromWorker::Heartbeat).await?,
            ToWorker::Shutdown => return Err(End::Exit(0)),
            ToWorker::Start { .. } => warn!("Ignoring a second Start"),
            // The client's acknowledgements of download blobs.
            ToWorker::Stream(StreamToWorker::Ack { stream, status, .. }) => {
                let outs = self.downloads.ack(stream, status);
                self.send_downloads(outs).await?;
            }
            ToWorker::Stream(event) => self.upload_event(event).await?,
            ToWorker::Key { .. } | ToWorker::Mouse { .. } | ToWorker::Resize { .. } => {}
        }
        Ok(())
    }

    fn key(&mut self, keysym: u32, pressed: bool) {
        if !self.cdp.has_room() {
            return;
        }
        if !pressed {
            if let Some(i) = self.swallowed.iter().position(|&k| k == keysym) {
                self.swallowed.swap_remove(i);
                return;
            }
        }
        if pressed {
            match self.input.shortcut(keysym) {
                Some(Shortcut::Back) => return self.history(keysym, -1),
                Some(Shortcut::Forward) => return self.history(keysym, 1),
                Some(Shortcut::Paste) if !self.settings.disable_paste && !self.clipboard.is_empty() => {
                    self.swallowed.push(keysym);
                    let text = self.clipboard.clone();
                    self.page_command("Input.insertText", json!({ "text": text }));
                    return;
                }
                Some(Shortcut::Copy) if !self.settings.disable_copy => {
                    // The page still gets its Ctrl+C, and we read the selection it leaves once the browser
                    // has answered that key: `Input.dispatchKeyEvent` is answered after the renderer handled
                    // the event (and so every key before it, a Ctrl+A's selection included), while an
                    // evaluation sent at once could overtake keys still on their way to the renderer.
                    let mut events = self.input.key(keysym, pressed);
                    let Some((method, params)) = events.pop() else {
                        return self.read_selection();
                    };
                    for (method, params) in events {
                        self.page_command(method, params);
                    }
                    let page = self.page.clone();
                    self.command(page, method, params, Pending::KeyBeforeCopy);
                    return;
                }
                _ => {}
            }
        }
        for (method, params) in self.input.key(keysym, pressed) {
            self.page_command(method, params);
        }
    }

    /// Asks the page for its selection; the answer becomes the client's clipboard (`Pending::Selection`).
    fn read_selection(&mut self) {
        let page = self.page.clone();
        let params = json!({ "expression": SELECTION_SCRIPT, "returnByValue": true });
        self.command(page, "Runtime.evaluate", params, Pending::Selection);
    }

    fn history(&mut self, keysym: u32, step: i64) {
        self.swallowed.push(keysym);
        let page = self.page.clone();
        self.command(page, "Page.getNavigationHistory", json!({}), Pending::History(step));
    }

    fn resize(&mut self, width: u32, height: u32) -> Result<(), End> {
        let size = (width.min(self.max.0), height.min(self.max.1));
        if size == self.size {
            return Ok(());
        }
        self.size = size;
        if self.page.is_none() {
            // Not attached yet: `start_page` uses the newest size.
            return Ok(());
        }
        self.session
            .frames
            .resize(size.0, size.1)
            .map_err(|e| End::Fail(Failure::new(status::UPSTREAM_ERROR, format!("Cannot size the display: {e}"))))?;
        info!(width = size.0, height = size.1, "Resizing the browser's viewport");
        self.set_viewport();
        self.page_command("Page.stopScreencast", json!({}));
        self.start_screencast();
        Ok(())
    }
}

/// The selected text of the page, including inside text fields.
const SELECTION_SCRIPT: &str = "(() => { const e = document.activeElement; \
    if (e && (e.tagName === 'INPUT' || e.tagName === 'TEXTAREA') && typeof e.selectionStart === 'number') \
    return e.value.substring(e.selectionStart, e.selectionEnd); \
    return String(window.getSelection()); })()";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_page_escapes_the_url() {
        let page = block_page("http://x/<script>\"&");
        assert!(page.contains("http://x/&lt;script&gt;&quot;&amp;"));
        assert!(!page.contains("<script>"));
    }
}
