//! `guacr-worker-ssh`: one SSH session, started by the guacr supervisor (never by hand).

#![forbid(unsafe_code)]

use worker_common::{init_logging, lockdown, WorkerArgs, EXIT_USAGE};

fn main() {
    let args = match WorkerArgs::from_env() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("guacr-worker-ssh: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    init_logging(&args.log_level);
    // Before any network activity: the remote server is hostile.
    if let Err(error) = lockdown(&args) {
        tracing::error!(%error, "Lock-down failed");
        std::process::exit(1);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "Cannot start the runtime");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(worker_ssh::worker::run(&args));
    std::process::exit(code);
}
