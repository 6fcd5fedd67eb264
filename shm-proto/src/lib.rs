#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

pub mod control;
pub mod damage;
pub mod layout;
#[cfg(any(test, feature = "fuzzing"))]
pub mod oracle;
pub mod protocol;
mod raw;
pub mod region;

pub use control::{ControlChannel, ControlError, FromWorker, ToWorker, MAX_CONTROL_MESSAGE};
pub use damage::{DamageOp, Rect};
pub use layout::Geometry;
pub use region::{Frame, FrameReader, FrameWriter, SharedRegion, ShmError};

/// Descriptor number of the control socket in a worker (fixed by the supervisor at exec).
pub const WORKER_CONTROL_FD: i32 = 3;
/// Descriptor number of the shared-memory memfd in a worker (fixed by the supervisor at exec).
pub const WORKER_SHM_FD: i32 = 4;

/// Takes ownership of a descriptor the supervisor placed at a fixed number before exec.
///
/// Fails if nothing is open at that number, so a worker started by hand fails cleanly.
pub fn inherited_fd(fd: i32) -> Result<std::os::fd::OwnedFd, nix::Error> {
    raw::inherited_fd(fd)
}

/// Marks every descriptor above stderr close-on-exec, so nothing a process inherited from whoever started
/// it (a shell's or a build tool's pipes) can reach a worker. The supervisor calls it first thing.
pub fn close_on_exec_above_stdio() -> std::io::Result<()> {
    raw::cloexec_from(3)
}

/// Asks the kernel for a time slice of `slice` for the calling thread. Under EEVDF (Linux 6.12 and later)
/// a shorter slice gives the thread an earlier deadline, so when it wakes on a busy core it preempts the
/// running task sooner; its share of the CPU does not change. Older kernels ignore the request.
pub fn request_thread_slice(slice: std::time::Duration) -> std::io::Result<()> {
    raw::request_slice(u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX))
}

/// The calling thread's time slice under the fair scheduler; zero on kernels without per-thread slices.
pub fn thread_slice() -> std::io::Result<std::time::Duration> {
    raw::slice().map(std::time::Duration::from_nanos)
}
