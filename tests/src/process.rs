//! Runs the guacr supervisor for one test.
//!
//! Binaries are taken from the cargo target directory the test executable lives in
//! (`target/<profile>/deps/<test>` → `target/<profile>/guacr`), or from `GUACR_BIN`. Build them
//! first: `cargo build --workspace --bins` (scripts/test.sh does).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::kill;
pub use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// How long [`GuacrProcess`] waits for the port to accept.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop`/`Drop` waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The directory holding the workspace's binaries: `GUACR_BIN`'s directory if set, else the parent
/// of the test executable's `deps/` directory.
pub fn bin_dir() -> PathBuf {
    if let Some(bin) = std::env::var_os("GUACR_BIN").filter(|v| !v.is_empty()) {
        if let Some(dir) = Path::new(&bin).parent() {
            return dir.to_path_buf();
        }
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("test executable has a directory");
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of the `guacr` supervisor binary (`GUACR_BIN` if set).
pub fn guacr_bin() -> PathBuf {
    match std::env::var_os("GUACR_BIN").filter(|v| !v.is_empty()) {
        Some(b) => PathBuf::from(b),
        None => bin_dir().join("guacr"),
    }
}

/// Directory for per-test logs (`<bin_dir>/test-logs`), created on demand.
pub fn log_dir() -> PathBuf {
    bin_dir().join("test-logs")
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// True when some socket listens on 127.0.0.1:`port` or 0.0.0.0:`port` (from /proc/net/tcp).
pub fn port_listening(port: u16) -> bool {
    let Ok(tcp) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let want = [format!("0100007F:{port:04X}"), format!("00000000:{port:04X}")];
    tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[3] == "0A" && want.iter().any(|w| w == f[1])
    })
}

/// True when process `pid` itself holds a listening TCP socket on 127.0.0.1:`port` or 0.0.0.0:`port`.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(tcp) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = [format!("0100007F:{port:04X}"), format!("00000000:{port:04X}")];
    let inodes: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[3] == "0A" && local.iter().any(|w| w == f[1])).then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}

/// Builder for [`GuacrProcess`].
#[derive(Clone, Debug)]
pub struct GuacrBuilder {
    bin: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log_level: String,
    ready_timeout: Duration,
    /// Serve the HTTP entry (web client, tunnel, metrics) on a free port; off otherwise.
    http: bool,
}

impl Default for GuacrBuilder {
    fn default() -> Self {
        GuacrBuilder {
            bin: guacr_bin(),
            args: Vec::new(),
            envs: Vec::new(),
            log_level: "debug".into(),
            ready_timeout: READY_TIMEOUT,
            http: false,
        }
    }
}

impl GuacrBuilder {
    /// Another binary instead of [`guacr_bin`].
    pub fn bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.bin = path.into();
        self
    }

    /// An extra argument after `-f -b 127.0.0.1 -l PORT -L LEVEL`.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs.push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// `-L` value (default `debug`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_owned();
        self
    }

    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }

    /// Also serve the HTTP entry, on a free port of 127.0.0.1 ([`GuacrProcess::http_addr`]). Without
    /// this, guacr runs with `--http-bind off`, so parallel tests never fight over guacr's default 8080.
    pub fn http(mut self) -> Self {
        self.http = true;
        self
    }

    /// Starts guacr on a free port and waits until it listens. Tries up to 3 ports if guacr exits
    /// early (another process may have taken the port in between).
    pub fn start(&self) -> Result<GuacrProcess> {
        if !self.bin.is_file() {
            bail!(
                "guacr binary not found at {}; build it with `cargo build --workspace --bins` \
                 (or set GUACR_BIN)",
                self.bin.display()
            );
        }
        let mut last_err = None;
        for _ in 0..3 {
            match self.start_once() {
                Ok(p) => return Ok(p),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one try"))
    }

    fn start_once(&self) -> Result<GuacrProcess> {
        let port = free_port()?;
        let http_port = if self.http { Some(free_port()?) } else { None };
        let dir = log_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let test = std::thread::current()
            .name()
            .unwrap_or("test")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect::<String>();
        let log_path = dir.join(format!("guacr-{test}-{port}.log"));
        let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-f", "-b", "127.0.0.1", "-l"])
            .arg(port.to_string())
            .arg("-L")
            .arg(&self.log_level)
            .arg("--http-bind")
            .arg(http_port.map_or_else(|| "off".to_string(), |p| format!("127.0.0.1:{p}")))
            .args(&self.args)
            .env("RUST_BACKTRACE", "1")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Own process group, so leftover workers can be killed with the group.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().with_context(|| format!("spawning {}", self.bin.display()))?;
        let mut p = GuacrProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            http_addr: http_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            log_path,
            exit: None,
        };
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            // Ours, not merely someone's: a concurrent test may have drawn the same free port.
            let pid = p.child.id();
            if listens_on(pid, port) && http_port.is_none_or(|h| listens_on(pid, h)) {
                return Ok(p);
            }
            if let Some(status) = p.try_exit_status() {
                bail!(
                    "guacr exited with {status} before listening on {}; log {}:\n{}",
                    p.addr,
                    p.log_path.display(),
                    p.log_tail(30)
                );
            }
            if Instant::now() > deadline {
                let tail = p.log_tail(30);
                p.stop();
                bail!(
                    "guacr did not listen on {} within {:?}; log {}:\n{tail}",
                    p.addr,
                    self.ready_timeout,
                    p.log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running guacr supervisor, stopped (SIGTERM, then SIGKILL of its process group) on drop.
#[derive(Debug)]
pub struct GuacrProcess {
    child: Child,
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Drop for GuacrProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

impl GuacrProcess {
    /// `guacr -f -b 127.0.0.1 -l <free port> -L debug`, waiting until it listens.
    pub fn start() -> Result<Self> {
        GuacrBuilder::default().start()
    }

    pub fn builder() -> GuacrBuilder {
        GuacrBuilder::default()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the HTTP entry listens (started with [`GuacrBuilder::http`]).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = self.log_contents();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Children of the supervisor whose executable name starts with `guacr-worker`.
    pub fn worker_pids(&self) -> Vec<u32> {
        let me = self.pid();
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Some((ppid, comm)) = proc_ppid_comm(pid) else {
                continue;
            };
            if ppid != me {
                continue;
            }
            let name = std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or(comm);
            if name.starts_with("guacr-worker") {
                out.push(pid);
            }
        }
        out.sort_unstable();
        out
    }

    /// Sends a signal to the supervisor.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid() as i32), sig).with_context(|| format!("kill -{sig} {}", self.pid()))
    }

    /// The exit status if it has exited (reaps it).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit_status() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL; afterwards SIGKILL to whatever is left
    /// in its process group and to its former workers. Returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.exit {
            return Some(s);
        }
        let pid = self.pid();
        let workers: Vec<(u32, String)> =
            self.worker_pids().into_iter().filter_map(|w| proc_starttime(w).map(|t| (w, t))).collect();
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        // Wait without reaping, so the process group ID stays reserved while we clean up.
        while !is_zombie_or_gone(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !is_zombie_or_gone(pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
        for (w, start) in &workers {
            if proc_starttime(*w).as_deref() == Some(start.as_str()) {
                let _ = kill(Pid::from_raw(*w as i32), Signal::SIGKILL);
            }
        }
        self.exit = self.child.wait().ok();
        // SIGKILL is delivered asynchronously: give the workers a moment to be gone.
        let deadline = Instant::now() + Duration::from_secs(2);
        while workers
            .iter()
            .any(|(w, start)| !is_zombie_or_gone(*w) && proc_starttime(*w).as_deref() == Some(start.as_str()))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.exit
    }
}

/// (ppid, comm) from /proc/PID/stat.
fn proc_ppid_comm(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let mut rest = stat[close + 1..].split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ppid, comm))
}

/// Field 22 (starttime) of /proc/PID/stat, to recognise a PID again.
fn proc_starttime(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    // Fields after "comm)" start at field 3; starttime is field 22.
    stat[close + 1..].split_whitespace().nth(19).map(str::to_owned)
}

fn is_zombie_or_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rfind(')').and_then(|c| stat[c + 1..].split_whitespace().next()).is_none_or(|s| s == "Z" || s == "X")
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_parsing() {
        let me = std::process::id();
        let (ppid, comm) = proc_ppid_comm(me).unwrap();
        assert!(ppid > 0);
        assert!(!comm.is_empty());
        assert!(proc_starttime(me).is_some());
        assert!(!is_zombie_or_gone(me));
    }

    #[test]
    fn bin_dir_is_parent_of_deps() {
        if std::env::var_os("GUACR_BIN").is_none() {
            let d = bin_dir();
            assert!(d.join("deps").is_dir(), "{}", d.display());
        }
    }

    /// A stand-in supervisor: a shell script that starts a "worker" (a copy of sleep named
    /// guacr-worker-fake) and then becomes a python listener on the `-l` port.
    #[test]
    fn starts_waits_finds_workers_and_kills_on_drop() {
        let dir = std::env::temp_dir().join(format!("guacr-tests-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let worker = dir.join("guacr-worker-fake");
        std::fs::copy("/bin/sleep", &worker).unwrap();
        let script = dir.join("fake-guacr");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"fake guacr $*\"\n'{}' 60 &\nexec python3 -c 'import socket,sys,time\n\
                 s=socket.socket(); s.bind((\"127.0.0.1\", int(sys.argv[1]))); s.listen(); time.sleep(60)' \"$5\"\n",
                worker.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

        let p = GuacrProcess::builder().bin(&script).start().unwrap();
        assert!(port_listening(p.addr().port()));
        let log = p.log_contents();
        assert!(log.contains("fake guacr -f -b 127.0.0.1 -l"), "{log}");
        assert!(log.contains("-L debug"), "{log}");
        let workers = p.worker_pids();
        assert_eq!(workers.len(), 1, "{workers:?}");
        let pid = p.pid();
        drop(p);
        assert!(is_zombie_or_gone(pid));
        assert!(is_zombie_or_gone(workers[0]));

        let e = GuacrProcess::builder().bin("/bin/false").start().unwrap_err();
        assert!(e.to_string().contains("before listening"), "{e}");
        let e = GuacrProcess::builder().bin(dir.join("missing")).start().unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The port stays bound by this test from start to end, so no other test running in
    /// parallel can take it between the checks (a listener dropped and then checked for absence
    /// once raced with the page server and fake peers binding port 0 in this same binary).
    #[tokio::test]
    async fn port_listening_sees_a_listener() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        assert!(!port_listening(port), "bound but not listening");
        assert!(!listens_on(std::process::id(), port), "bound but not listening");
        let l = socket.listen(1).unwrap();
        assert!(port_listening(port));
        assert!(listens_on(std::process::id(), port), "this process holds the listener");
        assert!(!listens_on(1, port), "pid 1 does not");
        drop(l);
    }
}
