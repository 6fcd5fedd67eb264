//! `guacr-worker-vnc`: one VNC session, started by the guacr supervisor (never by hand).

#![forbid(unsafe_code)]

fn main() {
    worker_common::run_worker("guacr-worker-vnc", |args| async move { worker_vnc::worker::run(&args).await })
}
