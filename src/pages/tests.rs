//! Randomised differential tests of the page allocator against a naive
//! model.
//!
//! The model is one state per page (in use, free, free and scavenged) for
//! every chunk the heap owns. Every answer of [`PageAlloc`] (addresses,
//! failures, scavenged bytes) is compared with the model's, and after every
//! operation the allocator's own state is compared too: the chunk bitmaps,
//! the summaries of the radix tree (recomputed from the model by counting
//! runs, never with `Summary::merge`), the counters and the search hint.
//!
//! `PageAlloc` never touches the memory it manages, so the heaps here live
//! at fake addresses that are not mapped.

use super::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

const PS: usize = PAGE_SIZE;
/// Fake heap addresses are drawn from `[REGION_LO, REGION_HI)`.
const REGION_LO: usize = 0x1000_0000_0000;
const REGION_HI: usize = 0x2000_0000_0000;
/// Bytes under one root (level 0) summary entry: 16 GiB.
const ROOT_BYTES: usize = 1 << LEVEL_SHIFT[0];
const GIB: usize = 1 << 30;
const LEAF: usize = SUMMARY_LEVELS - 1;
/// Pages under one root entry (2^21), the value of an all-free root summary.
const ROOT_PAGES: usize = 1 << LEVEL_LOG_PAGES[0];

// ---------------------------------------------------------------------------
// Random numbers.

use crate::testutil::Rng;

/// Page-heap specific draws.
trait PageRng {
    fn npages(&mut self) -> usize;
}

impl PageRng for Rng {
    /// A run length: single pages, small, medium (up to a chunk) and
    /// multi-chunk runs.
    fn npages(&mut self) -> usize {
        match self.below(100) {
            0..=34 => 1,
            35..=64 => self.range(2, 64),
            65..=84 => self.range(65, 512),
            _ => self.range(513, 2600),
        }
    }
}

// ---------------------------------------------------------------------------
// The model.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    InUse,
    Free,
    Scavenged,
}

/// What the model derives from a chunk's pages, recomputed whenever they
/// change: the expected bitmap words, and the chunk as runs of pages that
/// are all free or all in use (`(first page, pages, free)`), which makes the
/// model's searches cheap without making them clever.
struct Derived {
    alloc: [u64; CHUNK_PAGES / 64],
    scav: [u64; CHUNK_PAGES / 64],
    runs: Vec<(usize, usize, bool)>,
}

struct MChunk {
    pages: Vec<Page>,
    in_use: usize,
    derived: Derived,
}

fn derive(pages: &[Page]) -> Derived {
    let mut d = Derived { alloc: [0; CHUNK_PAGES / 64], scav: [0; CHUNK_PAGES / 64], runs: Vec::new() };
    for (i, &p) in pages.iter().enumerate() {
        match p {
            Page::InUse => d.alloc[i / 64] |= 1 << (i % 64),
            Page::Scavenged => d.scav[i / 64] |= 1 << (i % 64),
            Page::Free => {}
        }
        let free = p != Page::InUse;
        match d.runs.last_mut() {
            Some((_, n, f)) if *f == free => *n += 1,
            _ => d.runs.push((i, 1, free)),
        }
    }
    d
}

/// Counts free runs over a sequence of pages fed in address order:
/// `free(n)` for `n` free pages, `blocked()` for a page in use or not owned.
#[derive(Default)]
struct RunScan {
    start: Option<usize>,
    max: usize,
    run: usize,
}

impl RunScan {
    fn free(&mut self, n: usize) {
        self.run += n;
    }

    fn blocked(&mut self) {
        self.start.get_or_insert(self.run);
        self.max = self.max.max(self.run);
        self.run = 0;
    }

    fn finish(mut self) -> (usize, usize, usize) {
        let start = *self.start.get_or_insert(self.run);
        (start, self.max.max(self.run), self.run)
    }
}

#[derive(Default)]
struct Model {
    chunks: BTreeMap<usize, MChunk>,
    /// Owned address ranges, sorted and coalesced.
    ranges: Vec<(usize, usize)>,
    in_use: usize,
    scavenged: usize,
    /// Live allocations (base → pages), disjoint; frees split them.
    live: BTreeMap<usize, usize>,
}

impl Model {
    fn owned_pages(&self) -> usize {
        self.chunks.len() * CHUNK_PAGES
    }

    fn overlaps(&self, base: usize, limit: usize) -> bool {
        self.ranges.iter().any(|&(b, l)| b < limit && base < l)
    }

    fn grow(&mut self, base: usize, limit: usize) {
        assert!(!self.overlaps(base, limit), "test bug: overlapping grow");
        for ci in chunk_index(base)..chunk_index(limit) {
            let pages = vec![Page::Scavenged; CHUNK_PAGES];
            let derived = derive(&pages);
            self.chunks.insert(ci, MChunk { pages, in_use: 0, derived });
        }
        self.scavenged += (limit - base) / PS;
        self.ranges.push((base, limit));
        self.ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for &(b, l) in &self.ranges {
            match merged.last_mut() {
                Some(last) if last.1 == b => last.1 = l,
                _ => merged.push((b, l)),
            }
        }
        self.ranges = merged;
    }

    fn page(&self, addr: usize) -> Option<Page> {
        self.chunks.get(&chunk_index(addr)).map(|c| c.pages[chunk_page_index(addr)])
    }

    /// Sets pages `[base, base + n pages)` to `to`; returns how many of them
    /// were scavenged before. Allocating needs free pages, freeing needs
    /// pages in use (the test only asks for legal changes).
    fn set_run(&mut self, base: usize, n: usize, to: Page) -> usize {
        let mut was_scavenged = 0;
        let end = base + n * PS;
        let mut at = base;
        while at < end {
            let ci = chunk_index(at);
            let i = chunk_page_index(at);
            let k = (CHUNK_PAGES - i).min((end - at) / PS);
            let c = self.chunks.get_mut(&ci).expect("test bug: set_run outside the heap");
            for p in &mut c.pages[i..i + k] {
                assert_eq!(*p == Page::InUse, to != Page::InUse, "test bug: illegal change at {at:#x}");
                match *p {
                    Page::InUse => {
                        c.in_use -= 1;
                        self.in_use -= 1;
                    }
                    Page::Scavenged => {
                        was_scavenged += 1;
                        self.scavenged -= 1;
                    }
                    Page::Free => {}
                }
                match to {
                    Page::InUse => {
                        c.in_use += 1;
                        self.in_use += 1;
                    }
                    Page::Scavenged => self.scavenged += 1,
                    Page::Free => {}
                }
                *p = to;
            }
            c.derived = derive(&c.pages);
            at += k * PS;
        }
        was_scavenged
    }

    /// Calls `f(addr, pages, free)` for each run of owned pages of one kind
    /// in `[lo, hi)`, lowest first, until `f` returns false. Runs end at
    /// chunk boundaries; address space not owned is simply skipped.
    fn for_each_segment(&self, lo: usize, hi: usize, mut f: impl FnMut(usize, usize, bool) -> bool) {
        for (&ci, c) in self.chunks.range(chunk_index(lo)..=chunk_index(hi - 1)) {
            let cb = chunk_base(ci);
            for &(first, n, free) in &c.derived.runs {
                let s = (cb + first * PS).max(lo);
                let e = (cb + (first + n) * PS).min(hi);
                if s < e && !f(s, (e - s) / PS, free) {
                    return;
                }
            }
        }
    }

    /// The lowest address at which `npages` free owned pages start.
    fn find(&self, npages: usize) -> Option<usize> {
        let (mut found, mut run_base, mut run, mut next) = (None, 0, 0, usize::MAX);
        self.for_each_segment(0, usize::MAX, |addr, n, free| {
            if addr != next {
                run = 0; // address space not owned breaks a run
            }
            next = addr + n * PS;
            if !free {
                run = 0;
                return true;
            }
            if run == 0 {
                run_base = addr;
            }
            run += n;
            if run >= npages {
                found = Some(run_base);
                return false;
            }
            true
        });
        found
    }

    /// Free owned pages running from `addr` upwards, counting at most `cap`.
    fn free_run_len(&self, addr: usize, cap: usize) -> usize {
        let (mut len, mut next) = (0, addr);
        self.for_each_segment(addr, usize::MAX, |a, n, free| {
            if a != next || !free {
                return false;
            }
            len += n;
            next = a + n * PS;
            len < cap
        });
        len.min(cap)
    }

    /// Where `alloc_aligned(npages, align_pages)` must put its run, by the
    /// rule documented on it: the lowest fit of `npages` rounded up to the
    /// alignment if `npages` free pages start there, else the lowest aligned
    /// address inside the lowest free run of `npages + align_pages - 1`
    /// pages.
    fn alloc_aligned_place(&self, npages: usize, align_pages: usize) -> Option<usize> {
        if align_pages <= 1 {
            return self.find(npages);
        }
        let align = align_pages * PS;
        let first = self.find(npages)?;
        // Every fit starts at or above the lowest fit, so the lowest fit
        // rounded up to the alignment is the lowest aligned fit if it is
        // free (in any free run, not only the first one).
        let aligned = first.next_multiple_of(align);
        if self.free_run_len(aligned, npages) >= npages {
            return Some(aligned);
        }
        self.find(npages + align_pages - 1).map(|wide| wide.next_multiple_of(align))
    }

    /// The expected summary of the pages `[lo, hi)` (chunk aligned), from
    /// the run lists; pages not owned count as in use.
    fn summary(&self, lo: usize, hi: usize) -> (usize, usize, usize) {
        let mut scan = RunScan::default();
        let mut pos = lo;
        self.for_each_segment(lo, hi, |addr, n, free| {
            if addr != pos {
                scan.blocked();
            }
            if free {
                scan.free(n);
            } else {
                scan.blocked();
            }
            pos = addr + n * PS;
            true
        });
        if pos != hi {
            scan.blocked();
        }
        scan.finish()
    }

    /// The same as [`Model::summary`], page by page from the page states
    /// alone (for the full sweeps: independent of the run lists).
    fn summary_by_pages(&self, lo: usize, hi: usize) -> (usize, usize, usize) {
        let mut scan = RunScan::default();
        let mut pos = lo;
        for (&ci, c) in self.chunks.range(chunk_index(lo)..chunk_index(hi)) {
            if chunk_base(ci) != pos {
                scan.blocked();
            }
            for &p in &c.pages {
                if p == Page::InUse {
                    scan.blocked();
                } else {
                    scan.free(1);
                }
            }
            pos = chunk_base(ci) + CHUNK_BYTES;
        }
        if pos != hi {
            scan.blocked();
        }
        scan.finish()
    }

    /// Whether every owned page below `addr` is in use.
    fn all_in_use_below(&self, addr: usize) -> Option<usize> {
        for (&ci, c) in self.chunks.range(..=chunk_index(addr.min(MAX_SEARCH_ADDR))) {
            if chunk_base(ci) + CHUNK_BYTES <= addr {
                if c.in_use != CHUNK_PAGES {
                    let i = c.pages.iter().position(|&p| p != Page::InUse).unwrap();
                    return Some(chunk_base(ci) + i * PS);
                }
            } else if let Some(i) = c.pages[..chunk_page_index(addr)].iter().position(|&p| p != Page::InUse) {
                return Some(chunk_base(ci) + i * PS);
            }
        }
        None
    }

    /// Records that `[base, base + n pages)` was freed: live allocations
    /// overlapping it are cut.
    fn forget_live(&mut self, base: usize, n: usize) {
        let end = base + n * PS;
        let hit: Vec<(usize, usize)> =
            self.live.range(..end).rev().take_while(|(&b, &k)| b + k * PS > base).map(|(&b, &k)| (b, k)).collect();
        for (b, k) in hit {
            self.live.remove(&b);
            if b < base {
                self.live.insert(b, (base - b) / PS);
            }
            let e = b + k * PS;
            if e > end {
                self.live.insert(end, (e - end) / PS);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The harness.

/// An optional address, in hexadecimal.
fn hex(addr: Option<usize>) -> String {
    addr.map_or_else(|| "None".to_string(), |a| format!("{a:#x}"))
}

#[derive(Clone, Copy)]
enum Op {
    Find(usize),
    Alloc(usize),
    AllocAligned(usize, usize),
    AllocRange(usize, usize),
    Free(usize, usize, bool),
    Grow(usize, usize),
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Find(n) => write!(f, "find({n})"),
            Op::Alloc(n) => write!(f, "alloc({n})"),
            Op::AllocAligned(n, a) => write!(f, "alloc_aligned({n}, {a})"),
            Op::AllocRange(b, n) => write!(f, "alloc_range({b:#x}, {n})"),
            Op::Free(b, n, s) => write!(f, "free({b:#x}, {n}, {s})"),
            Op::Grow(b, s) => write!(f, "grow({b:#x}, {s:#x})"),
        }
    }
}

/// Knobs for one randomised run.
#[derive(Clone, Copy)]
struct Config {
    seed: u64,
    ops: usize,
    /// Most chunks the heap may own.
    max_chunks: usize,
    /// A full sweep of every check runs every this many operations.
    sweep_every: usize,
}

struct Harness {
    cfg: Config,
    rng: Rng,
    pa: Box<PageAlloc>,
    m: Model,
    op: usize,
    history: VecDeque<Op>,
    stats: BTreeMap<&'static str, usize>,
    /// While draining, frees dominate until occupancy (percent of owned
    /// pages in use) falls to this.
    drain_to: Option<usize>,
}

/// How many recent operations a failure message shows.
const HISTORY: usize = 12;

impl Harness {
    fn new(cfg: Config) -> Harness {
        Harness {
            cfg,
            rng: Rng::new(cfg.seed),
            pa: Box::new(PageAlloc::new()),
            m: Model::default(),
            op: 0,
            history: VecDeque::new(),
            stats: BTreeMap::new(),
            drain_to: None,
        }
    }

    /// Context for failure messages (only built when an assertion fails).
    fn ctx(&self) -> String {
        format!(
            "seed {:#x}, op #{}; recent ops, oldest first: {:?}; heap ranges {}; search_addr {:#x}",
            self.cfg.seed,
            self.op,
            self.history,
            self.m.ranges.iter().map(|&(b, l)| format!("[{b:#x}, {l:#x})")).collect::<Vec<_>>().join(" "),
            self.pa.search_addr()
        )
    }

    fn record(&mut self, op: Op) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(op);
    }

    fn run(mut self) {
        for _ in 0..self.cfg.ops {
            self.op += 1;
            let touched = self.step();
            self.check_after(touched);
            if self.op.is_multiple_of(self.cfg.sweep_every) {
                self.full_sweep();
            }
        }
        self.full_sweep();
        println!(
            "seed {:#x}: {} chunks in {} ranges; {:?}",
            self.cfg.seed,
            self.m.chunks.len(),
            self.m.ranges.len(),
            self.stats
        );
        // The run must have exercised what it is for.
        for what in [
            "alloc 1 page",
            "alloc 2..=64 pages",
            "alloc 65..=512 pages",
            "alloc > 512 pages",
            "alloc failed",
            "alloc across chunks",
            "aligned in lowest run",
            "aligned in wide run",
            "free across chunks",
            "grow",
        ] {
            assert!(
                self.stats.get(what).copied().unwrap_or(0) > 0,
                "seed {:#x}: no '{what}' in {:?}",
                self.cfg.seed,
                self.stats
            );
        }
    }

    fn stat(&mut self, k: &'static str) {
        *self.stats.entry(k).or_default() += 1;
    }

    /// One random operation; returns the address range it changed.
    fn step(&mut self) -> Option<(usize, usize)> {
        let owned = self.m.owned_pages();
        let can_grow = self.m.chunks.len() < self.cfg.max_chunks;
        // Grows are spread over the run: the heap reaches its cap late.
        let grow_per_mille = if self.m.chunks.len() < 4 { 20 } else { 3 };
        if owned == 0 || (can_grow && self.rng.below(1000) < grow_per_mille) {
            return self.do_grow();
        }
        let occupancy = self.m.in_use * 100 / owned;
        // Phases: mostly the heap lives between half full and full, where
        // allocations both succeed and fail; now and then it is drained to
        // nearly empty, where long runs (many chunks) are free.
        match self.drain_to {
            Some(target) if occupancy <= target => self.drain_to = None,
            None if occupancy >= 95 || self.rng.below(1000) < 3 => {
                self.drain_to = Some(self.rng.range(0, 30));
            }
            _ => {}
        }
        let free_weight = if self.drain_to.is_some() { 85 } else { 5 + occupancy / 2 };
        let r = self.rng.below(100);
        if r < free_weight && !self.m.live.is_empty() {
            return self.do_free();
        }
        match self.rng.below(100) {
            0..=14 => {
                self.do_find();
                None
            }
            15..=59 => self.do_alloc(),
            60..=79 => self.do_alloc_aligned(),
            _ => self.do_alloc_range(),
        }
    }

    fn do_find(&mut self) {
        let n = self.rng.npages();
        self.record(Op::Find(n));
        let (got, hint) = self.pa.find(n);
        let want = self.m.find(n);
        assert_eq!(got, want, "find({n}): got {}, want {}; {}", hex(got), hex(want), self.ctx());
        if got.is_some() {
            // A failed find returns no usable hint (as in Go); a successful
            // one must return a hint that keeps the invariant.
            if let Some(p) = self.m.all_in_use_below(hint) {
                panic!("find({n}) returned hint {hint:#x} above free page {p:#x}; {}", self.ctx());
            }
        }
    }

    fn do_alloc(&mut self) -> Option<(usize, usize)> {
        let n = self.rng.npages();
        self.record(Op::Alloc(n));
        let got = self.pa.alloc(n);
        let want = self.m.find(n);
        assert_eq!(
            got.map(|r| r.base),
            want,
            "alloc({n}): got {}, want {}; {}",
            hex(got.map(|r| r.base)),
            hex(want),
            self.ctx()
        );
        self.stat(match (n, got) {
            (1, Some(_)) => "alloc 1 page",
            (2..=64, Some(_)) => "alloc 2..=64 pages",
            (65..=512, Some(_)) => "alloc 65..=512 pages",
            (_, Some(_)) => "alloc > 512 pages",
            (_, None) => "alloc failed",
        });
        if let Some(r) = got {
            let last = r.base + n * PS - 1;
            if chunk_index(r.base) != chunk_index(last) {
                self.stat("alloc across chunks");
            }
            if r.base >> LEVEL_SHIFT[0] != last >> LEVEL_SHIFT[0] {
                self.stat("alloc across root entries");
            }
        }
        let run = got?;
        self.allocated(run.base, n, run.scavenged_bytes)
    }

    fn do_alloc_aligned(&mut self) -> Option<(usize, usize)> {
        let n = if self.rng.chance(50) { self.rng.range(1, 8) } else { self.rng.npages() };
        let align = 1 << self.rng.below(11);
        self.record(Op::AllocAligned(n, align));
        let got = self.pa.alloc_aligned(n, align);
        let want = self.m.alloc_aligned_place(n, align);
        match (want, self.m.find(n)) {
            (Some(w), Some(f)) if w == f.next_multiple_of(align * PS) => self.stat("aligned in lowest run"),
            (Some(_), _) => self.stat("aligned in wide run"),
            (None, _) => self.stat("aligned failed"),
        }
        assert_eq!(
            got.map(|r| r.base),
            want,
            "alloc_aligned({n}, {align}): got {}, want {} (the documented placement); {}",
            hex(got.map(|r| r.base)),
            hex(want),
            self.ctx()
        );
        let run = got?;
        assert_eq!(run.base % (align * PS), 0, "alloc_aligned({n}, {align}) misaligned; {}", self.ctx());
        self.allocated(run.base, n, run.scavenged_bytes)
    }

    /// Applies an allocation the heap made to the model and checks the
    /// scavenged bytes it reported.
    fn allocated(&mut self, base: usize, n: usize, scavenged_bytes: usize) -> Option<(usize, usize)> {
        let scav = self.m.set_run(base, n, Page::InUse);
        assert_eq!(scavenged_bytes, scav * PS, "scavenged bytes of {n} pages at {base:#x}; {}", self.ctx());
        self.m.live.insert(base, n);
        Some((base, base + n * PS))
    }

    fn do_alloc_range(&mut self) -> Option<(usize, usize)> {
        // A random free page: a random chunk with free pages, a random page
        // in it, then the next free page (cyclically) in that chunk.
        let candidates: Vec<usize> =
            self.m.chunks.iter().filter(|(_, c)| c.in_use < CHUNK_PAGES).map(|(&ci, _)| ci).collect();
        if candidates.is_empty() {
            return None;
        }
        let ci = candidates[self.rng.below(candidates.len())];
        let c = &self.m.chunks[&ci];
        let s = self.rng.below(CHUNK_PAGES);
        let i = (0..CHUNK_PAGES).map(|k| (s + k) % CHUNK_PAGES).find(|&i| c.pages[i] != Page::InUse).unwrap();
        let base = chunk_base(ci) + i * PS;
        let avail = self.m.free_run_len(base, 4096);
        let n = self.rng.npages().min(avail);
        self.record(Op::AllocRange(base, n));
        let got = self.pa.alloc_range(base, n);
        let scav = self.m.set_run(base, n, Page::InUse);
        assert_eq!(got, scav * PS, "alloc_range({base:#x}, {n}) scavenged bytes; {}", self.ctx());
        self.m.live.insert(base, n);
        Some((base, base + n * PS))
    }

    fn do_free(&mut self) -> Option<(usize, usize)> {
        let (base, n) = if self.rng.chance(85) {
            // A live allocation, whole or a sub-run of it.
            let k = self.rng.below(self.m.live.len());
            let (&b, &len) = self.m.live.iter().nth(k).unwrap();
            if self.rng.chance(if self.drain_to.is_some() { 95 } else { 70 }) {
                (b, len)
            } else {
                let off = self.rng.below(len);
                (b + off * PS, self.rng.range(1, len - off))
            }
        } else {
            // A sub-run of the in-use pages around a random in-use page,
            // which may span several allocations and chunk boundaries.
            let candidates: Vec<usize> =
                self.m.chunks.iter().filter(|(_, c)| c.in_use > 0).map(|(&ci, _)| ci).collect();
            let ci = candidates[self.rng.below(candidates.len())];
            let c = &self.m.chunks[&ci];
            let s = self.rng.below(CHUNK_PAGES);
            let i = (0..CHUNK_PAGES).map(|k| (s + k) % CHUNK_PAGES).find(|&i| c.pages[i] == Page::InUse).unwrap();
            let at = chunk_base(ci) + i * PS;
            let mut lo = at;
            while at - lo < 3000 * PS && lo > PS && self.m.page(lo - PS) == Some(Page::InUse) {
                lo -= PS;
            }
            let mut hi = at + PS;
            while hi - at < 3000 * PS && self.m.page(hi) == Some(Page::InUse) {
                hi += PS;
            }
            let pages = (hi - lo) / PS;
            let off = self.rng.below(pages);
            (lo + off * PS, self.rng.range(1, pages - off))
        };
        let scavenged = self.rng.chance(50);
        if chunk_index(base) != chunk_index(base + n * PS - 1) {
            self.stat("free across chunks");
        }
        self.record(Op::Free(base, n, scavenged));
        self.pa.free(base, n, scavenged);
        self.m.set_run(base, n, if scavenged { Page::Scavenged } else { Page::Free });
        self.m.forget_live(base, n);
        Some((base, base + n * PS))
    }

    /// Picks a range to grow: adjacent to, near, or far from the ranges
    /// owned so far, above or below them, sometimes straddling or meeting a
    /// root-entry (16 GiB) boundary.
    fn pick_grow(&mut self) -> Option<(usize, usize)> {
        let nchunks = match self.rng.below(10) {
            0..=5 => 1,
            6..=8 => self.rng.range(2, 4),
            _ => self.rng.range(5, 10),
        };
        if self.m.chunks.len() + nchunks > self.cfg.max_chunks {
            return None;
        }
        let size = nchunks * CHUNK_BYTES;
        let chunks = |k: usize| k * CHUNK_BYTES;
        let base = if self.m.ranges.is_empty() {
            REGION_LO + chunks(self.rng.below((REGION_HI - REGION_LO) / CHUNK_BYTES / 2))
        } else {
            let (b, l) = self.m.ranges[self.rng.below(self.m.ranges.len())];
            let gap = chunks(self.rng.range(1, 64));
            let far = chunks(self.rng.range(16 * GIB / CHUNK_BYTES, 64 * GIB / CHUNK_BYTES));
            match self.rng.below(100) {
                0..=19 => l,
                20..=34 => b.checked_sub(size)?,
                35..=54 => l + gap,
                55..=69 => b.checked_sub(size + gap)?,
                70..=79 => l + far,
                80..=84 => b.checked_sub(size + far)?,
                85..=92 => {
                    // Straddle (or start or end at) the next root boundary.
                    let boundary = l.next_multiple_of(ROOT_BYTES);
                    boundary - chunks(self.rng.range(0, nchunks))
                }
                _ => {
                    // Straddle (or start or end at) the root boundary below.
                    let boundary = b & !(ROOT_BYTES - 1);
                    boundary.checked_sub(chunks(self.rng.range(0, nchunks)))?
                }
            }
        };
        let limit = base.checked_add(size)?;
        if base < REGION_LO || limit > REGION_HI || self.m.overlaps(base, limit) {
            return None;
        }
        Some((base, limit))
    }

    fn do_grow(&mut self) -> Option<(usize, usize)> {
        let (base, limit) = (0..8).find_map(|_| self.pick_grow())?;
        // Sometimes pass an unaligned base and size that `grow` rounds out
        // to exactly [base, limit).
        let (raw_base, raw_size) = if self.rng.chance(15) {
            let raw_base = base + self.rng.below(CHUNK_BYTES);
            let cut = self.rng.below(CHUNK_BYTES.min(limit - raw_base));
            (raw_base, limit - cut - raw_base)
        } else {
            (base, limit - base)
        };
        self.record(Op::Grow(raw_base, raw_size));
        self.stat("grow");
        if self.m.ranges.iter().any(|&(b, l)| b == limit || l == base) {
            self.stat("grow adjacent");
        }
        if base >> LEVEL_SHIFT[0] != (limit - 1) >> LEVEL_SHIFT[0] || base % ROOT_BYTES == 0 || limit % ROOT_BYTES == 0
        {
            self.stat("grow at a root boundary");
        }
        if limit - base > CHUNK_BYTES {
            self.stat("grow of several chunks");
        }
        let r = self.pa.grow(raw_base, raw_size);
        assert_eq!(r, Ok(()), "grow failed; {}", self.ctx());
        self.m.grow(base, limit);
        let got: Vec<(usize, usize)> = self.pa.in_use().as_slice().iter().map(|r| (r.base, r.limit)).collect();
        assert_eq!(got, self.m.ranges, "owned ranges after grow; {}", self.ctx());
        Some((base, limit))
    }

    /// The checks made after every operation: every chunk's bitmaps, in-use
    /// count and leaf summary; the summaries at every level above the pages
    /// the operation changed; the counters; the search hint.
    fn check_after(&self, touched: Option<(usize, usize)>) {
        for (&ci, c) in &self.m.chunks {
            let Some(pc) = self.pa.chunk(ci) else { panic!("chunk {ci:#x} has no data; {}", self.ctx()) };
            if pc.alloc.words() != &c.derived.alloc || pc.scavenged.words() != &c.derived.scav {
                panic!(
                    "chunk {ci:#x} bitmaps differ:\n alloc {:016x?}\n want  {:016x?}\n scav  {:016x?}\n want  {:016x?}\n{}",
                    pc.alloc.words(),
                    c.derived.alloc,
                    pc.scavenged.words(),
                    c.derived.scav,
                    self.ctx()
                );
            }
            assert_eq!(pc.pages_in_use(), c.in_use, "chunk {ci:#x} in-use count; {}", self.ctx());
            let lo = chunk_base(ci);
            assert_eq!(
                self.pa.summary(LEAF, ci).unpack(),
                self.m.summary(lo, lo + CHUNK_BYTES),
                "leaf summary of chunk {ci:#x}; {}",
                self.ctx()
            );
        }
        if let Some((base, limit)) = touched {
            for (l, shift) in LEVEL_SHIFT.into_iter().enumerate().take(LEAF) {
                for idx in (base >> shift)..=((limit - 1) >> shift) {
                    let lo = idx << shift;
                    assert_eq!(
                        self.pa.summary(l, idx).unpack(),
                        self.m.summary(lo, lo + (1 << shift)),
                        "summary level {l} index {idx:#x} (touched); {}",
                        self.ctx()
                    );
                }
            }
        }
        self.check_counters(self.m.in_use, self.m.scavenged);
        if let Some(p) = self.m.all_in_use_below(self.pa.search_addr()) {
            panic!("search_addr {:#x} is above free page {p:#x}; {}", self.pa.search_addr(), self.ctx());
        }
    }

    fn check_counters(&self, in_use: usize, scavenged: usize) {
        let owned = self.m.owned_pages();
        assert_eq!(self.pa.pages_in_use(), in_use, "pages_in_use; {}", self.ctx());
        assert_eq!(self.pa.pages_scavenged(), scavenged, "pages_scavenged; {}", self.ctx());
        assert_eq!(
            self.pa.pages_free_unscavenged(),
            owned - in_use - scavenged,
            "pages_free_unscavenged; {}",
            self.ctx()
        );
        assert_eq!(self.pa.mapped_bytes(), owned * PS, "mapped_bytes; {}", self.ctx());
    }

    /// Everything, from the page states alone: counters recounted, bitmaps
    /// bit by bit, and every summary entry under owned address space at
    /// every level (plus: the entries sharing a block with them that cover
    /// no owned address space are full, as `find` reads whole blocks).
    fn full_sweep(&self) {
        let mut in_use = 0;
        let mut scavenged = 0;
        for (&ci, c) in &self.m.chunks {
            let pc = self.pa.chunk(ci).unwrap();
            for (i, &p) in c.pages.iter().enumerate() {
                assert_eq!(
                    (pc.alloc.get(i), pc.scavenged.get(i)),
                    (p == Page::InUse, p == Page::Scavenged),
                    "page {:#x} is {p:?}; {}",
                    chunk_base(ci) + i * PS,
                    self.ctx()
                );
            }
            in_use += c.pages.iter().filter(|&&p| p == Page::InUse).count();
            scavenged += c.pages.iter().filter(|&&p| p == Page::Scavenged).count();
        }
        self.check_counters(in_use, scavenged);
        let ranges: Vec<(usize, usize)> = self.pa.in_use().as_slice().iter().map(|r| (r.base, r.limit)).collect();
        assert_eq!(ranges, self.m.ranges, "owned ranges; {}", self.ctx());
        for l in 0..SUMMARY_LEVELS {
            let shift = LEVEL_SHIFT[l];
            let owned: BTreeSet<usize> =
                ranges.iter().flat_map(|&(b, lim)| (b >> shift)..=((lim - 1) >> shift)).collect();
            for &idx in &owned {
                let lo = idx << shift;
                assert_eq!(
                    self.pa.summary(l, idx).unpack(),
                    self.m.summary_by_pages(lo, lo + (1 << shift)),
                    "summary level {l} index {idx:#x}; {}",
                    self.ctx()
                );
            }
            let block = 1usize << LEVEL_BITS[l];
            let blocks: BTreeSet<usize> = owned.iter().map(|&i| i & !(block - 1)).collect();
            for b in blocks {
                for idx in (b..b + block).filter(|i| !owned.contains(i)) {
                    assert!(
                        self.pa.summary(l, idx).is_full(),
                        "summary level {l} index {idx:#x} covers no owned pages but is {:?}; {}",
                        self.pa.summary(l, idx),
                        self.ctx()
                    );
                }
            }
        }
        if let Some(p) = self.m.all_in_use_below(self.pa.search_addr()) {
            panic!("search_addr {:#x} is above free page {p:#x}; {}", self.pa.search_addr(), self.ctx());
        }
    }
}

// ---------------------------------------------------------------------------
// Randomised runs: 8 × 20 000 = 160 000 operations.

const OPS_PER_SEED: usize = 20_000;

fn random_run(seed: u64, max_chunks: usize) {
    Harness::new(Config { seed, ops: OPS_PER_SEED, max_chunks, sweep_every: 250 }).run();
}

#[test]
fn random_ops_seed_1() {
    random_run(1, 40);
}

#[test]
fn random_ops_seed_2() {
    random_run(2, 40);
}

#[test]
fn random_ops_seed_3() {
    random_run(3, 24);
}

#[test]
fn random_ops_seed_4() {
    random_run(4, 24);
}

#[test]
fn random_ops_seed_5() {
    // A small heap: exhaustion and failed allocations are common.
    random_run(5, 8);
}

#[test]
fn random_ops_seed_6() {
    random_run(6, 12);
}

#[test]
fn random_ops_seed_7() {
    random_run(7, 64);
}

#[test]
fn random_ops_seed_8() {
    random_run(0x5ca1_ab1e_0000_0008, 32);
}

// ---------------------------------------------------------------------------
// Deterministic edge cases.

/// A root-aligned base, with free root entries on both sides.
const BASE: usize = REGION_LO + 4 * ROOT_BYTES;

fn leaf(pa: &PageAlloc, addr: usize) -> (usize, usize, usize) {
    pa.summary(LEAF, chunk_index(addr)).unpack()
}

fn root(pa: &PageAlloc, addr: usize) -> (usize, usize, usize) {
    pa.summary(0, addr >> LEVEL_SHIFT[0]).unpack()
}

#[test]
fn alloc_exactly_filling_a_chunk() {
    let mut pa = Box::new(PageAlloc::new());
    pa.grow(BASE, CHUNK_BYTES).unwrap();
    assert_eq!(leaf(&pa, BASE), (512, 512, 512), "a whole free chunk");
    assert_eq!(pa.alloc(513), None);
    let run = pa.alloc(CHUNK_PAGES).unwrap();
    assert_eq!(run, PageRun { base: BASE, scavenged_bytes: CHUNK_BYTES });
    assert_eq!(leaf(&pa, BASE), (0, 0, 0));
    assert!(pa.summary(LEAF, chunk_index(BASE)).is_full());
    for (l, shift) in LEVEL_SHIFT.into_iter().enumerate().take(LEAF) {
        assert_eq!(pa.summary(l, BASE >> shift).unpack(), (0, 0, 0), "level {l}");
    }
    assert_eq!((pa.pages_in_use(), pa.pages_scavenged(), pa.pages_free_unscavenged()), (512, 0, 0));
    assert_eq!(pa.alloc(1), None);
    assert_eq!(pa.find(1).0, None);
    pa.free(BASE, CHUNK_PAGES, false);
    assert_eq!(leaf(&pa, BASE), (512, 512, 512));
    assert_eq!((pa.pages_in_use(), pa.pages_scavenged(), pa.pages_free_unscavenged()), (0, 0, 512));
    let run = pa.alloc(CHUNK_PAGES).unwrap();
    assert_eq!(run, PageRun { base: BASE, scavenged_bytes: 0 }, "freed unscavenged");
    // Fill it from a partly used chunk: the last page is the exact fit.
    pa.free(BASE + PS, CHUNK_PAGES - 1, true);
    assert_eq!(leaf(&pa, BASE), (0, 511, 511));
    let run = pa.alloc(CHUNK_PAGES - 1).unwrap();
    assert_eq!(run, PageRun { base: BASE + PS, scavenged_bytes: (CHUNK_PAGES - 1) * PS });
    assert_eq!(leaf(&pa, BASE), (0, 0, 0));
}

#[test]
fn run_crossing_chunk_boundaries() {
    let mut pa = Box::new(PageAlloc::new());
    pa.grow(BASE, 3 * CHUNK_BYTES).unwrap();
    assert_eq!(pa.alloc(100).unwrap().base, BASE);
    // 1000 pages from page 100: through all of chunk 1, into chunk 2.
    let run = pa.alloc(1000).unwrap();
    assert_eq!(run, PageRun { base: BASE + 100 * PS, scavenged_bytes: 1000 * PS });
    assert_eq!(leaf(&pa, BASE), (0, 0, 0));
    assert_eq!(leaf(&pa, BASE + CHUNK_BYTES), (0, 0, 0));
    assert_eq!(leaf(&pa, BASE + 2 * CHUNK_BYTES), (0, 436, 436));
    // The level-3 entry (8 chunks) sees the free tail and the unowned rest
    // as in use.
    assert_eq!(pa.summary(3, BASE >> LEVEL_SHIFT[3]).unpack(), (0, 436, 0));
    // Free a run that crosses the boundary between chunks 0 and 1.
    pa.free(BASE + 500 * PS, 20, false);
    assert_eq!(leaf(&pa, BASE), (0, 12, 12));
    assert_eq!(leaf(&pa, BASE + CHUNK_BYTES), (8, 8, 0));
    assert_eq!(pa.find(20).0, Some(BASE + 500 * PS));
    assert_eq!(pa.find(21).0, Some(BASE + 1100 * PS));
    let run = pa.alloc(20).unwrap();
    assert_eq!(run, PageRun { base: BASE + 500 * PS, scavenged_bytes: 0 });
    // Free everything: the heap is one free run of 1536 pages again, with
    // the freed pages no longer scavenged.
    pa.free(BASE, 1100, false);
    assert_eq!(pa.summary(3, BASE >> LEVEL_SHIFT[3]).unpack(), (1536, 1536, 0));
    let run = pa.alloc(1536).unwrap();
    assert_eq!(run, PageRun { base: BASE, scavenged_bytes: 436 * PS });
}

#[test]
fn run_crossing_a_root_entry_boundary() {
    // Two grows that meet at a 16 GiB boundary, high one first.
    let r = BASE + ROOT_BYTES;
    let mut pa = Box::new(PageAlloc::new());
    pa.grow(r, 2 * CHUNK_BYTES).unwrap();
    pa.grow(r - 2 * CHUNK_BYTES, 2 * CHUNK_BYTES).unwrap();
    let ranges: Vec<_> = pa.in_use().as_slice().iter().map(|x| (x.base, x.limit)).collect();
    assert_eq!(ranges, [(r - 2 * CHUNK_BYTES, r + 2 * CHUNK_BYTES)]);
    assert_eq!(pa.search_addr(), r - 2 * CHUNK_BYTES);
    assert_eq!(root(&pa, r - PS), (0, 1024, 1024));
    assert_eq!(root(&pa, r), (1024, 1024, 0));
    // Leave 212 free pages below the boundary, then ask for 600: the run
    // must start there and cross into the next root entry.
    assert_eq!(pa.alloc_range(r - 2 * CHUNK_BYTES, 812), 812 * PS);
    assert_eq!(pa.find(600).0, Some(r - 212 * PS));
    let run = pa.alloc(600).unwrap();
    assert_eq!(run, PageRun { base: r - 212 * PS, scavenged_bytes: 600 * PS });
    assert_eq!(root(&pa, r - PS), (0, 0, 0));
    assert_eq!(root(&pa, r), (0, 636, 0));
    assert_eq!(leaf(&pa, r), (0, 124, 124));
    // A run needing both sides of the boundary after a partial free.
    pa.free(r - 100 * PS, 200, true);
    assert_eq!(root(&pa, r - PS), (0, 100, 100));
    assert_eq!(root(&pa, r), (100, 636, 0));
    assert_eq!(pa.find(200).0, Some(r - 100 * PS));
    assert_eq!(pa.find(201).0, Some(r + 388 * PS));
    assert_eq!(pa.find(637).0, None);
    let run = pa.alloc_aligned(200, 4).unwrap();
    assert_eq!(run, PageRun { base: r - 100 * PS, scavenged_bytes: 200 * PS });
}

#[test]
fn exhaustion_returns_none_then_free_and_alloc_again() {
    let mut pa = Box::new(PageAlloc::new());
    pa.grow(BASE, 2 * CHUNK_BYTES).unwrap();
    for i in 0..2 * CHUNK_PAGES {
        let run = pa.alloc(1).unwrap();
        assert_eq!(run, PageRun { base: BASE + i * PS, scavenged_bytes: PS }, "page {i}");
    }
    assert_eq!(pa.alloc(1), None);
    assert_eq!(pa.search_addr(), MAX_SEARCH_ADDR, "a failed single-page alloc means the heap is full");
    assert_eq!(pa.alloc(2), None);
    assert_eq!(pa.find(1).0, None);
    assert_eq!(pa.alloc_aligned(1, 8), None);
    assert_eq!(pa.pages_in_use(), 1024);
    // Free two pages that are not neighbours.
    pa.free(BASE + 700 * PS, 1, false);
    pa.free(BASE + 300 * PS, 1, true);
    assert!(pa.search_addr() <= BASE + 300 * PS);
    assert_eq!(pa.alloc(2), None);
    assert_eq!(pa.alloc(1), Some(PageRun { base: BASE + 300 * PS, scavenged_bytes: PS }));
    assert_eq!(pa.alloc(1), Some(PageRun { base: BASE + 700 * PS, scavenged_bytes: 0 }));
    assert_eq!(pa.alloc(1), None);
    // Grow again: the new, lower range is used first.
    pa.grow(BASE - 3 * CHUNK_BYTES, CHUNK_BYTES).unwrap();
    assert_eq!(pa.alloc(512).unwrap().base, BASE - 3 * CHUNK_BYTES);
    assert_eq!(pa.alloc(1), None);
    pa.free(BASE, 1024, false);
    assert_eq!(pa.alloc(1024), Some(PageRun { base: BASE, scavenged_bytes: 0 }));
}

#[test]
fn whole_free_chunk_summary() {
    let mut pa = Box::new(PageAlloc::new());
    // The third chunk of a level-3 entry of 8 chunks.
    let base = BASE + 2 * CHUNK_BYTES;
    pa.grow(base, CHUNK_BYTES).unwrap();
    assert_eq!(leaf(&pa, base), (512, 512, 512));
    assert_eq!(pa.summary(3, base >> LEVEL_SHIFT[3]).unpack(), (0, 512, 0));
    assert_eq!(root(&pa, base), (0, 512, 0));
    // The other chunks of its block exist in the tree but are not owned.
    for k in [0, 1, 3, 7] {
        assert!(pa.summary(LEAF, chunk_index(BASE) + k).is_full(), "chunk {k}");
    }
    assert_eq!((pa.pages_scavenged(), pa.pages_free_unscavenged(), pa.mapped_bytes()), (512, 0, CHUNK_BYTES));
}

#[test]
fn all_free_root_entry() {
    let mut pa = Box::new(PageAlloc::new());
    pa.grow(BASE, ROOT_BYTES).unwrap();
    assert_eq!(root(&pa, BASE), (ROOT_PAGES, ROOT_PAGES, ROOT_PAGES));
    assert_eq!(ROOT_PAGES, 1 << 21);
    for j in 0..8 {
        let idx = (BASE >> LEVEL_SHIFT[1]) + j;
        assert_eq!(pa.summary(1, idx).unpack(), (1 << 18, 1 << 18, 1 << 18), "level 1 entry {j}");
    }
    assert!(pa.summary(0, (BASE >> LEVEL_SHIFT[0]) - 1).is_full());
    assert!(pa.summary(0, (BASE >> LEVEL_SHIFT[0]) + 1).is_full());
    assert_eq!(pa.pages_scavenged(), ROOT_PAGES);
    assert_eq!(pa.find(ROOT_PAGES).0, Some(BASE));
    assert_eq!(pa.find(ROOT_PAGES + 1).0, None);
    // One page in use at the very end.
    assert_eq!(pa.alloc_range(BASE + ROOT_BYTES - PS, 1), PS);
    assert_eq!(root(&pa, BASE), (ROOT_PAGES - 1, ROOT_PAGES - 1, 0));
    pa.free(BASE + ROOT_BYTES - PS, 1, false);
    assert_eq!(root(&pa, BASE), (ROOT_PAGES, ROOT_PAGES, ROOT_PAGES));
    // And all of it in use, then free again.
    let run = pa.alloc(ROOT_PAGES).unwrap();
    assert_eq!(run, PageRun { base: BASE, scavenged_bytes: ROOT_BYTES - PS });
    assert_eq!(root(&pa, BASE), (0, 0, 0));
    pa.free(BASE, ROOT_PAGES, true);
    assert_eq!(root(&pa, BASE), (ROOT_PAGES, ROOT_PAGES, ROOT_PAGES));
    assert_eq!(pa.pages_scavenged(), ROOT_PAGES);
}

#[test]
fn alloc_aligned_follows_the_documented_placement() {
    // One chunk: page 0 in use, [1, 3) free, 3 in use, [4, 6) free, [6, 8)
    // in use, [8, 512) free.
    let mut pa = Box::new(PageAlloc::new());
    pa.grow(BASE, CHUNK_BYTES).unwrap();
    pa.alloc_range(BASE, 8);
    pa.free(BASE + PS, 2, false);
    pa.free(BASE + 4 * PS, 2, false);
    // The lowest fit of 2 pages is page 1; rounded up to 4 it is page 4,
    // where [4, 6) is free: the lowest aligned fit, by the documented rule.
    assert_eq!(pa.find(2).0, Some(BASE + PS));
    let got = pa.alloc_aligned(2, 4).map(|r| (r.base - BASE) / PS);
    assert_eq!(got, Some(4), "page index of alloc_aligned(2, 4): documented placement is page 4");
    // Now page 4 is taken: page 8 (rounded up from the lowest fit, page 1,
    // is 4, in use), so the run goes to the lowest free run of
    // 2 + 4 - 1 = 5 pages, [8, 512), at page 8.
    let got = pa.alloc_aligned(2, 4).map(|r| (r.base - BASE) / PS);
    assert_eq!(got, Some(8), "page index of the second alloc_aligned(2, 4)");
}

#[test]
fn alloc_aligned_without_a_wide_run_fails_by_the_documented_rule() {
    // One chunk: page 0 in use, [1, 3) free, [3, 5) in use, [5, 7) free,
    // the rest in use. No free run of 2 + 4 - 1 = 5 pages exists and the
    // lowest fit rounded up to 4 pages (page 4) is in use, so by the
    // documented rule alloc_aligned(2, 4) fails (and changes nothing),
    // although [5, 7) is free.
    let mut pa = Box::new(PageAlloc::new());
    pa.grow(BASE, CHUNK_BYTES).unwrap();
    pa.alloc_range(BASE, CHUNK_PAGES);
    pa.free(BASE + PS, 2, false);
    pa.free(BASE + 5 * PS, 2, false);
    assert_eq!(pa.find(5).0, None);
    let got = pa.alloc_aligned(2, 4).map(|r| (r.base - BASE) / PS);
    assert_eq!(got, None, "page index of alloc_aligned(2, 4): by the documented rule it fails");
    assert_eq!(pa.pages_in_use(), CHUNK_PAGES - 4);
}

#[test]
fn alloc_aligned_uses_the_lowest_run_when_it_has_room() {
    let mut pa = Box::new(PageAlloc::new());
    pa.grow(BASE, 2 * CHUNK_BYTES).unwrap();
    pa.alloc_range(BASE, 3);
    // The lowest run [3, 1024) has room for 16 pages at 64.
    let run = pa.alloc_aligned(16, 64).unwrap();
    assert_eq!(run, PageRun { base: BASE + 64 * PS, scavenged_bytes: 16 * PS });
    // No free run of 1000 pages is left at all.
    assert_eq!(pa.alloc_aligned(1000, 512), None);
    assert_eq!(pa.alloc_aligned(400, 512).unwrap().base, BASE + CHUNK_BYTES);
    // Everything below the hint is still in use.
    assert!(pa.search_addr() <= BASE + 3 * PS);
}

#[test]
fn zero_pages_is_never_found() {
    let mut pa = Box::new(PageAlloc::new());
    assert_eq!(pa.find(1).0, None, "empty heap");
    assert_eq!(pa.alloc(1), None, "empty heap");
    pa.grow(BASE, CHUNK_BYTES).unwrap();
    assert_eq!(pa.find(0).0, None);
    assert_eq!(pa.alloc(0), None);
    pa.free(BASE, 0, false);
    assert_eq!(pa.pages_in_use(), 0);
}

#[test]
fn run_longer_than_a_root_entry() {
    // Two all-free root entries side by side: 2^22 free pages.
    let mut pa = Box::new(PageAlloc::new());
    pa.grow(BASE, 2 * ROOT_BYTES).unwrap();
    assert_eq!(root(&pa, BASE), (ROOT_PAGES, ROOT_PAGES, ROOT_PAGES));
    assert_eq!(root(&pa, BASE + ROOT_BYTES), (ROOT_PAGES, ROOT_PAGES, ROOT_PAGES));
    assert_eq!(pa.find(2 * ROOT_PAGES).0, Some(BASE));
    assert_eq!(pa.find(2 * ROOT_PAGES + 1).0, None);
    assert_eq!(pa.alloc_range(BASE, 1), PS);
    assert_eq!(pa.find(ROOT_PAGES + 1).0, Some(BASE + PS));
    let run = pa.alloc(ROOT_PAGES + 1).unwrap();
    assert_eq!(run, PageRun { base: BASE + PS, scavenged_bytes: (ROOT_PAGES + 1) * PS });
    assert_eq!(root(&pa, BASE), (0, 0, 0));
    assert_eq!(root(&pa, BASE + ROOT_BYTES), (0, ROOT_PAGES - 2, ROOT_PAGES - 2));
    assert_eq!(pa.find(ROOT_PAGES - 2).0, Some(BASE + ROOT_BYTES + 2 * PS));
    assert_eq!(pa.find(ROOT_PAGES - 1).0, None);
    assert_eq!(pa.pages_in_use(), ROOT_PAGES + 2);
}

#[test]
fn alloc_range_of_zero_pages_changes_nothing() {
    // An empty range is a no-op, as it is for `free`; at a chunk boundary
    // the page range [base, base - 1] must not be read as "from base to the
    // end of its chunk, then the whole previous chunk".
    let mut pa = Box::new(PageAlloc::new());
    pa.grow(BASE, 2 * CHUNK_BYTES).unwrap();
    assert_eq!(pa.alloc_range(BASE + 5 * PS, 0), 0, "scavenged bytes of alloc_range(base inside a chunk, 0)");
    assert_eq!(pa.alloc_range(BASE + CHUNK_BYTES, 0), 0, "scavenged bytes of alloc_range(chunk-aligned base, 0)");
    assert_eq!(pa.pages_in_use(), 0);
    for ci in [chunk_index(BASE), chunk_index(BASE) + 1] {
        assert_eq!(pa.chunk(ci).unwrap().pages_in_use(), 0, "chunk {ci:#x}");
        assert_eq!(pa.chunk(ci).unwrap().alloc.count(), 0, "chunk {ci:#x}");
        assert_eq!(pa.chunk(ci).unwrap().scavenged.count(), CHUNK_PAGES, "chunk {ci:#x}");
        assert_eq!(pa.summary(LEAF, ci).unpack(), (512, 512, 512), "chunk {ci:#x}");
    }
    assert_eq!(pa.alloc(1024), Some(PageRun { base: BASE, scavenged_bytes: 1024 * PS }));
}

/// Scavenger steps (find a chunk through the index, take a candidate run,
/// release it or fail to, put it back) mixed with allocations and frees,
/// against a per-page model: after every step the counters add up, the
/// bitmaps match, `alloc` reports exactly the released pages it took, and
/// every chunk holding a free, unreleased page is marked in the index.
#[test]
fn release_steps_keep_counters_bitmaps_and_index_exact() {
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum St {
        Used,
        Free,
        Released,
    }
    const CHUNKS: usize = 6;
    let mut rng = Rng::new(0x5ca7_e1de);
    let mut pa = Box::new(PageAlloc::new());
    pa.grow(BASE, CHUNKS * CHUNK_BYTES).unwrap();
    let npages = CHUNKS * CHUNK_PAGES;
    let mut model = vec![St::Released; npages];
    let mut live: Vec<(usize, usize)> = Vec::new();
    let page_of = |addr: usize| (addr - BASE) / PS;
    for step in 0..20_000 {
        match rng.below(10) {
            0..=3 => {
                let big = rng.below(4) == 0;
                let n = 1 + rng.below(if big { 700 } else { 16 });
                if let Some(run) = pa.alloc(n) {
                    let p = page_of(run.base);
                    let released = model[p..p + n].iter().filter(|&&s| s == St::Released).count();
                    assert_eq!(run.scavenged_bytes, released * PS, "step {step}");
                    assert!(model[p..p + n].iter().all(|&s| s != St::Used), "step {step}");
                    model[p..p + n].iter_mut().for_each(|s| *s = St::Used);
                    live.push((p, n));
                }
            }
            4..=6 if !live.is_empty() => {
                let (p, n) = live.swap_remove(rng.below(live.len()));
                pa.free(BASE + p * PS, n, false);
                model[p..p + n].iter_mut().for_each(|s| *s = St::Free);
            }
            _ => {
                let Some(ci) = pa.index().find() else { continue };
                let max = 1 + rng.below(300);
                let huge = [1, 64, 256][rng.below(3)];
                let skip_dense = rng.below(2) == 0;
                match pa.release_candidate(ci, 1, max, huge, skip_dense) {
                    ReleaseCandidate::Run { base, npages: n, released } => {
                        // One heap page per physical page: nothing released
                        // qualifies.
                        assert_eq!(released, 0, "step {step}");
                        let p = page_of(base);
                        assert!(model[p..p + n].iter().all(|&s| s == St::Free), "step {step}: candidate not free");
                        pa.begin_release(base, n);
                        assert_eq!(pa.pages_releasing(), n);
                        assert!(!pa.is_free(base, n), "a run being released must not be allocatable");
                        let ok = rng.below(8) != 0;
                        pa.end_release(base, n, ok);
                        if ok {
                            model[p..p + n].iter_mut().for_each(|s| *s = St::Released);
                        }
                    }
                    ReleaseCandidate::Dense => assert!(skip_dense),
                    ReleaseCandidate::Nothing => {
                        let first = (ci - chunk_index(BASE)) * CHUNK_PAGES;
                        assert!(
                            model[first..first + CHUNK_PAGES].iter().all(|&s| s != St::Free),
                            "step {step}: chunk {ci:#x} has free pages but no candidate"
                        );
                    }
                }
            }
        }
        // Counters against the model.
        let count = |st: St| model.iter().filter(|&&s| s == st).count();
        assert_eq!(pa.pages_in_use(), count(St::Used), "step {step}");
        assert_eq!(pa.pages_scavenged(), count(St::Released), "step {step}");
        assert_eq!(pa.pages_free_unscavenged(), count(St::Free), "step {step}");
        assert_eq!(pa.pages_releasing(), 0);
        assert_eq!(pa.mapped_bytes() / PS, npages);
        if step % 97 == 0 {
            for c in 0..CHUNKS {
                let ci = chunk_index(BASE) + c;
                let chunk = pa.chunk(ci).unwrap();
                let pages = &model[c * CHUNK_PAGES..(c + 1) * CHUNK_PAGES];
                for (i, &s) in pages.iter().enumerate() {
                    assert_eq!(chunk.alloc.get(i), s == St::Used, "step {step} page {i}");
                    assert_eq!(chunk.scavenged.get(i), s == St::Released, "step {step} page {i}");
                }
                if pages.contains(&St::Free) {
                    assert!(pa.index().is_marked(ci), "step {step}: chunk {c} has free pages but is not marked");
                }
            }
        }
    }
}
