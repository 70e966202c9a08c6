//! After `fork()`, the child must not close the parent's cached pidfd by
//! number when it first releases memory: by then that number may name one
//! of the child's own files. The child here puts a file of its own on
//! exactly that number, makes the allocator release memory in batches (the
//! path that uses the pidfd), and checks the file is still open and usable.
//!
//! Needs a kernel that lets a process `process_madvise` itself (Linux 6.13
//! and later); elsewhere the allocator never opens a pidfd, and the test
//! says so and checks nothing.

mod support;

use std::alloc::{alloc, dealloc, Layout};
use std::time::Duration;

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

/// Exit codes of the child.
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

#[test]
fn fork_child_keeps_its_file_on_the_parents_pidfd_number() {
    release_scattered_runs();
    let fds = pidfds();
    if fds.is_empty() {
        println!("no pidfd after a batched release: this kernel does not let a process process_madvise itself");
        return;
    }
    assert_eq!(fds.len(), 1, "one cached pidfd expected, found {fds:?}");
    let parent_pidfd = fds[0];
    // SAFETY: the child runs only `child` (allocator calls and descriptor
    // calls; the allocator is fork-safe) and ends with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child(parent_pidfd);
        // SAFETY: ends the child without running the parent's atexit
        // handlers or the test harness.
        unsafe { libc::_exit(code) };
    }
    let status = support::wait_pid(pid, Duration::from_secs(30), "fork pidfd child");
    assert!(libc::WIFEXITED(status), "child did not exit normally: status {status:#x}");
    let code = libc::WEXITSTATUS(status);
    let what = match code {
        OK => return,
        FILE_CLOSED => "the allocator closed the child's file (the parent's pidfd number)",
        FILE_CHANGED => "the child's file no longer reads back",
        NO_BATCH => "the child released no batch through a pidfd: the test proves nothing",
        SETUP => "could not set up the child's file",
        _ => "unexpected exit code",
    };
    panic!("child exited with {code}: {what}");
}
