//! `Scavalloc` as the global allocator of this test binary, under real
//! work: std collections, every alignment, realloc across every boundary,
//! zeroed memory, and a multi-thread stress with cross-thread frees.

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

/// xorshift64*: small and deterministic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The byte expected at offset `i` of object `id`.
fn pattern(id: u64, i: usize) -> u8 {
    (id.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8 ^ (i as u8)
}

fn fill(p: *mut u8, len: usize, id: u64) {
    for i in 0..len {
        // SAFETY: `p` points to at least `len` writable bytes.
        unsafe { *p.add(i) = pattern(id, i) };
    }
}

fn check(p: *const u8, len: usize, id: u64) {
    for i in 0..len {
        // SAFETY: `p` points to at least `len` readable bytes.
        let got = unsafe { *p.add(i) };
        assert_eq!(got, pattern(id, i), "object {id} byte {i} of {len}");
    }
}

#[test]
fn std_collections_hold_their_contents() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..300_000u64 {
        v.push(i * 3);
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3));
    let mut m = HashMap::new();
    for i in 0..60_000u32 {
        m.insert(i, format!("value-{i}-{}", "x".repeat((i % 50) as usize)));
    }
    for i in (0..60_000u32).step_by(2) {
        m.remove(&i);
    }
    for i in 0..60_000u32 {
        match m.get(&i) {
            Some(s) => assert!(i % 2 == 1 && *s == format!("value-{i}-{}", "x".repeat((i % 50) as usize))),
            None => assert_eq!(i % 2, 0),
        }
    }
    let mut b = BTreeMap::new();
    for i in 0..50_000u64 {
        b.insert(i.wrapping_mul(2654435761) % 100_003, vec![i as u8; (i % 100) as usize]);
    }
    for (k, v) in &b {
        assert!(*k < 100_003);
        assert!(v.iter().all(|&x| x == v.first().copied().unwrap_or(0)));
    }
    let mut s = String::new();
    for i in 0..20_000 {
        s.push_str(&i.to_string());
        s.push(',');
    }
    let parsed: Vec<u32> = s.trim_end_matches(',').split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!(parsed.len(), 20_000);
    assert!(parsed.iter().enumerate().all(|(i, &x)| x == i as u32));
}

#[test]
fn every_alignment_is_honoured() {
    for shift in 0..=22 {
        let align = 1usize << shift;
        for size in [1usize, 7, 8, 24, 100, 4096, 40_000, 1 << 20] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let mut ptrs = Vec::new();
            for k in 0..3 {
                // SAFETY: the layout has a non-zero size.
                let p = unsafe { alloc(layout) };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                fill(p, size, (shift * 100 + k) as u64);
                ptrs.push(p);
            }
            for (k, p) in ptrs.into_iter().enumerate() {
                check(p, size, (shift * 100 + k) as u64);
                // SAFETY: allocated above with this layout.
                unsafe { dealloc(p, layout) };
            }
        }
    }
}

#[test]
fn realloc_keeps_contents_across_every_boundary() {
    let sizes =
        [1usize, 8, 9, 16, 17, 100, 1024, 1025, 4000, 8192, 32_767, 32_768, 32_769, 70_000, 1 << 20, 3 << 20, 9 << 20];
    for align in [1usize, 8, 16, 64, 4096] {
        for (id, &start) in sizes.iter().enumerate() {
            let layout = Layout::from_size_align(start, align).unwrap();
            // SAFETY: non-zero size.
            let mut p = unsafe { alloc(layout) };
            assert!(!p.is_null());
            fill(p, start, id as u64);
            let mut size = start;
            // Up through every size, then back down.
            for &next in sizes.iter().chain(sizes.iter().rev()) {
                // SAFETY: `p` was allocated with `size` and `align`.
                let q = unsafe { realloc(p, Layout::from_size_align(size, align).unwrap(), next) };
                assert!(!q.is_null());
                assert_eq!(q as usize % align, 0);
                check(q, size.min(next), id as u64);
                fill(q, next, id as u64);
                p = q;
                size = next;
            }
            // SAFETY: the last realloc left `size` bytes with `align`.
            unsafe { dealloc(p, Layout::from_size_align(size, align).unwrap()) };
        }
    }
}

#[test]
fn alloc_zeroed_is_zero_after_dirty_reuse() {
    for size in [8usize, 24, 200, 3000, 32_768, 40_000, 300_000, 5 << 20] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        for round in 0..20 {
            // SAFETY: non-zero size.
            let p = unsafe { alloc(layout) };
            // SAFETY: `p` has `size` bytes.
            unsafe { std::ptr::write_bytes(p, 0xFF, size) };
            // SAFETY: allocated above.
            unsafe { dealloc(p, layout) };
            // SAFETY: non-zero size.
            let z = unsafe { alloc_zeroed(layout) };
            assert!(!z.is_null());
            // SAFETY: `z` has `size` readable bytes.
            let bytes = unsafe { std::slice::from_raw_parts(z, size) };
            assert!(bytes.iter().all(|&b| b == 0), "size {size} round {round}: dirty bytes in alloc_zeroed");
            // SAFETY: allocated above.
            unsafe { dealloc(z, layout) };
        }
    }
}

/// One live object of the stress.
struct Obj {
    ptr: usize,
    size: usize,
    align: usize,
    id: u64,
}

fn random_layout(rng: &mut Rng) -> (usize, usize) {
    let size = match rng.below(100) {
        0..=69 => 1 + rng.below(256),
        70..=94 => 1 + rng.below(32 << 10),
        _ => 1 + rng.below(1 << 20),
    };
    let wide = rng.below(10) == 0;
    let align = 1 << rng.below(if wide { 13 } else { 5 });
    (size, align)
}

fn new_obj(rng: &mut Rng, id: u64) -> Obj {
    let (size, align) = random_layout(rng);
    let layout = Layout::from_size_align(size, align).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { alloc(layout) };
    assert!(!p.is_null());
    assert_eq!(p as usize % align, 0);
    // Fill only the ends and a stride for large objects, to keep it fast.
    stamp(p, size, id);
    Obj { ptr: p as usize, size, align, id }
}

fn stamp_points(size: usize) -> impl Iterator<Item = usize> {
    let stride = (size / 64).max(1);
    (0..size).step_by(stride).chain(std::iter::once(size - 1))
}

fn stamp(p: *mut u8, size: usize, id: u64) {
    for i in stamp_points(size) {
        // SAFETY: i < size.
        unsafe { *p.add(i) = pattern(id, i) };
    }
}

fn verify(o: &Obj) {
    for i in stamp_points(o.size) {
        // SAFETY: i < size of a live object.
        let got = unsafe { *(o.ptr as *const u8).add(i) };
        assert_eq!(got, pattern(o.id, i), "object {} (size {}, align {}) byte {i}", o.id, o.size, o.align);
    }
}

fn free_obj(o: Obj) {
    verify(&o);
    // SAFETY: allocated by `new_obj`/`realloc_obj` with this layout.
    unsafe { dealloc(o.ptr as *mut u8, Layout::from_size_align(o.size, o.align).unwrap()) };
}

fn realloc_obj(rng: &mut Rng, o: &mut Obj) {
    verify(o);
    let (new_size, _) = random_layout(rng);
    // SAFETY: allocated with this layout.
    let q = unsafe { realloc(o.ptr as *mut u8, Layout::from_size_align(o.size, o.align).unwrap(), new_size) };
    assert!(!q.is_null());
    assert_eq!(q as usize % o.align, 0);
    // What survives: the stamped bytes below the new size.
    for i in stamp_points(o.size).filter(|&i| i < new_size) {
        // SAFETY: i < new_size.
        assert_eq!(unsafe { *q.add(i) }, pattern(o.id, i), "object {} byte {i} after realloc", o.id);
    }
    stamp(q, new_size, o.id);
    o.ptr = q as usize;
    o.size = new_size;
}

#[test]
fn multi_thread_stress_with_cross_thread_frees() {
    const THREADS: usize = 4;
    const OPS_PER_THREAD: usize = 260_000;
    // Each thread sends some of its objects to the next, which frees them.
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel::<Vec<Obj>>()).unzip();
    let mut handles = Vec::new();
    for (t, rx) in receivers.into_iter().enumerate() {
        let tx = senders[(t + 1) % THREADS].clone();
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(0x1234_5678 + t as u64 * 7919);
            let mut live: Vec<Obj> = Vec::new();
            let mut next_id = (t as u64) << 40;
            let mut ops = 0;
            let mut outgoing = Vec::new();
            while ops < OPS_PER_THREAD {
                match rng.below(10) {
                    0..=3 => {
                        live.push(new_obj(&mut rng, next_id));
                        next_id += 1;
                    }
                    4..=5 if !live.is_empty() => {
                        let i = rng.below(live.len());
                        free_obj(live.swap_remove(i));
                    }
                    6 if !live.is_empty() => {
                        let i = rng.below(live.len());
                        realloc_obj(&mut rng, &mut live[i]);
                    }
                    7 if !live.is_empty() => {
                        let i = rng.below(live.len());
                        outgoing.push(live.swap_remove(i));
                        if outgoing.len() == 64 {
                            tx.send(std::mem::take(&mut outgoing)).unwrap();
                        }
                    }
                    _ => {
                        while let Ok(batch) = rx.try_recv() {
                            batch.into_iter().for_each(free_obj);
                        }
                    }
                }
                ops += 1;
                if live.len() > 2000 {
                    free_obj(live.swap_remove(0));
                    ops += 1;
                }
            }
            tx.send(outgoing).unwrap();
            drop(tx);
            live.into_iter().for_each(free_obj);
            // Everything sent to us until every sender is gone.
            for batch in rx {
                batch.into_iter().for_each(free_obj);
            }
            ops
        }));
    }
    drop(senders);
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(total >= 1_000_000, "{total} operations");
}
