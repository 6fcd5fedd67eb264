//! Process-wide counters, served by the HTTP entry as Prometheus text (`/metrics`).
//!
//! Plain atomics and one small mutex-guarded map (sessions by protocol); nothing here allocates per frame.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a session's worker went away (the `cause` label of `guacr_worker_exits_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// The session ended without an error (the user left or the remote desktop closed); asked to shut down.
    SessionEnd,
    /// The worker reported a failure of the remote side (bad password, unreachable host, ...).
    RemoteError,
    /// The worker exited or crashed on its own.
    Crashed,
    /// No heartbeat: killed.
    Hung,
    /// It broke the control or shared-memory contract: killed.
    Breach,
    /// The client broke the protocol or went silent: the worker was killed with the session.
    ClientError,
    /// The supervisor failed (encoder, start-up).
    ServerError,
}

impl WorkerExit {
    const ALL: [WorkerExit; 7] = [
        WorkerExit::SessionEnd,
        WorkerExit::RemoteError,
        WorkerExit::Crashed,
        WorkerExit::Hung,
        WorkerExit::Breach,
        WorkerExit::ClientError,
        WorkerExit::ServerError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WorkerExit::SessionEnd => "session_end",
            WorkerExit::RemoteError => "remote_error",
            WorkerExit::Crashed => "crashed",
            WorkerExit::Hung => "hung",
            WorkerExit::Breach => "breach",
            WorkerExit::ClientError => "client_error",
            WorkerExit::ServerError => "server_error",
        }
    }
}

/// Upper bounds (seconds) of the encode-time histogram buckets.
const ENCODE_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A Prometheus histogram of durations with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; ENCODE_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let slot = ENCODE_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(ENCODE_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (i, bound) in ENCODE_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[ENCODE_BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_nanos.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {}", self.count.load(Relaxed));
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct ProtocolSessions {
    active: u64,
    total: u64,
}

/// Counters shared by every session and entry point.
#[derive(Debug, Default)]
pub struct Metrics {
    sessions: Mutex<BTreeMap<&'static str, ProtocolSessions>>,
    /// Frames sent to clients (one per `sync`).
    pub frames: AtomicU64,
    /// Bytes written to clients, all entry points.
    pub bytes_sent: Arc<AtomicU64>,
    /// Bytes read from clients, all entry points.
    pub bytes_received: Arc<AtomicU64>,
    /// Time to turn one published frame into instructions.
    pub encode_seconds: Arc<Histogram>,
    /// Handoff through shared memory: from acquiring a published frame to the encoder thread starting on
    /// its pixels (waiting for a pool permit and a blocking thread included).
    pub handoff_seconds: Arc<Histogram>,
    /// From the worker's `Published` message arriving to the encoder starting: the handoff plus the frame
    /// scheduler's deliberate coalescing (at least 10 ms between frames, waiting for slow users).
    pub publish_to_encode_seconds: Arc<Histogram>,
    worker_exits: [AtomicU64; WorkerExit::ALL.len()],
    /// WebSocket tunnel requests refused before anything was spawned, by status code.
    tunnel_refusals: Mutex<BTreeMap<u16, u64>>,
}

/// Counts a session as active until dropped.
pub struct ActiveSession<'a> {
    metrics: &'a Metrics,
    protocol: &'static str,
}

impl Drop for ActiveSession<'_> {
    fn drop(&mut self) {
        let mut sessions = self.metrics.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = sessions.get_mut(self.protocol) {
            entry.active = entry.active.saturating_sub(1);
        }
    }
}

impl Metrics {
    pub fn session_started(&self, protocol: &'static str) -> ActiveSession<'_> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let entry = sessions.entry(protocol).or_default();
        entry.active += 1;
        entry.total += 1;
        ActiveSession { metrics: self, protocol }
    }

    /// Makes `protocol`'s series appear (at zero) before its first session.
    pub fn declare_protocol(&self, protocol: &'static str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).entry(protocol).or_default();
    }

    pub fn worker_exited(&self, cause: WorkerExit) {
        if let Some(i) = WorkerExit::ALL.iter().position(|c| *c == cause) {
            self.worker_exits[i].fetch_add(1, Relaxed);
        }
    }

    pub fn tunnel_refused(&self, status: u16) {
        *self.tunnel_refusals.lock().unwrap_or_else(|e| e.into_inner()).entry(status).or_default() += 1;
    }

    /// Sessions currently connected, all protocols.
    #[cfg(test)]
    pub fn active_sessions(&self) -> u64 {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).values().map(|s| s.active).sum()
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out.push_str("# HELP guacr_sessions_active Sessions currently connected, by protocol.\n");
        out.push_str("# TYPE guacr_sessions_active gauge\n");
        for (protocol, s) in &sessions {
            let _ = writeln!(out, "guacr_sessions_active{{protocol=\"{protocol}\"}} {}", s.active);
        }
        out.push_str("# HELP guacr_sessions_total Sessions started since guacr started, by protocol.\n");
        out.push_str("# TYPE guacr_sessions_total counter\n");
        for (protocol, s) in &sessions {
            let _ = writeln!(out, "guacr_sessions_total{{protocol=\"{protocol}\"}} {}", s.total);
        }
        counter(&mut out, "guacr_frames_total", "Frames sent to clients.", self.frames.load(Relaxed));
        counter(&mut out, "guacr_client_sent_bytes_total", "Bytes sent to clients.", self.bytes_sent.load(Relaxed));
        counter(
            &mut out,
            "guacr_client_received_bytes_total",
            "Bytes received from clients.",
            self.bytes_received.load(Relaxed),
        );
        out.push_str("# HELP guacr_encode_seconds Time to encode one frame into Guacamole instructions.\n");
        out.push_str("# TYPE guacr_encode_seconds histogram\n");
        self.encode_seconds.render(&mut out, "guacr_encode_seconds");
        out.push_str(
            "# HELP guacr_frame_handoff_seconds From acquiring a frame in shared memory to its encode starting.\n",
        );
        out.push_str("# TYPE guacr_frame_handoff_seconds histogram\n");
        self.handoff_seconds.render(&mut out, "guacr_frame_handoff_seconds");
        out.push_str("# HELP guacr_publish_to_encode_seconds From a worker's publish message to the encode starting (scheduling included).\n");
        out.push_str("# TYPE guacr_publish_to_encode_seconds histogram\n");
        self.publish_to_encode_seconds.render(&mut out, "guacr_publish_to_encode_seconds");
        out.push_str("# HELP guacr_worker_exits_total Session workers gone, by cause.\n");
        out.push_str("# TYPE guacr_worker_exits_total counter\n");
        for (cause, count) in WorkerExit::ALL.iter().zip(&self.worker_exits) {
            let _ = writeln!(out, "guacr_worker_exits_total{{cause=\"{}\"}} {}", cause.label(), count.load(Relaxed));
        }
        out.push_str("# HELP guacr_tunnel_refusals_total WebSocket tunnel requests refused before a worker started, by status.\n");
        out.push_str("# TYPE guacr_tunnel_refusals_total counter\n");
        for (status, count) in self.tunnel_refusals.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "guacr_tunnel_refusals_total{{status=\"{status}\"}} {count}");
        }
        out
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sessions_histogram_and_exits() {
        let metrics = Metrics::default();
        {
            let _a = metrics.session_started("vnc");
            let _b = metrics.session_started("vnc");
            assert_eq!(metrics.active_sessions(), 2);
        }
        let _c = metrics.session_started("vnc");
        metrics.encode_seconds.observe(Duration::from_micros(700));
        metrics.encode_seconds.observe(Duration::from_secs(10));
        metrics.worker_exited(WorkerExit::Crashed);
        metrics.tunnel_refused(769);
        let text = metrics.render();
        assert!(text.contains("guacr_sessions_active{protocol=\"vnc\"} 1\n"), "{text}");
        assert!(text.contains("guacr_sessions_total{protocol=\"vnc\"} 3\n"), "{text}");
        assert!(text.contains("guacr_encode_seconds_bucket{le=\"0.0005\"} 0\n"), "{text}");
        assert!(text.contains("guacr_encode_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("guacr_encode_seconds_bucket{le=\"2.5\"} 1\n"), "{text}");
        assert!(text.contains("guacr_encode_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("guacr_encode_seconds_count 2\n"), "{text}");
        metrics.handoff_seconds.observe(Duration::from_micros(300));
        let text = metrics.render();
        assert!(text.contains("guacr_frame_handoff_seconds_bucket{le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("guacr_publish_to_encode_seconds_count 0\n"), "{text}");
        assert!(text.contains("guacr_worker_exits_total{cause=\"crashed\"} 1\n"), "{text}");
        assert!(text.contains("guacr_worker_exits_total{cause=\"hung\"} 0\n"), "{text}");
        assert!(text.contains("guacr_tunnel_refusals_total{status=\"769\"} 1\n"), "{text}");
        // Every sample line is `name{labels} value` or `name value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
