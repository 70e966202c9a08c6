//! Peak RSS and time of the larson-style server simulation of
//! `benches/alloc.rs`, with the whole process on one allocator:
//!
//! ```text
//! cargo run --release --example larson_rss -- system    [rounds, default 200]
//! cargo run --release --example larson_rss -- scavalloc [rounds, default 200]
//! ```
//!
//! RSS is per process, so each allocator needs a run of its own. Here the
//! global allocator is a dispatcher that forwards everything (the workload,
//! and the threads, channels and slot arrays around it) to the system
//! allocator or to scavalloc, as a program that installs one of them would.
//!
//! The choice has to be made before the first allocation, and the standard
//! library allocates before `main` runs; reading the arguments through
//! `std::env` would allocate too. So the dispatcher decides on its first
//! call, from the first argument as the kernel holds it in
//! `/proc/self/cmdline`, read with `open`/`read` into a stack buffer
//! (nothing allocated), and keeps the choice in an atomic for the life of
//! the process. Every thread that races to that first call reads the same
//! file and makes the same choice, so every object is freed by the
//! allocator that made it. `main` then checks the arguments and refuses
//! one that the dispatcher would have read differently.
//!
//! It prints the baseline RSS at the start of `main`, the peak RSS
//! (`VmHWM`) and RSS (`VmRSS`) after the run, from `/proc/self/status`, and
//! the time.

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout};
use std::ptr;
use std::sync::mpsc;
use std::time::Instant;

#[path = "support/dispatch.rs"]
mod dispatch;
use dispatch::{Dispatch, SCAVALLOC, SYSTEM};

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;

// ---------------------------------------------------------------------------
// The workload, as in benches/alloc.rs (kept in step with it), run here on
// the global allocator.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// # Safety
///
/// `size` is non-zero.
unsafe fn alloc_touch<A: GlobalAlloc>(a: &A, size: usize) -> *mut u8 {
    let l = layout(size);
    // SAFETY: non-zero size (the caller's promise).
    let p = unsafe { a.alloc(l) };
    if p.is_null() {
        handle_alloc_error(l);
    }
    // SAFETY: `p` is valid for `size >= 1` bytes.
    unsafe { ptr::write_volatile(p, 1) };
    p
}

const THREADS: usize = 4;
const SLOTS: usize = 5000;
const STEPS: usize = 5000;

fn larson_size(rng: &mut Rng) -> usize {
    8 + rng.below(993)
}

fn larson<A: GlobalAlloc + Sync>(a: &A, threads: usize, rounds: usize) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::channel::<Vec<(usize, usize)>>()).unzip();
    std::thread::scope(|scope| {
        for (t, rx) in rxs.into_iter().enumerate() {
            let tx = txs[(t + 1) % threads].clone();
            scope.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let mut slots: Vec<(usize, usize)> = (0..SLOTS)
                    .map(|_| {
                        let s = larson_size(&mut rng);
                        // SAFETY: non-zero size.
                        (unsafe { alloc_touch(a, s) } as usize, s)
                    })
                    .collect();
                for _ in 0..rounds {
                    for _ in 0..STEPS {
                        let i = rng.below(SLOTS);
                        let (p, s) = slots[i];
                        // SAFETY: allocated by `a` with this layout (here or
                        // in another thread), freed once.
                        unsafe { a.dealloc(p as *mut u8, layout(s)) };
                        let s = larson_size(&mut rng);
                        // SAFETY: non-zero size.
                        slots[i] = (unsafe { alloc_touch(a, s) } as usize, s);
                    }
                    tx.send(slots.split_off(SLOTS / 2)).unwrap();
                    slots.extend(rx.recv().unwrap());
                }
                for (p, s) in slots {
                    // SAFETY: allocated by `a` with this layout, freed once.
                    unsafe { a.dealloc(p as *mut u8, layout(s)) };
                }
            });
        }
    });
}

/// A `kB` field of `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    kb / 1024.0
}

fn main() {
    let baseline = status_mib("VmRSS");
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str);
    let rounds = match (which, args.get(2).map(|r| r.parse::<usize>())) {
        (Some("system" | "scavalloc"), None) => 200,
        (Some("system" | "scavalloc"), Some(Ok(r))) if r > 0 => r,
        _ => {
            eprintln!("usage: larson_rss system|scavalloc [rounds]");
            std::process::exit(2);
        }
    };
    let expected = if which == Some("scavalloc") { SCAVALLOC } else { SYSTEM };
    assert_eq!(dispatch::choice(), expected, "the dispatcher read another argument");

    let start = Instant::now();
    larson(&GLOBAL, THREADS, rounds);
    let time = start.elapsed();
    let live_mib = (THREADS * SLOTS) as f64 * 504.0 / (1 << 20) as f64;
    println!(
        "larson {:<9} {THREADS} threads x {SLOTS} slots x {rounds} rounds of {STEPS}: \
         peak RSS {:.1} MiB (baseline {baseline:.1} MiB, live objects ~{live_mib:.1} MiB), \
         RSS after {:.1} MiB, {:.1} ms",
        which.unwrap(),
        status_mib("VmHWM"),
        status_mib("VmRSS"),
        time.as_secs_f64() * 1e3
    );
}
