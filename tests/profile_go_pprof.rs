//! A heap profile opens in Go's `go tool pprof`, which names the program's
//! own allocating functions with the right figures.
//!
//! pprof symbolizes the addresses itself, from the executable the profile's
//! mapping names: the mapping's start and file offset must agree with the
//! executable's code segment the way pprof expects, or every address lands
//! in a neighbouring function (Go 1.19's pprof did so with lld's mid-page
//! code segment before `profile::maps` gave the segment's own start). It
//! needs `go` (Debian's `golang-go`, which `.ci/run` installs); without it
//! the test is reported as ignored with the reason, never as passed (it
//! runs without libtest's harness, through `libtest-mimic`, for that).

mod support;

use std::hint::black_box;
use std::process::Command;
use std::time::Duration;

use libtest_mimic::{Arguments, Trial};

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const TEST: &str = "go_pprof_names_the_allocating_functions";

/// Objects of the two sites, and their sizes: the first site holds the
/// most bytes, in small objects; the second fewer, in large ones.
const SMALL: (usize, usize) = (40_000, 200);
const LARGE: (usize, usize) = (6, 512 << 10);

#[inline(never)]
fn scavalloc_test_site_small(out: &mut Vec<Box<[u8]>>) {
    for _ in 0..SMALL.0 {
        out.push(black_box(vec![1u8; SMALL.1].into_boxed_slice()));
    }
}

#[inline(never)]
fn scavalloc_test_site_large(out: &mut Vec<Box<[u8]>>) {
    for _ in 0..LARGE.0 {
        out.push(black_box(vec![2u8; LARGE.1].into_boxed_slice()));
    }
}

/// `go tool pprof`'s flat figure in bytes and the function named on each
/// line of its `-top` output (`7812.50kB 67.87% 67.87% 7812.50kB 67.87%  name`).
fn top_lines(text: &str) -> Vec<(f64, String)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 6 || !fields[1].ends_with('%') {
                return None;
            }
            let flat = fields[0];
            let (number, unit) = flat.split_at(flat.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(flat.len()));
            // pprof's units are binary: a kB is 1024 bytes.
            let scale = match unit {
                "B" | "" => 1.0,
                "kB" => 1024.0,
                "MB" => 1048576.0,
                "GB" => 1073741824.0,
                _ => return None,
            };
            Some((number.parse::<f64>().ok()? * scale, fields[5..].join(" ")))
        })
        .collect()
}

/// The variable that tells the child where to write its profile.
const PATH_ENV: &str = "SCAVALLOC_TEST_PROFILE_PATH";

fn go_pprof_names_the_allocating_functions() -> Result<(), String> {
    support::as_child(TEST, |_| {
        let mut kept = Vec::with_capacity(SMALL.0 + LARGE.0);
        scavalloc_test_site_small(&mut kept);
        scavalloc_test_site_large(&mut kept);
        let mut file = std::fs::File::create(std::env::var(PATH_ENV).unwrap()).unwrap();
        scavalloc::profile::write_pprof(&mut file).unwrap();
        drop(kept);
    });
    let dir = std::env::temp_dir().join(format!("scavalloc-go-pprof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let profile = dir.join("heap.pb.gz");
    // Every allocation sampled: the figures are exact.
    let env = [("SCAVALLOC_PROF_RATE", "1"), (PATH_ENV, profile.to_str().unwrap())];
    support::run_child_env(TEST, "rate-1", &env, Duration::from_secs(120)).assert_completed();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=1000"])
        .arg(&exe)
        .arg(&profile)
        .env("PPROF_TMPDIR", &dir)
        .env("HOME", &dir)
        .output()
        .map_err(|e| format!("running go tool pprof: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("go tool pprof failed: {}\n{text}", String::from_utf8_lossy(&out.stderr)));
    }
    let lines = top_lines(&text);
    let flat_of = |site: &str| lines.iter().find(|(_, name)| name.contains(site)).map(|&(flat, _)| flat);
    let expect = [
        ("scavalloc_test_site_small", (SMALL.0 * SMALL.1) as f64),
        ("scavalloc_test_site_large", (LARGE.0 * LARGE.1) as f64),
    ];
    for (site, bytes) in expect {
        let flat = flat_of(site).ok_or_else(|| format!("pprof names no {site}:\n{text}"))?;
        // pprof prints three significant figures.
        if (flat - bytes).abs() > bytes * 0.01 {
            return Err(format!("{site}: pprof shows {flat} bytes in use there, the site holds {bytes}:\n{text}"));
        }
    }
    // Kept for a look when the test fails.
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Why `go tool pprof` cannot run here, if it cannot.
fn go_missing() -> Option<String> {
    match Command::new("go").arg("version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("`go version` failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Some(format!("`go` cannot be run ({e}); install Debian's golang-go")),
    }
}

fn main() {
    let args = Arguments::from_args();
    let missing = if support::child_case().is_some() { None } else { go_missing() };
    if let Some(why) = &missing {
        println!("profile_go_pprof: ignored: {why}");
    }
    let trials = vec![Trial::test(TEST, || go_pprof_names_the_allocating_functions().map_err(Into::into))
        .with_ignored_flag(missing.is_some())];
    libtest_mimic::run(&args, trials).exit();
}
