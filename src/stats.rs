//! Statistics: what the allocator holds, in figures that add up.
//!
//! [`stats()`] returns a plain `Copy` snapshot. Its identities hold exactly
//! whenever no other thread is allocating or freeing while it is taken
//! (each part is read under its own lock, so a snapshot taken under load can
//! be off by the objects that moved between two reads):
//!
//! * `mapped == heap_in_use + heap_free + heap_released`
//! * `page_cache <= heap_free + heap_released` (the page cache's pages are
//!   free pages)
//! * `heap_in_use == small_spans + large_pages + arena_pages`
//! * `small_spans == small_allocated + small_cached + small_free + small_waste`
//! * `span_released <= small_free + small_waste` (deep release only gives
//!   back pages that hold no handed-out object)
//!
//! Bytes allocated to users are `small_allocated + large_allocated`.
//!
//! The lock figures (`heap_lock`, `class_locks`) are read first, before the
//! snapshot takes any lock itself: its own acquisitions show in the next
//! one.

use core::fmt::Write;

use crate::pages::heap::HEAP;
use crate::pages::PAGE_SIZE;
use crate::persistent;
use crate::report::LineBuf;
pub use crate::os::cgroup::Source as CgroupLimitSource;
pub use crate::scavenge::container::{ContainerStats, PressureSource};
pub use crate::scavenge::goals::LimitSource;
pub use crate::scavenge::window::WindowStats;
use crate::scavenge::{self, background, container, goals, window, Path};
use crate::spans::sizeclass::{self, NUM_CLASSES};
use crate::spans::{cache, central, deep, large, pagemap};

/// Figures of one lock or a group of locks: acquisitions, contended
/// acquisitions and the time those waited. Defined with the lock in
/// `sync`, which keeps the counters (and builds under loom, where this
/// module does not).
pub use crate::spans::cache::trim::CacheTrimStats;
pub use crate::sync::LockStats;

/// Figures for one size class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Object size of the class in bytes.
    pub size: usize,
    /// Spans of the class.
    pub spans: usize,
    /// Objects handed to users and not freed.
    pub allocated: usize,
    /// Free objects waiting in thread caches.
    pub cached: usize,
    /// Free objects in the spans.
    pub free: usize,
    /// Bytes of the class's spans released to the OS by deep release.
    pub released: usize,
}

/// A snapshot of the allocator's memory. All figures are bytes unless said
/// otherwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// Address space owned by the page heap.
    pub mapped: usize,
    /// Page runs handed out by the page heap (spans and large objects).
    pub heap_in_use: usize,
    /// Free pages of the page heap that may be resident.
    pub heap_free: usize,
    /// Free pages of the page heap released to the OS (or never touched).
    pub heap_released: usize,
    /// Free pages held by the per-CPU page cache (part of `heap_free` and
    /// `heap_released`).
    pub page_cache: usize,
    /// Pages held by small-object spans.
    pub small_spans: usize,
    /// Small objects in spans handed to users (counted at their class
    /// size). The few the heap profiler sampled live outside the spans and
    /// are counted in `profile.sampled_allocated` instead.
    pub small_allocated: usize,
    /// Small objects free in thread caches.
    pub small_cached: usize,
    /// Small objects free in their spans.
    pub small_free: usize,
    /// The tail of each span that no object fits in.
    pub small_waste: usize,
    /// Pages held by large objects, including freed ones kept in thread
    /// caches (`large_cached`).
    pub large_pages: usize,
    /// Pages of freed large objects kept in thread caches for reuse.
    pub large_cached: usize,
    /// Bytes users asked for in large objects.
    pub large_allocated: usize,
    /// Live large objects (a count).
    pub large_objects: usize,
    /// Memory holding the allocator's own metadata, including the heap
    /// profile's table and the slots of its sampled small objects (see
    /// `profile`).
    pub metadata: usize,
    /// The heap profiler's figures.
    pub profile: crate::profile::ProfileStats,
    /// Threads with a cache attached (a count).
    pub thread_caches: usize,
    /// What trimming thread caches (idle ones, and all of them beyond their
    /// budget) has done.
    pub cache_trim: CacheTrimStats,
    /// Released by the background scavenger, in all.
    pub released_background: usize,
    /// Released because the heap grew while over the retained goal.
    pub released_eager: usize,
    /// Released to keep under the memory limit.
    pub released_limit: usize,
    /// Released by [`crate::release_all`].
    pub released_forced: usize,
    /// Released at once because of memory pressure or because the control
    /// group came near its limit.
    pub released_pressure: usize,
    /// Bytes inside small-object spans given back to the OS by deep release
    /// and not reused since (part of `small_free` plus `small_waste`).
    pub span_released: usize,
    /// Bytes deep release has given back inside spans, in all (background
    /// and `release_all`).
    pub released_deep: usize,
    /// Spans deep release has given pages of back, in all (a span counts
    /// again each time it loses more pages).
    pub deep_spans: u64,
    /// The longest a step of deep release held a class lock (ns): it
    /// chooses and records under the lock, and releases without it.
    pub deep_longest_hold_ns: u64,
    /// Deep release's class-lock holds by length: entry `b` counts holds
    /// under `2^b` microseconds and at least `2^(b-1)` (the last entry,
    /// 16 ms and longer). See [`Stats::deep_hold_bound_us`].
    pub deep_hold_histogram: [u64; 16],
    /// CPU time the background scavenger spent on deep release (ns; part of
    /// `scavenger_cpu_ns`).
    pub deep_cpu_ns: u64,
    /// Pages held by user arenas: live arenas' chunks and own runs, and the
    /// faulted address space of freed ones in quarantine.
    pub arena_pages: usize,
    /// Live user arenas (a count).
    pub arenas: usize,
    /// Bytes of chunks and own runs held by live arenas.
    pub arena_chunks: usize,
    /// Bytes handed out by live arenas (as of the last run each took).
    pub arena_allocated: usize,
    /// Address space of freed arenas kept faulting, in bytes (not
    /// resident; part of `arena_pages`).
    pub arena_quarantined: usize,
    /// CPU time the background scavenger has spent working (ns).
    pub scavenger_cpu_ns: u64,
    /// Work batches of the background scavenger.
    pub scavenger_batches: u64,
    /// Whether the background scavenger thread is running.
    pub scavenger_running: bool,
    /// The background scavenger's current work:sleep ratio.
    pub sleep_ratio: f64,
    /// The retained goal (`usize::MAX` before the scavenger has set one).
    pub retained_goal: usize,
    /// The memory limit in force, 0 if none.
    pub memory_limit: usize,
    /// Where the memory limit comes from: `SCAVALLOC_MEMLIMIT`, the control
    /// group (95% of its effective limit), or nowhere.
    pub memory_limit_source: LimitSource,
    /// The control group's limits, usage and CPU quota, and memory
    /// pressure, as the background thread last saw them.
    pub container: ContainerStats,
    /// The retained window in force and what it learned: how long a peak
    /// of pages in use holds the retained goal up.
    pub retained_window: WindowStats,
    /// Allocations that left retained memory over the memory limit.
    pub limit_overruns: u64,
    /// The page heap's lock, taken to make spans, for large objects, to
    /// grow the heap and by the scavenger.
    pub heap_lock: LockStats,
    /// The size classes' central-list locks, summed over all classes:
    /// taken when a thread cache refills or flushes, and by deep release.
    pub class_locks: LockStats,
    /// Per size class.
    pub classes: [ClassStats; NUM_CLASSES],
}

impl Stats {
    /// Bytes allocated to users: small objects at their class size (those
    /// in spans, and those the heap profiler sampled, kept apart) plus
    /// large objects at their requested size.
    pub fn allocated(&self) -> usize {
        self.small_allocated + self.profile.sampled_allocated + self.large_allocated
    }

    /// Memory the OS may be holding for the heap: mapped minus what was
    /// released, by the page heap or inside spans.
    ///
    /// The figures of a snapshot are read one layer at a time, so while
    /// other threads allocate, free or release, the released parts can add
    /// up to more than `mapped` was when it was read: the difference stops
    /// at zero rather than wrapping (or panicking in a debug build).
    pub fn retained(&self) -> usize {
        self.mapped
            .saturating_sub(self.heap_released)
            .saturating_sub(self.span_released)
            .saturating_sub(self.arena_quarantined)
    }

    /// Deep release's class-lock holds so far, and the bound in
    /// microseconds (a power of two) under which at least `share` of them
    /// (0 to 1) stayed; 0 bound when there were none. Holds of 16 ms and
    /// more share the last bucket, whose bound is the longest hold.
    pub fn deep_hold_bound_us(&self, share: f64) -> (u64, u64) {
        let holds: u64 = self.deep_hold_histogram.iter().sum();
        let need = (holds as f64 * share).ceil() as u64;
        let mut seen = 0;
        for (b, &n) in self.deep_hold_histogram.iter().enumerate() {
            seen += n;
            if n > 0 && seen >= need {
                if b == self.deep_hold_histogram.len() - 1 {
                    return (holds, self.deep_longest_hold_ns.div_ceil(1000));
                }
                return (holds, 1 << b);
            }
        }
        (holds, 0)
    }
}

/// Takes a snapshot of the allocator's figures.
pub fn stats() -> Stats {
    let heap_lock = HEAP.lock_stats();
    let class_locks = central::lock_stats();
    let bg = background::stats();
    let deep = deep::stats();
    let arenas = crate::arena::stats();
    let mut s = Stats {
        mapped: 0,
        heap_in_use: 0,
        heap_free: 0,
        heap_released: 0,
        page_cache: 0,
        small_spans: 0,
        small_allocated: 0,
        small_cached: 0,
        small_free: 0,
        small_waste: 0,
        large_pages: 0,
        large_cached: 0,
        large_allocated: 0,
        large_objects: 0,
        metadata: 0,
        profile: crate::profile::stats(),
        thread_caches: 0,
        cache_trim: cache::trim::stats(),
        released_background: scavenge::released_by(Path::Background),
        released_eager: scavenge::released_by(Path::Eager),
        released_limit: scavenge::released_by(Path::Limit),
        released_forced: scavenge::released_by(Path::Forced),
        released_pressure: scavenge::released_by(Path::Pressure),
        span_released: 0,
        released_deep: deep.released_total,
        deep_spans: deep.spans_total,
        deep_longest_hold_ns: deep.longest_hold_ns,
        deep_hold_histogram: deep.hold_histogram,
        deep_cpu_ns: bg.deep_cpu_ns,
        arena_pages: 0,
        arenas: arenas.arenas,
        arena_chunks: arenas.chunk_bytes,
        arena_allocated: arenas.allocated,
        arena_quarantined: arenas.quarantined,
        scavenger_cpu_ns: bg.cpu_ns,
        scavenger_batches: bg.batches,
        scavenger_running: bg.running,
        sleep_ratio: bg.sleep_ratio,
        retained_goal: goals::retained_goal(),
        memory_limit: goals::memory_limit().unwrap_or(0),
        memory_limit_source: goals::limit_source(),
        container: container::stats(),
        retained_window: window::stats(),
        limit_overruns: scavenge::limit_overruns(),
        heap_lock,
        class_locks,
        classes: [ClassStats::default(); NUM_CLASSES],
    };
    for (class, cs) in s.classes.iter_mut().enumerate() {
        let counts = central::counts(class);
        let cached = cache::cached_objects(class);
        let size = sizeclass::class_size(class);
        let objects = counts.spans * sizeclass::class_objects(class);
        cs.size = size;
        cs.spans = counts.spans;
        cs.cached = cached;
        cs.allocated = counts.handed_out.saturating_sub(cached);
        cs.free = objects - counts.handed_out;
        cs.released = counts.released;
        s.span_released += counts.released;
        s.small_spans += counts.spans * sizeclass::class_span_bytes(class);
        s.small_allocated += cs.allocated * size;
        s.small_cached += cs.cached * size;
        s.small_free += cs.free * size;
        s.small_waste += counts.spans * (sizeclass::class_span_bytes(class) - sizeclass::class_objects(class) * size);
    }
    let (large_bytes, large_count, large_cached) = large::counts();
    s.large_cached = large_cached * PAGE_SIZE;
    s.large_allocated = large_bytes;
    s.large_objects = large_count;
    let heap = crate::pages::cache::heap_stats();
    s.mapped = heap.mapped;
    s.heap_in_use = heap.in_use;
    s.heap_free = heap.free_unscavenged;
    s.heap_released = heap.released;
    s.page_cache = heap.page_cache;
    s.large_pages = heap.large;
    s.arena_pages = heap.arena;
    s.metadata = heap.metadata
        + persistent::mapped_bytes()
        + pagemap::metadata_bytes(heap.mapped)
        + s.profile.table_bytes
        + s.profile.sampled_bytes;
    s.thread_caches = cache::cache_counts().0;
    s
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Prints a readable summary to stderr, one `write` per line, without
/// allocating.
pub fn print(s: &Stats) {
    let lines: [(&str, usize); 25] = [
        ("mapped", s.mapped),
        ("retained (mapped - released)", s.retained()),
        ("heap in use", s.heap_in_use),
        ("heap free, resident", s.heap_free),
        ("heap free, released", s.heap_released),
        ("  free in page cache", s.page_cache),
        ("small-object spans", s.small_spans),
        ("  allocated", s.small_allocated),
        ("  in thread caches", s.small_cached),
        ("  free in spans", s.small_free),
        ("  span tails", s.small_waste),
        ("  released inside spans", s.span_released),
        ("large objects (pages)", s.large_pages),
        ("  requested", s.large_allocated),
        ("  freed, cached in threads", s.large_cached),
        ("user arenas (pages)", s.arena_pages),
        ("  live chunks", s.arena_chunks),
        ("  quarantined (faulting)", s.arena_quarantined),
        ("metadata", s.metadata),
        ("released: background", s.released_background),
        ("released: heap growth", s.released_eager),
        ("released: memory limit", s.released_limit),
        ("released: release_all", s.released_forced),
        ("released: pressure", s.released_pressure),
        ("released: inside spans (deep)", s.released_deep),
    ];
    let mut line = LineBuf::<128>::new();
    let _ = write!(line, "scavalloc stats: {} thread caches, {} large objects", s.thread_caches, s.large_objects);
    line.emit_line();
    for (name, bytes) in lines {
        let mut line = LineBuf::<128>::new();
        let _ = write!(line, "  {name:<30} {:>12.2} MiB", mib(bytes));
        line.emit_line();
    }
    let (holds, p99) = s.deep_hold_bound_us(0.99);
    let mut line = LineBuf::<256>::new();
    let _ = write!(
        line,
        "  scavenger: {:.1} ms CPU ({:.1} ms deep, {} spans, lock held {:.1} us at most, 99% of {} holds under {} us) in {} batches, ratio {:.4}, {} limit overruns",
        s.scavenger_cpu_ns as f64 / 1e6,
        s.deep_cpu_ns as f64 / 1e6,
        s.deep_spans,
        s.deep_longest_hold_ns as f64 / 1e3,
        holds,
        p99,
        s.scavenger_batches,
        s.sleep_ratio,
        s.limit_overruns
    );
    line.emit_line();
    print_lock("heap lock", &s.heap_lock);
    print_lock("class locks", &s.class_locks);
    let c = &s.container;
    let mut line = LineBuf::<320>::new();
    let _ = write!(
        line,
        "  container: limit {:.1} MiB ({}), high {:.1} MiB, usage {:.1} MiB (working set {:.1} MiB), {:.2} CPUs; \
         memory limit {:.1} MiB ({:?}); pressure from {:?}: {} events, {} ticks at risk near the limit, {:.2} MiB \
         released for them",
        mib(c.memory_max),
        c.limit_source,
        mib(c.memory_high),
        mib(c.usage),
        mib(c.working_set),
        c.cpus,
        mib(s.memory_limit),
        s.memory_limit_source,
        c.pressure_source,
        c.pressure_events,
        c.headroom_events,
        mib(s.released_pressure)
    );
    line.emit_line();
    let w = &s.retained_window;
    let mut line = LineBuf::<200>::new();
    let _ = write!(
        line,
        "  retained window: {:.2} s in force, {:.2} s learned (at most {:.0} s); {} release episodes reused, {} \
         unused, {} resets; {:.2} MiB of released memory taken back",
        w.window_ns as f64 / 1e9,
        w.learned_ns as f64 / 1e9,
        w.max_ns as f64 / 1e9,
        w.reused_episodes,
        w.unused_episodes,
        w.resets,
        mib(w.refaulted)
    );
    line.emit_line();
    let t = &s.cache_trim;
    let mut line = LineBuf::<200>::new();
    let _ = write!(
        line,
        "  thread caches: {:.2} MiB held (budget {:.2} MiB); trimmed {} idle, {} over budget, {:.2} MiB in all; \
         {} refused (thread busy){}",
        mib(t.held),
        mib(t.budget),
        t.trimmed_idle,
        t.trimmed_budget,
        mib(t.trimmed_bytes as usize),
        t.refused,
        if t.available { "" } else { "; trimming unavailable (no membarrier)" }
    );
    line.emit_line();
    let mut line = LineBuf::<128>::new();
    let _ = write!(line, "  {:>6} {:>8} {:>10} {:>10} {:>10}", "size", "spans", "allocated", "cached", "free");
    line.emit_line();
    for c in s.classes.iter().filter(|c| c.spans > 0) {
        let mut line = LineBuf::<128>::new();
        let _ = write!(line, "  {:>6} {:>8} {:>10} {:>10} {:>10}", c.size, c.spans, c.allocated, c.cached, c.free);
        line.emit_line();
    }
}

/// One line of lock figures: acquisitions, contended ones, their wait.
fn print_lock(name: &str, l: &LockStats) {
    let mut line = LineBuf::<160>::new();
    let _ = write!(
        line,
        "  {name}: {} acquisitions, {} contended ({:.2}%), waited {:.3} ms in all, {} ns mean",
        l.acquisitions,
        l.contended,
        l.contended_percent(),
        l.wait_ns as f64 / 1e6,
        l.mean_wait_ns()
    );
    line.emit_line();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot taken while another thread releases can see more
    /// released than mapped; `retained` must stop at zero, not wrap (or
    /// panic: unit tests run with debug assertions).
    #[test]
    fn retained_of_an_inconsistent_snapshot_stops_at_zero() {
        let mut s = stats();
        s.mapped = 64 << 20;
        s.heap_released = 40 << 20;
        s.span_released = 20 << 20;
        s.arena_quarantined = 0;
        assert_eq!(s.retained(), 4 << 20);
        s.span_released = 30 << 20;
        assert_eq!(s.retained(), 0);
        s.heap_released = 80 << 20;
        s.arena_quarantined = 1 << 20;
        assert_eq!(s.retained(), 0);
    }

    /// The hold bound against a naive sort of the same holds: the smallest
    /// power of two of microseconds at or above the hold at the share's
    /// rank.
    #[test]
    fn deep_hold_bound_matches_sorted_holds() {
        let holds_us: Vec<u64> = (0..1000u64).map(|i| (i * 7919) % 300).chain([5000, 40_000]).collect();
        let mut s = stats();
        s.deep_hold_histogram = [0; 16];
        s.deep_longest_hold_ns = 40_000_000;
        for &us in &holds_us {
            let b = ((u64::BITS - us.leading_zeros()) as usize).min(15);
            s.deep_hold_histogram[b] += 1;
        }
        let mut sorted = holds_us.clone();
        sorted.sort_unstable();
        for share in [0.5, 0.9, 0.99, 0.999, 1.0] {
            let rank = ((sorted.len() as f64 * share).ceil() as usize).max(1) - 1;
            let at = sorted[rank];
            let (n, bound) = s.deep_hold_bound_us(share);
            assert_eq!(n, sorted.len() as u64);
            // The bucket's bound is the next power of two above the hold
            // (holds of 16 ms and more share the last bucket, bounded by
            // the longest).
            let want = if at >= 1 << 14 { 40_000 } else { 1u64 << (u64::BITS - at.leading_zeros()) };
            assert_eq!(bound, want, "share {share}: hold at rank {rank} is {at} us");
        }
        s.deep_hold_histogram = [0; 16];
        assert_eq!(s.deep_hold_bound_us(0.999), (0, 0));
    }
}
