//! What must hold across a whole process: `fork()` with busy threads, out of
//! memory, and the one-line stop on a foreign or double free. Each case runs
//! in a child process (this binary re-executed with the case named in an
//! environment variable).

use std::alloc::{alloc, dealloc, Layout};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

struct Outcome {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

fn run_child(case: &str) -> Outcome {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("PROCESS_CASE", case)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    Outcome {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The child must have died of SIGABRT after one fatal line naming
/// `addr`.
fn assert_fatal(case: &str, what: &str) {
    let o = run_child(case);
    assert_eq!(o.status.signal(), Some(libc::SIGABRT), "case {case}: {:?}\n{}\n{}", o.status, o.stdout, o.stderr);
    let fatal: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("scavalloc: fatal:")).collect();
    assert_eq!(fatal.len(), 1, "case {case}: want one fatal line:\n{}", o.stderr);
    let addr = o.stdout.lines().find_map(|l| l.split("ADDR ").nth(1)).expect("child printed no address").trim();
    assert!(fatal[0].contains(addr), "case {case}: {:?} does not name {addr}", fatal[0]);
    assert!(fatal[0].contains(what), "case {case}: {:?} does not say {what:?}", fatal[0]);
}

fn say_addr(p: *const u8) {
    use std::io::Write;
    println!("ADDR {:#x}", p as usize);
    std::io::stdout().flush().unwrap();
}

static FOREIGN: [u64; 8192] = [0; 8192];

#[test]
fn child() {
    let Ok(case) = std::env::var("PROCESS_CASE") else { return };
    // No core files from the deliberate aborts.
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit for this process.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    match case.as_str() {
        "fork" => fork_with_busy_threads(),
        "oom" => out_of_memory(),
        "foreign_small" => {
            let p = FOREIGN.as_ptr().cast::<u8>().wrapping_add(64) as *mut u8;
            say_addr(p);
            // SAFETY: deliberately wrong: scavalloc never allocated `p`.
            unsafe { dealloc(p, Layout::from_size_align(64, 8).unwrap()) };
            scavalloc::flush_thread_cache();
        }
        "foreign_large" => {
            let p = FOREIGN.as_ptr() as *mut u8;
            say_addr(p);
            // SAFETY: deliberately wrong, as above.
            unsafe { dealloc(p, Layout::from_size_align(50_000, 8).unwrap()) };
        }
        "double_large" | "double_large_cached" => {
            // 100,000 bytes go back to the page heap when freed; 40,000 (five
            // pages) stay in the thread's large-object cache.
            let size = if case == "double_large" { 100_000 } else { 40_000 };
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: non-zero size; then freed twice on purpose.
            unsafe {
                let p = alloc(layout);
                say_addr(p);
                dealloc(p, layout);
                dealloc(p, layout);
            }
        }
        "double_small" => {
            let layout = Layout::from_size_align(48, 8).unwrap();
            // SAFETY: non-zero size; then freed twice on purpose. Small frees
            // go to the thread cache; the flush hands them to their span,
            // whose bitmap shows the second one.
            unsafe {
                let p = alloc(layout);
                say_addr(p);
                dealloc(p, layout);
                dealloc(p, layout);
            }
            scavalloc::flush_thread_cache();
        }
        other => panic!("unknown case {other}"),
    }
    println!("case {case} done");
}

fn fork_with_busy_threads() {
    // Threads that hold allocations and keep allocating while we fork.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut held: Vec<Vec<u8>> = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    held.push(vec![t as u8; 16 + i % 5000]);
                    if held.len() > 500 {
                        held.drain(..250);
                    }
                    if i.is_multiple_of(97) {
                        held.push(vec![0u8; 200_000]);
                    }
                    i += 1;
                }
                held.len()
            })
        })
        .collect();
    for round in 0..20 {
        // SAFETY: fork in a multi-threaded process; the child only uses the
        // allocator (whose locks the fork handlers made consistent), spawns
        // a thread, and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut v: Vec<Box<[u8]>> =
                (0..2000).map(|i| vec![i as u8; 1 + i * 13 % 70_000].into_boxed_slice()).collect();
            v.retain(|b| b.len() % 2 == 0);
            let t = std::thread::spawn(|| (0..1000).map(|i| vec![1u8; i].len()).sum::<usize>());
            let ok = t.join().map(|s| s == 499_500).unwrap_or(false) && v.iter().all(|b| b.iter().all(|&x| x == b[0]));
            drop(v);
            let _ = scavalloc::release_all();
            // SAFETY: leave the child without running the parent's exit
            // handlers or test harness.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "round {round}: child status {status:#x}");
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
}

fn vm_size() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kib * 1024
}

fn out_of_memory() {
    // Room for ordinary work (and one more heap reservation), not for 8 GiB.
    let limit = (vm_size() + (2 << 30)) as libc::rlim_t;
    let rl = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: a valid rlimit for this process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve(8 << 30).is_err(), "8 GiB should not fit under RLIMIT_AS");
    // SAFETY: a valid, non-zero layout; the null result is what we test.
    let huge = unsafe { alloc(Layout::from_size_align(1 << 46, 8).unwrap()) };
    let s = scavalloc::stats();
    assert!(huge.is_null(), "{huge:?} mapped {} large {} objs {}", s.mapped, s.large_pages, s.large_objects);
    // The process goes on: ordinary allocations still work.
    let mut keep = Vec::new();
    for i in 0..10_000 {
        keep.push(vec![i as u8; 1 + i % 3000]);
    }
    assert!(keep.iter().enumerate().all(|(i, b)| b.iter().all(|&x| x == i as u8)));
    v.reserve(64 << 20);
    v.extend(std::iter::repeat_n(7u8, 64 << 20));
    assert_eq!(v.len(), 64 << 20);
}

#[test]
fn fork_with_busy_threads_leaves_the_child_a_working_allocator() {
    let o = run_child("fork");
    assert!(o.status.success() && o.stdout.contains("case fork done"), "{:?}\n{}\n{}", o.status, o.stdout, o.stderr);
}

#[test]
fn out_of_memory_returns_null_and_the_process_goes_on() {
    let o = run_child("oom");
    assert!(o.status.success() && o.stdout.contains("case oom done"), "{:?}\n{}\n{}", o.status, o.stdout, o.stderr);
}

#[test]
fn foreign_small_free_stops_the_process() {
    assert_fatal("foreign_small", "foreign pointer");
}

#[test]
fn foreign_large_free_stops_the_process() {
    assert_fatal("foreign_large", "not an allocated large object");
}

#[test]
fn double_free_of_a_large_object_stops_the_process() {
    assert_fatal("double_large", "not an allocated large object");
}

#[test]
fn double_free_of_a_cached_large_object_stops_the_process() {
    assert_fatal("double_large_cached", "not an allocated large object");
}

#[test]
fn double_free_of_a_small_object_stops_the_process() {
    assert_fatal("double_small", "double free");
}
