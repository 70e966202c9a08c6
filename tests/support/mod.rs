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

/// The environment variable that names the case a re-executed test binary
/// runs.
pub const CHILD_ENV: &str = "SCAVALLOC_IT_CHILD_CASE";

/// The case this process was started to run, if it is a child.
pub fn child_case() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// What a child process did.
#[derive(Debug)]
pub struct ChildOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Re-executes this test binary to run test `test` alone (`--exact`,
/// `--nocapture`) with [`CHILD_ENV`] set to `case`; kills it and panics if
/// it runs longer than `timeout`.
pub fn run_child(test: &str, case: &str, timeout: Duration) -> ChildOutput {
    run_child_env(test, case, &[], timeout)
}

/// [`run_child`] with extra environment variables.
pub fn run_child_env(test: &str, case: &str, envs: &[(&str, &str)], timeout: Duration) -> ChildOutput {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .envs(envs.iter().copied())
        .env(CHILD_ENV, case)
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
    ChildOutput { status, stdout, stderr }
}

/// [`run_child_env`] for a child that ends by printing `case <case> done`:
/// shows its output, checks it succeeded and got that far, and returns its
/// stdout.
pub fn run_case(test: &str, case: &str, envs: &[(&str, &str)], timeout: Duration) -> String {
    let out = run_child_env(test, case, envs, timeout);
    println!("{}", out.stdout);
    assert!(out.status.success(), "child {case}: {:?}\n{}\n{}", out.status, out.stdout, out.stderr);
    assert!(out.stdout.contains(&format!("case {case} done")), "child {case} did not run:\n{}", out.stdout);
    out.stdout
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
