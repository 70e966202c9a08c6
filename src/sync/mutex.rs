//! The allocator's lock: a futex-based mutex.
//!
//! Why not `spin::Mutex`: the heap lock is held across multi-chunk page-heap
//! operations and heap growth, and scavalloc targets small machines (two
//! cores). A spinning waiter whose lock holder has been preempted burns its
//! whole time slice for nothing; a futex waiter sleeps and is woken the moment
//! the lock is free. We spin briefly first, because most critical sections
//! are a few hundred nanoseconds and a short spin avoids two syscalls.
//!
//! The state machine is the classic three-state futex lock: 0 unlocked,
//! 1 locked with no waiter, 2 locked and maybe contended. An unlock that sees
//! 2 wakes one waiter. A woken waiter re-locks with state 2, because it cannot
//! know whether others still sleep; the cost of that pessimism is at most one
//! needless wake-up.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

use super::atomic::{AtomicU32, Ordering};
use super::{park, spin_hint};

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

/// How many times a waiter polls the lock before it sleeps on the futex.
/// Under loom every poll is a scheduling point, so the model spins once.
#[cfg(not(loom))]
const SPIN_LIMIT: u32 = 100;
#[cfg(loom)]
const SPIN_LIMIT: u32 = 1;

/// A mutual-exclusion lock that never allocates and can live in a `static`.
pub struct Mutex<T> {
    state: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `data` to one thread at a time, so
// sharing a `Mutex<T>` between threads is sound whenever `T` may be sent to
// another thread, exactly as for `std::sync::Mutex`.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: moving the lock moves the `T` inside it; nothing else is tied to
// the creating thread.
unsafe impl<T: Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    /// Creates an unlocked mutex.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Mutex { state: AtomicU32::new(UNLOCKED), data: UnsafeCell::new(value) }
    }

    /// Creates an unlocked mutex (loom's atomics cannot be built in a
    /// `const fn`).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Mutex { state: AtomicU32::new(UNLOCKED), data: UnsafeCell::new(value) }
    }

    /// Acquires the lock, blocking the thread until it is free.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        if self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.lock_contended();
        }
        held::taken();
        MutexGuard { mutex: self }
    }

    /// Acquires the lock if it is free right now.
    #[cfg(loom)]
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| {
                held::taken();
                MutexGuard { mutex: self }
            })
    }

    #[cold]
    fn lock_contended(&self) {
        // Spin while the holder is likely to release soon, without writing
        // to the line (a read-only spin keeps it shared between cores).
        let mut spins = 0;
        while spins < SPIN_LIMIT {
            let s = self.state.load(Ordering::Relaxed);
            if s == UNLOCKED
                && self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                return;
            }
            if s == CONTENDED {
                // Someone already sleeps; spinning longer cannot help.
                break;
            }
            spin_hint();
            spins += 1;
        }
        // Announce that we are about to sleep. Whoever holds the lock will
        // see CONTENDED when it unlocks and wake one sleeper.
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            park::wait(&self.state, CONTENDED);
        }
    }

    #[inline]
    fn unlock(&self) {
        held::released();
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            park::wake_one(&self.state);
        }
    }

    /// Takes the lock and keeps it held with no guard: before `fork()`, so
    /// that the child starts with consistent data. Undo with
    /// [`release_after_fork`](Self::release_after_fork).
    pub fn hold_for_fork(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken by [`hold_for_fork`](Self::hold_for_fork), in
    /// the parent or the child.
    ///
    /// # Safety
    ///
    /// This thread called `hold_for_fork` on this lock and has not released
    /// it since.
    pub unsafe fn release_after_fork(&self) {
        // SAFETY: per the contract, this thread holds the lock with its
        // guard forgotten.
        unsafe { self.force_unlock() };
    }

    /// Unlocks a lock whose guard was forgotten with `mem::forget`, waking
    /// a waiter if there is one.
    ///
    /// # Safety
    ///
    /// The calling thread took this lock and forgot its guard (as the
    /// `fork()` handlers do, to hold every allocator lock across the fork),
    /// and nothing else will unlock it. In a forked child the caller is the
    /// only thread, and the lock is its own.
    pub unsafe fn force_unlock(&self) {
        self.unlock();
    }
}

/// Proof that the lock is held; unlocks when dropped.
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: a guard exists only while its thread holds the lock, so no
        // other reference to the data can be live.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` makes this the only access
        // through this guard.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

/// How many allocator locks the calling thread holds, counted in the
/// crate's test builds (the `testing` feature) so that the rule "no system
/// call and no thread start while an allocator lock is held" can be
/// asserted where it matters ([`held::count`]); nothing in other builds.
pub(crate) mod held {
    #[cfg(all(feature = "testing", not(loom)))]
    thread_local! {
        // `const`: a plain TLS slot, readable without allocating.
        static HELD: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
    }

    /// A lock was taken.
    #[inline(always)]
    pub(crate) fn taken() {
        #[cfg(all(feature = "testing", not(loom)))]
        HELD.with(|h| h.set(h.get() + 1));
    }

    /// A lock was released (by its guard, or after a fork).
    #[inline(always)]
    pub(crate) fn released() {
        #[cfg(all(feature = "testing", not(loom)))]
        HELD.with(|h| h.set(h.get().saturating_sub(1)));
    }

    /// Locks the calling thread holds; `None` where they are not counted.
    #[allow(dead_code)]
    pub(crate) fn count() -> Option<u32> {
        #[cfg(all(feature = "testing", not(loom)))]
        return Some(HELD.with(|h| h.get()));
        #[cfg(not(all(feature = "testing", not(loom))))]
        None
    }
}
