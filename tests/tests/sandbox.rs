//! The worker sandbox, proven from the inside and checked from the outside.
//!
//! Inside: `guacr-worker-selfcheck` (a test-only worker binary, never shipped) goes through the same
//! start-up as the VNC worker, applies `worker_common::sandbox` with the VNC worker's policy, and then
//! attacks: files, another session's memfd and memory through `/proc`, ptrace and signals to a sibling
//! worker and to the supervisor, exec, executable memory, privilege gain, and every kind of socket it has
//! no need of. It runs each attempt before and after the sandbox and reports both; every attempt must
//! fail afterwards, and the ones that worked before prove that the sandbox is what stops them.
//!
//! Outside: the real VNC worker's `/proc/<pid>/status` (seccomp filter mode, uid, no_new_privs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use guacr_tests::peers;
use guacr_tests::process::bin_dir;
use guacr_tests::{GuacClient, GuacrProcess};

struct WorkerDir(std::path::PathBuf);

impl WorkerDir {
    /// A private worker directory where `guacr-worker-vnc` is the given test binary.
    fn with(binary: &str) -> WorkerDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let path = std::env::temp_dir().join(format!("guacr-sandbox-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        std::os::unix::fs::symlink(bin_dir().join(binary), path.join("guacr-worker-vnc")).unwrap();
        WorkerDir(path)
    }
}

impl Drop for WorkerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|rest| rest.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

async fn new_worker(guacr: &GuacrProcess, known: &[u32]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = guacr.worker_pids().into_iter().find(|p| !known.contains(p)) {
            return pid;
        }
        assert!(Instant::now() < deadline, "no new worker; log:\n{}", guacr.log_tail(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const CHECKS: &[&str] = &[
    "open-etc-passwd",
    "open-etc-shadow",
    "create-tmp-file",
    "open-sibling-memfd",
    "list-sibling-fds",
    "open-sibling-mem",
    "list-supervisor-fds",
    "read-sibling-memory",
    "ptrace-sibling",
    "ptrace-supervisor",
    "signal-sibling",
    "signal-supervisor",
    "exec-shell",
    "exec-in-place",
    "executable-memory",
    "become-root",
    "socket-unix",
    "socket-udp",
    "socket-raw",
    "socket-netlink",
    "socket-packet",
    "listen-tcp",
    "connect-other-port",
];

/// Attempts that succeed for an unsandboxed worker: the sandbox, nothing else, must be what stops them.
const POSSIBLE_WITHOUT_SANDBOX: &[&str] = &[
    "open-etc-passwd",
    "create-tmp-file",
    "signal-sibling",
    "exec-shell",
    "executable-memory",
    "socket-unix",
    "socket-udp",
    "listen-tcp",
    "connect-other-port",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxed_worker_cannot_reach_files_other_sessions_processes_or_sockets() {
    let peer = peers::static_screen();
    peer.require_up();
    let dir = WorkerDir::with("guacr-worker-selfcheck");
    let guacr = GuacrProcess::builder().arg("--worker-dir").arg(&dir.0).start().expect("starting guacr");

    // The sibling: another session's worker, sandboxed the same way and live.
    let mut sibling = GuacClient::connect(guacr.addr()).await.unwrap();
    sibling.handshake("vnc", &peer.vnc_params(), 640, 480).await.expect("sibling handshake");
    let sibling_pid = new_worker(&guacr, &[]).await;
    sibling.wait_frames(1, Duration::from_secs(10)).await.expect("sibling session live");

    // The attacker gets the sibling's pid and the supervisor's own TCP port as targets.
    let mut params = peer.vnc_params();
    params.push(("dest-host".into(), sibling_pid.to_string()));
    params.push(("dest-port".into(), guacr.addr().port().to_string()));
    let mut attacker = GuacClient::connect(guacr.addr()).await.unwrap();
    attacker.handshake("vnc", &params, 640, 480).await.expect("attacker handshake");
    let attacker_pid = new_worker(&guacr, &[sibling_pid]).await;
    attacker
        .wait_until_named("self-check report", Duration::from_secs(30), |s| {
            s.finished_streams.iter().any(|st| st.kind == "clipboard") || s.last_error().is_some()
        })
        .await
        .expect("report");
    assert!(attacker.last_error().is_none(), "attacker session failed: {:?}", attacker.last_error());
    let report = {
        let state = attacker.state();
        let stream = state.finished_streams.iter().find(|st| st.kind == "clipboard").unwrap();
        String::from_utf8(stream.data.clone()).unwrap()
    };
    eprintln!("self-check report (name, before sandbox, after sandbox):\n{report}");
    let rows: BTreeMap<&str, (&str, &str)> = report
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((f.next()?, (f.next()?, f.next()?)))
        })
        .collect();

    let (sandbox, _) = rows["sandbox"];
    assert!(sandbox.contains("landlock: Full") && sandbox.contains("seccomp: true"), "{sandbox}");
    let (_, banner) = rows["vnc-banner"];
    assert!(banner.starts_with("RFB 003."), "the allowed path still works: {banner}");
    for check in CHECKS {
        let (before, after) = rows.get(check).unwrap_or_else(|| panic!("check {check} missing from the report"));
        assert!(after.starts_with("denied:"), "{check} must fail inside the sandbox, got {after}");
        if POSSIBLE_WITHOUT_SANDBOX.contains(check) {
            assert_eq!(*before, "allowed", "{check} should work without the sandbox (else the check proves nothing)");
        }
    }
    // Two causes worth pinning: Landlock stops the other TCP port, seccomp the socket families.
    assert_eq!(rows["connect-other-port"].1, "denied:EACCES");
    assert_eq!(rows["socket-unix"].1, "denied:ENOSYS");

    // From the outside: both workers are filtered, unprivileged, and the sibling is untouched.
    for pid in [sibling_pid, attacker_pid] {
        assert_eq!(status_field(pid, "Seccomp"), "2", "worker {pid} runs under a seccomp filter");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        if nix::unistd::geteuid().is_root() {
            let uids = status_field(pid, "Uid");
            assert!(uids.split_whitespace().all(|u| u != "0"), "worker {pid} runs as root: {uids}");
        }
    }
    assert!(guacr.worker_pids().contains(&sibling_pid), "the sibling survived");
    assert!(sibling.last_error().is_none() && !sibling.is_closed());
    assert!(!std::path::Path::new(&format!("/tmp/guacr-selfcheck-{attacker_pid}")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vnc_worker_runs_sandboxed_and_unprivileged() {
    let peer = peers::static_screen();
    peer.require_up();
    let guacr = GuacrProcess::start().expect("starting guacr");
    let mut client = GuacClient::connect(guacr.addr()).await.unwrap();
    client.handshake("vnc", &peer.vnc_params(), 1024, 768).await.expect("handshake");
    let pid = new_worker(&guacr, &[]).await;
    client.wait_frames(1, Duration::from_secs(15)).await.expect("frames from the real server");
    // Filter mode (2): the allow-list is in force while the session works.
    assert_eq!(status_field(pid, "Seccomp"), "2", "the VNC worker applies worker_common::sandbox");
    assert_eq!(status_field(pid, "Seccomp_filters"), "1");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    if nix::unistd::geteuid().is_root() {
        let uids = status_field(pid, "Uid");
        assert!(uids.split_whitespace().all(|u| u != "0"), "the worker runs as root: {uids}");
        let gids = status_field(pid, "Gid");
        assert!(gids.split_whitespace().all(|g| g != "0"), "the worker keeps group root: {gids}");
        assert_eq!(status_field(pid, "Groups"), "", "no supplementary groups");
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    }
    // Still a working session after the lock-down: input reaches the server and frames keep coming.
    client.send_mouse(10, 10, 0).await.unwrap();
    assert!(client.last_error().is_none(), "{:?}", client.last_error());
}
