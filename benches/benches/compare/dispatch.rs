//! The comparison binary's global allocator: it forwards every call to one
//! of four allocators, chosen once, at the first allocation, from
//! `SCAVALLOC_BENCH_ALLOC` (`system`, `scavalloc`, `scavalloc-nodeep`,
//! `jemalloc`, `mimalloc`, and `scavalloc-prof` when named; unset means
//! `system`, which is what the driver process runs on). `scavalloc-nodeep`
//! is scavalloc itself, run by the driver with `SCAVALLOC_DEEP_RELEASE=0`,
//! to show what deep release costs and gives; `scavalloc-prof` is
//! scavalloc with heap profiling at its standard rate
//! (`SCAVALLOC_PROF_RATE=on`), to measure what profiling costs.
//!
//! A global allocator is fixed for the life of a process, and a pointer
//! must go back to the allocator that made it, so the choice is made before
//! anything is allocated and never changes; the driver runs one child
//! process per allocator. The variable is read with libc's `getenv`, which
//! does not allocate. The cost of the dispatch (a relaxed load and a
//! well-predicted branch per call) is the same for all four.
//!
//! Allocation calls (`alloc`, `alloc_zeroed`, `realloc`) are counted, so
//! that the lock figures of a scavalloc child can be given per million
//! allocations. A count costs a thread-local load and a plain store into a
//! counter that one thread owns at a time (`Slot`), never an atomic
//! read-modify-write, and the same for every allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Once;

use mimalloc::MiMalloc;
use scavalloc::Scavalloc;
use tikv_jemallocator::Jemalloc;

/// The allocators compared, in the order the reports list them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    System = 1,
    Scavalloc = 2,
    Jemalloc = 3,
    Mimalloc = 4,
    ScavallocNoDeep = 5,
    ScavallocProf = 6,
}

/// The allocators a comparison runs unless told otherwise.
pub const ALL: [Backend; 5] =
    [Backend::System, Backend::Scavalloc, Backend::ScavallocNoDeep, Backend::Jemalloc, Backend::Mimalloc];

/// Also run when named (`--alloc`).
pub const OPT_IN: [Backend; 1] = [Backend::ScavallocProf];

/// The environment variable that picks a child's allocator.
pub const VAR: &str = "SCAVALLOC_BENCH_ALLOC";

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::System => "system",
            Backend::Scavalloc => "scavalloc",
            Backend::Jemalloc => "jemalloc",
            Backend::Mimalloc => "mimalloc",
            Backend::ScavallocNoDeep => "scavalloc-nodeep",
            Backend::ScavallocProf => "scavalloc-prof",
        }
    }

    /// Environment the driver sets for this backend's children.
    pub fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Backend::ScavallocNoDeep => &[("SCAVALLOC_DEEP_RELEASE", "0")],
            Backend::ScavallocProf => &[("SCAVALLOC_PROF_RATE", "on")],
            _ => &[],
        }
    }

    /// Whether the allocator is scavalloc (with or without deep release or
    /// profiling).
    pub fn is_scavalloc(self) -> bool {
        matches!(self, Backend::Scavalloc | Backend::ScavallocNoDeep | Backend::ScavallocProf)
    }

    pub fn from_name(name: &[u8]) -> Option<Backend> {
        ALL.into_iter().chain(OPT_IN).find(|b| b.name().as_bytes() == name)
    }

    /// The allocator this process runs on.
    pub fn current() -> Backend {
        match chosen() {
            2 => Backend::Scavalloc,
            3 => Backend::Jemalloc,
            4 => Backend::Mimalloc,
            5 => Backend::ScavallocNoDeep,
            6 => Backend::ScavallocProf,
            _ => Backend::System,
        }
    }
}

const UNDECIDED: u8 = 0;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// Reads the variable without allocating. An unknown name stops the
/// process: running a comparison on the wrong allocator would be worse.
fn read_choice() -> u8 {
    // SAFETY: a NUL-terminated name; `getenv` returns null or a
    // NUL-terminated string that stays valid while nobody sets the
    // environment (nobody does before the first allocation).
    let value = unsafe {
        let p = libc::getenv(c"SCAVALLOC_BENCH_ALLOC".as_ptr());
        if p.is_null() {
            return Backend::System as u8;
        }
        std::ffi::CStr::from_ptr(p).to_bytes()
    };
    match Backend::from_name(value) {
        Some(b) => b as u8,
        None => {
            let msg =
                b"compare: SCAVALLOC_BENCH_ALLOC must be system, scavalloc, scavalloc-nodeep, scavalloc-prof, jemalloc or mimalloc\n";
            // SAFETY: writes `msg` to stderr, then ends the process.
            unsafe {
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(2)
            }
        }
    }
}

#[inline(always)]
fn chosen() -> u8 {
    let c = CHOICE.load(Ordering::Relaxed);
    if c != UNDECIDED {
        return c;
    }
    let c = read_choice();
    // Threads racing here all read the same variable and store the same
    // value.
    CHOICE.store(c, Ordering::Relaxed);
    c
}

/// Forwards to the allocator chosen at the first call.
pub struct Dispatch;

/// Calls `$method` on the chosen allocator.
macro_rules! forward {
    ($method:ident($($arg:expr),*)) => {
        match chosen() {
            2 | 5 | 6 => Scavalloc.$method($($arg),*),
            3 => Jemalloc.$method($($arg),*),
            4 => MiMalloc.$method($($arg),*),
            _ => System.$method($($arg),*),
        }
    };
}

// SAFETY: every call goes to one of four sound allocators, always the same
// one (the choice is made once and never changes), so every pointer is
// freed or resized by the allocator that made it.
unsafe impl GlobalAlloc for Dispatch {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: the caller's contract, forwarded unchanged.
        unsafe { forward!(alloc(layout)) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract; `ptr` came from the same allocator.
        unsafe { forward!(dealloc(ptr, layout)) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: the caller's contract, forwarded unchanged.
        unsafe { forward!(alloc_zeroed(layout)) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: the caller's contract; `ptr` came from the same allocator.
        unsafe { forward!(realloc(ptr, layout, new_size)) }
    }
}

// ---------------------------------------------------------------------------
// Counting allocations.
//
// Each thread counts into a `Slot` of a fixed table, claimed at its first
// allocation and given up when it exits (a pthread key's destructor; std's
// thread-local destructors cannot be used here, as registering one
// allocates). A slot's counter only ever grows: the next thread to claim
// it counts on from where the last one stopped, so the sum over all slots
// is every allocation made so far, with no figure to move at thread exit
// and no moment at which a count is in neither place. Only a slot's owner
// writes its counter, so a load and a store suffice; a reader that joined
// the threads sees their last stores.

/// One thread's counter, on a cache line of its own (the owner writes it at
/// every allocation; neighbours must not share the line).
#[repr(align(128))]
struct Slot {
    count: AtomicU64,
    owned: AtomicBool,
}

/// More than the workloads ever run at once (32 threads, with a Larson
/// lane's successor starting before its predecessor exits, plus the
/// harness's own); threads beyond it count into `SHARED`.
const SLOTS: usize = 256;

static TABLE: [Slot; SLOTS] = [const { Slot { count: AtomicU64::new(0), owned: AtomicBool::new(false) } }; SLOTS];

/// The counter of threads that found no free slot, or allocate after their
/// slot was given up: the only one counted with a read-modify-write.
static SHARED: AtomicU64 = AtomicU64::new(0);

/// Where the last claim found a slot, so that claims do not all scan from
/// the start.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The pthread key whose destructor gives a thread's slot up.
static KEY: AtomicUsize = AtomicUsize::new(0);
static KEY_ONCE: Once = Once::new();

/// This thread's state: no slot yet, a slot, or counting into `SHARED`.
#[derive(Clone, Copy)]
enum Mine {
    Unclaimed,
    Slot(&'static Slot),
    Shared,
}

thread_local! {
    // Const-initialised and without a destructor: no allocation, and still
    // readable from the pthread key destructor at thread exit.
    static MINE: Cell<Mine> = const { Cell::new(Mine::Unclaimed) };
}

#[inline(always)]
fn count_allocation() {
    MINE.with(|m| match m.get() {
        Mine::Slot(slot) => slot.count.store(slot.count.load(Ordering::Relaxed) + 1, Ordering::Relaxed),
        Mine::Shared => {
            SHARED.fetch_add(1, Ordering::Relaxed);
        }
        Mine::Unclaimed => claim(m),
    });
}

/// The first allocation of a thread: claims a free slot (and arms the
/// destructor that gives it up), counting this allocation in it.
#[cold]
fn claim(mine: &Cell<Mine>) {
    let start = NEXT.load(Ordering::Relaxed);
    let free = (0..SLOTS)
        .map(|k| (start + k) % SLOTS)
        .find(|&i| TABLE[i].owned.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok());
    let Some(index) = free else {
        mine.set(Mine::Shared);
        SHARED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    NEXT.store((index + 1) % SLOTS, Ordering::Relaxed);
    let slot = &TABLE[index];
    KEY_ONCE.call_once(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is written by the call; `release_slot` has the
        // destructor's signature.
        if unsafe { libc::pthread_key_create(&mut key, Some(release_slot)) } == 0 {
            KEY.store(key as usize + 1, Ordering::Relaxed);
        }
    });
    // Stored plus one: 0 means that no key could be made. Without a key
    // (or if setting it fails) the slot is never given up: the counts stay
    // right, the slot is lost to later threads.
    let key = KEY.load(Ordering::Relaxed);
    if key != 0 {
        // SAFETY: a key this process created; the value is a non-null
        // pointer to a static, which the destructor reads.
        unsafe { libc::pthread_setspecific((key - 1) as libc::pthread_key_t, (slot as *const Slot).cast()) };
    }
    slot.count.store(slot.count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    mine.set(Mine::Slot(slot));
}

/// At thread exit: the thread's last count is in its slot; later
/// allocations of the thread (other destructors) count into `SHARED`.
extern "C" fn release_slot(slot: *mut libc::c_void) {
    MINE.with(|m| m.set(Mine::Shared));
    // SAFETY: the value set in `claim`, a pointer to a slot of `TABLE`.
    let slot = unsafe { &*(slot as *const Slot) };
    // Release: the next owner's first load sees this thread's last store.
    slot.owned.store(false, Ordering::Release);
}

/// Allocation calls made so far by every thread of the process. Exact for
/// threads that have been joined (or whose completion this thread waited
/// for); running threads' latest counts may not be seen yet.
pub fn allocations() -> u64 {
    TABLE.iter().map(|s| s.count.load(Ordering::Relaxed)).sum::<u64>() + SHARED.load(Ordering::Relaxed)
}
