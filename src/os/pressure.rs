//! Memory pressure: the kernel's pressure-stall information (the cgroup's
//! own `memory.pressure`, else `/proc/pressure/memory`) and systemd's
//! `MEMORY_PRESSURE_WATCH` protocol, read without allocating.
//!
//! Three sources, all read from the scavenger thread only (no locks; every
//! type is `Send`):
//!
//! * **The stall counter** ([`stall_total_us`]): the `some` line's `total=`
//!   of a PSI file, the microseconds during which at least one task waited
//!   for memory, cumulative and current on every read. Works wherever PSI
//!   exists and the file is readable; costs an `open`, a `read` and a
//!   `close` per reading.
//! * **A PSI trigger** ([`PsiTrigger`]): the kernel wakes a descriptor with
//!   `POLLPRI` when the stall in a window passes a threshold. Checking it is
//!   one `poll` with no wait. The kernel accepts unprivileged triggers only
//!   with windows that are multiples of 2 s (Linux 6.4 and later); before
//!   that writing one needs `CAP_SYS_RESOURCE`, and the caller falls back
//!   to reading the counter every tick.
//! * **systemd's protocol** ([`PressureWatch`]): the service manager names
//!   a path in `MEMORY_PRESSURE_WATCH` (a PSI file, a FIFO or an `AF_UNIX`
//!   socket) and, base64-encoded in `MEMORY_PRESSURE_WRITE`, the bytes to
//!   write to it first (for a PSI file, the trigger to arm).
//!
//! Every descriptor is close-on-exec and closed when its owner is dropped.
//! After `fork` the child shares the parent's open files: a trigger's event
//! goes to whichever process polls first, FIFO bytes to whichever reads
//! first, and the socket is one connection. A child must drop what it
//! inherited (closing its copy leaves the parent's intact) and open its own.
#![allow(dead_code)]

use core::ffi::CStr;

use super::{read_file_into, OsError};

/// The stall, in microseconds per [`TRIGGER_WINDOW_US`], that arms the
/// default trigger: 7.5% of the window spent with some task waiting for
/// memory. systemd's default is 200 ms in 2 s; an allocator holding free
/// pages can give them back for far less than a stall costs, so it reacts a
/// little earlier.
pub const TRIGGER_STALL_US: u64 = 150_000;

/// The default trigger window: 2 s, the shortest window the kernel lets an
/// unprivileged process use (it must be a multiple of 2 s since Linux 6.4).
pub const TRIGGER_WINDOW_US: u64 = 2_000_000;

/// The longest `MEMORY_PRESSURE_WRITE` accepted, decoded. A PSI trigger
/// line is about 25 bytes and the kernel reads at most 128.
const MAX_WRITE: usize = 256;

/// What a check of a pressure source found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Nothing since the last check.
    Quiet,
    /// Pressure was signalled since the last check.
    Pressure,
    /// The source is gone for good (its cgroup was removed, the socket's
    /// peer closed): drop it and fall back to reading the stall counter.
    Gone,
}

/// Reads a PSI file (`/proc/pressure/memory` or a cgroup's
/// `memory.pressure`) and returns its `some` line's `total=`: microseconds
/// of stall since boot (or since the cgroup was made). `None` if the file
/// cannot be read (no PSI in this kernel, `psi=0`, no such cgroup) or does
/// not parse.
pub fn stall_total_us(path: &CStr) -> Option<u64> {
    // Two lines of at most about 80 bytes each; `some` comes first, so even
    // a cut-short read would hold it whole.
    let mut buf = [0u8; 256];
    let n = read_file_into(path, &mut buf)?;
    parse_some_total(&buf[..n])
}

/// Parses PSI text (`some avg10=0.00 avg60=0.00 avg300=0.00 total=123\n`
/// then a `full` line) and returns the `some` line's `total=`.
pub fn parse_some_total(text: &[u8]) -> Option<u64> {
    let line = text.split(|&b| b == b'\n').find(|l| l.starts_with(b"some "))?;
    let value = line.split(|&b| b == b' ').find_map(|field| field.strip_prefix(b"total="))?;
    parse_u64(value)
}

/// Parses a whole field of ASCII digits (surrounding white space allowed).
fn parse_u64(bytes: &[u8]) -> Option<u64> {
    let text = bytes.trim_ascii();
    if text.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// Decodes standard base64 (RFC 4648 alphabet) into `out`, returning the
/// length decoded. White space is skipped and the `=` padding may be left
/// out (systemd accepts both); `None` for a byte outside the alphabet, data
/// after padding, a length no encoding produces, or an `out` too small.
pub fn decode_base64(text: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut symbols = 0usize;
    let mut pads = 0usize;
    let mut len = 0usize;
    for &c in text {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            pads += 1;
            continue;
        }
        if pads > 0 {
            return None;
        }
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        symbols += 1;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(len)? = (acc >> bits) as u8;
            len += 1;
            acc &= (1 << bits) - 1;
        }
    }
    // A last group of 2 or 3 symbols stands for 1 or 2 bytes and takes 2
    // or 1 padding characters when padded; 1 symbol alone is no encoding.
    let padding_fits = match symbols % 4 {
        0 => pads == 0,
        2 => pads == 0 || pads == 2,
        3 => pads == 0 || pads == 1,
        _ => false,
    };
    padding_fits.then_some(len)
}

/// An owned descriptor, closed on drop.
#[derive(Debug)]
struct Fd(i32);

impl Fd {
    /// Waits for nothing: the `revents` of one `poll` with timeout 0, or 0
    /// if the call failed (`EINTR`, `ENOMEM`: the next check retries).
    fn poll_now(&self, events: libc::c_short) -> libc::c_short {
        let mut pfd = libc::pollfd { fd: self.0, events, revents: 0 };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, 0) };
        if r > 0 {
            pfd.revents
        } else {
            0
        }
    }

    /// Reads and discards what is queued, a bounded amount per call (the
    /// rest, if any, signals again next time). Returns whether any bytes
    /// came and whether the peer closed its end.
    fn drain(&self) -> (bool, bool) {
        let mut buf = [0u8; 4096];
        let mut got = false;
        // 64 reads of 4 KiB are four times a default pipe's capacity.
        for _ in 0..64 {
            // SAFETY: `buf` is a writable buffer of the length passed.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                got = true;
            } else if n == 0 {
                return (got, true);
            } else if OsError::last().errno == libc::EINTR {
                continue;
            } else {
                // EAGAIN: nothing left.
                break;
            }
        }
        (got, false)
    }

    /// Writes all of `bytes` in one call, as the receivers of this protocol
    /// expect (a PSI file parses each write alone). `send` with
    /// `MSG_NOSIGNAL` on a socket, so a vanished peer is an error rather
    /// than `SIGPIPE`.
    fn write_once(&self, bytes: &[u8], socket: bool) -> Result<(), OsError> {
        let n = loop {
            // SAFETY: `bytes` is a readable buffer of the length passed.
            let n = unsafe {
                if socket {
                    libc::send(self.0, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL)
                } else {
                    libc::write(self.0, bytes.as_ptr().cast(), bytes.len())
                }
            };
            if n < 0 && OsError::last().errno == libc::EINTR {
                continue;
            }
            break n;
        };
        if n < 0 {
            return Err(OsError::last());
        }
        if n as usize != bytes.len() {
            return Err(OsError { errno: libc::EAGAIN });
        }
        Ok(())
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// A PSI trigger: a PSI file opened for reading and writing, armed with a
/// `some <stall> <window>` line, whose descriptor the kernel wakes with
/// `POLLPRI` when tasks stalled on memory for `stall` microseconds within
/// a `window`. The kernel signals at most once per window.
#[derive(Debug)]
pub struct PsiTrigger {
    fd: Fd,
}

impl PsiTrigger {
    /// Arms a trigger on the PSI file `path` (see [`TRIGGER_STALL_US`] and
    /// [`TRIGGER_WINDOW_US`] for the defaults to pass).
    ///
    /// Errors: `ENOENT` without PSI; `EACCES` if the file is not writable
    /// to us; `EPERM` for an unprivileged process on a kernel that allows
    /// no unprivileged triggers or with a window that is not a multiple of
    /// 2 s; `EINVAL` for a window outside 500 ms to 10 s or a stall longer
    /// than it; `EOPNOTSUPP` where the kernel has PSI but no triggers;
    /// `ENOTTY` if `path` is a regular file on neither procfs nor cgroupfs
    /// (it is not written to: it would be an ordinary file's contents).
    pub fn open(path: &CStr, stall_us: u64, window_us: u64) -> Result<PsiTrigger, OsError> {
        // At most 5 + 20 + 1 + 20 bytes.
        let mut line = [0u8; 64];
        let mut len = 0;
        for (i, part) in [stall_us, window_us].into_iter().enumerate() {
            let prefix: &[u8] = if i == 0 { b"some " } else { b" " };
            line[len..len + prefix.len()].copy_from_slice(prefix);
            len += prefix.len();
            len += write_decimal(&mut line[len..], part);
        }
        Self::open_with(path, &line[..len])
    }

    /// Arms a trigger with the given line. A NUL is appended when `line`
    /// lacks one: the kernel overwrites the last byte of each write with
    /// its terminator, so without it the line would lose its last digit.
    fn open_with(path: &CStr, line: &[u8]) -> Result<PsiTrigger, OsError> {
        if line.is_empty() || line.len() > MAX_WRITE {
            return Err(OsError { errno: libc::EINVAL });
        }
        // SAFETY: `path` is NUL-terminated; the flags open no new file.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(OsError::last());
        }
        let fd = Fd(raw);
        if !on_psi_filesystem(&fd)? {
            return Err(OsError { errno: libc::ENOTTY });
        }
        let mut buf = [0u8; MAX_WRITE + 1];
        buf[..line.len()].copy_from_slice(line);
        let len = if line.last() == Some(&0) { line.len() } else { line.len() + 1 };
        fd.write_once(&buf[..len], false)?;
        Ok(PsiTrigger { fd })
    }

    /// Whether the trigger fired since the last check (polling consumes
    /// the event). [`Signal::Gone`] when the kernel reports an error on the
    /// descriptor: the cgroup the file belonged to was removed.
    pub fn check(&self) -> Signal {
        let revents = self.fd.poll_now(libc::POLLPRI);
        if revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            Signal::Gone
        } else if revents & libc::POLLPRI != 0 {
            Signal::Pressure
        } else {
            Signal::Quiet
        }
    }

    /// The descriptor held (for diagnostics and tests).
    pub fn raw_fd(&self) -> i32 {
        self.fd.0
    }
}

/// Whether `fd` is on procfs or cgroup2fs, where PSI files live.
fn on_psi_filesystem(fd: &Fd) -> Result<bool, OsError> {
    // SAFETY: a zeroed statfs is a valid out-buffer; the call fills it in.
    let mut sfs: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: `fd` is open and `sfs` is a valid out-pointer.
    if unsafe { libc::fstatfs(fd.0, &mut sfs) } != 0 {
        return Err(OsError::last());
    }
    let kind = sfs.f_type as i64;
    Ok(kind == libc::PROC_SUPER_MAGIC as i64 || kind == libc::CGROUP2_SUPER_MAGIC as i64)
}

/// Writes `n` in decimal at the start of `out` (at least 20 bytes) and
/// returns the digits written.
fn write_decimal(out: &mut [u8], mut n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    out[..len].copy_from_slice(&digits[i..]);
    len
}

/// What `MEMORY_PRESSURE_WATCH` asks for.
#[derive(Debug)]
pub enum WatchSetting {
    /// The variable is not set: no service manager speaks the protocol.
    Unset,
    /// Set to `/dev/null` or empty: the service manager turned memory
    /// pressure handling off for this service.
    Off,
    /// A source to watch.
    Watch(PressureWatch),
}

/// A pressure source named through systemd's protocol
/// (<https://systemd.io/MEMORY_PRESSURE/>).
#[derive(Debug)]
pub struct PressureWatch {
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// A PSI file armed with a trigger: `POLLPRI`.
    Psi(PsiTrigger),
    /// A FIFO that the service manager (or anyone) writes to: `POLLIN`,
    /// drained on each check.
    Fifo(Fd),
    /// A connected `AF_UNIX` socket: `POLLIN`, drained; end of stream means
    /// the peer is gone.
    Socket(Fd),
}

impl PressureWatch {
    /// Reads `MEMORY_PRESSURE_WATCH` and `MEMORY_PRESSURE_WRITE` through
    /// `lookup` (the real caller passes `os::getenv`; tests a table) and
    /// opens the source they name.
    ///
    /// Errors: `EINVAL` for a path that is not absolute or a
    /// `MEMORY_PRESSURE_WRITE` that is not base64 (or decodes to more than
    /// 256 bytes), `ENAMETOOLONG`, and every error of [`PressureWatch::open`].
    pub fn from_env(lookup: impl Fn(&CStr) -> Option<&'static [u8]>) -> Result<WatchSetting, OsError> {
        let Some(path) = lookup(c"MEMORY_PRESSURE_WATCH") else { return Ok(WatchSetting::Unset) };
        if path.is_empty() || path == b"/dev/null" {
            return Ok(WatchSetting::Off);
        }
        let mut decoded = [0u8; MAX_WRITE];
        let write_len = match lookup(c"MEMORY_PRESSURE_WRITE") {
            Some(text) => decode_base64(text, &mut decoded).ok_or(OsError { errno: libc::EINVAL })?,
            None => 0,
        };
        PressureWatch::open(path, &decoded[..write_len]).map(WatchSetting::Watch)
    }

    /// Opens the source at `path` (absolute; no NUL needed) and sends it
    /// `write`, the decoded `MEMORY_PRESSURE_WRITE`:
    ///
    /// * a regular file must be a PSI file (procfs or cgroupfs, else
    ///   `ENOTTY`): it is armed with `write`, or with the default trigger
    ///   when `write` is empty (a PSI file without a trigger never signals);
    /// * a FIFO is opened for reading *and* writing, which Linux allows
    ///   without blocking, and `write` is not sent to it (it would come
    ///   straight back as an event). Holding a write end ourselves means
    ///   the FIFO never reports a hang-up when the outside writer closes or
    ///   has not opened it yet, so that state is not an event forever;
    /// * a socket is connected as a stream, else (`EPROTOTYPE`) as a
    ///   sequenced-packet socket, and sent `write` when it is not empty;
    /// * anything else is `ENOTTY`.
    pub fn open(path: &[u8], write: &[u8]) -> Result<PressureWatch, OsError> {
        if path.first() != Some(&b'/') || path.contains(&0) {
            return Err(OsError { errno: libc::EINVAL });
        }
        let mut cpath = [0u8; libc::PATH_MAX as usize];
        if path.len() >= cpath.len() {
            return Err(OsError { errno: libc::ENAMETOOLONG });
        }
        cpath[..path.len()].copy_from_slice(path);
        let cpath = CStr::from_bytes_until_nul(&cpath).map_err(|_| OsError { errno: libc::EINVAL })?;

        // SAFETY: a zeroed stat is a valid out-buffer; the call fills it in.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: `cpath` is NUL-terminated and `st` a valid out-pointer.
        if unsafe { libc::stat(cpath.as_ptr(), &mut st) } != 0 {
            return Err(OsError::last());
        }
        let source = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG if write.is_empty() => {
                Source::Psi(PsiTrigger::open(cpath, TRIGGER_STALL_US, TRIGGER_WINDOW_US)?)
            }
            libc::S_IFREG => Source::Psi(PsiTrigger::open_with(cpath, write)?),
            libc::S_IFIFO => {
                // SAFETY: `cpath` is NUL-terminated; O_RDWR on a FIFO never
                // blocks on Linux.
                let raw = unsafe { libc::open(cpath.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
                if raw < 0 {
                    return Err(OsError::last());
                }
                Source::Fifo(Fd(raw))
            }
            libc::S_IFSOCK => {
                let fd = match connect_unix(path, libc::SOCK_STREAM) {
                    Err(OsError { errno: libc::EPROTOTYPE }) => connect_unix(path, libc::SOCK_SEQPACKET)?,
                    other => other?,
                };
                if !write.is_empty() {
                    fd.write_once(write, true)?;
                }
                Source::Socket(fd)
            }
            _ => return Err(OsError { errno: libc::ENOTTY }),
        };
        Ok(PressureWatch { source })
    }

    /// Whether pressure was signalled since the last check; never waits.
    /// Drains what a FIFO or socket delivered, so one message is one event.
    pub fn check(&mut self) -> Signal {
        match &self.source {
            Source::Psi(trigger) => trigger.check(),
            Source::Fifo(fd) => {
                let revents = fd.poll_now(libc::POLLIN);
                if revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                    Signal::Gone
                } else if revents & libc::POLLIN != 0 && fd.drain().0 {
                    Signal::Pressure
                } else {
                    Signal::Quiet
                }
            }
            Source::Socket(fd) => {
                let revents = fd.poll_now(libc::POLLIN);
                if revents & libc::POLLNVAL != 0 {
                    return Signal::Gone;
                }
                if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
                    return Signal::Quiet;
                }
                // A message that came before the peer closed is still an
                // event; the next check then sees the end of the stream.
                match fd.drain() {
                    (true, _) => Signal::Pressure,
                    (false, true) => Signal::Gone,
                    (false, false) if revents & (libc::POLLHUP | libc::POLLERR) != 0 => Signal::Gone,
                    (false, false) => Signal::Quiet,
                }
            }
        }
    }

    /// The descriptor held (for diagnostics and tests).
    pub fn raw_fd(&self) -> i32 {
        match &self.source {
            Source::Psi(trigger) => trigger.raw_fd(),
            Source::Fifo(fd) | Source::Socket(fd) => fd.0,
        }
    }
}

/// A non-blocking `AF_UNIX` socket of type `kind` connected to `path`.
fn connect_unix(path: &[u8], kind: i32) -> Result<Fd, OsError> {
    // SAFETY: a zeroed sockaddr_un is valid (an empty path).
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // The path must fit with its NUL.
    if path.len() >= addr.sun_path.len() {
        return Err(OsError { errno: libc::ENAMETOOLONG });
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(path) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `socket` takes only integers.
    let raw = unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(OsError::last());
    }
    let fd = Fd(raw);
    let len = (core::mem::offset_of!(libc::sockaddr_un, sun_path) + path.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    let r = unsafe { libc::connect(fd.0, (&addr as *const libc::sockaddr_un).cast(), len) };
    if r != 0 {
        // A full backlog (EAGAIN) is an error too: a non-blocking connect
        // to a Unix socket does not complete later.
        return Err(OsError::last());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
}
