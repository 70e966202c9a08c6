//! The process-wide page heap: the [`PageAlloc`] behind the heap lock, and
//! the growth of its address space (Go's `mheap.grow` and its arena hints).
//!
//! Address space is reserved from the OS in large pieces (1 GiB when the
//! process may have that much address space, less otherwise), and handed to
//! the page allocator as allocations need it, in steps of an eighth of the
//! heap (at least a 4 MiB chunk, at most 64 MiB beyond the request); each
//! new reservation is first tried directly after the previous one so that
//! the heap stays one contiguous range. Memory given to the page allocator
//! is made readable and writable at once but is never touched here, so it
//! costs no physical memory until an allocation writes to it. None of
//! these system calls is made under the heap lock (see [`alloc_growing`]).

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::os;
use crate::scavenge::index::ScavengeIndex;
use crate::sync::{Mutex, MutexGuard};

use super::cache::{self, Block, Pending};
use super::ranges::AddrRange;
use super::{PageAlloc, PageRun, CHUNK_BYTES, PAGE_SIZE};

/// Address space reserved at a time when growing.
const RESERVATION_BYTES: usize = 1 << 30;

/// The most the heap grows by beyond what an allocation needs (see
/// [`PageHeap::grow`]).
const MAX_GROWTH_STEP: usize = 64 << 20;

/// What a run of pages is for, counted under the heap lock so that the
/// statistics stay consistent with the heap's own figures even in a child
/// forked in the middle of another thread's allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunUse {
    /// A small-object span.
    Span,
    /// A large object.
    Large,
    /// A chunk (or an own run of pages) of a user arena, live or in
    /// quarantine.
    Arena,
}

/// The page allocator and the address space reserved for it but not yet
/// handed over.
pub struct PageHeap {
    pages: PageAlloc,
    /// Pages handed out for [`RunUse::Large`].
    large_pages: usize,
    /// Pages handed out for [`RunUse::Arena`].
    arena_pages: usize,
    /// Reserved address space `[base, limit)` not yet given to `pages`.
    /// Changed only by the thread that grows the heap (see `growing`).
    reserve: AddrRange,
    /// Whether a thread is growing the heap (see [`alloc_growing`]).
    growing: bool,
}

/// A snapshot of the page heap's counters, taken under the heap lock so
/// that they add up: `mapped == in_use + free_unscavenged + released`.
/// ([`PageHeap::stats`] counts pages lent to the page cache as in use;
/// [`cache::heap_stats`] counts the free ones among them as free.)
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
    /// Bytes of `in_use` handed out for large objects.
    pub large: usize,
    /// Bytes of pages held by user arenas (live or in quarantine).
    pub arena: usize,
    /// Bytes of free pages held by the page cache's slots (part of
    /// `free_unscavenged` and `released`).
    pub page_cache: usize,
}

impl PageHeap {
    /// An empty heap that owns nothing yet.
    pub const fn new() -> Self {
        PageHeap {
            pages: PageAlloc::with_index(&INDEX),
            large_pages: 0,
            arena_pages: 0,
            reserve: AddrRange { base: 0, limit: 0 },
            growing: false,
        }
    }

    /// The page allocator, for callers that hold the heap lock.
    pub fn pages(&mut self) -> &mut PageAlloc {
        &mut self.pages
    }

    /// Allocates `npages` pages aligned to `align_pages` pages for `usage`
    /// from the free pages the heap has (see [`alloc_growing`] for growth).
    pub fn alloc(&mut self, npages: usize, align_pages: usize, usage: RunUse) -> Option<PageRun> {
        let run = self.pages.alloc_aligned(npages, align_pages)?;
        self.count(npages, usage, true);
        self.publish();
        Some(run)
    }

    /// Gives `[base, base + npages * PAGE_SIZE)`, allocated for `usage`,
    /// back as free pages: released to the OS already if `released`, else
    /// unscavenged.
    pub fn free(&mut self, base: usize, npages: usize, usage: RunUse, released: bool) {
        self.pages.free(base, npages, released);
        self.count(npages, usage, false);
        self.publish();
    }

    fn count(&mut self, npages: usize, usage: RunUse, taken: bool) {
        let counter = match usage {
            RunUse::Span => return,
            RunUse::Large => &mut self.large_pages,
            RunUse::Arena => &mut self.arena_pages,
        };
        if taken {
            *counter += npages;
        } else {
            *counter -= npages;
        }
    }

    /// Allocates exactly `[base, base + npages pages)` if all of it is free,
    /// to grow a large object in place; returns whether it did.
    pub fn alloc_at(&mut self, base: usize, npages: usize) -> bool {
        if !self.pages.is_free(base, npages) {
            return false;
        }
        self.pages.alloc_range(base, npages);
        self.count(npages, RunUse::Large, true);
        self.publish();
        true
    }

    /// Serves a span's run from the heap for a page cache slot whose
    /// `block` cannot, without growing the heap (see [`Block::refill`]).
    pub fn refill_block(&mut self, block: &mut Block, npages: usize, align_pages: usize) -> Option<PageRun> {
        let run = block.refill(&mut self.pages, npages, align_pages);
        self.publish();
        run
    }

    /// Frees a page cache slot's pending span runs (see [`Pending::flush`]).
    pub fn flush_pending(&mut self, pending: &mut Pending) {
        pending.flush(&mut self.pages);
        self.publish();
    }

    /// Returns a page cache slot's block (see [`Block::flush`]).
    pub fn flush_block(&mut self, block: &mut Block) {
        block.flush(&mut self.pages);
        self.publish();
    }

    /// Takes free pages out for a scavenger (see
    /// [`PageAlloc::begin_release`]).
    pub fn begin_release(&mut self, base: usize, npages: usize) {
        self.pages.begin_release(base, npages);
    }

    /// Puts pages back after a scavenger's release (see
    /// [`PageAlloc::end_release`]).
    pub fn end_release(&mut self, base: usize, npages: usize, released: bool) {
        self.pages.end_release(base, npages, released);
        self.publish();
    }

    /// Updates the lock-free figures after a change.
    #[inline]
    fn publish(&mut self) {
        let in_use = self.pages.pages_in_use() * PAGE_SIZE;
        let retained = self.pages.mapped_bytes() - self.pages.pages_scavenged() * PAGE_SIZE;
        RETAINED.store(retained, Ordering::Relaxed);
        IN_USE.store(in_use, Ordering::Relaxed);
        if in_use > PEAK_IN_USE.load(Ordering::Relaxed) {
            PEAK_IN_USE.store(in_use, Ordering::Relaxed);
        }
    }

    /// The highest in-use figure since the last call, which restarts the
    /// count from the current figure.
    pub fn take_peak_in_use(&mut self) -> usize {
        let now = self.pages.pages_in_use() * PAGE_SIZE;
        PEAK_IN_USE.swap(now, Ordering::Relaxed).max(now)
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
            large: self.large_pages * PAGE_SIZE,
            arena: self.arena_pages * PAGE_SIZE,
            page_cache: 0,
        }
    }
}

/// The heap lock's guard.
type HeapGuard = MutexGuard<'static, PageHeap>;

/// Allocates `npages` pages aligned to `align_pages` pages for `usage` from
/// the process heap, growing it if no free run fits; also returns how many
/// bytes the heap grew by to serve it. `None` means the OS refused more
/// memory.
///
/// Growth makes system calls (reserving address space, making it ready,
/// mapping metadata), and none is made under the heap lock: one thread at
/// a time grows (the `growing` flag, set under the lock), working out
/// under the lock what to map, mapping it with the lock dropped, and
/// recording it under the lock again (see [`crate::pages::GrowthNeeds`]).
/// Meanwhile every other thread allocates and frees as usual; one that
/// also needs the heap to grow waits for that growth, then tries again
/// (the new space may serve it).
pub fn alloc_growing(npages: usize, align_pages: usize, usage: RunUse) -> Option<(PageRun, usize)> {
    let mut heap = HEAP.lock();
    loop {
        if let Some(run) = heap.alloc(npages, align_pages, usage) {
            return Some((run, 0));
        }
        if heap.growing || fork_pending() {
            drop(heap);
            // SAFETY: `sched_yield` has no preconditions.
            unsafe { libc::sched_yield() };
            heap = HEAP.lock();
            continue;
        }
        // Growing by the run plus its worst-case alignment slack always
        // leaves room, wherever the new space lands.
        let slack = (align_pages.max(1) - 1).checked_mul(PAGE_SIZE)?;
        let need = npages.checked_mul(PAGE_SIZE)?.checked_add(slack)?;
        let before = heap.pages.mapped_bytes();
        heap.growing = true;
        let grew;
        (heap, grew) = grow(heap, need);
        heap.growing = false;
        grew?;
        // Under the same lock hold as the growth's record: the new space is
        // still free.
        let run = heap.alloc(npages, align_pages, usage)?;
        return Some((run, heap.pages.mapped_bytes() - before));
    }
}

/// Adds at least `bytes` of new address space to the page allocator: an
/// eighth of what the heap already maps (at most [`MAX_GROWTH_STEP`]) if
/// that is more, and if the OS grants it. The caller set `growing`; the
/// lock is dropped for the system calls and held again on return.
///
/// Growing geometrically keeps a heap that climbs to gigabytes from
/// growing every 4 MiB: each `mprotect` also write-locks the mapping,
/// stalling other threads' page faults on it. The extra pages are fresh
/// (never touched, counted as released), so they cost neither RSS nor
/// retained memory, only address space that was reserved anyway and some
/// chunk metadata.
fn grow(heap: HeapGuard, bytes: usize) -> (HeapGuard, Option<()>) {
    let Some(need) = bytes.checked_next_multiple_of(CHUNK_BYTES) else {
        return (heap, None);
    };
    let step = (heap.pages.mapped_bytes() / 8).min(MAX_GROWTH_STEP).next_multiple_of(CHUNK_BYTES);
    let mut heap = heap;
    if step > need {
        let grew;
        (heap, grew) = grow_exactly(heap, step);
        if grew.is_some() {
            return (heap, grew);
        }
    }
    grow_exactly(heap, need)
}

/// Adds `bytes` (a multiple of the chunk size) of new address space to the
/// page allocator, as [`grow`] does.
fn grow_exactly(mut heap: HeapGuard, bytes: usize) -> (HeapGuard, Option<()>) {
    if heap.reserve.size() < bytes {
        let extended;
        (heap, extended) = extend_reserve(heap, bytes);
        if extended.is_none() {
            return (heap, None);
        }
    }
    let base = heap.reserve.base;
    let needs = match heap.pages.growth_needs(base, bytes) {
        Ok(needs) => needs,
        Err(_) => return (heap, None),
    };
    drop(heap);
    // SAFETY: `[base, base + bytes)` is reserved address space that we own
    // (only the growing thread hands it out) and that nothing uses yet.
    let maps = unsafe { os::map_ready(base, bytes) }.ok().and_then(|()| needs.map().ok());
    // On failure the range stays reserved (and perhaps ready, which is
    // harmless) for a later try.
    let mut heap = HEAP.lock();
    let Some(maps) = maps else {
        return (heap, None);
    };
    heap.pages.grow_mapped(maps);
    heap.reserve.base += bytes;
    (heap, Some(()))
}

/// Makes the reserve at least `bytes` long, preferably by reserving right
/// after it; with the lock dropped for the system calls.
fn extend_reserve(heap: HeapGuard, bytes: usize) -> (HeapGuard, Option<()>) {
    let old = heap.reserve;
    let missing = bytes - old.size();
    drop(heap);
    if old.limit != 0 {
        for want in [RESERVATION_BYTES.max(missing.next_multiple_of(CHUNK_BYTES)), missing] {
            if os::reserve_at(old.limit, want).is_ok() {
                let mut heap = HEAP.lock();
                heap.reserve.limit += want;
                return (heap, Some(()));
            }
        }
    }
    // Somewhere else.
    let mut fresh = None;
    for want in [RESERVATION_BYTES.max(bytes), bytes] {
        if let Ok(p) = os::reserve(want, CHUNK_BYTES) {
            fresh = Some(AddrRange::new(p.as_ptr() as usize, p.as_ptr() as usize + want));
            break;
        }
    }
    let Some(fresh) = fresh else {
        return (HEAP.lock(), None);
    };
    // The rest of the old reservation goes to the page allocator as free
    // pages first, so that no address space is lost; if it cannot, it is
    // given back.
    let mut heap = HEAP.lock();
    if old.size() != 0 {
        let needs = heap.pages.growth_needs(old.base, old.size());
        drop(heap);
        // SAFETY: reserved by us and never handed out.
        let maps = needs.ok().filter(|_| unsafe { os::map_ready(old.base, old.size()) }.is_ok());
        let maps = maps.and_then(|needs| needs.map().ok());
        if maps.is_none() {
            // SAFETY: as above; nothing refers to it.
            unsafe { os::unmap(old.base, old.size()) };
        }
        heap = HEAP.lock();
        if let Some(maps) = maps {
            heap.pages.grow_mapped(maps);
        }
    }
    heap.reserve = fresh;
    (heap, Some(()))
}

impl Default for PageHeap {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes of the heap not released to the OS (mapped minus released), as of
/// the last change; read without the lock to decide whether to wake the
/// scavenger.
pub static RETAINED: AtomicUsize = AtomicUsize::new(0);
/// Bytes of pages handed out, as of the last change.
pub static IN_USE: AtomicUsize = AtomicUsize::new(0);
/// The highest `IN_USE` since the scavenger last asked.
static PEAK_IN_USE: AtomicUsize = AtomicUsize::new(0);

/// The process heap's scavenge index, searched without the heap lock.
pub static INDEX: ScavengeIndex = ScavengeIndex::empty();

/// The process's page heap, behind the heap lock.
pub static HEAP: Mutex<PageHeap> = Mutex::new(PageHeap::new());

/// Takes the page cache's slot locks and then the heap lock, and keeps
/// them, before `fork()`.
///
/// A release in flight (runs taken out of the heap while their `madvise`
/// runs with the lock dropped, see `scavenge::release`) would leave the
/// child with pages that no thread of it owns: marked in use by nobody,
/// and never free again; a growth in flight (see [`alloc_growing`]) would
/// leave it with the `growing` flag set for good. So this waits, with the
/// lock dropped, until neither is in flight. The releasing thread needs only this lock to finish
/// (the caller holds the span layer's locks, and no release waits on
/// those), and a release takes a bounded batch, so the wait is short.
pub(crate) fn lock_for_fork() {
    // Slot locks come before the heap lock, as everywhere: a slot lends or
    // returns its block with its lock held.
    cache::lock_for_fork();
    FORKING.store(true, Ordering::Relaxed);
    loop {
        let mut heap = HEAP.lock();
        if heap.pages().pages_releasing() == 0 && !heap.growing {
            core::mem::forget(heap);
            return;
        }
        drop(heap);
        // SAFETY: `sched_yield` has no preconditions.
        unsafe { libc::sched_yield() };
    }
}

/// Set while a `fork()` waits for releases and growth in flight: no new
/// release batch or growth begins (read under the heap lock by
/// `scavenge::release` and [`alloc_growing`]), so the wait ends.
static FORKING: AtomicBool = AtomicBool::new(false);

/// Whether a `fork()` is waiting for the heap (see [`lock_for_fork`]).
pub(crate) fn fork_pending() -> bool {
    FORKING.load(Ordering::Relaxed)
}

/// Releases the lock taken by [`lock_for_fork`].
pub(crate) fn unlock_after_fork() {
    FORKING.store(false, Ordering::Relaxed);
    // SAFETY: `lock_for_fork` held it on this thread.
    unsafe { HEAP.release_after_fork() };
    cache::unlock_after_fork();
}
