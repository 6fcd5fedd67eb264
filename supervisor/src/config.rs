//! Command line, compatible with guacd's flags (`-b -l -p -L -f`), plus guacr's own long options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "guacr",
    version,
    about = "guacr: a guacd-compatible Guacamole proxy that runs each session in its own sandboxed worker process",
    disable_version_flag = true,
    // A flag given twice takes its last value: guacd.conf's settings (-c) are placed first, so the
    // command line's own flags override them.
    args_override_self = true
)]
pub struct Config {
    /// Address to listen on (guacd's -b).
    #[arg(short = 'b', long = "bind", default_value = "127.0.0.1")]
    pub bind_host: String,
    /// Port to listen on (guacd's -l).
    #[arg(short = 'l', long = "listen", default_value_t = 4822)]
    pub bind_port: u16,
    /// Write the process id to this file (guacd's -p).
    #[arg(short = 'p', long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Log level: trace, debug, info, warning, error (guacd's -L).
    #[arg(short = 'L', long = "log-level", default_value = "info")]
    pub log_level: String,
    /// Stay in the foreground and log to stderr (guacd's -f). Without it guacr detaches like guacd.
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,
    /// Print the version and exit (guacd's -v).
    #[arg(short = 'v', long = "version")]
    pub print_version: bool,
    /// guacd.conf to read (guacd's -c): [server] bind_host/bind_port, [daemon] pid_file/log_level,
    /// [ssl] server_certificate/server_key. Command-line flags override it.
    #[arg(short = 'c', long = "guacd-conf", value_name = "FILE")]
    pub guacd_conf: Option<PathBuf>,
    /// TLS certificate chain (PEM) for the guacd-compatible TCP entry (guacd's -C); needs -K.
    #[arg(short = 'C', long = "tls-cert", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the TCP entry (guacd's -K); needs -C.
    #[arg(short = 'K', long = "tls-key", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// guacr's configuration file (TOML): the HTTP entry, token key, users and named connections.
    #[arg(long = "config", env = "GUACR_CONFIG", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Where the web client, the WebSocket tunnel and /metrics are served (HOST:PORT, or "off").
    /// Overrides `[http] bind` in the configuration file; the default is 127.0.0.1:8080.
    #[arg(long, env = "GUACR_HTTP_BIND", value_name = "ADDR")]
    pub http_bind: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Directory holding the guacr-worker-* binaries (default: next to guacr).
    #[arg(long, env = "GUACR_WORKER_DIR")]
    pub worker_dir: Option<PathBuf>,
    /// Largest remote display width a session may use (sizes the shared memory).
    #[arg(long, default_value_t = 3840)]
    pub max_width: u32,
    /// Largest remote display height a session may use.
    #[arg(long, default_value_t = 2160)]
    pub max_height: u32,
    /// Seconds without a heartbeat before a worker is declared hung and killed.
    #[arg(long, default_value_t = 5)]
    pub worker_timeout: u64,
    /// Address-space limit of each worker, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub worker_memory_mib: u64,
    /// User the workers run as when guacr runs as root (created by scripts/setup.sh). Workers never run
    /// as root.
    #[arg(long, env = "GUACR_WORKER_USER", default_value = "guacr-worker")]
    pub worker_user: String,
    /// CPU share of each session's worker in percent of one core (cgroup v2 `cpu.max`, where available).
    #[arg(long, default_value_t = 100)]
    pub worker_cpu_percent: u32,
    /// Most client connections open at once, TCP entry and WebSocket tunnels together; more are answered
    /// 513 (server busy). 0: no limit.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Most client connections open at once from one address (0: no limit; guacamole-client connects
    /// from a single address, so the default is off).
    #[arg(long, default_value_t = 0)]
    pub max_connections_per_address: usize,
    /// Bytes of output queued for one client before its session stops taking frames from the worker
    /// (which then coalesces its changes). A client that takes nothing for 15 s is dropped either way.
    #[arg(long, default_value_t = crate::client::DEFAULT_QUEUE_BYTES)]
    pub client_queue_bytes: usize,
    /// Display encoding: `planned` (tiles, hashes, copy/scroll detection, PNG/JPEG/WebP per region) or
    /// `naive` (every damaged rectangle as one PNG: the baseline guacr-bench compares against).
    #[arg(long, value_enum, env = "GUACR_DISPLAY_MODE", default_value_t = DisplayMode::Planned)]
    pub display_mode: DisplayMode,
    /// Threads of the process-wide encoder pool that encodes every session's frames (fair across
    /// sessions, bounded queue). Default: one per available core.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub encoder_threads: Option<u16>,
    /// Time slice, in microseconds, that each encoder thread asks of the kernel's fair scheduler (Linux
    /// 6.12 and later; older kernels ignore it). A short slice lets a woken encoder thread preempt a busy
    /// core's running task at once instead of after that task's slice, which keeps the handoff from a
    /// published frame to its encode short when the cores are busy; the threads' share of the CPU does not
    /// change. Much shorter than an encode (100) splits encodes on busy cores and lowered the frame rate at
    /// 10 sessions in guacr-bench (BENCHMARKS.md). 0 leaves the kernel's default.
    #[arg(long, env = "GUACR_ENCODER_SLICE_US", value_parser = clap::value_parser!(u32).range(0..=100_000), default_value_t = 300)]
    pub encoder_slice_us: u32,
    /// A session whose recording (`recording-path`) cannot be opened or stops (disk full, a disk that
    /// does not keep up) ends with `error` 512, instead of going on unrecorded as in guacd.
    #[arg(long)]
    pub recording_required: bool,
}

/// How frames are encoded (`--display-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DisplayMode {
    Planned,
    Naive,
}

/// guacr's subcommands; without one, guacr serves.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print a signed connection token for the WebSocket entry (key from --config or GUACR_TOKEN_KEY).
    Token(crate::http::TokenArgs),
}

impl Config {
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        let host = if self.bind_host.contains(':') { format!("[{}]", self.bind_host) } else { self.bind_host.clone() };
        use std::net::ToSocketAddrs;
        format!("{host}:{}", self.bind_port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve bind address {}", self.bind_host))
    }

    /// guacd's level names mapped onto tracing's.
    pub fn tracing_level(&self) -> &'static str {
        match self.log_level.to_ascii_lowercase().as_str() {
            "trace" => "trace",
            "debug" => "debug",
            "warning" | "warn" => "warn",
            "error" => "error",
            _ => "info",
        }
    }

    pub fn worker_path(&self, binary: &str) -> PathBuf {
        let dir = self.worker_dir.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("."))
        });
        dir.join(binary)
    }

    pub fn worker_timeout(&self) -> Duration {
        Duration::from_secs(self.worker_timeout.max(1))
    }
}
