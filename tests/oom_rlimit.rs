//! Out of memory returns null (or an `Err` from `try_reserve`) and the
//! process goes on. Each case runs in a child process (this binary
//! re-executed) under `RLIMIT_AS`.
//!
//! The limit: scavalloc reserves address space in big pieces (1 GiB heap
//! reservations, and on the first heap growth the summary arrays, several
//! hundred MiB of `PROT_NONE` address space), all of which `RLIMIT_AS`
//! counts. The child first does ordinary work, so that all of that is
//! already reserved, then sets the limit to its current address-space size
//! plus 2 GiB: room for a second heap reservation and normal work, and far
//! below the requests that must fail.

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::collections::HashMap;
use std::time::Duration;

mod support;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const GIB: usize = 1 << 30;
const MIB: usize = 1 << 20;

/// The process's address-space size (VmSize), from `/proc/self/statm`.
fn vm_size() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

fn limit_address_space(extra: usize) -> usize {
    let limit = vm_size() + extra;
    let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut now) }, 0, "getrlimit");
    // Only the soft limit moves (lowering it needs no privilege); the hard
    // limit stays as it is, and must leave room for the case.
    assert!(
        now.rlim_max == libc::RLIM_INFINITY || now.rlim_max >= limit as libc::rlim_t,
        "the hard RLIMIT_AS ({} bytes) is below the {limit} bytes this case needs",
        now.rlim_max
    );
    let lim = libc::rlimit { rlim_cur: limit as libc::rlim_t, rlim_max: now.rlim_max };
    // SAFETY: a valid rlimit value for this process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0, "setrlimit: {}", std::io::Error::last_os_error());
    limit
}

/// Ordinary work, to have the allocator's reservations in place.
fn warm_up() -> usize {
    let v: Vec<Vec<u8>> = (0..2000).map(|i| vec![i as u8; i * 7 % 5000 + 1]).collect();
    let big = vec![1u8; 8 * MIB];
    v.iter().map(Vec::len).sum::<usize>() + big.len()
}

/// Small work after a failure: collections with contents checked.
fn small_work() {
    let m: HashMap<u32, String> = (0..20_000).map(|i| (i, format!("value {i}"))).collect();
    assert!((0..20_000).all(|i| m[&i] == format!("value {i}")));
    let mut v = Vec::new();
    for i in 0..100_000u64 {
        v.push(i * 7);
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 7));
    let s: String = (0..10_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    assert_eq!(s.len(), 10_000);
}

#[test]
fn huge_requests_fail_and_the_process_goes_on() {
    support::as_child("huge_requests_fail_and_the_process_goes_on", |case| {
        assert_eq!(case, "huge");
        huge();
    });
    support::run_case("huge_requests_fail_and_the_process_goes_on", "huge", &[], Duration::from_secs(60));
}

fn huge() {
    assert!(warm_up() > 0);
    let limit = limit_address_space(2 * GIB);

    // Vec::try_reserve of 8 GiB: an error, not an abort.
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve(8 * GIB).is_err(), "try_reserve(8 GiB) under a limit of {limit} bytes succeeded");
    assert_eq!(v.capacity(), 0);
    v.extend_from_slice(b"still usable");
    assert!(v.try_reserve_exact(16 * GIB).is_err());
    assert_eq!(v, b"still usable");

    // Direct requests far beyond the limit: null.
    let max = isize::MAX as usize;
    for (size, align) in [
        (1usize << 46, 8usize),
        (1 << 46, 1 << 22),
        (1 << 40, 4096),
        (8 * GIB, 16),
        (3 * GIB, 8),
        (8, 1 << 62),
        (8, 1 << 40),
        (max - 8191, 8192),
        (max - 4095, 1),
    ] {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero sizes; a non-null result would be freed below.
        unsafe {
            let p = alloc(l);
            assert!(p.is_null(), "alloc({size:#x}, align {align}) returned {p:p} under a limit of {limit:#x}");
            let z = alloc_zeroed(l);
            assert!(z.is_null(), "alloc_zeroed({size:#x}, align {align}) returned {z:p}");
        }
    }

    // realloc to a huge size: null, and the old object is intact.
    for size in [100usize, 40_000, 3 * MIB] {
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero size; the object stays valid when realloc fails.
        unsafe {
            let p = alloc(l);
            assert!(!p.is_null());
            p.write_bytes(0x5A, size);
            for new_size in [1usize << 46, 8 * GIB, max - 7] {
                let q = realloc(p, l, new_size);
                assert!(q.is_null(), "realloc({size} -> {new_size:#x}) returned {q:p}");
                assert_eq!(support::first_not(p, size, 0x5A), None, "object changed by a failed realloc");
            }
            dealloc(p, l);
        }
    }

    // A large request that fits the limit still works.
    let mut big = vec![0u8; 256 * MIB];
    big[256 * MIB - 1] = 1;
    assert_eq!(big.iter().map(|&b| b as usize).sum::<usize>(), 1);
    drop(big);

    small_work();
    let h = std::thread::spawn(small_work);
    h.join().unwrap();
}

/// Allocate until the address space is exhausted (untouched memory, so it
/// costs no RAM): each failure is a null, not an abort; after freeing, the
/// same memory serves new requests, small and large.
#[test]
fn exhausting_the_address_space_returns_null_and_recovers() {
    support::as_child("exhausting_the_address_space_returns_null_and_recovers", |case| {
        assert_eq!(case, "exhaust");
        exhaust();
    });
    support::run_case(
        "exhausting_the_address_space_returns_null_and_recovers",
        "exhaust",
        &[],
        Duration::from_secs(60),
    );
}

fn exhaust() {
    assert!(warm_up() > 0);
    // Threads and buffers std needs later exist before the limit.
    small_work();
    let limit = limit_address_space(2 * GIB);

    let block = Layout::from_size_align(64 * MIB, 8).unwrap();
    let mut blocks = Vec::with_capacity(256);
    loop {
        // SAFETY: non-zero size.
        let p = unsafe { alloc(block) };
        if p.is_null() {
            break;
        }
        // Touch one byte per block only.
        // SAFETY: within the block.
        unsafe { p.write(blocks.len() as u8) };
        blocks.push(p);
        assert!(blocks.len() < 256, "64 MiB blocks beyond a limit of {limit:#x} keep succeeding");
    }
    let n = blocks.len();
    assert!(n >= 8, "only {n} blocks of 64 MiB under a limit 2 GiB above the start");
    // Smaller large requests now fail or succeed, but never abort.
    let mut extra = Vec::new();
    for size in [32 * MIB, 8 * MIB, MIB, 100_000] {
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { alloc(l) };
        if !p.is_null() {
            extra.push((p, l));
        }
    }
    for (i, &p) in blocks.iter().enumerate() {
        // SAFETY: live blocks, allocated with `block`.
        unsafe {
            assert_eq!(p.read(), i as u8);
            dealloc(p, block);
        }
    }
    for (p, l) in extra {
        // SAFETY: allocated with `l`.
        unsafe { dealloc(p, l) };
    }
    // The freed space serves new requests.
    let again: Vec<*mut u8> = (0..n)
        .map(|i| {
            // SAFETY: non-zero size.
            let p = unsafe { alloc(block) };
            assert!(!p.is_null(), "block {i} of {n} could not be allocated again after freeing");
            p
        })
        .collect();
    for p in again {
        // SAFETY: allocated with `block`.
        unsafe { dealloc(p, block) };
    }
    small_work();
}

/// Without any limit, a request for far more memory than the machine has
/// (4 TiB) must be refused, and refusing it must not cost real memory. (The
/// kernel would refuse such a mapping under its default overcommit policy;
/// scavalloc reserves with `MAP_NORESERVE`, so it has to refuse itself.)
#[test]
fn absurd_request_without_a_limit_is_refused_cheaply() {
    support::as_child("absurd_request_without_a_limit_is_refused_cheaply", |case| {
        assert_eq!(case, "absurd");
        absurd();
    });
    support::run_case("absurd_request_without_a_limit_is_refused_cheaply", "absurd", &[], Duration::from_secs(60));
}

fn absurd() {
    assert!(warm_up() > 0);
    let l = Layout::from_size_align(1 << 42, 8).unwrap();
    let before = support::rss();
    // SAFETY: non-zero size; freed below if it succeeds.
    let p = unsafe { alloc(l) };
    let grown = support::rss().saturating_sub(before);
    if !p.is_null() {
        // SAFETY: allocated with `l` just above.
        unsafe { dealloc(p, l) };
    }
    assert!(grown <= 64 * MIB, "a 4 TiB request made the process {} MiB bigger in RAM (result {p:p})", grown >> 20);
    assert!(p.is_null(), "a 4 TiB request succeeded: {p:p}");
}
