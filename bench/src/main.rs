//! `guacr-bench`: drives real VNC sessions through guacr as a Guacamole client, with scripted
//! workloads, and reports per workload and concurrency level: frames per second, bytes on the wire
//! (per second, per frame, by image format), time from `select` to the first frame, CPU seconds of the
//! supervisor and of the workers per delivered frame, PSS per session and marker latency.
//!
//! It needs the real servers (`scripts/peers.sh start`) and the workspace's binaries
//! (`cargo build --workspace --bins`); it fails loudly without them. Timings are reported, never
//! asserted. See BENCHMARKS.md for the command and the current figures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use guacr_tests::{peers, GuacClient, GuacrProcess};
use serde::Serialize;

/// Workloads, by name on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Workload {
    /// (a) `seq` flooding the typing peer's xterm: scrolling text.
    Scroll,
    /// (b) the changing peer's whole root recoloured (a plaid) as fast as the frames arrive.
    Fullscreen,
    /// (c) the changing peer as it is: a clock and `top`.
    Idle,
}

impl Workload {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "scroll" | "a" => Workload::Scroll,
            "fullscreen" | "b" => Workload::Fullscreen,
            "idle" | "c" => Workload::Idle,
            other => bail!("unknown workload {other:?} (scroll, fullscreen, idle)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Scroll => "a scroll",
            Workload::Fullscreen => "b fullscreen",
            Workload::Idle => "c idle",
        }
    }

    fn peer(self) -> peers::VncPeer {
        match self {
            Workload::Scroll => peers::typing(),
            Workload::Fullscreen | Workload::Idle => peers::changing(),
        }
    }
}

#[derive(Parser, Debug)]
#[command(name = "guacr-bench", about = "Scripted workloads through guacr against the real VNC peers")]
struct Args {
    /// Concurrency levels (sessions at once), comma-separated.
    #[arg(long, default_value = "1,10", value_delimiter = ',')]
    sessions: Vec<usize>,
    /// Repetitions of each measurement; the table shows medians.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Workloads, comma-separated: scroll (a), fullscreen (b), idle (c).
    #[arg(long, default_value = "scroll,fullscreen,idle", value_delimiter = ',')]
    workloads: Vec<String>,
    /// Measuring window per repetition, in seconds (the latency probes of a and c follow it).
    #[arg(long, default_value_t = 6.0)]
    seconds: f64,
    /// Marker latency probes per repetition for workloads a and c.
    #[arg(long, default_value_t = 12)]
    probes: usize,
    /// Also write every sample and the summaries as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// guacr's -L level (its log goes to <target>/test-logs).
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// Where the latency marker is looked for: a 16×16 block of root window in the bottom-right corner,
/// outside every client window of the peers (xclock on :51 ends at 1000,740; the xterms are top-left).
const PROBE_X: u32 = 1004;
const PROBE_Y: u32 = 748;
const PROBE_SIZE: u32 = 16;
const SCREEN: (u32, u32) = (1024, 768);
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const CONTROL_L: u32 = 0xffe3;

/// CPU time (utime + stime, seconds) of a process from /proc/PID/stat; None if it is gone.
fn cpu_seconds(pid: u32, tick: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // Fields after "comm)" start at field 3 (state); utime is 14, stime 15.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / tick)
}

/// PSS of a process in KiB from /proc/PID/smaps_rollup.
fn pss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// The i-th marker colour: consecutive ones differ in every channel.
fn colour(i: usize) -> [u8; 3] {
    let i = i as u32;
    [(30 + (i * 67) % 190) as u8, (40 + (i * 113 + 60) % 180) as u8, (20 + (i * 151 + 120) % 200) as u8]
}

fn near(p: [u8; 4], c: [u8; 3]) -> bool {
    p[..3].iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 4)
}

/// Does the probe block on session `client` show `c` anywhere?
fn block_shows(client: &guacr_tests::ClientState, c: [u8; 3]) -> bool {
    (PROBE_Y..PROBE_Y + PROBE_SIZE)
        .step_by(2)
        .any(|y| (PROBE_X..PROBE_X + PROBE_SIZE).any(|x| client.display.pixel(x, y).is_some_and(|p| near(p, c))))
}

/// The next marker colour (from index `i` on) that the probe block does not show yet; advances `i`.
fn fresh_colour(client: &GuacClient, i: &mut usize) -> [u8; 3] {
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
async fn marker(client: &GuacClient, display: &str, fg: [u8; 3], bg: Option<[u8; 3]>) -> Result<Option<Duration>> {
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

/// Per-session counters at one moment.
#[derive(Clone, Debug, Default)]
struct Snap {
    frames: u64,
    bytes: u64,
    log_len: usize,
}

fn snap(c: &GuacClient) -> Snap {
    let s = c.state();
    Snap { frames: s.frames, bytes: s.bytes_received, log_len: s.log.len() }
}

/// Image streams and their blob bytes (decoded size) by mimetype, plus drawing instruction counts,
/// from the client's log between two snapshots.
#[derive(Clone, Debug, Default, Serialize)]
struct Formats {
    /// mimetype -> (images, decoded bytes)
    images: BTreeMap<String, (u64, u64)>,
    copy: u64,
    cfill: u64,
    log_overflow: bool,
}

fn formats(c: &GuacClient, from: usize, into: &mut Formats) {
    let s = c.state();
    let mut open: BTreeMap<String, String> = BTreeMap::new();
    for r in s.log.iter().skip(from) {
        match r.opcode.as_str() {
            "img" => {
                let (Some(stream), Some(mime)) = (r.args.first(), r.args.get(3)) else { continue };
                open.insert(stream.clone(), mime.clone());
                into.images.entry(mime.clone()).or_default().0 += 1;
            }
            "blob" => {
                let Some(mime) = r.args.first().and_then(|st| open.get(st)) else { continue };
                // The log replaces the payload by "<N base64 chars>".
                let chars: u64 = r
                    .args
                    .get(1)
                    .and_then(|a| a.trim_start_matches('<').split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                into.images.entry(mime.clone()).or_default().1 += chars / 4 * 3;
            }
            "copy" => into.copy += 1,
            "cfill" => into.cfill += 1,
            _ => {}
        }
    }
    into.log_overflow |= s.log_overflow;
}

/// One repetition of one workload at one concurrency.
#[derive(Clone, Debug, Serialize)]
struct Sample {
    window_s: f64,
    /// Frames (`sync`) per second of each session.
    session_fps: Vec<f64>,
    frames_total: u64,
    bytes_total: u64,
    formats: Formats,
    /// `select` to first `sync`, per session, ms.
    first_frame_ms: Vec<f64>,
    supervisor_cpu_s: f64,
    workers_cpu_s: f64,
    /// The bench process itself (client decoding competes for the same cores).
    bench_cpu_s: f64,
    supervisor_pss_kib: Option<u64>,
    worker_pss_kib: Vec<u64>,
    /// Marker latency samples, ms.
    latency_ms: Vec<f64>,
    /// Markers that did not arrive within the probe timeout (10 s).
    latency_missed: usize,
    workers: usize,
}

async fn open_sessions(guacr: &GuacrProcess, peer: &peers::VncPeer, n: usize) -> Result<Vec<(GuacClient, f64)>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let addr = guacr.addr();
        let params = peer.vnc_params();
        tasks.push(tokio::spawn(async move {
            let mut c = GuacClient::connect(addr).await?;
            let t0 = Instant::now();
            c.handshake("vnc", &params, SCREEN.0, SCREEN.1).await?;
            c.wait_frames(1, FIRST_FRAME_TIMEOUT).await?;
            let first = c.state().sync_times[0];
            Ok::<_, anyhow::Error>((c, (first - t0).as_secs_f64() * 1e3))
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.context("session task")??);
    }
    Ok(out)
}

async fn ctrl_c(c: &GuacClient) -> Result<()> {
    c.send_key(CONTROL_L, true).await?;
    c.send_key(u32::from(b'c'), true).await?;
    c.send_key(u32::from(b'c'), false).await?;
    c.send_key(CONTROL_L, false).await?;
    Ok(())
}

async fn run_once(args: &Args, w: Workload, n: usize, rep: usize, tick: f64) -> Result<Sample> {
    let peer = w.peer();
    peer.require_up();
    let guacr = GuacrProcess::builder().log_level(&args.log_level).start()?;
    let sessions = open_sessions(&guacr, &peer, n)
        .await
        .with_context(|| format!("opening {n} sessions; guacr log {}", guacr.log_path().display()))?;
    let first_frame_ms: Vec<f64> = sessions.iter().map(|(_, t)| *t).collect();
    let clients: Vec<GuacClient> = sessions.into_iter().map(|(c, _)| c).collect();
    let probe = &clients[0];
    let workers = guacr.worker_pids();
    if workers.len() != n {
        bail!("expected {n} workers, found {}: {workers:?}", workers.len());
    }

    // Set the workload going, then let it settle.
    match w {
        Workload::Scroll => {
            let (x, y) = peers::typing_pointer();
            probe.send_mouse(x, y, 0).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            probe.type_text("clear; seq 1 1000000000\n").await?;
        }
        Workload::Fullscreen | Workload::Idle => {}
    }
    let measured = measure(args, w, rep, tick, &peer, &guacr, &clients, &workers).await;

    // Always stop the flood, also after a failed measurement, so the typing peer is left quiet.
    if w == Workload::Scroll {
        let _ = ctrl_c(probe).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = probe.type_text("clear\n").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for c in &clients {
        let _ = c.disconnect().await;
    }
    drop(clients);
    drop(guacr);
    Ok(Sample { first_frame_ms, ..measured? })
}

/// The measuring window (and the latency probes) of one repetition; the workload is running.
#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &Args,
    w: Workload,
    rep: usize,
    tick: f64,
    peer: &peers::VncPeer,
    guacr: &GuacrProcess,
    clients: &[GuacClient],
    workers: &[u32],
) -> Result<Sample> {
    let probe = &clients[0];
    tokio::time::sleep(Duration::from_secs(1)).await;

    let me = std::process::id();
    let start: Vec<Snap> = clients.iter().map(snap).collect();
    let sup0 = cpu_seconds(guacr.pid(), tick).context("supervisor gone")?;
    let wk0: Vec<f64> = workers.iter().map(|p| cpu_seconds(*p, tick).unwrap_or(0.0)).collect();
    let me0 = cpu_seconds(me, tick).unwrap_or(0.0);
    let t0 = Instant::now();
    let window = Duration::from_secs_f64(args.seconds);
    let mut latency_ms = Vec::new();
    let mut latency_missed = 0usize;

    match w {
        Workload::Fullscreen => {
            // Recolour the whole root as fast as each change arrives: every step is a latency sample.
            let mut i = rep * 1000;
            while t0.elapsed() < window {
                let fg = fresh_colour(probe, &mut i);
                match marker(probe, &peer.display, fg, Some(colour(i + 7))).await? {
                    Some(d) => latency_ms.push(d.as_secs_f64() * 1e3),
                    None => latency_missed += 1,
                }
                i += 1;
            }
        }
        Workload::Scroll | Workload::Idle => tokio::time::sleep(window).await,
    }

    let elapsed = t0.elapsed().as_secs_f64();
    let sup1 = cpu_seconds(guacr.pid(), tick).context("supervisor gone")?;
    let wk1: Vec<f64> = workers.iter().map(|p| cpu_seconds(*p, tick).unwrap_or(0.0)).collect();
    let me1 = cpu_seconds(me, tick).unwrap_or(0.0);
    let end: Vec<Snap> = clients.iter().map(snap).collect();
    let supervisor_pss_kib = pss_kib(guacr.pid());
    let worker_pss_kib: Vec<u64> = workers.iter().filter_map(|p| pss_kib(*p)).collect();

    let mut fmts = Formats::default();
    for (c, s) in clients.iter().zip(&start) {
        formats(c, s.log_len, &mut fmts);
    }
    let session_fps: Vec<f64> = start.iter().zip(&end).map(|(a, b)| (b.frames - a.frames) as f64 / elapsed).collect();
    let frames_total = start.iter().zip(&end).map(|(a, b)| b.frames - a.frames).sum();
    let bytes_total = start.iter().zip(&end).map(|(a, b)| b.bytes - a.bytes).sum();

    // Latency probes after the window for a and c (the workload keeps running).
    if w != Workload::Fullscreen {
        let mut i = rep * 1000 + 500;
        for _ in 0..args.probes {
            let fg = fresh_colour(probe, &mut i);
            match marker(probe, &peer.display, fg, None).await? {
                Some(d) => latency_ms.push(d.as_secs_f64() * 1e3),
                None => latency_missed += 1,
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    Ok(Sample {
        window_s: elapsed,
        session_fps,
        frames_total,
        bytes_total,
        formats: fmts,
        first_frame_ms: Vec::new(),
        supervisor_cpu_s: sup1 - sup0,
        workers_cpu_s: wk1.iter().zip(&wk0).map(|(b, a)| b - a).sum(),
        bench_cpu_s: me1 - me0,
        supervisor_pss_kib,
        worker_pss_kib,
        latency_ms,
        latency_missed,
        workers: workers.len(),
    })
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

/// Medians over the repetitions (latency: percentiles over all samples pooled).
#[derive(Clone, Debug, Serialize)]
struct Summary {
    workload: Workload,
    sessions: usize,
    repeats: usize,
    /// Median over sessions, then over repetitions.
    fps_per_session: f64,
    /// Slowest session's frame rate (median over repetitions).
    fps_min_session: f64,
    bytes_per_s: f64,
    bytes_per_frame: f64,
    /// mimetype -> share of image bytes (0..1); images per second.
    image_bytes_per_s: BTreeMap<String, f64>,
    images_per_s: BTreeMap<String, f64>,
    copy_per_s: f64,
    cfill_per_s: f64,
    first_frame_ms_p50: f64,
    supervisor_cpu_ms_per_frame: f64,
    worker_cpu_ms_per_frame: f64,
    supervisor_cpu_pct: f64,
    workers_cpu_pct: f64,
    bench_cpu_pct: f64,
    pss_per_session_mib: f64,
    worker_pss_mib: f64,
    supervisor_pss_mib: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_samples: usize,
    latency_missed: usize,
}

fn summarise(w: Workload, n: usize, s: &[Sample]) -> Summary {
    let per = |f: &dyn Fn(&Sample) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
    let frames = |x: &Sample| x.frames_total.max(1) as f64;
    let mut mimes: Vec<String> = s.iter().flat_map(|x| x.formats.images.keys().cloned()).collect();
    mimes.sort();
    mimes.dedup();
    let image_bytes_per_s = mimes
        .iter()
        .map(|m| (m.clone(), per(&|x| x.formats.images.get(m).map_or(0, |v| v.1) as f64 / x.window_s)))
        .collect();
    let images_per_s = mimes
        .iter()
        .map(|m| (m.clone(), per(&|x| x.formats.images.get(m).map_or(0, |v| v.0) as f64 / x.window_s)))
        .collect();
    let lat: Vec<f64> = s.iter().flat_map(|x| x.latency_ms.iter().copied()).collect();
    let first: Vec<f64> = s.iter().flat_map(|x| x.first_frame_ms.iter().copied()).collect();
    let worker_pss = per(&|x| median(&x.worker_pss_kib.iter().map(|k| *k as f64).collect::<Vec<_>>()) / 1024.0);
    let sup_pss = per(&|x| x.supervisor_pss_kib.map_or(f64::NAN, |k| k as f64 / 1024.0));
    Summary {
        workload: w,
        sessions: n,
        repeats: s.len(),
        fps_per_session: per(&|x| median(&x.session_fps)),
        fps_min_session: per(&|x| x.session_fps.iter().copied().fold(f64::INFINITY, f64::min)),
        bytes_per_s: per(&|x| x.bytes_total as f64 / x.window_s),
        bytes_per_frame: per(&|x| x.bytes_total as f64 / frames(x)),
        image_bytes_per_s,
        images_per_s,
        copy_per_s: per(&|x| x.formats.copy as f64 / x.window_s),
        cfill_per_s: per(&|x| x.formats.cfill as f64 / x.window_s),
        first_frame_ms_p50: percentile(&first, 50.0),
        supervisor_cpu_ms_per_frame: per(&|x| x.supervisor_cpu_s * 1e3 / frames(x)),
        worker_cpu_ms_per_frame: per(&|x| x.workers_cpu_s * 1e3 / frames(x)),
        supervisor_cpu_pct: per(&|x| x.supervisor_cpu_s * 100.0 / x.window_s),
        workers_cpu_pct: per(&|x| x.workers_cpu_s * 100.0 / x.window_s),
        bench_cpu_pct: per(&|x| x.bench_cpu_s * 100.0 / x.window_s),
        pss_per_session_mib: worker_pss + sup_pss / n as f64,
        worker_pss_mib: worker_pss,
        supervisor_pss_mib: sup_pss,
        latency_ms_p50: percentile(&lat, 50.0),
        latency_ms_p99: percentile(&lat, 99.0),
        latency_samples: lat.len(),
        latency_missed: s.iter().map(|x| x.latency_missed).sum(),
    }
}

fn kib(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

fn table(sums: &[Summary]) -> String {
    let mut t = String::new();
    t.push_str(
        "| workload | sessions | fps/session (min) | wire bytes/s | bytes/frame | image bytes/s by format | \
         select→first frame p50 | supervisor CPU ms/frame | worker CPU ms/frame | CPU % sup / workers / bench | \
         PSS/session (worker + sup/n) | marker latency p50 / p99 (n) |\n",
    );
    t.push_str("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for s in sums {
        let fmts: Vec<String> = s
            .image_bytes_per_s
            .iter()
            .map(|(m, b)| {
                let imgs = s.images_per_s.get(m).copied().unwrap_or(0.0);
                format!("{} {} ({imgs:.0} img/s)", m.trim_start_matches("image/"), kib(*b))
            })
            .collect();
        let mut fmts = fmts.join(", ");
        if s.copy_per_s > 0.0 || s.cfill_per_s > 0.0 {
            fmts.push_str(&format!("; copy {:.0}/s, cfill {:.0}/s", s.copy_per_s, s.cfill_per_s));
        }
        t.push_str(&format!(
            "| {} | {} | {:.1} ({:.1}) | {} | {} | {} | {:.0} ms | {:.2} | {:.2} | {:.0} / {:.0} / {:.0} | {:.1} MiB ({:.1} + {:.1}/{}) | {:.0} / {:.0} ms ({}{}) |\n",
            s.workload_name(),
            s.sessions,
            s.fps_per_session,
            s.fps_min_session,
            kib(s.bytes_per_s),
            kib(s.bytes_per_frame),
            if fmts.is_empty() { "-".into() } else { fmts },
            s.first_frame_ms_p50,
            s.supervisor_cpu_ms_per_frame,
            s.worker_cpu_ms_per_frame,
            s.supervisor_cpu_pct,
            s.workers_cpu_pct,
            s.bench_cpu_pct,
            s.pss_per_session_mib,
            s.worker_pss_mib,
            s.supervisor_pss_mib,
            s.sessions,
            s.latency_ms_p50,
            s.latency_ms_p99,
            s.latency_samples,
            if s.latency_missed > 0 { format!(", {} missed", s.latency_missed) } else { String::new() },
        ));
    }
    t
}

impl Summary {
    fn workload_name(&self) -> &'static str {
        self.workload.name()
    }
}

#[derive(Serialize)]
struct Report {
    command: Vec<String>,
    nproc: usize,
    clock_ticks: f64,
    summaries: Vec<Summary>,
    samples: Vec<(Workload, usize, Vec<Sample>)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let workloads: Vec<Workload> = args.workloads.iter().map(|s| Workload::parse(s)).collect::<Result<_>>()?;
    if args.repeat == 0 || args.sessions.contains(&0) {
        bail!("--repeat and --sessions must be at least 1");
    }
    if args.seconds <= 0.0 || args.seconds > 60.0 {
        bail!("--seconds must be in (0, 60]");
    }
    // Fail loudly, before anything starts, when a peer is missing (require_up panics with the fix).
    for w in &workloads {
        w.peer().require_up();
    }
    if std::process::Command::new("xsetroot").arg("-version").output().is_err() {
        bail!("xsetroot not found (package x11-xserver-utils; scripts/peers.sh install)");
    }
    let tick = clock_ticks();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut summaries = Vec::new();
    let mut samples = Vec::new();
    for w in &workloads {
        for &n in &args.sessions {
            let mut reps = Vec::new();
            for rep in 0..args.repeat {
                eprintln!("guacr-bench: {} with {n} session(s), repetition {}/{}", w.name(), rep + 1, args.repeat);
                let s = rt
                    .block_on(run_once(&args, *w, n, rep, tick))
                    .with_context(|| format!("{} with {n} sessions, repetition {}", w.name(), rep + 1))?;
                if s.formats.log_overflow {
                    eprintln!("guacr-bench: warning: the client's instruction log overflowed; format counts are short");
                }
                reps.push(s);
            }
            summaries.push(summarise(*w, n, &reps));
            samples.push((*w, n, reps));
        }
    }
    print!("{}", table(&summaries));
    if let Some(path) = &args.json {
        let report = Report {
            command: std::env::args().collect(),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            clock_ticks: tick,
            summaries,
            samples,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentile() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn marker_colours_differ_from_their_neighbours() {
        for i in 0..2000 {
            let (a, b) = (colour(i), colour(i + 1));
            assert!(a.iter().zip(b).all(|(x, y)| x.abs_diff(y) > 8), "{i}: {a:?} {b:?}");
        }
    }

    #[test]
    fn own_cpu_and_pss_are_readable() {
        let me = std::process::id();
        assert!(cpu_seconds(me, 100.0).is_some());
        assert!(pss_kib(me).is_some_and(|k| k > 0));
    }
}
