//! Crash containment against a hostile worker: whatever a worker does to the shared memory or the control
//! socket, the supervisor kills it, tells that session's client with an `error`, and carries on.
//! The worker is `guacr-worker-hostile` installed as `guacr-worker-vnc` in a private worker directory.

use std::time::{Duration, Instant};

use guacr_tests::process::bin_dir;
use guacr_tests::{GuacClient, GuacrProcess};

fn guacr_with_hostile_worker() -> (GuacrProcess, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    std::os::unix::fs::symlink(bin_dir().join("guacr-worker-hostile"), dir.path.join("guacr-worker-vnc")).unwrap();
    let guacr = GuacrProcess::builder()
        .arg("--worker-dir")
        .arg(&dir.path)
        .arg("--worker-timeout")
        .arg("2")
        .start()
        .expect("starting guacr");
    (guacr, dir)
}

mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new() -> Dir {
            let path = std::env::temp_dir().join(format!(
                "guacr-hostile-{}-{}",
                std::process::id(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Opens a session whose worker performs `attack`; returns the status the client got and how long after
/// the first frame it arrived.
async fn attacked(guacr: &GuacrProcess, attack: &str) -> (u32, Duration) {
    let mut client = GuacClient::connect(guacr.addr()).await.unwrap();
    client.handshake("vnc", &[("hostname", attack)], 800, 600).await.expect("handshake");
    client
        .wait_until_named("first frame", Duration::from_secs(10), |s| s.frames >= 1 || s.last_error().is_some())
        .await
        .expect("the hostile worker's valid first frame");
    let start = Instant::now();
    client
        .wait_until_named("error", Duration::from_secs(10), |s| s.last_error().is_some())
        .await
        .unwrap_or_else(|e| panic!("no error for attack {attack}: {e}"));
    let error = client.last_error().unwrap();
    client.wait_closed(Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("not closed after {attack}: {e}"));
    (error.status, error.at.saturating_duration_since(start))
}

async fn wait_no_workers(guacr: &GuacrProcess) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !guacr.worker_pids().is_empty() {
        assert!(Instant::now() < deadline, "workers left running: {:?}", guacr.worker_pids());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_breaches_kill_the_worker_and_give_515() {
    let (mut guacr, _dir) = guacr_with_hostile_worker();
    for attack in ["seq-jump", "bad-size", "bad-damage", "garbage-message", "huge-message", "bad-cursor", "exit"] {
        let (status, after) = attacked(&guacr, attack).await;
        eprintln!("{attack}: status {status} after {after:?}");
        assert_eq!(status, 515, "attack {attack}");
        wait_no_workers(&guacr).await;
        assert!(guacr.try_exit_status().is_none(), "guacr died from attack {attack}; log:\n{}", guacr.log_tail(30));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_is_detected_by_its_missing_heartbeat() {
    let (guacr, _dir) = guacr_with_hostile_worker();
    let (status, after) = attacked(&guacr, "silent").await;
    eprintln!("silent worker detected after {after:?}");
    assert_eq!(status, 515);
    wait_no_workers(&guacr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_status_codes_are_passed_through_only_when_legitimate() {
    let (guacr, _dir) = guacr_with_hostile_worker();
    assert_eq!(attacked(&guacr, "fail-769").await.0, 769);
    assert_eq!(attacked(&guacr, "fail-bogus").await.0, 515);
    wait_no_workers(&guacr).await;
}
