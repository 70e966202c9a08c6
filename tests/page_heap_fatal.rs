//! Freeing pages that are not in use must stop the process with one line on
//! stderr naming the offending page, never carry on silently.
//!
//! Each case runs in a child process: the test re-executes this test binary,
//! filtered to that one test, with an environment variable that makes the
//! test run the faulty sequence itself instead of spawning. The parent then
//! checks that the child died of SIGABRT and what it wrote to stderr.
//!
//! The page heap never touches the memory it manages, so the heaps here sit
//! at fake addresses that are not mapped.

use std::time::Duration;

use scavalloc::testing::{PageAlloc, CHUNK_BYTES, PAGE_SIZE};

mod support;

const BASE: usize = 0x1000_0000_0000;

/// A heap of two chunks at `BASE`.
fn heap() -> Box<PageAlloc> {
    let mut pa = Box::new(PageAlloc::new());
    pa.grow(BASE, 2 * CHUNK_BYTES).expect("grow");
    pa
}

/// In the child started for test `name`, runs `body` and ends the child
/// (see `support::as_child`: it never returns into the harness). In the
/// parent, runs this test in a child process and returns its output.
fn in_child(name: &str, body: impl FnOnce()) -> support::ChildOutput {
    support::as_child(name, |_| {
        // No core file for the expected abort.
        support::no_core_dumps();
        body();
    });
    support::run_child(name, "case", Duration::from_secs(60))
}

/// Runs `body` in a child and asserts that it aborted with exactly one
/// line on stderr, `scavalloc: fatal: ...`, naming `addr`.
fn assert_fatal(name: &str, addr: usize, body: impl FnOnce()) {
    let out = in_child(name, body);
    // A body that returns ends the child with `support::CHILD_DONE`, which
    // fails here.
    out.assert_killed_by(libc::SIGABRT);
    let stderr = &out.stderr;
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{name}: exactly one line on stderr, got:\n{stderr}");
    let line = lines[0];
    assert!(line.starts_with("scavalloc: fatal:"), "{name}: not a fatal report: {line:?}");
    let want = format!("{addr:#x}");
    // The address must appear as a whole token, not as a prefix of a longer
    // hexadecimal number.
    let named = line.match_indices(&want).any(|(i, _)| {
        !line[i + want.len()..].starts_with(|c: char| c.is_ascii_hexdigit())
            && !line[..i].ends_with(|c: char| c.is_ascii_alphanumeric())
    });
    assert!(named, "{name}: the report must name page {want}: {line:?}");
}

#[test]
fn double_free_of_a_single_page() {
    assert_fatal("double_free_of_a_single_page", BASE + PAGE_SIZE, || {
        let mut pa = heap();
        assert_eq!(pa.alloc(1).map(|r| r.base), Some(BASE));
        assert_eq!(pa.alloc(1).map(|r| r.base), Some(BASE + PAGE_SIZE));
        pa.free(BASE + PAGE_SIZE, 1, false);
        pa.free(BASE + PAGE_SIZE, 1, false);
    });
}

#[test]
fn freeing_a_run_whose_last_page_is_free() {
    // Pages 0..4 allocated, page 3 freed: freeing 0..4 must name page 3.
    assert_fatal("freeing_a_run_whose_last_page_is_free", BASE + 3 * PAGE_SIZE, || {
        let mut pa = heap();
        assert_eq!(pa.alloc(4).map(|r| r.base), Some(BASE));
        pa.free(BASE + 3 * PAGE_SIZE, 1, false);
        pa.free(BASE, 4, false);
    });
}

#[test]
fn freeing_a_run_that_crosses_a_chunk_boundary_into_free_pages() {
    // The last page of chunk 0 is in use, the first of chunk 1 is free.
    let at = BASE + CHUNK_BYTES;
    assert_fatal("freeing_a_run_that_crosses_a_chunk_boundary_into_free_pages", at, || {
        let mut pa = heap();
        let pages = CHUNK_BYTES / PAGE_SIZE;
        assert_eq!(pa.alloc(pages).map(|r| r.base), Some(BASE));
        pa.free(BASE + CHUNK_BYTES - 2 * PAGE_SIZE, 3, false);
    });
}

#[test]
fn freeing_an_address_outside_every_grown_range() {
    // Between two grown ranges, in a chunk the heap has metadata for.
    let gap = BASE + 4 * CHUNK_BYTES;
    assert_fatal("freeing_an_address_outside_every_grown_range", gap, || {
        let mut pa = heap();
        pa.grow(BASE + 8 * CHUNK_BYTES, CHUNK_BYTES).expect("grow");
        assert!(pa.alloc(1).is_some());
        pa.free(gap, 1, false);
    });
}

#[test]
fn freeing_an_address_far_from_the_heap() {
    // 1 TiB above the heap: no metadata at all there.
    let far = BASE + (1 << 40);
    assert_fatal("freeing_an_address_far_from_the_heap", far, || {
        let mut pa = heap();
        assert!(pa.alloc(1).is_some());
        pa.free(far, 1, true);
    });
}

#[test]
fn freeing_an_unaligned_address() {
    let bad = BASE + 0x18;
    assert_fatal("freeing_an_unaligned_address", bad, || {
        let mut pa = heap();
        assert_eq!(pa.alloc(1).map(|r| r.base), Some(BASE));
        pa.free(bad, 1, false);
    });
}

#[test]
fn a_valid_free_does_not_abort() {
    let name = "a_valid_free_does_not_abort";
    let out = in_child(name, || {
        let mut pa = heap();
        let run = pa.alloc(3).expect("alloc");
        pa.free(run.base + PAGE_SIZE, 2, true);
        pa.free(run.base, 1, false);
        assert_eq!(pa.pages_in_use(), 0);
        // The pages can be handed out and freed again.
        assert_eq!(pa.alloc(3).map(|r| r.base), Some(run.base));
        pa.free(run.base, 3, false);
    });
    out.assert_completed();
    assert!(!out.stderr.contains("scavalloc: fatal:"), "{name}: unexpected report:\n{}", out.stderr);
}
