//! guacr: a guacd-compatible Guacamole proxy. Accepts clients on TCP (guacd's port 4822 by default),
//! runs each session in its own exec'd, locked-down worker process and encodes the frames that worker
//! publishes in shared memory.

mod client;
mod config;
mod display;
mod encoder_pool;
mod guacd_conf;
mod http;
mod jail;
mod limits;
mod metrics;
mod protocols;
mod recording;
mod session;
mod sharing;
mod streams;
mod tls;
mod typescript;
mod worker;

use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::config::Config;
use crate::session::Shared;

fn main() -> std::process::ExitCode {
    // Descriptors inherited from whoever started us must never reach a worker.
    if let Err(e) = shm_proto::close_on_exec_above_stdio() {
        eprintln!("guacr: cannot mark inherited descriptors close-on-exec: {e}");
        return std::process::ExitCode::FAILURE;
    }
    // guacd's -c FILE: its settings become flags placed before the command line's own.
    let args = match guacd_conf::expand_args(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("guacr: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = Config::parse_from(args);
    if let Some(config::Command::Token(args)) = &config.command {
        return http::print_token(&config, args);
    }
    if config.print_version {
        println!("guacr {}", env!("CARGO_PKG_VERSION"));
        return std::process::ExitCode::SUCCESS;
    }
    init_logging(config.tracing_level());
    match run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "guacr failed");
            eprintln!("guacr: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GUACR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},hyper=info")));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn run(config: Config) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    // Bind before detaching so a busy port is reported to the person who started us.
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    std_listener.set_nonblocking(true)?;
    // The HTTP entry (web client, WebSocket tunnel, metrics): configuration checked and port bound now too.
    let web = http::prepare(&config)?;
    let bound = std_listener.local_addr()?;
    if !config.foreground {
        // Like guacd without -f: detach from the terminal (keeping stderr for the log).
        nix::unistd::daemon(true, true).map_err(|e| anyhow::anyhow!("cannot detach: {e}"))?;
    }
    if let Some(pid_file) = &config.pid_file {
        std::fs::write(pid_file, format!("{}\n", std::process::id()))
            .map_err(|e| anyhow::anyhow!("cannot write pid file {}: {e}", pid_file.display()))?;
    }
    jail::init(
        &config.worker_user,
        jail::Limits {
            memory_bytes: config.worker_memory_mib.saturating_mul(1024 * 1024),
            cpu_percent: config.worker_cpu_percent,
        },
    )?;
    if let Some(worker_dir) = config.worker_path("guacr-worker-vnc").parent() {
        jail::check_reachable(worker_dir)?;
    }
    let threads =
        config.encoder_threads.map_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()), usize::from);
    // Room for a few queued frames per thread; a session has at most one encode in flight, so with more
    // sessions than that, sessions wait their turn for a place (backpressure, like a slow client).
    let slice = (config.encoder_slice_us > 0).then(|| std::time::Duration::from_micros(config.encoder_slice_us.into()));
    let encoders = encoder_pool::EncoderPool::with_slice(threads, threads * 16, slice)
        .map_err(|e| anyhow::anyhow!("cannot start the encoder threads: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let admission = limits::ConnectionLimits::new(config.max_connections, config.max_connections_per_address);
    let shared = Arc::new(Shared {
        config,
        encoders,
        metrics: metrics::Metrics::default(),
        sharing: sharing::Registry::default(),
    });
    runtime.block_on(async move {
        let listener = TcpListener::from_std(std_listener)?;
        info!(address = %bound, encoder_threads = threads, tls = tls.is_some(), "Guacamole proxy daemon (guacr) listening");
        // The WebSocket tunnel takes its places under the same limits as this entry.
        http::start(web, shared.clone(), admission.clone())?;
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => match admission.admit(peer.ip()) {
                        Some(place) => {
                            let shared = shared.clone();
                            let tls = tls.clone();
                            tokio::spawn(async move {
                                match tls {
                                    Some(acceptor) => tls::serve(acceptor, stream, peer, shared).await,
                                    None => session::handle_connection(stream, peer, shared).await,
                                }
                                drop(place);
                            });
                        }
                        None => {
                            tracing::warn!(%peer, "Connection limit reached; answering 513");
                            tokio::spawn(limits::refuse_busy(stream));
                        }
                    },
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        error!(error = %e, "Accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
            }
        }
        info!("Shutting down; sessions end and their workers are killed");
        anyhow::Ok(())
    })?;
    // Dropping the runtime drops every session, and with it every worker (kill on drop).
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}
