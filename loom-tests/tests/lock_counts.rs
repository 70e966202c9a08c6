//! Model checks of the lock's counters (`sync::Mutex`): they are updated
//! with a plain load and store rather than a read-modify-write, which is
//! right only because the lock orders their writers. Here no interleaving
//! may lose an acquisition, count an uncontended one as contended, or let
//! a reader without the lock see a figure that goes backwards.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use scavalloc::testing::Mutex;
use scavalloc_loom_tests::model;

#[test]
fn every_acquisition_is_counted_once() {
    model(|| {
        let m = Arc::new(Mutex::new(()));
        let other = {
            let m = m.clone();
            thread::spawn(move || drop(m.lock()))
        };
        let reader = {
            let m = m.clone();
            thread::spawn(move || {
                // Without the lock: a figure may be old, never ahead of
                // the acquisitions made or going backwards.
                let first = m.lock_stats();
                let second = m.lock_stats();
                assert!(first.acquisitions <= second.acquisitions && second.acquisitions <= 2);
                assert!(first.contended <= second.contended && second.contended <= 1);
            })
        };
        drop(m.lock());
        other.join().unwrap();
        reader.join().unwrap();
        let s = m.lock_stats();
        assert_eq!(s.acquisitions, 2);
        // At most one of the two found the lock held.
        assert!(s.contended <= 1);
        // Loom has no clock: a wait counts as 0 ns there.
        assert_eq!(s.wait_ns, 0);
    });
}

#[test]
fn try_lock_counts_only_what_it_takes() {
    model(|| {
        let m = Arc::new(Mutex::new(()));
        let held = m.lock();
        let other = {
            let m = m.clone();
            thread::spawn(move || m.try_lock().is_some())
        };
        let took = other.join().unwrap();
        drop(held);
        assert!(!took);
        drop(m.try_lock().expect("the lock is free"));
        let s = m.lock_stats();
        assert_eq!((s.acquisitions, s.contended), (2, 0));
    });
}
