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

use std::time::Instant;

#[path = "support/dispatch.rs"]
mod dispatch;
use dispatch::{Dispatch, SCAVALLOC, SYSTEM};

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;

#[path = "support/workload.rs"]
mod workload;
use workload::{larson, LARSON_SLOTS as SLOTS, LARSON_STEPS as STEPS, LARSON_THREADS as THREADS};

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
