//! `guacr-worker-ssh`: one SSH session, started by the guacr supervisor (never by hand).

#![forbid(unsafe_code)]

fn main() {
    worker_common::run_worker("guacr-worker-ssh", |args| async move { worker_ssh::worker::run(&args).await })
}
