//! User arenas against `malloc` (the system allocator) and bumpalo.
//!
//! ```text
//! cargo bench -p scavalloc-bench --bench arena
//! ```
//!
//! * `alloc_16_64B/<allocator>`: one allocation of 16, 32, 48 or 64 bytes
//!   (in turn), its first byte written; the median is the time of one.
//!   Between timed stretches of 100,000 objects, untimed, the arenas are
//!   reset (scavalloc's `Arena::reset`, bumpalo's `Bump::reset`: both keep
//!   their current chunk, so its pages stay resident) and the `System`
//!   allocations are freed: the figure is allocation alone.
//! * `alloc_16_64B_fresh/<allocator>`: the same with a new arena (and a new
//!   `Bump`) for every stretch: each chunk's pages fault in as they are
//!   first written, which costs more than the bump itself.
//! * `free/<object size>`: freeing a scavalloc arena holding 16 MiB of
//!   objects of that size (a million of 16 B, 4,096 of 4 KiB): the cost
//!   follows the chunks and their resident pages (the kernel takes the
//!   memory back), not the number of objects.
//!
//! This binary's own global allocator is the system one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use scavalloc::Arena;

/// Objects made between two arena swaps.
const SEGMENT: u64 = 100_000;

fn layout(i: u64) -> Layout {
    Layout::from_size_align(16 + (i as usize % 4) * 16, 8).unwrap()
}

/// Times `iters` allocations made by `alloc` in segments of [`SEGMENT`],
/// calling `start` before and `end` after each segment, untimed.
fn segmented<S>(
    iters: u64,
    mut start: impl FnMut() -> S,
    mut alloc: impl FnMut(&mut S, Layout),
    mut end: impl FnMut(S),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = SEGMENT.min(iters - done);
        let mut state = start();
        let t = Instant::now();
        for i in 0..n {
            alloc(&mut state, layout(i));
        }
        total += t.elapsed();
        end(state);
        done += n;
    }
    total
}

/// Times `iters` allocations into `a`, reset (untimed) before every
/// segment of [`SEGMENT`].
fn reused<A>(iters: u64, a: &mut A, reset: impl Fn(&mut A), alloc: impl Fn(&mut A, Layout)) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = SEGMENT.min(iters - done);
        reset(a);
        let t = Instant::now();
        for i in 0..n {
            alloc(a, layout(i));
        }
        total += t.elapsed();
        done += n;
    }
    total
}

fn arena_alloc(arena: &mut Arena, l: Layout) {
    let p = arena.alloc_layout(l).as_ptr();
    // SAFETY: `l.size()` fresh bytes.
    unsafe { p.write_volatile(1) };
}

fn bump_alloc(bump: &mut bumpalo::Bump, l: Layout) {
    let p = bump.alloc_layout(l).as_ptr();
    // SAFETY: as above.
    unsafe { p.write_volatile(1) };
}

fn alloc_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_16_64B");
    g.throughput(Throughput::Elements(1));
    g.bench_function("scavalloc_arena", |b| {
        let mut arena = Arena::new();
        b.iter_custom(|iters| reused(iters, &mut arena, Arena::reset, arena_alloc))
    });
    g.bench_function("bumpalo", |b| {
        let mut bump = bumpalo::Bump::new();
        b.iter_custom(|iters| reused(iters, &mut bump, bumpalo::Bump::reset, bump_alloc))
    });
    g.bench_function("system_malloc", |b| {
        b.iter_custom(|iters| {
            segmented(
                iters,
                || Vec::with_capacity(SEGMENT as usize),
                |ptrs: &mut Vec<(*mut u8, Layout)>, l| {
                    // SAFETY: a non-zero size.
                    let p = unsafe { System.alloc(l) };
                    // SAFETY: `l.size()` fresh bytes.
                    unsafe { p.write_volatile(1) };
                    ptrs.push((p, l));
                },
                |ptrs| {
                    for (p, l) in ptrs {
                        // SAFETY: allocated above with `l`, freed once.
                        unsafe { System.dealloc(p, l) };
                    }
                },
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("alloc_16_64B_fresh");
    g.throughput(Throughput::Elements(1));
    g.bench_function("scavalloc_arena", |b| {
        b.iter_custom(|iters| segmented(iters, Arena::new, arena_alloc, Arena::free))
    });
    g.bench_function("bumpalo", |b| b.iter_custom(|iters| segmented(iters, bumpalo::Bump::new, bump_alloc, drop)));
    g.finish();
}

fn free_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("free");
    for size in [16usize, 64, 4096] {
        let l = Layout::from_size_align(size, 8).unwrap();
        let objects = (16 << 20) / size;
        g.bench_function(BenchmarkId::from_parameter(format!("{size}B_x{objects}")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut arena = Arena::new();
                    for _ in 0..objects {
                        arena_alloc(&mut arena, l);
                    }
                    let t = Instant::now();
                    black_box(arena).free();
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = alloc_bench, free_bench
}
criterion_main!(benches);
