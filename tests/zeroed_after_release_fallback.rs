//! `alloc_zeroed` over pages released with `MADV_FREE`, after another
//! range refused `MADV_FREE` and was released with `MADV_DONTNEED`
//! instead: the pages released with `MADV_FREE` still hold their old bytes,
//! so they must be zeroed by hand, whatever happened to other ranges since.
//!
//! A range locked with `mlock` refuses both advices (`EINVAL`); before the
//! fix, that one refusal switched the whole process to `MADV_DONTNEED`,
//! after which every released page counted as zero, including those
//! released earlier with `MADV_FREE`.
//!
//! One test, in a child with `SCAVALLOC_RELEASE=free` and no background
//! scavenger, so that nothing else releases or reuses pages in between.

mod support;

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::time::Duration;

use support::first_not;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const MIB: usize = 1 << 20;

fn dirty_free_lock_then_zeroed() {
    let dirty_layout = Layout::from_size_align(MIB, 8).unwrap();
    let locked_layout = Layout::from_size_align(256 << 10, 8).unwrap();
    // SAFETY: non-zero sizes; every access is within its object; each
    // object is freed once with its layout.
    unsafe {
        let dirty = alloc(dirty_layout);
        let locked = alloc(locked_layout);
        assert!(!dirty.is_null() && !locked.is_null());
        dirty.write_bytes(0xA5, MIB);
        locked.write_bytes(0x5A, locked_layout.size());
        // Its first OS page locked in memory: madvise refuses the whole
        // range once it is free.
        let page = support::page_size();
        assert_eq!(locked as usize % page, 0, "a large object starts on a page");
        assert_eq!(
            libc::mlock(locked.cast(), page),
            0,
            "mlock of one page failed (RLIMIT_MEMLOCK?): {}",
            std::io::Error::last_os_error()
        );
        // The dirty pages go back with MADV_FREE: they keep their bytes.
        dealloc(dirty, dirty_layout);
        scavalloc::release_all();
        // The locked range refuses MADV_FREE (and MADV_DONTNEED).
        dealloc(locked, locked_layout);
        scavalloc::release_all();
        let q = alloc_zeroed(dirty_layout);
        // Most of it must lie over the dirty pages (a free heap page next
        // to them may shift it a little), or the test proves nothing.
        let (lo, hi) = ((q as usize).max(dirty as usize), (q as usize + MIB).min(dirty as usize + MIB));
        assert!(
            hi.saturating_sub(lo) >= MIB / 2,
            "the zeroed object at {q:p} does not reuse most of the dirty pages at {dirty:p}: the test proves nothing"
        );
        if let Some(i) = first_not(q, MIB, 0) {
            panic!("alloc_zeroed over pages released with MADV_FREE: byte {i} is {:#04x}", *q.add(i));
        }
        dealloc(q, dirty_layout);
    }
}

#[test]
fn zeroed_after_madv_free_refused_elsewhere() {
    support::as_child("zeroed_after_madv_free_refused_elsewhere", |case| {
        assert_eq!(case, "release-free");
        dirty_free_lock_then_zeroed();
        println!("case {case} done");
    });
    support::run_case(
        "zeroed_after_madv_free_refused_elsewhere",
        "release-free",
        &[("SCAVALLOC_RELEASE", "free"), ("SCAVALLOC_BACKGROUND", "0")],
        Duration::from_secs(60),
    );
}
