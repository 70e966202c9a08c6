//! The process's executable mappings, for a profile's mapping table: which
//! file holds each code address, at which file offset, and that file's GNU
//! build id, so that pprof tools can symbolize the addresses from the files
//! (or find the files' debug info by build id); and where in them the
//! allocator's own entry points are, for the profile to cut those frames
//! off its stacks.
//!
//! This module owns reading `/proc/self/maps` and the parts of an ELF file
//! a profile needs: the build id note, the executable segments and the
//! function symbols. It runs at dump time, so it allocates and reads files
//! freely; any error gives fewer mappings, an empty build id or no entry
//! points, never a panic.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::pprof::Mapping;

/// The process's code, as a profile describes it: its executable mappings
/// and where the allocator's entry points lie in them.
pub(crate) struct Code {
    /// Executable file-backed mappings, each with its file's GNU build id
    /// (empty if the file has none or cannot be read).
    ///
    /// The main executable's mappings come first, as profile.proto wants
    /// (`mapping[0]` is the main binary); the rest stay in address order.
    /// Mappings that are not backed by a file on disk (`[vdso]`, anonymous
    /// JIT code) are left out: tools have no file to symbolize them from,
    /// and an allocation's stack does not pass through the vDSO.
    pub mappings: Vec<Mapping>,
    /// The address ranges of the allocator's entry points in those
    /// mappings (see [`is_allocator_entry`]), for the profile to cut them
    /// off the top of its stacks.
    pub entries: Vec<core::ops::Range<u64>>,
    /// Each executable mapping's file (as it can be opened now) and load
    /// bias (run-time address minus the address the file links it at),
    /// for symbolizing in the process.
    pub objects: Vec<Object>,
}

/// An executable mapping as a symbolizer needs it.
#[cfg_attr(not(feature = "symbolize"), allow(dead_code))]
pub(crate) struct Object {
    /// The run-time addresses it covers.
    pub range: core::ops::Range<u64>,
    /// A path that opens the mapped file.
    pub path: String,
    /// Run-time address minus link-time address.
    pub bias: u64,
}

impl Code {
    /// How many of `frames` (innermost first) lie in the allocator's entry
    /// points before the program's own first frame.
    pub(crate) fn entry_frames(&self, frames: &[u64]) -> usize {
        frames.iter().take_while(|&&f| self.entries.iter().any(|r| r.contains(&f))).count()
    }
}

/// The process's code now, from /proc/self/maps and the mapped files.
pub(crate) fn code() -> Code {
    let mut code = Code { mappings: Vec::new(), entries: Vec::new(), objects: Vec::new() };
    let Ok(text) = std::fs::read_to_string("/proc/self/maps") else {
        return code;
    };
    // A library usually has one executable mapping, but may have several:
    // read each file once.
    let mut files: HashMap<&str, FileFacts> = HashMap::new();
    for line in text.lines() {
        let Some(entry) = parse_line(line) else { continue };
        if !entry.perms.contains('x') || !entry.path.starts_with('/') {
            continue;
        }
        // A deleted file's name now belongs to another file, or to none:
        // only the mapped file itself has the right build id. Opening it
        // through map_files needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE);
        // without it the build id stays empty.
        let opened = match entry.deleted {
            true => format!("/proc/self/map_files/{:x}-{:x}", entry.start, entry.end),
            false => entry.path.to_owned(),
        };
        let facts = match entry.deleted {
            true => FileFacts::read(&opened),
            false => files.entry(entry.path).or_insert_with(|| FileFacts::read(entry.path)).clone(),
        };
        code.entries.extend(facts.entries_in(entry.start, entry.end, entry.offset));
        if let Some(linked) = facts.link_address(entry.start, entry.end, entry.offset) {
            let bias = entry.start.wrapping_sub(linked);
            code.objects.push(Object { range: entry.start..entry.end, path: opened, bias });
        }
        let (start, offset) = segment_start(entry.start, entry.end, entry.offset, &facts.code_segments);
        let m = Mapping { start, limit: entry.end, offset, file: entry.path.to_owned(), build_id: facts.build_id };
        code.mappings.push(m);
    }
    if let Some(exe) = std::fs::read_link("/proc/self/exe").ok().and_then(|p| p.into_os_string().into_string().ok()) {
        let exe = exe.strip_suffix(DELETED).unwrap_or(&exe);
        // A stable sort: the executable's mappings first, the order
        // otherwise kept.
        code.mappings.sort_by_key(|m| m.file != exe);
    }
    code
}

/// What the kernel appends to the path of a mapped file that was unlinked.
const DELETED: &str = " (deleted)";

/// One line of /proc/self/maps.
#[derive(Debug, PartialEq)]
struct MapsLine<'a> {
    start: u64,
    end: u64,
    perms: &'a str,
    offset: u64,
    /// The path, without the " (deleted)" suffix; empty for an anonymous
    /// mapping, a pseudo-path such as "[stack]" or "[vdso]" otherwise.
    path: &'a str,
    /// The file was unlinked (or replaced) after it was mapped.
    deleted: bool,
}

/// Parses `start-end perms offset dev inode [path]`; `None` if the line is
/// not of that form. The path is the rest of the line after the inode's
/// padding, so it may contain spaces.
fn parse_line(line: &str) -> Option<MapsLine<'_>> {
    let mut rest = line;
    let (start, end) = next_field(&mut rest).split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = next_field(&mut rest);
    let offset = u64::from_str_radix(next_field(&mut rest), 16).ok()?;
    let dev = next_field(&mut rest);
    let inode = next_field(&mut rest);
    if perms.is_empty() || dev.is_empty() || inode.parse::<u64>().is_err() {
        return None;
    }
    let path = rest.trim_start_matches(' ');
    let (path, deleted) = match path.strip_suffix(DELETED) {
        Some(path) => (path, true),
        None => (path, false),
    };
    Some(MapsLine { start, end, perms, offset, path, deleted })
}

/// The next space-separated field of `rest`, which is advanced past it.
fn next_field<'a>(rest: &mut &'a str) -> &'a str {
    let s = rest.trim_start_matches(' ');
    let (field, after) = s.split_at(s.find(' ').unwrap_or(s.len()));
    *rest = after;
    field
}

/// What a profile needs of a mapped file.
#[derive(Clone, Default)]
struct FileFacts {
    /// The GNU build id in lowercase hex; empty if there is none or the
    /// file cannot be read.
    build_id: String,
    /// Its executable `PT_LOAD` segments.
    code_segments: Vec<Segment>,
    /// The virtual address ranges of the allocator's entry points among
    /// its function symbols.
    entries: Vec<core::ops::Range<u64>>,
}

/// An executable `PT_LOAD` segment: where it is in the file and at which
/// virtual address it is linked.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Segment {
    offset: u64,
    vaddr: u64,
    size: u64,
}

impl FileFacts {
    fn read(path: &str) -> FileFacts {
        let Ok(file) = File::open(path) else {
            return FileFacts::default();
        };
        let read_at: ReadAt<'_> = &|buf, offset| file.read_exact_at(buf, offset).is_ok();
        FileFacts {
            build_id: build_id(read_at).map(|id| hex(&id)).unwrap_or_default(),
            code_segments: code_segments(read_at),
            entries: function_ranges(read_at, is_allocator_entry),
        }
    }

    /// The run-time address ranges of the allocator's entry points that
    /// the mapping of `start..end` at file offset `offset` holds.
    fn entries_in(&self, start: u64, end: u64, offset: u64) -> impl Iterator<Item = core::ops::Range<u64>> + '_ {
        let linked = self.link_address(start, end, offset);
        self.entries.iter().filter_map(move |r| {
            let at = linked?;
            let (lo, hi) = (r.start.wrapping_sub(at).wrapping_add(start), r.end.wrapping_sub(at).wrapping_add(start));
            (lo >= start && hi <= end && lo < hi).then_some(lo..hi)
        })
    }
}

impl FileFacts {
    /// The virtual address the file links the first byte of its mapping of
    /// `start..end` at file offset `offset` at, from a code segment the
    /// mapping shows (a segment's address and file offset are equal modulo
    /// the page size, so any shown segment gives the same); `None` if it
    /// shows none.
    fn link_address(&self, start: u64, end: u64, offset: u64) -> Option<u64> {
        let len = end - start;
        self.code_segments
            .iter()
            .find(|s| s.offset < offset + len && offset < s.offset + s.size)
            .map(|s| (s.vaddr + offset).wrapping_sub(s.offset))
    }
}

/// Whether the function named `name` (as the symbol table spells it) is
/// one of the allocator's own, which a sampled allocation's stack passes
/// through on its way in: the compiler's global allocator shims
/// (`__rust_alloc`, `__rust_alloc_zeroed`, `__rust_realloc`, mangled or
/// not), the C library's entry points, and any function of the `scavalloc`
/// crate (`9scavalloc` is how both Rust manglings spell the crate's name).
///
/// The stack walk cannot count these frames: whether the shim and the
/// allocator's fast path have a frame of their own, or were inlined into
/// the program's function, is the compiler's choice (and LTO's), so the
/// profile cuts them off by name when it is written.
fn is_allocator_entry(name: &[u8]) -> bool {
    const C_ENTRIES: [&[u8]; 9] =
        [b"malloc", b"calloc", b"realloc", b"reallocarray", b"aligned_alloc", b"posix_memalign", b"memalign", b"valloc", b"pvalloc"];
    let contains = |needle: &[u8]| name.windows(needle.len()).any(|w| w == needle);
    C_ENTRIES.contains(&name) || contains(b"__rust_alloc") || contains(b"__rust_realloc") || contains(b"9scavalloc")
}

/// The start address and file offset a profile gives the mapping of
/// `start..end` at file offset `offset`: those of the code segment that
/// begins inside its first page, if one does, else the mapping's own.
///
/// The kernel maps whole pages, so a segment whose file offset is not
/// page-aligned (lld places the code segment right after the read-only
/// data, mid-page) is mapped from the page boundary below it. Tools that
/// compute the load address from the mapping's file offset (the
/// standalone pprof) are right either way; tools that take the segment's
/// address for the mapping's start (Go 1.19's `go tool pprof`) misplace
/// every address by the segment's offset in its page unless the mapping
/// starts where the segment does. Both agree once it does.
fn segment_start(start: u64, end: u64, offset: u64, segments: &[Segment]) -> (u64, u64) {
    let first_page = (end.saturating_sub(start)).min(crate::os::page_size() as u64);
    segments
        .iter()
        .find(|s| s.offset > offset && s.offset - offset < first_page && s.size > 0)
        .map_or((start, offset), |s| (start + (s.offset - offset), s.offset))
}

/// The GNU build id of the ELF file at `path` in lowercase hex; empty if
/// there is none or the file cannot be read.
#[cfg(test)]
fn build_id_of_path(path: &str) -> String {
    FileFacts::read(path).build_id
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Reads exactly `buf.len()` bytes at an offset of the file; false if it
/// cannot.
type ReadAt<'a> = &'a dyn Fn(&mut [u8], u64) -> bool;

/// ELF64 file header and table entry layout (the System V gABI).
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_DYNSYM: u32 = 11;
const STT_FUNC: u8 = 2;
const SYM_SIZE: usize = 24;
/// A symbol or string table larger than this is a corrupt file (the
/// largest programs' are tens of MiB).
const MAX_SYMBOLS: u64 = 1 << 30;
const SHT_NOTE: u32 = 7;
const NT_GNU_BUILD_ID: u32 = 3;
/// No program or section header table or note area a linker writes comes
/// near this: a larger one is a corrupt file, not worth reading.
const MAX_TABLE: u64 = 1 << 20;

/// The GNU build id note's bytes of a 64-bit little-endian ELF file (the
/// only kind a 64-bit Linux process on x86_64 or aarch64 maps); `None` if
/// the file is another kind, has no such note, or is malformed.
///
/// Looks in the PT_NOTE segments first, which the loader maps and strip
/// keeps, then in the SHT_NOTE sections.
fn build_id(read_at: ReadAt<'_>) -> Option<Vec<u8>> {
    let h = Header::read(read_at)?;
    let segments = table(read_at, h.phoff, h.phentsize, h.phnum, PHDR_SIZE)?;
    for phdr in &segments {
        // p_type at 0, p_offset at 8, p_filesz at 32, p_align at 48.
        if u32_at(phdr, 0) == PT_NOTE {
            if let Some(id) = notes_build_id(read_at, u64_at(phdr, 8), u64_at(phdr, 32), u64_at(phdr, 48)) {
                return Some(id);
            }
        }
    }
    // More than 0xff00 sections keep their count elsewhere (section 0's
    // sh_size); such files have their notes in segments anyway.
    let sections = table(read_at, h.shoff, h.shentsize, h.shnum, SHDR_SIZE)?;
    for shdr in &sections {
        // sh_type at 4, sh_offset at 24, sh_size at 32, sh_addralign at 48.
        if u32_at(shdr, 4) == SHT_NOTE {
            if let Some(id) = notes_build_id(read_at, u64_at(shdr, 24), u64_at(shdr, 32), u64_at(shdr, 48)) {
                return Some(id);
            }
        }
    }
    None
}

/// The executable `PT_LOAD` segments of a 64-bit little-endian ELF file;
/// empty if it is another kind or cannot be read.
fn code_segments(read_at: ReadAt<'_>) -> Vec<Segment> {
    let Some(h) = Header::read(read_at) else { return Vec::new() };
    let Some(segments) = table(read_at, h.phoff, h.phentsize, h.phnum, PHDR_SIZE) else { return Vec::new() };
    // p_type at 0, p_flags at 4, p_offset at 8, p_vaddr at 16, p_filesz
    // at 32.
    segments
        .iter()
        .filter(|phdr| u32_at(phdr, 0) == PT_LOAD && u32_at(phdr, 4) & PF_X != 0)
        .map(|phdr| Segment { offset: u64_at(phdr, 8), vaddr: u64_at(phdr, 16), size: u64_at(phdr, 32) })
        .collect()
}

/// The virtual address ranges of the function symbols of a 64-bit
/// little-endian ELF file whose names `wanted` picks, from its symbol table
/// and its dynamic one (a stripped file keeps only the latter); empty if
/// it has neither or cannot be read.
fn function_ranges(read_at: ReadAt<'_>, wanted: fn(&[u8]) -> bool) -> Vec<core::ops::Range<u64>> {
    let Some(h) = Header::read(read_at) else { return Vec::new() };
    let Some(sections) = table(read_at, h.shoff, h.shentsize, h.shnum, SHDR_SIZE) else { return Vec::new() };
    let mut ranges = Vec::new();
    for shdr in &sections {
        // sh_type at 4, sh_offset at 24, sh_size at 32, sh_link at 40.
        if !matches!(u32_at(shdr, 4), SHT_SYMTAB | SHT_DYNSYM) {
            continue;
        }
        let Some(strings) = sections.get(u32_at(shdr, 40) as usize) else { continue };
        let (Some(symbols), Some(names)) = (
            read_all(read_at, u64_at(shdr, 24), u64_at(shdr, 32)),
            read_all(read_at, u64_at(strings, 24), u64_at(strings, 32)),
        ) else {
            continue;
        };
        // Each symbol: st_name (u32), st_info (u8), st_other, st_shndx,
        // st_value (u64) at 8, st_size (u64) at 16.
        for sym in symbols.chunks_exact(SYM_SIZE) {
            let (value, size) = (u64_at(sym, 8), u64_at(sym, 16));
            if sym[4] & 0xf != STT_FUNC || value == 0 || size == 0 {
                continue;
            }
            let name = names.get(u32_at(sym, 0) as usize..).unwrap_or_default();
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if wanted(name) {
                ranges.push(value..value.saturating_add(size));
            }
        }
    }
    ranges.sort_by_key(|r| r.start);
    ranges.dedup();
    ranges
}

/// `size` bytes at `offset`, if they can be read and are not beyond any
/// symbol table a linker writes.
fn read_all(read_at: ReadAt<'_>, offset: u64, size: u64) -> Option<Vec<u8>> {
    if size > MAX_SYMBOLS {
        return None;
    }
    let mut bytes = vec![0u8; size as usize];
    read_at(&mut bytes, offset).then_some(bytes)
}

/// Where an ELF64 little-endian file's header tables are.
struct Header {
    phoff: u64,
    phentsize: u16,
    phnum: u16,
    shoff: u64,
    shentsize: u16,
    shnum: u16,
}

impl Header {
    /// The file's header; `None` if it is not a 64-bit little-endian ELF
    /// file or cannot be read.
    fn read(read_at: ReadAt<'_>) -> Option<Header> {
        let mut ehdr = [0u8; EHDR_SIZE];
        if !read_at(&mut ehdr, 0) {
            return None;
        }
        if ehdr[..4] != *b"\x7fELF" || ehdr[4] != ELFCLASS64 || ehdr[5] != ELFDATA2LSB {
            return None;
        }
        Some(Header {
            phoff: u64_at(&ehdr, 0x20),
            shoff: u64_at(&ehdr, 0x28),
            phentsize: u16_at(&ehdr, 0x36),
            phnum: u16_at(&ehdr, 0x38),
            shentsize: u16_at(&ehdr, 0x3a),
            shnum: u16_at(&ehdr, 0x3c),
        })
    }
}

/// The `count` entries of a header table at `offset`, each cut to the
/// `min_size` bytes read from it; empty if the table is absent, `None` if
/// it is malformed or cannot be read.
fn table(read_at: ReadAt<'_>, offset: u64, entsize: u16, count: u16, min_size: usize) -> Option<Vec<Vec<u8>>> {
    if offset == 0 || count == 0 {
        return Some(Vec::new());
    }
    let entsize = usize::from(entsize);
    let size = entsize * usize::from(count);
    if entsize < min_size || size as u64 > MAX_TABLE {
        return None;
    }
    let mut bytes = vec![0u8; size];
    if !read_at(&mut bytes, offset) {
        return None;
    }
    Some(bytes.chunks_exact(entsize).map(|entry| entry[..min_size].to_vec()).collect())
}

/// The GNU build id among the notes in `size` bytes at `offset`, whose
/// entries are padded to `align` (4, or 8 for some newer note segments).
fn notes_build_id(read_at: ReadAt<'_>, offset: u64, size: u64, align: u64) -> Option<Vec<u8>> {
    if size > MAX_TABLE {
        return None;
    }
    let mut notes = vec![0u8; size as usize];
    if !read_at(&mut notes, offset) {
        return None;
    }
    let align = if align == 8 { 8 } else { 4 };
    let pad = |n: usize| n.next_multiple_of(align);
    let mut at = 0;
    // Each note: namesz, descsz, type (u32 each), then the name and the
    // descriptor, each padded to the alignment counted from the start of
    // the area (with 8, a 4-byte name ends on a boundary with no padding).
    // `at` and the sizes are below 2^33, so the sums cannot overflow.
    while at + 12 <= notes.len() {
        let namesz = u32_at(&notes, at) as usize;
        let descsz = u32_at(&notes, at + 4) as usize;
        let kind = u32_at(&notes, at + 8);
        let name = at + 12;
        let desc = pad(name + namesz);
        let end = desc + descsz;
        if end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && &notes[name..name + namesz] == b"GNU\0" && descsz > 0 {
            return Some(notes[desc..end].to_vec());
        }
        at = pad(end);
    }
    None
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn code_in_this_binary() -> u64 {
        std::hint::black_box(42)
    }

    fn exe() -> String {
        std::env::current_exe().expect("current_exe").into_os_string().into_string().expect("a UTF-8 path")
    }

    /// The build id `readelf -n` prints for `path`; `Err` with the reason
    /// if readelf cannot be run.
    fn readelf_build_id(path: &str) -> Result<String, String> {
        let out = std::process::Command::new("readelf").arg("-n").arg(path).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("readelf -n failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text.lines().find_map(|l| l.trim().strip_prefix("Build ID:")).map(|id| id.trim().to_owned());
        Ok(id.unwrap_or_default())
    }

    #[test]
    fn own_executable_is_mapped_with_its_build_id() {
        let mappings = code().mappings;
        let exe = exe();
        assert_eq!(mappings.first().map(|m| m.file.as_str()), Some(exe.as_str()), "the executable comes first");
        let own: Vec<&Mapping> = mappings.iter().filter(|m| m.file == exe).collect();
        assert!(!own.is_empty());
        for m in &mappings {
            assert!(m.start < m.limit, "{}: {:#x}..{:#x}", m.file, m.start, m.limit);
            assert!(m.file.starts_with('/'));
            assert!(m.build_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{}", m.build_id);
        }

        let code = code_in_this_binary as *const () as usize as u64;
        let holder = mappings.iter().find(|m| m.start <= code && code < m.limit).expect("a mapping holds our code");
        assert_eq!(holder.file, exe);

        match readelf_build_id(&exe) {
            Ok(id) => {
                for m in &own {
                    assert_eq!(m.build_id, id);
                }
            }
            Err(reason) => println!("skipped the readelf comparison: {reason}"),
        }
    }

    /// The allocator's own functions (all of this crate's, here) are entry
    /// points to cut off a stack; the standard library's and the C
    /// library's are not.
    #[test]
    fn allocator_entry_points_are_found_by_name() {
        let code = code();
        let ours = code_in_this_binary as *const () as usize as u64;
        let std_fn = std::process::id as *const () as usize as u64;
        let libc_fn = libc::getpid as *const () as usize as u64;
        assert!(code.entries.iter().any(|r| r.contains(&ours)), "{ours:#x} not among {:x?}", code.entries.len());
        assert!(!code.entries.iter().any(|r| r.contains(&std_fn)));
        assert!(!code.entries.iter().any(|r| r.contains(&libc_fn)));
        assert_eq!(code.entry_frames(&[ours, ours + 1, std_fn, ours]), 2);
        assert_eq!(code.entry_frames(&[std_fn, ours]), 0);

        for name in ["__rust_alloc", "_RNvCs5g6fQ4dS9aW_7___rustc12___rust_alloc", "__rust_alloc_zeroed", "__rust_realloc"] {
            assert!(is_allocator_entry(name.as_bytes()), "{name}");
        }
        for name in ["malloc", "calloc", "posix_memalign", "_ZN9scavalloc3api5alloc17h0123456789abcdefE"] {
            assert!(is_allocator_entry(name.as_bytes()), "{name}");
        }
        for name in ["mallocx", "my_malloc", "_ZN3std2rt10lang_start17h0123456789abcdefE", "__rust_dealloc", ""] {
            assert!(!is_allocator_entry(name.as_bytes()), "{name}");
        }
    }

    /// A mapping that begins on the page below a mid-page code segment
    /// (as lld lays out executables) is given the segment's own start and
    /// offset; a segment that starts the mapping leaves it alone.
    #[test]
    fn mapping_starts_at_its_code_segment() {
        let page = crate::os::page_size() as u64;
        let seg = Segment { offset: 0x24560, vaddr: 0x25560, size: 0x1000 };
        let start = 0x5555_0002_5000;
        assert_eq!(segment_start(start, start + 4 * page, 0x24000, &[seg]), (start + 0x560, 0x24560));
        let aligned = Segment { offset: 0x24000, vaddr: 0x25000, size: 0x1000 };
        assert_eq!(segment_start(start, start + 4 * page, 0x24000, &[aligned]), (start, 0x24000));
        // A segment further on is another mapping's.
        let later = Segment { offset: 0x24000 + 2 * page, vaddr: 0x25000 + 2 * page, size: 0x1000 };
        assert_eq!(segment_start(start, start + 4 * page, 0x24000, &[later]), (start, 0x24000));

        // Entry points are placed by the same link address.
        let facts = FileFacts { build_id: String::new(), code_segments: vec![seg], entries: vec![core::ops::Range { start: 0x25600, end: 0x25700 }] };
        let placed: Vec<_> = facts.entries_in(start, start + 4 * page, 0x24000).collect();
        assert_eq!(placed, vec![start + 0x600..start + 0x700]);
    }

    #[test]
    fn libc_has_a_build_id() {
        let mappings = code().mappings;
        let is_libc = |m: &&Mapping| {
            let name = m.file.rsplit('/').next().unwrap_or("");
            name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
        };
        let Some(libc) = mappings.iter().find(is_libc) else {
            println!("skipped: no libc mapping (a statically linked test binary?)");
            return;
        };
        assert!(!libc.build_id.is_empty(), "{} has no build id", libc.file);
        if let Ok(id) = readelf_build_id(&libc.file) {
            assert_eq!(libc.build_id, id);
        }
    }

    #[test]
    fn parses_maps_lines() {
        assert_eq!(
            parse_line("55d0c8a00000-55d0c8a9c000 r-xp 00036000 fd:01 1234567                    /usr/bin/my server"),
            Some(MapsLine {
                start: 0x55d0_c8a0_0000,
                end: 0x55d0_c8a9_c000,
                perms: "r-xp",
                offset: 0x36000,
                path: "/usr/bin/my server",
                deleted: false,
            })
        );
        assert_eq!(
            parse_line("7f1c2a000000-7f1c2a200000 r-xp 00000000 00:1f 42 /tmp/lib (old) x.so (deleted)"),
            Some(MapsLine {
                start: 0x7f1c_2a00_0000,
                end: 0x7f1c_2a20_0000,
                perms: "r-xp",
                offset: 0,
                path: "/tmp/lib (old) x.so",
                deleted: true,
            })
        );
        let anon = parse_line("7ffd1e5f0000-7ffd1e611000 rw-p 00000000 00:00 0 ").expect("anonymous");
        assert_eq!((anon.path, anon.deleted), ("", false));
        let anon = parse_line("7ffd1e5f0000-7ffd1e611000 rw-p 00000000 00:00 0").expect("anonymous, no padding");
        assert_eq!(anon.path, "");
        let vdso = parse_line("7ffd1e7e6000-7ffd1e7e8000 r-xp 00000000 00:00 0                          [vdso]");
        assert_eq!(vdso.map(|l| (l.perms, l.path)), Some(("r-xp", "[vdso]")));
        for bad in ["", "garbage", "1000-zz r-xp 0 00:00 0 /x", "1000 r-xp 0 00:00 0 /x", "1000-2000 r-xp 0 00:00"] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }

    /// A minimal ELF64 little-endian file: header, one PT_NOTE segment of
    /// `notes` (with `align`), no sections.
    fn elf_with_notes(notes: &[u8], align: u64) -> Vec<u8> {
        let mut f = vec![0u8; EHDR_SIZE + PHDR_SIZE];
        f[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', ELFCLASS64, ELFDATA2LSB]);
        f[0x20..0x28].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        f[0x36..0x38].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let ph = EHDR_SIZE;
        f[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&((EHDR_SIZE + PHDR_SIZE) as u64).to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        f[ph + 48..ph + 56].copy_from_slice(&align.to_le_bytes());
        f.extend_from_slice(notes);
        f
    }

    fn note(name: &[u8], kind: u32, desc: &[u8], align: usize) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(align), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(align), 0);
        n
    }

    /// Reads `file`'s bytes as [`ReadAt`] reads a file's.
    fn reader(file: &[u8]) -> impl Fn(&mut [u8], u64) -> bool + '_ {
        move |buf, offset| {
            let Some(src) = usize::try_from(offset).ok().and_then(|o| file.get(o..o.checked_add(buf.len())?)) else {
                return false;
            };
            buf.copy_from_slice(src);
            true
        }
    }

    fn build_id_of_bytes(file: &[u8]) -> Option<Vec<u8>> {
        build_id(&reader(file))
    }

    #[test]
    fn finds_the_build_id_note_among_others() {
        let id = [0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02];
        for align in [4, 8] {
            let mut notes = note(b"GNU\0", 5, &[1; 12], align); // a property note first
            notes.extend(note(b"Go\0\0", NT_GNU_BUILD_ID, b"not this", align)); // right type, other owner
            notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &id, align));
            let elf = elf_with_notes(&notes, align as u64);
            assert_eq!(build_id_of_bytes(&elf).as_deref(), Some(&id[..]), "align {align}");
            assert_eq!(hex(&id), "deadbeef000102");

            // Truncated anywhere, or with its class or byte order changed:
            // no build id, no panic.
            for len in 0..elf.len() {
                assert_eq!(build_id_of_bytes(&elf[..len]), None);
            }
            for (at, value) in [(4, 1), (5, 2), (0, 0)] {
                let mut other = elf.clone();
                other[at] = value;
                assert_eq!(build_id_of_bytes(&other), None);
            }
        }
        assert_eq!(build_id_of_bytes(&elf_with_notes(&note(b"GNU\0", 1, &id, 4), 4)), None);
        assert_eq!(build_id_of_path("/nonexistent/scavalloc"), "");
        assert_eq!(build_id_of_path("/proc/self/maps"), "");
    }

    #[test]
    fn corrupt_headers_do_not_panic() {
        // Bytes of the real executable with each header field in turn set
        // to all ones: any outcome but a panic is fine.
        let real = std::fs::read(exe()).expect("read the test executable");
        let read_all = |elf: &[u8]| {
            let read = reader(elf);
            let _ = (build_id(&read), code_segments(&read), function_ranges(&read, is_allocator_entry));
        };
        for at in (0x10..EHDR_SIZE).step_by(2) {
            let mut elf = real[..EHDR_SIZE.max(4096).min(real.len())].to_vec();
            elf[at] = 0xff;
            elf[at + 1] = 0xff;
            read_all(&elf);
        }
        // The whole file with each field of the symbol tables' section
        // headers, and their string tables', in turn set to all ones
        // (offsets, sizes, links out of range), and cut short anywhere.
        let h = Header::read(&reader(&real)).expect("the test executable is ELF64");
        let header_at = |section: usize| h.shoff as usize + section * usize::from(h.shentsize);
        let word = |at: usize| u32::from_le_bytes(real[at..at + 4].try_into().unwrap());
        let mut touched = Vec::new();
        for section in 0..usize::from(h.shnum) {
            if matches!(word(header_at(section) + 4), SHT_SYMTAB | SHT_DYNSYM) {
                touched.extend([section, word(header_at(section) + 40) as usize]);
            }
        }
        assert!(!touched.is_empty(), "the test executable has a symbol table");
        let mut elf = real.clone();
        for section in touched.into_iter().filter(|&s| s < usize::from(h.shnum)) {
            for field in (0..SHDR_SIZE).step_by(8) {
                let at = header_at(section) + field;
                let saved: [u8; 8] = elf[at..at + 8].try_into().unwrap();
                elf[at..at + 8].fill(0xff);
                read_all(&elf);
                elf[at..at + 8].copy_from_slice(&saved);
            }
        }
        assert!(!function_ranges(&reader(&real), is_allocator_entry).is_empty(), "this crate's functions");
        for cut in (0..real.len()).step_by(real.len() / 64 + 1) {
            read_all(&real[..cut]);
        }
    }
}
