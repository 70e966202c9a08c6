//! Helpers for the integration tests that install scavalloc as the global
//! allocator: a deterministic generator, object content patterns, and
//! runners for child processes.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// splitmix64.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed ^ 0x243F_6A88_85A3_08D3))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, n)`, `n > 0`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
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

/// A byte pattern derived from an object's identity and size: byte `i` is
/// byte `i % 8` (little-endian) of word `i / 8`, and words differ from each
/// other and from every other object's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern(u64);

impl Pattern {
    pub fn new(id: u64, size: usize) -> Pattern {
        Pattern(mix(id ^ mix(size as u64 ^ 0x5851_F42D_4C95_7F2D)) | 1)
    }

    #[inline(always)]
    fn word(self, w: usize) -> u64 {
        let x = self.0 ^ (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 29)
    }

    /// The expected byte at offset `i`.
    pub fn byte(self, i: usize) -> u8 {
        self.word(i / 8).to_le_bytes()[i % 8]
    }

    /// Writes the pattern over `[p, p + len)`.
    ///
    /// # Safety
    ///
    /// `p` is valid for `len` bytes of writes.
    pub unsafe fn fill(self, p: *mut u8, len: usize) {
        let words = len / 8;
        for w in 0..words {
            // SAFETY: inside `[p, p + len)`.
            unsafe { p.add(w * 8).cast::<u64>().write_unaligned(self.word(w)) };
        }
        let tail = self.word(words).to_le_bytes();
        for i in words * 8..len {
            // SAFETY: inside `[p, p + len)`.
            unsafe { *p.add(i) = tail[i - words * 8] };
        }
    }

    /// The first offset in `[p, p + len)` that does not hold the pattern,
    /// or `None` if all of it does.
    ///
    /// # Safety
    ///
    /// `p` is valid for `len` bytes of reads.
    pub unsafe fn first_mismatch(self, p: *const u8, len: usize) -> Option<usize> {
        let words = len / 8;
        for w in 0..words {
            // SAFETY: inside `[p, p + len)`.
            let got = unsafe { p.add(w * 8).cast::<u64>().read_unaligned() };
            if got != self.word(w) {
                let exp = self.word(w).to_le_bytes();
                let got = got.to_le_bytes();
                let i = (0..8).find(|&i| exp[i] != got[i]).unwrap_or(0);
                return Some(w * 8 + i);
            }
        }
        let tail = self.word(words).to_le_bytes();
        (words * 8..len).find(|&i| {
            // SAFETY: inside `[p, p + len)`.
            unsafe { *p.add(i) != tail[i - words * 8] }
        })
    }

    /// Panics with a description unless `[p, p + len)` holds the pattern.
    ///
    /// # Safety
    ///
    /// As for [`first_mismatch`](Self::first_mismatch).
    pub unsafe fn check(self, p: *const u8, len: usize, what: &str) {
        // SAFETY: forwarded.
        if let Some(i) = unsafe { self.first_mismatch(p, len) } {
            // SAFETY: `i < len`.
            let got = unsafe { *p.add(i) };
            panic!("{what}: object at {p:p} ({len} bytes): byte {i} is {got:#04x}, expected {:#04x}", self.byte(i));
        }
    }
}

/// The first offset in `[p, p + len)` that is not zero.
///
/// # Safety
///
/// `p` is valid for `len` bytes of reads.
pub unsafe fn first_nonzero(p: *const u8, len: usize) -> Option<usize> {
    // SAFETY: forwarded.
    let s = unsafe { std::slice::from_raw_parts(p, len) };
    // SAFETY: every bit pattern is a valid `u64`.
    let (head, mid, tail) = unsafe { s.align_to::<u64>() };
    if let Some(i) = head.iter().position(|&b| b != 0) {
        return Some(i);
    }
    if let Some(w) = mid.iter().position(|&x| x != 0) {
        let base = head.len() + w * 8;
        return Some(base + s[base..base + 8].iter().position(|&b| b != 0).unwrap_or(0));
    }
    tail.iter().position(|&b| b != 0).map(|i| head.len() + mid.len() * 8 + i)
}

/// What a child process did.
#[derive(Debug)]
pub struct ChildOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ChildOutput {
    /// The signal that ended the child, if any.
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    /// Every stderr line that starts with `prefix`.
    pub fn stderr_lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.starts_with(prefix)).collect()
    }
}

/// Runs this test binary again as a child, running only the test `test`
/// (`--exact`, `--nocapture`), with `env` set; kills it and panics if it
/// has not ended within `timeout`.
pub fn run_self(test: &str, env: &[(&str, &str)], timeout: Duration) -> ChildOutput {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn child");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let stdout = out_reader.join().unwrap();
            let stderr = err_reader.join().unwrap();
            panic!(
                "child for test {test} with {env:?} did not end within {timeout:?} (killed: {status:?})\n\
                 --- stdout\n{stdout}\n--- stderr\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    ChildOutput { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}

/// Whether `line` names `addr` in `{:#x}` form as a whole token (not as the
/// prefix of a longer number).
pub fn names_address(line: &str, addr: usize) -> bool {
    let needle = format!("{addr:#x}");
    let mut from = 0;
    while let Some(i) = line[from..].find(&needle) {
        let end = from + i + needle.len();
        let next = line[end..].chars().next();
        if !next.is_some_and(|c| c.is_ascii_hexdigit()) {
            return true;
        }
        from = end;
    }
    false
}

/// Waits for `pid` to end, for at most `timeout`; kills it (and panics) if
/// it does not. Returns the raw wait status.
pub fn wait_pid(pid: libc::pid_t, timeout: Duration) -> i32 {
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
            panic!("child {pid} did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The state letter and context-switch counts of thread `tid` of this
/// process, from `/proc/self/task/<tid>/status`.
fn thread_sched(tid: i32) -> (String, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).expect("read task status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    let state = field("State:").chars().next().unwrap_or('?').to_string();
    (state, field("voluntary_ctxt_switches:").parse().unwrap(), field("nonvoluntary_ctxt_switches:").parse().unwrap())
}

/// Waits until the process's main thread is asleep and has stayed asleep
/// (not scheduled at all) over five samples 10 ms apart; at most `timeout`.
///
/// Under the test harness a test runs on a thread of its own while the
/// main thread, after starting it, records it and then blocks until it
/// ends; those records are allocations. A test that compares statistics
/// exactly must not take its first figures before the main thread has gone
/// to sleep (on a loaded machine that can be well after the test started).
/// Nothing to wait for when the test itself runs on the main thread.
pub fn wait_for_main_thread_asleep(timeout: Duration) {
    // SAFETY: neither call has preconditions.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    if pid == tid {
        return;
    }
    let deadline = Instant::now() + timeout;
    let mut last = thread_sched(pid);
    let mut quiet = 0;
    while quiet < 5 {
        assert!(Instant::now() < deadline, "the main thread did not settle within {timeout:?}: {last:?}");
        std::thread::sleep(Duration::from_millis(10));
        let now = thread_sched(pid);
        quiet = if now.0 == "S" && now == last { quiet + 1 } else { 0 };
        last = now;
    }
}
