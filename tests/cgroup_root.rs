//! The cgroup test root, through the `testing` surface: a fake v2 tree
//! under a temporary directory is what detection finds while the root is
//! set, and the real files are read again once it is cleared.

mod support;

use scavalloc::testing::cgroup;
use std::ffi::CString;

#[test]
fn test_root_redirects_detection_and_clears() {
    let real_before = cgroup::detect().memory_dir().map(|d| d.path().to_vec());

    let (root, app) = support::fake_cgroup_v2("cgroup-root");
    std::fs::write(app.join("memory.max"), "943718400\n").unwrap();
    std::fs::write(app.join("memory.current"), "1048576\n").unwrap();
    std::fs::write(app.join("cpu.max"), "150000 100000\n").unwrap();

    let root_c = CString::new(root.to_str().unwrap()).unwrap();
    assert!(cgroup::set_test_root(&root_c));
    let fake = cgroup::detect();
    assert!(cgroup::set_test_root(c""));
    let limits = cgroup::read_memory(&fake);
    assert_eq!((limits.max, limits.usage), (Some(900 << 20), Some(1 << 20)));
    assert_eq!(limits.source, cgroup::Source::V2 { levels_up: 0 });
    assert_eq!(cgroup::cpu_limit(&fake), Some(1.5));
    let _ = std::fs::remove_dir_all(&root);

    let dir = fake.memory_dir().expect("the fake tree's cgroup");
    assert_eq!(dir.path(), app.to_str().unwrap().as_bytes());
    assert_eq!(dir.version(), cgroup::Version::V2);
    // The tree is gone: the Location keeps its paths, whose files no
    // longer exist.
    assert_eq!(cgroup::read_memory(&fake), cgroup::MemoryLimits::NONE);

    let real_after = cgroup::detect().memory_dir().map(|d| d.path().to_vec());
    assert_eq!(real_after, real_before, "clearing the root reads the real files again");
}

#[test]
fn an_overlong_root_is_refused() {
    let long = CString::new("/".repeat(cgroup::PATH_CAPACITY)).unwrap();
    assert!(!cgroup::set_test_root(&long));
}
