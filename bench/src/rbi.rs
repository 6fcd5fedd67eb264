//! The remote browser isolation workload: (r) an `rbi` session on a page that moves and recolours a
//! 200×200 box on every animation frame, served by the test crate's [`PageServer`] on 127.0.0.1. The
//! first-frame time includes Chromium's start. The runner measures the worker process only; Chromium
//! (every process of the session's browser) is measured here and printed as one extra line per window:
//! its CPU per frame and its PSS.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use guacr_tests::pages::PageServer;
use guacr_tests::{GuacClient, GuacrProcess};

use crate::measure;
use crate::workload::{BoxFut, Ctx, Latency, Workload};

const SCREEN: (u32, u32) = (1024, 768);
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// The RBI workload, for the registry.
pub fn workloads() -> Vec<Box<dyn Workload>> {
    vec![Box::new(Rbi { server: tokio::sync::OnceCell::new() })]
}

struct Rbi {
    /// Started on the first `open`, inside the runner's runtime, and kept for every repetition.
    server: tokio::sync::OnceCell<PageServer>,
}

/// Every live process of the rbi sessions' browsers (their command lines name the throwaway profile).
fn browser_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("/tmp/guacr-rbi-"))
        })
        .collect()
}

/// Whether the worker user may create user namespaces (Chromium's own sandbox needs them).
fn sandbox_available() -> bool {
    std::process::Command::new("su")
        .args(["-s", "/bin/sh", "guacr-worker", "-c", "unshare -U true"])
        .status()
        .is_ok_and(|s| s.success())
}

impl Workload for Rbi {
    fn name(&self) -> &'static str {
        "r browser"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["browser", "rbi", "r"]
    }

    fn require_up(&self) -> Result<()> {
        if !std::path::Path::new(CHROMIUM).is_file() {
            bail!("{CHROMIUM} not found: install chromium (scripts/peers.sh install chromium)");
        }
        Ok(())
    }

    fn open<'a>(&'a self, guacr: &'a GuacrProcess) -> BoxFut<'a, Result<(GuacClient, f64)>> {
        Box::pin(async move {
            let server = self.server.get_or_try_init(PageServer::start).await?;
            let mut params = vec![("url".to_string(), server.url("/anim"))];
            if !sandbox_available() {
                params.push(("no-sandbox".into(), "true".into()));
            }
            let mut c = GuacClient::connect(guacr.addr()).await?;
            let t0 = Instant::now();
            c.handshake("rbi", &params, SCREEN.0, SCREEN.1).await?;
            c.wait_frames(1, FIRST_FRAME_TIMEOUT).await?;
            let first = c.state().sync_times[0];
            Ok((c, (first - t0).as_secs_f64() * 1e3))
        })
    }

    fn during<'a>(&'a self, ctx: &'a Ctx<'a>, window: Duration) -> BoxFut<'a, Result<Latency>> {
        Box::pin(async move {
            let tick = measure::clock_ticks();
            let pids = browser_pids();
            let cpu = |pids: &[u32]| pids.iter().filter_map(|p| measure::cpu_seconds(*p, tick)).sum::<f64>();
            let frames = |ctx: &Ctx<'_>| ctx.clients.iter().map(GuacClient::frames).sum::<u64>();
            let (cpu0, frames0) = (cpu(&pids), frames(ctx));
            tokio::time::sleep(window).await;
            let (cpu1, frames1) = (cpu(&pids), frames(ctx));
            let pss_kib: u64 = browser_pids().iter().filter_map(|p| measure::pss_kib(*p)).sum();
            let frames = (frames1 - frames0).max(1);
            eprintln!(
                "guacr-bench: rbi browsers: {} processes, {:.1} ms CPU per client frame ({:.2} CPU s over {:.1} s), \
                 PSS {:.0} MiB in all",
                pids.len(),
                (cpu1 - cpu0) * 1e3 / frames as f64,
                cpu1 - cpu0,
                window.as_secs_f64(),
                pss_kib as f64 / 1024.0
            );
            Ok(Latency::default())
        })
    }
}
