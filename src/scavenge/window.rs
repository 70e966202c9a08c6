//! The retained window: for how long a peak of pages in use holds the
//! retained goal up, and how it adapts to a program that needs its memory
//! again.
//!
//! After a burst, the pages it freed stay retained for one window (a
//! second by default) and are then released. For a program that bursts
//! once and idles, that is right. For one that bursts every few seconds,
//! every release is faulted back in by the next burst: the scavenger spends
//! CPU giving the pages away, and the program spends more taking them back
//! (a page fault and zeroing per page). So the window learns:
//!
//! * An *episode* starts with the first byte the retained goal releases
//!   (the background thread's whole runs and deep release, and heap growth
//!   over the goal) after a quiet spell, and gathers what is released until
//!   it ends.
//! * It ends *reused* when released memory is taken back into use
//!   (the page heap hands out released pages, or a span hands out objects
//!   on pages deep release gave back) to a quarter of what the episode
//!   released, at least 1 MiB, before it has been quiet for a horizon (two
//!   seconds plus the window). The window then grows to cover the cycle it
//!   just saw, from the peak that left the window to the reuse, with a
//!   quarter to spare, and at least doubles, up to `SCAVALLOC_WINDOW_MAX`
//!   (30 s by default).
//! * It ends *unused* when the horizon passes without that: the window
//!   halves, down to the one-second base. A single burst followed by idle
//!   therefore keeps the base window and returns its memory as promptly as
//!   ever.
//! * Memory pressure, or the control group near its limit, resets the
//!   window to its base; and whenever the lengthened window's peak would
//!   put the retained goal at a cap (the memory limit, or what the control
//!   group can afford), the goal uses the base window instead (see the
//!   background thread): near a limit the window is ignored.
//!
//! "Taken back into use" counts every released page the page heap hands
//! out, whether the scavenger released it or it was never touched (fresh
//! address space is marked released too). Both mean the same thing while
//! an episode is open: the program needed memory again right after memory
//! was given away, and both cost a page fault per page.
//!
//! This file owns the learning ([`Adaptive`], run on the background
//! thread's stack) and the published figures; it releases nothing.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The window a program starts with, and the shortest it becomes.
pub const BASE_NS: u64 = 1_000_000_000;
/// The longest window by default (`SCAVALLOC_WINDOW_MAX`).
pub const DEFAULT_MAX_NS: u64 = 30_000_000_000;
/// The most `SCAVALLOC_WINDOW_MAX` may ask for: the peak history holds
/// this much (see [`super::goals::PeakWindow`]).
pub const LIMIT_NS: u64 = 120_000_000_000;

/// An episode's reuse counts once it reaches this much, so that a few
/// stray pages do not lengthen the window.
const MIN_REUSE_BYTES: usize = 1 << 20;
/// Quiet time after an episode's last release, beyond the window, before
/// it is judged unused.
const HORIZON_EXTRA_NS: u64 = 2_000_000_000;

/// The window in force: the learned one, or the base near a limit
/// (published by the background thread).
static WINDOW_NS: AtomicU64 = AtomicU64::new(BASE_NS);
/// The window learned (published by the background thread).
static LEARNED_NS: AtomicU64 = AtomicU64::new(BASE_NS);
/// The longest window allowed.
static MAX_NS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_NS);
/// Bytes of released memory taken back into use, ever.
static REFAULTED: AtomicUsize = AtomicUsize::new(0);
/// Episodes that ended reused (the window grew) and unused (it shrank, or
/// stayed at its base), and resets by pressure or a limit.
static REUSED_EPISODES: AtomicU64 = AtomicU64::new(0);
static UNUSED_EPISODES: AtomicU64 = AtomicU64::new(0);
static RESETS: AtomicU64 = AtomicU64::new(0);

/// Sets the longest window (`SCAVALLOC_WINDOW_MAX`; the base or less
/// keeps the window fixed at its base). Called once at start-up.
pub fn configure(max_ns: u64) {
    MAX_NS.store(max_ns.clamp(BASE_NS, LIMIT_NS), Ordering::Relaxed);
}

/// The longest window allowed.
pub fn max_ns() -> u64 {
    MAX_NS.load(Ordering::Relaxed)
}

/// The window in force (deep release leaves spans alone for as long).
pub fn current_ns() -> u64 {
    WINDOW_NS.load(Ordering::Relaxed)
}

/// Publishes the window in force: the learned one, or the base while the
/// program is near a limit.
pub fn set_in_force(ns: u64) {
    WINDOW_NS.store(ns, Ordering::Relaxed);
}

/// `bytes` of memory that had been released to the OS were taken back into
/// use (called by the page layer's users when they take released pages,
/// and by the span layer when deep-released pages get objects again).
pub fn note_refaulted(bytes: usize) {
    REFAULTED.fetch_add(bytes, Ordering::Relaxed);
}

/// Bytes of released memory taken back into use, ever.
pub fn refaulted_bytes() -> usize {
    REFAULTED.load(Ordering::Relaxed)
}

/// What the window has learned so far, for the statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// The window in force, in nanoseconds: the learned one, or the base
    /// while the program is near a limit.
    pub window_ns: u64,
    /// The window learned from how released memory was reused.
    pub learned_ns: u64,
    /// The longest it may become (`SCAVALLOC_WINDOW_MAX`).
    pub max_ns: u64,
    /// Bytes of released memory taken back into use.
    pub refaulted: usize,
    /// Release episodes whose memory was soon needed again (the window
    /// grew).
    pub reused_episodes: u64,
    /// Release episodes whose memory was not (the window shrank, or stayed
    /// at its base).
    pub unused_episodes: u64,
    /// Times pressure or the control group's limit reset the window.
    pub resets: u64,
}

pub fn stats() -> WindowStats {
    WindowStats {
        window_ns: current_ns(),
        learned_ns: LEARNED_NS.load(Ordering::Relaxed),
        max_ns: max_ns(),
        refaulted: refaulted_bytes(),
        reused_episodes: REUSED_EPISODES.load(Ordering::Relaxed),
        unused_episodes: UNUSED_EPISODES.load(Ordering::Relaxed),
        resets: RESETS.load(Ordering::Relaxed),
    }
}

/// One run of releases for the retained goal, and what came back of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Episode {
    started_ns: u64,
    last_release_ns: u64,
    released: usize,
    refaulted: usize,
}

/// How an observation changed the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing decided yet.
    Open,
    /// The episode's memory came back: the window grew (or was at its
    /// longest already).
    Reused,
    /// The episode's memory stayed unused: the window shrank (or was at
    /// its base already).
    Unused,
}

/// The learning, kept by the background thread: fed every tick with the
/// running totals of goal-driven releases and of refaults.
#[derive(Clone, Copy, Debug)]
pub struct Adaptive {
    window_ns: u64,
    episode: Option<Episode>,
    seen_released: usize,
    seen_refaulted: usize,
}

impl Adaptive {
    /// A window at its base, counting from the totals given.
    pub const fn new(released_total: usize, refaulted_total: usize) -> Adaptive {
        Adaptive { window_ns: BASE_NS, episode: None, seen_released: released_total, seen_refaulted: refaulted_total }
    }

    /// The window this learning asks for.
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Takes in the totals at `now`: bytes released for the retained goal
    /// and bytes of released memory taken back into use, both running
    /// totals; `max_ns` is the longest window allowed.
    pub fn observe(&mut self, now: u64, released_total: usize, refaulted_total: usize, max_ns: u64) -> Verdict {
        let released = released_total.wrapping_sub(self.seen_released);
        let refaulted = refaulted_total.wrapping_sub(self.seen_refaulted);
        self.seen_released = released_total;
        self.seen_refaulted = refaulted_total;
        if released > 0 {
            let e = self.episode.get_or_insert(Episode {
                started_ns: now,
                last_release_ns: now,
                released: 0,
                refaulted: 0,
            });
            e.released = e.released.saturating_add(released);
            e.last_release_ns = now;
        }
        // Refaults outside an episode belong to no release of ours (growth
        // into fresh memory, or memory released long ago); those in the
        // tick that opened one follow its first release closely enough.
        if let Some(e) = &mut self.episode {
            e.refaulted = e.refaulted.saturating_add(refaulted);
        }
        let Some(e) = self.episode else { return Verdict::Open };
        if e.refaulted >= MIN_REUSE_BYTES && e.refaulted >= e.released / 4 {
            // The peak that left the window was about one window before
            // the episode started; the program needed the memory again
            // `now - started` later. A window covering that cycle with a
            // quarter to spare (and one slot of the peak history) would
            // have kept it.
            let cycle = now.saturating_sub(e.started_ns).saturating_add(self.window_ns);
            let cover = cycle.saturating_add(cycle / 4).saturating_add(super::goals::SLOT_NS);
            self.window_ns = cover.max(self.window_ns.saturating_mul(2)).min(max_ns).max(BASE_NS);
            self.episode = None;
            return Verdict::Reused;
        }
        if now.saturating_sub(e.last_release_ns) > self.window_ns.saturating_add(HORIZON_EXTRA_NS) {
            self.window_ns = (self.window_ns / 2).max(BASE_NS).min(max_ns.max(BASE_NS));
            self.episode = None;
            return Verdict::Unused;
        }
        Verdict::Open
    }

    /// Memory pressure, or the control group near its limit: back to the
    /// base window, and whatever was being learned is forgotten.
    pub fn reset(&mut self) {
        self.window_ns = BASE_NS;
        self.episode = None;
    }
}

/// The background thread's learning step: feeds `adaptive`, publishes the
/// learned window and counts the verdict.
pub fn observe_and_publish(adaptive: &mut Adaptive, now: u64, released_total: usize) {
    match adaptive.observe(now, released_total, refaulted_bytes(), max_ns()) {
        Verdict::Open => {}
        Verdict::Reused => {
            REUSED_EPISODES.fetch_add(1, Ordering::Relaxed);
        }
        Verdict::Unused => {
            UNUSED_EPISODES.fetch_add(1, Ordering::Relaxed);
        }
    }
    LEARNED_NS.store(adaptive.window_ns(), Ordering::Relaxed);
}

/// The background thread's reset (pressure, or the limit near): resets
/// `adaptive`, publishes the base as the learned window and counts the
/// reset.
pub fn reset_and_publish(adaptive: &mut Adaptive) {
    if adaptive.window_ns() != BASE_NS || adaptive.episode.is_some() {
        RESETS.fetch_add(1, Ordering::Relaxed);
    }
    adaptive.reset();
    LEARNED_NS.store(BASE_NS, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MIB: usize = 1 << 20;
    const TICK: u64 = S / 4;

    /// Feeds `a` tick by tick from `from` to `to` (exclusive) with constant
    /// totals; returns the verdicts that were not `Open`.
    fn idle(a: &mut Adaptive, from: u64, to: u64, rel: usize, refa: usize) -> Vec<Verdict> {
        let mut t = from;
        let mut out = Vec::new();
        while t < to {
            let v = a.observe(t, rel, refa, DEFAULT_MAX_NS);
            if v != Verdict::Open {
                out.push(v);
            }
            t += TICK;
        }
        out
    }

    /// A program that bursts every `period`, `size` bytes a burst: after
    /// each burst the goal falls one window later (if that comes before
    /// the next burst) and `size` bytes are released, which the next burst
    /// takes back. Returns the learning after the bursts and every verdict.
    fn periodic(period: u64, bursts: usize, size: usize) -> (Adaptive, Vec<Verdict>) {
        let mut a = Adaptive::new(0, 0);
        let (mut rel, mut refa) = (0, 0);
        let mut verdicts = Vec::new();
        for k in 0..bursts as u64 {
            let burst_end = k * period + TICK;
            let released_at = burst_end + a.window_ns();
            let next_burst = (k + 1) * period;
            if released_at >= next_burst {
                // The next burst came first: nothing was released.
                verdicts.extend(idle(&mut a, burst_end, next_burst, rel, refa));
                continue;
            }
            verdicts.extend(idle(&mut a, burst_end, released_at, rel, refa));
            rel += size;
            verdicts.extend(idle(&mut a, released_at, next_burst, rel, refa));
            refa += size;
            verdicts.extend(idle(&mut a, next_burst, next_burst + 1, rel, refa));
        }
        (a, verdicts)
    }

    #[test]
    fn periodic_bursts_lengthen_the_window_past_their_period() {
        let (a, verdicts) = periodic(2 * S, 10, 300 * MIB);
        // Once: the second burst took back what the first had released.
        assert_eq!(verdicts, [Verdict::Reused], "only the first gap released anything");
        assert!(a.window_ns() > 2 * S, "window {} ns does not cover the 2 s period", a.window_ns());
        assert!(a.window_ns() <= 4 * S, "window {} ns: far more than the cycle asked", a.window_ns());
    }

    #[test]
    fn longer_periods_lengthen_step_by_step_up_to_the_bound() {
        // A 9 s period: released at 1.25 s, taken back at 9 s, past the
        // base window's 3 s horizon: every episode is judged unused, and
        // the window stays (minutes-long gaps are worth the release).
        let (a, verdicts) = periodic(9 * S, 5, 100 * MIB);
        assert_eq!(verdicts, [Verdict::Unused; 5]);
        assert_eq!(a.window_ns(), BASE_NS);
        // A 2.9 s period is learned at once; then the window stays.
        let (a, _) = periodic(2_900_000_000, 6, 100 * MIB);
        assert!(a.window_ns() > 2_900_000_000);
        // Repeated reuse keeps doubling, never past the bound.
        let mut a = Adaptive::new(0, 0);
        let (mut rel, mut refa) = (0, 0);
        let mut t = 0;
        for _ in 0..20 {
            rel += 10 * MIB;
            a.observe(t, rel, refa, DEFAULT_MAX_NS);
            refa += 10 * MIB;
            t += TICK;
            assert_eq!(a.observe(t, rel, refa, DEFAULT_MAX_NS), Verdict::Reused);
        }
        assert_eq!(a.window_ns(), DEFAULT_MAX_NS);
    }

    #[test]
    fn a_single_burst_keeps_the_base_window() {
        let mut a = Adaptive::new(0, 0);
        // Released at 1.25 s; nothing comes back.
        assert_eq!(idle(&mut a, 0, S + TICK, 0, 0), []);
        assert_eq!(idle(&mut a, S + TICK, 20 * S, 600 * MIB, 0), [Verdict::Unused]);
        assert_eq!(a.window_ns(), BASE_NS);
        // A trickle of refaults (a few pages) is no reuse.
        let mut a = Adaptive::new(0, 0);
        assert_eq!(idle(&mut a, 0, S, 600 * MIB, 0), []);
        assert_eq!(idle(&mut a, S, 20 * S, 600 * MIB, MIB / 2), [Verdict::Unused]);
        assert_eq!(a.window_ns(), BASE_NS);
    }

    #[test]
    fn unused_releases_shorten_a_long_window() {
        let (mut a, _) = periodic(2 * S, 3, 300 * MIB);
        let long = a.window_ns();
        assert!(long > 2 * S);
        // The bursts stop: the goal falls one window later and nothing
        // comes back.
        let (rel, refa) = (a.seen_released + 300 * MIB, a.seen_refaulted);
        assert_eq!(idle(&mut a, 100 * S, 200 * S, rel, refa), [Verdict::Unused]);
        assert_eq!(a.window_ns(), (long / 2).max(BASE_NS));
        // A later unused episode halves it again, to the base at most.
        assert_eq!(idle(&mut a, 200 * S, 300 * S, rel + MIB * 5, refa), [Verdict::Unused]);
        assert_eq!(a.window_ns(), (long / 4).max(BASE_NS));
    }

    #[test]
    fn reset_forgets_and_the_bound_holds() {
        let (mut a, _) = periodic(2 * S, 3, 300 * MIB);
        assert!(a.window_ns() > BASE_NS);
        a.reset();
        assert_eq!(a.window_ns(), BASE_NS);
        // A window bound at the base never grows.
        let mut a = Adaptive::new(0, 0);
        a.observe(0, 10 * MIB, 0, BASE_NS);
        assert_eq!(a.observe(TICK, 10 * MIB, 10 * MIB, BASE_NS), Verdict::Reused);
        assert_eq!(a.window_ns(), BASE_NS);
    }
}
