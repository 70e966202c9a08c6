//! scavalloc against the system allocator (glibc), jemalloc and mimalloc,
//! side by side in one run.
//!
//! ```text
//! cargo bench -p scavalloc-bench --bench compare                 # full run, about 20 minutes
//! cargo bench -p scavalloc-bench --bench compare -- --smoke      # tiny sizes, as CI runs it
//! cargo bench -p scavalloc-bench --bench compare -- --write-readme  # full run, tables into README.md
//! cargo bench -p scavalloc-bench --bench compare -- --only json_tree,fragmentation --alloc system,scavalloc
//! ```
//!
//! A global allocator is fixed per process, so this binary is both a
//! driver and its own child: the driver (on the system allocator) starts
//! one child process per workload and allocator, with
//! `SCAVALLOC_BENCH_ALLOC` naming the allocator that `dispatch.rs` then
//! forwards every allocation of the child to, from the first one on. A
//! child runs one workload: a throughput workload under criterion (its
//! median read back from criterion's `estimates.json`), or a memory
//! workload measured once; it reports `@@ key value` lines on stdout and
//! its peak RSS, and a scavalloc child its lock figures per allocation
//! (`locks.rs`). Workloads run one allocator after another, so the four
//! figures of a workload are taken minutes apart at most, on the same
//! machine state as far as a shared machine allows.
//!
//! The many-thread workloads (`threads.rs`) also run as C programs
//! (`cprogs.rs`, sources in `benches/c/`), under `LD_PRELOAD` of each
//! allocator's C library, timed as whole runs.
//!
//! The driver writes `target/compare/report.md` (tables) and
//! `target/compare/report.svg` (speed relative to the system allocator;
//! RSS over time in the burst-idle workloads) and prints the Markdown.
//! `SCAVALLOC_*` variables in the environment reach the scavalloc children
//! unchanged.

mod cprogs;
mod dispatch;
mod latency;
mod locks;
mod memory;
mod report;
mod threads;
mod workloads;

#[path = "../../../examples/support/chart.rs"]
mod chart;
/// The integration tests' helpers: RSS, page size and process CPU time are
/// measured the same way here.
#[path = "../../../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::Criterion;
use dispatch::{Backend, Dispatch};
use memory::Pattern;
use workloads::Scale;

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;

/// The memory workloads, after the throughput ones in `workloads::ALL`.
pub const MEMORY_WORKLOADS: [&str; 8] = [
    "fragmentation",
    "burst_idle_whole",
    "burst_idle_scattered",
    "burst_again",
    "periodic_bursts",
    "idle_pool",
    "alloc_latency",
    "alloc_latency_off",
];

/// Environment a workload's children get on top of their backend's: the
/// latency workload has scavalloc's scavenger release hard (a quarter of
/// the machine), and runs once more on scavalloc with it off.
fn workload_env(workload: &str) -> &'static [(&'static str, &'static str)] {
    match workload {
        "alloc_latency" => &[("SCAVALLOC_SCAVENGE_PERCENT", "25")],
        "alloc_latency_off" => &[("SCAVALLOC_BACKGROUND", "0")],
        _ => &[],
    }
}

/// Whether `workload` runs on `backend`: the scavenger-off baseline of the
/// latency workload only on scavalloc, and the latency workloads not on
/// scavalloc without deep release (its scavenger still runs).
fn runs_on(workload: &str, backend: Backend) -> bool {
    match workload {
        "alloc_latency_off" => backend == Backend::Scavalloc,
        "alloc_latency" => backend != Backend::ScavallocNoDeep,
        _ => true,
    }
}

/// One result line of a child, for the driver.
pub fn emit(key: &str, value: impl Display) {
    println!("@@ {key} {value}");
}

/// What a child reported.
pub struct Record {
    pub workload: &'static str,
    pub backend: Backend,
    pub values: BTreeMap<String, f64>,
    /// `(seconds, bytes)` RSS samples of the burst-idle workloads.
    pub samples: Vec<(f64, f64)>,
}

impl Record {
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }
}

struct Options {
    scale: Scale,
    /// Put the tables into README.md, between its benchmark markers.
    write_readme: bool,
    workloads: Vec<&'static str>,
    backends: Vec<Backend>,
}

fn usage(problem: &str) -> ! {
    eprintln!("compare: {problem}");
    eprintln!(
        "usage: compare [--smoke] [--write-readme] [--only w1,w2,...] \
         [--alloc system,scavalloc,scavalloc-nodeep,jemalloc,mimalloc,scavalloc-prof]"
    );
    eprintln!("workloads: {} (and, only when named: {})", all_workloads().join(", "), OPT_IN_WORKLOADS.join(", "));
    std::process::exit(2)
}

/// Workloads run only when named (`--only`): they take minutes each.
pub const OPT_IN_WORKLOADS: [&str; 1] = ["burst_idle_thp"];

/// Every workload run by default: the Rust throughput ones, the memory
/// ones, the C programs.
fn all_workloads() -> Vec<&'static str> {
    workloads::ALL.iter().map(|w| w.name).chain(MEMORY_WORKLOADS).chain(cprogs::ALL.iter().map(|w| w.name)).collect()
}

fn parse_options(args: &[String]) -> Options {
    let all = all_workloads();
    let mut o =
        Options { scale: Scale::Full, write_readme: false, workloads: all.clone(), backends: dispatch::ALL.to_vec() };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => o.scale = Scale::Smoke,
            "--write-readme" => o.write_readme = true,
            "--only" => {
                let list = it.next().unwrap_or_else(|| usage("--only needs a list"));
                o.workloads = list
                    .split(',')
                    .map(|n| {
                        *all.iter()
                            .chain(&OPT_IN_WORKLOADS)
                            .find(|w| **w == n)
                            .unwrap_or_else(|| usage(&format!("no workload {n:?}")))
                    })
                    .collect();
            }
            "--alloc" => {
                let list = it.next().unwrap_or_else(|| usage("--alloc needs a list"));
                o.backends = list
                    .split(',')
                    .map(|n| Backend::from_name(n.as_bytes()).unwrap_or_else(|| usage(&format!("no allocator {n:?}"))))
                    .collect();
            }
            // What cargo passes to every bench binary.
            "--bench" => {}
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    o
}

/// Where reports go: `<target>/compare` (or `compare-smoke`, so a smoke run
/// never overwrites a full report).
fn output_dir(scale: Scale) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    let dir = target.join(if scale == Scale::Smoke { "compare-smoke" } else { "compare" });
    std::fs::create_dir_all(&dir).expect("create the output directory");
    dir.canonicalize().unwrap_or(dir)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let name = args.get(1).unwrap_or_else(|| usage("--child needs a workload"));
        let scale = if args.iter().any(|a| a == "--smoke") { Scale::Smoke } else { Scale::Full };
        return child(name, scale);
    }
    driver(parse_options(&args));
}

// ---------------------------------------------------------------------------
// The child.

fn criterion(scale: Scale) -> Criterion {
    let c = Criterion::default().with_output_color(false).without_plots();
    match scale {
        Scale::Full => c.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)),
        Scale::Smoke => {
            c.sample_size(10).warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_millis(1))
        }
    }
}

/// Criterion's median time per iteration, in nanoseconds, of
/// `group/function` in the run that just ended.
fn criterion_median(group: &str, function: &str) -> f64 {
    let home = PathBuf::from(std::env::var_os("CRITERION_HOME").expect("the driver sets CRITERION_HOME"));
    let path = home.join(group).join(function).join("new").join("estimates.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("criterion's estimates are JSON");
    json["median"]["point_estimate"].as_f64().expect("a median in criterion's estimates")
}

fn child(name: &str, scale: Scale) {
    let backend = Backend::current();
    // scavalloc's lock figures around each call of the workload's routine.
    let mut tally = backend.is_scavalloc().then(locks::Tally::new);
    let mut measured = |f: &mut dyn FnMut()| match &mut tally {
        Some(t) => t.measure(f),
        None => f(),
    };
    if let Some(w) = workloads::ALL.iter().find(|w| w.name == name) {
        let mut c = criterion(scale);
        let mut group = c.benchmark_group(w.name);
        group.sampling_mode(w.sampling);
        group.bench_function(backend.name(), |b| measured(&mut || (w.bench)(b, scale)));
        group.finish();
        emit("median_ns", criterion_median(w.name, backend.name()));
        emit("peak_rss", memory::peak_rss());
    } else {
        match name {
            "fragmentation" => measured(&mut || memory::fragmentation(scale)),
            "burst_idle_whole" => measured(&mut || memory::burst_idle(Pattern::Whole, scale)),
            "burst_idle_scattered" => measured(&mut || memory::burst_idle(Pattern::Scattered, scale)),
            "burst_again" => measured(&mut || memory::burst_again(scale)),
            "periodic_bursts" => measured(&mut || memory::periodic_bursts(scale)),
            "idle_pool" => measured(&mut || memory::idle_pool(scale)),
            "burst_idle_thp" => measured(&mut || memory::burst_idle_thp(scale)),
            "alloc_latency" | "alloc_latency_off" => measured(&mut || latency::alloc_latency(scale)),
            _ => usage(&format!("no workload {name:?}")),
        }
    }
    if let Some(t) = &tally {
        t.emit();
    }
    if backend.is_scavalloc() {
        let s = scavalloc::stats();
        emit("scavenger_cpu_ns", s.scavenger_cpu_ns);
        emit("deep_released", s.released_deep);
    }
    emit("done", 1);
}

// ---------------------------------------------------------------------------
// The driver.

/// Runs one child and collects what it reports; a child that fails stops
/// the run with its output, so a broken workload cannot hide.
fn run_child(workload: &'static str, backend: Backend, scale: Scale, out: &Path) -> Record {
    let mut cmd = Command::new(std::env::current_exe().expect("the harness's own path"));
    cmd.args(["--child", workload])
        .env(dispatch::VAR, backend.name())
        .env("CRITERION_HOME", out.join("criterion"))
        .envs(backend.env().iter().copied())
        .envs(workload_env(workload).iter().copied());
    if scale == Scale::Smoke {
        cmd.arg("--smoke");
    }
    let output = cmd.output().expect("start a child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut r = Record { workload, backend, values: BTreeMap::new(), samples: Vec::new() };
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("@@ ") else { continue };
        let mut f = rest.split_whitespace();
        match (f.next(), f.next(), f.next()) {
            (Some("sample"), Some(t), Some(rss)) => {
                r.samples.push((t.parse().unwrap_or(f64::NAN), rss.parse().unwrap_or(f64::NAN)));
            }
            (Some(key), Some(value), None) => {
                r.values.insert(key.to_string(), value.parse().unwrap_or(f64::NAN));
            }
            _ => {}
        }
    }
    if !output.status.success() || r.get("done").is_none() {
        eprintln!("compare: {workload} on {} failed: {}", backend.name(), output.status);
        eprintln!("--- stdout\n{stdout}\n--- stderr\n{}", String::from_utf8_lossy(&output.stderr));
        std::process::exit(1);
    }
    r
}

/// One line of progress per child.
fn progress(r: &Record) {
    let mib = |k: &str| r.get(k).map_or(f64::NAN, |v| v / (1 << 20) as f64);
    let detail = match r.get("median_ns") {
        Some(ns) => format!("median {:>12}", report::duration(ns)),
        None => match r.get("rss_5s") {
            Some(_) => format!("RSS 5 s into the idle {:>7.1} MiB (live {:.1} MiB)", mib("rss_5s"), mib("live")),
            None => format!("RSS at end {:>7.1} MiB (live {:.1} MiB)", mib("rss_end"), mib("live")),
        },
    };
    println!("  {:<22} {:<16} {detail}   peak RSS {:7.1} MiB", r.workload, r.backend.name(), mib("peak_rss"));
    std::io::stdout().flush().ok();
}

fn driver(o: Options) {
    let out = output_dir(o.scale);
    let backends: Vec<&str> = o.backends.iter().map(|b| b.name()).collect();
    println!(
        "compare: {} workload(s) on {}{}",
        o.workloads.len(),
        backends.join(", "),
        if o.scale == Scale::Smoke { " (smoke sizes)" } else { "" }
    );
    let mut records = Vec::new();
    let (c_workloads, rust_workloads): (Vec<&'static str>, Vec<&'static str>) =
        o.workloads.iter().partition(|w| cprogs::ALL.iter().any(|c| c.name == **w));
    for &w in &rust_workloads {
        for &b in o.backends.iter().filter(|&&b| runs_on(w, b)) {
            let r = run_child(w, b, o.scale, &out);
            progress(&r);
            records.push(r);
        }
    }
    let mut skipped = Vec::new();
    if !c_workloads.is_empty() {
        println!("C programs under LD_PRELOAD:");
        let setup = cprogs::setup(&out, &o.backends);
        for (name, peer) in &setup.peers {
            if let Err(why) = peer {
                skipped.push((*name, why.clone()));
            }
        }
        for w in cprogs::ALL.iter().filter(|c| c_workloads.contains(&c.name)) {
            for &b in &o.backends {
                if let Some(r) = cprogs::run(&setup, w, b, o.scale) {
                    progress(&r);
                    records.push(r);
                }
            }
        }
    }
    if let Err(problem) = report::check(&records) {
        eprintln!("compare: {problem}");
        std::process::exit(1);
    }
    let md = report::markdown(&records, &o.backends, o.scale, &skipped);
    let md_path = out.join("report.md");
    let svg_path = out.join("report.svg");
    std::fs::write(&md_path, &md).expect("write report.md");
    std::fs::write(&svg_path, report::svg(&records, &o.backends)).expect("write report.svg");
    println!("\n{md}");
    println!("written: {}\n         {}", md_path.display(), svg_path.display());
    if o.write_readme {
        let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("README.md");
        let readme = readme.canonicalize().unwrap_or(readme);
        match report::splice_into_readme(&readme, &md) {
            Ok(()) => println!("         {} (benchmark section)", readme.display()),
            Err(problem) => {
                eprintln!("compare: README.md not updated: {problem}");
                std::process::exit(1);
            }
        }
    }
}
