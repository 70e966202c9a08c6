//! scavalloc against the system allocator (glibc), side by side in one run.
//!
//! Both allocators are called through the `GlobalAlloc` trait by the same
//! generic workload functions, on the same inputs (the same seeded random
//! sequences). This binary's own global allocator stays the system one, so
//! the harness (criterion, the threads, the channels, the slot arrays)
//! biases neither side: it costs both the same.
//!
//! Each workload is one group entry per allocator, `alloc/<workload>/system`
//! and `alloc/<workload>/scavalloc`, so their medians print one under the
//! other:
//!
//! * `churn_small`: a working set of 10,000 live objects of 16-256 bytes;
//!   each step frees a random one and allocates a replacement of a random
//!   size, and writes to it. One iteration is 1,000 steps; the working set
//!   lives across iterations (steady state), filled and drained outside the
//!   timing.
//! * `mixed_8B_64KiB`: the same with 2,000 live objects of log-uniform sizes
//!   from 8 bytes to 64 KiB (first and last byte written).
//! * `producer_consumer`: one thread allocates 200,000 objects of 64 bytes
//!   and passes them through a single-producer single-consumer ring (plain
//!   atomics, published 64 at a time, so the hand-over costs a store per
//!   object) to a second thread that reads and frees them, the two threads
//!   pinned to two different CPUs. One iteration is the whole run, thread
//!   start and join included.
//! * `larson_4_threads`: Larson & Krishnan's server simulation. Four
//!   threads each own 5,000 slots of objects of 8-1000 bytes and replace
//!   random slots (free, then allocate and write); after every 5,000
//!   replacements a thread hands half of its slots to the next thread in a
//!   ring and takes over the half handed to it, so objects are freed by
//!   threads that did not allocate them. One iteration is 4 threads x 10
//!   rounds (200,000 replacements), thread start, fill, drain and join
//!   included: the rounds outweigh the start-up and wind-down.
//! * `pair_16B`: one `alloc` + `dealloc` of a 16-byte object: the median is
//!   the time of one pair, the fast path.
//!
//! Peak RSS needs one process per allocator (RSS is per process); the
//! same larson workload with the whole process on one allocator is
//! `examples/larson_rss.rs`:
//!
//! ```text
//! cargo run --release --example larson_rss -- system
//! cargo run --release --example larson_rss -- scavalloc
//! ```
//!
//! `cargo bench --bench alloc` takes under a minute on two cores;
//! `cargo test --benches` runs each workload once.

use std::alloc::{GlobalAlloc, System};
use std::hint::black_box;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use scavalloc::Scavalloc;

#[path = "../examples/support/workload.rs"]
mod workload;
use workload::{alloc_touch, larson, layout, Rng, LARSON_STEPS, LARSON_THREADS};

type Group<'a> = BenchmarkGroup<'a, WallTime>;

// ---------------------------------------------------------------------------
// Working sets: churn_small and mixed_8B_64KiB.

fn small_size(rng: &mut Rng) -> usize {
    16 + rng.below(241)
}

/// Log-uniform from 8 bytes to 64 KiB: a uniform power of two from 2^3 to
/// 2^15, then uniform up to twice that.
fn mixed_size(rng: &mut Rng) -> usize {
    let bits = 3 + rng.below(13);
    (1 << bits) + rng.below(1 << bits)
}

/// Live objects and the random sequence that replaces them.
struct WorkingSet<'a, A: GlobalAlloc, S: Fn(&mut Rng) -> usize> {
    a: &'a A,
    rng: Rng,
    /// A function item (not a pointer): inlined into the loop.
    size: S,
    touch_last: bool,
    slots: Vec<(*mut u8, usize)>,
}

impl<'a, A: GlobalAlloc, S: Fn(&mut Rng) -> usize> WorkingSet<'a, A, S> {
    fn new(a: &'a A, live: usize, seed: u64, size: S, touch_last: bool) -> Self {
        let mut ws = WorkingSet { a, rng: Rng(seed), size, touch_last, slots: Vec::with_capacity(live) };
        for _ in 0..live {
            let p = ws.new_object();
            ws.slots.push(p);
        }
        ws
    }

    #[inline(always)]
    fn new_object(&mut self) -> (*mut u8, usize) {
        let s = (self.size)(&mut self.rng);
        // SAFETY: every size function returns at least 8.
        let p = unsafe { alloc_touch(self.a, s) };
        if self.touch_last {
            // SAFETY: `p` is valid for `s` bytes.
            unsafe { ptr::write_volatile(p.add(s - 1), 2) };
        }
        (p, s)
    }

    /// Replaces `n` random objects.
    fn steps(&mut self, n: usize) {
        for _ in 0..n {
            let i = self.rng.below(self.slots.len());
            let (p, s) = self.slots[i];
            // SAFETY: allocated by `self.a` with this layout, freed once.
            unsafe { self.a.dealloc(p, layout(s)) };
            self.slots[i] = self.new_object();
        }
    }
}

impl<A: GlobalAlloc, S: Fn(&mut Rng) -> usize> Drop for WorkingSet<'_, A, S> {
    fn drop(&mut self) {
        for &(p, s) in &self.slots {
            // SAFETY: allocated by `self.a` with this layout, freed once.
            unsafe { self.a.dealloc(p, layout(s)) };
        }
    }
}

const WS_STEPS: usize = 1000;

#[allow(clippy::too_many_arguments)]
fn working_set<A: GlobalAlloc>(
    g: &mut Group,
    name: &str,
    which: &str,
    a: &A,
    live: usize,
    seed: u64,
    size: impl Fn(&mut Rng) -> usize,
    touch_last: bool,
) {
    let mut ws = WorkingSet::new(a, live, seed, size, touch_last);
    g.bench_function(BenchmarkId::new(name, which), |b| b.iter(|| ws.steps(WS_STEPS)));
}

fn churn_small(g: &mut Group) {
    g.throughput(Throughput::Elements(WS_STEPS as u64));
    g.sampling_mode(SamplingMode::Auto);
    working_set(g, "churn_small", "system", &System, 10_000, 7, small_size, false);
    working_set(g, "churn_small", "scavalloc", &Scavalloc, 10_000, 7, small_size, false);
}

fn mixed(g: &mut Group) {
    g.throughput(Throughput::Elements(WS_STEPS as u64));
    g.sampling_mode(SamplingMode::Auto);
    working_set(g, "mixed_8B_64KiB", "system", &System, 2_000, 11, mixed_size, true);
    working_set(g, "mixed_8B_64KiB", "scavalloc", &Scavalloc, 2_000, 11, mixed_size, true);
}

// ---------------------------------------------------------------------------
// Producer/consumer.

/// Keeps a hot atomic on its own cache lines.
#[repr(align(128))]
struct Padded<T>(T);

const RING_CAP: usize = 4096;
const PUBLISH_EVERY: usize = 64;

/// A bounded single-producer single-consumer ring of addresses. Each side
/// keeps its own index privately and publishes it in batches; it rereads
/// the other side's index only when it seems to have run out.
struct Ring {
    slots: Box<[AtomicUsize]>,
    /// Written by the consumer: everything before it has been taken.
    head: Padded<AtomicUsize>,
    /// Written by the producer: everything before it has been put.
    tail: Padded<AtomicUsize>,
    done: Padded<AtomicBool>,
}

/// Spins briefly, then yields: on a busy two-core machine the other side
/// may need this core.
struct Backoff(u32);

impl Backoff {
    fn wait(&mut self) {
        if self.0 < 64 {
            std::hint::spin_loop();
            self.0 += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

impl Ring {
    fn new() -> Self {
        Ring {
            slots: (0..RING_CAP).map(|_| AtomicUsize::new(0)).collect(),
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            done: Padded(AtomicBool::new(false)),
        }
    }
}

const PC_OBJECTS: usize = 200_000;
const PC_SIZE: usize = 64;

/// Two CPUs this process may run on, if it may run on two.
fn two_cpus() -> Option<(usize, usize)> {
    static CPUS: OnceLock<Option<(usize, usize)>> = OnceLock::new();
    *CPUS.get_or_init(|| {
        // SAFETY: a zeroed `cpu_set_t` is an empty set; the kernel writes
        // within its size.
        let set = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return None;
            }
            set
        };
        // SAFETY: `cpu` is below `CPU_SETSIZE`.
        let mut cpus = (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) });
        Some((cpus.next()?, cpus.next()?))
    })
}

/// Keeps the calling thread on `cpu`.
fn pin(cpu: usize) {
    // SAFETY: as in `two_cpus`; `cpu` came from the allowed set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// One thread allocates `objects` objects and passes them through the ring
/// to another, which reads each and frees it. The two threads are pinned
/// to two different CPUs when there are two: the case measured is the
/// cross-core one. (Left to the scheduler, the pair sometimes shared one
/// core, where glibc's cross-thread free costs about a fifteenth as much,
/// and the figure jumped between the two cases from run to run.)
fn producer_consumer<A: GlobalAlloc + Sync>(a: &A, objects: usize) {
    let ring = Ring::new();
    let cpus = two_cpus();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            if let Some((_, cpu)) = cpus {
                pin(cpu);
            }
            let mut head = 0;
            let mut sum = 0u64;
            let mut backoff = Backoff(0);
            loop {
                let tail = ring.tail.0.load(Ordering::Acquire);
                if tail == head {
                    if ring.done.0.load(Ordering::Acquire) && ring.tail.0.load(Ordering::Acquire) == head {
                        break;
                    }
                    backoff.wait();
                    continue;
                }
                backoff = Backoff(0);
                for i in head..tail {
                    let p = ring.slots[i % RING_CAP].load(Ordering::Relaxed) as *mut u8;
                    // SAFETY: the producer allocated `p` with this layout,
                    // wrote its first byte, and gave it up to us.
                    unsafe {
                        sum += u64::from(ptr::read_volatile(p));
                        a.dealloc(p, layout(PC_SIZE));
                    }
                }
                head = tail;
                ring.head.0.store(head, Ordering::Release);
            }
            black_box(sum);
        });

        scope.spawn(|| {
            if let Some((cpu, _)) = cpus {
                pin(cpu);
            }
            let mut tail = 0;
            let mut head = 0;
            for _ in 0..objects {
                if tail - head == RING_CAP {
                    ring.tail.0.store(tail, Ordering::Release);
                    let mut backoff = Backoff(0);
                    loop {
                        head = ring.head.0.load(Ordering::Acquire);
                        if tail - head < RING_CAP {
                            break;
                        }
                        backoff.wait();
                    }
                }
                // SAFETY: non-zero size.
                let p = unsafe { alloc_touch(a, PC_SIZE) };
                ring.slots[tail % RING_CAP].store(p as usize, Ordering::Relaxed);
                tail += 1;
                if tail % PUBLISH_EVERY == 0 {
                    ring.tail.0.store(tail, Ordering::Release);
                }
            }
            ring.tail.0.store(tail, Ordering::Release);
            ring.done.0.store(true, Ordering::Release);
        });
    });
}

fn producer_consumer_bench(g: &mut Group) {
    g.throughput(Throughput::Elements(PC_OBJECTS as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function(BenchmarkId::new("producer_consumer", "system"), |b| {
        b.iter(|| producer_consumer(&System, PC_OBJECTS))
    });
    g.bench_function(BenchmarkId::new("producer_consumer", "scavalloc"), |b| {
        b.iter(|| producer_consumer(&Scavalloc, PC_OBJECTS))
    });
}

// ---------------------------------------------------------------------------
// Larson (the workload is in examples/support/workload.rs).

const LARSON_ROUNDS: usize = 10;

fn larson_bench(g: &mut Group) {
    let replacements = LARSON_THREADS * LARSON_ROUNDS * LARSON_STEPS;
    g.throughput(Throughput::Elements(replacements as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function(BenchmarkId::new("larson_4_threads", "system"), |b| {
        b.iter(|| larson(&System, LARSON_THREADS, LARSON_ROUNDS))
    });
    g.bench_function(BenchmarkId::new("larson_4_threads", "scavalloc"), |b| {
        b.iter(|| larson(&Scavalloc, LARSON_THREADS, LARSON_ROUNDS))
    });
}

// ---------------------------------------------------------------------------
// The fast path.

fn pair<A: GlobalAlloc>(a: &A) {
    let l = layout(16);
    // SAFETY: non-zero size; the object escapes (so the pair cannot be
    // optimised away) and is freed once with the same layout.
    unsafe {
        let p = a.alloc(l);
        a.dealloc(black_box(p), l);
    }
}

fn pair_bench(g: &mut Group) {
    g.throughput(Throughput::Elements(1));
    g.sampling_mode(SamplingMode::Auto);
    g.bench_function(BenchmarkId::new("pair_16B", "system"), |b| b.iter(|| pair(&System)));
    g.bench_function(BenchmarkId::new("pair_16B", "scavalloc"), |b| b.iter(|| pair(&Scavalloc)));
}

fn alloc_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc");
    churn_small(&mut g);
    mixed(&mut g);
    producer_consumer_bench(&mut g);
    larson_bench(&mut g);
    pair_bench(&mut g);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = alloc_benches
}
criterion_main!(benches);
