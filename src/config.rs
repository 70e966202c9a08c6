//! Configuration from environment variables, read once at start-up.
//!
//! Variables are read with `getenv` (no allocation) the first time the
//! allocator needs its configuration. A value that does not parse gets one
//! warning line naming the variable, the bad value and the value used
//! instead; the program always goes on.

use core::fmt::Write;

use crate::os::{self, ReleaseMode};
use crate::report::{warn, LineBuf};
use crate::scavenge::goals::Settings;

/// The allocator's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// `SCAVALLOC_STATS=1`: print a statistics summary to stderr at exit.
    pub print_stats: bool,
    /// `SCAVALLOC_RELEASE=dontneed|free`: how free pages are given back.
    pub release_mode: ReleaseMode,
    /// The scavenger's settings: `SCAVALLOC_SCAVENGE_PERCENT`,
    /// `SCAVALLOC_RETAIN_EXTRA_PERCENT`, `SCAVALLOC_MEMLIMIT`,
    /// `SCAVALLOC_BACKGROUND`, `SCAVALLOC_SCAVTRACE`,
    /// `SCAVALLOC_DEEP_RELEASE`.
    pub scavenger: Settings,
    /// `SCAVALLOC_ARENA_QUARANTINE`: address space of freed user arenas
    /// kept faulting before it is reused, in bytes.
    pub arena_quarantine: usize,
    /// `SCAVALLOC_CHECK=1`: the Rust API checks every free against the
    /// span's out-of-band state and the layout (as C's `free` always does).
    pub check: bool,
    /// `SCAVALLOC_CACHE_BUDGET`: bytes of objects all thread caches
    /// together may hold before the scavenger trims the largest (see
    /// `spans::cache::trim`).
    pub cache_budget: usize,
    /// `SCAVALLOC_THP=1`: let the kernel back the heap with transparent
    /// huge pages (off by default: in the kernel's `always` mode,
    /// khugepaged would fault released memory back in; see
    /// `os::set_huge_pages`).
    pub huge_pages: bool,
    /// The heap profiler's settings: `SCAVALLOC_PROF_RATE`,
    /// `SCAVALLOC_PROF_MAX`, `SCAVALLOC_PROF_SEED`, `SCAVALLOC_PROF_DUMP`,
    /// `SCAVALLOC_PROF_SIGNAL`.
    pub profile: crate::profile::Settings,
}

impl Config {
    /// The settings when no variable is set.
    pub const DEFAULT: Config = Config {
        print_stats: false,
        release_mode: ReleaseMode::DontNeed,
        scavenger: Settings::DEFAULT,
        arena_quarantine: 64 << 30,
        check: false,
        cache_budget: crate::spans::cache::trim::DEFAULT_BUDGET,
        huge_pages: false,
        profile: crate::profile::Settings::DEFAULT,
    };
}

static CONFIG: spin::Once<Config> = spin::Once::new();

/// The configuration, read from the environment on first call.
#[inline]
pub fn get() -> &'static Config {
    CONFIG.call_once(|| {
        let config = from_lookup(os::getenv);
        os::set_release_mode(config.release_mode);
        os::set_huge_pages(config.huge_pages);
        config
    })
}

/// Builds a configuration from a variable lookup (the environment, or a
/// table in tests), warning about every bad value.
pub fn from_lookup(lookup: impl Fn(&core::ffi::CStr) -> Option<&'static [u8]>) -> Config {
    let mut c = Config::DEFAULT;
    if let Some(v) = lookup(c"SCAVALLOC_STATS") {
        c.print_stats = parse_flag(v).unwrap_or_else(|| bad_value("SCAVALLOC_STATS", v, "0", false));
    }
    if let Some(v) = lookup(c"SCAVALLOC_RELEASE") {
        c.release_mode = match v.trim_ascii() {
            b"dontneed" | b"DONTNEED" => ReleaseMode::DontNeed,
            b"free" | b"FREE" => ReleaseMode::Free,
            _ => bad_value("SCAVALLOC_RELEASE", v, "dontneed", ReleaseMode::DontNeed),
        };
    }
    if let Some(v) = lookup(c"SCAVALLOC_ARENA_QUARANTINE") {
        c.arena_quarantine = match parse_bytes(v) {
            Some(b) => usize::try_from(b).unwrap_or(usize::MAX),
            None => bad_value("SCAVALLOC_ARENA_QUARANTINE", v, "64GiB", 64 << 30),
        };
    }
    if let Some(v) = lookup(c"SCAVALLOC_CACHE_BUDGET") {
        c.cache_budget = match parse_bytes(v) {
            Some(b) => usize::try_from(b).unwrap_or(usize::MAX),
            None => bad_value("SCAVALLOC_CACHE_BUDGET", v, "32MiB", crate::spans::cache::trim::DEFAULT_BUDGET),
        };
    }
    if let Some(v) = lookup(c"SCAVALLOC_THP") {
        c.huge_pages = parse_flag(v).unwrap_or_else(|| bad_value("SCAVALLOC_THP", v, "0", false));
    }
    if let Some(v) = lookup(c"SCAVALLOC_CHECK") {
        c.check = parse_flag(v).unwrap_or_else(|| bad_value("SCAVALLOC_CHECK", v, "0", false));
    }
    let p = &mut c.profile;
    if let Some(v) = lookup(c"SCAVALLOC_PROF_RATE") {
        p.rate = match (parse_flag(v), parse_bytes(v).and_then(|b| usize::try_from(b).ok())) {
            (_, Some(b)) if b <= 1 << 40 => b,
            (Some(true), _) => crate::profile::STANDARD_RATE,
            (Some(false), _) => 0,
            _ => bad_value("SCAVALLOC_PROF_RATE", v, "512KiB", crate::profile::STANDARD_RATE),
        };
    }
    if let Some(v) = lookup(c"SCAVALLOC_PROF_MAX") {
        p.max_stacks = match parse_uint(v, 1 << 24) {
            Some(n) if n >= 1 => n as usize,
            _ => bad_value("SCAVALLOC_PROF_MAX", v, "16384", crate::profile::DEFAULT_MAX_STACKS),
        };
    }
    if let Some(v) = lookup(c"SCAVALLOC_PROF_SEED") {
        p.seed = parse_uint(v, u64::MAX).unwrap_or_else(|| bad_value("SCAVALLOC_PROF_SEED", v, "0 (a fresh seed)", 0));
    }
    if let Some(v) = lookup(c"SCAVALLOC_PROF_DUMP") {
        p.dump_path = match v.trim_ascii() {
            b"" => None,
            path => Some(path),
        };
    }
    if let Some(v) = lookup(c"SCAVALLOC_PROF_SIGNAL") {
        p.signal = match parse_uint(v, 64) {
            Some(n) if (1..=64).contains(&n) && ![libc::SIGKILL, libc::SIGSTOP].contains(&(n as i32)) => n as i32,
            _ => bad_value("SCAVALLOC_PROF_SIGNAL", v, "none", 0),
        };
    }
    let s = &mut c.scavenger;
    if let Some(v) = lookup(c"SCAVALLOC_SCAVENGE_PERCENT") {
        s.cpu_percent = parse_percent(v).unwrap_or_else(|| bad_value("SCAVALLOC_SCAVENGE_PERCENT", v, "1", 1.0));
    }
    if let Some(v) = lookup(c"SCAVALLOC_RETAIN_EXTRA_PERCENT") {
        s.retain_extra_percent = parse_uint(v, 10_000)
            .map(|n| n as usize)
            .unwrap_or_else(|| bad_value("SCAVALLOC_RETAIN_EXTRA_PERCENT", v, "10", 10));
    }
    if let Some(v) = lookup(c"SCAVALLOC_MEMLIMIT") {
        // Set at all, even to `off`: the control group's limit does not
        // apply.
        s.container_limit = false;
        s.memory_limit = match v.trim_ascii() {
            b"" | b"off" | b"none" => None,
            _ => match parse_bytes(v).and_then(|b| usize::try_from(b).ok()) {
                Some(0) => None,
                Some(b) => Some(b),
                None => bad_value("SCAVALLOC_MEMLIMIT", v, "no limit", None),
            },
        };
    }
    if let Some(v) = lookup(c"SCAVALLOC_PRESSURE_PERCENT") {
        s.pressure_percent =
            parse_percent(v).unwrap_or_else(|| bad_value("SCAVALLOC_PRESSURE_PERCENT", v, "10", 10.0));
    }
    if let Some(v) = lookup(c"SCAVALLOC_WINDOW_MAX") {
        let limit = crate::scavenge::window::LIMIT_NS / 1_000_000_000;
        s.window_max_ns = match parse_uint(v, limit) {
            Some(secs) if secs >= 1 => secs * 1_000_000_000,
            _ => bad_value("SCAVALLOC_WINDOW_MAX", v, "30", crate::scavenge::window::DEFAULT_MAX_NS),
        };
    }
    if let Some(v) = lookup(c"SCAVALLOC_BACKGROUND") {
        s.background = parse_flag(v).unwrap_or_else(|| bad_value("SCAVALLOC_BACKGROUND", v, "1", true));
    }
    if let Some(v) = lookup(c"SCAVALLOC_DEEP_RELEASE") {
        s.deep_release = parse_flag(v).unwrap_or_else(|| bad_value("SCAVALLOC_DEEP_RELEASE", v, "1", true));
    }
    if let Some(v) = lookup(c"SCAVALLOC_SCAVTRACE") {
        s.trace = parse_flag(v).unwrap_or_else(|| bad_value("SCAVALLOC_SCAVTRACE", v, "0", false));
    }
    c
}

/// A percentage above 0 and at most 100, with up to three decimals
/// (`1`, `0.5`, `2.25`).
pub fn parse_percent(v: &[u8]) -> Option<f64> {
    let v = v.trim_ascii();
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &b""[..]),
    };
    if frac.len() > 3 || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    let whole = if int.is_empty() { 0 } else { parse_uint(int, 100)? };
    let mut thousandths = 0;
    for (i, &b) in frac.iter().enumerate() {
        if !b.is_ascii_digit() {
            return None;
        }
        thousandths += u64::from(b - b'0') * [100, 10, 1][i];
    }
    let value = whole * 1000 + thousandths;
    (value > 0 && value <= 100_000).then(|| value as f64 / 1000.0)
}

/// Warns about a bad value and returns the default.
#[cold]
fn bad_value<T>(name: &str, value: &[u8], shown_default: &str, default: T) -> T {
    let mut shown = LineBuf::<64>::new();
    for &b in value.iter().take(48) {
        let _ = shown.write_char(if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' });
    }
    warn(format_args!("{name}={:?} is not valid; using {shown_default}", shown.as_str()));
    default
}

/// `0`/`1` (also `false`/`true`, `off`/`on`).
pub fn parse_flag(v: &[u8]) -> Option<bool> {
    match v.trim_ascii() {
        b"1" | b"true" | b"on" | b"yes" => Some(true),
        b"0" | b"false" | b"off" | b"no" => Some(false),
        _ => None,
    }
}

/// A non-negative integer no larger than `max`.
pub fn parse_uint(v: &[u8], max: u64) -> Option<u64> {
    // `usize` is 64 bits on every target scavalloc builds for.
    os::parse_decimal(v).map(|n| n as u64).filter(|&n| n <= max)
}

/// A byte count with an optional `B`, `KiB`, `MiB`, `GiB` or `TiB` suffix
/// (also `K`, `M`, `G`, `T`, and `KB`/`MB`/`GB`/`TB` meaning the same powers of
/// 1024, as Go's `GOMEMLIMIT` does not, but users write them).
pub fn parse_bytes(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    let digits = v.iter().position(|b| !b.is_ascii_digit()).unwrap_or(v.len());
    let n = parse_uint(&v[..digits], u64::MAX)?;
    let shift = match v[digits..].trim_ascii() {
        b"" | b"B" => 0,
        b"K" | b"KB" | b"KiB" => 10,
        b"M" | b"MB" | b"MiB" => 20,
        b"G" | b"GB" | b"GiB" => 30,
        b"T" | b"TB" | b"TiB" => 40,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_numbers() {
        assert_eq!(parse_flag(b"1"), Some(true));
        assert_eq!(parse_flag(b" 0\n"), Some(false));
        assert_eq!(parse_flag(b"2"), None);
        assert_eq!(parse_uint(b"42", 100), Some(42));
        assert_eq!(parse_uint(b"101", 100), None);
        assert_eq!(parse_uint(b"-1", 100), None);
        assert_eq!(parse_uint(b"", 100), None);
        assert_eq!(parse_bytes(b"256MiB"), Some(256 << 20));
        assert_eq!(parse_bytes(b"1 GiB"), Some(1 << 30));
        assert_eq!(parse_bytes(b"4096"), Some(4096));
        assert_eq!(parse_bytes(b"3K"), Some(3072));
        assert_eq!(parse_bytes(b"12XB"), None);
        assert_eq!(parse_bytes(b"MiB"), None);
        assert_eq!(parse_bytes(b"99999999999999999999GiB"), None);
        assert_eq!(parse_percent(b"1"), Some(1.0));
        assert_eq!(parse_percent(b"0.5"), Some(0.5));
        assert_eq!(parse_percent(b"2.25"), Some(2.25));
        assert_eq!(parse_percent(b"100"), Some(100.0));
        assert_eq!(parse_percent(b"0"), None);
        assert_eq!(parse_percent(b"101"), None);
        assert_eq!(parse_percent(b"1.2345"), None);
        assert_eq!(parse_percent(b"abc"), None);
        assert_eq!(parse_percent(b"."), None);
    }

    #[test]
    fn bad_values_fall_back_to_defaults() {
        let table = |name: &core::ffi::CStr| -> Option<&'static [u8]> {
            match name.to_bytes() {
                b"SCAVALLOC_STATS" => Some(b"maybe"),
                b"SCAVALLOC_RELEASE" => Some(b"free"),
                b"SCAVALLOC_SCAVENGE_PERCENT" => Some(b"lots"),
                b"SCAVALLOC_RETAIN_EXTRA_PERCENT" => Some(b"25"),
                b"SCAVALLOC_MEMLIMIT" => Some(b"256MiB"),
                b"SCAVALLOC_BACKGROUND" => Some(b"0"),
                b"SCAVALLOC_SCAVTRACE" => Some(b"yes please"),
                b"SCAVALLOC_DEEP_RELEASE" => Some(b"0"),
                b"SCAVALLOC_ARENA_QUARANTINE" => Some(b"lots"),
                b"SCAVALLOC_CHECK" => Some(b"always"),
                b"SCAVALLOC_CACHE_BUDGET" => Some(b"a little"),
                b"SCAVALLOC_PRESSURE_PERCENT" => Some(b"plenty"),
                b"SCAVALLOC_WINDOW_MAX" => Some(b"0"),
                b"SCAVALLOC_THP" => Some(b"huge"),
                _ => None,
            }
        };
        let c = from_lookup(table);
        assert!(!c.print_stats);
        assert_eq!(c.release_mode, ReleaseMode::Free);
        let s = c.scavenger;
        assert_eq!(s.cpu_percent, 1.0, "bad percent falls back to 1");
        assert_eq!(s.retain_extra_percent, 25);
        assert_eq!(s.memory_limit, Some(256 << 20));
        assert!(!s.container_limit, "an explicit limit turns the control group's off");
        assert!(!s.background);
        assert!(!s.trace, "bad flag falls back to 0");
        assert!(!s.deep_release);
        assert_eq!(c.arena_quarantine, 64 << 30, "a bad quarantine size falls back to 64 GiB");
        assert_eq!(c.cache_budget, 32 << 20, "a bad cache budget falls back to 32 MiB");
        assert_eq!(c.scavenger.pressure_percent, 10.0, "a bad pressure share falls back to 10%");
        assert_eq!(c.scavenger.window_max_ns, 30_000_000_000, "a window of 0 s falls back to 30 s");
        for (value, want) in [(&b"1"[..], Some(1)), (b"120", Some(120)), (b"121", None), (b"5s", None)] {
            let lookup = |name: &core::ffi::CStr| -> Option<&'static [u8]> {
                (name.to_bytes() == b"SCAVALLOC_WINDOW_MAX").then_some(value)
            };
            let got = from_lookup(lookup).scavenger.window_max_ns;
            assert_eq!(got, want.map_or(30, |s: u64| s) * 1_000_000_000, "SCAVALLOC_WINDOW_MAX={value:?}");
        }
        assert!(!c.check, "a bad check flag falls back to off");
        let on = |name: &core::ffi::CStr| -> Option<&'static [u8]> {
            (name.to_bytes() == b"SCAVALLOC_CHECK").then_some(&b"1"[..])
        };
        assert!(from_lookup(on).check);
        assert!(!c.huge_pages, "a bad THP flag falls back to off");
        let thp = |name: &core::ffi::CStr| -> Option<&'static [u8]> {
            (name.to_bytes() == b"SCAVALLOC_THP").then_some(&b"1"[..])
        };
        assert!(from_lookup(thp).huge_pages);
        let off = |name: &core::ffi::CStr| -> Option<&'static [u8]> {
            (name.to_bytes() == b"SCAVALLOC_DEEP_RELEASE").then_some(&b"sometimes"[..])
        };
        assert!(from_lookup(off).scavenger.deep_release, "a bad deep-release flag falls back to on");
    }

    #[test]
    fn memlimit_off_turns_the_container_limit_off() {
        let none = |_: &core::ffi::CStr| -> Option<&'static [u8]> { None };
        let c = from_lookup(none).scavenger;
        assert!(c.container_limit && c.memory_limit.is_none(), "unset: the control group's limit applies");
        let off = |name: &core::ffi::CStr| -> Option<&'static [u8]> {
            (name.to_bytes() == b"SCAVALLOC_MEMLIMIT").then_some(&b"off"[..])
        };
        let c = from_lookup(off).scavenger;
        assert!(!c.container_limit && c.memory_limit.is_none(), "off: no limit at all");
    }
}
