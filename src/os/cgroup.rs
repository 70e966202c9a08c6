//! The process's control group: its memory limits and usage, and the CPUs
//! it may use, read from the cgroup file systems (v1, v2 and hybrid
//! hierarchies) without allocating.
//!
//! [`detect`] finds, once, the directories that hold the process's memory
//! and CPU controllers: it reads `/proc/self/cgroup` (which cgroup the
//! process is in, per hierarchy) and `/proc/self/mountinfo` (where each
//! hierarchy is mounted, and which part of it the mount shows), and keeps
//! the paths in a [`Location`] of fixed size. [`read_memory`] and
//! [`cpu_limit`] then read the limit files afresh on every call (limits
//! change at run time), walking from the process's cgroup up to the top of
//! the mount, because a parent's limit binds its children: the effective
//! limit is the smallest one on the way.
//!
//! A controller is looked for in a v1 hierarchy first: the kernel binds a
//! controller to one hierarchy only, so on a hybrid system (v1 controllers
//! beside a v2 mount without them) the v1 mount is where its files are.
//! Otherwise the v2 directory serves. The v2 directory is kept even when it
//! has no controllers, for its `memory.pressure`.
//!
//! Everything lives in stack buffers or the [`Location`] the caller keeps;
//! files are read with raw `open`/`read`. A path that does not fit in
//! [`PATH_CAPACITY`] bytes counts as no cgroup, and an unreadable or
//! malformed file as no limit at that level.
//!
//! With the `testing` feature, [`set_test_root`] prefixes every absolute
//! path read here, so that tests can build a fake tree in a directory.
// Not called yet by the scavenger (issue 15 wires it in).
#![allow(dead_code)]

use core::ffi::CStr;
use core::fmt;

/// The longest directory path kept (test root, mount point and cgroup
/// path together); a longer one counts as no cgroup.
pub const PATH_CAPACITY: usize = 512;

/// Room after a directory for `/` and a file name, and the closing NUL.
const FILE_NAME_ROOM: usize = 64;

/// Memory values at or above this are no limit: v1 reports "unlimited" as
/// the largest page multiple below 2^63 (9223372036854771712), and no real
/// limit comes near 2^62 bytes.
const UNLIMITED_FLOOR: usize = 1 << 62;

/// Which kind of hierarchy a directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// A v1 hierarchy (`cgroup` file system, one or more controllers).
    V1,
    /// The v2 unified hierarchy (`cgroup2` file system).
    V2,
}

/// A byte string of fixed capacity on the stack.
#[derive(Clone, Copy)]
struct StackPath {
    bytes: [u8; PATH_CAPACITY],
    len: usize,
}

impl StackPath {
    const fn new() -> Self {
        StackPath { bytes: [0; PATH_CAPACITY], len: 0 }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Appends `tail`; `None` (and nothing appended) when it does not fit.
    fn push(&mut self, tail: &[u8]) -> Option<()> {
        let end = self.len.checked_add(tail.len()).filter(|&e| e <= PATH_CAPACITY)?;
        self.bytes[self.len..end].copy_from_slice(tail);
        self.len = end;
        Some(())
    }

    /// Appends a mountinfo field, decoding the kernel's octal escapes
    /// (`\040` for a space, `\011` tab, `\012` newline, `\134` backslash).
    fn push_unescaped(&mut self, field: &[u8]) -> Option<()> {
        let mut i = 0;
        while i < field.len() {
            let b = match field.get(i..i + 4) {
                Some([b'\\', d @ ..]) if d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                    i += 4;
                    let value = d.iter().fold(0u32, |v, &c| v * 8 + (c - b'0') as u32);
                    u8::try_from(value).ok()?
                }
                _ => {
                    i += 1;
                    field[i - 1]
                }
            };
            self.push(&[b])?;
        }
        Some(())
    }

    /// Drops trailing `/`s.
    fn trim_trailing_slashes(&mut self) {
        while self.len > 0 && self.bytes[self.len - 1] == b'/' {
            self.len -= 1;
        }
    }
}

/// A cgroup directory of the process: its path, and how far up the walk
/// to ancestors may go (the mount point: above it is another file system).
#[derive(Clone, Copy)]
pub struct Dir {
    path: StackPath,
    /// Length of the mount point's part of `path` (test root included).
    top: usize,
    version: Version,
}

impl Dir {
    /// The directory's path (no trailing `/`, no NUL).
    pub fn path(&self) -> &[u8] {
        self.path.as_bytes()
    }

    /// Which kind of hierarchy the directory is in.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Calls `f` with the NUL-terminated path of file `name` in this
    /// directory; `None` if the name is too long or holds a NUL.
    pub fn with_file<R>(&self, name: &[u8], f: impl FnOnce(&CStr) -> R) -> Option<R> {
        with_file_in(self.path(), name, f)
    }

    /// The directory and its ancestors up to the mount point, nearest first.
    fn ancestors(&self) -> Ancestors<'_> {
        Ancestors { path: self.path(), top: self.top, done: false }
    }
}

impl fmt::Debug for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {:?} (mount: {:?})", self.version, self.path().escape_ascii(), self.path()[..self.top].escape_ascii())
    }
}

/// Walks a directory path up one component at a time, stopping at `top`.
struct Ancestors<'a> {
    path: &'a [u8],
    top: usize,
    done: bool,
}

impl<'a> Iterator for Ancestors<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        let here = self.path;
        // Every component below the mount point starts with `/`, so the
        // last one at or after `top` leads to the parent.
        match here.iter().rposition(|&b| b == b'/') {
            Some(cut) if cut >= self.top && here.len() > self.top => self.path = &here[..cut],
            _ => self.done = true,
        }
        Some(here)
    }
}

/// Builds `dir/name` with a closing NUL in a stack buffer and calls `f`.
fn with_file_in<R>(dir: &[u8], name: &[u8], f: impl FnOnce(&CStr) -> R) -> Option<R> {
    let mut buf = [0u8; PATH_CAPACITY + FILE_NAME_ROOM];
    let len = dir.len() + 1 + name.len();
    if len >= buf.len() {
        return None;
    }
    buf[..dir.len()].copy_from_slice(dir);
    buf[dir.len()] = b'/';
    buf[dir.len() + 1..len].copy_from_slice(name);
    let path = CStr::from_bytes_with_nul(&buf[..=len]).ok()?;
    Some(f(path))
}

/// Where the process's controllers are, found once by [`detect`].
#[derive(Clone, Copy, Debug)]
pub struct Location {
    memory: Option<Dir>,
    cpu: Option<Dir>,
    unified: Option<Dir>,
}

impl Location {
    /// No cgroup at all: every read finds no limit.
    pub const NONE: Location = Location { memory: None, cpu: None, unified: None };

    /// The directory whose files hold the memory controller's limits.
    pub fn memory_dir(&self) -> Option<&Dir> {
        self.memory.as_ref()
    }

    /// The directory whose files hold the CPU controller's quota.
    pub fn cpu_dir(&self) -> Option<&Dir> {
        self.cpu.as_ref()
    }

    /// The process's directory in the v2 hierarchy, controllers or not (on
    /// a hybrid system it still has `memory.pressure`).
    pub fn unified_dir(&self) -> Option<&Dir> {
        self.unified.as_ref()
    }
}

/// One line of `/proc/self/cgroup`: `hierarchy-ID:controllers:path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLine<'a> {
    /// The hierarchy's number; 0 for v2.
    pub hierarchy: u32,
    /// Comma-separated controllers (and `name=` tags); empty for v2.
    pub controllers: &'a [u8],
    /// The cgroup's path from the hierarchy's root (or the cgroup
    /// namespace's root).
    pub path: &'a [u8],
}

impl CgroupLine<'_> {
    /// Whether this is the v2 hierarchy's line (`0::/path`).
    pub fn is_unified(&self) -> bool {
        self.hierarchy == 0 && self.controllers.is_empty()
    }

    /// Whether the hierarchy carries controller `name` (whole names only:
    /// `cpu` is not `cpuset`).
    pub fn has_controller(&self, name: &[u8]) -> bool {
        self.controllers.split(|&b| b == b',').any(|c| c == name)
    }
}

/// Parses one line of `/proc/self/cgroup` (without its newline). The path
/// is everything after the second colon, colons included.
pub fn parse_cgroup_line(line: &[u8]) -> Option<CgroupLine<'_>> {
    let mut parts = line.splitn(3, |&b| b == b':');
    let hierarchy = crate::os::parse_decimal(parts.next()?)?;
    let controllers = parts.next()?;
    let path = parts.next()?;
    Some(CgroupLine { hierarchy: u32::try_from(hierarchy).ok()?, controllers, path })
}

/// The fields of one `/proc/self/mountinfo` line that locate a cgroup
/// mount. Paths are as the kernel writes them (octal escapes kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountLine<'a> {
    /// The directory of the mounted file system that the mount shows
    /// (`/` for all of it; a cgroup's path inside a container).
    pub root: &'a [u8],
    /// Where it is mounted.
    pub mount_point: &'a [u8],
    /// The file-system type (`cgroup`, `cgroup2`, ...).
    pub fstype: &'a [u8],
    /// The per-superblock options (for v1 cgroups, the controllers).
    pub super_options: &'a [u8],
}

impl MountLine<'_> {
    /// Whether the super options hold `name` as a whole option.
    pub fn has_option(&self, name: &[u8]) -> bool {
        self.super_options.split(|&b| b == b',').any(|o| o == name)
    }
}

/// Parses one line of `/proc/self/mountinfo` (without its newline):
/// `ID parent major:minor root mount-point options [optional fields...] -
/// fstype source super-options`.
pub fn parse_mountinfo_line(line: &[u8]) -> Option<MountLine<'_>> {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let _id = fields.next()?;
    let _parent = fields.next()?;
    let _device = fields.next()?;
    let root = fields.next()?;
    let mount_point = fields.next()?;
    let _options = fields.next()?;
    // Zero or more optional fields (`shared:1`, `master:2`, ...) end at `-`.
    fields.by_ref().find(|f| *f == b"-")?;
    let fstype = fields.next()?;
    let _source = fields.next()?;
    let super_options = fields.next().unwrap_or(b"");
    Some(MountLine { root, mount_point, fstype, super_options })
}

/// Parses a memory value (`memory.max`, `memory.high`,
/// `memory.limit_in_bytes`, a `memory.stat` value): `None` for `max`,
/// for v1's "unlimited" (anything from 2^62 up) and for anything else
/// that is not a number.
pub fn parse_memory_value(text: &[u8]) -> Option<usize> {
    crate::os::parse_decimal(text).filter(|&v| v < UNLIMITED_FLOOR)
}

/// Parses v2's `cpu.max` (`quota period`, or `max period` for none) into
/// the CPUs it allows: `50000 100000` is 0.5.
pub fn parse_cpu_max(text: &[u8]) -> Option<f64> {
    let mut words = text.trim_ascii().split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty());
    let quota = words.next()?;
    let period = words.next()?;
    cpus_from_quota(crate::os::parse_decimal(quota)?, crate::os::parse_decimal(period)?)
}

/// Parses v1's `cpu.cfs_quota_us` (`-1` for none) and `cpu.cfs_period_us`
/// into the CPUs they allow.
pub fn parse_cfs_quota(quota: &[u8], period: &[u8]) -> Option<f64> {
    cpus_from_quota(crate::os::parse_decimal(quota)?, crate::os::parse_decimal(period)?)
}

fn cpus_from_quota(quota: usize, period: usize) -> Option<f64> {
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// Where the effective memory limit ([`MemoryLimits::max`]) came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// No limit found.
    None,
    /// A v1 `memory.limit_in_bytes`, `levels_up` directories above the
    /// process's cgroup (0: its own).
    V1 {
        /// Directories above the process's cgroup.
        levels_up: u32,
    },
    /// v1's `hierarchical_memory_limit` in the process's `memory.stat`
    /// (the kernel's own minimum over all ancestors, visible or not).
    V1Hierarchical,
    /// A v2 `memory.max`, `levels_up` directories above the process's
    /// cgroup (0: its own).
    V2 {
        /// Directories above the process's cgroup.
        levels_up: u32,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, levels_up) = match *self {
            Source::None => return f.write_str("none"),
            Source::V1Hierarchical => return f.write_str("cgroup v1 hierarchical_memory_limit"),
            Source::V1 { levels_up } => ("cgroup v1 memory.limit_in_bytes", levels_up),
            Source::V2 { levels_up } => ("cgroup v2 memory.max", levels_up),
        };
        f.write_str(what)?;
        match levels_up {
            0 => Ok(()),
            1 => f.write_str(", 1 level up"),
            n => write!(f, ", {n} levels up"),
        }
    }
}

/// The memory limits binding the process, read at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimits {
    /// The effective hard limit in bytes: the smallest over the cgroup and
    /// its ancestors.
    pub max: Option<usize>,
    /// The effective `memory.high` (v2 only; throttling starts there).
    pub high: Option<usize>,
    /// The bytes charged to the process's own cgroup (all its processes).
    pub usage: Option<usize>,
    /// Where `max` came from.
    pub source: Source,
}

impl MemoryLimits {
    /// No limit, no usage known.
    pub const NONE: MemoryLimits = MemoryLimits { max: None, high: None, usage: None, source: Source::None };
}

/// The root prefixed to every absolute path read (testing only).
#[cfg(feature = "testing")]
static TEST_ROOT: spin::Mutex<StackPath> = spin::Mutex::new(StackPath::new());

/// Makes [`detect`] read `/proc/self/cgroup`, `/proc/self/mountinfo` and
/// the mount points they name under `root` (an empty path goes back to the
/// real ones). Returns false, changing nothing, if `root` is longer than
/// half of [`PATH_CAPACITY`]. A [`Location`] found earlier keeps its paths.
#[cfg(feature = "testing")]
pub fn set_test_root(root: &CStr) -> bool {
    let bytes = root.to_bytes();
    if bytes.len() > PATH_CAPACITY / 2 {
        return false;
    }
    let mut path = StackPath::new();
    let _ = path.push(bytes);
    path.trim_trailing_slashes();
    *TEST_ROOT.lock() = path;
    true
}

/// Finds the process's cgroup directories: two reads of `/proc` files
/// (mountinfo in 4 KiB pieces), on the stack. Call it once and keep the
/// [`Location`]; the process's cgroup seldom changes (a move to another
/// cgroup is not followed).
pub fn detect() -> Location {
    #[cfg(feature = "testing")]
    let root = *TEST_ROOT.lock();
    #[cfg(not(feature = "testing"))]
    let root = StackPath::new();
    detect_under(root.as_bytes())
}

/// The process's cgroup paths from `/proc/self/cgroup`.
struct CgroupPaths {
    memory_v1: Option<StackPath>,
    cpu_v1: Option<StackPath>,
    unified: Option<StackPath>,
}

/// The best mount seen so far for one hierarchy, and whether its root
/// contained the cgroup's path.
struct Candidate {
    dir: Option<Dir>,
    exact: bool,
}

impl Candidate {
    const fn new() -> Self {
        Candidate { dir: None, exact: false }
    }

    /// Considers a mount of the hierarchy whose cgroup path is `cgroup`:
    /// a mount whose root contains the path beats one that does not; among
    /// equals the first one listed wins.
    fn offer(&mut self, root: &[u8], mount: &MountLine<'_>, cgroup: Option<&StackPath>, version: Version) {
        let Some(cgroup) = cgroup else { return };
        if self.exact {
            return;
        }
        let Some((dir, exact)) = join(root, mount, cgroup.as_bytes(), version) else { return };
        if self.dir.is_none() || exact {
            self.dir = Some(dir);
            self.exact = exact;
        }
    }
}

fn detect_under(root: &[u8]) -> Location {
    let mut line_buf = [0u8; 4096];
    let mut paths = CgroupPaths { memory_v1: None, cpu_v1: None, unified: None };
    let read = with_file_in(root, b"proc/self/cgroup", |file| {
        for_each_line(file, &mut line_buf, |line| {
            let Some(entry) = parse_cgroup_line(line) else { return };
            let keep = |slot: &mut Option<StackPath>| {
                let mut path = StackPath::new();
                if slot.is_none() && path.push(entry.path).is_some() {
                    *slot = Some(path);
                }
            };
            if entry.is_unified() {
                keep(&mut paths.unified);
            }
            if entry.has_controller(b"memory") {
                keep(&mut paths.memory_v1);
            }
            if entry.has_controller(b"cpu") {
                keep(&mut paths.cpu_v1);
            }
        })
    });
    if read != Some(true) {
        return Location::NONE;
    }

    let (mut memory, mut cpu, mut unified) = (Candidate::new(), Candidate::new(), Candidate::new());
    let read = with_file_in(root, b"proc/self/mountinfo", |file| {
        for_each_line(file, &mut line_buf, |line| {
            let Some(mount) = parse_mountinfo_line(line) else { return };
            match mount.fstype {
                b"cgroup2" => unified.offer(root, &mount, paths.unified.as_ref(), Version::V2),
                b"cgroup" => {
                    if mount.has_option(b"memory") {
                        memory.offer(root, &mount, paths.memory_v1.as_ref(), Version::V1);
                    }
                    if mount.has_option(b"cpu") {
                        cpu.offer(root, &mount, paths.cpu_v1.as_ref(), Version::V1);
                    }
                }
                _ => {}
            }
        })
    });
    if read != Some(true) {
        return Location::NONE;
    }
    Location {
        memory: memory.dir.or(unified.dir),
        cpu: cpu.dir.or(unified.dir),
        unified: unified.dir,
    }
}

/// The directory of cgroup `cgroup` under `mount`: the mount point
/// followed by the cgroup's path with the mount's root taken off its
/// front. Inside a container the mount's root is the container's cgroup
/// (`/docker/<id>`) while `/proc/self/cgroup` may still name the full path.
/// When the root does not contain the path (a cgroup namespace whose view
/// starts elsewhere, a path with `..`), the mount point itself is the
/// nearest directory that can be trusted; `false` then says so.
fn join(test_root: &[u8], mount: &MountLine<'_>, cgroup: &[u8], version: Version) -> Option<(Dir, bool)> {
    let mut path = StackPath::new();
    path.push(test_root)?;
    path.push_unescaped(mount.mount_point)?;
    path.trim_trailing_slashes();
    let top = path.len;

    let mut mount_root = StackPath::new();
    mount_root.push_unescaped(mount.root)?;
    mount_root.trim_trailing_slashes();
    let mount_root = mount_root.as_bytes();

    let below = cgroup
        .strip_prefix(mount_root)
        .filter(|rest| rest.is_empty() || rest.starts_with(b"/"))
        .filter(|rest| !rest.split(|&b| b == b'/').any(|c| c == b".."));
    let exact = below.is_some();
    path.push(below.unwrap_or(b""))?;
    path.trim_trailing_slashes();
    // A mount at `/` with the root cgroup leaves an empty path; `top`
    // cannot be past the end in any case.
    let top = top.min(path.len);
    Some((Dir { path, top, version }, exact))
}

/// Calls `f` on every line of file `path` (without its newline), reading it
/// in pieces of `buf`'s size; a line longer than `buf` is skipped. Returns
/// false if the file cannot be opened.
fn for_each_line(path: &CStr, buf: &mut [u8], mut f: impl FnMut(&[u8])) -> bool {
    // SAFETY: `path` is NUL-terminated; the flags ask for read-only access.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // Bytes of an unfinished line at the front of `buf`.
    let mut kept = 0;
    // Inside a line too long for `buf`, dropped up to its newline.
    let mut skipping = false;
    loop {
        let free = &mut buf[kept..];
        // SAFETY: `free` is a writable buffer of the length passed.
        let n = unsafe { libc::read(fd, free.as_mut_ptr().cast(), free.len()) };
        if n < 0 && crate::os::OsError::last().errno == libc::EINTR {
            continue;
        }
        if n <= 0 {
            // End of file (or an error): a last line without a newline.
            if n == 0 && kept > 0 && !skipping {
                f(&buf[..kept]);
            }
            break;
        }
        let end = kept + n as usize;
        let mut start = 0;
        while let Some(at) = buf[start..end].iter().position(|&b| b == b'\n') {
            if !skipping {
                f(&buf[start..start + at]);
            }
            skipping = false;
            start += at + 1;
        }
        if start == 0 && end == buf.len() {
            skipping = true;
            kept = 0;
        } else {
            buf.copy_within(start..end, 0);
            kept = end - start;
        }
    }
    // SAFETY: `fd` is the descriptor opened above, closed exactly once.
    unsafe { libc::close(fd) };
    true
}

/// Reads a small file of `dir` (one value) into `buf`; the bytes read.
fn read_small<'b>(dir: &[u8], name: &[u8], buf: &'b mut [u8; 64]) -> Option<&'b [u8]> {
    let n = with_file_in(dir, name, |file| crate::os::read_file_into(file, buf))??;
    buf.get(..n)
}

/// A memory value file of `dir` (see [`parse_memory_value`]).
fn read_memory_file(dir: &[u8], name: &[u8]) -> Option<usize> {
    parse_memory_value(read_small(dir, name, &mut [0; 64])?)
}

/// Keeps the smaller of a known minimum and a new value; true if the new
/// one is smaller.
fn take_min<T: PartialOrd + Copy>(min: &mut Option<T>, value: Option<T>) -> bool {
    match value {
        Some(v) if min.is_none_or(|m| v < m) => {
            *min = Some(v);
            true
        }
        _ => false,
    }
}

/// The memory limits in force now. File reads per call: on v2, two per
/// directory from the process's cgroup up to the mount point, plus one;
/// on v1, one per directory plus two (`memory.stat` and the usage).
pub fn read_memory(location: &Location) -> MemoryLimits {
    let Some(dir) = &location.memory else { return MemoryLimits::NONE };
    let mut limits = MemoryLimits::NONE;
    match dir.version {
        Version::V2 => {
            for (up, level) in dir.ancestors().enumerate() {
                if take_min(&mut limits.max, read_memory_file(level, b"memory.max")) {
                    limits.source = Source::V2 { levels_up: saturate(up) };
                }
                take_min(&mut limits.high, read_memory_file(level, b"memory.high"));
            }
            limits.usage = read_memory_file(dir.path(), b"memory.current");
        }
        Version::V1 => {
            for (up, level) in dir.ancestors().enumerate() {
                if take_min(&mut limits.max, read_memory_file(level, b"memory.limit_in_bytes")) {
                    limits.source = Source::V1 { levels_up: saturate(up) };
                }
            }
            if take_min(&mut limits.max, hierarchical_memory_limit(dir)) {
                limits.source = Source::V1Hierarchical;
            }
            limits.usage = read_memory_file(dir.path(), b"memory.usage_in_bytes");
        }
    }
    limits
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// v1's `hierarchical_memory_limit` from the cgroup's `memory.stat`.
fn hierarchical_memory_limit(dir: &Dir) -> Option<usize> {
    let mut buf = [0u8; 1024];
    let mut value = None;
    dir.with_file(b"memory.stat", |file| {
        for_each_line(file, &mut buf, |line| {
            if let Some(rest) = line.strip_prefix(b"hierarchical_memory_limit ") {
                value = parse_memory_value(rest);
            }
        })
    })?;
    value
}

/// The CPUs the process's cgroup quota allows (0.5: half of one CPU's
/// time), the smallest from the process's cgroup up to the mount point;
/// `None` without a quota. File reads per call: one per directory on v2,
/// two on v1. The affinity mask is [`crate::os::cpu_count`]'s business.
pub fn cpu_limit(location: &Location) -> Option<f64> {
    let dir = location.cpu.as_ref()?;
    let mut min = None;
    for level in dir.ancestors() {
        let cpus = match dir.version {
            Version::V2 => read_small(level, b"cpu.max", &mut [0; 64]).and_then(parse_cpu_max),
            Version::V1 => {
                let mut quota = [0; 64];
                let mut period = [0; 64];
                // The period is read only under a quota (`-1` is none).
                match read_small(level, b"cpu.cfs_quota_us", &mut quota) {
                    Some(q) if q.trim_ascii() != b"-1" => {
                        read_small(level, b"cpu.cfs_period_us", &mut period).and_then(|p| parse_cfs_quota(q, p))
                    }
                    _ => None,
                }
            }
        };
        take_min(&mut min, cpus);
    }
    min
}
