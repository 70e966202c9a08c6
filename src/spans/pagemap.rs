//! The page → span map: for any heap address, the span that owns its page,
//! in one load.
//!
//! The map is one flat array of span pointers, one per page of the 48-bit
//! address space (2^35 entries, 256 GiB of address space), so that C's
//! `free` finds a pointer's span with one load and its class with a second
//! (the span record). The array is reserved once, readable and reading as
//! zero (null: no span), and the parts that cover heap memory are made
//! writable a granule at a time ([`GRANULE_ENTRIES`] entries: 1 MiB of
//! table for each 1 GiB of address space): a lookup needs no test for
//! whether its part exists, a foreign pointer reads null, and the memory it
//! costs is 8 bytes per heap page ([`metadata_bytes`]) as the OS pages of
//! entries are touched only where the heap has spans.
//!
//! Where that reservation is refused (`RLIMIT_AS` below 256 GiB), the map is
//! two-level instead, as the page heap's chunk map: 2^13 root slots, each
//! covering 32 GiB of address space with a table of 2^22 span pointers made
//! on first use; a lookup is then one load more. The choice is made once,
//! before the first span is entered, and never changes.
//!
//! Readers take no lock: the entries are atomics. An entry is written
//! before the span's memory is handed to anyone, under the locks that
//! publish the span, so a reader that holds a pointer into the span (which
//! it got through some synchronising hand-off) sees the entry, and the
//! table it lives in.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use super::span::Span;
use crate::os;
use crate::pages::{HEAP_ADDR_BITS, PAGE_SHIFT};

type Entry = AtomicPtr<Span>;

/// Entries of the flat map: one per page of the address space.
const FLAT_ENTRIES: usize = 1 << (HEAP_ADDR_BITS - PAGE_SHIFT);
/// log2 of the entries made writable at once: those of 1 GiB of address
/// space (the heap reserves address space a gigabyte at a time).
const GRANULE_SHIFT: u32 = 30 - PAGE_SHIFT;
/// Entries made writable at once.
const GRANULE_ENTRIES: usize = 1 << GRANULE_SHIFT;
/// Bytes of table made writable at once (1 MiB; a multiple of every OS
/// page size the allocator runs with).
const GRANULE_BYTES: usize = GRANULE_ENTRIES * core::mem::size_of::<Entry>();
const GRANULES: usize = FLAT_ENTRIES / GRANULE_ENTRIES;

/// The flat map's entries, null until it exists (and for good if the
/// two-level map was chosen).
static FLAT: AtomicPtr<Entry> = AtomicPtr::new(ptr::null_mut());
/// Bit `g` set: granule `g` of the flat map is writable.
static WRITABLE: [AtomicU64; GRANULES / 64] = [const { AtomicU64::new(0) }; GRANULES / 64];
/// Which map this process uses: the flat map's address, or 0 for the
/// two-level one; decided by the first [`prepare`].
static CHOICE: spin::Once<usize> = spin::Once::new();

/// The low bit of an entry: a thread cache owns the span now (see
/// [`set_owner`]). Span records are aligned to more than two bytes, so the
/// bit is free in every record pointer.
const OWNED_TAG: usize = 1;
/// Where an entry keeps the id of the thread cache that owns (or last
/// owned) its span: the bits above the 48 of a heap address.
const OWNER_SHIFT: u32 = HEAP_ADDR_BITS;
/// The bits of an entry that are the record's address.
const RECORD_MASK: usize = ((1 << HEAP_ADDR_BITS) - 1) & !OWNED_TAG;

/// What the page map says of a page: its span, and who hands out (or last
/// handed out) its objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageOwner {
    /// The span owning the page, or null.
    pub span: *mut Span,
    /// The id of the thread cache that owns the span or last did (0:
    /// none).
    pub owner: u16,
    /// Whether that cache owns it now.
    pub owned: bool,
}

/// The span owning the page that contains `addr`, or null if no span does.
#[inline(always)]
pub fn lookup(addr: usize) -> *mut Span {
    lookup_owner(addr).span
}

/// [`lookup`], and which thread cache owns the span or last did: the same
/// load, so that a free can tell whether the object is its own thread's
/// without touching the span record. The owner is a racy read (a hint: it
/// may change right after).
#[inline(always)]
pub fn lookup_owner(addr: usize) -> PageOwner {
    let flat = FLAT.load(Ordering::Relaxed);
    let entry = if !flat.is_null() && addr >> HEAP_ADDR_BITS == 0 {
        // SAFETY: the flat map has an entry for every address below
        // 2^HEAP_ADDR_BITS, all readable for the process's life.
        unsafe { (*flat.add(addr >> PAGE_SHIFT)).load(Ordering::Acquire) }
    } else {
        lookup_slow(addr)
    };
    let bits = entry.addr();
    PageOwner {
        span: entry.map_addr(|a| a & RECORD_MASK),
        owner: (bits >> OWNER_SHIFT) as u16,
        owned: bits & OWNED_TAG != 0,
    }
}

/// Whether a thread cache owns the span holding `addr` (for tests).
#[cfg(any(test, feature = "testing"))]
pub fn span_is_owned(addr: usize) -> bool {
    lookup_owner(addr).owned
}

/// Records in the entries of `span` (covering `[base, base + npages
/// pages)`, as set by [`set`]) that thread cache `owner` owns it now
/// (`owned`), or last did.
pub fn set_owner(base: usize, npages: usize, span: *mut Span, owner: u16, owned: bool) {
    let tag = ((owner as usize) << OWNER_SHIFT) | if owned { OWNED_TAG } else { 0 };
    set(base, npages, span.map_addr(|a| a | tag));
}

/// [`lookup`] outside the flat map: the two-level map, or an address no
/// span can own.
#[cold]
#[inline(never)]
fn lookup_slow(addr: usize) -> *mut Span {
    if addr >> HEAP_ADDR_BITS != 0 {
        return ptr::null_mut();
    }
    two_level::lookup(addr)
}

/// The flat map, or `None` where the two-level map is in use; the first
/// call decides (one system call, which may fail harmlessly).
fn flat_map() -> Option<*mut Entry> {
    let base = *CHOICE.call_once(|| {
        let bytes = FLAT_ENTRIES * core::mem::size_of::<Entry>();
        match os::reserve_zero_readable(bytes) {
            Ok(p) => {
                FLAT.store(p.as_ptr().cast(), Ordering::Release);
                p.as_ptr() as usize
            }
            Err(_) => 0,
        }
    });
    (base != 0).then_some(base as *mut Entry)
}

/// Makes sure the map can hold entries for `[base, base + npages pages)`.
/// Fails only when the OS refuses memory.
pub fn prepare(base: usize, npages: usize) -> Result<(), os::OsError> {
    let Some(flat) = flat_map() else {
        return two_level::prepare(base, npages);
    };
    let first = base >> PAGE_SHIFT >> GRANULE_SHIFT;
    let last = ((base + (npages << PAGE_SHIFT) - 1) >> PAGE_SHIFT) >> GRANULE_SHIFT;
    for g in first..=last {
        let (word, bit) = (&WRITABLE[g / 64], 1u64 << (g % 64));
        if word.load(Ordering::Acquire) & bit != 0 {
            continue;
        }
        // Two threads may both get here for one granule: making it
        // writable twice is harmless (it keeps its contents).
        // SAFETY: granule `g` lies inside the flat map's reservation
        // (`g < GRANULES`, since `base` is a heap address), which only this
        // module uses, and making it writable changes no entry.
        unsafe { os::map_ready(flat.add(g * GRANULE_ENTRIES) as usize, GRANULE_BYTES)? };
        word.fetch_or(bit, Ordering::Release);
    }
    Ok(())
}

/// Points every page of `[base, base + npages pages)` at `span` (or at null
/// to forget them). The range must have been prepared.
pub fn set(base: usize, npages: usize, span: *mut Span) {
    let flat = FLAT.load(Ordering::Acquire);
    if flat.is_null() {
        return two_level::set(base, npages, span);
    }
    let first = base >> PAGE_SHIFT;
    for page in first..first + npages {
        if WRITABLE[page >> GRANULE_SHIFT >> 6].load(Ordering::Relaxed) & (1 << ((page >> GRANULE_SHIFT) % 64)) == 0 {
            crate::report::fatal(format_args!("page map: no table for {:#x}", page << PAGE_SHIFT));
        }
        // SAFETY: `page` is below `FLAT_ENTRIES` (a heap address) and its
        // granule is writable (checked just above).
        unsafe { (*flat.add(page)).store(span, Ordering::Release) };
    }
}

/// The memory the map's entries for a heap of `heap_bytes` take: one
/// pointer per heap page (the rest of the map is never touched).
pub fn metadata_bytes(heap_bytes: usize) -> usize {
    (heap_bytes >> PAGE_SHIFT) * core::mem::size_of::<Entry>()
}

/// Whether the flat map is in use (for tests).
#[cfg(test)]
fn is_flat() -> bool {
    flat_map().is_some()
}

/// The map used where the flat one cannot be reserved.
mod two_level {
    use super::*;

    const ROOT_BITS: u32 = 13;
    const LEAF_BITS: u32 = HEAP_ADDR_BITS - PAGE_SHIFT - ROOT_BITS;
    const LEAF_ENTRIES: usize = 1 << LEAF_BITS;

    type Leaf = [Entry; LEAF_ENTRIES];

    static ROOT: [AtomicPtr<Leaf>; 1 << ROOT_BITS] = [const { AtomicPtr::new(ptr::null_mut()) }; 1 << ROOT_BITS];

    /// The leaf table for `addr`, if one was ever made.
    #[inline]
    fn leaf(addr: usize) -> Option<&'static Leaf> {
        let slot = ROOT.get(addr >> (PAGE_SHIFT + LEAF_BITS))?;
        let p = slot.load(Ordering::Acquire);
        // SAFETY: a non-null root entry points to a zeroed leaf table that
        // is never unmapped; all-zero bytes are null `AtomicPtr`s.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    pub(super) fn lookup(addr: usize) -> *mut Span {
        match leaf(addr) {
            Some(l) => l[(addr >> PAGE_SHIFT) & (LEAF_ENTRIES - 1)].load(Ordering::Acquire),
            None => ptr::null_mut(),
        }
    }

    pub(super) fn prepare(base: usize, npages: usize) -> Result<(), os::OsError> {
        let first = base >> (PAGE_SHIFT + LEAF_BITS);
        let last = (base + (npages << PAGE_SHIFT) - 1) >> (PAGE_SHIFT + LEAF_BITS);
        for slot in &ROOT[first..=last] {
            if !slot.load(Ordering::Acquire).is_null() {
                continue;
            }
            let bytes = core::mem::size_of::<Leaf>();
            let table = os::alloc_ready(bytes)?.as_ptr().cast::<Leaf>();
            if slot.compare_exchange(ptr::null_mut(), table, Ordering::AcqRel, Ordering::Acquire).is_err() {
                // Another thread installed one first; ours was never shared.
                // SAFETY: `table` is our own fresh mapping of `bytes` bytes.
                unsafe { os::unmap(table as usize, bytes) };
            }
        }
        Ok(())
    }

    pub(super) fn set(base: usize, npages: usize, span: *mut Span) {
        for i in 0..npages {
            let addr = base + (i << PAGE_SHIFT);
            match leaf(addr) {
                Some(l) => l[(addr >> PAGE_SHIFT) & (LEAF_ENTRIES - 1)].store(span, Ordering::Release),
                None => crate::report::fatal(format_args!("page map: no table for {addr:#x}")),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The fallback map on an address range reserved here (so no span
        /// of the process can be in it, whichever map the process uses).
        #[test]
        fn prepare_set_lookup_forget() {
            let bytes = 64 << 20;
            let base = os::reserve(bytes, 1 << 22).unwrap().as_ptr() as usize;
            let fake = 0x1000 as *mut Span;
            assert!(lookup(base).is_null());
            prepare(base + (8 << 13), 3).unwrap();
            set(base + (8 << 13), 3, fake);
            for page in 0..16 {
                let want = if (8..11).contains(&page) { fake } else { ptr::null_mut() };
                assert_eq!(lookup(base + (page << 13) + 17), want, "page {page}");
            }
            set(base + (8 << 13), 3, ptr::null_mut());
            assert!(lookup(base + (9 << 13)).is_null());
            // SAFETY: our own reservation, holding nothing.
            unsafe { os::unmap(base, bytes) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_map_is_used_and_reads_null_where_nothing_is() {
        // This machine grants the reservation (no RLIMIT_AS in tests).
        assert!(is_flat());
        assert!(lookup(0).is_null());
        assert!(lookup(1 << 40).is_null());
        assert!(lookup((1 << HEAP_ADDR_BITS) - 1).is_null());
        assert!(lookup(1 << HEAP_ADDR_BITS).is_null());
        assert!(lookup(usize::MAX).is_null());
    }

    /// Entries set over a range (crossing a granule boundary) read back
    /// for every byte of their pages, and only there; forgetting clears
    /// them.
    #[test]
    fn prepare_set_lookup_forget_across_a_granule() {
        let bytes = 2 << 30;
        let base = os::reserve(bytes, 1 << 30).unwrap().as_ptr() as usize;
        let fake = 0x2000 as *mut Span;
        let start = base + (1 << 30) - (2 << PAGE_SHIFT);
        prepare(start, 4).unwrap();
        set(start, 4, fake);
        for page in 0..8usize {
            let addr = start - (2 << PAGE_SHIFT) + (page << PAGE_SHIFT);
            let want = if (2..6).contains(&page) { fake } else { ptr::null_mut() };
            assert_eq!(lookup(addr), want, "page {page}");
            assert_eq!(lookup(addr + (1 << PAGE_SHIFT) - 1), want, "end of page {page}");
        }
        set(start, 4, ptr::null_mut());
        assert!(lookup(start).is_null());
        assert!(lookup(start + (3 << PAGE_SHIFT)).is_null());
        // SAFETY: our own reservation, holding nothing.
        unsafe { os::unmap(base, bytes) };
    }
}
