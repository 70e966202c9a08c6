//! The page heap: an address-ordered first-fit allocator of 8 KiB pages
//! (the Go runtime's `mpagealloc.go`).
//!
//! # What this layer owns
//!
//! Which pages of the heap's address space are in use, which are free, and
//! which free pages have been released to the OS. It hands out runs of pages
//! and takes them back; it never reads or writes the pages themselves (so it
//! can be tested and benchmarked on address ranges that are not even
//! mapped). Above it, the span layer cuts runs into objects and the scavenger
//! releases free runs. It may call only [`crate::os`], [`crate::persistent`]
//! and [`crate::sync`]; it never calls up.
//!
//! # How it works
//!
//! The address space is cut into 4 MiB chunks of 512 pages. Each chunk the
//! heap owns has two bitmaps ([`bitmap::ChunkData`]): pages in use, and free
//! pages already released. Over the bitmaps sits a radix tree of
//! [`summary::Summary`] values (free run at the start, longest free run,
//! free run at the end) with five levels for a 48-bit address space: the
//! root has 2^14 entries of 16 GiB each, each lower level splits an entry in
//! 8, and the leaves are chunks. Each level is one flat array reserved up
//! front and made ready only where the heap has memory, so the tree costs
//! nothing for address space the heap does not use.
//!
//! `find` walks the tree from the root, looking at one block of 8 entries per
//! level, and either descends into an entry whose longest run fits or finds
//! a run that crosses entry boundaries; the leaf search scans one chunk's
//! bitmap. A search-address hint (everything below it is known to be in use)
//! lets the common single-page case skip the walk entirely.
//!
//! # Locking
//!
//! `PageAlloc` is a plain data structure: every method takes `&self` or
//! `&mut self`, and the process-wide heap in [`heap`] wraps it in the heap
//! lock. Small-object spans are cut mostly from per-CPU blocks of 64 pages
//! lent out of it ([`cache`]), which take the heap lock once per block.

pub mod bitmap;
pub mod cache;
pub mod heap;
pub mod ranges;
pub mod summary;

use core::ptr::NonNull;

use crate::os;
use crate::report::fatal;

use crate::scavenge::index::ScavengeIndex;
use bitmap::{ChunkData, DENSE_PAGES};
use ranges::{AddrRange, AddrRanges};
use summary::Summary;

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 13;
/// The heap's page size: 8 KiB.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// log2 of the pages in a chunk.
pub const LOG_CHUNK_PAGES: u32 = 9;
/// Pages in a chunk: 512.
pub const CHUNK_PAGES: usize = 1 << LOG_CHUNK_PAGES;
/// log2 of a chunk's size in bytes.
pub const LOG_CHUNK_BYTES: u32 = LOG_CHUNK_PAGES + PAGE_SHIFT;
/// A chunk's size: 4 MiB.
pub const CHUNK_BYTES: usize = 1 << LOG_CHUNK_BYTES;

/// Bits of address the heap can use (x86-64 and arm64 user space).
pub const HEAP_ADDR_BITS: u32 = 48;
/// Levels of the summary radix tree.
pub const SUMMARY_LEVELS: usize = 5;
/// Each level below the root splits an entry into 2^3 children: a block of 8
/// summaries is 64 bytes, one cache line.
const SUMMARY_LEVEL_BITS: u32 = 3;
/// Bits of address indexing the root level.
const SUMMARY_L0_BITS: u32 = HEAP_ADDR_BITS - LOG_CHUNK_BYTES - (SUMMARY_LEVELS as u32 - 1) * SUMMARY_LEVEL_BITS;
/// log2 of the pages under one root entry; also the width of a summary
/// field.
pub const LOG_MAX_PACKED: u32 = LOG_CHUNK_PAGES + (SUMMARY_LEVELS as u32 - 1) * SUMMARY_LEVEL_BITS;

/// Index bits consumed by each level.
const LEVEL_BITS: [u32; SUMMARY_LEVELS] =
    [SUMMARY_L0_BITS, SUMMARY_LEVEL_BITS, SUMMARY_LEVEL_BITS, SUMMARY_LEVEL_BITS, SUMMARY_LEVEL_BITS];
/// Shift from an address to its entry index at each level.
const LEVEL_SHIFT: [u32; SUMMARY_LEVELS] = {
    let mut s = [0; SUMMARY_LEVELS];
    let mut l = 0;
    while l < SUMMARY_LEVELS {
        s[l] = HEAP_ADDR_BITS - SUMMARY_L0_BITS - l as u32 * SUMMARY_LEVEL_BITS;
        l += 1;
    }
    s
};
/// log2 of the pages one entry covers at each level.
const LEVEL_LOG_PAGES: [u32; SUMMARY_LEVELS] = {
    let mut s = [0; SUMMARY_LEVELS];
    let mut l = 0;
    while l < SUMMARY_LEVELS {
        s[l] = LEVEL_SHIFT[l] - PAGE_SHIFT;
        l += 1;
    }
    s
};
/// Entries in each level's array.
const LEVEL_ENTRIES: [usize; SUMMARY_LEVELS] = {
    let mut s = [0; SUMMARY_LEVELS];
    let mut l = 0;
    while l < SUMMARY_LEVELS {
        s[l] = 1 << (HEAP_ADDR_BITS - LEVEL_SHIFT[l]);
        l += 1;
    }
    s
};

static_assertions::const_assert_eq!(SUMMARY_L0_BITS, 14);
static_assertions::const_assert_eq!(LOG_MAX_PACKED, 21);
static_assertions::const_assert_eq!(LEVEL_SHIFT[SUMMARY_LEVELS - 1], LOG_CHUNK_BYTES);

/// The chunk map is a two-level sparse array: 2^13 slots, each pointing to
/// an array of 2^13 chunks' data (1 MiB), allocated when the heap first
/// reaches that 32 GiB of address space.
const CHUNKS_L1_BITS: u32 = 13;
const CHUNKS_L2_BITS: u32 = HEAP_ADDR_BITS - LOG_CHUNK_BYTES - CHUNKS_L1_BITS;
const CHUNKS_L1: usize = 1 << CHUNKS_L1_BITS;
const CHUNKS_L2: usize = 1 << CHUNKS_L2_BITS;
static_assertions::const_assert_eq!(CHUNKS_L2_BITS, 13);

/// The search address meaning "no free page anywhere".
pub const MAX_SEARCH_ADDR: usize = (1 << HEAP_ADDR_BITS) - 1;

/// Index of the chunk containing `addr`.
#[inline]
pub const fn chunk_index(addr: usize) -> usize {
    addr >> LOG_CHUNK_BYTES
}

/// First address of chunk `ci`.
#[inline]
pub const fn chunk_base(ci: usize) -> usize {
    ci << LOG_CHUNK_BYTES
}

/// Index within its chunk of the page containing `addr`.
#[inline]
pub const fn chunk_page_index(addr: usize) -> usize {
    (addr % CHUNK_BYTES) >> PAGE_SHIFT
}

/// The entry range `[lo, hi)` of level `level` that covers addresses
/// `[base, limit)`.
#[inline]
const fn addrs_to_summary_range(level: usize, base: usize, limit: usize) -> (usize, usize) {
    (base >> LEVEL_SHIFT[level], ((limit - 1) >> LEVEL_SHIFT[level]) + 1)
}

/// Widens an entry range of `level` to whole blocks (the unit `find` reads).
#[inline]
const fn block_align_summary_range(level: usize, lo: usize, hi: usize) -> (usize, usize) {
    let block = 1 << LEVEL_BITS[level];
    (lo & !(block - 1), (hi + block - 1) & !(block - 1))
}

/// Bytes of address space reserved for a summary level of `entries`.
fn level_reservation_bytes(entries: usize) -> usize {
    (entries * core::mem::size_of::<Summary>()).next_multiple_of(os::page_size())
}

/// The byte range, from the start of level `level`'s array, that holds
/// the summaries for address range `r`, widened to whole blocks and whole
/// OS pages.
fn summary_offsets_for(level: usize, r: AddrRange) -> AddrRange {
    let (lo, hi) = addrs_to_summary_range(level, r.base, r.limit);
    let (lo, hi) = block_align_summary_range(level, lo, hi);
    let size = core::mem::size_of::<Summary>();
    let page = os::page_size();
    AddrRange::new((lo * size) & !(page - 1), (hi * size).next_multiple_of(page))
}

/// The most chunk-table blocks one growth may need; each covers
/// `CHUNKS_L2` chunks (32 GiB of address space).
const MAX_GROWTH_BLOCKS: usize = 8;

/// What adding a range to a page allocator needs mapped first: the
/// summary arrays and the scavenge index (reserved on the first growth,
/// then made ready where the range needs them), chunk-table blocks, and a
/// larger range list if it is full.
///
/// The process heap grows in three steps so that no system call is made
/// under its lock (Go maps these under its heap lock; a thread that only
/// wants a free page should not wait for the kernel):
/// [`PageAlloc::growth_needs`] finds them under the lock,
/// [`GrowthNeeds::map`] maps them with the lock dropped, and
/// [`PageAlloc::grow_mapped`] records the range under the lock again. One
/// thread grows at a time (see `heap::alloc_growing`), so nothing the
/// first step saw changes before the last.
#[derive(Clone, Copy)]
pub struct GrowthNeeds {
    /// The new range, in whole chunks.
    range: AddrRange,
    /// Each summary level's array (0: not reserved yet).
    level_bases: [usize; SUMMARY_LEVELS],
    /// The bytes of each level's array to make ready, from its start.
    summaries: [AddrRange; SUMMARY_LEVELS],
    /// The index's storage (0: not reserved yet).
    index_storage: usize,
    /// The bytes of the index's storage to make ready, from its start.
    index_ready: AddrRange,
    /// Chunk-table slots that need a block.
    blocks: [usize; MAX_GROWTH_BLOCKS],
    nblocks: usize,
    /// The range list's new capacity, if it is full (0: it has room).
    ranges_cap: usize,
}

/// [`GrowthNeeds`] mapped, ready for [`PageAlloc::grow_mapped`].
pub struct GrowthMaps {
    needs: GrowthNeeds,
    blocks: [Option<NonNull<ChunkBlock>>; MAX_GROWTH_BLOCKS],
    ranges: Option<NonNull<AddrRange>>,
}

impl GrowthNeeds {
    /// Makes the system calls: reserves what is not reserved yet and makes
    /// ready what the range needs. On failure, gives back what it mapped
    /// of its own (made-ready pages of arrays that existed stay ready:
    /// harmless, and tiny).
    pub fn map(mut self) -> Result<GrowthMaps, OutOfMemory> {
        let page = os::page_size();
        let mut reserved = [0usize; SUMMARY_LEVELS];
        let mut new_index = 0;
        let mut maps = GrowthMaps { needs: self, blocks: [None; MAX_GROWTH_BLOCKS], ranges: None };
        let ok: Result<(), OutOfMemory> = (|| {
            for l in 0..SUMMARY_LEVELS {
                if self.level_bases[l] == 0 {
                    let p = os::reserve(level_reservation_bytes(LEVEL_ENTRIES[l]), page).map_err(|_| OutOfMemory)?;
                    self.level_bases[l] = p.as_ptr() as usize;
                    reserved[l] = self.level_bases[l];
                }
                let need = self.summaries[l];
                if need.size() != 0 {
                    // SAFETY: the bytes lie inside level l's reservation,
                    // which the allocator owns; none of them is read until
                    // the range is recorded, and making ready bytes that
                    // already are changes nothing.
                    unsafe { os::map_ready(self.level_bases[l] + need.base, need.size()) }
                        .map_err(|_| OutOfMemory)?;
                }
            }
            if self.index_storage == 0 {
                let p = os::reserve(INDEX_RESERVATION, page).map_err(|_| OutOfMemory)?;
                self.index_storage = p.as_ptr() as usize;
                new_index = self.index_storage;
            }
            let r = self.index_ready;
            // SAFETY: inside the index's reservation, as above.
            unsafe { os::map_ready(self.index_storage + r.base, r.size()) }.map_err(|_| OutOfMemory)?;
            for i in 0..self.nblocks {
                let bytes = core::mem::size_of::<ChunkBlock>().next_multiple_of(page);
                maps.blocks[i] = Some(os::alloc_ready(bytes).map_err(|_| OutOfMemory)?.cast());
            }
            if self.ranges_cap != 0 {
                maps.ranges = Some(
                    crate::persistent::alloc_array::<AddrRange>(self.ranges_cap).ok_or(OutOfMemory)?,
                );
            }
            Ok(())
        })();
        if ok.is_err() {
            for (l, &base) in reserved.iter().enumerate() {
                if base != 0 {
                    // SAFETY: reserved just above; nothing refers to it.
                    unsafe { os::unmap(base, level_reservation_bytes(LEVEL_ENTRIES[l])) };
                }
            }
            if new_index != 0 {
                // SAFETY: as above.
                unsafe { os::unmap(new_index, INDEX_RESERVATION) };
            }
            for block in maps.blocks.iter().flatten() {
                let bytes = core::mem::size_of::<ChunkBlock>().next_multiple_of(page);
                // SAFETY: mapped just above; nothing refers to it.
                unsafe { os::unmap(block.as_ptr() as usize, bytes) };
            }
            // Persistent memory is never freed: a failed growth's range
            // list array (at most a few KiB) is abandoned.
            return Err(OutOfMemory);
        }
        maps.needs = self;
        Ok(maps)
    }
}

/// Growing the heap failed: the OS refused memory for the page heap's own
/// metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfMemory;

/// One level of the summary tree: a reservation of `LEVEL_ENTRIES[l]`
/// summaries, ready wherever the heap owns address space.
#[derive(Clone, Copy)]
struct Level {
    base: *mut Summary,
    /// One past the highest entry index made ready so far (for bounds
    /// checks in debug builds).
    len: usize,
}

type ChunkBlock = [ChunkData; CHUNKS_L2];

/// The page allocator. See the [module documentation](self).
pub struct PageAlloc {
    levels: [Level; SUMMARY_LEVELS],
    chunks: [Option<NonNull<ChunkBlock>>; CHUNKS_L1],
    /// Every page below this address is in use (or not part of the heap).
    search_addr: usize,
    /// Chunk indices `[start, end)` bound everything the heap owns.
    start: usize,
    end: usize,
    /// Address ranges passed to `grow`, coalesced.
    in_use: AddrRanges,
    /// Pages handed out and not yet freed.
    pages_in_use: usize,
    /// Free pages marked scavenged (released to the OS, or never touched).
    pages_scavenged: usize,
    /// Bytes of summary memory made ready.
    summary_bytes: usize,
    /// Chunks that may hold free pages not yet released. Outside the
    /// allocator so that scavengers can search it without the heap lock
    /// (a shared reference into a value behind the lock would alias the
    /// lock holder's `&mut`).
    index: &'static ScavengeIndex,
    /// Bytes of the index's storage made ready.
    index_bytes: usize,
    /// Free pages taken out of the heap by a scavenger while it releases
    /// them (in the bitmap they look in use; in the counters they are free).
    pages_releasing: usize,
    /// The scavenger's generation, for chunk density (see
    /// [`bitmap::DENSE_PAGES`]).
    generation: u32,
}

/// What a scavenger found in a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseCandidate {
    /// Pages `[base, base + npages pages)` are free, whole physical pages
    /// with at least one unreleased heap page in each.
    Run {
        /// First address.
        base: usize,
        /// Length in pages.
        npages: usize,
        /// Pages of the run that are released already (only when a
        /// physical page holds more than one heap page): releasing the run
        /// gives back `npages - released` pages' worth of new memory.
        released: usize,
    },
    /// The chunk is dense now or was in the last generation: the background
    /// scavenger passes over it.
    Dense,
    /// Nothing in the chunk can be released (its index mark was cleared).
    Nothing,
}

/// Bytes reserved for the scavenge index: one bit per chunk of the address
/// space.
const INDEX_RESERVATION: usize = (1 << (HEAP_ADDR_BITS - LOG_CHUNK_BYTES)) / 8;

// SAFETY: the raw pointers refer to mappings owned by this value alone;
// moving it to another thread moves that ownership with it.
unsafe impl Send for PageAlloc {}

/// What a successful allocation returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun {
    /// First address of the run.
    pub base: usize,
    /// Bytes of the run that were released to the OS (and so hold zeroes
    /// when released with `MADV_DONTNEED`, or were never touched).
    pub scavenged_bytes: usize,
}

impl PageAlloc {
    /// An empty page allocator that owns no address space, with a scavenge
    /// index of its own (from persistent memory). It reserves its summary
    /// arrays on the first [`grow`](Self::grow).
    ///
    /// # Panics
    ///
    /// If the OS refuses the few bytes of the index; for tests and
    /// benchmarks, which own their heaps (the process heap is
    /// [`with_index`](Self::with_index)).
    pub fn new() -> Self {
        let index = crate::persistent::alloc_array::<ScavengeIndex>(1).expect("metadata for a scavenge index");
        // SAFETY: fresh persistent memory, never freed, that we initialise
        // before making a reference to it.
        let index = unsafe {
            index.as_ptr().write(ScavengeIndex::empty());
            &*index.as_ptr()
        };
        Self::with_index(index)
    }

    /// An empty page allocator that marks `index`, which must be used by no
    /// other page allocator.
    pub const fn with_index(index: &'static ScavengeIndex) -> Self {
        PageAlloc {
            levels: [Level { base: core::ptr::null_mut(), len: 0 }; SUMMARY_LEVELS],
            chunks: [None; CHUNKS_L1],
            search_addr: MAX_SEARCH_ADDR,
            start: 0,
            end: 0,
            in_use: AddrRanges::new(),
            pages_in_use: 0,
            pages_scavenged: 0,
            summary_bytes: 0,
            index,
            index_bytes: 0,
            pages_releasing: 0,
            generation: 2,
        }
    }

    #[cfg(any(test, feature = "testing"))]
    /// The address ranges the heap owns.
    pub fn in_use(&self) -> &AddrRanges {
        &self.in_use
    }

    /// Bytes of address space the heap owns.
    pub fn mapped_bytes(&self) -> usize {
        self.in_use.total_bytes()
    }

    /// Pages handed out and not freed.
    pub fn pages_in_use(&self) -> usize {
        self.pages_in_use
    }

    /// Free pages whose memory is released (or was never touched).
    pub fn pages_scavenged(&self) -> usize {
        self.pages_scavenged
    }

    /// Free pages being released by a scavenger right now (counted among
    /// the free, unscavenged pages).
    pub fn pages_releasing(&self) -> usize {
        self.pages_releasing
    }

    #[cfg(any(test, feature = "testing"))]
    /// The scavenge index, for lock-free searches.
    pub fn index(&self) -> &'static ScavengeIndex {
        self.index
    }

    /// Starts a new scavenger generation (the background scavenger does, about
    /// once a second). A chunk stays dense for the generation it was seen
    /// dense in and the next.
    pub fn next_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1).max(2);
    }

    /// Free pages whose memory may still be resident.
    pub fn pages_free_unscavenged(&self) -> usize {
        self.mapped_bytes() / PAGE_SIZE - self.pages_in_use - self.pages_scavenged
    }

    /// Bytes of memory the summary tree and the chunk map take: the
    /// summary pages made ready, and the data of every chunk the heap owns
    /// (the chunk map's blocks are mapped whole, but only the entries of
    /// owned chunks are ever touched).
    pub fn metadata_bytes(&self) -> usize {
        self.summary_bytes + self.index_bytes + self.mapped_bytes() / CHUNK_BYTES * core::mem::size_of::<ChunkData>()
    }

    #[cfg(any(test, feature = "testing"))]
    /// The current search hint.
    pub fn search_addr(&self) -> usize {
        self.search_addr
    }

    /// The data of chunk `ci`, if the heap has ever owned it.
    #[inline]
    pub fn chunk(&self, ci: usize) -> Option<&ChunkData> {
        let block = self.chunks.get(ci >> CHUNKS_L2_BITS)?.as_ref()?;
        // SAFETY: a non-null block pointer refers to a live, zero-initialised
        // array of `CHUNKS_L2` entries owned by `self`; all-zero is a valid
        // `ChunkData`.
        Some(unsafe { &(*block.as_ptr())[ci & (CHUNKS_L2 - 1)] })
    }

    #[inline]
    fn chunk_mut(&mut self, ci: usize) -> Option<&mut ChunkData> {
        let block = self.chunks.get(ci >> CHUNKS_L2_BITS)?.as_ref()?;
        // SAFETY: as in `chunk`, and `&mut self` makes this the only access.
        Some(unsafe { &mut (*block.as_ptr())[ci & (CHUNKS_L2 - 1)] })
    }

    /// Chunk data for a chunk the caller knows the heap owns.
    #[inline]
    fn owned_chunk_mut(&mut self, ci: usize) -> &mut ChunkData {
        match self.chunk_mut(ci) {
            Some(c) => c,
            None => fatal(format_args!("page heap: chunk {ci:#x} has no metadata")),
        }
    }

    /// The summary of entry `idx` of level `level`, for an entry under
    /// address space the heap owns.
    #[inline]
    pub fn summary(&self, level: usize, idx: usize) -> Summary {
        let lvl = &self.levels[level];
        debug_assert!(idx < lvl.len, "summary[{level}][{idx}] beyond ready part {}", lvl.len);
        // SAFETY: entries covering owned address space were made ready by
        // `grow` (whole blocks of them), and `find`/`update` only read such
        // entries; the index is within the level's reservation.
        unsafe { *lvl.base.add(idx) }
    }

    #[inline]
    fn set_summary(&mut self, level: usize, idx: usize, s: Summary) {
        let lvl = &self.levels[level];
        debug_assert!(idx < lvl.len);
        // SAFETY: as in `summary`; `&mut self` makes this the only access.
        unsafe { *lvl.base.add(idx) = s }
    }

    /// Gives back the summary arrays' reservations (when dropped).
    fn release_levels(&mut self) {
        for (level, entries) in self.levels.iter_mut().zip(LEVEL_ENTRIES) {
            if !level.base.is_null() {
                // SAFETY: the reservation was made for this allocator and
                // is owned by `self`; nothing else points into it.
                unsafe { os::unmap(level.base as usize, level_reservation_bytes(entries)) };
                *level = Level { base: core::ptr::null_mut(), len: 0 };
            }
        }
    }

    /// Adds `[base, base + size)` (rounded out to whole chunks) to the heap
    /// as free pages. New pages count as scavenged: they have never been
    /// touched, so they hold no physical memory.
    ///
    /// The range must not overlap address space the heap already owns. The
    /// caller makes the memory itself ready; this only records it (and
    /// maps the metadata it needs, on this thread: the process heap does
    /// the three steps separately, see [`GrowthNeeds`]).
    #[cfg(any(test, feature = "testing"))]
    pub fn grow(&mut self, base: usize, size: usize) -> Result<(), OutOfMemory> {
        let maps = self.growth_needs(base, size)?.map()?;
        self.grow_mapped(maps);
        Ok(())
    }

    /// What adding `[base, base + size)` (rounded out to whole chunks)
    /// needs mapped first (see [`GrowthNeeds`]). Fails for a range outside
    /// the heap's address bits or one that needs absurdly many chunk-table
    /// blocks; stops the process for one that overlaps the heap.
    pub fn growth_needs(&self, base: usize, size: usize) -> Result<GrowthNeeds, OutOfMemory> {
        let limit = base.checked_add(size).ok_or(OutOfMemory)?.next_multiple_of(CHUNK_BYTES);
        let base = base & !(CHUNK_BYTES - 1);
        if base >= limit || limit > 1 << HEAP_ADDR_BITS {
            return Err(OutOfMemory);
        }
        let new = AddrRange::new(base, limit);
        let succ = self.in_use.find_succ(base);
        let ranges = self.in_use.as_slice();
        if (succ > 0 && ranges[succ - 1].limit > base) || ranges.get(succ).is_some_and(|r| r.base < limit) {
            fatal(format_args!("page heap: grow of [{base:#x}, {limit:#x}) overlaps the heap"));
        }
        let mut needs = GrowthNeeds {
            range: new,
            level_bases: [0; SUMMARY_LEVELS],
            summaries: [AddrRange::default(); SUMMARY_LEVELS],
            index_storage: self.index.storage_addr(),
            index_ready: AddrRange::default(),
            blocks: [0; MAX_GROWTH_BLOCKS],
            nblocks: 0,
            ranges_cap: self.in_use.capacity_needed(),
        };
        for l in 0..SUMMARY_LEVELS {
            needs.level_bases[l] = self.levels[l].base as usize;
            // The parts the neighbours made ready are ready already.
            let mut need = summary_offsets_for(l, new);
            if succ > 0 {
                need = need.subtract(summary_offsets_for(l, ranges[succ - 1]));
            }
            if let Some(&next) = ranges.get(succ) {
                need = need.subtract(summary_offsets_for(l, next));
            }
            needs.summaries[l] = need;
        }
        // The index bytes for every chunk between the lowest and the
        // highest the heap will own (making ready bytes that already are
        // changes nothing).
        let (first, last) = (chunk_index(base), chunk_index(limit) - 1);
        let (lo, hi) = match self.index.bounds() {
            Some((min, max)) => (min.min(first), (max - 1).max(last)),
            None => (first, last),
        };
        let page = os::page_size();
        needs.index_ready = AddrRange::new((lo / 8) & !(page - 1), (hi / 8 + 1).next_multiple_of(page));
        for slot in (first >> CHUNKS_L2_BITS)..=(last >> CHUNKS_L2_BITS) {
            if self.chunks[slot].is_none() {
                if needs.nblocks == MAX_GROWTH_BLOCKS {
                    return Err(OutOfMemory);
                }
                needs.blocks[needs.nblocks] = slot;
                needs.nblocks += 1;
            }
        }
        Ok(needs)
    }

    /// Records a range whose metadata [`GrowthNeeds::map`] mapped: makes
    /// no system call, so the process heap calls it under its lock. The
    /// needs must have been found by this allocator, and nothing but this
    /// call may have grown it since.
    pub fn grow_mapped(&mut self, maps: GrowthMaps) {
        let needs = &maps.needs;
        let new = needs.range;
        let (base, limit) = (new.base, new.limit);
        for l in 0..SUMMARY_LEVELS {
            let lvl = &mut self.levels[l];
            debug_assert!(lvl.base.is_null() || lvl.base as usize == needs.level_bases[l]);
            lvl.base = needs.level_bases[l] as *mut Summary;
            self.summary_bytes += needs.summaries[l].size();
            let (_, hi) = addrs_to_summary_range(l, base, limit);
            let (_, hi) = block_align_summary_range(l, 0, hi);
            lvl.len = lvl.len.max(hi);
        }
        if !self.index.has_storage() {
            // SAFETY: the reservation lives as long as `self` (released in
            // `Drop`), holds one byte per 8 chunks of the address space, and
            // each byte is made ready (zeroed) before `grow` covers it.
            unsafe { self.index.set_storage(needs.index_storage as *const core::sync::atomic::AtomicU8) };
        }
        self.index_bytes = needs.index_ready.size();
        for (&slot, &block) in needs.blocks[..needs.nblocks].iter().zip(&maps.blocks) {
            debug_assert!(self.chunks[slot].is_none());
            self.chunks[slot] = block;
        }
        if let Some(storage) = maps.ranges {
            // SAFETY: fresh persistent storage for `ranges_cap` entries,
            // more than the list holds.
            unsafe { self.in_use.adopt_storage(storage, needs.ranges_cap) };
        }

        if self.in_use.is_empty() || chunk_index(base) < self.start {
            self.start = chunk_index(base);
        }
        self.end = self.end.max(chunk_index(limit));
        if self.in_use.add(new).is_err() {
            fatal(format_args!("page heap: range list lost its reserved slot"));
        }
        if base < self.search_addr {
            self.search_addr = base;
        }
        for ci in chunk_index(base)..chunk_index(limit) {
            self.owned_chunk_mut(ci).init_fresh();
        }
        let npages = (limit - base) / PAGE_SIZE;
        self.pages_scavenged += npages;
        self.update(base, npages, true, false);
        self.index.grow(chunk_index(base), chunk_index(limit) - 1);
    }

    /// Recomputes the summaries above pages `[base, base + npages)` after
    /// their bits changed. `contiguous` says the change was one run (so the
    /// chunks strictly inside it are all in use or all free, per `alloc`).
    fn update(&mut self, base: usize, npages: usize, contiguous: bool, alloc: bool) {
        let last = base + npages * PAGE_SIZE - 1;
        let (sc, ec) = (chunk_index(base), chunk_index(last));
        let leaf = SUMMARY_LEVELS - 1;
        if sc == ec {
            let old = self.summary(leaf, sc);
            let new = self.owned_chunk_mut(sc).alloc.summarize();
            if old == new {
                return;
            }
            self.set_summary(leaf, sc, new);
        } else if contiguous {
            let first = self.owned_chunk_mut(sc).alloc.summarize();
            self.set_summary(leaf, sc, first);
            let inner = if alloc { Summary::FULL } else { Summary::pack(CHUNK_PAGES, CHUNK_PAGES, CHUNK_PAGES) };
            for ci in sc + 1..ec {
                self.set_summary(leaf, ci, inner);
            }
            let lastsum = self.owned_chunk_mut(ec).alloc.summarize();
            self.set_summary(leaf, ec, lastsum);
        } else {
            for ci in sc..=ec {
                let s = self.owned_chunk_mut(ci).alloc.summarize();
                self.set_summary(leaf, ci, s);
            }
        }
        // Walk up, stopping as soon as a level did not change.
        for l in (0..leaf).rev() {
            let child_bits = LEVEL_BITS[l + 1];
            let child_log_pages = LEVEL_LOG_PAGES[l + 1];
            let (lo, hi) = addrs_to_summary_range(l, base, last + 1);
            let mut changed = false;
            for i in lo..hi {
                let children = self.children(l + 1, i << child_bits, 1 << child_bits);
                let merged = Summary::merge(children, child_log_pages);
                if self.summary(l, i) != merged {
                    self.set_summary(l, i, merged);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// A block of `n` summaries of `level` starting at `first`.
    #[inline]
    fn children(&self, level: usize, first: usize, n: usize) -> &[Summary] {
        let lvl = &self.levels[level];
        debug_assert!(first + n <= lvl.len);
        // SAFETY: blocks under owned address space are ready (see
        // `summary`), and the block lies within the level's reservation.
        unsafe { core::slice::from_raw_parts(lvl.base.add(first), n) }
    }

    /// The lowest owned address at or above `addr`, or [`MAX_SEARCH_ADDR`].
    fn find_mapped_addr(&self, addr: usize) -> usize {
        self.in_use.find_addr_greater_equal(addr).unwrap_or(MAX_SEARCH_ADDR)
    }

    /// Finds the lowest address at which `npages` free pages start, without
    /// changing anything.
    ///
    /// Also returns the best new search hint this walk could prove: the
    /// lowest address that may still hold a free page.
    pub fn find(&self, npages: usize) -> (Option<usize>, usize) {
        if npages == 0 || self.in_use.is_empty() {
            return (None, self.search_addr);
        }
        // The window [first_free_base, first_free_bound] must contain the
        // heap's first free page; it narrows as the walk descends through
        // entries that have free pages, and stops narrowing once the walk has
        // to move past the first such entry.
        let mut first_free = (0usize, MAX_SEARCH_ADDR);
        let found_free = |first_free: &mut (usize, usize), addr: usize, size: usize| {
            let bound = addr + (size - 1);
            if first_free.0 <= addr && bound <= first_free.1 {
                *first_free = (addr, bound);
            }
        };

        let mut i = 0;
        'levels: for l in 0..SUMMARY_LEVELS {
            let per_block = 1usize << LEVEL_BITS[l];
            let log_pages = LEVEL_LOG_PAGES[l];
            i <<= LEVEL_BITS[l];
            let entries = self.children(l, i, per_block);
            // Skip the entries below the search hint when the hint lies in
            // this block.
            let search_idx = self.search_addr >> LEVEL_SHIFT[l];
            let j0 = if search_idx & !(per_block - 1) == i { search_idx & (per_block - 1) } else { 0 };

            // A run of free pages across entry boundaries: `run` pages
            // starting at page `run_base` of this block.
            let mut run_base = 0usize;
            let mut run = 0usize;
            for (j, &sum) in entries.iter().enumerate().skip(j0) {
                if sum.is_full() {
                    run = 0;
                    continue;
                }
                found_free(&mut first_free, (i + j) << LEVEL_SHIFT[l], 1 << LEVEL_SHIFT[l]);
                let (s, m, e) = sum.unpack();
                if run + s >= npages {
                    if run == 0 {
                        run_base = j << log_pages;
                    }
                    run += s;
                    break;
                }
                if m >= npages {
                    i += j;
                    continue 'levels;
                }
                if run == 0 || s < 1 << log_pages {
                    // Start a new run at this entry's free tail.
                    run = e;
                    run_base = ((j + 1) << log_pages) - e;
                    continue;
                }
                // The whole entry is free: the run continues through it.
                run += 1 << log_pages;
            }
            if run >= npages {
                let addr = (i << LEVEL_SHIFT[l]) + run_base * PAGE_SIZE;
                return (Some(addr), self.find_mapped_addr(first_free.0));
            }
            if l == 0 {
                return (None, MAX_SEARCH_ADDR);
            }
            fatal(format_args!(
                "page heap: summary at level {} index {} promised {} free pages that level {} does not have",
                l - 1,
                i >> LEVEL_BITS[l],
                npages,
                l
            ));
        }

        // The walk reached a chunk whose longest run fits.
        let ci = i;
        let Some(chunk) = self.chunk(ci) else {
            fatal(format_args!("page heap: summary points at chunk {ci:#x} with no metadata"));
        };
        let (j, hint) = chunk.alloc.find(npages, 0);
        let Some(j) = j else {
            fatal(format_args!("page heap: chunk {ci:#x} summary promised {npages} free pages"));
        };
        let addr = chunk_base(ci) + j * PAGE_SIZE;
        let hint_addr = chunk_base(ci) + hint * PAGE_SIZE;
        found_free(&mut first_free, hint_addr, chunk_base(ci + 1) - hint_addr);
        (Some(addr), self.find_mapped_addr(first_free.0))
    }

    /// Allocates the lowest-addressed run of `npages` free pages.
    pub fn alloc(&mut self, npages: usize) -> Option<PageRun> {
        if npages == 0 || chunk_index(self.search_addr) >= self.end {
            return None;
        }
        let mut found = None;
        // Fast path: the run may fit in the chunk the hint points into.
        let search_page = chunk_page_index(self.search_addr);
        if CHUNK_PAGES - search_page >= npages {
            let ci = chunk_index(self.search_addr);
            if self.summary(SUMMARY_LEVELS - 1, ci).max() >= npages {
                let chunk = self.chunk(ci)?;
                let (j, hint) = chunk.alloc.find(npages, search_page);
                let Some(j) = j else {
                    fatal(format_args!("page heap: chunk {ci:#x} summary promised {npages} free pages"));
                };
                found = Some((chunk_base(ci) + j * PAGE_SIZE, chunk_base(ci) + hint * PAGE_SIZE));
            }
        }
        let (addr, hint) = match found {
            Some(f) => f,
            None => match self.find(npages) {
                (Some(addr), hint) => (addr, hint),
                (None, _) => {
                    if npages == 1 {
                        // Not one free page: the heap is full.
                        self.search_addr = MAX_SEARCH_ADDR;
                    }
                    return None;
                }
            },
        };
        let scavenged_bytes = self.alloc_range(addr, npages);
        if self.search_addr < hint {
            self.search_addr = hint;
        }
        Some(PageRun { base: addr, scavenged_bytes })
    }

    /// Allocates `npages` free pages starting at a multiple of
    /// `align_pages * PAGE_SIZE` (`align_pages` a power of two).
    ///
    /// Placement: every fit starts at or above the lowest fit of `npages`,
    /// so that address rounded up to the alignment, if `npages` free pages
    /// start there, is the lowest aligned fit, and it is used. Otherwise the
    /// aligned run is placed in the lowest free run of
    /// `npages + align_pages - 1` pages, which always has room for one.
    pub fn alloc_aligned(&mut self, npages: usize, align_pages: usize) -> Option<PageRun> {
        debug_assert!(align_pages.is_power_of_two());
        if align_pages <= 1 {
            return self.alloc(npages);
        }
        let align = align_pages * PAGE_SIZE;
        let (first, hint) = self.find(npages);
        let first = first?;
        let aligned = first.next_multiple_of(align);
        let addr = if self.is_free(aligned, npages) {
            aligned
        } else {
            let (wide, _) = self.find(npages.checked_add(align_pages - 1)?);
            wide?.next_multiple_of(align)
        };
        let scavenged_bytes = self.alloc_range(addr, npages);
        if self.search_addr < hint {
            self.search_addr = hint;
        }
        Some(PageRun { base: addr, scavenged_bytes })
    }

    /// Whether all of `[base, base + npages * PAGE_SIZE)` is owned and free.
    pub fn is_free(&self, base: usize, npages: usize) -> bool {
        let mut at = base;
        let end = base + npages * PAGE_SIZE;
        while at < end {
            let ci = chunk_index(at);
            let i = chunk_page_index(at);
            let n = (CHUNK_PAGES - i).min((end - at) / PAGE_SIZE);
            if !self.in_use.contains(at) {
                return false;
            }
            match self.chunk(ci) {
                Some(c) if c.alloc.count_range(i, n) == 0 => {}
                _ => return false,
            }
            at += n * PAGE_SIZE;
        }
        true
    }

    /// Marks the free pages `[base, base + npages * PAGE_SIZE)` as in use and
    /// returns how many bytes of them were scavenged. Every page must be
    /// owned and free; anything else stops the process.
    pub fn alloc_range(&mut self, base: usize, npages: usize) -> usize {
        self.take_range(base, npages, true)
    }

    /// `alloc_range`, recording chunk density only if `note_density` (a
    /// scavenger's temporary take does not make a chunk dense).
    fn take_range(&mut self, base: usize, npages: usize, note_density: bool) -> usize {
        if npages == 0 {
            return 0;
        }
        if !self.is_free(base, npages) {
            fatal(format_args!("page heap: allocating {npages} pages at {base:#x}, which are not all free heap pages"));
        }
        let last = base + npages * PAGE_SIZE - 1;
        let mut scavenged = 0;
        self.for_each_chunk_part(base, last, |chunk, i, n| {
            scavenged += chunk.scavenged.count_range(i, n);
            if n == CHUNK_PAGES {
                chunk.alloc_all();
            } else {
                chunk.alloc_range(i, n);
            }
        });
        self.pages_in_use += npages;
        self.pages_scavenged -= scavenged;
        if note_density {
            self.note_density(chunk_index(base), chunk_index(last));
        }
        self.update(base, npages, true, true);
        scavenged * PAGE_SIZE
    }

    /// Returns `[base, base + npages * PAGE_SIZE)` to the free pages, marked
    /// scavenged if `scavenged` (its memory has been released).
    ///
    /// Freeing a page that is not in use (a double free, or an address the
    /// heap never handed out) stops the process with one line naming the
    /// address.
    pub fn free(&mut self, base: usize, npages: usize, scavenged: bool) {
        if npages == 0 {
            return;
        }
        let bad = |addr: usize| -> ! {
            fatal(format_args!(
                "page heap: freeing {npages} pages at {base:#x}: page {addr:#x} is not in use (double free or foreign pointer)"
            ))
        };
        if !base.is_multiple_of(PAGE_SIZE) {
            bad(base);
        }
        let Some(last) = (npages.checked_mul(PAGE_SIZE)).and_then(|b| base.checked_add(b - 1)) else { bad(base) };
        // Check every page first, so that a bad free changes nothing.
        let mut at = base;
        while at <= last {
            let ci = chunk_index(at);
            let i = chunk_page_index(at);
            let n = (CHUNK_PAGES - i).min((last - at) / PAGE_SIZE + 1);
            let Some(chunk) = self.chunk(ci).filter(|_| self.in_use.contains(at)) else { bad(at) };
            if chunk.alloc.count_range(i, n) != n {
                bad(chunk_base(ci) + chunk.alloc.first_clear_in(i, n).unwrap_or(i) * PAGE_SIZE);
            }
            at += n * PAGE_SIZE;
        }
        if base < self.search_addr {
            self.search_addr = base;
        }
        self.for_each_chunk_part(base, last, |chunk, i, n| {
            // Checked above, so this cannot fail.
            let _ = chunk.free_range(i, n);
            if scavenged {
                chunk.mark_scavenged(i, n);
            }
        });
        self.pages_in_use -= npages;
        if scavenged {
            self.pages_scavenged += npages;
        }
        // A free makes pages, or a physical page they share with free
        // unreleased pages, releasable: the chunk may hold work again.
        // Released pages come back as whole physical pages (deep release,
        // arenas and the scavenger release nothing less), which change no
        // other physical page; mark for any that do not, to lose nothing.
        let os_page = os::page_size().max(PAGE_SIZE);
        if !scavenged || !base.is_multiple_of(os_page) || !(last + 1).is_multiple_of(os_page) {
            self.index.mark(chunk_index(base), chunk_index(last));
        }
        self.update(base, npages, true, false);
    }

    /// Looks in chunk `ci` for a run of free, unreleased pages for a
    /// scavenger (see [`bitmap::ChunkData::find_release_candidate`] for
    /// `min_pages`, `max_pages` and `huge_pages`). With `skip_dense`, a chunk
    /// that is dense now or was in the last generation is reported as such
    /// and left marked. A chunk with nothing to release is unmarked; free
    /// unreleased pages it still holds share a physical page with pages in
    /// use, and the free of those marks the chunk again.
    pub fn release_candidate(
        &mut self,
        ci: usize,
        min_pages: usize,
        max_pages: usize,
        huge_pages: usize,
        skip_dense: bool,
    ) -> ReleaseCandidate {
        let generation = self.generation;
        let Some(chunk) = self.chunk(ci).filter(|_| self.in_use.contains(chunk_base(ci))) else {
            self.index.clear(ci);
            return ReleaseCandidate::Nothing;
        };
        if skip_dense && (chunk.pages_in_use() >= DENSE_PAGES || chunk.dense_gen.wrapping_add(1) >= generation) {
            return ReleaseCandidate::Dense;
        }
        match chunk.find_release_candidate(min_pages, max_pages, huge_pages) {
            Some((first, npages)) => ReleaseCandidate::Run {
                base: chunk_base(ci) + first * PAGE_SIZE,
                npages,
                released: chunk.scavenged.count_range(first, npages),
            },
            None => {
                self.index.clear(ci);
                ReleaseCandidate::Nothing
            }
        }
    }

    /// Takes free pages out of the heap for a scavenger, which releases
    /// them without the heap lock and then calls
    /// [`end_release`](Self::end_release). Meanwhile they cannot be
    /// allocated. Some may be released already (a candidate from
    /// [`release_candidate`](Self::release_candidate) is whole physical
    /// pages); they are counted as unreleased until `end_release`.
    pub fn begin_release(&mut self, base: usize, npages: usize) {
        let was_in_use = self.pages_in_use;
        self.take_range(base, npages, false);
        self.pages_in_use = was_in_use;
        self.pages_releasing += npages;
    }

    /// Puts pages taken by [`begin_release`](Self::begin_release) back as
    /// free, marked released if `released` (the OS took them), or else
    /// unreleased (even those that were released before: a safe
    /// overstatement of what is resident).
    pub fn end_release(&mut self, base: usize, npages: usize, released: bool) {
        self.pages_releasing -= npages;
        self.pages_in_use += npages;
        self.free(base, npages, released);
    }

    /// Records the generation in which chunks `[sc, ec]` were dense.
    #[inline]
    fn note_density(&mut self, sc: usize, ec: usize) {
        let generation = self.generation;
        for ci in sc..=ec {
            let chunk = self.owned_chunk_mut(ci);
            if chunk.pages_in_use() >= DENSE_PAGES {
                chunk.dense_gen = generation;
            }
        }
    }

    /// Calls `f(chunk, first_page, npages)` for each chunk's part of the
    /// owned page range `[base, last]`.
    #[inline]
    fn for_each_chunk_part(&mut self, base: usize, last: usize, mut f: impl FnMut(&mut ChunkData, usize, usize)) {
        let (sc, ec) = (chunk_index(base), chunk_index(last));
        let (si, ei) = (chunk_page_index(base), chunk_page_index(last));
        if sc == ec {
            f(self.owned_chunk_mut(sc), si, ei + 1 - si);
            return;
        }
        f(self.owned_chunk_mut(sc), si, CHUNK_PAGES - si);
        for ci in sc + 1..ec {
            f(self.owned_chunk_mut(ci), 0, CHUNK_PAGES);
        }
        f(self.owned_chunk_mut(ec), 0, ei + 1);
    }
}

impl Default for PageAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PageAlloc {
    fn drop(&mut self) {
        // Only test and benchmark instances are ever dropped; the process's
        // heap lives in a static.
        self.release_levels();
        if self.index.has_storage() {
            // SAFETY: the index reservation was made by `make_index_ready`
            // for this value alone, and the index dies with it.
            unsafe { os::unmap(self.index.storage_addr(), INDEX_RESERVATION) };
        }
        let bytes = core::mem::size_of::<ChunkBlock>().next_multiple_of(os::page_size());
        for slot in self.chunks.iter_mut() {
            if let Some(block) = slot.take() {
                // SAFETY: the block was mapped by `grow` for this value alone.
                unsafe { os::unmap(block.as_ptr() as usize, bytes) };
            }
        }
    }
}

#[cfg(test)]
mod tests;
