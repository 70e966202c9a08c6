//! Deep release: giving the OS back the free pages *inside* spans that are
//! still partly used.
//!
//! The page heap, like Go's, jemalloc's and mimalloc's, can only release
//! whole free runs of pages. After a burst in which most objects are freed
//! but live ones stay scattered, nearly every span keeps a live object and
//! holds its pages. Since a span's free state is kept out of band (nothing
//! is ever written into a free object), an OS page that holds only free
//! objects can be released with `madvise` and simply fault back in, zeroed,
//! when an object on it is handed out again. Each span records its released
//! OS pages ([`Span::released`]) so the accounting stays exact.
//!
//! # Policy
//!
//! * It runs in the background scavenger's thread, on its CPU budget, only
//!   when the page heap has nothing left above its retained goal (whole
//!   free runs are cheaper to release and come first).
//! * Its goal: the resident bytes of small-object spans (span bytes minus
//!   what deep release gave back) at most (100 + `RETAIN_EXTRA_PERCENT`)%
//!   of the bytes of objects handed out, plus 4 MiB. Under the goal it does
//!   nothing, so a program whose spans are well used never pays for it.
//! * Over the goal it makes passes over every class's list of spans with
//!   free objects, at most one pass a second. A span that handed out
//!   objects within the retained window (a second, or longer for a program
//!   whose released memory keeps coming back: [`central::deep_idle_ms`];
//!   each span keeps a coarse time stamp of its last refill) is passed
//!   over. That is
//!   why a burst that comes back cannot make it thrash: the spans the burst
//!   allocates from are off the table at once, a page is released at most
//!   once per idle second, and a page released and then reused costs one
//!   page fault, paced by the same CPU budget.
//! * A new pass is started only if something could have changed: objects
//!   were freed since the last pass began, or it passed over spans in use.
//! * The class lock is held only to choose and to record, never across the
//!   `madvise` (see [`central::deep_release_step`]), and a step chooses
//!   for at most 10 µs: threads allocating from a class deep release works
//!   on do not wait for the kernel. The longest hold so far is in the
//!   statistics (`deep_longest_hold_ns`).
//!
//! # Huge pages
//!
//! Releasing a 4 KiB page inside a transparent huge page splits the huge
//! page's mapping; the kernel frees the released pages' memory when it
//! splits the page itself (at once or under memory pressure, depending on
//! the kernel). The page heap avoids splitting huge pages in whole free
//! runs; deep release cannot, since a partly live huge page holds live
//! objects: it trades the huge page's TLB benefit for the memory of the
//! spans that went idle.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::central;
use super::sizeclass::{self, NUM_CLASSES};
use crate::os;
use crate::pages::heap::RunUse;
use crate::pages::PAGE_SIZE;
use crate::scavenge::{self, DeepOutcome, DeepRelease};
use crate::sync::Mutex;

/// What the scavenger calls (the span layer is above it and may not be
/// named from there).
pub static HOOK: DeepRelease = DeepRelease { work, release_all };

/// The shortest time between the starts of two passes: a span must go
/// unused this long before it loses pages.
const PASS_NS: u64 = 1_000_000_000;

/// Resident span memory allowed above the goal's share of live objects, so
/// that small programs never pay for deep release.
const SLACK_BYTES: usize = 4 << 20;

/// Bytes released inside spans, in all.
static RELEASED_TOTAL: AtomicUsize = AtomicUsize::new(0);
/// Spans that had pages released, counted once per step that released
/// from them.
static SPANS_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Where the current pass stands.
struct Pass {
    active: bool,
    /// The class the pass is in.
    class: usize,
    /// When the last pass began.
    started_ns: u64,
    /// Batches of objects given back to spans before it began.
    frees_at_start: u64,
    /// Spans passed over in it because they were in use.
    skipped_recent: usize,
}

static PASS: Mutex<Pass> =
    Mutex::new(Pass { active: false, class: 0, started_ns: 0, frees_at_start: 0, skipped_recent: 0 });

/// Whether deep release can work here: the OS page must divide the heap
/// page, and a span's OS pages must fit the 64 bits of
/// [`super::span::Span::released`].
pub fn supported() -> bool {
    let os_page = os::page_size();
    os_page <= PAGE_SIZE && sizeclass::MAX_SPAN_PAGES * PAGE_SIZE / os_page <= 64
}

/// Runs of set bits in `mask`: how many.
pub fn count_runs(mask: u64) -> usize {
    (mask & !(mask << 1)).count_ones() as usize
}

/// The mask of `count` bits from bit `first` (`first + count <= 64`): a
/// run that [`runs`] found. A run may be all 64 bits (a span of 64 OS
/// pages), where `1 << count` would overflow.
pub fn run_mask(first: usize, count: usize) -> u64 {
    debug_assert!(first + count <= 64);
    if count == 0 {
        0
    } else {
        (u64::MAX >> (64 - count)) << first
    }
}

/// Runs of set bits in `mask`, lowest first, as `(first bit, length)`.
pub fn runs(mut mask: u64) -> impl Iterator<Item = (usize, usize)> {
    core::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let first = mask.trailing_zeros() as usize;
        let len = (!(mask >> first)).trailing_zeros() as usize;
        mask &= if first + len >= 64 { 0 } else { u64::MAX << (first + len) };
        Some((first, len))
    })
}

/// What deep release looks at before a pass.
struct Survey {
    /// Resident bytes of small-object spans (span bytes minus what deep
    /// release gave back).
    resident: usize,
    /// Bytes of objects handed out (to users or thread caches).
    live: usize,
    /// Batches of objects given back to spans so far, over all classes.
    give_backs: u64,
}

fn survey() -> Survey {
    let mut s = Survey { resident: 0, live: 0, give_backs: 0 };
    for class in 0..NUM_CLASSES {
        let c = central::counts(class);
        s.resident += c.spans * sizeclass::class_span_bytes(class) - c.released;
        s.live += c.handed_out * sizeclass::class_size(class);
        s.give_backs += c.give_backs;
    }
    s
}

impl Survey {
    /// Whether resident span memory is over deep release's goal.
    fn over_goal(&self) -> bool {
        let extra = scavenge::goals::settings().retain_extra_percent;
        self.resident > self.live.saturating_add(self.live / 100 * extra).saturating_add(SLACK_BYTES)
    }
}

/// One call from the background scavenger: goes on with the current pass
/// (or starts one if it is due), releasing up to about `max_bytes`.
///
/// The pass lock is held only to read and move the pass along, never
/// across a step (whose `madvise` runs with no lock held at all). A
/// [`release_all`] between two steps restarts the pass; this call then
/// stops, and the next one starts afresh.
fn work(now_ns: u64, max_bytes: usize) -> DeepOutcome {
    if !supported() {
        return DeepOutcome::Idle;
    }
    let (mut class, started) = {
        let mut pass = PASS.lock();
        if !pass.active {
            let survey = survey();
            if !survey.over_goal() {
                return DeepOutcome::Idle;
            }
            let frees = survey.give_backs;
            let due = now_ns.saturating_sub(pass.started_ns) >= PASS_NS;
            let may_find = frees != pass.frees_at_start || pass.skipped_recent > 0;
            if !due || !may_find {
                return DeepOutcome::Later;
            }
            *pass = Pass { active: true, class: 0, started_ns: now_ns, frees_at_start: frees, skipped_recent: 0 };
        }
        (pass.class, pass.started_ns)
    };
    let (mut released, mut spans) = (0, 0);
    let mut more = true;
    // A few steps a call, so the scavenger can measure and pace the work.
    for _ in 0..8 {
        let step = central::deep_release_step(class, false, os::coarse_ms());
        released += step.released;
        spans += step.spans;
        SPANS_TOTAL.fetch_add(step.spans as u64, Ordering::Relaxed);
        let mut pass = PASS.lock();
        if !pass.active || pass.started_ns != started || pass.class != class {
            // Restarted meanwhile (by `release_all`).
            break;
        }
        pass.skipped_recent += step.skipped_recent;
        if step.done {
            pass.class += 1;
            if pass.class == NUM_CLASSES {
                pass.active = false;
                more = false;
                break;
            }
        }
        class = pass.class;
        if released >= max_bytes {
            break;
        }
    }
    RELEASED_TOTAL.fetch_add(released, Ordering::Relaxed);
    DeepOutcome::Worked { released, spans, more }
}

/// Releases every free OS page inside every span now, used or not (for
/// `release_all`); returns the bytes released.
fn release_all() -> usize {
    if !supported() {
        return 0;
    }
    // The background thread's pass starts afresh afterwards; this one
    // starts from each list's head and finishes it. (Should the two run
    // side by side, they share each class's cursor under its lock, and
    // a span one of them has out is off the list for the other.)
    PASS.lock().active = false;
    let mut released = 0;
    for class in 0..NUM_CLASSES {
        central::deep_restart(class);
        loop {
            let step = central::deep_release_step(class, true, os::coarse_ms());
            released += step.released;
            SPANS_TOTAL.fetch_add(step.spans as u64, Ordering::Relaxed);
            if step.done {
                break;
            }
        }
    }
    RELEASED_TOTAL.fetch_add(released, Ordering::Relaxed);
    released
}

/// Gives a wholly free span's pages back to the page heap when some of its
/// OS pages were released by deep release. Heap pages whose OS pages were
/// all released go back as released; the others go back as free and
/// resident, even those partly released (the page heap tracks whole heap
/// pages): their released part is counted as retained until the
/// scavenger releases them again, which costs it next to nothing. This
/// runs under the class lock, so it makes no system call.
///
/// The span's page-map entries must already be cleared: nothing refers to
/// its memory.
pub fn free_partly_released(base: usize, npages: usize, released: u64) {
    let per_page = PAGE_SIZE / os::page_size();
    let full = if per_page >= 64 { u64::MAX } else { (1u64 << per_page) - 1 };
    let is_released = |h: usize| (released >> (h * per_page)) & full == full;
    let mut h = 0;
    while h < npages {
        let state = is_released(h);
        let start = h;
        while h < npages && is_released(h) == state {
            h += 1;
        }
        let run_base = base + start * PAGE_SIZE;
        if state {
            scavenge::free_released_pages(run_base, h - start, RunUse::Span);
        } else {
            scavenge::free_pages(run_base, h - start, RunUse::Span);
        }
    }
}

/// Deep release's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeepStats {
    /// Bytes released inside spans, in all.
    pub released_total: usize,
    /// Spans that had pages released, in all.
    pub spans_total: u64,
    /// The longest a step held a class lock, in nanoseconds.
    pub longest_hold_ns: u64,
    /// All holds by length (see [`central::deep_hold_histogram`]).
    pub hold_histogram: [u64; central::HOLD_BUCKETS],
}

/// Deep release's cumulative figures.
pub fn stats() -> DeepStats {
    DeepStats {
        released_total: RELEASED_TOTAL.load(Ordering::Relaxed),
        spans_total: SPANS_TOTAL.load(Ordering::Relaxed),
        longest_hold_ns: central::deep_longest_hold_ns(),
        hold_histogram: central::deep_hold_histogram(),
    }
}

/// Takes the pass lock before `fork()` (it comes before the class locks).
pub(crate) fn lock_for_fork() {
    PASS.hold_for_fork();
}

/// Releases the lock taken by [`lock_for_fork`].
pub(crate) fn unlock_after_fork() {
    // SAFETY: `lock_for_fork` held it on this thread.
    unsafe { PASS.release_after_fork() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_bits_against_a_naive_scan() {
        let mut seed = 0x1234_5678_9abc_def1_u64;
        for round in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mask = match round {
                0 => 0,
                1 => u64::MAX,
                2 => 1 << 63,
                3 => 1,
                _ => seed & (seed >> 3),
            };
            let mut naive = Vec::new();
            let mut i = 0;
            while i < 64 {
                if mask & (1 << i) != 0 {
                    let start = i;
                    while i < 64 && mask & (1 << i) != 0 {
                        i += 1;
                    }
                    naive.push((start, i - start));
                } else {
                    i += 1;
                }
            }
            assert_eq!(runs(mask).collect::<Vec<_>>(), naive, "{mask:#x}");
            // The runs' masks put back together are the mask (this covers
            // the run of all 64 bits, round 1).
            assert_eq!(runs(mask).fold(0, |m, (first, count)| m | run_mask(first, count)), mask, "{mask:#x}");
            assert_eq!(count_runs(mask), naive.len(), "{mask:#x}");
        }
    }
}
