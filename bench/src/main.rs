//! `guacr-bench`: drives real sessions through guacr as a Guacamole client, with scripted workloads, and
//! reports per display mode, workload and concurrency level: frames per second, bytes on the wire (per
//! second, per frame, by image format), time from `select` to the first frame, CPU seconds of the
//! supervisor and of the workers per delivered frame, PSS per session and input-to-pixel latency; then
//! each figure of the planned display path as a ratio against the naive baseline measured in the same run.
//!
//! It needs the real servers (`scripts/peers.sh start`) and the workspace's binaries from the same build
//! profile (`cargo build --release --workspace --bins` for the figures of BENCHMARKS.md); it fails loudly
//! without them. Timings are reported, never asserted. See BENCHMARKS.md for the command and the current
//! figures.
//!
//! Workloads live in their own modules (`vnc.rs`, ...) behind [`workload::Workload`]; add one to
//! [`registry`] to make it selectable with `--workloads`.

mod counting;
mod measure;
mod rbi;
mod rdp;
mod sharing;
mod ssh;
mod vnc;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use guacr_tests::{GuacClient, GuacrProcess};
use serde::Serialize;

use crate::measure::{Sample, Summary};
use crate::workload::{Ctx, Latency, Workload};

/// Every workload the bench knows, in table order.
fn registry() -> Vec<Box<dyn Workload>> {
    let mut all = Vec::new();
    all.extend(vnc::workloads());
    all.extend(rbi::workloads());
    all.extend(rdp::workloads());
    all.extend(sharing::workloads());
    all.extend(ssh::workloads());
    all
}

#[derive(Parser, Debug)]
#[command(name = "guacr-bench", about = "Scripted workloads through guacr against the real servers")]
struct Args {
    /// Concurrency levels (sessions at once), comma-separated.
    #[arg(long, default_value = "1,10", value_delimiter = ',')]
    sessions: Vec<usize>,
    /// Extra concurrency levels for single workloads, as WORKLOAD=N (e.g. `idle=50`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    extra: Vec<String>,
    /// Repetitions of each measurement; the table shows medians.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Workloads, comma-separated (by name or letter): scroll (a), log (a2), fullscreen (b), idle (c), still,
    /// and the SSH, RDP, RBI and sharing workloads of BENCHMARKS.md.
    #[arg(long, default_value = "scroll,fullscreen,idle", value_delimiter = ',')]
    workloads: Vec<String>,
    /// guacr display modes to compare (`--display-mode`), comma-separated; ratios are against the last.
    #[arg(long, default_value = "planned,naive", value_delimiter = ',')]
    modes: Vec<String>,
    /// Measuring window per repetition, in seconds (the latency probes follow it).
    #[arg(long, default_value_t = 6.0)]
    seconds: f64,
    /// Latency probes per repetition and probe kind.
    #[arg(long, default_value_t = 12)]
    probes: usize,
    /// Also write every sample and the summaries as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// guacr's -L level (its log goes to <target>/test-logs).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Give every session a full decoding client, as before the counting client existed (by default,
    /// VNC workloads use one only for the probe session and counting clients for the others).
    #[arg(long)]
    decode_all: bool,
    /// Open the sessions this many at a time, each group once the previous one shows its first frames
    /// (0: all at once, the default). For peers with a short listen queue: Xtigervnc listens with a backlog
    /// of 5, and 50 connections at once overflow it (the kernel drops SYNs, which the clients retransmit in
    /// step, 1, 3, 7 and 15 s later, and some miss the 15-s VNC handshake timeout).
    #[arg(long, default_value_t = 0)]
    open_batch: usize,
}

async fn open_sessions(w: &dyn Workload, guacr: &GuacrProcess, n: usize) -> Result<Vec<(GuacClient, f64)>> {
    // Opened concurrently, like users arriving at once.
    let opens = (0..n).map(|_| w.open(guacr));
    let mut out = Vec::new();
    for r in futures_join(opens).await {
        out.push(r?);
    }
    Ok(out)
}

type Opened = (Vec<(GuacClient, f64)>, Vec<(counting::CountingClient, f64)>);

/// Opens `full` sessions with the workload's own client and `counted` with counting clients, all at once.
async fn open_all(
    w: &dyn Workload,
    guacr: &GuacrProcess,
    full: usize,
    counted: usize,
    counting: Option<&(&'static str, Vec<(String, String)>)>,
) -> Result<Opened> {
    let addr = guacr.addr();
    let counters = async {
        let Some((protocol, params)) = counting else { return Ok(Vec::new()) };
        let opens = (0..counted).map(|_| -> workload::BoxFut<'_, Result<(counting::CountingClient, f64)>> {
            Box::pin(counting::CountingClient::open(addr, protocol, params, vnc::SCREEN, Duration::from_secs(30)))
        });
        futures_join(opens).await.into_iter().collect::<Result<Vec<_>>>()
    };
    let (full, counters) = tokio::join!(open_sessions(w, guacr, full), counters);
    Ok((full?, counters?))
}

/// [`open_all`] for `batch` sessions at a time, the full ones first (all at once when `batch` is 0).
async fn open_in_batches(
    w: &dyn Workload,
    guacr: &GuacrProcess,
    full: usize,
    counted: usize,
    counting: Option<&(&'static str, Vec<(String, String)>)>,
    batch: usize,
) -> Result<Opened> {
    if batch == 0 {
        return open_all(w, guacr, full, counted, counting).await;
    }
    let (mut sessions, mut counters) = (Vec::new(), Vec::new());
    let (mut full_left, mut counted_left) = (full, counted);
    while full_left + counted_left > 0 {
        let f = full_left.min(batch);
        let c = counted_left.min(batch - f);
        let (mut s, mut k) = open_all(w, guacr, f, c, counting).await?;
        sessions.append(&mut s);
        counters.append(&mut k);
        (full_left, counted_left) = (full_left - f, counted_left - c);
    }
    Ok((sessions, counters))
}

/// Runs the futures concurrently on the current task and returns their results in order.
async fn futures_join<'a, T>(futs: impl Iterator<Item = workload::BoxFut<'a, T>>) -> Vec<T> {
    let mut pending: Vec<_> = futs.map(Some).collect();
    let mut results: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (slot, res) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *res = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

async fn run_once(args: &Args, mode: &str, w: &dyn Workload, n: usize, rep: usize, tick: f64) -> Result<Sample> {
    w.require_up()?;
    // The HTTP entry (on a free port) serves /metrics: the handoff histograms come from there.
    let guacr = GuacrProcess::builder().log_level(&args.log_level).args(["--display-mode", mode]).http().start()?;
    let counting = if args.decode_all { None } else { w.counting() };
    let full = if counting.is_some() { 1 } else { n };
    let (sessions, counted) = open_in_batches(w, &guacr, full, n - full, counting.as_ref(), args.open_batch)
        .await
        .with_context(|| format!("opening {n} sessions; guacr log {}", guacr.log_path().display()))?;
    let first_frame_ms: Vec<f64> = sessions.iter().map(|(_, t)| *t).chain(counted.iter().map(|(_, t)| *t)).collect();
    let clients: Vec<GuacClient> = sessions.into_iter().map(|(c, _)| c).collect();
    let counters: Vec<counting::CountingClient> = counted.into_iter().map(|(c, _)| c).collect();
    let workers = guacr.worker_pids();
    if workers.len() != n {
        bail!("expected {n} workers, found {}: {workers:?}", workers.len());
    }
    let ctx = Ctx { guacr: &guacr, clients: &clients, counters: &counters, rep, probes: args.probes };
    let measured = match w.start(&ctx).await {
        Ok(()) => measure(args, w, &ctx, tick, &workers).await,
        Err(e) => Err(e),
    };
    w.stop(&ctx).await;
    let metrics = match guacr.http_addr() {
        Some(addr) => measure::scrape_metrics(addr).await.unwrap_or_default(),
        None => String::new(),
    };
    for c in &clients {
        let _ = c.disconnect().await;
    }
    drop(clients);
    drop(counters);
    drop(guacr);
    Ok(Sample {
        first_frame_ms,
        handoff_hist: measure::histogram(&metrics, "guacr_frame_handoff_seconds"),
        publish_hist: measure::histogram(&metrics, "guacr_publish_to_encode_seconds"),
        ..measured?
    })
}

/// The measuring window (and the latency probes) of one repetition; the workload is running.
async fn measure(args: &Args, w: &dyn Workload, ctx: &Ctx<'_>, tick: f64, workers: &[u32]) -> Result<Sample> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let guacr = ctx.guacr;
    let clients = ctx.clients;
    let me = std::process::id();
    let start: Vec<measure::Snap> = clients.iter().map(measure::snap).collect();
    let counted0: Vec<_> = ctx.counters.iter().map(measure::snap_counts).collect();
    // Scraped outside the CPU window, so that serving /metrics does not count as guacr's work.
    let encodes0 = encode_totals(guacr).await;
    let sup0 = measure::cpu_seconds(guacr.pid(), tick).context("supervisor gone")?;
    let wk0: Vec<f64> = workers.iter().map(|p| measure::cpu_seconds(*p, tick).unwrap_or(0.0)).collect();
    let me0 = measure::cpu_seconds(me, tick).unwrap_or(0.0);
    let t0 = Instant::now();
    let mut latency: Latency = w.during(ctx, Duration::from_secs_f64(args.seconds)).await?;

    let elapsed = t0.elapsed().as_secs_f64();
    let sup1 = measure::cpu_seconds(guacr.pid(), tick).context("supervisor gone")?;
    let wk1: Vec<f64> = workers.iter().map(|p| measure::cpu_seconds(*p, tick).unwrap_or(0.0)).collect();
    let me1 = measure::cpu_seconds(me, tick).unwrap_or(0.0);
    let encodes1 = encode_totals(guacr).await;
    let end: Vec<measure::Snap> = clients.iter().map(measure::snap).collect();
    let counted1: Vec<_> = ctx.counters.iter().map(measure::snap_counts).collect();
    if let Some(why) = ctx.counters.iter().find_map(|c| c.counts().closed) {
        bail!("a counting session ended during the window: {why}");
    }
    let supervisor_pss_kib = measure::pss_kib(guacr.pid());
    let worker_pss_kib: Vec<u64> = workers.iter().filter_map(|p| measure::pss_kib(*p)).collect();
    let loadavg = measure::loadavg();

    let mut fmts = measure::Formats::default();
    for (c, s) in clients.iter().zip(&start) {
        measure::formats(c, s.log_len, &mut fmts);
    }
    for ((_, a), (_, b)) in counted0.iter().zip(&counted1) {
        measure::formats_between(a, b, &mut fmts);
    }
    // Counting sessions after the full ones, in the same order at both ends.
    let start: Vec<measure::Snap> = start.into_iter().chain(counted0.into_iter().map(|(s, _)| s)).collect();
    let end: Vec<measure::Snap> = end.into_iter().chain(counted1.into_iter().map(|(s, _)| s)).collect();
    let session_fps: Vec<f64> = start.iter().zip(&end).map(|(a, b)| (b.frames - a.frames) as f64 / elapsed).collect();
    let frames_total = start.iter().zip(&end).map(|(a, b)| b.frames - a.frames).sum();
    let bytes_total = start.iter().zip(&end).map(|(a, b)| b.bytes - a.bytes).sum();

    latency.extend(w.probes(ctx).await?);

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
        latency_ms: latency.samples,
        latency_missed: latency.missed,
        workers: workers.len(),
        loadavg,
        handoff_hist: Vec::new(),
        publish_hist: Vec::new(),
        encode_s: encodes1.0 - encodes0.0,
        encodes: encodes1.1.saturating_sub(encodes0.1),
    })
}

/// guacr's `guacr_encode_seconds` sum and count so far (zeros without its HTTP entry): the encoder
/// threads' time, which the window's difference turns into a time per encode.
async fn encode_totals(guacr: &GuacrProcess) -> (f64, u64) {
    let Some(addr) = guacr.http_addr() else { return (0.0, 0) };
    let text = measure::scrape_metrics(addr).await.unwrap_or_default();
    let sum = measure::metric_value(&text, "guacr_encode_seconds_sum").unwrap_or(0.0);
    let count = measure::metric_value(&text, "guacr_encode_seconds_count").unwrap_or(0.0);
    (sum, count as u64)
}

#[derive(Serialize)]
struct Report {
    command: Vec<String>,
    nproc: usize,
    clock_ticks: f64,
    loadavg_start: f64,
    loadavg_end: f64,
    summaries: Vec<Summary>,
    samples: Vec<(String, String, usize, Vec<Sample>)>,
    failures: Vec<String>,
}

/// A selected workload and its concurrency levels.
type Selected = (Box<dyn Workload>, Vec<usize>);

/// The workloads named on the command line, with their concurrency levels.
fn selected(args: &Args) -> Result<Vec<Selected>> {
    let mut out: Vec<Selected> = Vec::new();
    for name in &args.workloads {
        let name = name.trim();
        let Some(w) = registry().into_iter().find(|w| w.aliases().contains(&name)) else {
            let known: Vec<&str> = registry().iter().flat_map(|w| w.aliases().to_vec()).collect();
            bail!("unknown workload {name:?} (known: {})", known.join(", "));
        };
        let mut levels = args.sessions.clone();
        for extra in &args.extra {
            let Some((wname, n)) = extra.split_once('=') else { bail!("--extra wants WORKLOAD=N, got {extra:?}") };
            if w.aliases().contains(&wname.trim()) {
                levels.push(n.trim().parse().with_context(|| format!("--extra {extra:?}"))?);
            }
        }
        out.push((w, levels));
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let workloads = selected(&args)?;
    if args.repeat == 0 || workloads.iter().any(|(_, l)| l.contains(&0)) {
        bail!("--repeat and --sessions must be at least 1");
    }
    if args.seconds <= 0.0 || args.seconds > 60.0 {
        bail!("--seconds must be in (0, 60]");
    }
    if args.modes.is_empty() || args.modes.iter().any(|m| m != "planned" && m != "naive") {
        bail!("--modes takes planned and/or naive");
    }
    // Fail loudly, before anything starts, when a server is missing.
    for (w, _) in &workloads {
        w.require_up()?;
    }
    let tick = measure::clock_ticks();
    let loadavg_start = measure::loadavg();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut summaries = Vec::new();
    let mut samples = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for (w, levels) in &workloads {
        for &n in levels {
            // Modes alternate within each repetition, so drifting load hits both alike.
            let mut reps: Vec<Vec<Sample>> = args.modes.iter().map(|_| Vec::new()).collect();
            for rep in 0..args.repeat {
                for (m, mode) in args.modes.iter().enumerate() {
                    eprintln!(
                        "guacr-bench: {mode} {} with {n} session(s), repetition {}/{}",
                        w.name(),
                        rep + 1,
                        args.repeat
                    );
                    let result = rt
                        .block_on(run_once(&args, mode, w.as_ref(), n, rep, tick))
                        .with_context(|| format!("{mode} {} with {n} sessions, repetition {}", w.name(), rep + 1));
                    // A failed repetition is reported and counted, not fatal: a long run keeps its other figures.
                    let s = match result {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("guacr-bench: FAILED: {e:#}");
                            failures.push(format!("{e:#}"));
                            continue;
                        }
                    };
                    if s.formats.log_overflow {
                        eprintln!(
                            "guacr-bench: warning: the client's instruction log overflowed; format counts are short"
                        );
                    }
                    reps[m].push(s);
                }
            }
            for (mode, reps) in args.modes.iter().zip(reps) {
                if reps.is_empty() {
                    continue;
                }
                summaries.push(measure::summarise(mode, w.name(), n, &reps));
                samples.push((mode.clone(), w.name().to_owned(), n, reps));
            }
        }
    }
    let loadavg_end = measure::loadavg();
    print!("{}", measure::table(&summaries));
    println!();
    print!("{}", measure::cpu_table(&summaries));
    if let [first, .., base] = args.modes.as_slice() {
        println!();
        print!("{}", measure::ratio_table(&summaries, first, base));
    }
    println!("\nload average (1 min): {loadavg_start:.2} at start, {loadavg_end:.2} at end");
    for f in &failures {
        println!("failed repetition: {f}");
    }
    if let Some(path) = &args.json {
        let report = Report {
            command: std::env::args().collect(),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            clock_ticks: tick,
            loadavg_start,
            loadavg_end,
            summaries,
            samples,
            failures,
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
    fn every_workload_has_a_unique_name() {
        let all = registry();
        let mut names: Vec<&str> = all.iter().flat_map(|w| w.aliases().to_vec()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "{names:?}");
        assert!(all.iter().any(|w| w.name() == "a scroll"));
    }
}
