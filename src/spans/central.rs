//! Per-class central lists: the spans of one size class that have free
//! objects, and the batch moves between them and the thread caches
//! (Go's `mcentral`, with explicit frees in place of sweeping).
//!
//! Each class has its own lock, so threads working on different sizes never
//! meet. A thread cache owns one span per class at a time and takes its
//! objects in batches ([`refill_owned`]); an owned span is on no list, so
//! no other thread hands out its objects. Objects come back in batches
//! ([`give_back`]), to whatever span they belong to: one lock round trip
//! serves a whole batch. A span that becomes wholly free (and is not owned)
//! goes back to the page heap, where the scavenger can release it, except
//! that each class keeps one such span aside as a spare: classes whose
//! spans hold one to three objects would otherwise make and unmake a span
//! (two page-heap round trips) for nearly every allocation. Spares cost at
//! most one span per class (about 1.7 MiB over all classes) and
//! [`release_spares`] gives them back.
//!
//! The partial list keeps spans *ready* for a new owner (at least
//! [`ready_threshold`] free objects) at the front and sparse ones at the
//! back, so a refill takes over a span only when it yields a batch worth a
//! lock round trip.
//!
//! No system call is made under a class lock: a new span is made with the
//! lock dropped ([`adopt`]; a `fork()` waits for those in flight), and
//! deep release takes the spans it releases from off the list and makes
//! the `madvise` with the lock dropped ([`deep_release_step`]).
//!
//! Lock order: a central lock may be held while taking the heap lock, never
//! the other way round.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::sizeclass::{self, NUM_CLASSES};
use super::span::{self, PutError, Span, SpanKind, SpanList};
use super::{deep, pagemap};
use crate::os;
use crate::pages::heap::RunUse;
use crate::report::fatal;
use crate::scavenge;
use crate::sync::{Mutex, MutexGuard};

/// One class's spans with free objects, and its counters.
pub struct Central {
    /// Spans with at least one free object.
    partial: SpanList,
    /// Wholly free spans kept for reuse (at most [`SPARES`]).
    spare: SpanList,
    /// Spans deep release took off the partial list while it releases
    /// some of their pages with the lock dropped ([`Span::releasing`]).
    releasing: SpanList,
    /// New spans being made with the lock dropped (see [`adopt`]).
    making: usize,
    /// Spans of this class that exist.
    spans: usize,
    /// Objects handed out (to users or to thread caches).
    handed_out: usize,
    /// Bytes of this class's spans released to the OS by deep release.
    released: usize,
    /// Batches of objects given back so far: deep release only finds new
    /// free pages after some.
    give_backs: u64,
    /// Deep release's place in the partial list: the next span to look at,
    /// while `deep_active`. Kept valid by [`Central::remove_partial`].
    deep_cursor: *mut Span,
    /// Whether deep release is part way through this class's list.
    deep_active: bool,
}

// SAFETY: the cursor, like the lists, only points to span records, which
// live in persistent memory for the life of the process; it is only used
// under this class's lock.
unsafe impl Send for Central {}

impl Central {
    /// Takes `span` off the partial list, moving deep release's cursor on
    /// if it pointed there, so the cursor never points to a span off the
    /// list.
    ///
    /// # Safety
    ///
    /// `span` is on this class's partial list.
    unsafe fn remove_partial(&mut self, span: *mut Span) {
        if self.deep_cursor == span {
            // SAFETY: `span` is a live record on the list (the contract).
            self.deep_cursor = unsafe { (*span).next };
        }
        // SAFETY: the contract.
        unsafe { self.partial.remove(span) };
    }
}

// Each lock on its own pair of cache lines, so that classes do not contend
// through false sharing.
#[repr(align(128))]
struct Padded(Mutex<Central>);

static CENTRAL: [Padded; NUM_CLASSES] = [const {
    Padded(Mutex::new(Central {
        partial: SpanList::new(),
        spare: SpanList::new(),
        releasing: SpanList::new(),
        making: 0,
        spans: 0,
        handed_out: 0,
        released: 0,
        give_backs: 0,
        deep_cursor: ptr::null_mut(),
        deep_active: false,
    }))
}; NUM_CLASSES];

/// The class locks' counters, summed over every class (read without the
/// locks, for the statistics).
pub(crate) fn lock_stats() -> crate::sync::LockStats {
    CENTRAL.iter().fold(crate::sync::LockStats::default(), |sum, c| sum.plus(c.0.lock_stats()))
}

/// How many ready spans at the head of a partial list a refill looks at
/// for one its thread owned last.
const OWN_SPAN_SEARCH: usize = 8;

/// Wholly free spans a class keeps aside.
const SPARES: usize = 1;

/// Counters of one class, read under its lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CentralCounts {
    /// Spans of the class.
    pub spans: usize,
    /// Objects handed out to users or thread caches.
    pub handed_out: usize,
    /// Bytes inside the class's spans released to the OS (deep release).
    pub released: usize,
    /// Batches of objects given back to the class's spans so far.
    pub give_backs: u64,
}

/// The counters of `class`.
pub fn counts(class: usize) -> CentralCounts {
    let c = CENTRAL[class].0.lock();
    CentralCounts { spans: c.spans, handed_out: c.handed_out, released: c.released, give_backs: c.give_backs }
}

/// The fewest free objects a span of `class` must have for a thread to
/// take it over (see [`refill_owned`]): a thirty-second of the span, at
/// least one. Spans with fewer wait at the back of the partial list until
/// frees bring them over it, so that a thread's refill never yields a
/// trickle of objects (one lock round trip for each), at the cost of at
/// most a thirty-second of each partly used span's objects left unused.
pub fn ready_threshold(class: usize) -> usize {
    (sizeclass::class_objects(class) / 32).max(1)
}

/// Where a thread's objects of one class come from: the span it owns.
///
/// Takes up to `out.len()` objects for the calling thread's cache, writing
/// their addresses to `out`, and returns how many. `*owned` is the span
/// the thread owns for `class` (null if none): the objects come from it
/// while it has at least [`ready_threshold`] free; otherwise it is given up
/// (to the partial list if it has free objects) and the thread takes over
/// another span: the head of the partial list if that one is ready, else
/// the spare, else a new span, else (the OS refused memory) any partial
/// span. `*owned` is updated to the span the objects came from. Fewer
/// objects than asked (even none) only when the OS refuses memory.
///
/// While a thread owns a span, no one else hands out its objects: frees
/// from other threads go back into its bitmap (see [`give_back`]) and wait
/// for the owner's next refill. So objects that share a cache line are
/// handed to one thread at a time.
pub fn refill_owned(class: usize, owner: u16, owned: &mut *mut Span, out: &mut [*mut u8]) -> usize {
    let threshold = ready_threshold(class);
    let mut central = CENTRAL[class].0.lock();
    let mut span = *owned;
    let mut got = 0;
    // Half a stack is a batch worth the lock: a span that yields less is
    // used up and given up, and the next one taken over, within this one
    // lock hold (dropped only to make a new span). The spans given up
    // keep this thread as their last owner, so it keeps their objects
    // when it frees them.
    while got < out.len().div_ceil(2) {
        if !span.is_null() {
            // SAFETY: the thread's owned span is a live record of this
            // class; its fields are guarded by the lock we hold.
            let nfree = unsafe { (*span).nfree } as usize;
            if nfree < threshold || (got > 0 && nfree == 0) {
                // SAFETY: as above; the span is owned, so on no list.
                unsafe { central.disown(span) };
                span = ptr::null_mut();
            }
        }
        if span.is_null() {
            (central, span) = adopt(central, class, threshold, owner);
            if span.is_null() {
                break;
            }
        }
        // SAFETY: the span is owned by the calling thread and guarded by
        // the class lock we hold; this is the only reference to it.
        let n = unsafe { take_from(&mut central, span, &mut out[got..]) };
        central.handed_out += n;
        got += n;
    }
    *owned = span;
    got
}

/// Takes over a span of `class` for thread cache `owner` (0: a thread
/// without one, for one batch), with the class lock held in `central`: the
/// head of the partial list if it has at least `threshold` free objects,
/// else the spare, else a new span, else any span on the partial list;
/// takes it off its list, marks it owned and returns it with the lock
/// (null when there is none and the OS refuses memory).
///
/// A new span is made with the class lock dropped: it may grow the heap
/// or map metadata (system calls), and other threads of the class need
/// not wait for that. The caller holds no state that the lock must keep
/// consistent across that gap (objects already taken are counted).
fn adopt(
    mut central: MutexGuard<'static, Central>,
    class: usize,
    threshold: usize,
    owner: u16,
) -> (MutexGuard<'static, Central>, *mut Span) {
    let mut span = central.take_existing(threshold, owner);
    while span.is_null() && FORK_PENDING.load(Ordering::Relaxed) {
        // A fork waits for the spans being made: make none until it is
        // done (a span freed meanwhile will do too).
        drop(central);
        // SAFETY: `sched_yield` has no preconditions.
        unsafe { libc::sched_yield() };
        central = CENTRAL[class].0.lock();
        span = central.take_existing(threshold, owner);
    }
    if span.is_null() {
        // Counted so that a fork waits for it: in the child, a span made
        // but not yet counted would be lost for good.
        central.making += 1;
        drop(central);
        let fresh = new_span(class);
        central = CENTRAL[class].0.lock();
        central.making -= 1;
        if !fresh.is_null() {
            central.spans += 1;
            span = fresh;
        } else {
            // The OS refused memory: a span freed meanwhile, or any span
            // with a free object.
            span = central.take_existing(threshold, owner);
            let head = central.partial.first();
            if span.is_null() && !head.is_null() {
                // SAFETY: the head is on this class's partial list.
                unsafe { central.remove_partial(head) };
                span = head;
            }
        }
    }
    if !span.is_null() {
        // SAFETY: the span is off every list; we hold its class lock.
        unsafe {
            (*span).in_partial = false;
            (*span).owned = true;
            (*span).owner = owner;
            pagemap::set_owner((*span).base, (*span).npages, span, owner, true);
        }
    }
    (central, span)
}

/// Takes up to `out.len()` free objects of `span` (the caller's own, or
/// one on no list), marking their pages as no longer released; returns
/// how many.
///
/// # Safety
///
/// `span` is a live record of the class whose lock `central` is, on no
/// list, and no reference to it is live.
unsafe fn take_from(central: &mut Central, span: *mut Span, out: &mut [*mut u8]) -> usize {
    let (taken, reclaimed) = {
        // SAFETY: the contract.
        let s = unsafe { &mut *span };
        let taken = s.take_free(out);
        s.refilled_ms = os::coarse_ms();
        let reclaimed = if s.released != 0 { s.reclaim_pages(&out[..taken], os::page_size()) } else { 0 };
        (taken, reclaimed)
    };
    if reclaimed != 0 {
        central.released -= reclaimed;
        scavenge::note_reclaimed_in_use(reclaimed);
        scavenge::window::note_refaulted(reclaimed);
    }
    taken
}

/// Hands out up to `out.len()` objects of `class` to a thread that has no
/// cache (one that is exiting, or could not get one), from the partial
/// list or a new span, without owning any span; returns how many.
pub fn refill_unowned(class: usize, out: &mut [*mut u8]) -> usize {
    let mut central = CENTRAL[class].0.lock();
    let mut got = 0;
    while got < out.len() {
        let span;
        (central, span) = adopt(central, class, 1, 0);
        if span.is_null() {
            break;
        }
        // SAFETY: `adopt` took the span off every list and marked it owned;
        // we hold the class lock and no reference to it.
        let n = unsafe { take_from(&mut central, span, &mut out[got..]) };
        central.handed_out += n;
        got += n;
        // SAFETY: as above.
        unsafe { central.disown(span) };
    }
    got
}

/// Gives up the calling thread's span of `class` (at thread exit, or when
/// its cache is flushed), after returning `objects` (the thread's cached
/// objects of the class, all from that span) to it.
pub fn give_up_owned(class: usize, span: *mut Span, objects: &[*mut u8]) {
    let nudge = {
        let mut central = CENTRAL[class].0.lock();
        let nudge = central.put_objects(class, objects);
        // SAFETY: the caller owned the span, a live record of this class,
        // and gives it up here under the lock.
        unsafe { central.disown(span) };
        nudge
    };
    if nudge {
        scavenge::background::nudge();
    }
}

impl Central {
    /// Takes a span for `owner` off its list without making one: the
    /// partial list's ready span for `owner` (see [`Central::ready_span`]),
    /// else the spare; null if neither.
    fn take_existing(&mut self, threshold: usize, owner: u16) -> *mut Span {
        let ready = self.ready_span(threshold, owner);
        if !ready.is_null() {
            // SAFETY: `ready_span` found it on the partial list.
            unsafe { self.remove_partial(ready) };
            return ready;
        }
        let spare = self.spare.first();
        if !spare.is_null() {
            // SAFETY: the spare is on this class's spare list.
            unsafe { self.spare.remove(spare) };
        }
        spare
    }

    /// A span on the partial list ready for `owner` to take over: among
    /// the first [`OWN_SPAN_SEARCH`] ready ones, one that `owner` owned
    /// last if there is one (its objects the thread still holds stay its
    /// own, and other threads' stay theirs), else the first; null if the
    /// head is not ready.
    fn ready_span(&self, threshold: usize, owner: u16) -> *mut Span {
        let mut span = self.partial.first();
        let mut first_ready: *mut Span = ptr::null_mut();
        for _ in 0..OWN_SPAN_SEARCH {
            // SAFETY: spans on the partial list are live records of this
            // class, guarded by the lock the caller holds (as `&self`).
            let ready = !span.is_null() && unsafe { (*span).nfree } as usize >= threshold;
            if !ready {
                break;
            }
            // SAFETY: as above.
            if unsafe { (*span).owner } == owner {
                return span;
            }
            if first_ready.is_null() {
                first_ready = span;
            }
            // SAFETY: as above.
            span = unsafe { (*span).next };
        }
        first_ready
    }

    /// Ends a thread's ownership of `span`: it joins the partial list if
    /// it has free objects (at the front if it is ready for another owner),
    /// the spares or the page heap if it is wholly free, and no list if it
    /// is full.
    ///
    /// # Safety
    ///
    /// `span` is an owned, live record of this class, on no list, with no
    /// live reference to it.
    unsafe fn disown(&mut self, span: *mut Span) {
        // SAFETY: the contract.
        let (class, nfree, empty) = unsafe {
            (*span).owned = false;
            pagemap::set_owner((*span).base, (*span).npages, span, (*span).owner, false);
            ((*span).class as usize, (*span).nfree as usize, (*span).is_empty())
        };
        if empty {
            // SAFETY: the contract: off every list, unreferenced.
            unsafe { self.retire_empty(span) };
        } else if nfree > 0 {
            // SAFETY: as above.
            unsafe { self.push_partial(span, nfree, ready_threshold(class)) };
        }
    }

    /// Puts `span`, with `nfree` free objects, on the partial list: at the
    /// front if that makes it ready for an owner (`threshold`), else at
    /// the back, where it waits for more frees.
    ///
    /// # Safety
    ///
    /// `span` is a live, unowned record of this class on no list, with no
    /// live reference to it.
    unsafe fn push_partial(&mut self, span: *mut Span, nfree: usize, threshold: usize) {
        // SAFETY: the contract; the partial list is ours.
        unsafe {
            (*span).in_partial = true;
            if nfree >= threshold {
                self.partial.push_front(span);
            } else {
                self.partial.push_back(span);
            }
        }
    }

    /// A wholly free span leaves use: it becomes the spare if there is
    /// room, else its pages go back to the page heap.
    ///
    /// # Safety
    ///
    /// `span` is a wholly free, unowned record of this class, on no list,
    /// with no live reference to it.
    unsafe fn retire_empty(&mut self, span: *mut Span) {
        if self.spare.len() < SPARES {
            // SAFETY: the span is on no list; the spare list is ours.
            unsafe { self.spare.push_front(span) };
            return;
        }
        // SAFETY: the contract.
        let released = unsafe { (*span).released }.count_ones() as usize * os::page_size();
        self.spans -= 1;
        self.released -= released;
        scavenge::note_reclaimed_in_use(released);
        // SAFETY: the span is wholly free, off every list, and no pointer
        // into it is live.
        unsafe { release_span(span) };
    }
}

/// Returns objects of `class` to their spans. A pointer that is not an
/// object of this class handed out by scavalloc (a foreign pointer, a double
/// free, or a size that does not match the allocation) stops the process.
pub fn give_back(class: usize, objects: &[*mut u8]) {
    if give_back_locked(class, objects) {
        // Outside the lock: this may start the scavenger thread.
        scavenge::background::nudge();
    }
}

/// Free bytes inside a class's spans (beyond what deep release gave back)
/// past which a give-back nudges the scavenger (see
/// [`scavenge::background::nudge`]).
const NUDGE_FREE_BYTES: usize = 8 << 20;

/// [`give_back`] under the class lock; returns whether the class's spans
/// now hold more than [`NUDGE_FREE_BYTES`] of free, resident memory.
fn give_back_locked(class: usize, objects: &[*mut u8]) -> bool {
    let mut central = CENTRAL[class].0.lock();
    central.put_objects(class, objects)
}

impl Central {
    /// Returns `objects` to their spans (see [`give_back`]); returns
    /// whether the class's spans now hold more than [`NUDGE_FREE_BYTES`]
    /// of free, resident memory.
    fn put_objects(&mut self, class: usize, objects: &[*mut u8]) -> bool {
        self.give_backs += 1;
        let threshold = ready_threshold(class);
        for &p in objects {
            let addr = p as usize;
            let span = pagemap::lookup(addr);
            // What the free does to the span, decided through a reference
            // that lives only in this block; the lists, which reach the
            // record through raw pointers, are changed after it ends (one
            // discipline: never a live reference while the record is
            // reached another way).
            let (away, empty, was_in_partial, nfree) = {
                // SAFETY: a non-null page-map entry points to a span record,
                // which lives forever; a record of this class is guarded by
                // our lock, and no other reference to it is live.
                let s = match unsafe { span.as_mut() } {
                    Some(s) if s.kind == SpanKind::Small && s.class as usize == class => s,
                    Some(s) if s.kind == SpanKind::Small => fatal(format_args!(
                        "free of {addr:#x} with a size of {} bytes, but it was allocated with {} (size mismatch or corruption)",
                        sizeclass::class_size(class),
                        sizeclass::class_size(s.class as usize)
                    )),
                    _ => fatal(format_args!("free of {addr:#x}, which scavalloc did not allocate (foreign pointer)")),
                };
                match s.put(addr) {
                    Ok(()) => {}
                    Err(PutError::AlreadyFree) => fatal(format_args!("double free of {addr:#x}")),
                    Err(PutError::NotAnObject) => {
                        fatal(format_args!("free of {addr:#x}, which is not the start of an allocated object"))
                    }
                }
                (s.owned || s.releasing, s.is_empty(), s.in_partial, s.nfree as usize)
            };
            self.handed_out -= 1;
            if away {
                // The owner takes the object at its next refill; an owned
                // span stays with its owner even when wholly free. A span
                // out for deep release finds its list when it comes back.
                continue;
            }
            if empty {
                if was_in_partial {
                    // SAFETY: the span is on this class's list; no
                    // reference to it is live.
                    unsafe { self.remove_partial(span) };
                }
                // SAFETY: wholly free, unowned, now on no list.
                unsafe {
                    (*span).in_partial = false;
                    self.retire_empty(span);
                }
            } else if !was_in_partial {
                // A full span gets its first free object: it waits at the
                // back until it is ready for an owner (at once, for classes
                // whose threshold is one object).
                // SAFETY: the span was full, so on no list; no reference to
                // it is live.
                unsafe { self.push_partial(span, nfree, threshold) };
            } else if nfree == threshold && threshold > 1 {
                // Just became ready: to the front, where refills look.
                // SAFETY: the span is on this class's list; no reference to
                // it is live.
                unsafe {
                    self.remove_partial(span);
                    self.partial.push_front(span);
                }
            }
        }
        let span_bytes = self.spans * sizeclass::class_span_bytes(class);
        let used = self.handed_out * sizeclass::class_size(class) + self.released;
        span_bytes.saturating_sub(used) > NUDGE_FREE_BYTES
    }
}

/// Whether the small object at `addr` is free in its span (its span's
/// bitmap says so, or no small span holds the address any more: the span
/// went back to the page heap); false while a user or a thread cache holds
/// it. For tests: objects that went home are free here.
#[cfg(any(test, feature = "testing"))]
pub fn object_is_free(addr: usize) -> bool {
    loop {
        let span = pagemap::lookup(addr);
        // SAFETY: a non-null entry is a record; its kind and class are
        // read by value and checked again under the lock below.
        let class = match unsafe { span.as_ref() } {
            Some(s) if s.kind == SpanKind::Small => s.class as usize,
            _ => return true,
        };
        let _central = CENTRAL[class].0.lock();
        if pagemap::lookup(addr) != span {
            continue;
        }
        // SAFETY: the record is guarded by the class lock we hold.
        let s = unsafe { &*span };
        if s.kind != SpanKind::Small || s.class as usize != class {
            continue;
        }
        return s.is_free(addr);
    }
}

/// Gives every class's spare spans back to the page heap; returns how many.
pub fn release_spares() -> usize {
    let mut n = 0;
    for c in &CENTRAL {
        let mut central = c.0.lock();
        loop {
            let span = central.spare.first();
            if span.is_null() {
                break;
            }
            // SAFETY: the spare is wholly free and on this class's list; off
            // it, nothing refers to it.
            unsafe {
                let released = (*span).released.count_ones() as usize * os::page_size();
                central.released -= released;
                scavenge::note_reclaimed_in_use(released);
                central.spare.remove(span);
                release_span(span);
            }
            central.spans -= 1;
            n += 1;
        }
    }
    n
}

/// What one call of [`deep_release_step`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeepStep {
    /// Bytes released.
    pub released: usize,
    /// Spans that had pages released.
    pub spans: usize,
    /// Spans passed over because objects were handed out from them less
    /// than [`deep_idle_ms`] ago, counted from the first that had pages to
    /// give back (0: none had; only whether it is 0 is used).
    pub skipped_recent: usize,
    /// Whether the pass over this class's list is complete.
    pub done: bool,
}

/// Spans looked at per lock hold, at most.
const DEEP_SPANS_PER_STEP: usize = 256;

/// The time a step may spend choosing spans under the class lock: it stops
/// looking once past it (checked every 4 spans: a span record not touched
/// for seconds costs a microsecond or more of cache and TLB misses), so
/// that a class busy with allocations never waits long for deep release.
const DEEP_HOLD_BUDGET_NS: u64 = 10_000;

/// How long a span must go without handing out objects before deep
/// release takes pages from it: a burst that comes back within this time
/// finds its spans whole. The same second as the retained goal's base
/// window; a lengthened window lengthens it too ([`deep_idle_ms`]).
pub const DEEP_IDLE_MS: u64 = 1000;

/// How long a span must go without handing out objects before deep
/// release takes pages from it: the retained window in force, a second at
/// least.
pub fn deep_idle_ms() -> u64 {
    (scavenge::window::current_ns() / 1_000_000).max(DEEP_IDLE_MS)
}

/// One step of deep release over `class`: from where the last step
/// stopped (or the head of the partial list), looks at up to
/// [`DEEP_SPANS_PER_STEP`] spans and releases the OS pages in them that
/// hold no handed-out object, in one batch of up to
/// [`os::MAX_RELEASE_RANGES`] ranges. Spans that handed out objects
/// within [`deep_idle_ms`] of `now_ms` are passed over, unless `force`.
///
/// No system call is made under the class lock (Go learned this the hard
/// way: `madvise` under its heap lock tripled a server's p99 allocation
/// latency). Under the lock the step only chooses: each span with pages to
/// release is taken off the partial list and marked
/// [`Span::releasing`], so no one can hand out an object on those pages,
/// and it waits on the class's releasing list. The lock is dropped for the
/// `madvise`; frees into those spans meanwhile only clear bits (they
/// touch no page: the free state is out of band). Then the lock is taken
/// again to record what was released and put the spans back on the list
/// they now belong to. The lock work is bounded: at most
/// [`DEEP_SPANS_PER_STEP`] spans looked at and [`os::MAX_RELEASE_RANGES`]
/// ranges recorded per hold.
pub fn deep_release_step(class: usize, force: bool, now_ms: u64) -> DeepStep {
    const MAX_RANGES: usize = os::MAX_RELEASE_RANGES;
    let os_page = os::page_size();
    let idle_ms = deep_idle_ms();
    let mut step = DeepStep::default();
    let mut ranges = [(0usize, 0usize); MAX_RANGES];
    // For each range: the span it lies in and its bits in `released`.
    let mut owners = [(ptr::null_mut::<Span>(), 0u64); MAX_RANGES];
    let mut nranges = 0;
    {
        let mut central = CENTRAL[class].0.lock();
        let held_since = os::monotonic_ns();
        if FORK_PENDING.load(Ordering::Relaxed) {
            // A fork waits for the spans out for release: take none.
            return step;
        }
        let mut span = if central.deep_active { central.deep_cursor } else { central.partial.first() };
        let mut looked = 0;
        while !span.is_null() && looked < DEEP_SPANS_PER_STEP {
            if looked % 4 == 3 && os::monotonic_ns().saturating_sub(held_since) > DEEP_HOLD_BUDGET_NS {
                break;
            }
            // SAFETY: spans on the partial list (and the cursor, kept on
            // it) are live records of this class, guarded by our lock.
            let s = unsafe { &*span };
            let next = s.next;
            if !force && now_ms.saturating_sub(s.refilled_ms) < idle_ms {
                // Counted only if it would give something back once idle,
                // so that a busy program's spans do not keep passes coming;
                // only whether there is one matters, so the pages of the
                // rest are not worked out (a step looks at many in-use
                // spans in a busy class).
                if step.skipped_recent > 0 || s.releasable_pages(os_page) != 0 {
                    step.skipped_recent += 1;
                }
                looked += 1;
                span = next;
                continue;
            }
            let mask = s.releasable_pages(os_page);
            if mask != 0 {
                if nranges + deep::count_runs(mask) > MAX_RANGES {
                    break;
                }
                for (first, count) in deep::runs(mask) {
                    // SAFETY: as above.
                    ranges[nranges] = (unsafe { (*span).base } + first * os_page, count * os_page);
                    owners[nranges] = (span, deep::run_mask(first, count));
                    nranges += 1;
                }
                // SAFETY: the span is on this class's partial list, and no
                // reference to it is live; off it, it waits on the
                // releasing list (its links are free).
                unsafe {
                    central.remove_partial(span);
                    (*span).in_partial = false;
                    (*span).releasing = true;
                    central.releasing.push_back(span);
                }
            }
            looked += 1;
            span = next;
        }
        central.deep_cursor = span;
        central.deep_active = !span.is_null();
        step.done = span.is_null();
        note_deep_hold(os::monotonic_ns().saturating_sub(held_since));
    }
    if nranges == 0 {
        return step;
    }
    let mut ok = [false; MAX_RANGES];
    // SAFETY: every range lies in a span of this class marked releasing
    // and holds only free objects (or the span's tail): no one hands out
    // an object of a releasing span, and a free writes nothing into the
    // object, so no one reads or writes these pages until the spans are
    // put back below.
    unsafe { os::release_many(&ranges[..nranges], &mut ok[..nranges]) };
    let mut central = CENTRAL[class].0.lock();
    let held_since = os::monotonic_ns();
    // A span's ranges are consecutive; it goes back after its last.
    let mut i = 0;
    while i < nranges {
        let owner = owners[i].0;
        let mut any = false;
        while i < nranges && owners[i].0 == owner {
            if ok[i] {
                // SAFETY: the owner is a live record of this class on our
                // releasing list, guarded by the lock we hold.
                unsafe { (*owner).released |= owners[i].1 };
                let bytes = ranges[i].1;
                central.released += bytes;
                scavenge::note_released_in_use(bytes);
                step.released += bytes;
                any = true;
            }
            i += 1;
        }
        step.spans += usize::from(any);
        // SAFETY: as above; no reference to it is live.
        unsafe { central.return_released(owner) };
    }
    note_deep_hold(os::monotonic_ns().saturating_sub(held_since));
    step
}

impl Central {
    /// Puts a span that deep release took out back where it belongs now:
    /// the page heap (or the spares) if every object was freed meanwhile,
    /// else the partial list, at the front if it is ready for an owner.
    ///
    /// # Safety
    ///
    /// `span` is a live record of this class on the releasing list, with
    /// no live reference to it.
    unsafe fn return_released(&mut self, span: *mut Span) {
        // SAFETY: the contract.
        let (class, nfree, empty) = unsafe {
            self.releasing.remove(span);
            (*span).releasing = false;
            ((*span).class as usize, (*span).nfree as usize, (*span).is_empty())
        };
        if empty {
            // SAFETY: wholly free, unowned, on no list.
            unsafe { self.retire_empty(span) };
        } else {
            // It had free objects when it was taken out, and no one handed
            // any out since: it belongs on the partial list.
            debug_assert!(nfree > 0);
            // SAFETY: on no list, with no live reference to it.
            unsafe { self.push_partial(span, nfree, ready_threshold(class)) };
        }
    }
}

/// How long deep-release steps held a class lock: the longest hold, and a
/// histogram of all holds in powers of two of microseconds (bucket `b`
/// counts holds under `2^b` us that are not under `2^(b-1)` us; the last
/// bucket takes the rest). The longest hold alone says little on a machine
/// whose CPUs stall for tens of microseconds on their own (interrupts, a
/// hypervisor): the histogram shows how often a hold was long.
struct HoldTimes {
    longest_ns: AtomicU64,
    buckets: [AtomicU64; HOLD_BUCKETS],
}

/// Buckets of [`HoldTimes`]: the last starts at 2^14 us (16 ms).
pub const HOLD_BUCKETS: usize = 16;

static DEEP_HOLDS: HoldTimes = HoldTimes {
    longest_ns: AtomicU64::new(0),
    buckets: [const { AtomicU64::new(0) }; HOLD_BUCKETS],
};

fn note_deep_hold(ns: u64) {
    DEEP_HOLDS.longest_ns.fetch_max(ns, Ordering::Relaxed);
    DEEP_HOLDS.buckets[hold_bucket(ns)].fetch_add(1, Ordering::Relaxed);
}

/// The bucket of a hold of `ns` nanoseconds: the bit length of its whole
/// microseconds.
fn hold_bucket(ns: u64) -> usize {
    ((u64::BITS - (ns / 1000).leading_zeros()) as usize).min(HOLD_BUCKETS - 1)
}

/// The longest class-lock hold of a deep-release step so far, in
/// nanoseconds.
pub fn deep_longest_hold_ns() -> u64 {
    DEEP_HOLDS.longest_ns.load(Ordering::Relaxed)
}

/// Deep release's class-lock holds so far, by [`hold_bucket`]: entry `b`
/// counts the holds under `2^b` us (and at least `2^(b-1)` us).
pub fn deep_hold_histogram() -> [u64; HOLD_BUCKETS] {
    core::array::from_fn(|b| DEEP_HOLDS.buckets[b].load(Ordering::Relaxed))
}

/// Set while a `fork()` waits for the spans out of their class lock's
/// sight (being made, or out for deep release; see [`lock_for_fork`]):
/// no one starts making or releasing another, so the wait ends.
static FORK_PENDING: AtomicBool = AtomicBool::new(false);

/// Makes the next [`deep_release_step`] of `class` start from the head of
/// its list.
pub fn deep_restart(class: usize) {
    let mut central = CENTRAL[class].0.lock();
    central.deep_active = false;
    central.deep_cursor = ptr::null_mut();
}

/// Makes a new span of `class` from the page heap, or null.
fn new_span(class: usize) -> *mut Span {
    let npages = sizeclass::class_pages(class);
    let Some(run) = scavenge::alloc_pages(npages, sizeclass::class_span_align_pages(class), RunUse::Span) else {
        return ptr::null_mut();
    };
    let record = span::alloc_record();
    if record.is_null() || pagemap::prepare(run.base, npages).is_err() {
        if !record.is_null() {
            // SAFETY: the record is fresh and unused.
            unsafe { span::free_record(record) };
        }
        scavenge::free_pages(run.base, npages, RunUse::Span);
        return ptr::null_mut();
    }
    // SAFETY: a fresh record that only we know of.
    unsafe { (*record).init_small(run.base, class) };
    pagemap::set(run.base, npages, record);
    record
}

/// Gives a wholly free span's pages back to the page heap.
///
/// # Safety
///
/// The span is free of objects, on no list, and nothing refers to it.
unsafe fn release_span(span: *mut Span) {
    // SAFETY: per the contract the record is ours.
    let (base, npages, released) = unsafe { ((*span).base, (*span).npages, (*span).released) };
    pagemap::set(base, npages, ptr::null_mut());
    if released == 0 {
        scavenge::free_pages(base, npages, RunUse::Span);
    } else {
        deep::free_partly_released(base, npages, released);
    }
    // SAFETY: its page-map entries are cleared; nothing can reach it.
    unsafe { span::free_record(span) };
}

/// Takes every class lock and keeps them, before `fork()`.
///
/// Spans out of the lock's sight would be lost in the child, where the
/// thread that has them does not exist: spans out for deep release (their
/// `madvise` running with the lock dropped) with their free objects, and
/// spans being made (their pages taken from the page heap, not yet
/// counted). So, as the page heap does for its own releases, this waits
/// with the lock dropped until a class has none out; meanwhile no one
/// starts another ([`FORK_PENDING`]), so the wait lasts one batch or one
/// span at most. Those threads need no lock that the fork holds by then
/// (the page heap's and the record pool's come after the class locks).
pub(crate) fn lock_for_fork() {
    FORK_PENDING.store(true, Ordering::Relaxed);
    for c in &CENTRAL {
        loop {
            let central = c.0.lock();
            if central.releasing.is_empty() && central.making == 0 {
                core::mem::forget(central);
                break;
            }
            drop(central);
            // SAFETY: `sched_yield` has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }
}

/// Releases the locks taken by [`lock_for_fork`].
pub(crate) fn unlock_after_fork() {
    FORK_PENDING.store(false, Ordering::Relaxed);
    for c in &CENTRAL {
        // SAFETY: `lock_for_fork` held it on this thread.
        unsafe { c.0.release_after_fork() };
    }
}
