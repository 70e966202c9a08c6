//! The scavenger end to end: a 1 GiB burst, frees, and an idle period, in
//! child processes (RSS is per process), with `Scavalloc` as the global
//! allocator. Each child samples `/proc/self/statm` and `stats()` and
//! checks the outcome itself; the parent checks it ran to the end and shows
//! its timeline.
//!
//! Nothing here is a wall-clock bound on how fast memory comes back (that
//! flakes on a loaded machine, and belongs to the benchmark harness): the
//! children wait for the goal with a deadline that only guards against a
//! hang, and assert what load does not change: the goal reached, the
//! scavenger's CPU time within its budget over the wall time that passed,
//! the bytes it released per CPU-millisecond against `madvise` timed in the
//! same process, and RSS against retained memory (see
//! `support::ScavengerMeter`). The heavy children run one at a time, so that
//! the printed timelines are comparable.

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{burst, rss, ScavengerMeter};

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const MIB: usize = 1 << 20;
/// Only a guard against a scavenger that never gets there.
const HANG_GUARD: Duration = Duration::from_secs(60);
/// The default CPU share (`SCAVALLOC_SCAVENGE_PERCENT` is not set in the
/// children).
const PERCENT: f64 = 1.0;
/// How long a child keeps watching after the goal is reached: the
/// scavenger must stay at its goal, and within its budget, while idle.
const AFTER_GOAL: Duration = Duration::from_secs(2);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// The child side of `test`: runs its case.
fn child(test: &str) {
    support::as_child(test, |case| match case {
        "whole" => burst_idle(Pattern::WholeSpans),
        "scattered" => burst_idle(Pattern::Scattered),
        "background_off" => background_off(),
        "limit" => memory_limit_waves(true),
        "no_limit" => memory_limit_waves(false),
        other => panic!("unknown case {other}"),
    });
}

/// Runs `case` of `test` in a child process with `env`, one child at a
/// time, and returns its stdout after checking it ran to the end.
fn run_child(test: &str, case: &str, env: &[(&str, &str)]) -> String {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    support::run_case(test, case, env, Duration::from_secs(300))
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Pattern {
    /// Free the first 90% of the objects in allocation order.
    WholeSpans,
    /// Keep every 10th object.
    Scattered,
}

struct Sample {
    at: Duration,
    rss: usize,
    retained: usize,
    in_use: usize,
    metadata: usize,
    goal: usize,
}

fn sample(start: Instant) -> Sample {
    let s = scavalloc::stats();
    Sample {
        at: start.elapsed(),
        rss: rss(),
        retained: s.retained(),
        in_use: s.heap_in_use,
        metadata: s.metadata,
        goal: s.retained_goal,
    }
}

fn print_timeline(samples: &[Sample]) {
    for s in samples.iter().step_by(5) {
        println!(
            "t={:>4.1}s rss {:>5} MiB retained {:>5} MiB (goal {:>5} MiB) pages in use {:>5} MiB",
            s.at.as_secs_f64(),
            s.rss / MIB,
            s.retained / MIB,
            s.goal.min(1 << 50) / MIB,
            s.in_use / MIB
        );
    }
}

/// Whether the outcome the pattern promises holds for sample `s`: with
/// whole spans freed, RSS near the live bytes; with every tenth object
/// kept, retained memory near the pages in use (the free runs between
/// them given back). Also the scavenger's own goal: retained memory at most
/// its goal. `None` if it holds, else why not.
///
/// `moving_goal`: also hold retained memory to the scavenger's own goal,
/// which is right only while the goal is still where it was. The goal
/// follows the peak of a one-second window, so for a moment after the burst
/// it can fall below what was just met (on a loaded machine the scavenger
/// meets the higher goal first); what must then hold is the outcome bound,
/// which does not move.
fn short_of_goal(pattern: Pattern, s: &Sample, live: usize, outside_heap: usize, moving_goal: bool) -> Option<String> {
    let ps = support::page_size();
    if moving_goal && s.retained > s.goal.saturating_add(ps) {
        return Some(format!("retained {} MiB over the goal {} MiB", s.retained / MIB, s.goal / MIB));
    }
    match pattern {
        Pattern::WholeSpans => {
            let bound = live + live * 15 / 100 + 16 * MIB + outside_heap;
            (s.rss > bound).then(|| {
                format!(
                    "rss {} MiB over 1.15 x live {} MiB + 16 MiB (+ {} MiB outside the heap)",
                    s.rss / MIB,
                    live / MIB,
                    outside_heap / MIB
                )
            })
        }
        Pattern::Scattered => {
            let bound = s.in_use + s.in_use / 10 + 16 * MIB;
            (s.retained > bound).then(|| {
                format!("retained {} MiB over 1.1 x pages in use {} MiB + 16 MiB", s.retained / MIB, s.in_use / MIB)
            })
        }
    }
}

/// RSS within what the statistics say is retained: pages they call
/// released are really gone.
fn assert_rss_within_retained(s: &Sample, outside_heap: usize) {
    assert!(
        s.rss <= s.retained + s.metadata + outside_heap + 8 * MIB,
        "at {:?}: rss {} MiB over retained {} MiB + metadata {} MiB + {} MiB outside the heap + 8 MiB",
        s.at,
        s.rss / MIB,
        s.retained / MIB,
        s.metadata / MIB,
        outside_heap / MIB
    );
}

fn burst_idle(pattern: Pattern) {
    // The floor the scavenger's efficiency is held to, measured here first.
    let floor = support::madvise_page_by_page_rate(64);
    let start_rss = rss();
    let start_retained = scavalloc::stats().retained();
    // RSS that is not the heap: the binary, stacks, libc's own buffers.
    let outside_heap = start_rss.saturating_sub(start_retained);
    let mut objects = burst(1 << 30);
    let peak = rss();
    assert!(peak > 1000 * MIB, "the burst should be resident: {} MiB", peak / MIB);
    match pattern {
        Pattern::WholeSpans => {
            let n = objects.len();
            objects.drain(..n * 9 / 10);
        }
        Pattern::Scattered => {
            let mut i = 0;
            objects.retain(|_| {
                i += 1;
                i % 10 == 0
            });
        }
    }
    objects.shrink_to_fit();
    let live = scavalloc::stats().allocated();
    println!("pattern {pattern:?}: peak rss {} MiB, live {} MiB", peak / MIB, live / MIB);

    let meter = ScavengerMeter::start();
    let start = Instant::now();
    let mut samples = Vec::with_capacity(1024);
    let reached = loop {
        let s = sample(start);
        let short = short_of_goal(pattern, &s, live, outside_heap, true);
        samples.push(s);
        match short {
            None => break start.elapsed(),
            Some(why) => assert!(start.elapsed() < HANG_GUARD, "no goal after {HANG_GUARD:?}: {why}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let to_goal = meter.used();
    // Then idle: the goal holds, and the scavenger stays within its budget.
    while start.elapsed() < reached + AFTER_GOAL {
        std::thread::sleep(Duration::from_millis(100));
        let s = sample(start);
        if let Some(why) = short_of_goal(pattern, &s, live, outside_heap, false) {
            panic!("at {:?}, after the goal was reached at {reached:?}: {why}", s.at);
        }
        assert_rss_within_retained(&s, outside_heap);
        samples.push(s);
    }
    let idle = meter.used();
    print_timeline(&samples);
    println!("goal reached after {reached:?} (not asserted): {}", to_goal.describe());
    println!("with {AFTER_GOAL:?} idle after it: {}", idle.describe());
    println!("floor: madvise page by page here {:.1} MiB per CPU-ms", floor / MIB as f64);
    // Most of this release fits in the bank, so these are loose; the
    // scattered deep-release test (`tests/deep_release.rs`) is where paced
    // work is checked against the budget.
    to_goal.assert_within_budget(PERCENT, "burst, up to the goal");
    idle.assert_within_budget(PERCENT, "burst, then idle");
    // Whole free runs, even of a single page, cost the scavenger little
    // more than the `madvise` calls: a fifth of the one-call-per-page rate
    // is a floor a working scavenger clears many times over, and one that
    // spends its time on anything but releasing does not.
    assert!(
        to_goal.rate() >= floor / 5.0,
        "the scavenger released {:.2} MiB per CPU-ms; madvise page by page here does {:.2}",
        to_goal.rate() / MIB as f64,
        floor / MIB as f64
    );

    // Free everything: RSS falls back to within 32 MiB of the start.
    drop(objects);
    let after = Instant::now();
    while rss() > start_rss + 32 * MIB {
        assert!(
            after.elapsed() < HANG_GUARD,
            "after freeing everything rss stays at {} MiB (started at {} MiB)",
            rss() / MIB,
            start_rss / MIB
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("all freed: rss back to {} MiB in {:?} (not asserted)", rss() / MIB, after.elapsed());
}

#[test]
fn burst_then_free_whole_spans_gives_memory_back() {
    child("burst_then_free_whole_spans_gives_memory_back");
    run_child("burst_then_free_whole_spans_gives_memory_back", "whole", &[]);
}

#[test]
fn burst_then_keep_every_tenth_releases_all_free_page_runs() {
    child("burst_then_keep_every_tenth_releases_all_free_page_runs");
    run_child("burst_then_keep_every_tenth_releases_all_free_page_runs", "scattered", &[]);
}

fn background_off() {
    let before_threads = threads();
    let mut objects = burst(256 * MIB);
    let n = objects.len();
    objects.drain(..n * 9 / 10);
    objects.shrink_to_fit();
    let high = rss();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(threads(), before_threads, "a thread was started with SCAVALLOC_BACKGROUND=0");
    assert!(!scavalloc::stats().scavenger_running);
    let still = rss();
    assert!(still >= high - high / 20, "rss fell from {} to {} MiB with no scavenger", high / MIB, still / MIB);
    let released = scavalloc::release_all();
    let after = rss();
    println!(
        "background off: rss {} MiB, release_all gave back {} MiB, rss now {} MiB",
        still / MIB,
        released / MIB,
        after / MIB
    );
    assert!(released >= 150 * MIB, "release_all released only {} MiB", released / MIB);
    assert!(after + 150 * MIB <= still, "rss only fell from {} to {} MiB", still / MIB, after / MIB);
    // release_all gives back whole free runs (the forced path) and, by
    // deep release, free pages inside spans; with no background thread,
    // every deep release was its.
    let s = scavalloc::stats();
    assert_eq!(s.released_forced + s.released_deep, released);
    drop(objects);
}

#[test]
fn background_off_starts_no_thread_and_release_all_brings_rss_down() {
    child("background_off_starts_no_thread_and_release_all_brings_rss_down");
    run_child(
        "background_off_starts_no_thread_and_release_all_brings_rss_down",
        "background_off",
        &[("SCAVALLOC_BACKGROUND", "0")],
    );
}

/// Waves that would make the heap grow past 256 MiB with free pages in
/// it: 200 MiB of 64-byte objects of which those in every other span are
/// freed (leaving one-page holes), then waves of large objects that cannot
/// use one-page holes, freed and followed by a wave of 1-8 KiB objects, and
/// large objects again. Retained memory is sampled every 2 MiB allocated.
fn memory_limit_waves(limited: bool) {
    const PAGE: usize = scavalloc::testing::PAGE_SIZE;
    let limit = 256 * MIB;
    let mut max_retained = 0;
    let mut next_sample = 0;
    let mut allocated = 0;
    let mut alloc = |size: usize, fill: u8| -> Box<[u8]> {
        let b = vec![fill; size].into_boxed_slice();
        allocated += size;
        if allocated >= next_sample {
            max_retained = max_retained.max(scavalloc::stats().retained());
            next_sample += 2 * MIB;
        }
        b
    };
    // Wave 1: 64-byte objects, 128 to a one-page span; keep those on every
    // other page. Chosen by address, not by allocation order: an object the
    // heap profiler samples lives outside the spans, which shifts every
    // later object by one place, and choosing by order would then leave
    // one object in every span instead of emptying half of them.
    let class = scavalloc::testing::class_for(64, 8).unwrap();
    assert_eq!(scavalloc::testing::class_objects(class), PAGE / 64, "a 64-byte span is one page");
    let mut small: Vec<Box<[u8]>> = (0..(200 * MIB / 64)).map(|_| alloc(64, 1)).collect();
    small.retain(|b| (b.as_ptr() as usize / PAGE).is_multiple_of(2));
    small.shrink_to_fit();
    let large_wave = |alloc: &mut dyn FnMut(usize, u8) -> Box<[u8]>, fill: u8| -> Vec<Box<[u8]>> {
        let (mut total, mut k, mut v) = (0, 0, Vec::new());
        while total < 100 * MIB {
            let size = (64 << 10) + (k * 104729) % (192 << 10);
            v.push(alloc(size, fill));
            total += size;
            k += 1;
        }
        v
    };
    // Wave 2: large objects.
    let large = large_wave(&mut alloc, 2);
    drop(large);
    // Wave 3: 1-8 KiB objects, freed.
    let medium: Vec<Box<[u8]>> = (0..(100 * MIB / 4600)).map(|k| alloc(1024 + (k * 7919) % 7168, 3)).collect();
    drop(medium);
    // Wave 4: large objects again.
    let large = large_wave(&mut alloc, 4);
    drop(large);
    let s = scavalloc::stats();
    println!(
        "limited {limited}: highest retained {} MiB, limit overruns {}, released for the limit {} MiB",
        max_retained / MIB,
        s.limit_overruns,
        s.released_limit / MIB
    );
    println!("MAX_RETAINED {max_retained}");
    if limited {
        assert_eq!(s.memory_limit, limit);
        assert!(max_retained <= limit, "retained reached {} MiB over the 256 MiB limit", max_retained / MIB);
        assert!(s.released_limit > 0);
    }
    drop(small);
}

#[test]
fn memory_limit_keeps_retained_under_it_in_waves() {
    let test = "memory_limit_keeps_retained_under_it_in_waves";
    child(test);
    let limited = run_child(test, "limit", &[("SCAVALLOC_MEMLIMIT", "256MiB")]);
    let free = run_child(test, "no_limit", &[]);
    let max = |out: &str| -> usize {
        out.lines().find_map(|l| l.strip_prefix("MAX_RETAINED ")).unwrap().trim().parse().unwrap()
    };
    let (with, without) = (max(&limited), max(&free));
    assert!(with < without, "with the limit {} MiB retained at most, without {} MiB", with / MIB, without / MIB);
}
