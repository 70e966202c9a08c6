//! A handshake that lets one thread (the scavenger) take over another
//! thread's private data while that thread is outside it, at the price of
//! two plain stores, a compiler fence and a load for the owner.
//!
//! The owner brackets every use of its data with [`Handshake::enter`] and
//! [`Handshake::exit`]: a sequence number that is odd while it is inside,
//! and a check of a request flag on the way in. The other side sets the
//! flag, runs a process-wide memory barrier (`membarrier(2)`: every running
//! thread of the process executes a full fence, so the owner's cheap
//! compiler fence is enough on its side), and then reads the sequence
//! number. The barrier orders the two sides' store-then-load pairs as two
//! `SeqCst` fences would, so at least one of them sees the other:
//!
//! - the taker sees an odd number: the owner is inside, and the taker gives
//!   up (it clears the flag, and tries again some other time);
//! - the taker sees an even number: the owner was outside at the barrier,
//!   and if it comes back it sees the flag and waits until the taker clears
//!   it. The taker may use the data meanwhile.
//!
//! The owner never waits unless a take is under way, and a take is short:
//! the taker holds no one up beyond its own work. The sequence number also
//! tells the taker whether the owner has used its data since it last
//! looked (it changes on every use), which is how an idle thread is found.
//!
//! Under loom both sides are `SeqCst` fences, which is what the barrier
//! provides, so the model checks run this code unchanged.

use super::atomic::{fence, AtomicU32, Ordering};

/// The owner's half and the taker's half of the handshake over one
/// thread's data. See the module docs.
pub struct Handshake {
    /// Odd while the owner is inside its data; advanced by 2 per use.
    seq: AtomicU32,
    /// Non-zero while a taker asks for, or holds, the data.
    request: AtomicU32,
}

impl Handshake {
    /// A handshake with the owner outside and no request.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Handshake { seq: AtomicU32::new(0), request: AtomicU32::new(0) }
    }

    /// A handshake with the owner outside and no request.
    #[cfg(loom)]
    pub fn new() -> Self {
        Handshake { seq: AtomicU32::new(0), request: AtomicU32::new(0) }
    }

    /// The owner enters its data: returns the number to pass to
    /// [`exit`](Self::exit). Waits while a taker holds the data.
    #[inline(always)]
    pub fn enter(&self) -> u32 {
        let seq = self.seq.load(Ordering::Relaxed).wrapping_add(1);
        self.seq.store(seq, Ordering::Relaxed);
        light_fence();
        // Acquire: a request already withdrawn or handed back reads 0, and
        // the taker's writes to the data before that must be visible.
        if self.request.load(Ordering::Acquire) != 0 {
            self.wait_for_taker();
        }
        seq
    }

    /// [`enter`](Self::enter) for a fast path: instead of waiting while a
    /// taker holds the data, leaves again at once and returns `None` (the
    /// caller then takes its slow path, which enters with
    /// [`enter`](Self::enter)). No call on the way: a fast path that may
    /// call out has to save registers it otherwise would not.
    #[inline(always)]
    pub fn try_enter(&self) -> Option<u32> {
        let seq = self.seq.load(Ordering::Relaxed).wrapping_add(1);
        self.seq.store(seq, Ordering::Relaxed);
        light_fence();
        // Acquire, as in `enter`.
        if self.request.load(Ordering::Acquire) != 0 {
            // Nothing was touched: leaving is enough.
            self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
            return None;
        }
        Some(seq)
    }

    /// The owner leaves its data (`seq` is what [`enter`](Self::enter)
    /// returned). Release: a taker that sees the even number sees every
    /// write made inside.
    #[inline(always)]
    pub fn exit(&self, seq: u32) {
        self.seq.store(seq.wrapping_add(1), Ordering::Release);
    }

    #[cold]
    #[inline(never)]
    fn wait_for_taker(&self) {
        let mut spins = 0u32;
        // Acquire: the taker's writes to the data are visible once it
        // clears the flag.
        while self.request.load(Ordering::Acquire) != 0 {
            spins += 1;
            // Under loom every turn yields: the model must see the waiter
            // give way, or it explores the spin without end.
            if spins < 64 && cfg!(not(loom)) {
                core::hint::spin_loop();
            } else {
                yield_now();
            }
        }
    }

    /// The taker's first step: ask for the data. Call
    /// [`heavy_fence`] (once for any number of handshakes), then
    /// [`try_take`](Self::try_take) on each.
    pub fn request(&self) {
        self.request.store(1, Ordering::Relaxed);
    }

    /// Whether a request is pending on this handshake.
    pub fn requested(&self) -> bool {
        self.request.load(Ordering::Relaxed) != 0
    }

    /// After [`request`](Self::request) and a [`heavy_fence`]: true if the
    /// taker now holds the data (the owner was outside and waits if it
    /// comes back), until [`release`](Self::release). False if the owner
    /// is inside; the request is then withdrawn.
    pub fn try_take(&self) -> bool {
        // Acquire: pairs with `exit`'s release, so the owner's last writes
        // to the data are visible.
        if self.seq.load(Ordering::Acquire) & 1 == 0 {
            true
        } else {
            self.request.store(0, Ordering::Release);
            false
        }
    }

    /// Hands the data back after [`try_take`](Self::try_take) (or
    /// withdraws a request that was never followed by one). Release: the
    /// owner sees the taker's writes.
    pub fn release(&self) {
        self.request.store(0, Ordering::Release);
    }

    /// The owner's use count: changes every time the owner enters and
    /// leaves. Odd while it is inside.
    pub fn seq(&self) -> u32 {
        self.seq.load(Ordering::Relaxed)
    }
}

impl Default for Handshake {
    fn default() -> Self {
        Self::new()
    }
}

/// The owner's side of the fence: stops the compiler moving the request
/// check above the sequence store; the CPU's reordering is undone by the
/// taker's [`heavy_fence`].
#[inline(always)]
fn light_fence() {
    #[cfg(not(loom))]
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

/// The taker's side of the fence, between its requests and its
/// [`Handshake::try_take`] calls: false if the kernel refused the barrier
/// (then no take is safe: release every request).
pub fn heavy_fence() -> bool {
    #[cfg(not(loom))]
    {
        // The barrier alone orders the owner's side; this fence orders the
        // taker's own request stores before its sequence loads.
        fence(Ordering::SeqCst);
        let ok = crate::os::process_memory_barrier();
        fence(Ordering::SeqCst);
        ok
    }
    #[cfg(loom)]
    {
        fence(Ordering::SeqCst);
        true
    }
}

fn yield_now() {
    #[cfg(not(loom))]
    // SAFETY: `sched_yield` has no preconditions.
    unsafe {
        libc::sched_yield();
    }
    #[cfg(loom)]
    loom::thread::yield_now();
}
