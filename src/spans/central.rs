//! Per-class central lists: the spans of one size class that have free
//! objects, and the batch moves between them and the thread caches
//! (Go's `mcentral`, with explicit frees in place of sweeping).
//!
//! Each class has its own lock, so threads working on different sizes never
//! meet. A thread cache takes objects in batches ([`refill`]) and gives them
//! back in batches ([`give_back`]); one lock round trip serves a whole batch.
//! A span that becomes wholly free goes back to the page heap, where the
//! scavenger can release it, except that each class keeps one such span
//! aside as a spare: classes whose spans hold one to three objects would
//! otherwise make and unmake a span (two page-heap round trips) for nearly
//! every allocation. Spares cost at most one span per class (about 1.7 MiB
//! over all classes) and [`release_spares`] gives them back.
//!
//! Lock order: a central lock may be held while taking the heap lock, never
//! the other way round.

use core::ptr;

use super::pagemap;
use super::sizeclass::{self, NUM_CLASSES};
use super::span::{self, PutError, Span, SpanKind, SpanList};
use crate::pages::heap::RunUse;
use crate::report::fatal;
use crate::scavenge;
use crate::sync::Mutex;

/// One class's spans with free objects, and its counters.
pub struct Central {
    /// Spans with at least one free object.
    partial: SpanList,
    /// Wholly free spans kept for reuse (at most [`SPARES`]).
    spare: SpanList,
    /// Spans of this class that exist.
    spans: usize,
    /// Objects handed out (to users or to thread caches).
    handed_out: usize,
}

// Each lock on its own pair of cache lines, so that classes do not contend
// through false sharing.
#[repr(align(128))]
struct Padded(Mutex<Central>);

static CENTRAL: [Padded; NUM_CLASSES] = [const {
    Padded(Mutex::new(Central { partial: SpanList::new(), spare: SpanList::new(), spans: 0, handed_out: 0 }))
}; NUM_CLASSES];

/// Wholly free spans a class keeps aside.
const SPARES: usize = 1;

/// Counters of one class, read under its lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CentralCounts {
    /// Spans of the class.
    pub spans: usize,
    /// Objects handed out to users or thread caches.
    pub handed_out: usize,
}

/// The counters of `class`.
pub fn counts(class: usize) -> CentralCounts {
    let c = CENTRAL[class].0.lock();
    CentralCounts { spans: c.spans, handed_out: c.handed_out }
}

/// Hands out up to `out.len()` objects of `class`, writing their addresses
/// to `out`; returns how many. Fewer than asked (even none) only when the
/// OS refuses memory for a new span.
pub fn refill(class: usize, out: &mut [*mut u8]) -> usize {
    let mut central = CENTRAL[class].0.lock();
    let mut got = 0;
    while got < out.len() {
        let mut span = central.partial.first();
        if span.is_null() && !central.spare.is_empty() {
            span = central.spare.first();
            // SAFETY: the spare is on this class's spare list; it moves to
            // the partial list under the lock we hold.
            unsafe {
                central.spare.remove(span);
                central.partial.push_front(span);
                (*span).in_partial = true;
            }
        }
        if span.is_null() {
            span = new_span(class);
            if span.is_null() {
                break;
            }
            central.spans += 1;
            // SAFETY: a fresh record on no list; we hold the class lock.
            unsafe { central.partial.push_front(span) };
            // SAFETY: as above.
            unsafe { (*span).in_partial = true };
        }
        // SAFETY: spans on the partial list are live records of this class,
        // guarded by the lock we hold.
        let s = unsafe { &mut *span };
        got += s.take_free(&mut out[got..]);
        if s.nfree == 0 {
            // SAFETY: `span` is on the list (checked via `in_partial`).
            unsafe { central.partial.remove(span) };
            s.in_partial = false;
        }
    }
    central.handed_out += got;
    got
}

/// Returns objects of `class` to their spans. A pointer that is not an
/// object of this class handed out by scavalloc (a foreign pointer, a double
/// free, or a size that does not match the allocation) stops the process.
pub fn give_back(class: usize, objects: &[*mut u8]) {
    let mut central = CENTRAL[class].0.lock();
    for &p in objects {
        let addr = p as usize;
        let span = pagemap::lookup(addr);
        // SAFETY: a non-null page-map entry points to a span record, which
        // lives forever; a record of this class is guarded by our lock.
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
        central.handed_out -= 1;
        if s.is_empty() {
            if s.in_partial {
                // SAFETY: the span is on this class's list.
                unsafe { central.partial.remove(span) };
                s.in_partial = false;
            }
            if central.spare.len() < SPARES {
                // SAFETY: the span is on no list; the spare list is ours.
                unsafe { central.spare.push_front(span) };
                continue;
            }
            central.spans -= 1;
            // SAFETY: the span is wholly free, off every list, and no
            // pointer into it is live.
            unsafe { release_span(span) };
        } else if !s.in_partial {
            // SAFETY: the span was full, so on no list.
            unsafe { central.partial.push_front(span) };
            s.in_partial = true;
        }
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
                central.spare.remove(span);
                release_span(span);
            }
            central.spans -= 1;
            n += 1;
        }
    }
    n
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
    let (base, npages) = unsafe { ((*span).base, (*span).npages) };
    pagemap::set(base, npages, ptr::null_mut());
    scavenge::free_pages(base, npages, RunUse::Span);
    // SAFETY: its page-map entries are cleared; nothing can reach it.
    unsafe { span::free_record(span) };
}

/// Takes every class lock and keeps them, before `fork()`.
pub(crate) fn lock_for_fork() {
    for c in &CENTRAL {
        c.0.hold_for_fork();
    }
}

/// Releases the locks taken by [`lock_for_fork`].
pub(crate) fn unlock_after_fork() {
    for c in &CENTRAL {
        // SAFETY: `lock_for_fork` held it on this thread.
        unsafe { c.0.release_after_fork() };
    }
}
