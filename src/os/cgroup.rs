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
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
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
        write!(f, "{:?} {} (mount {})", self.version, self.path().escape_ascii(), self.path()[..self.top].escape_ascii())
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
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    pub fn memory_dir(&self) -> Option<&Dir> {
        self.memory.as_ref()
    }

    /// The directory whose files hold the CPU controller's quota.
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
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
        }
    }
    limits.usage = read_usage(location);
    limits
}

/// The bytes charged to the process's cgroup now (`memory.current` on v2,
/// `memory.usage_in_bytes` on v1): one file read, for a caller that
/// watches the headroom more often than it re-reads the limits.
pub fn read_usage(location: &Location) -> Option<usize> {
    let dir = location.memory.as_ref()?;
    let name: &[u8] = match dir.version {
        Version::V2 => b"memory.current",
        Version::V1 => b"memory.usage_in_bytes",
    };
    read_memory_file(dir.path(), name)
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The cgroup's *working set*: its usage minus its inactive file cache,
/// which the kernel reclaims before it runs out (the measure Kubernetes
/// evicts on). A memory cgroup fills up to its limit with file cache in
/// normal operation, so usage alone would look like a cgroup always at its
/// limit. Returns the usage and the working set, from two file reads: the
/// usage and `memory.stat`.
pub fn read_working_set(location: &Location) -> Option<(usize, usize)> {
    let usage = read_usage(location)?;
    let dir = location.memory.as_ref()?;
    let key: &[u8] = match dir.version {
        Version::V2 => b"inactive_file ",
        Version::V1 => b"total_inactive_file ",
    };
    let mut buf = [0u8; 1024];
    let mut inactive = None;
    dir.with_file(b"memory.stat", |file| {
        for_each_line(file, &mut buf, |line| {
            if let Some(rest) = line.strip_prefix(key) {
                inactive = crate::os::parse_decimal(rest);
            }
        })
    });
    Some((usage, usage.saturating_sub(inactive.unwrap_or(0))))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::string::String;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fake file tree in a fresh temporary directory, removed on drop.
    struct Tree {
        root: PathBuf,
    }

    impl Tree {
        fn new(name: &str) -> Tree {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let root = std::env::temp_dir().join(std::format!("scavalloc-cgroup-{}-{n}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            Tree { root }
        }

        /// Writes `text` to `rel` (a path without its leading `/`).
        fn write(&self, rel: &str, text: &str) {
            let path = self.root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }

        fn remove(&self, rel: &str) {
            std::fs::remove_file(self.root.join(rel)).unwrap();
        }

        fn detect(&self) -> Location {
            detect_under(self.root.as_os_str().as_bytes())
        }

        /// The path of `rel` in the tree, as `Dir::path` shows it.
        fn path(&self, rel: &str) -> String {
            std::format!("{}/{rel}", self.root.display())
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    /// A mountinfo line, with optional fields as systemd hosts write them.
    fn mount(id: u32, root: &str, point: &str, fstype: &str, options: &str) -> String {
        std::format!("{id} 23 0:{id} {root} {point} rw,nosuid,nodev,noexec,relatime shared:{id} - {fstype} {fstype} {options}\n")
    }

    fn text(path: &[u8]) -> String {
        String::from_utf8(path.to_vec()).unwrap()
    }

    const GIB: usize = 1 << 30;
    const MIB: usize = 1 << 20;
    const V1_UNLIMITED: &str = "9223372036854771712\n";

    #[test]
    fn cgroup_lines() {
        let v1 = parse_cgroup_line(b"4:memory:/a/b").unwrap();
        assert_eq!(v1, CgroupLine { hierarchy: 4, controllers: b"memory", path: b"/a/b" });
        assert!(v1.has_controller(b"memory") && !v1.is_unified());
        let both = parse_cgroup_line(b"1:cpu,cpuacct:/x").unwrap();
        assert!(both.has_controller(b"cpu") && both.has_controller(b"cpuacct") && !both.has_controller(b"cpus"));
        let cpuset = parse_cgroup_line(b"3:cpuset:/").unwrap();
        assert!(!cpuset.has_controller(b"cpu"));
        let v2 = parse_cgroup_line(b"0::/user.slice/a:b.scope").unwrap();
        assert!(v2.is_unified());
        assert_eq!(v2.path, b"/user.slice/a:b.scope", "colons after the second belong to the path");
        assert!(!parse_cgroup_line(b"9:name=systemd:/").unwrap().is_unified());
        assert_eq!(parse_cgroup_line(b"x:memory:/"), None);
        assert_eq!(parse_cgroup_line(b"4:memory"), None);
        assert_eq!(parse_cgroup_line(b""), None);
    }

    #[test]
    fn mountinfo_lines() {
        let line = b"35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:15 master:2 - cgroup cgroup rw,memory";
        let m = parse_mountinfo_line(line).unwrap();
        assert_eq!(
            m,
            MountLine { root: b"/", mount_point: b"/sys/fs/cgroup/memory", fstype: b"cgroup", super_options: b"rw,memory" }
        );
        assert!(m.has_option(b"memory") && !m.has_option(b"mem"));
        let none = parse_mountinfo_line(b"41 31 0:38 /docker/ab /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate").unwrap();
        assert_eq!((none.root, none.fstype), (&b"/docker/ab"[..], &b"cgroup2"[..]));
        assert!(none.has_option(b"nsdelegate"));
        assert_eq!(parse_mountinfo_line(b"41 31 0:38 / /x rw shared:1"), None, "no separator");
        assert_eq!(parse_mountinfo_line(b"41 31 0:38 /"), None);
    }

    #[test]
    fn values() {
        assert_eq!(parse_memory_value(b"1073741824\n"), Some(GIB));
        assert_eq!(parse_memory_value(b"max\n"), None);
        assert_eq!(parse_memory_value(V1_UNLIMITED.as_bytes()), None);
        assert_eq!(parse_memory_value(b"4611686018427387903"), Some((1 << 62) - 1));
        assert_eq!(parse_memory_value(b"4611686018427387904"), None);
        assert_eq!(parse_memory_value(b"-1"), None);
        assert_eq!(parse_cpu_max(b"max 100000\n"), None);
        assert_eq!(parse_cpu_max(b"50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max(b"250000 100000"), Some(2.5));
        assert_eq!(parse_cpu_max(b"50000 0"), None);
        assert_eq!(parse_cpu_max(b"50000"), None);
        assert_eq!(parse_cfs_quota(b"-1\n", b"100000\n"), None);
        assert_eq!(parse_cfs_quota(b"150000\n", b"100000\n"), Some(1.5));
        assert_eq!(parse_cfs_quota(b"0", b"100000"), None);
    }

    #[test]
    fn escaped_fields_decode() {
        let mut p = StackPath::new();
        p.push_unescaped(br"/mnt/a\040b\134c\011").unwrap();
        assert_eq!(p.as_bytes(), b"/mnt/a b\\c\t");
        let mut p = StackPath::new();
        p.push_unescaped(br"/x\04").unwrap();
        assert_eq!(p.as_bytes(), br"/x\04", "a cut-off escape stays as written");
    }

    #[test]
    fn source_display() {
        let shown = |s: Source| std::format!("{s}");
        assert_eq!(shown(Source::None), "none");
        assert_eq!(shown(Source::V2 { levels_up: 0 }), "cgroup v2 memory.max");
        assert_eq!(shown(Source::V1 { levels_up: 1 }), "cgroup v1 memory.limit_in_bytes, 1 level up");
        assert_eq!(shown(Source::V2 { levels_up: 3 }), "cgroup v2 memory.max, 3 levels up");
        assert_eq!(shown(Source::V1Hierarchical), "cgroup v1 hierarchical_memory_limit");
    }

    /// A v1 tree: memory at /sys/fs/cgroup/memory, cpu and cpuacct
    /// together, cpuset listed first (its name starts with `cpu`).
    fn v1_tree(name: &str) -> Tree {
        let t = Tree::new(name);
        t.write("proc/self/cgroup", "5:cpuset:/\n4:memory:/a/b\n2:cpu,cpuacct:/a/b\n1:name=systemd:/\n");
        let mut mi = mount(30, "/", "/sys/fs/cgroup", "tmpfs", "rw,mode=755");
        mi += &mount(31, "/", "/sys/fs/cgroup/cpuset", "cgroup", "rw,cpuset");
        mi += &mount(32, "/", "/sys/fs/cgroup/memory", "cgroup", "rw,memory");
        mi += &mount(33, "/", "/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct");
        t.write("proc/self/mountinfo", &mi);
        t
    }

    #[test]
    fn v1_parent_limit_wins_then_hierarchical() {
        let t = v1_tree("v1");
        let loc = t.detect();
        let mem = loc.memory_dir().unwrap();
        assert_eq!((mem.version(), text(mem.path())), (Version::V1, t.path("sys/fs/cgroup/memory/a/b")));
        assert_eq!(text(loc.cpu_dir().unwrap().path()), t.path("sys/fs/cgroup/cpu,cpuacct/a/b"));
        assert!(loc.unified_dir().is_none());

        t.write("sys/fs/cgroup/memory/memory.limit_in_bytes", V1_UNLIMITED);
        t.write("sys/fs/cgroup/memory/a/memory.limit_in_bytes", "1073741824\n");
        t.write("sys/fs/cgroup/memory/a/b/memory.limit_in_bytes", "2147483648\n");
        t.write("sys/fs/cgroup/memory/a/b/memory.usage_in_bytes", "12345\n");
        t.write("sys/fs/cgroup/memory/a/b/memory.stat", "cache 0\nrss 4096\n");
        let got = read_memory(&loc);
        assert_eq!(got, MemoryLimits { max: Some(GIB), high: None, usage: Some(12345), source: Source::V1 { levels_up: 1 } });

        // The kernel's hierarchical minimum covers ancestors the mount
        // does not show, so a smaller one wins.
        t.write(
            "sys/fs/cgroup/memory/a/b/memory.stat",
            "cache 0\nrss 4096\nhierarchical_memory_limit 536870912\nhierarchical_memsw_limit 9223372036854771712\n",
        );
        let got = read_memory(&loc);
        assert_eq!((got.max, got.source), (Some(512 * MIB), Source::V1Hierarchical));

        // A larger hierarchical value leaves the walked minimum in charge.
        t.write("sys/fs/cgroup/memory/a/b/memory.stat", "hierarchical_memory_limit 2147483648\n");
        assert_eq!(read_memory(&loc).source, Source::V1 { levels_up: 1 });
        t.write("sys/fs/cgroup/memory/a/b/memory.limit_in_bytes", "104857600\n");
        let got = read_memory(&loc);
        assert_eq!((got.max, got.source), (Some(100 * MIB), Source::V1 { levels_up: 0 }));

        // v1's working set: `total_inactive_file` (the hierarchy's), not
        // the cgroup's own `inactive_file`.
        t.write("sys/fs/cgroup/memory/a/b/memory.stat", "inactive_file 100\ntotal_inactive_file 2345\n");
        assert_eq!(read_working_set(&loc), Some((12345, 12345 - 2345)));
    }

    #[test]
    fn v1_cfs_quota() {
        let t = v1_tree("cfs");
        let loc = t.detect();
        assert_eq!(cpu_limit(&loc), None, "no files: no quota");
        t.write("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
        t.write("sys/fs/cgroup/cpu,cpuacct/a/b/cpu.cfs_quota_us", "-1\n");
        t.write("sys/fs/cgroup/cpu,cpuacct/a/b/cpu.cfs_period_us", "100000\n");
        assert_eq!(cpu_limit(&loc), None);
        t.write("sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_quota_us", "300000\n");
        t.write("sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_period_us", "100000\n");
        assert_eq!(cpu_limit(&loc), Some(3.0));
        t.write("sys/fs/cgroup/cpu,cpuacct/a/b/cpu.cfs_quota_us", "25000\n");
        t.write("sys/fs/cgroup/cpu,cpuacct/a/b/cpu.cfs_period_us", "50000\n");
        assert_eq!(cpu_limit(&loc), Some(0.5));
    }

    fn v2_tree(name: &str) -> Tree {
        let t = Tree::new(name);
        t.write("proc/self/cgroup", "0::/user.slice/app.service\n");
        let mut mi = mount(22, "/", "/", "ext4", "rw");
        mi += &mount(30, "/", "/sys/fs/cgroup", "cgroup2", "rw,nsdelegate,memory_recursiveprot");
        t.write("proc/self/mountinfo", &mi);
        t
    }

    #[test]
    fn v2_nested_max_and_high() {
        let t = v2_tree("v2");
        let loc = t.detect();
        let mem = loc.memory_dir().unwrap();
        assert_eq!((mem.version(), text(mem.path())), (Version::V2, t.path("sys/fs/cgroup/user.slice/app.service")));
        assert_eq!(loc.unified_dir().unwrap().path(), mem.path());
        assert_eq!(loc.cpu_dir().unwrap().path(), mem.path());

        assert_eq!(read_memory(&loc), MemoryLimits::NONE, "no files yet");
        t.write("sys/fs/cgroup/user.slice/memory.max", "2147483648\n");
        t.write("sys/fs/cgroup/user.slice/memory.high", "max\n");
        t.write("sys/fs/cgroup/user.slice/app.service/memory.max", "max\n");
        t.write("sys/fs/cgroup/user.slice/app.service/memory.high", "1073741824\n");
        t.write("sys/fs/cgroup/user.slice/app.service/memory.current", "4096\n");
        let got = read_memory(&loc);
        assert_eq!(
            got,
            MemoryLimits { max: Some(2 * GIB), high: Some(GIB), usage: Some(4096), source: Source::V2 { levels_up: 1 } }
        );
        t.write("sys/fs/cgroup/user.slice/app.service/memory.current", "8192\n");
        assert_eq!(read_usage(&loc), Some(8192));
        assert_eq!(read_usage(&Location::NONE), None);
        // The working set leaves the inactive file cache out.
        assert_eq!(read_working_set(&loc), Some((8192, 8192)), "no memory.stat: the usage");
        t.write(
            "sys/fs/cgroup/user.slice/app.service/memory.stat",
            "anon 4096\nfile 4096\nactive_file 1024\ninactive_file 3072\n",
        );
        assert_eq!(read_working_set(&loc), Some((8192, 8192 - 3072)));
        // A file above the mount point is never read.
        t.write("sys/fs/memory.max", "4096\n");
        t.write("sys/memory.max", "4096\n");
        assert_eq!(read_memory(&loc).max, Some(2 * GIB));
    }

    #[test]
    fn v2_cpu_max_smallest_up_the_tree() {
        let t = v2_tree("cpumax");
        let loc = t.detect();
        t.write("sys/fs/cgroup/user.slice/cpu.max", "max 100000\n");
        t.write("sys/fs/cgroup/user.slice/app.service/cpu.max", "150000 100000\n");
        assert_eq!(cpu_limit(&loc), Some(1.5));
        t.write("sys/fs/cgroup/user.slice/cpu.max", "50000 100000\n");
        assert_eq!(cpu_limit(&loc), Some(0.5));
        t.write("sys/fs/cgroup/user.slice/cpu.max", "max 100000\n");
        t.write("sys/fs/cgroup/user.slice/app.service/cpu.max", "max 100000\n");
        assert_eq!(cpu_limit(&loc), None);
    }

    #[test]
    fn unlimited_everywhere() {
        let t = v1_tree("unlimited1");
        for dir in ["", "a/", "a/b/"] {
            t.write(&std::format!("sys/fs/cgroup/memory/{dir}memory.limit_in_bytes"), V1_UNLIMITED);
        }
        t.write("sys/fs/cgroup/memory/a/b/memory.stat", "hierarchical_memory_limit 9223372036854771712\n");
        let got = read_memory(&t.detect());
        assert_eq!((got.max, got.high, got.source), (None, None, Source::None));

        let t = v2_tree("unlimited2");
        for dir in ["", "user.slice/", "user.slice/app.service/"] {
            t.write(&std::format!("sys/fs/cgroup/{dir}memory.max"), "max\n");
            t.write(&std::format!("sys/fs/cgroup/{dir}memory.high"), "max\n");
        }
        let got = read_memory(&t.detect());
        assert_eq!((got.max, got.high, got.source), (None, None, Source::None));
    }

    #[test]
    fn limit_changes_between_reads() {
        let t = v2_tree("change");
        let loc = t.detect();
        t.write("sys/fs/cgroup/user.slice/app.service/memory.max", "1073741824\n");
        assert_eq!(read_memory(&loc).max, Some(GIB));
        t.write("sys/fs/cgroup/user.slice/app.service/memory.max", "268435456\n");
        assert_eq!(read_memory(&loc).max, Some(256 * MIB));
        t.write("sys/fs/cgroup/user.slice/app.service/memory.max", "max\n");
        assert_eq!(read_memory(&loc).max, None);
        t.remove("sys/fs/cgroup/user.slice/app.service/memory.max");
        assert_eq!(read_memory(&loc).max, None);
    }

    /// This machine's layout: v2 mounted without controllers at
    /// /sys/fs/cgroup/unified, the v1 memory and cpu controllers beside it.
    #[test]
    fn hybrid_takes_v1_memory_and_keeps_v2_dir() {
        let t = Tree::new("hybrid");
        t.write("proc/self/cgroup", "9:name=systemd:/\n4:memory:/process_api/c97c\n3:cpuset:/\n1:cpu:/\n0::/\n");
        let mut mi = mount(31, "/", "/sys/fs/cgroup", "tmpfs", "rw,mode=755");
        mi += &mount(32, "/", "/sys/fs/cgroup/cpu", "cgroup", "rw,cpu");
        mi += &mount(34, "/", "/sys/fs/cgroup/cpuset", "cgroup", "rw,cpuset");
        mi += &mount(35, "/", "/sys/fs/cgroup/memory", "cgroup", "rw,memory");
        mi += &mount(40, "/", "/sys/fs/cgroup/systemd", "cgroup", "rw,name=systemd");
        mi += &mount(41, "/", "/sys/fs/cgroup/unified", "cgroup2", "rw");
        t.write("proc/self/mountinfo", &mi);
        t.write("sys/fs/cgroup/unified/memory.pressure", "some avg10=0.00\n");
        t.write("sys/fs/cgroup/memory/memory.limit_in_bytes", V1_UNLIMITED);
        t.write("sys/fs/cgroup/memory/process_api/memory.limit_in_bytes", "943718400\n");
        t.write("sys/fs/cgroup/memory/process_api/c97c/memory.limit_in_bytes", V1_UNLIMITED);
        t.write("sys/fs/cgroup/memory/process_api/c97c/memory.usage_in_bytes", "3149824\n");
        t.write("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n");
        t.write("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");

        let loc = t.detect();
        let mem = loc.memory_dir().unwrap();
        assert_eq!((mem.version(), text(mem.path())), (Version::V1, t.path("sys/fs/cgroup/memory/process_api/c97c")));
        let cpu = loc.cpu_dir().unwrap();
        assert_eq!((cpu.version(), text(cpu.path())), (Version::V1, t.path("sys/fs/cgroup/cpu")));
        let unified = loc.unified_dir().unwrap();
        assert_eq!((unified.version(), text(unified.path())), (Version::V2, t.path("sys/fs/cgroup/unified")));
        assert_eq!(
            read_memory(&loc),
            MemoryLimits { max: Some(900 * MIB), high: None, usage: Some(3149824), source: Source::V1 { levels_up: 1 } }
        );
        assert_eq!(cpu_limit(&loc), None);
        t.write("sys/fs/cgroup/memory/process_api/c97c/memory.usage_in_bytes", "4194304\n");
        assert_eq!(read_usage(&loc), Some(4 << 20));
        let pressure = unified.with_file(b"memory.pressure", |p| std::fs::read(p.to_str().unwrap()).unwrap()).unwrap();
        assert_eq!(pressure, b"some avg10=0.00\n");
    }

    /// Inside a container the mount shows only the container's subtree:
    /// its root field is the container's cgroup, while /proc/self/cgroup
    /// (without a cgroup namespace) names the full path.
    #[test]
    fn container_mount_root_is_stripped() {
        let t = Tree::new("container");
        t.write("proc/self/cgroup", "0::/kubepods/pod1/ctr/worker\n4:memory:/docker/abc\n");
        let mut mi = mount(40, "/kubepods/pod1/ctr", "/sys/fs/cgroup", "cgroup2", "rw");
        mi += &mount(41, "/docker/abc", "/sys/fs/cgroup/memory", "cgroup", "ro,memory");
        t.write("proc/self/mountinfo", &mi);
        t.write("sys/fs/cgroup/memory.max", "536870912\n");
        t.write("sys/fs/cgroup/worker/memory.max", "max\n");
        t.write("sys/fs/cgroup/memory/memory.limit_in_bytes", "268435456\n");
        let loc = t.detect();
        assert_eq!(text(loc.unified_dir().unwrap().path()), t.path("sys/fs/cgroup/worker"));
        assert_eq!(text(loc.memory_dir().unwrap().path()), t.path("sys/fs/cgroup/memory"));
        assert_eq!(read_memory(&loc).max, Some(256 * MIB));

        // Without a v1 memory controller, the v2 walk stops at the mount.
        t.write("proc/self/cgroup", "0::/kubepods/pod1/ctr/worker\n");
        let loc = t.detect();
        assert_eq!(loc.memory_dir().unwrap().path(), loc.unified_dir().unwrap().path());
        let got = read_memory(&loc);
        assert_eq!((got.max, got.source), (Some(512 * MIB), Source::V2 { levels_up: 1 }));

        // A root that is a prefix of a component name is not the path's
        // ancestor, and a path outside the mount's view (a cgroup
        // namespace's `..`) is not trusted: the mount point serves.
        t.write("proc/self/cgroup", "0::/kubepods/pod1/ctrl\n");
        assert_eq!(text(t.detect().unified_dir().unwrap().path()), t.path("sys/fs/cgroup"));
        t.write("proc/self/cgroup", "0::/kubepods/pod1/ctr/../other\n");
        assert_eq!(text(t.detect().unified_dir().unwrap().path()), t.path("sys/fs/cgroup"));

        // With a cgroup namespace both sides say `/`.
        t.write("proc/self/cgroup", "0::/\n");
        t.write("proc/self/mountinfo", &mount(40, "/", "/sys/fs/cgroup", "cgroup2", "rw"));
        assert_eq!(text(t.detect().unified_dir().unwrap().path()), t.path("sys/fs/cgroup"));
    }

    #[test]
    fn a_mount_containing_the_path_beats_an_earlier_one() {
        let t = Tree::new("prefer");
        t.write("proc/self/cgroup", "0::/app\n");
        let mut mi = mount(40, "/elsewhere", "/mnt/other", "cgroup2", "rw");
        mi += &mount(41, "/", "/sys/fs/cgroup", "cgroup2", "rw");
        mi += &mount(42, "/", "/mnt/later", "cgroup2", "rw");
        t.write("proc/self/mountinfo", &mi);
        assert_eq!(text(t.detect().unified_dir().unwrap().path()), t.path("sys/fs/cgroup/app"));
    }

    #[test]
    fn escaped_mount_point() {
        let t = Tree::new("escaped");
        t.write("proc/self/cgroup", "0::/a b\n");
        t.write("proc/self/mountinfo", &mount(40, "/", r"/mnt/cg\040two", "cgroup2", "rw"));
        t.write("mnt/cg two/a b/memory.max", "8192\n");
        let loc = t.detect();
        assert_eq!(text(loc.memory_dir().unwrap().path()), t.path("mnt/cg two/a b"));
        assert_eq!(read_memory(&loc).max, Some(8192));
    }

    #[test]
    fn too_long_or_missing_means_no_cgroup() {
        let t = Tree::new("long");
        let deep = std::format!("/{}", "d".repeat(PATH_CAPACITY));
        t.write("proc/self/cgroup", &std::format!("0::{deep}\n"));
        t.write("proc/self/mountinfo", &mount(40, "/", "/sys/fs/cgroup", "cgroup2", "rw"));
        let loc = t.detect();
        assert!(loc.memory_dir().is_none() && loc.unified_dir().is_none());
        assert_eq!(read_memory(&loc), MemoryLimits::NONE);

        let t = Tree::new("missing");
        let loc = t.detect();
        assert!(loc.memory_dir().is_none() && loc.cpu_dir().is_none() && loc.unified_dir().is_none());
        t.write("proc/self/cgroup", "0::/\n");
        assert!(t.detect().unified_dir().is_none(), "no mountinfo");
        t.write("proc/self/mountinfo", &mount(22, "/", "/", "ext4", "rw"));
        assert!(t.detect().unified_dir().is_none(), "no cgroup2 mount");
    }

    #[test]
    fn lines_across_reads_and_too_long() {
        let t = Tree::new("lines");
        t.write("f", "one\ntwo two two two\nthree\n\nfour");
        let path = std::ffi::CString::new(t.path("f")).unwrap();
        let mut seen = std::vec::Vec::new();
        // An 8-byte buffer: lines cross reads, and "two two two two" is
        // longer than the buffer, so it is skipped whole.
        assert!(for_each_line(&path, &mut [0; 8], |l| seen.push(text(l))));
        assert_eq!(seen, ["one", "three", "", "four"]);
        seen.clear();
        assert!(for_each_line(&path, &mut [0; 64], |l| seen.push(text(l))));
        assert_eq!(seen, ["one", "two two two two", "three", "", "four"]);
        assert!(!for_each_line(c"/nonexistent/scavalloc", &mut [0; 8], |_| {}));
    }

    /// The directory of `controller` as a plain std reading of the same
    /// files finds it (for the test on the real machine), with its mount
    /// point.
    fn model_dir(controller: &str) -> Option<(PathBuf, PathBuf)> {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let entries: std::vec::Vec<(&str, &str)> = cgroup
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let _ = parts.next()?;
                Some((parts.next()?, parts.next()?))
            })
            .collect();
        let find = |v2: bool| -> Option<(PathBuf, PathBuf)> {
            let path = entries
                .iter()
                .find(|(c, _)| if v2 { c.is_empty() } else { c.split(',').any(|c| c == controller) })?
                .1;
            mountinfo.lines().find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let left: std::vec::Vec<&str> = left.split(' ').collect();
                let right: std::vec::Vec<&str> = right.split(' ').collect();
                let fits = if v2 {
                    right[0] == "cgroup2"
                } else {
                    right[0] == "cgroup" && right[2].split(',').any(|o| o == controller)
                };
                let root = left[3].trim_end_matches('/');
                let rest = path.strip_prefix(root)?;
                (fits && (rest.is_empty() || rest.starts_with('/'))).then(|| {
                    let point = PathBuf::from(left[4]);
                    (PathBuf::from(std::format!("{}{}", left[4].trim_end_matches('/'), rest.trim_end_matches('/'))), point)
                })
            })
        };
        find(false).or_else(|| find(true))
    }

    fn model_read(path: &Path) -> Option<usize> {
        let text = std::fs::read_to_string(path).ok()?;
        let v: u64 = text.trim().parse().ok()?;
        (v < 1 << 62).then_some(v as usize)
    }

    /// This process's real limits agree with a plain std reading of the
    /// same files (no limit at all where the machine has no cgroup).
    #[test]
    fn real_machine_matches_std_reading() {
        let loc = detect_under(b"");
        let Some((dir, point)) = model_dir("memory") else {
            assert!(loc.memory_dir().is_none());
            assert_eq!(read_memory(&loc), MemoryLimits::NONE);
            return;
        };
        let mem = loc.memory_dir().expect("std finds a memory cgroup directory");
        assert_eq!(Path::new(std::ffi::OsStr::from_bytes(mem.path())), dir);
        let v2 = mem.version() == Version::V2;
        let mut max: Option<usize> = None;
        let mut high: Option<usize> = None;
        let mut level = dir.as_path();
        loop {
            let limit = model_read(&level.join(if v2 { "memory.max" } else { "memory.limit_in_bytes" }));
            max = match (max, limit) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if v2 {
                if let Some(h) = model_read(&level.join("memory.high")) {
                    high = Some(high.map_or(h, |m| m.min(h)));
                }
            }
            if level == point {
                break;
            }
            level = level.parent().unwrap();
        }
        if !v2 {
            let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
            let hier = stat.lines().find_map(|l| l.strip_prefix("hierarchical_memory_limit ")?.parse::<u64>().ok());
            if let Some(h) = hier.filter(|&h| h < 1 << 62) {
                max = Some(max.map_or(h as usize, |m| m.min(h as usize)));
            }
        }
        let usage_file = dir.join(if v2 { "memory.current" } else { "memory.usage_in_bytes" });
        let before = model_read(&usage_file);
        let got = read_memory(&loc);
        let after = model_read(&usage_file);
        assert_eq!((got.max, got.high), (max, high));
        assert_eq!(got.source == Source::None, max.is_none());
        match (before, got.usage, after) {
            (Some(a), Some(u), Some(b)) => {
                let slack = 16 * MIB;
                assert!(u + slack >= a.min(b) && u <= a.max(b) + slack, "usage {u} outside {a}..{b}");
            }
            (a, u, b) => assert!(a.is_none() && u.is_none() && b.is_none(), "{a:?} {u:?} {b:?}"),
        }

        // The CPU quota: the same walk over the cpu directory.
        let cpu = loc.cpu_dir();
        let model_cpu = model_dir("cpu").map(|(dir, point)| {
            let v2 = cpu.is_some_and(|c| c.version() == Version::V2);
            let mut min: Option<f64> = None;
            let mut level = dir.as_path();
            loop {
                let cpus = if v2 {
                    std::fs::read(level.join("cpu.max")).ok().and_then(|t| parse_cpu_max(&t))
                } else {
                    match (std::fs::read(level.join("cpu.cfs_quota_us")), std::fs::read(level.join("cpu.cfs_period_us"))) {
                        (Ok(q), Ok(p)) => parse_cfs_quota(&q, &p),
                        _ => None,
                    }
                };
                if let Some(c) = cpus {
                    min = Some(min.map_or(c, |m| m.min(c)));
                }
                if level == point {
                    break;
                }
                level = level.parent().unwrap();
            }
            min
        });
        assert_eq!(cpu_limit(&loc), model_cpu.flatten());
    }
}
