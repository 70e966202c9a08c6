//! What the container around the process says, as the background thread
//! sees it: the control group's memory limit, its usage and headroom, its
//! CPU quota, and memory pressure.
//!
//! The background thread owns a [`Watcher`] and calls [`Watcher::tick`] every
//! quarter second. It re-reads the limits once a second (limits change at
//! run time) and hands them to the goals ([`goals::set_container_limit`]);
//! it reads the cgroup's usage every tick. It asks for an *emergency
//! release* when:
//!
//! - the cgroup's working set (its usage, all its processes, minus the
//!   inactive file cache the kernel reclaims first), plus the free memory
//!   this process holds, plus [`headroom_margin`], is over the effective
//!   limit. The free memory counts twice on purpose: it is in the working
//!   set, and it is what another process of the cgroup may need next.
//!   Should that process take the headroom faster than a tick (a quarter
//!   second; 450 MiB written takes a tenth of one), the kernel would find
//!   our free pages dirty and unreclaimable, and OOM-kill someone. So
//!   free memory is kept only while the cgroup could absorb it twice;
//! - memory pressure is signalled: a PSI trigger on the cgroup's own
//!   `memory.pressure` (v2), else on `/proc/pressure/memory`, or the source
//!   systemd names in `MEMORY_PRESSURE_WATCH` (`/dev/null` turns pressure
//!   watching off); where no trigger can be armed, a rise of the `some`
//!   stall counter by more than [`STALL_PER_TICK_US`] between two ticks.
//!
//! This module reads files and polls descriptors through the OS layer; it
//! releases nothing itself.

use core::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use super::goals;
use crate::os::cgroup::{self, Location, Source};
use crate::os::pressure::{self, PressureWatch, PsiTrigger, Signal, WatchSetting};
use crate::os::{self};

/// How often the limits and the CPU quota are re-read.
const LIMITS_EVERY_NS: u64 = 1_000_000_000;

/// Stall time in one tick (a quarter second) that counts as pressure when
/// only the counter can be read: 4% of the tick, about what the trigger's
/// 150 ms in 2 s is.
pub const STALL_PER_TICK_US: u64 = 10_000;

/// The headroom below the cgroup's limit under which memory is given back
/// at once: the larger of 5% of the limit and 64 MiB. 5% because the
/// kernel starts reclaiming (and `memory.high` throttling) before the hard
/// limit, and 64 MiB because a small limit's 5% is less than what a busy
/// process allocates between two ticks.
pub fn headroom_margin(limit: usize) -> usize {
    (limit / 20).max(64 << 20)
}

/// Whether a cgroup with effective limit `limit` and working set
/// `working_set` is at risk, while this process holds `ours_free` bytes of
/// free memory: the free memory counted twice (see the module docs) and
/// the margin do not fit under the limit.
pub fn at_risk(limit: usize, working_set: usize, ours_free: usize) -> bool {
    working_set.saturating_add(ours_free).saturating_add(headroom_margin(limit)) > limit
}

/// Why an emergency release is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emergency {
    /// The cgroup's usage is within the margin of its limit.
    Headroom,
    /// Memory pressure was signalled.
    Pressure,
}

/// Where pressure is watched from (for the statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PressureSource {
    /// Nowhere: no PSI here, or `MEMORY_PRESSURE_WATCH=/dev/null`.
    None,
    /// systemd's `MEMORY_PRESSURE_WATCH`.
    Systemd,
    /// A PSI trigger on the cgroup's `memory.pressure`.
    CgroupTrigger,
    /// A PSI trigger on `/proc/pressure/memory`.
    SystemTrigger,
    /// The `some` stall counter of the cgroup's `memory.pressure`, read
    /// every tick.
    CgroupCounter,
    /// The `some` stall counter of `/proc/pressure/memory`.
    SystemCounter,
}

/// What the watcher saw, for `stats()`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ContainerStats {
    /// The cgroup's effective hard limit (`memory.max` or v1's
    /// `limit_in_bytes`, the smallest up the tree), 0 if none.
    pub memory_max: usize,
    /// The effective `memory.high`, 0 if none.
    pub memory_high: usize,
    /// Where `memory_max` came from.
    pub limit_source: Source,
    /// The cgroup's usage at the last tick (all its processes), 0 if
    /// unknown.
    pub usage: usize,
    /// The usage minus the inactive file cache, at the last tick.
    pub working_set: usize,
    /// The limit minus the working set at the last tick (0 if no limit).
    pub headroom: usize,
    /// CPUs the scavenger counts its budget against: the affinity mask,
    /// capped by the cgroup's CPU quota.
    pub cpus: f64,
    /// Where pressure is watched from.
    pub pressure_source: PressureSource,
    /// Pressure events seen.
    pub pressure_events: u64,
    /// Ticks (a quarter second apart) at which the usage was within the
    /// margin of the limit.
    pub headroom_events: u64,
}

static MEMORY_MAX: AtomicUsize = AtomicUsize::new(0);
static MEMORY_HIGH: AtomicUsize = AtomicUsize::new(0);
static USAGE: AtomicUsize = AtomicUsize::new(0);
static WORKING_SET: AtomicUsize = AtomicUsize::new(0);
/// `Source` packed: kind in the low byte, levels up above.
static LIMIT_SOURCE: AtomicU64 = AtomicU64::new(0);
/// CPUs, in thousandths (0: not read yet).
static CPUS_MILLI: AtomicU64 = AtomicU64::new(0);
static PRESSURE_SOURCE: AtomicU8 = AtomicU8::new(0);
static PRESSURE_EVENTS: AtomicU64 = AtomicU64::new(0);
static HEADROOM_EVENTS: AtomicU64 = AtomicU64::new(0);
/// The descriptor the watcher holds (a trigger or systemd's source), so
/// that a child after `fork()` can close its copy: -1 if none.
static HELD_FD: AtomicI32 = AtomicI32::new(-1);

fn pack_source(s: Source) -> u64 {
    match s {
        Source::None => 0,
        Source::V1 { levels_up } => 1 | u64::from(levels_up) << 8,
        Source::V1Hierarchical => 2,
        Source::V2 { levels_up } => 3 | u64::from(levels_up) << 8,
    }
}

fn unpack_source(v: u64) -> Source {
    let levels_up = (v >> 8) as u32;
    match v & 0xff {
        1 => Source::V1 { levels_up },
        2 => Source::V1Hierarchical,
        3 => Source::V2 { levels_up },
        _ => Source::None,
    }
}

fn pack_pressure(p: PressureSource) -> u8 {
    p as u8
}

fn unpack_pressure(v: u8) -> PressureSource {
    match v {
        1 => PressureSource::Systemd,
        2 => PressureSource::CgroupTrigger,
        3 => PressureSource::SystemTrigger,
        4 => PressureSource::CgroupCounter,
        5 => PressureSource::SystemCounter,
        _ => PressureSource::None,
    }
}

/// The CPUs the scavenger's budget counts (see [`ContainerStats::cpus`]).
fn cpus() -> f64 {
    match CPUS_MILLI.load(Ordering::Relaxed) {
        0 => os::cpu_count() as f64,
        m => m as f64 / 1000.0,
    }
}

/// What the watcher has seen.
pub fn stats() -> ContainerStats {
    let max = MEMORY_MAX.load(Ordering::Relaxed);
    let usage = USAGE.load(Ordering::Relaxed);
    let working_set = WORKING_SET.load(Ordering::Relaxed);
    let cpus = cpus();
    ContainerStats {
        memory_max: max,
        memory_high: MEMORY_HIGH.load(Ordering::Relaxed),
        limit_source: unpack_source(LIMIT_SOURCE.load(Ordering::Relaxed)),
        usage,
        working_set,
        headroom: if max == 0 { 0 } else { max.saturating_sub(working_set) },
        cpus,
        pressure_source: unpack_pressure(PRESSURE_SOURCE.load(Ordering::Relaxed)),
        pressure_events: PRESSURE_EVENTS.load(Ordering::Relaxed),
        headroom_events: HEADROOM_EVENTS.load(Ordering::Relaxed),
    }
}

/// In a child after `fork()`: the parent's watcher did not come along, but
/// its descriptor did. Closing the child's copy leaves the parent's watch
/// working; the child's own scavenger opens fresh sources.
pub(crate) fn after_fork_child() {
    let fd = HELD_FD.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        os::close_fd(fd);
    }
}

/// How pressure is watched.
enum Pressure {
    None,
    Systemd(PressureWatch),
    Trigger(PsiTrigger),
    /// The stall counter of a PSI file (`cgroup`: the cgroup's, else the
    /// system's), and its value at the last tick.
    Counter { cgroup: bool, last: Option<u64> },
}

/// The background thread's view of the container.
pub struct Watcher {
    location: Location,
    pressure: Pressure,
    last_limits_ns: u64,
    /// The effective hard limit last read (the smaller of `max` and
    /// `high`), if any.
    limit: Option<usize>,
    /// The pressure source signalled during a [`Self::wait`].
    pending: bool,
}

impl Watcher {
    /// Finds the cgroup and a pressure source. Called once, on the
    /// background thread (it reads files and may open a descriptor).
    pub fn new() -> Self {
        #[cfg(feature = "testing")]
        use_test_root();
        let location = cgroup::detect();
        let (pressure, source) = open_pressure(&location);
        let fd = match &pressure {
            Pressure::Systemd(w) => w.raw_fd(),
            Pressure::Trigger(t) => t.raw_fd(),
            Pressure::None | Pressure::Counter { .. } => -1,
        };
        PRESSURE_SOURCE.store(pack_pressure(source), Ordering::Relaxed);
        HELD_FD.store(fd, Ordering::Relaxed);
        Watcher { location, pressure, last_limits_ns: 0, limit: None, pending: false }
    }

    /// The descriptor pressure arrives on, and the `poll` events that mean
    /// pressure, if the source has one (a PSI trigger, systemd's source).
    fn pressure_fd(&self) -> Option<(i32, libc::c_short)> {
        match &self.pressure {
            Pressure::Systemd(w) => Some((w.raw_fd(), w.poll_events())),
            Pressure::Trigger(t) => Some((t.raw_fd(), libc::POLLPRI)),
            Pressure::None | Pressure::Counter { .. } => None,
        }
    }

    /// Whether pressure can wake the thread: the source is a descriptor
    /// ([`Self::wait`] returns as soon as it signals).
    pub fn can_wait(&self) -> bool {
        self.pressure_fd().is_some()
    }

    /// Sleeps until `deadline_ns` (monotonic) or until the pressure source
    /// signals, whichever comes first; returns whether it signalled. The
    /// signal is kept for the next [`Self::tick`] (a PSI trigger's event
    /// is consumed by the `poll` that sees it). Without a descriptor, or
    /// once the descriptor reports an error or a hang-up (the next tick
    /// finds the source gone), it sleeps on `fallback` instead.
    pub fn wait(&mut self, deadline_ns: u64, fallback: impl Fn(u64)) -> bool {
        if self.pending {
            return true;
        }
        let Some((fd, events)) = self.pressure_fd() else {
            fallback(deadline_ns);
            return false;
        };
        loop {
            let now = os::monotonic_ns();
            if now >= deadline_ns {
                return false;
            }
            let revents = pressure::wait_ready(fd, events, deadline_ns - now);
            // An error or a hang-up first: a socket whose peer closed
            // reports `POLLIN` too, for the end of the stream, which is no
            // pressure. The next tick's check tells a last message from
            // the end, and drops a source that is gone.
            if revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                fallback(deadline_ns);
                return false;
            }
            if revents & events != 0 {
                self.pending = true;
                return true;
            }
        }
    }

    /// Whether the pressure source signalled during a [`Self::wait`] and
    /// the next tick has not looked yet.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// One tick at `now_ns`: re-reads the limits if a second has passed,
    /// reads the usage, checks pressure. Returns why memory must be given
    /// back at once, if it must.
    pub fn tick(&mut self, now_ns: u64) -> Option<Emergency> {
        if self.last_limits_ns == 0 || now_ns.saturating_sub(self.last_limits_ns) >= LIMITS_EVERY_NS {
            self.last_limits_ns = now_ns.max(1);
            self.read_limits();
        }
        let pressure = self.check_pressure();
        // `SCAVALLOC_MEMLIMIT` (set, or `off`) takes the cgroup's limit out
        // of the picture: no cap from it, no release near it.
        if let Some(limit) = self.limit.filter(|_| goals::container_limit_enabled()) {
            let read = cgroup::read_working_set(&self.location);
            let (usage, working_set) = read.unwrap_or((0, 0));
            USAGE.store(usage, Ordering::Relaxed);
            WORKING_SET.store(working_set, Ordering::Relaxed);
            if let Some((_, ws)) = read {
                let retained = super::retained();
                let ours_free = retained.saturating_sub(super::resident_in_use());
                // What the cgroup's other members use: its working set less
                // what this process holds resident (about its retained).
                let others = ws.saturating_sub(retained);
                goals::set_container_room(Some(limit.saturating_sub(headroom_margin(limit)).saturating_sub(others)));
                if at_risk(limit, ws, ours_free) {
                    HEADROOM_EVENTS.fetch_add(1, Ordering::Relaxed);
                    return Some(Emergency::Headroom);
                }
            }
        }
        if pressure {
            PRESSURE_EVENTS.fetch_add(1, Ordering::Relaxed);
            return Some(Emergency::Pressure);
        }
        None
    }

    fn read_limits(&mut self) {
        let m = cgroup::read_memory(&self.location);
        MEMORY_MAX.store(m.max.unwrap_or(0), Ordering::Relaxed);
        MEMORY_HIGH.store(m.high.unwrap_or(0), Ordering::Relaxed);
        LIMIT_SOURCE.store(pack_source(m.source), Ordering::Relaxed);
        self.limit = match (m.max, m.high) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if self.limit.is_none() {
            goals::set_container_room(None);
        }
        goals::set_container_limit(m.max, m.high);
        let affinity = os::cpu_count() as f64;
        let cpus = match cgroup::cpu_limit(&self.location) {
            Some(quota) => affinity.min(quota.max(0.01)),
            None => affinity,
        };
        CPUS_MILLI.store((cpus * 1000.0).round().max(1.0) as u64, Ordering::Relaxed);
    }

    /// Whether pressure was signalled since the last tick (during a
    /// [`Self::wait`], or now).
    fn check_pressure(&mut self) -> bool {
        let seen = core::mem::take(&mut self.pending);
        seen | self.check_source()
    }

    fn check_source(&mut self) -> bool {
        match &mut self.pressure {
            Pressure::None => false,
            Pressure::Systemd(w) => match w.check() {
                Signal::Quiet => false,
                Signal::Pressure => true,
                Signal::Gone => {
                    self.pressure = Pressure::None;
                    HELD_FD.store(-1, Ordering::Relaxed);
                    PRESSURE_SOURCE.store(pack_pressure(PressureSource::None), Ordering::Relaxed);
                    false
                }
            },
            Pressure::Trigger(t) => match t.check() {
                Signal::Quiet => false,
                Signal::Pressure => true,
                Signal::Gone => {
                    // The cgroup went away: the system's counter is left.
                    self.pressure = Pressure::Counter { cgroup: false, last: None };
                    HELD_FD.store(-1, Ordering::Relaxed);
                    PRESSURE_SOURCE.store(pack_pressure(PressureSource::SystemCounter), Ordering::Relaxed);
                    false
                }
            },
            Pressure::Counter { cgroup, last } => {
                let now = if *cgroup {
                    self.location
                        .unified_dir()
                        .and_then(|d| d.with_file(b"memory.pressure", pressure::stall_total_us))
                        .flatten()
                } else {
                    pressure::stall_total_us(c"/proc/pressure/memory")
                };
                let fired = matches!((*last, now), (Some(a), Some(b)) if b.saturating_sub(a) > STALL_PER_TICK_US);
                *last = now;
                fired
            }
        }
    }

    /// The CPUs the scavenger's budget counts (see [`ContainerStats::cpus`]).
    pub fn cpus(&self) -> f64 {
        cpus()
    }

    /// Whether there is anything to watch every tick: a limit, or a
    /// pressure source.
    pub fn watching(&self) -> bool {
        self.limit.is_some() || !matches!(self.pressure, Pressure::None)
    }
}

/// For scavalloc's own tests: `SCAVALLOC_TEST_CGROUP_ROOT` makes the
/// watcher read a fake cgroup tree under that directory (see
/// `cgroup::set_test_root`).
#[cfg(feature = "testing")]
fn use_test_root() {
    let Some(root) = os::getenv(c"SCAVALLOC_TEST_CGROUP_ROOT") else { return };
    let mut buf = [0u8; 256];
    if root.len() >= buf.len() {
        return;
    }
    buf[..root.len()].copy_from_slice(root);
    if let Ok(path) = core::ffi::CStr::from_bytes_until_nul(&buf) {
        cgroup::set_test_root(path);
    }
}

/// The pressure source, and which it is: systemd's if it names one (or
/// turns pressure off), else a trigger on the cgroup's `memory.pressure`,
/// else on the system's, else the counter of either.
fn open_pressure(location: &Location) -> (Pressure, PressureSource) {
    match PressureWatch::from_env(os::getenv) {
        Ok(WatchSetting::Watch(w)) => return (Pressure::Systemd(w), PressureSource::Systemd),
        Ok(WatchSetting::Off) => return (Pressure::None, PressureSource::None),
        // Unset, or a source that cannot be opened: our own watching.
        Ok(WatchSetting::Unset) | Err(_) => {}
    }
    let arm = |path: &core::ffi::CStr| {
        PsiTrigger::open(path, pressure::TRIGGER_STALL_US, pressure::TRIGGER_WINDOW_US).ok()
    };
    if let Some(t) = location.unified_dir().and_then(|d| d.with_file(b"memory.pressure", arm)).flatten() {
        return (Pressure::Trigger(t), PressureSource::CgroupTrigger);
    }
    if let Some(t) = arm(c"/proc/pressure/memory") {
        return (Pressure::Trigger(t), PressureSource::SystemTrigger);
    }
    let cgroup_counter = location
        .unified_dir()
        .and_then(|d| d.with_file(b"memory.pressure", pressure::stall_total_us))
        .flatten()
        .is_some();
    if cgroup_counter {
        return (Pressure::Counter { cgroup: true, last: None }, PressureSource::CgroupCounter);
    }
    if pressure::stall_total_us(c"/proc/pressure/memory").is_some() {
        return (Pressure::Counter { cgroup: false, last: None }, PressureSource::SystemCounter);
    }
    (Pressure::None, PressureSource::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_the_larger_of_five_percent_and_64_mib() {
        assert_eq!(headroom_margin(900 << 20), 64 << 20, "5% of 900 MiB is 45 MiB: 64 MiB wins");
        assert_eq!(headroom_margin(4 << 30), (4 << 30) / 20, "5% of 4 GiB is 204.8 MiB");
        assert_eq!(headroom_margin(0), 64 << 20);
    }

    #[test]
    fn free_memory_counts_twice_against_the_limit() {
        const MIB: usize = 1 << 20;
        // The scenario: 600 MiB used, 540 of it free, 900 MiB limit.
        assert!(at_risk(900 * MIB, 600 * MIB, 540 * MIB));
        // The same with a 2 GiB limit: plenty of room, keep it.
        assert!(!at_risk(2048 * MIB, 600 * MIB, 540 * MIB));
        // Nothing free, but the working set within the margin of the limit.
        assert!(at_risk(900 * MIB, 840 * MIB, 0));
        assert!(!at_risk(900 * MIB, 830 * MIB, 0));
        // After giving the 540 MiB back: 60 MiB in use, nothing free.
        assert!(!at_risk(900 * MIB, 60 * MIB, 0));
    }

    #[test]
    fn sources_pack_and_unpack() {
        for s in [Source::None, Source::V1 { levels_up: 3 }, Source::V1Hierarchical, Source::V2 { levels_up: 0 }] {
            assert_eq!(unpack_source(pack_source(s)), s);
        }
        for p in [
            PressureSource::None,
            PressureSource::Systemd,
            PressureSource::CgroupTrigger,
            PressureSource::SystemTrigger,
            PressureSource::CgroupCounter,
            PressureSource::SystemCounter,
        ] {
            assert_eq!(unpack_pressure(pack_pressure(p)), p);
        }
    }
}
