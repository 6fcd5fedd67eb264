//! What the runner measures around a workload: CPU and PSS from /proc, the client's frame and byte
//! counters, image bytes by format from its instruction log; medians, percentiles and the tables.

use std::collections::BTreeMap;

use guacr_tests::GuacClient;
use serde::Serialize;

/// CPU time (utime + stime, seconds) of a process from /proc/PID/stat; None if it is gone.
pub fn cpu_seconds(pid: u32, tick: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // Fields after "comm)" start at field 3 (state); utime is 14, stime 15.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / tick)
}

/// PSS of a process in KiB from /proc/PID/smaps_rollup.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Per-session counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snap {
    pub frames: u64,
    pub bytes: u64,
    pub log_len: usize,
}

pub fn snap(c: &GuacClient) -> Snap {
    let s = c.state();
    Snap { frames: s.frames, bytes: s.bytes_received, log_len: s.log.len() }
}

/// A counting client's totals so far (it keeps no log: formats are its own counters).
pub fn snap_counts(c: &crate::counting::CountingClient) -> (Snap, crate::counting::Counts) {
    let counts = c.counts();
    (Snap { frames: counts.frames, bytes: counts.bytes, log_len: 0 }, counts)
}

/// Adds a counting client's formats between two snapshots.
pub fn formats_between(a: &crate::counting::Counts, b: &crate::counting::Counts, into: &mut Formats) {
    for (mime, (n, bytes)) in &b.images {
        let (n0, bytes0) = a.images.get(mime).copied().unwrap_or((0, 0));
        let e = into.images.entry(mime.clone()).or_default();
        e.0 += n - n0;
        e.1 += bytes - bytes0;
    }
    into.copy += b.copy - a.copy;
    into.cfill += b.cfill - a.cfill;
}

/// Image streams and their blob bytes (decoded size) by mimetype, plus drawing instruction counts,
/// from the client's log between two snapshots.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Formats {
    /// mimetype -> (images, decoded bytes)
    pub images: BTreeMap<String, (u64, u64)>,
    pub copy: u64,
    pub cfill: u64,
    pub log_overflow: bool,
}

pub fn formats(c: &GuacClient, from: usize, into: &mut Formats) {
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

pub fn median(v: &[f64]) -> f64 {
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
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

pub fn kib(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

/// The 1-minute load average (other processes compete for the same cores; recorded with the figures).
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// One repetition of one workload at one concurrency in one display mode.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub window_s: f64,
    /// Frames (`sync`) per second of each session.
    pub session_fps: Vec<f64>,
    pub frames_total: u64,
    pub bytes_total: u64,
    pub formats: Formats,
    /// `select` to first `sync`, per session, ms.
    pub first_frame_ms: Vec<f64>,
    pub supervisor_cpu_s: f64,
    pub workers_cpu_s: f64,
    /// The bench process itself (client decoding competes for the same cores).
    pub bench_cpu_s: f64,
    pub supervisor_pss_kib: Option<u64>,
    pub worker_pss_kib: Vec<u64>,
    /// Latency samples (ms) by probe name.
    pub latency_ms: BTreeMap<String, Vec<f64>>,
    /// Probes that did not arrive within their timeout, by probe name.
    pub latency_missed: BTreeMap<String, usize>,
    pub workers: usize,
    /// 1-minute load average at the end of the window.
    pub loadavg: f64,
    /// guacr's `guacr_frame_handoff_seconds` and `guacr_publish_to_encode_seconds` at the end (whole run).
    pub handoff_hist: Vec<(f64, u64)>,
    pub publish_hist: Vec<(f64, u64)>,
    /// guacr's encoder threads during the window (`guacr_encode_seconds`): time spent encoding, and encodes
    /// (frames for the users in step, refreshes, dumps; one per frame while everybody is in step).
    pub encode_s: f64,
    pub encodes: u64,
}

/// Percentiles of one probe.
#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub samples: usize,
    pub missed: usize,
}

/// Medians over the repetitions (latency: percentiles over all samples pooled).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub mode: String,
    pub workload: String,
    pub sessions: usize,
    pub repeats: usize,
    /// Median over sessions, then over repetitions.
    pub fps_per_session: f64,
    /// Slowest session's frame rate (median over repetitions).
    pub fps_min_session: f64,
    pub bytes_per_s: f64,
    pub bytes_per_frame: f64,
    /// mimetype -> image bytes per second; images per second.
    pub image_bytes_per_s: BTreeMap<String, f64>,
    pub images_per_s: BTreeMap<String, f64>,
    pub copy_per_s: f64,
    pub cfill_per_s: f64,
    pub first_frame_ms_p50: f64,
    pub supervisor_cpu_ms_per_frame: f64,
    pub worker_cpu_ms_per_frame: f64,
    /// Encoder thread time per encode, ms: the display pipeline alone, without the session loop, measured
    /// by the clock rather than in `/proc`'s 10-ms ticks (preemption during an encode counts).
    pub encode_ms_per_encode: f64,
    pub supervisor_cpu_pct: f64,
    pub workers_cpu_pct: f64,
    pub bench_cpu_pct: f64,
    pub pss_per_session_mib: f64,
    pub worker_pss_mib: f64,
    pub supervisor_pss_mib: f64,
    pub latency: BTreeMap<String, LatencySummary>,
    pub loadavg: f64,
    /// Acquire-to-encode handoff p99 (bucket upper bound, ms) and the frames observed.
    pub handoff_ms_p99: f64,
    pub handoff_frames: u64,
    /// Share of those frames, in %, whose handoff took at most 1 ms (the target is p99 ≤ 1 ms).
    pub handoff_within_1ms_pct: f64,
    /// Publish message to encode start, p50 and p99 (bucket upper bounds, ms): includes the scheduler.
    pub publish_to_encode_ms_p50: f64,
    pub publish_to_encode_ms_p99: f64,
}

pub fn summarise(mode: &str, workload: &str, n: usize, s: &[Sample]) -> Summary {
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
    let mut probes: Vec<String> =
        s.iter().flat_map(|x| x.latency_ms.keys().chain(x.latency_missed.keys()).cloned()).collect();
    probes.sort();
    probes.dedup();
    let latency = probes
        .into_iter()
        .map(|p| {
            let lat: Vec<f64> = s.iter().flat_map(|x| x.latency_ms.get(&p).into_iter().flatten().copied()).collect();
            let missed = s.iter().map(|x| x.latency_missed.get(&p).copied().unwrap_or(0)).sum();
            let sum = LatencySummary {
                p50_ms: percentile(&lat, 50.0),
                p99_ms: percentile(&lat, 99.0),
                samples: lat.len(),
                missed,
            };
            (p, sum)
        })
        .collect();
    let first: Vec<f64> = s.iter().flat_map(|x| x.first_frame_ms.iter().copied()).collect();
    let (mut handoff, mut publish) = (Vec::new(), Vec::new());
    for x in s {
        add_histograms(&mut handoff, &x.handoff_hist);
        add_histograms(&mut publish, &x.publish_hist);
    }
    let worker_pss = per(&|x| median(&x.worker_pss_kib.iter().map(|k| *k as f64).collect::<Vec<_>>()) / 1024.0);
    let sup_pss = per(&|x| x.supervisor_pss_kib.map_or(f64::NAN, |k| k as f64 / 1024.0));
    Summary {
        mode: mode.to_owned(),
        workload: workload.to_owned(),
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
        encode_ms_per_encode: per(&|x| if x.encodes == 0 { f64::NAN } else { x.encode_s * 1e3 / x.encodes as f64 }),
        supervisor_cpu_pct: per(&|x| x.supervisor_cpu_s * 100.0 / x.window_s),
        workers_cpu_pct: per(&|x| x.workers_cpu_s * 100.0 / x.window_s),
        bench_cpu_pct: per(&|x| x.bench_cpu_s * 100.0 / x.window_s),
        pss_per_session_mib: worker_pss + sup_pss / n as f64,
        worker_pss_mib: worker_pss,
        supervisor_pss_mib: sup_pss,
        latency,
        loadavg: per(&|x| x.loadavg),
        handoff_ms_p99: histogram_percentile(&handoff, 99.0).0 * 1e3,
        handoff_frames: histogram_percentile(&handoff, 99.0).1,
        handoff_within_1ms_pct: histogram_share_within(&handoff, 0.001),
        publish_to_encode_ms_p50: histogram_percentile(&publish, 50.0).0 * 1e3,
        publish_to_encode_ms_p99: histogram_percentile(&publish, 99.0).0 * 1e3,
    }
}

/// The full figures, one row per mode, workload and concurrency.
pub fn table(sums: &[Summary]) -> String {
    let mut t = String::new();
    t.push_str(
        "| mode | workload | sessions | fps/session (min) | wire bytes/s | bytes/frame | image bytes/s by format | \
         select→first frame p50 | supervisor CPU ms/frame | worker CPU ms/frame | encode ms/encode | CPU % sup / workers / bench | \
         PSS/session (worker + sup/n) | latency p50 / p99 (n) | handoff p99, ≤ 1 ms (publish→encode p50/p99) | load |\n",
    );
    t.push_str("|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|\n");
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
        let lat: Vec<String> = s
            .latency
            .iter()
            .map(|(p, l)| {
                let missed = if l.missed > 0 { format!(", {} missed", l.missed) } else { String::new() };
                // Tenths: the input-to-pixel target (p50 ≤ 10 ms) is decided by fractions of a millisecond.
                format!("{p} {:.1} / {:.1} ms ({}{missed})", l.p50_ms, l.p99_ms, l.samples)
            })
            .collect();
        t.push_str(&format!(
            "| {} | {} | {} | {:.1} ({:.1}) | {} | {} | {} | {:.0} ms | {:.2} | {:.2} | {} | {:.0} / {:.0} / {:.0} | {:.1} MiB ({:.1} + {:.1}/{}) | {} | ≤{} ms, {:.1} % ({}/{} ms) | {:.1} |\n",
            s.mode,
            s.workload,
            s.sessions,
            s.fps_per_session,
            s.fps_min_session,
            kib(s.bytes_per_s),
            kib(s.bytes_per_frame),
            if fmts.is_empty() { "-".into() } else { fmts },
            s.first_frame_ms_p50,
            s.supervisor_cpu_ms_per_frame,
            s.worker_cpu_ms_per_frame,
            if s.encode_ms_per_encode.is_finite() { format!("{:.3}", s.encode_ms_per_encode) } else { "-".into() },
            s.supervisor_cpu_pct,
            s.workers_cpu_pct,
            s.bench_cpu_pct,
            s.pss_per_session_mib,
            s.worker_pss_mib,
            s.supervisor_pss_mib,
            s.sessions,
            if lat.is_empty() { "-".into() } else { lat.join("; ") },
            s.handoff_ms_p99,
            s.handoff_within_1ms_pct,
            s.publish_to_encode_ms_p50,
            s.publish_to_encode_ms_p99,
            s.loadavg,
        ));
    }
    t
}

/// CPU per session: (supervisor + workers) / sessions, in % of one core with two decimals (the idle
/// target is 0.5 %; `/proc` counts 10-ms ticks, so use windows of 20 s or more for figures that small).
pub fn cpu_table(sums: &[Summary]) -> String {
    let mut t = String::from(
        "| mode | workload | sessions | CPU per session, % of one core (supervisor + workers) / n | supervisor % | workers % |\n",
    );
    t.push_str("|---|---|---:|---:|---:|---:|\n");
    for s in sums {
        t.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} |\n",
            s.mode,
            s.workload,
            s.sessions,
            (s.supervisor_cpu_pct + s.workers_cpu_pct) / s.sessions as f64,
            s.supervisor_cpu_pct,
            s.workers_cpu_pct,
        ));
    }
    t
}

/// Ratios of `mode` against `base` (measured in the same run) per workload and concurrency.
pub fn ratio_table(sums: &[Summary], mode: &str, base: &str) -> String {
    let mut t = format!(
        "| workload | sessions | CPU/frame sup+worker {mode}/{base} | supervisor CPU/frame | encode time/encode | wire bytes/s | bytes/frame | fps | marker p50 |\n"
    );
    t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let r =
        |a: f64, b: f64| if b > 0.0 && a.is_finite() && b.is_finite() { format!("{:.2}×", a / b) } else { "-".into() };
    for s in sums.iter().filter(|s| s.mode == mode) {
        let Some(b) = sums.iter().find(|b| b.mode == base && b.workload == s.workload && b.sessions == s.sessions)
        else {
            continue;
        };
        let lat = |x: &Summary| x.latency.get("marker").map_or(f64::NAN, |l| l.p50_ms);
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.workload,
            s.sessions,
            r(
                s.supervisor_cpu_ms_per_frame + s.worker_cpu_ms_per_frame,
                b.supervisor_cpu_ms_per_frame + b.worker_cpu_ms_per_frame
            ),
            r(s.supervisor_cpu_ms_per_frame, b.supervisor_cpu_ms_per_frame),
            r(s.encode_ms_per_encode, b.encode_ms_per_encode),
            r(s.bytes_per_s, b.bytes_per_s),
            r(s.bytes_per_frame, b.bytes_per_frame),
            r(s.fps_per_session, b.fps_per_session),
            r(lat(s), lat(b)),
        ));
    }
    t
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
    fn own_cpu_and_pss_are_readable() {
        let me = std::process::id();
        assert!(cpu_seconds(me, 100.0).is_some());
        assert!(pss_kib(me).is_some_and(|k| k > 0));
        assert!(loadavg() >= 0.0);
    }

    #[test]
    fn ratios_pair_rows_of_the_same_run() {
        let mk = |mode: &str, bytes: f64| {
            let mut s =
                summarise(mode, "a scroll", 1, &[Sample { window_s: 1.0, frames_total: 10, ..Sample::default() }]);
            s.bytes_per_s = bytes;
            s
        };
        let t = ratio_table(&[mk("planned", 50.0), mk("naive", 100.0)], "planned", "naive");
        assert!(t.contains("| a scroll | 1 |"), "{t}");
        assert!(t.contains("0.50×"), "{t}");
    }
}

/// guacr's `/metrics` (Prometheus text) over plain HTTP/1.0.
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await?;
    let mut body = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_string(&mut body)).await??;
    Ok(body)
}

/// The value of an unlabelled sample `name` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The cumulative buckets `(upper bound in s, count)` of histogram `name` in Prometheus text.
pub fn histogram(text: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// Sums cumulative histograms with the same buckets.
pub fn add_histograms(acc: &mut Vec<(f64, u64)>, h: &[(f64, u64)]) {
    if acc.is_empty() {
        acc.extend_from_slice(h);
    } else {
        for (a, b) in acc.iter_mut().zip(h) {
            a.1 += b.1;
        }
    }
}

/// The smallest bucket bound holding at least `p` percent of the observations (an upper bound of the
/// percentile), and the observation count.
pub fn histogram_percentile(h: &[(f64, u64)], p: f64) -> (f64, u64) {
    let total = h.last().map_or(0, |b| b.1);
    if total == 0 {
        return (f64::NAN, 0);
    }
    let want = (p / 100.0 * total as f64).ceil() as u64;
    (h.iter().find(|b| b.1 >= want).map_or(f64::INFINITY, |b| b.0), total)
}

/// Share, in %, of a cumulative histogram's observations in buckets up to `le` (a bucket bound).
pub fn histogram_share_within(h: &[(f64, u64)], le: f64) -> f64 {
    let total = h.last().map_or(0, |b| b.1);
    if total == 0 {
        return f64::NAN;
    }
    let within = h.iter().take_while(|b| b.0 <= le).last().map_or(0, |b| b.1);
    within as f64 * 100.0 / total as f64
}

#[cfg(test)]
mod histogram_tests {
    use super::*;

    #[test]
    fn percentile_from_buckets() {
        let text = "x_bucket{le=\"0.001\"} 98\nx_bucket{le=\"0.0025\"} 100\nx_bucket{le=\"+Inf\"} 100\nx_count 100\n";
        let h = histogram(text, "x");
        assert_eq!(h.len(), 3);
        assert_eq!(histogram_percentile(&h, 50.0), (0.001, 100));
        assert_eq!(histogram_percentile(&h, 99.0), (0.0025, 100));
        assert_eq!(histogram_share_within(&h, 0.001), 98.0);
        assert_eq!(histogram_share_within(&h, 0.0005), 0.0);
        assert_eq!(histogram_share_within(&h, 0.0025), 100.0);
        let mut acc = Vec::new();
        add_histograms(&mut acc, &h);
        add_histograms(&mut acc, &h);
        assert_eq!(acc[2].1, 200);
    }

    #[test]
    fn plain_values_by_exact_name() {
        let text = "# TYPE x histogram\nx_bucket{le=\"0.001\"} 3\nx_sum 0.0125\nx_count 3\nx_count_other 9\n";
        assert_eq!(metric_value(text, "x_sum"), Some(0.0125));
        assert_eq!(metric_value(text, "x_count"), Some(3.0));
        assert_eq!(metric_value(text, "x"), None);
    }
}
