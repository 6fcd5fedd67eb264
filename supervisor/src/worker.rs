//! Spawning a worker: a fresh exec of a per-protocol binary with a clean environment and exactly the
//! descriptors DESIGN.md lists (0 = /dev/null, 1 = /dev/null, 2 = log pipe, 3 = control socket, 4 = memfd).
//! Everything else the supervisor holds is close-on-exec, so it never reaches a worker.

use std::path::Path;
use std::process::Stdio;

use command_fds::{CommandFdExt, FdMapping};
use shm_proto::{ControlChannel, FrameReader, Geometry, SharedRegion};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("worker binary {path} is missing or not executable: {source}")]
    Exec { path: String, source: std::io::Error },
    #[error("creating the shared memory failed: {0}")]
    Shm(#[from] shm_proto::ShmError),
    #[error("creating the control socket failed: {0}")]
    Socket(std::io::Error),
    #[error("placing descriptors failed: {0}")]
    Descriptors(String),
}

/// A running worker and the supervisor's ends of its channels.
pub struct Worker {
    pub child: Child,
    pub pid: u32,
    pub control: ControlChannel,
    pub frames: FrameReader,
    /// The session's cgroup, removed once the worker is gone.
    pub cgroup: Option<crate::jail::SessionCgroup>,
}

pub struct SpawnOptions<'a> {
    pub binary: &'a Path,
    pub session_id: &'a str,
    pub geometry: Geometry,
    pub log_level: &'a str,
    pub max_memory_bytes: u64,
}

pub fn spawn(options: SpawnOptions<'_>) -> Result<Worker, SpawnError> {
    let (frames, memfd) = SharedRegion::create(options.geometry)?;
    let (ours, theirs) = ControlChannel::pair().map_err(SpawnError::Socket)?;
    let mut command = Command::new(options.binary);
    command
        .env_clear()
        .arg("--session")
        .arg(options.session_id)
        .arg("--parent")
        .arg(std::process::id().to_string())
        .arg("--log")
        .arg(options.log_level)
        .arg("--max-memory")
        .arg(options.max_memory_bytes.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mappings = vec![
        FdMapping { parent_fd: theirs, child_fd: shm_proto::WORKER_CONTROL_FD },
        FdMapping { parent_fd: memfd, child_fd: shm_proto::WORKER_SHM_FD },
    ];
    if let Some(identity) = crate::jail::identity() {
        // Exec'd straight into the unprivileged user (std also clears supplementary groups when root).
        command.uid(identity.uid).gid(identity.gid);
    }
    command.fd_mappings(mappings).map_err(|e| SpawnError::Descriptors(e.to_string()))?;
    let mut child =
        command.spawn().map_err(|source| SpawnError::Exec { path: options.binary.display().to_string(), source })?;
    // The worker's copies of the descriptors live in `command` until it is dropped: drop it now so the
    // supervisor keeps only its own ends (a dead worker then shows as EOF on the control socket).
    drop(command);
    let pid = child.id().unwrap_or(0);
    // Before the worker gets its `Start`, so everything it does with the remote server is limited.
    let cgroup = crate::jail::place(pid, options.session_id);
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(relay_logs(stderr).in_current_span());
    }
    let control = ControlChannel::new(ours).map_err(SpawnError::Socket)?;
    Ok(Worker { child, pid, control, frames, cgroup })
}

/// Re-emits the worker's log lines inside the session's span, at the level the worker gave them.
async fn relay_logs(stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line: String = line.chars().take(2048).collect();
        let trimmed = line.trim_start();
        let (level, text) = trimmed.split_once(' ').unwrap_or(("", trimmed));
        match level {
            "ERROR" => tracing::error!(worker = text.trim_start()),
            "WARN" => tracing::warn!(worker = text.trim_start()),
            "INFO" => tracing::info!(worker = text.trim_start()),
            "DEBUG" => tracing::debug!(worker = text.trim_start()),
            "TRACE" => tracing::trace!(worker = text.trim_start()),
            _ => tracing::info!(worker = trimmed),
        }
    }
}

/// Kills a worker (SIGKILL) and reaps it.
pub async fn kill(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}
