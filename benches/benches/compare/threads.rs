//! The many-thread workloads, each at 2 threads and oversubscribed at 8
//! and 32 on however few cores the machine has: passive and active false
//! sharing, a Larson server whose threads exit and are replaced, producer
//! and consumer threads, and glibc's malloc micro-benchmark style runs.
//! The same workloads exist as C programs (`benches/c/`), run under
//! `LD_PRELOAD` with the same sizes (`Sizes`, passed on their command
//! line), so the Rust and the C figures of a workload measure one thing.
//!
//! Every object is written and read through `write_volatile` and
//! `read_volatile`, so no allocation can be deleted as dead. The total work
//! of an iteration is the same at every thread count (divided among the
//! threads), so a time that grows with the threads is what contention and
//! switching cost.

use std::hint::black_box;
use std::ptr;
use std::sync::Barrier;
use std::thread::Scope;

use criterion::Bencher;

use crate::workloads::{alloc_touch, free, producer_consumer_pairs, Rng, Scale};

/// The sizes of every workload here, for one scale: what the Rust
/// workloads use and what the C programs get as arguments.
pub struct Sizes {
    /// False sharing: object size, total malloc/write/free rounds (split
    /// among the threads), writes of the whole object per round.
    pub fs_object: usize,
    pub fs_rounds: usize,
    pub fs_repetitions: usize,
    /// Larson with churn: live objects in all, replacements in all, and
    /// how many threads in turn each worker slot sees.
    pub larson_live: usize,
    pub larson_steps: usize,
    pub larson_generations: usize,
    /// Producer/consumer: objects in all (split among the pairs).
    pub pc_objects: usize,
    /// Malloc micro-benchmark: replacements in all (split among the
    /// threads) and each thread's working set (a power of two).
    pub mt_ops: usize,
    pub mt_working_set: usize,
    /// The simple micro-benchmark: blocks per size and rounds.
    pub ms_blocks: usize,
    pub ms_rounds: usize,
}

impl Sizes {
    pub fn of(scale: Scale) -> Sizes {
        match scale {
            Scale::Full => Sizes {
                fs_object: 8,
                fs_rounds: 2000,
                fs_repetitions: 500,
                larson_live: 8000,
                larson_steps: 400_000,
                larson_generations: 8,
                pc_objects: 200_000,
                mt_ops: 1_000_000,
                mt_working_set: 1024,
                ms_blocks: 1000,
                ms_rounds: 50,
            },
            Scale::Smoke => Sizes {
                fs_object: 8,
                fs_rounds: 64,
                fs_repetitions: 20,
                larson_live: 512,
                larson_steps: 8192,
                larson_generations: 2,
                pc_objects: 4096,
                mt_ops: 16_384,
                mt_working_set: 128,
                ms_blocks: 100,
                ms_rounds: 2,
            },
        }
    }
}

/// Writes every byte of the object `repetitions` times and reads it back,
/// as the classic cache-scratch benchmark does: where two threads' objects
/// share a cache line, every write moves the line between cores.
///
/// # Safety
///
/// `p` is valid for `size` bytes and used by this thread alone.
#[inline(always)]
unsafe fn scratch(p: *mut u8, size: usize, repetitions: usize) -> u64 {
    let mut sum = 0u64;
    for _ in 0..repetitions {
        for k in 0..size {
            // SAFETY: `k < size`, within the object (the caller's promise).
            unsafe {
                ptr::write_volatile(p.add(k), k as u8);
                sum += u64::from(ptr::read_volatile(p.add(k)));
            }
        }
    }
    sum
}

/// One round of false sharing. Passive: this thread allocates one object
/// per worker, side by side, and hands one to each; each worker frees its
/// object before its own malloc/write/free rounds, so an allocator that
/// hands a freed object straight back to the freeing thread gives
/// neighbouring workers one cache line. Active: no hand-over; an allocator
/// that carves one span's neighbouring objects out to different threads
/// does the same by itself.
fn false_sharing_run(threads: usize, passive: bool, s: &Sizes) {
    let size = s.fs_object;
    let rounds = s.fs_rounds / threads;
    let handed: Vec<usize> =
        if passive { (0..threads).map(|_| alloc_touch(size) as usize).collect() } else { Vec::new() };
    let start = Barrier::new(threads);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let first = handed.get(t).copied();
            let start = &start;
            scope.spawn(move || {
                if let Some(p) = first {
                    // SAFETY: allocated above with `alloc_touch(size)` and
                    // handed to this thread alone.
                    unsafe { free(p as *mut u8, size) };
                }
                start.wait();
                let mut sum = 0;
                for _ in 0..rounds {
                    let p = alloc_touch(size);
                    // SAFETY: `p` is this thread's, `size` bytes; freed once.
                    unsafe {
                        sum += scratch(p, size, s.fs_repetitions);
                        free(p, size);
                    }
                }
                black_box(sum);
            });
        }
    });
}

pub fn false_sharing_passive<const T: usize>(b: &mut Bencher, scale: Scale) {
    let s = Sizes::of(scale);
    b.iter(|| false_sharing_run(T, true, &s));
}

pub fn false_sharing_active<const T: usize>(b: &mut Bencher, scale: Scale) {
    let s = Sizes::of(scale);
    b.iter(|| false_sharing_run(T, false, &s));
}

/// Larson's server sizes, 8-1000 B.
fn larson_size(rng: &mut Rng) -> usize {
    rng.between(8, 1000)
}

/// One thread of a Larson lane: takes over the objects its predecessor
/// left (allocating them if it is the first), replaces random ones, then
/// starts its successor with them and exits. The successor frees objects
/// that a thread which no longer exists allocated, and a new thread's
/// cache starts empty, as in a server whose worker threads come and go.
fn larson_lane<'scope>(
    scope: &'scope Scope<'scope, '_>,
    mut rng: Rng,
    mut objects: Vec<(usize, usize)>,
    live: usize,
    steps: usize,
    generations_left: usize,
) {
    if objects.is_empty() {
        objects = (0..live)
            .map(|_| {
                let s = larson_size(&mut rng);
                (alloc_touch(s) as usize, s)
            })
            .collect();
    }
    for _ in 0..steps {
        let i = rng.below(live);
        let (p, s) = objects[i];
        // SAFETY: from `alloc_touch(s)` in this lane, freed once (the slot
        // is overwritten at once).
        unsafe { free(p as *mut u8, s) };
        let s = larson_size(&mut rng);
        objects[i] = (alloc_touch(s) as usize, s);
    }
    if generations_left > 1 {
        scope.spawn(move || larson_lane(scope, rng, objects, live, steps, generations_left - 1));
    } else {
        for (p, s) in objects {
            // SAFETY: from `alloc_touch(s)`, freed once.
            unsafe { free(p as *mut u8, s) };
        }
    }
}

fn larson_churn_run(threads: usize, s: &Sizes) {
    let live = s.larson_live / threads;
    let steps = s.larson_steps / (threads * s.larson_generations);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
            let generations = s.larson_generations;
            scope.spawn(move || larson_lane(scope, rng, Vec::new(), live, steps, generations));
        }
    });
}

pub fn larson_churn<const T: usize>(b: &mut Bencher, scale: Scale) {
    let s = Sizes::of(scale);
    b.iter(|| larson_churn_run(T, &s));
}

pub fn producer_consumer_threads<const T: usize>(b: &mut Bencher, scale: Scale) {
    let s = Sizes::of(scale);
    let pairs = T / 2;
    b.iter(|| producer_consumer_pairs(pairs, s.pc_objects / pairs));
}

/// The sizes of the malloc micro-benchmark, drawn uniformly from this
/// table: mostly small, as programs allocate, with a tail to 32 KiB (the
/// same table is in `benches/c/malloc_bench.c`).
pub const MT_SIZES: [usize; 32] = [
    8, 8, 16, 16, 16, 24, 24, 32, 32, 32, 40, 48, 48, 64, 64, 80, 96, 112, 128, 128, 160, 192, 256, 320, 384, 512, 768,
    1024, 2048, 4096, 8192, 32768,
];

/// glibc's bench-malloc-thread style: each thread keeps a working set of
/// slots and replaces a random one per step by an object of a random size
/// from `MT_SIZES`.
fn malloc_thread_run(threads: usize, s: &Sizes) {
    let ops = s.mt_ops / threads;
    let ws = s.mt_working_set;
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (t as u64 + 1));
                let mut slots: Vec<(usize, usize)> = vec![(0, 0); ws];
                for _ in 0..ops {
                    let r = rng.next();
                    let i = (r as usize) & (ws - 1);
                    let size = MT_SIZES[(r >> 32) as usize % MT_SIZES.len()];
                    let (p, old) = slots[i];
                    if p != 0 {
                        // SAFETY: from `alloc_touch(old)`, freed once.
                        unsafe { free(p as *mut u8, old) };
                    }
                    slots[i] = (alloc_touch(size) as usize, size);
                }
                for (p, size) in slots {
                    if p != 0 {
                        // SAFETY: from `alloc_touch(size)`, freed once.
                        unsafe { free(p as *mut u8, size) };
                    }
                }
            });
        }
    });
}

pub fn malloc_thread<const T: usize>(b: &mut Bencher, scale: Scale) {
    let s = Sizes::of(scale);
    b.iter(|| malloc_thread_run(T, &s));
}

/// The block sizes of the simple micro-benchmark (the same as
/// `ms_sizes` in `benches/c/malloc_bench.c`).
pub const MS_SIZES: [usize; 6] = [16, 32, 64, 128, 256, 512];

/// glibc's bench-malloc-simple style, one thread: for each size, allocate
/// a run of blocks and free them all, in allocation order, then in reverse
/// order, then in an interleaved order.
fn malloc_simple_run(s: &Sizes, blocks: &mut [usize]) {
    for _ in 0..s.ms_rounds {
        for &size in &MS_SIZES {
            for order in 0..3 {
                for b in blocks.iter_mut() {
                    *b = alloc_touch(size) as usize;
                }
                let n = blocks.len();
                for k in 0..n {
                    let i = match order {
                        0 => k,
                        1 => n - 1 - k,
                        _ => (k * 2) % n + (k * 2) / n,
                    };
                    // SAFETY: every index is visited once (the interleaved
                    // order visits the evens, then the odds), each from
                    // `alloc_touch(size)`.
                    unsafe { free(blocks[i] as *mut u8, size) };
                }
            }
        }
    }
}

pub fn malloc_simple(b: &mut Bencher, scale: Scale) {
    let s = Sizes::of(scale);
    let mut blocks = vec![0usize; s.ms_blocks];
    b.iter(|| malloc_simple_run(&s, &mut blocks));
}
