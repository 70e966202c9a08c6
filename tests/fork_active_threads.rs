//! `fork()` while other threads hold allocations and are busy allocating
//! and freeing (small and large objects, cross-thread frees): the child
//! checks and frees objects the parent allocated before the fork, allocates
//! and frees (std collections, large and aligned objects), spawns a thread
//! that allocates and frees objects of both threads, and exits 0 with
//! `_exit`. The parent checks every child's exit status with a bounded
//! wait, and that its own threads carry on after the forks.
//!
//! A second test checks that a child forked under load inherits statistics
//! that add up.

use std::alloc::{alloc, dealloc, Layout};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

mod support;
use support::{ForkEnd, Pattern, Rng};

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const CHURN_THREADS: usize = 3;
const FORKS: usize = 30;

/// An object with its pattern.
struct Obj(*mut u8, Layout, u64);
// SAFETY: owned exclusively by whoever holds the `Obj`.
unsafe impl Send for Obj {}

impl Obj {
    fn new(size: usize, align: usize, id: u64) -> Obj {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { alloc(l) };
        assert!(!p.is_null());
        // SAFETY: fresh object of `size` bytes.
        unsafe { Pattern::new(id, size).fill(p, size) };
        Obj(p, l, id)
    }

    fn intact(&self) -> bool {
        // SAFETY: live object of `self.1.size()` bytes.
        unsafe { Pattern::new(self.2, self.1.size()).first_mismatch(self.0, self.1.size()).is_none() }
    }

    fn free(self) -> bool {
        let ok = self.intact();
        // SAFETY: allocated with this layout, not used again.
        unsafe { dealloc(self.0, self.1) };
        ok
    }
}

/// Allocates (3% large objects, up to 2 MiB), checks and frees, passing a
/// quarter of its frees to the next thread, until told to stop.
fn churn(t: usize, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>, rx: mpsc::Receiver<Obj>, tx: mpsc::Sender<Obj>) {
    let mut rng = Rng::new(100 + t as u64);
    let mut live: Vec<Obj> = Vec::new();
    let mut id = (t as u64) << 40;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let size = match rng.below(100) {
            0..=79 => rng.range(1, 512),
            80..=96 => rng.range(513, 32 * 1024),
            _ => rng.range(32 * 1024 + 1, 2 << 20),
        };
        live.push(Obj::new(size, 1 << rng.below(7), id));
        if live.len() > 300 {
            let o = live.swap_remove(rng.below(live.len()));
            if rng.chance(1, 4) {
                let _ = tx.send(o);
            } else {
                assert!(o.free(), "churn thread {t}: object corrupted");
            }
        }
        while let Ok(o) = rx.try_recv() {
            assert!(o.free(), "churn thread {t}: received object corrupted");
        }
        n += 1;
        if n.is_multiple_of(64) {
            ops.fetch_add(64, Ordering::Relaxed);
        }
    }
    for o in live {
        assert!(o.free());
    }
    while let Ok(o) = rx.try_recv() {
        assert!(o.free());
    }
}

/// Allocates and frees untouched large objects (and some small ones) until
/// told to stop: as much of its time as possible inside the allocator.
fn large_churn(t: usize, stop: &AtomicBool, ops: &AtomicU64) {
    let mut rng = Rng::new(500 + t as u64);
    let mut live: Vec<(*mut u8, Layout)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let size = if rng.chance(1, 4) { rng.range(1, 4096) } else { rng.range(32 * 1024 + 1, 2 << 20) };
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { alloc(l) };
        assert!(!p.is_null());
        live.push((p, l));
        if live.len() > 16 {
            let (p, l) = live.swap_remove(rng.below(live.len()));
            // SAFETY: allocated above with `l`.
            unsafe { dealloc(p, l) };
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
    for (p, l) in live {
        // SAFETY: allocated above with `l`.
        unsafe { dealloc(p, l) };
    }
}

/// The child's work; returns an exit code (0 on success).
fn child_body(parent_objs: &[Obj], parent_map: &mut HashMap<u64, String>) -> i32 {
    // Objects the parent allocated before the fork: intact and freeable
    // (in the child's copy of the heap).
    for (k, v) in parent_map.iter() {
        if *v != format!("value {k}") {
            return 10;
        }
    }
    drop(std::mem::take(parent_map));
    for o in parent_objs {
        if !Obj(o.0, o.1, o.2).free() {
            return 11;
        }
    }
    // Allocate and free on this (the child's only) thread.
    let mut v: Vec<u64> = Vec::new();
    for i in 0..300_000u64 {
        v.push(i * 3);
    }
    if v.iter().enumerate().any(|(i, &x)| x != i as u64 * 3) {
        return 12;
    }
    let mut m = HashMap::new();
    for i in 0..20_000u64 {
        m.insert(i, i.to_string());
    }
    if (0..20_000u64).any(|i| m[&i] != i.to_string()) {
        return 13;
    }
    let objs: Vec<Obj> = (0..200u64)
        .map(|i| match i % 4 {
            0 => Obj::new(24, 8, 7_000 + i),
            1 => Obj::new(3000, 64, 7_000 + i),
            2 => Obj::new(100_000, 4096, 7_000 + i),
            _ if i % 40 == 3 => Obj::new((2 << 20) + 1, 1 << 16, 7_000 + i),
            _ => Obj::new(40_000, 1 << 16, 7_000 + i),
        })
        .collect();
    if objs.iter().any(|o| !o.intact() || !(o.0 as usize).is_multiple_of(o.1.align())) {
        return 14;
    }
    // A thread in the child: allocates, frees objects of the child's main
    // thread, and hands back objects of its own.
    let handle = thread::Builder::new().spawn(move || {
        let mut ok = true;
        for o in objs {
            ok &= o.free();
        }
        let strings: Vec<String> = (0..10_000).map(|i| format!("child thread {i}")).collect();
        ok &= strings.iter().enumerate().all(|(i, s)| *s == format!("child thread {i}"));
        let big = vec![0x3Cu8; 5 << 20];
        ok &= big.iter().all(|&b| b == 0x3C);
        let back: Vec<Obj> = (0..100u64).map(|i| Obj::new(16 + i as usize * 50, 8, 9_000 + i)).collect();
        (ok, back)
    });
    let Ok(handle) = handle else { return 15 };
    let Ok((ok, back)) = handle.join() else { return 16 };
    if !ok {
        return 17;
    }
    for o in back {
        if !o.free() {
            return 18;
        }
    }
    drop(v);
    drop(m);
    0
}

/// In a child, the statistics identities as an exit code: 0 when they
/// hold, otherwise 20 + which one failed; the figures go to stderr.
fn child_identities() -> i32 {
    scavalloc::flush_thread_cache();
    let s = scavalloc::stats();
    let code = if s.mapped != s.heap_in_use + s.heap_free + s.heap_released {
        20
    } else if s.heap_in_use != s.small_spans + s.large_pages + s.arena_pages {
        21
    } else if s.small_spans != s.small_allocated + s.small_cached + s.small_free + s.small_waste {
        22
    } else {
        return 0;
    };
    let msg = format!(
        "fork child: identity {code} broken: mapped {} in_use {} free {} released {} small_spans {} large_pages {} \
         arena_pages {} (in_use - small_spans - large_pages - arena_pages = {} bytes)\n",
        s.mapped,
        s.heap_in_use,
        s.heap_free,
        s.heap_released,
        s.small_spans,
        s.large_pages,
        s.arena_pages,
        s.heap_in_use as isize - (s.small_spans + s.large_pages + s.arena_pages) as isize
    );
    // SAFETY: writes a valid buffer to stderr (not through the test
    // harness's capture, which the child cannot hand back).
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    code
}

/// Spawns `n` churn threads; returns the stop flag, their progress
/// counters and handles.
fn start_churn(n: usize) -> (Arc<AtomicBool>, Vec<Arc<AtomicU64>>, Vec<thread::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let ops: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel::<Obj>()).unzip();
    let mut handles = Vec::new();
    for (t, rx) in rxs.into_iter().enumerate() {
        let (stop, ops, tx) = (stop.clone(), ops[t].clone(), txs[(t + 1) % n].clone());
        handles.push(thread::spawn(move || churn(t, stop, ops, rx, tx)));
    }
    (stop, ops, handles)
}

/// Waits (bounded) until every churn thread has done 128 more operations.
fn wait_for_progress(ops: &[Arc<AtomicU64>], what: &str) {
    let start: Vec<u64> = ops.iter().map(|o| o.load(Ordering::Relaxed)).collect();
    // A hang guard only.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ops.iter().zip(&start).any(|(o, &s)| o.load(Ordering::Relaxed) < s + 128) {
        assert!(Instant::now() < deadline, "churn threads made no progress {what}");
        thread::yield_now();
    }
}

/// Forks and runs `body` in the child (see `support::fork_child`); a child
/// that has not ended after 60 s is taken for a deadlock.
fn fork_and_wait(body: impl FnOnce() -> i32) -> ForkEnd {
    support::fork_child(Duration::from_secs(60), "deadlock after fork?", body)
}

#[test]
fn fork_while_threads_allocate() {
    let (stop, ops, handles) = start_churn(CHURN_THREADS);
    wait_for_progress(&ops, "before the first fork");
    let mut rng = Rng::new(1);
    for f in 0..FORKS {
        // The parent's own objects, alive across the fork.
        let objs: Vec<Obj> = (0..50u64).map(|i| Obj::new(rng.range(1, 200_000), 8, (f as u64) << 20 | i)).collect();
        let mut map: HashMap<u64, String> = (0..500u64).map(|k| (k, format!("value {k}"))).collect();
        let end = fork_and_wait(|| child_body(&objs, &mut map));
        assert_eq!(end, ForkEnd::Done, "fork {f}: the child did not finish its checks");
        // The child freed its copies; the parent's are untouched.
        assert!(map.iter().all(|(k, v)| *v == format!("value {k}")));
        for o in objs {
            assert!(o.free(), "fork {f}: a parent's object changed");
        }
        if f % 10 == 9 {
            wait_for_progress(&ops, "after a fork");
        }
    }
    wait_for_progress(&ops, "after the last fork");
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("churn thread panicked");
    }
}

/// The statistics identities hold in a child forked while other threads
/// allocate and free: the child has no other thread, so it is quiescent,
/// and the `fork()` handlers hold every allocator lock across the fork so
/// that it inherits consistent figures.
#[test]
fn child_statistics_add_up_after_fork() {
    let stop = Arc::new(AtomicBool::new(false));
    let ops: Vec<Arc<AtomicU64>> = (0..CHURN_THREADS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let handles: Vec<_> = (0..CHURN_THREADS)
        .map(|t| {
            let (stop, ops) = (stop.clone(), ops[t].clone());
            thread::spawn(move || large_churn(t, &stop, &ops))
        })
        .collect();
    wait_for_progress(&ops, "before the first fork");
    let mut broken = Vec::new();
    for f in 0..60 {
        match fork_and_wait(child_identities) {
            ForkEnd::Done => {}
            ForkEnd::Exited(code) if (20..=22).contains(&code) => broken.push((f, code)),
            end => panic!("fork {f}: child ended with {end:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("churn thread panicked");
    }
    assert!(
        broken.is_empty(),
        "statistics identities broken in {} of 60 forked children (fork, identity 20/21/22): {broken:?}; \
         the figures are on stderr",
        broken.len()
    );
}
