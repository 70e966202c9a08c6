//! The memory workloads: fragmentation (how much RSS a pattern of frees
//! strands) and burst-idle (what RSS does after a burst, while the program
//! does nothing). They are measured once each, not timed by criterion, and
//! report through `emit` lines (see `main.rs`).

use std::time::{Duration, Instant};

use crate::dispatch::Backend;
use crate::emit;
use crate::support::{self, page_size, process_cpu, rss};
use crate::workloads::{Rng, Scale};

const MIB: usize = 1 << 20;

/// The process's highest resident bytes so far (`VmHWM`).
pub fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// A filled object: `Box<[u8]>` of `size` bytes of `byte` (every page it
/// spans is written, so it is resident).
fn object(size: usize, byte: u8) -> Box<[u8]> {
    vec![byte; size].into_boxed_slice()
}

/// Bytes held by `objects`, and the distinct OS pages their bytes touch:
/// the floor under any allocator's RSS for them.
fn live_and_pages(objects: &[Box<[u8]>]) -> (usize, usize) {
    let ps = page_size();
    let mut pages: Vec<usize> = Vec::new();
    let mut live = 0;
    for o in objects {
        let start = o.as_ptr() as usize;
        live += o.len();
        pages.extend(start / ps..=(start + o.len() - 1) / ps);
    }
    pages.sort_unstable();
    pages.dedup();
    (live, pages.len() * ps)
}

/// Fill memory with small objects of 16-512 B, free nine in ten at random
/// (scattered: nearly every page keeps a live object), then allocate
/// larger objects of 1-8 KiB, as a program does whose small cache entries
/// expire and whose next phase builds bigger records. An allocator that
/// can reuse the holes for the larger objects ends near the live bytes; a
/// size-segregated one holds both. Reports the live bytes at the end (the
/// most that were ever live), the peak RSS and the RSS at the end.
pub fn fragmentation(scale: Scale) {
    let phase = scale.pick(256, 8) * MIB;
    let base = rss();
    let mut rng = Rng(0xf4a9);
    let mut small = Vec::new();
    let mut bytes = 0;
    while bytes < phase {
        let size = rng.between(16, 512);
        small.push(object(size, size as u8));
        bytes += size;
    }
    emit("rss_after_fill", rss());
    small.retain(|_| rng.below(10) == 0);
    emit("rss_after_free", rss());
    let mut large = Vec::new();
    let mut bytes = 0;
    while bytes < phase {
        let size = rng.between(1024, 8192);
        large.push(object(size, size as u8));
        bytes += size;
    }
    let (live_small, _) = live_and_pages(&small);
    let (live_large, _) = live_and_pages(&large);
    // Every object is still holding its byte (nothing was corrupted).
    assert!(small.iter().chain(&large).all(|o| o[o.len() - 1] == o.len() as u8));
    emit("base_rss", base);
    emit("live", live_small + live_large);
    emit("rss_end", rss());
    emit("peak_rss", peak_rss());
}

/// How the burst is freed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pattern {
    /// The first 90% in allocation order: whole spans and pages empty.
    Whole,
    /// Keep every 10th object: nearly every span keeps a live object.
    Scattered,
}

/// A 1 GiB burst, 90% of it freed in `pattern`, then 10 s of idle with RSS
/// sampled every 250 ms (`sample <seconds> <bytes>` lines). Also reports
/// the live bytes, the pages they touch, the RSS 5 s into the idle, the
/// process's CPU time over the idle, and, on scavalloc, the scavenger
/// issue's bound on RSS at 5 s.
pub fn burst_idle(pattern: Pattern, scale: Scale) {
    let (burst, idle, every) = match scale {
        Scale::Full => (1024 * MIB, Duration::from_secs(10), Duration::from_millis(250)),
        Scale::Smoke => (16 * MIB, Duration::from_millis(500), Duration::from_millis(50)),
    };
    let base = rss();
    let (objects, live) = thinned_burst(burst, pattern, base);

    let start = Instant::now();
    let cpu_start = process_cpu();
    let mut at_5s = None;
    let mut next = Duration::ZERO;
    while next <= idle {
        let now = start.elapsed();
        if now < next {
            std::thread::sleep(next - now);
        }
        let r = rss();
        let t = start.elapsed();
        emit("sample", format!("{:.3} {r}", t.as_secs_f64()));
        if at_5s.is_none() && t >= idle / 2 {
            at_5s = Some(r);
            if Backend::current().is_scavalloc() {
                scavalloc_bound(pattern, r, live, base);
            }
        }
        next += every;
    }
    emit("idle_cpu_ns", (process_cpu() - cpu_start).as_nanos());
    emit("rss_5s", at_5s.unwrap_or(0));
    emit("peak_rss", peak_rss());
    assert!(objects.iter().all(|o| o.iter().all(|&b| b == o[0])), "a live object changed");
}

/// The scavenger tests' own burst of `bytes`, nine in ten freed as
/// `pattern` says; reports `base` (the RSS before it), the live bytes and
/// the pages they touch, and returns the objects kept and their bytes.
fn thinned_burst(bytes: usize, pattern: Pattern, base: usize) -> (Vec<Box<[u8]>>, usize) {
    let mut objects = support::burst(bytes);
    match pattern {
        Pattern::Whole => drop(objects.drain(..objects.len() / 10 * 9)),
        Pattern::Scattered => {
            let mut i = 0;
            objects.retain(|_| {
                i += 1;
                i % 10 == 0
            });
        }
    }
    let (live, touched) = live_and_pages(&objects);
    emit("base_rss", base);
    emit("live", live);
    emit("live_pages", touched);
    (objects, live)
}

/// The scavenger issue's bound on RSS 5 s into the idle, from scavalloc's
/// own statistics: whole spans, 1.15 x live + 16 MiB; scattered, retained
/// memory at most 1.1 x the pages in use + 16 MiB, plus metadata. Both add
/// what was resident outside the heap before the burst (the binary, the
/// harness).
fn scavalloc_bound(pattern: Pattern, rss: usize, live: usize, base: usize) {
    let s = scavalloc::stats();
    let bound = match pattern {
        Pattern::Whole => live + live * 15 / 100 + 16 * MIB + base,
        Pattern::Scattered => s.heap_in_use + s.heap_in_use / 10 + 16 * MIB + s.metadata + base,
    };
    emit("bound_5s", bound);
    emit("bound_met", u8::from(rss <= bound));
    emit("retained_5s", s.mapped - s.heap_released);
    emit("in_use_5s", s.heap_in_use);
    emit("metadata_5s", s.metadata);
}

/// A burst of 512 MiB of 64 B-4 KiB objects, nine in ten freed at random,
/// 5 s of idle (long enough for scavalloc to give the free memory back),
/// then the same burst again: the price of having given memory back is
/// paid in the second burst's page faults. Reports both bursts' times and
/// the RSS before the second.
pub fn burst_again(scale: Scale) {
    let (bytes, idle) = match scale {
        Scale::Full => (512 * MIB, Duration::from_secs(5)),
        Scale::Smoke => (8 * MIB, Duration::from_millis(200)),
    };
    let mut rng = Rng(0xb0b0);
    let burst = |rng: &mut Rng| {
        let start = Instant::now();
        let mut objects = Vec::new();
        let mut total = 0;
        while total < bytes {
            let size = rng.between(64, 4096);
            objects.push(object(size, size as u8));
            total += size;
        }
        (objects, start.elapsed())
    };
    let (mut first, t1) = burst(&mut rng);
    first.retain(|_| rng.below(10) == 0);
    std::thread::sleep(idle);
    emit("rss_before_second", rss());
    let (second, t2) = burst(&mut rng);
    emit("first_ns", t1.as_nanos());
    emit("second_ns", t2.as_nanos());
    let (live, _) = live_and_pages(&first);
    let (live2, _) = live_and_pages(&second);
    emit("live", live + live2);
    emit("rss_end", rss());
    emit("peak_rss", peak_rss());
}

/// A pool of threads that each allocate a little (200 objects of 16-1016 B,
/// written and freed, and four small ones kept) and then idle, blocked, for
/// 5 s, with RSS sampled every 250 ms (`sample` lines): what idle threads'
/// caches pin. The threads get small stacks (64 KiB), so that their stacks
/// do not drown the allocator's share of RSS.
pub fn idle_pool(scale: Scale) {
    let (threads, idle, every) = match scale {
        Scale::Full => (1000, Duration::from_secs(5), Duration::from_millis(250)),
        Scale::Smoke => (50, Duration::from_millis(500), Duration::from_millis(50)),
    };
    let base = rss();
    let work_done = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
    let stop = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (work_done, stop) = (work_done.clone(), stop.clone());
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    let mut rng = Rng(t as u64 * 2 + 1);
                    let objects: Vec<Box<[u8]>> = (0..200).map(|i| object(16 + rng.below(1001), i as u8)).collect();
                    assert!(objects.iter().enumerate().all(|(i, o)| o.iter().all(|&b| b == i as u8)));
                    drop(objects);
                    let kept: Vec<Box<[u8]>> = (0..4).map(|i| object(100, i)).collect();
                    work_done.wait();
                    stop.wait();
                    assert!(kept.iter().enumerate().all(|(i, o)| o.iter().all(|&b| b == i as u8)));
                })
                .expect("start a pool thread")
        })
        .collect();
    work_done.wait();
    emit("base_rss", base);
    emit("live", threads * 4 * 100);
    let start = Instant::now();
    let mut next = Duration::ZERO;
    let mut at_end = 0;
    while next <= idle {
        let now = start.elapsed();
        if now < next {
            std::thread::sleep(next - now);
        }
        at_end = rss();
        emit("sample", format!("{:.3} {at_end}", start.elapsed().as_secs_f64()));
        next += every;
    }
    emit("rss_end", at_end);
    emit("peak_rss", peak_rss());
    stop.wait();
    for h in handles {
        h.join().expect("a pool thread failed");
    }
}

/// A server whose load comes in bursts, one every 2 s, ten in all: each
/// burst, two fresh threads each build requests (64 B-16 KiB buffers, as
/// the demo's do) of `per_thread` bytes, and keep one in ten; a burst's
/// survivors are dropped once the next burst is done (sessions that
/// expire). RSS is sampled every 100 ms over the run (`sample` lines).
/// Reports each burst's time (`burst_ns_<k>`), the mean RSS over the run
/// and the peak. An allocator that gives memory back between bursts pays
/// for it in the next burst's page faults; one that keeps it pays in RSS.
pub fn periodic_bursts(scale: Scale) {
    let (per_thread, period, bursts, every) = match scale {
        Scale::Full => (128 * MIB, Duration::from_secs(2), 10, Duration::from_millis(100)),
        Scale::Smoke => (4 * MIB, Duration::from_millis(100), 3, Duration::from_millis(20)),
    };
    let base = rss();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = start.elapsed();
                if now < next {
                    std::thread::sleep(next - now);
                }
                samples.push((start.elapsed().as_secs_f64(), rss()));
                next += every;
            }
            samples
        })
    };
    let mut previous: Vec<Vec<Box<[u8]>>> = Vec::new();
    for k in 0..bursts {
        let due = period * k;
        let now = start.elapsed();
        if now < due {
            std::thread::sleep(due - now);
        }
        let t = Instant::now();
        let survivors: Vec<Vec<Box<[u8]>>> = (0..2u64)
            .map(|w| {
                std::thread::spawn(move || {
                    let mut rng = Rng(0x9e37_79b9 + w * 7 + k as u64 * 131);
                    let mut queue = Vec::new();
                    let mut bytes = 0;
                    while bytes < per_thread {
                        let size = rng.between(64, 16 * 1024);
                        queue.push(object(size, size as u8));
                        bytes += size;
                    }
                    queue.retain(|_| rng.below(10) == 0);
                    queue
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("a burst thread"))
            .collect();
        emit(&format!("burst_ns_{k}"), t.elapsed().as_nanos());
        let expired = std::mem::replace(&mut previous, survivors);
        assert!(expired.iter().flatten().all(|o| o.iter().all(|&b| b == o.len() as u8)), "a live object changed");
        drop(expired);
    }
    let end = period * bursts;
    let now = start.elapsed();
    if now < end {
        std::thread::sleep(end - now);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.join().expect("the sampler");
    for (t, r) in &samples {
        emit("sample", format!("{t:.3} {r}"));
    }
    let mean = samples.iter().map(|s| s.1 as f64).sum::<f64>() / samples.len().max(1) as f64;
    let live: usize = previous.iter().flatten().map(|o| o.len()).sum();
    emit("base_rss", base);
    emit("live", live);
    emit("mean_rss", mean as usize);
    emit("peak_rss", peak_rss());
}

/// Whether khugepaged puts released memory back: the scattered burst-idle
/// pattern (every tenth object kept, so releases are 4 KiB pages inside
/// what may have been huge pages), then minutes of idle with RSS and
/// `AnonHugePages` sampled every second. With transparent huge pages in
/// `always` mode a heap's 2 MiB-aligned ranges fault in as huge pages;
/// releasing a page inside one splits it, and khugepaged, which collapses
/// any 2 MiB range with at most `max_ptes_none` (511 by default) pages
/// missing, would fault the released pages back in: RSS creeping up while
/// the program idles. Opt-in (`--only burst_idle_thp`): it idles for three
/// minutes per allocator. Reports the THP mode in force.
pub fn burst_idle_thp(scale: Scale) {
    let (burst, idle) = match scale {
        Scale::Full => (512 * MIB, Duration::from_secs(180)),
        Scale::Smoke => (16 * MIB, Duration::from_secs(4)),
    };
    let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let always = mode.contains("[always]");
    emit("thp_always", u8::from(always));
    let (objects, _) = thinned_burst(burst, Pattern::Scattered, rss());
    let start = Instant::now();
    let mut next = Duration::ZERO;
    let (mut low, mut last) = (usize::MAX, 0);
    // RSS and huge pages at these seconds into the idle (the last one at
    // the end of a shorter smoke run).
    let marks = [0, 5, 10, 30, 60, 120, 180];
    while next <= idle {
        let now = start.elapsed();
        if now < next {
            std::thread::sleep(next - now);
        }
        let r = rss();
        emit("sample", format!("{:.3} {r}", start.elapsed().as_secs_f64()));
        let second = next.as_secs();
        if marks.contains(&second) || next + Duration::from_secs(1) > idle {
            emit(&format!("rss_at_{second}"), r);
            emit(&format!("huge_at_{second}"), support::anon_huge());
        }
        low = low.min(r);
        last = r;
        next += Duration::from_secs(1);
    }
    emit("rss_low", low);
    emit("rss_end", last);
    emit("huge_end", support::anon_huge());
    emit("peak_rss", peak_rss());
    assert!(objects.iter().all(|o| o.iter().all(|&b| b == o[0])), "a live object changed");
}
