//! Parking one sleeper until someone leaves it work: the protocol between
//! the background scavenger (the sleeper) and the threads that free memory
//! (the wakers).
//!
//! The sleeper announces itself (`parked`), then looks for work once more,
//! then sleeps on a futex word; a waker publishes its work (relaxed
//! counters, as the page heap's are), then looks at `parked` and, if set,
//! wakes the word. Both sides put a sequentially consistent fence between
//! their store and their load (the store-buffering pattern): without them
//! the waker's load of `parked` may be ordered before its counters' stores
//! become visible, the sleeper's look for work may miss them, and both
//! miss each other, leaving the sleeper asleep with work to do.
//!
//! Written against the atomics shim, so that `loom-tests/` checks this very
//! code (a lost wake-up is a deadlock there).

use super::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use super::park;

/// A parking place for one sleeper.
pub struct Parker {
    /// The futex word: 0 while the sleeper may sleep, 1 once woken.
    word: AtomicU32,
    /// Whether the sleeper is parked, or about to be (announced).
    parked: AtomicBool,
}

impl Parker {
    /// A parker with nobody parked.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Parker { word: AtomicU32::new(0), parked: AtomicBool::new(false) }
    }

    /// A parker with nobody parked (loom's atomics cannot be built in a
    /// `const fn`).
    #[cfg(loom)]
    pub fn new() -> Self {
        Parker { word: AtomicU32::new(0), parked: AtomicBool::new(false) }
    }

    /// Sleeps until [`wake`](Self::wake)d, unless `has_work` (asked after
    /// the sleeper is announced) finds work. May return early (a spurious
    /// wake-up): the caller looks for work again in any case.
    #[cfg_attr(not(loom), allow(dead_code))]
    pub fn park_unless(&self, has_work: impl FnOnce() -> bool) {
        self.park_unless_within(None, has_work);
    }

    /// [`park_unless`](Self::park_unless), sleeping at most `timeout_ns`
    /// if given.
    pub fn park_unless_within(&self, timeout_ns: Option<u64>, has_work: impl FnOnce() -> bool) {
        self.word.store(0, Ordering::SeqCst);
        self.parked.store(true, Ordering::SeqCst);
        // Pairs with the fence in `is_parked`.
        fence(Ordering::SeqCst);
        if !has_work() {
            match timeout_ns {
                None => park::wait(&self.word, 0),
                Some(ns) => park::wait_within(&self.word, 0, ns),
            }
        }
        self.parked.store(false, Ordering::SeqCst);
    }

    /// Whether the sleeper is parked (or about to be), for a waker that has
    /// just published work: if this says no, the sleeper will see the work
    /// before it sleeps.
    pub fn is_parked(&self) -> bool {
        // Pairs with the fence in `park_unless`.
        fence(Ordering::SeqCst);
        self.parked.load(Ordering::SeqCst)
    }

    /// Wakes the sleeper (a futex system call: never under a lock).
    pub fn wake(&self) {
        self.word.store(1, Ordering::SeqCst);
        park::wake_one(&self.word);
    }

    /// Forgets a sleeper that no longer exists (in a child after `fork`).
    pub fn reset(&self) {
        self.parked.store(false, Ordering::Relaxed);
        self.word.store(0, Ordering::Relaxed);
    }
}

#[cfg(not(loom))]
impl Default for Parker {
    fn default() -> Self {
        Self::new()
    }
}
