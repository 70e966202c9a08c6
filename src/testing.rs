//! The crate's internals as its own tests, benchmarks and model checks need
//! them, in the manner of the Go runtime's `export_test.go`. Hidden from the
//! documentation and compiled only with the `testing` feature (or under
//! `--cfg loom`, for `loom-tests/`): programs never see it.
//!
//! Everything here is either a read-only fact (size classes, settings), a
//! structure that owns its own state and cannot reach the process's heap (a
//! standalone [`PageAlloc`] manages addresses it never touches), or an
//! `unsafe fn` whose contract says which invariant the caller keeps.

#[cfg(loom)]
pub use crate::scavenge::index::ScavengeIndex;
#[cfg(loom)]
pub use crate::sync::{heavy_fence, Handshake, Mutex, Parker};

#[cfg(not(loom))]
pub use imp::*;

#[cfg(not(loom))]
mod imp {
    pub use crate::pages::{PageAlloc, PageRun, CHUNK_BYTES, CHUNK_PAGES, PAGE_SIZE};
    pub use crate::spans::cache::{bin_capacity, home_capacity, MAX_CACHED_BYTES_PER_THREAD};
    pub use crate::spans::central::object_is_free;
    pub use crate::spans::class_for;
    pub use crate::spans::pagemap::span_is_owned;
    pub use crate::spans::sizeclass::{class_objects, class_size, size_to_class, NUM_CLASSES};

    /// Whether free pages are given back with `MADV_FREE`
    /// (`SCAVALLOC_RELEASE=free`), so that RSS falls only under pressure.
    pub fn release_mode_is_free() -> bool {
        crate::config::get().release_mode == crate::os::ReleaseMode::Free
    }

    /// Starts logging every range given back to the OS (`madvise` and
    /// `process_madvise`), with room for `capacity` ranges; false if the
    /// log could not be mapped.
    pub fn start_release_log(capacity: usize) -> bool {
        crate::os::release_log::start(capacity).is_ok()
    }

    /// Stops the release log and returns its ranges, in the order given
    /// back, and how many did not fit. Call it when no release is under
    /// way (the scavenger idle).
    pub fn take_release_log() -> (Vec<(usize, usize)>, usize) {
        let mut out = (Vec::new(), 0);
        crate::os::release_log::stop(|ranges, dropped| {
            // Copied before the log is unmapped.
            out = (ranges.to_vec(), dropped);
        });
        out
    }

    /// The OS page size the allocator works with (the emulated one under
    /// `SCAVALLOC_TEST_PAGE_SIZE`).
    pub fn os_page_size() -> usize {
        crate::os::page_size()
    }

    /// Heap pages a release has taken out of the heap right now, for its
    /// `madvise` (none, in a child just after `fork`).
    pub fn pages_being_released() -> usize {
        crate::pages::heap::HEAP.lock().pages().pages_releasing()
    }

    /// Heap-lock acquisitions by the page-run paths (spans, large objects,
    /// arenas, and the page cache's refills and returns) since start-up.
    pub fn page_run_heap_locks() -> u64 {
        crate::pages::cache::heap_takes()
    }

    /// Turns the per-CPU page cache on or off (off returns every block to
    /// the heap first); on at start-up. Either way every invariant holds:
    /// spans then come from the heap, as before the cache existed.
    pub fn set_page_cache(on: bool) {
        crate::pages::cache::set_enabled(on);
    }

    /// The scavenger's CPU budget in percent of the machine
    /// (`SCAVALLOC_SCAVENGE_PERCENT`).
    pub fn scavenge_percent() -> f64 {
        crate::config::get().scavenger.cpu_percent
    }

    /// The process's cgroup as the scavenger reads it (`detect`,
    /// `read_memory`, `cpu_limit`, the parsers), and `set_test_root`, which
    /// makes later detections read a fake tree under a directory.
    pub use crate::os::cgroup;
}
