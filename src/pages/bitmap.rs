//! Per-chunk page bitmaps (Go's `pallocBits` and `pallocData`).
//!
//! A chunk is 512 pages; its state is two 512-bit maps. In the allocation
//! map a set bit is a page in use. In the scavenged map a set bit is a free
//! page whose memory has been given back to the OS. An allocated page is
//! never marked scavenged, so each page is in exactly one of three states:
//! in use, free and unscavenged, or free and scavenged.
//!
//! This module knows nothing of addresses, only page indices within one
//! chunk. The searches here are the leaves of the radix-tree search in
//! [`super::PageAlloc`], so they are written to touch each 64-bit word once.

use super::summary::Summary;
use super::CHUNK_PAGES;

const WORDS: usize = CHUNK_PAGES / 64;

/// A 512-bit map, one bit per page of a chunk; bit `i` is bit `i % 64` of
/// word `i / 64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PageBits([u64; WORDS]);

/// A mask of `n` bits starting at bit `lo` of one word (`lo + n <= 64`).
#[inline]
fn word_mask(lo: usize, n: usize) -> u64 {
    debug_assert!(lo + n <= 64 && n > 0);
    (u64::MAX >> (64 - n)) << lo
}

/// Calls `f(word_index, mask)` for each word that `[i, i + n)` touches.
#[inline]
fn for_each_word(i: usize, n: usize, mut f: impl FnMut(usize, u64)) {
    debug_assert!(i + n <= CHUNK_PAGES);
    let (mut at, end) = (i, i + n);
    while at < end {
        let w = at / 64;
        let lo = at % 64;
        let take = (64 - lo).min(end - at);
        f(w, word_mask(lo, take));
        at += take;
    }
}

/// The lowest bit index at which `word` has `n` consecutive zero bits
/// (`1 <= n <= 64`), or `None`.
///
/// Each step ANDs the free mask with a shifted copy of itself, which trims
/// the top of every run of free bits; doubling the shift each time removes
/// `n - 1` bits from every run in O(log n) steps. Whatever bit survives
/// starts a run of at least `n`.
#[inline]
fn first_zero_run(word: u64, n: usize) -> Option<usize> {
    debug_assert!((1..=64).contains(&n));
    let mut free = !word;
    let mut to_trim = n - 1;
    let mut step = 1;
    while to_trim > 0 && free != 0 {
        let s = step.min(to_trim);
        free &= free >> s;
        to_trim -= s;
        step *= 2;
    }
    (free != 0).then(|| free.trailing_zeros() as usize)
}

/// The longest run of zero bits strictly inside `word`, bounded by set bits
/// on both sides (runs touching bit 0 or bit 63 are the caller's business).
#[inline]
fn longest_inner_zero_run(word: u64) -> usize {
    let mut best = 0;
    // Drop the low zero run and the high zero run: shift the low set bit to
    // bit 0; the high run disappears as the value runs out.
    let mut rest = word >> word.trailing_zeros();
    while rest != 0 {
        rest >>= rest.trailing_ones();
        if rest == 0 {
            break;
        }
        let zeros = rest.trailing_zeros() as usize;
        best = best.max(zeros);
        rest >>= zeros;
    }
    best
}

impl PageBits {
    /// A map with every bit clear.
    pub const EMPTY: PageBits = PageBits([0; WORDS]);
    /// A map with every bit set.
    pub const FULL: PageBits = PageBits([u64::MAX; WORDS]);

    /// Whether bit `i` is set.
    #[inline]
    pub fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Sets bits `[i, i + n)`.
    #[inline]
    pub fn set_range(&mut self, i: usize, n: usize) {
        for_each_word(i, n, |w, m| self.0[w] |= m);
    }

    /// Clears bits `[i, i + n)`.
    #[inline]
    pub fn clear_range(&mut self, i: usize, n: usize) {
        for_each_word(i, n, |w, m| self.0[w] &= !m);
    }

    /// Number of set bits in `[i, i + n)`.
    #[inline]
    pub fn count_range(&self, i: usize, n: usize) -> usize {
        let mut count = 0;
        for_each_word(i, n, |w, m| count += (self.0[w] & m).count_ones() as usize);
        count
    }

    /// Number of set bits in the whole map.
    #[inline]
    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The lowest clear bit in `[i, i + n)`, if any.
    pub fn first_clear_in(&self, i: usize, n: usize) -> Option<usize> {
        let mut found = None;
        for_each_word(i, n, |w, m| {
            if found.is_none() {
                let clear = !self.0[w] & m;
                if clear != 0 {
                    found = Some(w * 64 + clear.trailing_zeros() as usize);
                }
            }
        });
        found
    }

    /// The lowest set bit in `[i, i + n)`, if any.
    pub fn first_set_in(&self, i: usize, n: usize) -> Option<usize> {
        let mut found = None;
        for_each_word(i, n, |w, m| {
            if found.is_none() {
                let set = self.0[w] & m;
                if set != 0 {
                    found = Some(w * 64 + set.trailing_zeros() as usize);
                }
            }
        });
        found
    }

    /// The raw words, lowest page first.
    #[inline]
    pub fn words(&self) -> &[u64; WORDS] {
        &self.0
    }

    /// Summarises the map's clear bits (free pages): the free run at the
    /// start, the longest free run, and the free run at the end.
    pub fn summarize(&self) -> Summary {
        let mut start = None;
        let mut best = 0;
        let mut run = 0; // free pages running into the current word
        for &w in &self.0 {
            if w == 0 {
                run += 64;
                continue;
            }
            run += w.trailing_zeros() as usize;
            start.get_or_insert(run);
            best = best.max(run);
            run = w.leading_zeros() as usize;
        }
        let Some(start) = start else {
            return Summary::pack(CHUNK_PAGES, CHUNK_PAGES, CHUNK_PAGES);
        };
        best = best.max(run);
        // Runs inside a single word are bounded by set bits on both sides,
        // so they are at most 62 long, and a word with k set bits has at most
        // 64 - k free bits in all: skip words that cannot beat `best`.
        if best < 62 {
            for &w in &self.0 {
                if 64 - (w.count_ones() as usize) > best {
                    best = best.max(longest_inner_zero_run(w));
                }
            }
        }
        Summary::pack(start, best, run)
    }

    /// Finds the lowest run of `npages` clear bits at or after `search`,
    /// assuming every bit below `search` is set (the search hint's
    /// invariant).
    ///
    /// Returns the run's first index, and the lowest clear bit at or after
    /// `search` (the next search hint), or `CHUNK_PAGES` if there is none.
    #[inline]
    pub fn find(&self, npages: usize, search: usize) -> (Option<usize>, usize) {
        debug_assert!((1..=CHUNK_PAGES).contains(&npages));
        match npages {
            1 => {
                let i = self.find1(search);
                (i, i.unwrap_or(CHUNK_PAGES))
            }
            2..=64 => self.find_small(npages, search),
            _ => self.find_large(npages, search),
        }
    }

    fn find1(&self, search: usize) -> Option<usize> {
        (search / 64..WORDS).find(|&w| self.0[w] != u64::MAX).map(|w| w * 64 + self.0[w].trailing_ones() as usize)
    }

    /// `npages <= 64`: the run either lies inside one word or straddles one
    /// word boundary.
    fn find_small(&self, npages: usize, search: usize) -> (Option<usize>, usize) {
        let mut tail = 0; // free bits at the top of the previous word
        let mut hint = None;
        for w in search / 64..WORDS {
            let word = self.0[w];
            if word == u64::MAX {
                tail = 0;
                continue;
            }
            hint.get_or_insert(w * 64 + word.trailing_ones() as usize);
            if tail + word.trailing_zeros() as usize >= npages {
                return (Some(w * 64 - tail), hint.unwrap_or(CHUNK_PAGES));
            }
            if let Some(j) = first_zero_run(word, npages) {
                return (Some(w * 64 + j), hint.unwrap_or(CHUNK_PAGES));
            }
            tail = word.leading_zeros() as usize;
        }
        (None, hint.unwrap_or(CHUNK_PAGES))
    }

    /// `npages > 64`: the run covers at least one whole free word, so it can
    /// be tracked word by word as a (start, length) pair.
    fn find_large(&self, npages: usize, search: usize) -> (Option<usize>, usize) {
        let mut run_start = 0;
        let mut run = 0;
        let mut hint = None;
        for w in search / 64..WORDS {
            let word = self.0[w];
            if word == u64::MAX {
                run = 0;
                continue;
            }
            hint.get_or_insert(w * 64 + word.trailing_ones() as usize);
            if word == 0 {
                if run == 0 {
                    run_start = w * 64;
                }
                run += 64;
            } else {
                if run > 0 && run + word.trailing_zeros() as usize >= npages {
                    return (Some(run_start), hint.unwrap_or(CHUNK_PAGES));
                }
                run = word.leading_zeros() as usize;
                run_start = w * 64 + 64 - run;
            }
            if run >= npages {
                return (Some(run_start), hint.unwrap_or(CHUNK_PAGES));
            }
        }
        (None, hint.unwrap_or(CHUNK_PAGES))
    }
}

/// Everything the page heap knows about one chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ChunkData {
    /// Set bit: page in use.
    pub alloc: PageBits,
    /// Set bit: free page whose memory has been released to the OS.
    pub scavenged: PageBits,
    /// Number of pages in use, kept so that the scavenger can ask how dense
    /// a chunk is without counting bits.
    in_use: u16,
}

static_assertions::const_assert!(CHUNK_PAGES <= u16::MAX as usize);

impl ChunkData {
    /// Pages in use in this chunk.
    #[inline]
    pub fn pages_in_use(&self) -> usize {
        self.in_use as usize
    }

    /// Marks free pages `[i, i + n)` as in use; they are no longer
    /// scavenged. The caller has checked that the range is free.
    #[inline]
    pub fn alloc_range(&mut self, i: usize, n: usize) {
        debug_assert_eq!(self.alloc.count_range(i, n), 0);
        self.alloc.set_range(i, n);
        self.scavenged.clear_range(i, n);
        self.in_use += n as u16;
    }

    /// Marks the whole (free) chunk as in use.
    #[inline]
    pub fn alloc_all(&mut self) {
        debug_assert_eq!(self.in_use, 0);
        self.alloc = PageBits::FULL;
        self.scavenged = PageBits::EMPTY;
        self.in_use = CHUNK_PAGES as u16;
    }

    /// Marks pages `[i, i + n)` free. If any of them is not in use, nothing
    /// changes and the first such page's index comes back as the error: the
    /// caller is freeing memory it does not own.
    #[inline]
    pub fn free_range(&mut self, i: usize, n: usize) -> Result<(), usize> {
        if self.alloc.count_range(i, n) != n {
            return Err(self.alloc.first_clear_in(i, n).unwrap_or(i));
        }
        self.alloc.clear_range(i, n);
        self.in_use -= n as u16;
        Ok(())
    }

    /// Marks free pages `[i, i + n)` as released to the OS.
    #[inline]
    pub fn mark_scavenged(&mut self, i: usize, n: usize) {
        debug_assert_eq!(self.alloc.count_range(i, n), 0);
        self.scavenged.set_range(i, n);
    }

    /// A fresh chunk: every page free and scavenged (never touched, so it
    /// holds no physical memory).
    pub fn init_fresh(&mut self) {
        self.alloc = PageBits::EMPTY;
        self.scavenged = PageBits::FULL;
        self.in_use = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator for tests (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn naive_runs(bits: &PageBits) -> (usize, usize, usize) {
        let free: Vec<bool> = (0..CHUNK_PAGES).map(|i| !bits.get(i)).collect();
        let start = free.iter().take_while(|&&f| f).count();
        let end = free.iter().rev().take_while(|&&f| f).count();
        let mut best = 0;
        let mut run = 0;
        for &f in &free {
            run = if f { run + 1 } else { 0 };
            best = best.max(run);
        }
        (start, best, end)
    }

    fn naive_find(bits: &PageBits, n: usize, search: usize) -> (Option<usize>, usize) {
        let hint = (search..CHUNK_PAGES).find(|&i| !bits.get(i)).unwrap_or(CHUNK_PAGES);
        let found = (search..=CHUNK_PAGES - n).find(|&i| (i..i + n).all(|j| !bits.get(j)));
        (found, hint)
    }

    /// Random maps with long and short runs of both kinds.
    fn random_bits(rng: &mut Rng) -> PageBits {
        let mut b = PageBits::EMPTY;
        let mut i = 0;
        let style = rng.below(4);
        while i < CHUNK_PAGES {
            let len = match style {
                0 => 1 + rng.below(3),
                1 => 1 + rng.below(70),
                2 => 1 + rng.below(200),
                _ => 1 + rng.below(16),
            }
            .min(CHUNK_PAGES - i);
            if rng.below(2) == 0 {
                b.set_range(i, len);
            }
            i += len;
        }
        b
    }

    #[test]
    fn summary_edge_cases() {
        assert_eq!(PageBits::EMPTY.summarize().unpack(), (512, 512, 512));
        assert_eq!(PageBits::FULL.summarize().unpack(), (0, 0, 0));
        assert_eq!(PageBits::FULL.summarize(), Summary::FULL);
        let mut b = PageBits::EMPTY;
        b.set_range(0, 1);
        assert_eq!(b.summarize().unpack(), (0, 511, 511), "max run at the chunk end");
        let mut b = PageBits::EMPTY;
        b.set_range(511, 1);
        assert_eq!(b.summarize().unpack(), (511, 511, 0));
        let mut b = PageBits::FULL;
        b.clear_range(100, 30); // inside word 1 and 2
        assert_eq!(b.summarize().unpack(), (0, 30, 0));
        let mut b = PageBits::FULL;
        b.clear_range(3, 5); // strictly inside word 0
        b.clear_range(70, 2);
        assert_eq!(b.summarize().unpack(), (0, 5, 0));
    }

    #[test]
    fn summarize_matches_naive_on_random_maps() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..20_000 {
            let b = random_bits(&mut rng);
            assert_eq!(b.summarize().unpack(), naive_runs(&b), "{b:x?}");
        }
    }

    #[test]
    fn find_matches_naive_on_random_maps() {
        let mut rng = Rng(0xfeed_beef_cafe_f00d);
        for _ in 0..20_000 {
            let mut b = random_bits(&mut rng);
            // The search hint promises everything below it is in use.
            let search = if rng.below(3) == 0 { rng.below(CHUNK_PAGES) } else { 0 };
            if search > 0 {
                b.set_range(0, search);
            }
            let n = match rng.below(3) {
                0 => 1,
                1 => 1 + rng.below(64),
                _ => 1 + rng.below(CHUNK_PAGES),
            };
            assert_eq!(b.find(n, search), naive_find(&b, n, search), "n={n} search={search} {b:x?}");
        }
    }

    #[test]
    fn first_zero_run_cases() {
        assert_eq!(first_zero_run(0, 64), Some(0));
        assert_eq!(first_zero_run(u64::MAX, 1), None);
        assert_eq!(first_zero_run(0b1011, 1), Some(2));
        assert_eq!(first_zero_run(0b1011, 2), Some(4));
        assert_eq!(first_zero_run(1 << 63, 63), Some(0));
        assert_eq!(first_zero_run(1, 63), Some(1));
        assert_eq!(first_zero_run(1, 64), None);
    }

    #[test]
    fn range_ops_and_counts() {
        let mut b = PageBits::EMPTY;
        b.set_range(60, 10);
        assert_eq!(b.count_range(0, 512), 10);
        assert_eq!(b.count_range(62, 3), 3);
        assert_eq!(b.first_set_in(0, 512), Some(60));
        assert_eq!(b.first_clear_in(60, 20), Some(70));
        b.clear_range(63, 2);
        assert!(b.get(62) && !b.get(63) && !b.get(64) && b.get(65));
        assert_eq!(b.count(), 8);
    }

    #[test]
    fn chunk_free_detects_pages_not_in_use() {
        let mut c = ChunkData::default();
        c.init_fresh();
        c.alloc_range(10, 5);
        assert_eq!(c.pages_in_use(), 5);
        assert_eq!(c.scavenged.count_range(10, 5), 0);
        assert_eq!(c.free_range(9, 3), Err(9));
        assert_eq!(c.free_range(12, 5), Err(15));
        assert_eq!(c.pages_in_use(), 5, "a refused free changes nothing");
        assert_eq!(c.free_range(10, 5), Ok(()));
        assert_eq!(c.pages_in_use(), 0);
        assert_eq!(c.free_range(10, 1), Err(10), "double free");
    }
}
