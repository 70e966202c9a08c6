//! The many-thread workloads as C programs (`benches/c/`), run under
//! `LD_PRELOAD` as a C program meets an allocator: glibc (nothing
//! preloaded), `libscavalloc.so` (built here with `cargo build --release
//! -p scavalloc-capi`), and Debian's `libjemalloc2` and `libmimalloc2.0`
//! packages (installed here with apt-get when missing and the harness runs
//! as root; otherwise that peer is skipped and the report says why).
//!
//! The driver compiles each program with `cc -O2 -pthread` into the output
//! directory, runs it several times per allocator, and reports the median
//! wall time of a whole run and the median of the runs' peak RSS (the
//! program's `VmHWM`, which it prints at exit). The sizes are the Rust workloads'
//! (`threads::Sizes`), so the two sets of figures measure one thing.
//!
//! On scavalloc, one more run (not timed) has `SCAVALLOC_STATS=1`; the lock
//! lines of its exit summary give the lock figures of the whole process,
//! set beside the allocations the program counted (`alloc_touch` calls).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::dispatch::Backend;
use crate::threads::Sizes;
use crate::workloads::Scale;
use crate::Record;

/// A C workload: the program, its arguments at a scale, and how many times
/// one run repeats the workload (so that a run outweighs process start).
pub struct CWorkload {
    pub name: &'static str,
    pub program: &'static str,
    pub per_run: &'static str,
    args: fn(&Sizes) -> Vec<usize>,
    mode: Option<&'static str>,
    full_repeat: usize,
}

macro_rules! c_workloads {
    ($($name:literal, $program:literal, $mode:expr, $repeat:literal, $per_run:literal, |$s:ident| $args:expr;)*) => {
        pub const ALL: &[CWorkload] = &[$(CWorkload {
            name: $name,
            program: $program,
            per_run: $per_run,
            args: |$s: &Sizes| $args,
            mode: $mode,
            full_repeat: $repeat,
        }),*];
    };
}

c_workloads! {
    "c_false_sharing_passive_2t", "false_sharing", Some("passive"), 50,
        "`false_sharing_passive_2t` 50 times", |s| vec![2, s.fs_object, s.fs_rounds, s.fs_repetitions];
    "c_false_sharing_passive_8t", "false_sharing", Some("passive"), 50,
        "`false_sharing_passive_8t` 50 times", |s| vec![8, s.fs_object, s.fs_rounds, s.fs_repetitions];
    "c_false_sharing_passive_32t", "false_sharing", Some("passive"), 50,
        "`false_sharing_passive_32t` 50 times", |s| vec![32, s.fs_object, s.fs_rounds, s.fs_repetitions];
    "c_false_sharing_active_2t", "false_sharing", Some("active"), 50,
        "`false_sharing_active_2t` 50 times", |s| vec![2, s.fs_object, s.fs_rounds, s.fs_repetitions];
    "c_false_sharing_active_8t", "false_sharing", Some("active"), 50,
        "`false_sharing_active_8t` 50 times", |s| vec![8, s.fs_object, s.fs_rounds, s.fs_repetitions];
    "c_false_sharing_active_32t", "false_sharing", Some("active"), 50,
        "`false_sharing_active_32t` 50 times", |s| vec![32, s.fs_object, s.fs_rounds, s.fs_repetitions];
    "c_larson_churn_2t", "larson_churn", None, 10,
        "`larson_churn_2t` 10 times", |s| vec![2, s.larson_live, s.larson_steps, s.larson_generations];
    "c_larson_churn_8t", "larson_churn", None, 10,
        "`larson_churn_8t` 10 times", |s| vec![8, s.larson_live, s.larson_steps, s.larson_generations];
    "c_larson_churn_32t", "larson_churn", None, 10,
        "`larson_churn_32t` 10 times", |s| vec![32, s.larson_live, s.larson_steps, s.larson_generations];
    "c_producer_consumer_2t", "producer_consumer", None, 10,
        "one producer/consumer pair (unpinned), 200,000 objects of 64 B, 10 times", |s| vec![1, s.pc_objects];
    "c_producer_consumer_8t", "producer_consumer", None, 10,
        "`producer_consumer_8t` 10 times", |s| vec![4, s.pc_objects];
    "c_producer_consumer_32t", "producer_consumer", None, 10,
        "`producer_consumer_32t` 10 times", |s| vec![16, s.pc_objects];
    "c_malloc_simple", "malloc_bench", Some("simple"), 10,
        "`malloc_simple` 10 times", |s| vec![s.ms_blocks, s.ms_rounds];
    "c_malloc_thread_1t", "malloc_bench", Some("thread"), 10,
        "`malloc_thread_1t` 10 times", |s| vec![1, s.mt_ops, s.mt_working_set];
    "c_malloc_thread_2t", "malloc_bench", Some("thread"), 10,
        "`malloc_thread_2t` 10 times", |s| vec![2, s.mt_ops, s.mt_working_set];
    "c_malloc_thread_8t", "malloc_bench", Some("thread"), 10,
        "`malloc_thread_8t` 10 times", |s| vec![8, s.mt_ops, s.mt_working_set];
    "c_malloc_thread_32t", "malloc_bench", Some("thread"), 10,
        "`malloc_thread_32t` 10 times", |s| vec![32, s.mt_ops, s.mt_working_set];
}

/// How a C program runs on one allocator: what to preload (nothing for
/// glibc) and the extra environment.
#[derive(Clone)]
pub struct Peer {
    preload: Option<PathBuf>,
    env: &'static [(&'static str, &'static str)],
}

/// The C side's set-up: the compiled programs and, per allocator, how to
/// run on it or why it cannot.
pub struct Setup {
    bin_dir: PathBuf,
    pub peers: BTreeMap<&'static str, Result<Peer, String>>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Compiles every program (a failure stops the run: a harness that cannot
/// build its workloads measures nothing).
fn compile(bin_dir: &Path) {
    std::fs::create_dir_all(bin_dir).expect("create the C programs' directory");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c");
    let mut programs: Vec<&str> = ALL.iter().map(|w| w.program).collect();
    programs.dedup();
    for p in programs {
        let status = Command::new("cc")
            .args(["-O2", "-pthread", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(bin_dir.join(p))
            .arg(src.join(format!("{p}.c")))
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => {
                eprintln!("compare: compiling benches/c/{p}.c with cc failed: {other:?}");
                std::process::exit(1);
            }
        }
    }
}

/// The shared object `package` installs whose name starts with `stem`.
fn installed_library(package: &str, stem: &str) -> Option<PathBuf> {
    let out = Command::new("dpkg").args(["-L", package]).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(stem)) && p.is_file())
}

fn is_root() -> bool {
    // SAFETY: `geteuid` has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs the Debian packages that are missing, if this process may.
fn install(packages: &[&str]) -> Result<(), String> {
    if !is_root() {
        return Err("not installed, and installing needs root".into());
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("apt-get: {e}"))
    };
    println!("compare: installing {} with apt-get", packages.join(" "));
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    if apt(&args)?.success() {
        return Ok(());
    }
    // The package lists may be missing or stale (a fresh container).
    apt(&["update", "-qq"])?;
    match apt(&args)?.success() {
        true => Ok(()),
        false => Err(format!("apt-get install {} failed", packages.join(" "))),
    }
}

/// A peer from a Debian package, installing it if needed.
fn packaged_peer(package: &str, stem: &str) -> Result<Peer, String> {
    let found = match installed_library(package, stem) {
        Some(p) => Some(p),
        None => {
            install(&[package]).map_err(|e| format!("{package}: {e}"))?;
            installed_library(package, stem)
        }
    };
    let path = found.ok_or_else(|| format!("{package} installs no {stem}*"))?;
    Ok(Peer { preload: Some(path), env: &[] })
}

/// Builds `libscavalloc.so` (release) in the workspace's target directory.
fn scavalloc_library() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-q", "-p", "scavalloc-capi"])
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build --release -p scavalloc-capi failed".into());
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let lib = target.join("release").join("libscavalloc.so");
    let lib = lib.canonicalize().map_err(|e| format!("{}: {e}", lib.display()))?;
    Ok(lib)
}

/// Compiles the programs and finds (or installs, or builds) every
/// allocator in `backends`.
pub fn setup(out: &Path, backends: &[Backend]) -> Setup {
    let bin_dir = out.join("c");
    compile(&bin_dir);
    let mut peers = BTreeMap::new();
    let scavalloc = backends.iter().any(|b| b.is_scavalloc()).then(scavalloc_library);
    for &b in backends {
        let peer = match b {
            Backend::System => Ok(Peer { preload: None, env: &[] }),
            Backend::Scavalloc | Backend::ScavallocNoDeep | Backend::ScavallocProf => match &scavalloc {
                Some(Ok(lib)) => Ok(Peer { preload: Some(lib.clone()), env: b.env() }),
                Some(Err(e)) => Err(e.clone()),
                None => unreachable!("scavalloc is among the backends"),
            },
            Backend::Jemalloc => packaged_peer("libjemalloc2", "libjemalloc.so"),
            Backend::Mimalloc => packaged_peer("libmimalloc2.0", "libmimalloc.so"),
        };
        match &peer {
            Ok(p) => println!(
                "  C peer {:<16} {}",
                b.name(),
                p.preload
                    .as_ref()
                    .map_or("glibc (nothing preloaded)".into(), |l| format!("LD_PRELOAD={}", l.display()))
            ),
            Err(why) => println!("  C peer {:<16} skipped: {why}", b.name()),
        }
        peers.insert(b.name(), peer);
    }
    Setup { bin_dir, peers }
}

/// What one run of a program gave.
struct RunOutput {
    /// Wall time in nanoseconds.
    wall: f64,
    /// Peak RSS in bytes (the program prints its own `VmHWM`).
    rss: f64,
    /// For the false sharing program: how many workers' objects shared a
    /// cache line.
    sharing: Option<f64>,
    /// The workload's allocations, as the program counted them.
    allocations: Option<f64>,
    stderr: String,
}

/// Runs the program once. A failed run, or a library the loader refused
/// to preload (it says so and runs on glibc), stops the harness.
fn run_once(cmd: &mut Command, what: &str) -> RunOutput {
    let start = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| {
        eprintln!("compare: {what}: {e}");
        std::process::exit(1)
    });
    let wall = start.elapsed().as_nanos() as f64;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let value = |key: &str| stdout.lines().find_map(|l| l.strip_prefix(key)?.trim().parse::<f64>().ok());
    match value("peak_rss_kib ") {
        Some(kib) if out.status.success() && !stderr.contains("cannot be preloaded") => RunOutput {
            wall,
            rss: kib * 1024.0,
            sharing: value("workers_sharing_a_line "),
            allocations: value("allocations "),
            stderr,
        },
        _ => {
            eprintln!("compare: {what} failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status);
            std::process::exit(1)
        }
    }
}

/// The figures of one lock line of scavalloc's exit summary
/// (`  heap lock: N acquisitions, M contended (P%), waited X ms in all, ...`):
/// acquisitions, contended acquisitions, wait in nanoseconds.
fn lock_line(summary: &str, name: &str) -> Option<(f64, f64, f64)> {
    let rest = summary.lines().find_map(|l| l.trim_start().strip_prefix(name)?.strip_prefix(": "))?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let number = |after: &str| -> Option<f64> {
        let i = words.iter().position(|w| w.trim_end_matches(',') == after)?;
        words.get(i.checked_sub(1)?)?.parse().ok()
    };
    let waited = words.iter().position(|w| *w == "waited")?;
    let wait_ms: f64 = words.get(waited + 1)?.parse().ok()?;
    Some((number("acquisitions")?, number("contended")?, wait_ms * 1e6))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs a C workload on one allocator (`runs` times) and reports like a
/// Rust child does: `median_ns` (a whole run), `peak_rss`, `allocations`
/// and, on scavalloc, the lock figures. `None` when the allocator was
/// skipped.
pub fn run(setup: &Setup, w: &'static CWorkload, backend: Backend, scale: Scale) -> Option<Record> {
    let peer = setup.peers.get(backend.name())?.as_ref().ok()?;
    let s = Sizes::of(scale);
    let repeat = scale.pick(w.full_repeat, 1);
    let runs = scale.pick(5, 1);
    let mut args: Vec<String> = w.mode.iter().map(|m| m.to_string()).collect();
    args.extend((w.args)(&s).iter().map(usize::to_string));
    args.push(repeat.to_string());
    let what = format!("{} on {}", w.name, backend.name());
    let command = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(setup.bin_dir.join(w.program));
        cmd.args(&args).env_remove("LD_PRELOAD").envs(peer.env.iter().copied()).envs(extra.iter().copied());
        if let Some(lib) = &peer.preload {
            cmd.env("LD_PRELOAD", lib);
        }
        cmd
    };
    let (mut walls, mut rsss, mut sharing, mut allocations) = (Vec::new(), Vec::new(), None::<f64>, None);
    for _ in 0..runs {
        let run = run_once(&mut command(&[]), &what);
        walls.push(run.wall);
        rsss.push(run.rss);
        // The worst run: one in which objects collided is enough.
        sharing = run.sharing.map(|v| sharing.map_or(v, |s| s.max(v)));
        allocations = run.allocations;
    }
    let mut values = BTreeMap::new();
    values.insert("median_ns".to_string(), median(&mut walls));
    values.insert("peak_rss".to_string(), median(&mut rsss));
    if let Some(v) = sharing {
        values.insert("sharing_workers".to_string(), v);
        values.insert("workers".to_string(), (w.args)(&s)[0] as f64);
    }
    if let Some(n) = allocations {
        values.insert("allocations".to_string(), n);
    }
    if backend.is_scavalloc() {
        // One more run, not timed, for the lock figures of scavalloc's exit
        // summary (whole process: start, the workload, exit).
        let run = run_once(&mut command(&[("SCAVALLOC_STATS", "1")]), &what);
        for (line, key) in [("heap lock", "heap_lock"), ("class locks", "class_locks")] {
            let Some((acquisitions, contended, wait_ns)) = lock_line(&run.stderr, line) else {
                eprintln!("compare: {what}: no {line:?} line in the exit summary\n--- stderr\n{}", run.stderr);
                std::process::exit(1)
            };
            values.insert(format!("{key}_acquisitions"), acquisitions);
            values.insert(format!("{key}_contended"), contended);
            values.insert(format!("{key}_wait_ns"), wait_ns);
        }
    }
    values.insert("done".to_string(), 1.0);
    Some(Record { workload: w.name, backend, values, samples: Vec::new() })
}
