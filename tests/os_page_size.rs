//! The allocator on kernels whose page is bigger than the heap's 8 KiB
//! page (arm64 with 16 or 64 KiB pages), emulated on this kernel with the
//! `testing` feature's `SCAVALLOC_TEST_PAGE_SIZE`: in that mode every
//! `mmap`, `mprotect`, `madvise` and `munmap` range must be whole emulated
//! pages, or the process stops with one line naming the call.
//!
//! The case: a user arena with a big run of its own (an odd number of heap
//! pages), surrounded by live large objects, is freed; on a real kernel
//! with big pages, faulting the run's last heap page rounded up to the OS
//! page would take the neighbours' memory with it. Every neighbour's
//! contents must survive, and the allocator must go on working. The case
//! runs in children with 16 and 64 KiB pages, and here with the real one.

mod support;

use std::alloc::{alloc, dealloc, Layout};
use std::time::Duration;

use scavalloc::Arena;
use support::{assert_pattern, Pattern};

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const KIB: usize = 1 << 10;

/// Live large objects around arena runs, each filled with its own pattern.
struct Neighbours {
    objects: Vec<(*mut u8, Layout, Pattern)>,
}

impl Neighbours {
    fn new() -> Neighbours {
        Neighbours { objects: Vec::new() }
    }

    /// Allocates `count` large objects of `size` bytes and fills them.
    fn add(&mut self, count: usize, size: usize) {
        let layout = Layout::from_size_align(size, 8).unwrap();
        for _ in 0..count {
            let pat = Pattern::new(self.objects.len() as u64, size);
            // SAFETY: a non-zero size; the fill stays within the object.
            let p = unsafe { alloc(layout) };
            assert!(!p.is_null());
            // SAFETY: as above.
            unsafe { pat.fill(p, size) };
            self.objects.push((p, layout, pat));
        }
    }

    /// Whether some neighbour starts in `[from, to)`.
    fn any_within(&self, from: usize, to: usize) -> bool {
        self.objects.iter().any(|&(p, _, _)| (from..to).contains(&(p as usize)))
    }

    fn check(&self, what: &str) {
        for (i, &(p, layout, pat)) in self.objects.iter().enumerate() {
            // SAFETY: the object is live and `layout.size()` long.
            unsafe { assert_pattern(pat, p, layout.size(), &format!("{what}: neighbour {i}")) };
        }
    }

    fn free(self) {
        for (p, layout, _) in self.objects {
            // SAFETY: allocated with this layout and freed once.
            unsafe { dealloc(p, layout) };
        }
    }
}

/// Arenas whose own runs are odd numbers of heap pages, between and next
/// to live large objects; freed (faulted and quarantined), reset, and
/// finally pushed through a zero-byte quarantine so that their memory goes
/// back to the page heap and is reused.
fn arena_runs_next_to_live_pages() {
    // Requests over 2 MiB get a run of their own: 2 MiB + 1 byte plus the
    // run header is 257 heap pages, not a whole number of 16 or 64 KiB
    // pages.
    let sizes = [(2 << 20) + 1, (2 << 20) + 24 * KIB + 5, (3 << 20) + 8 * KIB];
    let mut neighbours = Neighbours::new();
    neighbours.add(8, 40 * KIB);
    let mut next_to_run = 0;
    for round in 0..6 {
        let mut arena = Arena::new();
        let mut runs = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let pat = Pattern::new(1000 + i as u64, size);
            let p = arena.alloc_layout(Layout::from_size_align(size, 8).unwrap()).as_ptr();
            // SAFETY: `size` bytes of arena memory.
            unsafe { pat.fill(p, size) };
            runs.push((p, size, pat));
            // Large objects right after the run (first fit puts them in the
            // free pages that follow it).
            neighbours.add(4, 40 * KIB);
        }
        for &(p, size, pat) in &runs {
            // SAFETY: live arena memory.
            unsafe { assert_pattern(pat, p, size, "arena object") };
            let end = p as usize + size;
            next_to_run += usize::from(neighbours.any_within(end, end + 64 * KIB));
        }
        // Bump-allocated objects too, in a chunk.
        let small = arena.alloc_slice_fill_with(1000, |i| i as u64 * 3);
        assert_eq!(small[999], 2997);
        if round % 2 == 0 {
            arena.free();
        } else {
            arena.reset();
            let again = arena.alloc_slice_fill_with(100, |i| i as u32);
            assert_eq!(again[99], 99);
            drop(arena);
        }
        neighbours.check(&format!("round {round}, after the arena was freed"));
        neighbours.add(2, 100 * KIB);
    }
    assert!(next_to_run > 0, "no live object followed an arena run within 64 KiB: the case proves nothing");
    neighbours.check("at the end");
    neighbours.free();
    // The heap still works over the memory around the freed runs.
    let mut after = Neighbours::new();
    after.add(64, 40 * KIB);
    after.add(8, 1 << 20);
    after.check("allocated after the arenas");
    after.free();
    scavalloc::release_all();
}

#[test]
fn arena_free_spares_neighbours_with_big_os_pages() {
    support::as_child("arena_free_spares_neighbours_with_big_os_pages", |case| {
        let want: usize = case.strip_prefix("page-").unwrap().parse().unwrap();
        // The emulated page is the one the allocator works with.
        assert_eq!(scavalloc::testing::os_page_size(), want);
        arena_runs_next_to_live_pages();
        println!("case {case} done");
    });
    arena_runs_next_to_live_pages();
    for page in [16 * KIB, 64 * KIB] {
        let case = format!("page-{page}");
        // The quarantine bound 0 sends every freed run back to the page
        // heap at once, so that the memory around it is reused.
        for quarantine in ["64GiB", "0"] {
            support::run_case(
                "arena_free_spares_neighbours_with_big_os_pages",
                &case,
                &[("SCAVALLOC_TEST_PAGE_SIZE", &page.to_string()), ("SCAVALLOC_ARENA_QUARANTINE", quarantine)],
                Duration::from_secs(120),
            );
        }
    }
}
