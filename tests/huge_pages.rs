//! The heap's mappings keep transparent huge pages out (`MADV_NOHUGEPAGE`,
//! shown as `nh` in the mapping's `VmFlags`), so that in the kernel's
//! `always` mode khugepaged cannot fault released memory back in; with
//! `SCAVALLOC_THP=1` they do not. Each case runs in a child of its own,
//! whose environment is read once at start-up.

mod support;

use std::time::Duration;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

/// The `VmFlags` of the mapping that holds `addr`, from `/proc/self/smaps`.
fn vm_flags_of(addr: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                inside = lo <= addr && addr < hi;
                continue;
            }
        }
        if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().map(str::to_string).collect();
            }
        }
    }
    panic!("no mapping in /proc/self/smaps holds {addr:#x}");
}

/// Small and large objects, and a region freed and taken again (a fresh
/// part of the heap each time): all in mappings marked, or not, as `want`.
fn check_marks(want_marked: bool) {
    let small: Vec<Box<[u8; 48]>> = (0..10_000).map(|i| Box::new([i as u8; 48])).collect();
    let large = vec![7u8; 8 << 20];
    let mut more = Vec::new();
    for i in 0..64 {
        more.push(vec![i as u8; 1 << 20]);
    }
    let addrs = [small[0].as_ptr() as usize, small[9_999].as_ptr() as usize, large.as_ptr() as usize]
        .into_iter()
        .chain(more.iter().map(|v| v.as_ptr() as usize));
    for addr in addrs {
        let flags = vm_flags_of(addr);
        assert_eq!(
            flags.iter().any(|f| f == "nh"),
            want_marked,
            "the mapping holding {addr:#x} has VmFlags {flags:?} (SCAVALLOC_THP={})",
            std::env::var("SCAVALLOC_THP").unwrap_or_default()
        );
    }
    assert!(small.iter().enumerate().all(|(i, b)| b.iter().all(|&x| x == i as u8)));
    assert!(large.iter().all(|&x| x == 7));
}

#[test]
fn heap_mappings_keep_huge_pages_out_unless_asked() {
    let test = "heap_mappings_keep_huge_pages_out_unless_asked";
    support::as_child(test, |case| check_marks(case == "default"));
    support::run_case(test, "default", &[], Duration::from_secs(60));
    support::run_case(test, "thp", &[("SCAVALLOC_THP", "1")], Duration::from_secs(60));
}
