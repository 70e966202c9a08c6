//! Sampled heap profiles, written in pprof's format.
//!
//! Sampling is byte-based and Poisson, as in Go (`MemProfileRate`) and
//! jemalloc (`lg_prof_sample`): each thread counts down a number of bytes
//! drawn from an exponential distribution with mean `SCAVALLOC_PROF_RATE`
//! (512 KiB unless set, as Go and jemalloc sample; 0 turns it off); every
//! allocation path subtracts its request from the count ([`due`]: a
//! thread-local subtraction and a branch), and the allocation that takes
//! it below zero is sampled: its call stack is walked ([`stack`]), counted
//! in the profile's table ([`table`]) under its stack and size class, and
//! the object is placed where a free will notice it (a slot of its own for
//! a small object, `crate::spans::sampled`; a tag in the record of a large
//! one). Nothing a program sees changes: sizes, alignment, usable sizes and
//! contents are those of an unsampled object of the same request.
//!
//! [`write_pprof`] writes the table as a gzip-compressed `profile.proto`
//! with Go's four sample types (`alloc_objects`, `alloc_space`,
//! `inuse_objects`, `inuse_space`) and the process's executable mappings,
//! which the usual tools (`go tool pprof`, the pprof web UI, Parca,
//! Pyroscope, speedscope) symbolize themselves. `SCAVALLOC_PROF_DUMP=path`
//! writes one at exit.
//!
//! This module belongs to the API layer: it takes objects from the span
//! layer and records them in its table, which the span layer tells of
//! frees.

use core::cell::Cell;

use crate::spans::{self, sizeclass};
use crate::{config, report};

pub(crate) mod maps;
pub(crate) mod pprof;
pub(crate) mod stack;
#[cfg(feature = "symbolize")]
pub(crate) mod symbolize;
pub(crate) mod table;

/// The sampling interval `SCAVALLOC_PROF_RATE` takes when set to `on`:
/// 512 KiB, as Go and jemalloc.
pub(crate) const STANDARD_RATE: usize = 512 << 10;
/// The default bound on the table's entries.
pub(crate) const DEFAULT_MAX_STACKS: usize = 16384;

/// The profiler's settings (see `crate::config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `SCAVALLOC_PROF_RATE`: the mean bytes between samples; 0: off.
    pub rate: usize,
    /// `SCAVALLOC_PROF_MAX`: entries of the table.
    pub max_stacks: usize,
    /// `SCAVALLOC_PROF_SEED`: the sampling's random seed (0: a fresh one
    /// per thread).
    pub seed: u64,
    /// `SCAVALLOC_PROF_DUMP`: where to write a profile at exit.
    pub dump_path: Option<&'static [u8]>,
    /// `SCAVALLOC_PROF_SIGNAL`: a signal on which the scavenger thread
    /// writes a profile (0: none).
    pub signal: i32,
}

impl Settings {
    /// On at 512 KiB: on the comparison harness it costs 0.2% of the
    /// geometric mean (see the README); `SCAVALLOC_PROF_RATE=0` turns it
    /// off.
    pub(crate) const DEFAULT: Settings =
        Settings { rate: STANDARD_RATE, max_stacks: DEFAULT_MAX_STACKS, seed: 0, dump_path: None, signal: 0 };
}

thread_local! {
    /// The thread's random state (0: not seeded yet).
    static RANDOM: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` on the bytes this thread may still allocate before its next
/// sample. It starts at 0, so a thread's first allocation takes
/// [`sample`], which arms it (or sets it out of reach when profiling
/// is off). Kept in the span layer's per-thread block, beside the cache
/// pointer, so that an allocation looks up one thread-local, not two.
#[inline(always)]
fn bytes_left<R>(f: impl FnOnce(&Cell<isize>) -> R) -> R {
    spans::cache::with_sample_left(f)
}

/// Counts an allocation of `size` bytes; true when it is to be sampled
/// (or the thread's count is not armed yet): the caller then tries
/// [`sample`].
#[inline(always)]
fn due(size: usize) -> bool {
    bytes_left(|left| {
        let now = left.get().wrapping_sub(size as isize);
        left.set(now);
        now < 0
    })
}

/// Frames of the allocator's own that the stack walk always finds first:
/// the one in [`sample`] (never inlined). The entry point that
/// called it may be a function of its own (`__rust_alloc`, C's `malloc`)
/// or inlined into the program's: that is the compiler's choice, so those
/// frames are cut off by address when a profile is written
/// (`maps::Code::entry_frames`).
const SKIP_FRAMES: usize = 1;

/// Keys of large objects in the table: this plus the bit length of the
/// size (one entry per power of two per stack; small objects are keyed by
/// their class).
const LARGE_KEY: u32 = 1 << 16;

fn settings() -> &'static Settings {
    &config::get().profile
}

/// The next interval, drawn from an exponential distribution of mean
/// `rate` bytes (every allocation at rate 1).
fn next_interval(rate: usize) -> isize {
    if rate <= 1 {
        return 0;
    }
    let mut x = RANDOM.with(Cell::get);
    if x == 0 {
        x = match settings().seed {
            0 => fresh_seed(),
            seed => seed,
        } | 1;
    }
    // xorshift64*: 53 good bits for the uniform draw.
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    RANDOM.with(|r| r.set(x));
    let u = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
    // -ln(1 - u) with u in [0, 1): never infinite.
    let draw = -(-u).ln_1p() * rate as f64;
    draw.min(isize::MAX as f64 / 2.0) as isize
}

/// A seed that differs between threads and runs: the thread's stack
/// address and the clock.
fn fresh_seed() -> u64 {
    let marker = 0u8;
    let addr = core::ptr::addr_of!(marker) as u64;
    (addr.rotate_left(32) ^ crate::os::monotonic_ns()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Counts an allocation of `size` bytes ([`due`]) and, if it is the one
/// to be sampled, samples it: returns the object, or `None` when it is not
/// sampled (not due, the thread's count was only being armed, profiling is
/// off, or the table or the sampled objects' region is full), and the
/// caller allocates as usual. A null `Some` is out of memory. Every
/// allocation entry point calls this first.
#[inline(always)]
pub(crate) fn alloc_sampled(size: usize, align: usize, zeroed: bool) -> Option<*mut u8> {
    if due(size) {
        sample(size, align, zeroed, 0)
    } else {
        None
    }
}

/// Where `realloc` puts an object it moves (a `crate::spans::MovePlacer`):
/// the move is an allocation of `size` bytes, counted as one, and sampled
/// when due. A resize in place is not counted: sampling it would force the
/// copy that resizing in place avoids.
pub(crate) fn place_moved(size: usize, align: usize, room_pages: usize) -> Option<*mut u8> {
    if due(size) {
        sample(size, align, false, room_pages)
    } else {
        None
    }
}

/// Samples an allocation of `size` bytes, a large one with `room_pages`
/// of room after it; `None` when it is not sampled after all.
///
/// Never inlined: the stack walk skips this frame (see [`SKIP_FRAMES`]).
#[cold]
#[inline(never)]
fn sample(size: usize, align: usize, zeroed: bool, room_pages: usize) -> Option<*mut u8> {
    let s = settings();
    if s.rate == 0 {
        bytes_left(|left| left.set(isize::MAX));
        return None;
    }
    let first = RANDOM.with(Cell::get) == 0 && s.rate > 1;
    let next = next_interval(s.rate);
    if first {
        // Arming the count: this allocation is not a sample (the count it
        // would have crossed was never drawn).
        bytes_left(|left| left.set(next));
        return None;
    }
    // Sampling is paused while this runs (the C library may allocate to
    // tell the stack's bounds), and armed again at the end.
    bytes_left(|left| left.set(isize::MAX));
    crate::api::ensure_init();
    let object = record_and_alloc(size, align, zeroed, room_pages, s);
    bytes_left(|left| left.set(next));
    crate::scavenge::background::run_deferred();
    object
}

/// The body of [`sample`], whose frame the walk skips through the
/// `inline(always)`.
#[inline(always)]
fn record_and_alloc(size: usize, align: usize, zeroed: bool, room_pages: usize, s: &Settings) -> Option<*mut u8> {
    if !table::make(s.max_stacks, s.rate) {
        return None;
    }
    stack::learn_bounds();
    let mut frames = [0usize; table::MAX_FRAMES];
    let n = stack::capture(&mut frames, SKIP_FRAMES);
    let class = spans::class_for(size, align);
    let key = match class {
        Some(class) => class as u32,
        None => LARGE_KEY + (usize::BITS - size.leading_zeros()),
    };
    let tag = table::note_alloc(&frames[..n], key, size);
    if tag == 0 {
        return None;
    }
    let object = match class {
        Some(class) => spans::sampled::alloc(class, size, tag, zeroed).map(|p| p.as_ptr()),
        None => Some(spans::large::alloc_sampled(size, align, zeroed, room_pages, tag)),
    };
    if object.is_none_or(|p| p.is_null()) {
        // Not allocated here after all: the sample is taken back.
        table::cancel(tag, size);
        if object.is_none() {
            table::note_dropped();
        }
    }
    object
}

/// The profile's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileStats {
    /// The mean sampling interval in bytes (0: profiling off).
    pub rate: usize,
    /// Entries (stack and size) in the profile's table.
    pub stacks: usize,
    /// Samples lost because the table or the sampled objects' region was
    /// full.
    pub dropped: u64,
    /// Bytes of the table that may be resident.
    pub table_bytes: usize,
    /// Live sampled small objects (each in a slot of its own, outside the
    /// spans: not in `Stats::small_allocated`).
    pub sampled_objects: usize,
    /// Their bytes at their class sizes (part of `Stats::allocated()`).
    pub sampled_allocated: usize,
    /// Bytes of the sampled objects' slots, and of freed slots kept for
    /// reuse, that may be resident.
    pub sampled_bytes: usize,
}

/// The profile's figures now.
pub fn stats() -> ProfileStats {
    let (stacks, dropped) = table::usage();
    let (sampled_objects, sampled_allocated, sampled_bytes) = spans::sampled::resident();
    ProfileStats {
        rate: settings().rate,
        stacks,
        dropped,
        table_bytes: table::memory_bytes(),
        sampled_objects,
        sampled_allocated,
        sampled_bytes,
    }
}

/// Writes the heap profile as of now to `out`: a gzip-compressed pprof
/// `profile.proto` with the sample types `alloc_objects`, `alloc_space`,
/// `inuse_objects` and `inuse_space` (the default), and the process's
/// executable mappings, for `go tool pprof` and the like to symbolize.
/// Figures are scaled to estimate every allocation, not only the samples.
///
/// The calling thread's own allocations are not sampled while it writes.
pub fn write_pprof<W: std::io::Write>(out: &mut W) -> std::io::Result<()> {
    write(out, false)
}

/// [`write_pprof`], with every address named in the profile itself:
/// function (demangled), source file and line, inlined calls included,
/// read from the mapped files' debug info (or their symbol tables) in this
/// process, so that the profile can be read where the binary is not (the
/// `symbolize` feature). The profiles `SCAVALLOC_PROF_DUMP`,
/// `SCAVALLOC_PROF_SIGNAL` and `scavalloc_prof_dump` write are named too
/// when the feature is on.
#[cfg(feature = "symbolize")]
pub fn write_pprof_symbolized<W: std::io::Write>(out: &mut W) -> std::io::Result<()> {
    write(out, true)
}

/// Writes the profile, symbolized if asked (and built with the feature),
/// with the calling thread's sampling paused.
fn write<W: std::io::Write>(out: &mut W, symbolized: bool) -> std::io::Result<()> {
    let saved = bytes_left(|left| left.replace(isize::MAX));
    let bytes = encode_profile(symbolized);
    bytes_left(|left| left.set(saved));
    out.write_all(&bytes)
}

/// The profile as of now, gzip-compressed.
#[cfg_attr(not(feature = "symbolize"), allow(unused_variables))]
fn encode_profile(symbolized: bool) -> Vec<u8> {
    let mut rows = Vec::new();
    loop {
        let want = table::usage().0 + 64;
        rows.reserve(want);
        rows.clear();
        if table::snapshot(&mut rows) <= rows.len() {
            break;
        }
    }
    let code = maps::code();
    // The walk starts in the allocator; its entry points are cut off here,
    // by address, since how many frames they took is the compiler's choice.
    let frames: Vec<Vec<u64>> = rows
        .iter()
        .map(|r| {
            let frames: Vec<u64> = r.frames.iter().map(|&f| f as u64).collect();
            frames[code.entry_frames(&frames)..].to_vec()
        })
        .collect();
    let samples: Vec<pprof::Sample<'_>> = rows
        .iter()
        .zip(&frames)
        .map(|(row, frames)| {
            let c = row.counts;
            pprof::Sample {
                frames,
                values: [
                    c.alloc_objects.round() as i64,
                    c.alloc_bytes.round() as i64,
                    (c.alloc_objects - c.freed_objects).max(0.0).round() as i64,
                    (c.alloc_bytes - c.freed_bytes).max(0.0).round() as i64,
                ],
                object_size: (row.key < LARGE_KEY).then(|| sizeclass::class_size(row.key as usize) as i64),
            }
        })
        .collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let meta = pprof::Meta { time_nanos: now, duration_nanos: 0, period: settings().rate as i64 };
    #[cfg(feature = "symbolize")]
    if symbolized {
        let mut symbolizer = symbolize::Symbolizer::new(&code);
        let mut lines = |address| symbolizer.lines(address);
        return pprof::gzip(&pprof::encode(&meta, &code.mappings, &samples, Some(&mut lines)));
    }
    pprof::gzip(&pprof::encode(&meta, &code.mappings, &samples, None))
}

/// Writes a profile to the file at `path`; on failure, one warning line
/// naming the path and the error.
pub(crate) fn dump_to(path: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    // Named in the profile when built to (see `write_pprof_symbolized`).
    let result = std::fs::File::create(path).and_then(|mut f| write(&mut f, cfg!(feature = "symbolize")));
    if let Err(e) = &result {
        report::warn(format_args!("could not write the heap profile to {}: {e}", path.display()));
    }
    result.is_ok()
}

/// At exit: the profile `SCAVALLOC_PROF_DUMP` asks for.
pub(crate) fn dump_at_exit() {
    if let Some(path) = settings().dump_path {
        dump_to(path);
    }
}

/// The writer the background thread runs on `SCAVALLOC_PROF_SIGNAL`.
pub(crate) static SIGNAL_DUMP: crate::scavenge::ProfileDump = crate::scavenge::ProfileDump { write: dump_on_signal };

/// Profiles written on the signal so far.
static SIGNAL_DUMPS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// On the background thread, after `SCAVALLOC_PROF_SIGNAL`: writes
/// `<SCAVALLOC_PROF_DUMP, or scavalloc-heap>.<pid>.<n>.pb.gz` and says so
/// on stderr in one line.
fn dump_on_signal() {
    let n = SIGNAL_DUMPS.fetch_add(1, core::sync::atomic::Ordering::Relaxed) + 1;
    let mut path = settings().dump_path.unwrap_or(b"scavalloc-heap").to_vec();
    path.extend_from_slice(format!(".{}.{n}.pb.gz", std::process::id()).as_bytes());
    if dump_to(&path) {
        report::note(format_args!("heap profile written to {}", String::from_utf8_lossy(&path)));
    }
}

/// With `SCAVALLOC_PROF_SIGNAL` set: installs its handler, which only asks
/// the background thread for a profile (writing one in the handler could
/// deadlock on any lock the interrupted code holds), and makes sure that
/// thread runs. Called once, from the first slow path.
pub(crate) fn install_signal() {
    let s = settings();
    if s.signal == 0 || s.rate == 0 {
        return;
    }
    if !crate::scavenge::goals::background_enabled() {
        report::warn(format_args!(
            "SCAVALLOC_PROF_SIGNAL={} needs the background thread, which SCAVALLOC_BACKGROUND=0 turned off; no profile will be written on it",
            s.signal
        ));
        return;
    }
    crate::scavenge::set_profile_dump(&SIGNAL_DUMP);
    // SAFETY: a zeroed `sigaction` is valid; the handler is an `extern "C"
    // fn(c_int)` that only does async-signal-safe things (an atomic add and
    // a futex wake).
    let ok = unsafe {
        let mut action: libc::sigaction = core::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(s.signal, &action, core::ptr::null_mut()) == 0
    };
    if !ok {
        report::warn(format_args!("SCAVALLOC_PROF_SIGNAL={}: the signal cannot be caught", s.signal));
        return;
    }
    crate::scavenge::background::start_for_profiles();
}

extern "C" fn on_signal(_: libc::c_int) {
    crate::scavenge::background::request_profile_dump();
}

/// Takes the profile's locks before `fork()`.
pub(crate) fn lock_for_fork() {
    table::lock_for_fork();
}

/// Releases the locks of [`lock_for_fork`].
pub(crate) fn unlock_after_fork() {
    table::unlock_after_fork();
}
