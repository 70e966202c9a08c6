//! Two processes in one memory cgroup, side by side on the system allocator
//! and on scavalloc: `cargo run --release --example container` (as root,
//! with a writable memory controller: cgroup v1's, or v2 with the memory
//! controller enabled).
//!
//! The cgroup has a 900 MiB hard limit. Process A allocates 600 MiB of
//! 256-byte objects, frees nine in ten of them (whole spans free) and idles
//! for three seconds; process B, on the system allocator, then allocates
//! and writes 450 MiB, 0.3 s after A's frees, and again right after them.
//! A keeps what it freed unless its allocator gives it back: the kernel
//! OOM-kills A on the system allocator (and on jemalloc and mimalloc under
//! `LD_PRELOAD`, as measured for the project's issue). On scavalloc, with no
//! setting at all, A sees the cgroup's limit, gives back the free memory
//! the cgroup could not absorb, and both survive.
//!
//! Each process is this program again: its first argument picks A's
//! allocator (`scavalloc` or `system`, see `support/dispatch.rs`), its
//! second the role.

#[path = "support/dispatch.rs"]
mod dispatch;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

#[global_allocator]
static GLOBAL: dispatch::Dispatch = dispatch::Dispatch;

const LIMIT: u64 = 900 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(2).map(String::as_str) {
        Some("a") => process_a(),
        Some("b") => process_b(),
        _ => driver(),
    }
}

/// A: 600 MiB of small objects, 90% freed, then idle.
fn process_a() {
    let n = (600usize << 20) / 256;
    let mut objects: Vec<Box<[u8; 256]>> = (0..n).map(|i| Box::new([(i % 251) as u8; 256])).collect();
    // The first nine in ten in allocation order: whole spans free.
    let kept = objects.split_off(n / 10 * 9);
    drop(objects);
    println!("freed");
    std::thread::sleep(Duration::from_secs(3));
    let first = n / 10 * 9;
    let intact = kept.iter().enumerate().all(|(k, o)| o.iter().all(|&b| b == ((first + k) % 251) as u8));
    println!("A {}", if intact { "ok" } else { "CORRUPT" });
}

/// B: 450 MiB written in one block.
fn process_b() {
    let block = vec![2u8; 450 << 20];
    let sum: u64 = block.iter().step_by(4096).map(|&b| u64::from(b)).sum();
    println!("B ok {sum}");
}

/// A fresh memory cgroup under this process's own, with the limit; or why
/// none can be made here.
fn make_cgroup(name: &str) -> Result<PathBuf, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let v1 = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers.split(',').any(|c| c == "memory").then(|| path.to_string())
    });
    let (dir, limit_file) = match v1 {
        Some(path) => (PathBuf::from(format!("/sys/fs/cgroup/memory{path}/{name}")), "memory.limit_in_bytes"),
        None => {
            let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim_end_matches('/');
            (PathBuf::from(format!("/sys/fs/cgroup{path}/{name}")), "memory.max")
        }
    };
    let _ = std::fs::remove_dir(&dir);
    std::fs::create_dir(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    if let Err(e) = std::fs::write(dir.join(limit_file), LIMIT.to_string()) {
        let _ = std::fs::remove_dir(&dir);
        return Err(format!("cannot set {limit_file} in {}: {e}", dir.display()));
    }
    Ok(dir)
}

/// This program as `allocator role`, moved into `cgroup` before it starts.
fn in_cgroup(cgroup: &PathBuf, allocator: &str, role: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(cgroup)
        .arg(std::env::current_exe().expect("this program's path"))
        .args([allocator, role]);
    for (k, _) in std::env::vars() {
        if k.starts_with("SCAVALLOC_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// One run: A on `allocator`, B `delay` after A's frees. Returns what
/// became of each.
fn scenario(allocator: &str, delay: Duration, cgroup: &PathBuf) -> (String, String) {
    let mut a = in_cgroup(cgroup, allocator, "a").stdout(Stdio::piped()).spawn().expect("start A");
    let mut out = BufReader::new(a.stdout.take().unwrap());
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    if line.trim() != "freed" {
        let status = a.wait().expect("wait for A");
        return (format!("died before its frees ({status})"), "not run".to_string());
    }
    std::thread::sleep(delay);
    let b = in_cgroup(cgroup, "system", "b").output().expect("run B");
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let status = a.wait().expect("wait for A");
    let fate = |ok: bool, status: std::process::ExitStatus| {
        if ok {
            "survived".to_string()
        } else if std::os::unix::process::ExitStatusExt::signal(&status) == Some(9) {
            "OOM-killed".to_string()
        } else {
            format!("failed ({status})")
        }
    };
    (
        fate(status.success() && rest.contains("A ok"), status),
        fate(b.status.success() && String::from_utf8_lossy(&b.stdout).contains("B ok"), b.status),
    )
}

fn driver() {
    let cgroup = match make_cgroup(&format!("scavalloc-example-{}", std::process::id())) {
        Ok(dir) => dir,
        Err(why) => {
            println!("container: cannot run the scenario here ({why}).");
            println!("It needs root and a writable memory cgroup controller.");
            return;
        }
    };
    println!("One memory cgroup, 900 MiB hard limit. A: 600 MiB of 256 B objects, 90% freed, then idle.");
    println!("B (system allocator): 450 MiB written, some time after A's frees.\n");
    println!("{:<12} {:<22} {:<14} {:<14}", "A's allocator", "B starts after A's frees", "A", "B");
    for allocator in ["system", "scavalloc"] {
        for (delay, what) in [(Duration::from_millis(300), "0.3 s"), (Duration::ZERO, "at once")] {
            let (a, b) = scenario(allocator, delay, &cgroup);
            println!("{allocator:<12} {what:<22} {a:<14} {b:<14}");
        }
    }
    let _ = std::fs::remove_dir(&cgroup);
}
