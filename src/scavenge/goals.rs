//! The scavenger's goals and settings.
//!
//! Go sets its retained-memory goal from GC cycles; scavalloc has none, so
//! it keeps the same two goals with inputs of its own:
//!
//! * **Retained goal**: retained memory (mapped minus released) at most
//!   (100 + retain-extra)% of the *recent peak* of pages in use. "Recent" is
//!   a sliding window of one second, kept as four quarter-second slots: long
//!   enough that a burst, its frees and the next burst a moment later do not
//!   make the scavenger release memory that is about to be used again, short
//!   enough that an idle process gives its memory back within seconds.
//! * **Memory limit**: when a limit is set, retained memory stays under 95%
//!   of it (the headroom absorbs what is allocated between two checks). The
//!   limit is soft: an allocation that cannot fit even after releasing
//!   everything free succeeds anyway and is counted as an overrun.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

/// How the scavenger is set up (from the environment, by the API layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Share of the machine's CPU time the background scavenger may use, in
    /// percent (0 < p <= 100).
    pub cpu_percent: f64,
    /// Retained memory allowed above the recent peak in use, in percent.
    pub retain_extra_percent: usize,
    /// The memory limit in bytes, if any.
    pub memory_limit: Option<usize>,
    /// Whether the background thread may run.
    pub background: bool,
    /// Whether the background scavenger prints a trace line per cycle.
    pub trace: bool,
    /// Whether free pages inside partly used spans are released too.
    pub deep_release: bool,
}

impl Settings {
    /// The defaults: 1% of the CPU, 10% over the peak, no limit, background
    /// on, no trace, deep release on.
    pub const DEFAULT: Settings = Settings {
        cpu_percent: 1.0,
        retain_extra_percent: 10,
        memory_limit: None,
        background: true,
        trace: false,
        deep_release: true,
    };
}

/// The CPU share in thousandths of a percent.
static CPU_MILLIPERCENT: AtomicU32 = AtomicU32::new(1000);
static RETAIN_EXTRA: AtomicUsize = AtomicUsize::new(10);
/// 0 means no limit.
static MEMORY_LIMIT: AtomicUsize = AtomicUsize::new(0);
static BACKGROUND: AtomicBool = AtomicBool::new(true);
static TRACE: AtomicBool = AtomicBool::new(false);
static DEEP_RELEASE: AtomicBool = AtomicBool::new(true);
/// The retained goal the background scavenger last computed; `usize::MAX`
/// until it has (so heap growth releases nothing before then).
static RETAINED_GOAL: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Installs the settings; called once at start-up, before any release.
pub fn configure(s: &Settings) {
    CPU_MILLIPERCENT.store((s.cpu_percent * 1000.0).round().clamp(1.0, 100_000.0) as u32, Ordering::Relaxed);
    RETAIN_EXTRA.store(s.retain_extra_percent, Ordering::Relaxed);
    MEMORY_LIMIT.store(s.memory_limit.unwrap_or(0), Ordering::Relaxed);
    BACKGROUND.store(s.background, Ordering::Relaxed);
    TRACE.store(s.trace, Ordering::Relaxed);
    DEEP_RELEASE.store(s.deep_release, Ordering::Relaxed);
}

/// The settings in force.
pub fn settings() -> Settings {
    Settings {
        cpu_percent: f64::from(CPU_MILLIPERCENT.load(Ordering::Relaxed)) / 1000.0,
        retain_extra_percent: RETAIN_EXTRA.load(Ordering::Relaxed),
        memory_limit: memory_limit(),
        background: background_enabled(),
        trace: trace_enabled(),
        deep_release: deep_release_enabled(),
    }
}

/// Whether free pages inside partly used spans are released too.
pub fn deep_release_enabled() -> bool {
    DEEP_RELEASE.load(Ordering::Relaxed)
}

/// The memory limit, if one is set.
pub fn memory_limit() -> Option<usize> {
    match MEMORY_LIMIT.load(Ordering::Relaxed) {
        0 => None,
        l => Some(l),
    }
}

/// Retained memory the limit allows: 95% of it.
pub fn limit_target(limit: usize) -> usize {
    limit - limit / 20
}

/// Whether the background thread may run.
pub fn background_enabled() -> bool {
    BACKGROUND.load(Ordering::Relaxed)
}

/// Whether trace lines are printed.
pub fn trace_enabled() -> bool {
    TRACE.load(Ordering::Relaxed)
}

/// The CPU fraction (0..1) the background scavenger aims at.
pub fn cpu_fraction() -> f64 {
    f64::from(CPU_MILLIPERCENT.load(Ordering::Relaxed)) / 100_000.0
}

/// The current retained goal (`usize::MAX` before the background scavenger
/// has set one).
pub fn retained_goal() -> usize {
    RETAINED_GOAL.load(Ordering::Relaxed)
}

pub(crate) fn set_retained_goal(goal: usize) {
    RETAINED_GOAL.store(goal, Ordering::Relaxed);
}

/// The goal for a recent peak of `peak_in_use` bytes: the retained goal,
/// capped by the memory-limit target.
pub fn goal_for(peak_in_use: usize) -> usize {
    let extra = RETAIN_EXTRA.load(Ordering::Relaxed);
    let goal = peak_in_use.saturating_add(peak_in_use / 100 * extra + peak_in_use % 100 * extra / 100);
    match memory_limit() {
        Some(limit) => goal.min(limit_target(limit)),
        None => goal,
    }
}

/// Length of the peak window.
pub const WINDOW_NS: u64 = 1_000_000_000;
/// Length of one slot of the window.
pub const SLOT_NS: u64 = WINDOW_NS / 4;
/// Length of a density generation: half the window, so that by the time a
/// burst's peak has left the window (and the goal falls), chunks that were
/// dense during the burst are two generations old and no longer spared.
pub const GENERATION_NS: u64 = WINDOW_NS / 2;

/// The recent peak of pages in use: the peaks of the last four
/// quarter-second slots.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeakWindow {
    /// `(slot start time, peak in use)`, oldest replaced first.
    slots: [(u64, usize); 4],
    next: usize,
}

impl PeakWindow {
    /// Records the peak seen in the slot that ends at `now`.
    pub fn push(&mut self, now: u64, peak: usize) {
        self.slots[self.next] = (now, peak);
        self.next = (self.next + 1) % self.slots.len();
    }

    /// The highest peak recorded within the window before `now`, and
    /// `in_use_now`.
    pub fn peak(&self, now: u64, in_use_now: usize) -> usize {
        self.slots
            .iter()
            .filter(|(t, _)| now.saturating_sub(*t) < WINDOW_NS)
            .map(|&(_, p)| p)
            .fold(in_use_now, usize::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goal_arithmetic() {
        // 10% over the peak, in exact integers.
        assert_eq!(goal_for(1000), 1100);
        assert_eq!(goal_for(0), 0);
        assert_eq!(goal_for(usize::MAX), usize::MAX);
        // 0.95 x 268435456 = 255013683.2; the target keeps the fraction.
        assert_eq!(limit_target(256 << 20), 255_013_684);
        // The 95% headroom is 95%, not 95 times (a bug Go once had).
        assert!(limit_target(1000) == 950);
    }

    #[test]
    fn window_forgets_after_a_second() {
        let mut w = PeakWindow::default();
        let s = 10 * WINDOW_NS;
        w.push(s, 900);
        w.push(s + SLOT_NS, 100);
        assert_eq!(w.peak(s + SLOT_NS, 50), 900);
        assert_eq!(w.peak(s + WINDOW_NS - 1, 50), 900);
        assert_eq!(w.peak(s + WINDOW_NS, 50), 100, "the burst's slot has left the window");
        assert_eq!(w.peak(s + 3 * WINDOW_NS, 50), 50);
        assert_eq!(w.peak(s + 3 * WINDOW_NS, 70), 70);
    }
}
