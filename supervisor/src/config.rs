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
    disable_version_flag = true
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
