//! A test-only worker that proves the sandbox from the inside. It never ships: it lives in the test crate
//! and is installed as `guacr-worker-vnc` in a test's private worker directory.
//!
//! It starts exactly like the real VNC worker (`lockdown` right after exec, `Start`, host name resolved,
//! then `worker_common::sandbox` with the same `Policy::tcp_client` the VNC worker uses), connects to the
//! VNC server named by `hostname`/`port` and reads its RFB banner (the allowed path must keep working),
//! then publishes one frame so the session is live.
//!
//! With `dest-host` set to the pid of another session's worker (the sibling) and `dest-port` set to a TCP
//! port it has no business with, it attacks: every check below runs once before the sandbox (to show the
//! attempt is possible at all, or what else already stops it) and once after. The report goes to the
//! client as clipboard text, one line per check: `name<TAB>before<TAB>after`, where each outcome is
//! `allowed` or `denied:<errno>`. Without `dest-host` it stays a quiet, live session (the sibling).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use shm_proto::{FromWorker, Rect, ToWorker};
use worker_common::{Policy, WorkerSession};

fn main() {
    worker_common::run_worker("guacr-worker-selfcheck", |_args| async {
        run().await;
        0
    })
}

async fn run() {
    let mut session = WorkerSession::attach().expect("attach");
    let Some(ToWorker::Start { params, .. }) = session.wait_for_start().await.expect("start") else {
        return;
    };
    let host = params.get("hostname").unwrap_or("127.0.0.1").to_string();
    let port: u16 = params.get("port").and_then(|p| p.parse().ok()).unwrap_or(5900);
    let attack = params.get("dest-host").and_then(|p| p.parse::<i32>().ok()).map(|sibling| Attack {
        sibling: Pid::from_raw(sibling),
        forbidden_port: params.get("dest-port").and_then(|p| p.parse().ok()).unwrap_or(4822),
        supervisor: nix::unistd::getppid(),
    });

    let targets = worker_common::resolve(&host, port).expect("resolve");
    let before = attack.as_ref().map(|a| a.run(false));
    let sandboxed = worker_common::sandbox(&Policy::tcp_client(&targets)).expect("sandbox");
    tracing::info!(?sandboxed, "Self-check worker sandboxed");
    let after = attack.as_ref().map(|a| a.run(true));

    // The allowed path: the remote server is reachable and talks to us.
    let banner = read_banner(&targets);
    session.frames.resize(64, 64).expect("resize");
    session.control.send(&FromWorker::Connected { width: 64, height: 64, name: "selfcheck".into() }).await.unwrap();
    session.frames.mark_dirty(Rect::new(0, 0, 64, 64));
    session.publish().await.unwrap();

    if let (Some(before), Some(after)) = (before, after) {
        let mut report = format!("sandbox\t{sandboxed:?}\t\nvnc-banner\t\t{banner}\n");
        for ((name, before), (_, after)) in before.iter().zip(&after) {
            report.push_str(&format!("{name}\t{before}\t{after}\n"));
        }
        tracing::info!(%report, "Self-check report");
        let message = FromWorker::Clipboard { mimetype: "text/plain".into(), data: report.into_bytes(), last: true };
        session.control.send(&message).await.unwrap();
    }
    // Stay a live session until told to go.
    loop {
        match session.control.recv::<ToWorker>().await {
            Ok(Some(ToWorker::Heartbeat)) => session.control.send(&FromWorker::Heartbeat).await.unwrap(),
            Ok(Some(ToWorker::Consumed { .. })) => session.publish().await.unwrap(),
            Ok(Some(ToWorker::Shutdown) | None) | Err(_) => return,
            Ok(Some(_)) => {}
        }
    }
}

fn read_banner(targets: &[SocketAddr]) -> String {
    let mut stream = match TcpStream::connect_timeout(&targets[0], Duration::from_secs(5)) {
        Ok(stream) => stream,
        Err(e) => return format!("connect failed: {e}"),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut banner = [0u8; 12];
    match stream.read_exact(&mut banner) {
        Ok(()) => String::from_utf8_lossy(&banner).trim().to_string(),
        Err(e) => format!("read failed: {e}"),
    }
}

struct Attack {
    sibling: Pid,
    forbidden_port: u16,
    supervisor: Pid,
}

impl Attack {
    /// Every attempt, in a fixed order; each outcome `allowed`, `denied:<errno>` or `skipped`.
    fn run(&self, sandboxed: bool) -> Vec<(&'static str, String)> {
        let sibling = self.sibling.as_raw();
        let mut results = Vec::new();
        let mut check = |name: &'static str, result: std::io::Result<()>| {
            let outcome = match result {
                Ok(()) => "allowed".to_string(),
                Err(e) => format!("denied:{}", e.raw_os_error().map_or_else(|| e.to_string(), errno_name)),
            };
            results.push((name, outcome));
        };
        let io = |r: nix::Result<()>| r.map_err(std::io::Error::from);
        // Files outside the allowance (a VNC worker has none).
        check("open-etc-passwd", std::fs::File::open("/etc/passwd").map(drop));
        check("open-etc-shadow", std::fs::File::open("/etc/shadow").map(drop));
        let scratch = format!("/tmp/guacr-selfcheck-{}", std::process::id());
        check("create-tmp-file", std::fs::File::create(&scratch).map(drop));
        let _ = std::fs::remove_file(&scratch);
        // Another session's memory and descriptors, through /proc.
        check("open-sibling-memfd", std::fs::File::open(format!("/proc/{sibling}/fd/4")).map(drop));
        check("list-sibling-fds", std::fs::read_dir(format!("/proc/{sibling}/fd")).map(drop));
        check("open-sibling-mem", std::fs::File::open(format!("/proc/{sibling}/mem")).map(drop));
        check("list-supervisor-fds", std::fs::read_dir(format!("/proc/{}/fd", self.supervisor)).map(drop));
        let mut buf = [0u8; 8];
        let remote = [nix::sys::uio::RemoteIoVec { base: 0x10000, len: 8 }];
        let read = nix::sys::uio::process_vm_readv(self.sibling, &mut [std::io::IoSliceMut::new(&mut buf)], &remote);
        check("read-sibling-memory", io(read.map(drop)));
        // Other processes: debugging and signals.
        check("ptrace-sibling", io(nix::sys::ptrace::attach(self.sibling)));
        check("ptrace-supervisor", io(nix::sys::ptrace::attach(self.supervisor)));
        check("signal-sibling", io(nix::sys::signal::kill(self.sibling, None)));
        check("signal-supervisor", io(nix::sys::signal::kill(self.supervisor, None)));
        // New programs and processes.
        check("exec-shell", std::process::Command::new("/bin/sh").args(["-c", "exit 0"]).status().map(drop));
        if sandboxed {
            // Succeeding would replace this worker (and the report would never come).
            check("exec-in-place", Err(std::process::Command::new("/bin/true").exec()));
        } else {
            results_skip(&mut check, "exec-in-place");
        }
        check("executable-memory", memmap2::MmapMut::map_anon(4096).and_then(|m| m.make_exec()).map(drop));
        check("become-root", io(nix::unistd::setuid(nix::unistd::Uid::from_raw(0))));
        // Sockets it has no need of.
        let sock = |family, kind| io(socket(family, kind, SockFlag::SOCK_CLOEXEC, None).map(drop));
        check("socket-unix", sock(AddressFamily::Unix, SockType::Stream));
        check("socket-udp", sock(AddressFamily::Inet, SockType::Datagram));
        check("socket-raw", sock(AddressFamily::Inet, SockType::Raw));
        check("socket-netlink", sock(AddressFamily::Netlink, SockType::Raw));
        check("socket-packet", sock(AddressFamily::Packet, SockType::Raw));
        check("listen-tcp", TcpListener::bind("127.0.0.1:0").map(drop));
        let forbidden = SocketAddr::from(([127, 0, 0, 1], self.forbidden_port));
        check("connect-other-port", TcpStream::connect_timeout(&forbidden, Duration::from_secs(2)).map(drop));
        results
    }
}

fn results_skip(check: &mut impl FnMut(&'static str, std::io::Result<()>), name: &'static str) {
    check(name, Err(std::io::Error::other("skipped")));
}

fn errno_name(code: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(code))
}
