//! What the supervisor does to jail a worker from the outside: the unprivileged uid it execs the worker
//! with (when guacr runs as root), and a cgroup v2 group per session with memory and CPU limits (where
//! the host delegates those controllers). The worker does the rest to itself after exec
//! (`worker_common::lockdown`, then `worker_common::sandbox`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use tracing::{info, warn};

/// The uid and gid workers run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Per-session resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// Share of one CPU, in percent (100 = one core).
    pub cpu_percent: u32,
}

struct Jail {
    identity: Option<Identity>,
    cgroups: Option<Cgroups>,
    limits: Limits,
}

static JAIL: OnceLock<Jail> = OnceLock::new();

/// Resolves the worker user and probes cgroup v2 once, at start-up. As root, a missing user is an error
/// (create it with `scripts/setup.sh`): workers never run as root.
pub fn init(worker_user: &str, limits: Limits) -> anyhow::Result<()> {
    let identity = if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name(worker_user)
            .map_err(|e| anyhow::anyhow!("cannot look up worker user {worker_user}: {e}"))?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "worker user {worker_user:?} does not exist; guacr runs as root and never runs workers as \
                     root: create it (scripts/setup.sh) or name another with --worker-user"
                )
            })?;
        if user.uid.is_root() {
            anyhow::bail!("worker user {worker_user:?} has uid 0; workers must run unprivileged");
        }
        info!(
            user = worker_user,
            uid = user.uid.as_raw(),
            gid = user.gid.as_raw(),
            "Workers run as an unprivileged user"
        );
        Some(Identity { uid: user.uid.as_raw(), gid: user.gid.as_raw() })
    } else {
        None
    };
    let cgroups = Cgroups::detect(Path::new("/proc/self"));
    let _ = JAIL.set(Jail { identity, cgroups, limits });
    Ok(())
}

/// Fails with a clear message when the worker user could not execute binaries in `dir`: some directory on
/// the way is closed to it (a checkout under `/root` or a `mktemp -d` folder). Without this check every
/// session would fail at exec with a bare "permission denied".
pub fn check_reachable(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(identity) = identity() else { return Ok(()) };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    for ancestor in dir.ancestors() {
        let Ok(meta) = std::fs::metadata(ancestor) else { continue };
        let mode = meta.mode();
        let searchable = if meta.uid() == identity.uid {
            mode & 0o100 != 0
        } else if meta.gid() == identity.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !searchable {
            anyhow::bail!(
                "the worker binaries in {} are out of reach of the worker user (uid {}): {} is mode {:o}; \
                 install guacr where every user can reach it, or point --worker-dir there",
                dir.display(),
                identity.uid,
                ancestor.display(),
                mode & 0o7777
            );
        }
    }
    Ok(())
}

/// The identity to exec workers with; `None` when guacr is not root (workers share its uid and rely on
/// their own sandbox, see SECURITY.md) or before [`init`].
pub fn identity() -> Option<Identity> {
    JAIL.get().and_then(|j| j.identity)
}

/// Moves a freshly spawned worker into its own cgroup, if cgroups are available. The group is removed
/// once the worker has gone (the returned guard's drop).
pub fn place(pid: u32, session_id: &str) -> Option<SessionCgroup> {
    let jail = JAIL.get()?;
    let cgroups = jail.cgroups.as_ref()?;
    match cgroups.place(pid, session_id, jail.limits) {
        Ok(group) => Some(group),
        Err(error) => {
            warn!(%error, "Cannot put the worker into its own cgroup; it runs without cgroup limits");
            None
        }
    }
}

/// The delegated cgroup v2 directory guacr manages: one child per session, the supervisor itself in
/// `supervisor/` (cgroup v2 forbids processes in a group that distributes controllers).
#[derive(Debug)]
struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    /// Finds our cgroup v2 directory and enables the memory and cpu controllers for children. Logs one
    /// line and returns `None` where the host does not offer them.
    fn detect(proc_self: &Path) -> Option<Cgroups> {
        match Self::try_detect(proc_self) {
            Ok(cgroups) => {
                info!(path = %cgroups.root.display(), "Per-session cgroup v2 memory and CPU limits are on");
                Some(cgroups)
            }
            Err(reason) => {
                info!(%reason, "No per-session cgroup limits (cgroup v2 memory and cpu controllers unavailable); rlimits still apply");
                None
            }
        }
    }

    fn try_detect(proc_self: &Path) -> Result<Cgroups, String> {
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()));
        let mount = cgroup2_mount(&read(proc_self.join("mountinfo"))?).ok_or("no cgroup2 file system mounted")?;
        let own = own_cgroup(&read(proc_self.join("cgroup"))?).ok_or("not in a cgroup v2 hierarchy")?;
        let root = mount.join(own.trim_start_matches('/'));
        let controllers = read(root.join("cgroup.controllers"))?;
        if !has_controllers(&controllers) {
            return Err(format!("{} offers controllers {:?}, need memory and cpu", root.display(), controllers.trim()));
        }
        let supervisor = root.join("supervisor");
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        std::fs::create_dir_all(&supervisor).map_err(|e| io("creating the supervisor's cgroup", e))?;
        std::fs::write(supervisor.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| io("moving the supervisor into its own cgroup", e))?;
        std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu")
            .map_err(|e| io("enabling memory and cpu for sessions", e))?;
        Ok(Cgroups { root })
    }

    fn place(&self, pid: u32, session_id: &str, limits: Limits) -> std::io::Result<SessionCgroup> {
        let name: String = session_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        let dir = self.root.join(format!("session-{name}"));
        std::fs::create_dir(&dir)?;
        let group = SessionCgroup { dir };
        std::fs::write(group.dir.join("memory.max"), limits.memory_bytes.to_string())?;
        // No swap: a worker over its limit is killed (and its session ends), never slowed to a crawl.
        let _ = std::fs::write(group.dir.join("memory.swap.max"), "0");
        std::fs::write(group.dir.join("cpu.max"), cpu_max(limits.cpu_percent))?;
        std::fs::write(group.dir.join("cgroup.procs"), pid.to_string())?;
        Ok(group)
    }
}

/// A session's cgroup; removed (retrying while the worker is still exiting) when dropped.
#[derive(Debug)]
pub struct SessionCgroup {
    dir: PathBuf,
}

impl Drop for SessionCgroup {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.dir);
        if std::fs::remove_dir(&dir).is_ok() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for _ in 0..60 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                        return;
                    }
                }
                warn!(path = %dir.display(), "Session cgroup still busy after 30 s; left behind");
            });
        }
    }
}

/// `cpu.max` for a share of one CPU: quota and period in microseconds.
fn cpu_max(percent: u32) -> String {
    const PERIOD: u64 = 100_000;
    let quota = (PERIOD * u64::from(percent.max(1)) / 100).max(1000);
    format!("{quota} {PERIOD}")
}

/// The mount point of the cgroup2 file system, from `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// Our path in the unified hierarchy, from `/proc/self/cgroup` (the `0::` line).
fn own_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim().to_string())
}

fn has_controllers(list: &str) -> bool {
    let names: Vec<&str> = list.split_whitespace().collect();
    names.contains(&"memory") && names.contains(&"cpu")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_hierarchy() {
        let mountinfo = "25 30 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw\n\
                         33 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                         34 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_mount(mountinfo), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
        assert_eq!(
            own_cgroup("4:memory:/x\n0::/system.slice/guacr.service\n").as_deref(),
            Some("/system.slice/guacr.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
        assert!(has_controllers("cpuset cpu io memory pids\n"));
        assert!(!has_controllers("hugetlb\n"));
        assert_eq!(cpu_max(100), "100000 100000");
        assert_eq!(cpu_max(50), "50000 100000");
        assert_eq!(cpu_max(0), "1000 100000");
    }

    #[test]
    fn detection_fails_softly_without_controllers() {
        let dir = std::env::temp_dir().join(format!("guacr-cg-{}", std::process::id()));
        let cg = dir.join("cg");
        std::fs::create_dir_all(cg.join("a")).unwrap();
        std::fs::write(dir.join("mountinfo"), format!("1 2 0:1 / {} rw - cgroup2 cgroup2 rw\n", cg.display())).unwrap();
        std::fs::write(dir.join("cgroup"), "0::/a\n").unwrap();
        std::fs::write(cg.join("a/cgroup.controllers"), "hugetlb\n").unwrap();
        let err = Cgroups::try_detect(&dir).unwrap_err();
        assert!(err.contains("need memory and cpu"), "{err}");
        std::fs::write(cg.join("a/cgroup.controllers"), "cpu memory pids\n").unwrap();
        // A plain directory accepts the writes, which is all we can check without a delegated hierarchy.
        let cgroups = Cgroups::try_detect(&dir).unwrap();
        assert_eq!(cgroups.root, cg.join("a"));
        assert_eq!(std::fs::read_to_string(cg.join("a/cgroup.subtree_control")).unwrap(), "+memory +cpu");
        let group = cgroups.place(1234, "$ab-12", Limits { memory_bytes: 1 << 20, cpu_percent: 50 }).unwrap();
        let session = cg.join("a/session-ab-12");
        assert_eq!(std::fs::read_to_string(session.join("memory.max")).unwrap(), "1048576");
        assert_eq!(std::fs::read_to_string(session.join("cpu.max")).unwrap(), "50000 100000");
        assert_eq!(std::fs::read_to_string(session.join("cgroup.procs")).unwrap(), "1234");
        drop(group);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
