//! Sorted, coalesced address ranges (Go's `addrRange`/`addrRanges`).
//!
//! The page heap uses one [`AddrRanges`] to remember which parts of the
//! address space it owns (every range passed to `grow`), so that searches
//! never step into address space the heap does not have, and so that growth
//! knows which summary pages neighbouring ranges already made ready. Heaps
//! are nearly contiguous in practice, so the list holds a handful of entries
//! and a sorted array beats any tree.
//!
//! Storage comes from the persistent allocator. When the array fills it is
//! copied into one twice the size and the old one is abandoned, which bounds
//! the waste at the size of the live array.

use core::ptr::NonNull;

use crate::persistent;

/// The half-open address range `[base, limit)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AddrRange {
    /// First address in the range.
    pub base: usize,
    /// First address past the range.
    pub limit: usize,
}

impl AddrRange {
    /// The range `[base, limit)`; `base <= limit`.
    #[inline]
    pub const fn new(base: usize, limit: usize) -> Self {
        debug_assert!(base <= limit);
        AddrRange { base, limit }
    }

    /// Length in bytes.
    #[inline]
    pub const fn size(&self) -> usize {
        self.limit - self.base
    }

    /// Whether `addr` lies in the range.
    #[inline]
    pub const fn contains(&self, addr: usize) -> bool {
        self.base <= addr && addr < self.limit
    }

    /// The part of `self` not covered by `other`, where `other` covers one
    /// end of `self`, all of it, or none of it (it must not lie strictly
    /// inside `self`, which would split it in two).
    pub fn subtract(&self, other: AddrRange) -> AddrRange {
        if other.base <= self.base && self.limit <= other.limit {
            AddrRange::new(self.base, self.base)
        } else if other.base <= self.base && other.limit > self.base {
            AddrRange::new(other.limit, self.limit)
        } else if other.base < self.limit && other.limit >= self.limit {
            AddrRange::new(self.base, other.base)
        } else {
            debug_assert!(
                other.limit <= self.base || other.base >= self.limit || other.base == other.limit,
                "subtract would split a range"
            );
            *self
        }
    }
}

/// Metadata for the range list could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfMetadata;

/// A sorted list of disjoint, non-adjacent address ranges, with their total
/// size.
pub struct AddrRanges {
    ptr: NonNull<AddrRange>,
    len: usize,
    cap: usize,
    total: usize,
}

// SAFETY: the array behind `ptr` is owned by this value alone (persistent
// storage handed to nobody else), so moving it to another thread is sound.
unsafe impl Send for AddrRanges {}

const INITIAL_CAPACITY: usize = 16;

impl AddrRanges {
    /// An empty list; storage is allocated on the first `add`.
    pub const fn new() -> Self {
        AddrRanges { ptr: NonNull::dangling(), len: 0, cap: 0, total: 0 }
    }

    /// The ranges, lowest first.
    #[inline]
    pub fn as_slice(&self) -> &[AddrRange] {
        // SAFETY: the first `len` entries of the array were written by
        // `add`; with `len == 0` a dangling, aligned pointer is allowed.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Total bytes covered.
    #[inline]
    pub fn total_bytes(&self) -> usize {
        self.total
    }

    #[cfg(any(test, feature = "testing"))]
    /// Number of ranges.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The index of the first range whose base is above `addr` (`len()` if
    /// none).
    pub fn find_succ(&self, addr: usize) -> usize {
        self.as_slice().partition_point(|r| r.base <= addr)
    }

    /// Whether `addr` lies in one of the ranges.
    pub fn contains(&self, addr: usize) -> bool {
        let i = self.find_succ(addr);
        i > 0 && self.as_slice()[i - 1].contains(addr)
    }

    /// The lowest address at or above `addr` that lies in a range.
    pub fn find_addr_greater_equal(&self, addr: usize) -> Option<usize> {
        let i = self.find_succ(addr);
        let ranges = self.as_slice();
        if i > 0 && ranges[i - 1].contains(addr) {
            return Some(addr);
        }
        ranges.get(i).map(|r| r.base)
    }

    /// Adds `r`, merging it with every range it overlaps or touches.
    pub fn add(&mut self, r: AddrRange) -> Result<(), OutOfMetadata> {
        if r.size() == 0 {
            return Ok(());
        }
        // Ranges [lo, hi) are those that overlap or touch r.
        let ranges = self.as_slice();
        let lo = ranges.partition_point(|x| x.limit < r.base);
        let hi = ranges.partition_point(|x| x.base <= r.limit);
        if lo == hi {
            // Touches nothing: insert a new entry at lo.
            self.reserve_one()?;
            // SAFETY: `reserve_one` made room for one more entry; the copy
            // shifts the initialised tail [lo, len) up by one within the
            // array.
            unsafe {
                let p = self.ptr.as_ptr();
                core::ptr::copy(p.add(lo), p.add(lo + 1), self.len - lo);
                p.add(lo).write(r);
            }
            self.len += 1;
            self.total += r.size();
            return Ok(());
        }
        let merged = AddrRange::new(r.base.min(ranges[lo].base), r.limit.max(ranges[hi - 1].limit));
        let replaced: usize = ranges[lo..hi].iter().map(AddrRange::size).sum();
        // SAFETY: entries lo..hi are initialised; the merged range takes
        // slot lo and the tail [hi, len) moves down to lo + 1.
        unsafe {
            let p = self.ptr.as_ptr();
            p.add(lo).write(merged);
            core::ptr::copy(p.add(hi), p.add(lo + 1), self.len - hi);
        }
        self.len -= hi - lo - 1;
        self.total = self.total - replaced + merged.size();
        Ok(())
    }

    #[cfg(any(test, feature = "testing"))]
    /// Removes every address at or above `addr`, cutting a range that
    /// straddles it.
    pub fn remove_greater_equal(&mut self, addr: usize) {
        let i = self.find_succ(addr);
        let removed: usize = self.as_slice()[i..].iter().map(AddrRange::size).sum();
        self.len = i;
        self.total -= removed;
        if i > 0 {
            // SAFETY: entry i - 1 is initialised and we hold `&mut self`.
            let last = unsafe { &mut *self.ptr.as_ptr().add(i - 1) };
            if last.limit > addr {
                self.total -= last.limit - addr;
                last.limit = addr;
                if last.base == last.limit {
                    self.len -= 1;
                }
            }
        }
    }

    /// Makes sure the next `add` cannot fail for lack of storage.
    pub fn reserve_one(&mut self) -> Result<(), OutOfMetadata> {
        let cap = self.capacity_needed();
        if cap != 0 {
            let new = persistent::alloc_array::<AddrRange>(cap).ok_or(OutOfMetadata)?;
            // SAFETY: fresh persistent storage for `cap` entries.
            unsafe { self.adopt_storage(new, cap) };
        }
        Ok(())
    }

    /// The capacity the list must grow to before the next `add` can be
    /// sure to succeed, or 0 if it has room.
    pub fn capacity_needed(&self) -> usize {
        if self.len < self.cap {
            0
        } else {
            (self.cap * 2).max(INITIAL_CAPACITY)
        }
    }

    /// Moves the entries to `new`, storage for `cap` entries.
    ///
    /// # Safety
    ///
    /// `new` is persistent storage for `cap` entries, used by nothing
    /// else, and `cap` is more than the list holds.
    pub unsafe fn adopt_storage(&mut self, new: NonNull<AddrRange>, cap: usize) {
        debug_assert!(cap > self.len);
        // SAFETY: the new array has room for `cap > len` entries and does not
        // overlap the old one; the old array is abandoned (persistent memory
        // is never freed).
        unsafe { core::ptr::copy_nonoverlapping(self.ptr.as_ptr(), new.as_ptr(), self.len) };
        self.ptr = new;
        self.cap = cap;
    }
}

impl Default for AddrRanges {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::Rng;

    /// The naive model: one flag per unit of address space.
    fn model_ranges(units: &[bool], unit: usize) -> Vec<AddrRange> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < units.len() {
            if units[i] {
                let s = i;
                while i < units.len() && units[i] {
                    i += 1;
                }
                out.push(AddrRange::new(s * unit, i * unit));
            } else {
                i += 1;
            }
        }
        out
    }

    #[test]
    fn adjacent_overlapping_and_disjoint_adds_coalesce() {
        let mut r = AddrRanges::new();
        r.add(AddrRange::new(0x1000, 0x2000)).unwrap();
        r.add(AddrRange::new(0x3000, 0x4000)).unwrap();
        assert_eq!(r.len(), 2);
        r.add(AddrRange::new(0x2000, 0x3000)).unwrap(); // touches both
        assert_eq!(r.as_slice(), &[AddrRange::new(0x1000, 0x4000)]);
        r.add(AddrRange::new(0x800, 0x1800)).unwrap(); // overlaps the start
        r.add(AddrRange::new(0x9000, 0xa000)).unwrap(); // disjoint
        r.add(AddrRange::new(0x100, 0x200)).unwrap(); // disjoint, below
        assert_eq!(
            r.as_slice(),
            &[AddrRange::new(0x100, 0x200), AddrRange::new(0x800, 0x4000), AddrRange::new(0x9000, 0xa000)]
        );
        assert_eq!(r.total_bytes(), 0x100 + 0x3800 + 0x1000);
        assert!(r.contains(0x800) && r.contains(0x3fff) && !r.contains(0x4000) && !r.contains(0x7ff));
        assert_eq!(r.find_addr_greater_equal(0x4000), Some(0x9000));
        assert_eq!(r.find_addr_greater_equal(0x950), Some(0x950));
        assert_eq!(r.find_addr_greater_equal(0xa000), None);
        assert_eq!(r.find_succ(0x800), 2);
        r.remove_greater_equal(0x1000);
        assert_eq!(r.as_slice(), &[AddrRange::new(0x100, 0x200), AddrRange::new(0x800, 0x1000)]);
        assert_eq!(r.total_bytes(), 0x100 + 0x800);
        r.remove_greater_equal(0x800);
        assert_eq!(r.as_slice(), &[AddrRange::new(0x100, 0x200)]);
    }

    #[test]
    fn subtract_trims_either_end() {
        let a = AddrRange::new(10, 20);
        assert_eq!(a.subtract(AddrRange::new(0, 12)), AddrRange::new(12, 20));
        assert_eq!(a.subtract(AddrRange::new(15, 30)), AddrRange::new(10, 15));
        assert_eq!(a.subtract(AddrRange::new(0, 30)).size(), 0);
        assert_eq!(a.subtract(AddrRange::new(20, 30)), a);
        assert_eq!(a.subtract(AddrRange::new(0, 10)), a);
    }

    #[test]
    fn random_operations_match_naive_model() {
        const UNITS: usize = 400;
        const UNIT: usize = 0x1000;
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        for _round in 0..50 {
            let mut model = vec![false; UNITS];
            let mut r = AddrRanges::new();
            for _ in 0..400 {
                match rng.below(10) {
                    0 => {
                        let cut = rng.below(UNITS + 1);
                        r.remove_greater_equal(cut * UNIT);
                        model[cut..].iter_mut().for_each(|u| *u = false);
                    }
                    _ => {
                        let s = rng.below(UNITS);
                        let len = 1 + rng.below(12);
                        let e = (s + len).min(UNITS);
                        r.add(AddrRange::new(s * UNIT, e * UNIT)).unwrap();
                        model[s..e].iter_mut().for_each(|u| *u = true);
                    }
                }
                let expect = model_ranges(&model, UNIT);
                assert_eq!(r.as_slice(), expect.as_slice());
                assert_eq!(r.total_bytes(), expect.iter().map(AddrRange::size).sum::<usize>());
                let probe = rng.below(UNITS + 10) * UNIT + rng.below(UNIT);
                assert_eq!(r.contains(probe), expect.iter().any(|x| x.contains(probe)));
                let ge = expect.iter().find(|x| x.limit > probe).map(|x| x.base.max(probe));
                assert_eq!(r.find_addr_greater_equal(probe), ge);
            }
        }
    }
}
