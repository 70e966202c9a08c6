//! C `free` under `LD_PRELOAD` catches misuse at the free: every small
//! double free (also `free(a); free(b); free(a)`, whose first free put `a`
//! in the thread's cache, and one whose frees ran on two threads), every
//! interior pointer, and a large object's double free, each with exactly
//! one `scavalloc: fatal:` line naming the address and the fault; and a
//! correct C program runs to the end. The program is `c/misuse.c`.
//!
//! The library is built by the test (`cargo build --release -p
//! scavalloc-capi` into `target/capi-test`, as `ld_preload.rs` does): a
//! `cdylib` is not built for integration tests.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn target() -> PathBuf {
    workspace().join("target").join("capi-test")
}

/// Runs `cmd` with a deadline; kills it and panics past the deadline.
fn run(mut cmd: Command, timeout: Duration, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {timeout:?}, killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output { status, stdout: o.join().unwrap(), stderr: e.join().unwrap() }
}

fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        cmd.current_dir(workspace())
            .args(["build", "--release", "-p", "scavalloc-capi"])
            .env("CARGO_TARGET_DIR", target());
        let out = run(cmd, Duration::from_secs(600), "cargo build -p scavalloc-capi");
        assert!(out.status.success(), "building the library failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let lib = target().join("release").join("libscavalloc.so");
        assert!(lib.exists(), "{} was not built", lib.display());
        lib
    })
}

/// `c/misuse.c`, compiled once; `None` (with the reason printed) when there
/// is no C compiler.
fn program() -> Option<&'static Path> {
    static PROG: OnceLock<Option<PathBuf>> = OnceLock::new();
    PROG.get_or_init(|| {
        let have_cc = Command::new("sh").args(["-c", "command -v cc"]).output().is_ok_and(|o| o.status.success());
        if !have_cc {
            println!("skipped: no cc on this machine");
            return None;
        }
        let dir = target().join("scratch");
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("misuse");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("c").join("misuse.c");
        let mut cmd = Command::new("cc");
        // `-fno-builtin`: without it the compiler may drop a `malloc`
        // whose block is only freed, or a second `free`, and the fault
        // never reaches the allocator.
        cmd.args(["-O1", "-fno-builtin", "-pthread", "-Wall", "-Wno-use-after-free", "-Wno-free-nonheap-object", "-o"])
            .arg(&exe)
            .arg(&src);
        let out = run(cmd, Duration::from_secs(120), "cc misuse.c");
        assert!(out.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&out.stderr));
        Some(exe)
    })
    .as_deref()
}

/// Runs the program's `case` under `LD_PRELOAD` with core dumps off.
fn run_case(case: &str) -> Option<Output> {
    run_case_env(case, &[])
}

/// [`run_case`] with extra environment variables.
fn run_case_env(case: &str, envs: &[(&str, &str)]) -> Option<Output> {
    let prog = program()?;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -c 0; exec \"$0\" \"$1\""])
        .arg(prog)
        .arg(case)
        .envs(envs.iter().copied())
        .env("LD_PRELOAD", library());
    Some(run(cmd, Duration::from_secs(120), case))
}

/// Checks that `case` stopped at its fault: SIGABRT, nothing after the
/// fault, and exactly one fatal line on stderr that names the announced
/// address and says `what`.
fn expect_fatal(case: &str, what: &str) {
    expect_fatal_env(case, &[], what);
}

/// [`expect_fatal`] with extra environment variables.
fn expect_fatal_env(case: &str, envs: &[(&str, &str)], what: &str) {
    let Some(out) = run_case_env(case, envs) else { return };
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
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
}

#[test]
fn a_correct_program_runs_to_the_end() {
    let Some(out) = run_case("correct") else { return };
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("correct done"), "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// `free(a); free(b); free(a)` on 32-byte objects.
#[test]
fn small_double_free_behind_another_free() {
    expect_fatal("double-small", "double free");
}

#[test]
fn small_double_free_across_threads() {
    expect_fatal("double-threads", "double free");
}

/// A stale free of a reused block frees its new owner's object: the new
/// owner's own free is then the second free, and is caught.
#[test]
fn stale_free_of_a_reused_block() {
    expect_fatal("double-reused", "double free");
}

#[test]
fn interior_pointer_8_bytes_in() {
    expect_fatal("interior-8", "interior pointer");
}

#[test]
fn interior_pointer_half_way_into_an_object() {
    expect_fatal("interior-half", "interior pointer");
}

#[test]
fn interior_pointer_into_a_large_object() {
    expect_fatal("interior-large", "interior pointer");
}

/// A large object not kept in a cache goes back to the page heap at once;
/// the background scavenger is off so that no thread start-up can
/// allocate on its pages before the second free.
#[test]
fn large_double_free() {
    expect_fatal_env("double-large", &[("SCAVALLOC_BACKGROUND", "0")], "double free");
}

#[test]
fn large_double_free_of_a_cached_large_object() {
    expect_fatal("double-large-cached", "double free");
}

#[test]
fn realloc_of_a_freed_block() {
    expect_fatal("realloc-freed", "double free");
}
