//! `libscavalloc.so` under `LD_PRELOAD`: a C program exercising every
//! exported function's edge cases (which also passes on glibc), a
//! multi-threaded C stress, RSS after frees and idle, and real programs
//! whose output must match a run without scavalloc.
//!
//! It runs without libtest's harness (`harness = false`), through
//! `libtest-mimic`, so that a case whose program is not on the machine is
//! reported as *ignored*, with the reason printed once, never as passed.
//! `.ci/run` installs the programs, so CI runs every case.
//!
//! The library is built by the test itself (`cargo build --release -p
//! scavalloc-capi` into `target/capi-test`): a `cdylib` is not built for
//! integration tests.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use support::{have, plain, preloaded, run, scratch, served_by_scavalloc, text};

/// An empty scratch directory of its own for one test.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The C test program `api.c`, compiled once (only by cases that run:
/// they need `cc`).
fn c_program() -> Result<PathBuf, Failed> {
    Ok(support::c_program("api")?)
}

fn c_api_edge_cases_hold_on_scavalloc_and_on_glibc() -> Result<(), Failed> {
    let api = c_program()?;
    let mut cmd = plain(Command::new(&api));
    cmd.arg("edge");
    let glibc = run(cmd, Duration::from_secs(60), "api edge (glibc)")?;
    assert!(glibc.status.success(), "the checks fail on glibc itself:\n{}", text(&glibc.stdout));
    let mut cmd = preloaded(Command::new(&api))?;
    cmd.arg("edge");
    let ours = run(cmd, Duration::from_secs(60), "api edge (scavalloc)")?;
    println!("{}", text(&ours.stdout));
    assert!(
        ours.status.success() && text(&ours.stdout).contains("ok edge"),
        "{}\n{}",
        text(&ours.stdout),
        text(&ours.stderr)
    );
    // The statistics printed at exit prove scavalloc served the program.
    assert!(served_by_scavalloc(&ours), "scavalloc was not the allocator:\n{}", text(&ours.stderr));
    Ok(())
}

fn c_threads_with_cross_thread_frees() -> Result<(), Failed> {
    let mut cmd = preloaded(Command::new(c_program()?))?;
    cmd.arg("stress");
    let t = Instant::now();
    let out = run(cmd, Duration::from_secs(180), "api stress")?;
    println!("stress under scavalloc: {:?}\n{}", t.elapsed(), text(&out.stdout));
    assert!(
        out.status.success() && text(&out.stdout).contains("ok stress"),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(served_by_scavalloc(&out), "scavalloc was not the allocator:\n{}", text(&out.stderr));
    Ok(())
}

fn a_c_program_idling_after_frees_gives_memory_back() -> Result<(), Failed> {
    let mut cmd = preloaded(Command::new(c_program()?))?;
    cmd.arg("idle");
    let out = run(cmd, Duration::from_secs(60), "api idle")?;
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(served_by_scavalloc(&out), "scavalloc was not the allocator:\n{}", text(&out.stderr));
    let nums: Vec<usize> = stdout.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (peak, after) = (nums[0], nums[1]);
    // A tenth of the 1 KiB blocks stay, so about four OS pages in ten keep
    // a live block: glibc stays at the peak, scavalloc gives back the other
    // pages (the floor is a little over 40% of the peak).
    assert!(after <= peak * 6 / 10, "rss stayed at {after} KiB of a {peak} KiB peak");
    Ok(())
}

fn freeing_a_foreign_pointer_stops_the_program_with_one_line() -> Result<(), Failed> {
    use std::os::unix::process::ExitStatusExt;
    let api = c_program()?;
    let mut cmd = preloaded(Command::new("sh"))?;
    // Core dumps off for the program that aborts on purpose.
    cmd.args(["-c", "ulimit -c 0; exec \"$0\" foreign"]).arg(api);
    let out = run(cmd, Duration::from_secs(60), "api foreign")?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("freeing a foreign pointer") && !stdout.contains("survived"), "{stdout}");
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{:?}\n{stderr}", out.status);
    let fatal: Vec<&str> = stderr.lines().filter(|l| l.starts_with("scavalloc: fatal:")).collect();
    assert_eq!(fatal.len(), 1, "expected one fatal line:\n{stderr}");
    assert!(fatal[0].contains("foreign pointer"), "{}", fatal[0]);
    Ok(())
}

/// Runs `script` with `sh -c` in `dir`, with and without scavalloc, and
/// checks both succeed with the same output. (Whether scavalloc served
/// the run is not asked of its exit statistics here: coreutils close
/// stderr at exit, before the statistics are written.)
fn same_output(name: &str, dir: &Path, script: &str, env: &[(&str, &str)]) -> Result<(), Failed> {
    let make = || {
        let mut c = Command::new("sh");
        c.current_dir(dir).args(["-c", script]).envs(env.iter().copied()).env("LC_ALL", "C");
        c
    };
    let t = Instant::now();
    let glibc: Output = run(plain(make()), Duration::from_secs(300), name)?;
    let glibc_time = t.elapsed();
    let t = Instant::now();
    let ours = run(preloaded(make())?, Duration::from_secs(300), name)?;
    let ours_time = t.elapsed();
    assert!(glibc.status.success(), "{name} fails without scavalloc:\n{}", text(&glibc.stderr));
    assert!(ours.status.success(), "{name} under scavalloc: {:?}\n{}", ours.status, text(&ours.stderr));
    assert_eq!(text(&ours.stdout), text(&glibc.stdout), "{name}: output differs under scavalloc");
    assert!(!glibc.stdout.is_empty(), "{name} printed nothing");
    println!("{name}: same output ({} bytes); glibc {glibc_time:?}, scavalloc {ours_time:?}", glibc.stdout.len());
    Ok(())
}

fn sort_of_a_large_file() -> Result<(), Failed> {
    let dir = fresh_dir("sort");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut data = String::new();
    for i in 0..300_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data += &format!("{:016x} line {i} {}\n", x, "z".repeat((x % 40) as usize));
    }
    std::fs::write(dir.join("input.txt"), data).unwrap();
    same_output("sort", &dir, "sort input.txt | md5sum; sort -r -k3 input.txt | tail -3", &[])
}

fn python_dicts_and_lists() -> Result<(), Failed> {
    let script = r#"python3 -c '
import os
d = {i: str(i) * 3 for i in range(300000)}
l = [list(range(i % 50)) for i in range(40000)]
s = sum(len(v) for v in d.values()) + sum(len(x) for x in l)
d2 = {k: v[::-1] for k, v in d.items() if k % 3}
print(s, len(d2), d2[299999], sorted(d)[12345])
del d, l, d2
print("done")
'"#;
    same_output("python", &scratch(), script, &[("PYTHONMALLOC", "malloc")])
}

fn sqlite_insert_index_query() -> Result<(), Failed> {
    let dir = fresh_dir("sqlite");
    let sql = "create table t(a integer primary key, b text, c real);\n\
        with recursive n(x) as (select 1 union all select x + 1 from n limit 100000)\n\
        insert into t select x, printf('%08d-%s', (x * 7919) % 100003, substr('abcdefghij', x % 10 + 1)), x * 0.5 from n;\n\
        create index tb on t(b);\n\
        select count(*), sum(c), min(b), max(b) from t;\n\
        select b from t where b like '0001%' order by b limit 5;\n\
        select substr(b, 10), count(*) from t group by 1 order by 1;\n";
    std::fs::write(dir.join("work.sql"), sql).unwrap();
    same_output("sqlite3", &dir, "rm -f a.db && sqlite3 a.db < work.sql", &[])
}

fn git_on_a_generated_repository() -> Result<(), Failed> {
    let dir = fresh_dir("git");
    for i in 0..300 {
        let body: String = (0..(i % 50 + 10)).map(|j| format!("fn f{i}_{j}() -> u32 {{ {} }}\n", i * j)).collect();
        std::fs::write(dir.join(format!("file{i}.rs")), body).unwrap();
    }
    let script = "rm -rf repo && mkdir repo && cp file*.rs repo/ && cd repo && git init -q && git add . && \
        git commit -q -m first && sed -i 's/u32/u64/' file1*.rs && git commit -q -am second && \
        git rev-parse HEAD && git log --stat | tail -5 && git grep -c u64 | wc -l && git gc -q && git count-objects -v | grep -v size";
    let env = [
        ("GIT_AUTHOR_NAME", "t"),
        ("GIT_AUTHOR_EMAIL", "t@example.com"),
        ("GIT_COMMITTER_NAME", "t"),
        ("GIT_COMMITTER_EMAIL", "t@example.com"),
        ("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z"),
        ("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("HOME", "/nonexistent"),
    ];
    same_output("git", &dir, script, &env)
}

fn gcc_compiles_a_generated_file() -> Result<(), Failed> {
    let dir = fresh_dir("gcc");
    let mut src = String::from("#include <stdio.h>\n");
    for i in 0..1500 {
        src += &format!(
            "int f{i}(int x) {{ int s = 0; for (int k = 0; k < x; k++) s += k * {i} ^ (s >> 3); return s; }}\n"
        );
    }
    src += "int main(void) { long t = 0;\n";
    for i in (0..1500).step_by(7) {
        src += &format!("  t += f{i}({});\n", i % 100);
    }
    src += "  printf(\"%ld\\n\", t); return 0; }\n";
    std::fs::write(dir.join("gen.c"), src).unwrap();
    same_output("gcc", &dir, "gcc -O2 -o gen gen.c && ./gen && gcc -O2 -S -o - gen.c | md5sum", &[])
}

/// A case, and the programs it needs.
struct Case {
    name: &'static str,
    needs: &'static [&'static str],
    run: fn() -> Result<(), Failed>,
}

const CASES: &[Case] = &[
    Case {
        name: "c_api_edge_cases_hold_on_scavalloc_and_on_glibc",
        needs: &["cc"],
        run: c_api_edge_cases_hold_on_scavalloc_and_on_glibc,
    },
    Case { name: "c_threads_with_cross_thread_frees", needs: &["cc"], run: c_threads_with_cross_thread_frees },
    Case {
        name: "a_c_program_idling_after_frees_gives_memory_back",
        needs: &["cc"],
        run: a_c_program_idling_after_frees_gives_memory_back,
    },
    Case {
        name: "freeing_a_foreign_pointer_stops_the_program_with_one_line",
        needs: &["cc"],
        run: freeing_a_foreign_pointer_stops_the_program_with_one_line,
    },
    Case { name: "sort_of_a_large_file", needs: &["sort", "md5sum"], run: sort_of_a_large_file },
    Case { name: "python_dicts_and_lists", needs: &["python3"], run: python_dicts_and_lists },
    Case { name: "sqlite_insert_index_query", needs: &["sqlite3"], run: sqlite_insert_index_query },
    Case { name: "git_on_a_generated_repository", needs: &["git", "sed", "wc"], run: git_on_a_generated_repository },
    Case { name: "gcc_compiles_a_generated_file", needs: &["gcc", "md5sum"], run: gcc_compiles_a_generated_file },
];

/// Each case is a trial, ignored (with the reason printed once, before the
/// run) when a program it needs is missing: a case that cannot run its
/// check must not count as passed.
fn main() {
    let args = Arguments::from_args();
    let mut missing: Vec<&str> = Vec::new();
    let trials = CASES
        .iter()
        .map(|case| {
            let absent: Vec<&str> = case.needs.iter().copied().filter(|p| !have(p)).collect();
            for p in &absent {
                if !missing.contains(p) {
                    missing.push(p);
                }
            }
            if !absent.is_empty() {
                println!("ignored: {} needs {} (not on this machine)", case.name, absent.join(", "));
            }
            let run = case.run;
            // libtest-mimic reports a panic in `run` as the trial's failure,
            // as it does an error (a program that would not build or run).
            Trial::test(case.name, run).with_ignored_flag(!absent.is_empty())
        })
        .collect();
    if !missing.is_empty() {
        println!("missing programs: {} (.ci/run installs them)", missing.join(", "));
    }
    libtest_mimic::run(&args, trials).exit();
}
