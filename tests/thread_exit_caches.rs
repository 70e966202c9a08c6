//! Thread exit strands nothing: 1,000 short-lived threads (eight at a
//! time) allocate, free into their caches, keep objects until their
//! thread-local destructors run, and free and allocate again from a pthread
//! key destructor that runs after scavalloc's own. Afterwards the
//! statistics show no cache of a dead thread and no object stranded in one.
//!
//! Alone in its binary and without the test harness, so that no other
//! thread allocates and the figures can be compared exactly.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;

use scavalloc::testing::{bin_capacity, home_capacity, MAX_CACHED_BYTES_PER_THREAD};
use scavalloc::testing::{class_size, size_to_class, NUM_CLASSES};

mod support;
use support::Rng;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const THREADS: usize = 1000;
const BATCH: usize = 8;

thread_local! {
    /// Objects kept until the thread's TLS destructors run.
    static KEEP: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// Runs of the late destructor, and objects it checked.
static LATE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A pthread key made after scavalloc's, so that its destructor runs after
/// the one that flushes the thread's cache (glibc runs key destructors in
/// key order): its frees and allocations take scavalloc's path for exited
/// threads.
fn late_key() -> libc::pthread_key_t {
    static KEY: OnceLock<libc::pthread_key_t> = OnceLock::new();
    *KEY.get_or_init(|| {
        let mut key = 0;
        // SAFETY: a valid out-pointer and a destructor of the right type.
        assert_eq!(unsafe { libc::pthread_key_create(&mut key, Some(late_destructor)) }, 0);
        key
    })
}

unsafe extern "C" fn late_destructor(value: *mut libc::c_void) {
    // SAFETY: the value is a `Box<Vec<u64>>` leaked by `thread_body`.
    let v = unsafe { Box::from_raw(value.cast::<Vec<u64>>()) };
    let ok = v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3);
    drop(v);
    // Allocate and free after the cache is gone.
    let s: Vec<String> = (0..50).map(|i| format!("late {i}")).collect();
    let big = vec![7u8; 100_000];
    if ok && s[49] == "late 49" && big.iter().all(|&b| b == 7) {
        LATE_RUNS.fetch_add(1, Ordering::Relaxed);
    }
}

/// What each short-lived thread does.
fn thread_body(t: usize) {
    let mut rng = Rng::new(t as u64);
    // Mixed work, everything freed.
    let mut v: Vec<Box<[u8]>> = Vec::new();
    for i in 0..200 {
        let size = match rng.below(10) {
            0..=6 => rng.range(1, 512),
            7..=8 => rng.range(513, 32768),
            _ => rng.range(32769, 200_000),
        };
        v.push(vec![i as u8; size].into_boxed_slice());
    }
    for (i, b) in v.iter().enumerate() {
        assert!(b.iter().all(|&x| x == i as u8));
    }
    drop(v);
    // Leave objects of three classes in the cache on purpose, for the exit
    // to flush. The thread keeps those of the span it owns and holds the
    // rest on their way home (a buffer sent back when full), so how many
    // stay depends on where the objects came from; some always do (no
    // count here is a multiple of its class's buffer size, so the objects
    // cannot all have left in full buffers).
    for (size, n) in [(64usize, 100usize), (512, 20), (4096, 3)] {
        let class = size_to_class(size).unwrap();
        let objs: Vec<Box<[u8]>> = (0..n).map(|_| vec![1u8; size].into_boxed_slice()).collect();
        drop(objs);
        let cached = scavalloc::stats().classes[class].cached;
        assert!(cached > 0, "thread {t}: no object of {size} bytes cached after freeing {n}");
    }
    // Objects freed by the thread-local destructor.
    KEEP.with(|k| {
        let mut k = k.borrow_mut();
        k.push(vec![3u8; 40].into_boxed_slice());
        k.push(vec![3u8; 3000].into_boxed_slice());
        k.push(vec![3u8; 50_000].into_boxed_slice());
    });
    // And one freed by the late pthread key destructor.
    let late = Box::into_raw(Box::new((0..100u64).map(|i| i * 3).collect::<Vec<u64>>()));
    // SAFETY: a valid key; the value is reclaimed by `late_destructor`.
    assert_eq!(unsafe { libc::pthread_setspecific(late_key(), late.cast()) }, 0);
}

fn run_batches(first: usize, count: usize) {
    for start in (first..first + count).step_by(BATCH) {
        let handles: Vec<_> = (start..(start + BATCH).min(first + count))
            .map(|t| thread::Builder::new().spawn(move || thread_body(t)).unwrap())
            .collect();
        for h in handles {
            h.join().expect("a short-lived thread failed");
        }
    }
}

/// Runs without the test harness (`harness = false` in Cargo.toml): the
/// harness's own thread allocates while tests run, which would move the
/// figures compared here.
fn main() {
    short_lived_threads_strand_nothing();
    println!("test short_lived_threads_strand_nothing ... ok");
    println!("test result: ok. 1 passed; 0 failed; 0 ignored");
}

fn short_lived_threads_strand_nothing() {
    late_key();
    // One batch first, so that whatever std sets up once for threads is in
    // place before the first snapshot.
    run_batches(0, BATCH);
    scavalloc::flush_thread_cache();
    let before = scavalloc::stats();
    assert!(before.thread_caches >= 1);

    run_batches(BATCH, THREADS);
    assert_eq!(LATE_RUNS.load(Ordering::Relaxed), BATCH + THREADS, "late destructors that ran and checked out");

    scavalloc::flush_thread_cache();
    let after = scavalloc::stats();
    // Only live threads have caches: the same ones as before.
    assert_eq!(after.thread_caches, before.thread_caches, "caches still attached after their threads exited");
    // Nothing is stranded: objects left in dead threads' caches would show
    // as cached (if the cache stayed listed) or as allocated (if it was
    // unlisted without being flushed).
    // Sampled small objects (see `Stats::profile`) are counted apart.
    assert_eq!(
        after.small_allocated + after.profile.sampled_allocated,
        before.small_allocated + before.profile.sampled_allocated,
        "small objects stranded or leaked"
    );
    assert_eq!(after.small_cached, before.small_cached, "objects cached beyond the live threads' caches");
    assert_eq!(after.large_objects, before.large_objects, "large objects leaked");
    assert_eq!(after.large_allocated, before.large_allocated);
    // This thread's cache is empty; the other live threads (the harness's
    // main thread) hold at most what their caches can.
    let others = after.thread_caches - 1;
    assert!(after.small_cached <= others * MAX_CACHED_BYTES_PER_THREAD, "{} bytes cached", after.small_cached);
    for c in 0..NUM_CLASSES {
        let cs = after.classes[c];
        assert!(
            cs.cached <= others * (bin_capacity(c) + home_capacity(c)),
            "class {c} ({} bytes): {} objects cached by {others} other live threads",
            class_size(c),
            cs.cached
        );
    }
}
