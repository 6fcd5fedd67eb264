//! guacr: a guacd-compatible Guacamole proxy. Accepts clients on TCP (guacd's port 4822 by default),
//! runs each session in its own exec'd, locked-down worker process and encodes the frames that worker
//! publishes in shared memory.

mod client;
mod config;
mod display;
mod protocols;
mod session;
mod worker;

use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::config::Config;
use crate::session::Shared;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
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
    let bound = std_listener.local_addr()?;
    if !config.foreground {
        // Like guacd without -f: detach from the terminal (keeping stderr for the log).
        nix::unistd::daemon(true, true).map_err(|e| anyhow::anyhow!("cannot detach: {e}"))?;
    }
    if let Some(pid_file) = &config.pid_file {
        std::fs::write(pid_file, format!("{}\n", std::process::id()))
            .map_err(|e| anyhow::anyhow!("cannot write pid file {}: {e}", pid_file.display()))?;
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let shared = Arc::new(Shared { config, encoders: Arc::new(tokio::sync::Semaphore::new(threads)) });
    runtime.block_on(async move {
        let listener = TcpListener::from_std(std_listener)?;
        info!(address = %bound, encoder_threads = threads, "Guacamole proxy daemon (guacr) listening");
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        tokio::spawn(session::handle_connection(stream, peer, shared.clone()));
                    }
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
