//! Two processes in one memory cgroup with a 900 MiB limit: A allocates
//! 600 MiB of small objects, frees 90% of them and idles; B then allocates
//! and writes 450 MiB, right away or 0.3 s later. With glibc, jemalloc or
//! mimalloc in A the kernel OOM-kills A, which keeps its free memory. With
//! scavalloc in A (`LD_PRELOAD`, no `SCAVALLOC_` variable set) both must
//! survive: A sees the cgroup's limit, and gives back the free memory the
//! cgroup could not absorb twice.
//!
//! It needs to make a memory cgroup (root, and a writable v1 memory
//! controller or a v2 hierarchy with the memory controller): where it
//! cannot, the cases are reported as ignored with the reason, never as
//! passed. It runs without libtest's harness for that (`libtest-mimic`).

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use support::{c_program, have, library};

const LIMIT: u64 = 900 << 20;

/// A fresh memory cgroup with a 900 MiB limit, under the process's own, or
/// why none can be made.
fn make_cgroup(name: &str) -> Result<(PathBuf, &'static str), String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let v1 = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers.split(',').any(|c| c == "memory").then(|| path.to_string())
    });
    let candidates: Vec<(PathBuf, &'static str, &'static str)> = match v1 {
        Some(path) => vec![(PathBuf::from(format!("/sys/fs/cgroup/memory{path}")), "memory.limit_in_bytes", "v1")],
        None => {
            let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").to_string();
            vec![(PathBuf::from(format!("/sys/fs/cgroup{path}")), "memory.max", "v2")]
        }
    };
    let mut why = Vec::new();
    for (parent, limit_file, kind) in candidates {
        let dir = parent.join(name);
        let _ = std::fs::remove_dir(&dir);
        if let Err(e) = std::fs::create_dir(&dir) {
            why.push(format!("cannot make a {kind} memory cgroup {}: {e}", dir.display()));
            continue;
        }
        match std::fs::write(dir.join(limit_file), LIMIT.to_string()) {
            Ok(()) => return Ok((dir, kind)),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                why.push(format!("cannot set {} in {}: {e}", limit_file, dir.display()));
            }
        }
    }
    Err(why.join("; "))
}

/// Runs `args` of the program inside `cgroup` (the shell moves itself in
/// first), with scavalloc preloaded if `preload`.
fn in_cgroup(cgroup: &PathBuf, args: &[&str], preload: bool) -> Result<Command, Failed> {
    let prog = c_program("two_proc")?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(cgroup)
        .arg(prog)
        .args(args)
        .env_remove("LD_PRELOAD");
    for (k, _) in std::env::vars() {
        if k.starts_with("SCAVALLOC_") || k.starts_with("MEMORY_PRESSURE_") {
            cmd.env_remove(k);
        }
    }
    if preload {
        cmd.env("LD_PRELOAD", library()?);
    }
    Ok(cmd)
}

fn both_survive(delay: Duration, name: &str) -> Result<(), Failed> {
    // One scenario at a time: each takes up to 1 GiB of the machine.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (cgroup, kind) = make_cgroup(name)?;
    let result = (|| -> Result<(), Failed> {
        let mut a = in_cgroup(&cgroup, &["a", "3"], true)?.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let mut out = BufReader::new(a.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "freed" {
            let status = a.wait()?;
            return Err(format!("A did not get to its frees ({kind} cgroup): {status}, printed {line:?}").into());
        }
        std::thread::sleep(delay);
        let b = in_cgroup(&cgroup, &["b"], false)?.output()?;
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        let status = a.wait()?;
        let b_out = String::from_utf8_lossy(&b.stdout);
        if !(status.success() && rest.contains("A ok")) {
            return Err(format!(
                "A (scavalloc) did not survive B {delay:?} after its frees in a {kind} cgroup limited to 900 MiB: \
                 {status}; B: {} {b_out:?}",
                b.status
            )
            .into());
        }
        if !(b.status.success() && b_out.contains("B ok")) {
            return Err(format!("B did not survive: {} {b_out:?}", b.status).into());
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir(&cgroup);
    result
}

fn main() {
    let args = Arguments::from_args();
    let mut cannot = if have("cc") { None } else { Some("no `cc` on this machine".to_string()) };
    if cannot.is_none() {
        match make_cgroup(&format!("scavalloc-probe-{}", std::process::id())) {
            Ok((dir, _)) => {
                let _ = std::fs::remove_dir(dir);
            }
            Err(why) => cannot = Some(why),
        }
    }
    if let Some(why) = &cannot {
        println!("cgroup_oom: ignored: {why}");
    }
    let pid = std::process::id();
    let trials = vec![
        Trial::test("a_survives_b_0_3_s_after_its_frees", move || {
            both_survive(Duration::from_millis(300), &format!("scavalloc-oom-a-{pid}"))
        }),
        Trial::test("a_survives_b_right_after_its_frees", move || {
            both_survive(Duration::ZERO, &format!("scavalloc-oom-b-{pid}"))
        }),
    ]
    .into_iter()
    .map(|t| t.with_ignored_flag(cannot.is_some()))
    .collect();
    libtest_mimic::run(&args, trials).exit();
}
