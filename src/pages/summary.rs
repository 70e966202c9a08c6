//! Packed free-page summaries, the nodes of the page heap's radix tree
//! (Go's `pallocSum`).
//!
//! A summary describes a power-of-two run of pages (a chunk at the leaves,
//! 2^21 pages at the root) by three numbers: free pages at its start, the
//! longest free run anywhere in it, and free pages at its end. Each takes 21
//! bits, which is enough for every level but one value: a completely free
//! root entry has 2^21 free pages, one more than 21 bits hold. That case is
//! encoded by the top bit alone, and since it means "all free", start, max
//! and end are all 2^21.

use super::LOG_MAX_PACKED;

/// The largest value a field can take: the pages under one root entry.
pub const MAX_PACKED: usize = 1 << LOG_MAX_PACKED;
const FIELD_MASK: u64 = (MAX_PACKED - 1) as u64;
const ALL_FREE_ROOT: u64 = 1 << 63;

/// Free-page facts about one node of the radix tree, packed in 64 bits.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Summary(u64);

impl Summary {
    /// A node with no free page.
    pub const FULL: Summary = Summary(0);

    /// Packs the three fields; each is at most [`MAX_PACKED`], and only an
    /// all-free root entry reaches it.
    #[inline]
    pub const fn pack(start: usize, max: usize, end: usize) -> Summary {
        if max == MAX_PACKED {
            return Summary(ALL_FREE_ROOT);
        }
        Summary(
            (start as u64 & FIELD_MASK)
                | ((max as u64 & FIELD_MASK) << LOG_MAX_PACKED)
                | ((end as u64 & FIELD_MASK) << (2 * LOG_MAX_PACKED)),
        )
    }

    /// Free pages at the start.
    #[inline]
    pub const fn start(self) -> usize {
        if self.0 & ALL_FREE_ROOT != 0 {
            return MAX_PACKED;
        }
        (self.0 & FIELD_MASK) as usize
    }

    /// The longest run of free pages.
    #[inline]
    pub const fn max(self) -> usize {
        if self.0 & ALL_FREE_ROOT != 0 {
            return MAX_PACKED;
        }
        ((self.0 >> LOG_MAX_PACKED) & FIELD_MASK) as usize
    }

    /// Free pages at the end.
    #[inline]
    pub const fn end(self) -> usize {
        if self.0 & ALL_FREE_ROOT != 0 {
            return MAX_PACKED;
        }
        ((self.0 >> (2 * LOG_MAX_PACKED)) & FIELD_MASK) as usize
    }

    /// `(start, max, end)`.
    #[inline]
    pub const fn unpack(self) -> (usize, usize, usize) {
        (self.start(), self.max(), self.end())
    }

    /// Whether no page under this node is free.
    #[inline]
    pub const fn is_full(self) -> bool {
        self.0 == 0
    }

    /// Combines the summaries of consecutive sibling nodes, each covering
    /// `1 << log_pages_each` pages, into the summary of their parent.
    pub fn merge(children: &[Summary], log_pages_each: u32) -> Summary {
        let each = 1usize << log_pages_each;
        let (mut start, mut max, mut end) = children[0].unpack();
        // Pages covered by the children merged so far.
        let mut covered = each;
        for child in &children[1..] {
            let (cs, cm, ce) = child.unpack();
            // The leading run reaches into this child only if everything
            // before it was free.
            if start == covered {
                start += cs;
            }
            // A run can cross the boundary: the previous end plus this start.
            max = max.max(cm).max(end + cs);
            // The trailing run continues through this child only if the
            // child is entirely free.
            end = if ce == each { end + ce } else { ce };
            covered += each;
        }
        Summary::pack(start, max, end)
    }
}

impl core::fmt::Debug for Summary {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (s, m, e) = self.unpack();
        write!(f, "Summary(start {s}, max {m}, end {e})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_including_all_free_root() {
        for &(s, m, e) in &[(0, 0, 0), (1, 2, 3), (512, 512, 512), (MAX_PACKED - 1, MAX_PACKED - 1, 7)] {
            assert_eq!(Summary::pack(s, m, e).unpack(), (s, m, e));
        }
        let root = Summary::pack(MAX_PACKED, MAX_PACKED, MAX_PACKED);
        assert_eq!(root.unpack(), (MAX_PACKED, MAX_PACKED, MAX_PACKED));
        assert!(!root.is_full());
        assert!(Summary::pack(0, 0, 0).is_full());
    }
}
