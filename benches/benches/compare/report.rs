//! The driver's output: a sanity check of what the children reported, the
//! Markdown tables, and the SVG chart.

use std::fmt::Write;

use crate::chart::{self, Frame, Series};
use crate::cprogs;
use crate::dispatch::Backend;
use crate::workloads::{self, Scale};
use crate::Record;

const MIB: f64 = (1 << 20) as f64;

/// A time in the unit that suits it.
pub fn duration(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn find<'a>(records: &'a [Record], workload: &str, backend: Backend) -> Option<&'a Record> {
    records.iter().find(|r| r.workload == workload && r.backend == backend)
}

/// Every child reported what its workload is about: a positive median and
/// peak RSS, a timeline, live bytes. A smoke run exists to catch a harness
/// that runs but measures nothing.
pub fn check(records: &[Record]) -> Result<(), String> {
    let positive = |r: &Record, key: &str| -> Result<(), String> {
        match r.get(key) {
            Some(v) if v.is_finite() && v > 0.0 => Ok(()),
            other => Err(format!("{} on {}: {key} is {other:?}", r.workload, r.backend.name())),
        }
    };
    for r in records {
        positive(r, "peak_rss")?;
        if workloads::ALL.iter().any(|w| w.name == r.workload) || cprogs::ALL.iter().any(|w| w.name == r.workload) {
            positive(r, "median_ns")?;
        } else {
            positive(r, "live")?;
        }
        // A scavalloc child (or C run) reports its lock figures; a run
        // allocates, so a zero count means the counting is broken.
        if r.backend.is_scavalloc() {
            positive(r, "allocations")?;
            for key in ["heap_lock", "class_locks"]
                .iter()
                .flat_map(|l| ["acquisitions", "contended", "wait_ns"].map(move |f| format!("{l}_{f}")))
            {
                match r.get(&key) {
                    Some(v) if v.is_finite() && v >= 0.0 => {}
                    other => return Err(format!("{} on {}: {key} is {other:?}", r.workload, r.backend.name())),
                }
            }
        }
        if r.workload == "burst_again" {
            positive(r, "first_ns")?;
            positive(r, "second_ns")?;
        }
        if r.workload.starts_with("alloc_latency") {
            positive(r, "ops")?;
            positive(r, "op_p50_ns")?;
            positive(r, "op_max_ns")?;
        }
        if r.workload == "periodic_bursts" {
            positive(r, "burst_ns_0")?;
            positive(r, "mean_rss")?;
        }
        if r.workload.starts_with("burst_idle") || r.workload == "idle_pool" {
            positive(
                r,
                if r.workload.starts_with("burst_idle_") && r.workload != "burst_idle_thp" {
                    "rss_5s"
                } else {
                    "rss_end"
                },
            )?;
            if r.samples.len() < 5 || r.samples.iter().any(|s| !(s.0.is_finite() && s.1 > 0.0)) {
                return Err(format!("{} on {}: bad RSS timeline {:?}", r.workload, r.backend.name(), r.samples));
            }
        }
    }
    Ok(())
}

/// Speed relative to the system allocator (its median over this one's),
/// if both ran.
fn speedup(records: &[Record], workload: &str, b: Backend) -> Option<f64> {
    let base = find(records, workload, Backend::System)?.get("median_ns")?;
    Some(base / find(records, workload, b)?.get("median_ns")?)
}

fn geomean(values: &[f64]) -> f64 {
    (values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp()
}

/// The throughput workloads that ran, in their order.
fn throughput_names(records: &[Record]) -> Vec<&'static str> {
    workloads::ALL.iter().map(|w| w.name).filter(|n| records.iter().any(|r| r.workload == *n)).collect()
}

/// Geometric mean of the speedups over the workloads where it is known.
fn geomean_speedup(records: &[Record], b: Backend) -> Option<f64> {
    let v: Vec<f64> = throughput_names(records).iter().filter_map(|w| speedup(records, w, b)).collect();
    (!v.is_empty()).then(|| geomean(&v))
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_string()
}

/// The machine and the date, for the report's first line.
fn machine() -> String {
    let cpuinfo = read_trimmed("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = read_trimmed("/proc/sys/kernel/osrelease");
    // SAFETY: `time` with a null pointer only returns the time; `gmtime_r`
    // writes one `tm` into the zeroed buffer.
    let tm = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&now, &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC, {model}, {cpus} CPUs, Linux {kernel}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}

fn header(out: &mut String, first: &str, backends: &[Backend]) {
    let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
    let _ = writeln!(out, "| {first} | {} |", names.join(" | "));
    let _ = writeln!(out, "| --- |{}", " ---: |".repeat(backends.len()));
}

fn mib(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{:.1}", v / MIB))
}

/// The RSS sample nearest to `t` seconds into the idle.
fn rss_at(r: &Record, t: f64) -> Option<f64> {
    r.samples.iter().min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs())).map(|s| s.1)
}

pub fn markdown(records: &[Record], backends: &[Backend], scale: Scale, skipped: &[(&str, String)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# scavalloc against the system allocator, jemalloc and mimalloc\n");
    let _ = writeln!(
        out,
        "Measured {}{}. Regenerate with `cargo bench -p scavalloc-bench --bench compare` \
         (about 20 minutes; one child process per workload and allocator, then the C programs).\n",
        machine(),
        if scale == Scale::Smoke { " **(smoke sizes: not a measurement)**" } else { "" }
    );

    let names = throughput_names(records);
    if !names.is_empty() {
        let _ = writeln!(
            out,
            "## Throughput\n\nMedian time of one iteration (criterion); in brackets, speed relative to the \
             system allocator (its time over this one's: higher is faster).\n"
        );
        header(&mut out, "workload", backends);
        for w in &names {
            let cells: Vec<String> = backends
                .iter()
                .map(|&b| {
                    let Some(ns) = find(records, w, b).and_then(|r| r.get("median_ns")) else { return "-".into() };
                    match speedup(records, w, b) {
                        Some(s) if b != Backend::System => format!("{} ({s:.2}x)", duration(ns)),
                        _ => duration(ns),
                    }
                })
                .collect();
            let _ = writeln!(out, "| {w} | {} |", cells.join(" | "));
        }
        let means: Vec<String> =
            backends.iter().map(|&b| geomean_speedup(records, b).map_or("-".into(), |g| format!("{g:.2}x"))).collect();
        let _ = writeln!(out, "| **geometric mean, speed vs system** | {} |\n", means.join(" | "));
        let _ = writeln!(out, "One iteration:\n");
        for w in workloads::ALL.iter().filter(|w| names.contains(&w.name)) {
            let _ = writeln!(out, "- `{}`: {}", w.name, w.per_iter);
        }
        let _ = writeln!(out);
    }

    let all_workloads: Vec<&str> = workloads::ALL
        .iter()
        .map(|w| w.name)
        .chain(crate::MEMORY_WORKLOADS)
        .filter(|n| records.iter().any(|r| r.workload == *n))
        .collect();
    if !all_workloads.is_empty() {
        let _ = writeln!(
            out,
            "## Peak RSS (MiB)\n\nThe child process's `VmHWM`: the workload, plus the harness (a few MiB).\n"
        );
        header(&mut out, "workload", backends);
        for w in &all_workloads {
            let cells: Vec<String> =
                backends.iter().map(|&b| mib(find(records, w, b).and_then(|r| r.get("peak_rss")))).collect();
            let _ = writeln!(out, "| {w} | {} |", cells.join(" | "));
        }
        let _ = writeln!(out);
    }

    if !all_workloads.is_empty() {
        lock_table(
            &mut out,
            records,
            backends,
            ("workload", &all_workloads),
            "## scavalloc's locks\n\nHow often the page heap's lock and the size classes' central-list locks were \
             taken per million allocation calls (`alloc`, `alloc_zeroed`, `realloc`, counted by the harness), and \
             how often a taker found one held: what more cores would make worse. Summed over the workload's \
             routine calls (criterion's warm-up and samples, each with the routine's own set-up, not criterion's \
             analysis; a memory workload's one run); the background scavenger's acquisitions in that time are \
             included.\n",
        );
    }

    c_programs(&mut out, records, backends, skipped);

    if records.iter().any(|r| r.workload == "fragmentation") {
        let _ = writeln!(
            out,
            "## Fragmentation\n\n256 MiB of 16-512 B objects, nine in ten freed at random, then 256 MiB of \
             1-8 KiB objects. Live is what is allocated at the end (the most ever live).\n\n\
             | allocator | live (MiB) | peak RSS (MiB) | RSS at end (MiB) | peak RSS / live |\n| --- | ---: | ---: | ---: | ---: |"
        );
        for &b in backends {
            let Some(r) = find(records, "fragmentation", b) else { continue };
            let ratio = r.get("peak_rss").zip(r.get("live")).map_or("-".into(), |(p, l)| format!("{:.2}", p / l));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {ratio} |",
                b.name(),
                mib(r.get("live")),
                mib(r.get("peak_rss")),
                mib(r.get("rss_end"))
            );
        }
        let _ = writeln!(out);
    }

    if records.iter().any(|r| r.workload == "burst_again") {
        let _ = writeln!(
            out,
            "## Burst, idle, burst again\n\n512 MiB of 64 B-4 KiB objects, nine in ten freed at random, 5 s of idle, \
             then the same burst again: what giving memory back costs the next burst (its page faults).\n\n\
             | allocator | first burst | second burst | second / first | RSS before the second (MiB) |\n\
             | --- | ---: | ---: | ---: | ---: |"
        );
        for &b in backends {
            let Some(r) = find(records, "burst_again", b) else { continue };
            let (t1, t2) = (r.get("first_ns").unwrap_or(f64::NAN), r.get("second_ns").unwrap_or(f64::NAN));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {} |",
                b.name(),
                duration(t1),
                duration(t2),
                t2 / t1,
                mib(r.get("rss_before_second"))
            );
        }
        let _ = writeln!(out);
    }

    if records.iter().any(|r| r.workload == "periodic_bursts") {
        let _ = writeln!(
            out,
            "## Periodic bursts\n\nA burst every 2 s, ten in all: two fresh threads each build 128 MiB of 64 B-16 KiB \
             requests and keep one in ten until the next burst. An allocator that gives the memory back between \
             bursts pays page faults in the next one; one that keeps it pays in RSS. scavalloc's retained window \
             learns from the second burst taking back what it released after the first, and keeps the memory \
             from then on. Burst times, and RSS sampled every 100 ms over the 20 s.\n\n\
             | allocator | burst 1 | burst 2 | bursts 3-10 (median) | / system's | mean RSS (MiB) | / system's | peak RSS (MiB) |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let later = |r: &Record| {
            let mut v: Vec<f64> = (2..10).filter_map(|k| r.get(&format!("burst_ns_{k}"))).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let system = find(records, "periodic_bursts", Backend::System);
        let (sys_later, sys_mean) = (system.and_then(later), system.and_then(|r| r.get("mean_rss")));
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or("-".into(), |(a, b)| format!("{:.2}", a / b));
        for &b in backends {
            let Some(r) = find(records, "periodic_bursts", b) else { continue };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                b.name(),
                duration(r.get("burst_ns_0").unwrap_or(f64::NAN)),
                duration(r.get("burst_ns_1").unwrap_or(f64::NAN)),
                duration(later(r).unwrap_or(f64::NAN)),
                ratio(later(r), sys_later),
                mib(r.get("mean_rss")),
                ratio(r.get("mean_rss"), sys_mean),
                mib(r.get("peak_rss"))
            );
        }
        let _ = writeln!(out);
    }

    if records.iter().any(|r| r.workload == "alloc_latency") {
        let _ = writeln!(
            out,
            "## Allocation latency while memory is given back\n\n512 MiB of 64 B-1 KiB objects, half freed \
             every tenth kept, half freed whole; then for 6 s two threads free and allocate 16 B-4 KiB objects \
             in batches of 256 with a 1 ms sleep between, each call timed alone. scavalloc's scavenger releases \
             hard meanwhile (`SCAVALLOC_SCAVENGE_PERCENT=25`); the last row is scavalloc with its background \
             thread off (`SCAVALLOC_BACKGROUND=0`): the same work with nothing released. Allocations and frees \
             together; the ratios are against that last row.\n\n\
             | allocator | calls | p50 | p99 | p99.9 | p99.99 | max | p99.9 / off | max / off | released meanwhile (MiB) |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let off = find(records, "alloc_latency_off", Backend::Scavalloc);
        let ratio = |r: &Record, key: &str| {
            off.and_then(|o| o.get(key)).zip(r.get(key)).map_or("-".into(), |(o, v)| format!("{:.2}", v / o))
        };
        let rows = backends
            .iter()
            .filter_map(|&b| find(records, "alloc_latency", b).map(|r| (b.name().to_string(), r)))
            .chain(off.map(|r| ("scavalloc, background off".to_string(), r)));
        for (name, r) in rows {
            let ns = |k: &str| duration(r.get(k).unwrap_or(f64::NAN));
            let _ = writeln!(
                out,
                "| {name} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                2.0 * r.get("ops").unwrap_or(f64::NAN),
                ns("op_p50_ns"),
                ns("op_p99_ns"),
                ns("op_p999_ns"),
                ns("op_p9999_ns"),
                ns("op_max_ns"),
                ratio(r, "op_p999_ns"),
                ratio(r, "op_max_ns"),
                r.get("released_during").map_or("-".into(), |v| format!("{:.1}", v / MIB))
            );
        }
        let _ = writeln!(out);
    }

    if records.iter().any(|r| r.workload == "burst_idle_thp") {
        let always = records.iter().any(|r| r.workload == "burst_idle_thp" && r.get("thp_always") == Some(1.0));
        let _ = writeln!(
            out,
            "## Huge pages after a scattered burst\n\n512 MiB of 16 B-4 KiB objects and some of 64-256 KiB, every \
             tenth kept, then 3 minutes of idle, with transparent huge pages in `{}` mode. RSS / `AnonHugePages` \
             in MiB at times into the idle: does khugepaged fault released pages back in?\n\n\
             | allocator | 0 s | 10 s | 60 s | 120 s | 180 s | lowest RSS | end / lowest |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            if always { "always" } else { "madvise" }
        );
        for &b in backends {
            let Some(r) = find(records, "burst_idle_thp", b) else { continue };
            let at =
                |t: u32| format!("{} / {}", mib(r.get(&format!("rss_at_{t}"))), mib(r.get(&format!("huge_at_{t}"))));
            let growth = r.get("rss_end").zip(r.get("rss_low")).map_or("-".into(), |(e, l)| format!("{:.2}", e / l));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {growth} |",
                b.name(),
                at(0),
                at(10),
                at(60),
                at(120),
                at(180),
                mib(r.get("rss_low"))
            );
        }
        let _ = writeln!(out);
    }

    if records.iter().any(|r| r.workload == "idle_pool") {
        let _ = writeln!(
            out,
            "## Idle thread pool\n\n1,000 threads (64 KiB stacks) each allocate 200 objects of 16-1016 B, free \
             them, keep four of 100 B, and then block for 5 s. RSS in MiB before the threads start and at times \
             into the idle: what idle threads' caches pin (scavalloc trims a cache unused for a second).\n\n\
             | allocator | before | 0 s | 1 s | 2 s | 3 s | 5 s | 5 s / system's |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let system_end = find(records, "idle_pool", Backend::System).and_then(|r| r.get("rss_end"));
        for &b in backends {
            let Some(r) = find(records, "idle_pool", b) else { continue };
            let times: Vec<String> = [0.0, 1.0, 2.0, 3.0, 5.0].iter().map(|&t| mib(rss_at(r, t))).collect();
            let ratio = r.get("rss_end").zip(system_end).map_or("-".into(), |(a, s)| format!("{:.2}", a / s));
            let _ = writeln!(out, "| {} | {} | {} | {ratio} |", b.name(), mib(r.get("base_rss")), times.join(" | "));
        }
        let _ = writeln!(out);
    }

    for (w, what) in [
        ("burst_idle_whole", "the first 90% in allocation order freed (whole spans free)"),
        ("burst_idle_scattered", "every 10th object kept (nearly every span keeps one)"),
    ] {
        if !records.iter().any(|r| r.workload == w) {
            continue;
        }
        let _ = writeln!(
            out,
            "## Burst-idle: {what}\n\n1 GiB of 16 B-4 KiB objects and some of 64-256 KiB, 90% freed, then 10 s \
             of idle. RSS in MiB at times into the idle; CPU is the whole process's over the idle.\n\n\
             | allocator | peak | 0 s | 1 s | 1.5 s | 2 s | 3 s | 5 s | 10 s | live | pages touched by live | idle CPU |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for &b in backends {
            let Some(r) = find(records, w, b) else { continue };
            let times: Vec<String> = [0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0].iter().map(|&t| mib(rss_at(r, t))).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                b.name(),
                mib(r.get("peak_rss")),
                times.join(" | "),
                mib(r.get("live")),
                mib(r.get("live_pages")),
                r.get("idle_cpu_ns").map_or("-".into(), |ns| format!("{:.0} ms", ns / 1e6))
            );
        }
        if let Some(r) = find(records, w, Backend::Scavalloc) {
            if let (Some(bound), Some(met)) = (r.get("bound_5s"), r.get("bound_met")) {
                let _ = writeln!(
                    out,
                    "\nscavalloc's bound 5 s into the idle (the scavenger issue's): {} MiB RSS, {}; \
                     it used {:.0} ms of scavenger CPU in all.",
                    mib(Some(bound)),
                    if met == 1.0 { "met" } else { "**missed**" },
                    r.get("scavenger_cpu_ns").unwrap_or(f64::NAN) / 1e6
                );
            }
        }
        let _ = writeln!(out);
    }
    out
}

/// The C programs' tables: the median wall time of a whole run (speed
/// relative to glibc in brackets) and the median peak RSS.
fn c_programs(out: &mut String, records: &[Record], backends: &[Backend], skipped: &[(&str, String)]) {
    let names: Vec<&cprogs::CWorkload> =
        cprogs::ALL.iter().filter(|w| records.iter().any(|r| r.workload == w.name)).collect();
    if names.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## C programs under LD_PRELOAD\n\nThe many-thread workloads as C programs (`benches/c/`, `cc -O2 -pthread`), \
         run on glibc (`system`), `libscavalloc.so` and Debian's `libjemalloc2` and `libmimalloc2.0` through \
         `LD_PRELOAD`. Median wall time of a whole run (process start included); in brackets, speed relative \
         to glibc.\n"
    );
    for (name, why) in skipped {
        let _ = writeln!(out, "{name}: skipped ({why}).\n");
    }
    header(out, "program", backends);
    let mut speeds: Vec<Vec<f64>> = vec![Vec::new(); backends.len()];
    for w in &names {
        let cells: Vec<String> = backends
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let Some(ns) = find(records, w.name, b).and_then(|r| r.get("median_ns")) else { return "-".into() };
                match speedup(records, w.name, b) {
                    Some(s) if b != Backend::System => {
                        speeds[i].push(s);
                        format!("{} ({s:.2}x)", duration(ns))
                    }
                    _ => duration(ns),
                }
            })
            .collect();
        let _ = writeln!(out, "| {} | {} |", w.name, cells.join(" | "));
    }
    let means: Vec<String> = backends
        .iter()
        .zip(&speeds)
        .map(|(&b, v)| match b {
            Backend::System => "1.00x".into(),
            _ if v.is_empty() => "-".into(),
            _ => format!("{:.2}x", geomean(v)),
        })
        .collect();
    let _ = writeln!(out, "| **geometric mean, speed vs glibc** | {} |\n", means.join(" | "));
    let _ = writeln!(out, "Median peak RSS of the runs (MiB, the program's `VmHWM` at exit):\n");
    header(out, "program", backends);
    for w in &names {
        let cells: Vec<String> =
            backends.iter().map(|&b| mib(find(records, w.name, b).and_then(|r| r.get("peak_rss")))).collect();
        let _ = writeln!(out, "| {} | {} |", w.name, cells.join(" | "));
    }
    let sharing: Vec<&&cprogs::CWorkload> = names
        .iter()
        .filter(|w| records.iter().any(|r| r.workload == w.name && r.get("sharing_workers").is_some()))
        .collect();
    if !sharing.is_empty() {
        let _ = writeln!(
            out,
            "\nFalse sharing whatever the scheduler did: workers whose first object shared a 64-byte cache line \
             with another worker's (all live at once; the worst run; 0 is what an allocator should give).\n"
        );
        header(out, "program", backends);
        for w in sharing {
            let cells: Vec<String> = backends
                .iter()
                .map(|&b| match find(records, w.name, b).and_then(|r| r.get("sharing_workers").zip(r.get("workers"))) {
                    Some((k, n)) => format!("{k:.0} of {n:.0}"),
                    None => "-".into(),
                })
                .collect();
            let _ = writeln!(out, "| {} | {} |", w.name, cells.join(" | "));
        }
    }
    let _ = writeln!(out, "\nOne run:\n");
    for w in &names {
        let _ = writeln!(out, "- `{}`: {}", w.name, w.per_run);
    }
    let _ = writeln!(out);
    let c_names: Vec<&str> = names.iter().map(|w| w.name).collect();
    lock_table(
        out,
        records,
        backends,
        ("program", &c_names),
        "scavalloc's locks in the C programs: one more run of each (not timed) with `SCAVALLOC_STATS=1`, its \
         exit summary's lock figures (the whole process: start, the workload, exit) per million of the \
         workload's allocations (the `malloc` calls the program counts; its few own arrays are not counted).\n",
    );
}

/// A lock figure per million allocations.
fn per_million(count: Option<f64>, allocations: Option<f64>) -> String {
    match (count, allocations) {
        (Some(c), Some(a)) if a > 0.0 => format!("{:.0}", c * 1e6 / a),
        _ => "-".into(),
    }
}

/// Contended acquisitions as a percentage of all.
fn contended(r: &Record, lock: &str) -> String {
    match (r.get(&format!("{lock}_contended")), r.get(&format!("{lock}_acquisitions"))) {
        (Some(c), Some(a)) if a > 0.0 => format!("{:.2}%", c * 100.0 / a),
        (Some(_), Some(_)) => "none taken".into(),
        _ => "-".into(),
    }
}

/// The lock figures of the scavalloc children (or runs) of `workloads`, one
/// row per workload and scavalloc allocator: allocations, each lock
/// group's acquisitions per million allocations and contended share, and
/// the time both groups' contended acquisitions waited.
fn lock_table(
    out: &mut String,
    records: &[Record],
    backends: &[Backend],
    (first, workloads): (&str, &[&str]),
    intro: &str,
) {
    let rows: Vec<&Record> = workloads
        .iter()
        .flat_map(|w| backends.iter().filter(|b| b.is_scavalloc()).filter_map(move |&b| find(records, w, b)))
        .filter(|r| r.get("heap_lock_acquisitions").is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "{intro}");
    let _ = writeln!(
        out,
        "| {first} | allocator | allocations | heap lock per M allocations | heap lock contended | \
         class locks per M allocations | class locks contended | waited (both) |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in rows {
        let allocations = r.get("allocations");
        let waited = r.get("heap_lock_wait_ns").zip(r.get("class_locks_wait_ns")).map(|(h, c)| h + c);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.backend.name(),
            allocations.map_or("-".into(), |a| format!("{a:.0}")),
            per_million(r.get("heap_lock_acquisitions"), allocations),
            contended(r, "heap_lock"),
            per_million(r.get("class_locks_acquisitions"), allocations),
            contended(r, "class_locks"),
            match waited {
                Some(ns) if ns > 0.0 => duration(ns),
                Some(_) => "0".into(),
                None => "-".into(),
            }
        );
    }
    let _ = writeln!(out);
}

/// Speed relative to the system allocator per workload (and the geometric
/// mean), and the two burst-idle timelines.
pub fn svg(records: &[Record], backends: &[Backend]) -> String {
    let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
    let mut body = String::new();
    let mut y = 0.0;
    let width = 1100.0;
    let workloads = throughput_names(records);
    if !workloads.is_empty() {
        let mut categories = workloads.clone();
        categories.push("geomean");
        let mut values: Vec<Vec<f64>> = workloads
            .iter()
            .map(|w| backends.iter().map(|&b| speedup(records, w, b).unwrap_or(f64::NAN)).collect())
            .collect();
        values.push(backends.iter().map(|&b| geomean_speedup(records, b).unwrap_or(f64::NAN)).collect());
        let frame = Frame {
            x: 0.0,
            y,
            width,
            height: 380.0,
            title: "Throughput relative to the system allocator (higher is faster; dashed: system)",
            x_label: "workload",
            y_label: "speed vs system",
        };
        chart::bar_chart(&mut body, &frame, &categories, &names, &values, Some(1.0));
        y += 400.0;
    }
    for (w, title) in [
        ("burst_idle_whole", "RSS after a 1 GiB burst, 90% freed as whole spans"),
        ("burst_idle_scattered", "RSS after a 1 GiB burst, every 10th object kept"),
    ] {
        let timelines: Vec<(&str, Vec<(f64, f64)>)> = backends
            .iter()
            .filter_map(|&b| {
                find(records, w, b).map(|r| (b.name(), r.samples.iter().map(|&(t, v)| (t, v / MIB)).collect()))
            })
            .collect();
        if timelines.is_empty() {
            continue;
        }
        let series: Vec<Series> = timelines.iter().map(|(n, p)| Series { name: n, points: p }).collect();
        let frame =
            Frame { x: 0.0, y, width, height: 360.0, title, x_label: "seconds into the idle", y_label: "RSS (MiB)" };
        chart::line_chart(&mut body, &frame, &series);
        y += 380.0;
    }
    chart::document(width, y.max(100.0), &body)
}

/// The markers around the generated part of README.md's benchmark section.
const README_START: &str = "<!-- compare:start (generated by the comparison harness; edits here are overwritten) -->";
const README_END: &str = "<!-- compare:end -->";

/// Replaces what lies between the README's markers with `md` (its title
/// line dropped, its headings one level down).
pub fn splice_into_readme(path: &std::path::Path, md: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let start = text.find(README_START).ok_or("no start marker")?;
    let end = text.find(README_END).ok_or("no end marker")?;
    if end < start {
        return Err("the end marker comes before the start marker".into());
    }
    let body: String = md
        .lines()
        .skip_while(|l| l.starts_with("# ") || l.is_empty())
        .map(|l| if l.starts_with("## ") { format!("#{l}\n") } else { format!("{l}\n") })
        .collect();
    let new = format!("{}{README_START}\n\n{body}\n{}", &text[..start], &text[end..]);
    std::fs::write(path, new).map_err(|e| format!("write {}: {e}", path.display()))
}
