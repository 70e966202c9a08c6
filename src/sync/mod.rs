//! Synchronisation primitives, switched between `core` and `loom` in one
//! place.
//!
//! Every lock-free protocol in scavalloc (the heap lock's state machine, and
//! later the scavenge index and cross-thread frees) is written against the
//! names exported here. A normal build maps them to `core::sync::atomic` and
//! the kernel's futex; a build with `--cfg loom` maps them to `loom`, so the
//! model checks in `loom-tests/` run the real code rather than a copy of it.
//!
//! This module owns no allocator state. It may call into [`crate::os`] for
//! the futex and nothing else.

mod mutex;

pub use mutex::{Mutex, MutexGuard};

/// Atomic types and orderings: `core`'s in a normal build, `loom`'s under
/// `cfg(loom)`.
pub mod atomic {
    #[cfg(not(loom))]
    pub use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
    #[cfg(loom)]
    pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
}

/// Blocking on an atomic word: the kernel's futex in a normal build, a
/// scheduler yield under loom (which has no futex, but explores every
/// interleaving a yield allows, and that is what a spurious futex wake-up is).
pub(crate) mod park {
    use super::atomic::AtomicU32;

    /// Blocks while `word` holds `expected`. May return spuriously; callers
    /// re-check their condition in a loop.
    #[inline]
    pub(crate) fn wait(word: &AtomicU32, expected: u32) {
        #[cfg(not(loom))]
        crate::os::futex_wait(word, expected);
        #[cfg(loom)]
        {
            let _ = (word, expected);
            loom::thread::yield_now();
        }
    }

    /// Wakes at most one thread blocked in [`wait`] on `word`.
    #[inline]
    pub(crate) fn wake_one(word: &AtomicU32) {
        #[cfg(not(loom))]
        crate::os::futex_wake(word, 1);
        #[cfg(loom)]
        let _ = word;
    }
}

/// A hint that the caller is spinning, for the few places that spin briefly
/// before blocking. Under loom a spin must yield, or the model never ends.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}
