//! Small objects chosen by the heap profiler: each lives alone in a slot
//! of a region kept for them, so that a free can tell a sampled object
//! from every other by its address alone.
//!
//! A sampled object must be noticed when it is freed, to move its bytes
//! from the profile's in-use figures to its freed ones. The free fast path
//! does not look objects up (it keeps any object of the thread's own span,
//! or any object at all in a single-threaded program), so a sampled object
//! handed out from an ordinary span would slip past it. Instead (as
//! tcmalloc does) sampled small objects are placed in address space of
//! their own: one slot each of the largest small class's size (or an OS
//! page if larger), at the slot's start, so that any alignment a
//! small class serves holds. The fast path keeps an object only if it lies
//! in the thread's own span, which a slot never does, or, in a
//! single-threaded program, after one subtraction and compare against this
//! region ([`contains`]); every other path reaches [`free`] through the
//! slow path, which checks the region first.
//!
//! The region is address space only (`MAP_NORESERVE`): a slot costs the
//! OS pages its object touches. A freed slot keeps its pages while fewer
//! than [`DIRTY_MAX`] freed slots do, for the next sampled object (a
//! steady program samples and frees without a system call); past that its
//! pages go back to the OS at once, outside the lock.
//!
//! The slot table records, per slot, whether it is live, its object's class,
//! the profile's tag for the object's stack and the size it was sampled
//! at: a double free, or a free of a pointer inside a slot that is not an
//! object's start, stops the process as it does for any other object.
//!
//! This module owns the region and its slots; what a sample's tag means is
//! the profile's (`crate::profile::table`), told of each free here.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use super::sizeclass::{self, MAX_SMALL_SIZE};
use crate::os;
use crate::profile::table;
use crate::report::fatal;
use crate::sync::Mutex;

/// Slots in the region: with 32 KiB slots, 4 GiB of address space. At the
/// default sampling rate of 512 KiB a slot stands for half a MiB of heap,
/// so the region covers 64 GiB of live small objects; a sampled object
/// that finds no slot is allocated as usual and counted as dropped.
const SLOTS: usize = 1 << 17;

/// Freed slots kept with their pages for reuse; past this, a freed slot's
/// pages go back to the OS.
pub(crate) const DIRTY_MAX: usize = 64;

/// Where no region is: no user pointer lies in the top `SLOTS * slot`
/// bytes of the address space (the kernel's half on every 64-bit Linux),
/// so [`contains`] is false for everything until the region exists.
const NO_REGION: usize = usize::MAX - (SLOTS << 16) + 1;

/// The region's first slot, its low bits the log2 of a slot's bytes (the
/// base is slot-aligned, a slot at least an OS page): one word, so that
/// [`contains`] never pairs a new base with an old slot size.
static REGION: AtomicUsize = AtomicUsize::new(NO_REGION | 16);
const SHIFT_BITS: usize = 0x3f;

/// The region's first slot and the log2 of a slot's bytes.
#[inline(always)]
fn region() -> (usize, usize) {
    let word = REGION.load(Ordering::Relaxed);
    (word & !SHIFT_BITS, word & SHIFT_BITS)
}

/// A slot's record. `class` is `FREE` while no object is in it.
#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    /// The profile's tag for the object's stack (0: none).
    tag: u32,
    /// The object's class, or [`FREE`].
    class: u16,
    /// The bytes at the slot's start that objects in it touched since its
    /// pages were last given back (0: none may be resident).
    resident: u32,
    /// The size the object was sampled at (its request).
    size: usize,
}

const FREE: u16 = u16::MAX;

/// The region's bookkeeping, under [`SLOTS_LOCK`].
struct Region {
    /// Slot records (`SLOTS` of them; null until the region exists).
    slots: *mut Slot,
    /// Freed slots whose pages went back to the OS, most recently freed
    /// last.
    free: *mut u32,
    nfree: usize,
    /// Slots never used yet start here.
    fresh: usize,
    /// Freed slots whose pages were kept (`dirty` of them, most recently
    /// freed last), taken before any other so that a program that samples
    /// and frees steadily makes no system call and takes no page fault,
    /// and those pages' bytes.
    dirty_slots: [u32; DIRTY_MAX],
    dirty: usize,
    dirty_bytes: usize,
    /// Live sampled objects, their bytes at their class sizes, and their
    /// slots' bytes that may be resident.
    live: usize,
    live_class_bytes: usize,
    live_bytes: usize,
}

// SAFETY: the pointers are to persistent tables only this lock's holder
// touches.
unsafe impl Send for Region {}

static SLOTS_LOCK: Mutex<Region> = Mutex::new(Region {
    slots: ptr::null_mut(),
    free: ptr::null_mut(),
    nfree: 0,
    fresh: 0,
    dirty_slots: [0; DIRTY_MAX],
    dirty: 0,
    dirty_bytes: 0,
    live: 0,
    live_class_bytes: 0,
    live_bytes: 0,
});

/// Whether the region was made: [`NOT_MADE`], [`MADE`] or [`FAILED`].
///
/// Not a `spin::Once`: a `fork()` while another thread ran one would leave
/// the child's spinning forever. The region is mapped with no lock held
/// and published under [`SLOTS_LOCK`], which `fork()` holds too.
static STATE: AtomicU8 = AtomicU8::new(NOT_MADE);
const NOT_MADE: u8 = 0;
const MADE: u8 = 1;
const FAILED: u8 = 2;

/// Whether `addr` lies in the sampled objects' region. One load, two
/// masks, a subtraction, a shift and a compare: the free fast path of a single-threaded
/// program asks this of objects outside the thread's own span.
#[inline(always)]
pub(crate) fn contains(addr: usize) -> bool {
    let (base, shift) = region();
    addr.wrapping_sub(base) < SLOTS << shift
}

/// Maps the region and its tables, once; false if the OS refused. Called
/// with no allocator lock held (it maps memory).
fn make_region() -> bool {
    match STATE.load(Ordering::Acquire) {
        MADE => return true,
        FAILED => return false,
        _ => {}
    }
    let slot = MAX_SMALL_SIZE.max(os::page_size());
    let shift = slot.trailing_zeros() as usize;
    debug_assert!(slot.is_power_of_two() && shift <= 16);
    // One slot more than needed, to align the first to a slot.
    let sizes = [(SLOTS + 1) << shift, SLOTS * core::mem::size_of::<Slot>(), SLOTS * core::mem::size_of::<u32>()];
    let maps = sizes.map(os::alloc_ready);
    let unmap_all = |maps: [Result<NonNull<u8>, os::OsError>; 3]| {
        for (mapped, bytes) in maps.into_iter().zip(sizes) {
            if let Ok(p) = mapped {
                // SAFETY: mapped here and never published: no one else
                // knows of it.
                unsafe { os::unmap(p.as_ptr() as usize, bytes) };
            }
        }
    };
    let [Ok(raw), Ok(slots), Ok(free)] = maps else {
        unmap_all(maps);
        // Failed for good, unless another thread made it meanwhile.
        let _ = STATE.compare_exchange(NOT_MADE, FAILED, Ordering::AcqRel, Ordering::Acquire);
        return STATE.load(Ordering::Acquire) == MADE;
    };
    let base = (raw.as_ptr() as usize + slot - 1) & !(slot - 1);
    let won = {
        let mut region = SLOTS_LOCK.lock();
        let won = region.slots.is_null();
        if won {
            region.slots = slots.as_ptr().cast();
            region.free = free.as_ptr().cast();
            // Published last: `contains` may now say yes.
            REGION.store(base | shift, Ordering::Release);
            STATE.store(MADE, Ordering::Release);
        }
        won
    };
    if !won {
        // Another thread made it first.
        unmap_all(maps);
    }
    true
}

/// Allocates a sampled object of `class` (requested as `size` bytes) in a
/// slot of its own, tagged `tag` for the profile; `None` when the region
/// cannot be made or is full (the caller then allocates as usual). The
/// object's bytes are zero only if `zeroed` is asked for.
pub(crate) fn alloc(class: usize, size: usize, tag: u32, zeroed: bool) -> Option<NonNull<u8>> {
    if !make_region() {
        return None;
    }
    let (base, shift) = region();
    let (index, used_before) = {
        let mut region = SLOTS_LOCK.lock();
        let (index, fresh) = if region.dirty > 0 {
            region.dirty -= 1;
            (region.dirty_slots[region.dirty] as usize, false)
        } else if region.nfree > 0 {
            region.nfree -= 1;
            // SAFETY: `free` has `SLOTS` entries, `nfree` of them set.
            (unsafe { *region.free.add(region.nfree) as usize }, false)
        } else if region.fresh < SLOTS {
            region.fresh += 1;
            (region.fresh - 1, true)
        } else {
            return None;
        };
        // SAFETY: `index < SLOTS`, a record of the table we hold.
        let slot = unsafe { &mut *region.slots.add(index) };
        let kept = slot.resident as usize;
        let resident = kept.max(touched_bytes(class));
        *slot = Slot { tag, class: class as u16, resident: resident as u32, size };
        region.dirty_bytes -= kept;
        region.live += 1;
        region.live_class_bytes += sizeclass::class_size(class);
        region.live_bytes += resident;
        // A slot used before holds old bytes: kept with its pages, or given
        // back with `MADV_FREE`, which need not zero them.
        (index, !fresh)
    };
    let object = (base + (index << shift)) as *mut u8;
    if zeroed && used_before {
        // SAFETY: the slot is ours alone now, and holds at least the
        // class's bytes.
        unsafe { ptr::write_bytes(object, 0, sizeclass::class_size(class)) };
    }
    NonNull::new(object)
}

/// The bytes of a slot that an object of `class` may have touched: its OS
/// pages.
fn touched_bytes(class: usize) -> usize {
    sizeclass::class_size(class).next_multiple_of(os::page_size())
}

/// The slot index of `addr`, an address in the region, if it is a slot's
/// start; stops the process for an address inside a slot.
fn slot_index(addr: usize, what: &str) -> usize {
    let (base, shift) = region();
    let offset = addr - base;
    if offset & ((1 << shift) - 1) != 0 {
        fatal(format_args!(
            "{what} of {addr:#x}, an interior pointer {} bytes into a sampled object",
            offset & ((1 << shift) - 1)
        ));
    }
    offset >> shift
}

/// The class of the live sampled object at `addr` (which [`contains`]);
/// stops the process if it is not the start of one (an interior pointer,
/// or a freed object: a double free).
pub(crate) fn class_of(addr: usize, what: &str) -> usize {
    let index = slot_index(addr, what);
    let region = SLOTS_LOCK.lock();
    // SAFETY: the region exists (`addr` is in it) and `index < SLOTS`.
    let class = unsafe { (*region.slots.add(index)).class };
    let never_used = index >= region.fresh;
    drop(region);
    if never_used {
        never_handed_out(what, addr);
    }
    if class == FREE {
        double_free(what, addr);
    }
    class as usize
}

/// Frees the sampled object at `addr` (which [`contains`]): tells the
/// profile, then keeps the slot's pages for reuse or gives them back.
/// Stops the process on a double free or an interior pointer. A free that
/// names a class must name the object's: `class` is checked if given.
pub(crate) fn free(addr: usize, class: Option<usize>, what: &str) {
    let index = slot_index(addr, what);
    let (slot, keep_pages) = {
        let mut region = SLOTS_LOCK.lock();
        // SAFETY: the region exists and `index < SLOTS`.
        let rec = unsafe { &mut *region.slots.add(index) };
        let slot = *rec;
        if index >= region.fresh {
            drop(region);
            never_handed_out(what, addr);
        }
        if slot.class == FREE {
            drop(region);
            double_free(what, addr);
        }
        if class.is_some_and(|c| c != slot.class as usize) {
            drop(region);
            fatal(format_args!(
                "{what} of {addr:#x} with a layout of another size class than the sampled {}-byte object it is",
                sizeclass::class_size(slot.class as usize)
            ));
        }
        rec.class = FREE;
        region.live -= 1;
        region.live_class_bytes -= sizeclass::class_size(slot.class as usize);
        region.live_bytes -= slot.resident as usize;
        let keep = region.dirty < DIRTY_MAX;
        if keep {
            // The slot goes back now, pages and all.
            let n = region.dirty;
            region.dirty_slots[n] = index as u32;
            region.dirty += 1;
            region.dirty_bytes += slot.resident as usize;
        } else {
            rec.resident = 0;
        }
        (slot, keep)
    };
    table::note_free(slot.tag, slot.size);
    if !keep_pages {
        // SAFETY: the slot is free and in no list: nobody reads or writes
        // its pages until it is put back below.
        let _ = unsafe { os::release(addr, slot.resident as usize) };
        let mut region = SLOTS_LOCK.lock();
        let n = region.nfree;
        // SAFETY: as above.
        unsafe { *region.free.add(n) = index as u32 };
        region.nfree += 1;
    }
}

#[cold]
#[inline(never)]
fn never_handed_out(what: &str, addr: usize) -> ! {
    fatal(format_args!("{what} of {addr:#x}, which is no live allocation of scavalloc (foreign pointer)"))
}

#[cold]
#[inline(never)]
fn double_free(what: &str, addr: usize) -> ! {
    fatal(format_args!("double free: {what} of {addr:#x}, a sampled object that is already free"))
}

/// Live sampled objects, their bytes at their class sizes, and the bytes
/// their slots and the kept freed slots may hold resident.
pub(crate) fn resident() -> (usize, usize, usize) {
    let region = SLOTS_LOCK.lock();
    (region.live, region.live_class_bytes, region.live_bytes + region.dirty_bytes)
}

/// Takes the region's lock before `fork()`.
pub(crate) fn lock_for_fork() {
    SLOTS_LOCK.hold_for_fork();
}

/// Releases the lock of [`lock_for_fork`], in the parent and the child.
pub(crate) fn unlock_after_fork() {
    // SAFETY: `lock_for_fork` took it on this thread.
    unsafe { SLOTS_LOCK.release_after_fork() };
}

// Before the region exists its base is in the kernel's half, where no
// user pointer lies.
const _: () = assert!(NO_REGION > 1 << 63 && NO_REGION & SHIFT_BITS == 0);

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots come and go: an object is at its slot's start, is found in
    /// the region with its class, keeps its contents, and a freed slot is
    /// the next one handed out (its pages kept); the counts follow.
    #[test]
    fn slots_are_reused_and_counted() {
        let class = 5;
        let size = sizeclass::class_size(class);
        let (live0, _, _) = resident();
        let a = alloc(class, size, 0, false).expect("region").as_ptr() as usize;
        let b = alloc(class, size, 0, true).expect("region").as_ptr() as usize;
        assert!(contains(a) && contains(b) && a != b);
        let (base, shift) = region();
        assert_eq!((a - base) % (1 << shift), 0);
        assert_eq!(class_of(a, "test"), class);
        // SAFETY: `b` is a zeroed object of `size` bytes, ours alone.
        let bytes = unsafe { core::slice::from_raw_parts_mut(b as *mut u8, size) };
        assert!(bytes.iter().all(|&x| x == 0));
        bytes.fill(0xa5);
        assert!(resident().0 >= live0 + 2);
        free(b, Some(class), "test");
        // The slot just freed comes back first, zeroed when asked.
        let c = alloc(class, size, 0, true).expect("region").as_ptr() as usize;
        assert_eq!(c, b);
        // SAFETY: as above.
        assert!(unsafe { core::slice::from_raw_parts(c as *const u8, size) }.iter().all(|&x| x == 0));
        free(a, None, "test");
        free(c, Some(class), "test");
        assert!(!contains(0x1000) && !contains(usize::MAX));

        // Past `DIRTY_MAX` kept slots a freed slot's pages go back to the
        // OS; the kept ones are still handed out first, so a sample that
        // follows a free reuses resident pages (no fault, no release).
        let objects: Vec<usize> =
            (0..DIRTY_MAX + 4).map(|_| alloc(class, size, 0, false).expect("region").as_ptr() as usize).collect();
        for &o in &objects {
            free(o, Some(class), "test");
        }
        let (_, _, before) = resident();
        let d = alloc(class, size, 0, false).expect("region").as_ptr() as usize;
        let (_, _, after) = resident();
        assert_eq!(after, before, "a slot with its pages kept was reused");
        assert!(!objects[DIRTY_MAX..].contains(&d), "a released slot came first");
        free(d, Some(class), "test");
    }
}
