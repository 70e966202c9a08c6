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
//! inherited (closing its copy leaves the parent's watch intact, and is
//! quick while the parent still holds the file) and open its own.

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
/// not parse. Costs an `open`, a `read` and a `close`: about 9 µs here,
/// most of it the kernel formatting the averages.
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
    // `usize` is 64 bits on every target scavalloc builds for.
    crate::os::parse_decimal(value).map(|v| v as u64)
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

/// Waits up to `timeout_ns` for `events` on `fd`; returns the `revents`
/// (0 on timeout, or if the call failed: `EINTR` ends the wait early, and
/// callers loop to their deadline).
pub fn wait_ready(fd: i32, events: libc::c_short, timeout_ns: u64) -> libc::c_short {
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `pfd` is one valid pollfd and `ts` a valid timespec for the
    // duration of the call; a null signal mask leaves the mask alone.
    let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, core::ptr::null()) };
    if r > 0 {
        pfd.revents
    } else {
        0
    }
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
///
/// Checking costs one `poll` (about 0.4 µs here). Dropping the last
/// descriptor of a trigger blocks for several milliseconds (7 to 17 ms
/// measured on this machine: the kernel waits out an RCU grace period), so
/// a trigger is kept for the life of its watcher and dropped only from the
/// scavenger thread, never on a user's path.
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
        let mut line = [0u8; TRIGGER_LINE_MAX];
        let len = trigger_line(stall_us, window_us, &mut line);
        Self::open_with(path, &line[..len])
    }

    /// Arms a trigger with the given line (NUL-terminated here when it is
    /// not already: see [`nul_terminated`]).
    fn open_with(path: &CStr, line: &[u8]) -> Result<PsiTrigger, OsError> {
        let mut buf = [0u8; MAX_WRITE + 1];
        let line = nul_terminated(line, &mut buf).ok_or(OsError { errno: libc::EINVAL })?;
        // SAFETY: `path` is NUL-terminated; the flags open no new file.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(OsError::last());
        }
        let fd = Fd(raw);
        if !on_psi_filesystem(&fd)? {
            return Err(OsError { errno: libc::ENOTTY });
        }
        fd.write_once(line, false)?;
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

/// `statfs` magic numbers (`linux/magic.h`).
const PROC_SUPER_MAGIC: u32 = 0x9fa0;
const CGROUP2_SUPER_MAGIC: u32 = 0x6367_7270;

/// Whether `fd` is on procfs or cgroup2fs, where PSI files live.
fn on_psi_filesystem(fd: &Fd) -> Result<bool, OsError> {
    // SAFETY: a zeroed statfs is a valid out-buffer; the call fills it in.
    let mut sfs: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: `fd` is open and `sfs` is a valid out-pointer.
    if unsafe { libc::fstatfs(fd.0, &mut sfs) } != 0 {
        return Err(OsError::last());
    }
    // The magic numbers fit in 32 bits; `f_type` is signed or unsigned,
    // 32 or 64 bits wide, depending on the target.
    let kind = sfs.f_type as u32;
    Ok(kind == PROC_SUPER_MAGIC || kind == CGROUP2_SUPER_MAGIC)
}

/// The longest trigger line: `some `, two 20-digit numbers, a space and
/// the NUL.
const TRIGGER_LINE_MAX: usize = 47;

/// Writes `some <stall_us> <window_us>` and a NUL into `out`, returning the
/// length written (NUL included).
fn trigger_line(stall_us: u64, window_us: u64, out: &mut [u8; TRIGGER_LINE_MAX]) -> usize {
    out[..5].copy_from_slice(b"some ");
    let mut len = 5;
    len += write_decimal(&mut out[len..], stall_us);
    out[len] = b' ';
    len += 1;
    len += write_decimal(&mut out[len..], window_us);
    out[len] = 0;
    len + 1
}

/// `line` as one write to a PSI file: copied into `buf` with a NUL added
/// unless it ends with one, because the kernel overwrites the last byte of
/// each write with its terminator (an unterminated `some 150000 2000000`
/// would lose its last digit, a 200 ms window). `None` if `line` is empty
/// or longer than [`MAX_WRITE`].
fn nul_terminated<'a>(line: &[u8], buf: &'a mut [u8; MAX_WRITE + 1]) -> Option<&'a [u8]> {
    if line.is_empty() || line.len() > MAX_WRITE {
        return None;
    }
    buf[..line.len()].copy_from_slice(line);
    let len = if line.last() == Some(&0) { line.len() } else { line.len() + 1 };
    buf[len - 1] = 0;
    Some(&buf[..len])
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

    /// The `poll` events that mean pressure on [`Self::raw_fd`].
    pub fn poll_events(&self) -> libc::c_short {
        match &self.source {
            Source::Psi(_) => libc::POLLPRI,
            Source::Fifo(_) | Source::Socket(_) => libc::POLLIN,
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
    use std::ffi::CString;
    use std::io::{Read, Write};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};

    /// A fresh directory of this test process under the system's temporary
    /// directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("scavalloc-psi-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn leak(bytes: &[u8]) -> &'static [u8] {
        Box::leak(bytes.to_vec().into_boxed_slice())
    }

    fn path_bytes(path: &Path) -> &'static [u8] {
        leak(path.as_os_str().as_bytes())
    }

    /// A lookup that answers from a table, as the environment would.
    fn table(entries: &[(&'static str, &'static [u8])]) -> impl Fn(&CStr) -> Option<&'static [u8]> {
        let entries = entries.to_vec();
        move |name: &CStr| entries.iter().find(|(k, _)| k.as_bytes() == name.to_bytes()).map(|&(_, v)| v)
    }

    fn watch(entries: &[(&'static str, &'static [u8])]) -> Result<WatchSetting, OsError> {
        PressureWatch::from_env(table(entries))
    }

    fn expect_watch(setting: Result<WatchSetting, OsError>) -> PressureWatch {
        match setting {
            Ok(WatchSetting::Watch(w)) => w,
            other => panic!("expected a watch, got {other:?}"),
        }
    }

    /// Whether PSI can be read here; prints why not when it cannot, so the
    /// test output says the case did not run.
    fn psi_available(test: &str) -> bool {
        if stall_total_us(c"/proc/pressure/memory").is_some() {
            return true;
        }
        let why = match std::fs::read("/proc/pressure/memory") {
            Ok(text) => format!("it does not parse: {:?}", String::from_utf8_lossy(&text)),
            Err(e) => format!("{e}"),
        };
        println!("{test}: CASE NOT RUN: /proc/pressure/memory is unusable here ({why})");
        false
    }

    fn is_open(fd: i32) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags >= 0 && flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn types_are_send() {
        fn send<T: Send>() {}
        send::<PsiTrigger>();
        send::<PressureWatch>();
        send::<WatchSetting>();
    }

    #[test]
    fn parse_some_total_takes_the_some_line() {
        let text = b"some avg10=1.52 avg60=0.87 avg300=0.21 total=123456\n\
                     full avg10=0.50 avg60=0.20 avg300=0.05 total=65432\n";
        assert_eq!(parse_some_total(text), Some(123456));
        let full_first = b"full avg10=0.00 avg60=0.00 avg300=0.00 total=7\nsome avg10=0.00 avg60=0.00 avg300=0.00 total=42";
        assert_eq!(parse_some_total(full_first), Some(42));
        assert_eq!(parse_some_total(b"some avg10=0.00 avg60=0.00 avg300=0.00 total=18446744073709551615\n"), Some(u64::MAX));
        assert_eq!(parse_some_total(b"some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"), Some(0));
    }

    #[test]
    fn parse_some_total_refuses_malformed_text() {
        assert_eq!(parse_some_total(b""), None);
        assert_eq!(parse_some_total(b"full avg10=0.00 avg60=0.00 avg300=0.00 total=5\n"), None);
        assert_eq!(parse_some_total(b"some avg10=0.00 avg60=0.00 avg300=0.00\n"), None);
        assert_eq!(parse_some_total(b"some avg10=0.00 total=\n"), None);
        assert_eq!(parse_some_total(b"some avg10=0.00 total=12x\n"), None);
        assert_eq!(parse_some_total(b"some total=-3\n"), None);
        assert_eq!(parse_some_total(b"some total=18446744073709551616\n"), None);
        assert_eq!(parse_some_total(b"something total=5\n"), None);
        assert_eq!(parse_some_total(b"\xff\xfe"), None);
    }

    #[test]
    fn base64_standard_vectors() {
        let mut out = [0u8; 64];
        for (plain, encoded) in [
            (&b""[..], &b""[..]),
            (b"f", b"Zg=="),
            (b"fo", b"Zm8="),
            (b"foo", b"Zm9v"),
            (b"foob", b"Zm9vYg=="),
            (b"fooba", b"Zm9vYmE="),
            (b"foobar", b"Zm9vYmFy"),
            (b"\x00\xff\xfe\x01\x02", b"AP/+AQI="),
            (b"some 150000 2000000\0", b"c29tZSAxNTAwMDAgMjAwMDAwMAA="),
        ] {
            let n = decode_base64(encoded, &mut out);
            assert_eq!(n.map(|n| &out[..n]), Some(plain), "{:?}", String::from_utf8_lossy(encoded));
        }
    }

    #[test]
    fn base64_padding_and_white_space() {
        let mut out = [0u8; 16];
        let mut decode = |text: &[u8]| decode_base64(text, &mut out).map(|n| out[..n].to_vec());
        assert_eq!(decode(b"Zg"), Some(b"f".to_vec()), "padding may be left out");
        assert_eq!(decode(b"Zm8"), Some(b"fo".to_vec()));
        assert_eq!(decode(b" Zm9v\nYmE=\n"), Some(b"fooba".to_vec()), "white space is skipped");
        assert_eq!(decode(b"Zg= ="), Some(b"f".to_vec()));
    }

    #[test]
    fn base64_refuses_invalid_input() {
        let mut out = [0u8; 16];
        for bad in [
            &b"Z"[..],     // one symbol is no encoding
            b"Zm9vY",      // nor is 4n + 1
            b"Zg=",        // two symbols take two pads
            b"Zg===",      // too many
            b"Zm8==",      // three symbols take one pad
            b"Zm9v=",      // a whole group takes none
            b"Zg==Zg==",   // data after padding
            b"Zm9v!",      // outside the alphabet
            b"Zm9-",       // the URL-safe alphabet is not this one
            b"=",
        ] {
            assert_eq!(decode_base64(bad, &mut out), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let mut small = [0u8; 2];
        assert_eq!(decode_base64(b"Zm9v", &mut small), None, "output too small");
        assert_eq!(decode_base64(b"Zm8=", &mut small), Some(2));
    }

    #[test]
    fn decimal_digits() {
        let mut out = [0u8; 20];
        let n = write_decimal(&mut out, 0);
        assert_eq!(&out[..n], b"0");
        let n = write_decimal(&mut out, 150_000);
        assert_eq!(&out[..n], b"150000");
        let n = write_decimal(&mut out, u64::MAX);
        assert_eq!(&out[..n], b"18446744073709551615");
    }

    #[test]
    fn trigger_lines_end_with_their_terminator() {
        let mut line = [0u8; TRIGGER_LINE_MAX];
        let n = trigger_line(TRIGGER_STALL_US, TRIGGER_WINDOW_US, &mut line);
        assert_eq!(&line[..n], b"some 150000 2000000\0");
        let n = trigger_line(u64::MAX, u64::MAX, &mut line);
        assert_eq!(n, TRIGGER_LINE_MAX);
        assert_eq!(&line[..n], b"some 18446744073709551615 18446744073709551615\0");

        let mut buf = [0xAAu8; MAX_WRITE + 1];
        assert_eq!(nul_terminated(b"some 1 2", &mut buf), Some(&b"some 1 2\0"[..]));
        assert_eq!(nul_terminated(b"some 1 2\0", &mut buf), Some(&b"some 1 2\0"[..]), "one NUL, not two");
        assert_eq!(nul_terminated(b"", &mut buf), None);
        assert_eq!(nul_terminated(&[b'1'; MAX_WRITE], &mut buf).map(<[u8]>::len), Some(MAX_WRITE + 1));
        assert_eq!(nul_terminated(&[b'1'; MAX_WRITE + 1], &mut buf), None);
    }

    #[test]
    fn proc_stall_counter_reads_and_grows() {
        if !psi_available("proc_stall_counter_reads_and_grows") {
            return;
        }
        let first = stall_total_us(c"/proc/pressure/memory").unwrap();
        let second = stall_total_us(c"/proc/pressure/memory").unwrap();
        assert!(second >= first, "the stall counter went back: {first} then {second}");
        assert_eq!(stall_total_us(c"/proc/pressure/no-such-resource"), None);
    }

    #[test]
    fn psi_trigger_on_proc() {
        if !psi_available("psi_trigger_on_proc") {
            return;
        }
        match PsiTrigger::open(c"/proc/pressure/memory", TRIGGER_STALL_US, TRIGGER_WINDOW_US) {
            Ok(trigger) => {
                assert!(is_open(trigger.raw_fd()), "the trigger's descriptor is open and close-on-exec");
                // No memory pressure on a test machine at rest (total= stays
                // 0 here): the trigger has nothing to report.
                assert_eq!(trigger.check(), Signal::Quiet);
                assert_eq!(trigger.check(), Signal::Quiet);
            }
            Err(e) => {
                let allowed = [libc::EPERM, libc::EACCES, libc::EINVAL, libc::ENOENT, libc::EOPNOTSUPP];
                assert!(allowed.contains(&e.errno), "unexpected refusal: errno {}", e.errno);
                println!(
                    "psi_trigger_on_proc: the kernel refused a 2 s trigger ({}); callers read the counter instead",
                    std::io::Error::from_raw_os_error(e.errno)
                );
            }
        }
    }

    #[test]
    fn psi_trigger_refuses_a_bad_window() {
        if !psi_available("psi_trigger_refuses_a_bad_window") {
            return;
        }
        // A stall longer than its window is never valid, privileged or not.
        let e = PsiTrigger::open(c"/proc/pressure/memory", 3_000_000, 2_000_000).unwrap_err();
        assert!(matches!(e.errno, libc::EINVAL | libc::EPERM | libc::EACCES), "errno {}", e.errno);
    }

    #[test]
    fn psi_trigger_leaves_an_ordinary_file_alone() {
        let dir = TempDir::new("plain");
        let file = dir.path("not-psi");
        std::fs::write(&file, b"hello").unwrap();
        let cfile = CString::new(file.as_os_str().as_bytes()).unwrap();
        let e = PsiTrigger::open(&cfile, TRIGGER_STALL_US, TRIGGER_WINDOW_US).unwrap_err();
        assert_eq!(e.errno, libc::ENOTTY);
        assert_eq!(std::fs::read(&file).unwrap(), b"hello", "nothing was written to it");
        // The same through the protocol.
        let e = watch(&[("MEMORY_PRESSURE_WATCH", path_bytes(&file)), ("MEMORY_PRESSURE_WRITE", b"Zm9v")])
            .unwrap_err();
        assert_eq!(e.errno, libc::ENOTTY);
        assert_eq!(std::fs::read(&file).unwrap(), b"hello");
    }

    #[test]
    fn watch_settings_from_the_environment() {
        assert!(matches!(watch(&[]), Ok(WatchSetting::Unset)));
        assert!(matches!(watch(&[("MEMORY_PRESSURE_WATCH", b"/dev/null")]), Ok(WatchSetting::Off)));
        assert!(matches!(watch(&[("MEMORY_PRESSURE_WATCH", b"")]), Ok(WatchSetting::Off)));
        let off_with_write = [("MEMORY_PRESSURE_WATCH", &b"/dev/null"[..]), ("MEMORY_PRESSURE_WRITE", b"Zm9v")];
        assert!(matches!(watch(&off_with_write), Ok(WatchSetting::Off)));
        let relative = watch(&[("MEMORY_PRESSURE_WATCH", b"pressure")]).unwrap_err();
        assert_eq!(relative.errno, libc::EINVAL);
        let missing = watch(&[("MEMORY_PRESSURE_WATCH", b"/nonexistent/scavalloc/pressure")]).unwrap_err();
        assert_eq!(missing.errno, libc::ENOENT);
        let bad_write =
            watch(&[("MEMORY_PRESSURE_WATCH", b"/proc/pressure/memory"), ("MEMORY_PRESSURE_WRITE", b"not base64!")])
                .unwrap_err();
        assert_eq!(bad_write.errno, libc::EINVAL);
        let directory = watch(&[("MEMORY_PRESSURE_WATCH", b"/proc")]).unwrap_err();
        assert_eq!(directory.errno, libc::ENOTTY);
    }

    #[test]
    fn watch_through_a_fifo() {
        let dir = TempDir::new("fifo");
        let fifo = dir.path("pressure");
        let cfifo = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `cfifo` is NUL-terminated.
        assert_eq!(unsafe { libc::mkfifo(cfifo.as_ptr(), 0o600) }, 0);
        // MEMORY_PRESSURE_WRITE is set but must not be written into the
        // FIFO: it would read back as an event.
        let mut w = expect_watch(watch(&[
            ("MEMORY_PRESSURE_WATCH", path_bytes(&fifo)),
            ("MEMORY_PRESSURE_WRITE", b"c29tZSAxNTAwMDAgMjAwMDAwMAA="),
        ]));
        assert!(is_open(w.raw_fd()));
        assert_eq!(w.check(), Signal::Quiet, "no event before anyone writes");
        assert_eq!(w.check(), Signal::Quiet);

        // Opening for writing without blocking needs a reader: the watch.
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        assert_eq!(w.check(), Signal::Quiet, "a writer opening is no event");
        writer.write_all(b"pressure\n").unwrap();
        assert_eq!(w.check(), Signal::Pressure);
        assert_eq!(w.check(), Signal::Quiet, "drained: none again");

        // More than a pipe holds (64 KiB by default) is drained in one check.
        let big = vec![b'x'; 60 << 10];
        writer.write_all(&big).unwrap();
        assert_eq!(w.check(), Signal::Pressure);
        assert_eq!(w.check(), Signal::Quiet);

        // The writer going away is no hang-up for us: we hold a write end.
        drop(writer);
        assert_eq!(w.check(), Signal::Quiet, "a closed writer is not an event");
        assert_eq!(w.check(), Signal::Quiet);
        let mut pfd = libc::pollfd { fd: w.raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; timeout 0.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        assert_eq!((ready, pfd.revents), (0, 0), "the descriptor shows no hang-up state at all");

        // A writer that comes back later is heard again.
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        writer.write_all(b"again").unwrap();
        assert_eq!(w.check(), Signal::Pressure);
        assert_eq!(w.check(), Signal::Quiet);
    }

    #[test]
    fn watch_through_a_stream_socket() {
        let dir = TempDir::new("stream");
        let sock = dir.path("pressure.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let expected = b"some 150000 2000000\0";
        let mut w = expect_watch(watch(&[
            ("MEMORY_PRESSURE_WATCH", path_bytes(&sock)),
            ("MEMORY_PRESSURE_WRITE", b"c29tZSAxNTAwMDAgMjAwMDAwMAA="),
        ]));
        assert!(is_open(w.raw_fd()));
        let (mut peer, _) = listener.accept().unwrap();
        let mut got = [0u8; 20];
        peer.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, expected, "the listener receives the decoded MEMORY_PRESSURE_WRITE");
        peer.set_nonblocking(true).unwrap();
        let extra = peer.read(&mut got);
        assert_eq!(extra.map_err(|e| e.kind()), Err(std::io::ErrorKind::WouldBlock), "and nothing more");

        assert_eq!(w.check(), Signal::Quiet, "no event before the peer writes");
        peer.write_all(b"pressure").unwrap();
        assert_eq!(w.check(), Signal::Pressure);
        assert_eq!(w.check(), Signal::Quiet, "drained: none again");
        peer.write_all(b"1").unwrap();
        peer.write_all(b"2").unwrap();
        assert_eq!(w.check(), Signal::Pressure, "two messages between checks are one event");
        assert_eq!(w.check(), Signal::Quiet);

        // A message followed by the peer closing: the message first.
        peer.write_all(b"last").unwrap();
        drop(peer);
        assert_eq!(w.check(), Signal::Pressure);
        assert_eq!(w.check(), Signal::Gone, "the peer closed");
        assert_eq!(w.check(), Signal::Gone);
    }

    #[test]
    fn watch_through_a_seqpacket_socket() {
        let dir = TempDir::new("seqpacket");
        let sock = dir.path("pressure.sock");
        let path = sock.as_os_str().as_bytes();
        // SAFETY: plain socket calls on a descriptor this test owns, with a
        // valid sockaddr_un whose path fits.
        let listener = unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_un = core::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, &s) in addr.sun_path.iter_mut().zip(path) {
                *d = s as libc::c_char;
            }
            let len = core::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            assert_eq!(libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len), 0);
            assert_eq!(libc::listen(fd, 1), 0);
            Fd(fd)
        };
        let mut w = PressureWatch::open(path, b"hello").unwrap();
        // SAFETY: accepting on the listening socket this test owns.
        let peer = Fd(unsafe { libc::accept(listener.0, core::ptr::null_mut(), core::ptr::null_mut()) });
        assert!(peer.0 >= 0);
        let mut got = [0u8; 16];
        // SAFETY: `got` is writable for its length.
        let n = unsafe { libc::recv(peer.0, got.as_mut_ptr().cast(), got.len(), 0) };
        assert_eq!(&got[..n as usize], b"hello", "one packet with exactly the bytes to write");
        assert_eq!(w.check(), Signal::Quiet);
        peer.write_once(b"p", true).unwrap();
        assert_eq!(w.check(), Signal::Pressure);
        assert_eq!(w.check(), Signal::Quiet);
        drop(peer);
        assert_eq!(w.check(), Signal::Gone);
    }

    #[test]
    fn watch_through_a_psi_file() {
        if !psi_available("watch_through_a_psi_file") {
            return;
        }
        for write in [&b"c29tZSAxNTAwMDAgMjAwMDAwMAA="[..], b""] {
            match watch(&[("MEMORY_PRESSURE_WATCH", b"/proc/pressure/memory"), ("MEMORY_PRESSURE_WRITE", write)]) {
                Ok(WatchSetting::Watch(mut w)) => {
                    assert!(is_open(w.raw_fd()));
                    assert_eq!(w.check(), Signal::Quiet, "no memory pressure on a test machine at rest");
                }
                Ok(other) => panic!("expected a watch, got {other:?}"),
                Err(e) => {
                    let allowed = [libc::EPERM, libc::EACCES, libc::EINVAL, libc::EOPNOTSUPP];
                    assert!(allowed.contains(&e.errno), "unexpected refusal: errno {}", e.errno);
                    println!(
                        "watch_through_a_psi_file: CASE NOT RUN: the kernel refused the trigger ({})",
                        std::io::Error::from_raw_os_error(e.errno)
                    );
                }
            }
        }
    }

    /// Where cgroup v2 is mounted, from `/proc/self/mountinfo`.
    fn cgroup2_mount() -> Option<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        info.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
    }

    /// An empty cgroup v2 directory made for one test, removed on drop.
    struct TestCgroup(PathBuf);

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn psi_in_a_cgroup_that_is_removed() {
        const TEST: &str = "psi_in_a_cgroup_that_is_removed";
        let Some(mount) = cgroup2_mount() else {
            println!("{TEST}: CASE NOT RUN: no cgroup v2 mount");
            return;
        };
        let group = TestCgroup(mount.join(format!("scavalloc-psi-test-{}", std::process::id())));
        if let Err(e) = std::fs::create_dir(&group.0) {
            println!("{TEST}: CASE NOT RUN: cannot create {}: {e}", group.0.display());
            return;
        }
        let file = group.0.join("memory.pressure");
        let cfile = CString::new(file.as_os_str().as_bytes()).unwrap();
        let Some(total) = stall_total_us(&cfile) else {
            println!("{TEST}: CASE NOT RUN: {} is unreadable (no PSI for cgroups here)", file.display());
            return;
        };
        assert_eq!(total, 0, "a cgroup that never held a task never stalled");

        let trigger = match PsiTrigger::open(&cfile, TRIGGER_STALL_US, TRIGGER_WINDOW_US) {
            Ok(t) => t,
            Err(e) => {
                let allowed = [libc::EPERM, libc::EACCES, libc::EINVAL, libc::EOPNOTSUPP];
                assert!(allowed.contains(&e.errno), "unexpected refusal: errno {}", e.errno);
                println!("{TEST}: CASE NOT RUN: trigger refused ({})", std::io::Error::from_raw_os_error(e.errno));
                return;
            }
        };
        let mut w = expect_watch(watch(&[
            ("MEMORY_PRESSURE_WATCH", path_bytes(&file)),
            ("MEMORY_PRESSURE_WRITE", b"c29tZSAxNTAwMDAgMjAwMDAwMAA="),
        ]));
        assert_eq!(trigger.check(), Signal::Quiet);
        assert_eq!(w.check(), Signal::Quiet);

        // Removing the cgroup leaves our descriptors pointing at nothing;
        // the kernel reports POLLERR (with POLLPRI) from then on.
        std::fs::remove_dir(&group.0).unwrap();
        assert_eq!(trigger.check(), Signal::Gone);
        assert_eq!(trigger.check(), Signal::Gone);
        assert_eq!(w.check(), Signal::Gone);
        assert_eq!(stall_total_us(&cfile), None);
    }
}
