//! Thread exit and the statistics identities, alone in their own binary,
//! without the test harness (`harness = false`): the harness's own threads
//! allocate while a test runs, and these checks need every cached byte of
//! the process to be accounted for. The checks run on the main thread.

use std::alloc::{alloc, dealloc, Layout};

use scavalloc::testing::{class_size, size_to_class};

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const MIB: usize = 1 << 20;

fn assert_identities(s: &scavalloc::Stats) {
    assert_eq!(s.mapped, s.heap_in_use + s.heap_free + s.heap_released, "{s:?}");
    assert_eq!(s.heap_in_use, s.small_spans + s.large_pages + s.arena_pages, "{s:?}");
    assert_eq!(s.small_spans, s.small_allocated + s.small_cached + s.small_free + s.small_waste, "{s:?}");
    for c in &s.classes {
        assert_eq!(
            c.spans * scavalloc::testing::class_objects(size_to_class(c.size).unwrap()),
            c.allocated + c.cached + c.free
        );
    }
}

fn main() {
    thread_exit();
    println!("test thread_exit ... ok");
    stats_track_a_known_live_set();
    println!("test stats_track_a_known_live_set ... ok");
    // The closing line test runners print, for CI's count.
    println!("test result: ok. 2 passed; 0 failed; 0 ignored");
}

fn thread_exit() {
    scavalloc::flush_thread_cache();
    let before = scavalloc::stats();
    // 1,000 short-lived threads, 8 at a time, each allocating and freeing
    // small and large objects, and dropping some only at thread exit.
    for batch in 0..125 {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    let keep: Vec<Vec<u8>> = (0..50).map(|i| vec![t as u8; 16 + (i * 37 + batch) % 3000]).collect();
                    let mut sum = 0usize;
                    for i in 0..200 {
                        let v = vec![i as u8; 8 + (i * 53) % 900];
                        sum += v.len();
                    }
                    let big = vec![1u8; 100_000];
                    sum + big.len() + keep.len()
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap() > 0);
        }
    }
    scavalloc::flush_thread_cache();
    let after = scavalloc::stats();
    assert_eq!(after.thread_caches, before.thread_caches, "caches of exited threads are still attached");
    // Only this thread is alive, and its cache was just flushed: any cached
    // byte would be stranded in an exited thread's cache.
    assert_eq!(after.small_cached, 0, "bytes stranded in caches of exited threads");
    assert_eq!(
        after.small_allocated + after.profile.sampled_allocated,
        before.small_allocated + before.profile.sampled_allocated,
        "objects of exited threads still allocated"
    );
    assert_eq!(after.large_objects, before.large_objects);
    assert_identities(&after);
}

fn stats_track_a_known_live_set() {
    scavalloc::flush_thread_cache();
    let before = scavalloc::stats();
    assert_identities(&before);
    let sizes: Vec<usize> = (0..20_000).map(|i| 1 + (i * 7919) % 40_000).collect();
    let mut small_expected = 0;
    let mut large_expected = 0;
    let mut ptrs = Vec::with_capacity(sizes.len());
    let after_vec = {
        scavalloc::flush_thread_cache();
        scavalloc::stats()
    };
    for &size in &sizes {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        ptrs.push((p, layout));
        match size_to_class(size) {
            Some(c) => small_expected += class_size(c),
            None => large_expected += size,
        }
    }
    scavalloc::flush_thread_cache();
    let live = scavalloc::stats();
    assert_identities(&live);
    // Small objects the heap profiler sampled are counted apart from the
    // spans' (they live outside them).
    let small = |s: &scavalloc::Stats| s.small_allocated + s.profile.sampled_allocated;
    assert_eq!(small(&live) - small(&after_vec), small_expected);
    assert_eq!(live.large_allocated - after_vec.large_allocated, large_expected);
    assert!(live.allocated() >= before.allocated() + small_expected + large_expected);
    for &(p, layout) in &ptrs {
        // SAFETY: allocated above with this layout, freed once.
        unsafe { dealloc(p, layout) };
    }
    scavalloc::flush_thread_cache();
    let done = scavalloc::stats();
    assert_identities(&done);
    assert_eq!(small(&done), small(&after_vec));
    assert_eq!(done.large_allocated, after_vec.large_allocated);
    // Freed spans went back to the page heap.
    assert!(done.heap_in_use + 64 * MIB < live.heap_in_use, "{} vs {}", done.heap_in_use, live.heap_in_use);
    drop(ptrs);
}
