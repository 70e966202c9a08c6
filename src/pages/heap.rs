//! The process-wide page heap: the [`PageAlloc`] behind the heap lock, and
//! the growth of its address space (Go's `mheap.grow` and its arena hints).
//!
//! Address space is reserved from the OS in large pieces (1 GiB when the
//! process may have that much address space, less otherwise), and handed to
//! the page allocator a few chunks at a time as allocations need it; each
//! new reservation is first tried directly after the previous one so that
//! the heap stays one contiguous range. Memory given to the page allocator
//! is made readable and writable at once but is never touched here, so it
//! costs no physical memory until an allocation writes to it.

use crate::os;
use crate::sync::Mutex;

use super::ranges::AddrRange;
use super::{PageAlloc, PageRun, CHUNK_BYTES, PAGE_SIZE};

/// Address space reserved at a time when growing.
const RESERVATION_BYTES: usize = 1 << 30;

/// The page allocator and the address space reserved for it but not yet
/// handed over.
pub struct PageHeap {
    pages: PageAlloc,
    /// Reserved address space `[base, limit)` not yet given to `pages`.
    reserve: AddrRange,
}

/// A snapshot of the page heap's counters, taken under the heap lock so
/// that they add up: `mapped == in_use + free_unscavenged + released`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageHeapStats {
    /// Bytes of address space owned by the page heap.
    pub mapped: usize,
    /// Bytes in page runs handed out.
    pub in_use: usize,
    /// Free bytes that may be resident.
    pub free_unscavenged: usize,
    /// Free bytes released to the OS (or never touched).
    pub released: usize,
    /// Bytes of memory holding the page heap's own metadata.
    pub metadata: usize,
}

impl PageHeap {
    /// An empty heap that owns nothing yet.
    pub const fn new() -> Self {
        PageHeap { pages: PageAlloc::new(), reserve: AddrRange { base: 0, limit: 0 } }
    }

    /// The page allocator, for callers that hold the heap lock.
    pub fn pages(&mut self) -> &mut PageAlloc {
        &mut self.pages
    }

    /// Allocates `npages` pages aligned to `align_pages` pages, growing the
    /// heap if no free run fits. `None` means the OS refused more memory.
    pub fn alloc(&mut self, npages: usize, align_pages: usize) -> Option<PageRun> {
        if let Some(run) = self.pages.alloc_aligned(npages, align_pages) {
            return Some(run);
        }
        // Growing by the run plus its worst-case alignment slack always
        // leaves room, wherever the new space lands.
        let slack = (align_pages.max(1) - 1).checked_mul(PAGE_SIZE)?;
        let need = npages.checked_mul(PAGE_SIZE)?.checked_add(slack)?;
        self.grow(need)?;
        self.pages.alloc_aligned(npages, align_pages)
    }

    /// Gives `[base, base + npages * PAGE_SIZE)` back as free, unscavenged
    /// pages.
    pub fn free(&mut self, base: usize, npages: usize) {
        self.pages.free(base, npages, false);
    }

    /// The counters, consistent with each other.
    pub fn stats(&self) -> PageHeapStats {
        let p = &self.pages;
        PageHeapStats {
            mapped: p.mapped_bytes(),
            in_use: p.pages_in_use() * PAGE_SIZE,
            free_unscavenged: p.pages_free_unscavenged() * PAGE_SIZE,
            released: p.pages_scavenged() * PAGE_SIZE,
            metadata: p.metadata_bytes(),
        }
    }

    /// Adds at least `bytes` of new address space to the page allocator.
    fn grow(&mut self, bytes: usize) -> Option<()> {
        let bytes = bytes.checked_next_multiple_of(CHUNK_BYTES)?;
        if self.reserve.size() < bytes {
            self.extend_reserve(bytes)?;
        }
        let base = self.reserve.base;
        // SAFETY: `[base, base + bytes)` is reserved address space that we
        // own and that nothing uses yet.
        unsafe { os::map_ready(base, bytes) }.ok()?;
        // On failure the range stays reserved (and ready, which is harmless)
        // for a later try.
        self.pages.grow(base, bytes).ok()?;
        self.reserve.base += bytes;
        Some(())
    }

    /// Makes `self.reserve` at least `bytes` long, preferably by reserving
    /// right after it.
    fn extend_reserve(&mut self, bytes: usize) -> Option<()> {
        let missing = bytes - self.reserve.size();
        if self.reserve.limit != 0 {
            for want in [RESERVATION_BYTES.max(missing.next_multiple_of(CHUNK_BYTES)), missing] {
                if os::reserve_at(self.reserve.limit, want).is_ok() {
                    self.reserve.limit += want;
                    return Some(());
                }
            }
        }
        // Somewhere else. The rest of the old reservation goes to the page
        // allocator as free pages first, so that no address space is lost.
        if self.reserve.size() != 0 {
            let old = self.reserve;
            // SAFETY: reserved by us and unused, as in `grow`.
            if unsafe { os::map_ready(old.base, old.size()) }.is_ok() && self.pages.grow(old.base, old.size()).is_ok() {
                self.reserve = AddrRange::new(old.limit, old.limit);
            }
        }
        for want in [RESERVATION_BYTES.max(bytes), bytes] {
            if let Ok(p) = os::reserve(want, CHUNK_BYTES) {
                let base = p.as_ptr() as usize;
                if self.reserve.size() != 0 {
                    // Could not hand the old remainder over; give it back.
                    // SAFETY: reserved by us and never handed out.
                    unsafe { os::unmap(self.reserve.base, self.reserve.size()) };
                }
                self.reserve = AddrRange::new(base, base + want);
                return Some(());
            }
        }
        None
    }
}

impl Default for PageHeap {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's page heap, behind the heap lock.
pub static HEAP: Mutex<PageHeap> = Mutex::new(PageHeap::new());

/// Takes the heap lock and keeps it, before `fork()`.
pub(crate) fn lock_for_fork() {
    core::mem::forget(HEAP.lock());
}

/// Releases the lock taken by [`lock_for_fork`].
pub(crate) fn unlock_after_fork() {
    // SAFETY: `lock_for_fork` took the lock on this thread and forgot the
    // guard.
    unsafe { HEAP.force_unlock() };
}
