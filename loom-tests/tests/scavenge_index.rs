//! Model checks of the scavenge index (the scavenge index, `scavenge/index.rs`): a
//! find that races with marks never skips a marked chunk, and the search
//! word never loses a mark.
#![cfg(loom)]

use loom::sync::atomic::AtomicU8;
use loom::sync::{Arc, Mutex};
use loom::thread;
use scavalloc::testing::ScavengeIndex;
use scavalloc_loom_tests::model;

/// An index over chunks 0..16 with its own storage; marks and clears are
/// serialised by `lock`, as the heap lock does in the allocator.
struct Fixture {
    index: ScavengeIndex,
    lock: Mutex<()>,
    _storage: Box<[AtomicU8]>,
}

fn fixture() -> Arc<Fixture> {
    let storage: Box<[AtomicU8]> = (0..2).map(|_| AtomicU8::new(0)).collect();
    // SAFETY: the storage lives in the fixture as long as the index, holds
    // one zeroed byte per 8 of the 16 chunks.
    let index = unsafe { ScavengeIndex::new(storage.as_ptr()) };
    index.grow(0, 15);
    Arc::new(Fixture { index, lock: Mutex::new(()), _storage: storage })
}

/// A scavenger lowers the search word past an exhausted chunk while a free
/// marks a chunk below the word (the case a one-bit mark does not cover):
/// after both, a find must still see the new chunk.
#[test]
fn mark_below_the_word_during_a_find_is_not_lost() {
    model(|| {
        let f = fixture();
        {
            let _g = f.lock.lock().unwrap();
            f.index.mark(3, 3);
            f.index.mark(12, 12);
        }
        // The scavenger has emptied chunk 12.
        {
            let _g = f.lock.lock().unwrap();
            f.index.clear(12);
        }
        let freer = {
            let f = f.clone();
            thread::spawn(move || {
                let _g = f.lock.lock().unwrap();
                f.index.mark(8, 8);
            })
        };
        let first = f.index.find();
        freer.join().unwrap();
        assert!(first == Some(3) || first == Some(8), "{first:?}");
        assert_eq!(f.index.find(), Some(8), "the mark of chunk 8 was lost");
    });
}

/// A scavenger finds and clears while a free marks above it and another
/// find runs: afterwards every chunk still marked is found, highest first.
#[test]
fn concurrent_finds_and_a_mark_above() {
    model(|| {
        let f = fixture();
        {
            let _g = f.lock.lock().unwrap();
            f.index.mark(2, 5);
        }
        let scavenger = {
            let f = f.clone();
            thread::spawn(move || {
                let c = f.index.find()?;
                let _g = f.lock.lock().unwrap();
                f.index.clear(c);
                Some(c)
            })
        };
        let freer = {
            let f = f.clone();
            thread::spawn(move || {
                let _g = f.lock.lock().unwrap();
                f.index.mark(14, 14);
            })
        };
        let _ = f.index.find();
        let cleared = scavenger.join().unwrap();
        freer.join().unwrap();
        // Whatever the scavenger cleared, every chunk still marked must be
        // found, highest first.
        let mut marked = vec![2, 3, 4, 5, 14];
        marked.retain(|&c| Some(c) != cleared);
        while let Some(&top) = marked.last() {
            assert_eq!(f.index.find(), Some(top), "cleared {cleared:?}");
            let _g = f.lock.lock().unwrap();
            f.index.clear(top);
            marked.pop();
        }
        assert_eq!(f.index.find(), None);
    });
}
