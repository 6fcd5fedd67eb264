#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

pub mod control;
pub mod damage;
pub mod layout;
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
