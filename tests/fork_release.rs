//! `fork()` while another thread is releasing free pages to the OS: the
//! page heap takes a batch of runs out of the heap and drops its lock for
//! the `madvise`; a fork in that window used to leave the child with runs
//! that nobody owns: out of the heap for good, neither allocatable nor
//! releasable. The fork handler now waits for the releases in flight, so in
//! the child the statistics add up and `release_all` releases every free
//! page.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

mod support;
use support::ForkEnd;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const FORKS: usize = 150;
/// A hang guard only (a deadlock after fork).
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Allocates and touches large runs, frees every other one and releases
/// everything free, over and over: much of the thread's time is spent in
/// the `madvise` of a release, with runs out of the heap.
fn release_loop(stop: Arc<AtomicBool>, rounds: Arc<AtomicUsize>) {
    while !stop.load(Ordering::Relaxed) {
        let mut held = Vec::new();
        for i in 0..96 {
            let mut v = vec![0u8; (256 << 10) + (i % 7) * 8192];
            for b in v.iter_mut().step_by(4096) {
                *b = 1;
            }
            held.push(v);
        }
        // Every other one freed, so the free runs are many and separate.
        let mut i = 0;
        held.retain(|_| {
            i += 1;
            i % 2 == 0
        });
        scavalloc::release_all();
        drop(held);
        scavalloc::release_all();
        rounds.fetch_add(1, Ordering::Relaxed);
    }
}

/// In the child: the page heap's figures add up, with nothing counted in
/// use that no span, large object or arena holds; then it still works.
fn child_checks() -> i32 {
    // The child's own thread cache is intact; give it back so that the
    // figures are exact (no other thread runs here).
    scavalloc::flush_thread_cache();
    let s = scavalloc::stats();
    if s.mapped != s.heap_in_use + s.heap_free + s.heap_released {
        eprintln!(
            "child: mapped {} != in use {} + free {} + released {}",
            s.mapped, s.heap_in_use, s.heap_free, s.heap_released
        );
        return 10;
    }
    if s.heap_in_use != s.small_spans + s.large_pages + s.arena_pages {
        eprintln!(
            "child: heap in use {} != small spans {} + large pages {} + arena pages {}: runs owned by nobody",
            s.heap_in_use, s.small_spans, s.large_pages, s.arena_pages
        );
        return 11;
    }
    // No release is in flight in the child: nobody here would finish it.
    let releasing = scavalloc::testing::pages_being_released();
    if releasing != 0 {
        eprintln!("child: {releasing} heap pages taken out of the heap by a release in flight in the parent");
        return 14;
    }
    // Everything free can be released now: pages a release had taken out
    // of the heap when the fork came must be back in it. (With OS pages
    // larger than the heap's 8 KiB page, a free heap page whose OS page
    // holds live data cannot be released: the check is exact only here.)
    scavalloc::release_all();
    let s = scavalloc::stats();
    if scavalloc::testing::os_page_size() <= 8192 && s.heap_free != 0 {
        eprintln!(
            "child: {} bytes of free pages stay unreleased after release_all (taken by a release in flight)",
            s.heap_free
        );
        return 13;
    }
    let v = vec![7u8; 8 << 20];
    if v.iter().any(|&b| b != 7) {
        return 12;
    }
    0
}

#[test]
fn fork_while_another_thread_releases() {
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let worker = {
        let (stop, rounds) = (stop.clone(), rounds.clone());
        thread::spawn(move || release_loop(stop, rounds))
    };
    for fork in 0..FORKS {
        if fork == 0 {
            assert!(
                support::wait_until(Duration::from_secs(60), || rounds.load(Ordering::Relaxed) > 0),
                "the releasing thread made no progress in 60 s"
            );
        }
        match support::fork_child(CHILD_TIMEOUT, "fork during release", child_checks) {
            ForkEnd::Done => {}
            other => panic!("fork {fork}: child ended with {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
}
