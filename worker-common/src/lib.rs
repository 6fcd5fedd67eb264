#![doc = include_str!("../README.md")]

use std::time::Duration;

pub mod sandbox;
pub use sandbox::{
    confine_browser, resolve, resolve_off_thread, sandbox, LandlockLevel, Policy, SandboxError, SandboxProfile,
    Sandboxed, BROWSER_NOFILE,
};

use nix::sys::resource::{setrlimit, Resource};
use shm_proto::{ControlChannel, FrameWriter, FromWorker, ShmError, ToWorker};

/// How often a worker says it is alive without being asked.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    #[error("usage: {0}")]
    Usage(String),
    #[error("inherited descriptor {fd} is missing: {source}")]
    MissingFd { fd: i32, source: nix::Error },
    #[error("shared memory: {0}")]
    Shm(#[from] ShmError),
    #[error("control channel: {0}")]
    Control(#[from] shm_proto::ControlError),
    #[error("lock-down step {step} failed: {source}")]
    Lockdown { step: &'static str, source: nix::Error },
    #[error("supervisor (pid {expected}) is gone")]
    Orphaned { expected: i32 },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
}

/// Command-line of a worker, as the supervisor writes it.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    pub session_id: String,
    pub supervisor_pid: i32,
    pub log_level: String,
    /// Address-space limit in bytes.
    pub max_memory: u64,
}

impl WorkerArgs {
    /// Parses `--session ID --parent PID [--log LEVEL] [--max-memory BYTES]`.
    pub fn from_env() -> Result<WorkerArgs, WorkerError> {
        Self::parse(std::env::args().skip(1))
    }

    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<WorkerArgs, WorkerError> {
        let mut parsed =
            WorkerArgs { session_id: String::new(), supervisor_pid: 0, log_level: "info".into(), max_memory: 1 << 30 };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| WorkerError::Usage(format!("{flag} needs a value")))?;
            let bad = || WorkerError::Usage(format!("bad value for {flag}"));
            match flag.as_str() {
                "--session" => parsed.session_id = value,
                "--parent" => parsed.supervisor_pid = value.parse().map_err(|_| bad())?,
                "--log" => parsed.log_level = value,
                "--max-memory" => parsed.max_memory = value.parse().map_err(|_| bad())?,
                _ => return Err(WorkerError::Usage(format!("unknown flag {flag}; this program is started by guacr"))),
            }
        }
        if parsed.session_id.is_empty() || parsed.supervisor_pid <= 0 {
            return Err(WorkerError::Usage(
                "--session and --parent are required; this program is started by guacr".into(),
            ));
        }
        Ok(parsed)
    }
}

/// Logs go to stderr as plain lines; the supervisor re-emits each line inside the session's span.
pub fn init_logging(level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

/// Locks the process down before it talks to any remote server: dies with the supervisor, cannot gain
/// privileges through exec, bounded memory and descriptors, no core dumps (a core would hold credentials
/// and screen contents).
pub fn lockdown(args: &WorkerArgs) -> Result<(), WorkerError> {
    lockdown_with(args, SandboxProfile::RemoteClient)
}

/// [`lockdown`] for the given profile. `Browser` leaves the address space unlimited (V8 and
/// PartitionAlloc reserve terabytes of address space; the session's cgroup `memory.max` bounds what they
/// use) and allows [`BROWSER_NOFILE`] descriptors, because the browser inherits these limits; the worker
/// takes the client limits itself once the browser runs ([`confine_browser_worker`]).
pub fn lockdown_with(args: &WorkerArgs, profile: SandboxProfile) -> Result<(), WorkerError> {
    use nix::sys::prctl;
    prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|source| WorkerError::Lockdown { step: "pdeathsig", source })?;
    // The supervisor may have died between fork and prctl; then we were re-parented already.
    if nix::unistd::getppid().as_raw() != args.supervisor_pid {
        return Err(WorkerError::Orphaned { expected: args.supervisor_pid });
    }
    let limit = |resource, value: u64, step| {
        setrlimit(resource, value, value).map_err(|source| WorkerError::Lockdown { step, source })
    };
    limit(Resource::RLIMIT_CORE, 0, "rlimit core")?;
    match profile {
        SandboxProfile::RemoteClient => {
            limit(Resource::RLIMIT_NOFILE, 64, "rlimit nofile")?;
            limit(Resource::RLIMIT_AS, args.max_memory, "rlimit as")?;
        }
        SandboxProfile::Browser => limit(Resource::RLIMIT_NOFILE, BROWSER_NOFILE, "rlimit nofile")?,
    }
    prctl::set_no_new_privs().map_err(|source| WorkerError::Lockdown { step: "no_new_privs", source })?;
    prctl::set_dumpable(false).map_err(|source| WorkerError::Lockdown { step: "dumpable", source })?;
    Ok(())
}

/// The browser worker's own lock-down, once its browser runs (the browser keeps the limits it was started
/// with): the client profile's rlimits (64 descriptors, `max_memory` of address space), then [`sandbox`]
/// with `policy`: no TCP and no files (an empty [`Policy`]), or reading beneath the browser's download
/// directory only. Must run single-threaded.
pub fn confine_browser_worker(args: &WorkerArgs, policy: &Policy) -> Result<Sandboxed, WorkerError> {
    let limit = |resource, value: u64, step| {
        setrlimit(resource, value, value).map_err(|source| WorkerError::Lockdown { step, source })
    };
    limit(Resource::RLIMIT_NOFILE, 64, "rlimit nofile")?;
    limit(Resource::RLIMIT_AS, args.max_memory, "rlimit as")?;
    Ok(sandbox(policy)?)
}

/// What the supervisor's `ToWorker::Start` carries.
#[derive(Debug, Clone)]
pub struct Start {
    pub session_id: String,
    pub params: shm_proto::control::Params,
    /// The client's display size and resolution.
    pub width: u32,
    pub height: u32,
    pub dpi: u32,
    /// The audio mimetypes the client listed in its handshake (validated by the supervisor).
    pub audio_mimetypes: Vec<String>,
}

/// What a worker's `Settings::from_params` found besides the settings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notes {
    /// Parameters that were set but are not implemented (reported once each to the supervisor).
    pub unsupported: Vec<&'static str>,
    /// Values we could not use as given (logged).
    pub warnings: Vec<String>,
}

/// The worker's two channels to the supervisor.
pub struct WorkerSession {
    pub control: ControlChannel,
    pub frames: FrameWriter,
}

impl WorkerSession {
    /// Takes the descriptors at their fixed numbers. Must run inside a tokio runtime.
    pub fn attach() -> Result<WorkerSession, WorkerError> {
        let take = |fd| shm_proto::inherited_fd(fd).map_err(|source| WorkerError::MissingFd { fd, source });
        let control = ControlChannel::new(take(shm_proto::WORKER_CONTROL_FD)?)?;
        let frames = FrameWriter::attach(take(shm_proto::WORKER_SHM_FD)?)?;
        Ok(WorkerSession { control, frames })
    }

    /// Waits for the `Start` message, answering heartbeats meanwhile. `None` if told to shut down.
    pub async fn wait_for_start(&self) -> Result<Option<ToWorker>, WorkerError> {
        loop {
            match self.control.recv::<ToWorker>().await? {
                Some(start @ ToWorker::Start { .. }) => return Ok(Some(start)),
                Some(ToWorker::Heartbeat) => self.control.send(&FromWorker::Heartbeat).await?,
                Some(ToWorker::Shutdown) | None => return Ok(None),
                Some(_) => {} // input before start is dropped, never a crash
            }
        }
    }

    /// Attaches to the supervisor and waits for its `Start`: what every worker does first. `Err` carries
    /// the exit code when there is no session to run (0: told to shut down; 1: no usable channel).
    pub async fn begin() -> Result<(WorkerSession, Start), i32> {
        let session = WorkerSession::attach().map_err(|error| {
            tracing::error!(%error, "Cannot attach to the supervisor");
            1
        })?;
        match session.wait_for_start().await {
            Ok(Some(ToWorker::Start { session_id, params, width, height, dpi, audio_mimetypes })) => {
                Ok((session, Start { session_id, params, width, height, dpi, audio_mimetypes }))
            }
            Ok(_) => Err(0),
            Err(error) => {
                tracing::error!(%error, "Control channel failed before start");
                Err(1)
            }
        }
    }

    /// [`begin`](Self::begin), then the start parameters read by `parse`: an error fails the session with
    /// `status` and "`{failure}: {error}`", warnings are logged, unsupported parameters reported. `Err`
    /// carries the exit code.
    pub async fn begin_with<S, E: std::fmt::Display>(
        status: u16,
        failure: &str,
        parse: impl FnOnce(&shm_proto::control::Params) -> Result<(S, Notes), E>,
    ) -> Result<(WorkerSession, Start, S), i32> {
        let (session, start) = WorkerSession::begin().await?;
        let (settings, notes) = match parse(&start.params) {
            Ok(parsed) => parsed,
            Err(e) => {
                session.fail(status, format!("{failure}: {e}")).await;
                return Err(EXIT_REPORTED);
            }
        };
        for warning in &notes.warnings {
            tracing::warn!("{warning}");
        }
        session.report_unsupported(&notes.unsupported).await?;
        Ok((session, start, settings))
    }

    /// Drives `work` (connecting to the remote server) while serving the control channel: heartbeats are
    /// answered and sent, the newest client resize is remembered, other input is dropped (guacd crashes
    /// on input that arrives this early). `Err(exit code)` when told to shut down or the supervisor is gone.
    pub async fn serve_while<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<(T, Option<(u32, u32)>), i32> {
        tokio::pin!(work);
        let mut heartbeat = heartbeat_timer();
        let mut resized = None;
        loop {
            tokio::select! {
                result = &mut work => return Ok((result, resized)),
                message = self.control.recv::<ToWorker>() => match message {
                    Ok(Some(ToWorker::Heartbeat)) => self.control.send(&FromWorker::Heartbeat).await.map_err(|_| 1)?,
                    Ok(Some(ToWorker::Resize { width, height })) if width > 0 && height > 0 => {
                        resized = Some((width, height));
                    }
                    Ok(Some(ToWorker::Shutdown) | None) => return Err(0),
                    Ok(Some(_)) => {}
                    Err(error) => return Err(control_failed(&error)),
                },
                _ = heartbeat.tick() => self.control.send(&FromWorker::Heartbeat).await.map_err(|_| 1)?,
            }
        }
    }

    /// Names the set parameters this worker ignores; the supervisor logs each once. `Err(1)` when the
    /// supervisor is gone.
    pub async fn report_unsupported(&self, parameters: &[&'static str]) -> Result<(), i32> {
        for parameter in parameters {
            let message = FromWorker::Unsupported { parameter: (*parameter).into() };
            self.control.send(&message).await.map_err(|_| 1)?;
        }
        Ok(())
    }

    /// Publishes pending damage if the supervisor has released the front, and wakes it.
    pub async fn publish(&mut self) -> Result<(), WorkerError> {
        if let Some(seq) = self.frames.try_publish() {
            self.control.send(&FromWorker::Published { seq }).await?;
        }
        Ok(())
    }

    /// Publishes pending damage, then tells the supervisor that the remote server ended the session.
    /// Returns the exit code: 0, or 1 when the supervisor is gone.
    pub async fn close(&mut self, message: String) -> i32 {
        let _ = self.publish().await;
        match self.control.send(&FromWorker::Closed { message }).await {
            Ok(()) => 0,
            Err(_) => 1,
        }
    }

    /// Reports a fatal error with a Guacamole status code. The caller exits afterwards.
    pub async fn fail(&self, status: u16, message: impl Into<String>) {
        let message = message.into();
        tracing::error!(status, %message, "Session failed");
        let _ = self.control.send(&FromWorker::Failed { status, message }).await;
    }
}

/// The whole `main` of a worker binary: arguments, logging, lock-down before anything else, then `run` on a
/// single-threaded runtime (the sandbox requires one thread); exits with what `run` returns.
pub fn run_worker<F, Fut>(program: &str, run: F) -> !
where
    F: FnOnce(WorkerArgs) -> Fut,
    Fut: std::future::Future<Output = i32>,
{
    run_worker_with(program, SandboxProfile::RemoteClient, run)
}

/// [`run_worker`] with the lock-down of the given profile.
pub fn run_worker_with<F, Fut>(program: &str, profile: SandboxProfile, run: F) -> !
where
    F: FnOnce(WorkerArgs) -> Fut,
    Fut: std::future::Future<Output = i32>,
{
    let args = match WorkerArgs::from_env() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    init_logging(&args.log_level);
    // Before any network activity: the remote server is hostile.
    if let Err(error) = lockdown_with(&args, profile) {
        tracing::error!(%error, "Lock-down failed");
        std::process::exit(1);
    }
    // I/O and timers only: no signal or process driver, whose self-pipe would be one more descriptor.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "Cannot start the runtime");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(run(args));
    std::process::exit(code)
}

/// The control socket was reset: the supervisor is gone, nothing to report to (a seqpacket peer that
/// closed with our messages unread reports ECONNRESET instead of end of file).
pub fn supervisor_gone(error: &shm_proto::ControlError) -> bool {
    matches!(error, shm_proto::ControlError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// The exit code for a control channel that failed: 0 when the supervisor is gone ([`supervisor_gone`]),
/// else 1, after logging the error.
pub fn control_failed(error: &shm_proto::ControlError) -> i32 {
    if supervisor_gone(error) {
        return 0;
    }
    tracing::error!(%error, "Control channel failed");
    1
}

/// Ticks every [`HEARTBEAT_INTERVAL`]; a late tick is not made up for in a burst.
pub fn heartbeat_timer() -> tokio::time::Interval {
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat
}

/// Exit code for a worker that ended because of an error it already reported.
pub const EXIT_REPORTED: i32 = 2;
/// Exit code for a worker started wrongly (not by the supervisor).
pub const EXIT_USAGE: i32 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse() {
        let a =
            WorkerArgs::parse(["--session", "$x", "--parent", "12", "--max-memory", "100"].map(String::from)).unwrap();
        assert_eq!((a.session_id.as_str(), a.supervisor_pid, a.max_memory), ("$x", 12, 100));
        assert!(WorkerArgs::parse(["--session".to_string()]).is_err());
        assert!(WorkerArgs::parse(Vec::<String>::new()).is_err());
        assert!(WorkerArgs::parse(["--bogus", "1"].map(String::from)).is_err());
    }
}
