//! scavalloc: a drop-in global allocator built on the Go runtime's design,
//! that gives free memory back to the operating system at a CPU cost you
//! choose.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;
//! ```
//!
//! # Layers
//!
//! Calls run one way, top to bottom; a lower layer never calls up.
//!
//! | layer | module | owns |
//! | --- | --- | --- |
//! | api | `api`, `config`, `stats`, `arena` | the `GlobalAlloc`, configuration, statistics, user arenas |
//! | spans | `spans` | size classes, spans, the page map, central lists, thread caches, large objects |
//! | scavenge | `scavenge` | the scavenge index, releasing free runs, goals (retained, memory limit), the background thread and its PI controller |
//! | pages | `pages` | the page heap: 8 KiB pages in 4 MiB chunks, bitmaps, the summary radix tree, address ranges, heap growth |
//! | os | `os` | system calls: address-space states, page sizes, futexes, stderr |
//!
//! Beside them, used by every layer: `sync` (the atomics shim and the
//! heap lock), `persistent` (never-freed metadata memory) and `report`
//! (one-line messages without allocating).
//!
//! # What is public
//!
//! Only what a program needs: [`Scavalloc`], [`Arena`], [`stats()`] with
//! [`Stats`] and [`ClassStats`], [`release_all`],
//! [`flush_thread_cache`] and the heap profile ([`profile::write_pprof`]). The layers are private to the crate, so safe
//! code cannot reach a thread cache, the page heap or the environment
//! block and break the allocator's invariants:
//!
//! ```compile_fail,E0603
//! // The thread caches are not reachable from outside the crate.
//! let _pushed: bool = scavalloc::spans::cache::push(0, 0x1000 as *mut u8);
//! ```
//!
//! ```compile_fail,E0603
//! // Nor is the page heap.
//! let _ = scavalloc::pages::heap::HEAP.lock();
//! ```
//!
//! ```compile_fail,E0603
//! // Nor the raw environment lookup.
//! let _path: Option<&'static [u8]> = scavalloc::os::getenv(c"PATH");
//! ```
//!
//! The C library (`libscavalloc.so`, the `capi` crate) reaches the core
//! through [`raw`], whose every function is `unsafe`:
//!
//! ```compile_fail,E0133
//! // Freeing through the C surface needs `unsafe`: the pointer must be one
//! // that scavalloc handed out.
//! scavalloc::raw::free(core::ptr::null_mut());
//! ```
//!
//! The crate's own tests reach internals through a hidden module that
//! exists only with the `testing` feature, whose functions that can break
//! an invariant are `unsafe`, as the Go runtime's `export_test.go` does.
//!
//! The allocator never allocates through the global allocator: its metadata
//! comes from the `os` layer, and nothing in it panics on a path a user's
//! allocation can reach.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

// The OS layer speaks Linux (madvise advice, pidfds, futexes) and the page
// heap's radix tree covers a 48-bit address space. On any other target the
// crate is this one error and nothing else, rather than dozens of
// unresolved `libc` items.
#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
compile_error!("scavalloc supports 64-bit Linux only: x86_64 and aarch64 (4, 16 or 64 KiB pages), with glibc or musl");

/// Declares the crate's items on supported targets only (see the
/// `compile_error!` above).
macro_rules! on_supported_targets {
    ($($item:item)*) => {
        $(
            #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
            $item
        )*
    };
}

on_supported_targets! {
    pub(crate) mod scavenge;
    pub(crate) mod sync;
    #[cfg(all(test, not(loom)))]
    mod testutil;

    #[cfg(not(loom))]
    mod api;
    #[cfg(not(loom))]
    pub(crate) mod arena;
    #[cfg(not(loom))]
    pub(crate) mod config;
    #[cfg(not(loom))]
    pub(crate) mod os;
    #[cfg(not(loom))]
    pub(crate) mod pages;
    #[cfg(not(loom))]
    pub(crate) mod persistent;
    #[cfg(not(loom))]
    pub mod profile;
    #[cfg(not(loom))]
    pub mod raw;
    #[cfg(not(loom))]
    pub(crate) mod report;
    #[cfg(not(loom))]
    pub(crate) mod spans;
    #[cfg(not(loom))]
    pub(crate) mod stats;

    #[cfg(any(loom, feature = "testing"))]
    #[doc(hidden)]
    pub mod testing;

    #[cfg(not(loom))]
    pub use api::{release_all, Scavalloc};
    #[cfg(not(loom))]
    pub use arena::Arena;
    #[cfg(not(loom))]
    pub use stats::{
        stats, CacheTrimStats, CgroupLimitSource, ClassStats, ContainerStats, LimitSource, LockStats, PressureSource,
        Stats, WindowStats,
    };

    /// Gives every object cached by the calling thread back to the central
    /// lists, so that its spans can go back to the page heap.
    #[cfg(not(loom))]
    pub fn flush_thread_cache() {
        spans::cache::flush_current();
        scavenge::background::run_deferred();
    }
}

/// The `compile_fail` examples in the crate documentation must fail for
/// the reason they show (the item is private, or the call needs `unsafe`),
/// not for a typo: the same code compiles here, inside the crate, where
/// the items are visible.
#[cfg(all(test, not(loom)))]
#[allow(unreachable_code, clippy::diverging_sub_expression)]
fn _sealed_examples_compile_inside_the_crate() {
    if false {
        let _pushed: bool = crate::spans::cache::push(0, 0x1000 as *mut u8);
        let _ = crate::pages::heap::HEAP.lock();
        let _path: Option<&'static [u8]> = crate::os::getenv(c"PATH");
        // SAFETY: never runs (`if false`); a null pointer is a no-op anyway.
        unsafe { crate::raw::free(core::ptr::null_mut()) };
    }
}
