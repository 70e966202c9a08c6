//! What the C-ABI tests share: `libscavalloc.so` built once per test
//! process, C programs from `tests/c/` compiled once each, and child
//! processes run with a deadline.
//!
//! A `cdylib` is not built for integration tests, so the library is built
//! here (`cargo build --release -p scavalloc-capi` into
//! `target/capi-test`). Whether `cc` exists is for the caller to ask
//! ([`have`]) and to report as an ignored test: nothing here passes
//! quietly when it cannot run.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root (the parent of `capi/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("capi/ has a parent").to_path_buf()
}

/// `target/capi-test/scratch`, made if missing.
pub fn scratch() -> PathBuf {
    let dir = workspace().join("target").join("capi-test").join("scratch");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// Output as text, for messages and comparisons.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd` to its end, its output collected; past `timeout` it is killed
/// and an error returned, so a hang fails the test instead of stalling it.
pub fn run(mut cmd: Command, timeout: Duration, what: &str) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    // Readers drain the pipes while the child runs, so a chatty child
    // cannot block on a full pipe.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let (o, e) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
                return Err(format!(
                    "{what}: still running after {timeout:?}, killed\nstdout:\n{}\nstderr:\n{}",
                    text(&o),
                    text(&e)
                ));
            }
            Err(e) => return Err(format!("{what}: wait: {e}")),
        }
    };
    Ok(Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() })
}

/// Whether `program` is found on `PATH`.
pub fn have(program: &str) -> bool {
    Command::new("sh").args(["-c", "command -v \"$0\""]).arg(program).output().is_ok_and(|o| o.status.success())
}

/// `libscavalloc.so`, built once per test process (an error says why the
/// build failed).
pub fn library() -> Result<&'static Path, String> {
    static LIB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let target = workspace().join("target").join("capi-test");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace())
            .args(["build", "--release", "-p", "scavalloc-capi"])
            .env("CARGO_TARGET_DIR", &target);
        let out = run(cmd, Duration::from_secs(900), "cargo build --release -p scavalloc-capi")?;
        if !out.status.success() {
            return Err(format!("building the library failed:\n{}", text(&out.stderr)));
        }
        let lib = target.join("release").join("libscavalloc.so");
        if !lib.exists() {
            return Err(format!("{} was not built", lib.display()));
        }
        Ok(lib)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(Clone::clone)
}

/// `tests/c/<name>.c` compiled with `cc` into the scratch directory, once
/// per test process. The caller has checked that `cc` exists.
pub fn c_program(name: &str) -> Result<PathBuf, String> {
    c_program_with(name, &[])
}

/// As [`c_program`], with `extra` arguments for `cc` after the source (for
/// example `-rdynamic` for a program whose functions a preloaded library
/// must bind to).
pub fn c_program_with(name: &str, extra: &[&str]) -> Result<PathBuf, String> {
    static BUILT: Mutex<Vec<(String, Result<PathBuf, String>)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = built.iter().find(|(n, _)| n == name) {
        return r.clone();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("c").join(format!("{name}.c"));
    let exe = scratch().join(name);
    let mut cmd = Command::new("cc");
    cmd.args(["-O2", "-g", "-Wall", "-Wextra", "-pthread", "-o"]).arg(&exe).arg(&src).args(extra);
    let r = run(cmd, Duration::from_secs(120), &format!("cc {name}.c")).and_then(|out| {
        if out.status.success() {
            Ok(exe)
        } else {
            Err(format!("cc {} failed:\n{}", src.display(), text(&out.stderr)))
        }
    });
    built.push((name.to_string(), r.clone()));
    r
}

/// `cmd` with `libscavalloc.so` preloaded and its exit statistics on, so
/// that [`served_by_scavalloc`] can tell the preload took effect.
pub fn preloaded(mut cmd: Command) -> Result<Command, String> {
    cmd.env("LD_PRELOAD", library()?).env("SCAVALLOC_STATS", "1");
    Ok(cmd)
}

/// Whether a run of a [`preloaded`] command was served by scavalloc: the
/// dynamic loader only warns when a preload fails, and the program would
/// then pass on glibc.
pub fn served_by_scavalloc(out: &Output) -> bool {
    text(&out.stderr).contains("scavalloc stats")
}

/// `cmd` with `LD_PRELOAD` removed, so it runs on the C library's malloc
/// even if the test itself was started with a preload.
pub fn plain(mut cmd: Command) -> Command {
    cmd.env_remove("LD_PRELOAD");
    cmd
}
