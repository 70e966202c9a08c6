//! The surface the C library (`libscavalloc.so`, the `capi` crate) reaches
//! the core through: allocation without a size at free time, as C's
//! `malloc` family needs it (`capi` exports these as `malloc`, `free`,
//! `realloc`, ...). Rust programs use [`crate::Scavalloc`] instead.
//!
//! The calls that take a pointer (`free`, `realloc`) are `unsafe`: the
//! pointer must be a live block from here. `alloc`, `alloc_zeroed` and
//! `usable_size` have no such promise to keep (a bad pointer given to
//! `usable_size` stops the process with one line, as `free` does), so they
//! are safe functions.
//!
//! The page map tells a pointer's class or pages, so `free`, `realloc` and
//! `usable_size` need no size; nothing here sets `errno` or knows C's
//! rules, which the `capi` crate applies.
//!
//! Every small object handed out here is marked as held by a user in its
//! span's user bitmap, and `free` clears the mark: so `free` catches every
//! double free of a small object (also when the first free went to a
//! thread cache, or ran on another thread) and every interior pointer, at
//! the free, whatever `SCAVALLOC_CHECK` says. A large object's record says
//! whether it is freed, so its double free is caught too.

use core::alloc::Layout;

use crate::api::{alloc_unmarked, c_fast_class_of, ensure_init};
use crate::scavenge::background;
use crate::profile;
use crate::spans::{self, cache};

/// At least `size` bytes (one if `size` is 0) aligned to `align` (a power
/// of two), or null when out of memory or the request is impossible.
///
/// A small request (up to the largest class) of alignment up to 16 (every
/// C `malloc`) is the Rust fast path plus the user mark: a table load, a
/// pop from the thread cache, and the span's user bit set (one page-map
/// load, one record load, one atomic, on the record's first line for most
/// classes).
#[inline(always)]
pub fn alloc(size: usize, align: usize) -> *mut u8 {
    if let Some(p) = profile::alloc_sampled(size.max(1), align, false) {
        return p;
    }
    if let Some(class) = c_fast_class_of(size, align) {
        let p = cache::pop(class);
        if !p.is_null() {
            spans::hand_small_to_user(p, class);
            return p;
        }
    }
    alloc_slow(size, align)
}

#[cold]
#[inline(never)]
fn alloc_slow(size: usize, align: usize) -> *mut u8 {
    match Layout::from_size_align(size.max(1), align) {
        Ok(layout) => {
            let p = alloc_unmarked(layout);
            spans::hand_to_user(p);
            p
        }
        Err(_) => core::ptr::null_mut(),
    }
}

/// As [`alloc`], with the memory zeroed. A small object is cleared here
/// (as many bytes as asked for); a large one only if its pages may hold
/// old contents.
#[inline(always)]
pub fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    if let Some(p) = profile::alloc_sampled(size.max(1), align, true) {
        return p;
    }
    if let Some(class) = c_fast_class_of(size, align) {
        let p = cache::pop(class);
        if !p.is_null() {
            spans::hand_small_to_user(p, class);
            // SAFETY: a fresh object of at least `size` bytes.
            unsafe { core::ptr::write_bytes(p, 0, size) };
            return p;
        }
    }
    alloc_zeroed_slow(size, align)
}

#[cold]
#[inline(never)]
fn alloc_zeroed_slow(size: usize, align: usize) -> *mut u8 {
    match Layout::from_size_align(size.max(1), align) {
        Ok(layout) => {
            ensure_init();
            let p = spans::alloc_zeroed(layout.size(), layout.align());
            spans::hand_to_user(p);
            background::run_deferred();
            p
        }
        Err(_) => core::ptr::null_mut(),
    }
}

/// Frees `ptr` (nothing for null). A pointer scavalloc did not hand to a
/// user as a live object (a foreign or interior pointer, a double free)
/// stops the process with one line.
///
/// # Safety
///
/// `ptr` is null or came from this module and is not used again.
#[inline(always)]
pub unsafe fn free(ptr: *mut u8) {
    if !ptr.is_null() {
        // SAFETY: the caller's promise.
        unsafe { spans::dealloc_unsized(ptr) };
        // A free that sent objects or pages home may have asked for the
        // scavenger; here no lock is held and the cache is consistent.
        background::run_deferred();
    }
}

/// Bytes usable at `ptr` (0 for null).
#[inline(always)]
pub fn usable_size(ptr: *mut u8) -> usize {
    if ptr.is_null() {
        0
    } else {
        spans::usable_size(ptr)
    }
}

/// Resizes `ptr` (null: allocates) to `new_size` bytes (at least one),
/// keeping the first bytes, with `align` for a move; null when out of
/// memory, the old object then intact.
///
/// A small object whose class also serves `new_size` with `align` is
/// returned as it is: it already holds `new_size` bytes, and it keeps its
/// own alignment, at least `align` (it was allocated with it, or with a
/// larger one).
///
/// # Safety
///
/// `ptr` is null or came from this module and is live; on success only the
/// returned pointer is used from then on.
#[inline(always)]
pub unsafe fn realloc(ptr: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    if ptr.is_null() {
        return alloc(new_size, align);
    }
    // The page map says what the object is (and checks it is live).
    let owner = spans::owner(ptr, "realloc");
    if let Some(class) = owner.class() {
        if c_fast_class_of(new_size, align) == Some(class) {
            return ptr;
        }
    }
    // SAFETY: forwarded.
    unsafe { realloc_slow(ptr, owner, new_size, align) }
}

/// [`realloc`] when the object moves or is large.
///
/// # Safety
///
/// As for [`realloc`]; `owner` is what the page map says of `ptr`.
#[inline(never)]
unsafe fn realloc_slow(ptr: *mut u8, owner: spans::Owner, new_size: usize, align: usize) -> *mut u8 {
    ensure_init();
    let new_size = new_size.max(1);
    if Layout::from_size_align(new_size, align).is_err() {
        return core::ptr::null_mut();
    }
    // `resize` takes the object as the page map found it. C's caller may
    // have written all of `malloc_usable_size`, so all of it is kept.
    // SAFETY: a live object of the kind the page map records, with its
    // usable bytes readable; the caller uses the result from now on.
    let new = unsafe { spans::resize(ptr, owner.class(), owner.usable(), align, new_size, profile::place_moved) };
    // A moved object is a new one for the user: mark it as theirs (the old
    // one's mark was cleared as it was freed).
    if !new.is_null() && new != ptr {
        spans::hand_to_user(new);
    }
    background::run_deferred();
    new
}
