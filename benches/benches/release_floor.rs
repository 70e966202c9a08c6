//! The scavenger's price per released byte against the kernel's floor.
//!
//! For each scenario a child process makes a 1 GiB burst on scavalloc,
//! frees 90% of it, and lets the background scavenger give the memory back
//! at its default pace while the allocator logs every range it releases
//! (`testing::start_release_log`). The child then replays exactly those
//! ranges on a fresh mapping laid out the same way (same sizes, same
//! gaps): each time it faults the ranges in and releases them again, the
//! cheapest ways the kernel offers, timed on the thread's CPU clock (user
//! and system, as the scavenger's own CPU time is):
//!
//! * one `madvise` per maximal range (neighbouring ranges merged);
//! * `process_madvise` over the maximal ranges in batches of up to 1024
//!   (`IOV_MAX`), where the kernel accepts `MADV_DONTNEED` that way;
//! * one `madvise` per range as logged (the ranges the scavenger chose,
//!   not merged);
//! * one `madvise` per maximal range again, but paced as the scavenger
//!   paces itself: slices of about 8 MiB (about a millisecond of work) with
//!   50 ms between them. The kernel charges more per page freed this way:
//!   pages freed in one long call go back through free lists the call
//!   itself keeps warm, while a slice after a pause starts cold (measured:
//!   1.3-2.4x the unpaced price). A scavenger that must pace itself can do
//!   no better than this floor.
//!
//! Scenarios: whole spans free (the first 90% in allocation order);
//! scattered (every tenth object kept) with deep release off, so that only
//! the page heap's free runs go; and the same with deep release on, whose
//! ranges are the free pages inside spans.
//!
//! `cargo bench -p scavalloc-bench --bench release_floor` prints a
//! Markdown table (`-- --smoke` for a 32 MiB burst).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const MIB: usize = 1 << 20;
/// `IOV_MAX` on Linux.
const IOV_MAX: usize = 1024;
/// Bytes written between faulting the replay in and releasing it, to
/// evict the CPU caches.
const EVICT_BYTES: usize = 512 * MIB;

struct Scenario {
    name: &'static str,
    what: &'static str,
    scattered: bool,
    deep: bool,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario { name: "whole", what: "whole spans free", scattered: false, deep: true },
    Scenario { name: "scattered", what: "every 10th kept, deep release off", scattered: true, deep: false },
    Scenario { name: "deep", what: "every 10th kept, deep release on", scattered: true, deep: true },
];

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    if let Ok(name) = std::env::var("SCAVALLOC_FLOOR_CHILD") {
        let s = SCENARIOS.iter().find(|s| s.name == name).expect("a known scenario");
        child(s, if smoke { 32 * MIB } else { 1024 * MIB });
        return;
    }
    if !std::env::args().any(|a| a == "--bench") && !smoke {
        // `cargo test --benches` runs bench targets without `--bench`:
        // nothing to do then.
        return;
    }
    println!(
        "| scenario | released | ranges (maximal) | scavenger CPU | per MiB | floor: madvise per maximal range | \
         floor: process_madvise | madvise per logged range | scavenger / floor | floor paced as the scavenger \
         | scavenger / paced floor |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for s in &SCENARIOS {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(if smoke { &["--smoke"][..] } else { &[][..] })
            .env("SCAVALLOC_FLOOR_CHILD", s.name)
            .env("SCAVALLOC_DEEP_RELEASE", if s.deep { "1" } else { "0" })
            .output()
            .expect("the child runs");
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().find(|l| l.starts_with('|')) {
            Some(row) if out.status.success() => println!("{row}"),
            _ => {
                eprintln!(
                    "{}: the child failed: {}\n{text}{}",
                    s.name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                std::process::exit(1);
            }
        }
    }
}

/// Bytes released for the retained goal so far: what the log should hold.
fn released_so_far() -> usize {
    let s = scavalloc::stats();
    s.released_background + s.released_eager + s.released_deep
}

fn child(s: &Scenario, burst: usize) {
    assert!(scavalloc::testing::start_release_log(1 << 22), "the release log could not be mapped");
    let mut objects = support::burst(burst);
    if s.scattered {
        let mut i = 0;
        objects.retain(|_| {
            i += 1;
            i % 10 == 0
        });
    } else {
        objects.drain(..objects.len() / 10 * 9);
    }
    scavalloc::flush_thread_cache();
    let cpu_before = scavalloc::stats().scavenger_cpu_ns;
    let released_before = released_so_far();
    // The scavenger is done when nothing more has been released for two
    // seconds (deep release passes once a second). Looked at ten times a
    // second: `stats()` takes the allocator's locks, and polling it hard
    // would make the scavenger wait for them on its own CPU clock.
    let mut last = (released_so_far(), std::time::Instant::now());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let quiet = loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = released_so_far();
        if now != last.0 {
            last = (now, std::time::Instant::now());
        }
        if now > released_before && last.1.elapsed() >= Duration::from_secs(2) {
            break true;
        }
        if std::time::Instant::now() >= deadline {
            break false;
        }
    };
    assert!(quiet, "{}: the scavenger never finished: {:?}", s.name, scavalloc::stats());
    let cpu = scavalloc::stats().scavenger_cpu_ns - cpu_before;
    let (ranges, dropped) = scavalloc::testing::take_release_log();
    assert_eq!(dropped, 0, "the log was too small");
    assert!(objects.iter().all(|o| o.iter().all(|&b| b == o[0])), "a live object changed");
    let released: usize = ranges.iter().map(|r| r.1).sum();
    let merged = merge(&ranges);
    let floor_madvise = replay(&ranges, |base| {
        for &(a, l) in &merged {
            // SAFETY: inside the replay mapping, which only this child uses.
            unsafe { libc::madvise((base + a) as *mut libc::c_void, l, libc::MADV_DONTNEED) };
        }
    });
    let refused = std::cell::Cell::new(false);
    let vectored = replay(&ranges, |base| {
        if !process_madvise_all(base, &merged) {
            refused.set(true);
        }
    });
    let floor_vectored = (!refused.get()).then_some(vectored);
    let per_logged = replay(&ranges, |base| {
        for &(a, l) in &ranges {
            // SAFETY: as above.
            unsafe { libc::madvise((base + a - lowest(&ranges)) as *mut libc::c_void, l, libc::MADV_DONTNEED) };
        }
    });
    let paced = replay_paced(&ranges, &merged);
    let mib = released as f64 / MIB as f64;
    let ms = |ns: u64| ns as f64 / 1e6;
    let floor = match floor_vectored {
        Some(v) => floor_madvise.min(v),
        None => floor_madvise,
    };
    println!(
        "| {} ({}) | {:.0} MiB | {} ({}) | {:.1} ms | {:.3} ms | {:.1} ms | {} | {:.1} ms | {:.2} | {:.1} ms | {:.2} |",
        s.name,
        s.what,
        mib,
        ranges.len(),
        merged.len(),
        ms(cpu),
        ms(cpu) / mib,
        ms(floor_madvise),
        floor_vectored.map_or("refused".to_string(), |v| format!("{:.1} ms", ms(v))),
        ms(per_logged),
        cpu as f64 / floor.max(1) as f64,
        ms(paced),
        cpu as f64 / paced.max(1) as f64
    );
}

/// Bytes a paced slice releases (about a millisecond of the kernel's work)
/// and the pause after it (the scavenger at its default 1% of two CPUs
/// sleeps about 50 times what it worked).
const PACED_SLICE: usize = 8 * MIB;
const PACED_PAUSE: Duration = Duration::from_millis(50);

/// One replay of `merged` (offsets from the lowest logged address) paced
/// as the scavenger paces itself: the ranges are faulted in, then released
/// with one `madvise` each, a slice of about [`PACED_SLICE`] at a time with
/// [`PACED_PAUSE`] between slices (a range longer than a slice is cut).
/// Returns the CPU time of the `madvise` calls alone.
fn replay_paced(ranges: &[(usize, usize)], merged: &[(usize, usize)]) -> u64 {
    let map = ReplayMapping::new(ranges);
    map.fault_in(ranges);
    evict_caches(&mut vec![0u8; EVICT_BYTES], 0);
    let (mut total, mut in_slice) = (0, 0);
    for &(a, l) in merged {
        let mut off = 0;
        while off < l {
            let n = (l - off).min(PACED_SLICE - in_slice);
            let start = support::thread_cpu_ns();
            // SAFETY: inside the mapping, which only this child uses.
            unsafe { libc::madvise((map.base + a + off) as *mut libc::c_void, n, libc::MADV_DONTNEED) };
            total += support::thread_cpu_ns() - start;
            off += n;
            in_slice += n;
            if in_slice >= PACED_SLICE {
                std::thread::sleep(PACED_PAUSE);
                in_slice = 0;
            }
        }
    }
    total
}

/// A fresh private mapping laid out like a log's ranges (the lowest logged
/// address at `base`), unmapped when dropped.
struct ReplayMapping {
    base: usize,
    low: usize,
    len: usize,
}

impl ReplayMapping {
    fn new(ranges: &[(usize, usize)]) -> Self {
        let low = lowest(ranges);
        let len = (ranges.iter().map(|&(a, l)| a + l).max().unwrap_or(low) - low).max(1);
        // SAFETY: an anonymous private mapping at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "a replay mapping of {len} bytes");
        ReplayMapping { base: base as usize, low, len }
    }

    /// Writes one byte in every page of every range, so all are resident.
    fn fault_in(&self, ranges: &[(usize, usize)]) {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        for &(a, l) in ranges {
            let start = self.base + a - self.low;
            for p in (start..start + l).step_by(page) {
                // SAFETY: inside the mapping.
                unsafe { (p as *mut u8).write_volatile(1) };
            }
        }
    }
}

impl Drop for ReplayMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made by `new`, no longer used.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// Walks `scratch`, a buffer far larger than any last-level cache, so that
/// what was touched before has left the caches.
fn evict_caches(scratch: &mut [u8], round: u8) {
    for line in scratch.chunks_mut(64) {
        line[0] = line[0].wrapping_add(round + 1);
    }
    std::hint::black_box(&scratch);
}

fn lowest(ranges: &[(usize, usize)]) -> usize {
    ranges.iter().map(|r| r.0).min().unwrap_or(0)
}

/// The ranges sorted, neighbours merged, as offsets from the lowest.
fn merge(ranges: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let low = lowest(ranges);
    let mut sorted: Vec<(usize, usize)> = ranges.iter().map(|&(a, l)| (a - low, l)).collect();
    sorted.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (a, l) in sorted {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == a => last.1 += l,
            _ => out.push((a, l)),
        }
    }
    out
}

/// Maps a fresh region laid out like `ranges`; three times: faults every
/// range in, evicts the CPU caches, then runs `release(base)` timed on
/// this thread's CPU clock; returns the fastest of the three. (The
/// scavenger releases pages touched seconds earlier, whose page
/// structures have left the caches: releasing them right after the
/// fault-in would make the floor look cheaper than it is.)
fn replay(ranges: &[(usize, usize)], release: impl Fn(usize)) -> u64 {
    let map = ReplayMapping::new(ranges);
    let mut best = u64::MAX;
    let mut scratch = vec![0u8; EVICT_BYTES];
    for round in 0..3 {
        map.fault_in(ranges);
        evict_caches(&mut scratch, round);
        let start = support::thread_cpu_ns();
        release(map.base);
        best = best.min(support::thread_cpu_ns() - start);
    }
    best
}

/// `process_madvise(MADV_DONTNEED)` over `merged` (offsets from `base`) in
/// batches of up to `IOV_MAX`; false if the kernel refuses it.
fn process_madvise_all(base: usize, merged: &[(usize, usize)]) -> bool {
    // SAFETY: pidfd_open of our own pid.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as i32;
    if pidfd < 0 {
        return false;
    }
    let mut ok = true;
    for batch in merged.chunks(IOV_MAX) {
        let iov: Vec<libc::iovec> =
            batch.iter().map(|&(a, l)| libc::iovec { iov_base: (base + a) as *mut libc::c_void, iov_len: l }).collect();
        // SAFETY: `iov` holds valid entries inside our own mapping.
        let r =
            unsafe { libc::syscall(libc::SYS_process_madvise, pidfd, iov.as_ptr(), iov.len(), libc::MADV_DONTNEED, 0) };
        if r < 0 {
            ok = false;
            break;
        }
    }
    // SAFETY: the descriptor opened above.
    unsafe { libc::close(pidfd) };
    ok
}
