//! The browser keeper: `guacr-worker-rbi --browser-keeper`, started by the worker before the worker
//! sandboxes itself. It exists so that neither Chromium nor its profile can outlive the session, however
//! the worker ends (clean exit, crash, SIGKILL from the supervisor), while the worker itself keeps a
//! seccomp filter that forbids starting, signalling or deleting anything.
//!
//! 1. Takes its descriptors: 3 and 4 are Chromium's `--remote-debugging-pipe` ends (inherited by
//!    Chromium as they are), 5 is the lifeline: the read end of a pipe whose only write end the worker
//!    holds, so end of file on it means the worker is gone.
//! 2. Becomes a child subreaper, so Chromium's daemonised helpers (`chrome_crashpad_handler` leaves the
//!    process group and would be re-parented to init) are re-parented to the keeper instead.
//! 3. Confines itself with [`worker_common::confine_browser`] (Landlock: system directories read-only,
//!    the profile directory only, no TCP bind, signals and abstract sockets scoped), which Chromium
//!    inherits, then starts Chromium in its own process group with `HOME` and `TMPDIR` inside the profile.
//! 4. Waits until the worker is gone or Chromium has exited, then kills Chromium's process group and every
//!    remaining descendant, reaps them all and removes the profile directory. Meanwhile a thread removes
//!    stale profiles of earlier sessions whose keeper was killed.
//!
//! The worker starts the keeper in its own process group, so a SIGKILL aimed at guacr's or the worker's
//! group does not reach it.
//!
//! The keeper lives in the session's cgroup like everything the worker starts, so `memory.max` bounds
//! Chromium too.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{error, info, warn};

/// The first argument that selects the keeper.
pub const FLAG: &str = "--browser-keeper";
/// Chromium reads CDP commands from this descriptor (`--remote-debugging-pipe`).
pub const CDP_IN_FD: i32 = 3;
/// Chromium writes CDP answers and events to this descriptor.
pub const CDP_OUT_FD: i32 = 4;
/// The read end of the worker's lifeline pipe.
pub const LIFELINE_FD: i32 = 5;
/// How long the keeper tries to kill and reap Chromium's processes.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

enum Event {
    Started(u32),
    Failed,
    WorkerGone,
    BrowserExited(String),
}

/// Entry point; returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    let mut profile: Option<PathBuf> = None;
    let mut level = "info".to_string();
    let mut rest = args.into_iter();
    let mut command = Vec::new();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--profile" => profile = rest.next().map(PathBuf::from),
            "--log" => level = rest.next().unwrap_or(level),
            "--" => {
                command = rest.by_ref().collect();
                break;
            }
            _ => {
                eprintln!("guacr-worker-rbi {FLAG}: unknown argument {arg}; this program is started by guacr");
                return worker_common::EXIT_USAGE;
            }
        }
    }
    init_logging(&level);
    let (Some(profile), Some((browser, browser_args))) = (profile, command.split_first()) else {
        error!("Browser keeper needs --profile DIR -- BROWSER ARGS...");
        return worker_common::EXIT_USAGE;
    };
    let lifeline = match shm_proto::inherited_fd(LIFELINE_FD) {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %e, "Browser keeper started without its lifeline; it is started by the rbi worker only");
            return worker_common::EXIT_USAGE;
        }
    };
    let code = keep(&profile, browser, browser_args, File::from(lifeline), &level);
    remove_profile(&profile);
    code
}

fn keep(profile: &Path, browser: &str, args: &[String], lifeline: File, level: &str) -> i32 {
    // Chromium must not inherit the lifeline, or it would keep the pipe open for a dead worker's sake.
    if let Err(e) = nix::fcntl::fcntl(&lifeline, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)) {
        error!(error = %e, "Cannot mark the lifeline close-on-exec");
        return 1;
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        error!(error = %e, "Cannot become a child subreaper");
        return 1;
    }
    let home = profile.join("home");
    let mut command = Command::new(browser);
    command
        .args(args)
        .env_clear()
        .env("HOME", &home)
        .env("TMPDIR", profile.join("tmp"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // Its own process group: one signal reaches the browser and the helpers it forks.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let browser_tx = tx.clone();
    let profile_dir = profile.to_path_buf();
    let browser_name = browser.to_string();
    // Landlock binds the calling thread and what it starts: the browser thread confines itself and
    // starts Chromium, which inherits the domain; the main thread stays free to remove the profile
    // directory itself (removing it needs rights on its parent, which the browser must not have).
    let browser_thread = std::thread::Builder::new().name("browser".into()).spawn(move || {
        let mut child = match start_browser(&profile_dir, &browser_name, command) {
            Ok(child) => child,
            Err(()) => {
                let _ = browser_tx.send(Event::Failed);
                return;
            }
        };
        let _ = browser_tx.send(Event::Started(child.id()));
        let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| format!("unknown ({e})"));
        let _ = browser_tx.send(Event::BrowserExited(status));
    });
    if let Err(e) = browser_thread {
        error!(error = %e, "Cannot start the browser thread");
        return 1;
    }
    let Ok(Event::Started(pid)) = rx.recv() else { return 1 };
    // Only Chromium holds its pipe ends now: when it dies, the worker reads end of file at once.
    for fd in [CDP_IN_FD, CDP_OUT_FD] {
        drop(shm_proto::inherited_fd(fd));
    }
    info!(pid, "Browser started");
    if let Some(parent) = profile.parent().map(Path::to_path_buf) {
        // Off the waiting path: a sweep of many stale profiles takes seconds.
        let _ = std::thread::Builder::new().name("sweep".into()).spawn(move || sweep_stale_profiles(&parent));
    }
    let lifeline_tx = tx;
    let spawned = std::thread::Builder::new().name("lifeline".into()).spawn(move || {
        let mut lifeline = lifeline;
        let mut buf = [0u8; 64];
        // Nothing is ever written: a read returns only at end of file (or on an error, equally final).
        while matches!(lifeline.read(&mut buf), Ok(n) if n > 0) {}
        let _ = lifeline_tx.send(Event::WorkerGone);
    });
    if spawned.is_err() {
        error!("Cannot start the lifeline thread");
    } else {
        match rx.recv() {
            Ok(Event::BrowserExited(status)) => {
                warn!(%status, after_ms = started.elapsed().as_millis() as u64, "Browser exited");
                log_browser_tail(profile, level);
            }
            _ => info!("Session over; stopping the browser"),
        }
    }
    stop_everything(pid);
    0
}

/// Logs like every worker (plain lines on stderr, relayed by the supervisor), but a write that fails is
/// dropped: the keeper outlives the worker and may outlive the supervisor, whose end of the log pipe is
/// then closed, and the default writer's fallback (`eprintln!`) would panic the keeper before it cleans up.
fn init_logging(level: &str) {
    struct Stderr;
    impl std::io::Write for Stderr {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = std::io::stderr().write_all(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

/// On the browser thread: Landlock for this thread (inherited by Chromium), then Chromium itself.
fn start_browser(profile: &Path, browser: &str, mut command: Command) -> Result<std::process::Child, ()> {
    match worker_common::confine_browser(profile) {
        Ok(level) => info!(landlock = ?level, "Browser confined"),
        Err(e) => {
            error!(error = %e, "Cannot confine the browser");
            return Err(());
        }
    }
    let log =
        File::create(profile.join("chromium.log")).map_err(|e| error!(error = %e, "Cannot create the browser log"))?;
    command.stderr(log);
    command.spawn().map_err(|e| error!(error = %e, browser, "Cannot start the browser"))
}

/// Chromium's last lines of interest after an unexpected exit (its log is mostly D-Bus noise).
fn log_browser_tail(profile: &Path, level: &str) {
    let Ok(log) = std::fs::read_to_string(profile.join("chromium.log")) else { return };
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| level.contains("debug") || !(l.contains("dbus") || l.contains("DBus") || l.trim().is_empty()))
        .collect();
    for line in &lines[lines.len().saturating_sub(8)..] {
        let line: String = line.chars().take(300).collect();
        warn!(browser = %line);
    }
}

/// Kills Chromium's process group, then every descendant re-parented to us, and reaps them all.
fn stop_everything(pid: u32) {
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGKILL);
    let deadline = Instant::now() + CLEANUP_TIMEOUT;
    let me = std::process::id();
    loop {
        for child in children_of(me) {
            let _ = kill(Pid::from_raw(child as i32), Signal::SIGKILL);
        }
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(nix::errno::Errno::ECHILD) => return,
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            _ => {}
        }
        if Instant::now() > deadline {
            warn!(left = ?children_of(me), "Browser processes still running after the clean-up timeout");
            return;
        }
    }
}

/// Processes whose parent is `parent`, from `/proc/*/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_of(&stat))
                .is_some_and(|ppid| ppid == parent)
        })
        .collect()
}

/// The parent pid from a `/proc/PID/stat` line (the command name may hold spaces and parentheses).
fn parent_of(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// Removes profiles whose worker is gone: each keeper removes its own, this catches a keeper that was
/// killed too (a whole cgroup killed, a reboot without a tmpfs `/tmp`). The name carries the worker's pid
/// (`guacr-rbi-<pid>-<ns>`); a profile whose pid is alive is left alone, whoever holds that pid now.
fn sweep_stale_profiles(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix("guacr-rbi-")?.split('-').next()?.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() && std::fs::remove_dir_all(entry.path()).is_ok() {
            info!(path = %entry.path().display(), "Removed a stale browser profile");
        }
    }
}

fn remove_profile(profile: &Path) {
    match std::fs::remove_dir_all(profile) {
        Ok(()) => info!(path = %profile.display(), "Browser profile removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => error!(path = %profile.display(), error = %e, "Cannot remove the browser profile"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parent_from_stat() {
        assert_eq!(super::parent_of("12 (chro me) (x)) S 7 12 12 0"), Some(7));
        assert_eq!(super::parent_of("garbage"), None);
    }
}
