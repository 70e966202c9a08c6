//! Call stacks of sampled allocations, by walking frame pointers.
//!
//! An allocator cannot use the usual unwinders: DWARF unwinding
//! (`_Unwind_Backtrace`, libunwind, the `backtrace` crate) finds the unwind
//! tables through `dl_iterate_phdr`, which takes the dynamic loader's lock
//! (a thread inside `dlopen` may hold it while it allocates) and may
//! allocate itself. A frame-pointer walk takes no lock, makes no call and
//! allocates nothing: each frame's frame pointer points at the caller's
//! saved frame pointer, with the return address beside it (x86_64: `rbp`,
//! return address at `rbp + 8`; aarch64: `x29`, link register at
//! `x29 + 8`).
//!
//! It needs every frame on the path to keep a frame pointer. Rust's
//! standard library is built with them; other code keeps them only when
//! built with `-C force-frame-pointers=yes` (`RUSTFLAGS`), or
//! `-fno-omit-frame-pointer` for C. A function built without them uses the
//! register for other things, so the walk may read a value that is no
//! frame: every step is checked (the next frame is above the last, by less
//! than [`MAX_FRAME_BYTES`], aligned, and inside the thread's stack), and
//! the walk stops at the first that fails, so a profile of code without
//! frame pointers has short stacks, never a crash.
//!
//! The thread's stack bounds come from `pthread_getattr_np`, asked once per
//! thread on its first sample (with sampling paused on the thread: glibc
//! may allocate in it). A walk that starts outside those bounds (a signal
//! handler on an alternate stack, a coroutine's own stack) records no
//! frames.

use core::cell::Cell;

/// The most a frame may span; a longer step ends the walk.
const MAX_FRAME_BYTES: usize = 1 << 20;

thread_local! {
    /// The calling thread's stack, `(low, high)`; `(0, 0)` until asked,
    /// `(1, 1)` if it could not be found.
    static BOUNDS: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// The frame pointer of the caller's frame.
#[inline(always)]
fn frame_pointer() -> usize {
    let fp: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads a register; no memory is touched.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads a register; no memory is touched.
    unsafe {
        core::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        fp = 0;
    }
    fp
}

/// The current stack pointer, near enough (an address in this frame).
#[inline(always)]
fn stack_pointer() -> usize {
    let marker = 0u8;
    core::ptr::addr_of!(marker) as usize
}

/// The calling thread's stack bounds, asked of the C library once.
fn bounds() -> (usize, usize) {
    let known = BOUNDS.with(Cell::get);
    if known != (0, 0) {
        return known;
    }
    let found = thread_stack().unwrap_or((1, 1));
    BOUNDS.with(|b| b.set(found));
    found
}

fn thread_stack() -> Option<(usize, usize)> {
    // SAFETY: `attr` is initialised by `pthread_getattr_np` before it is
    // read and destroyed after; the out-pointers are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = core::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let r = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (r == 0 && !addr.is_null()).then(|| (addr as usize, addr as usize + size))
    }
}

/// Finds the calling thread's stack bounds now, if not yet known: the
/// profiler asks before the first walk with sampling paused, since the C
/// library may allocate to answer.
pub(crate) fn learn_bounds() {
    bounds();
}

/// Writes the return addresses of the calling thread's stack into `out`,
/// innermost first, skipping the first `skip` (the allocator's own frames:
/// this function's caller and up), each minus one so that it points into
/// the call instruction (what symbolizers want of a return address).
/// Returns how many it wrote.
#[inline(never)]
pub(crate) fn capture(out: &mut [usize], skip: usize) -> usize {
    let (low, high) = bounds();
    let sp = stack_pointer();
    if !(low..high).contains(&sp) {
        return 0;
    }
    // This function's own frame (it is never inlined, so with frame
    // pointers on it has one).
    let mut fp = frame_pointer();
    let mut n = 0;
    let mut skipped = 0;
    let mut last = sp;
    while n < out.len() {
        if fp < last || fp - last > MAX_FRAME_BYTES || !fp.is_multiple_of(core::mem::align_of::<usize>()) || fp + 16 > high {
            break;
        }
        // SAFETY: `fp` and `fp + 8` lie in this thread's stack between the
        // current stack pointer and its top: mapped, readable memory that
        // holds this thread's frames (checked just above).
        let (next, ret) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
        if ret == 0 {
            break;
        }
        if skipped < skip {
            skipped += 1;
        } else {
            out[n] = ret - 1;
            n += 1;
        }
        if next <= fp {
            break;
        }
        last = fp;
        fp = next;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn leaf(out: &mut [usize]) -> usize {
        let n = capture(out, 0);
        core::hint::black_box(n)
    }

    #[inline(never)]
    fn middle(out: &mut [usize]) -> usize {
        let n = leaf(out);
        core::hint::black_box(n)
    }

    /// With frame pointers on (the test profile forces them, see
    /// `.cargo/config.toml`), the walk finds this test's nested calls:
    /// the first frames lie in `leaf` and `middle`, in that order.
    #[test]
    fn walk_finds_the_callers() {
        let mut out = [0usize; 64];
        let n = middle(&mut out);
        if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert_eq!(n, 0);
            return;
        }
        assert!(n >= 3, "only {n} frames");
        let leaf_at = leaf as *const () as usize;
        let middle_at = middle as *const () as usize;
        // A return address lies after its function's start, and within a
        // few KiB of it for these small functions.
        let within = |addr: usize, f: usize| addr > f && addr - f < 4096;
        assert!(within(out[0], leaf_at), "frame 0 {:#x} not in leaf {:#x}", out[0], leaf_at);
        assert!(within(out[1], middle_at), "frame 1 {:#x} not in middle {:#x}", out[1], middle_at);
    }

    #[test]
    fn walk_skips_and_stays_in_bounds() {
        let mut all = [0usize; 64];
        let n = middle(&mut all);
        // From this function directly, skipping this function's own frame
        // and its caller's: what is left is what `all` has past `leaf`,
        // `middle`, this function and its caller.
        let mut fewer = [0usize; 64];
        let m = capture(&mut fewer, 2);
        assert!(n > 4, "only {n} frames");
        assert_eq!(fewer[..m], all[4..n]);
        let (low, high) = bounds();
        assert!(low < high);
        let mut tiny = [0usize; 2];
        assert_eq!(middle(&mut tiny), 2);
    }
}
