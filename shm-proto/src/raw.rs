//! The only `unsafe` code of guacr: mapping the shared region, atomics and copies inside it, and taking
//! ownership of inherited descriptors.
//!
//! Rules (from DESIGN.md, "hostile-input discipline"): no reference (`&T`, `&[u8]`) is ever formed into
//! memory that the *other* process may write, except the worker's own back surface, which only the worker
//! writes. Every access goes through a bounds-checked offset; a bad offset is a bug in this crate (offsets
//! come from the local [`Geometry`](crate::layout::Geometry)), so it panics rather than touching memory.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapMut, MmapOptions};

/// A shared, writable mapping of the whole memfd.
pub(crate) struct SharedMap {
    map: MmapMut,
}

impl SharedMap {
    /// Maps `len` bytes of `fd` shared and writable.
    pub(crate) fn map(fd: &OwnedFd, len: usize) -> std::io::Result<SharedMap> {
        // SAFETY: the memfd is sealed against shrinking before either side maps it (checked by the caller
        // on the worker side, done by the supervisor before it passes the fd), so the mapping can never be
        // truncated under us (no SIGBUS). Other processes do write to it concurrently; that is why this
        // module never hands out references to memory the peer writes, only copies and atomics.
        // JUSTIFICATION: mmap is inherently unsafe in Rust; shared memory is the point of this crate.
        let map = unsafe { MmapOptions::new().len(len).map_mut(fd)? };
        Ok(SharedMap { map })
    }

    fn checked_ptr(&self, offset: usize, len: usize, align: usize) -> *mut u8 {
        let end = offset.checked_add(len).expect("shared-memory offset overflow");
        assert!(end <= self.map.len(), "shared-memory access out of range: {offset}+{len}");
        assert!(offset.is_multiple_of(align), "misaligned shared-memory access at {offset}");
        // The base of an mmap is page aligned, so offset alignment is pointer alignment.
        self.map.as_ptr().wrapping_add(offset).cast_mut()
    }

    fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        let ptr = self.checked_ptr(offset, 8, 8).cast::<u64>();
        // SAFETY: in bounds and 8-byte aligned (checked above); the mapping lives as long as `self`.
        // Concurrent access from the other process is fine for an atomic; non-atomic writes by a hostile
        // peer to the same word can only produce a garbage value, which every caller validates.
        // JUSTIFICATION: the sequence numbers must be real atomics shared across processes.
        unsafe { AtomicU64::from_ptr(ptr) }
    }

    fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        let ptr = self.checked_ptr(offset, 4, 4).cast::<u32>();
        // SAFETY: in bounds and 4-byte aligned (checked above); see `atomic_u64`.
        // JUSTIFICATION: header fields written by one process and read by the other.
        unsafe { AtomicU32::from_ptr(ptr) }
    }

    pub(crate) fn load_u64(&self, offset: usize, order: Ordering) -> u64 {
        self.atomic_u64(offset).load(order)
    }

    pub(crate) fn store_u64(&self, offset: usize, value: u64, order: Ordering) {
        self.atomic_u64(offset).store(value, order)
    }

    pub(crate) fn load_u32(&self, offset: usize) -> u32 {
        self.atomic_u32(offset).load(Ordering::Relaxed)
    }

    pub(crate) fn store_u32(&self, offset: usize, value: u32) {
        self.atomic_u32(offset).store(value, Ordering::Relaxed)
    }

    /// Copies bytes out of shared memory into private memory.
    pub(crate) fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        let src = self.checked_ptr(offset, dst.len(), 1);
        // SAFETY: `src..src+len` is inside the mapping (checked); `dst` is private memory that cannot
        // overlap the mapping because it is a distinct Rust allocation we hold `&mut` to. The peer may write
        // the source concurrently: the bytes read may then be torn, which is harmless for pixels and
        // validated for everything else.
        // JUSTIFICATION: pixels are read straight from the worker's surface (no intermediate copy).
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies bytes from private memory into shared memory.
    pub(crate) fn copy_in(&self, offset: usize, src: &[u8]) {
        let dst = self.checked_ptr(offset, src.len(), 1);
        // SAFETY: in bounds (checked); `src` is private memory, so the ranges cannot overlap.
        // JUSTIFICATION: writing pixels and damage ops into the shared region.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// `memmove` inside the mapping.
    pub(crate) fn copy_within(&self, src_offset: usize, dst_offset: usize, len: usize) {
        let src = self.checked_ptr(src_offset, len, 1);
        let dst = self.checked_ptr(dst_offset, len, 1);
        // SAFETY: both ranges are inside the mapping (checked); `copy` allows overlap.
        // JUSTIFICATION: replaying published damage from the front surface into the back one.
        unsafe { std::ptr::copy(src, dst, len) }
    }

    /// The worker's exclusive view of its back surface.
    pub(crate) fn exclusive_slice_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        let ptr = self.checked_ptr(offset, len, 1);
        // SAFETY: in bounds (checked); borrowed mutably from `self`, so no other access through this
        // mapping exists while the slice lives. The only other process with the mapping is the supervisor,
        // which by the sequence protocol never writes any surface and never reads the back surface: the
        // worker is the sole user of these bytes until it publishes them.
        // JUSTIFICATION: decoders write pixels straight into the surface (zero copies).
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

/// Takes ownership of an inherited descriptor and marks it close-on-exec.
pub(crate) fn inherited_fd(fd: i32) -> Result<OwnedFd, nix::Error> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // Probe with a borrowed view first so a closed number fails with EBADF instead of owning garbage.
    let flags = {
        // SAFETY: the descriptor is only borrowed for this one fcntl call; if it is not open the call
        // fails with EBADF and nothing else happens.
        // JUSTIFICATION: a worker receives its descriptors at fixed numbers across exec.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        fcntl(borrowed, FcntlArg::F_GETFD)?
    };
    // SAFETY: the descriptor is open (checked above) and was placed at this number for us by the
    // supervisor; nothing else in this process owns it (it is taken once, at start-up).
    // JUSTIFICATION: turning the inherited number into an owned descriptor.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut flags = FdFlag::from_bits_truncate(flags);
    flags.insert(FdFlag::FD_CLOEXEC);
    fcntl(&owned, FcntlArg::F_SETFD(flags))?;
    Ok(owned)
}

/// Registers an owned descriptor with tokio's reactor for the readiness in `interest` only.
pub(crate) fn register_async(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` is a valid, open descriptor that keeps referring to the same open file
    // description until the `AsyncFd` (which owns it) is dropped; `as_raw_fd` always returns that number.
    // JUSTIFICATION: tokio made `AsyncFd` registration `unsafe` because of I/O safety.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// Marks every descriptor from `first` upwards close-on-exec (`close_range` with `CLOSE_RANGE_CLOEXEC`).
pub(crate) fn cloexec_from(first: u32) -> std::io::Result<()> {
    use nix::libc;
    // SAFETY: close_range only changes descriptor flags; it reads no memory of ours and closes nothing
    // (CLOSE_RANGE_CLOEXEC), so no Rust-owned descriptor is invalidated.
    // JUSTIFICATION: nix has no wrapper for close_range, and walking /proc/self/fd would need raw
    // descriptors turned into borrowed ones (unsafe too) for each entry.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `struct sched_attr` up to `sched_period` (the kernel's `SCHED_ATTR_SIZE_VER0`).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

const SCHED_ATTR_SIZE: u32 = std::mem::size_of::<SchedAttr>() as u32;

/// The calling thread's scheduling attributes (`sched_getattr`).
fn sched_attr() -> std::io::Result<SchedAttr> {
    use nix::libc;
    let mut attr = SchedAttr::default();
    // SAFETY: the kernel writes at most `SCHED_ATTR_SIZE` bytes into `attr`, a live, properly laid-out
    // `struct sched_attr` of exactly that size on our stack; pid 0 is the calling thread.
    // JUSTIFICATION: neither nix nor std wraps sched_getattr/sched_setattr.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, SCHED_ATTR_SIZE, 0u32) };
    if rc == 0 {
        Ok(attr)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's time slice under the fair scheduler, in nanoseconds (0 before Linux 6.12, which
/// has no per-thread slice).
pub(crate) fn slice() -> std::io::Result<u64> {
    Ok(sched_attr()?.runtime)
}

/// Asks the kernel's fair scheduler for a time slice of `slice_ns` for the calling thread (Linux 6.12 and
/// later: `sched_attr.sched_runtime` under `SCHED_OTHER`, clamped by the kernel to 0.1–100 ms; older
/// kernels ignore it). Niceness and everything else stay as they are: the current attributes are read
/// first. A thread under another policy (real-time, batch, set by the operator) is left alone.
pub(crate) fn request_slice(slice_ns: u64) -> std::io::Result<()> {
    use nix::libc;
    let mut attr = sched_attr()?;
    if attr.policy != libc::SCHED_OTHER as u32 {
        return Ok(());
    }
    /// The kernel's `SCHED_FLAG_RESET_ON_FORK`: kept if the operator set it; no other flag is sent.
    const RESET_ON_FORK: u64 = 0x01;
    attr.size = SCHED_ATTR_SIZE;
    attr.flags &= RESET_ON_FORK;
    attr.runtime = slice_ns;
    // SAFETY: the kernel reads `SCHED_ATTR_SIZE` bytes of `attr` (initialised above) and writes nothing.
    // JUSTIFICATION: as in `sched_attr`.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
