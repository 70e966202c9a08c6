//! `alloc_zeroed` returns zeroes even when it reuses memory that was
//! dirtied and freed: small objects from thread caches and spans, large
//! objects from free pages, from pages released to the OS (where scavalloc
//! skips the zeroing) and from runs that are partly released and partly
//! dirty. One test only, so that nothing else in this binary takes the
//! freed memory between a free and the zeroed allocation that should reuse
//! it.

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};

mod support;
use support::first_not;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

/// Allocates `layout`, fills it with 0xFF and frees it, `rounds` times,
/// each time followed by `alloc_zeroed` of the same layout, which must be
/// all zero (and is then dirtied and freed too). Returns how many of the
/// zeroed allocations reused the address just dirtied.
fn dirty_then_zeroed(layout: Layout, rounds: usize) -> usize {
    let size = layout.size();
    let mut reused = 0;
    for round in 0..rounds {
        // SAFETY: non-zero sizes; every access is within the object, and
        // every object is freed with its layout.
        unsafe {
            let p = alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(0xFF, size);
            // The object escapes: otherwise the optimiser may drop the
            // dirtying stores (or the whole allocation) and fold `p == q`.
            let p = std::hint::black_box(p);
            dealloc(p, layout);
            let q = alloc_zeroed(layout);
            assert!(!q.is_null(), "alloc_zeroed({layout:?}) returned null");
            assert_eq!(q as usize % layout.align(), 0);
            if let Some(i) = first_not(q, size, 0) {
                panic!(
                    "alloc_zeroed({layout:?}) round {round}: byte {i} is {:#04x} (reused dirty memory: {})",
                    *q.add(i),
                    p == q
                );
            }
            reused += usize::from(p == q);
            q.write_bytes(0xFF, size);
            dealloc(q, layout);
        }
    }
    reused
}

#[test]
fn alloc_zeroed_returns_zeroes_after_dirty_frees() {
    let test = "alloc_zeroed_returns_zeroes_after_dirty_frees";
    support::as_child(test, |case| {
        assert_eq!(case, "release-free");
        // Released pages are not known to be zero under MADV_FREE: the
        // same checks must pass with every page zeroed by hand.
        assert!(scavalloc::testing::release_mode_is_free());
        small_and_large_dirty_then_zeroed();
        alloc_zeroed_over_released_and_partly_dirty_pages();
    });
    small_and_large_dirty_then_zeroed();
    alloc_zeroed_over_released_and_partly_dirty_pages();
    // The same again in a child process that releases with MADV_FREE.
    support::run_case(test, "release-free", &[("SCAVALLOC_RELEASE", "free")], std::time::Duration::from_secs(60));
}

fn small_and_large_dirty_then_zeroed() {
    // Small objects: thread-cache reuse is last in, first out, so the
    // zeroed object is the dirty one.
    for size in [1usize, 8, 16, 24, 100, 1000, 1024, 4000, 16384, 30_000, 32768] {
        for align in [1usize, 8, 64, 4096] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let reused = dirty_then_zeroed(layout, 64);
            assert!(reused > 0, "{layout:?}: no zeroed allocation reused the dirtied object; the test proves nothing");
        }
    }
    // Many small objects dirtied and freed at once (spilling the thread
    // cache back to the spans), then as many zeroed ones.
    for size in [8usize, 48, 256, 2048] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero sizes; accesses within objects; freed with their
        // layout.
        unsafe {
            let ps: Vec<*mut u8> = (0..5000).map(|_| alloc(layout)).collect();
            for &p in &ps {
                assert!(!p.is_null());
                p.write_bytes(0xFF, size);
            }
            for &p in &ps {
                dealloc(p, layout);
            }
            let qs: Vec<*mut u8> = (0..5000).map(|_| alloc_zeroed(layout)).collect();
            for &q in &qs {
                assert!(!q.is_null());
                assert_eq!(first_not(q, size, 0), None, "alloc_zeroed({size}) in a batch");
            }
            let dirty: std::collections::HashSet<*mut u8> = ps.iter().copied().collect();
            let reused = qs.iter().filter(|q| dirty.contains(q)).count();
            assert!(reused > 0, "batch of {size}: nothing reused");
            for q in qs {
                dealloc(q, layout);
            }
        }
    }
    // Large objects, including multi-MiB ones.
    for (size, rounds) in
        [(32769usize, 64), (40_000, 64), (65_536, 64), (100_000, 32), (1 << 20, 16), ((3 << 20) + 5, 8), (8 << 20, 8)]
    {
        for align in [8usize, 4096, 1 << 16] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let reused = dirty_then_zeroed(layout, rounds);
            assert!(reused > 0, "{layout:?}: no zeroed allocation reused the dirtied object; the test proves nothing");
        }
    }
}

/// Pages released to the OS are known to be zero, so `alloc_zeroed` does not
/// write them; a run that is partly released and partly dirty must still be
/// zeroed everywhere.
fn alloc_zeroed_over_released_and_partly_dirty_pages() {
    const MIB: usize = 1 << 20;
    for size in [40_000usize, MIB, 6 * MIB + 123] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        let (mut clean_reuse, mut partly_dirty_reuse) = (0, 0);
        for round in 0..8 {
            // SAFETY: non-zero sizes; accesses within objects; every object
            // freed with its layout.
            unsafe {
                let p = alloc(layout);
                assert!(!p.is_null());
                p.write_bytes(0xFF, size);
                dealloc(p, layout);
                // Release every free page (the object's pages are now known
                // to be zero)...
                scavalloc::release_all();
                // ... and on odd rounds dirty the first third of them again
                // through a plain allocation of the same layout, which
                // lands on the same pages.
                let mut dirty = None;
                if round % 2 == 1 {
                    let d = alloc(layout);
                    assert!(!d.is_null());
                    d.write_bytes(0xEE, size / 3 + 1);
                    dealloc(d, layout);
                    dirty = Some(d);
                }
                let q = alloc_zeroed(layout);
                assert!(!q.is_null());
                if let Some(i) = first_not(q, size, 0) {
                    panic!(
                        "alloc_zeroed({size}) after release_all, round {round}: byte {i} is {:#04x} \
                         (dirtied at {p:p}, then partly at {dirty:?}; zeroed object at {q:p})",
                        *q.add(i)
                    );
                }
                match dirty {
                    None => clean_reuse += usize::from(q == p),
                    Some(d) => partly_dirty_reuse += usize::from(q == p && d == p),
                }
                q.write_bytes(0xFF, size);
                dealloc(q, layout);
            }
        }
        assert!(clean_reuse > 0, "size {size}: the zeroed object never reused the released pages");
        assert!(partly_dirty_reuse > 0, "size {size}: the zeroed object never reused the partly dirty pages");
    }
}
