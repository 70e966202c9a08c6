//! The hardened mode of the Rust API (`SCAVALLOC_CHECK=1`): every
//! `dealloc` is checked at the free itself against the span's out-of-band
//! state and the layout, so a double free whose first free went to the
//! thread cache, a double free across threads, an interior pointer and a
//! layout of the wrong class all stop the process at once with one line,
//! before the object can be handed out twice. A correct program runs to the
//! end in this mode.
//!
//! Each case runs in a child process (this binary re-executed with the
//! variable set). The child prints the address it is about to free, then
//! commits the fault; it never flushes its cache, so only the check at the
//! free can catch it. The parent checks that the child died of SIGABRT and
//! that stderr is exactly one `scavalloc: fatal:` line naming the address
//! and the fault.

use std::alloc::{alloc as std_alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

mod support;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const CHECK_ON: &[(&str, &str)] = &[("SCAVALLOC_CHECK", "1")];

/// `std::alloc::alloc`, with the result hidden from the optimiser: the
/// compiler may otherwise drop an allocation that is only freed, and with
/// it the free a case depends on.
///
/// # Safety
///
/// As for `std::alloc::alloc`.
unsafe fn alloc(l: Layout) -> *mut u8 {
    // SAFETY: forwarded.
    black_box(unsafe { std_alloc(l) })
}

fn announce(p: *const u8) {
    println!("FREEING {:#x}", p as usize);
    std::io::stdout().flush().unwrap();
}

/// Runs `case` in a child of `test` with `envs` and checks that it stopped
/// at the fault with one line that names the announced address and says
/// `what`.
fn expect_fatal(test: &str, case: &str, envs: &[(&str, &str)], what: &str) {
    let out = support::run_child_env(test, case, envs, Duration::from_secs(60));
    support::assert_fatal(&out, what);
}

/// The child side of `test`, through [`support::as_child`]: with core
/// dumps off, runs `fault` for the case (it must not return) and, if the
/// process is still alive, says so before the child ends as completed,
/// which the parent, waiting for SIGABRT, does not accept. In the parent
/// it returns at once.
fn fault_child(test: &str, fault: impl FnOnce(&str)) {
    support::as_child(test, |case| {
        support::no_core_dumps();
        fault(case);
        // Straight to the descriptor: formatting or a buffer could
        // allocate, and an allocator that missed the fault may then trip
        // over it here, which would pass for a check at the free.
        // SAFETY: writes a static buffer to stdout.
        unsafe { libc::write(1, b"SURVIVED\n".as_ptr().cast(), 9) };
    });
}

/// `free(a); free(b); free(a)`: the second free of `a` is not on top of
/// the cache's stack, so only the out-of-band check can see it.
#[test]
fn double_free_behind_another_free() {
    fault_child("double_free_behind_another_free", |_| {
        let l = Layout::from_size_align(48, 8).unwrap();
        // SAFETY: the third free is the deliberate fault.
        unsafe {
            let (a, b) = (alloc(l), alloc(l));
            assert!(!a.is_null() && !b.is_null());
            announce(a);
            dealloc(a, l);
            dealloc(b, l);
            dealloc(a, l);
        }
    });
    expect_fatal("double_free_behind_another_free", "aba", CHECK_ON, "double free");
}

#[test]
fn box_freed_twice() {
    fault_child("box_freed_twice", |_| {
        let p = black_box(Box::into_raw(Box::new([7u64; 4])));
        let other = black_box(Box::new([1u64; 4]));
        // SAFETY: the second `from_raw` is the deliberate fault.
        unsafe {
            announce(p.cast());
            drop(Box::from_raw(p));
            drop(other);
            drop(Box::from_raw(p));
        }
    });
    expect_fatal("box_freed_twice", "box", CHECK_ON, "double free");
}

/// The first free runs on one thread (the object lands in its cache), the
/// second on another.
#[test]
fn double_free_across_threads() {
    fault_child("double_free_across_threads", |_| {
        let l = Layout::from_size_align(200, 16).unwrap();
        // SAFETY: a fresh object, freed once here.
        let p = unsafe { alloc(l) } as usize;
        assert!(p != 0);
        announce(p as *const u8);
        // SAFETY: the first free.
        std::thread::spawn(move || unsafe { dealloc(p as *mut u8, l) }).join().unwrap();
        // The second free runs on a thread that stays alive, so that its
        // cache is never flushed: only a check at the free can see it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: the deliberate fault: `p` was freed on the other thread.
            unsafe { dealloc(p as *mut u8, l) };
            tx.send(()).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap();
    });
    expect_fatal("double_free_across_threads", "threads", CHECK_ON, "double free");
}

#[test]
fn interior_pointer_at_8() {
    fault_child("interior_pointer_at_8", |_| {
        let l = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: the free of an interior pointer is the deliberate fault.
        unsafe {
            let p = alloc(l);
            assert!(!p.is_null());
            announce(p.add(8));
            dealloc(p.add(8), l);
        }
    });
    expect_fatal("interior_pointer_at_8", "interior8", CHECK_ON, "interior pointer");
}

/// Half way into a 1024-byte object, with an aligned layout (not the
/// inlined fast path's kind).
#[test]
fn interior_pointer_at_half_an_object() {
    fault_child("interior_pointer_at_half_an_object", |_| {
        let l = Layout::from_size_align(1024, 64).unwrap();
        // SAFETY: the free of an interior pointer is the deliberate fault.
        unsafe {
            let p = alloc(l);
            assert!(!p.is_null());
            announce(p.add(512));
            dealloc(p.add(512), l);
        }
    });
    expect_fatal("interior_pointer_at_half_an_object", "interior-half", CHECK_ON, "interior pointer");
}

/// Freed with a layout of another class than it was allocated with.
#[test]
fn dealloc_with_a_wrong_class_layout() {
    fault_child("dealloc_with_a_wrong_class_layout", |_| {
        // SAFETY: the mismatched free is the deliberate fault.
        unsafe {
            let p = alloc(Layout::from_size_align(48, 8).unwrap());
            assert!(!p.is_null());
            announce(p);
            dealloc(p, Layout::from_size_align(200, 8).unwrap());
        }
    });
    expect_fatal("dealloc_with_a_wrong_class_layout", "wrong-class", CHECK_ON, "layout mismatch");
}

/// A small object freed with a large layout, and a large one with a small
/// layout.
#[test]
fn dealloc_with_a_layout_of_the_other_kind() {
    fault_child("dealloc_with_a_layout_of_the_other_kind", |case| {
        let (small, large) = (Layout::from_size_align(100, 8).unwrap(), Layout::from_size_align(100_000, 8).unwrap());
        let (allocated, freed) = match case {
            "small-as-large" => (small, large),
            "large-as-small" => (large, small),
            _ => panic!("no case {case}"),
        };
        // SAFETY: the mismatched free is the deliberate fault.
        unsafe {
            let p = alloc(allocated);
            assert!(!p.is_null());
            announce(p);
            dealloc(p, freed);
        }
    });
    expect_fatal("dealloc_with_a_layout_of_the_other_kind", "small-as-large", CHECK_ON, "layout mismatch");
    expect_fatal("dealloc_with_a_layout_of_the_other_kind", "large-as-small", CHECK_ON, "layout mismatch");
}

#[test]
fn large_object_freed_twice() {
    fault_child("large_object_freed_twice", |_| {
        let l = Layout::from_size_align(100_000, 8).unwrap();
        // SAFETY: the second free is the deliberate fault.
        unsafe {
            let p = alloc(l);
            assert!(!p.is_null());
            announce(p);
            dealloc(p, l);
            dealloc(p, l);
        }
    });
    expect_fatal("large_object_freed_twice", "large", CHECK_ON, "double free");
}

/// `realloc` of an object already freed (its class stays the same, so
/// without the check nothing would even be moved).
#[test]
fn realloc_after_free() {
    fault_child("realloc_after_free", |_| {
        let l = Layout::from_size_align(40, 8).unwrap();
        // SAFETY: the realloc of a freed object is the deliberate fault.
        unsafe {
            let p = alloc(l);
            assert!(!p.is_null());
            let q = alloc(l);
            announce(p);
            dealloc(p, l);
            dealloc(q, l);
            let r = realloc(p, l, 44);
            black_box(r);
        }
    });
    expect_fatal("realloc_after_free", "realloc-freed", CHECK_ON, "double free");
}

/// A mixed workload that does everything right: small and large objects,
/// every way of allocating, `realloc` across classes and to and from large
/// sizes, frees on other threads, contents checked. With the check on it
/// must run to the end. Then one deliberate double free shows that the
/// check was really on during the workload.
fn correct_workload() {
    let mut rng = support::Rng::new(13);
    let mut live: Vec<(usize, Layout, support::Pattern)> = Vec::new();
    let mut id = 0u64;
    for round in 0..40_000 {
        if live.len() < 2000 && (live.is_empty() || rng.chance(3, 5)) {
            let size = match rng.below(10) {
                0 => rng.range(33_000, 300_000),
                1..=3 => rng.range(1, 64),
                _ => rng.range(1, 4096),
            };
            let align = [1, 8, 16, 64, 4096][rng.below(5)];
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero size.
            let p = unsafe {
                if rng.chance(1, 4) {
                    alloc_zeroed(l)
                } else {
                    alloc(l)
                }
            };
            assert!(!p.is_null());
            id += 1;
            let pat = support::Pattern::new(id, size);
            // SAFETY: `p` holds `size` bytes.
            unsafe { pat.fill(p, size) };
            live.push((p as usize, l, pat));
        } else {
            let i = rng.below(live.len());
            let (p, l, pat) = live.swap_remove(i);
            // SAFETY: a live object holding its pattern.
            unsafe { support::assert_pattern(pat, p as *const u8, l.size(), "before free") };
            if rng.chance(1, 3) {
                let new_size = match rng.below(3) {
                    0 => rng.range(1, 128),
                    1 => rng.range(1, 8192),
                    _ => rng.range(20_000, 200_000),
                };
                // SAFETY: `p` is live with layout `l`.
                let q = unsafe { realloc(p as *mut u8, l, new_size) };
                assert!(!q.is_null());
                let keep = l.size().min(new_size);
                // SAFETY: the first `keep` bytes moved with the object.
                unsafe { support::assert_pattern(pat, q, keep, "after realloc") };
                id += 1;
                let pat = support::Pattern::new(id, new_size);
                // SAFETY: `q` holds `new_size` bytes.
                unsafe { pat.fill(q, new_size) };
                live.push((q as usize, Layout::from_size_align(new_size, l.align()).unwrap(), pat));
            } else if round % 7 == 0 {
                // SAFETY: freed once, on another thread.
                std::thread::spawn(move || unsafe { dealloc(p as *mut u8, l) }).join().unwrap();
            } else {
                // SAFETY: freed once.
                unsafe { dealloc(p as *mut u8, l) };
            }
        }
    }
    for (p, l, pat) in live {
        // SAFETY: live objects, each freed once.
        unsafe {
            support::assert_pattern(pat, p as *const u8, l.size(), "at the end");
            dealloc(p as *mut u8, l);
        }
    }
    // Ordinary collections, which grow and shrink through `realloc`.
    let mut v: Vec<String> = (0..5000).map(|i| format!("string number {i}")).collect();
    v.retain(|s| s.len() % 2 == 0);
    let joined: String = v.concat();
    assert!(joined.len() > 10_000);
    let map: std::collections::HashMap<u32, Vec<u8>> =
        (0..3000).map(|i| (i, vec![i as u8; (i % 300) as usize])).collect();
    assert_eq!(map[&299].len(), 299);
    drop(map);
    scavalloc::release_all();
}

#[test]
fn correct_program_runs_to_the_end() {
    support::as_child("correct_program_runs_to_the_end", |case| {
        assert_eq!(case, "correct");
        correct_workload();
        println!("case correct done");
    });
    let out = support::run_case("correct_program_runs_to_the_end", "correct", CHECK_ON, Duration::from_secs(120));
    assert!(out.contains("case correct done"));
}

#[test]
fn the_check_is_on_during_a_correct_workload() {
    fault_child("the_check_is_on_during_a_correct_workload", |_| {
        correct_workload();
        println!("WORKLOAD DONE");
        let l = Layout::from_size_align(24, 8).unwrap();
        // SAFETY: the third free is the deliberate fault.
        unsafe {
            let (a, b) = (alloc(l), alloc(l));
            announce(a);
            dealloc(a, l);
            dealloc(b, l);
            dealloc(a, l);
        }
    });
    let out = support::run_child_env(
        "the_check_is_on_during_a_correct_workload",
        "workload-then-fault",
        CHECK_ON,
        Duration::from_secs(120),
    );
    assert!(out.stdout.contains("WORKLOAD DONE"), "the workload did not finish: {}\n{}", out.stdout, out.stderr);
    support::assert_fatal(&out, "double free");
}

/// An invalid value gives one warning line and the default (off), and
/// the program goes on.
#[test]
fn an_invalid_value_warns_once_and_goes_on() {
    support::as_child("an_invalid_value_warns_once_and_goes_on", |case| {
        assert_eq!(case, "invalid");
        let v: Vec<Box<u64>> = (0..1000).map(Box::new).collect();
        assert_eq!(v.iter().map(|b| **b).sum::<u64>(), 499_500);
        println!("case invalid done");
    });
    let out = support::run_child_env(
        "an_invalid_value_warns_once_and_goes_on",
        "invalid",
        &[("SCAVALLOC_CHECK", "sometimes")],
        Duration::from_secs(60),
    );
    out.assert_completed();
    assert!(out.stdout.contains("case invalid done"), "{}", out.stdout);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one warning line: {}", out.stderr);
    assert!(
        lines[0].starts_with("scavalloc: warning: SCAVALLOC_CHECK=\"sometimes\" is not valid; using 0"),
        "{}",
        lines[0]
    );
}
