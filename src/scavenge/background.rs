//! The background scavenger thread.
//!
//! It is started after the first free of pages to the page heap, without
//! any Rust allocation (a raw `pthread_create`). The free itself only
//! leaves a note ([`wake_if_over_goal`], [`nudge`]): it may hold a class
//! lock, or run while a thread cache is half updated, and creating a thread
//! allocates (through this allocator, under `LD_PRELOAD`). The public entry
//! points act on the note at their end ([`run_deferred`]), holding no
//! allocator lock, with every cache consistent; waking a parked thread (a
//! futex system call) waits for the same point. Then it loops:
//!
//! 1. Every quarter second it records the peak of pages in use into the
//!    [`PeakWindow`], lets the retained window learn from what was released
//!    and taken back since ([`window`]), and recomputes the retained goal
//!    from the peak within the window (the base window while a lengthened
//!    one would run into a limit); every half second it starts a new
//!    generation for chunk density (see [`goals::GENERATION_NS`]).
//! 2. While retained memory is over the goal it works in batches: 64 KiB
//!    quanta until it has worked 1 ms (Go's `minScavWorkTime`) or the goal is
//!    met, measured with the thread's own CPU clock (user and system time,
//!    so the `madvise` calls count).
//! 3. Between batches it sleeps `worked / ratio` (once the budget banked
//!    while parked, at most four seconds' worth, is spent), where the ratio
//!    comes from the [`PiController`] so that its CPU use averages the
//!    configured share of the whole machine (divided by the CPUs the process
//!    may use, as Go divides by GOMAXPROCS). If the controller breaks down it sleeps at the
//!    starting ratio for a 5 s cooldown and starts afresh.
//! 4. At or under the goal it runs deep release (the free pages inside
//!    partly used spans, installed by the span layer) on the same budget
//!    while that is over its own goal.
//! 5. Then it parks on a futex: until the next quarter second if the goal
//!    can still fall (the window still holds a higher peak) or deep release
//!    expects work soon, or until woken by a free that pushes retained
//!    memory over the goal. With a memory-pressure source that is a
//!    descriptor (a PSI trigger, systemd's FIFO or socket), every sleep is
//!    a `poll` on it instead, for a quarter second at most, so that
//!    pressure ends the sleep at once.
//!
//! All its state but a few published figures lives on its own stack.

use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use super::container::{Emergency, Watcher};
use super::controller::PiController;
use super::goals::{self, PeakWindow, GENERATION_NS, SLOT_NS};
use super::window::{self, Adaptive};
use super::{release, released_by, DeepOutcome, Path};
use crate::os;
use crate::pages::heap::HEAP;
use crate::report::LineBuf;
use crate::sync::Parker;
use crate::scavenge;

const NOT_STARTED: u32 = 0;
const STARTING: u32 = 1;
const RUNNING: u32 = 2;
const FAILED: u32 = 3;

static STATE: AtomicU32 = AtomicU32::new(NOT_STARTED);
/// Where the thread parks with no deadline, until a waker wakes it (a
/// thread that naps until its next tick wakes itself).
static PARKER: Parker = Parker::new();
/// The futex word timed naps sleep on; nobody wakes it.
static NAP: AtomicU32 = AtomicU32::new(0);

/// CPU time the thread has spent working, in nanoseconds.
static CPU_NS: AtomicU64 = AtomicU64::new(0);
/// Work batches done.
static BATCHES: AtomicU64 = AtomicU64::new(0);
/// CPU time spent on deep release, in nanoseconds (part of `CPU_NS`).
static DEEP_CPU_NS: AtomicU64 = AtomicU64::new(0);
/// Bytes deep release gave back from this thread, and spans it touched.
static DEEP_RELEASED: AtomicUsize = AtomicUsize::new(0);
static DEEP_SPANS: AtomicU64 = AtomicU64::new(0);
/// The current sleep ratio (work : sleep), as `f64` bits.
static SLEEP_RATIO: AtomicU64 = AtomicU64::new(STARTING_RATIO.to_bits());

/// The ratio to fall back to during a cooldown after a controller failure
/// (1:1000, Go's conservative choice).
const STARTING_RATIO: f64 = 0.001;

/// The work:sleep ratio at which a thread uses `fraction` of `cpus` CPUs:
/// the controller's steady state, and where it starts (Go starts at 1:1000
/// and takes a couple of seconds to climb; starting at the answer lets an
/// idle process shed memory within seconds).
fn steady_ratio(fraction: f64, cpus: f64) -> f64 {
    let share = (fraction * cpus).min(0.999);
    (share / (1.0 - share)).clamp(0.001, 1000.0)
}
/// How much to release in one go: a batch of up to 32 runs (one heap-lock
/// round trip and, where the kernel allows, one system call), 64 KiB each
/// on average. Go releases 64 KiB per call; in a heap where live objects
/// split the free pages into runs of a few pages, per-call costs (the
/// system call, the TLB flush on other CPUs, the heap lock) dominate, and
/// batching them cut the CPU per byte released in the scattered burst-idle
/// case by about half.
const QUANTUM: usize = 32 * (64 << 10);
/// Work done before sleeping (Go's `minScavWorkTime`).
const MIN_WORK_NS: u64 = 1_000_000;
/// The CPU share is an average: time the thread spends parked banks
/// budget (at the configured share), up to four seconds' worth, which the
/// next work is allowed to use at once before the controller paces it. An
/// idle process that frees a burst therefore starts giving memory back at
/// full speed, and over any interval the thread uses at most its share plus
/// four seconds' worth (80 ms at 1% of two CPUs; over any ten seconds at
/// most 1.4% in place of 1%). Four seconds because giving back a gigabyte
/// scattered over free runs and the insides of spans costs the kernel
/// 0.1-0.25 s of CPU, depending on the machine (0.4-0.9 microseconds per
/// 4 KiB page in whole runs, up to 2 microseconds page by page inside
/// spans, on the 2-core VMs here), which at 1% of two CPUs alone would take
/// five to twelve seconds. Not more than four, because the bank is spent on
/// top of the share the user chose.
const BANK_NS: f64 = 4e9;

fn bank_limit(cpus: f64) -> f64 {
    BANK_NS * goals::cpu_fraction() * cpus
}

/// How long to hold the starting ratio after the controller fails.
const COOLDOWN_NS: u64 = 5_000_000_000;

/// What the statistics show of the background scavenger.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BackgroundStats {
    /// Whether the thread has been started.
    pub running: bool,
    /// CPU time spent working, in nanoseconds.
    pub cpu_ns: u64,
    /// Work batches done.
    pub batches: u64,
    /// The current sleep ratio (work : sleep).
    pub sleep_ratio: f64,
    /// CPU time spent on deep release (part of `cpu_ns`).
    pub deep_cpu_ns: u64,
}

/// The background scavenger's figures.
pub fn stats() -> BackgroundStats {
    BackgroundStats {
        running: STATE.load(Ordering::Relaxed) == RUNNING,
        cpu_ns: CPU_NS.load(Ordering::Relaxed),
        batches: BATCHES.load(Ordering::Relaxed),
        sleep_ratio: f64::from_bits(SLEEP_RATIO.load(Ordering::Relaxed)),
        deep_cpu_ns: DEEP_CPU_NS.load(Ordering::Relaxed),
    }
}

/// Work for the thread that the allocator's inner paths asked for, done by
/// [`run_deferred`]: bits of [`WANT_WAKE`] and [`WANT_NUDGE`].
///
/// The paths that learn the thread has work (a free of pages to the heap,
/// a give-back that leaves spans mostly free) run with a class lock held or
/// with a thread cache half updated. Starting a thread there is wrong:
/// `pthread_create` allocates (under `LD_PRELOAD`, through this allocator,
/// which would wait for the class lock this thread holds, or pop from the
/// half-updated cache), and even a futex wake is a system call under a
/// lock. So they only leave a note, and the public entry points act on it
/// once they hold no lock and every cache is consistent.
static WANTED: AtomicU8 = AtomicU8::new(0);
/// Pages went back to the heap: wake or start the thread if retained
/// memory is over its goal.
const WANT_WAKE: u8 = 1;
/// Objects went back to spans that are now mostly free: see [`nudge`].
const WANT_NUDGE: u8 = 2;
/// Several threads cache objects: see [`start_for_caches`].
const WANT_START: u8 = 4;
/// An allocation left releases owed: see [`want_release`].
const WANT_RELEASE: u8 = 8;

#[inline(always)]
fn want(bit: u8) {
    // A load first: the word is shared by every thread and is nearly
    // always set or clear already.
    if WANTED.load(Ordering::Relaxed) & bit == 0 {
        WANTED.fetch_or(bit, Ordering::Relaxed);
    }
}

/// Called after pages are freed to the heap (often under a class lock):
/// notes that the thread may have to be started or woken, which
/// [`run_deferred`] does. One load when the note is already there.
#[inline]
pub fn wake_if_over_goal() {
    if goals::background_enabled() {
        want(WANT_WAKE);
    }
}

/// When [`nudge`] last woke (or started) the thread, in
/// [`os::coarse_ms`].
static LAST_NUDGE: AtomicU64 = AtomicU64::new(0);

/// Called by the span layer when objects given back leave a lot of free
/// memory inside spans. Such frees release no pages, so
/// [`wake_if_over_goal`] never hears of them, and deep release would wait
/// for the next page free: a cache emptied of nine objects in ten, none of
/// its spans wholly free, could keep its memory for good. It notes the
/// request; [`run_deferred`] then, at most once a second, starts the
/// thread or wakes it if it is parked without a deadline; the thread sees
/// whether deep release has work, and keeps looking every quarter second
/// for two seconds after a nudge (nudges the rate limit drops are not
/// lost).
#[inline]
pub fn nudge() {
    if goals::background_enabled() && goals::deep_release_enabled() {
        want(WANT_NUDGE);
    }
}

/// Called by the span layer when a second thread attaches a cache (often
/// under a lock): the thread must run, whether or not the heap is over its
/// goal, to trim the caches of threads that go idle (a pool of idle
/// threads frees nothing, so nothing else would start it). Notes the
/// request for [`run_deferred`].
#[inline]
pub fn start_for_caches() {
    if goals::background_enabled() && STATE.load(Ordering::Relaxed) == NOT_STARTED {
        want(WANT_START);
    }
}

/// Heap profiles asked for by a signal and not yet written.
static PROFILE_DUMPS_PENDING: AtomicU32 = AtomicU32::new(0);

/// Asks the thread to write a heap profile (see
/// [`super::set_profile_dump`]). Async-signal-safe: an atomic add and, if
/// the thread is parked, a futex wake; a thread napping or pacing itself
/// writes it when it wakes (within a quarter second or its pause).
pub fn request_profile_dump() {
    PROFILE_DUMPS_PENDING.fetch_add(1, Ordering::SeqCst);
    if PARKER.is_parked() {
        PARKER.wake();
    }
}

/// Makes sure the thread runs (at the end of the next slow path), for a
/// program that asks for profiles on a signal: that needs the thread even
/// while nothing is to be released.
pub fn start_for_profiles() {
    if goals::background_enabled() && STATE.load(Ordering::Relaxed) == NOT_STARTED {
        want(WANT_START);
    }
}

/// Called by [`super::alloc_pages`] (often under a class lock) when the
/// heap grew or took released pages back under a memory limit: notes that
/// [`run_deferred`] must settle the releases owed
/// ([`super::settle_owed_releases`]), whether or not the thread runs.
#[inline]
pub fn want_release() {
    want(WANT_RELEASE);
}

/// Acts on what [`wake_if_over_goal`] and [`nudge`] noted: starts the
/// thread, or wakes it. Called at the end of the public entry points' slow
/// paths (and of `free` in the C API, `release_all`, cache flushes, thread
/// exit and arena frees), where the calling thread holds no allocator lock
/// and its cache is consistent. One load when there is nothing to do.
#[inline]
pub fn run_deferred() {
    if WANTED.load(Ordering::Relaxed) != 0 {
        run_deferred_slow();
    }
}

#[cold]
#[inline(never)]
fn run_deferred_slow() {
    let wanted = WANTED.swap(0, Ordering::Relaxed);
    #[cfg(feature = "testing")]
    if let Some(held) = crate::sync::held_locks() {
        if held != 0 {
            crate::report::fatal(format_args!(
                "the scavenger thread would be started or woken while {held} allocator locks are held"
            ));
        }
    }
    if wanted & WANT_RELEASE != 0 {
        super::settle_owed_releases();
    }
    // The wake below asks `PARKER.is_parked()`, whose fence pairs with the
    // parking thread's: either it is seen parked, or it sees the retained
    // memory (and the frees) that led here and does not sleep.
    if wanted & WANT_WAKE != 0 {
        wake_now();
    }
    if wanted & WANT_NUDGE != 0 {
        nudge_now();
    }
    if wanted & WANT_START != 0 && STATE.load(Ordering::SeqCst) == NOT_STARTED {
        start();
    }
}

/// Starts the thread if it has never run, and wakes it if it is parked and
/// retained memory is over the goal that the current pages in use will
/// lead to (the goal follows the peak in use, which a free may have ended).
fn wake_now() {
    let in_use = scavenge::resident_in_use();
    release_what_the_container_cannot_afford(in_use);
    let goal = goals::goal_for(in_use);
    if scavenge::retained() <= goal.saturating_add(os::page_size()) {
        return;
    }
    match STATE.load(Ordering::SeqCst) {
        NOT_STARTED => start(),
        FAILED => {}
        // Also while the thread is being started: it may already run, and
        // park, before its starter marks it running.
        _ if PARKER.is_parked() => PARKER.wake(),
        _ => {}
    }
}

/// Free memory the control group cannot afford (see
/// `goals::container_cap`), with `in_use` bytes in use; 0 without a limit.
/// Never more than is free: with the cgroup full of others' memory the cap
/// can fall below what is in use, and then nothing can be given.
fn unaffordable(in_use: usize) -> usize {
    match goals::container_cap(in_use) {
        usize::MAX => 0,
        cap => scavenge::retained().saturating_sub(cap.max(in_use)),
    }
}

/// Free memory beyond what the control group can afford (see
/// `goals::container_cap`), by more than this, is released by the thread
/// whose frees made it so, before it returns to the program.
const INLINE_RELEASE_SLACK: usize = 16 << 20;

/// Releases, on the calling thread (holding no lock), the free memory the
/// control group cannot afford, if it is more than
/// [`INLINE_RELEASE_SLACK`]. Waking the background thread would be too
/// late: a process next to this one can fill the cgroup's headroom in a
/// tenth of a second, while a wake-up on a loaded machine, and the release
/// itself (about 0.13 ms per MiB here), can take longer; the frees that
/// made the memory free pay for giving it back instead.
fn release_what_the_container_cannot_afford(in_use: usize) {
    let excess = unaffordable(in_use);
    if excess <= INLINE_RELEASE_SLACK {
        return;
    }
    // The page cache's free pages can only be released from the heap.
    crate::pages::cache::flush_all();
    release(excess, Path::Pressure);
}

/// The nudge itself, rate-limited to once a second: starts the thread, or
/// wakes it if it is parked. A running thread that is awake sees the nudge
/// (its time) when it next parks, and looks again every quarter second for
/// two seconds instead of parking for good.
fn nudge_now() {
    let state = STATE.load(Ordering::SeqCst);
    if state == FAILED {
        return;
    }
    let now = os::coarse_ms();
    let last = LAST_NUDGE.load(Ordering::Relaxed);
    if now.saturating_sub(last) < 1000
        || LAST_NUDGE.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
    {
        return;
    }
    match state {
        NOT_STARTED => start(),
        _ if PARKER.is_parked() => PARKER.wake(),
        _ => {}
    }
}

/// Whether a nudge came in the last two seconds: frees are under way that
/// the rate limit may have kept from reaching the thread.
fn nudged_lately() -> bool {
    os::coarse_ms().saturating_sub(LAST_NUDGE.load(Ordering::Relaxed)) < 2000
}

#[cold]
fn start() {
    if STATE.compare_exchange(NOT_STARTED, STARTING, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return;
    }
    let next = if os::spawn_thread(thread_main).is_ok() { RUNNING } else { FAILED };
    STATE.store(next, Ordering::Release);
}

/// In a forked child: the thread did not survive the fork; let the next
/// free start a new one.
pub(crate) fn after_fork_child() {
    PARKER.reset();
    super::container::after_fork_child();
    // Let the child's first entry point look at the goal afresh.
    WANTED.store(WANT_WAKE | WANT_RELEASE, Ordering::Relaxed);
    if STATE.load(Ordering::Relaxed) != FAILED {
        STATE.store(NOT_STARTED, Ordering::Relaxed);
    }
}

/// Free memory below which an emergency release for the cgroup's headroom
/// is not worth its system calls.
const EMERGENCY_MIN_FREE: usize = 1 << 20;

/// Seconds of the pressure CPU share the emergency release may spend at
/// once (half a gigabyte of whole free spans takes about 70 ms of CPU to
/// release here; a second of 10% of two CPUs is 200 ms).
const EMERGENCY_BANK_S: f64 = 1.0;

/// The longest park while thread caches hold memory.
const TRIM_LOOK_NS: u64 = 1_000_000_000;

/// Sleeps until `deadline` (monotonic ns; wakers do not cut it short:
/// they only wake a thread parked without a deadline), on a futex word of
/// its own that nobody wakes.
fn nap_until(deadline: u64) {
    loop {
        let now = os::monotonic_ns();
        if now >= deadline {
            return;
        }
        os::futex_wait_timeout(&NAP, 0, deadline - now);
    }
}

extern "C" fn thread_main(_: *mut libc::c_void) -> *mut libc::c_void {
    Scavenger::new().run()
}

/// What a turn of deep release came to.
enum DeepCycle {
    /// Work done, taking this much CPU time.
    Worked(u64),
    /// Nothing now; look again at the next tick.
    Later,
    /// Nothing until memory use changes.
    Idle,
}

/// Bytes released so far for the retained goal (whole runs by this thread
/// and by heap growth, and deep release by this thread): what the retained
/// window watches being taken back.
fn goal_released() -> usize {
    released_by(Path::Background) + released_by(Path::Eager) + DEEP_RELEASED.load(Ordering::Relaxed)
}

/// The thread's own state.
struct Scavenger {
    controller: PiController,
    ratio: f64,
    cooldown_ns: u64,
    /// CPU time banked while parked, spent on work before any sleep (see
    /// [`BANK_NS`]).
    banked_ns: f64,
    controller_reset: bool,
    window: PeakWindow,
    /// How long the window is: learned from how released memory is reused.
    adaptive: Adaptive,
    last_tick: u64,
    last_generation: u64,
    cpus: f64,
    trace: Trace,
    /// Whether some thread cache held memory at the last trim round: the
    /// thread then parks for at most a second, so that a cache whose thread
    /// goes idle is trimmed about a second later.
    caches_hold: bool,
    /// The container's limits and pressure, looked at every tick.
    watcher: Watcher,
    /// CPU time (ns) the emergency release may spend now: it fills at the
    /// pressure share of the CPUs (`SCAVALLOC_PRESSURE_PERCENT`), up to one
    /// second's worth, so that one emergency runs at once and a stream of
    /// them averages the share.
    emergency_bank_ns: f64,
    /// When the bank was last filled (monotonic ns).
    emergency_bank_at: u64,
    /// Whether the last tick ended in an emergency release (for the trace).
    in_emergency: bool,
}

/// What the trace line reports since the last line.
struct Trace {
    at: u64,
    cpu_ns: u64,
    released: [usize; 5],
    deep_cpu_ns: u64,
    deep_released: usize,
    deep_spans: u64,
}

impl Scavenger {
    fn new() -> Self {
        let now = os::monotonic_ns();
        let mut watcher = Watcher::new();
        // Reads the limits and the CPU quota before the first pacing.
        let first = watcher.tick(now);
        let cpus = watcher.cpus();
        let ratio = steady_ratio(goals::cpu_fraction(), cpus);
        let mut controller = PiController::scavenger();
        controller.prime(ratio);
        SLEEP_RATIO.store(ratio.to_bits(), Ordering::Relaxed);
        Scavenger {
            controller,
            ratio,
            cooldown_ns: 0,
            banked_ns: bank_limit(cpus),
            controller_reset: false,
            window: PeakWindow::default(),
            adaptive: Adaptive::new(goal_released(), window::refaulted_bytes()),
            last_tick: 0,
            last_generation: now,
            cpus,
            trace: Trace { at: now, cpu_ns: 0, released: [0; 5], deep_cpu_ns: 0, deep_released: 0, deep_spans: 0 },
            caches_hold: false,
            watcher,
            emergency_bank_ns: EMERGENCY_BANK_S * goals::pressure_fraction() * cpus * 1e9,
            emergency_bank_at: now,
            in_emergency: first.is_some(),
        }
    }

    fn run(mut self) -> ! {
        loop {
            if PROFILE_DUMPS_PENDING.load(Ordering::Relaxed) != 0 {
                PROFILE_DUMPS_PENDING.store(0, Ordering::Relaxed);
                if let Some(d) = super::profile_dump() {
                    (d.write)();
                }
            }
            let now = os::monotonic_ns();
            if now.saturating_sub(self.last_tick) >= SLOT_NS || self.watcher.pending() {
                self.tick(now);
            }
            let in_use = scavenge::resident_in_use();
            // Free memory the control group cannot afford goes back at
            // once, not at the pace of the window: a free that made it so
            // woke us.
            if unaffordable(in_use) > EMERGENCY_MIN_FREE && self.emergency_allowed(now) {
                self.in_emergency = true;
                self.emergency(now);
            }
            let peak = self.recent_peak(now, in_use);
            let goal = goals::goal_for(peak);
            goals::set_retained_goal(goal);
            let retained = scavenge::retained();
            if retained <= goal.saturating_add(os::page_size()) {
                // The page heap is at its goal: the budget goes to the free
                // pages inside partly used spans, if they are over their
                // goal (deep release leaves spans alone for a second after
                // they were last allocated from, as the window does runs).
                match self.deep_work(now) {
                    DeepCycle::Worked(worked) => {
                        if self.banked_ns >= worked as f64 {
                            self.banked_ns -= worked as f64;
                        } else {
                            self.sleep(worked);
                        }
                    }
                    DeepCycle::Later => self.park(now, goal, true),
                    DeepCycle::Idle => self.park(now, goal, peak > in_use),
                }
                continue;
            }
            let (worked, released) = self.work(goal);
            if released > 0 && self.banked_ns >= worked as f64 {
                // Spend the budget saved while idle before pacing kicks in.
                self.banked_ns -= worked as f64;
                continue;
            }
            if released == 0 {
                // Over the goal, but nothing it may release: the free pages
                // are in dense chunks (spared for two generations) or
                // cannot be released. Go parks here; a timed park lets the
                // next generation make those chunks fair game.
                self.trace_line(now);
                self.nap(SLOT_NS);
                continue;
            }
            self.sleep(worked);
        }
    }

    /// Closes a window slot: records the peak; every half second starts a
    /// density generation and prints a trace line if there is news.
    fn tick(&mut self, now: u64) {
        // The container first: near its limit or under pressure, everything
        // free goes back now, whatever the window says.
        let emergency = self.watcher.tick(now);
        let cpus = self.watcher.cpus();
        if (cpus - self.cpus).abs() > 0.01 {
            // The container's CPU quota or the affinity changed: the steady
            // ratio moved with it, and the controller starts from there
            // rather than climbing to it from the old answer.
            self.cpus = cpus;
            self.ratio = steady_ratio(goals::cpu_fraction(), cpus);
            self.controller.prime(self.ratio);
            SLEEP_RATIO.store(self.ratio.to_bits(), Ordering::Relaxed);
        }
        self.in_emergency = emergency.is_some();
        // Someone needs the memory: whatever the window learned, it holds
        // nothing back now, nor for the program's next bursts.
        if emergency.is_some() {
            window::reset_and_publish(&mut self.adaptive);
        } else {
            window::observe_and_publish(&mut self.adaptive, now, goal_released());
        }
        // Near the limit with nothing free to give (and nothing cached, the
        // last round said), an emergency would only burn its CPU share.
        let free = scavenge::retained().saturating_sub(scavenge::resident_in_use());
        let something = free > EMERGENCY_MIN_FREE || self.caches_hold || emergency == Some(Emergency::Pressure);
        if emergency.is_some() && something && self.emergency_allowed(now) {
            self.emergency(now);
        }
        // Caches of threads that stopped allocating, or beyond the budget
        // of all caches, go back to their spans.
        if let Some(trim) = scavenge::cache_trim() {
            let start = os::thread_cpu_ns();
            self.caches_hold = (trim.trim)(os::coarse_ms(), false);
            CPU_NS.fetch_add(os::thread_cpu_ns() - start, Ordering::Relaxed);
        }
        // Blocks of CPUs that stopped making spans go back to the heap.
        crate::pages::cache::flush_idle(os::coarse_ms());
        let peak = scavenge::resident(HEAP.lock().take_peak_in_use());
        self.window.push(now, peak);
        self.last_tick = now;
        if now.saturating_sub(self.last_generation) >= GENERATION_NS {
            HEAP.lock().pages().next_generation();
            self.last_generation = now;
            self.trace_line(now);
        }
    }

    /// The peak of pages in use the retained goal keeps room for: the
    /// highest within the learned window, unless that would put the goal
    /// at a cap (the memory limit, or what the control group can afford);
    /// then the highest within the base window. Publishes the window used.
    fn recent_peak(&self, now: u64, in_use: usize) -> usize {
        let learned = self.adaptive.window_ns();
        let peak = self.window.peak(now, in_use, learned);
        if learned > window::BASE_NS && goals::capped(peak) {
            window::set_in_force(window::BASE_NS);
            return self.window.peak(now, in_use, window::BASE_NS);
        }
        window::set_in_force(learned);
        peak
    }

    /// Fills the emergency bank for the time since it was last filled;
    /// whether it holds anything to spend.
    fn emergency_allowed(&mut self, now: u64) -> bool {
        let share = goals::pressure_fraction() * self.cpus;
        let elapsed = now.saturating_sub(self.emergency_bank_at) as f64;
        self.emergency_bank_at = now;
        self.emergency_bank_ns = (self.emergency_bank_ns + elapsed * share).min(EMERGENCY_BANK_S * share * 1e9);
        self.emergency_bank_ns > 0.0
    }

    /// The emergency release: every thread cache trimmed (those whose
    /// threads are busy at that moment excepted), deep release of all it
    /// can, every free page of the heap. Its CPU time comes out of the
    /// emergency bank (`SCAVALLOC_PRESSURE_PERCENT`).
    fn emergency(&mut self, _now: u64) {
        let start = os::thread_cpu_ns();
        if let Some(trim) = scavenge::cache_trim() {
            (trim.trim)(os::coarse_ms(), true);
        }
        let released = scavenge::release_everything(Path::Pressure);
        let worked = os::thread_cpu_ns() - start;
        CPU_NS.fetch_add(worked, Ordering::Relaxed);
        BATCHES.fetch_add(1, Ordering::Relaxed);
        self.emergency_bank_ns -= worked as f64;
        if released > 0 {
            self.trace_line(os::monotonic_ns());
        }
    }

    /// Releases toward `goal` until 1 ms of CPU time is spent, the goal is
    /// met, or nothing is left; returns the CPU time worked and the bytes
    /// released.
    fn work(&mut self, goal: usize) -> (u64, usize) {
        let start = os::thread_cpu_ns();
        let mut released = 0;
        // The page cache's free pages can only be released from the heap.
        crate::pages::cache::flush_all();
        loop {
            let retained = scavenge::retained();
            if retained <= goal {
                break;
            }
            let want = (retained - goal).min(QUANTUM);
            let got = release(want, Path::Background);
            released += got;
            if got < want || os::thread_cpu_ns() - start >= MIN_WORK_NS {
                break;
            }
        }
        let worked = os::thread_cpu_ns() - start;
        CPU_NS.fetch_add(worked, Ordering::Relaxed);
        BATCHES.fetch_add(1, Ordering::Relaxed);
        (worked, released)
    }

    /// One batch of deep release: steps until 1 ms of CPU time is spent or
    /// the pass pauses.
    fn deep_work(&mut self, now: u64) -> DeepCycle {
        let Some(deep) = scavenge::deep_release() else { return DeepCycle::Idle };
        let start = os::thread_cpu_ns();
        let mut worked_any = false;
        loop {
            match (deep.work)(now, QUANTUM) {
                DeepOutcome::Worked { released, spans, more } => {
                    worked_any = true;
                    DEEP_RELEASED.fetch_add(released, Ordering::Relaxed);
                    DEEP_SPANS.fetch_add(spans as u64, Ordering::Relaxed);
                    if !more || os::thread_cpu_ns() - start >= MIN_WORK_NS {
                        break;
                    }
                }
                DeepOutcome::Later if !worked_any => return DeepCycle::Later,
                DeepOutcome::Idle if !worked_any => return DeepCycle::Idle,
                DeepOutcome::Later | DeepOutcome::Idle => break,
            }
        }
        let worked = os::thread_cpu_ns() - start;
        CPU_NS.fetch_add(worked, Ordering::Relaxed);
        DEEP_CPU_NS.fetch_add(worked, Ordering::Relaxed);
        BATCHES.fetch_add(1, Ordering::Relaxed);
        DeepCycle::Worked(worked)
    }

    /// Sleeps after a batch for as long as the CPU budget asks, and feeds
    /// the controller with what the batch cost.
    fn sleep(&mut self, worked: u64) {
        // Too little work makes for sleeps too short to measure well:
        // count it as the minimum, and sleep longer rather than shorter.
        let worked = worked.max(MIN_WORK_NS) as f64;
        // Never sleep more than twice the steady-state sleep for the
        // budget. With Go's gains the integral moves in proportion to the
        // period, so after one long sleep it overshoots, and the loop falls
        // into a cycle of bursts and one-second sleeps whose average is right
        // but which stalls releasing for a second at a time (seen in the
        // burst-idle runs, and in the controller's own simulation). Bounding
        // the period keeps each period near the target; the average is
        // unchanged.
        let longest = 2.0 * worked / steady_ratio(goals::cpu_fraction(), self.cpus);
        let sleep_ns = (worked / self.ratio).min(longest) as u64;
        let before = os::monotonic_ns();
        self.nap(sleep_ns);
        let slept = os::monotonic_ns().saturating_sub(before) as f64;
        if self.cooldown_ns > 0 {
            self.cooldown_ns = self.cooldown_ns.saturating_sub((slept + worked) as u64);
            return;
        }
        let fraction = worked / ((slept + worked) * self.cpus);
        match self.controller.next(fraction, goals::cpu_fraction(), slept + worked) {
            Some(r) => self.ratio = r,
            None => {
                self.ratio = STARTING_RATIO;
                self.cooldown_ns = COOLDOWN_NS;
                self.controller_reset = true;
            }
        }
        SLEEP_RATIO.store(self.ratio.to_bits(), Ordering::Relaxed);
    }

    /// Parks: until the next slot if the goal may still fall (the window
    /// holds a higher peak than now), else until a free wakes it.
    fn park(&mut self, now: u64, goal: usize, goal_may_fall: bool) {
        self.trace_line(now);
        let start = os::monotonic_ns();
        self.park_inner(goal, goal_may_fall);
        let parked = os::monotonic_ns().saturating_sub(start) as f64;
        let share = goals::cpu_fraction() * self.cpus;
        self.banked_ns = (self.banked_ns + parked * share).min(bank_limit(self.cpus));
    }

    fn park_inner(&mut self, goal: usize, goal_may_fall: bool) {
        // A nudge in the last two seconds means frees are under way that
        // the rate limit may have kept from reaching us: look again soon.
        if nudged_lately() && !goal_may_fall {
            self.nap(SLOT_NS);
            return;
        }
        if goal_may_fall {
            let until_tick = (self.last_tick + SLOT_NS).saturating_sub(os::monotonic_ns()).max(1_000_000);
            self.nap(until_tick);
            return;
        }
        // With a pressure source that is a descriptor, a tick at most in
        // `poll` on it, so that pressure is acted on at once. Frees cannot
        // wake that wait; what they ask waits for the tick, at most a
        // quarter second later (memory the control group cannot afford is
        // released by the freeing thread itself).
        if self.watcher.can_wait() {
            self.nap(SLOT_NS);
            return;
        }
        // A free or a nudge between our checks and the announcement saw us
        // awake and did not wake us: the parker looks once more, after the
        // announcement, before sleeping. While thread caches hold memory, a
        // second at most: one of them may go idle and be trimmed.
        // With a container limit or a pressure source to watch, a tick at
        // most: the headroom and pressure are looked at every tick.
        let within = if self.watcher.watching() {
            Some(SLOT_NS)
        } else {
            self.caches_hold.then_some(TRIM_LOOK_NS)
        };
        PARKER.park_unless_within(within, || {
            let goal = goal.min(goals::goal_for(scavenge::resident_in_use()));
            scavenge::retained() > goal.saturating_add(os::page_size())
                || nudged_lately()
                || PROFILE_DUMPS_PENDING.load(Ordering::SeqCst) != 0
        });
    }

    /// Sleeps for `ns` nanoseconds, or until the pressure source signals
    /// (then the next turn of the loop ticks at once).
    fn nap(&mut self, ns: u64) {
        let deadline = os::monotonic_ns().saturating_add(ns);
        self.watcher.wait(deadline, nap_until);
    }

    /// Prints one trace line, at the end of a cycle of work (when the
    /// thread parks) or once a second while it works, if tracing is on and
    /// any path released memory since the last line.
    fn trace_line(&mut self, now: u64) {
        let released = [
            released_by(Path::Background),
            released_by(Path::Eager),
            released_by(Path::Limit),
            released_by(Path::Forced),
            released_by(Path::Pressure),
        ];
        let deep_released = DEEP_RELEASED.load(Ordering::Relaxed);
        let news =
            released.iter().zip(&self.trace.released).any(|(a, b)| a != b) || deep_released != self.trace.deep_released;
        if !goals::trace_enabled() || !news {
            return;
        }
        let cpu = CPU_NS.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(self.trace.at).max(1) as f64;
        let util = (cpu - self.trace.cpu_ns) as f64 / (elapsed * self.cpus) * 100.0;
        let kib = |i: usize| (released[i] - self.trace.released[i]) >> 10;
        let total: usize = released.iter().sum();
        let deep_cpu = DEEP_CPU_NS.load(Ordering::Relaxed);
        let deep_spans = DEEP_SPANS.load(Ordering::Relaxed);
        let worked = (cpu - self.trace.cpu_ns).max(1) as f64;
        let mut line = LineBuf::<400>::new();
        let _ = write!(
            line,
            "scavalloc: scav {} KiB bg, {} KiB eager, {} KiB limit, {} KiB forced, {} KiB pressure, {} KiB in {} \
             spans (deep); {} KiB released in all; retained {} KiB, goal {} KiB, window {:.2} s; util {:.2}% \
             ({:.0}% deep); ratio {:.4}{}{}",
            kib(0),
            kib(1),
            kib(2),
            kib(3),
            kib(4),
            (deep_released - self.trace.deep_released) >> 10,
            deep_spans - self.trace.deep_spans,
            (total + deep_released) >> 10,
            scavenge::retained() >> 10,
            goals::retained_goal() >> 10,
            window::current_ns() as f64 / 1e9,
            util,
            (deep_cpu - self.trace.deep_cpu_ns) as f64 / worked * 100.0,
            self.ratio,
            if self.controller_reset { " [controller reset]" } else { "" },
            if self.in_emergency { " [pressure]" } else { "" }
        );
        line.emit_line();
        self.controller_reset = false;
        self.trace = Trace { at: now, cpu_ns: cpu, released, deep_cpu_ns: deep_cpu, deep_released, deep_spans };
    }
}
