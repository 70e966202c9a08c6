//! Page-heap benchmarks: find, and alloc+free round trips, of 1, 8, 64 and
//! 600 pages in a heap of 1 GiB with mixed free and used pages; and a
//! multi-chunk allocation in a 64 MiB heap against a 16 GiB one, to show the
//! search cost follows the levels of the summary tree, not the heap size.
//!
//! The page allocator never touches the memory it manages, so the heaps
//! here are built over address ranges that are not mapped at all.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use scavalloc::testing::{PageAlloc, CHUNK_BYTES, CHUNK_PAGES, PAGE_SIZE};

const HEAP_BASE: usize = 0x1000_0000_0000;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A 1 GiB heap: the first 960 MiB filled with runs of 1..=64 pages of
/// which about half were freed again (free holes of every small size, none
/// reaching across a chunk), then 64 MiB of wholly free chunks at the top.
fn mixed_heap() -> Box<PageAlloc> {
    let mut heap = Box::new(PageAlloc::new());
    heap.grow(HEAP_BASE, 1 << 30).expect("grow");
    let fragmented_pages = (960 << 20) / PAGE_SIZE;
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut runs = Vec::new();
    let mut used = 0;
    while used < fragmented_pages {
        let n = (1 + rng.below(64)).min(fragmented_pages - used);
        let run = heap.alloc(n).expect("fill");
        runs.push((run.base, n));
        used += n;
    }
    for (i, &(base, n)) in runs.iter().enumerate() {
        // Keep the last run of each chunk in use so that no free run
        // crosses into the next chunk.
        let ends_chunk = runs.get(i + 1).is_none_or(|next| next.0 / CHUNK_BYTES != base / CHUNK_BYTES);
        if !ends_chunk && rng.below(2) == 0 {
            heap.free(base, n, false);
        }
    }
    heap
}

fn bench_mixed(c: &mut Criterion) {
    let mut group = c.benchmark_group("pages_1GiB_mixed");
    let mut heap = mixed_heap();
    for npages in [1usize, 8, 64, 600] {
        group.bench_with_input(BenchmarkId::new("find", npages), &npages, |b, &n| {
            b.iter(|| black_box(heap.find(black_box(n))))
        });
        group.bench_with_input(BenchmarkId::new("alloc_free", npages), &npages, |b, &n| {
            b.iter(|| {
                let run = heap.alloc(black_box(n)).expect("alloc");
                heap.free(run.base, n, false);
            })
        });
    }
    group.finish();
}

/// A heap of `bytes` in which every chunk has one page in use in its
/// middle, except the top two chunks, which are free: the only run of more
/// than a chunk is at the very end.
fn striped_heap(bytes: usize) -> Box<PageAlloc> {
    let mut heap = Box::new(PageAlloc::new());
    heap.grow(HEAP_BASE, bytes).expect("grow");
    let chunks = bytes / CHUNK_BYTES;
    for ci in 0..chunks - 2 {
        let mid = HEAP_BASE + ci * CHUNK_BYTES + (CHUNK_PAGES / 2) * PAGE_SIZE;
        heap.alloc_range(mid, 1);
    }
    heap
}

fn bench_heap_size(c: &mut Criterion) {
    let mut group = c.benchmark_group("pages_multichunk_by_heap_size");
    for (label, bytes) in [("64MiB", 64usize << 20), ("16GiB", 16usize << 30)] {
        let mut heap = striped_heap(bytes);
        group.bench_function(BenchmarkId::new("alloc_free_600", label), |b| {
            b.iter(|| {
                let run = heap.alloc(black_box(600)).expect("alloc");
                heap.free(run.base, 600, false);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_mixed, bench_heap_size);
criterion_main!(benches);
