//! The scavenge index: which chunks of the heap may hold free pages that
//! have not been released to the OS (after the Go runtime's redesign of its
//! scavenger, "runtime: redesign scavenging algorithm").
//!
//! # What it is
//!
//! One bit per chunk of the address space, set ("marked") whenever pages of
//! the chunk are freed to the page heap, and cleared by a scavenger that
//! found nothing left to release in the chunk. Marks and clears happen under
//! the heap lock. [`ScavengeIndex::find`] itself needs no lock and stays
//! correct against concurrent marks (the model checks in `loom-tests/` run
//! this code), but today's release path calls it while holding the heap
//! lock: a run it finds must be taken out of the heap before anyone else
//! can allocate it, so finding and taking happen under one hold. What the
//! index saves is the search, not the lock: a scavenger looks at the chunks
//! that may hold work instead of scanning every chunk's bitmap.
//!
//! Scavengers work from the top of the heap down (releasing high addresses
//! first leaves the low ones, which address-ordered allocation prefers, in
//! place). A search word remembers the highest chunk that may hold work, so
//! repeated finds do not rescan the empty top of the index.
//!
//! # The search word and its sequence number
//!
//! `find` lowers the search word as it discovers that the chunks above are
//! empty; `mark` raises it when it sets a bit above it. The danger is a find
//! that read the word, scanned past a chunk before a concurrent mark set its
//! bit, and then lowers the word below that chunk: the chunk would never be
//! looked at again. Go's commit guards this by storing a raised word as
//! *marked* (negative), which a find may only replace with a compare-and-swap
//! of the exact marked value it loaded. That one bit cannot tell two marks
//! apart that store the same address, and a mark below the search word does
//! not touch the word at all. Here every mark, wherever its chunk lies,
//! stamps the word with a new sequence number, and a find only ever lowers
//! the word with a compare-and-swap of the whole word it loaded (address and
//! sequence). So a find that raced with any mark fails its swap and looks
//! again; a find whose swap succeeds began after the last mark, and its scan
//! saw every bit set so far. No chunk with a set bit is ever skipped.
//!
//! # Layering
//!
//! This is a leaf data structure in chunk indices: it knows nothing of
//! addresses or of the page heap, which owns an instance, marks it on every
//! free, and provides its storage. It is written against the atomics shim
//! in [`crate::sync`] so that `loom-tests/` model-check this very code.

use crate::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// Bits of the search word holding `chunk + 1` (0 means "no work").
const CHUNK_BITS: u32 = 32;
const CHUNK_MASK: u64 = (1 << CHUNK_BITS) - 1;

/// The search word: `(sequence << 32) | (chunk + 1)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SearchWord(u64);

impl SearchWord {
    /// The highest chunk that may hold work, if any.
    fn chunk(self) -> Option<usize> {
        ((self.0 & CHUNK_MASK) as usize).checked_sub(1)
    }

    fn sequence(self) -> u64 {
        self.0 >> CHUNK_BITS
    }

    fn new(sequence: u64, chunk: Option<usize>) -> Self {
        let c = chunk.map_or(0, |c| c as u64 + 1);
        SearchWord((sequence << CHUNK_BITS) | (c & CHUNK_MASK))
    }
}

/// The index. See the [module documentation](self).
pub struct ScavengeIndex {
    /// Byte `i` holds the bits of chunks `8 i .. 8 i + 8`. Only the bytes
    /// from `min / 8` to `(max - 1) / 8` may be touched: the rest of the
    /// storage may not be readable.
    bytes: AtomicUsize,
    /// The search word (see the module documentation).
    search: AtomicU64,
    /// Chunk bounds `[min, max)` of everything ever marked or grown; both
    /// only widen.
    min: AtomicUsize,
    max: AtomicUsize,
}

impl ScavengeIndex {
    /// An index with no storage yet; [`set_storage`](Self::set_storage)
    /// must be called before the first `grow`.
    #[cfg(not(loom))]
    pub const fn empty() -> Self {
        ScavengeIndex {
            bytes: AtomicUsize::new(0),
            search: AtomicU64::new(0),
            min: AtomicUsize::new(usize::MAX),
            max: AtomicUsize::new(0),
        }
    }

    /// Gives an [`empty`](Self::empty) index its storage.
    ///
    /// # Safety
    ///
    /// As for [`new`](Self::new).
    /// Serialised with `grow` (the heap lock), and called before it.
    pub unsafe fn set_storage(&self, storage: *const AtomicU8) {
        self.bytes.store(storage as usize, Ordering::Release);
    }

    /// The address of the storage's first byte (0 before any).
    pub fn storage_addr(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Whether storage has been given.
    pub fn has_storage(&self) -> bool {
        self.storage_addr() != 0
    }

    #[cfg(any(test, loom, feature = "testing"))]
    /// An index over `storage`: one byte for every 8 chunks of the address
    /// space the index may ever cover. No chunk is covered until
    /// [`grow`](Self::grow).
    ///
    /// # Safety
    ///
    /// `storage` must outlive the index, hold at least one byte per 8
    /// chunks that will ever be passed to `grow`, and each byte must be
    /// zero and readable and writable as an `AtomicU8` by the time `grow`
    /// covers its chunks.
    pub unsafe fn new(storage: *const AtomicU8) -> Self {
        ScavengeIndex {
            bytes: AtomicUsize::new(storage as usize),
            search: AtomicU64::new(0),
            min: AtomicUsize::new(usize::MAX),
            max: AtomicUsize::new(0),
        }
    }

    #[inline]
    fn byte(&self, i: usize) -> &AtomicU8 {
        // SAFETY: callers pass only indices of bytes covered by `grow`
        // (whose bounds they loaded with Acquire after the storage was set),
        // which `new`'s contract makes valid atomics.
        unsafe { &*(self.bytes.load(Ordering::Relaxed) as *const AtomicU8).add(i) }
    }

    /// Widens the covered chunks to include `[first, last]`. The caller has
    /// made their storage bytes ready. Serialised with `mark` and `clear`.
    pub fn grow(&self, first: usize, last: usize) {
        debug_assert!(first <= last);
        if first < self.min.load(Ordering::Relaxed) {
            self.min.store(first, Ordering::Release);
        }
        if last + 1 > self.max.load(Ordering::Relaxed) {
            self.max.store(last + 1, Ordering::Release);
        }
    }

    /// Marks chunks `[first, last]` as holding free, unreleased pages.
    /// Serialised with `grow`, other marks and `clear` (the heap lock).
    pub fn mark(&self, first: usize, last: usize) {
        debug_assert!(first <= last && first >= self.min.load(Ordering::Relaxed));
        debug_assert!(last < self.max.load(Ordering::Relaxed));
        let mut c = first;
        while c <= last {
            let in_byte = (8 - c % 8).min(last - c + 1);
            let mask = (((1u16 << in_byte) - 1) << (c % 8)) as u8;
            self.byte(c / 8).fetch_or(mask, Ordering::Release);
            c += in_byte;
        }
        // Raise the word to cover `last` if needed, and stamp it with a new
        // sequence either way, so that a find that started before this mark
        // cannot lower the word.
        let mut old = SearchWord(self.search.load(Ordering::Acquire));
        loop {
            let top = old.chunk().map_or(last, |c| c.max(last));
            let new = SearchWord::new(old.sequence().wrapping_add(1), Some(top));
            match self.search.compare_exchange_weak(old.0, new.0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => old = SearchWord(now),
            }
        }
    }

    /// Unmarks chunk `ci`: a scavenger looked at it under the heap lock and
    /// found nothing to release. Serialised with `mark` and `grow`.
    pub fn clear(&self, ci: usize) {
        self.byte(ci / 8).fetch_and(!(1u8 << (ci % 8)), Ordering::Release);
    }

    #[cfg(any(test, loom, feature = "testing"))]
    /// Whether chunk `ci` is marked.
    pub fn is_marked(&self, ci: usize) -> bool {
        ci >= self.min.load(Ordering::Acquire)
            && ci < self.max.load(Ordering::Acquire)
            && self.byte(ci / 8).load(Ordering::Acquire) & (1 << (ci % 8)) != 0
    }

    /// The highest marked chunk at or below `start`, scanning down to the
    /// lowest covered chunk.
    fn scan_down(&self, start: usize) -> Option<usize> {
        let min = self.min.load(Ordering::Acquire);
        let max = self.max.load(Ordering::Acquire);
        if max == 0 || start < min {
            return None;
        }
        let start = start.min(max - 1);
        let mut i = start / 8;
        // In the first byte, ignore chunks above `start`.
        let mut mask = (0xffu16 >> (7 - start % 8)) as u8;
        loop {
            let bits = self.byte(i).load(Ordering::Acquire) & mask;
            if bits != 0 {
                let ci = i * 8 + 7 - bits.leading_zeros() as usize;
                return (ci >= min).then_some(ci);
            }
            if i == 0 || i * 8 <= min {
                return None;
            }
            i -= 1;
            mask = 0xff;
        }
    }

    /// Finds the highest chunk that may hold free, unreleased pages, and
    /// lowers the search word to it. `None` when no chunk is marked.
    pub fn find(&self) -> Option<usize> {
        loop {
            let old = SearchWord(self.search.load(Ordering::Acquire));
            let found = old.chunk().and_then(|start| self.scan_down(start));
            if found == old.chunk() {
                return found;
            }
            // Lower the word, unless a mark came in since we read it; then
            // look again from wherever that mark left it.
            let new = SearchWord::new(old.sequence(), found);
            if self.search.compare_exchange(old.0, new.0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return found;
            }
        }
    }

    /// The highest marked chunk strictly below `ci`, leaving the search word
    /// alone: for a scavenger that decided to pass over `ci` (a chunk in
    /// heavy use) while leaving it marked for others.
    pub fn find_below(&self, ci: usize) -> Option<usize> {
        ci.checked_sub(1).and_then(|start| self.scan_down(start))
    }

    /// The covered chunk bounds `[min, max)`, or `None` before any growth.
    pub fn bounds(&self) -> Option<(usize, usize)> {
        let max = self.max.load(Ordering::Acquire);
        (max != 0).then(|| (self.min.load(Ordering::Acquire), max))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn storage(bytes: usize) -> &'static [AtomicU8] {
        Box::leak((0..bytes).map(|_| AtomicU8::new(0)).collect::<Vec<_>>().into_boxed_slice())
    }

    #[test]
    fn finds_marked_chunks_from_the_top_down() {
        let s = storage(64);
        // SAFETY: leaked zeroed storage for 512 chunks.
        let idx = unsafe { ScavengeIndex::new(s.as_ptr()) };
        assert_eq!(idx.find(), None);
        idx.grow(10, 300);
        idx.mark(12, 12);
        idx.mark(100, 130);
        idx.mark(250, 250);
        assert_eq!(idx.find(), Some(250));
        assert_eq!(idx.find(), Some(250), "still marked");
        idx.clear(250);
        assert_eq!(idx.find(), Some(130));
        assert_eq!(idx.find_below(130), Some(129));
        assert_eq!(idx.find_below(100), Some(12));
        assert_eq!(idx.find_below(12), None);
        for c in (100..=130).rev() {
            assert_eq!(idx.find(), Some(c));
            idx.clear(c);
        }
        // A mark below the search word is found too.
        idx.mark(40, 41);
        assert_eq!(idx.find(), Some(41));
        idx.clear(41);
        idx.clear(40);
        assert_eq!(idx.find(), Some(12));
        idx.clear(12);
        assert_eq!(idx.find(), None);
        // A mark above an exhausted word raises it.
        idx.mark(299, 300);
        assert_eq!(idx.find(), Some(300));
        assert!(idx.is_marked(299) && !idx.is_marked(298));
    }

    #[test]
    fn matches_a_naive_model() {
        let s = storage(128);
        // SAFETY: leaked zeroed storage for 1024 chunks.
        let idx = unsafe { ScavengeIndex::new(s.as_ptr()) };
        idx.grow(3, 1000);
        let mut model = vec![false; 1024];
        let mut x = 0x1234_5678_u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = 3 + (x % 998) as usize;
            match x % 5 {
                0 | 1 => {
                    let b = (a + (x >> 20) as usize % 20).min(1000);
                    idx.mark(a, b);
                    model[a..=b].iter_mut().for_each(|m| *m = true);
                }
                2 => {
                    if let Some(c) = idx.find() {
                        idx.clear(c);
                        model[c] = false;
                    }
                }
                _ => {
                    let want = model.iter().rposition(|&m| m);
                    assert_eq!(idx.find(), want);
                    assert_eq!(idx.find_below(a), model[..a].iter().rposition(|&m| m));
                }
            }
        }
    }
}
