//! The allocation-latency workload: how long single allocations and frees
//! take while the allocator gives a burst's memory back, as a server's
//! request threads would see it.
//!
//! A burst of small objects is built and mostly freed (half of it in whole
//! spans, half of it scattered, every tenth object kept), so that a
//! scavenger has both whole runs and pages inside spans to release. Then
//! two threads allocate and free at a steady rate: batches of a few
//! hundred operations, a millisecond's sleep between batches (the CPU the
//! scavenger uses is there for it, as on a server that is not saturated),
//! each allocation and each free timed on its own into a fixed-bucket
//! histogram (no allocation while measuring). The driver runs it on every
//! allocator, and once more on scavalloc with its background thread off
//! (`alloc_latency_off`): the same allocations with nothing released, the
//! baseline the targets compare against.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dispatch::Backend;
use crate::emit;
use crate::workloads::{Rng, Scale};

const MIB: usize = 1 << 20;

/// Buckets below this many nanoseconds are 1 ns wide.
const LINEAR: u64 = 64;
/// Sub-buckets per power of two above [`LINEAR`].
const SUB_BITS: u32 = 4;
/// Powers of two covered above [`LINEAR`] (up to about 2^44 ns, 4.8 hours).
const OCTAVES: usize = 38;
const BUCKETS: usize = LINEAR as usize + (OCTAVES << SUB_BITS);

/// A log-linear histogram of nanoseconds: exact below 64 ns, then 16
/// buckets per power of two (at most 6% wide), and the exact maximum. A
/// fixed array, so recording never allocates.
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    max: u64,
    total: u64,
}

impl Histogram {
    pub fn new() -> Self {
        Histogram { counts: Box::new([0; BUCKETS]), max: 0, total: 0 }
    }

    fn bucket(ns: u64) -> usize {
        if ns < LINEAR {
            return ns as usize;
        }
        let octave = 63 - ns.leading_zeros() as usize; // >= 6
        let sub = ((ns >> (octave as u32 - SUB_BITS)) & ((1 << SUB_BITS) - 1)) as usize;
        (LINEAR as usize + ((octave - 6) << SUB_BITS) + sub).min(BUCKETS - 1)
    }

    /// The lowest value of bucket `b`.
    fn bucket_low(b: usize) -> u64 {
        if b < LINEAR as usize {
            return b as u64;
        }
        let octave = ((b - LINEAR as usize) >> SUB_BITS) + 6;
        let sub = ((b - LINEAR as usize) & ((1 << SUB_BITS) - 1)) as u64;
        (1u64 << octave) + (sub << (octave as u32 - SUB_BITS))
    }

    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.counts[Self::bucket(ns)] += 1;
        self.max = self.max.max(ns);
        self.total += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.max = self.max.max(other.max);
        self.total += other.total;
    }

    /// The value at quantile `q` (0..1): the middle of its bucket, never
    /// above the maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        let rank = ((self.total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, high) = (Self::bucket_low(b), Self::bucket_low(b + 1));
                return ((low + high) / 2).min(self.max);
            }
        }
        self.max
    }
}

/// Sizes the measuring threads allocate: 16 B to 4 KiB, spread evenly over
/// the powers of two (most of a program's allocations are small).
fn size(rng: &mut Rng) -> usize {
    let shift = 4 + rng.below(9) as u32; // 16 B .. 4 KiB
    (1usize << shift) + rng.below(1 << shift) / 2
}

/// One measuring thread: `slots` live objects, each operation frees one
/// and allocates its replacement; batches of `batch` operations with a
/// millisecond's sleep between, until `until`.
fn measure(seed: u64, until: Instant, batch: usize) -> (Histogram, Histogram, u64) {
    let slots = 4096;
    let mut rng = Rng(seed);
    let mut live: Vec<Vec<u8>> = (0..slots).map(|_| vec![1u8; size(&mut rng)]).collect();
    let (mut allocs, mut frees) = (Histogram::new(), Histogram::new());
    let mut ops = 0u64;
    let mut i = 0;
    while Instant::now() < until {
        for _ in 0..batch {
            let n = size(&mut rng);
            let t0 = Instant::now();
            drop(std::mem::take(&mut live[i]));
            let t1 = Instant::now();
            let mut v = Vec::<u8>::with_capacity(n);
            let t2 = Instant::now();
            // Written once, as a program would (and so that a page the
            // scavenger released is faulted back in, as it would be).
            v.push(ops as u8);
            live[i] = v;
            frees.record((t1 - t0).as_nanos() as u64);
            allocs.record((t2 - t1).as_nanos() as u64);
            i = (i + 1) % slots;
            ops += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (allocs, frees, ops)
}

/// The workload (see the module docs).
pub fn alloc_latency(scale: Scale) {
    let (burst, window, batch) = match scale {
        Scale::Full => (512 * MIB, Duration::from_secs(6), 256),
        Scale::Smoke => (16 * MIB, Duration::from_millis(300), 64),
    };
    // The burst: objects of 64 B to 1 KiB; the first half freed but every
    // tenth (scattered), the second half freed whole.
    let mut rng = Rng(0x1a7e);
    let mut objects: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0;
    while bytes < burst {
        let n = 64 << rng.below(5);
        objects.push(vec![7u8; n]);
        bytes += n;
    }
    let half = objects.len() / 2;
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(half / 10 + 1);
    for (k, o) in objects.drain(..).enumerate() {
        if k < half && k % 10 == 0 {
            kept.push(o);
        }
    }
    let scavalloc = Backend::current().is_scavalloc();
    let released_before = if scavalloc { released(&scavalloc::stats()) } else { 0 };
    let until = Instant::now() + window;
    let hits = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let hits = hits.clone();
            std::thread::spawn(move || {
                let r = measure(0x5eed + t, until, batch);
                hits.fetch_add(r.2, Ordering::Relaxed);
                r
            })
        })
        .collect();
    let (mut allocs, mut frees) = (Histogram::new(), Histogram::new());
    for t in threads {
        let (a, f, _) = t.join().expect("a measuring thread panicked");
        allocs.merge(&a);
        frees.merge(&f);
    }
    let mut all = Histogram::new();
    all.merge(&allocs);
    all.merge(&frees);
    for (name, h) in [("alloc", &allocs), ("free", &frees), ("op", &all)] {
        emit(&format!("{name}_p50_ns"), h.quantile(0.5));
        emit(&format!("{name}_p99_ns"), h.quantile(0.99));
        emit(&format!("{name}_p999_ns"), h.quantile(0.999));
        emit(&format!("{name}_p9999_ns"), h.quantile(0.9999));
        emit(&format!("{name}_max_ns"), h.max);
    }
    emit("ops", hits.load(Ordering::Relaxed));
    emit("live", kept.iter().map(Vec::len).sum::<usize>());
    emit("peak_rss", crate::memory::peak_rss());
    if scavalloc {
        let s = scavalloc::stats();
        emit("released_during", released(&s) - released_before);
        emit("deep_hold_max_ns", s.deep_longest_hold_ns);
    }
    assert!(kept.iter().all(|o| o.iter().all(|&b| b == 7)), "a kept object changed");
}

/// Bytes scavalloc released in all, by every path.
fn released(s: &scavalloc::Stats) -> usize {
    s.released_background + s.released_eager + s.released_limit + s.released_deep
}
