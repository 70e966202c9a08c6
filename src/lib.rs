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
//! | api | [`Scavalloc`], [`stats()`], [`Arena`] | the `GlobalAlloc`, configuration ([`config`]), statistics ([`mod@stats`]), user arenas ([`arena`]) |
//! | spans | [`spans`] | size classes, spans, the page map, central lists, thread caches, large objects |
//! | scavenge | [`scavenge`] | the scavenge index, releasing free runs, goals (retained, memory limit), the background thread and its PI controller |
//! | pages | [`pages`] | the page heap: 8 KiB pages in 4 MiB chunks, bitmaps, the summary radix tree, address ranges, heap growth |
//! | os | [`os`] | system calls: address-space states, page sizes, futexes, stderr |
//!
//! Beside them, used by every layer: [`sync`] (the atomics shim and the
//! heap lock), [`persistent`] (never-freed metadata memory) and [`report`]
//! (one-line messages without allocating).
//!
//! The allocator never allocates through the global allocator: its metadata
//! comes from the `os` layer, and nothing in it panics on a path a user's
//! allocation can reach.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

// The OS layer speaks Linux (madvise advice, pidfds, futexes) and the page
// heap's radix tree covers a 48-bit address space.
#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
compile_error!("scavalloc supports 64-bit Linux only: x86_64 and aarch64 (4, 16 or 64 KiB pages), with glibc or musl");

pub mod scavenge;
pub mod sync;
#[cfg(all(test, not(loom)))]
mod testutil;

#[cfg(not(loom))]
mod api;
#[cfg(not(loom))]
pub mod arena;
#[cfg(not(loom))]
pub mod config;
#[cfg(not(loom))]
pub mod os;
#[cfg(not(loom))]
pub mod pages;
#[cfg(not(loom))]
pub mod persistent;
#[cfg(not(loom))]
pub mod raw;
#[cfg(not(loom))]
pub mod report;
#[cfg(not(loom))]
pub mod spans;
#[cfg(not(loom))]
pub mod stats;

#[cfg(not(loom))]
pub use api::{release_all, Scavalloc};
#[cfg(not(loom))]
pub use arena::Arena;
#[cfg(not(loom))]
pub use stats::{stats, ClassStats, Stats};

/// Gives every object cached by the calling thread back to the central
/// lists, so that its spans can go back to the page heap.
#[cfg(not(loom))]
pub fn flush_thread_cache() {
    spans::cache::flush_current();
}
