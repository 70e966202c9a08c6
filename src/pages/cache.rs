//! The page cache: blocks of 64 free pages held per CPU, so that making and
//! unmaking small-object spans rarely takes the heap lock (the Go runtime's
//! `pageCache`, per CPU rather than per P).
//!
//! # What this layer owns
//!
//! Free pages lent out of the page heap to a cache slot. A [`Block`] is one
//! 64-page-aligned piece of a chunk's bitmap: under the heap lock, in one
//! go, every free page of it is marked in use in the page heap and handed
//! to the block, with which of them were released to the OS. Spans of fewer
//! than [`MAX_CACHED_RUN`] pages are then cut from the block's bitmap under
//! the slot's own lock; a span freed on the CPU whose block holds its pages
//! goes back to that bitmap, and other spans freed there wait in a batch
//! ([`Pending`]) that reaches the heap under one lock. Pages held by a slot
//! stay free pages: the statistics count them in `heap_free` or
//! `heap_released` (and show them as `page_cache`), the scavenger's goals
//! count them as free, resident unless released; to release them the
//! scavenger first returns them to the heap ([`flush_all`], [`flush_idle`]).
//!
//! # Why per CPU
//!
//! Go keeps one cache per P; scavalloc has no P, and a cache per thread
//! would let idle threads pin memory. A slot per CPU (the slot of CPU `c` is
//! `c % MAX_SLOTS`, from `sched_getcpu`, a vDSO or rseq read) bounds what
//! the caches hold by the CPUs that allocate, 512 KiB each, and a slot's lock
//! is nearly always uncontended (only a thread that migrates between the
//! read of its CPU and the lock meets another). Slots of CPUs that never
//! make a span hold nothing, so no CPU count is needed (finding one would
//! be a system call, and the first span may be made under a class lock).
//!
//! # Frees
//!
//! Go's cache only hands pages out; a span freed goes to the heap under its
//! lock. Here a span freed on the CPU whose block holds its pages goes back
//! to the block, and any other span's run waits in the slot's [`Pending`]
//! batch, which goes to the heap under one lock acquisition when it is
//! full (or when the slot refills or is returned). Every page of a lent block that the block does not hold is
//! in use as far as the page heap knows (lending marked the whole block), so
//! a page in use can be freed either way: into the heap, which marks it
//! free there, or into the block. With a class's span freed and made again
//! on one CPU (classes of few objects per span, a thread's burst and its
//! frees), both ends of the round trip then stay off the heap lock, and
//! the pages are reused while still in that CPU's cache. A thread that
//! frees many spans at once (a cache flushed, a burst freed) takes the heap
//! lock once per [`PENDING_RUNS`] of them. The cost is that such pages wait
//! in the slot until it is used or returned (at most 64 pages in the block
//! and 16 runs of under 16 pages pending, per slot; returned when the
//! scavenger works or after a second idle) rather than being free in the
//! heap at once, and that a span freed twice is caught when the batch
//! reaches the heap rather than at the free.
//!
//! # Locking
//!
//! A slot's lock is taken after a class lock and before the heap lock,
//! never the other way round; the heap lock is taken under a slot lock only
//! to lend or return a block and to free a pending batch, none of which
//! makes a system call (growing the heap maps memory, so it happens after
//! the slot lock is dropped). `stats()` holds every slot lock while it
//! reads the heap, so that a block returned meanwhile is not counted twice. `fork()`
//! holds every slot lock, then the heap lock ([`super::heap::lock_for_fork`]).

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::heap::{PageHeapStats, RunUse, HEAP};
use super::{chunk_index, chunk_page_index, PageAlloc, PageRun, PAGE_SIZE};
use crate::os;
use crate::report::fatal;
use crate::sync::{Mutex, MutexGuard};

/// Pages in a block: one word of a chunk's bitmap.
pub const BLOCK_PAGES: usize = 64;
/// A block's size in bytes (512 KiB), and its alignment.
pub const BLOCK_BYTES: usize = BLOCK_PAGES * PAGE_SIZE;
/// Runs of fewer pages than this are served from blocks (a quarter of a
/// block, as in Go: a longer run would empty a block in a few takes).
pub const MAX_CACHED_RUN: usize = BLOCK_PAGES / 4;
/// Slots: CPUs beyond this share slots.
pub const MAX_SLOTS: usize = 64;
/// Span runs a slot batches before it frees them to the heap.
pub const PENDING_RUNS: usize = 16;
/// A slot not used for this long is returned to the heap by the scavenger.
pub const IDLE_MS: u64 = 1000;

/// The bits `[lo, lo + n)` of a word (`lo + n <= 64`, `n >= 1`).
#[inline]
fn bits(lo: usize, n: usize) -> u64 {
    (u64::MAX >> (64 - n)) << lo
}

/// Bits at multiples of `align` (a power of two up to 64).
#[inline]
fn aligned_starts(align: usize) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < 64 {
        m |= 1 << i;
        i += align;
    }
    m
}

/// A block of 64 pages lent out of the page heap, and which of them are
/// free here; or nothing (`base == 0`).
///
/// Every page of the block that `free` does not hold is in use in the page
/// heap's bitmap, whoever uses it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Block {
    /// First address, a multiple of [`BLOCK_BYTES`]; 0 if none.
    base: usize,
    /// Bit `i`: page `base + i * PAGE_SIZE` is free here.
    free: u64,
    /// Bit `i`: that free page was released to the OS (or never touched).
    /// Always within `free`.
    scav: u64,
}

impl Block {
    /// No block.
    pub const NONE: Block = Block { base: 0, free: 0, scav: 0 };

    /// First address of the block, 0 if none.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Free pages held.
    pub fn free_pages(&self) -> usize {
        self.free.count_ones() as usize
    }

    /// Free pages held that are released.
    pub fn released_pages(&self) -> usize {
        self.scav.count_ones() as usize
    }

    /// Whether runs of `npages` aligned to `align_pages` pages are served by
    /// blocks.
    #[inline]
    pub fn serves(npages: usize, align_pages: usize) -> bool {
        (1..MAX_CACHED_RUN).contains(&npages) && align_pages <= BLOCK_PAGES && align_pages.is_power_of_two()
    }

    /// Takes the lowest run of `npages` free pages aligned to `align_pages`
    /// from the block, if it has one (see [`serves`](Self::serves)).
    #[inline]
    pub fn alloc(&mut self, npages: usize, align_pages: usize) -> Option<PageRun> {
        debug_assert!(Self::serves(npages, align_pages));
        if self.free == 0 {
            return None;
        }
        // Bit i survives if pages i .. i + npages are all free (the shifts
        // bring in zeroes from the top, so no run passes the block's end).
        let mut starts = self.free;
        for s in 1..npages {
            starts &= self.free >> s;
        }
        if align_pages > 1 {
            starts &= aligned_starts(align_pages);
        }
        if starts == 0 {
            return None;
        }
        let i = starts.trailing_zeros() as usize;
        let run = bits(i, npages);
        let scavenged = (self.scav & run).count_ones() as usize;
        self.free &= !run;
        self.scav &= !run;
        Some(PageRun { base: self.base + i * PAGE_SIZE, scavenged_bytes: scavenged * PAGE_SIZE })
    }

    /// Takes back `npages` pages at `base`, in use until now and not
    /// released, if they lie in this block; returns whether they did.
    /// Pages already free here stop the process (a double free).
    #[inline]
    pub fn free(&mut self, base: usize, npages: usize) -> bool {
        if self.base == 0 || base < self.base || npages == 0 {
            return false;
        }
        let i = (base - self.base) / PAGE_SIZE;
        if i + npages > BLOCK_PAGES {
            return false;
        }
        let run = bits(i, npages);
        if self.free & run != 0 {
            let page = self.base + (self.free & run).trailing_zeros() as usize * PAGE_SIZE;
            fatal(format_args!(
                "page cache: freeing {npages} pages at {base:#x}: page {page:#x} is already free (double free)"
            ));
        }
        self.free |= run;
        true
    }

    /// Returns the block's free pages to `pages`, and holds nothing.
    pub fn flush(&mut self, pages: &mut PageAlloc) {
        if self.base != 0 {
            pages.return_block(self.base, self.free, self.scav);
        }
        *self = Block::NONE;
    }

    /// Serves `npages` aligned to `align_pages` from `pages` when this
    /// block cannot: returns the block, allocates the run from the heap
    /// (without growing it, at the lowest address that fits, as any run),
    /// and lends the slot the rest of the 64-page block the run lies in, as
    /// Go does. `None` if the heap has no room.
    ///
    /// Searching the heap for a roomier block (one with a free run of half
    /// a block) when the run's own block is nearly full saved few heap-lock
    /// trips in a fragmented heap (about 6%) and cost a summary search on
    /// every refill, which made large-object allocation (the same searches)
    /// 15% slower in a mixed-size workload; so the block lent is always the
    /// run's own.
    pub fn refill(&mut self, pages: &mut PageAlloc, npages: usize, align_pages: usize) -> Option<PageRun> {
        self.flush(pages);
        let run = pages.alloc_aligned(npages, align_pages)?;
        let home = run.base & !(BLOCK_BYTES - 1);
        let home = (run.base + npages * PAGE_SIZE <= home + BLOCK_BYTES).then_some(home);
        if let Some(base) = home {
            let (free, scav) = pages.lend_block(base);
            *self = Block { base, free, scav };
        }
        Some(run)
    }
}

/// Span runs freed but not yet given back to the heap, to be freed there
/// together under one heap-lock acquisition. Their pages are free (resident
/// and unreleased: they come from spans) though the heap counts them in
/// use until then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// `(base, npages)` of each run.
    runs: [(usize, usize); PENDING_RUNS],
    len: usize,
}

impl Pending {
    /// No runs.
    pub const EMPTY: Pending = Pending { runs: [(0, 0); PENDING_RUNS], len: 0 };

    /// Pages waiting.
    pub fn pages(&self) -> usize {
        self.runs[..self.len].iter().map(|&(_, n)| n).sum()
    }

    /// Adds a run; `false` if the batch is full.
    #[inline]
    pub fn push(&mut self, base: usize, npages: usize) -> bool {
        if self.len == PENDING_RUNS {
            return false;
        }
        self.runs[self.len] = (base, npages);
        self.len += 1;
        true
    }

    /// Frees every run in `pages` (a run not in use there stops the
    /// process: a span freed twice), and holds none.
    pub fn flush(&mut self, pages: &mut PageAlloc) {
        for &(base, npages) in &self.runs[..self.len] {
            pages.free(base, npages, false);
        }
        self.len = 0;
    }
}

impl PageAlloc {
    /// Lends every free page of the 64-page block at `base` (a multiple of
    /// [`BLOCK_BYTES`] in owned address space) to a page cache: marks them in
    /// use and returns which were free and which of those released.
    pub fn lend_block(&mut self, base: usize) -> (u64, u64) {
        debug_assert!(base.is_multiple_of(BLOCK_BYTES));
        if !self.in_use.contains(base) {
            fatal(format_args!("page cache: lending the block at {base:#x}, outside the heap"));
        }
        let ci = chunk_index(base);
        let (free, scav) = self.owned_chunk_mut(ci).lend_word(chunk_page_index(base) / BLOCK_PAGES);
        if free != 0 {
            self.pages_in_use += free.count_ones() as usize;
            self.pages_scavenged -= scav.count_ones() as usize;
            self.note_density(ci, ci);
            self.update(base, BLOCK_PAGES, false, true);
        }
        (free, scav)
    }

    /// Takes back the pages `free` of the block at `base` lent by
    /// [`lend_block`](Self::lend_block), the `scav` ones marked released.
    /// A page among them that is not in use stops the process.
    pub fn return_block(&mut self, base: usize, free: u64, scav: u64) {
        if free == 0 {
            return;
        }
        let ci = chunk_index(base);
        if !self.in_use.contains(base) {
            fatal(format_args!("page cache: returning a block at {base:#x}, outside the heap"));
        }
        if let Err(i) = self.owned_chunk_mut(ci).return_word(chunk_page_index(base) / BLOCK_PAGES, free, scav) {
            fatal(format_args!(
                "page cache: returning the block at {base:#x}: page {:#x} is not in use",
                super::chunk_base(ci) + i * PAGE_SIZE
            ));
        }
        self.pages_in_use -= free.count_ones() as usize;
        self.pages_scavenged += scav.count_ones() as usize;
        let first = base + free.trailing_zeros() as usize * PAGE_SIZE;
        if first < self.search_addr {
            self.search_addr = first;
        }
        // As in `free`: unreleased free pages are work for the scavenger,
        // and with OS pages larger than heap pages a released page may share
        // its physical page with one that is not.
        if free & !scav != 0 || os::page_size() > PAGE_SIZE {
            self.index.mark(ci, ci);
        }
        self.update(base, BLOCK_PAGES, false, false);
    }
}

/// One CPU's slot.
struct Slot {
    block: Block,
    pending: Pending,
    /// When the slot was last used, in [`os::coarse_ms`].
    last_used_ms: u64,
}

impl Slot {
    /// Free pages held: the block's, and the pending runs'.
    fn free_pages(&self) -> usize {
        self.block.free_pages() + self.pending.pages()
    }

    /// Whether the slot holds nothing for the heap.
    fn is_empty(&self) -> bool {
        self.block.base() == 0 && self.pending.len == 0
    }
}

/// A slot with its lock, on lines of its own, and the figures of its
/// block that the scavenger's goals read without the lock.
#[repr(align(128))]
struct PaddedSlot {
    slot: Mutex<Slot>,
    /// Free pages the block holds (written under the lock).
    free_pages: AtomicUsize,
    /// Of those, the released ones.
    released_pages: AtomicUsize,
}

impl PaddedSlot {
    /// Publishes the slot's figures (the caller holds its lock).
    #[inline]
    fn publish(&self, slot: &Slot) {
        self.free_pages.store(slot.free_pages(), Ordering::Relaxed);
        self.released_pages.store(slot.block.released_pages(), Ordering::Relaxed);
    }
}

static SLOTS: [PaddedSlot; MAX_SLOTS] = [const {
    PaddedSlot {
        slot: Mutex::new(Slot { block: Block::NONE, pending: Pending::EMPTY, last_used_ms: 0 }),
        free_pages: AtomicUsize::new(0),
        released_pages: AtomicUsize::new(0),
    }
}; MAX_SLOTS];

/// One past the highest slot ever used: the slots beyond hold nothing.
static SLOTS_USED: AtomicUsize = AtomicUsize::new(0);

/// Whether spans go through the cache (test builds can turn it off, to
/// compare).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// The slot of the CPU the thread runs on, marked used.
#[inline]
fn current_slot() -> &'static PaddedSlot {
    // SAFETY: `sched_getcpu` has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    let i = if cpu < 0 { 0 } else { cpu as usize % MAX_SLOTS };
    if SLOTS_USED.load(Ordering::Relaxed) <= i {
        SLOTS_USED.fetch_max(i + 1, Ordering::Relaxed);
    }
    &SLOTS[i]
}

/// The slots that may hold pages.
fn used_slots() -> &'static [PaddedSlot] {
    &SLOTS[..SLOTS_USED.load(Ordering::Relaxed).min(MAX_SLOTS)]
}

/// Whether a span of `npages` aligned to `align_pages` is served here.
#[inline]
pub fn serves(npages: usize, align_pages: usize) -> bool {
    Block::serves(npages, align_pages) && ENABLED.load(Ordering::Relaxed)
}

/// Heap-lock acquisitions by the page-run paths (test builds only): the
/// cache's, and the scavenge layer's wrappers count theirs here too.
#[cfg(feature = "testing")]
static HEAP_TAKES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Counts one heap-lock acquisition of a page-run path (test builds only).
#[inline(always)]
pub fn count_heap_take() {
    #[cfg(feature = "testing")]
    HEAP_TAKES.fetch_add(1, Ordering::Relaxed);
}

/// The heap-lock acquisitions counted by [`count_heap_take`].
#[cfg(feature = "testing")]
pub fn heap_takes() -> u64 {
    HEAP_TAKES.load(Ordering::Relaxed)
}

/// Turns the cache on or off (test builds). Turning it off returns every
/// block first.
#[cfg(feature = "testing")]
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
    if !on {
        flush_all();
    }
}

/// Makes a span's run of `npages` pages aligned to `align_pages` (see
/// [`serves`]) from this CPU's block, refilling the block under the heap
/// lock when it has no such run. Also returns how many bytes the heap grew
/// by to serve it. `None` when the OS refuses memory.
pub fn alloc(npages: usize, align_pages: usize) -> Option<(PageRun, usize)> {
    let now = os::coarse_ms();
    let padded = current_slot();
    let run = {
        let mut slot = padded.slot.lock();
        slot.last_used_ms = now;
        let run = match slot.block.alloc(npages, align_pages) {
            Some(run) => Some(run),
            None => {
                let slot = &mut *slot;
                let mut heap = HEAP.lock();
                count_heap_take();
                // The pending runs first: the run may reuse their pages.
                heap.flush_pending(&mut slot.pending);
                heap.refill_block(&mut slot.block, npages, align_pages)
            }
        };
        padded.publish(&slot);
        run
    };
    match run {
        Some(run) => Some((run, 0)),
        // The heap must grow, which maps memory: not under the slot lock.
        // The block was returned; the next miss takes one from the new
        // space.
        None => {
            count_heap_take();
            super::heap::alloc_growing(npages, align_pages, RunUse::Span)
        }
    }
}

/// Takes back a span's `npages` pages at `base` (in use, not released;
/// fewer than [`MAX_CACHED_RUN`]): into this CPU's block if they lie in it,
/// else into its pending batch, which goes to the heap (under one heap-lock
/// acquisition) when full. Returns `false`, having done nothing, when the
/// cache is off.
pub fn free(base: usize, npages: usize) -> bool {
    if !ENABLED.load(Ordering::Relaxed) {
        return false;
    }
    let now = os::coarse_ms();
    let padded = current_slot();
    let mut slot = padded.slot.lock();
    let slot = &mut *slot;
    slot.last_used_ms = now;
    if !slot.block.free(base, npages) && !slot.pending.push(base, npages) {
        let mut heap = HEAP.lock();
        count_heap_take();
        heap.flush_pending(&mut slot.pending);
        heap.free(base, npages, RunUse::Span, false);
    }
    padded.publish(slot);
    true
}

/// Returns the block and the pending runs of `padded` to the heap, if it
/// has any and `should(slot)` says so.
fn flush_slot(padded: &PaddedSlot, should: impl FnOnce(&Slot) -> bool) {
    let mut slot = padded.slot.lock();
    if slot.is_empty() || !should(&slot) {
        return;
    }
    {
        let slot = &mut *slot;
        let mut heap = HEAP.lock();
        count_heap_take();
        heap.flush_pending(&mut slot.pending);
        heap.flush_block(&mut slot.block);
    }
    padded.publish(&slot);
}

/// Returns every slot's block to the heap, so that the scavenger can
/// release its free pages (the background scavenger before it works,
/// `release_all`, the memory limit).
pub fn flush_all() {
    for padded in used_slots() {
        flush_slot(padded, |_| true);
    }
}

/// Returns the blocks of slots not used for [`IDLE_MS`] before `now_ms`
/// ([`os::coarse_ms`]) to the heap.
pub fn flush_idle(now_ms: u64) {
    for padded in used_slots() {
        flush_slot(padded, |slot| now_ms.saturating_sub(slot.last_used_ms) >= IDLE_MS);
    }
}

/// Bytes of free pages the slots hold, as last published (read without
/// their locks).
pub fn free_bytes() -> usize {
    used_slots().iter().map(|p| p.free_pages.load(Ordering::Relaxed)).sum::<usize>() * PAGE_SIZE
}

/// Bytes of released free pages the slots hold, as last published.
pub fn released_bytes() -> usize {
    used_slots().iter().map(|p| p.released_pages.load(Ordering::Relaxed)).sum::<usize>() * PAGE_SIZE
}

/// The page heap's counters with the slots' free pages counted as free
/// (resident or released) and not in use, and as `page_cache`: read with
/// every slot lock and then the heap lock held, so that a block returned
/// meanwhile is not counted twice.
pub fn heap_stats() -> PageHeapStats {
    let used = used_slots();
    let guards: [Option<MutexGuard<'_, Slot>>; MAX_SLOTS] =
        core::array::from_fn(|i| used.get(i).map(|p| p.slot.lock()));
    let (mut free, mut released) = (0, 0);
    for slot in guards.iter().flatten() {
        free += slot.free_pages();
        released += slot.block.released_pages();
    }
    let mut s = HEAP.lock().stats();
    drop(guards);
    s.in_use -= free * PAGE_SIZE;
    s.free_unscavenged += (free - released) * PAGE_SIZE;
    s.released += released * PAGE_SIZE;
    s.page_cache = free * PAGE_SIZE;
    s
}

/// Takes every slot lock and keeps it, before `fork()` (after the class
/// locks, before the heap lock).
pub(crate) fn lock_for_fork() {
    for padded in &SLOTS {
        padded.slot.hold_for_fork();
    }
}

/// Releases the locks taken by [`lock_for_fork`].
pub(crate) fn unlock_after_fork() {
    for padded in &SLOTS {
        // SAFETY: `lock_for_fork` held it on this thread.
        unsafe { padded.slot.release_after_fork() };
    }
}

#[cfg(test)]
mod tests;
