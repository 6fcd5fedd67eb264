//! `guacr-worker-rbi`: one remote browser isolation session, started by the guacr supervisor (never by
//! hand). Started again by itself as `--browser-keeper` to launch and outlive Chromium (see `keeper`).

#![forbid(unsafe_code)]

fn main() {
    if std::env::args().nth(1).as_deref() == Some(worker_rbi::keeper::FLAG) {
        std::process::exit(worker_rbi::keeper::main(std::env::args().skip(2).collect()));
    }
    worker_common::run_worker_with("guacr-worker-rbi", worker_common::SandboxProfile::Browser, |args| async move {
        worker_rbi::worker::run(&args).await
    })
}
