//! SSH workloads against the harness's OpenSSH sshd (`scripts/peers.sh start`, user guactest):
//! (s) a flood (`seq` through the `command` parameter: every line new, so nothing coalesces to nothing),
//! (t) `top` refreshing twice a second, (u) an idle shell. Probe on (u): a key press until its echoed
//! glyph shows on the prompt line.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use guacr_tests::{peers, GuacClient, GuacrProcess};

use crate::workload::{BoxFut, Ctx, Latency, Workload};

const SCREEN: (u32, u32) = (1024, 768);
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKSPACE: u32 = 0xff08;
/// The first two terminal rows after `clear`: the prompt and where a typed glyph appears.
const KEY_AREA: (u32, u32, u32, u32) = (0, 0, 600, 34);

/// The three SSH workloads, for the registry.
pub fn workloads() -> Vec<Box<dyn Workload>> {
    vec![Box::new(Ssh::Flood), Box::new(Ssh::Top), Box::new(Ssh::Idle)]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ssh {
    Flood,
    Top,
    Idle,
}

impl Ssh {
    fn command(self) -> Option<&'static str> {
        match self {
            Ssh::Flood => Some("seq 1 999999999"),
            Ssh::Top => Some("top -d 0.5"),
            Ssh::Idle => None,
        }
    }
}

impl Workload for Ssh {
    fn name(&self) -> &'static str {
        match self {
            Ssh::Flood => "s ssh flood",
            Ssh::Top => "t ssh top",
            Ssh::Idle => "u ssh idle",
        }
    }

    fn aliases(&self) -> &'static [&'static str] {
        match self {
            Ssh::Flood => &["ssh-flood", "s"],
            Ssh::Top => &["ssh-top", "t"],
            Ssh::Idle => &["ssh-idle", "u"],
        }
    }

    fn require_up(&self) -> Result<()> {
        peers::ssh().require_up();
        Ok(())
    }

    fn open<'a>(&'a self, guacr: &'a GuacrProcess) -> BoxFut<'a, Result<(GuacClient, f64)>> {
        Box::pin(async move {
            let peer = peers::ssh();
            let mut params = peer.ssh_params();
            params.push(("password".into(), peer.password.clone()));
            if let Some(command) = self.command() {
                params.push(("command".into(), command.into()));
            }
            let mut c = GuacClient::connect(guacr.addr()).await?;
            let t0 = Instant::now();
            c.handshake("ssh", &params, SCREEN.0, SCREEN.1).await?;
            c.wait_frames(1, FIRST_FRAME_TIMEOUT).await?;
            let first = c.state().sync_times[0];
            Ok((c, (first - t0).as_secs_f64() * 1e3))
        })
    }

    fn probes<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFut<'a, Result<Latency>> {
        Box::pin(async move {
            let mut lat = Latency::default();
            if *self != Ssh::Idle {
                return Ok(lat);
            }
            let c = ctx.probe();
            c.type_text("clear\n").await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            for k in 0..ctx.probes {
                let key = u32::from(b'a' + (k % 26) as u8);
                lat.record("key", key_to_glyph(c, key).await?);
            }
            Ok(lat)
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
