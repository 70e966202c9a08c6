//! Trimming other threads' caches, from the scavenger thread.
//!
//! A thread's cache is private: its fast paths use plain loads and stores.
//! Two kinds of cache would otherwise keep memory for good:
//!
//! - the cache of a thread that stopped allocating (a pool thread waiting
//!   for work, a thread blocked for hours): its objects, and the spans it
//!   owns, stay out of reach of the spans' other users and of deep
//!   release. A cache unused for [`IDLE_MS`] is trimmed whole.
//! - many caches together: each is bounded, but a thousand threads times a
//!   few hundred KiB is a lot. While all caches together hold more than
//!   the budget (`SCAVALLOC_CACHE_BUDGET`, default [`DEFAULT_BUDGET`]), the
//!   caches above an equal share of it are trimmed whole too, busy or
//!   not; what is left is then at most the budget.
//!
//! The scavenger takes a cache over through its gate (a
//! [`Handshake`](crate::sync::Handshake)): it asks for every cache it wants
//! to trim, runs one process-wide memory barrier for all of them, and then
//! trims those whose threads were not inside them; the others are tried
//! again in a later round. A thread that comes back to a cache being
//! trimmed waits at the gate for the few microseconds the trim takes.
//!
//! Trimming holds the registry lock (so no trimmed cache can be detached
//! and reused meanwhile), and under it the class locks, in the order
//! thread exit uses. It makes no system call under a lock: the barrier
//! runs between the request and the take, with no lock held. At most
//! [`MAX_TRIMS_PER_ROUND`] caches are trimmed per round, which bounds the
//! registry lock's hold.
//!
//! Without `membarrier(2)` (Linux before 4.14, or a seccomp filter that
//! refuses it) nothing is trimmed, and the statistics say so.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use super::{flush, ThreadCache, LARGE_MIN_PAGES, LARGE_PER_SIZE, REGISTRY};
use crate::pages::PAGE_SIZE;
use crate::scavenge::CacheTrim;
use crate::spans::sizeclass::{self, NUM_CLASSES};
use crate::sync::heavy_fence;

/// What the scavenger calls (the span layer is above it).
pub static HOOK: CacheTrim = CacheTrim { trim: round };

/// A cache whose thread has not entered it for this long is trimmed whole
/// at the next round (rounds are a quarter second apart).
pub const IDLE_MS: u64 = 1000;

/// The default budget for all thread caches together: tcmalloc's default
/// (32 MiB in all). It lets 11 threads each fill every class's stack, far
/// more than a thread uses in practice (a thread caches only the classes it
/// allocates), so programs with a few busy threads never meet it, while a
/// pool of a thousand threads keeps 32 KiB each.
pub const DEFAULT_BUDGET: usize = 32 << 20;

/// The most caches one pass of a round trims, which bounds how long it
/// holds the registry lock (and so delays threads starting or exiting): a
/// trim is a few microseconds per class the cache used.
pub const MAX_TRIMS_PER_ROUND: usize = 128;

/// The most passes in a round: a round trims at most 2,048 caches.
const MAX_PASSES: usize = 16;

/// Whether the process memory barrier is registered: unknown, ready, or
/// unavailable.
static BARRIER: AtomicU8 = AtomicU8::new(BARRIER_UNKNOWN);
const BARRIER_UNKNOWN: u8 = 0;
const BARRIER_READY: u8 = 1;
const BARRIER_UNAVAILABLE: u8 = 2;

static ROUNDS: AtomicU64 = AtomicU64::new(0);
static TRIMMED_IDLE: AtomicU64 = AtomicU64::new(0);
static TRIMMED_BUDGET: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static TRIMMED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Set while a round runs. Rounds must not overlap: a round's take relies
/// on its own barrier coming after the request it finds, and another
/// round's hand-back could clear that request and a third set it again
/// after the barrier. The scavenger and [`crate::release_all`] both run
/// rounds; allocation paths never wait for this.
static ROUND_RUNNING: AtomicBool = AtomicBool::new(false);

/// What cache trimming has done, in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheTrimStats {
    /// The budget for all thread caches together, in bytes.
    pub budget: usize,
    /// Bytes of objects held in all thread caches now (stacks, home-bound
    /// buffers and cached large objects).
    pub held: usize,
    /// Trim rounds run.
    pub rounds: u64,
    /// Caches trimmed because their threads had not used them for a
    /// second.
    pub trimmed_idle: u64,
    /// Caches trimmed because all caches together were over the budget
    /// (or by [`crate::release_all`]).
    pub trimmed_budget: u64,
    /// Trims given up because the thread was using its cache at the time.
    pub refused: u64,
    /// Bytes of objects trimmed from caches, in all.
    pub trimmed_bytes: u64,
    /// Whether trimming works here (it needs `membarrier(2)`).
    pub available: bool,
}

/// The trimming statistics.
pub fn stats() -> CacheTrimStats {
    let reg = REGISTRY.lock();
    let mut held = 0;
    let mut cache = reg.live;
    while !cache.is_null() {
        // SAFETY: live caches are valid records, kept listed by the lock;
        // `held_bytes` reads only atomics.
        unsafe {
            held += held_bytes(&*cache).0;
            cache = (*cache).next;
        }
    }
    drop(reg);
    CacheTrimStats {
        budget: budget(),
        held,
        rounds: ROUNDS.load(Ordering::Relaxed),
        trimmed_idle: TRIMMED_IDLE.load(Ordering::Relaxed),
        trimmed_budget: TRIMMED_BUDGET.load(Ordering::Relaxed),
        refused: REFUSED.load(Ordering::Relaxed),
        trimmed_bytes: TRIMMED_BYTES.load(Ordering::Relaxed),
        available: BARRIER.load(Ordering::Relaxed) != BARRIER_UNAVAILABLE,
    }
}

fn budget() -> usize {
    crate::config::get().cache_budget
}

/// Registers the memory barrier on first use; whether it is there.
fn barrier_ready() -> bool {
    match BARRIER.load(Ordering::Relaxed) {
        BARRIER_READY => true,
        BARRIER_UNAVAILABLE => false,
        _ => {
            let ok = crate::os::register_process_memory_barrier();
            BARRIER.store(if ok { BARRIER_READY } else { BARRIER_UNAVAILABLE }, Ordering::Relaxed);
            ok
        }
    }
}

/// After `fork()`: the child's address space is not registered.
pub(crate) fn after_fork_child() {
    BARRIER.store(BARRIER_UNKNOWN, Ordering::Relaxed);
    // A round of the parent's scavenger may have been under way.
    ROUND_RUNNING.store(false, Ordering::Relaxed);
}

/// Bytes of objects `cache` holds (read racily from its counts), and
/// whether it holds anything at all, its own spans included.
fn held_bytes(cache: &ThreadCache) -> (usize, bool) {
    let mut bytes = 0;
    let mut owns = false;
    for class in 0..NUM_CLASSES {
        let objects = cache.bins[class].count.load(Ordering::Relaxed) as usize
            + cache.home[class].count.load(Ordering::Relaxed) as usize;
        bytes += objects * sizeclass::class_size(class);
        owns |= !cache.owned[class].load(Ordering::Relaxed).is_null();
    }
    for (i, slot) in cache.large.iter().enumerate() {
        if !slot.load(Ordering::Relaxed).is_null() {
            bytes += (LARGE_MIN_PAGES + i / LARGE_PER_SIZE) * PAGE_SIZE;
        }
    }
    (bytes, owns || bytes > 0)
}

/// Why a cache is asked for.
fn wanted(cache: &ThreadCache, now_ms: u64, share: usize, everything: bool) -> Option<bool> {
    let (bytes, holds) = held_bytes(cache);
    if !holds {
        return None;
    }
    if is_idle(cache, now_ms) {
        Some(true)
    } else if everything || bytes > share {
        Some(false)
    } else {
        None
    }
}

/// Whether `cache`'s thread has not used it for [`IDLE_MS`], as the
/// trimmer's notes say.
fn is_idle(cache: &ThreadCache, now_ms: u64) -> bool {
    now_ms.saturating_sub(cache.seen_active_ms.load(Ordering::Relaxed)) >= IDLE_MS
}

/// One round (see the module docs); with `everything`, every cache that
/// holds anything is trimmed (for [`crate::release_all`]). Returns whether
/// some cache still holds memory.
pub fn round(now_ms: u64, everything: bool) -> bool {
    while ROUND_RUNNING.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        if !everything {
            // The scavenger: another round is under way, which will do.
            return true;
        }
        // SAFETY: `sched_yield` has no preconditions.
        unsafe { libc::sched_yield() };
    }
    ROUNDS.fetch_add(1, Ordering::Relaxed);
    // A round trims in passes of at most `MAX_TRIMS_PER_ROUND` caches, with
    // the registry lock dropped in between (threads may start and exit).
    let mut holding = true;
    for _ in 0..MAX_PASSES {
        let (still_holding, full_pass) = pass(now_ms, everything);
        holding = still_holding;
        if !full_pass {
            break;
        }
    }
    ROUND_RUNNING.store(false, Ordering::Release);
    holding
}

/// One pass of a round, with no other round running: whether some cache
/// still holds memory, and whether the pass asked for as many caches as
/// it may (so another pass may find more).
fn pass(now_ms: u64, everything: bool) -> (bool, bool) {
    let budget = budget();
    let mut asked = 0;
    let holding;
    {
        let reg = REGISTRY.lock();
        // First look: note which threads used their caches since the last
        // round, and what all caches hold.
        let mut total = 0;
        let mut holders = 0;
        let mut cache = reg.live;
        while !cache.is_null() {
            // SAFETY: live caches are valid records kept listed by the lock;
            // the `seen_` notes are the trimmer's, written under the lock.
            let c = unsafe { &*cache };
            let seq = c.gate.seq();
            if seq != c.seen_seq.load(Ordering::Relaxed) || seq & 1 == 1 {
                c.seen_seq.store(seq, Ordering::Relaxed);
                c.seen_active_ms.store(now_ms, Ordering::Relaxed);
            }
            let (bytes, holds) = held_bytes(c);
            if holds {
                total += bytes;
                holders += 1;
            }
            cache = c.next;
        }
        holding = holders > 0;
        if !holding || BARRIER.load(Ordering::Relaxed) == BARRIER_UNAVAILABLE {
            return (holding, false);
        }
        // Over the budget, the caches above an equal share of it are
        // trimmed: all that remain then hold at most the budget.
        let share = if total > budget { budget / holders } else { usize::MAX };
        let mut cache = reg.live;
        while !cache.is_null() && asked < MAX_TRIMS_PER_ROUND {
            // SAFETY: as above.
            let c = unsafe { &*cache };
            if wanted(c, now_ms, share, everything).is_some() {
                c.gate.request();
                asked += 1;
            }
            cache = c.next;
        }
    }
    if asked == 0 {
        return (holding, false);
    }
    // No lock held: registering (the first time) and the barrier are
    // system calls. Registered only once a cache is asked for: a program
    // whose caches never need trimming never registers.
    let fenced = barrier_ready() && heavy_fence();
    let reg = REGISTRY.lock();
    let mut cache = reg.live;
    while !cache.is_null() {
        // SAFETY: as above. A cache asked for is still listed: its thread
        // cannot detach it without passing its gate, which waits for us, or
        // without having been inside it, which `try_take` sees.
        let c = unsafe { &*cache };
        cache = c.next;
        if !c.gate.requested() {
            continue;
        }
        if !fenced {
            c.gate.release();
            continue;
        }
        if !c.gate.try_take() {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (bytes, holds) = held_bytes(c);
        let idle = holds && is_idle(c, now_ms);
        // SAFETY: the gate is ours (its thread is outside and waits if it
        // comes back), and the registry lock keeps the cache listed.
        unsafe { flush(c) };
        c.gate.release();
        TRIMMED_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
        if idle {
            TRIMMED_IDLE.fetch_add(1, Ordering::Relaxed);
        } else {
            TRIMMED_BUDGET.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(reg);
    if !fenced {
        BARRIER.store(BARRIER_UNAVAILABLE, Ordering::Relaxed);
        return (true, false);
    }
    (true, asked == MAX_TRIMS_PER_ROUND)
}
