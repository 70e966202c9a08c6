//! The persistent metadata allocator: bump allocation from OS pages, never
//! freed (the Go runtime's `persistentalloc`).
//!
//! scavalloc's own structures (address-range arrays, span records, cache
//! blocks) cannot come from the global allocator, because scavalloc *is* the
//! global allocator. They come from here: memory mapped straight from the
//! kernel in blocks, handed out by bumping a pointer, zeroed, and kept for
//! the life of the process. Structures that are freed and reused keep their
//! own free lists on top of this.
//!
//! Requests larger than a quarter of a block get their own mapping so that a
//! large request never strands the tail of the current block.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::os;
use crate::sync::Mutex;

/// Size of each block mapped for small metadata requests.
const BLOCK_BYTES: usize = 256 << 10;

struct Bump {
    /// The next free byte of the current block (0: none yet).
    next: usize,
    /// The end of the current block.
    end: usize,
    /// A whole block mapped and not yet used (0: none).
    spare: usize,
}

static BUMP: Mutex<Bump> = Mutex::new(Bump { next: 0, end: 0, spare: 0 });

/// Bytes mapped for persistent metadata so far.
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// Bytes handed out to callers so far (the rest of [`mapped_bytes`] is
/// alignment padding and the unused tail of the current block).
static USED: AtomicUsize = AtomicUsize::new(0);

/// Returns `size` bytes of zeroed memory aligned to `align` (a power of two
/// no larger than the page size), valid for the rest of the process, or
/// `None` when the kernel refuses more memory.
pub fn alloc(size: usize, align: usize) -> Option<NonNull<u8>> {
    debug_assert!(align.is_power_of_two() && align <= os::page_size());
    let size = size.max(1);
    if size > BLOCK_BYTES / 4 {
        let rounded = size.checked_add(os::page_size() - 1)? & !(os::page_size() - 1);
        let p = os::alloc_ready(rounded).ok()?;
        MAPPED.fetch_add(rounded, Ordering::Relaxed);
        USED.fetch_add(size, Ordering::Relaxed);
        return Some(p);
    }
    let mut bump = BUMP.lock();
    loop {
        let start = (bump.next + align - 1) & !(align - 1);
        if bump.next != 0 && start + size <= bump.end {
            bump.next = start + size;
            USED.fetch_add(size, Ordering::Relaxed);
            // SAFETY: `start` lies inside a successful mapping, so it is
            // non-null.
            return Some(unsafe { NonNull::new_unchecked(start as *mut u8) });
        }
        // The block's tail is abandoned: at most a quarter of a block, and
        // only when a request does not fit in it.
        if bump.spare != 0 {
            let block = core::mem::take(&mut bump.spare);
            bump.next = block;
            bump.end = block + BLOCK_BYTES;
            continue;
        }
        // A new block, mapped with the lock dropped (no system call under
        // an allocator lock); if another thread installed one meanwhile,
        // ours waits as the spare.
        drop(bump);
        let block = os::alloc_ready(BLOCK_BYTES).ok()?.as_ptr() as usize;
        MAPPED.fetch_add(BLOCK_BYTES, Ordering::Relaxed);
        bump = BUMP.lock();
        if bump.spare == 0 {
            bump.spare = block;
        } else {
            // Two threads raced past a spare: give this one back.
            drop(bump);
            MAPPED.fetch_sub(BLOCK_BYTES, Ordering::Relaxed);
            // SAFETY: the block was mapped just above and never handed out.
            unsafe { os::unmap(block, BLOCK_BYTES) };
            bump = BUMP.lock();
        }
    }
}

/// Allocates persistent, zeroed storage for `count` values of `T`.
///
/// The memory is all-zero bytes; the caller must only treat it as `T`s if
/// all-zero is a valid `T` (integers, atomics, raw pointers, `Option` of a
/// reference).
pub fn alloc_array<T>(count: usize) -> Option<NonNull<T>> {
    let bytes = core::mem::size_of::<T>().checked_mul(count)?;
    alloc(bytes, core::mem::align_of::<T>()).map(NonNull::cast)
}

/// Bytes of memory mapped for persistent metadata.
pub fn mapped_bytes() -> usize {
    MAPPED.load(Ordering::Relaxed)
}

/// Takes the metadata lock and keeps it, before `fork()`.
pub(crate) fn lock_for_fork() {
    BUMP.hold_for_fork();
}

/// Releases the lock taken by [`lock_for_fork`].
pub(crate) fn unlock_after_fork() {
    // SAFETY: `lock_for_fork` held it on this thread.
    unsafe { BUMP.release_after_fork() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_zeroed_and_disjoint() {
        let mut got: [(usize, usize); 64] = [(0, 0); 64];
        for (i, slot) in got.iter_mut().enumerate() {
            let size = 1 + (i * 37) % 700;
            let align = 1usize << (i % 7);
            let p = alloc(size, align).unwrap().as_ptr();
            assert_eq!(p as usize % align, 0);
            // SAFETY: `p` points to `size` fresh bytes owned by this test.
            let bytes = unsafe { core::slice::from_raw_parts_mut(p, size) };
            assert!(bytes.iter().all(|&b| b == 0));
            bytes.fill(0xAB);
            *slot = (p as usize, size);
        }
        for (i, a) in got.iter().enumerate() {
            for b in &got[i + 1..] {
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "overlap {a:?} {b:?}");
            }
        }
    }

    #[test]
    fn large_requests_get_their_own_mapping() {
        let before = mapped_bytes();
        let p = alloc(1 << 20, 8).unwrap();
        assert!(mapped_bytes() >= before + (1 << 20));
        // SAFETY: `p` points to 1 MiB of fresh memory owned by this test.
        unsafe { p.as_ptr().add((1 << 20) - 1).write(1) };
    }
}
