//! Sharing and recording workloads: what N read-only viewers joined to one session (`select $id`) cost,
//! and what a session recording costs, both on workload (b)'s load (the changing peer's whole root
//! recoloured as fast as the frames arrive). The session count of the runner is the number of owners
//! (one worker each); viewers come on top. Probes: the owner's marker latency ("marker") and the time
//! until every viewer shows the marker ("viewers").

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use guacr_tests::{peers, GuacClient, GuacrProcess, HandshakeOptions};

use crate::vnc::{self, SCREEN};
use crate::workload::{BoxFut, Ctx, Latency, Workload};

const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
const VIEWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The sharing and recording workloads, for the registry.
pub fn workloads() -> Vec<Box<dyn Workload>> {
    vec![
        Box::new(Sharing::new(Kind::Recorded)),
        Box::new(Sharing::new(Kind::Viewers(1))),
        Box::new(Sharing::new(Kind::Viewers(5))),
        Box::new(Sharing::new(Kind::Viewers(20))),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Workload (b) with `recording-path` set: compare with "b fullscreen" in the same run.
    Recorded,
    /// Workload (b) watched by this many read-only joiners.
    Viewers(usize),
}

struct Sharing {
    kind: Kind,
    /// The joiners of every owner opened so far, and where the recordings go.
    viewers: Mutex<Vec<GuacClient>>,
    recordings: std::path::PathBuf,
}

impl Sharing {
    fn new(kind: Kind) -> Sharing {
        let recordings = std::env::temp_dir().join(format!("guacr-bench-recordings-{}", std::process::id()));
        Sharing { kind, viewers: Mutex::new(Vec::new()), recordings }
    }

    fn viewers(&self) -> std::sync::MutexGuard<'_, Vec<GuacClient>> {
        self.viewers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Workload for Sharing {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Recorded => "b recorded",
            Kind::Viewers(1) => "b +1 viewer",
            Kind::Viewers(5) => "b +5 viewers",
            Kind::Viewers(_) => "b +20 viewers",
        }
    }

    fn aliases(&self) -> &'static [&'static str] {
        match self.kind {
            Kind::Recorded => &["recorded"],
            Kind::Viewers(1) => &["viewers1"],
            Kind::Viewers(5) => &["viewers5"],
            Kind::Viewers(_) => &["viewers20"],
        }
    }

    fn require_up(&self) -> Result<()> {
        peers::changing().require_up();
        if std::process::Command::new("xsetroot").arg("-version").output().is_err() {
            bail!("xsetroot not found (package x11-xserver-utils; scripts/peers.sh install)");
        }
        Ok(())
    }

    fn open<'a>(&'a self, guacr: &'a GuacrProcess) -> BoxFut<'a, Result<(GuacClient, f64)>> {
        let addr = guacr.addr();
        let mut params = peers::changing().vnc_params();
        if self.kind == Kind::Recorded {
            params.push(("recording-path".into(), self.recordings.display().to_string()));
            params.push(("create-recording-path".into(), "true".into()));
        }
        Box::pin(async move {
            let mut owner = GuacClient::connect(addr).await?;
            let t0 = Instant::now();
            let id = owner.handshake("vnc", &params, SCREEN.0, SCREEN.1).await?;
            owner.wait_frames(1, FIRST_FRAME_TIMEOUT).await?;
            let first = owner.state().sync_times[0];
            if let Kind::Viewers(n) = self.kind {
                for i in 0..n {
                    let mut viewer = GuacClient::connect(addr).await?;
                    let mut options = HandshakeOptions::new(&id).param("read-only", "true");
                    options.name = Some(format!("viewer{i}"));
                    viewer.handshake_with(&options).await.context("joining as a viewer")?;
                    viewer.wait_frames(1, FIRST_FRAME_TIMEOUT).await.context("a viewer's state dump")?;
                    self.viewers().push(viewer);
                }
            }
            Ok((owner, (first - t0).as_secs_f64() * 1e3))
        })
    }

    fn during<'a>(&'a self, ctx: &'a Ctx<'a>, window: Duration) -> BoxFut<'a, Result<Latency>> {
        Box::pin(async move {
            let mut lat = Latency::default();
            let display = peers::changing().display;
            let frames0: Vec<u64> = self.viewers().iter().map(GuacClient::frames).collect();
            let t0 = Instant::now();
            let mut i = ctx.rep * 1000;
            while t0.elapsed() < window {
                let fg = vnc::fresh_colour(ctx.probe(), &mut i);
                let started = Instant::now();
                lat.record("marker", vnc::marker(ctx.probe(), &display, fg, Some(vnc::colour(i + 7))).await?);
                let viewers = std::mem::take(&mut *self.viewers());
                let mut all = true;
                for viewer in &viewers {
                    let shown =
                        viewer.wait_until_named("the marker", VIEWER_TIMEOUT, |s| vnc::block_shows(s, fg)).await;
                    all &= shown.is_ok();
                }
                *self.viewers() = viewers;
                if !self.viewers().is_empty() {
                    lat.record("viewers", all.then(|| started.elapsed()));
                }
                i += 1;
            }
            let elapsed = t0.elapsed().as_secs_f64();
            let viewers = self.viewers();
            if !viewers.is_empty() {
                let mut fps: Vec<f64> =
                    viewers.iter().zip(frames0).map(|(v, f0)| (v.frames() - f0) as f64 / elapsed).collect();
                fps.sort_by(f64::total_cmp);
                eprintln!(
                    "{}: viewer frames/s min {:.1} median {:.1} max {:.1}",
                    self.name(),
                    fps[0],
                    fps[fps.len() / 2],
                    fps[fps.len() - 1]
                );
            }
            Ok(lat)
        })
    }

    fn stop<'a>(&'a self, _ctx: &'a Ctx<'a>) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let viewers = std::mem::take(&mut *self.viewers());
            for viewer in &viewers {
                let _ = viewer.disconnect().await;
            }
            if self.kind == Kind::Recorded {
                let size: u64 = std::fs::read_dir(&self.recordings)
                    .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
                    .unwrap_or(0);
                eprintln!("{}: {} bytes recorded", self.name(), size);
                let _ = std::fs::remove_dir_all(&self.recordings);
            }
        })
    }
}
