//! `fork()` while other threads hold allocations and keep allocating and
//! freeing (small and large objects, so that every allocator lock is in
//! use): the child has a working allocator. It allocates, frees (also
//! objects the parent allocated), reallocates, spawns a thread that
//! allocates, starts a new background scavenger by freeing, and exits 0
//! with `_exit`. A child that deadlocks on a lock left held across the fork
//! is killed after a bound and fails the test.

use std::alloc::{alloc, dealloc, realloc, Layout};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

mod support;
use support::{ForkEnd, Pattern, Rng};

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const FORKS: usize = 40;
const BUSY_THREADS: usize = 3;
/// Hang guards only (a deadlock after fork): how long things take is not
/// what these tests check.
const CHILD_TIMEOUT: Duration = Duration::from_secs(90);
const HANG_GUARD: Duration = Duration::from_secs(60);

/// What a busy thread does until told to stop: keeps a set of live objects
/// (checked when freed), churns small and large ones, grows a map.
fn busy(t: u64, stop: Arc<AtomicBool>, rounds: Arc<AtomicUsize>) -> usize {
    let mut rng = Rng::new(t);
    let mut live: Vec<(Vec<u8>, u8)> = Vec::new();
    let mut map: HashMap<u64, String> = HashMap::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let size = match rng.below(100) {
            0..=84 => rng.range(1, 1024),
            85..=96 => rng.range(1025, 32768),
            _ => rng.range(32769, 1 << 20),
        };
        let tag = n as u8;
        live.push((vec![tag; size], tag));
        if live.len() > 200 {
            let (v, tag) = live.swap_remove(rng.below(live.len()));
            assert!(v.iter().all(|&b| b == tag), "busy thread {t}: object changed");
        }
        map.insert(n as u64 % 5000, format!("{t}-{n}"));
        if n % 10_000 == 9_999 {
            // Give pages back now and then, to keep the scavenger busy.
            live.clear();
            map = HashMap::new();
            scavalloc::flush_thread_cache();
        }
        n += 1;
        if n.is_multiple_of(64) {
            rounds.fetch_add(1, Ordering::Relaxed);
        }
    }
    for (v, tag) in live {
        assert!(v.iter().all(|&b| b == tag));
    }
    n
}

/// The child's work; returns a non-zero code naming the first thing that
/// went wrong. Runs on the forking thread, the only thread of the child.
fn child_work(parent_objs: &mut Vec<(*mut u8, Layout, Pattern)>, wait_for_scavenger: bool) -> i32 {
    // Objects the parent allocated are intact, and can be freed here.
    for (p, l, pat) in parent_objs.drain(..) {
        // SAFETY: live objects of `l.size()` bytes.
        if unsafe { pat.first_mismatch(p, l.size()) }.is_some() {
            return 10;
        }
        // SAFETY: allocated with `l` by this thread before the fork.
        unsafe { dealloc(p, l) };
    }
    scavalloc::flush_thread_cache();
    // Small and large objects, reallocs across the boundary.
    let mut objs = Vec::new();
    for i in 0..400usize {
        let size = if i == 399 { 3 << 20 } else { [1usize, 24, 100, 1000, 5000, 40_000, 100_000, 9][i % 8] };
        let l = Layout::from_size_align(size, 1 << (i % 7)).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { alloc(l) };
        if p.is_null() || !(p as usize).is_multiple_of(l.align()) {
            return 11;
        }
        let pat = Pattern::new(i as u64, size);
        // SAFETY: a live object of `size` bytes.
        unsafe { pat.fill(p, size) };
        objs.push((p, l, pat));
    }
    for (i, (p, l, pat)) in objs.iter_mut().enumerate() {
        // SAFETY: live objects of `l.size()` bytes.
        if unsafe { pat.first_mismatch(*p, l.size()) }.is_some() {
            return 12;
        }
        let new_size = if i % 2 == 0 { l.size() * 3 + 1 } else { l.size() / 2 + 1 };
        // SAFETY: live with `l`.
        let q = unsafe { realloc(*p, *l, new_size) };
        if q.is_null() {
            return 13;
        }
        // SAFETY: the object holds at least min(old, new) bytes.
        if unsafe { pat.first_mismatch(q, l.size().min(new_size)) }.is_some() {
            return 14;
        }
        *p = q;
        *l = Layout::from_size_align(new_size, l.align()).unwrap();
    }
    for (p, l, _) in objs {
        // SAFETY: live with `l`.
        unsafe { dealloc(p, l) };
    }
    // std collections.
    let m: HashMap<u32, String> = (0..5000).map(|i| (i, i.to_string())).collect();
    if (0..5000).any(|i| m[&i] != i.to_string()) {
        return 15;
    }
    drop(m);
    scavalloc::flush_thread_cache();
    // A thread of the child allocates and frees, and exits (its cache is
    // flushed at exit).
    let h = thread::Builder::new().spawn(|| {
        let v: Vec<Vec<u64>> = (0..1000u64).map(|i| (0..i % 50).collect()).collect();
        let big = vec![9u8; 2 << 20];
        v.iter().enumerate().all(|(i, w)| w.len() == i % 50) && big.iter().all(|&b| b == 9)
    });
    match h.map(|h| h.join()) {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return 16,
        _ => return 17,
    }
    // Release everything free: takes the heap lock, runs the scavenger path.
    scavalloc::release_all();
    let s = scavalloc::stats();
    if s.mapped != s.heap_in_use + s.heap_free + s.heap_released {
        return 18;
    }
    // The background scavenger did not survive the fork; a free that leaves
    // retained memory over the goal starts a new one in the child.
    let released_before = s.released_background;
    let mut big = vec![0u8; 16 << 20];
    for page in big.chunks_mut(4096) {
        page[0] = 1;
    }
    drop(big);
    if !scavalloc::stats().scavenger_running {
        return 19;
    }
    if wait_for_scavenger
        && !support::wait_until(HANG_GUARD, || scavalloc::stats().released_background > released_before)
    {
        return 20;
    }
    0
}

/// Forks; the child runs `child_work` (see `support::fork_child`: it never
/// returns into the test harness, whose other threads do not exist in it).
fn fork_and_wait(parent_objs: &mut Vec<(*mut u8, Layout, Pattern)>, wait_for_scavenger: bool) -> ForkEnd {
    support::fork_child(CHILD_TIMEOUT, "deadlock after fork?", || child_work(parent_objs, wait_for_scavenger))
}

#[test]
fn fork_with_busy_threads_leaves_the_child_a_working_allocator() {
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..BUSY_THREADS as u64)
        .map(|t| {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            thread::spawn(move || busy(t, stop, rounds))
        })
        .collect();
    // Objects this thread holds across every fork (the child frees its copy
    // of them).
    let mut held: Vec<(*mut u8, Layout, Pattern)> = Vec::new();
    for (i, size) in [8usize, 100, 3000, 40_000, 1 << 20].into_iter().enumerate() {
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero size; filled within the object.
        let p = unsafe { alloc(l) };
        assert!(!p.is_null());
        let pat = Pattern::new(1000 + i as u64, size);
        // SAFETY: as above.
        unsafe { pat.fill(p, size) };
        held.push((p, l, pat));
    }
    for f in 0..FORKS {
        // The busy threads must really be running between forks.
        let r0 = rounds.load(Ordering::Relaxed);
        assert!(
            support::wait_until(HANG_GUARD, || rounds.load(Ordering::Relaxed) > r0),
            "busy threads made no progress"
        );
        let mut copy = held.clone();
        let end = fork_and_wait(&mut copy, f == 0);
        assert_eq!(end, ForkEnd::Done, "fork {f}: the child did not finish its checks");
    }
    stop.store(true, Ordering::Relaxed);
    let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(total > 0);
    for (p, l, pat) in held {
        // SAFETY: live objects of `l.size()` bytes, allocated with `l`.
        unsafe {
            support::assert_pattern(pat, p, l.size(), "held across forks");
            dealloc(p, l);
        }
    }
}
