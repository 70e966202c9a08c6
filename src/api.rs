//! The allocator users install: [`Scavalloc`], the `GlobalAlloc`.
//!
//! The fast paths are here, inlined into the caller: a small request with
//! an alignment of at most 16 pops from (or pushes to) the thread's cache,
//! a zeroed one is then cleared, and a `realloc` that stays in its class
//! returns the same pointer. Every other request goes through
//! [`crate::spans`]. The first slow-path call in
//! the process reads the configuration and installs the `fork()` and exit
//! handlers.
//!
//! The hardened mode (`SCAVALLOC_CHECK=1`) costs the fast paths one load
//! and one branch that always goes the same way: when it is on, every call
//! takes the slow path, which marks each object handed out in its span's
//! user bitmap and checks each free against it and against the layout
//! ([`spans::dealloc_checked`]), as C's `free` always does.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::spans::{self, cache, sizeclass};
use crate::{config, pages, persistent, profile, scavenge, stats};

/// The scavalloc global allocator.
///
/// ```ignore
/// #[global_allocator]
/// static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Scavalloc;

/// Requests up to this size with alignment at most 16 take the inlined fast
/// paths: their class is one load from the fine size table
/// ([`sizeclass::rounded_size_to_class`]).
pub(crate) const FAST_MAX: usize = 1024;

/// The class of a request the fast paths serve, `None` for the others.
/// Where it is `Some`, it is [`spans::class_for`] itself (which the slow
/// paths use), so either path finds the class the other chose.
#[inline(always)]
pub(crate) fn fast_class_of(size: usize, align: usize) -> Option<usize> {
    if size <= FAST_MAX && align <= sizeclass::ROUNDED_ALIGN_MAX {
        spans::class_for(size, align)
    } else {
        None
    }
}

/// The class of a request the C API's fast paths ([`crate::raw`]) serve:
/// every small request of alignment at most 16, up to the largest class.
/// Unlike the Rust fast paths, which stop at [`FAST_MAX`] to keep their
/// inlined code to one table load, C's `malloc` always passes alignment
/// 16 from a non-inlined entry point, where a second table for the sizes
/// past 1 KiB costs one compare; without it every `malloc` of 1 to 32 KiB
/// went through three calls and the configuration check. Where it is
/// `Some`, it is [`spans::class_for`] itself.
#[inline(always)]
pub(crate) fn c_fast_class_of(size: usize, align: usize) -> Option<usize> {
    if align <= sizeclass::ROUNDED_ALIGN_MAX {
        spans::class_for(size, align)
    } else {
        None
    }
}

#[inline(always)]
fn fast_class(layout: &Layout) -> Option<usize> {
    fast_class_of(layout.size(), layout.align())
}

/// Whether the hardened mode is on; set once, from the configuration, by
/// the first slow-path call, before any object is handed out (the fast
/// allocation path only finds objects in a cache that a slow call filled).
static CHECK: AtomicBool = AtomicBool::new(false);

#[inline(always)]
fn checking() -> bool {
    CHECK.load(Ordering::Relaxed)
}

// SAFETY: every path returns either null or memory that is valid for the
// layout's size and aligned to its alignment, owned by nobody else until it
// is freed (the span layer's invariants); `dealloc` and `realloc` route a
// pointer by the same layout function that allocated it.
unsafe impl GlobalAlloc for Scavalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(p) = profile::alloc_sampled(layout.size(), layout.align(), false) {
            return p;
        }
        if !checking() {
            let p = fast_pop(&layout);
            if !p.is_null() {
                return p;
            }
        }
        // Also the process's first allocation, which finds the mode only
        // once `alloc_slow` has read the configuration.
        alloc_slow(layout)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !checking() {
            if let Some(class) = fast_class(&layout) {
                if !cache::push(class, ptr) {
                    dealloc_small_slow(class, ptr);
                }
                return;
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { dealloc_slow(ptr, layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if let Some(p) = profile::alloc_sampled(layout.size(), layout.align(), true) {
            return p;
        }
        if !checking() {
            let p = fast_pop(&layout);
            if !p.is_null() {
                // SAFETY: a fresh object of at least `layout.size()` bytes.
                unsafe { core::ptr::write_bytes(p, 0, layout.size()) };
                return p;
            }
        }
        alloc_zeroed_slow(layout)
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Same class: the object already holds `new_size` bytes with the
        // layout's alignment. (The hardened mode checks the object first.)
        if !checking() {
            if let Some(class) = fast_class(&layout) {
                if fast_class_of(new_size, layout.align()) == Some(class) {
                    return ptr;
                }
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { realloc_slow(ptr, layout, new_size) }
    }
}

/// A small object's free past the fast path (an object of another span
/// than the thread's own, or a full stack): straight to the cache's slow
/// path, the class already known.
#[cold]
#[inline(never)]
fn dealloc_small_slow(class: usize, ptr: *mut u8) {
    cache::dealloc_slow(class, ptr);
    // The free is complete and no lock is held: the place to start or wake
    // the scavenger if the free asked for it.
    scavenge::background::run_deferred();
}

/// `alloc_zeroed` past the fast path: large objects on pages known to be
/// zero are not written.
#[cold]
#[inline(never)]
fn alloc_zeroed_slow(layout: Layout) -> *mut u8 {
    ensure_init();
    let p = spans::alloc_zeroed(layout.size(), layout.align());
    if checking() {
        spans::hand_to_user(p);
    }
    scavenge::background::run_deferred();
    p
}

/// `realloc` past the fast path.
///
/// # Safety
///
/// `GlobalAlloc::realloc`'s contract.
#[inline(never)]
unsafe fn realloc_slow(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    ensure_init();
    let new = if checking() {
        // SAFETY: forwarded from the caller.
        unsafe { realloc_checked(ptr, layout, new_size) }
    } else {
        // SAFETY: forwarded from the caller (`ptr` was allocated by us
        // with `layout`).
        unsafe { spans::realloc(ptr, layout.size(), layout.align(), new_size, profile::place_moved) }
    };
    scavenge::background::run_deferred();
    new
}

/// The allocation path without the hardened mode's mark: the fast path,
/// or the slow one. The C API ([`crate::raw`]) allocates through this and
/// marks every object itself, in either mode.
#[inline(always)]
pub(crate) fn alloc_unmarked(layout: Layout) -> *mut u8 {
    let p = fast_pop(&layout);
    if !p.is_null() {
        return p;
    }
    alloc_slow_unmarked(layout)
}

/// The allocation fast path: an object from the thread's cache if the
/// layout takes it, else null.
#[inline(always)]
fn fast_pop(layout: &Layout) -> *mut u8 {
    match fast_class(layout) {
        Some(class) => cache::pop(class),
        None => core::ptr::null_mut(),
    }
}

#[cold]
#[inline(never)]
fn alloc_slow_unmarked(layout: Layout) -> *mut u8 {
    ensure_init();
    let p = spans::alloc(layout.size(), layout.align());
    scavenge::background::run_deferred();
    p
}

/// The slow path, and every allocation in the hardened mode (which is only
/// known after `ensure_init`, hence the test after it).
#[cold]
#[inline(never)]
fn alloc_slow(layout: Layout) -> *mut u8 {
    ensure_init();
    let p = spans::alloc(layout.size(), layout.align());
    if checking() {
        spans::hand_to_user(p);
    }
    scavenge::background::run_deferred();
    p
}

#[cold]
#[inline(never)]
unsafe fn dealloc_slow(ptr: *mut u8, layout: Layout) {
    if checking() {
        // SAFETY: forwarded from `dealloc`'s caller; the checks report
        // what breaks the promise.
        unsafe { spans::dealloc_checked(ptr, layout.size(), layout.align()) }
    } else {
        // SAFETY: forwarded from `dealloc`'s caller.
        unsafe { spans::dealloc(ptr, layout.size(), layout.align()) }
    }
    // The free is complete and no lock is held: the place to start or wake
    // the scavenger if the free asked for it.
    scavenge::background::run_deferred();
}

/// `realloc` in the hardened mode: the old object is checked first, and a
/// move allocates, copies and frees through the checked paths, so the user
/// bitmap follows the object.
///
/// # Safety
///
/// `GlobalAlloc::realloc`'s contract.
#[cold]
#[inline(never)]
unsafe fn realloc_checked(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    spans::check_live(ptr, size, align);
    match (spans::class_for(size, align), spans::class_for(new_size, align)) {
        (Some(a), Some(b)) if a == b => return ptr,
        // Large to large: no user bits are involved, and the large
        // object's own record was checked above.
        // SAFETY: a live large object of this layout, checked above.
        (None, None) => return unsafe { spans::realloc(ptr, size, align, new_size, profile::place_moved) },
        _ => {}
    }
    let new = profile::place_moved(new_size, align, 0).unwrap_or_else(|| spans::alloc(new_size, align));
    if new.is_null() {
        return new;
    }
    spans::hand_to_user(new);
    // SAFETY: both objects are live and distinct; the old one holds `size`
    // bytes and the new one at least `new_size`; the old one was checked
    // to be live with this layout.
    unsafe {
        core::ptr::copy_nonoverlapping(ptr, new, size.min(new_size));
        spans::dealloc_checked(ptr, size, align);
    }
    new
}

/// The settings every allocation needs, installed once; nothing in it
/// allocates.
static SETTINGS: spin::Once<()> = spin::Once::new();

const HANDLERS_NONE: u8 = 0;
const HANDLERS_REGISTERING: u8 = 1;
const HANDLERS_DONE: u8 = 2;
/// Whether the `fork()` and exit handlers are registered.
static HANDLERS: AtomicU8 = AtomicU8::new(HANDLERS_NONE);

/// Reads the configuration and installs the process-wide handlers, once.
///
/// Registering the handlers (`pthread_atfork`, `atexit`) may itself call
/// `malloc`, which is scavalloc when it is the C allocator: so the settings
/// are installed first, and a call that arrives while the handlers are
/// being registered (from that registration, or from another thread) goes
/// on without waiting for them.
#[inline]
pub(crate) fn ensure_init() {
    if HANDLERS.load(Ordering::Acquire) != HANDLERS_DONE {
        init_slow();
    }
}

#[cold]
#[inline(never)]
fn init_slow() {
    SETTINGS.call_once(|| {
        let cfg = config::get();
        CHECK.store(cfg.check, Ordering::Relaxed);
        scavenge::goals::configure(&cfg.scavenger);
        scavenge::set_deep_release(&spans::deep::HOOK);
        scavenge::set_cache_trim(&spans::cache::trim::HOOK);
    });
    if HANDLERS.compare_exchange(HANDLERS_NONE, HANDLERS_REGISTERING, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return;
    }
    // SAFETY: the handlers are `extern "C"` functions that take only
    // allocator locks.
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    if config::get().print_stats {
        // SAFETY: `print_stats_at_exit` is an `extern "C" fn()`.
        unsafe { libc::atexit(print_stats_at_exit) };
    }
    profile::install_signal();
    if config::get().profile.dump_path.is_some() && config::get().profile.rate != 0 {
        // SAFETY: `dump_profile_at_exit` is an `extern "C" fn()`.
        unsafe { libc::atexit(dump_profile_at_exit) };
    }
    HANDLERS.store(HANDLERS_DONE, Ordering::Release);
}

/// Before `fork()`: take every allocator lock, in lock order, so that the
/// child starts with consistent state.
extern "C" fn fork_prepare() {
    crate::arena::lock_for_fork();
    spans::lock_for_fork();
    pages::heap::lock_for_fork();
    persistent::lock_for_fork();
    // Leaf locks, never held while another is taken: last.
    spans::sampled::lock_for_fork();
    profile::lock_for_fork();
}

/// After `fork()` in the parent: release them.
extern "C" fn fork_parent() {
    profile::unlock_after_fork();
    spans::sampled::unlock_after_fork();
    persistent::unlock_after_fork();
    pages::heap::unlock_after_fork();
    spans::unlock_after_fork();
    crate::arena::unlock_after_fork();
}

/// After `fork()` in the child: release them too; the child is a single
/// thread whose cache is intact. Objects cached by the parent's other
/// threads stay with their caches, which no thread of the child uses.
extern "C" fn fork_child() {
    fork_parent();
    crate::os::after_fork_child();
    spans::cache::after_fork_child();
    scavenge::background::after_fork_child();
}

/// Releases every free page of the heap to the OS now, after giving the
/// cached objects of every thread back (so that wholly free spans return
/// to the heap first; a thread busy in its cache at that moment keeps
/// it); returns the bytes released. Like Go's `debug.FreeOSMemory` or
/// glibc's `malloc_trim(0)`.
pub fn release_all() -> usize {
    ensure_init();
    spans::cache::flush_current();
    (spans::cache::trim::HOOK.trim)(crate::os::coarse_ms(), true);
    spans::central::release_spares();
    let released = scavenge::release_all_free();
    scavenge::background::run_deferred();
    released
}

extern "C" fn print_stats_at_exit() {
    stats::print(&stats::stats());
}

/// At exit, with `SCAVALLOC_PROF_DUMP` set: the heap profile.
extern "C" fn dump_profile_at_exit() {
    profile::dump_at_exit();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inlined fast paths and the slow paths must route every layout to
    /// the same class, or a pointer allocated by one would be freed (or
    /// resized) by the other into the wrong class. Every size up to one
    /// past the fast limit, every alignment the fast paths take and a few
    /// they do not.
    #[test]
    fn fast_class_is_class_for_wherever_it_applies() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in 0..=FAST_MAX + 1 {
                let fast = fast_class_of(size, align);
                if size <= FAST_MAX && align <= 16 {
                    assert!(fast.is_some(), "size {size} align {align} misses the fast path");
                    assert_eq!(fast, spans::class_for(size, align), "size {size} align {align}");
                    let class = fast.unwrap();
                    assert!(sizeclass::class_size(class) >= size.max(1));
                    assert_eq!(sizeclass::class_size(class) % align, 0);
                } else {
                    assert_eq!(fast, None, "size {size} align {align}");
                }
                if let Ok(layout) = Layout::from_size_align(size, align) {
                    assert_eq!(fast_class(&layout), fast);
                }
            }
        }
        // The C fast paths cover every small class for alignments up to
        // 16, and agree with `class_for` (and the Rust fast path) wherever
        // they apply.
        for align in [1, 2, 4, 8, 16, 32, 4096] {
            for size in 0..=sizeclass::MAX_SMALL_SIZE + 1 {
                let c = c_fast_class_of(size, align);
                if align <= 16 {
                    assert_eq!(c, spans::class_for(size, align), "size {size} align {align}");
                    assert_eq!(c.is_some(), size <= sizeclass::MAX_SMALL_SIZE, "size {size} align {align}");
                    if let Some(fast) = fast_class_of(size, align) {
                        assert_eq!(c, Some(fast), "size {size} align {align}");
                    }
                } else {
                    assert_eq!(c, None, "size {size} align {align}");
                }
            }
        }
        // C's `malloc` and `u128`: 16-aligned classes.
        assert_eq!(fast_class_of(24, 16).map(sizeclass::class_size), Some(32));
        assert_eq!(fast_class_of(24, 8).map(sizeclass::class_size), Some(24));
    }
}
