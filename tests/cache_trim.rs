//! Thread caches cannot hoard: the scavenger trims the cache of a thread
//! that stopped allocating after about a second, trims caches while all of
//! them together are over their budget (`SCAVALLOC_CACHE_BUDGET`) even if
//! their threads are busy, and `release_all` trims every cache. Trimming
//! never touches a live object, and a trimmed thread allocates and frees
//! on as before.
//!
//! Each case runs in a child process of its own, so that no other test's
//! threads hold or trim caches meanwhile. Trimming needs `membarrier(2)`
//! (Linux 4.14+, and no seccomp filter refusing it); where the kernel does
//! not offer it, the tests are reported as ignored with the reason. It runs
//! without libtest's harness (`harness = false`, through `libtest-mimic`)
//! for that.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use libtest_mimic::{Arguments, Trial};
use support::Pattern;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

/// Live objects a worker keeps while it idles, with their patterns.
struct Kept(Vec<(Box<[u8]>, Pattern)>);

/// What every worker does first: objects of many classes allocated,
/// checked and freed (so that its cache holds some of each), then a few
/// kept live. Returns the live ones.
fn fill_cache(worker: u64) -> Kept {
    let mut objects = Vec::new();
    for i in 0..400u64 {
        let size = 24 + (i as usize * 40) % 1000;
        let pat = Pattern::new(worker << 32 | i, size);
        let mut b = vec![0u8; size].into_boxed_slice();
        // SAFETY: `b` holds `size` bytes.
        unsafe { pat.fill(b.as_mut_ptr(), size) };
        objects.push((b, pat));
    }
    for (b, pat) in &objects {
        // SAFETY: as above.
        unsafe { support::assert_pattern(*pat, b.as_ptr(), b.len(), "a fresh object") };
    }
    let kept: Vec<_> = objects.drain(..).step_by(50).collect();
    drop(objects);
    Kept(kept)
}

/// What a worker does after the trim: its kept objects are intact, and it
/// allocates, checks and frees again.
fn check_after_trim(worker: u64, kept: Kept) {
    for (b, pat) in &kept.0 {
        // SAFETY: `b` is live and was filled with `pat`.
        unsafe { support::assert_pattern(*pat, b.as_ptr(), b.len(), "an object kept across a trim") };
    }
    drop(kept);
    let again = fill_cache(worker + 1000);
    drop(again);
}

/// Bytes of objects in all thread caches, as the statistics count them.
fn cached() -> usize {
    let s = scavalloc::stats();
    s.small_cached + s.large_cached
}

fn idle_caches_are_trimmed() -> Result<(), String> {
    let test = "idle_caches_are_trimmed";
    support::as_child(test, |_| {
        const WORKERS: u64 = 16;
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut gos = Vec::new();
        let mut handles = Vec::new();
        for w in 0..WORKERS {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            gos.push(go_tx);
            let ready_tx = ready_tx.clone();
            handles.push(thread::spawn(move || {
                let kept = fill_cache(w);
                ready_tx.send(()).unwrap();
                // Idle: blocked, allocating nothing.
                go_rx.recv().unwrap();
                check_after_trim(w, kept);
            }));
        }
        for _ in 0..WORKERS {
            ready_rx.recv().unwrap();
        }
        let before = scavalloc::stats();
        assert!(before.cache_trim.available, "membarrier works here, but trimming says it does not");
        assert!(
            before.cache_trim.held >= WORKERS as usize * 4096,
            "the workers' caches hold only {} bytes",
            before.cache_trim.held
        );
        let idle_before = before.cache_trim.trimmed_idle;
        let trimmed = support::wait_until(Duration::from_secs(60), || {
            let s = scavalloc::stats();
            s.cache_trim.trimmed_idle >= idle_before + WORKERS && s.cache_trim.held == 0
        });
        let after = scavalloc::stats();
        assert!(
            trimmed,
            "after a minute: {} idle caches trimmed (want {WORKERS} more than {idle_before}), {} bytes still \
             held; {} refused",
            after.cache_trim.trimmed_idle, after.cache_trim.held, after.cache_trim.refused
        );
        assert!(
            after.cache_trim.trimmed_bytes >= before.cache_trim.held as u64,
            "trimmed {} bytes in all, but the caches held {}",
            after.cache_trim.trimmed_bytes,
            before.cache_trim.held
        );
        assert_eq!(cached(), 0, "objects still counted in thread caches after every cache was trimmed");
        for go in gos {
            go.send(()).unwrap();
        }
        for h in handles {
            h.join().expect("a worker failed after its cache was trimmed");
        }
    });
    let out = support::run_child_env(test, "idle", &[], Duration::from_secs(120));
    if out.completed() {
        Ok(())
    } else {
        Err(format!("child failed: {:?}\n{}\n{}", out.status, out.stdout, out.stderr))
    }
}

fn busy_caches_over_the_budget_are_trimmed() -> Result<(), String> {
    let test = "busy_caches_over_the_budget_are_trimmed";
    const BUDGET: usize = 128 << 10;
    support::as_child(test, |_| {
        const WORKERS: u64 = 8;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let stop = stop.clone();
                let ready_tx = ready_tx.clone();
                thread::spawn(move || {
                    let kept = fill_cache(w);
                    ready_tx.send(()).unwrap();
                    // Busy: a small object allocated, written, checked and
                    // freed over and over (its cache is used all the time,
                    // so it is never idle), yielding now and then.
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let b = Box::new([n; 2]);
                        assert_eq!(std::hint::black_box(&b)[1], n);
                        drop(b);
                        n += 1;
                        if n.is_multiple_of(256) {
                            thread::yield_now();
                        }
                    }
                    check_after_trim(w, kept);
                })
            })
            .collect();
        for _ in 0..WORKERS {
            ready_rx.recv().unwrap();
        }
        let start = scavalloc::stats().cache_trim;
        assert_eq!(start.budget, BUDGET, "SCAVALLOC_CACHE_BUDGET was not read");
        // Eight caches of hundreds of objects each: over the budget.
        assert!(start.held > BUDGET, "the caches hold {} bytes, not over the budget of {BUDGET}", start.held);
        let within = support::wait_until(Duration::from_secs(60), || {
            let t = scavalloc::stats().cache_trim;
            t.trimmed_budget > start.trimmed_budget && t.held <= BUDGET
        });
        let t = scavalloc::stats().cache_trim;
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().expect("a busy worker failed after its cache was trimmed");
        }
        assert!(
            within,
            "after a minute: {} caches trimmed over the budget (was {}), {} bytes held against a budget of {BUDGET}",
            t.trimmed_budget, start.trimmed_budget, t.held
        );
    });
    let budget = format!("{}KiB", BUDGET >> 10);
    let out = support::run_child_env(
        test,
        "budget",
        &[("SCAVALLOC_CACHE_BUDGET", budget.as_str())],
        Duration::from_secs(120),
    );
    if out.completed() {
        Ok(())
    } else {
        Err(format!("child failed: {:?}\n{}\n{}", out.status, out.stdout, out.stderr))
    }
}

fn release_all_trims_every_cache() -> Result<(), String> {
    let test = "release_all_trims_every_cache";
    support::as_child(test, |_| {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let worker = thread::spawn(move || {
            let kept = fill_cache(7);
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            check_after_trim(7, kept);
        });
        ready_rx.recv().unwrap();
        assert!(cached() > 0, "the worker's cache holds nothing");
        // No scavenger runs here (`SCAVALLOC_BACKGROUND=0`): only
        // `release_all` can empty the worker's cache. It trims every cache
        // whose thread is outside it; the worker may still be finishing its
        // `send` when we get here, so it is given a few tries.
        let emptied = support::wait_until(Duration::from_secs(10), || {
            scavalloc::release_all();
            scavalloc::stats().cache_trim.held == 0
        });
        let s = scavalloc::stats();
        assert!(emptied, "bytes left in thread caches after release_all: {:?}", s.cache_trim);
        assert_eq!(cached(), 0);
        go_tx.send(()).unwrap();
        worker.join().expect("the worker failed after release_all trimmed its cache");
    });
    let out = support::run_child_env(test, "release_all", &[("SCAVALLOC_BACKGROUND", "0")], Duration::from_secs(60));
    if out.completed() {
        Ok(())
    } else {
        Err(format!("child failed: {:?}\n{}\n{}", out.status, out.stdout, out.stderr))
    }
}

/// Why this machine cannot trim caches, if it cannot: asked of the kernel
/// directly (an allocator that stopped trimming must fail here, not be
/// ignored).
fn kernel_cannot_trim() -> Option<String> {
    const QUERY: libc::c_int = 0;
    const PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    // SAFETY: `membarrier(MEMBARRIER_CMD_QUERY)` touches no memory.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, QUERY, 0) };
    if r < 0 {
        return Some(format!("membarrier(2) is not available: {}", std::io::Error::last_os_error()));
    }
    (r & PRIVATE_EXPEDITED == 0).then(|| "membarrier(2) lacks MEMBARRIER_CMD_PRIVATE_EXPEDITED".to_string())
}

fn main() {
    let args = Arguments::from_args();
    let cannot = kernel_cannot_trim();
    if let Some(why) = &cannot {
        println!("cache_trim: ignored: {why}");
    }
    let trial = |name: &'static str, f: fn() -> Result<(), String>| {
        Trial::test(name, move || f().map_err(Into::into)).with_ignored_flag(cannot.is_some())
    };
    let trials = vec![
        trial("idle_caches_are_trimmed", idle_caches_are_trimmed),
        trial("busy_caches_over_the_budget_are_trimmed", busy_caches_over_the_budget_are_trimmed),
        trial("release_all_trims_every_cache", release_all_trims_every_cache),
    ];
    libtest_mimic::run(&args, trials).exit();
}
