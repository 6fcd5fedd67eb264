//! Kill storm: 30 concurrent VNC sessions; over 60 s, 100 workers are SIGKILLed or SIGSTOPped at random
//! (fixed seed). The supervisor stays up; each victim's client gets `error` (SIGKILL: at once, from the
//! closed control socket and the child's exit; SIGSTOP: when the heartbeat is missed, `--worker-timeout 2`);
//! every other session keeps receiving frames; afterwards no zombie, no memfd and no extra descriptor is
//! left in the supervisor, and its memory returns near its baseline.
//!
//! All sessions use the changing peer (a clock that ticks every second), so a live session always has
//! frames to receive. The victim's session is replaced by a fresh one, so 30 stay open throughout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guacr_tests::peers::{self, VncPeer};
use guacr_tests::{GuacClient, GuacrProcess, Signal};

const SESSIONS: usize = 30;
const EVENTS: usize = 100;
const STORM: Duration = Duration::from_secs(60);
const SEED: u64 = 0x6775_6163_7221_0008;
/// Seconds without a heartbeat before guacr kills a worker (the test's setting).
const WORKER_TIMEOUT_S: u64 = 2;
/// Every session untouched during a window this long must receive at least one frame in it. The clock
/// ticks every second; the margin absorbs the full-screen first frames of replacement sessions, which
/// this 2-core machine encodes and decodes (supervisor, workers, x11vnc and the test client) meanwhile.
const WINDOW: Duration = Duration::from_secs(10);

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Slot {
    client: Arc<GuacClient>,
    pid: u32,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// `(RssAnon, RssShmem)` in KiB.
fn rss_parts(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("RssShmem:"))
}

/// Shared-memory regions still mapped by the supervisor.
fn memfd_mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:guacr-frames"))
        .count()
}

fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect()
}

/// Children of `parent` in state Z.
fn zombies(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else { continue };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.len() > 1 && fields[0] == "Z" && fields[1].parse::<u32>().ok() == Some(parent) {
            out.push(pid);
        }
    }
    out
}

async fn open(guacr: &GuacrProcess, peer: &VncPeer, taken: &[u32]) -> Slot {
    let mut client = GuacClient::connect(guacr.addr()).await.expect("connect");
    client.handshake("vnc", &peer.vnc_params(), 1024, 768).await.expect("handshake");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = guacr.worker_pids().into_iter().find(|p| !taken.contains(p)) {
            break pid;
        }
        assert!(Instant::now() < deadline, "no worker for a new session; log:\n{}", guacr.log_tail(30));
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    Slot { client: Arc::new(client), pid }
}

async fn wait_first_frames(slots: &[Slot]) {
    for slot in slots {
        slot.client.wait_frames(1, Duration::from_secs(60)).await.expect("first frame");
    }
}

async fn wait_no_workers(guacr: &GuacrProcess) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !guacr.worker_pids().is_empty() {
        assert!(Instant::now() < deadline, "workers left: {:?}", guacr.worker_pids());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn close_all(guacr: &GuacrProcess, slots: Vec<Slot>) {
    for slot in &slots {
        let _ = slot.client.disconnect().await;
    }
    drop(slots);
    wait_no_workers(guacr).await;
}

#[derive(Debug)]
struct Hit {
    signal: Signal,
    latency: Duration,
    status: u32,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_storm_hurts_only_the_victims() {
    let peer = peers::changing();
    peer.require_up();
    let mut guacr = GuacrProcess::builder()
        .log_level("info")
        .arg("--worker-timeout")
        .arg(WORKER_TIMEOUT_S.to_string())
        .start()
        .expect("starting guacr");
    let supervisor = guacr.pid();
    let idle_rss = rss_kib(supervisor);
    let idle_fds = fd_targets(supervisor).len();

    // Warm-up round: allocator arenas, encoder threads and buffers reach their working size.
    let mut slots = Vec::new();
    for _ in 0..SESSIONS {
        let taken: Vec<u32> = slots.iter().map(|s: &Slot| s.pid).collect();
        slots.push(open(&guacr, &peer, &taken).await);
    }
    let warm_up = Instant::now();
    wait_first_frames(&slots).await;
    let peak_rss = rss_kib(supervisor);
    eprintln!("30 sessions showed their first frame {:?} after the last one opened", warm_up.elapsed());
    close_all(&guacr, slots).await;
    let baseline_rss = rss_kib(supervisor);

    let mut slots = Vec::new();
    for _ in 0..SESSIONS {
        let taken: Vec<u32> = slots.iter().map(|s: &Slot| s.pid).collect();
        slots.push(open(&guacr, &peer, &taken).await);
    }
    wait_first_frames(&slots).await;

    let mut rng = Rng(SEED);
    let start = Instant::now();
    let mut hits: Vec<Hit> = Vec::new();
    let mut starved: Vec<String> = Vec::new();
    let mut down = vec![false; SESSIONS];
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel::<(usize, Result<Hit, String>)>();
    // Frames per session at the start of the current window, for sessions up since then.
    let snapshot = |slots: &[Slot], down: &[bool]| -> BTreeMap<usize, (Arc<GuacClient>, u64)> {
        slots
            .iter()
            .enumerate()
            .filter(|(i, _)| !down[*i])
            .map(|(i, s)| (i, (s.client.clone(), s.client.frames())))
            .collect()
    };
    let mut window_start = Instant::now();
    let mut window = snapshot(&slots, &down);
    let mut checked_windows = 0;
    let mut event = 0;
    while event < EVENTS || down.iter().any(|d| *d) {
        // Victims whose error arrived: record it and replace the session, so 30 stay open.
        while let Ok((victim, hit)) = reports.try_recv() {
            hits.push(hit.unwrap_or_else(|e| panic!("{e}; log:\n{}", guacr.log_tail(40))));
            let taken: Vec<u32> = slots.iter().map(|s| s.pid).collect();
            slots[victim] = open(&guacr, &peer, &taken).await;
            down[victim] = false;
        }
        if window_start.elapsed() >= WINDOW {
            for (i, (client, frames)) in &window {
                let same = Arc::ptr_eq(client, &slots[*i].client) && !down[*i];
                if same && client.frames() <= *frames {
                    starved
                        .push(format!("session {i} got no frame for {WINDOW:?}, {:?} into the storm", start.elapsed()));
                }
            }
            checked_windows += 1;
            window_start = Instant::now();
            window = snapshot(&slots, &down);
        }
        let due = start + STORM * event as u32 / EVENTS as u32;
        if event >= EVENTS || Instant::now() < due {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // The next event: a random session that is up.
        let mut victim = rng.below(SESSIONS as u64) as usize;
        while down[victim] {
            victim = (victim + 1) % SESSIONS;
        }
        let signal = if rng.below(2) == 0 { Signal::SIGKILL } else { Signal::SIGSTOP };
        let pid = slots[victim].pid;
        let client = slots[victim].client.clone();
        down[victim] = true;
        window.remove(&victim);
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal) {
            panic!(
                "event {event}: {signal} to worker {pid} of session {victim}: {e}; workers {:?}; client error {:?}, \
                 closed {}; log:\n{}",
                guacr.worker_pids(),
                client.last_error(),
                client.is_closed(),
                guacr.log_tail(20)
            );
        }
        let sent = Instant::now();
        let report = report.clone();
        tokio::spawn(async move {
            let limit = Duration::from_secs(WORKER_TIMEOUT_S + 5);
            let waited = client.wait_until_named("error after the signal", limit, |s| s.last_error().is_some()).await;
            let hit = match (waited, client.last_error()) {
                (Ok(()), Some(error)) => {
                    let closed = client.wait_closed(Duration::from_secs(5)).await;
                    closed.map_err(|e| format!("{signal} to worker {pid}: not closed after the error: {e}")).map(|()| {
                        Hit { signal, latency: error.at.saturating_duration_since(sent), status: error.status }
                    })
                }
                (waited, _) => Err(format!("{signal} to worker {pid}: no error: {waited:?}")),
            };
            let _ = report.send((victim, hit));
        });
        event += 1;
        assert!(guacr.try_exit_status().is_none(), "guacr died; log:\n{}", guacr.log_tail(40));
    }
    let storm = start.elapsed();

    // Generous bounds that still prove the behaviour on a loaded 2-core machine: a SIGKILL is noticed at
    // once (typically milliseconds), a SIGSTOP when the heartbeat deadline passes.
    let bounds =
        [(Signal::SIGKILL, Duration::from_secs(2)), (Signal::SIGSTOP, Duration::from_secs(WORKER_TIMEOUT_S + 4))];
    for (kind, bound) in bounds {
        let mut latencies: Vec<Duration> = hits.iter().filter(|h| h.signal == kind).map(|h| h.latency).collect();
        latencies.sort();
        eprintln!(
            "{kind}: {} victims, error after p50 {:?}, p95 {:?}, max {:?}",
            latencies.len(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.95),
            latencies.last().unwrap()
        );
        assert!(latencies.len() >= 20, "the seed gives both kinds of event");
        assert!(*latencies.last().unwrap() < bound, "{kind}: an error took {:?}", latencies.last().unwrap());
    }
    assert!(hits.iter().all(|h| h.status == 515), "victims get 515: {hits:?}");
    eprintln!("storm: {EVENTS} events in {storm:?}; {checked_windows} windows of {WINDOW:?} checked for frames");
    assert!(starved.is_empty(), "unaffected sessions stalled:\n{}", starved.join("\n"));
    assert!(checked_windows >= 5);

    // Every untouched session is still alive and well.
    for slot in &slots {
        assert!(slot.client.last_error().is_none() && !slot.client.is_closed());
    }
    close_all(&guacr, slots).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert!(zombies(supervisor).is_empty(), "zombies: {:?}", zombies(supervisor));
    let fds = fd_targets(supervisor);
    assert!(!fds.iter().any(|t| t.contains("memfd:")), "leaked memfds: {fds:?}");
    assert!(fds.len() <= idle_fds + 2, "descriptors {} after, {idle_fds} before: {fds:?}", fds.len());
    let after_rss = rss_kib(supervisor);
    let (anon, shmem) = rss_parts(supervisor);
    eprintln!(
        "after the storm: RssAnon {anon} KiB, RssShmem {shmem} KiB, memfd mappings {}",
        memfd_mappings(supervisor)
    );
    assert_eq!(memfd_mappings(supervisor), 0, "shared-memory regions still mapped");
    eprintln!(
        "supervisor RSS: idle {idle_rss} KiB, 30 sessions {peak_rss} KiB, baseline after warm-up {baseline_rss} KiB, \
         after the storm {after_rss} KiB"
    );
    // The shared memory is all gone (above). The heap is what glibc keeps after freeing, which varies
    // from run to run (30-170 MiB after the warm-up round here; the storm's 100 replacement sessions, each
    // with its display planner's buffers, fragment it further: up to 75 MiB above the warm-up seen): the
    // bound allows that retention, while 100 sessions leaking a frame buffer each (>= 3 MiB) would exceed
    // it. Without a storm, 30 concurrent sessions' memory does return (25 MiB anonymous after closing).
    let reference = baseline_rss.max(64 * 1024);
    assert!(
        after_rss <= reference + 128 * 1024 && after_rss < peak_rss,
        "supervisor memory did not return near its baseline: {after_rss} KiB after, {baseline_rss} KiB after the \
         warm-up, {peak_rss} KiB with 30 sessions"
    );
    assert!(guacr.try_exit_status().is_none(), "guacr is still up");
}
