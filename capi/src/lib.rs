//! `libscavalloc.so`: scavalloc as the C allocator.
//!
//! ```text
//! cargo build --release -p scavalloc-capi
//! LD_PRELOAD=target/release/libscavalloc.so some-program
//! ```
//!
//! Exports `malloc`, `free`, `calloc`, `realloc`, `reallocarray`,
//! `posix_memalign`, `aligned_alloc`, `memalign`, `valloc`, `pvalloc`,
//! `malloc_usable_size`, `malloc_trim` and `mallinfo2`/`mallinfo`, and
//! `scavalloc_prof_dump` (the heap profile, written to a file), with
//! glibc's semantics: `free(NULL)` does nothing, `realloc(NULL, n)` is
//! `malloc(n)`, `realloc(p, 0)` frees `p` and returns null, `malloc(0)`
//! returns a unique pointer, overflowing sizes and out of memory return
//! null with `errno` set to `ENOMEM`, and `posix_memalign` returns `EINVAL`
//! for an alignment that is not a power of two multiple of
//! `sizeof(void *)`. Every block is aligned to 16 bytes (`max_align_t`).
//!
//! Start-up: nothing here runs before the first allocation, and the first
//! allocation needs nothing that allocates. The configuration is read with
//! `getenv`; thread caches are attached through a `const` thread-local
//! (in the static TLS block of a library loaded at start-up, so reading it
//! never calls `malloc`) and flushed by a pthread key; the `fork()` and
//! exit handlers are registered after the settings are in place, so a
//! `malloc` from inside `pthread_atfork` or `atexit` is served, not
//! deadlocked (see `ensure_init` in the core crate).

#![deny(unsafe_op_in_unsafe_fn)]

use core::ffi::{c_int, c_void};

use scavalloc_core::raw;

/// What `malloc` guarantees on x86-64 and AArch64 Linux: `alignof(max_align_t)`.
const MIN_ALIGN: usize = 16;

fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` returns the calling thread's `errno`.
    unsafe { *libc::__errno_location() = e };
}

/// `p`, or null with `errno = ENOMEM`.
fn or_enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// # Safety
///
/// The C `malloc` contract.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    or_enomem(raw::alloc(size, MIN_ALIGN))
}

/// # Safety
///
/// `ptr` is null or a live block from this allocator, not used again.
#[no_mangle]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    // SAFETY: the caller's promise.
    unsafe { raw::free(ptr.cast()) }
}

/// # Safety
///
/// The C `calloc` contract.
#[no_mangle]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        Some(bytes) => or_enomem(raw::alloc_zeroed(bytes, MIN_ALIGN)),
        None => or_enomem(core::ptr::null_mut()),
    }
}

/// # Safety
///
/// `ptr` is null or a live block from this allocator; on success only the
/// returned pointer is used from then on.
#[no_mangle]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if !ptr.is_null() && size == 0 {
        // glibc frees the block and returns null.
        // SAFETY: the caller's promise.
        unsafe { raw::free(ptr.cast()) };
        return core::ptr::null_mut();
    }
    // SAFETY: the caller's promise.
    or_enomem(unsafe { raw::realloc(ptr.cast(), size, MIN_ALIGN) })
}

/// # Safety
///
/// As for [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: forwarded.
        Some(bytes) => unsafe { realloc(ptr, bytes) },
        None => or_enomem(core::ptr::null_mut()),
    }
}

/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let p = raw::alloc(size, align.max(MIN_ALIGN));
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller's promise.
    unsafe { *out = p.cast() };
    0
}

/// # Safety
///
/// The C `aligned_alloc` contract.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    // glibc 2.38 and later: the alignment must be a power of two.
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    or_enomem(raw::alloc(size, align.max(MIN_ALIGN)))
}

/// # Safety
///
/// The C `memalign` contract.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    // As glibc: a non-power of two is rounded up; one past the largest
    // power of two is an error.
    match align.max(1).checked_next_power_of_two() {
        Some(a) => or_enomem(raw::alloc(size, a.max(MIN_ALIGN))),
        None => {
            set_errno(libc::EINVAL);
            core::ptr::null_mut()
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// # Safety
///
/// The C `valloc` contract.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    or_enomem(raw::alloc(size, page_size()))
}

/// # Safety
///
/// The C `pvalloc` contract.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.max(1).checked_next_multiple_of(page) {
        Some(bytes) => or_enomem(raw::alloc(bytes, page)),
        None => or_enomem(core::ptr::null_mut()),
    }
}

/// # Safety
///
/// `ptr` is null or a live block from this allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    raw::usable_size(ptr.cast())
}

/// Releases every free page now (`release_all`); returns 1 if memory was
/// released, as glibc does.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    c_int::from(scavalloc_core::release_all() > 0)
}

/// Writes the heap profile as of now to the file `path`: a gzip-compressed
/// pprof `profile.proto` (see the core crate's `profile::write_pprof`).
/// Returns 0, or -1 with `errno` set (`EINVAL` for a null path, else the
/// error of creating or writing the file).
///
/// # Safety
///
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn scavalloc_prof_dump(path: *const core::ffi::c_char) -> c_int {
    use std::os::unix::ffi::OsStrExt;
    if path.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: the caller's promise.
    let path = std::ffi::OsStr::from_bytes(unsafe { core::ffi::CStr::from_ptr(path) }.to_bytes());
    #[cfg(feature = "symbolize")]
    let write = scavalloc_core::profile::write_pprof_symbolized::<std::fs::File>;
    #[cfg(not(feature = "symbolize"))]
    let write = scavalloc_core::profile::write_pprof::<std::fs::File>;
    match std::fs::File::create(path).and_then(|mut f| write(&mut f)) {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e.raw_os_error().unwrap_or(libc::EIO));
            -1
        }
    }
}

/// glibc's `struct mallinfo2`.
#[repr(C)]
pub struct MallInfo2 {
    /// Bytes mapped by the heap.
    pub arena: usize,
    /// Free page runs (not counted: 0).
    pub ordblks: usize,
    /// Free fast-bin blocks (none: 0).
    pub smblks: usize,
    /// Large objects.
    pub hblks: usize,
    /// Bytes of large objects' pages.
    pub hblkhd: usize,
    /// Unused (0).
    pub usmblks: usize,
    /// Bytes cached in thread caches.
    pub fsmblks: usize,
    /// Bytes allocated.
    pub uordblks: usize,
    /// Bytes free but resident.
    pub fordblks: usize,
    /// Bytes that `malloc_trim` could release.
    pub keepcost: usize,
}

/// Figures in glibc's shape, from `scavalloc::stats()`.
#[no_mangle]
pub extern "C" fn mallinfo2() -> MallInfo2 {
    let s = scavalloc_core::stats();
    MallInfo2 {
        arena: s.mapped,
        ordblks: 0,
        smblks: 0,
        hblks: s.large_objects,
        hblkhd: s.large_pages,
        usmblks: 0,
        fsmblks: s.small_cached,
        uordblks: s.allocated(),
        fordblks: s.heap_free + s.small_free,
        keepcost: s.heap_free,
    }
}

/// glibc's older `struct mallinfo` (`int` fields, clamped).
#[repr(C)]
pub struct MallInfo {
    /// As in [`MallInfo2`], each clamped to `c_int`.
    pub fields: [c_int; 10],
}

/// [`mallinfo2`] with `int` fields, as the old interface has them.
#[no_mangle]
pub extern "C" fn mallinfo() -> MallInfo {
    let m = mallinfo2();
    let all =
        [m.arena, m.ordblks, m.smblks, m.hblks, m.hblkhd, m.usmblks, m.fsmblks, m.uordblks, m.fordblks, m.keepcost];
    MallInfo { fields: all.map(|v| c_int::try_from(v).unwrap_or(c_int::MAX)) }
}
