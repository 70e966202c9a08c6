//! The scavenger: gives free pages of the page heap back to the OS.
//!
//! # What this layer owns
//!
//! * [`index`]: which chunks may hold free pages not yet released (a leaf
//!   structure the page heap marks on every free).
//! * The release operation ([`release`]): find a chunk through the index,
//!   pick its highest run of free, unreleased pages under the heap lock,
//!   take the run out of the heap, drop the lock for the `madvise`, and put
//!   the run back marked released.
//! * The goals ([`goals`]): the retained goal, (100 + retain-extra)% of the
//!   recent peak of pages in use, and the memory limit.
//! * The paths that release: the background thread ([`background`], paced by
//!   the [`controller`]), the allocation path when the heap grows past the
//!   retained goal or the memory limit ([`alloc_pages`]), and
//!   [`crate::release_all`].
//! * When deep release runs: the span layer installs it ([`DeepRelease`]),
//!   and the background thread gives it the CPU budget the page heap does
//!   not need.
//! * When thread caches are trimmed: the span layer installs the trimming
//!   ([`CacheTrim`]), and the background thread runs it every quarter
//!   second.
//!
//! The span layer takes and returns pages through [`alloc_pages`] and
//! [`free_pages`], so that these policies see every change; a span's pages
//! come from and go back to the per-CPU page cache
//! ([`crate::pages::cache`]) when they can, whose free pages the goals count
//! as free (resident unless released), and which the scavenger empties
//! into the heap before it releases. This layer uses
//! the page heap and the OS; it knows nothing of spans or objects (deep
//! release and cache trimming reach it only as the functions the span
//! layer installs).

pub mod index;

#[cfg(not(loom))]
pub mod background;
#[cfg(not(loom))]
pub mod container;
#[cfg(not(loom))]
pub mod controller;
#[cfg(not(loom))]
pub mod goals;
#[cfg(not(loom))]
pub mod window;

#[cfg(not(loom))]
pub use imp::*;

#[cfg(not(loom))]
mod imp {
    use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

    use super::{background, goals, window};
    use crate::os;
    use crate::pages::cache::{self, count_heap_take};
    use crate::pages::heap::{self, RunUse, HEAP};
    use crate::pages::{PageRun, ReleaseCandidate, CHUNK_PAGES, PAGE_SIZE};

    /// Which path a release serves (for the statistics, and for whether
    /// dense chunks are spared).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Path {
        /// The background thread: spares dense chunks.
        Background,
        /// Heap growth while over the retained goal.
        Eager,
        /// The memory limit: takes from any chunk.
        Limit,
        /// [`crate::release_all`]: everything free.
        Forced,
        /// Memory pressure, or the control group near its limit: everything
        /// free, at once.
        Pressure,
    }

    /// Bytes released by each path, in [`Path`] order.
    static RELEASED: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];
    /// Allocations that left retained memory above the memory limit
    /// although everything free had been released.
    static LIMIT_OVERRUNS: AtomicU64 = AtomicU64::new(0);

    /// Bytes of pages that the page heap counts in use but whose memory
    /// was given back to the OS: free pages inside spans (deep release) and
    /// the freed chunks of user arenas waiting in quarantine. The layers
    /// above keep it up to date so that the goals count what is truly
    /// resident.
    static RELEASED_IN_USE: AtomicUsize = AtomicUsize::new(0);

    /// `bytes` of pages in use were given back to the OS.
    pub fn note_released_in_use(bytes: usize) {
        RELEASED_IN_USE.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `bytes` counted by [`note_released_in_use`] are resident again, or
    /// went back to the page heap (marked released there).
    pub fn note_reclaimed_in_use(bytes: usize) {
        RELEASED_IN_USE.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Memory the OS holds for the heap, as of the last change: mapped,
    /// minus what the page heap released, minus what was released of the
    /// pages in use, minus the released pages the page cache holds (the
    /// heap counts the cache's pages in use).
    pub fn retained() -> usize {
        heap::RETAINED
            .load(Ordering::Relaxed)
            .saturating_sub(RELEASED_IN_USE.load(Ordering::Relaxed))
            .saturating_sub(cache::released_bytes())
    }

    /// Pages in use, minus what was released of them: the base of the
    /// retained goal.
    pub fn resident_in_use() -> usize {
        resident(heap::IN_USE.load(Ordering::Relaxed))
    }

    /// `in_use` bytes of pages the heap handed out, less what was released
    /// of them and less the free pages the page cache holds now (they are
    /// free, not in use). Applied to a past peak of the heap's figure, the
    /// cache's part is today's, not the peak's: off by what the cache's
    /// holdings moved since, at most 512 KiB per CPU.
    pub fn resident(in_use: usize) -> usize {
        in_use.saturating_sub(RELEASED_IN_USE.load(Ordering::Relaxed)).saturating_sub(cache::free_bytes())
    }

    /// Bytes released so far by `path`.
    pub fn released_by(path: Path) -> usize {
        RELEASED[path as usize].load(Ordering::Relaxed)
    }

    /// Allocations that overran the memory limit.
    pub fn limit_overruns() -> u64 {
        LIMIT_OVERRUNS.load(Ordering::Relaxed)
    }

    /// Heap pages per physical page (1 unless the OS page is larger than
    /// the heap's 8 KiB page).
    fn pages_per_physical_page() -> usize {
        (os::page_size() / PAGE_SIZE).max(1)
    }

    /// Heap pages per transparent huge page, if huge pages fit in a chunk.
    fn pages_per_huge_page() -> usize {
        let n = os::huge_page_size() / PAGE_SIZE;
        if n > 1 && n <= CHUNK_PAGES {
            n
        } else {
            1
        }
    }

    /// Runs taken out of the heap and released together: one heap-lock
    /// round trip and (where the kernel allows) one system call per batch.
    const BATCH: usize = 32;

    /// Releases up to about `max_bytes` of free pages to the OS, highest
    /// addresses first, for `path`; returns the bytes released (possibly a
    /// little more than asked, to keep physical and huge pages whole, and
    /// less only when nothing more is free).
    pub fn release(max_bytes: usize, path: Path) -> usize {
        let index = &heap::INDEX;
        let skip_dense = path == Path::Background;
        let (min_pages, huge_pages) = (pages_per_physical_page(), pages_per_huge_page());
        let mut released = 0;
        // Once a dense chunk has been passed over, the search goes on below
        // it without moving the shared search word (others may want it).
        let mut below: Option<usize> = None;
        let mut exhausted = false;
        while released < max_bytes && !exhausted {
            // Take a batch of runs out of the heap under one lock.
            let mut runs = [(0usize, 0usize); BATCH];
            // Bytes of each run not released before (a run of whole
            // physical pages may hold heap pages released already).
            let mut fresh = [0usize; BATCH];
            let mut n = 0;
            let mut taken = 0;
            {
                let mut heap = HEAP.lock();
                if heap::fork_pending() {
                    // A fork waits for the releases in flight: start none.
                    break;
                }
                while n < BATCH && released + taken < max_bytes {
                    let ci = match below {
                        None => index.find(),
                        Some(limit) => index.find_below(limit),
                    };
                    let Some(ci) = ci else {
                        exhausted = true;
                        break;
                    };
                    let want = (max_bytes - released - taken).div_ceil(PAGE_SIZE);
                    match heap.pages().release_candidate(ci, min_pages, want, huge_pages, skip_dense) {
                        ReleaseCandidate::Dense => below = Some(ci),
                        ReleaseCandidate::Nothing => {}
                        ReleaseCandidate::Run { base, npages, released: already } => {
                            heap.begin_release(base, npages);
                            runs[n] = (base, npages * PAGE_SIZE);
                            fresh[n] = (npages - already) * PAGE_SIZE;
                            taken += fresh[n];
                            n += 1;
                            if below.is_some() {
                                // Stay on this chunk: it may hold more.
                                below = Some(ci + 1);
                            }
                        }
                    }
                }
            }
            if n == 0 {
                break;
            }
            let mut ok = [false; BATCH];
            // SAFETY: every run is out of the heap (marked in use but owned
            // by no one), so nothing lives in it while the lock is dropped.
            unsafe { os::release_many(&runs[..n], &mut ok) };
            let mut heap = HEAP.lock();
            for ((&(base, bytes), &done), &new_bytes) in runs[..n].iter().zip(&ok).zip(&fresh) {
                heap.end_release(base, bytes / PAGE_SIZE, done);
                if done {
                    released += new_bytes;
                } else {
                    exhausted = true;
                }
            }
        }
        RELEASED[path as usize].fetch_add(released, Ordering::Relaxed);
        released
    }

    /// Takes `npages` pages aligned to `align_pages` from the page heap, for
    /// `usage`. If the allocation took released pages back into use while
    /// over the memory limit, or grew the heap while over the retained
    /// goal, free pages must be released to make up for it (Go's
    /// heap-growth and memory-limit scavenging); that is owed, not done
    /// here: this often runs under a class lock, and a release is a system
    /// call. [`settle_owed_releases`] does it when the public entry point
    /// that got here has dropped every lock ([`background::run_deferred`]).
    ///
    /// A span of fewer than [`cache::MAX_CACHED_RUN`] pages comes from the
    /// page cache, which takes the heap lock only to refill.
    pub fn alloc_pages(npages: usize, align_pages: usize, usage: RunUse) -> Option<PageRun> {
        let (run, grown) = if usage == RunUse::Span && cache::serves(npages, align_pages) {
            cache::alloc(npages, align_pages)?
        } else {
            count_heap_take();
            heap::alloc_growing(npages, align_pages, usage)?
        };
        if run.scavenged_bytes > 0 {
            window::note_refaulted(run.scavenged_bytes);
        }
        let over_limit = run.scavenged_bytes > 0 && goals::memory_limit().is_some();
        if over_limit || grown > 0 {
            if over_limit {
                LIMIT_OWED.store(true, Ordering::Relaxed);
            }
            if grown > 0 {
                GROWN_OWED.fetch_add(grown, Ordering::Relaxed);
            }
            background::want_release();
        }
        Some(run)
    }

    /// An allocation took released pages back while a memory limit is set:
    /// retained memory may be over it (see [`alloc_pages`]).
    static LIMIT_OWED: AtomicBool = AtomicBool::new(false);
    /// Bytes the heap grew by since the owed releases were last settled.
    static GROWN_OWED: AtomicUsize = AtomicUsize::new(0);

    /// Does what [`alloc_pages`] left owed: while retained memory is over
    /// the memory limit's target, releases down to it (flushing the page
    /// cache first); while it is over the retained goal after the heap
    /// grew, releases up to what it grew by. Called with no allocator lock
    /// held.
    pub fn settle_owed_releases() {
        let limit_owed = LIMIT_OWED.swap(false, Ordering::Relaxed);
        let grown = GROWN_OWED.swap(0, Ordering::Relaxed);
        let retained_now = retained();
        let mut limit_todo = 0;
        if let Some(limit) = goals::memory_limit().filter(|_| limit_owed) {
            limit_todo = retained_now.saturating_sub(goals::limit_target(limit));
        }
        let mut eager_todo = 0;
        if grown > 0 {
            eager_todo = retained_now.saturating_sub(goals::retained_goal()).min(grown);
        }
        if limit_todo > 0 {
            // The page cache's free pages are released too.
            cache::flush_all();
            release(limit_todo.max(eager_todo), Path::Limit);
            if let Some(limit) = goals::memory_limit() {
                if retained() > limit {
                    LIMIT_OVERRUNS.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else if eager_todo > 0 {
            release(eager_todo, Path::Eager);
        }
    }

    /// Gives pages back to the page heap (a span's, to this CPU's page
    /// cache block if they lie in it), and wakes the background scavenger
    /// if that pushed retained memory over its goal.
    pub fn free_pages(base: usize, npages: usize, usage: RunUse) {
        if !(usage == RunUse::Span && cache::serves(npages, 1) && cache::free(base, npages)) {
            count_heap_take();
            HEAP.lock().free(base, npages, usage, false);
        }
        background::wake_if_over_goal();
    }

    /// Gives pages whose memory was already released to the OS (by deep
    /// release, inside a span) back to the page heap, marked released.
    pub fn free_released_pages(base: usize, npages: usize, usage: RunUse) {
        count_heap_take();
        HEAP.lock().free(base, npages, usage, true);
    }

    /// What one call of deep release did (see [`DeepRelease`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum DeepOutcome {
        /// It worked; call again at once (within the CPU budget) if `more`.
        Worked {
            /// Bytes released.
            released: usize,
            /// Spans that had pages released.
            spans: usize,
            /// Whether the pass goes on.
            more: bool,
        },
        /// Nothing to do now, but there may be soon: spans still in use, or
        /// a pass not yet due.
        Later,
        /// Under its goal: nothing to do until memory use changes.
        Idle,
    }

    /// Deep release, the release of free OS pages inside partly used spans
    /// (`crate::spans::deep`). The span layer owns it and installs it here
    /// ([`set_deep_release`]), since this layer may not call up into it;
    /// the background thread runs it on its CPU budget once the page heap is
    /// at its goal, and [`crate::release_all`] runs it too.
    pub struct DeepRelease {
        /// One step of background work at `now_ns` (monotonic), releasing
        /// up to about `max_bytes`.
        pub work: fn(now_ns: u64, max_bytes: usize) -> DeepOutcome,
        /// Releases everything it can now; returns the bytes released.
        pub release_all: fn() -> usize,
    }

    static DEEP_RELEASE: AtomicPtr<DeepRelease> = AtomicPtr::new(core::ptr::null_mut());

    /// Installs deep release (once, at start-up).
    pub fn set_deep_release(d: &'static DeepRelease) {
        DEEP_RELEASE.store(d as *const DeepRelease as *mut DeepRelease, Ordering::Release);
    }

    /// Deep release, if installed and not switched off.
    pub fn deep_release() -> Option<&'static DeepRelease> {
        if !goals::deep_release_enabled() {
            return None;
        }
        // SAFETY: only ever set from a `&'static DeepRelease`.
        unsafe { DEEP_RELEASE.load(Ordering::Acquire).as_ref() }
    }

    /// Trimming of thread caches (`crate::spans::cache::trim`): the span
    /// layer installs it ([`set_cache_trim`]); the background thread runs it
    /// every quarter second, so that caches of threads that stopped
    /// allocating, and caches over the budget for all of them, go back to
    /// the spans, whose free pages this layer then releases.
    pub struct CacheTrim {
        /// One trim round at `now_ms` ([`os::coarse_ms`]): trims the caches
        /// unused for about a second and the largest ones while all of
        /// them together are over their budget (every cache, if
        /// `everything`). Returns whether some cache still holds memory (a
        /// later round may have work).
        pub trim: fn(now_ms: u64, everything: bool) -> bool,
    }

    static CACHE_TRIM: AtomicPtr<CacheTrim> = AtomicPtr::new(core::ptr::null_mut());

    /// Installs cache trimming (once, at start-up).
    pub fn set_cache_trim(t: &'static CacheTrim) {
        CACHE_TRIM.store(t as *const CacheTrim as *mut CacheTrim, Ordering::Release);
    }

    /// Cache trimming, if installed.
    pub fn cache_trim() -> Option<&'static CacheTrim> {
        // SAFETY: only ever set from a `&'static CacheTrim`.
        unsafe { CACHE_TRIM.load(Ordering::Acquire).as_ref() }
    }

    /// Writing a heap profile on a signal (`crate::profile`, which
    /// installs it with [`set_profile_dump`]): the signal handler only
    /// notes the request ([`background::request_profile_dump`]), and the
    /// background thread writes the profile, outside any lock and outside
    /// the handler.
    pub struct ProfileDump {
        /// Writes one profile.
        pub write: fn(),
    }

    static PROFILE_DUMP: AtomicPtr<ProfileDump> = AtomicPtr::new(core::ptr::null_mut());

    /// Installs the profile writer (once, at start-up).
    pub fn set_profile_dump(d: &'static ProfileDump) {
        PROFILE_DUMP.store(d as *const ProfileDump as *mut ProfileDump, Ordering::Release);
    }

    /// The profile writer, if installed.
    pub fn profile_dump() -> Option<&'static ProfileDump> {
        // SAFETY: only ever set from a `&'static ProfileDump`.
        unsafe { PROFILE_DUMP.load(Ordering::Acquire).as_ref() }
    }

    /// Releases every free page of the heap to the OS now (after giving the
    /// calling thread's cached objects back, so their spans can be freed);
    /// returns the bytes released. Like Go's `debug.FreeOSMemory`.
    pub fn release_all_free() -> usize {
        release_everything(Path::Forced)
    }

    /// Deep release of everything it can, then every free page of the heap
    /// (the page cache's included), counted under `path`; returns the bytes
    /// released.
    pub fn release_everything(path: Path) -> usize {
        let deep = deep_release().map_or(0, |d| (d.release_all)());
        // After deep release, which may free spans into the page cache.
        cache::flush_all();
        release(usize::MAX, path) + deep
    }
}
