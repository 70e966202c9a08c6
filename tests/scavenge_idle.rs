//! The scavenger end to end: a 1 GiB burst, frees, and an idle period, in
//! child processes (RSS is per process), with `Scavalloc` as the global
//! allocator. Each child samples `/proc/self/statm` and `stats()` and
//! checks the bounds itself; the parent checks it exited cleanly and shows
//! its timeline.
//!
//! The heavy children run one at a time, so that they do not compete for
//! the two CPUs the scavenger's budget is measured against.

mod support;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{burst, process_cpu, rss};

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const MIB: usize = 1 << 20;
const IDLE: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(5);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Runs `case` in a child process with `env`, and returns its stdout after
/// checking it succeeded.
fn run_child(case: &str, env: &[(&str, &str)]) -> String {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"]).env("SCAVENGE_CASE", case);
    for k in ["SCAVALLOC_BACKGROUND", "SCAVALLOC_MEMLIMIT", "SCAVALLOC_SCAVENGE_PERCENT", "SCAVALLOC_SCAVTRACE"] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "case {case} failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status);
    assert!(stdout.contains(&format!("case {case} done")), "case {case} did not run:\n{stdout}");
    println!("{stdout}");
    stdout
}

/// The entry point of every child; does nothing in the parent.
#[test]
fn child() {
    let Ok(case) = std::env::var("SCAVENGE_CASE") else { return };
    match case.as_str() {
        "whole" => burst_idle(Pattern::WholeSpans),
        "scattered" => burst_idle(Pattern::Scattered),
        "background_off" => background_off(),
        "limit" => memory_limit_waves(true),
        "no_limit" => memory_limit_waves(false),
        other => panic!("unknown case {other}"),
    }
    println!("case {case} done");
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
}

fn sample(start: Instant) -> Sample {
    let s = scavalloc::stats();
    Sample { at: start.elapsed(), rss: rss(), retained: s.retained(), in_use: s.heap_in_use, metadata: s.metadata }
}

fn print_timeline(samples: &[Sample]) {
    for s in samples.iter().step_by(5) {
        println!(
            "t={:>4.1}s rss {:>5} MiB retained {:>5} MiB pages in use {:>5} MiB",
            s.at.as_secs_f64(),
            s.rss / MIB,
            s.retained / MIB,
            s.in_use / MIB
        );
    }
}

fn burst_idle(pattern: Pattern) {
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

    let cpu_before = process_cpu();
    let start = Instant::now();
    let mut samples = Vec::with_capacity(128);
    while start.elapsed() < IDLE {
        samples.push(sample(start));
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu = process_cpu() - cpu_before;
    print_timeline(&samples);

    // Every sample from 5 s on meets the bound.
    let late = samples.iter().filter(|s| s.at >= DEADLINE);
    for s in late {
        match pattern {
            Pattern::WholeSpans => {
                let bound = live + live * 15 / 100 + 16 * MIB + outside_heap;
                assert!(
                    s.rss <= bound,
                    "at {:?}: rss {} MiB over 1.15 x live {} MiB + 16 MiB (+ {} MiB outside the heap)",
                    s.at,
                    s.rss / MIB,
                    live / MIB,
                    outside_heap / MIB
                );
            }
            Pattern::Scattered => {
                let bound = s.in_use + s.in_use / 10 + 16 * MIB;
                assert!(
                    s.retained <= bound,
                    "at {:?}: retained {} MiB over 1.1 x pages in use {} MiB + 16 MiB",
                    s.at,
                    s.retained / MIB,
                    s.in_use / MIB
                );
                assert!(
                    s.rss <= s.retained + s.metadata + outside_heap,
                    "at {:?}: rss {} MiB over retained {} MiB + metadata {} MiB + {} MiB outside the heap",
                    s.at,
                    s.rss / MIB,
                    s.retained / MIB,
                    s.metadata / MIB,
                    outside_heap / MIB
                );
            }
        }
    }
    // The CPU budget: 1% of the machine, with 1.5x slack.
    let budget = IDLE.mul_f64(0.01 * 1.5 * cpus() as f64);
    println!("idle CPU {:?} (budget {:?}), {:?}", cpu, budget, scavalloc::stats().scavenger_cpu_ns);
    assert!(cpu <= budget, "the process used {cpu:?} of CPU in {IDLE:?} of idle; budget {budget:?}");

    // Free everything: RSS falls back to within 32 MiB of the start.
    drop(objects);
    let after = Instant::now();
    while rss() > start_rss + 32 * MIB {
        assert!(
            after.elapsed() < Duration::from_secs(15),
            "after freeing everything rss stays at {} MiB (started at {} MiB)",
            rss() / MIB,
            start_rss / MIB
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("all freed: rss back to {} MiB in {:?}", rss() / MIB, after.elapsed());
}

#[test]
fn burst_then_free_whole_spans_gives_memory_back_within_seconds() {
    run_child("whole", &[]);
}

#[test]
fn burst_then_keep_every_tenth_releases_all_free_page_runs() {
    run_child("scattered", &[]);
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
    run_child("background_off", &[("SCAVALLOC_BACKGROUND", "0")]);
}

/// Waves that would make the heap grow past 256 MiB with free pages in
/// it: 200 MiB of 64-byte objects of which every other span's worth is
/// freed (leaving one-page holes), then waves of large objects that cannot
/// use one-page holes, freed and followed by a wave of 1-8 KiB objects, and
/// large objects again. Retained memory is sampled every 2 MiB allocated.
fn memory_limit_waves(limited: bool) {
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
    // Wave 1: 64-byte objects, 128 to a page; keep every other page's worth.
    let mut small: Vec<Box<[u8]>> = (0..(200 * MIB / 64)).map(|_| alloc(64, 1)).collect();
    let mut i = 0;
    small.retain(|_| {
        i += 1;
        (i - 1) / 128 % 2 == 0
    });
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
    let limited = run_child("limit", &[("SCAVALLOC_MEMLIMIT", "256MiB")]);
    let free = run_child("no_limit", &[]);
    let max = |out: &str| -> usize {
        out.lines().find_map(|l| l.strip_prefix("MAX_RETAINED ")).unwrap().trim().parse().unwrap()
    };
    let (with, without) = (max(&limited), max(&free));
    assert!(with < without, "with the limit {} MiB retained at most, without {} MiB", with / MIB, without / MIB);
}
