//! The scavenger's goals and settings.
//!
//! Go sets its retained-memory goal from GC cycles; scavalloc has none, so
//! it keeps the same two goals with inputs of its own:
//!
//! * **Retained goal**: retained memory (mapped minus released) at most
//!   (100 + retain-extra)% of the *recent peak* of pages in use. "Recent" is
//!   a sliding window, one second to start with, over quarter-second slots:
//!   long enough that a burst, its frees and the next burst a moment later
//!   do not make the scavenger release memory that is about to be used
//!   again, short enough that an idle process gives its memory back within
//!   seconds. A program whose released memory keeps being needed again
//!   soon after gets a longer window (see [`super::window`]).
//! * **Memory limit**: when a limit is set, retained memory stays under 95%
//!   of it (the headroom absorbs what is allocated between two checks). The
//!   limit is soft: an allocation that cannot fit even after releasing
//!   everything free succeeds anyway and is counted as an overrun. The
//!   limit is `SCAVALLOC_MEMLIMIT` if set; otherwise, in a control group
//!   with a memory limit, 95% of the effective limit (the smaller of
//!   `memory.max` and `memory.high` up the tree), which the background
//!   thread re-reads about once a second ([`set_container_limit`]).

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
    /// Whether the limit may come from the control group when
    /// `memory_limit` is unset (false once `SCAVALLOC_MEMLIMIT` is set at
    /// all, `off` included).
    pub container_limit: bool,
    /// Whether the background thread may run.
    pub background: bool,
    /// Whether the background scavenger prints a trace line per cycle.
    pub trace: bool,
    /// Whether free pages inside partly used spans are released too.
    pub deep_release: bool,
    /// Share of the CPUs the emergency release (memory pressure, or the
    /// control group near its limit) may use, in percent.
    pub pressure_percent: f64,
    /// The longest the retained window may grow to, in nanoseconds (the
    /// base window or less keeps it fixed).
    pub window_max_ns: u64,
}

impl Settings {
    /// The defaults: 1% of the CPU, 10% over the peak, no limit, background
    /// on, no trace, deep release on.
    pub const DEFAULT: Settings = Settings {
        cpu_percent: 1.0,
        retain_extra_percent: 10,
        memory_limit: None,
        container_limit: true,
        background: true,
        trace: false,
        deep_release: true,
        pressure_percent: 10.0,
        window_max_ns: super::window::DEFAULT_MAX_NS,
    };
}

/// The CPU share in thousandths of a percent.
static CPU_MILLIPERCENT: AtomicU32 = AtomicU32::new(1000);
static RETAIN_EXTRA: AtomicUsize = AtomicUsize::new(10);
/// The explicit limit (`SCAVALLOC_MEMLIMIT`); 0 means none.
static MEMORY_LIMIT: AtomicUsize = AtomicUsize::new(0);
/// Whether the control group's limit applies when there is no explicit one.
static CONTAINER_LIMIT_ON: AtomicBool = AtomicBool::new(true);
/// The limit derived from the control group (95% of its effective limit);
/// 0 means none (or not read yet).
static CONTAINER_LIMIT: AtomicUsize = AtomicUsize::new(0);
static BACKGROUND: AtomicBool = AtomicBool::new(true);
static TRACE: AtomicBool = AtomicBool::new(false);
static DEEP_RELEASE: AtomicBool = AtomicBool::new(true);
/// The emergency release's CPU share in thousandths of a percent.
static PRESSURE_MILLIPERCENT: AtomicU32 = AtomicU32::new(10_000);
/// The retained goal the background scavenger last computed; `usize::MAX`
/// until it has (so heap growth releases nothing before then).
static RETAINED_GOAL: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Installs the settings; called once at start-up, before any release.
pub fn configure(s: &Settings) {
    CPU_MILLIPERCENT.store((s.cpu_percent * 1000.0).round().clamp(1.0, 100_000.0) as u32, Ordering::Relaxed);
    RETAIN_EXTRA.store(s.retain_extra_percent, Ordering::Relaxed);
    MEMORY_LIMIT.store(s.memory_limit.unwrap_or(0), Ordering::Relaxed);
    CONTAINER_LIMIT_ON.store(s.container_limit && s.memory_limit.is_none(), Ordering::Relaxed);
    BACKGROUND.store(s.background, Ordering::Relaxed);
    TRACE.store(s.trace, Ordering::Relaxed);
    DEEP_RELEASE.store(s.deep_release, Ordering::Relaxed);
    PRESSURE_MILLIPERCENT
        .store((s.pressure_percent * 1000.0).round().clamp(1.0, 100_000.0) as u32, Ordering::Relaxed);
    super::window::configure(s.window_max_ns);
}

/// The settings in force.
pub fn settings() -> Settings {
    Settings {
        cpu_percent: f64::from(CPU_MILLIPERCENT.load(Ordering::Relaxed)) / 1000.0,
        retain_extra_percent: RETAIN_EXTRA.load(Ordering::Relaxed),
        memory_limit: match MEMORY_LIMIT.load(Ordering::Relaxed) {
            0 => None,
            l => Some(l),
        },
        container_limit: CONTAINER_LIMIT_ON.load(Ordering::Relaxed),
        background: background_enabled(),
        trace: trace_enabled(),
        deep_release: deep_release_enabled(),
        pressure_percent: f64::from(PRESSURE_MILLIPERCENT.load(Ordering::Relaxed)) / 1000.0,
        window_max_ns: super::window::max_ns(),
    }
}

/// The CPU fraction (0..1) the emergency release may use.
pub fn pressure_fraction() -> f64 {
    f64::from(PRESSURE_MILLIPERCENT.load(Ordering::Relaxed)) / 100_000.0
}

/// Whether free pages inside partly used spans are released too.
pub fn deep_release_enabled() -> bool {
    DEEP_RELEASE.load(Ordering::Relaxed)
}

/// The memory limit in force, if any: the explicit one, else the one
/// derived from the control group.
pub fn memory_limit() -> Option<usize> {
    match MEMORY_LIMIT.load(Ordering::Relaxed) {
        0 => match CONTAINER_LIMIT.load(Ordering::Relaxed) {
            0 => None,
            l => Some(l),
        },
        l => Some(l),
    }
}

/// Where the memory limit in force comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// No limit.
    None,
    /// `SCAVALLOC_MEMLIMIT`.
    Explicit,
    /// The control group's limit.
    Container,
}

/// Where [`memory_limit`] comes from.
pub fn limit_source() -> LimitSource {
    if MEMORY_LIMIT.load(Ordering::Relaxed) != 0 {
        LimitSource::Explicit
    } else if CONTAINER_LIMIT.load(Ordering::Relaxed) != 0 {
        LimitSource::Container
    } else {
        LimitSource::None
    }
}

/// The memory limit a control group's effective `max` and `high` (bytes,
/// `None`: unlimited) give: 95% of the smaller, so that the process
/// releases before the kernel reclaims or throttles it.
pub fn container_soft_limit(max: Option<usize>, high: Option<usize>) -> Option<usize> {
    let hard = match (max, high) {
        (Some(m), Some(h)) => m.min(h),
        (Some(l), None) | (None, Some(l)) => l,
        (None, None) => return None,
    };
    Some((hard - hard / 20).max(1))
}

/// The room the control group leaves this process: its effective limit,
/// less the headroom margin and what the cgroup's other members use
/// (`usize::MAX`: no limit). Set by the background thread every tick.
static CONTAINER_ROOM: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Whether the control group's limit is used at all (not when
/// `SCAVALLOC_MEMLIMIT` is set, `off` included).
pub fn container_limit_enabled() -> bool {
    CONTAINER_LIMIT_ON.load(Ordering::Relaxed)
}

/// Records the room the control group leaves this process (see
/// [`container_cap`]); `None` without a limit.
pub fn set_container_room(room: Option<usize>) {
    CONTAINER_ROOM.store(room.unwrap_or(usize::MAX), Ordering::Relaxed);
}

/// The most this process may retain, with `in_use` bytes in use, before
/// its free memory puts the control group at risk: the free part `F` must
/// fit twice in the room (once as ours, once as what another member of
/// the cgroup may take next), so `in_use + 2F <= room`, that is retained
/// `<= (room + in_use) / 2`. `usize::MAX` without a limit.
pub fn container_cap(in_use: usize) -> usize {
    match CONTAINER_ROOM.load(Ordering::Relaxed) {
        usize::MAX => usize::MAX,
        room => room / 2 + in_use / 2,
    }
}

/// Records the control group's limits, read by the background thread (a
/// no-op when an explicit limit is set or `SCAVALLOC_MEMLIMIT=off`).
pub fn set_container_limit(max: Option<usize>, high: Option<usize>) {
    if !CONTAINER_LIMIT_ON.load(Ordering::Relaxed) {
        return;
    }
    CONTAINER_LIMIT.store(container_soft_limit(max, high).unwrap_or(0), Ordering::Relaxed);
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

/// The retained goal for a recent peak of `peak_in_use` bytes before any
/// cap: (100 + retain-extra)% of it.
fn uncapped_goal(peak_in_use: usize) -> usize {
    let extra = RETAIN_EXTRA.load(Ordering::Relaxed);
    peak_in_use.saturating_add(peak_in_use / 100 * extra + peak_in_use % 100 * extra / 100)
}

/// Whether the goal for `peak_in_use` is held down by a cap (the memory
/// limit, or what the control group can afford): the program is near a
/// limit, and a lengthened retained window is ignored.
pub fn capped(peak_in_use: usize) -> bool {
    goal_for(peak_in_use) < uncapped_goal(peak_in_use)
}

/// The goal for a recent peak of `peak_in_use` bytes: the retained goal,
/// capped by the memory-limit target.
pub fn goal_for(peak_in_use: usize) -> usize {
    let goal = uncapped_goal(peak_in_use).min(container_cap(peak_in_use));
    match memory_limit() {
        Some(limit) => goal.min(limit_target(limit)),
        None => goal,
    }
}

/// Length of one slot of the peak history: the retained goal is
/// recomputed from it every quarter second.
pub const SLOT_NS: u64 = 250_000_000;
/// Length of a density generation: half the base window, so that by the
/// time a burst's peak has left the base window (and the goal falls),
/// chunks that were dense during the burst are two generations old and no
/// longer spared.
pub const GENERATION_NS: u64 = super::window::BASE_NS / 2;

/// Slots of peak history: enough for the longest window allowed.
const HISTORY: usize = (super::window::LIMIT_NS / SLOT_NS) as usize;

/// The recent peaks of pages in use: one per quarter-second slot, as far
/// back as the longest retained window (see [`super::window`]).
#[derive(Clone, Copy, Debug)]
pub struct PeakWindow {
    /// `(slot end time, peak in use)`, oldest replaced first.
    slots: [(u64, usize); HISTORY],
    next: usize,
}

impl Default for PeakWindow {
    fn default() -> Self {
        PeakWindow { slots: [(0, 0); HISTORY], next: 0 }
    }
}

impl PeakWindow {
    /// Records the peak seen in the slot that ends at `now`.
    pub fn push(&mut self, now: u64, peak: usize) {
        self.slots[self.next] = (now, peak);
        self.next = (self.next + 1) % self.slots.len();
    }

    /// The highest peak recorded within `window_ns` before `now`, and
    /// `in_use_now`.
    pub fn peak(&self, now: u64, in_use_now: usize, window_ns: u64) -> usize {
        self.slots
            .iter()
            .filter(|(t, _)| *t != 0 && now.saturating_sub(*t) < window_ns)
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
    fn container_limit_arithmetic() {
        assert_eq!(container_soft_limit(None, None), None);
        assert_eq!(container_soft_limit(Some(1000), None), Some(950));
        assert_eq!(container_soft_limit(None, Some(2000)), Some(1900));
        // The smaller of the two, `memory.high` when it is lower.
        assert_eq!(container_soft_limit(Some(1000), Some(800)), Some(760));
        assert_eq!(container_soft_limit(Some(900 << 20), Some(1 << 30)), Some((900 << 20) - (900 << 20) / 20));
        assert_eq!(container_soft_limit(Some(1), None), Some(1), "never 0, which means no limit");
    }

    #[test]
    fn window_forgets_after_a_second() {
        const W: u64 = super::super::window::BASE_NS;
        let mut w = PeakWindow::default();
        let s = 10 * W;
        w.push(s, 900);
        w.push(s + SLOT_NS, 100);
        assert_eq!(w.peak(s + SLOT_NS, 50, W), 900);
        assert_eq!(w.peak(s + W - 1, 50, W), 900);
        assert_eq!(w.peak(s + W, 50, W), 100, "the burst's slot has left the window");
        assert_eq!(w.peak(s + 3 * W, 50, W), 50);
        assert_eq!(w.peak(s + 3 * W, 70, W), 70);
    }

    #[test]
    fn a_longer_window_remembers_longer() {
        const W: u64 = super::super::window::BASE_NS;
        let mut w = PeakWindow::default();
        let s = 10 * W;
        w.push(s, 900);
        // Thirty seconds of quieter slots later the burst is still seen
        // through a 31 s window, not through the base one.
        for i in 1..=120 {
            w.push(s + i * SLOT_NS, 100);
        }
        let now = s + 120 * SLOT_NS;
        assert_eq!(w.peak(now, 50, W), 100);
        assert_eq!(w.peak(now, 50, 31 * W), 900);
        assert_eq!(w.peak(now, 50, 30 * W), 100, "exactly 30 s old: out");
    }
}
