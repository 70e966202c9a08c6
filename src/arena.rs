//! User arenas (Go's `arena` package): many objects with one lifetime,
//! allocated by bumping a pointer and freed all at once, with any use after
//! the free caught by a fault instead of reading reused memory.
//!
//! # How it works
//!
//! * Memory comes from the page heap in 8 MiB chunks, aligned to 8 MiB.
//!   Objects are bump-allocated in the current chunk; a request bigger than
//!   a quarter of a chunk gets a run of pages of its own. Every run starts
//!   with a small header linking it to the arena's previous run, so the
//!   arena needs no other memory to remember its runs.
//! * Every run is made of whole OS pages (bigger than the heap's 8 KiB
//!   pages on arm64 kernels with 16 or 64 KiB pages), so that faulting it
//!   touches nothing of the heap pages around it.
//! * A chunk belongs to one arena for its whole life: a partly used chunk
//!   is never handed to another arena.
//! * Freeing the arena maps every run afresh with no access (one `mmap` per
//!   run): the physical memory goes back to the OS at once, and a stale
//!   pointer into the arena faults (SIGSEGV) instead of reading memory that
//!   was reused. The address space then waits in a quarantine, oldest
//!   first; there is no garbage collector to prove it unreferenced, so the
//!   quarantine is bounded by `SCAVALLOC_ARENA_QUARANTINE` (address-space
//!   bytes, default 64 GiB): past the bound the oldest ranges are made
//!   usable again and go back to the page heap, released.
//!
//! Values' destructors are **not** run when the arena is freed (as with
//! bumpalo): an arena is for plain data, or for values whose `Drop` does
//! nothing that matters (memory they own elsewhere is leaked).
//!
//! An `Arena` is `Send` but not `Sync`: allocation bumps plain cells, which
//! is what makes it cheap; one thread allocates at a time (give each thread
//! its own arena, or move it).
//!
//! This module belongs to the API layer: it takes page runs from the
//! scavenge layer (so the heap's goals see them) and address-space states
//! from the OS layer.

use core::alloc::Layout;
use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::os;
use crate::pages::heap::RunUse;
use crate::pages::PAGE_SIZE;
use crate::persistent;
use crate::scavenge;
use crate::sync::{Mutex, MutexGuard};

/// Bytes of an arena chunk (and its alignment).
pub const CHUNK_BYTES: usize = 8 << 20;
const CHUNK_PAGES: usize = CHUNK_BYTES / PAGE_SIZE;

/// Requests larger than this get a run of pages of their own.
const MAX_BUMP: usize = CHUNK_BYTES / 4;

/// The start of every run of an arena: the run before it, and its size.
#[repr(C)]
struct RunHeader {
    prev: usize,
    npages: usize,
}

const HEADER: usize = core::mem::size_of::<RunHeader>();

/// Arena runs in live arenas, bytes.
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Bytes handed out by live arenas.
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
/// Live arenas.
static ARENAS: AtomicUsize = AtomicUsize::new(0);

/// An arena: see the module documentation.
///
/// ```
/// let arena = scavalloc::Arena::new();
/// let point: &mut (i32, i32) = arena.alloc((1, 2));
/// point.0 += 10;
/// let name = arena.alloc_str("scavalloc");
/// let squares = arena.alloc_slice_fill_with(5, |i| i * i);
/// assert_eq!((point.0, &*name, squares[4]), (11, "scavalloc", 16));
/// arena.free(); // everything at once; the references above are gone
/// ```
pub struct Arena {
    /// Next free byte of the current chunk (0 before the first chunk).
    next: Cell<usize>,
    /// End of the current chunk.
    end: Cell<usize>,
    /// The most recent run (its header links to the one before), or 0.
    last_run: Cell<usize>,
    /// Bytes handed out.
    allocated: Cell<usize>,
    /// Bytes of runs held.
    held: Cell<usize>,
    /// How much of `allocated` is counted in the statistics (brought up to
    /// date whenever the arena takes a run, to keep the bump path free of
    /// atomics).
    published: Cell<usize>,
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

impl Arena {
    /// An empty arena; it takes no memory until the first allocation.
    pub fn new() -> Arena {
        crate::api::ensure_init();
        ARENAS.fetch_add(1, Ordering::Relaxed);
        Arena {
            next: Cell::new(0),
            end: Cell::new(0),
            last_run: Cell::new(0),
            allocated: Cell::new(0),
            held: Cell::new(0),
            published: Cell::new(0),
        }
    }

    /// Bytes handed out by this arena so far.
    pub fn allocated_bytes(&self) -> usize {
        self.allocated.get()
    }

    /// Bytes of chunks and own runs this arena holds.
    pub fn chunk_bytes(&self) -> usize {
        self.held.get()
    }

    /// Memory for `layout`, or `None` when the OS refuses more. Zero-sized
    /// requests take no memory.
    #[inline]
    pub fn try_alloc_layout(&self, layout: Layout) -> Option<NonNull<u8>> {
        if layout.size() == 0 {
            // Any non-null, aligned address does for zero bytes.
            return NonNull::new(layout.align() as *mut u8);
        }
        let start = self.next.get().checked_add(layout.align() - 1)? & !(layout.align() - 1);
        if let Some(end) = start.checked_add(layout.size()) {
            if end <= self.end.get() && self.next.get() != 0 {
                self.next.set(end);
                self.allocated.set(self.allocated.get() + layout.size());
                return NonNull::new(start as *mut u8);
            }
        }
        self.alloc_slow(layout)
    }

    /// Memory for `layout`. Out of memory goes to the global out-of-memory
    /// handler, as `Box` does.
    #[inline]
    pub fn alloc_layout(&self, layout: Layout) -> NonNull<u8> {
        match self.try_alloc_layout(layout) {
            Some(p) => p,
            None => std::alloc::handle_alloc_error(layout),
        }
    }

    /// Moves `value` into the arena. Its destructor will not run.
    #[inline]
    #[allow(clippy::mut_from_ref)] // each call returns a new, distinct object
    pub fn alloc<T>(&self, value: T) -> &mut T {
        let p = self.alloc_layout(Layout::new::<T>()).cast::<T>();
        // SAFETY: `p` is fresh memory of `T`'s size and alignment (or a
        // dangling aligned pointer for a zero-sized `T`), not aliased; it
        // stays valid until the arena is freed, which needs `self` by value
        // and so ends every borrow of it first.
        unsafe {
            p.as_ptr().write(value);
            &mut *p.as_ptr()
        }
    }

    /// Copies `src` into the arena.
    #[allow(clippy::mut_from_ref)] // each call returns a new, distinct slice
    pub fn alloc_slice_copy<T: Copy>(&self, src: &[T]) -> &mut [T] {
        let layout = Layout::for_value(src);
        let p = self.alloc_layout(layout).cast::<T>();
        // SAFETY: fresh memory for `src.len()` values of `T`, disjoint from
        // `src`; valid as long as the arena, as in `alloc`.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr(), src.len());
            core::slice::from_raw_parts_mut(p.as_ptr(), src.len())
        }
    }

    /// A slice of `len` values, the `i`-th made by `f(i)`.
    #[allow(clippy::mut_from_ref)] // each call returns a new, distinct slice
    pub fn alloc_slice_fill_with<T>(&self, len: usize, mut f: impl FnMut(usize) -> T) -> &mut [T] {
        let layout = Layout::array::<T>(len).unwrap_or_else(|_| capacity_overflow());
        let p = self.alloc_layout(layout).cast::<T>();
        for i in 0..len {
            // SAFETY: `i < len`, within the fresh allocation. If `f` panics
            // the values written so far are simply never dropped.
            unsafe { p.as_ptr().add(i).write(f(i)) };
        }
        // SAFETY: all `len` values are initialised.
        unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), len) }
    }

    /// Copies `s` into the arena.
    #[allow(clippy::mut_from_ref)] // each call returns a new, distinct string
    pub fn alloc_str(&self, s: &str) -> &mut str {
        let bytes = self.alloc_slice_copy(s.as_bytes());
        // SAFETY: a byte-for-byte copy of a `str`, so valid UTF-8.
        unsafe { core::str::from_utf8_unchecked_mut(bytes) }
    }

    /// Frees everything the arena holds. Same as dropping it.
    pub fn free(self) {}

    /// Frees everything allocated so far but keeps the current chunk (and
    /// its resident memory) for what comes next, as `bumpalo`'s `reset`
    /// does: a loop that fills and empties an arena then costs no page
    /// faults. Needs `&mut self`, so no reference into the arena survives;
    /// the other runs are freed as by [`Arena::free`] (faulting, in
    /// quarantine).
    pub fn reset(&mut self) {
        let keep = if self.end.get() != 0 { self.end.get() - CHUNK_BYTES } else { 0 };
        let mut run = self.last_run.get();
        let mut freed = 0;
        while run != 0 {
            // SAFETY: `run` starts with the header written by `take_run`.
            let RunHeader { prev, npages } = unsafe { ptr::read(run as *const RunHeader) };
            if run != keep {
                free_run(run, npages);
                freed += npages * PAGE_SIZE;
            }
            run = prev;
        }
        if keep != 0 {
            // SAFETY: the kept chunk is ours; its header is rewritten to
            // make it the only run.
            unsafe { ptr::write(keep as *mut RunHeader, RunHeader { prev: 0, npages: CHUNK_PAGES }) };
            self.next.set(keep + HEADER);
        }
        self.last_run.set(keep);
        self.held.set(self.held.get() - freed);
        LIVE_BYTES.fetch_sub(freed, Ordering::Relaxed);
        ALLOCATED.fetch_sub(self.published.replace(0), Ordering::Relaxed);
        self.allocated.set(0);
        crate::scavenge::background::run_deferred();
    }

    #[cold]
    fn alloc_slow(&self, layout: Layout) -> Option<NonNull<u8>> {
        if layout.size() > MAX_BUMP || layout.align() > CHUNK_BYTES / 2 {
            return self.alloc_own_run(layout);
        }
        let base = self.take_run(CHUNK_PAGES, CHUNK_PAGES)?;
        // The rest of the old chunk is left unused: the chunk stays this
        // arena's until it is freed.
        let start = (base + HEADER).next_multiple_of(layout.align());
        self.next.set(start + layout.size());
        self.end.set(base + CHUNK_BYTES);
        self.allocated.set(self.allocated.get() + layout.size());
        NonNull::new(start as *mut u8)
    }

    /// A run of pages for one big object.
    fn alloc_own_run(&self, layout: Layout) -> Option<NonNull<u8>> {
        let align = layout.align().max(HEADER);
        let offset = HEADER.next_multiple_of(align);
        let bytes = offset.checked_add(layout.size())?;
        let npages = bytes.div_ceil(PAGE_SIZE);
        let base = self.take_run(npages, (align / PAGE_SIZE).max(1))?;
        self.allocated.set(self.allocated.get() + layout.size());
        NonNull::new((base + offset) as *mut u8)
    }

    /// Takes a run of at least `npages` pages aligned to `align_pages` pages
    /// from the page heap and links it to the arena's runs.
    ///
    /// The run is made of whole OS pages (which may be 16 or 64 KiB, bigger
    /// than a heap page), so that freeing it can fault all of it and touch
    /// nothing of its neighbours: the kernel acts on whole pages only.
    fn take_run(&self, npages: usize, align_pages: usize) -> Option<usize> {
        let os_pages = heap_pages_per_os_page();
        let npages = npages.checked_next_multiple_of(os_pages)?;
        let align_pages = align_pages.max(os_pages);
        let run = scavenge::alloc_pages(npages, align_pages, RunUse::Arena)?;
        let header = RunHeader { prev: self.last_run.get(), npages };
        // SAFETY: the run is fresh, readable and writable, and at least a
        // page long; its first bytes hold the header.
        unsafe { ptr::write(run.base as *mut RunHeader, header) };
        self.last_run.set(run.base);
        self.held.set(self.held.get() + npages * PAGE_SIZE);
        LIVE_BYTES.fetch_add(npages * PAGE_SIZE, Ordering::Relaxed);
        let (now, before) = (self.allocated.get(), self.published.replace(self.allocated.get()));
        ALLOCATED.fetch_add(now - before, Ordering::Relaxed);
        Some(run.base)
    }
}

/// With the `allocator-api2` feature: collections that take an allocator
/// (`allocator_api2::vec::Vec`, `hashbrown`) can live in an arena. Freeing
/// a block does nothing (the arena frees everything at once); growing one
/// allocates anew and copies.
#[cfg(feature = "allocator-api2")]
// SAFETY: blocks come from `try_alloc_layout`, fit the layout, and stay
// valid until the arena is freed, which cannot happen while a `&Arena`
// (and so the allocator) is alive.
unsafe impl allocator_api2::alloc::Allocator for &Arena {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        let p = self.try_alloc_layout(layout).ok_or(allocator_api2::alloc::AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    unsafe fn deallocate(&self, _ptr: NonNull<u8>, _layout: Layout) {}
}

#[cold]
fn capacity_overflow() -> ! {
    panic!("arena: slice too large for the address space")
}

impl Drop for Arena {
    fn drop(&mut self) {
        let mut run = self.last_run.get();
        while run != 0 {
            // SAFETY: `run` starts with the header written by `take_run`;
            // the run is still ours and mapped.
            let RunHeader { prev, npages } = unsafe { ptr::read(run as *const RunHeader) };
            free_run(run, npages);
            run = prev;
        }
        LIVE_BYTES.fetch_sub(self.held.get(), Ordering::Relaxed);
        ALLOCATED.fetch_sub(self.published.get(), Ordering::Relaxed);
        ARENAS.fetch_sub(1, Ordering::Relaxed);
        // Runs went back to the page heap and no lock is held.
        crate::scavenge::background::run_deferred();
    }
}

/// Heap pages per OS page (1 unless the OS page is bigger than a heap
/// page).
fn heap_pages_per_os_page() -> usize {
    (os::page_size() / PAGE_SIZE).max(1)
}

/// Frees one run of an arena: faults it (its memory goes back to the OS)
/// and puts it in quarantine.
fn free_run(run: usize, npages: usize) {
    let bytes = npages * PAGE_SIZE;
    let page = os::page_size();
    if !run.is_multiple_of(page) || !bytes.is_multiple_of(page) {
        // Not whole OS pages (`take_run` never makes such a run): faulting
        // or releasing it would reach into the neighbouring heap pages, so
        // it goes back to the page heap as it is.
        scavenge::free_pages(run, npages, RunUse::Arena);
        return;
    }
    // SAFETY: the run belongs to an arena that gives it up: whatever still
    // points into it is a use after free, which the fault is there to catch.
    // It is whole OS pages, so the kernel acts on it and nothing else.
    if unsafe { os::fault(run, bytes) }.is_ok() {
        scavenge::note_released_in_use(bytes);
        quarantine(run, npages);
    } else {
        // Could not fault it (no memory for a new mapping): give the memory
        // back and let the page heap reuse the run at once, as its own free
        // would.
        // SAFETY: as above.
        unsafe { os::release(run, bytes) }.ok();
        scavenge::free_pages(run, npages, RunUse::Arena);
    }
}

// ---------------------------------------------------------------------------
// The quarantine.

/// A quarantined range, in a FIFO list.
struct QuarantineNode {
    base: usize,
    npages: usize,
    next: *mut QuarantineNode,
}

struct Quarantine {
    /// Oldest range.
    head: *mut QuarantineNode,
    /// Newest range.
    tail: *mut QuarantineNode,
    /// Recycled nodes.
    free: *mut QuarantineNode,
    /// Bytes of address space quarantined.
    bytes: usize,
}

// SAFETY: the nodes live in persistent memory for the life of the process
// and are only touched under the quarantine's lock.
unsafe impl Send for Quarantine {}

static QUARANTINE: Mutex<Quarantine> =
    Mutex::new(Quarantine { head: ptr::null_mut(), tail: ptr::null_mut(), free: ptr::null_mut(), bytes: 0 });
/// Bytes quarantined, readable without the lock.
static QUARANTINED: AtomicUsize = AtomicUsize::new(0);
/// Whether the quarantine's list of recycled nodes is empty, readable
/// without the lock: new nodes come from persistent memory, which may map
/// memory (a system call), so they are fetched before the lock is taken.
static OUT_OF_NODES: AtomicBool = AtomicBool::new(true);
/// Nodes fetched at a time.
const NODES_PER_BLOCK: usize = 64;

/// The quarantine's lock, and a node for one more range: null only when
/// no memory is left for nodes. Node memory is fetched with the lock
/// dropped.
fn lock_with_node() -> (MutexGuard<'static, Quarantine>, *mut QuarantineNode) {
    let mut spare = None;
    if OUT_OF_NODES.load(Ordering::Relaxed) {
        spare = persistent::alloc_array::<QuarantineNode>(NODES_PER_BLOCK);
    }
    loop {
        let mut q = QUARANTINE.lock();
        if spare.is_some() || !q.free.is_null() {
            let node = q.new_node(spare);
            return (q, node);
        }
        // Another thread took the last node since the check above.
        drop(q);
        spare = persistent::alloc_array::<QuarantineNode>(NODES_PER_BLOCK);
        if spare.is_none() {
            let mut q = QUARANTINE.lock();
            let node = q.new_node(None);
            return (q, node);
        }
    }
}

/// Puts a faulted run in quarantine; if that takes the quarantine over its
/// bound, makes the oldest ranges usable again and gives them back to the
/// page heap.
fn quarantine(base: usize, npages: usize) {
    let bound = crate::config::get().arena_quarantine;
    let mut reuse = [(0usize, 0usize); 16];
    let mut n = 0;
    {
        let (mut q, node) = lock_with_node();
        if node.is_null() {
            // No memory for a node: the range cannot wait, reuse it now.
            reuse[0] = (base, npages);
            n = 1;
        } else {
            // SAFETY: a fresh node from `new_node`, ours under the lock.
            unsafe { node.write(QuarantineNode { base, npages, next: ptr::null_mut() }) };
            q.push(node);
        }
        while q.bytes > bound && n < reuse.len() {
            reuse[n] = q.pop_oldest();
            n += 1;
        }
        QUARANTINED.store(q.bytes, Ordering::Relaxed);
    }
    for &(base, npages) in &reuse[..n] {
        let bytes = npages * PAGE_SIZE;
        // SAFETY: the range is ours (out of every arena, out of the
        // quarantine): making it readable again hands it to the page heap.
        if unsafe { os::map_ready(base, bytes) }.is_ok() {
            scavenge::free_released_pages(base, npages, RunUse::Arena);
            scavenge::note_reclaimed_in_use(bytes);
        } else {
            // Cannot make it usable: keep it faulted, in quarantine.
            let (mut q, node) = lock_with_node();
            if !node.is_null() {
                // SAFETY: as above.
                unsafe { node.write(QuarantineNode { base, npages, next: ptr::null_mut() }) };
                q.push(node);
                QUARANTINED.store(q.bytes, Ordering::Relaxed);
            }
        }
    }
}

impl Quarantine {
    /// A node off the free list, after adding the `spare` block fetched
    /// before the lock (if any); null if there is none.
    fn new_node(&mut self, spare: Option<NonNull<QuarantineNode>>) -> *mut QuarantineNode {
        if let Some(block) = spare {
            for i in 0..NODES_PER_BLOCK {
                // SAFETY: the block holds NODES_PER_BLOCK nodes, fresh
                // persistent memory only we know of; we link them.
                unsafe {
                    let node = block.as_ptr().add(i);
                    (*node).next = self.free;
                    self.free = node;
                }
            }
        }
        let node = self.free;
        if !node.is_null() {
            // SAFETY: the head of the free list is a node we own.
            self.free = unsafe { (*node).next };
        }
        OUT_OF_NODES.store(self.free.is_null(), Ordering::Relaxed);
        node
    }

    fn push(&mut self, node: *mut QuarantineNode) {
        // SAFETY: `node` and the list's nodes are ours under the lock.
        unsafe {
            self.bytes += (*node).npages * PAGE_SIZE;
            if self.tail.is_null() {
                self.head = node;
            } else {
                (*self.tail).next = node;
            }
        }
        self.tail = node;
    }

    /// Takes the oldest range out (the list must not be empty).
    fn pop_oldest(&mut self) -> (usize, usize) {
        let node = self.head;
        // SAFETY: the caller checked `bytes > bound >= 0`, so the list is
        // not empty; its nodes are ours under the lock.
        unsafe {
            self.head = (*node).next;
            if self.head.is_null() {
                self.tail = ptr::null_mut();
            }
            let range = ((*node).base, (*node).npages);
            self.bytes -= range.1 * PAGE_SIZE;
            (*node).next = self.free;
            self.free = node;
            OUT_OF_NODES.store(false, Ordering::Relaxed);
            range
        }
    }
}

/// User arenas' figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Live arenas.
    pub arenas: usize,
    /// Bytes of chunks and own runs held by live arenas.
    pub chunk_bytes: usize,
    /// Bytes handed out by live arenas (as of the last run each took).
    pub allocated: usize,
    /// Bytes of address space of freed arenas kept faulting.
    pub quarantined: usize,
}

/// The figures of user arenas.
pub fn stats() -> ArenaStats {
    ArenaStats {
        arenas: ARENAS.load(Ordering::Relaxed),
        chunk_bytes: LIVE_BYTES.load(Ordering::Relaxed),
        allocated: ALLOCATED.load(Ordering::Relaxed),
        quarantined: QUARANTINED.load(Ordering::Relaxed),
    }
}

/// Takes the quarantine's lock before `fork()`.
pub(crate) fn lock_for_fork() {
    QUARANTINE.hold_for_fork();
}

/// Releases the lock taken by [`lock_for_fork`].
pub(crate) fn unlock_after_fork() {
    // SAFETY: `lock_for_fork` held it on this thread.
    unsafe { QUARANTINE.release_after_fork() };
}
