//! The memory limit on kernels whose page is bigger than the heap's 8 KiB
//! page (arm64 with 16 or 64 KiB pages), emulated here with the `testing`
//! feature's `SCAVALLOC_TEST_PAGE_SIZE`, and at the real page size.
//!
//! With big OS pages the scavenger may release only whole OS pages. Once a
//! released OS page is partly reused (a 40 KiB object at the start of a
//! released 64 KiB hole) and then freed, its free heap pages are some
//! released and some not; the whole OS page is free and must be releasable
//! again, or that memory stays resident for good and the memory limit is
//! overrun although the live data fits under it.
//!
//! The case, in a child per page size with the background scavenger off
//! (so that only the allocation path's limit releases run):
//!
//! 1. Well past the limit: 64 KiB separators that stay live, 64 KiB
//!    objects between them, and small objects; all but the separators
//!    freed.
//! 2. Large objects that grow the heap: the limit path releases the holes.
//! 3. A 40 KiB object in each (released) hole, freed again.
//! 4. Large objects again: the limit path must release what phase 3 left.
//!
//! Phases 2 to 4 keep the live data well under the limit, so no allocation
//! may overrun it; at the end, after freeing everything but the
//! separators and `release_all`, no free memory may stay resident.

mod support;

use std::alloc::{alloc, dealloc, Layout};
use std::time::Duration;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const LIMIT: usize = 160 * MIB;
/// Separator/hole pairs: 64 MiB of each.
const PAIRS: usize = 1024;

/// Raw blocks whose first and last bytes are written (so they are
/// resident) and checked before they are freed.
struct Blocks(Vec<(*mut u8, Layout, u8)>);

impl Blocks {
    fn new() -> Blocks {
        Blocks(Vec::new())
    }

    fn add(&mut self, size: usize, align: usize) {
        let layout = Layout::from_size_align(size, align).unwrap();
        let tag = self.0.len() as u8 | 1;
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null(), "out of memory for {size} bytes");
        assert!((p as usize).is_multiple_of(align));
        // SAFETY: the block is `size` bytes long.
        unsafe {
            p.write_bytes(tag, size.min(64));
            p.add(size - 1).write(tag);
        }
        self.0.push((p, layout, tag));
    }

    fn free(self) {
        for (p, layout, tag) in self.0 {
            // SAFETY: live, `layout.size()` bytes, freed once with its layout.
            unsafe {
                assert_eq!(*p, tag);
                assert_eq!(*p.add(layout.size() - 1), tag);
                dealloc(p, layout);
            }
        }
    }
}

fn show(what: &str) -> scavalloc::Stats {
    let s = scavalloc::stats();
    println!(
        "{what}: retained {} KiB, in use {} KiB, free resident {} KiB, released for the limit {} KiB, overruns {}",
        s.retained() / KIB,
        s.heap_in_use / KIB,
        s.heap_free / KIB,
        s.released_limit / KIB,
        s.limit_overruns
    );
    s
}

fn limit_with_partly_reused_os_pages() {
    assert_eq!(scavalloc::stats().memory_limit, LIMIT);
    // 1. Well past the limit: separators with holes between them, then
    //    small objects (above them: the heap is first fit).
    let mut separators = Blocks::new();
    let mut holes = Blocks::new();
    for _ in 0..PAIRS {
        separators.add(64 * KIB, 64 * KIB);
        holes.add(64 * KIB, 64 * KIB);
    }
    let small: Vec<Box<[u8]>> = (0..(96 * MIB / 128)).map(|i| vec![i as u8; 128].into_boxed_slice()).collect();
    let peak = show("past the limit");
    assert!(peak.retained() > LIMIT + 64 * MIB, "phase 1 should go well past the limit");
    holes.free();
    drop(small);
    // Every free page released: the holes are now whole released OS pages.
    scavalloc::release_all();
    let released = show("all but the separators freed and released");
    assert!(released.heap_free <= 2 * MIB, "{} KiB of free pages stay resident", released.heap_free / KIB);

    // 2. A 40 KiB object at the start of each released 64 KiB hole, so
    //    that the OS page holding its end is partly reused; freed again.
    let mut partial = Blocks::new();
    for _ in 0..PAIRS {
        partial.add(40 * KIB, 8);
    }
    show("40 KiB objects");
    partial.free();
    let before = show("40 KiB objects freed");

    // 3. Large objects, on released pages: retained goes over the limit's
    //    target unless the limit path releases what phase 2 left.
    let mut big = Blocks::new();
    for _ in 0..32 {
        big.add(2 * MIB, 8);
    }
    let after = show("large objects");
    assert!(after.released_limit > before.released_limit, "the limit path released nothing");
    assert_eq!(
        after.limit_overruns,
        before.limit_overruns,
        "live data of about 128 MiB overran the {} MiB limit",
        LIMIT / MIB
    );
    assert!(after.retained() <= LIMIT, "retained {} KiB over the limit", after.retained() / KIB);
    big.free();

    // 4. Everything free can be released: only the separators (and the
    //    test harness's own few blocks) stay resident.
    scavalloc::release_all();
    let end = show("after release_all");
    assert!(end.heap_free <= 2 * MIB, "{} KiB of free pages stay resident", end.heap_free / KIB);
    assert!(end.retained() <= 64 * MIB + end.metadata + 8 * MIB, "retained {} KiB", end.retained() / KIB);
    separators.free();
}

#[test]
fn memory_limit_releases_partly_reused_big_os_pages() {
    let envs = |page: &str| -> Vec<(&'static str, String)> {
        vec![
            ("SCAVALLOC_MEMLIMIT", "160MiB".to_string()),
            ("SCAVALLOC_BACKGROUND", "0".to_string()),
            ("SCAVALLOC_TEST_PAGE_SIZE", page.to_string()),
        ]
    };
    support::as_child("memory_limit_releases_partly_reused_big_os_pages", |case| {
        let want: usize = case.strip_prefix("page-").unwrap().parse().unwrap();
        assert_eq!(scavalloc::testing::os_page_size(), want);
        limit_with_partly_reused_os_pages();
        println!("case {case} done");
    });
    for page in [support::page_size(), 16 * KIB, 64 * KIB] {
        let env = envs(&page.to_string());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        support::run_case(
            "memory_limit_releases_partly_reused_big_os_pages",
            &format!("page-{page}"),
            &env,
            Duration::from_secs(120),
        );
    }
}
