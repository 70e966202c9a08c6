//! Model checks of the scavenger's park/wake protocol (`sync/parker.rs`):
//! a waker that publishes work with relaxed stores (as the page heap's
//! counters are) and then wakes the sleeper only if it sees it parked never
//! leaves the sleeper asleep with work to do (loom reports that as a
//! deadlock), and a sleeper woken or not sleeping always sees the work.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use scavalloc::testing::Parker;
use scavalloc_loom_tests::model;

/// One waker, one sleeper that parks once unless it finds the work.
#[test]
fn a_wake_is_never_lost() {
    model(|| {
        let parker = Arc::new(Parker::new());
        let work = Arc::new(AtomicBool::new(false));
        let waker = {
            let (parker, work) = (parker.clone(), work.clone());
            thread::spawn(move || {
                work.store(true, Ordering::Relaxed);
                if parker.is_parked() {
                    parker.wake();
                }
            })
        };
        // The sleeper parks until there is work (a spurious return just
        // looks again, as the scavenger's loop does).
        while !work.load(Ordering::Relaxed) {
            parker.park_unless(|| work.load(Ordering::Relaxed));
        }
        waker.join().unwrap();
    });
}

/// Two wakers publishing separate work: the sleeper ends up seeing both.
#[test]
fn two_wakers_one_sleeper() {
    model(|| {
        let parker = Arc::new(Parker::new());
        let work = Arc::new(AtomicUsize::new(0));
        let wakers: Vec<_> = (0..2)
            .map(|_| {
                let (parker, work) = (parker.clone(), work.clone());
                thread::spawn(move || {
                    work.fetch_add(1, Ordering::Relaxed);
                    if parker.is_parked() {
                        parker.wake();
                    }
                })
            })
            .collect();
        while work.load(Ordering::Relaxed) < 2 {
            parker.park_unless(|| work.load(Ordering::Relaxed) == 2);
        }
        for w in wakers {
            w.join().unwrap();
        }
    });
}
