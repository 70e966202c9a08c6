//! The container watcher, against a fake cgroup v2 tree
//! (`SCAVALLOC_TEST_CGROUP_ROOT`, a `testing`-feature setting read when the
//! scavenger starts): the cgroup's limit becomes the memory limit (95% of
//! it) unless `SCAVALLOC_MEMLIMIT` is set, its CPU quota caps the CPUs the
//! scavenger counts, and usage within the margin of the limit releases
//! every free page at once, counted as a pressure release.
//!
//! Each case runs in a child process whose scavenger reads the fake tree.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

const LIMIT: usize = 900 << 20;

/// A fake v2 tree: the process in `/app`, 900 MiB `memory.max`, 1.5 CPUs,
/// and a `memory.current` the test rewrites.
fn fake_tree(name: &str) -> PathBuf {
    let (root, app) = support::fake_cgroup_v2(&format!("container-{name}"));
    std::fs::write(app.join("memory.max"), format!("{LIMIT}\n")).unwrap();
    std::fs::write(app.join("memory.current"), format!("{}\n", 100 << 20)).unwrap();
    std::fs::write(app.join("cpu.max"), "150000 100000\n").unwrap();
    root
}

fn usage_file(root: &Path) -> PathBuf {
    root.join("sys/fs/cgroup/app/memory.current")
}

/// Frees a burst of pages so that the scavenger starts, and waits until
/// its watcher has read the fake tree's limit; returns the statistics then.
fn start_scavenger_on_the_fake_tree() -> scavalloc::Stats {
    drop(support::burst(32 << 20));
    scavalloc::flush_thread_cache();
    let read = support::wait_until(Duration::from_secs(30), || scavalloc::stats().container.memory_max == LIMIT);
    let s = scavalloc::stats();
    assert!(read, "the watcher never read the fake limit: {:?}", s.container);
    s
}

fn run(test: &str, case: &str, root: &Path, extra: &[(&str, &str)]) {
    let mut envs = vec![("SCAVALLOC_TEST_CGROUP_ROOT", root.to_str().unwrap())];
    envs.extend_from_slice(extra);
    let out = support::run_child_env(test, case, &envs, Duration::from_secs(120));
    let _ = std::fs::remove_dir_all(root);
    println!("{}", out.stdout);
    out.assert_completed();
}

#[test]
fn a_cgroup_limit_becomes_the_memory_limit() {
    let test = "a_cgroup_limit_becomes_the_memory_limit";
    support::as_child(test, |_| {
        let s = start_scavenger_on_the_fake_tree();
        assert_eq!(s.memory_limit, LIMIT - LIMIT / 20, "95% of the cgroup's limit");
        assert_eq!(s.memory_limit_source, scavalloc::LimitSource::Container);
        assert_eq!(s.container.limit_source, scavalloc::CgroupLimitSource::V2 { levels_up: 0 });
        assert_eq!(s.container.cpus, 1.5f64.min(support_cpus()), "the quota caps the CPUs");
    });
    run(test, "limit", &fake_tree("limit"), &[]);
}

#[test]
fn a_cpu_quota_change_moves_the_pacing_at_once() {
    let test = "a_cpu_quota_change_moves_the_pacing_at_once";
    support::as_child(test, |_| {
        let root = PathBuf::from(std::env::var("SCAVALLOC_TEST_CGROUP_ROOT").unwrap());
        let s = start_scavenger_on_the_fake_tree();
        let before = s.container.cpus;
        // The work:sleep ratio at which the scavenger uses 1% of `cpus`.
        let steady = |cpus: f64| {
            let share = 0.01 * cpus;
            share / (1.0 - share)
        };
        // Half a CPU: a quarter of the default 1% share's thread time it
        // had at 1.5 (or the machine's CPUs, if fewer).
        std::fs::write(root.join("sys/fs/cgroup/app/cpu.max"), "50000 100000\n").unwrap();
        let moved = support::wait_until(Duration::from_secs(30), || {
            let s = scavalloc::stats();
            s.container.cpus == 0.5 && (s.sleep_ratio - steady(0.5)).abs() < (s.sleep_ratio - steady(before)).abs()
        });
        let s = scavalloc::stats();
        assert!(
            moved,
            "the quota went from {before} to 0.5 CPUs; ratio {} (steady: {} before, {} now)",
            s.sleep_ratio,
            steady(before),
            steady(0.5)
        );
    });
    run(test, "quota", &fake_tree("quota"), &[]);
}

/// The CPUs this process may run on.
fn support_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

#[test]
fn memlimit_off_ignores_the_cgroup_limit() {
    let test = "memlimit_off_ignores_the_cgroup_limit";
    support::as_child(test, |_| {
        let s = start_scavenger_on_the_fake_tree();
        assert_eq!(s.memory_limit, 0, "SCAVALLOC_MEMLIMIT=off: no limit");
        assert_eq!(s.memory_limit_source, scavalloc::LimitSource::None);
    });
    run(test, "off", &fake_tree("off"), &[("SCAVALLOC_MEMLIMIT", "off")]);
}

#[test]
fn usage_near_the_limit_releases_at_once() {
    let test = "usage_near_the_limit_releases_at_once";
    support::as_child(test, |_| {
        let root = PathBuf::from(std::env::var("SCAVALLOC_TEST_CGROUP_ROOT").unwrap());
        start_scavenger_on_the_fake_tree();
        // 128 MiB of small objects, nine in ten freed: whole spans free,
        // retained but not in use.
        let mut objects = support::burst(128 << 20);
        objects.truncate(objects.len() / 10);
        scavalloc::flush_thread_cache();
        let before = scavalloc::stats();
        assert_eq!(before.container.headroom_events, 0, "no emergency yet: {:?}", before.container);
        // Someone else in the cgroup: usage 10 MiB under the limit.
        std::fs::write(usage_file(&root), format!("{}\n", LIMIT - (10 << 20))).unwrap();
        let released = support::wait_until(Duration::from_secs(30), || {
            let s = scavalloc::stats();
            s.container.headroom_events > 0 && s.released_pressure > 0
        });
        let after = scavalloc::stats();
        assert!(released, "no release for the headroom: {:?}, {} bytes", after.container, after.released_pressure);
        assert_eq!(after.container.headroom, 10 << 20);
        assert!(objects.iter().all(|o| o.iter().all(|&b| b == o[0])), "a live object changed");
    });
    run(test, "headroom", &fake_tree("headroom"), &[]);
}
