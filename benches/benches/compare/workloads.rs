//! The throughput workloads. Each runs on the process's global allocator
//! (whichever `dispatch` chose), through raw `std::alloc` calls or through
//! the std collections and `serde_json`, as real programs use it. One
//! criterion iteration is a fixed amount of work, described by `per_iter`;
//! state that a real program would keep (a working set, a map) lives
//! across iterations, so the steady state is what is measured.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use criterion::{Bencher, SamplingMode};

use crate::threads;

/// Full size, or the smoke size CI runs to check that the harness works.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Full,
    Smoke,
}

impl Scale {
    /// `full` at full size, `smoke` in a smoke run.
    pub fn pick(self, full: usize, smoke: usize) -> usize {
        match self {
            Scale::Full => full,
            Scale::Smoke => smoke,
        }
    }
}

/// A throughput workload as the driver and the child see it.
pub struct Workload {
    pub name: &'static str,
    /// What one iteration is, for the report.
    pub per_iter: &'static str,
    /// Flat for iterations that start threads (each sample the same number
    /// of iterations); linear otherwise.
    pub sampling: SamplingMode,
    pub bench: fn(&mut Bencher, Scale),
}

pub const ALL: &[Workload] = &[
    Workload {
        name: "churn_small",
        per_iter: "1,000 replacements in a working set of 10,000 objects of 16-256 B",
        sampling: SamplingMode::Linear,
        bench: churn_small,
    },
    Workload {
        name: "mixed_8B_64KiB",
        per_iter: "1,000 replacements in a working set of 2,000 objects of 8 B-64 KiB (log-uniform)",
        sampling: SamplingMode::Linear,
        bench: mixed,
    },
    Workload {
        name: "producer_consumer",
        per_iter: "200,000 objects of 64 B allocated on one core, freed on the other (2 threads, pinned)",
        sampling: SamplingMode::Flat,
        bench: producer_consumer,
    },
    Workload {
        name: "larson_4_threads",
        per_iter: "4 threads x 50,000 replacements of 8-1000 B objects, half handed on every 5,000",
        sampling: SamplingMode::Flat,
        bench: larson,
    },
    Workload {
        name: "realloc_growth",
        per_iter:
            "512 buffers grown by appends of 1-256 B to 64 B-64 KiB (half exact, half Vec-doubling), then dropped",
        sampling: SamplingMode::Flat,
        bench: realloc_growth,
    },
    Workload {
        name: "json_tree",
        per_iter: "parse a 2.3 MB JSON document into a serde_json::Value, edit it, serialise it, drop both",
        sampling: SamplingMode::Flat,
        bench: json_tree,
    },
    Workload {
        name: "btreemap_mix",
        per_iter: "10,000 inserts/removes of String values in a BTreeMap of about 100,000 entries",
        sampling: SamplingMode::Linear,
        bench: btreemap_mix,
    },
    // The many-thread workloads (`threads.rs`), with the C programs'
    // counterparts; full sizes in `threads::Sizes`.
    Workload {
        name: "false_sharing_passive_2t",
        per_iter: "2 threads free an 8 B object handed to them by one allocating thread, then 1,000 rounds of malloc, 500 writes, free",
        sampling: SamplingMode::Flat,
        bench: threads::false_sharing_passive::<2>,
    },
    Workload {
        name: "false_sharing_passive_8t",
        per_iter: "as with 2 threads, 8 threads (250 rounds each)",
        sampling: SamplingMode::Flat,
        bench: threads::false_sharing_passive::<8>,
    },
    Workload {
        name: "false_sharing_passive_32t",
        per_iter: "as with 2 threads, 32 threads (62 rounds each)",
        sampling: SamplingMode::Flat,
        bench: threads::false_sharing_passive::<32>,
    },
    Workload {
        name: "false_sharing_active_2t",
        per_iter: "2 threads x 1,000 rounds of malloc of 8 B, 500 writes, free",
        sampling: SamplingMode::Flat,
        bench: threads::false_sharing_active::<2>,
    },
    Workload {
        name: "false_sharing_active_8t",
        per_iter: "as with 2 threads, 8 threads (250 rounds each)",
        sampling: SamplingMode::Flat,
        bench: threads::false_sharing_active::<8>,
    },
    Workload {
        name: "false_sharing_active_32t",
        per_iter: "as with 2 threads, 32 threads (62 rounds each)",
        sampling: SamplingMode::Flat,
        bench: threads::false_sharing_active::<32>,
    },
    Workload {
        name: "larson_churn_2t",
        per_iter: "2 lanes of 8 threads in turn, each thread 25,000 replacements of 8-1000 B objects (4,000 live per lane), \
                   then handing them to its successor and exiting",
        sampling: SamplingMode::Flat,
        bench: threads::larson_churn::<2>,
    },
    Workload {
        name: "larson_churn_8t",
        per_iter: "as with 2 lanes, 8 lanes (6,250 replacements per thread, 1,000 live per lane)",
        sampling: SamplingMode::Flat,
        bench: threads::larson_churn::<8>,
    },
    Workload {
        name: "larson_churn_32t",
        per_iter: "as with 2 lanes, 32 lanes (1,562 replacements per thread, 250 live per lane)",
        sampling: SamplingMode::Flat,
        bench: threads::larson_churn::<32>,
    },
    Workload {
        name: "producer_consumer_8t",
        per_iter: "4 producer/consumer pairs, 200,000 objects of 64 B in all, threads unpinned",
        sampling: SamplingMode::Flat,
        bench: threads::producer_consumer_threads::<8>,
    },
    Workload {
        name: "producer_consumer_32t",
        per_iter: "16 producer/consumer pairs, 200,000 objects of 64 B in all, threads unpinned",
        sampling: SamplingMode::Flat,
        bench: threads::producer_consumer_threads::<32>,
    },
    Workload {
        name: "malloc_simple",
        per_iter: "one thread, 50 rounds of: for 6 sizes of 16-512 B, 1,000 blocks allocated and freed, in order, reversed, interleaved",
        sampling: SamplingMode::Flat,
        bench: threads::malloc_simple,
    },
    Workload {
        name: "malloc_thread_1t",
        per_iter: "1,000,000 replacements in a working set of 1,024 slots, sizes from a table of 8 B-32 KiB",
        sampling: SamplingMode::Flat,
        bench: threads::malloc_thread::<1>,
    },
    Workload {
        name: "malloc_thread_2t",
        per_iter: "as with 1 thread, split among 2 threads (each its own working set)",
        sampling: SamplingMode::Flat,
        bench: threads::malloc_thread::<2>,
    },
    Workload {
        name: "malloc_thread_8t",
        per_iter: "as with 1 thread, split among 8 threads",
        sampling: SamplingMode::Flat,
        bench: threads::malloc_thread::<8>,
    },
    Workload {
        name: "malloc_thread_32t",
        per_iter: "as with 1 thread, split among 32 threads",
        sampling: SamplingMode::Flat,
        bench: threads::malloc_thread::<32>,
    },
];

// ---------------------------------------------------------------------------
// Shared pieces.

/// xorshift64: a few cycles a number, the same sequence for every allocator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` for `n < 2^32`, by multiplication (no division).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}

/// Objects are 8-aligned, like most Rust values; every allocator here
/// serves that with its plain `malloc` path.
pub fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Allocates `size` bytes and writes the first byte (a new object is used).
pub fn alloc_touch(size: usize) -> *mut u8 {
    let l = layout(size);
    // SAFETY: every size used here is at least 8.
    let p = unsafe { alloc(l) };
    if p.is_null() {
        handle_alloc_error(l);
    }
    // SAFETY: `p` is valid for `size >= 1` bytes.
    unsafe { ptr::write_volatile(p, 1) };
    p
}

/// Frees what `alloc_touch(size)` returned.
///
/// # Safety
///
/// `p` came from `alloc_touch(size)` and is freed once.
pub unsafe fn free(p: *mut u8, size: usize) {
    // SAFETY: the caller's promise.
    unsafe { dealloc(p, layout(size)) }
}

// ---------------------------------------------------------------------------
// Working sets: churn_small and mixed_8B_64KiB.

/// Live objects and the random sequence that replaces them.
struct WorkingSet<S: Fn(&mut Rng) -> usize> {
    rng: Rng,
    /// A function item (not a pointer): inlined into the loop.
    size: S,
    touch_last: bool,
    slots: Vec<(*mut u8, usize)>,
}

impl<S: Fn(&mut Rng) -> usize> WorkingSet<S> {
    fn new(live: usize, seed: u64, size: S, touch_last: bool) -> Self {
        let mut ws = WorkingSet { rng: Rng(seed), size, touch_last, slots: Vec::with_capacity(live) };
        for _ in 0..live {
            let p = ws.new_object();
            ws.slots.push(p);
        }
        ws
    }

    #[inline(always)]
    fn new_object(&mut self) -> (*mut u8, usize) {
        let s = (self.size)(&mut self.rng);
        let p = alloc_touch(s);
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
            // SAFETY: from `alloc_touch(s)`, freed once (the slot is
            // overwritten at once).
            unsafe { free(p, s) };
            self.slots[i] = self.new_object();
        }
    }
}

impl<S: Fn(&mut Rng) -> usize> Drop for WorkingSet<S> {
    fn drop(&mut self) {
        for &(p, s) in &self.slots {
            // SAFETY: from `alloc_touch(s)`, freed once.
            unsafe { free(p, s) };
        }
    }
}

const WS_STEPS: usize = 1000;

fn churn_small(b: &mut Bencher, scale: Scale) {
    let mut ws = WorkingSet::new(scale.pick(10_000, 500), 7, |r: &mut Rng| r.between(16, 256), false);
    b.iter(|| ws.steps(WS_STEPS));
}

/// Log-uniform from 8 bytes to 64 KiB: a uniform power of two from 2^3 to
/// 2^15, then uniform up to twice that.
fn mixed_size(rng: &mut Rng) -> usize {
    let bits = 3 + rng.below(13);
    (1 << bits) + rng.below(1 << bits)
}

fn mixed(b: &mut Bencher, scale: Scale) {
    let mut ws = WorkingSet::new(scale.pick(2_000, 200), 11, mixed_size, true);
    b.iter(|| ws.steps(WS_STEPS));
}

// ---------------------------------------------------------------------------
// Producer/consumer.

/// Keeps a hot atomic on its own cache lines.
#[repr(align(128))]
struct Padded<T>(T);

const RING_CAP: usize = 4096;
const PUBLISH_EVERY: usize = 64;
const PC_SIZE: usize = 64;

/// A bounded single-producer single-consumer ring of addresses. Each side
/// keeps its own index privately and publishes it in batches, so the
/// hand-over costs about a store per object and the allocator dominates.
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

/// Two CPUs this process may run on, if it may run on two.
fn two_cpus() -> Option<(usize, usize)> {
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

impl Ring {
    fn new() -> Ring {
        Ring {
            slots: (0..RING_CAP).map(|_| AtomicUsize::new(0)).collect(),
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            done: Padded(AtomicBool::new(false)),
        }
    }

    /// The consumer's side: reads every object put into the ring and frees
    /// it, until the producer is done and the ring is empty.
    fn consume(&self) {
        let mut head = 0;
        let mut sum = 0u64;
        let mut backoff = Backoff(0);
        loop {
            let tail = self.tail.0.load(Ordering::Acquire);
            if tail == head {
                if self.done.0.load(Ordering::Acquire) && self.tail.0.load(Ordering::Acquire) == head {
                    break;
                }
                backoff.wait();
                continue;
            }
            backoff = Backoff(0);
            for i in head..tail {
                let p = self.slots[i % RING_CAP].load(Ordering::Relaxed) as *mut u8;
                // SAFETY: the producer allocated `p` with
                // `alloc_touch(PC_SIZE)`, wrote its first byte, and gave it
                // up to us.
                unsafe {
                    sum += u64::from(ptr::read_volatile(p));
                    free(p, PC_SIZE);
                }
            }
            head = tail;
            self.head.0.store(head, Ordering::Release);
        }
        black_box(sum);
    }

    /// The producer's side: allocates `objects` objects and puts them into
    /// the ring, waiting while it is full.
    fn produce(&self, objects: usize) {
        let mut tail = 0;
        let mut head = 0;
        for _ in 0..objects {
            if tail - head == RING_CAP {
                self.tail.0.store(tail, Ordering::Release);
                let mut backoff = Backoff(0);
                loop {
                    head = self.head.0.load(Ordering::Acquire);
                    if tail - head < RING_CAP {
                        break;
                    }
                    backoff.wait();
                }
            }
            let p = alloc_touch(PC_SIZE);
            self.slots[tail % RING_CAP].store(p as usize, Ordering::Relaxed);
            tail += 1;
            if tail % PUBLISH_EVERY == 0 {
                self.tail.0.store(tail, Ordering::Release);
            }
        }
        self.tail.0.store(tail, Ordering::Release);
        self.done.0.store(true, Ordering::Release);
    }
}

/// One thread allocates `objects` objects and passes them through the ring
/// to another, which reads each and frees it. The two threads are pinned to
/// two different CPUs when there are two: the case measured is the
/// cross-core one. (Left to the scheduler the pair sometimes shares one
/// core, where a cross-thread free is far cheaper for every allocator, and
/// the figure jumps between the two cases from run to run.)
fn producer_consumer_run(objects: usize, cpus: Option<(usize, usize)>) {
    let ring = Ring::new();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            if let Some((_, cpu)) = cpus {
                pin(cpu);
            }
            ring.consume();
        });
        scope.spawn(|| {
            if let Some((cpu, _)) = cpus {
                pin(cpu);
            }
            ring.produce(objects);
        });
    });
}

/// `pairs` producer/consumer pairs at once, each with its own ring and
/// `objects` objects, left to the scheduler: with more threads than cores,
/// an allocating thread and a freeing thread take turns on a core, as in a
/// server whose request threads outnumber its cores.
pub fn producer_consumer_pairs(pairs: usize, objects: usize) {
    let rings: Vec<Ring> = (0..pairs).map(|_| Ring::new()).collect();
    std::thread::scope(|scope| {
        for ring in &rings {
            scope.spawn(|| ring.consume());
            scope.spawn(|| ring.produce(objects));
        }
    });
}

fn producer_consumer(b: &mut Bencher, scale: Scale) {
    let cpus = two_cpus();
    let objects = scale.pick(200_000, 5_000);
    b.iter(|| producer_consumer_run(objects, cpus));
}

// ---------------------------------------------------------------------------
// Larson.

const LARSON_THREADS: usize = 4;

fn larson_size(rng: &mut Rng) -> usize {
    rng.between(8, 1000)
}

/// Larson & Krishnan's server: each thread owns `slots` objects of 8-1000
/// bytes and replaces random ones (free, allocate, write); after every
/// `steps` replacements it hands half of its slots to the next thread in a
/// ring and takes over the half handed to it, so objects are freed by
/// threads that did not allocate them. Thread start, fill, drain and join
/// are included: the rounds outweigh them.
fn larson_run(slots_per_thread: usize, steps: usize, rounds: usize) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..LARSON_THREADS).map(|_| mpsc::channel::<Vec<(usize, usize)>>()).unzip();
    std::thread::scope(|scope| {
        for (t, rx) in rxs.into_iter().enumerate() {
            let tx = txs[(t + 1) % LARSON_THREADS].clone();
            scope.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let mut slots: Vec<(usize, usize)> = (0..slots_per_thread)
                    .map(|_| {
                        let s = larson_size(&mut rng);
                        (alloc_touch(s) as usize, s)
                    })
                    .collect();
                for _ in 0..rounds {
                    for _ in 0..steps {
                        let i = rng.below(slots_per_thread);
                        let (p, s) = slots[i];
                        // SAFETY: from `alloc_touch(s)` (here or in
                        // another thread), freed once.
                        unsafe { free(p as *mut u8, s) };
                        let s = larson_size(&mut rng);
                        slots[i] = (alloc_touch(s) as usize, s);
                    }
                    tx.send(slots.split_off(slots_per_thread / 2)).unwrap();
                    slots.extend(rx.recv().unwrap());
                }
                for (p, s) in slots {
                    // SAFETY: from `alloc_touch(s)`, freed once.
                    unsafe { free(p as *mut u8, s) };
                }
            });
        }
    });
}

fn larson(b: &mut Bencher, scale: Scale) {
    let (slots, steps, rounds) = match scale {
        Scale::Full => (5000, 5000, 10),
        Scale::Smoke => (200, 200, 2),
    };
    b.iter(|| larson_run(slots, steps, rounds));
}

// ---------------------------------------------------------------------------
// Realloc growth.

/// Buffers grow side by side, as a server's per-connection buffers or a
/// parser's strings do: a random buffer gets the next append until every
/// buffer has reached its target size. Even buffers grow exactly (a
/// `reserve_exact` per append, so a realloc per append, as C code growing
/// by `realloc(p, len + n)` does); odd buffers grow as `Vec` does by
/// itself, doubling.
fn realloc_growth_run(buffers: usize, seed: u64) -> usize {
    let mut rng = Rng(seed);
    let targets: Vec<usize> = (0..buffers)
        .map(|_| {
            let bits = 6 + rng.below(10);
            (1 << bits) + rng.below(1 << bits)
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = (0..buffers).map(|_| Vec::new()).collect();
    let mut growing: Vec<usize> = (0..buffers).collect();
    let chunk = [0x5au8; 256];
    while !growing.is_empty() {
        let k = rng.below(growing.len());
        let i = growing[k];
        let n = rng.between(1, 256).min(targets[i] - bufs[i].len());
        let buf = &mut bufs[i];
        if i.is_multiple_of(2) {
            buf.reserve_exact(n);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() == targets[i] {
            growing.swap_remove(k);
        }
    }
    bufs.iter().map(|b| b[b.len() - 1] as usize).sum()
}

fn realloc_growth(b: &mut Bencher, scale: Scale) {
    let buffers = scale.pick(512, 32);
    let mut seed = 3;
    b.iter(|| {
        seed += 1;
        black_box(realloc_growth_run(buffers, seed))
    });
}

// ---------------------------------------------------------------------------
// JSON document tree.

/// A generated document: an array of user records with strings, numbers,
/// nested arrays and objects, like an API response or a config dump.
pub fn json_document(records: usize) -> String {
    let mut rng = Rng(0x1234_5678);
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"];
    let mut doc = String::from("[");
    for id in 0..records {
        if id > 0 {
            doc.push(',');
        }
        let name = format!("{} {}", words[rng.below(10)], words[rng.below(10)]);
        let tags: Vec<String> = (0..rng.between(1, 8)).map(|_| format!("\"{}\"", words[rng.below(10)])).collect();
        let scores: Vec<String> =
            (0..rng.between(2, 12)).map(|_| format!("{}.{}", rng.below(1000), rng.below(100))).collect();
        let bio: Vec<&str> = (0..rng.between(5, 60)).map(|_| words[rng.below(10)]).collect();
        doc += &format!(
            "{{\"id\":{id},\"name\":\"{name}\",\"email\":\"user{id}@example.com\",\"active\":{},\
             \"tags\":[{}],\"scores\":[{}],\
             \"address\":{{\"street\":\"{} street {}\",\"city\":\"{}\",\"zip\":\"{:05}\"}},\
             \"bio\":\"{}\"}}",
            rng.below(2) == 1,
            tags.join(","),
            scores.join(","),
            rng.below(500),
            words[rng.below(10)],
            words[rng.below(10)],
            rng.below(100_000),
            bio.join(" ")
        );
    }
    doc.push(']');
    doc
}

/// Parses the document, adds a field to every record and drops another,
/// serialises the result, and drops both.
fn json_round(doc: &str) -> usize {
    let mut value: serde_json::Value = serde_json::from_str(doc).expect("the generated document parses");
    if let Some(records) = value.as_array_mut() {
        for r in records {
            if let Some(obj) = r.as_object_mut() {
                let score_sum: f64 =
                    obj["scores"].as_array().map_or(0.0, |s| s.iter().filter_map(|v| v.as_f64()).sum());
                obj.insert("score_sum".to_string(), serde_json::json!(score_sum));
                obj.remove("bio");
            }
        }
    }
    serde_json::to_string(&value).expect("a Value serialises").len()
}

fn json_tree(b: &mut Bencher, scale: Scale) {
    let doc = json_document(scale.pick(4000, 50));
    b.iter(|| black_box(json_round(&doc)));
}

// ---------------------------------------------------------------------------
// BTreeMap mix.

/// A map of about `live` entries (keys drawn from `2 * live`, so about half
/// the draws hit), with 8-64-byte `String` values: each step inserts or
/// removes a random key, as an index or a session table does.
struct MapMix {
    rng: Rng,
    keys: usize,
    map: BTreeMap<u64, String>,
}

impl MapMix {
    fn new(live: usize) -> MapMix {
        let mut m = MapMix { rng: Rng(99), keys: 2 * live, map: BTreeMap::new() };
        while m.map.len() < live {
            m.insert();
        }
        m
    }

    fn insert(&mut self) {
        let key = self.rng.below(self.keys) as u64;
        let len = self.rng.between(8, 64);
        let value: String = std::iter::repeat_n('k', len).collect();
        self.map.insert(key, value);
    }

    fn steps(&mut self, n: usize) {
        for _ in 0..n {
            if self.rng.below(2) == 0 {
                self.insert();
            } else {
                let key = self.rng.below(self.keys) as u64;
                black_box(self.map.remove(&key));
            }
        }
    }
}

fn btreemap_mix(b: &mut Bencher, scale: Scale) {
    let mut m = MapMix::new(scale.pick(100_000, 2_000));
    b.iter(|| m.steps(10_000));
}
