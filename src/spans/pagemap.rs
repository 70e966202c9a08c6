//! The page → span map: for any heap address, the span that owns its page,
//! in two dependent loads.
//!
//! A flat table over a 48-bit address space would be 2^35 entries, so the
//! map is two-level like the page heap's chunk map: 2^13 root slots, each
//! covering 32 GiB of address space with a table of 2^22 span pointers
//! (32 MiB of address space, mapped whole but touched only where the heap
//! has spans: one 4 KiB page of entries per 4 MiB chunk in use). The memory
//! it costs is therefore 8 bytes per heap page, [`metadata_bytes`].
//!
//! Readers take no lock: the entries are atomics. An entry is written
//! before the span's memory is handed to anyone, under the locks that
//! publish the span, so a reader that holds a pointer into the span (which
//! it got through some synchronising hand-off) sees the entry.

use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use super::span::Span;
use crate::os;
use crate::pages::{HEAP_ADDR_BITS, PAGE_SHIFT};

const ROOT_BITS: u32 = 13;
const LEAF_BITS: u32 = HEAP_ADDR_BITS - PAGE_SHIFT - ROOT_BITS;
const LEAF_ENTRIES: usize = 1 << LEAF_BITS;

type Leaf = [AtomicPtr<Span>; LEAF_ENTRIES];

static ROOT: [AtomicPtr<Leaf>; 1 << ROOT_BITS] = [const { AtomicPtr::new(ptr::null_mut()) }; 1 << ROOT_BITS];

/// The leaf table for `addr`, if one was ever made.
#[inline]
fn leaf(addr: usize) -> Option<&'static Leaf> {
    let slot = ROOT.get(addr >> (PAGE_SHIFT + LEAF_BITS))?;
    let p = slot.load(Ordering::Acquire);
    // SAFETY: a non-null root entry points to a zeroed leaf table that is
    // never unmapped; all-zero bytes are null `AtomicPtr`s.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// The span owning the page that contains `addr`, or null if no span does.
#[inline]
pub fn lookup(addr: usize) -> *mut Span {
    match leaf(addr) {
        Some(l) => l[(addr >> PAGE_SHIFT) & (LEAF_ENTRIES - 1)].load(Ordering::Acquire),
        None => ptr::null_mut(),
    }
}

/// Makes sure leaf tables exist for `[base, base + npages pages)`. Fails
/// only when the OS refuses memory.
pub fn prepare(base: usize, npages: usize) -> Result<(), os::OsError> {
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

/// Points every page of `[base, base + npages pages)` at `span` (or at null
/// to forget them). The leaf tables must have been prepared.
pub fn set(base: usize, npages: usize, span: *mut Span) {
    for i in 0..npages {
        let addr = base + (i << PAGE_SHIFT);
        match leaf(addr) {
            Some(l) => l[(addr >> PAGE_SHIFT) & (LEAF_ENTRIES - 1)].store(span, Ordering::Release),
            None => crate::report::fatal(format_args!("page map: no table for {addr:#x}")),
        }
    }
}

/// The memory the map's entries for a heap of `heap_bytes` take: one
/// pointer per heap page (the rest of each table is never touched).
pub fn metadata_bytes(heap_bytes: usize) -> usize {
    (heap_bytes >> PAGE_SHIFT) * core::mem::size_of::<AtomicPtr<Span>>()
}
