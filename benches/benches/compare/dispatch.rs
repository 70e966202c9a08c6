//! The comparison binary's global allocator: it forwards every call to one
//! of four allocators, chosen once, at the first allocation, from
//! `SCAVALLOC_BENCH_ALLOC` (`system`, `scavalloc`, `scavalloc-nodeep`,
//! `jemalloc`, `mimalloc`; unset means `system`, which is what the driver
//! process runs on). `scavalloc-nodeep` is scavalloc itself, run by the
//! driver with `SCAVALLOC_DEEP_RELEASE=0`, to show what deep release costs
//! and gives.
//!
//! A global allocator is fixed for the life of a process, and a pointer
//! must go back to the allocator that made it, so the choice is made before
//! anything is allocated and never changes; the driver runs one child
//! process per allocator. The variable is read with libc's `getenv`, which
//! does not allocate. The cost of the dispatch (a relaxed load and a
//! well-predicted branch per call) is the same for all four.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use mimalloc::MiMalloc;
use scavalloc::Scavalloc;
use tikv_jemallocator::Jemalloc;

/// The allocators compared, in the order the reports list them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    System = 1,
    Scavalloc = 2,
    Jemalloc = 3,
    Mimalloc = 4,
    ScavallocNoDeep = 5,
}

pub const ALL: [Backend; 5] =
    [Backend::System, Backend::Scavalloc, Backend::ScavallocNoDeep, Backend::Jemalloc, Backend::Mimalloc];

/// The environment variable that picks a child's allocator.
pub const VAR: &str = "SCAVALLOC_BENCH_ALLOC";

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::System => "system",
            Backend::Scavalloc => "scavalloc",
            Backend::Jemalloc => "jemalloc",
            Backend::Mimalloc => "mimalloc",
            Backend::ScavallocNoDeep => "scavalloc-nodeep",
        }
    }

    /// Environment the driver sets for this backend's children.
    pub fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Backend::ScavallocNoDeep => &[("SCAVALLOC_DEEP_RELEASE", "0")],
            _ => &[],
        }
    }

    /// Whether the allocator is scavalloc (with or without deep release).
    pub fn is_scavalloc(self) -> bool {
        matches!(self, Backend::Scavalloc | Backend::ScavallocNoDeep)
    }

    pub fn from_name(name: &[u8]) -> Option<Backend> {
        ALL.into_iter().find(|b| b.name().as_bytes() == name)
    }

    /// The allocator this process runs on.
    pub fn current() -> Backend {
        match chosen() {
            2 => Backend::Scavalloc,
            3 => Backend::Jemalloc,
            4 => Backend::Mimalloc,
            5 => Backend::ScavallocNoDeep,
            _ => Backend::System,
        }
    }
}

const UNDECIDED: u8 = 0;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// Reads the variable without allocating. An unknown name stops the
/// process: running a comparison on the wrong allocator would be worse.
fn read_choice() -> u8 {
    // SAFETY: a NUL-terminated name; `getenv` returns null or a
    // NUL-terminated string that stays valid while nobody sets the
    // environment (nobody does before the first allocation).
    let value = unsafe {
        let p = libc::getenv(c"SCAVALLOC_BENCH_ALLOC".as_ptr());
        if p.is_null() {
            return Backend::System as u8;
        }
        std::ffi::CStr::from_ptr(p).to_bytes()
    };
    match Backend::from_name(value) {
        Some(b) => b as u8,
        None => {
            let msg =
                b"compare: SCAVALLOC_BENCH_ALLOC must be system, scavalloc, scavalloc-nodeep, jemalloc or mimalloc\n";
            // SAFETY: writes `msg` to stderr, then ends the process.
            unsafe {
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(2)
            }
        }
    }
}

#[inline(always)]
fn chosen() -> u8 {
    let c = CHOICE.load(Ordering::Relaxed);
    if c != UNDECIDED {
        return c;
    }
    let c = read_choice();
    // Threads racing here all read the same variable and store the same
    // value.
    CHOICE.store(c, Ordering::Relaxed);
    c
}

/// Forwards to the allocator chosen at the first call.
pub struct Dispatch;

/// Calls `$method` on the chosen allocator.
macro_rules! forward {
    ($method:ident($($arg:expr),*)) => {
        match chosen() {
            2 | 5 => Scavalloc.$method($($arg),*),
            3 => Jemalloc.$method($($arg),*),
            4 => MiMalloc.$method($($arg),*),
            _ => System.$method($($arg),*),
        }
    };
}

// SAFETY: every call goes to one of four sound allocators, always the same
// one (the choice is made once and never changes), so every pointer is
// freed or resized by the allocator that made it.
unsafe impl GlobalAlloc for Dispatch {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded unchanged.
        unsafe { forward!(alloc(layout)) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract; `ptr` came from the same allocator.
        unsafe { forward!(dealloc(ptr, layout)) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded unchanged.
        unsafe { forward!(alloc_zeroed(layout)) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract; `ptr` came from the same allocator.
        unsafe { forward!(realloc(ptr, layout, new_size)) }
    }
}
