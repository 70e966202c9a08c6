//! After `fork()`, the child must not close the parent's cached pidfd by
//! number when it first releases memory: by then that number may name one
//! of the child's own files. The child here puts a file of its own on
//! exactly that number, makes the allocator release memory in batches (the
//! path that uses the pidfd), and checks the file is still open and usable.
//!
//! Needs a kernel that lets a process `process_madvise` itself with a
//! release advice (Linux 6.13 and later); elsewhere the allocator releases
//! range by range and the child never uses a pidfd. Whether the kernel
//! allows it is asked of the kernel directly, not of the allocator (an
//! allocator that stopped batching must fail here, not be ignored). It runs
//! without libtest's harness (`harness = false`, through `libtest-mimic`),
//! so that on an older kernel the test is reported as ignored, with the
//! reason printed, never as passed.

mod support;

use std::alloc::{alloc, dealloc, Layout};
use std::time::Duration;

use libtest_mimic::{Arguments, Trial};

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

/// The descriptors of this process that are pidfds.
fn pidfds() -> Vec<i32> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Ok(target) = std::fs::read_link(entry.path()) {
            if target.to_string_lossy().contains("pidfd") {
                fds.push(fd);
            }
        }
    }
    fds
}

/// Frees every other one of many large objects, then releases all free
/// memory: several separate free runs, so the allocator releases them in
/// one batch.
fn release_scattered_runs() {
    let layout = Layout::from_size_align(256 << 10, 8).unwrap();
    // SAFETY: a non-zero size; every object is written within bounds and
    // freed once with its layout.
    unsafe {
        let objects: Vec<*mut u8> = (0..32).map(|_| alloc(layout)).collect();
        for &p in &objects {
            assert!(!p.is_null());
            p.write_bytes(0x77, layout.size());
        }
        for &p in objects.iter().step_by(2) {
            dealloc(p, layout);
        }
        scavalloc::release_all();
        for &p in objects.iter().skip(1).step_by(2) {
            dealloc(p, layout);
        }
    }
}

/// Exit codes of the child (0: all held).
const OK: i32 = 0;
const FILE_CLOSED: i32 = 10;
const FILE_CHANGED: i32 = 11;
const NO_BATCH: i32 = 12;
const SETUP: i32 = 13;

/// The child's part; returns its exit code.
fn child(parent_pidfd: i32) -> i32 {
    // SAFETY: plain descriptor calls on a file this child opens; `buf` is
    // a valid buffer of the length passed.
    unsafe {
        let fd = libc::memfd_create(c"scavalloc-fork-pidfd".as_ptr(), libc::MFD_CLOEXEC);
        if fd < 0 {
            return SETUP;
        }
        // The file takes the number of the parent's pidfd (closing what
        // the child inherited there, if anything is still there).
        if fd != parent_pidfd && (libc::dup2(fd, parent_pidfd) != parent_pidfd || libc::close(fd) != 0) {
            return SETUP;
        }
        let msg = b"the child's own file";
        if libc::pwrite(parent_pidfd, msg.as_ptr().cast(), msg.len(), 0) != msg.len() as isize {
            return SETUP;
        }
        release_scattered_runs();
        release_scattered_runs();
        if libc::fcntl(parent_pidfd, libc::F_GETFD) < 0 {
            return FILE_CLOSED;
        }
        let mut buf = [0u8; 20];
        if libc::pread(parent_pidfd, buf.as_mut_ptr().cast(), buf.len(), 0) != msg.len() as isize || &buf[..] != msg {
            return FILE_CHANGED;
        }
    }
    // The batch path ran: the child has a pidfd of its own now.
    if pidfds().is_empty() {
        return NO_BATCH;
    }
    OK
}

/// Why this kernel cannot run the test, if it cannot: it must let a
/// process `process_madvise(MADV_DONTNEED)` a page of its own through a
/// pidfd of itself. Asked with a page mapped here, not the allocator's.
fn kernel_cannot_batch() -> Option<String> {
    let page = support::page_size();
    // SAFETY: plain system calls on a private anonymous page and a pidfd
    // this function opens; both are given back before it returns.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) as i32;
        if pidfd < 0 {
            return Some(format!("pidfd_open of this process fails: {}", std::io::Error::last_os_error()));
        }
        let p = libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert!(p != libc::MAP_FAILED, "mmap of one page: {}", std::io::Error::last_os_error());
        p.cast::<u8>().write(1);
        let iov = libc::iovec { iov_base: p, iov_len: page };
        let r = libc::syscall(libc::SYS_process_madvise, pidfd, &iov, 1, libc::MADV_DONTNEED, 0);
        let err = std::io::Error::last_os_error();
        libc::munmap(p, page);
        libc::close(pidfd);
        (r != page as libc::c_long).then(|| {
            format!("this kernel does not let a process process_madvise(MADV_DONTNEED) itself (Linux 6.13+): {err}")
        })
    }
}

fn fork_child_keeps_its_file_on_the_parents_pidfd_number() -> Result<(), String> {
    release_scattered_runs();
    let fds = pidfds();
    assert_eq!(fds.len(), 1, "one cached pidfd expected after a batched release, found {fds:?}");
    let parent_pidfd = fds[0];
    // The child runs only `child` (allocator calls and descriptor calls;
    // the allocator is fork-safe).
    let end = support::fork_child(Duration::from_secs(30), "fork pidfd child", || child(parent_pidfd));
    let code = match end {
        support::ForkEnd::Done => return Ok(()),
        support::ForkEnd::Exited(code) => code,
        support::ForkEnd::Signaled(sig) => return Err(format!("child killed by signal {sig}")),
    };
    let what = match code {
        FILE_CLOSED => "the allocator closed the child's file (the parent's pidfd number)",
        FILE_CHANGED => "the child's file no longer reads back",
        NO_BATCH => "the child released no batch through a pidfd: the test proves nothing",
        SETUP => "could not set up the child's file",
        support::FORK_PANICKED => "the child panicked",
        _ => "unexpected exit code",
    };
    Err(format!("child exited with {code}: {what}"))
}

fn main() {
    let args = Arguments::from_args();
    let cannot = kernel_cannot_batch();
    if let Some(why) = &cannot {
        println!("fork_pidfd: ignored: {why}");
    }
    let trials = vec![Trial::test("fork_child_keeps_its_file_on_the_parents_pidfd_number", || {
        fork_child_keeps_its_file_on_the_parents_pidfd_number().map_err(Into::into)
    })
    .with_ignored_flag(cannot.is_some())];
    libtest_mimic::run(&args, trials).exit();
}
