//! User arenas: contents, alignment, zero-sized and over-large requests,
//! collections in an arena, faults after free, RSS after free, the
//! quarantine bound, and arena memory kept apart from heap objects. Cases
//! that measure the process or crash it run in child processes.

mod support;

use std::alloc::Layout;
use std::time::Duration;

use scavalloc::Arena;
use support::{rss, Rng};

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const MIB: usize = 1 << 20;

static_assertions::assert_impl_all!(Arena: Send);
static_assertions::assert_not_impl_any!(Arena: Sync);

#[repr(align(64))]
#[derive(Clone, Copy, Debug, PartialEq)]
struct Line([u64; 8]);

#[repr(align(4096))]
#[derive(Clone, Copy, Debug, PartialEq)]
struct Page(u32);

#[test]
fn values_of_many_types_and_alignments_read_back() {
    let arena = Arena::new();
    let mut bytes = Vec::new();
    let mut words = Vec::new();
    let mut lines = Vec::new();
    let mut pages = Vec::new();
    let mut wides = Vec::new();
    for i in 0..20_000u64 {
        bytes.push(arena.alloc(i as u8) as *mut u8);
        words.push(arena.alloc(i * 3) as *mut u64);
        wides.push(arena.alloc(u128::from(i) << 64 | 7) as *mut u128);
        if i % 16 == 0 {
            lines.push(arena.alloc(Line([i; 8])) as *mut Line);
        }
        if i % 1000 == 0 {
            pages.push(arena.alloc(Page(i as u32)) as *mut Page);
        }
    }
    for (i, ((&b, &w), &x)) in bytes.iter().zip(&words).zip(&wides).enumerate() {
        let i = i as u64;
        // SAFETY: all live in the arena, which is alive.
        unsafe {
            assert_eq!(*b, i as u8);
            assert_eq!(*w, i * 3);
            assert_eq!(*x, u128::from(i) << 64 | 7);
        }
        assert_eq!(w as usize % 8, 0);
        assert_eq!(x as usize % std::mem::align_of::<u128>(), 0);
    }
    for (k, &l) in lines.iter().enumerate() {
        assert_eq!(l as usize % 64, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { *l }, Line([k as u64 * 16; 8]));
    }
    for (k, &p) in pages.iter().enumerate() {
        assert_eq!(p as usize % 4096, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { *p }, Page(k as u32 * 1000));
    }

    // Slices and strings.
    let src: Vec<u32> = (0..5000).collect();
    let copy = arena.alloc_slice_copy(&src);
    copy[0] = 99;
    assert_eq!(&copy[1..], &src[1..]);
    let squares = arena.alloc_slice_fill_with(1000, |i| (i * i) as u64);
    assert!(squares.iter().enumerate().all(|(i, &v)| v == (i * i) as u64));
    let s = arena.alloc_str("a string in an arena, ünïcödé included");
    s.make_ascii_uppercase();
    assert_eq!(s, "A STRING IN AN ARENA, üNïCöDé INCLUDED");
    assert_eq!(arena.alloc_slice_copy::<u8>(&[]).len(), 0);

    // Zero-sized values take no memory and are aligned.
    let before = arena.allocated_bytes();
    let unit: &mut () = arena.alloc(());
    *unit = ();
    let zst = arena.alloc_slice_fill_with(1_000_000, |_| ());
    assert_eq!(zst.len(), 1_000_000);
    let empty = arena.alloc([0u64; 0]);
    assert_eq!(empty.as_ptr() as usize % 8, 0);
    assert_eq!(arena.allocated_bytes(), before);

    // Over-large requests get runs of their own, aligned as asked.
    for (size, align) in [(3 * MIB, 8), (20 * MIB, 4096), (5 * MIB, MIB), (2 * MIB + 1, 64), (100, 4 * MIB)] {
        let p = arena.alloc_layout(Layout::from_size_align(size, align).unwrap()).as_ptr();
        assert_eq!(p as usize % align, 0, "{size} bytes aligned to {align}");
        // SAFETY: `size` fresh bytes.
        unsafe {
            p.write_bytes(0xA5, size);
            assert_eq!(*p.add(size - 1), 0xA5);
        }
    }
    // Everything written earlier is still there.
    // SAFETY: as above.
    assert!(bytes.iter().enumerate().all(|(i, &b)| unsafe { *b } == i as u8));
    let s = scavalloc::stats();
    assert!(s.arenas >= 1 && s.arena_chunks >= 20 * MIB, "{s:?}");
    arena.free();
}

#[test]
fn collections_live_in_an_arena() {
    let arena = Arena::new();
    let mut v: allocator_api2::vec::Vec<u64, &Arena> = allocator_api2::vec::Vec::new_in(&arena);
    for i in 0..100_000 {
        v.push(i * 7);
    }
    let mut map = hashbrown::HashMap::new_in(&arena);
    for i in 0..20_000u32 {
        map.insert(i, i.to_string());
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 7));
    assert!((0..20_000u32).all(|i| map[&i] == i.to_string()));
    // The vector's buffer is in the arena, not the heap: no span or large
    // object of scavalloc's owns it.
    assert!(arena.allocated_bytes() >= 100_000 * 8);
    drop(map); // the Strings' heap buffers are freed by the map's Drop
    drop(v);
    arena.free();
}

#[test]
fn reset_keeps_one_chunk_and_frees_the_rest() {
    let mut arena = Arena::new();
    for round in 0..5u64 {
        // Three chunks' worth and an own run.
        let slices: Vec<&mut [u64]> =
            (0..3 * 1024).map(|i| arena.alloc_slice_fill_with(1000, |j| round + i + j as u64)).collect();
        assert!(slices
            .iter()
            .enumerate()
            .all(|(i, s)| s.iter().enumerate().all(|(j, &v)| v == round + i as u64 + j as u64)));
        arena.alloc_layout(Layout::from_size_align(3 * MIB, 8).unwrap());
        assert!(arena.allocated_bytes() >= 3 * 1024 * 8000 + 3 * MIB);
        let held = arena.chunk_bytes();
        assert!(held >= 3 * 8 * MIB + 3 * MIB, "round {round}: {held} bytes held");
        arena.reset();
        assert_eq!(arena.allocated_bytes(), 0);
        assert_eq!(arena.chunk_bytes(), 8 * MIB, "round {round}: reset keeps exactly the current chunk");
        // The kept chunk serves the next objects without a new run.
        let x = arena.alloc(round);
        assert_eq!(*x, round);
        assert_eq!(arena.chunk_bytes(), 8 * MIB, "round {round}: a new run after reset");
    }
}

// ---------------------------------------------------------------------------
// Child processes.

fn child_ok(test: &str, case: &str, env: &[(&str, &str)]) -> String {
    support::run_case(test, case, env, Duration::from_secs(120))
}

#[test]
fn reading_a_freed_arena_faults() {
    let test = "reading_a_freed_arena_faults";
    support::as_child(test, |_| {
        let arena = Arena::new();
        let p: *const u64 = arena.alloc(0x5eed_u64);
        // SAFETY: live.
        assert_eq!(unsafe { p.read_volatile() }, 0x5eed);
        arena.free();
        println!("freed; reading through the stale pointer");
        // SAFETY: not safe at all: this is the use after free the test
        // wants to see caught by a fault.
        let v = unsafe { p.read_volatile() };
        println!("read {v:#x}: no fault");
    });
    support::no_core_dumps();
    let out = support::run_child(test, "use-after-free", Duration::from_secs(60));
    assert!(out.stdout.contains("freed;"), "the child did not get to the read:\n{}\n{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("no fault"), "the read after free succeeded:\n{}", out.stdout);
    out.assert_killed_by(libc::SIGSEGV);
}

#[test]
fn freeing_a_512_mib_arena_returns_its_memory_at_once() {
    support::as_child("freeing_a_512_mib_arena_returns_its_memory_at_once", |_| {
        let arena = Arena::new();
        // 512 MiB of 4 KiB records, each written in full.
        for i in 0..(512 * MIB / 4096) {
            arena.alloc_slice_fill_with(4096, |j| (i + j) as u8);
        }
        let full = rss();
        let s = scavalloc::stats();
        assert!(s.arena_allocated >= 500 * MIB, "{s:?}");
        arena.free();
        let after = rss();
        let s = scavalloc::stats();
        println!(
            "rss {} MiB with the arena, {} MiB right after free; {} MiB quarantined",
            full / MIB,
            after / MIB,
            s.arena_quarantined / MIB
        );
        assert!(full >= after + 512 * MIB * 9 / 10, "rss fell only from {} to {} MiB", full / MIB, after / MIB);
        assert!(s.arena_quarantined >= 512 * MIB && s.arena_chunks == 0 && s.arenas == 0, "{s:?}");
        assert_eq!(s.heap_in_use, s.small_spans + s.large_pages + s.arena_pages, "{s:?}");
        assert!(s.retained() + 64 * MIB < full, "retained {} MiB still counts the arena", s.retained() / MIB);
    });
    child_ok("freeing_a_512_mib_arena_returns_its_memory_at_once", "rss", &[]);
}

#[test]
fn quarantine_is_bounded_and_its_address_space_is_reused_safely() {
    support::as_child("quarantine_is_bounded_and_its_address_space_is_reused_safely", |_| {
        let bound = 64 * MIB;
        let mut rng = Rng::new(0x9a4);
        // A live arena and live heap objects that must survive all of it.
        let keeper = Arena::new();
        let kept: Vec<&mut [u32]> =
            (0..64).map(|i| keeper.alloc_slice_fill_with(1000, |j| (i * 1000 + j) as u32)).collect();
        let heap: Vec<Vec<u8>> = (0..2000).map(|i| vec![i as u8; 64 + i % 3000]).collect();
        let mut seen: Vec<(usize, usize)> = Vec::new();
        let mut reused = 0;
        for round in 0..40 {
            let arena = Arena::new();
            let mut first = 0;
            // 2-3 chunks' worth, and sometimes an own run.
            for k in 0..(2 * 1024 + rng.below(1024)) {
                let p = arena.alloc_slice_fill_with(8192, |j| (k + j) as u8).as_ptr() as usize;
                if k == 0 {
                    first = p;
                }
            }
            if rng.chance(1, 3) {
                arena.alloc_layout(Layout::from_size_align(3 * MIB, 8).unwrap());
            }
            if seen.iter().any(|&(lo, hi)| first >= lo && first < hi) {
                reused += 1;
            }
            seen.push((first & !(8 * MIB - 1), (first & !(8 * MIB - 1)) + 8 * MIB));
            arena.free();
            let s = scavalloc::stats();
            // The bound, give or take the ranges freed by one arena.
            assert!(
                s.arena_quarantined <= bound + 32 * MIB,
                "round {round}: {} MiB quarantined over a {} MiB bound",
                s.arena_quarantined / MIB,
                bound / MIB
            );
            assert_eq!(s.heap_in_use, s.small_spans + s.large_pages + s.arena_pages, "{s:?}");
        }
        println!("{reused} of 40 arenas started in address space an earlier arena had used");
        assert!(reused > 0, "quarantined address space was never reused");
        for (i, slice) in kept.iter().enumerate() {
            assert!(slice.iter().enumerate().all(|(j, &v)| v == (i * 1000 + j) as u32), "kept slice {i} changed");
        }
        for (i, v) in heap.iter().enumerate() {
            assert!(v.iter().all(|&b| b == i as u8), "heap object {i} changed");
        }
    });
    child_ok(
        "quarantine_is_bounded_and_its_address_space_is_reused_safely",
        "quarantine",
        &[("SCAVALLOC_ARENA_QUARANTINE", "64MiB")],
    );
}

/// Arenas and heap objects, made and freed in random order, never share a
/// byte: every live range is checked against all the others.
#[test]
fn arena_memory_never_overlaps_heap_objects() {
    let mut rng = Rng::new(0x0be7);
    let mut arenas: Vec<(Arena, Vec<(usize, usize)>)> = Vec::new();
    let mut heap: Vec<Vec<u8>> = Vec::new();
    for step in 0..30_000 {
        match rng.below(10) {
            0 if arenas.len() < 6 => arenas.push((Arena::new(), Vec::new())),
            1 if !arenas.is_empty() && rng.chance(1, 20) => {
                let i = rng.below(arenas.len());
                arenas.swap_remove(i).0.free();
            }
            2..=5 if !arenas.is_empty() => {
                let i = rng.below(arenas.len());
                let size = if rng.chance(1, 200) { rng.range(2 * MIB, 4 * MIB) } else { rng.range(1, 4096) };
                let align = 1 << rng.below(7);
                let (arena, ranges) = &mut arenas[i];
                let p = arena.alloc_layout(Layout::from_size_align(size, align).unwrap()).as_ptr();
                // SAFETY: `size` fresh bytes.
                unsafe { p.write_bytes(i as u8, size) };
                ranges.push((p as usize, size));
            }
            _ => {
                if heap.len() > 2000 || (rng.chance(1, 3) && !heap.is_empty()) {
                    let i = rng.below(heap.len());
                    heap.swap_remove(i);
                } else {
                    let size = if rng.chance(1, 100) { rng.range(40_000, 400_000) } else { rng.range(1, 2000) };
                    heap.push(vec![0x77; size]);
                }
            }
        }
        if step % 1000 == 999 {
            let mut all: Vec<(usize, usize, &str)> =
                heap.iter().map(|v| (v.as_ptr() as usize, v.len(), "heap")).collect();
            for (_, ranges) in &arenas {
                all.extend(ranges.iter().map(|&(p, n)| (p, n, "arena")));
            }
            all.sort_unstable();
            for w in all.windows(2) {
                assert!(w[0].0 + w[0].1 <= w[1].0, "step {step}: {:?} overlaps {:?}", w[0], w[1]);
            }
            for v in &heap {
                assert!(v.iter().all(|&b| b == 0x77), "a heap object was overwritten");
            }
        }
    }
}
