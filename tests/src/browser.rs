//! Headless Chromium driven over the Chrome DevTools Protocol, for the web client's tests.
//!
//! [`Browser::start`] runs Debian's `chromium` (or `GUACR_CHROMIUM`) headless with a throwaway profile
//! and `--remote-debugging-port=0`, reads the port from the profile's `DevToolsActivePort`, and talks
//! CDP over one WebSocket (tungstenite). Calls are synchronous: a call sends its request and reads
//! messages until the matching answer, keeping the events that arrive meanwhile (console messages and
//! exceptions are printed with every failure report, see [`Browser::console`]).
//!
//! A missing browser is a failure, never a skip: [`Browser::start`] returns an error that says how to
//! install it (`scripts/peers.sh install chromium`, which `scripts/test.sh` runs).

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::image::{decode_png_rgb, RgbImage};

/// How long the browser may take to start (850–1070 ms measured on a quiet machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CDP call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium binary: `GUACR_CHROMIUM`, else `/usr/bin/chromium`.
pub fn chromium_bin() -> PathBuf {
    std::env::var_os("GUACR_CHROMIUM")
        .filter(|v| !v.is_empty())
        .map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

/// A running headless Chromium with one page attached. Killed (its whole process group) on drop.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// The attached page's CDP session.
    session: Option<String>,
    console: Vec<String>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
        let pid = self.child.id() as i32;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// Starts Chromium headless (as root it needs `--no-sandbox`) and connects to it.
    pub fn start() -> Result<Browser> {
        let bin = chromium_bin();
        if !bin.is_file() {
            bail!(
                "\n\n*** Chromium not found at {} (set GUACR_CHROMIUM to use another).\n\
                 *** Install it with: scripts/peers.sh install chromium   (as root; scripts/test.sh does)\n\
                 *** A browser test never passes or skips without its browser.\n",
                bin.display()
            );
        }
        let profile = std::env::temp_dir().join(format!(
            "guacr-chromium-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos()
        ));
        std::fs::create_dir_all(profile.join("home"))?;
        let log = std::fs::File::create(profile.join("chromium.log"))?;
        let mut command = Command::new(&bin);
        command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-features=Translate,MediaRouter",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1024",
            ])
            .arg(format!("--user-data-dir={}", profile.join("profile").display()))
            .arg("about:blank")
            .env("HOME", profile.join("home"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let mut browser = BrowserStart { child: Some(child), profile: profile.clone() };
        let (port, path) = browser.wait_for_devtools()?;
        let stream = TcpStream::connect(("127.0.0.1", port)).context("connecting to the DevTools port")?;
        stream.set_nodelay(true)?;
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (ws, _) = tungstenite::client(url.as_str(), stream).map_err(|e| anyhow!("DevTools WebSocket: {e}"))?;
        ws.get_ref().set_read_timeout(Some(Duration::from_millis(200)))?;
        let child = browser.child.take().expect("still there");
        Ok(Browser { child, profile, ws, next_id: 0, session: None, console: Vec::new() })
    }

    /// Chromium's own log (for failure reports).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default()
    }

    /// Console messages and uncaught exceptions of the page so far.
    pub fn console(&self) -> String {
        self.console.join("\n")
    }

    /// Opens `url` in a new page of `width`×`height` CSS pixels (device scale 1) and attaches to it.
    pub fn open(&mut self, url: &str, width: u32, height: u32) -> Result<()> {
        let target = self.call_browser("Target.createTarget", json!({"url": "about:blank"}))?;
        let target_id = target["targetId"].as_str().ok_or_else(|| anyhow!("no targetId: {target}"))?.to_string();
        let attached = self.call_browser("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}))?;
        let session = attached["sessionId"].as_str().ok_or_else(|| anyhow!("no sessionId: {attached}"))?;
        self.session = Some(session.to_string());
        self.call("Page.enable", json!({}))?;
        self.call("Runtime.enable", json!({}))?;
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )?;
        self.call("Emulation.setFocusEmulationEnabled", json!({"enabled": true}))?;
        self.call("Page.navigate", json!({"url": url}))?;
        Ok(())
    }

    /// Evaluates a JavaScript expression in the page (promises awaited) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let result = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}))?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("JavaScript exception in {expression:?}: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `expression` until it is truthy; fails after `timeout` with `what` and the console.
    pub fn wait_for(&mut self, what: &str, expression: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression).unwrap_or(Value::Null);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what} ({expression}); page console:\n{}",
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A screenshot of the viewport.
    pub fn screenshot(&mut self) -> Result<RgbImage> {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = shot["data"].as_str().ok_or_else(|| anyhow!("no screenshot data"))?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        decode_png_rgb(&png)
    }

    /// Moves the mouse to (x, y) in CSS pixels of the viewport.
    pub fn mouse_move(&mut self, x: f64, y: f64) -> Result<()> {
        self.call("Input.dispatchMouseEvent", json!({"type": "mouseMoved", "x": x, "y": y}))?;
        Ok(())
    }

    /// A left click at (x, y).
    pub fn click(&mut self, x: f64, y: f64) -> Result<()> {
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1}),
            )?;
        }
        Ok(())
    }

    /// Types `text` as real key events into the focused element (`\n` is Enter), pausing between keys.
    pub fn type_text(&mut self, text: &str, pause: Duration) -> Result<()> {
        for c in text.chars() {
            let (key, code, vk, typed) = key_for_char(c);
            let mut down = json!({"type": "keyDown", "key": key, "code": code, "windowsVirtualKeyCode": vk,
                                  "nativeVirtualKeyCode": vk});
            if let Some(t) = &typed {
                down["text"] = json!(t);
                down["unmodifiedText"] = json!(t);
            }
            self.call("Input.dispatchKeyEvent", down)?;
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk}),
            )?;
            std::thread::sleep(pause);
        }
        Ok(())
    }

    /// A CDP call on the attached page.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let session = self.session.clone().ok_or_else(|| anyhow!("no page open"))?;
        self.request(Some(&session), method, params)
    }

    /// A CDP call on the browser itself.
    pub fn call_browser(&mut self, method: &str, params: Value) -> Result<Value> {
        self.request(None, method, params)
    }

    fn request(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.ws.send(Message::text(message.to_string())).map_err(|e| anyhow!("sending {method}: {e}"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let incoming = match self.ws.read() {
                Ok(Message::Text(text)) => text,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if Instant::now() > deadline {
                        bail!("no answer to {method} within {CALL_TIMEOUT:?}");
                    }
                    continue;
                }
                Err(e) => bail!("DevTools connection failed during {method}: {e}; browser log:\n{}", self.log()),
            };
            let value: Value = serde_json::from_str(incoming.as_str())?;
            if value["id"].as_u64() == Some(id) {
                if let Some(error) = value.get("error") {
                    bail!("{method} failed: {error}");
                }
                return Ok(value["result"].clone());
            }
            self.note_event(&value);
        }
    }

    fn note_event(&mut self, event: &Value) {
        if self.console.len() > 500 {
            return;
        }
        match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let params = &event["params"];
                let args: Vec<String> = params["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| v["value"].as_str().map_or_else(|| v["description"].to_string(), str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                self.console.push(format!("console.{}: {}", params["type"].as_str().unwrap_or("?"), args.join(" ")));
            }
            Some("Runtime.exceptionThrown") => {
                let details = &event["params"]["exceptionDetails"];
                self.console.push(format!(
                    "exception: {} {}",
                    details["text"].as_str().unwrap_or(""),
                    details["exception"]["description"].as_str().unwrap_or("")
                ));
            }
            _ => {}
        }
    }
}

/// The browser while it starts: killed if start-up fails.
struct BrowserStart {
    child: Option<Child>,
    profile: PathBuf,
}

impl Drop for BrowserStart {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid), nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&self.profile);
        }
    }
}

impl BrowserStart {
    /// Port and browser WebSocket path from `DevToolsActivePort`, written once DevTools listens.
    fn wait_for_devtools(&mut self) -> Result<(u16, String)> {
        let file = self.profile.join("profile").join("DevToolsActivePort");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(found) = read_active_port(&file) {
                return Ok(found);
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("chromium exited with {status} at start; log:\n{}", self.log());
                }
            }
            if Instant::now() > deadline {
                bail!("chromium did not open DevTools within {START_TIMEOUT:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default()
    }
}

fn read_active_port(file: &Path) -> Option<(u16, String)> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut lines = text.lines();
    let port = lines.next()?.trim().parse().ok()?;
    let path = lines.next()?.trim().to_string();
    path.starts_with("/devtools/browser/").then_some((port, path))
}

/// `key`, `code`, Windows virtual key code and the text a key produces, for the characters tests type.
fn key_for_char(c: char) -> (String, String, u32, Option<String>) {
    match c {
        '\n' | '\r' => ("Enter".into(), "Enter".into(), 13, Some("\r".into())),
        ' ' => (" ".into(), "Space".into(), 32, Some(" ".into())),
        'a'..='z' => {
            (c.into(), format!("Key{}", c.to_ascii_uppercase()), c.to_ascii_uppercase() as u32, Some(c.into()))
        }
        'A'..='Z' => (c.into(), format!("Key{c}"), c as u32, Some(c.into())),
        '0'..='9' => (c.into(), format!("Digit{c}"), c as u32, Some(c.into())),
        _ => {
            let (code, vk) = match c {
                '-' | '_' => ("Minus", 189),
                '=' | '+' => ("Equal", 187),
                ';' | ':' => ("Semicolon", 186),
                '\'' | '"' => ("Quote", 222),
                ',' | '<' => ("Comma", 188),
                '.' | '>' => ("Period", 190),
                '/' | '?' => ("Slash", 191),
                '[' | '{' => ("BracketLeft", 219),
                ']' | '}' => ("BracketRight", 221),
                '\\' | '|' => ("Backslash", 220),
                '#' => ("Digit3", 51),
                '(' => ("Digit9", 57),
                ')' => ("Digit0", 48),
                _ => ("", 0),
            };
            (c.into(), code.into(), vk, Some(c.into()))
        }
    }
}
