//! Synchronisation primitives, switched between `core` and `loom` in one
//! place.
//!
//! Every lock-free protocol in scavalloc (the heap lock's state machine, the
//! scavenger's parking, the scavenge index, and the handshake by which the
//! scavenger trims another thread's cache) is written against the
//! names exported here. A normal build maps them to `core::sync::atomic` and
//! the kernel's futex; a build with `--cfg loom` maps them to `loom`, so the
//! model checks in `loom-tests/` run the real code rather than a copy of it.
//!
//! This module owns no allocator state. It may call into [`crate::os`] for
//! the futex and the process-wide memory barrier, and nothing else.

mod handshake;
mod mutex;
mod parker;

pub use handshake::{heavy_fence, Handshake};

#[cfg(not(loom))]
pub use mutex::LockStats;
pub use mutex::Mutex;
#[cfg(not(loom))]
pub use mutex::MutexGuard;
pub use parker::Parker;
#[cfg(all(feature = "testing", not(loom)))]
pub(crate) use mutex::held::count as held_locks;

/// Atomic types and orderings: `core`'s in a normal build, `loom`'s under
/// `cfg(loom)`.
pub mod atomic {
    #[cfg(not(loom))]
    pub use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
    #[cfg(loom)]
    pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
}

/// Blocking on an atomic word: the kernel's futex in a normal build.
///
/// Under loom the futex is modelled by one condition variable: `wait`
/// checks the word and goes to sleep under the model's lock, and `wake_one`
/// notifies under the same lock, so the check-then-sleep is atomic with
/// respect to wake-ups exactly as the kernel makes it. A protocol that could
/// lose a wake-up therefore deadlocks in the model, and loom reports it.
pub(crate) mod park {
    use super::atomic::AtomicU32;

    #[cfg(loom)]
    loom::lazy_static! {
        static ref FUTEX: (loom::sync::Mutex<()>, loom::sync::Condvar) =
            (loom::sync::Mutex::new(()), loom::sync::Condvar::new());
    }

    /// Blocks while `word` holds `expected`. May return spuriously; callers
    /// re-check their condition in a loop.
    #[inline]
    pub(crate) fn wait(word: &AtomicU32, expected: u32) {
        #[cfg(not(loom))]
        crate::os::futex_wait(word, expected);
        #[cfg(loom)]
        {
            let guard = FUTEX.0.lock().unwrap();
            if word.load(super::atomic::Ordering::SeqCst) == expected {
                drop(FUTEX.1.wait(guard).unwrap());
            }
        }
    }

    /// [`wait`], for at most `timeout_ns` (under loom, which has no clock,
    /// a wait that a wake-up or a spurious return ends, as the caller must
    /// allow for anyway).
    #[inline]
    pub(crate) fn wait_within(word: &AtomicU32, expected: u32, timeout_ns: u64) {
        #[cfg(not(loom))]
        crate::os::futex_wait_timeout(word, expected, timeout_ns);
        #[cfg(loom)]
        {
            let _ = timeout_ns;
            wait(word, expected);
        }
    }

    /// Wakes at most one thread blocked in [`wait`] on `word` (under loom,
    /// every waiter: they re-check and sleep again, as after a spurious
    /// wake-up).
    #[inline]
    pub(crate) fn wake_one(word: &AtomicU32) {
        #[cfg(not(loom))]
        crate::os::futex_wake(word, 1);
        #[cfg(loom)]
        {
            let _ = word;
            let _guard = FUTEX.0.lock().unwrap();
            FUTEX.1.notify_all();
        }
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
