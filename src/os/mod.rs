//! The operating-system boundary: the only module that makes system calls.
//!
//! It owns the states of address space and the facts about the machine:
//!
//! * **reserved**: mapped with no access and no commit charge
//!   ([`reserve`]); touching it faults.
//! * **ready**: readable and writable ([`map_ready`]); pages become resident
//!   as they are first touched.
//! * **released**: still mapped and ready, but its physical pages handed
//!   back to the kernel with `madvise` ([`release`]); the next touch faults in
//!   a page again (a zero page for `MADV_DONTNEED`).
//! * **faulted**: no access again and no physical pages ([`fault`]), for
//!   memory that must never be touched after it was freed.
//!
//! Page sizes are found on first use without allocating: the base page size
//! from `sysconf`, the transparent-huge-page size from sysfs, read with raw
//! `open`/`read`. The kernel acts on whole base pages (4, 16 or 64 KiB on
//! arm64), so every range handed to these calls must be made of them; the
//! `testing` feature can emulate a bigger page and check that every range
//! is (see [`page_size`]).
//!
//! Every failure comes back as an [`OsError`]; nothing here panics. Callers
//! up the stack turn an error into a null pointer.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};

pub mod cgroup;
pub mod pressure;
#[cfg(feature = "testing")]
pub mod release_log;

/// A failed system call, with the `errno` it left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OsError {
    /// The `errno` value of the failed call.
    pub errno: i32,
}

impl OsError {
    fn last() -> Self {
        // SAFETY: `__errno_location` returns this thread's errno slot, which
        // is always valid to read.
        OsError { errno: unsafe { *libc::__errno_location() } }
    }
}

/// What [`release`] asks the kernel to do with released pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseMode {
    /// `MADV_DONTNEED`: RSS drops at once and the pages read back as zero.
    DontNeed,
    /// `MADV_FREE`: the kernel takes the pages lazily, under memory pressure;
    /// until it does they keep their contents and count in RSS.
    Free,
}

static RELEASE_MODE: AtomicU8 = AtomicU8::new(0);

/// Set before the first `MADV_FREE` this process issues, and never cleared
/// (a forked child inherits it with the memory it describes): from then on
/// some free page may hold its old contents although the page heap counts
/// it released.
static FREE_ISSUED: AtomicBool = AtomicBool::new(false);

/// Whether the kernel knows `MADV_FREE`: [`UNKNOWN`] until a `MADV_FREE`
/// first fails with `EINVAL`, then [`KNOWN`] or [`UNKNOWN_TO_KERNEL`].
static MADV_FREE_SUPPORT: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const KNOWN: u8 = 1;
const UNKNOWN_TO_KERNEL: u8 = 2;

/// Chooses how [`release`] gives pages back. Set once by the configuration
/// at start-up; nothing here changes it afterwards (a range that refuses
/// `MADV_FREE` falls back to `MADV_DONTNEED` for that call only).
pub fn set_release_mode(mode: ReleaseMode) {
    RELEASE_MODE.store(mode as u8, Ordering::Relaxed);
}

/// The release mode in force.
pub fn release_mode() -> ReleaseMode {
    match RELEASE_MODE.load(Ordering::Relaxed) {
        0 => ReleaseMode::DontNeed,
        _ => ReleaseMode::Free,
    }
}

/// Whether every page released so far, and every page released from now
/// on, reads back as zeroes (so a later allocation of it needs no zeroing).
///
/// True only while the mode is `MADV_DONTNEED` and no `MADV_FREE` was ever
/// issued: a page released with `MADV_FREE` keeps its contents until the
/// kernel reclaims it, whatever mode is in force when it is reused. Pages
/// that fell back to `MADV_DONTNEED` under the `MADV_FREE` mode are zero
/// too, but nothing records which ones they are, so they count as dirty.
///
/// The page heap publishes a released run under its lock after the
/// `madvise`, so a caller that took the run from the heap sees the flag set
/// by the release that put it there.
pub fn released_memory_is_zero() -> bool {
    release_mode() == ReleaseMode::DontNeed && !FREE_ISSUED.load(Ordering::Acquire)
}

/// The `madvise` advice for a release under the mode in force. Records a
/// `MADV_FREE` before it is issued (see [`released_memory_is_zero`]).
fn release_advice() -> i32 {
    match release_mode() {
        ReleaseMode::DontNeed => libc::MADV_DONTNEED,
        ReleaseMode::Free if MADV_FREE_SUPPORT.load(Ordering::Relaxed) == UNKNOWN_TO_KERNEL => libc::MADV_DONTNEED,
        ReleaseMode::Free => {
            FREE_ISSUED.store(true, Ordering::Release);
            libc::MADV_FREE
        }
    }
}

/// Called when `MADV_FREE` failed with `EINVAL`. That means either a
/// kernel older than 4.5, which will refuse it for every range, or a range
/// that takes no `MADV_FREE` (locked with `mlock`, for one); only the first
/// is worth remembering. Tells them apart once, by advising one page of a
/// fresh private mapping.
fn note_madv_free_refused() {
    if MADV_FREE_SUPPORT.load(Ordering::Relaxed) != UNKNOWN {
        return;
    }
    let len = page_size();
    let Ok(p) = mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, SPARSE_FLAGS) else { return };
    // SAFETY: the page is our own fresh mapping, holding nothing.
    let r = unsafe { libc::madvise(p.as_ptr().cast(), len, libc::MADV_FREE) };
    let support = if r == 0 || OsError::last().errno != libc::EINVAL { KNOWN } else { UNKNOWN_TO_KERNEL };
    // SAFETY: the mapping made above, used by nothing else.
    unsafe { unmap(p.as_ptr() as usize, len) };
    MADV_FREE_SUPPORT.store(support, Ordering::Relaxed);
}

static BASE_PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
static HUGE_PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// The fallback transparent-huge-page size when sysfs cannot tell (the PMD
/// size of x86-64 and of arm64 with 4 KiB pages).
const DEFAULT_HUGE_PAGE_SIZE: usize = 2 << 20;

/// The kernel's base page size: the granularity of `mprotect` and `madvise`.
/// Linux uses 4 KiB on x86-64 and 4, 16 or 64 KiB on arm64; nothing above
/// this layer may assume one of them.
///
/// With the `testing` feature, `SCAVALLOC_TEST_PAGE_SIZE` (a power of two
/// above the kernel's page, at most 1 MiB) makes this the page size the
/// allocator works with, as if the kernel used it, and every `mmap`,
/// `mprotect`, `madvise` and `munmap` range must then be whole pages of it
/// (or the process stops with one line naming the call).
#[inline]
pub fn page_size() -> usize {
    let cached = BASE_PAGE_SIZE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    init_page_size()
}

#[cold]
fn init_page_size() -> usize {
    let kernel = kernel_page_size();
    #[cfg(feature = "testing")]
    let size = emulated_page_size(kernel).unwrap_or(kernel);
    #[cfg(not(feature = "testing"))]
    let size = kernel;
    BASE_PAGE_SIZE.store(size, Ordering::Relaxed);
    size
}

/// The page size the kernel really uses (the same as [`page_size`] unless a
/// test emulates a larger one).
fn kernel_page_size() -> usize {
    // SAFETY: `sysconf` has no preconditions.
    let raw = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if raw > 0 && (raw as usize).is_power_of_two() {
        raw as usize
    } else {
        // sysconf cannot fail for this name on Linux; the smallest page
        // any supported kernel uses keeps every rounding safe regardless.
        4096
    }
}

/// Set when the page size is emulated: the system-call wrappers then check
/// every range against it.
#[cfg(feature = "testing")]
static EMULATED: AtomicBool = AtomicBool::new(false);

/// `SCAVALLOC_TEST_PAGE_SIZE`, read without allocating; a value that is not
/// a power of two in `(kernel, 1 MiB]` stops the process (a test that asked
/// for it would otherwise test nothing).
#[cfg(feature = "testing")]
fn emulated_page_size(kernel: usize) -> Option<usize> {
    let text = getenv(c"SCAVALLOC_TEST_PAGE_SIZE")?;
    match parse_decimal(text) {
        Some(n) if n == kernel => None,
        Some(n) if n.is_power_of_two() && n > kernel && n <= 1 << 20 => {
            EMULATED.store(true, Ordering::Relaxed);
            Some(n)
        }
        _ => crate::report::fatal(format_args!(
            "SCAVALLOC_TEST_PAGE_SIZE must be a power of two from {kernel} to 1048576 bytes"
        )),
    }
}

/// With an emulated page size (see [`page_size`]), stops the process with
/// one line unless `addr` and `len` are whole emulated pages: a kernel with
/// that page size would round the length up and act on bytes past the
/// range (or refuse an unaligned address). Does nothing otherwise.
#[inline]
fn check_aligned(addr: usize, len: usize, call: &str) {
    check_no_lock_held(call);
    #[cfg(feature = "testing")]
    if EMULATED.load(Ordering::Relaxed) {
        let page = page_size();
        if !addr.is_multiple_of(page) || !len.is_multiple_of(page) {
            crate::report::fatal(format_args!(
                "{call} of {len:#x} bytes at {addr:#x} is not in whole pages of the emulated {page} B OS page"
            ));
        }
    }
    #[cfg(not(feature = "testing"))]
    let _ = (addr, len, call);
}

/// In the crate's test builds, stops the process if the calling thread
/// holds an allocator lock: a system call under a lock makes every thread
/// that wants the lock wait for the kernel (Go measured a 3-4x worse p99
/// allocation latency from `madvise` under its heap lock). The test suite
/// runs with this check, so every path it exercises keeps the rule.
#[inline(always)]
fn check_no_lock_held(call: &str) {
    #[cfg(feature = "testing")]
    if let Some(held) = crate::sync::held_locks() {
        if held != 0 {
            crate::report::fatal(format_args!("{call} while {held} allocator locks are held"));
        }
    }
    #[cfg(not(feature = "testing"))]
    let _ = call;
}

/// The transparent-huge-page size (`hpage_pmd_size`), or 2 MiB when the
/// kernel does not say.
pub fn huge_page_size() -> usize {
    let cached = HUGE_PAGE_SIZE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let size = read_sysfs_usize(c"/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
        .filter(|s| s.is_power_of_two() && *s >= page_size())
        .unwrap_or(DEFAULT_HUGE_PAGE_SIZE);
    HUGE_PAGE_SIZE.store(size, Ordering::Relaxed);
    size
}

/// Reads a small decimal number from a file without allocating.
fn read_sysfs_usize(path: &core::ffi::CStr) -> Option<usize> {
    let mut buf = [0u8; 32];
    let n = read_file_into(path, &mut buf)?;
    parse_decimal(&buf[..n])
}

/// Reads the start of a file (a sysfs, procfs or cgroup file: small, and
/// current on every read) into `buf` without allocating; returns the bytes
/// read (at most `buf.len()`; a longer file is cut short), or `None` if it
/// cannot be opened or read, or is empty.
pub(crate) fn read_file_into(path: &core::ffi::CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `path` is NUL-terminated; the flags ask for read-only access.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: `buf[filled..]` is a writable buffer of the length passed.
        let n = unsafe { libc::read(fd, buf[filled..].as_mut_ptr().cast(), buf.len() - filled) };
        if n > 0 {
            filled += n as usize;
        } else if n < 0 && OsError::last().errno == libc::EINTR {
            continue;
        } else {
            break;
        }
    }
    // SAFETY: `fd` is the descriptor we opened above, closed exactly once.
    unsafe { libc::close(fd) };
    (filled > 0).then_some(filled)
}

/// Parses leading ASCII digits (surrounding white space allowed).
pub(crate) fn parse_decimal(bytes: &[u8]) -> Option<usize> {
    let text = bytes.trim_ascii();
    if text.is_empty() {
        return None;
    }
    let mut value: usize = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add((b - b'0') as usize)?;
    }
    Some(value)
}

fn mmap(hint: usize, size: usize, prot: i32, flags: i32) -> Result<NonNull<u8>, OsError> {
    check_no_lock_held("mmap");
    #[cfg(feature = "testing")]
    if EMULATED.load(Ordering::Relaxed) && hint == 0 {
        let p = mmap_emulated(size, prot, flags)?;
        keep_huge_pages_out(p.as_ptr() as usize, size.next_multiple_of(page_size()));
        return Ok(p);
    }
    check_aligned(hint, size, "mmap");
    // SAFETY: an anonymous mapping without MAP_FIXED never replaces existing
    // mappings; the kernel picks an address (using `hint` only as a hint).
    let p = unsafe { libc::mmap(hint as *mut libc::c_void, size, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(OsError::last());
    }
    keep_huge_pages_out(p as usize, size);
    NonNull::new(p.cast()).ok_or(OsError { errno: libc::ENOMEM })
}

/// Whether the kernel may back scavalloc's mappings with transparent huge
/// pages (`SCAVALLOC_THP=1`); by default it may not.
static HUGE_PAGES: AtomicBool = AtomicBool::new(false);

/// Lets the kernel use transparent huge pages for the mappings made from
/// now on, or not (set once by the configuration at start-up).
pub fn set_huge_pages(allowed: bool) {
    HUGE_PAGES.store(allowed, Ordering::Relaxed);
}

/// Marks a fresh mapping `MADV_NOHUGEPAGE`, unless huge pages are allowed.
///
/// With transparent huge pages in `always` mode, the kernel backs a heap's
/// 2 MiB-aligned ranges with huge pages, and khugepaged collapses any
/// 2 MiB range that has at most `max_ptes_none` (511 by default) of its
/// pages missing back into a huge page: it faults the pages the scavenger
/// released back in, and RSS creeps up while the program idles (measured:
/// from 107 MiB to 322 MiB in three minutes after a scattered burst, and
/// still climbing). Go hit the same in 1.21. Marking the whole mapping once,
/// when it is made, keeps it one VMA (marking ranges as they are released
/// would split the mapping into thousands); in `madvise` mode, the common
/// default, the mark changes nothing, since nothing asks for huge pages.
fn keep_huge_pages_out(addr: usize, size: usize) {
    if HUGE_PAGES.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: the range is a mapping this module just made; the advice
    // only sets a flag on it and touches no memory. A kernel without
    // transparent huge pages refuses it (EINVAL), which is fine.
    unsafe { libc::madvise(addr as *mut libc::c_void, size, libc::MADV_NOHUGEPAGE) };
}

/// An anonymous mapping as a kernel with the emulated page size would make
/// it: aligned to that page, and its length rounded up to it.
#[cfg(feature = "testing")]
fn mmap_emulated(size: usize, prot: i32, flags: i32) -> Result<NonNull<u8>, OsError> {
    let page = page_size();
    let len = size.checked_next_multiple_of(page).ok_or(OsError { errno: libc::ENOMEM })?;
    let padded = len + page - kernel_page_size();
    // SAFETY: as in `mmap`: no MAP_FIXED, nothing existing is replaced.
    let p = unsafe { libc::mmap(core::ptr::null_mut(), padded, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(OsError::last());
    }
    let raw = p as usize;
    let aligned = raw.next_multiple_of(page);
    // SAFETY: both trimmed pieces lie inside the mapping just made, which
    // nobody else knows of.
    unsafe {
        if aligned != raw {
            libc::munmap(p, aligned - raw);
        }
        if raw + padded != aligned + len {
            libc::munmap((aligned + len) as *mut libc::c_void, raw + padded - aligned - len);
        }
    }
    NonNull::new(aligned as *mut u8).ok_or(OsError { errno: libc::ENOMEM })
}

/// Address space for the heap is reserved *with* commit accounting: the
/// reservation itself (no access) costs nothing, but making it writable is
/// then checked by the kernel's overcommit policy, as glibc's mappings are,
/// so an absurd request (more than RAM and swap under the default policy)
/// fails and returns null instead of succeeding on paper.
const RESERVE_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
/// Metadata tables are mapped whole and touched sparsely; they are not
/// charged against the commit limit.
const SPARSE_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// Reserves `size` bytes of address space aligned to `align` (a power of two,
/// at least the page size), with no access and no commit charge (the charge
/// comes with [`map_ready`]).
pub fn reserve(size: usize, align: usize) -> Result<NonNull<u8>, OsError> {
    debug_assert!(align.is_power_of_two() && align >= page_size());
    debug_assert!(size.is_multiple_of(page_size()));
    if align <= page_size() {
        return mmap(0, size, libc::PROT_NONE, RESERVE_FLAGS);
    }
    // Over-reserve and trim both ends so that what stays is aligned.
    let padded = size.checked_add(align - page_size()).ok_or(OsError { errno: libc::ENOMEM })?;
    let raw = mmap(0, padded, libc::PROT_NONE, RESERVE_FLAGS)?.as_ptr() as usize;
    let aligned = (raw + align - 1) & !(align - 1);
    let head = aligned - raw;
    let tail = padded - head - size;
    // SAFETY: both trimmed pieces lie inside the mapping we just made and
    // nobody else knows of.
    unsafe {
        if head != 0 {
            unmap(raw, head);
        }
        if tail != 0 {
            unmap(aligned + size, tail);
        }
    }
    // SAFETY: `aligned` lies inside a successful mapping, so it is non-null.
    Ok(unsafe { NonNull::new_unchecked(aligned as *mut u8) })
}

/// Reserves `size` bytes of address space that reads as zero and cannot be
/// written, with no commit charge (the charge comes with [`map_ready`] on
/// the parts that are made writable): for a sparse table whose entries
/// nobody wrote must read as empty. Reading an untouched page maps the
/// kernel's shared zero page, no memory of the process's own.
pub fn reserve_zero_readable(size: usize) -> Result<NonNull<u8>, OsError> {
    mmap(0, size, libc::PROT_READ, RESERVE_FLAGS)
}

/// Reserves exactly `[addr, addr + size)` if that address space is free,
/// and fails otherwise (it never replaces an existing mapping). Used to grow
/// the heap contiguously.
pub fn reserve_at(addr: usize, size: usize) -> Result<NonNull<u8>, OsError> {
    let got = mmap(addr, size, libc::PROT_NONE, RESERVE_FLAGS | libc::MAP_FIXED_NOREPLACE)?;
    if got.as_ptr() as usize != addr {
        // Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat the
        // address as a hint: give back whatever they picked instead.
        // SAFETY: `got` is a fresh mapping of `size` bytes that only we know.
        unsafe { unmap(got.as_ptr() as usize, size) };
        return Err(OsError { errno: libc::EEXIST });
    }
    Ok(got)
}

/// Makes reserved memory readable and writable.
///
/// # Safety
///
/// `[addr, addr + size)` must be page-aligned address space that the caller
/// reserved with [`reserve`] and owns.
pub unsafe fn map_ready(addr: usize, size: usize) -> Result<(), OsError> {
    check_aligned(addr, size, "mprotect");
    // SAFETY: the caller owns the range; changing its protection affects
    // nothing else.
    let r = unsafe { libc::mprotect(addr as *mut libc::c_void, size, libc::PROT_READ | libc::PROT_WRITE) };
    if r != 0 {
        return Err(OsError::last());
    }
    Ok(())
}

/// Hands the physical pages of `[addr, addr + size)` back to the kernel; the
/// range stays mapped and ready. Uses the [`release_mode`] in force; a range
/// that refuses `MADV_FREE` gets `MADV_DONTNEED` instead.
///
/// # Safety
///
/// The caller owns the range and nothing live is stored in it: its contents
/// are lost (`MADV_DONTNEED`) or may be lost at any time (`MADV_FREE`).
pub unsafe fn release(addr: usize, size: usize) -> Result<(), OsError> {
    check_aligned(addr, size, "madvise");
    let advice = release_advice();
    // SAFETY: the caller owns the range and holds nothing in it.
    if unsafe { libc::madvise(addr as *mut libc::c_void, size, advice) } == 0 {
        #[cfg(feature = "testing")]
        release_log::note(addr, size);
        return Ok(());
    }
    let err = OsError::last();
    if advice != libc::MADV_FREE || err.errno != libc::EINVAL {
        return Err(err);
    }
    // This range (or this kernel) refuses MADV_FREE: release it with
    // MADV_DONTNEED instead, this time only. The mode stays as configured,
    // so what other ranges released with MADV_FREE still hold is never
    // mistaken for zeroes.
    note_madv_free_refused();
    // SAFETY: as above.
    if unsafe { libc::madvise(addr as *mut libc::c_void, size, libc::MADV_DONTNEED) } != 0 {
        return Err(OsError::last());
    }
    #[cfg(feature = "testing")]
    release_log::note(addr, size);
    Ok(())
}

/// The pid whose pidfd is cached (high 32 bits) and the pidfd (low 32
/// bits), 0 before the first use. An atomic rather than a lock: a lock
/// held by another thread at `fork()` would stay held forever in the child.
/// A forked child drops its copy of the parent's pidfd in
/// [`after_fork_child`], before it can open a descriptor of its own.
static SELF_PIDFD: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static VECTORED_RELEASE_BROKEN: AtomicU8 = AtomicU8::new(0);

/// In a child just forked (the `pthread_atfork` child handler, which runs
/// before the child's own code): closes the pidfd inherited from the parent
/// and forgets it. It must go now: the child's copy is a real descriptor
/// that refers to the parent, and once the child's code runs, the number
/// may be closed and reused for the child's own files, so closing it later
/// by number could close one of them.
pub fn after_fork_child() {
    let cached = SELF_PIDFD.swap(0, Ordering::AcqRel);
    let fd = cached as u32 as i32;
    if cached != 0 && fd >= 0 {
        // SAFETY: the parent's pidfd, inherited by this child and not yet
        // visible to any code but ours; nothing else uses it.
        unsafe { libc::close(fd) };
    }
}

/// The most ranges [`release_many`] takes at once (each call flushes the
/// TLB of every CPU the process runs on once, so bigger batches are
/// cheaper; the kernel takes up to 1024).
pub const MAX_RELEASE_RANGES: usize = 256;

/// Releases many ranges at once, as [`release`] does each. Ranges that
/// touch (the end of one is the start of another, in any order) are
/// released as one: the kernel walks the page tables once and the batch
/// needs fewer entries. The batch goes to the kernel in one
/// `process_madvise` call where it allows that on the calling process
/// (Linux 6.13 and later), which costs one system call and one TLB flush
/// for the whole batch instead of one per range; otherwise one `madvise`
/// per coalesced range. `released[i]` says whether range `i` was released.
///
/// # Safety
///
/// As for [`release`], for every range; the ranges do not overlap.
pub unsafe fn release_many(ranges: &[(usize, usize)], released: &mut [bool]) {
    let n = ranges.len();
    debug_assert!(released.len() >= n && n <= MAX_RELEASE_RANGES);
    let mut order = [0u16; MAX_RELEASE_RANGES];
    for (i, slot) in order[..n].iter_mut().enumerate() {
        *slot = i as u16;
    }
    order[..n].sort_unstable_by_key(|&i| ranges[i as usize].0);
    // The coalesced ranges, and for each given range the one it joined.
    let mut merged = [(0usize, 0usize); MAX_RELEASE_RANGES];
    let mut joined = [0u16; MAX_RELEASE_RANGES];
    let mut m = 0;
    for &i in &order[..n] {
        let (addr, len) = ranges[i as usize];
        if m > 0 && merged[m - 1].0 + merged[m - 1].1 == addr {
            merged[m - 1].1 += len;
        } else {
            debug_assert!(m == 0 || merged[m - 1].0 + merged[m - 1].1 < addr, "overlapping release ranges");
            merged[m] = (addr, len);
            m += 1;
        }
        joined[i as usize] = (m - 1) as u16;
    }
    let mut ok = [false; MAX_RELEASE_RANGES];
    let mut done = 0;
    if m > 1 && VECTORED_RELEASE_BROKEN.load(Ordering::Relaxed) == 0 {
        // SAFETY: forwarded from the caller.
        done = unsafe { release_vectored(&merged[..m]) };
    }
    for (k, &(addr, len)) in merged[..m].iter().enumerate() {
        // SAFETY: forwarded from the caller.
        ok[k] = k < done || unsafe { release(addr, len) }.is_ok();
    }
    for i in 0..n {
        released[i] = ok[joined[i] as usize];
    }
}

/// One `process_madvise` over `ranges`; returns how many leading ranges it
/// released (0 if the call is not available).
unsafe fn release_vectored(ranges: &[(usize, usize)]) -> usize {
    // SAFETY: `getpid` has no preconditions.
    let pid = unsafe { libc::getpid() };
    let cached = SELF_PIDFD.load(Ordering::Acquire);
    let pidfd = if cached != 0 && (cached >> 32) as i32 == pid {
        cached as u32 as i32
    } else {
        // A cached word of another pid comes from a fork that skipped the
        // atfork handlers (a raw `clone`): its descriptor is left alone,
        // since its number may now name a file of this process.
        // SAFETY: pidfd_open takes a pid and flags; the result is a new
        // descriptor (always close-on-exec) or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        let word = ((pid as u32 as u64) << 32) | fd as u32 as u64;
        if SELF_PIDFD.compare_exchange(cached, word, Ordering::AcqRel, Ordering::Acquire).is_err() {
            if fd >= 0 {
                // Another thread installed one first; ours is not needed.
                // SAFETY: the descriptor we just opened, used by nobody.
                unsafe { libc::close(fd) };
            }
            return 0;
        }
        fd
    };
    if pidfd < 0 {
        VECTORED_RELEASE_BROKEN.store(1, Ordering::Relaxed);
        return 0;
    }
    check_no_lock_held("process_madvise");
    let mut iov = [libc::iovec { iov_base: core::ptr::null_mut(), iov_len: 0 }; MAX_RELEASE_RANGES];
    for (v, &(addr, len)) in iov.iter_mut().zip(ranges) {
        check_aligned(addr, len, "process_madvise");
        *v = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len };
    }
    let advice = release_advice();
    // SAFETY: `iov` holds `ranges.len()` valid entries; the caller owns
    // every range and holds nothing in it; `pidfd` refers to this process.
    let r = unsafe { libc::syscall(libc::SYS_process_madvise, pidfd, iov.as_ptr(), ranges.len(), advice, 0) };
    if r < 0 {
        let e = OsError::last().errno;
        if matches!(e, libc::EINVAL | libc::ENOSYS | libc::EPERM | libc::EBADF) {
            VECTORED_RELEASE_BROKEN.store(1, Ordering::Relaxed);
        }
        return 0;
    }
    // The kernel advises the ranges in order; count the whole ones done.
    let mut left = r as usize;
    let mut n = 0;
    for &(_addr, len) in ranges {
        if left < len {
            break;
        }
        left -= len;
        n += 1;
        #[cfg(feature = "testing")]
        release_log::note(_addr, len);
    }
    n
}

/// Drops the physical pages of a range and makes it inaccessible, so that
/// any later touch gets `SIGSEGV`. The address space stays reserved.
///
/// # Safety
///
/// The caller owns the range and nothing may legitimately touch it again
/// until it is made ready anew.
pub unsafe fn fault(addr: usize, size: usize) -> Result<(), OsError> {
    check_aligned(addr, size, "mmap(MAP_FIXED)");
    // Mapping a fresh PROT_NONE anonymous region over the range discards the
    // old pages and the access rights in one call.
    // SAFETY: MAP_FIXED replaces only the caller's own range.
    let p =
        unsafe { libc::mmap(addr as *mut libc::c_void, size, libc::PROT_NONE, RESERVE_FLAGS | libc::MAP_FIXED, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(OsError::last());
    }
    // A new mapping: marked like the one it replaced, so that the two
    // stay one VMA once it is made ready again.
    keep_huge_pages_out(addr, size);
    Ok(())
}

/// Gives address space back to the kernel altogether.
///
/// # Safety
///
/// The caller owns `[addr, addr + size)` and nothing refers into it.
pub unsafe fn unmap(addr: usize, size: usize) {
    check_aligned(addr, size, "munmap");
    // SAFETY: forwarded from the caller. munmap of an owned range can fail
    // only by splitting a mapping past the VMA limit; the range then stays
    // mapped, which leaks address space but is memory-safe.
    unsafe { libc::munmap(addr as *mut libc::c_void, size) };
}

/// Maps fresh zeroed, readable and writable memory, for the allocator's own
/// metadata. Pages cost physical memory only once touched, so sparse tables
/// may be mapped whole (no commit charge is taken for them either).
pub fn alloc_ready(size: usize) -> Result<NonNull<u8>, OsError> {
    mmap(0, size, libc::PROT_READ | libc::PROT_WRITE, SPARSE_FLAGS)
}

/// Sleeps while `word` holds `expected` (or until a spurious wake-up).
pub fn futex_wait(word: &AtomicU32, expected: u32) {
    futex_wait_until(word, expected, None);
}

/// Sleeps while `word` holds `expected`, for at most `timeout_ns`
/// nanoseconds (or until a wake-up, possibly spurious).
pub fn futex_wait_timeout(word: &AtomicU32, expected: u32, timeout_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    futex_wait_until(word, expected, Some(&ts));
}

fn futex_wait_until(word: &AtomicU32, expected: u32, timeout: Option<&libc::timespec>) {
    let ts = timeout.map_or(core::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 32-bit atomic and `ts` null (no
    // deadline) or a valid relative timeout for the whole call. EINTR,
    // EAGAIN and ETIMEDOUT are ordinary outcomes that callers re-check.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, expected, ts);
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; the clocks used here always
    // exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds of the monotonic clock.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Milliseconds of the coarse monotonic clock (a few milliseconds of
/// resolution, and cheaper to read than [`monotonic_ns`]): for stamps that
/// only need to tell seconds apart.
pub fn coarse_ms() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE) / 1_000_000
}

/// CPU time the calling thread has used, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The number of CPUs this process may run on (at least 1), found without
/// allocating.
pub fn cpu_count() -> usize {
    // SAFETY: a zeroed cpu_set_t is valid; the call fills it in.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is a valid buffer of the size we pass; pid 0 is us.
    let r = unsafe { libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r == 0 {
        // SAFETY: `set` was filled in by the kernel.
        let n = unsafe { libc::CPU_COUNT(&set) };
        if n > 0 {
            return n as usize;
        }
    }
    // SAFETY: `sysconf` has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        1
    }
}

/// Starts a detached thread running `entry(arg)` with a small stack,
/// without any Rust allocation (no `std::thread`).
pub fn spawn_thread(entry: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void) -> Result<(), OsError> {
    // SAFETY: every pthread call gets valid pointers to locals; the
    // attribute object is initialised before use and destroyed after.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_attr_init(&mut attr) != 0 {
            return Err(OsError { errno: libc::EAGAIN });
        }
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, 256 << 10);
        // Zeroed rather than 0: `pthread_t` is an integer in glibc and a
        // pointer in musl.
        let mut thread: libc::pthread_t = core::mem::zeroed();
        let r = libc::pthread_create(&mut thread, &attr, entry, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        if r != 0 {
            return Err(OsError { errno: r });
        }
    }
    Ok(())
}

/// Wakes up to `count` threads sleeping in [`futex_wait`] on `word`.
pub fn futex_wake(word: &AtomicU32, count: u32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic; waking has no other
    // effect on memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, count);
    }
}

/// Writes all of `bytes` to standard error, retrying short writes; errors
/// are ignored (there is nowhere left to report them).
pub fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid readable buffer of the given length.
        let n = unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n < 0 && OsError::last().errno == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

/// Ends the process at once with `SIGABRT`, running no destructors and no
/// unwinding (both could re-enter a corrupted allocator).
pub fn abort() -> ! {
    // SAFETY: `abort` has no preconditions and does not return.
    unsafe { libc::abort() }
}

/// Reads the value of environment variable `name` without allocating.
///
/// The bytes are borrowed from the process environment, which scavalloc
/// reads once at start-up before it could be modified by the program.
pub fn getenv(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated. The returned pointer, if any, points
    // to a NUL-terminated string in the environment block.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` is a valid C string (see above); the environment block
    // lives as long as the process unless `setenv` replaces this entry,
    // which the caller's contract (read once at start-up) rules out.
    Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes())
}

/// `membarrier(2)` commands (`linux/membarrier.h`; not all are in `libc`).
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: `membarrier` takes two integers and touches no user memory;
    // an unknown command fails with EINVAL.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_uint) }
}

/// Registers this process for [`process_memory_barrier`]: true if the
/// kernel offers it (Linux 4.14 and later, unless a seccomp filter refuses
/// it). Registration belongs to the address space, so a child after
/// `fork()` registers again (registering twice is harmless).
pub fn register_process_memory_barrier() -> bool {
    let supported = membarrier(MEMBARRIER_CMD_QUERY);
    if supported < 0 || supported & libc::c_long::from(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0 {
        return false;
    }
    membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
}

/// Makes every thread of this process that is running now execute a full
/// memory barrier before this returns (threads not running pass one when
/// they are next scheduled): the heavy side of an asymmetric fence, whose
/// light side is only a compiler fence. False if it failed (the caller
/// must then assume no barrier happened).
pub fn process_memory_barrier() -> bool {
    membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0
}

/// Closes a descriptor this process holds (errors ignored: there is
/// nothing to do about them).
pub fn close_fd(fd: i32) {
    // SAFETY: closing a descriptor touches no memory; the caller owns it.
    unsafe { libc::close(fd) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_sane() {
        let p = page_size();
        assert!(p.is_power_of_two() && p >= 4096, "{p}");
        let h = huge_page_size();
        assert!(h.is_power_of_two() && h >= p, "{h}");
    }

    #[test]
    fn parse_decimal_cases() {
        assert_eq!(parse_decimal(b"2097152\n"), Some(2097152));
        assert_eq!(parse_decimal(b"  42 "), Some(42));
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"12a"), None);
        assert_eq!(parse_decimal(b"99999999999999999999999"), None);
    }

    #[test]
    fn reserve_ready_release_fault_cycle() {
        let size = 4 << 20;
        let base = reserve(size, 4 << 20).unwrap().as_ptr() as usize;
        assert_eq!(base % (4 << 20), 0);
        // SAFETY: the range was reserved above and is owned by this test.
        unsafe {
            map_ready(base, size).unwrap();
            let p = base as *mut u8;
            p.write(7);
            p.add(size - 1).write(9);
            assert_eq!(p.read(), 7);
            release(base, size).unwrap();
            // MADV_DONTNEED gives zero pages back.
            assert_eq!(p.read(), 0);
            assert_eq!(p.add(size - 1).read(), 0);
            fault(base, size).unwrap();
            map_ready(base, size).unwrap();
            assert_eq!(p.read(), 0);
            unmap(base, size);
        }
    }

    /// Ranges that touch, given out of order, are released as one range
    /// each run; ranges apart stay apart; every range is reported.
    #[test]
    fn release_many_coalesces_touching_ranges() {
        let page = page_size();
        let pages = 24;
        let base = reserve(pages * page, page).unwrap().as_ptr() as usize;
        // Pages 2..5 in three pieces (out of order), 7 alone, 10..16 in
        // two pieces and 20..24 in four, shuffled.
        let pieces = [(3, 1), (20, 1), (10, 4), (2, 1), (23, 1), (7, 1), (4, 1), (14, 2), (22, 1), (21, 1)];
        let ranges: Vec<(usize, usize)> = pieces.iter().map(|&(p, n)| (base + p * page, n * page)).collect();
        let released_pages = |p: usize| pieces.iter().any(|&(first, n)| p >= first && p < first + n);
        #[cfg(feature = "testing")]
        release_log::start(4096).unwrap();
        // SAFETY: the range was reserved above and is owned by this test.
        unsafe {
            map_ready(base, pages * page).unwrap();
            core::ptr::write_bytes(base as *mut u8, 0xCD, pages * page);
            let mut ok = vec![false; ranges.len()];
            release_many(&ranges, &mut ok);
            assert!(ok.iter().all(|&b| b), "{ok:?}");
            for p in 0..pages {
                let v = ((base + p * page) as *const u8).read();
                assert_eq!(v, if released_pages(p) { 0 } else { 0xCD }, "page {p}");
            }
        }
        #[cfg(feature = "testing")]
        release_log::stop(|log, _| {
            let mut ours: Vec<(usize, usize)> = log
                .iter()
                .filter(|&&(a, _)| a >= base && a < base + pages * page)
                .map(|&(a, l)| ((a - base) / page, l / page))
                .collect();
            ours.sort_unstable();
            assert_eq!(ours, [(2, 3), (7, 1), (10, 6), (20, 4)]);
        });
        // SAFETY: as above.
        unsafe { unmap(base, pages * page) };
    }

    #[test]
    fn release_many_zeroes_every_range() {
        let page = page_size();
        let n = 16;
        let base = reserve(2 * n * page, page).unwrap().as_ptr() as usize;
        // SAFETY: the range was reserved above and is owned by this test.
        unsafe {
            map_ready(base, 2 * n * page).unwrap();
            core::ptr::write_bytes(base as *mut u8, 0xAB, 2 * n * page);
            let mut ranges = [(0, 0); 16];
            for (i, r) in ranges.iter_mut().enumerate() {
                *r = (base + 2 * i * page, page);
            }
            let mut ok = [false; 16];
            release_many(&ranges, &mut ok);
            assert!(ok.iter().all(|&b| b));
            for i in 0..2 * n {
                let v = ((base + i * page) as *const u8).read();
                assert_eq!(v, if i % 2 == 0 { 0 } else { 0xAB }, "page {i}");
            }
            unmap(base, 2 * n * page);
        }
    }

    #[test]
    fn reserve_at_refuses_taken_space() {
        let size = 1 << 20;
        let base = reserve(size, page_size()).unwrap().as_ptr() as usize;
        assert!(reserve_at(base, size).is_err());
        // Just past our reservation is usually free; when it is, reserve_at
        // must return exactly that address.
        if let Ok(next) = reserve_at(base + size, size) {
            assert_eq!(next.as_ptr() as usize, base + size);
            // SAFETY: reserved just above and owned by this test.
            unsafe { unmap(base + size, size) };
        }
        // SAFETY: the range was reserved above and is owned by this test.
        unsafe { unmap(base, size) };
    }
}
