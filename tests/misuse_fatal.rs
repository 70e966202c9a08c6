//! A foreign free and a double free stop the process with one line on
//! stderr that names the fault and the address. Each case runs in a child
//! process (this binary re-executed): the child prints the address it is
//! about to free on stdout, then commits the fault; the parent checks that
//! the child died of SIGABRT and that stderr holds exactly one line, which
//! starts with `scavalloc: fatal:` and names the address in `{:#x}` form.
//!
//! Small frees go to the thread's cache first and are checked when the
//! cache gives them back to their spans, so the small cases call
//! `scavalloc::flush_thread_cache()` after the fault (or let the thread
//! exit, which flushes too).

use std::alloc::{alloc, dealloc, Layout};
use std::io::Write;
use std::time::Duration;

mod support;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

/// Prints the address the child is about to free, and makes sure it is out
/// before the fault.
fn announce(p: *const u8) {
    println!("FREEING {:#x}", p as usize);
    std::io::stdout().flush().unwrap();
}

/// Runs `case` in a child of test `test` and checks how it died. `what` is
/// a word the fatal line must contain besides the address.
fn expect_fatal(test: &str, case: &str, what: &str) {
    let out = support::run_child(test, case, Duration::from_secs(30));
    support::assert_fatal(&out, what);
}

/// The child side: in the child started for `case` of the test calling
/// this, runs `fault` (which must not return) and, if it does return,
/// reports survival and ends the child with `support::CHILD_DONE` (never
/// returning into the harness: the parent wants SIGABRT). In the parent it
/// returns false.
fn child(case: &str, fault: impl FnOnce()) -> bool {
    support::as_child(&support::current_test(), |c| {
        assert_eq!(c, case, "a child for case {c} reached case {case}");
        support::no_core_dumps();
        fault();
        println!("SURVIVED");
        std::io::stdout().flush().unwrap();
    });
    false
}

static mut FOREIGN_STATIC: [u64; 16384] = [0; 16384];

fn static_ptr(offset: usize) -> *mut u8 {
    // SAFETY: only the address is taken; the array is 128 KiB.
    unsafe { (&raw mut FOREIGN_STATIC).cast::<u8>().add(offset) }
}

#[test]
fn foreign_free_of_a_static_small_layout() {
    if !child("static-small", || {
        let p = static_ptr(64);
        announce(p);
        // SAFETY: deliberately wrong: scavalloc never handed this out.
        unsafe { dealloc(p, Layout::from_size_align(48, 8).unwrap()) };
        scavalloc::flush_thread_cache();
    }) {
        expect_fatal("foreign_free_of_a_static_small_layout", "static-small", "foreign");
    }
}

#[test]
fn foreign_free_of_a_static_large_layout() {
    if !child("static-large", || {
        let p = static_ptr(8192);
        announce(p);
        // SAFETY: deliberately wrong: scavalloc never handed this out.
        unsafe { dealloc(p, Layout::from_size_align(40_000, 8).unwrap()) };
    }) {
        expect_fatal("foreign_free_of_a_static_large_layout", "static-large", "not an allocated large object");
    }
}

#[test]
fn foreign_free_of_a_stack_small_layout() {
    if !child("stack-small", || {
        let mut buf = [0u8; 4096];
        let p = std::hint::black_box(buf.as_mut_ptr()).wrapping_add(128);
        announce(p);
        // SAFETY: deliberately wrong: a stack address.
        unsafe { dealloc(p, Layout::from_size_align(1000, 8).unwrap()) };
        scavalloc::flush_thread_cache();
        std::hint::black_box(&mut buf);
    }) {
        expect_fatal("foreign_free_of_a_stack_small_layout", "stack-small", "foreign");
    }
}

#[test]
fn foreign_free_of_a_stack_large_layout() {
    if !child("stack-large", || {
        let mut buf = [0u8; 4096];
        let p = std::hint::black_box(buf.as_mut_ptr());
        announce(p);
        // SAFETY: deliberately wrong: a stack address.
        unsafe { dealloc(p, Layout::from_size_align(1 << 20, 4096).unwrap()) };
        std::hint::black_box(&mut buf);
    }) {
        expect_fatal("foreign_free_of_a_stack_large_layout", "stack-large", "not an allocated large object");
    }
}

#[test]
fn double_free_of_a_large_object() {
    if !child("double-large", || {
        let l = Layout::from_size_align(100_000, 8).unwrap();
        // SAFETY: the second free is the deliberate fault.
        unsafe {
            let p = alloc(l);
            assert!(!p.is_null());
            dealloc(p, l);
            announce(p);
            dealloc(p, l);
        }
    }) {
        expect_fatal("double_free_of_a_large_object", "double-large", "double free");
    }
}

#[test]
fn double_free_of_a_multi_mib_large_object_with_alignment() {
    if !child("double-large-aligned", || {
        let l = Layout::from_size_align(3 << 20, 1 << 16).unwrap();
        // SAFETY: the second free is the deliberate fault.
        unsafe {
            let p = alloc(l);
            assert!(!p.is_null());
            dealloc(p, l);
            announce(p);
            dealloc(p, l);
        }
    }) {
        expect_fatal("double_free_of_a_multi_mib_large_object_with_alignment", "double-large-aligned", "double free");
    }
}

#[test]
fn double_free_of_a_small_object() {
    if !child("double-small", || {
        let l = Layout::from_size_align(48, 8).unwrap();
        // SAFETY: the second free is the deliberate fault.
        unsafe {
            let p = alloc(l);
            assert!(!p.is_null());
            dealloc(p, l);
            announce(p);
            dealloc(p, l);
        }
        scavalloc::flush_thread_cache();
    }) {
        expect_fatal("double_free_of_a_small_object", "double-small", "double free");
    }
}

#[test]
fn double_free_of_an_aligned_small_object() {
    if !child("double-small-aligned", || {
        let l = Layout::from_size_align(3000, 1024).unwrap();
        // SAFETY: the second free is the deliberate fault.
        unsafe {
            let p = alloc(l);
            assert!(!p.is_null());
            dealloc(p, l);
            announce(p);
            dealloc(p, l);
        }
        scavalloc::flush_thread_cache();
    }) {
        expect_fatal("double_free_of_an_aligned_small_object", "double-small-aligned", "double free");
    }
}

/// Without an explicit flush, a small double free is found when the
/// thread exits (its cache is flushed then).
#[test]
fn double_free_of_a_small_object_is_found_at_thread_exit() {
    if !child("double-small-exit", || {
        std::thread::spawn(|| {
            let l = Layout::from_size_align(200, 8).unwrap();
            // SAFETY: the second free is the deliberate fault.
            unsafe {
                let p = alloc(l);
                assert!(!p.is_null());
                dealloc(p, l);
                announce(p);
                dealloc(p, l);
            }
        })
        .join()
        .unwrap();
    }) {
        expect_fatal("double_free_of_a_small_object_is_found_at_thread_exit", "double-small-exit", "double free");
    }
}
