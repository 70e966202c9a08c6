//! Deep release end to end: free OS pages inside partly used spans go back
//! to the OS, live objects are never disturbed, reused memory comes back
//! zeroed where it must, and the statistics keep adding up. Each case runs
//! in a child process of its own (RSS and the statistics are per process).

mod support;

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::time::{Duration, Instant};

use support::{assert_pattern, page_size, process_cpu, rss, Pattern, Rng};

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const MIB: usize = 1 << 20;

/// Bytes of the process's anonymous memory mapped by transparent huge
/// pages (`AnonHugePages` in `/proc/self/smaps_rollup`; 0 where THP is off
/// or only on request, as scavalloc never asks).
fn anon_huge() -> usize {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok())
        .map_or(0, |kib| kib * 1024)
}

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
    if scavalloc::testing::release_mode_is_free() {
        // MADV_FREE pages stay resident until the kernel needs them.
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

/// The children run one at a time: the scattered case's deadline is wall
/// time, and its scavenger must not compete with another child for the
/// two CPUs its budget is measured against.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `case` of `test` in a child process and checks it passed.
fn in_child(test: &str, case: &str, env: &[(&str, &str)], timeout: Duration) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    support::run_case(test, case, env, timeout);
}

// ---------------------------------------------------------------------------
// The acceptance case: a scattered burst, idle.

/// 64-4096 B, spread over the classes in that range.
fn burst_size(i: usize) -> usize {
    64 + (i * 7919) % 4033
}

fn scattered_burst() {
    let outside = rss();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
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

    let start = Instant::now();
    let cpu_start = process_cpu();
    let mut met_at = None;
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        let (t, r, s) = (start.elapsed(), rss(), scavalloc::stats());
        let bound = floor + floor * 15 / 100 + s.metadata + 16 * MIB + outside;
        if t.as_millis() % 1000 < 100 {
            println!(
                "t={:>4.1}s rss {:>5} MiB (bound {} MiB) released inside spans {:>5} MiB, in {} spans",
                t.as_secs_f64(),
                r / MIB,
                bound / MIB,
                s.span_released / MIB,
                s.deep_spans
            );
        }
        if r <= bound {
            met_at.get_or_insert(t);
        } else if t >= Duration::from_secs(5) {
            panic!(
                "at {t:?}: rss {} MiB over 1.15 x {} MiB of pages touched by live objects + {} MiB metadata + 16 MiB \
                 + {} MiB outside the heap",
                r / MIB,
                floor / MIB,
                s.metadata / MIB,
                outside / MIB
            );
        }
    }
    let cpu = process_cpu() - cpu_start;
    let percent = scavalloc::testing::scavenge_percent();
    let budget = Duration::from_secs_f64(10.0 * cpus as f64 * percent / 100.0 * 1.5);
    let s = scavalloc::stats();
    println!(
        "bound met after {met_at:?}; idle CPU {cpu:?} (budget {budget:?}); deep release {} MiB in {} spans, {:.1} ms of \
         scavenger CPU out of {:.1} ms",
        s.released_deep / MIB,
        s.deep_spans,
        s.deep_cpu_ns as f64 / 1e6,
        s.scavenger_cpu_ns as f64 / 1e6
    );
    println!(
        "transparent huge pages: {} MiB at the peak, {} MiB after the idle (THP mode: {})",
        huge_at_peak / MIB,
        anon_huge() / MIB,
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default().trim()
    );
    assert!(cpu <= budget, "idle CPU {cpu:?} over 1.5 x {percent}% of {cpus} CPUs for 10 s");
    assert!(s.span_released > 0 && s.deep_spans > 0, "deep release did nothing: {s:?}");
    for (k, o) in objects.iter().enumerate() {
        let byte = o[0];
        assert!(o.iter().all(|&b| b == byte), "live object {k} changed");
        assert_eq!(byte, ((k + 1) * 10 - 1) as u8, "live object {k} holds another object's bytes");
    }
    check_stats("after the idle", outside);
}

#[test]
fn scattered_burst_rss_approaches_the_pages_live_objects_touch() {
    match support::child_case().as_deref() {
        Some("scattered") => {
            scattered_burst();
            println!("case scattered done");
        }
        Some(_) => {}
        // At 2% of the machine, not the default 1%: what the bound needs
        // released (about 820 MiB, 300 MiB of it in ranges of one to three
        // OS pages inside spans) costs the kernel 150-250 ms of CPU on the
        // 2-core VMs here (madvise measured at 0.13 ms/MiB in one 1 GiB call
        // and 0.54 ms/MiB page by page), more than 1% of two CPUs pays in
        // 5 s (100 ms, plus at most 80 ms banked). The CPU check in
        // `scattered_burst` follows the setting, as the acceptance asks.
        None => in_child(
            "scattered_burst_rss_approaches_the_pages_live_objects_touch",
            "scattered",
            &[("SCAVALLOC_SCAVENGE_PERCENT", "2")],
            Duration::from_secs(120),
        ),
    }
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
    let fell = support::wait_until(Duration::from_secs(10), || rss() < peak * 7 / 10);
    let s = scavalloc::stats();
    println!(
        "peak {} MiB, now {} MiB; heap frees in the meantime {} KiB; released inside spans {} MiB",
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
    match support::child_case().as_deref() {
        Some("no-span-freed") => {
            frees_that_empty_no_span();
            println!("case no-span-freed done");
        }
        Some(_) => {}
        None => {
            in_child("frees_that_empty_no_span_still_wake_deep_release", "no-span-freed", &[], Duration::from_secs(60))
        }
    }
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
    match support::child_case().as_deref() {
        Some("forced") | Some("forced-free") => {
            reuse_after_forced_deep_release();
            println!("case {} done", support::child_case().unwrap());
        }
        Some(_) => {}
        None => {
            let test = "objects_reused_after_deep_release_keep_contents_and_zeroes";
            in_child(test, "forced", &[("SCAVALLOC_BACKGROUND", "0")], Duration::from_secs(120));
            // MADV_FREE pages may keep their old bytes until reclaimed:
            // zeroed allocations must not rely on them being zero.
            in_child(
                test,
                "forced-free",
                &[("SCAVALLOC_BACKGROUND", "0"), ("SCAVALLOC_RELEASE", "free")],
                Duration::from_secs(120),
            );
        }
    }
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
                        let released = support::wait_until(Duration::from_secs(20), || {
                            verify(&live, &format!("thread {t} round {round}, waiting"));
                            std::thread::sleep(Duration::from_millis(50));
                            scavalloc::stats().released_deep > before
                        });
                        assert!(released, "thread {t} round {round}: no deep release within 20 s");
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
    match support::child_case().as_deref() {
        Some("background") => {
            background_release_while_working();
            println!("case background done");
        }
        Some(_) => {}
        None => in_child(
            "background_deep_release_beside_working_threads",
            "background",
            &[("SCAVALLOC_SCAVENGE_PERCENT", "25")],
            Duration::from_secs(120),
        ),
    }
}
