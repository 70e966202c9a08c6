//! The retained window learns from the program (see `scavenge/window.rs`):
//! memory that the scavenger gives back after a burst and the next burst
//! takes back soon after lengthens it; a single burst followed by idle
//! leaves it at its one-second base; memory pressure (here through
//! systemd's protocol, a FIFO the test writes to) resets it.
//!
//! Each case runs in a child process, so that it starts from a fresh
//! allocator. Every wait is on a condition, with a bound.

mod support;

use std::io::Write as _;
use std::time::Duration;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const MIB: usize = 1 << 20;
const BURST: usize = 64 * MIB;
const BASE_NS: u64 = 1_000_000_000;

/// Bytes given back for the retained goal so far: whole runs by the
/// background thread and the heap's growth, and deep release.
fn released_for_the_goal() -> usize {
    let s = scavalloc::stats();
    s.released_background + s.released_eager + s.released_deep
}

/// Bursts of `BURST` bytes, each freed but for one object in ten (the
/// first nine tenths in allocation order, so whole spans come free), until
/// the window has learned from one burst taking back what the scavenger
/// released after the one before; at most six bursts. Each next burst
/// starts as soon as the scavenger has given back half of the last one's
/// frees. Returns the survivors.
fn bursts_until_the_window_learns() -> Vec<Box<[u8]>> {
    let mut kept = Vec::new();
    for round in 0..6 {
        let mut objects = support::burst(BURST);
        objects.drain(..objects.len() / 10 * 9);
        kept.extend(objects);
        scavalloc::flush_thread_cache();
        if scavalloc::stats().retained_window.reused_episodes > 0 {
            return kept;
        }
        let before = released_for_the_goal();
        let released =
            support::wait_until(Duration::from_secs(60), || released_for_the_goal() >= before + BURST / 2 * 9 / 10);
        assert!(released, "round {round}: the burst's frees were never given back: {:?}", scavalloc::stats());
    }
    let learned =
        support::wait_until(Duration::from_secs(10), || scavalloc::stats().retained_window.reused_episodes > 0);
    assert!(learned, "six bursts that took back what was released taught nothing: {:?}", window());
    kept
}

fn window() -> scavalloc::WindowStats {
    scavalloc::stats().retained_window
}

fn assert_intact(kept: &[Box<[u8]>]) {
    for o in kept {
        assert!(o.iter().all(|&b| b == o[0]), "a live object changed");
    }
}

#[test]
fn released_memory_taken_back_lengthens_the_window() {
    let test = "released_memory_taken_back_lengthens_the_window";
    support::as_child(test, |_| {
        let kept = bursts_until_the_window_learns();
        let w = window();
        assert!(w.learned_ns > BASE_NS, "reuse seen, but the window did not grow: {w:?}");
        assert!(w.learned_ns <= w.max_ns, "{w:?}");
        assert_eq!(w.max_ns, 30 * BASE_NS, "the default bound");
        assert!(w.refaulted >= BURST / 4, "the reuse that taught it is counted: {w:?}");
        assert_eq!(w.resets, 0, "no pressure, no limit: {w:?}");
        assert_intact(&kept);
        println!("window: {w:?}");
    });
    support::run_case(test, "", &[("SCAVALLOC_MEMLIMIT", "off")], Duration::from_secs(180));
}

#[test]
fn a_single_burst_keeps_the_base_window() {
    let test = "a_single_burst_keeps_the_base_window";
    support::as_child(test, |_| {
        let mut objects = support::burst(BURST);
        objects.drain(..objects.len() / 10 * 9);
        scavalloc::flush_thread_cache();
        // The release comes one base window after the burst, and is judged
        // unused a horizon (3 s) after the last of it.
        let judged = support::wait_until(Duration::from_secs(60), || window().unused_episodes > 0);
        let w = window();
        assert!(judged, "the release after the burst was never judged: {w:?}, {:?}", scavalloc::stats());
        assert_eq!(w.reused_episodes, 0, "{w:?}");
        assert_eq!(w.learned_ns, BASE_NS, "{w:?}");
        assert_eq!(w.window_ns, BASE_NS, "{w:?}");
        assert!(released_for_the_goal() >= BURST / 2, "the burst's frees went back: {:?}", scavalloc::stats());
        assert_intact(&objects);
    });
    support::run_case(test, "", &[("SCAVALLOC_MEMLIMIT", "off")], Duration::from_secs(120));
}

#[test]
fn pressure_resets_a_lengthened_window() {
    let test = "pressure_resets_a_lengthened_window";
    support::as_child(test, |_| {
        let kept = bursts_until_the_window_learns();
        let s = scavalloc::stats();
        assert_eq!(s.container.pressure_source, scavalloc::PressureSource::Systemd, "{:?}", s.container);
        assert!(s.retained_window.learned_ns > BASE_NS, "{:?}", s.retained_window);
        let events = s.container.pressure_events;
        // What a service manager does under pressure: write to the FIFO.
        let fifo = std::env::var("MEMORY_PRESSURE_WATCH").unwrap();
        std::fs::OpenOptions::new().write(true).open(&fifo).unwrap().write_all(b"pressure").ok();
        let reset = support::wait_until(Duration::from_secs(30), || {
            let s = scavalloc::stats();
            s.container.pressure_events > events && s.retained_window.resets > 0 && s.released_pressure > 0
        });
        let s = scavalloc::stats();
        assert!(
            reset,
            "pressure did not reset the window and release: {:?}, {:?}, {} bytes",
            s.container, s.retained_window, s.released_pressure
        );
        // The next tick without pressure learns afresh from the base.
        assert_eq!(s.retained_window.learned_ns, BASE_NS, "{:?}", s.retained_window);
        assert_intact(&kept);
    });
    let fifo = std::env::temp_dir().join(format!("scavalloc-window-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `path` is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo {}", fifo.display());
    let out = support::run_child_env(
        test,
        "",
        &[("SCAVALLOC_MEMLIMIT", "off"), ("MEMORY_PRESSURE_WATCH", fifo.to_str().unwrap())],
        Duration::from_secs(180),
    );
    let _ = std::fs::remove_file(&fifo);
    println!("{}", out.stdout);
    out.assert_completed();
}
