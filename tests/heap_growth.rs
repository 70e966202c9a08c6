//! The heap grows geometrically (an eighth of what it maps, at most 64 MiB
//! beyond a request) so that a climb to gigabytes takes few `mprotect`
//! calls; the extra address space must cost neither RSS nor retained
//! memory, and must stay bounded.

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const MIB: usize = 1 << 20;

#[test]
fn growth_beyond_requests_is_bounded_fresh_and_not_retained() {
    let mut objects: Vec<Box<[u8]>> = Vec::new();
    let mut most_fresh = 0;
    // 96 objects of 3 MiB (large objects straight from the page heap), each
    // written in full, so in-use pages climb to about 288 MiB.
    for i in 0..96 {
        objects.push(vec![i as u8; 3 * MIB].into_boxed_slice());
        let s = scavalloc::stats();
        most_fresh = most_fresh.max(s.heap_released);
        let retained = s.mapped - s.heap_released;
        // Everything beyond the pages in use is either free and still
        // resident (none here beyond what the small objects of the test
        // harness leave) or fresh: the growth step itself adds nothing to
        // retained memory.
        assert!(
            retained <= s.heap_in_use + s.heap_free,
            "object {i}: retained {} MiB over in use {} MiB + free {} MiB",
            retained / MIB,
            s.heap_in_use / MIB,
            s.heap_free / MIB
        );
        assert!(s.heap_free <= 16 * MIB, "object {i}: {} MiB free but unreleased after growth", s.heap_free / MIB);
        // A step is an eighth of what was mapped before it (at most
        // 64 MiB), so mapped stays within about 8/7 of in use, plus the
        // chunks a request rounds up to and the harness's own memory.
        let bound = s.heap_in_use + (s.heap_in_use / 6).min(64 * MIB) + 16 * MIB;
        assert!(s.mapped <= bound, "object {i}: mapped {} MiB over bound {} MiB", s.mapped / MIB, bound / MIB);
    }
    let s = scavalloc::stats();
    assert!(s.heap_in_use >= 288 * MIB, "in use {} MiB", s.heap_in_use / MIB);
    // Growth went beyond what was asked: past 128 MiB the heap grows in
    // steps of 16 MiB and more, not a 4 MiB chunk at a time, so at some
    // point at least 16 MiB of fresh pages waited for use.
    assert!(most_fresh >= 16 * MIB, "at most {} MiB of fresh pages beyond the requests", most_fresh / MIB);
    for (i, o) in objects.iter().enumerate() {
        assert!(o.iter().all(|&b| b == i as u8), "object {i} changed");
    }
}
