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
//!
//! Every lock also counts its acquisitions, the contended ones among them
//! (the first compare-and-swap failed) and the time those waited, so that
//! the statistics show how often the allocator's locks are taken and fought
//! over: on a machine of two cores, that is how one sees what many cores
//! would do. The counters are written only by the thread that holds the
//! lock, so a plain load and store updates them (the lock orders the
//! writers); the uncontended path adds no atomic read-modify-write, and the
//! clock is read only on the contended path. Readers on other threads load
//! them without the lock and may see a figure one acquisition old.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

use super::atomic::{AtomicU32, AtomicU64, Ordering};
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
    counters: Counters,
    data: UnsafeCell<T>,
}

/// How often a lock was taken and waited for: a snapshot of one lock's
/// counters, or of a group of locks summed (see `Stats::heap_lock` and
/// `Stats::class_locks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockStats {
    /// Times the lock was taken (by `lock`, and to hold it across `fork`),
    /// contended or not.
    pub acquisitions: u64,
    /// Acquisitions that found the lock held and had to spin or sleep.
    pub contended: u64,
    /// Nanoseconds the contended acquisitions waited, in all (monotonic
    /// clock, from the failed first attempt to holding the lock).
    pub wait_ns: u64,
}

impl LockStats {
    /// The figures of two locks (or groups) together.
    pub fn plus(self, other: LockStats) -> LockStats {
        LockStats {
            acquisitions: self.acquisitions.wrapping_add(other.acquisitions),
            contended: self.contended.wrapping_add(other.contended),
            wait_ns: self.wait_ns.wrapping_add(other.wait_ns),
        }
    }

    /// Contended acquisitions as a percentage of all (0 if none).
    pub fn contended_percent(&self) -> f64 {
        if self.acquisitions == 0 {
            0.0
        } else {
            self.contended as f64 * 100.0 / self.acquisitions as f64
        }
    }

    /// Mean wait of a contended acquisition in nanoseconds (0 if none).
    pub fn mean_wait_ns(&self) -> u64 {
        self.wait_ns.checked_div(self.contended).unwrap_or(0)
    }
}

/// A lock's counters (see the module documentation for why plain loads and
/// stores suffice).
struct Counters {
    acquisitions: AtomicU64,
    contended: AtomicU64,
    wait_ns: AtomicU64,
}

impl Counters {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Counters { acquisitions: AtomicU64::new(0), contended: AtomicU64::new(0), wait_ns: AtomicU64::new(0) }
    }

    #[cfg(loom)]
    fn new() -> Self {
        Counters { acquisitions: AtomicU64::new(0), contended: AtomicU64::new(0), wait_ns: AtomicU64::new(0) }
    }

    /// Adds `n` to `counter`. Only the lock's holder calls this, so no other
    /// thread writes the counter between the load and the store.
    #[inline(always)]
    fn bump(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    fn snapshot(&self) -> LockStats {
        LockStats {
            acquisitions: self.acquisitions.load(Ordering::Relaxed),
            contended: self.contended.load(Ordering::Relaxed),
            wait_ns: self.wait_ns.load(Ordering::Relaxed),
        }
    }
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
        Mutex { state: AtomicU32::new(UNLOCKED), counters: Counters::new(), data: UnsafeCell::new(value) }
    }

    /// Creates an unlocked mutex (loom's atomics cannot be built in a
    /// `const fn`).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Mutex { state: AtomicU32::new(UNLOCKED), counters: Counters::new(), data: UnsafeCell::new(value) }
    }

    /// Acquires the lock, blocking the thread until it is free.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        if self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.lock_contended();
        }
        self.acquired();
        MutexGuard { mutex: self }
    }

    /// Bookkeeping of every acquisition, with the lock now held.
    #[inline(always)]
    fn acquired(&self) {
        Counters::bump(&self.counters.acquisitions, 1);
        held::taken();
    }

    /// This lock's counters as of now, read without taking it.
    pub fn lock_stats(&self) -> LockStats {
        self.counters.snapshot()
    }

    /// Acquires the lock if it is free right now.
    #[cfg(loom)]
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| {
                self.acquired();
                MutexGuard { mutex: self }
            })
    }

    /// Waits for the lock and takes it, then counts the wait (the caller
    /// counts the acquisition itself).
    #[cold]
    fn lock_contended(&self) {
        let start = clock_ns();
        self.wait_and_take();
        // The clock is read once more with the lock held: a vDSO call, not a
        // system call, so the rule against system calls under a lock holds.
        let waited = clock_ns().saturating_sub(start);
        Counters::bump(&self.counters.contended, 1);
        Counters::bump(&self.counters.wait_ns, waited);
    }

    #[inline(always)]
    fn wait_and_take(&self) {
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

/// Nanoseconds of the monotonic clock, for the wait of a contended
/// acquisition. Loom has no clock: there every wait is 0 ns.
#[inline]
fn clock_ns() -> u64 {
    #[cfg(not(loom))]
    return crate::os::monotonic_ns();
    #[cfg(loom)]
    0
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Polls `cond` until it holds, for at most ten seconds.
    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn uncontended_acquisitions_are_counted_exactly() {
        let m = Mutex::new(0u32);
        assert_eq!(m.lock_stats(), LockStats::default());
        for _ in 0..1000 {
            *m.lock() += 1;
        }
        assert_eq!(*m.lock(), 1000);
        assert_eq!(m.lock_stats(), LockStats { acquisitions: 1001, contended: 0, wait_ns: 0 });
    }

    /// Holding a lock across `fork` is an acquisition like any other, and
    /// releasing it afterwards does not count again.
    #[test]
    fn holding_for_fork_counts_one_acquisition() {
        let m = Mutex::new(());
        m.hold_for_fork();
        assert_eq!(m.lock_stats().acquisitions, 1);
        // SAFETY: this thread took the lock with `hold_for_fork` just above.
        unsafe { m.release_after_fork() };
        drop(m.lock());
        assert_eq!(m.lock_stats(), LockStats { acquisitions: 2, contended: 0, wait_ns: 0 });
    }

    /// One thread holds the lock until another has given up spinning and
    /// announced that it sleeps (the state says CONTENDED); that waiter's
    /// acquisition is counted as contended, with the time it waited.
    #[test]
    fn a_waiter_is_counted_as_contended_with_its_wait() {
        let m = Arc::new(Mutex::new(0u64));
        let guard = m.lock();
        let waiter = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                *m.lock() += 1;
            })
        };
        wait_until("the waiter sleeps on the lock", || m.state.load(Ordering::Relaxed) == CONTENDED);
        // The waiter has been waiting at least this long when it gets the
        // lock, so its wait cannot be counted as nothing.
        let held_since = Instant::now();
        wait_until("a millisecond has passed", || held_since.elapsed() >= Duration::from_millis(1));
        drop(guard);
        waiter.join().unwrap();
        let s = m.lock_stats();
        assert_eq!(s.acquisitions, 2);
        assert_eq!(s.contended, 1);
        assert!(s.wait_ns >= 1_000_000, "a wait of over 1 ms counted as {} ns", s.wait_ns);
        assert_eq!(s.mean_wait_ns(), s.wait_ns);
        assert_eq!(s.contended_percent(), 50.0);
    }

    #[test]
    fn figures_of_a_group_add_up() {
        let a = LockStats { acquisitions: 10, contended: 2, wait_ns: 300 };
        let b = LockStats { acquisitions: 30, contended: 0, wait_ns: 0 };
        let sum = a.plus(b);
        assert_eq!(sum, LockStats { acquisitions: 40, contended: 2, wait_ns: 300 });
        assert_eq!(sum.contended_percent(), 5.0);
        assert_eq!(sum.mean_wait_ns(), 150);
        assert_eq!(LockStats::default().mean_wait_ns(), 0);
        assert_eq!(LockStats::default().contended_percent(), 0.0);
    }
}
