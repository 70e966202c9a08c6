//! For scavalloc's benchmarks only (the `testing` feature): a log of the
//! ranges given back to the OS, so that a benchmark can replay exactly the
//! ranges the scavenger released against the cheapest ways the kernel
//! offers to release them (issue: the scavenger's price per released byte
//! against the kernel's floor).
//!
//! Off until [`start`]; then every successful `madvise` and every range a
//! `process_madvise` completed is appended, without allocating: the log is
//! one anonymous mapping made by [`start`]. Entries past its capacity are
//! counted, not kept. [`stop`] is meant for a quiet moment (no release
//! under way): a release racing with it may still write its entry.

use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use super::OsError;

static LOG: AtomicPtr<(usize, usize)> = AtomicPtr::new(core::ptr::null_mut());
static CAPACITY: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicUsize = AtomicUsize::new(0);

/// Starts logging, with room for `capacity` ranges (a log already running
/// is kept, and its capacity with it).
pub fn start(capacity: usize) -> Result<(), OsError> {
    if !LOG.load(Ordering::Acquire).is_null() {
        return Ok(());
    }
    let bytes = capacity.checked_mul(core::mem::size_of::<(usize, usize)>()).ok_or(OsError { errno: libc::ENOMEM })?;
    let p = super::alloc_ready(bytes.max(1))?;
    LEN.store(0, Ordering::Relaxed);
    DROPPED.store(0, Ordering::Relaxed);
    CAPACITY.store(capacity, Ordering::Relaxed);
    LOG.store(p.as_ptr().cast(), Ordering::Release);
    Ok(())
}

/// Appends `[addr, addr + len)` if logging.
#[inline]
pub fn note(addr: usize, len: usize) {
    let log = LOG.load(Ordering::Acquire);
    if log.is_null() {
        return;
    }
    let i = LEN.fetch_add(1, Ordering::Relaxed);
    if i < CAPACITY.load(Ordering::Relaxed) {
        // SAFETY: `i` is below the capacity the mapping was made for, and
        // the `fetch_add` gave slot `i` to this caller alone.
        unsafe { log.add(i).write((addr, len)) };
    } else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Stops logging and hands the logged ranges to `f` (with how many did
/// not fit), then unmaps the log.
pub fn stop(f: impl FnOnce(&[(usize, usize)], usize)) {
    let log = LOG.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if log.is_null() {
        f(&[], 0);
        return;
    }
    let capacity = CAPACITY.load(Ordering::Relaxed);
    let len = LEN.load(Ordering::Relaxed).min(capacity);
    // SAFETY: the first `len` slots were written by `note` (at a quiet
    // moment, per the module's contract, no write is still under way).
    let entries = unsafe { core::slice::from_raw_parts(log, len) };
    f(entries, DROPPED.load(Ordering::Relaxed));
    let bytes = (capacity * core::mem::size_of::<(usize, usize)>()).max(1);
    // SAFETY: the mapping was made by `start` for this size and nothing
    // refers into it any more (the pointer was taken out of `LOG`).
    unsafe { super::unmap(log as usize, bytes.next_multiple_of(super::page_size())) };
}
