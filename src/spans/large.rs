//! Large objects (over 32 KiB): each is its own run of pages straight from
//! the page heap, described by a span record that the page map finds at the
//! object's first page.
//!
//! Only the first page is mapped to the record: a large object is freed and
//! reallocated by its base address, and an interior pointer passed to free
//! finds no record and is reported as foreign.

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::span::{self, SpanKind};
use super::{cache, pagemap};
use crate::os;
use crate::pages::heap::{RunUse, HEAP};
use crate::pages::PAGE_SIZE;
use crate::report::fatal;
use crate::profile::table;
use crate::scavenge;

/// Bytes users asked for in large objects.
static LARGE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Large objects live.
static LARGE_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Pages of freed large objects kept in thread caches (part of the page
/// heap's large-object pages, which it counts under its lock).
static CACHED_PAGES: AtomicUsize = AtomicUsize::new(0);

/// Requested bytes, number of live large objects, and pages of freed ones
/// kept in thread caches.
pub fn counts() -> (usize, usize, usize) {
    (LARGE_BYTES.load(Ordering::Relaxed), LARGE_COUNT.load(Ordering::Relaxed), CACHED_PAGES.load(Ordering::Relaxed))
}

/// A fresh large allocation.
pub struct LargeAlloc {
    /// The object's address.
    pub ptr: *mut u8,
    /// Whether every byte is known to be zero: all its pages were released
    /// or never touched, and every release so far zeroed what it released
    /// (see [`os::released_memory_is_zero`]).
    pub zeroed: bool,
    /// Its span record, which no one else knows of until `ptr` is handed
    /// out.
    record: *mut span::Span,
}

/// Allocates a large object the heap profiler sampled, with
/// `extra_pages` of room after it as [`alloc`] leaves, tagged `tag` so
/// that its free is reported to the profile; zeroed if asked. Null when
/// the OS refuses memory.
pub fn alloc_sampled(size: usize, align: usize, zeroed: bool, extra_pages: usize, tag: u32) -> *mut u8 {
    let Some(a) = alloc(size, align, extra_pages) else { return ptr::null_mut() };
    if zeroed && !a.zeroed {
        // SAFETY: a fresh large object of at least `size` bytes.
        unsafe { ptr::write_bytes(a.ptr, 0, size) };
    }
    // SAFETY: the record of the object just allocated, which no one else
    // knows of yet.
    unsafe {
        (*a.record).sample_tag = tag;
        (*a.record).sample_bytes = size;
    }
    a.ptr
}

/// Allocates a large object of `size` bytes aligned to `align`, with
/// `extra_pages` of room after it for growth in place. `None` when the OS
/// refuses memory.
pub fn alloc(size: usize, align: usize, extra_pages: usize) -> Option<LargeAlloc> {
    let npages = size.checked_add(PAGE_SIZE - 1)? / PAGE_SIZE + extra_pages;
    let align_pages = (align / PAGE_SIZE).max(1);
    if align_pages == 1 {
        let cached = cache::take_large(npages);
        // SAFETY: a span of this thread's cache, now out of it: ours.
        if let Some(s) = unsafe { cached.as_mut() } {
            s.kind = SpanKind::Large;
            s.sample_tag = 0;
            s.large_bytes = size;
            CACHED_PAGES.fetch_sub(npages, Ordering::Relaxed);
            LARGE_BYTES.fetch_add(size, Ordering::Relaxed);
            LARGE_COUNT.fetch_add(1, Ordering::Relaxed);
            return Some(LargeAlloc { ptr: s.base as *mut u8, zeroed: false, record: s });
        }
    }
    let record = span::alloc_record();
    if record.is_null() {
        return None;
    }
    let run = scavenge::alloc_pages(npages, align_pages, RunUse::Large);
    let run = match run {
        Some(run) if pagemap::prepare(run.base, 1).is_ok() => run,
        other => {
            if let Some(run) = other {
                scavenge::free_pages(run.base, npages, RunUse::Large);
            }
            // SAFETY: the record is fresh and unused.
            unsafe { span::free_record(record) };
            return None;
        }
    };
    // SAFETY: a fresh record only we know of.
    unsafe { (*record).init_large(run.base, npages, size) };
    pagemap::set(run.base, 1, record);
    LARGE_BYTES.fetch_add(size, Ordering::Relaxed);
    LARGE_COUNT.fetch_add(1, Ordering::Relaxed);
    // Released pages read as zero only if no release ever used MADV_FREE,
    // which leaves a page's old contents in place until the kernel takes
    // it: a fact about how these pages were released, whatever the mode
    // is now.
    let zeroed = run.scavenged_bytes == npages * PAGE_SIZE && os::released_memory_is_zero();
    Some(LargeAlloc { ptr: run.base as *mut u8, zeroed, record })
}

/// The record of the large object at `ptr`, or a fatal report.
fn record_of(ptr: *mut u8, what: &str) -> &'static mut span::Span {
    let addr = ptr as usize;
    let rec = pagemap::lookup(addr);
    // SAFETY: page-map entries point to span records, which live forever. A
    // large object's record is used only by whoever holds the object.
    match unsafe { rec.as_mut() } {
        Some(s) if s.kind == SpanKind::Large && s.base == addr => s,
        Some(s) if s.kind == SpanKind::Small => fatal(format_args!(
            "{what} of {addr:#x} as a large object, but it is a small object (size mismatch or corruption)"
        )),
        _ => fatal(format_args!(
            "{what} of {addr:#x}, which is not an allocated large object (double free or foreign pointer)"
        )),
    }
}

/// Frees the large object at `ptr`.
///
/// # Safety
///
/// `ptr` was returned by [`alloc`] and is not used again.
pub unsafe fn dealloc(ptr: *mut u8) {
    let s = record_of(ptr, "free");
    let (base, npages, bytes) = (s.base, s.npages, s.large_bytes);
    if s.sample_tag != 0 {
        table::note_free(s.sample_tag, s.sample_bytes);
        s.sample_tag = 0;
    }
    LARGE_BYTES.fetch_sub(bytes, Ordering::Relaxed);
    LARGE_COUNT.fetch_sub(1, Ordering::Relaxed);
    // Marked first, so that a double free of a cached object is caught.
    s.kind = SpanKind::CachedLarge;
    if cache::keep_large(s, npages) {
        CACHED_PAGES.fetch_add(npages, Ordering::Relaxed);
        return;
    }
    pagemap::set(base, 1, ptr::null_mut());
    scavenge::free_pages(base, npages, RunUse::Large);
    // SAFETY: the page-map entry is cleared, so nothing reaches the record.
    unsafe { span::free_record(s) };
}

/// Gives a large object's span that a thread cache kept back to the page
/// heap.
///
/// # Safety
///
/// `span` was kept by [`cache::keep_large`] and has been taken out of the
/// cache.
pub(crate) unsafe fn discard_cached(span: *mut span::Span) {
    // SAFETY: per the contract the record is ours.
    let (base, npages) = unsafe { ((*span).base, (*span).npages) };
    pagemap::set(base, 1, ptr::null_mut());
    scavenge::free_pages(base, npages, RunUse::Large);
    CACHED_PAGES.fetch_sub(npages, Ordering::Relaxed);
    // SAFETY: its page-map entry is cleared; nothing reaches it.
    unsafe { span::free_record(span) };
}

/// Resizes the large object at `ptr` to `new_size` bytes without moving
/// it, if its own pages or the free pages right after it allow; returns
/// whether it did.
///
/// # Safety
///
/// `ptr` was returned by [`alloc`] and is live.
pub unsafe fn resize_in_place(ptr: *mut u8, new_size: usize) -> bool {
    let s = record_of(ptr, "realloc");
    let Some(need) = new_size.checked_add(PAGE_SIZE - 1).map(|b| b / PAGE_SIZE) else {
        return false;
    };
    let have = s.npages;
    if need > have {
        let extra = need - have;
        let end = s.base + have * PAGE_SIZE;
        if !HEAP.lock().alloc_at(end, extra) {
            return false;
        }
        s.npages = need;
    } else if need < have && new_size < s.large_bytes {
        // A real shrink gives the tail back at once (including any room
        // left for growth): the caller asked for less memory. Growing into
        // the room keeps the rest of it.
        scavenge::free_pages(s.base + need * PAGE_SIZE, have - need, RunUse::Large);
        s.npages = need;
    }
    LARGE_BYTES.fetch_add(new_size, Ordering::Relaxed);
    LARGE_BYTES.fetch_sub(s.large_bytes, Ordering::Relaxed);
    s.large_bytes = new_size;
    true
}
