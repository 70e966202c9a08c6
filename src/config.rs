//! Configuration from environment variables, read once at start-up.
//!
//! Variables are read with `getenv` (no allocation) the first time the
//! allocator needs its configuration. A value that does not parse gets one
//! warning line naming the variable, the bad value and the value used
//! instead; the program always goes on.

use core::fmt::Write;

use crate::os::{self, ReleaseMode};
use crate::report::{warn, LineBuf};

/// The allocator's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `SCAVALLOC_STATS=1`: print a statistics summary to stderr at exit.
    pub print_stats: bool,
    /// `SCAVALLOC_RELEASE=dontneed|free`: how free pages are given back.
    pub release_mode: ReleaseMode,
}

impl Config {
    /// The settings when no variable is set.
    pub const DEFAULT: Config = Config { print_stats: false, release_mode: ReleaseMode::DontNeed };
}

static CONFIG: spin::Once<Config> = spin::Once::new();

/// The configuration, read from the environment on first call.
#[inline]
pub fn get() -> &'static Config {
    CONFIG.call_once(|| {
        let config = from_lookup(os::getenv);
        os::set_release_mode(config.release_mode);
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
        c.release_mode = match trim(v) {
            b"dontneed" | b"DONTNEED" => ReleaseMode::DontNeed,
            b"free" | b"FREE" => ReleaseMode::Free,
            _ => bad_value("SCAVALLOC_RELEASE", v, "dontneed", ReleaseMode::DontNeed),
        };
    }
    c
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

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}

/// `0`/`1` (also `false`/`true`, `off`/`on`).
pub fn parse_flag(v: &[u8]) -> Option<bool> {
    match trim(v) {
        b"1" | b"true" | b"on" | b"yes" => Some(true),
        b"0" | b"false" | b"off" | b"no" => Some(false),
        _ => None,
    }
}

/// A non-negative integer no larger than `max`.
pub fn parse_uint(v: &[u8], max: u64) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (n <= max).then_some(n)
}

/// A byte count with an optional `B`, `KiB`, `MiB`, `GiB` or `TiB` suffix
/// (also `K`, `M`, `G`, `T`, and `KB`/`MB`/`GB`/`TB` meaning the same powers of
/// 1024, as Go's `GOMEMLIMIT` does not, but users write them).
pub fn parse_bytes(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    let digits = v.iter().position(|b| !b.is_ascii_digit()).unwrap_or(v.len());
    let n = parse_uint(&v[..digits], u64::MAX)?;
    let shift = match trim(&v[digits..]) {
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
    }

    #[test]
    fn bad_values_fall_back_to_defaults() {
        let table = |name: &core::ffi::CStr| -> Option<&'static [u8]> {
            match name.to_bytes() {
                b"SCAVALLOC_STATS" => Some(b"maybe"),
                b"SCAVALLOC_RELEASE" => Some(b"free"),
                _ => None,
            }
        };
        let c = from_lookup(table);
        assert!(!c.print_stats);
        assert_eq!(c.release_mode, ReleaseMode::Free);
    }
}
