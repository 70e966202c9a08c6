//! Build script: generates scavalloc's small-object size classes.
//!
//! The output, `$OUT_DIR/sizeclasses.rs`, is pulled into
//! `src/spans/sizeclass.rs` with `include!`. It holds one row per class
//! (object size, span size in pages, objects per span, guaranteed alignment,
//! span alignment, division magic), the two size → class lookup tables, and
//! a comment header that prints the whole table with its waste figures.
//!
//! The method follows the Go runtime's `mksizeclasses.go`:
//!
//! 1. Walk candidate sizes from 8 bytes to 32 KiB. The spacing between
//!    candidates grows with the size (8, then 16 from 32 bytes, then one
//!    eighth of the enclosing power of two from 128 bytes, then 256 from
//!    2 KiB), so rounding a request up to the next candidate never costs more
//!    than about 12.5% once sizes are past the alignment-dominated range.
//! 2. Give each candidate the fewest 8 KiB pages whose tail (the bytes left
//!    over after cutting the span into objects) is under one eighth of the
//!    span. Strictly under: Go accepts a tail of exactly one eighth here,
//!    which lets 3584 and 7168 (one page, tail exactly 1 KiB) be absorbed
//!    into the 4096 and 8192 classes by step 3. With the strict bound they
//!    get multi-page spans of their own (4 pages holding 9, 7 pages holding
//!    8), two classes more than Go, and requests just above 3 KiB and 6 KiB
//!    no longer round up to the next power of two.
//! 3. A candidate whose span has the same page count and the same object
//!    count as the class before it replaces that class's size: the bigger
//!    size costs no extra memory per span, and the smaller one would be a
//!    class that never saves anything.
//! 4. Finally, grow each class to the largest multiple of 128 that still
//!    fits the same number of objects in its span (turning tail waste into
//!    usable object bytes).
//!
//! Every property the allocator relies on is checked here, exhaustively
//! where it is cheap, so that a table that breaks one cannot be built; the
//! module's unit tests check them again against the included tables.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

/// log2 of the heap page size. Must agree with `crate::pages::PAGE_SHIFT`
/// (a unit test in `src/spans/sizeclass.rs` checks it).
const PAGE_SHIFT: u32 = 13;
/// The heap page size: 8 KiB.
const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// The largest small object; anything bigger is a large object that gets
/// its own run of pages.
const MAX_SMALL_SIZE: usize = 32 << 10;
/// The smallest class (and the smallest alignment any class guarantees).
const MIN_SIZE: usize = 8;
/// Sizes from here on are multiples of 16, so that the common 16-byte
/// alignment is met by every class from 32 bytes up. Below it, 8 and 24 are
/// classes of their own: 24-byte objects (three words: `Vec`, `String`) are
/// very common in Rust, and a 32-byte slot would waste a quarter of each.
const ALIGN16_FROM: usize = 32;
/// Sizes up to here are looked up in the fine table, at 8-byte steps.
const SMALL_SIZE_MAX: usize = 1024;
/// Step of the fine lookup table.
const SMALL_SIZE_DIV: usize = 8;
/// The largest alignment the fast paths meet by rounding the size up to it
/// before the table lookup (C's `malloc` asks for 16): it works because
/// every class that a multiple of 16 bytes maps to is itself a multiple of
/// 16 (`check_rounded_lookup`).
const ROUNDED_ALIGN_MAX: usize = 16;
/// The size a request of 0 bytes is served as (see `served_size`).
const ZERO_SIZE_AS: usize = 16;
/// Step of the coarse lookup table (sizes above `SMALL_SIZE_MAX`). Every
/// class above `SMALL_SIZE_MAX` must be a multiple of it.
const LARGE_SIZE_DIV: usize = 128;
/// A span's tail waste must be under `1 / TAIL_WASTE_DIV` of the span.
const TAIL_WASTE_DIV: usize = 8;
/// The number of classes the method above yields for the constants above:
/// Go's newest table (67 sizes behind its dummy class 0) plus 3584 and 7168
/// (see step 2). A change means the constants or the method changed: look
/// at the new table and update this number on purpose.
const EXPECTED_CLASSES: usize = 69;

/// One generated size class.
#[derive(Clone, Copy, Debug)]
struct Class {
    /// Object size in bytes.
    size: usize,
    /// Span size in pages.
    pages: usize,
}

impl Class {
    fn span_bytes(&self) -> usize {
        self.pages * PAGE_SIZE
    }
    fn objects(&self) -> usize {
        self.span_bytes() / self.size
    }
    fn tail_waste(&self) -> usize {
        self.span_bytes() % self.size
    }
    /// Pages the span's base must be aligned to. Spans are only page
    /// aligned in general; a power-of-two class bigger than a page needs
    /// its span aligned to the object size so that its objects are
    /// naturally aligned.
    fn span_align_pages(&self) -> usize {
        if self.size.is_power_of_two() && self.size > PAGE_SIZE {
            self.size / PAGE_SIZE
        } else {
            1
        }
    }
    /// The alignment every object of the class is guaranteed: object `i`
    /// sits at `base + i * size`, so it is the largest power of two that
    /// divides both the size and the span's base alignment.
    fn align(&self) -> usize {
        let size_align = 1usize << self.size.trailing_zeros();
        size_align.min(self.span_align_pages() * PAGE_SIZE)
    }
    /// The multiplier `m` with `offset / size == (offset * m) >> 32` for
    /// every offset inside the span (checked in `check_div_magic`).
    fn div_magic(&self) -> u32 {
        (u32::MAX / self.size as u32).wrapping_add(1)
    }
}

/// The spacing from candidate `size` to the next one; it changes only at
/// powers of two, so every power of two up to `MAX_SMALL_SIZE` is a
/// candidate.
fn step_after(size: usize) -> usize {
    // The largest power of two not above `size`.
    let pow2 = 1usize << (usize::BITS - 1 - size.leading_zeros());
    if pow2 >= 2048 {
        256
    } else if pow2 >= 128 {
        pow2 / 8
    } else if pow2 >= ALIGN16_FROM {
        16
    } else {
        8
    }
}

/// The fewest pages whose span, cut into `size`-byte objects, leaves a tail
/// under `1 / TAIL_WASTE_DIV` of the span.
fn span_pages(size: usize) -> usize {
    let mut pages = 1;
    while (pages * PAGE_SIZE) % size * TAIL_WASTE_DIV >= pages * PAGE_SIZE {
        pages += 1;
    }
    pages
}

fn make_classes() -> Vec<Class> {
    let mut classes: Vec<Class> = Vec::new();
    let mut size = MIN_SIZE;
    while size <= MAX_SMALL_SIZE {
        let next = Class { size, pages: span_pages(size) };
        match classes.last_mut() {
            Some(prev) if prev.pages == next.pages && prev.objects() == next.objects() => {
                assert!(
                    !prev.size.is_power_of_two(),
                    "size {} would replace the power-of-two class {}",
                    next.size,
                    prev.size
                );
                prev.size = next.size;
            }
            _ => classes.push(next),
        }
        size += step_after(size);
    }
    for class in &mut classes {
        let grown = (class.span_bytes() / class.objects()) & !(LARGE_SIZE_DIV - 1);
        if grown > class.size {
            class.size = grown;
        }
    }
    classes
}

/// Worst-case waste of a class as a fraction of its span: every object
/// holds a request one byte bigger than the class below (`prev_size`), so
/// `size - prev_size - 1` bytes of each object are lost, plus the tail.
fn max_waste(class: &Class, prev_size: usize) -> f64 {
    ((class.size - prev_size - 1) * class.objects() + class.tail_waste()) as f64 / class.span_bytes() as f64
}

/// The smallest class whose size is at least `size` (a linear search; the
/// reference the lookup tables are built from and checked against).
fn smallest_class_for(classes: &[Class], size: usize) -> Option<usize> {
    classes.iter().position(|c| c.size >= size)
}

/// The bytes a request of `size` bytes is served as in the tables: a
/// request of 0 bytes gets the class of `ZERO_SIZE_AS` bytes, so that
/// rounding a size up to an alignment of at most 16 before the lookup (the
/// fast paths do, see `check_rounded_lookup`) lands in a 16-aligned class
/// for 0 as for every other size.
fn served_size(size: usize) -> usize {
    if size == 0 {
        ZERO_SIZE_AS
    } else {
        size
    }
}

fn size_to_class8(classes: &[Class]) -> Vec<usize> {
    (0..=SMALL_SIZE_MAX / SMALL_SIZE_DIV)
        .map(|i| {
            smallest_class_for(classes, served_size(i * SMALL_SIZE_DIV)).expect("a class of at least SMALL_SIZE_MAX")
        })
        .collect()
}

fn size_to_class128(classes: &[Class]) -> Vec<usize> {
    (0..=(MAX_SMALL_SIZE - SMALL_SIZE_MAX) / LARGE_SIZE_DIV)
        .map(|i| smallest_class_for(classes, SMALL_SIZE_MAX + i * LARGE_SIZE_DIV).expect("a class of MAX_SMALL_SIZE"))
        .collect()
}

/// The lookup the generated tables implement, written out the same way as
/// the module's `size_to_class`.
fn table_lookup(t8: &[usize], t128: &[usize], size: usize) -> usize {
    if size <= SMALL_SIZE_MAX {
        t8[size.div_ceil(SMALL_SIZE_DIV)]
    } else {
        t128[(size - SMALL_SIZE_MAX).div_ceil(LARGE_SIZE_DIV)]
    }
}

/// Checks that `(offset * magic) >> 32` is `offset / size` for every
/// offset from 0 to the span's end, inclusive (the end is the offset one
/// past the last byte, which the span layer may compute for bounds).
fn check_div_magic(class: &Class) {
    let magic = u64::from(class.div_magic());
    for offset in 0..=class.span_bytes() {
        let fast = (offset as u64 * magic) >> 32;
        assert!(
            fast == (offset / class.size) as u64,
            "division magic {magic} for size {} is wrong at offset {offset}",
            class.size
        );
    }
}

fn check(classes: &[Class]) {
    assert_eq!(classes.len(), EXPECTED_CLASSES, "the number of size classes changed");
    assert_eq!(classes.first().map(|c| c.size), Some(MIN_SIZE));
    assert_eq!(classes.last().map(|c| c.size), Some(MAX_SMALL_SIZE));
    for pair in classes.windows(2) {
        assert!(pair[0].size < pair[1].size, "sizes not increasing at {}", pair[1].size);
    }
    for c in classes {
        assert!(c.size.is_multiple_of(MIN_SIZE), "size {} is not a multiple of {MIN_SIZE}", c.size);
        assert!(c.size < ALIGN16_FROM || c.size.is_multiple_of(16), "size {} is not a multiple of 16", c.size);
        assert!(
            c.size <= SMALL_SIZE_MAX || c.size.is_multiple_of(LARGE_SIZE_DIV),
            "size {} breaks the coarse table",
            c.size
        );
        assert!(c.objects() >= 1);
        assert!(c.tail_waste() * TAIL_WASTE_DIV < c.span_bytes(), "size {}: tail waste too big", c.size);
        assert!(c.pages <= u8::MAX as usize && c.objects() <= u16::MAX as usize);
        check_div_magic(c);
    }
    let mut pow2 = MIN_SIZE;
    while pow2 <= MAX_SMALL_SIZE {
        let class = classes.iter().find(|c| c.size == pow2);
        let class = class.unwrap_or_else(|| panic!("power of two {pow2} is not a class"));
        assert_eq!(class.align(), pow2, "class {pow2} is not naturally aligned");
        pow2 *= 2;
    }
    let (t8, t128) = (size_to_class8(classes), size_to_class128(classes));
    assert!(classes.len() <= u8::MAX as usize);
    for size in 0..=MAX_SMALL_SIZE {
        let want = smallest_class_for(classes, served_size(size));
        assert_eq!(Some(table_lookup(&t8, &t128, size)), want, "lookup of size {size}");
    }
    check_rounded_lookup(classes, &t8, &t128);
}

/// The fast paths look a request of `size` bytes aligned to `align` (a
/// power of two up to `ROUNDED_ALIGN_MAX`) up as `size` rounded up to
/// `align`: that must be the smallest class that holds the size with that
/// alignment, for every size.
fn check_rounded_lookup(classes: &[Class], t8: &[usize], t128: &[usize]) {
    let mut align = 1;
    while align <= ROUNDED_ALIGN_MAX {
        for size in 0..=MAX_SMALL_SIZE {
            let rounded = size.next_multiple_of(align);
            let want = classes.iter().position(|c| c.size >= served_size(size) && c.align() >= align);
            assert_eq!(Some(table_lookup(t8, t128, rounded)), want, "size {size} rounded to {align}");
        }
        align *= 2;
    }
}

/// Writes `values` as the body of a Rust array literal, `per_line` to a line.
fn write_array(out: &mut String, values: &[usize], per_line: usize) {
    for chunk in values.chunks(per_line) {
        let line: Vec<String> = chunk.iter().map(|v| v.to_string()).collect();
        writeln!(out, "    {},", line.join(", ")).unwrap();
    }
}

fn render(classes: &[Class]) -> String {
    let mut out = String::new();
    let o = &mut out;
    writeln!(o, "// Generated by build.rs; do not edit. See build.rs for the method.").unwrap();
    writeln!(o, "//").unwrap();
    writeln!(o, "// tail waste: bytes left over at the end of each span.").unwrap();
    writeln!(o, "// max waste: the worst case share of the span lost when every object holds").unwrap();
    writeln!(o, "//   a request one byte bigger than the class below, tail included.").unwrap();
    writeln!(o, "// align: the alignment every object of the class is guaranteed.").unwrap();
    writeln!(o, "// span align: pages the span's base must be aligned to.").unwrap();
    writeln!(o, "//").unwrap();
    writeln!(
        o,
        "// {:>5}  {:>9}  {:>5}  {:>10}  {:>7}  {:>10}  {:>9}  {:>5}  {:>10}",
        "class", "bytes/obj", "pages", "bytes/span", "objects", "tail waste", "max waste", "align", "span align"
    )
    .unwrap();
    let mut prev_size = 0;
    for (i, c) in classes.iter().enumerate() {
        writeln!(
            o,
            "// {:>5}  {:>9}  {:>5}  {:>10}  {:>7}  {:>10}  {:>8.2}%  {:>5}  {:>10}",
            i,
            c.size,
            c.pages,
            c.span_bytes(),
            c.objects(),
            c.tail_waste(),
            100.0 * max_waste(c, prev_size),
            c.align(),
            c.span_align_pages()
        )
        .unwrap();
        prev_size = c.size;
    }
    let worst_tail = classes.iter().map(|c| c.tail_waste() as f64 / c.span_bytes() as f64).fold(0.0, f64::max);
    let mut worst_max = (0.0, 0);
    for pair in classes.windows(2).filter(|p| p[1].size >= 128) {
        let waste = max_waste(&pair[1], pair[0].size);
        if waste > worst_max.0 {
            worst_max = (waste, pair[1].size);
        }
    }
    writeln!(o, "//").unwrap();
    writeln!(o, "// {} classes; worst tail waste {:.2}% of a span.", classes.len(), 100.0 * worst_tail).unwrap();
    writeln!(o, "// Worst max waste from 128 bytes up: {:.2}% (class of {} bytes).", 100.0 * worst_max.0, worst_max.1)
        .unwrap();
    writeln!(o).unwrap();

    writeln!(o, "/// The number of small size classes (classes are numbered from 0).").unwrap();
    writeln!(o, "pub const NUM_CLASSES: usize = {};", classes.len()).unwrap();
    writeln!(o, "/// The largest small object size; bigger requests are large objects.").unwrap();
    writeln!(o, "pub const MAX_SMALL_SIZE: usize = {MAX_SMALL_SIZE};").unwrap();
    writeln!(o, "/// The page size the table was generated for.").unwrap();
    writeln!(o, "const GEN_PAGE_SIZE: usize = {PAGE_SIZE};").unwrap();
    writeln!(o, "/// Sizes up to this are looked up in `SIZE_TO_CLASS8`.").unwrap();
    writeln!(o, "const SMALL_SIZE_MAX: usize = {SMALL_SIZE_MAX};").unwrap();
    writeln!(o, "/// Step of `SIZE_TO_CLASS8`.").unwrap();
    writeln!(o, "const SMALL_SIZE_DIV: usize = {SMALL_SIZE_DIV};").unwrap();
    writeln!(o, "/// Alignments up to this are met by rounding the size up to them.").unwrap();
    writeln!(o, "pub const ROUNDED_ALIGN_MAX: usize = {ROUNDED_ALIGN_MAX};").unwrap();
    writeln!(o, "/// Step of `SIZE_TO_CLASS128`.").unwrap();
    writeln!(o, "const LARGE_SIZE_DIV: usize = {LARGE_SIZE_DIV};").unwrap();
    writeln!(o, "/// The most objects any span holds.").unwrap();
    let max_objects = classes.iter().map(Class::objects).max().unwrap();
    writeln!(o, "pub const MAX_OBJECTS_PER_SPAN: usize = {max_objects};").unwrap();
    writeln!(o, "/// The most pages any small-object span has.").unwrap();
    let max_pages = classes.iter().map(|c| c.pages).max().unwrap();
    writeln!(o, "pub const MAX_SPAN_PAGES: usize = {max_pages};").unwrap();
    writeln!(o).unwrap();

    writeln!(o, "/// One row per class, indexed by class number.").unwrap();
    writeln!(o, "static CLASSES: [SizeClass; NUM_CLASSES] = [").unwrap();
    for c in classes {
        writeln!(
            o,
            "    SizeClass {{ size: {}, pages: {}, objects: {}, align: {}, span_align_pages: {}, div_magic: {:#010x} }},",
            c.size,
            c.pages,
            c.objects(),
            c.align(),
            c.span_align_pages(),
            c.div_magic()
        )
        .unwrap();
    }
    writeln!(o, "];").unwrap();
    writeln!(o).unwrap();

    let t8 = size_to_class8(classes);
    writeln!(o, "/// Class of each size `8 * i` for `i` in `0..={}`.", SMALL_SIZE_MAX / SMALL_SIZE_DIV).unwrap();
    writeln!(o, "static SIZE_TO_CLASS8: [u8; {}] = [", t8.len()).unwrap();
    write_array(o, &t8, 32);
    writeln!(o, "];").unwrap();
    let t128 = size_to_class128(classes);
    writeln!(
        o,
        "/// Class of each size `{SMALL_SIZE_MAX} + 128 * i` for `i` in `0..={}`.",
        (MAX_SMALL_SIZE - SMALL_SIZE_MAX) / LARGE_SIZE_DIV
    )
    .unwrap();
    writeln!(o, "static SIZE_TO_CLASS128: [u8; {}] = [", t128.len()).unwrap();
    write_array(o, &t128, 32);
    writeln!(o, "];").unwrap();
    out
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let classes = make_classes();
    check(&classes);
    let out_dir = env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    let path = PathBuf::from(out_dir).join("sizeclasses.rs");
    fs::write(&path, render(&classes)).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
