//! What the supervisor does to jail a worker from the outside: the unprivileged uid it execs the worker
//! with (when guacr runs as root), and a cgroup per session: cgroup v2 with memory and CPU limits where
//! the host delegates those controllers, else a cgroup v1 memory group where the v1 memory hierarchy is
//! mounted and writable (memory only). The worker does the rest to itself after exec
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

/// Resolves the worker user and probes the cgroups once, at start-up. As root, a missing user is an error
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

/// The cgroup directory guacr manages: one child per session.
#[derive(Debug)]
struct Cgroups {
    root: PathBuf,
    version: Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// Delegated cgroup v2: memory and cpu; the supervisor itself in `supervisor/` (cgroup v2 forbids
    /// processes in a group that distributes controllers).
    V2,
    /// The cgroup v1 memory hierarchy (hosts without a delegated v2): memory only. The supervisor stays in
    /// its own group, which v1 allows next to child groups; only workers go into the limited children.
    V1Memory,
}

impl Cgroups {
    /// Finds our cgroup v2 directory and enables the memory and cpu controllers for children, or failing
    /// that our cgroup v1 memory directory. Logs one line saying which, and returns `None` where the host
    /// offers neither.
    fn detect(proc_self: &Path) -> Option<Cgroups> {
        let v2 = match Self::try_detect(proc_self) {
            Ok(cgroups) => {
                info!(path = %cgroups.root.display(), "Per-session cgroup v2 memory and CPU limits are on");
                cgroups.sweep();
                return Some(cgroups);
            }
            Err(reason) => reason,
        };
        match Self::try_detect_v1(proc_self) {
            Ok(cgroups) => {
                info!(
                    path = %cgroups.root.display(),
                    v2 = %v2,
                    "Per-session cgroup v1 memory limits are on (no CPU limit: cgroup v2 controllers unavailable)"
                );
                cgroups.sweep();
                Some(cgroups)
            }
            Err(v1) => {
                info!(%v2, %v1, "No per-session cgroup limits (neither cgroup v2 memory and cpu nor the cgroup v1 memory controller available); rlimits still apply");
                None
            }
        }
    }

    /// Our directory in the cgroup v1 memory hierarchy, if it is mounted and we may create groups in it.
    fn try_detect_v1(proc_self: &Path) -> Result<Cgroups, String> {
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()));
        let (mount, mount_root) =
            cgroup1_memory_mount(&read(proc_self.join("mountinfo"))?).ok_or("no cgroup v1 memory hierarchy mounted")?;
        let own = own_cgroup_v1_memory(&read(proc_self.join("cgroup"))?).ok_or("not in a cgroup v1 memory group")?;
        // The mount may show only a subtree (a container): our path is relative to the hierarchy's root.
        let relative = if mount_root == "/" {
            own.as_str()
        } else {
            own.strip_prefix(&mount_root)
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                .ok_or_else(|| format!("our memory cgroup {own} is outside the mounted {mount_root}"))?
        };
        let root = under_mount(&mount, relative)?;
        if !root.join("memory.limit_in_bytes").exists() {
            return Err(format!("{} has no memory.limit_in_bytes", root.display()));
        }
        let probe = root.join(format!("guacr-{}-probe", std::process::id()));
        std::fs::create_dir(&probe).map_err(|e| format!("cannot create a group in {}: {e}", root.display()))?;
        let _ = std::fs::remove_dir(&probe);
        Ok(Cgroups { root, version: Version::V1Memory })
    }

    fn try_detect(proc_self: &Path) -> Result<Cgroups, String> {
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()));
        let mount = cgroup2_mount(&read(proc_self.join("mountinfo"))?).ok_or("no cgroup2 file system mounted")?;
        let own = own_cgroup(&read(proc_self.join("cgroup"))?).ok_or("not in a cgroup v2 hierarchy")?;
        let root = under_mount(&mount, &own)?;
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
        Ok(Cgroups { root, version: Version::V2 })
    }

    /// Removes the session groups of guacr processes that are gone (killed before their sessions' groups
    /// could be removed, or shut down while a browser was still exiting). A group that still holds a
    /// process cannot be removed and stays until the next sweep: at start-up and before each new session.
    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        let own = std::process::id();
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(group_owner) else { continue };
            if pid != own && !Path::new(&format!("/proc/{pid}")).exists() && std::fs::remove_dir(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            info!(removed, path = %self.root.display(), "Removed session cgroups left by a guacr that is gone");
        }
    }

    /// A session's group is named after guacr's pid (several guacr may share a cgroup v1 parent, and a
    /// later guacr tells leftovers from live groups by it) and the session id.
    fn place(&self, pid: u32, session_id: &str, limits: Limits) -> std::io::Result<SessionCgroup> {
        let id: String = session_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        let name = format!("guacr-{}-session-{id}", std::process::id());
        self.sweep();
        let group = SessionCgroup { dir: self.root.join(name) };
        std::fs::create_dir(&group.dir)?;
        let limit = |file: &str, value: &str| std::fs::write(group.dir.join(file), value);
        let memory = limits.memory_bytes.to_string();
        match self.version {
            Version::V2 => {
                limit("memory.max", &memory)?;
                // No swap: a worker over its limit is killed (and its session ends), never slowed to a crawl.
                let _ = limit("memory.swap.max", "0");
                limit("cpu.max", &cpu_max(limits.cpu_percent))?;
            }
            Version::V1Memory => {
                limit("memory.limit_in_bytes", &memory)?;
                // Memory plus swap at the same limit, for the same reason; the file exists only where the
                // kernel accounts swap.
                if group.dir.join("memory.memsw.limit_in_bytes").exists() {
                    limit("memory.memsw.limit_in_bytes", &memory)?;
                }
            }
        }
        limit("cgroup.procs", &pid.to_string())?;
        Ok(group)
    }
}

/// A session's cgroup; removed (retrying while the worker is still exiting) when dropped.
#[derive(Debug)]
pub struct SessionCgroup {
    dir: PathBuf,
}

impl SessionCgroup {
    /// How many processes the kernel killed for the group's memory limit (`oom_kill` in v1's
    /// `memory.oom_control`, v2's `memory.events`).
    fn oom_kills(&self) -> u64 {
        ["memory.oom_control", "memory.events"]
            .iter()
            .filter_map(|file| std::fs::read_to_string(self.dir.join(file)).ok())
            .filter_map(|text| text.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()))
            .max()
            .unwrap_or(0)
    }
}

impl Drop for SessionCgroup {
    fn drop(&mut self) {
        // The worker only sees a crashed browser or page; this says why.
        let kills = self.oom_kills();
        if kills > 0 {
            warn!(kills, path = %self.dir.display(), "The session reached its memory limit (--worker-memory-mib): the kernel killed its processes");
        }
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

/// Our cgroup directory: `path` (from `/proc/self/cgroup`) under `mount`. The kernel writes a group outside
/// our cgroup namespace as a `/..` path, which joined onto the mount would lead out of it.
fn under_mount(mount: &Path, path: &str) -> Result<PathBuf, String> {
    if path.split('/').any(|c| c == "..") {
        return Err(format!("our cgroup {path} is outside our cgroup namespace"));
    }
    Ok(mount.join(path.trim_start_matches('/')))
}

/// The mount point and mounted root of the cgroup v1 hierarchy holding the memory controller.
fn cgroup1_memory_mount(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fields = left.split_whitespace();
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        let mut right = right.split_whitespace();
        let is_memory = right.next()? == "cgroup" && right.nth(1)?.split(',').any(|o| o == "memory");
        is_memory.then(|| (PathBuf::from(mount_point), root.to_string()))
    })
}

/// Our path in the cgroup v1 memory hierarchy, from `/proc/self/cgroup` (`N:memory:/path`, possibly with
/// other controllers co-mounted).
fn own_cgroup_v1_memory(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "memory").then(|| path.trim().to_string())
    })
}

/// The guacr pid in a group name made by [`Cgroups::place`] or the probe (`guacr-PID-…`).
fn group_owner(name: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix("guacr-")?.split_once('-')?;
    pid.parse().ok()
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
        let session = cg.join(format!("a/guacr-{}-session-ab-12", std::process::id()));
        assert_eq!(std::fs::read_to_string(session.join("memory.max")).unwrap(), "1048576");
        assert_eq!(std::fs::read_to_string(session.join("cpu.max")).unwrap(), "50000 100000");
        assert_eq!(std::fs::read_to_string(session.join("cgroup.procs")).unwrap(), "1234");
        drop(group);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn finds_the_v1_memory_hierarchy() {
        let mountinfo = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                         32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                         35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup1_memory_mount(mountinfo), Some((PathBuf::from("/sys/fs/cgroup/memory"), "/".into())));
        // Not fooled by an option that merely contains the word, nor by cgroup2.
        assert_eq!(cgroup1_memory_mount("1 2 0:1 / /x rw - cgroup cgroup rw,nomemory\n"), None);
        assert_eq!(cgroup1_memory_mount("1 2 0:1 / /x rw - cgroup2 cgroup2 rw,memory\n"), None);
        assert_eq!(
            cgroup1_memory_mount("1 2 0:1 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,cpu,memory\n"),
            Some((PathBuf::from("/sys/fs/cgroup/memory"), "/docker/abc".into()))
        );
        let cgroup = "9:name=systemd:/\n4:memory:/process_api/ec11\n1:cpu:/\n0::/\n";
        assert_eq!(own_cgroup_v1_memory(cgroup).as_deref(), Some("/process_api/ec11"));
        assert_eq!(own_cgroup_v1_memory("3:cpu,memory:/a:b\n").as_deref(), Some("/a:b"));
        assert_eq!(own_cgroup_v1_memory("0::/a\n"), None);
        assert_eq!(group_owner("guacr-123-session-ab-12"), Some(123));
        assert_eq!(group_owner("guacr-45-probe"), Some(45));
        assert_eq!((group_owner("guacr-session-x"), group_owner("session-1-x")), (None, None));
    }

    #[test]
    fn falls_back_to_the_v1_memory_controller() {
        let dir = std::env::temp_dir().join(format!("guacr-cg1-{}", std::process::id()));
        let v2 = dir.join("unified");
        let v1 = dir.join("memory");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::create_dir_all(v1.join("me")).unwrap();
        std::fs::write(v2.join("cgroup.controllers"), "hugetlb\n").unwrap();
        std::fs::write(
            dir.join("mountinfo"),
            format!(
                "1 2 0:1 / {} rw - cgroup2 cgroup2 rw\n3 2 0:2 /outer {} rw - cgroup cgroup rw,memory\n",
                v2.display(),
                v1.display()
            ),
        )
        .unwrap();
        std::fs::write(dir.join("cgroup"), "4:memory:/outer/me\n0::/\n").unwrap();
        // Without the controller's files it is not a memory group.
        let err = Cgroups::try_detect_v1(&dir).unwrap_err();
        assert!(err.contains("no memory.limit_in_bytes"), "{err}");
        std::fs::write(v1.join("me/memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        // Left by a guacr that is gone (a pid above any pid_max): swept; ours and foreign groups stay.
        let own = std::process::id();
        for name in ["guacr-4194400-session-old".to_string(), format!("guacr-{own}-session-mine"), "other".into()] {
            std::fs::create_dir(v1.join("me").join(name)).unwrap();
        }
        // cgroup v2 offers no memory and cpu, so the v1 memory group under our own is used.
        let cgroups = Cgroups::detect(&dir).expect("v1 fallback");
        assert!(!v1.join("me/guacr-4194400-session-old").exists(), "a dead guacr's group was not swept");
        assert!(v1.join(format!("me/guacr-{own}-session-mine")).exists() && v1.join("me/other").exists());
        assert_eq!((cgroups.root.as_path(), cgroups.version), (v1.join("me").as_path(), Version::V1Memory));
        let group = cgroups.place(4321, "$cd-34", Limits { memory_bytes: 100 << 20, cpu_percent: 50 }).unwrap();
        let session = v1.join(format!("me/guacr-{}-session-cd-34", std::process::id()));
        assert_eq!(std::fs::read_to_string(session.join("memory.limit_in_bytes")).unwrap(), "104857600");
        assert_eq!(std::fs::read_to_string(session.join("cgroup.procs")).unwrap(), "4321");
        // Swap accounting is written only where the kernel offers it; v1 gets no CPU limit; the probe
        // group is gone; the supervisor was not moved.
        assert!(!session.join("memory.memsw.limit_in_bytes").exists());
        assert!(!session.join("cpu.max").exists());
        let entries: Vec<_> = std::fs::read_dir(v1.join("me")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(entries.len(), 4, "{entries:?}");
        assert!(!v1.join("me/cgroup.procs").exists());
        assert_eq!(group.oom_kills(), 0);
        std::fs::write(session.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(group.oom_kills(), 2);
        drop(group);
        // A group beside the mounted subtree is not ours to use.
        std::fs::write(dir.join("cgroup"), "4:memory:/outerx/me\n").unwrap();
        let err = Cgroups::try_detect_v1(&dir).unwrap_err();
        assert!(err.contains("outside the mounted /outer"), "{err}");
        // Nor one outside our cgroup namespace, which the kernel writes with `..`: joined, it would leave
        // the mount (here for a directory that looks like a memory group).
        std::fs::create_dir_all(dir.join("escaped")).unwrap();
        std::fs::write(dir.join("escaped/memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(dir.join("mountinfo"), format!("3 2 0:2 / {} rw - cgroup cgroup rw,memory\n", v1.display()))
            .unwrap();
        std::fs::write(dir.join("cgroup"), "4:memory:/../escaped\n").unwrap();
        let err = Cgroups::try_detect_v1(&dir).unwrap_err();
        assert!(err.contains("outside our cgroup namespace"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
