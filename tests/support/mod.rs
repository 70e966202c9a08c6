//! Helpers shared by the integration tests (each test file includes this
//! module with `mod support;` and uses what it needs).

#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// splitmix64: a small deterministic generator, good enough for tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6A09_E667_F3BC_C908)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, n)`; `n > 0`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
}

/// The splitmix64 finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The content expected in an object: a byte pattern derived from the
/// object's identity and size, so that two objects (or two generations of
/// one object) never look alike.
#[derive(Clone, Copy, Debug)]
pub struct Pattern(u64);

impl Pattern {
    pub fn new(id: u64, size: usize) -> Pattern {
        Pattern(mix(id.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ mix(size as u64 ^ 0xA5A5_0000)))
    }

    fn word(self, w: usize) -> u64 {
        mix(self.0.wrapping_add((w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    /// The byte at offset `i`.
    pub fn byte(self, i: usize) -> u8 {
        self.word(i / 8).to_le_bytes()[i % 8]
    }

    /// Writes the pattern to `[p, p + len)`.
    ///
    /// # Safety
    ///
    /// `p` is valid for `len` bytes of writes.
    pub unsafe fn fill(self, p: *mut u8, len: usize) {
        let words = len / 8;
        for w in 0..words {
            // SAFETY: within `[p, p + len)` per the contract.
            unsafe { p.add(w * 8).cast::<u64>().write_unaligned(self.word(w)) };
        }
        let tail = self.word(words).to_le_bytes();
        for i in words * 8..len {
            // SAFETY: as above.
            unsafe { *p.add(i) = tail[i - words * 8] };
        }
    }

    /// The first offset in `[p, p + len)` that does not hold the pattern.
    ///
    /// # Safety
    ///
    /// `p` is valid for `len` bytes of reads.
    pub unsafe fn first_mismatch(self, p: *const u8, len: usize) -> Option<usize> {
        let words = len / 8;
        for w in 0..words {
            // SAFETY: within `[p, p + len)` per the contract.
            if unsafe { p.add(w * 8).cast::<u64>().read_unaligned() } != self.word(w) {
                return (w * 8..w * 8 + 8).find(|&i| unsafe { *p.add(i) } != self.byte(i));
            }
        }
        (words * 8..len).find(|&i| unsafe { *p.add(i) } != self.byte(i))
    }
}

/// Checks the pattern and panics with the first bad offset.
///
/// # Safety
///
/// As for [`Pattern::first_mismatch`].
pub unsafe fn assert_pattern(pat: Pattern, p: *const u8, len: usize, what: &str) {
    // SAFETY: forwarded.
    if let Some(i) = unsafe { pat.first_mismatch(p, len) } {
        // SAFETY: `i < len`.
        let got = unsafe { *p.add(i) };
        panic!("{what}: byte {i} of {len} at {:#x} is {got:#04x}, expected {:#04x}", p as usize, pat.byte(i));
    }
}

/// The first offset of `[p, p + len)` that is not `byte`.
///
/// # Safety
///
/// `p` is valid for `len` bytes of reads.
pub unsafe fn first_not(p: *const u8, len: usize, byte: u8) -> Option<usize> {
    let want = u64::from_ne_bytes([byte; 8]);
    let words = len / 8;
    for w in 0..words {
        // SAFETY: within `[p, p + len)` per the contract.
        if unsafe { p.add(w * 8).cast::<u64>().read_unaligned() } != want {
            return (w * 8..w * 8 + 8).find(|&i| unsafe { *p.add(i) } != byte);
        }
    }
    (words * 8..len).find(|&i| unsafe { *p.add(i) } != byte)
}

/// The base page size, in which `/proc/self/statm` counts.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Resident memory (VmRSS) in bytes, from `/proc/self/statm`.
pub fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * page_size()
}

/// Bytes of the process's anonymous memory mapped by transparent huge
/// pages (`AnonHugePages` in `/proc/self/smaps_rollup`; 0 where THP is off
/// or only on request, as scavalloc never asks).
pub fn anon_huge() -> usize {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// User plus system CPU time of the whole process, every thread.
pub fn process_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills one `rusage`.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The object sizes of the scavenger's burst (its tests and the
/// comparison harness's burst-idle workload): small objects of 16 B to
/// 4 KiB, and a large one (64 to 256 KiB) every 47th (47 is prime to 10, so
/// keeping every 10th object keeps every 10th large one too).
pub fn burst_size(i: usize) -> usize {
    if i % 47 == 46 {
        (64 << 10) + (i * 2654435761) % (192 << 10)
    } else {
        16 + (i * 7919) % 4080
    }
}

/// Allocates about `bytes` of objects of [`burst_size`], each filled with
/// a byte of its index (so every page of it is resident).
pub fn burst(bytes: usize) -> Vec<Box<[u8]>> {
    let mut objects = Vec::new();
    let mut total = 0;
    while total < bytes {
        let i = objects.len();
        let size = burst_size(i);
        objects.push(vec![i as u8; size].into_boxed_slice());
        total += size;
    }
    objects
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it
/// held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------
// Child processes.
//
// A test that needs a process of its own (RSS and the statistics are per
// process, a fault must kill someone) re-executes this test binary filtered
// to itself, with `CHILD_ENV` saying which case to run. The one rule that
// keeps a parent from being fooled: a child never returns into the test
// harness. `as_child` runs the case and ends the process with `CHILD_DONE`
// after printing a line that names the test, the case and the parent; a
// harness that ran nothing, or a body that returned early into a harness
// that then passed, exits 0, which the parent does not accept.

/// The environment variable that marks a re-executed test binary as a
/// child: `<parent pid>:<test>:<case>`.
pub const CHILD_ENV: &str = "SCAVALLOC_IT_CHILD";

/// The exit code of a child whose case ran to its end (libtest exits 0 or
/// 101, a panic 101, an abort by a signal; none of them is this).
pub const CHILD_DONE: i32 = 86;

/// The line a child prints just before it exits with [`CHILD_DONE`].
fn done_line(parent: u32, test: &str, case: &str) -> String {
    format!("scavalloc-test-child done: parent {parent} test {test} case {case}")
}

/// The marker this process was started with, if it was started as a child
/// by the process that is its parent now (a marker inherited from further
/// up, or left in the environment by hand, is not ours):
/// `(test, case)`.
fn child_marker() -> Option<(String, String)> {
    let v = std::env::var(CHILD_ENV).ok()?;
    let mut parts = v.splitn(3, ':');
    let parent: u32 = parts.next()?.parse().ok()?;
    let (test, case) = (parts.next()?.to_string(), parts.next()?.to_string());
    // SAFETY: getppid has no preconditions.
    (parent == unsafe { libc::getppid() } as u32).then_some((test, case))
}

/// The case this process was started to run, if it is a child (for code
/// that must behave differently in a child, such as a check of the
/// settings the parent gave it).
pub fn child_case() -> Option<String> {
    child_marker().map(|(_, case)| case)
}

/// The name of the test running on this thread (libtest runs each test on
/// a thread named after it).
pub fn current_test() -> String {
    let t = std::thread::current();
    match t.name() {
        Some(name) if name != "main" => name.to_string(),
        _ => panic!("current_test: not on a libtest test thread"),
    }
}

/// The child side of test `test`: if this process is the child its parent
/// started for `test`, runs `body` with the case name, prints the done line
/// and exits with [`CHILD_DONE`] (it never returns into the harness: a
/// panic in `body` ends the child through the harness, with 101). In any
/// other process it returns at once, and the test goes on as the parent.
///
/// A child started for another test that gets here panics: the filter ran
/// the wrong test.
pub fn as_child(test: &str, body: impl FnOnce(&str)) {
    let Some((marked, case)) = child_marker() else { return };
    assert_eq!(marked, test, "a child started for test {marked} is running test {test}");
    if let Some(name) = std::thread::current().name().filter(|&n| n != "main") {
        assert_eq!(name, test, "as_child({test}) called from test {name}");
    }
    body(&case);
    use std::io::Write;
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() } as u32;
    println!("\n{}", done_line(parent, test, &case));
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(CHILD_DONE);
}

/// What a child process did.
#[derive(Debug)]
pub struct ChildOutput {
    pub test: String,
    pub case: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ChildOutput {
    /// Whether the child ran its case to the end: it exited with
    /// [`CHILD_DONE`] and printed the done line for this test, case and
    /// parent.
    pub fn completed(&self) -> bool {
        self.status.code() == Some(CHILD_DONE)
            && self.stdout.lines().any(|l| l == done_line(std::process::id(), &self.test, &self.case))
    }

    /// Panics, with everything the child printed, unless it
    /// [`completed`](Self::completed).
    pub fn assert_completed(&self) {
        assert!(
            self.completed(),
            "child {}/{} did not run its case to the end (wanted exit code {CHILD_DONE} and its done line): {:?}\n\
             --- stdout\n{}\n--- stderr\n{}",
            self.test,
            self.case,
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// Panics unless the child was killed by `signal`, and did not get to
    /// the end of its case.
    pub fn assert_killed_by(&self, signal: i32) {
        use std::os::unix::process::ExitStatusExt;
        assert!(
            self.status.signal() == Some(signal) && !self.completed(),
            "child {}/{}: expected death by signal {signal}, got {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.test,
            self.case,
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Re-executes this test binary to run test `test` alone (`--exact`,
/// `--nocapture`) as a child for `case`; kills it and panics if it runs
/// longer than `timeout`. The test must call [`as_child`] first thing.
pub fn run_child(test: &str, case: &str, timeout: Duration) -> ChildOutput {
    run_child_env(test, case, &[], timeout)
}

/// The scavenger's settings, removed from a child's environment unless the
/// test sets them, so that a setting in the environment of `cargo test`
/// cannot change what a child checks.
const SETTINGS: [&str; 16] = [
    "MEMORY_PRESSURE_WATCH",
    "MEMORY_PRESSURE_WRITE",
    "SCAVALLOC_BACKGROUND",
    "SCAVALLOC_MEMLIMIT",
    "SCAVALLOC_PRESSURE_PERCENT",
    "SCAVALLOC_PROF_DUMP",
    "SCAVALLOC_PROF_MAX",
    "SCAVALLOC_PROF_RATE",
    "SCAVALLOC_PROF_SEED",
    "SCAVALLOC_PROF_SIGNAL",
    "SCAVALLOC_TEST_CGROUP_ROOT",
    "SCAVALLOC_SCAVENGE_PERCENT",
    "SCAVALLOC_SCAVTRACE",
    "SCAVALLOC_RELEASE",
    "SCAVALLOC_STATS",
    "SCAVALLOC_THP",
];

/// [`run_child`] with extra environment variables.
pub fn run_child_env(test: &str, case: &str, envs: &[(&str, &str)], timeout: Duration) -> ChildOutput {
    assert!(!test.contains(':'), "test names hold no colon: {test}");
    // A child that got here returned from its case into the parent's path
    // (`as_child` was not called, or not first): fail now rather than
    // start a child of its own.
    if let Some((marked, case)) = child_marker() {
        panic!("the child for {marked}/{case} went on as a parent (to run {test}/{case})");
    }
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"]);
    for k in SETTINGS {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .envs(envs.iter().copied())
        .env(CHILD_ENV, format!("{}:{test}:{case}", std::process::id()))
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let r1 = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        let _ = tx.send(());
        s
    });
    let r2 = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        let _ = tx2.send(());
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {test}/{case} still running after {timeout:?}: killed");
        }
        let _ = rx.recv_timeout(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&r1.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&r2.join().unwrap()).into_owned();
    ChildOutput { test: test.to_string(), case: case.to_string(), status, stdout, stderr }
}

/// [`run_child_env`] for a child that must run its case to the end: shows
/// its output, checks it completed, and returns its stdout.
pub fn run_case(test: &str, case: &str, envs: &[(&str, &str)], timeout: Duration) -> String {
    let out = run_child_env(test, case, envs, timeout);
    println!("{}", out.stdout);
    out.assert_completed();
    out.stdout
}

/// Checks that a child stopped at a deliberate fault: killed by SIGABRT
/// before the end of its case, "SURVIVED" never printed, and stderr exactly
/// one `scavalloc: fatal:` line that names the address the child printed
/// after `FREEING ` and says `what`.
pub fn assert_fatal(out: &ChildOutput, what: &str) {
    let ctx = format!("case {}: {:?}\nstdout:\n{}\nstderr:\n{}", out.case, out.status, out.stdout, out.stderr);
    out.assert_killed_by(libc::SIGABRT);
    // libtest prints `test <name> ... ` without a newline first, so the
    // marker may be in the middle of a line.
    let addr = out
        .stdout
        .split("FREEING ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the child never reached the fault; {ctx}"))
        .to_string();
    assert!(!out.stdout.contains("SURVIVED"), "the child went on after the fault; {ctx}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr is not exactly one line; {ctx}");
    let line = lines[0];
    assert!(line.starts_with("scavalloc: fatal:"), "{ctx}");
    assert!(
        line.split(|c: char| !c.is_ascii_hexdigit() && c != 'x').any(|w| w == addr),
        "the fatal line does not name {addr}; {ctx}"
    );
    assert!(line.contains(what), "the fatal line does not say {what:?}; {ctx}");
}

/// The exit code of a forked child whose body returned 0.
pub const FORK_DONE: i32 = 87;
/// The exit code of a forked child whose body panicked.
pub const FORK_PANICKED: i32 = 99;

/// How a forked child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForkEnd {
    /// Its body returned 0 and it exited with [`FORK_DONE`].
    Done,
    /// It exited with this code: the body's own failure code, [`FORK_PANICKED`],
    /// or anything else that ended it early.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// Forks; the child runs `body` (0 for success, else a failure code under
/// 64) and leaves with `_exit` at once, never returning into the harness,
/// whose other threads do not exist in it. Waits at most `timeout` for it
/// (then kills it and panics, naming `what`).
pub fn fork_child(timeout: Duration, what: &str, body: impl FnOnce() -> i32) -> ForkEnd {
    // SAFETY: `fork` has no preconditions; the child only runs `body` and
    // leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(0) => FORK_DONE,
            Ok(code) if (1..64).contains(&code) => code,
            Ok(_) => 64,
            Err(_) => FORK_PANICKED,
        };
        // SAFETY: ends the child at once, running nothing of the parent's
        // (no atexit handlers, no harness).
        unsafe { libc::_exit(code) };
    }
    let status = wait_pid(pid, timeout, what);
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            FORK_DONE => ForkEnd::Done,
            code => ForkEnd::Exited(code),
        }
    } else if libc::WIFSIGNALED(status) {
        ForkEnd::Signaled(libc::WTERMSIG(status))
    } else {
        ForkEnd::Exited(-1)
    }
}

/// Turns core dumps off for this process (children that abort on purpose).
pub fn no_core_dumps() {
    let lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit value; RLIMIT_CORE only affects core files.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &lim) };
}

/// Waits for the forked child `pid` to end, for at most `timeout`; kills it
/// and panics (naming `what`) if it does not. Returns the raw wait status.
pub fn wait_pid(pid: libc::pid_t, timeout: Duration, what: &str) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid({pid}) failed: {}", std::io::Error::last_os_error());
        if r == pid {
            return status;
        }
        if Instant::now() >= deadline {
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("child {pid} still running after {timeout:?} ({what}): killed");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------
// The background scavenger's accounting.
//
// Its tests assert what does not depend on how loaded the machine is: the
// goal reached (with a generous wall-clock deadline only against a hang),
// the CPU it used against its budget integrated over the wall time that
// passed (a loaded machine stretches both the time and the budget), the
// bytes it released per CPU-millisecond against `madvise` timed in the same
// process, and RSS against what the statistics call retained. How long the
// release took is printed for the notes, never asserted.

/// CPU time of the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    cpu_clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn cpu_clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time of this process's threads other than the main thread and the
/// calling one, in nanoseconds, read from each thread's own CPU clock (the
/// clock id glibc's `pthread_getcpuclockid` builds from a thread id). In a
/// child process whose test thread is the caller, that is the background
/// scavenger: an independent check of the CPU time it reports.
pub fn other_threads_cpu_ns() -> u64 {
    // SAFETY: getpid and gettid have no preconditions.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else { continue };
        if tid == pid || tid == me {
            continue;
        }
        // The kernel's per-thread CPU clock: (~tid << 3) | CPUCLOCK_PERTHREAD
        // (4) | CPUCLOCK_SCHED (2).
        total += cpu_clock_ns(((!tid) << 3) | 6);
    }
    total
}

/// The CPUs this process may run on, as the scavenger counts them (its
/// affinity mask).
pub fn affinity_cpus() -> usize {
    // SAFETY: a zeroed cpu_set_t is valid; the call fills it in.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a buffer of the size passed; pid 0 is this process.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(r, 0, "sched_getaffinity");
    // SAFETY: `set` was filled in by the kernel.
    (unsafe { libc::CPU_COUNT(&set) }) as usize
}

/// Bytes per CPU-millisecond that plain `madvise(MADV_DONTNEED)` gives back
/// here when called once per OS page (the dearest way the scavenger can be
/// made to release: every run one page long) over `mib` MiB of touched
/// memory, timed with this thread's CPU clock. The best of three rounds,
/// so that a preemption does not lower the floor.
pub fn madvise_page_by_page_rate(mib: usize) -> f64 {
    let len = mib << 20;
    let ps = page_size();
    let mut best = 0f64;
    for _ in 0..3 {
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap {mib} MiB");
        let p = p.cast::<u8>();
        // Small pages, as the scavenger's runs are (the page heap keeps huge
        // pages out of what it releases, and this is the per-page floor).
        // SAFETY: the range is the mapping above.
        unsafe { libc::madvise(p.cast(), len, libc::MADV_NOHUGEPAGE) };
        for off in (0..len).step_by(ps) {
            // SAFETY: within the mapping.
            unsafe { p.add(off).write_volatile(1) };
        }
        let start = thread_cpu_ns();
        for off in (0..len).step_by(ps) {
            // SAFETY: one page of the mapping.
            let r = unsafe { libc::madvise(p.add(off).cast(), ps, libc::MADV_DONTNEED) };
            assert_eq!(r, 0, "madvise");
        }
        let ns = (thread_cpu_ns() - start).max(1);
        best = best.max(len as f64 / (ns as f64 / 1e6));
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(p.cast(), len) };
    }
    best
}

/// The scavenger's bank, as `BANK_NS` in `src/scavenge/background.rs`:
/// while parked it saves its share of this much wall time, and may spend
/// it at once before pacing starts.
pub const SCAVENGER_BANK: Duration = Duration::from_secs(4);

/// The scavenger's figures at the start of a stretch of wall time.
pub struct ScavengerMeter {
    at: Instant,
    stats: scavalloc::Stats,
    others_ns: u64,
}

/// What the scavenger did over a stretch.
#[derive(Debug)]
pub struct ScavengerUse {
    pub wall: Duration,
    /// CPU time by the scavenger's own accounting (`scavenger_cpu_ns`).
    pub cpu_ns: u64,
    /// CPU time of its thread by the kernel's clock for that thread.
    pub thread_ns: u64,
    /// Bytes it released: whole runs and inside spans.
    pub released: usize,
}

impl ScavengerMeter {
    pub fn start() -> ScavengerMeter {
        ScavengerMeter { at: Instant::now(), stats: scavalloc::stats(), others_ns: other_threads_cpu_ns() }
    }

    /// The use since [`start`](Self::start). Call it with no release but
    /// the background thread's under way (no `release_all`, no heap
    /// growth over the goal).
    pub fn used(&self) -> ScavengerUse {
        let s = scavalloc::stats();
        ScavengerUse {
            wall: self.at.elapsed(),
            cpu_ns: s.scavenger_cpu_ns - self.stats.scavenger_cpu_ns,
            thread_ns: other_threads_cpu_ns().saturating_sub(self.others_ns),
            released: (s.released_background - self.stats.released_background)
                + (s.released_deep - self.stats.released_deep),
        }
    }
}

impl ScavengerUse {
    /// The most CPU time a scavenger at `percent`% of the machine may use
    /// over this stretch: its share of the wall time that passed, with a
    /// quarter again for the controller's swings, plus a full bank, plus
    /// 5 ms for the batch in progress at each end (a batch stops after the
    /// quantum that takes it past 1 ms). The controller measures its share
    /// against the wall time its sleeps really took, so a loaded machine
    /// stretches its use and this budget alike.
    pub fn budget_ns(&self, percent: f64) -> u64 {
        let share = percent / 100.0 * affinity_cpus() as f64;
        (self.wall.as_nanos() as f64 * share * 1.25 + SCAVENGER_BANK.as_nanos() as f64 * share + 5e6) as u64
    }

    /// Checks the CPU time against [`budget_ns`](Self::budget_ns), by the
    /// scavenger's own account and by its thread's clock (which also sees
    /// the work it does outside its accounted batches: ticks, parking,
    /// trace lines; 5 ms allowed for those).
    pub fn assert_within_budget(&self, percent: f64, what: &str) {
        let budget = self.budget_ns(percent);
        assert!(
            self.cpu_ns <= budget,
            "{what}: the scavenger accounted {:.1} ms of CPU over {:?} of wall time; at {percent}% of {} CPUs \
             (x1.25, plus its bank) it may use {:.1} ms",
            self.cpu_ns as f64 / 1e6,
            self.wall,
            affinity_cpus(),
            budget as f64 / 1e6
        );
        assert!(
            self.thread_ns <= budget + 5_000_000,
            "{what}: the scavenger's thread used {:.1} ms of CPU by its clock over {:?}; budget {:.1} ms",
            self.thread_ns as f64 / 1e6,
            self.wall,
            budget as f64 / 1e6
        );
    }

    /// Bytes released per CPU-millisecond of the scavenger's own time.
    pub fn rate(&self) -> f64 {
        self.released as f64 / (self.cpu_ns.max(1) as f64 / 1e6)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} MiB released in {:?} of wall time with {:.1} ms of scavenger CPU ({:.1} ms by its thread's clock): \
             {:.1} MiB per CPU-ms",
            self.released >> 20,
            self.wall,
            self.cpu_ns as f64 / 1e6,
            self.thread_ns as f64 / 1e6,
            self.rate() / (1 << 20) as f64
        )
    }
}

// ---------------------------------------------------------------------------
// Fake control groups.

/// A fake cgroup v2 tree in a fresh directory under the temporary directory,
/// for the `testing` feature's cgroup root: `proc/self/cgroup` puts the
/// process in `/app`, and `proc/self/mountinfo` mounts cgroup2 at
/// `/sys/fs/cgroup`. Returns the root and the `app` directory, where the
/// caller writes the controller files.
pub fn fake_cgroup_v2(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = std::env::temp_dir().join(format!("scavalloc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let app = root.join("sys/fs/cgroup/app");
    std::fs::create_dir_all(root.join("proc/self")).unwrap();
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(root.join("proc/self/cgroup"), "0::/app\n").unwrap();
    std::fs::write(root.join("proc/self/mountinfo"), "40 1 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n").unwrap();
    (root, app)
}
