//! Model checks of the heap lock (`sync::Mutex`): mutual
//! exclusion, and no lost wake-up in its three-state futex protocol (a lost
//! wake-up would leave a waiter asleep forever, which loom reports as a
//! deadlock).
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use scavalloc::testing::Mutex;
use scavalloc_loom_tests::model;

#[test]
fn two_threads_increment_under_the_lock() {
    model(|| {
        let counter = Arc::new(Mutex::new(UnsafeCell::new(0usize)));
        let other = {
            let counter = counter.clone();
            thread::spawn(move || {
                let guard = counter.lock();
                // SAFETY: the guard gives this thread exclusive access; loom
                // checks that no other access overlaps.
                guard.with_mut(|p| unsafe { *p += 1 });
            })
        };
        {
            let guard = counter.lock();
            // SAFETY: as above.
            guard.with_mut(|p| unsafe { *p += 1 });
        }
        other.join().unwrap();
        let guard = counter.lock();
        // SAFETY: both writers have finished.
        assert_eq!(guard.with(|p| unsafe { *p }), 2);
    });
}

#[test]
fn three_threads_contend_and_all_finish() {
    model(|| {
        let counter = Arc::new(Mutex::new(UnsafeCell::new(0usize)));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let counter = counter.clone();
                thread::spawn(move || {
                    let guard = counter.lock();
                    // SAFETY: exclusive under the guard; loom checks it.
                    guard.with_mut(|p| unsafe { *p += 1 });
                })
            })
            .collect();
        {
            let guard = counter.lock();
            // SAFETY: as above.
            guard.with_mut(|p| unsafe { *p += 1 });
        }
        for h in handles {
            h.join().unwrap();
        }
        let guard = counter.lock();
        // SAFETY: every writer has finished.
        assert_eq!(guard.with(|p| unsafe { *p }), 3);
    });
}

#[test]
fn try_lock_fails_while_held() {
    model(|| {
        let m = Arc::new(Mutex::new(UnsafeCell::new(0usize)));
        let held = m.lock();
        let other = {
            let m = m.clone();
            thread::spawn(move || m.try_lock().is_none())
        };
        let refused = other.join().unwrap();
        drop(held);
        assert!(refused);
        assert!(m.try_lock().is_some());
    });
}
