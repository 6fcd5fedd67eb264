//! Crash containment against a hostile worker: whatever a worker does to the shared memory or the control
//! socket, the supervisor kills it, tells that session's client with an `error`, and carries on.
//! The worker is `guacr-worker-hostile` installed as `guacr-worker-vnc` in a private worker directory.

use std::time::{Duration, Instant};

use guacr_tests::process::bin_dir;
use guacr_tests::{GuacClient, GuacrProcess};
use shm_proto::control::MAX_WORKER_OBJECTS;

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
    let (_client, _id, status, after) = attacked_client(guacr, attack).await;
    (status, after)
}

/// A session of the hostile worker in mode `mode`, past its first frame, and its connection id.
async fn hostile_session(guacr: &GuacrProcess, mode: &str) -> (GuacClient, String) {
    let mut client = GuacClient::connect(guacr.addr()).await.unwrap();
    let id = client.handshake("vnc", &[("hostname", mode)], 800, 600).await.expect("handshake");
    client
        .wait_until_named("first frame", Duration::from_secs(10), |s| s.frames >= 1 || s.last_error().is_some())
        .await
        .expect("the hostile worker's valid first frame");
    (client, id)
}

/// Like [`attacked`], also returning the client (what it saw before the error) and the connection id.
async fn attacked_client(guacr: &GuacrProcess, attack: &str) -> (GuacClient, String, u32, Duration) {
    let (client, id) = hostile_session(guacr, attack).await;
    let start = Instant::now();
    client
        .wait_until_named("error", Duration::from_secs(10), |s| s.last_error().is_some())
        .await
        .unwrap_or_else(|e| panic!("no error for attack {attack}: {e}"));
    let error = client.last_error().unwrap();
    client.wait_closed(Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("not closed after {attack}: {e}"));
    (client, id, error.status, error.at.saturating_duration_since(start))
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

/// The `n`-th key press on the bystander session arrives as a download `alive-n.txt` holding "alive n":
/// its worker, and the supervisor's stream relay for it, still work.
async fn bystander_answers(bystander: &GuacClient, n: u32) {
    bystander.send_key(u32::from(b'a'), true).await.unwrap();
    bystander.send_key(u32::from(b'a'), false).await.unwrap();
    let (name, body) = (format!("alive-{n}.txt"), format!("alive {n}"));
    bystander
        .wait_until_named(&format!("bystander download {name}"), Duration::from_secs(10), |s| {
            s.finished_streams
                .iter()
                .any(|st| st.kind == "file" && st.args.get(2) == Some(&name) && st.data == body.as_bytes())
        })
        .await
        .unwrap_or_else(|e| panic!("bystander stopped answering: {e}; error {:?}", bystander.last_error()));
    assert!(bystander.last_error().is_none() && !bystander.is_closed(), "bystander hit: {:?}", bystander.last_error());
}

/// Stream events that break streams.rs's contract end that session alone with 515 (the worker is
/// killed); a bystander session on the same supervisor keeps working, and guacr survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_messages_end_only_their_session() {
    let (mut guacr, _dir) = guacr_with_hostile_worker();
    let (bystander, _) = hostile_session(&guacr, "bystander").await;
    let bystander_workers = guacr.worker_pids();
    assert_eq!(bystander_workers.len(), 1);
    bystander_answers(&bystander, 1).await;
    let attacks = [
        ("stream-bad-index", "outside the worker's range"),
        ("stream-blob-before-file", "is not open"),
        ("stream-oversize-blob", "exceeds the chunk size"),
        ("stream-filesystem-flood", "object index 8 is outside"),
        ("stream-end-before-file", "is not open"),
        ("stream-blob-after-end", "is not open"),
        ("stream-audio-unaccepted", "is not one the client accepts"),
    ];
    for (n, (attack, reason)) in (2..).zip(attacks) {
        let (client, id, status, after) = attacked_client(&guacr, attack).await;
        eprintln!("{attack}: status {status} after {after:?}");
        assert_eq!(status, 515, "attack {attack}");
        let error = client.last_error().unwrap();
        assert_eq!(error.message, "Session worker misbehaved and was stopped.", "attack {attack}");
        let log = guacr.log_contents();
        assert!(
            log.lines()
                .any(|l| l.contains("Worker broke the stream contract") && l.contains(reason) && l.contains(&id)),
            "no log line for {attack} ({reason}) naming session {id}:\n{}",
            guacr.log_tail(30)
        );
        if attack == "stream-filesystem-flood" {
            // Objects 0..8 may be offered; the ninth ends the session before it reaches the client.
            let seen = client.state().filesystems.len();
            assert!(seen <= MAX_WORKER_OBJECTS as usize, "{seen} filesystem objects reached the client");
        }
        if attack == "stream-blob-after-end" {
            let st = client.state();
            let ended = st.finished_streams.iter().find(|s| s.kind == "file").expect("the download before the breach");
            assert!(ended.data.is_empty(), "a blob after end reached the client: {:?}", ended.data);
        }
        // Only the attacker's worker is gone; the bystander's is the same process and still answers.
        let deadline = Instant::now() + Duration::from_secs(5);
        while guacr.worker_pids() != bystander_workers {
            assert!(Instant::now() < deadline, "workers after {attack}: {:?}", guacr.worker_pids());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bystander_answers(&bystander, n).await;
        assert!(guacr.try_exit_status().is_none(), "guacr died from {attack}; log:\n{}", guacr.log_tail(30));
    }
    assert!(!guacr.log_contents().contains("panicked"), "a panic in guacr:\n{}", guacr.log_tail(40));
}

/// An `ack` for an upload the supervisor never relayed is dropped (streams.rs), not a breach: the session
/// goes on, later downloads still arrive, and heartbeats keep it alive past the worker timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_stream_ack_is_ignored() {
    let (guacr, _dir) = guacr_with_hostile_worker();
    let (client, _) = hostile_session(&guacr, "stream-stray-ack").await;
    client
        .wait_until_named("the download after the stray ack", Duration::from_secs(10), |s| {
            s.finished_streams.iter().any(|st| {
                st.kind == "file"
                    && st.args.get(2).map(String::as_str) == Some("after-ack.txt")
                    && st.data == b"still relayed"
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; error {:?}; log:\n{}", client.last_error(), guacr.log_tail(30)));
    let acks = client.state().acks.clone();
    assert!(acks.is_empty(), "the stray ack reached the client: {acks:?}");
    // Past the 2 s worker timeout: still open, no error.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(client.last_error().is_none() && !client.is_closed(), "session ended: {:?}", client.last_error());
    assert_eq!(guacr.worker_pids().len(), 1);
}
