//! scavalloc against the system allocator (glibc), side by side in one run,
//! both called through the `GlobalAlloc` trait on the same inputs (this
//! binary's own global allocator stays the system one, so the harness biases
//! neither).
//!
//! Workloads: single-thread small-object churn, mixed sizes 8 B-64 KiB,
//! producer/consumer cross-thread frees, a larson-style multi-thread server,
//! and a 16-byte alloc+dealloc pair. Before the timings, the larson run is
//! repeated once per allocator in a child process to report its peak RSS
//! (RSS is per process).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use scavalloc::Scavalloc;

static SCAVALLOC: Scavalloc = Scavalloc;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Replaces random members of a working set of `live` objects `steps`
/// times, sizes drawn by `size`; each new object is written to.
fn working_set<A: GlobalAlloc>(a: &A, live: usize, steps: usize, seed: u64, size: fn(&mut Rng) -> usize) {
    let mut rng = Rng(seed);
    let mut slots: Vec<(*mut u8, usize)> = (0..live)
        .map(|_| {
            let s = size(&mut rng);
            // SAFETY: non-zero size.
            (unsafe { a.alloc(layout(s)) }, s)
        })
        .collect();
    for _ in 0..steps {
        let i = rng.below(live);
        let (p, s) = slots[i];
        // SAFETY: allocated by `a` with this layout.
        unsafe { a.dealloc(p, layout(s)) };
        let s = size(&mut rng);
        // SAFETY: non-zero size; the new object is written at both ends.
        let p = unsafe { a.alloc(layout(s)) };
        unsafe {
            *p = 1;
            *p.add(s - 1) = 2;
        }
        slots[i] = (p, s);
    }
    for (p, s) in slots {
        // SAFETY: allocated by `a` with this layout.
        unsafe { a.dealloc(p, layout(s)) };
    }
}

fn small_size(rng: &mut Rng) -> usize {
    16 + rng.below(241)
}

/// Log-uniform between 8 B and 64 KiB.
fn mixed_size(rng: &mut Rng) -> usize {
    let bits = 3 + rng.below(13);
    (1 << bits) + rng.below(1 << bits)
}

/// One thread allocates 64-byte objects and sends them, 256 at a time, to
/// another that frees them.
fn producer_consumer<A: GlobalAlloc + Sync>(a: &'static A, objects: usize) {
    let (tx, rx) = mpsc::sync_channel::<Vec<usize>>(16);
    let consumer = std::thread::spawn(move || {
        for batch in rx {
            for p in batch {
                // SAFETY: allocated by `a` with this layout in the producer.
                unsafe { a.dealloc(p as *mut u8, layout(64)) };
            }
        }
    });
    let mut sent = 0;
    while sent < objects {
        let mut batch = Vec::with_capacity(256);
        for _ in 0..256 {
            // SAFETY: non-zero size.
            let p = unsafe { a.alloc(layout(64)) };
            unsafe { *p = 1 };
            batch.push(p as usize);
        }
        tx.send(batch).unwrap();
        sent += 256;
    }
    drop(tx);
    consumer.join().unwrap();
}

/// Larson & Krishnan's server: each thread owns slots of objects of 8-1000
/// bytes and replaces random ones; every round it hands half its slots to
/// the next thread, which frees those objects as it replaces them.
fn larson<A: GlobalAlloc + Sync>(a: &'static A, threads: usize, rounds: usize) {
    const SLOTS: usize = 2000;
    const STEPS: usize = 5000;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::channel::<Vec<(usize, usize)>>()).unzip();
    let handles: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(t, rx)| {
            let tx = txs[(t + 1) % threads].clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9 + t as u64);
                let mut slots: Vec<(usize, usize)> = (0..SLOTS)
                    .map(|_| {
                        let s = 8 + rng.below(993);
                        // SAFETY: non-zero size.
                        (unsafe { a.alloc(layout(s)) } as usize, s)
                    })
                    .collect();
                for _ in 0..rounds {
                    for _ in 0..STEPS {
                        let i = rng.below(SLOTS);
                        let (p, s) = slots[i];
                        // SAFETY: allocated by `a` (here or in another thread).
                        unsafe { a.dealloc(p as *mut u8, layout(s)) };
                        let s = 8 + rng.below(993);
                        // SAFETY: non-zero size.
                        let p = unsafe { a.alloc(layout(s)) };
                        unsafe { *p = 1 };
                        slots[i] = (p as usize, s);
                    }
                    tx.send(slots.split_off(SLOTS / 2)).unwrap();
                    slots.extend(rx.recv().unwrap());
                }
                for (p, s) in slots {
                    // SAFETY: allocated by `a`.
                    unsafe { a.dealloc(p as *mut u8, layout(s)) };
                }
            })
        })
        .collect();
    drop(txs);
    for h in handles {
        h.join().unwrap();
    }
}

fn pairs<A: GlobalAlloc>(a: &A, n: usize) {
    for _ in 0..n {
        // SAFETY: non-zero size; freed at once.
        unsafe {
            let p = a.alloc(layout(16));
            black_box(p);
            a.dealloc(p, layout(16));
        }
    }
}

/// Runs `f` once per allocator inside one benchmark group.
macro_rules! side_by_side {
    ($c:expr, $name:expr, |$a:ident| $body:expr) => {{
        let mut g = $c.benchmark_group($name);
        g.bench_function(BenchmarkId::new($name, "system"), |b| {
            let $a: &'static System = &System;
            b.iter(|| $body)
        });
        g.bench_function(BenchmarkId::new($name, "scavalloc"), |b| {
            let $a: &'static Scavalloc = &SCAVALLOC;
            b.iter(|| $body)
        });
        g.finish();
    }};
}

fn benches(c: &mut Criterion) {
    side_by_side!(c, "churn_small", |a| working_set(a, 10_000, 100_000, 7, small_size));
    side_by_side!(c, "mixed_8B_64KiB", |a| working_set(a, 2_000, 50_000, 11, mixed_size));
    side_by_side!(c, "producer_consumer", |a| producer_consumer(a, 200_000));
    side_by_side!(c, "larson_4_threads", |a| larson(a, 4, 4));
    side_by_side!(c, "pair_16B_x1000", |a| pairs(a, 1000));
}

fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<usize>()
        .unwrap()
        * 1024
}

/// The larson run's peak RSS and time with each allocator, each in a child
/// process.
fn rss_report(smoke: bool) {
    for which in ["system", "scavalloc"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env("SCAVALLOC_BENCH_CHILD", which)
            .env("SCAVALLOC_BENCH_SMOKE", if smoke { "1" } else { "0" })
            .output()
            .unwrap();
        assert!(out.status.success(), "{which}: {}", String::from_utf8_lossy(&out.stderr));
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn child(which: &str) {
    let rounds = if std::env::var("SCAVALLOC_BENCH_SMOKE").as_deref() == Ok("1") { 1 } else { 40 };
    let start = Instant::now();
    match which {
        "system" => larson(&System, 4, rounds),
        _ => larson(&SCAVALLOC, 4, rounds),
    }
    let t = start.elapsed();
    println!("larson peak RSS {which:>9}: {:>6.1} MiB in {:.2?}", peak_rss() as f64 / (1 << 20) as f64, t);
}

fn main() {
    if let Ok(which) = std::env::var("SCAVALLOC_BENCH_CHILD") {
        child(&which);
        return;
    }
    // `cargo test --benches` runs this with `--bench` absent: one quick pass.
    let smoke = !std::env::args().any(|a| a == "--bench");
    rss_report(smoke);
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
}
