//! The heap profile end to end: sampled allocations are attributed to the
//! functions that made them, with figures that match the program's (exactly
//! when every allocation is sampled, within 10% at a 64 KiB mean, with no
//! bias for a stack that mixes large and small objects), frees move bytes
//! from `inuse_*` to nothing while `alloc_*` keeps them, and the written
//! file is a valid gzip-compressed `profile.proto` whose mappings cover the
//! program, also while other threads allocate and while the process forks.
//!
//! Every case runs in a child process started with the profiler's settings
//! (they are read at the first allocation).

mod support;

#[path = "support/profile_proto.rs"]
mod profile_proto;

use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;
use std::time::Duration;

use profile_proto::Profile;
use prost::Message;
use support::Rng;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const MIB: usize = 1 << 20;

/// The profile as of now, decoded.
fn profile_now() -> Profile {
    let mut gz = Vec::new();
    scavalloc::profile::write_pprof(&mut gz).expect("write_pprof");
    decode(&gz)
}

/// Ungzips and decodes a profile, checking the gzip frame on the way.
fn decode(gz: &[u8]) -> Profile {
    assert!(gz.len() > 18 && gz[..3] == [0x1f, 0x8b, 8], "not gzip");
    assert_eq!(gz[3], 0, "no optional gzip fields expected");
    let raw = miniz_oxide::inflate::decompress_to_vec(&gz[10..gz.len() - 8]).expect("deflate stream");
    let isize = u32::from_le_bytes(gz[gz.len() - 4..].try_into().unwrap());
    assert_eq!(isize as usize, raw.len() % (1 << 32), "gzip ISIZE");
    Profile::decode(raw.as_slice()).expect("profile.proto")
}

/// The string at `i` of the table.
fn string(p: &Profile, i: i64) -> &str {
    &p.string_table[i as usize]
}

/// The addresses of a sample's frames, innermost first.
fn frames(p: &Profile, s: &profile_proto::PbSample) -> Vec<u64> {
    s.location_id
        .iter()
        .map(|id| p.location.iter().find(|l| l.id == *id).expect("location id resolves").address)
        .collect()
}

/// The site functions of these tests, by their first instruction.
fn sites() -> [usize; 2] {
    [site_a as *const () as usize, site_b as *const () as usize]
}

/// Whether `addr` (a return address minus one) lies in the site function
/// that starts at `f`: the nearest site start at or below it, and the
/// sites are small.
fn in_fn(addr: u64, f: usize) -> bool {
    let nearest = sites().into_iter().filter(|&s| s as u64 <= addr).max();
    nearest == Some(f) && addr < f as u64 + 2048
}

/// The four values summed over the samples whose innermost frame lies in
/// the site function at `f`: alloc objects, alloc bytes, in-use objects,
/// in-use bytes.
fn site_totals(p: &Profile, f: usize) -> [i64; 4] {
    let mut t = [0i64; 4];
    for s in &p.sample {
        let fr = frames(p, s);
        if fr.first().is_some_and(|&a| in_fn(a, f)) {
            for (t, v) in t.iter_mut().zip(&s.value) {
                *t += v;
            }
        }
    }
    t
}

/// Allocates objects of `sizes` aligned to `align` into `out` (whose room
/// is reserved, so that nothing else here allocates), each with its size's
/// low byte written. Inlined into each site, so that the allocation's
/// caller is the site itself.
#[inline(always)]
fn allocate(sizes: &[usize], align: usize, out: &mut Vec<(*mut u8, Layout)>) {
    for &size in sizes {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(l) };
        assert!(!p.is_null());
        // SAFETY: `p` holds at least one byte.
        unsafe { p.write(size as u8) };
        out.push((black_box(p), l));
    }
}

/// One allocation site: [`allocate`] at an alignment of 8.
#[inline(never)]
fn site_a(sizes: &[usize], out: &mut Vec<(*mut u8, Layout)>) {
    allocate(sizes, 8, out);
}

/// A second, distinct site: [`allocate`] at an alignment of 16.
#[inline(never)]
fn site_b(sizes: &[usize], out: &mut Vec<(*mut u8, Layout)>) {
    allocate(sizes, 16, out);
}

fn free_all(objects: &mut Vec<(*mut u8, Layout)>, keep: impl Fn(usize) -> bool) {
    let mut i = 0;
    objects.retain(|&(p, l)| {
        i += 1;
        if keep(i - 1) {
            return true;
        }
        // SAFETY: allocated with this layout and freed once.
        unsafe {
            assert_eq!(*p, l.size() as u8, "contents of a sampled object");
            dealloc(p, l)
        };
        false
    });
}

fn sum(objects: &[(*mut u8, Layout)]) -> i64 {
    objects.iter().map(|(_, l)| l.size() as i64).sum()
}

/// At a rate of 1 byte every allocation is sampled, and each site's figures
/// are the program's exactly: objects and requested bytes, allocated and in
/// use, with small and large objects, after frees.
#[test]
fn every_allocation_sampled_gives_exact_figures() {
    support::as_child("every_allocation_sampled_gives_exact_figures", |_| {
        let sizes_a: Vec<usize> = (0..3000).map(|i| [8, 24, 48, 100, 700, 5000][i % 6]).collect();
        let sizes_b: Vec<usize> = (0..40).map(|i| [40_000, 300_000, 1 << 20, 33][i % 4]).collect();
        let mut a = Vec::with_capacity(sizes_a.len());
        let mut b = Vec::with_capacity(sizes_b.len());
        site_a(&sizes_a, &mut a);
        site_b(&sizes_b, &mut b);
        let (alloc_a, alloc_b) = (sum(&a), sum(&b));
        // Free two in three of a's objects and every other one of b's.
        free_all(&mut a, |i| i % 3 == 0);
        free_all(&mut b, |i| i % 2 == 0);
        let p = profile_now();
        let ta = site_totals(&p, site_a as *const () as usize);
        let tb = site_totals(&p, site_b as *const () as usize);
        assert_eq!(ta, [3000, alloc_a, a.len() as i64, sum(&a)], "site a");
        assert_eq!(tb, [40, alloc_b, b.len() as i64, sum(&b)], "site b");
        // Sample types, as Go writes heap profiles.
        let types: Vec<(&str, &str)> =
            p.sample_type.iter().map(|t| (string(&p, t.r#type), string(&p, t.unit))).collect();
        assert_eq!(
            types,
            [
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes")
            ]
        );
        assert_eq!(p.period, 1);
        free_all(&mut a, |_| false);
        free_all(&mut b, |_| false);
        let p = profile_now();
        assert_eq!(site_totals(&p, site_a as *const () as usize), [3000, alloc_a, 0, 0], "site a, all freed");
        assert_eq!(site_totals(&p, site_b as *const () as usize), [40, alloc_b, 0, 0], "site b, all freed");
    });
    support::run_case(
        "every_allocation_sampled_gives_exact_figures",
        "rate-1",
        &[("SCAVALLOC_PROF_RATE", "1")],
        Duration::from_secs(120),
    );
}

/// Reallocations the object moves on are allocations of the new size:
/// at a rate of 1 byte each one is sampled, the moved-from object leaves
/// `inuse_*`, and the site's figures count every size the object had; a
/// resize in place is no allocation and keeps the object's sampled size.
#[test]
fn moving_reallocations_are_sampled() {
    support::as_child("moving_reallocations_are_sampled", |_| {
        // Each step changes class (the last one to a large object), so each
        // moves; then the large object grows by a page, which the free
        // pages after it allow in place.
        let steps = [16usize, 100, 1000, 5000, 20_000, 100_000];
        let (p, layout) = site_realloc(&steps);
        let site = site_realloc as *const () as usize;
        let t = site_totals_in(&profile_now(), site);
        let total: usize = steps.iter().sum();
        assert_eq!(t, [steps.len() as i64, total as i64, 1, 100_000], "after the moves");
        // SAFETY: live with `layout`; the new size is not zero.
        let q = unsafe { std::alloc::realloc(p, layout, 100_000 + 8192) };
        assert!(!q.is_null());
        let t2 = site_totals_in(&profile_now(), site);
        if q == p {
            assert_eq!(t2, t, "a resize in place is not an allocation");
        } else {
            assert_eq!(t2[0], t[0], "a move from the large object is counted where the realloc happened");
        }
        // SAFETY: the object at `q`, of the new size; its first bytes were
        // carried over by every move.
        unsafe {
            assert_eq!(*q, 0x5a, "contents kept across the moves");
            dealloc(q, Layout::from_size_align(100_000 + 8192, 8).unwrap());
        }
        let t3 = site_totals_in(&profile_now(), site);
        assert_eq!((t3[2], t3[3]), (0, 0), "freed");
    });
    support::run_case(
        "moving_reallocations_are_sampled",
        "rate-1",
        &[("SCAVALLOC_PROF_RATE", "1")],
        Duration::from_secs(120),
    );
}

/// Allocates `steps[0]` bytes and reallocates the object through the rest
/// of `steps`, its first byte written; returns it with its layout.
#[inline(never)]
fn site_realloc(steps: &[usize]) -> (*mut u8, Layout) {
    let mut layout = Layout::from_size_align(steps[0], 8).unwrap();
    // SAFETY: a non-zero size.
    let mut p = unsafe { alloc(layout) };
    assert!(!p.is_null());
    // SAFETY: one byte of the object.
    unsafe { p.write(0x5a) };
    for &size in &steps[1..] {
        // SAFETY: live with `layout`; a non-zero size.
        p = unsafe { std::alloc::realloc(p, layout, size) };
        assert!(!p.is_null());
        layout = Layout::from_size_align(size, 8).unwrap();
    }
    (black_box(p), layout)
}

/// [`site_totals`] for a site function that is not one of [`sites`]: the
/// samples whose innermost frame lies within 2 KiB after its start.
fn site_totals_in(p: &Profile, f: usize) -> [i64; 4] {
    let mut t = [0i64; 4];
    for s in &p.sample {
        if frames(p, s).first().is_some_and(|&a| a > f as u64 && a < f as u64 + 2048) {
            for (t, v) in t.iter_mut().zip(&s.value) {
                *t += v;
            }
        }
    }
    t
}

fn within(what: &str, got: i64, want: i64, share: f64) {
    let err = (got - want).abs() as f64 / want as f64;
    assert!(err <= share, "{what}: {got} against {want} ({:.1}% off)", err * 100.0);
}

/// At a 64 KiB mean, with a fixed seed: a site of mixed small sizes and a
/// site of one 8 MiB object beside 16 MiB of 64-byte objects are both
/// within 10% of their true allocated and in-use bytes. Scaling by each
/// stack's mean object size, as some profilers do, would put the second
/// site's figure near half of the truth.
#[test]
fn sampled_figures_are_unbiased() {
    support::as_child("sampled_figures_are_unbiased", |_| {
        let mut rng = Rng::new(7);
        let sizes_a: Vec<usize> = (0..120_000).map(|_| rng.range(16, 2048)).collect();
        let mut sizes_b = vec![8 * MIB];
        sizes_b.extend(std::iter::repeat_n(64, 16 * MIB / 64));
        let mut a = Vec::with_capacity(sizes_a.len());
        let mut b = Vec::with_capacity(sizes_b.len());
        site_a(&sizes_a, &mut a);
        site_b(&sizes_b, &mut b);
        let (alloc_a, alloc_b) = (sum(&a), sum(&b));
        free_all(&mut a, |i| i % 3 != 0);
        let p = profile_now();
        let ta = site_totals(&p, site_a as *const () as usize);
        let tb = site_totals(&p, site_b as *const () as usize);
        println!("site a {ta:?} true alloc {alloc_a} inuse {}", sum(&a));
        println!("site b {tb:?} true alloc {alloc_b} inuse {}", sum(&b));
        within("site a allocated bytes", ta[1], alloc_a, 0.10);
        within("site a in-use bytes", ta[3], sum(&a), 0.10);
        within("site a allocated objects", ta[0], sizes_a.len() as i64, 0.10);
        within("site b allocated bytes", tb[1], alloc_b, 0.10);
        within("site b in-use bytes", tb[3], sum(&b), 0.10);
        assert_eq!(p.period, 64 << 10);
        free_all(&mut a, |_| false);
        free_all(&mut b, |_| false);
    });
    support::run_case(
        "sampled_figures_are_unbiased",
        "rate-64k",
        &[("SCAVALLOC_PROF_RATE", "64KiB"), ("SCAVALLOC_PROF_SEED", "12345")],
        Duration::from_secs(120),
    );
}

/// The mappings cover the test binary's code (with its build id, where it
/// has one) and every location of the profile's own frames is in one.
#[test]
fn mappings_cover_the_program() {
    support::as_child("mappings_cover_the_program", |_| {
        let sizes: Vec<usize> = vec![100; 64];
        let mut a = Vec::with_capacity(sizes.len());
        site_a(&sizes, &mut a);
        let p = profile_now();
        let here = site_a as *const () as usize as u64;
        let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        let m = p
            .mapping
            .iter()
            .find(|m| m.memory_start <= here && here < m.memory_limit)
            .expect("a mapping holds the test's code");
        assert_eq!(string(&p, m.filename), exe.to_str().unwrap());
        for l in &p.location {
            if l.mapping_id != 0 {
                let m = p.mapping.iter().find(|m| m.id == l.mapping_id).expect("mapping id resolves");
                assert!(m.memory_start <= l.address && l.address < m.memory_limit);
            }
        }
        assert!(site_totals(&p, site_a as *const () as usize)[0] > 0, "site a sampled");
        free_all(&mut a, |_| false);
    });
    support::run_case(
        "mappings_cover_the_program",
        "rate-1",
        &[("SCAVALLOC_PROF_RATE", "1")],
        Duration::from_secs(120),
    );
}

/// With the `symbolize` feature the profile names its own functions: the
/// samples whose first frame lies in `site_a` name `site_a` (with this
/// file) at that frame, the mapping says it is symbolized, and the figures
/// are those of the unnamed profile.
#[test]
fn symbolized_profile_names_the_sites() {
    support::as_child("symbolized_profile_names_the_sites", |_| {
        let sizes: Vec<usize> = vec![100; 64];
        let mut a = Vec::with_capacity(sizes.len());
        site_a(&sizes, &mut a);
        let mut gz = Vec::new();
        scavalloc::profile::write_pprof_symbolized(&mut gz).expect("write_pprof_symbolized");
        let p = decode(&gz);
        let site = site_a as *const () as usize;
        assert_eq!(site_totals(&p, site), site_totals(&profile_now(), site), "the same figures");
        let mut named = 0;
        for s in &p.sample {
            let first = p.location.iter().find(|l| l.id == s.location_id[0]).expect("location id resolves");
            if !in_fn(first.address, site) {
                continue;
            }
            let outer = first.line.last().expect("the site's frame is named");
            let f = p.function.iter().find(|f| f.id == outer.function_id).expect("function id resolves");
            assert!(string(&p, f.name).ends_with("site_a"), "named {:?}", string(&p, f.name));
            assert!(string(&p, f.filename).ends_with("profile.rs") && outer.line > 0);
            let m = p.mapping.iter().find(|m| m.id == first.mapping_id).expect("mapping id resolves");
            assert!(m.has_functions && m.has_filenames && m.has_line_numbers && m.has_inline_frames);
            named += 1;
        }
        assert!(named > 0, "site a sampled");
        free_all(&mut a, |_| false);
    });
    support::run_case(
        "symbolized_profile_names_the_sites",
        "rate-1",
        &[("SCAVALLOC_PROF_RATE", "1")],
        Duration::from_secs(120),
    );
}

/// Profiles written while four threads allocate and free (all sampled)
/// decode, and once the threads are done their site holds nothing in use;
/// a child forked while another thread writes a profile can allocate and
/// write one of its own.
#[test]
fn dumps_during_threads_and_fork() {
    support::as_child("dumps_during_threads_and_fork", |_| {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut rng = Rng::new(t);
                    let mut live = Vec::with_capacity(256);
                    let mut sizes = Vec::with_capacity(64);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        sizes.clear();
                        sizes.extend((0..64).map(|_| rng.range(8, 40_000)));
                        site_b(&sizes, &mut live);
                        free_all(&mut live, |_| false);
                    }
                })
            })
            .collect();
        for _ in 0..20 {
            let p = profile_now();
            assert_eq!(p.sample_type.len(), 4);
        }
        // Forks while a thread writes profiles.
        let dumper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    black_box(profile_now());
                    n += 1;
                }
                n
            })
        };
        for _ in 0..10 {
            let end = support::fork_child(Duration::from_secs(30), "child writing a profile", || {
                let sizes = vec![64usize; 16];
                let mut v = Vec::with_capacity(16);
                site_a(&sizes, &mut v);
                let p = profile_now();
                i32::from(site_totals(&p, site_a as *const () as usize)[2] < 16)
            });
            assert_eq!(end, support::ForkEnd::Done);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        assert!(dumper.join().unwrap() > 0);
        let p = profile_now();
        let t = site_totals(&p, site_b as *const () as usize);
        assert!(t[0] > 0, "the workers were sampled");
        assert_eq!(t[2..], [0, 0], "everything the workers allocated was freed");
    });
    support::run_case(
        "dumps_during_threads_and_fork",
        "rate-1",
        &[("SCAVALLOC_PROF_RATE", "1")],
        Duration::from_secs(180),
    );
}
