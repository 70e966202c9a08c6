//! Per-thread caches of free objects (Go's `mcache`, jemalloc's tcache).
//!
//! Each thread has, per size class, a stack of free object addresses. The
//! allocation fast path pops from it and the free fast path pushes onto it:
//! a thread-local load, two compares and two plain stores, with no atomic
//! read-modify-write and no lock.
//!
//! # Objects go home
//!
//! A thread *owns* one span per class (see [`central::refill_owned`]): no
//! other thread hands out objects of it. The free fast path keeps an object
//! at once if it lies in the thread's own span (one subtraction and compare
//! against the span's range), or if no other thread has a cache (a
//! single-threaded program). Any other object takes the slow path, which
//! reads its page-map entry: that names the thread cache that owns the
//! object's span, or last did. The thread keeps the object only if that is
//! itself (it took the object from the span); otherwise the object goes
//! into the class's *home-bound* buffer, and the buffer goes back to the
//! objects' spans in one batch, under one lock, when it fills. So an object
//! is never handed out again by a thread that did not take it from its
//! span: objects that share a cache line are not handed to two threads at
//! once (passive false sharing), and a thread that frees what another
//! allocates does not take that thread's objects.
//!
//! When a stack runs dry it is refilled, within one lock hold, to at least
//! half its capacity from the thread's span and, if that runs out, from
//! spans it takes over (one it owned last, when one is ready); when it is
//! full, its older half goes back to its spans in one batch.
//!
//! # Bounds
//!
//! A class's stack holds `clamp(16 KiB / size, 4, 256)` objects and its
//! home-bound buffer `clamp(8 KiB / size, 2, 128)`, so a thread never caches
//! more than [`MAX_CACHED_BYTES_PER_THREAD`] bytes of objects (about 2.9 MiB
//! over all classes, plus 416 KiB of freed large objects; in practice only
//! the classes it uses), besides the free objects of the spans it owns.
//!
//! # Set-up and thread exit
//!
//! A thread starts pointing at a shared, empty cache whose stacks have no
//! room, so its first allocation takes the slow path, which attaches a real
//! cache without allocating through the global allocator: caches come from
//! persistent memory and are reused after their threads exit. A pthread key
//! destructor flushes the cache back to the central lists (and gives up the
//! thread's spans) when the thread exits, and points the thread at a second
//! empty cache, the *dead* one: any allocation or free that a later TLS
//! destructor makes goes straight to the central lists, so nothing is
//! stranded.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::sizeclass::{self, NUM_CLASSES};
use super::pagemap;
use super::sampled;
use super::span::Span;
use super::{central, large};
use crate::persistent;
use crate::sync::{Handshake, Mutex};

pub(crate) mod trim;

/// Target bytes of objects cached per class.
const BIN_BYTES: usize = 16 << 10;
/// Fewest slots a class's stack has.
const MIN_SLOTS: usize = 4;
/// Most slots a class's stack has.
const MAX_SLOTS: usize = 256;

/// Target bytes of objects in a class's home-bound buffer: a batch sent
/// home under one lock.
const HOME_BYTES: usize = 8 << 10;
/// Fewest slots a home-bound buffer has: objects of 4 KiB and more go
/// home in pairs, where the lock round trip is small beside the object.
const MIN_HOME_SLOTS: usize = 2;
/// Most slots a home-bound buffer has.
const MAX_HOME_SLOTS: usize = 128;

const fn clamp_slots(n: usize, min: usize, max: usize) -> usize {
    if n < min {
        min
    } else if n > max {
        max
    } else {
        n
    }
}

/// Slots in the stack of `class`.
pub const fn bin_capacity(class: usize) -> usize {
    clamp_slots(BIN_BYTES / sizeclass::class_size(class), MIN_SLOTS, MAX_SLOTS)
}

/// Slots in the home-bound buffer of `class`.
pub const fn home_capacity(class: usize) -> usize {
    clamp_slots(HOME_BYTES / sizeclass::class_size(class), MIN_HOME_SLOTS, MAX_HOME_SLOTS)
}

const fn slot_offsets() -> [usize; NUM_CLASSES + 1] {
    let mut off = [0; NUM_CLASSES + 1];
    let mut c = 0;
    while c < NUM_CLASSES {
        off[c + 1] = off[c] + bin_capacity(c) + home_capacity(c);
        c += 1;
    }
    off
}

/// Where each class's slots (its stack's, then its home-bound buffer's)
/// start in a cache's slot array.
const SLOT_OFFSETS: [usize; NUM_CLASSES + 1] = slot_offsets();
const TOTAL_SLOTS: usize = SLOT_OFFSETS[NUM_CLASSES];

#[cfg(any(test, feature = "testing"))]
/// The most bytes of objects one thread's cache can hold.
pub const MAX_CACHED_BYTES_PER_THREAD: usize = {
    let mut total = 0;
    let mut c = 0;
    while c < NUM_CLASSES {
        total += (bin_capacity(c) + home_capacity(c)) * sizeclass::class_size(c);
        c += 1;
    }
    total
};

/// Large objects from 33 to 64 KiB (5 to 8 pages) are cached per thread
/// too: without it every one is two page-heap round trips (a summary update
/// each), which made a workload of mixed sizes up to 64 KiB no faster than
/// glibc. Two per page count: at most 416 KiB per thread.
pub const LARGE_MIN_PAGES: usize = 5;
/// See [`LARGE_MIN_PAGES`].
pub const LARGE_MAX_PAGES: usize = 8;
/// See [`LARGE_MIN_PAGES`].
pub const LARGE_PER_SIZE: usize = 2;
const LARGE_SLOTS: usize = (LARGE_MAX_PAGES - LARGE_MIN_PAGES + 1) * LARGE_PER_SIZE;

/// The slots of the large cache for `npages`, if it caches that size.
fn large_slots(npages: usize) -> Option<core::ops::Range<usize>> {
    (LARGE_MIN_PAGES..=LARGE_MAX_PAGES)
        .contains(&npages)
        .then(|| (npages - LARGE_MIN_PAGES) * LARGE_PER_SIZE..(npages - LARGE_MIN_PAGES + 1) * LARGE_PER_SIZE)
}

/// Takes a cached large object's span of `npages` pages from the calling
/// thread's cache, or null.
pub fn take_large(npages: usize) -> *mut Span {
    let Some(slots) = large_slots(npages) else { return ptr::null_mut() };
    // SAFETY: `current()` is valid for the thread's life.
    let cache = unsafe { &*current() };
    let seq = cache.gate.enter();
    let mut taken = ptr::null_mut();
    for slot in &cache.large[slots] {
        // Static caches hold only nulls; a real one is ours, and we are
        // inside its gate.
        let span = slot.load(Ordering::Relaxed);
        if !span.is_null() {
            slot.store(ptr::null_mut(), Ordering::Relaxed);
            taken = span;
            break;
        }
    }
    cache.gate.exit(seq);
    taken
}

/// Keeps a freed large object's span in the calling thread's cache;
/// false when there is no room (or no cache).
pub fn keep_large(span: *mut Span, npages: usize) -> bool {
    let cache = current();
    if is_static(cache) {
        return false;
    }
    let Some(slots) = large_slots(npages) else { return false };
    // SAFETY: a real cache owned by this thread.
    let cache = unsafe { &*cache };
    let seq = cache.gate.enter();
    let mut kept = false;
    for slot in &cache.large[slots] {
        // Inside the gate: the slots are ours.
        if slot.load(Ordering::Relaxed).is_null() {
            slot.store(span, Ordering::Relaxed);
            kept = true;
            break;
        }
    }
    cache.gate.exit(seq);
    kept
}

/// One class's stack of cached objects.
#[repr(C)]
struct Bin {
    /// Objects on the stack. Written only by the owning thread, read by
    /// statistics from any thread, hence atomic (with plain loads and
    /// stores, never a read-modify-write).
    count: AtomicU32,
    /// Slots available; zero in the shared empty caches.
    cap: u32,
    /// The stack's storage: `cap` slots.
    slots: *mut *mut u8,
    /// The thread's own span of this class: its first object's address
    /// and the bytes its objects cover (0 without one). An object is kept
    /// on the stack only if `object - span_base < span_len`. Only the
    /// owning thread reads or writes these (atomics with plain loads and
    /// stores, for the shared empty caches' `Sync`).
    span_base: AtomicUsize,
    span_len: AtomicUsize,
}

/// One class's buffer of objects on their way home: freed by this thread
/// but from other spans than its own.
#[repr(C)]
struct HomeBound {
    /// Objects in the buffer (atomic for the same reason as `Bin::count`).
    count: AtomicU32,
    /// Slots available.
    cap: u32,
    /// The buffer's storage: `cap` slots.
    slots: *mut *mut u8,
}

/// A thread's cache.
#[repr(C)]
pub struct ThreadCache {
    bins: [Bin; NUM_CLASSES],
    /// Per class, objects freed here that go back to other spans.
    home: [HomeBound; NUM_CLASSES],
    /// Per class, the span this thread owns (null: none). Only the owning
    /// thread uses these.
    owned: [AtomicPtr<Span>; NUM_CLASSES],
    /// The cache's id, recorded in the page map for the spans it owns (0 in
    /// the shared empty caches; ids wrap after 65,535 caches, which only
    /// blurs whose objects are whose).
    id: u16,
    /// Freed large objects of `LARGE_MIN_PAGES..=LARGE_MAX_PAGES` pages,
    /// [`LARGE_PER_SIZE`] per page count, kept for this thread's next large
    /// allocation of the same page count (null: empty). Atomics for the same
    /// reason as `Bin::count`.
    large: [AtomicPtr<Span>; LARGE_SLOTS],
    /// The owning thread enters and leaves the cache through this on every
    /// use, so that the scavenger can take the cache over to trim it while
    /// the thread is away (see [`trim`]).
    gate: Handshake,
    /// The trimmer's notes, read and written only under the registry lock:
    /// the gate's count when it last looked, and when (coarse ms) it last
    /// saw the count change.
    seen_seq: AtomicU32,
    seen_active_ms: AtomicU64,
    /// Links in the registry of live caches, or in the pool of free ones.
    next: *mut ThreadCache,
    prev: *mut ThreadCache,
}

/// A cache that lives in a static: the shared empty ones.
struct StaticCache(ThreadCache);

// SAFETY: the static caches have zero capacity everywhere and no span, so
// their counts stay 0, their slots are never touched and their spans stay
// null. The only writes are to the gate's count, an atomic (every thread
// passing through enters and leaves it; no trimmer ever looks at these).
unsafe impl Sync for StaticCache {}

const fn empty_cache() -> StaticCache {
    StaticCache(ThreadCache {
        bins: [const {
            Bin {
                count: AtomicU32::new(0),
                cap: 0,
                slots: ptr::null_mut(),
                span_base: AtomicUsize::new(0),
                span_len: AtomicUsize::new(0),
            }
        }; NUM_CLASSES],
        home: [const { HomeBound { count: AtomicU32::new(0), cap: 0, slots: ptr::null_mut() } }; NUM_CLASSES],
        owned: [const { AtomicPtr::new(ptr::null_mut()) }; NUM_CLASSES],
        id: 0,
        large: [const { AtomicPtr::new(ptr::null_mut()) }; LARGE_SLOTS],
        gate: Handshake::new(),
        seen_seq: AtomicU32::new(0),
        seen_active_ms: AtomicU64::new(0),
        next: ptr::null_mut(),
        prev: ptr::null_mut(),
    })
}

/// Where every thread starts: no room anywhere, so the first use attaches a
/// real cache.
static UNATTACHED: StaticCache = empty_cache();
/// Where a thread goes once its cache has been flushed at exit: no room,
/// and the slow path sends everything straight to the central lists.
static DEAD: StaticCache = empty_cache();

/// The thread-local words every allocation reads, kept in one block: in
/// the C library (a shared object) each thread-local costs a call to
/// `__tls_get_addr`, and one block costs one call where two variables cost
/// two (about 8% of a single-threaded C `malloc` benchmark).
struct ThreadWords {
    /// The thread's cache (a shared empty one until it attaches one).
    current: Cell<*const ThreadCache>,
    /// The heap profiler's count-down to its next sample
    /// (`crate::profile`, which owns what it means), kept here beside the
    /// cache pointer for the one lookup.
    sample_left: Cell<isize>,
}

thread_local! {
    // `const` and not `Drop`: compiled to a plain thread-local slot with no
    // lazy-initialisation check and no destructor registration, so reading
    // it never allocates and it stays readable during thread exit.
    static WORDS: ThreadWords = const {
        ThreadWords { current: Cell::new(&UNATTACHED.0), sample_left: Cell::new(0) }
    };
}

#[inline(always)]
fn current() -> *const ThreadCache {
    WORDS.with(|w| w.current.get())
}

/// Runs `f` on the calling thread's sampling count-down (see
/// [`ThreadWords`]); it starts at 0.
#[inline(always)]
pub(crate) fn with_sample_left<R>(f: impl FnOnce(&Cell<isize>) -> R) -> R {
    WORDS.with(|w| f(&w.sample_left))
}

/// Pops a cached object of `class`, or returns null when the stack is
/// empty or the scavenger is trimming the cache (the caller then takes
/// [`alloc_slow`]).
#[inline(always)]
pub fn pop(class: usize) -> *mut u8 {
    // SAFETY: `current()` is this thread's cache or a static empty one,
    // valid for the thread's life.
    let cache = unsafe { &*current() };
    // The scavenger is trimming the cache: the slow path waits for it.
    let Some(seq) = cache.gate.try_enter() else { return ptr::null_mut() };
    // SAFETY: inside the gate; `class < NUM_CLASSES` is the caller's
    // (size-class lookup's) guarantee.
    let object = unsafe { pop_inside(cache, class) };
    cache.gate.exit(seq);
    object
}

/// [`pop`], for a caller already inside `cache`'s gate.
///
/// # Safety
///
/// `cache` is the calling thread's current cache, entered through its gate,
/// and `class < NUM_CLASSES`.
#[inline(always)]
unsafe fn pop_inside(cache: &ThreadCache, class: usize) -> *mut u8 {
    // SAFETY: `class` is in bounds per the contract.
    let bin = unsafe { &*cache.bins.as_ptr().add(class) };
    let n = bin.count.load(Ordering::Relaxed);
    if n == 0 {
        return ptr::null_mut();
    }
    bin.count.store(n - 1, Ordering::Relaxed);
    // SAFETY: n > 0 only in a real cache owned by this thread (and not
    // taken by the trimmer: we are inside the gate), whose stack holds `n`
    // valid entries in `slots[0..n]`.
    unsafe { *bin.slots.add(n as usize - 1) }
}

/// Pushes a freed object of `class` if it lies in the thread's own span,
/// or no other thread has a cache; false when neither holds (the object
/// may be another thread's: [`dealloc_slow`] finds out), the stack is
/// full, or the scavenger is trimming the cache.
#[inline(always)]
pub fn push(class: usize, object: *mut u8) -> bool {
    push_if(class, object, |_| false)
}

/// [`push`] for a caller that has read the object's page-map entry, which
/// names the cache `owner` that owns the object's span or last did: the
/// object is also kept if that is this thread's cache (the slow path would
/// look the owner up again to find that out).
#[inline(always)]
pub fn push_from(class: usize, object: *mut u8, owner: u16) -> bool {
    push_if(class, object, |cache| cache.id == owner)
}

/// [`push`], keeping the object also if `also_keep` says so (asked only
/// for an object outside the thread's own span, with room on the stack).
#[inline(always)]
fn push_if(class: usize, object: *mut u8, also_keep: impl FnOnce(&ThreadCache) -> bool) -> bool {
    // SAFETY: as in `pop`.
    let cache = unsafe { &*current() };
    let Some(seq) = cache.gate.try_enter() else { return false };
    // SAFETY: as in `pop`.
    let bin = unsafe { &*cache.bins.as_ptr().add(class) };
    let n = bin.count.load(Ordering::Relaxed);
    // Below the span's base the subtraction wraps to a huge offset, which
    // the bound rejects too.
    let offset = (object as usize).wrapping_sub(bin.span_base.load(Ordering::Relaxed));
    // With room on the stack only a real cache (ids from 1): the shared
    // empty ones (id 0) never match an owner.
    // A single-threaded program keeps any object, except one the heap
    // profiler sampled (never in the thread's own span): its free must
    // reach the profile.
    let kept = n < bin.cap
        && (offset < bin.span_len.load(Ordering::Relaxed)
            || (alone() && !sampled::contains(object as usize))
            || also_keep(cache));
    if kept {
        // SAFETY: `n` is the stack's count and below its capacity, so this
        // is a real cache, `current()` is this thread's own, and we are
        // inside its gate.
        unsafe { stack_push(bin, n, object) };
    }
    cache.gate.exit(seq);
    kept
}

/// Puts `object` on top of `bin`'s stack, which holds `n` objects.
///
/// # Safety
///
/// `bin` belongs to the calling thread's own real cache, and `n` is its
/// count, below its capacity.
#[inline(always)]
unsafe fn stack_push(bin: &Bin, n: u32, object: *mut u8) {
    // The cheapest double-free check there is: the same object freed twice
    // in a row lands on top of the stack twice. (Others are caught when the
    // object goes back to its span.)
    // SAFETY: per the contract, slots `0..n` are this thread's initialised
    // entries.
    if n > 0 && unsafe { *bin.slots.add(n as usize - 1) } == object {
        double_free(object);
    }
    // SAFETY: per the contract, `n < cap`: slot `n` is within the stack.
    unsafe { *bin.slots.add(n as usize) = object };
    bin.count.store(n + 1, Ordering::Relaxed);
}

/// Caches attached to live threads. Written only when a thread attaches
/// or gives up its cache, so the fast paths read it from a line that stays
/// shared between cores.
static LIVE_CACHES: AtomicUsize = AtomicUsize::new(0);

/// Whether the calling thread, which has a cache, is the only one: then
/// no object it frees can be another thread's (a single-threaded program
/// never looks an object up). A racy read: a thread attaching just now is
/// missed, which costs at most one object kept that should have gone
/// home.
#[inline(always)]
fn alone() -> bool {
    LIVE_CACHES.load(Ordering::Relaxed) == 1
}

#[cold]
#[inline(never)]
fn double_free(object: *mut u8) -> ! {
    crate::report::fatal(format_args!("double free of {:#x}", object as usize))
}

/// The allocation slow path: refills the stack of `class` from the
/// thread's own span, or a span it takes over (attaching a cache first if
/// the thread has none), and returns an object, or null when the OS
/// refuses memory.
#[cold]
pub fn alloc_slow(class: usize) -> *mut u8 {
    let Some(cache) = attached_cache() else {
        let mut one = [ptr::null_mut(); 1];
        central::refill_unowned(class, &mut one);
        return one[0];
    };
    // SAFETY: `cache` is this thread's own cache.
    let cache = unsafe { &*cache };
    let seq = cache.gate.enter();
    let (bin, owned) = (&cache.bins[class], &cache.owned[class]);
    if bin.count.load(Ordering::Relaxed) == 0 {
        // SAFETY: the stack's storage has `cap` slots owned by this thread.
        let slots = unsafe { core::slice::from_raw_parts_mut(bin.slots, bin.cap as usize) };
        let mut span = owned.load(Ordering::Relaxed);
        let got = central::refill_owned(class, cache.id, &mut span, slots);
        owned.store(span, Ordering::Relaxed);
        let (base, len) = if span.is_null() {
            (0, 0)
        } else {
            // SAFETY: a span this thread owns: a live record whose base
            // and class do not change while it is owned.
            unsafe { ((*span).base, (*span).nobjects as usize * sizeclass::class_size(class)) }
        };
        bin.span_base.store(base, Ordering::Relaxed);
        bin.span_len.store(len, Ordering::Relaxed);
        bin.count.store(got as u32, Ordering::Relaxed);
    }
    // SAFETY: this thread's own cache, and we are inside its gate.
    let object = unsafe { pop_inside(cache, class) };
    cache.gate.exit(seq);
    object
}

/// The free slow path, for an object outside the thread's own span or a
/// full stack. An object that another thread took from its span (the page
/// map names another cache as the span's owner or last owner) goes into
/// the class's home-bound buffer, sent home when full; any other object is
/// kept, after the stack's older half goes back to its spans if the stack
/// is full.
#[cold]
pub fn dealloc_slow(class: usize, object: *mut u8) {
    if sampled::contains(object as usize) {
        sampled::free(object as usize, Some(class), "free");
        return;
    }
    let Some(cache) = attached_cache() else {
        central::give_back(class, &[object]);
        return;
    };
    // SAFETY: `cache` is this thread's own cache.
    let cache = unsafe { &*cache };
    let seq = cache.gate.enter();
    // SAFETY: this thread's own cache, and we are inside its gate.
    unsafe { free_inside(cache, class, object) };
    cache.gate.exit(seq);
}

/// The body of [`dealloc_slow`].
///
/// # Safety
///
/// `cache` is the calling thread's own real cache, entered through its
/// gate.
unsafe fn free_inside(cache: &ThreadCache, class: usize, object: *mut u8) {
    let bin = &cache.bins[class];
    let offset = (object as usize).wrapping_sub(bin.span_base.load(Ordering::Relaxed));
    if offset >= bin.span_len.load(Ordering::Relaxed)
        && !alone()
        && !keeps(cache.id, object)
    {
        send_home(&cache.home[class], class, object);
        return;
    }
    let n = bin.count.load(Ordering::Relaxed) as usize;
    if n >= bin.cap as usize {
        let half = (n / 2).max(1);
        // SAFETY: `slots[0..n]` are this thread's initialised entries.
        let stack = unsafe { core::slice::from_raw_parts_mut(bin.slots, n) };
        central::give_back(class, &stack[..half]);
        stack.copy_within(half.., 0);
        bin.count.store((n - half) as u32, Ordering::Relaxed);
    }
    let n = bin.count.load(Ordering::Relaxed);
    if n >= bin.cap {
        central::give_back(class, &[object]);
        return;
    }
    // SAFETY: this thread's own real cache, with `n` its count below its
    // capacity.
    unsafe { stack_push(bin, n, object) };
}

/// Whether the calling thread (whose cache has id `me`) may keep `object`,
/// freed here but outside its own span: only if its span was last owned
/// by this thread (the thread took the object from it). Any other object
/// goes home: the thread that owns its span hands out its neighbours, or
/// did last. One load: the page map's entry says who owns the span. A
/// pointer the page map does not know goes home too, where it is reported.
#[inline(always)]
fn keeps(me: u16, object: *mut u8) -> bool {
    let page = pagemap::lookup_owner(object as usize);
    !page.span.is_null() && page.owner == me
}

/// Adds `object` to a home-bound buffer of the calling thread, sending the
/// buffer's objects back to their spans when it is full.
fn send_home(home: &HomeBound, class: usize, object: *mut u8) {
    let n = home.count.load(Ordering::Relaxed) as usize;
    // SAFETY: `slots[0..n]` are this thread's initialised entries, and the
    // buffer has `cap > n` slots (it is sent home as soon as it is full).
    let buffer = unsafe { core::slice::from_raw_parts_mut(home.slots, home.cap as usize) };
    // The same object freed twice in a row is caught here, as on the stack.
    if n > 0 && buffer[n - 1] == object {
        double_free(object);
    }
    buffer[n] = object;
    if n + 1 == buffer.len() {
        central::give_back(class, buffer);
        home.count.store(0, Ordering::Relaxed);
    } else {
        home.count.store(n as u32 + 1, Ordering::Relaxed);
    }
}

/// Gives every cached object of the calling thread back to the central
/// lists (the cache stays attached).
pub fn flush_current() {
    let cache = current();
    if is_static(cache) {
        return;
    }
    // SAFETY: a non-static current cache is this thread's own.
    let seq = unsafe { (*cache).gate.enter() };
    // SAFETY: this thread's own cache, and we are inside its gate.
    unsafe { flush(cache) };
    // SAFETY: as above.
    unsafe { (*cache).gate.exit(seq) };
}

/// Returns all of `cache`'s objects to the central lists, and gives up its
/// spans.
///
/// # Safety
///
/// `cache` is a real cache, and the calling thread has it to itself: it
/// owns it and is inside its gate, or it is the trimmer and holds it
/// through the gate.
unsafe fn flush(cache: *const ThreadCache) {
    // SAFETY: per the contract the cache is ours.
    for slot in unsafe { &(*cache).large } {
        let span = slot.swap(ptr::null_mut(), Ordering::Relaxed);
        if !span.is_null() {
            // SAFETY: a cached large span, now out of the cache.
            unsafe { large::discard_cached(span) };
        }
    }
    for class in 0..NUM_CLASSES {
        // SAFETY: per the contract the cache is ours.
        let (bin, home, owned) = unsafe { (&(*cache).bins[class], &(*cache).home[class], &(*cache).owned[class]) };
        let n = bin.count.load(Ordering::Relaxed) as usize;
        // SAFETY: `slots[0..n]` are initialised entries.
        let stack = unsafe { core::slice::from_raw_parts(bin.slots, n) };
        let span = owned.swap(ptr::null_mut(), Ordering::Relaxed);
        if !span.is_null() {
            central::give_up_owned(class, span, stack);
        } else if n > 0 {
            central::give_back(class, stack);
        }
        bin.count.store(0, Ordering::Relaxed);
        bin.span_base.store(0, Ordering::Relaxed);
        bin.span_len.store(0, Ordering::Relaxed);
        let h = home.count.load(Ordering::Relaxed) as usize;
        if h > 0 {
            // SAFETY: `slots[0..h]` are initialised entries.
            central::give_back(class, unsafe { core::slice::from_raw_parts(home.slots, h) });
            home.count.store(0, Ordering::Relaxed);
        }
    }
}

fn is_static(cache: *const ThreadCache) -> bool {
    ptr::eq(cache, &UNATTACHED.0) || ptr::eq(cache, &DEAD.0)
}

/// The calling thread's real cache, attaching one if it has none yet;
/// `None` for a thread that has exited its cache or when no cache can be
/// had (the caller then works on the central lists directly).
fn attached_cache() -> Option<*const ThreadCache> {
    let cache = current();
    if ptr::eq(cache, &UNATTACHED.0) {
        return attach();
    }
    if ptr::eq(cache, &DEAD.0) {
        return None;
    }
    Some(cache)
}

struct Registry {
    /// Caches attached to live threads.
    live: *mut ThreadCache,
    /// Caches of exited threads, ready for reuse.
    pool: *mut ThreadCache,
    /// Number of live caches.
    live_count: usize,
    /// Caches ever made.
    made: usize,
}

// SAFETY: the lists link caches in persistent memory; they are only
// touched under the registry's lock.
unsafe impl Send for Registry {}

static REGISTRY: Mutex<Registry> =
    Mutex::new(Registry { live: ptr::null_mut(), pool: ptr::null_mut(), live_count: 0, made: 0 });

/// The pthread key whose destructor flushes a cache at thread exit.
static EXIT_KEY: spin::Once<Option<libc::pthread_key_t>> = spin::Once::new();

fn exit_key() -> Option<libc::pthread_key_t> {
    *EXIT_KEY.call_once(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out-pointer; the destructor has the
        // signature pthreads expects.
        let r = unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) };
        (r == 0).then_some(key)
    })
}

#[cold]
fn attach() -> Option<*const ThreadCache> {
    let key = exit_key()?;
    let now_ms = crate::os::coarse_ms();
    let cache = {
        let mut reg = REGISTRY.lock();
        let mut cache = reg.pool;
        if cache.is_null() {
            // Ids 1..=65535, wrapping: 0 means no cache in the page map.
            let id = (reg.made % 0xffff) as u16 + 1;
            reg.made += 1;
            // Made with the lock dropped: persistent memory may map a
            // block (no system call under an allocator lock).
            drop(reg);
            cache = new_cache(id)?;
            reg = REGISTRY.lock();
        } else {
            // SAFETY: pooled caches are live records linked through `next`.
            reg.pool = unsafe { (*cache).next };
        }
        // SAFETY: `cache` is ours (fresh or just unlinked from the pool); we
        // link it at the head of the live list under the registry lock.
        unsafe {
            (*cache).prev = ptr::null_mut();
            (*cache).next = reg.live;
            if !reg.live.is_null() {
                (*reg.live).prev = cache;
            }
        }
        reg.live = cache;
        // A trim round may have asked for this cache after its last
        // thread left it (the round then found it gone from the live
        // list): the new thread must not wait for it.
        // SAFETY: as above.
        unsafe {
            (*cache).gate.release();
            (*cache).seen_seq.store((*cache).gate.seq(), Ordering::Relaxed);
            (*cache).seen_active_ms.store(now_ms, Ordering::Relaxed);
        }
        reg.live_count += 1;
        LIVE_CACHES.store(reg.live_count, Ordering::Relaxed);
        if reg.live_count >= 2 {
            // Some thread may go idle with a full cache: the scavenger must
            // run to trim it (started at the caller's next safe point).
            crate::scavenge::background::start_for_caches();
        }
        cache
    };
    // `pthread_setspecific` may allocate: glibc keeps keys past the first
    // 32 in blocks it gets from `calloc`, which under `LD_PRELOAD` is ours.
    // That nested allocation must not try to attach a cache again (it would
    // recurse into this function, and into `pthread_setspecific`, until the
    // stack runs out): meanwhile the thread works on the central lists
    // directly, as an exited thread does.
    WORDS.with(|w| w.current.set(&DEAD.0));
    // SAFETY: `key` is a valid key; the value is our cache, handed back to
    // `on_thread_exit` when the thread ends.
    if unsafe { libc::pthread_setspecific(key, cache.cast()) } != 0 {
        // No destructor would run: do not cache on this thread at all.
        // SAFETY: the cache is empty and attached to nobody.
        unsafe { detach(cache) };
        WORDS.with(|w| w.current.set(&DEAD.0));
        return None;
    }
    WORDS.with(|w| w.current.set(cache));
    Some(cache)
}

/// A new cache with its stacks, from persistent memory.
fn new_cache(id: u16) -> Option<*mut ThreadCache> {
    let cache = persistent::alloc_array::<ThreadCache>(1)?.as_ptr();
    let slots = persistent::alloc_array::<*mut u8>(TOTAL_SLOTS)?.as_ptr();
    // SAFETY: the cache is fresh, zeroed and ours.
    unsafe { (*cache).id = id };
    for (class, offset) in SLOT_OFFSETS[..NUM_CLASSES].iter().enumerate() {
        // SAFETY: the cache is zeroed (counts 0, null pointers: valid) and
        // ours; the slot ranges lie within the `TOTAL_SLOTS` array.
        unsafe {
            let bin = &mut (*cache).bins[class];
            bin.cap = bin_capacity(class) as u32;
            bin.slots = slots.add(*offset);
            let home = &mut (*cache).home[class];
            home.cap = home_capacity(class) as u32;
            home.slots = slots.add(*offset + bin_capacity(class));
        }
    }
    Some(cache)
}

/// Moves an empty cache from the live list to the pool.
///
/// # Safety
///
/// `cache` is on the live list, empty, and no thread uses it any more.
unsafe fn detach(cache: *mut ThreadCache) {
    let mut reg = REGISTRY.lock();
    // SAFETY: per the contract the cache and its neighbours are on the live
    // list, which we may relink under the lock.
    unsafe {
        let (prev, next) = ((*cache).prev, (*cache).next);
        if prev.is_null() {
            reg.live = next;
        } else {
            (*prev).next = next;
        }
        if !next.is_null() {
            (*next).prev = prev;
        }
        (*cache).prev = ptr::null_mut();
        (*cache).next = reg.pool;
    }
    reg.pool = cache;
    reg.live_count -= 1;
    LIVE_CACHES.store(reg.live_count, Ordering::Relaxed);
}

/// The pthread key destructor: runs on the exiting thread.
unsafe extern "C" fn on_thread_exit(value: *mut libc::c_void) {
    let cache = value as *mut ThreadCache;
    // From now on this thread bypasses caching altogether.
    WORDS.with(|w| w.current.set(&DEAD.0));
    // SAFETY: the key's value is the cache `attach` gave this thread; the
    // thread no longer points at it, so the flush (inside the gate, which
    // waits out a trim under way) and the detach are the last uses.
    unsafe {
        let seq = (*cache).gate.enter();
        flush(cache);
        (*cache).gate.exit(seq);
        detach(cache);
    }
    // The cache is gone and no lock is held: if the flush sent spans home,
    // the scavenger may be started or woken now.
    crate::scavenge::background::run_deferred();
}

/// Objects of `class` cached in all live threads' caches. Exact when no
/// thread is allocating or freeing concurrently.
pub fn cached_objects(class: usize) -> usize {
    let reg = REGISTRY.lock();
    let mut total = 0;
    let mut cache = reg.live;
    while !cache.is_null() {
        // SAFETY: live caches are valid records, and the registry lock keeps
        // the list still; counts are atomics, so reading another thread's is
        // not a data race.
        unsafe {
            total += (*cache).bins[class].count.load(Ordering::Relaxed) as usize
                + (*cache).home[class].count.load(Ordering::Relaxed) as usize;
            cache = (*cache).next;
        }
    }
    total
}

/// Threads with an attached cache, and caches ever made.
pub fn cache_counts() -> (usize, usize) {
    let reg = REGISTRY.lock();
    (reg.live_count, reg.made)
}

/// In a child after `fork()`: only the forking thread lives on, so the
/// caches of the parent's other threads no longer count as live for
/// [`alone`] (they stay listed, with what they held, as before).
pub(crate) fn after_fork_child() {
    let live = if is_static(current()) { 0 } else { 1 };
    LIVE_CACHES.store(live, Ordering::Relaxed);
    // A trim round of the parent's scavenger may have been between its
    // request and its take at the fork: no scavenger of the child will
    // finish it.
    let reg = REGISTRY.lock();
    for list in [reg.live, reg.pool] {
        let mut cache = list;
        while !cache.is_null() {
            // SAFETY: listed caches are valid records; the registry lock
            // keeps the lists still.
            unsafe {
                (*cache).gate.release();
                cache = (*cache).next;
            }
        }
    }
    drop(reg);
    trim::after_fork_child();
}

/// Takes the registry lock and keeps it, before `fork()`.
pub(crate) fn lock_for_fork() {
    REGISTRY.hold_for_fork();
}

/// Releases the lock taken by [`lock_for_fork`].
pub(crate) fn unlock_after_fork() {
    // SAFETY: `lock_for_fork` held it on this thread.
    unsafe { REGISTRY.release_after_fork() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_and_bound() {
        assert_eq!(bin_capacity(0), 256);
        assert_eq!(bin_capacity(NUM_CLASSES - 1), 4);
        assert_eq!(home_capacity(0), MAX_HOME_SLOTS);
        assert_eq!(home_capacity(NUM_CLASSES - 1), MIN_HOME_SLOTS);
        let mut total = 0;
        for c in 0..NUM_CLASSES {
            let cap = bin_capacity(c);
            assert!((MIN_SLOTS..=MAX_SLOTS).contains(&cap));
            let home = home_capacity(c);
            assert!((MIN_HOME_SLOTS..=MAX_HOME_SLOTS).contains(&home));
            total += (cap + home) * sizeclass::class_size(c);
        }
        assert_eq!(total, MAX_CACHED_BYTES_PER_THREAD);
        const { assert!(MAX_CACHED_BYTES_PER_THREAD < 3 << 20) };
    }
}
