//! A miniature supervisor for tests: creates the shared region and control socket, execs the real
//! `guacr-worker-vnc` with descriptors 3 and 4 in place, and keeps a client-side copy of the screen built
//! only from the published damage (as the real supervisor would).

#![allow(dead_code)]

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use shm_proto::control::Params;
use shm_proto::{ControlChannel, DamageOp, FrameReader, FromWorker, Geometry, SharedRegion, ToWorker};

pub const PASSWORD: &str = "guacpass";
pub const STATIC: (&str, u16, &str) = ("127.0.0.1", 5902, ":52");
pub const CHANGING: (&str, u16, &str) = ("127.0.0.1", 5901, ":51");
pub const TYPING: (&str, u16, &str) = ("127.0.0.1", 5903, ":53");

/// Fails loudly when a test peer is missing: these tests never pass without a real server.
///
/// The check reads the kernel's socket table instead of connecting: Xtigervnc counts a connection that
/// closes before authenticating as a security failure, and five of them blacklist 127.0.0.1 for everyone.
pub fn require_peer((host, port, display): (&str, u16, &str)) {
    if !listening(port) {
        panic!(
            "VNC test peer {host}:{port} (display {display}) is not running: start the peers with \
             `scripts/peers.sh start` (from the repository root) before `cargo test -p worker-vnc`"
        );
    }
}

/// True when something listens on TCP `port` on 127.0.0.1 or any address (from /proc/net/tcp).
pub fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1).copied().unwrap_or("");
        let state = fields.get(3).copied().unwrap_or("");
        let matches_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port);
        let address_ok = local.starts_with("0100007F:") || local.starts_with("00000000:");
        matches_port && address_ok && state == "0A"
    })
}

/// A private Xtigervnc for tests that would disturb the shared peers (wrong passwords trip its
/// blacklist; resizing changes the desktop for everyone). Killed by PID when dropped.
pub struct PrivateXvnc {
    child: Child,
    pub display: String,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl PrivateXvnc {
    pub fn start(width: u32, height: u32) -> PrivateXvnc {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!("guacr-worker-vnc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let passwd = dir.join("passwd");
        if !passwd.exists() {
            let mut child = Command::new("vncpasswd")
                .arg("-f")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("vncpasswd is missing ({e}): run `scripts/peers.sh install`"));
            use std::io::Write;
            child.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            std::fs::write(&passwd, out.stdout).unwrap();
        }
        for _ in 0..40 {
            let n = 70 + (std::process::id() + NEXT.fetch_add(1, Ordering::Relaxed)) % 25;
            let port = 5900 + n as u16;
            if display_in_use(n) || listening(port) {
                continue;
            }
            let child = Command::new("Xtigervnc")
                .args([&format!(":{n}"), "-geometry", &format!("{width}x{height}"), "-depth", "24"])
                .args(["-rfbport", &port.to_string(), "-interface", "127.0.0.1", "-SecurityTypes", "VncAuth"])
                .args(["-PasswordFile", passwd.to_str().unwrap(), "-AlwaysShared", "-nolisten", "tcp"])
                .args(["-BlacklistThreshold", "1000000", "-desktop", "guacr-private"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("Xtigervnc is missing ({e}): run `scripts/peers.sh install`"));
            let mut server = PrivateXvnc { child, display: format!(":{n}"), port, dir: dir.clone() };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if listening(port) {
                    return server;
                }
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // lost a race for the display; try the next one
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start a private Xtigervnc");
    }
}

impl PrivateXvnc {
    /// An 80x24 xterm at the top left running bash (no window manager: focus follows the pointer).
    pub fn spawn_xterm(&self) -> KillOnDrop {
        let child = Command::new("xterm")
            .args(["-display", &self.display, "-T", "guacr-private", "+bc", "-fa", "DejaVuSansMono", "-fs", "14"])
            .args(["-bg", "black", "-fg", "white", "-geometry", "80x24+0+0", "-e", "bash", "--norc", "--noprofile"])
            .env("PS1", "$ ")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("xterm is missing ({e}): run `scripts/peers.sh install`"));
        let guard = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tree = Command::new("xwininfo").args(["-display", &self.display, "-root", "-tree"]).output();
            if tree.map(|o| String::from_utf8_lossy(&o.stdout).contains("guacr-private")).unwrap_or(false) {
                // Give bash a moment to print its prompt.
                std::thread::sleep(Duration::from_millis(500));
                return guard;
            }
            assert!(Instant::now() < deadline, "xterm on {} never mapped", self.display);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A private x11vnc (no password) serving an existing X display, on a free port.
pub struct PrivateX11vnc {
    _child: KillOnDrop,
    pub port: u16,
}

impl PrivateX11vnc {
    pub fn start(display: &str) -> PrivateX11vnc {
        for port in (5960u16..5990).map(|p| p + (std::process::id() % 7) as u16) {
            if listening(port) {
                continue;
            }
            let child = Command::new("x11vnc")
                .args(["-display", display, "-rfbport", &port.to_string(), "-listen", "127.0.0.1", "-noipv6"])
                .args(["-rfbportv6", "-1", "-nopw", "-forever", "-shared", "-noxdamage", "-quiet"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("x11vnc is missing ({e}): run `scripts/peers.sh install`"));
            let mut guard = KillOnDrop(child);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if listening(port) {
                    return PrivateX11vnc { _child: guard, port };
                }
                if let Ok(Some(_)) = guard.0.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start a private x11vnc on {display}");
    }
}

/// A child process stopped by PID (TERM, then KILL) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

impl Drop for PrivateXvnc {
    fn drop(&mut self) {
        // TERM lets the X server remove its lock file; KILL only if it does not go.
        terminate(&mut self.child);
        let _ = &self.dir;
    }
}

/// True when display `n` has a lock file whose process is alive (a stale lock is free, as the X server
/// itself decides).
fn display_in_use(n: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/tmp/.X{n}-lock")) else { return false };
    match text.trim().parse::<i32>() {
        Ok(pid) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
        Err(_) => true,
    }
}

/// SIGTERM, up to 3 s to exit, then SIGKILL; always reaped.
fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    if let Ok(None) = child.try_wait() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

pub fn params(pairs: &[(&str, &str)]) -> Params {
    Params(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect())
}

/// The decoded screen as the supervisor would see it: BGRX, `width * 4` bytes a row.
#[derive(Clone)]
pub struct Screen {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Screen {
    pub fn rgb(&self, x: u32, y: u32) -> [u8; 3] {
        let o = ((y * self.width + x) * 4) as usize;
        [self.pixels[o + 2], self.pixels[o + 1], self.pixels[o]]
    }
}

pub struct Worker {
    pub child: Child,
    pub control: ControlChannel,
    pub reader: FrameReader,
    pub screen: Screen,
    pub frames: u64,
    /// `Copy` damage ops seen (CopyRect from the server).
    pub copies: u64,
    /// Every message other than frame bookkeeping, in arrival order.
    pub messages: Vec<FromWorker>,
}

impl Worker {
    /// Spawns the worker and sends `Start`.
    pub async fn start(params: Params, width: u32, height: u32) -> Worker {
        let worker = Worker::start_without_start().await;
        worker
            .send(ToWorker::Start {
                session_id: "$test".into(),
                params,
                width,
                height,
                dpi: 96,
                audio_mimetypes: Vec::new(),
            })
            .await;
        worker
    }

    /// Takes the process and the control channel (to drop the channel while the process lives).
    pub fn into_parts(mut self) -> (Child, ControlChannel) {
        let child = std::mem::replace(&mut self.child, Command::new("true").spawn().expect("spawn true"));
        let (ours, _) = ControlChannel::pair().expect("pair");
        let control = std::mem::replace(&mut self.control, ControlChannel::new(ours).expect("channel"));
        (child, control)
    }

    /// Spawns the worker without sending `Start`.
    pub async fn start_without_start() -> Worker {
        let (reader, shm_fd) = SharedRegion::create(Geometry::DEFAULT).expect("shared region");
        let (ours, theirs) = ControlChannel::pair().expect("control pair");
        let mut command = Command::new(env!("CARGO_BIN_EXE_guacr-worker-vnc"));
        command
            .args([
                "--session",
                "$test",
                "--parent",
                &std::process::id().to_string(),
                "--log",
                &std::env::var("GUACR_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            ])
            .env_clear()
            .stdin(Stdio::null())
            .fd_mappings(vec![
                FdMapping { parent_fd: theirs, child_fd: 3 },
                FdMapping { parent_fd: shm_fd, child_fd: 4 },
            ])
            .expect("fd mappings");
        let child = command.spawn().expect("spawn guacr-worker-vnc");
        drop(command);
        let control = ControlChannel::new(ours).expect("control channel");
        Worker {
            child,
            control,
            reader,
            screen: Screen { width: 0, height: 0, pixels: Vec::new() },
            frames: 0,
            copies: 0,
            messages: Vec::new(),
        }
    }

    pub async fn send(&self, message: ToWorker) {
        self.control.send(&message).await.expect("send to worker");
    }

    /// The next message that is not a heartbeat; frames are applied and released on the way.
    /// `None` when the worker closed the channel or `limit` passed.
    pub async fn next(&mut self, limit: Duration) -> Option<FromWorker> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = tokio::time::timeout_at(deadline, self.control.recv::<FromWorker>()).await.ok()?;
            match message.expect("control message decodes")? {
                FromWorker::Heartbeat => {}
                FromWorker::Published { seq } => self.take_frame(seq).await,
                other => {
                    self.messages.push(other.clone());
                    return Some(other);
                }
            }
        }
    }

    /// Waits for `Connected`, failing on anything else but `Unsupported` and `Cursor`.
    pub async fn connected(&mut self) -> (u32, u32, String) {
        loop {
            match self.next(Duration::from_secs(20)).await {
                Some(FromWorker::Connected { width, height, name }) => return (width, height, name),
                Some(FromWorker::Unsupported { .. } | FromWorker::Cursor { .. }) => {}
                other => panic!("expected Connected, got {other:?}"),
            }
        }
    }

    /// Applies frames until none arrived for `quiet` (after at least `min_frames`), or `limit` passed.
    pub async fn settle(&mut self, quiet: Duration, min_frames: u64, limit: Duration) {
        let start = Instant::now();
        let base = self.frames;
        loop {
            let seen = self.frames;
            let _ = self.next(quiet).await;
            let idle = self.frames == seen;
            if (idle && self.frames - base >= min_frames) || start.elapsed() > limit {
                return;
            }
        }
    }

    async fn take_frame(&mut self, seq: u64) {
        let frame = self.reader.acquire().expect("frame is valid").expect("published frame is there");
        assert_eq!(frame.seq, seq);
        if frame.resized || self.screen.width != frame.width || self.screen.height != frame.height {
            assert!(frame.resized, "a size change must carry the resized flag");
            self.screen = Screen {
                width: frame.width,
                height: frame.height,
                pixels: vec![0; (frame.width * frame.height * 4) as usize],
            };
        }
        let ops: Vec<DamageOp> =
            if frame.overflow { vec![DamageOp::Dirty(frame.full_rect())] } else { frame.ops.clone() };
        let row_bytes = self.screen.width as usize * 4;
        let mut rect_pixels = Vec::new();
        for op in ops {
            match op {
                DamageOp::Dirty(r) => {
                    self.reader.read_rect(&frame, r, &mut rect_pixels);
                    for row in 0..r.h as usize {
                        let dst = (r.y as usize + row) * row_bytes + r.x as usize * 4;
                        let w = r.w as usize * 4;
                        self.screen.pixels[dst..dst + w].copy_from_slice(&rect_pixels[row * w..][..w]);
                    }
                }
                DamageOp::Copy { src_x, src_y, dst } => {
                    self.copies += 1;
                    let w = dst.w as usize * 4;
                    let mut block = Vec::with_capacity(w * dst.h as usize);
                    for row in 0..dst.h as usize {
                        let src = (src_y as usize + row) * row_bytes + src_x as usize * 4;
                        block.extend_from_slice(&self.screen.pixels[src..src + w]);
                    }
                    for row in 0..dst.h as usize {
                        let d = (dst.y as usize + row) * row_bytes + dst.x as usize * 4;
                        self.screen.pixels[d..d + w].copy_from_slice(&block[row * w..][..w]);
                    }
                }
            }
        }
        self.reader.release(frame);
        self.frames += 1;
        self.send(ToWorker::Consumed { seq }).await;
    }

    /// Waits for the process to exit.
    pub async fn exit_status(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "worker did not exit within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The root window of an X display as RGB, from `xwd -root` (depth 24 / 32 bits per pixel).
pub fn xwd_root(display: &str) -> Screen {
    let out = Command::new("xwd").args(["-root", "-silent", "-display", display]).output().expect("run xwd");
    assert!(out.status.success(), "xwd -display {display} failed: {}", String::from_utf8_lossy(&out.stderr));
    let data = out.stdout;
    let field = |i: usize| u32::from_be_bytes(data[i * 4..i * 4 + 4].try_into().unwrap());
    let (header_size, width, height) = (field(0) as usize, field(4), field(5));
    let (byte_order, bits_per_pixel, bytes_per_line) = (field(7), field(11), field(12) as usize);
    let (red_mask, green_mask, blue_mask, ncolors) = (field(14), field(15), field(16), field(19) as usize);
    assert_eq!(bits_per_pixel, 32, "xwd of {display}: only 32-bit pixels are handled");
    let image = &data[header_size + ncolors * 12..];
    let channel = |p: u32, mask: u32| ((p & mask) >> mask.trailing_zeros()) as u8;
    let mut pixels = Vec::with_capacity((width * height * 4) as usize);
    for y in 0..height as usize {
        for x in 0..width as usize {
            let b: [u8; 4] = image[y * bytes_per_line + x * 4..][..4].try_into().unwrap();
            let p = if byte_order == 0 { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) };
            pixels.extend_from_slice(&[channel(p, blue_mask), channel(p, green_mask), channel(p, red_mask), 0]);
        }
    }
    Screen { width, height, pixels }
}

/// Pixels (RGB) that differ between two screens of the same size.
pub fn mismatches(a: &Screen, b: &Screen) -> usize {
    assert_eq!((a.width, a.height), (b.width, b.height), "screen sizes differ");
    a.pixels.chunks_exact(4).zip(b.pixels.chunks_exact(4)).filter(|(p, q)| p[..3] != q[..3]).count()
}
