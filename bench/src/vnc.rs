//! VNC workloads against the real peers of `scripts/peers.sh`: (a) scrolling text in the typing xterm,
//! (a2) the same xterm scrolling at a readable rate (a followed log), (b) the changing peer's whole root recoloured as fast as frames arrive, (c) the changing peer as it is
//! (a clock and `top`), and `still`: the static peer (:52), where nothing changes at all, for the idle
//! cost of a session. Probes: a marker painted on the root (`xsetroot`), and on (a) a key press until
//! its glyph shows in the quiet xterm; `still` has none (the static peer is shared with the tests and is
//! never drawn on, typed into or pointed at).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use guacr_tests::{peers, GuacClient, GuacrProcess};

use crate::workload::{BoxFut, Ctx, Latency, Workload};

/// Where the latency marker is looked for: a 16×16 block of root window in the bottom-right corner,
/// outside every client window of the peers (xclock on :51 ends at 1000,740; the xterms are top-left).
const PROBE_X: u32 = 1004;
const PROBE_Y: u32 = 748;
const PROBE_SIZE: u32 = 16;
pub const SCREEN: (u32, u32) = (1024, 768);
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const CONTROL_L: u32 = 0xffe3;
const BACKSPACE: u32 = 0xff08;
/// The typing xterm's first text line after `clear` (80x24 DejaVu Sans Mono 14 at +0+0): where a typed
/// glyph appears right after the prompt.
const KEY_AREA: (u32, u32, u32, u32) = (0, 0, 400, 30);
/// Quiet time before each paced key probe: a typist's 5–7 keys per second. Xtigervnc sends updates on a
/// frame clock that keeps ticking (1/FrameRate) while changes come and stops after an empty tick; a key
/// pressed while it runs waits for the next tick, one pressed after a pause starts it at half a period.
const KEY_PAUSE: Duration = Duration::from_millis(150);
/// Workload a2's pace: a line every 5 ms (200 lines/s, a busy log followed with `tail -f`).
const LOG_LINE_EVERY: Duration = Duration::from_millis(5);

/// The VNC workloads, for the registry.
pub fn workloads() -> Vec<Box<dyn Workload>> {
    vec![
        Box::new(Vnc::Scroll),
        Box::new(Vnc::Log),
        Box::new(Vnc::Fullscreen),
        Box::new(Vnc::Idle),
        Box::new(Vnc::Still),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vnc {
    /// (a) `seq` flooding the typing peer's xterm: scrolling text. xterm jump-scrolls whole screens at
    /// a time, so every frame is new text.
    Scroll,
    /// (a2) scrolling at a readable rate, like following a log: one line every [`LOG_LINE_EVERY`] in the
    /// typing peer's xterm, which then scrolls line by line (the content the client has moves up).
    Log,
    /// (b) the changing peer's whole root recoloured (a plaid) as fast as the frames arrive.
    Fullscreen,
    /// (c) the changing peer as it is: a clock and `top`.
    Idle,
    /// The static peer, nothing changing: what an idle session costs (target: < 0.5 % of one core).
    /// Only the session's own traffic (keep-alives, the first frame) reaches guacr.
    Still,
}

impl Vnc {
    fn peer(self) -> peers::VncPeer {
        match self {
            Vnc::Scroll | Vnc::Log => peers::typing(),
            Vnc::Fullscreen | Vnc::Idle => peers::changing(),
            Vnc::Still => peers::static_screen(),
        }
    }

    fn params(self) -> Vec<(String, String)> {
        let mut params = self.peer().vnc_params();
        if self == Vnc::Still {
            // The static peer is shared with the tests: never ask it to change its size (it is already
            // 1024×768, so this only makes sure).
            params.push(("disable-display-resize".into(), "true".into()));
        }
        params
    }
}

impl Workload for Vnc {
    fn name(&self) -> &'static str {
        match self {
            Vnc::Scroll => "a scroll",
            Vnc::Log => "a2 log",
            Vnc::Fullscreen => "b fullscreen",
            Vnc::Idle => "c idle",
            Vnc::Still => "still",
        }
    }

    fn aliases(&self) -> &'static [&'static str] {
        match self {
            Vnc::Scroll => &["scroll", "a"],
            Vnc::Log => &["log", "a2"],
            Vnc::Fullscreen => &["fullscreen", "b"],
            Vnc::Idle => &["idle", "c"],
            Vnc::Still => &["still"],
        }
    }

    fn require_up(&self) -> Result<()> {
        self.peer().require_up();
        if std::process::Command::new("xsetroot").arg("-version").output().is_err() {
            bail!("xsetroot not found (package x11-xserver-utils; scripts/peers.sh install)");
        }
        Ok(())
    }

    fn open<'a>(&'a self, guacr: &'a GuacrProcess) -> BoxFut<'a, Result<(GuacClient, f64)>> {
        let addr = guacr.addr();
        let params = self.params();
        Box::pin(async move {
            let mut c = GuacClient::connect(addr).await?;
            let t0 = Instant::now();
            c.handshake("vnc", &params, SCREEN.0, SCREEN.1).await?;
            c.wait_frames(1, FIRST_FRAME_TIMEOUT).await?;
            let first = c.state().sync_times[0];
            Ok((c, (first - t0).as_secs_f64() * 1e3))
        })
    }

    fn counting(&self) -> Option<(&'static str, Vec<(String, String)>)> {
        // Every hook below uses only the probe session.
        Some(("vnc", self.params()))
    }

    fn start<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            if *self == Vnc::Scroll {
                let (x, y) = peers::typing_pointer();
                ctx.probe().send_mouse(x, y, 0).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                ctx.probe().type_text("clear; seq 1 1000000000\n").await?;
            }
            if *self == Vnc::Log {
                let (x, y) = peers::typing_pointer();
                ctx.probe().send_mouse(x, y, 0).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                // perl (Debian's perl-base, always installed) rather than a shell loop: no process per line.
                let secs = LOG_LINE_EVERY.as_secs_f64();
                let cmd = format!(
                    "clear; perl -e '$|=1; for($i=1;;$i++){{print \"$i log line\\n\"; select(undef,undef,undef,{secs})}}'\n"
                );
                ctx.probe().type_text(&cmd).await?;
            }
            Ok(())
        })
    }

    fn during<'a>(&'a self, ctx: &'a Ctx<'a>, window: Duration) -> BoxFut<'a, Result<Latency>> {
        Box::pin(async move {
            let mut lat = Latency::default();
            if *self != Vnc::Fullscreen {
                tokio::time::sleep(window).await;
                return Ok(lat);
            }
            // Recolour the whole root as fast as each change arrives: every step is a latency sample.
            let display = self.peer().display;
            let t0 = Instant::now();
            let mut i = ctx.rep * 1000;
            while t0.elapsed() < window {
                let fg = fresh_colour(ctx.probe(), &mut i);
                lat.record("marker", marker(ctx.probe(), &display, fg, Some(colour(i + 7))).await?);
                i += 1;
            }
            Ok(lat)
        })
    }

    fn probes<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFut<'a, Result<Latency>> {
        Box::pin(async move {
            let mut lat = Latency::default();
            if matches!(self, Vnc::Fullscreen | Vnc::Still) {
                return Ok(lat);
            }
            // Markers while the workload keeps running.
            let display = self.peer().display;
            let mut i = ctx.rep * 1000 + 500;
            for _ in 0..ctx.probes {
                let fg = fresh_colour(ctx.probe(), &mut i);
                lat.record("marker", marker(ctx.probe(), &display, fg, None).await?);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            if *self == Vnc::Scroll {
                // Key to glyph: stop the flood, clear, then type single characters into the quiet xterm.
                // "key": at a typist's pace (KEY_PAUSE before each), so every press finds Xtigervnc idle.
                // "key-rapid": each press as soon as the previous glyph was erased, i.e. while the server's
                // frame clock (FrameRate, 60/s) is still running: up to one frame period (16.7 ms) more.
                quiet_xterm(ctx.probe()).await?;
                for k in 0..ctx.probes {
                    let key = u32::from(b'a' + (k % 26) as u8);
                    tokio::time::sleep(KEY_PAUSE).await;
                    lat.record("key", key_to_glyph(ctx.probe(), key).await?);
                }
                for k in 0..ctx.probes {
                    let key = u32::from(b'a' + (k % 26) as u8);
                    lat.record("key-rapid", key_to_glyph(ctx.probe(), key).await?);
                }
            }
            Ok(lat)
        })
    }

    fn stop<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFut<'a, ()> {
        Box::pin(async move {
            // Always stop the flood, also after a failed measurement, so the typing peer is left quiet.
            if matches!(self, Vnc::Scroll | Vnc::Log) {
                let _ = quiet_xterm(ctx.probe()).await;
            }
        })
    }
}

/// Ctrl-C, then `clear`: the typing xterm shows only its prompt.
async fn quiet_xterm(c: &GuacClient) -> Result<()> {
    c.send_key(CONTROL_L, true).await?;
    c.send_key(u32::from(b'c'), true).await?;
    c.send_key(u32::from(b'c'), false).await?;
    c.send_key(CONTROL_L, false).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.type_text("clear\n").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

fn key_area(s: &guacr_tests::ClientState) -> Vec<Option<[u8; 4]>> {
    let (x0, y0, w, h) = KEY_AREA;
    (y0..y0 + h).flat_map(|y| (x0..x0 + w).map(move |x| (x, y))).map(|(x, y)| s.display.pixel(x, y)).collect()
}

/// Presses `key` in the quiet xterm and returns the time until the client shows a change in the
/// prompt line (the glyph), then erases it with BackSpace and waits until the line is as before.
async fn key_to_glyph(c: &GuacClient, key: u32) -> Result<Option<Duration>> {
    let before = key_area(&c.state());
    let t0 = Instant::now();
    c.send_key(key, true).await?;
    c.send_key(key, false).await?;
    let r = c.wait_until_named("the typed glyph", PROBE_TIMEOUT, |s| key_area(s) != before).await;
    let arrived = t0.elapsed();
    c.send_key(BACKSPACE, true).await?;
    c.send_key(BACKSPACE, false).await?;
    let _ = c.wait_until_named("the glyph erased", PROBE_TIMEOUT, |s| key_area(s) == before).await;
    match r {
        Ok(()) => Ok(Some(arrived)),
        Err(guacr_tests::ClientError::Timeout { .. }) => Ok(None),
        Err(e) => Err(e).context("waiting for a typed glyph"),
    }
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// The i-th marker colour: consecutive ones differ in every channel.
pub fn colour(i: usize) -> [u8; 3] {
    let i = i as u32;
    [(30 + (i * 67) % 190) as u8, (40 + (i * 113 + 60) % 180) as u8, (20 + (i * 151 + 120) % 200) as u8]
}

fn near(p: [u8; 4], c: [u8; 3]) -> bool {
    p[..3].iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 4)
}

/// Does the probe block on session `client` show `c` anywhere?
pub(crate) fn block_shows(client: &guacr_tests::ClientState, c: [u8; 3]) -> bool {
    (PROBE_Y..PROBE_Y + PROBE_SIZE)
        .step_by(2)
        .any(|y| (PROBE_X..PROBE_X + PROBE_SIZE).any(|x| client.display.pixel(x, y).is_some_and(|p| near(p, c))))
}

/// The next marker colour (from index `i` on) that the probe block does not show yet; advances `i`.
pub(crate) fn fresh_colour(client: &GuacClient, i: &mut usize) -> [u8; 3] {
    loop {
        let c = colour(*i);
        *i += 1;
        if !block_shows(&client.state(), c) {
            return c;
        }
    }
}

/// Paints the root of `display` with `xsetroot` (solid `fg`, or a 16×16 plaid of `fg` on `bg`) and
/// returns the time from spawning xsetroot until session `client` shows `fg` in the probe block, or
/// None when it did not arrive within [`PROBE_TIMEOUT`] (counted as a miss, not an error).
pub(crate) async fn marker(
    client: &GuacClient,
    display: &str,
    fg: [u8; 3],
    bg: Option<[u8; 3]>,
) -> Result<Option<Duration>> {
    let mut cmd = tokio::process::Command::new("xsetroot");
    cmd.arg("-display").arg(display);
    match bg {
        Some(bg) => cmd.args(["-mod", "16", "16", "-fg", &hex(fg), "-bg", &hex(bg)]),
        None => cmd.args(["-solid", &hex(fg)]),
    };
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("spawning xsetroot (package x11-xserver-utils)")?;
    let r = client.wait_until_named("the latency marker", PROBE_TIMEOUT, |s| block_shows(s, fg)).await;
    let arrived = t0.elapsed();
    let status = child.wait().await?;
    if !status.success() {
        bail!("xsetroot -display {display} failed: {status}");
    }
    match r {
        Ok(()) => Ok(Some(arrived)),
        Err(guacr_tests::ClientError::Timeout { .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("waiting for marker {} on {display}", hex(fg))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_colours_differ_from_their_neighbours() {
        for i in 0..2000 {
            let (a, b) = (colour(i), colour(i + 1));
            assert!(a.iter().zip(b).all(|(x, y)| x.abs_diff(y) > 8), "{i}: {a:?} {b:?}");
        }
    }
}
