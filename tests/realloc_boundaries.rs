//! `realloc` across class boundaries and the small/large boundary, up to
//! multi-MiB objects and back down, with the contents checked byte for byte
//! after every call; and the growth of large objects a little at a time.

use std::alloc::{alloc, dealloc, realloc, Layout};

mod support;
use support::{assert_pattern, Pattern};

use scavalloc::testing::class_for;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const ALIGNS: [usize; 5] = [1, 8, 16, 64, 4096];

/// Sizes on both sides of class boundaries (8, 16, 1024), of the small /
/// large boundary (32768), and multi-MiB.
const UP: [usize; 24] = [
    1,
    7,
    8,
    9,
    15,
    16,
    17,
    24,
    100,
    1023,
    1024,
    1025,
    4096,
    8192,
    32767,
    32768,
    32769,
    40_000,
    65_536,
    (1 << 20) - 1,
    1 << 20,
    (3 << 20) + 123,
    8 << 20,
    (8 << 20) + 1,
];

/// One object taken through `sizes` by `realloc`, checked byte for byte
/// after every step: the bytes both sizes hold keep the old pattern; then
/// the whole object gets a new pattern.
fn walk(align: usize, sizes: &[usize], id0: u64) {
    let mut layout = Layout::from_size_align(sizes[0], align).unwrap();
    // SAFETY: non-zero size.
    let mut p = unsafe { alloc(layout) };
    assert!(!p.is_null());
    let mut pat = Pattern::new(id0, sizes[0]);
    // SAFETY: a live object of `sizes[0]` bytes.
    unsafe { pat.fill(p, sizes[0]) };
    for (step, &new_size) in sizes.iter().enumerate().skip(1) {
        let old_size = layout.size();
        let same_class =
            class_for(old_size, align).is_some() && class_for(old_size, align) == class_for(new_size, align);
        let old = p;
        // SAFETY: `p` is live with `layout`; from here the returned pointer
        // is the object.
        p = unsafe { realloc(p, layout, new_size) };
        let what = format!("align {align}: realloc {old_size} -> {new_size} (step {step})");
        assert!(!p.is_null(), "{what}: null");
        assert_eq!(p as usize % align, 0, "{what}: misaligned {p:p}");
        if same_class {
            assert_eq!(p, old, "{what}: moved although the class is the same");
        }
        // SAFETY: the new object holds `new_size` bytes.
        unsafe { assert_pattern(pat, p, old_size.min(new_size), &what) };
        layout = Layout::from_size_align(new_size, align).unwrap();
        pat = Pattern::new(id0 + step as u64, new_size);
        // SAFETY: as above.
        unsafe { pat.fill(p, new_size) };
    }
    // SAFETY: live with `layout`.
    unsafe {
        assert_pattern(pat, p, layout.size(), "final contents");
        dealloc(p, layout);
    }
}

#[test]
fn grow_then_shrink_through_every_boundary() {
    let mut sizes: Vec<usize> = UP.to_vec();
    sizes.extend(UP.iter().rev().skip(1));
    for (i, align) in ALIGNS.into_iter().enumerate() {
        walk(align, &sizes, i as u64 * 1000);
    }
}

#[test]
fn jumps_across_the_boundaries() {
    // Big jumps in both directions, and back and forth over each boundary.
    let sizes = [
        1,
        8 << 20,
        1,
        (3 << 20) + 5,
        32768,
        32769,
        32768,
        32769,
        16,
        17,
        16,
        1024,
        1025,
        1024,
        100_000,
        99_999,
        100_001,
        50_000,
        8,
        9,
        8,
        1 << 20,
        (1 << 20) + 8191,
        (1 << 20) + 8192,
        24,
    ];
    for (i, align) in ALIGNS.into_iter().enumerate() {
        walk(align, &sizes, 50_000 + i as u64 * 1000);
    }
}

#[test]
fn every_size_to_two_kib_one_byte_at_a_time() {
    let sizes: Vec<usize> = (1..=2048).chain((1..2048).rev()).collect();
    for (i, align) in ALIGNS.into_iter().enumerate() {
        walk(align, &sizes, 100_000 + i as u64 * 10_000);
    }
}

#[test]
fn large_objects_by_pages_across_the_boundary() {
    // Page by page from 16 KiB to 256 KiB and back, and a few bytes around
    // every page boundary.
    let mut sizes = Vec::new();
    for pages in 2..=32usize {
        sizes.extend([pages * 8192 - 1, pages * 8192, pages * 8192 + 1]);
    }
    let down: Vec<usize> = sizes.iter().rev().copied().collect();
    sizes.extend(down);
    for (i, align) in ALIGNS.into_iter().enumerate() {
        walk(align, &sizes, 200_000 + i as u64 * 1000);
    }
}

/// A large object grown a page at a time, while the program keeps making
/// other large objects between the steps (as a program that reads a stream
/// into a buffer and allocates as it goes): the object should move only
/// O(log n) times, not at nearly every step (the quadratic copying that the
/// room left after a moved object is there to prevent).
#[test]
fn growing_a_page_at_a_time_moves_rarely() {
    const PAGE: usize = 8192;
    const STEPS: usize = 1000;
    let layout0 = Layout::from_size_align(64 << 10, 8).unwrap();
    // SAFETY: non-zero size; every write stays within the current size.
    let mut p = unsafe { alloc(layout0) };
    assert!(!p.is_null());
    let mut size = layout0.size();
    let mut moves = 0usize;
    let mut others = Vec::new();
    let other = Layout::from_size_align(40_000, 8).unwrap();
    let stamp = |p: *mut u8, page: usize| {
        // SAFETY: callers pass a page within the object.
        unsafe { p.add(page * PAGE).cast::<u64>().write(page as u64 ^ 0x5EED) };
    };
    for page in 0..size / PAGE {
        stamp(p, page);
    }
    for step in 0..STEPS {
        let new_size = size + PAGE;
        // SAFETY: `p` is live with `size` bytes.
        let q = unsafe { realloc(p, Layout::from_size_align(size, 8).unwrap(), new_size) };
        assert!(!q.is_null());
        if q != p {
            moves += 1;
        }
        p = q;
        size = new_size;
        for page in 0..size / PAGE - 1 {
            // SAFETY: within the object.
            let got = unsafe { p.add(page * PAGE).cast::<u64>().read() };
            assert_eq!(got, page as u64 ^ 0x5EED, "step {step}: stamp of page {page}");
        }
        stamp(p, size / PAGE - 1);
        // SAFETY: non-zero size; freed below with the same layout.
        let o = unsafe { alloc(other) };
        assert!(!o.is_null());
        others.push(o);
    }
    for o in others {
        // SAFETY: allocated above with `other`.
        unsafe { dealloc(o, other) };
    }
    // SAFETY: live with `size` bytes.
    unsafe { dealloc(p, Layout::from_size_align(size, 8).unwrap()) };
    // Growth by an eighth per move: about ln(16)/ln(1.125) ≈ 24 moves from
    // 64 KiB to 8 MiB; allow three times that.
    assert!(moves <= 72, "{moves} moves in {STEPS} one-page growth steps (quadratic copying)");
}

/// The same without anything else allocating: the object should nearly
/// always grow in place.
#[test]
fn growing_a_page_at_a_time_alone_moves_rarely() {
    const PAGE: usize = 8192;
    let mut size = 64 << 10;
    // SAFETY: non-zero size.
    let mut p = unsafe { alloc(Layout::from_size_align(size, 8).unwrap()) };
    let mut moves = 0;
    for _ in 0..1000 {
        // SAFETY: `p` is live with `size` bytes.
        let q = unsafe { realloc(p, Layout::from_size_align(size, 8).unwrap(), size + PAGE) };
        assert!(!q.is_null());
        moves += usize::from(q != p);
        p = q;
        size += PAGE;
    }
    // SAFETY: live with `size` bytes.
    unsafe { dealloc(p, Layout::from_size_align(size, 8).unwrap()) };
    assert!(moves <= 72, "{moves} moves in 1000 one-page growth steps");
}

/// Several threads grow large buffers a page at a time side by side (their
/// objects end up next to each other, so in-place growth races for the same
/// free pages), with every page stamped and checked after every step.
#[test]
fn concurrent_growth_in_place_keeps_contents() {
    const PAGE: usize = 8192;
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let stamp = |page: usize| (t << 32) ^ page as u64 ^ 0xC0FFEE;
                let mut size = 5 * PAGE;
                // SAFETY: non-zero size; all accesses are within the object.
                let mut p = unsafe { alloc(Layout::from_size_align(size, 8).unwrap()) };
                assert!(!p.is_null());
                for page in 0..size / PAGE {
                    // SAFETY: within the object.
                    unsafe { p.add(page * PAGE).cast::<u64>().write(stamp(page)) };
                }
                for step in 0..400 {
                    // Mostly growth, sometimes a shrink by a few pages.
                    let new_size = if step % 10 == 9 { size - 2 * PAGE } else { size + PAGE };
                    // SAFETY: `p` is live with `size` bytes.
                    p = unsafe { realloc(p, Layout::from_size_align(size, 8).unwrap(), new_size) };
                    assert!(!p.is_null());
                    for page in 0..size.min(new_size) / PAGE {
                        // SAFETY: within the object.
                        let got = unsafe { p.add(page * PAGE).cast::<u64>().read() };
                        assert_eq!(got, stamp(page), "thread {t} step {step}: page {page}");
                    }
                    for page in size / PAGE..new_size / PAGE {
                        // SAFETY: within the object.
                        unsafe { p.add(page * PAGE).cast::<u64>().write(stamp(page)) };
                    }
                    size = new_size;
                }
                // SAFETY: live with `size` bytes.
                unsafe { dealloc(p, Layout::from_size_align(size, 8).unwrap()) };
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
