//! Deep release end to end: free OS pages inside partly used spans go back
//! to the OS, live objects are never disturbed, reused memory comes back
//! zeroed where it must, and the statistics keep adding up. Each case runs
//! in a child process of its own (RSS and the statistics are per process).

mod support;

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::time::{Duration, Instant};

use support::{anon_huge, assert_pattern, page_size, rss, Pattern, Rng, ScavengerMeter};

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const MIB: usize = 1 << 20;

/// The statistics' identities, and that what they call released really is
/// not resident: RSS stays under retained memory plus metadata plus what
/// was resident outside the heap (`outside`) plus a little slack.
fn check_stats(what: &str, outside: usize) {
    let s = scavalloc::stats();
    assert_eq!(s.mapped, s.heap_in_use + s.heap_free + s.heap_released, "{what}: {s:?}");
    assert_eq!(s.heap_in_use, s.small_spans + s.large_pages + s.arena_pages, "{what}: {s:?}");
    assert_eq!(s.small_spans, s.small_allocated + s.small_cached + s.small_free + s.small_waste, "{what}: {s:?}");
    assert!(s.span_released <= s.small_free + s.small_waste, "{what}: released inside spans beyond their free bytes");
    assert_eq!(s.span_released, s.classes.iter().map(|c| c.released).sum::<usize>(), "{what}");
    for c in s.classes.iter().filter(|c| c.released > 0) {
        assert_eq!(c.released % page_size(), 0, "{what}: class {} released {} bytes", c.size, c.released);
    }
    // MADV_FREE pages stay resident until the kernel needs them, so RSS
    // says nothing under it. Only the case that asks for MADV_FREE goes
    // without the RSS check, and it must really be releasing so: any other
    // case under MADV_FREE would lose the check without a word.
    let free = scavalloc::testing::release_mode_is_free();
    let case = support::child_case();
    assert_eq!(free, case.as_deref() == Some("forced-free"), "{what}: MADV_FREE is {free} in case {case:?}");
    if free {
        return;
    }
    let r = rss();
    let bound = s.retained() + s.metadata + outside + 8 * MIB;
    assert!(
        r <= bound,
        "{what}: rss {} MiB over retained {} MiB + metadata {} MiB + {} MiB outside the heap + 8 MiB",
        r / MIB,
        s.retained() / MIB,
        s.metadata / MIB,
        outside / MIB
    );
}

/// The children run one at a time: each is a gigabyte or so, and the
/// printed timelines are comparable only on a machine they do not share.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `case` of `test` in a child process and checks it ran to the end.
fn in_child(test: &str, case: &str, env: &[(&str, &str)], timeout: Duration) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    support::run_case(test, case, env, timeout);
}

/// Only a guard against a scavenger that never gets there; how long it
/// takes is printed, not asserted.
const HANG_GUARD: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The acceptance case: a scattered burst, idle.

/// 64-4096 B, spread over the classes in that range.
fn burst_size(i: usize) -> usize {
    64 + (i * 7919) % 4033
}

fn scattered_burst() {
    // The floor the scavenger's efficiency is held to, measured here first.
    let madvise_rate = support::madvise_page_by_page_rate(64);
    let outside = rss();
    let mut objects: Vec<Box<[u8]>> = Vec::new();
    let mut total = 0;
    while total < 1024 * MIB {
        let size = burst_size(objects.len());
        objects.push(vec![objects.len() as u8; size].into_boxed_slice());
        total += size;
    }
    let peak = rss();
    assert!(peak > 1000 * MIB, "the burst should be resident: {} MiB", peak / MIB);
    let huge_at_peak = anon_huge();
    let mut i = 0;
    objects.retain(|_| {
        i += 1;
        i % 10 == 0
    });
    objects.shrink_to_fit();
    // The floor: the distinct OS pages that live bytes touch (the objects,
    // and the vector that holds them).
    let ps = page_size();
    let mut pages: Vec<usize> = Vec::with_capacity(objects.len() * 2 + 1024);
    let mut live = 0;
    let ranges = objects
        .iter()
        .map(|o| (o.as_ptr() as usize, o.len()))
        .chain(std::iter::once((objects.as_ptr() as usize, objects.len() * std::mem::size_of::<Box<[u8]>>())));
    for (start, len) in ranges {
        live += len;
        pages.extend(start / ps..=(start + len - 1) / ps);
    }
    pages.sort_unstable();
    pages.dedup();
    let floor = pages.len() * ps;
    drop(pages);
    println!(
        "burst: peak rss {} MiB, live {} MiB, pages live objects touch {} MiB",
        peak / MIB,
        live / MIB,
        floor / MIB
    );

    let meter = ScavengerMeter::start();
    let start = Instant::now();
    let mut next_print = Duration::ZERO;
    // The goal: RSS near the pages live objects touch (deep release has
    // given back the rest of the spans they sit in).
    let met_at = loop {
        std::thread::sleep(Duration::from_millis(50));
        let (t, r, s) = (start.elapsed(), rss(), scavalloc::stats());
        let bound = floor + floor * 15 / 100 + s.metadata + 16 * MIB + outside;
        if t >= next_print {
            println!(
                "t={:>4.1}s rss {:>5} MiB (bound {} MiB) released inside spans {:>5} MiB, in {} spans",
                t.as_secs_f64(),
                r / MIB,
                bound / MIB,
                s.span_released / MIB,
                s.deep_spans
            );
            next_print += Duration::from_secs(1);
        }
        if r <= bound {
            break t;
        }
        assert!(
            t < HANG_GUARD,
            "after {t:?}: rss {} MiB over 1.15 x {} MiB of pages touched by live objects + {} MiB metadata + 16 MiB \
             + {} MiB outside the heap",
            r / MIB,
            floor / MIB,
            s.metadata / MIB,
            outside / MIB
        );
    };
    let to_goal = meter.used();
    // Two seconds more of idle: deep release has nothing left worth its
    // budget, and the scavenger stays within it.
    std::thread::sleep(Duration::from_secs(2));
    let idle = meter.used();
    let s = scavalloc::stats();
    println!("bound met after {met_at:?} (not asserted): {}", to_goal.describe());
    println!(
        "with 2 s idle after it: {}; deep release {} MiB in {} spans, {:.1} ms of its CPU",
        idle.describe(),
        s.released_deep / MIB,
        s.deep_spans,
        s.deep_cpu_ns as f64 / 1e6
    );
    println!("floor: madvise page by page here {:.1} MiB per CPU-ms", madvise_rate / MIB as f64);
    println!(
        "transparent huge pages: {} MiB at the peak, {} MiB after the idle (THP mode: {})",
        huge_at_peak / MIB,
        anon_huge() / MIB,
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default().trim()
    );
    // At the default 1%: what it released was paid for within the budget
    // over the wall time it took, however long the machine made that. The
    // stretch up to the goal is the sharp check (most of the work is paced,
    // beyond what the bank pays for); the idle after it must not add more.
    to_goal.assert_within_budget(1.0, "scattered burst, up to the goal");
    idle.assert_within_budget(1.0, "scattered burst, then idle");
    assert!(s.span_released > 0 && s.deep_spans > 0, "deep release did nothing: {s:?}");
    // Deep release gives back runs of one to a few pages inside spans: a
    // third of `madvise` called once per page is a floor it clears, and
    // a scavenger that spends its time on anything but releasing does not.
    assert!(
        to_goal.rate() >= madvise_rate / 3.0,
        "the scavenger released {:.2} MiB per CPU-ms; madvise page by page here does {:.2}",
        to_goal.rate() / MIB as f64,
        madvise_rate / MIB as f64
    );
    for (k, o) in objects.iter().enumerate() {
        let byte = o[0];
        assert!(o.iter().all(|&b| b == byte), "live object {k} changed");
        assert_eq!(byte, ((k + 1) * 10 - 1) as u8, "live object {k} holds another object's bytes");
    }
    check_stats("after the idle", outside);
}

#[test]
fn scattered_burst_rss_approaches_the_pages_live_objects_touch() {
    let test = "scattered_burst_rss_approaches_the_pages_live_objects_touch";
    support::as_child(test, |_| scattered_burst());
    // At the default 1% of the machine: what the bound needs released
    // (about 820 MiB, 300 MiB of it in ranges of one to three OS pages
    // inside spans) costs the kernel 150-250 ms of CPU on the 2-core VMs
    // here, which at 1% takes ten seconds or more; the child asserts the
    // cost and the budget, not the time.
    in_child(test, "scattered", &[], Duration::from_secs(300));
}

// ---------------------------------------------------------------------------
// Frees that empty no span.

/// 256 MiB of 1 KiB objects, then all but one object in eight freed: no
/// span becomes wholly free, so no page goes back to the page heap and
/// nothing but the frees themselves can tell the scavenger there is work.
/// RSS must still fall.
fn frees_that_empty_no_span() {
    let mut objects: Vec<Box<[u8]>> = (0..256 * 1024).map(|i| vec![i as u8; 1024].into_boxed_slice()).collect();
    let peak = rss();
    let mut i = 0;
    // `retain` keeps the vector's buffer: no large object is freed either.
    objects.retain(|_| {
        i += 1;
        i % 8 == 1
    });
    let heap_before = scavalloc::stats();
    let start = Instant::now();
    let fell = support::wait_until(HANG_GUARD, || rss() < peak * 7 / 10);
    let s = scavalloc::stats();
    println!(
        "after {:?} (not asserted): peak {} MiB, now {} MiB; heap frees in the meantime {} KiB; released inside \
         spans {} MiB",
        start.elapsed(),
        peak / MIB,
        rss() / MIB,
        (s.heap_free + s.heap_released).saturating_sub(heap_before.heap_free + heap_before.heap_released) >> 10,
        s.span_released / MIB
    );
    assert!(fell, "rss stayed at {} MiB of a {} MiB peak", rss() / MIB, peak / MIB);
    assert!(s.span_released > 0 && s.scavenger_running, "{s:?}");
    for (k, o) in objects.iter().enumerate() {
        assert!(o.iter().all(|&b| b == (k * 8) as u8), "object {k} changed");
    }
}

#[test]
fn frees_that_empty_no_span_still_wake_deep_release() {
    let test = "frees_that_empty_no_span_still_wake_deep_release";
    support::as_child(test, |_| frees_that_empty_no_span());
    in_child(test, "no-span-freed", &[], Duration::from_secs(120));
}

// ---------------------------------------------------------------------------
// Reuse after deep release, forced with `release_all`.

/// A live object of the stress: where, how big, and what it holds.
struct Live {
    ptr: *mut u8,
    size: usize,
    pattern: Pattern,
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Allocates `n` objects of 16-4096 B, a quarter through `alloc_zeroed`
/// (checked to be zero: memory on pages deep release gave back must come
/// back as zeroes or be zeroed), and fills each with its pattern.
fn allocate(rng: &mut Rng, live: &mut Vec<Live>, n: usize, next_id: &mut u64) {
    for _ in 0..n {
        let size = rng.range(16, 4096);
        let zeroed = rng.chance(1, 4);
        // SAFETY: non-zero size.
        let ptr = unsafe {
            if zeroed {
                alloc_zeroed(layout(size))
            } else {
                alloc(layout(size))
            }
        };
        assert!(!ptr.is_null());
        if zeroed {
            // SAFETY: `ptr` is valid for `size` bytes.
            if let Some(i) = unsafe { support::first_not(ptr, size, 0) } {
                panic!("alloc_zeroed({size}) at {:#x}: byte {i} is not zero", ptr as usize);
            }
        }
        *next_id += 1;
        let pattern = Pattern::new(*next_id, size);
        // SAFETY: as above.
        unsafe { pattern.fill(ptr, size) };
        live.push(Live { ptr, size, pattern });
    }
}

fn verify(live: &[Live], what: &str) {
    for l in live {
        // SAFETY: a live object of `l.size` bytes.
        unsafe { assert_pattern(l.pattern, l.ptr, l.size, what) };
    }
}

/// Frees all but one in `keep` at random.
fn thin(rng: &mut Rng, live: &mut Vec<Live>, keep: usize) {
    live.retain(|l| {
        let stay = rng.chance(1, keep);
        if !stay {
            // SAFETY: allocated with this layout, freed once.
            unsafe { dealloc(l.ptr, layout(l.size)) };
        }
        stay
    });
}

fn reuse_after_forced_deep_release() {
    let outside = rss();
    let mut rng = Rng::new(0xdee9);
    let mut live = Vec::new();
    let mut id = 0;
    let mut released_any = false;
    for round in 0..8 {
        allocate(&mut rng, &mut live, 60_000, &mut id);
        check_stats(&format!("round {round}, allocated"), outside);
        thin(&mut rng, &mut live, [10, 4, 20, 2][round % 4]);
        check_stats(&format!("round {round}, thinned"), outside);
        let before = scavalloc::stats().released_deep;
        let released = scavalloc::release_all();
        let s = scavalloc::stats();
        released_any |= s.released_deep > before;
        println!(
            "round {round}: {} live, release_all gave back {} KiB ({} KiB inside spans), {} KiB released inside spans now",
            live.len(),
            released >> 10,
            (s.released_deep - before) >> 10,
            s.span_released >> 10
        );
        assert!(s.released_deep - before <= released, "release_all's figure leaves out deep release");
        check_stats(&format!("round {round}, released"), outside);
        verify(&live, &format!("round {round}, after deep release"));
    }
    assert!(released_any, "release_all never released inside a span");
    for l in live.drain(..) {
        // SAFETY: allocated with this layout, freed once.
        unsafe { dealloc(l.ptr, layout(l.size)) };
    }
    scavalloc::release_all();
    let s = scavalloc::stats();
    assert_eq!(s.span_released, s.classes.iter().map(|c| c.released).sum::<usize>());
    check_stats("all freed", outside);
}

#[test]
fn objects_reused_after_deep_release_keep_contents_and_zeroes() {
    let test = "objects_reused_after_deep_release_keep_contents_and_zeroes";
    support::as_child(test, |case| {
        assert!(case == "forced" || case == "forced-free", "unknown case {case}");
        reuse_after_forced_deep_release();
    });
    in_child(test, "forced", &[("SCAVALLOC_BACKGROUND", "0")], Duration::from_secs(120));
    // MADV_FREE pages may keep their old bytes until reclaimed: zeroed
    // allocations must not rely on them being zero.
    in_child(
        test,
        "forced-free",
        &[("SCAVALLOC_BACKGROUND", "0"), ("SCAVALLOC_RELEASE", "free")],
        Duration::from_secs(120),
    );
}

// ---------------------------------------------------------------------------
// The background thread releasing while threads work.

/// Two threads each build objects, thin them out, wait until the
/// background scavenger has released pages inside spans, and build again
/// from the same classes while checking what they keep, three times over.
fn background_release_while_working() {
    let outside = rss();
    let rounds = 3;
    // Joined explicitly: the implicit join at the end of a scope returns
    // before the threads' TLS destructors run, so their caches could still
    // be flushing while the figures below are read (rust-lang/rust#116237);
    // an explicit join waits for the thread to be gone.
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                scope.spawn(move || {
                    let mut rng = Rng::new(0xbac0 + t);
                    let mut live = Vec::new();
                    let mut id = t << 40;
                    for round in 0..rounds {
                        allocate(&mut rng, &mut live, 150_000, &mut id);
                        thin(&mut rng, &mut live, 10);
                        scavalloc::flush_thread_cache();
                        let before = scavalloc::stats().released_deep;
                        let released = support::wait_until(HANG_GUARD, || {
                            verify(&live, &format!("thread {t} round {round}, waiting"));
                            std::thread::sleep(Duration::from_millis(50));
                            scavalloc::stats().released_deep > before
                        });
                        assert!(released, "thread {t} round {round}: no deep release within {HANG_GUARD:?}");
                        verify(&live, &format!("thread {t} round {round}, after deep release"));
                    }
                    for l in live.drain(..) {
                        // SAFETY: allocated with this layout, freed once.
                        unsafe { dealloc(l.ptr, layout(l.size)) };
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker thread panicked");
        }
    });
    let s = scavalloc::stats();
    println!(
        "background: {} MiB released inside spans in all, {} spans, {:.1} ms of deep-release CPU",
        s.released_deep / MIB,
        s.deep_spans,
        s.deep_cpu_ns as f64 / 1e6
    );
    assert!(s.deep_cpu_ns > 0, "the background thread did no deep release");
    check_stats("after the threads", outside);
}

#[test]
fn background_deep_release_beside_working_threads() {
    let test = "background_deep_release_beside_working_threads";
    support::as_child(test, |_| background_release_while_working());
    in_child(test, "background", &[], Duration::from_secs(300));
}
