//! Lock figures of a scavalloc child: how often the page heap's lock and
//! the size classes' central-list locks were taken, and how often a taker
//! found one held, per million allocation calls. On a 2-core machine the
//! times cannot show what many cores would do to a lock; how often it is
//! taken per allocation can.
//!
//! A `Tally` sums, over the calls of a workload's routine (for a throughput
//! workload each call criterion makes: warm-up and samples, each with the
//! routine's own set-up, but not criterion's analysis between them; for a
//! memory workload the one run), the difference of `scavalloc::stats()`'s
//! lock figures and of the allocation count (`dispatch::allocations`)
//! around the call.

use scavalloc::LockStats;

use crate::dispatch;
use crate::emit;

/// `a - b`, field by field (the counters only grow).
fn minus(a: LockStats, b: LockStats) -> LockStats {
    LockStats {
        acquisitions: a.acquisitions.wrapping_sub(b.acquisitions),
        contended: a.contended.wrapping_sub(b.contended),
        wait_ns: a.wait_ns.wrapping_sub(b.wait_ns),
    }
}

/// The lock figures now, and the allocation calls so far.
fn now() -> (LockStats, LockStats, u64) {
    let s = scavalloc::stats();
    (s.heap_lock, s.class_locks, dispatch::allocations())
}

pub struct Tally {
    heap: LockStats,
    class: LockStats,
    allocations: u64,
    /// Acquisitions a `stats()` snapshot makes itself (heap, classes). It
    /// reads the figures before it locks anything, so the snapshot that
    /// opens a window counts its own acquisitions in that window; they are
    /// taken off.
    own: (u64, u64),
}

impl Tally {
    /// An empty tally, with the snapshot's own acquisitions measured: the
    /// least of a few back-to-back pairs (the background scavenger may take
    /// the heap lock between two of them).
    pub fn new() -> Tally {
        let mut own = (u64::MAX, u64::MAX);
        for _ in 0..3 {
            let (h0, c0, _) = now();
            let (h1, c1, _) = now();
            own.0 = own.0.min(h1.acquisitions - h0.acquisitions);
            own.1 = own.1.min(c1.acquisitions - c0.acquisitions);
        }
        Tally { heap: LockStats::default(), class: LockStats::default(), allocations: 0, own }
    }

    /// Runs `f`, adding its lock figures and allocation calls to the tally.
    /// The threads `f` starts must have finished when it returns (every
    /// workload joins its threads), so their counts are all seen.
    pub fn measure<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let (h0, c0, a0) = now();
        let r = f();
        let (h1, c1, a1) = now();
        let mut heap = minus(h1, h0);
        let mut class = minus(c1, c0);
        heap.acquisitions = heap.acquisitions.saturating_sub(self.own.0);
        class.acquisitions = class.acquisitions.saturating_sub(self.own.1);
        self.heap = self.heap.plus(heap);
        self.class = self.class.plus(class);
        self.allocations += a1 - a0;
        r
    }

    /// The tally as `@@` lines for the driver.
    pub fn emit(&self) {
        emit("allocations", self.allocations);
        for (name, l) in [("heap_lock", self.heap), ("class_locks", self.class)] {
            emit(&format!("{name}_acquisitions"), l.acquisitions);
            emit(&format!("{name}_contended"), l.contended);
            emit(&format!("{name}_wait_ns"), l.wait_ns);
        }
    }
}
