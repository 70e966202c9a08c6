//! C `free` under `LD_PRELOAD` catches misuse at the free: every small
//! double free (also `free(a); free(b); free(a)`, whose first free put `a`
//! in the thread's cache, and one whose frees ran on two threads), every
//! interior pointer, and a large object's double free, each with exactly
//! one `scavalloc: fatal:` line naming the address and the fault; and a
//! correct C program runs to the end. The program is `c/misuse.c`.
//!
//! It runs without libtest's harness (`harness = false`, through
//! `libtest-mimic`): without `cc` the cases are reported as ignored, with
//! the reason printed, never as passed. The library and the program are
//! built by `support`.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use support::{c_program, have, library, run, text};

/// Runs the program's `case` under `LD_PRELOAD` with core dumps off and
/// `envs` set.
fn run_case(case: &str, envs: &[(&str, &str)]) -> Result<Output, Failed> {
    let prog = c_program("misuse")?;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -c 0; exec \"$0\" \"$1\""])
        .arg(prog)
        .arg(case)
        .envs(envs.iter().copied())
        .env("LD_PRELOAD", library()?);
    Ok(run(cmd, Duration::from_secs(120), case)?)
}

/// Checks that `case` stopped at its fault: SIGABRT, nothing after the
/// fault, and exactly one fatal line on stderr that names the announced
/// address and says `what`.
fn expect_fatal(case: &str, envs: &[(&str, &str)], what: &str) -> Result<(), Failed> {
    let out = run_case(case, envs)?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let ctx = format!("case {case}: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "not stopped by SIGABRT; {ctx}");
    assert!(!stdout.contains("SURVIVED"), "went on after the fault; {ctx}");
    let addr = stdout
        .split("FREEING ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("never reached the fault; {ctx}"))
        .to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr is not exactly one line; {ctx}");
    assert!(lines[0].starts_with("scavalloc: fatal:"), "{ctx}");
    assert!(
        lines[0].split(|c: char| !c.is_ascii_hexdigit() && c != 'x').any(|w| w == addr),
        "the fatal line does not name {addr}; {ctx}"
    );
    assert!(lines[0].contains(what), "the fatal line does not say {what:?}; {ctx}");
    Ok(())
}

/// The correct program runs to the end, with nothing on stderr (a preload
/// that failed would have the loader say so there).
fn a_correct_program_runs_to_the_end() -> Result<(), Failed> {
    let out = run_case("correct", &[])?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("correct done"), "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");
    Ok(())
}

/// A fault case of `misuse.c`: the trial's name, the program's case, its
/// environment, and what the fatal line must say.
struct Fault {
    name: &'static str,
    case: &'static str,
    envs: &'static [(&'static str, &'static str)],
    what: &'static str,
}

const FAULTS: &[Fault] = &[
    // `free(a); free(b); free(a)` on 32-byte objects.
    Fault { name: "small_double_free_behind_another_free", case: "double-small", envs: &[], what: "double free" },
    Fault { name: "small_double_free_across_threads", case: "double-threads", envs: &[], what: "double free" },
    // A stale free of a reused block frees its new owner's object: the new
    // owner's own free is then the second free, and is caught.
    Fault { name: "stale_free_of_a_reused_block", case: "double-reused", envs: &[], what: "double free" },
    Fault { name: "interior_pointer_8_bytes_in", case: "interior-8", envs: &[], what: "interior pointer" },
    Fault {
        name: "interior_pointer_half_way_into_an_object",
        case: "interior-half",
        envs: &[],
        what: "interior pointer",
    },
    Fault { name: "interior_pointer_into_a_large_object", case: "interior-large", envs: &[], what: "interior pointer" },
    // A large object not kept in a cache goes back to the page heap at
    // once; the background scavenger is off so that no thread start-up can
    // allocate on its pages before the second free.
    Fault {
        name: "large_double_free",
        case: "double-large",
        envs: &[("SCAVALLOC_BACKGROUND", "0")],
        what: "double free",
    },
    Fault {
        name: "large_double_free_of_a_cached_large_object",
        case: "double-large-cached",
        envs: &[],
        what: "double free",
    },
    Fault { name: "realloc_of_a_freed_block", case: "realloc-freed", envs: &[], what: "double free" },
];

fn main() {
    let args = Arguments::from_args();
    let no_cc = !have("cc");
    if no_cc {
        println!("misuse_preload: no `cc` on this machine, so misuse.c cannot be built: these tests are ignored");
    }
    let mut trials = vec![Trial::test("a_correct_program_runs_to_the_end", a_correct_program_runs_to_the_end)];
    trials.extend(FAULTS.iter().map(|f| Trial::test(f.name, move || expect_fatal(f.case, f.envs, f.what))));
    let trials = trials.into_iter().map(|t| t.with_ignored_flag(no_cc)).collect();
    libtest_mimic::run(&args, trials).exit();
}
