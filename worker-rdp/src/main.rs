//! `guacr-worker-rdp`: one RDP session, started by the guacr supervisor (never by hand).

#![forbid(unsafe_code)]

fn main() {
    worker_common::run_worker("guacr-worker-rdp", |args| async move { worker_rdp::worker::run(&args).await })
}
