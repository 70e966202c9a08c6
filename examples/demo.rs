//! The demo: a server-like program run twice, once on the system allocator
//! and once on scavalloc, each in its own process, with its memory shown as
//! it runs.
//!
//! ```text
//! cargo run --release --example demo            # both runs, chart, table
//! cargo run --release --example demo -- --trace # with the scavenger's trace
//! ```
//!
//! Each run: a burst of work (two threads build about 600 MiB of request
//! buffers, session maps and strings), most of it dropped, 8 s of idle, a
//! second, smaller burst, and 4 s more of idle. The parent shows a live RSS
//! line for the run in progress, then an ASCII chart and a table (peak RSS,
//! RSS after the idle, throughput of the bursts, scavenger CPU), and writes
//! an SVG chart to `target/demo.svg`.

#[path = "support/chart.rs"]
mod chart;
#[path = "support/dispatch.rs"]
mod dispatch;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: dispatch::Dispatch = dispatch::Dispatch;

const MIB: f64 = 1024.0 * 1024.0;
const SAMPLE: Duration = Duration::from_millis(250);

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64 / MIB
}

/// One burst: `threads` workers each build `mib` MiB of "requests" (buffers
/// of 64 B to 16 KiB, with a session map and a log line each), and keep
/// one in ten. Returns the kept objects and the requests handled.
/// What a burst leaves alive: each worker's kept requests and sessions, and
/// the number of requests handled.
type Survivors = (Vec<Vec<Vec<u8>>>, Vec<HashMap<u64, String>>, u64);

fn burst(threads: usize, mib: usize) -> Survivors {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                // Requests pile up (a queue under load), then nine in ten
                // complete and are dropped; the rest stay as sessions.
                let mut queue = Vec::new();
                let mut sessions = HashMap::new();
                let mut bytes = 0;
                let mut n: u64 = 0;
                let mut x = 0x9e37_79b9_u64 + t as u64;
                while bytes < mib << 20 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let size = 64 + (x % 16_320) as usize;
                    queue.push(vec![(n % 251) as u8; size]);
                    if n.is_multiple_of(10) {
                        sessions.insert(n, format!("request {n} from client {} took {} us", x % 1000, size / 7));
                    }
                    bytes += size;
                    n += 1;
                }
                let mut i = 0u64;
                queue.retain(|_| {
                    i += 1;
                    i.is_multiple_of(10)
                });
                let kept = queue;
                (kept, sessions, n)
            })
        })
        .collect();
    let mut kept = Vec::new();
    let mut sessions = Vec::new();
    let mut total = 0;
    for h in handles {
        let (k, s, n) = h.join().unwrap();
        kept.push(k);
        sessions.push(s);
        total += n;
    }
    (kept, sessions, total)
}

/// The child: the workload on the allocator its first argument names,
/// printing `T <seconds> <rss MiB>` samples and `R <key> <value>` results.
fn child() {
    let start = Instant::now();
    let sampler = std::thread::spawn(move || loop {
        println!("T {:.2} {:.1}", start.elapsed().as_secs_f64(), rss_mib());
        std::io::stdout().flush().ok();
        std::thread::sleep(SAMPLE);
    });
    let t = Instant::now();
    let (kept, sessions, n1) = burst(2, 300);
    let first = n1 as f64 / t.elapsed().as_secs_f64();
    println!("R burst1 {first:.0}");
    std::thread::sleep(Duration::from_secs(8));
    println!("R after_idle {:.1}", rss_mib());
    let t = Instant::now();
    let (kept2, sessions2, n2) = burst(2, 100);
    let second = n2 as f64 / t.elapsed().as_secs_f64();
    println!("R burst2 {second:.0}");
    drop((kept2, sessions2));
    std::thread::sleep(Duration::from_secs(4));
    println!("R end {:.1}", rss_mib());
    if dispatch::choice() == dispatch::SCAVALLOC {
        let s = scavalloc::stats();
        println!("R scavenger_ms {:.1}", s.scavenger_cpu_ns as f64 / 1e6);
    }
    drop((kept, sessions, sampler));
    println!("R done 1");
}

struct Run {
    name: &'static str,
    samples: Vec<(f64, f64)>,
    results: HashMap<String, f64>,
}

fn run(name: &'static str, trace: bool) -> Run {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg(name).stdout(Stdio::piped()).stderr(if trace { Stdio::inherit() } else { Stdio::null() });
    if trace {
        cmd.env("SCAVALLOC_SCAVTRACE", "1");
    }
    let mut child = cmd.spawn().expect("start the child");
    let mut r = Run { name, samples: Vec::new(), results: HashMap::new() };
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap_or_default();
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["T", t, rss] => {
                let (t, rss): (f64, f64) = (t.parse().unwrap_or(0.0), rss.parse().unwrap_or(0.0));
                r.samples.push((t, rss));
                let bar = "#".repeat((rss / 16.0) as usize);
                print!("\r{name:>9}  t={t:5.1}s  RSS {rss:7.1} MiB  {bar:<45}");
                std::io::stdout().flush().ok();
            }
            ["R", k, v] => {
                r.results.insert(k.to_string(), v.parse().unwrap_or(0.0));
                if *k == "done" {
                    break;
                }
            }
            _ => {}
        }
    }
    println!();
    let status = child.wait().expect("wait for the child");
    assert!(status.success(), "{name} run failed: {status}");
    r
}

fn ascii_chart(runs: &[Run]) {
    let t_max = runs.iter().flat_map(|r| r.samples.last()).map(|s| s.0).fold(1.0, f64::max);
    let rss_max = runs.iter().flat_map(|r| r.samples.iter()).map(|s| s.1).fold(1.0, f64::max);
    const W: usize = 64;
    const H: usize = 12;
    let mut grid = vec![vec![' '; W]; H];
    for (run, mark) in runs.iter().zip(['s', '*']) {
        for &(t, rss) in &run.samples {
            let x = ((t / t_max) * (W - 1) as f64) as usize;
            let y = H - 1 - ((rss / rss_max) * (H - 1) as f64) as usize;
            if grid[y][x] == ' ' || mark == '*' {
                grid[y][x] = mark;
            }
        }
    }
    println!("\nRSS over time (s = system, * = scavalloc); top = {rss_max:.0} MiB, right = {t_max:.0} s");
    for row in grid {
        println!("  |{}", row.into_iter().collect::<String>());
    }
    println!("  +{}", "-".repeat(W));
}

/// RSS over time of both runs, and the throughput of their bursts.
fn svg(runs: &[Run]) -> String {
    let series: Vec<chart::Series> = runs.iter().map(|r| chart::Series { name: r.name, points: &r.samples }).collect();
    let frame = chart::Frame {
        x: 0.0,
        y: 0.0,
        width: 900.0,
        height: 420.0,
        title: "RSS over time: burst, 8 s idle, second burst, 4 s idle",
        x_label: "seconds",
        y_label: "RSS (MiB)",
    };
    let mut body = String::new();
    chart::line_chart(&mut body, &frame, &series);
    let names: Vec<&str> = runs.iter().map(|r| r.name).collect();
    let thousands = |key: &str| runs.iter().map(|r| r.results.get(key).map_or(f64::NAN, |v| v / 1e3)).collect();
    let bars = chart::Frame {
        y: 440.0,
        height: 300.0,
        title: "Throughput of the bursts",
        x_label: "",
        y_label: "thousand requests/s",
        ..frame
    };
    chart::bar_chart(
        &mut body,
        &bars,
        &["burst 1", "burst 2"],
        &names,
        &[thousands("burst1"), thousands("burst2")],
        None,
    );
    chart::document(frame.width, bars.y + bars.height, &body)
}

fn main() {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("system") | Some("scavalloc") => return child(),
        Some("--trace") | None => {}
        Some(other) => {
            eprintln!("usage: demo [--trace]   (unknown argument {other:?})");
            std::process::exit(2);
        }
    }
    let trace = arg.as_deref() == Some("--trace");
    println!("scavalloc demo: the same server-like program on the system allocator and on scavalloc.");
    println!("Each run: burst (~600 MiB, 90% dropped), 8 s idle, smaller burst, 4 s idle.\n");
    let runs = [run("system", false), run("scavalloc", trace)];
    ascii_chart(&runs);
    let peak = |r: &Run| r.samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let get = |r: &Run, k: &str| r.results.get(k).copied().unwrap_or(f64::NAN);
    println!(
        "\n| allocator | peak RSS | RSS after 8 s idle | RSS at end | burst 1 req/s | burst 2 req/s | scavenger CPU |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in &runs {
        let cpu = r.results.get("scavenger_ms").map_or("-".to_string(), |ms| format!("{ms:.0} ms"));
        println!(
            "| {} | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.0} | {:.0} | {} |",
            r.name,
            peak(r),
            get(r, "after_idle"),
            get(r, "end"),
            get(r, "burst1"),
            get(r, "burst2"),
            cpu
        );
    }
    println!(
        "\nOn scavalloc the second burst faults back in the pages the scavenger returned during the idle;\n\
         the system allocator kept them, and reuses them without a fault."
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).ok();
    let path = dir.join("demo.svg");
    std::fs::write(&path, svg(&runs)).expect("write the chart");
    println!("\nchart written to {}", path.display());
}
