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

    #[cfg(any(test, feature = "testing"))]
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

    #[cfg(any(test, feature = "testing"))]
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

    #[cfg(any(test, feature = "testing"))]
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

    #[cfg(any(test, feature = "testing"))]
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
    /// The last scavenger generation in which the chunk was seen nearly
    /// full (see [`DENSE_PAGES`]).
    pub dense_gen: u32,
}

/// A chunk with at least this many pages in use (496 of 512, as in Go 1.21)
/// is *dense*: the background scavenger leaves it alone in the generation
/// it was dense and the next, so that huge pages in heavy use are not
/// broken up for the few free pages around them.
pub const DENSE_PAGES: usize = 496;

/// Sets, in each aligned group of `group` bits (a power of two up to 64),
/// every bit if any bit of the group is set: a group is clear only if it is
/// clear as a whole.
#[inline]
fn fill_groups(word: u64, group: usize) -> u64 {
    if group <= 1 {
        return word;
    }
    let mask = if group == 64 { u64::MAX } else { (1u64 << group) - 1 };
    let mut out = 0;
    let mut shift = 0;
    while shift < 64 {
        if (word >> shift) & mask != 0 {
            out |= mask << shift;
        }
        shift += group;
    }
    out
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

    /// Finds the highest-addressed run of free, unscavenged pages to
    /// release (Go's `findScavengeCandidate`). Returns `(first page, pages)`.
    ///
    /// * `min_pages` (a power of two up to 64): the pages of one physical
    ///   page. Only whole, aligned groups of that many pages qualify, so a
    ///   release never touches a physical page that is partly in use. A
    ///   group qualifies when none of its pages is in use and at least one
    ///   is unreleased: some of its pages may be released already (a page
    ///   taken from a released OS page and freed again leaves its
    ///   neighbours marked released, though touching it made the whole OS
    ///   page resident), and only releasing the group as a whole gives that
    ///   memory back. The run may so include released pages.
    /// * `max_pages`: how much the caller still wants; the run is cut to that
    ///   (rounded up to `min_pages`), keeping its top.
    /// * `huge_pages`: the pages of one transparent huge page (at most a
    ///   chunk). If the cut run crosses a huge-page boundary and starts
    ///   inside a huge page that is free and unreleased from its start, the
    ///   run is extended down to that start: releasing only the top of a
    ///   free huge page would split it for nothing, and its rest would be
    ///   released next anyway.
    pub fn find_release_candidate(
        &self,
        min_pages: usize,
        max_pages: usize,
        huge_pages: usize,
    ) -> Option<(usize, usize)> {
        debug_assert!(min_pages.is_power_of_two() && min_pages <= 64);
        // A group is blocked if any page is in use, or if every page is
        // released already.
        let blocked = |w: usize| fill_groups(self.alloc.0[w], min_pages) | !fill_groups(!self.scavenged.0[w], min_pages);
        // The highest candidate page.
        let top_word = (0..WORDS).rev().find(|&w| blocked(w) != u64::MAX)?;
        let end = top_word * 64 + 64 - (!blocked(top_word)).leading_zeros() as usize;
        // Walk down to the run's first page.
        let mut start = end - 1;
        loop {
            let (w, bit) = (start / 64, start % 64);
            let below = blocked(w) & ((1u64 << bit) - 1);
            if below != 0 {
                start = w * 64 + 64 - below.leading_zeros() as usize;
                break;
            }
            start = w * 64;
            if w == 0 || blocked(w - 1) >> 63 != 0 {
                break;
            }
            start -= 1;
        }
        let run = end - start;
        let want = max_pages.max(1).next_multiple_of(min_pages);
        let mut first = end - run.min(want);
        if huge_pages > 1 && huge_pages <= CHUNK_PAGES {
            let below = first / huge_pages * huge_pages;
            let above = below + huge_pages;
            // The candidate reaches into the huge page [below, above) from
            // its top, and the full free run covers that huge page's start.
            if first != below && above <= end && below >= start {
                first = below;
            }
        }
        Some((first, end - first))
    }

    /// Marks every free page of word `w` (pages `64 * w ..`) in use for a
    /// page cache block (see [`super::cache`]), and returns which pages
    /// were free and which of those were scavenged. The pages leave the
    /// scavenged map: while the cache holds them, it keeps that bit.
    #[inline]
    pub fn lend_word(&mut self, w: usize) -> (u64, u64) {
        let free = !self.alloc.0[w];
        let scav = self.scavenged.0[w] & free;
        self.alloc.0[w] = u64::MAX;
        self.scavenged.0[w] &= !free;
        self.in_use += free.count_ones() as u16;
        (free, scav)
    }

    /// Marks the pages `free` of word `w` free again, the `scav` ones among
    /// them scavenged: the return of a page cache block. If any of them is
    /// not in use, nothing changes and the first such page's index comes
    /// back as the error.
    #[inline]
    pub fn return_word(&mut self, w: usize, free: u64, scav: u64) -> Result<(), usize> {
        debug_assert_eq!(scav & !free, 0);
        let not_in_use = free & !self.alloc.0[w];
        if not_in_use != 0 {
            return Err(w * 64 + not_in_use.trailing_zeros() as usize);
        }
        self.alloc.0[w] &= !free;
        self.scavenged.0[w] |= scav;
        self.in_use -= free.count_ones() as u16;
        Ok(())
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

    use crate::testutil::Rng;

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
        let mut rng = Rng::new(0x1234_5678_9abc_def1);
        for _ in 0..20_000 {
            let b = random_bits(&mut rng);
            assert_eq!(b.summarize().unpack(), naive_runs(&b), "{b:x?}");
        }
    }

    #[test]
    fn find_matches_naive_on_random_maps() {
        let mut rng = Rng::new(0xfeed_beef_cafe_f00d);
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

    /// The naive candidate: page by page.
    fn naive_candidate(c: &ChunkData, min: usize, max: usize, huge: usize) -> Option<(usize, usize)> {
        let ok = |p: usize| {
            let g = p / min * min;
            (g..g + min).all(|q| !c.alloc.get(q)) && (g..g + min).any(|q| !c.scavenged.get(q))
        };
        let end = (0..CHUNK_PAGES).rev().find(|&p| ok(p))? + 1;
        let mut start = end - 1;
        while start > 0 && ok(start - 1) {
            start -= 1;
        }
        let want = max.max(1).next_multiple_of(min);
        let mut first = end - (end - start).min(want);
        if huge > 1 {
            let below = first / huge * huge;
            if first != below && below + huge <= end && below >= start {
                first = below;
            }
        }
        Some((first, end - first))
    }

    #[test]
    fn release_candidates_match_naive_model() {
        let mut rng = Rng::new(0xabcd_ef01_2345_6789);
        for round in 0..20_000 {
            let mut c = ChunkData { alloc: random_bits(&mut rng), ..ChunkData::default() };
            // Scavenged pages only where free.
            let mut s = random_bits(&mut rng);
            for w in 0..WORDS {
                s.0[w] &= !c.alloc.0[w];
            }
            if rng.below(3) == 0 {
                s = PageBits::EMPTY;
            }
            c.scavenged = s;
            let min = 1 << rng.below(4);
            let max = match rng.below(3) {
                0 => 1 + rng.below(8),
                1 => 1 + rng.below(600),
                _ => usize::MAX / 2,
            };
            let huge = [1, 64, 256][rng.below(3)];
            assert_eq!(
                c.find_release_candidate(min, max, huge),
                naive_candidate(&c, min, max, huge),
                "round {round} min {min} max {max} huge {huge}"
            );
        }
    }

    #[test]
    fn release_candidate_huge_page_cases() {
        let mut c = ChunkData::default();
        c.init_fresh();
        c.alloc_range(0, CHUNK_PAGES);
        // Free and unscavenged: pages [100, 300). Huge pages of 64.
        c.free_range(100, 200).unwrap();
        // Wanting 8: the top 8, [292, 300), lie inside huge page [256, 320):
        // nothing to round.
        assert_eq!(c.find_release_candidate(1, 8, 64), Some((292, 8)));
        // Wanting 50: [250, 300) would release the top of huge page
        // [192, 256) and split it, though all of it is free: extend to 192.
        assert_eq!(c.find_release_candidate(1, 50, 64), Some((192, 108)));
        // Wanting 190: [110, 300) starts inside [64, 128), whose start is in
        // use: no extension.
        assert_eq!(c.find_release_candidate(1, 190, 64), Some((110, 190)));
        // Without huge pages, exactly what was asked.
        assert_eq!(c.find_release_candidate(1, 50, 1), Some((250, 50)));
        // Physical pages of 4 heap pages: only aligned whole groups.
        c.alloc_range(298, 1);
        assert_eq!(c.find_release_candidate(4, 1000, 1), Some((100, 196)));
        // Nothing free and unscavenged.
        c.mark_scavenged(100, 198);
        c.mark_scavenged(299, 1);
        assert_eq!(c.find_release_candidate(1, 1000, 1), None);
    }

    #[test]
    fn release_candidate_takes_partly_released_physical_pages() {
        let mut c = ChunkData::default();
        c.init_fresh();
        // A released physical page of 2 heap pages [8, 10): page 8 taken
        // and freed again, page 9 never taken since the release.
        c.alloc_range(8, 1);
        c.free_range(8, 1).unwrap();
        assert!(c.scavenged.get(9) && !c.scavenged.get(8));
        assert_eq!(c.find_release_candidate(2, 1, 1), Some((8, 2)), "the whole physical page goes");
        assert_eq!(c.find_release_candidate(1, 1, 1), Some((8, 1)), "at 1 page per physical page, page 8 alone");
        // Physical pages of 8: [8, 16) with one unreleased page.
        assert_eq!(c.find_release_candidate(8, 100, 1), Some((8, 8)));
        // A page in use in the group blocks it.
        c.alloc_range(9, 1);
        assert_eq!(c.find_release_candidate(2, 1, 1), None);
        assert_eq!(c.find_release_candidate(1, 1, 1), Some((8, 1)));
        // Every page released: nothing to do.
        c.free_range(9, 1).unwrap();
        c.mark_scavenged(8, 2);
        assert_eq!(c.find_release_candidate(2, 1, 1), None);
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
