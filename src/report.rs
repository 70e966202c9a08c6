//! Messages to standard error, formatted without allocating.
//!
//! The allocator cannot use `eprintln!` (its lock and buffer may allocate,
//! and a report may be needed while the allocator itself is broken). Lines
//! are formatted with `core::fmt` into a buffer on the stack and written with
//! one `write(2)`, so concurrent reports do not interleave mid-line.

use core::fmt;

/// A fixed-capacity text buffer on the stack; what does not fit is dropped
/// and the line ends in `...`.
pub struct LineBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> LineBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        LineBuf { buf: [0; N], len: 0, truncated: false }
    }

    /// The text written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The text written so far, as a string.
    pub fn as_str(&self) -> &str {
        // Only whole `&str` pieces or their char-boundary prefixes are
        // copied in (see `write_str`), so the buffer is valid UTF-8.
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// Ends the text with a newline (marking truncation if any) and writes
    /// it to standard error in one call.
    pub fn emit_line(&mut self) {
        if self.truncated {
            let keep = self.len.min(N.saturating_sub(4));
            self.len = keep;
            for &b in b"..." {
                if self.len < N {
                    self.buf[self.len] = b;
                    self.len += 1;
                }
            }
        }
        if self.len < N {
            self.buf[self.len] = b'\n';
            self.len += 1;
        } else if N > 0 {
            self.buf[N - 1] = b'\n';
        }
        crate::os::write_stderr(self.as_bytes());
    }
}

impl<const N: usize> Default for LineBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for LineBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            self.truncated = true;
        }
        // Never fail: a report must go out even when cut short.
        Ok(())
    }
}

/// Reports a memory-corruption fault (a double free, a pointer scavalloc
/// never handed out, inconsistent metadata) in one line and aborts.
///
/// Nothing is unwound: the allocator's state is no longer trusted, and a
/// panic inside `GlobalAlloc` would abort anyway, with a less useful message.
#[cold]
#[inline(never)]
pub fn fatal(args: fmt::Arguments<'_>) -> ! {
    note(format_args!("fatal: {args}"));
    crate::os::abort()
}

/// Prints one warning line (for example a bad environment variable) and
/// carries on.
#[cold]
pub fn warn(args: fmt::Arguments<'_>) {
    note(format_args!("warning: {args}"));
}

/// Writes `scavalloc: <args>` as one line to stderr: news the user asked
/// for (a profile written on a signal), and the body of [`warn`] and
/// [`fatal`].
pub fn note(args: fmt::Arguments<'_>) {
    let mut line = LineBuf::<512>::new();
    let _ = fmt::write(&mut line, format_args!("scavalloc: {args}"));
    line.emit_line();
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn formats_and_truncates() {
        let mut b = LineBuf::<16>::new();
        write!(b, "addr {:#x}", 0x1234usize).unwrap();
        assert_eq!(b.as_str(), "addr 0x1234");
        let mut small = LineBuf::<8>::new();
        write!(small, "0123456789").unwrap();
        assert_eq!(small.as_str(), "01234567");
        assert!(small.truncated);
        // Multi-byte characters are never split.
        let mut c = LineBuf::<3>::new();
        write!(c, "aé€").unwrap();
        assert_eq!(c.as_str(), "aé");
    }
}
