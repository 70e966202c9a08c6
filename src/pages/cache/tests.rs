//! The page cache's blocks against a naive model of every page's state.
//!
//! A standalone [`PageAlloc`] at fake addresses (never touched) with three
//! chunks, and a few blocks standing for CPU slots. Random steps make and
//! free span-sized runs through the blocks (refilling from the heap on a
//! miss), free runs to the heap directly, return blocks, allocate longer
//! runs from the heap (across chunk boundaries) and release free runs as a
//! scavenger does. The model knows, per page, whether it is in use, free
//! in the heap (released or not), free in block `k` (released or not) or
//! in slot `k`'s pending batch;
//! after every step the heap's bitmaps, its counters, its searches, and
//! every block's bits are compared with it, and every answer (address,
//! released bytes) with the model's own.

use super::*;
use crate::pages::{ReleaseCandidate, CHUNK_BYTES, CHUNK_PAGES};
use crate::testutil::Rng;

const PS: usize = PAGE_SIZE;
const CHUNKS: usize = 3;
const PAGES: usize = CHUNKS * CHUNK_PAGES;
const SLOTS: usize = 3;
/// A chunk-aligned fake address.
const BASE: usize = 0x3000_0000_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Used,
    Free { scav: bool },
    Cached { slot: usize, scav: bool },
    Pending { slot: usize },
}

struct Harness {
    pa: PageAlloc,
    blocks: [Block; SLOTS],
    pending: [Pending; SLOTS],
    pages: Vec<St>,
    /// Live runs: (first page, pages).
    live: Vec<(usize, usize)>,
    rng: Rng,
    step: usize,
}

fn addr(page: usize) -> usize {
    BASE + page * PS
}

fn page_of(a: usize) -> usize {
    (a - BASE) / PS
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let mut pa = PageAlloc::new();
        pa.grow(BASE, CHUNKS * CHUNK_BYTES).unwrap();
        Harness {
            pa,
            blocks: [Block::NONE; SLOTS],
            pending: [Pending::EMPTY; SLOTS],
            pages: vec![St::Free { scav: true }; PAGES],
            live: Vec::new(),
            rng: Rng::new(seed),
            step: 0,
        }
    }

    fn heap_free(&self, p: usize) -> bool {
        matches!(self.pages[p], St::Free { .. })
    }

    /// The model's lowest run of `n` heap-free pages, if any.
    fn lowest_fit(&self, n: usize) -> Option<usize> {
        let mut run = 0;
        for p in 0..PAGES {
            run = if self.heap_free(p) { run + 1 } else { 0 };
            if run == n {
                return Some(p + 1 - n);
            }
        }
        None
    }

    /// Where `alloc_aligned` places a run, by its documented rule.
    fn aligned_place(&self, n: usize, align: usize) -> Option<usize> {
        let first = self.lowest_fit(n)?;
        let aligned = first.next_multiple_of(align);
        if aligned + n <= PAGES && (aligned..aligned + n).all(|p| self.heap_free(p)) {
            return Some(aligned);
        }
        Some(self.lowest_fit(n + align - 1)?.next_multiple_of(align))
    }

    /// The lowest run of `n` pages aligned to `align` free in block `k`.
    fn block_fit(&self, k: usize, n: usize, align: usize) -> Option<usize> {
        let b = self.blocks[k].base;
        if b == 0 {
            return None;
        }
        let first = page_of(b);
        (first..first + BLOCK_PAGES - n + 1)
            .step_by(align)
            .find(|&p| (p..p + n).all(|q| matches!(self.pages[q], St::Cached { slot, .. } if slot == k)))
    }

    fn take(&mut self, first: usize, n: usize) -> usize {
        let mut scav = 0;
        for p in first..first + n {
            match self.pages[p] {
                St::Free { scav: s } | St::Cached { scav: s, .. } => scav += s as usize,
                St::Used | St::Pending { .. } => panic!("step {}: page {p} handed out twice", self.step),
            }
            self.pages[p] = St::Used;
        }
        self.live.push((first, n));
        scav * PS
    }

    fn model_flush(&mut self, k: usize) {
        self.model_flush_pending(k);
        for st in self.pages.iter_mut() {
            if let St::Cached { slot, scav } = *st {
                if slot == k {
                    *st = St::Free { scav };
                }
            }
        }
    }

    fn model_flush_pending(&mut self, k: usize) {
        for st in self.pages.iter_mut() {
            if *st == (St::Pending { slot: k }) {
                *st = St::Free { scav: false };
            }
        }
    }

    fn small_alloc(&mut self) {
        let k = self.rng.below(SLOTS);
        let n = if self.rng.chance(50) { 1 } else { self.rng.range(2, MAX_CACHED_RUN - 1) };
        let align = [1, 1, 1, 2, 4, 8][self.rng.below(6)];
        let expect_hit = self.block_fit(k, n, align);
        let got = match self.blocks[k].alloc(n, align) {
            Some(run) => {
                assert_eq!(Some(page_of(run.base)), expect_hit, "step {}: block {k} alloc {n}/{align}", self.step);
                run
            }
            None => {
                assert_eq!(expect_hit, None, "step {}: block {k} missed a fit of {n}/{align}", self.step);
                self.model_flush(k);
                let expect = self.aligned_place(n, align);
                self.pending[k].flush(&mut self.pa);
                let run = self.blocks[k].refill(&mut self.pa, n, align);
                assert_eq!(run.map(|r| page_of(r.base)), expect, "step {}: refill {n}/{align}", self.step);
                let Some(run) = run else {
                    assert_eq!(self.blocks[k], Block::NONE, "a failed refill holds nothing");
                    return;
                };
                let first = page_of(run.base);
                let scav = self.take(first, n);
                assert_eq!(run.scavenged_bytes, scav);
                // The run's own block, if the run fits in one.
                let home = first / BLOCK_PAGES * BLOCK_PAGES;
                let home = (first + n <= home + BLOCK_PAGES).then_some(home);
                assert_eq!(self.blocks[k].base, home.map_or(0, addr), "step {}: the block lent", self.step);
                if let Some(bfirst) = home {
                    for p in bfirst..bfirst + BLOCK_PAGES {
                        if let St::Free { scav } = self.pages[p] {
                            self.pages[p] = St::Cached { slot: k, scav };
                        }
                    }
                }
                return;
            }
        };
        assert_eq!(got.base % (align * PS), 0);
        let scav = self.take(page_of(got.base), n);
        assert_eq!(got.scavenged_bytes, scav, "step {}", self.step);
    }

    fn heap_alloc(&mut self) {
        let n = if self.rng.chance(70) { self.rng.range(1, 80) } else { self.rng.range(100, 700) };
        let expect = self.lowest_fit(n);
        let got = self.pa.alloc(n);
        assert_eq!(got.map(|r| page_of(r.base)), expect, "step {}: heap alloc {n}", self.step);
        if let Some(run) = got {
            let scav = self.take(page_of(run.base), n);
            assert_eq!(run.scavenged_bytes, scav);
        }
    }

    fn free_one(&mut self) {
        if self.live.is_empty() {
            return;
        }
        let (first, n) = self.live.swap_remove(self.rng.below(self.live.len()));
        let released = self.rng.chance(10);
        // Usually the slot whose block holds the run (as when the freeing
        // thread runs on that CPU), sometimes any.
        // (Two blocks may share a base: a page of a lent block freed to the
        // heap can be allocated again by another slot's refill, which lends
        // that block, with nothing free in it, once more. Frees into either
        // are right: each page is free in one place at most.)
        let holds = |b: &Block| b.base != 0 && addr(first) >= b.base && addr(first + n) <= b.base + BLOCK_BYTES;
        let holder = (0..SLOTS).find(|&k| holds(&self.blocks[k]));
        let k = match holder {
            Some(h) if self.rng.chance(70) => h,
            _ => self.rng.below(SLOTS),
        };
        let cacheable = !released && n < MAX_CACHED_RUN;
        let expect = cacheable && holds(&self.blocks[k]);
        let into_block = cacheable && self.blocks[k].free(addr(first), n);
        assert_eq!(into_block, expect, "step {}", self.step);
        let pending = cacheable && !into_block && self.pending[k].push(addr(first), n);
        if cacheable && !into_block && !pending {
            // A full batch goes to the heap, with this run.
            assert_eq!(self.pending[k].len, PENDING_RUNS);
            self.pending[k].flush(&mut self.pa);
            self.model_flush_pending(k);
        }
        for p in first..first + n {
            assert_eq!(self.pages[p], St::Used);
            self.pages[p] = if into_block {
                St::Cached { slot: k, scav: false }
            } else if pending {
                St::Pending { slot: k }
            } else {
                St::Free { scav: released }
            };
        }
        if !into_block && !pending {
            self.pa.free(addr(first), n, released);
        }
    }

    fn flush(&mut self) {
        let k = self.rng.below(SLOTS);
        self.pending[k].flush(&mut self.pa);
        self.blocks[k].flush(&mut self.pa);
        self.model_flush(k);
    }

    /// Releases a free run of a random chunk, as the scavenger does.
    fn scavenge(&mut self) {
        let ci = chunk_index(BASE) + self.rng.below(CHUNKS);
        let max = self.rng.range(1, 100);
        if let ReleaseCandidate::Run { base, npages, .. } = self.pa.release_candidate(ci, 1, max, 1, false) {
            for p in page_of(base)..page_of(base) + npages {
                assert!(self.heap_free(p), "step {}: scavenger offered page {p}: {:?}", self.step, self.pages[p]);
                self.pages[p] = St::Free { scav: true };
            }
            self.pa.begin_release(base, npages);
            self.pa.end_release(base, npages, true);
        }
    }

    fn check(&self) {
        let (mut in_use, mut scavenged) = (0, 0);
        let mut block_free = [0u64; SLOTS];
        let mut block_scav = [0u64; SLOTS];
        let mut pending = [0usize; SLOTS];
        for (p, &st) in self.pages.iter().enumerate() {
            let a = addr(p);
            let chunk = self.pa.chunk(chunk_index(a)).unwrap();
            let i = chunk_page_index(a);
            let (alloc, scav) = (chunk.alloc.get(i), chunk.scavenged.get(i));
            match st {
                St::Used => assert!(alloc && !scav, "step {}: page {p} used: {alloc} {scav}", self.step),
                St::Pending { slot } => {
                    assert!(alloc && !scav, "step {}: page {p} pending: {alloc} {scav}", self.step);
                    pending[slot] += 1;
                }
                St::Free { scav: s } => {
                    assert!(!alloc && scav == s, "step {}: page {p} free {s}: {alloc} {scav}", self.step)
                }
                St::Cached { slot, scav: s } => {
                    assert!(alloc && !scav, "step {}: page {p} cached: {alloc} {scav}", self.step);
                    let bit = (a - self.blocks[slot].base) / PS;
                    assert!(bit < 64, "step {}: page {p} cached outside block {slot}", self.step);
                    block_free[slot] |= 1 << bit;
                    block_scav[slot] |= (s as u64) << bit;
                }
            }
            in_use += matches!(st, St::Used | St::Cached { .. } | St::Pending { .. }) as usize;
            scavenged += matches!(st, St::Free { scav: true }) as usize;
        }
        for k in 0..SLOTS {
            assert_eq!(self.blocks[k].free, block_free[k], "step {}: block {k} free bits", self.step);
            assert_eq!(self.blocks[k].scav, block_scav[k], "step {}: block {k} released bits", self.step);
            assert_eq!(self.pending[k].pages(), pending[k], "step {}: slot {k} pending pages", self.step);
        }
        assert_eq!(self.pa.pages_in_use(), in_use, "step {}", self.step);
        assert_eq!(self.pa.pages_scavenged(), scavenged, "step {}", self.step);
        // The summaries agree: the heap finds what the model finds.
        for n in [1, 3, 17, 64, 300, 600] {
            assert_eq!(self.pa.find(n).0.map(page_of), self.lowest_fit(n), "step {}: find({n})", self.step);
        }
        // The search hint never passes a free page.
        if let Some(first) = self.lowest_fit(1) {
            assert!(self.pa.search_addr() <= addr(first), "step {}: search hint past a free page", self.step);
        }
    }

    fn run(mut self, steps: usize) {
        for step in 0..steps {
            self.step = step;
            match self.rng.below(100) {
                0..=44 => self.small_alloc(),
                45..=49 => self.heap_alloc(),
                50..=89 => self.free_one(),
                90..=94 => self.flush(),
                _ => self.scavenge(),
            }
            self.check();
        }
        // Everything back: the heap is whole again.
        for k in 0..SLOTS {
            self.pending[k].flush(&mut self.pa);
            self.blocks[k].flush(&mut self.pa);
        }
        for (first, n) in std::mem::take(&mut self.live) {
            self.pa.free(addr(first), n, false);
        }
        assert_eq!(self.pa.pages_in_use(), 0);
        assert_eq!(self.pa.find(PAGES).0, Some(BASE));
    }
}

#[test]
fn blocks_against_a_model_seed_1() {
    Harness::new(1).run(6000);
}

#[test]
fn blocks_against_a_model_seed_2() {
    Harness::new(2).run(6000);
}

#[test]
fn blocks_against_a_model_seed_3() {
    Harness::new(3).run(6000);
}

#[test]
fn blocks_against_a_model_seed_4() {
    Harness::new(4).run(6000);
}

/// Alignment inside a block: the lowest aligned fit, never one that
/// crosses the block's end.
#[test]
fn block_alloc_aligned_and_bounded() {
    let base = BASE;
    // Pages 1..4 and 8..10 and 60..64 free.
    let free = 0b1110u64 | (0b11 << 8) | (0b1111 << 60);
    let mut b = Block { base, free, scav: 1 << 9 };
    assert_eq!(b.alloc(2, 2), Some(PageRun { base: base + 2 * PS, scavenged_bytes: 0 }));
    assert_eq!(b.alloc(2, 2), Some(PageRun { base: base + 8 * PS, scavenged_bytes: PS }));
    assert_eq!(b.alloc(5, 1), None, "no run of 5 pages, none across the block's end");
    assert_eq!(b.alloc(4, 4), Some(PageRun { base: base + 60 * PS, scavenged_bytes: 0 }));
    assert_eq!(b.alloc(1, 1), Some(PageRun { base: base + PS, scavenged_bytes: 0 }));
    assert_eq!(b.alloc(1, 1), None);
    assert_eq!((b.free, b.scav), (0, 0));
    // Frees come back only inside the block.
    assert!(!b.free(base + 63 * PS, 2), "a run past the block's end is not the block's");
    assert!(!b.free(base - PS, 1));
    assert!(b.free(base + 62 * PS, 2));
    assert_eq!(b.free, 0b11 << 62);
}

/// Lending and returning a block leave the heap exactly as it was,
/// released bits included.
#[test]
fn lend_and_return_round_trip() {
    let mut pa = PageAlloc::new();
    pa.grow(BASE, CHUNK_BYTES).unwrap();
    let a = pa.alloc(70).unwrap().base;
    pa.free(a + 10 * PS, 5, false);
    let before = (*pa.chunk(chunk_index(BASE)).unwrap(), pa.pages_in_use(), pa.pages_scavenged());
    let (free, scav) = pa.lend_block(BASE + BLOCK_BYTES);
    assert_eq!(free, !0b11_1111, "pages 70..128 were free");
    assert_eq!(scav, free, "never touched: released");
    let (free0, scav0) = pa.lend_block(BASE);
    assert_eq!((free0, scav0), (0b1_1111 << 10, 0));
    assert_eq!(pa.pages_in_use(), 128);
    assert_eq!(pa.find(1).0, Some(BASE + 128 * PS));
    pa.return_block(BASE + BLOCK_BYTES, free, scav);
    pa.return_block(BASE, free0, scav0);
    assert_eq!((*pa.chunk(chunk_index(BASE)).unwrap(), pa.pages_in_use(), pa.pages_scavenged()), before);
    assert_eq!(pa.find(1).0, Some(BASE + 10 * PS));
}
