//! The lock figures of `stats()` through the allocator: refilling thread
//! caches takes the class locks, making spans takes the heap lock, and the
//! exit summary prints both groups.
//!
//! Other threads (the harness's, the scavenger) may take the same locks
//! while a test runs, so the checks are lower bounds on what the workload
//! itself must have caused, each chosen well above what the two `stats()`
//! snapshots add by themselves. With counting removed every figure stays 0
//! and each check fails.

mod support;

use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;

use scavalloc::testing::{bin_capacity, class_objects, size_to_class, NUM_CLASSES};
use scavalloc::Scavalloc;

#[global_allocator]
static GLOBAL: Scavalloc = Scavalloc;

const MIB: usize = 1 << 20;

/// Allocates `count` objects of `size` bytes, writes each, and returns them.
fn allocate(size: usize, count: usize) -> Vec<*mut u8> {
    let layout = Layout::from_size_align(size, 8).unwrap();
    (0..count)
        .map(|i| {
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { GLOBAL.alloc(layout) };
            assert!(!p.is_null());
            // SAFETY: `p` is a fresh block of `size` bytes.
            unsafe { p.write_volatile(i as u8) };
            p
        })
        .collect()
}

fn free(size: usize, objects: Vec<*mut u8>) {
    let layout = Layout::from_size_align(size, 8).unwrap();
    for p in objects {
        // SAFETY: `p` came from `allocate` with this layout and is freed once.
        unsafe { GLOBAL.dealloc(p, layout) };
    }
}

/// A thread cache takes at most one span's objects, or one cache bin's, per
/// trip to its class's central list; so allocating `REFILLS` times that
/// many objects must take the class lock at least `REFILLS` times.
#[test]
fn refilling_thread_caches_counts_class_lock_acquisitions() {
    const SIZE: usize = 48;
    const REFILLS: usize = 400;
    // A snapshot takes each class lock once, to count the class: the
    // workload's bound must be out of reach of the two snapshots alone.
    const { assert!(REFILLS > 2 * NUM_CLASSES) };
    let class = size_to_class(SIZE).unwrap();
    let per_refill = bin_capacity(class).max(class_objects(class));
    let before = scavalloc::stats();
    let objects = allocate(SIZE, REFILLS * per_refill);
    let after = scavalloc::stats();
    free(SIZE, objects);
    let taken = after.class_locks.acquisitions - before.class_locks.acquisitions;
    assert!(
        taken >= REFILLS as u64,
        "{} objects of {SIZE} bytes ({per_refill} a refill at most) took the class locks {taken} times: {:?} -> {:?}",
        REFILLS * per_refill,
        before.class_locks,
        after.class_locks
    );
    assert!(after.class_locks.contended <= after.class_locks.acquisitions);
}

/// Spans come from the page heap under its lock. However the pages reach a
/// thread (a page cache may take many spans' worth a trip), 32 MiB of new
/// spans need more than a few trips: at least one per 4 MiB is asked here.
#[test]
fn making_spans_counts_heap_lock_acquisitions() {
    const SIZE: usize = 1024;
    const BYTES: usize = 32 * MIB;
    const BYTES_PER_TRIP: usize = 4 * MIB;
    let before = scavalloc::stats();
    let objects = allocate(SIZE, BYTES / SIZE);
    let after = scavalloc::stats();
    free(SIZE, objects);
    // Spans made for the objects (the other test's spans only add).
    let made = after.small_spans.saturating_sub(before.small_spans);
    assert!(made >= BYTES / 2, "only {made} bytes of spans were made for {BYTES} bytes of objects");
    let taken = after.heap_lock.acquisitions - before.heap_lock.acquisitions;
    // The first snapshot's own acquisition is in `taken`: one more.
    let least = (made / BYTES_PER_TRIP) as u64 + 1;
    assert!(
        taken >= least,
        "{made} bytes of new spans took the heap lock {taken} times (at least {least} expected): {:?} -> {:?}",
        before.heap_lock,
        after.heap_lock
    );
    assert!(after.heap_lock.contended <= after.heap_lock.acquisitions);
}

/// The exit summary (`SCAVALLOC_STATS=1`) has one line for each lock group,
/// with acquisitions that are not zero in a process that allocated.
#[test]
fn exit_summary_prints_lock_figures() {
    let test = "exit_summary_prints_lock_figures";
    support::as_child(test, |_| {
        let objects = allocate(64, 10_000);
        free(64, objects);
    });
    let out = support::run_child_env(test, "summary", &[("SCAVALLOC_STATS", "1")], Duration::from_secs(60));
    out.assert_completed();
    for group in ["heap lock", "class locks"] {
        let line = out
            .stderr
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{group}: ")))
            .unwrap_or_else(|| panic!("no `{group}` line in the exit summary:\n{}", out.stderr));
        let acquisitions: u64 = line
            .trim_start()
            .strip_prefix(&format!("{group}: "))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no acquisition count in {line:?}"));
        assert!(acquisitions > 0, "{line}");
        for part in ["contended (", "%), waited ", " ms in all, ", " ns mean"] {
            assert!(line.contains(part), "{part:?} missing from {line:?}");
        }
    }
}
