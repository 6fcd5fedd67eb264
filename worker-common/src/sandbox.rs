//! The second lock-down step, applied by every worker after set-up and before the first byte from the
//! remote server: Landlock (filesystem, TCP ports, signal and abstract-socket scoping), then a seccomp
//! allow-list. [`lockdown`](crate::lockdown) (parent-death signal, rlimits, no_new_privs, not dumpable)
//! runs first, right after exec; the uid drop happens at exec (the supervisor starts workers as an
//! unprivileged user when it runs as root).
//!
//! Order inside [`sandbox`]: check that the process is single-threaded (Landlock on this kernel binds
//! only the calling thread), Landlock, then seccomp (last, so the Landlock syscalls need no allowance).
//!
//! Host names are resolved before the sandbox ([`resolve`]): resolution reads `/etc` and may load NSS
//! modules, none of which a locked-down worker can do. The worker then connects to the resolved
//! addresses only; Landlock lets it connect to exactly their TCP ports (it cannot filter by host).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};
use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// What a worker may still do once it is sandboxed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// TCP ports it may connect to (Landlock ABI 4+). Empty: no outgoing TCP at all.
    pub connect_ports: Vec<u16>,
    /// Files and directories it may read beneath (the rbi worker's downloads); empty for vnc, ssh, rdp.
    pub read_paths: Vec<PathBuf>,
    /// Directories it may create and write regular files beneath (the rbi worker's uploads); empty for vnc,
    /// ssh, rdp.
    pub write_paths: Vec<PathBuf>,
}

impl Policy {
    /// A network client (vnc, ssh, rdp): TCP to the given addresses' ports, no filesystem.
    pub fn tcp_client(targets: &[SocketAddr]) -> Policy {
        let mut connect_ports: Vec<u16> = targets.iter().map(SocketAddr::port).collect();
        connect_ports.sort_unstable();
        connect_ports.dedup();
        Policy { connect_ports, ..Policy::default() }
    }
}

/// How far each layer could be enforced on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sandboxed {
    pub landlock: LandlockLevel,
    /// Always true when [`sandbox`] returns `Ok`: seccomp is mandatory.
    pub seccomp: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockLevel {
    /// Every requested restriction is in force.
    Full,
    /// The kernel's Landlock ABI lacks some of them (e.g. no TCP rules before ABI 4).
    Partial,
    /// The kernel has no Landlock; seccomp is the only layer.
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    #[error("the sandbox must be applied while single-threaded, found {0} threads")]
    Threads(usize),
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccompiler::Error),
    #[error("seccomp filter: {0}")]
    SeccompBackend(#[from] seccompiler::BackendError),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("reading /proc/self/status: {0}")]
    Proc(std::io::Error),
    #[error("cannot start the resolver thread: {0}")]
    ResolverThread(std::io::Error),
}

/// Resolves `host:port` before the sandbox goes up (afterwards nothing in `/etc` can be read).
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, SandboxError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| SandboxError::Resolve { host: host.to_string(), source })?
        .collect();
    if addrs.is_empty() {
        return Err(SandboxError::NoAddress { host: host.to_string() });
    }
    Ok(addrs)
}

/// [`resolve`] on a short-lived thread, so a slow lookup never stalls the caller's event loop (it keeps
/// answering heartbeats). The thread is joined before this returns: the process is single-threaded
/// again, as [`sandbox`] requires.
pub async fn resolve_off_thread(host: &str, port: u16) -> Result<Vec<SocketAddr>, SandboxError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = host.to_string();
    let lookup = std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = tx.send(resolve(&name, port));
        })
        .map_err(SandboxError::ResolverThread)?;
    let result = rx.await;
    let _ = lookup.join();
    result.unwrap_or_else(|_| Err(SandboxError::NoAddress { host: host.to_string() }))
}

/// Applies Landlock and the seccomp allow-list to the whole (single-threaded) process. Irreversible.
pub fn sandbox(policy: &Policy) -> Result<Sandboxed, SandboxError> {
    // A thread that was just joined may still be counted for a moment (the kernel wakes the joiner
    // before it releases the thread), so give it a little time.
    let mut threads = thread_count()?;
    for _ in 0..200 {
        if threads == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        threads = thread_count()?;
    }
    if threads != 1 {
        return Err(SandboxError::Threads(threads));
    }
    let landlock = restrict_filesystem_and_network(policy)?;
    let filter = seccomp_filter(policy, own_pid())?;
    seccompiler::apply_filter_all_threads(&filter)?;
    Ok(Sandboxed { landlock, seccomp: true })
}

fn thread_count() -> Result<usize, SandboxError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(SandboxError::Proc)?;
    Ok(status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0))
}

fn own_pid() -> u64 {
    u64::from(std::process::id())
}

/// Landlock for the calling thread: no filesystem access except `read_paths` (read-only), TCP connect
/// only to `connect_ports`, no TCP bind, no signals to and no abstract UNIX sockets of processes outside
/// this worker (so a worker cannot signal its siblings, which share its uid).
pub(crate) fn restrict_filesystem_and_network(policy: &Policy) -> Result<LandlockLevel, SandboxError> {
    // ABI 6 adds the scopes; older kernels get what they support (best effort), reported in the result.
    let abi = ABI::V6;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
        .scope(Scope::from_all(abi))?
        .create()?;
    for port in &policy.connect_ports {
        ruleset = ruleset.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
    }
    if !policy.read_paths.is_empty() {
        ruleset = ruleset.add_rules(landlock::path_beneath_rules(&policy.read_paths, AccessFs::from_read(abi)))?;
    }
    if !policy.write_paths.is_empty() {
        let write = AccessFs::from_read(abi) | AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::Truncate;
        ruleset = ruleset.add_rules(landlock::path_beneath_rules(&policy.write_paths, write))?;
    }
    let status = ruleset.restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockLevel::Full,
        RulesetStatus::PartiallyEnforced => LandlockLevel::Partial,
        RulesetStatus::NotEnforced => LandlockLevel::Unavailable,
    })
}

/// The seccomp allow-list of a worker.
///
/// Anything not listed fails with `ENOSYS`, as on a kernel that lacks the call. We chose an error over
/// killing the process because libc and std probe newer calls (`clone3`, `statx`, `rseq`, ...) and fall
/// back only on `ENOSYS`: a libc update must not turn into "every session dies". The containment does
/// not depend on the action: whatever is not listed never runs. A denied call in a healthy worker shows
/// up as an error in its log, and the self-check test asserts the denials.
pub(crate) fn seccomp_filter(policy: &Policy, pid: u64) -> Result<BpfProgram, SandboxError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut allow = |syscall: libc::c_long, alternatives: Vec<Vec<Cond>>| -> Result<(), SandboxError> {
        let entry = rules.entry(syscall).or_default();
        for conditions in alternatives {
            let conditions = conditions
                .into_iter()
                .map(|Cond(index, len, op, value)| SeccompCondition::new(index, len, op, value))
                .collect::<Result<Vec<_>, _>>()?;
            entry.push(SeccompRule::new(conditions)?);
        }
        Ok(())
    };
    let any = Vec::new;
    let arg = |index: u8, op: SeccompCmpOp, value: u64| Cond(index, SeccompCmpArgLen::Qword, op, value);
    let arg32 = |index: u8, op: SeccompCmpOp, value: u64| Cond(index, SeccompCmpArgLen::Dword, op, value);
    let no_exec = || arg32(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0);

    // I/O on descriptors the worker already holds (control socket, log pipe, eventfd, the TCP stream).
    allow(libc::SYS_read, any())?; // eventfd wake-ups; plain reads
    allow(libc::SYS_write, any())?; // log lines on fd 2, eventfd wake-ups
    allow(libc::SYS_readv, any())?; // vectored reads (tokio)
    allow(libc::SYS_writev, any())?; // vectored writes (tokio, std)
    allow(libc::SYS_recvfrom, any())?; // control messages and remote server bytes
    allow(libc::SYS_sendto, any())?; // control messages and bytes to the remote server
    allow(libc::SYS_recvmsg, any())?; // control socket (seqpacket)
    allow(libc::SYS_sendmsg, any())?; // control socket (seqpacket)
    allow(libc::SYS_close, any())?; // dropping sockets
    allow(libc::SYS_shutdown, any())?; // ending the TCP connection cleanly
                                       // The event loop (tokio on epoll).
    allow(libc::SYS_epoll_ctl, any())?; // registering the new TCP socket
    allow(libc::SYS_epoll_pwait, any())?; // waiting for events and timers
    allow(libc::SYS_epoll_pwait2, any())?; // newer tokio/mio wait with a timespec
    #[cfg(target_arch = "x86_64")]
    allow(libc::SYS_epoll_wait, any())?; // waiting for events and timers (x86_64)
    allow(libc::SYS_ppoll, any())?; // std's connect_timeout and timed reads
    #[cfg(target_arch = "x86_64")]
    allow(libc::SYS_poll, any())?; // std's connect_timeout and timed reads (x86_64)
                                   // Connecting to the remote server: IPv4/IPv6 stream sockets only; Landlock limits the ports.
    let stream = |family: libc::c_int| {
        vec![
            arg32(0, SeccompCmpOp::Eq, family as u64),
            arg32(
                1,
                SeccompCmpOp::MaskedEq(!((libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u32) as u64),
                libc::SOCK_STREAM as u64,
            ),
        ]
    };
    let stream_sockets = vec![stream(libc::AF_INET), stream(libc::AF_INET6)];
    allow(libc::SYS_socket, stream_sockets)?; // a TCP socket per connection attempt
    allow(libc::SYS_connect, any())?; // to the resolved address (Landlock: its port only)
    allow(libc::SYS_getsockopt, any())?; // SO_ERROR after a non-blocking connect
    allow(libc::SYS_setsockopt, any())?; // TCP_NODELAY
    allow(libc::SYS_getsockname, any())?; // local address, for logs
    allow(libc::SYS_getpeername, any())?; // peer address, for logs
    let fcntl_cmds = [libc::F_GETFD, libc::F_SETFD, libc::F_GETFL, libc::F_SETFL];
    allow(libc::SYS_fcntl, fcntl_cmds.iter().map(|c| vec![arg32(1, SeccompCmpOp::Eq, *c as u64)]).collect())?; // non-blocking and close-on-exec flags
    allow(libc::SYS_ioctl, vec![vec![arg32(1, SeccompCmpOp::Eq, libc::FIONBIO)]])?; // std's set_nonblocking
                                                                                    // Memory: the allocator. Never executable: no new code can be mapped after set-up.
    allow(libc::SYS_brk, any())?; // heap growth
    allow(libc::SYS_mmap, vec![vec![no_exec()]])?; // large allocations, thread stacks (not PROT_EXEC)
    allow(libc::SYS_mprotect, vec![vec![no_exec()]])?; // arena growth, stack guards (not PROT_EXEC)
    allow(libc::SYS_munmap, any())?; // freeing large allocations
    allow(libc::SYS_mremap, any())?; // growing large buffers
    allow(libc::SYS_madvise, any())?; // returning freed memory
                                      // Threads and synchronisation (tokio's blocking pool, should anything use it).
    allow(libc::SYS_futex, any())?; // mutexes, condition variables, thread joins
    let thread = libc::CLONE_THREAD as u64;
    allow(libc::SYS_clone, vec![vec![arg(0, SeccompCmpOp::MaskedEq(thread), thread)]])?; // threads only, never a process (clone3 is not listed: libc falls back to clone on ENOSYS)
    allow(libc::SYS_set_robust_list, any())?; // new thread set-up (glibc)
    allow(libc::SYS_rseq, any())?; // new thread set-up (glibc)
    allow(libc::SYS_sched_yield, any())?; // spin-then-yield locks
    allow(libc::SYS_sched_getaffinity, any())?; // std::thread::available_parallelism
    allow(libc::SYS_gettid, any())?; // thread ids (tracing, raise)
    allow(libc::SYS_getpid, any())?; // raise() before tgkill
    allow(libc::SYS_exit, any())?; // thread exit
    allow(libc::SYS_exit_group, any())?; // process exit
    allow(libc::SYS_prctl, vec![vec![arg32(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)]])?; // naming threads
                                                                                               // Signals: only to ourselves (abort), and the plumbing for handlers.
    allow(libc::SYS_tgkill, vec![vec![arg32(0, SeccompCmpOp::Eq, pid)]])?; // abort() raising SIGABRT in this process only
    allow(libc::SYS_rt_sigreturn, any())?; // returning from a signal handler
    allow(libc::SYS_rt_sigprocmask, any())?; // signal masks around thread creation, abort()
    allow(libc::SYS_rt_sigaction, any())?; // abort() resetting SIGABRT
    allow(libc::SYS_sigaltstack, any())?; // std's stack-overflow guard per thread
    allow(libc::SYS_restart_syscall, any())?; // the kernel restarting an interrupted call
                                              // Time and randomness.
    allow(libc::SYS_clock_gettime, any())?; // timers (when the vDSO cannot answer)
    allow(libc::SYS_clock_getres, any())?; // timer resolution
    allow(libc::SYS_gettimeofday, any())?; // wall clock (vDSO fallback)
    allow(libc::SYS_clock_nanosleep, any())?; // std::thread::sleep
    allow(libc::SYS_nanosleep, any())?; // std::thread::sleep (older libc)
    allow(libc::SYS_getrandom, any())?; // hash-map seeds, VNC challenge handling
                                        // Files only where the policy names paths to read (Landlock narrows them to those paths).
    if !policy.read_paths.is_empty() || !policy.write_paths.is_empty() {
        allow(libc::SYS_openat, any())?; // the allowed files (Landlock checks the path and the access)
        allow(libc::SYS_newfstatat, any())?; // metadata of open files
        allow(libc::SYS_statx, any())?; // metadata of open files
        allow(libc::SYS_lseek, any())?; // seeking in open files
        allow(libc::SYS_pread64, any())?; // positioned reads
    }

    let filter = SeccompFilter::new(rules, SeccompAction::Errno(libc::ENOSYS as u32), SeccompAction::Allow, arch)?;
    Ok(filter.try_into()?)
}

/// One argument comparison: index, width, operator, value.
struct Cond(u8, SeccompCmpArgLen, SeccompCmpOp, u64);

/// Which lock-down a worker binary asks for. Chosen by the binary itself (never by the supervisor or a
/// client), see `SECURITY.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxProfile {
    /// vnc, ssh, rdp: the worker itself talks to the remote server. Everything at once right after exec
    /// ([`lockdown`](crate::lockdown)), then [`sandbox`] before the first connection.
    RemoteClient,
    /// rbi: the worker starts a browser (a launcher process and Chromium) that needs exec, hundreds of
    /// descriptors and terabytes of address space. Right after exec only what a browser can live with
    /// (parent-death signal, no core dumps, no_new_privs, not dumpable, descriptors capped at
    /// [`BROWSER_NOFILE`]); the launcher confines the browser with [`confine_browser`] before exec; once
    /// the browser runs, [`confine_browser_worker`](crate::confine_browser_worker) gives the worker
    /// itself the client limits and [`sandbox`] with an empty [`Policy`] (no files, no TCP): it talks to
    /// the browser only over the pipes it already holds. Seccomp filters survive exec, which is why the
    /// worker's filter goes up only after the browser was started and binds only the worker.
    Browser,
}

/// Descriptor limit for the browser profile before the worker's own lock-down (Chromium keeps a few
/// hundred open: shared memory, IPC sockets, fonts, its profile's databases).
pub const BROWSER_NOFILE: u64 = 8192;

/// Directories a browser launched by a worker may read and execute beneath: the system, never `/tmp`,
/// `/home` or `/root` (other sessions' profile directories and users' files).
const BROWSER_READ_PATHS: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc",
    "/opt",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/cache/fontconfig",
    "/var/lib/dbus",
];

/// Landlock for a browser's launcher, inherited by the browser it execs: read and execute beneath the
/// system directories only, everything beneath `profile_dir` (its throwaway profile, `HOME` and
/// `TMPDIR`), writes to `/dev/null` and `/proc` (Chromium's own sandbox writes `/proc/self/uid_map` and
/// `oom_score_adj`; DAC still guards other users' files), no TCP bind, and signals and abstract
/// sockets scoped to the browser. Landlock also keeps the browser from ptracing (or reading the memory of)
/// anything outside its domain: other sessions' browsers, which share its uid. Outgoing TCP is not
/// restricted: a browser must reach any web port. Best effort: an older kernel applies what it knows.
pub fn confine_browser(profile_dir: &std::path::Path) -> Result<LandlockLevel, SandboxError> {
    let abi = ABI::V6;
    let existing =
        |paths: &[&str]| -> Vec<PathBuf> { paths.iter().map(PathBuf::from).filter(|p| p.exists()).collect() };
    let write = AccessFs::WriteFile | AccessFs::Truncate;
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::BindTcp)?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rules(landlock::path_beneath_rules(existing(BROWSER_READ_PATHS), AccessFs::from_read(abi)))?
        .add_rules(landlock::path_beneath_rules(existing(&["/dev/null", "/proc"]), write))?
        .add_rules(landlock::path_beneath_rules([profile_dir], AccessFs::from_all(abi)))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockLevel::Full,
        RulesetStatus::PartiallyEnforced => LandlockLevel::Partial,
        RulesetStatus::NotEnforced => LandlockLevel::Unavailable,
    })
}

#[cfg(test)]
mod tests {
    //! Each layer on its own, in a fresh thread (Landlock and a seccomp filter installed without TSYNC
    //! bind only the calling thread and the threads it starts), so the test process stays usable.
    //! The whole sandbox inside a real worker is proven by `tests/tests/sandbox.rs`.
    use std::io::ErrorKind;
    use std::net::{TcpListener, TcpStream};

    use nix::errno::Errno;
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

    use super::*;

    fn in_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("test thread panicked")
    }

    #[test]
    fn landlock_allows_only_the_target_port_and_no_files() {
        let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let (allowed_addr, other_addr) = (allowed.local_addr().unwrap(), other.local_addr().unwrap());
        let (level, file, ok, denied, bind) = in_thread(move || {
            let level = restrict_filesystem_and_network(&Policy::tcp_client(&[allowed_addr])).unwrap();
            (
                level,
                std::fs::File::open("/etc/passwd").map(drop),
                TcpStream::connect(allowed_addr).map(drop),
                TcpStream::connect(other_addr).map(drop),
                TcpListener::bind("127.0.0.1:0").map(drop),
            )
        });
        assert_eq!(level, LandlockLevel::Full, "this kernel is expected to support Landlock ABI 6");
        assert_eq!(file.unwrap_err().kind(), ErrorKind::PermissionDenied);
        ok.expect("the target port stays reachable");
        assert_eq!(denied.unwrap_err().kind(), ErrorKind::PermissionDenied);
        assert_eq!(bind.unwrap_err().kind(), ErrorKind::PermissionDenied);
        // The rest of the process is untouched.
        std::fs::File::open("/etc/passwd").unwrap();
    }

    #[test]
    fn seccomp_allows_tcp_and_threads_and_denies_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let results = in_thread(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let filter = seccomp_filter(&Policy::tcp_client(&[addr]), own_pid()).unwrap();
            seccompiler::apply_filter(&filter).unwrap();
            let connected = runtime.block_on(tokio::net::TcpStream::connect(addr)).map(drop);
            let thread = std::thread::spawn(|| 7).join().ok();
            let unix = socket(AddressFamily::Unix, SockType::Stream, SockFlag::empty(), None).map(drop);
            let udp = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::empty(), None).map(drop);
            let file = std::fs::File::open("/etc/passwd").map(drop);
            let spawn = std::process::Command::new("/bin/true").status().map(drop);
            let bind = TcpListener::bind("127.0.0.1:0").map(drop);
            (connected, thread, unix, udp, file, spawn, bind)
        });
        let (connected, thread, unix, udp, file, spawn, bind) = results;
        connected.expect("TCP to the target works under the filter");
        assert_eq!(thread, Some(7), "threads still start (clone3 falls back to clone)");
        assert_eq!(unix, Err(Errno::ENOSYS));
        assert_eq!(udp, Err(Errno::ENOSYS));
        assert_eq!(file.unwrap_err().raw_os_error(), Some(libc::ENOSYS));
        assert!(spawn.is_err(), "no new process");
        assert_eq!(bind.unwrap_err().raw_os_error(), Some(libc::ENOSYS));
    }

    #[test]
    fn browser_confinement_keeps_to_the_profile_and_the_system() {
        let base = std::env::temp_dir().join(format!("guacr-confine-{}", std::process::id()));
        let (profile, other) = (base.join("profile"), base.join("other-session"));
        std::fs::create_dir_all(&profile).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("cookies"), "secret").unwrap();
        let inside = profile.clone();
        let (level, own, system, foreign, write_outside, bin) = in_thread(move || {
            let level = confine_browser(&inside).unwrap();
            let own = std::fs::write(inside.join("state"), "x").and_then(|_| std::fs::read(inside.join("state")));
            (
                level,
                own,
                std::fs::read("/etc/hostname").map(drop),
                std::fs::read(other.join("cookies")).map(drop),
                std::fs::write(other.join("planted"), "x"),
                std::process::Command::new("/bin/true").status().map(|s| s.success()),
            )
        });
        assert_eq!(level, LandlockLevel::Full);
        assert_eq!(own.unwrap(), b"x");
        system.expect("system files stay readable");
        assert_eq!(foreign.unwrap_err().kind(), ErrorKind::PermissionDenied, "another session's profile");
        assert_eq!(write_outside.unwrap_err().kind(), ErrorKind::PermissionDenied);
        assert!(bin.unwrap(), "programs beneath /usr and /bin still run");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn read_and_write_paths_open_only_their_directories() {
        let base = std::env::temp_dir().join(format!("guacr-paths-{}", std::process::id()));
        let (read, write) = (base.join("downloads"), base.join("uploads"));
        std::fs::create_dir_all(&read).unwrap();
        std::fs::create_dir_all(&write).unwrap();
        std::fs::write(read.join("file"), "down").unwrap();
        let policy = Policy { read_paths: vec![read.clone()], write_paths: vec![write.clone()], ..Policy::default() };
        let (r, w) = (read.clone(), write.clone());
        let (level, got, created, write_in_read, outside) = in_thread(move || {
            let level = restrict_filesystem_and_network(&policy).unwrap();
            (
                level,
                std::fs::read(r.join("file")),
                std::fs::write(w.join("new"), "up"),
                std::fs::write(r.join("new"), "x"),
                std::fs::read("/etc/hostname").map(drop),
            )
        });
        assert_eq!(level, LandlockLevel::Full);
        assert_eq!(got.unwrap(), b"down");
        created.expect("files can be created beneath write_paths");
        assert_eq!(write_in_read.unwrap_err().kind(), ErrorKind::PermissionDenied);
        assert_eq!(outside.unwrap_err().kind(), ErrorKind::PermissionDenied);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn sandbox_refuses_a_multithreaded_process() {
        // The test harness runs several threads: applying the sandbox here must refuse, not half-apply.
        let keep = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(500)));
        assert!(matches!(sandbox(&Policy::default()), Err(SandboxError::Threads(n)) if n > 1));
        keep.join().unwrap();
    }

    #[test]
    fn policy_for_a_tcp_client() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:5901".parse().unwrap(), "[::1]:5901".parse().unwrap()];
        assert_eq!(Policy::tcp_client(&addrs), Policy { connect_ports: vec![5901], ..Policy::default() });
        assert!(resolve("127.0.0.1", 5900).unwrap().contains(&"127.0.0.1:5900".parse().unwrap()));
        assert!(resolve("no-such-host.invalid", 1).is_err());
    }
}
