//! Spans: a run of pages that holds either objects of one size class or one
//! large object, and the pool their records come from.
//!
//! A small-object span's free state lives out of band, in a bitmap of its
//! own: bit `i` set means object `i` is handed out (to a user or to a thread
//! cache). Nothing is ever written into a free object, so a later release of
//! a free object's pages to the OS loses nothing. Bits past the last object
//! are set for good, so searches need no masks.
//!
//! A second, atomic bitmap (the *user* bitmap) says which objects a user
//! holds right now, as opposed to a thread cache or the span itself. Only
//! the checked paths keep it: C's `malloc` family always, Rust's
//! `GlobalAlloc` in the hardened mode (`SCAVALLOC_CHECK=1`). Handing an
//! object to a user sets its bit and a free clears it, each with one atomic
//! read-modify-write and no lock, so a free whose bit is already clear (a
//! double free, even when the first free put the object in a thread cache
//! or ran on another thread) is caught at the free itself. Relaxed ordering
//! is enough: the object's own hand-over between threads (a lock, or the
//! user's synchronisation) orders a set before the clear that follows it.
//!
//! Span records are fixed-size and come from persistent memory; a freed
//! record goes on a free list and is reused, never unmapped, so a stale
//! page-map entry can never point into unmapped memory.

use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

use super::sizeclass::{self, MAX_OBJECTS_PER_SPAN};
use crate::persistent;
use crate::sync::Mutex;

const BITMAP_WORDS: usize = MAX_OBJECTS_PER_SPAN.div_ceil(64);

/// What a span record currently describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SpanKind {
    /// A record on the pool's free list.
    Idle,
    /// Objects of one size class.
    Small,
    /// One large object.
    Large,
    /// A freed large object kept in a thread cache for reuse.
    CachedLarge,
}

/// The metadata of one span.
#[repr(C)]
pub struct Span {
    /// First address of the span's pages.
    pub base: usize,
    /// Length in pages.
    pub npages: usize,
    /// Small: the size class. Large: unused.
    pub class: u8,
    /// What the record describes.
    pub kind: SpanKind,
    /// Whether the span is on its class's list of spans with free objects.
    pub in_partial: bool,
    /// Whether a thread cache owns the span: only that thread hands out
    /// its objects, and the span is on no list. Changed under the class
    /// lock (see [`super::central`]), with the page map's entries, where
    /// frees on other threads read it without the lock.
    pub owned: bool,
    /// Small: whether deep release has taken the span off its list to
    /// release some of its free OS pages with the class lock dropped (see
    /// [`super::central::deep_release_step`]): no one hands out its
    /// objects meanwhile; frees into it only clear their bits, and the
    /// span goes back to a list when the release is recorded.
    pub releasing: bool,
    /// Small: the id of the thread cache that owns the span, or last did
    /// (0: none); kept in the page map's entries too.
    pub owner: u16,
    /// Small: objects in the span.
    pub nobjects: u16,
    /// Small: objects whose bit is clear. As wide as a register: a free
    /// loop updates it once per object, and a narrower field was stored in
    /// 16 bits and loaded back in 32, which defeats store forwarding (a
    /// stall of a dozen cycles per object returned).
    pub nfree: u32,
    /// Large: the heap profile's tag for the object if it was sampled (0:
    /// not sampled; see `crate::profile`), and the size it was sampled at
    /// (the profile keeps that size through resizes in place).
    pub sample_tag: u32,
    pub sample_bytes: usize,
    /// Large: the bytes the user asked for.
    pub large_bytes: usize,
    /// Small: the OS pages of the span given back to the OS while the span
    /// is in use (deep release); bit `i` is the `i`-th OS page from `base`.
    /// Set only for pages that hold no handed-out object, under the class
    /// lock; cleared when objects on them are handed out again.
    pub released: u64,
    /// Small: when objects were last handed out from the span, in
    /// [`crate::os::coarse_ms`] (deep release leaves spans in use alone).
    pub refilled_ms: u64,
    /// Links of the class's partial list (or the pool's free list).
    pub next: *mut Span,
    /// See `next`.
    pub prev: *mut Span,
    bits: [u64; BITMAP_WORDS],
    /// Small: bit `i` set means a user holds object `i` (see the module
    /// docs). Read and written without the class lock, so only through
    /// [`mark_user`], [`unmark_user`] and [`is_user`].
    user: [AtomicU64; BITMAP_WORDS],
}

/// Why an object could not be returned to its span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutError {
    /// The address is not the start of an object of this span.
    NotAnObject,
    /// The object is already free: a double free.
    AlreadyFree,
}

impl Span {
    /// Sets the record up as a fresh small-object span of `class` over
    /// `[base, base + npages pages)`, every object free.
    pub fn init_small(&mut self, base: usize, class: usize) {
        let nobjects = sizeclass::class_objects(class);
        self.base = base;
        self.npages = sizeclass::class_pages(class);
        self.class = class as u8;
        self.kind = SpanKind::Small;
        self.in_partial = false;
        self.owned = false;
        self.releasing = false;
        self.owner = 0;
        self.nobjects = nobjects as u16;
        self.nfree = nobjects as u32;
        self.large_bytes = 0;
        self.released = 0;
        self.refilled_ms = crate::os::coarse_ms();
        self.next = ptr::null_mut();
        self.prev = ptr::null_mut();
        self.bits = [u64::MAX; BITMAP_WORDS];
        // Clear the bits of real objects; the rest stay set forever.
        for (w, word) in self.bits.iter_mut().enumerate() {
            let first = w * 64;
            if first >= nobjects {
                break;
            }
            let n = (nobjects - first).min(64);
            *word = if n == 64 { 0 } else { u64::MAX << n };
        }
        // A new span's objects are held by nobody. (A span is only made
        // or remade when all its objects are free, so no checked free can
        // race with this.)
        for word in &self.user {
            word.store(0, Ordering::Relaxed);
        }
    }

    /// Sets the record up as a large-object span.
    pub fn init_large(&mut self, base: usize, npages: usize, bytes: usize) {
        self.base = base;
        self.npages = npages;
        self.class = 0;
        self.kind = SpanKind::Large;
        self.in_partial = false;
        self.owned = false;
        self.releasing = false;
        self.owner = 0;
        self.nobjects = 0;
        self.nfree = 0;
        self.sample_tag = 0;
        self.large_bytes = bytes;
        self.released = 0;
        self.refilled_ms = 0;
        self.next = ptr::null_mut();
        self.prev = ptr::null_mut();
    }

    /// Marks up to `out.len()` free objects as handed out and writes their
    /// addresses to `out`, lowest first; returns how many.
    pub fn take_free(&mut self, out: &mut [*mut u8]) -> usize {
        let size = sizeclass::class_size(self.class as usize);
        let mut n = 0;
        for (w, word) in self.bits.iter_mut().enumerate() {
            if n == out.len() {
                break;
            }
            let mut free = !*word;
            while free != 0 && n < out.len() {
                let bit = free.trailing_zeros() as usize;
                free &= free - 1;
                *word |= 1 << bit;
                out[n] = (self.base + (w * 64 + bit) * size) as *mut u8;
                n += 1;
            }
        }
        self.nfree -= n as u32;
        n
    }

    /// Returns the object at `addr` to the span.
    pub fn put(&mut self, addr: usize) -> Result<(), PutError> {
        let Some(index) = object_start(self.base, self.class as usize, self.nobjects as usize, addr) else {
            return Err(PutError::NotAnObject);
        };
        let (w, bit) = (index / 64, index % 64);
        if self.bits[w] & (1 << bit) == 0 {
            return Err(PutError::AlreadyFree);
        }
        self.bits[w] &= !(1 << bit);
        self.nfree += 1;
        Ok(())
    }

    /// Whether the object starting at `addr` is free in the bitmap (false
    /// for an address that starts no object).
    #[cfg(any(test, feature = "testing"))]
    pub fn is_free(&self, addr: usize) -> bool {
        object_start(self.base, self.class as usize, self.nobjects as usize, addr)
            .is_some_and(|index| self.bits[index / 64] & (1 << (index % 64)) == 0)
    }

    /// Whether every object is free.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.nfree == u32::from(self.nobjects)
    }

    /// Bytes this span covers.
    #[inline]
    pub fn bytes(&self) -> usize {
        self.npages * crate::pages::PAGE_SIZE
    }

    /// The OS pages of `os_page` bytes (a power of two; bit `i`: the
    /// `i`-th from `base`) that hold no handed-out object, not even a piece
    /// of one, and are not released yet. Pages past the last object (the
    /// span's tail) hold nothing and qualify.
    ///
    /// It looks at each page once, not at each object: the objects that
    /// overlap a page are a run of bits in the bitmap, checked a word at a
    /// time, so a span of a thousand small objects costs as little as one
    /// of a few (deep release runs this under the class lock).
    pub fn releasable_pages(&self, os_page: usize) -> u64 {
        let shift = os_page.trailing_zeros();
        let size = sizeclass::class_size(self.class as usize);
        let nobjects = self.nobjects as usize;
        let npages = (self.bytes() >> shift).min(64);
        let mut mask = 0u64;
        for page in 0..npages {
            if self.released & (1 << page) != 0 {
                continue;
            }
            let start = page << shift;
            let first = start / size;
            if first >= nobjects || self.objects_free(first, ((start + os_page - 1) / size).min(nobjects - 1)) {
                mask |= 1 << page;
            }
        }
        mask
    }

    /// Whether objects `first..=last` are all free.
    fn objects_free(&self, first: usize, last: usize) -> bool {
        let (fw, lw) = (first / 64, last / 64);
        let low = u64::MAX << (first % 64);
        let high = u64::MAX >> (63 - last % 64);
        if fw == lw {
            return self.bits[fw] & low & high == 0;
        }
        self.bits[fw] & low == 0 && self.bits[fw + 1..lw].iter().all(|&w| w == 0) && self.bits[lw] & high == 0
    }

    /// After `objects` were handed out: their OS pages are no longer
    /// released (they fault back in when written). Returns the bytes that
    /// stopped counting as released.
    pub fn reclaim_pages(&mut self, objects: &[*mut u8], os_page: usize) -> usize {
        let size = sizeclass::class_size(self.class as usize);
        let before = self.released.count_ones();
        for &p in objects {
            let offset = p as usize - self.base;
            let (first, last) = (offset / os_page, (offset + size - 1) / os_page);
            for page in first..=last.min(63) {
                self.released &= !(1 << page);
            }
            if self.released == 0 {
                break;
            }
        }
        (before - self.released.count_ones()) as usize * os_page
    }
}

/// The index of the object that starts at `addr` in a span of `class` at
/// `base` holding `nobjects` objects; `None` for any other address: inside
/// an object (an interior pointer), in the span's tail past the last
/// object, or outside the span.
///
/// Two multiplications and no division: the index comes from the class's
/// division magic ([`sizeclass::object_index`], exact for every offset up
/// to the span's end, which is all it is given here), and the address is
/// an object's start exactly when multiplying the index back gives the
/// offset. The unit test below checks this against plain division for
/// every class and every offset in a span.
#[inline(always)]
pub fn object_start(base: usize, class: usize, nobjects: usize, addr: usize) -> Option<usize> {
    let size = sizeclass::class_size(class);
    // Wraps to a huge offset below `base`, which the bound rejects too.
    let offset = addr.wrapping_sub(base);
    if offset >= nobjects * size {
        return None;
    }
    let index = sizeclass::object_index(class, offset);
    (index * size == offset).then_some(index)
}

/// The word of `span`'s user bitmap that holds object `index`, and the
/// object's bit in it.
///
/// # Safety
///
/// `span` points to a span record (records live forever) and `index` is
/// below [`MAX_OBJECTS_PER_SPAN`].
#[inline(always)]
unsafe fn user_word(span: *const Span, index: usize) -> (&'static AtomicU64, u64) {
    // SAFETY: the record lives for the rest of the process (the pool never
    // unmaps one) and `index / 64 < BITMAP_WORDS` per the contract. Only
    // the atomic word is borrowed, never the whole record, whose other
    // fields the class lock's holder may be writing.
    let word = unsafe { &*ptr::addr_of!((*span).user).cast::<AtomicU64>().add(index / 64) };
    (word, 1u64 << (index % 64))
}

/// Marks object `index` of `span` as held by a user; returns whether it
/// already was (which means the allocator handed out a live object).
///
/// # Safety
///
/// As for [`user_word`].
#[inline(always)]
pub unsafe fn mark_user(span: *const Span, index: usize) -> bool {
    // SAFETY: forwarded.
    let (word, bit) = unsafe { user_word(span, index) };
    word.fetch_or(bit, Ordering::Relaxed) & bit != 0
}

/// Marks object `index` of `span` as no longer held by a user; returns
/// whether a user held it (false: a double free, or a pointer the
/// allocator never handed to a user).
///
/// # Safety
///
/// As for [`user_word`].
#[inline(always)]
pub unsafe fn unmark_user(span: *const Span, index: usize) -> bool {
    // SAFETY: forwarded.
    let (word, bit) = unsafe { user_word(span, index) };
    word.fetch_and(!bit, Ordering::Relaxed) & bit != 0
}

/// Whether a user holds object `index` of `span`.
///
/// # Safety
///
/// As for [`user_word`].
#[inline(always)]
pub unsafe fn is_user(span: *const Span, index: usize) -> bool {
    // SAFETY: forwarded.
    let (word, bit) = unsafe { user_word(span, index) };
    word.load(Ordering::Relaxed) & bit != 0
}

/// An intrusive doubly-linked list of spans.
pub struct SpanList {
    head: *mut Span,
    tail: *mut Span,
    len: usize,
}

// SAFETY: the list only links span records, which live in persistent memory
// for the life of the process; whoever owns the list (behind a lock) owns
// its links.
unsafe impl Send for SpanList {}

impl SpanList {
    /// An empty list.
    pub const fn new() -> Self {
        SpanList { head: ptr::null_mut(), tail: ptr::null_mut(), len: 0 }
    }

    /// The first span, or null.
    #[inline]
    pub fn first(&self) -> *mut Span {
        self.head
    }

    /// Number of spans on the list.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Puts `span` at the front.
    ///
    /// # Safety
    ///
    /// `span` is a live record on no list, and the caller holds the lock
    /// that guards this list and the record's links.
    pub unsafe fn push_front(&mut self, span: *mut Span) {
        // SAFETY: per the contract, we may write the record's links and
        // those of the current head, which belong to this list.
        unsafe {
            (*span).prev = ptr::null_mut();
            (*span).next = self.head;
            if self.head.is_null() {
                self.tail = span;
            } else {
                (*self.head).prev = span;
            }
        }
        self.head = span;
        self.len += 1;
    }

    /// Puts `span` at the back.
    ///
    /// # Safety
    ///
    /// As for [`push_front`](Self::push_front).
    pub unsafe fn push_back(&mut self, span: *mut Span) {
        // SAFETY: per the contract, we may write the record's links and
        // those of the current tail, which belong to this list.
        unsafe {
            (*span).next = ptr::null_mut();
            (*span).prev = self.tail;
            if self.tail.is_null() {
                self.head = span;
            } else {
                (*self.tail).next = span;
            }
        }
        self.tail = span;
        self.len += 1;
    }

    /// Takes `span` off the list.
    ///
    /// # Safety
    ///
    /// `span` is on this list, and the caller holds the list's lock.
    pub unsafe fn remove(&mut self, span: *mut Span) {
        // SAFETY: the span and its neighbours are on this list, whose links
        // the caller may write.
        unsafe {
            let (prev, next) = ((*span).prev, (*span).next);
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).next = next;
            }
            if next.is_null() {
                self.tail = prev;
            } else {
                (*next).prev = prev;
            }
            (*span).next = ptr::null_mut();
            (*span).prev = ptr::null_mut();
        }
        self.len -= 1;
    }
}

impl Default for SpanList {
    fn default() -> Self {
        Self::new()
    }
}

/// Records made at a time when the pool runs dry.
const RECORDS_PER_REFILL: usize = 64;

struct Pool {
    free: *mut Span,
    /// Records ever made (for metadata statistics).
    made: usize,
}

// SAFETY: the free list links records in persistent memory; it is only
// touched under the pool's lock.
unsafe impl Send for Pool {}

static POOL: Mutex<Pool> = Mutex::new(Pool { free: ptr::null_mut(), made: 0 });

/// A span record, zeroed and [`SpanKind::Idle`], or null when the OS
/// refuses memory.
pub fn alloc_record() -> *mut Span {
    let mut pool = POOL.lock();
    if pool.free.is_null() {
        // New records come from persistent memory, which may map a block:
        // with the pool's lock dropped (no system call under it).
        drop(pool);
        let Some(block) = persistent::alloc_array::<Span>(RECORDS_PER_REFILL) else {
            return ptr::null_mut();
        };
        let block = block.as_ptr();
        pool = POOL.lock();
        for i in 0..RECORDS_PER_REFILL {
            // SAFETY: the block holds RECORDS_PER_REFILL zeroed records
            // (all-zero is a valid `Span`: null links, kind Idle), ours
            // alone; we link them through `next`, ahead of whatever the
            // free list gained meanwhile.
            unsafe { (*block.add(i)).next = if i + 1 < RECORDS_PER_REFILL { block.add(i + 1) } else { pool.free } };
        }
        pool.free = block;
        pool.made += RECORDS_PER_REFILL;
    }
    let span = pool.free;
    // SAFETY: `span` is the head of the pool's free list, a live record.
    unsafe {
        pool.free = (*span).next;
        (*span).next = ptr::null_mut();
    }
    span
}

/// Gives a record back to the pool.
///
/// # Safety
///
/// `span` came from [`alloc_record`], is on no list, and nothing will use it
/// again (its page-map entries have been cleared).
pub unsafe fn free_record(span: *mut Span) {
    let mut pool = POOL.lock();
    // SAFETY: per the contract the record is ours to relink.
    unsafe {
        (*span).kind = SpanKind::Idle;
        (*span).next = pool.free;
    }
    pool.free = span;
}

/// Takes the pool's lock and keeps it, before `fork()`.
pub(crate) fn lock_for_fork() {
    POOL.hold_for_fork();
}

/// Releases the lock taken by [`lock_for_fork`], in parent or child.
pub(crate) fn unlock_after_fork() {
    // SAFETY: `lock_for_fork` held it on this thread.
    unsafe { POOL.release_after_fork() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_and_put_track_every_object() {
        for class in [0usize, 2, 4, 30, 45, 68] {
            // SAFETY: all-zero bytes are a valid `Span` (null links, kind
            // Idle, counts zero).
            let mut s: Span = unsafe { core::mem::zeroed() };
            let base = 0x7000_0000_0000;
            s.init_small(base, class);
            let n = sizeclass::class_objects(class);
            let size = sizeclass::class_size(class);
            let mut out = vec![ptr::null_mut(); n + 5];
            assert_eq!(s.take_free(&mut out), n);
            assert_eq!(s.nfree, 0);
            for (i, p) in out[..n].iter().enumerate() {
                assert_eq!(*p as usize, base + i * size);
            }
            assert_eq!(s.put(base + size / 2 + 1), Err(PutError::NotAnObject), "interior pointer");
            assert_eq!(s.put(base + n * size), Err(PutError::NotAnObject), "past the last object");
            assert_eq!(s.put(base.wrapping_sub(8)), Err(PutError::NotAnObject), "below the span");
            assert_eq!(s.put(base + (n - 1) * size), Ok(()));
            assert_eq!(s.put(base + (n - 1) * size), Err(PutError::AlreadyFree));
            assert_eq!(s.nfree, 1);
            let mut one = [ptr::null_mut(); 3];
            assert_eq!(s.take_free(&mut one), 1);
            assert_eq!(one[0] as usize, base + (n - 1) * size);
            for i in 0..n {
                assert_eq!(s.put(base + i * size), Ok(()));
            }
            assert!(s.is_empty());
        }
    }

    /// `object_start` (magic multiply) against plain division and
    /// remainder, for every class and every byte offset of a span, plus the
    /// addresses just outside it.
    #[test]
    fn object_start_matches_division_for_every_offset() {
        let base = 0x7000_0000_0000usize;
        for class in 0..sizeclass::NUM_CLASSES {
            let size = sizeclass::class_size(class);
            let n = sizeclass::class_objects(class);
            let span_bytes = sizeclass::class_span_bytes(class);
            let mut starts = 0;
            for offset in 0..=span_bytes {
                let naive = (offset % size == 0 && offset / size < n).then_some(offset / size);
                let got = object_start(base, class, n, base + offset);
                assert_eq!(got, naive, "class {class} ({size} B) offset {offset}");
                starts += usize::from(got.is_some());
            }
            assert_eq!(starts, n, "class {class}: every object found once");
            for below in [1, 8, size, span_bytes] {
                assert_eq!(object_start(base, class, n, base - below), None, "class {class}: {below} below");
            }
            assert_eq!(object_start(base, class, n, base + (1 << 40)), None, "class {class}: far above");
        }
    }

    #[test]
    fn user_bits_track_marks() {
        // SAFETY: all-zero bytes are a valid `Span`.
        let mut s: Span = unsafe { core::mem::zeroed() };
        s.init_small(0x7000_0000_0000, 0);
        let n = sizeclass::class_objects(0);
        let sp: *const Span = &s;
        // SAFETY: `sp` is a live record and every index is below `n`.
        unsafe {
            for i in [0, 1, 63, 64, n - 1] {
                assert!(!is_user(sp, i));
                assert!(!mark_user(sp, i), "object {i} newly marked");
                assert!(mark_user(sp, i), "object {i} marked twice");
                assert!(is_user(sp, i));
                assert!(unmark_user(sp, i), "object {i} was held");
                assert!(!unmark_user(sp, i), "object {i} freed twice");
            }
            assert!(!mark_user(sp, 5));
        }
        s.init_small(0x7000_0000_0000, 0);
        // SAFETY: as above.
        assert!(!unsafe { is_user(&s, 5) }, "re-initialising a span clears its user bits");
    }

    /// `releasable_pages` against a naive model: a page qualifies when no
    /// handed-out object overlaps it; `reclaim_pages` clears exactly the
    /// pages the handed-out objects overlap.
    #[test]
    fn releasable_pages_match_a_naive_model() {
        for os_page in [4096, 8192, 16384] {
            releasable_pages_match_a_naive_model_with(os_page);
        }
    }

    fn releasable_pages_match_a_naive_model_with(os_page: usize) {
        let mut seed = 0x5eed_u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for class in 0..sizeclass::NUM_CLASSES {
            for round in 0..20 {
                // SAFETY: all-zero bytes are a valid `Span`.
                let mut s: Span = unsafe { core::mem::zeroed() };
                let base = 0x7000_0000_0000;
                s.init_small(base, class);
                let n = sizeclass::class_objects(class);
                let size = sizeclass::class_size(class);
                let mut out = vec![ptr::null_mut(); n];
                s.take_free(&mut out);
                // Free a random share of the objects (all of them, none, or
                // in between).
                let keep_one_in = [1u64, 2, 5, 50, u64::MAX][round % 5];
                let mut live = vec![true; n];
                for (i, l) in live.iter_mut().enumerate() {
                    if keep_one_in == u64::MAX || !rand().is_multiple_of(keep_one_in) {
                        s.put(base + i * size).unwrap();
                        *l = false;
                    }
                }
                let pages = s.bytes() / os_page;
                let model: u64 = (0..pages)
                    .filter(|&p| {
                        let (lo, hi) = (p * os_page, (p + 1) * os_page);
                        !(0..n).any(|i| live[i] && i * size < hi && (i + 1) * size > lo)
                    })
                    .fold(0, |m, p| m | 1 << p);
                assert_eq!(s.releasable_pages(os_page), model, "class {class} round {round} page {os_page}");
                // Mark them released, hand out some free objects again, and
                // check that exactly their pages stop being released.
                s.released = model;
                let mut again = vec![ptr::null_mut(); 3];
                let got = s.take_free(&mut again);
                let touched: u64 = again[..got]
                    .iter()
                    .flat_map(|&p| {
                        let o = p as usize - base;
                        o / os_page..=(o + size - 1) / os_page
                    })
                    .fold(0, |m, p| m | 1 << p);
                let bytes = s.reclaim_pages(&again[..got], os_page);
                assert_eq!(s.released, model & !touched, "class {class} round {round}");
                assert_eq!(bytes, (model & touched).count_ones() as usize * os_page);
                assert_eq!(s.releasable_pages(os_page) & s.released, 0, "released pages are never offered again");
            }
        }
    }
}
