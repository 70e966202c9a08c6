//! The heap profile's table: per (call stack, size key), how many sampled
//! objects were allocated and freed and their bytes, each already scaled
//! to stand for the allocations the sampling skipped.
//!
//! The table lives in persistent memory mapped once, when the first sample
//! is taken, and is bounded: `SCAVALLOC_PROF_MAX` entries (a sample whose
//! stack finds no room is counted as dropped). Entries are never removed,
//! and their stacks never change once written, so a dump copies the
//! counters under the lock and reads the stacks after it.
//!
//! Every sample is scaled by its own size, not by an average over its
//! stack: with byte-based Poisson sampling at mean `rate`, an allocation of
//! `size` bytes is sampled with probability `1 - e^(-size/rate)`, so each
//! sample stands for `1 / (1 - e^(-size/rate))` allocations of that size.
//! Summing those per sample is unbiased whatever mix of sizes a stack
//! allocates; scaling a stack's totals by its mean size is not (a stack
//! that allocates one large and many small objects would be misjudged).
//!
//! A side module like `persistent`: the span layer tells it of frees of
//! sampled objects, the profile module of allocations; it calls neither.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::os;
use crate::sync::Mutex;

/// Frames kept per stack, innermost first.
pub(crate) const MAX_FRAMES: usize = 64;

/// The figures of one entry, scaled.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Counts {
    pub alloc_objects: f64,
    pub alloc_bytes: f64,
    pub freed_objects: f64,
    pub freed_bytes: f64,
}

/// One (stack, size key) of the table.
#[repr(C)]
struct Entry {
    hash: u64,
    /// The size class, or a large object's size bucket (see
    /// [`crate::profile`]).
    key: u32,
    nframes: u32,
    counts: Counts,
    frames: [usize; MAX_FRAMES],
}

/// The table behind its lock.
struct Table {
    /// `max` entries, `used` of them written.
    entries: *mut Entry,
    used: u32,
    max: u32,
    /// Open addressing: entry numbers plus one (0: empty), `mask + 1`
    /// slots, twice the entries or more.
    index: *mut u32,
    mask: usize,
    /// The mean sampling interval in bytes (1: every allocation).
    rate: f64,
}

// SAFETY: the pointers are to persistent memory that only the lock's
// holder writes.
unsafe impl Send for Table {}

static TABLE: Mutex<Table> =
    Mutex::new(Table { entries: core::ptr::null_mut(), used: 0, max: 0, index: core::ptr::null_mut(), mask: 0, rate: 1.0 });

/// Samples that found the table full.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Whether the table was made: [`NOT_MADE`], [`MADE`] or [`FAILED`].
///
/// Not a `spin::Once`: a `fork()` while another thread ran one would leave
/// the child's spinning forever. The table is mapped with no lock held and
/// published under [`TABLE`]'s lock, which `fork()` holds too, so a child
/// sees it made or not made, and makes it itself if not.
static STATE: AtomicU8 = AtomicU8::new(NOT_MADE);
const NOT_MADE: u8 = 0;
const MADE: u8 = 1;
const FAILED: u8 = 2;

/// Maps the table for `max` entries, sampling at a mean of `rate` bytes,
/// once; false if the OS refused. Called with no allocator lock held.
pub(crate) fn make(max: usize, rate: usize) -> bool {
    match STATE.load(Ordering::Acquire) {
        MADE => return true,
        FAILED => return false,
        _ => {}
    }
    let max = max.clamp(1, u32::MAX as usize / 4);
    let slots = (max * 2).next_power_of_two();
    let entry_bytes = max * core::mem::size_of::<Entry>();
    let index_bytes = slots * core::mem::size_of::<u32>();
    let (entries, index) = (os::alloc_ready(entry_bytes), os::alloc_ready(index_bytes));
    let (Ok(entries), Ok(index)) = (entries, index) else {
        for (mapped, bytes) in [(entries, entry_bytes), (index, index_bytes)] {
            if let Ok(p) = mapped {
                // SAFETY: mapped just above and known to no one else.
                unsafe { os::unmap(p.as_ptr() as usize, bytes) };
            }
        }
        // Failed for good, unless another thread made it meanwhile.
        let _ = STATE.compare_exchange(NOT_MADE, FAILED, Ordering::AcqRel, Ordering::Acquire);
        return STATE.load(Ordering::Acquire) == MADE;
    };
    let won = {
        let mut table = TABLE.lock();
        let won = table.entries.is_null();
        if won {
            table.entries = entries.as_ptr().cast();
            table.max = max as u32;
            table.index = index.as_ptr().cast();
            table.mask = slots - 1;
            table.rate = rate.max(1) as f64;
            STATE.store(MADE, Ordering::Release);
        }
        won
    };
    if !won {
        // Another thread made it first: this one's mappings go back.
        // SAFETY: mapped above, never published, so no one else knows them.
        unsafe {
            os::unmap(entries.as_ptr() as usize, entry_bytes);
            os::unmap(index.as_ptr() as usize, index_bytes);
        }
    }
    true
}

/// How many allocations, and bytes, one sample of `size` bytes stands for.
pub(crate) fn weight(size: usize, rate: f64) -> (f64, f64) {
    let size = size as f64;
    if rate <= 1.0 {
        // Every allocation is sampled.
        return (1.0, size);
    }
    let objects = 1.0 / -(-size / rate).exp_m1();
    (objects, objects * size)
}

/// The hash of a stack and its key. Four independent lanes, each a
/// multiply-xor chain over every fourth frame, so that the multiplies of a
/// long stack overlap instead of waiting on each other (one chain took
/// most of a sample's time in the table); then a final mix so that nearby
/// addresses spread over the index.
fn hash(frames: &[usize], key: u32) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lanes = [0xcbf2_9ce4_8422_2325_u64 ^ u64::from(key), 0x8422_2325, 0x2545_f491_4f6c_dd1d, frames.len() as u64];
    let mut chunks = frames.chunks_exact(4);
    for chunk in &mut chunks {
        for (lane, &f) in lanes.iter_mut().zip(chunk) {
            *lane = (*lane ^ f as u64).wrapping_mul(K);
        }
    }
    for (lane, &f) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane = (*lane ^ f as u64).wrapping_mul(K);
    }
    let mut h = lanes[0] ^ lanes[1].rotate_left(16) ^ lanes[2].rotate_left(32) ^ lanes[3].rotate_left(48);
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

/// Records a sampled allocation of `size` bytes at `frames` (innermost
/// first, at most [`MAX_FRAMES`]) under `key`; returns its tag for
/// [`note_free`], or 0 if the table is full or was never made (the sample
/// is then counted as dropped).
pub(crate) fn note_alloc(frames: &[usize], key: u32, size: usize) -> u32 {
    let frames = &frames[..frames.len().min(MAX_FRAMES)];
    let h = hash(frames, key);
    let mut table = TABLE.lock();
    if table.entries.is_null() {
        drop(table);
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return 0;
    }
    let (objects, bytes) = weight(size, table.rate);
    let mut slot = h as usize & table.mask;
    loop {
        // SAFETY: `slot <= mask`, inside the index.
        let at = unsafe { *table.index.add(slot) };
        if at == 0 {
            break;
        }
        // SAFETY: index entries name written entries. Only the counts are
        // written through the pointer, never a reference to the entry: a
        // dump may be reading its frames meanwhile (see `snapshot`).
        unsafe {
            let e = table.entries.add(at as usize - 1);
            if (*e).hash == h && (*e).key == key && entry_frames(e) == frames {
                (*e).counts.alloc_objects += objects;
                (*e).counts.alloc_bytes += bytes;
                return at;
            }
        }
        slot = (slot + 1) & table.mask;
    }
    if table.used == table.max {
        drop(table);
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return 0;
    }
    let n = table.used;
    // SAFETY: `n < max`: an unwritten entry of the table's memory.
    let e = unsafe { &mut *table.entries.add(n as usize) };
    e.hash = h;
    e.key = key;
    e.nframes = frames.len() as u32;
    e.frames[..frames.len()].copy_from_slice(frames);
    e.counts = Counts { alloc_objects: objects, alloc_bytes: bytes, ..Counts::default() };
    table.used = n + 1;
    // SAFETY: `slot` is the empty index slot the probe stopped at.
    unsafe { *table.index.add(slot) = n + 1 };
    n + 1
}

/// Records that a sampled object of `size` bytes, tagged `tag` by
/// [`note_alloc`], was freed.
pub(crate) fn note_free(tag: u32, size: usize) {
    adjust(tag, size, |c, objects, bytes| {
        c.freed_objects += objects;
        c.freed_bytes += bytes;
    });
}

/// Takes back a sample [`note_alloc`] recorded whose object could not be
/// allocated where a free would notice it.
pub(crate) fn cancel(tag: u32, size: usize) {
    adjust(tag, size, |c, objects, bytes| {
        c.alloc_objects -= objects;
        c.alloc_bytes -= bytes;
    });
}

/// Applies `change` to the counts of the entry tagged `tag` (nothing for
/// tag 0), with the weight of one sample of `size` bytes.
fn adjust(tag: u32, size: usize, change: impl FnOnce(&mut Counts, f64, f64)) {
    if tag == 0 {
        return;
    }
    let table = TABLE.lock();
    let (objects, bytes) = weight(size, table.rate);
    debug_assert!(tag <= table.used);
    // SAFETY: tags name written entries. Only the counts are written, through
    // a reference to them alone, never to the whole entry: a dump may be
    // reading its frames meanwhile (see `snapshot`).
    change(unsafe { &mut *core::ptr::addr_of_mut!((*table.entries.add(tag as usize - 1)).counts) }, objects, bytes);
}

/// The frames of the written entry `e`.
///
/// # Safety
///
/// `e` is a written entry of the table (whose frames never change again).
unsafe fn entry_frames(e: *const Entry) -> &'static [usize] {
    // SAFETY: per the contract; the frames are never written again and the
    // table's memory is never unmapped.
    unsafe { core::slice::from_raw_parts(core::ptr::addr_of!((*e).frames).cast::<usize>(), (*e).nframes as usize) }
}

/// Counts a sample lost for want of room elsewhere (the sampled objects'
/// region).
pub(crate) fn note_dropped() {
    DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// One entry as a dump sees it.
pub(crate) struct Row {
    pub key: u32,
    pub counts: Counts,
    pub frames: &'static [usize],
}

/// Appends every entry to `out` (up to its spare capacity: the caller
/// reserves room first, so that nothing allocates under the lock), and
/// returns the entries there are in all.
pub(crate) fn snapshot(out: &mut Vec<Row>) -> usize {
    let table = TABLE.lock();
    let used = table.used as usize;
    let room = out.capacity() - out.len();
    for i in 0..used.min(room) {
        // SAFETY: a written entry (`i < used`); its key and frames never
        // change again and the memory is never unmapped, so the frames may
        // be read after the lock is dropped. Its counts are read under the
        // lock, by value.
        unsafe {
            let e = table.entries.add(i);
            out.push(Row { key: (*e).key, counts: (*e).counts, frames: entry_frames(e) });
        }
    }
    used
}

/// Entries in use, and samples dropped for want of room.
pub(crate) fn usage() -> (usize, u64) {
    (TABLE.lock().used as usize, DROPPED.load(Ordering::Relaxed))
}

/// The table's bytes that may be resident: the entries written and their
/// share of the index.
pub(crate) fn memory_bytes() -> usize {
    let table = TABLE.lock();
    if table.entries.is_null() {
        return 0;
    }
    table.used as usize * core::mem::size_of::<Entry>() + (table.mask + 1) * core::mem::size_of::<u32>()
}

/// Takes the table's lock before `fork()`.
pub(crate) fn lock_for_fork() {
    TABLE.hold_for_fork();
}

/// Releases the lock of [`lock_for_fork`].
pub(crate) fn unlock_after_fork() {
    // SAFETY: `lock_for_fork` took it on this thread.
    unsafe { TABLE.release_after_fork() };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stacks that differ in one frame, in the order of two frames, in
    /// length or in key hash apart (the lanes each see every fourth frame:
    /// a change in any one of them, and a swap between lanes, must show).
    #[test]
    fn hash_tells_stacks_apart() {
        let base: Vec<usize> = (0..41).map(|i| 0x5555_0000_1000 + i * 0x137).collect();
        let h = hash(&base, 3);
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(h));
        for i in 0..base.len() {
            let mut other = base.clone();
            other[i] += 1;
            assert!(seen.insert(hash(&other, 3)), "frame {i} changed");
            if i + 1 < base.len() {
                let mut swapped = base.clone();
                swapped.swap(i, i + 1);
                assert!(seen.insert(hash(&swapped, 3)), "frames {i} and {} swapped", i + 1);
            }
            assert!(seen.insert(hash(&base[..i], 3)), "cut to {i} frames");
        }
        assert!(seen.insert(hash(&base, 4)), "another key");
    }

    #[test]
    fn weights_are_the_inverse_sampling_probability() {
        assert_eq!(weight(48, 1.0), (1.0, 48.0));
        let rate = 65536.0;
        for size in [1usize, 16, 1000, 65536, 1 << 20] {
            let p = 1.0 - (-(size as f64) / rate).exp();
            let (objects, bytes) = weight(size, rate);
            assert!((objects * p - 1.0).abs() < 1e-9, "size {size}");
            assert!((bytes - objects * size as f64).abs() < 1e-6);
        }
    }
}
