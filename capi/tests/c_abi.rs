//! C programs that check the C allocation functions, each run under glibc's
//! malloc and under `LD_PRELOAD` of `libscavalloc.so`, which must both pass:
//!
//! * `aligned_realloc.c`: every alignment 16 B .. 1 MiB through
//!   `posix_memalign`, `aligned_alloc`, `memalign`, `valloc` and `pvalloc`,
//!   each block realloc'd up and down across class and page boundaries
//!   with its contents checked, `malloc_usable_size`, `free`, in threads
//!   that exit.
//! * `random_ops.c`: two million random calls of the whole C API over four
//!   threads with cross-thread frees, every block's contents checked; its
//!   summary line depends only on its seeds, so both runs must print the
//!   same one.
//! * `start_hook.c`: wraps `pthread_create` with one that allocates many
//!   objects of every small size (as glibc's allocates the new thread's
//!   DTV), then frees bursts of small objects: the scavenger thread is
//!   started from inside a free, and must be started where no allocator
//!   lock is held and no thread cache is half updated (the wrapper's
//!   allocations would otherwise deadlock on the class lock, or take
//!   objects the cache no longer owns).
//! * `in_place.c`: for every request size 0..=40000, `malloc_usable_size`
//!   at least the request, `realloc` to the usable size and back keeping
//!   the pointer (for every small size) and the contents, and `calloc`
//!   zeroing a block that was just freed dirty.
//! * `late_key.c`: makes 64 pthread keys before its first allocation, so
//!   the allocator's own key is one whose `pthread_setspecific` allocates
//!   (through the allocator, attaching its first cache).
//!
//! Without `cc` the trials are reported as ignored, with the reason
//! printed, never as passed.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use support::{c_program, c_program_with, have, plain, preloaded, run, served_by_scavalloc, text};

/// Operations per thread of `random_ops` (four threads).
const RANDOM_OPS_PER_THREAD: &str = "500000";

/// What a run printed and how it ended, for failure messages.
fn describe(out: &Output) -> String {
    format!("{:?}\nstdout:\n{}\nstderr:\n{}", out.status, text(&out.stdout), text(&out.stderr))
}

/// Runs C program `name` with `args` on glibc (`preload` false) or
/// scavalloc; fails unless it exits 0 (and, preloaded, was served by
/// scavalloc).
fn run_c(name: &str, args: &[&str], preload: bool, timeout: Duration) -> Result<Output, Failed> {
    let exe = c_program(name)?;
    let mut cmd = plain(Command::new(&exe));
    cmd.args(args);
    let on = if preload { "scavalloc" } else { "glibc" };
    if preload {
        cmd = preloaded(cmd)?;
    }
    let started = Instant::now();
    let out = run(cmd, timeout, &format!("{name} on {on}"))?;
    println!("{name} on {on}: {:?}", started.elapsed());
    if !out.status.success() {
        return Err(format!("{name} failed on {on}: {}", describe(&out)).into());
    }
    if preload && !served_by_scavalloc(&out) {
        return Err(format!("{name}: scavalloc was not the allocator: {}", describe(&out)).into());
    }
    Ok(out)
}

fn aligned_realloc(preload: bool) -> Result<(), Failed> {
    let out = run_c("aligned_realloc", &[], preload, Duration::from_secs(300))?;
    if !text(&out.stdout).contains("ok aligned-realloc") {
        return Err(format!("no success line: {}", describe(&out)).into());
    }
    Ok(())
}

/// The `summary` line of a `random_ops` run.
fn summary(out: &Output) -> Result<String, Failed> {
    text(&out.stdout)
        .lines()
        .rfind(|l| l.starts_with("summary "))
        .map(str::to_string)
        .ok_or_else(|| format!("no summary line: {}", describe(out)).into())
}

fn random_ops_match() -> Result<(), Failed> {
    let timeout = Duration::from_secs(300);
    let glibc = run_c("random_ops", &[RANDOM_OPS_PER_THREAD], false, timeout)?;
    let ours = run_c("random_ops", &[RANDOM_OPS_PER_THREAD], true, timeout)?;
    let (expected, got) = (summary(&glibc)?, summary(&ours)?);
    println!("glibc:     {expected}\nscavalloc: {got}");
    if expected != got {
        return Err(format!("the summaries differ:\nglibc:     {expected}\nscavalloc: {got}").into());
    }
    Ok(())
}

fn scavenger_started_outside_locks() -> Result<(), Failed> {
    let exe = c_program_with("start_hook", &["-rdynamic", "-ldl"])?;
    let cmd = preloaded(plain(Command::new(&exe)))?;
    // A deadlock is the failure this test looks for: the deadline turns it
    // into one (it runs in about a second).
    let out = run(cmd, Duration::from_secs(60), "start_hook on scavalloc")?;
    if !out.status.success() || !served_by_scavalloc(&out) {
        return Err(format!("start_hook failed on scavalloc: {}", describe(&out)).into());
    }
    let started = text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("threads created through the hook: "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("no count of threads: {}", describe(&out)))?;
    if started == 0 {
        return Err(format!("the scavenger was never started through the hook: {}", describe(&out)).into());
    }
    Ok(())
}

fn in_place(preload: bool) -> Result<(), Failed> {
    let out = run_c("in_place", &[], preload, Duration::from_secs(300))?;
    if !text(&out.stdout).contains("ok in-place") {
        return Err(format!("no success line: {}", describe(&out)).into());
    }
    Ok(())
}

fn late_pthread_key() -> Result<(), Failed> {
    for preload in [false, true] {
        let out = run_c("late_key", &[], preload, Duration::from_secs(60))?;
        if !text(&out.stdout).contains("ok late-key") {
            return Err(format!("no success line: {}", describe(&out)).into());
        }
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let no_cc = !have("cc");
    if no_cc {
        println!("c_abi: no `cc` on this machine, so the C programs cannot be built: these tests are ignored");
    }
    let trial = |name: &str, f: fn() -> Result<(), Failed>| Trial::test(name, f).with_ignored_flag(no_cc);
    let trials = vec![
        trial("aligned_realloc_on_glibc", || aligned_realloc(false)),
        trial("aligned_realloc_on_scavalloc", || aligned_realloc(true)),
        trial("random_ops_same_summary_on_glibc_and_scavalloc", random_ops_match),
        trial("in_place_realloc_usable_size_calloc_on_glibc", || in_place(false)),
        trial("in_place_realloc_usable_size_calloc_on_scavalloc", || in_place(true)),
        trial("scavenger_started_outside_locks", scavenger_started_outside_locks),
        trial("cache_attach_with_a_late_pthread_key", late_pthread_key),
    ];
    libtest_mimic::run(&args, trials).exit();
}
