//! Objects go home: an object freed by a thread other than the one whose
//! span it came from, while that thread still owns the span (hands out its
//! objects), is not handed out again by the freeing thread, so two threads
//! are never handed objects that share a cache line (passive false
//! sharing).

use std::alloc::{alloc, dealloc, Layout};
use std::collections::HashSet;
use std::sync::mpsc;
use std::thread;

use scavalloc::testing::{class_objects, home_capacity, object_is_free, size_to_class, span_is_owned};

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const LINE: usize = 64;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// The cache lines `[addr, addr + size)` touches.
fn lines(addr: usize, size: usize) -> impl Iterator<Item = usize> {
    addr / LINE..=(addr + size - 1) / LINE
}

/// Allocates objects of `size` bytes, at most `bound` of them, until
/// `wanted` of those taken lie in spans whose ownership is `owned` (a
/// thread cache owns them now, or not); returns everything taken (all
/// checked not null) and those. The caller frees them all.
fn allocate_until(size: usize, bound: usize, wanted: usize, owned: bool) -> (Vec<usize>, Vec<usize>) {
    let mut taken = Vec::new();
    let mut chosen = Vec::new();
    for _ in 0..bound {
        // SAFETY: a valid, non-zero layout; the caller frees the object with
        // the same layout.
        taken.push(unsafe { alloc(layout(size)) } as usize);
        chosen = taken.iter().copied().filter(|&p| span_is_owned(p) == owned).collect();
        if chosen.len() >= wanted {
            break;
        }
    }
    assert!(taken.iter().all(|&p| p != 0));
    (taken, chosen)
}

/// The passive false-sharing pattern, for one size: a producer thread
/// allocates a few objects next to each other (from the span it owns) and
/// hands them to a worker; the worker frees them, then allocates. The
/// worker must get none of them back and nothing on their cache lines;
/// once the worker's cache is flushed, they are back in their spans.
/// Allocates and frees an object of a class other than `size`'s every
/// millisecond until `rx` receives: the thread's cache is in use, never
/// idle (so never trimmed), and `size`'s class is left alone.
fn stay_busy_until(rx: &mpsc::Receiver<()>, size: usize) {
    let other = if size == 96 { 128 } else { 96 };
    while rx.try_recv().is_err() {
        // SAFETY: a non-zero size; freed at once with the same layout.
        unsafe {
            let p = alloc(layout(other));
            assert!(!p.is_null());
            dealloc(p, layout(other));
        }
        thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The two tests here, one at a time: objects another test's threads free
/// and allocate meanwhile would move between spans under our checks.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_size(size: usize) {
    // Fewer than the worker's buffer of objects on their way home holds,
    // so that they are still on their way when it allocates; the producer
    // keeps as many again live, next to them.
    // All of them in the one span the producer owns: at most half its
    // objects each.
    let class = size_to_class(size).unwrap();
    let handed_count = 4.min(home_capacity(class) - 1).min(class_objects(class) / 2);
    if handed_count == 0 {
        return;
    }
    let (to_worker, worker_rx) = mpsc::channel::<Vec<usize>>();
    let (to_producer, producer_rx) = mpsc::channel::<()>();
    let producer = thread::spawn(move || {
        // Objects of the span the producer owns (it hands out their
        // neighbours): allocate until enough of those it took are still in
        // it (a span taken over with few free objects runs out and is given
        // up on the way; within 64 spans' worth the producer takes over one
        // with room, at the latest a new one); the others are freed at the
        // end.
        let (taken, mut objects) = allocate_until(size, 64 * class_objects(class) + 64, 2 * handed_count, true);
        assert!(objects.len() >= 2 * handed_count, "{size} B: the producer owns no span of its objects");
        objects.truncate(2 * handed_count);
        let kept = objects.split_off(handed_count);
        let others: Vec<usize> = taken.into_iter().filter(|p| !objects.contains(p) && !kept.contains(p)).collect();
        to_worker.send([objects.clone(), kept.clone()].concat()).unwrap();
        // Wait until the worker has freed them and flushed its cache,
        // using the allocator meanwhile (objects of another class): a
        // thread idle for a second has its cache trimmed and its span
        // given up, after which the worker could rightly be handed that
        // span's objects, next to the ones this thread keeps.
        stay_busy_until(&producer_rx, size);
        // They went home: free in their spans, in no thread's cache.
        for &p in &objects {
            assert!(object_is_free(p), "{size} B: {p:#x}, freed by the worker, did not go back to its span");
        }
        for p in kept.into_iter().chain(others) {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { dealloc(p as *mut u8, layout(size)) };
        }
    });
    let mut handed = worker_rx.recv().unwrap();
    let kept = handed.split_off(handed_count);
    let worker = thread::spawn(move || {
        let busy_lines: HashSet<usize> = handed.iter().chain(&kept).flat_map(|&p| lines(p, size)).collect();
        for &p in &handed {
            // SAFETY: allocated by the producer with this layout, freed once.
            unsafe { dealloc(p as *mut u8, layout(size)) };
        }
        // The worker's own objects: none of the freed ones, nothing on
        // their cache lines.
        // SAFETY: as above; freed below.
        let fresh: Vec<usize> = (0..2 * handed_count).map(|_| unsafe { alloc(layout(size)) } as usize).collect();
        for &p in &fresh {
            assert_ne!(p, 0);
            assert!(!handed.contains(&p), "{size} B: the worker was handed back {p:#x}, which it had just freed");
            assert!(
                lines(p, size).all(|l| !busy_lines.contains(&l)),
                "{size} B: the worker was handed {p:#x}, on a cache line of an object the producer handed out"
            );
        }
        for p in fresh {
            // SAFETY: allocated above with this layout.
            unsafe { dealloc(p as *mut u8, layout(size)) };
        }
        // Send the freed objects home now (the thread's exit would too).
        scavalloc::flush_thread_cache();
    });
    worker.join().expect("worker");
    to_producer.send(()).unwrap();
    producer.join().expect("producer");
}

#[test]
fn a_freeing_thread_does_not_reuse_another_threads_objects() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for size in [8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 2048, 4096, 8192, 32768] {
        one_size(size);
    }
}

/// The same once the producer has moved on: objects of a span it used up
/// and gave up (no thread owns it now) still go home when another thread
/// frees them, instead of being handed out again by that thread next to
/// the producer's other objects.
fn after_the_span_is_given_up(size: usize) {
    let class = size_to_class(size).unwrap();
    let handed_count = 4.min(home_capacity(class) - 1).min(class_objects(class));
    let (to_worker, worker_rx) = mpsc::channel::<Vec<usize>>();
    let (done, producer_rx) = mpsc::channel::<()>();
    let producer = thread::spawn(move || {
        // Allocate until some objects lie in a span the producer no longer
        // owns (it ran out and the producer took another).
        let (mut taken, mut given_up) = allocate_until(size, 4 * class_objects(class) + 64, handed_count, false);
        assert!(given_up.len() >= handed_count, "{size} B: the producer never gave a span up");
        given_up.truncate(handed_count);
        to_worker.send(given_up.clone()).unwrap();
        taken.retain(|p| !given_up.contains(p));
        // Live, and busy (see `stay_busy_until`), until the worker is done,
        // as a thread that hands objects out would be.
        stay_busy_until(&producer_rx, size);
        taken
    });
    let handed = worker_rx.recv().unwrap();
    let worker = thread::spawn(move || {
        for &p in &handed {
            // SAFETY: allocated by the producer with this layout, freed once.
            unsafe { dealloc(p as *mut u8, layout(size)) };
        }
        // SAFETY: as above; freed below.
        let fresh: Vec<usize> = (0..2 * handed_count).map(|_| unsafe { alloc(layout(size)) } as usize).collect();
        for &p in &fresh {
            assert_ne!(p, 0);
            assert!(!handed.contains(&p), "{size} B: the worker was handed back {p:#x}, which it had just freed");
        }
        for p in fresh {
            // SAFETY: allocated above with this layout.
            unsafe { dealloc(p as *mut u8, layout(size)) };
        }
    });
    worker.join().expect("worker");
    done.send(()).unwrap();
    for p in producer.join().expect("producer") {
        // SAFETY: allocated by the producer with this layout, freed once.
        unsafe { dealloc(p as *mut u8, layout(size)) };
    }
}

#[test]
fn objects_of_a_span_given_up_still_go_home() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for size in [8, 16, 48, 64, 256, 1024, 4096, 16384] {
        after_the_span_is_given_up(size);
    }
}
