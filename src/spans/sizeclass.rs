//! Small-object size classes: the table `build.rs` generates, and the fast
//! lookups the span layer needs (size → class, object offset → index).
//!
//! # What this module owns
//!
//! The fixed set of object sizes the allocator serves from spans, and for
//! each class its span size in pages, the number of objects per span, the
//! alignment its objects are guaranteed, the alignment its span needs, and a
//! division magic number. Requests above [`MAX_SMALL_SIZE`] (32 KiB) are
//! large objects and get their own page runs; they have no class.
//!
//! Classes are numbered `0..NUM_CLASSES`, smallest first, and every number is
//! a real class (Go's table starts with a dummy class 0; this one does not,
//! since [`size_to_class`] returns `None` for a large object instead).
//!
//! # Why the classes are what they are
//!
//! The table follows the Go runtime's `mksizeclasses.go` (the method is
//! written out in `build.rs`, and the generated file starts with the whole
//! table as a comment):
//!
//! - Candidate sizes are spaced by the alignment granule at the small end
//!   (8 bytes up to 32, then 16) and by an eighth of the enclosing power of
//!   two from 128 bytes (256 from 2 KiB), so rounding up to a class costs
//!   about 12.5% at most past the alignment-dominated range.
//! - Each class gets the fewest 8 KiB pages whose tail (span bytes not
//!   covered by whole objects) is under 12.5% of the span; neighbours that
//!   would share page count and object count are merged into the bigger
//!   one; then each class grows to the biggest multiple of 128 bytes that
//!   keeps its object count, so little tail remains (the worst is 6.25%).
//! - The table is Go's newest one (with its 24-byte class: three-word
//!   objects such as `Vec` and `String` are everywhere in Rust) plus two
//!   classes Go folds away, 3584 and 7168 bytes, because the tail bound here
//!   is strict where Go's admits exactly one eighth.
//!
//! Worst-case internal fragmentation (every object one byte bigger than the
//! class below, plus the tail, as a share of the span) stays under 1/6 for
//! every class of 128 bytes or more: it peaks at 16.65% for 4864 bytes, the
//! same class and figure as Go's table. Below 128 bytes the gap between
//! classes is one alignment granule (at most 16 bytes), which as a
//! percentage is large for tiny sizes (87.5% for 1-byte requests in the
//! 8-byte class), as in Go.
//!
//! # Alignment
//!
//! Every size is a multiple of 8, and of 16 from 32 bytes up. Spans start on
//! a page boundary, so object `i` of a class sits at `base + i * size`; the
//! alignment it is guaranteed is therefore the largest power of two dividing
//! the size, capped by the span's base alignment ([`class_align`]). Every
//! power of two from 8 bytes to 32 KiB is a class and is naturally aligned:
//! up to a page that follows from the page-aligned base, and the 16 KiB and
//! 32 KiB classes (one object per span) need their spans aligned to 2 and 4
//! pages ([`class_span_align_pages`]), which the page heap can provide.
//! [`size_align_to_class`] picks the smallest class that meets both a size
//! and an alignment; for alignments up to 16 (C's `malloc`, `u128`, SIMD
//! types) [`rounded_size_to_class`] does the same with one table load.
//!
//! # Division without dividing
//!
//! Freeing a pointer needs the index of its object in the span, `offset /
//! size`. [`object_index`] computes it as `(offset * magic) >> 32` with
//! `magic = 2^32 / size + 1` (rounded down before adding one), which is exact
//! for every offset from 0 to the span's end for every class; the build
//! script and the tests below check every such offset.

pub use crate::pages::PAGE_SIZE;

/// One row of the generated table. Sixteen bytes, so a cache line holds
/// four classes.
#[derive(Clone, Copy, Debug)]
struct SizeClass {
    /// Object size in bytes.
    size: u32,
    /// `2^32 / size + 1` (see [`object_index`]).
    div_magic: u32,
    /// Objects per span.
    objects: u16,
    /// Guaranteed alignment of every object, in bytes.
    align: u16,
    /// Span size in pages.
    pages: u8,
    /// Pages the span's base address must be aligned to.
    span_align_pages: u8,
}

include!(concat!(env!("OUT_DIR"), "/sizeclasses.rs"));

static_assertions::const_assert_eq!(GEN_PAGE_SIZE, PAGE_SIZE);
static_assertions::const_assert_eq!(core::mem::size_of::<SizeClass>(), 16);

/// The size class for a request of `size` bytes: the smallest class whose
/// objects hold `size` bytes. A request of 0 bytes is served as 16 bytes
/// (see [`rounded_size_to_class`]); `None` means the request is a large
/// object (over [`MAX_SMALL_SIZE`]).
#[inline]
pub const fn size_to_class(size: usize) -> Option<usize> {
    if size <= SMALL_SIZE_MAX {
        Some(SIZE_TO_CLASS8[size.div_ceil(SMALL_SIZE_DIV)] as usize)
    } else if size <= MAX_SMALL_SIZE {
        Some(SIZE_TO_CLASS128[(size - SMALL_SIZE_MAX).div_ceil(LARGE_SIZE_DIV)] as usize)
    } else {
        None
    }
}

/// The smallest class whose objects hold `size` bytes aligned to `align`,
/// for a power of two `align` up to [`ROUNDED_ALIGN_MAX`] (16): the class of
/// `size` rounded up to `align`. `None` for a large object.
///
/// Rounding is enough because every class that a multiple of 16 maps to is
/// a multiple of 16 (the 16-byte class, then every class from 32 bytes up),
/// so its objects are 16-aligned on a page-aligned span; alignments up to 8
/// are met by every class. The 0-byte request is served as 16 bytes so that
/// it is no exception. `build.rs` and the tests check every size.
///
/// This is the whole lookup of the inlined fast paths (Rust layouts of
/// alignment up to 16, C's `malloc`): a shift, a multiply by a constant and
/// one byte load when `align` is known at compile time.
#[inline(always)]
pub const fn rounded_size_to_class(size: usize, align: usize) -> Option<usize> {
    // The fine table's step is 8 and every class meets an alignment of 8,
    // so alignments up to 8 need no rounding beyond the table's own.
    let step = if align > SMALL_SIZE_DIV { align } else { SMALL_SIZE_DIV };
    if size <= SMALL_SIZE_MAX {
        // At most `SMALL_SIZE_MAX / SMALL_SIZE_DIV`, the table's last entry
        // (`SMALL_SIZE_MAX` is a multiple of every step); a failed bound
        // check (impossible) would make the request a large object on every
        // path alike rather than panic.
        // `step` is a power of two (the alignment, or 8), so rounding up to
        // it is a mask, not a division, even when `align` is not known at
        // compile time (a `Layout` passed through `__rust_dealloc`).
        let index = ((size + step - 1) & !(step - 1)) / SMALL_SIZE_DIV;
        if index < SIZE_TO_CLASS8.len() {
            Some(SIZE_TO_CLASS8[index] as usize)
        } else {
            None
        }
    } else {
        // Classes above `SMALL_SIZE_MAX` are multiples of 128: rounding
        // to 16 changes no lookup.
        size_to_class(size)
    }
}

/// The smallest class whose objects hold `size` bytes and are aligned to
/// `align` (a power of two). `None` means no class does: the request must
/// be served as a large object from an aligned page run.
///
/// Any alignment up to 8 is met by the class [`size_to_class`] gives;
/// larger ones may take a few steps up the table (a class aligned to
/// `align` is at least `align` bytes, so the search starts there).
#[inline]
pub const fn size_align_to_class(size: usize, align: usize) -> Option<usize> {
    // A request of 0 bytes is served as 16, as in `size_to_class`.
    let size = if size == 0 { 16 } else { size };
    let start = if size > align { size } else { align };
    let mut class = match size_to_class(start) {
        Some(class) => class,
        None => return None,
    };
    while class < NUM_CLASSES {
        if CLASSES[class].align as usize >= align {
            return Some(class);
        }
        class += 1;
    }
    None
}

/// Object size of `class` in bytes. `class` must be below [`NUM_CLASSES`].
#[inline]
pub const fn class_size(class: usize) -> usize {
    CLASSES[class].size as usize
}

/// Span size of `class` in pages.
#[inline]
pub const fn class_pages(class: usize) -> usize {
    CLASSES[class].pages as usize
}

/// Span size of `class` in bytes.
#[inline]
pub const fn class_span_bytes(class: usize) -> usize {
    class_pages(class) * PAGE_SIZE
}

/// Number of objects in one span of `class`.
#[inline]
pub const fn class_objects(class: usize) -> usize {
    CLASSES[class].objects as usize
}

/// The alignment every object of `class` is guaranteed, in bytes (a power
/// of two, at least 8), provided its span's base is aligned to
/// [`class_span_align_pages`] pages. An allocation with alignment `align`
/// may use the class when `align <= class_align(class)`.
#[cfg(test)]
pub const fn class_align(class: usize) -> usize {
    CLASSES[class].align as usize
}

/// Pages a span of `class` must be aligned to: 1 for every class except the
/// power-of-two classes bigger than a page (16 KiB needs 2, 32 KiB needs 4),
/// whose single object must be naturally aligned.
#[inline]
pub const fn class_span_align_pages(class: usize) -> usize {
    CLASSES[class].span_align_pages as usize
}

/// The division magic of `class`: `offset / class_size(class)` equals
/// `(offset * magic) >> 32` for every `offset` in
/// `0..=class_span_bytes(class)`.
#[inline]
pub const fn class_div_magic(class: usize) -> u32 {
    CLASSES[class].div_magic
}

/// The index of the object that contains byte `offset` of a span of
/// `class`, without a division. Exact for `offset <= class_span_bytes(class)`;
/// larger offsets give a meaningless index (but never panic).
#[inline]
pub const fn object_index(class: usize, offset: usize) -> usize {
    ((offset as u32 as u64 * class_div_magic(class) as u64) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> impl Iterator<Item = usize> {
        (0..NUM_CLASSES).map(class_size)
    }

    /// The reference lookup: a linear search for the first class that fits
    /// (a request of 0 bytes is served as 16).
    fn naive_class(size: usize, align: usize) -> Option<usize> {
        let size = if size == 0 { 16 } else { size };
        (0..NUM_CLASSES).find(|&c| class_size(c) >= size && class_align(c) >= align)
    }

    #[test]
    fn page_size_agrees_with_the_page_heap() {
        assert_eq!(GEN_PAGE_SIZE, crate::pages::PAGE_SIZE);
        assert_eq!(PAGE_SIZE, 8192);
    }

    #[test]
    fn class_count_is_about_goes() {
        assert!((60..=75).contains(&NUM_CLASSES), "{NUM_CLASSES} classes");
        assert_eq!(CLASSES.len(), NUM_CLASSES);
    }

    #[test]
    fn sizes_increase_strictly_from_8_to_max_small_size() {
        assert_eq!(class_size(0), 8);
        assert_eq!(class_size(NUM_CLASSES - 1), MAX_SMALL_SIZE);
        assert_eq!(MAX_SMALL_SIZE, 32768);
        for c in 1..NUM_CLASSES {
            assert!(class_size(c - 1) < class_size(c), "class {c}");
        }
    }

    #[test]
    fn sizes_are_multiples_of_their_granule() {
        for size in sizes() {
            assert_eq!(size % 8, 0, "{size}");
            if size >= 32 {
                assert_eq!(size % 16, 0, "{size}");
            }
            // The coarse lookup table needs this to be exact.
            if size > SMALL_SIZE_MAX {
                assert_eq!(size % LARGE_SIZE_DIV, 0, "{size}");
            }
        }
    }

    #[test]
    fn objects_fill_their_spans() {
        let mut most_objects = 0;
        let mut most_pages = 0;
        for c in 0..NUM_CLASSES {
            let span = class_span_bytes(c);
            assert!(class_pages(c) >= 1);
            assert!(class_objects(c) >= 1, "class {c}");
            assert_eq!(class_objects(c), span / class_size(c), "class {c}");
            assert!(class_objects(c) * class_size(c) <= span);
            most_objects = most_objects.max(class_objects(c));
            most_pages = most_pages.max(class_pages(c));
        }
        assert_eq!(most_objects, MAX_OBJECTS_PER_SPAN);
        assert_eq!(most_pages, MAX_SPAN_PAGES);
    }

    #[test]
    fn tail_waste_is_under_an_eighth_of_the_span() {
        for c in 0..NUM_CLASSES {
            let span = class_span_bytes(c);
            let tail = span - class_objects(c) * class_size(c);
            assert!(tail * 8 < span, "class {c}: tail {tail} of {span}");
        }
    }

    /// The bound, stated exactly: from 128 bytes up, the worst case (every
    /// object holding one byte more than the class below, plus the tail)
    /// wastes less than 1/6 of the span; Go's 12.5% target is exceeded by
    /// the same classes in Go's own table, the worst being 4864 bytes at
    /// 16.65%. Below 128 bytes consecutive classes are at most 16 bytes
    /// apart.
    #[test]
    fn internal_fragmentation_is_bounded() {
        let mut worst = (0, 1, 0); // (waste, span, size)
        for c in 1..NUM_CLASSES {
            let (prev, size) = (class_size(c - 1), class_size(c));
            if size < 128 {
                assert!(size - prev <= 16, "{prev} -> {size}");
                continue;
            }
            let span = class_span_bytes(c);
            let waste = (size - prev - 1) * class_objects(c) + (span - class_objects(c) * size);
            assert!(waste * 6 < span, "class {size}: {waste} of {span}");
            if waste * worst.1 > worst.0 * span {
                worst = (waste, span, size);
            }
        }
        assert_eq!(worst.2, 4864, "the worst class moved");
        assert_eq!(worst.0 * 10000 / worst.1, 1664); // 16.65%, rounded down to 0.01%
    }

    #[test]
    fn every_power_of_two_is_a_naturally_aligned_class() {
        let mut pow2 = 8;
        while pow2 <= MAX_SMALL_SIZE {
            let class = size_to_class(pow2).unwrap();
            assert_eq!(class_size(class), pow2);
            assert_eq!(class_align(class), pow2);
            assert_eq!(class_span_align_pages(class), (pow2 / PAGE_SIZE).max(1));
            pow2 *= 2;
        }
    }

    #[test]
    fn class_align_holds_for_every_object() {
        for c in 0..NUM_CLASSES {
            let (size, align) = (class_size(c), class_align(c));
            let base_align = class_span_align_pages(c) * PAGE_SIZE;
            assert!(align.is_power_of_two() && align >= 8 && align <= size, "class {c}");
            assert_eq!(base_align % align, 0, "class {c}");
            for i in 0..class_objects(c) {
                assert_eq!((i * size) % align, 0, "class {c} object {i}");
            }
            // Tight: the next alignment up fails for some object.
            let next = align * 2;
            assert!(
                !base_align.is_multiple_of(next) || (1..class_objects(c)).any(|i| !(i * size).is_multiple_of(next)),
                "class {c}"
            );
        }
        assert_eq!(class_span_align_pages(size_to_class(16384).unwrap()), 2);
        assert_eq!(class_span_align_pages(size_to_class(32768).unwrap()), 4);
        assert_eq!((0..NUM_CLASSES).filter(|&c| class_span_align_pages(c) > 1).count(), 2);
    }

    #[test]
    fn lookup_matches_linear_search_for_every_size() {
        for size in 0..=MAX_SMALL_SIZE {
            assert_eq!(size_to_class(size), naive_class(size, 1), "size {size}");
        }
        assert_eq!(size_to_class(0), size_to_class(16));
        assert_eq!(class_size(size_to_class(0).unwrap()), 16);
        assert_eq!(size_to_class(MAX_SMALL_SIZE + 1), None);
        assert_eq!(size_to_class(usize::MAX), None);
    }

    #[test]
    fn aligned_lookup_matches_linear_search() {
        for shift in 0..=16 {
            let align = 1 << shift;
            for size in 0..=MAX_SMALL_SIZE {
                assert_eq!(size_align_to_class(size, align), naive_class(size, align), "size {size} align {align}");
            }
        }
        assert_eq!(size_align_to_class(1, 8192), size_to_class(8192));
        assert_eq!(size_align_to_class(20000, 16384), size_to_class(32768));
        assert_eq!(size_align_to_class(8, 65536), None);
        assert_eq!(size_align_to_class(usize::MAX, 8), None);
    }

    /// The fast paths' lookup: for every size and every alignment up to
    /// 16, the size rounded up to the alignment finds the smallest class
    /// that holds the size with that alignment; and every class so reached
    /// from alignment 16 is a multiple of 16.
    #[test]
    fn rounded_lookup_is_the_smallest_aligned_class() {
        assert_eq!(ROUNDED_ALIGN_MAX, 16);
        for align in [1, 2, 4, 8, 16] {
            for size in 0..=MAX_SMALL_SIZE + 1 {
                let class = rounded_size_to_class(size, align);
                assert_eq!(class, naive_class(size, align), "size {size} align {align}");
                if let Some(class) = class {
                    assert_eq!(class_size(class) % align, 0, "size {size} align {align}");
                }
            }
            assert_eq!(rounded_size_to_class(usize::MAX, align), None);
        }
        assert_eq!(rounded_size_to_class(17, 16).map(class_size), Some(32));
        assert_eq!(rounded_size_to_class(17, 8).map(class_size), Some(24));
    }

    #[test]
    fn division_magic_is_exact_for_every_offset() {
        for c in 0..NUM_CLASSES {
            let size = class_size(c);
            for offset in 0..=class_span_bytes(c) {
                assert_eq!(object_index(c, offset), offset / size, "class {c} offset {offset}");
            }
        }
    }
}
