//! The workloads shared by `benches/alloc.rs` and the `larson_rss`
//! example: the random numbers, the object layout, and the larson-style
//! server.

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout};
use std::ptr;
use std::sync::mpsc;

/// xorshift64: a few cycles a number, the same sequence for both allocators.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` for `n < 2^32`, by multiplication (no division).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

/// Objects are 8-aligned, like most Rust values; glibc serves that with a
/// plain `malloc` for every size used here.
pub fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// `a.alloc`, with the first byte written (a new object is used).
///
/// # Safety
///
/// `size` is non-zero.
#[inline(always)]
pub unsafe fn alloc_touch<A: GlobalAlloc>(a: &A, size: usize) -> *mut u8 {
    let l = layout(size);
    // SAFETY: non-zero size (the caller's promise).
    let p = unsafe { a.alloc(l) };
    if p.is_null() {
        handle_alloc_error(l);
    }
    // SAFETY: `p` is valid for `size >= 1` bytes.
    unsafe { ptr::write_volatile(p, 1) };
    p
}

// Larson.

pub const LARSON_THREADS: usize = 4;
pub const LARSON_SLOTS: usize = 5000;
pub const LARSON_STEPS: usize = 5000;

fn larson_size(rng: &mut Rng) -> usize {
    8 + rng.below(993)
}

/// Larson & Krishnan's server: each thread owns `LARSON_SLOTS` objects of
/// 8-1000 bytes and replaces random ones; after every `LARSON_STEPS`
/// replacements it hands half of its slots to the next thread, which frees
/// those objects as it replaces them.
pub fn larson<A: GlobalAlloc + Sync>(a: &A, threads: usize, rounds: usize) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::channel::<Vec<(usize, usize)>>()).unzip();
    std::thread::scope(|scope| {
        for (t, rx) in rxs.into_iter().enumerate() {
            let tx = txs[(t + 1) % threads].clone();
            scope.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let mut slots: Vec<(usize, usize)> = (0..LARSON_SLOTS)
                    .map(|_| {
                        let s = larson_size(&mut rng);
                        // SAFETY: non-zero size.
                        (unsafe { alloc_touch(a, s) } as usize, s)
                    })
                    .collect();
                for _ in 0..rounds {
                    for _ in 0..LARSON_STEPS {
                        let i = rng.below(LARSON_SLOTS);
                        let (p, s) = slots[i];
                        // SAFETY: allocated by `a` with this layout (here or
                        // in another thread), freed once.
                        unsafe { a.dealloc(p as *mut u8, layout(s)) };
                        let s = larson_size(&mut rng);
                        // SAFETY: non-zero size.
                        slots[i] = (unsafe { alloc_touch(a, s) } as usize, s);
                    }
                    tx.send(slots.split_off(LARSON_SLOTS / 2)).unwrap();
                    slots.extend(rx.recv().unwrap());
                }
                for (p, s) in slots {
                    // SAFETY: allocated by `a` with this layout, freed once.
                    unsafe { a.dealloc(p as *mut u8, layout(s)) };
                }
            });
        }
    });
}
