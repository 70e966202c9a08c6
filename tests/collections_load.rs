//! std collections under load with `Scavalloc` as the global allocator:
//! growth through every size class into large objects, and contents checked
//! after every phase. The tests of this file run in parallel with each
//! other, which is part of the load.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write;
use std::sync::mpsc;
use std::thread;

mod support;
use support::Rng;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

fn value(i: u64) -> u64 {
    support::mix(i ^ 0x1234_5678)
}

#[test]
fn vec_growth_keeps_contents() {
    // One element at a time: every realloc from 8 bytes to 16 MiB.
    let mut v: Vec<u64> = Vec::new();
    for i in 0..2_000_000u64 {
        v.push(value(i));
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == value(i as u64)), "Vec<u64> lost contents while growing");
    // Shrink back through the boundaries.
    for keep in [1_000_000usize, 4096, 4097, 1000, 3, 1] {
        v.truncate(keep);
        v.shrink_to_fit();
        assert_eq!(v.capacity(), keep);
        assert!(v.iter().enumerate().all(|(i, &x)| x == value(i as u64)), "shrink_to_fit({keep}) lost contents");
    }

    // Bytes one at a time (large objects grown a page at a time).
    let mut b: Vec<u8> = Vec::new();
    for i in 0..6_000_000usize {
        b.push((i % 251) as u8);
    }
    assert!(b.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8), "Vec<u8> lost contents");

    // Many small vectors alive at once, each growing, interleaved.
    let mut vs: Vec<Vec<u32>> = (0..5000).map(|_| Vec::new()).collect();
    let mut rng = Rng::new(1);
    for round in 0..60u32 {
        for (j, w) in vs.iter_mut().enumerate() {
            if rng.below(4) != 0 {
                w.push(round ^ j as u32);
            }
        }
        if round % 20 == 19 {
            // Drop every third and start it again.
            for w in vs.iter_mut().step_by(3) {
                *w = Vec::new();
            }
        }
    }
    for (j, w) in vs.iter().enumerate() {
        let mut last = None;
        for &x in w {
            let round = x ^ j as u32;
            assert!(round < 60 && last.is_none_or(|l| round > l), "vector {j} holds {x:#x}");
            last = Some(round);
        }
    }

    // VecDeque wrap-around and growth.
    let mut d: VecDeque<u64> = VecDeque::new();
    let (mut head, mut tail) = (0u64, 0u64);
    for i in 0..400_000u64 {
        d.push_back(value(tail));
        tail += 1;
        if i % 3 == 0 {
            assert_eq!(d.pop_front(), Some(value(head)));
            head += 1;
        }
    }
    assert_eq!(d.len() as u64, tail - head);
    assert!(d.iter().enumerate().all(|(k, &x)| x == value(head + k as u64)));
}

#[test]
fn hashmap_under_load() {
    let n = 200_000u64;
    let mut m: HashMap<u64, String> = HashMap::new();
    for i in 0..n {
        assert!(m.insert(value(i), format!("v{i}-{}", "x".repeat((i % 40) as usize))).is_none());
    }
    assert_eq!(m.len() as u64, n);
    for i in 0..n {
        let s = m.get(&value(i)).unwrap_or_else(|| panic!("key {i} missing"));
        assert_eq!(*s, format!("v{i}-{}", "x".repeat((i % 40) as usize)));
    }
    for i in (0..n).filter(|i| i % 2 == 1) {
        assert!(m.remove(&value(i)).is_some());
    }
    m.shrink_to_fit();
    for i in 0..n {
        assert_eq!(m.contains_key(&value(i)), i % 2 == 0, "key {i}");
    }
    // String keys, vector values, rewritten in place.
    let mut h: HashMap<String, Vec<u8>> = HashMap::new();
    for i in 0..50_000usize {
        h.entry(format!("key-{}", i % 20_000)).or_default().extend(std::iter::repeat_n(i as u8, i % 7 + 1));
    }
    assert_eq!(h.len(), 20_000);
    for k in 0..20_000usize {
        let want: Vec<u8> =
            (k..50_000usize).step_by(20_000).flat_map(|i| std::iter::repeat_n(i as u8, i % 7 + 1)).collect();
        assert_eq!(h[&format!("key-{k}")], want, "key-{k}");
    }
}

#[test]
fn btreemap_under_load() {
    let n = 150_000u64;
    let mut m: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for i in 0..n {
        m.insert(value(i), (0..(i % 13)).map(|k| k * i).collect());
    }
    assert_eq!(m.len() as u64, n);
    let mut keys: Vec<u64> = (0..n).map(value).collect();
    keys.sort_unstable();
    assert!(m.keys().copied().eq(keys.iter().copied()), "BTreeMap keys out of order or lost");
    for i in 0..n {
        let want: Vec<u64> = (0..(i % 13)).map(|k| k * i).collect();
        assert_eq!(m[&value(i)], want, "value of key {i}");
    }
    // Remove a middle range, check what is left.
    let (lo, hi) = (keys[n as usize / 4], keys[3 * n as usize / 4]);
    let removed: Vec<u64> = m.range(lo..hi).map(|(k, _)| *k).collect();
    for k in &removed {
        m.remove(k);
    }
    assert_eq!(m.len(), n as usize - removed.len());
    assert!(m.keys().all(|&k| k < lo || k >= hi));
    assert_eq!(m.range(lo..hi).count(), 0);
}

#[test]
fn string_building() {
    let mut s = String::new();
    for i in 0..300_000u32 {
        writeln!(s, "line {i} {:x}", value(i as u64)).unwrap();
    }
    for (i, line) in s.lines().enumerate() {
        assert_eq!(line, format!("line {i} {:x}", value(i as u64)));
    }
    // A character at a time, multi-byte ones included.
    let chars = ['a', 'é', '€', '𝄞'];
    let mut t = String::new();
    for i in 0..1_000_000usize {
        t.push(chars[i % 4]);
    }
    assert_eq!(t.chars().count(), 1_000_000);
    assert!(t.chars().enumerate().all(|(i, c)| c == chars[i % 4]));
    // Concatenation and repetition.
    let parts: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
    let joined = parts.join(",");
    assert!(joined.split(',').enumerate().all(|(i, p)| p == i.to_string()));
    let big = "0123456789".repeat(500_000);
    assert_eq!(big.len(), 5_000_000);
    assert!(big.as_bytes().chunks(10).all(|c| c == b"0123456789"));
}

/// Collections built on one thread, checked and dropped on another.
#[test]
fn collections_built_and_dropped_on_different_threads() {
    type Bundle = (u64, Vec<u64>, HashMap<u64, String>, BTreeMap<u64, Box<[u8]>>, String);
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 40;
    let (txs, rxs): (Vec<mpsc::Sender<Bundle>>, Vec<mpsc::Receiver<Bundle>>) =
        (0..THREADS).map(|_| mpsc::channel()).unzip();
    let handles: Vec<_> =
        rxs.into_iter()
            .enumerate()
            .map(|(t, rx)| {
                let tx = txs[(t + 1) % THREADS as usize].clone();
                thread::spawn(move || {
                    let mut checked = 0;
                    for r in 0..ROUNDS {
                        let id = t as u64 * 1000 + r;
                        let n = 500 + (id % 7) * 300;
                        let v: Vec<u64> = (0..n).map(|i| value(id ^ i)).collect();
                        let h: HashMap<u64, String> = (0..n).map(|i| (i, format!("{id}:{i}"))).collect();
                        let b: BTreeMap<u64, Box<[u8]>> =
                            (0..n / 4).map(|i| (i, vec![(id + i) as u8; (i as usize % 50) * 37 + 1].into())).collect();
                        let s: String = (0..n).map(|i| char::from(b'a' + ((id + i) % 26) as u8)).collect();
                        tx.send((id, v, h, b, s)).unwrap();
                        // Check what the previous thread built, then drop it here.
                        let (id, v, h, b, s) = rx.recv().unwrap();
                        let n = 500 + (id % 7) * 300;
                        assert!(v.iter().enumerate().all(|(i, &x)| x == value(id ^ i as u64)), "vec of bundle {id}");
                        assert_eq!(h.len() as u64, n);
                        assert!(h.iter().all(|(i, s)| *s == format!("{id}:{i}")), "map of bundle {id}");
                        assert_eq!(b.len() as u64, n / 4);
                        assert!(
                            b.iter().all(|(i, x)| x.len() == (*i as usize % 50) * 37 + 1
                                && x.iter().all(|&c| c == (id + i) as u8)),
                            "btree of bundle {id}"
                        );
                        assert!(s.bytes().enumerate().all(|(i, c)| c == b'a' + ((id + i as u64) % 26) as u8));
                        checked += 1;
                    }
                    checked
                })
            })
            .collect();
    drop(txs);
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, THREADS * ROUNDS);
}
