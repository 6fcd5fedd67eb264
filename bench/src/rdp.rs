//! RDP workloads against the harness's freerdp-shadow (`scripts/peers.sh start`: Xvfb :55 with a bash
//! xterm at +0+0, shown over TLS on 127.0.0.1:3390): (d) `top` refreshing five times a second in the
//! xterm, (e) the idle desktop. Probe on (e): a key press until its echoed glyph shows on the prompt line.
//! freerdp-shadow serves any number of clients, so every concurrency level works (xrdp would reattach
//! the one session of the test user, so it is not a bench peer).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use guacr_tests::{peers, GuacClient, GuacrProcess};

use crate::workload::{BoxFut, Ctx, Latency, Workload};

const SCREEN: (u32, u32) = (1024, 768);
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKSPACE: u32 = 0xff08;
/// The first two xterm rows after `clear`: the prompt and where a typed glyph appears.
const KEY_AREA: (u32, u32, u32, u32) = (0, 0, 600, 40);
/// Inside the xterm: with no window manager, keyboard focus follows the pointer.
const POINTER: (i32, i32) = (200, 150);

/// The RDP workloads, for the registry.
pub fn workloads() -> Vec<Box<dyn Workload>> {
    vec![Box::new(Rdp::Top), Box::new(Rdp::Idle)]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rdp {
    Top,
    Idle,
}

impl Workload for Rdp {
    fn name(&self) -> &'static str {
        match self {
            Rdp::Top => "d rdp top",
            Rdp::Idle => "e rdp idle",
        }
    }

    fn aliases(&self) -> &'static [&'static str] {
        match self {
            Rdp::Top => &["rdp-top", "d"],
            Rdp::Idle => &["rdp-idle", "e"],
        }
    }

    fn require_up(&self) -> Result<()> {
        peers::rdp_shadow().require_up();
        Ok(())
    }

    fn open<'a>(&'a self, guacr: &'a GuacrProcess) -> BoxFut<'a, Result<(GuacClient, f64)>> {
        Box::pin(async move {
            let peer = peers::rdp_shadow();
            let mut params = peer.rdp_params();
            params.push(("security".into(), "tls".into()));
            params.push(("ignore-cert".into(), "true".into()));
            let mut c = GuacClient::connect(guacr.addr()).await?;
            let t0 = Instant::now();
            c.handshake("rdp", &params, SCREEN.0, SCREEN.1).await?;
            c.wait_frames(1, FIRST_FRAME_TIMEOUT).await?;
            let first = c.state().sync_times[0];
            Ok((c, (first - t0).as_secs_f64() * 1e3))
        })
    }

    fn start<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let c = ctx.probe();
            c.send_mouse(POINTER.0, POINTER.1, 0).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.type_text("clear\n").await?;
            if *self == Rdp::Top {
                c.type_text("top -d 0.2\n").await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(())
        })
    }

    fn probes<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFut<'a, Result<Latency>> {
        Box::pin(async move {
            let mut lat = Latency::default();
            if *self != Rdp::Idle {
                return Ok(lat);
            }
            let c = ctx.probe();
            for k in 0..ctx.probes {
                let key = u32::from(b'a' + (k % 26) as u8);
                lat.record("key", key_to_glyph(c, key).await?);
            }
            Ok(lat)
        })
    }

    fn stop<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let c = ctx.probe();
            if *self == Rdp::Top {
                let _ = c.type_text("q").await;
            }
            let _ = c.type_text("clear\n").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        })
    }
}

fn key_area(s: &guacr_tests::ClientState) -> Vec<u8> {
    let (x, y, w, h) = KEY_AREA;
    s.display.screenshot().crop(x, y, w, h).iter_pixels().flatten().collect()
}

/// Time from a key press to its echo on screen; the glyph is erased again afterwards.
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
