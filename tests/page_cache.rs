//! The per-CPU page cache end to end, each case in a child process of its
//! own (heap-lock counts, RSS and the statistics are per process):
//!
//! * two threads that make and free spans take the heap lock far less
//!   often with the cache than without it (the same workload run both ways
//!   in one process), and the statistics' identities hold after each;
//! * `release_all` gives the pages the cache holds back to the OS (RSS);
//! * the background scavenger empties a slot its CPU no longer uses.

mod support;

use std::alloc::{alloc, dealloc, Layout};
use std::time::Duration;

use scavalloc::testing::{class_objects, page_run_heap_locks, set_page_cache, size_to_class};
use support::rss;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const KIB: usize = 1 << 10;
const PAGE: usize = 8 * KIB;

fn child(test: &str) {
    support::as_child(test, |case| match case {
        "churn" => churn(),
        "release_all" => release_all_returns_slot_pages(),
        "idle" => idle_slot_is_emptied(),
        other => panic!("unknown case {other}"),
    });
}

fn run(test: &str, case: &str, env: &[(&str, &str)]) -> String {
    support::run_case(test, case, env, Duration::from_secs(300))
}

fn assert_identities(what: &str) -> scavalloc::Stats {
    let s = scavalloc::stats();
    assert_eq!(s.mapped, s.heap_in_use + s.heap_free + s.heap_released, "{what}: {s:?}");
    assert_eq!(s.heap_in_use, s.small_spans + s.large_pages + s.arena_pages, "{what}: {s:?}");
    assert_eq!(s.small_spans, s.small_allocated + s.small_cached + s.small_free + s.small_waste, "{what}: {s:?}");
    assert!(s.page_cache <= s.heap_free + s.heap_released, "{what}: page cache beyond the free pages: {s:?}");
    assert_eq!(s.page_cache % PAGE, 0, "{what}");
    s
}

/// Pins the calling thread to one CPU it may run on, so that its spans are
/// made and freed through one slot.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is valid; the calls fill it in or read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0);
        let cpu = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set)).unwrap();
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one), 0);
    }
}

/// Small sizes whose spans are one to four pages.
const CHURN_SIZES: [usize; 7] = [512, 1024, 2048, 4096, 8192, 16384, 24576];

/// One thread's share of the churn: rounds of `per_round` objects of the
/// sizes above, each written, then all freed and the thread's cache given
/// back, so that spans are made and freed every round. Returns the small
/// allocations it made.
fn churn_thread(seed: usize, rounds: usize, per_round: usize) -> usize {
    let mut live: Vec<(*mut u8, Layout)> = Vec::with_capacity(per_round);
    let mut made = 0;
    for round in 0..rounds {
        for i in 0..per_round {
            let size = CHURN_SIZES[(i * 7 + round + seed) % CHURN_SIZES.len()];
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: a non-zero size.
            let p = unsafe { alloc(layout) };
            assert!(!p.is_null());
            // SAFETY: `p` holds `size` bytes.
            unsafe { p.write_volatile(i as u8) };
            live.push((p, layout));
            made += 1;
        }
        for (p, layout) in live.drain(..) {
            // SAFETY: allocated above with this layout.
            unsafe { dealloc(p, layout) };
        }
        scavalloc::flush_thread_cache();
    }
    made
}

/// Runs the churn on two threads; returns heap-lock acquisitions (of the
/// page-run paths) per million small allocations.
fn churn_phase(cache_on: bool) -> f64 {
    set_page_cache(cache_on);
    assert_identities("before the churn");
    let before = page_run_heap_locks();
    let threads: Vec<_> = (0..2).map(|t| std::thread::spawn(move || churn_thread(t, 60, 3000))).collect();
    let made: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
    let locks = page_run_heap_locks() - before;
    scavalloc::flush_thread_cache();
    let s = assert_identities(if cache_on { "after the churn with the cache" } else { "after the churn without" });
    let per_million = locks as f64 * 1e6 / made as f64;
    println!(
        "page cache {}: {locks} heap-lock acquisitions for {made} small allocations: {per_million:.0} per million; \
         page cache holds {} KiB",
        if cache_on { "on" } else { "off" },
        s.page_cache / KIB
    );
    if !cache_on {
        assert_eq!(s.page_cache, 0, "the cache off holds nothing");
    }
    per_million
}

/// A steadier load for the figures (printed, not asserted): each thread
/// keeps 4,000 objects of random small sizes live and replaces a random
/// one per step, so spans are made and freed only at the margin.
fn steady_thread(seed: usize, steps: usize) -> usize {
    let mut rng = support::Rng::new(seed as u64);
    let layout = |rng: &mut support::Rng| {
        Layout::from_size_align(CHURN_SIZES[rng.below(CHURN_SIZES.len())] >> rng.below(6), 8).unwrap()
    };
    let mut live: Vec<(*mut u8, Layout)> = Vec::with_capacity(4000);
    for _ in 0..4000 {
        let l = layout(&mut rng);
        // SAFETY: a non-zero size.
        live.push((unsafe { alloc(l) }, l));
    }
    for _ in 0..steps {
        let i = rng.below(live.len());
        let (p, l) = live[i];
        // SAFETY: allocated with this layout.
        unsafe { dealloc(p, l) };
        let l = layout(&mut rng);
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(l) };
        assert!(!p.is_null());
        live[i] = (p, l);
    }
    for (p, l) in live {
        // SAFETY: allocated with this layout.
        unsafe { dealloc(p, l) };
    }
    4000 + steps
}

fn steady_phase(cache_on: bool) {
    set_page_cache(cache_on);
    let before = page_run_heap_locks();
    let threads: Vec<_> = (0..2).map(|t| std::thread::spawn(move || steady_thread(t + 7, 400_000))).collect();
    let made: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
    let locks = page_run_heap_locks() - before;
    assert_identities("after the steady load");
    println!(
        "steady load, page cache {}: {locks} heap-lock acquisitions for {made} small allocations: {:.0} per million",
        if cache_on { "on" } else { "off" },
        locks as f64 * 1e6 / made as f64
    );
}

fn churn() {
    for size in CHURN_SIZES {
        assert!(size_to_class(size).is_some(), "{size} is a small size");
    }
    steady_phase(false);
    steady_phase(true);
    let off = churn_phase(false);
    let on = churn_phase(true);
    assert!(off > 0.0, "the churn made no spans");
    assert!(on * 8.0 <= off, "with the page cache {on:.0} heap-lock acquisitions per million, without {off:.0}");
}

#[test]
fn span_churn_takes_the_heap_lock_rarely() {
    let test = "span_churn_takes_the_heap_lock_rarely";
    child(test);
    // No scavenger: it would empty the slots (taking the lock) at its own
    // pace, which differs between the two runs.
    run(test, "churn", &[("SCAVALLOC_BACKGROUND", "0")]);
}

/// Whether any of the real pages of `[addr, addr + len)` is resident.
fn resident(addr: usize, len: usize) -> bool {
    // SAFETY: sysconf has no preconditions.
    let real = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut vec = vec![0u8; len.div_ceil(real)];
    // SAFETY: `[addr, addr + len)` is mapped heap memory (the page heap
    // never unmaps), aligned to the real page; `vec` has a byte per page.
    let r = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore({addr:#x}, {len})");
    vec.iter().any(|&v| v & 1 != 0)
}

/// Makes about `spans` one-page spans on the calling (pinned) thread, with
/// every byte written, frees them all and gives the thread's cache back:
/// their pages go to this CPU's slot. Returns the addresses of the OS
/// pages that only those spans covered: free once the spans are, so any
/// release must give them back. (With OS pages no larger than a heap page that is
/// every span's page; with larger ones, an OS page that also holds another
/// span, of this process's other threads, cannot be released while that
/// span lives, wherever the heap happened to put the two.)
fn fill_slot(spans: usize) -> Vec<usize> {
    let size = 1024;
    let class = size_to_class(size).unwrap();
    assert_eq!(class_objects(class) * size, PAGE, "1 KiB objects fill one-page spans exactly");
    let layout = Layout::from_size_align(size, 8).unwrap();
    let objects: Vec<*mut u8> = (0..spans * class_objects(class))
        .map(|i| {
            // SAFETY: a non-zero size.
            let p = unsafe { alloc(layout) };
            assert!(!p.is_null());
            // SAFETY: `p` holds `size` bytes.
            unsafe { std::ptr::write_bytes(p, i as u8 | 1, size) };
            p
        })
        .collect();
    let os_page = scavalloc::testing::os_page_size().max(PAGE);
    let mut own_pages_per_os_page = std::collections::BTreeMap::<usize, std::collections::BTreeSet<usize>>::new();
    for &p in &objects {
        let addr = p as usize;
        own_pages_per_os_page.entry(addr / os_page).or_default().insert(addr / PAGE);
    }
    let only_ours: Vec<usize> = own_pages_per_os_page
        .iter()
        .filter(|(_, pages)| pages.len() == os_page / PAGE)
        .map(|(&index, _)| index * os_page)
        .collect();
    for p in objects {
        // SAFETY: allocated above with this layout.
        unsafe { dealloc(p, layout) };
    }
    scavalloc::flush_thread_cache();
    only_ours
}

fn release_all_returns_slot_pages() {
    pin_to_one_cpu();
    scavalloc::flush_thread_cache();
    // With OS pages larger than a heap page, whether any of them holds the
    // slot's spans alone depends on where other threads' spans landed in
    // the block (seen once in a loaded CI run with 64 KiB pages): a layout
    // with none cannot test anything, so the fill is made again, a bounded
    // number of times, each after giving everything back.
    let os_page = PAGE.max(scavalloc::testing::os_page_size());
    let mut our_pages = Vec::new();
    for _ in 0..8 {
        scavalloc::release_all();
        our_pages = fill_slot(60);
        if !our_pages.is_empty() {
            break;
        }
    }
    let only_ours = our_pages.len() * os_page;
    let before = assert_identities("slot filled");
    let rss_before = rss();
    // 59 free spans (a class keeps one aside) went to the slot: those in its
    // block back into the block, up to 16 others into its batch.
    assert!(before.page_cache >= 16 * PAGE, "the slot holds {} KiB", before.page_cache / KIB);
    assert!(before.heap_free >= 40 * PAGE, "the freed spans are free, resident pages: {before:?}");
    scavalloc::release_all();
    let after = assert_identities("after release_all");
    let rss_after = rss();
    println!(
        "page cache {} KiB, heap free {} KiB (OS pages of the slot's spans alone: {} KiB), rss {} KiB before \
         release_all; after: {} KiB, {} KiB, {} KiB",
        before.page_cache / KIB,
        before.heap_free / KIB,
        only_ours / KIB,
        rss_before / KIB,
        after.page_cache / KIB,
        after.heap_free / KIB,
        rss_after / KIB
    );
    assert_eq!(after.page_cache, 0, "release_all empties the slots");
    // The 60 spans' pages: nearly all of them with small OS pages; with
    // large ones, what the layout leaves wholly theirs (at least one OS
    // page must be, for the test to mean anything).
    assert!(only_ours >= os_page, "in eight fills, no OS page held only the slot's spans");
    // Counted on the pages themselves (`mincore`), not as the fall of
    // `heap_free`: release_all also trims other threads' caches, whose
    // spans then add free pages that an OS page shared with live data
    // keeps resident (seen in a loaded 64 KiB-page run: 208 KiB "went"
    // while all of ours were released).
    let still_resident = our_pages.iter().filter(|&&page| resident(page, os_page)).count() * os_page;
    assert!(
        only_ours - still_resident >= only_ours / 2,
        "the slots' pages were released: {} KiB of the {} KiB of OS pages the slot's spans alone covered are still \
         resident: {after:?}",
        still_resident / KIB,
        only_ours / KIB
    );
    assert!(
        rss_before.saturating_sub(rss_after) >= only_ours / 2,
        "rss fell by {} KiB, the slot's spans alone covered {} KiB of OS pages",
        rss_before.saturating_sub(rss_after) / KIB,
        only_ours / KIB
    );
}

#[test]
fn release_all_gives_the_page_cache_back_to_the_os() {
    let test = "release_all_gives_the_page_cache_back_to_the_os";
    child(test);
    run(test, "release_all", &[("SCAVALLOC_BACKGROUND", "0")]);
}

fn idle_slot_is_emptied() {
    pin_to_one_cpu();
    // The slot holds some of the freed spans' pages (how many depends on
    // where the heap put them). The scavenger, which runs as soon as a
    // second thread has a cache, may empty it before we look, when these
    // frees give it work: then the slot is filled again, a few times at
    // most, until it is seen holding some.
    let mut tries = 0;
    let s = loop {
        fill_slot(60);
        let s = assert_identities("slot filled");
        tries += 1;
        if s.page_cache > 0 || tries == 10 {
            break s;
        }
    };
    assert!(s.page_cache > 0, "the slot held nothing to empty after {tries} fillings");
    // A burst freed gives the scavenger work; the slot, unused from now
    // on, must be emptied when it works or once it has been idle a second.
    drop(support::burst(32 << 20));
    scavalloc::flush_thread_cache();
    let emptied = support::wait_until(Duration::from_secs(60), || scavalloc::stats().page_cache == 0);
    let s = assert_identities("after waiting");
    assert!(emptied, "the scavenger left {} KiB in an idle slot: {s:?}", s.page_cache / KIB);
}

#[test]
fn the_scavenger_empties_an_idle_slot() {
    let test = "the_scavenger_empties_an_idle_slot";
    child(test);
    run(test, "idle", &[]);
}
