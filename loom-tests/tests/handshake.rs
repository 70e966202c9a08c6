//! Model checks of the handshake by which the scavenger trims another
//! thread's cache (`sync/handshake.rs`, the code `spans/cache/trim.rs`
//! runs): the owner enters and leaves its data with plain stores and a
//! check of the request flag; the taker asks, runs the process-wide
//! barrier (a `SeqCst` fence in the model, which is what `membarrier`
//! gives the owner's compiler fence), and takes the data only if the owner
//! is outside. The data is a loom `UnsafeCell`, so any moment at which both
//! sides could touch it is reported as a data race; the final value shows
//! that no update of either side was lost.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use scavalloc::testing::{heavy_fence, Handshake};
use scavalloc_loom_tests::model;

struct Cache {
    gate: Handshake,
    /// What the owner and the taker both write: the owner adds 1 per use,
    /// the taker 100 per take.
    data: UnsafeCell<u32>,
}

// SAFETY: `data` is only touched under the handshake, which is what the
// model checks.
unsafe impl Sync for Cache {}

fn taker(cache: &Cache) -> bool {
    cache.gate.request();
    assert!(heavy_fence());
    if cache.gate.try_take() {
        cache.data.with_mut(|d| unsafe { *d += 100 });
        cache.gate.release();
        true
    } else {
        false
    }
}

/// The owner uses its data twice through the waiting entry (the slow
/// paths'); a take either happens while it is outside or is refused.
#[test]
fn a_take_never_overlaps_the_owner() {
    model(|| {
        let cache = Arc::new(Cache { gate: Handshake::new(), data: UnsafeCell::new(0) });
        let t = {
            let cache = cache.clone();
            thread::spawn(move || taker(&cache))
        };
        for _ in 0..2 {
            let seq = cache.gate.enter();
            cache.data.with_mut(|d| unsafe { *d += 1 });
            cache.gate.exit(seq);
        }
        let taken = t.join().unwrap();
        let d = cache.data.with(|d| unsafe { *d });
        assert_eq!(d, 2 + if taken { 100 } else { 0 });
        assert!(!cache.gate.requested(), "a request left behind would stall the owner");
    });
}

/// The fast paths' entry: it never waits; when a take is under way it
/// leaves at once and the owner falls back to the waiting entry, as
/// `cache::pop` falls back to `alloc_slow`.
#[test]
fn the_fast_entry_backs_off_and_the_slow_one_waits() {
    model(|| {
        let cache = Arc::new(Cache { gate: Handshake::new(), data: UnsafeCell::new(0) });
        let t = {
            let cache = cache.clone();
            thread::spawn(move || taker(&cache))
        };
        let seq = match cache.gate.try_enter() {
            Some(seq) => seq,
            None => cache.gate.enter(),
        };
        cache.data.with_mut(|d| unsafe { *d += 1 });
        cache.gate.exit(seq);
        let taken = t.join().unwrap();
        let d = cache.data.with(|d| unsafe { *d });
        assert_eq!(d, 1 + if taken { 100 } else { 0 });
    });
}

/// Two takers (the scavenger's round and `release_all`'s) are kept apart
/// by the trimmer; one taker asking twice in a row while the owner works
/// is still safe, and the owner is never left waiting.
#[test]
fn repeated_takes_while_the_owner_works() {
    model(|| {
        let cache = Arc::new(Cache { gate: Handshake::new(), data: UnsafeCell::new(0) });
        let t = {
            let cache = cache.clone();
            thread::spawn(move || taker(&cache) as u32 + taker(&cache) as u32)
        };
        let seq = cache.gate.enter();
        cache.data.with_mut(|d| unsafe { *d += 1 });
        cache.gate.exit(seq);
        let takes = t.join().unwrap();
        let d = cache.data.with(|d| unsafe { *d });
        assert_eq!(d, 1 + 100 * takes);
    });
}
