//! The workload interface: one implementation per scripted load, each in its own module (`vnc.rs`, ...),
//! listed in `main.rs`'s registry. The runner (`main.rs`) starts guacr, opens the sessions with
//! [`Workload::open`], calls [`Workload::start`], measures a window while [`Workload::during`] runs, takes
//! [`Workload::probes`] and finally [`Workload::stop`].

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Result;
use guacr_tests::{GuacClient, GuacrProcess};

use crate::counting::CountingClient;

/// A boxed future, so workloads can live behind `dyn Workload`.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Latency samples (ms) by probe name ("marker", "key", ...) and the probes that timed out.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    pub samples: BTreeMap<String, Vec<f64>>,
    pub missed: BTreeMap<String, usize>,
}

impl Latency {
    /// Records one probe: `Some(duration)` arrived, `None` timed out.
    pub fn record(&mut self, probe: &str, result: Option<Duration>) {
        match result {
            Some(d) => self.samples.entry(probe.to_owned()).or_default().push(d.as_secs_f64() * 1e3),
            None => *self.missed.entry(probe.to_owned()).or_default() += 1,
        }
    }

    pub fn extend(&mut self, other: Latency) {
        for (k, v) in other.samples {
            self.samples.entry(k).or_default().extend(v);
        }
        for (k, v) in other.missed {
            *self.missed.entry(k).or_default() += v;
        }
    }
}

/// What the runner passes to a workload's hooks.
pub struct Ctx<'a> {
    pub guacr: &'a GuacrProcess,
    /// The sessions with a full client (decoding, compositing); the first one is the probe session.
    pub clients: &'a [GuacClient],
    /// The other sessions, with counting clients (see [`Workload::counting`]); empty unless used.
    pub counters: &'a [CountingClient],
    /// Repetition index (0-based), so probes can pick fresh colours per repetition.
    pub rep: usize,
    /// Latency probes requested per repetition (`--probes`).
    pub probes: usize,
}

impl Ctx<'_> {
    pub fn probe(&self) -> &GuacClient {
        &self.clients[0]
    }
}

/// One scripted load through guacr.
pub trait Workload: Send + Sync {
    /// The name in tables and JSON, e.g. "a scroll".
    fn name(&self) -> &'static str;
    /// Names accepted by `--workloads`.
    fn aliases(&self) -> &'static [&'static str];
    /// Fails loudly (panic or error naming the fix) when its server is not running.
    fn require_up(&self) -> Result<()>;
    /// Opens one session through `guacr` and waits for its first frame; returns the client and the time
    /// from `select` to the first frame in ms.
    fn open<'a>(&'a self, guacr: &'a GuacrProcess) -> BoxFut<'a, Result<(GuacClient, f64)>>;
    /// The protocol and parameters for sessions after the first, which then get a counting client that
    /// decodes no image (`counting.rs`), so the bench's own decoding does not compete with guacr. `None`
    /// (the default): every session is opened with [`Workload::open`]. Only for workloads whose hooks use
    /// just the probe session (`ctx.probe()`).
    fn counting(&self) -> Option<(&'static str, Vec<(String, String)>)> {
        None
    }
    /// Sets the load going once every session is open (default: nothing).
    fn start<'a>(&'a self, _ctx: &'a Ctx<'a>) -> BoxFut<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Runs during the measuring window (default: sleeps through it); latency taken meanwhile.
    fn during<'a>(&'a self, _ctx: &'a Ctx<'a>, window: Duration) -> BoxFut<'a, Result<Latency>> {
        Box::pin(async move {
            tokio::time::sleep(window).await;
            Ok(Latency::default())
        })
    }
    /// Latency probes after the window (default: none).
    fn probes<'a>(&'a self, _ctx: &'a Ctx<'a>) -> BoxFut<'a, Result<Latency>> {
        Box::pin(async { Ok(Latency::default()) })
    }
    /// Leaves the server quiet again; also called after a failed measurement (default: nothing).
    fn stop<'a>(&'a self, _ctx: &'a Ctx<'a>) -> BoxFut<'a, ()> {
        Box::pin(async {})
    }
}
