//! A global allocator for the examples that forwards every call to the
//! system allocator or to scavalloc, chosen once, before the first
//! allocation, from the program's first argument (`scavalloc` picks
//! scavalloc; anything else the system allocator), read from
//! `/proc/self/cmdline` without allocating. See `larson_rss.rs` for why.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use scavalloc::Scavalloc;

const UNDECIDED: u8 = 0;
pub const SYSTEM: u8 = 1;
pub const SCAVALLOC: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// Which allocator the first argument names: scavalloc for `scavalloc`,
/// the system allocator for anything else (including no argument, or no
/// `/proc`). Allocates nothing.
fn read_choice() -> u8 {
    let mut buf = [0u8; 4096];
    let mut len = 0;
    // SAFETY: a NUL-terminated path; `read` writes only within `buf`.
    unsafe {
        let fd = libc::open(c"/proc/self/cmdline".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return SYSTEM;
        }
        while len < buf.len() {
            let n = libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len);
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        libc::close(fd);
    }
    if first_arg(&buf[..len]) == Some(b"scavalloc") {
        SCAVALLOC
    } else {
        SYSTEM
    }
}

/// The first argument after the program name in NUL-separated `cmdline`.
fn first_arg(cmdline: &[u8]) -> Option<&[u8]> {
    cmdline.split(|&b| b == 0).nth(1)
}

#[inline]
pub fn choice() -> u8 {
    let c = CHOICE.load(Ordering::Relaxed);
    if c != UNDECIDED {
        return c;
    }
    let c = read_choice();
    CHOICE.store(c, Ordering::Relaxed);
    c
}

/// Forwards to the allocator chosen on the first call.
pub struct Dispatch;

// SAFETY: every call forwards to one of two sound allocators, always the
// same one (the choice never changes once made), so each pointer goes back
// to the allocator that made it.
unsafe impl GlobalAlloc for Dispatch {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe {
            if choice() == SCAVALLOC {
                Scavalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller; `ptr` came from the same
        // allocator.
        unsafe {
            if choice() == SCAVALLOC {
                Scavalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe {
            if choice() == SCAVALLOC {
                Scavalloc.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller; `ptr` came from the same
        // allocator.
        unsafe {
            if choice() == SCAVALLOC {
                Scavalloc.realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}
